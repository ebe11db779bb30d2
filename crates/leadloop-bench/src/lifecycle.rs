//! Scoring and routing rates: decayed scores of many leads, and routing decisions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use leadloop_core::routing::{RouteRule, RoutingConfig};
use leadloop_core::scoring::{EngagementRule, ScoredActivity, ScoringConfig};
use leadloop_core::sla::Match;
use leadloop_core::{Lead, LeadRecord, OrgChart, Person, PersonId, Role};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scored leads.
    #[arg(long, default_value_t = 1_000_000)]
    leads: usize,
    /// Scored activities per lead.
    #[arg(long, default_value_t = 10)]
    activities: usize,
    /// Routing decisions.
    #[arg(long, default_value_t = 1_000_000)]
    routes: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let t0: leadloop_core::Timestamp = "2026-03-02T14:00:00Z".parse()?;
    let scoring = ScoringConfig {
        engagement: vec![EngagementRule {
            name: "visit".into(),
            activity: "web_visit".into(),
            points: 5.0,
            cap: None,
            per: Duration::from_secs(86_400),
        }],
        ..ScoringConfig::default()
    };
    let records: Vec<LeadRecord> = (0..args.leads)
        .map(|i| {
            let mut record = LeadRecord::new(Lead::new(format!("L{i}")), t0);
            record.scored = (0..args.activities)
                .map(|k| ScoredActivity {
                    at: t0 + TimeDelta::hours((i % 500) as i64 + k as i64),
                    rule: "visit".into(),
                    points: 5.0,
                })
                .collect();
            record
        })
        .collect();
    let now = t0 + TimeDelta::days(45);
    let started = Instant::now();
    let mut total = 0.0;
    for record in &records {
        total += scoring.engagement(&record.scored, now);
    }
    let sweep = started.elapsed();
    anyhow::ensure!(total > 0.0);

    let people: Vec<Person> = (0..50)
        .map(|i| Person {
            id: PersonId::new(format!("R{i}")),
            email: format!("r{i}@x.example"),
            name: format!("R{i}"),
            manager: None,
            time_zone: None,
            role: Role::Rep,
            active: i % 10 != 0,
            capacity: Some(1_000_000),
        })
        .collect();
    let routing = RoutingConfig {
        account_owner: true,
        fallback: Some(PersonId::new("queue")),
        rules: vec![
            RouteRule {
                name: "emea".into(),
                when: Match { country: vec!["DE".into()], ..Match::default() },
                pool: people[..25].iter().map(|p| p.id.clone()).collect(),
                weights: BTreeMap::new(),
            },
            RouteRule {
                name: "rest".into(),
                when: Match::default(),
                pool: people[25..].iter().map(|p| p.id.clone()).collect(),
                weights: BTreeMap::new(),
            },
        ],
    };
    let mut chart = OrgChart::new(people);
    let mut lead = LeadRecord::new(Lead::new("L"), t0);
    let started = Instant::now();
    for i in 0..args.routes {
        lead.lead.country = Some(if i % 2 == 0 { "DE" } else { "US" }.into());
        let route = routing.route(&lead, &chart).ok_or_else(|| anyhow::anyhow!("unrouted"))?;
        if let Some((rule, turn)) = route.turn {
            chart.turns.insert(rule, turn);
        }
        *chart.load.entry(route.owner).or_default() += 1;
    }
    let routing_time = started.elapsed();
    println!(
        "| decayed engagement of {} leads ({} scored activities each), in memory | {:.0} ms ({:.1} M leads/s) |",
        args.leads,
        args.activities,
        sweep.as_secs_f64() * 1e3,
        args.leads as f64 / sweep.as_secs_f64() / 1e6
    );
    println!(
        "| routing decisions (2 rules, 50 reps, 1 in 10 inactive, load and turns kept) | {:.0} decisions/s ({} in {:.2} s) |",
        args.routes as f64 / routing_time.as_secs_f64(),
        args.routes,
        routing_time.as_secs_f64()
    );
    println!("| peak RSS of the run | {:.0} MiB |", crate::peak_rss_mib());
    Ok(())
}
