//! Portable, checksummed backups: `leadloop export FILE` / `leadloop import FILE`.
//!
//! The file is JSON lines: a header, one line per record in the store's deterministic order,
//! and a trailer with the record count and the SHA-256 of every byte before it. Exporting,
//! importing into an empty store and exporting again yields the same file. Derived indexes
//! (timer reverse index, outbox ready index) are not exported; import rebuilds them.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Record, Result, SCHEMA_VERSION, Store, StoreError};

const FORMAT: &str = "leadloop-export";
const FORMAT_VERSION: u32 = 1;
/// Records per durable write during import: bounds memory and the size of each batch.
const IMPORT_CHUNK: usize = 5_000;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    schema: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename = "end")]
struct Trailer {
    records: u64,
    sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub records: u64,
    pub sha256: String,
}

fn backup_err(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError::Backup(format!("{}: {what}", path.display()))
}

/// Writes every record of `store` to `path` (through a temporary file renamed into place).
/// The file holds personal data, so only its owner may read it (0600); a failed export leaves
/// no partial file behind.
pub async fn export(store: &dyn Store, path: &Path) -> Result<ExportSummary> {
    let tmp = path.with_extension("partial");
    let written = export_to(store, path, &tmp).await;
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

async fn export_to(store: &dyn Store, path: &Path, tmp: &Path) -> Result<ExportSummary> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = tmp.to_path_buf();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| backup_err(&tmp, e))?;
    let mut out = HashingWriter { inner: BufWriter::new(file), hasher: Sha256::new() };
    let header = Header { format: FORMAT.into(), version: FORMAT_VERSION, schema: SCHEMA_VERSION };
    write_line(&mut out, &header).map_err(|e| backup_err(&tmp, e))?;
    let mut records = 0u64;
    store
        .scan(&mut |record| {
            records += 1;
            write_line(&mut out, &record).map_err(|e| backup_err(&tmp, e))
        })
        .await?;
    let sha256 = hex(&out.hasher.clone().finalize());
    let trailer = Trailer { records, sha256: sha256.clone() };
    let mut inner = out.inner;
    serde_json::to_writer(&mut inner, &trailer).map_err(|e| backup_err(&tmp, e))?;
    inner.write_all(b"\n").map_err(|e| backup_err(&tmp, e))?;
    let file = inner.into_inner().map_err(|e| backup_err(&tmp, e.error()))?;
    file.sync_all().map_err(|e| backup_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| backup_err(path, e))?;
    Ok(ExportSummary { records, sha256 })
}

/// Verifies the file whole (header, count, checksum), then loads it into `store`, which must
/// be empty. Nothing is written unless the file verifies.
pub async fn import(store: &dyn Store, path: &Path) -> Result<ExportSummary> {
    let summary = verify(path)?;
    if !store.is_empty().await? {
        return Err(backup_err(
            path,
            "the state directory is not empty; import only into a fresh state directory",
        ));
    }
    let file = File::open(path).map_err(|e| backup_err(path, e))?;
    let mut lines = BufReader::new(file).lines();
    let header: Header = match lines.next() {
        Some(Ok(line)) => {
            serde_json::from_str(&line).map_err(|e| backup_err(path, format!("line 1: {e}")))?
        }
        _ => return Err(backup_err(path, "line 1: no header")),
    };
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
    for (index, line) in (&mut lines).take(summary.records as usize).enumerate() {
        let line = line.map_err(|e| backup_err(path, e))?;
        let record: Record =
            serde_json::from_str(&line).map_err(|e| backup_err(path, format!("line {}: {e}", index + 2)))?;
        // An export from schema 1 is read as the schema-1 store would be migrated.
        if header.schema < 2 {
            if crate::migrate::v1_record_dropped(&record) {
                continue;
            }
            if let Some(seen) = crate::migrate::v1_seen_from(&record) {
                chunk.push(seen);
            }
        }
        chunk.push(record);
        if chunk.len() == IMPORT_CHUNK {
            store.load(std::mem::take(&mut chunk)).await?;
        }
    }
    if !chunk.is_empty() {
        store.load(chunk).await?;
    }
    Ok(summary)
}

/// Checks header, record count and checksum without loading anything.
pub fn verify(path: &Path) -> Result<ExportSummary> {
    let file = File::open(path).map_err(|e| backup_err(path, e))?;
    let mut reader = BufReader::new(file);
    let mut hasher = Sha256::new();
    let mut line = String::new();
    let mut number = 0u64;
    let mut trailer = None;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|e| backup_err(path, e))?;
        if read == 0 {
            break;
        }
        number += 1;
        if trailer.is_some() {
            return Err(backup_err(path, format!("line {number}: data after the trailer")));
        }
        if number == 1 {
            let header: Header = serde_json::from_str(&line)
                .map_err(|e| backup_err(path, format!("line 1: not a leadloop export header: {e}")))?;
            if header.format != FORMAT || header.version != FORMAT_VERSION {
                return Err(backup_err(
                    path,
                    format!("unsupported export format {} v{}", header.format, header.version),
                ));
            }
            if header.schema > SCHEMA_VERSION {
                return Err(backup_err(
                    path,
                    format!("exported from schema {}, newer than {SCHEMA_VERSION}", header.schema),
                ));
            }
        } else if line.starts_with("{\"t\":\"end\"") {
            let parsed: Trailer = serde_json::from_str(&line)
                .map_err(|e| backup_err(path, format!("line {number}: bad trailer: {e}")))?;
            trailer = Some(parsed);
            continue;
        }
        hasher.update(line.as_bytes());
    }
    let trailer = trailer.ok_or_else(|| backup_err(path, "no trailer: the file is truncated"))?;
    let records = number.saturating_sub(2);
    if records != trailer.records {
        return Err(backup_err(
            path,
            format!("trailer counts {} records, file has {records}", trailer.records),
        ));
    }
    let sha256 = hex(&hasher.finalize());
    if sha256 != trailer.sha256 {
        return Err(backup_err(
            path,
            format!("checksum mismatch: trailer says {}, content is {sha256}", trailer.sha256),
        ));
    }
    Ok(ExportSummary { records, sha256 })
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_line<W: Write, T: Serialize>(out: &mut W, value: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
