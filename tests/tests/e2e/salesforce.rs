//! The Salesforce connector against the emulator, over HTTP: initial and incremental sync,
//! deletes, write-back batching and per-record errors, session expiry mid-sync, the API
//! budget and `Retry-After`, a 5xx in the middle of paging, quarantine, and a restart in the
//! middle of a sync. The engine and the sync are the daemon's, built by `leadloop::runtime`
//! from a `[crm]` config around the connector under test.

use std::sync::Arc;

use chrono::TimeDelta;
use leadloop::runtime::{Parts, Runtime, RuntimeOptions};
use leadloop_core::connector::{Crm, CrmObject};
use leadloop_core::{Clock, Effect, EventKind, IdempotencyKey, LeadId, OutboxEntry, VirtualClock};
use leadloop_engine::Engine;
use leadloop_engine::crm::{CrmRelay, CrmRelayConfig, CrmSync, QUARANTINE};
use leadloop_salesforce::{AuthFlow, SalesforceConfig};
use leadloop_sf_emulator::{Emulator, Fault, SeedSpec, seed};
use leadloop_store::{Batch, LeadPages, SledConfig, SledStore, Store};
use serde_json::{Map, Value, json};

struct Rig {
    emu: Emulator,
    clock: Arc<VirtualClock>,
    dir: tempfile::TempDir,
    secret: std::path::PathBuf,
    engine: Engine,
    crm: Arc<leadloop_salesforce::Salesforce>,
    sync: Arc<CrmSync>,
    /// Config appended to the rig's (an `[sla]` policy).
    extra: String,
}

impl Rig {
    async fn start(spec: Option<SeedSpec>) -> Rig {
        Self::start_with(leadloop_sf_emulator::Config::default(), spec).await
    }

    async fn start_with(config: leadloop_sf_emulator::Config, spec: Option<SeedSpec>) -> Rig {
        Self::start_with_extra(config, spec, String::new()).await
    }

    async fn start_with_extra(
        config: leadloop_sf_emulator::Config,
        spec: Option<SeedSpec>,
        extra: String,
    ) -> Rig {
        let emu = Emulator::start(config).await.expect("emulator");
        if let Some(spec) = spec {
            seed::populate(&emu, &spec);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("client-secret");
        std::fs::write(&secret, &emu.config().client_secret).expect("secret file");
        let clock = Arc::new(VirtualClock::new(emu.now()));
        let (engine, crm, sync) = Self::open(&emu, &clock, dir.path(), &secret, &extra).await;
        Rig { emu, clock, dir, secret, engine, crm, sync, extra }
    }

    /// The daemon's runtime with its default rules and only the CRM part; the connector is
    /// built here so the tests keep its concrete type.
    async fn open(
        emu: &Emulator,
        clock: &Arc<VirtualClock>,
        dir: &std::path::Path,
        secret: &std::path::Path,
        extra: &str,
    ) -> (Engine, Arc<leadloop_salesforce::Salesforce>, Arc<CrmSync>) {
        let mut text = format!(
            "[crm]\ntype = \"salesforce\"\n[crm.salesforce]\nlogin_url = \"{}\"\nauth = \"client_credentials\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\ndisqualify_reason_field = \"Disqualify_Reason__c\"\n[crm.salesforce.fields.lead]\nInterests__c = \"interests\"\n",
            emu.url(),
            emu.config().consumer_key,
            secret.display()
        );
        text.push_str(extra);
        let (config, _) =
            leadloop::config::load_str(std::path::Path::new("salesforce.toml"), &text).expect("valid config");
        let cx = leadloop_plugin::BuildContext {
            clock: clock.clone(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        let crm_config = config.crm.as_ref().and_then(|c| c.salesforce.as_ref()).expect("[crm.salesforce]");
        let crm = Arc::new(crm_config.build(&cx).expect("connector"));
        let options = RuntimeOptions::new(clock.clone())
            .state_dir(Some(dir.join("state")))
            .parts(Parts { crm: true, ..Parts::ENGINE })
            .crm(crm.clone());
        let runtime = Runtime::build(&config, options).await.expect("the daemon's runtime");
        let sync = Arc::clone(&runtime.crm.as_ref().expect("the crm part").sync);
        (runtime.engine, crm, sync)
    }

    /// Closes the store and opens it again, as a restart does.
    async fn restart(self) -> Rig {
        let Rig { emu, clock, dir, secret, engine, crm, sync, extra } = self;
        drop(sync);
        drop(engine);
        drop(crm);
        let (engine, crm, sync) = Self::open(&emu, &clock, dir.path(), &secret, &extra).await;
        Rig { emu, clock, dir, secret, engine, crm, sync, extra }
    }

    fn sync(&self) -> Arc<CrmSync> {
        Arc::clone(&self.sync)
    }

    /// Moves both clocks (leadloop's and Salesforce's) on.
    fn advance(&self, by: std::time::Duration) {
        self.emu.advance(by);
        self.clock.set(self.emu.now());
    }

    async fn lead_count(&self) -> usize {
        let mut pages = LeadPages::new(self.engine.store().as_ref());
        let mut n = 0;
        while let Some(page) = pages.next().await.expect("page") {
            n += page.len();
        }
        n
    }

    async fn created_events(&self, id: &str) -> usize {
        let history = self.engine.store().history(&LeadId::new(id)).await.expect("history");
        history.iter().filter(|(_, e)| matches!(e.kind, EventKind::Created)).count()
    }
}

fn spec(leads: usize) -> SeedSpec {
    SeedSpec { seed: 7, managers: 2, reps: 6, accounts: 20, leads, tasks: 40 }
}

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[tokio::test]
async fn initial_sync_of_ten_thousand_leads_takes_a_call_per_page_then_one_per_poll() {
    let rig = Rig::start(Some(spec(10_000))).await;
    // The load finished a while before the first sync.
    rig.advance(std::time::Duration::from_secs(10));
    let report = rig.sync().pass().await.expect("pass");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(rig.lead_count().await, 10_000);
    // ⌈10,000 / 2,000⌉ pages of leads, the first of them in the composite with every other
    // object's first page.
    assert!(report.api_calls <= 5 + 5, "initial sync took {} calls", report.api_calls);
    assert_eq!(rig.emu.logins(), 1, "one login shared by every call");

    // Nothing changed: one call.
    rig.advance(std::time::Duration::from_secs(300));
    let idle = rig.sync().pass().await.expect("idle pass");
    assert_eq!(idle.api_calls, 1);
    assert_eq!(idle.records.stored, 0);

    // Three leads change: only they (and whatever the overlap window re-reads) are fetched.
    let leads = rig.emu.all("Lead");
    for lead in leads.iter().take(3) {
        let id = lead["Id"].as_str().expect("id");
        assert!(rig.emu.update("Lead", id, fields(json!({"Title": "Chief Data Officer"}))));
    }
    let changed = rig.sync().pass().await.expect("incremental pass");
    assert_eq!(changed.api_calls, 1);
    assert_eq!(changed.records.stored, 3, "{changed:?}");
    assert!(changed.records.fetched < 50, "fetched {}", changed.records.fetched);
    let id = leads[0]["Id"].as_str().expect("id");
    let stored = rig.engine.store().lead(&LeadId::new(id)).await.expect("read").expect("lead");
    assert_eq!(stored.lead.title.as_deref(), Some("Chief Data Officer"));
}

#[tokio::test]
async fn deletes_remove_the_lead_and_keep_its_history() {
    let rig = Rig::start(Some(spec(50))).await;
    rig.sync().pass().await.expect("pass");
    let id = rig.emu.all("Lead")[0]["Id"].as_str().expect("id").to_owned();
    assert!(rig.emu.delete("Lead", &id));
    rig.advance(std::time::Duration::from_secs(120));
    let report = rig.sync().pass().await.expect("pass");
    assert_eq!(report.records.deleted, 1, "{report:?}");
    assert_eq!(report.api_calls, 1, "the delete check rides in the composite");
    assert!(rig.engine.store().lead(&LeadId::new(&id)).await.expect("read").is_none());
    let history = rig.engine.store().history(&LeadId::new(&id)).await.expect("history");
    assert!(history.iter().any(|(_, e)| matches!(e.kind, EventKind::Deleted)));
}

/// Leads deleted while leadloop was down longer than Salesforce keeps deletes (15 days):
/// getDeleted refuses the old start (`INVALID_REPLICATION_DATE`), so the sync sweeps the ids
/// it holds, finds the two leads Salesforce no longer has and deletes them (history kept),
/// in one call for the ids besides the pass's composite; the next pass sweeps nothing.
#[tokio::test]
async fn deletes_during_an_outage_longer_than_the_getdeleted_window_are_found_by_a_sweep() {
    let rig = Rig::start(Some(spec(50))).await;
    rig.sync().pass().await.expect("pass");
    assert_eq!(rig.lead_count().await, 50);
    let ids: Vec<String> =
        rig.emu.all("Lead").iter().take(3).map(|l| l["Id"].as_str().expect("id").to_owned()).collect();
    rig.advance(std::time::Duration::from_secs(3600));
    assert!(rig.emu.delete("Lead", &ids[0]));
    assert!(rig.emu.delete("Lead", &ids[1]));
    assert!(rig.emu.update("Lead", &ids[2], fields(json!({"Title": "Head of Data"}))));
    // Sixteen days down.
    rig.advance(std::time::Duration::from_secs(16 * 86_400));
    let report = rig.sync().pass().await.expect("pass");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.records.deleted, 2, "{report:?}");
    assert_eq!(report.swept, 50);
    assert_eq!(report.api_calls, 2, "the composite, and one id check for 50 leads");
    assert_eq!(rig.lead_count().await, 48);
    for id in &ids[..2] {
        assert!(rig.engine.store().lead(&LeadId::new(id)).await.expect("read").is_none());
        let history = rig.engine.store().history(&LeadId::new(id)).await.expect("history");
        assert!(history.iter().any(|(_, e)| matches!(e.kind, EventKind::Deleted)), "{id}");
    }
    let kept = rig.engine.store().lead(&LeadId::new(&ids[2])).await.expect("read").expect("kept");
    assert_eq!(kept.lead.title.as_deref(), Some("Head of Data"), "changes meanwhile still sync");
    // Deletes are followed from now on again; no second sweep.
    rig.advance(std::time::Duration::from_secs(300));
    let idle = rig.sync().pass().await.expect("pass");
    assert_eq!((idle.api_calls, idle.swept, idle.records.deleted), (1, 0, 0), "{idle:?}");
}

/// First touch by a logged activity: under `satisfied_by = ["status", "activity"]`, a call
/// the owner logs in Salesforce (a completed Task of type Call) ends the hand-off as its own
/// outcome, and the ladder's reminder never goes.
#[tokio::test]
async fn a_call_the_owner_logs_in_salesforce_stops_the_ladder() {
    let extra = "[[sla.policy]]\nname = \"p\"\nsatisfied_by = [\"status\", \"activity\"]\nfirst_touch_activities = [\"call\"]\n[[sla.policy.step]]\nname = \"alert\"\nafter = \"0s\"\nkind = \"sla.alert\"\ntemplate = \"sla_alert\"\nto = [\"rep\"]\n[[sla.policy.step]]\nname = \"reminder\"\nafter = \"24h\"\nkind = \"sla.reminder\"\ntemplate = \"sla_reminder\"\nto = [\"rep\"]\n";
    let rig =
        Rig::start_with_extra(leadloop_sf_emulator::Config::default(), Some(spec(5)), extra.into()).await;
    rig.sync().pass().await.expect("pass");
    let rep =
        rig.emu.all("User").iter().find(|u| u["Title"] == json!("Account Executive")).expect("rep")["Id"]
            .as_str()
            .expect("id")
            .to_owned();
    let lead = rig.emu.insert(
        "Lead",
        fields(json!({"LastName": "Lovelace", "Company": "Analytical", "OwnerId": rep, "Status": "Open - Not Contacted"})),
    );
    rig.advance(std::time::Duration::from_secs(60));
    rig.sync().pass().await.expect("pass");
    let id = LeadId::new(&lead);
    let stored = rig.engine.store().lead(&id).await.expect("read").expect("lead");
    assert!(stored.handoff.is_some(), "the hand-off started");
    // Someone else's call and the owner's open call are not touches.
    rig.advance(std::time::Duration::from_secs(3600));
    let manager = rig.emu.all("User").iter().find(|u| u["Id"] != json!(rep)).expect("another user")["Id"]
        .as_str()
        .expect("id")
        .to_owned();
    rig.emu.insert("Task", fields(json!({"WhoId": lead, "OwnerId": manager, "Type": "Call", "Subject": "Call", "Status": "Completed"})));
    rig.emu.insert("Task", fields(json!({"WhoId": lead, "OwnerId": rep, "Type": "Call", "Subject": "Call", "Status": "Not Started"})));
    rig.advance(std::time::Duration::from_secs(60));
    rig.sync().pass().await.expect("pass");
    assert!(rig.engine.store().lead(&id).await.expect("read").expect("lead").handoff.is_some());
    // The owner logs the call.
    rig.emu.insert("Task", fields(json!({"WhoId": lead, "OwnerId": rep, "Type": "Call", "Subject": "Called Ada", "Status": "Completed"})));
    rig.advance(std::time::Duration::from_secs(60));
    rig.sync().pass().await.expect("pass");
    let stored = rig.engine.store().lead(&id).await.expect("read").expect("lead");
    assert!(stored.handoff.is_none(), "the call ended the hand-off");
    let history = rig.engine.store().history(&id).await.expect("history");
    let outcomes: Vec<String> = history
        .iter()
        .filter_map(|(_, e)| match &e.kind {
            EventKind::HandoffEnded { outcome, .. } => Some(outcome.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes, ["satisfied: call logged by the owner"]);
    // A day later: no reminder was queued.
    rig.advance(std::time::Duration::from_secs(30 * 3600));
    rig.engine.tick().await.expect("tick");
    let reminder = IdempotencyKey::parse(&format!("sla/{lead}/1/reminder")).expect("key");
    assert!(rig.engine.store().outbox_entry(&reminder).await.expect("read").is_none());
    let alert = IdempotencyKey::parse(&format!("sla/{lead}/1/alert")).expect("key");
    assert!(rig.engine.store().outbox_entry(&alert).await.expect("read").is_some());
}

#[tokio::test]
async fn quarantines_bad_records_while_the_rest_syncs_and_releases_them_when_fixed() {
    let rig = Rig::start(Some(spec(20))).await;
    let bad_email = rig.emu.insert(
        "Lead",
        fields(json!({"LastName": "Broken", "Company": "X", "Email": "not an address", "Status": "Open - Not Contacted"})),
    );
    let unknown_owner = rig.emu.insert(
        "Lead",
        fields(json!({"LastName": "Orphan", "Company": "X", "OwnerId": "005000000000999AAA"})),
    );
    let no_name = rig.emu.insert("Lead", fields(json!({"Company": "X"})));
    let report = rig.sync().pass().await.expect("pass");
    assert_eq!(report.records.quarantined, 3, "{report:?}");
    assert_eq!(rig.lead_count().await, 20);
    let items: std::collections::BTreeMap<String, Value> =
        rig.engine.store().items(QUARANTINE).await.expect("items").into_iter().collect();
    assert!(
        items[&format!("lead/{bad_email}")]["reason"].as_str().expect("reason").contains("not a valid email")
    );
    assert!(
        items[&format!("lead/{unknown_owner}")]["reason"].as_str().expect("reason").contains("unknown owner")
    );
    assert!(items.contains_key(&format!("lead/{no_name}")));

    rig.advance(std::time::Duration::from_secs(60));
    rig.emu.update("Lead", &bad_email, fields(json!({"Email": "fixed@example.com"})));
    let report = rig.sync().pass().await.expect("pass");
    assert_eq!(report.records.quarantined, 2, "{report:?}");
    let items = rig.engine.store().items(QUARANTINE).await.expect("items");
    assert!(!items.iter().any(|(k, _)| k == &format!("lead/{bad_email}")));
    assert_eq!(rig.lead_count().await, 21);
}

/// Text Salesforce would never send (a first name of 1.5 MB, a byte that is not UTF-8 in one
/// record of the Composite answer) quarantines that record, with the reason, while every
/// other record of all five objects syncs; the oversized value is kept cut, not whole.
#[tokio::test]
async fn oversized_text_and_bytes_that_are_not_utf8_quarantine_the_record_not_the_sync() {
    let rig = Rig::start(Some(spec(20))).await;
    let huge = rig.emu.insert(
        "Lead",
        fields(json!({"FirstName": "x".repeat(1_500_000), "LastName": "Huge", "Company": "X"})),
    );
    let bad_byte = rig.emu.insert("Lead", fields(json!({"LastName": "BadBADBYTEByte", "Company": "X"})));
    rig.emu.fault(Fault::InvalidUtf8 { marker: "BADBYTE".into(), times: 1 });
    let report = rig.sync().pass().await.expect("pass");
    assert!(report.errors.is_empty(), "no object failed: {:?}", report.errors);
    assert_eq!(report.records.quarantined, 2, "{report:?}");
    assert_eq!(rig.lead_count().await, 20, "every other lead synced");
    assert!(rig.emu.all("User").len() > 1 && rig.engine.org_chart().people().count() > 1, "users synced too");
    let items: std::collections::BTreeMap<String, Value> =
        rig.engine.store().items(QUARANTINE).await.expect("items").into_iter().collect();
    let huge_item = &items[&format!("lead/{huge}")];
    assert_eq!(huge_item["reason"], "FirstName: 1500000 characters, more than the 40 Salesforce allows");
    let kept = huge_item["raw"]["FirstName"].as_str().expect("kept cut");
    assert!(kept.len() < 100 && kept.ends_with("[cut: 1500000 characters]"), "{kept}");
    assert_eq!(
        items[&format!("lead/{bad_byte}")]["reason"],
        "LastName: not valid UTF-8 (the CRM sent bytes that are not text)"
    );
    // Fixed in Salesforce, both are released by the next pass.
    rig.advance(std::time::Duration::from_secs(60));
    rig.emu.update("Lead", &huge, fields(json!({"FirstName": "Hugh"})));
    rig.emu.update("Lead", &bad_byte, fields(json!({"LastName": "Byte"})));
    let report = rig.sync().pass().await.expect("pass");
    assert_eq!(report.records.quarantined, 0, "{report:?}");
    assert_eq!(rig.lead_count().await, 22);
}

/// The reason a rep types in a one-click Disqualify answer is written to the configured
/// `disqualify_reason_field` with the status (the org has the custom field, as it must).
#[tokio::test]
async fn the_disqualify_reason_is_written_to_its_configured_field() {
    let rig = Rig::start(Some(spec(3))).await;
    assert!(rig.emu.declare_field("Lead", "Disqualify_Reason__c"));
    rig.sync().pass().await.expect("pass");
    let id = rig.emu.all("Lead")[0]["Id"].as_str().expect("id").to_owned();
    let mut update = Map::new();
    update.insert("status".into(), json!("Closed - Not Converted"));
    update.insert("disqualify_reason".into(), json!("student, no budget"));
    let mut batch = Batch::new();
    batch.enqueue(OutboxEntry::new(
        IdempotencyKey::parse("sla/answer").expect("valid key"),
        Effect::CrmUpdate { lead_id: LeadId::new(&id), fields: update },
        rig.clock.now(),
    ));
    rig.engine.store().commit(batch).await.expect("enqueue");
    let relay = CrmRelay::new(&rig.engine, rig.crm.clone(), CrmRelayConfig::default());
    let report = relay.run_once().await.expect("round");
    assert_eq!(report.written, 1, "{report:?}");
    let lead = rig.emu.get("Lead", &id).expect("lead");
    assert_eq!(lead["Status"], "Closed - Not Converted");
    assert_eq!(lead["Disqualify_Reason__c"], "student, no budget");
}

#[tokio::test]
async fn expired_session_mid_sync_logs_in_once_more_and_finishes() {
    let rig = Rig::start(Some(spec(5_000))).await;
    rig.emu.fault(Fault::Slow { delay: std::time::Duration::from_millis(1), times: 1 });
    // First page of everything, by hand, then the session dies.
    let sync = rig.sync();
    let first = rig
        .crm
        .pull(&[leadloop_core::connector::PullRequest { object: CrmObject::Lead, cursor: None }])
        .await
        .expect("pull");
    let page = first.into_iter().next().expect("one").expect("page");
    assert!(page.more);
    rig.engine.ingest(CrmObject::Lead, page, &sync.cursor_name(CrmObject::Lead)).await.expect("ingest");
    rig.emu.expire_sessions();
    let report = sync.pass().await.expect("pass");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(rig.emu.logins(), 2);
    assert_eq!(rig.lead_count().await, 5_000);
}

#[tokio::test]
async fn a_5xx_mid_page_keeps_the_cursor_and_a_restart_resumes_without_loss_or_duplicates() {
    let rig = Rig::start(Some(spec(9_000))).await;
    rig.emu.fault(Fault::FailPage { nth: 2 });
    let report = rig.sync().pass().await.expect("pass");
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].0, CrmObject::Lead);
    // Pages 1 and 2 of 5 are durable; page 3 failed.
    let partial = rig.lead_count().await;
    assert_eq!(partial, 4_000);
    let cursor = rig.engine.store().cursor(&rig.sync().cursor_name(CrmObject::Lead)).await.expect("cursor");
    assert!(cursor.expect("cursor").contains("\"next\""), "the cursor still points into the query");

    // The daemon is killed here; a new one opens the same state directory.
    let rig = rig.restart().await;
    let report = rig.sync().pass().await.expect("pass after restart");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let stored = rig.lead_count().await;
    let mut twice = 0;
    for lead in rig.emu.all("Lead").iter().step_by(97) {
        let created = rig.created_events(lead["Id"].as_str().expect("id")).await;
        assert_eq!(created, 1);
        twice += created.saturating_sub(1);
    }
    eprintln!(
        "fault 6: CRM 5xx mid-page (page 3 of 5), then restart ×1 — lost {}, duplicated {twice} (created \
         events, every 97th lead); cursor kept on the partial page: {partial} of 9000 stored before",
        9_000usize.saturating_sub(stored)
    );
    assert_eq!(stored, 9_000);
}

#[tokio::test]
async fn retry_after_is_honoured_and_the_budget_reserve_defers_bulk_sync_not_writes() {
    let rig = Rig::start(Some(spec(6_000))).await;
    rig.emu.fault(Fault::Status {
        status: 429,
        retry_after: Some(7),
        times: 1,
        path_contains: Some("/composite".into()),
    });
    let report = rig.sync().pass().await.expect("pass");
    assert!(!report.errors.is_empty());
    assert_eq!(report.retry_after, Some(std::time::Duration::from_secs(7)));
    assert_eq!(rig.lead_count().await, 0);
    let cursor = rig.engine.store().cursor(&rig.sync().cursor_name(CrmObject::Lead)).await.expect("cursor");
    eprintln!(
        "fault 6: CRM 429 with Retry-After: 7 ×1 — lost 0, duplicated 0 (nothing acknowledged: {} leads \
         stored, cursor {cursor:?}); retry after {:?}",
        rig.lead_count().await,
        report.retry_after
    );
    assert_eq!(cursor, None);

    // 85 % of the day's allowance is gone; 20 % is kept for SLA writes.
    rig.emu.set_api_usage(85_000);
    let report = rig.sync().pass().await.expect("pass");
    assert_eq!(rig.lead_count().await, 2_000, "the first page came back with the budget in it");
    assert!(report.errors.iter().any(|(_, e)| e.contains("api budget low")), "{:?}", report.errors);
    let usage = rig.crm.usage();
    assert_eq!(usage.bulk_left, Some(0));

    // A status write still goes out.
    let lead = rig.emu.all("Lead")[0]["Id"].as_str().expect("id").to_owned();
    let mut batch = Batch::new();
    let mut update = Map::new();
    update.insert("status".into(), json!("Working - Contacted"));
    batch.enqueue(OutboxEntry::new(
        IdempotencyKey::parse("w1").expect("valid key"),
        Effect::CrmUpdate { lead_id: LeadId::new(&lead), fields: update },
        rig.clock.now(),
    ));
    rig.engine.store().commit(batch).await.expect("enqueue");
    let relay = CrmRelay::new(&rig.engine, rig.crm.clone(), CrmRelayConfig::default());
    let written = relay.run_once().await.expect("relay");
    assert_eq!(written.written, 1);
    assert_eq!(rig.emu.get("Lead", &lead).expect("lead")["Status"], json!("Working - Contacted"));
}

/// Salesforce sends several `;`-separated entries in `Sforce-Limit-Info` when the org sets a
/// quota for the connected app; the governor reads them and keeps to the tighter one.
#[tokio::test]
async fn a_connected_app_quota_in_a_multi_entry_limit_header_defers_bulk_sync() {
    let config = leadloop_sf_emulator::Config {
        app_api_quota: Some(leadloop_sf_emulator::AppQuota { app_name: "leadloop".into(), quota: 250 }),
        ..leadloop_sf_emulator::Config::default()
    };
    let rig = Rig::start_with(config, Some(spec(6_000))).await;
    // The org has used 1 % of its day; this app has used 240 of its 250.
    rig.emu.set_api_usage(1_000);
    rig.emu.set_app_api_usage(240);
    let report = rig.sync().pass().await.expect("pass");
    let usage = rig.crm.usage();
    assert_eq!((usage.used, usage.max), (Some(1_001), Some(100_000)), "the org's figures are read");
    assert_eq!(usage.bulk_left, Some(0), "the app's quota is the tighter one: {usage:?}");
    assert!(
        report
            .errors
            .iter()
            .any(|(_, e)| e.contains("api budget low") && e.contains("connected app's quota: 241 of 250")),
        "{:?}",
        report.errors
    );
    assert_eq!(rig.lead_count().await, 2_000, "the first page came back with the quota in it");
}

/// A new process (each `sync --once`, a restart) starts from the last process's reading of
/// the allowance, kept in the store, instead of spending a call to learn it; an old reading is
/// not trusted.
#[tokio::test]
async fn the_budget_reading_outlives_the_process() {
    let rig = Rig::start(Some(spec(6_000))).await;
    rig.emu.set_api_usage(85_000);
    let report = rig.sync().pass().await.expect("pass");
    assert_eq!(report.api_calls, 1, "the first process spends one call to learn the budget");
    assert!(report.errors.iter().any(|(_, e)| e.contains("api budget low")), "{:?}", report.errors);

    let rig = rig.restart().await;
    let calls = rig.emu.api_calls();
    let report = rig.sync().pass().await.expect("pass");
    assert_eq!(rig.emu.api_calls(), calls, "the next process knows the budget without a call");
    assert_eq!(report.api_calls, 0);
    assert!(report.errors.iter().any(|(_, e)| e.contains("api budget low")), "{:?}", report.errors);

    // Sixteen minutes on, the kept reading is too old: the next process asks again.
    rig.advance(std::time::Duration::from_secs(16 * 60));
    let rig = rig.restart().await;
    let report = rig.sync().pass().await.expect("pass");
    assert_eq!(report.api_calls, 1, "{report:?}");
}

#[tokio::test]
async fn write_back_batches_200_a_call_retries_record_errors_and_dead_letters_what_keeps_failing() {
    let rig = Rig::start(Some(spec(450))).await;
    rig.sync().pass().await.expect("pass");
    let ids: Vec<String> =
        rig.emu.all("Lead").iter().map(|l| l["Id"].as_str().expect("id").to_owned()).collect();
    let mut batch = Batch::new();
    for (i, id) in ids.iter().enumerate() {
        let mut update = Map::new();
        // One write names a status the org's picklist refuses.
        let status = if i == 5 { "Maybe Later" } else { "Working - Contacted" };
        update.insert("status".into(), json!(status));
        batch.enqueue(OutboxEntry::new(
            IdempotencyKey::parse(&format!("w{i}")).expect("valid key"),
            Effect::CrmUpdate { lead_id: LeadId::new(id), fields: update },
            rig.clock.now(),
        ));
    }
    let rep =
        rig.emu.all("User").iter().find(|u| u["Title"] == json!("Account Executive")).expect("rep")["Id"]
            .as_str()
            .expect("id")
            .to_owned();
    batch.enqueue(OutboxEntry::new(
        IdempotencyKey::parse("task-1").expect("valid key"),
        Effect::CrmTask {
            lead_id: LeadId::new(&ids[0]),
            owner_id: leadloop_core::PersonId::new(&rep),
            subject: "Call Ada".into(),
            due: Some(rig.clock.now()),
        },
        rig.clock.now(),
    ));
    rig.engine.store().commit(batch).await.expect("enqueue");
    // A lock conflict on one record, once: retried and then written.
    rig.emu.fault(Fault::RecordError {
        id: ids[7].clone(),
        status_code: "UNABLE_TO_LOCK_ROW".into(),
        message: "unable to obtain exclusive access to this record".into(),
        times: 1,
    });
    let calls = rig.emu.api_calls();
    let relay = CrmRelay::new(
        &rig.engine,
        rig.crm.clone(),
        CrmRelayConfig { max_attempts: 2, ..CrmRelayConfig::default() },
    );
    let first = relay.run_once().await.expect("round 1");
    assert_eq!(first.written, 449, "{first:?}");
    assert_eq!(first.retried, 2);
    assert_eq!(rig.emu.api_calls() - calls, 3 + 1, "450 updates in calls of 200, and one for the task");
    let tasks: Vec<Map<String, Value>> =
        rig.emu.all("Task").into_iter().filter(|t| t["Subject"] == json!("Call Ada")).collect();
    assert_eq!(tasks.len(), 1);

    rig.clock.advance(TimeDelta::hours(2));
    let second = relay.run_once().await.expect("round 2");
    assert_eq!((second.written, second.dead_lettered), (1, 1), "{second:?}");
    let dead = rig
        .engine
        .store()
        .outbox_entry(&IdempotencyKey::parse("w5").expect("valid key"))
        .await
        .expect("entry")
        .expect("w5");
    match dead.state {
        leadloop_core::OutboxState::Failed { reason, .. } => {
            assert!(reason.contains("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"), "{reason}")
        }
        other => panic!("not dead-lettered: {other:?}"),
    }
    rig.clock.advance(TimeDelta::hours(2));
    let third = relay.run_once().await.expect("round 3");
    assert_eq!((third.written, third.retried, third.dead_lettered), (0, 0, 0), "never retried forever");
}

/// A key pair for the JWT bearer flow, made by `openssl` for this test only.
fn rsa_key_pair(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let private = dir.join("jwt-key.pem");
    let public = dir.join("jwt-pub.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&private)
        .status()
        .expect("openssl genpkey")
        .success();
    assert!(ok);
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("openssl pkey")
        .success();
    assert!(ok);
    (private, std::fs::read_to_string(public).expect("public key"))
}

async fn sync_with(
    emu: &Emulator,
    config: SalesforceConfig,
    dir: &std::path::Path,
) -> leadloop_engine::crm::SyncReport {
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.join("state"))).expect("store");
    let clock = Arc::new(VirtualClock::new(emu.now()));
    let engine = Engine::new(store, clock.clone(), Arc::new(leadloop_core::policy::NoRules));
    let cx = leadloop_plugin::BuildContext { clock, shutdown: tokio_util::sync::CancellationToken::new() };
    let crm = Arc::new(config.build(&cx).expect("connector"));
    CrmSync::new(engine, crm, &CrmObject::ALL).pass().await.expect("pass")
}

#[tokio::test]
async fn logs_in_with_a_signed_jwt_and_with_a_refresh_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = rsa_key_pair(dir.path());
    let emu = Emulator::start(leadloop_sf_emulator::Config {
        jwt_public_key_pem: Some(public),
        refresh_tokens: vec!["refresh-1".into()],
        ..leadloop_sf_emulator::Config::default()
    })
    .await
    .expect("emulator");
    seed::populate(&emu, &spec(30));

    let mut jwt = SalesforceConfig::new(emu.url(), emu.config().consumer_key.clone(), AuthFlow::Jwt);
    jwt.username = Some("integration@example.com".into());
    jwt.private_key_file = Some(private.clone());
    let report = sync_with(&emu, jwt.clone(), &dir.path().join("a")).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(emu.logins(), 1);

    // The assertion is refused for an unknown user: an authentication error, not a retry loop.
    jwt.username = Some("nobody@example.com".into());
    let report = sync_with(&emu, jwt, &dir.path().join("b")).await;
    assert!(report.errors.iter().all(|(_, e)| e.contains("authentication failed")), "{:?}", report.errors);

    let token = dir.path().join("refresh");
    std::fs::write(&token, "refresh-1").expect("token");
    let mut refresh =
        SalesforceConfig::new(emu.url(), emu.config().consumer_key.clone(), AuthFlow::RefreshToken);
    refresh.refresh_token_file = Some(token);
    let report = sync_with(&emu, refresh, &dir.path().join("c")).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.records.fetched >= 30);
}

/// Queues `n` follow-up tasks for one lead in a fresh state directory, due a minute ago in
/// wall-clock time (the worker runs on the system clock).
async fn queue_tasks(state: &std::path::Path, lead: &str, owner: &str, n: usize) {
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(state)).expect("store");
    let mut batch = Batch::new();
    let queued_at = leadloop_core::SystemClock.now() - TimeDelta::minutes(1);
    for i in 0..n {
        batch.enqueue(OutboxEntry::new(
            IdempotencyKey::parse(&format!("task{i}")).expect("valid key"),
            Effect::CrmTask {
                lead_id: LeadId::new(lead),
                owner_id: leadloop_core::PersonId::new(owner),
                subject: format!("Call the lead back ({i})"),
                due: None,
            },
            queued_at,
        ));
    }
    store.commit(batch).await.expect("queue tasks");
}

/// Runs the CRM relay worker over `state`; with `failpoint`, armed through the environment.
fn crm_relay_worker(
    emu: &Emulator,
    state: &std::path::Path,
    secret: &std::path::Path,
    key_field: Option<&str>,
    failpoint: Option<&str>,
) -> std::process::ExitStatus {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_leadloop-crm-relay-worker"));
    command.arg(state).arg(emu.url()).arg(&emu.config().consumer_key).arg(secret);
    if let Some(field) = key_field {
        command.arg(field);
    }
    command.env_remove(leadloop_engine::relay::FAILPOINTS_ENV);
    if let Some(point) = failpoint {
        command.env(leadloop_engine::relay::FAILPOINTS_ENV, point);
    }
    let output = command.output().expect("run the crm relay worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() && !stderr.trim().is_empty() {
        eprintln!("crm relay worker stderr:\n{stderr}");
    }
    output.status
}

/// Fault case: the process dies after Salesforce answered a task write and before the answer
/// is recorded; the restarted process writes it again. With `task_key_field` the repeat is an
/// upsert on the idempotency key: one task per key. Without it the task exists twice (the
/// documented risk `validate` warns of).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_killed_after_salesforce_created_tasks_leaves_one_task_per_key_with_an_external_id() {
    use std::os::unix::process::ExitStatusExt;
    const TASKS: usize = 5;
    const FIELD: &str = "Leadloop_Key__c";
    let emu = Emulator::start(leadloop_sf_emulator::Config::default()).await.expect("emulator");
    assert!(emu.declare_external_id("Task", FIELD));
    let owner = emu
        .insert("User", fields(json!({"Username": "rep@corp.example", "LastName": "Rep", "IsActive": true})));
    let lead = emu.insert("Lead", fields(json!({"LastName": "Lead", "Company": "Co", "OwnerId": owner})));
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, &emu.config().client_secret).expect("secret");

    let mut counts = Vec::new();
    for (run, key_field) in [("with", Some(FIELD)), ("without", None)] {
        let state = dir.path().join(format!("state-{run}"));
        queue_tasks(&state, &lead, &owner, TASKS).await;
        let before = emu.count("Task");
        let status = crm_relay_worker(&emu, &state, &secret, key_field, Some("crm.after_push"));
        assert_eq!(status.signal(), Some(6), "the failpoint kills the worker (SIGABRT): {status:?}");
        assert_eq!(emu.count("Task") - before, TASKS, "Salesforce created the tasks before the kill");
        let status = crm_relay_worker(&emu, &state, &secret, key_field, None);
        assert!(status.success(), "the restarted worker finishes the outbox: {status:?}");
        let created = emu.count("Task") - before;
        let duplicated = created - TASKS;
        eprintln!(
            "fault: killed after Salesforce answered {TASKS} task writes, before recording them, \
             {run} task_key_field — tasks {created}, lost 0, duplicated {duplicated}"
        );
        counts.push(created);
    }
    assert_eq!(counts[0], TASKS, "with the External ID field, one task per key");
    let keyed: Vec<String> = emu
        .all("Task")
        .iter()
        .filter_map(|t| t.get(FIELD).and_then(Value::as_str).map(str::to_owned))
        .collect();
    let unique: std::collections::BTreeSet<&String> = keyed.iter().collect();
    assert_eq!((keyed.len(), unique.len()), (TASKS, TASKS), "{keyed:?}");
    assert_eq!(counts[1], 2 * TASKS, "without it, the documented risk: each task twice");
}
