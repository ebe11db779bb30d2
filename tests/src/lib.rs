//! Harnesses shared by leadloop's end-to-end tests: the crash-test writer's record shape, a
//! store of many open hand-offs (`handoffs`), a test PKI, and real peers started on loopback.

pub mod caldav_peer;
pub mod handoffs;
pub mod pki;
pub mod smtp_peer;

use leadloop_core::{
    Actor, Effect, EventKind, HistoryEvent, IdempotencyKey, Lead, LeadId, LeadRecord, OutboxEntry, Timer,
    TimerKey, TimerKind, Timestamp,
};
use leadloop_store::Batch;

/// The instant crash-test records are stamped with.
pub fn epoch() -> Timestamp {
    chrono::DateTime::from_timestamp(1_772_460_000, 0).unwrap_or_default()
}

pub fn lead_id(n: u64) -> LeadId {
    LeadId(format!("L{n:08}"))
}

pub fn timer_key(n: u64) -> TimerKey {
    TimerKey::new(format!("t/{n}"))
}

pub fn outbox_key(n: u64) -> IdempotencyKey {
    IdempotencyKey::from_parts(["o".to_owned(), n.to_string()]).expect("two valid parts")
}

/// One crash-test write: a lead, two history events, a timer and an outbox entry, which must
/// appear together or not at all.
pub fn crash_batch(n: u64) -> Batch {
    let id = lead_id(n);
    let mut lead = Lead::new(id.as_str());
    lead.email = Some(format!("lead{n}@acme.example"));
    lead.company = Some("Acme".repeat(1 + (n % 7) as usize));
    let mut batch = Batch::new();
    batch
        .put_lead(LeadRecord::new(lead, epoch()))
        .append_history(id.clone(), HistoryEvent::new(epoch(), Actor::System, EventKind::Created))
        .append_history(
            id.clone(),
            HistoryEvent::new(epoch(), Actor::System, EventKind::Updated { fields: vec!["email".into()] }),
        )
        .set_timer(Timer {
            key: timer_key(n),
            due: epoch() + chrono::TimeDelta::seconds(n as i64),
            lead_id: Some(id.clone()),
            kind: TimerKind::ScoreDecay,
        })
        .enqueue(OutboxEntry::new(
            outbox_key(n),
            Effect::CrmUpdate { lead_id: id, fields: serde_json::Map::new() },
            epoch(),
        ));
    batch
}
