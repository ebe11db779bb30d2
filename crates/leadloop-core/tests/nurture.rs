//! Nurture tracks in virtual time, through the composed [`Rules`] and a tiny in-memory world
//! that keeps leads and timers the way the engine does (a fired timer is gone unless the
//! decision sets it again): monthly tracks across year ends and short months, DST in three
//! zones, each catch-up policy after 10 days down, the frequency cap across two tracks, quiet
//! hours, recycling, and unsubscribing (with a property test that an opted-out lead never gets
//! nurture mail).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::TimeDelta;
use leadloop_core::connector::Activity;
use leadloop_core::nurture::{
    CatchUp, FrequencyCap, NurtureConfig, NurtureRules, QuietHours, StepConfig, TrackConfig,
};
use leadloop_core::policy::Policy;
use leadloop_core::rules::{LifecycleConfig, Rules};
use leadloop_core::scoring::ScoringConfig;
use leadloop_core::sla::{SlaConfig, SlaRules};
use leadloop_core::{
    Decision, Effect, EventKind, HistoryEvent, IdempotencyKey, Lead, LeadId, LeadRecord, OrgChart, Stage,
    Timer, TimerKey, Timestamp,
};
use proptest::prelude::*;

fn at(s: &str) -> Timestamp {
    s.parse().expect("instant")
}

fn step(when: &str) -> StepConfig {
    let (cron, after) = if when.contains(' ') || when.starts_with('@') {
        (Some(when.to_owned()), None)
    } else {
        (None, Some(when.to_owned()))
    };
    StepConfig {
        name: None,
        cron,
        after,
        from: Default::default(),
        at: None,
        template: "nurture_example".into(),
        by_interest: BTreeMap::new(),
        links: BTreeMap::new(),
    }
}

fn track(name: &str, steps: Vec<StepConfig>) -> TrackConfig {
    TrackConfig {
        name: name.into(),
        enrol: Default::default(),
        steps,
        exit: vec![
            leadloop_core::nurture::Exit::Mql,
            leadloop_core::nurture::Exit::OptedOut,
            leadloop_core::nurture::Exit::Converted,
            leadloop_core::nurture::Exit::Bounced,
            leadloop_core::nurture::Exit::Unsubscribed,
            leadloop_core::nurture::Exit::End,
        ],
        catch_up: CatchUp::Once,
        staleness: Duration::from_secs(2 * 86_400),
        time_zone: None,
    }
}

fn rules(config: NurtureConfig) -> Rules {
    let statuses = [("Qualified", Stage::MarketingQualified), ("Nurture", Stage::Recycled)];
    let lifecycle =
        LifecycleConfig { status_stages: statuses.iter().map(|(s, st)| (s.to_string(), *st)).collect() };
    Rules::new(SlaRules::new(SlaConfig::default()), ScoringConfig::default(), lifecycle, Default::default())
        .with_nurture(NurtureRules::new(config).expect("valid nurture config"))
}

/// Leads and timers as the engine keeps them, in virtual time.
struct World {
    rules: Rules,
    now: Timestamp,
    leads: BTreeMap<LeadId, LeadRecord>,
    timers: BTreeMap<TimerKey, Timer>,
    effects: Vec<(Timestamp, IdempotencyKey, Effect)>,
    events: Vec<HistoryEvent>,
}

impl World {
    fn new(config: NurtureConfig, now: &str) -> Self {
        Self {
            rules: rules(config),
            now: at(now),
            leads: BTreeMap::new(),
            timers: BTreeMap::new(),
            effects: Vec::new(),
            events: Vec::new(),
        }
    }

    fn apply(&mut self, decision: Decision) {
        if let Some(record) = decision.lead {
            self.leads.insert(record.lead.id.clone(), record);
        }
        for key in decision.cancel_timers {
            self.timers.remove(&key);
        }
        for timer in decision.set_timers {
            assert!(timer.due >= self.now - TimeDelta::seconds(1), "timer set in the past: {timer:?}");
            self.timers.insert(timer.key.clone(), timer);
        }
        for (key, effect) in decision.effects {
            // The outbox dedupes by key.
            if !self.effects.iter().any(|(_, k, _)| *k == key) {
                self.effects.push((self.now, key, effect));
            }
        }
        self.events.extend(decision.events);
    }

    fn upsert(&mut self, lead: Lead) {
        let before = self.leads.get(&lead.id).cloned();
        let after = match &before {
            Some(old) => LeadRecord { lead, updated_at: self.now, version: old.version + 1, ..old.clone() },
            None => LeadRecord::new(lead, self.now),
        };
        let decision = self.rules.on_lead(before.as_ref(), after, &OrgChart::default(), self.now);
        self.apply(decision);
    }

    fn edit(&mut self, id: &str, change: impl FnOnce(&mut Lead)) {
        let mut lead = self.leads[&LeadId::new(id)].lead.clone();
        change(&mut lead);
        self.upsert(lead);
    }

    fn activity(&mut self, id: &str, kind: &str) {
        let Some(record) = self.leads.get(&LeadId::new(id)).cloned() else { return };
        let activity =
            Activity { lead_id: LeadId::new(id), at: self.now, kind: kind.into(), detail: BTreeMap::new() };
        let decision = self.rules.on_activity(&record, &activity, &OrgChart::default(), self.now);
        self.apply(decision);
    }

    /// Fires every timer due at or before `now`, at `now` (what a tick after downtime does).
    fn fire_due(&mut self) {
        for _ in 0..10_000 {
            let Some(timer) =
                self.timers.values().filter(|t| t.due <= self.now).min_by_key(|t| t.due).cloned()
            else {
                return;
            };
            self.timers.remove(&timer.key);
            let lead = timer.lead_id.as_ref().and_then(|id| self.leads.get(id)).cloned();
            let decision = self.rules.on_timer(&timer, lead.as_ref(), &OrgChart::default(), self.now);
            self.apply(decision);
        }
        panic!("timers keep firing at {}", self.now);
    }

    /// Runs the clock to `until`, firing each timer at its due instant.
    fn run_until(&mut self, until: Timestamp) {
        loop {
            let next = self.timers.values().map(|t| t.due).min();
            match next {
                Some(due) if due <= until => {
                    self.now = self.now.max(due);
                    self.fire_due();
                }
                _ => break,
            }
        }
        self.now = until;
    }

    /// leadloop is down until `until`; then one tick.
    fn down_until(&mut self, until: Timestamp) {
        self.now = until;
        self.fire_due();
    }

    fn nurture_sends(&self) -> Vec<(Timestamp, String)> {
        self.effects
            .iter()
            .filter(|(_, _, e)| matches!(e, Effect::Email { kind, .. } if kind == "nurture"))
            .map(|(t, k, _)| (*t, k.to_string()))
            .collect()
    }

    fn sends_local(&self, tz: &str) -> Vec<String> {
        let tz: chrono_tz::Tz = tz.parse().expect("zone");
        self.nurture_sends()
            .iter()
            .map(|(t, _)| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string())
            .collect()
    }

    fn activities(&self, name: &str) -> Vec<&BTreeMap<String, serde_json::Value>> {
        self.events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Activity { activity, detail } if activity == name => Some(detail),
                _ => None,
            })
            .collect()
    }
}

fn lead(id: &str, tz: Option<&str>) -> Lead {
    let mut lead = Lead::new(id);
    lead.email = Some(format!("{}@acme.example", id.to_lowercase()));
    lead.time_zone = tz.map(str::to_owned);
    lead
}

fn config(tracks: Vec<TrackConfig>) -> NurtureConfig {
    NurtureConfig { tracks, ..NurtureConfig::default() }
}

#[test]
fn monthly_track_from_enrolment_crosses_year_ends_and_short_months() {
    let months: Vec<StepConfig> = ["1mo", "3mo", "6mo", "9mo", "12mo", "13mo", "16mo"]
        .iter()
        .map(|m| StepConfig { from: leadloop_core::nurture::From::Enrolment, ..step(m) })
        .collect();
    let mut world = World::new(config(vec![track("monthly", months)]), "2026-10-31T10:00:00Z");
    world.upsert(lead("00Q1", None));
    world.run_until(at("2028-06-01T00:00:00Z"));
    assert_eq!(
        world.sends_local("UTC"),
        [
            "2026-11-30 10:00 UTC",
            "2027-01-31 10:00 UTC",
            "2027-04-30 10:00 UTC",
            "2027-07-31 10:00 UTC",
            "2027-10-31 10:00 UTC",
            "2027-11-30 10:00 UTC",
            "2028-02-29 10:00 UTC",
        ]
    );
    assert_eq!(world.nurture_sends()[0].1, "nurture/00Q1/monthly/1/0");
    // The end of the track is an exit; no timer is left.
    assert_eq!(world.activities("nurture_exited").last().map(|d| d["reason"].clone()), Some("end".into()));
    assert!(world.timers.is_empty());
}

#[test]
fn monthly_steps_from_the_previous_step_clamp_and_then_keep_the_clamped_day() {
    let mut world = World::new(
        config(vec![track("chain", vec![step("1mo"), step("1mo"), step("1mo")])]),
        "2026-12-31T09:00:00Z",
    );
    world.upsert(lead("00Q1", Some("Europe/Berlin")));
    world.run_until(at("2027-06-01T00:00:00Z"));
    // 31 December + 1 month = 31 January; + 1 month = 28 February; + 1 month = 28 March.
    assert_eq!(
        world.sends_local("Europe/Berlin"),
        ["2027-01-31 10:00 CET", "2027-02-28 10:00 CET", "2027-03-28 10:00 CEST"]
    );
}

fn dst_sends(zone: &str, cron: &str, enrol: &str, steps: usize) -> Vec<String> {
    let mut world = World::new(config(vec![track("daily", vec![step(cron); steps])]), enrol);
    world.upsert(lead("00Q1", Some(zone)));
    world.run_until(world.now + TimeDelta::days(steps as i64 + 2));
    world.sends_local(zone)
}

#[test]
fn dst_in_new_york_gap_fires_at_its_end_and_overlap_once() {
    assert_eq!(
        dst_sends("America/New_York", "30 2 * * *", "2026-03-06T12:00:00Z", 3),
        ["2026-03-07 02:30 EST", "2026-03-08 03:00 EDT", "2026-03-09 02:30 EDT"]
    );
    assert_eq!(
        dst_sends("America/New_York", "30 1 * * *", "2026-10-30T12:00:00Z", 3),
        ["2026-10-31 01:30 EDT", "2026-11-01 01:30 EDT", "2026-11-02 01:30 EST"]
    );
    // "10:00 in the lead's local time" stays 10:00 across the change.
    assert_eq!(
        dst_sends("America/New_York", "0 10 * * *", "2026-03-07T00:00:00Z", 3),
        ["2026-03-07 10:00 EST", "2026-03-08 10:00 EDT", "2026-03-09 10:00 EDT"]
    );
}

#[test]
fn dst_in_berlin_gap_fires_at_its_end_and_overlap_once() {
    assert_eq!(
        dst_sends("Europe/Berlin", "30 2 * * *", "2026-03-27T12:00:00Z", 3),
        ["2026-03-28 02:30 CET", "2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST"]
    );
    assert_eq!(
        dst_sends("Europe/Berlin", "30 2 * * *", "2026-10-23T12:00:00Z", 3),
        ["2026-10-24 02:30 CEST", "2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"]
    );
}

#[test]
fn dst_in_sydney_gap_fires_at_its_end_and_overlap_once() {
    // Sydney springs forward on 4 October 2026 (02:00 → 03:00) and falls back on 5 April
    // 2026 (03:00 → 02:00).
    assert_eq!(
        dst_sends("Australia/Sydney", "30 2 * * *", "2026-10-02T00:00:00Z", 3),
        ["2026-10-03 02:30 AEST", "2026-10-04 03:00 AEDT", "2026-10-05 02:30 AEDT"]
    );
    assert_eq!(
        dst_sends("Australia/Sydney", "30 2 * * *", "2026-04-03T00:00:00Z", 3),
        ["2026-04-04 02:30 AEDT", "2026-04-05 02:30 AEDT", "2026-04-06 02:30 AEST"]
    );
}

/// A daily track (20 steps at 10:00 UTC), enrolled on 1 June; leadloop goes down on 1 June
/// at noon and comes back on 11 June at noon.
fn ten_days_down(catch_up: CatchUp, staleness_days: u64) -> World {
    let mut daily = track("daily", vec![step("0 10 * * *"); 20]);
    daily.catch_up = catch_up;
    daily.staleness = Duration::from_secs(staleness_days * 86_400);
    let mut world = World::new(config(vec![daily]), "2026-06-01T08:00:00Z");
    world.upsert(lead("00Q1", None));
    world.run_until(at("2026-06-01T12:00:00Z"));
    assert_eq!(world.nurture_sends().len(), 1);
    world.down_until(at("2026-06-11T12:00:00Z"));
    world
}

#[test]
fn catch_up_once_sends_the_latest_due_step_and_logs_the_rest() {
    let mut world = ten_days_down(CatchUp::Once, 2);
    let sends = world.nurture_sends();
    // Steps 2–11 were due (2–11 June); only the 11 June one (2 h late) goes, once.
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[1], (at("2026-06-11T12:00:00Z"), "nurture/00Q1/daily/1/10".into()));
    let skipped = world.activities("nurture_skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["steps"].as_array().map(Vec::len), Some(9));
    assert_eq!(skipped[0]["catch_up"], "once");
    // Back on schedule: the next step at 10:00 the next day.
    world.run_until(at("2026-06-12T12:00:00Z"));
    assert_eq!(world.nurture_sends()[2], (at("2026-06-12T10:00:00Z"), "nurture/00Q1/daily/1/11".into()));
}

#[test]
fn catch_up_once_never_sends_more_than_staleness_late() {
    let mut monthly = track("monthly", vec![step("1mo"), step("1mo")]);
    monthly.catch_up = CatchUp::Once;
    let mut world = World::new(config(vec![monthly]), "2026-06-01T10:00:00Z");
    world.upsert(lead("00Q1", None));
    // The first step was due on 1 July; leadloop is back on 11 July: 10 days late > 2 days.
    world.down_until(at("2026-07-11T10:00:00Z"));
    assert!(world.nurture_sends().is_empty());
    assert_eq!(world.activities("nurture_skipped").len(), 1);
    // The second step follows the first's schedule (1 August), not the late tick.
    world.run_until(at("2026-08-02T00:00:00Z"));
    assert_eq!(world.nurture_sends(), [(at("2026-08-01T10:00:00Z"), "nurture/00Q1/monthly/1/1".into())]);
}

#[test]
fn catch_up_all_sends_every_due_step_in_order() {
    let world = ten_days_down(CatchUp::All, 30);
    let sends = world.nurture_sends();
    assert_eq!(sends.len(), 11);
    let steps: Vec<String> =
        sends.iter().map(|(_, k)| k.rsplit('/').next().unwrap_or("").to_owned()).collect();
    assert_eq!(steps, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
    assert!(sends[1..].iter().all(|(t, _)| *t == at("2026-06-11T12:00:00Z")));
    assert!(world.activities("nurture_skipped").is_empty());
}

#[test]
fn catch_up_all_still_drops_what_is_past_staleness() {
    let world = ten_days_down(CatchUp::All, 2);
    // Due 10 and 11 June (≤ 2 days late) go; 2–9 June are skipped.
    assert_eq!(world.nurture_sends().len(), 3);
    assert_eq!(world.activities("nurture_skipped")[0]["steps"].as_array().map(Vec::len), Some(8));
}

#[test]
fn catch_up_skip_sends_nothing_late() {
    let mut world = ten_days_down(CatchUp::Skip, 2);
    assert_eq!(world.nurture_sends().len(), 1);
    assert_eq!(world.activities("nurture_skipped")[0]["steps"].as_array().map(Vec::len), Some(10));
    world.run_until(at("2026-06-12T12:00:00Z"));
    assert_eq!(world.nurture_sends()[1], (at("2026-06-12T10:00:00Z"), "nurture/00Q1/daily/1/11".into()));
}

#[test]
fn frequency_cap_holds_across_two_tracks() {
    let weekly = |name: &str| track(name, vec![step("1d"), step("7d"), step("7d")]);
    let mut nurture = config(vec![weekly("product"), weekly("webinars")]);
    nurture.frequency_cap = Some(FrequencyCap { max: 1, per: Duration::from_secs(5 * 86_400) });
    let mut world = World::new(nurture, "2026-06-01T10:00:00Z");
    world.upsert(lead("00Q1", None));
    world.run_until(at("2026-09-01T00:00:00Z"));
    let sends = world.nurture_sends();
    assert_eq!(sends.len(), 6, "{sends:?}");
    for pair in sends.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= TimeDelta::days(5), "{pair:?}");
    }
    assert!(
        sends.iter().any(|(_, k)| k.contains("/product/"))
            && sends.iter().any(|(_, k)| k.contains("/webinars/"))
    );
    assert!(!world.activities("nurture_capped").is_empty());
}

#[test]
fn quiet_hours_and_weekends_move_sends_in_the_leads_zone() {
    let mut nurture = config(vec![track("t", vec![step("0 22 * * *"), step("0 11 * * *")])]);
    nurture.quiet_hours = Some(QuietHours {
        start: "20:00".parse().expect("time"),
        end: "08:00".parse().expect("time"),
        weekends: true,
    });
    // Thursday 4 June 2026, in Sydney.
    let mut world = World::new(nurture, "2026-06-04T00:00:00Z");
    world.upsert(lead("00Q1", Some("Australia/Sydney")));
    world.run_until(at("2026-06-10T00:00:00Z"));
    // 22:00 Thursday is quiet → 08:00 Friday; the next step's 11:00 after Thursday 22:00 is
    // Friday 11:00.
    assert_eq!(world.sends_local("Australia/Sydney"), ["2026-06-05 08:00 AEST", "2026-06-05 11:00 AEST"]);

    let mut nurture = config(vec![track("t", vec![step("0 10 * * sat")])]);
    nurture.quiet_hours = Some(QuietHours {
        start: "20:00".parse().expect("time"),
        end: "08:00".parse().expect("time"),
        weekends: true,
    });
    let mut world = World::new(nurture, "2026-06-04T00:00:00Z");
    world.upsert(lead("00Q1", Some("America/New_York")));
    world.run_until(at("2026-06-10T00:00:00Z"));
    assert_eq!(world.sends_local("America/New_York"), ["2026-06-08 08:00 EDT"]);
}

#[test]
fn qualifying_exits_and_recycling_re_enrols_in_a_new_round() {
    let mut world =
        World::new(config(vec![track("t", vec![step("7d"), step("7d")])]), "2026-06-01T10:00:00Z");
    world.upsert(lead("00Q1", None));
    world.run_until(at("2026-06-09T00:00:00Z"));
    assert_eq!(world.nurture_sends().len(), 1);
    world.edit("00Q1", |l| l.status = Some("Qualified".into()));
    assert_eq!(world.leads[&LeadId::new("00Q1")].stage, Stage::MarketingQualified);
    assert_eq!(world.activities("nurture_exited")[0]["reason"], "mql");
    world.run_until(at("2026-07-01T00:00:00Z"));
    assert_eq!(world.nurture_sends().len(), 1, "no mail while qualified");
    world.edit("00Q1", |l| l.status = Some("Nurture".into()));
    assert_eq!(world.leads[&LeadId::new("00Q1")].stage, Stage::Recycled);
    world.run_until(at("2026-08-01T00:00:00Z"));
    let sends = world.nurture_sends();
    assert_eq!(
        sends.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
        ["nurture/00Q1/t/1/0", "nurture/00Q1/t/2/0", "nurture/00Q1/t/2/1"]
    );
    assert_eq!(sends[1].0, at("2026-07-08T00:00:00Z"));
    // A field change on an enrolled lead does not enrol it twice.
    assert_eq!(world.activities("nurture_enrolled").len(), 2);
}

#[test]
fn templates_follow_interests_and_links_are_tracked() {
    let mut first = step("1d");
    first.by_interest.insert("security".into(), "nurture_security".into());
    first.links.insert("whitepaper".into(), "https://example.com/wp.pdf".into());
    let mut world = World::new(config(vec![track("t", vec![first])]), "2026-06-01T10:00:00Z");
    let mut l = lead("00Q1", None);
    l.interests = vec!["cloud".into(), "Security".into()];
    world.upsert(l);
    world.run_until(at("2026-06-03T00:00:00Z"));
    let Effect::Email { template, vars, to, .. } = &world.effects[0].2 else { panic!("not an email") };
    assert_eq!(template, "nurture_security");
    assert_eq!(to, &["00q1@acme.example".to_owned()]);
    assert_eq!(vars["links"]["whitepaper"], "https://example.com/wp.pdf");
    assert_eq!(vars["kind"], "nurture");
}

#[test]
fn unsubscribe_stops_everything_and_writes_back_the_opt_out() {
    let nurture = config(vec![track("a", vec![step("1d"); 5]), track("b", vec![step("2d"); 5])]);
    let mut world = World::new(nurture, "2026-06-01T10:00:00Z");
    world.upsert(lead("00Q1", None));
    world.run_until(at("2026-06-03T11:00:00Z"));
    let before = world.nurture_sends().len();
    assert!(before >= 2);
    world.activity("00Q1", "unsubscribe");
    let record = &world.leads[&LeadId::new("00Q1")];
    assert!(record.lead.opted_out && record.nurture.tracks.is_empty());
    assert!(
        world
            .effects
            .iter()
            .any(|(_, _, e)| matches!(e, Effect::CrmUpdate { fields, .. } if fields["opted_out"] == true))
    );
    assert!(world.timers.is_empty());
    let exits: Vec<_> = world.activities("nurture_exited").iter().map(|d| d["reason"].clone()).collect();
    assert_eq!(exits, ["unsubscribed", "unsubscribed"]);
    // Even if the CRM clears the flag, nothing more goes out.
    world.edit("00Q1", |l| l.opted_out = false);
    world.edit("00Q1", |l| l.status = Some("Nurture".into()));
    world.run_until(at("2026-08-01T00:00:00Z"));
    assert_eq!(world.nurture_sends().len(), before);
}

#[test]
fn bad_config_is_reported_with_keys() {
    let mut bad = track("", vec![step("3q")]);
    bad.time_zone = Some("Mars/Olympus".into());
    let mut both = step("1d");
    both.cron = Some("0 9 * * *".into());
    let problems = NurtureRules::new(config(vec![bad, track("x", vec![both, step("61 9 * * *")])]))
        .expect_err("invalid");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "nurture.tracks[0].name",
            "nurture.tracks[0].time_zone",
            "nurture.tracks[0].steps[0].after",
            "nurture.tracks[1].steps[0]",
            "nurture.tracks[1].steps[1].cron"
        ]
    );
}

#[derive(Debug, Clone)]
enum Op {
    Wait(i64),
    Unsubscribe,
    CrmOptOut(bool),
    Status(&'static str),
    Interest(&'static str),
    Click,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1i64..240).prop_map(Op::Wait),
        1 => Just(Op::Unsubscribe),
        1 => any::<bool>().prop_map(Op::CrmOptOut),
        1 => prop::sample::select(vec!["Qualified", "Nurture", "Open"]).prop_map(Op::Status),
        1 => prop::sample::select(vec!["cloud", "security"]).prop_map(Op::Interest),
        1 => Just(Op::Click),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever happens after a lead opts out (in the CRM or by unsubscribing) — recycling,
    /// the CRM clearing the flag, new interests, time passing — it gets no nurture mail.
    #[test]
    fn an_opted_out_lead_never_gets_nurture_mail(ops in prop::collection::vec(op(), 1..40)) {
        let mut nurture = config(vec![
            track("a", vec![step("1d"), step("0 10 * * *"), step("3d"), step("1mo")]),
            track("b", vec![step("12h"), step("2d")]),
        ]);
        nurture.frequency_cap = Some(FrequencyCap { max: 2, per: Duration::from_secs(86_400) });
        let mut world = World::new(nurture, "2026-03-01T00:00:00Z");
        world.upsert(lead("00Q1", Some("Europe/Berlin")));
        // How many nurture emails had gone out when the lead first opted out.
        let mut opted_out_after: Option<usize> = None;
        for op in ops {
            match op {
                Op::Wait(hours) => {
                    let until = world.now + TimeDelta::hours(hours);
                    world.run_until(until);
                }
                Op::Unsubscribe => {
                    opted_out_after.get_or_insert(world.nurture_sends().len());
                    world.activity("00Q1", "unsubscribe");
                }
                Op::CrmOptOut(flag) => {
                    if flag {
                        opted_out_after.get_or_insert(world.nurture_sends().len());
                    }
                    world.edit("00Q1", |l| l.opted_out = flag);
                }
                Op::Status(status) => world.edit("00Q1", |l| l.status = Some(status.into())),
                Op::Interest(interest) => world.edit("00Q1", |l| l.interests = vec![interest.into()]),
                Op::Click => world.activity("00Q1", "email_click"),
            }
        }
        world.run_until(world.now + TimeDelta::days(60));
        if let Some(cut) = opted_out_after {
            let late = &world.nurture_sends()[cut..];
            prop_assert!(late.is_empty(), "sent after opting out: {late:?}");
        }
        // The cap holds throughout.
        let sends = world.nurture_sends();
        for window in sends.windows(3) {
            prop_assert!(window[2].0 - window[0].0 >= TimeDelta::days(1), "{window:?}");
        }
    }
}
