//! Routing of sales-ready leads: ordered rules on the lead (country, industry, lead source),
//! each with a pool of reps taken in (weighted) round-robin order, skipping anyone inactive,
//! a queue, or at capacity (open hand-offs ≥ `capacity`); then a fallback person. Every
//! decision carries its reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lead::LeadRecord;
use crate::person::{OrgChart, PersonId};
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
    /// Where `record` goes, given who can take more (`people.can_take`) and each rule's turn.
    pub fn route(&self, record: &LeadRecord, people: &OrgChart) -> Option<Route> {
        if self.account_owner {
            let domain = record.lead.email_domain();
            if let Some(owner) = people.account_owner(record.lead.account_id.as_deref(), domain.as_deref())
                && people.can_take(owner)
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
        for rule in self.rules.iter().filter(|r| r.when.matches(record)) {
            let turns = rule.turns();
            if turns.is_empty() {
                continue;
            }
            let start = people.turns.get(&rule.name).copied().unwrap_or(0);
            for step in 0..turns.len() as u64 {
                let candidate = turns[((start + step) % turns.len() as u64) as usize];
                if people.can_take(candidate) {
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
    use crate::person::{Person, Role};

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
}
