//! Nurture through the binary's pieces: nurture mail carries signed unsubscribe and tracked
//! links; a tracked link records an `email_click` that scoring counts and redirects to the
//! signed target (a forged target is refused); `nurture preview` plans the sends in the lead's
//! zone; `[nurture]` problems are reported with file, line and key.

use std::sync::Arc;
use std::time::Duration;

use leadloop::links::{LinkRules, Signer};
use leadloop_core::sla::{SlaConfig, SlaRules};
use leadloop_core::{Channel, Clock, Effect, Lead, LeadId, OutboxState, VirtualClock};
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

#[tokio::test]
async fn tracked_links_record_a_click_and_redirect_to_the_signed_target() {
    let path = std::path::Path::new("t.toml");
    let (config, _) = leadloop::config::load_str(path, CONFIG).expect("valid config");
    let dir = tempfile::tempdir().expect("tempdir");
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
    std::fs::write(&config, CONFIG).expect("write config");
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
    std::fs::write(&config, CONFIG).expect("write config");
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
