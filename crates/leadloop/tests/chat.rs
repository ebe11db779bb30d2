//! Chat end to end: the daemon's runtime (built from a config, as `leadloop run` builds it)
//! posts the SLA ladder's messages to a Slack stand-in and to a Teams Workflows webhook
//! stand-in, and takes Slack's signed button clicks at its public listener. Time is virtual:
//! the chat relay's rounds are stepped by hand and the clock moved to each retry.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use leadloop::runtime::{Parts, Runtime, RuntimeOptions};
use leadloop_chat_standin::{Posted, StandIn};
use leadloop_core::{
    Actor, Channel, Clock, Effect, EventKind, IdempotencyKey, Lead, LeadId, OutboxState, PersonId,
    VirtualClock,
};

const TOKEN: &str = "xoxb-stand-in-token";
const SIGNING: &str = "8f742231b10e8888abcd99yyyzzz85a5";

struct Rig {
    _dir: tempfile::TempDir,
    runtime: Runtime,
    slack: StandIn,
    clock: Arc<VirtualClock>,
    /// The public listener's base URL.
    base: String,
}

/// A rep (005A, `rep@x.example`, Slack user U0REP) and their manager; a ladder whose alert and
/// reminder go to Slack only and whose manager step goes by Slack and email. `chat` is the
/// rest of the `[chat]` table (its `default_channels`, `fallback_after`, …).
async fn rig(chat: &str, steps: &str, teams: bool) -> Rig {
    let slack = StandIn::start(TOKEN).await.expect("stand-in");
    slack.add_user("U0REP", "rep@x.example");
    slack.add_user("U0MGR", "mgr@x.example");
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let key = write("link-key", "a test key that is at least 32 bytes long");
    let token = write("slack-token", TOKEN);
    let signing = write("slack-signing", SIGNING);
    let webhook = write("teams-webhook", &slack.teams_url("sales"));
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
    let base = format!("http://{addr}");
    let teams =
        if teams { format!("[chat.teams]\nwebhook_url_file = \"{webhook}\"\n") } else { String::new() };
    let text = format!(
        r#"
[[people]]
id = "005A"
email = "rep@x.example"
name = "Rep A"
manager = "005M"

[[people]]
id = "005M"
email = "mgr@x.example"
name = "Manager M"
role = "manager"

[links]
public_listen = "{addr}"
public_url = "{base}"
signing_key_file = "{key}"

[chat]
{chat}

[chat.slack]
api_url = "{api}"
bot_token_file = "{token}"
signing_secret_file = "{signing}"

{teams}

[[sla.policy]]
name = "chat"
{steps}
"#,
        api = slack.api_url(),
    );
    let (config, _) =
        leadloop::config::load_str(std::path::Path::new("chat.toml"), &text).expect("valid config");
    let clock = Arc::new(VirtualClock::new("2026-03-02T14:00:00Z".parse().expect("instant")));
    let options = RuntimeOptions::new(clock.clone()).state_dir(Some(dir.path().join("state"))).parts(Parts {
        chat: true,
        links_listener: true,
        ..Parts::ENGINE
    });
    let mut runtime = Runtime::build(&config, options).await.expect("the daemon's runtime");
    let _listener = runtime.spawn_links_listener(Default::default());
    Rig { _dir: dir, runtime, slack, clock, base }
}

const SLACK_LADDER: &str = r#"
[[sla.policy.step]]
name = "alert"
after = "0s"
kind = "sla.alert"
template = "sla_alert"
to = ["rep"]
channels = ["slack"]

[[sla.policy.step]]
name = "reminder"
after = "24h"
kind = "sla.reminder"
template = "sla_reminder"
to = ["rep"]
channels = ["slack"]
"#;

impl Rig {
    async fn hand_off(&self) {
        let mut lead = Lead::new("00Q1");
        lead.first_name = Some("Ana".into());
        lead.company = Some("Acme".into());
        lead.status = Some("Open - Not Contacted".into());
        lead.owner_id = Some(PersonId::new("005A"));
        self.runtime.engine.upsert_lead(lead).await.expect("lead");
    }

    async fn relay_round(&self) -> leadloop_engine::ChatReport {
        self.runtime.chat.as_ref().expect("a chat relay").run_once().await.expect("round")
    }

    async fn entry(&self, key: &str) -> Option<leadloop_core::OutboxEntry> {
        self.runtime.store.outbox_entry(&IdempotencyKey::parse(key).expect("key")).await.expect("read")
    }

    async fn ready(&self, channel: Channel) -> Vec<String> {
        let ready = self.runtime.store.outbox_ready(channel, self.clock.now(), 100).await.expect("outbox");
        ready.into_iter().map(|e| e.key.to_string()).collect()
    }

    async fn click(&self, message: &Posted, action: &str, secret: &str, at: i64) -> (u16, String) {
        self.slack.click(&self.base, secret, message, action, "U0REP", at).await.expect("click sent")
    }

    async fn open_handoff(&self) -> bool {
        let lead = self.runtime.store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
        lead.handoff.is_some()
    }
}

#[tokio::test]
async fn the_alert_reaches_the_reps_slack_with_buttons_and_a_signed_click_accepts_and_stops_the_ladder() {
    let rig = rig("default_channels = [\"email\", \"slack\"]", SLACK_LADDER, false).await;
    rig.hand_off().await;
    // The alert is a chat message only (the step names Slack alone), with the email as its
    // fallback.
    assert_eq!(rig.ready(Channel::Chat).await, ["sla/00Q1/1/alert/slack"]);
    assert!(rig.ready(Channel::Email).await.is_empty());
    assert_eq!(rig.relay_round().await.posted, 1);
    let messages = rig.slack.messages();
    assert_eq!(messages.len(), 1);
    let alert = &messages[0];
    assert_eq!(alert.user, "U0REP", "posted to the rep's Slack user, found by email");
    assert_eq!(alert.text, "New lead for you: Ana (Acme)");
    let buttons: Vec<&str> = alert.blocks[alert.blocks.as_array().expect("blocks").len() - 1]["elements"]
        .as_array()
        .expect("buttons")
        .iter()
        .filter_map(|b| b["action_id"].as_str())
        .collect();
    assert_eq!(buttons, ["accept", "recycle", "disqualify"]);
    assert!(alert.blocks.to_string().contains("the reminder step follows at"), "the SLA deadline is shown");

    let (status, _) = rig.click(alert, "accept", SIGNING, rig.clock.now().timestamp()).await;
    assert_eq!(status, 200);
    assert!(!rig.open_handoff().await, "the hand-off is answered");
    let lead = rig.runtime.store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
    assert_eq!(lead.lead.status.as_deref(), Some("Working - Contacted"));
    // Recorded as the person the Slack user is.
    let history = rig.runtime.store.history(&LeadId::new("00Q1")).await.expect("history");
    let by = history.iter().find_map(|(_, e)| match &e.kind {
        EventKind::StatusChanged { to, .. } if to.as_deref() == Some("Working - Contacted") => {
            Some(e.actor.clone())
        }
        _ => None,
    });
    assert_eq!(by, Some(Actor::Sales { person: Some(PersonId::new("005A")), address: None }));
    assert_eq!(rig.ready(Channel::Crm).await, ["sla/00Q1/1/answer/accept"], "the answer goes to the CRM");
    // The ladder stopped: no reminder a day later.
    rig.clock.advance(TimeDelta::hours(25));
    rig.runtime.engine.tick().await.expect("tick");
    assert!(rig.ready(Channel::Chat).await.is_empty(), "no reminder after the answer");
    // The message shows the answer (updated after the click was acknowledged).
    let mut updated = None;
    for _ in 0..200 {
        updated = rig.slack.messages()[0].updated.clone();
        if updated.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(updated.as_deref(), Some("Accepted by rep@x.example"));
}

#[tokio::test]
async fn a_forged_or_stale_click_is_refused_with_401_and_changes_nothing() {
    let rig = rig("default_channels = [\"slack\"]", SLACK_LADDER, false).await;
    rig.hand_off().await;
    rig.relay_round().await;
    let alert = rig.slack.messages().pop().expect("the alert");
    let now = rig.clock.now().timestamp();
    for (what, secret, at) in [
        ("another secret", "not the signing secret", now),
        ("five minutes and a second old", SIGNING, now - 301),
        ("from the future", SIGNING, now + 301),
    ] {
        let (status, _) = rig.click(&alert, "accept", secret, at).await;
        assert_eq!(status, 401, "{what}");
    }
    // A body changed after signing.
    let payload = format!("payload={}", "%7B%22type%22%3A%22block_actions%22%7D");
    let response = reqwest::Client::new()
        .post(format!("{}/slack/interactivity", rig.base))
        .header("X-Slack-Request-Timestamp", now.to_string())
        .header("X-Slack-Signature", leadloop_chat_standin::signature(SIGNING, now, b"payload=other"))
        .body(payload)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    assert!(rig.open_handoff().await, "nothing answered");
    assert!(rig.ready(Channel::Crm).await.is_empty(), "nothing written back");
    assert_eq!(rig.slack.messages()[0].updated, None);
    // And the genuine click still works afterwards.
    assert_eq!(rig.click(&alert, "recycle", SIGNING, now).await.0, 200);
    assert!(!rig.open_handoff().await);
}

#[tokio::test]
async fn a_429_storm_delays_the_alert_by_retry_after_but_loses_nothing() {
    // A wait for the fallback longer than the storm: this is about delay, not fallback.
    let rig = rig("default_channels = [\"slack\"]\nfallback_after = \"2h\"", SLACK_LADDER, false).await;
    // Longer than the relay's own backoff (30 s doubling), so only Retry-After explains the wait.
    rig.slack.storm(3, 600);
    rig.hand_off().await;
    let key = "sla/00Q1/1/alert/slack";
    let mut rounds = 0;
    loop {
        let before = rig.clock.now();
        let report = rig.relay_round().await;
        rounds += 1;
        if report.posted == 1 {
            break;
        }
        assert_eq!(report.retried, 1, "round {rounds}: {report:?}");
        let entry = rig.entry(key).await.expect("entry");
        assert!(entry.state.is_pending());
        // Never sooner than Slack's Retry-After.
        assert!(entry.next_attempt_at - before >= TimeDelta::seconds(600), "round {rounds}: {entry:?}");
        rig.clock.set(entry.next_attempt_at);
        assert!(rounds < 10, "never posted");
    }
    assert_eq!(rounds, 4, "three 429s, then posted");
    assert_eq!(rig.slack.throttled(), 3);
    assert_eq!(rig.slack.messages().len(), 1, "posted once");
    assert!(matches!(rig.entry(key).await.expect("entry").state, OutboxState::Done { .. }));
    assert!(rig.ready(Channel::Email).await.is_empty(), "no fallback for a delay");
}

#[tokio::test]
async fn a_slack_outage_falls_back_to_the_email_after_the_configured_wait() {
    let rig = rig("default_channels = [\"slack\"]\nfallback_after = \"10min\"", SLACK_LADDER, false).await;
    rig.slack.outage(true);
    let start = rig.clock.now();
    rig.hand_off().await;
    let key = "sla/00Q1/1/alert/slack";
    let mut fell_back_at = None;
    for _ in 0..20 {
        let report = rig.relay_round().await;
        if report.fell_back == 1 {
            fell_back_at = Some(rig.clock.now());
            break;
        }
        assert_eq!(report.retried, 1);
        assert!(rig.ready(Channel::Email).await.is_empty(), "no email before the wait is over");
        let entry = rig.entry(key).await.expect("entry");
        rig.clock.set(entry.next_attempt_at);
    }
    let at = fell_back_at.expect("fell back to email");
    assert!(at - start >= TimeDelta::minutes(10), "not before the wait: {}", at - start);
    assert!(at - start < TimeDelta::minutes(30), "soon after the wait: {}", at - start);
    // The email the step would have sent, under its key, to the rep alone.
    let email = rig.entry("sla/00Q1/1/alert").await.expect("the fallback email");
    let Effect::Email { deliver_to, template, .. } = &email.effect else { panic!("an email") };
    assert_eq!((deliver_to.as_deref(), template.as_str()), (Some("rep@x.example"), "sla_alert"));
    assert!(matches!(rig.entry(key).await.expect("entry").state, OutboxState::Dropped { .. }));
    // Slack back: the message is not posted as well.
    rig.slack.outage(false);
    rig.clock.advance(TimeDelta::hours(1));
    assert_eq!(rig.relay_round().await.posted, 0);
    assert!(rig.slack.messages().is_empty());
}

#[tokio::test]
async fn an_unknown_or_deactivated_slack_user_gets_the_email_at_once() {
    let rig = rig("default_channels = [\"slack\"]", SLACK_LADDER, false).await;
    rig.slack.deactivate("U0REP");
    rig.hand_off().await;
    assert_eq!(rig.relay_round().await.fell_back, 1);
    assert_eq!(rig.ready(Channel::Email).await, ["sla/00Q1/1/alert"]);
    let history = rig.runtime.store.history(&LeadId::new("00Q1")).await.expect("history");
    let logged = history.iter().any(|(_, e)| {
        matches!(&e.kind, EventKind::Activity { activity, detail }
            if activity == "chat_fallback" && detail["reason"].as_str().is_some_and(|r| r.contains("deactivated")))
    });
    assert!(logged, "{history:#?}");
}

#[tokio::test]
async fn a_step_by_slack_and_email_sends_both_and_the_manager_reachable_by_email_only_gets_email() {
    let ladder = r#"
[[sla.policy.step]]
name = "alert"
after = "0s"
kind = "sla.manager"
template = "sla_manager"
to = ["rep"]
cc = ["manager"]
channels = ["slack", "email"]
"#;
    let rig =
        rig("default_channels = [\"email\", \"slack\"]\npeople = { 005M = [\"email\"] }", ladder, false)
            .await;
    rig.hand_off().await;
    assert_eq!(rig.ready(Channel::Chat).await, ["sla/00Q1/1/alert/slack"]);
    assert_eq!(rig.ready(Channel::Email).await.len(), 2, "the rep's and the manager's email copies");
    let chat = rig.entry("sla/00Q1/1/alert/slack").await.expect("chat");
    assert!(matches!(chat.effect, Effect::Chat { fallback: None, .. }), "mailed anyway: no fallback");
}

#[tokio::test]
async fn teams_gets_an_adaptive_card_whose_buttons_are_the_reps_signed_pages_and_429_is_honoured() {
    let ladder = r#"
[[sla.policy.step]]
name = "alert"
after = "0s"
kind = "sla.alert"
template = "sla_alert"
to = ["rep"]
channels = ["teams"]
"#;
    let rig = rig("default_channels = [\"teams\"]", ladder, true).await;
    rig.slack.storm(1, 300);
    rig.hand_off().await;
    let before = rig.clock.now();
    assert_eq!(rig.relay_round().await.retried, 1);
    let entry = rig.entry("sla/00Q1/1/alert/teams").await.expect("entry");
    assert!(entry.next_attempt_at - before >= TimeDelta::seconds(300));
    rig.clock.set(entry.next_attempt_at);
    assert_eq!(rig.relay_round().await.posted, 1);
    let posts = rig.slack.teams_posts();
    assert_eq!(posts.len(), 1);
    let card = &posts[0].1["attachments"][0]["content"];
    let actions = card["actions"].as_array().expect("actions");
    let accept = actions.iter().find(|a| a["title"] == "Accept").expect("an Accept button");
    assert_eq!(accept["type"], "Action.OpenUrl");
    let url = accept["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("{}/l/", rig.base)), "{url}");
    // The page confirms, the POST answers: the email link's path, recorded as the rep.
    let client = reqwest::Client::new();
    assert_eq!(client.get(url).send().await.expect("get").status(), 200);
    assert!(rig.open_handoff().await, "a GET changes nothing");
    assert_eq!(client.post(url).send().await.expect("post").status(), 200);
    assert!(!rig.open_handoff().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_checks_the_slack_token_with_auth_test() {
    let slack = StandIn::start(TOKEN).await.expect("stand-in");
    let dir = tempfile::tempdir().expect("tempdir");
    let signing = dir.path().join("signing");
    std::fs::write(&signing, SIGNING).expect("write");
    for (token, code, expected) in [
        (TOKEN, 0, "slack: authenticated as leadloop in Stand-in"),
        ("xoxb-revoked", 1, "authentication failed: slack auth.test: invalid_auth"),
    ] {
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).expect("write");
        let config = dir.path().join("leadloop.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = \"{state}\"\n\n[chat]\ndefault_channels = [\"slack\"]\n\n[chat.slack]\napi_url = \"{api}\"\nbot_token_file = \"{token}\"\nsigning_secret_file = \"{signing}\"\n",
                state = dir.path().join("state").display(),
                api = slack.api_url(),
                token = token_file.display(),
                signing = signing.display(),
            ),
        )
        .expect("write config");
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_leadloop"))
                .args(["validate", "--connect", "--config"])
                .arg(&config)
                .output()
                .expect("run leadloop")
        })
        .await
        .expect("join");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = stdout.lines().find(|l| l.starts_with("chat")).unwrap_or_default().to_owned();
        assert!(line.contains(expected), "{stdout}");
        assert!(!stdout.contains(token), "the token is never shown: {stdout}");
        assert_eq!(output.status.code(), Some(code), "{stdout}");
    }
}

#[test]
fn simulate_prints_each_chat_message_with_its_channel_and_contacts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("leadloop.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\n\n[chat]\ndefault_channels = [\"email\", \"slack\"]\n\n[chat.slack]\napi_url = \"http://127.0.0.1:9/api\"\nbot_token_env = \"NOT_SET_SLACK_TOKEN\"\nsigning_secret_env = \"NOT_SET_SLACK_SIGNING\"\n\n[[sla.policy]]\nname = \"chat\"{SLACK_LADDER}",
            dir.path().join("state").display()
        ),
    )
    .expect("write config");
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"{"at":"2026-03-02T14:00:00Z","type":"user","user":{"id":"005A","email":"rep@x.example","name":"Rep A"}}"#,
            "\n",
            r#"{"at":"2026-03-02T14:00:00Z","type":"lead","lead":{"id":"00Q1","first_name":"Ana","status":"Open - Not Contacted","owner_id":"005A"}}"#,
            "\n"
        ),
    )
    .expect("write events");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_leadloop"))
        .args(["simulate", "--config"])
        .arg(&config)
        .arg("--events")
        .arg(&events)
        .output()
        .expect("run leadloop");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let chat: Vec<&serde_json::Value> = lines.iter().filter(|l| l["effect"] == "chat").collect();
    assert_eq!(chat.len(), 2, "the alert and the reminder, in Slack only: {stdout}");
    assert_eq!(chat[0]["key"], "sla/00Q1/1/alert/slack");
    assert_eq!(chat[0]["channel"], "slack");
    assert_eq!(chat[0]["to"], "rep@x.example");
    assert_eq!(chat[0]["person"], "005A");
    assert_eq!(chat[0]["fallback"], "sla/00Q1/1/alert", "the email it falls back to");
    assert_eq!(chat[1]["step"], "reminder");
    assert!(lines.iter().all(|l| l["effect"] != "email"), "Slack only, nothing mailed: {stdout}");
}
