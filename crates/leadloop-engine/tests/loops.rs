//! The engine's loops in virtual time: `Engine::run`, the CRM sync loop (`CrmSync::run`), the
//! CRM write-back relay (`CrmRelay::run`) and the calendar poller (`CalendarPoller::run`),
//! driven by tokio's paused clock (`start_paused`,
//! `tokio::time::advance`) together with the engine's injected `Clock`. Nothing waits in real
//! time except the store's flush, and every instant asserted is exact: a loop that wakes a
//! millisecond early, sleeps past its deadline or keeps a constant backoff fails here.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use leadloop_core::connector::{ChangePage, ConnectorError, Crm, CrmWrite, PullRequest};
use leadloop_core::{
    Clock, Decision, Effect, IdempotencyKey, LeadId, LeadRecord, OrgChart, OutboxEntry, Timer, TimerKey,
    TimerKind, Timestamp, VirtualClock,
};
use leadloop_engine::crm::{CrmRelay, CrmRelayConfig, CrmSync};
use leadloop_engine::relay::{RelayConfig, backoff};
use leadloop_engine::{Engine, EngineError, NoRules, Policy, TICK_LIMIT};
use leadloop_store::{Batch, SledConfig, SledStore, Store};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn start() -> Timestamp {
    "2026-03-02T14:00:00Z".parse().expect("valid instant")
}

fn open(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    SledStore::open(&SledConfig::new(dir.path())).expect("open store")
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).expect("duration fits")
}

/// Lets every task that can run, run (no time passes: a yield never auto-advances the paused
/// clock).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Moves the engine's virtual clock and tokio's paused clock forward together. The virtual
/// clock moves first, so a loop that tokio's timer wakes reads the new instant.
async fn pass(clock: &VirtualClock, by: Duration) {
    clock.advance(delta(by));
    tokio::time::advance(by).await;
    settle().await;
}

/// Waits for `notify` without letting virtual time pass: if nothing notifies it, the paused
/// clock auto-advances to the 1 ms timeout and this fails.
async fn notified(notify: &Notify, what: &str) {
    tokio::time::timeout(Duration::from_millis(1), notify.notified())
        .await
        .unwrap_or_else(|_| panic!("{what}: not without virtual time passing"));
}

/// The engine's clock read off tokio's paused clock, for loops left to run on their own: the
/// runtime's auto-advance moves both together, so a test can simply sleep through hours.
#[derive(Debug)]
struct PausedClock {
    start: Timestamp,
    origin: Instant,
}

impl PausedClock {
    fn new(start: Timestamp) -> Self {
        Self { start, origin: Instant::now() }
    }
}

impl Clock for PausedClock {
    fn now(&self) -> Timestamp {
        self.start + delta(self.origin.elapsed())
    }
}

/// Records each timer it is asked about with the instant, queues one email for it, and can
/// cancel a token when the first timer fires (to stop the loop in the middle of a tick).
#[derive(Default)]
struct Recorder {
    fired: Mutex<Vec<(String, Timestamp)>>,
    cancel_on_fire: Option<CancellationToken>,
}

impl Recorder {
    fn fired(&self) -> Vec<(String, Timestamp)> {
        self.fired.lock().expect("lock").clone()
    }
}

impl Policy for Recorder {
    fn on_timer(
        &self,
        timer: &Timer,
        _lead: Option<&LeadRecord>,
        _people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        self.fired.lock().expect("lock").push((timer.key.as_str().to_owned(), now));
        if let Some(token) = &self.cancel_on_fire {
            token.cancel();
        }
        let mut decision = Decision::default();
        decision.effects.push((
            // A timer's key may hold `/`, which a key part may not: its parts become the key's.
            IdempotencyKey::parse(&format!("fired/{}", timer.key)).expect("valid key"),
            Effect::Email {
                kind: "test".into(),
                template: "t".into(),
                to: vec!["rep@x.example".into()],
                cc: vec![],
                lead_id: None,
                vars: serde_json::json!({}),
                deliver_to: None,
            },
        ));
        decision
    }
}

async fn set_timers(store: &dyn Store, timers: impl IntoIterator<Item = (String, Timestamp)>) {
    let mut batch = Batch::new();
    for (key, due) in timers {
        batch.set_timer(Timer {
            key: TimerKey::new(key),
            due,
            lead_id: None,
            kind: TimerKind::SlaStep { handoff: 1, step: 1 },
        });
    }
    store.commit(batch).await.expect("commit timers");
}

fn spawn_run(
    engine: &Engine,
    max_idle: Duration,
) -> (CancellationToken, JoinHandle<Result<(), EngineError>>) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (engine, shutdown) = (engine.clone(), shutdown.clone());
        async move { engine.run(shutdown, max_idle).await }
    });
    (shutdown, task)
}

/// Cancels `shutdown` and asserts the loop returned at once: no virtual time passes.
async fn stop<T: std::fmt::Debug>(shutdown: CancellationToken, task: JoinHandle<T>) -> T {
    let asked = Instant::now();
    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_millis(1), task)
        .await
        .expect("the loop stopped without waiting out its sleep")
        .expect("join");
    assert_eq!(Instant::now(), asked, "stopping took virtual time");
    ended
}

#[tokio::test(start_paused = true)]
async fn run_ticks_when_a_timer_falls_due_and_not_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let clock = Arc::new(VirtualClock::new(start()));
    let policy = Arc::new(Recorder::default());
    let queued = Arc::new(Notify::new());
    let engine = Engine::new(store.clone(), clock.clone(), policy.clone()).with_waker(queued.clone());
    let minutes = |m: i64| start() + TimeDelta::minutes(m);
    set_timers(store.as_ref(), [("t1".to_owned(), minutes(10)), ("t2".to_owned(), minutes(150))]).await;
    // max_idle far above the gap to t1: the loop must sleep until t1, not until max_idle.
    let max_idle = Duration::from_secs(3600);
    let (shutdown, task) = spawn_run(&engine, max_idle);
    settle().await;
    assert!(policy.fired().is_empty(), "nothing is due at the start");
    // The heartbeat says when the loop promised to turn again: the end of the wait it is in
    // (a loop stuck inside a tick falls behind it; the watchdog looks for that).
    let turned_at = |m: i64| minutes(m).timestamp();
    assert_eq!(engine.heartbeat(), turned_at(10), "the loop waits for t1");

    pass(&clock, Duration::from_secs(600) - Duration::from_millis(1)).await;
    assert!(policy.fired().is_empty(), "t1 fired before it was due");
    assert_eq!(engine.heartbeat(), turned_at(10), "the loop turned before t1 was due");
    pass(&clock, Duration::from_millis(1)).await;
    notified(&queued, "t1's email was queued when t1 fell due").await;
    assert_eq!(policy.fired(), [("t1".to_owned(), minutes(10))]);
    assert_eq!(engine.heartbeat(), turned_at(70), "next: max_idle, t2 is further");

    // t2 is 140 min away, more than max_idle (60 min): the loop turns at minutes 70 and 130
    // without firing it, then sleeps exactly until it.
    for (turn, next) in [(70, 130), (130, 150)] {
        pass(&clock, max_idle - Duration::from_millis(1)).await;
        assert_eq!(engine.heartbeat(), turned_at(turn), "turned before max_idle");
        pass(&clock, Duration::from_millis(1)).await;
        assert_eq!(engine.heartbeat(), turned_at(next), "no turn when max_idle passed");
    }
    pass(&clock, Duration::from_secs(20 * 60) - Duration::from_millis(1)).await;
    assert_eq!(policy.fired().len(), 1, "t2 fired before it was due");
    assert_eq!(engine.heartbeat(), turned_at(150), "the loop turned before t2 was due");
    pass(&clock, Duration::from_millis(1)).await;
    notified(&queued, "t2's email was queued when t2 fell due").await;
    assert_eq!(policy.fired()[1], ("t2".to_owned(), minutes(150)));

    stop(shutdown, task).await.expect("run ends cleanly");
}

/// The watchdog's heartbeat: the loop turns at least every `max_idle` while nothing is due,
/// and not more often, each turn promising the next.
#[tokio::test(start_paused = true)]
async fn run_turns_every_max_idle_and_the_heartbeat_moves_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(VirtualClock::new(start()));
    let engine = Engine::new(open(&dir), clock.clone(), Arc::new(NoRules));
    // The heartbeat set when the engine was built reads start(); the loop's first turn reads
    // a second later, so a loop that never turns cannot pass.
    clock.advance(TimeDelta::seconds(1));
    let max_idle = Duration::from_secs(60);
    let (shutdown, task) = spawn_run(&engine, max_idle);
    settle().await;
    // Each turn promises the next one max_idle later.
    let mut next = start().timestamp() + 1 + 60;
    assert_eq!(engine.heartbeat(), next, "the loop's first turn beats at once");
    for _ in 0..3 {
        pass(&clock, max_idle - Duration::from_millis(1)).await;
        assert_eq!(engine.heartbeat(), next, "turned before max_idle passed");
        pass(&clock, Duration::from_millis(1)).await;
        next += 60;
        assert_eq!(engine.heartbeat(), next, "did not turn when max_idle passed");
    }
    stop(shutdown, task).await.expect("run ends cleanly");
}

#[tokio::test(start_paused = true)]
async fn run_stops_on_shutdown_without_waiting_out_its_sleep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let clock = Arc::new(VirtualClock::new(start()));
    let policy = Arc::new(Recorder::default());
    let engine = Engine::new(store.clone(), clock.clone(), policy.clone());
    set_timers(store.as_ref(), [("t1".to_owned(), start() + TimeDelta::minutes(30))]).await;
    let (shutdown, task) = spawn_run(&engine, Duration::from_secs(3600));
    settle().await;
    pass(&clock, Duration::from_secs(600)).await;
    stop(shutdown, task).await.expect("run ends cleanly");
    // Nothing ticks after shutdown, however long one waits.
    pass(&clock, Duration::from_secs(3600)).await;
    assert!(policy.fired().is_empty());
}

/// More than one tick's worth of timers is due and shutdown comes during the first tick: that
/// tick finishes, and no other starts. (Repeated, because a loop that lets chance pick
/// between "stop" and "go on" passes half the time.)
#[tokio::test(start_paused = true)]
async fn run_starts_no_tick_after_shutdown_even_when_more_is_due() {
    for round in 0..12 {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let shutdown = CancellationToken::new();
        let policy = Arc::new(Recorder { cancel_on_fire: Some(shutdown.clone()), ..Recorder::default() });
        let clock = Arc::new(VirtualClock::new(start()));
        let engine = Engine::new(store.clone(), clock, policy.clone());
        set_timers(store.as_ref(), (0..=TICK_LIMIT).map(|n| (format!("t{n:04}"), start()))).await;
        engine.run(shutdown, Duration::from_secs(3600)).await.expect("run ends cleanly");
        assert_eq!(policy.fired().len(), TICK_LIMIT, "round {round}: a tick started after shutdown");
        assert_eq!(store.due_timers(start(), 10).await.expect("due").len(), 1);
    }
}

/// A CRM whose calls answer as scripted, recording when they were made (tokio's clock).
#[derive(Default)]
struct ScriptedCrm {
    /// Each pull's failure, in order; `None` and an empty script are a good (empty) pass.
    pulls: Mutex<VecDeque<Option<ConnectorError>>>,
    /// Each push's answer: the whole call fails, or each write is accepted (`true`) or refused.
    pushes: Mutex<VecDeque<Result<bool, ConnectorError>>>,
    pulled_at: Mutex<Vec<Instant>>,
    pushed_at: Mutex<Vec<Instant>>,
}

fn transient(retry_after: Option<u64>) -> ConnectorError {
    ConnectorError::Transient { message: "down".into(), retry_after: retry_after.map(Duration::from_secs) }
}

/// The gaps between consecutive instants, in whole milliseconds.
fn gaps(at: &Mutex<Vec<Instant>>) -> Vec<u64> {
    let at = at.lock().expect("lock");
    at.windows(2).map(|w| (w[1] - w[0]).as_millis() as u64).collect()
}

#[async_trait]
impl Crm for ScriptedCrm {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn pull(
        &self,
        requests: &[PullRequest],
    ) -> Result<Vec<Result<ChangePage, ConnectorError>>, ConnectorError> {
        self.pulled_at.lock().expect("lock").push(Instant::now());
        match self.pulls.lock().expect("lock").pop_front().flatten() {
            Some(error) => Err(error),
            None => Ok(requests.iter().map(|_| Ok(ChangePage::default())).collect()),
        }
    }

    async fn push(&self, writes: &[CrmWrite]) -> Result<Vec<Result<(), ConnectorError>>, ConnectorError> {
        self.pushed_at.lock().expect("lock").push(Instant::now());
        let accept = self.pushes.lock().expect("lock").pop_front().unwrap_or(Ok(true))?;
        Ok(writes
            .iter()
            .map(
                |_| {
                    if accept { Ok(()) } else { Err(ConnectorError::Permanent { message: "refused".into() }) }
                },
            )
            .collect())
    }
}

/// Runs a sync of `crm` for `run_for` of virtual time (auto-advanced), then stops it.
async fn sync_for(crm: &Arc<ScriptedCrm>, interval: Duration, run_for: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::new(open(&dir), Arc::new(PausedClock::new(start())), Arc::new(NoRules));
    let sync = CrmSync::new(engine, crm.clone(), &[leadloop_core::connector::CrmObject::Lead]);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { sync.run(shutdown, interval).await }
    });
    tokio::time::sleep(run_for).await;
    stop(shutdown, task).await;
}

#[tokio::test(start_paused = true)]
async fn crm_sync_backs_off_with_growing_delays_capped_at_the_interval_and_resets_after_a_good_pass() {
    let crm = Arc::new(ScriptedCrm::default());
    let failures = [1, 1, 1, 1, 1, 0, 1, 0].map(|f| (f == 1).then(|| transient(None)));
    crm.pulls.lock().expect("lock").extend(failures);
    sync_for(&crm, Duration::from_secs(100), Duration::from_secs(500)).await;
    // 10 s, doubling, never above the 100 s interval; a good pass waits the interval and
    // starts the backoff over.
    assert_eq!(gaps(&crm.pulled_at), [10, 20, 40, 80, 100, 100, 10, 100].map(|s| s * 1000));
}

#[tokio::test(start_paused = true)]
async fn crm_sync_waits_as_long_as_retry_after_asks() {
    let crm = Arc::new(ScriptedCrm::default());
    crm.pulls.lock().expect("lock").extend([
        Some(transient(Some(7))),
        None,
        // Longer than the interval: the CRM is still asked no sooner than it said.
        Some(transient(Some(900))),
        None,
    ]);
    sync_for(&crm, Duration::from_secs(60), Duration::from_secs(1030)).await;
    assert_eq!(gaps(&crm.pulled_at), [7, 60, 900, 60].map(|s| s * 1000));
}

/// One CRM write queued at `start()` in `store`.
async fn queue_crm_write(store: &dyn Store, id: &str, now: Timestamp) {
    let mut fields = serde_json::Map::new();
    fields.insert("Status".into(), serde_json::json!("Working"));
    let effect = Effect::CrmUpdate { lead_id: LeadId::new(id), fields };
    let mut batch = Batch::new();
    batch.enqueue(OutboxEntry::new(IdempotencyKey::from_parts(["crm", id]).expect("valid key"), effect, now));
    store.commit(batch).await.expect("enqueue");
}

#[tokio::test(start_paused = true)]
async fn crm_relay_honours_retry_after_then_backs_off_with_growing_delays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let engine = Engine::new(store.clone(), Arc::new(PausedClock::new(start())), Arc::new(NoRules));
    let crm = Arc::new(ScriptedCrm::default());
    // The call fails (Retry-After 2 min), then the CRM refuses the write twice, then takes it.
    crm.pushes.lock().expect("lock").extend([Err(transient(Some(120))), Ok(false), Ok(false), Ok(true)]);
    let config =
        CrmRelayConfig { retry_base: Duration::from_secs(30), max_attempts: 5, ..Default::default() };
    let relay = CrmRelay::new(&engine, crm.clone(), config.clone());
    queue_crm_write(store.as_ref(), "00Q1", start()).await;
    let shutdown = CancellationToken::new();
    // max_idle below every delay: the relay also wakes in between and must not push early.
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown, Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_secs(3600)).await;
    stop(shutdown, task).await;

    let key = IdempotencyKey::from_parts(["crm", "00Q1"]).expect("valid key");
    let delay = |attempts| {
        let relay =
            RelayConfig { retry_base: config.retry_base, retry_max: config.retry_max, ..Default::default() };
        backoff(&relay, key.as_str(), attempts).as_millis() as u64
    };
    let gaps = gaps(&crm.pushed_at);
    assert_eq!(gaps.len(), 3, "{gaps:?}");
    assert_eq!(gaps[0], 120_000, "Retry-After");
    // Each retry at its backoff (the loop's sleep rounds up to the millisecond), and the
    // second backoff about twice the first.
    for (gap, attempts) in gaps[1..].iter().zip([2, 3]) {
        assert!((delay(attempts)..=delay(attempts) + 1).contains(gap), "attempt {attempts}: {gaps:?}");
    }
    assert!(gaps[2] > gaps[1] * 3 / 2, "the backoff grows: {gaps:?}");
    let entry = store.outbox_entry(&key).await.expect("entry").expect("kept");
    assert!(matches!(entry.state, leadloop_core::OutboxState::Done { .. }), "{entry:?}");
}

#[tokio::test(start_paused = true)]
async fn crm_relay_wakes_when_notified_and_otherwise_looks_every_max_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let clock = Arc::new(PausedClock::new(start()));
    let engine = Engine::new(store.clone(), clock.clone(), Arc::new(NoRules));
    let crm = Arc::new(ScriptedCrm::default());
    // The first call fails with Retry-After: 1 h, so a retry is pending far beyond max_idle.
    crm.pushes.lock().expect("lock").push_back(Err(transient(Some(3600))));
    let relay = CrmRelay::new(&engine, crm.clone(), CrmRelayConfig::default());
    let wake = relay.waker();
    let shutdown = CancellationToken::new();
    let max_idle = Duration::from_secs(300);
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown, max_idle).await }
    });
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Queued and the relay woken (as a commit does): pushed at once, not at max_idle.
    queue_crm_write(store.as_ref(), "00Q1", clock.now()).await;
    wake.notify_one();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Queued without a wake-up (another writer, a lost wake): found when max_idle has passed
    // since the relay last looked (at 10 s), not when the pending retry falls due.
    queue_crm_write(store.as_ref(), "00Q2", clock.now()).await;
    tokio::time::sleep(max_idle * 2).await;
    let pushed: Vec<u64> =
        crm.pushed_at.lock().expect("lock").iter().map(|at| (*at - t0).as_secs()).collect();
    assert_eq!(pushed, [10, 10 + max_idle.as_secs()]);
    stop(shutdown, task).await;
}

/// A calendar whose reads fail or succeed as scripted, recording when they were made.
#[derive(Default)]
struct ScriptedCalendar {
    /// Whether each read fails, in order; an empty script reads fine.
    fails: Mutex<VecDeque<bool>>,
    read_at: Mutex<Vec<Instant>>,
}

#[async_trait]
impl leadloop_core::Calendar for ScriptedCalendar {
    fn name(&self) -> &str {
        "scripted"
    }

    fn people(&self) -> Vec<leadloop_core::PersonId> {
        vec![leadloop_core::PersonId::new("rep")]
    }

    async fn events(
        &self,
        _person: &leadloop_core::PersonId,
        _from: Timestamp,
        _to: Timestamp,
        _time_zone: chrono_tz::Tz,
    ) -> Result<leadloop_core::connector::CalendarRead, ConnectorError> {
        self.read_at.lock().expect("lock").push(Instant::now());
        match self.fails.lock().expect("lock").pop_front() {
            Some(true) => Err(transient(None)),
            _ => Ok(Default::default()),
        }
    }

    async fn place_hold(
        &self,
        _person: &leadloop_core::PersonId,
        _key: &IdempotencyKey,
        _start: Timestamp,
        _end: Timestamp,
        _summary: &str,
    ) -> Result<String, ConnectorError> {
        Ok("hold".into())
    }
}

#[tokio::test(start_paused = true)]
async fn calendar_poller_backs_off_while_degraded_and_polls_every_interval_once_well() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock: Arc<dyn Clock> = Arc::new(PausedClock::new(start()));
    let engine = Engine::new(open(&dir), clock.clone(), Arc::new(NoRules));
    let calendar = Arc::new(ScriptedCalendar::default());
    calendar.fails.lock().expect("lock").extend([true, true, true, false, true, false]);
    let interval = Duration::from_secs(600);
    let poller = leadloop_engine::calendar::CalendarPoller::new(
        calendar.clone(),
        engine,
        clock,
        Duration::from_secs(7 * 24 * 3600),
        interval,
    );
    let degraded = poller.degraded();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { poller.run(shutdown).await }
    });
    tokio::time::sleep(Duration::from_secs(1300)).await;
    assert!(!degraded.load(std::sync::atomic::Ordering::Relaxed), "the last read went well");
    stop(shutdown, task).await;

    // The poller's backoff: 5 s doubling (with the key's jitter), up to the interval.
    let retry = RelayConfig { retry_base: Duration::from_secs(5), retry_max: interval, ..Default::default() };
    let delay = |failures| backoff(&retry, "calendar", failures).as_millis() as u64;
    let gaps = gaps(&calendar.read_at);
    let expected = [delay(1), delay(2), delay(3), 600_000, delay(1), 600_000];
    assert_eq!(gaps.len(), expected.len(), "{gaps:?}");
    for (gap, want) in gaps.iter().zip(expected) {
        // The loop's sleep rounds up to the millisecond.
        assert!((want..=want + 1).contains(gap), "{gaps:?} vs {expected:?}");
    }
    assert!(gaps[2] > gaps[1] && gaps[1] > gaps[0], "the backoff grows: {gaps:?}");
}

/// A store whose due-timer query fails while `failing` is set, and which records when (on
/// tokio's clock) the engine asked: the engine loop's own backoff, observed from outside.
struct FlakyStore {
    inner: Arc<dyn Store>,
    failing: std::sync::atomic::AtomicBool,
    asked: Mutex<Vec<Instant>>,
}

#[async_trait]
impl Store for FlakyStore {
    async fn commit(&self, batch: Batch) -> leadloop_store::Result<leadloop_store::Committed> {
        self.inner.commit(batch).await
    }
    async fn lead(&self, id: &LeadId) -> leadloop_store::Result<Option<LeadRecord>> {
        self.inner.lead(id).await
    }
    async fn leads_by_id(&self, ids: &[LeadId]) -> leadloop_store::Result<Vec<Option<LeadRecord>>> {
        self.inner.leads_by_id(ids).await
    }
    async fn leads(&self, after: Option<&LeadId>, limit: usize) -> leadloop_store::Result<Vec<LeadRecord>> {
        self.inner.leads(after, limit).await
    }
    async fn person(
        &self,
        id: &leadloop_core::PersonId,
    ) -> leadloop_store::Result<Option<leadloop_core::Person>> {
        self.inner.person(id).await
    }
    async fn people(&self) -> leadloop_store::Result<Vec<leadloop_core::Person>> {
        self.inner.people().await
    }
    async fn history(&self, id: &LeadId) -> leadloop_store::Result<Vec<(u64, leadloop_core::HistoryEvent)>> {
        self.inner.history(id).await
    }
    async fn timer(&self, key: &TimerKey) -> leadloop_store::Result<Option<Timer>> {
        self.inner.timer(key).await
    }
    async fn due_timers(&self, now: Timestamp, limit: usize) -> leadloop_store::Result<Vec<Timer>> {
        self.asked.lock().expect("lock").push(Instant::now());
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(leadloop_store::StoreError::Engine {
                path: "flaky".into(),
                message: "injected failure".into(),
            });
        }
        self.inner.due_timers(now, limit).await
    }
    async fn next_timer_due(&self) -> leadloop_store::Result<Option<Timestamp>> {
        self.inner.next_timer_due().await
    }
    async fn outbox_entry(&self, key: &IdempotencyKey) -> leadloop_store::Result<Option<OutboxEntry>> {
        self.inner.outbox_entry(key).await
    }
    async fn outbox_ready(
        &self,
        channel: leadloop_core::Channel,
        now: Timestamp,
        limit: usize,
    ) -> leadloop_store::Result<Vec<OutboxEntry>> {
        self.inner.outbox_ready(channel, now, limit).await
    }
    async fn outbox_failed(
        &self,
        channel: leadloop_core::Channel,
    ) -> leadloop_store::Result<Vec<leadloop_core::OutboxEntry>> {
        self.inner.outbox_failed(channel).await
    }
    async fn outbox_pending(
        &self,
        channel: leadloop_core::Channel,
    ) -> leadloop_store::Result<(u64, Option<Timestamp>)> {
        self.inner.outbox_pending(channel).await
    }
    async fn outbox_held(
        &self,
        channel: leadloop_core::Channel,
        after: u64,
        limit: usize,
    ) -> leadloop_store::Result<Vec<OutboxEntry>> {
        self.inner.outbox_held(channel, after, limit).await
    }
    async fn guard(&self) -> leadloop_store::Result<leadloop_core::guard::GuardState> {
        self.inner.guard().await
    }
    async fn suppression(&self, address: &str) -> leadloop_store::Result<Option<leadloop_core::Suppression>> {
        self.inner.suppression(address).await
    }
    async fn suppressions(
        &self,
        addresses: &[String],
    ) -> leadloop_store::Result<Vec<Option<leadloop_core::Suppression>>> {
        self.inner.suppressions(addresses).await
    }
    async fn open_handoffs(&self) -> leadloop_store::Result<Vec<(LeadId, leadloop_core::PersonId)>> {
        self.inner.open_handoffs().await
    }
    async fn open_handoffs_per_owner(&self) -> leadloop_store::Result<Vec<(leadloop_core::PersonId, u64)>> {
        self.inner.open_handoffs_per_owner().await
    }
    async fn seen(&self, keys: &[(LeadId, String)]) -> leadloop_store::Result<Vec<bool>> {
        self.inner.seen(keys).await
    }
    async fn leads_per_stage(&self) -> leadloop_store::Result<Vec<(leadloop_core::Stage, u64)>> {
        self.inner.leads_per_stage().await
    }
    async fn cursor(&self, name: &str) -> leadloop_store::Result<Option<String>> {
        self.inner.cursor(name).await
    }
    async fn items(&self, bucket: &str) -> leadloop_store::Result<Vec<(String, serde_json::Value)>> {
        self.inner.items(bucket).await
    }
    async fn scan(
        &self,
        visit: &mut (dyn FnMut(leadloop_store::Record) -> leadloop_store::Result<()> + Send),
    ) -> leadloop_store::Result<()> {
        self.inner.scan(visit).await
    }
    async fn load(&self, records: Vec<leadloop_store::Record>) -> leadloop_store::Result<()> {
        self.inner.load(records).await
    }
    async fn is_empty(&self) -> leadloop_store::Result<bool> {
        self.inner.is_empty().await
    }
    fn stats(&self) -> leadloop_store::Stats {
        self.inner.stats()
    }
}

/// A failing tick is retried after 0.5 s, 1 s, 2 s, 4 s …; a good tick resets the backoff, so
/// the next failure is retried after 0.5 s again.
#[tokio::test(start_paused = true)]
async fn run_backs_off_after_failed_ticks_and_resets_after_a_good_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flaky = Arc::new(FlakyStore {
        inner: open(&dir),
        failing: std::sync::atomic::AtomicBool::new(true),
        asked: Mutex::default(),
    });
    let clock = Arc::new(VirtualClock::new(start()));
    let engine = Engine::new(flaky.clone(), clock.clone(), Arc::new(NoRules));
    let origin = Instant::now();
    let max_idle = Duration::from_secs(60);
    let (shutdown, task) = spawn_run(&engine, max_idle);
    settle().await;
    // Time moves in 100 ms steps, so every wake-up is seen at its own instant.
    let run_for = |ms: u64| {
        let clock = clock.clone();
        async move {
            for _ in 0..ms / 100 {
                pass(&clock, Duration::from_millis(100)).await;
            }
        }
    };
    run_for(7_500).await;
    // The store answers again: the next tick (at 15.5 s) goes well and the loop idles for
    // max_idle; the failure after that is retried after 0.5 s again.
    flaky.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    run_for(8_000).await;
    flaky.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    run_for(60_500).await;
    stop(shutdown, task).await.expect("run ends cleanly");
    let asked: Vec<u64> = flaky
        .asked
        .lock()
        .expect("lock")
        .iter()
        .map(|at| at.duration_since(origin).as_millis() as u64)
        .collect();
    assert_eq!(asked, [0, 500, 1_500, 3_500, 7_500, 15_500, 75_500, 76_000]);
}

/// `leadloop pause crm`: the write-back is held (not pushed, no attempt counted) until the
/// pause is lifted; the release wakes the relay, which pushes it at once.
#[tokio::test(start_paused = true)]
async fn a_crm_pause_holds_the_write_back_and_resume_wakes_the_relay() {
    use leadloop_core::guard::{GuardConfig, PauseScope};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let clock: Arc<dyn leadloop_core::Clock> = Arc::new(PausedClock::new(start()));
    let guard = Arc::new(leadloop_engine::Guard::new(store.clone(), clock.clone(), GuardConfig::default()));
    let engine = Engine::new(store.clone(), clock, Arc::new(NoRules)).with_guard(guard.clone());
    let crm = Arc::new(ScriptedCrm::default());
    let relay = CrmRelay::new(&engine, crm.clone(), CrmRelayConfig::default());
    let admin = leadloop_core::Actor::Admin { who: "ops".into() };
    guard.pause(&[PauseScope::Crm], admin.clone(), "bad mapping").await.expect("pause");
    queue_crm_write(store.as_ref(), "00Q1", start()).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown, Duration::from_secs(60)).await }
    });
    // Off the relay's max_idle beat, so only a wake-up can push at once.
    tokio::time::sleep(Duration::from_secs(630)).await;
    assert!(crm.pushed_at.lock().expect("lock").is_empty(), "nothing pushed while paused");
    let key = IdempotencyKey::from_parts(["crm", "00Q1"]).expect("valid key");
    let entry = store.outbox_entry(&key).await.expect("entry").expect("kept");
    assert!(matches!(entry.state, leadloop_core::OutboxState::Held { .. }), "{entry:?}");
    assert_eq!(entry.attempts, 0);

    let resumed_at = Instant::now();
    assert_eq!(guard.resume(&[PauseScope::Crm], admin).await.expect("resume"), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop(shutdown, task).await;
    let pushed = crm.pushed_at.lock().expect("lock").clone();
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0], resumed_at, "pushed at once on resume, not at the next max_idle");
    let entry = store.outbox_entry(&key).await.expect("entry").expect("kept");
    assert!(matches!(entry.state, leadloop_core::OutboxState::Done { .. }), "{entry:?}");
}
