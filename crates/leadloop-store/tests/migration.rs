//! A store written by an earlier release opens in this one: the schema-1 and schema-2 fixtures
//! (sled stores written by the releases before schema 2 and schema 3, see `fixtures/README.md`)
//! are migrated on open and must then hold exactly what those releases exported from them;
//! importing such an export gives the same store.

use std::collections::BTreeMap;
use std::path::Path;

use leadloop_core::{Channel, LeadRecord, OutboxEntry};
use leadloop_store::{SCHEMA_VERSION, SledConfig, SledStore, Store, export, import};
use serde_json::Value;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Unpacks the schema-1 store into `dir` (as `dir/db`).
fn unpack_v1(dir: &Path) {
    unpack("v1-store.tar.gz", dir);
}

/// Unpacks a fixture store into `dir` (as `dir/db`).
fn unpack(name: &str, dir: &Path) {
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixture(name))
        .arg("-C")
        .arg(dir)
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
}

/// The records of an export file, without header and trailer.
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read export");
    let lines: Vec<&str> = text.lines().collect();
    lines[1..lines.len() - 1].iter().map(|line| serde_json::from_str(line).expect("record")).collect()
}

fn header_schema(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).expect("read export");
    let header: Value = serde_json::from_str(text.lines().next().expect("header")).expect("json");
    header["schema"].as_u64().expect("schema")
}

/// What schema 2 holds for a schema-1 export: the engine's open hand-off bucket is gone (the
/// store keeps that index), and every CRM task activity in the history is marked seen.
fn expected_from_v1(v1: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for record in v1 {
        let t = record["t"].as_str().unwrap_or_default();
        if (t == "item" && record["bucket"] == "open_handoffs")
            || (t == "cursor" && record["name"] == "engine.open_handoffs.indexed")
        {
            continue;
        }
        if t == "history"
            && record["v"]["kind"] == "activity"
            && let Some(task) = record["v"]["detail"]["task_id"].as_str()
        {
            let stamp = record["v"]["detail"]["modstamp"].as_str().unwrap_or_default();
            out.push(serde_json::json!({ "t": "seen", "lead": record["lead"], "key": format!("task/{task}/{stamp}") }));
        }
        out.push(record.clone());
    }
    out
}

/// Records as sorted text, every fractional number rounded to 12 significant digits: the
/// schema-1 export was written by a build whose JSON reader could be off by one unit in the
/// last place of a float (this one reads floats exactly, so its exports round-trip exactly).
fn sorted_v1(values: Vec<Value>) -> Vec<String> {
    fn round(value: Value) -> Value {
        match value {
            Value::Number(n) if n.is_f64() => {
                let rounded: f64 =
                    format!("{:.11e}", n.as_f64().unwrap_or_default()).parse().unwrap_or_default();
                serde_json::json!(rounded)
            }
            Value::Array(items) => Value::Array(items.into_iter().map(round).collect()),
            Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, round(v))).collect()),
            other => other,
        }
    }
    sorted(values.into_iter().map(round).collect())
}

fn sorted(mut values: Vec<Value>) -> Vec<String> {
    let mut out: Vec<String> = values.drain(..).map(|v| v.to_string()).collect();
    out.sort();
    out.dedup();
    out
}

#[tokio::test]
async fn a_schema_1_store_is_migrated_and_keeps_every_record() {
    let v1_export = fixture("v1-export.jsonl");
    assert_eq!(header_schema(&v1_export), 1);
    let v1 = records(&v1_export);
    let dir = tempfile::tempdir().expect("tempdir");
    unpack_v1(dir.path());

    let store = SledStore::open(&SledConfig::new(dir.path())).expect("open migrates");
    let migrated = dir.path().join("migrated.jsonl");
    export(store.as_ref(), &migrated).await.expect("export");
    assert_eq!(header_schema(&migrated), u64::from(SCHEMA_VERSION));
    let v2 = records(&migrated);
    let expected = expected_from_v1(&v1);
    assert!(expected.iter().any(|r| r["t"] == "seen"), "the fixture has CRM task activities");
    assert!(v1.iter().any(|r| r["bucket"] == "open_handoffs"), "the fixture has the old index");
    assert_eq!(sorted_v1(v2.clone()), sorted_v1(expected), "the migrated store holds what schema 1 exported");

    // The maintained indexes and counters agree with the records.
    let leads: Vec<LeadRecord> = v1
        .iter()
        .filter(|r| r["t"] == "lead")
        .map(|r| serde_json::from_value(r["v"].clone()).expect("lead"))
        .collect();
    let mut open: Vec<(String, String)> = leads
        .iter()
        .filter_map(|l| l.handoff.as_ref().map(|h| (l.lead.id.0.clone(), h.owner.0.clone())))
        .collect();
    open.sort();
    assert!(!open.is_empty(), "the fixture has open hand-offs");
    let indexed: Vec<(String, String)> =
        store.open_handoffs().await.expect("open").into_iter().map(|(l, p)| (l.0, p.0)).collect();
    assert_eq!(indexed, open);
    let mut per_owner: BTreeMap<String, u64> = BTreeMap::new();
    for (_, owner) in &open {
        *per_owner.entry(owner.clone()).or_default() += 1;
    }
    let counted: BTreeMap<String, u64> = store
        .open_handoffs_per_owner()
        .await
        .expect("per owner")
        .into_iter()
        .map(|(p, n)| (p.0, n))
        .collect();
    assert_eq!(counted, per_owner);
    assert!(leads.iter().any(|l| !l.scored.is_empty()), "the fixture has scored activities");
    let mut pending: BTreeMap<&str, u64> = BTreeMap::new();
    for record in v1.iter().filter(|r| r["t"] == "outbox") {
        let entry: OutboxEntry = serde_json::from_value(record["v"].clone()).expect("entry");
        if entry.state.is_pending() {
            *pending.entry(entry.effect.channel().as_str()).or_default() += 1;
        }
    }
    for channel in Channel::ALL {
        let (count, _) = store.outbox_pending(channel).await.expect("pending");
        assert_eq!(count, pending.get(channel.as_str()).copied().unwrap_or(0), "{channel:?}");
    }

    let mut per_stage: BTreeMap<&str, u64> = BTreeMap::new();
    for lead in &leads {
        *per_stage.entry(lead.stage.as_str()).or_default() += 1;
    }
    for (stage, count) in store.leads_per_stage().await.expect("per stage") {
        assert_eq!(count, per_stage.get(stage.as_str()).copied().unwrap_or(0), "{stage:?}");
    }

    // Opening again finds schema 2 and changes nothing.
    drop(store);
    let store = SledStore::open(&SledConfig::new(dir.path())).expect("reopen");
    let again = dir.path().join("again.jsonl");
    export(store.as_ref(), &again).await.expect("export");
    assert_eq!(records(&again), v2);

    // Importing schema 1's export into a fresh store gives the very same store.
    let fresh = tempfile::tempdir().expect("tempdir");
    let target = SledStore::open(&SledConfig::new(fresh.path())).expect("open");
    import(target.as_ref(), &v1_export).await.expect("import a schema-1 export");
    let imported = fresh.path().join("imported.jsonl");
    export(target.as_ref(), &imported).await.expect("export");
    assert_eq!(sorted_v1(records(&imported)), sorted_v1(v2), "the same records");
}

#[tokio::test]
async fn a_migrated_store_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    unpack_v1(dir.path());
    let store = SledStore::open(&SledConfig::new(dir.path())).expect("open migrates");
    // Leads read whole (their scored activities put back), and a write on top of a migrated
    // lead is checked against its version.
    let leads = store.leads(None, 1000).await.expect("leads");
    let mut record = leads.into_iter().find(|l| !l.scored.is_empty()).expect("a scored lead");
    let read = record.version;
    record.version += 1;
    record.lead.title = Some("Head of Ops".into());
    let mut batch = leadloop_store::Batch::new();
    batch.put_lead_expecting(record.clone(), leadloop_store::Expect::Version(read));
    store.commit(batch).await.expect("write");
    assert_eq!(store.lead(&record.lead.id).await.expect("read"), Some(record));
}

/// Schema 2 → 3 moves no record: an outbox entry written by schema 2 holds its own delivery
/// bookkeeping, which schema 3 reads until an update writes the entry's delivery record. So
/// the migrated store exports exactly what schema 2 exported, pending entries leave and are
/// recorded as before, and schema 2's export imports into the same store.
#[tokio::test]
async fn a_schema_2_store_is_migrated_and_keeps_every_record() {
    use leadloop_core::{IdempotencyKey, OutboxState};
    let v2_export = fixture("v2-export.jsonl");
    assert_eq!(header_schema(&v2_export), 2);
    let v2 = records(&v2_export);
    let dir = tempfile::tempdir().expect("tempdir");
    unpack("v2-store.tar.gz", dir.path());

    let store = SledStore::open(&SledConfig::new(dir.path())).expect("open migrates");
    let migrated = dir.path().join("migrated.jsonl");
    let first = export(store.as_ref(), &migrated).await.expect("export");
    assert_eq!(header_schema(&migrated), u64::from(SCHEMA_VERSION));
    assert_eq!(
        sorted(records(&migrated)),
        sorted(v2.clone()),
        "the migrated store holds what schema 2 exported"
    );

    let entries: Vec<OutboxEntry> = v2
        .iter()
        .filter(|r| r["t"] == "outbox")
        .map(|r| serde_json::from_value(r["v"].clone()).expect("entry"))
        .collect();
    assert!(entries.iter().any(|e| !e.state.is_pending()), "the fixture has delivered entries");
    let pending: Vec<&OutboxEntry> = entries.iter().filter(|e| e.state.is_pending()).collect();
    assert!(!pending.is_empty(), "the fixture has pending entries");
    for channel in Channel::ALL {
        let count = pending.iter().filter(|e| e.effect.channel() == channel).count() as u64;
        assert_eq!(store.outbox_pending(channel).await.expect("pending").0, count, "{channel:?}");
    }
    for entry in &entries {
        assert_eq!(store.outbox_entry(&entry.key).await.expect("read").as_ref(), Some(entry));
    }

    // A pending entry written by schema 2 is delivered and recorded by schema 3.
    let entry = (*pending[0]).clone();
    let channel = entry.effect.channel();
    let ready = store.outbox_ready(channel, entry.next_attempt_at, 10_000).await.expect("ready");
    assert!(ready.contains(&entry), "the schema-2 entry is ready");
    let mut done = entry.clone();
    done.attempts += 1;
    done.state = OutboxState::Done { at: entry.next_attempt_at };
    let mut batch = leadloop_store::Batch::new();
    batch.update_outbox(done.clone());
    store.commit(batch).await.expect("record the delivery");
    let key: &IdempotencyKey = &entry.key;
    assert_eq!(store.outbox_entry(key).await.expect("read"), Some(done.clone()));
    let (count, _) = store.outbox_pending(channel).await.expect("pending");
    assert_eq!(count, pending.iter().filter(|e| e.effect.channel() == channel).count() as u64 - 1);
    assert!(
        !store.outbox_ready(channel, entry.next_attempt_at, 10_000).await.expect("ready").contains(&entry)
    );
    drop(store);
    let store = SledStore::open(&SledConfig::new(dir.path())).expect("reopen");
    assert_eq!(store.outbox_entry(key).await.expect("read"), Some(done));

    // Importing schema 2's export into a fresh store gives the store as migrated.
    let fresh = tempfile::tempdir().expect("tempdir");
    let target = SledStore::open(&SledConfig::new(fresh.path())).expect("open");
    import(target.as_ref(), &v2_export).await.expect("import a schema-2 export");
    let imported = fresh.path().join("imported.jsonl");
    let second = export(target.as_ref(), &imported).await.expect("export");
    assert_eq!(second, first, "same records, same checksum");
}
