//! The composition root: the one place that turns a [`Config`] into a running leadloop.
//!
//! [`Runtime::build`] opens the store, writes the configured people, builds the rules exactly
//! as the daemon runs them (the SLA with calendar holds and signed links, lifecycle, scoring,
//! routing, nurture), the engine, the connectors with their relays and pollers, and binds the
//! public link listener. [`Runtime::run`] spawns their tasks and, on shutdown, drains them
//! against one shared deadline. `leadloop run`, `sync --once`, `demo`, `simulate`, the
//! benchmarks and the end-to-end tests all build through here, so what they run cannot drift
//! apart; each picks the parts it needs ([`Parts`]) and may inject a clock, a state directory,
//! an observer or a connector ([`RuntimeOptions`]).
//!
//! Every construction of the `Engine`, the relays and the pollers in the binary lives in this
//! file, so a change to their constructors is fixed in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leadloop_core::connector::{CalendarRead, ConnectorError};
use leadloop_core::sla::SlaRules;
use leadloop_core::{Calendar, Clock, Crm, IdempotencyKey, Mailer, PersonId, Timestamp};
use leadloop_engine::calendar::{CalendarPoller, CalendarRelay};
use leadloop_engine::crm::{CrmRelay, CrmSync};
use leadloop_engine::events::{CrmEvents, EventState};
use leadloop_engine::{ChatRelay, EmailRelay, Engine, EngineError, Observer};
use leadloop_store::{Batch, SledStore, Store, StoreError};
use leadloop_store_postgres::PgStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreEngine};
use crate::exit;
use crate::links::{LinkRules, Signer};

/// How long the public link listener gets to finish its requests once the engine has drained.
const LISTENER_GRACE: Duration = Duration::from_secs(2);

/// Opens the configured store: sled in the state directory (`state_dir`, else
/// `daemon.state_dir`), or PostgreSQL in `[store] schema` (the state directory then holds no
/// state). The one place that names the storage engines: another engine is a change to this
/// function.
pub async fn open_store(config: &Config, state_dir: Option<PathBuf>) -> Result<Arc<dyn Store>, StoreError> {
    match config.store.engine {
        StoreEngine::Sled => SledStore::open(&config.sled(state_dir)).map(|store| store as Arc<dyn Store>),
        StoreEngine::Postgres => {
            let pg = config.store.postgres().map_err(|e| StoreError::Database {
                schema: config
                    .store
                    .schema
                    .clone()
                    .unwrap_or_else(|| leadloop_store_postgres::DEFAULT_SCHEMA.into()),
                message: format!("store.{}: {}", e.key, e.message),
            })?;
            PgStore::open(&pg).await.map(|store| store as Arc<dyn Store>)
        }
    }
}

/// Opens the store for a command that only reads: nothing is created, and a state directory
/// that holds no store is [`StoreError::NoState`] (the caller then asks a running daemon or
/// says where it looked). PostgreSQL opens as for the daemon.
pub async fn open_store_for_reading(
    config: &Config,
    state_dir: Option<PathBuf>,
) -> Result<Arc<dyn Store>, StoreError> {
    match config.store.engine {
        StoreEngine::Sled => {
            SledStore::open_existing(&config.sled(state_dir)).map(|store| store as Arc<dyn Store>)
        }
        StoreEngine::Postgres => open_store(config, state_dir).await,
    }
}

/// The rules the engine runs, as config says (the SLA with holds and signed links, lifecycle,
/// scoring, routing, nurture), and the link signer when `[links]` is set. Every entry point
/// gets its rules from here, so each decides exactly as the daemon does.
pub fn engine_rules(config: &Config) -> Result<(leadloop_core::rules::Rules, Option<Arc<Signer>>), String> {
    let mut rules = SlaRules::new(config.sla.clone());
    if let Some(chat) = &config.chat {
        rules = rules.with_reach(chat.reach());
    }
    if let Some(calendar) = config.calendar.as_ref().filter(|c| c.hold) {
        rules = rules.with_hold(calendar.hold_length);
    }
    let signer = match &config.links {
        Some(links) => {
            let signer = Arc::new(links.signer().map_err(|e| e.to_string())?);
            rules = rules.with_links(signer.clone());
            Some(signer)
        }
        None => None,
    };
    let nurture_links = signer.clone().map(|s| s as Arc<dyn leadloop_core::nurture::NurtureLinks>);
    Ok((config.rules(rules).with_nurture(config.nurture_rules(nurture_links)), signer))
}

/// Writes the people in config to the store (start and SIGHUP).
pub async fn write_people(store: &dyn Store, config: &Config) -> Result<(), StoreError> {
    let mut batch = Batch::new();
    for person in config.people() {
        batch.put_person(person);
    }
    store.commit(batch).await.map(|_| ())
}

/// Which configured parts to build. A part that config does not configure is never built; a
/// part switched off here is not built even when configured (`simulate` contacts nothing,
/// `sync --once` needs only the CRM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// The email connector and its outbox relay (`[email]`).
    pub email: bool,
    /// The CRM connector, its sync and its write-back relay (`[crm]`).
    pub crm: bool,
    /// The calendar connector, its poller and its hold relay (`[calendar]`).
    pub calendar: bool,
    /// The public listener for signed links (`[links]`).
    pub links_listener: bool,
    /// The chat connectors and their outbox relay (`[chat.slack]`, `[chat.teams]`).
    pub chat: bool,
}

impl Parts {
    /// Everything config names: what `leadloop run` starts.
    pub const ALL: Parts = Parts { email: true, crm: true, calendar: true, links_listener: true, chat: true };
    /// The engine and its rules alone, with no connector: `simulate`.
    pub const ENGINE: Parts =
        Parts { email: false, crm: false, calendar: false, links_listener: false, chat: false };
}

/// What a caller injects into the runtime. Connectors given here replace the ones config would
/// build (recorded connectors in tests, the emulator's in benchmarks); they are used only for a
/// part that config configures and [`Parts`] enables, so the rules (which read config) and
/// the connectors never disagree about what is there.
pub struct RuntimeOptions {
    pub clock: Arc<dyn Clock>,
    /// The state directory instead of `daemon.state_dir` (`--state-dir`, a temporary one).
    pub state_dir: Option<PathBuf>,
    /// A store already open (a benchmark that times the open itself); else [`open_store`]
    /// opens the state directory.
    pub store: Option<Arc<dyn Store>>,
    pub parts: Parts,
    /// Told of every history event the engine commits.
    pub observer: Option<Observer>,
    pub mailer: Option<Arc<dyn Mailer>>,
    pub crm: Option<Arc<dyn Crm>>,
    pub calendar: Option<Arc<dyn Calendar>>,
    /// The address to bind the public link listener to instead of `links.public_listen`.
    pub public_listen: Option<SocketAddr>,
}

impl RuntimeOptions {
    /// Every configured part on `clock`, connectors as config builds them.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state_dir: None,
            store: None,
            parts: Parts::ALL,
            observer: None,
            mailer: None,
            crm: None,
            calendar: None,
            public_listen: None,
        }
    }

    pub fn parts(mut self, parts: Parts) -> Self {
        self.parts = parts;
        self
    }

    pub fn state_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.state_dir = dir;
        self
    }

    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    pub fn observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn mailer(mut self, mailer: Arc<dyn Mailer>) -> Self {
        self.mailer = Some(mailer);
        self
    }

    pub fn crm(mut self, crm: Arc<dyn Crm>) -> Self {
        self.crm = Some(crm);
        self
    }

    pub fn calendar(mut self, calendar: Arc<dyn Calendar>) -> Self {
        self.calendar = Some(calendar);
        self
    }
}

impl std::fmt::Debug for RuntimeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeOptions")
            .field("clock", &self.clock)
            .field("state_dir", &self.state_dir)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

/// Why a runtime could not be built; [`BuildError::exit_code`] is the process's exit code.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{doing}: {error}")]
    Store { doing: &'static str, error: StoreError },
    #[error("{doing}: {error}")]
    Engine { doing: &'static str, error: EngineError },
    /// `[links]`: the signing key cannot be read.
    #[error("links: {0}")]
    Links(String),
    #[error("cannot start the {what} connector: {error}")]
    Connector { what: &'static str, error: leadloop_plugin::BuildError },
    #[error("cannot listen on links.public_listen {addr}: {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
}

impl BuildError {
    pub fn exit_code(&self) -> u8 {
        match self {
            BuildError::Store { .. } | BuildError::Engine { .. } => exit::STORE,
            BuildError::Links(_) | BuildError::Connector { .. } => exit::CONFIG,
            BuildError::Listen { .. } => exit::FAILURE,
        }
    }

    fn store(doing: &'static str) -> impl FnOnce(StoreError) -> BuildError {
        move |error| BuildError::Store { doing, error }
    }
}

/// The CRM's parts: the connector, the sync passes and the write-back relay.
pub struct CrmParts {
    pub connector: Arc<dyn Crm>,
    pub sync: Arc<CrmSync>,
    pub relay: Arc<CrmRelay>,
    pub poll_interval: Duration,
    /// The change-event follower, when the connector offers events and config leaves them
    /// on (`crm.salesforce.events`); the sync is then its safety net.
    pub events: Option<Arc<CrmEvents>>,
}

/// The calendar's parts: the connector, the poller feeding routing and the SLA, the hold relay.
pub struct CalendarParts {
    pub connector: Arc<dyn Calendar>,
    pub poller: Arc<CalendarPoller>,
    pub relay: Arc<CalendarRelay>,
}

/// A built leadloop: the store, the engine and its rules, and the configured connectors with
/// their relays, ready to [`run`](Runtime::run) or to be stepped by hand (`demo`, `simulate`,
/// `sync --once`, the benchmarks call `tick`/`run_once`/`pass` themselves).
pub struct Runtime {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub engine: Engine,
    /// The blast-radius guard the engine and the relays share (the admin listener's
    /// `/guard` actions go through it).
    pub guard: Arc<leadloop_engine::Guard>,
    /// The link signer, when `[links]` is set.
    pub signer: Option<Arc<Signer>>,
    pub email: Option<Arc<EmailRelay>>,
    pub crm: Option<CrmParts>,
    pub calendar: Option<CalendarParts>,
    /// The chat relay, when `[chat]` configures a Slack or Teams connector.
    pub chat: Option<Arc<ChatRelay>>,
    /// The Slack connector: the public listener verifies and answers its button clicks.
    pub slack: Option<Arc<leadloop_slack::Slack>>,
    /// The bound public link listener, served by `run`, and what it allows.
    public: Option<tokio::net::TcpListener>,
    link_rules: LinkRules,
    /// Cancelled to stop the engine and every relay and poller; the connectors hold it too.
    stop: CancellationToken,
    max_idle: Duration,
    shutdown_grace: Duration,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("engine", &self.engine)
            .field("email", &self.email.is_some())
            .field("crm", &self.crm.is_some())
            .field("calendar", &self.calendar.is_some())
            .field("public", &self.public.as_ref().and_then(|l| l.local_addr().ok()))
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds everything `config` configures that `options.parts` asks for. Logs each
    /// connector it starts.
    pub async fn build(config: &Config, options: RuntimeOptions) -> Result<Runtime, BuildError> {
        let RuntimeOptions { clock, state_dir, store, parts, observer, mailer, crm, calendar, public_listen } =
            options;
        // A state directory given on the command line also anchors relative paths in config
        // (the `.eml` directory), as `daemon.state_dir` would.
        let mut config = config.clone();
        if let Some(dir) = state_dir {
            config.daemon.state_dir = dir;
        }
        let store = match store {
            Some(store) => store,
            None => open_store(&config, None).await.map_err(BuildError::store("cannot open the store"))?,
        };
        write_people(store.as_ref(), &config)
            .await
            .map_err(BuildError::store("cannot write the configured people to the store"))?;
        let (rules, signer) = engine_rules(&config).map_err(BuildError::Links)?;
        let guard = Arc::new(leadloop_engine::Guard::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            config.guard.rules(),
        ));
        let mut engine = Engine::new(Arc::clone(&store), Arc::clone(&clock), Arc::new(rules))
            .with_guard(Arc::clone(&guard));
        if let Some(observer) = observer {
            engine = engine.with_observer(observer);
        }
        let rule_names: Vec<String> = config.routing.rules.iter().map(|r| r.name.clone()).collect();
        engine.load_turns(&rule_names).await.map_err(|error| BuildError::Engine {
            doing: "cannot load routing turns from the store",
            error,
        })?;
        engine
            .load_people()
            .await
            .map_err(|error| BuildError::Engine { doing: "cannot load people from the store", error })?;

        let stop = CancellationToken::new();
        let cx = leadloop_plugin::BuildContext { clock: Arc::clone(&clock), shutdown: stop.clone() };

        // Relays first: each adds its waker to the engine, and every clone of the engine
        // handed out below must carry all of them.
        let email = match config.email().filter(|_| parts.email) {
            Some(email_config) => {
                let mailer = match mailer {
                    Some(mailer) => mailer,
                    None => email_config
                        .build(&cx)
                        .map_err(|error| BuildError::Connector { what: "email", error })?,
                };
                tracing::info!(deliver = mailer.name(), "email connector started");
                let relay =
                    EmailRelay::new(Arc::clone(&store), Arc::clone(&clock), mailer, config.outbox.relay())
                        .with_writer_lock(engine.writer_lock())
                        .with_halt(engine.halt())
                        .with_guard(Arc::clone(&guard));
                engine = engine.with_waker(relay.waker());
                Some(Arc::new(relay))
            }
            None => {
                if parts.email {
                    tracing::warn!("no [email] configured: email effects wait in the outbox");
                }
                None
            }
        };
        let crm_built = match config.crm.as_ref().filter(|_| parts.crm) {
            Some(crm_config) => {
                let connector = match crm {
                    Some(crm) => crm,
                    None => {
                        crm_config.build(&cx).map_err(|error| BuildError::Connector { what: "crm", error })?
                    }
                };
                tracing::info!(
                    crm = connector.name(),
                    poll_interval_s = crm_config.poll_interval.as_secs(),
                    "crm connector started"
                );
                let relay = CrmRelay::new(&engine, Arc::clone(&connector), crm_config.relay(&config.outbox));
                engine = engine.with_waker(relay.waker());
                Some((crm_config, connector, relay))
            }
            None => None,
        };
        let calendar = match config.calendar.as_ref().filter(|_| parts.calendar) {
            Some(calendar_config) => {
                let connector: Arc<dyn Calendar> = match calendar {
                    Some(calendar) => calendar,
                    None => calendar_config
                        .build(&cx)
                        .map_err(|error| BuildError::Connector { what: "calendar", error })?,
                };
                tracing::info!(
                    people = connector.people().len(),
                    hold = calendar_config.hold,
                    "calendar connector started"
                );
                let relay = CalendarRelay::new(
                    Arc::clone(&store),
                    Arc::clone(&clock),
                    Arc::clone(&connector),
                    config.outbox.relay(),
                );
                engine = engine.with_waker(relay.waker());
                let poller = CalendarPoller::new(
                    Arc::clone(&connector),
                    engine.clone(),
                    Arc::clone(&clock),
                    calendar_config.look_ahead(),
                    calendar_config.poll_interval,
                );
                Some(CalendarParts { connector, poller: Arc::new(poller), relay: Arc::new(relay) })
            }
            None => None,
        };
        let mut slack = None;
        let chat = match config.chat.as_ref().filter(|_| parts.chat) {
            Some(chat_config) if chat_config.slack.is_some() || chat_config.teams.is_some() => {
                let mut senders: Vec<Arc<dyn leadloop_core::ChatSender>> = Vec::new();
                if let Some(slack_config) = &chat_config.slack {
                    let connector = Arc::new(slack_config.build(&cx).map_err(|e| BuildError::Connector {
                        what: "chat.slack",
                        error: leadloop_plugin::BuildError::new(format!("chat.slack.{}", e.key), e.message),
                    })?);
                    tracing::info!(api = %slack_config.api_url, "slack connector started");
                    senders.push(connector.clone());
                    slack = Some(connector);
                }
                if let Some(teams_config) = &chat_config.teams {
                    let connector = teams_config.build(&cx).map_err(|e| BuildError::Connector {
                        what: "chat.teams",
                        error: leadloop_plugin::BuildError::new(format!("chat.teams.{}", e.key), e.message),
                    })?;
                    tracing::info!("teams connector started");
                    senders.push(Arc::new(connector));
                }
                let mut relay = ChatRelay::new(
                    Arc::clone(&store),
                    Arc::clone(&clock),
                    senders,
                    chat_config.relay(&config.outbox),
                );
                if let Some(email) = &email {
                    relay = relay.with_email_waker(email.waker());
                }
                engine = engine.with_waker(relay.waker());
                Some(Arc::new(relay))
            }
            _ => None,
        };
        // Built after every relay registered its waker with the engine: each clones the engine
        // as it is now, and must wake every relay when it queues work.
        let crm = crm_built.map(|(crm_config, connector, relay)| {
            let sync = CrmSync::new(engine.clone(), Arc::clone(&connector), &crm_config.objects);
            let state = connector.has_events().then(|| {
                EventState::new(
                    crm_config
                        .salesforce
                        .as_ref()
                        .map_or(Duration::from_secs(3600), |sf| sf.events_poll_interval),
                )
            });
            let events = state.as_ref().map(|state| {
                Arc::new(CrmEvents::new(
                    engine.clone(),
                    Arc::clone(&connector),
                    &crm_config.objects,
                    Arc::clone(state),
                ))
            });
            let sync = match state {
                Some(state) => sync.with_events(state),
                None => sync,
            };
            CrmParts {
                sync: Arc::new(sync),
                connector,
                relay: Arc::new(relay),
                poll_interval: crm_config.poll_interval,
                events,
            }
        });
        let public = match (&config.links, &signer) {
            (Some(links), Some(_)) if parts.links_listener => {
                let addr = public_listen.unwrap_or(links.public_listen);
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|error| BuildError::Listen { addr, error })?;
                tracing::info!(addr = %addr, url = %links.public_url, "public link listener started");
                Some(listener)
            }
            _ => None,
        };
        Ok(Runtime {
            store,
            clock,
            engine,
            guard,
            signer,
            email,
            crm,
            calendar,
            chat,
            slack,
            public,
            link_rules: link_rules(&config),
            stop,
            max_idle: config.daemon.max_idle,
            shutdown_grace: config.daemon.shutdown_grace,
        })
    }

    /// Serves the public link listener until `stop`, for a caller that steps the runtime by
    /// hand instead of calling [`run`](Runtime::run) (`demo`). `None` when there is none.
    pub fn spawn_links_listener(
        &mut self,
        stop: CancellationToken,
    ) -> Option<JoinHandle<std::io::Result<()>>> {
        serve_links(
            self.public.take(),
            self.signer.clone(),
            self.slack.clone(),
            &self.engine,
            &self.link_rules,
            stop,
        )
    }

    /// The address the public link listener is bound to, if it runs.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.public.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// Runs the engine loop, every relay and poller and the public link listener until
    /// `shutdown` is cancelled or the engine loop ends by itself (a full disk). Then stops new
    /// work and gives the engine and every relay one shared `daemon.shutdown_grace` to finish
    /// what is in flight (each batch is atomic and each send is recorded only once accepted, so
    /// cutting them short loses nothing acknowledged), and the public listener a little more.
    pub async fn run(self, shutdown: CancellationToken) -> Ended {
        let Runtime {
            store,
            engine,
            signer,
            email,
            crm,
            calendar,
            chat,
            slack,
            public,
            link_rules,
            stop,
            max_idle,
            shutdown_grace,
            ..
        } = self;
        let mut tasks: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
        if let Some(relay) = email {
            let stop = stop.clone();
            tasks.push(("email relay", tokio::spawn(async move { relay.run(stop, max_idle).await })));
        }
        // The CRM: a sync pass every poll interval, and the write-back relay. A CRM outage
        // only delays them; nothing else waits on the CRM.
        if let Some(crm) = crm {
            let (sync, sync_stop, interval) = (crm.sync, stop.clone(), crm.poll_interval);
            tasks.push(("crm sync", tokio::spawn(async move { sync.run(sync_stop, interval).await })));
            let (relay, relay_stop) = (crm.relay, stop.clone());
            tasks.push(("crm relay", tokio::spawn(async move { relay.run(relay_stop, max_idle).await })));
            if let Some(events) = crm.events {
                let events_stop = stop.clone();
                tasks.push(("crm events", tokio::spawn(async move { events.run(events_stop).await })));
            }
        }
        // The calendar: a poller feeding routing and the SLA, and the hold relay. A calendar
        // outage degrades both; it never holds up a hand-off.
        if let Some(calendar) = calendar {
            let (poller, poll_stop) = (calendar.poller, stop.clone());
            tasks.push(("calendar poller", tokio::spawn(async move { poller.run(poll_stop).await })));
            let (relay, relay_stop) = (calendar.relay, stop.clone());
            tasks
                .push(("calendar relay", tokio::spawn(async move { relay.run(relay_stop, max_idle).await })));
        }
        let mut engine_task = tokio::spawn({
            let (engine, stop) = (engine.clone(), stop.clone());
            async move { engine.run(stop, max_idle).await }
        });
        // Chat: a Slack or Teams outage delays its messages, then they go by email.
        if let Some(relay) = chat {
            let stop = stop.clone();
            tasks.push(("chat relay", tokio::spawn(async move { relay.run(stop, max_idle).await })));
        }
        // The public listener outlives the drain: a rep's click during it still gets an answer.
        let listeners = CancellationToken::new();
        let public_task = serve_links(public, signer, slack, &engine, &link_rules, listeners.clone());

        let mut ended = tokio::select! {
            _ = shutdown.cancelled() => None,
            result = &mut engine_task => Some(match result {
                Ok(Ok(())) => {
                    tracing::error!("engine stopped unexpectedly");
                    Ended::EngineStopped
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "engine failed");
                    Ended::EngineFailed(error)
                }
                Err(error) => {
                    tracing::error!(%error, "engine task panicked");
                    Ended::EnginePanicked
                }
            }),
        };

        stop.cancel();
        let deadline = tokio::time::Instant::now() + shutdown_grace;
        if ended.is_none() {
            match tokio::time::timeout_at(deadline, &mut engine_task).await {
                Ok(Ok(Err(error))) => {
                    tracing::error!(%error, "engine failed while draining");
                    ended = Some(Ended::EngineFailed(error));
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        grace_ms = shutdown_grace.as_millis() as u64,
                        "drain deadline passed; stopping with the tick in progress unfinished (it was not acknowledged)"
                    );
                    engine_task.abort();
                }
            }
        }
        for (name, task) in tasks {
            // A send in flight finishes or is abandoned unrecorded (it is resent with the same
            // idempotency key after restart); a sync page is committed with its cursor or read
            // again.
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(task = name, "did not stop within the drain deadline");
            }
        }
        listeners.cancel();
        if let Some(public) = public_task
            && tokio::time::timeout(LISTENER_GRACE, public).await.is_err()
        {
            tracing::warn!("public link listener did not stop in time");
        }
        drop(engine);
        drop(store);
        ended.unwrap_or(Ended::Shutdown)
    }
}

/// The public listener's rules: `[links]`'s, with error pages that offer the nurture mail's
/// reply address for opting out (unless `links.opt_out_email` says otherwise) and link to
/// the CRM's page of a lead (`sla.crm_url`).
fn link_rules(config: &Config) -> LinkRules {
    let Some(links) = &config.links else { return LinkRules::default() };
    let email = config.email.as_ref();
    let mut rules = links.rules();
    rules.pages = crate::links::LinkPages::new(
        [
            links.opt_out_email.as_deref(),
            email.and_then(|e| e.nurture_reply_to.as_deref()),
            email.and_then(|e| e.reply_to.as_deref()),
            email.and_then(|e| e.nurture_from.as_deref()),
            email.map(|e| e.from.as_str()),
        ],
        config.sla.crm_url.as_deref(),
    );
    rules
}

fn serve_links(
    listener: Option<tokio::net::TcpListener>,
    signer: Option<Arc<Signer>>,
    slack: Option<Arc<leadloop_slack::Slack>>,
    engine: &Engine,
    rules: &LinkRules,
    stop: CancellationToken,
) -> Option<JoinHandle<std::io::Result<()>>> {
    let (listener, signer) = (listener?, signer?);
    let (engine, rules) = (engine.clone(), rules.clone());
    Some(tokio::spawn(crate::links::serve(listener, signer, slack, engine, rules, stop)))
}

/// A calendar with nothing in it for each person `[calendar]` maps, which keeps the holds it
/// is asked to book in memory. `simulate` polls it once, so its decisions see what a daemon
/// whose calendars are empty sees (holds at the next free business-hours slot); tests use it
/// as the recorded calendar.
#[derive(Debug, Default)]
pub struct EmptyCalendar {
    people: Vec<PersonId>,
    holds: std::sync::Mutex<Vec<PlacedHold>>,
}

/// A hold [`EmptyCalendar`] was asked to book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedHold {
    pub person: PersonId,
    pub key: IdempotencyKey,
    pub start: Timestamp,
    pub end: Timestamp,
    pub summary: String,
}

impl EmptyCalendar {
    /// The people `config` maps to calendars, as the CalDAV connector would have them.
    pub fn for_config(config: &leadloop_caldav::CalendarConfig) -> Self {
        Self {
            people: config.people.iter().map(|p| PersonId::new(p.id.clone())).collect(),
            ..Self::default()
        }
    }

    /// The holds booked so far, in order (a key booked twice is kept once).
    pub fn holds(&self) -> Vec<PlacedHold> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl Calendar for EmptyCalendar {
    fn name(&self) -> &str {
        "empty"
    }

    fn people(&self) -> Vec<PersonId> {
        self.people.clone()
    }

    async fn events(
        &self,
        _person: &PersonId,
        _from: Timestamp,
        _to: Timestamp,
        _time_zone: chrono_tz::Tz,
    ) -> Result<CalendarRead, ConnectorError> {
        Ok(CalendarRead { events: Vec::new(), skipped: Vec::new() })
    }

    async fn place_hold(
        &self,
        person: &PersonId,
        key: &IdempotencyKey,
        start: Timestamp,
        end: Timestamp,
        summary: &str,
    ) -> Result<String, ConnectorError> {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        if !holds.iter().any(|hold| &hold.key == key) {
            holds.push(PlacedHold {
                person: person.clone(),
                key: key.clone(),
                start,
                end,
                summary: summary.to_owned(),
            });
        }
        Ok(key.as_str().to_owned())
    }
}

/// How [`Runtime::run`] ended.
#[derive(Debug)]
pub enum Ended {
    /// `shutdown` was cancelled and everything drained (or was abandoned at the deadline).
    Shutdown,
    /// The engine loop returned without being asked to.
    EngineStopped,
    /// The engine loop gave up (a full disk).
    EngineFailed(EngineError),
    EnginePanicked,
}

impl Ended {
    /// The daemon's exit code for this ending.
    pub fn exit_code(&self) -> u8 {
        match self {
            Ended::Shutdown => exit::OK,
            Ended::EngineFailed(EngineError::Store(
                StoreError::NoSpace { .. } | StoreError::Stalled { .. },
            )) => exit::STORE,
            Ended::EngineStopped | Ended::EngineFailed(_) | Ended::EnginePanicked => exit::FAILURE,
        }
    }
}
