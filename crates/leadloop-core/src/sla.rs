//! The closed-loop SLA on every hand-off, as pure decisions.
//!
//! A hand-off starts when a lead is owned by an active person (not a queue) and its CRM status
//! is one of the open statuses (default `Open - Not Contacted`), whether leadloop routed it or
//! someone assigned it in the CRM. Its policy is a ladder of steps, each `after` a duration
//! from the hand-off (counted in business hours in the rep's time zone when the policy says
//! so). The default ladder is the seed's: alert the rep at once; remind the rep at 24 h;
//! remind again with the manager copied at 48 h; remind rep and manager with an executive
//! copied at 72 h.
//!
//! The ladder stops when the status changes away from the hand-off status (satisfied), when a
//! completed task is logged (if the policy says so), when the lead is deleted, or when the
//! owner changes (which ends this hand-off and starts the next for the new owner). Every step's
//! idempotency key is `sla/LEAD/HANDOFF/STEP`, so each is sent once.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{Datelike, NaiveDate, NaiveTime, TimeDelta, TimeZone, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::connector::Activity;
use crate::decision::Decision;
use crate::decision::Fact;
use crate::effect::{Effect, IdempotencyKey, KeyError};
use crate::history::{Actor, EventKind, HistoryEvent};
use crate::lead::LeadRecord;
use crate::person::{OrgChart, Person, PersonId, Role};
use crate::policy::Policy;
use crate::timer::{ReportBucket, ReportKind, Timer, TimerKey, TimerKind};
use crate::{Timestamp, vars};

pub use crate::handoff::{ActionOutcome, Handoff, HandoffOutcome, SalesAction};

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

/// Working hours in the rep's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    #[serde(default = "nine")]
    pub start: NaiveTime,
    #[serde(default = "five")]
    pub end: NaiveTime,
    #[serde(default = "weekdays", with = "weekday_names")]
    pub days: Vec<Weekday>,
    /// The name of a calendar in `sla.holidays`.
    pub holidays: Option<String>,
}

fn nine() -> NaiveTime {
    NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default()
}

fn five() -> NaiveTime {
    NaiveTime::from_hms_opt(17, 0, 0).unwrap_or_default()
}

fn weekdays() -> Vec<Weekday> {
    vec![Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri]
}

mod weekday_names {
    use chrono::Weekday;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(days: &[Weekday], s: S) -> Result<S::Ok, S::Error> {
        days.iter().map(|d| d.to_string().to_lowercase()).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Weekday>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|name| {
                name.parse::<Weekday>().map_err(|_| serde::de::Error::custom(format!("unknown day {name:?}")))
            })
            .collect()
    }
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
    };
    SlaPolicy {
        name: "default".into(),
        when: Match::default(),
        catch_up: CatchUp::Latest,
        business_hours: None,
        stop_on_task: false,
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

/// Adds `duration` of working time to `start`, in `tz`. Zero is `start` itself: the first
/// step goes out at hand-off even outside working hours.
pub fn add_business_time(
    start: Timestamp,
    duration: Duration,
    tz: Tz,
    hours: &BusinessHours,
    holidays: &[NaiveDate],
) -> Timestamp {
    if duration.is_zero() {
        return start;
    }
    let mut remaining = TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX);
    let mut day = start.with_timezone(&tz).date_naive();
    // Ten years of days is more than any ladder needs; past that, give up and count calendar time.
    for _ in 0..3660 {
        if hours.days.contains(&day.weekday()) && !holidays.contains(&day) {
            let open = local_instant(tz, day, hours.start);
            let close = local_instant(tz, day, hours.end);
            let from = open.max(start);
            if from < close {
                let available = close - from;
                if remaining <= available {
                    return from + remaining;
                }
                remaining -= available;
            }
        }
        day = day.succ_opt().unwrap_or(day);
    }
    start + TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// The first instant after `now` that is local `time` in `tz` (on `day`, if given).
pub fn next_local(now: Timestamp, tz: Tz, time: NaiveTime, day: Option<Weekday>) -> Timestamp {
    let mut date = now.with_timezone(&tz).date_naive();
    for _ in 0..8 {
        let at = local_instant(tz, date, time);
        if at > now && day.is_none_or(|d| date.weekday() == d) {
            return at;
        }
        date = date.succ_opt().unwrap_or(date);
    }
    now + TimeDelta::days(7)
}

/// The instant of local `time` on `day`; a time in a DST gap moves to the first instant after
/// it, and a time in an overlap is its first occurrence.
pub(crate) fn local_instant(tz: Tz, day: NaiveDate, time: NaiveTime) -> Timestamp {
    let local = day.and_time(time);
    for minutes in 0..=180 {
        if let Some(at) = tz.from_local_datetime(&(local + TimeDelta::minutes(minutes))).earliest() {
            return at.with_timezone(&chrono::Utc);
        }
    }
    chrono::Utc.from_utc_datetime(&local)
}

/// Makes the signed, expiring URLs of one-click links. The binary implements it (it holds the
/// key and the public URL); the ladder only asks for links.
pub trait LinkMaker: Send + Sync + std::fmt::Debug {
    fn link(&self, action: SalesAction, lead: &crate::LeadId, handoff: u32, now: Timestamp) -> String;
}

/// The SLA policy engine.
#[derive(Debug, Clone)]
pub struct SlaRules {
    pub config: SlaConfig,
    /// `config.policies()`, resolved once.
    policies: Vec<SlaPolicy>,
    links: Option<std::sync::Arc<dyn LinkMaker>>,
    /// Book a follow-up hold this long in the rep's calendar at hand-off.
    hold: Option<Duration>,
}

fn timer_key(lead: &str) -> TimerKey {
    TimerKey::new(format!("sla/{lead}"))
}

/// `sla/LEAD/HANDOFF/STEP`.
pub fn step_key(lead: &str, handoff: u32, step: &str) -> Result<IdempotencyKey, KeyError> {
    IdempotencyKey::from_parts(["sla", lead, &handoff.to_string(), step])
}

/// An item's key in a report bucket: one per hand-off, so a later entry replaces an earlier.
fn item_key(record: &LeadRecord, handoff: &Handoff) -> String {
    format!("{}/{}", record.lead.id, handoff.number)
}

/// The lead a report item is about (digest and weekly items both name it), for the engine to
/// read the lead as it is now before the report is decided.
pub fn report_item_lead(item: &Value) -> Option<crate::LeadId> {
    item.get("lead_id").and_then(Value::as_str).map(crate::LeadId::new)
}

fn actor() -> Actor {
    Actor::Rule { name: "sla".into() }
}

fn human_duration(d: TimeDelta) -> String {
    let plural = |n: i64, unit: &str| if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") };
    match d.num_minutes().max(0) {
        m if m < 60 => plural(m, "minute"),
        m if m < 48 * 60 => plural(m / 60, "hour"),
        m => plural(m / (24 * 60), "day"),
    }
}

impl SlaRules {
    pub fn new(config: SlaConfig) -> Self {
        let policies = config.policies();
        Self { config, policies, links: None, hold: None }
    }

    /// At hand-off, plans a "Call <lead>" hold of `length` in the rep's next free slot in
    /// business hours (the policy's, else 09:00–17:00 Monday to Friday) when the rep's
    /// calendar is known; the alert mentions it.
    pub fn with_hold(mut self, length: Duration) -> Self {
        self.hold = Some(length);
        self
    }

    /// Where the rep is away at `now` under a `backup` policy: who gets their steps.
    fn backup<'a>(&self, policy: &SlaPolicy, owner: &PersonId, people: &'a OrgChart) -> Option<&'a Person> {
        let to = policy.backup.as_deref()?;
        let person = if to == "manager" { people.manager_of(owner) } else { people.get(&PersonId::new(to)) };
        person.filter(|p| p.active && p.role != Role::Queue && &p.id != owner)
    }

    /// Puts one-click Accept / Recycle / Disqualify links in the ladder's emails.
    pub fn with_links(mut self, links: std::sync::Arc<dyn LinkMaker>) -> Self {
        self.links = Some(links);
        self
    }

    /// A rep answered hand-off `handoff` of `lead` through a link. Pure: returns the decision
    /// (CRM write-back, the ladder stopped, the stage moved where the stage table allows).
    pub fn sales_action(
        &self,
        lead: &LeadRecord,
        handoff: u32,
        action: SalesAction,
        reason: Option<&str>,
        people: &OrgChart,
        now: Timestamp,
    ) -> (Decision, ActionOutcome) {
        let mut decision = Decision::default();
        if lead.handoff.as_ref().map(|h| h.number) != Some(handoff) {
            return (decision, ActionOutcome::AlreadyClosed);
        }
        let mut record = lead.clone();
        let owner = record.handoff.as_ref().map(|h| h.owner.clone());
        let (status, stage, outcome) = match action {
            SalesAction::Accept => {
                (&self.config.accept_status, crate::Stage::SalesQualified, "accepted".to_owned())
            }
            SalesAction::Recycle => {
                (&self.config.recycle_status, crate::Stage::Recycled, "recycled".to_owned())
            }
            SalesAction::Disqualify => (
                &self.config.disqualify_status,
                crate::Stage::Disqualified,
                format!("disqualified: {}", reason.unwrap_or("no reason given")),
            ),
        };
        let answered = HandoffOutcome::Answered { action, reason: reason.map(str::to_owned) };
        self.end(&mut record, answered, people, now, &mut decision);
        let mut fields = serde_json::Map::new();
        fields.insert("status".into(), json!(status));
        if let (SalesAction::Disqualify, Some(reason)) = (action, reason) {
            fields.insert("disqualify_reason".into(), json!(reason));
        }
        decision.queue(
            IdempotencyKey::from_parts([
                "sla",
                record.lead.id.as_str(),
                &handoff.to_string(),
                "answer",
                action.as_str(),
            ]),
            Effect::CrmUpdate { lead_id: record.lead.id.clone(), fields },
            now,
        );
        let actor = Actor::Sales { person: owner };
        decision.events.push(HistoryEvent::new(
            now,
            actor.clone(),
            EventKind::StatusChanged { from: record.lead.status.clone(), to: Some(status.clone()) },
        ));
        record.lead.status = Some(status.clone());
        if record.stage != stage && crate::stage::check(record.stage, stage, &actor).is_ok() {
            decision.events.push(HistoryEvent::new(
                now,
                actor,
                EventKind::StageChanged { from: record.stage, to: stage, reason: outcome },
            ));
            record.stage = stage;
            record.stage_since = now;
        }
        record.updated_at = now;
        record.version += 1;
        decision.lead = Some(record);
        (decision, ActionOutcome::Done)
    }

    fn policy_for(&self, record: &LeadRecord) -> Option<&SlaPolicy> {
        self.policies.iter().find(|p| p.when.matches(record))
    }

    /// The policy a hand-off runs under.
    pub fn policy_named(&self, name: &str) -> Option<&SlaPolicy> {
        self.policies.iter().find(|p| p.name == name)
    }

    fn links_for(&self, record: &LeadRecord, handoff: u32, now: Timestamp) -> Value {
        let mut links = serde_json::Map::new();
        for action in SalesAction::ALL {
            let url = self
                .links
                .as_ref()
                .map(|m| m.link(action, &record.lead.id, handoff, now))
                .unwrap_or_default();
            links.insert(action.as_str().to_owned(), json!(url));
        }
        Value::Object(links)
    }

    /// Records a hand-off for its executive's weekly summary (a later entry for the same
    /// hand-off replaces an earlier one) and makes sure the summary is scheduled.
    fn weekly_entry(
        &self,
        record: &LeadRecord,
        handoff: &Handoff,
        entry: Value,
        people: &OrgChart,
        now: Timestamp,
        decision: &mut Decision,
    ) {
        let Some(weekly) = &self.config.weekly_summary else { return };
        let Some(executive) = self.executive(&handoff.owner, people) else { return };
        let bucket = ReportBucket::new(ReportKind::Weekly, executive.id.clone());
        decision.items.push((bucket.clone(), item_key(record, handoff), entry));
        decision.set_timers.push(Timer {
            key: bucket.timer_key(),
            due: next_local(now, Self::tz_of(Some(executive)), weekly.time, Some(weekly.day)),
            lead_id: None,
            kind: TimerKind::Report { bucket },
        });
    }

    /// The executive copied on the rep's escalations: `sla.executive`, else the top of the
    /// rep's manager chain; inactive people do not count.
    fn executive<'a>(&self, owner: &PersonId, people: &'a OrgChart) -> Option<&'a Person> {
        match &self.config.executive {
            Some(id) => people.get(id),
            None => people.executive_of(owner),
        }
        .filter(|p| p.active)
    }

    fn tz_of(person: Option<&Person>) -> Tz {
        person.and_then(|p| p.time_zone.as_deref()).and_then(|z| z.parse().ok()).unwrap_or(Tz::UTC)
    }

    /// When step `index` of `policy` is due for `handoff`.
    pub fn due(
        &self,
        policy: &SlaPolicy,
        handoff: &Handoff,
        index: usize,
        people: &OrgChart,
    ) -> Option<Timestamp> {
        let step = policy.steps.get(index)?;
        let started_at = handoff.started_at + TimeDelta::seconds(handoff.paused_seconds);
        Some(match &policy.business_hours {
            None => started_at + TimeDelta::from_std(step.after).unwrap_or(TimeDelta::MAX),
            Some(hours) => {
                let holidays = hours
                    .holidays
                    .as_ref()
                    .and_then(|name| self.config.holidays.get(name))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                add_business_time(
                    started_at,
                    step.after,
                    Self::tz_of(people.get(&handoff.owner)),
                    hours,
                    holidays,
                )
            }
        })
    }

    fn qualifies(&self, record: &LeadRecord, people: &OrgChart) -> Option<PersonId> {
        let owner = record.lead.owner_id.as_ref()?;
        let person = people.get(owner)?;
        let open =
            record.lead.status.as_deref().is_some_and(|s| self.config.open_statuses.iter().any(|o| o == s));
        (person.active && person.role != Role::Queue && open).then(|| owner.clone())
    }

    fn end(
        &self,
        record: &mut LeadRecord,
        outcome: HandoffOutcome,
        people: &OrgChart,
        now: Timestamp,
        decision: &mut Decision,
    ) {
        if let Some(handoff) = record.handoff.take() {
            decision.cancel_timers.push(timer_key(record.lead.id.as_str()));
            let satisfied = outcome.is_satisfied();
            let entry = json!({
                "lead_id": record.lead.id,
                "owner": handoff.owner,
                "met": handoff.next_step <= 1 && satisfied,
                "first_touch_seconds": satisfied.then(|| (now - handoff.started_at).num_seconds()),
                "outcome": outcome.to_string(),
            });
            self.weekly_entry(record, &handoff, entry, people, now, decision);
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::HandoffEnded {
                    owner: Some(handoff.owner.clone()),
                    handoff: handoff.number,
                    outcome,
                    open_seconds: (now - handoff.started_at).num_seconds(),
                },
            ));
        }
    }

    /// Sends what is due and arms the timer for the next step.
    fn advance(&self, record: &mut LeadRecord, people: &OrgChart, now: Timestamp, decision: &mut Decision) {
        let Some(mut handoff) = record.handoff.clone() else { return };
        let Some(policy) = self.policy_named(&handoff.policy) else {
            let outcome = HandoffOutcome::PolicyRemoved { policy: handoff.policy.clone() };
            self.end(record, outcome, people, now, decision);
            return;
        };
        let mut due = Vec::new();
        let mut index = handoff.next_step;
        while let Some(at) = self.due(policy, &handoff, index, people) {
            if at > now {
                break;
            }
            due.push(index);
            index += 1;
        }
        // The rep is away: escalations wait until they are back, and later steps move with them.
        let away = people.calendar.away_until(&handoff.owner, now);
        let mut resume_at = None;
        if let (WhenAway::Pause, Some(back), Some(cut)) =
            (policy.when_away, away, due.iter().position(|i| *i >= 1))
        {
            let first = due[cut];
            if let Some(was_due) = self.due(policy, &handoff, first, people) {
                handoff.paused_seconds += (back - was_due).num_seconds().max(0);
            }
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::Activity {
                    activity: "sla_paused".into(),
                    detail: BTreeMap::from([
                        ("step".to_owned(), json!(policy.steps[first].name)),
                        ("until".to_owned(), json!(back)),
                        ("reason".to_owned(), json!("the rep's calendar says they are away")),
                    ]),
                },
            ));
            due.truncate(cut);
            index = first;
            resume_at = Some(back);
        }
        let send: Vec<usize> = match policy.catch_up {
            CatchUp::All => due.clone(),
            // Skip only steps due before the latest one: steps due at the same instant are
            // not missed, they are simultaneous.
            CatchUp::Latest => {
                let latest = due.last().and_then(|i| self.due(policy, &handoff, *i, people));
                due.iter().copied().filter(|i| self.due(policy, &handoff, *i, people) == latest).collect()
            }
        };
        let missed = due.len().saturating_sub(send.len());
        if missed > 0 {
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::Activity {
                    activity: "sla_catch_up".into(),
                    detail: BTreeMap::from([
                        (
                            "skipped".to_owned(),
                            json!(
                                due[..missed]
                                    .iter()
                                    .map(|i| policy.steps[*i].name.clone())
                                    .collect::<Vec<_>>()
                            ),
                        ),
                        (
                            "sent".to_owned(),
                            json!(send.iter().map(|i| policy.steps[*i].name.clone()).collect::<Vec<_>>()),
                        ),
                    ]),
                },
            ));
        }
        handoff.next_step = index;
        let mut reassign_to = None;
        for &i in &send {
            if let Some(target) = self.send_step(record, policy, &handoff, i, missed, people, now, decision) {
                reassign_to = Some(target);
            }
            // A status leadloop writes to the CRM itself is not the rep's answer: record it
            // here too, so its echo from the next sync changes nothing.
            for action in &policy.steps[i].actions {
                if let StepAction::SetStatus { status } = action {
                    record.lead.status = Some(status.clone());
                    handoff.status = Some(status.clone());
                }
            }
        }
        record.handoff = Some(handoff.clone());
        if let Some(target) = reassign_to {
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::OwnerChanged {
                    from: record.lead.owner_id.clone(),
                    to: Some(target.clone()),
                    reason: format!("SLA policy {}: reassigned after no answer", policy.name),
                },
            ));
            record.lead.owner_id = Some(target.clone());
            self.end(record, HandoffOutcome::ReassignedByLadder, people, now, decision);
            self.start(record, target, people, now, decision);
            return;
        }
        if let Some(next) = self.due(policy, &handoff, index, people) {
            decision.set_timers.push(Timer {
                key: timer_key(record.lead.id.as_str()),
                due: resume_at.map_or(next, |back| next.max(back)),
                lead_id: Some(record.lead.id.clone()),
                kind: TimerKind::SlaStep { handoff: handoff.number, step: index as u32 },
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_step(
        &self,
        record: &LeadRecord,
        policy: &SlaPolicy,
        handoff: &Handoff,
        index: usize,
        missed: usize,
        people: &OrgChart,
        now: Timestamp,
        decision: &mut Decision,
    ) -> Option<PersonId> {
        let step = &policy.steps[index];
        let owner = people.get(&handoff.owner);
        let away = people.calendar.away_until(&handoff.owner, now);
        let backup = away
            .filter(|_| policy.when_away == WhenAway::Backup)
            .and_then(|_| self.backup(policy, &handoff.owner, people));
        // An inactive manager or executive is treated as missing: the fallback gets the copy.
        let manager = people.manager_of(&handoff.owner).filter(|p| p.active);
        let executive = self.executive(&handoff.owner, people);
        let fallback = self.config.fallback_email.as_deref();
        let mut missing = Vec::new();
        let digest_roles: &[DigestRole] = policy.digest.as_ref().map(|d| d.roles.as_slice()).unwrap_or(&[]);
        let mut digested: Vec<&Person> = Vec::new();
        let mut resolve = |recipients: &[Recipient]| -> Vec<String> {
            let mut out = Vec::new();
            for recipient in recipients {
                let address = match recipient {
                    Recipient::Rep => backup.or(owner).map(|p| p.email.clone()),
                    Recipient::Manager
                        if manager.is_some() && digest_roles.contains(&DigestRole::Manager) =>
                    {
                        digested.extend(manager);
                        None
                    }
                    Recipient::Executive
                        if executive.is_some() && digest_roles.contains(&DigestRole::Executive) =>
                    {
                        digested.extend(executive);
                        None
                    }
                    Recipient::Manager => manager.map(|p| p.email.clone()).or_else(|| {
                        missing.push("manager");
                        fallback.map(str::to_owned)
                    }),
                    Recipient::Executive => executive.map(|p| p.email.clone()).or_else(|| {
                        missing.push("executive");
                        fallback.map(str::to_owned)
                    }),
                    Recipient::Address(address) => Some(address.trim_start_matches("address:").to_owned()),
                };
                if let Some(address) = address
                    && !out.contains(&address)
                {
                    out.push(address);
                }
            }
            out
        };
        let mut to = resolve(&step.to);
        let mut cc: Vec<String> = resolve(&step.cc).into_iter().filter(|a| !to.contains(a)).collect();
        if to.is_empty() {
            to = std::mem::take(&mut cc);
        }
        let tz = Self::tz_of(owner);
        let local = |at: Timestamp| at.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string();
        let next = policy.steps.get(index + 1);
        let placeholder = |role: &str| json!({ "id": "", "name": format!("(no {role} on record)"), "email": fallback, "time_zone": null });
        let mut vars = json!({
            "kind": step.kind,
            "lead": vars::lead(record),
            "owner": owner.map(vars::person).unwrap_or_else(|| placeholder("owner")),
            "manager": manager.map(vars::person).unwrap_or_else(|| placeholder("manager")),
            "executive": executive.map(vars::person).unwrap_or_else(|| placeholder("executive")),
            "handoff": {
                "number": handoff.number,
                "started": local(handoff.started_at),
                "age": human_duration(now - handoff.started_at),
                "step": step.name,
                "next_step": next.map(|s| s.name.clone()),
                "next_step_at": self.due(policy, handoff, index + 1, people).map(local),
                "missed_steps": missed,
            },
            "crm_url": self.config.crm_url.as_deref().map(|u| u.replace("{id}", record.lead.id.as_str())).unwrap_or_default(),
            "unsubscribe_url": "",
            "links": self.links_for(record, handoff.number, now),
        });
        if let Some(map) = vars.as_object_mut() {
            map.insert("step".into(), Value::String(step.name.clone()));
            map.insert(
                "hold".into(),
                handoff.hold.map_or(Value::Null, |(s, e)| json!({ "start": local(s), "end": local(e) })),
            );
            map.insert(
                "away".into(),
                away.map_or(
                    Value::Null,
                    |back| json!({ "until": local(back), "backup": backup.map(vars::person) }),
                ),
            );
        }
        if let Some(backup) = backup {
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::Activity {
                    activity: "sla_backup".into(),
                    detail: BTreeMap::from([
                        ("step".to_owned(), json!(step.name)),
                        ("to".to_owned(), json!(backup.id)),
                        ("reason".to_owned(), json!("the rep's calendar says they are away")),
                    ]),
                },
            ));
        }
        missing.sort_unstable();
        missing.dedup();
        for role in missing {
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::Activity {
                    activity: "sla_missing_recipient".into(),
                    detail: BTreeMap::from([
                        ("role".to_owned(), json!(role)),
                        ("step".to_owned(), json!(step.name)),
                        ("fallback".to_owned(), json!(fallback)),
                    ]),
                },
            ));
        }
        let lead_id = record.lead.id.clone();
        let key = step_key(lead_id.as_str(), handoff.number, &step.name);
        digested.sort_by(|a, b| a.id.cmp(&b.id));
        digested.dedup_by(|a, b| a.id == b.id);
        if let Some(digest) = &policy.digest {
            for person in digested {
                let bucket = ReportBucket::new(ReportKind::Digest, person.id.clone());
                decision.items.push((
                    bucket.clone(),
                    item_key(record, handoff),
                    json!({
                        "lead_id": lead_id,
                        "handoff": handoff.number,
                        "lead": record.lead.display_name(),
                        "company": record.lead.company,
                        "owner": owner.map(|p| p.name.clone()),
                        "step": step.name,
                        "started": local(handoff.started_at),
                        "age": human_duration(now - handoff.started_at),
                        "crm_url": vars["crm_url"],
                    }),
                ));
                decision.set_timers.push(Timer {
                    key: bucket.timer_key(),
                    due: next_local(now, Self::tz_of(Some(person)), digest.time, None),
                    lead_id: None,
                    kind: TimerKind::Report { bucket },
                });
            }
        }
        if !to.is_empty() {
            let email = Effect::Email {
                kind: step.kind.clone(),
                template: step.template.clone(),
                to,
                cc,
                lead_id: Some(lead_id.clone()),
                vars,
            };
            if let Some(key) = decision.queue(key.clone(), email, now) {
                decision.facts.push(Fact::SlaStep { key, step: step.name.clone() });
            }
        }
        if index >= 1 {
            // Past the first reminder: breached, whether or not it ends this week.
            let entry = json!({
                "lead_id": lead_id,
                "owner": handoff.owner,
                "met": false,
                "first_touch_seconds": null,
                "outcome": format!("open, past step {}", step.name),
            });
            self.weekly_entry(record, handoff, entry, people, now, decision);
        }
        let mut reassign_to = None;
        for (n, action) in step.actions.iter().enumerate() {
            // `sla/LEAD/HANDOFF/STEP/action/N`: refused with the step's own key, if that was.
            let action_key =
                key.as_ref().map_err(Clone::clone).and_then(|k| k.child(["action", &n.to_string()]));
            let effect = match action {
                StepAction::Reassign { to } => {
                    // Never on the first step: a new hand-off starts there, and reassigning at
                    // once could chase a manager loop forever.
                    let target = if index == 0 {
                        None
                    } else if to == "manager" {
                        manager
                    } else {
                        people.get(&PersonId::new(to.clone()))
                    }
                    .filter(|p| p.active && p.role != Role::Queue && p.id != handoff.owner);
                    let Some(target) = target else {
                        decision.events.push(HistoryEvent::new(
                            now,
                            actor(),
                            EventKind::Activity {
                                activity: "sla_reassign_skipped".into(),
                                detail: BTreeMap::from([
                                    ("step".to_owned(), json!(step.name)),
                                    ("to".to_owned(), json!(to)),
                                    ("reason".to_owned(), json!("no active person to reassign to")),
                                ]),
                            },
                        ));
                        continue;
                    };
                    reassign_to = Some(target.id.clone());
                    let mut fields = serde_json::Map::new();
                    fields.insert("owner_id".into(), json!(target.id));
                    Effect::CrmUpdate { lead_id: lead_id.clone(), fields }
                }
                StepAction::CreateTask { subject } => Effect::CrmTask {
                    lead_id: lead_id.clone(),
                    owner_id: handoff.owner.clone(),
                    subject: subject.replace("{lead}", &record.lead.display_name()),
                    due: Some(now + TimeDelta::hours(24)),
                },
                StepAction::SetStatus { status } => {
                    let mut fields = serde_json::Map::new();
                    fields.insert("status".into(), json!(status));
                    Effect::CrmUpdate { lead_id: lead_id.clone(), fields }
                }
            };
            decision.queue(action_key, effect, now);
        }
        reassign_to
    }

    /// Starts hand-off `record.handoffs + 1` for `owner` under the lead's policy, and sends
    /// what is due at once (the alert).
    fn start(
        &self,
        record: &mut LeadRecord,
        owner: PersonId,
        people: &OrgChart,
        now: Timestamp,
        decision: &mut Decision,
    ) {
        let Some(policy) = self.policy_for(record) else { return };
        record.handoffs += 1;
        let handoff = Handoff {
            number: record.handoffs,
            owner: owner.clone(),
            status: record.lead.status.clone(),
            started_at: now,
            policy: policy.name.clone(),
            next_step: 0,
            paused_seconds: 0,
            hold: None,
        };
        let mut handoff = handoff;
        if let Some(length) = self.hold {
            let hours = policy.business_hours.clone().unwrap_or(BusinessHours {
                start: nine(),
                end: five(),
                days: weekdays(),
                holidays: None,
            });
            let holidays = hours
                .holidays
                .as_ref()
                .and_then(|name| self.config.holidays.get(name))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let length = TimeDelta::from_std(length).unwrap_or(TimeDelta::minutes(30));
            let tz = Self::tz_of(people.get(&owner));
            if let Some((start, end)) =
                people.calendar.next_free_slot(&owner, now, length, tz, &hours, holidays)
            {
                handoff.hold = Some((start, end));
                let company = record.lead.company.as_deref().map(|c| format!(" ({c})")).unwrap_or_default();
                decision.queue(
                    IdempotencyKey::from_parts([
                        "hold",
                        record.lead.id.as_str(),
                        &handoff.number.to_string(),
                    ]),
                    Effect::CalendarHold {
                        person: owner.clone(),
                        lead_id: record.lead.id.clone(),
                        start,
                        end,
                        summary: format!("Call {}{company}", record.lead.display_name()),
                    },
                    now,
                );
            }
        }
        decision.events.push(HistoryEvent::new(
            now,
            actor(),
            EventKind::HandoffStarted { handoff: handoff.number, owner },
        ));
        record.handoff = Some(handoff);
        self.advance(record, people, now, decision);
    }
}

impl Policy for SlaRules {
    fn on_sales_action(
        &self,
        lead: &LeadRecord,
        handoff: u32,
        action: SalesAction,
        reason: Option<&str>,
        people: &OrgChart,
        now: Timestamp,
    ) -> (Decision, ActionOutcome) {
        self.sales_action(lead, handoff, action, reason, people, now)
    }

    fn on_lead(
        &self,
        before: Option<&LeadRecord>,
        mut after: LeadRecord,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let mut decision = Decision::default();
        let qualifying = self.qualifies(&after, people);
        if let Some(current) = after.handoff.clone() {
            if after.lead.owner_id.as_ref() != Some(&current.owner) {
                self.end(&mut after, HandoffOutcome::Reassigned, people, now, &mut decision);
            } else if after.lead.status != current.status {
                let outcome = HandoffOutcome::StatusChanged { to: after.lead.status.clone() };
                self.end(&mut after, outcome, people, now, &mut decision);
            }
        }
        if after.handoff.is_none()
            && let Some(owner) = qualifying
            && before.is_none_or(|b| {
                b.lead.owner_id != after.lead.owner_id
                    || b.lead.status != after.lead.status
                    || b.handoff.is_some()
            })
        {
            self.start(&mut after, owner, people, now, &mut decision);
        }
        decision.lead = Some(after);
        decision
    }

    fn on_activity(
        &self,
        lead: &LeadRecord,
        activity: &Activity,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let mut decision = Decision::default();
        let Some(handoff) = &lead.handoff else { return decision };
        let stops = activity.kind == "task_completed"
            && self.policy_named(&handoff.policy).is_some_and(|p| p.stop_on_task);
        if stops {
            let mut record = lead.clone();
            self.end(&mut record, HandoffOutcome::TaskCompleted, people, now, &mut decision);
            decision.lead = Some(record);
        }
        decision
    }

    fn on_report(
        &self,
        timer: &Timer,
        items: &[(String, Value, Option<LeadRecord>)],
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let mut decision = Decision::default();
        let TimerKind::Report { bucket } = &timer.kind else { return decision };
        // Exactly the items read are removed; any that arrive meanwhile wait for the next one.
        decision.remove_items.extend(items.iter().map(|(key, _, _)| (bucket.clone(), key.clone())));
        let (kind, person_id) = (bucket.kind, bucket.person.as_str());
        let person = people.get(&bucket.person).filter(|p| p.active);
        // Re-arm: items that arrive while this one is being sent (or while leadloop was down)
        // go in the next digest or summary.
        let next = match (kind, &self.config.weekly_summary) {
            (ReportKind::Weekly, Some(weekly)) => {
                Some(next_local(now, Self::tz_of(person), weekly.time, Some(weekly.day)))
            }
            (ReportKind::Weekly, None) => None,
            (ReportKind::Digest, _) => self
                .policies
                .iter()
                .filter_map(|p| p.digest.as_ref())
                .map(|d| next_local(now, Self::tz_of(person), d.time, None))
                .min(),
        };
        if let Some(due) = next {
            decision.set_timers.push(Timer {
                key: timer.key.clone(),
                due,
                lead_id: None,
                kind: timer.kind.clone(),
            });
        }
        let Some(address) = person.map(|p| p.email.clone()).or_else(|| self.config.fallback_email.clone())
        else {
            return decision;
        };
        let tz = Self::tz_of(person);
        let date = now.with_timezone(&tz).format("%Y-%m-%d").to_string();
        let person_vars = person.map(vars::person).unwrap_or_else(
            || json!({ "id": person_id, "name": "Sales operations", "email": address, "time_zone": null }),
        );
        let (effect_kind, template, vars) = match kind {
            ReportKind::Digest => {
                // Only hand-offs still open: an answered lead drops out of the digest.
                let rows: Vec<&Value> = items
                    .iter()
                    .filter(|(_, item, lead)| {
                        lead.as_ref().and_then(|l| l.handoff.as_ref()).map(|h| json!(h.number))
                            == item.get("handoff").cloned()
                    })
                    .map(|(_, item, _)| item)
                    .collect();
                if rows.is_empty() {
                    return decision;
                }
                (
                    "sla.digest",
                    "sla_digest",
                    json!({ "kind": "sla.digest", "person": person_vars, "items": rows, "count": rows.len(), "date": date }),
                )
            }
            ReportKind::Weekly => {
                let handoffs = items.len();
                let met = items.iter().filter(|(_, item, _)| item["met"] == json!(true)).count();
                let mut touches: Vec<i64> =
                    items.iter().filter_map(|(_, item, _)| item["first_touch_seconds"].as_i64()).collect();
                touches.sort_unstable();
                let median = touches.get(touches.len() / 2).map(|s| human_duration(TimeDelta::seconds(*s)));
                let summary = json!({
                    "handoffs": handoffs,
                    "met": met,
                    "breached": handoffs - met,
                    "met_percent": (met * 100).checked_div(handoffs).unwrap_or(0),
                    "median_first_touch": median,
                    "week_ending": date,
                });
                (
                    "sla.weekly",
                    "sla_weekly",
                    json!({ "kind": "sla.weekly", "person": person_vars, "summary": summary, "date": date }),
                )
            }
        };
        decision.queue(
            IdempotencyKey::from_parts([kind.as_str(), person_id, &timer.due.timestamp().to_string()]),
            Effect::Email {
                kind: effect_kind.into(),
                template: template.into(),
                to: vec![address],
                cc: vec![],
                lead_id: None,
                vars,
            },
            now,
        );
        decision
    }

    fn on_delete(&self, lead: &LeadRecord, people: &OrgChart, now: Timestamp) -> Decision {
        let mut decision = Decision::default();
        let mut record = lead.clone();
        self.end(&mut record, HandoffOutcome::LeadDeleted, people, now, &mut decision);
        decision
    }

    fn on_timer(
        &self,
        timer: &Timer,
        lead: Option<&LeadRecord>,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let mut decision = Decision::default();
        let TimerKind::SlaStep { handoff, .. } = timer.kind else { return decision };
        let Some(record) = lead else { return decision };
        // A timer from an ended hand-off is stale.
        if record.handoff.as_ref().map(|h| h.number) != Some(handoff) {
            return decision;
        }
        let mut record = record.clone();
        self.advance(&mut record, people, now, &mut decision);
        decision.lead = Some(record);
        decision
    }
}
