//! Turning a pure [`Decision`] into one store [`Batch`] and a typed [`Summary`] of what it did,
//! and counting what happened from that summary (`/metrics`).

use std::collections::HashSet;

use leadloop_core::nurture_state::NurtureEvent;
use leadloop_core::{Decision, IdempotencyKey, LeadId, LeadRecord, OutboxEntry, Summary, Timestamp};
use leadloop_store::{Batch, Expect};

/// A decision on its way to the store: the batch that makes it durable and the typed summary
/// of what it did, which the engine counts and keeps its in-memory views with (it never reads
/// them back out of the batch).
#[derive(Debug, Default)]
pub struct Applied {
    pub batch: Batch,
    pub summary: Summary,
}

impl Applied {
    /// Adds `other` (decisions committed together in one batch).
    pub fn extend(&mut self, other: Applied) {
        self.batch.ops.extend(other.batch.ops);
        self.summary.extend(other.summary);
    }
}

/// Turns `decision` into its batch and summary, and counts what it did (see [`observe`]).
/// `read` is the lead as the decision read it (see [`decision_batch`]).
pub fn apply(
    decision: Decision,
    subject: Option<&LeadId>,
    read: Option<&LeadRecord>,
    now: Timestamp,
) -> Applied {
    let summary = decision.summary(subject);
    observe(&summary);
    Applied { batch: decision_batch(decision, subject, read, now), summary }
}

/// Counts what a decision did, for `/metrics`: hand-offs started and ended (by outcome), the
/// time to the first touch, and what nurture did.
pub fn observe(summary: &Summary) {
    let started = summary.handoffs_started.len();
    if started > 0 {
        metrics::counter!("leadloop_sla_handoffs_started_total").increment(started as u64);
    }
    for ended in &summary.handoffs_ended {
        if ended.outcome.is_first_touch() {
            metrics::histogram!("leadloop_sla_time_to_first_touch_seconds").record(ended.open_seconds as f64);
        }
        metrics::counter!("leadloop_sla_handoffs_ended_total", "outcome" => ended.outcome.label())
            .increment(1);
    }
    for event in &summary.nurture {
        let track = event.track().to_owned();
        match event {
            NurtureEvent::Enrolled { .. } => {
                metrics::counter!("leadloop_nurture_enrolled_total", "track" => track).increment(1)
            }
            NurtureEvent::Exited { reason, .. } => {
                metrics::counter!("leadloop_nurture_exited_total", "track" => track, "reason" => reason.as_str())
                    .increment(1)
            }
            NurtureEvent::Skipped { steps, catch_up, late_seconds, .. } => {
                tracing::info!(
                    track,
                    steps = steps.len(),
                    catch_up,
                    late_seconds,
                    "nurture steps skipped after a late tick"
                );
                metrics::counter!("leadloop_nurture_skipped_total", "track" => track)
                    .increment(steps.len() as u64)
            }
            NurtureEvent::Capped { .. } => {
                metrics::counter!("leadloop_nurture_capped_total", "track" => track).increment(1)
            }
        }
    }
}

/// What a commit actually queued (duplicates excluded): SLA step emails by step, nurture sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queued {
    /// (step name, how many).
    pub sla_steps: Vec<(String, u64)>,
    pub nurture_sends: u64,
}

/// Counts the SLA steps and nurture sends among the effects a commit actually queued: a
/// key the outbox already held (a decision replayed) is not counted again.
pub fn observe_queued(summary: &Summary, enqueued: &[IdempotencyKey]) -> Queued {
    let enqueued: HashSet<&IdempotencyKey> = enqueued.iter().collect();
    let mut queued = Queued::default();
    for (key, step) in &summary.sla_steps {
        if enqueued.contains(key) {
            match queued.sla_steps.iter_mut().find(|(s, _)| s == step) {
                Some((_, n)) => *n += 1,
                None => queued.sla_steps.push((step.clone(), 1)),
            }
        }
    }
    queued.nurture_sends =
        summary.nurture_sends.iter().filter(|(key, _)| enqueued.contains(key)).count() as u64;
    if queued.nurture_sends > 0 {
        metrics::counter!("leadloop_nurture_sends_total").increment(queued.nurture_sends);
    }
    for (step, n) in &queued.sla_steps {
        metrics::counter!("leadloop_sla_steps_total", "step" => step.clone()).increment(*n);
    }
    queued
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
    for turn in decision.turns {
        batch.set_cursor(turn.cursor_name(), turn.cursor_value());
    }
    for (bucket, key) in decision.remove_items {
        batch.push(leadloop_store::Op::DeleteItem { bucket: bucket.to_string(), key });
    }
    for (bucket, key, value) in decision.items {
        batch.put_item(bucket.to_string(), key, value);
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

#[cfg(test)]
mod tests {
    use leadloop_core::sla::{SlaConfig, SlaRules, StepAction, default_policy};
    use leadloop_core::{Lead, LeadRecord, OrgChart, Person, PersonId, Role, SalesAction, Timestamp};

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("instant")
    }

    fn rep() -> Person {
        Person {
            id: PersonId::new("rep"),
            email: "rep@us.example".into(),
            name: "Rep".into(),
            manager: None,
            time_zone: None,
            role: Role::Rep,
            active: true,
            capacity: None,
        }
    }

    fn keys(decision: &Decision) -> Vec<IdempotencyKey> {
        decision.effects.iter().map(|(key, _)| key.clone()).collect()
    }

    /// `leadloop_sla_steps_total` counts ladder steps only: not a step's actions (CRM writes
    /// keyed under the step) and not a rep's one-click answer (`sla/LEAD/N/answer/ACTION`,
    /// which parsing keys once counted as a step named after the action).
    #[test]
    fn answers_and_step_actions_are_not_counted_as_steps() {
        let mut policy = default_policy();
        policy.steps[0].actions = vec![StepAction::CreateTask { subject: "Call {lead}".into() }];
        let sla = SlaRules::new(SlaConfig { policies: vec![policy], ..SlaConfig::default() });
        let people = OrgChart::new([rep()]);
        let mut lead = Lead::new("00Q1");
        lead.owner_id = Some(PersonId::new("rep"));
        lead.status = Some("Open - Not Contacted".into());
        let t0 = at("2026-11-23T08:00:00Z");

        let decision =
            leadloop_core::policy::Policy::on_lead(&sla, None, LeadRecord::new(lead, t0), &people, t0);
        let enqueued = keys(&decision);
        assert_eq!(enqueued.len(), 2, "the alert and its task: {enqueued:?}");
        let record = decision.lead.clone().expect("lead");
        let applied = apply(decision, None, None, t0);
        assert_eq!(applied.summary.handoffs_started, [(LeadId::new("00Q1"), PersonId::new("rep"))]);
        let queued = observe_queued(&applied.summary, &enqueued);
        assert_eq!(queued.sla_steps, [("alert".to_owned(), 1)]);

        // A replay queues nothing new: nothing is counted.
        assert_eq!(observe_queued(&applied.summary, &[]), Queued::default());

        let by = leadloop_core::Actor::Sales { person: Some(PersonId::new("rep")), address: None };
        let (decision, _) = sla.sales_action(&record, 1, SalesAction::Accept, None, &by, &people, t0);
        let enqueued = keys(&decision);
        assert_eq!(enqueued.iter().map(|k| k.as_str()).collect::<Vec<_>>(), ["sla/00Q1/1/answer/accept"]);
        let applied = apply(decision, None, None, t0);
        assert_eq!(observe_queued(&applied.summary, &enqueued), Queued::default(), "an answer is not a step");
        let ended = &applied.summary.handoffs_ended;
        assert_eq!(ended.len(), 1);
        assert!(ended[0].outcome.is_first_touch());
        assert_eq!(ended[0].outcome.label(), "satisfied");
    }
}
