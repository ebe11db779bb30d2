//! The sled engine against the conformance suite, plus what only a real engine can show:
//! reopening keeps what was committed, and the directory lock refuses a second opener.

use std::sync::Arc;

use leadloop_store::{Batch, SledConfig, SledStore, Store, StoreError, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_passes_the_conformance_suite() {
    let root = tempfile::tempdir().expect("tempdir");
    let counter = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = root.path().join(format!("store-{n}"));
        async move { SledStore::open(&SledConfig::new(dir)).expect("open") as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test]
async fn committed_data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = SledStore::open(&SledConfig::new(dir.path())).expect("open");
        let mut batch = Batch::new();
        batch.put_lead(conformance::lead("00Q1")).set_cursor("c", "v1");
        store.commit(batch).await.expect("commit");
    }
    let store = SledStore::open(&SledConfig::new(dir.path())).expect("reopen");
    assert_eq!(
        store.lead(&leadloop_core::LeadId::new("00Q1")).await.expect("read"),
        Some(conformance::lead("00Q1"))
    );
    assert_eq!(store.cursor("c").await.expect("cursor").as_deref(), Some("v1"));
}

#[tokio::test]
async fn second_opener_is_refused_with_the_holder_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = SledStore::open(&SledConfig::new(dir.path())).expect("open");
    let error = SledStore::open(&SledConfig::new(dir.path())).expect_err("second open must fail");
    assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("in use by another leadloop"), "{message}");
    assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
}

#[tokio::test]
async fn unusable_state_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let error = SledStore::open(&SledConfig::new(&file)).expect_err("a file is not a state dir");
    assert_eq!(
        error.to_string(),
        format!(
            "state directory {} is a file, not a directory; point --state-dir or daemon.state_dir at a directory",
            file.display()
        )
    );
}

/// A store file cut short (a bad restore, a full disk outside leadloop, a copy interrupted)
/// is reported as damaged, with what to do; it never opens as an empty store that would send
/// every alert again.
#[tokio::test]
async fn a_truncated_store_is_reported_damaged_not_opened_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = SledStore::open(&SledConfig::new(dir.path())).expect("open");
        let mut batch = Batch::new();
        batch.put_lead(conformance::lead("00Q1")).set_cursor("c", "v1");
        store.commit(batch).await.expect("commit");
    }
    let file = dir.path().join("db").join("db");
    std::fs::OpenOptions::new().write(true).open(&file).expect("open file").set_len(10).expect("truncate");
    let error = SledStore::open(&SledConfig::new(dir.path())).expect_err("damaged");
    assert!(matches!(error, StoreError::Damaged { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("is damaged"), "{message}");
    assert!(message.contains("leadloop export"), "{message}");
    // A brand-new directory is still simply a new store.
    let fresh = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(&SledConfig::new(fresh.path())).expect("a new store opens");
    drop(store);
    SledStore::open(&SledConfig::new(fresh.path())).expect("and opens again");
}

#[tokio::test]
async fn a_store_from_a_newer_leadloop_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        // Write a schema marker from the future with sled directly, as a newer build would.
        let db = sled::open(dir.path().join("db")).expect("sled");
        let tree = db.open_tree("state").expect("tree");
        tree.insert(b"Mschema", &999u32.to_be_bytes()).expect("insert");
        db.flush().expect("flush");
    }
    let error = SledStore::open(&SledConfig::new(dir.path())).expect_err("newer schema");
    assert!(matches!(error, StoreError::TooNew { found: 999, .. }), "{error:?}");
    assert!(error.to_string().contains("run a newer leadloop"), "{error}");
}

/// A store dropped and opened again at once in the same process (a restart in tests or in
/// `demo`) opens, although sled's background threads may still hold its file lock for a moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_right_after_a_drop_waits_for_sleds_own_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..60u32 {
        let store = SledStore::open(&SledConfig::new(dir.path())).expect("reopen at once");
        let mut batch = Batch::new();
        batch.set_cursor("round", round.to_string());
        store.commit(batch).await.expect("commit");
        drop(store);
    }
    let store = SledStore::open(&SledConfig::new(dir.path())).expect("open");
    assert_eq!(store.cursor("round").await.expect("cursor").as_deref(), Some("59"));
}

/// State and backups hold personal data: a new state directory is 0700, an export 0600.
#[tokio::test]
async fn new_state_directories_and_exports_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("state");
    let store = SledStore::open(&SledConfig::new(&dir)).expect("open");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let mut batch = Batch::new();
    batch.put_lead(conformance::lead("00Q1"));
    store.commit(batch).await.expect("commit");
    let out = root.path().join("backup.jsonl");
    leadloop_store::export(store.as_ref(), &out).await.expect("export");
    assert_eq!(mode(&out), 0o600);
    assert!(!root.path().join("backup.partial").exists());
}

/// An email's template variables are stored once, when it is queued: a delivery attempt and
/// its outcome write only the entry's bookkeeping. So an update that carries no variables (as
/// the relay's, which hands them to the mailer) leaves them as queued, and the entry reads
/// back whole, before and after a reopen and in an export.
#[tokio::test]
async fn delivery_updates_keep_the_queued_variables() {
    use leadloop_core::{Channel, Effect, IdempotencyKey, OutboxState};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(&SledConfig::new(dir.path())).expect("open");
    let mut queued = conformance::email("sla/00Q1/1/alert");
    if let Effect::Email { vars, .. } = &mut queued.effect {
        *vars =
            serde_json::json!({ "lead": { "name": "Ana" }, "links": { "accept": "https://x.example/l/1" } });
    }
    let mut batch = Batch::new();
    batch.enqueue(queued.clone());
    store.commit(batch).await.expect("queue");
    let key = IdempotencyKey::parse("sla/00Q1/1/alert").expect("key");
    let stored = store.outbox_entry(&key).await.expect("read").expect("queued");

    let mut retry = stored.clone();
    if let Effect::Email { vars, .. } = &mut retry.effect {
        *vars = serde_json::Value::Null;
    }
    retry.attempts = 1;
    retry.next_attempt_at = conformance::t0() + chrono::TimeDelta::minutes(5);
    retry.last_error = Some("451 later".into());
    let mut batch = Batch::new();
    batch.update_outbox(retry.clone());
    store.commit(batch).await.expect("retry");
    let read = store.outbox_entry(&key).await.expect("read").expect("entry");
    assert_eq!(read.effect, queued.effect, "the variables are as queued");
    assert_eq!((read.attempts, read.next_attempt_at, read.seq), (1, retry.next_attempt_at, stored.seq));
    assert_eq!(read.last_error.as_deref(), Some("451 later"));
    assert!(store.outbox_ready(Channel::Email, conformance::t0(), 10).await.expect("ready").is_empty());
    let ready = store.outbox_ready(Channel::Email, retry.next_attempt_at, 10).await.expect("ready");
    assert_eq!(ready, vec![read.clone()]);

    let mut done = retry;
    done.attempts = 2;
    done.state = OutboxState::Done { at: retry_at() };
    done.last_error = None;
    let mut batch = Batch::new();
    batch.update_outbox(done);
    store.commit(batch).await.expect("done");
    assert_eq!(store.outbox_pending(Channel::Email).await.expect("pending"), (0, None));
    drop(store);

    let store = SledStore::open(&SledConfig::new(dir.path())).expect("reopen");
    let read = store.outbox_entry(&key).await.expect("read").expect("entry");
    assert_eq!(read.effect, queued.effect);
    assert_eq!(read.state, OutboxState::Done { at: retry_at() });
    assert_eq!((read.attempts, read.last_error.as_deref()), (2, None));
    // The export holds the entry whole, once, and imports into the same entry.
    let out = dir.path().join("export.jsonl");
    leadloop_store::export(store.as_ref(), &out).await.expect("export");
    let text = std::fs::read_to_string(&out).expect("read export");
    let outbox: Vec<&str> = text.lines().filter(|l| l.contains("\"t\":\"outbox\"")).collect();
    assert_eq!(outbox.len(), 1, "{text}");
    let fresh = tempfile::tempdir().expect("tempdir");
    let target = SledStore::open(&SledConfig::new(fresh.path())).expect("open");
    leadloop_store::import(target.as_ref(), &out).await.expect("import");
    assert_eq!(target.outbox_entry(&key).await.expect("read"), Some(read));
}

fn retry_at() -> leadloop_core::Timestamp {
    conformance::t0() + chrono::TimeDelta::minutes(6)
}
