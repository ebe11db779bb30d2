//! The tables, as migrations embedded in the binary, and how they are applied.
//!
//! `MIGRATIONS[i]` takes a schema from version `i` to `i + 1`; each is plain SQL in which
//! `{schema}` stands for the (validated, quoted) schema name. [`migrate`] applies what is
//! missing in one transaction under a transaction-scoped advisory lock, so of several
//! leadloops starting at once exactly one migrates and the others find the work done; the
//! versions applied are rows of `schema_migrations`. A schema whose version is newer than
//! [`SCHEMA_VERSION`] is refused with both versions named and nothing touched.
//!
//! Layout (version 1). Values are `leadloop_store::codec` bytes (the same as sled's values);
//! every column a query filters or orders by is a real column. Text keys use the `"C"`
//! collation so ordering is byte order, as in sled, and an export is the same file from
//! either engine.
//!
//! ```text
//! leads           id, version, stage, owner (running hand-off's owner or NULL), value
//!                 ├ leads_open_handoff: partial index (id) INCLUDE (owner) WHERE owner IS NOT NULL
//!                 └ triggers keep stage_counts
//! stage_counts    stage → leads in it            (counter rows, kept by trigger)
//! seen            (lead, key)                    activities already taken in
//! people          id, value
//! history         (lead, seq), value             seq per lead, assigned in the transaction
//! timers          key, due (ceiled to the ms), value;  timers_due index (due, key)
//! outbox          key, channel, state, next_attempt (floored to the ms), seq, value
//!                 ├ outbox_ready: partial index (channel, next_attempt, seq, key) WHERE pending
//!                 ├ outbox_held: partial index (channel, seq) WHERE held (version 2)
//!                 └ triggers keep outbox_pending
//! outbox_pending  channel → pending entries      (counter rows, kept by trigger)
//! outbox_seq      sequence: queue order of new entries
//! cursors         name, value
//! suppressions    address (lowercased), value
//! items           (bucket, key), value
//! ```

use crate::PgError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 2;

const V1: &str = r#"
CREATE TABLE {schema}.leads (
    id      text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL,
    stage   text NOT NULL,
    owner   text COLLATE "C",
    value   bytea NOT NULL
);
CREATE INDEX leads_open_handoff ON {schema}.leads (id) INCLUDE (owner) WHERE owner IS NOT NULL;

CREATE TABLE {schema}.stage_counts (
    stage text PRIMARY KEY,
    leads bigint NOT NULL
);

CREATE FUNCTION {schema}.count_stages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO {schema}.stage_counts AS c VALUES (OLD.stage, -1)
            ON CONFLICT (stage) DO UPDATE SET leads = c.leads - 1;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO {schema}.stage_counts AS c VALUES (NEW.stage, 1)
            ON CONFLICT (stage) DO UPDATE SET leads = c.leads + 1;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER leads_count_stages AFTER INSERT OR DELETE ON {schema}.leads
    FOR EACH ROW EXECUTE FUNCTION {schema}.count_stages();
CREATE TRIGGER leads_count_stage_moves AFTER UPDATE OF stage ON {schema}.leads
    FOR EACH ROW WHEN (OLD.stage IS DISTINCT FROM NEW.stage) EXECUTE FUNCTION {schema}.count_stages();

CREATE TABLE {schema}.seen (
    lead text COLLATE "C" NOT NULL,
    key  text COLLATE "C" NOT NULL,
    PRIMARY KEY (lead, key)
);

CREATE TABLE {schema}.people (
    id    text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE {schema}.history (
    lead  text COLLATE "C" NOT NULL,
    seq   bigint NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (lead, seq)
);

CREATE TABLE {schema}.timers (
    key   text COLLATE "C" PRIMARY KEY,
    due   timestamptz NOT NULL,
    value bytea NOT NULL
);
CREATE INDEX timers_due ON {schema}.timers (due, key);

CREATE SEQUENCE {schema}.outbox_seq;
CREATE TABLE {schema}.outbox (
    key          text COLLATE "C" PRIMARY KEY,
    channel      text NOT NULL,
    state        text NOT NULL,
    next_attempt timestamptz NOT NULL,
    seq          bigint NOT NULL,
    value        bytea NOT NULL
);
CREATE INDEX outbox_ready ON {schema}.outbox (channel, next_attempt, seq, key) WHERE state = 'pending';

CREATE TABLE {schema}.outbox_pending (
    channel text PRIMARY KEY,
    entries bigint NOT NULL
);

CREATE FUNCTION {schema}.count_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.state = 'pending' THEN
        INSERT INTO {schema}.outbox_pending AS c VALUES (OLD.channel, -1)
            ON CONFLICT (channel) DO UPDATE SET entries = c.entries - 1;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.state = 'pending' THEN
        INSERT INTO {schema}.outbox_pending AS c VALUES (NEW.channel, 1)
            ON CONFLICT (channel) DO UPDATE SET entries = c.entries + 1;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_count_pending AFTER INSERT OR DELETE ON {schema}.outbox
    FOR EACH ROW EXECUTE FUNCTION {schema}.count_pending();
CREATE TRIGGER outbox_count_pending_moves AFTER UPDATE OF state, channel ON {schema}.outbox
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.channel IS DISTINCT FROM NEW.channel)
    EXECUTE FUNCTION {schema}.count_pending();

CREATE TABLE {schema}.cursors (
    name  text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE {schema}.suppressions (
    address text COLLATE "C" PRIMARY KEY,
    value   bytea NOT NULL
);

CREATE TABLE {schema}.items (
    bucket text COLLATE "C" NOT NULL,
    key    text COLLATE "C" NOT NULL,
    value  bytea NOT NULL,
    PRIMARY KEY (bucket, key)
);
"#;

/// Version 2: entries the blast-radius guard holds (`state = 'held'`), in queue order per
/// channel, so a release or an approval costs what is held.
const V2: &str = r#"
CREATE INDEX outbox_held ON {schema}.outbox (channel, seq) WHERE state = 'held';
"#;

/// Migrations in order; `MIGRATIONS[i]` takes version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2];

/// `schema` quoted for SQL text (names are checked by `check_schema_name`, so quoting is
/// belt and braces).
pub(crate) fn quoted(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// A stable 64-bit key for an advisory lock (FNV-1a; the same in every build).
pub(crate) fn lock_key(purpose: &str, schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "leadloop:".bytes().chain(purpose.bytes()).chain([b':']).chain(schema.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

/// Brings `schema` to [`SCHEMA_VERSION`], creating it if missing. Returns the version found.
pub async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<u32, PgError> {
    let q = quoted(schema);
    let tx = client.transaction().await.map_err(PgError::db("cannot start the migration"))?;
    // A migration rewriting a large table may run long: `statement_timeout` is for the daemon's
    // queries, not for this.
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(PgError::db("cannot start the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key("migrate", schema)])
        .await
        .map_err(PgError::db("cannot take the migration lock"))?;
    let exists: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&schema])
        .await
        .map_err(PgError::db("cannot look up the schema"))?
        .get(0);
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {q}"))
            .await
            .map_err(PgError::db("cannot create the schema"))?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {q}.schema_migrations (
            version    integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now(),
            applied_by text NOT NULL
        )"
    ))
    .await
    .map_err(PgError::db("cannot create the schema_migrations table"))?;
    let found: i32 = tx
        .query_one(&format!("SELECT coalesce(max(version), 0) FROM {q}.schema_migrations"), &[])
        .await
        .map_err(PgError::db("cannot read the schema version"))?
        .get(0);
    let found = u32::try_from(found).unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(PgError::TooNew { found });
    }
    for version in found..SCHEMA_VERSION {
        let Some(sql) = MIGRATIONS.get(version as usize) else { break };
        tracing::info!(schema, from = version, to = version + 1, "migrating the PostgreSQL schema");
        tx.batch_execute(&sql.replace("{schema}", &q)).await.map_err(PgError::db(if version == 0 {
            "cannot create the tables"
        } else {
            "migration failed"
        }))?;
        tx.execute(
            &format!("INSERT INTO {q}.schema_migrations (version, applied_by) VALUES ($1, $2)"),
            &[&((version + 1) as i32), &concat!("leadloop ", env!("CARGO_PKG_VERSION"))],
        )
        .await
        .map_err(PgError::db("cannot record the schema version"))?;
    }
    tx.commit().await.map_err(PgError::db("cannot commit the migration"))?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_per_schema() {
        assert_eq!(lock_key("migrate", "leadloop"), lock_key("migrate", "leadloop"));
        assert_ne!(lock_key("migrate", "leadloop"), lock_key("migrate", "leadloop2"));
        assert_ne!(lock_key("migrate", "leadloop"), lock_key("instance", "leadloop"));
    }

    #[test]
    fn every_migration_names_its_tables_by_schema() {
        for sql in MIGRATIONS {
            for line in sql.lines().map(str::trim) {
                for word in ["CREATE TABLE ", "CREATE SEQUENCE ", "CREATE FUNCTION ", "INSERT INTO "] {
                    if let Some(rest) = line.strip_prefix(word) {
                        assert!(rest.starts_with("{schema}."), "unqualified: {line}");
                    }
                }
            }
        }
    }
}
