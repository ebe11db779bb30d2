//! `leadloop-bench`: measures leadloop and prints Markdown rows for BENCHMARKS.md.
//!
//! Usage: cargo run --release -p leadloop-bench -- store [--leads N] [--timers N] [--batch N]
//!        cargo run --release -p leadloop-bench -- smtp [--messages N]
//!        cargo run --release -p leadloop-bench -- sla [--handoffs N]
//!        cargo run --release -p leadloop-bench -- lifecycle [--leads N] [--routes N]
//!        cargo run --release -p leadloop-bench -- nurture [--leads N] [--cache-mb N]
//!        cargo run --release -p leadloop-bench -- sync [--leads N] [--idle-polls N]
//!        cargo run --release -p leadloop-bench -- report [--only NAME]…   (all of them, into BENCHMARKS.md)
//!        cargo run --release -p leadloop-bench -- restart [--timers N] [--due N] [--cache-mb N]
//!        cargo run --release -p leadloop-bench -- codec [--runs N]
//!
//! `store`:
//! Figures: batched lead writes per second (each batch durable before the next), concurrent
//! single-lead commits per second (group commit), the time to load N timers, due-timer
//! lookups over N timers with none due and with 100 due (p50/p99), and the process's peak RSS.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use clap::Parser;
use leadloop_core::{Lead, LeadRecord, Timer, TimerKey, TimerKind, Timestamp};
use leadloop_store::{Batch, SledConfig, SledStore, Store};

/// The allocator the `leadloop` binary uses, so figures match the daemon.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod codec;
mod lifecycle;
mod nurture;
mod report;
mod restart;
mod sla;
mod smtp;
mod speed;
mod sync;

#[derive(Debug, Parser)]
enum Bench {
    /// The store: batched writes, group commit, the timer index.
    Store(Args),
    /// The email relay against a real SMTP server on loopback (STARTTLS, AUTH, pooling).
    Smtp(smtp::Args),
    /// SLA ticks with many open hand-offs.
    Sla(sla::Args),
    /// Decayed scores of many leads, and routing decisions.
    Lifecycle(lifecycle::Args),
    /// One nurture step due for many enrolled leads at once.
    Nurture(nurture::Args),
    /// The initial Salesforce sync of many leads from the emulator, then idle polls.
    Sync(sync::Args),
    /// Stored-value encodings compared per record type (in memory).
    Codec(codec::Args),
    /// Every benchmark at full size, written into BENCHMARKS.md.
    Report(report::Args),
    /// A restart with many pending timers: reopen → first due email queued and sent.
    Restart(restart::Args),
    /// Speed to lead: a lead created in the Salesforce emulator to the rep's alert accepted by
    /// the SMTP peer, with change events and with polling only.
    Speed(speed::Args),
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Leads written in the batched-write run.
    #[arg(long, default_value_t = 200_000)]
    leads: u64,
    /// Timers in the due-timer index.
    #[arg(long, default_value_t = 1_000_000)]
    timers: u64,
    /// Records per batch.
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
    /// Lookups measured per case.
    #[arg(long, default_value_t = 2_000)]
    lookups: usize,
}

fn t0() -> Timestamp {
    chrono::DateTime::from_timestamp(1_772_460_000, 0).unwrap_or_default()
}

fn lead(n: u64) -> LeadRecord {
    let mut lead = Lead::new(format!("00Q{n:012}"));
    lead.email = Some(format!("lead{n}@acme{}.example", n % 1000));
    lead.first_name = Some("Ana".into());
    lead.last_name = Some("Lima".into());
    lead.company = Some(format!("Acme {}", n % 1000));
    lead.title = Some("VP Engineering".into());
    lead.status = Some("Open - Not Contacted".into());
    LeadRecord::new(lead, t0())
}

/// Peak resident set size of this process, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// A config as `leadloop run` reads it, from TOML text: every benchmark that runs the engine
/// builds it with `leadloop::runtime`, the daemon's own composition root.
fn config(text: &str) -> anyhow::Result<leadloop::config::Config> {
    leadloop::config::load_str(std::path::Path::new("(benchmark config)"), text)
        .map(|(config, _)| config)
        .map_err(|errors| anyhow::anyhow!("the benchmark's config is invalid:\n{errors}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    match Bench::parse() {
        Bench::Store(args) => store(args).await,
        Bench::Smtp(args) => smtp::run(args).await,
        Bench::Sla(args) => sla::run(args).await,
        Bench::Lifecycle(args) => lifecycle::run(args),
        Bench::Nurture(args) => nurture::run(args).await,
        Bench::Sync(args) => sync::run(args).await,
        Bench::Codec(args) => codec::run(args).await,
        Bench::Report(args) => report::run(args),
        Bench::Restart(args) => restart::run(args).await,
        Bench::Speed(args) => speed::run(args).await,
    }
}

async fn store(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;

    // 1. Batched lead writes, each batch durable before the next.
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path().join("leads")))?;
    let started = Instant::now();
    let mut n = 0;
    while n < args.leads {
        let mut batch = Batch::new();
        for i in n..(n + args.batch).min(args.leads) {
            batch.put_lead(lead(i));
        }
        n += args.batch;
        store.commit(batch).await?;
    }
    let batched = args.leads as f64 / started.elapsed().as_secs_f64();

    // 2. Concurrent single-lead commits: 8 writers, group commit shares the flushes.
    let singles = 20_000u64;
    let flushes_before = store.stats().flushes;
    let started = Instant::now();
    let tasks: Vec<_> = (0..8u64)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..singles / 8 {
                    let mut batch = Batch::new();
                    batch.put_lead(lead(10_000_000 + w * 1_000_000 + i));
                    store.commit(batch).await?;
                }
                Ok::<(), leadloop_store::StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let single_rate = singles as f64 / started.elapsed().as_secs_f64();
    let flushes = store.stats().flushes - flushes_before;
    drop(store);

    // 3. The timer index: load N timers spread over 30 days, then time lookups.
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path().join("timers")))?;
    let spread = 30 * 24 * 3600 * 1000i64;
    let started = Instant::now();
    let mut n = 0;
    while n < args.timers {
        let mut batch = Batch::new();
        for i in n..(n + 10_000).min(args.timers) {
            // Deterministic scatter over the window, so keys do not arrive in due order.
            let offset = (i.wrapping_mul(2_654_435_761) % spread as u64) as i64 + 3_600_000;
            batch.set_timer(Timer {
                key: TimerKey::new(format!("sla/00Q{i:012}/1/2")),
                due: t0() + TimeDelta::milliseconds(offset),
                lead_id: None,
                kind: TimerKind::SlaStep { handoff: 1, step: 2 },
            });
        }
        n += 10_000;
        store.commit(batch).await?;
    }
    let load_secs = started.elapsed().as_secs_f64();

    let mut none_due = Vec::with_capacity(args.lookups);
    for _ in 0..args.lookups {
        let started = Instant::now();
        let due = store.due_timers(t0(), 512).await?;
        none_due.push(started.elapsed());
        anyhow::ensure!(due.is_empty(), "no timer should be due at t0");
    }
    // The instant by which exactly 100 timers are due.
    let hundredth =
        store.due_timers(t0() + TimeDelta::days(31), 100).await?.last().map(|t| t.due).unwrap_or(t0());
    let mut hundred_due = Vec::with_capacity(args.lookups);
    for _ in 0..args.lookups {
        let started = Instant::now();
        let due = store.due_timers(hundredth, 512).await?;
        hundred_due.push(started.elapsed());
        anyhow::ensure!(due.len() == 100, "expected 100 due, found {}", due.len());
    }
    none_due.sort();
    hundred_due.sort();
    let disk = store.stats().size_on_disk;

    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| batched lead writes ({} leads, {} per durable batch) | {:.0} leads/s |",
        args.leads, args.batch, batched
    );
    println!(
        "| concurrent single-lead commits (8 writers, {singles} commits) | {single_rate:.0} commits/s, {flushes} flushes |"
    );
    println!(
        "| load {} timers (10,000 per batch) | {:.1} s ({:.0} timers/s) |",
        args.timers,
        load_secs,
        args.timers as f64 / load_secs
    );
    println!(
        "| due-timer lookup over {} timers, none due | p50 {}, p99 {} |",
        args.timers,
        micros(percentile(&none_due, 0.5)),
        micros(percentile(&none_due, 0.99))
    );
    println!(
        "| due-timer lookup over {} timers, 100 due | p50 {}, p99 {} |",
        args.timers,
        micros(percentile(&hundred_due, 0.5)),
        micros(percentile(&hundred_due, 0.99))
    );
    println!("| store size on disk with {} timers | {:.0} MiB |", args.timers, disk as f64 / 1_048_576.0);
    println!("| peak RSS of the whole run (sled cache 64 MiB) | {:.0} MiB |", peak_rss_mib());
    Ok(())
}
