//! The closed-loop SLA on every hand-off, as pure decisions.
//!
//! A hand-off starts when a lead is owned by an active person (not a queue) and its CRM status
//! is one of the open statuses (default `Open - Not Contacted`), whether leadloop routed it or
//! someone assigned it in the CRM. Its policy is a ladder of steps, each `after` a duration
//! from the hand-off (counted in business hours in the rep's time zone when the policy says
//! so). The default ladder is the seed's: alert the rep at once; remind the rep at 24 h;
//! remind again with the manager copied at 48 h; remind rep and manager with an executive
//! copied at 72 h.
//!
//! The ladder stops when the status changes away from the hand-off status (satisfied), when a
//! completed task is logged (if the policy says so), when the lead is deleted, or when the
//! owner changes (which ends this hand-off and starts the next for the new owner). Every step's
//! idempotency key is `sla/LEAD/HANDOFF/STEP`, so each is sent once.
//!
//! The configuration (policies, steps, digests) is in `config.rs`, the ladder (hand-offs
//! starting and ending, steps falling due, catch-up, answers) in `ladder.rs`, the digests and
//! weekly summaries in `reports.rs`; local time and business hours are `crate::local_time`.

use std::time::Duration;

use chrono::TimeDelta;
use chrono_tz::Tz;

use crate::Timestamp;
use crate::effect::{IdempotencyKey, KeyError};
use crate::history::Actor;
use crate::lead::LeadRecord;
use crate::person::{OrgChart, Person, PersonId};
use crate::timer::TimerKey;

mod config;
mod ladder;
mod reports;

pub use crate::handoff::{ActionOutcome, Handoff, HandoffOutcome, SalesAction};
pub use crate::local_time::{BusinessHours, add_business_time, next_local};
pub use config::{
    CatchUp, Digest, DigestRole, Match, Recipient, SatisfiedBy, SlaConfig, SlaPolicy, Step, StepAction,
    WeeklySummary, WhenAway, call_and_email, default_policy, email_only, status_only,
};
pub use reports::report_item_lead;

/// Makes the signed, expiring URLs of one-click links. The binary implements it (it holds the
/// key and the public URL); the ladder only asks for links. Each link is bound to the
/// `recipient` address it is mailed to, so an answer through it is recorded as theirs.
pub trait LinkMaker: Send + Sync + std::fmt::Debug {
    fn link(
        &self,
        action: SalesAction,
        lead: &crate::LeadId,
        handoff: u32,
        recipient: &str,
        now: Timestamp,
    ) -> String;
}

/// The idempotency key of the copy of an SLA email that goes to `recipient`: the step's own
/// key for the first `to` address (the rep, as before copies existed), `STEPKEY/to/HASH` for
/// the others, HASH a stable 64-bit FNV-1a of the lowercased address in hex (no address in
/// keys, logs or `Message-ID`s).
pub fn copy_key(step: &IdempotencyKey, recipient: &str, first: bool) -> Result<IdempotencyKey, KeyError> {
    if first {
        return Ok(step.clone());
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in recipient.trim().to_lowercase().bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    step.child(["to", &format!("{hash:016x}")])
}

/// The key of the chat message of a step's copy: the copy's key (see [`copy_key`]) and the
/// service, `sla/LEAD/HANDOFF/STEP/slack` for the rep's.
pub fn chat_key(
    copy: &IdempotencyKey,
    service: crate::effect::ChatService,
) -> Result<IdempotencyKey, KeyError> {
    copy.child([service.as_str()])
}

/// Whether `key` names a chat message of a step (made by [`chat_key`]).
pub fn is_chat_key(key: &IdempotencyKey) -> bool {
    let last = key.as_str().rsplit(IdempotencyKey::SEPARATOR).next();
    key.as_str().starts_with("sla/")
        && crate::effect::ChatService::ALL.iter().any(|s| Some(s.as_str()) == last)
}

/// Whether `key` names a further recipient's copy of an SLA email (made by [`copy_key`] for
/// any but the first `to` address), so one step counts once per hand-off, not once per copy.
/// A chat message of a copy counts as that copy.
pub fn is_copy_key(key: &IdempotencyKey) -> bool {
    let text = key.as_str();
    let text = if is_chat_key(key) {
        text.rsplit_once(IdempotencyKey::SEPARATOR).map_or(text, |(k, _)| k)
    } else {
        text
    };
    let mut parts = text.rsplit(IdempotencyKey::SEPARATOR);
    let (hash, to) = (parts.next(), parts.next());
    to == Some("to") && hash.is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The SLA policy engine.
#[derive(Debug, Clone)]
pub struct SlaRules {
    pub config: SlaConfig,
    /// `config.policies()`, resolved once.
    policies: Vec<SlaPolicy>,
    links: Option<std::sync::Arc<dyn LinkMaker>>,
    /// Book a follow-up hold this long in the rep's calendar at hand-off.
    hold: Option<Duration>,
    /// The scoring rules, for the top score reasons (`lead.score_reasons`) in the ladder's mail.
    scoring: Option<std::sync::Arc<crate::scoring::ScoringConfig>>,
    /// Which channels reach whom (`[chat]`); email for everyone by default.
    reach: crate::person::Reachability,
}

fn timer_key(lead: &str) -> TimerKey {
    TimerKey::new(format!("sla/{lead}"))
}

/// `sla/LEAD/HANDOFF/STEP`.
pub fn step_key(lead: &str, handoff: u32, step: &str) -> Result<IdempotencyKey, KeyError> {
    IdempotencyKey::from_parts(["sla", lead, &handoff.to_string(), step])
}

fn actor() -> Actor {
    Actor::Rule { name: "sla".into() }
}

fn human_duration(d: TimeDelta) -> String {
    let plural = |n: i64, unit: &str| if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") };
    match d.num_minutes().max(0) {
        m if m < 60 => plural(m, "minute"),
        m if m < 48 * 60 => plural(m / 60, "hour"),
        m => plural(m / (24 * 60), "day"),
    }
}

impl SlaRules {
    pub fn new(config: SlaConfig) -> Self {
        let policies = config.policies();
        Self { config, policies, links: None, hold: None, scoring: None, reach: Default::default() }
    }

    /// Reaches people on the chat channels they are reachable on, where a step names them.
    pub fn with_reach(mut self, reach: crate::person::Reachability) -> Self {
        self.reach = reach;
        self
    }

    /// Lists the lead's top score reasons in the ladder's emails (`lead.score_reasons`).
    pub fn with_scoring(mut self, scoring: crate::scoring::ScoringConfig) -> Self {
        self.scoring = Some(std::sync::Arc::new(scoring));
        self
    }

    /// At hand-off, plans a "Call <lead>" hold of `length` in the rep's next free slot in
    /// business hours (the policy's, else 09:00–17:00 Monday to Friday) when the rep's
    /// calendar is known; the alert mentions it.
    pub fn with_hold(mut self, length: Duration) -> Self {
        self.hold = Some(length);
        self
    }

    /// Puts one-click Accept / Recycle / Disqualify links in the ladder's emails.
    pub fn with_links(mut self, links: std::sync::Arc<dyn LinkMaker>) -> Self {
        self.links = Some(links);
        self
    }

    pub(super) fn policy_for(&self, record: &LeadRecord) -> Option<&SlaPolicy> {
        self.policies.iter().find(|p| p.when.matches(record))
    }

    /// The policy a hand-off runs under.
    pub fn policy_named(&self, name: &str) -> Option<&SlaPolicy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// The executive copied on the rep's escalations: `sla.executive`, else the top of the
    /// rep's manager chain; inactive people do not count.
    pub(super) fn executive<'a>(&self, owner: &PersonId, people: &'a OrgChart) -> Option<&'a Person> {
        match &self.config.executive {
            Some(id) => people.get(id),
            None => people.executive_of(owner),
        }
        .filter(|p| p.active)
    }

    pub(super) fn tz_of(person: Option<&Person>) -> Tz {
        person.and_then(|p| p.time_zone.as_deref()).and_then(|z| z.parse().ok()).unwrap_or(Tz::UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_key_is_told_from_the_step_key() {
        let step = IdempotencyKey::parse("sla/00Q1/1/manager").expect("valid key");
        let rep = copy_key(&step, "rep@corp.example", true).expect("key");
        let manager = copy_key(&step, "mgr@corp.example", false).expect("key");
        assert!(!is_copy_key(&rep));
        assert!(is_copy_key(&manager), "{manager}");
        assert!(!is_copy_key(&IdempotencyKey::parse("nurture/00Q1/to/x").expect("valid key")));
    }
}
