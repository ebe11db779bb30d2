//! Nurture through the binary's pieces: nurture mail carries signed unsubscribe and tracked
//! links; a tracked link records an `email_click` that scoring counts and redirects to the
//! signed target (a forged target is refused); `nurture preview` plans the sends in the lead's
//! zone; `[nurture]` problems are reported with file, line and key.

use std::sync::Arc;
use std::time::Duration;

use leadloop::links::{LinkRules, Signer};
use leadloop_core::nurture::NurtureLinks as _;
use leadloop_core::sla::{SlaConfig, SlaRules};
use leadloop_core::{Channel, Clock, Effect, EventKind, Lead, LeadId, OutboxState, Stage, VirtualClock};
use leadloop_engine::Engine;
use leadloop_plugin::Secret;
use leadloop_store::{SledConfig, SledStore, Store};

const CONFIG: &str = r#"
[[scoring.engagement]]
name = "clicks"
activity = "email_click"
points = 10

[nurture]
quiet_hours = { start = "20:00", end = "08:00", weekends = true }

[[nurture.tracks]]
name = "long-term"
[[nurture.tracks.steps]]
after = "1mo"
from = "enrolment"
at = "10:00"
template = "nurture_example"
links = { guide = "https://www.example.com/guide?x=1" }
[[nurture.tracks.steps]]
after = "3mo"
from = "enrolment"
at = "10:00"
template = "nurture_example"
"#;

/// `CONFIG` with the `[links]` nurture mail needs, its key written in `dir`.
fn config_text(dir: &std::path::Path) -> String {
    let key = dir.join("links-key");
    std::fs::write(&key, "a test key that is at least 32 bytes long").expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    format!(
        "{CONFIG}\n[links]\npublic_listen = \"127.0.0.1:9478\"\npublic_url = \"https://leads.example.com\"\nsigning_key_file = \"{}\"\n",
        key.display()
    )
}

#[tokio::test]
async fn tracked_links_record_a_click_and_redirect_to_the_signed_target() {
    let path = std::path::Path::new("t.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _) = leadloop::config::load_str(path, &config_text(dir.path())).expect("valid config");
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path())).expect("store");
    // Friday 30 January 2026, 16:00 in Berlin.
    let clock = Arc::new(VirtualClock::new("2026-01-30T15:00:00Z".parse().expect("instant")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let signer = Arc::new(Signer::new(
        Secret::for_tests("a test key that is at least 32 bytes long"),
        &base,
        Duration::from_secs(3600),
    ));
    let rules = config
        .rules(SlaRules::new(SlaConfig::default()))
        .with_nurture(config.nurture_rules(Some(signer.clone())));
    let engine = Engine::new(Arc::clone(&store), clock.clone(), Arc::new(rules.clone()));
    tokio::spawn(leadloop::links::serve(
        listener,
        signer,
        None,
        engine.clone(),
        LinkRules::default(),
        tokio_util::sync::CancellationToken::new(),
    ));
    let mut lead = Lead::new("00Q1");
    lead.email = Some("ana@acme.example".into());
    lead.time_zone = Some("Europe/Berlin".into());
    engine.upsert_lead(lead).await.expect("lead");

    // Preview: 30 January + 1 month is 28 February, a Saturday: quiet, so Monday 08:00.
    let record = store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
    let preview = leadloop::nurture_cmd::preview_json(&rules.nurture, "long-term", &record, clock.now(), 5)
        .expect("track exists");
    let local: Vec<&str> =
        preview["sends"].as_array().expect("sends").iter().filter_map(|s| s["local"].as_str()).collect();
    assert_eq!(local, ["2026-03-02 08:00 CET", "2026-04-30 10:00 CEST"]);
    assert_eq!(preview["enrolled"], true);
    assert!(leadloop::nurture_cmd::preview_json(&rules.nurture, "nope", &record, clock.now(), 5).is_none());

    clock.set("2026-03-02T07:00:00Z".parse().expect("instant"));
    engine.tick().await.expect("tick");
    let email = store.outbox_ready(Channel::Email, clock.now(), 10).await.expect("outbox");
    let Effect::Email { vars, .. } = &email[0].effect else { panic!("an email") };
    let guide = vars["links"]["guide"].as_str().expect("tracked guide link").to_owned();
    let unsubscribe = vars["unsubscribe_url"].as_str().expect("unsubscribe url");
    assert!(guide.starts_with(&format!("{base}/l/")) && unsubscribe.starts_with(&format!("{base}/l/")));
    assert!(!guide.contains("example.com"), "the target is inside the signed token: {guide}");

    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    // Before the email is delivered no reader can have clicked: redirected, not counted.
    assert_eq!(client.get(&guide).send().await.expect("GET").status(), 302);
    let record = store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
    assert_eq!(record.engagement_score, 0.0);
    let mut delivered = email[0].clone();
    delivered.state = OutboxState::Done { at: clock.now() };
    let mut batch = leadloop_store::Batch::new();
    batch.update_outbox(delivered);
    store.commit(batch).await.expect("delivered");
    clock.advance(chrono::TimeDelta::minutes(2));
    let response = client.get(&guide).send().await.expect("GET");
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers().get("location").and_then(|l| l.to_str().ok()),
        Some("https://www.example.com/guide?x=1")
    );
    let record = store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
    assert!(record.engagement_score >= 9.9, "the click scored: {}", record.engagement_score);
    let history = store.history(&LeadId::new("00Q1")).await.expect("history");
    assert!(
        history
            .iter()
            .any(|(_, e)| matches!(&e.kind, leadloop_core::EventKind::Activity { activity, detail }
        if activity == "email_click" && detail.get("link") == Some(&serde_json::json!("guide"))))
    );

    // A token with its MAC cut off is refused, and nothing is recorded.
    let (forged, _) = guide.rsplit_once('.').expect("token");
    assert_eq!(client.get(format!("{forged}.AAAA")).send().await.expect("GET").status(), 403);
}

#[test]
fn nurture_config_problems_name_file_line_and_key() {
    let text = "[[nurture.tracks]]\nname = \"t\"\ntime_zone = \"Mars/Base\"\n[[nurture.tracks.steps]]\nafter = \"3q\"\ntemplate = \"nope\"\n";
    let errors = leadloop::config::load_str(std::path::Path::new("t.toml"), text).expect_err("invalid");
    let text = errors.to_string();
    assert!(
        text.contains("t.toml:3:1: nurture.tracks[0].time_zone: unknown time zone `Mars/Base`"),
        "{text}"
    );
    assert!(text.contains("t.toml:5:1: nurture.tracks[0].steps[0].after:"), "{text}");
}

#[test]
fn nurture_list_and_preview_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("leadloop.toml");
    std::fs::write(&config, config_text(dir.path())).expect("write config");
    let state = dir.path().join("state");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_leadloop"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .expect("run leadloop")
    };
    // Before anything ran: the tracks are listed, the counts are unknown and say why, and no
    // state directory is created by looking.
    let list = run(&["nurture", "list", "--format", "json"]);
    assert_eq!(list.status.code(), Some(0), "{}", String::from_utf8_lossy(&list.stderr));
    let tracks: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(tracks[0]["name"], "long-term");
    assert_eq!(tracks[0]["enrolled"], serde_json::Value::Null);
    assert!(String::from_utf8_lossy(&list.stderr).contains("no leadloop state in"), "{list:?}");
    assert!(!state.exists(), "a read-only command created {}", state.display());
    drop(
        leadloop_store::SledStore::open(&leadloop_store::SledConfig::new(&state)).expect("create the store"),
    );
    let list = run(&["nurture", "list", "--format", "json"]);
    let tracks: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(tracks[0]["enrolled"], 0);
    assert_eq!(tracks[0]["steps"][0]["schedule"], "1mo after enrolment at 10:00");
    let human = run(&["nurture", "list"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("long-term  (2 steps, zone lead"));

    let unknown_track = run(&["nurture", "preview", "nope", "--lead", "00Q1"]);
    assert_eq!(unknown_track.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&unknown_track.stderr).contains("no track `nope` (known: long-term)"));
    let unknown_lead = run(&["nurture", "preview", "long-term", "--lead", "00Q9"]);
    assert_eq!(unknown_lead.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown_lead.stderr).contains("no such lead: 00Q9"));
}

#[test]
fn simulate_prints_nurture_sends_as_email_effects_of_kind_nurture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("leadloop.toml");
    std::fs::write(&config, config_text(dir.path())).expect("write config");
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"{"at":"2026-01-30T15:00:00Z","type":"lead","lead":{"id":"00Q1","first_name":"Ana","email":"ana@acme.example","time_zone":"Europe/Berlin"}}"#,
            "\n",
            r#"{"at":"2026-03-10T12:00:00Z","type":"activity","lead_id":"00Q1","kind":"unsubscribe"}"#,
            "\n",
        ),
    )
    .expect("write events");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_leadloop"))
        .args(["simulate", "--config"])
        .arg(&config)
        .arg("--events")
        .arg(&events)
        .args(["--until", "2026-12-31T00:00:00Z"])
        .output()
        .expect("simulate");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    // The 1-month step (28 February is a Saturday: Monday 08:00 CET), then the unsubscribe's
    // CRM write-back, and nothing after it.
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["effect"], "email");
    assert_eq!(lines[0]["kind"], "nurture");
    assert_eq!(lines[0]["key"], "nurture/00Q1/long-term/1/0");
    assert_eq!(lines[0]["at"], "2026-03-02T07:00:00Z");
    assert_eq!(lines[0]["to"], serde_json::json!(["ana@acme.example"]));
    assert_eq!(lines[1]["effect"], "crm.update");
    assert_eq!(lines[1]["fields"], serde_json::json!({ "opted_out": true }));
}

/// A mailer that records what it is asked to send.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<Vec<String>>>);

#[async_trait::async_trait]
impl leadloop_core::Mailer for Recorded {
    fn name(&self) -> &str {
        "recorded"
    }

    async fn send(
        &self,
        email: &leadloop_core::connector::OutgoingEmail,
    ) -> Result<leadloop_core::connector::SendReceipt, leadloop_core::connector::ConnectorError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(email.to.clone());
        Ok(leadloop_core::connector::SendReceipt {
            message_id: email.key.to_string(),
            reply: "250 ok".into(),
        })
    }
}

/// The engine with `CONFIG`'s rules, and its public listener.
struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    engine: Engine,
    clock: Arc<VirtualClock>,
    signer: Arc<Signer>,
    client: reqwest::Client,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _) =
        leadloop::config::load_str(std::path::Path::new("t.toml"), &config_text(dir.path())).expect("config");
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path())).expect("store");
    let clock = Arc::new(VirtualClock::new("2026-01-30T15:00:00Z".parse().expect("instant")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let signer = Arc::new(Signer::new(
        Secret::for_tests("a test key that is at least 32 bytes long"),
        &base,
        Duration::from_secs(3600),
    ));
    let rules = config
        .rules(SlaRules::new(SlaConfig::default()))
        .with_nurture(config.nurture_rules(Some(signer.clone())));
    let engine = Engine::new(Arc::clone(&store), clock.clone(), Arc::new(rules));
    tokio::spawn(leadloop::links::serve(
        listener,
        signer.clone(),
        None,
        engine.clone(),
        LinkRules::default(),
        tokio_util::sync::CancellationToken::new(),
    ));
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    Rig { _dir: dir, store, engine, clock, signer, client }
}

impl Rig {
    async fn lead(&self, id: &str, email: &str) -> LeadId {
        let mut lead = Lead::new(id);
        lead.email = Some(email.into());
        lead.time_zone = Some("Europe/Berlin".into());
        self.engine.upsert_lead(lead).await.expect("lead");
        LeadId::new(id)
    }

    async fn opted_out(&self, id: &LeadId, address: &str) -> bool {
        let record = self.store.lead(id).await.expect("read").expect("lead");
        record.lead.opted_out && self.store.suppression(address).await.expect("read").is_some()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribe_takes_every_body_mail_clients_send() {
    let rig = rig().await;
    let multipart =
        "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("urlencoded", Some("application/x-www-form-urlencoded"), "List-Unsubscribe=One-Click"),
        ("multipart", Some("multipart/form-data; boundary=XyZ"), multipart),
        ("no content type, no body", None, ""),
        ("empty text", Some("text/plain"), ""),
        ("json", Some("application/json"), "{\"List-Unsubscribe\":\"One-Click\"}"),
    ];
    for (n, (name, content_type, body)) in cases.into_iter().enumerate() {
        let address = format!("lead{n}@acme.example");
        let id = rig.lead(&format!("00Q{n}"), &address).await;
        let url = rig.signer.unsubscribe(&id, &address, rig.clock.now());
        assert!(!rig.opted_out(&id, &address).await);
        let mut request = rig.client.post(&url).body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("POST");
        assert_eq!(response.status(), 200, "{name}: {:?}", response.text().await);
        assert!(rig.opted_out(&id, &address).await, "{name}: opted out and suppressed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_suppresses_the_address_mailed_whatever_became_of_the_lead() {
    let rig = rig().await;
    let ana = rig.lead("00Q1", "Ana@Acme.example").await;
    let url = rig.signer.unsubscribe(&ana, "Ana@Acme.example", rig.clock.now());
    // The address is in the token, sealed: not readable in the URL.
    let token = url.rsplit_once("/l/").expect("token").1;
    let payload = base64_decode(token.split('.').nth(1).expect("KEYID.PAYLOAD.MAC"));
    assert!(payload.starts_with(r#"{"k":"u""#), "{payload}");
    assert!(!payload.to_lowercase().contains("acme"), "{payload}");

    // The CRM deleted the lead; the link in the mail it got still unsubscribes the address.
    rig.engine.delete_lead(&ana).await.expect("delete");
    let response = rig.client.post(&url).send().await.expect("POST");
    assert_eq!(response.status(), 200);
    assert!(rig.store.suppression("ana@acme.example").await.expect("read").is_some());
    let history = rig.store.history(&ana).await.expect("history");
    assert!(
        history.iter().any(
            |(_, e)| matches!(&e.kind, EventKind::Activity { activity, .. } if activity == "unsubscribe")
        )
    );

    // The lead comes back under a new id with the same address: no nurture mail reaches it.
    let again = rig.lead("00Q9", "ana@acme.example").await;
    rig.clock.set("2026-03-02T07:00:00Z".parse().expect("instant"));
    rig.engine.tick().await.expect("tick");
    let mailer = Arc::new(Recorded::default());
    let relay = leadloop_engine::EmailRelay::new(
        Arc::clone(&rig.store),
        rig.clock.clone(),
        mailer.clone(),
        leadloop_engine::RelayConfig::default(),
    );
    let report = relay.run_once().await.expect("relay");
    assert_eq!(report.sent, 0, "{report:?}");
    assert!(mailer.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
    let key = leadloop_core::nurture::send_key(again.as_str(), "long-term", 1, 0).expect("key");
    let entry = rig.store.outbox_entry(&key).await.expect("read").expect("the step was decided");
    assert!(matches!(entry.state, OutboxState::Dropped { .. }), "{:?}", entry.state);

    // Links sent before addresses were bound (no address in the token) still work while the
    // lead exists: the lead's current address is suppressed.
    let bob = rig.lead("00Q2", "bob@acme.example").await;
    let expires = (rig.clock.now() + chrono::TimeDelta::days(30)).timestamp();
    let old = leadloop::links::NurtureClaim::Unsubscribe { lead: bob.clone(), address: None, expires };
    let old_url = format!("{}/l/{}", url.rsplit_once("/l/").expect("base").0, rig.signer.nurture_token(&old));
    assert_eq!(rig.client.post(&old_url).send().await.expect("POST").status(), 200);
    assert!(rig.opted_out(&bob, "bob@acme.example").await);
    // Repeating it writes nothing more.
    let events = rig.store.history(&bob).await.expect("history").len();
    assert_eq!(rig.client.post(&old_url).send().await.expect("POST").status(), 200);
    assert_eq!(rig.store.history(&bob).await.expect("history").len(), events);
}

fn base64_decode(text: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).expect("base64url");
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_clicks_replays_and_head_do_not_qualify_a_lead() {
    // The example config's scoring: a VP at a 1,000-person company fits for 55 points; three
    // counted clicks (5 each, 15 at most) take it past 65 to Marketing Qualified.
    let example = include_str!("../../../config/leadloop.toml");
    let scoring = &example
        [example.find("[scoring]").expect("[scoring]")..example.find("[lifecycle]").expect("[lifecycle]")];
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
    let base = format!("http://{addr}");
    let key = dir.path().join("links-key");
    std::fs::write(&key, "a test key that is at least 32 bytes long").expect("key");
    let text = format!(
        r#"{scoring}
[links]
public_listen = "{addr}"
public_url = "{base}"
signing_key_file = "{key}"
# Every replay reaches the engine: this test is about which clicks count, not rate limits.
limits = {{ per_token = 1000000, per_ip_per_minute = 1000000 }}

[email]
from = "leadloop <leadloop@x.example>"
deliver = "directory"
directory = "mail"

[[nurture.tracks]]
name = "welcome"
[[nurture.tracks.steps]]
after = "1d"
template = "nurture_example"
links = {{ guide = "https://www.example.com/guide", pricing = "https://www.example.com/pricing", story = "https://www.example.com/story" }}
"#,
        key = key.display()
    );
    let (config, _) = leadloop::config::load_str(std::path::Path::new("clicks.toml"), &text).expect("config");
    let clock = Arc::new(VirtualClock::new("2026-06-02T14:00:00Z".parse().expect("instant")));
    let options = leadloop::runtime::RuntimeOptions::new(clock.clone())
        .state_dir(Some(dir.path().join("state")))
        .parts(leadloop::runtime::Parts {
            email: true,
            links_listener: true,
            ..leadloop::runtime::Parts::ENGINE
        });
    let mut runtime = leadloop::runtime::Runtime::build(&config, options).await.expect("runtime");
    let _listener = runtime.spawn_links_listener(Default::default());
    let (store, engine, relay) =
        (Arc::clone(&runtime.store), runtime.engine.clone(), runtime.email.clone().expect("relay"));
    let mut lead = Lead::new("00Q1");
    lead.email = Some("vp@bigco.example".into());
    lead.title = Some("VP Marketing".into());
    lead.company_size = Some(1000);
    engine.upsert_lead(lead).await.expect("lead");
    let id = LeadId::new("00Q1");

    clock.advance(chrono::TimeDelta::days(1));
    engine.tick().await.expect("tick");
    let queued = store.outbox_ready(Channel::Email, clock.now(), 10).await.expect("outbox");
    let Effect::Email { vars, .. } = &queued[0].effect else { panic!("an email") };
    let link = |name: &str| vars["links"][name].as_str().expect("tracked link").to_owned();
    let (guide, pricing, story) = (link("guide"), link("pricing"), link("story"));
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let get = |url: String| {
        let client = client.clone();
        async move { assert_eq!(client.get(&url).send().await.expect("GET").status(), 302) }
    };
    let head = |url: String| {
        let client = client.clone();
        async move { assert_eq!(client.head(&url).send().await.expect("HEAD").status(), 302) }
    };
    let clicks = || async {
        let history = store.history(&id).await.expect("history");
        history
            .iter()
            .filter(
                |(_, e)| matches!(&e.kind, EventKind::Activity { activity, .. } if activity == "email_click"),
            )
            .count()
    };

    // Before delivery (the link cannot have been seen) and as it is delivered (a scanner
    // fetching every link): nothing counts.
    get(guide.clone()).await;
    assert_eq!(relay.run_once().await.expect("relay").sent, 1);
    clock.advance(chrono::TimeDelta::seconds(10));
    for url in [&guide, &pricing, &story] {
        for _ in 0..3 {
            get(url.clone()).await;
        }
    }
    // HEAD requests, whenever they come, record nothing.
    clock.advance(chrono::TimeDelta::minutes(5));
    for url in [&guide, &pricing, &story] {
        for _ in 0..3 {
            head(url.clone()).await;
        }
    }
    assert_eq!(clicks().await, 0);
    // A reader clicks the guide, and clicks it again and again within the hour: one click.
    for _ in 0..20 {
        get(guide.clone()).await;
    }
    clock.advance(chrono::TimeDelta::minutes(30));
    for _ in 0..20 {
        get(guide.clone()).await;
    }
    assert_eq!(clicks().await, 1);
    let record = store.lead(&id).await.expect("read").expect("lead");
    assert!((record.engagement_score - 5.0).abs() < 0.1, "engagement {}", record.engagement_score);
    assert_ne!(record.stage, Stage::MarketingQualified, "replays, HEAD and scanners qualified the lead");

    // The same reader following the two other links is real interest: that qualifies.
    get(pricing).await;
    get(story).await;
    let record = store.lead(&id).await.expect("read").expect("lead");
    assert_eq!(clicks().await, 3);
    assert_eq!(
        record.stage,
        Stage::MarketingQualified,
        "fit {} engagement {}",
        record.fit_score,
        record.engagement_score
    );
}
