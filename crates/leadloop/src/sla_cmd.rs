//! `leadloop sla list` and `leadloop sla show`, and the admin listener's `/sla` view that
//! they fall back to while a daemon holds the state directory.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use leadloop_core::sla::{SlaConfig, SlaRules};
use leadloop_core::{LeadId, LeadRecord, OrgChart, OutboxState, Timestamp};
use leadloop_store::{Store, StoreError};
use serde_json::{Value, json};

use crate::cli::load_for_reading;
use crate::exit;

/// Which hand-offs to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only hand-offs past their first reminder (the status did not change in time).
    pub overdue: bool,
    pub rep: Option<String>,
}

/// One open hand-off as JSON.
fn describe(
    rules: &SlaRules,
    chart: &OrgChart,
    record: &leadloop_core::LeadRecord,
    now: Timestamp,
) -> Option<Value> {
    let handoff = record.handoff.as_ref()?;
    let policy = rules.policy_named(&handoff.policy)?;
    let sent = handoff.next_step.checked_sub(1).and_then(|i| policy.steps.get(i)).map(|s| s.name.clone());
    let next = policy.steps.get(handoff.next_step).map(|s| s.name.clone());
    let next_due = rules.due(policy, handoff, handoff.next_step, chart);
    let first_reminder = rules.due(policy, handoff, 1, chart);
    Some(json!({
        "lead_id": record.lead.id,
        "lead": record.lead.display_name(),
        "company": record.lead.company,
        "status": record.lead.status,
        "owner_id": handoff.owner,
        "owner": chart.get(&handoff.owner).map(|p| p.name.clone()),
        "handoff": handoff.number,
        "policy": handoff.policy,
        "started_at": handoff.started_at,
        "age_hours": (now - handoff.started_at).num_minutes() as f64 / 60.0,
        "last_step": sent,
        "next_step": next,
        "next_step_at": next_due,
        "overdue": first_reminder.is_some_and(|at| at <= now),
    }))
}

/// Every open hand-off matching `filter`, oldest first.
pub async fn list(
    store: &dyn Store,
    sla: &SlaConfig,
    now: Timestamp,
    filter: &Filter,
) -> Result<Vec<Value>, StoreError> {
    let chart = OrgChart::new(store.people().await?);
    let rules = SlaRules::new(sla.clone());
    let mut out = Vec::new();
    // The store's index of open hand-offs, then those leads in pages: costs what is open.
    let open: Vec<LeadId> = store
        .open_handoffs()
        .await?
        .into_iter()
        .filter(|(_, owner)| filter.rep.as_deref().is_none_or(|rep| owner.as_str() == rep))
        .map(|(lead, _)| lead)
        .collect();
    for ids in open.chunks(leadloop_store::LeadPages::PAGE) {
        for record in store.leads_by_id(ids).await?.iter().flatten() {
            if let Some(row) = describe(&rules, &chart, record, now)
                && (!filter.overdue || row["overdue"] == Value::Bool(true))
            {
                out.push(row);
            }
        }
    }
    out.sort_by(|a, b| a["started_at"].as_str().cmp(&b["started_at"].as_str()));
    Ok(out)
}

/// Counts open hand-offs and, per last step sent, those past their first reminder, into the
/// `leadloop_sla_open_handoffs` and `leadloop_sla_overdue_handoffs{step}` gauges, and leads
/// per stage into `leadloop_funnel_leads{stage}`. Reads the open hand-offs and the store's
/// per-stage counters, not every lead; the daemon runs it every few minutes, not per scrape.
pub async fn gauge(store: &dyn Store, sla: &SlaConfig, now: Timestamp) -> Result<(), StoreError> {
    let rows = list(store, sla, now, &Filter::default()).await?;
    let mut by_step: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for policy in sla.policies() {
        for step in policy.steps {
            by_step.entry(step.name).or_default();
        }
    }
    for row in rows.iter().filter(|r| r["overdue"] == Value::Bool(true)) {
        let step = row["last_step"].as_str().unwrap_or("none").to_owned();
        *by_step.entry(step).or_default() += 1;
    }
    metrics::gauge!("leadloop_sla_open_handoffs").set(rows.len() as f64);
    // Funnel inventory: leads per stage now.
    for (stage, count) in store.leads_per_stage().await? {
        metrics::gauge!("leadloop_funnel_leads", "stage" => stage.as_str()).set(count as f64);
    }
    for (step, count) in by_step {
        metrics::gauge!("leadloop_sla_overdue_handoffs", "step" => step).set(count as f64);
    }
    Ok(())
}

/// A lead's hand-off and its full history.
pub async fn show(
    store: &dyn Store,
    sla: &SlaConfig,
    scoring: &leadloop_core::scoring::ScoringConfig,
    now: Timestamp,
    id: &str,
) -> Result<Option<Value>, StoreError> {
    let Some(record) = store.lead(&LeadId::new(id)).await? else { return Ok(None) };
    let chart = OrgChart::new(store.people().await?);
    let events = store.history(&record.lead.id).await?;
    // How each ended hand-off was first touched (status, a logged activity, an email link).
    let touches: Vec<Value> = events
        .iter()
        .filter_map(|(_, event)| match &event.kind {
            leadloop_core::EventKind::HandoffEnded { handoff, outcome, open_seconds, .. } => {
                outcome.first_touch_by().map(|by| {
                    json!({
                        "handoff": handoff,
                        "by": by,
                        "outcome": outcome,
                        "at": event.at,
                        "after_seconds": open_seconds,
                    })
                })
            }
            _ => None,
        })
        .collect();
    let history: Vec<Value> = events
        .into_iter()
        .map(|(seq, event)| {
            let mut value = serde_json::to_value(&event).unwrap_or(Value::Null);
            value["seq"] = json!(seq);
            value
        })
        .collect();
    let emails = ladder_emails(store, sla, &record).await?;
    Ok(Some(json!({
        "lead_id": record.lead.id,
        "lead": record.lead.display_name(),
        "status": record.lead.status,
        "stage": record.stage.as_str(),
        "owner_id": record.lead.owner_id,
        "handoffs": record.handoffs,
        "open_handoff": describe(&SlaRules::new(sla.clone()), &chart, &record, now),
        "first_touches": touches,
        "score": score_json(scoring, &record, now),
        "emails": emails,
        "history": history,
    })))
}

/// The ladder's emails of every hand-off of the lead, as the outbox holds them (the outbox
/// entry is the record of an effect: queued, sent, failed or dropped, and when). Steps of a
/// hand-off that ended before reaching them have no entry and are left out.
async fn ladder_emails(
    store: &dyn Store,
    sla: &SlaConfig,
    record: &LeadRecord,
) -> Result<Vec<Value>, StoreError> {
    let default = leadloop_core::sla::default_policy();
    let policy = record
        .handoff
        .as_ref()
        .and_then(|h| sla.policies.iter().find(|p| p.name == h.policy))
        .or_else(|| sla.policies.first())
        .unwrap_or(&default);
    let mut out = Vec::new();
    for handoff in 1..=record.handoffs {
        for step in &policy.steps {
            // A key its parts cannot make was never queued.
            let Ok(key) = leadloop_core::sla::step_key(record.lead.id.as_str(), handoff, &step.name) else {
                continue;
            };
            let Some(entry) = store.outbox_entry(&key).await? else { continue };
            let (state, at, reason) = match &entry.state {
                OutboxState::Pending => ("queued", None, None),
                OutboxState::Done { at } => ("sent", Some(*at), None),
                OutboxState::Failed { at, reason } => ("failed", Some(*at), Some(reason.clone())),
                OutboxState::Dropped { at, reason } => ("dropped", Some(*at), Some(reason.clone())),
                OutboxState::Held { since, reason } => {
                    ("held", Some(*since), Some(format!("held by the guard: {}", reason.as_str())))
                }
            };
            out.push(json!({
                "handoff": handoff,
                "step": step.name,
                "key": entry.key,
                "state": state,
                "queued_at": entry.created_at,
                "at": at,
                "attempts": entry.attempts,
                "reason": reason,
            }));
        }
    }
    Ok(out)
}

/// The lead's score now, with the rules and activities behind it and the decay applied.
fn score_json(
    scoring: &leadloop_core::scoring::ScoringConfig,
    record: &leadloop_core::LeadRecord,
    now: Timestamp,
) -> Value {
    let explained = scoring.explain(record, now);
    json!({
        "fit": explained.fit,
        "engagement": (explained.engagement * 10.0).round() / 10.0,
        "combined": (explained.combined * 10.0).round() / 10.0,
        "threshold": scoring.threshold,
        "half_life_days": explained.half_life_days,
        "fit_rules": explained.fit_rules.iter().map(|(rule, points)| json!({ "rule": rule, "points": points })).collect::<Vec<_>>(),
        "activities": explained
            .activities
            .iter()
            .map(|(rule, at, points, now_points)| json!({ "rule": rule, "at": at, "points": points, "now": (now_points * 10.0).round() / 10.0 }))
            .collect::<Vec<_>>(),
    })
}

pub enum Query {
    List(Filter),
    Show(String),
    /// Leads, optionally in one stage.
    Leads(Option<String>),
    /// What the CRM sync set aside (`leadloop quarantine`).
    Quarantine,
    /// The funnel over the last `since` (`leadloop report funnel`).
    Funnel(std::time::Duration),
    /// The CRM writes refused for good (`leadloop crm dead-letters`).
    DeadLetters,
    /// Put CRM dead letters back in the queue (`leadloop crm replay`): the one query that
    /// writes; `by` is the operator.
    Replay {
        which: leadloop_engine::crm::ReplayWhich,
        by: String,
    },
}

/// Leads in id order (optionally only those in `stage`), with stage, status, owner and score.
pub async fn leads(
    store: &dyn Store,
    scoring: &leadloop_core::scoring::ScoringConfig,
    now: Timestamp,
    stage: Option<&str>,
) -> Result<Vec<Value>, StoreError> {
    let mut out = Vec::new();
    let mut pages = leadloop_store::LeadPages::new(store);
    while let Some(page) = pages.next().await? {
        for record in page.iter().filter(|r| stage.is_none_or(|s| r.stage.as_str() == s)) {
            let explained = scoring.explain(record, now);
            out.push(json!({
                "lead_id": record.lead.id,
                "lead": record.lead.display_name(),
                "company": record.lead.company,
                "stage": record.stage.as_str(),
                "status": record.lead.status,
                "owner_id": record.lead.owner_id,
                "score": (explained.combined * 10.0).round() / 10.0 + 0.0,
                "open_handoff": record.handoff.as_ref().map(|h| h.number),
            }));
        }
    }
    Ok(out)
}

/// Where a read-only command looked for state: the config file it was given and the
/// `--state-dir`/`--admin-listen` flags, for reading and for saying where it looked.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub config_path: &'a Path,
    pub state_dir: Option<PathBuf>,
    pub admin: Option<SocketAddr>,
}

impl Source<'_> {
    /// The directory read, and where that choice came from, as an admin would say it.
    pub fn dir(&self, config: &crate::config::Config) -> (PathBuf, String) {
        match &self.state_dir {
            Some(dir) => (dir.clone(), "from --state-dir".to_owned()),
            None => (
                config.daemon.state_dir.clone(),
                format!("daemon.state_dir of {}", self.config_path.display()),
            ),
        }
    }
}

/// Says where a read-only command looked and found nothing, which daemon did not answer, and
/// how to point it elsewhere.
fn no_state(dir: &Path, origin: &str, admin: SocketAddr, why: &str) -> String {
    format!(
        "no leadloop state in {} ({origin}); nothing was created, and no daemon answered at {admin} ({why}).\n\
         Point it at the daemon's state: --state-dir DIR (the daemon's --state-dir or daemon.state_dir), \
         or --admin-listen ADDR to ask a running daemon.",
        dir.display()
    )
}

/// Runs `query` against the store; when a daemon holds the state directory, or the directory
/// holds no state, against a running daemon's admin listener (`--admin-listen`, else the
/// config's `daemon.admin_listen`). Nothing is ever created. Errors are reported on stderr;
/// the exit code is returned.
pub fn fetch(config: &crate::config::Config, source: &Source<'_>, query: &Query) -> Result<Value, u8> {
    let runtime = crate::cli::runtime()?;
    let admin = source.admin.unwrap_or(config.daemon.admin_listen);
    let (dir, origin) = source.dir(config);
    let result: Result<Value, String> = runtime.block_on(async {
        let now = chrono::Utc::now();
        match crate::runtime::open_store_for_reading(config, source.state_dir.clone()).await {
            Ok(store) => {
                let store: Arc<dyn Store> = store;
                match query {
                    Query::List(filter) => {
                        list(store.as_ref(), &config.sla, now, filter).await.map(Value::Array)
                    }
                    Query::Show(id) => show(store.as_ref(), &config.sla, &config.scoring, now, id)
                        .await
                        .map(|v| v.unwrap_or(Value::Null)),
                    Query::Leads(stage) => {
                        leads(store.as_ref(), &config.scoring, now, stage.as_deref()).await.map(Value::Array)
                    }
                    Query::Quarantine => crate::sync_cmd::quarantined(store.as_ref()).await.map(Value::Array),
                    Query::Funnel(since) => crate::report::funnel_since(store.as_ref(), *since, now).await,
                    Query::DeadLetters => leadloop_engine::crm::dead_letters(store.as_ref())
                        .await
                        .map(|rows| serde_json::to_value(rows).unwrap_or(Value::Null)),
                    Query::Replay { which, by } => {
                        let actor = leadloop_core::Actor::Admin { who: format!("{by} (on the store)") };
                        leadloop_engine::crm::replay(store.as_ref(), now, which, &actor)
                            .await
                            .map(|report| serde_json::to_value(report).unwrap_or(Value::Null))
                    }
                }
                .map_err(|e| e.to_string())
            }
            Err(error) if error.is_locked() => ask_daemon(admin, &config.daemon, query).await.map_err(|e| {
                format!(
                    "{error}; and its admin listener at {admin} did not answer ({e}); pass --admin-listen"
                )
            }),
            Err(StoreError::NoState { .. }) => match ask_daemon(admin, &config.daemon, query).await {
                Ok(value) => {
                    eprintln!(
                        "no leadloop state in {} ({origin}); read from the daemon at {admin}",
                        dir.display()
                    );
                    Ok(value)
                }
                Err(why) => Err(no_state(&dir, &origin, admin, &why)),
            },
            Err(error) => Err(error.to_string()),
        }
    });
    result.map_err(|error| {
        eprintln!("{error}");
        exit::STORE
    })
}

/// Asks a running daemon's admin listener for what `query` reads, with the admin token of
/// `daemon` (`admin_token_file` or `admin_token_env`) when one is configured.
async fn ask_daemon(
    admin: SocketAddr,
    daemon: &crate::config::DaemonConfig,
    query: &Query,
) -> Result<Value, String> {
    // A token that cannot be read (a file only the daemon's user may read) is not sent; if
    // the daemon wants one, its refusal says so, with why this one was not sent.
    let (token, unread) = match daemon.admin_token() {
        Ok(token) => (token, None),
        Err(error) => (None, Some(format!("daemon.{}: {}", error.key, error.message))),
    };
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let (url, request) = match query {
        Query::List(filter) => {
            let url = format!("http://{admin}/sla");
            let mut params = vec![("overdue", filter.overdue.to_string())];
            params.extend(filter.rep.iter().map(|rep| ("rep", rep.clone())));
            (url.clone(), client.get(url).query(&params))
        }
        Query::Leads(stage) => {
            let url = format!("http://{admin}/leads");
            let params: Vec<(&str, String)> = stage.iter().map(|s| ("stage", s.clone())).collect();
            (url.clone(), client.get(url).query(&params))
        }
        Query::Quarantine => {
            let url = format!("http://{admin}/quarantine");
            (url.clone(), client.get(url))
        }
        Query::Funnel(since) => {
            let url = format!("http://{admin}/report/funnel");
            let since = format!("{}s", since.as_secs());
            (url.clone(), client.get(url).query(&[("since", since)]))
        }
        Query::DeadLetters => {
            let url = format!("http://{admin}/crm/dead-letters");
            (url.clone(), client.get(url))
        }
        Query::Replay { which, by } => {
            let url = format!("http://{admin}/crm/replay");
            (url.clone(), client.post(url).json(&json!({ "which": which, "by": by })))
        }
        Query::Show(id) => {
            let mut url = reqwest::Url::parse(&format!("http://{admin}/sla/")).map_err(|e| e.to_string())?;
            url.path_segments_mut().map_err(|()| "bad admin address".to_owned())?.pop_if_empty().push(id);
            (url.to_string(), client.get(url))
        }
    };
    let request = match &token {
        Some(token) => request.bearer_auth(token.expose().trim()),
        None => request,
    };
    let response = request.send().await.map_err(without_url)?;
    if response.status() == reqwest::StatusCode::NOT_FOUND && matches!(query, Query::Show(_)) {
        return Ok(Value::Null);
    }
    if !response.status().is_success() {
        let status = response.status();
        let said = response.text().await.unwrap_or_default();
        let hint = match (status, &unread, &token) {
            (reqwest::StatusCode::UNAUTHORIZED, Some(unread), _) => {
                format!("; the token was not sent: {unread}")
            }
            (reqwest::StatusCode::UNAUTHORIZED, None, None) => {
                "; set daemon.admin_token_file (or admin_token_env) in the config to the daemon's admin token"
                    .to_owned()
            }
            _ => String::new(),
        };
        return Err(format!("{url} answered {status}: {}{hint}", said.trim()));
    }
    response.json::<Value>().await.map_err(|e| format!("{url}: {}", without_url(e)))
}

/// reqwest's message without the URL it repeats (the caller names the address).
pub(crate) fn without_url(error: reqwest::Error) -> String {
    if error.is_connect() {
        "connection refused or unreachable".to_owned()
    } else if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error.without_url().to_string()
    }
}

/// Runs `query` against the store, or, when a daemon holds the state directory, against its
/// admin listener.
pub fn main(source: &Source<'_>, query: Query, json_out: bool) -> u8 {
    let config = match load_for_reading(source.config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let value = match fetch(&config, source, &query) {
        Ok(value) => value,
        Err(code) => return code,
    };
    if value.is_null() {
        eprintln!("no such lead");
        return exit::FAILURE;
    }
    if json_out {
        crate::outln!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        return exit::OK;
    }
    match query {
        // `leadloop quarantine`, `report funnel` and `crm` print their own rows.
        Query::Quarantine | Query::Funnel(_) | Query::DeadLetters | Query::Replay { .. } => {}
        Query::Leads(_) => {
            let header = ["LEAD", "NAME", "STAGE", "SCORE", "OWNER", "STATUS"];
            crate::outln!(
                "{:<18} {:<24} {:<20} {:>6}  {:<18} {}",
                header[0],
                header[1],
                header[2],
                header[3],
                header[4],
                header[5]
            );
            for row in value.as_array().into_iter().flatten() {
                let text =
                    |k: &str| crate::escape_controls(row[k].as_str().unwrap_or("-"), false).into_owned();
                crate::outln!(
                    "{:<18} {:<24} {:<20} {:>6}  {:<18} {}",
                    text("lead_id"),
                    text("lead"),
                    text("stage"),
                    row["score"].as_f64().map_or("-".into(), |s| format!("{s:.0}")),
                    text("owner_id"),
                    text("status")
                );
            }
        }
        Query::List(_) => {
            let header = ["LEAD", "NAME", "OWNER", "#", "AGE(h)", "LAST", "NEXT", "NEXT AT"];
            crate::outln!(
                "{:<18} {:<24} {:<18} {:>4} {:>8}  {:<10} {:<10} {}",
                header[0],
                header[1],
                header[2],
                header[3],
                header[4],
                header[5],
                header[6],
                header[7]
            );
            for row in value.as_array().into_iter().flatten() {
                let text =
                    |k: &str| crate::escape_controls(row[k].as_str().unwrap_or("-"), false).into_owned();
                crate::outln!(
                    "{:<18} {:<24} {:<18} {:>4} {:>8.1}  {:<10} {:<10} {}{}",
                    text("lead_id"),
                    text("lead"),
                    crate::escape_controls(
                        row["owner"].as_str().unwrap_or_else(|| row["owner_id"].as_str().unwrap_or("-")),
                        false
                    ),
                    // As text: a JSON value ignores the column width.
                    row["handoff"].as_u64().map_or("-".to_owned(), |n| n.to_string()),
                    row["age_hours"].as_f64().unwrap_or(0.0),
                    text("last_step"),
                    text("next_step"),
                    text("next_step_at"),
                    if row["overdue"] == Value::Bool(true) { "  OVERDUE" } else { "" }
                );
            }
        }
        Query::Show(_) => {
            let text = |v: &Value| {
                let text = v
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| if v.is_null() { "-".into() } else { v.to_string() });
                crate::escape_controls(&text, false).into_owned()
            };
            crate::outln!("lead      {} ({})", text(&value["lead_id"]), text(&value["lead"]));
            crate::outln!("status    {}", text(&value["status"]));
            crate::outln!("stage     {}", text(&value["stage"]));
            crate::outln!("owner     {}", text(&value["owner_id"]));
            crate::outln!("hand-offs {}", text(&value["handoffs"]));
            let score = &value["score"];
            let num = |v: &Value| match v.as_f64() {
                Some(x) if (x - x.round()).abs() < 1e-9 => format!("{:.0}", x + 0.0),
                Some(x) => format!("{x:.1}"),
                None => text(v),
            };
            crate::outln!(
                "score     {} (fit {} + engagement {}; threshold {}; engagement halves every {} days)",
                num(&score["combined"]),
                num(&score["fit"]),
                num(&score["engagement"]),
                num(&score["threshold"]),
                num(&score["half_life_days"])
            );
            for rule in score["fit_rules"].as_array().into_iter().flatten() {
                crate::outln!("            fit {:>6}  {}", num(&rule["points"]), text(&rule["rule"]));
            }
            for activity in score["activities"].as_array().into_iter().flatten() {
                crate::outln!(
                    "            {} {:>6} scored, {:>6} now  {}",
                    text(&activity["at"]),
                    num(&activity["points"]),
                    num(&activity["now"]),
                    text(&activity["rule"])
                );
            }
            match value["open_handoff"].as_object() {
                Some(open) => crate::outln!(
                    "open      #{} under policy {}, last step {}, next {} at {}{}",
                    text(&open["handoff"]),
                    text(&open["policy"]),
                    text(&open["last_step"]),
                    text(&open["next_step"]),
                    text(&open["next_step_at"]),
                    if open["overdue"] == Value::Bool(true) { " (OVERDUE)" } else { "" }
                ),
                None => crate::outln!("open      none"),
            }
            for touch in value["first_touches"].as_array().into_iter().flatten() {
                let seconds = touch["after_seconds"].as_i64().unwrap_or(0);
                crate::outln!(
                    "touched   #{} by {} after {}h {:02}m: {}",
                    text(&touch["handoff"]),
                    text(&touch["by"]),
                    seconds / 3600,
                    (seconds % 3600) / 60,
                    text(&touch["outcome"])
                );
            }
            crate::outln!("history:");
            for event in value["history"].as_array().into_iter().flatten() {
                let mut detail = event.clone();
                if let Some(map) = detail.as_object_mut() {
                    for key in ["at", "kind", "seq", "actor"] {
                        map.remove(key);
                    }
                }
                crate::outln!(
                    "  {:>4} {} {:<16} {}",
                    text(&event["seq"]),
                    text(&event["at"]),
                    text(&event["kind"]),
                    detail
                );
            }
        }
    }
    exit::OK
}
