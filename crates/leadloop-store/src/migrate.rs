//! Schema migrations of the sled engine, and what they know of earlier schemas.
//!
//! A migration runs on open, before anything else reads the store, and must be safe to run
//! again if the process dies part-way: the schema marker moves only after it finished and was
//! flushed, and each step recognises records it already converted.

use leadloop_core::{Channel, EventKind, HistoryEvent, LeadRecord, Stage, connector::activity_source_key};

use crate::{Record, codec, keys};

/// Records changed per sled batch while migrating: bounds memory on a large store.
const CHUNK: usize = 10_000;

/// Schema 1's engine-kept open hand-off index (a bucket of lead → owner) and its marker;
/// schema 2 keeps the index in the store itself.
pub const V1_OPEN_HANDOFFS_BUCKET: &str = "open_handoffs";
pub const V1_OPEN_HANDOFFS_CURSOR: &str = "engine.open_handoffs.indexed";

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error("corrupt record under {key:?}: {message}")]
    Corrupt { key: Vec<u8>, message: String },
}

fn corrupt(key: &[u8], message: impl std::fmt::Display) -> MigrationError {
    MigrationError::Corrupt { key: key.to_vec(), message: message.to_string() }
}

/// Schema 1 → 2: values re-encoded from JSON to the tagged binary format; each lead's scored
/// activities moved to their own key; the open hand-off index built from the leads (and the
/// engine's old bucket of it dropped); activities taken in from a CRM marked seen (from the
/// history, which schema 1 searched for them); outbox depth and leads-per-stage counters
/// counted once.
pub fn v1_to_v2(tree: &sled::Tree) -> Result<(), MigrationError> {
    let mut after: Option<Vec<u8>> = None;
    let mut pending = [0u64; Channel::ALL.len()];
    let mut stages: std::collections::HashMap<Stage, u64> = std::collections::HashMap::new();
    let mut loads: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    loop {
        let range = match &after {
            Some(key) => tree
                .range::<&[u8], _>((std::ops::Bound::Excluded(key.as_slice()), std::ops::Bound::Unbounded)),
            None => tree.iter(),
        };
        let mut batch = sled::Batch::default();
        let mut changes = 0usize;
        let mut last = None;
        for item in range {
            let (key, value) = item?;
            last = Some(key.to_vec());
            changes += convert(&key, &value, &mut batch, &mut pending, &mut stages, &mut loads)?;
            if changes >= CHUNK {
                break;
            }
        }
        tree.apply_batch(batch)?;
        match last {
            Some(key) if changes >= CHUNK => after = Some(key),
            _ => break,
        }
    }
    let mut counters = sled::Batch::default();
    for (i, channel) in Channel::ALL.into_iter().enumerate() {
        counters.insert(keys::pending_counter(keys::ready(channel)), &pending[i].to_be_bytes());
    }
    for stage in Stage::ALL {
        let count = stages.get(&stage).copied().unwrap_or(0);
        counters.insert(keys::stage_counter(stage), &count.to_be_bytes());
    }
    for (owner, count) in loads {
        counters.insert(keys::load_counter(&owner), &count.to_be_bytes());
    }
    tree.apply_batch(counters)?;
    tree.flush()?;
    Ok(())
}

/// Schema 2 → 3: nothing to convert. A schema-2 outbox entry holds its delivery bookkeeping
/// in itself, which is what schema 3 reads for an entry without a delivery record (`o`). The
/// version moves so that a schema-2 build, which knows nothing of delivery records and would
/// read a sent email as still pending, refuses the store instead.
pub fn v2_to_v3(_tree: &sled::Tree) -> Result<(), MigrationError> {
    Ok(())
}

/// Schema 4 adds the guard's held outbox state and its index (`Q`), which a schema-3 store
/// holds none of: nothing to convert. The version moves so that a schema-3 build, which
/// cannot read a held entry, refuses the store instead of calling it corrupt.
pub fn v3_to_v4(_tree: &sled::Tree) -> Result<(), MigrationError> {
    Ok(())
}

/// Converts one schema-1 record; returns how many changes it added to `batch`. Counts what
/// the counters need from every record, converted now or by an earlier, interrupted run.
fn convert(
    key: &[u8],
    value: &[u8],
    batch: &mut sled::Batch,
    pending: &mut [u64; Channel::ALL.len()],
    stages: &mut std::collections::HashMap<Stage, u64>,
    loads: &mut std::collections::HashMap<String, u64>,
) -> Result<usize, MigrationError> {
    let Some(&tag) = key.first() else { return Ok(0) };
    // The ready indexes only need counting; counters are rewritten at the end either way.
    for (i, channel) in Channel::ALL.into_iter().enumerate() {
        if tag == keys::ready(channel) {
            pending[i] += 1;
            return Ok(0);
        }
    }
    match tag {
        keys::LEAD => {
            let mut record: LeadRecord = codec::decode(value).map_err(|e| corrupt(key, e))?;
            *stages.entry(record.stage).or_default() += 1;
            if let Some(handoff) = &record.handoff {
                *loads.entry(handoff.owner.as_str().to_owned()).or_default() += 1;
            }
            if codec::is_current(value) {
                return Ok(0);
            }
            let id = &key[1..];
            let scored = std::mem::take(&mut record.scored);
            batch.insert(key, encode(key, &record)?);
            if !scored.is_empty() {
                batch.insert([&[keys::SCORED], id].concat(), encode(key, &scored)?);
            }
            if let Some(handoff) = &record.handoff {
                batch.insert([&[keys::OPEN_HANDOFF], id].concat(), handoff.owner.as_str().as_bytes());
            }
            Ok(3)
        }
        keys::HISTORY if !codec::is_current(value) => {
            let event: HistoryEvent = codec::decode(value).map_err(|e| corrupt(key, e))?;
            batch.insert(key, encode(key, &event)?);
            if let EventKind::Activity { detail, .. } = &event.kind
                && let Some(source) = activity_source_key(detail)
            {
                let (lead, _) = keys::parse_history(key).ok_or_else(|| corrupt(key, "bad history key"))?;
                batch.insert(keys::seen(&lead, &source), &[][..]);
            }
            Ok(2)
        }
        keys::ITEM => {
            let (bucket, _) = keys::parse_item(key).ok_or_else(|| corrupt(key, "bad item key"))?;
            if bucket == V1_OPEN_HANDOFFS_BUCKET {
                batch.remove(key);
                return Ok(1);
            }
            reencode::<serde_json::Value>(key, value, batch)
        }
        keys::CURSOR if &key[1..] == V1_OPEN_HANDOFFS_CURSOR.as_bytes() => {
            batch.remove(key);
            Ok(1)
        }
        keys::PERSON => reencode::<leadloop_core::Person>(key, value, batch),
        keys::TIMER => reencode::<leadloop_core::Timer>(key, value, batch),
        keys::OUTBOX => reencode::<leadloop_core::OutboxEntry>(key, value, batch),
        keys::SUPPRESSION => reencode::<leadloop_core::Suppression>(key, value, batch),
        _ => Ok(0),
    }
}

fn reencode<T: serde::Serialize + serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
    batch: &mut sled::Batch,
) -> Result<usize, MigrationError> {
    if codec::is_current(value) {
        return Ok(0);
    }
    let decoded: T = codec::decode(value).map_err(|e| corrupt(key, e))?;
    batch.insert(key, encode(key, &decoded)?);
    Ok(1)
}

fn encode<T: serde::Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, MigrationError> {
    codec::encode(value).map_err(|e| corrupt(key, e))
}

/// A schema-1 export record that schema 2 no longer keeps (the engine's open hand-off
/// bucket and its marker: the store maintains that index itself now).
pub fn v1_record_dropped(record: &Record) -> bool {
    match record {
        Record::Item { bucket, .. } => bucket == V1_OPEN_HANDOFFS_BUCKET,
        Record::Cursor { name, .. } => name == V1_OPEN_HANDOFFS_CURSOR,
        _ => false,
    }
}

/// The seen-activity record a schema-1 history record implies (schema 1 searched the history
/// for re-read CRM activities; schema 2 keeps an index of them).
pub fn v1_seen_from(record: &Record) -> Option<Record> {
    let Record::History { lead, v, .. } = record else { return None };
    let EventKind::Activity { detail, .. } = &v.kind else { return None };
    activity_source_key(detail).map(|key| Record::Seen { lead: lead.clone(), key })
}
