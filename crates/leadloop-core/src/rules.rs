//! The rules leadloop runs: lifecycle stages, scoring, the SLA ladder and nurture tracks,
//! composed into one [`Policy`]. Scoring and stage moves are decided first; the SLA then sees
//! the lead as they left it, and nurture last (a lead that just qualified leaves its tracks).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::connector::Activity;
use crate::decision::{Decision, RoutingTurn};
use crate::history::{Actor, EventKind, HistoryEvent};
use crate::lead::LeadRecord;
use crate::nurture::NurtureRules;
use crate::person::OrgChart;
use crate::policy::Policy;
use crate::routing::RoutingConfig;
use crate::scoring::{MAX_EVENTS, ScoringConfig};
use crate::sla::{ActionOutcome, SalesAction, SlaRules};
use crate::stage::{Stage, check};
use crate::timer::Timer;

/// `[lifecycle]`: how CRM statuses map to stages (a sales action in the CRM).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// CRM status → stage, e.g. `"Working - Contacted" = "sales_qualified"`.
    #[serde(default)]
    pub status_stages: BTreeMap<String, Stage>,
}

/// Stages from which reaching the score threshold qualifies a lead.
const QUALIFIABLE: [Stage; 5] =
    [Stage::JustAName, Stage::Engaged, Stage::Prospect, Stage::Recycled, Stage::Deferred];

#[derive(Debug, Clone)]
pub struct Rules {
    pub sla: SlaRules,
    pub scoring: ScoringConfig,
    pub lifecycle: LifecycleConfig,
    pub routing: RoutingConfig,
    pub nurture: NurtureRules,
}

fn rule(name: &str) -> Actor {
    Actor::Rule { name: name.into() }
}

impl Rules {
    pub fn new(
        sla: SlaRules,
        scoring: ScoringConfig,
        lifecycle: LifecycleConfig,
        routing: RoutingConfig,
    ) -> Self {
        // The ladder's emails say why the lead matters: its top score reasons.
        let sla = sla.with_scoring(scoring.clone());
        Self { sla, scoring, lifecycle, routing, nurture: NurtureRules::default() }
    }

    /// Adds nurture tracks.
    pub fn with_nurture(mut self, nurture: NurtureRules) -> Self {
        self.nurture = nurture;
        self
    }

    /// Lets nurture see the lead as the other rules left it in `decision` (or as `fallback`
    /// if they left it unchanged); the lead is stored only if something changed.
    fn nurture_after(
        &self,
        before: Option<&LeadRecord>,
        fallback: &LeadRecord,
        activity: Option<&Activity>,
        mut decision: Decision,
        now: Timestamp,
    ) -> Decision {
        let had = decision.lead.is_some();
        let mut record = decision.lead.take().unwrap_or_else(|| fallback.clone());
        let mut nurture = Decision::default();
        let changed = match (activity, before) {
            (Some(activity), Some(before)) => {
                self.nurture.on_activity(before, &mut record, activity, now, &mut nurture)
            }
            _ => self.nurture.on_change(before, &mut record, now, &mut nurture),
        };
        if had || changed {
            decision.lead = Some(record);
        }
        decision.events.extend(nurture.events);
        decision.effects.extend(nurture.effects);
        decision.facts.extend(nurture.facts);
        decision.set_timers.extend(nurture.set_timers);
        decision.cancel_timers.extend(nurture.cancel_timers);
        decision
    }

    /// A Marketing Qualified lead with no one (or only a queue, or someone inactive) to work
    /// it is routed: owner set, written back to the CRM, reason recorded.
    fn route(
        &self,
        record: &mut LeadRecord,
        people: &OrgChart,
        now: Timestamp,
        events: &mut Vec<HistoryEvent>,
    ) -> Decision {
        let mut decision = Decision::default();
        let unowned = record.lead.owner_id.as_ref().is_none_or(|o| {
            // An owner leadloop does not know (a CRM user outside the org chart) keeps the lead.
            people.get(o).is_some_and(|p| !p.active || p.role == crate::person::Role::Queue)
        });
        let configured = !self.routing.rules.is_empty() || self.routing.fallback.is_some();
        if record.stage != Stage::MarketingQualified || !unowned || !configured {
            return decision;
        }
        let Some(route) = self.routing.route_at(record, people, now) else { return decision };
        if record.lead.owner_id.as_ref() == Some(&route.owner) {
            return decision;
        }
        events.push(HistoryEvent::new(
            now,
            rule("routing"),
            EventKind::OwnerChanged {
                from: record.lead.owner_id.clone(),
                to: Some(route.owner.clone()),
                reason: route.reason,
            },
        ));
        record.lead.owner_id = Some(route.owner.clone());
        let mut fields = serde_json::Map::new();
        fields.insert("owner_id".into(), serde_json::json!(route.owner));
        decision.queue(
            // Unique per routing of this lead (the record's version moves on every write), and
            // the same if this very decision is made again after a crash.
            crate::IdempotencyKey::from_parts([
                "route",
                record.lead.id.as_str(),
                &record.version.to_string(),
            ]),
            crate::Effect::CrmUpdate { lead_id: record.lead.id.clone(), fields },
            now,
        );
        if let Some((rule, next)) = route.turn {
            decision.turns.push(RoutingTurn { rule, next });
        }
        decision
    }

    /// Joins a routing decision's effects and cursors into the SLA's decision.
    fn join(mut into: Decision, routed: Decision) -> Decision {
        into.effects.splice(0..0, routed.effects);
        into.events.extend(routed.events);
        into.turns.extend(routed.turns);
        into.facts.extend(routed.facts);
        into
    }

    /// Moves `record` to `to` if the stage table allows `actor` to, recording why.
    fn move_stage(
        record: &mut LeadRecord,
        to: Stage,
        actor: Actor,
        reason: String,
        now: Timestamp,
        events: &mut Vec<HistoryEvent>,
    ) {
        if record.stage == to || check(record.stage, to, &actor).is_err() {
            return;
        }
        events.push(HistoryEvent::new(
            now,
            actor,
            EventKind::StageChanged { from: record.stage, to, reason },
        ));
        record.stage = to;
        record.stage_since = now;
    }

    /// Rescore at `now`; qualify at the threshold. Returns the events.
    /// `sales_moved`: a sales action moved the stage in this same event; the score does not
    /// undo it.
    fn rescore(
        &self,
        record: &mut LeadRecord,
        reason: &str,
        sales_moved: bool,
        now: Timestamp,
        events: &mut Vec<HistoryEvent>,
    ) {
        let previous = record.fit_score + record.engagement_score;
        let (fit, _) = self.scoring.fit(&record.lead);
        let engagement = self.scoring.engagement(&record.scored, now);
        let changed =
            (fit - record.fit_score).abs() > 1e-6 || (engagement - record.engagement_score).abs() > 0.5;
        record.fit_score = fit;
        record.engagement_score = engagement;
        if changed {
            events.push(HistoryEvent::new(
                now,
                rule("score"),
                EventKind::ScoreChanged { fit, engagement, reason: reason.to_owned() },
            ));
        }
        let combined = fit + engagement;
        // Recycled and Deferred leads qualify again only by crossing the threshold anew: a lead
        // sales sent back is not returned to them on its old score.
        let crossed = previous < self.scoring.threshold;
        let from_exit = matches!(record.stage, Stage::Recycled | Stage::Deferred);
        if combined >= self.scoring.threshold
            && QUALIFIABLE.contains(&record.stage)
            && !sales_moved
            && (!from_exit || crossed)
        {
            let reason = format!(
                "score {combined:.0} ≥ {:.0} (fit {fit:.0}, engagement {engagement:.0})",
                self.scoring.threshold
            );
            Self::move_stage(record, Stage::MarketingQualified, rule("score"), reason, now, events);
        }
    }

    fn merge(mut first: Vec<HistoryEvent>, mut then: Decision, record: LeadRecord) -> Decision {
        first.append(&mut then.events);
        then.events = first;
        if then.lead.is_none() {
            then.lead = Some(record);
        }
        then
    }
}

impl Policy for Rules {
    fn on_lead(
        &self,
        before: Option<&LeadRecord>,
        mut after: LeadRecord,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let mut events = Vec::new();
        // A status the CRM set that maps to a stage is a sales action.
        if before.is_none_or(|b| b.lead.status != after.lead.status)
            && let Some(stage) =
                after.lead.status.as_ref().and_then(|s| self.lifecycle.status_stages.get(s)).copied()
        {
            let reason = format!("CRM status {}", after.lead.status.as_deref().unwrap_or(""));
            let actor = Actor::Sales { person: after.lead.owner_id.clone(), address: None };
            Self::move_stage(&mut after, stage, actor, reason, now, &mut events);
        }
        let sales_moved = !events.is_empty();
        self.rescore(&mut after, "lead fields changed", sales_moved, now, &mut events);
        let routed = self.route(&mut after, people, now, &mut events);
        let decision = self.sla.on_lead(before, after.clone(), people, now);
        let decision = Self::join(Self::merge(events, decision, after.clone()), routed);
        self.nurture_after(before, &after, None, decision, now)
    }

    fn on_activity(
        &self,
        lead: &LeadRecord,
        activity: &Activity,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let mut record = lead.clone();
        let mut events = Vec::new();
        let scored_any = self.scoring.score_activity(&record.scored, &activity.kind, now);
        let changed = scored_any.is_some();
        if let Some(scored) = scored_any {
            record.scored.push(scored);
            if record.scored.len() > MAX_EVENTS {
                let excess = record.scored.len() - MAX_EVENTS;
                record.scored.drain(..excess);
            }
            if record.stage == Stage::JustAName {
                let reason = format!("first engagement: {}", activity.kind);
                Self::move_stage(&mut record, Stage::Engaged, rule("score"), reason, now, &mut events);
            }
            self.rescore(&mut record, &format!("activity {}", activity.kind), false, now, &mut events);
        }
        let routed = self.route(&mut record, people, now, &mut events);
        if !routed.is_empty() {
            // A new owner: the SLA sees a lead handed off (its alert goes out now).
            let decision = self.sla.on_lead(Some(lead), record.clone(), people, now);
            let decision = Self::join(Self::merge(events, decision, record.clone()), routed);
            return self.nurture_after(Some(lead), &record, Some(activity), decision, now);
        }
        let decision = self.sla.on_activity(&record, activity, people, now);
        if !changed && events.is_empty() && decision.lead.is_none() {
            return self.nurture_after(Some(lead), &record, Some(activity), decision, now);
        }
        let decision = Self::merge(events, decision, record.clone());
        self.nurture_after(Some(lead), &record, Some(activity), decision, now)
    }

    fn on_delete(&self, lead: &LeadRecord, people: &OrgChart, now: Timestamp) -> Decision {
        let mut decision = self.sla.on_delete(lead, people, now);
        if !lead.nurture.tracks.is_empty() {
            decision.cancel_timers.push(crate::nurture::timer_key(lead.lead.id.as_str()));
        }
        decision
    }

    fn on_timer(
        &self,
        timer: &Timer,
        lead: Option<&LeadRecord>,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        if let crate::timer::TimerKind::NurtureStep { .. } = timer.kind {
            let mut decision = Decision::default();
            if let Some(record) = lead {
                let mut record = record.clone();
                self.nurture.on_timer(&mut record, now, &mut decision);
                decision.lead = Some(record);
            }
            return decision;
        }
        self.sla.on_timer(timer, lead, people, now)
    }

    fn on_report(
        &self,
        timer: &Timer,
        items: &[(String, serde_json::Value, Option<LeadRecord>)],
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        self.sla.on_report(timer, items, people, now)
    }

    fn on_sales_action(
        &self,
        lead: &LeadRecord,
        handoff: u32,
        action: SalesAction,
        reason: Option<&str>,
        by: &Actor,
        people: &OrgChart,
        now: Timestamp,
    ) -> (Decision, ActionOutcome) {
        let (decision, outcome) = self.sla.on_sales_action(lead, handoff, action, reason, by, people, now);
        if outcome != ActionOutcome::Done {
            return (decision, outcome);
        }
        // A lead recycled from an email link re-enters nurture at once.
        (self.nurture_after(Some(lead), lead, None, decision, now), outcome)
    }
}
