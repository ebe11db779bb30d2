//! The conformance suite every storage engine must pass. Each case gets a fresh, empty store
//! from the factory; the sled tests and the PostgreSQL tests (crate leadloop-store-postgres) run it.

use std::future::Future;
use std::sync::Arc;

use chrono::TimeDelta;
use leadloop_core::{
    Actor, Channel, Effect, EventKind, HistoryEvent, IdempotencyKey, Lead, LeadId, LeadRecord, OutboxEntry,
    OutboxState, Person, PersonId, Role, Suppression, Timer, TimerKey, TimerKind, Timestamp,
};

use crate::{Batch, Expect, Found, Store, StoreError, export, import};

/// A fixed instant the cases count from.
pub fn t0() -> Timestamp {
    chrono::DateTime::from_timestamp(1_772_460_000, 0).unwrap_or_default()
}

pub fn lead(id: &str) -> LeadRecord {
    let mut lead = Lead::new(id);
    lead.email = Some(format!("{}@acme.example", id.to_lowercase()));
    LeadRecord::new(lead, t0())
}

pub fn person(id: &str, manager: Option<&str>) -> Person {
    Person {
        id: PersonId::new(id),
        email: format!("{id}@x.example"),
        name: format!("Person {id}"),
        manager: manager.map(PersonId::new),
        time_zone: Some("America/New_York".into()),
        role: Role::Rep,
        active: true,
        capacity: Some(10),
    }
}

pub fn timer(key: &str, due: Timestamp) -> Timer {
    Timer { key: TimerKey::new(key), due, lead_id: None, kind: TimerKind::ScoreDecay }
}

pub fn email(key: &str) -> OutboxEntry {
    let effect = Effect::Email {
        kind: "sla.alert".into(),
        template: "sla_alert".into(),
        to: vec!["rep@x.example".into()],
        cc: vec![],
        lead_id: Some(LeadId::new("00Q1")),
        vars: serde_json::json!({}),
        deliver_to: None,
    };
    OutboxEntry::new(IdempotencyKey::parse(key).expect("valid key"), effect, t0())
}

pub fn event(minutes: i64, name: &str) -> HistoryEvent {
    HistoryEvent::new(
        t0() + TimeDelta::minutes(minutes),
        Actor::System,
        EventKind::Activity { activity: name.into(), detail: Default::default() },
    )
}

/// Runs every case, each on a fresh store from `fresh`.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    leads_round_trip_in_id_order(fresh().await).await;
    history_appends_in_order_per_lead(fresh().await).await;
    due_timers_cost_what_is_due(fresh().await).await;
    timers_move_and_cancel_by_key(fresh().await).await;
    timers_are_never_due_early_and_can_keep_the_earlier_time(fresh().await).await;
    outbox_dedupes_by_key(fresh().await).await;
    outbox_ready_follows_state(fresh().await).await;
    cursors_and_people(fresh().await).await;
    concurrent_commits_all_land(fresh().await).await;
    channels_have_separate_queues(fresh().await).await;
    entries_due_together_keep_queue_order(fresh().await).await;
    suppression_is_case_insensitive(fresh().await).await;
    buckets_collect_and_delete(fresh().await).await;
    export_import_round_trip(fresh().await, fresh().await).await;
    lead_writes_check_the_version_they_were_decided_on(fresh().await).await;
    a_refused_batch_changes_nothing(fresh().await).await;
    two_writers_racing_on_one_lead_one_wins(fresh().await).await;
    due_timer_query_reads_what_is_due(fresh().await).await;
    group_commit_groups(fresh().await).await;
    open_handoffs_follow_the_leads(fresh().await).await;
    scored_activities_round_trip(fresh().await).await;
    seen_activities_are_remembered(fresh().await).await;
    batched_reads_answer_in_order(fresh().await).await;
    leads_per_stage_are_counted(fresh().await).await;
    guard_state_round_trips_atomically(fresh().await).await;
    held_entries_leave_the_ready_queue_and_come_back(fresh().await).await;
    guard_and_held_entries_survive_export_import(fresh().await, fresh().await).await;
}

/// The guard's switches: nothing paused in a new store; a write replaces them; written in the
/// same batch as other changes, they land with them or not at all.
pub async fn guard_state_round_trips_atomically(store: Arc<dyn Store>) {
    use leadloop_core::guard::{GuardState, Pause, Surge};
    assert_eq!(store.guard().await.expect("guard"), GuardState::default());
    let paused = GuardState {
        email: Some(Pause {
            since: t0(),
            by: Actor::Admin { who: "ops".into() },
            reason: "template bug".into(),
        }),
        surge: Some(Surge { tripped_at: t0(), since: t0() - TimeDelta::minutes(30), queued: 5001 }),
        events: 2,
        ..GuardState::default()
    };
    let mut batch = Batch::new();
    batch.set_guard(paused.clone()).put_item(
        crate::GUARD_LOG_BUCKET,
        crate::guard_log_key(2),
        serde_json::json!({"n": 2}),
    );
    store.commit(batch).await.expect("commit");
    assert_eq!(store.guard().await.expect("guard"), paused);
    // A refused batch (a stale lead write) leaves the guard as it was.
    let mut batch = Batch::new();
    batch.set_guard(GuardState::default()).put_lead_expecting(versioned("00Q9", 2), Expect::Version(1));
    assert!(matches!(store.commit(batch).await, Err(StoreError::Conflict { .. })));
    assert_eq!(store.guard().await.expect("guard"), paused);
    let resumed = GuardState { events: 3, ..GuardState::default() };
    let mut batch = Batch::new();
    batch.set_guard(resumed.clone());
    store.commit(batch).await.expect("commit");
    assert_eq!(store.guard().await.expect("guard"), resumed);
    assert_eq!(store.items(crate::GUARD_LOG_BUCKET).await.expect("log").len(), 1);
}

fn nurture(key: &str) -> OutboxEntry {
    let mut entry = email(key);
    if let Effect::Email { kind, .. } = &mut entry.effect {
        *kind = "nurture".into();
    }
    entry
}

/// A held entry is out of the ready queue and the pending count, listed by `outbox_held` in
/// queue order (per channel, after a given number), and back in the ready queue once released.
pub async fn held_entries_leave_the_ready_queue_and_come_back(store: Arc<dyn Store>) {
    use leadloop_core::guard::HoldReason;
    let mut batch = Batch::new();
    for key in ["n1", "n2", "n3"] {
        batch.enqueue(nurture(key));
    }
    store.commit(batch).await.expect("commit");
    let queued = store.outbox_ready(Channel::Email, t0(), 10).await.expect("ready");
    let mut batch = Batch::new();
    for entry in queued.iter().take(2).cloned() {
        let reason = if entry.key.as_str() == "n1" { HoldReason::Paused } else { HoldReason::Surge };
        batch.update_outbox(OutboxEntry { state: OutboxState::Held { since: t0(), reason }, ..entry });
    }
    store.commit(batch).await.expect("commit");
    let keys = |entries: &[OutboxEntry]| entries.iter().map(|e| e.key.to_string()).collect::<Vec<_>>();
    assert_eq!(keys(&store.outbox_ready(Channel::Email, t0(), 10).await.expect("ready")), ["n3"]);
    assert_eq!(store.outbox_pending(Channel::Email).await.expect("pending").0, 1);
    let held = store.outbox_held(Channel::Email, 0, 10).await.expect("held");
    assert_eq!(keys(&held), ["n1", "n2"]);
    assert!(matches!(held[1].state, OutboxState::Held { reason: HoldReason::Surge, .. }));
    assert_eq!(keys(&store.outbox_held(Channel::Email, held[0].seq, 10).await.expect("held")), ["n2"]);
    assert_eq!(keys(&store.outbox_held(Channel::Email, 0, 1).await.expect("held")), ["n1"]);
    assert!(store.outbox_held(Channel::Crm, 0, 10).await.expect("held").is_empty());
    // Released: pending again, due now, its age counted from the release.
    let later = t0() + TimeDelta::days(5);
    let mut released = held[0].clone();
    released.state = OutboxState::Pending;
    released.next_attempt_at = later;
    released.released_at = Some(later);
    let mut batch = Batch::new();
    batch.update_outbox(released.clone());
    store.commit(batch).await.expect("commit");
    assert_eq!(keys(&store.outbox_held(Channel::Email, 0, 10).await.expect("held")), ["n2"]);
    let ready = store.outbox_ready(Channel::Email, later, 10).await.expect("ready");
    assert_eq!(keys(&ready), ["n3", "n1"]);
    assert_eq!(ready[1].released_at, Some(later));
    assert_eq!(store.outbox_pending(Channel::Email).await.expect("pending").0, 2);
}

/// An export carries the guard's switches and held entries; the import holds them again.
pub async fn guard_and_held_entries_survive_export_import(source: Arc<dyn Store>, target: Arc<dyn Store>) {
    use leadloop_core::guard::{GuardState, HoldReason, Pause};
    let state = GuardState {
        nurture: Some(Pause {
            since: t0(),
            by: Actor::Rule { name: "guard.bounces".into() },
            reason: "r".into(),
        }),
        events: 1,
        ..GuardState::default()
    };
    let mut held = nurture("h1");
    held.state = OutboxState::Held { since: t0(), reason: HoldReason::Paused };
    let mut batch = Batch::new();
    batch.set_guard(state.clone()).enqueue(nurture("h1"));
    source.commit(batch).await.expect("commit");
    let mut batch = Batch::new();
    batch.update_outbox(held);
    source.commit(batch).await.expect("commit");
    let dir = tempfile_dir();
    let file = dir.join("guard.jsonl");
    let exported = export(source.as_ref(), &file).await.expect("export");
    import(target.as_ref(), &file).await.expect("import");
    assert_eq!(export(target.as_ref(), &dir.join("again.jsonl")).await.expect("export again"), exported);
    assert_eq!(target.guard().await.expect("guard"), state);
    let keys: Vec<String> = target
        .outbox_held(Channel::Email, 0, 10)
        .await
        .expect("held")
        .iter()
        .map(|e| e.key.to_string())
        .collect();
    assert_eq!(keys, ["h1"]);
    assert!(target.outbox_ready(Channel::Email, t0(), 10).await.expect("ready").is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

pub async fn leads_per_stage_are_counted(store: Arc<dyn Store>) {
    use leadloop_core::Stage;
    let count =
        |list: Vec<(Stage, u64)>, stage: Stage| list.into_iter().find(|(s, _)| *s == stage).map(|(_, n)| n);
    let counts = store.leads_per_stage().await.expect("counts");
    assert_eq!(counts.len(), Stage::ALL.len(), "every stage is listed");
    assert!(counts.iter().all(|(_, n)| *n == 0));
    let mut batch = Batch::new();
    for id in ["00Q1", "00Q2", "00Q3"] {
        batch.put_lead(lead(id));
    }
    let mut qualified = lead("00Q4");
    qualified.stage = Stage::MarketingQualified;
    batch.put_lead(qualified.clone());
    store.commit(batch).await.expect("commit");
    let counts = store.leads_per_stage().await.expect("counts");
    assert_eq!(count(counts.clone(), Stage::JustAName), Some(3));
    assert_eq!(count(counts, Stage::MarketingQualified), Some(1));
    // A lead moving on, a lead rewritten in the same stage, a lead deleted.
    let mut moved = lead("00Q1");
    moved.stage = Stage::MarketingQualified;
    let mut batch = Batch::new();
    batch
        .put_lead(moved)
        .put_lead(lead("00Q2"))
        .put_lead(qualified)
        .delete_lead(LeadId::new("00Q3"), Expect::Any);
    store.commit(batch).await.expect("commit");
    let counts = store.leads_per_stage().await.expect("counts");
    assert_eq!(count(counts.clone(), Stage::JustAName), Some(1));
    assert_eq!(count(counts, Stage::MarketingQualified), Some(2));
}

/// A lead with a running hand-off owned by `owner`.
pub fn lead_in_handoff(id: &str, owner: &str) -> LeadRecord {
    let mut record = lead(id);
    record.handoffs = 1;
    record.handoff = Some(leadloop_core::sla::Handoff {
        number: 1,
        owner: PersonId::new(owner),
        status: Some("Open".into()),
        started_at: t0(),
        policy: "default".into(),
        next_step: 1,
        paused_seconds: 0,
        hold: None,
        status_written_over: None,
    });
    record
}

fn versioned(id: &str, version: u64) -> LeadRecord {
    let mut record = lead(id);
    record.version = version;
    record
}

fn conflict(result: crate::Result<crate::Committed>) -> (Expect, Found) {
    match result {
        Err(StoreError::Conflict { expected, found, .. }) => (expected, found),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

pub async fn lead_writes_check_the_version_they_were_decided_on(store: Arc<dyn Store>) {
    let write = |record: LeadRecord, expect: Expect| {
        let mut batch = Batch::new();
        batch.put_lead_expecting(record, expect);
        batch
    };
    store.commit(write(versioned("00Q1", 1), Expect::Absent)).await.expect("create");
    // Created again by a writer that did not see the first: refused.
    assert_eq!(
        conflict(store.commit(write(versioned("00Q1", 1), Expect::Absent)).await),
        (Expect::Absent, Found::Version(1))
    );
    store.commit(write(versioned("00Q1", 2), Expect::Version(1))).await.expect("update");
    // Decided on version 1, but version 2 is stored: refused, and 2 stays.
    assert_eq!(
        conflict(store.commit(write(versioned("00Q1", 2), Expect::Version(1))).await),
        (Expect::Version(1), Found::Version(2))
    );
    assert_eq!(store.lead(&LeadId::new("00Q1")).await.expect("read").map(|r| r.version), Some(2));
    // A write must move the version on, or a later writer could not tell it happened.
    let mut batch = Batch::new();
    batch.put_lead_expecting(versioned("00Q1", 2), Expect::Version(2));
    assert!(store.commit(batch).await.is_err(), "a write that keeps the version is refused");
    // Deleting checks the same way.
    let mut batch = Batch::new();
    batch.delete_lead(LeadId::new("00Q1"), Expect::Version(1));
    assert_eq!(conflict(store.commit(batch).await), (Expect::Version(1), Found::Version(2)));
    let mut batch = Batch::new();
    batch.delete_lead(LeadId::new("00Q1"), Expect::Version(2));
    store.commit(batch).await.expect("delete");
    assert_eq!(store.lead(&LeadId::new("00Q1")).await.expect("read"), None);
    let mut batch = Batch::new();
    batch.put_lead_expecting(versioned("00Q1", 3), Expect::Version(2));
    assert_eq!(conflict(store.commit(batch).await), (Expect::Version(2), Found::Absent));
}

/// Atomicity, through the trait: a batch whose last op is refused leaves no trace of the ops
/// before it — lead, history, timer, outbox entry, cursor, item, suppression.
pub async fn a_refused_batch_changes_nothing(store: Arc<dyn Store>) {
    let mut batch = Batch::new();
    batch.put_lead_expecting(versioned("00Q2", 1), Expect::Absent);
    store.commit(batch).await.expect("seed");
    let pending_before = store.outbox_pending(Channel::Email).await.expect("pending");
    let mut batch = Batch::new();
    batch
        .put_lead_expecting(versioned("00Q1", 1), Expect::Absent)
        .append_history(LeadId::new("00Q1"), event(0, "created"))
        .set_timer(timer("t1", t0()))
        .enqueue(email("e1"))
        .set_cursor("c", "1")
        .put_item("b", "k", serde_json::json!(1))
        .suppress(Suppression { address: "x@y.example".into(), reason: "r".into(), at: t0() })
        .mark_seen(LeadId::new("00Q1"), "task/1/x")
        // Stale: 00Q2 is at version 1.
        .put_lead_expecting(versioned("00Q2", 1), Expect::Absent);
    conflict(store.commit(batch).await);
    assert_eq!(store.lead(&LeadId::new("00Q1")).await.expect("read"), None);
    assert!(store.history(&LeadId::new("00Q1")).await.expect("history").is_empty());
    assert_eq!(store.timer(&TimerKey::new("t1")).await.expect("timer"), None);
    assert_eq!(
        store.outbox_entry(&IdempotencyKey::parse("e1").expect("valid key")).await.expect("entry"),
        None
    );
    assert_eq!(store.outbox_pending(Channel::Email).await.expect("pending"), pending_before);
    assert_eq!(store.cursor("c").await.expect("cursor"), None);
    assert!(store.items("b").await.expect("items").is_empty());
    assert_eq!(store.suppression("x@y.example").await.expect("suppression"), None);
    assert_eq!(store.seen(&[(LeadId::new("00Q1"), "task/1/x".into())]).await.expect("seen"), [false]);
    // The same batch without the stale write goes through, queue order intact.
    let mut batch = Batch::new();
    batch.put_lead_expecting(versioned("00Q1", 1), Expect::Absent).enqueue(email("e1"));
    store.commit(batch).await.expect("commit");
    assert_eq!(store.outbox_pending(Channel::Email).await.expect("pending").0, pending_before.0 + 1);
}

/// Two writers read the same version and commit at once: exactly one wins, the other is told.
pub async fn two_writers_racing_on_one_lead_one_wins(store: Arc<dyn Store>) {
    let mut batch = Batch::new();
    batch.put_lead_expecting(versioned("00Q1", 1), Expect::Absent);
    store.commit(batch).await.expect("seed");
    for round in 1..=20u64 {
        let read = store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
        assert_eq!(read.version, round);
        let writers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|writer| {
                let store = Arc::clone(&store);
                let mut record = read.clone();
                record.version += 1;
                record.lead.title = Some(writer.to_owned());
                tokio::spawn(async move {
                    let mut batch = Batch::new();
                    batch
                        .put_lead_expecting(record, Expect::Version(round))
                        .enqueue(email(&format!("race/{round}/{writer}")));
                    store.commit(batch).await
                })
            })
            .collect();
        let mut won = Vec::new();
        for (writer, task) in ["a", "b"].into_iter().zip(writers) {
            match task.await.expect("task") {
                Ok(_) => won.push(writer),
                Err(StoreError::Conflict { found, .. }) => assert_eq!(found, Found::Version(round + 1)),
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: exactly one writer wins, got {won:?}");
        let stored = store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
        assert_eq!(stored.lead.title.as_deref(), Some(won[0]), "the winner's write is the one stored");
        let loser = if won[0] == "a" { "b" } else { "a" };
        let key = IdempotencyKey::from_parts(["race".to_owned(), round.to_string(), loser.to_string()])
            .expect("valid key");
        assert_eq!(
            store.outbox_entry(&key).await.expect("entry"),
            None,
            "the loser's effects are not queued"
        );
    }
}

/// The due-timer query reads what is due, whatever the index holds (counted, not timed).
pub async fn due_timer_query_reads_what_is_due(store: Arc<dyn Store>) {
    let mut batch = Batch::new();
    for i in 0..2_000i64 {
        // 10 due at t0, the rest spread over the next weeks.
        let due = if i < 10 { t0() - TimeDelta::minutes(i) } else { t0() + TimeDelta::minutes(i) };
        batch.set_timer(timer(&format!("t{i:05}"), due));
    }
    store.commit(batch).await.expect("commit");
    let before = store.stats().records_read;
    assert!(store.due_timers(t0() - TimeDelta::hours(1), 100).await.expect("due").is_empty());
    assert_eq!(store.stats().records_read - before, 0, "nothing due reads nothing");
    let before = store.stats().records_read;
    assert_eq!(store.due_timers(t0(), 100).await.expect("due").len(), 10);
    assert_eq!(store.stats().records_read - before, 10, "ten due read ten records");
    let before = store.stats().records_read;
    assert_eq!(store.due_timers(t0() + TimeDelta::days(60), 25).await.expect("due").len(), 25);
    assert_eq!(store.stats().records_read - before, 25, "a limit bounds what is read");
}

/// Commits that arrive together share flushes.
pub async fn group_commit_groups(store: Arc<dyn Store>) {
    let before = store.stats();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut batch = Batch::new();
                batch.set_cursor(format!("c{i}"), "1");
                store.commit(batch).await.expect("commit");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let after = store.stats();
    let commits = after.commits - before.commits;
    let flushes = after.flushes - before.flushes;
    assert_eq!(commits, 200);
    assert!(flushes < commits / 2, "200 concurrent commits took {flushes} flushes: they must share them");
}

pub async fn open_handoffs_follow_the_leads(store: Arc<dyn Store>) {
    assert!(store.open_handoffs().await.expect("open").is_empty());
    let mut batch = Batch::new();
    batch
        .put_lead(lead_in_handoff("00Q1", "005A"))
        .put_lead(lead_in_handoff("00Q2", "005A"))
        .put_lead(lead("00Q3"));
    store.commit(batch).await.expect("commit");
    let open = |list: Vec<(LeadId, PersonId)>| list.into_iter().map(|(l, p)| (l.0, p.0)).collect::<Vec<_>>();
    assert_eq!(
        open(store.open_handoffs().await.expect("open")),
        [("00Q1".to_owned(), "005A".to_owned()), ("00Q2".to_owned(), "005A".to_owned())]
    );
    // Reassigned, ended, deleted: the index moves with the lead, in the same batch.
    let mut batch = Batch::new();
    batch
        .put_lead(lead_in_handoff("00Q1", "005B"))
        .put_lead(lead("00Q2"))
        .put_lead(lead_in_handoff("00Q3", "005A"));
    store.commit(batch).await.expect("commit");
    assert_eq!(
        open(store.open_handoffs().await.expect("open")),
        [("00Q1".to_owned(), "005B".to_owned()), ("00Q3".to_owned(), "005A".to_owned())]
    );
    let mut batch = Batch::new();
    batch.delete_lead(LeadId::new("00Q3"), Expect::Any);
    store.commit(batch).await.expect("commit");
    assert_eq!(open(store.open_handoffs().await.expect("open")), [("00Q1".to_owned(), "005B".to_owned())]);
    let before = store.stats().records_read;
    store.open_handoffs().await.expect("open");
    assert_eq!(store.stats().records_read - before, 1, "costs what is open, not every lead");
    assert_eq!(store.open_handoffs_per_owner().await.expect("per owner"), [(PersonId::new("005B"), 1)]);
    let mut batch = Batch::new();
    batch.put_lead(lead_in_handoff("00Q2", "005B")).put_lead(lead_in_handoff("00Q4", "005A"));
    store.commit(batch).await.expect("commit");
    assert_eq!(
        store.open_handoffs_per_owner().await.expect("per owner"),
        [(PersonId::new("005A"), 1), (PersonId::new("005B"), 2)]
    );
}

pub async fn scored_activities_round_trip(store: Arc<dyn Store>) {
    let scored = |n: usize| {
        (0..n)
            .map(|i| leadloop_core::scoring::ScoredActivity {
                at: t0() + TimeDelta::minutes(i as i64),
                rule: format!("rule{i}"),
                points: i as f64,
            })
            .collect::<Vec<_>>()
    };
    let mut record = lead("00Q1");
    record.scored = scored(3);
    let mut batch = Batch::new();
    batch.put_lead(record.clone());
    store.commit(batch).await.expect("commit");
    assert_eq!(store.lead(&LeadId::new("00Q1")).await.expect("read"), Some(record.clone()));
    // Other fields change, the activities stay; then they change; then they go.
    record.lead.title = Some("CTO".into());
    for list in [scored(3), scored(5), Vec::new()] {
        record.scored = list;
        let mut batch = Batch::new();
        batch.put_lead(record.clone());
        store.commit(batch).await.expect("commit");
        assert_eq!(store.lead(&LeadId::new("00Q1")).await.expect("read"), Some(record.clone()));
        assert_eq!(store.leads(None, 10).await.expect("leads"), vec![record.clone()]);
    }
}

pub async fn seen_activities_are_remembered(store: Arc<dyn Store>) {
    let key = |lead: &str, key: &str| (LeadId::new(lead), key.to_owned());
    let mut batch = Batch::new();
    batch.mark_seen(LeadId::new("00Q1"), "task/00T1/2026-03-02T14:00:00.000Z");
    store.commit(batch).await.expect("commit");
    assert_eq!(
        store
            .seen(&[
                key("00Q1", "task/00T1/2026-03-02T14:00:00.000Z"),
                key("00Q1", "task/00T1/2026-03-02T15:00:00.000Z"),
                key("00Q10", "task/00T1/2026-03-02T14:00:00.000Z"),
            ])
            .await
            .expect("seen"),
        [true, false, false]
    );
}

pub async fn batched_reads_answer_in_order(store: Arc<dyn Store>) {
    let mut batch = Batch::new();
    batch.put_lead(lead("00Q1")).put_lead(lead("00Q3")).suppress(Suppression {
        address: "B@x.example".into(),
        reason: "opted out".into(),
        at: t0(),
    });
    store.commit(batch).await.expect("commit");
    let ids = [LeadId::new("00Q3"), LeadId::new("00Q2"), LeadId::new("00Q1")];
    let found: Vec<Option<String>> =
        store.leads_by_id(&ids).await.expect("read").into_iter().map(|r| r.map(|r| r.lead.id.0)).collect();
    assert_eq!(found, [Some("00Q3".to_owned()), None, Some("00Q1".to_owned())]);
    let checks =
        store.suppressions(&["a@x.example".into(), "b@X.example".into()]).await.expect("suppressions");
    assert_eq!(checks.iter().map(Option::is_some).collect::<Vec<_>>(), [false, true]);
}

pub async fn channels_have_separate_queues(store: Arc<dyn Store>) {
    let write = OutboxEntry::new(
        IdempotencyKey::parse("w1").expect("valid key"),
        Effect::CrmUpdate { lead_id: LeadId::new("00Q1"), fields: Default::default() },
        t0() - TimeDelta::minutes(5),
    );
    let hold = OutboxEntry::new(
        IdempotencyKey::parse("h1").expect("valid key"),
        Effect::CalendarHold {
            person: leadloop_core::PersonId::new("005A"),
            lead_id: LeadId::new("00Q1"),
            start: t0() + TimeDelta::hours(1),
            end: t0() + TimeDelta::hours(2),
            summary: "Call Ana".into(),
        },
        t0(),
    );
    let chat = OutboxEntry::new(
        IdempotencyKey::parse("sla/00Q1/1/alert/slack").expect("valid key"),
        Effect::Chat {
            kind: "sla.alert".into(),
            service: leadloop_core::ChatService::Slack,
            to: "rep@x.example".into(),
            person: Some(leadloop_core::PersonId::new("005A")),
            lead_id: Some(LeadId::new("00Q1")),
            vars: serde_json::json!({ "step": "alert" }),
            fallback: Some(leadloop_core::ChatFallback {
                key: IdempotencyKey::parse("sla/00Q1/1/alert").expect("valid key"),
                template: "sla_alert".into(),
                to: vec!["rep@x.example".into()],
                cc: vec![],
            }),
        },
        t0(),
    );
    let mut batch = Batch::new();
    batch.enqueue(email("e1")).enqueue(write).enqueue(hold).enqueue(chat.clone()).enqueue(email("e2"));
    store.commit(batch).await.expect("commit");
    // A chat message has its own queue, and reads back whole (its fallback email too).
    let ready = store.outbox_ready(Channel::Chat, t0(), 10).await.expect("ready");
    assert_eq!(ready.len(), 1);
    assert_eq!((&ready[0].key, &ready[0].effect), (&chat.key, &chat.effect));
    assert_eq!(store.outbox_pending(Channel::Chat).await.expect("pending"), (1, Some(t0())));
    let keys = |entries: Vec<OutboxEntry>| entries.into_iter().map(|e| e.key.to_string()).collect::<Vec<_>>();
    assert_eq!(keys(store.outbox_ready(Channel::Email, t0(), 10).await.expect("ready")), ["e1", "e2"]);
    assert_eq!(keys(store.outbox_ready(Channel::Crm, t0(), 10).await.expect("ready")), ["w1"]);
    assert_eq!(keys(store.outbox_ready(Channel::Calendar, t0(), 10).await.expect("ready")), ["h1"]);
    assert_eq!(store.outbox_pending(Channel::Calendar).await.expect("pending"), (1, Some(t0())));
    assert_eq!(store.outbox_pending(Channel::Email).await.expect("pending"), (2, Some(t0())));
    assert_eq!(
        store.outbox_pending(Channel::Crm).await.expect("pending"),
        (1, Some(t0() - TimeDelta::minutes(5)))
    );
    let mut done = email("e1");
    done.state = OutboxState::Done { at: t0() };
    let mut batch = Batch::new();
    batch.update_outbox(done);
    store.commit(batch).await.expect("commit");
    assert_eq!(store.outbox_pending(Channel::Email).await.expect("pending"), (1, Some(t0())));
}

pub async fn entries_due_together_keep_queue_order(store: Arc<dyn Store>) {
    let mut batch = Batch::new();
    batch.enqueue(email("sla/1/alert")).enqueue(email("sla/1/reminder")).enqueue(email("sla/1/manager"));
    store.commit(batch).await.expect("commit");
    let mut batch = Batch::new();
    batch.enqueue(email("sla/1/executive"));
    store.commit(batch).await.expect("commit");
    let keys = |entries: Vec<OutboxEntry>| entries.into_iter().map(|e| e.key.to_string()).collect::<Vec<_>>();
    let ready = store.outbox_ready(Channel::Email, t0(), 10).await.expect("ready");
    assert_eq!(keys(ready.clone()), ["sla/1/alert", "sla/1/reminder", "sla/1/manager", "sla/1/executive"]);
    // A retry keeps the entry's place among entries due at the same instant.
    let mut retry = ready[0].clone();
    retry.attempts = 1;
    let mut batch = Batch::new();
    batch.update_outbox(retry);
    store.commit(batch).await.expect("commit");
    assert_eq!(keys(store.outbox_ready(Channel::Email, t0(), 10).await.expect("ready"))[0], "sla/1/alert");
}

pub async fn buckets_collect_and_delete(store: Arc<dyn Store>) {
    assert!(store.items("digest/005M").await.expect("items").is_empty());
    let mut batch = Batch::new();
    batch
        .put_item("digest/005M", "00Q2/1", serde_json::json!({ "n": 2 }))
        .put_item("digest/005M", "00Q1/1", serde_json::json!({ "n": 1 }))
        .put_item("digest/005M", "00Q1/1", serde_json::json!({ "n": 11 }))
        .put_item("digest/005M2", "x", serde_json::json!(null));
    store.commit(batch).await.expect("commit");
    let items = store.items("digest/005M").await.expect("items");
    assert_eq!(
        items,
        vec![
            ("00Q1/1".to_owned(), serde_json::json!({ "n": 11 })),
            ("00Q2/1".to_owned(), serde_json::json!({ "n": 2 }))
        ]
    );
    let mut batch = Batch::new();
    batch.push(crate::Op::DeleteItem { bucket: "digest/005M".into(), key: "00Q1/1".into() });
    batch.push(crate::Op::DeleteItem { bucket: "digest/005M".into(), key: "00Q2/1".into() });
    store.commit(batch).await.expect("commit");
    assert!(store.items("digest/005M").await.expect("items").is_empty());
    assert_eq!(store.items("digest/005M2").await.expect("items").len(), 1, "other buckets untouched");
}

pub async fn suppression_is_case_insensitive(store: Arc<dyn Store>) {
    assert_eq!(store.suppression("Ana@Acme.Example").await.expect("read"), None);
    let mut batch = Batch::new();
    batch.suppress(Suppression {
        address: "Ana@Acme.Example".into(),
        reason: "hard bounce: 550 user unknown".into(),
        at: t0(),
    });
    store.commit(batch).await.expect("commit");
    let entry = store.suppression("ana@acme.example").await.expect("read").expect("suppressed");
    assert_eq!(entry.address, "ana@acme.example");
    assert!(store.suppression("ANA@ACME.EXAMPLE").await.expect("read").is_some());
    let mut batch = Batch::new();
    batch.push(crate::Op::Unsuppress("ANA@acme.example".into()));
    store.commit(batch).await.expect("commit");
    assert_eq!(store.suppression("ana@acme.example").await.expect("read"), None);
}

pub async fn leads_round_trip_in_id_order(store: Arc<dyn Store>) {
    assert!(store.is_empty().await.expect("is_empty"));
    let mut batch = Batch::new();
    for id in ["00Q3", "00Q1", "00Q2", "00Q10"] {
        batch.put_lead(lead(id));
    }
    store.commit(batch).await.expect("commit");
    assert!(!store.is_empty().await.expect("is_empty"));
    assert_eq!(store.lead(&LeadId::new("00Q2")).await.expect("read"), Some(lead("00Q2")));
    assert_eq!(store.lead(&LeadId::new("00Q9")).await.expect("read"), None);
    let ids = |records: Vec<LeadRecord>| records.into_iter().map(|r| r.lead.id.0).collect::<Vec<_>>();
    assert_eq!(ids(store.leads(None, 10).await.expect("list")), ["00Q1", "00Q10", "00Q2", "00Q3"]);
    assert_eq!(ids(store.leads(None, 2).await.expect("list")), ["00Q1", "00Q10"]);
    assert_eq!(ids(store.leads(Some(&LeadId::new("00Q10")), 10).await.expect("list")), ["00Q2", "00Q3"]);
    let mut batch = Batch::new();
    batch.delete_lead(LeadId::new("00Q1"), crate::Expect::Any);
    store.commit(batch).await.expect("commit");
    assert_eq!(store.lead(&LeadId::new("00Q1")).await.expect("read"), None);
}

pub async fn history_appends_in_order_per_lead(store: Arc<dyn Store>) {
    let (a, ab) = (LeadId::new("a"), LeadId::new("ab"));
    let mut batch = Batch::new();
    batch
        .append_history(a.clone(), event(1, "one"))
        .append_history(ab.clone(), event(1, "other"))
        .append_history(a.clone(), event(2, "two"));
    store.commit(batch).await.expect("commit");
    let mut batch = Batch::new();
    batch.append_history(a.clone(), event(3, "three"));
    store.commit(batch).await.expect("commit");
    let history = store.history(&a).await.expect("history");
    assert_eq!(history, vec![(1, event(1, "one")), (2, event(2, "two")), (3, event(3, "three"))]);
    assert_eq!(store.history(&ab).await.expect("history"), vec![(1, event(1, "other"))]);
    assert!(store.history(&LeadId::new("none")).await.expect("history").is_empty());
}

pub async fn due_timers_cost_what_is_due(store: Arc<dyn Store>) {
    assert_eq!(store.next_timer_due().await.expect("next"), None);
    let mut batch = Batch::new();
    for (key, hours) in [("c", 3), ("a", 1), ("b", 2), ("early", -1), ("d", 48)] {
        batch.set_timer(timer(key, t0() + TimeDelta::hours(hours)));
    }
    store.commit(batch).await.expect("commit");
    assert_eq!(store.next_timer_due().await.expect("next"), Some(t0() - TimeDelta::hours(1)));
    let keys = |timers: Vec<Timer>| timers.into_iter().map(|t| t.key.0).collect::<Vec<_>>();
    assert_eq!(keys(store.due_timers(t0(), 100).await.expect("due")), ["early"]);
    assert_eq!(
        keys(store.due_timers(t0() + TimeDelta::hours(2), 100).await.expect("due")),
        ["early", "a", "b"]
    );
    assert_eq!(keys(store.due_timers(t0() + TimeDelta::hours(2), 2).await.expect("due")), ["early", "a"]);
    // A timer due exactly now is due.
    assert_eq!(
        keys(store.due_timers(t0() + TimeDelta::hours(3), 100).await.expect("due"))
            .last()
            .map(String::as_str),
        Some("c")
    );
    // One millisecond early, it is not.
    let almost = t0() + TimeDelta::hours(3) - TimeDelta::milliseconds(1);
    assert!(!keys(store.due_timers(almost, 100).await.expect("due")).contains(&"c".to_owned()));
}

pub async fn timers_move_and_cancel_by_key(store: Arc<dyn Store>) {
    let mut batch = Batch::new();
    batch.set_timer(timer("x", t0() + TimeDelta::hours(5)));
    store.commit(batch).await.expect("commit");
    // Moving the timer earlier leaves one timer, at the new time.
    let mut batch = Batch::new();
    batch.set_timer(timer("x", t0() + TimeDelta::hours(1)));
    store.commit(batch).await.expect("commit");
    let due = store.due_timers(t0() + TimeDelta::hours(10), 100).await.expect("due");
    assert_eq!(due, vec![timer("x", t0() + TimeDelta::hours(1))]);
    assert_eq!(
        store.timer(&TimerKey::new("x")).await.expect("timer"),
        Some(timer("x", t0() + TimeDelta::hours(1)))
    );
    // Cancel, and cancel again: both fine.
    let mut batch = Batch::new();
    batch
        .cancel_timer(TimerKey::new("x"))
        .cancel_timer(TimerKey::new("x"))
        .cancel_timer(TimerKey::new("never"));
    store.commit(batch).await.expect("commit");
    assert!(store.due_timers(t0() + TimeDelta::hours(10), 100).await.expect("due").is_empty());
    assert_eq!(store.timer(&TimerKey::new("x")).await.expect("timer"), None);
    // Set, move and cancel within one batch.
    let mut batch = Batch::new();
    batch
        .set_timer(timer("y", t0()))
        .set_timer(timer("y", t0() + TimeDelta::hours(2)))
        .set_timer(timer("z", t0()))
        .cancel_timer(TimerKey::new("z"));
    store.commit(batch).await.expect("commit");
    let due = store.due_timers(t0() + TimeDelta::hours(10), 100).await.expect("due");
    assert_eq!(due, vec![timer("y", t0() + TimeDelta::hours(2))]);
    assert_eq!(store.next_timer_due().await.expect("next"), Some(t0() + TimeDelta::hours(2)));
}

pub async fn timers_are_never_due_early_and_can_keep_the_earlier_time(store: Arc<dyn Store>) {
    // Due half a millisecond after t0: not due at t0, due a millisecond later.
    let half = timer("half", t0() + TimeDelta::microseconds(500));
    let mut batch = Batch::new();
    batch.set_timer(half);
    store.commit(batch).await.expect("commit");
    assert!(store.due_timers(t0(), 10).await.expect("due").is_empty());
    assert_eq!(store.due_timers(t0() + TimeDelta::milliseconds(1), 10).await.expect("due").len(), 1);
    assert!(
        store
            .next_timer_due()
            .await
            .expect("next")
            .is_some_and(|at| at >= t0() + TimeDelta::microseconds(500))
    );
    // SetTimerEarliest keeps an earlier time, and takes a later key's place only when earlier.
    let mut batch = Batch::new();
    batch.set_timer(timer("digest", t0() + TimeDelta::hours(1)));
    batch.push(crate::Op::SetTimerEarliest(timer("digest", t0() + TimeDelta::hours(20))));
    store.commit(batch).await.expect("commit");
    assert_eq!(
        store.timer(&TimerKey::new("digest")).await.expect("timer").map(|t| t.due),
        Some(t0() + TimeDelta::hours(1))
    );
    let mut batch = Batch::new();
    batch.push(crate::Op::SetTimerEarliest(timer("digest", t0() + TimeDelta::minutes(30))));
    store.commit(batch).await.expect("commit");
    assert_eq!(
        store.timer(&TimerKey::new("digest")).await.expect("timer").map(|t| t.due),
        Some(t0() + TimeDelta::minutes(30))
    );
    assert_eq!(
        store.due_timers(t0() + TimeDelta::hours(30), 10).await.expect("due").len(),
        2,
        "one timer per key"
    );
}

pub async fn outbox_dedupes_by_key(store: Arc<dyn Store>) {
    let mut batch = Batch::new();
    batch.enqueue(email("k1")).enqueue(email("k1")).enqueue(email("k2"));
    let committed = store.commit(batch).await.expect("commit");
    assert_eq!(
        committed.enqueued,
        vec![
            IdempotencyKey::parse("k1").expect("valid key"),
            IdempotencyKey::parse("k2").expect("valid key")
        ]
    );
    assert_eq!(committed.duplicates, 1);
    // Done entries still dedupe: a decision repeated after a crash sends nothing new.
    let mut done = email("k1");
    done.state = OutboxState::Done { at: t0() };
    let mut batch = Batch::new();
    batch.update_outbox(done.clone());
    store.commit(batch).await.expect("commit");
    let mut batch = Batch::new();
    batch.enqueue(email("k1"));
    let committed = store.commit(batch).await.expect("commit");
    assert!(committed.enqueued.is_empty());
    assert_eq!(committed.duplicates, 1);
    let stored = store
        .outbox_entry(&IdempotencyKey::parse("k1").expect("valid key"))
        .await
        .expect("entry")
        .map(unsequenced);
    assert_eq!(stored, Some(done));
}

/// The entry with its store-assigned queue number cleared, for comparisons.
pub fn unsequenced(entry: OutboxEntry) -> OutboxEntry {
    OutboxEntry { seq: 0, ..entry }
}

pub async fn outbox_ready_follows_state(store: Arc<dyn Store>) {
    let mut batch = Batch::new();
    batch.enqueue(email("a")).enqueue(email("b"));
    store.commit(batch).await.expect("commit");
    let keys = |entries: Vec<OutboxEntry>| entries.into_iter().map(|e| e.key.to_string()).collect::<Vec<_>>();
    assert_eq!(keys(store.outbox_ready(Channel::Email, t0(), 10).await.expect("ready")), ["a", "b"]);
    // "a" failed transiently: retry in 10 minutes.
    let mut retry = email("a");
    retry.attempts = 1;
    retry.next_attempt_at = t0() + TimeDelta::minutes(10);
    retry.last_error = Some("451 try later".into());
    // "b" was sent.
    let mut sent = email("b");
    sent.state = OutboxState::Done { at: t0() };
    let mut batch = Batch::new();
    batch.update_outbox(retry.clone()).update_outbox(sent);
    store.commit(batch).await.expect("commit");
    assert!(store.outbox_ready(Channel::Email, t0(), 10).await.expect("ready").is_empty());
    assert_eq!(
        store
            .outbox_ready(Channel::Email, t0() + TimeDelta::minutes(10), 10)
            .await
            .expect("ready")
            .into_iter()
            .map(unsequenced)
            .collect::<Vec<_>>(),
        vec![retry]
    );
    let mut failed = email("a");
    failed.state = OutboxState::Failed { at: t0(), reason: "550 user unknown".into() };
    let mut batch = Batch::new();
    batch.update_outbox(failed);
    store.commit(batch).await.expect("commit");
    assert!(
        store.outbox_ready(Channel::Email, t0() + TimeDelta::days(365), 10).await.expect("ready").is_empty()
    );
    // The dead letters: failed entries of the channel, in key order; none of another channel.
    let failed = store.outbox_failed(Channel::Email).await.expect("failed");
    assert_eq!(failed.iter().map(|e| e.key.to_string()).collect::<Vec<_>>(), ["a"]);
    assert!(matches!(&failed[0].state, OutboxState::Failed { reason, .. } if reason == "550 user unknown"));
    assert!(store.outbox_failed(Channel::Crm).await.expect("failed").is_empty());
    // Put back in the queue (a replay): pending and ready again, no longer a dead letter.
    let mut again = failed[0].clone();
    again.state = OutboxState::Pending;
    again.attempts = 0;
    again.next_attempt_at = t0();
    let mut batch = Batch::new();
    batch.update_outbox(again);
    store.commit(batch).await.expect("commit");
    assert_eq!(keys(store.outbox_ready(Channel::Email, t0(), 10).await.expect("ready")), ["a"]);
    assert_eq!(store.outbox_pending(Channel::Email).await.expect("pending").0, 1);
    assert!(store.outbox_failed(Channel::Email).await.expect("failed").is_empty());
}

pub async fn cursors_and_people(store: Arc<dyn Store>) {
    assert_eq!(store.cursor("salesforce.lead").await.expect("cursor"), None);
    let mut batch = Batch::new();
    batch
        .set_cursor("salesforce.lead", "2026-03-02T14:00:00Z")
        .put_person(person("005B", Some("005M")))
        .put_person(person("005M", None));
    store.commit(batch).await.expect("commit");
    let mut batch = Batch::new();
    batch.set_cursor("salesforce.lead", "2026-03-02T15:00:00Z");
    store.commit(batch).await.expect("commit");
    assert_eq!(
        store.cursor("salesforce.lead").await.expect("cursor").as_deref(),
        Some("2026-03-02T15:00:00Z")
    );
    assert_eq!(
        store.person(&PersonId::new("005B")).await.expect("person"),
        Some(person("005B", Some("005M")))
    );
    let ids: Vec<_> = store.people().await.expect("people").into_iter().map(|p| p.id.0).collect();
    assert_eq!(ids, ["005B", "005M"]);
}

pub async fn concurrent_commits_all_land(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut batch = Batch::new();
                let id = format!("L{i:03}");
                batch
                    .put_lead(lead(&id))
                    .append_history(LeadId::new(&id), event(i, "created"))
                    .enqueue(email(&id));
                store.commit(batch).await.expect("commit");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(store.leads(None, 1000).await.expect("leads").len(), 64);
    assert_eq!(store.outbox_ready(Channel::Email, t0(), 1000).await.expect("ready").len(), 64);
}

pub async fn export_import_round_trip(source: Arc<dyn Store>, target: Arc<dyn Store>) {
    let mut batch = Batch::new();
    batch
        .put_lead(lead("00Q1"))
        .append_history(LeadId::new("00Q1"), event(0, "created"))
        .append_history(LeadId::new("00Q1"), event(5, "web_visit"))
        .put_person(person("005A", None))
        .set_timer(timer("t1", t0() + TimeDelta::hours(24)))
        .enqueue(email("e1"))
        .set_cursor("salesforce.lead", "c1")
        .mark_seen(LeadId::new("00Q1"), "task/00T1/x");
    source.commit(batch).await.expect("commit");
    let dir = tempfile_dir();
    let first = dir.join("first.jsonl");
    let second = dir.join("second.jsonl");
    let exported = export(source.as_ref(), &first).await.expect("export");
    assert_eq!(exported.records, 8);
    let imported = import(target.as_ref(), &first).await.expect("import");
    assert_eq!(imported, exported);
    let again = export(target.as_ref(), &second).await.expect("export again");
    assert_eq!(again, exported);
    assert_eq!(target.due_timers(t0() + TimeDelta::hours(24), 10).await.expect("due").len(), 1);
    assert_eq!(target.outbox_ready(Channel::Email, t0(), 10).await.expect("ready").len(), 1);
    assert_eq!(target.outbox_pending(Channel::Email).await.expect("pending"), (1, Some(t0())));
    assert_eq!(target.seen(&[(LeadId::new("00Q1"), "task/00T1/x".into())]).await.expect("seen"), [true]);
    // Importing into a store that holds data is refused and changes nothing.
    let refused = import(target.as_ref(), &first).await;
    assert!(refused.is_err());
    // A file altered after export is refused.
    let text = std::fs::read_to_string(&first).expect("read export");
    std::fs::write(&first, text.replace("web_visit", "web_visiT")).expect("write");
    let fresh_error = crate::backup::verify(&first).expect_err("tampered file must fail");
    assert!(fresh_error.to_string().contains("checksum mismatch"), "{fresh_error}");
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("leadloop-conformance-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
