//! The configuration file: TOML, unknown keys refused, every error reported at once with its
//! file, line and key. Only this crate knows the file format; it hands the rest of leadloop
//! plain values.

mod diagnose;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leadloop_core::{Person, PersonId, Role};
use serde::Deserialize;

pub use diagnose::{Diagnostic, Diagnostics, Severity};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// People leadloop routes to and escalates to, in addition to the CRM's users.
    #[serde(default)]
    pub people: Vec<PersonConfig>,
    /// The email connector; without it, email effects wait in the outbox.
    pub email: Option<leadloop_smtp::EmailConfig>,
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// The blast-radius guard: what pauses hold back, the bounce guard, the surge hold.
    #[serde(default)]
    pub guard: GuardConfig,
    /// The hand-off SLA; without this table the default ladder applies.
    #[serde(default)]
    pub sla: leadloop_core::sla::SlaConfig,
    /// Fit and engagement scoring; the threshold makes a lead Marketing Qualified.
    #[serde(default)]
    pub scoring: leadloop_core::scoring::ScoringConfig,
    /// Stages from CRM statuses.
    #[serde(default)]
    pub lifecycle: leadloop_core::rules::LifecycleConfig,
    /// Who gets a lead once it is Marketing Qualified.
    #[serde(default)]
    pub routing: leadloop_core::routing::RoutingConfig,
    /// One-click links in SLA emails and the public listener that serves them.
    pub links: Option<crate::links::LinksConfig>,
    /// Chat channels (Slack, Teams): who is reachable where, and the connectors.
    pub chat: Option<ChatConfig>,
    /// The calendar connector (CalDAV): meeting signals for routing, time away for routing and
    /// the SLA, follow-up holds at hand-off.
    pub calendar: Option<leadloop_caldav::CalendarConfig>,
    /// Nurture tracks for leads not ready for sales.
    #[serde(default)]
    pub nurture: leadloop_core::nurture::NurtureConfig,
    /// The CRM connector; without it, leads arrive only through `simulate` and CRM effects
    /// wait in the outbox.
    pub crm: Option<CrmConfig>,
}

/// `[chat]`: who is reachable in chat, and the Slack and Teams connectors. An SLA step names
/// its channels (`channels = ["slack", "email"]`); each recipient gets those they are
/// reachable on here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// The channels that reach every person not listed in `people` (default: email only).
    #[serde(default)]
    pub default_channels: Vec<leadloop_core::Reach>,
    /// A person's own channels, by person id.
    #[serde(default)]
    pub people: std::collections::BTreeMap<String, Vec<leadloop_core::Reach>>,
    /// A chat message with an email fallback still not posted this long after it was queued
    /// (the service down or throttling) goes by email instead.
    #[serde(default = "default_fallback_after", with = "leadloop_plugin::serde_duration")]
    pub fallback_after: Duration,
    pub slack: Option<leadloop_slack::SlackConfig>,
    pub teams: Option<leadloop_slack::teams::TeamsConfig>,
}

fn default_fallback_after() -> Duration {
    Duration::from_secs(15 * 60)
}

impl ChatConfig {
    /// Who is reachable where, for the SLA.
    pub fn reach(&self) -> leadloop_core::Reachability {
        leadloop_core::Reachability {
            default: self.default_channels.clone(),
            people: self.people.iter().map(|(id, list)| (PersonId::new(id.clone()), list.clone())).collect(),
        }
    }

    pub fn relay(&self, outbox: &OutboxConfig) -> leadloop_engine::ChatRelayConfig {
        leadloop_engine::ChatRelayConfig { relay: outbox.relay(), fallback_after: self.fallback_after }
    }
}

/// The CRM connectors this build knows, for `[crm] type`.
pub const CRM_TYPES: &[&str] = &["salesforce"];

/// `[crm]`: which CRM, which objects, how often.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmConfig {
    /// The connector: one of [`CRM_TYPES`]; its settings are in the table of that name.
    #[serde(rename = "type")]
    pub kind: String,
    /// How often the daemon asks the CRM for changes.
    #[serde(default = "default_poll_interval", with = "leadloop_plugin::serde_duration")]
    pub poll_interval: Duration,
    /// The objects synced.
    #[serde(default = "default_crm_objects")]
    pub objects: Vec<leadloop_core::connector::CrmObject>,
    /// A write-back the CRM refuses is tried this many times in all, then dead-lettered.
    #[serde(default = "default_max_write_attempts")]
    pub max_write_attempts: u32,
    pub salesforce: Option<leadloop_salesforce::SalesforceConfig>,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_crm_objects() -> Vec<leadloop_core::connector::CrmObject> {
    leadloop_core::connector::CrmObject::ALL.to_vec()
}

fn default_max_write_attempts() -> u32 {
    5
}

impl CrmConfig {
    /// Builds the configured connector.
    pub fn build(
        &self,
        cx: &leadloop_plugin::BuildContext,
    ) -> Result<std::sync::Arc<dyn leadloop_core::Crm>, leadloop_plugin::BuildError> {
        use leadloop_plugin::BuildError;
        match self.kind.as_str() {
            "salesforce" => {
                let Some(salesforce) = &self.salesforce else {
                    return Err(BuildError::new(
                        "crm.salesforce",
                        "type = \"salesforce\" needs a [crm.salesforce] table",
                    ));
                };
                let connector = salesforce
                    .build(cx)
                    .map_err(|e| BuildError::new(format!("crm.salesforce.{}", e.key), e.message))?;
                Ok(std::sync::Arc::new(connector))
            }
            other => Err(BuildError::new(
                "crm.type",
                format!("unknown CRM `{other}`; known: {}", CRM_TYPES.join(", ")),
            )),
        }
    }

    pub fn relay(&self, outbox: &OutboxConfig) -> leadloop_engine::crm::CrmRelayConfig {
        leadloop_engine::crm::CrmRelayConfig {
            retry_base: outbox.retry_base,
            retry_max: outbox.retry_max,
            max_attempts: self.max_write_attempts.max(1),
            ..leadloop_engine::crm::CrmRelayConfig::default()
        }
    }
}

/// `[outbox]`: how queued effects are paced and retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Emails per second in all; unset is unlimited.
    pub rate_per_second: Option<f64>,
    /// Emails per second to one recipient domain; unset is unlimited.
    pub per_domain_per_second: Option<f64>,
    #[serde(with = "leadloop_plugin::serde_duration")]
    pub retry_base: Duration,
    #[serde(with = "leadloop_plugin::serde_duration")]
    pub retry_max: Duration,
    /// Nurture mail still undelivered this long after it was queued is given up. SLA mail is
    /// retried until it goes out.
    #[serde(with = "leadloop_plugin::serde_duration")]
    pub nurture_max_age: Duration,
    /// Emails in flight at once.
    pub concurrency: usize,
}

/// `[guard]`: the blast-radius guard (docs/operations.md, "Blast-radius guard").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Internal SLA mail (alerts, reminders, escalations, digests to reps, managers and
    /// executives) still goes while email is paused (`leadloop pause email`).
    pub exempt_internal: bool,
    /// Hard bounces (and spam/policy refusals) of lead mail within `bounce_window` that pause
    /// nurture email; 0 turns the automatic pause off.
    pub max_bounces: u32,
    #[serde(with = "leadloop_plugin::serde_duration")]
    pub bounce_window: Duration,
    /// Nurture emails queued within an hour beyond which they wait for `leadloop approve`;
    /// 0 turns the surge hold off.
    pub surge_per_hour: u64,
    /// Where the guard's alerts go (an automatic pause, a surge held); unset: logged and
    /// counted only.
    pub ops_address: Option<String>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        let core = leadloop_core::guard::GuardConfig::default();
        Self {
            exempt_internal: core.exempt_internal,
            max_bounces: core.max_bounces,
            bounce_window: core.bounce_window,
            surge_per_hour: core.surge_per_hour,
            ops_address: core.ops_address,
        }
    }
}

impl GuardConfig {
    /// The core's settings.
    pub fn rules(&self) -> leadloop_core::guard::GuardConfig {
        leadloop_core::guard::GuardConfig {
            exempt_internal: self.exempt_internal,
            max_bounces: self.max_bounces,
            bounce_window: self.bounce_window,
            surge_per_hour: self.surge_per_hour,
            ops_address: self.ops_address.clone(),
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        let relay = leadloop_engine::RelayConfig::default();
        Self {
            rate_per_second: relay.rate_per_second,
            per_domain_per_second: relay.per_domain_per_second,
            retry_base: relay.retry_base,
            retry_max: relay.retry_max,
            nurture_max_age: relay.nurture_max_age,
            concurrency: relay.concurrency,
        }
    }
}

impl OutboxConfig {
    pub fn relay(&self) -> leadloop_engine::RelayConfig {
        leadloop_engine::RelayConfig {
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            nurture_max_age: self.nurture_max_age,
            rate_per_second: self.rate_per_second,
            per_domain_per_second: self.per_domain_per_second,
            concurrency: self.concurrency.max(1),
            ..leadloop_engine::RelayConfig::default()
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Where the store lives; `--state-dir` overrides it.
    pub state_dir: PathBuf,
    /// The admin HTTP listener (health, readiness, metrics, and the data views the read-only
    /// commands ask for); `--admin-listen` overrides it.
    pub admin_listen: SocketAddr,
    /// The bearer token the admin listener's data views require (at least 32 bytes): a file
    /// (a bare name is read from `$CREDENTIALS_DIRECTORY`) or an environment variable.
    pub admin_token_file: Option<PathBuf>,
    pub admin_token_env: Option<String>,
    pub log_format: LogFormat,
    /// How long SIGTERM waits for work in progress before exiting anyway.
    #[serde(with = "leadloop_plugin::serde_duration")]
    pub shutdown_grace: Duration,
    /// The longest the engine sleeps between looks at the timer queue.
    #[serde(with = "leadloop_plugin::serde_duration")]
    pub max_idle: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/leadloop"),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9477)),
            admin_token_file: None,
            admin_token_env: None,
            log_format: LogFormat::Human,
            shutdown_grace: Duration::from_secs(10),
            max_idle: Duration::from_secs(5),
        }
    }
}

/// The shortest admin token accepted, in bytes.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;

impl DaemonConfig {
    /// The admin listener's bearer token, if one is configured. On failure, the key at fault
    /// (under `daemon.`) and why; the token is never in the message.
    pub fn admin_token(&self) -> Result<Option<leadloop_plugin::Secret>, leadloop_plugin::BuildError> {
        use leadloop_plugin::BuildError;
        let token = leadloop_plugin::secret_from(
            "admin_token",
            self.admin_token_file.as_deref(),
            self.admin_token_env.as_deref(),
        )
        .map_err(|e| {
            if e.key == "admin_token" { BuildError::new("admin_token_env", e.message) } else { e }
        })?;
        if let Some(token) = &token
            && token.expose().trim().len() < MIN_ADMIN_TOKEN_BYTES
        {
            let key = if self.admin_token_file.is_some() { "admin_token_file" } else { "admin_token_env" };
            return Err(BuildError::new(
                key,
                format!(
                    "the admin token must be at least {MIN_ADMIN_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 32`)"
                ),
            ));
        }
        Ok(token)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreEngine {
    /// sled, in `daemon.state_dir`.
    #[default]
    Sled,
    /// PostgreSQL, in one schema of a database.
    Postgres,
}

/// `[store]`: which engine keeps leadloop's state, and its settings. The PostgreSQL settings
/// are options so that one set with the sled engine can be pointed out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub engine: StoreEngine,
    /// sled: upper bound of the engine's page cache, in MiB.
    pub cache_mb: u64,
    /// sled: how long a flush to disk may take before the daemon gives up and exits 74 (a
    /// full or failing disk can leave it waiting forever).
    #[serde(with = "leadloop_plugin::serde_duration")]
    pub flush_timeout: Duration,
    /// PostgreSQL: a file holding the connection URL (a secret: never in this file).
    pub url_file: Option<PathBuf>,
    /// PostgreSQL: an environment variable holding the connection URL.
    pub url_env: Option<String>,
    /// PostgreSQL: connections in the pool (default 8, at least 2).
    pub pool_size: Option<usize>,
    /// PostgreSQL: the longest one statement may run (default 30s; "0s" leaves the server's).
    #[serde(default, with = "optional_duration")]
    pub statement_timeout: Option<Duration>,
    /// PostgreSQL: `disable`, `require` or `verify-full` (default).
    pub sslmode: Option<leadloop_store_postgres::SslMode>,
    /// PostgreSQL: PEM file of the certificate authorities trusted with `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL: the schema holding leadloop's tables (default `leadloop`).
    pub schema: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            engine: StoreEngine::Sled,
            cache_mb: 64,
            flush_timeout: leadloop_store::SledConfig::DEFAULT_FLUSH_TIMEOUT,
            url_file: None,
            url_env: None,
            pool_size: None,
            statement_timeout: None,
            sslmode: None,
            ca_file: None,
            schema: None,
        }
    }
}

impl StoreConfig {
    /// The PostgreSQL keys that are set, by name (they mean nothing to sled).
    pub fn postgres_keys_set(&self) -> Vec<&'static str> {
        [
            ("url_file", self.url_file.is_some()),
            ("url_env", self.url_env.is_some()),
            ("pool_size", self.pool_size.is_some()),
            ("statement_timeout", self.statement_timeout.is_some()),
            ("sslmode", self.sslmode.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("schema", self.schema.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// The PostgreSQL engine's settings, reading the connection URL from `url_file` or
    /// `url_env`. On failure, the key at fault (under `store.`) and why; the URL is never in
    /// the message.
    pub fn postgres(&self) -> Result<leadloop_store_postgres::PgConfig, leadloop_plugin::BuildError> {
        use leadloop_plugin::BuildError;
        let url = leadloop_plugin::secret_from("url", self.url_file.as_deref(), self.url_env.as_deref())
            // Both set: point at the second, a key that is in the file.
            .map_err(|e| if e.key == "url" { BuildError::new("url_env", e.message) } else { e })?
            .ok_or_else(|| {
                BuildError::new(
                    "engine",
                    "engine = \"postgres\" needs `url_file` or `url_env` (the connection URL is a secret and is never written in this file)",
                )
            })?;
        let key = if self.url_file.is_some() { "url_file" } else { "url_env" };
        let mut config = leadloop_store_postgres::PgConfig::new(url.expose())
            .map_err(|e| BuildError::new(key, e.to_string()))?;
        if let Some(schema) = &self.schema {
            config = config.schema(schema.clone()).map_err(|e| BuildError::new("schema", e.to_string()))?;
        }
        if let Some(size) = self.pool_size {
            config.pool_size = size;
        }
        if let Some(timeout) = self.statement_timeout {
            config.statement_timeout = timeout;
        }
        if let Some(mode) = self.sslmode {
            config.sslmode = mode;
        }
        config.ca_file = self.ca_file.clone();
        Ok(config)
    }
}

/// An optional duration written as people write them ("30s").
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "leadloop_plugin::serde_duration")] Duration);
        Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(d)| d))
    }
}

/// A person as written in config. Required fields are options here so that a missing one is
/// reported with the others, at its line, rather than stopping the parse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonConfig {
    pub id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub manager: Option<String>,
    pub time_zone: Option<chrono_tz::Tz>,
    #[serde(default)]
    pub role: Role,
    #[serde(default = "yes")]
    pub active: bool,
    pub capacity: Option<u32>,
}

fn yes() -> bool {
    true
}

impl PersonConfig {
    fn to_person(&self) -> Option<Person> {
        Some(Person {
            id: PersonId::new(self.id.clone()?),
            email: self.email.clone()?,
            name: self.name.clone()?,
            manager: self.manager.clone().map(PersonId::new),
            time_zone: self.time_zone.map(|tz| tz.name().to_owned()),
            role: self.role,
            active: self.active,
            capacity: self.capacity,
        })
    }
}

impl Config {
    /// The store settings for state directory `dir` (`--state-dir`, or `daemon.state_dir`).
    pub fn sled(&self, dir: Option<PathBuf>) -> leadloop_store::SledConfig {
        leadloop_store::SledConfig {
            dir: dir.unwrap_or_else(|| self.daemon.state_dir.clone()),
            cache_bytes: self.store.cache_mb.saturating_mul(1024 * 1024),
            flush_timeout: self.store.flush_timeout,
        }
    }

    /// The rules the engine runs: lifecycle and scoring, then the SLA ladder, then nurture
    /// (without signed links; the daemon adds them with [`Config::nurture_rules`]).
    pub fn rules(&self, sla: leadloop_core::sla::SlaRules) -> leadloop_core::rules::Rules {
        leadloop_core::rules::Rules::new(
            sla,
            self.scoring.clone(),
            self.lifecycle.clone(),
            self.routing.clone(),
        )
        .with_nurture(self.nurture_rules(None))
    }

    /// The nurture tracks, compiled (validation has checked them; a config that did not pass
    /// it runs no tracks), with signed unsubscribe and tracked links if `links` is given.
    pub fn nurture_rules(
        &self,
        links: Option<std::sync::Arc<dyn leadloop_core::nurture::NurtureLinks>>,
    ) -> leadloop_core::nurture::NurtureRules {
        let rules = leadloop_core::nurture::NurtureRules::new(self.nurture.clone()).unwrap_or_default();
        match links {
            Some(links) => rules.with_links(links),
            None => rules,
        }
    }

    /// The email connector's config with a relative `.eml` directory placed inside the state
    /// directory.
    pub fn email(&self) -> Option<leadloop_smtp::EmailConfig> {
        let mut email = self.email.clone()?;
        if let Some(dir) = email.directory.as_mut().filter(|d| d.is_relative()) {
            *dir = self.daemon.state_dir.join(&*dir);
        }
        Some(email)
    }

    /// The people in config, as the domain sees them.
    pub fn people(&self) -> Vec<Person> {
        self.people.iter().filter_map(PersonConfig::to_person).collect()
    }
}

/// Reads, parses and validates `path`. On failure, every problem found; on success, the
/// config and any warnings.
pub fn load(path: &Path) -> Result<(Config, Diagnostics), Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if path == Path::new(DEFAULT_PATH) {
            " (the default; pass --config FILE or set LEADLOOP_CONFIG)"
        } else {
            ""
        };
        Diagnostics::single(Diagnostic::file_error(path, format!("cannot read config file{hint}: {e}")))
    })?;
    load_str(path, &text)
}

/// As [`load`], for text already read; `path` is used in messages.
pub fn load_str(path: &Path, text: &str) -> Result<(Config, Diagnostics), Diagnostics> {
    diagnose::parse_and_check(path, text)
}

/// The config file a command reads without `--config` or `$LEADLOOP_CONFIG`: where the
/// packaged unit and docs/operations.md install it.
pub const DEFAULT_PATH: &str = "/etc/leadloop/leadloop.toml";
