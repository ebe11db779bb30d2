//! `leadloop nurture list` and `leadloop nurture preview TRACK --lead ID`: the configured
//! tracks (with how many leads are in each), and a lead's upcoming sends in its own zone.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use leadloop_core::nurture::NurtureRules;
use leadloop_core::{LeadId, LeadRecord, Timestamp};
use leadloop_store::{Store, StoreError};
use serde_json::{Value, json};

use crate::cli::load_for_reading;
use crate::exit;

/// Leads per track, from a scan of the store.
async fn enrolled(store: &dyn Store) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut counts = BTreeMap::new();
    let mut pages = leadloop_store::LeadPages::new(store);
    while let Some(page) = pages.next().await? {
        for record in &page {
            for enrolment in &record.nurture.tracks {
                *counts.entry(enrolment.track.clone()).or_default() += 1;
            }
        }
    }
    Ok(counts)
}

/// The tracks as JSON, with `enrolled` counts when the store could be read.
pub fn list_json(rules: &NurtureRules, counts: Option<&BTreeMap<String, u64>>) -> Vec<Value> {
    rules
        .describe()
        .into_iter()
        .map(|mut track| {
            let name = track["name"].as_str().unwrap_or("").to_owned();
            track["enrolled"] = match counts {
                Some(counts) => json!(counts.get(&name).copied().unwrap_or(0)),
                None => Value::Null,
            };
            track
        })
        .collect()
}

/// A lead's upcoming sends on `track` as JSON; `None` if the track does not exist.
pub fn preview_json(
    rules: &NurtureRules,
    track: &str,
    record: &LeadRecord,
    now: Timestamp,
    count: usize,
) -> Option<Value> {
    let sends = rules.preview(track, record, now, count)?;
    let tz = rules.lead_zone(record);
    let enrolment = record.nurture.tracks.iter().find(|e| e.track == track);
    Some(json!({
        "track": track,
        "lead_id": record.lead.id,
        "lead": record.lead.display_name(),
        "time_zone": tz.name(),
        "enrolled": enrolment.is_some(),
        "enrolled_at": enrolment.map(|e| e.enrolled_at),
        "round": enrolment.map(|e| e.round),
        "opted_out": record.lead.opted_out || record.nurture.opted_out_at.is_some(),
        "sends": sends
            .iter()
            .map(|s| json!({
                "step": s.step,
                "index": s.index,
                "template": s.template,
                "at": s.at,
                "local": s.at.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string(),
            }))
            .collect::<Vec<_>>(),
    }))
}

async fn open(
    config: &crate::config::Config,
    state_dir: Option<PathBuf>,
) -> Result<Arc<dyn Store>, StoreError> {
    crate::runtime::open_store_for_reading(config, state_dir).await
}

pub fn list(config_path: &Path, state_dir: Option<PathBuf>, json_out: bool) -> u8 {
    let config = match load_for_reading(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let rules = config.nurture_rules(None);
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let counts = runtime.block_on(async {
        match open(&config, state_dir).await {
            Ok(store) => enrolled(store.as_ref()).await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        }
    });
    let counts = match counts {
        Ok(counts) => Some(counts),
        Err(error) => {
            eprintln!("enrolment counts unavailable: {error}");
            None
        }
    };
    let tracks = list_json(&rules, counts.as_ref());
    if json_out {
        crate::outln!("{}", serde_json::to_string_pretty(&tracks).unwrap_or_default());
        return exit::OK;
    }
    if tracks.is_empty() {
        crate::outln!("no nurture tracks configured");
        return exit::OK;
    }
    for track in &tracks {
        let enrolled = track["enrolled"].as_u64().map_or("?".to_owned(), |n| n.to_string());
        crate::outln!(
            "{}  ({} steps, zone {}, catch-up {} within {}, {} enrolled)",
            track["name"].as_str().unwrap_or(""),
            track["steps"].as_array().map_or(0, Vec::len),
            track["time_zone"].as_str().unwrap_or(""),
            track["catch_up"].as_str().unwrap_or(""),
            track["staleness"].as_str().unwrap_or(""),
            enrolled,
        );
        for (i, step) in track["steps"].as_array().into_iter().flatten().enumerate() {
            crate::outln!(
                "  {:>2}. {:<16} {:<36} {}",
                i + 1,
                step["name"].as_str().unwrap_or(""),
                step["schedule"].as_str().unwrap_or(""),
                step["template"].as_str().unwrap_or(""),
            );
        }
        let exits: Vec<&str> =
            track["exit"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        crate::outln!("  exits: {}", exits.join(", "));
    }
    exit::OK
}

pub fn preview(
    config_path: &Path,
    track: &str,
    lead: &str,
    count: usize,
    state_dir: Option<PathBuf>,
    json_out: bool,
) -> u8 {
    let config = match load_for_reading(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let rules = config.nurture_rules(None);
    if !rules.track_names().any(|name| name == track) {
        let known: Vec<&str> = rules.track_names().collect();
        eprintln!(
            "no track `{track}` (known: {})",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        );
        return exit::USAGE;
    }
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let record = runtime.block_on(async {
        let store = open(&config, state_dir).await.map_err(|e| match e {
            e if e.is_locked() => format!(
                "{e}; nurture preview reads the store directly: run it against a copy (leadloop export, then import into another --state-dir)"
            ),
            other => other.to_string(),
        })?;
        store.lead(&LeadId::new(lead)).await.map_err(|e| e.to_string())
    });
    let record = match record {
        Ok(Some(record)) => record,
        Ok(None) => {
            eprintln!("no such lead: {lead}");
            return exit::FAILURE;
        }
        Err(error) => {
            eprintln!("{error}");
            return exit::STORE;
        }
    };
    let Some(value) = preview_json(&rules, track, &record, chrono::Utc::now(), count) else {
        return exit::USAGE;
    };
    if json_out {
        crate::outln!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        return exit::OK;
    }
    let how = if value["enrolled"] == Value::Bool(true) {
        format!("enrolled {} (round {})", value["enrolled_at"].as_str().unwrap_or(""), value["round"])
    } else {
        "not enrolled: as if it enrolled now".to_owned()
    };
    crate::outln!(
        "{} ({}) on track {track}, zone {}, {how}",
        value["lead_id"].as_str().unwrap_or(""),
        value["lead"].as_str().unwrap_or(""),
        value["time_zone"].as_str().unwrap_or(""),
    );
    if value["opted_out"] == Value::Bool(true) {
        crate::outln!("  opted out: nothing will be sent");
        return exit::OK;
    }
    for send in value["sends"].as_array().into_iter().flatten() {
        crate::outln!(
            "  {:>2}. {:<16} {:<24} {}",
            send["index"].as_u64().unwrap_or(0) + 1,
            send["step"].as_str().unwrap_or(""),
            send["local"].as_str().unwrap_or(""),
            send["template"].as_str().unwrap_or(""),
        );
    }
    exit::OK
}
