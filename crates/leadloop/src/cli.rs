//! The command line. Command names and flags are a contract (documented in `docs/cli.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use leadloop_store::Store;

use crate::config::{self, Config, LogFormat};
use crate::{daemon, exit};

#[derive(Debug, Parser)]
#[command(
    name = "leadloop",
    version,
    about = "Closes the loop between marketing and sales: no lead falls through."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run(RunArgs),
    /// See the whole loop in a minute: a sample Salesforce org on loopback, accelerated time,
    /// no config needed.
    Demo(crate::demo::DemoArgs),
    /// Check a config file: syntax, types, unknown keys, references. Exit 78 if invalid.
    /// With --connect, also reach every configured peer; exit 1 if one fails.
    Validate(ValidateArgs),
    /// Write a portable, checksummed backup of the state directory.
    Export(BackupArgs),
    /// Load a backup into an empty state directory (verified before anything is written).
    Import(BackupArgs),
    /// Run the real engine on events in virtual time and print the effects as JSON lines.
    Simulate {
        #[command(flatten)]
        config: ConfigArg,
        /// Events, one JSON object per line, ordered by `at`.
        #[arg(long, value_name = "FILE.jsonl")]
        events: PathBuf,
        /// Run the clock to this instant (RFC 3339); default: until no timer is left, at most
        /// 400 days past the last event.
        #[arg(long, value_name = "RFC3339")]
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Leads: one lead's stage, score (with its reasons), hand-off and history.
    Leads {
        #[command(subcommand)]
        command: LeadsCommand,
    },
    /// Reports from the history.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Open hand-offs and their SLA state.
    Sla {
        #[command(subcommand)]
        command: SlaCommand,
    },
    /// Email tools: send a test message, preview a template.
    Email {
        #[command(subcommand)]
        command: EmailCommand,
    },
    /// Nurture tracks: list them, preview a lead's upcoming sends.
    Nurture {
        #[command(subcommand)]
        command: NurtureCommand,
    },
    /// Records the CRM sync set aside (unmappable, unknown owner), with the reason.
    Quarantine(ReadArgs),
    /// Blast-radius guard: pause email, nurture email or CRM write-back (kept in the store,
    /// so a restart honours it); held work stays in the outbox. Without a scope: what is
    /// paused and held.
    Pause(PauseArgs),
    /// Lift a pause and release what it held.
    Resume(ResumeArgs),
    /// Release the nurture email a surge hold keeps back (or drop it with --reject); with
    /// --dry-run, show how many and a sample.
    Approve(ApproveArgs),
    /// CRM write-back: the writes the CRM refused for good, and putting them back in the queue.
    Crm {
        #[command(subcommand)]
        command: CrmCommand,
    },
    /// One sync pass against the configured CRM (and one round of write-back), with counts.
    Sync {
        #[command(flatten)]
        config: ConfigArg,
        /// The state directory; overrides the config's.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Run one pass and exit (required: the daemon syncs continuously).
        #[arg(long)]
        once: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Human,
    Json,
}

/// Where to read state: the store, or a running daemon's admin listener.
#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The state directory; overrides the config's.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A running daemon's admin listener, asked when it holds the state directory.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

impl ReadArgs {
    /// Where to read, for the commands that only read.
    pub fn source(&self) -> crate::sla_cmd::Source<'_> {
        crate::sla_cmd::Source {
            config_path: &self.config.config,
            state_dir: self.state_dir.clone(),
            admin: self.admin_listen,
        }
    }
}

/// Where the guard's switches are: the store, or the running daemon that holds it.
#[derive(Debug, Args)]
pub struct GuardTarget {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The state directory; overrides the config's.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A running daemon's admin listener, asked when it holds the store.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// What to pause: `email` (all mail; internal SLA mail still goes if
    /// `guard.exempt_internal`), `nurture`, `crm` (write-back) or `all` (email and CRM).
    #[arg(value_enum, value_name = "SCOPE")]
    pub scope: Option<crate::guard_cmd::Scope>,
    /// Why, for the guard's log.
    #[arg(long, value_name = "TEXT", default_value = "paused by an operator")]
    pub reason: String,
    #[command(flatten)]
    pub target: GuardTarget,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// What to resume: `email`, `nurture` (also after the bounce guard paused it), `crm`, or
    /// `all` (every pause).
    #[arg(value_enum, value_name = "SCOPE")]
    pub scope: crate::guard_cmd::Scope,
    #[command(flatten)]
    pub target: GuardTarget,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Show how many wait and a sample; change nothing.
    #[arg(long, conflicts_with = "reject")]
    pub dry_run: bool,
    /// Drop the held nurture email instead of sending it (each entry records who decided).
    #[arg(long)]
    pub reject: bool,
    /// How many held emails to show with --dry-run.
    #[arg(long, default_value_t = 10)]
    pub sample: usize,
    #[command(flatten)]
    pub target: GuardTarget,
}

#[derive(Debug, Subcommand)]
pub enum CrmCommand {
    /// The writes the CRM refused for good (dead letters): lead, fields, the CRM's error and
    /// the attempts made.
    DeadLetters(ReadArgs),
    /// Put dead letters back in the queue once their cause is fixed (e.g. a picklist value
    /// added); each lead's history records the replay and who made it.
    Replay {
        #[command(flatten)]
        read: ReadArgs,
        /// The dead letters' keys, as `leadloop crm dead-letters` lists them.
        #[arg(value_name = "KEY", required_unless_present = "all", conflicts_with = "all")]
        keys: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Who replays, for the history; default: the login name (`$USER`).
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Per stage: inventory now, flow in and out, conversion onward, median time in stage.
    Funnel {
        #[command(flatten)]
        read: ReadArgs,
        /// The period, e.g. `30d`, `12w`.
        #[arg(long, default_value = "30d", value_parser = leadloop_plugin::serde_duration::parse)]
        since: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum LeadsCommand {
    /// Leads with their stage, score, owner and CRM status.
    List {
        #[command(flatten)]
        read: ReadArgs,
        /// Only leads in this stage, e.g. `marketing_qualified`.
        #[arg(long, value_name = "STAGE")]
        stage: Option<String>,
    },
    /// A lead's stage, score with the rules and activities behind it, hand-off and history.
    Show {
        #[command(flatten)]
        read: ReadArgs,
        /// The lead's id.
        #[arg(value_name = "LEAD")]
        lead: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SlaCommand {
    /// List open hand-offs, oldest first.
    List {
        #[command(flatten)]
        read: ReadArgs,
        /// Only hand-offs whose status did not change before the first reminder.
        #[arg(long)]
        overdue: bool,
        /// Only this rep's hand-offs.
        #[arg(long, value_name = "ID")]
        rep: Option<String>,
    },
    /// A lead's hand-off state and full history.
    Show {
        #[command(flatten)]
        read: ReadArgs,
        /// The lead's id.
        #[arg(value_name = "LEAD")]
        lead: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NurtureCommand {
    /// The configured tracks: steps and schedules, catch-up, exits, and how many leads are in
    /// each.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// The state directory; overrides the config's.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// A lead's upcoming sends on a track, with dates and times in the lead's zone (from its
    /// enrolment, or as if it enrolled now).
    Preview {
        #[command(flatten)]
        config: ConfigArg,
        /// The track's name.
        #[arg(value_name = "TRACK")]
        track: String,
        /// The lead's id.
        #[arg(long, value_name = "ID")]
        lead: String,
        /// How many sends to show.
        #[arg(long, default_value_t = 12)]
        count: usize,
        /// The state directory; overrides the config's.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum EmailCommand {
    /// Send one message through the configured mailer and print the server's reply.
    Test {
        #[command(flatten)]
        config: ConfigArg,
        /// The recipient.
        #[arg(long, value_name = "ADDR")]
        to: String,
        /// The state directory (for `deliver = "directory"`); overrides the config's.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Render a template with sample data, or with a stored lead's data.
    Preview {
        #[command(flatten)]
        config: ConfigArg,
        /// The template name, e.g. `sla_alert`.
        #[arg(long, value_name = "NAME")]
        template: String,
        /// A lead id to take the lead's data from the store.
        #[arg(long, value_name = "ID")]
        lead: Option<String>,
        /// The state directory; overrides the config's.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "LEADLOOP_CONFIG",
        default_value = crate::config::DEFAULT_PATH
    )]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Also connect, once the file is valid: log in to the CRM, open an SMTP session (EHLO,
    /// STARTTLS, AUTH; no mail), reach each person's calendar and the PostgreSQL store; one
    /// line per check with its time and, if it failed, why.
    #[arg(long)]
    pub connect: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Overrides `daemon.state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Overrides `daemon.admin_listen` (default 127.0.0.1:9477).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Overrides `daemon.log_format`.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The config file (for `daemon.state_dir` and store settings); without it and without
    /// `--state-dir`, `$LEADLOOP_CONFIG` or /etc/leadloop/leadloop.toml.
    #[arg(long, short = 'c', value_name = "FILE", env = "LEADLOOP_CONFIG")]
    pub config: Option<PathBuf>,
    /// The state directory; overrides the config's.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The backup file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version are not errors; anything else is a usage error (EX_USAGE).
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    let code = match cli.command {
        Command::Validate(args) => validate(&args.config.config, args.connect),
        Command::Run(args) => daemon::main(args),
        Command::Demo(args) => crate::demo::main(args),
        Command::Export(args) => backup(args, true),
        Command::Import(args) => backup(args, false),
        Command::Sla { command: SlaCommand::List { read, overdue, rep } } => crate::sla_cmd::main(
            &read.source(),
            crate::sla_cmd::Query::List(crate::sla_cmd::Filter { overdue, rep }),
            read.format == Format::Json,
        ),
        Command::Leads { command: LeadsCommand::List { read, stage } } => crate::sla_cmd::main(
            &read.source(),
            crate::sla_cmd::Query::Leads(stage),
            read.format == Format::Json,
        ),
        Command::Sla { command: SlaCommand::Show { read, lead } }
        | Command::Leads { command: LeadsCommand::Show { read, lead } } => crate::sla_cmd::main(
            &read.source(),
            crate::sla_cmd::Query::Show(lead),
            read.format == Format::Json,
        ),
        Command::Report { command: ReportCommand::Funnel { read, since } } => {
            crate::report::main(&read.source(), since, read.format == Format::Json)
        }
        Command::Quarantine(read) => crate::sync_cmd::quarantine(&read),
        Command::Pause(args) => {
            let action = match args.scope {
                Some(scope) => crate::guard_cmd::Action::Pause {
                    scope,
                    who: crate::guard_cmd::who(),
                    reason: args.reason,
                },
                None => crate::guard_cmd::Action::Status { sample: 0 },
            };
            guard(args.target, action)
        }
        Command::Resume(args) => guard(
            args.target,
            crate::guard_cmd::Action::Resume { scope: args.scope, who: crate::guard_cmd::who() },
        ),
        Command::Approve(args) => {
            let who = crate::guard_cmd::who();
            let action = if args.dry_run {
                crate::guard_cmd::Action::Status { sample: args.sample }
            } else if args.reject {
                crate::guard_cmd::Action::Reject { who }
            } else {
                crate::guard_cmd::Action::Approve { who }
            };
            guard(args.target, action)
        }
        Command::Crm { command: CrmCommand::DeadLetters(read) } => crate::sync_cmd::dead_letters(&read),
        Command::Crm { command: CrmCommand::Replay { read, keys, all, by } } => {
            let which = if all {
                leadloop_engine::crm::ReplayWhich::All
            } else {
                leadloop_engine::crm::ReplayWhich::Keys(keys)
            };
            crate::sync_cmd::replay(&read, which, by)
        }
        Command::Sync { config, state_dir, once, format } => {
            crate::sync_cmd::main(&config.config, state_dir, once, format)
        }
        Command::Simulate { config, events, until } => crate::simulate::main(&config.config, &events, until),
        Command::Nurture { command: NurtureCommand::List { config, state_dir, format } } => {
            crate::nurture_cmd::list(&config.config, state_dir, format == Format::Json)
        }
        Command::Nurture {
            command: NurtureCommand::Preview { config, track, lead, count, state_dir, format },
        } => crate::nurture_cmd::preview(
            &config.config,
            &track,
            &lead,
            count,
            state_dir,
            format == Format::Json,
        ),
        Command::Email { command: EmailCommand::Test { config, to, state_dir } } => {
            crate::email_cmd::test(&config.config, &to, state_dir)
        }
        Command::Email { command: EmailCommand::Preview { config, template, lead, state_dir } } => {
            crate::email_cmd::preview(&config.config, &template, lead.as_deref(), state_dir)
        }
    };
    ExitCode::from(code)
}

fn guard(target: GuardTarget, action: crate::guard_cmd::Action) -> u8 {
    crate::guard_cmd::main(
        &target.config.config,
        target.state_dir,
        target.admin_listen,
        action,
        target.format == Format::Json,
    )
}

/// A single-threaded runtime for the one-shot commands; a failure to start it is reported.
pub fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("cannot start runtime: {e}");
        exit::FAILURE
    })
}

/// Prints findings to stderr; returns the config if it is usable.
pub fn load_reporting(path: &Path) -> Result<Config, u8> {
    load(path, true)
}

/// As [`load_reporting`], for commands that only read or preview: errors are printed, warnings
/// are left to `validate` and the daemon's start, so they are not repeated by every query.
pub fn load_for_reading(path: &Path) -> Result<Config, u8> {
    load(path, false)
}

fn load(path: &Path, warnings_too: bool) -> Result<Config, u8> {
    match config::load(path) {
        Ok((config, warnings)) => {
            if warnings_too {
                eprint!("{warnings}");
            }
            Ok(config)
        }
        Err(errors) => {
            eprint!("{errors}");
            let count = errors.iter().filter(|d| d.severity == config::Severity::Error).count();
            eprintln!("{}: {count} error{} in config", path.display(), if count == 1 { "" } else { "s" });
            Err(exit::CONFIG)
        }
    }
}

fn validate(path: &Path, connect: bool) -> u8 {
    match load_reporting(path) {
        Ok(config) => {
            eprintln!("{}: valid", path.display());
            if connect { crate::connect_cmd::main(&config) } else { exit::OK }
        }
        Err(code) => code,
    }
}

fn backup(args: BackupArgs, export: bool) -> u8 {
    let config_path = match (&args.config, &args.state_dir) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(PathBuf::from(crate::config::DEFAULT_PATH)),
    };
    let config = match &config_path {
        Some(path) => match load_for_reading(path) {
            Ok(config) => config,
            Err(code) => return code,
        },
        None => Config::default(),
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        // Export only reads: it must not create an empty store where it looked.
        let opened = if export {
            crate::runtime::open_store_for_reading(&config, args.state_dir.clone()).await
        } else {
            crate::runtime::open_store(&config, args.state_dir.clone()).await
        };
        let store: Arc<dyn Store> = match opened {
            Ok(store) => store,
            Err(e) => {
                eprintln!("{e}");
                return exit::STORE;
            }
        };
        let result = if export {
            leadloop_store::export(store.as_ref(), &args.file).await
        } else {
            leadloop_store::import(store.as_ref(), &args.file).await
        };
        match result {
            Ok(summary) => {
                let line = serde_json::json!({ "records": summary.records, "sha256": summary.sha256 });
                #[allow(clippy::print_stdout)]
                {
                    crate::outln!("{line}");
                }
                exit::OK
            }
            Err(e) => {
                eprintln!("{e}");
                exit::STORE
            }
        }
    })
}
