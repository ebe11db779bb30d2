//! `leadloop report funnel`: what a CRM cannot say — per stage, how many leads are there now,
//! how many came in and went out over a period, how many moved on down the funnel, and how
//! long they stayed. Computed from the history of each lead in the store (a lead deleted in
//! the CRM leaves the report with its record, though its history is kept).
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::Duration;

use leadloop_core::{EventKind, Stage, Timestamp};
use leadloop_store::{Store, StoreError};
use serde_json::{Value, json};

use crate::cli::load_for_reading;
use crate::exit;

/// The funnel stages in order; a move to a later one is a conversion.
const FUNNEL: [Stage; 7] = [
    Stage::JustAName,
    Stage::Engaged,
    Stage::Prospect,
    Stage::MarketingQualified,
    Stage::SalesQualified,
    Stage::Opportunity,
    Stage::Customer,
];

fn rank(stage: Stage) -> Option<usize> {
    FUNNEL.iter().position(|s| *s == stage)
}

#[derive(Debug, Default)]
struct StageFigures {
    inventory: u64,
    entered: u64,
    left: u64,
    converted: u64,
    durations: Vec<i64>,
}

/// The funnel since `since`, as JSON: one object per stage.
pub async fn funnel(store: &dyn Store, since: Timestamp, now: Timestamp) -> Result<Value, StoreError> {
    let mut figures: BTreeMap<Stage, StageFigures> =
        Stage::ALL.into_iter().map(|s| (s, StageFigures::default())).collect();
    // Speed to lead: seconds from hand-off to first touch, per way of touching.
    let mut touches: BTreeMap<&'static str, Vec<i64>> = BTreeMap::new();
    let mut pages = leadloop_store::LeadPages::new(store);
    while let Some(page) = pages.next().await? {
        for record in &page {
            if let Some(f) = figures.get_mut(&record.stage) {
                f.inventory += 1;
            }
            // Walk the lead's stage moves: every lead starts in Just a Name when created.
            let mut current = (Stage::JustAName, None::<Timestamp>);
            for (_, event) in store.history(&record.lead.id).await? {
                match event.kind {
                    EventKind::Created => {
                        if event.at >= since
                            && let Some(f) = figures.get_mut(&Stage::JustAName)
                        {
                            f.entered += 1;
                        }
                        current = (Stage::JustAName, Some(event.at));
                    }
                    EventKind::StageChanged { from, to, .. } if event.at >= since => {
                        if let Some(f) = figures.get_mut(&from) {
                            f.left += 1;
                            if let (Some(a), Some(b)) = (rank(from), rank(to))
                                && b > a
                            {
                                f.converted += 1;
                            }
                            if let Some(entered) = current.1.filter(|_| current.0 == from) {
                                f.durations.push((event.at - entered).num_seconds());
                            }
                        }
                        if let Some(f) = figures.get_mut(&to) {
                            f.entered += 1;
                        }
                        current = (to, Some(event.at));
                    }
                    EventKind::StageChanged { to, .. } => current = (to, Some(event.at)),
                    EventKind::HandoffEnded { outcome, open_seconds, .. } if event.at >= since => {
                        if let Some(by) = outcome.first_touch_by() {
                            touches.entry(by).or_default().push(open_seconds);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let stages: Vec<Value> = Stage::ALL
        .into_iter()
        .map(|stage| {
            let f = figures.remove(&stage).unwrap_or_default();
            let mut durations = f.durations;
            durations.sort_unstable();
            let median = durations.get(durations.len() / 2).map(|s| *s as f64 / 3600.0);
            json!({
                "stage": stage.as_str(),
                "label": stage.label(),
                "inventory": f.inventory,
                "entered": f.entered,
                "left": f.left,
                "converted": f.converted,
                "conversion_rate": if f.left == 0 { Value::Null } else { json!((f.converted as f64 / f.left as f64 * 1000.0).round() / 1000.0) },
                "median_hours_in_stage": median.map(|h| (h * 10.0).round() / 10.0),
            })
        })
        .collect();
    Ok(json!({ "since": since, "until": now, "stages": stages, "speed_to_lead": speed_to_lead(touches) }))
}

/// Hand-offs first touched in the period and the median minutes to the touch, in all and per
/// way of touching (`status`, `activity`: a logged call or email the policy counts,
/// `email_link`).
fn speed_to_lead(touches: BTreeMap<&'static str, Vec<i64>>) -> Value {
    let figures = |seconds: &mut Vec<i64>| {
        seconds.sort_unstable();
        let median = seconds.get(seconds.len() / 2).map(|s| (*s as f64 / 60.0 * 10.0).round() / 10.0);
        json!({ "touched": seconds.len(), "median_minutes": median })
    };
    let mut all: Vec<i64> = touches.values().flatten().copied().collect();
    let mut by = serde_json::Map::new();
    for way in ["status", "activity", "email_link"] {
        let mut seconds = touches.get(way).cloned().unwrap_or_default();
        by.insert(way.to_owned(), figures(&mut seconds));
    }
    let mut out = figures(&mut all);
    out["by"] = Value::Object(by);
    out
}

/// The funnel over the `since` before `now`.
pub async fn funnel_since(store: &dyn Store, since: Duration, now: Timestamp) -> Result<Value, StoreError> {
    let from = now - chrono::TimeDelta::from_std(since).unwrap_or(chrono::TimeDelta::days(30));
    funnel(store, from, now).await
}

pub fn main(source: &crate::sla_cmd::Source<'_>, since: Duration, json_out: bool) -> u8 {
    let config = match load_for_reading(source.config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let report = match crate::sla_cmd::fetch(&config, source, &crate::sla_cmd::Query::Funnel(since)) {
        Ok(report) => report,
        Err(code) => return code,
    };
    if json_out {
        crate::outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return exit::OK;
    }
    crate::outln!(
        "funnel from {} to {}",
        report["since"].as_str().unwrap_or(""),
        report["until"].as_str().unwrap_or("")
    );
    let header = ["STAGE", "NOW", "IN", "OUT", "ONWARD", "RATE", "MEDIAN(h)"];
    crate::outln!(
        "{:<20} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10}",
        header[0],
        header[1],
        header[2],
        header[3],
        header[4],
        header[5],
        header[6]
    );
    for stage in report["stages"].as_array().into_iter().flatten() {
        let rate = stage["conversion_rate"].as_f64().map_or("-".to_owned(), |r| format!("{:.0}%", r * 100.0));
        let median = stage["median_hours_in_stage"].as_f64().map_or("-".to_owned(), |h| format!("{h:.1}"));
        // Counts as numbers: a JSON value ignores the column width.
        let count = |key: &str| stage[key].as_u64().unwrap_or(0);
        crate::outln!(
            "{:<20} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10}",
            stage["label"].as_str().unwrap_or(""),
            count("inventory"),
            count("entered"),
            count("left"),
            count("converted"),
            rate,
            median
        );
    }
    let speed = &report["speed_to_lead"];
    let minutes = |v: &Value| v["median_minutes"].as_f64().map_or("-".to_owned(), |m| format!("{m:.1} min"));
    crate::outln!();
    crate::outln!(
        "speed to lead: {} hand-offs first touched, median {}",
        speed["touched"].as_u64().unwrap_or(0),
        minutes(speed)
    );
    for (way, label) in [
        ("status", "by a status change"),
        ("activity", "by a logged activity"),
        ("email_link", "from an email link"),
    ] {
        let figures = &speed["by"][way];
        crate::outln!(
            "  {label:<22} {:>6}  median {}",
            figures["touched"].as_u64().unwrap_or(0),
            minutes(figures)
        );
    }
    exit::OK
}
