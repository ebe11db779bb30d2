//! leadloop's calendar connector: CalDAV (RFC 4791) over reqwest. It finds each person's
//! calendars (`current-user-principal` → `calendar-home-set` → calendar collections, or a
//! calendar URL from config), keeps them current with `sync-collection` (RFC 6578) where the
//! server offers it and a time-range `calendar-query` where it does not, expands recurring
//! events within the asked window, and books holds with `PUT` + `If-None-Match: *` so the
//! same hold is booked once. It implements the core [`Calendar`] trait; polling, backoff and
//! the degraded flag are the engine's calendar poller's job.

pub mod dav;
pub mod ical;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono_tz::Tz;
use leadloop_core::connector::{CalendarRead, ConnectorError, SkippedEntry};
use leadloop_core::{Calendar, Clock, IdempotencyKey, PersonId, Timestamp};
use leadloop_plugin::{BuildContext, BuildError, Secret};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::dav::{Auth, Dav};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalendarKind {
    #[default]
    Caldav,
}

fn four() -> u32 {
    4
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn half_hour() -> Duration {
    Duration::from_secs(1800)
}

/// `[calendar]`: the CalDAV server, credentials, and whose calendar is where.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    #[serde(rename = "type")]
    pub kind: CalendarKind,
    /// The server's base URL: discovery starts here, and relative calendar or principal paths
    /// are resolved against it.
    pub url: String,
    /// Basic auth user; the password from `password_file` or `password_env`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// An OAuth bearer token instead of basic auth.
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    /// How far ahead meetings count for routing (e.g. 2 or 4 weeks).
    #[serde(default = "four")]
    pub look_ahead_weeks: u32,
    /// How often calendars are read.
    #[serde(default = "five_minutes", with = "leadloop_plugin::serde_duration")]
    pub poll_interval: Duration,
    /// Per request.
    #[serde(default = "ten_seconds", with = "leadloop_plugin::serde_duration")]
    pub timeout: Duration,
    /// At hand-off, book a "Call <lead>" hold in the rep's next free business-hours slot.
    #[serde(default)]
    pub hold: bool,
    #[serde(default = "half_hour", with = "leadloop_plugin::serde_duration")]
    pub hold_length: Duration,
    /// Whose calendar is where.
    #[serde(default, rename = "person")]
    pub people: Vec<PersonCalendar>,
}

/// `[[calendar.person]]`: one person's calendar, by URL or by principal; without either, the
/// person's own credentials find it through discovery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonCalendar {
    pub id: String,
    /// A calendar collection URL (absolute, or a path on `calendar.url`). Holds go here.
    pub calendar: Option<String>,
    /// A principal URL or path: its `calendar-home-set` lists the calendars.
    pub principal: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
}

impl CalendarConfig {
    pub fn look_ahead(&self) -> Duration {
        Duration::from_secs(u64::from(self.look_ahead_weeks) * 7 * 24 * 3600)
    }

    /// Problems a config check can find without reading secrets: `(key, message)`.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let base = match Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            Ok(_) => {
                out.push(("url".into(), "must be an http or https URL".into()));
                None
            }
            Err(e) => {
                out.push(("url".into(), format!("`{}` is not a URL: {e}", self.url)));
                None
            }
        };
        out.extend(credential_problems(
            "",
            self.username.as_deref(),
            (self.password_file.is_some(), self.password_env.is_some()),
            (self.token_file.is_some(), self.token_env.is_some()),
        ));
        if self.look_ahead_weeks == 0 || self.look_ahead_weeks > 52 {
            out.push(("look_ahead_weeks".into(), "must be between 1 and 52".into()));
        }
        if self.poll_interval < Duration::from_secs(10) {
            out.push(("poll_interval".into(), "must be at least 10s".into()));
        }
        if self.timeout.is_zero() {
            out.push(("timeout".into(), "must be more than 0s".into()));
        }
        if self.hold_length < Duration::from_secs(300) || self.hold_length > Duration::from_secs(8 * 3600) {
            out.push(("hold_length".into(), "must be between 5m and 8h".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, person) in self.people.iter().enumerate() {
            let key = format!("person[{i}]");
            if !seen.insert(person.id.as_str()) {
                out.push((format!("{key}.id"), format!("`{}` has two calendar entries", person.id)));
            }
            if person.calendar.is_some() && person.principal.is_some() {
                out.push((key.clone(), "set `calendar` or `principal`, not both".into()));
            }
            for (field, value) in [("calendar", &person.calendar), ("principal", &person.principal)] {
                if let (Some(base), Some(value)) = (&base, value)
                    && base.join(value).is_err()
                {
                    out.push((format!("{key}.{field}"), format!("`{value}` is not a URL or path")));
                }
            }
            let own = person.username.is_some()
                || person.password_file.is_some()
                || person.password_env.is_some()
                || person.token_file.is_some()
                || person.token_env.is_some();
            if own {
                out.extend(credential_problems(
                    &format!("{key}."),
                    person.username.as_deref(),
                    (person.password_file.is_some(), person.password_env.is_some()),
                    (person.token_file.is_some(), person.token_env.is_some()),
                ));
            }
        }
        out
    }

    /// The running connector. Secrets are read here.
    pub fn build(&self, cx: &BuildContext) -> Result<Arc<CaldavConnector>, BuildError> {
        if let Some((key, message)) = self.check().into_iter().next() {
            return Err(BuildError::new(format!("calendar.{key}"), message));
        }
        let base = Url::parse(&self.url).map_err(|e| BuildError::new("calendar.url", e.to_string()))?;
        let shared = auth(
            "calendar.",
            self.username.as_deref(),
            (self.password_file.as_deref(), self.password_env.as_deref()),
            (self.token_file.as_deref(), self.token_env.as_deref()),
        )?;
        let dav =
            |auth: Auth| Dav::new(self.timeout, auth, &base).map_err(|e| BuildError::new("calendar", e));
        let mut people = BTreeMap::new();
        for (i, person) in self.people.iter().enumerate() {
            let prefix = format!("calendar.person[{i}].");
            let join = |value: &str, field: &str| {
                base.join(value).map_err(|e| BuildError::new(format!("{prefix}{field}"), e.to_string()))
            };
            let target = match (&person.calendar, &person.principal) {
                (Some(url), _) => Target::Calendar(collection(join(url, "calendar")?)),
                (None, Some(url)) => Target::Principal(collection(join(url, "principal")?)),
                (None, None) => Target::Discover,
            };
            let own = auth(
                &prefix,
                person.username.as_deref(),
                (person.password_file.as_deref(), person.password_env.as_deref()),
                (person.token_file.as_deref(), person.token_env.as_deref()),
            )?;
            let client = dav(if matches!(own, Auth::None) { shared.clone() } else { own })?;
            people.insert(PersonId::new(person.id.clone()), Mapping { target, dav: client });
        }
        Ok(Arc::new(CaldavConnector {
            base,
            people,
            state: tokio::sync::Mutex::new(BTreeMap::new()),
            clock: Arc::clone(&cx.clock),
        }))
    }
}

fn credential_problems(
    prefix: &str,
    username: Option<&str>,
    password: (bool, bool),
    token: (bool, bool),
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if password.0 && password.1 {
        out.push((
            format!("{prefix}password_file"),
            "set `password_file` or `password_env`, not both".into(),
        ));
    }
    if token.0 && token.1 {
        out.push((format!("{prefix}token_file"), "set `token_file` or `token_env`, not both".into()));
    }
    let has_password = password.0 || password.1;
    let has_token = token.0 || token.1;
    if has_password && has_token {
        out.push((format!("{prefix}token_file"), "basic auth or a bearer token, not both".into()));
    }
    if has_password && username.is_none() {
        out.push((format!("{prefix}username"), "a password needs a username".into()));
    }
    if username.is_some() && !has_password {
        out.push((format!("{prefix}username"), "a username needs `password_file` or `password_env`".into()));
    }
    out
}

fn auth(
    prefix: &str,
    username: Option<&str>,
    password: (Option<&std::path::Path>, Option<&str>),
    token: (Option<&std::path::Path>, Option<&str>),
) -> Result<Auth, BuildError> {
    let read = |name: &str, file, env| leadloop_plugin::secret_from(&format!("{prefix}{name}"), file, env);
    if let Some(token) = read("token", token.0, token.1)? {
        return Ok(Auth::Bearer(token));
    }
    match (username, read("password", password.0, password.1)?) {
        (Some(username), Some(password)) => Ok(Auth::Basic { username: username.to_owned(), password }),
        _ => Ok(Auth::None),
    }
}

/// Collection URLs end in `/`, so joining a resource name lands inside them.
fn collection(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

#[derive(Debug, Clone)]
enum Target {
    Calendar(Url),
    Principal(Url),
    /// The person's own credentials: `current-user-principal` from the base URL.
    Discover,
}

#[derive(Debug)]
struct Mapping {
    target: Target,
    dav: Dav,
}

/// A calendar collection found by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarInfo {
    pub url: Url,
    pub display_name: Option<String>,
}

/// What leadloop keeps of one calendar between reads.
#[derive(Debug, Default)]
struct Collection {
    /// `None` until the first sync; `Some("")` never (an empty token starts over).
    token: Option<String>,
    /// `false` once the server refused `sync-collection`: time-range queries from then on.
    sync: Option<bool>,
    /// href → (etag, iCalendar text).
    items: BTreeMap<String, (String, String)>,
}

#[derive(Debug, Default)]
struct PersonState {
    calendars: Option<Vec<Url>>,
    collections: BTreeMap<Url, Collection>,
}

pub struct CaldavConnector {
    base: Url,
    people: BTreeMap<PersonId, Mapping>,
    state: tokio::sync::Mutex<BTreeMap<PersonId, PersonState>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for CaldavConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaldavConnector").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

fn unknown(person: &PersonId) -> ConnectorError {
    ConnectorError::Permanent { message: format!("no calendar is configured for {person}") }
}

/// `20261123T090000Z`.
fn utc_value(at: Timestamp) -> String {
    at.format("%Y%m%dT%H%M%SZ").to_string()
}

/// A resource name from an idempotency key: the same key, the same name.
pub fn hold_uid(key: &IdempotencyKey) -> String {
    let safe: String = key
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    format!("leadloop-{safe}")
}

impl CaldavConnector {
    fn mapping(&self, person: &PersonId) -> Result<&Mapping, ConnectorError> {
        self.people.get(person).ok_or_else(|| unknown(person))
    }

    fn join(&self, base: &Url, href: &str) -> Result<Url, ConnectorError> {
        base.join(href).map_err(|e| ConnectorError::Permanent { message: format!("bad href `{href}`: {e}") })
    }

    /// `current-user-principal` → `calendar-home-set` → calendar collections, from `start`
    /// (the base URL, or a principal when config names one).
    async fn discover_with(&self, dav: &Dav, target: &Target) -> Result<Vec<CalendarInfo>, ConnectorError> {
        let principal = match target {
            Target::Calendar(url) => return Ok(vec![CalendarInfo { url: url.clone(), display_name: None }]),
            Target::Principal(url) => url.clone(),
            Target::Discover => {
                let ms = dav.propfind(&self.base, "0", "<d:current-user-principal/>").await?;
                let href = ms.responses.iter().find_map(|r| r.principal.clone()).ok_or_else(|| {
                    ConnectorError::Permanent {
                        message: format!("{} names no current-user-principal", self.base),
                    }
                })?;
                self.join(&self.base, &href)?
            }
        };
        let ms = dav.propfind(&principal, "0", "<c:calendar-home-set/>").await?;
        let home = ms.responses.iter().find_map(|r| r.calendar_home.clone()).ok_or_else(|| {
            ConnectorError::Permanent { message: format!("principal {principal} has no calendar-home-set") }
        })?;
        let home = collection(self.join(&principal, &home)?);
        let ms = dav.propfind(&home, "1", "<d:resourcetype/><d:displayname/>").await?;
        let mut out = Vec::new();
        for response in ms.responses.iter().filter(|r| r.is_calendar) {
            out.push(CalendarInfo {
                url: collection(self.join(&home, &response.href)?),
                display_name: response.display_name.clone(),
            });
        }
        if out.is_empty() {
            return Err(ConnectorError::Permanent { message: format!("no calendar under {home}") });
        }
        Ok(out)
    }

    /// The person's calendars, found afresh.
    pub async fn discover(&self, person: &PersonId) -> Result<Vec<CalendarInfo>, ConnectorError> {
        let mapping = self.mapping(person)?;
        self.discover_with(&mapping.dav, &mapping.target).await
    }

    async fn calendars(
        &self,
        person: &PersonId,
        state: &mut PersonState,
    ) -> Result<Vec<Url>, ConnectorError> {
        if let Some(calendars) = &state.calendars {
            return Ok(calendars.clone());
        }
        let found: Vec<Url> = self.discover(person).await?.into_iter().map(|c| c.url).collect();
        state.calendars = Some(found.clone());
        Ok(found)
    }

    /// Brings `collection` up to date with `sync-collection`; `Ok(false)` if the server does
    /// not offer it.
    async fn sync(&self, dav: &Dav, url: &Url, collection: &mut Collection) -> Result<bool, ConnectorError> {
        if collection.sync == Some(false) {
            return Ok(false);
        }
        let mut answer = dav
            .request(
                "REPORT",
                url,
                &[("Depth", "0".into())],
                Some(dav::sync_collection(collection.token.as_deref())),
            )
            .await?;
        if collection.token.is_some()
            && answer.body.contains("valid-sync-token")
            && answer.status != StatusCode::MULTI_STATUS
        {
            // The server forgot our token: start over.
            tracing::info!(calendar = %url, "sync token refused; reading the calendar afresh");
            collection.token = None;
            collection.items.clear();
            answer = dav
                .request("REPORT", url, &[("Depth", "0".into())], Some(dav::sync_collection(None)))
                .await?;
        }
        if answer.status != StatusCode::MULTI_STATUS {
            let refused = dav::classify("REPORT", url, &answer);
            let unsupported = collection.sync.is_none()
                && matches!(answer.status.as_u16(), 400 | 403 | 405 | 409 | 415 | 422 | 501)
                && !matches!(answer.status, StatusCode::UNAUTHORIZED);
            if unsupported {
                tracing::info!(calendar = %url, status = %answer.status, "no sync-collection; using time-range queries");
                collection.sync = Some(false);
                return Ok(false);
            }
            return Err(refused);
        }
        let ms = dav::parse_multistatus(&answer.body).map_err(|e| ConnectorError::Transient {
            message: format!("REPORT {url}: malformed sync answer: {e}"),
            retry_after: None,
        })?;
        collection.sync = Some(true);
        let mut changed = Vec::new();
        for response in &ms.responses {
            let href = response.href.clone();
            if response.status == Some(404) {
                collection.items.remove(&href);
                continue;
            }
            // The collection itself may be listed; only resources carry an etag.
            let Some(etag) = &response.etag else { continue };
            if collection.items.get(&href).is_none_or(|(known, _)| known != etag) {
                changed.push(href);
            }
        }
        for chunk in changed.chunks(100) {
            let got = dav.report(url, dav::calendar_multiget(chunk)).await?;
            for response in got.responses {
                match (response.etag, response.calendar_data) {
                    (Some(etag), Some(data)) => {
                        collection.items.insert(response.href, (etag, data));
                    }
                    _ => {
                        collection.items.remove(&response.href);
                    }
                }
            }
        }
        collection.token = ms.sync_token.filter(|t| !t.is_empty());
        Ok(true)
    }

    /// Free-busy periods of the person's first calendar over `[from, to)` (`free-busy-query`).
    pub async fn free_busy(
        &self,
        person: &PersonId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(Timestamp, Timestamp)>, ConnectorError> {
        let mapping = self.mapping(person)?;
        let url = {
            let mut state = self.state.lock().await;
            let entry = state.entry(person.clone()).or_default();
            self.calendars(person, entry).await?.into_iter().next().ok_or_else(|| unknown(person))?
        };
        let body = dav::free_busy_query(&utc_value(from), &utc_value(to));
        let answer = mapping
            .dav
            .expect("REPORT", &url, &[("Depth", "1".into())], Some(body), &[StatusCode::OK])
            .await?;
        ical::free_busy_periods(&answer.body).map_err(|e| ConnectorError::Transient {
            message: format!("REPORT {url}: {e}"),
            retry_after: None,
        })
    }

    /// Deletes the hold booked under `key` if it is still as leadloop wrote it (`If-Match`).
    pub async fn cancel_hold(
        &self,
        person: &PersonId,
        key: &IdempotencyKey,
        etag: &str,
    ) -> Result<(), ConnectorError> {
        let mapping = self.mapping(person)?;
        let url = self
            .hold_url(person)
            .await?
            .join(&format!("{}.ics", hold_uid(key)))
            .map_err(|e| ConnectorError::Permanent { message: e.to_string() })?;
        let answer = mapping.dav.request("DELETE", &url, &[("If-Match", etag.to_owned())], None).await?;
        match answer.status {
            StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(()),
            StatusCode::PRECONDITION_FAILED => Err(ConnectorError::Permanent {
                message: format!("{url} changed since leadloop booked it; left in place"),
            }),
            _ => Err(dav::classify("DELETE", &url, &answer)),
        }
    }

    /// Per calendar of `person` read so far: whether it is kept current with
    /// `sync-collection` (`Some(true)`), by time-range queries (`Some(false)`), or not yet read.
    pub async fn sync_modes(&self, person: &PersonId) -> Vec<(Url, Option<bool>)> {
        let state = self.state.lock().await;
        state
            .get(person)
            .map(|s| s.collections.iter().map(|(url, c)| (url.clone(), c.sync)).collect())
            .unwrap_or_default()
    }

    async fn hold_url(&self, person: &PersonId) -> Result<Url, ConnectorError> {
        let mut state = self.state.lock().await;
        let entry = state.entry(person.clone()).or_default();
        self.calendars(person, entry).await?.into_iter().next().ok_or_else(|| unknown(person))
    }
}

#[async_trait]
impl Calendar for CaldavConnector {
    fn name(&self) -> &str {
        "caldav"
    }

    fn people(&self) -> Vec<PersonId> {
        self.people.keys().cloned().collect()
    }

    async fn events(
        &self,
        person: &PersonId,
        from: Timestamp,
        to: Timestamp,
        time_zone: Tz,
    ) -> Result<CalendarRead, ConnectorError> {
        let mapping = self.mapping(person)?;
        let mut state = self.state.lock().await;
        let entry = state.entry(person.clone()).or_default();
        let calendars = match self.calendars(person, entry).await {
            Ok(c) => c,
            Err(e) => return Err(e),
        };
        let mut read = CalendarRead::default();
        for url in calendars {
            let collection = entry.collections.entry(url.clone()).or_default();
            let synced = match self.sync(&mapping.dav, &url, collection).await {
                Ok(synced) => synced,
                Err(error) => {
                    if matches!(error, ConnectorError::Permanent { .. }) {
                        // A calendar that went away: find the person's calendars again next time.
                        entry.calendars = None;
                    }
                    return Err(error);
                }
            };
            let items: Vec<(String, String)> = if synced {
                collection.items.iter().map(|(href, (_, data))| (href.clone(), data.clone())).collect()
            } else {
                let body = dav::calendar_query(&utc_value(from), &utc_value(to));
                let ms = mapping.dav.report(&url, body).await?;
                ms.responses.into_iter().filter_map(|r| Some((r.href, r.calendar_data?))).collect()
            };
            for (href, data) in items {
                match ical::events_in(&data, from, to, time_zone) {
                    Ok(events) => read.events.extend(events),
                    Err(reason) => {
                        let href = self.join(&url, &href).map(|u| u.to_string()).unwrap_or(href);
                        read.skipped.push(SkippedEntry { href, reason });
                    }
                }
            }
        }
        read.events.sort_by(|a, b| (a.start, &a.uid).cmp(&(b.start, &b.uid)));
        Ok(read)
    }

    async fn place_hold(
        &self,
        person: &PersonId,
        key: &IdempotencyKey,
        start: Timestamp,
        end: Timestamp,
        summary: &str,
    ) -> Result<String, ConnectorError> {
        let mapping = self.mapping(person)?;
        let calendar = self.hold_url(person).await?;
        let uid = hold_uid(key);
        let url = calendar
            .join(&format!("{uid}.ics"))
            .map_err(|e| ConnectorError::Permanent { message: format!("hold URL under {calendar}: {e}") })?;
        let body = ical::hold(&uid, start, end, summary, None, self.clock.now());
        let answer = mapping.dav.request("PUT", &url, &[("If-None-Match", "*".into())], Some(body)).await?;
        match answer.status {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => {
                tracing::info!(%person, hold = %url, %start, "hold booked");
                Ok(url.to_string())
            }
            // Booked before (a relay retried after a crash): one hold, not two.
            StatusCode::PRECONDITION_FAILED => {
                tracing::info!(%person, hold = %url, "hold already booked");
                Ok(url.to_string())
            }
            StatusCode::NOT_FOUND | StatusCode::CONFLICT => {
                self.state.lock().await.entry(person.clone()).or_default().calendars = None;
                Err(dav::classify("PUT", &url, &answer))
            }
            _ => Err(dav::classify("PUT", &url, &answer)),
        }
    }

    /// A configured calendar: `PROPFIND` (Depth 0) on the collection, which must answer as a
    /// calendar. A principal, or none: discovery (`current-user-principal`, `calendar-home-set`,
    /// the collections under it), which must find at least one. Nothing is cached or changed.
    async fn check(&self, person: &PersonId) -> Result<String, ConnectorError> {
        let mapping = self.mapping(person)?;
        match &mapping.target {
            Target::Calendar(url) => {
                let ms = mapping.dav.propfind(url, "0", "<d:resourcetype/><d:displayname/>").await?;
                let Some(calendar) = ms.responses.iter().find(|r| r.is_calendar) else {
                    return Err(ConnectorError::Permanent {
                        message: format!("PROPFIND {url}: answered, but it is not a calendar collection"),
                    });
                };
                let name = calendar
                    .display_name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .map(|n| format!(" \"{n}\""))
                    .unwrap_or_default();
                Ok(format!("PROPFIND {url}: a calendar collection{name}"))
            }
            target => {
                let found = self.discover_with(&mapping.dav, target).await?;
                let urls: Vec<String> = found.iter().map(|c| c.url.to_string()).collect();
                Ok(format!("discovery found {} calendar(s): {}", urls.len(), urls.join(", ")))
            }
        }
    }
}

/// So the engine can hold it as `Arc<dyn Calendar>`.
pub fn as_calendar(connector: Arc<CaldavConnector>) -> Arc<dyn Calendar> {
    connector
}

/// A secret for tests.
#[doc(hidden)]
pub fn test_secret(value: &str) -> Secret {
    Secret::for_tests(value)
}
