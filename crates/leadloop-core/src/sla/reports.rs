//! Reports: a manager's or executive's daily digest of overdue hand-offs instead of a copy per
//! lead, and each executive's weekly summary (hand-offs ended or breached, how many met the SLA,
//! the median time to first touch). Items are collected per person in a [`ReportBucket`] as
//! the ladder runs; the bucket's timer sends them.

use chrono::TimeDelta;
use serde_json::{Value, json};

use super::{Handoff, SlaRules, human_duration};
use crate::Timestamp;
use crate::decision::Decision;
use crate::effect::{Effect, IdempotencyKey};
use crate::lead::LeadRecord;
use crate::local_time::next_local;
use crate::person::OrgChart;
use crate::timer::{ReportBucket, ReportKind, Timer, TimerKind};
use crate::vars;

/// An item's key in a report bucket: one per hand-off, so a later entry replaces an earlier.
pub(super) fn item_key(record: &LeadRecord, handoff: &Handoff) -> String {
    format!("{}/{}", record.lead.id, handoff.number)
}

/// The lead a report item is about (digest and weekly items both name it), for the engine to
/// read the lead as it is now before the report is decided.
pub fn report_item_lead(item: &Value) -> Option<crate::LeadId> {
    item.get("lead_id").and_then(Value::as_str).map(crate::LeadId::new)
}

/// A digest item as templates see it: every field an item has today, so an item stored by an
/// earlier version (without `owner_email`, say) renders under strict templates as `null`.
fn digest_row(item: &Value) -> Value {
    let mut row = item.clone();
    if let Some(map) = row.as_object_mut() {
        for key in ["lead", "company", "owner", "owner_email", "step", "started", "age"] {
            map.entry(key).or_insert(Value::Null);
        }
        map.entry("crm_url").or_insert_with(|| json!(""));
    }
    row
}

impl SlaRules {
    /// Records a hand-off for its executive's weekly summary (a later entry for the same
    /// hand-off replaces an earlier one) and makes sure the summary is scheduled.
    pub(super) fn weekly_entry(
        &self,
        record: &LeadRecord,
        handoff: &Handoff,
        entry: Value,
        people: &OrgChart,
        now: Timestamp,
        decision: &mut Decision,
    ) {
        let Some(weekly) = &self.config.weekly_summary else { return };
        let Some(executive) = self.executive(&handoff.owner, people) else { return };
        let bucket = ReportBucket::new(ReportKind::Weekly, executive.id.clone());
        decision.items.push((bucket.clone(), item_key(record, handoff), entry));
        decision.set_timers.push(Timer {
            key: bucket.timer_key(),
            due: next_local(now, Self::tz_of(Some(executive)), weekly.time, Some(weekly.day)),
            lead_id: None,
            kind: TimerKind::Report { bucket },
        });
    }

    /// A digest or weekly summary is due: what `timer`'s bucket collected, sent to its person.
    pub(super) fn report(
        &self,
        timer: &Timer,
        items: &[(String, Value, Option<LeadRecord>)],
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let mut decision = Decision::default();
        let TimerKind::Report { bucket } = &timer.kind else { return decision };
        // Exactly the items read are removed; any that arrive meanwhile wait for the next one.
        decision.remove_items.extend(items.iter().map(|(key, _, _)| (bucket.clone(), key.clone())));
        let (kind, person_id) = (bucket.kind, bucket.person.as_str());
        let person = people.get(&bucket.person).filter(|p| p.active);
        // Re-arm: items that arrive while this one is being sent (or while leadloop was down)
        // go in the next digest or summary.
        let next = match (kind, &self.config.weekly_summary) {
            (ReportKind::Weekly, Some(weekly)) => {
                Some(next_local(now, Self::tz_of(person), weekly.time, Some(weekly.day)))
            }
            (ReportKind::Weekly, None) => None,
            (ReportKind::Digest, _) => self
                .policies
                .iter()
                .filter_map(|p| p.digest.as_ref())
                .map(|d| next_local(now, Self::tz_of(person), d.time, None))
                .min(),
        };
        if let Some(due) = next {
            decision.set_timers.push(Timer {
                key: timer.key.clone(),
                due,
                lead_id: None,
                kind: timer.kind.clone(),
            });
        }
        let Some(address) = person.map(|p| p.email.clone()).or_else(|| self.config.fallback_email.clone())
        else {
            return decision;
        };
        let tz = Self::tz_of(person);
        let date = now.with_timezone(&tz).format("%Y-%m-%d").to_string();
        let person_vars = person.map(vars::person).unwrap_or_else(
            || json!({ "id": person_id, "name": "Sales operations", "email": address, "time_zone": null }),
        );
        let (effect_kind, template, vars) = match kind {
            ReportKind::Digest => {
                // Only hand-offs still open: an answered lead drops out of the digest.
                let rows: Vec<Value> = items
                    .iter()
                    .filter(|(_, item, lead)| {
                        lead.as_ref().and_then(|l| l.handoff.as_ref()).map(|h| json!(h.number))
                            == item.get("handoff").cloned()
                    })
                    .map(|(_, item, _)| digest_row(item))
                    .collect();
                if rows.is_empty() {
                    return decision;
                }
                (
                    "sla.digest",
                    "sla_digest",
                    json!({ "kind": "sla.digest", "person": person_vars, "items": rows, "count": rows.len(), "date": date }),
                )
            }
            ReportKind::Weekly => {
                // A week without hand-offs has nothing to report: no email.
                if items.is_empty() {
                    return decision;
                }
                let handoffs = items.len();
                let met = items.iter().filter(|(_, item, _)| item["met"] == json!(true)).count();
                let mut touches: Vec<i64> =
                    items.iter().filter_map(|(_, item, _)| item["first_touch_seconds"].as_i64()).collect();
                touches.sort_unstable();
                let median = touches.get(touches.len() / 2).map(|s| human_duration(TimeDelta::seconds(*s)));
                let summary = json!({
                    "handoffs": handoffs,
                    "met": met,
                    "breached": handoffs - met,
                    "met_percent": (met * 100).checked_div(handoffs).unwrap_or(0),
                    "median_first_touch": median,
                    "week_ending": date,
                });
                (
                    "sla.weekly",
                    "sla_weekly",
                    json!({ "kind": "sla.weekly", "person": person_vars, "summary": summary, "date": date }),
                )
            }
        };
        decision.queue(
            IdempotencyKey::from_parts([kind.as_str(), person_id, &timer.due.timestamp().to_string()]),
            Effect::Email {
                kind: effect_kind.into(),
                template: template.into(),
                to: vec![address],
                cc: vec![],
                lead_id: None,
                vars,
                deliver_to: None,
            },
            now,
        );
        decision
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveTime, Weekday};

    use super::*;
    use crate::person::{Person, PersonId, Role};
    use crate::sla::{SlaConfig, WeeklySummary};

    fn at(s: &str) -> Timestamp {
        s.parse().expect("instant")
    }

    fn exec() -> OrgChart {
        OrgChart::new([Person {
            id: PersonId::new("exec"),
            email: "exec@corp.example".into(),
            name: "Erin Exec".into(),
            manager: None,
            time_zone: Some("UTC".into()),
            role: Role::Executive,
            active: true,
            capacity: None,
        }])
    }

    fn timer(kind: ReportKind, due: Timestamp) -> Timer {
        let bucket = ReportBucket::new(kind, PersonId::new("exec"));
        Timer { key: bucket.timer_key(), due, lead_id: None, kind: TimerKind::Report { bucket } }
    }

    fn emails(decision: &Decision) -> Vec<&Value> {
        decision
            .effects
            .iter()
            .filter_map(|(_, effect)| match effect {
                Effect::Email { vars, .. } => Some(vars),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_week_without_handoffs_sends_no_summary_but_stays_scheduled() {
        let weekly =
            WeeklySummary { day: Weekday::Mon, time: NaiveTime::from_hms_opt(8, 0, 0).expect("time") };
        let sla = SlaRules::new(SlaConfig { weekly_summary: Some(weekly), ..SlaConfig::default() });
        let now = at("2026-03-09T08:00:00Z");
        let decision = sla.report(&timer(ReportKind::Weekly, now), &[], &exec(), now);
        assert!(emails(&decision).is_empty(), "{:?}", decision.effects);
        assert_eq!(
            decision.set_timers.iter().map(|t| t.due).collect::<Vec<_>>(),
            [at("2026-03-16T08:00:00Z")]
        );
    }

    #[test]
    fn a_digest_item_stored_without_newer_fields_still_renders_them() {
        let sla = SlaRules::new(SlaConfig::default());
        let now = at("2026-03-09T08:00:00Z");
        // An item as an earlier version stored it: no `owner_email`, no `crm_url`.
        let item = json!({ "lead_id": "00Q1", "handoff": 1, "lead": "Ana Lima", "owner": "Rep A", "step": "manager" });
        let mut lead = LeadRecord::new(crate::Lead::new("00Q1"), now);
        lead.handoff = Some(Handoff {
            number: 1,
            owner: PersonId::new("rep"),
            status: None,
            started_at: now,
            policy: "default".into(),
            next_step: 2,
            paused_seconds: 0,
            hold: None,
            status_written_over: None,
        });
        let items = [("00Q1/1".to_owned(), item, Some(lead))];
        let decision = sla.report(&timer(ReportKind::Digest, now), &items, &exec(), now);
        let vars = emails(&decision);
        assert_eq!(vars.len(), 1);
        let row = &vars[0]["items"][0];
        // Present as null (strict templates fail on a missing key, not on null).
        assert_eq!(row.get("owner_email"), Some(&Value::Null));
        assert_eq!(row.get("company"), Some(&Value::Null));
        assert_eq!(row.get("crm_url"), Some(&json!("")));
    }
}
