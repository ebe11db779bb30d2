//! `leadloop demo`: the whole loop on one machine in about a minute, with no config. It starts
//! the Salesforce emulator on loopback with a sample org (an executive, managers, reps,
//! accounts, a few hundred leads), and runs the real engine, the real Salesforce connector
//! (over HTTP), the real email relay and CRM write-back against it (and the real Slack
//! connector against the Slack stand-in, each alert also in Slack), in accelerated virtual
//! time. Leads engage (web visits, downloads, demo requests), are scored, qualify, are routed
//! to reps, alerted, reminded and escalated; some reps answer in Salesforce and close the loop;
//! the rest are nurtured. It prints a timeline and a summary, and leaves the emails (`.eml`
//! files, or delivered to `--smtp HOST:PORT`) and the state directory behind for a look.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Timelike};
use clap::Args;
use leadloop_core::connector::Activity;
use leadloop_core::{Clock, EventKind, HistoryEvent, LeadId, Stage, Timestamp, VirtualClock};
use leadloop_sf_emulator::{Emulator, SeedSpec, seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::exit;
use crate::runtime::{Runtime, RuntimeOptions};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Virtual seconds per real second: 3600 runs an hour a second, so the 72-hour ladder
    /// takes about a minute.
    #[arg(long, default_value_t = 3600.0)]
    pub speed: f64,
    /// How much virtual time to run.
    #[arg(long, default_value = "80h", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Leads in the sample org.
    #[arg(long, default_value_t = 300)]
    pub leads: usize,
    /// Deliver the emails to this SMTP server (plain, no auth) instead of writing .eml files.
    #[arg(long, value_name = "HOST:PORT")]
    pub smtp: Option<String>,
    /// Where to put the state and the emails; default: a new directory under the system's
    /// temporary directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The sample org's random seed (the same seed, the same story).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The timeline reports in windows of this much virtual time.
const WINDOW: TimeDelta = TimeDelta::hours(12);

/// What the timeline counts, per window.
#[derive(Debug, Default)]
struct Tally {
    lines: BTreeMap<&'static str, usize>,
    routes: BTreeMap<String, usize>,
    /// The first Slack message posted, shown once as Slack would show it.
    slack: Option<String>,
}

#[derive(Debug, Default)]
struct Totals {
    by_stage: BTreeMap<String, usize>,
    emails: BTreeMap<String, usize>,
    handoffs: usize,
    satisfied: usize,
    crm_writes: usize,
    /// A lead that was handed off, for the "look closer" commands.
    example: Option<LeadId>,
    /// Whether the first Slack message was taken for the timeline.
    slack_shown: bool,
}

pub fn main(args: DemoArgs) -> u8 {
    if args.speed.is_nan() || args.speed < 1.0 {
        eprintln!("leadloop demo: --speed must be at least 1");
        return exit::USAGE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return exit::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("leadloop demo: {e:#}");
            exit::FAILURE
        }
    }
}

/// The demo's `[chat]`: everyone reachable in Slack (the stand-in), and the default ladder
/// written out with its alert in Slack and by email.
fn chat_text(dir: &std::path::Path, api: &str) -> String {
    format!(
        r#"
[chat]
default_channels = ["email", "slack"]

[chat.slack]
api_url = "{api}"
bot_token_file = "{token}"
signing_secret_file = "{signing}"

[[sla.policy]]
name = "default"
[[sla.policy.step]]
name = "alert"
after = "0s"
kind = "sla.alert"
template = "sla_alert"
to = ["rep"]
channels = ["slack", "email"]
[[sla.policy.step]]
name = "reminder"
after = "24h"
kind = "sla.reminder"
template = "sla_reminder"
to = ["rep"]
[[sla.policy.step]]
name = "manager"
after = "48h"
kind = "sla.manager"
template = "sla_manager"
to = ["rep"]
cc = ["manager"]
[[sla.policy.step]]
name = "executive"
after = "72h"
kind = "sla.executive"
template = "sla_executive"
to = ["rep", "manager"]
cc = ["executive"]
"#,
        token = dir.join("slack-token").display(),
        signing = dir.join("slack-signing").display(),
    )
}

fn config_text(
    dir: &std::path::Path,
    url: &str,
    ids: &leadloop_sf_emulator::SeedIds,
    smtp: Option<&str>,
    public: &str,
) -> String {
    let pool = |range: std::ops::Range<usize>| {
        ids.reps
            .get(range)
            .unwrap_or_default()
            .iter()
            .map(|id| format!("\"{id}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let half = ids.reps.len() / 2;
    let email = match smtp {
        Some(addr) => {
            let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "25"));
            format!("deliver = \"smtp\"\n[email.smtp]\nhost = \"{host}\"\nport = {port}\ntls = \"plain\"\n")
        }
        None => "deliver = \"directory\"\ndirectory = \"mail\"\n".to_owned(),
    };
    format!(
        r#"
[daemon]
state_dir = "{state}"

[crm]
type = "salesforce"
poll_interval = "10m"

[crm.salesforce]
login_url = "{url}"
auth = "client_credentials"
client_id = "{client}"
client_secret_file = "{secret}"
[crm.salesforce.fields.lead]
Interests__c = "interests"

[links]
public_listen = "{public}"
public_url = "http://{public}"
signing_key_file = "{key}"

[email]
from = "leadloop demo <leadloop@example.com>"
nurture_from = "Example Marketing <marketing@example.com>"
{email}
[scoring]
threshold = 65
[[scoring.fit]]
name = "senior title"
field = "title"
contains = ["vp", "director", "chief", "head of", "cto", "cio"]
points = 40
[[scoring.fit]]
name = "mid-size company"
field = "company_size"
min = 200
max = 5000
points = 15
[[scoring.engagement]]
name = "web visits"
activity = "web_visit"
points = 3
cap = 15
per = "7days"
[[scoring.engagement]]
name = "content downloads"
activity = "content_download"
points = 10
cap = 20
per = "30days"
[[scoring.engagement]]
name = "demo request"
activity = "form_submit"
points = 30

[lifecycle]
status_stages = {{ "Working - Contacted" = "sales_qualified", "Closed - Not Converted" = "disqualified" }}

[routing]
fallback = "{fallback}"
[[routing.rule]]
name = "americas"
match = {{ country = ["US", "CA", "BR"] }}
pool = [{americas}]
[[routing.rule]]
name = "rest of world"
match = {{ country = ["DE", "FR", "GB", "NL", "AU", "JP", "IN"] }}
pool = [{world}]

[sla]
open_statuses = ["Open - Not Contacted"]
# The emulator serves each lead's page at Salesforce's Lightning record URL.
crm_url = "{url}/lightning/r/Lead/{{id}}/view"
accept_status = "Working - Contacted"
recycle_status = "Open - Not Contacted"
disqualify_status = "Closed - Not Converted"

[nurture]
default_time_zone = "America/New_York"
frequency_cap = {{ max = 2, per = "7days" }}
quiet_hours = {{ start = "20:00", end = "08:00", weekends = false }}
[[nurture.tracks]]
name = "welcome"
enrol = {{ stages = ["engaged", "prospect", "recycled"], recycled = true }}
exit = ["mql", "converted", "end"]
time_zone = "lead"
# Each step carries its own content (a tracked link), so the two emails differ.
[[nurture.tracks.steps]]
name = "day 1"
after = "1d"
from = "enrolment"
at = "10:00"
template = "nurture_example"
links = {{ "getting-started guide" = "https://www.example.com/guides/getting-started" }}
[[nurture.tracks.steps]]
name = "day 3"
after = "2d"
from = "previous"
at = "10:00"
template = "nurture_example"
links = {{ "customer story" = "https://www.example.com/customers/acme" }}
"#,
        state = dir.join("state").display(),
        client = leadloop_sf_emulator::Config::default().consumer_key,
        secret = dir.join("salesforce-secret").display(),
        key = dir.join("links-key").display(),
        fallback = ids.reps.first().map(String::as_str).unwrap_or_default(),
        americas = pool(0..half),
        world = pool(half..ids.reps.len()),
    )
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            std::env::temp_dir().join(format!("leadloop-demo-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join("state").exists() {
        anyhow::bail!("{} already holds a demo; pass another --dir", dir.display());
    }

    // The sample org, in Salesforce's shapes, on loopback.
    let emu = Emulator::start(leadloop_sf_emulator::Config::default())
        .await
        .context("cannot start the Salesforce emulator")?;
    // The run ends at the real present, so what the demo leaves reads naturally afterwards:
    // hand-off ages, the funnel's last 30 days, the history's times.
    emu.rewind(args.duration + Duration::from_secs(3600));
    let spec = SeedSpec {
        seed: args.seed,
        managers: 2,
        reps: 6,
        accounts: 30,
        leads: args.leads,
        tasks: args.leads / 4,
    };
    let ids = seed::populate(&emu, &spec);
    // Virtual time starts at the next whole hour; the emulator's clock follows it.
    let now = emu.now();
    let start = now + TimeDelta::seconds(3600 - i64::from(now.minute() * 60 + now.second()));
    let clock = Arc::new(VirtualClock::new(start));
    sync_emulator(&emu, clock.now());

    write_secret(&dir.join("salesforce-secret"), &emu.config().client_secret)?;
    let mut key = [0u8; 32];
    StdRng::seed_from_u64(args.seed ^ 0x5eed).fill(&mut key);
    write_secret(&dir.join("links-key"), &key.iter().map(|b| format!("{b:02x}")).collect::<String>())?;
    let public =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("no free port")?;
    // Slack: a stand-in workspace on loopback where every rep has a user; the alert goes to
    // the rep in Slack as well as by email.
    let slack = leadloop_chat_standin::StandIn::start("xoxb-demo")
        .await
        .context("cannot start the Slack stand-in")?;
    slack.open_workspace();
    write_secret(&dir.join("slack-token"), "xoxb-demo")?;
    let mut signing = [0u8; 16];
    StdRng::seed_from_u64(args.seed ^ 0x51ac).fill(&mut signing);
    write_secret(
        &dir.join("slack-signing"),
        &signing.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    )?;
    let text = format!(
        "{}{}",
        config_text(&dir, &emu.url(), &ids, args.smtp.as_deref(), &public.to_string()),
        chat_text(&dir, &slack.api_url())
    );
    // The config is kept beside the state, so the commands printed at the end read the state
    // with the rules that wrote it.
    let config_path = dir.join("leadloop.toml");
    std::fs::write(&config_path, &text).with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = match crate::config::load(&config_path) {
        Ok((config, _)) => config,
        Err(errors) => anyhow::bail!("the demo's own config is invalid:\n{errors}"),
    };

    let events: Arc<Mutex<Vec<(LeadId, HistoryEvent)>>> = Arc::default();
    let observer_events = events.clone();
    let observer: leadloop_engine::Observer = Arc::new(move |observed: leadloop_engine::Observed<'_>| {
        let seen = match observed {
            leadloop_engine::Observed::Event(lead, event) => (lead.clone(), event.clone()),
            // The timeline counts queued emails by their kind (`sla.alert`, `nurture`, …), carried
            // in a queueing event of the demo's own.
            leadloop_engine::Observed::Queued(entry) => match (&entry.effect, entry.effect.lead_id()) {
                (leadloop_core::Effect::Email { kind, .. }, Some(lead)) => (
                    lead.clone(),
                    HistoryEvent::new(
                        entry.created_at,
                        leadloop_core::Actor::System,
                        EventKind::EffectQueued { key: entry.key.clone(), effect: kind.clone() },
                    ),
                ),
                (leadloop_core::Effect::Chat { service, .. }, Some(lead)) => (
                    lead.clone(),
                    HistoryEvent::new(
                        entry.created_at,
                        leadloop_core::Actor::System,
                        EventKind::EffectQueued { key: entry.key.clone(), effect: format!("chat.{service}") },
                    ),
                ),
                _ => return,
            },
        };
        observer_events.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
    });
    // The daemon's runtime, stepped by hand in virtual time instead of run by its loops.
    let mut runtime = Runtime::build(&config, RuntimeOptions::new(clock.clone()).observer(observer))
        .await
        .context("cannot start the demo")?;
    let (Some(email_relay), Some(crm_parts)) = (runtime.email.clone(), runtime.crm.as_ref()) else {
        anyhow::bail!("the demo's config has no [email] or no [crm]");
    };
    let Some(chat_relay) = runtime.chat.clone() else {
        anyhow::bail!("the demo's config has no [chat]");
    };
    let (sync, crm_relay) = (Arc::clone(&crm_parts.sync), Arc::clone(&crm_parts.relay));
    let poll_interval = crm_parts.poll_interval;
    let (store, engine) = (Arc::clone(&runtime.store), runtime.engine.clone());
    let _links = runtime.spawn_links_listener(tokio_util::sync::CancellationToken::new());

    let mail_dir = dir.join("state").join("mail");
    crate::outln!("leadloop demo — the whole loop, {}× faster than real time", args.speed);
    crate::outln!(
        "  Salesforce emulator  {} ({} leads, {} reps, {} managers, 1 executive)",
        emu.url(),
        ids.leads.len(),
        ids.reps.len(),
        ids.managers.len()
    );
    crate::outln!("  state directory      {}", dir.join("state").display());
    match &args.smtp {
        Some(addr) => crate::outln!("  emails               to the SMTP server at {addr}"),
        None => crate::outln!("  emails               {}", mail_dir.display()),
    }
    crate::outln!("  one-click links      http://{public}/l/… (while the demo runs)");
    crate::outln!("  Slack stand-in       {} (each alert also to the rep in Slack)", slack.api_url());
    crate::outln!();

    // The first sync: the org's users, accounts, leads and tasks.
    let started = Instant::now();
    let first = sync.pass().await?;
    let synced = |object: &str| emu.count(object);
    line(
        clock.now(),
        &format!(
            "synced from Salesforce: {} leads, {} users, {} accounts, {} tasks in {} API call(s){}",
            synced("Lead"),
            synced("User"),
            synced("Account"),
            synced("Task"),
            first.api_calls,
            if first.records.quarantined > 0 {
                format!(" ({} quarantined)", first.records.quarantined)
            } else {
                String::new()
            }
        ),
    );
    // Scored on arrival (fit: title and company size); engagement comes later.
    let (mut fitting, mut best, mut total) = (0usize, 0f64, 0usize);
    let mut pages = leadloop_store::LeadPages::new(store.as_ref());
    while let Some(page) = pages.next().await? {
        for record in page {
            total += 1;
            if record.fit_score > 0.0 {
                fitting += 1;
            }
            best = best.max(record.fit_score);
        }
    }
    line(
        clock.now(),
        &format!(
            "scored every lead on fit (title, company size): {fitting} of {total} fit, best {best:.0} of the 65 that make a lead sales-ready; engagement will do the rest"
        ),
    );

    // What the leads will do: marketing activity over the first day, and reps answering some
    // alerts in Salesforce.
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut planned: Vec<(Timestamp, Activity)> = Vec::new();
    for id in &ids.leads {
        let roll: f64 = rng.random();
        let kinds: &[&str] = if roll < 0.25 {
            &["web_visit", "content_download", "form_submit"]
        } else if roll < 0.8 {
            &["web_visit", "web_visit", "content_download"]
        } else {
            &[]
        };
        for kind in kinds {
            let at = start + TimeDelta::minutes(rng.random_range(5..(20 * 60)));
            planned.push((
                at,
                Activity { lead_id: LeadId::new(id), at, kind: (*kind).to_owned(), detail: BTreeMap::new() },
            ));
        }
    }
    planned.sort_by_key(|(at, _)| *at);
    let mut planned = planned.into_iter().peekable();
    let mut answers: Vec<(Timestamp, String)> = Vec::new();

    let end = start + TimeDelta::from_std(args.duration).unwrap_or(TimeDelta::hours(80));
    let poll = TimeDelta::from_std(poll_interval).unwrap_or(TimeDelta::minutes(10));
    let mut next_poll = start + poll;
    let mut tally = Tally::default();
    let mut totals = Totals::default();
    let mut hour = start;
    let mut last_progress = start;
    let real_start = Instant::now();
    let mut last_real = real_start;
    loop {
        // Move time on.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let real = Instant::now();
        let step = TimeDelta::from_std((real - last_real).mul_f64(args.speed)).unwrap_or(TimeDelta::hours(1));
        last_real = real;
        let target = (clock.now() + step).min(end);
        // Walk through the step in slices no longer than a poll, so syncs and activities
        // happen at their times.
        while clock.now() < target {
            let next = [
                target,
                next_poll,
                planned.peek().map_or(target, |(at, _)| *at),
                answers.iter().map(|(at, _)| *at).min().unwrap_or(target),
            ]
            .into_iter()
            .filter(|t| *t > clock.now())
            .min()
            .unwrap_or(target)
            .min(target);
            clock.set(next);
            sync_emulator(&emu, clock.now());
            while let Some((at, _)) = planned.peek() {
                if *at > clock.now() {
                    break;
                }
                if let Some((_, activity)) = planned.next() {
                    engine.record_activity(activity).await?;
                }
            }
            let (due, later): (Vec<_>, Vec<_>) = answers.drain(..).partition(|(at, _)| *at <= clock.now());
            answers = later;
            for (_, lead) in due {
                let mut fields = serde_json::Map::new();
                fields.insert("Status".into(), serde_json::json!("Working - Contacted"));
                emu.update("Lead", &lead, fields);
            }
            if clock.now() >= next_poll {
                sync.pass().await?;
                next_poll = clock.now() + poll;
            }
            loop {
                let report = engine.tick().await?;
                if !report.more {
                    break;
                }
            }
            email_relay.run_once().await?;
            chat_relay.run_once().await?;
            if !totals.slack_shown
                && let Some(message) = slack.messages().first()
            {
                totals.slack_shown = true;
                tally.slack = Some(slack_line(message));
            }
            totals.crm_writes += crm_relay.run_once().await?.written;
            let drained: Vec<(LeadId, HistoryEvent)> =
                std::mem::take(&mut *events.lock().unwrap_or_else(|p| p.into_inner()));
            for (lead, event) in drained {
                while event.at >= hour + WINDOW {
                    flush(hour, end, &mut tally);
                    hour += WINDOW;
                }
                record(&lead, &event, &mut tally, &mut totals, &mut answers, &mut rng);
            }
        }
        if clock.now() - last_progress >= TimeDelta::hours(12) && clock.now() < end {
            last_progress = clock.now();
            let done = (clock.now() - start).num_hours();
            eprintln!("  … {done} of {} hours", (end - start).num_hours());
        }
        if clock.now() >= end {
            break;
        }
    }
    flush(hour, end, &mut tally);
    // What is still queued goes out.
    email_relay.run_once().await?;
    chat_relay.run_once().await?;
    totals.crm_writes += crm_relay.run_once().await?.written;

    // Summary.
    let mut pages = leadloop_store::LeadPages::new(store.as_ref());
    while let Some(page) = pages.next().await? {
        for record in page {
            *totals.by_stage.entry(record.stage.as_str().to_owned()).or_default() += 1;
        }
    }
    crate::outln!();
    crate::outln!(
        "summary after {} virtual hours ({:.0} s real):",
        (end - start).num_hours(),
        started.elapsed().as_secs_f64()
    );
    let stages: Vec<String> = totals.by_stage.iter().map(|(s, n)| format!("{s} {n}")).collect();
    crate::outln!("  leads by stage       {}", stages.join(", "));
    crate::outln!(
        "  hand-offs            {} started, {} answered by the rep in Salesforce",
        totals.handoffs,
        totals.satisfied
    );
    let emails: Vec<String> = totals.emails.iter().map(|(k, n)| format!("{k} {n}")).collect();
    crate::outln!(
        "  emails               {}",
        if emails.is_empty() { "none".to_owned() } else { emails.join(", ") }
    );
    crate::outln!("  written to the CRM   {} updates and tasks", totals.crm_writes);
    crate::outln!("  Salesforce API calls {} (of {} a day)", emu.api_calls(), emu.config().daily_api_limit);
    match &args.smtp {
        Some(addr) => crate::outln!("  the emails went to   {addr}"),
        None => crate::outln!("  the emails are in    {}", mail_dir.display()),
    }
    for (i, command) in look_closer(&config_path, totals.example.as_ref()).iter().enumerate() {
        let label = if i == 0 { "look closer" } else { "" };
        crate::outln!("  {label:<20} {command}");
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

/// The emulator's clock follows the virtual one, so records changed in Salesforce during the
/// demo carry the demo's time.
/// Writes a secret file only its owner can read, as leadloop expects secrets to be.
fn write_secret(path: &std::path::Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Commands that read what the demo left, as they can be pasted: the binary that is running
/// (a `cargo run` user has no `leadloop` on PATH) and the demo's own config.
pub fn look_closer(config: &std::path::Path, example: Option<&LeadId>) -> Vec<String> {
    let exe =
        std::env::current_exe().map_or_else(|_| "leadloop".to_owned(), |p| shell_word(&p.to_string_lossy()));
    let config = shell_word(&config.to_string_lossy());
    let mut commands = vec![format!("{exe} leads list --config {config}")];
    if let Some(lead) = example {
        commands.push(format!("{exe} leads show --config {config} {}", shell_word(lead.as_str())));
    }
    commands.push(format!("{exe} sla list --config {config}"));
    commands.push(format!("{exe} report funnel --config {config}"));
    commands
}

/// `word` quoted for a POSIX shell when it needs to be.
fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn sync_emulator(emu: &Emulator, now: Timestamp) {
    let ahead = now - emu.now();
    if let Ok(ahead) = ahead.to_std() {
        emu.advance(ahead);
    }
}

fn record(
    lead: &LeadId,
    event: &HistoryEvent,
    tally: &mut Tally,
    totals: &mut Totals,
    answers: &mut Vec<(Timestamp, String)>,
    rng: &mut StdRng,
) {
    let mut bump = |key: &'static str| *tally.lines.entry(key).or_default() += 1;
    match &event.kind {
        EventKind::StageChanged { to: Stage::MarketingQualified, .. } => bump("qualified"),
        EventKind::StageChanged { to: Stage::SalesQualified, .. } => bump("sales qualified"),
        EventKind::OwnerChanged { reason, .. } => {
            let reason = reason.split(':').next().unwrap_or(reason).trim().to_owned();
            *tally.routes.entry(reason).or_default() += 1;
        }
        EventKind::HandoffStarted { .. } => {
            totals.handoffs += 1;
            if totals.example.is_none() {
                totals.example = Some(lead.clone());
            }
            // Two reps in five answer, between one and twenty hours later.
            if rng.random_bool(0.4) {
                answers
                    .push((event.at + TimeDelta::minutes(rng.random_range(60..20 * 60)), lead.to_string()));
            }
        }
        EventKind::HandoffEnded { outcome, .. } if outcome.is_satisfied() => {
            totals.satisfied += 1;
            bump("answered");
        }
        // A chat message: one line per hand-off, like the emails (a copy's message is not one).
        EventKind::EffectQueued { effect: kind, key }
            if kind.starts_with("chat.") && !leadloop_core::sla::is_copy_key(key) =>
        {
            bump("slack")
        }
        EventKind::EffectQueued { effect: kind, .. } if kind.starts_with("chat.") => {}
        EventKind::EffectQueued { effect: kind, key } => {
            let kind: &'static str = match kind.as_str() {
                "sla.alert" => "alert",
                "sla.reminder" => "reminder",
                "sla.manager" => "manager",
                "sla.executive" => "executive",
                "nurture" => "nurture",
                _ => "other email",
            };
            *totals.emails.entry(kind.to_owned()).or_default() += 1;
            // The timeline counts hand-offs: a step copied to the manager (or the executive)
            // is one line, however many copies it sends.
            if !leadloop_core::sla::is_copy_key(key) {
                bump(kind);
            }
        }
        _ => {}
    }
}

/// Prints the window from `from` (cut at `end`, the end of the run) if anything happened.
fn flush(from: Timestamp, end: Timestamp, tally: &mut Tally) {
    let lines = std::mem::take(&mut tally.lines);
    let routes = std::mem::take(&mut tally.routes);
    if lines.is_empty() && routes.is_empty() {
        return;
    }
    crate::outln!("{} → {}", from.format("%a %d %b %H:%M"), (from + WINDOW).min(end).format("%a %H:%M"));
    let line = |_: Timestamp, text: &str| crate::outln!("    {text}");
    let hour = from;
    let n = |k: &str| lines.get(k).copied().unwrap_or(0);
    if n("qualified") > 0 {
        line(hour, &format!("{} leads became Marketing Qualified (score ≥ 65)", n("qualified")));
    }
    if !routes.is_empty() {
        let total: usize = routes.values().sum();
        let why: Vec<String> = routes.iter().map(|(r, k)| format!("{k} by {r}")).collect();
        line(hour, &format!("routed {total} to reps: {}", why.join(", ")));
    }
    // A rep's answer in the demo is the status that makes the lead Sales Qualified: one line
    // when the two counts are the same leads.
    let (answered, accepted) = (n("answered"), n("sales qualified"));
    let answer = if answered > 0 && answered == accepted {
        "answered by the rep (status changed in Salesforce): SLA met, now Sales Qualified"
    } else {
        "answered by the rep (status changed in Salesforce): SLA met"
    };
    let accepted_line = if answered == accepted { 0 } else { accepted };
    let sentences = [
        ("alert", "alerted the rep by email"),
        ("slack", "alerted the rep in Slack, with Accept / Recycle / Disqualify buttons"),
        ("answered", answer),
        ("reminder", "reminded the rep: no status change in 24 h"),
        ("manager", "escalated to the manager: 48 h"),
        ("executive", "escalated to the executive: 72 h"),
        ("nurture", "nurture emails queued for leads not ready for sales"),
    ];
    for (key, sentence) in sentences {
        if n(key) > 0 {
            line(hour, &format!("{} {sentence}", n(key)));
        }
        if key == "slack"
            && n(key) > 0
            && let Some(message) = tally.slack.take()
        {
            line(hour, &message);
        }
        if key == "answered" && accepted_line > 0 {
            line(hour, &format!("{accepted_line} accepted by sales (Sales Qualified)"));
        }
    }
}

/// A posted Slack message as Slack shows it: `slack  @U000001  headline  [Accept] [Recycle] …`.
fn slack_line(message: &leadloop_chat_standin::Posted) -> String {
    let buttons: Vec<String> = message
        .blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["text"]["text"].as_str().map(|t| format!("[{t}]")))
        .collect();
    format!("  slack  @{}  {}  {}", message.user, message.text, buttons.join(" "))
}

fn line(at: Timestamp, text: &str) {
    crate::outln!("{}  {text}", at.format("%a %d %b %H:%M"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_links_leads_to_the_emulator_and_sends_no_nurture_email_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        super::write_secret(&dir.path().join("salesforce-secret"), "secret").expect("write");
        super::write_secret(&dir.path().join("links-key"), &"k".repeat(64)).expect("write");
        let ids = leadloop_sf_emulator::SeedIds {
            executive: "005E".into(),
            managers: vec!["005M".into()],
            reps: vec!["005A".into(), "005B".into()],
            queue: "00GQ".into(),
            accounts: vec![],
            leads: vec![],
            tasks: vec![],
        };
        let text = config_text(dir.path(), "http://127.0.0.1:4321", &ids, None, "127.0.0.1:4322");
        let (config, warnings) = crate::config::load_str(std::path::Path::new("(demo config)"), &text)
            .expect("the demo config is valid");
        // Expected on loopback with people from the CRM: plain-http links, reps the config does
        // not list. Anything else (a nurture step repeating an earlier one, say) is a finding.
        let unexpected: Vec<String> = warnings
            .iter()
            .filter(|w| w.key != "links.public_url" && !w.key.starts_with("routing.rule"))
            .map(ToString::to_string)
            .collect();
        assert_eq!(unexpected, Vec::<String>::new());
        assert_eq!(config.sla.crm_url.as_deref(), Some("http://127.0.0.1:4321/lightning/r/Lead/{id}/view"));
    }
}
