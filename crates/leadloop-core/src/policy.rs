//! The policy interface: pure decisions on each kind of event. The engine calls these with
//! the lead as stored, the org chart and the current instant, and persists the returned
//! [`Decision`] atomically.

use crate::Timestamp;
use crate::connector::Activity;
use crate::decision::Decision;
use crate::lead::LeadRecord;
use crate::person::OrgChart;
use crate::timer::Timer;

pub trait Policy: Send + Sync {
    /// A lead was created or changed; `after` is its new state (fields merged, leadloop's own
    /// state carried over from `before`). The decision must include the lead to store it.
    fn on_lead(
        &self,
        before: Option<&LeadRecord>,
        after: LeadRecord,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let _ = (before, people, now);
        Decision { lead: Some(after), ..Decision::default() }
    }

    /// An activity on a stored lead.
    fn on_activity(
        &self,
        lead: &LeadRecord,
        activity: &Activity,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let _ = (lead, activity, people, now);
        Decision::default()
    }

    /// The lead was deleted in the CRM; the engine removes the record after this decision.
    fn on_delete(&self, lead: &LeadRecord, people: &OrgChart, now: Timestamp) -> Decision {
        let _ = (lead, people, now);
        Decision::default()
    }

    /// A report timer is due: `items` is what its bucket collected, each with its lead as
    /// stored now (if the item names one in a `lead_id` field).
    fn on_report(
        &self,
        timer: &Timer,
        items: &[(String, serde_json::Value, Option<LeadRecord>)],
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let _ = (timer, items, people, now);
        Decision::default()
    }

    /// A rep answered a hand-off through a one-click link.
    #[allow(clippy::too_many_arguments)]
    fn on_sales_action(
        &self,
        lead: &LeadRecord,
        handoff: u32,
        action: crate::handoff::SalesAction,
        reason: Option<&str>,
        by: &crate::history::Actor,
        people: &OrgChart,
        now: Timestamp,
    ) -> (Decision, crate::handoff::ActionOutcome) {
        let _ = (lead, handoff, action, reason, by, people, now);
        (Decision::default(), crate::handoff::ActionOutcome::AlreadyClosed)
    }

    /// A timer is due. `lead` is the timer's lead as stored now (`None` if it has none or it
    /// was deleted). The fired timer is cancelled unless the decision sets it again.
    fn on_timer(
        &self,
        timer: &Timer,
        lead: Option<&LeadRecord>,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let _ = (timer, lead, people, now);
        Decision::default()
    }
}

/// A policy with no rules: leads are stored, timers cleared, nothing else happens.
#[derive(Debug, Default)]
pub struct NoRules;

impl Policy for NoRules {}
