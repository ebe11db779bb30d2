//! The email outbox relay: takes pending email effects from the store, sends them through the
//! [`Mailer`], and records the outcome only after the server answered.
//!
//! - Sent (250): marked done. A crash before that is recorded resends the message once, with
//!   the same `Message-ID` (derived from the idempotency key). SLA mail goes out as one entry
//!   per recipient (its own key, so its own `Message-ID` and its own outcome): a copy is
//!   delivered to its `deliver_to` address alone, under the To and Cc every copy shows.
//! - Transient failure (4xx, timeout, connection lost, authentication refused): retried with
//!   exponential backoff and jitter; SLA mail forever, nurture mail up to `nurture_max_age`.
//! - Permanent failure (5xx): recorded with the server's reply, never retried. A hard bounce
//!   on the lead's own address moves the lead to Graveyard and suppresses the address.
//! - Suppressed recipients (the suppression list of opt-outs and hard bounces, and the lead's
//!   own address when the lead has opted out) are removed at send time; a message left with no
//!   recipient is dropped with the reason.
//! - Global and per-recipient-domain rate limits hold messages back without counting an
//!   attempt.
//! - Failpoints (testing only, see [`failpoint`]): `relay.before_send` and `relay.after_send`
//!   abort the process at those two points when `LEADLOOP_FAILPOINTS` names them (the CRM
//!   relay has `crm.after_push`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::TimeDelta;
use futures::StreamExt;
use leadloop_core::connector::{ConnectorError, OutgoingEmail};
use leadloop_core::stage::check as check_transition;
use leadloop_core::{
    Actor, Channel, Clock, Effect, EventKind, HistoryEvent, Mailer, OutboxEntry, OutboxState, Stage,
    Suppression, Timestamp,
};
use leadloop_store::{Batch, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::EngineError;

/// How the relay paces and retries.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Nurture mail still failing this long after it was queued is given up.
    pub nurture_max_age: Duration,
    /// Messages per second in all; `None` is unlimited.
    pub rate_per_second: Option<f64>,
    /// Messages per second to one recipient domain; `None` is unlimited.
    pub per_domain_per_second: Option<f64>,
    /// Messages in flight at once.
    pub concurrency: usize,
    /// Entries taken per round.
    pub batch: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            nurture_max_age: Duration::from_secs(3 * 24 * 3600),
            rate_per_second: None,
            per_domain_per_second: None,
            concurrency: 8,
            batch: 256,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
    pub dropped: usize,
    /// Held back by a rate limit, to go in a later round.
    pub throttled: usize,
    /// Leads moved to Graveyard by a hard bounce.
    pub graveyarded: usize,
    /// Kept back by the blast-radius guard (a pause, a surge): out of the ready queue until
    /// released.
    pub held: usize,
}

impl RelayReport {
    pub fn handled(&self) -> usize {
        self.sent + self.retried + self.failed + self.dropped + self.held
    }
}

/// A token bucket in the relay's (possibly virtual) time.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Timestamp,
}

impl Bucket {
    fn new(rate: f64, now: Timestamp) -> Self {
        Self { rate, tokens: rate.max(1.0), at: now }
    }

    fn refill(&mut self, now: Timestamp) {
        let elapsed = (now - self.at).num_milliseconds().max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.at = self.at.max(now);
    }

    fn available(&mut self, now: Timestamp) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }
}

#[derive(Debug, Default)]
struct Limiter {
    global: Option<Bucket>,
    domains: HashMap<String, Bucket>,
}

pub struct EmailRelay {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mailer: Arc<dyn Mailer>,
    config: RelayConfig,
    limiter: Mutex<Limiter>,
    wake: Arc<Notify>,
    /// The engine's writer lock, held while an outcome that may change a lead is recorded.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Raised when the mailer reports a full local disk.
    halt: Option<crate::Halt>,
    /// The blast-radius guard: what it holds is not sent; hard bounces are reported to it.
    guard: Option<Arc<crate::Guard>>,
}

impl std::fmt::Debug for EmailRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailRelay")
            .field("mailer", &self.mailer.name())
            .field("config", &self.config)
            .finish()
    }
}

enum Outcome {
    Sent { reply: String },
    Retry { error: String },
    Failed { reason: String, hard_bounce: Option<String> },
    Dropped { reason: String },
}

impl EmailRelay {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        mailer: Arc<dyn Mailer>,
        config: RelayConfig,
    ) -> Self {
        Self {
            store,
            clock,
            mailer,
            config,
            limiter: Mutex::new(Limiter::default()),
            wake: Arc::new(Notify::new()),
            writer: Arc::default(),
            halt: None,
            guard: None,
        }
    }

    /// Screens every entry through `guard` and reports hard bounces to it; a release wakes
    /// this relay.
    pub fn with_guard(mut self, guard: Arc<crate::Guard>) -> Self {
        guard.add_waker(Arc::clone(&self.wake));
        self.guard = Some(guard);
        self
    }

    /// Raises `halt` when the mailer reports a full local disk (the daemon then stops).
    pub fn with_halt(mut self, halt: crate::Halt) -> Self {
        self.halt = Some(halt);
        self
    }

    /// Shares the engine's writer lock, so a hard bounce moving a lead to Graveyard never
    /// races a tick or an ingest writing the same lead.
    pub fn with_writer_lock(mut self, writer: Arc<tokio::sync::Mutex<()>>) -> Self {
        self.writer = writer;
        self
    }

    /// Notify this to make a sleeping relay look at the outbox at once (after an enqueue).
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// One round: everything ready now, within the rate limits.
    pub async fn run_once(&self) -> Result<RelayReport, EngineError> {
        let now = self.clock.now();
        let ready = self.store.outbox_ready(Channel::Email, now, self.config.batch).await?;
        let mut report = RelayReport::default();
        let mut sends = Vec::new();
        let screen = self.screen(&ready).await?;
        // Read after the ready page: an entry queued after a switch was set is seen with it.
        let switches = match &self.guard {
            Some(guard) => Some(guard.state().await?),
            None => None,
        };
        let mut held = Batch::new();
        for mut entry in ready {
            if let (Some(guard), Some(switches)) = (&self.guard, &switches)
                && let leadloop_core::guard::Verdict::Hold(reason) = guard.screen(&entry, switches)
            {
                crate::Guard::hold(&mut entry, reason, now);
                held.update_outbox(entry);
                report.held += 1;
                continue;
            }
            let Effect::Email { kind, template, to, cc, lead_id, deliver_to, .. } = &entry.effect else {
                continue;
            };
            let opted_out = lead_id.as_ref().and_then(|id| screen.opted_out.get(id)).map(String::as_str);
            let (mut to, removed_to) = screen.unsuppressed(to, opted_out);
            let (mut cc, removed_cc) = screen.unsuppressed(cc, opted_out);
            let deliver_to = deliver_to.clone();
            // A copy for one recipient goes only if that recipient may be mailed; its headers
            // name those of the others who may.
            if let Some(single) = &deliver_to {
                let lower = single.to_lowercase();
                if !to.iter().chain(&cc).any(|a| a.to_lowercase() == lower) {
                    let reason = if removed_to.iter().chain(&removed_cc).any(|a| a.to_lowercase() == lower) {
                        format!("recipient suppressed: {single}")
                    } else {
                        format!("{single} is not among the message's recipients")
                    };
                    let _writer = self.writer.lock().await;
                    let batch = self.outcome_ops(entry, Outcome::Dropped { reason }, &mut report).await?;
                    self.store.commit(batch).await?;
                    continue;
                }
                if to.is_empty() {
                    to = std::mem::take(&mut cc);
                }
            }
            if to.is_empty() {
                let mut removed = removed_to;
                removed.extend(removed_cc);
                let reason = if removed.is_empty() {
                    "no recipient".to_owned()
                } else {
                    format!("all recipients suppressed: {}", removed.join(", "))
                };
                let _writer = self.writer.lock().await;
                let batch = self.outcome_ops(entry, Outcome::Dropped { reason }, &mut report).await?;
                self.store.commit(batch).await?;
                continue;
            }
            if kind == "nurture" && age(&entry, now) > self.config.nurture_max_age {
                let reason =
                    format!("gave up: still undelivered {} after it was queued", human(age(&entry, now)));
                let _writer = self.writer.lock().await;
                let batch = self
                    .outcome_ops(entry, Outcome::Failed { reason, hard_bounce: None }, &mut report)
                    .await?;
                self.store.commit(batch).await?;
                continue;
            }
            let envelope = deliver_to.as_ref().map_or(to.as_slice(), std::slice::from_ref);
            if !self.admit(envelope, now) {
                report.throttled += 1;
                continue;
            }
            let (kind, template) = (kind.clone(), template.clone());
            // The variables travel with the message and go back into the entry when its
            // outcome is recorded: one copy per message in memory, not two.
            let vars = match &mut entry.effect {
                Effect::Email { vars, .. } => std::mem::take(vars),
                _ => serde_json::Value::Null,
            };
            let email = OutgoingEmail { key: entry.key.clone(), kind, template, to, cc, vars, deliver_to };
            sends.push((entry, email));
        }
        if !held.is_empty() {
            self.store.commit(held).await?;
        }

        // Outcomes are recorded as sends complete, in batches of whatever has completed, so
        // many messages share one durable write.
        let mailer = &self.mailer;
        let guard = self.guard.as_deref();
        let mut results = futures::stream::iter(sends)
            .map(|(entry, email)| async move {
                // Nurture paused during this round (the bounce guard tripped): not sent.
                if email.kind == "nurture" && guard.is_some_and(crate::Guard::nurture_stopped) {
                    return (entry, email, None);
                }
                // Taken from the ready queue, nothing sent yet.
                failpoint("relay.before_send");
                let result = mailer.send(&email).await;
                if result.is_ok() {
                    // The server said 250; the outcome is not recorded yet.
                    failpoint("relay.after_send");
                }
                // A bounce is counted before the next send starts, so the send after the
                // threshold is already held (at most `concurrency - 1` others are in flight).
                if let (Some(guard), Err(ConnectorError::Permanent { message })) = (guard, &result)
                    && (hard_bounced(message, &email).is_some()
                        || (email.kind == "nurture" && refused_as_spam(message)))
                    && let Err(error) = guard.bounced(1).await
                {
                    tracing::error!(%error, "guard: cannot record a bounce");
                }
                (entry, email, Some(result))
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .ready_chunks(self.config.concurrency.max(1) * 4);
        while let Some(chunk) = results.next().await {
            let _writer = self.writer.lock().await;
            let mut batch = Batch::new();
            for (mut entry, mut email, result) in chunk {
                let Some(result) = result else {
                    if let Effect::Email { vars, .. } = &mut entry.effect {
                        *vars = std::mem::take(&mut email.vars);
                    }
                    crate::Guard::hold(
                        &mut entry,
                        leadloop_core::guard::HoldReason::Paused,
                        self.clock.now(),
                    );
                    batch.update_outbox(entry);
                    report.held += 1;
                    continue;
                };
                let outcome = match result {
                    // A full local disk (the `.eml` directory): nothing was sent and nothing
                    // is recorded; the entry waits, as it is, for the restart.
                    Err(ConnectorError::NoSpace { message }) => {
                        tracing::error!(key = %entry.key, error = %message, "email not written: no space left; stopping");
                        if let Some(halt) = &self.halt {
                            halt.raise(message);
                        }
                        continue;
                    }
                    Ok(receipt) => Outcome::Sent { reply: receipt.reply },
                    Err(ConnectorError::Permanent { message }) => {
                        Outcome::Failed { hard_bounce: hard_bounced(&message, &email), reason: message }
                    }
                    Err(error) => Outcome::Retry { error: error.to_string() },
                };
                if let Effect::Email { vars, .. } = &mut entry.effect {
                    *vars = std::mem::take(&mut email.vars);
                }
                batch.ops.extend(self.outcome_ops(entry, outcome, &mut report).await?.ops);
            }
            self.store.commit(batch).await?;
        }
        gauge_queue(self.store.as_ref(), self.clock.now()).await;
        Ok(report)
    }

    /// Rounds until `shutdown`; sleeps until woken or the next retry is due, at most `max_idle`.
    pub async fn run(&self, shutdown: CancellationToken, max_idle: Duration) {
        let relay = RelayLoop {
            name: "email",
            store: self.store.as_ref(),
            clock: self.clock.as_ref(),
            channel: Channel::Email,
            wake: Some(&self.wake),
        };
        relay
            .run(&shutdown, max_idle, || async {
                let report = self.run_once().await?;
                Ok(if report.handled() > 0 {
                    Round::Progress
                } else if report.throttled > 0 {
                    Round::Throttled
                } else {
                    Round::Idle
                })
            })
            .await
    }

    /// What a round needs to screen its emails' recipients, read in two calls: the opted-out
    /// address of each lead mailed (as the CRM reports it), and which recipients are suppressed.
    async fn screen(&self, ready: &[OutboxEntry]) -> Result<Screen, EngineError> {
        let mut ids: Vec<leadloop_core::LeadId> =
            ready.iter().filter_map(|e| e.effect.lead_id().cloned()).collect();
        ids.sort();
        ids.dedup();
        let opted_out = ids
            .iter()
            .zip(self.store.leads_by_id(&ids).await?)
            .filter_map(|(id, record)| {
                let record = record.filter(|r| r.lead.opted_out)?;
                Some((id.clone(), record.lead.email?.to_lowercase()))
            })
            .collect();
        let mut addresses: Vec<String> = ready
            .iter()
            .filter_map(|e| match &e.effect {
                Effect::Email { to, cc, .. } => Some(to.iter().chain(cc).map(|a| a.to_lowercase())),
                _ => None,
            })
            .flatten()
            .collect();
        addresses.sort();
        addresses.dedup();
        let suppressed = addresses
            .iter()
            .zip(self.store.suppressions(&addresses).await?)
            .filter_map(|(address, entry)| entry.map(|_| address.clone()))
            .collect();
        Ok(Screen { opted_out, suppressed })
    }

    /// Takes a token from the global bucket and the first recipient's domain bucket.
    fn admit(&self, to: &[String], now: Timestamp) -> bool {
        let mut limiter = self.limiter.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let domain = to
            .first()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        if let Some(rate) = self.config.rate_per_second {
            let bucket = limiter.global.get_or_insert_with(|| Bucket::new(rate, now));
            if !bucket.available(now) {
                return false;
            }
        }
        if let Some(rate) = self.config.per_domain_per_second {
            let bucket = limiter.domains.entry(domain.clone()).or_insert_with(|| Bucket::new(rate, now));
            if !bucket.available(now) {
                return false;
            }
            bucket.tokens -= 1.0;
        }
        if let Some(global) = limiter.global.as_mut() {
            global.tokens -= 1.0;
        }
        true
    }

    /// The store changes that record `outcome` for `entry`.
    async fn outcome_ops(
        &self,
        mut entry: OutboxEntry,
        outcome: Outcome,
        report: &mut RelayReport,
    ) -> Result<Batch, EngineError> {
        let now = self.clock.now();
        let lead_id = entry.effect.lead_id().cloned();
        let kind = match &entry.effect {
            Effect::Email { kind, .. } => kind.clone(),
            _ => String::new(),
        };
        let mut batch = Batch::new();
        let mut history = Vec::new();
        match outcome {
            Outcome::Sent { reply } => {
                entry.attempts += 1;
                entry.state = OutboxState::Done { at: now };
                entry.last_error = None;
                history.push(EventKind::EffectDone { key: entry.key.clone() });
                tracing::info!(key = %entry.key, %kind, %reply, "email sent");
                if kind == crate::events::ALERT_KIND {
                    crate::events::alert_accepted(entry.key.as_str(), now);
                }
                metrics::counter!("leadloop_email_sent_total", "kind" => kind).increment(1);
                report.sent += 1;
            }
            Outcome::Retry { error } => {
                entry.attempts += 1;
                let delay = backoff(&self.config, entry.key.as_str(), entry.attempts);
                let next = now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX);
                if kind == "nurture"
                    && (next - waiting_since(&entry)).to_std().unwrap_or_default()
                        > self.config.nurture_max_age
                {
                    let reason = format!("gave up after {} attempts: {error}", entry.attempts);
                    entry.state = OutboxState::Failed { at: now, reason: reason.clone() };
                    history.push(EventKind::EffectFailed { key: entry.key.clone(), reason });
                    metrics::counter!("leadloop_email_failed_total", "kind" => kind).increment(1);
                    report.failed += 1;
                } else {
                    tracing::warn!(key = %entry.key, attempts = entry.attempts, retry_in_s = delay.as_secs(), %error, "email send failed; will retry");
                    entry.next_attempt_at = next;
                    entry.last_error = Some(error);
                    metrics::counter!("leadloop_email_retried_total", "kind" => kind).increment(1);
                    report.retried += 1;
                }
            }
            Outcome::Failed { reason, hard_bounce } => {
                entry.attempts += 1;
                tracing::error!(key = %entry.key, %kind, %reason, "email refused for good; not retrying");
                entry.state = OutboxState::Failed { at: now, reason: reason.clone() };
                history.push(EventKind::EffectFailed { key: entry.key.clone(), reason: reason.clone() });
                metrics::counter!("leadloop_email_failed_total", "kind" => kind).increment(1);
                report.failed += 1;
                if let (Some(address), Some(id)) = (hard_bounce, &lead_id) {
                    batch.suppress(Suppression {
                        address,
                        reason: format!("hard bounce: {reason}"),
                        at: now,
                    });
                    if let Some(mut record) = self.store.lead(id).await? {
                        let actor = Actor::Rule { name: "hard-bounce".into() };
                        if check_transition(record.stage, Stage::Graveyard, &actor).is_ok() {
                            let from = record.stage;
                            record.stage = Stage::Graveyard;
                            record.stage_since = now;
                            record.updated_at = now;
                            let read = record.version;
                            record.version += 1;
                            batch.put_lead_expecting(record, leadloop_store::Expect::Version(read));
                            batch.append_history(
                                id.clone(),
                                HistoryEvent::new(
                                    now,
                                    actor,
                                    EventKind::StageChanged {
                                        from,
                                        to: Stage::Graveyard,
                                        reason: format!("hard bounce: {reason}"),
                                    },
                                ),
                            );
                            report.graveyarded += 1;
                        }
                    }
                }
            }
            Outcome::Dropped { reason } => {
                tracing::warn!(key = %entry.key, %kind, %reason, "email dropped");
                entry.state = OutboxState::Dropped { at: now, reason: reason.clone() };
                history.push(EventKind::EffectFailed { key: entry.key.clone(), reason });
                metrics::counter!("leadloop_email_dropped_total", "kind" => kind).increment(1);
                report.dropped += 1;
            }
        }
        if let Some(id) = &lead_id {
            for event in history {
                batch.append_history(id.clone(), HistoryEvent::new(now, Actor::System, event));
            }
        }
        batch.update_outbox(entry);
        Ok(batch)
    }
}

/// The environment variable that arms failpoints: a comma-separated list of `NAME` (abort at
/// the first hit) or `NAME@N` (abort at the N-th hit), e.g.
/// `LEADLOOP_FAILPOINTS=relay.after_send@5`. Testing only; see docs/operations.md.
pub const FAILPOINTS_ENV: &str = "LEADLOOP_FAILPOINTS";

/// A failpoint armed from [`FAILPOINTS_ENV`].
#[derive(Debug)]
struct Armed {
    name: String,
    at: u64,
    hits: std::sync::atomic::AtomicU64,
}

static ARMED: std::sync::OnceLock<Vec<Armed>> = std::sync::OnceLock::new();

/// Parses a failpoint list; entries that do not parse are ignored (with a log line).
fn parse_failpoints(spec: &str) -> Vec<(String, u64)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|item| match item.split_once('@') {
            None => Some((item.to_owned(), 1)),
            Some((name, n)) => match n.parse::<u64>() {
                Ok(n) if n >= 1 => Some((name.to_owned(), n)),
                _ => {
                    tracing::warn!(failpoint = item, "failpoint count is not a positive number; ignored");
                    None
                }
            },
        })
        .collect()
}

/// Aborts the process (no destructors, no flush: as SIGKILL would) when the failpoint `name`
/// is armed in [`FAILPOINTS_ENV`] and this is its chosen hit. The variable is read once; when
/// it is unset this is a load and a length check.
pub fn failpoint(name: &str) {
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var(FAILPOINTS_ENV).unwrap_or_default();
        parse_failpoints(&spec)
            .into_iter()
            .map(|(name, at)| Armed { name, at, hits: std::sync::atomic::AtomicU64::new(0) })
            .collect()
    });
    if armed.is_empty() {
        return;
    }
    for point in armed.iter().filter(|p| p.name == name) {
        let hit = point.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if hit == point.at {
            tracing::error!(failpoint = name, hit, "failpoint armed; aborting");
            eprintln!("failpoint {name} hit {hit}: aborting");
            std::process::abort();
        }
    }
}

/// How a relay round went, for [`RelayLoop::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Round {
    /// Something was performed or given up: look again at once.
    Progress,
    /// Held back by a rate limit: look again shortly.
    Throttled,
    /// Nothing ready: sleep until woken or the channel's next retry is due.
    Idle,
}

/// The loop every outbox relay (email, CRM, calendar) runs around its rounds.
pub(crate) struct RelayLoop<'a> {
    pub name: &'static str,
    pub store: &'a dyn Store,
    pub clock: &'a dyn Clock,
    pub channel: Channel,
    /// Notified when a commit queued work for this relay.
    pub wake: Option<&'a Notify>,
}

impl RelayLoop<'_> {
    /// Rounds until `shutdown`; between rounds that found nothing it sleeps until woken or
    /// the channel's next retry is due, at most `max_idle`; a failed round is retried after 1 s.
    pub async fn run<F, Fut>(&self, shutdown: &CancellationToken, max_idle: Duration, mut round: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Round, EngineError>>,
    {
        loop {
            let wait = match round().await {
                Ok(Round::Progress) => Duration::ZERO,
                Ok(Round::Throttled) => Duration::from_millis(100),
                Ok(Round::Idle) => match self.store.outbox_pending(self.channel).await {
                    Ok((_, Some(next))) => {
                        (next - self.clock.now()).to_std().unwrap_or(Duration::ZERO).min(max_idle)
                    }
                    _ => max_idle,
                },
                Err(error) => {
                    tracing::error!(%error, relay = self.name, "relay round failed; retrying");
                    Duration::from_secs(1)
                }
            };
            if wait.is_zero() {
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            let woken = async {
                match self.wake {
                    Some(wake) => wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            // Biased: woken and shut down at once must stop, not start another round.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = woken => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A round's view of who must not be mailed (see `EmailRelay::screen`).
struct Screen {
    /// Lead → its address, for leads the CRM reports as opted out.
    opted_out: std::collections::HashMap<leadloop_core::LeadId, String>,
    /// Suppressed addresses among the round's recipients, lowercased.
    suppressed: std::collections::HashSet<String>,
}

impl Screen {
    /// Splits `addresses` into those that may be mailed and those that may not.
    fn unsuppressed(&self, addresses: &[String], opted_out: Option<&str>) -> (Vec<String>, Vec<String>) {
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for address in addresses {
            let lower = address.to_lowercase();
            if opted_out == Some(lower.as_str()) || self.suppressed.contains(&lower) {
                removed.push(address.clone());
                metrics::counter!("leadloop_email_suppressed_total").increment(1);
            } else {
                kept.push(address.clone());
            }
        }
        (kept, removed)
    }
}

/// How long the entry has waited to go: since it was queued, or since the guard released it
/// (a pause or a surge hold does not use up `nurture_max_age`).
fn age(entry: &OutboxEntry, now: Timestamp) -> Duration {
    (now - waiting_since(entry)).to_std().unwrap_or_default()
}

fn waiting_since(entry: &OutboxEntry) -> Timestamp {
    entry.released_at.map_or(entry.created_at, |at| at.max(entry.created_at))
}

/// A permanent refusal that names the message as spam or against policy (RFC 3463 5.7.x):
/// the receiving side complaining about the mail, which the bounce guard counts.
fn refused_as_spam(reply: &str) -> bool {
    reply.contains("5.7.") || reply.to_lowercase().contains("spam")
}

fn human(d: Duration) -> String {
    let hours = d.as_secs() / 3600;
    if hours >= 48 { format!("{} days", hours / 24) } else { format!("{hours} hours") }
}

/// `retry_base · 2^(attempts−1)`, capped at `retry_max`, then spread by ±20 % with jitter
/// derived from the key and attempt, so retries of many messages do not arrive together and
/// a run in virtual time is still repeatable.
pub fn backoff(config: &RelayConfig, key: &str, attempts: u32) -> Duration {
    let exp = config.retry_base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let capped = exp.min(config.retry_max);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain(attempts.to_le_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let factor = 0.8 + (hash % 4001) as f64 / 10_000.0;
    capped.mul_f64(factor)
}

/// The lead's address, if the server's permanent refusal was about it: the reply names it,
/// or it is the only recipient.
fn hard_bounced(reply: &str, email: &OutgoingEmail) -> Option<String> {
    let mailbox_unknown =
        ["550", "551", "553", "5.1.1", "5.1.0", "5.1.10"].iter().any(|code| reply.contains(code));
    if !mailbox_unknown {
        return None;
    }
    let lead_email =
        email.vars.get("lead").and_then(|l| l.get("email")).and_then(|e| e.as_str())?.to_lowercase();
    let recipients: Vec<String> = match &email.deliver_to {
        Some(single) => vec![single.to_lowercase()],
        None => email.to.iter().chain(&email.cc).map(|a| a.to_lowercase()).collect(),
    };
    if !recipients.contains(&lead_email) {
        return None;
    }
    (recipients.len() == 1 || reply.to_lowercase().contains(&lead_email)).then_some(lead_email)
}

async fn gauge_queue(store: &dyn Store, now: Timestamp) {
    if let Ok((depth, earliest)) = store.outbox_pending(Channel::Email).await {
        metrics::gauge!("leadloop_email_queue_depth").set(depth as f64);
        let overdue = earliest.map_or(0.0, |at| (now - at).num_milliseconds().max(0) as f64 / 1000.0);
        metrics::gauge!("leadloop_email_oldest_due_seconds").set(overdue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_within_twenty_percent() {
        let config = RelayConfig::default();
        let base = config.retry_base.as_secs_f64();
        for attempts in 1..=12u32 {
            let d = backoff(&config, "k", attempts).as_secs_f64();
            let nominal = (base * 2f64.powi(attempts as i32 - 1)).min(config.retry_max.as_secs_f64());
            assert!(
                d >= nominal * 0.8 - 1e-9 && d <= nominal * 1.2 + 1e-9,
                "attempt {attempts}: {d} vs {nominal}"
            );
        }
        assert_eq!(backoff(&config, "k", 3), backoff(&config, "k", 3));
        assert_ne!(backoff(&config, "k1", 3), backoff(&config, "k2", 3));
    }

    #[test]
    fn hard_bounce_is_only_about_the_leads_own_address() {
        let email = |to: &[&str]| OutgoingEmail {
            key: leadloop_core::IdempotencyKey::parse("k").expect("valid key"),
            kind: "nurture".into(),
            template: "t".into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            cc: vec![],
            vars: serde_json::json!({ "lead": { "email": "Ana@Acme.example" } }),
            deliver_to: None,
        };
        assert_eq!(
            hard_bounced("550 5.1.1 <ana@acme.example>: user unknown", &email(&["ana@acme.example"])),
            Some("ana@acme.example".into())
        );
        assert_eq!(hard_bounced("554 5.7.1 message refused", &email(&["ana@acme.example"])), None);
        // A rep's address bounced on an alert: the lead is not at fault.
        assert_eq!(hard_bounced("550 5.1.1 <rep@x.example>: user unknown", &email(&["rep@x.example"])), None);
    }

    #[test]
    fn failpoint_lists_parse_names_and_hit_counts() {
        assert_eq!(
            parse_failpoints("relay.after_send, relay.before_send@3,,bad@0,bad@x"),
            [("relay.after_send".to_owned(), 1), ("relay.before_send".to_owned(), 3)]
        );
        assert!(parse_failpoints("").is_empty());
        // Unarmed in this process: a failpoint is a no-op.
        failpoint("relay.after_send");
    }

    /// Runs a [`RelayLoop`] over an empty store (nothing pending: idle waits are `max_idle`)
    /// whose rounds answer as `script` says, then `Idle`; `drive` acts meanwhile. Returns
    /// when each round started and when the loop and `drive` had both ended, from the start,
    /// in milliseconds of paused time.
    async fn scripted_loop<D: std::future::Future<Output = ()>>(
        script: Vec<Result<Round, EngineError>>,
        max_idle: Duration,
        drive: impl FnOnce(Arc<Notify>, CancellationToken) -> D,
    ) -> (Vec<u64>, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            leadloop_store::SledStore::open(&leadloop_store::SledConfig::new(dir.path())).expect("open");
        let clock = leadloop_core::VirtualClock::new("2026-03-02T14:00:00Z".parse().expect("instant"));
        let (wake, shutdown) = (Arc::new(Notify::new()), CancellationToken::new());
        let relay = RelayLoop {
            name: "test",
            store: store.as_ref(),
            clock: &clock,
            channel: Channel::Email,
            wake: Some(&wake),
        };
        let started = tokio::time::Instant::now();
        let rounds = Mutex::new(Vec::new());
        let since = move || (tokio::time::Instant::now() - started).as_millis() as u64;
        let script = Mutex::new(std::collections::VecDeque::from(script));
        let looping = relay.run(&shutdown, max_idle, || {
            rounds.lock().expect("lock").push(since());
            let answer = script.lock().expect("lock").pop_front().unwrap_or(Ok(Round::Idle));
            async move { answer }
        });
        let stopped = tokio::time::timeout(Duration::from_secs(24 * 3600), async {
            tokio::join!(looping, drive(Arc::clone(&wake), shutdown.clone()))
        })
        .await;
        assert!(stopped.is_ok(), "the loop did not stop on shutdown");
        (rounds.into_inner().expect("lock"), since())
    }

    #[tokio::test(start_paused = true)]
    async fn relay_loop_paces_rounds_by_how_they_went_and_wakes_when_notified() {
        let max_idle = Duration::from_secs(60);
        let failed = Err(EngineError::Store(leadloop_store::StoreError::Closed));
        let script = vec![Ok(Round::Progress), Ok(Round::Progress), Ok(Round::Throttled), failed];
        let (rounds, ended) = scripted_loop(script, max_idle, |wake, shutdown| async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            wake.notify_one();
            tokio::time::sleep(Duration::from_secs(10)).await;
            shutdown.cancel();
        })
        .await;
        // Progress: again at once; throttled: 100 ms; failed: 1 s; idle: max_idle, unless
        // woken (at 100 s). Shut down at 110 s, in the middle of a sleep: stopped at once.
        assert_eq!(rounds, [0, 0, 0, 100, 1_100, 61_100, 100_000]);
        assert_eq!(ended, 110_000);
    }

    #[tokio::test(start_paused = true)]
    async fn relay_loop_woken_and_shut_down_at_once_starts_no_round() {
        // Repeated: a loop that lets chance pick between the two passes half the time.
        for _ in 0..12 {
            let (rounds, ended) =
                scripted_loop(vec![], Duration::from_secs(60), |wake, shutdown| async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    wake.notify_one();
                    shutdown.cancel();
                })
                .await;
            assert_eq!((rounds, ended), (vec![0], 5_000));
        }
    }

    #[test]
    fn bucket_refills_with_time() {
        let t0: Timestamp = "2026-03-02T14:00:00Z".parse().expect("instant");
        let mut bucket = Bucket::new(2.0, t0);
        assert!(bucket.available(t0));
        bucket.tokens -= 2.0;
        assert!(!bucket.available(t0));
        assert!(!bucket.available(t0 + TimeDelta::milliseconds(400)));
        assert!(bucket.available(t0 + TimeDelta::milliseconds(500)));
    }
}
