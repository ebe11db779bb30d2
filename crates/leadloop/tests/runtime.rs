//! `Runtime::run`'s shutdown: the engine and every relay, sync and poller share one
//! `shutdown_grace` deadline. A mail server and a CRM that never answer keep their tasks busy
//! past it; `run` still returns when the one deadline passes, not after a grace per task.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leadloop::runtime::{Ended, Runtime, RuntimeOptions};
use leadloop_core::connector::{
    ChangePage, ConnectorError, CrmWrite, OutgoingEmail, PullRequest, SendReceipt,
};
use leadloop_core::{Crm, Lead, Mailer, PersonId, VirtualClock};
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[daemon]
shutdown_grace = "10s"

[[people]]
id = "005A"
email = "rep@x.example"
name = "Rep A"
time_zone = "America/New_York"

[email]
from = "leadloop <leadloop@x.example>"
deliver = "directory"
directory = "mail"

[crm]
type = "salesforce"
[crm.salesforce]
login_url = "http://127.0.0.1:9"
auth = "client_credentials"
client_id = "leadloop"
client_secret_file = "{secret}"
"#;

/// A mail server that accepts the connection and never answers.
struct SilentMailer;

#[async_trait]
impl Mailer for SilentMailer {
    fn name(&self) -> &str {
        "silent"
    }

    async fn send(&self, _email: &OutgoingEmail) -> Result<SendReceipt, ConnectorError> {
        std::future::pending().await
    }
}

/// A CRM whose every request hangs.
struct SilentCrm;

#[async_trait]
impl Crm for SilentCrm {
    fn name(&self) -> &str {
        "silent"
    }

    async fn pull(
        &self,
        _requests: &[PullRequest],
    ) -> Result<Vec<Result<ChangePage, ConnectorError>>, ConnectorError> {
        std::future::pending().await
    }

    async fn push(&self, _writes: &[CrmWrite]) -> Result<Vec<Result<(), ConnectorError>>, ConnectorError> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_every_task_against_one_shared_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "not used: the CRM is replaced").expect("secret");
    let text = CONFIG.replace("{secret}", &secret.display().to_string());
    let (config, _) = leadloop::config::load_str(Path::new("runtime.toml"), &text).expect("valid config");
    let clock = Arc::new(VirtualClock::new("2026-03-02T14:00:00Z".parse().expect("instant")));
    let options = RuntimeOptions::new(clock)
        .state_dir(Some(dir.path().join("state")))
        .mailer(Arc::new(SilentMailer))
        .crm(Arc::new(SilentCrm));
    let runtime = Runtime::build(&config, options).await.expect("runtime");
    // A hand-off: its alert is in the outbox, so the email relay starts a send that hangs.
    let mut lead = Lead::new("00Q1");
    lead.email = Some("ana@acme.example".into());
    lead.status = Some("Open - Not Contacted".into());
    lead.owner_id = Some(PersonId::new("005A"));
    let queued = runtime.engine.upsert_lead(lead).await.expect("lead");
    assert!(!queued.is_empty(), "the alert is queued");

    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime.run(shutdown.clone()));
    // Let the relay pick the alert up and the sync start its pull.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = tokio::time::Instant::now();
    shutdown.cancel();
    let ended = running.await.expect("run");
    let took = asked.elapsed();
    assert!(matches!(ended, Ended::Shutdown), "{ended:?}");
    // Two tasks hang (the email relay and the CRM sync): one deadline, not one each.
    assert!(took >= Duration::from_secs(10), "returned before the deadline: {took:?}");
    assert!(took < Duration::from_secs(11), "waited past the one deadline: {took:?}");
}
