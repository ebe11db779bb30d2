//! Change events from the CRM, beside the poll.
//!
//! [`CrmEvents`] waits on [`Crm::changes`] and ingests what the events name through the same
//! [`Engine::ingest`] as the poll; the event position (Salesforce's replay id) is stored in the
//! batch of the last page it covers, so it never passes changes that are not durable, and a
//! restart resumes after the last durable event. The poll ([`crate::crm::CrmSync`]) keeps
//! running as a safety net: every `safety_interval` while events flow, at its own interval
//! when they do not (the org does not allow them, the connection fails), and at once when the
//! connector reports a gap (an expired position, a gap or overflow event): its
//! `SystemModstamp` watermark moves only as polls complete, so whatever the events missed is
//! still ahead of it.
//!
//! Both paths may read the same record; [`Stamps`] keeps the newest CRM stamp taken in for
//! recently changed records, so an older version read by one path never overwrites a newer
//! one the other took in, and the same version read twice changes nothing.
//!
//! The speed-to-alert metric starts here too: the CRM stamp of the lead version whose ingest
//! queued a rep's alert is kept by the alert's key until the email relay reports the SMTP
//! server's acceptance ([`alert_accepted`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use leadloop_core::Timestamp;
use leadloop_core::connector::{ChangeEvents, ConnectorError, Crm, CrmObject};
use leadloop_store::Batch;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Engine, EngineError};

/// How long a record's stamp is remembered: longer than any page stays in flight.
const STAMP_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Records remembered at most (the oldest half is dropped beyond it).
const STAMP_CAP: usize = 200_000;

/// The newest CRM stamp taken in, per record id, for records changed in the last hour.
#[derive(Debug, Clone, Default)]
pub struct Stamps(Arc<Mutex<HashMap<String, Timestamp>>>);

impl Stamps {
    /// Whether a record version stamped `stamp` is older than one already taken in.
    pub fn is_stale(&self, id: &str, stamp: Timestamp) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).is_some_and(|newest| stamp < *newest)
    }

    /// Remembers a version taken in (only recent ones: older pages cannot be in flight).
    pub fn taken(&self, id: &str, stamp: Timestamp, now: Timestamp) {
        if stamp < now - STAMP_WINDOW {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= STAMP_CAP {
            map.retain(|_, at| *at >= now - STAMP_WINDOW);
            if map.len() >= STAMP_CAP {
                map.clear();
            }
        }
        let entry = map.entry(id.to_owned()).or_insert(stamp);
        if *entry < stamp {
            *entry = stamp;
        }
    }
}

/// CRM stamps of leads whose alert is queued, by the alert's outbox key.
static ALERTS: LazyLock<Mutex<HashMap<String, Timestamp>>> = LazyLock::new(Default::default);

/// The email kind of the rep's first alert of a hand-off.
pub const ALERT_KIND: &str = "sla.alert";

/// An alert was queued for a lead version the CRM stamped `changed_at`.
pub(crate) fn alert_queued(key: &str, changed_at: Timestamp) {
    let mut map = ALERTS.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= STAMP_CAP {
        map.clear();
    }
    map.insert(key.to_owned(), changed_at);
}

/// The SMTP server accepted the alert `key` at `now`: observes
/// `leadloop_speed_to_alert_seconds`, from the CRM change that qualified the lead.
pub(crate) fn alert_accepted(key: &str, now: Timestamp) {
    let stamp = ALERTS.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    if let Some(stamp) = stamp {
        let seconds = (now - stamp).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("leadloop_speed_to_alert_seconds").record(seconds);
    }
}

/// Shared by the event follower and the poll: whether events flow, and a way to ask the poll
/// to run now.
#[derive(Debug)]
pub struct EventState {
    live: AtomicBool,
    /// The poll's interval while events flow.
    safety_interval: Duration,
    poll_now: Notify,
}

impl EventState {
    pub fn new(safety_interval: Duration) -> Arc<Self> {
        Arc::new(Self { live: AtomicBool::new(false), safety_interval, poll_now: Notify::new() })
    }

    pub fn live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// The poll's wait: the safety interval while events flow, else its own.
    pub fn interval(&self, poll_interval: Duration) -> Duration {
        if self.live() { self.safety_interval.max(poll_interval) } else { poll_interval }
    }

    /// Resolves when the follower asks for a poll now.
    pub async fn poll_requested(&self) {
        self.poll_now.notified().await
    }

    fn set_live(&self, live: bool) {
        let was = self.live.swap(live, Ordering::Relaxed);
        metrics::gauge!("leadloop_crm_events_live").set(if live { 1.0 } else { 0.0 });
        if was && !live {
            // Events stopped: the poll takes over from now, not after the long interval.
            self.poll_now.notify_one();
        }
    }
}

/// Why a read of change events failed.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] leadloop_store::StoreError),
    #[error(transparent)]
    Crm(ConnectorError),
}

/// What one read of change events did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsReport {
    pub events: usize,
    pub records: usize,
    pub gap: Option<String>,
}

/// Follows the CRM's change events.
pub struct CrmEvents {
    engine: Engine,
    crm: Arc<dyn Crm>,
    objects: Vec<CrmObject>,
    state: Arc<EventState>,
}

impl std::fmt::Debug for CrmEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrmEvents").field("crm", &self.crm.name()).field("objects", &self.objects).finish()
    }
}

impl CrmEvents {
    pub fn new(engine: Engine, crm: Arc<dyn Crm>, objects: &[CrmObject], state: Arc<EventState>) -> Self {
        let objects = CrmObject::ALL.into_iter().filter(|o| objects.contains(o)).collect();
        Self { engine, crm, objects, state }
    }

    /// Where the event position is stored.
    pub fn position_name(&self) -> String {
        format!("crm.{}.events", self.crm.name())
    }

    pub fn state(&self) -> &Arc<EventState> {
        &self.state
    }

    /// One read: waits for events after the stored position (up to the CRM's long-poll
    /// timeout), stores their records with the position after them, and on a gap asks the
    /// poll to run now.
    pub async fn once(&self) -> Result<EventsReport, EventsError> {
        let position = self.engine.store().cursor(&self.position_name()).await?;
        match self.crm.changes(&self.objects, position.as_deref()).await {
            Ok(events) => {
                self.state.set_live(true);
                self.take(events).await
            }
            Err(error) => {
                self.state.set_live(false);
                Err(EventsError::Crm(error))
            }
        }
    }

    async fn take(&self, events: ChangeEvents) -> Result<EventsReport, EventsError> {
        let mut report =
            EventsReport { events: events.events, gap: events.gap.clone(), ..Default::default() };
        let name = self.position_name();
        let count = events.pages.len();
        for (i, (object, mut page)) in events.pages.into_iter().enumerate() {
            page.more = false;
            // The position goes with the last page: one batch with the changes it covers.
            page.next_cursor = if i + 1 == count { events.position.clone() } else { None };
            report.records += page.records.len();
            self.engine.ingest(object, page, &name).await?;
        }
        if count == 0
            && let Some(position) = &events.position
        {
            let mut batch = Batch::new();
            batch.set_cursor(&name, position.clone());
            self.engine.store().commit(batch).await?;
        }
        if events.events > 0 {
            metrics::counter!("leadloop_crm_events_total").increment(events.events as u64);
        }
        if let Some(gap) = &events.gap {
            tracing::warn!(reason = %gap, "crm change events may have missed changes; polling now");
            metrics::counter!("leadloop_crm_event_fallbacks_total").increment(1);
            self.state.poll_now.notify_one();
        }
        Ok(report)
    }

    /// Reads until `shutdown`. A CRM that does not offer events (a permanent refusal) is asked
    /// again every 15 minutes; other failures back off from 1 s to a minute. The poll runs at
    /// its own interval whenever events do not flow.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut refused_logged = false;
        loop {
            let wait = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.once() => match result {
                    Ok(report) => {
                        failures = 0;
                        if refused_logged {
                            tracing::info!("crm change events flow again");
                            refused_logged = false;
                        }
                        if report.events > 0 {
                            tracing::debug!(events = report.events, records = report.records, "crm change events taken in");
                        }
                        None
                    }
                    Err(EventsError::Crm(ConnectorError::Permanent { message })) => {
                        if !refused_logged {
                            tracing::warn!(reason = %message, "crm change events are not available; the poll carries on at its interval");
                            refused_logged = true;
                        }
                        Some(Duration::from_secs(900))
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(%error, failures, "crm change events failed; the poll carries on, retrying");
                        Some(Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60)))
                    }
                },
            };
            if let Some(wait) = wait {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_version_read_by_the_other_path_is_stale() {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().expect("time");
        let stamps = Stamps::default();
        let v1 = now - chrono::TimeDelta::seconds(20);
        let v2 = now - chrono::TimeDelta::seconds(10);
        assert!(!stamps.is_stale("00Q1", v1), "nothing known yet");
        stamps.taken("00Q1", v2, now);
        assert!(stamps.is_stale("00Q1", v1), "v1 after v2 would undo a change");
        assert!(!stamps.is_stale("00Q1", v2), "the same version again is not stale (it changes nothing)");
        stamps.taken("00Q1", v1, now);
        assert!(stamps.is_stale("00Q1", v1), "taking an older one never moves the newest back");
        // Old versions (a first sync) are not remembered: no page with them is in flight.
        stamps.taken("00Q2", now - chrono::TimeDelta::hours(2), now);
        assert!(!stamps.is_stale("00Q2", now - chrono::TimeDelta::hours(3)));
    }
}
