//! The admin HTTP listener: `/healthz` (alive), `/readyz` (store open and engine started, not
//! draining) and `/metrics` (Prometheus text), open to whoever reaches the listener; and the
//! data views the read-only commands ask a running daemon for (`/sla`, `/sla/LEAD`, `/leads`,
//! `/quarantine`, `/report/funnel`, `/crm/dead-letters`: lead names, companies, addresses,
//! raw CRM records, histories) and the one action, `POST /crm/replay` (dead letters back in
//! the queue), which answer only as [`AdminAuth`] allows. Bound to loopback by default.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hmac::{Hmac, Mac};
use leadloop_plugin::Secret;
use leadloop_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::Sha256;

#[derive(Clone)]
pub struct AdminState {
    pub ready: Arc<AtomicBool>,
    pub metrics: Option<PrometheusHandle>,
    pub store: Option<Arc<dyn Store>>,
    pub sla: Arc<leadloop_core::sla::SlaConfig>,
    pub scoring: Arc<leadloop_core::scoring::ScoringConfig>,
    /// Who may read the data views.
    pub auth: Arc<AdminAuth>,
    /// The blast-radius guard: `/guard` (what it holds) and its actions (pause, resume,
    /// approve), behind [`AdminAuth`] as the data views are.
    pub guard: Option<Arc<leadloop_engine::Guard>>,
    /// Wakes the CRM relay after a replay (the daemon's, when it has a CRM).
    pub crm_wake: Option<Arc<tokio::sync::Notify>>,
}

type HmacSha256 = Hmac<Sha256>;

/// The label the token is compared under: both sides are HMACs of it, compared in constant
/// time, so neither the token's bytes nor its length leak through timing.
const TOKEN_LABEL: &[u8] = b"leadloop admin token v1";

/// Who may read the admin listener's data views.
pub enum AdminAuth {
    /// `Authorization: Bearer TOKEN` with the configured token (`daemon.admin_token_file` or
    /// `daemon.admin_token_env`); held as its HMAC, never as text.
    Token(Vec<u8>),
    /// No token configured and the listener bound to loopback: the data views answer local
    /// clients, as the host's own users can already read the state directory's owner's files.
    Loopback,
    /// No token configured and the listener bound to an address other hosts can reach: the
    /// data views answer 403.
    Refuse,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdminAuth::Token(_) => "AdminAuth::Token([redacted])",
            AdminAuth::Loopback => "AdminAuth::Loopback",
            AdminAuth::Refuse => "AdminAuth::Refuse",
        })
    }
}

fn token_mac(token: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(TOKEN_LABEL).unwrap_or_else(|_| std::process::abort());
    mac.update(token);
    mac
}

impl AdminAuth {
    /// The policy for a listener bound to `listen` with `token` configured (or not).
    pub fn new(token: Option<&Secret>, listen: SocketAddr) -> Self {
        match token {
            Some(token) => {
                AdminAuth::Token(token_mac(token.expose().trim().as_bytes()).finalize().into_bytes().to_vec())
            }
            None if listen.ip().is_loopback() => AdminAuth::Loopback,
            None => AdminAuth::Refuse,
        }
    }

    /// Whether a request with `headers` may read the data views; if not, the answer.
    fn check(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        match self {
            AdminAuth::Loopback => Ok(()),
            AdminAuth::Refuse => Err(Box::new(
                (
                    StatusCode::FORBIDDEN,
                    "lead data is not served on an admin listener other hosts can reach without a token: \
                 set daemon.admin_token_file (or admin_token_env), or bind daemon.admin_listen to loopback\n",
                )
                    .into_response(),
            )),
            AdminAuth::Token(expected) => {
                let presented = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim());
                let Some(presented) = presented else {
                    return Err(Box::new(unauthorized(
                        "this needs `Authorization: Bearer TOKEN` with the daemon's admin token (daemon.admin_token_file)\n",
                    )));
                };
                // Constant time: the HMAC comparison never stops at the first differing byte.
                if token_mac(presented.as_bytes()).verify_slice(expected).is_err() {
                    return Err(Box::new(unauthorized("the admin token is not right\n")));
                }
                Ok(())
            }
        }
    }
}

fn unauthorized(message: &'static str) -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer realm=\"leadloop admin\"")], message)
        .into_response()
}

/// Lets a request through to a data view only as [`AdminAuth`] allows; a refusal is logged
/// with the client's address (never what it sent).
async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    match state.auth.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            let peer = request
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0.to_string())
                .unwrap_or_default();
            tracing::warn!(%peer, path = request.uri().path(), status = refused.status().as_u16(), "admin data view refused");
            metrics::counter!("leadloop_admin_refused_total").increment(1);
            *refused
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct LeadsQuery {
    stage: Option<String>,
}

/// `GET /leads?stage=NAME`: leads with stage, status, owner and score, as `leadloop leads list --format json`.
async fn leads_list(
    State(state): State<AdminState>,
    Query(query): Query<LeadsQuery>,
) -> axum::response::Response {
    let Some(store) = &state.store else { return unavailable("no store\n".into()) };
    match crate::sla_cmd::leads(store.as_ref(), &state.scoring, chrono::Utc::now(), query.stage.as_deref())
        .await
    {
        Ok(rows) => Json(rows).into_response(),
        Err(error) => unavailable(format!("{error}\n")),
    }
}

/// Records the CRM sync set aside, with their reasons.
async fn quarantine_list(State(state): State<AdminState>) -> axum::response::Response {
    let Some(store) = &state.store else { return unavailable("no store\n".into()) };
    match crate::sync_cmd::quarantined(store.as_ref()).await {
        Ok(rows) => Json(rows).into_response(),
        Err(error) => unavailable(format!("{error}\n")),
    }
}

/// `GET /crm/dead-letters`: the CRM writes refused for good, as `leadloop crm dead-letters
/// --format json`.
async fn dead_letters(State(state): State<AdminState>) -> axum::response::Response {
    let Some(store) = &state.store else { return unavailable("no store\n".into()) };
    match leadloop_engine::crm::dead_letters(store.as_ref()).await {
        Ok(rows) => Json(rows).into_response(),
        Err(error) => unavailable(format!("{error}\n")),
    }
}

#[derive(Debug, serde::Deserialize)]
struct ReplayRequest {
    which: leadloop_engine::crm::ReplayWhich,
    /// The operator, as the command line names them.
    by: String,
}

/// `POST /crm/replay` `{"which": {"keys": [KEY…]} | "all", "by": NAME}`: puts dead letters
/// back in the queue, records it in each lead's history (`admin NAME via the admin
/// listener`), and wakes the CRM relay.
async fn replay(
    State(state): State<AdminState>,
    Json(request): Json<ReplayRequest>,
) -> axum::response::Response {
    let Some(store) = &state.store else { return unavailable("no store\n".into()) };
    let by = crate::escape_controls(request.by.trim(), false).chars().take(100).collect::<String>();
    let actor = leadloop_core::Actor::Admin { who: format!("{by} (via the admin listener)") };
    match leadloop_engine::crm::replay(store.as_ref(), chrono::Utc::now(), &request.which, &actor).await {
        Ok(report) => {
            if !report.replayed.is_empty()
                && let Some(wake) = &state.crm_wake
            {
                wake.notify_one();
            }
            Json(report).into_response()
        }
        Err(error) => unavailable(format!("{error}\n")),
    }
}

#[derive(Debug, serde::Deserialize)]
struct SlaQuery {
    #[serde(default)]
    overdue: bool,
    rep: Option<String>,
}

/// The admin routes: health, readiness and metrics open; the data views behind
/// [`AdminAuth`].
pub fn router(state: AdminState) -> Router {
    let data = Router::new()
        .route("/sla", get(sla_list))
        .route("/quarantine", get(quarantine_list))
        .route("/leads", get(leads_list))
        .route("/sla/{lead}", get(sla_show))
        .route("/report/funnel", get(funnel))
        .route("/guard", get(guard_status))
        .route("/guard/{action}", axum::routing::post(guard_action))
        .route("/crm/dead-letters", get(dead_letters))
        .route("/crm/replay", axum::routing::post(replay))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(data)
        .with_state(state)
}

#[derive(Debug, serde::Deserialize)]
struct FunnelQuery {
    since: Option<String>,
}

/// `GET /report/funnel?since=30d`: the funnel, as `leadloop report funnel --format json`.
async fn funnel(
    State(state): State<AdminState>,
    Query(query): Query<FunnelQuery>,
) -> axum::response::Response {
    let Some(store) = &state.store else { return unavailable("no store\n".into()) };
    let since = match query.since.as_deref().map(leadloop_plugin::serde_duration::parse) {
        None => std::time::Duration::from_secs(30 * 86_400),
        Some(Ok(since)) => since,
        Some(Err(error)) => return (StatusCode::BAD_REQUEST, format!("since: {error}\n")).into_response(),
    };
    match crate::report::funnel_since(store.as_ref(), since, chrono::Utc::now()).await {
        Ok(report) => Json(report).into_response(),
        Err(error) => unavailable(format!("{error}\n")),
    }
}

#[derive(Debug, serde::Deserialize)]
struct GuardQuery {
    sample: Option<usize>,
}

/// `GET /guard?sample=N`: the switches and what they hold, as `leadloop approve --dry-run`.
async fn guard_status(State(state): State<AdminState>, Query(query): Query<GuardQuery>) -> Response {
    let Some(guard) = &state.guard else { return unavailable("no guard\n".into()) };
    match guard.held(query.sample.unwrap_or(10)).await {
        Ok(held) => Json(held).into_response(),
        Err(error) => unavailable(format!("{error}\n")),
    }
}

/// `POST /guard/pause|resume|approve|reject` with a [`crate::guard_cmd::Action`] body: what
/// `leadloop pause`, `resume` and `approve` do when a daemon holds the store.
async fn guard_action(
    State(state): State<AdminState>,
    Path(action): Path<String>,
    Json(body): Json<crate::guard_cmd::Action>,
) -> Response {
    let Some(guard) = &state.guard else { return unavailable("no guard\n".into()) };
    if body.action() != action {
        return (StatusCode::BAD_REQUEST, format!("the body is a {} action, not {action}\n", body.action()))
            .into_response();
    }
    match crate::guard_cmd::perform(guard, &body).await {
        Ok(value) => Json(value).into_response(),
        Err(error) => unavailable(format!("{error}\n")),
    }
}

fn unavailable(message: String) -> axum::response::Response {
    (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

/// `GET /sla?overdue=true&rep=ID`: the open hand-offs, as `leadloop sla list --format json`.
async fn sla_list(
    State(state): State<AdminState>,
    Query(query): Query<SlaQuery>,
) -> axum::response::Response {
    let Some(store) = &state.store else { return unavailable("no store\n".into()) };
    let filter = crate::sla_cmd::Filter { overdue: query.overdue, rep: query.rep };
    match crate::sla_cmd::list(store.as_ref(), &state.sla, chrono::Utc::now(), &filter).await {
        Ok(rows) => Json(rows).into_response(),
        Err(error) => unavailable(format!("{error}\n")),
    }
}

/// `GET /sla/LEAD`: one lead's hand-off and history, as `leadloop sla show --format json`.
async fn sla_show(State(state): State<AdminState>, Path(lead): Path<String>) -> axum::response::Response {
    let Some(store) = &state.store else { return unavailable("no store\n".into()) };
    match crate::sla_cmd::show(store.as_ref(), &state.sla, &state.scoring, chrono::Utc::now(), &lead).await {
        Ok(Some(value)) => Json(value).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(serde_json::Value::Null)).into_response(),
        Err(error) => unavailable(format!("{error}\n")),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    if let Some(store) = &state.store {
        let stats = store.stats();
        metrics::gauge!("leadloop_store_size_bytes").set(stats.size_on_disk as f64);
        metrics::gauge!("leadloop_store_commits").set(stats.commits as f64);
        metrics::gauge!("leadloop_store_flushes").set(stats.flushes as f64);
    }
    metrics::gauge!("leadloop_ready").set(if state.ready.load(Ordering::SeqCst) { 1.0 } else { 0.0 });
    let body = state.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt as _;

    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

    fn app(auth: AdminAuth) -> Router {
        router(AdminState {
            ready: Arc::new(AtomicBool::new(true)),
            metrics: None,
            store: None,
            sla: Arc::new(leadloop_core::sla::SlaConfig::default()),
            scoring: Arc::new(leadloop_core::scoring::ScoringConfig::default()),
            auth: Arc::new(auth),
            guard: None,
            crm_wake: None,
        })
    }

    /// The status of `GET path` with `authorization`, if any.
    async fn status(app: &Router, path: &str, authorization: Option<&str>) -> u16 {
        let mut request = axum::http::Request::get(path);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request.body(axum::body::Body::empty()).expect("request");
        app.clone().oneshot(request).await.expect("answer").status().as_u16()
    }

    const DATA: [&str; 7] =
        ["/sla", "/sla/00Q1", "/leads", "/quarantine", "/report/funnel", "/guard", "/crm/dead-letters"];

    #[tokio::test]
    async fn data_views_need_the_token_and_health_does_not() {
        let listen: SocketAddr = "0.0.0.0:9477".parse().expect("addr");
        let app = app(AdminAuth::new(Some(&Secret::for_tests(TOKEN)), listen));
        for open in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(status(&app, open, None).await, 200, "{open}");
        }
        let right = format!("Bearer {TOKEN}");
        let wrong = format!("Bearer {}", TOKEN.replace('0', "1"));
        for path in DATA {
            assert_eq!(status(&app, path, None).await, 401, "{path} without a token");
            assert_eq!(status(&app, path, Some(&wrong)).await, 401, "{path} with a wrong token");
            assert_eq!(status(&app, path, Some(TOKEN)).await, 401, "{path} without the scheme");
            assert_eq!(status(&app, path, Some(&format!("Basic {TOKEN}"))).await, 401, "{path}: Basic");
            // Let through: this test state has no store, so the view itself answers 503.
            assert_eq!(status(&app, path, Some(&right)).await, 503, "{path} with the token");
            assert_eq!(status(&app, path, Some(&format!("bearer  {TOKEN} "))).await, 503, "{path}");
        }
    }

    #[tokio::test]
    async fn guard_actions_need_the_token() {
        let listen: SocketAddr = "0.0.0.0:9477".parse().expect("addr");
        let app = app(AdminAuth::new(Some(&Secret::for_tests(TOKEN)), listen));
        let post = |authorization: Option<String>| {
            let mut request =
                axum::http::Request::post("/guard/pause").header(header::CONTENT_TYPE, "application/json");
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            request
                .body(axum::body::Body::from(r#"{"action":"pause","scope":"email","who":"t","reason":"r"}"#))
                .expect("request")
        };
        let answer = app.clone().oneshot(post(None)).await.expect("answer");
        assert_eq!(answer.status().as_u16(), 401);
        // Let through: this test state has no guard, so the action answers 503.
        let answer = app.clone().oneshot(post(Some(format!("Bearer {TOKEN}")))).await.expect("answer");
        assert_eq!(answer.status().as_u16(), 503);
    }

    #[tokio::test]
    async fn replay_is_an_action_behind_the_token() {
        let app = app(AdminAuth::new(Some(&Secret::for_tests(TOKEN)), "0.0.0.0:9477".parse().expect("addr")));
        let post = |authorization: Option<String>| {
            let mut request =
                axum::http::Request::post("/crm/replay").header(header::CONTENT_TYPE, "application/json");
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            request.body(axum::body::Body::from(r#"{"which":"all","by":"ada"}"#)).expect("request")
        };
        let status = |request: axum::http::Request<axum::body::Body>| {
            let app = app.clone();
            async move { app.oneshot(request).await.expect("answer").status().as_u16() }
        };
        assert_eq!(status(post(None)).await, 401);
        assert_eq!(status(post(Some(format!("Bearer {}", TOKEN.replace('0', "1"))))).await, 401);
        // Let through: no store in this test state.
        assert_eq!(status(post(Some(format!("Bearer {TOKEN}")))).await, 503);
    }

    #[tokio::test]
    async fn without_a_token_data_views_answer_on_loopback_only() {
        let loopback = app(AdminAuth::new(None, "127.0.0.1:9477".parse().expect("addr")));
        let exposed = app(AdminAuth::new(None, "0.0.0.0:9477".parse().expect("addr")));
        for path in DATA {
            assert_eq!(status(&loopback, path, None).await, 503, "{path} on loopback");
            assert_eq!(status(&exposed, path, None).await, 403, "{path} off loopback");
        }
        assert_eq!(status(&exposed, "/healthz", None).await, 200);
        assert!(matches!(AdminAuth::new(None, "[::1]:9477".parse().expect("addr")), AdminAuth::Loopback));
        assert_eq!(
            format!(
                "{:?}",
                AdminAuth::new(Some(&Secret::for_tests(TOKEN)), "127.0.0.1:1".parse().expect("addr"))
            ),
            "AdminAuth::Token([redacted])"
        );
    }
}
