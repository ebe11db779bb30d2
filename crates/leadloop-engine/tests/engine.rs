//! The engine in virtual time against a real sled store: timers fire once, when due, and the
//! decision they produce lands atomically with the timer's removal.
//! (`Engine::run` itself is tested in virtual time in `loops.rs`.)

use std::sync::Arc;

use chrono::TimeDelta;
use leadloop_core::OrgChart;
use leadloop_core::{
    Clock, Decision, Effect, IdempotencyKey, LeadId, LeadRecord, Timer, TimerKey, TimerKind, Timestamp,
    VirtualClock,
};
use leadloop_engine::{Engine, Policy};
use leadloop_store::{Batch, SledConfig, SledStore, Store};

/// Sends an email per firing and re-arms itself 24 h after the step was due, up to step 3: a
/// ladder in miniature.
struct Ladder;

impl Policy for Ladder {
    fn on_timer(
        &self,
        timer: &Timer,
        lead: Option<&LeadRecord>,
        _people: &OrgChart,
        _now: Timestamp,
    ) -> Decision {
        let TimerKind::SlaStep { handoff, step } = timer.kind else {
            return Decision::default();
        };
        let Some(lead) = lead else {
            return Decision::default();
        };
        let mut decision = Decision::default();
        decision.effects.push((
            IdempotencyKey::from_parts([lead.lead.id.as_str(), &handoff.to_string(), &step.to_string()])
                .expect("valid key"),
            Effect::Email {
                kind: "test".into(),
                template: "t".into(),
                to: vec!["rep@x.example".into()],
                cc: vec![],
                lead_id: Some(lead.lead.id.clone()),
                vars: serde_json::json!({}),
                deliver_to: None,
            },
        ));
        if step < 3 {
            decision.set_timers.push(Timer {
                due: timer.due + TimeDelta::hours(24),
                kind: TimerKind::SlaStep { handoff, step: step + 1 },
                ..timer.clone()
            });
        }
        decision
    }
}

fn start() -> Timestamp {
    "2026-03-02T14:00:00Z".parse().expect("valid instant")
}

#[tokio::test]
async fn due_timers_fire_once_in_virtual_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path())).expect("open");
    let clock = Arc::new(VirtualClock::new(start()));
    let engine = Engine::new(Arc::clone(&store), clock.clone(), Arc::new(Ladder));

    let lead = LeadId::new("00Q1");
    let mut batch = Batch::new();
    batch.put_lead(LeadRecord::new(leadloop_core::Lead::new("00Q1"), start())).set_timer(Timer {
        key: TimerKey::new("sla/00Q1"),
        due: start() + TimeDelta::hours(24),
        lead_id: Some(lead.clone()),
        kind: TimerKind::SlaStep { handoff: 1, step: 1 },
    });
    store.commit(batch).await.expect("commit");

    // Not yet due.
    assert_eq!(engine.tick().await.expect("tick").fired, 0);
    clock.advance(TimeDelta::hours(24) - TimeDelta::seconds(1));
    assert_eq!(engine.tick().await.expect("tick").fired, 0);
    clock.advance(TimeDelta::seconds(1));
    let report = engine.tick().await.expect("tick");
    assert_eq!((report.fired, report.enqueued.len()), (1, 1));
    // Ticking again at the same instant repeats nothing.
    assert_eq!(engine.tick().await.expect("tick").fired, 0);
    // The ladder re-armed itself for 24 h later.
    let next = store.timer(&TimerKey::new("sla/00Q1")).await.expect("timer").expect("re-armed");
    assert_eq!(next.due, clock.now() + TimeDelta::hours(24));

    // 80 hours of downtime: the remaining steps fire one per tick, in order, each once.
    clock.advance(TimeDelta::hours(80));
    let mut fired = 0;
    for _ in 0..5 {
        fired += engine.tick().await.expect("tick").fired;
    }
    assert_eq!(fired, 2);
    let keys: Vec<_> = store
        .outbox_ready(leadloop_core::Channel::Email, clock.now(), 10)
        .await
        .expect("ready")
        .into_iter()
        .map(|e| e.key.to_string())
        .collect();
    assert_eq!(keys, ["00Q1/1/1", "00Q1/1/2", "00Q1/1/3"]);
    assert_eq!(store.next_timer_due().await.expect("next"), None);
    // The outbox entries are the record of what was queued; the history gets no copy.
    let history = store.history(&lead).await.expect("history");
    assert!(history.is_empty(), "{history:?}");
}

/// Open hand-offs per rep survive a restart through the open hand-off index: the restart reads
/// what is open, and a hand-off that ended no longer counts.
#[tokio::test]
async fn open_handoff_counts_survive_a_restart() {
    use leadloop_core::sla::{SlaConfig, SlaRules};
    use leadloop_core::{Lead, Person, PersonId, Role};
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(VirtualClock::new(start()));
    let open = |clock: &Arc<VirtualClock>| {
        let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path())).expect("store");
        Engine::new(store, clock.clone(), Arc::new(SlaRules::new(SlaConfig::default())))
    };
    let rep = Person {
        id: PersonId::new("rep"),
        email: "rep@x.example".into(),
        name: "Rep".into(),
        manager: None,
        time_zone: None,
        role: Role::Rep,
        active: true,
        capacity: None,
    };
    let lead = |id: &str| {
        let mut lead = Lead::new(id);
        lead.owner_id = Some(PersonId::new("rep"));
        lead.status = Some("Open - Not Contacted".into());
        lead
    };
    {
        let engine = open(&clock);
        engine.upsert_person(rep).await.expect("person");
        for id in ["00Q1", "00Q2", "00Q3"] {
            engine.upsert_lead(lead(id)).await.expect("lead");
        }
        assert_eq!(engine.org_chart().load.get(&PersonId::new("rep")), Some(&3));
        let mut answered = lead("00Q2");
        answered.status = Some("Working - Contacted".into());
        engine.upsert_lead(answered).await.expect("answer");
        assert_eq!(engine.org_chart().load.get(&PersonId::new("rep")), Some(&2));
    }
    let engine = open(&clock);
    engine.load_people().await.expect("load");
    assert_eq!(engine.org_chart().load.get(&PersonId::new("rep")), Some(&2));
    let indexed = engine.store().open_handoffs().await.expect("open hand-offs");
    let keys: Vec<&str> = indexed.iter().map(|(lead, _)| lead.as_str()).collect();
    assert_eq!(keys, ["00Q1", "00Q3"]);
}
