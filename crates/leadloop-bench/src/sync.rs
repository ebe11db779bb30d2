//! `sync`: the initial sync of N leads from the Salesforce emulator into a sled store through
//! the real connector and engine (default rules), then idle polls. The emulator runs in a child
//! process (this binary with `--serve-emulator`), so the peak RSS printed is leadloop's alone.
//!
//! Figures: API calls for the initial sync (target ⌈N/2000⌉ + 5), records per second (target
//! ≥ 50,000/s), peak RSS (target ≤ 256 MiB), and calls per idle poll, times 288 polls a day at
//! a 5-minute interval (target ≤ 300).

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use leadloop::runtime::{Parts, Runtime, RuntimeOptions};
use leadloop_core::SystemClock;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Leads in the emulated org.
    #[arg(long, default_value_t = 1_000_000)]
    leads: usize,
    /// Idle polls measured after the initial sync.
    #[arg(long, default_value_t = 5)]
    idle_polls: u32,
    /// Store cache, MiB.
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
    /// Internal: serve the emulator (child process).
    #[arg(long, hide = true)]
    serve_emulator: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.serve_emulator {
        return serve(args.leads).await;
    }
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["sync", "--serve-emulator", "--leads", &args.leads.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout from the emulator"))?;
    let seeding = Instant::now();
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let url =
        line.trim().strip_prefix("listening on ").ok_or_else(|| anyhow::anyhow!("emulator said {line:?}"))?;
    let url = url.to_owned();
    println!("emulator seeded {} leads in {:.1} s at {url}", args.leads, seeding.elapsed().as_secs_f64());
    // The load is finished before the first sync starts (by more than the overlap window).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let result = measure(&args, &url).await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn serve(leads: usize) -> anyhow::Result<()> {
    let emu = leadloop_sf_emulator::Emulator::start(leadloop_sf_emulator::Config::default()).await?;
    let spec =
        leadloop_sf_emulator::SeedSpec { seed: 1, managers: 3, reps: 12, accounts: 200, leads, tasks: 0 };
    leadloop_sf_emulator::seed::populate(&emu, &spec);
    println!("listening on {}", emu.url());
    // Served until the parent kills this process.
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn measure(args: &Args, url: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, leadloop_sf_emulator::Config::default().client_secret)?;
    // The daemon's runtime with its default rules and only the CRM part: the sync `leadloop
    // run` would do.
    let config = crate::config(&format!(
        r#"
[store]
cache_mb = {cache_mb}

[crm]
type = "salesforce"

[crm.salesforce]
login_url = "{url}"
auth = "client_credentials"
client_id = "{client}"
client_secret_file = "{secret}"
[crm.salesforce.fields.lead]
Interests__c = "interests"
"#,
        cache_mb = args.cache_mb,
        client = leadloop_sf_emulator::Config::default().consumer_key,
        secret = secret.display(),
    ))?;
    let options = RuntimeOptions::new(Arc::new(SystemClock))
        .state_dir(Some(dir.path().join("state")))
        .parts(Parts { crm: true, ..Parts::ENGINE });
    let runtime = Runtime::build(&config, options).await?;
    let sync = Arc::clone(&runtime.crm.as_ref().context("the config has a [crm]")?.sync);

    let started = Instant::now();
    let report = sync.pass().await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(report.errors.is_empty(), "sync errors: {:?}", report.errors);
    let target_calls = args.leads.div_ceil(2000) + 5;
    println!();
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!("| leads synced | {} | {} |", report.records.fetched, args.leads);
    println!("| API calls, initial sync | {} | ≤ {target_calls} |", report.api_calls);
    println!("| initial sync time | {:.1} s | |", elapsed.as_secs_f64());
    println!(
        "| records per second | {:.0} | ≥ 50,000 |",
        report.records.fetched as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| of which waiting for the CRM / storing | {:.1} s / {:.1} s | |",
        report.pull_seconds, report.ingest_seconds
    );
    println!("| peak RSS (leadloop side) | {:.0} MiB | ≤ 256 MiB |", crate::peak_rss_mib());
    let mut idle_calls = 0;
    for _ in 0..args.idle_polls {
        let report = sync.pass().await?;
        idle_calls += report.api_calls;
    }
    let per_poll = idle_calls as f64 / f64::from(args.idle_polls.max(1));
    println!("| API calls per idle poll | {per_poll:.1} | |");
    println!("| idle API calls per day at a 5-minute poll | {:.0} | ≤ 300 |", per_poll * 288.0);
    Ok(())
}
