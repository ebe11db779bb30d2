//! `leadloop sync --once`: one sync pass against the configured CRM, then one round of
//! write-back, with the counts an operator wants (fetched, stored, quarantined, deleted, API
//! calls used and budget left). The daemon runs the same pass every `crm.poll_interval`.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use leadloop_core::SystemClock;
use leadloop_engine::crm::SyncReport;
use leadloop_store::Store;

use crate::cli::{Format, load_reporting, runtime};
use crate::exit;
use crate::runtime::{BuildError, Parts, Runtime, RuntimeOptions};

pub fn main(config_path: &Path, state_dir: Option<PathBuf>, once: bool, format: Format) -> u8 {
    if !once {
        eprintln!("leadloop sync: pass --once (the daemon, `leadloop run`, syncs continuously)");
        return exit::USAGE;
    }
    let config = match load_reporting(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if config.crm.is_none() {
        eprintln!("{}: no [crm] table: there is no CRM to sync", config_path.display());
        return exit::CONFIG;
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let clock: Arc<dyn leadloop_core::Clock> = Arc::new(SystemClock);
        let options = RuntimeOptions::new(clock).state_dir(state_dir).parts(Parts { crm: true, ..Parts::ENGINE });
        let runtime = match Runtime::build(&config, options).await {
            Ok(runtime) => runtime,
            Err(error) => {
                match &error {
                    BuildError::Connector { error, .. } => eprintln!("{}: {error}", config_path.display()),
                    BuildError::Links(_) => eprintln!("{}: {error}", config_path.display()),
                    _ => eprintln!("{error}"),
                }
                return error.exit_code();
            }
        };
        let Some(crm) = runtime.crm else {
            eprintln!("{}: no [crm] table: there is no CRM to sync", config_path.display());
            return exit::CONFIG;
        };
        let started = Instant::now();
        let report = match crm.sync.pass().await {
            Ok(report) => report,
            Err(error) => {
                eprintln!("sync stopped: {error}");
                return exit::STORE;
            }
        };
        let written = match crm.relay.run_once().await {
            Ok(written) => written,
            Err(error) => {
                eprintln!("write-back stopped: {error}");
                return exit::STORE;
            }
        };
        let crm = crm.connector;
        let usage = crm.usage();
        let elapsed = started.elapsed();
        match format {
            Format::Json => {
                let line = serde_json::json!({
                    "crm": crm.name(),
                    "fetched": report.records.fetched,
                    "stored": report.records.stored,
                    "unchanged": report.records.unchanged,
                    "quarantined": report.records.quarantined,
                    "deleted": report.records.deleted,
                    "effects_queued": report.records.enqueued,
                    "pages": report.pages,
                    "written_back": written.written,
                    "write_retries": written.retried,
                    "dead_lettered": written.dead_lettered,
                    "api_calls": usage.calls,
                    "api_used": usage.used,
                    "api_max": usage.max,
                    "budget_left": usage.bulk_left,
                    "seconds": elapsed.as_secs_f64(),
                    "errors": report.errors.iter().map(|(o, e)| serde_json::json!({"object": o, "error": e})).collect::<Vec<_>>(),
                });
                crate::outln!("{line}");
            }
            Format::Human => print_human(crm.name(), &report, &written, &usage, elapsed),
        }
        if report.errors.is_empty() { exit::OK } else { exit::FAILURE }
    })
}

fn print_human(
    name: &str,
    report: &SyncReport,
    written: &leadloop_engine::crm::CrmRelayReport,
    usage: &leadloop_core::connector::ApiUsage,
    elapsed: std::time::Duration,
) {
    let r = &report.records;
    crate::outln!("synced from {name} in {:.1} s", elapsed.as_secs_f64());
    crate::outln!("  fetched       {}", r.fetched);
    crate::outln!("  stored        {}", r.stored);
    crate::outln!("  unchanged     {}", r.unchanged);
    crate::outln!("  quarantined   {}", r.quarantined);
    crate::outln!("  deleted       {}", r.deleted);
    crate::outln!("  effects       {} queued", r.enqueued);
    crate::outln!(
        "  written back  {} ({} to retry, {} dead-lettered)",
        written.written,
        written.retried,
        written.dead_lettered
    );
    crate::outln!("  api calls     {}", usage.calls);
    match (usage.used, usage.max) {
        (Some(used), Some(max)) => crate::outln!(
            "  budget        {used} of {max} daily calls used; {} left for bulk sync",
            usage.bulk_left.unwrap_or(0)
        ),
        _ => crate::outln!("  budget        not reported by the CRM"),
    }
    for (object, error) in &report.errors {
        crate::outln!("  error         {object}: {error}");
    }
}

/// The quarantine, oldest first: `{object, id, reason, at, raw}` per record.
pub async fn quarantined(store: &dyn Store) -> Result<Vec<serde_json::Value>, leadloop_store::StoreError> {
    let mut rows: Vec<serde_json::Value> =
        store.items(leadloop_engine::crm::QUARANTINE).await?.into_iter().map(|(_, v)| v).collect();
    rows.sort_by(|a, b| a["at"].as_str().cmp(&b["at"].as_str()));
    Ok(rows)
}

/// `leadloop quarantine`: what the CRM sync set aside and why; from the store, or from the
/// running daemon's admin listener when it holds the state directory.
pub fn quarantine(read: &crate::cli::ReadArgs) -> u8 {
    let config = match crate::cli::load_for_reading(&read.config.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let rows = match crate::sla_cmd::fetch(&config, &read.source(), &crate::sla_cmd::Query::Quarantine) {
        Ok(value) => value.as_array().cloned().unwrap_or_default(),
        Err(code) => return code,
    };
    match read.format {
        Format::Json => {
            for row in &rows {
                crate::outln!("{row}");
            }
        }
        Format::Human => {
            if rows.is_empty() {
                crate::outln!("nothing in quarantine");
            }
            for row in &rows {
                crate::outln!(
                    "{:<8} {:<18} {}  {}",
                    row["object"].as_str().unwrap_or("?"),
                    row["id"].as_str().unwrap_or("(no id)"),
                    row["at"].as_str().unwrap_or(""),
                    row["reason"].as_str().unwrap_or("")
                );
            }
        }
    }
    exit::OK
}

/// `leadloop crm dead-letters`: the CRM writes refused for good; from the store, or from the
/// running daemon's admin listener when it holds the state directory.
pub fn dead_letters(read: &crate::cli::ReadArgs) -> u8 {
    let config = match crate::cli::load_for_reading(&read.config.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let rows = match crate::sla_cmd::fetch(&config, &read.source(), &crate::sla_cmd::Query::DeadLetters) {
        Ok(value) => value.as_array().cloned().unwrap_or_default(),
        Err(code) => return code,
    };
    match read.format {
        Format::Json => {
            for row in &rows {
                crate::outln!("{row}");
            }
        }
        Format::Human => {
            if rows.is_empty() {
                crate::outln!("no dead letters: every CRM write went through or is still queued");
            }
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            for row in &rows {
                crate::outln!(
                    "{}  lead {}  {}  {} attempts, failed {}",
                    text(&row["key"]),
                    text(&row["lead_id"]),
                    text(&row["write"]),
                    text(&row["attempts"]),
                    text(&row["failed_at"])
                );
                crate::outln!("    fields  {}", text(&row["fields"]));
                crate::outln!("    error   {}", text(&row["error"]));
            }
            if !rows.is_empty() {
                crate::outln!(
                    "fix the cause in the CRM, then `leadloop crm replay KEY` (or --all) puts them back in the queue"
                );
            }
        }
    }
    exit::OK
}

/// Who an operator is, for the history: `--by`, else the login name.
fn operator(by: Option<String>) -> String {
    by.filter(|b| !b.trim().is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .or_else(|| std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown operator".into())
}

/// `leadloop crm replay KEY…|--all`: puts dead letters back in the queue, on the store, or
/// through the running daemon's admin listener (which wakes its CRM relay).
pub fn replay(
    read: &crate::cli::ReadArgs,
    which: leadloop_engine::crm::ReplayWhich,
    by: Option<String>,
) -> u8 {
    let config = match crate::cli::load_for_reading(&read.config.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let query = crate::sla_cmd::Query::Replay { which, by: operator(by) };
    let value = match crate::sla_cmd::fetch(&config, &read.source(), &query) {
        Ok(value) => value,
        Err(code) => return code,
    };
    let report: leadloop_engine::crm::ReplayReport = match serde_json::from_value(value.clone()) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("replay: the answer is not a replay report ({error}): {value}");
            return exit::FAILURE;
        }
    };
    match read.format {
        Format::Json => crate::outln!("{value}"),
        Format::Human => {
            for key in &report.replayed {
                crate::outln!("replayed  {key}");
            }
            for (key, why) in &report.refused {
                crate::outln!("refused   {key}: {why}");
            }
            if report.replayed.is_empty() && report.refused.is_empty() {
                crate::outln!("no dead letters to replay");
            }
        }
    }
    if report.refused.is_empty() { exit::OK } else { exit::FAILURE }
}
