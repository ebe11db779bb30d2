//! Effects: what a decision asks the world to do (send an email, write to the CRM). Effects are
//! recorded in the outbox before they are performed, keyed by a deterministic idempotency key,
//! so a crash between "decided" and "done" neither loses nor repeats them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::lead::LeadId;
use crate::person::PersonId;

/// A deterministic key: the same decision taken twice yields the same key, so the second
/// outbox insert is a no-op. For an SLA step it is built from (lead, hand-off, step); it also
/// seeds the email's `Message-ID`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(pub String);

impl IdempotencyKey {
    /// Joins parts with `/`; parts must not be empty.
    pub fn from_parts<I, S>(parts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut key = String::new();
        for part in parts {
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(part.as_ref());
        }
        Self(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Send an email rendered from `template` with `vars`.
    Email {
        /// What the mail is: `sla.alert`, `sla.reminder`, `sla.manager`, `sla.executive`,
        /// `nurture`, …; decides headers (List-Unsubscribe only on nurture) and retry policy.
        kind: String,
        template: String,
        to: Vec<String>,
        cc: Vec<String>,
        lead_id: Option<LeadId>,
        vars: serde_json::Value,
    },
    /// Update fields of a lead in the CRM (status, owner, opt-out).
    CrmUpdate { lead_id: LeadId, fields: serde_json::Map<String, serde_json::Value> },
    /// Create a follow-up task in the CRM.
    CrmTask { lead_id: LeadId, owner_id: PersonId, subject: String, due: Option<Timestamp> },
    /// Book a hold in a person's calendar (a follow-up call at hand-off).
    CalendarHold { person: PersonId, lead_id: LeadId, start: Timestamp, end: Timestamp, summary: String },
}

/// Which relay performs an effect; each has its own ready queue, so a CRM outage does not
/// hold up email and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Crm,
    Calendar,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Crm, Channel::Calendar];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Crm => "crm",
            Channel::Calendar => "calendar",
        }
    }
}

/// An address that must not receive mail: opted out, or hard-bounced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    /// Lowercased.
    pub address: String,
    pub reason: String,
    pub at: Timestamp,
}

impl Effect {
    pub fn channel(&self) -> Channel {
        match self {
            Effect::Email { .. } => Channel::Email,
            Effect::CrmUpdate { .. } | Effect::CrmTask { .. } => Channel::Crm,
            Effect::CalendarHold { .. } => Channel::Calendar,
        }
    }

    /// The stable name of the variant, for logs, metrics and `simulate` output.
    pub fn name(&self) -> &'static str {
        match self {
            Effect::Email { .. } => "email",
            Effect::CrmUpdate { .. } => "crm.update",
            Effect::CrmTask { .. } => "crm.task",
            Effect::CalendarHold { .. } => "calendar.hold",
        }
    }

    pub fn lead_id(&self) -> Option<&LeadId> {
        match self {
            Effect::Email { lead_id, .. } => lead_id.as_ref(),
            Effect::CrmUpdate { lead_id, .. }
            | Effect::CrmTask { lead_id, .. }
            | Effect::CalendarHold { lead_id, .. } => Some(lead_id),
        }
    }
}

/// Where an outbox entry stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting to be performed at or after `next_attempt_at`.
    Pending,
    /// Performed; the peer acknowledged it.
    Done { at: Timestamp },
    /// Failed for good; never retried. `reason` is the peer's reply.
    Failed { at: Timestamp, reason: String },
    /// Not performed, by decision (suppressed address, no address); never retried.
    Dropped { at: Timestamp, reason: String },
}

impl OutboxState {
    pub fn is_pending(&self) -> bool {
        matches!(self, OutboxState::Pending)
    }
}

/// An effect in the outbox, with its delivery bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub key: IdempotencyKey,
    /// Queue order, assigned by the store on enqueue: entries due at the same instant are
    /// performed in the order they were queued.
    #[serde(default)]
    pub seq: u64,
    pub effect: Effect,
    pub state: OutboxState,
    pub created_at: Timestamp,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
}

impl OutboxEntry {
    pub fn new(key: IdempotencyKey, effect: Effect, now: Timestamp) -> Self {
        Self {
            key,
            seq: 0,
            effect,
            state: OutboxState::Pending,
            created_at: now,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_parts() {
        let key = IdempotencyKey::from_parts(["sla", "00Q1", "3", "reminder"]);
        assert_eq!(key.as_str(), "sla/00Q1/3/reminder");
        assert_eq!(
            key,
            IdempotencyKey::from_parts(vec![
                String::from("sla"),
                "00Q1".into(),
                "3".into(),
                "reminder".into()
            ])
        );
    }

    #[test]
    fn effect_names_match_simulate_output() {
        let update = Effect::CrmUpdate { lead_id: LeadId::new("00Q1"), fields: Default::default() };
        assert_eq!(update.name(), "crm.update");
        assert_eq!(update.lead_id(), Some(&LeadId::new("00Q1")));
        let json = serde_json::to_value(&update).expect("serializes");
        assert_eq!(json["effect"], "crm_update");
    }
}
