//! Routing of sales-ready leads: ordered rules on the lead (country, industry, lead source),
//! each with a pool of reps taken in (weighted) round-robin order, skipping anyone inactive,
//! a queue, or at capacity (open hand-offs ≥ `capacity`); then a fallback person. Every
//! decision carries its reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::lead::LeadRecord;
use crate::person::{OrgChart, PersonId, Role};
use crate::sla::Match;

/// `[routing]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// First give the lead to the owner of its account (by account id or email domain), if
    /// they can take it.
    #[serde(default = "yes")]
    pub account_owner: bool,
    /// Who gets a lead no rule could place (a person or a queue).
    pub fallback: Option<PersonId>,
    /// Tried in order; the first whose `match` holds and whose pool has someone free wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub name: String,
    #[serde(default, rename = "match")]
    pub when: Match,
    pub pool: Vec<PersonId>,
    /// Turns per round for each pool member (default 1).
    #[serde(default)]
    pub weights: BTreeMap<PersonId, u32>,
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub owner: PersonId,
    pub reason: String,
    /// The rule's next turn, when a rule placed the lead.
    pub turn: Option<(String, u64)>,
}

fn yes() -> bool {
    true
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self { account_owner: true, fallback: None, rules: Vec::new() }
    }
}

impl RouteRule {
    /// The pool in turn order, each member repeated by its weight.
    fn turns(&self) -> Vec<&PersonId> {
        self.pool
            .iter()
            .flat_map(|p| std::iter::repeat_n(p, self.weights.get(p).copied().unwrap_or(1) as usize))
            .collect()
    }
}

impl RoutingConfig {
    /// Where `record` goes, given who can take more (`people.can_take`) and each rule's turn,
    /// without calendar signals.
    pub fn route(&self, record: &LeadRecord, people: &OrgChart) -> Option<Route> {
        self.route_with(record, people, None)
    }

    /// As [`RoutingConfig::route`], at `now` with the calendar signals in `people.calendar`:
    /// anyone away now is skipped, and after the account owner, a rep meeting someone at the
    /// lead's company domain within the look-ahead window is preferred (the earliest meeting
    /// wins).
    pub fn route_at(&self, record: &LeadRecord, people: &OrgChart, now: Timestamp) -> Option<Route> {
        self.route_with(record, people, Some(now))
    }

    fn route_with(&self, record: &LeadRecord, people: &OrgChart, now: Option<Timestamp>) -> Option<Route> {
        let free = |id: &PersonId| {
            people.can_take(id) && now.is_none_or(|n| people.calendar.away_until(id, n).is_none())
        };
        if self.account_owner {
            let domain = record.lead.email_domain();
            if let Some(owner) = people.account_owner(record.lead.account_id.as_deref(), domain.as_deref())
                && free(owner)
            {
                let by =
                    if record.lead.account_id.as_deref().is_some_and(|id| people.accounts.contains_key(id)) {
                        "account"
                    } else {
                        "company domain"
                    };
                return Some(Route {
                    owner: owner.clone(),
                    reason: format!("owner of the lead's account (by {by})"),
                    turn: None,
                });
            }
        }
        if let (Some(now), Some(domain)) = (now, record.lead.email_domain()) {
            let meeting = people
                .people()
                .filter(|p| p.role == Role::Rep && free(&p.id))
                .filter_map(|p| people.calendar.meeting_with(&p.id, &domain, now).map(|at| (at, p)))
                .min_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
            if let Some((at, rep)) = meeting {
                let tz: chrono_tz::Tz =
                    rep.time_zone.as_deref().and_then(|z| z.parse().ok()).unwrap_or(chrono_tz::Tz::UTC);
                return Some(Route {
                    owner: rep.id.clone(),
                    reason: format!("meets {domain} on {}", at.with_timezone(&tz).format("%Y-%m-%d")),
                    turn: None,
                });
            }
        }
        for rule in self.rules.iter().filter(|r| r.when.matches(record)) {
            let turns = rule.turns();
            if turns.is_empty() {
                continue;
            }
            let start = people.turns.get(&rule.name).copied().unwrap_or(0);
            for step in 0..turns.len() as u64 {
                let candidate = turns[((start + step) % turns.len() as u64) as usize];
                if free(candidate) {
                    return Some(Route {
                        owner: candidate.clone(),
                        reason: format!("rule {}: next in the pool", rule.name),
                        turn: Some((rule.name.clone(), start + step + 1)),
                    });
                }
            }
        }
        self.fallback.clone().map(|owner| Route {
            owner,
            reason: "fallback: no rule had a free rep".into(),
            turn: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lead::Lead;
    use crate::person::Person;

    fn person(id: &str, active: bool, capacity: Option<u32>) -> Person {
        Person {
            id: PersonId::new(id),
            email: format!("{id}@x.example"),
            name: id.into(),
            manager: None,
            time_zone: None,
            role: Role::Rep,
            active,
            capacity,
        }
    }

    fn record(country: &str) -> LeadRecord {
        let mut lead = Lead::new("00Q1");
        lead.country = Some(country.into());
        LeadRecord::new(lead, chrono::DateTime::UNIX_EPOCH)
    }

    fn config() -> RoutingConfig {
        RoutingConfig {
            account_owner: true,
            fallback: Some(PersonId::new("queue")),
            rules: vec![RouteRule {
                name: "emea".into(),
                when: Match { country: vec!["DE".into(), "FR".into()], ..Match::default() },
                pool: vec![PersonId::new("a"), PersonId::new("b"), PersonId::new("c")],
                weights: BTreeMap::from([(PersonId::new("c"), 2)]),
            }],
        }
    }

    /// Routes `n` leads, applying each decision's turn and load as the engine would.
    fn run(chart: &mut OrgChart, n: usize, country: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let route = config().route(&record(country), chart).expect("routed");
            if let Some((rule, turn)) = route.turn {
                chart.turns.insert(rule, turn);
            }
            *chart.load.entry(route.owner.clone()).or_default() += 1;
            *counts.entry(route.owner.0).or_default() += 1;
        }
        counts
    }

    #[test]
    fn weighted_round_robin_is_exact_over_many_leads() {
        let mut chart =
            OrgChart::new([person("a", true, None), person("b", true, None), person("c", true, None)]);
        let counts = run(&mut chart, 10_000, "DE");
        // Weights 1:1:2 over 10,000 leads: 2,500 / 2,500 / 5,000, within one.
        assert!(
            counts["a"].abs_diff(2_500) <= 1
                && counts["b"].abs_diff(2_500) <= 1
                && counts["c"].abs_diff(5_000) <= 1,
            "{counts:?}"
        );
    }

    #[test]
    fn the_account_owner_comes_first_while_they_can_take_leads() {
        let mut chart =
            OrgChart::new([person("a", true, None), person("b", true, None), person("owner", true, Some(1))]);
        chart.accounts.insert("domain:acme.example".into(), PersonId::new("owner"));
        let mut lead = record("DE");
        lead.lead.email = Some("ana@Acme.example".into());
        let route = config().route(&lead, &chart).expect("route");
        assert_eq!(
            (route.owner.as_str(), route.reason.as_str()),
            ("owner", "owner of the lead's account (by company domain)")
        );
        // At capacity: the rules take over.
        chart.load.insert(PersonId::new("owner"), 1);
        assert_eq!(config().route(&lead, &chart).map(|r| r.owner.0), Some("a".into()));
    }

    #[test]
    fn inactive_and_full_reps_are_skipped_and_the_fallback_catches_the_rest() {
        let mut chart =
            OrgChart::new([person("a", false, None), person("b", true, Some(2)), person("c", true, Some(1))]);
        let counts = run(&mut chart, 6, "FR");
        // b takes 2, c takes 1, then everyone is full: the fallback queue gets the other 3.
        assert_eq!(counts.get("a"), None);
        assert_eq!((counts["b"], counts["c"], counts["queue"]), (2, 1, 3));
        // No rule matches: the fallback.
        assert_eq!(config().route(&record("US"), &chart).map(|r| r.owner.0), Some("queue".into()));
    }

    fn signals(rep: &str, events: &[crate::connector::CalendarEvent]) -> crate::calendar::PersonSignals {
        crate::calendar::PersonSignals::from_events(events, Some(&format!("{rep}@x.example")))
    }

    fn event(start: &str, end: &str, attendee: &str, all_day: bool) -> crate::connector::CalendarEvent {
        crate::connector::CalendarEvent {
            uid: start.into(),
            start: start.parse().expect("instant"),
            end: end.parse().expect("instant"),
            all_day,
            summary: String::new(),
            attendees: vec![attendee.into()],
            busy: true,
            away: all_day,
        }
    }

    #[test]
    fn a_rep_meeting_the_leads_domain_is_preferred_and_reps_away_are_skipped() {
        let now: crate::Timestamp = "2026-11-23T09:00:00Z".parse().expect("instant");
        let mut b = person("b", true, None);
        b.time_zone = Some("America/New_York".into());
        let mut chart = OrgChart::new([person("a", true, None), b, person("c", true, None)]);
        let mut lead = record("DE");
        lead.lead.email = Some("ana@acme.example".into());
        // Without signals: round-robin.
        assert_eq!(config().route_at(&lead, &chart, now).map(|r| r.owner.0), Some("a".into()));
        chart.calendar = std::sync::Arc::new(crate::calendar::CalendarSignals {
            look_ahead: chrono::TimeDelta::weeks(2),
            taken_at: Some(now),
            people: BTreeMap::from([
                // b meets Acme on Monday 30 Nov at 00:30 UTC: Sunday 29 Nov in New York.
                (
                    PersonId::new("b"),
                    signals(
                        "b",
                        &[event("2026-11-30T00:30:00Z", "2026-11-30T01:00:00Z", "bo@acme.example", false)],
                    ),
                ),
                // a is away all day today.
                (
                    PersonId::new("a"),
                    signals(
                        "a",
                        &[event("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z", "a@x.example", true)],
                    ),
                ),
            ]),
        });
        let route = config().route_at(&lead, &chart, now).expect("route");
        assert_eq!(
            (route.owner.as_str(), route.reason.as_str(), route.turn),
            ("b", "meets acme.example on 2026-11-29", None)
        );
        // Another company: the rules, skipping a (away) for b.
        lead.lead.email = Some("eve@other.example".into());
        let route = config().route_at(&lead, &chart, now).expect("route");
        assert_eq!((route.owner.as_str(), route.turn), ("b", Some(("emea".into(), 2))));
        // Past the look-ahead, or without `now`, the meeting does not count.
        lead.lead.email = Some("ana@acme.example".into());
        let later = "2026-12-01T00:00:00Z".parse().expect("instant");
        assert_eq!(config().route_at(&lead, &chart, later).map(|r| r.owner.0), Some("a".into()));
        assert_eq!(config().route(&lead, &chart).map(|r| r.owner.0), Some("a".into()));
        // The account owner comes first, unless away.
        chart.accounts.insert("domain:acme.example".into(), PersonId::new("a"));
        assert_eq!(config().route_at(&lead, &chart, now).map(|r| r.owner.0), Some("b".into()));
        assert_eq!(
            config().route_at(&lead, &chart, later).map(|r| r.reason),
            Some("owner of the lead's account (by company domain)".into())
        );
    }
}
