//! The SLA's configuration as `[sla]` reads it: policies (which leads, which ladder, business
//! hours, catch-up, digests, what to do while the rep is away), their steps and recipients, and
//! the statuses links set.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{NaiveDate, NaiveTime, Weekday};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lead::LeadRecord;
use crate::local_time::BusinessHours;
use crate::person::PersonId;

/// What the ladder does while the rep's calendar says they are away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenAway {
    /// Hold the escalation steps until the rep is back; later steps move by the same time.
    /// The alert still goes out at hand-off.
    #[default]
    Pause,
    /// Send the steps meant for the rep to the policy's `backup` instead.
    Backup,
    /// Carry on as if the rep were in.
    Ignore,
}

/// Who receives a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipient {
    Rep,
    Manager,
    Executive,
    /// A fixed address, written `address:ops@example.com` in config.
    #[serde(untagged)]
    Address(String),
}

/// Something a step does besides sending mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepAction {
    /// Create a follow-up task for the rep in the CRM.
    CreateTask { subject: String },
    /// Set the lead's CRM status.
    SetStatus { status: String },
    /// Give the lead to someone else: `manager` (the rep's manager) or a person's id. The
    /// owner is written back to the CRM; this hand-off ends and the next starts for the new
    /// owner, alert first.
    Reassign { to: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Names the step in keys and output: `alert`, `reminder`, `manager`, `executive`, …
    pub name: String,
    /// From the hand-off.
    #[serde(with = "crate::serde_duration")]
    pub after: Duration,
    /// The message kind, e.g. `sla.reminder`.
    pub kind: String,
    pub template: String,
    pub to: Vec<Recipient>,
    #[serde(default)]
    pub cc: Vec<Recipient>,
    #[serde(default)]
    pub actions: Vec<StepAction>,
    /// Where the step reaches its recipients: `email`, `slack`, `teams`, in any mix (default
    /// email). Each recipient gets the channels of this list they are reachable on
    /// (`[chat]`), and email when none; a chat message to a person the step does not also
    /// mail falls back to the email if it cannot be posted.
    #[serde(default = "email_only")]
    pub channels: Vec<crate::person::Reach>,
}

pub fn email_only() -> Vec<crate::person::Reach> {
    vec![crate::person::Reach::Email]
}

/// What to send for steps that fell due while leadloop was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Only the latest due step; its `handoff.missed_steps` says how many were skipped.
    #[default]
    Latest,
    /// Every missed step, in order.
    All,
}

/// Which leads a policy applies to; every listed condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Match {
    pub lead_source: Vec<String>,
    pub country: Vec<String>,
    pub industry: Vec<String>,
    /// Custom CRM fields (segment, product line, language, …): field → accepted values.
    pub custom: BTreeMap<String, Vec<String>>,
}

impl Match {
    pub fn matches(&self, record: &LeadRecord) -> bool {
        let hit = |list: &[String], value: &Option<String>| {
            list.is_empty()
                || value.as_deref().is_some_and(|v| list.iter().any(|l| l.eq_ignore_ascii_case(v)))
        };
        let lead = &record.lead;
        hit(&self.lead_source, &lead.lead_source)
            && hit(&self.country, &lead.country)
            && hit(&self.industry, &lead.industry)
            && self.custom.iter().all(|(field, accepted)| {
                let value = lead.custom.get(field).map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                hit(accepted, &value)
            })
    }
}

/// Who may get a daily digest instead of one copy per lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestRole {
    Manager,
    Executive,
}

/// A daily digest of overdue hand-offs, at `time` in each recipient's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    #[serde(default = "eight")]
    pub time: NaiveTime,
    pub roles: Vec<DigestRole>,
}

fn eight() -> NaiveTime {
    NaiveTime::from_hms_opt(8, 0, 0).unwrap_or_default()
}

fn monday() -> Weekday {
    Weekday::Mon
}

/// A weekly summary per executive: hand-offs that ended or breached in the week, how many met
/// the SLA (answered before the first reminder), and the median time to first touch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeeklySummary {
    #[serde(default = "monday", with = "weekday_name")]
    pub day: Weekday,
    #[serde(default = "eight")]
    pub time: NaiveTime,
}

mod weekday_name {
    use chrono::Weekday;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(day: &Weekday, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&day.to_string().to_lowercase())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Weekday, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(|_| serde::de::Error::custom(format!("unknown day {name:?}")))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaPolicy {
    pub name: String,
    #[serde(default, rename = "match")]
    pub when: Match,
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Count `after` in working hours; unset counts calendar hours.
    pub business_hours: Option<BusinessHours>,
    /// Also stop the ladder when a completed task is logged on the lead.
    #[serde(default)]
    pub stop_on_task: bool,
    /// What counts as the rep's first touch, ending the hand-off as satisfied: a change of
    /// the lead's CRM status (`status`, the default) and/or a completed activity of one of
    /// `first_touch_activities` logged by the hand-off's owner (`activity`).
    #[serde(default = "status_only")]
    pub satisfied_by: Vec<SatisfiedBy>,
    /// The activity kinds that count as a first touch under `satisfied_by = ["activity"]`:
    /// the CRM task's type (Salesforce's Task `Type`: `call`, `email`, `meeting`, …),
    /// compared without regard to case.
    #[serde(default = "call_and_email")]
    pub first_touch_activities: Vec<String>,
    /// Managers and/or executives get one digest a day instead of a copy per lead.
    pub digest: Option<Digest>,
    /// While the rep's calendar says they are away (all-day busy, out of office).
    #[serde(default)]
    pub when_away: WhenAway,
    /// Who gets the rep's steps under `when_away = "backup"`: `manager` or a person's id.
    pub backup: Option<String>,
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
}

/// What satisfies a hand-off (`satisfied_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SatisfiedBy {
    /// The lead's CRM status changed away from the hand-off's.
    Status,
    /// The hand-off's owner logged a completed activity of a `first_touch_activities` kind.
    Activity,
}

pub fn status_only() -> Vec<SatisfiedBy> {
    vec![SatisfiedBy::Status]
}

pub fn call_and_email() -> Vec<String> {
    vec!["call".into(), "email".into()]
}

impl SlaPolicy {
    /// Whether a change of the lead's status ends the hand-off.
    pub fn satisfied_by_status(&self) -> bool {
        self.satisfied_by.contains(&SatisfiedBy::Status)
    }

    /// Whether `kind` (a CRM task's type) is a first touch under this policy.
    pub fn first_touch_kind(&self, kind: &str) -> bool {
        self.satisfied_by.contains(&SatisfiedBy::Activity)
            && self.first_touch_activities.iter().any(|k| k.eq_ignore_ascii_case(kind.trim()))
    }
}

/// The seed's ladder: 0 h alert, 24 h reminder, 48 h reminder cc manager, 72 h cc executive.
pub fn default_policy() -> SlaPolicy {
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let step = |name: &str, after, template: &str, to: Vec<Recipient>, cc: Vec<Recipient>| Step {
        name: name.into(),
        after,
        kind: format!("sla.{name}"),
        template: template.into(),
        to,
        cc,
        actions: vec![],
        channels: email_only(),
    };
    SlaPolicy {
        name: "default".into(),
        when: Match::default(),
        catch_up: CatchUp::Latest,
        business_hours: None,
        stop_on_task: false,
        satisfied_by: status_only(),
        first_touch_activities: call_and_email(),
        digest: None,
        when_away: WhenAway::Pause,
        backup: None,
        steps: vec![
            step("alert", hours(0), "sla_alert", vec![Recipient::Rep], vec![]),
            step("reminder", hours(24), "sla_reminder", vec![Recipient::Rep], vec![]),
            step("manager", hours(48), "sla_manager", vec![Recipient::Rep], vec![Recipient::Manager]),
            step(
                "executive",
                hours(72),
                "sla_executive",
                vec![Recipient::Rep, Recipient::Manager],
                vec![Recipient::Executive],
            ),
        ],
    }
}

fn accept_status() -> String {
    "Working - Contacted".into()
}

fn recycle_status() -> String {
    "Recycled".into()
}

fn disqualify_status() -> String {
    "Disqualified".into()
}

fn default_open_statuses() -> Vec<String> {
    vec!["Open - Not Contacted".into()]
}

/// The SLA rules: policies, the statuses that open a hand-off, and fallbacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaConfig {
    #[serde(default = "default_open_statuses")]
    pub open_statuses: Vec<String>,
    /// Receives what a missing manager or executive would have: never a silent skip.
    pub fallback_email: Option<String>,
    /// The executive copied at the top of the ladder; default: the top of the rep's chain.
    pub executive: Option<PersonId>,
    /// The link to a lead in the CRM; `{id}` is replaced by the lead's id.
    pub crm_url: Option<String>,
    /// Dates off, by calendar name.
    #[serde(default)]
    pub holidays: BTreeMap<String, Vec<NaiveDate>>,
    /// The CRM status set when a rep accepts a lead from an email link.
    #[serde(default = "accept_status")]
    pub accept_status: String,
    /// The CRM status set when a rep recycles a lead to nurture from an email link.
    #[serde(default = "recycle_status")]
    pub recycle_status: String,
    /// The CRM status set when a rep disqualifies a lead from an email link.
    #[serde(default = "disqualify_status")]
    pub disqualify_status: String,
    /// A weekly SLA summary for each executive.
    pub weekly_summary: Option<WeeklySummary>,
    /// First match wins; with none configured, the default ladder applies to every lead.
    #[serde(default, rename = "policy")]
    pub policies: Vec<SlaPolicy>,
}

impl Default for SlaConfig {
    fn default() -> Self {
        Self {
            open_statuses: default_open_statuses(),
            fallback_email: None,
            executive: None,
            crm_url: None,
            holidays: BTreeMap::new(),
            accept_status: accept_status(),
            recycle_status: recycle_status(),
            disqualify_status: disqualify_status(),
            weekly_summary: None,
            policies: Vec::new(),
        }
    }
}

impl SlaConfig {
    /// The policies in force: the configured ones, or the default ladder.
    pub fn policies(&self) -> Vec<SlaPolicy> {
        if self.policies.is_empty() { vec![default_policy()] } else { self.policies.clone() }
    }
}
