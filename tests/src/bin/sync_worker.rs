//! The child process of the CRM-sync crash test: one sync pass from a Salesforce org (the
//! emulator the parent started) into a state directory, through the real connector and
//! engine. The parent kills it with SIGKILL at random moments and checks, between kills, that
//! the stored cursors never pass data that is not in the store.
//!
//! Usage: leadloop-sync-worker STATE_DIR SALESFORCE_URL CLIENT_ID SECRET_FILE

#![allow(clippy::print_stdout)]

use std::sync::Arc;

use leadloop_core::SystemClock;
use leadloop_core::connector::CrmObject;
use leadloop_core::rules::Rules;
use leadloop_core::sla::{SlaConfig, SlaRules};
use leadloop_engine::Engine;
use leadloop_engine::crm::CrmSync;
use leadloop_salesforce::{AuthFlow, SalesforceConfig};
use leadloop_store::{SledConfig, SledStore, Store};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, url, client, secret] = args.as_slice() else {
        anyhow::bail!("usage: leadloop-sync-worker STATE_DIR SALESFORCE_URL CLIENT_ID SECRET_FILE");
    };
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir))?;
    let clock: Arc<dyn leadloop_core::Clock> = Arc::new(SystemClock);
    let rules = Rules::new(
        SlaRules::new(SlaConfig::default()),
        Default::default(),
        Default::default(),
        Default::default(),
    );
    let engine = Engine::new(store, clock.clone(), Arc::new(rules));
    engine.load_people().await?;
    let mut config = SalesforceConfig::new(url.as_str(), client.as_str(), AuthFlow::ClientCredentials);
    config.client_secret_file = Some(secret.into());
    config.page_size = 500;
    let cx = leadloop_plugin::BuildContext { clock, shutdown: tokio_util::sync::CancellationToken::new() };
    let crm = Arc::new(config.build(&cx).map_err(|e| anyhow::anyhow!("{e}"))?);
    let report = CrmSync::new(engine, crm, &CrmObject::ALL).pass().await?;
    anyhow::ensure!(report.errors.is_empty(), "sync errors: {:?}", report.errors);
    println!("done {}", report.records.fetched);
    Ok(())
}
