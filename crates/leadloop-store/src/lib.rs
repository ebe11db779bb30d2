//! Durable state for leadloop: leads, people, per-lead history, the timer index, the outbox of
//! effects, sync cursors. The [`Store`] trait is engine-neutral; [`SledStore`] is the default
//! engine and the only code in the workspace that knows sled.
//!
//! Three promises hold for every engine, and the [`conformance`] suite checks them:
//! - a [`Batch`] is applied atomically: a lead, its history, its timers and its outbox entries
//!   change together or not at all;
//! - a lead write names the version it was decided on ([`Expect`]); if the stored lead moved
//!   on meanwhile the whole batch is refused with [`StoreError::Conflict`] and the caller
//!   decides again from fresh state, so two writers (two replicas) never overwrite each other;
//! - [`Store::commit`] returns only once the batch is durable. Concurrent commits share one
//!   flush (group commit), so durability does not cost one fsync per write.
//!
//! The queries the engine needs on its hot paths are methods backed by maintained indexes or
//! counters (open hand-offs, activities seen, outbox depth), never a scan of every lead.

mod backup;
pub mod codec;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod keys;
mod lock;
mod migrate;
mod sled_store;

use std::path::PathBuf;

use async_trait::async_trait;
use leadloop_core::guard::GuardState;
use leadloop_core::{
    Channel, HistoryEvent, IdempotencyKey, LeadId, LeadRecord, OutboxEntry, Person, PersonId, Stage,
    Suppression, Timer, TimerKey, Timestamp,
};
use serde::{Deserialize, Serialize};

pub use backup::{ExportSummary, export, import};
pub use sled_store::{SledConfig, SledStore};

/// The schema version this build writes. Older stores are migrated on open.
///
/// - 1: JSON values, the whole lead record under one key, the open hand-off index kept by the
///   engine as a bucket.
/// - 2: versioned binary values (MessagePack behind a format tag), a lead's scored activities
///   under their own key, store-maintained indexes of open hand-offs and seen activities, and
///   outbox depth counters.
/// - 3: an outbox entry is written whole once, when queued; its delivery bookkeeping
///   (attempts, next attempt, outcome) is a small record of its own, so an email's template
///   variables are stored once and never rewritten by a delivery attempt.
/// - 4: the blast-radius guard: an outbox entry may be held (`OutboxState::Held`, indexed
///   under `Q`), and the guard's switches are kept (`Op::SetGuard`).
pub const SCHEMA_VERSION: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state directory {path} is in use by another leadloop{holder}; stop it or use another state directory"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("cannot use state directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error(
        "state directory {path} is a file, not a directory; point --state-dir or daemon.state_dir at a directory"
    )]
    NotADirectory { path: PathBuf },
    /// A command that only reads found no store where it looked (nothing was created).
    #[error("no leadloop state in {path}: nothing has run with this state directory")]
    NoState { path: PathBuf },
    #[error(
        "no space left in state directory {path}; free space and restart leadloop (nothing was acknowledged that is not on disk)"
    )]
    NoSpace { path: PathBuf },
    /// A flush did not return within its deadline (a full or failing disk): the store takes no
    /// more writes in this process.
    #[error(
        "the store in {path} did not finish writing to disk within {waited_s} s (a full or failing disk?); leadloop stops: check the disk and its free space, then restart (nothing was acknowledged that is not on disk)"
    )]
    Stalled { path: PathBuf, waited_s: u64 },
    #[error("storage engine error in {path}: {message}")]
    Engine { path: PathBuf, message: String },
    #[error(
        "the store in {path} is damaged ({detail}); restore it from a backup (`leadloop import` of a `leadloop export` file into an empty state directory), or move the directory aside to start empty and resync from the CRM"
    )]
    Damaged { path: PathBuf, detail: String },
    #[error("corrupt record under key {key:?}: {message}")]
    Corrupt { key: String, message: String },
    #[error(
        "state in {path} has schema version {found}, newer than this leadloop understands ({supported}); run a newer leadloop"
    )]
    TooNew { path: PathBuf, found: u32, supported: u32 },
    #[error(
        "lead {lead} changed while it was being decided (expected {expected}, found {found}); decide again from fresh state"
    )]
    Conflict { lead: LeadId, expected: Expect, found: Found },
    #[error(
        "PostgreSQL schema {schema} has schema version {found}, newer than this leadloop understands ({supported}); run a newer leadloop"
    )]
    SchemaTooNew { schema: String, found: u32, supported: u32 },
    #[error(
        "PostgreSQL schema {schema} is in use by another leadloop{holder}; stop it or use another schema"
    )]
    SchemaLocked { schema: String, holder: String },
    /// A database engine's failure: what was being done, and the server's or driver's message.
    #[error("PostgreSQL schema {schema}: {message}")]
    Database { schema: String, message: String },
    #[error("{0}")]
    Backup(String),
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// Whether another leadloop holds the store (a state directory or a database schema), so
    /// a command can ask the running daemon instead.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Locked { .. } | StoreError::SchemaLocked { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a lead write expects to find in the store: the state its decision was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No record with this id (the decision created the lead).
    Absent,
    /// The record at exactly this version (the one the decision read).
    Version(u64),
    /// No check: whatever is stored is replaced (import, tools, benchmarks).
    Any,
}

impl Expect {
    /// The expectation for a write decided on `read` (what the decision read, if anything).
    pub fn read(read: Option<&LeadRecord>) -> Self {
        read.map_or(Expect::Absent, |record| Expect::Version(record.version))
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Absent => f.write_str("no record"),
            Expect::Version(v) => write!(f, "version {v}"),
            Expect::Any => f.write_str("any version"),
        }
    }
}

/// What a conflicting lead write found instead of what it expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Absent,
    Version(u64),
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Absent => f.write_str("no record"),
            Found::Version(v) => write!(f, "version {v}"),
        }
    }
}

/// One change inside a [`Batch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Writes the lead if the stored one is as `expect` says; otherwise the whole batch is
    /// refused with [`StoreError::Conflict`]. The record's `version` must be greater than the
    /// expected one (the engine stamps it), so a later write can tell this one happened.
    PutLead {
        record: Box<LeadRecord>,
        expect: Expect,
    },
    /// Removes the lead record (same check as `PutLead`); its history stays (append a
    /// `Deleted` event).
    DeleteLead {
        id: LeadId,
        expect: Expect,
    },
    /// Records that an activity from a source (by the source's own key, e.g. a CRM task's id
    /// and stamp) was taken in for the lead, so a re-read of it is recognised.
    MarkSeen {
        lead: LeadId,
        key: String,
    },
    /// Appends to the lead's history; the store assigns the next sequence number.
    AppendHistory(LeadId, HistoryEvent),
    PutPerson(Person),
    DeletePerson(PersonId),
    /// Sets a timer; an existing timer with the same key is moved.
    SetTimer(Timer),
    /// Sets a timer unless one with the same key is due earlier (collecting timers: a digest
    /// already scheduled for this morning is not pushed to tomorrow).
    SetTimerEarliest(Timer),
    /// Cancels a timer; cancelling a missing one is a no-op.
    CancelTimer(TimerKey),
    /// Queues an effect; if the key is already in the outbox (in any state) this is a no-op.
    Enqueue(OutboxEntry),
    /// Replaces an outbox entry's bookkeeping (attempt recorded, done, failed). The effect is
    /// the one queued: sled writes only the bookkeeping of an entry it holds (an email's
    /// template variables are not written again); an entry it does not hold (an import) is
    /// written whole.
    UpdateOutbox(OutboxEntry),
    SetCursor {
        name: String,
        value: String,
    },
    /// Adds an address to the suppression list (replacing an earlier entry).
    Suppress(Suppression),
    /// Removes an address from the suppression list.
    Unsuppress(String),
    /// Puts an item in a bucket (replacing the item with the same key): what a digest or a
    /// summary collects until it is sent.
    PutItem {
        bucket: String,
        key: String,
        value: serde_json::Value,
    },
    /// Removes one item (sent in a digest or summary).
    DeleteItem {
        bucket: String,
        key: String,
    },
    /// Replaces the blast-radius guard's switches (pauses, surge hold): one record, read by
    /// every relay round ([`Store::guard`]). Kept as the item `guard`/`state`, so export and
    /// import carry it as any item.
    SetGuard(GuardState),
}

/// The bucket and key under which every engine keeps the [`GuardState`].
pub const GUARD_BUCKET: &str = "guard";
pub const GUARD_KEY: &str = "state";
/// The bucket of the guard's log ([`leadloop_core::guard::GuardEvent`]s, keyed by number).
pub const GUARD_LOG_BUCKET: &str = "guard.log";

/// The key of guard log entry `n`: zero-padded, so key order is log order.
pub fn guard_log_key(n: u64) -> String {
    format!("{n:020}")
}

/// A stored guard state; a record this build cannot read is reported, not taken as "no pause".
pub(crate) fn guard_from(value: serde_json::Value) -> Result<GuardState> {
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt {
        key: format!("{GUARD_BUCKET}/{GUARD_KEY}"),
        message: format!("guard state: {e}"),
    })
}

/// Changes applied together, atomically.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// Writes `lead` without a version check (import, tools, benchmarks, tests).
    pub fn put_lead(&mut self, lead: LeadRecord) -> &mut Self {
        self.push(Op::PutLead { record: Box::new(lead), expect: Expect::Any })
    }

    /// Writes `lead`, decided on the stored state `expect` describes.
    pub fn put_lead_expecting(&mut self, lead: LeadRecord, expect: Expect) -> &mut Self {
        self.push(Op::PutLead { record: Box::new(lead), expect })
    }

    pub fn delete_lead(&mut self, id: LeadId, expect: Expect) -> &mut Self {
        self.push(Op::DeleteLead { id, expect })
    }

    pub fn mark_seen(&mut self, lead: LeadId, key: impl Into<String>) -> &mut Self {
        self.push(Op::MarkSeen { lead, key: key.into() })
    }

    pub fn append_history(&mut self, lead: LeadId, event: HistoryEvent) -> &mut Self {
        self.push(Op::AppendHistory(lead, event))
    }

    pub fn put_person(&mut self, person: Person) -> &mut Self {
        self.push(Op::PutPerson(person))
    }

    pub fn set_timer(&mut self, timer: Timer) -> &mut Self {
        self.push(Op::SetTimer(timer))
    }

    pub fn cancel_timer(&mut self, key: TimerKey) -> &mut Self {
        self.push(Op::CancelTimer(key))
    }

    pub fn enqueue(&mut self, entry: OutboxEntry) -> &mut Self {
        self.push(Op::Enqueue(entry))
    }

    pub fn update_outbox(&mut self, entry: OutboxEntry) -> &mut Self {
        self.push(Op::UpdateOutbox(entry))
    }

    pub fn set_cursor(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.push(Op::SetCursor { name: name.into(), value: value.into() })
    }

    pub fn suppress(&mut self, suppression: Suppression) -> &mut Self {
        self.push(Op::Suppress(suppression))
    }

    pub fn set_guard(&mut self, state: GuardState) -> &mut Self {
        self.push(Op::SetGuard(state))
    }

    pub fn put_item(
        &mut self,
        bucket: impl Into<String>,
        key: impl Into<String>,
        value: serde_json::Value,
    ) -> &mut Self {
        self.push(Op::PutItem { bucket: bucket.into(), key: key.into(), value })
    }
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Committed {
    /// Outbox keys that were new (not duplicates) in this batch.
    pub enqueued: Vec<IdempotencyKey>,
    /// Enqueue ops skipped because the key was already in the outbox.
    pub duplicates: usize,
}

/// Every kind of record, as export and import see them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    Lead {
        v: Box<LeadRecord>,
    },
    Person {
        v: Person,
    },
    History {
        lead: LeadId,
        seq: u64,
        v: HistoryEvent,
    },
    Timer {
        v: Timer,
    },
    Outbox {
        v: OutboxEntry,
    },
    Cursor {
        name: String,
        value: String,
    },
    Suppression {
        v: Suppression,
    },
    Item {
        bucket: String,
        key: String,
        v: serde_json::Value,
    },
    /// An activity already taken in for a lead (schema 2; see [`Op::MarkSeen`]).
    Seen {
        lead: LeadId,
        key: String,
    },
}

/// History entries set apart by [`import_batch`]: (lead, exported sequence number, event).
pub type ImportedHistory = Vec<(LeadId, u64, HistoryEvent)>;

/// Records as exported, turned into the batch an engine's [`Store::load`] commits, with the
/// history set apart: it keeps its exported sequence numbers, so each engine writes it directly.
pub fn import_batch(records: Vec<Record>) -> (Batch, ImportedHistory) {
    let mut batch = Batch::new();
    let mut history = Vec::new();
    for record in records {
        match record {
            Record::Lead { v } => batch.put_lead(*v),
            Record::Person { v } => batch.put_person(v),
            Record::History { lead, seq, v } => {
                history.push((lead, seq, v));
                continue;
            }
            Record::Seen { lead, key } => batch.mark_seen(lead, key),
            Record::Timer { v } => batch.set_timer(v),
            Record::Outbox { v } => batch.update_outbox(v),
            Record::Cursor { name, value } => batch.set_cursor(name, value),
            Record::Suppression { v } => batch.suppress(v),
            Record::Item { bucket, key, v } => batch.put_item(bucket, key, v),
        };
    }
    (batch, history)
}

/// Sizes for metrics and `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub size_on_disk: u64,
    pub commits: u64,
    pub flushes: u64,
    /// Records read by queries since the store was opened: what the conformance suite counts
    /// to check that a query costs what it returns, not what the store holds.
    pub records_read: u64,
}

/// Every lead, a page at a time, in id order: `while let Some(page) = pages.next().await? {…}`.
pub struct LeadPages<'a> {
    store: &'a dyn Store,
    after: Option<LeadId>,
    done: bool,
}

impl std::fmt::Debug for LeadPages<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadPages")
            .field("after", &self.after)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<'a> LeadPages<'a> {
    pub const PAGE: usize = 1000;

    pub fn new(store: &'a dyn Store) -> Self {
        Self { store, after: None, done: false }
    }

    pub async fn next(&mut self) -> Result<Option<Vec<LeadRecord>>> {
        if self.done {
            return Ok(None);
        }
        let page = self.store.leads(self.after.as_ref(), Self::PAGE).await?;
        match page.last() {
            Some(last) => {
                self.after = Some(last.lead.id.clone());
                Ok(Some(page))
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }
}

/// The engine-neutral store API.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies `batch` atomically and returns once it is durable.
    async fn commit(&self, batch: Batch) -> Result<Committed>;

    async fn lead(&self, id: &LeadId) -> Result<Option<LeadRecord>>;
    /// Many leads in one call, in the order asked (`None` for an id not stored).
    async fn leads_by_id(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadRecord>>>;
    /// Leads in id order, after `after`, at most `limit`.
    async fn leads(&self, after: Option<&LeadId>, limit: usize) -> Result<Vec<LeadRecord>>;
    async fn person(&self, id: &PersonId) -> Result<Option<Person>>;
    async fn people(&self) -> Result<Vec<Person>>;
    /// The lead's history with sequence numbers, oldest first.
    async fn history(&self, id: &LeadId) -> Result<Vec<(u64, HistoryEvent)>>;

    async fn timer(&self, key: &TimerKey) -> Result<Option<Timer>>;
    /// Timers due at or before `now`, earliest first, at most `limit`. Costs what is due.
    async fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<Timer>>;
    /// When the earliest timer is due, if any.
    async fn next_timer_due(&self) -> Result<Option<Timestamp>>;

    async fn outbox_entry(&self, key: &IdempotencyKey) -> Result<Option<OutboxEntry>>;
    /// Pending entries of `channel` whose next attempt is at or before `now`, earliest first.
    async fn outbox_ready(&self, channel: Channel, now: Timestamp, limit: usize) -> Result<Vec<OutboxEntry>>;
    /// The entries of `channel` that failed for good (dead letters), in key order. Costs what
    /// the channel's outbox holds: an operator's query, never on the hot path.
    async fn outbox_failed(&self, channel: Channel) -> Result<Vec<OutboxEntry>>;
    /// How many entries of `channel` are pending, and the earliest next attempt among them.
    /// A maintained counter and one index seek, whatever the outbox holds.
    async fn outbox_pending(&self, channel: Channel) -> Result<(u64, Option<Timestamp>)>;
    /// Entries of `channel` the guard holds (`OutboxState::Held`), in queue order, with a
    /// queue-order number above `after`, at most `limit`. A maintained index: costs what it
    /// returns.
    async fn outbox_held(&self, channel: Channel, after: u64, limit: usize) -> Result<Vec<OutboxEntry>>;

    /// The blast-radius guard's switches ([`Op::SetGuard`]); the default state (nothing
    /// paused, no surge) when none was ever written. One point read.
    async fn guard(&self) -> Result<GuardState>;

    /// The suppression entry for `address` (compared case-insensitively), if any.
    async fn suppression(&self, address: &str) -> Result<Option<Suppression>>;
    /// Many suppression checks in one call, in the order asked.
    async fn suppressions(&self, addresses: &[String]) -> Result<Vec<Option<Suppression>>>;

    /// Every open hand-off as (lead, owner): the leads whose record holds a running hand-off.
    /// A maintained index, kept in the same batch as the lead; costs what is open.
    async fn open_handoffs(&self) -> Result<Vec<(LeadId, PersonId)>>;
    /// Open hand-offs per owner (owners with none are left out): maintained counters, so a
    /// restart learns routing's load without reading what is open.
    async fn open_handoffs_per_owner(&self) -> Result<Vec<(PersonId, u64)>>;
    /// Which of these (lead, source key) activities were already taken in ([`Op::MarkSeen`]).
    async fn seen(&self, keys: &[(LeadId, String)]) -> Result<Vec<bool>>;
    /// How many leads are in each stage now (every stage, zeros included): maintained
    /// counters, kept in the same batch as the leads.
    async fn leads_per_stage(&self) -> Result<Vec<(Stage, u64)>>;

    async fn cursor(&self, name: &str) -> Result<Option<String>>;

    /// The items of a bucket, in key order. Costs what the bucket holds.
    async fn items(&self, bucket: &str) -> Result<Vec<(String, serde_json::Value)>>;

    /// Visits every record in a deterministic order (for export).
    async fn scan(&self, visit: &mut (dyn FnMut(Record) -> Result<()> + Send)) -> Result<()>;
    /// Writes records as they were exported (for import), durably.
    async fn load(&self, records: Vec<Record>) -> Result<()>;
    /// True when the store holds no records.
    async fn is_empty(&self) -> Result<bool>;

    fn stats(&self) -> Stats;

    /// Resolves once the store can take no more writes until it is opened again, with why
    /// (sled: a full disk, or a flush that did not return within its deadline). The daemon
    /// stops on it (exit 74) instead of running on a store that refuses everything. A store
    /// that recovers by itself (PostgreSQL retries a full server disk) never resolves it.
    async fn broken(&self) -> StoreError {
        std::future::pending().await
    }
}
