//! Nurture's entry points from the public link listener: a lead unsubscribing (one-click, RFC
//! 8058) and a click on a tracked link. The decisions are the policy's; the engine adds the
//! suppression of the address to the same atomic batch.

use std::collections::BTreeMap;

use leadloop_core::connector::Activity;
use leadloop_core::{Actor, EventKind, HistoryEvent, LeadId, Suppression};
use serde_json::json;

use crate::{Engine, EngineError, apply};

impl Engine {
    /// The lead unsubscribed through its link (`source`: `one-click` or `form`). The policy
    /// opts it out (it leaves every nurture track, the CRM update is queued) and its address
    /// is suppressed, in one batch. Returns `false` for a lead leadloop does not know.
    pub async fn unsubscribe(&self, lead: &LeadId, source: &str) -> Result<bool, EngineError> {
        let _writer = self.writer.lock().await;
        crate::retry_on_conflict(|| self.unsubscribe_once(lead, source)).await
    }

    async fn unsubscribe_once(&self, lead: &LeadId, source: &str) -> Result<bool, EngineError> {
        let now = self.clock.now();
        let Some(record) = self.store.lead(lead).await? else { return Ok(false) };
        let detail = BTreeMap::from([("source".to_owned(), json!(source))]);
        let activity = Activity { lead_id: lead.clone(), at: now, kind: "unsubscribe".into(), detail };
        let mut decision = self.policy.on_activity(&record, &activity, &self.chart(), now);
        decision.events.insert(
            0,
            HistoryEvent::new(
                now,
                Actor::System,
                EventKind::Activity { activity: activity.kind.clone(), detail: activity.detail.clone() },
            ),
        );
        let mut applied = apply(decision, Some(lead), Some(&record), now);
        if let Some(address) = record.lead.email.as_deref().filter(|a| !a.trim().is_empty()) {
            applied.batch.suppress(Suppression {
                address: address.trim().to_lowercase(),
                reason: "unsubscribed".into(),
                at: now,
            });
        }
        self.commit(applied).await?;
        metrics::counter!("leadloop_nurture_unsubscribed_total").increment(1);
        Ok(true)
    }

    /// A click on a tracked link in a nurture email, recorded as an `email_click` activity
    /// (which scoring counts when a rule names it).
    pub async fn record_click(
        &self,
        lead: &LeadId,
        track: &str,
        step: &str,
        link: &str,
        url: &str,
    ) -> Result<(), EngineError> {
        let detail = BTreeMap::from([
            ("track".to_owned(), json!(track)),
            ("step".to_owned(), json!(step)),
            ("link".to_owned(), json!(link)),
            ("url".to_owned(), json!(url)),
        ]);
        let activity =
            Activity { lead_id: lead.clone(), at: self.clock.now(), kind: "email_click".into(), detail };
        self.record_activity(activity).await?;
        metrics::counter!("leadloop_nurture_clicks_total").increment(1);
        Ok(())
    }
}
