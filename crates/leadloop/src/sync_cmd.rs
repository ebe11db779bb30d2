//! `leadloop sync --once`: one sync pass against the configured CRM, then one round of
//! write-back, with the counts an operator wants (fetched, stored, quarantined, deleted, API
//! calls used and budget left). The daemon runs the same pass every `crm.poll_interval`.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use leadloop_core::SystemClock;
use leadloop_engine::Engine;
use leadloop_engine::crm::{CrmRelay, CrmSync, SyncReport};
use leadloop_store::{SledStore, Store};

use crate::cli::{Format, load_reporting, runtime};
use crate::exit;

pub fn main(config_path: &Path, state_dir: Option<PathBuf>, once: bool, format: Format) -> u8 {
    if !once {
        eprintln!("leadloop sync: pass --once (the daemon, `leadloop run`, syncs continuously)");
        return exit::USAGE;
    }
    let config = match load_reporting(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Some(crm_config) = config.crm.clone() else {
        eprintln!("{}: no [crm] table: there is no CRM to sync", config_path.display());
        return exit::CONFIG;
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let store: Arc<dyn Store> = match SledStore::open(&config.sled(state_dir)) {
            Ok(store) => store,
            Err(error) => {
                eprintln!("cannot open the store: {error}");
                return exit::STORE;
            }
        };
        if let Err(error) = crate::daemon::write_people(store.as_ref(), &config).await {
            eprintln!("cannot write the configured people to the store: {error}");
            return exit::STORE;
        }
        let clock: Arc<dyn leadloop_core::Clock> = Arc::new(SystemClock);
        let rules = match crate::daemon::engine_rules(&config) {
            Ok((rules, _)) => rules,
            Err(error) => {
                eprintln!("{}: links: {error}", config_path.display());
                return exit::CONFIG;
            }
        };
        let engine = Engine::new(store.clone(), clock.clone(), Arc::new(rules));
        let rule_names: Vec<String> = config.routing.rules.iter().map(|r| r.name.clone()).collect();
        if let Err(error) = engine.load_turns(&rule_names).await {
            eprintln!("cannot load routing turns: {error}");
            return exit::STORE;
        }
        if let Err(error) = engine.load_people().await {
            eprintln!("cannot load people: {error}");
            return exit::STORE;
        }
        let cx = leadloop_plugin::BuildContext { clock, shutdown: tokio_util::sync::CancellationToken::new() };
        let crm = match crm_config.build(&cx) {
            Ok(crm) => crm,
            Err(error) => {
                eprintln!("{}: {error}", config_path.display());
                return exit::CONFIG;
            }
        };
        let started = Instant::now();
        let sync = CrmSync::new(engine.clone(), crm.clone(), &crm_config.objects);
        let report = match sync.pass().await {
            Ok(report) => report,
            Err(error) => {
                eprintln!("sync stopped: {error}");
                return exit::STORE;
            }
        };
        let relay = CrmRelay::new(&engine, crm.clone(), crm_config.relay(&config.outbox));
        let written = match relay.run_once().await {
            Ok(written) => written,
            Err(error) => {
                eprintln!("write-back stopped: {error}");
                return exit::STORE;
            }
        };
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
                println!("{line}");
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
    println!("synced from {name} in {:.1} s", elapsed.as_secs_f64());
    println!("  fetched       {}", r.fetched);
    println!("  stored        {}", r.stored);
    println!("  unchanged     {}", r.unchanged);
    println!("  quarantined   {}", r.quarantined);
    println!("  deleted       {}", r.deleted);
    println!("  effects       {} queued", r.enqueued);
    println!(
        "  written back  {} ({} to retry, {} dead-lettered)",
        written.written, written.retried, written.dead_lettered
    );
    println!("  api calls     {}", usage.calls);
    match (usage.used, usage.max) {
        (Some(used), Some(max)) => println!(
            "  budget        {used} of {max} daily calls used; {} left for bulk sync",
            usage.bulk_left.unwrap_or(0)
        ),
        _ => println!("  budget        not reported by the CRM"),
    }
    for (object, error) in &report.errors {
        println!("  error         {object}: {error}");
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
    let config = match load_reporting(&read.config.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let rows = match crate::sla_cmd::fetch(
        &config,
        read.state_dir.clone(),
        read.admin_listen,
        &crate::sla_cmd::Query::Quarantine,
    ) {
        Ok(value) => value.as_array().cloned().unwrap_or_default(),
        Err(code) => return code,
    };
    match read.format {
        Format::Json => {
            for row in &rows {
                println!("{row}");
            }
        }
        Format::Human => {
            if rows.is_empty() {
                println!("nothing in quarantine");
            }
            for row in &rows {
                println!(
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
