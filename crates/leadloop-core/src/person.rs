//! People leadloop routes to and escalates to: reps, their managers, executives. The org chart
//! comes from the CRM (`User.ManagerId`) or from config.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use crate::ids::PersonId;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Rep,
    Manager,
    Executive,
    /// A CRM queue: it can own leads but is not a person, so no SLA runs against it.
    Queue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Person {
    pub id: PersonId,
    pub email: String,
    pub name: String,
    pub manager: Option<PersonId>,
    /// IANA time zone name; business hours are counted in it.
    pub time_zone: Option<String>,
    #[serde(default)]
    pub role: Role,
    pub active: bool,
    /// The most open hand-offs routing gives this person; `None` is unlimited.
    pub capacity: Option<u32>,
}

/// A way to reach a person: by email, or in a chat service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    Email,
    Slack,
    Teams,
}

impl Reach {
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Email => "email",
            Reach::Slack => "slack",
            Reach::Teams => "teams",
        }
    }

    /// The chat service this is, `None` for email.
    pub fn chat(self) -> Option<crate::effect::ChatService> {
        match self {
            Reach::Email => None,
            Reach::Slack => Some(crate::effect::ChatService::Slack),
            Reach::Teams => Some(crate::effect::ChatService::Teams),
        }
    }
}

/// Which channels reach whom: every person by `default` (email when empty), a listed person
/// by their own list. A step's channels are narrowed to the recipient's; a recipient no
/// channel of the step reaches gets email (never a silent skip).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reachability {
    pub default: Vec<Reach>,
    pub people: BTreeMap<PersonId, Vec<Reach>>,
}

impl Reachability {
    /// The channels that reach `person`.
    pub fn of(&self, person: &PersonId) -> &[Reach] {
        let list = self.people.get(person).unwrap_or(&self.default);
        if list.is_empty() { &[Reach::Email] } else { list }
    }

    /// The channels a step listing `step` uses for `person` (`None`: an address that is no
    /// known person, reached by email only), in the step's order; email when none is left.
    pub fn narrow(&self, step: &[Reach], person: Option<&PersonId>) -> Vec<Reach> {
        let reach = person.map_or(&[Reach::Email][..], |p| self.of(p));
        let mut out: Vec<Reach> = Vec::new();
        for channel in step {
            if reach.contains(channel) && !out.contains(channel) {
                out.push(*channel);
            }
        }
        if out.is_empty() {
            out.push(Reach::Email);
        }
        out
    }
}

/// What can be wrong with the org chart; `validate` reports these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgChartError {
    #[error("{person} names manager {manager}, who is not known")]
    UnknownManager { person: PersonId, manager: PersonId },
    #[error("the manager chain of {person} loops back on itself")]
    Cycle { person: PersonId },
    #[error("{person} is their own manager")]
    SelfManaged { person: PersonId },
}

/// People indexed by id, with the manager chain.
#[derive(Debug, Clone, Default)]
pub struct OrgChart {
    people: BTreeMap<PersonId, Person>,
    /// Open hand-offs per person, kept by the engine: routing respects `capacity` with it.
    pub load: BTreeMap<PersonId, u32>,
    /// Round-robin turns per routing rule, kept by the engine.
    pub turns: BTreeMap<String, u64>,
    /// Account owners by account id and by company domain (`domain:acme.example`), kept by
    /// the engine from the CRM's accounts.
    pub accounts: BTreeMap<String, PersonId>,
    /// What people's calendars say (meetings, time away, busy time), kept by the engine from
    /// the calendar poller; empty without a calendar.
    pub calendar: std::sync::Arc<crate::calendar::CalendarSignals>,
}

impl OrgChart {
    pub fn new(people: impl IntoIterator<Item = Person>) -> Self {
        Self {
            people: people.into_iter().map(|p| (p.id.clone(), p)).collect(),
            load: BTreeMap::new(),
            turns: BTreeMap::new(),
            accounts: BTreeMap::new(),
            calendar: std::sync::Arc::default(),
        }
    }

    pub fn get(&self, id: &PersonId) -> Option<&Person> {
        self.people.get(id)
    }

    pub fn people(&self) -> impl Iterator<Item = &Person> {
        self.people.values()
    }

    /// Whether routing may give `id` one more lead: active, a person (not a queue), and under
    /// capacity.
    pub fn can_take(&self, id: &PersonId) -> bool {
        self.people.get(id).is_some_and(|p| {
            p.active
                && p.role != Role::Queue
                && p.capacity.is_none_or(|cap| self.load.get(id).copied().unwrap_or(0) < cap)
        })
    }

    /// The owner of the lead's account: by account id, else by the email's domain.
    pub fn account_owner(&self, account_id: Option<&str>, email_domain: Option<&str>) -> Option<&PersonId> {
        account_id
            .and_then(|id| self.accounts.get(id))
            .or_else(|| email_domain.and_then(|d| self.accounts.get(&format!("domain:{d}"))))
    }

    pub fn manager_of(&self, id: &PersonId) -> Option<&Person> {
        let manager = self.people.get(id)?.manager.as_ref()?;
        self.people.get(manager)
    }

    /// The top of the person's manager chain, excluding the person and their direct manager
    /// (an escalation to "the executive" that lands on the manager again helps no one).
    pub fn executive_of(&self, id: &PersonId) -> Option<&Person> {
        let manager = self.manager_of(id)?;
        let mut top = manager;
        let mut seen = BTreeSet::from([id.clone(), manager.id.clone()]);
        while let Some(next) = top.manager.as_ref().and_then(|m| self.people.get(m)) {
            if !seen.insert(next.id.clone()) {
                return None;
            }
            top = next;
        }
        (top.id != manager.id).then_some(top)
    }

    /// Every problem with the chart, in id order.
    pub fn check(&self) -> Vec<OrgChartError> {
        let mut errors = Vec::new();
        for person in self.people.values() {
            let Some(manager) = &person.manager else {
                continue;
            };
            if manager == &person.id {
                errors.push(OrgChartError::SelfManaged { person: person.id.clone() });
                continue;
            }
            if !self.people.contains_key(manager) {
                errors.push(OrgChartError::UnknownManager {
                    person: person.id.clone(),
                    manager: manager.clone(),
                });
                continue;
            }
            let mut seen = BTreeSet::from([person.id.clone()]);
            let mut cursor = self.people.get(manager);
            while let Some(p) = cursor {
                if !seen.insert(p.id.clone()) {
                    errors.push(OrgChartError::Cycle { person: person.id.clone() });
                    break;
                }
                cursor = p.manager.as_ref().and_then(|m| self.people.get(m));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: &str, manager: Option<&str>) -> Person {
        Person {
            id: PersonId::new(id),
            email: format!("{id}@x.example"),
            name: id.to_owned(),
            manager: manager.map(PersonId::new),
            time_zone: None,
            role: Role::Rep,
            active: true,
            capacity: None,
        }
    }

    #[test]
    fn manager_and_executive_follow_the_chain() {
        let chart = OrgChart::new([
            person("rep", Some("mgr")),
            person("mgr", Some("vp")),
            person("vp", Some("ceo")),
            person("ceo", None),
        ]);
        assert_eq!(chart.manager_of(&PersonId::new("rep")).map(|p| p.id.as_str()), Some("mgr"));
        assert_eq!(chart.executive_of(&PersonId::new("rep")).map(|p| p.id.as_str()), Some("ceo"));
        // The manager's executive is above the manager's own manager.
        assert_eq!(chart.executive_of(&PersonId::new("mgr")).map(|p| p.id.as_str()), Some("ceo"));
        // Nobody above the manager: no executive distinct from the manager.
        assert_eq!(chart.executive_of(&PersonId::new("vp")), None);
        assert!(chart.check().is_empty());
    }

    #[test]
    fn a_step_reaches_each_person_on_the_channels_both_name_and_by_email_otherwise() {
        let reach = Reachability {
            default: vec![Reach::Email, Reach::Slack],
            people: BTreeMap::from([
                (PersonId::new("t"), vec![Reach::Teams]),
                (PersonId::new("none"), vec![]),
            ]),
        };
        let both = [Reach::Slack, Reach::Email];
        // The step's order; only what the person is reachable on.
        assert_eq!(reach.narrow(&both, Some(&PersonId::new("a"))), [Reach::Slack, Reach::Email]);
        assert_eq!(reach.narrow(&[Reach::Slack], Some(&PersonId::new("a"))), [Reach::Slack]);
        // Nothing in common: email, not silence.
        assert_eq!(reach.narrow(&[Reach::Slack], Some(&PersonId::new("t"))), [Reach::Email]);
        assert_eq!(reach.narrow(&[Reach::Teams, Reach::Slack], Some(&PersonId::new("t"))), [Reach::Teams]);
        // An empty list is email; a bare address is email.
        assert_eq!(reach.narrow(&[Reach::Slack], Some(&PersonId::new("none"))), [Reach::Email]);
        assert_eq!(reach.narrow(&both, None), [Reach::Email]);
        assert_eq!(Reachability::default().of(&PersonId::new("a")), [Reach::Email]);
    }

    #[test]
    fn check_reports_every_problem() {
        let chart = OrgChart::new([
            person("a", Some("ghost")),
            person("b", Some("b")),
            person("c", Some("d")),
            person("d", Some("c")),
        ]);
        let errors = chart.check();
        assert_eq!(
            errors,
            vec![
                OrgChartError::UnknownManager { person: PersonId::new("a"), manager: PersonId::new("ghost") },
                OrgChartError::SelfManaged { person: PersonId::new("b") },
                OrgChartError::Cycle { person: PersonId::new("c") },
                OrgChartError::Cycle { person: PersonId::new("d") },
            ]
        );
        assert_eq!(chart.executive_of(&PersonId::new("c")), None);
    }
}
