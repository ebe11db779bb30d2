//! Nurture's entry points from the public link listener: a lead unsubscribing (one-click, RFC
//! 8058) and a click on a tracked link. The decisions are the policy's; the engine adds the
//! suppression of the address to the same atomic batch, and decides which clicks count.

use std::collections::BTreeMap;
use std::time::Duration;

use leadloop_core::connector::Activity;
use leadloop_core::{
    Actor, EventKind, HistoryEvent, IdempotencyKey, LeadId, OutboxState, Suppression, Timestamp,
};
use leadloop_store::Batch;
use serde_json::json;

use crate::{Applied, Engine, EngineError, apply};

/// What an unsubscribe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsubscribed {
    /// The lead was opted out and/or the address suppressed.
    Done,
    /// Already opted out and suppressed: nothing was written.
    Already,
    /// No such lead, and the link named no address: nothing could be done.
    Unknown,
}

/// A click on a tracked link, as its signed token says.
#[derive(Debug, Clone, Copy)]
pub struct Click<'a> {
    pub lead: &'a LeadId,
    pub track: &'a str,
    pub step: &'a str,
    pub link: &'a str,
    pub url: &'a str,
    /// The key of the email that carried the link (links sent before it was recorded have
    /// none: their clicks are never discounted as early).
    pub message: Option<&'a IdempotencyKey>,
}

/// Which clicks count. Mail scanners fetch every link of a message as it is delivered, and
/// readers come back to the same link: neither is a new sign of interest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClickRules {
    /// One click per lead, step and link is counted per window of this length (windows are
    /// aligned on the Unix epoch: hourly windows start on the hour). Zero counts every click.
    pub window: Duration,
    /// Clicks sooner than this after the email was delivered (or on an email not delivered)
    /// are a scanner's prefetch and are not counted. Zero counts them.
    pub min_delay: Duration,
}

impl Default for ClickRules {
    fn default() -> Self {
        Self { window: Duration::from_secs(3600), min_delay: Duration::from_secs(60) }
    }
}

/// What became of a click.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickOutcome {
    /// Recorded as an `email_click` activity (scoring counts it).
    Counted,
    /// A click on the same link of the same step was already counted in this window.
    Repeated,
    /// Within `min_delay` of delivery, or before it: a scanner.
    Early,
    /// The lead is not in the store.
    UnknownLead,
}

impl ClickOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ClickOutcome::Counted => "counted",
            ClickOutcome::Repeated => "repeated",
            ClickOutcome::Early => "early",
            ClickOutcome::UnknownLead => "unknown_lead",
        }
    }
}

impl Engine {
    /// Someone unsubscribed through a nurture link (`source`: `one-click` or `form`).
    /// `address` is the address the link was mailed to, when the link names it (links sent
    /// before addresses were bound into them do not); it is suppressed whatever became of the
    /// lead, so a lead deleted, or created again under another id, gets no more nurture mail.
    /// A lead still stored is opted out by the policy (it leaves every nurture track, the CRM
    /// update is queued) in the same batch; without `address` its current address is
    /// suppressed. Repeating an unsubscribe writes nothing.
    pub async fn unsubscribe(
        &self,
        lead: &LeadId,
        address: Option<&str>,
        source: &str,
    ) -> Result<Unsubscribed, EngineError> {
        let _writer = self.writer.lock().await;
        crate::retry_on_conflict(|| self.unsubscribe_once(lead, address, source)).await
    }

    async fn unsubscribe_once(
        &self,
        lead: &LeadId,
        address: Option<&str>,
        source: &str,
    ) -> Result<Unsubscribed, EngineError> {
        let now = self.clock.now();
        let record = self.store.lead(lead).await?;
        let address = address
            .or_else(|| record.as_ref().and_then(|r| r.lead.email.as_deref()))
            .map(|a| a.trim().to_lowercase())
            .filter(|a| !a.is_empty());
        let suppressed = match &address {
            Some(address) => self.store.suppression(address).await?.is_some(),
            None => false,
        };
        let detail = BTreeMap::from([("source".to_owned(), json!(source))]);
        let activity = Activity { lead_id: lead.clone(), at: now, kind: "unsubscribe".into(), detail };
        let mut applied = match &record {
            Some(record) if record.nurture.opted_out_at.is_none() => {
                let mut decision = self.policy.on_activity(record, &activity, &self.chart(), now);
                decision.events.insert(0, activity_event(&activity, now));
                apply(decision, Some(lead), Some(record), now)
            }
            Some(_) | None if address.is_none() || suppressed => {
                return Ok(if record.is_some() { Unsubscribed::Already } else { Unsubscribed::Unknown });
            }
            Some(_) => Applied { batch: Batch::new(), summary: Default::default() },
            None => {
                // The lead is gone; its history stays, and says what happened.
                let mut batch = Batch::new();
                batch.append_history(lead.clone(), activity_event(&activity, now));
                Applied { batch, summary: Default::default() }
            }
        };
        if let Some(address) = address.filter(|_| !suppressed) {
            applied.batch.suppress(Suppression { address, reason: "unsubscribed".into(), at: now });
        }
        self.commit(applied).await?;
        metrics::counter!("leadloop_nurture_unsubscribed_total").increment(1);
        Ok(Unsubscribed::Done)
    }

    /// A click on a tracked link in a nurture email. When `rules` let it count, it is recorded
    /// as an `email_click` activity (which scoring counts when a rule names it) and marked
    /// seen for its window, in one batch; otherwise nothing is written.
    pub async fn record_click(
        &self,
        click: &Click<'_>,
        rules: &ClickRules,
    ) -> Result<ClickOutcome, EngineError> {
        let _writer = self.writer.lock().await;
        let outcome = crate::retry_on_conflict(|| self.record_click_once(click, rules)).await?;
        match outcome {
            ClickOutcome::Counted => metrics::counter!("leadloop_nurture_clicks_total").increment(1),
            other => metrics::counter!("leadloop_nurture_clicks_ignored_total", "reason" => other.as_str())
                .increment(1),
        }
        Ok(outcome)
    }

    async fn record_click_once(
        &self,
        click: &Click<'_>,
        rules: &ClickRules,
    ) -> Result<ClickOutcome, EngineError> {
        let now = self.clock.now();
        let Some(record) = self.store.lead(click.lead).await? else {
            tracing::warn!(lead_id = %click.lead, "click for an unknown lead ignored");
            return Ok(ClickOutcome::UnknownLead);
        };
        if !rules.min_delay.is_zero()
            && let Some(message) = click.message
            && let Some(entry) = self.store.outbox_entry(message).await?
        {
            let early = match entry.state {
                OutboxState::Done { at } => now < at + delta(rules.min_delay),
                // Not delivered (yet, or ever): no reader has seen this link.
                _ => true,
            };
            if early {
                return Ok(ClickOutcome::Early);
            }
        }
        let seen = window_key(click, rules.window, now);
        if let Some(key) = &seen
            && self.store.seen(&[(click.lead.clone(), key.clone())]).await?.first().copied().unwrap_or(false)
        {
            return Ok(ClickOutcome::Repeated);
        }
        let detail = BTreeMap::from([
            ("track".to_owned(), json!(click.track)),
            ("step".to_owned(), json!(click.step)),
            ("link".to_owned(), json!(click.link)),
            ("url".to_owned(), json!(click.url)),
        ]);
        let activity = Activity { lead_id: click.lead.clone(), at: now, kind: "email_click".into(), detail };
        let mut decision = self.policy.on_activity(&record, &activity, &self.chart(), now);
        decision.events.insert(0, activity_event(&activity, now));
        let mut applied = apply(decision, Some(click.lead), Some(&record), now);
        if let Some(key) = seen {
            applied.batch.mark_seen(click.lead.clone(), key);
        }
        self.commit(applied).await?;
        Ok(ClickOutcome::Counted)
    }
}

fn activity_event(activity: &Activity, now: Timestamp) -> HistoryEvent {
    HistoryEvent::new(
        now,
        Actor::System,
        EventKind::Activity { activity: activity.kind.clone(), detail: activity.detail.clone() },
    )
}

fn delta(duration: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(duration).unwrap_or(chrono::TimeDelta::MAX)
}

/// The seen-key of the click's window: `click/TRACK/STEP/LINK/WINDOW`, WINDOW the number of
/// whole windows since the epoch. `None` when every click counts.
fn window_key(click: &Click<'_>, window: Duration, now: Timestamp) -> Option<String> {
    let seconds = i64::try_from(window.as_secs()).ok().filter(|s| *s > 0)?;
    let index = now.timestamp().div_euclid(seconds);
    Some(format!("click/{}/{}/{}/{index}", click.track, click.step, click.link))
}
