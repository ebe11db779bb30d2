//! Key layout of the sled tree. Everything lives in one tree so a [`sled::Batch`] can change a
//! lead, its history, its timers and its outbox entries atomically.
//!
//! ```text
//! M schema                      → u32 BE             schema version
//! L <lead id>                   → LeadRecord         without its scored activities
//! A <lead id>                   → [ScoredActivity]   the lead's scored activities (absent if none)
//! h <lead id>                   → person id          open hand-off index: the running hand-off's owner
//! X <len u16><lead id><key>     → ()                 activities already taken in, by source key
//! P <person id>                 → Person
//! H <len u16><lead id><seq u64> → HistoryEvent       append-only, seq per lead
//! T <due u64><timer key>        → Timer              time-ordered index
//! t <timer key>                 → due u64            reverse index, to move/cancel by key
//! O <idempotency key>           → OutboxEntry        as queued (effect, template variables): written once
//! o <idempotency key>           → Delivery           its bookkeeping once an update changed it
//! R <next attempt u64><seq><key> → ()                ready index of pending email effects
//! W <next attempt u64><seq><key> → ()                ready index of pending CRM write-backs
//! K <next attempt u64><seq><key> → ()                ready index of pending calendar holds
//! Q <next attempt u64><seq><key> → ()                ready index of pending chat messages
//! G <ready tag><seq u64><key>   → ()                 held index: entries the guard keeps back
//! M outbox_seq                  → u64 BE             last queue-order number given out
//! M pending <ready tag>         → u64 BE             pending entries of that channel (a counter)
//! M stage <stage>               → u64 BE             leads in that stage (a counter)
//! M load <person id>            → u64 BE             open hand-offs the person owns (a counter)
//! C <cursor name>               → cursor value
//! S <lowercased address>        → Suppression        opted out or hard-bounced
//! B <len u16><bucket><key>      → JSON value         digest and summary items
//! ```
//! Values are encoded by `codec` (a format tag, then MessagePack; schema 1's untagged JSON is
//! still read). Integers are big-endian so byte order is numeric order; instants are
//! milliseconds since the epoch offset by 2^63 so that instants before 1970 still sort.

use leadloop_core::Timestamp;

pub const SCHEMA: &[u8] = b"Mschema";
pub const OUTBOX_SEQ: &[u8] = b"Moutbox_seq";
pub const LEAD: u8 = b'L';
pub const SCORED: u8 = b'A';
pub const OPEN_HANDOFF: u8 = b'h';
pub const SEEN: u8 = b'X';
pub const PERSON: u8 = b'P';
pub const HISTORY: u8 = b'H';
pub const TIMER: u8 = b'T';
pub const TIMER_BY_KEY: u8 = b't';
pub const OUTBOX: u8 = b'O';
pub const DELIVERY: u8 = b'o';
pub const READY_EMAIL: u8 = b'R';
pub const READY_CRM: u8 = b'W';
pub const READY_CALENDAR: u8 = b'K';
pub const READY_CHAT: u8 = b'Q';
pub const SUPPRESSION: u8 = b'S';
pub const ITEM: u8 = b'B';
pub const HELD: u8 = b'G';

/// `G <ready tag><seq><key>`: a held-index key, in queue order per channel.
pub fn held_key(channel: leadloop_core::Channel, seq: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + key.len());
    out.push(HELD);
    out.push(ready(channel));
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// The first key after every held entry of `channel`.
pub fn held_end(channel: leadloop_core::Channel) -> Vec<u8> {
    vec![HELD, ready(channel) + 1]
}

/// The idempotency key inside a held-index key.
pub fn held_entry(raw: &[u8]) -> Option<&str> {
    std::str::from_utf8(raw.get(10..)?).ok()
}

/// `M pending <tag>`: the counter of pending outbox entries of one channel.
pub fn pending_counter(tag: u8) -> Vec<u8> {
    let mut key = b"Mpending ".to_vec();
    key.push(tag);
    key
}

/// The prefix of the per-stage lead counters.
pub const STAGE_COUNTER_PREFIX: &[u8] = b"Mstage ";

/// `M stage <stage>`: the counter of leads in one stage.
pub fn stage_counter(stage: leadloop_core::Stage) -> Vec<u8> {
    let mut key = STAGE_COUNTER_PREFIX.to_vec();
    key.extend_from_slice(stage.as_str().as_bytes());
    key
}

/// The prefix of the per-owner open hand-off counters.
pub const LOAD_COUNTER_PREFIX: &[u8] = b"Mload ";

/// `M load <person>`: the counter of open hand-offs one person owns.
pub fn load_counter(person: &str) -> Vec<u8> {
    let mut key = LOAD_COUNTER_PREFIX.to_vec();
    key.extend_from_slice(person.as_bytes());
    key
}

/// `X <len><lead>`: the prefix of one lead's seen activities.
pub fn seen_prefix(lead: &str) -> Vec<u8> {
    let len = u16::try_from(lead.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(3 + lead.len());
    key.push(SEEN);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(lead.as_bytes());
    key
}

pub fn seen(lead: &str, source_key: &str) -> Vec<u8> {
    let mut key = seen_prefix(lead);
    key.extend_from_slice(source_key.as_bytes());
    key
}

/// Splits a seen key into (lead, source key); the same shape as an item key.
pub fn parse_seen(raw: &[u8]) -> Option<(String, String)> {
    parse_item(raw)
}

/// `B <len><bucket>`: the prefix of one bucket's items.
pub fn bucket_prefix(bucket: &str) -> Vec<u8> {
    let len = u16::try_from(bucket.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(3 + bucket.len());
    key.push(ITEM);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(bucket.as_bytes());
    key
}

pub fn item(bucket: &str, key: &str) -> Vec<u8> {
    let mut out = bucket_prefix(bucket);
    out.extend_from_slice(key.as_bytes());
    out
}

/// Splits an item key into (bucket, key).
pub fn parse_item(raw: &[u8]) -> Option<(String, String)> {
    let len = u16::from_be_bytes(raw.get(1..3)?.try_into().ok()?) as usize;
    let bucket = std::str::from_utf8(raw.get(3..3 + len)?).ok()?;
    let key = std::str::from_utf8(raw.get(3 + len..)?).ok()?;
    Some((bucket.to_owned(), key.to_owned()))
}
pub const CURSOR: u8 = b'C';

/// The ready-index tag of a channel.
pub fn ready(channel: leadloop_core::Channel) -> u8 {
    match channel {
        leadloop_core::Channel::Email => READY_EMAIL,
        leadloop_core::Channel::Crm => READY_CRM,
        leadloop_core::Channel::Calendar => READY_CALENDAR,
        leadloop_core::Channel::Chat => READY_CHAT,
    }
}

pub fn instant(at: Timestamp) -> [u8; 8] {
    (at.timestamp_millis() as u64 ^ (1 << 63)).to_be_bytes()
}

pub fn instant_from(bytes: &[u8]) -> Option<Timestamp> {
    let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let millis = (u64::from_be_bytes(raw) ^ (1 << 63)) as i64;
    chrono::DateTime::from_timestamp_millis(millis)
}

pub fn simple(tag: u8, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(tag);
    key.extend_from_slice(id.as_bytes());
    key
}

/// `H <len><id>`: the prefix of one lead's history.
pub fn history_prefix(lead: &str) -> Vec<u8> {
    let len = u16::try_from(lead.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(3 + lead.len() + 8);
    key.push(HISTORY);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(lead.as_bytes());
    key
}

pub fn history(lead: &str, seq: u64) -> Vec<u8> {
    let mut key = history_prefix(lead);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Splits a history key into (lead id, seq).
pub fn parse_history(key: &[u8]) -> Option<(String, u64)> {
    let len = u16::from_be_bytes(key.get(1..3)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(key.get(3..3 + len)?).ok()?;
    let seq = u64::from_be_bytes(key.get(3 + len..3 + len + 8)?.try_into().ok()?);
    Some((id.to_owned(), seq))
}

/// A timer's due instant in its key, rounded up to the millisecond: the index never says a
/// timer is due before it is.
pub fn due_ceil(at: Timestamp) -> [u8; 8] {
    let millis = at.timestamp_millis() + i64::from(!at.timestamp_subsec_nanos().is_multiple_of(1_000_000));
    (millis as u64 ^ (1 << 63)).to_be_bytes()
}

/// `tag <at><seq><key>`: a ready-index key, ordered by due time, then queue order.
pub fn ready_key(tag: u8, at: Timestamp, seq: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + key.len());
    out.push(tag);
    out.extend_from_slice(&instant(at));
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// The idempotency key inside a ready-index key.
pub fn ready_entry(raw: &[u8]) -> Option<&str> {
    std::str::from_utf8(raw.get(17..)?).ok()
}

/// The first key after every entry of `tag` due at or before `at`.
pub fn ordered_end(tag: u8, at: Timestamp) -> Vec<u8> {
    let next = at + chrono::TimeDelta::milliseconds(1);
    let mut key = Vec::with_capacity(9);
    key.push(tag);
    key.extend_from_slice(&instant(next));
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_sort_as_bytes() {
        let times = [
            "1969-07-20T20:17:00Z",
            "1970-01-01T00:00:00Z",
            "2026-03-02T14:00:00Z",
            "2026-03-02T14:00:00.001Z",
        ];
        let encoded: Vec<_> = times.iter().map(|t| instant(t.parse().expect("valid instant"))).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        for (raw, text) in encoded.iter().zip(times) {
            assert_eq!(instant_from(raw), Some(text.parse().expect("valid instant")));
        }
    }

    #[test]
    fn history_keys_do_not_mix_leads() {
        // "ab" with seq 1 must not fall inside the prefix of "a".
        let a = history_prefix("a");
        assert!(!history("ab", 1).starts_with(&a));
        assert_eq!(parse_history(&history("00Q1", 42)), Some(("00Q1".to_owned(), 42)));
    }
}
