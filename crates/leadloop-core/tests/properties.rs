//! Properties of the pure rules, over generated inputs: the stage table is never broken,
//! decay never raises a score and halves it at the half-life, routing never picks someone who
//! cannot take a lead, and an opted-in cap is never exceeded.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeDelta, TimeZone};
use leadloop_core::connector::Activity;
use leadloop_core::policy::Policy;
use leadloop_core::routing::{RouteRule, RoutingConfig};
use leadloop_core::rules::{LifecycleConfig, Rules};
use leadloop_core::scoring::{EngagementRule, FitRule, ScoredActivity, ScoringConfig};
use leadloop_core::sla::{Match, SlaConfig, SlaRules};
use leadloop_core::stage::check;
use leadloop_core::{
    EventKind, Lead, LeadId, LeadRecord, OrgChart, Person, PersonId, Role, Stage, Timestamp,
};
use proptest::prelude::*;

fn t0() -> Timestamp {
    "2026-03-02T14:00:00Z".parse().expect("instant")
}

fn rules() -> Rules {
    let scoring = ScoringConfig {
        threshold: 50.0,
        half_life: Duration::from_secs(5 * 86_400),
        fit: vec![FitRule {
            name: "vp".into(),
            field: "title".into(),
            equals: vec![],
            contains: vec!["vp".into()],
            min: None,
            max: None,
            points: 30.0,
        }],
        engagement: vec![
            EngagementRule {
                name: "visit".into(),
                activity: "web_visit".into(),
                points: 5.0,
                cap: Some(15.0),
                per: Duration::from_secs(7 * 86_400),
            },
            EngagementRule {
                name: "form".into(),
                activity: "form_submit".into(),
                points: 25.0,
                cap: None,
                per: Duration::from_secs(86_400),
            },
        ],
    };
    let statuses = ["Working - Contacted", "Disqualified", "Nurture", "Open - Not Contacted", "Converted"];
    let stages =
        [Stage::SalesQualified, Stage::Disqualified, Stage::Recycled, Stage::JustAName, Stage::Customer];
    let lifecycle =
        LifecycleConfig { status_stages: statuses.iter().map(|s| s.to_string()).zip(stages).collect() };
    Rules::new(SlaRules::new(SlaConfig::default()), scoring, lifecycle, RoutingConfig::default())
}

#[derive(Debug, Clone)]
enum Step {
    Activity(&'static str),
    Status(&'static str),
    Title(&'static str),
    Wait(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        prop::sample::select(vec!["web_visit", "form_submit", "meeting", "email_click"])
            .prop_map(Step::Activity),
        prop::sample::select(vec![
            "Working - Contacted",
            "Disqualified",
            "Nurture",
            "Open - Not Contacted",
            "Converted",
            "Other"
        ])
        .prop_map(Step::Status),
        prop::sample::select(vec!["VP Sales", "Student", "Engineer"]).prop_map(Step::Title),
        (1i64..2000).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever happens to a lead, every stage move the rules make is in the table, made by
    /// an actor the table allows.
    #[test]
    fn no_forbidden_transition_is_ever_taken(steps in prop::collection::vec(step(), 1..40)) {
        let rules = rules();
        let people = OrgChart::new([]);
        let mut now = t0();
        let mut record = LeadRecord::new(Lead::new("00Q1"), now);
        for step in steps {
            let decision = match step {
                Step::Wait(hours) => { now += TimeDelta::hours(hours); continue; }
                Step::Activity(kind) => {
                    let activity = Activity { lead_id: LeadId::new("00Q1"), at: now, kind: kind.into(), detail: BTreeMap::new() };
                    rules.on_activity(&record, &activity, &people, now)
                }
                Step::Status(status) => {
                    let mut after = record.clone();
                    after.lead.status = Some(status.into());
                    rules.on_lead(Some(&record), after, &people, now)
                }
                Step::Title(title) => {
                    let mut after = record.clone();
                    after.lead.title = Some(title.into());
                    rules.on_lead(Some(&record), after, &people, now)
                }
            };
            let mut stage = record.stage;
            for event in &decision.events {
                if let EventKind::StageChanged { from, to, .. } = &event.kind {
                    prop_assert_eq!(*from, stage, "a move starts where the lead is");
                    prop_assert!(check(*from, *to, &event.actor).is_ok(), "{:?} → {:?} by {}", from, to, event.actor);
                    stage = *to;
                }
            }
            if let Some(next) = decision.lead {
                prop_assert_eq!(next.stage, stage);
                record = next;
            }
        }
    }

    /// Decay never raises engagement, and at one half-life it is half.
    #[test]
    fn decay_is_monotone_and_halves(points in 1.0f64..500.0, days in 1u64..60, ages in prop::collection::vec(0i64..10_000, 2..20)) {
        let config = ScoringConfig { half_life: Duration::from_secs(days * 86_400), ..ScoringConfig::default() };
        let history = vec![ScoredActivity { at: t0(), rule: "r".into(), points }];
        let mut ages = ages;
        ages.sort_unstable();
        let mut previous = f64::MAX;
        for hours in ages {
            let now = config.engagement(&history, t0() + TimeDelta::hours(hours));
            prop_assert!(now <= previous + 1e-9);
            previous = now;
        }
        let half = config.engagement(&history, t0() + TimeDelta::days(days as i64));
        prop_assert!((half - points / 2.0).abs() < 1e-6 * points);
    }

    /// A capped rule never scores more than its cap within its period.
    #[test]
    fn caps_hold(gaps in prop::collection::vec(0i64..48, 1..60)) {
        let config = rules().scoring;
        let mut history: Vec<ScoredActivity> = Vec::new();
        let mut now = t0();
        for gap in gaps {
            now += TimeDelta::hours(gap);
            if let Some(scored) = config.score_activity(&history, "web_visit", now) {
                history.push(scored);
            }
            let window = now - TimeDelta::days(7);
            let in_window: f64 = history.iter().filter(|a| a.at > window).map(|a| a.points).sum();
            prop_assert!(in_window <= 15.0 + 1e-9, "{} points within a week", in_window);
        }
    }

    /// Routing never picks someone inactive, a queue, or at capacity; with nobody free it
    /// falls back.
    #[test]
    fn routing_never_picks_someone_who_cannot_take_a_lead(
        members in prop::collection::vec((any::<bool>(), any::<bool>(), prop::option::of(0u32..4), 0u32..5), 1..8),
        turn in 0u64..50,
    ) {
        let mut people = Vec::new();
        let mut load = BTreeMap::new();
        for (i, (active, queue, capacity, open)) in members.iter().enumerate() {
            let id = PersonId::new(format!("p{i}"));
            people.push(Person {
                id: id.clone(),
                email: format!("p{i}@x.example"),
                name: format!("P{i}"),
                manager: None,
                time_zone: None,
                role: if *queue { Role::Queue } else { Role::Rep },
                active: *active,
                capacity: *capacity,
            });
            load.insert(id, *open);
        }
        let pool: Vec<PersonId> = people.iter().map(|p| p.id.clone()).collect();
        let mut chart = OrgChart::new(people);
        chart.load = load;
        chart.turns.insert("r".into(), turn);
        let config = RoutingConfig {
            account_owner: true,
            fallback: Some(PersonId::new("fallback")),
            rules: vec![RouteRule { name: "r".into(), when: Match::default(), pool, weights: BTreeMap::new() }],
        };
        let route = config.route(&LeadRecord::new(Lead::new("00Q1"), t0()), &chart).expect("a route");
        if route.owner.as_str() == "fallback" {
            prop_assert!(chart.people().all(|p| !chart.can_take(&p.id)), "fell back while someone was free");
        } else {
            prop_assert!(chart.can_take(&route.owner));
        }
    }
}

const ZONES: [&str; 20] = [
    "UTC",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "America/Santiago",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Moscow",
    "Africa/Cairo",
    "Asia/Tehran",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
    "Pacific/Chatham",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// A daily schedule, in any of 20 zones, any time from 2026 to 2036: fires strictly
    /// increase, once per local day, at the scheduled local time — or, on a day that skips it,
    /// at the first valid instant after the gap.
    #[test]
    fn daily_schedules_are_dst_safe(zone in 0usize..20, hour in 0u32..24, minute in 0u32..60, days in 0i64..3650) {
        use chrono::{NaiveTime, Timelike};
        let tz: chrono_tz::Tz = ZONES[zone].parse().expect("zone");
        let schedule = leadloop_core::schedule::Schedule::parse(&format!("{minute} {hour} * * *"), tz).expect("parses");
        let target = NaiveTime::from_hms_opt(hour, minute, 0).expect("time");
        let mut cursor = t0() + TimeDelta::days(days);
        let mut last_day = None;
        // Over a year of days: every zone's DST changes (if it has any) are crossed.
        for _ in 0..370 {
            let next = schedule.next_after(cursor).expect("next");
            prop_assert!(next > cursor, "never backwards");
            let local = next.with_timezone(&tz);
            let day = local.date_naive();
            prop_assert!(last_day != Some(day), "fired twice on {}", day);
            if local.time() != target {
                // Only a skipped local time moves, and only forward, to the end of the gap.
                let scheduled = day.and_time(target);
                prop_assert!(tz.from_local_datetime(&scheduled).earliest().is_none(), "{} fired at {} instead of {}", ZONES[zone], local, target);
                prop_assert!(local.naive_local() > scheduled);
                let just_before = next - TimeDelta::seconds(1);
                prop_assert!(just_before.with_timezone(&tz).naive_local() < scheduled, "not the first instant after the gap");
            }
            prop_assert_eq!(local.second(), 0);
            last_day = Some(day);
            cursor = next;
        }
    }
}
