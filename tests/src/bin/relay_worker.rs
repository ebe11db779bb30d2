//! The child process of the relay fault tests: opens a state directory, builds the real SMTP
//! mailer (`leadloop-smtp`, STARTTLS and AUTH against the test peer) and runs the email relay
//! until the outbox is empty, then exits 0. The parent arms a failpoint through
//! `LEADLOOP_FAILPOINTS` (see `leadloop_engine::relay::failpoint`) to make it die mid-send.
//!
//! Usage: leadloop-relay-worker STATE_DIR PEER_DIR SMTP_PORT
//!
//! `PEER_DIR` holds the test PKI's `ca.pem` (written by `TestPki::create`); the SMTP password
//! file is written there too. Messages go one at a time (concurrency 1), so a failpoint leaves
//! exactly one message in flight. Prints `round sent=… retried=… failed=… dropped=…` per round
//! and `done` when nothing is pending.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadloop_core::{Channel, Clock, SystemClock};
use leadloop_engine::{EmailRelay, RelayConfig};
use leadloop_plugin::BuildContext;
use leadloop_store::{SledConfig, SledStore, Store};
use leadloop_tests::pki::TestPki;

/// Gives up (exit 1) if the outbox is still not empty after this long.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let usage = "usage: leadloop-relay-worker STATE_DIR PEER_DIR SMTP_PORT";
    let mut args = std::env::args().skip(1);
    let state = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?);
    let peer_dir = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?);
    let port: u16 = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;

    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(&state))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let pki = TestPki {
        ca_pem: peer_dir.join("ca.pem"),
        leaf_pem: peer_dir.join("leaf.pem"),
        leaf_key: peer_dir.join("leaf.key"),
    };
    let config = leadloop_tests::smtp_peer::email_config(&peer_dir, &pki, port)?;
    let cx = BuildContext { clock: Arc::clone(&clock), shutdown: Default::default() };
    let mailer = config.build(&cx).map_err(|e| anyhow::anyhow!("building the mailer: {e}"))?;
    let relay = EmailRelay::new(
        Arc::clone(&store),
        clock,
        mailer,
        RelayConfig {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            concurrency: 1,
            ..RelayConfig::default()
        },
    );
    let started = Instant::now();
    let mut out = std::io::stdout();
    loop {
        let report = relay.run_once().await?;
        writeln!(
            out,
            "round sent={} retried={} failed={} dropped={}",
            report.sent, report.retried, report.failed, report.dropped
        )?;
        out.flush()?;
        let (pending, next) = store.outbox_pending(Channel::Email).await?;
        if pending == 0 {
            writeln!(out, "done")?;
            out.flush()?;
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < DEADLINE, "{pending} emails still pending after {DEADLINE:?}");
        if report.handled() == 0 {
            let wait = next
                .and_then(|at| (at - chrono::Utc::now()).to_std().ok())
                .unwrap_or(Duration::from_millis(20))
                .min(Duration::from_millis(500));
            tokio::time::sleep(wait).await;
        }
    }
}
