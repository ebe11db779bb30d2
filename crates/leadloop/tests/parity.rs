//! `simulate` decides exactly as the daemon does. The same events go to `simulate` and to a
//! runtime built the way `leadloop run` builds it (`Runtime::build` with every configured part,
//! run by `Runtime::run` with its engine loop, relays and poller) on a virtual clock: the CRM is
//! a recorded connector that hands each lead over at its instant, email goes to a directory of
//! `.eml` files, calendars are empty and record the holds booked. Both must produce the same
//! set of effects: idempotency keys, recipients and the instants they were queued.
//!
//! The config uses everything `simulate` used to leave out (calendar holds, signed links), so
//! a `simulate` that builds its own rules again fails here.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::TimeDelta;
use leadloop::runtime::{EmptyCalendar, Runtime, RuntimeOptions};
use leadloop_core::connector::{
    Activity, ChangePage, ConnectorError, CrmObject, CrmRecord, CrmWrite, PullRequest,
};
use leadloop_core::{Clock, Crm, IdempotencyKey, Lead, LeadId, Timestamp};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const START: &str = "2026-03-02T14:00:00Z";

fn config_text(dir: &Path) -> String {
    format!(
        r#"
[daemon]
state_dir = "{state}"
# An hour between idle turns: a hold (its slot a quarter-hour ahead) is booked only because
# the engine wakes the calendar relay when it queues one.
max_idle = "1h"

[[people]]
id = "005E"
email = "ceo@x.example"
name = "Exec"
time_zone = "America/New_York"
role = "executive"

[[people]]
id = "005M"
email = "mgr@x.example"
name = "Manager"
manager = "005E"
time_zone = "America/New_York"
role = "manager"

[[people]]
id = "005A"
email = "rep@x.example"
name = "Rep A"
manager = "005M"
time_zone = "America/New_York"

[[people]]
id = "005B"
email = "bo@x.example"
name = "Rep B"
manager = "005M"
time_zone = "Europe/Berlin"

[email]
from = "leadloop <leadloop@x.example>"
deliver = "directory"
directory = "mail"

[links]
public_listen = "127.0.0.1:0"
public_url = "https://leads.x.example"
signing_key_file = "{key}"

[calendar]
type = "caldav"
url = "http://127.0.0.1:9/"
username = "leadloop"
password_file = "{secret}"
poll_interval = "1h"
hold = true
hold_length = "30m"
[[calendar.person]]
id = "005A"
[[calendar.person]]
id = "005B"

[crm]
type = "salesforce"
poll_interval = "10m"
[crm.salesforce]
login_url = "http://127.0.0.1:9"
auth = "client_credentials"
client_id = "leadloop"
client_secret_file = "{secret}"
"#,
        state = dir.join("state").display(),
        key = dir.join("links-key").display(),
        secret = dir.join("secret").display(),
    )
}

/// The events, as `simulate` reads them, at minutes after `START`. Every event falls on a
/// multiple of ten minutes, where the daemon's CRM sync (every ten minutes from the start)
/// picks it up at that very instant, and on no instant a timer is due, where the order of a
/// sync and a tick would be a race.
fn events() -> Vec<(i64, Value)> {
    let lead = |id: &str, fields: Value| {
        let mut lead = fields;
        lead["id"] = Value::from(id);
        serde_json::json!({"type": "lead", "lead": lead})
    };
    vec![
        (
            10,
            lead(
                "00Q1",
                serde_json::json!({"email": "ana@acme.example", "first_name": "Ana", "company": "Acme",
                    "status": "Open - Not Contacted", "owner_id": "005A"}),
            ),
        ),
        (
            20,
            lead(
                "00Q2",
                serde_json::json!({"email": "kai@globex.example", "first_name": "Kai", "company": "Globex",
                    "status": "Open - Not Contacted", "owner_id": "005B"}),
            ),
        ),
        (30, serde_json::json!({"type": "activity", "lead_id": "00Q1", "kind": "web_visit", "detail": {}})),
        // Rep B answers after a day and some: the ladder for 00Q2 stops there.
        (26 * 60 + 10, lead("00Q2", serde_json::json!({"status": "Working - Contacted"}))),
    ]
}

/// How long both run after the start.
const HORIZON: TimeDelta = TimeDelta::days(4);

/// One effect: its key, what it is, who it reaches, and the instant it was queued.
type EffectRow = (String, String, Vec<String>, Timestamp);

fn start() -> Timestamp {
    START.parse().expect("instant")
}

fn setup() -> (tempfile::TempDir, leadloop::config::Config) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("links-key"), "6b".repeat(32)).expect("key");
    std::fs::write(dir.path().join("secret"), "not used").expect("secret");
    let (config, _) = leadloop::config::load_str(Path::new("parity.toml"), &config_text(dir.path()))
        .expect("config is valid");
    (dir, config)
}

fn simulate(config: &leadloop::config::Config) -> BTreeSet<EffectRow> {
    let text: String = events()
        .into_iter()
        .map(|(minutes, mut event)| {
            event["at"] = serde_json::to_value(start() + TimeDelta::minutes(minutes)).expect("at");
            format!("{event}\n")
        })
        .collect();
    let mut out = Vec::new();
    let until = start() + HORIZON;
    let code = leadloop::simulate::simulate(config, Path::new("events.jsonl"), &text, Some(until), &mut out);
    assert_eq!(code, 0, "simulate failed: {}", String::from_utf8_lossy(&out));
    let mut effects = BTreeSet::new();
    for line in String::from_utf8(out).expect("utf-8").lines() {
        let v: Value = serde_json::from_str(line).expect("json line");
        let Some(key) = v["key"].as_str() else { continue };
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_owned)).collect()
        };
        let one = |k: &str| vec![v[k].as_str().unwrap_or_default().to_owned()];
        let effect = v["effect"].as_str().unwrap_or_default().to_owned();
        let mut to = match effect.as_str() {
            "email" => [strings("to"), strings("cc")].concat(),
            "crm.update" => one("lead_id"),
            "crm.task" => one("owner_id"),
            "calendar.hold" => one("person"),
            other => panic!("unexpected effect {other} in {line}"),
        };
        to.sort();
        let at: Timestamp = v["at"].as_str().and_then(|at| at.parse().ok()).expect("at");
        effects.insert((key.to_owned(), effect, to, at));
    }
    effects
}

/// The daemon's clock in a test: tokio's paused clock, read as an instant after `START`. The
/// runtime's loops sleep on tokio's timers, so the clock and the loops move together.
#[derive(Debug)]
struct TokioClock {
    base: Timestamp,
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.base + TimeDelta::from_std(self.origin.elapsed()).unwrap_or(TimeDelta::MAX)
    }
}

/// A CRM that hands over the recorded records once the clock reaches them, and records the
/// writes it is asked for.
struct RecordedCrm {
    clock: Arc<dyn Clock>,
    leads: Vec<(Timestamp, CrmRecord)>,
    tasks: Vec<(Timestamp, CrmRecord)>,
    writes: Mutex<Vec<CrmWrite>>,
}

impl RecordedCrm {
    fn new(clock: Arc<dyn Clock>) -> Self {
        let (mut leads, mut tasks) = (Vec::new(), Vec::new());
        let mut current: std::collections::BTreeMap<String, Lead> = Default::default();
        for (minutes, event) in events() {
            let at = start() + TimeDelta::minutes(minutes);
            match event["type"].as_str() {
                Some("lead") => {
                    let patch = event["lead"].as_object().cloned().unwrap_or_default();
                    let id = patch["id"].as_str().unwrap_or_default().to_owned();
                    let lead = current.entry(id.clone()).or_insert_with(|| Lead::new(&id));
                    lead.merge_json(&patch).expect("lead fields");
                    leads.push((at, CrmRecord::Lead(Box::new(lead.clone()))));
                }
                Some("activity") => tasks.push((
                    at,
                    CrmRecord::Activity(Activity {
                        lead_id: LeadId::new(event["lead_id"].as_str().unwrap_or_default()),
                        at,
                        kind: event["kind"].as_str().unwrap_or_default().to_owned(),
                        detail: Default::default(),
                    }),
                )),
                other => panic!("no CRM record for {other:?}"),
            }
        }
        Self { clock, leads, tasks, writes: Mutex::default() }
    }
}

#[async_trait]
impl Crm for RecordedCrm {
    fn name(&self) -> &str {
        "recorded"
    }

    async fn pull(
        &self,
        requests: &[PullRequest],
    ) -> Result<Vec<Result<ChangePage, ConnectorError>>, ConnectorError> {
        let now = self.clock.now();
        Ok(requests
            .iter()
            .map(|request| {
                let records = match request.object {
                    CrmObject::Lead => &self.leads,
                    CrmObject::Task => &self.tasks,
                    _ => return Ok(ChangePage::default()),
                };
                let from: usize = request.cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0);
                let due: Vec<CrmRecord> = records
                    .iter()
                    .skip(from)
                    .take_while(|(at, _)| *at <= now)
                    .map(|(_, r)| r.clone())
                    .collect();
                Ok(ChangePage {
                    next_cursor: Some((from + due.len()).to_string()),
                    records: due,
                    ..ChangePage::default()
                })
            })
            .collect())
    }

    async fn push(&self, writes: &[CrmWrite]) -> Result<Vec<Result<(), ConnectorError>>, ConnectorError> {
        self.writes.lock().expect("writes").extend(writes.iter().cloned());
        Ok(writes.iter().map(|_| Ok(())).collect())
    }
}

/// Header `name` of an `.eml` file, unfolded.
fn header(eml: &str, name: &str) -> Option<String> {
    let head = eml.split("\r\n\r\n").next().unwrap_or_default();
    let mut value: Option<String> = None;
    for line in head.split("\r\n") {
        if let Some(found) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                found.push_str(line);
                continue;
            }
            break;
        }
        if let Some((key, rest)) = line.split_once(':')
            && key.eq_ignore_ascii_case(name)
        {
            value = Some(rest.trim().to_owned());
        }
    }
    value
}

/// The addresses in an address-list header, `<a@b>` or bare.
fn addresses(list: Option<String>) -> Vec<String> {
    list.unwrap_or_default()
        .split(',')
        .map(|part| {
            let part = part.trim();
            match (part.rfind('<'), part.rfind('>')) {
                (Some(open), Some(close)) if open < close => part[open + 1..close].to_owned(),
                _ => part.to_owned(),
            }
        })
        .filter(|a| !a.is_empty())
        .collect()
}

fn daemon(config: &leadloop::config::Config, dir: &Path, expected_keys: &[String]) -> BTreeSet<EffectRow> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let (crm, calendar, store) = rt.block_on(async {
        let clock: Arc<dyn Clock> =
            Arc::new(TokioClock { base: start(), origin: tokio::time::Instant::now() });
        let crm = Arc::new(RecordedCrm::new(Arc::clone(&clock)));
        let calendar =
            Arc::new(EmptyCalendar::for_config(config.calendar.as_ref().expect("the config has [calendar]")));
        let options = RuntimeOptions::new(Arc::clone(&clock)).crm(crm.clone()).calendar(calendar.clone());
        let runtime = Runtime::build(config, options).await.expect("the daemon's runtime builds");
        assert!(runtime.email.is_some() && runtime.crm.is_some() && runtime.calendar.is_some());
        let store = Arc::clone(&runtime.store);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(runtime.run(shutdown.clone()));
        tokio::time::sleep(HORIZON.to_std().expect("horizon")).await;
        shutdown.cancel();
        let ended = running.await.expect("runtime task");
        assert!(matches!(ended, leadloop::runtime::Ended::Shutdown), "{ended:?}");
        (crm, calendar, store)
    });
    let queued_at = |key: &str| -> Timestamp {
        rt.block_on(
            store.outbox_entry(&serde_json::from_value::<IdempotencyKey>(Value::from(key)).expect("a key")),
        )
        .expect("outbox")
        .map(|entry| entry.created_at)
        .unwrap_or_else(|| panic!("{key} was performed but is not in the outbox"))
    };
    let mut effects = BTreeSet::new();
    // Email: the `.eml` files the directory mailer wrote; the Message-ID names the key.
    let mail = dir.join("state").join("mail");
    for file in std::fs::read_dir(&mail).expect("mail directory") {
        let path = file.expect("entry").path();
        if path.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        let eml = std::fs::read_to_string(&path).expect("eml");
        let id = header(&eml, "Message-ID").expect("Message-ID");
        let key = expected_keys
            .iter()
            .find(|key| id.contains(&leadloop_smtp::message::key_hash(key)[..32]))
            .cloned()
            .unwrap_or_else(|| format!("(unexpected email {})", path.display()));
        let mut to = [addresses(header(&eml, "To")), addresses(header(&eml, "Cc"))].concat();
        to.sort();
        let at = if key.starts_with('(') { start() } else { queued_at(&key) };
        effects.insert((key, "email".to_owned(), to, at));
    }
    for write in crm.writes.lock().expect("writes").iter() {
        let (key, effect, to) = match write {
            CrmWrite::UpdateLead { key, lead_id, .. } => (key, "crm.update", lead_id.to_string()),
            CrmWrite::CreateTask { key, owner_id, .. } => (key, "crm.task", owner_id.to_string()),
        };
        effects.insert((key.to_string(), effect.to_owned(), vec![to], queued_at(key.as_str())));
    }
    for hold in calendar.holds() {
        effects.insert((
            hold.key.to_string(),
            "calendar.hold".to_owned(),
            vec![hold.person.to_string()],
            queued_at(hold.key.as_str()),
        ));
    }
    effects
}

#[test]
fn simulate_and_the_daemon_have_the_same_effects() {
    let (dir, config) = setup();
    let simulated = simulate(&config);
    let keys: Vec<String> = simulated.iter().map(|(key, ..)| key.clone()).collect();
    // The run must cover what the issue found missing: a calendar hold, and a ladder.
    assert!(simulated.iter().any(|(_, effect, ..)| effect == "calendar.hold"), "{simulated:#?}");
    assert!(simulated.iter().filter(|(_, effect, ..)| effect == "email").count() >= 3, "{simulated:#?}");
    let performed = daemon(&config, dir.path(), &keys);
    let only_simulated: Vec<_> = simulated.difference(&performed).collect();
    let only_daemon: Vec<_> = performed.difference(&simulated).collect();
    assert!(
        only_simulated.is_empty() && only_daemon.is_empty(),
        "simulate and the daemon differ\nonly in simulate: {only_simulated:#?}\nonly in the daemon: {only_daemon:#?}"
    );
}
