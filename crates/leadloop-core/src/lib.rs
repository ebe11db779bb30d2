//! The leadloop domain, pure: leads and their stages, people and the org chart, the history of
//! what happened to a lead, timers and effects, the [`Clock`], and the connector traits that
//! plugins implement ([`Crm`], [`Mailer`], [`Calendar`]).
//!
//! Nothing in this crate performs I/O. Decisions are functions of (state, event, now, policy)
//! that return a [`Decision`]; the engine persists it and performs its effects.

pub mod actor;
pub mod calendar;
pub mod clock;
pub mod connector;
pub mod decision;
pub mod effect;
pub mod guard;
pub mod handoff;
pub mod history;
pub mod ids;
pub mod lead;
pub mod local_time;
pub mod nurture;
pub mod nurture_state;
pub mod person;
pub mod policy;
pub mod routing;
pub mod rules;
pub mod schedule;
pub mod scoring;
pub mod serde_duration;
pub mod sla;
pub mod stage;
pub mod timer;
pub mod vars;

pub use clock::{Clock, SystemClock, VirtualClock};
pub use connector::{Calendar, ChatSender, Crm, Mailer};
pub use decision::{Decision, Fact, RoutingTurn, Summary};
pub use effect::{
    Channel, ChatFallback, ChatService, Effect, IdempotencyKey, KeyError, OutboxEntry, OutboxState,
    Suppression,
};
pub use handoff::{Handoff, HandoffOutcome, SalesAction};
pub use history::{Actor, EventKind, HistoryEvent};
pub use lead::{Lead, LeadId, LeadRecord};
pub use person::{OrgChart, Person, PersonId, Reach, Reachability, Role};
pub use stage::{Stage, Transition, TransitionError};
pub use timer::{ReportBucket, ReportKind, Timer, TimerKey, TimerKind};

/// Instants are UTC everywhere; a person's time zone is applied where a rule needs local time.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
