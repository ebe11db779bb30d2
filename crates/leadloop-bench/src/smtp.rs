//! Messages per second from the outbox through the relay to a real SMTP server on loopback.

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
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = TestPki::create(dir.path())?;
    let peer = SmtpPeer::start(Some(&pki))?;
    let mut config = leadloop_tests::smtp_peer::email_config(dir.path(), &pki, peer.port)?;
    if let Some(smtp) = config.smtp.as_mut() {
        smtp.pool_size = args.pool;
    }
    let clock = Arc::new(SystemClock);
    let mailer = config.build(&BuildContext { clock: clock.clone(), shutdown: Default::default() })?;
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path().join("state")))?;
    let vars = sample_vars("sla_alert");
    let mut batch = Batch::new();
    for i in 0..args.messages {
        let effect = Effect::Email {
            kind: "sla.alert".into(),
            template: "sla_alert".into(),
            to: vec![format!("rep{}@corp{}.example", i % 50, i % 7)],
            cc: vec![],
            lead_id: None,
            vars: vars.clone(),
        };
        batch.enqueue(OutboxEntry::new(
            IdempotencyKey::from_parts(["bench".to_owned(), i.to_string()])?,
            effect,
            leadloop_core::Clock::now(&*clock),
        ));
    }
    store.commit(batch).await?;
    let relay_config = RelayConfig { concurrency: args.pool as usize, batch: 512, ..RelayConfig::default() };
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
    println!("| peak RSS of the relay process | {:.0} MiB |", crate::peak_rss_mib());
    Ok(())
}
