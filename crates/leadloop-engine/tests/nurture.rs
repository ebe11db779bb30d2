//! Nurture through the engine and a real sled store, in virtual time: a step is queued once
//! when due, an unsubscribe opts the lead out in one batch (tracks left, address suppressed,
//! CRM update queued) and nothing more is queued, a click is an activity scoring counts, and
//! two timers of one lead in one tick see each other's changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use leadloop_core::nurture::{NurtureConfig, NurtureRules, StepConfig, TrackConfig};
use leadloop_core::rules::Rules;
use leadloop_core::scoring::{EngagementRule, ScoringConfig};
use leadloop_core::sla::{SlaConfig, SlaRules};
use leadloop_core::{
    Channel, Clock, Decision, Effect, Lead, LeadId, LeadRecord, OrgChart, Timer, TimerKey, TimerKind,
    Timestamp, VirtualClock,
};
use leadloop_engine::{Engine, Policy, Unsubscribed};
use leadloop_store::{Batch, SledConfig, SledStore, Store};

fn start() -> Timestamp {
    "2026-06-01T10:00:00Z".parse().expect("instant")
}

fn step(after: &str) -> StepConfig {
    StepConfig {
        name: None,
        cron: None,
        after: Some(after.into()),
        from: Default::default(),
        at: None,
        template: "nurture_example".into(),
        by_interest: BTreeMap::new(),
        links: BTreeMap::new(),
    }
}

fn rules() -> Rules {
    let track: TrackConfig = serde_json::from_value(serde_json::json!({
        "name": "welcome",
        "steps": [],
    }))
    .expect("track");
    let track = TrackConfig { steps: vec![step("1d"), step("1d"), step("1d")], ..track };
    let scoring = ScoringConfig {
        engagement: vec![EngagementRule {
            name: "click".into(),
            activity: "email_click".into(),
            points: 10.0,
            cap: None,
            per: Duration::from_secs(86_400),
        }],
        ..ScoringConfig::default()
    };
    Rules::new(SlaRules::new(SlaConfig::default()), scoring, Default::default(), Default::default())
        .with_nurture(
            NurtureRules::new(NurtureConfig { tracks: vec![track], ..Default::default() }).expect("valid"),
        )
}

async fn outbox(store: &dyn Store, channel: Channel, now: Timestamp) -> Vec<String> {
    store
        .outbox_ready(channel, now, 100)
        .await
        .expect("ready")
        .into_iter()
        .map(|e| e.key.to_string())
        .collect()
}

#[tokio::test]
async fn steps_queue_once_and_unsubscribe_stops_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path())).expect("open");
    let clock = Arc::new(VirtualClock::new(start()));
    let engine = Engine::new(Arc::clone(&store), clock.clone(), Arc::new(rules()));
    let mut lead = Lead::new("00Q1");
    lead.email = Some("Ana@Acme.example".into());
    engine.upsert_lead(lead).await.expect("upsert");
    let id = LeadId::new("00Q1");
    let timer = store.timer(&TimerKey::new("nurture/00Q1")).await.expect("timer").expect("set");
    assert_eq!(timer.due, start() + TimeDelta::days(1));

    clock.advance(TimeDelta::days(1));
    let report = engine.tick().await.expect("tick");
    assert_eq!(report.enqueued.iter().map(|k| k.as_str()).collect::<Vec<_>>(), ["nurture/00Q1/welcome/1/0"]);
    assert_eq!(engine.tick().await.expect("tick").fired, 0, "nothing twice");
    let entry = store.outbox_ready(Channel::Email, clock.now(), 10).await.expect("ready");
    let Effect::Email { kind, to, .. } = &entry[0].effect else { panic!("not an email") };
    assert_eq!((kind.as_str(), to.as_slice()), ("nurture", &["Ana@Acme.example".to_owned()][..]));

    // A click is an activity; scoring counts it.
    let click = leadloop_engine::Click {
        lead: &id,
        track: "welcome",
        step: "step 1",
        link: "pricing",
        url: "https://example.com/p",
        message: None,
    };
    let rules = leadloop_engine::ClickRules::default();
    assert_eq!(
        engine.record_click(&click, &rules).await.expect("click"),
        leadloop_engine::ClickOutcome::Counted
    );
    let record = store.lead(&id).await.expect("read").expect("lead");
    assert!(record.engagement_score > 9.0, "{}", record.engagement_score);

    assert_eq!(engine.unsubscribe(&id, None, "one-click").await.expect("unsubscribe"), Unsubscribed::Done);
    let record = store.lead(&id).await.expect("read").expect("lead");
    assert!(record.lead.opted_out);
    assert!(record.nurture.tracks.is_empty() && record.nurture.opted_out_at.is_some());
    assert!(store.suppression("ana@acme.example").await.expect("read").is_some());
    assert_eq!(store.timer(&TimerKey::new("nurture/00Q1")).await.expect("timer"), None);
    let crm = store.outbox_ready(Channel::Crm, clock.now(), 10).await.expect("ready");
    assert!(
        matches!(&crm[..], [entry] if matches!(&entry.effect, Effect::CrmUpdate { fields, .. } if fields["opted_out"] == true)),
        "{crm:?}"
    );
    // A second unsubscribe changes nothing more; an unknown lead is reported as such.
    let events = store.history(&id).await.expect("history").len();
    assert_eq!(engine.unsubscribe(&id, None, "form").await.expect("unsubscribe"), Unsubscribed::Already);
    assert_eq!(store.history(&id).await.expect("history").len(), events, "a repeat writes nothing");
    assert_eq!(outbox(store.as_ref(), Channel::Crm, clock.now()).await.len(), 1);
    assert_eq!(
        engine.unsubscribe(&LeadId::new("nobody"), None, "form").await.expect("unsubscribe"),
        Unsubscribed::Unknown
    );

    clock.advance(TimeDelta::days(10));
    assert_eq!(engine.tick().await.expect("tick").enqueued.len(), 0);
    assert_eq!(outbox(store.as_ref(), Channel::Email, clock.now()).await, ["nurture/00Q1/welcome/1/0"]);
}

/// Appends the timer's key to the lead's interests: two timers of one lead due together must
/// both land.
struct Marks;

impl Policy for Marks {
    fn on_timer(&self, timer: &Timer, lead: Option<&LeadRecord>, _: &OrgChart, _: Timestamp) -> Decision {
        let Some(lead) = lead else { return Decision::default() };
        let mut record = lead.clone();
        record.lead.interests.push(timer.key.0.clone());
        Decision { lead: Some(record), ..Decision::default() }
    }
}

#[tokio::test]
async fn two_timers_of_one_lead_in_one_tick_see_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path())).expect("open");
    let clock = Arc::new(VirtualClock::new(start()));
    let engine = Engine::new(Arc::clone(&store), clock.clone(), Arc::new(Marks));
    let mut batch = Batch::new();
    batch.put_lead(LeadRecord::new(Lead::new("00Q1"), start()));
    for (key, kind) in [
        ("sla/00Q1", TimerKind::SlaStep { handoff: 1, step: 1 }),
        ("nurture/00Q1", TimerKind::NurtureStep { track: "t".into(), step: 0 }),
    ] {
        batch.set_timer(Timer {
            key: TimerKey::new(key),
            due: start(),
            lead_id: Some(LeadId::new("00Q1")),
            kind,
        });
    }
    store.commit(batch).await.expect("commit");
    assert_eq!(engine.tick().await.expect("tick").fired, 2);
    let mut marks = store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead").lead.interests;
    marks.sort();
    assert_eq!(marks, ["nurture/00Q1", "sla/00Q1"]);
}
