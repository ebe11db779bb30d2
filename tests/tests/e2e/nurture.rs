//! Nurture end to end: a step falls due (virtual time), the relay delivers the email to the real
//! SMTP peer with a signed `List-Unsubscribe` URL and `List-Unsubscribe-Post`; following that
//! URL with the RFC 8058 one-click POST against the public listener opts the lead out — the
//! CRM update is queued, the address suppressed — and nothing more is sent. The engine, its
//! rules, the relay and the public listener are the daemon's, built by `leadloop::runtime`
//! from a config.

use std::sync::Arc;

use chrono::TimeDelta;
use leadloop::runtime::{Parts, Runtime, RuntimeOptions};
use leadloop_core::{Channel, Clock, Effect, Lead, LeadId, Timestamp, VirtualClock};
use leadloop_tests::pki::TestPki;
use leadloop_tests::smtp_peer::SmtpPeer;
use serde_json::{Value, json};

fn t0() -> Timestamp {
    // A Tuesday, 10:00 in New York.
    "2026-06-02T14:00:00Z".parse().expect("instant")
}

fn header<'a>(message: &'a Value, name: &str) -> Option<&'a str> {
    let data = message["data"].as_str()?;
    let head = data.split("\r\n\r\n").next().unwrap_or(data);
    head.lines().find_map(|line| line.strip_prefix(&format!("{name}: ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribe_from_a_delivered_nurture_email_stops_the_track() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::create(dir.path()).expect("pki");
    let peer = SmtpPeer::start(Some(&pki)).expect("smtp peer");
    let clock = Arc::new(VirtualClock::new(t0()));

    // The public URL names the listener's port, so the port is picked before the config.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
    let base = format!("http://{addr}");
    let key = dir.path().join("links-key");
    std::fs::write(&key, "a test key that is at least 32 bytes long").expect("key");
    let text = format!(
        r#"
[links]
public_listen = "{addr}"
public_url = "{base}"
signing_key_file = "{key}"

[nurture]
quiet_hours = {{ start = "20:00", end = "08:00" }}
[[nurture.tracks]]
name = "welcome"
[[nurture.tracks.steps]]
after = "1d"
template = "nurture_example"
[[nurture.tracks.steps]]
after = "2d"
template = "nurture_example"
[[nurture.tracks.steps]]
after = "3d"
template = "nurture_example"
"#,
        key = key.display()
    );
    let (mut config, _) =
        leadloop::config::load_str(std::path::Path::new("nurture.toml"), &text).expect("valid config");
    config.email =
        Some(leadloop_tests::smtp_peer::email_config(dir.path(), &pki, peer.port).expect("email config"));
    let options = RuntimeOptions::new(clock.clone()).state_dir(Some(dir.path().join("state"))).parts(Parts {
        email: true,
        links_listener: true,
        ..Parts::ENGINE
    });
    let mut runtime = Runtime::build(&config, options).await.expect("the daemon's runtime");
    let _links = runtime.spawn_links_listener(Default::default());
    let (store, engine) = (Arc::clone(&runtime.store), runtime.engine.clone());
    let relay = runtime.email.clone().expect("the email relay");

    let mut lead = Lead::new("00Q1");
    lead.first_name = Some("Ana".into());
    lead.email = Some("ana@acme.example".into());
    lead.time_zone = Some("America/New_York".into());
    engine.upsert_lead(lead).await.expect("lead");

    // The first step: 1 day later, delivered.
    clock.advance(TimeDelta::days(1));
    assert_eq!(engine.tick().await.expect("tick").enqueued.len(), 1);
    assert_eq!(relay.run_once().await.expect("relay").sent, 1);
    let messages = peer.messages().await.expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["rcpt_tos"], json!(["ana@acme.example"]));
    assert_eq!(header(&messages[0], "List-Unsubscribe-Post"), Some("List-Unsubscribe=One-Click"));
    let url = header(&messages[0], "List-Unsubscribe")
        .and_then(|h| h.strip_prefix('<'))
        .and_then(|h| h.strip_suffix('>'))
        .expect("List-Unsubscribe: <URL>")
        .to_owned();
    assert!(url.starts_with(&format!("{base}/l/")), "{url}");
    let data = messages[0]["data"].as_str().expect("data");
    assert!(data.contains("/l/"), "the body links the same unsubscribe URL");

    // A mail scanner fetching the link changes nothing; the one-click POST does.
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let page = client.get(&url).send().await.expect("GET");
    assert_eq!(page.status(), 200);
    assert!(!store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead").lead.opted_out);
    let answer = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);

    let record = store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
    assert!(record.lead.opted_out && record.nurture.tracks.is_empty());
    assert!(store.suppression("ana@acme.example").await.expect("read").is_some());
    let crm = store.outbox_ready(Channel::Crm, clock.now(), 10).await.expect("crm outbox");
    assert!(
        crm.iter().any(|e| matches!(&e.effect, Effect::CrmUpdate { lead_id, fields }
            if lead_id.as_str() == "00Q1" && fields.get("opted_out") == Some(&json!(true)))),
        "the CRM update is queued: {crm:?}"
    );

    // The rest of the track never goes out.
    for _ in 0..10 {
        clock.advance(TimeDelta::days(1));
        engine.tick().await.expect("tick");
        relay.run_once().await.expect("relay");
    }
    assert_eq!(peer.messages().await.expect("messages").len(), 1, "nothing more was sent");
    let pending = store.outbox_ready(Channel::Email, clock.now(), 10).await.expect("email outbox");
    assert!(pending.is_empty(), "{pending:?}");
}
