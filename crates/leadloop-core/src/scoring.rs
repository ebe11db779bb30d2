//! Lead scoring: fit (who the lead is) and engagement (what the lead does), kept apart and
//! combined; engagement decays with a half-life when the lead goes quiet. Every score explains
//! itself: the fit rules that matched, the activities that counted and the decay applied.
//!
//! Engagement is evaluated at the instant it is read — `points · 0.5^(age / half_life)` summed
//! over the lead's recent scored activities — so decay needs no sweep over all leads.

use std::time::Duration;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Timestamp;
pub use crate::lead::ScoredActivity;
use crate::lead::{Lead, LeadRecord};

/// The most scored activities kept per lead; older ones have decayed to nothing long before.
pub const MAX_EVENTS: usize = 200;

fn default_threshold() -> f64 {
    65.0
}

fn default_half_life() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// `[scoring]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringConfig {
    /// Combined score at which a lead becomes Marketing Qualified.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Engagement halves every `half_life` without new activity.
    #[serde(default = "default_half_life", with = "crate::serde_duration")]
    pub half_life: Duration,
    #[serde(default)]
    pub fit: Vec<FitRule>,
    #[serde(default)]
    pub engagement: Vec<EngagementRule>,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            threshold: default_threshold(),
            half_life: default_half_life(),
            fit: Vec::new(),
            engagement: Vec::new(),
        }
    }
}

/// Points for a field of the lead. A rule matches when every condition given holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitRule {
    pub name: String,
    /// `title`, `industry`, `country`, `lead_source`, `company`, `company_size`,
    /// `email_domain`, or `custom.NAME`.
    pub field: String,
    /// The value equals one of these (case-insensitive).
    #[serde(default)]
    pub equals: Vec<String>,
    /// The value contains one of these (case-insensitive).
    #[serde(default)]
    pub contains: Vec<String>,
    /// For numbers (`company_size`): at least / at most.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// May be negative (−50 for a student).
    pub points: f64,
}

/// Points for an activity, capped per period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngagementRule {
    pub name: String,
    /// `web_visit`, `content_download`, `email_click`, `form_submit`, `meeting`, …
    pub activity: String,
    pub points: f64,
    /// At most this many points from this rule within `per`.
    pub cap: Option<f64>,
    #[serde(default = "default_per", with = "crate::serde_duration")]
    pub per: Duration,
}

fn default_per() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// A score with its reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub fit: f64,
    pub engagement: f64,
    pub combined: f64,
    pub fit_rules: Vec<(String, f64)>,
    /// (rule, at, points when scored, points now after decay).
    pub activities: Vec<(String, Timestamp, f64, f64)>,
    pub half_life_days: f64,
}

fn field(lead: &Lead, name: &str) -> Option<Value> {
    let text = |v: &Option<String>| v.clone().map(Value::String);
    match name {
        "title" => text(&lead.title),
        "industry" => text(&lead.industry),
        "country" => text(&lead.country),
        "lead_source" => text(&lead.lead_source),
        "company" => text(&lead.company),
        "company_size" => lead.company_size.map(|n| Value::from(n as f64)),
        "email_domain" => lead.email_domain().map(Value::String),
        other => other.strip_prefix("custom.").and_then(|k| lead.custom.get(k).cloned()),
    }
}

impl FitRule {
    pub fn matches(&self, lead: &Lead) -> bool {
        let Some(value) = field(lead, &self.field) else { return false };
        let text = match &value {
            Value::String(s) => s.to_lowercase(),
            other => other.to_string().to_lowercase(),
        };
        let number = value.as_f64().or_else(|| text.parse().ok());
        (self.equals.is_empty() || self.equals.iter().any(|e| e.to_lowercase() == text))
            && (self.contains.is_empty() || self.contains.iter().any(|c| text.contains(&c.to_lowercase())))
            && self.min.is_none_or(|min| number.is_some_and(|n| n >= min))
            && self.max.is_none_or(|max| number.is_some_and(|n| n <= max))
    }
}

impl ScoringConfig {
    /// The fit score and the rules that made it.
    pub fn fit(&self, lead: &Lead) -> (f64, Vec<(String, f64)>) {
        let rules: Vec<(String, f64)> =
            self.fit.iter().filter(|r| r.matches(lead)).map(|r| (r.name.clone(), r.points)).collect();
        // `+ 0.0`: an empty float sum is −0.0.
        (rules.iter().map(|(_, p)| p).sum::<f64>() + 0.0, rules)
    }

    fn decay(&self, points: f64, age: TimeDelta) -> f64 {
        let half_life = self.half_life.as_secs_f64().max(1.0);
        let age = age.num_milliseconds().max(0) as f64 / 1000.0;
        points * 0.5f64.powf(age / half_life)
    }

    /// Engagement now: each scored activity decayed by its age.
    pub fn engagement(&self, activities: &[ScoredActivity], now: Timestamp) -> f64 {
        activities.iter().map(|a| self.decay(a.points, now - a.at)).sum::<f64>() + 0.0
    }

    /// The points `activity` scores now, after its rule's cap; `None` if no rule scores it.
    pub fn score_activity(
        &self,
        history: &[ScoredActivity],
        activity: &str,
        now: Timestamp,
    ) -> Option<ScoredActivity> {
        let rule = self.engagement.iter().find(|r| r.activity == activity)?;
        let mut points = rule.points;
        if let Some(cap) = rule.cap {
            // A period too long to subtract means "since the beginning".
            let window = TimeDelta::from_std(rule.per)
                .ok()
                .and_then(|per| now.checked_sub_signed(per))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
            let used: f64 =
                history.iter().filter(|a| a.rule == rule.name && a.at > window).map(|a| a.points).sum();
            points = points.min((cap - used).max(0.0));
        }
        (points != 0.0).then(|| ScoredActivity { at: now, rule: rule.name.clone(), points })
    }

    /// The lead's score now, with every reason.
    pub fn explain(&self, record: &LeadRecord, now: Timestamp) -> Explanation {
        let (fit, fit_rules) = self.fit(&record.lead);
        let activities: Vec<(String, Timestamp, f64, f64)> = record
            .scored
            .iter()
            .map(|a| (a.rule.clone(), a.at, a.points, self.decay(a.points, now - a.at)))
            .collect();
        let engagement = activities.iter().map(|a| a.3).sum::<f64>() + 0.0;
        Explanation {
            fit,
            engagement,
            combined: fit + engagement,
            fit_rules,
            activities,
            half_life_days: self.half_life.as_secs_f64() / 86_400.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ScoringConfig {
        ScoringConfig {
            threshold: 65.0,
            half_life: Duration::from_secs(10 * 86_400),
            fit: vec![
                FitRule {
                    name: "vp".into(),
                    field: "title".into(),
                    equals: vec![],
                    contains: vec!["vp".into(), "director".into()],
                    min: None,
                    max: None,
                    points: 30.0,
                },
                FitRule {
                    name: "student".into(),
                    field: "title".into(),
                    equals: vec![],
                    contains: vec!["student".into()],
                    min: None,
                    max: None,
                    points: -50.0,
                },
                FitRule {
                    name: "mid-size".into(),
                    field: "company_size".into(),
                    equals: vec![],
                    contains: vec![],
                    min: Some(200.0),
                    max: Some(5000.0),
                    points: 15.0,
                },
            ],
            engagement: vec![EngagementRule {
                name: "visits".into(),
                activity: "web_visit".into(),
                points: 4.0,
                cap: Some(10.0),
                per: Duration::from_secs(7 * 86_400),
            }],
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("instant")
    }

    #[test]
    fn fit_rules_add_and_subtract() {
        let mut lead = Lead::new("1");
        lead.title = Some("VP Engineering".into());
        lead.company_size = Some(800);
        assert_eq!(config().fit(&lead), (45.0, vec![("vp".into(), 30.0), ("mid-size".into(), 15.0)]));
        lead.title = Some("Student".into());
        lead.company_size = Some(10);
        assert_eq!(config().fit(&lead).0, -50.0);
    }

    #[test]
    fn engagement_is_capped_per_period() {
        let c = config();
        let now = t("2026-03-02T12:00:00Z");
        let mut history = Vec::new();
        for _ in 0..4 {
            if let Some(a) = c.score_activity(&history, "web_visit", now) {
                history.push(a);
            }
        }
        let points: Vec<f64> = history.iter().map(|a| a.points).collect();
        assert_eq!(points, [4.0, 4.0, 2.0]);
        // A week later the cap has room again.
        let later = now + TimeDelta::days(8);
        assert_eq!(c.score_activity(&history, "web_visit", later).map(|a| a.points), Some(4.0));
        assert_eq!(c.score_activity(&history, "unknown", later), None);
    }

    #[test]
    fn decay_is_monotone_and_halves_at_the_half_life() {
        let c = config();
        let at = t("2026-03-02T12:00:00Z");
        let history = vec![ScoredActivity { at, rule: "visits".into(), points: 40.0 }];
        assert!((c.engagement(&history, at) - 40.0).abs() < 1e-9);
        assert!((c.engagement(&history, at + TimeDelta::days(10)) - 20.0).abs() < 1e-9);
        assert!((c.engagement(&history, at + TimeDelta::days(20)) - 10.0).abs() < 1e-9);
        let mut previous = f64::MAX;
        for hours in 0..2000 {
            let now = c.engagement(&history, at + TimeDelta::hours(hours));
            assert!(now <= previous, "decay must never increase the score");
            previous = now;
        }
    }
}
