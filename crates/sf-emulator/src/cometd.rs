//! The Streaming API's Bayeux (CometD) endpoint for Change Data Capture channels:
//! `POST /cometd/NN.N` with a JSON array of messages. `/meta/handshake` (bearer session
//! required, else HTTP 401) gives a `clientId`; `/meta/subscribe` to `/data/ChangeEvents` or
//! `/data/<Object>ChangeEvent` with `ext.replay = {channel: id}` (-1: new events only, -2: every
//! retained event, else resume after that id; an id older than retention, or never issued, is
//! refused `400::The replayId …`); `/meta/connect` long-polls until events arrive or the
//! timeout passes and answers them before its own reply; an unknown client gets
//! `403::Unknown client` with `advice.reconnect = "handshake"`; `/meta/disconnect`. Streaming
//! requests are not API calls.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::Shared;
use crate::http::Reply;

/// Events answered by one `/meta/connect`.
const CONNECT_LIMIT: usize = 1000;

/// A handshaken client.
#[derive(Debug, Clone, Default)]
pub(crate) struct Client {
    /// Subscribed channels, each with the replay id of the last event delivered on it.
    pub subscriptions: HashMap<String, i64>,
}

/// The entity a channel carries (`None`: every entity, `/data/ChangeEvents`).
fn channel_entity(channel: &str) -> Option<Option<String>> {
    let rest = channel.strip_prefix("/data/")?;
    if rest == "ChangeEvents" {
        return Some(None);
    }
    let entity = rest.strip_suffix("ChangeEvent")?;
    // Custom objects: `/data/Thing__ChangeEvent` carries `Thing__c`.
    let entity = match entity.strip_suffix("__") {
        Some(custom) => format!("{custom}__c"),
        None => entity.to_owned(),
    };
    Some(Some(entity))
}

fn on_channel(channel: &str, entity: &str) -> bool {
    match channel_entity(channel) {
        Some(None) => true,
        Some(Some(e)) => e.eq_ignore_ascii_case(entity),
        None => false,
    }
}

fn retention_ms(shared: &Shared) -> i64 {
    i64::try_from(shared.config.event_retention.as_millis()).unwrap_or(i64::MAX / 4)
}

pub(crate) async fn handle(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Reply {
    if let Err(reply) = crate::http::authorize(shared, headers) {
        return reply;
    }
    let messages: Vec<Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(list)) => list,
        Ok(one @ Value::Object(_)) => vec![one],
        _ => return Reply::json(400, &json!([{"successful": false, "error": "400::Invalid JSON"}])),
    };
    let mut out = Vec::new();
    for message in messages {
        let channel = message.get("channel").and_then(Value::as_str).unwrap_or_default().to_owned();
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let client_id = message.get("clientId").and_then(Value::as_str).map(str::to_owned);
        match channel.as_str() {
            "/meta/handshake" => {
                let n = shared.next_seq();
                let client = format!("emu{n:x}{:x}", shared.now_ms());
                shared.streaming().insert(client.clone(), Client::default());
                out.push(json!({
                    "channel": channel, "id": id, "version": "1.0", "minimumVersion": "1.0",
                    "successful": true, "clientId": client,
                    "supportedConnectionTypes": ["long-polling"],
                    "ext": {"replay": true, "payload.format": true},
                    "advice": {"reconnect": "retry", "interval": 0,
                               "timeout": shared.config.streaming_timeout.as_millis() as u64},
                }));
            }
            "/meta/subscribe" => out.push(subscribe(shared, &message, client_id.as_deref(), id)),
            "/meta/unsubscribe" => {
                let subscription = message.get("subscription").and_then(Value::as_str).unwrap_or_default();
                let known = client_id
                    .as_deref()
                    .and_then(|c| {
                        shared.streaming().get_mut(c).map(|cl| cl.subscriptions.remove(subscription))
                    })
                    .is_some();
                out.push(json!({"channel": channel, "id": id, "clientId": client_id,
                                "subscription": subscription, "successful": known}));
            }
            "/meta/connect" => {
                let Some(client) = client_id.filter(|c| shared.streaming().contains_key(c)) else {
                    out.push(unknown_client(&channel, id));
                    continue;
                };
                out.extend(connect(shared, &client).await);
                let alive = shared.streaming().contains_key(&client);
                if alive {
                    out.push(json!({
                        "channel": channel, "id": id, "clientId": client, "successful": true,
                        "advice": {"reconnect": "retry", "interval": 0,
                                   "timeout": shared.config.streaming_timeout.as_millis() as u64},
                    }));
                } else {
                    out.push(unknown_client(&channel, id));
                }
            }
            "/meta/disconnect" => {
                if let Some(c) = &client_id {
                    shared.streaming().remove(c);
                }
                out.push(json!({"channel": channel, "id": id, "successful": true}));
            }
            other => out.push(json!({
                "channel": other, "id": id, "successful": false,
                "error": format!("400::Unknown channel {other}"),
            })),
        }
    }
    Reply::json(200, &Value::Array(out))
}

fn unknown_client(channel: &str, id: Value) -> Value {
    json!({
        "channel": channel, "id": id, "successful": false, "error": "403::Unknown client",
        "advice": {"reconnect": "handshake", "interval": 0},
    })
}

fn subscribe(shared: &Shared, message: &Value, client_id: Option<&str>, id: Value) -> Value {
    let subscription = message.get("subscription").and_then(Value::as_str).unwrap_or_default().to_owned();
    let fail = |error: String| {
        json!({"channel": "/meta/subscribe", "id": id, "clientId": client_id,
               "subscription": subscription, "successful": false, "error": error})
    };
    let Some(client_id) = client_id.filter(|c| shared.streaming().contains_key(*c)) else {
        let mut reply = unknown_client("/meta/subscribe", id.clone());
        reply["subscription"] = json!(subscription);
        return reply;
    };
    if channel_entity(&subscription).is_none() {
        return fail(format!("400::Unknown channel {subscription}"));
    }
    if !shared.config.change_events {
        return fail(format!(
            "403::Change Data Capture is not enabled for this organization ({subscription})"
        ));
    }
    let replay = message
        .pointer("/ext/replay")
        .and_then(|r| r.get(&subscription))
        .and_then(Value::as_i64)
        .unwrap_or(-1);
    let position = {
        let mut db = shared.db_mut();
        let cutoff = shared.now_ms().saturating_sub(retention_ms(shared));
        db.events.purge(cutoff);
        match replay {
            -1 => db.events.latest(),
            -2 => db.events.purged_through,
            n if db.events.valid_position(n) => n,
            n => {
                return fail(format!(
                    "400::The replayId {{{n}}} you provided was invalid.  Please provide a valid ID, -2 to replay all events, or -1 to replay only new events."
                ));
            }
        }
    };
    if let Some(client) = shared.streaming().get_mut(client_id) {
        client.subscriptions.insert(subscription.clone(), position);
    }
    json!({"channel": "/meta/subscribe", "id": id, "clientId": client_id,
           "subscription": subscription, "successful": true})
}

/// Waits until the client has events (or the timeout passes, or the emulator stops); answers
/// them as event messages and moves the client's positions past them.
async fn connect(shared: &Shared, client: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + shared.config.streaming_timeout;
    let mut stopping = shared.stopping.subscribe();
    loop {
        let notify = shared.db().events.notify.clone();
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let ready = ready_events(shared, client);
        if !ready.is_empty() || *stopping.borrow() {
            return ready;
        }
        if !shared.streaming().contains_key(client) {
            return Vec::new();
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => return Vec::new(),
            _ = stopping.changed() => return Vec::new(),
            // Clients dropped by the control endpoint are noticed within this.
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

fn ready_events(shared: &Shared, client: &str) -> Vec<Value> {
    let mut streaming = shared.streaming();
    let Some(state) = streaming.get_mut(client) else { return Vec::new() };
    let db = shared.db();
    let mut out = Vec::new();
    for (channel, position) in state.subscriptions.iter_mut() {
        for event in db.events.after(*position, CONNECT_LIMIT) {
            *position = event.replay_id;
            if !on_channel(channel, &event.entity) {
                continue;
            }
            out.push(json!({
                "channel": channel,
                "data": {
                    "schema": format!("emulator-{}", event.entity),
                    "payload": event.payload,
                    "event": {"replayId": event.replay_id},
                },
            }));
        }
    }
    shared.streaming_deliveries.fetch_add(out.len() as u64, Ordering::Relaxed);
    out
}
