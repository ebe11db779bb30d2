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
use leadloop_core::guard::GuardState;
use leadloop_core::{
    Channel, HistoryEvent, IdempotencyKey, LeadId, LeadRecord, OutboxEntry, OutboxState, Person, PersonId,
    Stage, Suppression, Timer, TimerKey, Timestamp,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::lock::DirLock;
use crate::{Batch, Committed, Expect, Found, Op, Record, Result, SCHEMA_VERSION, Stats, Store, StoreError};
use crate::{codec, keys, migrate};

/// Settings for the sled engine.
#[derive(Debug, Clone)]
pub struct SledConfig {
    pub dir: PathBuf,
    /// Upper bound of sled's page cache, in bytes (default 64 MiB).
    pub cache_bytes: u64,
    /// How long a flush to disk may take before the store gives up on this process (a full
    /// or failing disk can leave sled's flush waiting forever): every later write and
    /// durable read is refused with [`StoreError::Stalled`] and [`Store::broken`] resolves.
    pub flush_timeout: std::time::Duration,
}

impl SledConfig {
    pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;
    /// Below the unit's `WatchdogSec=30s`, so a stalled disk ends in exit 74 with the reason
    /// rather than in a watchdog kill.
    pub const DEFAULT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            cache_bytes: Self::DEFAULT_CACHE_BYTES,
            flush_timeout: Self::DEFAULT_FLUSH_TIMEOUT,
        }
    }
}

/// Migrations, in order: `MIGRATIONS[i]` takes a store from version `i + 1` to `i + 2`. Each
/// must be safe to run again after a crash part-way (the schema marker moves only after it
/// finished and was flushed).
type Migration = fn(&sled::Tree) -> Result<(), migrate::MigrationError>;
const MIGRATIONS: &[Migration] = &[migrate::v1_to_v2, migrate::v2_to_v3, migrate::v3_to_v4];

/// An outbox entry's delivery bookkeeping (`o <key>`), written by every update after the entry
/// was queued. The entry as queued (`O <key>`: its effect, an email's template variables) is
/// written once; what a delivery attempt changes is this small record, which overrides the
/// queued entry's own bookkeeping when present.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    seq: u64,
    channel: Channel,
    state: OutboxState,
    attempts: u32,
    next_attempt_at: Timestamp,
    last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    released_at: Option<Timestamp>,
}

impl Delivery {
    fn of(entry: &OutboxEntry) -> Self {
        Self {
            seq: entry.seq,
            channel: entry.effect.channel(),
            state: entry.state.clone(),
            attempts: entry.attempts,
            next_attempt_at: entry.next_attempt_at,
            last_error: entry.last_error.clone(),
            released_at: entry.released_at,
        }
    }

    fn apply_to(self, entry: &mut OutboxEntry) {
        entry.seq = self.seq;
        entry.state = self.state;
        entry.attempts = self.attempts;
        entry.next_attempt_at = self.next_attempt_at;
        entry.last_error = self.last_error;
        entry.released_at = self.released_at;
    }
}

/// The bookkeeping of a queued entry (`O <key>`) read without its effect's payload: the
/// decoder skips the template variables instead of building them.
#[derive(Debug, Deserialize)]
struct QueuedHead {
    #[serde(default)]
    seq: u64,
    effect: EffectTag,
    state: OutboxState,
    attempts: u32,
    next_attempt_at: Timestamp,
    last_error: Option<String>,
    #[serde(default)]
    released_at: Option<Timestamp>,
}

/// Only the variant tag of a stored [`leadloop_core::Effect`].
#[derive(Debug, Deserialize)]
struct EffectTag {
    effect: String,
}

impl QueuedHead {
    fn delivery(self, key: &[u8]) -> Result<Delivery> {
        let channel = match self.effect.effect.as_str() {
            "email" => Channel::Email,
            "crm_update" | "crm_task" => Channel::Crm,
            "calendar_hold" => Channel::Calendar,
            "chat" => Channel::Chat,
            other => return Err(corrupt(key, &format!("unknown effect {other:?}"))),
        };
        Ok(Delivery {
            seq: self.seq,
            channel,
            state: self.state,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error,
            released_at: self.released_at,
        })
    }
}

/// What a lead write checks and maintains, per lead.
#[derive(Debug, Clone)]
struct LeadMeta {
    version: u64,
    stage: Stage,
    /// The owner of the running hand-off, if any (the open hand-off index).
    owner: Option<String>,
    /// The scored activities as stored (encoded), if any.
    scored: Option<Vec<u8>>,
}

/// What a lead write reads of the stored record (`L <id>`): the decoder skips the rest
/// (the lead's fields, its nurture state) instead of building it.
#[derive(Debug, Deserialize)]
struct LeadHead {
    stage: Stage,
    #[serde(default)]
    handoff: Option<HandoffOwner>,
    version: u64,
}

#[derive(Debug, Deserialize)]
struct HandoffOwner {
    owner: String,
}

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
    /// Pending outbox entries per channel (`Channel::ALL` order), mirrored from the counters
    /// kept in the store with each batch.
    pending: [AtomicU64; Channel::ALL.len()],
    /// Records read by queries (see [`Stats::records_read`]).
    reads: AtomicU64,
    /// Leads per stage, mirrored from the counters kept in the store with each batch.
    stages: Mutex<HashMap<Stage, u64>>,
    /// Open hand-offs per owner, mirrored from the counters kept in the store.
    loads: Mutex<HashMap<String, u64>>,
    flush_timeout: std::time::Duration,
    /// Set once the store can take no more writes in this process (see [`Store::broken`]).
    broken: tokio::sync::watch::Sender<Option<Broken>>,
    _lock: DirLock,
}

/// Why a store takes no more writes until it is opened again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    NoSpace,
    Stalled { waited_s: u64 },
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `config.dir`, taking the directory lock and
    /// migrating older schemas.
    /// Opens a store that must already exist, creating nothing: what a command that only
    /// reads uses, so that pointing it at the wrong directory is an error, not a new, empty
    /// store. [`StoreError::NoState`] when the directory holds no store.
    pub fn open_existing(config: &SledConfig) -> Result<Arc<Self>> {
        if config.dir.exists() && !config.dir.is_dir() {
            return Err(StoreError::NotADirectory { path: config.dir.clone() });
        }
        if !config.dir.join("db").is_dir() {
            return Err(StoreError::NoState { path: config.dir.clone() });
        }
        Self::open(config)
    }

    pub fn open(config: &SledConfig) -> Result<Arc<Self>> {
        let dir = config.dir.clone();
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::NotADirectory { path: dir });
        }
        // A new state directory holds personal data: only its owner may enter it. An existing
        // one keeps its mode (systemd's StateDirectory= sets its own).
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| StoreError::Dir { path: dir.clone(), source })?;
        }
        let lock = DirLock::acquire(&dir)?;
        // With the directory lock held, sled's own file lock can only be held by an earlier
        // store of this same process whose background threads are still winding down after
        // it was dropped (a restart in-process: tests, `demo`). Give them a moment.
        let mut waited = std::time::Duration::ZERO;
        let existed = dir.join(CREATED).exists();
        let db = loop {
            // sled panics on some damaged files (an index out of bounds while it recovers):
            // that is a damaged store to report, not a crash to restart into forever.
            let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sled::Config::new().path(dir.join("db")).cache_capacity(config.cache_bytes).open()
            }))
            .map_err(|panic| StoreError::Damaged {
                path: dir.clone(),
                detail: format!("the storage engine failed reading it: {}", panic_text(&panic)),
            })?;
            match opened {
                Ok(db) => break db,
                // sled reports it as `ErrorKind::Other` with this message.
                Err(sled::Error::Io(e))
                    if e.to_string().starts_with("could not acquire lock")
                        && waited < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    waited += std::time::Duration::from_millis(20);
                }
                Err(sled::Error::Corruption { .. }) => {
                    return Err(StoreError::Damaged {
                        path: dir.clone(),
                        detail: "the storage engine found corrupted data".into(),
                    });
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
            pending: Default::default(),
            reads: AtomicU64::new(0),
            stages: Mutex::default(),
            loads: Mutex::default(),
            flush_timeout: config.flush_timeout,
            broken: tokio::sync::watch::Sender::new(None),
            _lock: lock,
        };
        store.migrate(existed)?;
        if !existed {
            // From now on this directory holds a store: a later open that finds no schema
            // marker found a damaged store, not a new one.
            let marker = store.dir.join(CREATED);
            std::fs::write(&marker, format!("sled store, schema {SCHEMA_VERSION}\n"))
                .and_then(|()| std::fs::File::open(&marker)?.sync_all())
                .map_err(|source| StoreError::Dir { path: store.dir.clone(), source })?;
        }
        store.outbox_seq.store(store.read_u64(keys::OUTBOX_SEQ)?.unwrap_or(0), Ordering::SeqCst);
        for (i, channel) in Channel::ALL.into_iter().enumerate() {
            let count = store.read_u64(&keys::pending_counter(keys::ready(channel)))?.unwrap_or(0);
            store.pending[i].store(count, Ordering::SeqCst);
        }
        {
            let mut loads = store.loads.lock().unwrap_or_else(|p| p.into_inner());
            for item in store.tree.scan_prefix(keys::LOAD_COUNTER_PREFIX) {
                let (key, value) = item.map_err(|e| store.err(e))?;
                let person = std::str::from_utf8(&key[keys::LOAD_COUNTER_PREFIX.len()..])
                    .map_err(|_| corrupt(&key, "person id is not UTF-8"))?;
                let bytes: [u8; 8] =
                    value.as_ref().try_into().map_err(|_| corrupt(&key, "expected 8 bytes"))?;
                loads.insert(person.to_owned(), u64::from_be_bytes(bytes));
            }
        }
        {
            let mut stages = store.stages.lock().unwrap_or_else(|p| p.into_inner());
            for stage in Stage::ALL {
                stages.insert(stage, store.read_u64(&keys::stage_counter(stage))?.unwrap_or(0));
            }
        }
        Ok(Arc::new(store))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        match self.tree.get(key).map_err(|e| self.err(e))? {
            Some(raw) => {
                let bytes: [u8; 8] = raw.as_ref().try_into().map_err(|_| corrupt(key, "expected 8 bytes"))?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
            None => Ok(None),
        }
    }

    fn count_reads(&self, n: usize) {
        self.reads.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A lead as stored: its record with its scored activities put back.
    fn read_lead(&self, id: &str, raw: &[u8]) -> Result<LeadRecord> {
        let key = keys::simple(keys::LEAD, id);
        let mut record: LeadRecord = decode(&key, raw)?;
        let scored_key = keys::simple(keys::SCORED, id);
        if let Some(scored) = self.tree.get(&scored_key).map_err(|e| self.err(e))? {
            record.scored = decode(&scored_key, &scored)?;
        }
        Ok(record)
    }

    fn lead_by_id(&self, id: &str) -> Result<Option<LeadRecord>> {
        match self.tree.get(keys::simple(keys::LEAD, id)).map_err(|e| self.err(e))? {
            Some(raw) => {
                self.count_reads(1);
                self.read_lead(id, &raw).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Checks the schema version and migrates to this build's. `existed`: the directory held
    /// a store before this open (its marker file), so a missing schema version means the
    /// store lost its records.
    fn migrate(&self, existed: bool) -> Result<()> {
        let found = match self.tree.get(keys::SCHEMA).map_err(|e| self.err(e))? {
            Some(raw) => {
                let bytes: [u8; 4] = raw.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    key: "schema".into(),
                    message: format!("expected 4 bytes, found {}", raw.len()),
                })?;
                u32::from_be_bytes(bytes)
            }
            None => {
                if existed {
                    return Err(StoreError::Damaged {
                        path: self.dir.clone(),
                        detail: "its records are gone: the schema version a store always holds is missing (a truncated or deleted file)".into(),
                    });
                }
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
                migration(&self.tree).map_err(|e| match e {
                    migrate::MigrationError::Sled(e) => self.err(e),
                    migrate::MigrationError::Corrupt { key, message } => corrupt(&key, &message),
                })?;
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
    /// Nothing is applied if any lead write finds another version than it expects.
    fn apply(&self, batch: Batch) -> Result<(u64, Committed)> {
        let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut sled_batch = sled::Batch::default();
        let mut committed = Committed::default();
        // State changed earlier in this batch that later ops must see.
        let mut next_seq: HashMap<String, u64> = HashMap::new();
        let mut timer_due: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        let mut outbox_seen: HashMap<String, Delivery> = HashMap::new();
        let mut leads: HashMap<String, Option<LeadMeta>> = HashMap::new();
        let mut pending_delta = [0i64; Channel::ALL.len()];
        let mut stage_delta: HashMap<Stage, i64> = HashMap::new();
        let mut load_delta: HashMap<String, i64> = HashMap::new();
        let mut last_seq = None;

        for op in batch.ops {
            match op {
                Op::PutLead { record, expect } => {
                    let mut record = *record;
                    let id = record.lead.id.as_str().to_owned();
                    let current = self.lead_meta(&id, &leads)?;
                    check(&record.lead.id, expect, current.as_ref())?;
                    if let Expect::Version(v) = expect
                        && record.version <= v
                    {
                        return Err(StoreError::Engine {
                            path: self.dir.clone(),
                            message: format!(
                                "a write of lead {id} decided on version {v} must carry a newer version, not {}",
                                record.version
                            ),
                        });
                    }
                    let scored = std::mem::take(&mut record.scored);
                    let scored = if scored.is_empty() { None } else { Some(codec_encode(&scored)?) };
                    sled_batch.insert(keys::simple(keys::LEAD, &id), codec_encode(&record)?);
                    let old_scored = current.as_ref().and_then(|meta| meta.scored.clone());
                    if scored != old_scored {
                        match &scored {
                            Some(raw) => sled_batch.insert(keys::simple(keys::SCORED, &id), raw.clone()),
                            None => sled_batch.remove(keys::simple(keys::SCORED, &id)),
                        }
                    }
                    let owner = record.handoff.as_ref().map(|h| h.owner.as_str().to_owned());
                    let old_owner = current.as_ref().and_then(|meta| meta.owner.clone());
                    if owner != old_owner {
                        if let Some(old) = old_owner {
                            *load_delta.entry(old).or_default() -= 1;
                        }
                        if let Some(new) = &owner {
                            *load_delta.entry(new.clone()).or_default() += 1;
                        }
                        match &owner {
                            Some(owner) => {
                                sled_batch.insert(keys::simple(keys::OPEN_HANDOFF, &id), owner.as_bytes())
                            }
                            None => sled_batch.remove(keys::simple(keys::OPEN_HANDOFF, &id)),
                        }
                    }
                    if current.as_ref().map(|meta| meta.stage) != Some(record.stage) {
                        if let Some(old) = &current {
                            *stage_delta.entry(old.stage).or_default() -= 1;
                        }
                        *stage_delta.entry(record.stage).or_default() += 1;
                    }
                    leads.insert(
                        id,
                        Some(LeadMeta { version: record.version, stage: record.stage, owner, scored }),
                    );
                }
                Op::DeleteLead { id, expect } => {
                    let key = id.as_str().to_owned();
                    let current = self.lead_meta(&key, &leads)?;
                    check(&id, expect, current.as_ref())?;
                    if let Some(old) = &current {
                        *stage_delta.entry(old.stage).or_default() -= 1;
                        if let Some(owner) = &old.owner {
                            *load_delta.entry(owner.clone()).or_default() -= 1;
                        }
                    }
                    sled_batch.remove(keys::simple(keys::LEAD, &key));
                    sled_batch.remove(keys::simple(keys::SCORED, &key));
                    sled_batch.remove(keys::simple(keys::OPEN_HANDOFF, &key));
                    leads.insert(key, None);
                }
                Op::MarkSeen { lead, key } => {
                    sled_batch.insert(keys::seen(lead.as_str(), &key), &[][..]);
                }
                Op::AppendHistory(lead, event) => {
                    let seq = match next_seq.get(lead.as_str()) {
                        Some(seq) => *seq,
                        None => self.last_history_seq(lead.as_str())?.map_or(1, |s| s + 1),
                    };
                    next_seq.insert(lead.0.clone(), seq + 1);
                    sled_batch.insert(keys::history(lead.as_str(), seq), codec_encode(&event)?);
                }
                Op::PutPerson(person) => {
                    sled_batch.insert(keys::simple(keys::PERSON, person.id.as_str()), codec_encode(&person)?);
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
                    if outbox_seen.contains_key(&key)
                        || self
                            .tree
                            .contains_key(keys::simple(keys::OUTBOX, &key))
                            .map_err(|e| self.err(e))?
                    {
                        committed.duplicates += 1;
                        continue;
                    }
                    let seq = self.outbox_seq.fetch_add(1, Ordering::SeqCst) + 1;
                    last_seq = Some(seq);
                    let entry = OutboxEntry { seq, ..entry };
                    let delivery = Delivery::of(&entry);
                    write_ready(&mut sled_batch, &mut pending_delta, None, &key, &delivery);
                    sled_batch.insert(keys::simple(keys::OUTBOX, &key), codec_encode(&entry)?);
                    committed.enqueued.push(entry.key);
                    outbox_seen.insert(key, delivery);
                }
                Op::UpdateOutbox(entry) => {
                    let key = entry.key.as_str().to_owned();
                    let old = self.current_delivery(&key, &outbox_seen)?;
                    let mut delivery = Delivery::of(&entry);
                    if let Some(old) = &old
                        && delivery.seq == 0
                    {
                        delivery.seq = old.seq;
                    }
                    write_ready(&mut sled_batch, &mut pending_delta, old.as_ref(), &key, &delivery);
                    if old.is_some() {
                        // The effect stays as queued: only the bookkeeping is written again.
                        sled_batch.insert(keys::simple(keys::DELIVERY, &key), codec_encode(&delivery)?);
                    } else {
                        // Not queued here before (an import): the whole entry, as given.
                        let entry = OutboxEntry { seq: delivery.seq, ..entry };
                        sled_batch.insert(keys::simple(keys::OUTBOX, &key), codec_encode(&entry)?);
                    }
                    outbox_seen.insert(key, delivery);
                }
                Op::Suppress(entry) => {
                    let address = entry.address.to_lowercase();
                    let entry = Suppression { address: address.clone(), ..entry };
                    sled_batch.insert(keys::simple(keys::SUPPRESSION, &address), codec_encode(&entry)?);
                }
                Op::Unsuppress(address) => {
                    sled_batch.remove(keys::simple(keys::SUPPRESSION, &address.to_lowercase()));
                }
                Op::PutItem { bucket, key, value } => {
                    sled_batch.insert(keys::item(&bucket, &key), codec_encode(&value)?);
                }
                Op::DeleteItem { bucket, key } => sled_batch.remove(keys::item(&bucket, &key)),
                Op::SetCursor { name, value } => {
                    sled_batch.insert(keys::simple(keys::CURSOR, &name), value.as_bytes());
                }
                Op::SetGuard(state) => {
                    let value = serde_json::to_value(&state).map_err(|e| StoreError::Corrupt {
                        key: "guard state".into(),
                        message: e.to_string(),
                    })?;
                    sled_batch
                        .insert(keys::item(crate::GUARD_BUCKET, crate::GUARD_KEY), codec_encode(&value)?);
                }
            }
        }
        if let Some(seq) = last_seq {
            sled_batch.insert(keys::OUTBOX_SEQ, &seq.to_be_bytes());
        }
        let mut counts = [0u64; Channel::ALL.len()];
        for (i, channel) in Channel::ALL.into_iter().enumerate() {
            counts[i] = (self.pending[i].load(Ordering::SeqCst) as i64 + pending_delta[i]).max(0) as u64;
            if pending_delta[i] != 0 {
                sled_batch.insert(keys::pending_counter(keys::ready(channel)), &counts[i].to_be_bytes());
            }
        }
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        let mut stage_counts = Vec::new();
        for (stage, delta) in stage_delta.into_iter().filter(|(_, d)| *d != 0) {
            let count = (stages.get(&stage).copied().unwrap_or(0) as i64 + delta).max(0) as u64;
            sled_batch.insert(keys::stage_counter(stage), &count.to_be_bytes());
            stage_counts.push((stage, count));
        }
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        let mut load_counts = Vec::new();
        for (owner, delta) in load_delta.into_iter().filter(|(_, d)| *d != 0) {
            let count = (loads.get(&owner).copied().unwrap_or(0) as i64 + delta).max(0) as u64;
            if count == 0 {
                sled_batch.remove(keys::load_counter(&owner));
            } else {
                sled_batch.insert(keys::load_counter(&owner), &count.to_be_bytes());
            }
            load_counts.push((owner, count));
        }
        self.tree.apply_batch(sled_batch).map_err(|e| self.err(e))?;
        for (i, count) in counts.into_iter().enumerate() {
            self.pending[i].store(count, Ordering::SeqCst);
        }
        stages.extend(stage_counts);
        drop(stages);
        for (owner, count) in load_counts {
            if count == 0 {
                loads.remove(&owner);
            } else {
                loads.insert(owner, count);
            }
        }
        drop(loads);
        let seq = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((seq, committed))
    }

    /// What a lead write must know of the stored lead: its version, its open hand-off's owner
    /// (for the index) and its scored activities as stored (written again only if changed).
    fn lead_meta(&self, id: &str, pending: &HashMap<String, Option<LeadMeta>>) -> Result<Option<LeadMeta>> {
        if let Some(meta) = pending.get(id) {
            return Ok(meta.clone());
        }
        let Some(head) = self.get::<LeadHead>(&keys::simple(keys::LEAD, id))? else {
            return Ok(None);
        };
        let scored = self.tree.get(keys::simple(keys::SCORED, id)).map_err(|e| self.err(e))?;
        Ok(Some(LeadMeta {
            version: head.version,
            stage: head.stage,
            owner: head.handoff.map(|h| h.owner),
            scored: scored.map(|raw| raw.to_vec()),
        }))
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
        let in_batch = pending.contains_key(&key);
        if let Some(old) = self.current_timer_due(&key, pending)? {
            if earliest && old.as_slice() <= due.as_slice() {
                return Ok(());
            }
            if old.as_slice() == due.as_slice() {
                // Due at the same instant: the timer keeps its place in the index, and is not
                // written at all if it is what is stored.
                let ordered = ordered_raw(keys::TIMER, &due, &key);
                let value = codec_encode(timer)?;
                if in_batch
                    || self.tree.get(&ordered).map_err(|e| self.err(e))?.as_deref() != Some(&value[..])
                {
                    batch.insert(ordered, value);
                }
                return Ok(());
            }
            batch.remove(ordered_raw(keys::TIMER, &old, &key));
        }
        batch.insert(ordered_raw(keys::TIMER, &due, &key), codec_encode(timer)?);
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

    /// The delivery bookkeeping of the entry under `key` (this batch's changes first), if it
    /// is in the outbox: its `o` record, else the queued entry's own, decoded without its
    /// effect's payload.
    fn current_delivery(&self, key: &str, pending: &HashMap<String, Delivery>) -> Result<Option<Delivery>> {
        if let Some(delivery) = pending.get(key) {
            return Ok(Some(delivery.clone()));
        }
        if let Some(delivery) = self.get::<Delivery>(&keys::simple(keys::DELIVERY, key))? {
            return Ok(Some(delivery));
        }
        let queued = keys::simple(keys::OUTBOX, key);
        match self.get::<QueuedHead>(&queued)? {
            Some(head) => head.delivery(&queued).map(Some),
            None => Ok(None),
        }
    }

    /// The outbox entry under `key` as it stands: as queued, with its delivery bookkeeping.
    fn outbox_by_key(&self, key: &str) -> Result<Option<OutboxEntry>> {
        match self.tree.get(keys::simple(keys::OUTBOX, key)).map_err(|e| self.err(e))? {
            Some(raw) => self.outbox_from(key, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// An entry as queued (`raw`, the value under `O <key>`) with its delivery record applied.
    fn outbox_from(&self, key: &str, raw: &[u8]) -> Result<OutboxEntry> {
        let mut entry: OutboxEntry = decode(&keys::simple(keys::OUTBOX, key), raw)?;
        if let Some(delivery) = self.get::<Delivery>(&keys::simple(keys::DELIVERY, key))? {
            delivery.apply_to(&mut entry);
        }
        Ok(entry)
    }

    /// Waits until every write numbered `seq` or lower is on disk. The flush runs on a
    /// blocking thread with a deadline (`flush_timeout`): past it the store is broken (a
    /// flush that never returns would otherwise hold every writer forever).
    async fn sync_to(&self, seq: u64) -> Result<()> {
        self.check_broken()?;
        if self.flushed.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let _flushing = self.flush_lock.lock().await;
        self.check_broken()?;
        if self.flushed.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        // Everything applied so far rides on this flush.
        let target = self.written.load(Ordering::SeqCst);
        let db = self.db.clone();
        let dir = self.dir.clone();
        let flush = tokio::task::spawn_blocking(move || {
            flush_failpoint();
            db.flush().map_err(|e| engine_error(&dir, e))
        });
        let flushed = match tokio::time::timeout(self.flush_timeout, flush).await {
            Ok(joined) => joined.map_err(|e| StoreError::Engine {
                path: self.dir.clone(),
                message: format!("flush task failed: {e}"),
            })?,
            Err(_) => {
                // The blocking thread is left to itself: nothing can cancel sled's flush.
                let waited_s = self.flush_timeout.as_secs().max(1);
                self.mark_broken(Broken::Stalled { waited_s });
                return Err(StoreError::Stalled { path: self.dir.clone(), waited_s });
            }
        };
        self.note(flushed)?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.flushed.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// Refuses at once when the store is broken.
    fn check_broken(&self) -> Result<()> {
        match *self.broken.borrow() {
            None => Ok(()),
            Some(why) => Err(self.broken_error(why)),
        }
    }

    fn broken_error(&self, why: Broken) -> StoreError {
        match why {
            Broken::NoSpace => StoreError::NoSpace { path: self.dir.clone() },
            Broken::Stalled { waited_s } => StoreError::Stalled { path: self.dir.clone(), waited_s },
        }
    }

    /// The first reason wins; watchers of [`Store::broken`] are told once.
    fn mark_broken(&self, why: Broken) {
        self.broken.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(why);
            true
        });
    }

    /// Passes `result` on, marking the store broken on a full disk: sled keeps refusing
    /// writes after one until it is opened again, and a batch it refused may be half
    /// applied in memory, so nothing more may be read as durable or written.
    fn note<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(StoreError::NoSpace { .. }) = &result {
            self.mark_broken(Broken::NoSpace);
        }
        result
    }
}

#[async_trait]
impl Store for SledStore {
    async fn commit(&self, batch: Batch) -> Result<Committed> {
        if batch.is_empty() {
            return Ok(Committed::default());
        }
        self.check_broken()?;
        let (seq, committed) = self.note(self.apply(batch))?;
        self.sync_to(seq).await?;
        Ok(committed)
    }

    async fn lead(&self, id: &LeadId) -> Result<Option<LeadRecord>> {
        self.lead_by_id(id.as_str())
    }

    async fn leads_by_id(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadRecord>>> {
        ids.iter().map(|id| self.lead_by_id(id.as_str())).collect()
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
                self.count_reads(1);
                let id = std::str::from_utf8(&key[1..]).map_err(|_| corrupt(&key, "lead id is not UTF-8"))?;
                self.read_lead(id, &value)
            })
            .collect()
    }

    async fn person(&self, id: &PersonId) -> Result<Option<Person>> {
        self.get(&keys::simple(keys::PERSON, id.as_str()))
    }

    async fn people(&self) -> Result<Vec<Person>> {
        let people: Vec<Person> = self.scan_values(&[keys::PERSON])?;
        self.count_reads(people.len());
        Ok(people)
    }

    async fn history(&self, id: &LeadId) -> Result<Vec<(u64, HistoryEvent)>> {
        self.tree
            .scan_prefix(keys::history_prefix(id.as_str()))
            .map(|item| {
                let (key, value) = item.map_err(|e| self.err(e))?;
                self.count_reads(1);
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
                self.count_reads(1);
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
        self.outbox_by_key(key.as_str())
    }

    async fn outbox_ready(&self, channel: Channel, now: Timestamp, limit: usize) -> Result<Vec<OutboxEntry>> {
        // Only what is durable may leave: wait for any batch still being flushed.
        self.sync_to(self.written.load(Ordering::SeqCst)).await?;
        let tag = keys::ready(channel);
        let mut ready = Vec::new();
        for item in self.tree.range(vec![tag]..keys::ordered_end(tag, now)).take(limit) {
            let (key, _) = item.map_err(|e| self.err(e))?;
            let id = keys::ready_entry(&key).ok_or_else(|| corrupt(&key, "bad ready key"))?;
            match self.outbox_by_key(id)? {
                Some(entry) => {
                    self.count_reads(1);
                    ready.push(entry)
                }
                None => return Err(corrupt(&key, "ready index names a missing outbox entry")),
            }
        }
        Ok(ready)
    }

    async fn outbox_held(&self, channel: Channel, after: u64, limit: usize) -> Result<Vec<OutboxEntry>> {
        self.sync_to(self.written.load(Ordering::SeqCst)).await?;
        let mut held = Vec::new();
        let start = keys::held_key(channel, after.saturating_add(1), "");
        for item in self.tree.range(start..keys::held_end(channel)).take(limit) {
            let (key, _) = item.map_err(|e| self.err(e))?;
            let id = keys::held_entry(&key).ok_or_else(|| corrupt(&key, "bad held key"))?;
            match self.outbox_by_key(id)? {
                Some(entry) => {
                    self.count_reads(1);
                    held.push(entry)
                }
                None => return Err(corrupt(&key, "held index names a missing outbox entry")),
            }
        }
        Ok(held)
    }

    async fn guard(&self) -> Result<GuardState> {
        let key = keys::item(crate::GUARD_BUCKET, crate::GUARD_KEY);
        match self.get::<serde_json::Value>(&key)? {
            Some(value) => crate::guard_from(value),
            None => Ok(GuardState::default()),
        }
    }

    async fn outbox_failed(&self, channel: Channel) -> Result<Vec<OutboxEntry>> {
        let mut failed = Vec::new();
        for item in self.tree.scan_prefix([keys::OUTBOX]) {
            let (key, raw) = item.map_err(|e| self.err(e))?;
            let id = std::str::from_utf8(&key[1..]).map_err(|_| corrupt(&key, "outbox key is not text"))?;
            let entry = self.outbox_from(id, &raw)?;
            if entry.effect.channel() == channel && matches!(entry.state, OutboxState::Failed { .. }) {
                failed.push(entry);
            }
        }
        Ok(failed)
    }

    async fn outbox_pending(&self, channel: Channel) -> Result<(u64, Option<Timestamp>)> {
        let count = self.pending[channel_index(channel)].load(Ordering::SeqCst);
        let earliest = match self.tree.scan_prefix([keys::ready(channel)]).next() {
            Some(item) => {
                let (key, _) = item.map_err(|e| self.err(e))?;
                keys::instant_from(&key[1..])
            }
            None => None,
        };
        Ok((count, earliest))
    }

    async fn items(&self, bucket: &str) -> Result<Vec<(String, serde_json::Value)>> {
        self.tree
            .scan_prefix(keys::bucket_prefix(bucket))
            .map(|item| {
                let (key, value) = item.map_err(|e| self.err(e))?;
                self.count_reads(1);
                let (_, name) = keys::parse_item(&key).ok_or_else(|| corrupt(&key, "bad item key"))?;
                Ok((name, decode(&key, &value)?))
            })
            .collect()
    }

    async fn suppression(&self, address: &str) -> Result<Option<Suppression>> {
        self.get(&keys::simple(keys::SUPPRESSION, &address.to_lowercase()))
    }

    async fn suppressions(&self, addresses: &[String]) -> Result<Vec<Option<Suppression>>> {
        addresses.iter().map(|a| self.get(&keys::simple(keys::SUPPRESSION, &a.to_lowercase()))).collect()
    }

    async fn open_handoffs(&self) -> Result<Vec<(LeadId, PersonId)>> {
        self.tree
            .scan_prefix([keys::OPEN_HANDOFF])
            .map(|item| {
                let (key, value) = item.map_err(|e| self.err(e))?;
                self.count_reads(1);
                let lead =
                    std::str::from_utf8(&key[1..]).map_err(|_| corrupt(&key, "lead id is not UTF-8"))?;
                let owner = std::str::from_utf8(&value).map_err(|_| corrupt(&key, "owner is not UTF-8"))?;
                Ok((LeadId::new(lead), PersonId::new(owner)))
            })
            .collect()
    }

    async fn open_handoffs_per_owner(&self) -> Result<Vec<(PersonId, u64)>> {
        let loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(PersonId, u64)> =
            loads.iter().map(|(owner, count)| (PersonId::new(owner.clone()), *count)).collect();
        out.sort();
        Ok(out)
    }

    async fn leads_per_stage(&self) -> Result<Vec<(Stage, u64)>> {
        let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Stage::ALL.into_iter().map(|stage| (stage, stages.get(&stage).copied().unwrap_or(0))).collect())
    }

    async fn seen(&self, keys: &[(LeadId, String)]) -> Result<Vec<bool>> {
        keys.iter()
            .map(|(lead, key)| {
                self.tree.contains_key(keys::seen(lead.as_str(), key)).map_err(|e| self.err(e))
            })
            .collect()
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
                Some(keys::LEAD) => {
                    let id =
                        std::str::from_utf8(&key[1..]).map_err(|_| corrupt(&key, "lead id is not UTF-8"))?;
                    Record::Lead { v: Box::new(self.read_lead(id, &value)?) }
                }
                Some(keys::SEEN) => {
                    let (lead, name) = keys::parse_seen(&key).ok_or_else(|| corrupt(&key, "bad seen key"))?;
                    Record::Seen { lead: LeadId(lead), key: name }
                }
                Some(keys::PERSON) => Record::Person { v: decode(&key, &value)? },
                Some(keys::HISTORY) => {
                    let (lead, seq) =
                        keys::parse_history(&key).ok_or_else(|| corrupt(&key, "bad history key"))?;
                    Record::History { lead: LeadId(lead), seq, v: decode(&key, &value)? }
                }
                Some(keys::TIMER) => Record::Timer { v: decode(&key, &value)? },
                Some(keys::OUTBOX) => {
                    let id = std::str::from_utf8(&key[1..])
                        .map_err(|_| corrupt(&key, "idempotency key is not UTF-8"))?;
                    Record::Outbox { v: self.outbox_from(id, &value)? }
                }
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
                // Derived indexes (scored activities ride with their lead, delivery records
                // with their outbox entry), counters and the schema marker are rebuilt, not
                // exported.
                _ => continue,
            };
            visit(record)?;
        }
        Ok(())
    }

    async fn load(&self, records: Vec<Record>) -> Result<()> {
        let (batch, imported) = crate::import_batch(records);
        // History keeps its exported sequence numbers.
        let mut history = sled::Batch::default();
        for (lead, seq, event) in imported {
            history.insert(keys::history(lead.as_str(), seq), codec_encode(&event)?);
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

    async fn broken(&self) -> StoreError {
        let mut watch = self.broken.subscribe();
        let why = match watch.wait_for(Option::is_some).await {
            Ok(why) => *why,
            // The sender lives as long as the store.
            Err(_) => None,
        };
        match why {
            Some(why) => self.broken_error(why),
            None => std::future::pending().await,
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            size_on_disk: self.db.size_on_disk().unwrap_or(0),
            commits: self.written.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            records_read: self.reads.load(Ordering::Relaxed),
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

fn codec_encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    codec::encode(value).map_err(|e| StoreError::Corrupt { key: String::new(), message: e.to_string() })
}

fn decode<T: DeserializeOwned>(key: &[u8], raw: &[u8]) -> Result<T> {
    codec::decode(raw).map_err(|e| corrupt(key, &e.to_string()))
}

/// Moves an outbox entry in its channel's ready index (and the pending counter) from its old
/// bookkeeping to its new.
fn write_ready(
    batch: &mut sled::Batch,
    pending_delta: &mut [i64; Channel::ALL.len()],
    old: Option<&Delivery>,
    key: &str,
    new: &Delivery,
) {
    if let Some(old) = old.filter(|old| old.state.is_pending()) {
        batch.remove(keys::ready_key(keys::ready(old.channel), old.next_attempt_at, old.seq, key));
        pending_delta[channel_index(old.channel)] -= 1;
    }
    if new.state.is_pending() {
        batch.insert(keys::ready_key(keys::ready(new.channel), new.next_attempt_at, new.seq, key), &[][..]);
        pending_delta[channel_index(new.channel)] += 1;
    }
    // The held index: entries the guard keeps back, in queue order.
    if let Some(old) = old.filter(|old| matches!(old.state, OutboxState::Held { .. })) {
        batch.remove(keys::held_key(old.channel, old.seq, key));
    }
    if matches!(new.state, OutboxState::Held { .. }) {
        batch.insert(keys::held_key(new.channel, new.seq, key), &[][..]);
    }
}

fn channel_index(channel: Channel) -> usize {
    match channel {
        Channel::Email => 0,
        Channel::Crm => 1,
        Channel::Calendar => 2,
        Channel::Chat => 3,
    }
}

/// Refuses a lead write whose decision was made on another state than the stored one.
fn check(lead: &LeadId, expect: Expect, current: Option<&LeadMeta>) -> Result<()> {
    let found = current.map_or(Found::Absent, |meta| Found::Version(meta.version));
    let ok = match (expect, found) {
        (Expect::Any, _) | (Expect::Absent, Found::Absent) => true,
        (Expect::Version(v), Found::Version(f)) => v == f,
        _ => false,
    };
    if ok { Ok(()) } else { Err(StoreError::Conflict { lead: lead.clone(), expected: expect, found }) }
}

fn corrupt(key: &[u8], message: &str) -> StoreError {
    StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), message: message.to_owned() }
}

/// Marks a state directory whose store was created (next to `db/`, sled's own directory).
const CREATED: &str = "store-created";

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// Failpoint `store.flush_stall` (testing only, armed by `LEADLOOP_FAILPOINTS` as the relay's
/// are, `store.flush_stall@N` for the N-th flush): the flush never returns, as sled's can on a
/// full or failing disk.
fn flush_failpoint() {
    static ARMED: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("LEADLOOP_FAILPOINTS").unwrap_or_default();
        spec.split(',').map(str::trim).find_map(|item| match item.split_once('@') {
            None if item == "store.flush_stall" => Some(1),
            Some(("store.flush_stall", n)) => n.parse::<u64>().ok().filter(|n| *n >= 1),
            _ => None,
        })
    });
    if let Some(at) = *armed
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= at
    {
        tracing::error!(failpoint = "store.flush_stall", "failpoint armed; this flush never returns");
        loop {
            std::thread::park();
        }
    }
}

fn engine_error(dir: &Path, error: sled::Error) -> StoreError {
    if let sled::Error::Io(io) = &error
        && (io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28))
    {
        return StoreError::NoSpace { path: dir.to_path_buf() };
    }
    StoreError::Engine { path: dir.to_path_buf(), message: error.to_string() }
}
