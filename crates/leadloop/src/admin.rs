//! The admin HTTP listener: `/healthz` (alive), `/readyz` (store open and engine started, not
//! draining) and `/metrics` (Prometheus text). Bound to loopback by default; it exposes
//! nothing a lead or rep should reach.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use leadloop_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone)]
pub struct AdminState {
    pub ready: Arc<AtomicBool>,
    pub metrics: Option<PrometheusHandle>,
    pub store: Option<Arc<dyn Store>>,
    pub sla: Arc<leadloop_core::sla::SlaConfig>,
    pub scoring: Arc<leadloop_core::scoring::ScoringConfig>,
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

#[derive(Debug, serde::Deserialize)]
struct SlaQuery {
    #[serde(default)]
    overdue: bool,
    rep: Option<String>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/sla", get(sla_list))
        .route("/quarantine", get(quarantine_list))
        .route("/leads", get(leads_list))
        .route("/sla/{lead}", get(sla_show))
        .route("/report/funnel", get(funnel))
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
