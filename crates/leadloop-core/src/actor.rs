//! Who caused a change: leadloop itself, one of its rules, sales, or an operator. The stage
//! table (which actor may make which move) and the history both name actors.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::PersonId;

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    /// leadloop itself (sync, timers).
    System,
    /// A named leadloop rule (scoring, routing, nurture).
    Rule { name: String },
    /// A sales action, in the CRM or through a signed link. A link is bound to the address
    /// it was mailed to: `person` when that address is a known person's, else `address`.
    Sales {
        person: Option<PersonId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// An operator correcting state by hand.
    Admin { who: String },
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::System => f.write_str("leadloop"),
            Actor::Rule { name } => write!(f, "rule {name}"),
            Actor::Sales { person: Some(p), .. } => write!(f, "sales ({p})"),
            Actor::Sales { person: None, address: Some(a) } => write!(f, "sales ({a})"),
            Actor::Sales { person: None, address: None } => f.write_str("sales"),
            Actor::Admin { who } => write!(f, "admin {who}"),
        }
    }
}
