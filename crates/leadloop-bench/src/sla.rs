//! SLA tick latency with many open hand-offs: each lead has a running ladder and a timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use leadloop::runtime::{Parts, Runtime, RuntimeOptions, open_store};
use leadloop_core::VirtualClock;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Open hand-offs.
    #[arg(long, default_value_t = 1_000_000)]
    handoffs: u64,
    /// Ticks measured per case.
    #[arg(long, default_value_t = 200)]
    ticks: usize,
    /// The store's page cache, in MiB (`store.cache_mb`).
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let t0: leadloop_core::Timestamp = "2026-03-02T14:00:00Z".parse()?;
    let config = crate::config(&format!("[store]\ncache_mb = {}\n", args.cache_mb))?;
    let load_started = Instant::now();
    {
        let store = open_store(&config, Some(dir.path().to_path_buf())).await?;
        // Hand-offs started over the last 24 hours; the reminder is due 24 h after each.
        leadloop_tests::handoffs::write_handoffs(store.as_ref(), t0, args.handoffs, 0).await?;
    }
    let load_secs = load_started.elapsed().as_secs_f64();

    // Restart: the daemon's runtime (open the store, load the org chart) with its default rules.
    let reopen_started = Instant::now();
    let clock = Arc::new(VirtualClock::new(t0));
    let options =
        RuntimeOptions::new(clock.clone()).state_dir(Some(dir.path().to_path_buf())).parts(Parts::ENGINE);
    let runtime = Runtime::build(&config, options).await?;
    let (store, engine) = (Arc::clone(&runtime.store), runtime.engine.clone());
    let first = engine.tick().await?;
    anyhow::ensure!(first.fired == 0, "nothing is due at t0");
    let reopen = reopen_started.elapsed();

    let mut idle = Vec::with_capacity(args.ticks);
    for _ in 0..args.ticks {
        let started = Instant::now();
        let report = engine.tick().await?;
        idle.push(started.elapsed());
        anyhow::ensure!(report.fired == 0);
    }
    let mut busy = Vec::with_capacity(args.ticks);
    for _ in 0..args.ticks {
        // Move the clock to the instant by which exactly 100 timers are due.
        let due = store.due_timers(t0 + TimeDelta::days(30), 100).await?;
        let Some(last) = due.last() else { break };
        clock.set(last.due);
        let started = Instant::now();
        let report = engine.tick().await?;
        busy.push(started.elapsed());
        anyhow::ensure!(report.fired >= 100, "expected 100 due, fired {}", report.fired);
    }
    idle.sort();
    busy.sort();
    println!(
        "| load {} open hand-offs (lead + timer, 5,000 per batch) | {:.1} s |",
        args.handoffs, load_secs
    );
    println!(
        "| restart with {} timers: open store, load people, first tick | {} |",
        args.handoffs,
        ms(reopen)
    );
    println!(
        "| tick with {} open hand-offs, none due ({} ticks) | p50 {}, p99 {} |",
        args.handoffs,
        args.ticks,
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99))
    );
    println!(
        "| tick with {} open hand-offs, 100 due: 100 reminders queued durably ({} ticks) | p50 {}, p99 {} |",
        args.handoffs,
        busy.len(),
        ms(percentile(&busy, 0.5)),
        ms(percentile(&busy, 0.99))
    );
    println!(
        "| peak RSS of the whole run (store.cache_mb = {}) | {:.0} MiB |",
        args.cache_mb,
        crate::peak_rss_mib()
    );
    Ok(())
}
