//! The blast-radius guard's shell: keeps the [`GuardState`] in the store, performs what the
//! pure rules of `leadloop_core::guard` decide, and is shared by the email and CRM relays
//! (which hold what it says to hold), the engine (which reports nurture email queued, for the
//! surge hold) and the admin listener and CLI (`pause`, `resume`, `approve`).
//!
//! Every change of the switches is one store batch with its log entry (bucket `guard.log`),
//! made under one lock, so a pause, a resume and an automatic pause never overwrite each
//! other in this process. (Replicas sharing a store will need the record versioned, as lead
//! writes are; one daemon per store is enforced today.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use leadloop_core::guard::{
    self, GuardConfig, GuardEvent, GuardState, HoldReason, Pause, PauseScope, Surge, Window,
};
use leadloop_core::{Actor, Channel, Clock, Effect, IdempotencyKey, OutboxEntry, OutboxState, Timestamp};
use leadloop_store::{Batch, Store};
use serde::Serialize;
use tokio::sync::Notify;

use crate::EngineError;

/// Entries read per page when releasing or counting held entries.
const PAGE: usize = 500;

/// What the guard holds, for `leadloop approve` and `leadloop pause` (status).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Held {
    pub state: GuardState,
    /// Held by a pause, per channel name.
    pub paused_email: u64,
    pub paused_crm: u64,
    /// Nurture email waiting for approval.
    pub surge: u64,
    /// Up to `sample` of the surge: (key, lead, to, template).
    pub sample: Vec<HeldSample>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldSample {
    pub key: String,
    pub lead: Option<String>,
    pub to: Vec<String>,
    pub template: String,
    pub queued_at: Timestamp,
}

#[derive(Debug, Default)]
struct Meters {
    bounces: Window,
    queued: Window,
}

pub struct Guard {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: GuardConfig,
    /// Serialises changes of the switches, and holds the sliding windows.
    meters: tokio::sync::Mutex<Meters>,
    /// Set the moment nurture is paused (by the bounce guard or an operator), before the
    /// store write returns, so sends already lined up in a relay round stop at once.
    nurture_stopped: AtomicBool,
    /// Relays to wake when entries are released.
    wakers: std::sync::Mutex<Vec<Arc<Notify>>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Guard {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: GuardConfig) -> Self {
        Self {
            store,
            clock,
            config,
            meters: tokio::sync::Mutex::default(),
            nurture_stopped: AtomicBool::new(false),
            wakers: std::sync::Mutex::default(),
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Wakes `notify` when held entries are released (a relay's waker).
    pub fn add_waker(&self, notify: Arc<Notify>) {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner()).push(notify);
    }

    fn wake(&self) {
        for notify in self.wakers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            notify.notify_one();
        }
    }

    /// The switches as stored, and the gauges set from them.
    pub async fn state(&self) -> Result<GuardState, EngineError> {
        let state = self.store.guard().await?;
        self.nurture_stopped.store(state.nurture.is_some() || state.email.is_some(), Ordering::SeqCst);
        gauge(&state);
        Ok(state)
    }

    /// Whether nurture sending stopped since the round began (see `nurture_stopped`).
    pub fn nurture_stopped(&self) -> bool {
        self.nurture_stopped.load(Ordering::SeqCst)
    }

    /// What the guard decides for `entry`, given the switches a round read.
    pub fn screen(&self, entry: &OutboxEntry, state: &GuardState) -> guard::Verdict {
        guard::screen(&entry.effect, entry.created_at, state, &self.config)
    }

    /// The bookkeeping that holds `entry` (no attempt counted).
    pub fn hold(entry: &mut OutboxEntry, reason: HoldReason, now: Timestamp) {
        entry.state = OutboxState::Held { since: now, reason };
        metrics::counter!("leadloop_guard_held_total", "reason" => reason.as_str(), "channel" => entry.effect.channel().as_str())
            .increment(1);
    }

    /// Changes the switches with `change` and logs `events` in one batch, plus `extra`.
    async fn write(
        &self,
        state: &mut GuardState,
        events: Vec<GuardEvent>,
        mut extra: Batch,
    ) -> Result<(), EngineError> {
        for event in events {
            state.events += 1;
            let value = serde_json::to_value(&event).unwrap_or(serde_json::Value::Null);
            tracing::warn!(event = %value, "guard");
            let name = value.get("event").and_then(|e| e.as_str()).unwrap_or("unknown").to_owned();
            metrics::counter!("leadloop_guard_events_total", "event" => name).increment(1);
            extra.put_item(
                leadloop_store::GUARD_LOG_BUCKET,
                leadloop_store::guard_log_key(state.events),
                value,
            );
        }
        extra.set_guard(state.clone());
        self.store.commit(extra).await?;
        self.nurture_stopped.store(state.nurture.is_some() || state.email.is_some(), Ordering::SeqCst);
        gauge(state);
        Ok(())
    }

    /// Pauses `scopes` (those not paused already); returns the switches after.
    pub async fn pause(
        &self,
        scopes: &[PauseScope],
        by: Actor,
        reason: &str,
    ) -> Result<GuardState, EngineError> {
        let _meters = self.meters.lock().await;
        let mut state = self.store.guard().await?;
        let now = self.clock.now();
        let mut events = Vec::new();
        for &scope in scopes {
            let slot = state.pause_mut(scope);
            if slot.is_none() {
                *slot = Some(Pause { since: now, by: by.clone(), reason: reason.to_owned() });
                events.push(GuardEvent::Paused { at: now, scope, by: by.clone(), reason: reason.to_owned() });
            }
        }
        if !events.is_empty() {
            self.write(&mut state, events, Batch::new()).await?;
        }
        Ok(state)
    }

    /// Lifts the pauses of `scopes` and releases what pauses held (what is still paused is
    /// held again by the next relay round); returns how many entries were released.
    pub async fn resume(&self, scopes: &[PauseScope], by: Actor) -> Result<u64, EngineError> {
        let mut meters = self.meters.lock().await;
        let mut state = self.store.guard().await?;
        let now = self.clock.now();
        let lifted: Vec<PauseScope> =
            scopes.iter().copied().filter(|&scope| state.pause_mut(scope).take().is_some()).collect();
        let mut released = 0;
        // Only the channels a lifted pause covers (a pause still in force of the same
        // channel, e.g. nurture after `resume email`, holds its entries again next round).
        let mut channels = Vec::new();
        if scopes.iter().any(|s| matches!(s, PauseScope::Email | PauseScope::Nurture)) {
            channels.push(Channel::Email);
        }
        if scopes.contains(&PauseScope::Crm) {
            channels.push(Channel::Crm);
        }
        for channel in channels {
            released += self.release(channel, HoldReason::Paused, now).await?;
        }
        if !lifted.is_empty() {
            // The bounce window starts over: the bounces that paused nurture are not counted
            // again against the list the operator just fixed.
            if lifted.contains(&PauseScope::Nurture) {
                meters.bounces.clear();
            }
            let events = lifted
                .iter()
                .enumerate()
                .map(|(i, &scope)| GuardEvent::Resumed {
                    at: now,
                    scope,
                    by: by.clone(),
                    released: if i == 0 { released } else { 0 },
                })
                .collect();
            self.write(&mut state, events, Batch::new()).await?;
        }
        self.wake();
        Ok(released)
    }

    /// Releases every held entry of `channel` held for `reason` (pending again, due now).
    async fn release(
        &self,
        channel: Channel,
        reason: HoldReason,
        now: Timestamp,
    ) -> Result<u64, EngineError> {
        let mut after = 0;
        let mut released = 0;
        loop {
            let page = self.store.outbox_held(channel, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let mut batch = Batch::new();
            for mut entry in page {
                if matches!(entry.state, OutboxState::Held { reason: r, .. } if r == reason) {
                    entry.state = OutboxState::Pending;
                    entry.next_attempt_at = now;
                    entry.released_at = Some(now);
                    batch.update_outbox(entry);
                    released += 1;
                }
            }
            if !batch.is_empty() {
                self.store.commit(batch).await?;
            }
        }
        Ok(released)
    }

    /// What is held now, with up to `sample` of the surge.
    pub async fn held(&self, sample: usize) -> Result<Held, EngineError> {
        let mut held = Held { state: self.store.guard().await?, ..Held::default() };
        gauge(&held.state);
        for channel in [Channel::Email, Channel::Crm] {
            let mut after = 0;
            loop {
                let page = self.store.outbox_held(channel, after, PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for entry in page {
                    match (&entry.state, channel) {
                        (OutboxState::Held { reason: HoldReason::Surge, .. }, _) => {
                            held.surge += 1;
                            if held.sample.len() < sample
                                && let Effect::Email { to, template, lead_id, .. } = &entry.effect
                            {
                                held.sample.push(HeldSample {
                                    key: entry.key.to_string(),
                                    lead: lead_id.as_ref().map(|l| l.to_string()),
                                    to: to.clone(),
                                    template: template.clone(),
                                    queued_at: entry.created_at,
                                });
                            }
                        }
                        (_, Channel::Email) => held.paused_email += 1,
                        _ => held.paused_crm += 1,
                    }
                }
            }
        }
        metrics::gauge!("leadloop_guard_held", "reason" => "surge").set(held.surge as f64);
        metrics::gauge!("leadloop_guard_held", "reason" => "paused")
            .set((held.paused_email + held.paused_crm) as f64);
        Ok(held)
    }

    /// Ends the surge hold and releases the nurture email it held; returns how many.
    pub async fn approve(&self, by: Actor) -> Result<u64, EngineError> {
        let mut meters = self.meters.lock().await;
        let mut state = self.store.guard().await?;
        let now = self.clock.now();
        let released = self.release(Channel::Email, HoldReason::Surge, now).await?;
        let had_surge = state.surge.take().is_some();
        // What was counted toward this surge is approved: the next hour counts afresh.
        meters.queued.clear();
        if had_surge || released > 0 {
            self.write(&mut state, vec![GuardEvent::Approved { at: now, by, released }], Batch::new())
                .await?;
        }
        self.wake();
        Ok(released)
    }

    /// Ends the surge hold and drops the nurture email it held, by the operator's decision
    /// (each entry records why); returns how many.
    pub async fn reject(&self, by: Actor) -> Result<u64, EngineError> {
        let mut meters = self.meters.lock().await;
        let mut state = self.store.guard().await?;
        let now = self.clock.now();
        let mut after = 0;
        let mut dropped = 0;
        loop {
            let page = self.store.outbox_held(Channel::Email, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let mut batch = Batch::new();
            for mut entry in page {
                if matches!(entry.state, OutboxState::Held { reason: HoldReason::Surge, .. }) {
                    entry.state = OutboxState::Dropped { at: now, reason: format!("surge rejected by {by}") };
                    batch.update_outbox(entry);
                    dropped += 1;
                }
            }
            if !batch.is_empty() {
                self.store.commit(batch).await?;
            }
        }
        metrics::counter!("leadloop_email_dropped_total", "kind" => "nurture").increment(dropped);
        let had_surge = state.surge.take().is_some();
        meters.queued.clear();
        if had_surge || dropped > 0 {
            self.write(&mut state, vec![GuardEvent::Rejected { at: now, by, dropped }], Batch::new()).await?;
        }
        Ok(dropped)
    }

    /// The email relay reports `n` hard bounces (or policy refusals) of lead mail; past the
    /// threshold within the window, nurture email is paused and the ops address alerted.
    /// Returns whether this call paused it.
    pub async fn bounced(&self, n: u64) -> Result<bool, EngineError> {
        if n == 0 {
            return Ok(false);
        }
        metrics::counter!("leadloop_guard_bounces_total").increment(n);
        let mut meters = self.meters.lock().await;
        let now = self.clock.now();
        let count = meters.bounces.record(now, n, self.config.bounce_window);
        if !guard::bounces_trip(count, &self.config) {
            return Ok(false);
        }
        let mut state = self.store.guard().await?;
        if state.nurture.is_some() {
            return Ok(false);
        }
        // Stop the sends lined up in this round before the write returns.
        self.nurture_stopped.store(true, Ordering::SeqCst);
        let window = humantime::format_duration(self.config.bounce_window).to_string();
        let reason =
            format!("{count} hard bounces or refusals within {window} (limit {})", self.config.max_bounces);
        let by = Actor::Rule { name: "guard.bounces".into() };
        state.nurture = Some(Pause { since: now, by: by.clone(), reason: reason.clone() });
        meters.bounces.clear();
        let event = GuardEvent::Paused { at: now, scope: PauseScope::Nurture, by, reason: reason.clone() };
        let alert = self.alert(
            &state,
            "nurture email paused",
            &format!("{reason}: leadloop paused nurture email to protect the sending domain."),
            "Check the list and the bounces (leadloop_guard_bounces_total, the relay's log), then: leadloop resume nurture",
        );
        self.write(&mut state, vec![event], alert).await?;
        Ok(true)
    }

    /// The engine reports `n` nurture emails queued; past the hourly limit, a surge hold
    /// starts (if none is in force). Returns whether this call started it.
    pub async fn nurture_queued(&self, n: u64) -> Result<bool, EngineError> {
        if n == 0 || self.config.surge_per_hour == 0 {
            return Ok(false);
        }
        let mut meters = self.meters.lock().await;
        let now = self.clock.now();
        let hour = std::time::Duration::from_secs(3600);
        let count = meters.queued.record(now, n, hour);
        if !guard::surge_trips(count, &self.config) {
            return Ok(false);
        }
        let mut state = self.store.guard().await?;
        if state.surge.is_some() {
            return Ok(false);
        }
        let since = meters.queued.oldest().unwrap_or(now);
        state.surge = Some(Surge { tripped_at: now, since, queued: count });
        let event =
            GuardEvent::SurgeHeld { at: now, since, queued: count, limit: self.config.surge_per_hour };
        let alert = self.alert(
            &state,
            "nurture surge held for approval",
            &format!(
                "{count} nurture emails were queued within an hour (limit {}); those queued since {since} wait for approval.",
                self.config.surge_per_hour
            ),
            "See how many and a sample: leadloop approve --dry-run; send them: leadloop approve; drop them: leadloop approve --reject",
        );
        self.write(&mut state, vec![event], alert).await?;
        Ok(true)
    }

    /// The alert to the ops address, if one is configured, queued with the switch.
    fn alert(&self, state: &GuardState, what: &str, message: &str, action: &str) -> Batch {
        let mut batch = Batch::new();
        let Some(ops) = &self.config.ops_address else { return batch };
        let now = self.clock.now();
        let Ok(key) = IdempotencyKey::from_parts(["guard", "alert", &(state.events + 1).to_string()]) else {
            return batch;
        };
        let effect = Effect::Email {
            kind: guard::ALERT_KIND.into(),
            template: "guard_alert".into(),
            to: vec![ops.clone()],
            cc: vec![],
            lead_id: None,
            vars: serde_json::json!({
                "kind": guard::ALERT_KIND,
                "what": what,
                "message": message,
                "at": now.to_rfc3339(),
                "action": action,
            }),
            deliver_to: None,
        };
        batch.enqueue(OutboxEntry::new(key, effect, now));
        metrics::counter!("leadloop_guard_alerts_total").increment(1);
        batch
    }
}

/// `leadloop_guard_paused{scope}` (1 while paused) and `leadloop_guard_surge_held` (1 while
/// a surge waits).
fn gauge(state: &GuardState) {
    for scope in PauseScope::ALL {
        metrics::gauge!("leadloop_guard_paused", "scope" => scope.as_str())
            .set(if state.pause(scope).is_some() { 1.0 } else { 0.0 });
    }
    metrics::gauge!("leadloop_guard_surge_held").set(if state.surge.is_some() { 1.0 } else { 0.0 });
}
