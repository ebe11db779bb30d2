//! Turning a pure [`Decision`] into one store [`Batch`].

use leadloop_core::{Actor, Decision, EventKind, HistoryEvent, LeadId, OutboxEntry, Timestamp};
use leadloop_store::Batch;

/// The batch that makes `decision` durable: the lead's new state, its history, its timers,
/// and its effects queued in the outbox (each recorded in the history as queued). History
/// events belong to the decision's lead, or else to `subject`, the lead the event was about.
pub fn decision_batch(decision: Decision, subject: Option<&LeadId>, now: Timestamp) -> Batch {
    let mut batch = Batch::new();
    let lead_id = decision.lead.as_ref().map(|record| record.lead.id.clone()).or_else(|| subject.cloned());
    if let Some(record) = decision.lead {
        batch.put_lead(record);
    }
    for key in decision.cancel_timers {
        batch.cancel_timer(key);
    }
    for timer in decision.set_timers {
        batch.set_timer(timer);
    }
    match &lead_id {
        Some(id) => {
            for event in decision.events {
                batch.append_history(id.clone(), event);
            }
        }
        None if !decision.events.is_empty() => {
            tracing::warn!(
                events = decision.events.len(),
                "decision has history events but no lead; not recorded"
            );
        }
        None => {}
    }
    for (key, effect) in decision.effects {
        if let Some(id) = effect.lead_id().cloned().or_else(|| lead_id.clone()) {
            let event = EventKind::EffectQueued { key: key.clone(), effect: effect.name().to_owned() };
            batch.append_history(id, HistoryEvent::new(now, Actor::System, event));
        }
        batch.enqueue(OutboxEntry::new(key, effect, now));
    }
    batch
}
