//! The data templates see. One place builds it, so the template variables stay the same
//! whoever sends the mail (the SLA ladder, nurture, `email preview`).

use serde_json::{Value, json};

use crate::lead::LeadRecord;
use crate::person::Person;

/// `lead.*`: the lead's fields, its display name, stage and combined score.
pub fn lead(record: &LeadRecord) -> Value {
    let lead = &record.lead;
    json!({
        "id": lead.id.as_str(),
        "name": lead.display_name(),
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "email": lead.email,
        "company": lead.company,
        "title": lead.title,
        "industry": lead.industry,
        "country": lead.country,
        "lead_source": lead.lead_source,
        "status": lead.status,
        "stage": record.stage.as_str(),
        "score": (record.fit_score + record.engagement_score).round(),
        "interests": lead.interests,
    })
}

/// `owner.*`, `manager.*`, `executive.*`.
pub fn person(person: &Person) -> Value {
    json!({
        "id": person.id.as_str(),
        "name": person.name,
        "email": person.email,
        "time_zone": person.time_zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lead::Lead;

    #[test]
    fn lead_vars_use_the_display_name_and_stage() {
        let mut lead = Lead::new("00Q1");
        lead.first_name = Some("Ana".into());
        let mut record = LeadRecord::new(lead, chrono::DateTime::UNIX_EPOCH);
        record.fit_score = 40.4;
        record.engagement_score = 25.0;
        let vars = super::lead(&record);
        assert_eq!(vars["name"], "Ana");
        assert_eq!(vars["stage"], "just_a_name");
        assert_eq!(vars["score"], 65.0);
        assert_eq!(vars["company"], Value::Null);
    }
}
