//! The PostgreSQL engine against the conformance suite, plus what only a database shows:
//! migrations racing, a schema from a newer build, reopening, a second leadloop on the same
//! schema, another connection racing on a lead, a bad batch in a group commit.
//!
//! The server is `LEADLOOP_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Every store gets a schema of its own, named `leadloop_test_<unix seconds>_<pid>_<n>`, dropped
//! when its test ends (by a guard, so also when it panics); schemas of that shape older than an
//! hour, left by a killed run, are swept at the start. An unreachable server fails the tests
//! unless `LEADLOOP_TEST_PG=skip`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leadloop_core::LeadId;
use leadloop_store::{Batch, Expect, Found, Store, StoreError, conformance};
use leadloop_store::{SledConfig, SledStore};
use leadloop_store_postgres::{PgConfig, PgStore, SCHEMA_VERSION, SslMode};

const PREFIX: &str = "leadloop_test_";

fn url() -> String {
    std::env::var("LEADLOOP_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", server()));
    tokio::spawn(connection);
    client
}

/// The server without credentials, for messages.
fn server() -> String {
    PgConfig::new(&url()).map(|c| c.describe()).unwrap_or_else(|_| "LEADLOOP_TEST_PG_URL".into())
}

/// Numbers the schemas of this process (tests run in parallel in one process).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// An error with its causes ("error connecting to server: Connection refused").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Schemas made by one test, dropped when it ends.
struct Schemas {
    names: Mutex<Vec<String>>,
}

impl Schemas {
    /// `None` when the server is unreachable and `LEADLOOP_TEST_PG=skip` says to skip.
    async fn new() -> Option<Self> {
        match tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                sweep(&client).await;
                Some(Self { names: Mutex::new(Vec::new()) })
            }
            Err(error) if std::env::var("LEADLOOP_TEST_PG").as_deref() == Ok("skip") => {
                let error = chain(&error);
                eprintln!(
                    "skipped: PostgreSQL at {} is unreachable ({error}) and LEADLOOP_TEST_PG=skip",
                    server()
                );
                None
            }
            Err(error) => panic!(
                "PostgreSQL at {} is unreachable: {}. Start it (trust auth, database `test`), point \
                 LEADLOOP_TEST_PG_URL at one, or set LEADLOOP_TEST_PG=skip to skip these tests",
                server(),
                chain(&error)
            ),
        }
    }

    fn fresh(&self) -> String {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{secs}_{}_{n}", std::process::id());
        self.names.lock().unwrap_or_else(|p| p.into_inner()).push(name.clone());
        name
    }

    fn config(&self, schema: &str) -> PgConfig {
        let mut config =
            PgConfig::new(&url()).expect("url").schema(schema).expect("schema").sslmode(SslMode::Disable);
        config.pool_size = 4;
        config
    }

    async fn open(&self) -> Arc<PgStore> {
        PgStore::open(&self.config(&self.fresh())).await.expect("open")
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap_or_else(|p| p.into_inner()));
        if names.is_empty() {
            return;
        }
        // Drop runs inside the test's runtime (perhaps while it unwinds): clean up from a
        // thread with a runtime of its own.
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
                for name in names {
                    // A store of the test may still be closing its connections: retry briefly.
                    for _ in 0..50 {
                        match client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).await
                        {
                            Ok(()) => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Drops test schemas older than an hour (left behind by a run that was killed).
async fn sweep(client: &tokio_postgres::Client) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let Ok(rows) = client
        .query("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'leadloop\\_test\\_%'", &[])
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let born = name[PREFIX.len()..].split('_').next().and_then(|s| s.parse::<u64>().ok());
        if born.is_some_and(|born| born + 3600 < now) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_conformance_suite() {
    let Some(schemas) = Schemas::new().await else { return };
    conformance::run_all(|| async { schemas.open().await as Arc<dyn Store> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_migrations_apply_once() {
    let Some(schemas) = Schemas::new().await else { return };
    let schema = schemas.fresh();
    let (mut a, mut b) = (connect().await, connect().await);
    let (first, second) = tokio::join!(
        leadloop_store_postgres::migrate(&mut a, &schema),
        leadloop_store_postgres::migrate(&mut b, &schema)
    );
    let mut found = [first.expect("first migration"), second.expect("second migration")];
    found.sort();
    assert_eq!(found, [0, SCHEMA_VERSION], "one created the schema, the other found it done");
    let rows = a
        .query(&format!("SELECT version FROM \"{schema}\".schema_migrations ORDER BY version"), &[])
        .await
        .expect("versions");
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION as i32).collect::<Vec<_>>(), "each version recorded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leadloops_opening_one_schema_one_is_refused() {
    let Some(schemas) = Schemas::new().await else { return };
    let config = schemas.config(&schemas.fresh());
    let (first, second) = tokio::join!(PgStore::open(&config), PgStore::open(&config));
    let (store, refused) = match (first, second) {
        (Ok(store), Err(error)) | (Err(error), Ok(store)) => (store, error),
        (a, b) => panic!("exactly one open must succeed: {a:?} / {b:?}"),
    };
    assert!(matches!(refused, StoreError::SchemaLocked { .. }), "{refused:?}");
    let message = refused.to_string();
    assert!(message.contains("in use by another leadloop"), "{message}");
    assert!(message.contains(&format!("pid {}", std::process::id())), "the holder is named: {message}");
    // The one that opened works, and released the schema is free again.
    let mut batch = Batch::new();
    batch.set_cursor("c", "1");
    store.commit(batch).await.expect("commit");
    drop(store);
    let again = PgStore::open(&config).await.expect("reopen after the holder closed");
    assert_eq!(again.cursor("c").await.expect("cursor").as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_leadloop_is_refused() {
    let Some(schemas) = Schemas::new().await else { return };
    let schema = schemas.fresh();
    drop(PgStore::open(&schemas.config(&schema)).await.expect("open"));
    let client = connect().await;
    client
        .execute(
            &format!(
                "INSERT INTO \"{schema}\".schema_migrations (version, applied_by) VALUES (99, 'leadloop 9')"
            ),
            &[],
        )
        .await
        .expect("mark the schema newer");
    let error = PgStore::open(&schemas.config(&schema)).await.expect_err("newer schema");
    assert!(
        matches!(&error, StoreError::SchemaTooNew { found: 99, supported, .. } if *supported == SCHEMA_VERSION),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("99") && message.contains(&format!("({SCHEMA_VERSION})")), "{message}");
    assert!(message.contains("run a newer leadloop"), "{message}");
    // Nothing was touched: no table dropped, no version row added.
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".schema_migrations"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, i64::from(SCHEMA_VERSION) + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_data_survives_reopen() {
    let Some(schemas) = Schemas::new().await else { return };
    let config = schemas.config(&schemas.fresh());
    {
        let store = PgStore::open(&config).await.expect("open");
        let mut batch = Batch::new();
        batch
            .put_lead(conformance::lead_in_handoff("00Q1", "005A"))
            .set_cursor("c", "v1")
            .enqueue(conformance::email("e1"))
            .append_history(LeadId::new("00Q1"), conformance::event(0, "created"));
        store.commit(batch).await.expect("commit");
    }
    let store = PgStore::open(&config).await.expect("reopen");
    assert_eq!(
        store.lead(&LeadId::new("00Q1")).await.expect("read"),
        Some(conformance::lead_in_handoff("00Q1", "005A"))
    );
    assert_eq!(store.cursor("c").await.expect("cursor").as_deref(), Some("v1"));
    assert_eq!(store.outbox_pending(leadloop_core::Channel::Email).await.expect("pending").0, 1);
    assert_eq!(
        store.open_handoffs_per_owner().await.expect("per owner"),
        [(leadloop_core::PersonId::new("005A"), 1)]
    );
    assert_eq!(store.history(&LeadId::new("00Q1")).await.expect("history").len(), 1);
    // History goes on from where it was.
    let mut batch = Batch::new();
    batch.append_history(LeadId::new("00Q1"), conformance::event(1, "again"));
    store.commit(batch).await.expect("commit");
    let seqs: Vec<u64> =
        store.history(&LeadId::new("00Q1")).await.expect("history").into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, [1, 2]);
}

/// Another connection (another leadloop's transaction) changes the lead while this store's
/// commit waits for the row: the commit must see the new version and refuse, not overwrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_on_another_connection_wins_and_the_store_is_told() {
    let Some(schemas) = Schemas::new().await else { return };
    let schema = schemas.fresh();
    let store = PgStore::open(&schemas.config(&schema)).await.expect("open");
    let mut seed = conformance::lead("00Q1");
    seed.version = 1;
    let mut batch = Batch::new();
    batch.put_lead_expecting(seed.clone(), Expect::Absent);
    store.commit(batch).await.expect("seed");

    let mut other = connect().await;
    let tx = other.transaction().await.expect("begin");
    tx.query(&format!("SELECT version FROM \"{schema}\".leads WHERE id = '00Q1' FOR UPDATE"), &[])
        .await
        .expect("lock the lead");
    let mut decided = seed.clone();
    decided.version = 2;
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut batch = Batch::new();
            batch.put_lead_expecting(decided, Expect::Version(1)).enqueue(conformance::email("loser/1"));
            store.commit(batch).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the store's commit waits for the row the other connection holds");
    tx.execute(&format!("UPDATE \"{schema}\".leads SET version = 2 WHERE id = '00Q1'"), &[])
        .await
        .expect("the other writer's update");
    tx.commit().await.expect("the other writer commits");
    match writer.await.expect("task") {
        Err(StoreError::Conflict { expected, found, .. }) => {
            assert_eq!((expected, found), (Expect::Version(1), Found::Version(2)));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let key = leadloop_core::IdempotencyKey::parse("loser/1").expect("key");
    assert_eq!(store.outbox_entry(&key).await.expect("entry"), None, "the refused batch queued nothing");
}

/// A batch the server rejects fails alone; the batches committed with it in one group land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_batch_in_a_group_fails_alone() {
    let Some(schemas) = Schemas::new().await else { return };
    let store = schemas.open().await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut batch = Batch::new();
                // PostgreSQL text cannot hold NUL: the server refuses this one.
                let name = if i == 17 { "bad\0name".to_owned() } else { format!("c{i}") };
                batch.set_cursor(name, "1");
                store.commit(batch).await
            })
        })
        .collect();
    let mut failed = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if let Err(error) = task.await.expect("task") {
            failed.push((i, error.to_string()));
        }
    }
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, 17);
    for i in (0..40).filter(|i| *i != 17) {
        assert_eq!(store.cursor(&format!("c{i}")).await.expect("cursor").as_deref(), Some("1"), "c{i}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error_without_the_password() {
    let mut config = PgConfig::new("postgres://app:s3cret-pw@127.0.0.1:9/test")
        .expect("url")
        .schema("leadloop_test_unreachable")
        .expect("schema")
        .sslmode(SslMode::Disable);
    config.pool_size = 2;
    let error = PgStore::open(&config).await.expect_err("nothing listens on port 9");
    let message = error.to_string();
    assert!(message.contains("cannot connect") && message.contains("refused"), "{message}");
    assert!(!message.contains("s3cret-pw"), "{message}");
}

/// The same state exports to the same file from either engine, so a store moves between them
/// by export and import, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_the_same_file_from_sled_and_postgres() {
    use chrono::TimeDelta;
    use conformance::{email, event, lead, lead_in_handoff, person, t0, timer};
    let Some(schemas) = Schemas::new().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = SledStore::open(&SledConfig::new(dir.path().join("sled"))).expect("sled");
    let mut batch = Batch::new();
    let mut scored = lead("00Q2");
    scored.scored =
        vec![leadloop_core::scoring::ScoredActivity { at: t0(), rule: "web".into(), points: 5.0 }];
    batch
        .put_lead(lead("00Q10"))
        .put_lead(scored)
        .put_lead(lead_in_handoff("00Q1", "005A"))
        .append_history(LeadId::new("ab"), event(0, "x"))
        .append_history(LeadId::new("a"), event(0, "y"))
        .append_history(LeadId::new("a"), event(1, "z"))
        // sled orders by length first: "b" before "aa", bucket "digest/z" before "digest/aa".
        .append_history(LeadId::new("aa"), event(2, "w"))
        .append_history(LeadId::new("b"), event(2, "v"))
        .put_item("digest/aa", "k", serde_json::json!(1))
        .put_item("digest/z", "k", serde_json::json!(2))
        .mark_seen(LeadId::new("aa"), "t")
        .mark_seen(LeadId::new("b"), "t")
        .put_person(person("005B", Some("005A")))
        .put_person(person("005A", None))
        .set_timer(timer("b", t0() + TimeDelta::hours(1)))
        .set_timer(timer("a", t0() + TimeDelta::hours(1)))
        .set_timer(timer("c", t0() + TimeDelta::microseconds(1500)))
        .enqueue(email("k2"))
        .enqueue(email("k1"))
        .set_cursor("salesforce.lead", "c1")
        .set_cursor("calendar", "c2")
        .suppress(leadloop_core::Suppression { address: "B@x.example".into(), reason: "r".into(), at: t0() })
        .suppress(leadloop_core::Suppression { address: "a@x.example".into(), reason: "r".into(), at: t0() })
        .put_item("digest/long-bucket", "k", serde_json::json!({ "n": 1 }))
        .put_item("digest/b", "k2", serde_json::json!([1, 2]))
        .put_item("digest/b", "k1", serde_json::json!(null))
        .mark_seen(LeadId::new("00Q1"), "task/2")
        .mark_seen(LeadId::new("00Q10"), "task/1")
        .mark_seen(LeadId::new("00Q1"), "task/1");
    sled.commit(batch).await.expect("commit");
    let from_sled = dir.path().join("sled.jsonl");
    let sled_summary = leadloop_store::export(sled.as_ref(), &from_sled).await.expect("export sled");
    let pg = schemas.open().await;
    leadloop_store::import(pg.as_ref(), &from_sled).await.expect("import into postgres");
    let from_pg = dir.path().join("pg.jsonl");
    let pg_summary = leadloop_store::export(pg.as_ref(), &from_pg).await.expect("export postgres");
    assert_eq!(pg_summary, sled_summary, "same records, same checksum");
    assert_eq!(std::fs::read(&from_pg).expect("read"), std::fs::read(&from_sled).expect("read"));
    // And back.
    let back = SledStore::open(&SledConfig::new(dir.path().join("back"))).expect("sled");
    leadloop_store::import(back.as_ref(), &from_pg).await.expect("import into sled");
    let again = dir.path().join("again.jsonl");
    assert_eq!(leadloop_store::export(back.as_ref(), &again).await.expect("export"), sled_summary);
    // The imported queue order holds: a new entry queues after the imported ones.
    let mut batch = Batch::new();
    batch.enqueue(email("k3"));
    pg.commit(batch).await.expect("enqueue");
    let ready = pg.outbox_ready(leadloop_core::Channel::Email, t0(), 10).await.expect("ready");
    let keys: Vec<String> = ready.iter().map(|e| e.key.to_string()).collect();
    assert_eq!(keys, ["k2", "k1", "k3"]);
}
