//! The child process of the CRM write-back crash test: relays every CRM write queued in a state
//! directory to a Salesforce org (the emulator the parent started) through the real connector,
//! until none is left. The parent arms a failpoint (`crm.after_push`) so the process dies after
//! Salesforce answered and before the answer is recorded, then runs it again unarmed.
//!
//! Usage: leadloop-crm-relay-worker STATE_DIR SALESFORCE_URL CLIENT_ID SECRET_FILE [TASK_KEY_FIELD]

#![allow(clippy::print_stdout)]

use std::sync::Arc;

use leadloop_core::rules::Rules;
use leadloop_core::sla::{SlaConfig, SlaRules};
use leadloop_core::{Channel, SystemClock};
use leadloop_engine::Engine;
use leadloop_engine::crm::{CrmRelay, CrmRelayConfig};
use leadloop_salesforce::{AuthFlow, SalesforceConfig};
use leadloop_store::{SledConfig, SledStore, Store};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, url, client, secret, key_field) = match args.as_slice() {
        [dir, url, client, secret] => (dir, url, client, secret, None),
        [dir, url, client, secret, field] => (dir, url, client, secret, Some(field.clone())),
        _ => anyhow::bail!(
            "usage: leadloop-crm-relay-worker STATE_DIR SALESFORCE_URL CLIENT_ID SECRET_FILE [TASK_KEY_FIELD]"
        ),
    };
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir))?;
    let clock: Arc<dyn leadloop_core::Clock> = Arc::new(SystemClock);
    let rules = Rules::new(
        SlaRules::new(SlaConfig::default()),
        Default::default(),
        Default::default(),
        Default::default(),
    );
    let engine = Engine::new(store.clone(), clock.clone(), Arc::new(rules));
    let mut config = SalesforceConfig::new(url.as_str(), client.as_str(), AuthFlow::ClientCredentials);
    config.client_secret_file = Some(secret.into());
    config.task_key_field = key_field;
    let cx = leadloop_plugin::BuildContext { clock, shutdown: tokio_util::sync::CancellationToken::new() };
    let crm = Arc::new(config.build(&cx).map_err(|e| anyhow::anyhow!("{e}"))?);
    let relay = CrmRelay::new(&engine, crm, CrmRelayConfig::default());
    let mut written = 0;
    for _ in 0..100 {
        written += relay.run_once().await?.written;
        if store.outbox_pending(Channel::Crm).await?.0 == 0 {
            println!("done {written}");
            return Ok(());
        }
    }
    anyhow::bail!("writes still pending after 100 rounds")
}
