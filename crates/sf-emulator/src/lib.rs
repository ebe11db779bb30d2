//! A Salesforce REST API emulator for leadloop's tests, benchmarks and `leadloop demo`.
//!
//! One base URL serves both the login endpoint (`/services/oauth2/token`: JWT bearer, client
//! credentials, refresh token) and the instance (`/services/data/vXX.X/...`: SOQL queries with
//! query locators, getDeleted, sObject Collections, single records, Composite, limits), with the
//! daily API limit and `Sforce-Limit-Info`, Salesforce-shaped error bodies, a clock that tests
//! can move, and injectable faults. `docs/salesforce-emulator.md` says what it does and does not
//! emulate.

mod api;
mod cometd;
mod events;
mod http;
mod oauth;
pub mod seed;
mod soql;
mod store;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use seed::{SeedIds, SeedSpec};

/// What the emulator accepts and advertises.
#[derive(Debug, Clone)]
pub struct Config {
    /// The version the emulator advertises (any `vNN.N` is accepted on requests).
    pub api_version: String,
    /// The default query batch size (`Sforce-Query-Options: batchSize` may ask for 200..=2000).
    pub batch_size: usize,
    /// The daily API request allowance (`Sforce-Limit-Info: api-usage=USED/MAX`).
    pub daily_api_limit: u64,
    /// The connected app's own quota, where the org sets one: `Sforce-Limit-Info` then carries
    /// `; per-app-api-usage=USED/QUOTA(appName=NAME)`, and a call past the quota is refused with
    /// `REQUEST_LIMIT_EXCEEDED`.
    pub app_api_quota: Option<AppQuota>,
    /// The connected app's consumer key: the JWT `iss` and the `client_id` of the other grants.
    pub consumer_key: String,
    pub client_secret: String,
    /// The certificate's public key (PEM) that JWT assertions must be signed for.
    pub jwt_public_key_pem: Option<String>,
    /// Usernames accepted as JWT `sub`.
    pub usernames: Vec<String>,
    /// Refresh tokens accepted by the `refresh_token` grant.
    pub refresh_tokens: Vec<String>,
    /// Sessions expire after this much emulator time (never, when `None`).
    pub session_ttl: Option<Duration>,
    /// The values of the restricted `Lead.Status` picklist.
    pub lead_statuses: Vec<String>,
    /// The login URL JWT assertions must name as `aud` (default: the emulator's own URL);
    /// `https://login.salesforce.com` and `https://test.salesforce.com` are always accepted.
    pub login_url: Option<String>,
    /// Change Data Capture is enabled (the org allows it and the objects are selected): the
    /// Streaming API's `/data/ChangeEvents` channels may be subscribed to. Off, subscribing is
    /// refused with `403::…`.
    pub change_events: bool,
    /// How long change events are kept for replay (Salesforce: 72 hours), in emulator time.
    pub event_retention: Duration,
    /// How long a `/meta/connect` long poll waits for events (Salesforce: 110 s).
    pub streaming_timeout: Duration,
    /// Changes one `insert_many` may publish as change events; the rest become one
    /// `GAP_OVERFLOW` event (Salesforce: 100,000 per transaction).
    pub overflow_after: usize,
}

/// A connected app's API quota (`per-app-api-usage`).
#[derive(Debug, Clone)]
pub struct AppQuota {
    pub app_name: String,
    pub quota: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api_version: "v62.0".to_owned(),
            batch_size: 2000,
            daily_api_limit: 100_000,
            app_api_quota: None,
            consumer_key: "leadloop-consumer-key".to_owned(),
            client_secret: "leadloop-client-secret".to_owned(),
            jwt_public_key_pem: None,
            usernames: vec!["integration@example.com".to_owned()],
            refresh_tokens: Vec::new(),
            session_ttl: None,
            lead_statuses: [
                "Open - Not Contacted",
                "Working - Contacted",
                "Closed - Converted",
                "Closed - Not Converted",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
            login_url: None,
            change_events: true,
            event_retention: Duration::from_secs(72 * 3600),
            streaming_timeout: Duration::from_secs(110),
            overflow_after: 100_000,
        }
    }
}

/// A fault to inject; queued, and consumed as it fires.
///
/// Over the control endpoint (`POST /__emulator/fault`) a fault is JSON tagged by `kind`:
/// `{"kind":"status","status":503,"retry_after":2,"times":1,"path_contains":"/query"}`,
/// `{"kind":"limit_exceeded","times":1}`, `{"kind":"fail_page","nth":2}`,
/// `{"kind":"slow","delay_ms":500,"times":1}`,
/// `{"kind":"record_error","id":"00Q…","status_code":"UNABLE_TO_LOCK_ROW","message":"…","times":1}`,
/// `{"kind":"malformed","times":1}`, `{"kind":"invalid_utf8","marker":"BADBYTE","times":1}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "FaultWire")]
pub enum Fault {
    /// Answer `status` (429, 500, 503, …) with an error body and, if set, `Retry-After: secs`,
    /// to the next `times` data requests whose path contains `path_contains` (None: any).
    Status { status: u16, retry_after: Option<u64>, times: u32, path_contains: Option<String> },
    /// 403 REQUEST_LIMIT_EXCEEDED for the next `times` data requests.
    LimitExceeded { times: u32 },
    /// 500 on the `nth` (1-based) fetch of a follow-up page (`/query/<locator>-<offset>`) from now.
    FailPage { nth: u32 },
    /// Delay the next `times` data requests by `delay`.
    Slow { delay: Duration, times: u32 },
    /// The next write (collections or a single-record PATCH) touching record `id` fails with
    /// `status_code`/`message` for that record.
    RecordError { id: String, status_code: String, message: String, times: u32 },
    /// The next `times` data responses have a truncated JSON body.
    Malformed { times: u32 },
    /// In the next `times` data responses whose body holds `marker` (text in a record), each
    /// occurrence becomes the single byte 0xFF, which is not UTF-8: a corrupt record as a
    /// proxy or a bad integration could deliver it.
    InvalidUtf8 { marker: String, times: u32 },
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum FaultWire {
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u64>,
        #[serde(default = "one")]
        times: u32,
        #[serde(default)]
        path_contains: Option<String>,
    },
    LimitExceeded {
        #[serde(default = "one")]
        times: u32,
    },
    FailPage {
        nth: u32,
    },
    Slow {
        delay_ms: u64,
        #[serde(default = "one")]
        times: u32,
    },
    RecordError {
        id: String,
        status_code: String,
        message: String,
        #[serde(default = "one")]
        times: u32,
    },
    Malformed {
        #[serde(default = "one")]
        times: u32,
    },
    InvalidUtf8 {
        marker: String,
        #[serde(default = "one")]
        times: u32,
    },
}

fn one() -> u32 {
    1
}

impl TryFrom<FaultWire> for Fault {
    type Error = String;

    fn try_from(w: FaultWire) -> Result<Self, String> {
        Ok(match w {
            FaultWire::Status { status, retry_after, times, path_contains } => {
                if !(400..=599).contains(&status) {
                    return Err(format!("status {status} is not an error status (400..=599)"));
                }
                Fault::Status { status, retry_after, times, path_contains }
            }
            FaultWire::LimitExceeded { times } => Fault::LimitExceeded { times },
            FaultWire::FailPage { nth } => Fault::FailPage { nth: nth.max(1) },
            FaultWire::Slow { delay_ms, times } => {
                Fault::Slow { delay: Duration::from_millis(delay_ms), times }
            }
            FaultWire::RecordError { id, status_code, message, times } => {
                Fault::RecordError { id, status_code, message, times }
            }
            FaultWire::Malformed { times } => Fault::Malformed { times },
            FaultWire::InvalidUtf8 { marker, times } => {
                if marker.is_empty() {
                    return Err("invalid_utf8 needs a non-empty marker".into());
                }
                Fault::InvalidUtf8 { marker, times }
            }
        })
    }
}

/// One request the emulator answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestLog {
    pub method: String,
    /// The path with its query string.
    pub path: String,
    pub status: u16,
}

/// A session issued by the token endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub issued_ms: i64,
}

/// A query's result set, fixed when the query ran.
#[derive(Debug)]
pub(crate) struct Cursor {
    pub object: usize,
    pub fields: Arc<Vec<u16>>,
    pub slots: Arc<Vec<store::Slot>>,
    pub batch: usize,
    pub last_used_ms: i64,
}

/// How many request log entries are kept (oldest dropped first).
const REQUEST_LOG_CAP: usize = 100_000;

/// State shared by the handle and the HTTP handlers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub url: String,
    pub db: RwLock<store::Db>,
    pub offset_ms: AtomicI64,
    pub sessions: Mutex<HashMap<String, Session>>,
    pub cursors: Mutex<HashMap<String, Cursor>>,
    pub api_used: AtomicU64,
    /// Calls counted against the connected app's quota.
    pub app_used: AtomicU64,
    pub api_calls: AtomicU64,
    pub logins: AtomicU64,
    pub requests: Mutex<VecDeque<RequestLog>>,
    pub faults: Mutex<Vec<Fault>>,
    pub seq: AtomicU64,
    /// `(object, field)` pairs declared External ID and unique (upsert keys).
    pub external_ids: Mutex<Vec<(String, String)>>,
    /// Streaming API clients by `clientId`.
    pub streaming: Mutex<HashMap<String, cometd::Client>>,
    /// Change events delivered to streaming clients.
    pub streaming_deliveries: AtomicU64,
    /// Set when the emulator stops, so long polls end.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Values an admin added to the restricted `Lead.Status` picklist after the start
    /// (`Emulator::add_lead_status`), besides `config.lead_statuses`.
    pub added_lead_statuses: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub fn is_external_id(&self, object: &str, field: &str) -> bool {
        lock(&self.external_ids).iter().any(|(o, f)| o == object && f == field)
    }

    /// Whether `status` is a value of the restricted `Lead.Status` picklist.
    pub fn is_lead_status(&self, status: &str) -> bool {
        self.config.lead_statuses.iter().any(|l| l == status)
            || lock(&self.added_lead_statuses).iter().any(|l| l == status)
    }

    pub fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn db(&self) -> RwLockReadGuard<'_, store::Db> {
        self.db.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn db_mut(&self) -> RwLockWriteGuard<'_, store::Db> {
        self.db.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn sessions(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        lock(&self.sessions)
    }

    pub fn streaming(&self) -> MutexGuard<'_, HashMap<String, cometd::Client>> {
        lock(&self.streaming)
    }

    pub fn cursors(&self) -> MutexGuard<'_, HashMap<String, Cursor>> {
        lock(&self.cursors)
    }

    pub fn faults(&self) -> MutexGuard<'_, Vec<Fault>> {
        lock(&self.faults)
    }

    pub fn log(&self, entry: RequestLog) {
        let mut log = lock(&self.requests);
        if log.len() >= REQUEST_LOG_CAP {
            log.pop_front();
        }
        log.push_back(entry);
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes one firing of a `RecordError` fault for `id`, if one is queued.
    pub fn take_record_error(&self, id: &str) -> Option<(String, String)> {
        let mut faults = self.faults();
        let pos = faults.iter().position(|f| matches!(f, Fault::RecordError { id: fid, .. } if fid == id))?;
        let mut out = None;
        if let Some(Fault::RecordError { status_code, message, times, .. }) = faults.get_mut(pos) {
            out = Some((status_code.clone(), message.clone()));
            *times = times.saturating_sub(1);
            if *times == 0 {
                faults.remove(pos);
            }
        }
        out
    }

    pub fn insert(&self, object: &str, fields: Map<String, Value>) -> Option<String> {
        let now = self.now_ms();
        self.db_mut().insert(object, fields, now).map(|id| id.to_string())
    }
}

/// A running emulator: a cheap handle (an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Emulator {
    shared: Arc<Shared>,
    server: Arc<Mutex<Option<ServerTask>>>,
}

/// The running server: its shutdown trigger and its task.
type ServerTask = (oneshot::Sender<()>, JoinHandle<()>);

impl Emulator {
    /// Starts the emulator on `127.0.0.1` on a free port.
    pub async fn start(config: Config) -> std::io::Result<Emulator> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the emulator on `addr`.
    pub async fn start_on(config: Config, addr: SocketAddr) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let url = format!("http://{local}");
        let shared = Arc::new(Shared {
            config,
            url,
            db: RwLock::new(store::Db::new()),
            offset_ms: AtomicI64::new(0),
            sessions: Mutex::new(HashMap::new()),
            cursors: Mutex::new(HashMap::new()),
            api_used: AtomicU64::new(0),
            app_used: AtomicU64::new(0),
            api_calls: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            requests: Mutex::new(VecDeque::new()),
            faults: Mutex::new(Vec::new()),
            seq: AtomicU64::new(1),
            external_ids: Mutex::new(Vec::new()),
            streaming: Mutex::new(HashMap::new()),
            streaming_deliveries: AtomicU64::new(0),
            stopping: tokio::sync::watch::channel(false).0,
            added_lead_statuses: Mutex::new(Vec::new()),
        });
        let (tx, rx) = oneshot::channel();
        let router = http::router(shared.clone());
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "salesforce emulator server stopped");
            }
        });
        tracing::info!(url = %shared.url, "salesforce emulator listening");
        Ok(Emulator { shared, server: Arc::new(Mutex::new(Some((tx, task)))) })
    }

    /// The base URL, for login and instance alike: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Inserts a record without validation; returns its Id (generated unless `"Id"` is given).
    /// Fields ending in `__c` (or any unknown name) become fields of the object.
    ///
    /// # Panics
    /// Never; an unknown object or a duplicate Id is logged and yields an empty Id.
    pub fn insert(&self, object: &str, fields: Map<String, Value>) -> String {
        match self.shared.insert(object, fields) {
            Some(id) => id,
            None => {
                tracing::warn!(object, "emulator insert refused: unknown object or duplicate id");
                String::new()
            }
        }
    }

    /// Inserts many records under one lock, as one transaction; returns their Ids in order.
    /// Past `Config::overflow_after` records, the rest publish no change events but one
    /// `GAP_OVERFLOW` event, as Salesforce does for a transaction of more than 100,000 changes.
    pub fn insert_many(&self, object: &str, records: Vec<Map<String, Value>>) -> Vec<String> {
        let now = self.shared.now_ms();
        let mut db = self.shared.db_mut();
        let limit = self.shared.config.overflow_after;
        let overflow = records.len() > limit;
        let enabled = db.events.enabled;
        let ids = records
            .into_iter()
            .enumerate()
            .map(|(i, fields)| {
                if i == limit {
                    db.events.enabled = false;
                }
                db.insert(object, fields, now).map(|id| id.to_string()).unwrap_or_default()
            })
            .collect();
        db.events.enabled = enabled;
        if overflow && enabled {
            let entity = db.object(object).map(|o| o.name.to_string()).unwrap_or_else(|| object.to_owned());
            db.events.publish_gap(&entity, "GAP_OVERFLOW", Vec::new(), now);
        }
        ids
    }

    /// Publishes a gap event (`GAP_CREATE`, `GAP_UPDATE`, `GAP_DELETE`, `GAP_UNDELETE`,
    /// `GAP_OVERFLOW`) for `entity`: the header only, as Salesforce sends when it cannot
    /// produce the change event itself.
    pub fn publish_gap(&self, entity: &str, change_type: &str, record_ids: Vec<String>) {
        let now = self.shared.now_ms();
        self.shared.db_mut().events.publish_gap(entity, change_type, record_ids, now);
    }

    /// The newest change event's replay id (0: none yet).
    pub fn latest_replay_id(&self) -> i64 {
        self.shared.db().events.latest()
    }

    /// Change events delivered to streaming clients so far.
    pub fn events_delivered(&self) -> u64 {
        self.shared.streaming_deliveries.load(Ordering::Relaxed)
    }

    /// Streaming clients handshaken and not dropped.
    pub fn streaming_clients(&self) -> usize {
        self.shared.streaming().len()
    }

    /// Forgets every streaming client: their next `/meta/connect` gets `403::Unknown client`
    /// (as after a server-side session timeout).
    pub fn drop_streaming_clients(&self) {
        self.shared.streaming().clear();
    }

    /// Updates a live record, bumping `LastModifiedDate` and `SystemModstamp`.
    pub fn update(&self, object: &str, id: &str, fields: Map<String, Value>) -> bool {
        let now = self.shared.now_ms();
        self.shared.db_mut().update(object, id, &fields, now)
    }

    /// Deletes a record into the delete log (`deletedDate` = now).
    pub fn delete(&self, object: &str, id: &str) -> bool {
        let now = self.shared.now_ms();
        self.shared.db_mut().delete(object, id, now)
    }

    /// Declares a custom field on an object (so queries and API writes may name it).
    pub fn declare_field(&self, object: &str, field: &str) -> bool {
        self.shared.db_mut().object_mut(object).map(|o| o.declare(field)).is_some()
    }

    /// Declares a custom field marked External ID and unique, as an admin does in Setup, so
    /// `PATCH …/composite/sobjects/OBJECT/FIELD` upserts on it. False for an unknown object.
    pub fn declare_external_id(&self, object: &str, field: &str) -> bool {
        if !self.declare_field(object, field) {
            return false;
        }
        let mut ids = lock(&self.shared.external_ids);
        if !ids.iter().any(|(o, f)| o == object && f == field) {
            ids.push((object.to_owned(), field.to_owned()));
        }
        true
    }

    /// Adds a value to the restricted `Lead.Status` picklist, as an admin does in Setup
    /// (Object Manager → Lead → Fields → Lead Status → Values → New): writes naming it are
    /// accepted from then on.
    pub fn add_lead_status(&self, status: &str) {
        let mut added = lock(&self.shared.added_lead_statuses);
        if !added.iter().any(|s| s == status) {
            added.push(status.to_owned());
        }
    }

    /// A live record with its system fields and every set field.
    pub fn get(&self, object: &str, id: &str) -> Option<Map<String, Value>> {
        let db = self.shared.db();
        let obj = db.object(object)?;
        obj.live(id).map(|rec| obj.to_map(rec))
    }

    /// Every live record of an object, in `(SystemModstamp, Id)` order.
    pub fn all(&self, object: &str) -> Vec<Map<String, Value>> {
        let db = self.shared.db();
        let Some(obj) = db.object(object) else { return Vec::new() };
        obj.index.values().filter_map(|&slot| obj.record(slot)).map(|rec| obj.to_map(rec)).collect()
    }

    /// How many live records an object has.
    pub fn count(&self, object: &str) -> usize {
        self.shared.db().object(object).map_or(0, |o| o.index.len())
    }

    /// Data calls counted against the daily limit.
    pub fn api_calls(&self) -> u64 {
        self.shared.api_calls.load(Ordering::Relaxed)
    }

    /// Token requests.
    pub fn logins(&self) -> u64 {
        self.shared.logins.load(Ordering::Relaxed)
    }

    /// Every request answered, oldest first (the last 100,000).
    pub fn requests(&self) -> Vec<RequestLog> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// Sets the used part of the daily allowance (what `Sforce-Limit-Info` reports).
    pub fn set_api_usage(&self, used: u64) {
        self.shared.api_used.store(used, Ordering::Relaxed);
    }

    /// Sets the used part of the connected app's quota (`per-app-api-usage`).
    pub fn set_app_api_usage(&self, used: u64) {
        self.shared.app_used.store(used, Ordering::Relaxed);
    }

    /// Queues a fault.
    pub fn fault(&self, fault: Fault) {
        tracing::debug!(?fault, "emulator fault queued");
        self.shared.faults().push(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.faults().clear();
    }

    /// Every issued access token now answers 401 INVALID_SESSION_ID.
    pub fn expire_sessions(&self) {
        self.shared.sessions().clear();
    }

    /// Moves the emulator's clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
        self.shared.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Moves the emulator's clock back: a run in virtual time that should end at the real
    /// present (the demo) starts in the past. Call it before seeding records.
    pub fn rewind(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
        self.shared.offset_ms.fetch_sub(ms, Ordering::Relaxed);
    }

    /// The emulator's clock: real time plus what [`Emulator::advance`] added.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(self.shared.now_ms()).unwrap_or_else(Utc::now)
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        let server = lock(&self.server).take();
        self.shared.stopping.send_replace(true);
        if let Some((tx, task)) = server {
            let _ = tx.send(());
            if let Err(error) = task.await {
                tracing::warn!(%error, "salesforce emulator task ended abnormally");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_their_json_form() {
        let cases = [
            (
                r#"{"kind":"status","status":503,"retry_after":2,"path_contains":"/query"}"#,
                Fault::Status {
                    status: 503,
                    retry_after: Some(2),
                    times: 1,
                    path_contains: Some("/query".into()),
                },
            ),
            (r#"{"kind":"limit_exceeded","times":3}"#, Fault::LimitExceeded { times: 3 }),
            (r#"{"kind":"fail_page","nth":2}"#, Fault::FailPage { nth: 2 }),
            (
                r#"{"kind":"slow","delay_ms":250}"#,
                Fault::Slow { delay: Duration::from_millis(250), times: 1 },
            ),
            (
                r#"{"kind":"record_error","id":"00Q1","status_code":"UNABLE_TO_LOCK_ROW","message":"locked"}"#,
                Fault::RecordError {
                    id: "00Q1".into(),
                    status_code: "UNABLE_TO_LOCK_ROW".into(),
                    message: "locked".into(),
                    times: 1,
                },
            ),
            (r#"{"kind":"malformed","times":2}"#, Fault::Malformed { times: 2 }),
        ];
        for (json, want) in cases {
            assert_eq!(serde_json::from_str::<Fault>(json).expect(json), want);
        }
        for bad in
            [r#"{"kind":"status","status":200}"#, r#"{"kind":"nope"}"#, r#"{"kind":"malformed","x":1}"#]
        {
            assert!(serde_json::from_str::<Fault>(bad).is_err(), "{bad}");
        }
    }
}
