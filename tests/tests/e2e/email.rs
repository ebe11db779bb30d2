//! The email path against a real SMTP server (aiosmtpd on loopback, STARTTLS and AUTH): what
//! reps and executives actually receive, and what happens when the server misbehaves.
//! Retries run in virtual time: the relay's clock is moved, nothing sleeps.

use std::sync::Arc;

use chrono::TimeDelta;
use leadloop_core::{
    Channel, Clock, Effect, IdempotencyKey, Lead, LeadId, LeadRecord, OutboxEntry, OutboxState, Stage,
    VirtualClock,
};
use leadloop_engine::{EmailRelay, RelayConfig};
use leadloop_plugin::BuildContext;
use leadloop_smtp::{Deliver, EmailConfig, message_id, sample_vars};
use leadloop_store::{Batch, SledConfig, SledStore, Store};
use leadloop_tests::pki::TestPki;
use leadloop_tests::smtp_peer::SmtpPeer;
use serde_json::{Value, json};

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    clock: Arc<VirtualClock>,
    relay: EmailRelay,
    peer: SmtpPeer,
}

fn start_time() -> leadloop_core::Timestamp {
    "2026-03-02T14:00:00Z".parse().expect("instant")
}

fn email_config(dir: &std::path::Path, pki: &TestPki, port: u16) -> EmailConfig {
    leadloop_tests::smtp_peer::email_config(dir, pki, port).expect("write password")
}

async fn rig(config: RelayConfig, tls_peer: bool) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::create(dir.path()).expect("pki");
    let peer = SmtpPeer::start(tls_peer.then_some(&pki)).expect("smtp peer");
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path().join("state"))).expect("store");
    let clock = Arc::new(VirtualClock::new(start_time()));
    let cx = BuildContext { clock: clock.clone(), shutdown: Default::default() };
    let mailer = email_config(dir.path(), &pki, peer.port).build(&cx).expect("build mailer");
    let relay = EmailRelay::new(Arc::clone(&store), clock.clone(), mailer, config);
    Rig { _dir: dir, store, clock, relay, peer }
}

fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::from_parts(["sla", "00Q1", "1", name]).expect("valid key")
}

/// Queues an email as a policy would, with the lead `00Q1` whose address is `lead_email`.
async fn enqueue(rig: &Rig, key: &IdempotencyKey, kind: &str, template: &str, to: &[&str], lead_email: &str) {
    enqueue_with(rig, key, kind, template, to, lead_email, |_| {}).await;
}

/// As [`enqueue`], with the template variables changed by `edit` before the email is queued
/// (a queued email's variables are stored once and never rewritten).
async fn enqueue_with(
    rig: &Rig,
    key: &IdempotencyKey,
    kind: &str,
    template: &str,
    to: &[&str],
    lead_email: &str,
    edit: impl FnOnce(&mut Value),
) {
    let mut vars: Value = sample_vars(template);
    vars["lead"]["email"] = json!(lead_email);
    edit(&mut vars);
    let effect = Effect::Email {
        kind: kind.into(),
        template: template.into(),
        to: to.iter().map(|s| s.to_string()).collect(),
        cc: vec![],
        lead_id: Some(LeadId::new("00Q1")),
        vars,
        deliver_to: None,
    };
    let mut lead = Lead::new("00Q1");
    lead.email = Some(lead_email.into());
    let mut record = LeadRecord::new(lead, rig.clock.now());
    record.stage = Stage::Engaged;
    let mut batch = Batch::new();
    if rig.store.lead(&LeadId::new("00Q1")).await.expect("lead").is_none() {
        batch.put_lead(record);
    }
    batch.enqueue(OutboxEntry::new(key.clone(), effect, rig.clock.now()));
    rig.store.commit(batch).await.expect("commit");
}

async fn state(rig: &Rig, key: &IdempotencyKey) -> OutboxState {
    rig.store.outbox_entry(key).await.expect("read").expect("entry").state
}

/// Prints the fault line (issue 9, case 5): of the `keys` queued, how many the server never
/// received (lost) and how many extra copies it received (duplicated), and whether every copy
/// of a message carried the same Message-ID.
async fn fault_line(rig: &Rig, injected: &str, keys: &[IdempotencyKey]) -> (usize, usize) {
    let messages = rig.peer.messages().await.expect("messages");
    let ids: Vec<&str> = messages.iter().filter_map(|m| m["message_id"].as_str()).collect();
    let expected: Vec<String> = keys.iter().map(|k| message_id(k, "corp.example")).collect();
    let lost = expected.iter().filter(|id| !ids.contains(&id.as_str())).count();
    let same_ids = ids.iter().all(|id| expected.iter().any(|e| e == id));
    let duplicated = ids.len() - (expected.len() - lost);
    eprintln!("fault 5: {injected} — lost {lost}, duplicated {duplicated} (same Message-ID: {same_ids})");
    (lost, duplicated)
}

fn header<'a>(message: &'a Value, name: &str) -> Option<&'a str> {
    let data = message["data"].as_str()?;
    let head = data.split("\r\n\r\n").next().unwrap_or(data);
    head.lines().find_map(|line| line.strip_prefix(&format!("{name}: ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_goes_out_over_starttls_with_auth_multipart_and_stable_message_id() {
    let rig = rig(RelayConfig::default(), true).await;
    enqueue(&rig, &key("alert"), "sla.alert", "sla_alert", &["rep@corp.example"], "ana@acme.example").await;
    let report = rig.relay.run_once().await.expect("round");
    assert_eq!(report.sent, 1, "{report:?}");
    assert!(matches!(state(&rig, &key("alert")).await, OutboxState::Done { .. }));

    let messages = rig.peer.messages().await.expect("messages");
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message["tls"], true, "STARTTLS was used");
    assert_eq!(message["authenticated"], true);
    assert_eq!(message["rcpt_tos"], json!(["rep@corp.example"]));
    assert_eq!(message["message_id"], message_id(&key("alert"), "corp.example"));
    let data = message["data"].as_str().expect("data");
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(data.contains("Content-Type: text/plain") && data.contains("Content-Type: text/html"), "{data}");
    assert_eq!(header(message, "Subject"), Some("Contact Ana Lima (Acme): new lead for you"));
    assert_eq!(header(message, "Reply-To"), Some("sales-ops@corp.example"));
    assert!(header(message, "List-Unsubscribe").is_none(), "internal alerts carry no List-Unsubscribe");

    // The lead's history records the send.
    let history = rig.store.history(&LeadId::new("00Q1")).await.expect("history");
    assert!(history.iter().any(|(_, e)| e.kind.name() == "effect_done"), "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nurture_mail_carries_one_click_unsubscribe_headers() {
    let rig = rig(RelayConfig::default(), true).await;
    let nurture = IdempotencyKey::parse("nurture/00Q1/t/1").expect("valid key");
    enqueue(&rig, &nurture, "nurture", "nurture_example", &["ana@acme.example"], "ana@acme.example").await;
    assert_eq!(rig.relay.run_once().await.expect("round").sent, 1);
    let messages = rig.peer.messages().await.expect("messages");
    assert_eq!(
        header(&messages[0], "List-Unsubscribe"),
        Some("<https://leadloop.example.com/l/SAMPLE-UNSUBSCRIBE>")
    );
    assert_eq!(header(&messages[0], "List-Unsubscribe-Post"), Some("List-Unsubscribe=One-Click"));
    assert!(header(&messages[0], "From").is_some_and(|f| f.contains("marketing@corp.example")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nurture_mail_without_an_unsubscribe_link_is_never_sent() {
    let rig = rig(RelayConfig::default(), true).await;
    let nurture = IdempotencyKey::parse("nurture/00Q1/t/1").expect("valid key");
    // As nurture rules without [links] would queue it.
    enqueue_with(
        &rig,
        &nurture,
        "nurture",
        "nurture_example",
        &["ana@acme.example"],
        "ana@acme.example",
        |vars| {
            vars["unsubscribe_url"] = json!("");
        },
    )
    .await;
    let report = rig.relay.run_once().await.expect("round");
    assert_eq!((report.sent, report.failed), (0, 1), "{report:?}");
    match state(&rig, &nurture).await {
        OutboxState::Failed { reason, .. } => {
            assert!(reason.contains("without an unsubscribe link"), "{reason}")
        }
        other => panic!("not failed: {other:?}"),
    }
    assert!(rig.peer.messages().await.expect("messages").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failures_are_retried_with_backoff_and_nothing_is_lost() {
    let rig = rig(RelayConfig::default(), true).await;
    rig.peer.faults(json!({ "tempfail": 2, "tempfail_code": 451 })).await.expect("faults");
    enqueue(&rig, &key("alert"), "sla.alert", "sla_alert", &["rep@corp.example"], "ana@acme.example").await;
    let first = rig.relay.run_once().await.expect("round");
    assert_eq!((first.sent, first.retried), (0, 1));
    // Not due again until the backoff has passed.
    assert_eq!(rig.relay.run_once().await.expect("round").handled(), 0);
    let entry = rig.store.outbox_entry(&key("alert")).await.expect("read").expect("entry");
    assert!(entry.last_error.as_deref().is_some_and(|e| e.contains("451")), "{entry:?}");
    rig.clock.set(entry.next_attempt_at);
    assert_eq!(rig.relay.run_once().await.expect("round").retried, 1);
    let entry = rig.store.outbox_entry(&key("alert")).await.expect("read").expect("entry");
    rig.clock.set(entry.next_attempt_at);
    assert_eq!(rig.relay.run_once().await.expect("round").sent, 1);
    assert_eq!(rig.peer.messages().await.expect("messages").len(), 1);
    assert_eq!(rig.store.outbox_entry(&key("alert")).await.expect("read").expect("entry").attempts, 3);
    let counts = fault_line(&rig, "SMTP 451 at DATA ×2", &[key("alert")]).await;
    assert_eq!(counts, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_unavailable_421_is_retried() {
    let rig = rig(RelayConfig::default(), true).await;
    rig.peer.faults(json!({ "unavailable": 1 })).await.expect("faults");
    enqueue(&rig, &key("alert"), "sla.alert", "sla_alert", &["rep@corp.example"], "ana@acme.example").await;
    assert_eq!(rig.relay.run_once().await.expect("round").retried, 1);
    rig.clock.advance(TimeDelta::hours(1));
    assert_eq!(rig.relay.run_once().await.expect("round").sent, 1);
    assert_eq!(rig.peer.messages().await.expect("messages").len(), 1);
    let counts = fault_line(&rig, "SMTP 421 and close at MAIL ×1", &[key("alert")]).await;
    assert_eq!(counts, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_after_data_resends_once_with_the_same_message_id() {
    let rig = rig(RelayConfig::default(), true).await;
    rig.peer.faults(json!({ "drop_after_data": 1 })).await.expect("faults");
    enqueue(&rig, &key("alert"), "sla.alert", "sla_alert", &["rep@corp.example"], "ana@acme.example").await;
    // The server stored the message but we never heard 250: not marked sent.
    assert_eq!(rig.relay.run_once().await.expect("round").retried, 1);
    rig.clock.advance(TimeDelta::hours(1));
    assert_eq!(rig.relay.run_once().await.expect("round").sent, 1);
    rig.clock.advance(TimeDelta::hours(1));
    assert_eq!(rig.relay.run_once().await.expect("round").handled(), 0, "sent means done");
    let messages = rig.peer.messages().await.expect("messages");
    assert_eq!(messages.len(), 2, "one resend");
    assert_eq!(messages[0]["message_id"], messages[1]["message_id"]);
    assert_eq!(messages[0]["message_id"], message_id(&key("alert"), "corp.example"));
    let counts =
        fault_line(&rig, "connection dropped after \".\" (message stored, no 250) ×1", &[key("alert")]).await;
    assert_eq!(counts, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_bounce_moves_the_lead_to_graveyard_and_is_never_retried() {
    let rig = rig(RelayConfig::default(), true).await;
    rig.peer.faults(json!({ "reject": ["ana@acme.example"] })).await.expect("faults");
    let first = IdempotencyKey::parse("nurture/00Q1/t/1").expect("valid key");
    enqueue(&rig, &first, "nurture", "nurture_example", &["ana@acme.example"], "ana@acme.example").await;
    let report = rig.relay.run_once().await.expect("round");
    assert_eq!((report.failed, report.graveyarded), (1, 1), "{report:?}");
    match state(&rig, &first).await {
        OutboxState::Failed { reason, .. } => assert!(reason.contains("550"), "{reason}"),
        other => panic!("expected failed, got {other:?}"),
    }
    let lead = rig.store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
    assert_eq!(lead.stage, Stage::Graveyard);
    assert!(rig.store.suppression("ANA@acme.example").await.expect("read").is_some());
    // Never retried, however long we wait.
    rig.clock.advance(TimeDelta::days(30));
    assert_eq!(rig.relay.run_once().await.expect("round").handled(), 0);
    // And the suppressed address gets nothing more, even when the server would accept it.
    rig.peer.reset().await.expect("reset");
    let second = IdempotencyKey::parse("nurture/00Q1/t/2").expect("valid key");
    enqueue(&rig, &second, "nurture", "nurture_example", &["ana@acme.example"], "ana@acme.example").await;
    assert_eq!(rig.relay.run_once().await.expect("round").dropped, 1);
    assert!(matches!(state(&rig, &second).await, OutboxState::Dropped { .. }));
    assert!(rig.peer.messages().await.expect("messages").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rep_address_bounce_fails_the_alert_but_leaves_the_lead_alone() {
    let rig = rig(RelayConfig::default(), true).await;
    rig.peer.faults(json!({ "reject": ["gone@corp.example"] })).await.expect("faults");
    enqueue(&rig, &key("alert"), "sla.alert", "sla_alert", &["gone@corp.example"], "ana@acme.example").await;
    let report = rig.relay.run_once().await.expect("round");
    assert_eq!((report.failed, report.graveyarded), (1, 0));
    assert_eq!(
        rig.store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead").stage,
        Stage::Engaged
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_recipient_address_is_refused_not_retried() {
    let rig = rig(RelayConfig::default(), true).await;
    enqueue(
        &rig,
        &key("alert"),
        "sla.alert",
        "sla_alert",
        &["not an address\r\nBcc: x@y.example"],
        "ana@acme.example",
    )
    .await;
    assert_eq!(rig.relay.run_once().await.expect("round").failed, 1);
    match state(&rig, &key("alert")).await {
        OutboxState::Failed { reason, .. } => assert!(reason.contains("invalid address"), "{reason}"),
        other => panic!("expected failed, got {other:?}"),
    }
    assert!(rig.peer.messages().await.expect("messages").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_required_a_server_without_it_gets_nothing() {
    // This peer offers no STARTTLS; the default config requires it, so nothing goes out in
    // plain text and the mail waits in the outbox.
    let rig = rig(RelayConfig::default(), false).await;
    enqueue(&rig, &key("alert"), "sla.alert", "sla_alert", &["rep@corp.example"], "ana@acme.example").await;
    let report = rig.relay.run_once().await.expect("round");
    assert_eq!((report.sent, report.retried), (0, 1), "{report:?}");
    assert!(rig.peer.messages().await.expect("messages").is_empty());
    assert!(state(&rig, &key("alert")).await.is_pending());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_mail_back_without_counting_attempts() {
    let config = RelayConfig { rate_per_second: Some(2.0), ..RelayConfig::default() };
    let rig = rig(config, true).await;
    for i in 0..5 {
        enqueue(
            &rig,
            &key(&format!("m{i}")),
            "sla.alert",
            "sla_alert",
            &["rep@corp.example"],
            "ana@acme.example",
        )
        .await;
    }
    let first = rig.relay.run_once().await.expect("round");
    assert_eq!((first.sent, first.throttled), (2, 3));
    // No time has passed: still nothing to spend.
    assert_eq!(rig.relay.run_once().await.expect("round").sent, 0);
    rig.clock.advance(TimeDelta::seconds(1));
    assert_eq!(rig.relay.run_once().await.expect("round").sent, 2);
    rig.clock.advance(TimeDelta::seconds(1));
    assert_eq!(rig.relay.run_once().await.expect("round").sent, 1);
    assert_eq!(rig.peer.messages().await.expect("messages").len(), 5);
    for i in 0..5 {
        let entry = rig.store.outbox_entry(&key(&format!("m{i}"))).await.expect("read").expect("entry");
        assert_eq!(entry.attempts, 1, "throttling is not an attempt");
    }
    assert_eq!(rig.store.outbox_pending(Channel::Email).await.expect("pending").0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_delivery_writes_one_eml_per_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("outbox");
    let config = EmailConfig {
        deliver: Deliver::Directory,
        from: "leadloop <leadloop@corp.example>".into(),
        reply_to: None,
        nurture_from: None,
        nurture_reply_to: None,
        templates_dir: None,
        directory: Some(out.clone()),
        message_id_domain: None,
        smtp: None,
    };
    let clock = Arc::new(VirtualClock::new(start_time()));
    let mailer = config.build(&BuildContext { clock, shutdown: Default::default() }).expect("build");
    let email = leadloop_core::connector::OutgoingEmail {
        key: key("alert"),
        kind: "sla.alert".into(),
        template: "sla_alert".into(),
        to: vec!["rep@corp.example".into()],
        cc: vec![],
        vars: sample_vars("sla_alert"),
        deliver_to: None,
    };
    use leadloop_core::Mailer;
    mailer.send(&email).await.expect("first");
    mailer.send(&email).await.expect("again");
    let files: Vec<_> =
        std::fs::read_dir(&out).expect("dir").filter_map(Result::ok).map(|e| e.path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).expect("eml");
    assert!(text.contains(&message_id(&key("alert"), "corp.example")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_keeps_mail_waiting() {
    let rig = rig(RelayConfig::default(), true).await;
    enqueue(&rig, &key("alert"), "sla.alert", "sla_alert", &["rep@corp.example"], "ana@acme.example").await;
    // Point a second relay at a port nobody listens on.
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::create(dir.path()).expect("pki");
    let dead_port = leadloop_tests::smtp_peer::free_port();
    let cx = BuildContext { clock: rig.clock.clone(), shutdown: Default::default() };
    let mailer = email_config(dir.path(), &pki, dead_port).build(&cx).expect("build needs no server");
    let relay = EmailRelay::new(Arc::clone(&rig.store), rig.clock.clone(), mailer, RelayConfig::default());
    let report = relay.run_once().await.expect("round");
    assert_eq!((report.sent, report.retried), (0, 1));
    let entry = rig.store.outbox_entry(&key("alert")).await.expect("read").expect("entry");
    assert!(entry.state.is_pending());
    assert!(entry.last_error.as_deref().is_some_and(|e| e.contains("cannot connect")), "{entry:?}");
    // The real server, later: it goes out.
    rig.clock.set(entry.next_attempt_at);
    assert_eq!(rig.relay.run_once().await.expect("round").sent, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_out_lead_gets_no_mail() {
    let rig = rig(RelayConfig::default(), true).await;
    let nurture = IdempotencyKey::parse("nurture/00Q1/t/1").expect("valid key");
    enqueue(&rig, &nurture, "nurture", "nurture_example", &["ana@acme.example"], "ana@acme.example").await;
    let mut record = rig.store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
    record.lead.opted_out = true;
    let mut batch = Batch::new();
    batch.put_lead(record);
    rig.store.commit(batch).await.expect("commit");
    assert_eq!(rig.relay.run_once().await.expect("round").dropped, 1);
    match state(&rig, &nurture).await {
        OutboxState::Dropped { reason, .. } => assert!(reason.contains("ana@acme.example"), "{reason}"),
        other => panic!("expected dropped, got {other:?}"),
    }
    assert!(rig.peer.messages().await.expect("messages").is_empty());
}
