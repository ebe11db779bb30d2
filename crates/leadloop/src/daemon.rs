//! `leadloop run`: the daemon's lifecycle.
//!
//! Start: validate config, open the store (which takes the state directory's lock), write the
//! configured people, bind the admin listener, start the engine, then report ready (readyz
//! and systemd `READY=1`). SIGHUP re-reads and re-validates the config and applies it, or
//! keeps the running one and says why. SIGTERM/SIGINT stop new work, let the tick in progress
//! finish within `daemon.shutdown_grace` (each batch is atomic, so cutting it short loses
//! nothing acknowledged), and exit 0.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leadloop_core::SystemClock;
use leadloop_engine::Engine;
use leadloop_store::Store;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::cli::{RunArgs, load_reporting};
use crate::config::{self, Config};
use crate::runtime::{Runtime, RuntimeOptions, write_people};
use crate::{exit, telemetry};

/// How often the open-hand-off gauges are recounted.
const SLA_GAUGE_INTERVAL: Duration = Duration::from_secs(300);

/// Settings that a reload cannot change; a new value waits for a restart.
fn restart_only(config: &Config) -> (PathBuf, std::net::SocketAddr, config::StoreConfig) {
    (config.daemon.state_dir.clone(), config.daemon.admin_listen, config.store.clone())
}

pub fn main(args: RunArgs) -> u8 {
    let mut config = match load_reporting(&args.config.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    apply_overrides(&mut config, &args);
    telemetry::init_logging(config.daemon.log_format);
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("leadloop").build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start the async runtime");
                return exit::FAILURE;
            }
        };
    let code = runtime.block_on(run(args, config));
    // A flush stuck on a failing disk keeps its blocking thread: do not wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

fn apply_overrides(config: &mut Config, args: &RunArgs) {
    if let Some(dir) = &args.state_dir {
        config.daemon.state_dir = dir.clone();
    }
    if let Some(addr) = args.admin_listen {
        config.daemon.admin_listen = addr;
    }
    if let Some(format) = args.log_format {
        config.daemon.log_format = format;
    }
}

async fn run(args: RunArgs, mut config: Config) -> u8 {
    let config_path = args.config.config.clone();
    let metrics = match telemetry::init_metrics() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "metrics recorder unavailable; /metrics will be empty");
            None
        }
    };

    // Everything that does the work (store, rules, engine, connectors, relays, pollers, the
    // public link listener) is built where every entry point builds it.
    let clock: Arc<dyn leadloop_core::Clock> = Arc::new(SystemClock);
    let runtime = match Runtime::build(&config, RuntimeOptions::new(Arc::clone(&clock))).await {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return error.exit_code();
        }
    };
    let store = Arc::clone(&runtime.store);
    let engine = runtime.engine.clone();
    let guard = Arc::clone(&runtime.guard);
    // A pause set before this start (by an operator or the bounce guard) still holds.
    match runtime.guard.held(0).await {
        Ok(held) => {
            for scope in leadloop_core::guard::PauseScope::ALL {
                if let Some(pause) = held.state.pause(scope) {
                    tracing::warn!(%scope, since = %pause.since, by = %pause.by, reason = %pause.reason, "paused by the guard; `leadloop resume` lifts it");
                }
            }
            if held.surge > 0 {
                tracing::warn!(held = held.surge, "nurture email waits for `leadloop approve`");
            }
        }
        Err(error) => tracing::error!(%error, "cannot read the guard's switches"),
    }

    let ready = Arc::new(AtomicBool::new(false));
    let admin_addr = config.daemon.admin_listen;
    let admin_auth = match config.daemon.admin_token() {
        Ok(token) => admin::AdminAuth::new(token.as_ref(), admin_addr),
        Err(error) => {
            tracing::error!(key = %format!("daemon.{}", error.key), error = %error.message, "cannot read the admin token");
            return exit::CONFIG;
        }
    };
    if matches!(admin_auth, admin::AdminAuth::Refuse) {
        tracing::warn!(addr = %admin_addr, "the admin listener is not on loopback and no daemon.admin_token_file is set: its data views (/sla, /leads, /quarantine, /report/funnel) answer 403; /healthz, /readyz and /metrics stay open");
    }
    let listener = match tokio::net::TcpListener::bind(admin_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, addr = %admin_addr, "cannot listen on the admin address; choose another with --admin-listen");
            return exit::FAILURE;
        }
    };
    let router = admin::router(AdminState {
        ready: Arc::clone(&ready),
        metrics,
        store: Some(Arc::clone(&store)),
        sla: Arc::new(config.sla.clone()),
        scoring: Arc::new(config.scoring.clone()),
        auth: Arc::new(admin_auth),
        guard: Some(Arc::clone(&runtime.guard)),
        crm_wake: runtime.crm.as_ref().map(|crm| crm.relay.waker()),
    });
    // The admin listener, the gauges and the watchdog stop after the runtime has drained.
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn({
        let stop = admin_stop.clone();
        async move { crate::serve::serve(listener, router, crate::serve::Limits::ADMIN, stop).await }
    });

    let shutdown = CancellationToken::new();
    let mut running = tokio::spawn(runtime.run(shutdown.clone()));

    // The open/overdue hand-off gauges come from a scan, every few minutes.
    tokio::spawn({
        let store = Arc::clone(&store);
        let sla = config.sla.clone();
        let clock = Arc::clone(&clock);
        let stop = admin_stop.clone();
        let guard = Arc::clone(&guard);
        async move {
            loop {
                if let Err(error) = crate::sla_cmd::gauge(store.as_ref(), &sla, clock.now()).await {
                    tracing::warn!(%error, "cannot count open hand-offs for the metrics");
                }
                // The guard's switches and what they hold (`leadloop_guard_*`); costs what is held.
                if let Err(error) = guard.held(0).await {
                    tracing::warn!(%error, "cannot count what the guard holds for the metrics");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(SLA_GAUGE_INTERVAL) => {}
                }
            }
        }
    });

    ready.store(true, Ordering::SeqCst);
    notify(&[NotifyState::Ready, NotifyState::Status("running")]);
    spawn_watchdog(engine.clone(), admin_stop.clone());
    tracing::info!(admin = %admin_addr, state_dir = %config.daemon.state_dir.display(), "leadloop ready");
    if config.crm.is_none() {
        // The example config has no CRM: say what that means, or the daemon looks dead.
        tracing::warn!(
            "no [crm] in the config: no leads will arrive, so nothing is scored, routed or sent; \
             configure [crm] (docs/salesforce.md), or see the loop work with `leadloop demo` or \
             `leadloop simulate --events FILE`"
        );
    }

    let (mut term, mut hup) = match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
        (Ok(term), Ok(hup)) => (term, hup),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot install signal handlers");
            return exit::FAILURE;
        }
    };
    // Set when the daemon stops because it cannot go on in this process (exit 74).
    let mut stopped_by: Option<String> = None;
    let halt = engine.halt();
    let ended = loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received; draining"); break None; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT received; draining"); break None; }
            _ = hup.recv() => {
                reload(&config_path, &args, &mut config, store.as_ref()).await;
                if let Err(error) = engine.load_people().await {
                    tracing::error!(%error, "cannot reload people from the store");
                }
            }
            // The engine loop ended by itself (a full disk); the runtime has drained the rest.
            ended = &mut running => break Some(ended),
            // Whatever write found the disk full or stalled (a sync page, a relay's outcome, a
            // link answer): stop now, not at the engine's next commit.
            error = store.broken() => {
                ready.store(false, Ordering::SeqCst);
                tracing::error!(%error, "the store takes no more writes; draining and stopping (exit 74)");
                stopped_by = Some(error.to_string());
                break None;
            }
            why = halt.raised() => {
                ready.store(false, Ordering::SeqCst);
                tracing::error!(error = %why, "cannot go on; draining and stopping (exit 74)");
                stopped_by = Some(why);
                break None;
            }
        }
    };

    ready.store(false, Ordering::SeqCst);
    notify(&[NotifyState::Stopping]);
    shutdown.cancel();
    let ended = match ended {
        Some(ended) => ended,
        None => (&mut running).await,
    };
    let code = match &ended {
        _ if stopped_by.is_some() => exit::STORE,
        Ok(ended) => ended.exit_code(),
        Err(error) => {
            tracing::error!(%error, "runtime task panicked");
            exit::FAILURE
        }
    };
    // The engine's own failure on a full disk names the path too.
    if code == exit::STORE
        && stopped_by.is_none()
        && let Ok(crate::runtime::Ended::EngineFailed(error)) = &ended
    {
        stopped_by = Some(error.to_string());
    }
    admin_stop.cancel();
    match tokio::time::timeout(Duration::from_secs(2), admin_task).await {
        Ok(Ok(Err(error))) => tracing::warn!(%error, "admin listener ended with an error"),
        Err(_) => tracing::warn!("admin listener did not stop in time"),
        _ => {}
    }
    if code == exit::STORE {
        // Closing sled flushes, which a full or stalled disk may never finish: leave the
        // store to the process's exit (what is acknowledged is on disk already).
        std::mem::forget(engine);
        std::mem::forget(store);
        let why = stopped_by.as_deref().unwrap_or("the store failed");
        tracing::error!(exit = code, "leadloop stopped: {why}");
    } else {
        drop(engine);
        drop(store);
        tracing::info!("leadloop stopped");
    }
    code
}

/// SIGHUP: re-read, validate, apply. An invalid file changes nothing.
async fn reload(path: &Path, args: &RunArgs, config: &mut Config, store: &dyn Store) {
    notify(&[NotifyState::Reloading]);
    match config::load(path) {
        Err(errors) => {
            let errors = errors.to_string();
            tracing::error!(file = %path.display(), %errors, "config reload refused; keeping the running config");
            metrics::counter!("leadloop_config_reloads_total", "result" => "rejected").increment(1);
        }
        Ok((mut next, warnings)) => {
            for warning in warnings.iter() {
                tracing::warn!(%warning, "config warning");
            }
            apply_overrides(&mut next, args);
            if next.sla != config.sla
                || next.scoring != config.scoring
                || next.lifecycle != config.lifecycle
                || next.routing != config.routing
                || next.nurture != config.nurture
                || next.email.is_some() != config.email.is_some()
                || next.links != config.links
                || next.chat != config.chat
            {
                tracing::warn!(
                    "[sla], [scoring], [lifecycle], [routing], [nurture], [email], [links] and [chat] changes apply on restart"
                );
            }
            if restart_only(&next) != restart_only(config) {
                tracing::warn!("state_dir, admin_listen and store settings change only on restart");
            }
            match write_people(store, &next).await {
                Ok(()) => {
                    // People apply now; the rest waits for a restart (and is compared against what runs).
                    *config = Config {
                        daemon: config.daemon.clone(),
                        store: config.store.clone(),
                        sla: config.sla.clone(),
                        email: config.email.clone(),
                        outbox: config.outbox.clone(),
                        links: config.links.clone(),
                        chat: config.chat.clone(),
                        ..next
                    };
                    tracing::info!(file = %path.display(), people = config.people.len(), "config reloaded; people applied");
                    metrics::counter!("leadloop_config_reloads_total", "result" => "applied").increment(1);
                }
                Err(error) => {
                    tracing::error!(%error, "config reload failed to apply; keeping the running config");
                    metrics::counter!("leadloop_config_reloads_total", "result" => "failed").increment(1);
                }
            }
        }
    }
    notify(&[NotifyState::Ready]);
}

fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "systemd notify failed");
    }
}

/// Pings systemd's watchdog at half its interval, but only while the engine loop turns: a
/// wedged loop stops the pings and systemd restarts the service.
fn spawn_watchdog(engine: Engine, shutdown: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let interval = Duration::from_micros(usec / 2);
    // The engine's heartbeat is when its loop promised to turn again (the tick in progress
    // began, or the wait it is in ends). Behind that by more than `WatchdogSec`, the loop is
    // stuck inside a tick: the pings stop, and systemd restarts the service within two
    // watchdog intervals of the hang.
    let stale_after = Duration::from_micros(usec).as_secs().max(1) as i64;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    let age = engine.clock().now().timestamp() - engine.heartbeat();
                    if age <= stale_after {
                        notify(&[NotifyState::Watchdog]);
                    } else {
                        tracing::error!(heartbeat_age_s = age, "engine loop stalled; withholding watchdog ping");
                    }
                }
            }
        }
    });
}
