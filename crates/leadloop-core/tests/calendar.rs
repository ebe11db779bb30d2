//! The SLA with calendar signals, in virtual time: a rep away pauses the escalation clock or
//! sends the steps to a backup, per policy; a hold is planned in the rep's next free
//! business-hours slot at hand-off and named in the alert.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use leadloop_core::calendar::{CalendarSignals, PersonSignals};
use leadloop_core::connector::CalendarEvent;
use leadloop_core::policy::Policy;
use leadloop_core::sla::{SlaConfig, SlaRules, WhenAway, default_policy};
use leadloop_core::timer::TimerKind;
use leadloop_core::{Effect, Lead, LeadRecord, OrgChart, Person, PersonId, Role, Timestamp};

fn at(s: &str) -> Timestamp {
    s.parse().expect("instant")
}

fn person(id: &str, manager: Option<&str>) -> Person {
    Person {
        id: PersonId::new(id),
        email: format!("{id}@us.example"),
        name: id.to_uppercase(),
        manager: manager.map(PersonId::new),
        time_zone: Some("Europe/Berlin".into()),
        role: Role::Rep,
        active: true,
        capacity: None,
    }
}

fn chart(events: &[CalendarEvent]) -> OrgChart {
    let mut chart = OrgChart::new([person("rep", Some("mgr")), person("mgr", None), person("lee", None)]);
    chart.calendar = Arc::new(CalendarSignals {
        look_ahead: TimeDelta::weeks(4),
        taken_at: None,
        people: BTreeMap::from([(
            PersonId::new("rep"),
            PersonSignals::from_events(events, Some("rep@us.example")),
        )]),
    });
    chart
}

fn away(start: &str, end: &str) -> CalendarEvent {
    CalendarEvent {
        uid: "ooo".into(),
        start: at(start),
        end: at(end),
        all_day: true,
        summary: "Out of office".into(),
        attendees: vec![],
        busy: true,
        away: true,
    }
}

fn lead() -> LeadRecord {
    let mut lead = Lead::new("00Q1");
    lead.first_name = Some("Ana".into());
    lead.last_name = Some("Lima".into());
    lead.company = Some("Acme".into());
    lead.owner_id = Some(PersonId::new("rep"));
    lead.status = Some("Open - Not Contacted".into());
    LeadRecord::new(lead, at("2026-11-23T08:00:00Z"))
}

fn rules(when_away: WhenAway, backup: Option<&str>) -> SlaRules {
    let policy =
        leadloop_core::sla::SlaPolicy { when_away, backup: backup.map(str::to_owned), ..default_policy() };
    SlaRules::new(SlaConfig { policies: vec![policy], ..SlaConfig::default() })
}

/// Emails as (step kind, to).
fn emails(decision: &leadloop_core::Decision) -> Vec<(String, Vec<String>)> {
    decision
        .effects
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Email { kind, to, .. } => Some((kind.clone(), to.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn an_away_rep_gets_the_alert_and_the_escalations_wait_until_they_are_back() {
    // Away Monday 23 and Tuesday 24 November (Berlin days).
    let people = chart(&[away("2026-11-22T23:00:00Z", "2026-11-24T23:00:00Z")]);
    let sla = rules(WhenAway::Pause, None);
    let start = at("2026-11-23T08:00:00Z");
    let decision = sla.on_lead(None, lead(), &people, start);
    assert_eq!(emails(&decision), [("sla.alert".to_owned(), vec!["rep@us.example".to_owned()])]);
    let record = decision.lead.expect("lead");
    let timer = decision.set_timers.first().expect("timer");
    assert_eq!(timer.due, at("2026-11-24T08:00:00Z"), "the reminder is armed at 24 h");
    // At 24 h the rep is still away: nothing goes out; the ladder resumes when they are back.
    let decision = sla.on_timer(timer, Some(&record), &people, timer.due);
    assert!(emails(&decision).is_empty());
    let resumed = decision.set_timers.first().expect("timer");
    assert_eq!(resumed.due, at("2026-11-24T23:00:00Z"));
    assert!(matches!(resumed.kind, TimerKind::SlaStep { step: 1, .. }));
    let record = decision.lead.expect("lead");
    assert_eq!(record.handoff.as_ref().map(|h| h.paused_seconds), Some(15 * 3600));
    // Back: the reminder goes out, and the manager step moves by the pause (48 h + 15 h).
    let decision = sla.on_timer(resumed, Some(&record), &people, resumed.due);
    assert_eq!(emails(&decision), [("sla.reminder".to_owned(), vec!["rep@us.example".to_owned()])]);
    assert_eq!(decision.set_timers[0].due, start + TimeDelta::hours(48 + 15));
}

#[test]
fn under_a_backup_policy_the_steps_go_to_the_backup_while_the_rep_is_away() {
    let people = chart(&[away("2026-11-22T23:00:00Z", "2026-11-24T23:00:00Z")]);
    let sla = rules(WhenAway::Backup, Some("lee"));
    let decision = sla.on_lead(None, lead(), &people, at("2026-11-23T08:00:00Z"));
    assert_eq!(emails(&decision), [("sla.alert".to_owned(), vec!["lee@us.example".to_owned()])]);
    let Some((_, Effect::Email { vars, .. })) = decision.effects.first() else { panic!("an email") };
    assert_eq!(vars["away"]["backup"]["id"], "lee");
    // "manager" as the backup; and once the rep is back, the rep again.
    let sla = rules(WhenAway::Backup, Some("manager"));
    let decision = sla.on_lead(None, lead(), &people, at("2026-11-23T08:00:00Z"));
    assert_eq!(emails(&decision)[0].1, ["mgr@us.example"]);
    let decision = sla.on_lead(None, lead(), &people, at("2026-11-25T08:00:00Z"));
    assert_eq!(emails(&decision)[0].1, ["rep@us.example"]);
}

#[test]
fn the_hold_is_planned_in_the_next_free_slot_and_named_in_the_alert() {
    // Monday 23 Nov, Berlin: busy 09:00–11:00 local.
    let busy = CalendarEvent {
        uid: "m".into(),
        start: at("2026-11-23T08:00:00Z"),
        end: at("2026-11-23T10:00:00Z"),
        all_day: false,
        summary: "Pipeline review".into(),
        attendees: vec![],
        busy: true,
        away: false,
    };
    let people = chart(&[busy]);
    let sla = rules(WhenAway::Pause, None).with_hold(Duration::from_secs(1800));
    let decision = sla.on_lead(None, lead(), &people, at("2026-11-23T07:40:00Z"));
    let holds: Vec<_> = decision
        .effects
        .iter()
        .filter_map(|(k, e)| match e {
            Effect::CalendarHold { person, start, end, summary, .. } => {
                Some((k.as_str().to_owned(), person.as_str().to_owned(), *start, *end, summary.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        holds,
        [(
            "hold/00Q1/1".to_owned(),
            "rep".to_owned(),
            at("2026-11-23T10:00:00Z"),
            at("2026-11-23T10:30:00Z"),
            "Call Ana Lima (Acme)".to_owned()
        )]
    );
    let alert = decision.effects.iter().find_map(|(_, e)| match e {
        Effect::Email { vars, .. } => Some(vars.clone()),
        _ => None,
    });
    assert_eq!(alert.expect("alert")["hold"]["start"], "2026-11-23 11:00 CET");
    // Someone without a calendar here: no hold.
    let mut other = lead();
    other.lead.owner_id = Some(PersonId::new("lee"));
    let decision = sla.on_lead(None, other, &people, at("2026-11-23T07:40:00Z"));
    assert!(!decision.effects.iter().any(|(_, e)| matches!(e, Effect::CalendarHold { .. })));
}
