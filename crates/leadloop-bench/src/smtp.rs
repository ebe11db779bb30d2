//! Messages per second from the outbox through the relay to a real SMTP server on loopback,
//! and the relay's peak RSS. The outbox is filled by a child process (as the engine's ticks
//! would, in batches), so the figure is the relay's own: it reads the outbox in pages of
//! `RelayConfig::batch`, whatever the outbox holds.

use std::sync::Arc;
use std::time::Instant;

use leadloop_core::{Channel, Effect, IdempotencyKey, OutboxEntry, SystemClock};
use leadloop_engine::{EmailRelay, RelayConfig};
use leadloop_plugin::BuildContext;
use leadloop_smtp::sample_vars;
use leadloop_store::{Batch, SledConfig, SledStore, Store};
use leadloop_tests::pki::TestPki;
use leadloop_tests::smtp_peer::SmtpPeer;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages to send.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Connections in the pool and messages in flight.
    #[arg(long, default_value_t = 8)]
    pool: u32,
    /// The store's page cache, in MiB (`store.cache_mb`).
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
    /// Outbox entries the relay reads per round (`outbox.batch`).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Internal: only fill the outbox of the state directory DIR, then exit.
    #[arg(long, hide = true, value_name = "DIR")]
    queue_into: Option<std::path::PathBuf>,
}

/// Effects queued per durable batch while filling the outbox (a busy tick's worth).
const QUEUE_BATCH: usize = 500;

/// Fills the outbox of the store in `state` with `messages` SLA alerts.
async fn queue(state: &std::path::Path, messages: usize) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(state))?;
    let vars = sample_vars("sla_alert");
    let now = leadloop_core::Clock::now(&SystemClock);
    let mut batch = Batch::new();
    for i in 0..messages {
        let effect = Effect::Email {
            kind: "sla.alert".into(),
            template: "sla_alert".into(),
            to: vec![format!("rep{}@corp{}.example", i % 50, i % 7)],
            cc: vec![],
            lead_id: None,
            vars: vars.clone(),
            deliver_to: None,
        };
        batch.enqueue(OutboxEntry::new(
            IdempotencyKey::from_parts(["bench".to_owned(), i.to_string()])?,
            effect,
            now,
        ));
        if batch.len() == QUEUE_BATCH {
            store.commit(std::mem::take(&mut batch)).await?;
        }
    }
    store.commit(batch).await?;
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(state) = &args.queue_into {
        return queue(state, args.messages).await;
    }
    let dir = tempfile::tempdir()?;
    let pki = TestPki::create(dir.path())?;
    let peer = SmtpPeer::start(Some(&pki))?;
    let mut config = leadloop_tests::smtp_peer::email_config(dir.path(), &pki, peer.port)?;
    if let Some(smtp) = config.smtp.as_mut() {
        smtp.pool_size = args.pool;
    }
    let clock = Arc::new(SystemClock);
    let mailer = config.build(&BuildContext { clock: clock.clone(), shutdown: Default::default() })?;
    let state = dir.path().join("state");
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["smtp", "--messages", &args.messages.to_string(), "--queue-into"])
        .arg(&state)
        .status()?;
    anyhow::ensure!(status.success(), "filling the outbox failed: {status}");
    let sled = SledConfig { cache_bytes: args.cache_mb * 1024 * 1024, ..SledConfig::new(state.clone()) };
    let store: Arc<dyn Store> = SledStore::open(&sled)?;
    anyhow::ensure!(store.outbox_pending(Channel::Email).await?.0 == args.messages as u64, "outbox filled");
    let relay_config =
        RelayConfig { concurrency: args.pool as usize, batch: args.batch, ..RelayConfig::default() };
    let relay = EmailRelay::new(Arc::clone(&store), clock, mailer, relay_config);
    let started = Instant::now();
    let mut sent = 0;
    let mut retried = 0;
    while store.outbox_pending(Channel::Email).await?.0 > 0 {
        let report = relay.run_once().await?;
        sent += report.sent;
        retried += report.retried;
        anyhow::ensure!(report.failed == 0, "failures: {report:?}");
        if report.handled() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let received = peer.messages().await?.len();
    anyhow::ensure!(received == args.messages, "server received {received} of {}", args.messages);
    println!(
        "| {} messages from the outbox to aiosmtpd on loopback (STARTTLS, AUTH, pool {}) | {:.0} messages/s ({sent} sent, {retried} retried, {:.1} s) |",
        args.messages,
        args.pool,
        args.messages as f64 / elapsed,
        elapsed
    );
    println!(
        "| peak RSS of the relay process (outbox filled by another process, read in pages of {}, store.cache_mb = {}) | {:.0} MiB |",
        args.batch,
        args.cache_mb,
        crate::peak_rss_mib()
    );
    Ok(())
}
