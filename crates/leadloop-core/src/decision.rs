//! The output of a pure decision: the lead's new state, what to append to its history, which
//! timers to set or cancel, and which effects to queue. The engine writes all of it in one
//! store transaction, then performs the effects from the outbox.
//!
//! What the engine needs to know about a decision besides storing it (what to count, which
//! hand-offs opened or closed, which routing turns moved) it reads from the decision's
//! [`Summary`], in types: it never parses keys, cursor names or history prose back.

use std::fmt;

use crate::Timestamp;
use crate::effect::{Effect, IdempotencyKey, KeyError};
use crate::handoff::HandoffOutcome;
use crate::history::{Actor, EventKind, HistoryEvent};
use crate::ids::LeadId;
use crate::ids::PersonId;
use crate::lead::LeadRecord;
use crate::nurture_state::NurtureEvent;
use crate::timer::{ReportBucket, Timer, TimerKey};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// The lead's new state; `None` leaves it as it was.
    pub lead: Option<LeadRecord>,
    pub events: Vec<HistoryEvent>,
    pub set_timers: Vec<Timer>,
    pub cancel_timers: Vec<TimerKey>,
    pub effects: Vec<(IdempotencyKey, Effect)>,
    /// Items for digests and summaries: (bucket, key, value); a later item with the same key
    /// replaces an earlier one.
    pub items: Vec<(ReportBucket, String, serde_json::Value)>,
    /// Items to remove (those a digest or summary just sent): (bucket, key).
    pub remove_items: Vec<(ReportBucket, String)>,
    /// Routing rules' next turns.
    pub turns: Vec<RoutingTurn>,
    /// What the effects and events mean, for the engine's counts (see [`Fact`]).
    pub facts: Vec<Fact>,
}

/// A routing rule's next turn in its round-robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTurn {
    pub rule: String,
    pub next: u64,
}

impl RoutingTurn {
    const PREFIX: &'static str = "routing.turn.";

    /// The name of the store cursor that keeps `rule`'s next turn.
    pub fn cursor(rule: &str) -> String {
        format!("{}{rule}", Self::PREFIX)
    }

    /// The name of the store cursor that keeps this turn.
    pub fn cursor_name(&self) -> String {
        Self::cursor(&self.rule)
    }

    /// The cursor's value.
    pub fn cursor_value(&self) -> String {
        self.next.to_string()
    }

    /// The turn of `rule` from the value its cursor holds (`None` for a value this crate
    /// never wrote).
    pub fn from_cursor(rule: &str, value: &str) -> Option<Self> {
        Some(Self { rule: rule.to_owned(), next: value.parse().ok()? })
    }
}

/// What an effect or event of a decision is, in types: the engine counts from these.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// The email of an SLA ladder step (`step` names it) is queued under `key`. A step's
    /// actions (CRM writes, tasks) and a rep's answers are not steps.
    SlaStep { key: IdempotencyKey, step: String },
    /// The email of a nurture step of `track` is queued under `key`.
    NurtureSend { key: IdempotencyKey, track: String },
    /// Nurture enrolled, exited, skipped or capped (also in the history, as an activity).
    Nurture(NurtureEvent),
}

/// A hand-off that ended in this decision.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoffEnd {
    pub lead: LeadId,
    pub owner: Option<PersonId>,
    pub outcome: HandoffOutcome,
    pub open_seconds: i64,
}

/// What one or more decisions did, in types (see [`Decision::summary`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Hand-offs started: (lead, owner).
    pub handoffs_started: Vec<(LeadId, PersonId)>,
    pub handoffs_ended: Vec<HandoffEnd>,
    pub turns: Vec<RoutingTurn>,
    /// SLA step emails: (key, step). Queued only if the key was new to the outbox.
    pub sla_steps: Vec<(IdempotencyKey, String)>,
    /// Nurture step emails: (key, track). Queued only if the key was new to the outbox.
    pub nurture_sends: Vec<(IdempotencyKey, String)>,
    pub nurture: Vec<NurtureEvent>,
}

impl Summary {
    /// Adds what `other` did (decisions committed in one batch).
    pub fn extend(&mut self, other: Summary) {
        self.handoffs_started.extend(other.handoffs_started);
        self.handoffs_ended.extend(other.handoffs_ended);
        self.turns.extend(other.turns);
        self.sla_steps.extend(other.sla_steps);
        self.nurture_sends.extend(other.nurture_sends);
        self.nurture.extend(other.nurture);
    }
}

impl Decision {
    pub fn is_empty(&self) -> bool {
        self.lead.is_none()
            && self.events.is_empty()
            && self.set_timers.is_empty()
            && self.cancel_timers.is_empty()
            && self.effects.is_empty()
            && self.items.is_empty()
            && self.remove_items.is_empty()
            && self.turns.is_empty()
            && self.facts.is_empty()
    }

    /// Queues `effect` under `key`; a key its parts could not make queues nothing and says
    /// why in the history (an id containing `/` would otherwise share another's key).
    pub fn queue(
        &mut self,
        key: Result<IdempotencyKey, KeyError>,
        effect: Effect,
        now: Timestamp,
    ) -> Option<IdempotencyKey> {
        match key {
            Ok(key) => {
                self.effects.push((key.clone(), effect));
                Some(key)
            }
            Err(error) => {
                self.events.push(refused(&effect, &error, now));
                None
            }
        }
    }

    /// What this decision did, in types. Hand-off events belong to the decision's lead, or
    /// else to `subject` (as the engine records them); without either they are left out.
    pub fn summary(&self, subject: Option<&LeadId>) -> Summary {
        let lead = self.lead.as_ref().map(|record| &record.lead.id).or(subject);
        let mut summary = Summary { turns: self.turns.clone(), ..Summary::default() };
        if let Some(lead) = lead {
            for event in &self.events {
                match &event.kind {
                    EventKind::HandoffStarted { owner, .. } => {
                        summary.handoffs_started.push((lead.clone(), owner.clone()))
                    }
                    EventKind::HandoffEnded { owner, outcome, open_seconds, .. } => {
                        summary.handoffs_ended.push(HandoffEnd {
                            lead: lead.clone(),
                            owner: owner.clone(),
                            outcome: outcome.clone(),
                            open_seconds: *open_seconds,
                        })
                    }
                    _ => {}
                }
            }
        }
        for fact in &self.facts {
            match fact {
                Fact::SlaStep { key, step } => summary.sla_steps.push((key.clone(), step.clone())),
                Fact::NurtureSend { key, track } => summary.nurture_sends.push((key.clone(), track.clone())),
                Fact::Nurture(event) => summary.nurture.push(event.clone()),
            }
        }
        summary
    }
}

fn refused(effect: &Effect, error: &KeyError, now: Timestamp) -> HistoryEvent {
    HistoryEvent::new(
        now,
        Actor::System,
        EventKind::Activity {
            activity: "effect_refused".into(),
            detail: [
                ("effect".to_owned(), serde_json::json!(effect.name())),
                ("reason".to_owned(), serde_json::json!(error.to_string())),
            ]
            .into_iter()
            .collect(),
        },
    )
}

impl fmt::Display for RoutingTurn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {}", self.rule, self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_round_trip_through_their_cursor() {
        let turn = RoutingTurn { rule: "emea".into(), next: 7 };
        assert_eq!(turn.cursor_name(), "routing.turn.emea");
        assert_eq!(RoutingTurn::cursor("emea"), turn.cursor_name());
        assert_eq!(RoutingTurn::from_cursor("emea", &turn.cursor_value()), Some(turn));
        assert_eq!(RoutingTurn::from_cursor("emea", "x"), None);
    }

    #[test]
    fn a_refused_key_queues_nothing_and_says_so() {
        let now = "2026-03-02T14:00:00Z".parse().expect("instant");
        let mut decision = Decision::default();
        let effect = Effect::CrmUpdate { lead_id: LeadId::new("a/b"), fields: Default::default() };
        assert_eq!(
            decision.queue(IdempotencyKey::from_parts(["route", "a/b", "1"]), effect.clone(), now),
            None
        );
        assert!(decision.effects.is_empty());
        assert!(
            matches!(&decision.events[0].kind, EventKind::Activity { activity, .. } if activity == "effect_refused")
        );
        let key = decision.queue(IdempotencyKey::from_parts(["route", "a", "1"]), effect, now);
        assert_eq!(key.map(|k| k.to_string()), Some("route/a/1".into()));
        assert_eq!(decision.effects.len(), 1);
    }
}
