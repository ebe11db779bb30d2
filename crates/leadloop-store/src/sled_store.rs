//! The sled engine. All records live in one tree (layout in `keys`), so each [`Batch`] becomes
//! one atomic `sled::Batch`. Writers are serialised by a mutex (the daemon has one writer per
//! state directory anyway, enforced by the directory lock), which makes the read-then-write
//! steps (outbox dedupe, history sequence, timer moves) safe.
//!
//! Durability is group commit: a commit applies its batch, then waits until a flush that
//! started after its write has finished. Whoever finds no flush running starts one that covers
//! every write so far; the others wait for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use leadloop_core::{
    Channel, HistoryEvent, IdempotencyKey, LeadId, LeadRecord, OutboxEntry, Person, PersonId, Suppression,
    Timer, TimerKey, Timestamp,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::keys;
use crate::lock::DirLock;
use crate::{Batch, Committed, Op, Record, Result, SCHEMA_VERSION, Stats, Store, StoreError};

/// Settings for the sled engine.
#[derive(Debug, Clone)]
pub struct SledConfig {
    pub dir: PathBuf,
    /// Upper bound of sled's page cache, in bytes (default 64 MiB).
    pub cache_bytes: u64,
}

impl SledConfig {
    pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), cache_bytes: Self::DEFAULT_CACHE_BYTES }
    }
}

/// Migrations, in order: `MIGRATIONS[i]` takes a store from version `i + 1` to `i + 2`.
type Migration = fn(&sled::Tree) -> sled::Result<()>;
const MIGRATIONS: &[Migration] = &[];

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    dir: PathBuf,
    /// Serialises writers; held only while a batch is built and applied, never across await.
    writer: Mutex<()>,
    /// Number of batches applied.
    written: AtomicU64,
    /// Number of batches known durable.
    flushed: AtomicU64,
    flush_lock: tokio::sync::Mutex<()>,
    flushes: AtomicU64,
    /// The last queue-order number given to an outbox entry.
    outbox_seq: AtomicU64,
    _lock: DirLock,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `config.dir`, taking the directory lock and
    /// migrating older schemas.
    pub fn open(config: &SledConfig) -> Result<Arc<Self>> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Dir { path: dir.clone(), source })?;
        let lock = DirLock::acquire(&dir)?;
        // With the directory lock held, sled's own file lock can only be held by an earlier
        // store of this same process whose background threads are still winding down after
        // it was dropped (a restart in-process: tests, `demo`). Give them a moment.
        let mut waited = std::time::Duration::ZERO;
        let db = loop {
            match sled::Config::new().path(dir.join("db")).cache_capacity(config.cache_bytes).open() {
                Ok(db) => break db,
                // sled reports it as `ErrorKind::Other` with this message.
                Err(sled::Error::Io(e))
                    if e.to_string().starts_with("could not acquire lock")
                        && waited < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    waited += std::time::Duration::from_millis(20);
                }
                Err(e) => return Err(engine_error(&dir, e)),
            }
        };
        let tree = db.open_tree("state").map_err(|e| engine_error(&dir, e))?;
        let store = Self {
            db,
            tree,
            dir,
            writer: Mutex::new(()),
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            flush_lock: tokio::sync::Mutex::new(()),
            flushes: AtomicU64::new(0),
            outbox_seq: AtomicU64::new(0),
            _lock: lock,
        };
        store.migrate()?;
        if let Some(raw) = store.tree.get(keys::OUTBOX_SEQ).map_err(|e| store.err(e))? {
            let bytes: [u8; 8] =
                raw.as_ref().try_into().map_err(|_| corrupt(keys::OUTBOX_SEQ, "expected 8 bytes"))?;
            store.outbox_seq.store(u64::from_be_bytes(bytes), Ordering::SeqCst);
        }
        Ok(Arc::new(store))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn migrate(&self) -> Result<()> {
        let found = match self.tree.get(keys::SCHEMA).map_err(|e| self.err(e))? {
            Some(raw) => {
                let bytes: [u8; 4] = raw.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    key: "schema".into(),
                    message: format!("expected 4 bytes, found {}", raw.len()),
                })?;
                u32::from_be_bytes(bytes)
            }
            None => {
                if self.tree.first().map_err(|e| self.err(e))?.is_some() {
                    return Err(StoreError::Corrupt {
                        key: "schema".into(),
                        message: "records present but no schema version".into(),
                    });
                }
                self.tree.insert(keys::SCHEMA, &SCHEMA_VERSION.to_be_bytes()).map_err(|e| self.err(e))?;
                self.tree.flush().map_err(|e| self.err(e))?;
                return Ok(());
            }
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: self.dir.clone(), found, supported: SCHEMA_VERSION });
        }
        for version in found..SCHEMA_VERSION {
            let index = (version - 1) as usize;
            if let Some(migration) = MIGRATIONS.get(index) {
                tracing::info!(from = version, to = version + 1, "migrating state");
                migration(&self.tree).map_err(|e| self.err(e))?;
            }
            self.tree.insert(keys::SCHEMA, &(version + 1).to_be_bytes()).map_err(|e| self.err(e))?;
            self.tree.flush().map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn err(&self, error: sled::Error) -> StoreError {
        engine_error(&self.dir, error)
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.tree.get(key).map_err(|e| self.err(e))? {
            Some(raw) => decode(key, &raw).map(Some),
            None => Ok(None),
        }
    }

    fn scan_values<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>> {
        self.tree
            .scan_prefix(prefix)
            .map(|item| {
                let (key, value) = item.map_err(|e| self.err(e))?;
                decode(&key, &value)
            })
            .collect()
    }

    /// Builds and applies one sled batch under the writer lock. Returns the write's number.
    fn apply(&self, batch: Batch) -> Result<(u64, Committed)> {
        let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut sled_batch = sled::Batch::default();
        let mut committed = Committed::default();
        // State changed earlier in this batch that later ops must see.
        let mut next_seq: HashMap<String, u64> = HashMap::new();
        let mut timer_due: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        let mut outbox_seen: HashMap<String, Option<OutboxEntry>> = HashMap::new();

        for op in batch.ops {
            match op {
                Op::PutLead(record) => {
                    sled_batch.insert(keys::simple(keys::LEAD, record.lead.id.as_str()), encode(&record)?);
                }
                Op::DeleteLead(id) => sled_batch.remove(keys::simple(keys::LEAD, id.as_str())),
                Op::AppendHistory(lead, event) => {
                    let seq = match next_seq.get(lead.as_str()) {
                        Some(seq) => *seq,
                        None => self.last_history_seq(lead.as_str())?.map_or(1, |s| s + 1),
                    };
                    next_seq.insert(lead.0.clone(), seq + 1);
                    sled_batch.insert(keys::history(lead.as_str(), seq), encode(&event)?);
                }
                Op::PutPerson(person) => {
                    sled_batch.insert(keys::simple(keys::PERSON, person.id.as_str()), encode(&person)?);
                }
                Op::DeletePerson(id) => sled_batch.remove(keys::simple(keys::PERSON, id.as_str())),
                Op::SetTimer(timer) => self.set_timer(&mut sled_batch, &mut timer_due, &timer, false)?,
                Op::SetTimerEarliest(timer) => {
                    self.set_timer(&mut sled_batch, &mut timer_due, &timer, true)?
                }
                Op::CancelTimer(key) => {
                    let key = key.0;
                    if let Some(old) = self.current_timer_due(&key, &timer_due)? {
                        sled_batch.remove(ordered_raw(keys::TIMER, &old, &key));
                        sled_batch.remove(keys::simple(keys::TIMER_BY_KEY, &key));
                    }
                    timer_due.insert(key, None);
                }
                Op::Enqueue(entry) => {
                    let key = entry.key.as_str().to_owned();
                    if self.current_outbox(&key, &outbox_seen)?.is_some() {
                        committed.duplicates += 1;
                        continue;
                    }
                    let seq = self.outbox_seq.fetch_add(1, Ordering::SeqCst) + 1;
                    let entry = OutboxEntry { seq, ..entry };
                    sled_batch.insert(keys::OUTBOX_SEQ, &seq.to_be_bytes());
                    self.write_outbox(&mut sled_batch, None, &entry)?;
                    committed.enqueued.push(entry.key.clone());
                    outbox_seen.insert(key, Some(entry));
                }
                Op::UpdateOutbox(entry) => {
                    let key = entry.key.as_str().to_owned();
                    let old = self.current_outbox(&key, &outbox_seen)?;
                    let mut entry = entry;
                    if let Some(old) = &old
                        && entry.seq == 0
                    {
                        entry.seq = old.seq;
                    }
                    self.write_outbox(&mut sled_batch, old.as_ref(), &entry)?;
                    outbox_seen.insert(key, Some(entry));
                }
                Op::Suppress(entry) => {
                    let address = entry.address.to_lowercase();
                    let entry = Suppression { address: address.clone(), ..entry };
                    sled_batch.insert(keys::simple(keys::SUPPRESSION, &address), encode(&entry)?);
                }
                Op::Unsuppress(address) => {
                    sled_batch.remove(keys::simple(keys::SUPPRESSION, &address.to_lowercase()));
                }
                Op::PutItem { bucket, key, value } => {
                    sled_batch.insert(keys::item(&bucket, &key), encode(&value)?);
                }
                Op::DeleteItem { bucket, key } => sled_batch.remove(keys::item(&bucket, &key)),
                Op::SetCursor { name, value } => {
                    sled_batch.insert(keys::simple(keys::CURSOR, &name), value.as_bytes());
                }
            }
        }
        self.tree.apply_batch(sled_batch).map_err(|e| self.err(e))?;
        let seq = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((seq, committed))
    }

    /// Sets (or moves) a timer; with `earliest`, an existing earlier timer is kept.
    fn set_timer(
        &self,
        batch: &mut sled::Batch,
        pending: &mut HashMap<String, Option<Vec<u8>>>,
        timer: &Timer,
        earliest: bool,
    ) -> Result<()> {
        let key = timer.key.as_str().to_owned();
        let due = keys::due_ceil(timer.due);
        if let Some(old) = self.current_timer_due(&key, pending)? {
            if earliest && old.as_slice() <= due.as_slice() {
                return Ok(());
            }
            batch.remove(ordered_raw(keys::TIMER, &old, &key));
        }
        batch.insert(ordered_raw(keys::TIMER, &due, &key), encode(timer)?);
        batch.insert(keys::simple(keys::TIMER_BY_KEY, &key), &due[..]);
        pending.insert(key, Some(due.to_vec()));
        Ok(())
    }

    fn last_history_seq(&self, lead: &str) -> Result<Option<u64>> {
        let prefix = keys::history_prefix(lead);
        match self.tree.scan_prefix(&prefix).next_back() {
            Some(item) => {
                let (key, _) = item.map_err(|e| self.err(e))?;
                let (_, seq) = keys::parse_history(&key).ok_or_else(|| corrupt(&key, "bad history key"))?;
                Ok(Some(seq))
            }
            None => Ok(None),
        }
    }

    fn current_timer_due(
        &self,
        key: &str,
        pending: &HashMap<String, Option<Vec<u8>>>,
    ) -> Result<Option<Vec<u8>>> {
        if let Some(due) = pending.get(key) {
            return Ok(due.clone());
        }
        Ok(self
            .tree
            .get(keys::simple(keys::TIMER_BY_KEY, key))
            .map_err(|e| self.err(e))?
            .map(|raw| raw.to_vec()))
    }

    fn current_outbox(
        &self,
        key: &str,
        pending: &HashMap<String, Option<OutboxEntry>>,
    ) -> Result<Option<OutboxEntry>> {
        if let Some(entry) = pending.get(key) {
            return Ok(entry.clone());
        }
        self.get(&keys::simple(keys::OUTBOX, key))
    }

    fn write_outbox(
        &self,
        batch: &mut sled::Batch,
        old: Option<&OutboxEntry>,
        entry: &OutboxEntry,
    ) -> Result<()> {
        let key = entry.key.as_str();
        if let Some(old) = old.filter(|old| old.state.is_pending()) {
            batch.remove(keys::ready_key(
                keys::ready(old.effect.channel()),
                old.next_attempt_at,
                old.seq,
                key,
            ));
        }
        if entry.state.is_pending() {
            batch.insert(
                keys::ready_key(keys::ready(entry.effect.channel()), entry.next_attempt_at, entry.seq, key),
                &[][..],
            );
        }
        batch.insert(keys::simple(keys::OUTBOX, key), encode(entry)?);
        Ok(())
    }

    /// Waits until every write numbered `seq` or lower is on disk.
    async fn sync_to(&self, seq: u64) -> Result<()> {
        if self.flushed.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let _flushing = self.flush_lock.lock().await;
        if self.flushed.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        // Everything applied so far rides on this flush.
        let target = self.written.load(Ordering::SeqCst);
        let db = self.db.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || db.flush().map_err(|e| engine_error(&dir, e))).await.map_err(
            |e| StoreError::Engine { path: self.dir.clone(), message: format!("flush task failed: {e}") },
        )??;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.flushed.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl Store for SledStore {
    async fn commit(&self, batch: Batch) -> Result<Committed> {
        if batch.is_empty() {
            return Ok(Committed::default());
        }
        let (seq, committed) = self.apply(batch)?;
        self.sync_to(seq).await?;
        Ok(committed)
    }

    async fn lead(&self, id: &LeadId) -> Result<Option<LeadRecord>> {
        self.get(&keys::simple(keys::LEAD, id.as_str()))
    }

    async fn leads(&self, after: Option<&LeadId>, limit: usize) -> Result<Vec<LeadRecord>> {
        let start = match after {
            Some(id) => {
                let mut key = keys::simple(keys::LEAD, id.as_str());
                key.push(0);
                key
            }
            None => vec![keys::LEAD],
        };
        self.tree
            .range(start..vec![keys::LEAD + 1])
            .take(limit)
            .map(|item| {
                let (key, value) = item.map_err(|e| self.err(e))?;
                decode(&key, &value)
            })
            .collect()
    }

    async fn person(&self, id: &PersonId) -> Result<Option<Person>> {
        self.get(&keys::simple(keys::PERSON, id.as_str()))
    }

    async fn people(&self) -> Result<Vec<Person>> {
        self.scan_values(&[keys::PERSON])
    }

    async fn history(&self, id: &LeadId) -> Result<Vec<(u64, HistoryEvent)>> {
        self.tree
            .scan_prefix(keys::history_prefix(id.as_str()))
            .map(|item| {
                let (key, value) = item.map_err(|e| self.err(e))?;
                let (_, seq) = keys::parse_history(&key).ok_or_else(|| corrupt(&key, "bad history key"))?;
                Ok((seq, decode(&key, &value)?))
            })
            .collect()
    }

    async fn timer(&self, key: &TimerKey) -> Result<Option<Timer>> {
        let Some(due) =
            self.tree.get(keys::simple(keys::TIMER_BY_KEY, key.as_str())).map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        self.get(&ordered_raw(keys::TIMER, &due, key.as_str()))
    }

    async fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<Timer>> {
        self.tree
            .range(vec![keys::TIMER]..keys::ordered_end(keys::TIMER, now))
            .take(limit)
            .map(|item| {
                let (key, value) = item.map_err(|e| self.err(e))?;
                decode(&key, &value)
            })
            .collect()
    }

    async fn next_timer_due(&self) -> Result<Option<Timestamp>> {
        match self.tree.scan_prefix([keys::TIMER]).next() {
            Some(item) => {
                let (key, _) = item.map_err(|e| self.err(e))?;
                Ok(Some(keys::instant_from(&key[1..]).ok_or_else(|| corrupt(&key, "bad timer key"))?))
            }
            None => Ok(None),
        }
    }

    async fn outbox_entry(&self, key: &IdempotencyKey) -> Result<Option<OutboxEntry>> {
        self.get(&keys::simple(keys::OUTBOX, key.as_str()))
    }

    async fn outbox_ready(&self, channel: Channel, now: Timestamp, limit: usize) -> Result<Vec<OutboxEntry>> {
        // Only what is durable may leave: wait for any batch still being flushed.
        self.sync_to(self.written.load(Ordering::SeqCst)).await?;
        let tag = keys::ready(channel);
        let mut ready = Vec::new();
        for item in self.tree.range(vec![tag]..keys::ordered_end(tag, now)).take(limit) {
            let (key, _) = item.map_err(|e| self.err(e))?;
            let id = keys::ready_entry(&key).ok_or_else(|| corrupt(&key, "bad ready key"))?;
            match self.get::<OutboxEntry>(&keys::simple(keys::OUTBOX, id))? {
                Some(entry) => ready.push(entry),
                None => return Err(corrupt(&key, "ready index names a missing outbox entry")),
            }
        }
        Ok(ready)
    }

    async fn outbox_pending(&self, channel: Channel) -> Result<(u64, Option<Timestamp>)> {
        let tag = keys::ready(channel);
        let mut count = 0u64;
        let mut earliest = None;
        for item in self.tree.scan_prefix([tag]) {
            let (key, _) = item.map_err(|e| self.err(e))?;
            if earliest.is_none() {
                earliest = keys::instant_from(&key[1..]);
            }
            count += 1;
        }
        Ok((count, earliest))
    }

    async fn items(&self, bucket: &str) -> Result<Vec<(String, serde_json::Value)>> {
        self.tree
            .scan_prefix(keys::bucket_prefix(bucket))
            .map(|item| {
                let (key, value) = item.map_err(|e| self.err(e))?;
                let (_, name) = keys::parse_item(&key).ok_or_else(|| corrupt(&key, "bad item key"))?;
                Ok((name, decode(&key, &value)?))
            })
            .collect()
    }

    async fn suppression(&self, address: &str) -> Result<Option<Suppression>> {
        self.get(&keys::simple(keys::SUPPRESSION, &address.to_lowercase()))
    }

    async fn cursor(&self, name: &str) -> Result<Option<String>> {
        match self.tree.get(keys::simple(keys::CURSOR, name)).map_err(|e| self.err(e))? {
            Some(raw) => String::from_utf8(raw.to_vec())
                .map(Some)
                .map_err(|_| corrupt(name.as_bytes(), "cursor is not UTF-8")),
            None => Ok(None),
        }
    }

    async fn scan(&self, visit: &mut (dyn FnMut(Record) -> Result<()> + Send)) -> Result<()> {
        for item in self.tree.iter() {
            let (key, value) = item.map_err(|e| self.err(e))?;
            let record = match key.first().copied() {
                Some(keys::LEAD) => Record::Lead { v: decode(&key, &value)? },
                Some(keys::PERSON) => Record::Person { v: decode(&key, &value)? },
                Some(keys::HISTORY) => {
                    let (lead, seq) =
                        keys::parse_history(&key).ok_or_else(|| corrupt(&key, "bad history key"))?;
                    Record::History { lead: LeadId(lead), seq, v: decode(&key, &value)? }
                }
                Some(keys::TIMER) => Record::Timer { v: decode(&key, &value)? },
                Some(keys::OUTBOX) => Record::Outbox { v: decode(&key, &value)? },
                Some(keys::CURSOR) => Record::Cursor {
                    name: String::from_utf8_lossy(&key[1..]).into_owned(),
                    value: String::from_utf8(value.to_vec())
                        .map_err(|_| corrupt(&key, "cursor is not UTF-8"))?,
                },
                Some(keys::SUPPRESSION) => Record::Suppression { v: decode(&key, &value)? },
                Some(keys::ITEM) => {
                    let (bucket, name) =
                        keys::parse_item(&key).ok_or_else(|| corrupt(&key, "bad item key"))?;
                    Record::Item { bucket, key: name, v: decode(&key, &value)? }
                }
                // Derived indexes and the schema marker are rebuilt, not exported.
                _ => continue,
            };
            visit(record)?;
        }
        Ok(())
    }

    async fn load(&self, records: Vec<Record>) -> Result<()> {
        let mut batch = Batch::new();
        let mut history = sled::Batch::default();
        for record in records {
            match record {
                Record::Lead { v } => {
                    batch.put_lead(*v);
                }
                Record::Person { v } => {
                    batch.put_person(v);
                }
                // History keeps its exported sequence numbers.
                Record::History { lead, seq, v } => {
                    history.insert(keys::history(lead.as_str(), seq), encode(&v)?)
                }
                Record::Timer { v } => {
                    batch.set_timer(v);
                }
                Record::Outbox { v } => {
                    batch.update_outbox(v);
                }
                Record::Cursor { name, value } => {
                    batch.set_cursor(name, value);
                }
                Record::Suppression { v } => {
                    batch.suppress(v);
                }
                Record::Item { bucket, key, v } => {
                    batch.put_item(bucket, key, v);
                }
            }
        }
        {
            let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            self.tree.apply_batch(history).map_err(|e| self.err(e))?;
        }
        self.commit(batch).await?;
        Ok(())
    }

    async fn is_empty(&self) -> Result<bool> {
        // Only the schema marker may be present.
        for item in self.tree.iter().take(2) {
            let (key, _) = item.map_err(|e| self.err(e))?;
            if key.as_ref() != keys::SCHEMA {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn stats(&self) -> Stats {
        Stats {
            size_on_disk: self.db.size_on_disk().unwrap_or(0),
            commits: self.written.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
        }
    }
}

fn ordered_raw(tag: u8, due: &[u8], key: &str) -> Vec<u8> {
    let mut raw = Vec::with_capacity(1 + due.len() + key.len());
    raw.push(tag);
    raw.extend_from_slice(due);
    raw.extend_from_slice(key.as_bytes());
    raw
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Corrupt { key: String::new(), message: format!("cannot encode: {e}") })
}

fn decode<T: DeserializeOwned>(key: &[u8], raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| corrupt(key, &e.to_string()))
}

fn corrupt(key: &[u8], message: &str) -> StoreError {
    StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), message: message.to_owned() }
}

fn engine_error(dir: &Path, error: sled::Error) -> StoreError {
    if let sled::Error::Io(io) = &error
        && (io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28))
    {
        return StoreError::NoSpace { path: dir.to_path_buf() };
    }
    StoreError::Engine { path: dir.to_path_buf(), message: error.to_string() }
}
