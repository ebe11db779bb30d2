//! leadloop's email connector: renders templates, composes MIME messages with deterministic
//! `Message-ID`s, and delivers them over SMTP (lettre, pooled, STARTTLS by default) or into a
//! directory of `.eml` files for staging and the demo. It implements the core [`Mailer`]
//! trait; retries, rate limits and suppression are the outbox relay's job in the engine.

pub mod message;
mod pool;
pub mod templates;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leadloop_core::connector::{ConnectorError, OutgoingEmail, SendReceipt};
use leadloop_core::{Clock, Mailer};
use leadloop_plugin::{BuildContext, BuildError, Secret};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use serde::Deserialize;

pub use message::{Composer, message_id};
pub use templates::{Rendered, TemplateProblem, Templates, sample_vars};

/// The templates leadloop's own rules use; `validate` checks each exists and renders.
pub const REQUIRED_TEMPLATES: &[&str] =
    &["sla_alert", "sla_reminder", "sla_manager", "sla_executive", "sla_digest", "sla_weekly"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deliver {
    /// Send through the SMTP server in `[email.smtp]`.
    #[default]
    Smtp,
    /// Write each message as an `.eml` file into `email.directory` instead of sending it.
    Directory,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS; refuses servers that do not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Smtps,
    /// No TLS at all: only for a relay on loopback, and only when configured explicitly.
    Plain,
}

/// `[email]`: who mail comes from, where templates live, how it is delivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    #[serde(default)]
    pub deliver: Deliver,
    /// `From:` of alerts, reminders and escalations, e.g. `"leadloop <leadloop@example.com>"`.
    pub from: String,
    pub reply_to: Option<String>,
    /// `From:` of nurture mail; defaults to `from`.
    pub nurture_from: Option<String>,
    pub nurture_reply_to: Option<String>,
    /// Overrides the built-in templates with `NAME.{subject,txt,html}.j2` files.
    pub templates_dir: Option<PathBuf>,
    /// For `deliver = "directory"`; a relative path is taken inside the state directory.
    pub directory: Option<PathBuf>,
    /// The right-hand side of generated `Message-ID`s; defaults to the domain of `from`.
    pub message_id_domain: Option<String>,
    pub smtp: Option<SmtpConfig>,
}

/// `[email.smtp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Defaults: 587 for STARTTLS, 465 for SMTPS, 25 for plain.
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// PEM file with the CA that signed the server's certificate, added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// How long to wait for the TCP connection.
    #[serde(default = "default_connect_timeout", with = "leadloop_plugin::serde_duration")]
    pub connect_timeout: Duration,
    /// How long to wait for each reply of the server.
    #[serde(default = "default_timeout", with = "leadloop_plugin::serde_duration")]
    pub timeout: Duration,
    /// Most connections kept open to the server.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_pool_size() -> u32 {
    8
}

impl EmailConfig {
    /// Problems a running daemon would hit, as (key, message); checked by `validate`.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("from", Some(&self.from)),
            ("reply_to", self.reply_to.as_ref()),
            ("nurture_from", self.nurture_from.as_ref()),
            ("nurture_reply_to", self.nurture_reply_to.as_ref()),
        ] {
            if let Some(value) = value
                && let Err(e) = value.parse::<lettre::message::Mailbox>()
            {
                problems.push((key.to_owned(), format!("`{value}` is not a mailbox ({e})")));
            }
        }
        match (self.deliver, &self.smtp, &self.directory) {
            (Deliver::Smtp, None, _) => {
                problems.push(("smtp".into(), "deliver = \"smtp\" needs an [email.smtp] table".into()))
            }
            (Deliver::Directory, _, None) => {
                problems.push(("directory".into(), "deliver = \"directory\" needs `directory`".into()))
            }
            _ => {}
        }
        if let Some(smtp) = &self.smtp {
            if smtp.password_file.is_some() && smtp.password_env.is_some() {
                problems.push((
                    "smtp.password_file".into(),
                    "set `password_file` or `password_env`, not both".into(),
                ));
            }
            if smtp.username.is_some() && smtp.password_file.is_none() && smtp.password_env.is_none() {
                problems.push((
                    "smtp.username".into(),
                    "a username needs `password_file` or `password_env`".into(),
                ));
            }
            if smtp.pool_size == 0 {
                problems.push(("smtp.pool_size".into(), "must be at least 1".into()));
            }
        }
        problems
    }

    /// The templates this config uses.
    pub fn templates(&self) -> Result<Templates, TemplateProblem> {
        Templates::load(self.templates_dir.as_deref())
    }

    /// Builds the running connector. Nothing is sent and no connection is made here: an
    /// unreachable server at start-up must not stop the daemon (mail waits in the outbox).
    pub fn build(&self, cx: &BuildContext) -> Result<Arc<EmailConnector>, BuildError> {
        if let Some((key, message)) = self.check().into_iter().next() {
            return Err(BuildError::new(format!("email.{key}"), message));
        }
        let templates =
            self.templates().map_err(|p| BuildError::new("email.templates_dir", p.to_string()))?;
        let composer = Composer::new(self, templates).map_err(|m| BuildError::new("email", m))?;
        let sender = match self.deliver {
            Deliver::Directory => {
                let dir = self.directory.clone().unwrap_or_default();
                // Mail holds personal data: a directory only its owner may enter.
                std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
                    .create(&dir)
                    .map_err(|e| {
                        BuildError::new("email.directory", format!("cannot create {}: {e}", dir.display()))
                    })?;
                Sender::Directory(dir)
            }
            Deliver::Smtp => {
                let smtp = self.smtp.as_ref().ok_or_else(|| BuildError::new("email.smtp", "missing"))?;
                Sender::Smtp(Box::new(smtp_pool(smtp)?))
            }
        };
        Ok(Arc::new(EmailConnector { composer, sender, clock: Arc::clone(&cx.clock) }))
    }
}

fn smtp_pool(config: &SmtpConfig) -> Result<pool::Pool, BuildError> {
    let tls_params = match config.tls {
        TlsMode::Plain => None,
        TlsMode::Starttls | TlsMode::Smtps => {
            let mut builder = TlsParameters::builder(config.host.clone());
            if let Some(path) = &config.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    BuildError::new("email.smtp.ca_file", format!("cannot read {}: {e}", path.display()))
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    BuildError::new("email.smtp.ca_file", format!("not a PEM certificate: {e}"))
                })?;
                builder = builder.add_root_certificate(cert);
            }
            Some(
                builder
                    .build_rustls()
                    .map_err(|e| BuildError::new("email.smtp", format!("TLS setup failed: {e}")))?,
            )
        }
    };
    let default_port = match config.tls {
        TlsMode::Starttls => 587,
        TlsMode::Smtps => 465,
        TlsMode::Plain => 25,
    };
    let password: Option<Secret> = leadloop_plugin::secret_from(
        "email.smtp.password",
        config.password_file.as_deref(),
        config.password_env.as_deref(),
    )?;
    let credentials = match (&config.username, password) {
        (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.expose().to_owned())),
        _ => None,
    };
    let settings = pool::Settings {
        host: config.host.clone(),
        port: config.port.unwrap_or(default_port),
        tls: config.tls,
        tls_params,
        credentials,
        connect_timeout: config.connect_timeout,
        timeout: config.timeout,
    };
    Ok(pool::Pool::new(settings, config.pool_size))
}

enum Sender {
    Smtp(Box<pool::Pool>),
    Directory(PathBuf),
}

/// The running email connector.
pub struct EmailConnector {
    composer: Composer,
    sender: Sender,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for EmailConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.sender {
            Sender::Smtp(_) => "smtp".to_owned(),
            Sender::Directory(dir) => format!("directory {}", dir.display()),
        };
        f.debug_struct("EmailConnector").field("deliver", &target).finish_non_exhaustive()
    }
}

impl EmailConnector {
    pub fn composer(&self) -> &Composer {
        &self.composer
    }
}

#[async_trait]
impl Mailer for EmailConnector {
    fn name(&self) -> &str {
        match self.sender {
            Sender::Smtp(_) => "smtp",
            Sender::Directory(_) => "directory",
        }
    }

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, ConnectorError> {
        let message = self.composer.compose(email, self.clock.now())?;
        let id = message_id(&email.key, self.composer.id_domain());
        match &self.sender {
            Sender::Smtp(pool) => {
                // A copy for one recipient (`deliver_to`) goes to that address alone, whatever
                // its To and Cc headers say.
                let envelope = match &email.deliver_to {
                    Some(single) => {
                        let address: lettre::Address = single.parse().map_err(|e| {
                            ConnectorError::Permanent { message: format!("invalid address {single:?}: {e}") }
                        })?;
                        lettre::address::Envelope::new(message.envelope().from().cloned(), vec![address])
                            .map_err(|e| ConnectorError::Permanent {
                                message: format!("cannot build envelope: {e}"),
                            })?
                    }
                    None => message.envelope().clone(),
                };
                let response = pool.send(&envelope, &message.formatted()).await?;
                let reply =
                    format!("{} {}", response.code(), response.message().collect::<Vec<_>>().join(" "));
                Ok(SendReceipt { message_id: id, reply })
            }
            Sender::Directory(dir) => {
                let path = write_eml(dir, email.key.as_str(), &message.formatted()).map_err(|e| {
                    let message = format!("cannot write .eml into {}: {e}", dir.display());
                    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
                        ConnectorError::NoSpace { message }
                    } else {
                        ConnectorError::Transient { message, retry_after: None }
                    }
                })?;
                Ok(SendReceipt { message_id: id, reply: format!("written to {}", path.display()) })
            }
        }
    }

    /// SMTP: connects, says EHLO, STARTTLS (for `tls = "starttls"`) and AUTH when a username
    /// is set, then NOOP and QUIT; no mail. Directory delivery: the directory exists.
    async fn check(&self) -> Result<String, ConnectorError> {
        match &self.sender {
            Sender::Smtp(pool) => pool.test().await,
            Sender::Directory(dir) => {
                if dir.is_dir() {
                    Ok(format!("{} is a directory", dir.display()))
                } else {
                    Err(ConnectorError::Permanent {
                        message: format!("{} is not a directory", dir.display()),
                    })
                }
            }
        }
    }
}

/// 4xx replies, timeouts and connection trouble are worth retrying; 5xx replies are not,
/// except 535 (authentication), which an operator can fix while mail waits.
fn classify(error: &lettre::transport::smtp::Error) -> ConnectorError {
    let message = error.to_string();
    let code = error.status().map(|c| c.to_string());
    if error.is_permanent() {
        if code.as_deref() == Some("535") {
            return ConnectorError::Auth { message };
        }
        return ConnectorError::Permanent { message };
    }
    ConnectorError::Transient { message, retry_after: None }
}

/// Writes `bytes` to `DIR/KEY.eml` atomically (temporary file, fsync, rename); the same key
/// always names the same file, so a resend replaces rather than duplicates.
fn write_eml(dir: &Path, key: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let safe: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .collect();
    let id = message::key_hash(key);
    let name = format!("{}-{}.eml", &safe[..safe.len().min(80)], &id[..12]);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let mut file = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create(true).truncate(true),
            0o600,
        )
        .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(error) = written {
        // A half-written file (a full disk) is not left behind to hold the space.
        let _ = std::fs::remove_file(&tmp);
        return Err(error);
    }
    Ok(path)
}
