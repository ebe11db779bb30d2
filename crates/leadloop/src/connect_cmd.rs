//! `leadloop validate --connect`: after the file checks, reach every peer the config names —
//! the PostgreSQL store, the CRM, the SMTP server, each person's calendar — through the
//! connectors' own `check` (the same code, credentials and TLS settings the daemon uses), one
//! line per check with its duration and, when it fails, the exact reason. Nothing is written:
//! no mail is sent, no CRM record read, no calendar entry booked, no schema created.

use std::sync::Arc;
use std::time::{Duration, Instant};

use leadloop_core::SystemClock;
use leadloop_core::connector::ConnectorError;
use leadloop_plugin::BuildContext;
use leadloop_smtp::Deliver;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreEngine};
use crate::exit;

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    Failed(String),
    /// Configured, but there is nothing to connect to (sled, directory delivery).
    Skipped(String),
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `store`, `crm`, `email`, `chat` or `calendar`.
    pub kind: &'static str,
    /// The engine, connector or person: `postgres`, `salesforce`, `smtp`, `005A0000001`.
    pub name: String,
    pub took: Duration,
    pub outcome: Outcome,
}

impl std::fmt::Display for Check {
    /// `KIND NAME RESULT TIMEms  TEXT`, in fixed columns (docs/cli.md).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (result, text) = match &self.outcome {
            Outcome::Ok(text) => ("ok", text),
            Outcome::Failed(text) => ("FAILED", text),
            Outcome::Skipped(text) => ("skipped", text),
        };
        write!(f, "{:<8} {:<12} {result:<7} {:>6}ms  {text}", self.kind, self.name, self.took.as_millis())
    }
}

fn timed(
    kind: &'static str,
    name: impl Into<String>,
    started: Instant,
    result: Result<String, String>,
) -> Check {
    let outcome = match result {
        Ok(text) => Outcome::Ok(text),
        Err(text) => Outcome::Failed(text),
    };
    Check { kind, name: name.into(), took: started.elapsed(), outcome }
}

fn skipped(kind: &'static str, name: impl Into<String>, text: String) -> Check {
    Check { kind, name: name.into(), took: Duration::ZERO, outcome: Outcome::Skipped(text) }
}

fn reason(error: ConnectorError) -> String {
    error.to_string()
}

/// Runs every check in order — store, CRM, email, each calendar person — calling `report`
/// with each line as it completes. Each check is bounded by its connector's own timeouts.
pub async fn run_checks(config: &Config, mut report: impl FnMut(&Check)) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |check: Check| {
        report(&check);
        checks.push(check);
    };
    let cx = BuildContext { clock: Arc::new(SystemClock), shutdown: CancellationToken::new() };

    match config.store.engine {
        StoreEngine::Postgres => {
            let started = Instant::now();
            let result = match config.store.postgres() {
                Ok(pg) => leadloop_store_postgres::check_server(&pg).await,
                Err(e) => Err(format!("store.{}: {}", e.key, e.message)),
            };
            push(timed("store", "postgres", started, result));
        }
        StoreEngine::Sled => push(skipped(
            "store",
            "sled",
            format!("{}: embedded, nothing to connect to", config.daemon.state_dir.display()),
        )),
    }

    if let Some(crm) = &config.crm {
        let started = Instant::now();
        let result = match crm.build(&cx) {
            Ok(connector) => connector.check().await.map_err(reason),
            Err(e) => Err(e.to_string()),
        };
        push(timed("crm", crm.kind.clone(), started, result));
    }

    if let Some(email) = config.email() {
        match email.deliver {
            Deliver::Smtp => {
                let started = Instant::now();
                let result = match email.build(&cx) {
                    Ok(mailer) => leadloop_core::Mailer::check(mailer.as_ref()).await.map_err(reason),
                    Err(e) => Err(e.to_string()),
                };
                push(timed("email", "smtp", started, result));
            }
            Deliver::Directory => {
                let dir = email.directory.clone().unwrap_or_default();
                push(skipped(
                    "email",
                    "directory",
                    format!("deliver = \"directory\" writes into {}: nothing to connect to", dir.display()),
                ));
            }
        }
    }

    if let Some(slack) = config.chat.as_ref().and_then(|c| c.slack.as_ref()) {
        let started = Instant::now();
        let result = match slack.build(&cx) {
            Ok(connector) => leadloop_core::ChatSender::check(&connector).await.map_err(reason),
            Err(e) => Err(format!("chat.slack.{}: {}", e.key, e.message)),
        };
        push(timed("chat", "slack", started, result));
    }
    if config.chat.as_ref().is_some_and(|c| c.teams.is_some()) {
        // Posting is the only thing a Workflows webhook does: checking it would post a card.
        push(skipped("chat", "teams", "a Workflows webhook has no read-only call: not posted to".into()));
    }

    if let Some(calendar) = &config.calendar {
        let started = Instant::now();
        match calendar.build(&cx) {
            Ok(connector) => {
                for person in leadloop_core::Calendar::people(connector.as_ref()) {
                    let started = Instant::now();
                    let result =
                        leadloop_core::Calendar::check(connector.as_ref(), &person).await.map_err(reason);
                    push(timed("calendar", person.as_str(), started, result));
                }
            }
            Err(e) => push(timed("calendar", "caldav", started, Err(e.to_string()))),
        }
    }
    checks
}

/// The last line: how many passed, failed and were skipped.
pub fn summary(checks: &[Check]) -> String {
    let count = |want: fn(&Outcome) -> bool| checks.iter().filter(|c| want(&c.outcome)).count();
    let ok = count(|o| matches!(o, Outcome::Ok(_)));
    let failed = count(|o| matches!(o, Outcome::Failed(_)));
    let skipped = count(|o| matches!(o, Outcome::Skipped(_)));
    format!("connections: {ok} ok, {failed} failed, {skipped} skipped")
}

/// `validate --connect` once the file is valid: the lines on stdout; 0 if no check failed,
/// 1 otherwise.
pub fn main(config: &Config) -> u8 {
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let checks = runtime.block_on(run_checks(config, |check| crate::outln!("{check}")));
    crate::outln!("{}", summary(&checks));
    if checks.iter().any(|c| matches!(c.outcome, Outcome::Failed(_))) { exit::FAILURE } else { exit::OK }
}
