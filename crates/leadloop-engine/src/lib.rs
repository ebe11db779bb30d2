//! The leadloop orchestrator. It feeds events (due timers now; CRM changes and cron ticks as
//! their connectors land) to pure policy in `leadloop-core`, writes each resulting
//! [`Decision`] to the store in one atomic, durable batch, and only then lets effects leave
//! through the outbox.
//!
//! Time comes from the injected [`Clock`], so the same engine runs under `simulate` and in
//! tests in virtual time: call [`Engine::tick`] after moving the clock.

mod apply;
pub mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use leadloop_core::{Clock, Decision, LeadRecord, Timer, Timestamp};
use leadloop_store::{Batch, Store, StoreError};
use tokio_util::sync::CancellationToken;

pub use apply::decision_batch;
pub use relay::{EmailRelay, RelayConfig, RelayReport};

/// The most timers handled in one tick; the rest wait for the next, which follows at once.
pub const TICK_LIMIT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Decides what a due timer means. Implementations are pure: the SLA ladder and nurture
/// tracks plug in here.
pub trait Policy: Send + Sync {
    /// `lead` is the timer's lead as stored now (`None` if it has none or it was deleted).
    /// The fired timer is cancelled unless the decision sets it again.
    fn on_timer(&self, timer: &Timer, lead: Option<&LeadRecord>, now: Timestamp) -> Decision;
}

/// A policy with no rules: due timers are cleared and nothing else happens.
#[derive(Debug, Default)]
pub struct NoRules;

impl Policy for NoRules {
    fn on_timer(&self, _timer: &Timer, _lead: Option<&LeadRecord>, _now: Timestamp) -> Decision {
        Decision::default()
    }
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    pub fired: usize,
    pub enqueued: usize,
    /// True when the tick hit [`TICK_LIMIT`] and more timers are due.
    pub more: bool,
}

#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: Arc<dyn Policy>,
    /// Unix seconds of the loop's last turn; the systemd watchdog pings only while it moves.
    heartbeat: Arc<AtomicI64>,
    /// Woken after a commit queued effects, so the relay sends at once.
    on_enqueue: Option<Arc<tokio::sync::Notify>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("clock", &self.clock).finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, policy: Arc<dyn Policy>) -> Self {
        let heartbeat = Arc::new(AtomicI64::new(clock.now().timestamp()));
        Self { store, clock, policy, heartbeat, on_enqueue: None }
    }

    /// Wakes `notify` whenever a tick queues effects (the email relay's waker).
    pub fn with_waker(mut self, notify: Arc<tokio::sync::Notify>) -> Self {
        self.on_enqueue = Some(notify);
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Unix seconds of the run loop's last turn.
    pub fn heartbeat(&self) -> i64 {
        self.heartbeat.load(Ordering::Relaxed)
    }

    /// Handles the timers due now: each decision and the removal of its timer are written in
    /// one batch, so a timer either fired completely or not at all.
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let due = self.store.due_timers(now, TICK_LIMIT).await?;
        let mut report = TickReport { more: due.len() == TICK_LIMIT, ..TickReport::default() };
        let mut batch = Batch::new();
        for timer in &due {
            let lead = match &timer.lead_id {
                Some(id) => self.store.lead(id).await?,
                None => None,
            };
            let decision = self.policy.on_timer(timer, lead.as_ref(), now);
            batch.cancel_timer(timer.key.clone());
            batch.ops.extend(decision_batch(decision, timer.lead_id.as_ref(), now).ops);
            report.fired += 1;
        }
        if !batch.is_empty() {
            let committed = self.store.commit(batch).await?;
            report.enqueued = committed.enqueued.len();
            if report.enqueued > 0
                && let Some(notify) = &self.on_enqueue
            {
                notify.notify_one();
            }
        }
        metrics::counter!("leadloop_timers_fired_total").increment(report.fired as u64);
        metrics::histogram!("leadloop_tick_seconds").record(started.elapsed().as_secs_f64());
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
                Err(error) => {
                    // A full disk or a failing engine: acknowledge nothing, back off, retry.
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(250u64.saturating_mul(1 << failures.min(7)));
                    tracing::error!(%error, retry_in_ms = backoff.as_millis() as u64, "tick failed");
                    metrics::counter!("leadloop_tick_failures_total").increment(1);
                    backoff
                }
            };
            tokio::select! {
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
