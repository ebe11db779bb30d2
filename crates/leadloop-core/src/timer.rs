//! Timers: something to reconsider at a given instant (the next SLA step, a nurture send, a
//! score decay). The store keeps them in an index ordered by (due, key), so a tick reads only
//! what is due.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::lead::LeadId;

/// Unique per timer; setting a timer with an existing key moves it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimerKey(pub String);

impl TimerKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TimerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the timer is for; the engine dispatches on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TimerKind {
    /// The next step of an SLA ladder.
    SlaStep { handoff: u32, step: u32 },
    /// The next step of a nurture track.
    NurtureStep { track: String, step: u32 },
    /// Re-score a lead whose engagement decays.
    ScoreDecay,
    /// A cron schedule's next firing.
    Cron { schedule: String },
    /// Time to send what a bucket collected (a digest, a weekly summary).
    Report { bucket: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    pub key: TimerKey,
    pub due: Timestamp,
    pub lead_id: Option<LeadId>,
    pub kind: TimerKind,
}
