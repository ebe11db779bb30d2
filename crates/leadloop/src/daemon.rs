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

use leadloop_core::Mailer;
use leadloop_core::SystemClock;
use leadloop_core::sla::SlaRules;
use leadloop_engine::{EmailRelay, Engine};
use leadloop_store::{Batch, SledStore, Store};
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::cli::{RunArgs, load_reporting};
use crate::config::{self, Config};
use crate::{exit, telemetry};

/// How often the open-hand-off gauges are recounted.
const SLA_GAUGE_INTERVAL: Duration = Duration::from_secs(300);

/// Settings that a reload cannot change; a new value waits for a restart.
fn restart_only(config: &Config) -> (PathBuf, std::net::SocketAddr, u64) {
    (config.daemon.state_dir.clone(), config.daemon.admin_listen, config.store.cache_mb)
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
    runtime.block_on(run(args, config))
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

    let store: Arc<dyn Store> = match SledStore::open(&config.sled(None)) {
        Ok(store) => store,
        Err(error) => {
            tracing::error!(%error, "cannot open the store");
            return exit::STORE;
        }
    };
    if let Err(error) = write_people(store.as_ref(), &config).await {
        tracing::error!(%error, "cannot write the configured people to the store");
        return exit::STORE;
    }

    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let admin_addr = config.daemon.admin_listen;
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
    });
    let admin_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await }
    });

    let clock: Arc<dyn leadloop_core::Clock> = Arc::new(SystemClock);
    let (rules, signer) = match engine_rules(&config) {
        Ok(built) => built,
        Err(error) => {
            tracing::error!(%error, "cannot start the one-click links");
            return exit::CONFIG;
        }
    };
    let mut engine = Engine::new(Arc::clone(&store), Arc::clone(&clock), Arc::new(rules));
    let rule_names: Vec<String> = config.routing.rules.iter().map(|r| r.name.clone()).collect();
    if let Err(error) = engine.load_turns(&rule_names).await {
        tracing::error!(%error, "cannot load routing turns from the store");
        return exit::STORE;
    }
    if let Err(error) = engine.load_people().await {
        tracing::error!(%error, "cannot load people from the store");
        return exit::STORE;
    }
    let engine_stop = CancellationToken::new();
    let relay_task = match config.email() {
        Some(email) => {
            let cx =
                leadloop_plugin::BuildContext { clock: Arc::clone(&clock), shutdown: engine_stop.clone() };
            let mailer = match email.build(&cx) {
                Ok(mailer) => mailer,
                Err(error) => {
                    tracing::error!(%error, "cannot start the email connector");
                    return exit::CONFIG;
                }
            };
            tracing::info!(deliver = mailer.name(), "email connector started");
            let relay = Arc::new(
                EmailRelay::new(Arc::clone(&store), Arc::clone(&clock), mailer, config.outbox.relay())
                    .with_writer_lock(engine.writer_lock()),
            );
            engine = engine.with_waker(relay.waker());
            let stop = engine_stop.clone();
            let max_idle = config.daemon.max_idle;
            Some(tokio::spawn(async move { relay.run(stop, max_idle).await }))
        }
        None => {
            tracing::warn!("no [email] configured: email effects wait in the outbox");
            None
        }
    };
    // The CRM: a sync pass every poll interval, and the write-back relay. A CRM outage
    // only delays them; nothing else waits on the CRM.
    let mut crm_tasks = Vec::new();
    if let Some(crm_config) = &config.crm {
        let cx = leadloop_plugin::BuildContext { clock: Arc::clone(&clock), shutdown: engine_stop.clone() };
        let crm = match crm_config.build(&cx) {
            Ok(crm) => crm,
            Err(error) => {
                tracing::error!(%error, "cannot start the crm connector");
                return exit::CONFIG;
            }
        };
        tracing::info!(
            crm = crm.name(),
            poll_interval_s = crm_config.poll_interval.as_secs(),
            "crm connector started"
        );
        let relay =
            leadloop_engine::crm::CrmRelay::new(&engine, Arc::clone(&crm), crm_config.relay(&config.outbox));
        engine = engine.with_waker(relay.waker());
        let sync = leadloop_engine::crm::CrmSync::new(engine.clone(), crm, &crm_config.objects);
        let (stop, interval) = (engine_stop.clone(), crm_config.poll_interval);
        crm_tasks.push(tokio::spawn(async move { sync.run(stop, interval).await }));
        let (stop, max_idle) = (engine_stop.clone(), config.daemon.max_idle);
        crm_tasks.push(tokio::spawn(async move { relay.run(stop, max_idle).await }));
    }
    // The calendar: a poller feeding routing and the SLA, and the hold relay. A calendar
    // outage degrades both; it never holds up a hand-off.
    if let Some(code) = spawn_calendar(&config, &engine, &store, &clock, &engine_stop) {
        return code;
    }
    let mut engine_task = tokio::spawn({
        let engine = engine.clone();
        let stop = engine_stop.clone();
        let max_idle = config.daemon.max_idle;
        async move { engine.run(stop, max_idle).await }
    });

    let public_task = match (&config.links, signer) {
        (Some(links), Some(signer)) => {
            let listener = match tokio::net::TcpListener::bind(links.public_listen).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(%error, addr = %links.public_listen, "cannot listen on links.public_listen");
                    return exit::FAILURE;
                }
            };
            tracing::info!(addr = %links.public_listen, url = %links.public_url, "public link listener started");
            let router = crate::links::router(signer, engine.clone());
            let stop = shutdown.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await
            }))
        }
        _ => None,
    };

    // The open/overdue hand-off gauges come from a scan, every few minutes.
    tokio::spawn({
        let store = Arc::clone(&store);
        let sla = config.sla.clone();
        let clock = Arc::clone(&clock);
        let stop = shutdown.clone();
        async move {
            loop {
                if let Err(error) = crate::sla_cmd::gauge(store.as_ref(), &sla, clock.now()).await {
                    tracing::warn!(%error, "cannot count open hand-offs for the metrics");
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
    spawn_watchdog(engine.clone(), shutdown.clone());
    tracing::info!(admin = %admin_addr, state_dir = %config.daemon.state_dir.display(), "leadloop ready");

    let (mut term, mut hup) = match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
        (Ok(term), Ok(hup)) => (term, hup),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot install signal handlers");
            return exit::FAILURE;
        }
    };
    let mut engine_ended = false;
    let mut engine_exit = exit::FAILURE;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received; draining"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT received; draining"); break; }
            _ = hup.recv() => {
                reload(&config_path, &args, &mut config, store.as_ref()).await;
                if let Err(error) = engine.load_people().await {
                    tracing::error!(%error, "cannot reload people from the store");
                }
            }
            result = &mut engine_task => {
                engine_ended = true;
                match result {
                    Ok(Ok(())) => tracing::error!("engine stopped unexpectedly"),
                    Ok(Err(error)) => {
                        tracing::error!(%error, "engine failed");
                        if matches!(error, leadloop_engine::EngineError::Store(leadloop_store::StoreError::NoSpace { .. })) {
                            engine_exit = exit::STORE;
                        }
                    }
                    Err(error) => tracing::error!(%error, "engine task panicked"),
                }
                break;
            }
        }
    }

    ready.store(false, Ordering::SeqCst);
    notify(&[NotifyState::Stopping]);
    engine_stop.cancel();
    let grace = config.daemon.shutdown_grace;
    if !engine_ended && tokio::time::timeout(grace, &mut engine_task).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "drain deadline passed; stopping with the tick in progress unfinished (it was not acknowledged)"
        );
        engine_task.abort();
    }
    if let Some(relay) = relay_task {
        // A send in flight finishes or is abandoned unrecorded; either way it is resent with
        // the same Message-ID after restart, never lost.
        if tokio::time::timeout(grace, relay).await.is_err() {
            tracing::warn!("email relay did not stop within the drain deadline");
        }
    }
    for task in crm_tasks {
        // A page in flight is either committed with its cursor or read again after restart.
        if tokio::time::timeout(grace, task).await.is_err() {
            tracing::warn!("crm sync did not stop within the drain deadline");
        }
    }
    shutdown.cancel();
    if let Some(public) = public_task
        && tokio::time::timeout(Duration::from_secs(2), public).await.is_err()
    {
        tracing::warn!("public link listener did not stop in time");
    }
    match tokio::time::timeout(Duration::from_secs(2), admin_task).await {
        Ok(Ok(Err(error))) => tracing::warn!(%error, "admin listener ended with an error"),
        Err(_) => tracing::warn!("admin listener did not stop in time"),
        _ => {}
    }
    drop(engine);
    drop(store);
    tracing::info!("leadloop stopped");
    if engine_ended { engine_exit } else { exit::OK }
}

/// The rules the engine runs, as config says (the SLA with holds and signed links, lifecycle,
/// scoring, routing, nurture), and the link signer when `[links]` is set. Shared by the
/// daemon, `sync --once` and `demo`, so each decides exactly as the daemon would.
pub(crate) fn engine_rules(
    config: &Config,
) -> Result<(leadloop_core::rules::Rules, Option<Arc<crate::links::Signer>>), String> {
    let mut rules = SlaRules::new(config.sla.clone());
    if let Some(calendar) = config.calendar.as_ref().filter(|c| c.hold) {
        rules = rules.with_hold(calendar.hold_length);
    }
    let signer = match &config.links {
        Some(links) => {
            let key = links.key().map_err(|e| e.to_string())?;
            let signer = Arc::new(
                crate::links::Signer::new(key, &links.public_url, links.ttl)
                    .with_nurture_ttl(links.nurture_ttl),
            );
            rules = rules.with_links(signer.clone());
            Some(signer)
        }
        None => None,
    };
    let nurture_links = signer.clone().map(|s| s as Arc<dyn leadloop_core::nurture::NurtureLinks>);
    Ok((config.rules(rules).with_nurture(config.nurture_rules(nurture_links)), signer))
}

pub(crate) async fn write_people(
    store: &dyn Store,
    config: &Config,
) -> Result<(), leadloop_store::StoreError> {
    let mut batch = Batch::new();
    for person in config.people() {
        batch.put_person(person);
    }
    store.commit(batch).await.map(|_| ())
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
                || next.links.is_some() != config.links.is_some()
            {
                tracing::warn!(
                    "[sla], [scoring], [lifecycle], [routing], [nurture], [email] and [links] changes apply on restart"
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
/// Starts the calendar poller and hold relay when `[calendar]` is configured; an exit code if
/// the connector cannot be built.
fn spawn_calendar(
    config: &Config,
    engine: &Engine,
    store: &Arc<dyn Store>,
    clock: &Arc<dyn leadloop_core::Clock>,
    stop: &CancellationToken,
) -> Option<u8> {
    let calendar_config = config.calendar.as_ref()?;
    let cx = leadloop_plugin::BuildContext { clock: Arc::clone(clock), shutdown: stop.clone() };
    let connector = match calendar_config.build(&cx) {
        Ok(connector) => connector,
        Err(error) => {
            tracing::error!(%error, "cannot start the calendar connector");
            return Some(exit::CONFIG);
        }
    };
    let calendar: Arc<dyn leadloop_core::Calendar> = connector;
    tracing::info!(
        people = calendar.people().len(),
        hold = calendar_config.hold,
        "calendar connector started"
    );
    let poller = leadloop_engine::calendar::CalendarPoller::new(
        Arc::clone(&calendar),
        engine.clone(),
        Arc::clone(clock),
        calendar_config.look_ahead(),
        calendar_config.poll_interval,
    );
    let relay = leadloop_engine::calendar::CalendarRelay::new(
        Arc::clone(store),
        Arc::clone(clock),
        calendar,
        config.outbox.relay(),
    );
    let (poll_stop, relay_stop) = (stop.clone(), stop.clone());
    let max_idle = config.daemon.max_idle;
    tokio::spawn(async move { poller.run(poll_stop).await });
    tokio::spawn(async move { relay.run(relay_stop, max_idle).await });
    None
}

fn spawn_watchdog(engine: Engine, shutdown: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let interval = Duration::from_micros(usec / 2);
    // The loop turns at least every `max_idle`; allow the whole watchdog interval on top.
    let stale_after = Duration::from_micros(usec).as_secs() as i64 + 60;
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
