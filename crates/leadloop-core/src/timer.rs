//! Timers: something to reconsider at a given instant (the next SLA step, a nurture send, a
//! score decay). The store keeps them in an index ordered by (due, key), so a tick reads only
//! what is due.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Timestamp;
use crate::ids::{LeadId, PersonId};

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
    Report { bucket: ReportBucket },
}

/// What a report bucket collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportKind {
    /// A manager's or executive's daily digest of overdue hand-offs.
    Digest,
    /// An executive's weekly SLA summary.
    Weekly,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Digest => "digest",
            ReportKind::Weekly => "weekly",
        }
    }
}

/// A bucket of items collected for one person's report, e.g. the digest of manager `005M`.
/// Stored (as a timer's bucket and as the store's bucket name) as `digest/005M`, the form it
/// always had.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReportBucket {
    pub kind: ReportKind,
    pub person: PersonId,
}

impl ReportBucket {
    pub fn new(kind: ReportKind, person: PersonId) -> Self {
        Self { kind, person }
    }

    /// The bucket whose name is `text` (`digest/005M`, `weekly/005E`).
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, person) = text.split_once('/')?;
        let kind = match kind {
            "digest" => ReportKind::Digest,
            "weekly" => ReportKind::Weekly,
            _ => return None,
        };
        (!person.is_empty()).then(|| Self::new(kind, PersonId::new(person)))
    }

    /// The timer that sends this bucket's report.
    pub fn timer_key(&self) -> TimerKey {
        TimerKey::new(self.to_string())
    }
}

impl fmt::Display for ReportBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.person)
    }
}

impl Serialize for ReportBucket {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReportBucket {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown report bucket {text:?}")))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    pub key: TimerKey,
    pub due: Timestamp,
    pub lead_id: Option<LeadId>,
    pub kind: TimerKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_timers_keep_their_stored_form() {
        let stored = serde_json::json!({
            "key": "digest/005M",
            "due": "2026-03-03T08:00:00Z",
            "lead_id": null,
            "kind": { "type": "report", "bucket": "digest/005M" },
        });
        let timer: Timer = serde_json::from_value(stored.clone()).expect("reads");
        let bucket = ReportBucket::new(ReportKind::Digest, PersonId::new("005M"));
        assert_eq!(timer.kind, TimerKind::Report { bucket: bucket.clone() });
        assert_eq!(timer.key, bucket.timer_key());
        assert_eq!(serde_json::to_value(&timer).expect("writes"), stored);
        assert_eq!(ReportBucket::parse("weekly/005E").map(|b| b.kind), Some(ReportKind::Weekly));
        assert_eq!(ReportBucket::parse("monthly/005E"), None);
        assert_eq!(ReportBucket::parse("digest/"), None);
    }
}
