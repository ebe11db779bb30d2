//! Turning a pure [`Decision`] into one store [`Batch`].

use leadloop_core::{Decision, EventKind, LeadId, LeadRecord, OutboxEntry, Timestamp};
use leadloop_store::{Batch, Expect};

/// Counts what a decision did, for `/metrics`: hand-offs started and ended (by outcome), the
/// time to the first status change, and SLA steps queued (by step).
pub fn observe(decision: &Decision) {
    for event in &decision.events {
        match &event.kind {
            EventKind::HandoffStarted { .. } => {
                metrics::counter!("leadloop_sla_handoffs_started_total").increment(1)
            }
            EventKind::HandoffEnded { outcome, open_seconds, .. } => {
                let outcome = outcome.split(':').next().unwrap_or("other").to_owned();
                // The first touch is a status change or an answer from an email link; a
                // completed task ends a hand-off too, but is not counted here.
                if outcome == "satisfied" && outcome_detail_is_status(event) {
                    metrics::histogram!("leadloop_sla_time_to_first_touch_seconds")
                        .record(*open_seconds as f64);
                }
                metrics::counter!("leadloop_sla_handoffs_ended_total", "outcome" => outcome).increment(1);
            }
            EventKind::Activity { activity, detail } if activity.starts_with("nurture_") => {
                let track = detail.get("track").and_then(|v| v.as_str()).unwrap_or("").to_owned();
                match activity.as_str() {
                    "nurture_enrolled" => {
                        metrics::counter!("leadloop_nurture_enrolled_total", "track" => track).increment(1)
                    }
                    "nurture_exited" => {
                        let reason = detail.get("reason").and_then(|v| v.as_str()).unwrap_or("").to_owned();
                        metrics::counter!("leadloop_nurture_exited_total", "track" => track, "reason" => reason)
                            .increment(1)
                    }
                    "nurture_skipped" => {
                        let steps = detail.get("steps").and_then(|v| v.as_array()).map_or(0, Vec::len);
                        tracing::info!(
                            track,
                            steps,
                            catch_up = detail.get("catch_up").and_then(|v| v.as_str()).unwrap_or(""),
                            late_seconds = detail.get("late_seconds").and_then(|v| v.as_i64()).unwrap_or(0),
                            "nurture steps skipped after a late tick"
                        );
                        metrics::counter!("leadloop_nurture_skipped_total", "track" => track)
                            .increment(steps as u64)
                    }
                    "nurture_capped" => {
                        metrics::counter!("leadloop_nurture_capped_total", "track" => track).increment(1)
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

fn outcome_detail_is_status(event: &leadloop_core::HistoryEvent) -> bool {
    matches!(&event.kind, EventKind::HandoffEnded { outcome, .. } if !outcome.contains("task completed"))
}

/// Counts SLA steps among the effects a commit actually queued (duplicates excluded).
pub fn observe_queued(keys: &[leadloop_core::IdempotencyKey]) {
    let nurture = keys.iter().filter(|k| k.as_str().starts_with("nurture/")).count();
    if nurture > 0 {
        metrics::counter!("leadloop_nurture_sends_total").increment(nurture as u64);
    }
    for key in keys {
        if let Some(step) = key.as_str().strip_prefix("sla/").and_then(|rest| rest.rsplit('/').next())
            && !key.as_str().contains("/action/")
        {
            metrics::counter!("leadloop_sla_steps_total", "step" => step.to_owned()).increment(1);
        }
    }
}

/// The batch that makes `decision` durable: the lead's new state, its history, its timers,
/// and its effects queued in the outbox (the outbox entry is the record of the queueing: it
/// holds the effect, its lead and when it was queued). History events belong to the
/// decision's lead, or else to `subject`, the lead the event was about.
///
/// `read` is the lead as the decision read it (`None`: it did not exist): the store refuses
/// the batch if the lead moved on meanwhile, and the new state gets the next version.
pub fn decision_batch(
    decision: Decision,
    subject: Option<&LeadId>,
    read: Option<&LeadRecord>,
    now: Timestamp,
) -> Batch {
    let mut batch = Batch::new();
    let lead_id = decision.lead.as_ref().map(|record| record.lead.id.clone()).or_else(|| subject.cloned());
    if let Some(mut record) = decision.lead {
        stamp(&mut record, read);
        batch.put_lead_expecting(record, Expect::read(read));
    }
    for key in decision.cancel_timers {
        batch.cancel_timer(key);
    }
    for timer in decision.set_timers {
        // A collecting timer (digest, summary) already due earlier stays where it is.
        if matches!(timer.kind, leadloop_core::TimerKind::Report { .. }) {
            batch.push(leadloop_store::Op::SetTimerEarliest(timer));
        } else {
            batch.set_timer(timer);
        }
    }
    for (name, value) in decision.cursors {
        batch.set_cursor(name, value);
    }
    for (bucket, key) in decision.remove_items {
        batch.push(leadloop_store::Op::DeleteItem { bucket, key });
    }
    for (bucket, key, value) in decision.items {
        batch.put_item(bucket, key, value);
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
        batch.enqueue(OutboxEntry::new(key, effect, now));
    }
    batch
}

/// Gives a lead decided on `read` the next version (a decision that changed the lead without
/// moving its version would let a concurrent writer's check pass).
pub fn stamp(record: &mut LeadRecord, read: Option<&LeadRecord>) {
    if let Some(read) = read {
        record.version = record.version.max(read.version + 1);
    }
}
