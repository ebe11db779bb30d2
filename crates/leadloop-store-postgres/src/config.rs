//! Settings of the PostgreSQL engine and the TLS they ask for.
//!
//! The connection URL is a secret (it may carry a password): it is parsed once into the
//! driver's config and never kept as text; [`PgConfig`]'s `Debug` shows the host, port,
//! database and user only, and no error message repeats it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the connection to the server is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS: for a server on loopback or a Unix socket.
    Disable,
    /// TLS, but the server's certificate is not checked: encrypted, not authenticated (as
    /// libpq's `require` without a root certificate). Prefer `verify-full`.
    Require,
    /// TLS, the certificate chain checked against `ca_file` (or the Mozilla roots when unset)
    /// and the host name checked against the certificate.
    #[default]
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Why a [`PgConfig`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The URL does not parse; the message names the problem, never the URL.
    #[error("cannot parse the connection URL: {0}")]
    Url(String),
    #[error("{0}")]
    Schema(String),
}

/// The default schema the engine keeps its tables in.
pub const DEFAULT_SCHEMA: &str = "leadloop";
/// Connections in the pool unless configured.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// The longest one statement may run unless configured.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening a connection may take when the URL does not say (`connect_timeout`).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings for [`crate::PgStore::open`].
#[derive(Clone)]
pub struct PgConfig {
    pub(crate) pg: tokio_postgres::Config,
    /// Connections in the pool (at least 2: one commits while others read).
    pub pool_size: usize,
    /// `statement_timeout` of every connection; zero leaves the server's setting.
    pub statement_timeout: Duration,
    pub sslmode: SslMode,
    /// PEM file of the certificate authorities trusted with `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// The schema holding leadloop's tables; created if missing.
    pub schema: String,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("server", &self.describe())
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("sslmode", &self.sslmode)
            .field("ca_file", &self.ca_file)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PgConfig {
    /// Settings for the server at `url` (`postgres://user:password@host:port/database?…` or
    /// libpq's `key=value` form) with the defaults. TLS is chosen by [`PgConfig::sslmode`], not
    /// by the URL.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            // The driver's parse errors name the option at fault, not its value.
            ConfigError::Url(e.to_string())
        })?;
        if pg.get_hosts().is_empty() {
            return Err(ConfigError::Url("no host".into()));
        }
        Ok(Self {
            pg,
            pool_size: DEFAULT_POOL_SIZE,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            sslmode: SslMode::default(),
            ca_file: None,
            schema: DEFAULT_SCHEMA.to_owned(),
        })
    }

    pub fn schema(mut self, schema: impl Into<String>) -> Result<Self, ConfigError> {
        let schema = schema.into();
        check_schema_name(&schema).map_err(ConfigError::Schema)?;
        self.schema = schema;
        Ok(self)
    }

    pub fn sslmode(mut self, mode: SslMode) -> Self {
        self.sslmode = mode;
        self
    }

    /// `user@host:port/database`, for logs and messages (never the password).
    pub fn describe(&self) -> String {
        let host = match self.pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => String::new(),
        };
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{}@{host}:{port}/{}",
            self.pg.get_user().unwrap_or(""),
            self.pg.get_dbname().unwrap_or(self.pg.get_user().unwrap_or(""))
        )
    }

    /// The driver's config with this engine's settings applied: TLS mode, statement timeout,
    /// application name and a connect timeout unless the URL set them.
    pub(crate) fn driver_config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        pg.ssl_mode(match self.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        if pg.get_application_name().is_none() {
            pg.application_name(application_name);
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if !self.statement_timeout.is_zero() {
            let timeout = format!("-c statement_timeout={}", self.statement_timeout.as_millis());
            let options = match pg.get_options() {
                Some(options) if !options.trim().is_empty() => format!("{options} {timeout}"),
                _ => timeout,
            };
            pg.options(&options);
        }
        pg
    }

    /// The TLS connector `sslmode` asks for (unused with `disable`).
    pub(crate) fn tls(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let config = match self.sslmode {
            SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            SslMode::Disable | SslMode::VerifyFull => {
                let mut roots = RootCertStore::empty();
                match &self.ca_file {
                    Some(path) if self.sslmode == SslMode::VerifyFull => {
                        let certs = CertificateDer::pem_file_iter(path)
                            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
                        for cert in certs {
                            let cert =
                                cert.map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
                            roots.add(cert).map_err(|e| {
                                format!("ca_file {}: not a usable certificate: {e}", path.display())
                            })?;
                        }
                        if roots.is_empty() {
                            return Err(format!("ca_file {}: no certificate in it", path.display()));
                        }
                    }
                    _ => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// A schema name leadloop accepts: lowercase letters, digits and `_`, not starting with a
/// digit, at most 63 bytes (PostgreSQL's limit), so it never needs quoting rules.
pub fn check_schema_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "schema `{name}`: use 1 to 63 lowercase letters, digits and `_`, not starting with a digit or `pg_`"
        ))
    }
}

/// `sslmode = "require"`: any certificate is accepted, but the handshake's signatures are
/// still checked, so the session is encrypted to whoever holds the presented key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_errors_never_show_the_password() {
        let config =
            PgConfig::new("postgres://app:s3cret-pw@db.example:6432/crm?sslmode=disable").expect("url");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("app@db.example:6432/crm"), "{shown}");
        let error = PgConfig::new("postgres://app:s3cret-pw@db.example/crm?bogus_option=1")
            .map(|_| ())
            .expect_err("unknown option");
        assert!(!error.to_string().contains("s3cret-pw"), "{error}");
        let error = PgConfig::new("host=db.example password=s3cret-pw sslmode=sideways")
            .map(|_| ())
            .expect_err("bad sslmode");
        assert!(!error.to_string().contains("s3cret-pw"), "{error}");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["leadloop", "leadloop_2", "_x"] {
            assert_eq!(check_schema_name(good), Ok(()), "{good}");
        }
        for bad in ["", "Leadloop", "1x", "a-b", "a;drop", "pg_temp", &"x".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statement_timeout_joins_the_urls_options() {
        let mut config = PgConfig::new("postgres://u@h/d?options=-c%20search_path%3Dx").expect("url");
        config.statement_timeout = Duration::from_secs(5);
        let pg = config.driver_config("leadloop");
        assert_eq!(pg.get_options(), Some("-c search_path=x -c statement_timeout=5000"));
        assert_eq!(pg.get_application_name(), Some("leadloop"));
    }
}
