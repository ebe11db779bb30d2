//! The HTTP surface: one handler that logs every request and sends it to the token endpoint,
//! the data API (after faults, the session check and the daily limit) or the `/__emulator/`
//! control endpoints; and the small helpers for replies and form decoding.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::{Fault, RequestLog, Shared, api, oauth};

/// A reply before it becomes an HTTP response (composite subrequests use it directly).
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply { status, body: serde_json::to_vec(value).unwrap_or_default(), headers: Vec::new() }
    }

    pub fn raw(status: u16, body: Vec<u8>) -> Reply {
        Reply { status, body, headers: Vec::new() }
    }

    /// A Salesforce REST error body: `[{"message":…,"errorCode":…}]`.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(status, &json!([{ "message": message, "errorCode": code }]))
    }

    pub fn error_fields(status: u16, code: &str, message: &str, fields: &[String]) -> Reply {
        Reply::json(status, &json!([{ "message": message, "errorCode": code, "fields": fields }]))
    }

    pub fn no_content() -> Reply {
        Reply { status: 204, body: Vec::new(), headers: Vec::new() }
    }

    pub fn not_found() -> Reply {
        Reply::error(404, "NOT_FOUND", "The requested resource does not exist")
    }

    fn into_response(self) -> Response {
        let mut builder =
            Response::builder().status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK));
        if !self.body.is_empty()
            && !self.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            builder = builder.header(header::CONTENT_TYPE, "application/json;charset=UTF-8");
        }
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        builder.body(Body::from(self.body)).unwrap_or_else(|_| Response::new(Body::empty()))
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    // Control inserts may carry many records; Salesforce's own limits are enforced per resource.
    Router::new().fallback(handle).layer(DefaultBodyLimit::max(512 * 1024 * 1024)).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let target = uri.path_and_query().map_or(path.clone(), |pq| pq.as_str().to_owned());
    let reply = if path == "/services/oauth2/token" {
        shared.logins.fetch_add(1, Ordering::Relaxed);
        if method == Method::POST { oauth::token(&shared, &headers, &body) } else { Reply::not_found() }
    } else if path == "/services/data" || path.starts_with("/services/data/") {
        data(&shared, &method, &target, &headers, &body).await
    } else if path.starts_with("/cometd/") && method == Method::POST {
        crate::cometd::handle(&shared, &headers, &body).await
    } else if let Some(rest) = path.strip_prefix("/__emulator/") {
        control(&shared, &method, rest, uri.query().unwrap_or(""), &body)
    } else if let Some(rest) = path.strip_prefix("/lightning/r/") {
        if method == Method::GET { record_page(&shared, rest) } else { Reply::not_found() }
    } else {
        Reply::not_found()
    };
    tracing::debug!(method = %method, path = %target, status = reply.status, "emulator request");
    shared.log(RequestLog { method: method.to_string(), path: target, status: reply.status });
    reply.into_response()
}

/// The first queued fault that applies to a data request, consumed by one firing.
enum Fired {
    Status(u16, Option<u64>),
    Limit,
}

fn fire_fault(shared: &Shared, path: &str) -> Option<Fired> {
    let mut faults = shared.faults();
    let pos = faults.iter().position(|f| match f {
        Fault::Status { path_contains, .. } => path_contains.as_deref().is_none_or(|p| path.contains(p)),
        Fault::LimitExceeded { .. } => true,
        _ => false,
    })?;
    let (fired, left) = match faults.get_mut(pos)? {
        Fault::Status { status, retry_after, times, .. } => {
            *times = times.saturating_sub(1);
            (Fired::Status(*status, *retry_after), *times)
        }
        Fault::LimitExceeded { times } => {
            *times = times.saturating_sub(1);
            (Fired::Limit, *times)
        }
        _ => return None,
    };
    if left == 0 {
        faults.remove(pos);
    }
    Some(fired)
}

/// Takes one firing of a `Slow` or `Malformed` fault.
fn take_counted(shared: &Shared, slow: bool) -> Option<std::time::Duration> {
    let mut faults = shared.faults();
    let pos = faults.iter().position(|f| {
        if slow { matches!(f, Fault::Slow { .. }) } else { matches!(f, Fault::Malformed { .. }) }
    })?;
    let (out, left) = match faults.get_mut(pos)? {
        Fault::Slow { delay, times } => {
            *times = times.saturating_sub(1);
            (*delay, *times)
        }
        Fault::Malformed { times } => {
            *times = times.saturating_sub(1);
            (std::time::Duration::ZERO, *times)
        }
        _ => return None,
    };
    if left == 0 {
        faults.remove(pos);
    }
    Some(out)
}

/// Fires an `InvalidUtf8` fault whose marker the body holds: each occurrence becomes 0xFF.
fn corrupt_utf8(shared: &Shared, body: &mut Vec<u8>) {
    let mut faults = shared.faults();
    let Some(pos) = faults.iter().position(|f| match f {
        Fault::InvalidUtf8 { marker, .. } => body.windows(marker.len()).any(|w| w == marker.as_bytes()),
        _ => false,
    }) else {
        return;
    };
    let Some(Fault::InvalidUtf8 { marker, times }) = faults.get_mut(pos) else { return };
    let marker = marker.clone().into_bytes();
    let mut out = Vec::with_capacity(body.len());
    let mut rest = &body[..];
    while let Some(at) = rest.windows(marker.len()).position(|w| w == marker.as_slice()) {
        out.extend_from_slice(&rest[..at]);
        out.push(0xff);
        rest = &rest[at + marker.len()..];
    }
    out.extend_from_slice(rest);
    *body = out;
    *times = times.saturating_sub(1);
    if *times == 0 {
        faults.remove(pos);
    }
}

fn limit_exceeded() -> Reply {
    Reply::error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
}

/// A data request: faults, session, daily limit, then the API proper.
async fn data(shared: &Shared, method: &Method, target: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
    if let Some(delay) = take_counted(shared, true) {
        tokio::time::sleep(delay).await;
    }
    let max = shared.config.daily_api_limit;
    // The versions list needs no session and is not an API call, as in Salesforce.
    if *method == Method::GET && matches!(target, "/services/data" | "/services/data/") {
        return api::dispatch(shared, "GET", target, None, body, false);
    }
    let mut reply = match fire_fault(shared, target) {
        Some(Fired::Status(status, retry_after)) => {
            let (code, message) = match status {
                401 => ("INVALID_SESSION_ID", "Session expired or invalid"),
                429 => ("REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded."),
                503 => ("SERVER_UNAVAILABLE", "Server temporarily unavailable, please try again later."),
                s if s >= 500 => (
                    "UNKNOWN_EXCEPTION",
                    "An unexpected error occurred. Please include this ErrorId if you contact support: 1905412061-27913 (-1237339045)",
                ),
                _ => ("INVALID_REQUEST", "The request was rejected by an injected fault."),
            };
            let mut r = Reply::error(status, code, message);
            if let Some(secs) = retry_after {
                r.headers.push(("Retry-After", secs.to_string()));
            }
            r
        }
        Some(Fired::Limit) => limit_exceeded(),
        None => match authorize(shared, headers) {
            Err(r) => r,
            Ok(()) => {
                // Count the call unless the allowance (or the app's quota) is used up.
                let app_left = shared.config.app_api_quota.as_ref().is_none_or(|app| {
                    shared
                        .app_used
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                            (used < app.quota).then_some(used + 1)
                        })
                        .is_ok()
                });
                let counted = app_left
                    && shared
                        .api_used
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                            (used < max).then_some(used + 1)
                        })
                        .is_ok();
                if counted {
                    shared.api_calls.fetch_add(1, Ordering::Relaxed);
                    let batch = headers
                        .get("sforce-query-options")
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_batch_size);
                    let mut r = api::dispatch(shared, method.as_str(), target, batch, body, false);
                    corrupt_utf8(shared, &mut r.body);
                    if take_counted(shared, false).is_some() {
                        let keep = r.body.len() / 2;
                        r.body.truncate(keep.max(1));
                        if r.body.is_empty() {
                            r.body = b"{".to_vec();
                        }
                        r.status = if r.status == 204 { 200 } else { r.status };
                    }
                    r
                } else {
                    limit_exceeded()
                }
            }
        },
    };
    let used = shared.api_used.load(Ordering::Relaxed);
    let mut info = format!("api-usage={used}/{max}");
    if let Some(app) = &shared.config.app_api_quota {
        let app_used = shared.app_used.load(Ordering::Relaxed);
        info.push_str(&format!("; per-app-api-usage={app_used}/{}(appName={})", app.quota, app.app_name));
    }
    reply.headers.push(("Sforce-Limit-Info", info));
    reply
}

/// `batchSize=N` from `Sforce-Query-Options`, clamped to Salesforce's 200..=2000.
fn parse_batch_size(v: &str) -> Option<usize> {
    v.split(',')
        .filter_map(|part| part.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("batchSize"))
        .and_then(|(_, n)| n.trim().parse::<usize>().ok())
        .map(|n| n.clamp(200, 2000))
}

pub(crate) fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), Reply> {
    let invalid = || Reply::error(401, "INVALID_SESSION_ID", "Session expired or invalid");
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("OAuth ")))
        .map(str::trim)
        .ok_or_else(invalid)?;
    let now = shared.now_ms();
    let mut sessions = shared.sessions();
    let Some(session) = sessions.get(token) else { return Err(invalid()) };
    if let Some(ttl) = shared.config.session_ttl {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4);
        if now >= session.issued_ms.saturating_add(ttl_ms) {
            sessions.remove(token);
            return Err(invalid());
        }
    }
    Ok(())
}

/// Decodes `application/x-www-form-urlencoded` text (also query strings).
pub(crate) fn form_decode(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn form_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `GET /lightning/r/{Object}/{Id}/view`: a record's page, at the path of Salesforce's Lightning
/// record URL, so links built as `{instance}/lightning/r/Lead/{id}/view` open while the emulator
/// runs. A plain HTML table of the record's fields (the owner's name beside `OwnerId`); no
/// session needed, not an API call.
fn record_page(shared: &Shared, rest: &str) -> Reply {
    let html = |status: u16, title: &str, body: &str| {
        let page = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title></head>\n<body>\n<h1>{}</h1>\n{body}\n<p><small>Salesforce emulator</small></p>\n</body></html>\n",
            escape(title),
            escape(title),
        );
        let mut reply = Reply::raw(status, page.into_bytes());
        reply.headers.push(("Content-Type", "text/html; charset=utf-8".to_owned()));
        reply
    };
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let [object, id, "view"] = parts.as_slice() else {
        return html(404, "Not found", "<p>Record pages are at /lightning/r/OBJECT/ID/view.</p>");
    };
    let db = shared.db();
    let Some(store) = db.object(object) else {
        return html(404, "Not found", &format!("<p>No object named {}.</p>", escape(object)));
    };
    let Some(record) = store.live(id) else {
        let why = if store.is_deleted(id) { "was deleted" } else { "does not exist" };
        return html(404, "Not found", &format!("<p>{} {} {why}.</p>", store.name, escape(id)));
    };
    let fields = store.to_map(record);
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let owner = fields.get("OwnerId").map(text).and_then(|owner| {
        let users = db.object("User")?;
        users.live(&owner).and_then(|u| users.to_map(u).get("Name").map(text))
    });
    let mut rows = String::new();
    for (name, value) in &fields {
        let mut value = text(value);
        if value.is_empty() {
            continue;
        }
        if name == "OwnerId"
            && let Some(owner) = &owner
        {
            value = format!("{owner} ({value})");
        }
        rows.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>\n",
            escape(name),
            escape(&value)
        ));
    }
    let title = fields.get("Name").map(text).filter(|n| !n.is_empty()).unwrap_or_else(|| (*id).to_owned());
    html(200, &format!("{}: {title}", store.name), &format!("<table cellpadding=\"4\">\n{rows}</table>"))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The `/__emulator/` control endpoints (not counted as API calls).
fn control(shared: &Shared, method: &Method, rest: &str, query: &str, body: &[u8]) -> Reply {
    let params = form_decode(query);
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let bad = |msg: String| Reply::json(400, &json!({ "error": msg }));
    let is_post = *method == Method::POST;
    match (parts.as_slice(), is_post) {
        (["stats"], false) => {
            let db = shared.db();
            let counts: serde_json::Map<String, Value> =
                db.objects.iter().map(|o| (o.name.to_owned(), Value::from(o.index.len()))).collect();
            Reply::json(
                200,
                &json!({
                    "api_calls": shared.api_calls.load(Ordering::Relaxed),
                    "api_usage": shared.api_used.load(Ordering::Relaxed),
                    "daily_api_limit": shared.config.daily_api_limit,
                    "logins": shared.logins.load(Ordering::Relaxed),
                    "counts": counts,
                    "now": crate::store::format_datetime(shared.now_ms()),
                }),
            )
        }
        (["requests"], false) => {
            let log: Vec<RequestLog> = crate::lock(&shared.requests).iter().cloned().collect();
            Reply::json(200, &serde_json::to_value(log).unwrap_or(Value::Null))
        }
        (["fault"], true) => match serde_json::from_slice::<Fault>(body) {
            Ok(fault) => {
                shared.faults().push(fault);
                Reply::no_content()
            }
            Err(error) => bad(format!("invalid fault: {error}")),
        },
        (["clear-faults"], true) => {
            shared.faults().clear();
            Reply::no_content()
        }
        (["expire-sessions"], true) => {
            shared.sessions().clear();
            Reply::no_content()
        }
        (["advance"], true) => match form_get(&params, "secs").and_then(|s| s.parse::<i64>().ok()) {
            Some(secs) if secs >= 0 => {
                shared.offset_ms.fetch_add(secs.saturating_mul(1000), Ordering::Relaxed);
                Reply::json(200, &json!({ "now": crate::store::format_datetime(shared.now_ms()) }))
            }
            _ => bad("advance needs ?secs=N (a non-negative integer)".to_owned()),
        },
        (["api-usage"], true) => match form_get(&params, "used").and_then(|s| s.parse::<u64>().ok()) {
            Some(used) => {
                shared.api_used.store(used, Ordering::Relaxed);
                Reply::no_content()
            }
            None => bad("api-usage needs ?used=N".to_owned()),
        },
        (["insert", object], true) => {
            let records = match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => vec![m],
                Ok(Value::Array(items)) => {
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Value::Object(m) => out.push(m),
                            _ => return bad("insert takes a JSON object or an array of objects".to_owned()),
                        }
                    }
                    out
                }
                _ => return bad("insert takes a JSON object or an array of objects".to_owned()),
            };
            if shared.db().object(object).is_none() {
                return bad(format!("unknown object {object}"));
            }
            let now = shared.now_ms();
            let mut db = shared.db_mut();
            let ids: Vec<Value> = records
                .into_iter()
                .map(|m| db.insert(object, m, now).map_or(Value::Null, |id| Value::String(id.to_string())))
                .collect();
            Reply::json(200, &Value::Array(ids))
        }
        (["update", object, id], true) => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => {
                let now = shared.now_ms();
                if shared.db_mut().update(object, id, &m, now) {
                    Reply::no_content()
                } else {
                    Reply::not_found()
                }
            }
            _ => bad("update takes a JSON object".to_owned()),
        },
        (["delete", object, id], true) => {
            let now = shared.now_ms();
            if shared.db_mut().delete(object, id, now) { Reply::no_content() } else { Reply::not_found() }
        }
        _ => Reply::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let pairs = form_decode("a=1+2&b=%2Bx%3D&c");
        assert_eq!(form_get(&pairs, "a"), Some("1 2"));
        assert_eq!(form_get(&pairs, "b"), Some("+x="));
        assert_eq!(form_get(&pairs, "c"), Some(""));
    }

    #[test]
    fn batch_size_is_clamped() {
        assert_eq!(parse_batch_size("batchSize=50"), Some(200));
        assert_eq!(parse_batch_size("batchSize=500"), Some(500));
        assert_eq!(parse_batch_size("batchSize=9000"), Some(2000));
        assert_eq!(parse_batch_size("other=1"), None);
    }
}
