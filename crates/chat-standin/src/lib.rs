//! Stand-ins for the chat services leadloop posts to, written from their documented request
//! and response shapes, for tests (never on `leadloop run`'s path):
//!
//! - **Slack's Web API** under `/api`: `users.lookupByEmail` (`users_not_found`),
//!   `users.info`, `chat.postMessage` to a user id (the app's DM with them), `chat.update`,
//!   `auth.test`; the bot token checked (`invalid_auth`); every answer `{"ok": …}` with
//!   `error` when not ok. Faults: a storm of N answers `429` with `Retry-After`, and an outage
//!   (`503` to everything).
//! - **A button click**: [`StandIn::click`] sends a `block_actions` interactivity request for
//!   a posted message's button to leadloop's public listener, signed as Slack signs (`v0`
//!   HMAC-SHA256 of `v0:{timestamp}:{body}` under the signing secret), or forged or stale.
//! - **A Teams Workflows webhook** under `/teams/NAME`: takes a message with an Adaptive Card
//!   attachment and answers `202`; the same storm and outage apply.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// A workspace member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub deleted: bool,
}

/// A message as posted, and as last updated.
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    /// The user id it was posted to.
    pub user: String,
    /// The DM's channel id (`D` + the user id).
    pub channel: String,
    pub ts: String,
    pub text: String,
    pub blocks: Value,
    /// The last `chat.update`'s text, if any.
    pub updated: Option<String>,
}

#[derive(Default)]
struct Inner {
    token: String,
    users: Mutex<Vec<User>>,
    messages: Mutex<Vec<Posted>>,
    teams: Mutex<Vec<(String, Value)>>,
    /// Every looked-up address is a member (made up on first lookup): the demo's open workspace.
    open: AtomicBool,
    storm: AtomicU32,
    retry_after: AtomicU64,
    outage: AtomicBool,
    throttled: AtomicU32,
    calls: AtomicU32,
    next_ts: AtomicU64,
}

/// The stand-in, serving on loopback until dropped.
pub struct StandIn {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn").field("addr", &self.addr).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StandIn {
    /// Starts on a free loopback port; API calls must carry `Bearer {token}`.
    pub async fn start(token: &str) -> std::io::Result<Self> {
        let inner =
            Arc::new(Inner { token: token.to_owned(), next_ts: AtomicU64::new(1), ..Inner::default() });
        let app = Router::new()
            .route("/api/users.lookupByEmail", get(lookup))
            .route("/api/users.info", get(info))
            .route("/api/chat.postMessage", post(post_message))
            .route("/api/chat.update", post(update))
            .route("/api/auth.test", post(auth_test))
            .route("/teams/{name}", post(teams))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner, task })
    }

    /// The Web API's base URL, for `[chat.slack] api_url`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// A Teams Workflows webhook URL.
    pub fn teams_url(&self, name: &str) -> String {
        format!("http://{}/teams/{name}", self.addr)
    }

    pub fn add_user(&self, id: &str, email: &str) {
        lock(&self.inner.users).push(User { id: id.into(), email: email.to_lowercase(), deleted: false });
    }

    /// Makes every address looked up a member of the workspace (a user `U` + a number is
    /// made up for it on first lookup), for the demo, whose org is generated.
    pub fn open_workspace(&self) {
        self.inner.open.store(true, Ordering::SeqCst);
    }

    pub fn deactivate(&self, id: &str) {
        for user in lock(&self.inner.users).iter_mut().filter(|u| u.id == id) {
            user.deleted = true;
        }
    }

    /// The next `n` requests are answered `429` with `Retry-After: retry_after_s`.
    pub fn storm(&self, n: u32, retry_after_s: u64) {
        self.inner.retry_after.store(retry_after_s, Ordering::SeqCst);
        self.inner.storm.store(n, Ordering::SeqCst);
    }

    /// Every request is answered `503` while on.
    pub fn outage(&self, on: bool) {
        self.inner.outage.store(on, Ordering::SeqCst);
    }

    /// Requests answered `429` so far.
    pub fn throttled(&self) -> u32 {
        self.inner.throttled.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn calls(&self) -> u32 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    pub fn messages(&self) -> Vec<Posted> {
        lock(&self.inner.messages).clone()
    }

    /// Bodies posted to Teams webhooks: (webhook name, body).
    pub fn teams_posts(&self) -> Vec<(String, Value)> {
        lock(&self.inner.teams).clone()
    }

    /// Clicks button `action` of `message` as Slack user `user`: a `block_actions` request to
    /// `{listener}/slack/interactivity`, signed with `secret` at `timestamp` (Unix seconds).
    /// Returns the listener's status and body.
    pub async fn click(
        &self,
        listener: &str,
        secret: &str,
        message: &Posted,
        action: &str,
        user: &str,
        timestamp: i64,
    ) -> Result<(u16, String), String> {
        let value = message
            .blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
            .find(|e| e["action_id"] == action)
            .and_then(|e| e["value"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("no `{action}` button in the message"))?;
        let payload = json!({
            "type": "block_actions",
            "user": { "id": user },
            "api_app_id": "A0LEADLOOP",
            "container": { "type": "message", "channel_id": message.channel, "message_ts": message.ts },
            "channel": { "id": message.channel },
            "message": { "ts": message.ts, "text": message.text },
            "response_url": format!("http://{}/response/{}", self.addr, message.ts),
            "actions": [{ "type": "button", "action_id": action, "block_id": "leadloop_answer", "value": value }],
        });
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        let signature = signature(secret, timestamp, body.as_bytes());
        let response = reqwest::Client::new()
            .post(format!("{}/slack/interactivity", listener.trim_end_matches('/')))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("X-Slack-Request-Timestamp", timestamp.to_string())
            .header("X-Slack-Signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.unwrap_or_default()))
    }
}

/// Slack's request signature: `v0=` and the hex HMAC-SHA256 of `v0:{timestamp}:{body}`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("v0={hex}")
}

/// The storm, the outage and the token, checked in that order; `None` lets the call through.
fn gate(inner: &Inner, headers: Option<&HeaderMap>) -> Option<Response> {
    inner.calls.fetch_add(1, Ordering::SeqCst);
    if inner.outage.load(Ordering::SeqCst) {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "outage").into_response());
    }
    if inner.storm.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        inner.throttled.fetch_add(1, Ordering::SeqCst);
        let wait = inner.retry_after.load(Ordering::SeqCst).to_string();
        return Some((StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, wait)], "").into_response());
    }
    let headers = headers?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(inner.token.as_str()) {
        return Some(ok_false("invalid_auth"));
    }
    None
}

fn ok_false(error: &str) -> Response {
    axum::Json(json!({ "ok": false, "error": error })).into_response()
}

fn user_json(user: &User) -> Value {
    json!({ "id": user.id, "name": user.email.split('@').next(), "deleted": user.deleted,
            "profile": { "email": user.email, "real_name": user.email } })
}

async fn lookup(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&inner, Some(&headers)) {
        return r;
    }
    let email = q.get("email").map(|e| e.to_lowercase()).unwrap_or_default();
    let mut users = lock(&inner.users);
    if inner.open.load(Ordering::SeqCst) && !email.is_empty() && !users.iter().any(|u| u.email == email) {
        let id = format!("U{:06}", users.len() + 1);
        users.push(User { id, email: email.clone(), deleted: false });
    }
    match users.iter().find(|u| u.email == email) {
        Some(user) => axum::Json(json!({ "ok": true, "user": user_json(user) })).into_response(),
        None => ok_false("users_not_found"),
    }
}

async fn info(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&inner, Some(&headers)) {
        return r;
    }
    let id = q.get("user").cloned().unwrap_or_default();
    match lock(&inner.users).iter().find(|u| u.id == id) {
        Some(user) => axum::Json(json!({ "ok": true, "user": user_json(user) })).into_response(),
        None => ok_false("user_not_found"),
    }
}

async fn post_message(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = gate(&inner, Some(&headers)) {
        return r;
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else { return ok_false("invalid_json") };
    let Some(channel) = body["channel"].as_str() else { return ok_false("channel_not_found") };
    let user = match lock(&inner.users).iter().find(|u| u.id == channel) {
        Some(u) if u.deleted => return ok_false("user_disabled"),
        Some(u) => u.id.clone(),
        None => return ok_false("channel_not_found"),
    };
    if body["text"].as_str().is_none_or(str::is_empty) && !body["blocks"].is_array() {
        return ok_false("no_text");
    }
    let n = inner.next_ts.fetch_add(1, Ordering::SeqCst);
    let posted = Posted {
        channel: format!("D{user}"),
        user,
        ts: format!("1700000000.{n:06}"),
        text: body["text"].as_str().unwrap_or_default().to_owned(),
        blocks: body["blocks"].clone(),
        updated: None,
    };
    let answer = json!({ "ok": true, "channel": posted.channel, "ts": posted.ts,
                         "message": { "text": posted.text, "blocks": posted.blocks } });
    lock(&inner.messages).push(posted);
    axum::Json(answer).into_response()
}

async fn update(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = gate(&inner, Some(&headers)) {
        return r;
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else { return ok_false("invalid_json") };
    let (channel, ts) = (body["channel"].as_str().unwrap_or(""), body["ts"].as_str().unwrap_or(""));
    let mut messages = lock(&inner.messages);
    let Some(message) = messages.iter_mut().find(|m| m.channel == channel && m.ts == ts) else {
        return ok_false("message_not_found");
    };
    message.updated = Some(body["text"].as_str().unwrap_or_default().to_owned());
    if body["blocks"].is_array() {
        message.blocks = body["blocks"].clone();
    }
    axum::Json(json!({ "ok": true, "channel": channel, "ts": ts })).into_response()
}

async fn auth_test(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&inner, Some(&headers)) {
        return r;
    }
    axum::Json(json!({ "ok": true, "user": "leadloop", "team": "Stand-in", "user_id": "U0BOT" }))
        .into_response()
}

async fn teams(State(inner): State<Arc<Inner>>, Path(name): Path<String>, body: String) -> Response {
    if let Some(r) = gate(&inner, None) {
        return r;
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let card = &body["attachments"][0];
    if body["type"] != "message" || card["contentType"] != "application/vnd.microsoft.card.adaptive" {
        return (StatusCode::BAD_REQUEST, "expected a message with an Adaptive Card attachment")
            .into_response();
    }
    lock(&inner.teams).push((name, body));
    StatusCode::ACCEPTED.into_response()
}
