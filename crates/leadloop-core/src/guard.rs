//! The blast-radius guard, pure: the switches an operator or the guard itself sets (pauses, a
//! surge hold), what they decide for one outbox entry, and the sliding windows that trip the
//! automatic ones. The engine keeps a [`GuardState`] in the store and performs what these
//! functions decide (hold an entry, release it, pause nurture, alert the ops address).
//!
//! A held entry stays in the outbox (`OutboxState::Held`) until it is released (resume,
//! approve) or, for a surge, rejected by an explicit decision: nothing is lost.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::actor::Actor;
use crate::effect::Effect;

/// What a pause stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseScope {
    /// All email (internal SLA mail too, unless it is exempted by config).
    Email,
    /// Nurture email only (what the bounce guard pauses).
    Nurture,
    /// CRM write-back.
    Crm,
}

impl PauseScope {
    pub const ALL: [PauseScope; 3] = [PauseScope::Email, PauseScope::Nurture, PauseScope::Crm];

    pub fn as_str(self) -> &'static str {
        match self {
            PauseScope::Email => "email",
            PauseScope::Nurture => "nurture",
            PauseScope::Crm => "crm",
        }
    }
}

impl fmt::Display for PauseScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pause in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    pub since: Timestamp,
    pub by: Actor,
    pub reason: String,
}

/// A surge hold in force: nurture email queued since `since` waits for `leadloop approve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Surge {
    /// When the threshold was passed.
    pub tripped_at: Timestamp,
    /// Nurture email queued at or after this instant is held (the start of the hour in
    /// which the threshold was passed, so the whole surge waits, not only its tail).
    pub since: Timestamp,
    /// How many were queued in that hour when it tripped.
    pub queued: u64,
}

/// The guard's switches, as the store keeps them (one record).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    #[serde(default)]
    pub email: Option<Pause>,
    #[serde(default)]
    pub nurture: Option<Pause>,
    #[serde(default)]
    pub crm: Option<Pause>,
    #[serde(default)]
    pub surge: Option<Surge>,
    /// The number of the last guard event logged (the log's keys).
    #[serde(default)]
    pub events: u64,
}

impl GuardState {
    pub fn pause(&self, scope: PauseScope) -> Option<&Pause> {
        match scope {
            PauseScope::Email => self.email.as_ref(),
            PauseScope::Nurture => self.nurture.as_ref(),
            PauseScope::Crm => self.crm.as_ref(),
        }
    }

    pub fn pause_mut(&mut self, scope: PauseScope) -> &mut Option<Pause> {
        match scope {
            PauseScope::Email => &mut self.email,
            PauseScope::Nurture => &mut self.nurture,
            PauseScope::Crm => &mut self.crm,
        }
    }
}

/// Why an entry is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// A pause (email, nurture or CRM); released by `leadloop resume`.
    Paused,
    /// A surge of nurture email; released by `leadloop approve`.
    Surge,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::Paused => "paused",
            HoldReason::Surge => "surge",
        }
    }
}

/// The guard's settings (`[guard]` in the config file).
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    /// Internal SLA mail (to reps, managers, executives: kinds `sla.*`, and the guard's own
    /// alert) still goes while email is paused.
    pub exempt_internal: bool,
    /// Hard bounces (and policy refusals) of lead mail within `bounce_window` that pause
    /// nurture email; 0 turns the automatic pause off.
    pub max_bounces: u32,
    pub bounce_window: Duration,
    /// Nurture email queued within an hour beyond which it waits for approval; 0 is no limit.
    pub surge_per_hour: u64,
    /// Where the guard's alerts go; none: logged and counted only.
    pub ops_address: Option<String>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            exempt_internal: true,
            max_bounces: 20,
            bounce_window: Duration::from_secs(3600),
            surge_per_hour: 5000,
            ops_address: None,
        }
    }
}

/// The kind of the guard's own alert email (internal, so exempt like SLA mail).
pub const ALERT_KIND: &str = "guard.alert";

/// Whether an email of `kind` goes to internal people only (the SLA ladder, digests and
/// summaries, the guard's alerts), as opposed to leads.
pub fn is_internal(kind: &str) -> bool {
    kind.starts_with("sla.") || kind == ALERT_KIND
}

/// What the guard decides for one ready entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Go,
    Hold(HoldReason),
}

/// Decides whether a ready entry may be performed now, or is held, and why.
pub fn screen(effect: &Effect, queued_at: Timestamp, state: &GuardState, config: &GuardConfig) -> Verdict {
    match effect {
        Effect::Email { kind, .. } => {
            let internal = is_internal(kind);
            if state.email.is_some() && !(internal && config.exempt_internal) {
                return Verdict::Hold(HoldReason::Paused);
            }
            if kind == "nurture" {
                if state.nurture.is_some() {
                    return Verdict::Hold(HoldReason::Paused);
                }
                if state.surge.as_ref().is_some_and(|s| queued_at >= s.since) {
                    return Verdict::Hold(HoldReason::Surge);
                }
            }
            Verdict::Go
        }
        Effect::CrmUpdate { .. } | Effect::CrmTask { .. } => {
            if state.crm.is_some() {
                Verdict::Hold(HoldReason::Paused)
            } else {
                Verdict::Go
            }
        }
        // Calendar holds change nothing outside the company. Chat messages go only to
        // internal people (reps, managers, executives) through the company's own workspace:
        // they cannot hurt the sending domain, so no pause holds them.
        Effect::CalendarHold { .. } | Effect::Chat { .. } => Verdict::Go,
    }
}

/// Events counted in a sliding window of the injected clock's time.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// (instant, how many), oldest first.
    events: VecDeque<(Timestamp, u64)>,
    total: u64,
}

impl Window {
    /// Records `n` events at `now` and returns how many fell within `span` up to `now`.
    pub fn record(&mut self, now: Timestamp, n: u64, span: Duration) -> u64 {
        self.forget(now, span);
        if n > 0 {
            self.events.push_back((now, n));
            self.total += n;
        }
        self.total
    }

    /// The count within `span` up to `now`.
    pub fn count(&mut self, now: Timestamp, span: Duration) -> u64 {
        self.forget(now, span);
        self.total
    }

    /// The earliest instant still counted, if any.
    pub fn oldest(&self) -> Option<Timestamp> {
        self.events.front().map(|(at, _)| *at)
    }

    pub fn clear(&mut self) {
        self.events.clear();
        self.total = 0;
    }

    fn forget(&mut self, now: Timestamp, span: Duration) {
        let start = now - TimeDelta::from_std(span).unwrap_or(TimeDelta::MAX);
        while let Some((at, n)) = self.events.front().copied() {
            if at > start {
                break;
            }
            self.events.pop_front();
            self.total -= n;
        }
    }
}

/// The bounce guard: whether `count` bounces within the window trip the automatic pause.
pub fn bounces_trip(count: u64, config: &GuardConfig) -> bool {
    config.max_bounces > 0 && count >= u64::from(config.max_bounces)
}

/// The surge guard: whether `count` nurture emails queued within an hour pass the limit.
pub fn surge_trips(count: u64, config: &GuardConfig) -> bool {
    config.surge_per_hour > 0 && count > config.surge_per_hour
}

/// One entry of the guard's log (what `leadloop pause --status` shows, and the history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GuardEvent {
    Paused { at: Timestamp, scope: PauseScope, by: Actor, reason: String },
    Resumed { at: Timestamp, scope: PauseScope, by: Actor, released: u64 },
    SurgeHeld { at: Timestamp, since: Timestamp, queued: u64, limit: u64 },
    Approved { at: Timestamp, by: Actor, released: u64 },
    Rejected { at: Timestamp, by: Actor, dropped: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("instant")
    }

    fn email(kind: &str) -> Effect {
        Effect::Email {
            kind: kind.into(),
            template: "t".into(),
            to: vec!["a@x.example".into()],
            cc: vec![],
            lead_id: None,
            vars: serde_json::Value::Null,
            deliver_to: None,
        }
    }

    #[test]
    fn pauses_hold_what_they_name_and_internal_mail_may_go() {
        let at = t("2026-03-02T14:00:00Z");
        let pause = Some(Pause { since: at, by: Actor::System, reason: "r".into() });
        let config = GuardConfig::default();
        let open = GuardState::default();
        assert_eq!(screen(&email("nurture"), at, &open, &config), Verdict::Go);
        let email_paused = GuardState { email: pause.clone(), ..GuardState::default() };
        assert_eq!(screen(&email("nurture"), at, &email_paused, &config), Verdict::Hold(HoldReason::Paused));
        assert_eq!(screen(&email("sla.alert"), at, &email_paused, &config), Verdict::Go);
        let strict = GuardConfig { exempt_internal: false, ..config.clone() };
        assert_eq!(
            screen(&email("sla.alert"), at, &email_paused, &strict),
            Verdict::Hold(HoldReason::Paused)
        );
        let nurture_paused = GuardState { nurture: pause.clone(), ..GuardState::default() };
        assert_eq!(
            screen(&email("nurture"), at, &nurture_paused, &config),
            Verdict::Hold(HoldReason::Paused)
        );
        assert_eq!(screen(&email("sla.reminder"), at, &nurture_paused, &strict), Verdict::Go);
        let crm = Effect::CrmTask {
            lead_id: crate::LeadId::new("00Q1"),
            owner_id: crate::PersonId::new("005A"),
            subject: "s".into(),
            due: None,
        };
        let crm_paused = GuardState { crm: pause, ..GuardState::default() };
        assert_eq!(screen(&crm, at, &crm_paused, &config), Verdict::Hold(HoldReason::Paused));
        assert_eq!(screen(&crm, at, &email_paused, &config), Verdict::Go);
    }

    #[test]
    fn a_surge_holds_nurture_queued_since_its_hour_began() {
        let since = t("2026-03-02T14:00:00Z");
        let state = GuardState {
            surge: Some(Surge { tripped_at: since + TimeDelta::minutes(10), since, queued: 6 }),
            ..GuardState::default()
        };
        let config = GuardConfig::default();
        assert_eq!(screen(&email("nurture"), since - TimeDelta::seconds(1), &state, &config), Verdict::Go);
        assert_eq!(screen(&email("nurture"), since, &state, &config), Verdict::Hold(HoldReason::Surge));
        assert_eq!(screen(&email("sla.alert"), since, &state, &config), Verdict::Go);
    }

    #[test]
    fn windows_count_what_is_recent_and_thresholds_trip_at_their_edge() {
        let t0 = t("2026-03-02T14:00:00Z");
        let hour = Duration::from_secs(3600);
        let mut window = Window::default();
        assert_eq!(window.record(t0, 2, hour), 2);
        assert_eq!(window.record(t0 + TimeDelta::minutes(30), 3, hour), 5);
        // The first two are an hour old: out.
        assert_eq!(window.count(t0 + TimeDelta::minutes(60), hour), 3);
        assert_eq!(window.count(t0 + TimeDelta::minutes(90), hour), 0);
        let config = GuardConfig { max_bounces: 5, surge_per_hour: 100, ..GuardConfig::default() };
        assert!(!bounces_trip(4, &config));
        assert!(bounces_trip(5, &config));
        assert!(!surge_trips(100, &config));
        assert!(surge_trips(101, &config));
        let off = GuardConfig { max_bounces: 0, surge_per_hour: 0, ..config };
        assert!(!bounces_trip(1000, &off));
        assert!(!surge_trips(1_000_000, &off));
    }
}
