//! The blast-radius guard end to end, in virtual time, with the daemon's runtime (built by
//! `leadloop::runtime` from a config) and the real SMTP peer:
//! - a bounce storm (the peer answers 550 for the list's addresses) pauses nurture email at
//!   the threshold, not before, alerts the ops address, and holds the rest; resumed, the
//!   held mail goes out once each;
//! - a surge (more nurture email queued within an hour than allowed) waits for approval,
//!   shows how many and a sample, and goes after `approve`;
//! - a pause survives a restart, and nothing queued while paused is lost (each Message-ID
//!   reaches the peer exactly once after `resume`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::TimeDelta;
use leadloop::runtime::{Parts, Runtime, RuntimeOptions};
use leadloop_core::guard::PauseScope;
use leadloop_core::{Actor, Clock, IdempotencyKey, Lead, Timestamp, VirtualClock};
use leadloop_tests::pki::TestPki;
use leadloop_tests::smtp_peer::SmtpPeer;
use serde_json::{Value, json};

fn t0() -> Timestamp {
    // A Tuesday, 10:00 in New York.
    "2026-06-02T14:00:00Z".parse().expect("instant")
}

fn ops() -> Actor {
    Actor::Admin { who: "ops (test)".into() }
}

/// A nurture rig: one track whose first step is a day after enrolment, the `[guard]` given.
struct Rig {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    config: leadloop::config::Config,
    clock: Arc<VirtualClock>,
    peer: SmtpPeer,
}

impl Rig {
    fn new(guard: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::create(dir.path()).expect("pki");
        let peer = SmtpPeer::start(Some(&pki)).expect("smtp peer");
        let key = dir.path().join("links-key");
        std::fs::write(&key, "a test key that is at least 32 bytes long").expect("key");
        let text = format!(
            r#"
[links]
public_listen = "127.0.0.1:0"
public_url = "https://links.corp.example"
signing_key_file = "{key}"

[outbox]
concurrency = 1

[guard]
{guard}

[nurture]
[[nurture.tracks]]
name = "welcome"
[[nurture.tracks.steps]]
after = "1d"
template = "nurture_example"
"#,
            key = key.display()
        );
        let (mut config, _) =
            leadloop::config::load_str(Path::new("guard.toml"), &text).expect("valid config");
        config.email =
            Some(leadloop_tests::smtp_peer::email_config(dir.path(), &pki, peer.port).expect("email config"));
        let state = dir.path().join("state");
        Self { _dir: dir, state, config, clock: Arc::new(VirtualClock::new(t0())), peer }
    }

    async fn runtime(&self) -> Runtime {
        let options = RuntimeOptions::new(self.clock.clone())
            .state_dir(Some(self.state.clone()))
            .parts(Parts { email: true, ..Parts::ENGINE });
        Runtime::build(&self.config, options).await.expect("the daemon's runtime")
    }

    /// Messages at the peer, per recipient.
    async fn delivered(&self) -> Vec<Value> {
        self.peer.messages().await.expect("messages")
    }
}

async fn enrol(runtime: &Runtime, ids: impl IntoIterator<Item = String>, domain: &str) {
    for id in ids {
        let mut lead = Lead::new(id.as_str());
        lead.first_name = Some("Ana".into());
        lead.email = Some(format!("{}@{domain}", id.to_lowercase()));
        lead.time_zone = Some("America/New_York".into());
        runtime.engine.upsert_lead(lead).await.expect("lead");
    }
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i:03}")).collect()
}

/// Message-IDs at the peer with how many times each arrived, for recipients in `domain`.
fn message_ids(messages: &[Value], domain: &str) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for message in messages {
        let to_domain = message["rcpt_tos"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a.as_str().is_some_and(|a| a.ends_with(&format!("@{domain}"))));
        if to_domain {
            *ids.entry(message["message_id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
    }
    ids
}

/// The Message-ID the relay gives the nurture step of `lead`.
fn nurture_message_ids(runtime_keys: &[IdempotencyKey]) -> Vec<String> {
    runtime_keys.iter().map(|k| leadloop_smtp::message_id(k, "corp.example")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_storm_pauses_nurture_at_the_threshold_not_before_and_resume_loses_nothing() {
    let rig = Rig::new("max_bounces = 5\nbounce_window = \"3days\"\nops_address = \"ops@corp.example\"");
    let runtime = rig.runtime().await;
    let (engine, relay, guard) =
        (runtime.engine.clone(), runtime.email.clone().expect("relay"), runtime.guard.clone());
    let bad = ids("00QB", 0..20);
    rig.peer
        .faults(json!({ "reject": bad.iter().map(|id| format!("{}@bad.example", id.to_lowercase())).collect::<Vec<_>>() }))
        .await
        .expect("faults");

    // Four bounces: under the threshold, nothing paused; good mail still goes.
    enrol(&runtime, bad[..4].to_vec(), "bad.example").await;
    enrol(&runtime, ids("00QG", 0..2), "good.example").await;
    rig.clock.advance(TimeDelta::days(1));
    assert_eq!(engine.tick().await.expect("tick").enqueued.len(), 6);
    let round = relay.run_once().await.expect("relay");
    assert_eq!((round.failed, round.sent, round.held), (4, 2, 0), "{round:?}");
    assert!(guard.state().await.expect("guard").nurture.is_none(), "paused before the threshold");

    // Sixteen more bad addresses: the fifth bounce pauses nurture; the fifteen after it are
    // held, not sent; good mail queued with them waits too.
    rig.clock.advance(TimeDelta::minutes(10));
    enrol(&runtime, bad[4..].to_vec(), "bad.example").await;
    enrol(&runtime, ids("00QH", 0..3), "good.example").await;
    rig.clock.advance(TimeDelta::days(1));
    let queued = engine.tick().await.expect("tick").enqueued;
    assert_eq!(queued.len(), 19);
    let round = relay.run_once().await.expect("relay");
    assert_eq!(round.failed, 1, "exactly one more bounce: the fifth: {round:?}");
    assert_eq!((round.sent, round.held), (0, 18), "{round:?}");
    let state = guard.state().await.expect("guard");
    let pause = state.nurture.expect("nurture paused by the bounce guard");
    assert!(pause.reason.contains("5 hard bounces"), "{}", pause.reason);
    assert_eq!(pause.by, Actor::Rule { name: "guard.bounces".into() });
    assert!(state.email.is_none(), "only nurture is paused");

    // The alert to the ops address is internal mail: it goes while nurture is paused.
    let round = relay.run_once().await.expect("relay");
    assert_eq!((round.sent, round.held), (1, 0), "{round:?}");
    let messages = rig.delivered().await;
    let alert = messages
        .iter()
        .find(|m| m["rcpt_tos"] == json!(["ops@corp.example"]))
        .expect("an alert to the ops address");
    assert!(alert["data"].as_str().unwrap_or_default().contains("nurture email paused"), "{alert}");
    let held = guard.held(0).await.expect("held");
    assert_eq!(held.paused_email, 18);
    // Held mail is not retried or given up while paused, even past nurture_max_age.
    rig.clock.advance(TimeDelta::days(5));
    assert_eq!(relay.run_once().await.expect("relay").handled(), 0);

    // Fixed list, resumed: every held message goes out once, with its own Message-ID.
    rig.peer.faults(json!({ "reject": [] })).await.expect("faults");
    assert_eq!(guard.resume(&[PauseScope::Nurture], ops()).await.expect("resume"), 18);
    let round = relay.run_once().await.expect("relay");
    assert_eq!((round.sent, round.failed, round.held, round.dropped), (18, 0, 0, 0), "{round:?}");
    let messages = rig.delivered().await;
    let expected = nurture_message_ids(&queued[1..]);
    let mut at_peer = message_ids(&messages, "bad.example");
    at_peer.extend(message_ids(&messages, "good.example"));
    for id in &expected {
        assert_eq!(at_peer.get(id), Some(&1), "{id} delivered once after resume");
    }
    drop(runtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surge_waits_for_approval_then_goes() {
    let rig = Rig::new("surge_per_hour = 10\nops_address = \"ops@corp.example\"");
    let runtime = rig.runtime().await;
    let (engine, relay, guard) =
        (runtime.engine.clone(), runtime.email.clone().expect("relay"), runtime.guard.clone());

    // Ten in an hour is allowed.
    enrol(&runtime, ids("00QA", 0..10), "ok.example").await;
    rig.clock.advance(TimeDelta::days(1));
    assert_eq!(engine.tick().await.expect("tick").enqueued.len(), 10);
    assert!(guard.state().await.expect("guard").surge.is_none(), "ten is not a surge");
    assert_eq!(relay.run_once().await.expect("relay").sent, 10);

    // Two hours on, a new batch of 25 (a sync, a new track): the eleventh within the hour
    // starts the hold, and the whole batch waits, the first ten of it included.
    rig.clock.advance(TimeDelta::hours(2));
    enrol(&runtime, ids("00QS", 0..25), "surge.example").await;
    rig.clock.advance(TimeDelta::days(1));
    let queued = engine.tick().await.expect("tick").enqueued;
    assert_eq!(queued.len(), 25);
    let surge = guard.state().await.expect("guard").surge.expect("a surge hold");
    assert!(surge.queued >= 11, "{surge:?}");
    let round = relay.run_once().await.expect("relay");
    assert_eq!(round.held, 25, "{round:?}");
    assert_eq!(round.sent, 1, "only the ops alert goes: {round:?}");
    assert!(message_ids(&rig.delivered().await, "surge.example").is_empty(), "no surge mail went out");

    // `approve --dry-run`: how many and a sample.
    let held = guard.held(3).await.expect("held");
    assert_eq!((held.surge, held.sample.len()), (25, 3));
    assert!(held.sample[0].to[0].ends_with("@surge.example"), "{:?}", held.sample);
    // Waiting changes nothing: no retry, no give-up.
    rig.clock.advance(TimeDelta::hours(6));
    assert_eq!(relay.run_once().await.expect("relay").handled(), 0);

    assert_eq!(guard.approve(ops()).await.expect("approve"), 25);
    assert!(guard.state().await.expect("guard").surge.is_none());
    let round = relay.run_once().await.expect("relay");
    assert_eq!((round.sent, round.held), (25, 0), "{round:?}");
    let at_peer = message_ids(&rig.delivered().await, "surge.example");
    for id in nurture_message_ids(&queued) {
        assert_eq!(at_peer.get(&id), Some(&1), "{id} delivered once after approval");
    }

    // Another surge the next day, rejected: dropped by that decision, recorded, never sent.
    rig.clock.advance(TimeDelta::hours(2));
    enrol(&runtime, ids("00QR", 0..12), "rejected.example").await;
    rig.clock.advance(TimeDelta::days(1));
    let rejected = engine.tick().await.expect("tick").enqueued;
    assert_eq!(relay.run_once().await.expect("relay").held, 12);
    assert_eq!(guard.reject(ops()).await.expect("reject"), 12);
    assert_eq!(relay.run_once().await.expect("relay").handled(), 0);
    for key in &rejected {
        let entry = runtime.store.outbox_entry(key).await.expect("read").expect("entry");
        assert!(
            matches!(&entry.state, leadloop_core::OutboxState::Dropped { reason, .. } if reason.contains("surge rejected by admin ops (test)")),
            "{:?}",
            entry.state
        );
    }
    assert!(message_ids(&rig.delivered().await, "rejected.example").is_empty());
    drop(runtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_a_restart_and_nothing_queued_while_paused_is_lost() {
    let rig = Rig::new("");
    let mut queued = Vec::new();
    {
        let runtime = rig.runtime().await;
        let (engine, relay, guard) =
            (runtime.engine.clone(), runtime.email.clone().expect("relay"), runtime.guard.clone());
        guard.pause(&[PauseScope::Email], ops(), "template bug").await.expect("pause");
        enrol(&runtime, ids("00QP", 0..6), "paused.example").await;
        rig.clock.advance(TimeDelta::days(1));
        queued.extend(engine.tick().await.expect("tick").enqueued);
        assert_eq!(queued.len(), 6);
        // An SLA alert to a rep is internal mail: exempt (`exempt_internal`, the default).
        let alert = leadloop_core::Effect::Email {
            kind: "sla.alert".into(),
            template: "sla_alert".into(),
            to: vec!["rep@corp.example".into()],
            cc: vec![],
            lead_id: None,
            vars: leadloop_smtp::sample_vars("sla_alert"),
            deliver_to: None,
        };
        let key = IdempotencyKey::parse("sla/00QP000/1/alert").expect("key");
        let mut batch = leadloop_store::Batch::new();
        batch.enqueue(leadloop_core::OutboxEntry::new(key, alert, rig.clock.now()));
        runtime.store.commit(batch).await.expect("commit");
        let round = relay.run_once().await.expect("relay");
        assert_eq!((round.sent, round.held), (1, 6), "{round:?}");
        let internal = rig.delivered().await;
        assert_eq!(internal.len(), 1);
        assert_eq!(internal[0]["rcpt_tos"], json!(["rep@corp.example"]));
        // Three more leads enrolled while paused, due after the restart.
        rig.clock.advance(TimeDelta::hours(1));
        enrol(&runtime, ids("00QQ", 0..3), "paused.example").await;
    }
    // Restarted on the same state: still paused.
    let runtime = rig.runtime().await;
    let (engine, relay, guard) =
        (runtime.engine.clone(), runtime.email.clone().expect("relay"), runtime.guard.clone());
    let state = guard.state().await.expect("guard");
    assert_eq!(state.email.as_ref().map(|p| p.reason.as_str()), Some("template bug"));
    rig.clock.advance(TimeDelta::days(1));
    queued.extend(engine.tick().await.expect("tick").enqueued);
    assert_eq!(queued.len(), 9);
    let round = relay.run_once().await.expect("relay");
    assert_eq!((round.sent, round.held), (0, 3), "{round:?}");
    assert_eq!(rig.delivered().await.len(), 1, "nothing but the SLA alert went out while paused");
    assert_eq!(guard.held(0).await.expect("held").paused_email, 9);

    // Resumed (a week later: a pause does not use up nurture_max_age): all nine, once each.
    rig.clock.advance(TimeDelta::days(7));
    assert_eq!(guard.resume(&[PauseScope::Email], ops()).await.expect("resume"), 9);
    let round = relay.run_once().await.expect("relay");
    assert_eq!((round.sent, round.failed, round.dropped), (9, 0, 0), "{round:?}");
    let at_peer = message_ids(&rig.delivered().await, "paused.example");
    assert_eq!(at_peer.len(), 9);
    for id in nurture_message_ids(&queued) {
        assert_eq!(at_peer.get(&id), Some(&1), "{id} delivered exactly once");
    }
    drop(runtime);
}
