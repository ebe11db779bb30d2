//! The leadloop orchestrator. It feeds events (due timers now; CRM changes and cron ticks as
//! their connectors land) to pure policy in `leadloop-core`, writes each resulting
//! [`Decision`] to the store in one atomic, durable batch, and only then lets effects leave
//! through the outbox.
//!
//! Time comes from the injected [`Clock`], so the same engine runs under `simulate` and in
//! tests in virtual time: call [`Engine::tick`] after moving the clock.

mod apply;
pub mod calendar;
pub mod chat;
pub mod crm;
pub mod events;
mod nurture;
pub mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use leadloop_core::connector::Activity;
use leadloop_core::{
    Actor, Clock, EventKind, HistoryEvent, IdempotencyKey, Lead, LeadId, LeadRecord, OrgChart, OutboxEntry,
    Person, RoutingTurn,
};
use leadloop_store::{Batch, Expect, Store, StoreError};
use tokio_util::sync::CancellationToken;

pub mod guard;
pub use apply::{Applied, Queued, apply, decision_batch, observe, observe_queued, stamp};
pub use chat::{ChatRelay, ChatRelayConfig, ChatReport};
pub use guard::Guard;
pub use nurture::{Click, ClickOutcome, ClickRules, Unsubscribed};
pub use relay::{EmailRelay, RelayConfig, RelayReport};

/// How many times a read → decide → commit step is decided again when the store reports
/// that its lead changed meanwhile (another replica wrote it) before the error is returned.
pub const CONFLICT_RETRIES: usize = 5;

/// The most timers handled in one tick; the rest wait for the next, which follows at once.
pub const TICK_LIMIT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub use leadloop_core::policy::{NoRules, Policy};

/// What an observer is told after a commit is durable.
#[derive(Debug, Clone, Copy)]
pub enum Observed<'a> {
    /// A history event, with its lead.
    Event(&'a LeadId, &'a HistoryEvent),
    /// An effect queued in the outbox by this commit (a duplicate key is not reported).
    Queued(&'a OutboxEntry),
}

/// Told of each committed history event and each newly queued effect.
pub type Observer = Arc<dyn Fn(Observed<'_>) + Send + Sync>;

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub fired: usize,
    /// Effects queued, in order.
    pub enqueued: Vec<IdempotencyKey>,
    /// True when the tick hit [`TICK_LIMIT`] and more timers are due.
    pub more: bool,
}

/// Raised once a part of the daemon hit a failure that no retry in this process can fix (a
/// full disk under the mail directory); the daemon stops on it with exit 74, as it does on a
/// broken store ([`Store::broken`]).
#[derive(Debug, Clone)]
pub struct Halt(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for Halt {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(None)))
    }
}

impl Halt {
    /// Raises the halt with why (the first reason is kept).
    pub fn raise(&self, why: String) {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(why);
            true
        });
    }

    /// Why the halt was raised, if it was.
    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves once the halt is raised, with why.
    pub async fn raised(&self) -> String {
        let mut watch = self.0.subscribe();
        let why = watch.wait_for(Option::is_some).await.ok().and_then(|why| why.clone());
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: Arc<dyn Policy>,
    /// Unix seconds of the loop's last turn; the systemd watchdog pings only while it moves.
    heartbeat: Arc<AtomicI64>,
    /// Woken after a commit queued effects, so the relay sends at once.
    on_enqueue: Vec<Arc<tokio::sync::Notify>>,
    /// The org chart, loaded from the store and kept current as people are synced.
    people: Arc<std::sync::RwLock<OrgChart>>,
    /// Serialises read-decide-commit: a tick, an ingest, a link answer and the relay's
    /// hard-bounce write must not overwrite each other's view of a lead.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Told of every history event once it is durable (`simulate` prints stage and assign
    /// effects from it).
    observer: Option<Observer>,
    /// The latest calendar signals (from the calendar poller), given to every decision.
    calendar: Arc<std::sync::RwLock<Arc<leadloop_core::calendar::CalendarSignals>>>,
    /// The keys of the CRM quarantine bucket, once read (`crm.rs`).
    quarantined: Arc<std::sync::Mutex<Option<std::collections::BTreeSet<String>>>>,
    /// The newest CRM stamp taken in per recently changed record (`events.rs`): the event
    /// path and the poll may read the same record at different versions, and the older one
    /// must not overwrite the newer.
    crm_stamps: events::Stamps,
    /// Raised by a part that cannot go on in this process (see [`Halt`]).
    halt: Halt,
    /// The blast-radius guard, told how much nurture email each commit queued (surge hold).
    guard: Option<Arc<Guard>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("clock", &self.clock).finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, policy: Arc<dyn Policy>) -> Self {
        let heartbeat = Arc::new(AtomicI64::new(clock.now().timestamp()));
        Self {
            store,
            clock,
            policy,
            heartbeat,
            on_enqueue: Vec::new(),
            people: Arc::default(),
            writer: Arc::default(),
            observer: None,
            calendar: Arc::default(),
            quarantined: Arc::default(),
            crm_stamps: events::Stamps::default(),
            halt: Halt::default(),
            guard: None,
        }
    }

    /// The halt every part built from this engine raises when it cannot go on.
    pub fn halt(&self) -> Halt {
        self.halt.clone()
    }

    /// Wakes `notify` whenever a commit queues effects (a relay's waker; each relay adds
    /// its own).
    pub fn with_waker(mut self, notify: Arc<tokio::sync::Notify>) -> Self {
        self.on_enqueue.push(notify);
        self
    }

    /// Reports nurture email queued to `guard` (its surge hold); relays built from this engine
    /// screen their entries through it.
    pub fn with_guard(mut self, guard: Arc<Guard>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The guard, if one was given.
    pub fn guard(&self) -> Option<&Arc<Guard>> {
        self.guard.as_ref()
    }

    /// Calls `observer` with every history event the engine commits, after the commit.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The lock that serialises writers of lead state; the email relay shares it.
    pub fn writer_lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(&self.writer)
    }

    /// Loads the org chart from the store; call once at start.
    pub async fn load_people(&self) -> Result<usize, EngineError> {
        // No commit may change the load while it is being counted.
        let _writer = self.writer.lock().await;
        let people = self.store.people().await?;
        let count = people.len();
        let mut chart = OrgChart::new(people);
        // Open hand-offs per person, for routing's capacity check, from the store's counters
        // (a restart reads one number per rep, not every lead nor every open hand-off).
        for (owner, count) in self.store.open_handoffs_per_owner().await? {
            chart.load.insert(owner, u32::try_from(count).unwrap_or(u32::MAX));
        }
        let previous = self.people.read().unwrap_or_else(|p| p.into_inner()).turns.clone();
        chart.turns = previous;
        for (_, value) in self.store.items("accounts").await? {
            if let Ok(account) = serde_json::from_value::<leadloop_core::connector::Account>(value) {
                remember_account(&mut chart, &account);
            }
        }
        *self.people.write().unwrap_or_else(|p| p.into_inner()) = chart;
        Ok(count)
    }

    /// Restores routing rules' turns from the store (so rotation continues across restarts).
    pub async fn load_turns(&self, rules: &[String]) -> Result<(), EngineError> {
        for rule in rules {
            if let Some(value) = self.store.cursor(&RoutingTurn::cursor(rule)).await?
                && let Some(turn) = RoutingTurn::from_cursor(rule, &value)
            {
                self.people.write().unwrap_or_else(|p| p.into_inner()).turns.insert(turn.rule, turn.next);
            }
        }
        Ok(())
    }

    fn chart(&self) -> OrgChart {
        let mut chart = self.people.read().unwrap_or_else(|p| p.into_inner()).clone();
        chart.calendar = Arc::clone(&self.calendar.read().unwrap_or_else(|p| p.into_inner()));
        chart
    }

    /// The org chart as decisions see it (with the calendar signals).
    pub fn org_chart(&self) -> OrgChart {
        self.chart()
    }

    /// Replaces the calendar signals decisions see (the calendar poller calls this).
    pub fn set_calendar(&self, signals: leadloop_core::calendar::CalendarSignals) {
        *self.calendar.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(signals);
    }

    /// Commits `applied` and wakes the relay if it queued anything. Routing's view and the
    /// counts follow the decisions' typed summary.
    async fn commit(&self, applied: Applied) -> Result<Vec<IdempotencyKey>, EngineError> {
        let Applied { batch, summary } = applied;
        // The observer is told what the batch records (events, entries) once it is durable.
        let events: Vec<(LeadId, HistoryEvent)> = match &self.observer {
            Some(_) => batch
                .ops
                .iter()
                .filter_map(|op| match op {
                    leadloop_store::Op::AppendHistory(lead, event) => Some((lead.clone(), event.clone())),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let queued: Vec<OutboxEntry> = match &self.observer {
            Some(_) => batch
                .ops
                .iter()
                .filter_map(|op| match op {
                    leadloop_store::Op::Enqueue(entry) => Some(entry.clone()),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let committed = match self.store.commit(batch).await {
            Err(error @ StoreError::Conflict { .. }) => {
                metrics::counter!("leadloop_store_conflicts_total").increment(1);
                return Err(error.into());
            }
            other => other?,
        };
        {
            let mut chart = self.people.write().unwrap_or_else(|p| p.into_inner());
            advance_chart(&mut chart, &summary);
        }
        if let Some(observer) = &self.observer {
            for (lead, event) in &events {
                observer(Observed::Event(lead, event));
            }
            for entry in queued.iter().filter(|e| committed.enqueued.contains(&e.key)) {
                observer(Observed::Queued(entry));
            }
        }
        let queued = apply::observe_queued(&summary, &committed.enqueued);
        if let Some(guard) = &self.guard
            && let Err(error) = guard.nurture_queued(queued.nurture_sends).await
        {
            // The decision is durable; the relay still screens by the switches it reads.
            tracing::error!(%error, "guard: cannot record nurture email queued");
        }
        if !committed.enqueued.is_empty() {
            for notify in &self.on_enqueue {
                notify.notify_one();
            }
        }
        Ok(committed.enqueued)
    }

    /// An account from the CRM: its owner routes the account's leads first. Stored in the
    /// `accounts` bucket and kept in memory by id and by domain.
    pub async fn upsert_account(
        &self,
        account: leadloop_core::connector::Account,
    ) -> Result<(), EngineError> {
        let _writer = self.writer.lock().await;
        let mut batch = Batch::new();
        let value = serde_json::to_value(&account).unwrap_or(serde_json::Value::Null);
        batch.put_item("accounts", account.id.clone(), value);
        self.store.commit(batch).await?;
        let mut chart = self.people.write().unwrap_or_else(|p| p.into_inner());
        remember_account(&mut chart, &account);
        Ok(())
    }

    /// A person from the CRM or config: stored, and the org chart updated.
    pub async fn upsert_person(&self, person: Person) -> Result<(), EngineError> {
        let _writer = self.writer.lock().await;
        let mut batch = Batch::new();
        batch.put_person(person.clone());
        self.store.commit(batch).await?;
        let current = self.chart();
        let mut people: Vec<Person> = current.people().filter(|p| p.id != person.id).cloned().collect();
        people.push(person);
        let mut chart = OrgChart::new(people);
        chart.load = current.load;
        chart.turns = current.turns;
        chart.accounts = current.accounts;
        *self.people.write().unwrap_or_else(|p| p.into_inner()) = chart;
        Ok(())
    }

    /// A lead as sync delivers it (whole; merge partial updates before calling). Records what
    /// changed in the history and lets the policy decide. Returns the effects queued.
    pub async fn upsert_lead(&self, lead: Lead) -> Result<Vec<IdempotencyKey>, EngineError> {
        let _writer = self.writer.lock().await;
        retry_on_conflict(|| async {
            let now = self.clock.now();
            let before = self.store.lead(&lead.id).await?;
            let Some(applied) = self.lead_batch(before, lead.clone(), &self.chart(), now).await? else {
                return Ok(Vec::new());
            };
            self.commit(applied).await
        })
        .await
    }

    /// What storing `lead` over `before` does, as one batch; `None` when nothing changed.
    pub(crate) async fn lead_batch(
        &self,
        before: Option<LeadRecord>,
        lead: Lead,
        chart: &OrgChart,
        now: leadloop_core::Timestamp,
    ) -> Result<Option<Applied>, EngineError> {
        let mut events = Vec::new();
        let after = match &before {
            Some(old) => {
                let fields = old.lead.changed_fields(&lead);
                if fields.is_empty() {
                    return Ok(None);
                }
                if old.lead.status != lead.status {
                    events.push(EventKind::StatusChanged {
                        from: old.lead.status.clone(),
                        to: lead.status.clone(),
                    });
                }
                if old.lead.owner_id != lead.owner_id {
                    events.push(EventKind::OwnerChanged {
                        from: old.lead.owner_id.clone(),
                        to: lead.owner_id.clone(),
                        reason: "changed in the CRM".into(),
                    });
                }
                events.push(EventKind::Updated { fields });
                LeadRecord { lead, updated_at: now, version: old.version + 1, ..old.clone() }
            }
            None => {
                events.push(EventKind::Created);
                let mut record = LeadRecord::new(lead, now);
                // A lead deleted and restored keeps counting its hand-offs, so the keys (and
                // links) of the old ones are never reused.
                record.handoffs = self
                    .store
                    .history(&record.lead.id)
                    .await?
                    .iter()
                    .filter_map(|(_, e)| match e.kind {
                        EventKind::HandoffStarted { handoff, .. } => Some(handoff),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                record
            }
        };
        let id = after.lead.id.clone();
        let mut decision = self.policy.on_lead(before.as_ref(), after, chart, now);
        let mut history: Vec<HistoryEvent> =
            events.into_iter().map(|e| HistoryEvent::new(now, Actor::System, e)).collect();
        history.append(&mut decision.events);
        decision.events = history;
        Ok(Some(apply(decision, Some(&id), before.as_ref(), now)))
    }

    /// An activity on a lead; unknown leads are ignored (and logged).
    pub async fn record_activity(&self, activity: Activity) -> Result<Vec<IdempotencyKey>, EngineError> {
        let _writer = self.writer.lock().await;
        retry_on_conflict(|| async {
            let now = self.clock.now();
            let Some(lead) = self.store.lead(&activity.lead_id).await? else {
                tracing::warn!(lead_id = %activity.lead_id, kind = %activity.kind, "activity for an unknown lead ignored");
                return Ok(Vec::new());
            };
            let mut decision = self.policy.on_activity(&lead, &activity, &self.chart(), now);
            decision.events.insert(
                0,
                HistoryEvent::new(
                    now,
                    Actor::System,
                    EventKind::Activity { activity: activity.kind.clone(), detail: activity.detail.clone() },
                ),
            );
            self.commit(apply(decision, Some(&activity.lead_id), Some(&lead), now)).await
        })
        .await
    }

    /// `by` answered hand-off `handoff` of `lead` from an email link bound to that address;
    /// the history names them: the person whose address it is, else the address. Unknown
    /// leads and closed hand-offs change nothing.
    pub async fn sales_action(
        &self,
        lead: &LeadId,
        handoff: u32,
        action: leadloop_core::sla::SalesAction,
        reason: Option<&str>,
        by: &str,
    ) -> Result<leadloop_core::sla::ActionOutcome, EngineError> {
        let _writer = self.writer.lock().await;
        retry_on_conflict(|| async {
            let now = self.clock.now();
            let Some(record) = self.store.lead(lead).await? else {
                return Ok(leadloop_core::sla::ActionOutcome::AlreadyClosed);
            };
            let chart = self.chart();
            let by = by.trim().to_lowercase();
            let actor = match chart.people().find(|p| p.email.trim().to_lowercase() == by) {
                Some(person) => Actor::Sales { person: Some(person.id.clone()), address: None },
                None => Actor::Sales { person: None, address: Some(by.clone()) },
            };
            let (decision, outcome) =
                self.policy.on_sales_action(&record, handoff, action, reason, &actor, &chart, now);
            if outcome == leadloop_core::sla::ActionOutcome::Done {
                self.commit(apply(decision, Some(lead), Some(&record), now)).await?;
            }
            Ok(outcome)
        })
        .await
    }

    /// The lead was deleted in the CRM: its record goes, its history stays.
    pub async fn delete_lead(&self, id: &LeadId) -> Result<Vec<IdempotencyKey>, EngineError> {
        let _writer = self.writer.lock().await;
        retry_on_conflict(|| async {
            let now = self.clock.now();
            let Some(lead) = self.store.lead(id).await? else { return Ok(Vec::new()) };
            let mut decision = self.policy.on_delete(&lead, &self.chart(), now);
            decision.lead = None;
            decision.events.push(HistoryEvent::new(now, Actor::System, EventKind::Deleted));
            let mut applied = apply(decision, Some(id), Some(&lead), now);
            applied.batch.delete_lead(id.clone(), Expect::Version(lead.version));
            self.commit(applied).await
        })
        .await
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Unix seconds by which the run loop promised to turn again: the start of the tick in
    /// progress, or the end of the wait it is in. A loop stuck inside a tick (a store that
    /// hangs) falls behind its promise; a loop waiting or backing off does not.
    pub fn heartbeat(&self) -> i64 {
        self.heartbeat.load(Ordering::Relaxed)
    }

    /// Handles the timers due now: each decision and the removal of its timer are written in
    /// one batch, so a timer either fired completely or not at all.
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let _writer = self.writer.lock().await;
        let started = std::time::Instant::now();
        let report = retry_on_conflict(|| self.tick_once()).await?;
        metrics::counter!("leadloop_timers_fired_total").increment(report.fired as u64);
        metrics::histogram!("leadloop_tick_seconds").record(started.elapsed().as_secs_f64());
        Ok(report)
    }

    /// One tick's read → decide → commit, under the writer lock.
    async fn tick_once(&self) -> Result<TickReport, EngineError> {
        let now = self.clock.now();
        let mut due = self.store.due_timers(now, TICK_LIMIT).await?;
        // Reports first: they read their buckets as stored, and removing what they sent must
        // come before any item the other timers of this tick add to the same bucket.
        due.sort_by_key(|t| !matches!(t.kind, leadloop_core::TimerKind::Report { .. }));
        let mut report = TickReport { more: due.len() == TICK_LIMIT, ..TickReport::default() };
        let people = self.chart();
        let mut batch = Applied::default();
        // The leads of the due timers, read in one call.
        let mut ids: Vec<LeadId> = due.iter().filter_map(|t| t.lead_id.clone()).collect();
        ids.sort();
        ids.dedup();
        let mut fresh: std::collections::HashMap<LeadId, Option<LeadRecord>> =
            ids.iter().cloned().zip(self.store.leads_by_id(&ids).await?).collect();
        for timer in &due {
            if let leadloop_core::TimerKind::Report { bucket } = &timer.kind {
                // What the bucket collected, each item with its lead as it is now.
                let mut items = Vec::new();
                for (key, value) in self.store.items(&bucket.to_string()).await? {
                    let lead = match leadloop_core::sla::report_item_lead(&value) {
                        Some(id) => self.store.lead(&id).await?,
                        None => None,
                    };
                    items.push((key, value, lead));
                }
                let decision = self.policy.on_report(timer, &items, &people, now);
                batch.batch.cancel_timer(timer.key.clone());
                batch.extend(apply(decision, None, None, now));
                report.fired += 1;
                continue;
            }
            // A lead that an earlier timer of this tick changed is seen as that decision left
            // it (a lead may have an SLA and a nurture timer due at once).
            let lead = timer.lead_id.as_ref().and_then(|id| fresh.get(id).cloned().flatten());
            let mut decision = self.policy.on_timer(timer, lead.as_ref(), &people, now);
            if let Some(record) = &mut decision.lead {
                stamp(record, lead.as_ref());
            }
            if let (Some(id), Some(record)) = (&timer.lead_id, &decision.lead) {
                fresh.insert(id.clone(), Some(record.clone()));
            }
            batch.batch.cancel_timer(timer.key.clone());
            batch.extend(apply(decision, timer.lead_id.as_ref(), lead.as_ref(), now));
            report.fired += 1;
        }
        if !batch.batch.is_empty() {
            report.enqueued = self.commit(batch).await?;
        }
        Ok(report)
    }

    /// Ticks until `shutdown` is cancelled, sleeping until the next timer is due or
    /// `max_idle` passes, whichever is sooner. A tick in progress finishes (its batch is
    /// atomic either way); no new one starts after shutdown.
    pub async fn run(&self, shutdown: CancellationToken, max_idle: Duration) -> Result<(), EngineError> {
        let mut failures = 0u32;
        loop {
            self.heartbeat.store(self.clock.now().timestamp(), Ordering::Relaxed);
            let wait = match self.tick().await {
                Ok(report) if report.more => Duration::ZERO,
                Ok(_) => {
                    failures = 0;
                    self.idle_for(max_idle).await
                }
                // A full disk leaves sled refusing every write until the store is reopened:
                // stop, so the daemon exits and its supervisor restarts it.
                Err(EngineError::Store(
                    error @ (StoreError::NoSpace { .. } | StoreError::Stalled { .. }),
                )) => {
                    tracing::error!(%error, "the store takes no more writes; stopping");
                    return Err(EngineError::Store(error));
                }
                Err(error) => {
                    // A failing engine: acknowledge nothing, back off, retry.
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(250u64.saturating_mul(1 << failures.min(7)));
                    tracing::error!(%error, retry_in_ms = backoff.as_millis() as u64, "tick failed");
                    metrics::counter!("leadloop_tick_failures_total").increment(1);
                    backoff
                }
            };
            let next_turn =
                self.clock.now() + chrono::TimeDelta::from_std(wait).unwrap_or(chrono::TimeDelta::MAX);
            self.heartbeat.store(next_turn.timestamp(), Ordering::Relaxed);
            // Biased: when more is due (a zero wait) and shutdown came, both branches are
            // ready; shutdown must win, or chance starts another tick.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn idle_for(&self, max_idle: Duration) -> Duration {
        match self.store.next_timer_due().await {
            Ok(Some(due)) => {
                let until = (due - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
                until.min(max_idle)
            }
            _ => max_idle,
        }
    }
}

/// Runs `step` (a read → decide → commit) again from fresh state while the store reports that
/// a lead it decided on changed meanwhile, up to [`CONFLICT_RETRIES`] times.
pub(crate) async fn retry_on_conflict<T, F, Fut>(mut step: F) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EngineError>>,
{
    let mut attempt = 1;
    loop {
        match step().await {
            Err(EngineError::Store(error @ StoreError::Conflict { .. })) if attempt < CONFLICT_RETRIES => {
                tracing::info!(%error, attempt, "lead changed while deciding; deciding again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Routing's view after a commit: open hand-offs per person and each rule's next turn.
pub(crate) fn advance_chart(chart: &mut OrgChart, summary: &leadloop_core::Summary) {
    for (_, owner) in &summary.handoffs_started {
        *chart.load.entry(owner.clone()).or_default() += 1;
    }
    for ended in &summary.handoffs_ended {
        if let Some(owner) = &ended.owner {
            let load = chart.load.entry(owner.clone()).or_default();
            *load = load.saturating_sub(1);
        }
    }
    chart.turns.extend(summary.turns.iter().map(|turn| (turn.rule.clone(), turn.next)));
}

/// Indexes an account's owner by its id and by its domain (`domain:acme.example`).
fn remember_account(chart: &mut OrgChart, account: &leadloop_core::connector::Account) {
    match &account.owner_id {
        Some(owner) => {
            chart.accounts.insert(account.id.clone(), owner.clone());
            if let Some(domain) = &account.domain {
                chart.accounts.insert(format!("domain:{}", domain.to_ascii_lowercase()), owner.clone());
            }
        }
        None => {
            chart.accounts.remove(&account.id);
        }
    }
}
