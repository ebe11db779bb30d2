//! leadloop's Salesforce connector. Reads leads, contacts, users, tasks and accounts
//! incrementally through the REST query endpoint (`SystemModstamp` cursors, an overlap window,
//! `nextRecordsUrl` paging), deletes through `/sobjects/{Type}/deleted`, and writes status,
//! owner and follow-up tasks back through sObject Collections. The first page of every object
//! and the delete checks of a pass share one Composite request, so an idle poll costs one API
//! call. A budget governor keeps a share of the daily allowance for SLA-critical writes.
//!
//! Only this crate knows Salesforce's wire format; the engine sees [`Crm`].

pub mod api;
pub mod auth;
pub mod config;
pub mod events;
pub mod mapping;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use leadloop_core::connector::{
    ApiUsage, ChangePage, ConnectorError, Crm, CrmObject, CrmRecord, CrmWrite, PullRequest,
};
use leadloop_core::{Clock, Timestamp};
use leadloop_plugin::{BuildContext, BuildError, secret_from};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use config::{AuthFlow, SalesforceConfig};

use crate::api::{Api, ApiError, Priority};
use crate::auth::{Authenticator, Credentials};
use crate::mapping::{Mapping, format_datetime, parse_datetime};

/// Records per sObject Collections call: Salesforce's limit.
pub const COLLECTION_LIMIT: usize = 200;

/// Salesforce keeps deleted records for 15 days; an older delete cursor means a sweep of ids.
const DELETE_WINDOW_DAYS: i64 = 15;

/// Queries one Composite request may hold (Salesforce: 5 of its 25 subrequests). Each object's
/// first page is one query, and its delete check one more subrequest of another kind.
const COMPOSITE_QUERIES: usize = 5;

/// Where a sync of one object stands; stored by the engine as an opaque string, and only
/// after the records read up to it are durable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The watermark: every record with a `SystemModstamp` at or before it has been read. The
    /// next query asks for `SystemModstamp > stamp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    /// The rest of a query in progress (`nextRecordsUrl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The query in progress started at this instant minus the overlap: once it is read to
    /// the end, everything stamped up to here was visible to it, so this becomes the
    /// watermark. Records stamped later are read again by the next query (and deduplicated),
    /// which is what catches a transaction that committed after its stamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// The newest stamp read by the query in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<String>,
    /// Deletes are known up to this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
}

impl Cursor {
    pub fn parse(raw: Option<&str>) -> Cursor {
        raw.and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default()
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The running connector.
pub struct Salesforce {
    api: Api,
    clock: Arc<dyn Clock>,
    config: SalesforceConfig,
    mappings: BTreeMap<CrmObject, Mapping>,
    /// For the Streaming API's long polls, which outlast `timeout`.
    streaming_http: reqwest::Client,
    stream: tokio::sync::Mutex<Option<events::Stream>>,
}

impl std::fmt::Debug for Salesforce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salesforce").field("login_url", &self.config.login_url).finish_non_exhaustive()
    }
}

impl SalesforceConfig {
    /// Reads the secrets and builds the connector. Nothing is sent until the first call.
    pub fn build(&self, ctx: &BuildContext) -> Result<Salesforce, BuildError> {
        if let Some((key, message)) = self.check().into_iter().next() {
            return Err(BuildError::new(key, message));
        }
        let credentials = match self.auth {
            AuthFlow::Jwt => {
                let pem = secret_from(
                    "private_key",
                    self.private_key_file.as_deref(),
                    self.private_key_env.as_deref(),
                )?
                .ok_or_else(|| {
                    BuildError::new("private_key_file", "the JWT flow needs the connected app's key")
                })?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|e| {
                    BuildError::new("private_key_file", format!("not an RSA private key in PEM: {e}"))
                })?;
                let username = self.username.clone().unwrap_or_default();
                Credentials::Jwt { username, key: Box::new(key) }
            }
            AuthFlow::ClientCredentials => {
                let secret = secret_from(
                    "client_secret",
                    self.client_secret_file.as_deref(),
                    self.client_secret_env.as_deref(),
                )?
                .ok_or_else(|| BuildError::new("client_secret_file", "client credentials need a secret"))?;
                Credentials::ClientCredentials { secret }
            }
            AuthFlow::RefreshToken => {
                let token = secret_from(
                    "refresh_token",
                    self.refresh_token_file.as_deref(),
                    self.refresh_token_env.as_deref(),
                )?
                .ok_or_else(|| {
                    BuildError::new("refresh_token_file", "the refresh-token flow needs a token")
                })?;
                let secret = secret_from(
                    "client_secret",
                    self.client_secret_file.as_deref(),
                    self.client_secret_env.as_deref(),
                )?;
                Credentials::RefreshToken { token, secret }
            }
        };
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(std::time::Duration::from_secs(10)))
            // The token exchange must not follow redirects (OAuth 2.0 security BCP), and the
            // REST API never needs them.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("leadloop/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::new("login_url", format!("cannot build the HTTP client: {e}")))?;
        let auth = Authenticator::new(
            http.clone(),
            &self.login_url,
            self.audience.as_deref(),
            &self.client_id,
            credentials,
        );
        let mappings =
            CrmObject::ALL.iter().map(|o| (*o, Mapping::new(*o, self.fields.for_object(*o)))).collect();
        let streaming_http = reqwest::Client::builder()
            // Salesforce holds a long poll up to 110 s.
            .timeout(std::time::Duration::from_secs(130).max(self.timeout))
            .connect_timeout(self.timeout.min(std::time::Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("leadloop/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::new("login_url", format!("cannot build the HTTP client: {e}")))?;
        Ok(Salesforce {
            streaming_http,
            stream: tokio::sync::Mutex::new(None),
            api: Api::new(http, auth, &self.api_version, self.budget_reserve),
            clock: ctx.clock.clone(),
            config: self.clone(),
            mappings,
        })
    }
}

pub(crate) fn sobject(object: CrmObject) -> &'static str {
    match object {
        CrmObject::Lead => "Lead",
        CrmObject::Contact => "Contact",
        CrmObject::User => "User",
        CrmObject::Task => "Task",
        CrmObject::Account => "Account",
    }
}

/// Objects whose deletes leadloop follows (users are deactivated, not deleted; a deleted task
/// changes nothing already recorded).
pub(crate) fn follows_deletes(object: CrmObject) -> bool {
    matches!(object, CrmObject::Lead | CrmObject::Contact | CrmObject::Account)
}

#[derive(Debug, Deserialize)]
pub(crate) struct QueryResult {
    #[serde(default)]
    done: bool,
    #[serde(default, rename = "nextRecordsUrl")]
    next_records_url: Option<String>,
    #[serde(default)]
    records: Vec<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct DeletedResult {
    #[serde(default, rename = "deletedRecords")]
    deleted_records: Vec<DeletedRecord>,
    #[serde(default, rename = "latestDateCovered")]
    latest_date_covered: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeletedRecord {
    id: String,
}

#[derive(Debug, Deserialize)]
struct CompositeResponse {
    #[serde(rename = "compositeResponse")]
    composite_response: Vec<CompositeItem>,
}

#[derive(Debug, Deserialize)]
struct CompositeItem {
    body: Value,
    #[serde(rename = "httpStatusCode")]
    http_status_code: u16,
    #[serde(rename = "referenceId")]
    reference_id: String,
}

#[derive(Debug, Deserialize)]
struct SaveResult {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<SaveError>,
}

#[derive(Debug, Deserialize)]
struct SaveError {
    #[serde(default, rename = "statusCode")]
    status_code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    fields: Vec<String>,
}

/// Per-record errors worth retrying soon.
const TRANSIENT_RECORD_ERRORS: &[&str] =
    &["UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG"];

impl Salesforce {
    pub fn config(&self) -> &SalesforceConfig {
        &self.config
    }

    /// Token requests made so far.
    pub fn logins(&self) -> u64 {
        self.api.auth.logins()
    }

    fn mapping(&self, object: CrmObject) -> &Mapping {
        // Built for every object in `build`.
        &self.mappings[&object]
    }

    fn soql(&self, object: CrmObject, cursor: &Cursor) -> String {
        let mut soql = format!("SELECT {} FROM {}", self.mapping(object).select_list(), sobject(object));
        let mut conditions = Vec::new();
        if let Some(since) = cursor.stamp.as_deref().and_then(parse_datetime) {
            conditions.push(format!("SystemModstamp > {}", format_datetime(since)));
        }
        if object == CrmObject::Task {
            conditions.push("WhoId != null".to_owned());
        }
        if !conditions.is_empty() {
            soql.push_str(" WHERE ");
            soql.push_str(&conditions.join(" AND "));
        }
        soql.push_str(" ORDER BY SystemModstamp, Id");
        soql
    }

    fn query_path(&self, soql: &str) -> String {
        let mut path = self.api.data_path("query");
        path.push_str("?q=");
        path.push_str(&urlencode(soql));
        path
    }

    fn deleted_path(&self, object: CrmObject, start: Timestamp, end: Timestamp) -> String {
        self.api.data_path(&format!(
            "sobjects/{}/deleted/?start={}&end={}",
            sobject(object),
            urlencode(&start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            urlencode(&end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ))
    }

    /// Turns a query result into a page and the cursor after it.
    fn page(&self, object: CrmObject, cursor: &Cursor, result: QueryResult) -> ChangePage {
        let mapping = self.mapping(object);
        let mut page = ChangePage::default();
        let mut next = cursor.clone();
        let mut seen = cursor.seen.as_deref().and_then(parse_datetime);
        for raw in &result.records {
            if let Some(stamp) = raw.get("SystemModstamp").and_then(Value::as_str).and_then(parse_datetime) {
                seen = Some(seen.map_or(stamp, |n| n.max(stamp)));
                if let Some(id) = raw.get("Id").and_then(Value::as_str) {
                    page.changed_at.insert(id.to_owned(), stamp);
                }
            }
            match mapping.map(raw) {
                Ok(record) => page.records.push(record),
                Err(quarantined) => page.quarantined.push(quarantined),
            }
        }
        // A lead owned by a queue (`00G…`) is not yet a person's: the queue joins the org
        // chart as such, so routing may assign the lead and no SLA runs against the queue.
        let mut queues: Vec<leadloop_core::PersonId> = Vec::new();
        for record in &page.records {
            if let CrmRecord::Lead(lead) = record
                && let Some(owner) = &lead.owner_id
                && owner.as_str().starts_with("00G")
                && !queues.contains(owner)
            {
                queues.push(owner.clone());
            }
        }
        if !queues.is_empty() {
            let people = queues.into_iter().map(|id| {
                CrmRecord::User(leadloop_core::Person {
                    name: format!("queue {id}"),
                    id,
                    email: String::new(),
                    manager: None,
                    time_zone: None,
                    role: leadloop_core::Role::Queue,
                    active: true,
                    capacity: None,
                })
            });
            page.records.splice(0..0, people);
        }
        if result.done {
            // The query is read to the end: its start (minus the overlap) is the watermark.
            let started = cursor.started.as_deref().and_then(parse_datetime);
            let current = cursor.stamp.as_deref().and_then(parse_datetime);
            next.stamp = max_opt(current, started).map(format_datetime);
            next.next = None;
            next.started = None;
            next.seen = None;
        } else {
            next.seen = seen.map(format_datetime);
            next.next = result.next_records_url;
        }
        page.more = next.next.is_some();
        page.next_cursor = Some(next.encode());
        page
    }

    /// The first pages of a pass, and the delete checks, in one Composite call.
    async fn first_pages(
        &self,
        asks: &[(usize, CrmObject, Cursor)],
    ) -> Result<Vec<(usize, Result<ChangePage, ConnectorError>)>, ConnectorError> {
        let now = self.clock.now();
        let mut subrequests = Vec::new();
        let mut delete_windows = BTreeMap::new();
        let started = now - chrono::Duration::from_std(self.config.overlap).unwrap_or_default();
        for (i, object, cursor) in asks {
            subrequests.push(json!({
                "method": "GET",
                "url": self.query_path(&self.soql(*object, cursor)),
                "referenceId": format!("q{i}"),
                "httpHeaders": {"Sforce-Query-Options": format!("batchSize={}", self.config.page_size)},
            }));
            if follows_deletes(*object)
                && let Some(start) = cursor.deleted.as_deref().and_then(parse_datetime)
                // getDeleted works in whole minutes.
                && now - start >= chrono::Duration::minutes(1)
            {
                subrequests.push(json!({
                    "method": "GET",
                    "url": self.deleted_path(*object, start, now),
                    "referenceId": format!("d{i}"),
                }));
                delete_windows.insert(*i, start);
            }
        }
        let body = json!({"allOrNone": false, "compositeRequest": subrequests});
        let response = self
            .api
            .call(Method::POST, &self.api.data_path("composite"), Some(&body), Priority::Bulk, None)
            .await
            .map_err(|e| e.error)?;
        let response: CompositeResponse =
            serde_json::from_value(response).map_err(|e| ConnectorError::Transient {
                message: format!("composite response is malformed: {e}"),
                retry_after: None,
            })?;
        let mut items: BTreeMap<String, CompositeItem> =
            response.composite_response.into_iter().map(|item| (item.reference_id.clone(), item)).collect();
        let mut out = Vec::new();
        for (i, object, cursor) in asks {
            let Some(query) = items.remove(&format!("q{i}")) else {
                out.push((
                    *i,
                    Err(ConnectorError::Transient {
                        message: format!("composite response lacks the {object} query"),
                        retry_after: None,
                    }),
                ));
                continue;
            };
            let mut cursor = Cursor { started: Some(format_datetime(started)), seen: None, ..cursor.clone() };
            let mut deleted = Vec::new();
            let mut resync = false;
            if let Some(item) = items.remove(&format!("d{i}")) {
                if (200..300).contains(&item.http_status_code) {
                    match serde_json::from_value::<DeletedResult>(item.body) {
                        Ok(result) => {
                            deleted = result.deleted_records.into_iter().map(|d| d.id).collect();
                            cursor.deleted = Some(
                                result
                                    .latest_date_covered
                                    .as_deref()
                                    .and_then(parse_datetime)
                                    .map_or_else(|| format_datetime(now), format_datetime),
                            );
                        }
                        Err(e) => {
                            out.push((
                                *i,
                                Err(ConnectorError::Transient {
                                    message: format!("{object} deletes: malformed response: {e}"),
                                    retry_after: None,
                                }),
                            ));
                            continue;
                        }
                    }
                } else {
                    let (code, message) = api::error_detail(item.body.to_string().as_bytes());
                    if code.as_deref() == Some("INVALID_REPLICATION_DATE")
                        || delete_windows
                            .get(i)
                            .is_some_and(|s| now - *s > chrono::Duration::days(DELETE_WINDOW_DAYS))
                    {
                        resync = true;
                    } else {
                        out.push((
                            *i,
                            Err(ConnectorError::Transient {
                                message: format!("{object} deletes: {} {message}", code.unwrap_or_default()),
                                retry_after: None,
                            }),
                        ));
                        continue;
                    }
                }
            }
            if resync {
                // The watermark still holds (every change since is read by the query); only
                // the deletes in between are lost. Deletes are followed from now on, and the
                // engine sweeps the ids it holds to find the ones deleted meanwhile.
                tracing::warn!(object = %object, "deletes are older than salesforce keeps them (15 days); the ids held will be swept");
                metrics::counter!("leadloop_crm_delete_sweeps_total", "object" => object.as_str())
                    .increment(1);
                cursor.deleted = Some(format_datetime(now));
            }
            if cursor.deleted.is_none() && follows_deletes(*object) {
                // The first pass: deletes matter from now on.
                cursor.deleted = Some(format_datetime(now));
            }
            if !(200..300).contains(&query.http_status_code) {
                let (code, message) = api::error_detail(query.body.to_string().as_bytes());
                let message = format!(
                    "{object} query answered {}: {}{message}",
                    query.http_status_code,
                    code.map(|c| format!("{c}: ")).unwrap_or_default()
                );
                let error = if query.http_status_code >= 500 || query.http_status_code == 429 {
                    ConnectorError::Transient { message, retry_after: None }
                } else {
                    ConnectorError::Permanent { message }
                };
                out.push((*i, Err(error)));
                continue;
            }
            match serde_json::from_value::<QueryResult>(query.body) {
                Ok(result) => {
                    let mut page = self.page(*object, &cursor, result);
                    page.deleted = deleted;
                    page.sweep = resync;
                    out.push((*i, Ok(page)));
                }
                Err(e) => out.push((
                    *i,
                    Err(ConnectorError::Transient {
                        message: format!("{object} query: malformed response: {e}"),
                        retry_after: None,
                    }),
                )),
            }
        }
        Ok(out)
    }

    /// A follow-up page of a query in progress.
    async fn next_page(
        &self,
        object: CrmObject,
        cursor: &Cursor,
        next: &str,
    ) -> Result<ChangePage, ConnectorError> {
        match self.api.call(Method::GET, next, None, Priority::Bulk, Some(self.config.page_size)).await {
            Ok(body) => {
                let result: QueryResult =
                    serde_json::from_value(body).map_err(|e| ConnectorError::Transient {
                        message: format!("{object} page: malformed response: {e}"),
                        retry_after: None,
                    })?;
                Ok(self.page(object, cursor, result))
            }
            Err(ApiError { code: Some(code), .. }) if code == "INVALID_QUERY_LOCATOR" => {
                // The query expired (a long pause, a restart): run it again from the cursor.
                tracing::info!(object = %object, "query locator expired; querying again from the cursor");
                // Everything before the newest stamp read, and visible when the query
                // started, is in; resume from there.
                let started = cursor.started.as_deref().and_then(parse_datetime);
                let seen = cursor
                    .seen
                    .as_deref()
                    .and_then(parse_datetime)
                    .map(|s| s - chrono::Duration::milliseconds(1));
                let resume = match (started, seen) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
                let current = cursor.stamp.as_deref().and_then(parse_datetime);
                let restart = Cursor {
                    stamp: max_opt(current, resume).map(format_datetime),
                    next: None,
                    started: None,
                    seen: None,
                    deleted: cursor.deleted.clone(),
                };
                Ok(ChangePage { more: true, next_cursor: Some(restart.encode()), ..ChangePage::default() })
            }
            Err(e) => Err(e.error),
        }
    }

    async fn push_chunk(
        &self,
        method: Method,
        path: &str,
        records: Vec<Value>,
    ) -> Result<Vec<Result<(), ConnectorError>>, ConnectorError> {
        let count = records.len();
        let body = json!({"allOrNone": false, "records": records});
        let response = self
            .api
            .call(method, &self.api.data_path(path), Some(&body), Priority::Critical, None)
            .await
            .map_err(|e| e.error)?;
        let results: Vec<SaveResult> =
            serde_json::from_value(response).map_err(|e| ConnectorError::Transient {
                message: format!("sObject Collections response is malformed: {e}"),
                retry_after: None,
            })?;
        if results.len() != count {
            return Err(ConnectorError::Transient {
                message: format!(
                    "sObject Collections answered {} results for {count} records",
                    results.len()
                ),
                retry_after: None,
            });
        }
        Ok(results
            .into_iter()
            .map(|r| {
                if r.success {
                    return Ok(());
                }
                let detail = r
                    .errors
                    .iter()
                    .map(|e| {
                        let fields = if e.fields.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", e.fields.join(", "))
                        };
                        format!("{}: {}{fields}", e.status_code, e.message)
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let transient =
                    r.errors.iter().all(|e| TRANSIENT_RECORD_ERRORS.contains(&e.status_code.as_str()))
                        && !r.errors.is_empty();
                if transient {
                    Err(ConnectorError::Transient { message: detail, retry_after: None })
                } else {
                    Err(ConnectorError::Permanent { message: detail })
                }
            })
            .collect())
    }
}

#[async_trait]
impl Crm for Salesforce {
    fn name(&self) -> &str {
        "salesforce"
    }

    async fn pull(
        &self,
        requests: &[PullRequest],
    ) -> Result<Vec<Result<ChangePage, ConnectorError>>, ConnectorError> {
        let mut results: Vec<Option<Result<ChangePage, ConnectorError>>> =
            requests.iter().map(|_| None).collect();
        let mut firsts = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            let cursor = Cursor::parse(request.cursor.as_deref());
            match cursor.next.clone() {
                Some(next) => results[i] = Some(self.next_page(request.object, &cursor, &next).await),
                None => firsts.push((i, request.object, cursor)),
            }
        }
        // Salesforce takes at most five queries in one Composite request: one call per five
        // objects. A call that fails fails its own objects only.
        let chunks: Vec<_> = firsts.chunks(COMPOSITE_QUERIES).collect();
        for chunk in &chunks {
            match self.first_pages(chunk).await {
                Ok(pages) => {
                    for (i, result) in pages {
                        results[i] = Some(result);
                    }
                }
                Err(error) if chunks.len() == 1 => return Err(error),
                Err(error) => {
                    for (i, _, _) in *chunk {
                        results[*i] = Some(Err(error.clone()));
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ConnectorError::Transient { message: "no answer".into(), retry_after: None })
                })
            })
            .collect())
    }

    async fn push(&self, writes: &[CrmWrite]) -> Result<Vec<Result<(), ConnectorError>>, ConnectorError> {
        let mut results: Vec<Option<Result<(), ConnectorError>>> = writes.iter().map(|_| None).collect();
        let mut updates = Vec::new();
        let mut creates = Vec::new();
        let mut upserts = Vec::new();
        let lead_mapping = self.mapping(CrmObject::Lead);
        for (i, write) in writes.iter().enumerate() {
            match write {
                CrmWrite::UpdateLead { lead_id, fields, .. } => {
                    // The Disqualify reason goes to its configured field, cut to a text
                    // field's 255 characters; without one it is left out (kept in history).
                    let mut fields = fields.clone();
                    let reason = fields.remove(mapping::DISQUALIFY_REASON);
                    let (mut mapped, unknown) = mapping::lead_update_fields(lead_mapping, &fields);
                    match (reason, &self.config.disqualify_reason_field) {
                        (Some(Value::String(reason)), Some(field)) => {
                            mapped.insert(field.clone(), json!(reason.chars().take(255).collect::<String>()));
                        }
                        (Some(_), None) => {
                            tracing::debug!(lead_id = %lead_id, "no disqualify_reason_field configured; the reason stays in leadloop's history")
                        }
                        _ => {}
                    }
                    if !unknown.is_empty() {
                        tracing::warn!(lead_id = %lead_id, fields = ?unknown, "no salesforce field is mapped for these; not written");
                    }
                    if mapped.is_empty() {
                        results[i] = Some(Err(ConnectorError::Permanent {
                            message: format!("no Salesforce field is mapped for {}", unknown.join(", ")),
                        }));
                        continue;
                    }
                    mapped.insert("attributes".into(), json!({"type": "Lead"}));
                    mapped.insert("Id".into(), json!(lead_id));
                    updates.push((i, Value::Object(mapped)));
                }
                CrmWrite::CreateTask { key, lead_id, owner_id, subject, due } => {
                    let mut task = json!({
                        "attributes": {"type": "Task"},
                        "WhoId": lead_id,
                        "OwnerId": owner_id,
                        "Subject": subject,
                        "Status": "Not Started",
                        "Priority": "High",
                        "Description": format!("Created by leadloop ({key})"),
                    });
                    if let (Some(due), Some(map)) = (due, task.as_object_mut()) {
                        map.insert("ActivityDate".into(), json!(due.format("%Y-%m-%d").to_string()));
                    }
                    match (&self.config.task_key_field, task.as_object_mut()) {
                        (Some(field), Some(map)) => {
                            map.insert(field.clone(), json!(key.as_str()));
                            upserts.push((i, task));
                        }
                        _ => creates.push((i, task)),
                    }
                }
            }
        }
        let upsert_path = self.config.task_key_field.as_ref().map(|f| format!("composite/sobjects/Task/{f}"));
        for (method, path, list) in [
            (Method::PATCH, Some("composite/sobjects".to_owned()), updates),
            (Method::POST, Some("composite/sobjects".to_owned()), creates),
            (Method::PATCH, upsert_path, upserts),
        ] {
            let Some(path) = path else { continue };
            for chunk in list.chunks(COLLECTION_LIMIT) {
                let records = chunk.iter().map(|(_, r)| r.clone()).collect();
                let outcomes = self.push_chunk(method.clone(), &path, records).await?;
                for ((i, _), outcome) in chunk.iter().zip(outcomes) {
                    results[*i] = Some(outcome);
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ConnectorError::Transient { message: "not sent".into(), retry_after: None })
                })
            })
            .collect())
    }

    /// `SELECT Id FROM OBJECT WHERE Id IN (…)`: a deleted record (in the recycle bin or
    /// purged) is not returned. An id that is not a Salesforce id is answered as existing, so
    /// nothing is deleted on a guess.
    async fn existing(&self, object: CrmObject, ids: &[String]) -> Result<Vec<String>, ConnectorError> {
        let (asked, odd): (Vec<&String>, Vec<&String>) = ids
            .iter()
            .partition(|id| matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        let mut found: Vec<String> = odd.into_iter().cloned().collect();
        for chunk in asked.chunks(leadloop_core::connector::SWEEP_CHUNK) {
            let list = chunk.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
            let soql = format!("SELECT Id FROM {} WHERE Id IN ({list})", sobject(object));
            let mut next = Some(self.query_path(&soql));
            while let Some(path) = next.take() {
                let body = self
                    .api
                    .call(Method::GET, &path, None, Priority::Bulk, None)
                    .await
                    .map_err(|e| e.error)?;
                let result: QueryResult =
                    serde_json::from_value(body).map_err(|e| ConnectorError::Transient {
                        message: format!("{object} id check: malformed response: {e}"),
                        retry_after: None,
                    })?;
                found.extend(result.records.iter().filter_map(|r| r.get("Id")?.as_str().map(str::to_owned)));
                next = if result.done { None } else { result.next_records_url };
            }
        }
        // Salesforce answers 18-character ids; a 15-character one asked is matched by prefix.
        Ok(ids
            .iter()
            .filter(|id| found.iter().any(|f| f == *id || (id.len() == 15 && f.starts_with(id.as_str()))))
            .cloned()
            .collect())
    }

    fn usage(&self) -> ApiUsage {
        self.api.usage()
    }

    fn has_events(&self) -> bool {
        self.config.events
    }

    async fn changes(
        &self,
        objects: &[CrmObject],
        position: Option<&str>,
    ) -> Result<leadloop_core::connector::ChangeEvents, ConnectorError> {
        if !self.config.events {
            return Err(ConnectorError::Permanent {
                message: "change events are off (events = false)".into(),
            });
        }
        self.read_changes(objects, position).await
    }

    fn budget_state(&self) -> Option<String> {
        self.api.budget_state(self.clock.now())
    }

    fn restore_budget_state(&self, state: &str) {
        self.api.restore_budget_state(state, self.clock.now());
    }

    /// The OAuth token request, afresh; no API call is made.
    async fn check(&self) -> Result<String, ConnectorError> {
        self.api.auth.check().await
    }
}

fn max_opt(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay).
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_tolerates_garbage() {
        let cursor = Cursor { stamp: Some("2026-11-23T16:35:33.000Z".into()), ..Cursor::default() };
        assert_eq!(Cursor::parse(Some(&cursor.encode())), cursor);
        assert_eq!(Cursor::parse(Some("not json")), Cursor::default());
        assert_eq!(Cursor::parse(None), Cursor::default());
    }

    #[test]
    fn encodes_soql_for_the_query_string() {
        assert_eq!(
            urlencode("SELECT Id FROM Lead WHERE X > 1"),
            "SELECT%20Id%20FROM%20Lead%20WHERE%20X%20%3E%201"
        );
    }
}
