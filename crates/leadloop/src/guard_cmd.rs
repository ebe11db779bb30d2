//! `leadloop pause`, `leadloop resume` and `leadloop approve`: the blast-radius guard's
//! switches. Each opens the store and acts through [`leadloop_engine::Guard`]; while a daemon
//! holds the store, it asks the daemon's admin listener (`POST /guard/ACTION`), so the switch
//! takes effect at the daemon's next relay round, without a restart.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use leadloop_core::Actor;
use leadloop_core::guard::PauseScope;
use leadloop_engine::Guard;
use leadloop_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cli::load_for_reading;
use crate::exit;

/// What `pause`/`resume` name: one scope, or `all` (email and CRM; `resume all` also lifts a
/// nurture pause).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// All email (internal SLA mail still goes when `guard.exempt_internal`).
    Email,
    /// Nurture email only (what the bounce guard pauses).
    Nurture,
    /// CRM write-back.
    Crm,
    /// Email and CRM write-back (resume: every pause).
    All,
}

impl Scope {
    fn scopes(self, resuming: bool) -> Vec<PauseScope> {
        match self {
            Scope::Email => vec![PauseScope::Email],
            Scope::Nurture => vec![PauseScope::Nurture],
            Scope::Crm => vec![PauseScope::Crm],
            Scope::All if resuming => PauseScope::ALL.to_vec(),
            Scope::All => vec![PauseScope::Email, PauseScope::Crm],
        }
    }
}

/// One guard action, as the CLI performs it or sends it to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Pause {
        scope: Scope,
        who: String,
        reason: String,
    },
    Resume {
        scope: Scope,
        who: String,
    },
    Approve {
        who: String,
    },
    Reject {
        who: String,
    },
    /// What is held (`approve --dry-run`, `pause` without a scope).
    Status {
        sample: usize,
    },
}

impl Action {
    pub fn action(&self) -> &'static str {
        match self {
            Action::Pause { .. } => "pause",
            Action::Resume { .. } => "resume",
            Action::Approve { .. } => "approve",
            Action::Reject { .. } => "reject",
            Action::Status { .. } => "status",
        }
    }
}

/// Performs `action` through `guard`; the answer is what the CLI prints.
pub async fn perform(guard: &Guard, action: &Action) -> Result<Value, leadloop_engine::EngineError> {
    let admin = |who: &str| Actor::Admin { who: who.to_owned() };
    Ok(match action {
        Action::Pause { scope, who, reason } => {
            guard.pause(&scope.scopes(false), admin(who), reason).await?;
            json!({ "held": guard.held(0).await?, "exempt_internal": guard.config().exempt_internal })
        }
        Action::Resume { scope, who } => {
            let released = guard.resume(&scope.scopes(true), admin(who)).await?;
            json!({ "released": released, "held": guard.held(0).await? })
        }
        Action::Approve { who } => json!({ "released": guard.approve(admin(who)).await? }),
        Action::Reject { who } => json!({ "dropped": guard.reject(admin(who)).await? }),
        Action::Status { sample } => json!({ "held": guard.held(*sample).await? }),
    })
}

/// Who runs the command, for the guard's log.
pub fn who() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .map(|user| format!("{user} (cli)"))
        .unwrap_or_else(|_| "cli".to_owned())
}

/// Runs `action` on the store of `config_path` (or `state_dir`), or through the daemon that
/// holds it; prints the outcome. Returns the exit code.
pub fn main(
    config_path: &std::path::Path,
    state_dir: Option<PathBuf>,
    admin: Option<SocketAddr>,
    action: Action,
    json_out: bool,
) -> u8 {
    let config = match load_for_reading(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let admin = admin.unwrap_or(config.daemon.admin_listen);
    let result: Result<(Value, &'static str), String> = runtime.block_on(async {
        // A pause may be set before the daemon first runs (it honours it from the start);
        // the other actions need state that exists.
        let opened = match action {
            Action::Pause { .. } => crate::runtime::open_store(&config, state_dir.clone()).await,
            _ => crate::runtime::open_store_for_reading(&config, state_dir.clone()).await,
        };
        match opened {
            Ok(store) => {
                let store: Arc<dyn Store> = store;
                let guard = Guard::new(store, Arc::new(leadloop_core::SystemClock), config.guard.rules());
                perform(&guard, &action).await.map(|v| (v, "the store")).map_err(|e| e.to_string())
            }
            Err(error) if error.is_locked() || matches!(error, StoreError::NoState { .. }) => {
                ask_daemon(admin, &config.daemon, &action).await.map(|v| (v, "the running daemon")).map_err(|e| {
                    format!("{error}; and the daemon's admin listener at {admin} did not act ({e}); pass --admin-listen")
                })
            }
            Err(error) => Err(error.to_string()),
        }
    });
    let (value, through) = match result {
        Ok(done) => done,
        Err(error) => {
            eprintln!("{error}");
            return exit::STORE;
        }
    };
    if json_out {
        crate::outln!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        return exit::OK;
    }
    print_human(&action, &value, through);
    exit::OK
}

fn print_human(action: &Action, value: &Value, through: &str) {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    match action {
        Action::Pause { scope, .. } => {
            crate::outln!("paused {} (through {through})", format!("{scope:?}").to_lowercase());
            if matches!(scope, Scope::Email | Scope::All) {
                if value["exempt_internal"] == Value::Bool(true) {
                    crate::outln!(
                        "internal SLA mail (reps, managers, executives) still goes: guard.exempt_internal = true"
                    );
                } else {
                    crate::outln!("internal SLA mail is held too: guard.exempt_internal = false");
                }
            }
            crate::outln!("held mail stays in the outbox and goes after `leadloop resume`");
        }
        Action::Resume { scope, .. } => crate::outln!(
            "resumed {}: {} held entries released (through {through})",
            format!("{scope:?}").to_lowercase(),
            n(&value["released"])
        ),
        Action::Approve { .. } => {
            crate::outln!("approved: {} nurture emails released (through {through})", n(&value["released"]))
        }
        Action::Reject { .. } => {
            crate::outln!("rejected: {} nurture emails dropped (through {through})", n(&value["dropped"]))
        }
        Action::Status { .. } => {}
    }
    print_held(&value["held"]);
}

/// The switches and what they hold.
fn print_held(held: &Value) {
    if held.is_null() {
        return;
    }
    let text = |v: &Value| crate::escape_controls(v.as_str().unwrap_or("-"), false).into_owned();
    let state = &held["state"];
    for scope in ["email", "nurture", "crm"] {
        match state[scope].as_object() {
            Some(pause) => crate::outln!(
                "{scope:<8} paused since {} by {}: {}",
                text(&pause["since"]),
                actor(&pause["by"]),
                text(&pause["reason"])
            ),
            None => crate::outln!("{scope:<8} running"),
        }
    }
    crate::outln!(
        "held     {} email, {} CRM writes by pauses",
        held["paused_email"].as_u64().unwrap_or(0),
        held["paused_crm"].as_u64().unwrap_or(0)
    );
    match state["surge"].as_object() {
        Some(surge) => crate::outln!(
            "surge    {} nurture emails wait for `leadloop approve` ({} were queued within an hour, from {})",
            held["surge"].as_u64().unwrap_or(0),
            surge["queued"].as_u64().unwrap_or(0),
            text(&surge["since"])
        ),
        None if held["surge"].as_u64().unwrap_or(0) > 0 => crate::outln!(
            "surge    {} nurture emails still held from an earlier surge",
            held["surge"].as_u64().unwrap_or(0)
        ),
        None => crate::outln!("surge    none"),
    }
    for sample in held["sample"].as_array().into_iter().flatten() {
        let to: Vec<String> = sample["to"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| crate::escape_controls(a.as_str().unwrap_or(""), false).into_owned())
            .collect();
        crate::outln!(
            "  {} lead {} to {} ({}), queued {}",
            text(&sample["key"]),
            text(&sample["lead"]),
            to.join(", "),
            text(&sample["template"]),
            text(&sample["queued_at"])
        );
    }
}

fn actor(value: &Value) -> String {
    match serde_json::from_value::<Actor>(value.clone()) {
        Ok(actor) => crate::escape_controls(&actor.to_string(), false).into_owned(),
        Err(_) => "-".into(),
    }
}

/// Sends `action` to a running daemon's admin listener, with the admin token of `daemon`
/// when one is configured.
async fn ask_daemon(
    admin: SocketAddr,
    daemon: &crate::config::DaemonConfig,
    action: &Action,
) -> Result<Value, String> {
    let (token, unread) = match daemon.admin_token() {
        Ok(token) => (token, None),
        Err(error) => (None, Some(format!("daemon.{}: {}", error.key, error.message))),
    };
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())?;
    let request = match action {
        Action::Status { sample } => {
            let url = format!("http://{admin}/guard");
            client.get(url).query(&[("sample", sample.to_string())])
        }
        other => client.post(format!("http://{admin}/guard/{}", other.action())).json(other),
    };
    let request = match &token {
        Some(token) => request.bearer_auth(token.expose().trim()),
        None => request,
    };
    let response = request.send().await.map_err(crate::sla_cmd::without_url)?;
    let status = response.status();
    if !status.is_success() {
        let said = response.text().await.unwrap_or_default();
        let hint = match (status, unread) {
            (reqwest::StatusCode::UNAUTHORIZED, Some(unread)) => {
                format!("; the token was not sent: {unread}")
            }
            _ => String::new(),
        };
        return Err(format!("{status}: {}{hint}", said.trim()));
    }
    let value: Value = response.json().await.map_err(crate::sla_cmd::without_url)?;
    // `GET /guard` answers the held view itself.
    Ok(if matches!(action, Action::Status { .. }) { json!({ "held": value }) } else { value })
}
