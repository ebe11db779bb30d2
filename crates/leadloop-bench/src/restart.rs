//! A restart with many pending timers (fault case 9 at full size): how long from reopening the
//! state directory until the first due email is queued, and until a real SMTP server (aiosmtpd
//! on loopback, STARTTLS and AUTH) has accepted it.
//!
//! The store holds `--timers` open hand-offs (a lead and its SLA timer each), of which `--due`
//! have their reminder overdue; the rest are due within the next 24 hours. The run reopens the
//! store, loads the org chart, ticks once (the due reminders are decided and queued durably),
//! and lets the email relay send one round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use leadloop::runtime::{Parts, Runtime, RuntimeOptions, open_store};
use leadloop_core::{Channel, VirtualClock};
use leadloop_tests::handoffs::write_handoffs;
use leadloop_tests::pki::TestPki;
use leadloop_tests::smtp_peer::SmtpPeer;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pending timers (open hand-offs) in the store at the restart.
    #[arg(long, default_value_t = 1_000_000)]
    timers: u64,
    /// How many of them are due at the restart.
    #[arg(long, default_value_t = 100)]
    due: u64,
    /// The store's page cache, in MiB (`store.cache_mb`).
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.due >= 1 && args.due <= args.timers, "--due must be between 1 and --timers");
    let dir = tempfile::tempdir()?;
    let t0: leadloop_core::Timestamp = "2026-03-02T14:00:00Z".parse()?;
    let state = dir.path().join("state");
    let mut config = crate::config(&format!("[store]\ncache_mb = {}\n", args.cache_mb))?;
    let load_started = Instant::now();
    {
        let store = open_store(&config, Some(state.clone())).await?;
        write_handoffs(store.as_ref(), t0, args.timers, args.due).await?;
    }
    let load = load_started.elapsed();

    let pki = TestPki::create(dir.path())?;
    let peer = SmtpPeer::start(Some(&pki))?;
    let clock = Arc::new(VirtualClock::new(t0));
    config.email = Some(leadloop_tests::smtp_peer::email_config(dir.path(), &pki, peer.port)?);

    // The restart, as the daemon does it: open the store, build the daemon's runtime (load the
    // org chart, start the email connector), tick, relay.
    let started = Instant::now();
    let store = open_store(&config, Some(state.clone())).await?;
    let opened = started.elapsed();
    let options = RuntimeOptions::new(clock.clone())
        .state_dir(Some(state))
        .store(Arc::clone(&store))
        .parts(Parts { email: true, ..Parts::ENGINE });
    let runtime = Runtime::build(&config, options).await?;
    let engine = runtime.engine.clone();
    let people_loaded = started.elapsed();
    let first = engine.tick().await?;
    let queued = started.elapsed();
    anyhow::ensure!(!first.enqueued.is_empty(), "the first tick queued nothing: {first:?}");
    let relay = runtime.email.as_ref().context("the config has [email]")?;
    let round = relay.run_once().await?;
    let sent = started.elapsed();
    anyhow::ensure!(round.sent >= 1, "the relay sent nothing: {round:?}");
    let received = peer.messages().await?.len();
    anyhow::ensure!(received == round.sent, "server received {received}, relay sent {}", round.sent);
    let pending = store.outbox_pending(Channel::Email).await?.0;

    println!(
        "| load {} open hand-offs ({} due at the restart) | {:.1} s |",
        args.timers,
        args.due,
        load.as_secs_f64()
    );
    println!(
        "| restart with {} pending timers: open store / + load people / + first tick (first due email queued, {} queued) | {} / {} / {} |",
        args.timers,
        first.enqueued.len(),
        ms(opened),
        ms(people_loaded),
        ms(queued)
    );
    println!(
        "| restart → first due email accepted by the SMTP server ({} sent in the first relay round, {pending} pending) | {} |",
        round.sent,
        ms(sent)
    );
    println!(
        "| peak RSS of the whole run (store.cache_mb = {}) | {:.0} MiB |",
        args.cache_mb,
        crate::peak_rss_mib()
    );
    Ok(())
}
