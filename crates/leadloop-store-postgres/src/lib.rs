//! The PostgreSQL engine of leadloop's store: [`PgStore`] implements
//! [`leadloop_store::Store`] and passes the same conformance suite as sled, so nothing above
//! the store knows which engine runs. It is the only crate in the workspace that knows
//! PostgreSQL.
//!
//! The driver is `tokio-postgres` with a `deadpool-postgres` pool, rather than sqlx: plain SQL
//! strings checked by the tests instead of compile-time macros that need a database at build
//! time, and a lighter build. TLS is rustls (`tokio-postgres-rustls`, ring), as in the rest of
//! the workspace; OpenSSL is not linked.
//!
//! How the promises of the trait are kept:
//! - **Atomic batches.** A batch runs inside one transaction. Its lead writes are checked
//!   first: the leads it names are read with `SELECT … FOR UPDATE` (in id order, so two
//!   writers lock in the same order) and each [`leadloop_store::Expect`] is checked against
//!   them in op order; a stale one refuses the whole batch with
//!   [`StoreError::Conflict`] before anything of it is written. Another writer's commit on the
//!   same lead waits for the row lock and then finds the new version.
//! - **Group commit.** Commits go through one committer task: it takes every batch waiting and
//!   applies them in one transaction (each checked on its own; a refused one writes nothing),
//!   so concurrent commits share one `COMMIT` and one WAL flush. If a statement fails, the
//!   transaction is rolled back and each batch of the group is retried alone, so one bad
//!   batch fails only itself. [`Stats::flushes`] counts `COMMIT`s.
//! - **Statements are pipelined.** A batch's writes are sent together, in op order, and their
//!   replies read afterwards: a batch costs about two round trips, not one per op.
//! - **Indexes and counters.** Open hand-offs are a partial index on the leads
//!   (`owner IS NOT NULL`); open hand-offs per owner are an aggregate over that index (it costs
//!   what is open, never every lead). Leads per stage and pending outbox entries per channel
//!   are counter rows kept by triggers in the same transaction as the rows they count. Timers
//!   are read through an index on (due, key), outbox entries through a partial index of the
//!   pending ones. See `schema.rs` for the tables.
//! - **One daemon per schema.** Until replicas share work by leases (not built yet), a store
//!   holds a session advisory lock on its schema for as long as it is open, on a connection of
//!   its own; a second leadloop on the same schema is refused with the holder named, as a
//!   second one on a sled state directory is.

mod check;
mod config;
mod schema;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use leadloop_core::{
    Channel, HistoryEvent, IdempotencyKey, LeadId, LeadRecord, OutboxEntry, OutboxState, Person, PersonId,
    Stage, Suppression, Timer, TimerKey, Timestamp,
};
use leadloop_store::{Batch, Committed, Expect, Found, Op, Record, Result, Stats, Store, StoreError, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use check::check_server;
pub use config::{
    ConfigError, DEFAULT_POOL_SIZE, DEFAULT_SCHEMA, DEFAULT_STATEMENT_TIMEOUT, PgConfig, SslMode,
    check_schema_name,
};
pub use schema::{SCHEMA_VERSION, migrate};

/// The most batches one group transaction takes.
const MAX_GROUP: usize = 256;
/// The most ops one group transaction takes (a batch is never split).
const MAX_GROUP_OPS: usize = 20_000;
/// How long opening waits for the schema lock (a store of this process just dropped may
/// still be closing its connection).
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How often [`Stats::size_on_disk`] is asked of the server, at most.
const SIZE_REFRESH: Duration = Duration::from_secs(30);

/// What went wrong, before the schema is attached to make a [`StoreError`].
#[derive(Debug)]
pub enum PgError {
    Db { doing: &'static str, error: tokio_postgres::Error },
    TooNew { found: u32 },
    Locked { holder: String },
    Other(String),
}

impl PgError {
    pub(crate) fn db(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        move |error| PgError::Db { doing, error }
    }

    pub fn into_store(self, schema: &str) -> StoreError {
        let schema = schema.to_owned();
        match self {
            PgError::Db { doing, error } => {
                StoreError::Database { schema, message: format!("{doing}: {}", describe(&error)) }
            }
            PgError::TooNew { found } => {
                StoreError::SchemaTooNew { schema, found, supported: SCHEMA_VERSION }
            }
            PgError::Locked { holder } => StoreError::SchemaLocked { schema, holder },
            PgError::Other(message) => StoreError::Database { schema, message },
        }
    }
}

/// The server's message and SQLSTATE for a database error, the driver's text otherwise (which
/// never contains the connection URL).
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            // The driver's own text is short ("error connecting to server"); the cause says why.
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Every SQL text, with the schema filled in.
#[derive(Debug)]
struct Sql {
    lock_leads: String,
    upsert_lead: String,
    delete_lead: String,
    mark_seen: String,
    append_history: String,
    insert_history: String,
    upsert_person: String,
    delete_person: String,
    set_timer: String,
    set_timer_earliest: String,
    cancel_timer: String,
    enqueue: String,
    update_outbox: String,
    set_cursor: String,
    suppress: String,
    unsuppress: String,
    put_item: String,
    delete_item: String,
    lead: String,
    leads_by_id: String,
    leads_first: String,
    leads_after: String,
    person: String,
    people: String,
    history: String,
    timer: String,
    due_timers: String,
    next_timer_due: String,
    outbox_entry: String,
    outbox_ready: String,
    outbox_failed: String,
    outbox_pending: String,
    outbox_held: String,
    guard: String,
    suppressions: String,
    open_handoffs: String,
    open_handoffs_per_owner: String,
    seen: String,
    leads_per_stage: String,
    cursor: String,
    items: String,
    is_empty: String,
    size: String,
    outbox_seq_max: String,
    outbox_seq_set: String,
    scan: [String; 9],
}

impl Sql {
    fn new(schema: &str) -> Self {
        let s = schema::quoted(schema);
        Self {
            lock_leads: format!("SELECT id, version FROM {s}.leads WHERE id = ANY($1) ORDER BY id FOR UPDATE"),
            upsert_lead: format!(
                "INSERT INTO {s}.leads (id, version, stage, owner, value) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, stage = EXCLUDED.stage,
                 owner = EXCLUDED.owner, value = EXCLUDED.value"
            ),
            delete_lead: format!("DELETE FROM {s}.leads WHERE id = $1"),
            mark_seen: format!("INSERT INTO {s}.seen (lead, key) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            append_history: format!(
                "INSERT INTO {s}.history (lead, seq, value)
                 SELECT $1, coalesce(max(seq), 0) + 1, $2 FROM {s}.history WHERE lead = $1"
            ),
            insert_history: format!("INSERT INTO {s}.history (lead, seq, value) VALUES ($1, $2, $3)"),
            upsert_person: format!(
                "INSERT INTO {s}.people (id, value) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value"
            ),
            delete_person: format!("DELETE FROM {s}.people WHERE id = $1"),
            set_timer: format!(
                "INSERT INTO {s}.timers (key, due, value) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET due = EXCLUDED.due, value = EXCLUDED.value"
            ),
            set_timer_earliest: format!(
                "INSERT INTO {s}.timers AS t (key, due, value) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET due = EXCLUDED.due, value = EXCLUDED.value WHERE t.due > EXCLUDED.due"
            ),
            cancel_timer: format!("DELETE FROM {s}.timers WHERE key = $1"),
            enqueue: format!(
                "INSERT INTO {s}.outbox (key, channel, state, next_attempt, seq, value)
                 VALUES ($1, $2, $3, $4, nextval('{s}.outbox_seq'), $5)
                 ON CONFLICT (key) DO NOTHING RETURNING seq"
            ),
            update_outbox: format!(
                "INSERT INTO {s}.outbox AS o (key, channel, state, next_attempt, seq, value)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key) DO UPDATE SET channel = EXCLUDED.channel, state = EXCLUDED.state,
                 next_attempt = EXCLUDED.next_attempt, value = EXCLUDED.value,
                 seq = CASE WHEN EXCLUDED.seq = 0 THEN o.seq ELSE EXCLUDED.seq END"
            ),
            set_cursor: format!(
                "INSERT INTO {s}.cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
            ),
            suppress: format!(
                "INSERT INTO {s}.suppressions (address, value) VALUES ($1, $2)
                 ON CONFLICT (address) DO UPDATE SET value = EXCLUDED.value"
            ),
            unsuppress: format!("DELETE FROM {s}.suppressions WHERE address = $1"),
            put_item: format!(
                "INSERT INTO {s}.items (bucket, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (bucket, key) DO UPDATE SET value = EXCLUDED.value"
            ),
            delete_item: format!("DELETE FROM {s}.items WHERE bucket = $1 AND key = $2"),
            lead: format!("SELECT value FROM {s}.leads WHERE id = $1"),
            leads_by_id: format!("SELECT id, value FROM {s}.leads WHERE id = ANY($1)"),
            leads_first: format!("SELECT value FROM {s}.leads ORDER BY id LIMIT $1"),
            leads_after: format!("SELECT value FROM {s}.leads WHERE id > $1 ORDER BY id LIMIT $2"),
            person: format!("SELECT value FROM {s}.people WHERE id = $1"),
            people: format!("SELECT value FROM {s}.people ORDER BY id"),
            history: format!("SELECT seq, value FROM {s}.history WHERE lead = $1 ORDER BY seq"),
            timer: format!("SELECT value FROM {s}.timers WHERE key = $1"),
            due_timers: format!("SELECT value FROM {s}.timers WHERE due <= $1 ORDER BY due, key LIMIT $2"),
            next_timer_due: format!("SELECT due FROM {s}.timers ORDER BY due, key LIMIT 1"),
            outbox_entry: format!("SELECT seq, value FROM {s}.outbox WHERE key = $1"),
            outbox_ready: format!(
                "SELECT seq, value FROM {s}.outbox WHERE channel = $1 AND state = 'pending' AND next_attempt <= $2
                 ORDER BY next_attempt, seq, key LIMIT $3"
            ),
            outbox_failed: format!(
                "SELECT seq, value FROM {s}.outbox WHERE channel = $1 AND state = 'failed' ORDER BY key"
            ),
            outbox_pending: format!(
                "SELECT (SELECT entries FROM {s}.outbox_pending WHERE channel = $1),
                        (SELECT next_attempt FROM {s}.outbox WHERE channel = $1 AND state = 'pending'
                         ORDER BY next_attempt LIMIT 1)"
            ),
            outbox_held: format!(
                "SELECT seq, value FROM {s}.outbox WHERE channel = $1 AND state = 'held' AND seq > $2
                 ORDER BY seq LIMIT $3"
            ),
            guard: format!(
                "SELECT value FROM {s}.items WHERE bucket = '{}' AND key = '{}'",
                leadloop_store::GUARD_BUCKET,
                leadloop_store::GUARD_KEY
            ),
            suppressions: format!("SELECT address, value FROM {s}.suppressions WHERE address = ANY($1)"),
            open_handoffs: format!("SELECT id, owner FROM {s}.leads WHERE owner IS NOT NULL ORDER BY id"),
            open_handoffs_per_owner: format!(
                "SELECT owner, count(*) FROM {s}.leads WHERE owner IS NOT NULL GROUP BY owner ORDER BY owner"
            ),
            seen: format!(
                "SELECT s.lead, s.key FROM {s}.seen s JOIN unnest($1::text[], $2::text[]) AS k(lead, key)
                 ON s.lead = k.lead AND s.key = k.key"
            ),
            leads_per_stage: format!("SELECT stage, leads FROM {s}.stage_counts"),
            cursor: format!("SELECT value FROM {s}.cursors WHERE name = $1"),
            items: format!("SELECT key, value FROM {s}.items WHERE bucket = $1 ORDER BY key"),
            is_empty: format!(
                "SELECT NOT (EXISTS (SELECT 1 FROM {s}.leads) OR EXISTS (SELECT 1 FROM {s}.people)
                 OR EXISTS (SELECT 1 FROM {s}.history) OR EXISTS (SELECT 1 FROM {s}.timers)
                 OR EXISTS (SELECT 1 FROM {s}.outbox) OR EXISTS (SELECT 1 FROM {s}.cursors)
                 OR EXISTS (SELECT 1 FROM {s}.suppressions) OR EXISTS (SELECT 1 FROM {s}.items)
                 OR EXISTS (SELECT 1 FROM {s}.seen))"
            ),
            size: "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'"
                .to_owned(),
            outbox_seq_max: format!("SELECT coalesce(max(seq), 0) FROM {s}.outbox"),
            outbox_seq_set: format!(
                "SELECT setval('{s}.outbox_seq', GREATEST($1, (SELECT last_value FROM {s}.outbox_seq)))"
            ),
            // The export order is sled's key order, so both engines write the same file.
            scan: [
                format!("SELECT bucket, key, value FROM {s}.items ORDER BY octet_length(bucket), bucket, key"),
                format!("SELECT name, value FROM {s}.cursors ORDER BY name"),
                format!("SELECT lead, seq, value FROM {s}.history ORDER BY octet_length(lead), lead, seq"),
                format!("SELECT value FROM {s}.leads ORDER BY id"),
                format!("SELECT seq, value FROM {s}.outbox ORDER BY key"),
                format!("SELECT value FROM {s}.people ORDER BY id"),
                format!("SELECT value FROM {s}.suppressions ORDER BY address"),
                format!("SELECT value FROM {s}.timers ORDER BY due, key"),
                format!("SELECT lead, key FROM {s}.seen ORDER BY octet_length(lead), lead, key"),
            ],
        }
    }
}

/// A commit waiting for the committer.
struct Job {
    batch: Batch,
    reply: oneshot::Sender<Result<Committed>>,
}

/// The connection that holds the schema's advisory lock while the store is open.
struct Instance {
    client: Option<tokio_postgres::Client>,
    lost: Arc<AtomicBool>,
}

struct Inner {
    pool: Pool,
    sql: Sql,
    schema: String,
    config: PgConfig,
    tls: MakeRustlsConnect,
    instance: tokio::sync::Mutex<Instance>,
    commits: AtomicU64,
    flushes: AtomicU64,
    reads: AtomicU64,
    size: AtomicU64,
    size_checked: std::sync::Mutex<Instant>,
}

/// The PostgreSQL engine. Cheap to share behind an `Arc`; dropping it closes its connections
/// and releases the schema.
pub struct PgStore {
    inner: Arc<Inner>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("server", &self.inner.config.describe())
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

/// The pool's state, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub max_size: usize,
    /// Connections open.
    pub size: usize,
    /// Connections open and idle.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

impl PgStore {
    /// Connects, takes the schema's lock (one leadloop per schema), creates the schema or
    /// migrates it to this build's version, and starts the committer. Must run inside a tokio
    /// runtime.
    pub async fn open(config: &PgConfig) -> Result<Arc<Self>> {
        let schema = config.schema.clone();
        check_schema_name(&schema)
            .map_err(|message| StoreError::Database { schema: schema.clone(), message })?;
        let fail = |e: PgError| e.into_store(&schema);
        let tls = config.tls().map_err(PgError::Other).map_err(fail)?;
        let (mut client, lost) = acquire_instance(config, &tls).await.map_err(fail)?;
        schema::migrate(&mut client, &schema).await.map_err(fail)?;
        let manager = Manager::from_config(
            config.driver_config("leadloop"),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(15)))
            .build()
            .map_err(|e| StoreError::Database {
                schema: schema.clone(),
                message: format!("cannot build the pool: {e}"),
            })?;
        let inner = Arc::new(Inner {
            pool,
            sql: Sql::new(&schema),
            schema,
            config: config.clone(),
            tls,
            instance: tokio::sync::Mutex::new(Instance { client: Some(client), lost }),
            commits: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            size: AtomicU64::new(0),
            size_checked: std::sync::Mutex::new(Instant::now()),
        });
        if let Ok(client) = inner.conn().await {
            inner.refresh_size(&client).await;
        }
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(committer(Arc::clone(&inner), queue));
        tracing::info!(server = %config.describe(), schema = %inner.schema, "PostgreSQL store open");
        Ok(Arc::new(Self { inner, jobs }))
    }

    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    pub fn pool_stats(&self) -> PoolStats {
        let status = self.inner.pool.status();
        PoolStats {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        }
    }
}

/// Connects the lock-holding connection and takes the schema's advisory lock, waiting up to
/// [`LOCK_WAIT`] for a holder that is going away.
async fn acquire_instance(
    config: &PgConfig,
    tls: &MakeRustlsConnect,
) -> Result<(tokio_postgres::Client, Arc<AtomicBool>), PgError> {
    let mut pg = config.driver_config("leadloop");
    pg.application_name(holder_name());
    let (client, connection) = pg.connect(tls.clone()).await.map_err(PgError::db("cannot connect"))?;
    let lost = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&lost);
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %describe(&error), "the connection holding the schema lock failed");
        }
        flag.store(true, Ordering::SeqCst);
    });
    let key = schema::lock_key("instance", &config.schema);
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(PgError::db("cannot take the schema lock"))?
            .get(0);
        if got {
            return Ok((client, lost));
        }
        if Instant::now() >= deadline {
            return Err(PgError::Locked { holder: lock_holder(&client, key).await });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The application name of the lock-holding connection: what a refused second leadloop shows.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut name = format!("leadloop pid {}", std::process::id());
    if !host.is_empty() {
        name.push_str(&format!(" on {host}"));
    }
    name
}

/// Who holds the schema lock, as far as the server tells: " (leadloop pid 12 on db1, …)".
async fn lock_holder(client: &tokio_postgres::Client, key: i64) -> String {
    let high = (key as u64 >> 32) as i64;
    let low = (key as u64 & 0xffff_ffff) as i64;
    let row = client
        .query_opt(
            "SELECT coalesce(a.application_name, ''), coalesce(host(a.client_addr), ''), a.pid
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.classid::bigint = $1 AND l.objid::bigint = $2
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&high, &low],
        )
        .await;
    match row {
        Ok(Some(row)) => {
            let name: String = row.get(0);
            let from: String = row.get(1);
            let pid: i32 = row.get(2);
            let mut holder = if name.is_empty() { format!("server process {pid}") } else { name };
            if !from.is_empty() {
                holder.push_str(&format!(", connected from {from}"));
            }
            format!(" ({holder})")
        }
        _ => String::new(),
    }
}

impl Inner {
    fn err(&self, e: PgError) -> StoreError {
        e.into_store(&self.schema)
    }

    fn db(&self, doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError + '_ {
        move |error| self.err(PgError::Db { doing, error })
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| {
            let message = match &e {
                deadpool_postgres::PoolError::Backend(error) => describe(error),
                other => other.to_string(),
            };
            StoreError::Database {
                schema: self.schema.clone(),
                message: format!("cannot get a connection: {message}"),
            }
        })
    }

    fn count_reads(&self, n: usize) {
        self.reads.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Runs one read-only query on a pooled connection.
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.conn().await?;
        let statement = client.prepare_cached(sql).await.map_err(self.db("cannot prepare a query"))?;
        client.query(&statement, params).await.map_err(self.db("query failed"))
    }

    async fn refresh_size(&self, client: &tokio_postgres::Client) {
        if let Ok(row) = client.query_one(&self.sql.size, &[&self.schema]).await {
            let size: i64 = row.get(0);
            self.size.store(size.max(0) as u64, Ordering::Relaxed);
        }
        *self.size_checked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Re-takes the schema lock if the connection that held it was lost; refuses to write
    /// while another leadloop holds it.
    async fn ensure_instance(&self) -> Result<(), PgError> {
        let mut instance = self.instance.lock().await;
        if !instance.lost.load(Ordering::SeqCst) && instance.client.is_some() {
            return Ok(());
        }
        instance.client = None;
        tracing::warn!(schema = %self.schema, "taking the schema lock again");
        let (client, lost) = acquire_instance(&self.config, &self.tls).await?;
        *instance = Instance { client: Some(client), lost };
        Ok(())
    }

    /// Applies a group of batches in one transaction, each refused or done on its own; if
    /// the transaction fails before `COMMIT`, each batch is tried again alone.
    async fn run_group(&self, jobs: Vec<Job>) {
        let batches: Vec<&Batch> = jobs.iter().map(|j| &j.batch).collect();
        match self.group(&batches).await {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(GroupError::BeforeCommit(error)) if jobs.len() > 1 => {
                tracing::debug!(error = %self.err(error), batches = jobs.len(), "group failed; retrying its batches alone");
                for job in jobs {
                    let result = match self.group(&[&job.batch]).await {
                        Ok(mut results) => results.pop().unwrap_or(Err(StoreError::Closed)),
                        Err(GroupError::BeforeCommit(e) | GroupError::AtCommit(e)) => Err(self.err(e)),
                    };
                    let _ = job.reply.send(result);
                }
            }
            Err(GroupError::BeforeCommit(error) | GroupError::AtCommit(error)) => {
                let message = self.err(error).to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(StoreError::Database {
                        schema: self.schema.clone(),
                        message: message.clone(),
                    }));
                }
            }
        }
    }

    async fn group(&self, batches: &[&Batch]) -> Result<Vec<Result<Committed>>, GroupError> {
        use GroupError::BeforeCommit as Before;
        self.ensure_instance().await.map_err(Before)?;
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| Before(PgError::Other(format!("cannot get a connection: {e}"))))?;
        let tx = client.transaction().await.map_err(PgError::db("cannot begin")).map_err(Before)?;
        let prepared = Prepared::new(&tx, &self.sql).await.map_err(Before)?;
        let mut results = Vec::with_capacity(batches.len());
        for batch in batches {
            results.push(apply(&tx, &prepared, batch, &self.schema).await.map_err(Before)?);
        }
        tx.commit().await.map_err(PgError::db("commit failed")).map_err(GroupError::AtCommit)?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.commits.fetch_add(results.iter().filter(|r| r.is_ok()).count() as u64, Ordering::Relaxed);
        let stale = self.size_checked.lock().unwrap_or_else(|p| p.into_inner()).elapsed() >= SIZE_REFRESH;
        if stale {
            self.refresh_size(&client).await;
        }
        Ok(results)
    }
}

#[derive(Debug)]
enum GroupError {
    /// Nothing was committed: the batches may be tried again.
    BeforeCommit(PgError),
    /// `COMMIT` itself failed: the outcome may be unknown, so nothing is retried.
    AtCommit(PgError),
}

async fn committer(inner: Arc<Inner>, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut ops = first.batch.len();
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP && ops < MAX_GROUP_OPS {
            match queue.try_recv() {
                Ok(job) => {
                    ops += job.batch.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        inner.run_group(jobs).await;
    }
}

/// The write statements, prepared on the group's connection (cached per connection).
struct Prepared {
    lock_leads: Statement,
    upsert_lead: Statement,
    delete_lead: Statement,
    mark_seen: Statement,
    append_history: Statement,
    insert_history: Statement,
    upsert_person: Statement,
    delete_person: Statement,
    set_timer: Statement,
    set_timer_earliest: Statement,
    cancel_timer: Statement,
    enqueue: Statement,
    update_outbox: Statement,
    set_cursor: Statement,
    suppress: Statement,
    unsuppress: Statement,
    put_item: Statement,
    delete_item: Statement,
}

impl Prepared {
    async fn new(tx: &deadpool_postgres::Transaction<'_>, sql: &Sql) -> Result<Self, PgError> {
        let p = |text: &str| {
            let text = text.to_owned();
            async move { tx.prepare_cached(&text).await.map_err(PgError::db("cannot prepare a statement")) }
        };
        Ok(Self {
            lock_leads: p(&sql.lock_leads).await?,
            upsert_lead: p(&sql.upsert_lead).await?,
            delete_lead: p(&sql.delete_lead).await?,
            mark_seen: p(&sql.mark_seen).await?,
            append_history: p(&sql.append_history).await?,
            insert_history: p(&sql.insert_history).await?,
            upsert_person: p(&sql.upsert_person).await?,
            delete_person: p(&sql.delete_person).await?,
            set_timer: p(&sql.set_timer).await?,
            set_timer_earliest: p(&sql.set_timer_earliest).await?,
            cancel_timer: p(&sql.cancel_timer).await?,
            enqueue: p(&sql.enqueue).await?,
            update_outbox: p(&sql.update_outbox).await?,
            set_cursor: p(&sql.set_cursor).await?,
            suppress: p(&sql.suppress).await?,
            unsuppress: p(&sql.unsuppress).await?,
            put_item: p(&sql.put_item).await?,
            delete_item: p(&sql.delete_item).await?,
        })
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

/// One write statement of a batch.
struct Write<'a> {
    statement: &'a Statement,
    params: Vec<Param>,
    /// The key of an `Enqueue`: a returned row means the entry is new.
    enqueue: Option<IdempotencyKey>,
}

fn write<'a>(statement: &'a Statement, params: Vec<Param>) -> Write<'a> {
    Write { statement, params, enqueue: None }
}

/// Checks and applies one batch inside the group's transaction. `Ok(Err(_))` is a batch
/// refused (a conflict, a version that does not move on): nothing of it was written.
async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    prepared: &Prepared,
    batch: &Batch,
    schema: &str,
) -> Result<Result<Committed>, PgError> {
    // The lead writes first: lock the rows, check every expectation in op order.
    let mut ids: Vec<String> = Vec::new();
    for op in &batch.ops {
        match op {
            Op::PutLead { record, .. } => ids.push(record.lead.id.0.clone()),
            Op::DeleteLead { id, .. } => ids.push(id.0.clone()),
            _ => {}
        }
    }
    ids.sort();
    ids.dedup();
    let mut versions: HashMap<String, Option<u64>> = HashMap::new();
    if !ids.is_empty() {
        for row in tx.query(&prepared.lock_leads, &[&ids]).await.map_err(PgError::db("cannot lock leads"))? {
            let id: String = row.get(0);
            let version: i64 = row.get(1);
            versions.insert(id, Some(version as u64));
        }
    }
    for op in &batch.ops {
        let (id, expect, next) = match op {
            Op::PutLead { record, expect } => (&record.lead.id, *expect, Some(record.version)),
            Op::DeleteLead { id, expect } => (id, *expect, None),
            _ => continue,
        };
        let current = versions.get(id.as_str()).copied().flatten();
        if let Err(conflict) = check(id, expect, current) {
            return Ok(Err(conflict));
        }
        if let (Expect::Version(v), Some(next)) = (expect, next)
            && next <= v
        {
            return Ok(Err(StoreError::Database {
                schema: schema.to_owned(),
                message: format!(
                    "a write of lead {id} decided on version {v} must carry a newer version, not {next}"
                ),
            }));
        }
        versions.insert(id.0.clone(), next);
    }

    let mut writes: Vec<Write<'_>> = Vec::with_capacity(batch.ops.len());
    for op in &batch.ops {
        let w = match op {
            Op::PutLead { record, .. } => {
                let value = match encode("lead", record.lead.id.as_str(), record.as_ref()) {
                    Ok(value) => value,
                    Err(e) => return Ok(Err(e)),
                };
                write(
                    &prepared.upsert_lead,
                    vec![
                        Box::new(record.lead.id.0.clone()),
                        Box::new(record.version as i64),
                        Box::new(record.stage.as_str()),
                        Box::new(record.handoff.as_ref().map(|h| h.owner.0.clone())),
                        Box::new(value),
                    ],
                )
            }
            Op::DeleteLead { id, .. } => write(&prepared.delete_lead, vec![Box::new(id.0.clone())]),
            Op::MarkSeen { lead, key } => {
                write(&prepared.mark_seen, vec![Box::new(lead.0.clone()), Box::new(key.clone())])
            }
            Op::AppendHistory(lead, event) => {
                let value = match encode("history", lead.as_str(), event) {
                    Ok(value) => value,
                    Err(e) => return Ok(Err(e)),
                };
                write(&prepared.append_history, vec![Box::new(lead.0.clone()), Box::new(value)])
            }
            Op::PutPerson(person) => {
                let value = match encode("person", person.id.as_str(), person) {
                    Ok(value) => value,
                    Err(e) => return Ok(Err(e)),
                };
                write(&prepared.upsert_person, vec![Box::new(person.id.0.clone()), Box::new(value)])
            }
            Op::DeletePerson(id) => write(&prepared.delete_person, vec![Box::new(id.0.clone())]),
            Op::SetTimer(timer) | Op::SetTimerEarliest(timer) => {
                let value = match encode("timer", timer.key.as_str(), timer) {
                    Ok(value) => value,
                    Err(e) => return Ok(Err(e)),
                };
                let statement = if matches!(op, Op::SetTimer(_)) {
                    &prepared.set_timer
                } else {
                    &prepared.set_timer_earliest
                };
                write(
                    statement,
                    vec![Box::new(timer.key.0.clone()), Box::new(ceil_ms(timer.due)), Box::new(value)],
                )
            }
            Op::CancelTimer(key) => write(&prepared.cancel_timer, vec![Box::new(key.0.clone())]),
            Op::Enqueue(entry) => {
                let value = match encode("outbox", entry.key.as_str(), entry) {
                    Ok(value) => value,
                    Err(e) => return Ok(Err(e)),
                };
                Write {
                    statement: &prepared.enqueue,
                    params: vec![
                        Box::new(entry.key.as_str().to_owned()),
                        Box::new(entry.effect.channel().as_str()),
                        Box::new(state_name(&entry.state)),
                        Box::new(floor_ms(entry.next_attempt_at)),
                        Box::new(value),
                    ],
                    enqueue: Some(entry.key.clone()),
                }
            }
            Op::UpdateOutbox(entry) => {
                let value = match encode("outbox", entry.key.as_str(), entry) {
                    Ok(value) => value,
                    Err(e) => return Ok(Err(e)),
                };
                write(
                    &prepared.update_outbox,
                    vec![
                        Box::new(entry.key.as_str().to_owned()),
                        Box::new(entry.effect.channel().as_str()),
                        Box::new(state_name(&entry.state)),
                        Box::new(floor_ms(entry.next_attempt_at)),
                        Box::new(entry.seq as i64),
                        Box::new(value),
                    ],
                )
            }
            Op::SetCursor { name, value } => {
                write(&prepared.set_cursor, vec![Box::new(name.clone()), Box::new(value.clone())])
            }
            Op::Suppress(entry) => {
                let address = entry.address.to_lowercase();
                let entry = Suppression { address: address.clone(), ..entry.clone() };
                let value = match encode("suppression", &address, &entry) {
                    Ok(value) => value,
                    Err(e) => return Ok(Err(e)),
                };
                write(&prepared.suppress, vec![Box::new(address), Box::new(value)])
            }
            Op::Unsuppress(address) => write(&prepared.unsuppress, vec![Box::new(address.to_lowercase())]),
            Op::PutItem { bucket, key, value } => {
                let value = match encode("item", key, value) {
                    Ok(value) => value,
                    Err(e) => return Ok(Err(e)),
                };
                write(
                    &prepared.put_item,
                    vec![Box::new(bucket.clone()), Box::new(key.clone()), Box::new(value)],
                )
            }
            Op::DeleteItem { bucket, key } => {
                write(&prepared.delete_item, vec![Box::new(bucket.clone()), Box::new(key.clone())])
            }
            Op::SetGuard(state) => {
                let value = match serde_json::to_value(state)
                    .map_err(|e| StoreError::Corrupt { key: "guard state".into(), message: e.to_string() })
                    .and_then(|value| encode("item", leadloop_store::GUARD_KEY, &value))
                {
                    Ok(value) => value,
                    Err(e) => return Ok(Err(e)),
                };
                write(
                    &prepared.put_item,
                    vec![
                        Box::new(leadloop_store::GUARD_BUCKET.to_owned()),
                        Box::new(leadloop_store::GUARD_KEY.to_owned()),
                        Box::new(value),
                    ],
                )
            }
        };
        writes.push(w);
    }

    let replies = pipeline(tx, &writes).await?;
    let mut committed = Committed::default();
    for (w, rows) in writes.iter().zip(replies) {
        if let Some(key) = &w.enqueue {
            if rows.is_empty() {
                committed.duplicates += 1;
            } else {
                committed.enqueued.push(key.clone());
            }
        }
    }
    Ok(Ok(committed))
}

/// Sends every write at once, in order (tokio-postgres sends a query on its first poll, and
/// the server runs a connection's queries in the order received), then collects the replies.
async fn pipeline(
    tx: &deadpool_postgres::Transaction<'_>,
    writes: &[Write<'_>],
) -> Result<Vec<Vec<tokio_postgres::Row>>, PgError> {
    let params: Vec<Vec<&(dyn ToSql + Sync)>> =
        writes.iter().map(|w| w.params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect()).collect();
    let mut pending: Vec<Pin<Box<futures::future::MaybeDone<_>>>> = writes
        .iter()
        .zip(&params)
        .map(|(w, p)| Box::pin(futures::future::maybe_done(tx.query(w.statement, p))))
        .collect();
    // Every future is polled in order on each wake-up; the first wake-up sends them all.
    std::future::poll_fn(|cx| {
        let mut done = true;
        for future in pending.iter_mut() {
            if future.as_mut().poll(cx).is_pending() {
                done = false;
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    let mut replies = Vec::with_capacity(pending.len());
    for future in &mut pending {
        match future.as_mut().take_output() {
            Some(reply) => replies.push(reply.map_err(PgError::db("write failed"))?),
            None => return Err(PgError::Other("a pipelined write lost its reply".into())),
        }
    }
    Ok(replies)
}

/// Refuses a lead write whose decision was made on another state than the stored one.
fn check(lead: &LeadId, expect: Expect, current: Option<u64>) -> Result<()> {
    let found = current.map_or(Found::Absent, Found::Version);
    let ok = match (expect, found) {
        (Expect::Any, _) | (Expect::Absent, Found::Absent) => true,
        (Expect::Version(v), Found::Version(f)) => v == f,
        _ => false,
    };
    if ok { Ok(()) } else { Err(StoreError::Conflict { lead: lead.clone(), expected: expect, found }) }
}

fn state_name(state: &OutboxState) -> &'static str {
    match state {
        OutboxState::Pending => "pending",
        OutboxState::Done { .. } => "done",
        OutboxState::Failed { .. } => "failed",
        OutboxState::Dropped { .. } => "dropped",
        OutboxState::Held { .. } => "held",
    }
}

/// A timer's due instant in its column, rounded up to the millisecond: the index never says
/// a timer is due before it is (as sled's key).
fn ceil_ms(at: Timestamp) -> Timestamp {
    let millis = at.timestamp_millis() + i64::from(!at.timestamp_subsec_nanos().is_multiple_of(1_000_000));
    chrono::DateTime::from_timestamp_millis(millis).unwrap_or(at)
}

/// An instant at millisecond precision (as sled's keys), for next attempts and `now`.
fn floor_ms(at: Timestamp) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

fn encode<T: Serialize + ?Sized>(what: &str, key: &str, value: &T) -> Result<Vec<u8>> {
    codec::encode(value)
        .map_err(|e| StoreError::Corrupt { key: format!("{what} {key}"), message: e.to_string() })
}

fn decode<T: DeserializeOwned>(what: &str, key: &str, raw: &[u8]) -> Result<T> {
    codec::decode(raw)
        .map_err(|e| StoreError::Corrupt { key: format!("{what} {key}"), message: e.to_string() })
}

/// An outbox entry with its queue number from the `seq` column (the store assigns it).
fn outbox_from(row: &tokio_postgres::Row) -> Result<OutboxEntry> {
    let seq: i64 = row.get(0);
    let raw: &[u8] = row.get(1);
    let entry: OutboxEntry = decode("outbox", &seq.to_string(), raw)?;
    Ok(OutboxEntry { seq: seq as u64, ..entry })
}

fn stage_named(name: &str) -> Option<Stage> {
    Stage::ALL.into_iter().find(|stage| stage.as_str() == name)
}

#[async_trait]
impl Store for PgStore {
    async fn commit(&self, batch: Batch) -> Result<Committed> {
        if batch.is_empty() {
            return Ok(Committed::default());
        }
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { batch, reply }).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn lead(&self, id: &LeadId) -> Result<Option<LeadRecord>> {
        let rows = self.inner.query(&self.inner.sql.lead, &[&id.as_str()]).await?;
        match rows.first() {
            Some(row) => {
                self.inner.count_reads(1);
                decode("lead", id.as_str(), row.get(0)).map(Some)
            }
            None => Ok(None),
        }
    }

    async fn leads_by_id(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadRecord>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<&str> = ids.iter().map(LeadId::as_str).collect();
        let rows = self.inner.query(&self.inner.sql.leads_by_id, &[&wanted]).await?;
        self.inner.count_reads(rows.len());
        let mut found: HashMap<String, LeadRecord> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.get(0);
            let record = decode("lead", &id, row.get(1))?;
            found.insert(id, record);
        }
        Ok(ids.iter().map(|id| found.get(id.as_str()).cloned()).collect())
    }

    async fn leads(&self, after: Option<&LeadId>, limit: usize) -> Result<Vec<LeadRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match after {
            Some(after) => self.inner.query(&self.inner.sql.leads_after, &[&after.as_str(), &limit]).await?,
            None => self.inner.query(&self.inner.sql.leads_first, &[&limit]).await?,
        };
        self.inner.count_reads(rows.len());
        rows.iter().map(|row| decode("lead", "", row.get(0))).collect()
    }

    async fn person(&self, id: &PersonId) -> Result<Option<Person>> {
        let rows = self.inner.query(&self.inner.sql.person, &[&id.as_str()]).await?;
        rows.first().map(|row| decode("person", id.as_str(), row.get(0))).transpose()
    }

    async fn people(&self) -> Result<Vec<Person>> {
        let rows = self.inner.query(&self.inner.sql.people, &[]).await?;
        self.inner.count_reads(rows.len());
        rows.iter().map(|row| decode("person", "", row.get(0))).collect()
    }

    async fn history(&self, id: &LeadId) -> Result<Vec<(u64, HistoryEvent)>> {
        let rows = self.inner.query(&self.inner.sql.history, &[&id.as_str()]).await?;
        self.inner.count_reads(rows.len());
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                Ok((seq as u64, decode("history", id.as_str(), row.get(1))?))
            })
            .collect()
    }

    async fn timer(&self, key: &TimerKey) -> Result<Option<Timer>> {
        let rows = self.inner.query(&self.inner.sql.timer, &[&key.as_str()]).await?;
        rows.first().map(|row| decode("timer", key.as_str(), row.get(0))).transpose()
    }

    async fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<Timer>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.inner.query(&self.inner.sql.due_timers, &[&floor_ms(now), &limit]).await?;
        self.inner.count_reads(rows.len());
        rows.iter().map(|row| decode("timer", "", row.get(0))).collect()
    }

    async fn next_timer_due(&self) -> Result<Option<Timestamp>> {
        let rows = self.inner.query(&self.inner.sql.next_timer_due, &[]).await?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    async fn outbox_entry(&self, key: &IdempotencyKey) -> Result<Option<OutboxEntry>> {
        let rows = self.inner.query(&self.inner.sql.outbox_entry, &[&key.as_str()]).await?;
        rows.first().map(outbox_from).transpose()
    }

    async fn outbox_ready(&self, channel: Channel, now: Timestamp, limit: usize) -> Result<Vec<OutboxEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .inner
            .query(&self.inner.sql.outbox_ready, &[&channel.as_str(), &floor_ms(now), &limit])
            .await?;
        self.inner.count_reads(rows.len());
        rows.iter().map(outbox_from).collect()
    }

    async fn outbox_failed(&self, channel: Channel) -> Result<Vec<OutboxEntry>> {
        let rows = self.inner.query(&self.inner.sql.outbox_failed, &[&channel.as_str()]).await?;
        rows.iter().map(outbox_from).collect()
    }

    async fn outbox_pending(&self, channel: Channel) -> Result<(u64, Option<Timestamp>)> {
        let rows = self.inner.query(&self.inner.sql.outbox_pending, &[&channel.as_str()]).await?;
        let Some(row) = rows.first() else { return Ok((0, None)) };
        let count: Option<i64> = row.get(0);
        let earliest: Option<Timestamp> = row.get(1);
        Ok((count.unwrap_or(0).max(0) as u64, earliest))
    }

    async fn outbox_held(&self, channel: Channel, after: u64, limit: usize) -> Result<Vec<OutboxEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows =
            self.inner.query(&self.inner.sql.outbox_held, &[&channel.as_str(), &after, &limit]).await?;
        self.inner.count_reads(rows.len());
        rows.iter().map(outbox_from).collect()
    }

    async fn guard(&self) -> Result<leadloop_core::guard::GuardState> {
        let rows = self.inner.query(&self.inner.sql.guard, &[]).await?;
        match rows.first() {
            Some(row) => {
                let value: serde_json::Value = decode("item", leadloop_store::GUARD_KEY, row.get(0))?;
                serde_json::from_value(value).map_err(|e| StoreError::Corrupt {
                    key: format!("{}/{}", leadloop_store::GUARD_BUCKET, leadloop_store::GUARD_KEY),
                    message: format!("guard state: {e}"),
                })
            }
            None => Ok(Default::default()),
        }
    }

    async fn suppression(&self, address: &str) -> Result<Option<Suppression>> {
        Ok(self.suppressions(&[address.to_owned()]).await?.pop().flatten())
    }

    async fn suppressions(&self, addresses: &[String]) -> Result<Vec<Option<Suppression>>> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        let lowered: Vec<String> = addresses.iter().map(|a| a.to_lowercase()).collect();
        let rows = self.inner.query(&self.inner.sql.suppressions, &[&lowered]).await?;
        let mut found: HashMap<String, Suppression> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let address: String = row.get(0);
            let entry = decode("suppression", &address, row.get(1))?;
            found.insert(address, entry);
        }
        Ok(lowered.iter().map(|a| found.get(a).cloned()).collect())
    }

    async fn open_handoffs(&self) -> Result<Vec<(LeadId, PersonId)>> {
        let rows = self.inner.query(&self.inner.sql.open_handoffs, &[]).await?;
        self.inner.count_reads(rows.len());
        Ok(rows
            .iter()
            .map(|row| (LeadId::new(row.get::<_, String>(0)), PersonId::new(row.get::<_, String>(1))))
            .collect())
    }

    async fn open_handoffs_per_owner(&self) -> Result<Vec<(PersonId, u64)>> {
        let rows = self.inner.query(&self.inner.sql.open_handoffs_per_owner, &[]).await?;
        Ok(rows
            .iter()
            .map(|row| (PersonId::new(row.get::<_, String>(0)), row.get::<_, i64>(1).max(0) as u64))
            .collect())
    }

    async fn seen(&self, keys: &[(LeadId, String)]) -> Result<Vec<bool>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let leads: Vec<&str> = keys.iter().map(|(lead, _)| lead.as_str()).collect();
        let names: Vec<&str> = keys.iter().map(|(_, key)| key.as_str()).collect();
        let rows = self.inner.query(&self.inner.sql.seen, &[&leads, &names]).await?;
        let found: HashSet<(String, String)> =
            rows.iter().map(|row| (row.get::<_, String>(0), row.get::<_, String>(1))).collect();
        Ok(keys.iter().map(|(lead, key)| found.contains(&(lead.0.clone(), key.clone()))).collect())
    }

    async fn leads_per_stage(&self) -> Result<Vec<(Stage, u64)>> {
        let rows = self.inner.query(&self.inner.sql.leads_per_stage, &[]).await?;
        let mut counts: HashMap<Stage, u64> = HashMap::new();
        for row in &rows {
            if let Some(stage) = stage_named(row.get(0)) {
                counts.insert(stage, row.get::<_, i64>(1).max(0) as u64);
            }
        }
        Ok(Stage::ALL.into_iter().map(|stage| (stage, counts.get(&stage).copied().unwrap_or(0))).collect())
    }

    async fn cursor(&self, name: &str) -> Result<Option<String>> {
        let rows = self.inner.query(&self.inner.sql.cursor, &[&name]).await?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    async fn items(&self, bucket: &str) -> Result<Vec<(String, serde_json::Value)>> {
        let rows = self.inner.query(&self.inner.sql.items, &[&bucket]).await?;
        self.inner.count_reads(rows.len());
        rows.iter()
            .map(|row| {
                let key: String = row.get(0);
                let value = decode("item", &key, row.get(1))?;
                Ok((key, value))
            })
            .collect()
    }

    async fn scan(&self, visit: &mut (dyn FnMut(Record) -> Result<()> + Send)) -> Result<()> {
        let inner = &self.inner;
        let mut client = inner.conn().await?;
        // One snapshot for the whole export.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(inner.db("cannot begin the export"))?;
        // Each table is one query read at the pace of the writer: no statement timeout.
        tx.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(inner.db("cannot begin the export"))?;
        for (table, sql) in inner.sql.scan.iter().enumerate() {
            let statement = tx.prepare_cached(sql).await.map_err(inner.db("cannot prepare the export"))?;
            let rows = tx
                .query_raw(&statement, std::iter::empty::<&(dyn ToSql + Sync)>())
                .await
                .map_err(inner.db("export failed"))?;
            let mut rows = std::pin::pin!(rows);
            while let Some(row) = rows.next().await {
                let row = row.map_err(inner.db("export failed"))?;
                let record = match table {
                    0 => Record::Item {
                        bucket: row.get(0),
                        key: row.get(1),
                        v: decode("item", "", row.get(2))?,
                    },
                    1 => Record::Cursor { name: row.get(0), value: row.get(1) },
                    2 => {
                        let seq: i64 = row.get(1);
                        Record::History {
                            lead: LeadId::new(row.get::<_, String>(0)),
                            seq: seq as u64,
                            v: decode("history", "", row.get(2))?,
                        }
                    }
                    3 => Record::Lead { v: Box::new(decode("lead", "", row.get(0))?) },
                    4 => Record::Outbox { v: outbox_from(&row)? },
                    5 => Record::Person { v: decode("person", "", row.get(0))? },
                    6 => Record::Suppression { v: decode("suppression", "", row.get(0))? },
                    7 => Record::Timer { v: decode("timer", "", row.get(0))? },
                    _ => Record::Seen { lead: LeadId::new(row.get::<_, String>(0)), key: row.get(1) },
                };
                visit(record)?;
            }
        }
        tx.commit().await.map_err(inner.db("cannot end the export"))?;
        Ok(())
    }

    async fn load(&self, records: Vec<Record>) -> Result<()> {
        let inner = &self.inner;
        // History keeps its exported sequence numbers.
        let (batch, history) = leadloop_store::import_batch(records);
        inner.ensure_instance().await.map_err(|e| inner.err(e))?;
        let mut client = inner.conn().await?;
        let tx = client.transaction().await.map_err(inner.db("cannot begin the import"))?;
        let prepared = Prepared::new(&tx, &inner.sql).await.map_err(|e| inner.err(e))?;
        let mut writes = Vec::with_capacity(history.len());
        for (lead, seq, event) in &history {
            let value = encode("history", lead.as_str(), event)?;
            writes.push(write(
                &prepared.insert_history,
                vec![Box::new(lead.0.clone()), Box::new(*seq as i64), Box::new(value)],
            ));
        }
        pipeline(&tx, &writes).await.map_err(|e| inner.err(e))?;
        apply(&tx, &prepared, &batch, &inner.schema).await.map_err(|e| inner.err(e))??;
        // New entries queue after the imported ones.
        let max: i64 = tx
            .query_one(&inner.sql.outbox_seq_max, &[])
            .await
            .map_err(inner.db("cannot read the queue order"))?
            .get(0);
        if max > 0 {
            tx.query_one(&inner.sql.outbox_seq_set, &[&max])
                .await
                .map_err(inner.db("cannot set the queue order"))?;
        }
        tx.commit().await.map_err(inner.db("cannot commit the import"))?;
        inner.flushes.fetch_add(1, Ordering::Relaxed);
        inner.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn is_empty(&self) -> Result<bool> {
        let rows = self.inner.query(&self.inner.sql.is_empty, &[]).await?;
        Ok(rows.first().is_some_and(|row| row.get(0)))
    }

    fn stats(&self) -> Stats {
        Stats {
            size_on_disk: self.inner.size.load(Ordering::Relaxed),
            commits: self.inner.commits.load(Ordering::Relaxed),
            flushes: self.inner.flushes.load(Ordering::Relaxed),
            records_read: self.inner.reads.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_as_sled_keys_do() {
        let t: Timestamp = "2026-03-02T14:00:00Z".parse().expect("instant");
        assert_eq!(ceil_ms(t), t);
        assert_eq!(ceil_ms(t + chrono::TimeDelta::microseconds(500)), t + chrono::TimeDelta::milliseconds(1));
        assert_eq!(floor_ms(t + chrono::TimeDelta::microseconds(999)), t);
        let before: Timestamp = "1969-07-20T20:17:00.0005Z".parse().expect("instant");
        assert_eq!(floor_ms(before), "1969-07-20T20:17:00Z".parse::<Timestamp>().expect("instant"));
    }
}
