//! leadloop's chat connectors. Only this crate knows Slack's and Teams' wire formats.
//!
//! - **Slack** ([`Slack`], a [`ChatSender`]): the bot token from `bot_token_file`/`_env`;
//!   `users.lookupByEmail` finds the person's Slack user (cached in memory; a miss is asked
//!   again next time), then `chat.postMessage` to that user (the app's DM with them) with
//!   Block Kit (`blocks.rs`): the lead, why it is hot, the SLA deadline, and Accept / Recycle /
//!   Disqualify buttons whose values are the person's signed one-click tokens. HTTP 429 (or
//!   `ratelimited`) is a transient failure carrying `Retry-After`; an unknown or deactivated
//!   user is permanent (the relay then sends the email). Button clicks come back as
//!   interactivity requests, checked by [`verify_signature`] and read by
//!   [`Interaction::parse`]; [`Slack::show_answer`] updates the message (`chat.update`).
//! - **Teams** ([`teams::Teams`]): an Adaptive Card posted to a Workflows webhook.
//!
//! See docs/chat.md.

mod blocks;
pub mod teams;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use leadloop_core::ChatService;
use leadloop_core::connector::{ChatReceipt, ChatSender, ConnectorError, OutgoingChat};
use leadloop_plugin::{BuildContext, BuildError, Secret, error_chain, secret_from};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

pub use blocks::{answered_blocks, message};

/// How far a request's `X-Slack-Request-Timestamp` may be from now: Slack's five minutes.
pub const MAX_SKEW_SECONDS: i64 = 5 * 60;

/// `[chat.slack]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The Web API's base URL (a stand-in's in tests).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The bot token (`xoxb-…`): a file (a bare name is read from `$CREDENTIALS_DIRECTORY`)
    /// or an environment variable.
    pub bot_token_file: Option<PathBuf>,
    pub bot_token_env: Option<String>,
    /// The app's signing secret, which verifies button clicks at the public listener.
    pub signing_secret_file: Option<PathBuf>,
    pub signing_secret_env: Option<String>,
    /// Each Web API call's deadline.
    #[serde(default = "default_timeout", with = "leadloop_plugin::serde_duration")]
    pub timeout: Duration,
}

fn default_api_url() -> String {
    "https://slack.com/api".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl SlackConfig {
    pub fn build(&self, _cx: &BuildContext) -> Result<Slack, BuildError> {
        let token = secret_from("bot_token", self.bot_token_file.as_deref(), self.bot_token_env.as_deref())?
            .ok_or_else(|| BuildError::new("bot_token_file", "set `bot_token_file` or `bot_token_env`"))?;
        let signing = secret_from(
            "signing_secret",
            self.signing_secret_file.as_deref(),
            self.signing_secret_env.as_deref(),
        )?
        .ok_or_else(|| {
            BuildError::new("signing_secret_file", "set `signing_secret_file` or `signing_secret_env`")
        })?;
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| BuildError::new("api_url", format!("cannot build the HTTP client: {e}")))?;
        Ok(Slack::new(http, &self.api_url, token, signing))
    }
}

/// The Slack connector.
pub struct Slack {
    http: reqwest::Client,
    api: String,
    token: Secret,
    signing: Secret,
    /// Lowercased email → Slack user id, and back.
    users: Mutex<HashMap<String, String>>,
    emails: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slack").field("api", &self.api).finish_non_exhaustive()
    }
}

/// Why an interactivity request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no X-Slack-Request-Timestamp or X-Slack-Signature header")]
    Missing,
    #[error("the request's timestamp is more than five minutes from now")]
    Stale,
    #[error("the signature does not match")]
    Forged,
}

/// Checks an interactivity request: `v0=` and the hex HMAC-SHA256, under the app's signing
/// secret, of `v0:{timestamp}:{body}`, with the timestamp within five minutes of `now` (Unix
/// seconds). The MAC is compared in constant time.
pub fn verify_signature(
    secret: &Secret,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(VerifyError::Missing);
    };
    let at: i64 = timestamp.trim().parse().map_err(|_| VerifyError::Missing)?;
    if (now - at).abs() > MAX_SKEW_SECONDS {
        return Err(VerifyError::Stale);
    }
    let hex = signature.trim().strip_prefix("v0=").ok_or(VerifyError::Forged)?;
    let expected = from_hex(hex).ok_or(VerifyError::Forged)?;
    let mut mac = mac(secret);
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected).map_err(|_| VerifyError::Forged)
}

/// The `X-Slack-Signature` of `body` at `timestamp`: what Slack sends (the stand-in signs
/// its clicks with it).
pub fn sign(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!("v0={}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn mac(secret: &Secret) -> Hmac<Sha256> {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).unwrap_or_else(|_| std::process::abort())
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// A button click, from the `payload` form field of an interactivity request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interaction {
    /// Who clicked (a Slack user id).
    pub user: String,
    /// `accept`, `recycle` or `disqualify`.
    pub action: String,
    /// The button's value: the signed one-click token.
    pub value: String,
    /// Where the message is, to update it.
    pub channel: Option<String>,
    pub ts: Option<String>,
}

impl Interaction {
    /// Reads a `block_actions` request body (`application/x-www-form-urlencoded`, the JSON in
    /// `payload`); `None` for anything else.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let payload = form_urlencoded::parse(body).find(|(k, _)| k == "payload").map(|(_, v)| v)?;
        let payload: Value = serde_json::from_str(&payload).ok()?;
        if payload["type"] != "block_actions" {
            return None;
        }
        let action = payload["actions"].as_array()?.first()?;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Some(Self {
            user: text(&payload["user"]["id"])?,
            action: text(&action["action_id"])?,
            value: text(&action["value"])?,
            channel: text(&payload["container"]["channel_id"]).or_else(|| text(&payload["channel"]["id"])),
            ts: text(&payload["container"]["message_ts"]).or_else(|| text(&payload["message"]["ts"])),
        })
    }
}

/// A Web API answer, classified.
fn classify(
    method: &str,
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &Value,
) -> Result<(), ConnectorError> {
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS || body["error"] == "ratelimited" {
        return Err(ConnectorError::Transient {
            message: format!("slack {method}: rate limited (429)"),
            retry_after: retry_after.or(Some(Duration::from_secs(1))),
        });
    }
    if status.is_server_error() {
        return Err(ConnectorError::Transient {
            message: format!("slack {method}: HTTP {status}"),
            retry_after,
        });
    }
    if body["ok"] == true {
        return Ok(());
    }
    let error = body["error"].as_str().unwrap_or("no ok in the answer").to_owned();
    let message = format!("slack {method}: {error}");
    Err(match error.as_str() {
        "not_authed" | "invalid_auth" | "account_inactive" | "token_revoked" | "token_expired"
        | "missing_scope" | "no_permission" | "org_login_required" => ConnectorError::Auth { message },
        "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => {
            ConnectorError::Transient { message, retry_after }
        }
        _ if !status.is_success() && !status.is_client_error() => {
            ConnectorError::Transient { message, retry_after }
        }
        _ => ConnectorError::Permanent { message },
    })
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl Slack {
    pub fn new(http: reqwest::Client, api: &str, token: Secret, signing: Secret) -> Self {
        Self {
            http,
            api: api.trim_end_matches('/').to_owned(),
            token,
            signing,
            users: Mutex::default(),
            emails: Mutex::default(),
        }
    }

    /// The signing secret, for the public listener.
    pub fn signing_secret(&self) -> &Secret {
        &self.signing
    }

    async fn call(&self, method: &str, request: reqwest::RequestBuilder) -> Result<Value, ConnectorError> {
        let response =
            request.bearer_auth(self.token.expose()).send().await.map_err(|e| ConnectorError::Transient {
                message: format!("slack {method}: {}", error_chain(&e)),
                retry_after: None,
            })?;
        let status = response.status();
        let wait = retry_after(response.headers());
        let body: Value = if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Value::Null
        } else {
            response.json().await.unwrap_or(Value::Null)
        };
        metrics::counter!("leadloop_slack_calls_total", "method" => method.to_owned(), "status" => status.as_u16().to_string()).increment(1);
        classify(method, status, wait, &body)?;
        Ok(body)
    }

    /// The Slack user with this email address (cached).
    pub async fn user_for(&self, email: &str) -> Result<String, ConnectorError> {
        let email = email.trim().to_lowercase();
        if let Some(id) = lock(&self.users).get(&email) {
            return Ok(id.clone());
        }
        let request = self.http.get(format!("{}/users.lookupByEmail", self.api)).query(&[("email", &email)]);
        let body = self.call("users.lookupByEmail", request).await.map_err(|e| {
            e.map_message(|m| {
                if m.contains("users_not_found") {
                    format!("{m}: no Slack user has the person's email")
                } else {
                    m
                }
            })
        })?;
        let user = &body["user"];
        let Some(id) = user["id"].as_str() else {
            return Err(ConnectorError::Permanent {
                message: "slack users.lookupByEmail: no user id in the answer".into(),
            });
        };
        if user["deleted"] == true {
            return Err(ConnectorError::Permanent {
                message: format!("slack users.lookupByEmail: user {id} is deactivated"),
            });
        }
        lock(&self.users).insert(email.clone(), id.to_owned());
        lock(&self.emails).insert(id.to_owned(), email);
        Ok(id.to_owned())
    }

    /// The email address of a Slack user: the one leadloop looked them up by, else
    /// `users.info` (needs `users:read.email`).
    pub async fn email_of(&self, user: &str) -> Result<String, ConnectorError> {
        if let Some(email) = lock(&self.emails).get(user) {
            return Ok(email.clone());
        }
        let request = self.http.get(format!("{}/users.info", self.api)).query(&[("user", user)]);
        let body = self.call("users.info", request).await?;
        let email =
            body["user"]["profile"]["email"].as_str().map(|e| e.trim().to_lowercase()).ok_or_else(|| {
                ConnectorError::Permanent { message: format!("slack users.info: no email for {user}") }
            })?;
        lock(&self.emails).insert(user.to_owned(), email.clone());
        Ok(email)
    }

    /// Replaces a message's buttons with the answer (`chat.update`).
    pub async fn show_answer(
        &self,
        channel: &str,
        ts: &str,
        answer: &str,
        by: &str,
    ) -> Result<(), ConnectorError> {
        let (text, blocks) = answered_blocks(answer, by);
        let request = self
            .http
            .post(format!("{}/chat.update", self.api))
            .json(&json!({ "channel": channel, "ts": ts, "text": text, "blocks": blocks }));
        self.call("chat.update", request).await.map(|_| ())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl ChatSender for Slack {
    fn name(&self) -> &str {
        "slack"
    }

    fn service(&self) -> ChatService {
        ChatService::Slack
    }

    async fn post(&self, chat: &OutgoingChat) -> Result<ChatReceipt, ConnectorError> {
        let user = self.user_for(&chat.to).await?;
        let (text, blocks) = message(&chat.kind, &chat.vars);
        let request = self
            .http
            .post(format!("{}/chat.postMessage", self.api))
            .json(&json!({ "channel": user, "text": text, "blocks": blocks, "unfurl_links": false }));
        let body = self.call("chat.postMessage", request).await?;
        Ok(ChatReceipt {
            channel: body["channel"].as_str().unwrap_or_default().to_owned(),
            ts: body["ts"].as_str().unwrap_or_default().to_owned(),
        })
    }

    async fn check(&self) -> Result<String, ConnectorError> {
        let body = self.call("auth.test", self.http.post(format!("{}/auth.test", self.api))).await?;
        Ok(format!(
            "slack: authenticated as {} in {}",
            body["user"].as_str().unwrap_or("?"),
            body["team"].as_str().unwrap_or("?")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_secret_the_body_and_a_fresh_timestamp() {
        let secret = Secret::for_tests("8f742231b10e8888abcd99yyyzzz85a5");
        let body = b"payload=%7B%22type%22%3A%22block_actions%22%7D";
        let now = 1_531_420_618;
        let good = sign(&secret, now, body);
        let at = now.to_string();
        assert_eq!(verify_signature(&secret, Some(&at), Some(&good), body, now), Ok(()));
        assert_eq!(verify_signature(&secret, Some(&at), Some(&good), body, now + 299), Ok(()));
        // Stale either way past five minutes.
        assert_eq!(
            verify_signature(&secret, Some(&at), Some(&good), body, now + 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify_signature(&secret, Some(&at), Some(&good), body, now - 301),
            Err(VerifyError::Stale)
        );
        // Another body, another secret, a timestamp moved, a mangled header.
        assert_eq!(
            verify_signature(&secret, Some(&at), Some(&good), b"payload=x", now),
            Err(VerifyError::Forged)
        );
        let other = Secret::for_tests("another secret");
        assert_eq!(verify_signature(&other, Some(&at), Some(&good), body, now), Err(VerifyError::Forged));
        let moved = (now + 1).to_string();
        assert_eq!(verify_signature(&secret, Some(&moved), Some(&good), body, now), Err(VerifyError::Forged));
        assert_eq!(
            verify_signature(&secret, Some(&at), Some(good.trim_start_matches("v0=")), body, now),
            Err(VerifyError::Forged)
        );
        assert_eq!(verify_signature(&secret, Some(&at), Some("v0=zz"), body, now), Err(VerifyError::Forged));
        assert_eq!(verify_signature(&secret, None, Some(&good), body, now), Err(VerifyError::Missing));
    }

    #[test]
    fn a_block_actions_payload_names_the_user_the_button_and_the_message() {
        let payload = json!({
            "type": "block_actions",
            "user": { "id": "U0REP" },
            "container": { "type": "message", "channel_id": "D0DM", "message_ts": "1700000000.000100" },
            "actions": [{ "action_id": "accept", "value": "k1.abc.def", "type": "button" }],
        });
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        let interaction = Interaction::parse(body.as_bytes()).expect("parses");
        assert_eq!(
            interaction,
            Interaction {
                user: "U0REP".into(),
                action: "accept".into(),
                value: "k1.abc.def".into(),
                channel: Some("D0DM".into()),
                ts: Some("1700000000.000100".into()),
            }
        );
        assert_eq!(Interaction::parse(b"payload=%7B%22type%22%3A%22view_submission%22%7D"), None);
        assert_eq!(Interaction::parse(b"nothing=here"), None);
    }

    #[test]
    fn answers_are_classified_for_the_relay() {
        let ok = reqwest::StatusCode::OK;
        assert!(classify("m", ok, None, &json!({"ok": true})).is_ok());
        assert!(matches!(
            classify("m", reqwest::StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(30)), &Value::Null),
            Err(ConnectorError::Transient { retry_after: Some(d), .. }) if d == Duration::from_secs(30)
        ));
        assert!(matches!(
            classify("m", ok, None, &json!({"ok": false, "error": "users_not_found"})),
            Err(ConnectorError::Permanent { .. })
        ));
        assert!(matches!(
            classify("m", ok, None, &json!({"ok": false, "error": "invalid_auth"})),
            Err(ConnectorError::Auth { .. })
        ));
        assert!(matches!(
            classify("m", reqwest::StatusCode::SERVICE_UNAVAILABLE, None, &Value::Null),
            Err(ConnectorError::Transient { .. })
        ));
    }
}
