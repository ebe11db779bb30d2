//! The lifecycle stages of a lead and the transitions allowed between them, as data.
//!
//! The funnel runs Just a Name → Engaged → Prospect → Marketing Qualified → Sales Qualified →
//! Opportunity; Recycled, Deferred, Disqualified, Graveyard (bad contact data), Contact (never
//! to be sold to) and Customer are exits. [`TRANSITIONS`] lists every allowed move and who may
//! make it; anything not listed is refused.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::actor::Actor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    JustAName,
    Engaged,
    Prospect,
    MarketingQualified,
    SalesQualified,
    Opportunity,
    Recycled,
    Deferred,
    Disqualified,
    Graveyard,
    Contact,
    Customer,
}

impl Stage {
    pub const ALL: [Stage; 12] = [
        Stage::JustAName,
        Stage::Engaged,
        Stage::Prospect,
        Stage::MarketingQualified,
        Stage::SalesQualified,
        Stage::Opportunity,
        Stage::Recycled,
        Stage::Deferred,
        Stage::Disqualified,
        Stage::Graveyard,
        Stage::Contact,
        Stage::Customer,
    ];

    /// The stable machine name used in config, JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::JustAName => "just_a_name",
            Stage::Engaged => "engaged",
            Stage::Prospect => "prospect",
            Stage::MarketingQualified => "marketing_qualified",
            Stage::SalesQualified => "sales_qualified",
            Stage::Opportunity => "opportunity",
            Stage::Recycled => "recycled",
            Stage::Deferred => "deferred",
            Stage::Disqualified => "disqualified",
            Stage::Graveyard => "graveyard",
            Stage::Contact => "contact",
            Stage::Customer => "customer",
        }
    }

    /// The name people read in reports and emails.
    pub fn label(self) -> &'static str {
        match self {
            Stage::JustAName => "Just a Name",
            Stage::Engaged => "Engaged",
            Stage::Prospect => "Prospect",
            Stage::MarketingQualified => "Marketing Qualified",
            Stage::SalesQualified => "Sales Qualified",
            Stage::Opportunity => "Opportunity",
            Stage::Recycled => "Recycled",
            Stage::Deferred => "Deferred",
            Stage::Disqualified => "Disqualified",
            Stage::Graveyard => "Graveyard",
            Stage::Contact => "Contact",
            Stage::Customer => "Customer",
        }
    }

    /// Exits leave the funnel; only the transitions listed for them lead back in.
    pub fn is_exit(self) -> bool {
        matches!(
            self,
            Stage::Recycled
                | Stage::Deferred
                | Stage::Disqualified
                | Stage::Graveyard
                | Stage::Contact
                | Stage::Customer
        )
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown stage `{0}` (known: just_a_name, engaged, prospect, marketing_qualified, sales_qualified, opportunity, recycled, deferred, disqualified, graveyard, contact, customer)"
)]
pub struct UnknownStage(pub String);

impl FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s || stage.label().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStage(s.to_owned()))
    }
}

/// Who may make a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MayMake {
    /// Only leadloop's own rules (scoring, bounces, nurture).
    Rules,
    /// Only a sales action (in the CRM or through a signed link).
    Sales,
    /// Either.
    Both,
}

impl MayMake {
    fn allows(self, actor: &Actor) -> bool {
        match (self, actor) {
            (MayMake::Both, _) => true,
            (MayMake::Rules, Actor::Rule { .. } | Actor::System) => true,
            (MayMake::Sales, Actor::Sales { .. }) => true,
            // An admin correcting state by hand may make any listed move.
            (_, Actor::Admin { .. }) => true,
            _ => false,
        }
    }
}

/// One allowed move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Stage,
    pub to: Stage,
    pub by: MayMake,
}

const fn t(from: Stage, to: Stage, by: MayMake) -> Transition {
    Transition { from, to, by }
}

use MayMake::{Both, Rules, Sales};
use Stage::*;

/// Every allowed transition. Graveyard (bad contact data) and Contact (never sold to) can be
/// reached from any funnel stage; the table lists them explicitly so nothing is implied.
pub const TRANSITIONS: &[Transition] = &[
    // Forward through the funnel.
    t(JustAName, Engaged, Rules),
    t(JustAName, Prospect, Rules),
    t(JustAName, MarketingQualified, Both),
    t(Engaged, Prospect, Rules),
    t(Engaged, MarketingQualified, Both),
    t(Prospect, MarketingQualified, Both),
    t(MarketingQualified, SalesQualified, Sales),
    t(SalesQualified, Opportunity, Sales),
    t(Opportunity, Customer, Sales),
    // Engagement that fades moves a lead back one step.
    t(Engaged, JustAName, Rules),
    t(Prospect, Engaged, Rules),
    // Sales sends leads back or out.
    t(MarketingQualified, Recycled, Sales),
    t(SalesQualified, Recycled, Sales),
    t(Opportunity, Recycled, Sales),
    t(MarketingQualified, Deferred, Sales),
    t(SalesQualified, Deferred, Sales),
    t(MarketingQualified, Disqualified, Sales),
    t(SalesQualified, Disqualified, Sales),
    t(Opportunity, Disqualified, Sales),
    // Recycled and deferred leads re-enter nurture and can qualify again.
    t(Recycled, Engaged, Rules),
    t(Recycled, MarketingQualified, Both),
    t(Deferred, MarketingQualified, Both),
    t(Deferred, Recycled, Both),
    t(Disqualified, Recycled, Sales),
    // Bad contact data.
    t(JustAName, Graveyard, Both),
    t(Engaged, Graveyard, Both),
    t(Prospect, Graveyard, Both),
    t(MarketingQualified, Graveyard, Both),
    t(SalesQualified, Graveyard, Both),
    t(Recycled, Graveyard, Both),
    t(Deferred, Graveyard, Both),
    // Corrected contact data brings a lead back.
    t(Graveyard, JustAName, Both),
    // Partners, resellers, competitors: never sold to.
    t(JustAName, Contact, Both),
    t(Engaged, Contact, Both),
    t(Prospect, Contact, Both),
    t(MarketingQualified, Contact, Both),
    t(SalesQualified, Contact, Sales),
    t(Recycled, Contact, Both),
    t(Deferred, Contact, Both),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("no transition from {from} to {to}")]
    NotAllowed { from: Stage, to: Stage },
    #[error("the transition from {from} to {to} cannot be made by {actor}")]
    WrongActor { from: Stage, to: Stage, actor: String },
}

/// Checks a move against [`TRANSITIONS`]. Staying in place is not a transition.
pub fn check(from: Stage, to: Stage, actor: &Actor) -> Result<Transition, TransitionError> {
    let transition = TRANSITIONS
        .iter()
        .find(|t| t.from == from && t.to == to)
        .ok_or(TransitionError::NotAllowed { from, to })?;
    if transition.by.allows(actor) {
        Ok(*transition)
    } else {
        Err(TransitionError::WrongActor { from, to, actor: actor.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
            assert_eq!(stage.label().parse::<Stage>(), Ok(stage));
            let json = serde_json::to_string(&stage).expect("serializes");
            assert_eq!(json, format!("\"{}\"", stage.as_str()));
        }
        assert!("qualified".parse::<Stage>().is_err());
    }

    #[test]
    fn table_has_no_duplicates_or_self_loops() {
        for (i, a) in TRANSITIONS.iter().enumerate() {
            assert_ne!(a.from, a.to, "self loop {:?}", a);
            for b in &TRANSITIONS[i + 1..] {
                assert!(!(a.from == b.from && a.to == b.to), "duplicate {:?}", a);
            }
        }
    }

    #[test]
    fn check_enforces_table_and_actor() {
        let rule = Actor::Rule { name: "score".into() };
        let sales = Actor::Sales { person: None, address: None };
        assert!(check(Stage::Prospect, Stage::MarketingQualified, &rule).is_ok());
        assert_eq!(
            check(Stage::MarketingQualified, Stage::SalesQualified, &rule),
            Err(TransitionError::WrongActor {
                from: Stage::MarketingQualified,
                to: Stage::SalesQualified,
                actor: rule.to_string(),
            })
        );
        assert!(check(Stage::MarketingQualified, Stage::SalesQualified, &sales).is_ok());
        assert_eq!(
            check(Stage::Customer, Stage::JustAName, &sales),
            Err(TransitionError::NotAllowed { from: Stage::Customer, to: Stage::JustAName })
        );
        // Contact is never sold to: nothing leaves it.
        for to in Stage::ALL {
            assert!(check(Stage::Contact, to, &Actor::Admin { who: "ops".into() }).is_err());
        }
    }

    #[test]
    fn every_funnel_stage_can_reach_an_exit() {
        for stage in Stage::ALL.into_iter().filter(|s| !s.is_exit()) {
            assert!(TRANSITIONS.iter().any(|t| t.from == stage && t.to.is_exit()), "{stage} has no exit");
        }
    }
}
