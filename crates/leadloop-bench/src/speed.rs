//! `speed`: speed to lead. Leads are created one by one in the Salesforce emulator; each
//! qualifies (every lead source scores), is routed out of the queue to a rep, and the rep's
//! alert goes to the SMTP peer. Measured per lead: from the insert in the emulator to the SMTP
//! peer storing the alert (its `250`), through the daemon's runtime (`Runtime::run`: sync,
//! change events, engine, email relay). Once with change events, once with polling only.
//!
//! Target: p99 ≤ 10 s with events. With polling only the figure is bounded by the poll
//! interval (5 minutes by default; `--poll-interval` here, to keep the run short).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use leadloop::runtime::{Parts, Runtime, RuntimeOptions};
use leadloop_core::SystemClock;
use leadloop_sf_emulator::{Config as EmuConfig, Emulator, SeedSpec, seed};
use leadloop_tests::pki::TestPki;
use leadloop_tests::smtp_peer::SmtpPeer;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Leads created per case.
    #[arg(long, default_value_t = 50)]
    leads: usize,
    /// Time between two leads with events, in milliseconds.
    #[arg(long, default_value_t = 400)]
    spacing_ms: u64,
    /// The poll interval of the polling-only case, in seconds (leads are spread over it).
    #[arg(long, default_value_t = 60)]
    poll_interval: u64,
    /// Skip the polling-only case.
    #[arg(long)]
    events_only: bool,
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or_default()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = leadloop::telemetry::init_metrics()?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::create(dir.path())?;
    let peer = SmtpPeer::start(Some(&pki))?;
    let mut rows = Vec::new();
    let mut cases = vec![("change events", true)];
    if !args.events_only {
        cases.push(("polling only", false));
    }
    for (name, events) in cases {
        peer.reset().await?;
        let spacing = if events {
            Duration::from_millis(args.spacing_ms)
        } else {
            Duration::from_secs(args.poll_interval).div_f64(args.leads.max(1) as f64)
        };
        let latencies = case(&args, &dir, &pki, &peer, events, spacing).await?;
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        rows.push((
            name,
            sorted.len(),
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            sorted.last().copied().unwrap_or_default(),
        ));
    }
    println!();
    println!("| case | leads | p50 | p99 | max | target |");
    println!("|---|---|---|---|---|---|");
    for (name, n, p50, p99, max) in rows {
        let target = if name == "change events" { "p99 ≤ 10 s" } else { "≤ the poll interval" };
        println!("| {name} | {n} | {p50:.3} s | {p99:.3} s | {max:.3} s | {target} |");
    }
    let rendered = metrics.render();
    let histogram: Vec<&str> = rendered
        .lines()
        .filter(|l| {
            l.starts_with("leadloop_speed_to_alert_seconds_sum")
                || l.starts_with("leadloop_speed_to_alert_seconds_count")
        })
        .collect();
    println!();
    println!("the daemon's own histogram, both cases: {}", histogram.join(", "));
    Ok(())
}

async fn case(
    args: &Args,
    dir: &tempfile::TempDir,
    pki: &TestPki,
    peer: &SmtpPeer,
    events: bool,
    spacing: Duration,
) -> anyhow::Result<Vec<f64>> {
    let emu = Emulator::start(EmuConfig::default()).await?;
    let ids =
        seed::populate(&emu, &SeedSpec { seed: 11, managers: 1, reps: 3, accounts: 0, leads: 0, tasks: 0 });
    let case_dir = dir.path().join(if events { "events" } else { "polling" });
    std::fs::create_dir_all(&case_dir)?;
    let secret = case_dir.join("sf-secret");
    std::fs::write(&secret, EmuConfig::default().client_secret)?;
    let poll = if events { 300 } else { args.poll_interval };
    let mut config = crate::config(&format!(
        r#"
[crm]
type = "salesforce"
poll_interval = "{poll}s"

[crm.salesforce]
login_url = "{url}"
auth = "client_credentials"
client_id = "{client}"
client_secret_file = "{secret}"
events = {events}

[scoring]
threshold = 10
[[scoring.fit]]
name = "any source"
field = "lead_source"
contains = [""]
points = 20

[routing]
fallback = "{rep}"
"#,
        url = emu.url(),
        client = EmuConfig::default().consumer_key,
        secret = secret.display(),
        rep = ids.reps[0],
    ))?;
    config.email = Some(leadloop_tests::smtp_peer::email_config(&case_dir, pki, peer.port)?);
    let options = RuntimeOptions::new(Arc::new(SystemClock))
        .state_dir(Some(case_dir.join("state")))
        .parts(Parts { crm: true, email: true, ..Parts::ENGINE });
    let runtime = Runtime::build(&config, options).await?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    // The first pass has read the org (and, with events, the subscription is up).
    let ready = Instant::now();
    while ready.elapsed() < Duration::from_secs(30) {
        let synced = emu.requests().iter().any(|r| r.path.contains("composite"));
        if synced && (!events || emu.streaming_clients() > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let tag = if events { "Ev" } else { "Po" };
    let mut created = Vec::with_capacity(args.leads);
    for i in 0..args.leads {
        let name = format!("Speed{tag}{i:04}");
        let fields = serde_json::json!({
            "LastName": name, "FirstName": "Bench", "Company": "Speed Inc",
            "Email": format!("{}@speed.example", name.to_lowercase()),
            "LeadSource": "Web", "Status": "Open - Not Contacted", "OwnerId": ids.queue,
        });
        let at = now_secs();
        emu.insert("Lead", fields.as_object().cloned().unwrap_or_default());
        created.push((name, at));
        tokio::time::sleep(spacing).await;
    }
    let deadline = Instant::now() + Duration::from_secs(args.poll_interval.max(poll) + 60);
    let mut latencies: Vec<Option<f64>> = vec![None; created.len()];
    while Instant::now() < deadline && latencies.iter().any(Option::is_none) {
        for message in peer.messages().await? {
            let data = message["data"].as_str().unwrap_or_default();
            let at = message["received_at"].as_f64().unwrap_or_default();
            // Only the rep's alert mentions the lead at this point: matched by its name.
            for (i, (name, inserted)) in created.iter().enumerate() {
                if latencies[i].is_none() && data.contains(name.as_str()) {
                    latencies[i] = Some(at - inserted);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    running.await.context("runtime task")?;
    emu.shutdown().await;
    let missing = latencies.iter().filter(|l| l.is_none()).count();
    anyhow::ensure!(missing == 0, "{missing} of {} alerts never reached the SMTP peer", created.len());
    Ok(latencies.into_iter().flatten().collect())
}
