//! The append-only history of a lead: every change, with its cause. Funnel reports (how many
//! leads moved between stages, how fast, where they stall) are computed from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
pub use crate::actor::Actor;
use crate::effect::IdempotencyKey;
use crate::handoff::HandoffOutcome;
use crate::ids::PersonId;
use crate::stage::Stage;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The lead was first seen.
    Created,
    /// Fields changed in the CRM; the names of the changed fields.
    Updated {
        fields: Vec<String>,
    },
    /// The lead was deleted in the CRM.
    Deleted,
    StageChanged {
        from: Stage,
        to: Stage,
        reason: String,
    },
    OwnerChanged {
        from: Option<PersonId>,
        to: Option<PersonId>,
        reason: String,
    },
    StatusChanged {
        from: Option<String>,
        to: Option<String>,
    },
    /// An activity (web visit, email click, completed task, …).
    Activity {
        activity: String,
        detail: BTreeMap<String, serde_json::Value>,
    },
    ScoreChanged {
        fit: f64,
        engagement: f64,
        reason: String,
    },
    HandoffStarted {
        handoff: u32,
        owner: PersonId,
    },
    HandoffEnded {
        handoff: u32,
        /// Stored as the sentence it always was (see [`HandoffOutcome`]).
        outcome: HandoffOutcome,
        /// Whose hand-off it was.
        #[serde(default)]
        owner: Option<PersonId>,
        /// How long the hand-off was open.
        #[serde(default)]
        open_seconds: i64,
    },
    /// An effect was queued in the outbox.
    EffectQueued {
        key: IdempotencyKey,
        effect: String,
    },
    /// An effect was performed (an email accepted by the server, a CRM write acknowledged).
    EffectDone {
        key: IdempotencyKey,
    },
    /// An effect failed for good; the reason is the peer's reply.
    EffectFailed {
        key: IdempotencyKey,
        reason: String,
    },
    /// An effect that had failed for good was put back in the queue by an operator (after
    /// they fixed the cause); `reason` is the failure it had, `attempts` how many it took.
    EffectReplayed {
        key: IdempotencyKey,
        reason: String,
        attempts: u32,
    },
}

impl EventKind {
    /// The stable name of the variant, for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated { .. } => "updated",
            EventKind::Deleted => "deleted",
            EventKind::StageChanged { .. } => "stage_changed",
            EventKind::OwnerChanged { .. } => "owner_changed",
            EventKind::StatusChanged { .. } => "status_changed",
            EventKind::Activity { .. } => "activity",
            EventKind::ScoreChanged { .. } => "score_changed",
            EventKind::HandoffStarted { .. } => "handoff_started",
            EventKind::HandoffEnded { .. } => "handoff_ended",
            EventKind::EffectQueued { .. } => "effect_queued",
            EventKind::EffectDone { .. } => "effect_done",
            EventKind::EffectFailed { .. } => "effect_failed",
            EventKind::EffectReplayed { .. } => "effect_replayed",
        }
    }
}

/// One entry in a lead's history. The store assigns `seq`, increasing per lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub at: Timestamp,
    pub actor: Actor,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl HistoryEvent {
    pub fn new(at: Timestamp, actor: Actor, kind: EventKind) -> Self {
        Self { at, actor, kind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_stable_tags() {
        let event = HistoryEvent::new(
            "2026-03-02T14:00:00Z".parse().expect("valid instant"),
            Actor::Rule { name: "score".into() },
            EventKind::StageChanged {
                from: Stage::Prospect,
                to: Stage::MarketingQualified,
                reason: "score 70 ≥ 65".into(),
            },
        );
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["kind"], "stage_changed");
        assert_eq!(json["from"], "prospect");
        assert_eq!(json["actor"]["type"], "rule");
        let back: HistoryEvent = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, event);
        assert_eq!(back.kind.name(), "stage_changed");
    }
}
