//! The emulator's record store: one `ObjectStore` per sObject type, records kept compactly (the
//! system fields in a fixed header, every other field in one encoded byte blob), an index
//! ordered by `(SystemModstamp, Id)` so incremental queries are range scans, the delete log
//! that `getDeleted` reads, and an undo log for all-or-none writes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde_json::{Map, Value};

/// Index of a record in its object's `records` vector.
pub(crate) type Slot = u32;

/// How a field's values compare and what literals a filter on it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldType {
    Id,
    Reference,
    Text,
    Bool,
    Int,
    Date,
    DateTime,
    /// Custom fields: whatever was written.
    Any,
}

/// The header fields every record has, at these indexes in every object's field list.
pub(crate) const F_ID: u16 = 0;
pub(crate) const F_CREATED: u16 = 1;
pub(crate) const F_MODIFIED: u16 = 2;
pub(crate) const F_STAMP: u16 = 3;
pub(crate) const F_DELETED: u16 = 4;
const HEADER_FIELDS: u16 = 5;

#[derive(Debug, Clone)]
pub(crate) struct FieldDef {
    pub name: String,
    pub ty: FieldType,
    /// Whether API writes may set it (system and formula fields may not).
    pub writable: bool,
}

/// A decoded field value borrowed from a record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    /// Arrays and objects, kept as JSON text.
    Json(&'a str),
    /// A datetime held as milliseconds since the epoch (the header fields).
    Time(i64),
}

#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub id: Arc<str>,
    pub created: i64,
    pub modified: i64,
    pub stamp: i64,
    pub deleted: bool,
    /// `(field index u16 LE, tag u8, payload)*`; absent fields are null.
    pub data: Box<[u8]>,
}

const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_INT: u8 = 3;
const TAG_FLOAT: u8 = 4;
const TAG_STR: u8 = 5;
const TAG_JSON: u8 = 6;

impl Record {
    /// Iterates the blob's `(field, value)` entries.
    pub fn entries(&self) -> Entries<'_> {
        Entries { data: &self.data, pos: 0 }
    }

    /// The value of field `f` (header or blob).
    pub fn get(&self, f: u16) -> Val<'_> {
        match f {
            F_ID => Val::Str(&self.id),
            F_CREATED => Val::Time(self.created),
            F_MODIFIED => Val::Time(self.modified),
            F_STAMP => Val::Time(self.stamp),
            F_DELETED => Val::Bool(self.deleted),
            _ => self.entries().find(|(field, _)| *field == f).map(|(_, v)| v).unwrap_or(Val::Null),
        }
    }
}

pub(crate) struct Entries<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (u16, Val<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let d = self.data;
        let p = self.pos;
        let field = u16::from_le_bytes([*d.get(p)?, *d.get(p + 1)?]);
        let tag = *d.get(p + 2)?;
        let body = p + 3;
        let (val, end) = match tag {
            TAG_FALSE => (Val::Bool(false), body),
            TAG_TRUE => (Val::Bool(true), body),
            TAG_INT => (Val::Int(i64::from_le_bytes(d.get(body..body + 8)?.try_into().ok()?)), body + 8),
            TAG_FLOAT => (Val::Float(f64::from_le_bytes(d.get(body..body + 8)?.try_into().ok()?)), body + 8),
            TAG_STR | TAG_JSON => {
                let len = u32::from_le_bytes(d.get(body..body + 4)?.try_into().ok()?) as usize;
                let text = std::str::from_utf8(d.get(body + 4..body + 4 + len)?).ok()?;
                (if tag == TAG_STR { Val::Str(text) } else { Val::Json(text) }, body + 4 + len)
            }
            _ => return None,
        };
        self.pos = end;
        Some((field, val))
    }
}

/// Encodes owned values into a record blob (null values are left out).
fn encode(values: &[(u16, Value)]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(values.len() * 16);
    for (field, value) in values {
        let start = out.len();
        out.extend_from_slice(&field.to_le_bytes());
        match value {
            Value::Null => {
                out.truncate(start);
            }
            Value::Bool(b) => out.push(if *b { TAG_TRUE } else { TAG_FALSE }),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    out.push(TAG_INT);
                    out.extend_from_slice(&i.to_le_bytes());
                } else {
                    out.push(TAG_FLOAT);
                    out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
                }
            }
            Value::String(s) => push_text(&mut out, TAG_STR, s),
            other => push_text(&mut out, TAG_JSON, &other.to_string()),
        }
    }
    out.into_boxed_slice()
}

fn push_text(out: &mut Vec<u8>, tag: u8, s: &str) {
    out.push(tag);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Builds a record blob directly (the seeding fast path: no intermediate maps or values).
#[derive(Debug, Default)]
pub(crate) struct BlobBuilder {
    out: Vec<u8>,
}

impl BlobBuilder {
    pub fn with_capacity(n: usize) -> Self {
        BlobBuilder { out: Vec::with_capacity(n) }
    }

    pub fn text(&mut self, field: u16, s: &str) -> &mut Self {
        self.out.extend_from_slice(&field.to_le_bytes());
        push_text(&mut self.out, TAG_STR, s);
        self
    }

    pub fn int(&mut self, field: u16, i: i64) -> &mut Self {
        self.out.extend_from_slice(&field.to_le_bytes());
        self.out.push(TAG_INT);
        self.out.extend_from_slice(&i.to_le_bytes());
        self
    }

    pub fn boolean(&mut self, field: u16, b: bool) -> &mut Self {
        self.out.extend_from_slice(&field.to_le_bytes());
        self.out.push(if b { TAG_TRUE } else { TAG_FALSE });
        self
    }

    pub fn finish(&mut self) -> Box<[u8]> {
        let out = std::mem::take(&mut self.out).into_boxed_slice();
        self.out = Vec::with_capacity(out.len() + 16);
        out
    }
}

/// Turns a borrowed value back into JSON.
pub(crate) fn val_to_json(v: Val<'_>) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(b),
        Val::Int(i) => Value::from(i),
        Val::Float(f) => serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null),
        Val::Str(s) => Value::String(s.to_owned()),
        Val::Json(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        Val::Time(ms) => Value::String(format_datetime(ms)),
    }
}

/// Writes a value as JSON text.
pub(crate) fn write_val(out: &mut Vec<u8>, v: Val<'_>) {
    match v {
        Val::Null => out.extend_from_slice(b"null"),
        Val::Bool(true) => out.extend_from_slice(b"true"),
        Val::Bool(false) => out.extend_from_slice(b"false"),
        Val::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Val::Float(f) => {
            if serde_json::to_writer(&mut *out, &f).is_err() {
                out.extend_from_slice(b"null");
            }
        }
        Val::Str(s) => write_json_str(out, s),
        Val::Json(s) => out.extend_from_slice(s.as_bytes()),
        Val::Time(ms) => {
            out.push(b'"');
            write_datetime(out, ms);
            out.push(b'"');
        }
    }
}

/// Writes a JSON string literal, escaping as needed.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// Salesforce's datetime format: `2026-11-23T16:35:33.000+0000`.
pub(crate) fn format_datetime(ms: i64) -> String {
    let mut out = Vec::with_capacity(28);
    write_datetime(&mut out, ms);
    String::from_utf8(out).unwrap_or_default()
}

fn write_datetime(out: &mut Vec<u8>, ms: i64) {
    let Some(t) = DateTime::<Utc>::from_timestamp_millis(ms) else {
        out.extend_from_slice(b"1970-01-01T00:00:00.000+0000");
        return;
    };
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+0000",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.timestamp_subsec_millis()
    );
}

/// Parses the datetime forms SOQL and the REST API accept.
pub(crate) fn parse_datetime(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.timestamp_millis());
        }
    }
    None
}

pub(crate) fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// The 18-character case-insensitive form of a 15-character Salesforce Id.
fn with_checksum(id15: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let bytes = id15.as_bytes();
    let mut out = String::with_capacity(18);
    out.push_str(id15);
    for chunk in bytes.chunks(5) {
        let mut flags = 0usize;
        for (j, b) in chunk.iter().enumerate() {
            if b.is_ascii_uppercase() {
                flags |= 1 << j;
            }
        }
        out.push(ALPHABET[flags] as char);
    }
    out
}

/// Formats `n` in base 62 (`0-9A-Za-z`, which sorts like the numbers), zero-padded to `width`.
fn base62(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut buf = vec![b'0'; width];
    for slot in buf.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// One undoable change, recorded while an all-or-none operation runs.
#[derive(Debug)]
enum Undo {
    Inserted { object: usize, slot: Slot },
    Updated { object: usize, slot: Slot, old: Record },
    Deleted { object: usize, slot: Slot },
}

/// The records of one sObject type.
#[derive(Debug)]
pub(crate) struct ObjectStore {
    pub name: &'static str,
    pub prefix: &'static str,
    pub fields: Vec<FieldDef>,
    by_lower: HashMap<String, u16>,
    by_exact: HashMap<String, u16>,
    pub records: Vec<Record>,
    ids: HashMap<Arc<str>, Slot>,
    /// Live records ordered by `(SystemModstamp, Id)`.
    pub index: BTreeMap<(i64, Arc<str>), Slot>,
    /// The delete log, oldest first: `(id, deletedDate ms)`.
    pub deleted_log: VecDeque<(Arc<str>, i64)>,
    /// The latest deletedDate already purged from the log, if any.
    pub purged_until: Option<i64>,
    next_seq: u64,
}

impl ObjectStore {
    fn new(name: &'static str, prefix: &'static str, fields: &[(&str, FieldType, bool)]) -> Self {
        let mut store = ObjectStore {
            name,
            prefix,
            fields: Vec::new(),
            by_lower: HashMap::new(),
            by_exact: HashMap::new(),
            records: Vec::new(),
            ids: HashMap::new(),
            index: BTreeMap::new(),
            deleted_log: VecDeque::new(),
            purged_until: None,
            next_seq: 1,
        };
        let header = [
            ("Id", FieldType::Id, false),
            ("CreatedDate", FieldType::DateTime, false),
            ("LastModifiedDate", FieldType::DateTime, false),
            ("SystemModstamp", FieldType::DateTime, false),
            ("IsDeleted", FieldType::Bool, false),
        ];
        for (name, ty, writable) in header.iter().chain(fields.iter()) {
            store.add_field(name, *ty, *writable);
        }
        store
    }

    fn add_field(&mut self, name: &str, ty: FieldType, writable: bool) -> u16 {
        let idx = self.fields.len() as u16;
        self.fields.push(FieldDef { name: name.to_owned(), ty, writable });
        self.by_lower.insert(name.to_ascii_lowercase(), idx);
        self.by_exact.insert(name.to_owned(), idx);
        idx
    }

    /// The index of a field, by case-insensitive name.
    pub fn field(&self, name: &str) -> Option<u16> {
        if let Some(&idx) = self.by_exact.get(name) {
            return Some(idx);
        }
        self.by_lower.get(&name.to_ascii_lowercase()).copied()
    }

    /// Declares a custom field (or any field, for trusted library writes) if it is new.
    pub fn declare(&mut self, name: &str) -> u16 {
        match self.field(name) {
            Some(idx) => idx,
            None => self.add_field(name, FieldType::Any, true),
        }
    }

    pub fn slot(&self, id: &str) -> Option<Slot> {
        self.ids.get(id).copied()
    }

    pub fn record(&self, slot: Slot) -> Option<&Record> {
        self.records.get(slot as usize)
    }

    /// A live record by Id.
    pub fn live(&self, id: &str) -> Option<&Record> {
        self.slot(id).and_then(|s| self.record(s)).filter(|r| !r.deleted)
    }

    /// Whether `id` names a record of this object that was deleted.
    pub fn is_deleted(&self, id: &str) -> bool {
        self.slot(id).and_then(|s| self.record(s)).is_some_and(|r| r.deleted)
    }

    fn new_id(&mut self) -> String {
        loop {
            let seq = self.next_seq;
            self.next_seq += 1;
            let id = with_checksum(&format!("{}5g{}", self.prefix, base62(seq, 10)));
            if !self.ids.contains_key(id.as_str()) {
                return id;
            }
        }
    }

    /// The whole record as JSON: the header fields and every set field.
    pub fn to_map(&self, rec: &Record) -> Map<String, Value> {
        let mut map = Map::new();
        for f in 0..HEADER_FIELDS {
            map.insert(self.fields[f as usize].name.clone(), val_to_json(rec.get(f)));
        }
        for (f, v) in rec.entries() {
            if let Some(def) = self.fields.get(f as usize) {
                map.insert(def.name.clone(), val_to_json(v));
            }
        }
        map
    }

    /// Applies `fields` over the record's current blob and re-derives computed fields.
    fn merged_blob(&mut self, old: Option<&Record>, fields: Map<String, Value>) -> Box<[u8]> {
        let mut values: Vec<(u16, Value)> =
            old.map(|r| r.entries().map(|(f, v)| (f, val_to_json(v))).collect()).unwrap_or_default();
        let touched = |n: &str| fields.keys().any(|k| k.eq_ignore_ascii_case(n));
        let names = touched("FirstName") || touched("LastName");
        let status = touched("Status") && !touched("IsClosed");
        for (name, value) in fields {
            let f = self.declare(&name);
            if f < HEADER_FIELDS {
                continue;
            }
            match values.iter_mut().find(|(field, _)| *field == f) {
                Some(slot) => slot.1 = value,
                None => values.push((f, value)),
            }
        }
        self.derive(&mut values, names, status);
        encode(&values)
    }

    /// Computed fields: `Name` from first and last names; `Task.IsClosed` from its status.
    fn derive(&self, values: &mut Vec<(u16, Value)>, names: bool, status: bool) {
        let get = |values: &Vec<(u16, Value)>, f: Option<u16>| {
            f.and_then(|f| values.iter().find(|(x, _)| *x == f))
                .and_then(|(_, v)| v.as_str().map(str::to_owned))
        };
        let set =
            |values: &mut Vec<(u16, Value)>, f: u16, v: Value| match values.iter_mut().find(|(x, _)| *x == f)
            {
                Some(slot) => slot.1 = v,
                None => values.push((f, v)),
            };
        if names && matches!(self.name, "Lead" | "Contact" | "User") {
            let first = get(values, self.field("FirstName")).unwrap_or_default();
            let last = get(values, self.field("LastName")).unwrap_or_default();
            let name = format!("{first} {last}").trim().to_owned();
            if let Some(f) = self.field("Name") {
                set(values, f, if name.is_empty() { Value::Null } else { Value::String(name) });
            }
        }
        if status && self.name == "Task" {
            let closed = get(values, self.field("Status")).as_deref() == Some("Completed");
            if let Some(f) = self.field("IsClosed") {
                set(values, f, Value::Bool(closed));
            }
        }
    }
}

/// Every object the emulator knows.
#[derive(Debug)]
pub(crate) struct Db {
    pub objects: Vec<ObjectStore>,
    undo: Vec<Undo>,
    undo_depth: u32,
    /// Change Data Capture: the events the writes published.
    pub events: crate::events::EventLog,
}

/// The objects, their Id prefixes and standard fields.
fn standard_objects() -> Vec<ObjectStore> {
    use FieldType::*;
    vec![
        ObjectStore::new(
            "Lead",
            "00Q",
            &[
                ("FirstName", Text, true),
                ("LastName", Text, true),
                ("Name", Text, false),
                ("Email", Text, true),
                ("Company", Text, true),
                ("Title", Text, true),
                ("Industry", Text, true),
                ("NumberOfEmployees", Int, true),
                ("Country", Text, true),
                ("City", Text, true),
                ("State", Text, true),
                ("Website", Text, true),
                ("LeadSource", Text, true),
                ("Status", Text, true),
                ("OwnerId", Reference, true),
                ("HasOptedOutOfEmail", Bool, true),
                ("IsConverted", Bool, true),
                ("ConvertedAccountId", Reference, true),
                ("ConvertedContactId", Reference, true),
                ("ConvertedDate", Date, true),
                ("Rating", Text, true),
                ("Phone", Text, true),
                ("Description", Text, true),
            ],
        ),
        ObjectStore::new(
            "Contact",
            "003",
            &[
                ("FirstName", Text, true),
                ("LastName", Text, true),
                ("Name", Text, false),
                ("Email", Text, true),
                ("AccountId", Reference, true),
                ("OwnerId", Reference, true),
                ("Title", Text, true),
                ("Phone", Text, true),
                ("HasOptedOutOfEmail", Bool, true),
            ],
        ),
        ObjectStore::new(
            "User",
            "005",
            &[
                ("Username", Text, true),
                ("Email", Text, true),
                ("FirstName", Text, true),
                ("LastName", Text, true),
                ("Name", Text, false),
                ("ManagerId", Reference, true),
                ("TimeZoneSidKey", Text, true),
                ("IsActive", Bool, true),
                ("Title", Text, true),
            ],
        ),
        ObjectStore::new(
            "Task",
            "00T",
            &[
                ("Subject", Text, true),
                ("Status", Text, true),
                ("WhoId", Reference, true),
                ("WhatId", Reference, true),
                ("OwnerId", Reference, true),
                ("ActivityDate", Date, true),
                ("IsClosed", Bool, false),
                ("Priority", Text, true),
                ("Type", Text, true),
                ("TaskSubtype", Text, true),
                ("Description", Text, true),
            ],
        ),
        ObjectStore::new(
            "Account",
            "001",
            &[
                ("Name", Text, true),
                ("OwnerId", Reference, true),
                ("Website", Text, true),
                ("Industry", Text, true),
                ("NumberOfEmployees", Int, true),
                ("BillingCountry", Text, true),
            ],
        ),
        ObjectStore::new(
            "Group",
            "00G",
            &[
                ("Name", Text, true),
                ("Type", Text, true),
                ("DeveloperName", Text, true),
                ("Email", Text, true),
            ],
        ),
    ]
}

impl Db {
    pub fn new() -> Self {
        Db { objects: standard_objects(), undo: Vec::new(), undo_depth: 0, events: Default::default() }
    }

    /// The index of an object by case-insensitive name.
    pub fn object_index(&self, name: &str) -> Option<usize> {
        self.objects.iter().position(|o| o.name.eq_ignore_ascii_case(name))
    }

    pub fn object(&self, name: &str) -> Option<&ObjectStore> {
        self.object_index(name).map(|i| &self.objects[i])
    }

    pub fn object_mut(&mut self, name: &str) -> Option<&mut ObjectStore> {
        self.object_index(name).map(|i| &mut self.objects[i])
    }

    /// The object an Id belongs to, by its three-character prefix.
    pub fn object_of_id(&self, id: &str) -> Option<&ObjectStore> {
        let prefix = id.get(..3)?;
        self.objects.iter().find(|o| o.prefix == prefix)
    }

    /// Starts recording undo entries; returns a mark for [`Db::rollback_to`].
    pub fn begin(&mut self) -> usize {
        self.undo_depth += 1;
        self.undo.len()
    }

    /// Ends the innermost all-or-none scope (keeping its changes).
    pub fn end(&mut self) {
        self.undo_depth = self.undo_depth.saturating_sub(1);
        if self.undo_depth == 0 {
            self.undo.clear();
            self.events.commit_pending();
        }
    }

    /// Undoes every change recorded after `mark`, newest first.
    pub fn rollback_to(&mut self, mark: usize) {
        self.events.rollback_to(mark);
        while self.undo.len() > mark {
            let Some(entry) = self.undo.pop() else { break };
            match entry {
                Undo::Inserted { object, slot } => {
                    let obj = &mut self.objects[object];
                    if let Some(rec) = obj.records.get(slot as usize).cloned() {
                        obj.index.remove(&(rec.stamp, rec.id.clone()));
                        obj.ids.remove(&rec.id);
                        if slot as usize + 1 == obj.records.len() {
                            obj.records.pop();
                        } else if let Some(r) = obj.records.get_mut(slot as usize) {
                            r.deleted = true;
                        }
                    }
                }
                Undo::Updated { object, slot, old } => {
                    let obj = &mut self.objects[object];
                    if let Some(cur) = obj.records.get_mut(slot as usize) {
                        obj.index.remove(&(cur.stamp, cur.id.clone()));
                        obj.index.insert((old.stamp, old.id.clone()), slot);
                        *cur = old;
                    }
                }
                Undo::Deleted { object, slot } => {
                    let obj = &mut self.objects[object];
                    if let Some(cur) = obj.records.get_mut(slot as usize) {
                        cur.deleted = false;
                        obj.index.insert((cur.stamp, cur.id.clone()), slot);
                        if let Some(pos) = obj.deleted_log.iter().rposition(|(id, _)| *id == cur.id) {
                            obj.deleted_log.remove(pos);
                        }
                    }
                }
            }
        }
    }

    fn record_undo(&mut self, entry: Undo) {
        if self.undo_depth > 0 {
            self.undo.push(entry);
        }
    }

    /// Publishes the change event of the write just made (held until an all-or-none scope
    /// ends).
    fn record_event(
        &mut self,
        oi: usize,
        change_type: &str,
        id: &str,
        fields: &Map<String, Value>,
        now: i64,
    ) {
        if !self.events.enabled {
            return;
        }
        let entity = self.objects[oi].name.to_owned();
        let payload = crate::events::payload(&entity, change_type, vec![id.to_owned()], fields, now);
        let scope = (self.undo_depth > 0).then(|| self.undo.len().saturating_sub(1));
        self.events.record(scope, &entity, payload, now);
    }

    /// Inserts a record (an `Id` in `fields` is kept, otherwise one is generated); stamps the
    /// system dates with `now`. Returns the Id, or `None` for an unknown object or a taken Id.
    pub fn insert(&mut self, object: &str, mut fields: Map<String, Value>, now: i64) -> Option<Arc<str>> {
        let oi = self.object_index(object)?;
        let obj = &mut self.objects[oi];
        let given = fields.remove("Id").and_then(|v| v.as_str().map(str::to_owned));
        let id: Arc<str> = match given {
            Some(id) if obj.ids.contains_key(id.as_str()) => return None,
            Some(id) => Arc::from(id),
            None => Arc::from(obj.new_id()),
        };
        let created = take_time(&mut fields, "CreatedDate").unwrap_or(now);
        let stamp = take_time(&mut fields, "SystemModstamp").unwrap_or(now);
        let modified = take_time(&mut fields, "LastModifiedDate").unwrap_or(stamp);
        fields.remove("IsDeleted");
        let published = self.events.enabled.then(|| fields.clone());
        let obj = &mut self.objects[oi];
        let data = obj.merged_blob(None, fields);
        let slot = obj.records.len() as Slot;
        obj.records.push(Record { id: id.clone(), created, modified, stamp, deleted: false, data });
        obj.ids.insert(id.clone(), slot);
        obj.index.insert((stamp, id.clone()), slot);
        self.record_undo(Undo::Inserted { object: oi, slot });
        if let Some(fields) = published {
            self.record_event(oi, "CREATE", &id, &fields, stamp);
        }
        Some(id)
    }

    /// Inserts a record whose blob was built directly (fields already declared); returns its Id.
    pub fn insert_blob(&mut self, oi: usize, data: Box<[u8]>, now: i64) -> Option<Arc<str>> {
        let obj = self.objects.get_mut(oi)?;
        let id: Arc<str> = Arc::from(obj.new_id());
        let slot = obj.records.len() as Slot;
        obj.records.push(Record {
            id: id.clone(),
            created: now,
            modified: now,
            stamp: now,
            deleted: false,
            data,
        });
        obj.ids.insert(id.clone(), slot);
        obj.index.insert((now, id.clone()), slot);
        self.record_undo(Undo::Inserted { object: oi, slot });
        Some(id)
    }

    /// Updates a live record, bumping `LastModifiedDate` and `SystemModstamp` to `now`.
    pub fn update(&mut self, object: &str, id: &str, fields: &Map<String, Value>, now: i64) -> bool {
        let Some(oi) = self.object_index(object) else { return false };
        let obj = &mut self.objects[oi];
        let Some(slot) = obj.slot(id) else { return false };
        let Some(old) = obj.records.get(slot as usize).cloned() else { return false };
        if old.deleted {
            return false;
        }
        let data = obj.merged_blob(Some(&old), fields.clone());
        let stamp = now.max(old.stamp);
        obj.index.remove(&(old.stamp, old.id.clone()));
        obj.index.insert((stamp, old.id.clone()), slot);
        if let Some(rec) = obj.records.get_mut(slot as usize) {
            rec.data = data;
            rec.stamp = stamp;
            rec.modified = stamp;
        }
        self.record_undo(Undo::Updated { object: oi, slot, old });
        self.record_event(oi, "UPDATE", id, fields, stamp);
        true
    }

    /// Deletes a live record into the delete log with `deletedDate` = `now`.
    pub fn delete(&mut self, object: &str, id: &str, now: i64) -> bool {
        let Some(oi) = self.object_index(object) else { return false };
        let obj = &mut self.objects[oi];
        let Some(slot) = obj.slot(id) else { return false };
        let Some(rec) = obj.records.get_mut(slot as usize) else { return false };
        if rec.deleted {
            return false;
        }
        rec.deleted = true;
        let key = (rec.stamp, rec.id.clone());
        let id = rec.id.clone();
        obj.index.remove(&key);
        obj.deleted_log.push_back((id.clone(), now));
        self.record_undo(Undo::Deleted { object: oi, slot });
        self.record_event(oi, "DELETE", &id, &Map::new(), now);
        true
    }

    /// Drops delete-log entries older than `cutoff`.
    pub fn purge_deleted(&mut self, cutoff: i64) {
        for obj in &mut self.objects {
            while let Some((_, at)) = obj.deleted_log.front() {
                if *at >= cutoff {
                    break;
                }
                let at = *at;
                obj.deleted_log.pop_front();
                obj.purged_until = Some(obj.purged_until.map_or(at, |p| p.max(at)));
            }
        }
    }
}

fn take_time(fields: &mut Map<String, Value>, name: &str) -> Option<i64> {
    fields.remove(name).and_then(|v| v.as_str().and_then(parse_datetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_18_characters_with_the_prefix_and_sort_in_insertion_order() {
        let mut db = Db::new();
        let a = db.insert("Lead", Map::new(), 1).expect("insert");
        let b = db.insert("lead", Map::new(), 1).expect("insert");
        assert_eq!(a.len(), 18);
        assert!(a.starts_with("00Q"));
        assert!(a < b);
    }

    #[test]
    fn checksum_matches_salesforce() {
        // A documented example: 001A0000006Vm9r → 001A0000006Vm9rIAC.
        assert_eq!(with_checksum("001A0000006Vm9r"), "001A0000006Vm9rIAC");
    }

    #[test]
    fn update_merges_fields_and_derives_the_name() {
        let mut db = Db::new();
        let mut m = Map::new();
        m.insert("FirstName".into(), "Ada".into());
        m.insert("LastName".into(), "Lovelace".into());
        m.insert("Interests__c".into(), "a;b".into());
        let id = db.insert("Lead", m, 5).expect("insert");
        let mut u = Map::new();
        u.insert("LastName".into(), "King".into());
        u.insert("Email".into(), Value::Null);
        assert!(db.update("Lead", &id, &u, 9));
        let obj = db.object("Lead").expect("lead");
        let rec = obj.live(&id).expect("live");
        let map = obj.to_map(rec);
        assert_eq!(map["Name"], "Ada King");
        assert_eq!(map["Interests__c"], "a;b");
        assert_eq!(map["SystemModstamp"], format_datetime(9));
        assert_eq!(map["CreatedDate"], format_datetime(5));
    }

    #[test]
    fn rollback_restores_inserts_updates_and_deletes() {
        let mut db = Db::new();
        let id = db.insert("Account", Map::new(), 1).expect("insert");
        let mark = db.begin();
        let mut u = Map::new();
        u.insert("Name".into(), "X".into());
        db.update("Account", &id, &u, 2);
        db.insert("Account", Map::new(), 2);
        db.delete("Account", &id, 3);
        db.rollback_to(mark);
        db.end();
        let obj = db.object("Account").expect("account");
        assert_eq!(obj.index.len(), 1);
        let rec = obj.live(&id).expect("restored");
        assert_eq!(rec.stamp, 1);
        assert_eq!(rec.get(obj.field("Name").expect("name")), Val::Null);
        assert!(obj.deleted_log.is_empty());
    }

    #[test]
    fn datetimes_round_trip_in_salesforce_format() {
        let ms = parse_datetime("2026-11-23T16:35:33.000+0000").expect("parse");
        assert_eq!(format_datetime(ms), "2026-11-23T16:35:33.000+0000");
        assert_eq!(parse_datetime("2026-11-23T17:35:33+01:00"), Some(ms));
        assert_eq!(parse_datetime("2026-11-23T16:35:33Z"), Some(ms));
    }
}
