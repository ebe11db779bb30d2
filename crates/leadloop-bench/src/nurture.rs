//! A nurture step due for many enrolled leads at once (leads in New York, Berlin and São Paulo,
//! all inside their sending hours): the time for the engine to compute and
//! queue every send (ticks of `TICK_LIMIT` timers, each one durable batch), and peak RSS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use leadloop::runtime::{Parts, Runtime, RuntimeOptions, engine_rules, open_store};
use leadloop_core::nurture::Enrolment;
use leadloop_core::{Lead, LeadRecord, Timer, TimerKind, VirtualClock};
use leadloop_store::Batch;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Enrolled leads, all with their first step due at the same instant.
    #[arg(long, default_value_t = 1_000_000)]
    leads: u64,
    /// The store's page cache, in MiB (`store.cache_mb`).
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (config, t0, due_at) = setup(args.cache_mb)?;
    // The daemon's rules for this config, as the runtime below runs them.
    let (rules, _) = engine_rules(&config).map_err(|e| anyhow::anyhow!(e))?;

    // The pure decision alone, in memory: what a tick costs before the store.
    let sample: Vec<LeadRecord> = (0..args.leads.min(100_000)).map(|i| enrolled(i, t0, due_at)).collect();
    let timer = Timer {
        key: leadloop_core::nurture::timer_key("x"),
        due: due_at,
        lead_id: None,
        kind: TimerKind::NurtureStep { track: "long-term".into(), step: 0 },
    };
    let chart = leadloop_core::OrgChart::default();
    let pure_started = Instant::now();
    let mut effects = 0;
    for record in &sample {
        effects += leadloop_core::policy::Policy::on_timer(&rules, &timer, Some(record), &chart, due_at)
            .effects
            .len();
    }
    let pure = pure_started.elapsed();
    anyhow::ensure!(effects == sample.len(), "every lead gets its step");
    drop(sample);

    let dir = tempfile::tempdir()?;
    let store = open_store(&config, Some(dir.path().to_path_buf())).await?;
    let load_started = Instant::now();
    let mut n = 0;
    while n < args.leads {
        let mut batch = Batch::new();
        for i in n..(n + 5_000).min(args.leads) {
            let record = enrolled(i, t0, due_at);
            let id = record.lead.id.clone();
            batch.put_lead(record).set_timer(Timer {
                key: leadloop_core::nurture::timer_key(id.as_str()),
                due: due_at,
                lead_id: Some(id),
                kind: TimerKind::NurtureStep { track: "long-term".into(), step: 0 },
            });
        }
        n += 5_000;
        store.commit(batch).await?;
    }
    let load = load_started.elapsed();

    let clock = Arc::new(VirtualClock::new(due_at));
    let options = RuntimeOptions::new(clock.clone())
        .state_dir(Some(dir.path().to_path_buf()))
        .store(Arc::clone(&store))
        .parts(Parts::ENGINE);
    let engine = Runtime::build(&config, options).await?.engine;
    let started = Instant::now();
    let mut ticks: Vec<Duration> = Vec::new();
    let mut fired = 0usize;
    let mut queued = 0usize;
    loop {
        let tick_started = Instant::now();
        let report = engine.tick().await?;
        ticks.push(tick_started.elapsed());
        fired += report.fired;
        queued += report.enqueued.len();
        if !report.more {
            break;
        }
    }
    let total = started.elapsed();
    // Every lead got its step queued (its email and the history of it), nothing twice.
    anyhow::ensure!(fired as u64 == args.leads, "fired {fired} of {}", args.leads);
    anyhow::ensure!(queued as u64 == args.leads, "queued {queued} of {}", args.leads);
    let (pending, _) = store.outbox_pending(leadloop_core::Channel::Email).await?;
    anyhow::ensure!(pending == args.leads, "outbox holds {pending}");
    let next = store.next_timer_due().await?;
    anyhow::ensure!(
        next.is_some_and(|d| d > due_at + TimeDelta::days(30)),
        "the next step is planned two months on, got {next:?}"
    );
    ticks.sort();
    println!(
        "| load {} enrolled leads (lead + timer, 5,000 per batch) | {:.1} s |",
        args.leads,
        load.as_secs_f64()
    );
    println!(
        "| one step due for all {} leads: compute and queue every send durably ({} ticks of up to {}) | {:.1} s ({:.0} sends/s) |",
        args.leads,
        ticks.len(),
        leadloop_engine::TICK_LIMIT,
        total.as_secs_f64(),
        args.leads as f64 / total.as_secs_f64()
    );
    println!(
        "| the decision alone, in memory ({} leads, no store) | {:.2} s ({:.0} decisions/s) |",
        args.leads.min(100_000),
        pure.as_secs_f64(),
        args.leads.min(100_000) as f64 / pure.as_secs_f64()
    );
    println!(
        "| one such tick ({} timers) | p50 {}, p99 {} |",
        leadloop_engine::TICK_LIMIT,
        ms(percentile(&ticks, 0.5)),
        ms(percentile(&ticks, 0.99))
    );
    println!(
        "| peak RSS of the whole run (store.cache_mb = {}) | {:.0} MiB |",
        args.cache_mb,
        crate::peak_rss_mib()
    );
    Ok(())
}

/// Lead `i`, enrolled at `t0` with its first step planned at `due_at`.
/// The benchmark's config (one two-step track), its start and the instant the first step is due.
pub(crate) fn setup(
    cache_mb: u64,
) -> anyhow::Result<(leadloop::config::Config, leadloop_core::Timestamp, leadloop_core::Timestamp)> {
    let t0: leadloop_core::Timestamp = "2026-03-02T14:00:00Z".parse()?;
    // Nurture mail needs [links] (every email carries a signed unsubscribe link); the key file
    // outlives this function, as the runtime reads it when it is built.
    let key = std::env::temp_dir().join("leadloop-bench-links-key");
    std::fs::write(&key, "a benchmark key that is at least 32 bytes long")?;
    let config = crate::config(&format!(
        r#"
[store]
cache_mb = {}

[links]
public_listen = "127.0.0.1:9478"
public_url = "https://leads.example.com"
signing_key_file = "{}"

[nurture]
frequency_cap = {{ max = 2, per = "7days" }}
quiet_hours = {{ start = "20:00", end = "08:00", weekends = true }}

[[nurture.tracks]]
name = "long-term"
[[nurture.tracks.steps]]
name = "1 month"
after = "1mo"
from = "enrolment"
template = "nurture_example"
links = {{ guide = "https://www.example.com/guide" }}
[[nurture.tracks.steps]]
name = "3 months"
after = "3mo"
from = "enrolment"
template = "nurture_example"
"#,
        cache_mb,
        key.display()
    ))?;
    let due_at: leadloop_core::Timestamp = "2026-04-02T14:00:00Z".parse()?;
    Ok((config, t0, due_at))
}

pub(crate) fn enrolled(i: u64, t0: leadloop_core::Timestamp, due_at: leadloop_core::Timestamp) -> LeadRecord {
    let mut lead = Lead::new(format!("00Q{i:012}"));
    lead.email = Some(format!("lead{i}@acme{}.example", i % 1000));
    lead.first_name = Some("Ana".into());
    lead.company = Some(format!("Acme {}", i % 1000));
    lead.time_zone =
        Some(["America/New_York", "Europe/Berlin", "America/Sao_Paulo"][(i % 3) as usize].into());
    lead.interests = vec!["security".into()];
    let mut record = LeadRecord::new(lead, t0);
    record.stage = leadloop_core::Stage::Engaged;
    record.nurture.rounds.insert("long-term".into(), 1);
    record.nurture.tracks.push(Enrolment {
        track: "long-term".into(),
        round: 1,
        enrolled_at: t0,
        next_step: 0,
        anchor: t0,
        due: due_at,
        held: false,
    });
    record
}
