//! The data templates see. One place builds it, so the template variables stay the same
//! whoever sends the mail (the SLA ladder, nurture, `email preview`).

use serde_json::{Value, json};

use crate::Timestamp;
use crate::lead::LeadRecord;
use crate::person::Person;
use crate::scoring::ScoringConfig;

/// How many score reasons `lead.score_reasons` lists at most.
pub const TOP_SCORE_REASONS: usize = 3;

/// `lead.*`: the lead's fields, its display name, stage and combined score. `score_reasons` is
/// empty here; [`lead_scored`] fills it where the scoring rules are known.
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
        // A whole number: templates print it as `72`, not `72.0`.
        "score": (record.fit_score + record.engagement_score).round() as i64,
        "interests": lead.interests,
        "score_reasons": [],
    })
}

/// `lead.*` with `score_reasons`: what made the lead's score, strongest first.
pub fn lead_scored(record: &LeadRecord, scoring: &ScoringConfig, now: Timestamp) -> Value {
    let mut vars = lead(record);
    vars["score_reasons"] = score_reasons(record, scoring, now).into();
    vars
}

/// The lead's top score reasons at `now`, e.g. `["senior title (+40)", "demo request (+30)"]`:
/// the fit rules that match it and its scored activities summed per engagement rule (decayed
/// to `now`), strongest first, at most [`TOP_SCORE_REASONS`], each worth at least one point.
pub fn score_reasons(record: &LeadRecord, scoring: &ScoringConfig, now: Timestamp) -> Vec<String> {
    let explanation = scoring.explain(record, now);
    let mut reasons: Vec<(String, f64)> = explanation.fit_rules;
    let fit_rules = reasons.len();
    for (rule, _, _, points) in explanation.activities {
        match reasons[fit_rules..].iter_mut().find(|(name, _)| *name == rule) {
            Some((_, sum)) => *sum += points,
            None => reasons.push((rule, points)),
        }
    }
    reasons.retain(|(_, points)| points.round() >= 1.0);
    // Stable: equal points keep the rules' order (fit first, then activities as they came).
    reasons.sort_by(|a, b| b.1.total_cmp(&a.1));
    reasons.truncate(TOP_SCORE_REASONS);
    reasons.into_iter().map(|(name, points)| format!("{name} (+{})", points.round())).collect()
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
        assert_eq!(vars["score_reasons"], json!([]));
    }

    #[test]
    fn score_reasons_are_the_strongest_rules_and_activities() {
        use crate::lead::ScoredActivity;
        use crate::scoring::{EngagementRule, FitRule};
        let now: Timestamp = "2026-03-02T14:00:00Z".parse().expect("instant");
        let fit = |name: &str, contains: &str, points: f64| FitRule {
            name: name.into(),
            field: "title".into(),
            equals: vec![],
            contains: vec![contains.into()],
            min: None,
            max: None,
            points,
        };
        let engagement = |name: &str, activity: &str| EngagementRule {
            name: name.into(),
            activity: activity.into(),
            points: 10.0,
            cap: None,
            per: std::time::Duration::from_secs(86_400),
        };
        let scoring = ScoringConfig {
            fit: vec![
                fit("senior title", "vp", 40.0),
                fit("engineer", "engineering", 5.0),
                fit("student", "student", -50.0),
            ],
            engagement: vec![
                engagement("web visits", "web_visit"),
                engagement("demo request", "form_submit"),
            ],
            ..ScoringConfig::default()
        };
        let mut lead = Lead::new("00Q1");
        lead.title = Some("VP Engineering".into());
        let mut record = LeadRecord::new(lead, now);
        let scored = |rule: &str, points: f64| ScoredActivity { at: now, rule: rule.into(), points };
        record.scored =
            vec![scored("web visits", 3.0), scored("demo request", 30.0), scored("web visits", 3.0)];
        assert_eq!(
            score_reasons(&record, &scoring, now),
            ["senior title (+40)", "demo request (+30)", "web visits (+6)"]
        );
        let vars = lead_scored(&record, &scoring, now);
        assert_eq!(vars["score_reasons"][0], "senior title (+40)");
        // Nothing scored: no reasons, never a blank one.
        let bare = LeadRecord::new(Lead::new("00Q2"), now);
        assert!(score_reasons(&bare, &scoring, now).is_empty());
    }
}
