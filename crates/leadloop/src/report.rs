//! `leadloop report funnel`: what a CRM cannot say — per stage, how many leads are there now,
//! how many came in and went out over a period, how many moved on down the funnel, and how
//! long they stayed. Computed from the history of each lead in the store (a lead deleted in
//! the CRM leaves the report with its record, though its history is kept).
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use leadloop_core::{EventKind, Stage, Timestamp};
use leadloop_store::{Store, StoreError};
use serde_json::{Value, json};

use crate::cli::load_reporting;
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
    Ok(json!({ "since": since, "until": now, "stages": stages }))
}

pub fn main(config_path: &Path, state_dir: Option<PathBuf>, since: Duration, json_out: bool) -> u8 {
    let config = match load_reporting(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let store: Arc<dyn Store> = crate::runtime::open_store(&config, state_dir).await?;
        let now = chrono::Utc::now();
        let since = now - chrono::TimeDelta::from_std(since).unwrap_or(chrono::TimeDelta::days(30));
        funnel(store.as_ref(), since, now).await
    });
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("{error}");
            return exit::STORE;
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return exit::OK;
    }
    println!(
        "funnel from {} to {}",
        report["since"].as_str().unwrap_or(""),
        report["until"].as_str().unwrap_or("")
    );
    let header = ["STAGE", "NOW", "IN", "OUT", "ONWARD", "RATE", "MEDIAN(h)"];
    println!(
        "{:<20} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10}",
        header[0], header[1], header[2], header[3], header[4], header[5], header[6]
    );
    for stage in report["stages"].as_array().into_iter().flatten() {
        let rate = stage["conversion_rate"].as_f64().map_or("-".to_owned(), |r| format!("{:.0}%", r * 100.0));
        let median = stage["median_hours_in_stage"].as_f64().map_or("-".to_owned(), |h| format!("{h:.1}"));
        println!(
            "{:<20} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10}",
            stage["label"].as_str().unwrap_or(""),
            stage["inventory"],
            stage["entered"],
            stage["left"],
            stage["converted"],
            rate,
            median
        );
    }
    exit::OK
}
