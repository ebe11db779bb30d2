//! Change Data Capture through the Streaming API: Bayeux (CometD) long polling over HTTP on
//! `/cometd/NN.N`, subscribed to `/data/ChangeEvents` with the `replay` extension.
//!
//! - The position is the replay id of the last event whose records are durable; the engine
//!   stores it with them and hands it back. A session that is not at the position asked for
//!   (a restart, a failed commit) is dropped and a new one subscribes from it.
//! - Salesforce keeps events for 72 hours. A replay id it no longer holds is refused at
//!   subscribe (`400::The replayId … was invalid`); the client then subscribes for new events
//!   only (-1) and reports a gap, so the engine polls, which covers what was missed. Gap
//!   events (`GAP_*`) and overflow events (`GAP_OVERFLOW`) are reported the same way.
//! - Events carry only what changed; the records they name are read in full with one SOQL
//!   query per object (`Id IN (…)`), so the event path and the poll map the same record shape,
//!   and a record read by both is the same version, which the engine takes once.
//! - `403::Unknown client` (the server forgot the session) → handshake again from the
//!   position; HTTP 401 → log in again once.

use std::collections::BTreeMap;

use leadloop_core::connector::{ChangeEvents, ChangePage, ConnectorError, CrmObject};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::Priority;
use crate::auth::Session;
use crate::{Cursor, QueryResult, Salesforce, follows_deletes, sobject, urlencode};

/// The channel leadloop subscribes to: every entity selected for Change Data Capture.
pub const CHANNEL: &str = "/data/ChangeEvents";

/// Ids per `Id IN (…)` query (keeps the URL short).
const IDS_PER_QUERY: usize = 200;

/// A handshaken, subscribed Bayeux client.
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    client_id: String,
    /// The replay id of the last event answered (-1: none since subscribing for new events).
    position: i64,
}

fn transient(message: String) -> ConnectorError {
    ConnectorError::Transient { message, retry_after: None }
}

fn object_of(entity: &str) -> Option<CrmObject> {
    CrmObject::ALL.into_iter().find(|o| sobject(*o).eq_ignore_ascii_case(entity))
}

/// Why a connect answer failed, if it did.
fn refused(answer: &[Value]) -> Option<String> {
    let reply = answer.iter().find(|m| m["channel"] == "/meta/connect");
    match reply {
        Some(m) if m["successful"] == true => None,
        Some(m) => Some(m["error"].as_str().unwrap_or("refused").to_owned()),
        None => Some("no answer".to_owned()),
    }
}

enum Subscribed {
    Ok(Stream),
    /// The replay id is past retention (or unknown to the server).
    Expired,
}

impl Salesforce {
    fn cometd_url(&self, session: &Session) -> String {
        let version = self.config.api_version.trim_start_matches('v');
        format!("{}/cometd/{version}", session.instance_url.trim_end_matches('/'))
    }

    /// One Bayeux request; renews the session once on HTTP 401.
    async fn bayeux(&self, messages: Value) -> Result<Vec<Value>, ConnectorError> {
        let mut session = self.api.auth.session().await?;
        for attempt in 0..2 {
            let response = self
                .streaming_http
                .post(self.cometd_url(&session))
                .bearer_auth(session.access_token.expose())
                .json(&messages)
                .send()
                .await
                .map_err(|e| transient(format!("streaming API: {}", leadloop_plugin::error_chain(&e))))?;
            let status = response.status().as_u16();
            if status == 401 && attempt == 0 {
                session = self.api.auth.renew(&session).await?;
                continue;
            }
            if !(200..300).contains(&status) {
                let body = response.text().await.unwrap_or_default();
                let message = format!(
                    "streaming API answered {status}: {}",
                    body.chars().take(300).collect::<String>()
                );
                return Err(if status == 401 || status == 403 {
                    ConnectorError::Auth { message }
                } else {
                    transient(message)
                });
            }
            let body: Value = response
                .json()
                .await
                .map_err(|e| transient(format!("streaming API: malformed answer: {e}")))?;
            return match body {
                Value::Array(list) => Ok(list),
                other => Err(transient(format!("streaming API: expected a list of messages, got {other}"))),
            };
        }
        Err(transient("streaming API refused the renewed session".into()))
    }

    /// Handshake and subscribe from `replay` (-1: new events only).
    async fn subscribe(&self, replay: i64) -> Result<Subscribed, ConnectorError> {
        let answer = self
            .bayeux(json!([{
                "channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
                "supportedConnectionTypes": ["long-polling"], "ext": {"replay": true},
            }]))
            .await?;
        let handshake = answer.iter().find(|m| m["channel"] == "/meta/handshake");
        let Some(client_id) = handshake
            .filter(|m| m["successful"] == true)
            .and_then(|m| m["clientId"].as_str())
            .map(str::to_owned)
        else {
            let error = handshake.and_then(|m| m["error"].as_str()).unwrap_or("no answer");
            return Err(transient(format!("streaming API handshake failed: {error}")));
        };
        let answer = self
            .bayeux(json!([{
                "channel": "/meta/subscribe", "clientId": client_id, "subscription": CHANNEL,
                "ext": {"replay": {CHANNEL: replay}},
            }]))
            .await?;
        let reply = answer.iter().find(|m| m["channel"] == "/meta/subscribe");
        if reply.is_some_and(|m| m["successful"] == true) {
            return Ok(Subscribed::Ok(Stream { client_id, position: replay }));
        }
        let error = reply.and_then(|m| m["error"].as_str()).unwrap_or("no answer").to_owned();
        if error.contains("replayId") {
            return Ok(Subscribed::Expired);
        }
        if error.starts_with("403") || error.starts_with("404") || error.starts_with("400::Unknown channel") {
            // The org does not offer Change Data Capture to this user (or the channel).
            return Err(ConnectorError::Permanent {
                message: format!("subscribing to {CHANNEL} was refused: {error}"),
            });
        }
        Err(transient(format!("subscribing to {CHANNEL} failed: {error}")))
    }

    /// One `/meta/connect` long poll.
    async fn connect(&self, stream: &Stream) -> Result<Vec<Value>, ConnectorError> {
        self.bayeux(json!([{
            "channel": "/meta/connect", "clientId": stream.client_id, "connectionType": "long-polling",
        }]))
        .await
    }

    /// See [`leadloop_core::Crm::changes`].
    pub(crate) async fn read_changes(
        &self,
        objects: &[CrmObject],
        position: Option<&str>,
    ) -> Result<ChangeEvents, ConnectorError> {
        let want: i64 = position.and_then(|p| p.trim().parse().ok()).unwrap_or(-1);
        let mut out = ChangeEvents::default();
        let mut state = self.stream.lock().await;
        let mut stream = match state.take() {
            Some(stream) if stream.position == want => stream,
            _ => match self.subscribe(want).await? {
                Subscribed::Ok(stream) => stream,
                Subscribed::Expired => {
                    tracing::warn!(
                        replay_id = want,
                        "salesforce no longer holds events after this replay id (72 hours); following new events and polling for the rest"
                    );
                    out.gap = Some(format!(
                        "replay id {want} is older than Salesforce keeps change events (72 hours)"
                    ));
                    out.position = Some("-1".into());
                    match self.subscribe(-1).await? {
                        Subscribed::Ok(stream) => stream,
                        Subscribed::Expired => {
                            return Err(transient("the streaming API refused replay id -1".into()));
                        }
                    }
                }
            },
        };
        let mut answer = self.connect(&stream).await?;
        if let Some(error) = refused(&answer) {
            // `403::Unknown client` (the server forgot the session) and the like: handshake
            // again from the same position, once. Events answered with a failed connect are
            // not taken.
            tracing::info!(%error, "streaming API connect refused; handshaking again");
            stream = match self.subscribe(stream.position).await? {
                Subscribed::Ok(fresh) => fresh,
                Subscribed::Expired => {
                    return Err(transient(format!(
                        "replay id {} expired while reconnecting",
                        stream.position
                    )));
                }
            };
            answer = self.connect(&stream).await?;
            if let Some(error) = refused(&answer) {
                return Err(transient(format!("streaming API connect refused twice: {error}")));
            }
        }
        let mut fetch: BTreeMap<CrmObject, Vec<String>> = BTreeMap::new();
        let mut deleted: BTreeMap<CrmObject, Vec<String>> = BTreeMap::new();
        let mut last = None;
        for message in &answer {
            if message["channel"].as_str() != Some(CHANNEL) {
                continue;
            }
            out.events += 1;
            if let Some(replay) = message.pointer("/data/event/replayId").and_then(Value::as_i64) {
                last = Some(last.map_or(replay, |l: i64| l.max(replay)));
            }
            let header = &message["data"]["payload"]["ChangeEventHeader"];
            let entity = header["entityName"].as_str().unwrap_or_default();
            let change = header["changeType"].as_str().unwrap_or_default();
            let ids: Vec<String> = header["recordIds"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            if change.starts_with("GAP_") {
                metrics::counter!("leadloop_crm_event_gaps_total", "kind" => change.to_owned()).increment(1);
                out.gap.get_or_insert_with(|| format!("{change} event for {entity}"));
                continue;
            }
            let Some(object) = object_of(entity).filter(|o| objects.contains(o)) else { continue };
            match change {
                "DELETE" if follows_deletes(object) => deleted.entry(object).or_default().extend(ids),
                "DELETE" => {}
                _ => fetch.entry(object).or_default().extend(ids),
            }
        }
        if let Some(last) = last {
            stream.position = last;
            out.position = Some(last.to_string());
        }
        // The records as they are now, per object, owners before what they own.
        for object in CrmObject::ALL {
            let ids = fetch.remove(&object).unwrap_or_default();
            let gone = deleted.remove(&object).unwrap_or_default();
            if ids.is_empty() && gone.is_empty() {
                continue;
            }
            let mut page = self.records_by_id(object, ids).await?;
            page.deleted = gone;
            out.pages.push((object, page));
        }
        *state = Some(stream);
        Ok(out)
    }

    /// The current versions of records by id (deleted ones are simply absent).
    async fn records_by_id(
        &self,
        object: CrmObject,
        mut ids: Vec<String>,
    ) -> Result<ChangePage, ConnectorError> {
        ids.sort();
        ids.dedup();
        // Only Salesforce ids reach the query text.
        ids.retain(|id| id.len() >= 15 && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        let mut page = ChangePage::default();
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let list = chunk.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
            let mut soql = format!(
                "SELECT {} FROM {} WHERE Id IN ({list})",
                self.mapping(object).select_list(),
                sobject(object)
            );
            if object == CrmObject::Task {
                soql.push_str(" AND WhoId != null");
            }
            let mut path = self.api.data_path("query");
            path.push_str("?q=");
            path.push_str(&urlencode(&soql));
            let body =
                self.api.call(Method::GET, &path, None, Priority::Bulk, None).await.map_err(|e| e.error)?;
            let result: QueryResult = serde_json::from_value(body)
                .map_err(|e| transient(format!("{object} by id: malformed response: {e}")))?;
            let part = self.page(object, &Cursor::default(), result);
            page.records.extend(part.records);
            page.quarantined.extend(part.quarantined);
            page.changed_at.extend(part.changed_at);
        }
        Ok(page)
    }
}
