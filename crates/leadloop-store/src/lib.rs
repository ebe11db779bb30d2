//! Durable state for leadloop: leads, people, per-lead history, the timer index, the outbox of
//! effects, sync cursors. The [`Store`] trait is engine-neutral; [`SledStore`] is the default
//! engine and the only code in the workspace that knows sled.
//!
//! Two promises hold for every engine, and the [`conformance`] suite checks them:
//! - a [`Batch`] is applied atomically: a lead, its history, its timers and its outbox entries
//!   change together or not at all;
//! - [`Store::commit`] returns only once the batch is durable. Concurrent commits share one
//!   flush (group commit), so durability does not cost one fsync per write.

mod backup;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod keys;
mod lock;
mod sled_store;

use std::path::PathBuf;

use async_trait::async_trait;
use leadloop_core::{
    Channel, HistoryEvent, IdempotencyKey, LeadId, LeadRecord, OutboxEntry, Person, PersonId, Suppression,
    Timer, TimerKey, Timestamp,
};
use serde::{Deserialize, Serialize};

pub use backup::{ExportSummary, export, import};
pub use sled_store::{SledConfig, SledStore};

/// The schema version this build writes. Older stores are migrated on open.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state directory {path} is in use by another leadloop{holder}; stop it or use another state directory"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("cannot use state directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error(
        "no space left in state directory {path}; free space and restart leadloop (nothing was acknowledged that is not on disk)"
    )]
    NoSpace { path: PathBuf },
    #[error("storage engine error in {path}: {message}")]
    Engine { path: PathBuf, message: String },
    #[error("corrupt record under key {key:?}: {message}")]
    Corrupt { key: String, message: String },
    #[error(
        "state in {path} has schema version {found}, newer than this leadloop understands ({supported}); run a newer leadloop"
    )]
    TooNew { path: PathBuf, found: u32, supported: u32 },
    #[error("{0}")]
    Backup(String),
    #[error("store is closed")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One change inside a [`Batch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    PutLead(Box<LeadRecord>),
    /// Removes the lead record; its history stays (append a `Deleted` event).
    DeleteLead(LeadId),
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
    /// Replaces an outbox entry's bookkeeping (attempt recorded, done, failed).
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

    pub fn put_lead(&mut self, lead: LeadRecord) -> &mut Self {
        self.push(Op::PutLead(Box::new(lead)))
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
    Lead { v: Box<LeadRecord> },
    Person { v: Person },
    History { lead: LeadId, seq: u64, v: HistoryEvent },
    Timer { v: Timer },
    Outbox { v: OutboxEntry },
    Cursor { name: String, value: String },
    Suppression { v: Suppression },
    Item { bucket: String, key: String, v: serde_json::Value },
}

/// Sizes for metrics and `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub size_on_disk: u64,
    pub commits: u64,
    pub flushes: u64,
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
    /// How many entries of `channel` are pending, and the earliest next attempt among them.
    async fn outbox_pending(&self, channel: Channel) -> Result<(u64, Option<Timestamp>)>;

    /// The suppression entry for `address` (compared case-insensitively), if any.
    async fn suppression(&self, address: &str) -> Result<Option<Suppression>>;

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
}
