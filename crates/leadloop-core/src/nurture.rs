//! Nurture tracks, as pure decisions: leads not ready for sales get a paced series of emails
//! (1, 3, 6, 9, 12 months, or a cron schedule) with the collateral that matches their
//! interests, until they qualify, opt out, convert, bounce or reach the end.
//!
//! - **Enrolment.** A lead enters a track when it matches the track's rule (stage, segment,
//!   lead source, interests) and has an address and has not opted out. A lead enters each
//!   track once; a lead sales recycles enters again (a new round).
//! - **Steps.** Each step has a schedule: a crontab expression (in the track's zone or the
//!   lead's own) or an interval (`30d`, `3mo`) from enrolment or from the previous step, with
//!   month arithmetic clamped to the month's end. Sends are moved out of quiet hours and
//!   weekends in the lead's zone.
//! - **Frequency cap.** At most N nurture emails per lead per period across all tracks; a step
//!   over the cap waits until the cap frees.
//! - **Catch-up.** A step found late (leadloop was down) follows the track's policy: `once`
//!   sends only the latest due step, `all` every due step, `skip` none; nothing is sent more
//!   than `staleness` late. What was skipped is recorded as a `nurture_skipped` history event.
//! - **Exits.** Qualifying (MQL and beyond), converting, bouncing, opting out (in the CRM or
//!   through the unsubscribe link) or reaching the end. An opted-out lead is never sent nurture
//!   mail again, even if the CRM later clears the flag.
//!
//! One timer per enrolled lead (`nurture/LEAD`), due at the earliest next step of its tracks,
//! is the due index: a tick reads only what is due. Every send's idempotency key is
//! `nurture/LEAD/TRACK/ROUND/STEP`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, NaiveTime, TimeDelta, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::connector::Activity;
use crate::decision::Decision;
use crate::decision::Fact;
use crate::effect::{Effect, IdempotencyKey, KeyError};
use crate::history::HistoryEvent;
use crate::lead::{LeadId, LeadRecord};
pub use crate::nurture_state::{EnrolReason, Enrolment, ExitReason, NurtureEvent, NurtureState};
use crate::schedule::{Interval, Schedule, local_instant};
use crate::stage::Stage;
use crate::timer::{Timer, TimerKey, TimerKind};
use crate::{Timestamp, vars};

/// A timer fired within this long of its planned time is on time, whatever the catch-up
/// policy says about late steps.
pub const ON_TIME: TimeDelta = TimeDelta::minutes(10);

/// `[nurture]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NurtureConfig {
    pub tracks: Vec<TrackConfig>,
    /// At most `max` nurture emails per lead per `per`, across all tracks.
    pub frequency_cap: Option<FrequencyCap>,
    /// No nurture mail in these hours (and, if set, at weekends) in the lead's time zone.
    pub quiet_hours: Option<QuietHours>,
    /// The zone of leads that have none (default UTC).
    pub default_time_zone: Option<Tz>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    pub max: u32,
    #[serde(with = "crate::serde_duration")]
    pub per: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Quiet from this local time …
    pub start: NaiveTime,
    /// … until this one (may wrap past midnight: `20:00`–`08:00`).
    pub end: NaiveTime,
    /// Saturdays and Sundays are quiet all day.
    #[serde(default)]
    pub weekends: bool,
}

/// What to do with steps that fell due while leadloop was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Send only the latest due step, if it is not more than `staleness` late.
    #[default]
    Once,
    /// Send every due step, in order, except those more than `staleness` late.
    All,
    /// Send nothing late; continue with the next step on schedule.
    Skip,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Once => "once",
            CatchUp::All => "all",
            CatchUp::Skip => "skip",
        }
    }
}

/// Why a lead leaves a track. `opted_out`, `unsubscribed` and `bounced` always apply; the
/// others apply when listed in the track's `exit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// Became Marketing Qualified (or moved further: Sales Qualified, Opportunity).
    Mql,
    OptedOut,
    /// Became a Customer.
    Converted,
    Bounced,
    Unsubscribed,
    /// Reached the last step.
    End,
}

fn all_exits() -> Vec<Exit> {
    vec![Exit::Mql, Exit::OptedOut, Exit::Converted, Exit::Bounced, Exit::Unsubscribed, Exit::End]
}

/// Which leads enter a track; every listed condition must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrolRule {
    /// Stages that enter; empty: Just a Name, Engaged, Prospect, Recycled, Deferred.
    pub stages: Vec<Stage>,
    /// Values of the lead's custom `segment` field.
    pub segment: Vec<String>,
    pub lead_source: Vec<String>,
    /// The lead has at least one of these interests.
    pub interests: Vec<String>,
    /// A lead sales recycles enters again (a new round from the first step).
    pub recycled: bool,
}

impl Default for EnrolRule {
    fn default() -> Self {
        Self {
            stages: Vec::new(),
            segment: Vec::new(),
            lead_source: Vec::new(),
            interests: Vec::new(),
            recycled: true,
        }
    }
}

const NURTURABLE: [Stage; 5] =
    [Stage::JustAName, Stage::Engaged, Stage::Prospect, Stage::Recycled, Stage::Deferred];

/// Where a step's interval counts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum From {
    /// From the previous step (the first step: from enrolment).
    #[default]
    Previous,
    /// From enrolment: `1mo`, `3mo`, `6mo` … do not drift with short months.
    Enrolment,
}

/// `[[nurture.tracks.steps]]`: one email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Default `step N`.
    pub name: Option<String>,
    /// A crontab expression (5 fields, 6 with seconds, `@daily` …): the first firing after the
    /// previous step (or enrolment).
    pub cron: Option<String>,
    /// An interval: `30d`, `2w`, `3mo`, `1y`.
    pub after: Option<String>,
    #[serde(default)]
    pub from: From,
    /// With `after`: the local time of day to send at, e.g. `10:00`.
    pub at: Option<NaiveTime>,
    /// The template, unless the lead's interests pick one from `by_interest`.
    pub template: String,
    /// Interest → template; the lead's first interest found here wins.
    #[serde(default)]
    pub by_interest: BTreeMap<String, String>,
    /// Name → target URL; each becomes a signed, tracked redirect in `links.NAME`.
    #[serde(default)]
    pub links: BTreeMap<String, String>,
}

/// `[[nurture.tracks]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackConfig {
    pub name: String,
    #[serde(default)]
    pub enrol: EnrolRule,
    pub steps: Vec<StepConfig>,
    #[serde(default = "all_exits")]
    pub exit: Vec<Exit>,
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Nothing is sent more than this late.
    #[serde(default = "two_days", with = "crate::serde_duration")]
    pub staleness: Duration,
    /// `lead` (the default: each lead's own zone) or an IANA zone the schedules are read in.
    pub time_zone: Option<String>,
}

fn two_days() -> Duration {
    Duration::from_secs(2 * 24 * 3600)
}

/// Makes the signed URLs of nurture mail. The binary implements it (it holds the key and the
/// public URL).
pub trait NurtureLinks: Send + Sync + std::fmt::Debug {
    /// The one-click unsubscribe URL (RFC 8058) of `lead`, mailed to `address`: the link
    /// suppresses that address even once the lead is gone.
    fn unsubscribe(&self, lead: &LeadId, address: &str, now: Timestamp) -> String;
    /// A tracked redirect to `link.target` that reports a click on it.
    fn click(&self, link: &TrackedLink<'_>, now: Timestamp) -> String;
}

/// One tracked link in one nurture email.
#[derive(Debug, Clone, Copy)]
pub struct TrackedLink<'a> {
    /// The email's idempotency key: its delivery time tells a mail scanner's prefetch from a
    /// reader's click.
    pub message: Option<&'a IdempotencyKey>,
    pub lead: &'a LeadId,
    pub track: &'a str,
    pub step: &'a str,
    /// The link's name in the step's `links`.
    pub link: &'a str,
    pub target: &'a str,
}

/// A config problem: the dotted key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

enum When {
    Cron(Box<Schedule>),
    After { interval: Interval, from: From, at: Option<NaiveTime> },
}

struct Step {
    name: String,
    when: When,
}

struct Track {
    config: TrackConfig,
    zone: Option<Tz>,
    steps: Vec<Step>,
}

/// One planned send, for `nurture preview`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    pub step: String,
    pub index: u32,
    pub template: String,
    pub at: Timestamp,
}

/// The nurture engine.
#[derive(Clone, Default)]
pub struct NurtureRules {
    pub config: NurtureConfig,
    tracks: Arc<Vec<Track>>,
    links: Option<Arc<dyn NurtureLinks>>,
}

impl std::fmt::Debug for NurtureRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NurtureRules").field("tracks", &self.tracks.len()).finish_non_exhaustive()
    }
}

/// The timer of `lead`'s next nurture step.
pub fn timer_key(lead: &str) -> TimerKey {
    TimerKey::new(format!("nurture/{lead}"))
}

/// `nurture/LEAD/TRACK/ROUND/STEP`.
pub fn send_key(lead: &str, track: &str, round: u32, step: u32) -> Result<IdempotencyKey, KeyError> {
    IdempotencyKey::from_parts(["nurture", lead, track, &round.to_string(), &step.to_string()])
}

/// Records `event` in the history and among the decision's facts.
fn note(events: &mut Vec<HistoryEvent>, facts: &mut Vec<Fact>, now: Timestamp, event: NurtureEvent) {
    events.push(event.history(now));
    facts.push(Fact::Nurture(event));
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

impl NurtureRules {
    /// Checks and compiles `config`; every problem is reported with its key.
    pub fn new(config: NurtureConfig) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(ConfigProblem { key, message });
        let mut tracks = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (t, track) in config.tracks.iter().enumerate() {
            let key = format!("nurture.tracks[{t}]");
            if track.name.trim().is_empty() || track.name.contains('/') {
                problem(format!("{key}.name"), "a track needs a name without `/`".into());
            }
            if !names.insert(track.name.clone()) {
                problem(format!("{key}.name"), format!("track `{}` is defined twice", track.name));
            }
            if track.steps.is_empty() {
                problem(format!("{key}.steps"), "a track needs at least one step".into());
            }
            let zone = match track.time_zone.as_deref() {
                None | Some("lead") => None,
                Some(name) => match name.parse::<Tz>() {
                    Ok(tz) => Some(tz),
                    Err(_) => {
                        problem(
                            format!("{key}.time_zone"),
                            format!("unknown time zone `{name}` (an IANA name, or `lead`)"),
                        );
                        None
                    }
                },
            };
            let mut steps = Vec::new();
            for (s, step) in track.steps.iter().enumerate() {
                let key = format!("{key}.steps[{s}]");
                let name = step.name.clone().unwrap_or_else(|| format!("step {}", s + 1));
                let when = match (&step.cron, &step.after) {
                    (Some(cron), None) => match Schedule::parse(cron, zone.unwrap_or(Tz::UTC)) {
                        Ok(schedule) => Some(When::Cron(Box::new(schedule))),
                        Err(e) => {
                            problem(format!("{key}.cron"), e.to_string());
                            None
                        }
                    },
                    (None, Some(after)) => match Interval::parse(after) {
                        Ok(interval) => Some(When::After { interval, from: step.from, at: step.at }),
                        Err(e) => {
                            problem(format!("{key}.after"), e.to_string());
                            None
                        }
                    },
                    _ => {
                        problem(key.clone(), "set exactly one of `cron` and `after`".into());
                        None
                    }
                };
                if step.cron.is_some() && step.at.is_some() {
                    problem(
                        format!("{key}.at"),
                        "`at` goes with `after`; a cron expression has its time".into(),
                    );
                }
                if step.cron.is_some() && step.from == From::Enrolment && s > 0 {
                    problem(format!("{key}.from"), "`from` goes with `after`".into());
                }
                for (name, url) in &step.links {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        problem(format!("{key}.links.{name}"), format!("`{url}` is not an http(s) URL"));
                    }
                }
                if let Some(when) = when {
                    steps.push(Step { name, when });
                }
            }
            tracks.push(Track { config: track.clone(), zone, steps });
        }
        if let Some(cap) = &config.frequency_cap
            && (cap.max == 0 || cap.per.is_zero())
        {
            problem("nurture.frequency_cap".into(), "`max` and `per` must be above zero".into());
        }
        if let Some(quiet) = &config.quiet_hours
            && quiet.start == quiet.end
        {
            problem("nurture.quiet_hours".into(), "`start` and `end` are the same time".into());
        }
        if problems.is_empty() {
            Ok(Self { config, tracks: Arc::new(tracks), links: None })
        } else {
            Err(problems)
        }
    }

    /// Puts signed unsubscribe and tracked links in nurture mail.
    pub fn with_links(mut self, links: Arc<dyn NurtureLinks>) -> Self {
        self.links = Some(links);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    pub fn track_names(&self) -> impl Iterator<Item = &str> {
        self.tracks.iter().map(|t| t.config.name.as_str())
    }

    /// Every template the tracks name (for validation).
    pub fn templates(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (t, track) in self.config.tracks.iter().enumerate() {
            for (s, step) in track.steps.iter().enumerate() {
                out.push((format!("nurture.tracks[{t}].steps[{s}].template"), step.template.clone()));
                for (interest, template) in &step.by_interest {
                    out.push((
                        format!("nurture.tracks[{t}].steps[{s}].by_interest.{interest}"),
                        template.clone(),
                    ));
                }
            }
        }
        out
    }

    /// Steps that would send a lead the same email as an earlier step of the same track: the
    /// same template (for a lead with no listed interest, or with one listed interest) and the
    /// same links. `(key, message)` for each, e.g. `nurture.tracks[0].steps[1]`.
    pub fn repeated_steps(&self) -> Vec<(String, String)> {
        let resolve = |step: &StepConfig, interest: Option<&str>| -> String {
            interest
                .and_then(|i| {
                    step.by_interest.iter().find(|(k, _)| k.eq_ignore_ascii_case(i)).map(|(_, t)| t)
                })
                .unwrap_or(&step.template)
                .clone()
        };
        let name = |step: &StepConfig, index: usize| {
            step.name.clone().unwrap_or_else(|| format!("step {}", index + 1))
        };
        let mut out = Vec::new();
        for (t, track) in self.config.tracks.iter().enumerate() {
            for (j, later) in track.steps.iter().enumerate() {
                let repeat = track.steps[..j].iter().enumerate().find_map(|(i, earlier)| {
                    if earlier.links != later.links {
                        return None;
                    }
                    let interests: Vec<&String> =
                        earlier.by_interest.keys().chain(later.by_interest.keys()).collect();
                    std::iter::once(None)
                        .chain(interests.into_iter().map(|i| Some(i.as_str())))
                        .find(|interest| resolve(earlier, *interest) == resolve(later, *interest))
                        .map(|interest| (i, earlier, interest))
                });
                if let Some((i, earlier, interest)) = repeat {
                    let whom = interest.map(|i| format!(" to leads interested in `{i}`")).unwrap_or_default();
                    out.push((
                        format!("nurture.tracks[{t}].steps[{j}]"),
                        format!(
                            "`{}` sends the same email as `{}`{whom} (template `{}`, the same links): the lead gets it twice; give each step its own template or links",
                            name(later, j),
                            name(earlier, i),
                            resolve(later, interest),
                        ),
                    ));
                }
            }
        }
        out
    }

    fn track(&self, name: &str) -> Option<&Track> {
        self.tracks.iter().find(|t| t.config.name == name)
    }

    /// The lead's own zone (quiet hours are always read in it).
    pub fn lead_zone(&self, record: &LeadRecord) -> Tz {
        record
            .lead
            .time_zone
            .as_deref()
            .and_then(|z| z.parse().ok())
            .or(self.config.default_time_zone)
            .unwrap_or(Tz::UTC)
    }

    fn zone(&self, track: &Track, record: &LeadRecord) -> Tz {
        track.zone.unwrap_or_else(|| self.lead_zone(record))
    }

    /// When step `index` is due by its schedule, given the enrolment time and the previous
    /// step's due time (`anchor`).
    fn nominal(
        &self,
        track: &Track,
        index: usize,
        enrolled_at: Timestamp,
        anchor: Timestamp,
        record: &LeadRecord,
    ) -> Option<Timestamp> {
        let step = track.steps.get(index)?;
        let tz = self.zone(track, record);
        match &step.when {
            When::Cron(schedule) => schedule.next_after_in(anchor, tz),
            When::After { interval, from, at } => {
                let reference = match from {
                    From::Previous => anchor,
                    From::Enrolment => enrolled_at,
                };
                let mut due = interval.add_to(reference, tz);
                if let Some(time) = at {
                    let day = due.with_timezone(&tz).date_naive();
                    due = local_instant(tz, day.and_time(*time));
                    if due <= reference {
                        due = local_instant(tz, (day + TimeDelta::days(1)).and_time(*time));
                    }
                }
                Some(due)
            }
        }
    }

    /// Whether nurture mail may go out at `at` (not in quiet hours, not at a quiet weekend).
    pub fn allowed_at(&self, record: &LeadRecord, at: Timestamp) -> bool {
        let Some(quiet) = &self.config.quiet_hours else { return true };
        let local = at.with_timezone(&self.lead_zone(record)).naive_local();
        if quiet.weekends && matches!(local.weekday(), Weekday::Sat | Weekday::Sun) {
            return false;
        }
        let t = local.time();
        if quiet.start < quiet.end {
            !(t >= quiet.start && t < quiet.end)
        } else {
            !(t >= quiet.start || t < quiet.end)
        }
    }

    /// The first instant at or after `at` when nurture mail may go out to this lead.
    pub fn next_allowed(&self, record: &LeadRecord, at: Timestamp) -> Timestamp {
        let Some(quiet) = &self.config.quiet_hours else { return at };
        let tz = self.lead_zone(record);
        let mut candidate = at;
        for _ in 0..16 {
            if self.allowed_at(record, candidate) {
                return candidate;
            }
            let local = candidate.with_timezone(&tz).naive_local();
            let day = local.date();
            let in_quiet = !{
                let t = local.time();
                if quiet.start < quiet.end {
                    !(t >= quiet.start && t < quiet.end)
                } else {
                    !(t >= quiet.start || t < quiet.end)
                }
            };
            let next = if in_quiet {
                // The end of this quiet spell: today's `end` if it is still ahead, else tomorrow's.
                if local.time() < quiet.end {
                    day.and_time(quiet.end)
                } else {
                    (day + TimeDelta::days(1)).and_time(quiet.end)
                }
            } else {
                // A quiet weekend day: the next day at its first allowed minute.
                (day + TimeDelta::days(1)).and_time(if quiet.start < quiet.end {
                    NaiveTime::MIN
                } else {
                    quiet.end
                })
            };
            candidate = local_instant(tz, next).max(candidate + TimeDelta::seconds(1));
        }
        candidate
    }

    /// When the frequency cap lets the next nurture email go, if it does not now.
    fn cap_frees(&self, state: &NurtureState, now: Timestamp) -> Option<Timestamp> {
        let cap = self.config.frequency_cap.as_ref()?;
        let per = delta(cap.per);
        let mut recent: Vec<Timestamp> = state.sent.iter().copied().filter(|t| *t > now - per).collect();
        if recent.len() < cap.max as usize {
            return None;
        }
        recent.sort_unstable();
        recent.get(recent.len() - cap.max as usize).map(|t| *t + per + TimeDelta::seconds(1))
    }

    fn opted_out(record: &LeadRecord) -> bool {
        record.lead.opted_out || record.nurture.opted_out_at.is_some()
    }

    /// Why `record` must leave `track`, if it must.
    fn exit_reason(&self, track: &Track, record: &LeadRecord) -> Option<ExitReason> {
        let listed = |exit: Exit| track.config.exit.contains(&exit);
        if record.nurture.opted_out_at.is_some() && !record.lead.opted_out {
            return Some(ExitReason::Unsubscribed);
        }
        if Self::opted_out(record) {
            return Some(ExitReason::OptedOut);
        }
        if record.lead.email.as_deref().is_none_or(|e| e.trim().is_empty()) {
            return Some(ExitReason::NoAddress);
        }
        match record.stage {
            Stage::Graveyard => Some(ExitReason::Bounced),
            Stage::Disqualified | Stage::Contact => Some(ExitReason::Disqualified),
            Stage::Customer if listed(Exit::Converted) => Some(ExitReason::Converted),
            Stage::MarketingQualified | Stage::SalesQualified | Stage::Opportunity if listed(Exit::Mql) => {
                Some(ExitReason::Mql)
            }
            _ => None,
        }
    }

    /// Whether `record` matches `track`'s enrolment rule.
    fn matches(&self, track: &Track, record: &LeadRecord) -> bool {
        let rule = &track.config.enrol;
        let lead = &record.lead;
        let stage_ok = if rule.stages.is_empty() {
            NURTURABLE.contains(&record.stage)
        } else {
            rule.stages.contains(&record.stage)
        };
        let hit = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|l| l.eq_ignore_ascii_case(v)))
        };
        let segment = lead.custom.get("segment").map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        stage_ok
            && hit(&rule.lead_source, lead.lead_source.as_deref())
            && hit(&rule.segment, segment.as_deref())
            && (rule.interests.is_empty()
                || lead.interests.iter().any(|i| rule.interests.iter().any(|r| r.eq_ignore_ascii_case(i))))
            && self.exit_reason(track, record).is_none()
    }

    fn enrol(
        &self,
        track: &Track,
        record: &mut LeadRecord,
        now: Timestamp,
        reason: EnrolReason,
    ) -> NurtureEvent {
        let round = record.nurture.rounds.get(&track.config.name).copied().unwrap_or(0) + 1;
        record.nurture.rounds.insert(track.config.name.clone(), round);
        let nominal = self.nominal(track, 0, now, now, record).unwrap_or(now);
        let due = self.next_allowed(record, nominal);
        record.nurture.tracks.push(Enrolment {
            track: track.config.name.clone(),
            round,
            enrolled_at: now,
            next_step: 0,
            anchor: now,
            due,
            held: false,
        });
        NurtureEvent::Enrolled { track: track.config.name.clone(), round, reason, first_send: due }
    }

    /// Leaves every track whose exit holds (or that is no longer configured).
    fn exits(
        &self,
        record: &mut LeadRecord,
        now: Timestamp,
        events: &mut Vec<HistoryEvent>,
        facts: &mut Vec<Fact>,
    ) {
        let enrolments = std::mem::take(&mut record.nurture.tracks);
        for enrolment in enrolments {
            let reason = match self.track(&enrolment.track) {
                None => Some(ExitReason::TrackRemoved),
                Some(track) => self.exit_reason(track, record),
            };
            match reason {
                Some(reason) => note(
                    events,
                    facts,
                    now,
                    NurtureEvent::Exited { track: enrolment.track, round: enrolment.round, reason },
                ),
                None => record.nurture.tracks.push(enrolment),
            }
        }
    }

    /// Sets (or cancels) the lead's one nurture timer at its earliest planned step.
    fn sync_timer(&self, before: &NurtureState, record: &LeadRecord, decision: &mut Decision) {
        let next = record.nurture.tracks.iter().min_by_key(|e| (e.due, e.track.clone()));
        let previous = before.tracks.iter().map(|e| e.due).min();
        match next {
            Some(e) if previous != Some(e.due) || before.tracks != record.nurture.tracks => {
                decision.set_timers.push(Timer {
                    key: timer_key(record.lead.id.as_str()),
                    due: e.due,
                    lead_id: Some(record.lead.id.clone()),
                    kind: TimerKind::NurtureStep { track: e.track.clone(), step: e.next_step },
                })
            }
            Some(_) => {}
            None if !before.tracks.is_empty() => {
                decision.cancel_timers.push(timer_key(record.lead.id.as_str()))
            }
            None => {}
        }
    }

    /// The lead changed (fields, stage, score): record an opt-out, leave tracks whose exit
    /// holds, enter tracks it now matches (again, if sales recycled it). `before` is the lead
    /// before this event. Returns whether the record changed.
    pub fn on_change(
        &self,
        before: Option<&LeadRecord>,
        record: &mut LeadRecord,
        now: Timestamp,
        decision: &mut Decision,
    ) -> bool {
        let start = record.nurture.clone();
        if record.lead.opted_out && record.nurture.opted_out_at.is_none() {
            record.nurture.opted_out_at = Some(now);
        }
        let mut events = Vec::new();
        let mut facts = Vec::new();
        self.exits(record, now, &mut events, &mut facts);
        let recycled = record.stage == Stage::Recycled && before.is_none_or(|b| b.stage != Stage::Recycled);
        for track in self.tracks.iter() {
            if record.nurture.tracks.iter().any(|e| e.track == track.config.name)
                || !self.matches(track, record)
            {
                continue;
            }
            let rounds = record.nurture.rounds.get(&track.config.name).copied().unwrap_or(0);
            if rounds == 0 {
                let enrolled = self.enrol(track, record, now, EnrolReason::Matched);
                note(&mut events, &mut facts, now, enrolled);
            } else if recycled && track.config.enrol.recycled {
                let enrolled = self.enrol(track, record, now, EnrolReason::Recycled);
                note(&mut events, &mut facts, now, enrolled);
            }
        }
        decision.events.extend(events);
        decision.facts.extend(facts);
        self.sync_timer(&start, record, decision);
        record.nurture != start
    }

    /// An activity: an unsubscribe opts the lead out (here and in the CRM); a bounce or any
    /// other change is handled as [`on_change`](Self::on_change). Returns whether the record
    /// changed.
    pub fn on_activity(
        &self,
        before: &LeadRecord,
        record: &mut LeadRecord,
        activity: &Activity,
        now: Timestamp,
        decision: &mut Decision,
    ) -> bool {
        if activity.kind == "unsubscribe" && record.nurture.opted_out_at.is_none() {
            record.nurture.opted_out_at = Some(now);
            let mut fields = serde_json::Map::new();
            fields.insert("opted_out".into(), json!(true));
            decision.queue(
                IdempotencyKey::from_parts(["optout", record.lead.id.as_str(), &record.version.to_string()]),
                Effect::CrmUpdate { lead_id: record.lead.id.clone(), fields },
                now,
            );
            record.lead.opted_out = true;
            // Every track ends here, with the reason the lead gave.
            let enrolments = std::mem::take(&mut record.nurture.tracks);
            if !enrolments.is_empty() {
                decision.cancel_timers.push(timer_key(record.lead.id.as_str()));
            }
            for enrolment in enrolments {
                let exited = NurtureEvent::Exited {
                    track: enrolment.track,
                    round: enrolment.round,
                    reason: ExitReason::Unsubscribed,
                };
                note(&mut decision.events, &mut decision.facts, now, exited);
            }
            self.on_change(Some(before), record, now, decision);
            return true;
        }
        self.on_change(Some(before), record, now, decision)
    }

    /// The lead's nurture timer fired: send what is due (by the catch-up policy, the cap and
    /// quiet hours), plan the next steps, leave finished tracks.
    pub fn on_timer(&self, record: &mut LeadRecord, now: Timestamp, decision: &mut Decision) {
        let start = record.nurture.clone();
        if record.lead.opted_out && record.nurture.opted_out_at.is_none() {
            record.nurture.opted_out_at = Some(now);
        }
        let mut events = Vec::new();
        let mut facts = Vec::new();
        self.exits(record, now, &mut events, &mut facts);
        let mut order: Vec<usize> = (0..record.nurture.tracks.len()).collect();
        order.sort_by_key(|i| (record.nurture.tracks[*i].due, record.nurture.tracks[*i].track.clone()));
        let mut finished = Vec::new();
        for i in order {
            let enrolment = record.nurture.tracks[i].clone();
            if enrolment.due > now {
                continue;
            }
            let Some(track) = self.track(&enrolment.track) else { continue };
            let (enrolment, done) =
                self.advance(track, enrolment, record, now, decision, (&mut events, &mut facts));
            record.nurture.tracks[i] = enrolment;
            if done {
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            let enrolment = record.nurture.tracks.remove(i);
            let exited = NurtureEvent::Exited {
                track: enrolment.track,
                round: enrolment.round,
                reason: ExitReason::End,
            };
            note(&mut events, &mut facts, now, exited);
        }
        if let Some(cap) = &self.config.frequency_cap {
            let per = delta(cap.per);
            record.nurture.sent.retain(|t| *t > now - per);
        } else {
            record.nurture.sent.clear();
        }
        decision.events.extend(events);
        decision.facts.extend(facts);
        // The fired timer is gone: set it again whenever anything is left.
        let mut gone = start.clone();
        gone.tracks.clear();
        self.sync_timer(&gone, record, decision);
    }

    /// Sends what is due of one enrolment. Returns it updated, and whether it reached the end.
    fn advance(
        &self,
        track: &Track,
        mut enrolment: Enrolment,
        record: &mut LeadRecord,
        now: Timestamp,
        decision: &mut Decision,
        (events, facts): (&mut Vec<HistoryEvent>, &mut Vec<Fact>),
    ) -> (Enrolment, bool) {
        let staleness = delta(track.config.staleness);
        loop {
            // The steps due now: (index, planned time, anchor before it).
            let mut due: Vec<(usize, Timestamp, Timestamp)> = Vec::new();
            let mut index = enrolment.next_step as usize;
            let mut anchor = enrolment.anchor;
            let mut planned = enrolment.due;
            while index < track.steps.len() && planned <= now {
                due.push((index, planned, anchor));
                anchor = anchor_after(self, track, index, &enrolment, anchor, record);
                index += 1;
                if index >= track.steps.len() {
                    break;
                }
                match self.nominal(track, index, enrolment.enrolled_at, anchor, record) {
                    Some(nominal) => planned = self.next_allowed(record, nominal),
                    None => break,
                }
            }
            if due.is_empty() {
                return (enrolment, false);
            }
            if enrolment.held {
                // A held step is not overtaken by the steps after it.
                due.truncate(1);
            }
            let late = |planned: Timestamp| now - planned;
            let send: Vec<usize> = match track.config.catch_up {
                CatchUp::All => {
                    due.iter().filter(|d| late(d.1) <= staleness.max(ON_TIME)).map(|d| d.0).collect()
                }
                CatchUp::Once => due
                    .last()
                    .filter(|d| late(d.1) <= staleness.max(ON_TIME))
                    .map(|d| vec![d.0])
                    .unwrap_or_default(),
                CatchUp::Skip => due.iter().filter(|d| late(d.1) <= ON_TIME).map(|d| d.0).collect(),
            };
            let skipped: Vec<String> =
                due.iter().filter(|d| !send.contains(&d.0)).map(|d| track.steps[d.0].name.clone()).collect();
            if !skipped.is_empty() {
                let skipped = NurtureEvent::Skipped {
                    track: track.config.name.clone(),
                    round: enrolment.round,
                    steps: skipped,
                    catch_up: track.config.catch_up.as_str(),
                    late_seconds: late(due[0].1).num_seconds(),
                };
                note(events, facts, now, skipped);
            }
            let Some(&first) = send.first() else {
                // Everything due was skipped: plan the step after the last one due.
                let Some(&(last, _, anchor)) = due.last() else { return (enrolment, false) };
                enrolment.anchor = anchor;
                return self.plan_after(track, enrolment, last, record, None);
            };
            // Steps skipped before `first` move the anchor to `first`'s.
            if let Some(d) = due.iter().find(|d| d.0 == first) {
                enrolment.next_step = first as u32;
                enrolment.anchor = d.2;
                enrolment.due = d.1;
            }
            // Quiet hours now (a catch-up at night) or the cap: wait, keeping this step.
            if !self.allowed_at(record, now) {
                enrolment.due = self.next_allowed(record, now);
                enrolment.held = true;
                return (enrolment, false);
            }
            if let Some(frees) = self.cap_frees(&record.nurture, now) {
                enrolment.due = self.next_allowed(record, frees);
                enrolment.held = true;
                let capped = NurtureEvent::Capped {
                    track: track.config.name.clone(),
                    step: track.steps[first].name.clone(),
                    until: enrolment.due,
                };
                note(events, facts, now, capped);
                return (enrolment, false);
            }
            self.send(track, &enrolment, first, record, now, decision);
            record.nurture.sent.push(now);
            let floor = enrolment.held.then_some(now);
            let (next, done) = self.plan_after(track, enrolment, first, record, floor);
            enrolment = next;
            if done || enrolment.due > now {
                return (enrolment, done);
            }
            // `all`: the next step is due too; go round again (the cap still applies).
        }
    }

    /// Moves `enrolment` past step `index`: the next step's anchor and planned time. A step
    /// sent late because it was held moves the anchor to `floor` (when it went), so the steps
    /// after it keep their spacing.
    fn plan_after(
        &self,
        track: &Track,
        mut enrolment: Enrolment,
        index: usize,
        record: &LeadRecord,
        floor: Option<Timestamp>,
    ) -> (Enrolment, bool) {
        let mut anchor = anchor_after(self, track, index, &enrolment, enrolment.anchor, record);
        if let Some(floor) = floor {
            anchor = anchor.max(floor);
        }
        enrolment.next_step = index as u32 + 1;
        enrolment.anchor = anchor;
        enrolment.held = false;
        if index + 1 >= track.steps.len() {
            return (enrolment, true);
        }
        match self.nominal(track, index + 1, enrolment.enrolled_at, anchor, record) {
            Some(nominal) => {
                enrolment.due = self.next_allowed(record, floor.map_or(nominal, |f| nominal.max(f)));
                (enrolment, false)
            }
            None => (enrolment, true),
        }
    }

    /// The template for step `index`: the lead's first interest the step maps, else its own.
    fn template(step: &StepConfig, record: &LeadRecord) -> String {
        record
            .lead
            .interests
            .iter()
            .find_map(|i| {
                step.by_interest.iter().find(|(k, _)| k.eq_ignore_ascii_case(i)).map(|(_, t)| t.clone())
            })
            .unwrap_or_else(|| step.template.clone())
    }

    fn send(
        &self,
        track: &Track,
        enrolment: &Enrolment,
        index: usize,
        record: &LeadRecord,
        now: Timestamp,
        decision: &mut Decision,
    ) {
        let Some(step_config) = track.config.steps.get(index) else { return };
        let step = &track.steps[index];
        let Some(address) = record.lead.email.clone() else { return };
        let id = &record.lead.id;
        let key = send_key(id.as_str(), &track.config.name, enrolment.round, index as u32);
        let links: serde_json::Map<String, Value> = step_config
            .links
            .iter()
            .map(|(name, target)| {
                let url = match &self.links {
                    Some(maker) => {
                        let link = TrackedLink {
                            message: key.as_ref().ok(),
                            lead: id,
                            track: &track.config.name,
                            step: &step.name,
                            link: name,
                            target,
                        };
                        maker.click(&link, now)
                    }
                    None => target.clone(),
                };
                (name.clone(), Value::String(url))
            })
            .collect();
        let unsubscribe = self.links.as_ref().map(|m| m.unsubscribe(id, &address, now)).unwrap_or_default();
        let template = Self::template(step_config, record);
        let tz = self.lead_zone(record);
        let vars = json!({
            "kind": "nurture",
            "lead": vars::lead(record),
            "track": track.config.name,
            "step": step.name,
            "step_number": index + 1,
            "steps": track.steps.len(),
            "round": enrolment.round,
            "local_time": now.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string(),
            "unsubscribe_url": unsubscribe,
            "links": links,
        });
        let email = Effect::Email {
            kind: "nurture".into(),
            template,
            to: vec![address],
            cc: Vec::new(),
            lead_id: Some(id.clone()),
            vars,
            deliver_to: None,
        };
        if let Some(key) = decision.queue(key, email, now) {
            decision.facts.push(Fact::NurtureSend { key, track: track.config.name.clone() });
        }
    }

    /// The next `limit` sends of `track` for this lead: from its enrolment if it is enrolled,
    /// else as if it enrolled at `now`. Quiet hours apply; the frequency cap (which depends on
    /// the other tracks' sends) does not.
    pub fn preview(
        &self,
        track: &str,
        record: &LeadRecord,
        now: Timestamp,
        limit: usize,
    ) -> Option<Vec<Planned>> {
        let track = self.track(track)?;
        let enrolment = match record.nurture.tracks.iter().find(|e| e.track == track.config.name) {
            Some(e) => e.clone(),
            None => {
                let nominal = self.nominal(track, 0, now, now, record).unwrap_or(now);
                Enrolment {
                    track: track.config.name.clone(),
                    round: 1,
                    enrolled_at: now,
                    next_step: 0,
                    anchor: now,
                    due: self.next_allowed(record, nominal),
                    held: false,
                }
            }
        };
        let mut out = Vec::new();
        let mut current = enrolment;
        while out.len() < limit && (current.next_step as usize) < track.steps.len() {
            let index = current.next_step as usize;
            out.push(Planned {
                step: track.steps[index].name.clone(),
                index: current.next_step,
                template: Self::template(&track.config.steps[index], record),
                at: current.due,
            });
            let (next, done) = self.plan_after(track, current, index, record, None);
            if done {
                break;
            }
            current = next;
        }
        Some(out)
    }

    /// Tracks for `nurture list`: name, steps with their schedules, catch-up, exits.
    pub fn describe(&self) -> Vec<Value> {
        self.tracks
            .iter()
            .map(|t| {
                let steps: Vec<Value> = t
                    .config
                    .steps
                    .iter()
                    .zip(&t.steps)
                    .map(|(c, s)| {
                        let schedule = match (&c.cron, &c.after) {
                            (Some(cron), _) => format!("cron {cron}"),
                            (_, Some(after)) => {
                                let from = match c.from {
                                    From::Previous => "previous step",
                                    From::Enrolment => "enrolment",
                                };
                                match c.at {
                                    Some(at) => format!("{after} after {from} at {}", at.format("%H:%M")),
                                    None => format!("{after} after {from}"),
                                }
                            }
                            _ => String::new(),
                        };
                        json!({ "name": s.name, "schedule": schedule, "template": c.template, "by_interest": c.by_interest })
                    })
                    .collect();
                json!({
                    "name": t.config.name,
                    "time_zone": t.zone.map(|z| z.name().to_owned()).unwrap_or_else(|| "lead".into()),
                    "enrol": t.config.enrol,
                    "steps": steps,
                    "exit": t.config.exit,
                    "catch_up": t.config.catch_up.as_str(),
                    "staleness": humantime::format_duration(t.config.staleness).to_string(),
                })
            })
            .collect()
    }
}

/// The anchor after step `index` (its nominal due time), given the anchor before it.
fn anchor_after(
    rules: &NurtureRules,
    track: &Track,
    index: usize,
    enrolment: &Enrolment,
    anchor: Timestamp,
    record: &LeadRecord,
) -> Timestamp {
    rules.nominal(track, index, enrolment.enrolled_at, anchor, record).unwrap_or(anchor)
}
