//! A small SMTP connection pool over lettre's connection type.
//!
//! lettre's own pooled transport writes the message body and the final `.` in two writes on a
//! socket without `TCP_NODELAY`, so every message waits out the server's delayed ACK (about
//! 40 ms on Linux): on loopback that capped delivery near 160 messages per second with 8
//! connections. This pool opens its sockets itself with `TCP_NODELAY`, then hands them to
//! lettre for EHLO, STARTTLS, AUTH and the mail transaction. SMTPS (TLS from the first
//! byte) still uses lettre's own connect.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use leadloop_core::connector::ConnectorError;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use tokio::sync::Semaphore;

use crate::{TlsMode, classify};

/// Idle connections older than this are closed rather than reused; servers drop idle
/// clients after a minute or more.
const MAX_IDLE: Duration = Duration::from_secs(50);

pub(crate) struct Settings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub tls_params: Option<TlsParameters>,
    pub credentials: Option<Credentials>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

pub(crate) struct Pool {
    settings: Settings,
    hello: ClientId,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    slots: Semaphore,
}

fn transient(message: String) -> ConnectorError {
    ConnectorError::Transient { message, retry_after: None }
}

impl Pool {
    pub fn new(settings: Settings, size: u32) -> Self {
        Self {
            settings,
            hello: ClientId::default(),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(size.max(1) as usize),
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, ConnectorError> {
        let s = &self.settings;
        let mut conn = match s.tls {
            TlsMode::Smtps => AsyncSmtpConnection::connect_tokio1(
                (s.host.as_str(), s.port),
                Some(s.connect_timeout),
                &self.hello,
                s.tls_params.clone(),
                None,
            )
            .await
            .map_err(|e| classify(&e))?,
            TlsMode::Starttls | TlsMode::Plain => {
                let stream = tokio::time::timeout(
                    s.connect_timeout,
                    tokio::net::TcpStream::connect((s.host.as_str(), s.port)),
                )
                .await
                .map_err(|_| transient(format!("connecting to {}:{} timed out", s.host, s.port)))?
                .map_err(|e| transient(format!("cannot connect to {}:{}: {e}", s.host, s.port)))?;
                stream.set_nodelay(true).map_err(|e| transient(format!("cannot set TCP_NODELAY: {e}")))?;
                let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                    .await
                    .map_err(|e| classify(&e))?;
                if s.tls == TlsMode::Starttls {
                    if !conn.can_starttls() {
                        conn.abort().await;
                        // Never fall back to plain text: the mail waits until TLS works.
                        return Err(transient(format!(
                            "{} does not offer STARTTLS, which is required",
                            s.host
                        )));
                    }
                    let params = s.tls_params.clone().ok_or_else(|| transient("no TLS parameters".into()))?;
                    conn.starttls(params, &self.hello).await.map_err(|e| classify(&e))?;
                }
                conn
            }
        };
        if let Some(credentials) = &s.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials).await.map_err(|e| classify(&e))?;
        }
        Ok(conn)
    }

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < MAX_IDLE && !conn.has_broken() {
                return Some(conn);
            }
        }
        None
    }

    fn put_back(&self, conn: AsyncSmtpConnection) {
        if !conn.has_broken() {
            self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((conn, Instant::now()));
        }
    }

    async fn attempt(
        &self,
        conn: &mut AsyncSmtpConnection,
        envelope: &Envelope,
        bytes: &[u8],
    ) -> Result<Response, ConnectorError> {
        match tokio::time::timeout(self.settings.timeout, conn.send(envelope, bytes)).await {
            Ok(result) => result.map_err(|e| classify(&e)),
            Err(_) => Err(transient(format!(
                "no reply from {} within {:?}",
                self.settings.host, self.settings.timeout
            ))),
        }
    }

    /// Sends one message on a pooled connection. A reused connection that turns out to be
    /// dead before any reply gets one more try on a fresh one.
    pub async fn send(&self, envelope: &Envelope, bytes: &[u8]) -> Result<Response, ConnectorError> {
        let _slot = self.slots.acquire().await.map_err(|_| transient("pool closed".into()))?;
        if let Some(mut conn) = self.take_idle() {
            match self.attempt(&mut conn, envelope, bytes).await {
                Ok(response) => {
                    self.put_back(conn);
                    return Ok(response);
                }
                Err(error) if !conn.has_broken() || !error.is_transient() => return Err(error),
                Err(_) => {} // stale connection: fall through to a fresh one
            }
        }
        let mut conn = self.connect_bounded().await?;
        let result = self.attempt(&mut conn, envelope, bytes).await;
        if result.is_ok() {
            self.put_back(conn);
        }
        result
    }

    /// [`Pool::connect`] within the connect timeout plus one reply timeout: the greeting, TLS
    /// and AUTH must not hang a send forever.
    async fn connect_bounded(&self) -> Result<AsyncSmtpConnection, ConnectorError> {
        let limit = self.settings.connect_timeout + self.settings.timeout;
        tokio::time::timeout(limit, self.connect())
            .await
            .map_err(|_| transient(format!("no SMTP session with {} within {limit:?}", self.settings.host)))?
    }

    /// Connects, authenticates and says NOOP; sends no mail. Says what was done, and errors
    /// name the server.
    pub async fn test(&self) -> Result<String, ConnectorError> {
        let s = &self.settings;
        let server = format!("{}:{}", s.host, s.port);
        let named = |error: ConnectorError| {
            error.map_message(|m| if m.contains(&server) { m } else { format!("{server}: {m}") })
        };
        let mut conn = self.connect_bounded().await.map_err(named)?;
        let alive = conn.test_connected().await;
        let _ = conn.quit().await;
        if !alive {
            return Err(named(transient("the server did not answer NOOP".into())));
        }
        let mut steps = match s.tls {
            TlsMode::Smtps => vec!["TLS", "EHLO"],
            TlsMode::Starttls => vec!["EHLO", "STARTTLS"],
            TlsMode::Plain => vec!["EHLO"],
        };
        if s.credentials.is_some() {
            steps.push("AUTH");
        }
        steps.push("NOOP");
        Ok(format!("{server}: {} accepted; no mail sent", steps.join(", ")))
    }
}
