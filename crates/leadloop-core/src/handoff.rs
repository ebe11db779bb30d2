//! The state of a hand-off, kept on the lead and in its history: the running [`Handoff`], a
//! rep's answer ([`SalesAction`]) and how a hand-off ended ([`HandoffOutcome`]). These are
//! state types: they depend on no rule, so the lead record and the history can hold them
//! without importing the SLA ladder that drives them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Timestamp;
use crate::ids::PersonId;

/// The hand-off whose SLA is running, kept on the lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub number: u32,
    pub owner: PersonId,
    /// The CRM status when the hand-off started; a change away from it satisfies the SLA.
    pub status: Option<String>,
    pub started_at: Timestamp,
    pub policy: String,
    /// Index of the next step to send.
    pub next_step: usize,
    /// Seconds the ladder was paused while the rep was away; steps fall due this much later.
    #[serde(default)]
    pub paused_seconds: i64,
    /// The follow-up hold planned in the rep's calendar at hand-off.
    #[serde(default)]
    pub hold: Option<(Timestamp, Timestamp)>,
    /// Set when a ladder step wrote `status` to the CRM itself: the status it replaced. Until
    /// the CRM echoes the new status (or when it refused the write), a CRM record still
    /// showing this one is not the rep's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_written_over: Option<StatusBefore>,
}

/// The CRM status a ladder step's own status write replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBefore {
    pub status: Option<String>,
}

/// A rep's answer to a hand-off, from a one-click link in the alert or a reminder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesAction {
    /// The rep takes the lead: the CRM status becomes `accept_status`.
    Accept,
    /// Back to nurture: `recycle_status`, stage Recycled.
    Recycle,
    /// Not a fit: `disqualify_status`, stage Disqualified, with the rep's reason.
    Disqualify,
}

impl SalesAction {
    pub const ALL: [SalesAction; 3] = [SalesAction::Accept, SalesAction::Recycle, SalesAction::Disqualify];

    pub fn as_str(self) -> &'static str {
        match self {
            SalesAction::Accept => "accept",
            SalesAction::Recycle => "recycle",
            SalesAction::Disqualify => "disqualify",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// What a sales action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    Done,
    /// The hand-off the link was for is over (answered, reassigned, deleted).
    AlreadyClosed,
}

/// How a hand-off ended.
///
/// Stored (in `handoff_ended` history events) and printed (by `simulate`) as the sentence it
/// always was, e.g. `satisfied: status changed to Working - Contacted`; reading parses that
/// sentence back, and a sentence this version does not know is kept as [`Other`](Self::Other),
/// so every stored history stays readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffOutcome {
    /// The CRM status changed away from the hand-off's status (`None`: it was cleared).
    StatusChanged { to: Option<String> },
    /// A completed task was logged, under a policy that stops on tasks.
    TaskCompleted,
    /// The hand-off's owner logged a completed activity of a kind the policy counts as a
    /// first touch (`satisfied_by = ["activity"]`); `kind` is the activity's, lowercased
    /// (`call`, `email`).
    ActivityLogged { kind: String },
    /// The rep answered from an email link (`reason`: a disqualification's).
    Answered { action: SalesAction, reason: Option<String> },
    /// The owner changed in the CRM (or by routing).
    Reassigned,
    /// A ladder step reassigned the lead after no answer.
    ReassignedByLadder,
    /// The lead was deleted in the CRM.
    LeadDeleted,
    /// The hand-off's policy is no longer configured.
    PolicyRemoved { policy: String },
    /// A sentence this version does not know (written by another version).
    Other(String),
}

const SATISFIED: &str = "satisfied: ";
const BY_LINK: &str = " by the rep from an email link";
const LOGGED: &str = " logged by the owner";
const NO_REASON: &str = "no reason given";

impl HandoffOutcome {
    /// Met the SLA's purpose: the rep (or the CRM on their behalf) acted.
    pub fn is_satisfied(&self) -> bool {
        matches!(
            self,
            HandoffOutcome::StatusChanged { .. }
                | HandoffOutcome::TaskCompleted
                | HandoffOutcome::ActivityLogged { .. }
                | HandoffOutcome::Answered { .. }
        )
    }

    /// A first touch: a status change, an activity the policy counts as one (a logged call
    /// or email), or an answer from an email link (a completed task under `stop_on_task`
    /// ends a hand-off too, but is not a touch of the lead).
    pub fn is_first_touch(&self) -> bool {
        matches!(
            self,
            HandoffOutcome::StatusChanged { .. }
                | HandoffOutcome::ActivityLogged { .. }
                | HandoffOutcome::Answered { .. }
        )
    }

    /// How the first touch was made, for reports: `status` (the CRM status changed),
    /// `activity` (a logged call or email the policy counts), `email_link` (a one-click
    /// answer); `None` when the outcome is not a first touch.
    pub fn first_touch_by(&self) -> Option<&'static str> {
        match self {
            HandoffOutcome::StatusChanged { .. } => Some("status"),
            HandoffOutcome::ActivityLogged { .. } => Some("activity"),
            HandoffOutcome::Answered { .. } => Some("email_link"),
            _ => None,
        }
    }

    /// The metrics label (`leadloop_sla_handoffs_ended_total{outcome}`): the sentence's part
    /// before its first `:`, as the label has always been.
    pub fn label(&self) -> &'static str {
        match self {
            HandoffOutcome::StatusChanged { .. }
            | HandoffOutcome::TaskCompleted
            | HandoffOutcome::ActivityLogged { .. }
            | HandoffOutcome::Answered { .. } => "satisfied",
            HandoffOutcome::Reassigned => "reassigned",
            HandoffOutcome::ReassignedByLadder => "reassigned by the SLA ladder",
            HandoffOutcome::LeadDeleted => "lead deleted",
            HandoffOutcome::PolicyRemoved { .. } => "stopped",
            HandoffOutcome::Other(_) => "other",
        }
    }

    /// Reads the stored sentence; never fails (see [`Other`](Self::Other)).
    pub fn parse(text: &str) -> Self {
        match text {
            "satisfied: task completed" => return HandoffOutcome::TaskCompleted,
            "reassigned" => return HandoffOutcome::Reassigned,
            "reassigned by the SLA ladder" => return HandoffOutcome::ReassignedByLadder,
            "lead deleted" => return HandoffOutcome::LeadDeleted,
            _ => {}
        }
        if let Some(policy) = text
            .strip_prefix("stopped: policy `")
            .and_then(|rest| rest.strip_suffix("` is no longer configured"))
        {
            return HandoffOutcome::PolicyRemoved { policy: policy.to_owned() };
        }
        if let Some(rest) = text.strip_prefix(SATISFIED) {
            if let Some(status) = rest.strip_prefix("status changed to ") {
                let to = (status != "(none)").then(|| status.to_owned());
                return HandoffOutcome::StatusChanged { to };
            }
            if let Some(kind) = rest.strip_suffix(LOGGED)
                && !kind.is_empty()
                && !kind.contains(' ')
            {
                return HandoffOutcome::ActivityLogged { kind: kind.to_owned() };
            }
            if let Some(answer) = rest.strip_suffix(BY_LINK) {
                match answer {
                    "accepted" => {
                        return HandoffOutcome::Answered { action: SalesAction::Accept, reason: None };
                    }
                    "recycled" => {
                        return HandoffOutcome::Answered { action: SalesAction::Recycle, reason: None };
                    }
                    _ => {}
                }
                if let Some(reason) = answer.strip_prefix("disqualified: ") {
                    let reason = (reason != NO_REASON).then(|| reason.to_owned());
                    return HandoffOutcome::Answered { action: SalesAction::Disqualify, reason };
                }
            }
        }
        HandoffOutcome::Other(text.to_owned())
    }
}

impl fmt::Display for HandoffOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffOutcome::StatusChanged { to } => {
                write!(f, "{SATISFIED}status changed to {}", to.as_deref().unwrap_or("(none)"))
            }
            HandoffOutcome::TaskCompleted => write!(f, "{SATISFIED}task completed"),
            HandoffOutcome::ActivityLogged { kind } => write!(f, "{SATISFIED}{kind}{LOGGED}"),
            HandoffOutcome::Answered { action: SalesAction::Accept, .. } => {
                write!(f, "{SATISFIED}accepted{BY_LINK}")
            }
            HandoffOutcome::Answered { action: SalesAction::Recycle, .. } => {
                write!(f, "{SATISFIED}recycled{BY_LINK}")
            }
            HandoffOutcome::Answered { action: SalesAction::Disqualify, reason } => {
                write!(f, "{SATISFIED}disqualified: {}{BY_LINK}", reason.as_deref().unwrap_or(NO_REASON))
            }
            HandoffOutcome::Reassigned => f.write_str("reassigned"),
            HandoffOutcome::ReassignedByLadder => f.write_str("reassigned by the SLA ladder"),
            HandoffOutcome::LeadDeleted => f.write_str("lead deleted"),
            HandoffOutcome::PolicyRemoved { policy } => {
                write!(f, "stopped: policy `{policy}` is no longer configured")
            }
            HandoffOutcome::Other(text) => f.write_str(text),
        }
    }
}

impl Serialize for HandoffOutcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HandoffOutcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sentence earlier versions stored reads back as its typed outcome and is written
    /// again unchanged, so histories, exports and `simulate` output keep their text.
    #[test]
    fn stored_sentences_read_back_and_round_trip() {
        let cases = [
            (
                "satisfied: status changed to Working - Contacted",
                HandoffOutcome::StatusChanged { to: Some("Working - Contacted".into()) },
            ),
            ("satisfied: status changed to (none)", HandoffOutcome::StatusChanged { to: None }),
            ("satisfied: task completed", HandoffOutcome::TaskCompleted),
            ("satisfied: call logged by the owner", HandoffOutcome::ActivityLogged { kind: "call".into() }),
            (
                "satisfied: accepted by the rep from an email link",
                HandoffOutcome::Answered { action: SalesAction::Accept, reason: None },
            ),
            (
                "satisfied: recycled by the rep from an email link",
                HandoffOutcome::Answered { action: SalesAction::Recycle, reason: None },
            ),
            (
                "satisfied: disqualified: student, no budget by the rep from an email link",
                HandoffOutcome::Answered {
                    action: SalesAction::Disqualify,
                    reason: Some("student, no budget".into()),
                },
            ),
            (
                "satisfied: disqualified: no reason given by the rep from an email link",
                HandoffOutcome::Answered { action: SalesAction::Disqualify, reason: None },
            ),
            ("reassigned", HandoffOutcome::Reassigned),
            ("reassigned by the SLA ladder", HandoffOutcome::ReassignedByLadder),
            ("lead deleted", HandoffOutcome::LeadDeleted),
            (
                "stopped: policy `enterprise` is no longer configured",
                HandoffOutcome::PolicyRemoved { policy: "enterprise".into() },
            ),
            ("something newer", HandoffOutcome::Other("something newer".into())),
        ];
        for (text, outcome) in cases {
            let read: HandoffOutcome = serde_json::from_value(serde_json::json!(text)).expect("reads");
            assert_eq!(read, outcome, "{text}");
            assert_eq!(serde_json::to_value(&outcome).expect("writes"), serde_json::json!(text));
        }
    }

    #[test]
    fn labels_and_first_touch() {
        let status = HandoffOutcome::StatusChanged { to: None };
        assert_eq!((status.label(), status.is_first_touch()), ("satisfied", true));
        let task = HandoffOutcome::TaskCompleted;
        assert_eq!((task.label(), task.is_satisfied(), task.is_first_touch()), ("satisfied", true, false));
        let call = HandoffOutcome::ActivityLogged { kind: "call".into() };
        assert_eq!((call.label(), call.is_satisfied(), call.is_first_touch()), ("satisfied", true, true));
        assert_eq!(
            (call.first_touch_by(), status.first_touch_by(), task.first_touch_by()),
            (Some("activity"), Some("status"), None)
        );
        assert_eq!(HandoffOutcome::LeadDeleted.label(), "lead deleted");
        assert!(!HandoffOutcome::Reassigned.is_satisfied());
        assert_eq!(HandoffOutcome::PolicyRemoved { policy: "p".into() }.label(), "stopped");
    }
}
