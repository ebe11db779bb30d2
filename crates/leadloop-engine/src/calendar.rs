//! The calendar side of the engine: a poller that reads every mapped person's calendar into
//! the [`CalendarSignals`] decisions see (with backoff and a degraded flag while the calendar
//! fails), and the relay that books the holds decisions queue (`calendar.hold` effects).
//!
//! A calendar never blocks a hand-off: while it fails, the affected people have no signals
//! (routing uses its rules alone, the SLA runs as if they were in) and holds wait in their
//! own queue, retried with backoff until their time has passed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::TimeDelta;
use leadloop_core::calendar::{CalendarSignals, PersonSignals};
use leadloop_core::connector::ConnectorError;
use leadloop_core::{Actor, Calendar, Channel, Clock, Effect, EventKind, HistoryEvent, OutboxState};
use leadloop_store::{Batch, Store};
use tokio_util::sync::CancellationToken;

use crate::relay::{RelayConfig, RelayLoop, Round, backoff};
use crate::{Engine, EngineError};

/// What one poll found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    pub people: usize,
    pub events: usize,
    /// Calendars that failed and entries that could not be read, with the reason.
    pub problems: Vec<String>,
}

/// Reads calendars into the engine's signals every `interval`; faster retries while degraded.
pub struct CalendarPoller {
    calendar: Arc<dyn Calendar>,
    engine: Engine,
    clock: Arc<dyn Clock>,
    look_ahead: Duration,
    interval: Duration,
    degraded: Arc<AtomicBool>,
}

impl std::fmt::Debug for CalendarPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalendarPoller").field("calendar", &self.calendar.name()).finish_non_exhaustive()
    }
}

impl CalendarPoller {
    pub fn new(
        calendar: Arc<dyn Calendar>,
        engine: Engine,
        clock: Arc<dyn Clock>,
        look_ahead: Duration,
        interval: Duration,
    ) -> Self {
        Self { calendar, engine, clock, look_ahead, interval, degraded: Arc::default() }
    }

    /// True while the last poll had a problem.
    pub fn degraded(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.degraded)
    }

    /// Reads every mapped person's calendar once and hands the engine the new signals.
    pub async fn poll_once(&self) -> PollReport {
        let now = self.clock.now();
        let look_ahead = TimeDelta::from_std(self.look_ahead).unwrap_or(TimeDelta::weeks(4));
        // From a day back, so an away day that began before now is seen whole.
        let (from, to) = (now - TimeDelta::days(1), now + look_ahead + TimeDelta::days(1));
        let chart = self.engine.org_chart();
        let mut signals = CalendarSignals { look_ahead, taken_at: Some(now), ..CalendarSignals::default() };
        let mut report = PollReport::default();
        for person in self.calendar.people() {
            let known = chart.get(&person);
            let tz = known
                .and_then(|p| p.time_zone.as_deref())
                .and_then(|z| z.parse().ok())
                .unwrap_or(chrono_tz::Tz::UTC);
            match self.calendar.events(&person, from, to, tz).await {
                Ok(read) => {
                    for skipped in &read.skipped {
                        tracing::warn!(%person, href = %skipped.href, reason = %skipped.reason, "calendar entry skipped");
                        report.problems.push(format!("{person}: {}: {}", skipped.href, skipped.reason));
                    }
                    report.people += 1;
                    report.events += read.events.len();
                    signals.people.insert(
                        person.clone(),
                        PersonSignals::from_events(&read.events, known.map(|p| p.email.as_str())),
                    );
                }
                Err(error) => {
                    // No signals for this person until the calendar answers again: routing
                    // falls back to its rules, the SLA treats them as in.
                    tracing::warn!(%person, %error, "calendar read failed");
                    report.problems.push(format!("{person}: {error}"));
                }
            }
        }
        let degraded = !report.problems.is_empty();
        self.degraded.store(degraded, Ordering::Relaxed);
        metrics::gauge!("leadloop_calendar_degraded").set(if degraded { 1.0 } else { 0.0 });
        metrics::counter!("leadloop_calendar_problems_total").increment(report.problems.len() as u64);
        self.engine.set_calendar(signals);
        report
    }

    /// Polls until `shutdown`: every `interval`, or sooner with backoff while degraded.
    pub async fn run(&self, shutdown: CancellationToken) {
        let config = RelayConfig {
            retry_base: Duration::from_secs(5),
            retry_max: self.interval,
            ..RelayConfig::default()
        };
        let mut failures = 0u32;
        loop {
            let report = self.poll_once().await;
            failures = if report.problems.is_empty() { 0 } else { failures + 1 };
            let wait = if failures == 0 { self.interval } else { backoff(&config, "calendar", failures) };
            if failures > 0 {
                tracing::warn!(
                    problems = report.problems.len(),
                    retry_in_s = wait.as_secs(),
                    "calendar degraded"
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// What one relay round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldReport {
    pub booked: usize,
    pub retried: usize,
    pub failed: usize,
    pub dropped: usize,
}

/// Books the holds in the outbox's calendar queue.
pub struct CalendarRelay {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    calendar: Arc<dyn Calendar>,
    config: RelayConfig,
    /// Notified after a commit queues a hold (register it with `Engine::with_waker`), so a
    /// hold is booked at once and not up to `max_idle` later, when its slot may have begun.
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for CalendarRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalendarRelay").field("calendar", &self.calendar.name()).finish_non_exhaustive()
    }
}

impl CalendarRelay {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        calendar: Arc<dyn Calendar>,
        config: RelayConfig,
    ) -> Self {
        Self { store, clock, calendar, config, wake: Arc::default() }
    }

    /// One round: every hold ready now.
    pub async fn run_once(&self) -> Result<HoldReport, EngineError> {
        let now = self.clock.now();
        let mut report = HoldReport::default();
        for mut entry in self.store.outbox_ready(Channel::Calendar, now, self.config.batch).await? {
            let Effect::CalendarHold { person, lead_id, start, end, summary } = entry.effect.clone() else {
                continue;
            };
            let mut batch = Batch::new();
            let event = if end <= now {
                let reason = "the hold's time passed before the calendar took it".to_owned();
                tracing::warn!(key = %entry.key, %person, "calendar hold dropped: its time passed");
                entry.state = OutboxState::Dropped { at: now, reason: reason.clone() };
                report.dropped += 1;
                Some(EventKind::EffectFailed { key: entry.key.clone(), reason })
            } else {
                entry.attempts += 1;
                match self.calendar.place_hold(&person, &entry.key, start, end, &summary).await {
                    Ok(href) => {
                        tracing::info!(key = %entry.key, %person, %href, "calendar hold booked");
                        metrics::counter!("leadloop_calendar_holds_total").increment(1);
                        entry.state = OutboxState::Done { at: now };
                        entry.last_error = None;
                        report.booked += 1;
                        Some(EventKind::EffectDone { key: entry.key.clone() })
                    }
                    Err(ConnectorError::Permanent { message }) => {
                        tracing::error!(key = %entry.key, %person, %message, "calendar hold refused; not retrying");
                        entry.state = OutboxState::Failed { at: now, reason: message.clone() };
                        report.failed += 1;
                        Some(EventKind::EffectFailed { key: entry.key.clone(), reason: message })
                    }
                    Err(error) => {
                        let delay = backoff(&self.config, entry.key.as_str(), entry.attempts);
                        tracing::warn!(key = %entry.key, %person, %error, retry_in_s = delay.as_secs(), "calendar hold failed; will retry");
                        entry.next_attempt_at =
                            now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::hours(1));
                        entry.last_error = Some(error.to_string());
                        report.retried += 1;
                        None
                    }
                }
            };
            if let Some(kind) = event {
                batch.append_history(lead_id, HistoryEvent::new(now, Actor::System, kind));
            }
            batch.update_outbox(entry);
            self.store.commit(batch).await?;
        }
        Ok(report)
    }

    /// Notify this to make a sleeping relay look at the outbox at once (after an enqueue).
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.wake)
    }

    /// Rounds until `shutdown`, at most `max_idle` apart (sooner when a retry is due or when
    /// woken).
    pub async fn run(&self, shutdown: CancellationToken, max_idle: Duration) {
        let relay = RelayLoop {
            name: "calendar",
            store: self.store.as_ref(),
            clock: self.clock.as_ref(),
            channel: Channel::Calendar,
            wake: Some(&self.wake),
        };
        relay
            .run(&shutdown, max_idle, || async {
                let report = self.run_once().await?;
                Ok(if report.booked + report.failed + report.dropped > 0 {
                    Round::Progress
                } else {
                    Round::Idle
                })
            })
            .await
    }
}
