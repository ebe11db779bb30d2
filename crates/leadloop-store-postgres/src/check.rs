//! A live check of the configured server for `leadloop validate --connect`: one connection made
//! as the store makes them (TLS per `sslmode`, the statement timeout, the connect timeout) and
//! one trivial query. It takes no lock and neither creates nor migrates the schema.

use crate::config::PgConfig;
use crate::{PgError, describe};

/// Connects and asks the server its version. `Ok` names the server (`user@host:port/db`, never
/// the password) and its version; the error is the driver's or the server's reason (with its
/// SQLSTATE), also naming the server.
pub async fn check_server(config: &PgConfig) -> Result<String, String> {
    let server = config.describe();
    let fail = |e: PgError| match e {
        PgError::Db { doing, error } => format!("{server}: {doing}: {}", describe(&error)),
        PgError::Other(message) => format!("{server}: {message}"),
        other => format!("{server}: {other:?}"),
    };
    let tls = config.tls().map_err(PgError::Other).map_err(fail)?;
    let pg = config.driver_config("leadloop validate");
    let (client, connection) = pg.connect(tls).await.map_err(PgError::db("cannot connect")).map_err(fail)?;
    let driver = tokio::spawn(connection);
    let version: Result<String, _> = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .map(|row| row.get(0))
        .map_err(PgError::db("the query failed"))
        .map_err(fail);
    drop(client);
    let _ = driver.await;
    Ok(format!("{server}: connected, PostgreSQL {}", version?))
}
