//! The data API behind `/services/data`: versions, limits, SOQL queries and their follow-up
//! pages, getDeleted, single records, describe, sObject Collections and Composite. Composite
//! subrequests come back through [`dispatch`], so they behave exactly as top-level calls.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Map, Value, json};

use crate::http::{Reply, form_decode, form_get};
use crate::store::{self, Db, FieldType, ObjectStore, Slot, Val, format_datetime, parse_datetime};
use crate::{Cursor, Shared, soql};

/// Query locators expire after this much emulator time without use.
const LOCATOR_TTL_MS: i64 = 15 * 60 * 1000;
/// The delete log keeps this much emulator time.
const DELETED_WINDOW_MS: i64 = 15 * 24 * 3600 * 1000;
const COLLECTION_LIMIT: usize = 200;
const COMPOSITE_LIMIT: usize = 25;
/// Of a Composite request's subrequests, how many may be queries or sObject Collections.
const COMPOSITE_QUERY_LIMIT: usize = 5;

/// Whether a subrequest's URL is a query (`/query`, `/queryAll`, a query-more locator) or an
/// sObject Collections call (`/composite/sobjects`).
fn is_query_or_collection(url: &str) -> bool {
    let path = url.split('?').next().unwrap_or_default();
    path.split('/').any(|part| part == "query" || part == "queryAll") || path.contains("/composite/sobjects")
}

/// Routes one data request. `force_all_or_none` is set for collections inside an all-or-none
/// Composite request.
pub(crate) fn dispatch(
    shared: &Shared,
    method: &str,
    target: &str,
    batch: Option<usize>,
    body: &[u8],
    force_all_or_none: bool,
) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(rest) = path.strip_prefix("/services/data") else { return Reply::not_found() };
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        let v = shared.config.api_version.trim_start_matches('v');
        return Reply::json(
            200,
            &json!([{ "label": "Emulated", "url": format!("/services/data/v{v}"), "version": v }]),
        );
    }
    let (version, rest) = rest.split_once('/').unwrap_or((rest, ""));
    if !valid_version(version) {
        return Reply::not_found();
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let params = form_decode(query);
    match (method, segs.as_slice()) {
        ("GET", [""]) => Reply::json(
            200,
            &json!({
                "sobjects": format!("/services/data/{version}/sobjects"),
                "query": format!("/services/data/{version}/query"),
                "limits": format!("/services/data/{version}/limits"),
                "composite": format!("/services/data/{version}/composite"),
            }),
        ),
        ("GET", ["limits"] | ["limits", ""]) => {
            let max = shared.config.daily_api_limit;
            let used = shared.api_used.load(Ordering::Relaxed);
            Reply::json(
                200,
                &json!({ "DailyApiRequests": { "Max": max, "Remaining": max.saturating_sub(used) } }),
            )
        }
        ("GET", ["query"] | ["query", ""]) => match form_get(&params, "q") {
            Some(q) => query_first(shared, version, q, batch.unwrap_or(shared.config.batch_size)),
            None => Reply::error(400, "MALFORMED_QUERY", "A query string has to be specified"),
        },
        ("GET", ["query", locator]) => query_more(shared, version, locator),
        ("GET", ["sobjects", object, "deleted"] | ["sobjects", object, "deleted", ""]) => {
            deleted(shared, object, &params)
        }
        ("GET", ["sobjects", object, "describe"] | ["sobjects", object, "describe", ""]) => {
            describe(shared, object)
        }
        ("POST", ["sobjects", object] | ["sobjects", object, ""]) => {
            create_one(shared, version, object, body)
        }
        ("GET", ["sobjects", object, id]) => get_one(shared, version, object, id, &params),
        ("PATCH", ["sobjects", object, id]) => patch_one(shared, object, id, body),
        ("DELETE", ["sobjects", object, id]) => delete_one(shared, object, id),
        ("POST", ["composite", "sobjects"] | ["composite", "sobjects", ""]) => {
            collections(shared, body, false, force_all_or_none)
        }
        ("PATCH", ["composite", "sobjects"] | ["composite", "sobjects", ""]) => {
            collections(shared, body, true, force_all_or_none)
        }
        ("PATCH", ["composite", "sobjects", object, field]) => upsert(shared, object, field, body),
        ("POST", ["composite"] | ["composite", ""]) => composite(shared, version, body),
        _ => Reply::not_found(),
    }
}

/// `vNN.N`.
fn valid_version(v: &str) -> bool {
    let Some(num) = v.strip_prefix('v') else { return false };
    let Some((major, minor)) = num.split_once('.') else { return false };
    !major.is_empty()
        && !minor.is_empty()
        && major.bytes().all(|b| b.is_ascii_digit())
        && minor.bytes().all(|b| b.is_ascii_digit())
}

fn bad_json(error: &serde_json::Error) -> Reply {
    Reply::error(400, "JSON_PARSER_ERROR", &format!("Unexpected character: {error}"))
}

// ----- queries -----

fn query_first(shared: &Shared, version: &str, q: &str, batch: usize) -> Reply {
    let mut parsed = match soql::parse(q) {
        Ok(p) => p,
        Err(e) => return Reply::error(400, e.code, &e.message),
    };
    let db = shared.db();
    let oi = match parsed.bind(&db) {
        Ok(oi) => oi,
        Err(e) => return Reply::error(400, e.code, &e.message),
    };
    let slots = soql::execute(&db, oi, &parsed);
    if parsed.count {
        return Reply::json(200, &json!({ "totalSize": slots.len(), "done": true, "records": [] }));
    }
    let fields: Vec<u16> = parsed.fields.iter().map(|f| f.idx).collect();
    let batch = batch.max(1);
    let total = slots.len();
    let next = if total > batch {
        let now = shared.now_ms();
        let locator = format!("01g5g{:013}", shared.next_seq());
        let mut cursors = shared.cursors();
        cursors.retain(|_, c| now - c.last_used_ms < LOCATOR_TTL_MS);
        let slots = Arc::new(slots);
        cursors.insert(
            locator.clone(),
            Cursor {
                object: oi,
                fields: Arc::new(fields.clone()),
                slots: slots.clone(),
                batch,
                last_used_ms: now,
            },
        );
        drop(cursors);
        let obj = &db.objects[oi];
        let body =
            write_page(obj, version, &fields, &slots[..batch], total, Some(format!("{locator}-{batch}")));
        return Reply::raw(200, body);
    } else {
        None
    };
    let obj = &db.objects[oi];
    Reply::raw(200, write_page(obj, version, &fields, &slots, total, next))
}

fn query_more(shared: &Shared, version: &str, locator_offset: &str) -> Reply {
    let invalid = || Reply::error(400, "INVALID_QUERY_LOCATOR", "invalid query locator");
    let Some((locator, offset)) = locator_offset.rsplit_once('-') else { return invalid() };
    let Ok(offset) = offset.parse::<usize>() else { return invalid() };
    // An injected page failure fires before the page is read; the locator stays valid.
    {
        let mut faults = shared.faults();
        if let Some(pos) = faults.iter().position(|f| matches!(f, crate::Fault::FailPage { .. })) {
            let fire = match faults.get_mut(pos) {
                Some(crate::Fault::FailPage { nth }) if *nth <= 1 => true,
                Some(crate::Fault::FailPage { nth }) => {
                    *nth -= 1;
                    false
                }
                _ => false,
            };
            if fire {
                faults.remove(pos);
                return Reply::error(
                    500,
                    "UNKNOWN_EXCEPTION",
                    "An unexpected error occurred. Please include this ErrorId if you contact support: 1905412061-27913 (-1237339045)",
                );
            }
        }
    }
    let now = shared.now_ms();
    let (object, fields, slots, batch) = {
        let mut cursors = shared.cursors();
        let Some(c) = cursors.get_mut(locator) else { return invalid() };
        if now - c.last_used_ms >= LOCATOR_TTL_MS {
            cursors.remove(locator);
            return invalid();
        }
        c.last_used_ms = now;
        (c.object, c.fields.clone(), c.slots.clone(), c.batch)
    };
    let total = slots.len();
    if offset > total {
        return invalid();
    }
    let end = (offset + batch).min(total);
    let next = (end < total).then(|| format!("{locator}-{end}"));
    let db = shared.db();
    let Some(obj) = db.objects.get(object) else { return invalid() };
    Reply::raw(200, write_page(obj, version, &fields, &slots[offset..end], total, next))
}

/// Serialises one page of query results straight from the store.
fn write_page(
    obj: &ObjectStore,
    version: &str,
    fields: &[u16],
    slots: &[Slot],
    total: usize,
    next: Option<String>,
) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(64 + slots.len() * (96 + fields.len() * 32));
    let _ = write!(out, "{{\"totalSize\":{total},\"done\":{}", next.is_none());
    if let Some(next) = &next {
        let _ = write!(out, ",\"nextRecordsUrl\":\"/services/data/{version}/query/{next}\"");
    }
    out.extend_from_slice(b",\"records\":[");
    let keys: Vec<Vec<u8>> = fields
        .iter()
        .map(|&f| {
            let mut k = Vec::new();
            k.push(b',');
            store::write_json_str(&mut k, obj.fields.get(f as usize).map_or("", |d| d.name.as_str()));
            k.push(b':');
            k
        })
        .collect();
    let url_prefix = format!(
        "{{\"attributes\":{{\"type\":\"{}\",\"url\":\"/services/data/{version}/sobjects/{}/",
        obj.name, obj.name
    );
    let mut vals: Vec<Val<'_>> = Vec::new();
    for (i, &slot) in slots.iter().enumerate() {
        let Some(rec) = obj.record(slot) else { continue };
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(url_prefix.as_bytes());
        out.extend_from_slice(rec.id.as_bytes());
        out.extend_from_slice(b"\"}");
        vals.clear();
        vals.resize(obj.fields.len(), Val::Null);
        for (f, v) in rec.entries() {
            if let Some(slot) = vals.get_mut(f as usize) {
                *slot = v;
            }
        }
        for (k, &f) in keys.iter().zip(fields) {
            out.extend_from_slice(k);
            let v = if f < 5 { rec.get(f) } else { vals.get(f as usize).copied().unwrap_or(Val::Null) };
            store::write_val(&mut out, v);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

// ----- getDeleted -----

fn deleted(shared: &Shared, object: &str, params: &[(String, String)]) -> Reply {
    let parse = |key: &str| form_get(params, key).and_then(|v| parse_datetime(&v.replace(' ', "+")));
    let (Some(start), Some(end)) = (parse("start"), parse("end")) else {
        return Reply::error(
            400,
            "MISSING_ARGUMENT",
            "Both start and end must be given as ISO 8601 date-times, e.g. 2026-11-23T16:35:33+00:00",
        );
    };
    let now = shared.now_ms();
    let window_start = now - DELETED_WINDOW_MS;
    let mut db = shared.db_mut();
    db.purge_deleted(window_start);
    let Some(obj) = db.object(object) else {
        return Reply::error(404, "NOT_FOUND", "The requested resource does not exist");
    };
    if start >= end {
        return Reply::error(
            400,
            "INVALID_REPLICATION_DATE",
            "startDate must chronologically precede endDate",
        );
    }
    let earliest = obj.purged_until.unwrap_or(window_start).max(window_start);
    let earliest = earliest - earliest.rem_euclid(60_000);
    if start < earliest {
        return Reply::error(
            400,
            "INVALID_REPLICATION_DATE",
            &format!(
                "startDate cannot be earlier than the earliest date available: {}",
                format_datetime(earliest)
            ),
        );
    }
    let covered = end.min(now);
    let records: Vec<Value> = obj
        .deleted_log
        .iter()
        .filter(|(_, at)| *at >= start && *at <= covered)
        .map(|(id, at)| json!({ "id": id.as_ref(), "deletedDate": format_datetime(*at) }))
        .collect();
    Reply::json(
        200,
        &json!({
            "deletedRecords": records,
            "earliestDateAvailable": format_datetime(earliest),
            "latestDateCovered": format_datetime(covered),
        }),
    )
}

// ----- describe and single records -----

fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::Id => "id",
        FieldType::Reference => "reference",
        FieldType::Text => "string",
        FieldType::Bool => "boolean",
        FieldType::Int => "int",
        FieldType::Date => "date",
        FieldType::DateTime => "datetime",
        FieldType::Any => "string",
    }
}

fn unknown_type(object: &str) -> Reply {
    Reply::error(404, "NOT_FOUND", &format!("The requested resource does not exist: sObject type '{object}'"))
}

fn describe(shared: &Shared, object: &str) -> Reply {
    let db = shared.db();
    let Some(obj) = db.object(object) else { return unknown_type(object) };
    let fields: Vec<Value> = obj
        .fields
        .iter()
        .map(|f| json!({ "name": f.name, "type": type_name(f.ty), "updateable": f.writable, "custom": f.name.ends_with("__c") }))
        .collect();
    Reply::json(200, &json!({ "name": obj.name, "keyPrefix": obj.prefix, "fields": fields }))
}

fn record_json(obj: &ObjectStore, version: &str, slot: Slot, only: Option<&[u16]>) -> Value {
    let mut map = Map::new();
    let Some(rec) = obj.record(slot) else { return Value::Null };
    map.insert(
        "attributes".into(),
        json!({ "type": obj.name, "url": format!("/services/data/{version}/sobjects/{}/{}", obj.name, rec.id) }),
    );
    let all: Vec<u16> = (0..obj.fields.len() as u16).collect();
    for &f in only.unwrap_or(&all) {
        if let Some(def) = obj.fields.get(f as usize) {
            map.insert(def.name.clone(), store::val_to_json(rec.get(f)));
        }
    }
    Value::Object(map)
}

fn get_one(shared: &Shared, version: &str, object: &str, id: &str, params: &[(String, String)]) -> Reply {
    let db = shared.db();
    let Some(obj) = db.object(object) else { return unknown_type(object) };
    if obj.is_deleted(id) {
        return Reply::error(404, "ENTITY_IS_DELETED", "entity is deleted");
    }
    let Some(slot) = obj.slot(id).filter(|_| obj.live(id).is_some()) else { return Reply::not_found() };
    let only = match form_get(params, "fields") {
        Some(list) => {
            let mut out = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match obj.field(name) {
                    Some(f) => out.push(f),
                    None => {
                        return Reply::error(
                            400,
                            "INVALID_FIELD",
                            &format!("No such column '{name}' on sobject of type {}", obj.name),
                        );
                    }
                }
            }
            Some(out)
        }
        None => None,
    };
    Reply::json(200, &record_json(obj, version, slot, only.as_deref()))
}

/// A per-record error: `{statusCode, message, fields}`.
#[derive(Debug, Clone)]
struct RecErr {
    code: String,
    message: String,
    fields: Vec<String>,
}

fn rec_err(code: &str, message: impl Into<String>, fields: &[&str]) -> RecErr {
    RecErr {
        code: code.to_owned(),
        message: message.into(),
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
    }
}

/// A request-level error: an unknown field makes the whole request fail, as in Salesforce.
fn unknown_field(obj: &ObjectStore, fields: &Map<String, Value>) -> Option<Reply> {
    let name = fields.keys().find(|k| k.as_str() != "attributes" && obj.field(k).is_none())?;
    Some(Reply::error(
        400,
        "INVALID_FIELD",
        &format!("No such column '{name}' on sobject of type {}", obj.name),
    ))
}

/// Validates and applies one write under the caller's lock.
fn write_record(
    shared: &Shared,
    db: &mut Db,
    object: &str,
    id: Option<&str>,
    mut fields: Map<String, Value>,
    now: i64,
) -> Result<String, RecErr> {
    fields.remove("attributes");
    let Some(obj) = db.object(object) else {
        return Err(rec_err("INVALID_TYPE", format!("sObject type '{object}' is not supported."), &[]));
    };
    let obj_name = obj.name;
    if let Some(id) = id {
        if id.len() != 15 && id.len() != 18 || !id.starts_with(obj.prefix) {
            return Err(rec_err(
                "MALFORMED_ID",
                format!("{obj_name} ID: id value of incorrect type: {id}"),
                &["Id"],
            ));
        }
        if obj.is_deleted(id) {
            return Err(rec_err("ENTITY_IS_DELETED", "entity is deleted", &[]));
        }
        if obj.live(id).is_none() {
            return Err(rec_err("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", &[]));
        }
        if let Some((code, message)) = shared.take_record_error(id) {
            return Err(RecErr { code, message, fields: Vec::new() });
        }
    }
    let read_only: Vec<String> = fields
        .keys()
        .filter(|k| obj.field(k).and_then(|f| obj.fields.get(f as usize)).is_some_and(|d| !d.writable))
        .filter(|k| !(id.is_some() && k.eq_ignore_ascii_case("Id")))
        .cloned()
        .collect();
    if !read_only.is_empty() {
        let refs: Vec<&str> = read_only.iter().map(String::as_str).collect();
        return Err(rec_err(
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            format!(
                "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                read_only.join(", ")
            ),
            &refs,
        ));
    }
    // Canonical field names from here on.
    let mut canon = Map::new();
    for (k, v) in fields {
        let name = obj.field(&k).and_then(|f| obj.fields.get(f as usize)).map_or(k, |d| d.name.clone());
        if name != "Id" {
            canon.insert(name, v);
        }
    }
    let fields = canon;
    if id.is_none() {
        let required: &[&str] = match obj_name {
            "Lead" => &["LastName", "Company"],
            "Contact" => &["LastName"],
            "Account" | "Group" => &["Name"],
            "User" => &["Username", "LastName", "Email"],
            _ => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|f| fields.get(*f).is_none_or(|v| v.is_null() || v == ""))
            .collect();
        if !missing.is_empty() {
            return Err(rec_err(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
                &missing,
            ));
        }
    }
    if obj_name == "Lead"
        && let Some(status) = fields.get("Status")
    {
        let ok = status.as_str().is_some_and(|s| shared.is_lead_status(s));
        if !ok {
            let shown = status.as_str().map_or_else(|| status.to_string(), str::to_owned);
            return Err(rec_err(
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                format!("Status: bad value for restricted picklist field: {shown}"),
                &["Status"],
            ));
        }
    }
    if let Some(owner) = fields.get("OwnerId") {
        check_owner(db, obj_name, owner)?;
    }
    for (name, value) in &fields {
        if let Some(def) = obj.field(name).and_then(|f| obj.fields.get(f as usize)) {
            let ok = match def.ty {
                FieldType::Bool => value.is_boolean(),
                FieldType::Int => {
                    value.is_null() || value.is_i64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
                }
                FieldType::DateTime => {
                    value.is_null() || value.as_str().is_some_and(|s| parse_datetime(s).is_some())
                }
                FieldType::Date => {
                    value.is_null() || value.as_str().is_some_and(|s| store::parse_date(s).is_some())
                }
                _ => true,
            };
            if !ok {
                return Err(rec_err(
                    "JSON_PARSER_ERROR",
                    format!(
                        "Cannot deserialize instance of {} from {value} value for field {name}",
                        type_name(def.ty)
                    ),
                    &[name.as_str()],
                ));
            }
        }
    }
    match id {
        Some(id) => {
            if db.update(obj_name, id, &fields, now) {
                Ok(id.to_owned())
            } else {
                Err(rec_err("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", &[]))
            }
        }
        None => {
            let mut fields = fields;
            if obj_name == "Lead"
                && !fields.contains_key("Status")
                && let Some(first) = shared.config.lead_statuses.first()
            {
                fields.insert("Status".into(), Value::String(first.clone()));
            }
            if obj_name == "User" && !fields.contains_key("IsActive") {
                fields.insert("IsActive".into(), Value::Bool(true));
            }
            db.insert(obj_name, fields, now)
                .map(|id| id.to_string())
                .ok_or_else(|| rec_err("DUPLICATE_VALUE", "duplicate value found: Id", &["Id"]))
        }
    }
}

/// OwnerId must be an active User or a queue (Group).
fn check_owner(db: &Db, object: &str, owner: &Value) -> Result<(), RecErr> {
    let Some(owner) = owner.as_str() else {
        return Err(rec_err(
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [OwnerId]",
            &["OwnerId"],
        ));
    };
    let wrong = || {
        rec_err(
            "FIELD_INTEGRITY_EXCEPTION",
            format!("Owner ID: id value of incorrect type: {owner}"),
            &["OwnerId"],
        )
    };
    if owner.len() != 15 && owner.len() != 18 {
        return Err(rec_err(
            "MALFORMED_ID",
            format!("Owner ID: id value of incorrect type: {owner}"),
            &["OwnerId"],
        ));
    }
    let Some(target) = db.object_of_id(owner) else { return Err(wrong()) };
    match target.name {
        "User" => {
            let Some(rec) = target.live(owner) else {
                return Err(rec_err(
                    "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id",
                    &["OwnerId"],
                ));
            };
            let active = target.field("IsActive").map(|f| rec.get(f)) != Some(Val::Bool(false));
            if !active {
                return Err(rec_err(
                    "INACTIVE_OWNER_OR_USER",
                    format!(
                        "operation performed with inactive user [{owner}] as owner of {}",
                        object.to_ascii_lowercase()
                    ),
                    &["OwnerId"],
                ));
            }
            Ok(())
        }
        "Group" => {
            if target.live(owner).is_some() {
                Ok(())
            } else {
                Err(rec_err("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", &["OwnerId"]))
            }
        }
        _ => Err(wrong()),
    }
}

fn errors_json(e: &RecErr) -> Value {
    json!([{ "statusCode": e.code, "message": e.message, "fields": e.fields }])
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Reply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Reply::error(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")),
        Err(e) => Err(bad_json(&e)),
    }
}

fn create_one(shared: &Shared, version: &str, object: &str, body: &[u8]) -> Reply {
    let fields = match parse_object(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let now = shared.now_ms();
    let mut db = shared.db_mut();
    let Some(obj) = db.object(object) else { return unknown_type(object) };
    if let Some(r) = unknown_field(obj, &fields) {
        return r;
    }
    let name = obj.name;
    match write_record(shared, &mut db, name, None, fields, now) {
        Ok(id) => {
            let mut r = Reply::json(201, &json!({ "id": id, "success": true, "errors": [] }));
            r.headers.push(("Location", format!("/services/data/{version}/sobjects/{name}/{id}")));
            r
        }
        Err(e) => Reply::error_fields(400, &e.code, &e.message, &e.fields),
    }
}

fn patch_one(shared: &Shared, object: &str, id: &str, body: &[u8]) -> Reply {
    let fields = match parse_object(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let now = shared.now_ms();
    let mut db = shared.db_mut();
    let Some(obj) = db.object(object) else { return unknown_type(object) };
    if let Some(r) = unknown_field(obj, &fields) {
        return r;
    }
    if obj.is_deleted(id) {
        return Reply::error(404, "ENTITY_IS_DELETED", "entity is deleted");
    }
    if obj.live(id).is_none() {
        return Reply::not_found();
    }
    let name = obj.name;
    match write_record(shared, &mut db, name, Some(id), fields, now) {
        Ok(_) => Reply::no_content(),
        Err(e) => Reply::error_fields(400, &e.code, &e.message, &e.fields),
    }
}

fn delete_one(shared: &Shared, object: &str, id: &str) -> Reply {
    let now = shared.now_ms();
    let mut db = shared.db_mut();
    let Some(obj) = db.object(object) else { return unknown_type(object) };
    if obj.is_deleted(id) {
        return Reply::error(404, "ENTITY_IS_DELETED", "entity is deleted");
    }
    let name = obj.name;
    if db.delete(name, id, now) { Reply::no_content() } else { Reply::not_found() }
}

// ----- sObject Collections -----

/// sObject Collections upsert (`PATCH …/composite/sobjects/OBJECT/FIELD`, API 46+): each record
/// is matched on the External ID field; a match is updated, no match creates one. Answers
/// `[{id, success, errors, created}]` in order.
fn upsert(shared: &Shared, object: &str, field: &str, body: &[u8]) -> Reply {
    let req = match parse_object(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let all_or_none = req.get("allOrNone").and_then(Value::as_bool).unwrap_or(false);
    let Some(records) = req.get("records").and_then(Value::as_array) else {
        return Reply::error(400, "INVALID_FIELD", "Missing required field: records");
    };
    if records.len() > COLLECTION_LIMIT {
        return Reply::error(
            400,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        );
    }
    if shared.db().object(object).is_none() {
        return Reply::error(404, "NOT_FOUND", &format!("The requested resource does not exist: {object}"));
    }
    if !shared.is_external_id(object, field) {
        return Reply::error(
            400,
            "INVALID_FIELD",
            &format!("Field name provided, {field} is not an External ID or indexed field for {object}"),
        );
    }
    let now = shared.now_ms();
    let mut db = shared.db_mut();
    for r in records {
        if let (Some(m), Some(obj)) = (r.as_object(), db.object(object))
            && let Some(reply) = unknown_field(obj, m)
        {
            return reply;
        }
    }
    let mark = db.begin();
    let mut results: Vec<Result<(String, bool), RecErr>> = Vec::with_capacity(records.len());
    for r in records {
        let Some(m) = r.as_object() else {
            results.push(Err(rec_err("JSON_PARSER_ERROR", "each record must be a JSON object", &[])));
            continue;
        };
        if r.pointer("/attributes/type").and_then(Value::as_str) != Some(object) {
            results.push(Err(rec_err(
                "INVALID_TYPE",
                format!("sObject type must be {object}, as the request URI names"),
                &[],
            )));
            continue;
        }
        if m.contains_key("Id") || m.contains_key("id") {
            results.push(Err(rec_err(
                "INVALID_FIELD",
                "Only external ids are supported, not record ids",
                &["Id"],
            )));
            continue;
        }
        let Some(key) = m.get(field).and_then(Value::as_str).filter(|k| !k.is_empty()) else {
            results.push(Err(rec_err("MISSING_ARGUMENT", format!("{field} not specified"), &[field])));
            continue;
        };
        let existing = db.object(object).and_then(|obj| {
            obj.index
                .values()
                .filter_map(|&slot| obj.record(slot))
                .filter(|rec| !rec.deleted)
                .map(|rec| obj.to_map(rec))
                .find(|map| map.get(field).and_then(Value::as_str) == Some(key))
                .and_then(|map| map.get("Id").and_then(Value::as_str).map(str::to_owned))
        });
        let result = match existing {
            Some(id) => {
                write_record(shared, &mut db, object, Some(&id), m.clone(), now).map(|id| (id, false))
            }
            None => write_record(shared, &mut db, object, None, m.clone(), now).map(|id| (id, true)),
        };
        results.push(result);
    }
    let failed = results.iter().any(Result::is_err);
    if all_or_none && failed {
        db.rollback_to(mark);
    }
    db.end();
    drop(db);
    let out: Vec<Value> = results
        .iter()
        .map(|r| match r {
            Ok((id, created)) if all_or_none && failed => json!({
                "id": id, "success": false, "created": created,
                "errors": errors_json(&rec_err(
                    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                    "Record rolled back because not all records were valid and the request was using AllOrNone header",
                    &[],
                )),
            }),
            Ok((id, created)) => json!({ "id": id, "success": true, "errors": [], "created": created }),
            Err(e) => json!({ "success": false, "errors": errors_json(e) }),
        })
        .collect();
    Reply::json(200, &Value::Array(out))
}

fn collections(shared: &Shared, body: &[u8], update: bool, force_all_or_none: bool) -> Reply {
    let req = match parse_object(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let all_or_none = force_all_or_none || req.get("allOrNone").and_then(Value::as_bool).unwrap_or(false);
    let Some(records) = req.get("records").and_then(Value::as_array) else {
        return Reply::error(400, "INVALID_FIELD", "Missing required field: records");
    };
    if records.len() > COLLECTION_LIMIT {
        return Reply::error(
            400,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        );
    }
    let now = shared.now_ms();
    let mut db = shared.db_mut();
    // Unknown fields fail the whole request before anything is written.
    for r in records {
        if let (Some(m), Some(t)) = (r.as_object(), r.pointer("/attributes/type").and_then(Value::as_str))
            && let Some(obj) = db.object(t)
            && let Some(reply) = unknown_field(obj, m)
        {
            return reply;
        }
    }
    let mark = db.begin();
    let mut results: Vec<Result<String, RecErr>> = Vec::with_capacity(records.len());
    for r in records {
        let Some(m) = r.as_object() else {
            results.push(Err(rec_err("JSON_PARSER_ERROR", "each record must be a JSON object", &[])));
            continue;
        };
        let Some(object) = r.pointer("/attributes/type").and_then(Value::as_str) else {
            results.push(Err(rec_err("INVALID_TYPE", "sObject type must be given in attributes.type", &[])));
            continue;
        };
        let id = m.get("Id").or_else(|| m.get("id")).and_then(Value::as_str).map(str::to_owned);
        let result = match (update, id) {
            (true, None) => Err(rec_err("MISSING_ARGUMENT", "Id not specified in an update call", &[])),
            (false, Some(_)) => Err(rec_err(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                "cannot specify Id in an insert call",
                &["Id"],
            )),
            (true, Some(id)) => write_record(shared, &mut db, object, Some(&id), m.clone(), now),
            (false, None) => write_record(shared, &mut db, object, None, m.clone(), now),
        };
        results.push(result);
    }
    let failed = results.iter().any(Result::is_err);
    if all_or_none && failed {
        db.rollback_to(mark);
    }
    db.end();
    drop(db);
    let rolled_back = rec_err(
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using AllOrNone header",
        &[],
    );
    let out: Vec<Value> = results
        .iter()
        .map(|r| match r {
            Ok(id) if all_or_none && failed => {
                json!({ "id": id, "success": false, "errors": errors_json(&rolled_back) })
            }
            Ok(id) => json!({ "id": id, "success": true, "errors": [] }),
            Err(e) => json!({ "success": false, "errors": errors_json(e) }),
        })
        .collect();
    Reply::json(200, &Value::Array(out))
}

// ----- Composite -----

/// Replaces `@{ref.path}` references with values from earlier subrequest results.
fn resolve_refs(text: &str, results: &[(String, u16, Value)]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("@{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let expr = &after[..end];
        let (name, path) = expr.split_once('.').unwrap_or((expr, ""));
        let Some((_, status, body)) = results.iter().find(|(r, _, _)| r == name) else {
            return Err(format!(
                "Invalid reference specified. No value for {expr} found in {name}. Provided referenceId ('{name}') must start with a letter or a number, and it can contain only letters, numbers and underscores ('_')."
            ));
        };
        if *status >= 400 {
            return Err(format!("Invalid reference specified. No value for {expr} found in {name}."));
        }
        let mut cur = body;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            let (key, index) = match part.split_once('[') {
                Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            if !key.is_empty() {
                cur = cur.get(key).ok_or_else(|| {
                    format!("Invalid reference specified. No value for {expr} found in {name}.")
                })?;
            }
            if let Some(i) = index {
                cur = cur.get(i).ok_or_else(|| {
                    format!("Invalid reference specified. No value for {expr} found in {name}.")
                })?;
            }
        }
        match cur {
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve_value(v: &Value, results: &[(String, u16, Value)]) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(resolve_refs(s, results)?),
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| resolve_value(i, results)).collect::<Result<_, _>>()?)
        }
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                out.insert(k.clone(), resolve_value(v, results)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

fn composite(shared: &Shared, _version: &str, body: &[u8]) -> Reply {
    let req = match parse_object(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let all_or_none = req.get("allOrNone").and_then(Value::as_bool).unwrap_or(false);
    let Some(subs) = req.get("compositeRequest").and_then(Value::as_array) else {
        return Reply::error(400, "JSON_PARSER_ERROR", "compositeRequest is required");
    };
    if subs.len() > COMPOSITE_LIMIT {
        return Reply::error(400, "LIMIT_EXCEEDED", "Exceeded max limit of subrequests: 25");
    }
    // At most five of them may be queries (Query, QueryAll, query more) or sObject Collections.
    let heavy = subs
        .iter()
        .filter_map(|s| s.get("url").and_then(Value::as_str))
        .filter(|url| is_query_or_collection(url))
        .count();
    if heavy > COMPOSITE_QUERY_LIMIT {
        return Reply::error(
            400,
            "LIMIT_EXCEEDED",
            "Exceeded max limit of query and sObject Collections subrequests: 5",
        );
    }
    for s in subs {
        let ok = s.get("method").and_then(Value::as_str).is_some()
            && s.get("url").and_then(Value::as_str).is_some()
            && s.get("referenceId").and_then(Value::as_str).is_some();
        if !ok {
            return Reply::error(
                400,
                "JSON_PARSER_ERROR",
                "Each subrequest needs method, url and referenceId",
            );
        }
    }
    let mark = shared.db_mut().begin();
    let mut results: Vec<(String, u16, Value)> = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    let mut halted = false;
    let halted_body = json!([{ "errorCode": "PROCESSING_HALTED", "message": "The transaction was rolled back since another operation in the same transaction failed." }]);
    for s in subs {
        let reference = s.get("referenceId").and_then(Value::as_str).unwrap_or_default().to_owned();
        if halted {
            out.push(json!({ "body": halted_body, "httpHeaders": {}, "httpStatusCode": 400, "referenceId": reference }));
            continue;
        }
        let method = s.get("method").and_then(Value::as_str).unwrap_or_default().to_ascii_uppercase();
        let url = s.get("url").and_then(Value::as_str).unwrap_or_default();
        let resolved = resolve_refs(url, &results).and_then(|u| {
            let body = match s.get("body") {
                Some(b) => Some(resolve_value(b, &results)?),
                None => None,
            };
            Ok((u, body))
        });
        let reply = match resolved {
            Ok((url, body)) => {
                let bytes = body.map(|b| serde_json::to_vec(&b).unwrap_or_default()).unwrap_or_default();
                let batch = s
                    .pointer("/httpHeaders/Sforce-Query-Options")
                    .and_then(Value::as_str)
                    .and_then(|v| v.split_once('=').and_then(|(_, n)| n.trim().parse::<usize>().ok()))
                    .map(|n| n.clamp(200, 2000));
                dispatch(shared, &method, &url, batch, &bytes, all_or_none)
            }
            Err(message) => Reply::error(400, "PROCESSING_HALTED", &message),
        };
        let body: Value = if reply.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
        };
        let headers: Map<String, Value> =
            reply.headers.iter().map(|(k, v)| ((*k).to_owned(), Value::String(v.clone()))).collect();
        let failed = reply.status >= 400
            || (body
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r.get("success") == Some(&Value::Bool(false)))));
        out.push(json!({ "body": body, "httpHeaders": headers, "httpStatusCode": reply.status, "referenceId": reference }));
        results.push((reference, reply.status, body));
        if all_or_none && failed {
            halted = true;
            let mut db = shared.db_mut();
            db.rollback_to(mark);
            drop(db);
            let last = out.len() - 1;
            for done in out.iter_mut().take(last) {
                done["body"] = halted_body.clone();
                done["httpHeaders"] = json!({});
                done["httpStatusCode"] = json!(400);
            }
        }
    }
    shared.db_mut().end();
    Reply::json(200, &json!({ "compositeResponse": out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_into_urls_and_bodies() {
        let results = vec![
            ("NewLead".to_owned(), 201, json!({ "id": "00Q1" })),
            ("Q".to_owned(), 200, json!({ "records": [{ "Id": "003X" }] })),
        ];
        assert_eq!(resolve_refs("/x/@{NewLead.id}", &results).as_deref(), Ok("/x/00Q1"));
        assert_eq!(resolve_refs("@{Q.records[0].Id}", &results).as_deref(), Ok("003X"));
        assert!(resolve_refs("@{Missing.id}", &results).is_err());
    }

    #[test]
    fn versions() {
        assert!(valid_version("v62.0"));
        assert!(valid_version("v9.10"));
        assert!(!valid_version("v62"));
        assert!(!valid_version("62.0"));
    }
}
