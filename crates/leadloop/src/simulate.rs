//! `leadloop simulate`: the real engine, a virtual clock, a temporary store and recording
//! connectors. Reads events as JSON lines and prints one JSON object per effect, in order.
//! The input and output formats are a contract, documented in `docs/simulate.md`.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::TimeDelta;
use leadloop_core::connector::Activity;
use leadloop_core::{
    Clock, Effect, IdempotencyKey, Lead, LeadId, Person, PersonId, Role, Timestamp, VirtualClock,
};
use leadloop_engine::Engine;
use leadloop_smtp::Templates;
use leadloop_store::Store;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::cli::load_for_reading;
use crate::exit;
use crate::runtime::{BuildError, EmptyCalendar, Parts, Runtime, RuntimeOptions};

/// How far past the last event the simulation runs when no `--until` is given and timers
/// remain (a ladder or nurture track may run for months).
const DEFAULT_HORIZON_DAYS: i64 = 400;

#[derive(Debug, Deserialize)]
struct Line {
    at: Timestamp,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    lead: Option<Map<String, Value>>,
    #[serde(default)]
    user: Option<UserLine>,
    #[serde(default)]
    lead_id: Option<String>,
    #[serde(default, rename = "kind")]
    _unused: Option<Value>,
    #[serde(default)]
    detail: Option<Map<String, Value>>,
    #[serde(default)]
    account: Option<leadloop_core::connector::Account>,
}

#[derive(Debug, Deserialize)]
struct UserLine {
    id: String,
    email: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    manager_id: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default = "yes")]
    active: bool,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    capacity: Option<u32>,
}

fn yes() -> bool {
    true
}

/// An input line, parsed.
enum Event {
    Lead(Map<String, Value>),
    User(Person),
    Activity(String, String, Map<String, Value>),
    Delete(String),
    Account(leadloop_core::connector::Account),
}

fn parse(number: usize, text: &str) -> Result<(Timestamp, Event), String> {
    let raw: Value = serde_json::from_str(text).map_err(|e| format!("line {number}: not JSON: {e}"))?;
    // `kind` names the activity on activity lines; the struct keeps `type` apart from it.
    let activity_kind = raw.get("kind").and_then(Value::as_str).map(str::to_owned);
    let line: Line = serde_json::from_value(raw).map_err(|e| format!("line {number}: {e}"))?;
    let need_lead_id =
        || line.lead_id.clone().ok_or_else(|| format!("line {number}: `{}` needs `lead_id`", line.kind));
    let event = match line.kind.as_str() {
        "lead" => {
            let lead =
                line.lead.clone().ok_or_else(|| format!("line {number}: `lead` needs a `lead` object"))?;
            if !lead.get("id").is_some_and(Value::is_string) {
                return Err(format!("line {number}: the lead needs a string `id`"));
            }
            // Check the field types now, so a bad line stops the run before any output.
            Lead::new("check").merge_json(&lead).map_err(|e| format!("line {number}: lead: {e}"))?;
            Event::Lead(lead)
        }
        "user" => {
            let user = line.user.ok_or_else(|| format!("line {number}: `user` needs a `user` object"))?;
            if let Some(zone) = &user.time_zone
                && zone.parse::<chrono_tz::Tz>().is_err()
            {
                return Err(format!("line {number}: user {}: unknown time zone `{zone}`", user.id));
            }
            Event::User(Person {
                name: user.name.unwrap_or_else(|| user.email.clone()),
                id: PersonId::new(user.id),
                email: user.email,
                manager: user.manager_id.map(PersonId::new),
                time_zone: user.time_zone,
                role: user.role.unwrap_or_default(),
                active: user.active,
                capacity: user.capacity,
            })
        }
        "activity" => {
            let kind = activity_kind.ok_or_else(|| format!("line {number}: `activity` needs `kind`"))?;
            Event::Activity(need_lead_id()?, kind, line.detail.clone().unwrap_or_default())
        }
        "delete" => Event::Delete(need_lead_id()?),
        "account" => Event::Account(
            line.account
                .clone()
                .ok_or_else(|| format!("line {number}: `account` needs an `account` object"))?,
        ),
        other => {
            return Err(format!(
                "line {number}: unknown type `{other}` (known: lead, user, activity, delete, account)"
            ));
        }
    };
    Ok((line.at, event))
}

struct Printer<'a> {
    store: Arc<dyn Store>,
    templates: &'a Templates,
    out: &'a mut dyn Write,
    /// Stage and assign lines collected by the engine's observer since the last print.
    moves: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Printer<'_> {
    async fn print(&mut self, at: Timestamp, keys: &[IdempotencyKey]) -> Result<(), String> {
        let moves = std::mem::take(&mut *self.moves.lock().unwrap_or_else(|p| p.into_inner()));
        for line in moves {
            writeln!(self.out, "{line}").map_err(|e| e.to_string())?;
        }
        for key in keys {
            let Some(entry) = self.store.outbox_entry(key).await.map_err(|e| e.to_string())? else {
                continue;
            };
            let line = match &entry.effect {
                Effect::Email { kind, template, to, cc, lead_id, vars, deliver_to } => {
                    let subject =
                        self.templates.render(template, vars).map(|r| r.subject).map_err(|e| e.to_string());
                    let mut line = json!({
                        "at": at, "effect": "email", "key": key, "lead_id": lead_id, "kind": kind,
                        "step": vars.get("step").cloned().unwrap_or(Value::Null),
                        "to": to, "cc": cc, "template": template, "channel": "email",
                    });
                    if let Some(single) = deliver_to {
                        line["deliver_to"] = json!(single);
                    }
                    match subject {
                        Ok(subject) => line["subject"] = json!(subject),
                        Err(error) => line["error"] = json!(error),
                    }
                    line
                }
                Effect::CrmUpdate { lead_id, fields } => {
                    json!({ "at": at, "effect": "crm.update", "key": key, "lead_id": lead_id, "fields": fields })
                }
                Effect::CrmTask { lead_id, owner_id, subject, due } => json!({
                    "at": at, "effect": "crm.task", "key": key, "lead_id": lead_id, "owner_id": owner_id,
                    "subject": subject, "due": due,
                }),
                Effect::Chat { kind, service, to, person, lead_id, vars, fallback } => json!({
                    "at": at, "effect": "chat", "channel": service, "key": key, "lead_id": lead_id,
                    "kind": kind, "step": vars.get("step").cloned().unwrap_or(Value::Null),
                    "to": to, "person": person,
                    "fallback": fallback.as_ref().map(|f| f.key.clone()),
                }),
                Effect::CalendarHold { person, lead_id, start, end, summary } => json!({
                    "at": at, "effect": "calendar.hold", "key": key, "lead_id": lead_id, "person": person,
                    "start": start, "end": end, "summary": summary,
                }),
            };
            writeln!(self.out, "{line}").map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

pub fn main(config: &Path, events: &Path, until: Option<Timestamp>) -> u8 {
    let config = match load_for_reading(config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let bytes = match std::fs::read(events) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{}: cannot read events: {e}", events.display());
            return exit::DATA;
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            // Name the line, as for any other bad line.
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let line = bytes[..valid].iter().filter(|b| **b == b'\n').count() + 1;
            let column = valid - bytes[..valid].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) + 1;
            eprintln!("{}:{line}:{column}: not UTF-8 text (byte 0x{:02x})", events.display(), bytes[valid]);
            return exit::DATA;
        }
    };
    let mut stdout = std::io::stdout().lock();
    simulate(&config, events, &text, until, &mut stdout)
}

/// Runs `text` (JSON lines; `source` names it in errors) and writes the effects to `out`.
/// Returns the exit code.
pub fn simulate(
    config: &crate::config::Config,
    source: &Path,
    text: &str,
    until: Option<Timestamp>,
    out: &mut dyn Write,
) -> u8 {
    let events = source;
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    let mut previous: Option<(usize, Timestamp)> = None;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse(index + 1, line) {
            Ok((at, event)) => {
                if let Some((before, previous_at)) = previous
                    && at < previous_at
                {
                    errors.push(format!(
                        "{}:line {}: `at` {at} is earlier than line {before}'s; events must be ordered by `at`",
                        events.display(),
                        index + 1
                    ));
                }
                previous = Some((index + 1, at));
                parsed.push((at, event));
            }
            Err(error) => errors.push(format!("{}:{error}", events.display())),
        }
    }
    if !errors.is_empty() {
        for error in errors {
            eprintln!("{error}");
        }
        return exit::DATA;
    }
    let templates = match config.email().map(|e| e.templates()).unwrap_or_else(|| Templates::load(None)) {
        Ok(templates) => templates,
        Err(problem) => {
            eprintln!("{problem}");
            return exit::CONFIG;
        }
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(run(config, parsed, until, &templates, out)) {
        Ok(()) => exit::OK,
        Err(Failed::Build(error)) => {
            eprintln!("simulate: {error}");
            error.exit_code()
        }
        Err(Failed::Run(error)) => {
            eprintln!("simulate: {error}");
            exit::FAILURE
        }
    }
}

/// Why a run stopped: the runtime could not be built (its own exit code), or an event failed.
enum Failed {
    Build(BuildError),
    Run(String),
}

impl From<String> for Failed {
    fn from(error: String) -> Self {
        Failed::Run(error)
    }
}

async fn run(
    config: &crate::config::Config,
    events: Vec<(Timestamp, Event)>,
    until: Option<Timestamp>,
    templates: &Templates,
    out: &mut dyn Write,
) -> Result<(), Failed> {
    let dir =
        tempfile::tempdir().map_err(|e| Failed::Run(format!("cannot create a temporary store: {e}")))?;
    let start = events.first().map(|(at, _)| *at).or(until).unwrap_or_else(chrono::Utc::now);
    let clock = Arc::new(VirtualClock::new(start));
    // Stage moves and assignments are history events; they print with the effects.
    let moves: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let observer = {
        let moves = Arc::clone(&moves);
        let clock = clock.clone();
        Arc::new(move |observed: leadloop_engine::Observed<'_>| {
            let leadloop_engine::Observed::Event(lead, event) = observed else { return };
            let line = match &event.kind {
                leadloop_core::EventKind::StageChanged { from, to, reason } => json!({
                    "at": clock.now(), "effect": "stage", "lead_id": lead, "from": from, "to": to, "reason": reason,
                }),
                leadloop_core::EventKind::OwnerChanged { to: Some(owner), reason, .. }
                    if event.actor != leadloop_core::Actor::System =>
                {
                    json!({
                        "at": clock.now(), "effect": "assign", "lead_id": lead, "owner_id": owner, "reason": reason,
                    })
                }
                _ => return,
            };
            moves.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        })
    };
    // The daemon's runtime with the daemon's rules (calendar holds, signed links and all), on
    // a temporary store and with no connector that reaches out: nothing is sent.
    let mut options = RuntimeOptions::new(clock.clone())
        .state_dir(Some(dir.path().to_path_buf()))
        .parts(Parts::ENGINE)
        .observer(observer);
    if let Some(calendar) = &config.calendar {
        // The people's calendars, taken as empty: holds go to the next free slot in business
        // hours, as a daemon whose calendars are empty books them.
        options = options
            .parts(Parts { calendar: true, ..Parts::ENGINE })
            .calendar(Arc::new(EmptyCalendar::for_config(calendar)));
    }
    let runtime = Runtime::build(config, options).await.map_err(Failed::Build)?;
    if let Some(calendar) = &runtime.calendar {
        calendar.poller.poll_once().await;
    }
    let (store, engine) = (Arc::clone(&runtime.store), runtime.engine.clone());
    let mut printer = Printer { store: Arc::clone(&store), templates, out, moves };
    let last = events.last().map(|(at, _)| *at);
    for (at, event) in events {
        if until.is_some_and(|until| at > until) {
            break;
        }
        run_until(&engine, &clock, &mut printer, at).await?;
        clock.set(at.max(clock.now()));
        let keys = match event {
            Event::Lead(patch) => {
                let id = patch.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                let mut lead = store
                    .lead(&LeadId::new(&id))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|r| r.lead)
                    .unwrap_or_else(|| Lead::new(&id));
                lead.merge_json(&patch).map_err(|e| format!("lead {id}: {e}"))?;
                engine.upsert_lead(lead).await
            }
            Event::User(person) => engine.upsert_person(person).await.map(|()| Vec::new()),
            Event::Activity(lead_id, kind, detail) => {
                let activity = Activity {
                    lead_id: LeadId::new(lead_id),
                    at,
                    kind,
                    detail: detail.into_iter().collect(),
                };
                engine.record_activity(activity).await
            }
            Event::Delete(lead_id) => engine.delete_lead(&LeadId::new(lead_id)).await,
            Event::Account(account) => engine.upsert_account(account).await.map(|()| Vec::new()),
        }
        .map_err(|e| e.to_string())?;
        printer.print(clock.now(), &keys).await?;
    }
    let horizon =
        until.or_else(|| last.map(|at| at + TimeDelta::days(DEFAULT_HORIZON_DAYS))).unwrap_or(start);
    run_until(&engine, &clock, &mut printer, horizon).await?;
    printer.out.flush().map_err(|e| Failed::Run(e.to_string()))
}

/// Fires every timer due up to `limit`, each at its own instant, in order.
async fn run_until(
    engine: &Engine,
    clock: &VirtualClock,
    printer: &mut Printer<'_>,
    limit: Timestamp,
) -> Result<(), String> {
    loop {
        let next = engine.store().next_timer_due().await.map_err(|e| e.to_string())?;
        let Some(due) = next.filter(|due| *due <= limit) else { return Ok(()) };
        clock.set(due.max(clock.now()));
        let report = engine.tick().await.map_err(|e| e.to_string())?;
        printer.print(clock.now(), &report.enqueued).await?;
    }
}
