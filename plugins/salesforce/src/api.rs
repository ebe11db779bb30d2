//! The REST layer: every call carries the shared session, reads `Sforce-Limit-Info` into the
//! budget, renews the session once on `INVALID_SESSION_ID`, and turns Salesforce's answers into
//! errors the engine can act on (retry after `Retry-After`, give up, or call an operator).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use leadloop_core::connector::{ApiUsage, ConnectorError};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{Authenticator, Session, transient};

/// Who is asking: bulk sync yields to SLA-critical writes when the allowance runs low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Bulk,
    Critical,
}

/// The daily allowance as the last response reported it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Budget {
    pub used: Option<u64>,
    pub max: Option<u64>,
}

impl Budget {
    /// Calls bulk sync may still make before only the reserve is left.
    pub fn bulk_left(&self, reserve: f64) -> Option<u64> {
        let (used, max) = (self.used?, self.max?);
        let keep = (max as f64 * reserve).ceil() as u64;
        Some(max.saturating_sub(keep).saturating_sub(used))
    }
}

/// A failed call: the error for the engine, and Salesforce's `errorCode` when it sent one.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub error: ConnectorError,
    pub code: Option<String>,
}

impl From<ConnectorError> for ApiError {
    fn from(error: ConnectorError) -> Self {
        Self { error, code: None }
    }
}

#[derive(Debug, Deserialize)]
struct ErrorItem {
    #[serde(default)]
    message: String,
    #[serde(default, alias = "statusCode")]
    #[serde(rename = "errorCode")]
    error_code: String,
}

/// How long to wait after `REQUEST_LIMIT_EXCEEDED`: the allowance is a rolling 24 hours, so
/// calls come back gradually.
const LIMIT_BACKOFF: Duration = Duration::from_secs(15 * 60);

#[derive(Debug)]
pub struct Api {
    http: reqwest::Client,
    pub auth: Authenticator,
    pub version: String,
    reserve: f64,
    budget: Mutex<Budget>,
    calls: AtomicU64,
}

impl Api {
    pub fn new(http: reqwest::Client, auth: Authenticator, version: &str, reserve: f64) -> Self {
        Self {
            http,
            auth,
            version: version.to_owned(),
            reserve,
            budget: Mutex::new(Budget::default()),
            calls: AtomicU64::new(0),
        }
    }

    pub fn data_path(&self, rest: &str) -> String {
        format!("/services/data/{}/{}", self.version, rest.trim_start_matches('/'))
    }

    pub fn usage(&self) -> ApiUsage {
        let budget = *self.budget.lock().unwrap_or_else(|p| p.into_inner());
        ApiUsage {
            calls: self.calls.load(Ordering::Relaxed),
            used: budget.used,
            max: budget.max,
            bulk_left: budget.bulk_left(self.reserve),
        }
    }

    /// Refuses a call the budget cannot afford, before it is made.
    fn admit(&self, priority: Priority) -> Result<(), ConnectorError> {
        let budget = *self.budget.lock().unwrap_or_else(|p| p.into_inner());
        let (Some(used), Some(max)) = (budget.used, budget.max) else { return Ok(()) };
        match priority {
            Priority::Bulk if budget.bulk_left(self.reserve) == Some(0) => {
                metrics_deferred();
                Err(transient(
                    format!(
                        "api budget low: {used} of {max} daily calls used and {:.0} % is kept for SLA writes; bulk sync deferred",
                        self.reserve * 100.0
                    ),
                    Some(LIMIT_BACKOFF),
                ))
            }
            Priority::Critical if used >= max => Err(transient(
                format!("api budget spent: {used} of {max} daily calls used"),
                Some(LIMIT_BACKOFF),
            )),
            _ => Ok(()),
        }
    }

    /// One call: `path` is absolute (`/services/data/…`, as `nextRecordsUrl` gives it).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        priority: Priority,
        batch_size: Option<usize>,
    ) -> Result<Value, ApiError> {
        self.admit(priority)?;
        let mut session = self.auth.session().await?;
        let mut renewed = false;
        loop {
            match self.once(&session, method.clone(), path, body, batch_size).await {
                Err(ApiError { code: Some(code), .. }) if code == "INVALID_SESSION_ID" && !renewed => {
                    tracing::info!(path, "salesforce session expired; logging in again");
                    session = self.auth.renew(&session).await?;
                    renewed = true;
                }
                other => return other,
            }
        }
    }

    async fn once(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        body: Option<&Value>,
        batch_size: Option<usize>,
    ) -> Result<Value, ApiError> {
        let url = format!("{}{}", session.instance_url.trim_end_matches('/'), path);
        let mut request = self.http.request(method, &url).bearer_auth(session.access_token.expose());
        if let Some(size) = batch_size {
            request = request.header("Sforce-Query-Options", format!("batchSize={size}"));
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("leadloop_crm_api_calls_total").increment(1);
        let response = request.send().await.map_err(|e| {
            transient(format!("{}: {}", redact(path), leadloop_plugin::error_chain(&e)), None)
        })?;
        let status = response.status();
        if let Some(info) = response.headers().get("sforce-limit-info").and_then(|v| v.to_str().ok()) {
            self.record_limit(info);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(|e| {
            transient(
                format!("{}: reading the response: {}", redact(path), leadloop_plugin::error_chain(&e)),
                None,
            )
        })?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                transient(format!("{}: malformed response body ({e}); will retry", redact(path)), None).into()
            });
        }
        let (code, message) = error_detail(&bytes);
        let what = format!(
            "{} answered {status}: {}{message}",
            redact(path),
            code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default()
        );
        let error = match status {
            StatusCode::UNAUTHORIZED => ConnectorError::Auth { message: what },
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => transient(what, retry_after),
            StatusCode::FORBIDDEN if code.as_deref() == Some("REQUEST_LIMIT_EXCEEDED") => {
                let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(max) = budget.max {
                    budget.used = Some(max);
                }
                transient(what, Some(retry_after.unwrap_or(LIMIT_BACKOFF)))
            }
            s if s.is_server_error() => transient(what, retry_after),
            _ => ConnectorError::Permanent { message: what },
        };
        Err(ApiError { error, code })
    }

    fn record_limit(&self, info: &str) {
        // `api-usage=25/15000`, possibly with other entries after a comma.
        for part in info.split(',') {
            let Some(value) = part.trim().strip_prefix("api-usage=") else { continue };
            let Some((used, max)) = value.split_once('/') else { continue };
            if let (Ok(used), Ok(max)) = (used.trim().parse::<u64>(), max.trim().parse::<u64>()) {
                let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
                budget.used = Some(used);
                budget.max = Some(max);
                metrics::gauge!("leadloop_crm_api_used").set(used as f64);
                metrics::gauge!("leadloop_crm_api_max").set(max as f64);
            }
        }
    }

    #[cfg(test)]
    pub fn set_budget(&self, used: u64, max: u64) {
        *self.budget.lock().unwrap_or_else(|p| p.into_inner()) = Budget { used: Some(used), max: Some(max) };
    }
}

fn metrics_deferred() {
    metrics::counter!("leadloop_crm_bulk_deferred_total").increment(1);
}

/// Salesforce's error bodies are arrays of `{message, errorCode, fields}`.
pub fn error_detail(bytes: &[u8]) -> (Option<String>, String) {
    if let Ok(items) = serde_json::from_slice::<Vec<ErrorItem>>(bytes)
        && let Some(first) = items.first()
    {
        let code = (!first.error_code.is_empty()).then(|| first.error_code.clone());
        return (code, first.message.clone());
    }
    (None, String::from_utf8_lossy(bytes).chars().take(300).collect())
}

/// Paths carry SOQL, not secrets, but queries can be long: logs get the start.
fn redact(path: &str) -> String {
    let mut short: String = path.chars().take(160).collect();
    if short.len() < path.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_keeps_a_share_for_critical_writes() {
        let budget = Budget { used: Some(700), max: Some(1000) };
        assert_eq!(budget.bulk_left(0.2), Some(100));
        let budget = Budget { used: Some(850), max: Some(1000) };
        assert_eq!(budget.bulk_left(0.2), Some(0));
        assert_eq!(Budget::default().bulk_left(0.2), None);
    }

    #[test]
    fn reads_salesforce_error_bodies() {
        let (code, message) =
            error_detail(br#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#);
        assert_eq!(code.as_deref(), Some("INVALID_SESSION_ID"));
        assert_eq!(message, "Session expired or invalid");
        let (code, message) = error_detail(b"<html>gateway</html>");
        assert_eq!(code, None);
        assert_eq!(message, "<html>gateway</html>");
    }
}
