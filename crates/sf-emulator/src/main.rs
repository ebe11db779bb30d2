//! `leadloop-sf-emulator`: runs the Salesforce emulator as its own process (for out-of-process
//! tests and the benchmark), optionally seeded, printing `listening on URL` once ready and
//! serving until SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use leadloop_sf_emulator::seed::{SeedSpec, populate};
use leadloop_sf_emulator::{Config, Emulator};

#[derive(Debug, Parser)]
#[command(name = "leadloop-sf-emulator", about = "A Salesforce REST API emulator for tests and benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Leads to seed.
    #[arg(long, default_value_t = 0)]
    seed_leads: usize,
    /// Sales reps to seed (with managers and an executive) when seeding.
    #[arg(long, default_value_t = 8)]
    seed_reps: usize,
    /// Managers to seed.
    #[arg(long, default_value_t = 2)]
    seed_managers: usize,
    /// Accounts to seed.
    #[arg(long, default_value_t = 20)]
    seed_accounts: usize,
    /// Tasks on leads to seed.
    #[arg(long, default_value_t = 0)]
    seed_tasks: usize,
    /// The random seed of the sample org.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Default query batch size.
    #[arg(long, default_value_t = 2000)]
    batch_size: usize,
    /// The connected app's consumer key (JWT `iss`, `client_id`).
    #[arg(long, default_value = "leadloop-consumer-key")]
    client_id: String,
    #[arg(long, default_value = "leadloop-client-secret")]
    client_secret: String,
    /// PEM public key that JWT bearer assertions must verify against.
    #[arg(long)]
    jwt_public_key: Option<PathBuf>,
    /// Usernames accepted as JWT `sub` (repeatable).
    #[arg(long = "username")]
    usernames: Vec<String>,
    /// Refresh tokens accepted by the refresh_token grant (repeatable).
    #[arg(long = "refresh-token")]
    refresh_tokens: Vec<String>,
    /// Daily API request allowance.
    #[arg(long, default_value_t = 100_000)]
    daily_limit: u64,
    /// Sessions expire after this many seconds of emulator time.
    #[arg(long)]
    session_ttl_secs: Option<u64>,
    /// The login URL JWT assertions must name as `aud` (default: the emulator's own URL).
    #[arg(long)]
    login_url: Option<String>,
    /// A custom field marked External ID and unique, as `OBJECT.FIELD` (e.g.
    /// `Task.Leadloop_Key__c`), for upserts (repeatable).
    #[arg(long = "external-id", value_name = "OBJECT.FIELD")]
    external_ids: Vec<String>,
    /// Log filter (RUST_LOG syntax); logs go to stderr.
    #[arg(long, default_value = "warn")]
    log: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .init();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "leadloop-sf-emulator: {message}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut config = Config {
        batch_size: args.batch_size.max(1),
        daily_api_limit: args.daily_limit,
        consumer_key: args.client_id,
        client_secret: args.client_secret,
        refresh_tokens: args.refresh_tokens,
        session_ttl: args.session_ttl_secs.map(std::time::Duration::from_secs),
        login_url: args.login_url,
        ..Config::default()
    };
    if !args.usernames.is_empty() {
        config.usernames = args.usernames;
    }
    if let Some(path) = &args.jwt_public_key {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the JWT public key {}: {e}", path.display()))?;
        config.jwt_public_key_pem = Some(pem);
    }
    let emu = Emulator::start_on(config, args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    for external_id in &args.external_ids {
        let declared = external_id
            .split_once('.')
            .is_some_and(|(object, field)| !field.is_empty() && emu.declare_external_id(object, field));
        if !declared {
            return Err(format!(
                "--external-id {external_id}: expected OBJECT.FIELD with a known object, like Task.Leadloop_Key__c"
            ));
        }
    }
    if args.seed_leads > 0 || args.seed_tasks > 0 {
        let started = Instant::now();
        let spec = SeedSpec {
            seed: args.seed,
            managers: args.seed_managers,
            reps: args.seed_reps,
            accounts: args.seed_accounts,
            leads: args.seed_leads,
            tasks: args.seed_tasks,
        };
        let seeded = tokio::task::spawn_blocking({
            let emu = emu.clone();
            move || populate(&emu, &spec).leads.len()
        })
        .await
        .map_err(|e| format!("seeding failed: {e}"))?;
        tracing::info!(leads = seeded, elapsed_ms = started.elapsed().as_millis() as u64, "emulator seeded");
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", emu.url()).map_err(|e| format!("cannot write to stdout: {e}"))?;
        out.flush().map_err(|e| format!("cannot flush stdout: {e}"))?;
    }
    wait_for_signal().await?;
    emu.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
