//! How stored values are encoded: a one-byte format tag, then the value. Every engine stores
//! these same bytes (sled as its values, PostgreSQL in `bytea` columns).
//!
//! - [`MSGPACK`] (`0x01`): MessagePack through `rmp-serde`, structs as maps with field names, so
//!   a field added with `#[serde(default)]` reads old values and a field removed is ignored, as
//!   with JSON. Self-describing, so `serde_json::Value`, internally tagged enums and skipped
//!   fields work as they do in JSON. About a third smaller than JSON and cheaper to write.
//! - untagged JSON: schema 1 wrote JSON with no tag. A JSON text never starts with a byte below
//!   `0x09`, so such values are recognised and still read (a half-migrated store reads both).
//!
//! A new encoding gets the next tag; readers keep every tag they ever wrote.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The tag of MessagePack values.
pub const MSGPACK: u8 = 0x01;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode: {0}")]
    Decode(String),
    #[error("unknown value format tag {0:#04x} (written by a newer leadloop?)")]
    UnknownTag(u8),
}

/// Encodes `value` in the current format.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(128);
    out.push(MSGPACK);
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a value in any format this build knows.
pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, CodecError> {
    match raw.first().copied() {
        Some(MSGPACK) => rmp_serde::from_slice(&raw[1..]).map_err(|e| CodecError::Decode(e.to_string())),
        Some(tag) if is_json_start(tag) => {
            serde_json::from_slice(raw).map_err(|e| CodecError::Decode(format!("JSON: {e}")))
        }
        Some(tag) => Err(CodecError::UnknownTag(tag)),
        None => Err(CodecError::Decode("empty value".into())),
    }
}

/// Whether `raw` is in the current format (migrations skip values already converted).
pub fn is_current(raw: &[u8]) -> bool {
    raw.first() == Some(&MSGPACK)
}

fn is_json_start(byte: u8) -> bool {
    matches!(
        byte,
        b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n' | b' ' | b'\t' | b'\n' | b'\r'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadloop_core::{Effect, IdempotencyKey, LeadId, OutboxEntry};

    fn entry() -> OutboxEntry {
        let effect = Effect::Email {
            kind: "sla.alert".into(),
            template: "sla_alert".into(),
            to: vec!["rep@x.example".into()],
            cc: vec![],
            lead_id: Some(LeadId::new("00Q1")),
            vars: serde_json::json!({ "lead": { "name": "Ana", "score": 68.0, "n": 3, "tags": [null, true] } }),
            deliver_to: None,
        };
        OutboxEntry::new(
            IdempotencyKey::parse("sla/00Q1/1/alert").expect("valid key"),
            effect,
            chrono::DateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn values_round_trip_and_shrink() {
        let entry = entry();
        let packed = encode(&entry).expect("encode");
        assert_eq!(packed[0], MSGPACK);
        assert_eq!(decode::<OutboxEntry>(&packed).expect("decode"), entry);
        let json = serde_json::to_vec(&entry).expect("json");
        assert!(packed.len() < json.len(), "{} bytes packed, {} as JSON", packed.len(), json.len());
    }

    #[test]
    fn schema_1_json_is_still_read() {
        let entry = entry();
        let json = serde_json::to_vec(&entry).expect("json");
        assert!(!is_current(&json));
        assert_eq!(decode::<OutboxEntry>(&json).expect("decode"), entry);
        assert_eq!(decode::<serde_json::Value>(b"null").expect("decode"), serde_json::Value::Null);
    }

    #[test]
    fn an_unknown_tag_is_named() {
        let error = decode::<OutboxEntry>(&[0x02, 0x90]).expect_err("unknown");
        assert!(error.to_string().contains("0x02"), "{error}");
    }
}
