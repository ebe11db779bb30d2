//! Effects: what a decision asks the world to do (send an email, write to the CRM). Effects are
//! recorded in the outbox before they are performed, keyed by a deterministic idempotency key,
//! so a crash between "decided" and "done" neither loses nor repeats them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::ids::{LeadId, PersonId};

/// A deterministic key: the same decision taken twice yields the same key, so the second
/// outbox insert is a no-op. For an SLA step it is built from (lead, hand-off, step); it also
/// seeds the email's `Message-ID`.
///
/// Its text is its parts joined with `/`, the form stores and `Message-ID`s have always held.
/// A part can neither be empty nor contain `/` ([`KeyError`]), so two different part lists
/// never make the same key. Stored keys are read back as they were written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

/// Why parts cannot make an [`IdempotencyKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("an idempotency key needs at least one part")]
    NoParts,
    #[error("part {index} of an idempotency key is empty")]
    EmptyPart { index: usize },
    #[error("part {index} of an idempotency key ({part:?}) contains the separator `/`")]
    Separator { index: usize, part: String },
}

impl IdempotencyKey {
    /// The separator between parts.
    pub const SEPARATOR: char = '/';

    /// Joins parts with `/`; an empty part, a part containing `/`, or no part at all is
    /// refused.
    pub fn from_parts<I, S>(parts: I) -> Result<Self, KeyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut key = String::new();
        for (index, part) in parts.into_iter().enumerate() {
            let part = part.as_ref();
            if part.is_empty() {
                return Err(KeyError::EmptyPart { index });
            }
            if part.contains(Self::SEPARATOR) {
                return Err(KeyError::Separator { index, part: part.to_owned() });
            }
            if index > 0 {
                key.push(Self::SEPARATOR);
            }
            key.push_str(part);
        }
        if key.is_empty() {
            return Err(KeyError::NoParts);
        }
        Ok(Self(key))
    }

    /// A key from its text (`a/b/c`), as the parts it joins: each part is checked as
    /// [`from_parts`](Self::from_parts) checks it.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        Self::from_parts(text.split(Self::SEPARATOR))
    }

    /// This key with `parts` appended (an SLA step's action keys extend the step's key).
    pub fn child<I, S>(&self, parts: I) -> Result<Self, KeyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let own: Vec<String> = self.0.split(Self::SEPARATOR).map(str::to_owned).collect();
        let more: Vec<String> = parts.into_iter().map(|p| p.as_ref().to_owned()).collect();
        Self::from_parts(own.into_iter().chain(more))
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
        /// The one address this copy is delivered to (the envelope's `RCPT TO`), when a
        /// message goes out as one copy per recipient (SLA mail whose links are bound to
        /// their recipient); `to` and `cc` are then the headers every copy shows. `None`:
        /// delivered to every address in `to` and `cc`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deliver_to: Option<String>,
    },
    /// Update fields of a lead in the CRM (status, owner, opt-out).
    CrmUpdate { lead_id: LeadId, fields: serde_json::Map<String, serde_json::Value> },
    /// Create a follow-up task in the CRM.
    CrmTask { lead_id: LeadId, owner_id: PersonId, subject: String, due: Option<Timestamp> },
    /// Book a hold in a person's calendar (a follow-up call at hand-off).
    CalendarHold { person: PersonId, lead_id: LeadId, start: Timestamp, end: Timestamp, summary: String },
    /// Post a chat message (Slack, Teams) to one person: the same step, variables and
    /// one-click answers as the email it stands beside or in for.
    Chat {
        /// What the message is, as for email: `sla.alert`, `sla.manager`, …
        kind: String,
        service: ChatService,
        /// The person's email address: Slack finds the user by it; the answers are bound to it.
        to: String,
        person: Option<PersonId>,
        lead_id: Option<LeadId>,
        /// The template variables the email of this step has (lead, hand-off, links).
        vars: serde_json::Value,
        /// The email this message stands in for, sent when the message cannot be posted (the
        /// user is unknown or deactivated, or the chat service stays down past its wait).
        /// `None` when the step mails the person anyway.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback: Option<ChatFallback>,
    },
}

/// A chat service a message can be posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatService {
    Slack,
    Teams,
}

impl ChatService {
    pub const ALL: [ChatService; 2] = [ChatService::Slack, ChatService::Teams];

    pub fn as_str(self) -> &'static str {
        match self {
            ChatService::Slack => "slack",
            ChatService::Teams => "teams",
        }
    }
}

impl fmt::Display for ChatService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The email a chat message falls back to: queued under `key` (the key the step's email copy
/// for this person would have had, so it is sent once and keeps its `Message-ID`), with the
/// message's variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatFallback {
    pub key: IdempotencyKey,
    pub template: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
}

impl Effect {
    /// The email a chat message falls back to, with its key; `None` for other effects and for
    /// messages without a fallback.
    pub fn chat_fallback(&self) -> Option<(IdempotencyKey, Effect)> {
        let Effect::Chat { kind, to, lead_id, vars, fallback: Some(fallback), .. } = self else {
            return None;
        };
        Some((
            fallback.key.clone(),
            Effect::Email {
                kind: kind.clone(),
                template: fallback.template.clone(),
                to: fallback.to.clone(),
                cc: fallback.cc.clone(),
                lead_id: lead_id.clone(),
                vars: vars.clone(),
                deliver_to: Some(to.clone()),
            },
        ))
    }
}

/// Which relay performs an effect; each has its own ready queue, so a CRM outage does not
/// hold up email and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Crm,
    Calendar,
    /// Chat messages (Slack, Teams): one queue for every chat service.
    Chat,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Email, Channel::Crm, Channel::Calendar, Channel::Chat];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Crm => "crm",
            Channel::Calendar => "calendar",
            Channel::Chat => "chat",
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
            Effect::Chat { .. } => Channel::Chat,
        }
    }

    /// The stable name of the variant, for logs, metrics and `simulate` output.
    pub fn name(&self) -> &'static str {
        match self {
            Effect::Email { .. } => "email",
            Effect::CrmUpdate { .. } => "crm.update",
            Effect::CrmTask { .. } => "crm.task",
            Effect::CalendarHold { .. } => "calendar.hold",
            Effect::Chat { .. } => "chat",
        }
    }

    pub fn lead_id(&self) -> Option<&LeadId> {
        match self {
            Effect::Email { lead_id, .. } | Effect::Chat { lead_id, .. } => lead_id.as_ref(),
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
    /// Not performed, by decision (suppressed address, no address, a surge rejected by an
    /// operator); never retried.
    Dropped { at: Timestamp, reason: String },
    /// Kept back by the blast-radius guard (a pause, or a surge waiting for approval): not in
    /// the ready queue until it is released to `Pending` (`leadloop resume`/`approve`).
    Held { since: Timestamp, reason: crate::guard::HoldReason },
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
    /// When the guard last released it from a hold: its age (nurture mail is given up past
    /// `nurture_max_age`) counts from here, so a long pause loses nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Timestamp>,
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
            released_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_parts() {
        let key = IdempotencyKey::from_parts(["sla", "00Q1", "3", "reminder"]).expect("valid parts");
        assert_eq!(key.as_str(), "sla/00Q1/3/reminder");
        assert_eq!(
            Ok(key.clone()),
            IdempotencyKey::from_parts(vec![
                String::from("sla"),
                "00Q1".into(),
                "3".into(),
                "reminder".into()
            ])
        );
        assert_eq!(IdempotencyKey::parse("sla/00Q1/3/reminder"), Ok(key.clone()));
        assert_eq!(
            key.child(["action", "0"]).map(|k| k.to_string()),
            Ok("sla/00Q1/3/reminder/action/0".into())
        );
        // The stored form is the text itself, so stores and Message-IDs keep their keys.
        assert_eq!(serde_json::to_value(&key).expect("serializes"), serde_json::json!("sla/00Q1/3/reminder"));
        let back: IdempotencyKey =
            serde_json::from_value(serde_json::json!("sla/00Q1/3/reminder")).expect("reads");
        assert_eq!(back, key);
    }

    #[test]
    fn keys_refuse_separators_and_empty_parts() {
        // Without the check, lead `a/b` step `c` and lead `a` step `b/c` would share a key.
        assert_eq!(
            IdempotencyKey::from_parts(["sla", "a/b", "1", "c"]),
            Err(KeyError::Separator { index: 1, part: "a/b".into() })
        );
        assert_eq!(IdempotencyKey::from_parts(["sla", "", "1"]), Err(KeyError::EmptyPart { index: 1 }));
        assert_eq!(IdempotencyKey::from_parts(Vec::<String>::new()), Err(KeyError::NoParts));
        assert_eq!(IdempotencyKey::parse("sla//1"), Err(KeyError::EmptyPart { index: 1 }));
        assert_eq!(IdempotencyKey::parse(""), Err(KeyError::EmptyPart { index: 0 }));
        let key = IdempotencyKey::parse("sla/00Q1").expect("valid");
        assert!(key.child(["x/y"]).is_err());
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
