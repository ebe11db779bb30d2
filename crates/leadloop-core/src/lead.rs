//! A lead as leadloop knows it: the CRM's fields plus leadloop's own state (stage, scores).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
pub use crate::ids::LeadId;
use crate::ids::PersonId;
use crate::stage::Stage;

/// The lead's fields as synced from the CRM. Fields the CRM left empty are `None`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Lead {
    pub id: LeadId,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub company: Option<String>,
    pub account_id: Option<String>,
    pub title: Option<String>,
    pub industry: Option<String>,
    pub company_size: Option<u32>,
    pub country: Option<String>,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub time_zone: Option<String>,
    pub lead_source: Option<String>,
    /// The CRM's own status value, e.g. `Open - Not Contacted`.
    pub status: Option<String>,
    pub owner_id: Option<PersonId>,
    pub opted_out: bool,
    pub interests: Vec<String>,
    /// CRM fields mapped through config that have no dedicated slot.
    pub custom: BTreeMap<String, serde_json::Value>,
}

impl Lead {
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: LeadId::new(id), ..Self::default() }
    }

    /// "First Last", or whichever part exists, or the email, or the id.
    pub fn display_name(&self) -> String {
        let name = [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if !name.is_empty() {
            name
        } else if let Some(email) = &self.email {
            email.clone()
        } else {
            self.id.to_string()
        }
    }

    /// Applies a partial update as sync or `simulate` delivers it: keys present replace the
    /// field (a JSON `null` clears it), keys absent leave it alone, unknown keys are ignored.
    pub fn merge_json(&mut self, patch: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
        let mut current = serde_json::to_value(&*self).map_err(|e| e.to_string())?;
        let Some(fields) = current.as_object_mut() else { return Err("lead is not an object".into()) };
        for (key, value) in patch {
            if fields.contains_key(key) {
                fields.insert(key.clone(), value.clone());
            }
        }
        let merged: Lead = serde_json::from_value(current).map_err(|e| e.to_string())?;
        *self = merged;
        Ok(())
    }

    /// The names of the fields that differ between `self` and `other`.
    pub fn changed_fields(&self, other: &Lead) -> Vec<String> {
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
            (serde_json::to_value(self), serde_json::to_value(other))
        else {
            return Vec::new();
        };
        a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect()
    }

    /// The domain part of the email address, lowercased.
    pub fn email_domain(&self) -> Option<String> {
        let email = self.email.as_deref()?;
        let (_, domain) = email.rsplit_once('@')?;
        (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
    }
}

/// One activity that scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredActivity {
    pub at: Timestamp,
    pub rule: String,
    pub points: f64,
}

/// What the store keeps per lead: the CRM's view plus leadloop's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadRecord {
    pub lead: Lead,
    pub stage: Stage,
    /// When the lead entered its current stage.
    pub stage_since: Timestamp,
    pub fit_score: f64,
    pub engagement_score: f64,
    /// The number of hand-offs so far; the current one, if any, has this number.
    pub handoffs: u32,
    /// The hand-off whose SLA is running, if any.
    #[serde(default)]
    pub handoff: Option<crate::handoff::Handoff>,
    /// Recent activities that scored, newest last (at most `scoring::MAX_EVENTS`).
    #[serde(default)]
    pub scored: Vec<ScoredActivity>,
    /// Nurture tracks the lead is in, its recent nurture sends and its opt-out.
    #[serde(default, skip_serializing_if = "crate::nurture_state::NurtureState::is_empty")]
    pub nurture: crate::nurture_state::NurtureState,
    pub updated_at: Timestamp,
    /// Incremented on every write; lets readers detect a concurrent change.
    pub version: u64,
}

impl LeadRecord {
    pub fn new(lead: Lead, now: Timestamp) -> Self {
        Self {
            lead,
            stage: Stage::JustAName,
            stage_since: now,
            fit_score: 0.0,
            engagement_score: 0.0,
            handoffs: 0,
            handoff: None,
            scored: Vec::new(),
            nurture: crate::nurture_state::NurtureState::default(),
            updated_at: now,
            version: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_name_falls_back_in_order() {
        let mut lead = Lead::new("00Q1");
        assert_eq!(lead.display_name(), "00Q1");
        lead.email = Some("ana@Acme.Example".into());
        assert_eq!(lead.display_name(), "ana@Acme.Example");
        assert_eq!(lead.email_domain().as_deref(), Some("acme.example"));
        lead.last_name = Some("Lima".into());
        assert_eq!(lead.display_name(), "Lima");
        lead.first_name = Some("Ana".into());
        assert_eq!(lead.display_name(), "Ana Lima");
    }

    #[test]
    fn merge_replaces_given_fields_and_keeps_the_rest() {
        let mut lead = Lead::new("00Q1");
        lead.company = Some("Acme".into());
        lead.status = Some("Open - Not Contacted".into());
        let patch = serde_json::json!({ "status": "Working - Contacted", "title": null, "owner_id": "005A", "bogus": 1 });
        let before = lead.clone();
        lead.merge_json(patch.as_object().expect("object")).expect("merge");
        assert_eq!(lead.status.as_deref(), Some("Working - Contacted"));
        assert_eq!(lead.company.as_deref(), Some("Acme"));
        assert_eq!(lead.owner_id.as_ref().map(|o| o.as_str()), Some("005A"));
        assert_eq!(before.changed_fields(&lead), ["owner_id", "status"]);
        let bad = serde_json::json!({ "opted_out": "yes" });
        assert!(lead.merge_json(bad.as_object().expect("object")).is_err());
    }

    #[test]
    fn email_domain_rejects_addresses_without_domain() {
        let mut lead = Lead::new("00Q1");
        lead.email = Some("ana@".into());
        assert_eq!(lead.email_domain(), None);
        lead.email = Some("no-at-sign".into());
        assert_eq!(lead.email_domain(), None);
    }
}
