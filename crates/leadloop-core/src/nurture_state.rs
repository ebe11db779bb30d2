//! A lead's nurture state and what nurture does to it, as types that depend on no rule: the
//! lead record holds [`NurtureState`], the history and the engine's counts hold
//! [`NurtureEvent`]s. The rules that move them are in `nurture.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Timestamp;
use crate::history::{Actor, EventKind, HistoryEvent};

/// One active enrolment, kept on the lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    pub track: String,
    /// 1 for the first enrolment in this track, 2 after a recycle, …
    pub round: u32,
    pub enrolled_at: Timestamp,
    /// The index of the next step to send.
    pub next_step: u32,
    /// When the previous step was due (enrolment for the first step): intervals from the
    /// previous step count from here, so quiet hours and the cap do not make a track drift.
    pub anchor: Timestamp,
    /// When the next step is planned (its schedule, moved out of quiet hours, or after the
    /// cap frees).
    pub due: Timestamp,
    /// The next step was held back (by the cap, or by quiet hours during a catch-up): it is
    /// sent when it may be, and the steps after it count from then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// The lead's nurture state, kept in its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NurtureState {
    pub tracks: Vec<Enrolment>,
    /// Recent nurture sends, for the frequency cap (older than the cap's period are dropped).
    pub sent: Vec<Timestamp>,
    /// Enrolments so far, per track.
    pub rounds: BTreeMap<String, u32>,
    /// When the lead opted out or unsubscribed; from then on no nurture mail, ever.
    pub opted_out_at: Option<Timestamp>,
}

impl NurtureState {
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
            && self.sent.is_empty()
            && self.rounds.is_empty()
            && self.opted_out_at.is_none()
    }
}

/// Why a lead entered a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrolReason {
    /// It matched the track's enrolment rule (the first round).
    Matched,
    /// Sales recycled it (a new round).
    Recycled,
}

impl EnrolReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrolReason::Matched => "matched the enrolment rule",
            EnrolReason::Recycled => "recycled by sales",
        }
    }
}

/// Why a lead left a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Unsubscribed through the link (the CRM flag may not say so yet).
    Unsubscribed,
    /// Opted out in the CRM.
    OptedOut,
    NoAddress,
    Bounced,
    Disqualified,
    Converted,
    Mql,
    /// Reached the last step.
    End,
    /// The track is no longer configured.
    TrackRemoved,
}

impl ExitReason {
    /// The reason as history and metrics labels have always named it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Unsubscribed => "unsubscribed",
            ExitReason::OptedOut => "opted_out",
            ExitReason::NoAddress => "no_address",
            ExitReason::Bounced => "bounced",
            ExitReason::Disqualified => "disqualified",
            ExitReason::Converted => "converted",
            ExitReason::Mql => "mql",
            ExitReason::End => "end",
            ExitReason::TrackRemoved => "track removed from config",
        }
    }
}

/// Something nurture did to a lead. Recorded in the history as a `nurture_*` activity (the
/// detail each always had) and counted by the engine from this type.
#[derive(Debug, Clone, PartialEq)]
pub enum NurtureEvent {
    Enrolled {
        track: String,
        round: u32,
        reason: EnrolReason,
        first_send: Timestamp,
    },
    Exited {
        track: String,
        round: u32,
        reason: ExitReason,
    },
    /// Steps found late and not sent, by the track's catch-up policy.
    Skipped {
        track: String,
        round: u32,
        steps: Vec<String>,
        catch_up: &'static str,
        late_seconds: i64,
    },
    /// A step held back by the frequency cap until `until`.
    Capped {
        track: String,
        step: String,
        until: Timestamp,
    },
}

impl NurtureEvent {
    pub fn track(&self) -> &str {
        match self {
            NurtureEvent::Enrolled { track, .. }
            | NurtureEvent::Exited { track, .. }
            | NurtureEvent::Skipped { track, .. }
            | NurtureEvent::Capped { track, .. } => track,
        }
    }

    /// The history event that records it.
    pub fn history(&self, now: Timestamp) -> HistoryEvent {
        let (activity, detail) = match self {
            NurtureEvent::Enrolled { track, round, reason, first_send } => (
                "nurture_enrolled",
                json!({ "track": track, "round": round, "reason": reason.as_str(), "first_send": first_send }),
            ),
            NurtureEvent::Exited { track, round, reason } => {
                ("nurture_exited", json!({ "track": track, "round": round, "reason": reason.as_str() }))
            }
            NurtureEvent::Skipped { track, round, steps, catch_up, late_seconds } => (
                "nurture_skipped",
                json!({
                    "track": track,
                    "round": round,
                    "steps": steps,
                    "catch_up": catch_up,
                    "late_seconds": late_seconds,
                }),
            ),
            NurtureEvent::Capped { track, step, until } => {
                ("nurture_capped", json!({ "track": track, "step": step, "until": until }))
            }
        };
        let detail = match detail {
            serde_json::Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        HistoryEvent::new(
            now,
            Actor::Rule { name: "nurture".into() },
            EventKind::Activity { activity: activity.into(), detail },
        )
    }
}
