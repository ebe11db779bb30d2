//! The chat outbox relay: posts pending chat messages (Slack, Teams) through their
//! [`ChatSender`]s and records the outcome only after the service answered.
//!
//! - Posted: marked done. A crash between the service's answer and recording it posts the
//!   message once more when the relay starts again (chat APIs take no idempotency key); the
//!   window is one round's commit.
//! - Throttled or unreachable (429, 5xx, timeouts): retried with the relay's backoff, never
//!   sooner than the service's `Retry-After`; nothing is dropped.
//! - Refused for good (an unknown or deactivated user, no connector for the service): the
//!   message's email fallback is queued at once (under the key the step's email copy would
//!   have had, so it goes once) and the refusal is logged and kept in the history.
//! - Still failing `fallback_after` after it was queued: the email fallback is queued, so an
//!   outage of the chat service delays a rep's alert by at most that long.
//! - A message without a fallback (the step mails the person anyway) is retried while the
//!   service is down and recorded as failed when it refuses for good.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use leadloop_core::connector::{ChatSender, ConnectorError, OutgoingChat};
use leadloop_core::{
    Actor, Channel, ChatService, Clock, Effect, EventKind, HistoryEvent, OutboxEntry, OutboxState,
};
use leadloop_store::{Batch, Store};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::relay::{RelayConfig, RelayLoop, Round, backoff};

/// How the chat relay paces, retries and falls back.
#[derive(Debug, Clone)]
pub struct ChatRelayConfig {
    pub relay: RelayConfig,
    /// A message still not posted this long after it was queued goes by email instead (when
    /// it has an email fallback).
    pub fallback_after: Duration,
}

impl Default for ChatRelayConfig {
    fn default() -> Self {
        Self { relay: RelayConfig::default(), fallback_after: Duration::from_secs(15 * 60) }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatReport {
    pub posted: usize,
    pub retried: usize,
    pub failed: usize,
    /// Messages replaced by their email fallback.
    pub fell_back: usize,
}

impl ChatReport {
    pub fn handled(&self) -> usize {
        self.posted + self.retried + self.failed + self.fell_back
    }
}

pub struct ChatRelay {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    senders: BTreeMap<ChatService, Arc<dyn ChatSender>>,
    config: ChatRelayConfig,
    wake: Arc<Notify>,
    /// Woken when a fallback email is queued.
    email_wake: Option<Arc<Notify>>,
}

impl std::fmt::Debug for ChatRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatRelay")
            .field("services", &self.senders.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

enum Outcome {
    Posted { channel: String, ts: String },
    Retry { error: String, retry_after: Option<Duration> },
    Failed { reason: String },
    FallBack { reason: String },
}

impl ChatRelay {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        senders: impl IntoIterator<Item = Arc<dyn ChatSender>>,
        config: ChatRelayConfig,
    ) -> Self {
        Self {
            store,
            clock,
            senders: senders.into_iter().map(|s| (s.service(), s)).collect(),
            config,
            wake: Arc::default(),
            email_wake: None,
        }
    }

    /// Wakes the email relay when a fallback email is queued.
    pub fn with_email_waker(mut self, wake: Arc<Notify>) -> Self {
        self.email_wake = Some(wake);
        self
    }

    /// Notify this to make a sleeping relay look at the outbox at once (after an enqueue).
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// One round: every chat message ready now.
    pub async fn run_once(&self) -> Result<ChatReport, EngineError> {
        let now = self.clock.now();
        let mut report = ChatReport::default();
        let ready = self.store.outbox_ready(Channel::Chat, now, self.config.relay.batch).await?;
        for entry in ready {
            let Effect::Chat { kind, service, to, person, lead_id, vars, fallback } = &entry.effect else {
                continue;
            };
            let outcome = match self.senders.get(service) {
                None => Outcome::FallBack { reason: format!("no {service} connector is configured") },
                Some(sender) => {
                    let message = OutgoingChat {
                        key: entry.key.clone(),
                        kind: kind.clone(),
                        service: *service,
                        to: to.clone(),
                        person: person.clone(),
                        lead_id: lead_id.clone(),
                        vars: vars.clone(),
                    };
                    crate::relay::failpoint("chat.before_post");
                    match sender.post(&message).await {
                        Ok(receipt) => {
                            crate::relay::failpoint("chat.after_post");
                            Outcome::Posted { channel: receipt.channel, ts: receipt.ts }
                        }
                        Err(ConnectorError::Permanent { message }) => match fallback {
                            Some(_) => Outcome::FallBack { reason: message },
                            None => Outcome::Failed { reason: message },
                        },
                        Err(error) => {
                            let waited = (now - entry.created_at).to_std().unwrap_or_default();
                            let retry_after = match &error {
                                ConnectorError::Transient { retry_after, .. } => *retry_after,
                                _ => None,
                            };
                            if fallback.is_some() && waited >= self.config.fallback_after {
                                Outcome::FallBack {
                                    reason: format!(
                                        "{error}; still not posted {}s after it was queued",
                                        waited.as_secs()
                                    ),
                                }
                            } else {
                                Outcome::Retry { error: error.to_string(), retry_after }
                            }
                        }
                    }
                }
            };
            let batch = self.outcome(entry, outcome, &mut report);
            self.store.commit(batch).await?;
        }
        if report.fell_back > 0
            && let Some(wake) = &self.email_wake
        {
            wake.notify_one();
        }
        Ok(report)
    }

    fn outcome(&self, mut entry: OutboxEntry, outcome: Outcome, report: &mut ChatReport) -> Batch {
        let now = self.clock.now();
        let mut batch = Batch::new();
        let lead_id = entry.effect.lead_id().cloned();
        let service = match &entry.effect {
            Effect::Chat { service, .. } => service.as_str(),
            _ => "",
        };
        let mut history = Vec::new();
        entry.attempts += 1;
        match outcome {
            Outcome::Posted { channel, ts } => {
                tracing::info!(key = %entry.key, service, %channel, %ts, "chat message posted");
                metrics::counter!("leadloop_chat_posted_total", "service" => service).increment(1);
                entry.state = OutboxState::Done { at: now };
                entry.last_error = None;
                history.push(EventKind::EffectDone { key: entry.key.clone() });
                report.posted += 1;
            }
            Outcome::Retry { error, retry_after } => {
                let delay = backoff(&self.config.relay, entry.key.as_str(), entry.attempts)
                    .max(retry_after.unwrap_or_default());
                tracing::warn!(key = %entry.key, service, attempts = entry.attempts, retry_in_s = delay.as_secs(), %error, "chat message not posted; will retry");
                metrics::counter!("leadloop_chat_retried_total", "service" => service).increment(1);
                entry.next_attempt_at = now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::hours(1));
                entry.last_error = Some(error);
                report.retried += 1;
            }
            Outcome::Failed { reason } => {
                tracing::error!(key = %entry.key, service, %reason, "chat message refused for good; the step's email went too");
                metrics::counter!("leadloop_chat_failed_total", "service" => service).increment(1);
                entry.state = OutboxState::Failed { at: now, reason: reason.clone() };
                history.push(EventKind::EffectFailed { key: entry.key.clone(), reason });
                report.failed += 1;
            }
            Outcome::FallBack { reason } => {
                let fallback = entry.effect.chat_fallback();
                let email_key = fallback.as_ref().map(|(key, _)| key.to_string()).unwrap_or_default();
                tracing::warn!(key = %entry.key, service, %reason, email = %email_key, "chat message not posted; sending the email instead");
                metrics::counter!("leadloop_chat_fallback_total", "service" => service).increment(1);
                if let Some((key, email)) = fallback {
                    batch.enqueue(OutboxEntry::new(key, email, now));
                }
                let dropped = format!("{reason}; sent by email instead");
                entry.state = OutboxState::Dropped { at: now, reason: dropped.clone() };
                entry.last_error = Some(reason.clone());
                history.push(EventKind::EffectFailed { key: entry.key.clone(), reason: dropped });
                history.push(EventKind::Activity {
                    activity: "chat_fallback".into(),
                    detail: BTreeMap::from([
                        ("service".to_owned(), json!(service)),
                        ("reason".to_owned(), json!(reason)),
                        ("email".to_owned(), json!(email_key)),
                    ]),
                });
                report.fell_back += 1;
            }
        }
        if let Some(id) = &lead_id {
            for event in history {
                batch.append_history(id.clone(), HistoryEvent::new(now, Actor::System, event));
            }
        }
        batch.update_outbox(entry);
        batch
    }

    /// Rounds until `shutdown`; sleeps until woken or the next retry is due, at most `max_idle`.
    pub async fn run(&self, shutdown: CancellationToken, max_idle: Duration) {
        let relay = RelayLoop {
            name: "chat",
            store: self.store.as_ref(),
            clock: self.clock.as_ref(),
            channel: Channel::Chat,
            wake: Some(&self.wake),
        };
        relay
            .run(&shutdown, max_idle, || async {
                let report = self.run_once().await?;
                Ok(if report.handled() > 0 { Round::Progress } else { Round::Idle })
            })
            .await
    }
}
