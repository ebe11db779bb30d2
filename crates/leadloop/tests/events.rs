//! Change events from the Salesforce emulator, through the daemon's runtime: a lead reaches
//! the store through the event path without a poll; the replay id survives a restart (nothing
//! lost, nothing taken twice); an expired replay id, a gap event and an overflow event make
//! the poll run, and the poll loses nothing; `events = false` never subscribes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use leadloop::runtime::{Parts, Runtime, RuntimeOptions};
use leadloop_core::{LeadId, SystemClock};
use leadloop_engine::events::CrmEvents;
use leadloop_sf_emulator::{Config, Emulator, SeedSpec, seed};
use serde_json::json;

fn config_text(dir: &Path, url: &str, extra: &str) -> String {
    let secret = dir.join("sf-secret");
    std::fs::write(&secret, Config::default().client_secret).expect("secret");
    format!(
        r#"
[crm]
type = "salesforce"
poll_interval = "1h"

[crm.salesforce]
login_url = "{url}"
auth = "client_credentials"
client_id = "{client}"
client_secret_file = "{secret}"
{extra}
"#,
        client = Config::default().consumer_key,
        secret = secret.display(),
    )
}

async fn runtime(dir: &Path, url: &str, extra: &str) -> Runtime {
    let text = config_text(dir, url, extra);
    let (config, _) =
        leadloop::config::load_str(Path::new("events.toml"), &text).unwrap_or_else(|e| panic!("config: {e}"));
    let options = RuntimeOptions::new(Arc::new(SystemClock))
        .state_dir(Some(dir.join("state")))
        .parts(Parts { crm: true, ..Parts::ENGINE });
    Runtime::build(&config, options).await.expect("runtime")
}

fn emulator_config() -> Config {
    // Long polls end within a second, so a test never waits out Salesforce's 110 s.
    Config { streaming_timeout: Duration::from_secs(1), ..Config::default() }
}

fn lead(last: &str, owner: &str) -> serde_json::Map<String, serde_json::Value> {
    json!({"LastName": last, "Company": "Acme", "Email": format!("{}@acme.example", last.to_lowercase()),
           "Status": "Open - Not Contacted", "OwnerId": owner})
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// Queries by `SystemModstamp` the emulator answered: each is a poll (or a page of one).
fn polls(emu: &Emulator) -> usize {
    emu.requests().iter().filter(|r| r.path.contains("composite") && r.method == "POST").count()
}

/// Reads events until `want` leads are in the store, or panics after a few tries.
async fn read_until(events: &CrmEvents, runtime: &Runtime, ids: &[String]) -> usize {
    let mut taken = 0;
    for _ in 0..10 {
        let report = events.once().await.expect("events");
        taken += report.events;
        let leads: Vec<LeadId> = ids.iter().map(|id| LeadId::new(id.clone())).collect();
        let found = runtime.store.leads_by_id(&leads).await.expect("leads");
        if found.iter().all(Option::is_some) {
            return taken;
        }
    }
    panic!("the leads {ids:?} did not arrive through change events");
}

async fn subscribed(emu: &Emulator, events: &Arc<CrmEvents>) -> tokio::task::JoinHandle<usize> {
    // The first read subscribes for new events only (no position stored yet): start it, and
    // write once the emulator knows the subscriber.
    let reader = Arc::clone(events);
    let task = tokio::spawn(async move { reader.once().await.expect("events").events });
    for _ in 0..200 {
        if emu.streaming_clients() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_created_in_the_crm_arrives_through_events_without_a_poll() {
    let emu = Emulator::start(emulator_config()).await.expect("emulator");
    let ids =
        seed::populate(&emu, &SeedSpec { seed: 7, managers: 1, reps: 2, accounts: 2, leads: 3, tasks: 0 });
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(dir.path(), &emu.url(), "").await;
    let crm = runtime.crm.as_ref().expect("crm");
    let events = Arc::clone(crm.events.as_ref().expect("events are on by default"));
    // The first pass: the org as it is (users, so the lead's owner is known).
    crm.sync.pass().await.expect("first pass");
    let polls_before = polls(&emu);

    let first = subscribed(&emu, &events).await;
    let id = emu.insert("Lead", lead("Swift", &ids.reps[0]));
    let mut taken = first.await.expect("join");
    taken += read_until(&events, &runtime, std::slice::from_ref(&id)).await;
    assert!(taken >= 1, "the lead came as a change event");
    assert_eq!(polls(&emu), polls_before, "no poll ran: the lead came through the event path");
    assert!(events.state().live(), "events flow, so the poll waits its safety-net interval");
    // Salesforce forgets the session: the next read handshakes again from the stored replay id.
    emu.drop_streaming_clients();
    let second = emu.insert("Lead", lead("Second", &ids.reps[1]));
    read_until(&events, &runtime, std::slice::from_ref(&second)).await;
    assert_eq!(polls(&emu), polls_before, "still no poll");
    let stored = runtime.store.cursor(&events.position_name()).await.expect("cursor");
    assert_eq!(stored, Some(emu.latest_replay_id().to_string()), "the replay id is stored with the lead");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_id_survives_a_restart_nothing_lost_nothing_taken_twice() {
    let emu = Emulator::start(emulator_config()).await.expect("emulator");
    let ids =
        seed::populate(&emu, &SeedSpec { seed: 8, managers: 1, reps: 2, accounts: 2, leads: 3, tasks: 0 });
    let dir = tempfile::tempdir().expect("tempdir");
    let first_id;
    {
        let runtime = runtime(dir.path(), &emu.url(), "").await;
        let crm = runtime.crm.as_ref().expect("crm");
        let events = Arc::clone(crm.events.as_ref().expect("events"));
        crm.sync.pass().await.expect("first pass");
        let first = subscribed(&emu, &events).await;
        first_id = emu.insert("Lead", lead("Before", &ids.reps[0]));
        first.await.expect("join");
        read_until(&events, &runtime, std::slice::from_ref(&first_id)).await;
    }
    // leadloop is down: a lead is created and the first one changes.
    let second_id = emu.insert("Lead", lead("During", &ids.reps[0]));
    emu.update("Lead", &first_id, json!({"Title": "CTO"}).as_object().cloned().unwrap_or_default());
    let delivered_before = emu.events_delivered();

    let runtime = runtime(dir.path(), &emu.url(), "").await;
    let events = Arc::clone(runtime.crm.as_ref().and_then(|c| c.events.as_ref()).expect("events"));
    let report = events.once().await.expect("events after the restart");
    assert_eq!(report.gap, None);
    assert_eq!(report.events, 2, "both changes made while down are replayed, and only they");
    assert_eq!(emu.events_delivered() - delivered_before, 2, "nothing before the stored replay id again");
    let leads = runtime
        .store
        .leads_by_id(&[LeadId::new(first_id.clone()), LeadId::new(second_id.clone())])
        .await
        .expect("leads");
    let first = leads[0].as_ref().expect("first lead");
    assert_eq!(first.lead.title.as_deref(), Some("CTO"), "the change made while down is in");
    assert!(leads[1].is_some(), "the lead created while down is in");
    let version = first.version;
    // Nothing is delivered or taken again.
    let again = events.once().await.expect("idle read");
    assert_eq!(again.events, 0);
    let now = runtime.store.leads_by_id(&[LeadId::new(first_id)]).await.expect("lead");
    assert_eq!(now[0].as_ref().map(|r| r.version), Some(version), "no version taken twice");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_replay_id_a_gap_and_an_overflow_make_the_poll_run_and_lose_nothing() {
    let emu = Emulator::start(Config { overflow_after: 2, ..emulator_config() }).await.expect("emulator");
    let ids =
        seed::populate(&emu, &SeedSpec { seed: 9, managers: 1, reps: 2, accounts: 2, leads: 3, tasks: 0 });
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let runtime = runtime(dir.path(), &emu.url(), "").await;
        let crm = runtime.crm.as_ref().expect("crm");
        let events = Arc::clone(crm.events.as_ref().expect("events"));
        crm.sync.pass().await.expect("first pass");
        let first = subscribed(&emu, &events).await;
        let id = emu.insert("Lead", lead("Early", &ids.reps[0]));
        first.await.expect("join");
        read_until(&events, &runtime, &[id]).await;
    }
    // Down for longer than Salesforce keeps events.
    let missed = emu.insert("Lead", lead("Missed", &ids.reps[0]));
    emu.advance(Duration::from_secs(73 * 3600));

    let runtime = runtime(dir.path(), &emu.url(), "").await;
    let crm = runtime.crm.as_ref().expect("crm");
    let events = Arc::clone(crm.events.as_ref().expect("events"));
    let report = events.once().await.expect("read after the outage");
    assert!(report.gap.as_deref().is_some_and(|g| g.contains("older than")), "{report:?}");
    tokio::time::timeout(Duration::from_secs(1), events.state().poll_requested())
        .await
        .expect("the expired replay id asks the poll to run now");
    crm.sync.pass().await.expect("the poll");
    let found = runtime.store.leads_by_id(&[LeadId::new(missed)]).await.expect("lead");
    assert!(found[0].is_some(), "the lead created during the outage came by the poll");

    // A gap event (Salesforce could not build the change event).
    let gapped = emu.insert_many("Lead", vec![lead("Gapped", &ids.reps[0])]);
    emu.publish_gap("Lead", "GAP_UPDATE", gapped.clone());
    let mut saw_gap = false;
    for _ in 0..5 {
        if events.once().await.expect("read").gap.is_some_and(|g| g.contains("GAP_UPDATE")) {
            saw_gap = true;
            break;
        }
    }
    assert!(saw_gap, "the gap event is reported");
    tokio::time::timeout(Duration::from_secs(1), events.state().poll_requested()).await.expect("poll asked");

    // An overflow: three leads in one transaction, past the emulator's limit of two.
    let bulk = emu.insert_many("Lead", (0..3).map(|i| lead(&format!("Bulk{i}"), &ids.reps[0])).collect());
    let mut saw_overflow = false;
    for _ in 0..5 {
        if events.once().await.expect("read").gap.is_some_and(|g| g.contains("GAP_OVERFLOW")) {
            saw_overflow = true;
            break;
        }
    }
    assert!(saw_overflow, "the overflow event is reported");
    tokio::time::timeout(Duration::from_secs(1), events.state().poll_requested()).await.expect("poll asked");
    // The overlap window: the poll reads what was stamped after its last query started.
    tokio::time::sleep(Duration::from_millis(100)).await;
    crm.sync.pass().await.expect("the poll");
    let all: Vec<LeadId> = bulk.iter().chain(&gapped).map(|id| LeadId::new(id.clone())).collect();
    let found = runtime.store.leads_by_id(&all).await.expect("leads");
    assert!(found.iter().all(Option::is_some), "the overflowed and gapped leads came by the poll");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_false_never_subscribes_and_an_org_without_events_keeps_polling() {
    let emu = Emulator::start(emulator_config()).await.expect("emulator");
    seed::populate(&emu, &SeedSpec { seed: 10, managers: 1, reps: 1, accounts: 1, leads: 2, tasks: 0 });
    let dir = tempfile::tempdir().expect("tempdir");
    let off = runtime(dir.path(), &emu.url(), "events = false").await;
    let crm = off.crm.as_ref().expect("crm");
    assert!(crm.events.is_none(), "events = false builds no follower");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(off.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shutdown.cancel();
    running.await.expect("runtime");
    assert_eq!(emu.streaming_clients(), 0);
    assert!(!emu.requests().iter().any(|r| r.path.starts_with("/cometd")), "never subscribed");
    emu.shutdown().await;

    // The org does not allow Change Data Capture: the follower says so, the poll keeps its interval.
    let emu = Emulator::start(Config { change_events: false, ..emulator_config() }).await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(dir.path(), &emu.url(), "").await;
    let events = Arc::clone(runtime.crm.as_ref().and_then(|c| c.events.as_ref()).expect("events"));
    let error = events.once().await.expect_err("refused");
    assert!(error.to_string().contains("not enabled"), "{error}");
    assert!(!events.state().live());
    assert_eq!(events.state().interval(Duration::from_secs(300)), Duration::from_secs(300));
    emu.shutdown().await;
}
