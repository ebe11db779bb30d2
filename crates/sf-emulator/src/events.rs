//! Change Data Capture: every write through the emulator (API or handle) publishes a change
//! event (`ChangeEventHeader` with `entityName`, `recordIds`, `changeType`, `changedFields`,
//! `commitTimestamp`, `transactionKey`, `sequenceNumber`, `commitUser`, and the record's
//! fields), numbered by a replay id that only grows. Events are kept for a retention window of
//! emulator time (Salesforce: 72 hours); a subscriber's replay id older than that is refused.
//! Writes inside an all-or-none scope publish only when the scope ends, and a rollback drops
//! them. Seeding (`insert_blob`) publishes nothing: that is the org's data before anyone
//! subscribed.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::{Map, Value, json};

/// The user the emulator names as `commitUser` (the integration user's shape of id).
pub const COMMIT_USER: &str = "005000000000001AAA";

/// Events kept at most (the oldest are dropped first, as if past retention), so a long run
/// with many writes stays bounded in memory.
pub const MAX_EVENTS: usize = 500_000;

/// One published change event.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub replay_id: i64,
    pub at_ms: i64,
    pub entity: String,
    /// `data.payload`: the header and the fields.
    pub payload: Value,
}

/// The event bus.
#[derive(Debug)]
pub(crate) struct EventLog {
    pub events: VecDeque<Event>,
    /// Written inside an all-or-none scope, by the undo-log index of their write.
    pending: Vec<(usize, String, Value, i64)>,
    next_replay: i64,
    /// The newest replay id dropped by retention (0: none yet).
    pub purged_through: i64,
    next_txn: u64,
    /// Woken on every publish (long-polling `/meta/connect` requests wait on it).
    pub notify: Arc<tokio::sync::Notify>,
    pub enabled: bool,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            events: VecDeque::new(),
            pending: Vec::new(),
            next_replay: 1,
            purged_through: 0,
            next_txn: 1,
            notify: Arc::new(tokio::sync::Notify::new()),
            enabled: true,
        }
    }
}

/// The payload of one change event.
pub(crate) fn payload(
    entity: &str,
    change_type: &str,
    ids: Vec<String>,
    fields: &Map<String, Value>,
    at_ms: i64,
) -> Value {
    let changed: Vec<&String> = if change_type == "UPDATE" { fields.keys().collect() } else { Vec::new() };
    let mut changed: Vec<Value> = changed.into_iter().map(|k| json!(k)).collect();
    if change_type == "UPDATE" {
        changed.push(json!("LastModifiedDate"));
    }
    let mut payload = Map::new();
    payload.insert(
        "ChangeEventHeader".into(),
        json!({
            "entityName": entity,
            "recordIds": ids,
            "changeType": change_type,
            "changeOrigin": "com/salesforce/api/rest/62.0",
            "transactionKey": "",
            "sequenceNumber": 1,
            "commitTimestamp": at_ms,
            "commitNumber": at_ms,
            "commitUser": COMMIT_USER,
            "changedFields": changed,
            "nulledFields": [],
            "diffFields": [],
        }),
    );
    if matches!(change_type, "CREATE" | "UPDATE") {
        for (k, v) in fields {
            if !v.is_null() || change_type == "UPDATE" {
                payload.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(payload)
}

impl EventLog {
    /// Publishes at once, or holds the event until the all-or-none scope ends (`scope` is the
    /// undo-log index of the write).
    pub fn record(&mut self, scope: Option<usize>, entity: &str, payload: Value, now: i64) {
        if !self.enabled {
            return;
        }
        match scope {
            Some(index) => self.pending.push((index, entity.to_owned(), payload, now)),
            None => {
                let txn = self.next_txn;
                self.next_txn += 1;
                self.publish(txn, vec![(entity.to_owned(), payload)], now);
            }
        }
    }

    /// The scope ended with its writes kept: publish them as one transaction.
    pub fn commit_pending(&mut self) {
        let Some(now) = self.pending.iter().map(|p| p.3).max() else { return };
        let pending: Vec<(String, Value)> = self.pending.drain(..).map(|(_, e, p, _)| (e, p)).collect();
        let txn = self.next_txn;
        self.next_txn += 1;
        self.publish(txn, pending, now);
    }

    /// Writes at undo index `mark` and later were rolled back.
    pub fn rollback_to(&mut self, mark: usize) {
        self.pending.retain(|(index, ..)| *index < mark);
    }

    /// Publishes events as one transaction (its key, sequence numbers from 1).
    pub fn publish(&mut self, txn: u64, events: Vec<(String, Value)>, now: i64) {
        let key = format!("{txn:08x}-0000-4000-8000-{:012x}", txn.wrapping_mul(0x9e37_79b9));
        for (sequence, (entity, mut payload)) in events.into_iter().enumerate() {
            if let Some(header) = payload.get_mut("ChangeEventHeader").and_then(Value::as_object_mut) {
                header.insert("transactionKey".into(), json!(key));
                header.insert("sequenceNumber".into(), json!(sequence + 1));
                header.insert("commitTimestamp".into(), json!(now));
            }
            let replay_id = self.next_replay;
            self.next_replay += 1;
            self.events.push_back(Event { replay_id, at_ms: now, entity, payload });
            if self.events.len() > MAX_EVENTS
                && let Some(dropped) = self.events.pop_front()
            {
                self.purged_through = dropped.replay_id;
            }
        }
        self.notify.notify_waiters();
    }

    /// A gap or overflow event (`GAP_CREATE`, …, `GAP_OVERFLOW`): the header only.
    pub fn publish_gap(&mut self, entity: &str, change_type: &str, ids: Vec<String>, now: i64) {
        let txn = self.next_txn;
        self.next_txn += 1;
        let payload = payload(entity, change_type, ids, &Map::new(), now);
        self.publish(txn, vec![(entity.to_owned(), payload)], now);
    }

    /// Drops events older than `cutoff`.
    pub fn purge(&mut self, cutoff: i64) {
        while let Some(front) = self.events.front() {
            if front.at_ms >= cutoff {
                break;
            }
            self.purged_through = front.replay_id;
            self.events.pop_front();
        }
    }

    /// The newest replay id published (0: none).
    pub fn latest(&self) -> i64 {
        self.next_replay - 1
    }

    /// Whether a subscriber may resume after `replay_id`: it must not be older than what
    /// retention dropped, nor newer than anything published.
    pub fn valid_position(&self, replay_id: i64) -> bool {
        replay_id >= self.purged_through && replay_id <= self.latest()
    }

    /// Events after `position`, at most `limit`.
    pub fn after(&self, position: i64, limit: usize) -> Vec<Event> {
        self.events.iter().filter(|e| e.replay_id > position).take(limit).cloned().collect()
    }
}
