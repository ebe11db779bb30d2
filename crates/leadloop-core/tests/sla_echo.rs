//! A status leadloop itself writes to the CRM (a `set_status` step action) comes back with the
//! next sync; that echo must not count as the rep's answer. A real change still ends the
//! hand-off.

use leadloop_core::policy::Policy;
use leadloop_core::sla::{SlaConfig, SlaRules, StepAction, default_policy};
use leadloop_core::{Effect, EventKind, Lead, LeadRecord, OrgChart, Person, PersonId, Role, Timestamp};

fn at(s: &str) -> Timestamp {
    s.parse().expect("instant")
}

fn rep() -> Person {
    Person {
        id: PersonId::new("rep"),
        email: "rep@us.example".into(),
        name: "Rep".into(),
        manager: None,
        time_zone: Some("Europe/Berlin".into()),
        role: Role::Rep,
        active: true,
        capacity: None,
    }
}

#[test]
fn the_echo_of_leadloops_own_status_write_keeps_the_handoff_open() {
    let mut policy = default_policy();
    policy.steps[0].actions = vec![StepAction::SetStatus { status: "Open - Alerted".into() }];
    let sla = SlaRules::new(SlaConfig { policies: vec![policy], ..SlaConfig::default() });
    let people = OrgChart::new([rep()]);
    let mut lead = Lead::new("00Q1");
    lead.last_name = Some("Lima".into());
    lead.owner_id = Some(PersonId::new("rep"));
    lead.status = Some("Open - Not Contacted".into());
    let t0 = at("2026-11-23T08:00:00Z");
    let decision = sla.on_lead(None, LeadRecord::new(lead, t0), &people, t0);
    assert!(
        decision.effects.iter().any(
            |(_, e)| matches!(e, Effect::CrmUpdate { fields, .. } if fields["status"] == "Open - Alerted")
        )
    );
    let record = decision.lead.expect("lead");
    assert_eq!(record.lead.status.as_deref(), Some("Open - Alerted"));
    assert!(record.handoff.is_some());

    // The next sync brings the status back, as written.
    let echo = record.clone();
    let decision = sla.on_lead(Some(&record), echo, &people, t0 + chrono::TimeDelta::minutes(5));
    let ended = |d: &leadloop_core::Decision| {
        d.events.iter().any(|e| matches!(e.kind, EventKind::HandoffEnded { .. }))
    };
    assert!(!ended(&decision), "the echo ended the hand-off");
    let record = decision.lead.unwrap_or(record);
    assert!(record.handoff.is_some());

    // The rep changes it: that is an answer.
    let mut answered = record.clone();
    answered.lead.status = Some("Working - Contacted".into());
    let decision = sla.on_lead(Some(&record), answered, &people, t0 + chrono::TimeDelta::hours(2));
    assert!(ended(&decision));
}

/// The CRM refused the status write (a restricted picklist without that value) or has not
/// applied it yet: the next sync still shows the status it replaced. That is not the rep's
/// answer either, and no second hand-off starts; a real change still ends it.
#[test]
fn a_refused_status_write_read_back_keeps_the_handoff_open() {
    let mut policy = default_policy();
    policy.steps[0].actions = vec![StepAction::SetStatus { status: "Open - Alerted".into() }];
    let sla = SlaRules::new(SlaConfig { policies: vec![policy], ..SlaConfig::default() });
    let people = OrgChart::new([rep()]);
    let mut lead = Lead::new("00Q1");
    lead.last_name = Some("Lima".into());
    lead.owner_id = Some(PersonId::new("rep"));
    lead.status = Some("Open - Not Contacted".into());
    let t0 = at("2026-11-23T08:00:00Z");
    let decision = sla.on_lead(None, LeadRecord::new(lead, t0), &people, t0);
    let record = decision.lead.expect("lead");
    let ended = |d: &leadloop_core::Decision| {
        d.events
            .iter()
            .any(|e| matches!(e.kind, EventKind::HandoffEnded { .. } | EventKind::HandoffStarted { .. }))
    };

    let mut unchanged = record.clone();
    unchanged.lead.status = Some("Open - Not Contacted".into());
    let decision = sla.on_lead(Some(&record), unchanged, &people, t0 + chrono::TimeDelta::minutes(1));
    assert!(
        !ended(&decision),
        "the CRM's unchanged status ended or restarted the hand-off: {:?}",
        decision.events
    );
    let record = decision.lead.unwrap_or(record);
    assert_eq!(record.handoff.as_ref().map(|h| h.number), Some(1));

    let mut answered = record.clone();
    answered.lead.status = Some("Working - Contacted".into());
    let decision = sla.on_lead(Some(&record), answered, &people, t0 + chrono::TimeDelta::hours(2));
    assert!(decision.events.iter().any(|e| matches!(e.kind, EventKind::HandoffEnded { .. })));
}
