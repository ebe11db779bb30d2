//! The admin HTTP listener: `/healthz` (alive), `/readyz` (store open and engine started, not
//! draining) and `/metrics` (Prometheus text). Bound to loopback by default; it exposes
//! nothing a lead or rep should reach.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
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
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
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
