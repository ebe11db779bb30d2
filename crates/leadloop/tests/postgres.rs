//! `[store] engine = "postgres"` through the composition root: the runtime opens the schema the
//! config names, writes the configured people there, holds the schema while it runs (a second
//! opener is told the store is in use) and leaves its state for the next start.
//!
//! The server is `LEADLOOP_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`); an
//! unreachable one fails the test unless `LEADLOOP_TEST_PG=skip`. The schema is dropped when
//! the test ends, even when it panics.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leadloop::runtime::{Parts, Runtime, RuntimeOptions, open_store};
use leadloop_core::{PersonId, VirtualClock};

fn url() -> String {
    std::env::var("LEADLOOP_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drops the schema when the test ends (from a thread of its own: the test's runtime may be
/// unwinding).
struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                let Ok((client, connection)) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                for _ in 0..50 {
                    if client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await
                        .is_ok()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_keeps_its_state_in_postgres_when_config_says_so() {
    if let Err(error) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
        if std::env::var("LEADLOOP_TEST_PG").as_deref() == Ok("skip") {
            eprintln!("skipped: PostgreSQL is unreachable ({error}) and LEADLOOP_TEST_PG=skip");
            return;
        }
        panic!(
            "PostgreSQL at LEADLOOP_TEST_PG_URL is unreachable: {error:?}; start it or set LEADLOOP_TEST_PG=skip"
        );
    }
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let schema = format!("leadloop_test_{secs}_{}_runtime", std::process::id());
    let _cleanup = DropSchema(schema.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let url_file = dir.path().join("pg-url");
    std::fs::write(&url_file, format!("{}\n", url())).expect("write the URL");
    let text = format!(
        "[daemon]\nstate_dir = \"{state}\"\n\n[store]\nengine = \"postgres\"\nurl_file = \"{url}\"\nsslmode = \"disable\"\nschema = \"{schema}\"\npool_size = 3\n\n[[people]]\nid = \"005A\"\nemail = \"rep@x.example\"\nname = \"Rep A\"\nrole = \"manager\"\n",
        state = dir.path().join("state").display(),
        url = url_file.display(),
    );
    let (config, _) =
        leadloop::config::load_str(&dir.path().join("leadloop.toml"), &text).expect("valid config");
    let clock = Arc::new(VirtualClock::new(chrono::Utc::now()));
    let runtime =
        Runtime::build(&config, RuntimeOptions::new(clock).parts(Parts::ENGINE)).await.expect("build");
    assert!(runtime.store.person(&PersonId::new("005A")).await.expect("read").is_some(), "people written");
    let refused = open_store(&config, None).await.map(|_| ()).expect_err("the schema is in use");
    assert!(refused.is_locked(), "{refused:?}");
    assert!(refused.to_string().contains(&schema), "{refused}");
    drop(runtime);
    let store = open_store(&config, None).await.expect("reopen");
    assert_eq!(store.people().await.expect("people").len(), 1, "the state outlives the runtime");
    assert!(!dir.path().join("state").join("db").exists(), "nothing was written to a sled directory");
}
