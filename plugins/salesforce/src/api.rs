//! The REST layer: every call carries the shared session, reads `Sforce-Limit-Info` into the
//! budget, renews the session once on `INVALID_SESSION_ID`, and turns Salesforce's answers into
//! errors the engine can act on (retry after `Retry-After`, give up, or call an operator).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use leadloop_core::Timestamp;
use leadloop_core::connector::{ApiUsage, ConnectorError};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{Authenticator, Session, transient};

/// Who is asking: bulk sync yields to SLA-critical writes when the allowance runs low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Bulk,
    Critical,
}

/// The daily allowance as the last response reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// The org's calls used and allowed in its rolling 24 hours (`api-usage`).
    pub used: Option<u64>,
    pub max: Option<u64>,
    /// This connected app's quota, where the org sets one (`per-app-api-usage`).
    pub app: Option<(u64, u64)>,
    /// The org may run past its allowance for a while (`api-bursts`): Salesforce, not the
    /// governor, then says when a call is one too many.
    pub bursts: bool,
}

impl Budget {
    /// Calls bulk sync may still make before only the reserve is left: the tighter of the org's
    /// allowance and the app's quota.
    pub fn bulk_left(&self, reserve: f64) -> Option<u64> {
        let left = |used: u64, max: u64| {
            let keep = (max as f64 * reserve).ceil() as u64;
            max.saturating_sub(keep).saturating_sub(used)
        };
        let org = self.used.zip(self.max).map(|(used, max)| left(used, max));
        let app = self.app.map(|(used, max)| left(used, max));
        match (org, app) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reads a `Sforce-Limit-Info` value into this budget. Salesforce documents one entry
    /// (`api-usage=25/5000`) or several separated by `;` (`api-usage=25/5000;
    /// per-app-api-usage=17/250(appName=sample-connected-app)`, `api-usage=110018/100000;
    /// api-bursts=1/750`); entries it may add later are skipped. Returns whether anything was read.
    pub fn read_limit_info(&mut self, info: &str) -> bool {
        let mut read = false;
        for entry in info.split([';', ',']) {
            let Some((name, value)) = entry.trim().split_once('=') else { continue };
            // `17/250(appName=…)`: the part before the parenthesis.
            let value = value.split('(').next().unwrap_or_default();
            let Some((used, max)) = value.split_once('/') else { continue };
            let (Ok(used), Ok(max)) = (used.trim().parse::<u64>(), max.trim().parse::<u64>()) else {
                continue;
            };
            match name.trim() {
                "api-usage" => {
                    self.used = Some(used);
                    self.max = Some(max);
                    // A reading without `api-bursts` says the org is within its allowance.
                    self.bursts = false;
                    read = true;
                }
                "per-app-api-usage" => {
                    self.app = Some((used, max));
                    read = true;
                }
                "api-bursts" => {
                    self.bursts = used < max;
                    read = true;
                }
                _ => {}
            }
        }
        read
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

/// How long a reading kept by an earlier process is trusted: the allowance is a rolling 24
/// hours, so an older reading says little about now.
const SAVED_BUDGET_TTL: chrono::Duration = chrono::Duration::minutes(15);

/// A reading as kept in the store between processes.
#[derive(Debug, Serialize, Deserialize)]
struct SavedBudget {
    budget: Budget,
    at: Timestamp,
}

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

    /// The last reading with when it was taken, for the store; `None` before any response.
    pub fn budget_state(&self, now: Timestamp) -> Option<String> {
        let budget = *self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if budget.used.is_none() && budget.app.is_none() {
            return None;
        }
        serde_json::to_string(&SavedBudget { budget, at: now }).ok()
    }

    /// Takes an earlier process's reading when this one has none yet and it is recent.
    pub fn restore_budget_state(&self, state: &str, now: Timestamp) {
        let Ok(saved) = serde_json::from_str::<SavedBudget>(state) else {
            tracing::debug!("the kept api budget reading is unreadable; ignored");
            return;
        };
        if now - saved.at > SAVED_BUDGET_TTL || saved.at > now {
            return;
        }
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if budget.used.is_none() && budget.app.is_none() {
            *budget = saved.budget;
        }
    }

    /// Refuses a call the budget cannot afford, before it is made.
    fn admit(&self, priority: Priority) -> Result<(), ConnectorError> {
        let budget = *self.budget.lock().unwrap_or_else(|p| p.into_inner());
        match priority {
            Priority::Bulk if budget.bulk_left(self.reserve) == Some(0) => {
                metrics_deferred();
                Err(transient(
                    format!(
                        "api budget low: {}; {:.0} % is kept for SLA writes, so bulk sync is deferred",
                        describe(&budget),
                        self.reserve * 100.0
                    ),
                    Some(LIMIT_BACKOFF),
                ))
            }
            Priority::Critical
                if budget.app.is_some_and(|(used, max)| used >= max)
                    || (!budget.bursts
                        && budget.used.zip(budget.max).is_some_and(|(used, max)| used >= max)) =>
            {
                Err(transient(format!("api budget spent: {}", describe(&budget)), Some(LIMIT_BACKOFF)))
            }
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
            return decode_body(&bytes).map_err(|e| {
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
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if budget.read_limit_info(info) {
            if let (Some(used), Some(max)) = (budget.used, budget.max) {
                metrics::gauge!("leadloop_crm_api_used").set(used as f64);
                metrics::gauge!("leadloop_crm_api_max").set(max as f64);
            }
            if let Some((used, max)) = budget.app {
                metrics::gauge!("leadloop_crm_app_api_used").set(used as f64);
                metrics::gauge!("leadloop_crm_app_api_max").set(max as f64);
            }
        }
    }

    #[cfg(test)]
    pub fn set_budget(&self, used: u64, max: u64) {
        *self.budget.lock().unwrap_or_else(|p| p.into_inner()) =
            Budget { used: Some(used), max: Some(max), ..Budget::default() };
    }
}

/// The budget in an operator's words: "9,000 of 10,000 daily calls used (this app: 240 of 250)".
fn describe(budget: &Budget) -> String {
    let mut parts = Vec::new();
    if let (Some(used), Some(max)) = (budget.used, budget.max) {
        parts.push(format!("{used} of {max} daily calls used"));
    }
    if let Some((used, max)) = budget.app {
        parts.push(format!("this connected app's quota: {used} of {max}"));
    }
    parts.join(", ")
}

fn metrics_deferred() {
    metrics::counter!("leadloop_crm_bulk_deferred_total").increment(1);
}

/// Salesforce's error bodies are arrays of `{message, errorCode, fields}`.
/// A JSON body. Bytes that are not UTF-8 (one bad byte in one record of a Composite answer)
/// are replaced by U+FFFD instead of failing the whole answer; the mapping then quarantines
/// the record whose text holds one, and the rest syncs.
pub fn decode_body(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    if std::str::from_utf8(bytes).is_ok() {
        return serde_json::from_slice(bytes);
    }
    tracing::warn!(
        "salesforce answer is not valid UTF-8; the bad bytes are replaced and the records holding them quarantined"
    );
    serde_json::from_str(&String::from_utf8_lossy(bytes))
}

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
        let budget = Budget { used: Some(700), max: Some(1000), ..Budget::default() };
        assert_eq!(budget.bulk_left(0.2), Some(100));
        let budget = Budget { used: Some(850), max: Some(1000), ..Budget::default() };
        assert_eq!(budget.bulk_left(0.2), Some(0));
        assert_eq!(Budget::default().bulk_left(0.2), None);
    }

    #[test]
    fn reads_every_documented_form_of_the_limit_header() {
        let mut budget = Budget::default();
        assert!(budget.read_limit_info("api-usage=25/5000"));
        assert_eq!((budget.used, budget.max, budget.app), (Some(25), Some(5000), None));

        let mut budget = Budget::default();
        assert!(
            budget
                .read_limit_info("api-usage=25/5000; per-app-api-usage=17/250(appName=sample-connected-app)")
        );
        assert_eq!((budget.used, budget.max, budget.app), (Some(25), Some(5000), Some((17, 250))));
        // The app's quota is the tighter: 250 - 50 kept - 17 used.
        assert_eq!(budget.bulk_left(0.2), Some(183));

        let mut budget = Budget::default();
        assert!(budget.read_limit_info("api-usage=110018/100000; api-bursts=1/750"));
        assert_eq!((budget.used, budget.max), (Some(110_018), Some(100_000)));
        assert!(budget.bursts, "the org is bursting past its allowance");
        assert_eq!(budget.bulk_left(0.2), Some(0));

        // Unknown entries are skipped, and a reading without bursts ends the burst.
        assert!(budget.read_limit_info("api-usage=10/100000;future-thing=abc"));
        assert!(!budget.bursts);
        let mut budget = Budget::default();
        assert!(!budget.read_limit_info("nothing-we-know=1/2"));
        assert_eq!(budget, Budget::default());
    }

    #[test]
    fn a_body_with_bytes_that_are_not_utf8_still_decodes() {
        let mut body = br#"{"records":[{"LastName":"Ok"},{"LastName":"Bad"#.to_vec();
        body.push(0xff);
        body.extend_from_slice(br#""}]}"#);
        assert!(serde_json::from_slice::<Value>(&body).is_err());
        let value = decode_body(&body).expect("decodes");
        assert_eq!(value["records"][0]["LastName"], "Ok");
        assert_eq!(value["records"][1]["LastName"], "Bad\u{FFFD}");
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
