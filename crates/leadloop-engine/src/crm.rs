//! The CRM side of the engine: sync passes that read pages of changes through a [`Crm`]
//! connector and ingest each page in one durable batch together with its cursor, and the
//! write-back relay that performs CRM effects from the outbox.
//!
//! - A page's records, its quarantined records, its deletes and the cursor after it commit
//!   together: the cursor never passes data that is not durable, and a restart resumes from
//!   the last durable page.
//! - Re-read records (the connector's overlap window, a page read twice after a crash) are
//!   harmless: an unchanged lead changes nothing, and an activity already in the lead's
//!   history (same CRM id and modification stamp) is skipped.
//! - A record that cannot be taken (unmappable, or naming an owner leadloop does not know) is
//!   quarantined with its reason in the `quarantine` bucket while the rest of the page syncs;
//!   it leaves quarantine when a later version of it syncs.
//! - Write-back: per-record errors are retried a bounded number of times, then dead-lettered
//!   with the CRM's reason; a failing call (CRM down, 429, budget spent) keeps the work and
//!   retries with backoff, honouring `Retry-After`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use leadloop_core::connector::{
    ApiUsage, ChangePage, ConnectorError, Crm, CrmObject, CrmRecord, CrmWrite, PullRequest, SWEEP_CHUNK,
};
use leadloop_core::{
    Actor, Channel, Clock, Effect, EventKind, HistoryEvent, IdempotencyKey, LeadId, LeadRecord, OrgChart,
    OutboxEntry, OutboxState, Person, PersonId, Timestamp,
};
use leadloop_store::{Batch, Op, Store};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::relay::{RelayConfig, RelayLoop, Round, backoff};
use crate::{Applied, Engine, EngineError, advance_chart, apply, remember_account};

/// The store bucket of records the sync could not take, keyed `OBJECT/ID`.
pub const QUARANTINE: &str = "quarantine";
/// The store bucket of CRM contacts, keyed by id.
pub const CONTACTS: &str = "contacts";

/// What ingesting pages did; added up over a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// Records read from the CRM, quarantined ones included.
    pub fetched: usize,
    /// Records that changed leadloop's state.
    pub stored: usize,
    /// Records read again that changed nothing.
    pub unchanged: usize,
    pub quarantined: usize,
    pub deleted: usize,
    /// Effects queued by the policy (alerts, hand-offs).
    pub enqueued: usize,
}

impl IngestReport {
    fn add(&mut self, other: &IngestReport) {
        self.fetched += other.fetched;
        self.stored += other.stored;
        self.unchanged += other.unchanged;
        self.quarantined += other.quarantined;
        self.deleted += other.deleted;
        self.enqueued += other.enqueued;
    }
}

/// Owners must be in the org chart (connectors add the CRM's queues as people with the
/// queue role).
fn owner_known(chart: &OrgChart, owner: &PersonId) -> bool {
    chart.get(owner).is_some()
}

impl Engine {
    /// Ingests one page of `object` and stores `page.next_cursor` under `cursor_name`, all in
    /// one durable batch.
    pub async fn ingest(
        &self,
        object: CrmObject,
        page: ChangePage,
        cursor_name: &str,
    ) -> Result<IngestReport, EngineError> {
        let _writer = self.writer.lock().await;
        let now = self.clock.now();
        let mut chart = self.chart();
        let mut batch = Batch::new();
        // What the page's decisions did, in types (the batch holds how to store it).
        let mut summary = leadloop_core::Summary::default();
        let mut report =
            IngestReport { fetched: page.records.len() + page.quarantined.len(), ..IngestReport::default() };
        if page.sweep && object == CrmObject::Lead {
            // The CRM lost the deletes since the cursor: a sweep of the ids held is due, from
            // the first (`CrmSync` runs it); recorded with the page that says so.
            tracing::warn!(object = %object, "the crm no longer keeps the deletes since the last sync (outage longer than its window); a sweep of the held ids will find them");
            batch.set_cursor(sweep_name(cursor_name), SWEEP_PENDING);
        }
        // The quarantine's keys, read from the store once and then kept with each commit (only
        // ingest writes the bucket); dropped on a failed commit, so the next page reads it again.
        let cached = self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut quarantined: BTreeSet<String> = match cached {
            Some(keys) => keys,
            None => self.store.items(QUARANTINE).await?.into_iter().map(|(key, _)| key).collect(),
        };
        let release = |quarantined: &mut BTreeSet<String>, batch: &mut Batch, id: &str| {
            let key = format!("{object}/{id}");
            if quarantined.remove(&key) {
                batch.push(Op::DeleteItem { bucket: QUARANTINE.into(), key });
            }
        };
        // The page's leads as stored, read in one call; then the leads decided in this page,
        // so a second record about the same lead sees the first.
        let mut ids: Vec<LeadId> = page
            .records
            .iter()
            .filter_map(|record| match record {
                CrmRecord::Lead(lead) => Some(lead.id.clone()),
                CrmRecord::Activity(activity) => Some(activity.lead_id.clone()),
                _ => None,
            })
            .chain(
                page.deleted.iter().filter(|_| object == CrmObject::Lead).map(|id| LeadId::new(id.clone())),
            )
            .collect();
        ids.sort();
        ids.dedup();
        let mut overlay: HashMap<LeadId, Option<LeadRecord>> =
            ids.iter().cloned().zip(self.store.leads_by_id(&ids).await?).collect();
        // Activities from the CRM already taken in (re-read in the overlap window).
        let sources: Vec<(LeadId, String)> = page
            .records
            .iter()
            .filter_map(|record| match record {
                CrmRecord::Activity(activity) => Some((activity.lead_id.clone(), activity.source_key()?)),
                _ => None,
            })
            .collect();
        let mut seen_before: HashSet<(LeadId, String)> = sources
            .iter()
            .cloned()
            .zip(self.store.seen(&sources).await?)
            .filter_map(|(key, seen)| seen.then_some(key))
            .collect();
        let mut people: Option<Vec<Person>> = None;
        let mut accounts = Vec::new();

        let mut chart_stale = false;
        for record in page.records {
            if chart_stale && !matches!(record, CrmRecord::User(_)) {
                // People changed earlier in this page: decide the rest with them in the chart.
                if let Some(list) = &people {
                    let mut rebuilt = OrgChart::new(list.clone());
                    rebuilt.load = std::mem::take(&mut chart.load);
                    rebuilt.turns = std::mem::take(&mut chart.turns);
                    rebuilt.accounts = std::mem::take(&mut chart.accounts);
                    chart = rebuilt;
                }
                chart_stale = false;
            }
            match record {
                CrmRecord::User(mut person) => {
                    if let Some(known) = chart.get(&person.id)
                        && person.role == leadloop_core::Role::Queue
                        && known.role == leadloop_core::Role::Queue
                    {
                        report.unchanged += 1;
                        continue;
                    }
                    if let Some(old) = chart.get(&person.id) {
                        // Role and capacity are leadloop's own (from config), not the CRM's.
                        person.role = old.role;
                        person.capacity = old.capacity;
                        if *old == person {
                            report.unchanged += 1;
                            continue;
                        }
                    }
                    release(&mut quarantined, &mut batch, person.id.as_str());
                    batch.put_person(person.clone());
                    let list = people.get_or_insert_with(|| chart.people().cloned().collect());
                    list.retain(|p| p.id != person.id);
                    list.push(person);
                    chart_stale = true;
                    report.stored += 1;
                }
                CrmRecord::Account(account) => {
                    release(&mut quarantined, &mut batch, &account.id);
                    let value = serde_json::to_value(&account).unwrap_or(serde_json::Value::Null);
                    batch.put_item("accounts", account.id.clone(), value);
                    remember_account(&mut chart, &account);
                    accounts.push(account);
                    report.stored += 1;
                }
                CrmRecord::Contact(contact) => {
                    release(&mut quarantined, &mut batch, &contact.id);
                    let value = serde_json::to_value(&contact).unwrap_or(serde_json::Value::Null);
                    batch.put_item(CONTACTS, contact.id.clone(), value);
                    report.stored += 1;
                }
                CrmRecord::Lead(lead) => {
                    let lead = *lead;
                    let changed_at = page.changed_at.get(lead.id.as_str()).copied();
                    if let Some(stamp) = changed_at {
                        // The other path (events or poll) already took in a newer version.
                        if self.crm_stamps.is_stale(lead.id.as_str(), stamp) {
                            report.unchanged += 1;
                            continue;
                        }
                        self.crm_stamps.taken(lead.id.as_str(), stamp, now);
                    }
                    if let Some(owner) = &lead.owner_id
                        && !owner_known(&chart, owner)
                    {
                        quarantine(
                            &mut quarantined,
                            &mut batch,
                            object,
                            Some(lead.id.as_str()),
                            &format!("unknown owner {owner}: not a user leadloop knows"),
                            serde_json::to_value(&lead).unwrap_or_default(),
                            now,
                        );
                        report.quarantined += 1;
                        continue;
                    }
                    release(&mut quarantined, &mut batch, lead.id.as_str());
                    let id = lead.id.clone();
                    let before = overlay.get(&id).cloned().flatten();
                    match self.lead_batch(before, lead, &chart, now).await? {
                        None => report.unchanged += 1,
                        Some(sub) => {
                            if let Some(stamp) = changed_at {
                                for op in &sub.batch.ops {
                                    if let Op::Enqueue(entry) = op
                                        && matches!(&entry.effect, leadloop_core::Effect::Email { kind, .. } if kind == crate::events::ALERT_KIND)
                                    {
                                        crate::events::alert_queued(entry.key.as_str(), stamp);
                                    }
                                }
                            }
                            take(&mut chart, &mut overlay, (&mut batch, &mut summary), sub);
                            report.stored += 1;
                        }
                    }
                }
                CrmRecord::Activity(activity) => {
                    let id = activity.lead_id.clone();
                    let Some(lead) = overlay.get(&id).cloned().flatten() else {
                        tracing::debug!(lead_id = %id, kind = %activity.kind, "activity for a lead leadloop does not hold; skipped");
                        report.unchanged += 1;
                        continue;
                    };
                    let source = activity.source_key();
                    if let Some(source) = &source {
                        // Taken in before, or earlier in this page.
                        if !seen_before.insert((id.clone(), source.clone())) {
                            report.unchanged += 1;
                            continue;
                        }
                    }
                    let mut decision = self.policy.on_activity(&lead, &activity, &chart, now);
                    decision.events.insert(
                        0,
                        HistoryEvent::new(
                            now,
                            Actor::System,
                            EventKind::Activity {
                                activity: activity.kind.clone(),
                                detail: activity.detail.clone(),
                            },
                        ),
                    );
                    let mut sub = apply(decision, Some(&id), Some(&lead), now);
                    if let Some(source) = source {
                        sub.batch.mark_seen(id.clone(), source);
                    }
                    take(&mut chart, &mut overlay, (&mut batch, &mut summary), sub);
                    report.stored += 1;
                }
            }
        }

        for id in &page.deleted {
            match object {
                CrmObject::Lead => {
                    let lead_id = LeadId::new(id.clone());
                    let Some(lead) = overlay.get(&lead_id).cloned().flatten() else { continue };
                    let mut decision = self.policy.on_delete(&lead, &chart, now);
                    decision.lead = None;
                    decision.events.push(HistoryEvent::new(now, Actor::System, EventKind::Deleted));
                    let mut sub = apply(decision, Some(&lead_id), Some(&lead), now);
                    sub.batch.delete_lead(lead_id, leadloop_store::Expect::Version(lead.version));
                    take(&mut chart, &mut overlay, (&mut batch, &mut summary), sub);
                }
                CrmObject::Account => {
                    batch.push(Op::DeleteItem { bucket: "accounts".into(), key: id.clone() });
                }
                CrmObject::Contact => {
                    batch.push(Op::DeleteItem { bucket: CONTACTS.into(), key: id.clone() });
                }
                CrmObject::User | CrmObject::Task => continue,
            }
            release(&mut quarantined, &mut batch, id);
            report.deleted += 1;
        }

        for q in &page.quarantined {
            quarantine(
                &mut quarantined,
                &mut batch,
                q.object,
                q.id.as_deref(),
                &q.reason,
                q.raw.clone(),
                now,
            );
            report.quarantined += 1;
        }
        if let Some(cursor) = page.next_cursor {
            batch.set_cursor(cursor_name, cursor);
        }
        report.enqueued = self.commit(Applied { batch, summary }).await?.len();
        *self.quarantined.lock().unwrap_or_else(|p| p.into_inner()) = Some(quarantined);

        if !accounts.is_empty() {
            let mut live = self.people.write().unwrap_or_else(|p| p.into_inner());
            for account in &accounts {
                remember_account(&mut live, account);
            }
        }
        if let Some(people) = people {
            let current = self.chart();
            let mut rebuilt = OrgChart::new(people);
            rebuilt.load = current.load;
            rebuilt.turns = current.turns;
            rebuilt.accounts = current.accounts;
            *self.people.write().unwrap_or_else(|p| p.into_inner()) = rebuilt;
        }
        metrics::counter!("leadloop_crm_records_total", "object" => object.as_str())
            .increment(report.fetched as u64);
        if report.quarantined > 0 {
            metrics::counter!("leadloop_crm_quarantined_total", "object" => object.as_str())
                .increment(report.quarantined as u64);
        }
        Ok(report)
    }
}

/// Folds one decision into the page's batch and summary: the lead's new state goes into the
/// overlay and routing's view moves on, so the next record in the page is decided on current
/// state.
fn take(
    chart: &mut OrgChart,
    overlay: &mut HashMap<LeadId, Option<LeadRecord>>,
    (batch, summary): (&mut Batch, &mut leadloop_core::Summary),
    sub: Applied,
) {
    for op in &sub.batch.ops {
        match op {
            Op::PutLead { record, .. } => {
                overlay.insert(record.lead.id.clone(), Some((**record).clone()));
            }
            Op::DeleteLead { id, .. } => {
                overlay.insert(id.clone(), None);
            }
            _ => {}
        }
    }
    advance_chart(chart, &sub.summary);
    batch.ops.extend(sub.batch.ops);
    summary.extend(sub.summary);
}

fn quarantine(
    quarantined: &mut BTreeSet<String>,
    batch: &mut Batch,
    object: CrmObject,
    id: Option<&str>,
    reason: &str,
    raw: serde_json::Value,
    now: Timestamp,
) {
    tracing::warn!(object = %object, id = id.unwrap_or("(none)"), %reason, "crm record quarantined");
    let key = match id {
        Some(id) => format!("{object}/{id}"),
        None => format!("{object}/(no id) {}", now.timestamp_nanos_opt().unwrap_or_default()),
    };
    let value = serde_json::json!({"object": object, "id": id, "reason": reason, "at": now, "raw": raw});
    quarantined.insert(key.clone());
    batch.put_item(QUARANTINE, key, value);
}

/// The cursor under which a delete sweep's progress is kept, beside `cursor_name`'s.
fn sweep_name(cursor_name: &str) -> String {
    format!("{cursor_name}.sweep")
}

/// A sweep is due or under way: the prefix, then the last id checked (empty: none yet).
const SWEEP_PENDING: &str = "pending:";
/// No sweep is due.
const SWEEP_DONE: &str = "done";

/// What one sync pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    #[serde(flatten)]
    pub records: IngestReport,
    /// Pages ingested.
    pub pages: usize,
    /// Objects that could not be read this pass, with why; their cursors did not move.
    pub errors: Vec<(CrmObject, String)>,
    /// The shortest `Retry-After` the CRM asked for, if it asked.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// Leads whose existence a delete sweep checked with the CRM this pass.
    pub swept: usize,
    /// API calls this pass made.
    pub api_calls: u64,
    /// Time spent waiting for the CRM, and storing what it sent.
    pub pull_seconds: f64,
    pub ingest_seconds: f64,
    pub api: ApiUsage,
}

/// Sync passes over the CRM's objects.
pub struct CrmSync {
    engine: Engine,
    crm: Arc<dyn Crm>,
    objects: Vec<CrmObject>,
    /// Set when change events are followed: the poll is then a safety net.
    events: Option<Arc<crate::events::EventState>>,
}

impl std::fmt::Debug for CrmSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrmSync").field("crm", &self.crm.name()).field("objects", &self.objects).finish()
    }
}

impl CrmSync {
    /// Syncs `objects` (in [`CrmObject::ALL`]'s order whatever the order given).
    pub fn new(engine: Engine, crm: Arc<dyn Crm>, objects: &[CrmObject]) -> Self {
        let objects = CrmObject::ALL.into_iter().filter(|o| objects.contains(o)).collect();
        Self { engine, crm, objects, events: None }
    }

    /// Polls as the safety net of change events: at `state`'s longer interval while they
    /// flow, and at once when the follower asks (a gap, events stopping).
    pub fn with_events(mut self, state: Arc<crate::events::EventState>) -> Self {
        self.events = Some(state);
        self
    }

    pub fn cursor_name(&self, object: CrmObject) -> String {
        format!("crm.{}.{}", self.crm.name(), object)
    }

    /// Where the connector's last budget reading is kept between processes.
    pub fn budget_name(&self) -> String {
        format!("crm.{}.budget", self.crm.name())
    }

    /// Reads every object until no page is left, each page durable before the next is asked.
    pub async fn pass(&self) -> Result<SyncReport, EngineError> {
        let calls_before = self.crm.usage().calls;
        if calls_before == 0
            && let Some(state) = self.engine.store().cursor(&self.budget_name()).await?
        {
            // A new process: what the last one learnt of the allowance, before any call.
            self.crm.restore_budget_state(&state);
        }
        let report = self.pass_inner(calls_before).await?;
        if report.api_calls > 0
            && let Some(state) = self.crm.budget_state()
        {
            let mut batch = Batch::new();
            batch.set_cursor(self.budget_name(), state);
            self.engine.store().commit(batch).await?;
        }
        Ok(report)
    }

    async fn pass_inner(&self, calls_before: u64) -> Result<SyncReport, EngineError> {
        let mut report = SyncReport::default();
        let pending = self.objects.clone();
        {
            let mut requests = Vec::with_capacity(pending.len());
            for object in &pending {
                let cursor = self.engine.store().cursor(&self.cursor_name(*object)).await?;
                requests.push(PullRequest { object: *object, cursor });
            }
            let pulling = std::time::Instant::now();
            let pulled = self.crm.pull(&requests).await;
            report.pull_seconds += pulling.elapsed().as_secs_f64();
            let results = match pulled {
                Ok(results) => results,
                Err(error) => {
                    for object in &pending {
                        report.errors.push((*object, error.to_string()));
                    }
                    note_retry(&mut report, &error);
                    return Ok(self.finish(report, calls_before));
                }
            };
            // In object order (owners before what they own); an object with more pages is
            // read to its end before the next, each page fetched while the one before it is
            // stored, and stored (with its cursor) strictly in order.
            for (object, result) in pending.iter().zip(results) {
                match result {
                    Ok(page) => self.follow(*object, page, &mut report).await?,
                    Err(error) => self.failed(*object, error, &mut report),
                }
            }
        }
        if pending.contains(&CrmObject::Lead) {
            self.sweep(CrmObject::Lead, &mut report).await?;
        }
        Ok(self.finish(report, calls_before))
    }

    /// The delete sweep, when one is due (see [`ChangePage::sweep`]): the leads the store
    /// holds, in id order and [`SWEEP_CHUNK`] at a time, are checked with the CRM
    /// ([`Crm::existing`], one call a chunk, counted against the API budget like any bulk
    /// read), and those it no longer has are deleted as a delete from the CRM would be: their
    /// hand-offs end and their history stays. Each chunk's deletes commit with the sweep's
    /// progress, so a sweep cut short (a crash, the budget, a failed call) resumes after the
    /// last chunk done. The object's other reads wait meanwhile, so no lead enters the store
    /// while the sweep runs; a lead created in the CRM since is not in the store to check.
    async fn sweep(&self, object: CrmObject, report: &mut SyncReport) -> Result<(), EngineError> {
        let name = sweep_name(&self.cursor_name(object));
        let store = self.engine.store().clone();
        let Some(state) = store.cursor(&name).await? else { return Ok(()) };
        let Some(after) = state.strip_prefix(SWEEP_PENDING) else { return Ok(()) };
        let mut after = (!after.is_empty()).then(|| LeadId::new(after));
        loop {
            let leads = store.leads(after.as_ref(), SWEEP_CHUNK).await?;
            let Some(last) = leads.last().map(|l| l.lead.id.clone()) else {
                let mut batch = Batch::new();
                batch.set_cursor(name, SWEEP_DONE);
                store.commit(batch).await?;
                tracing::info!(object = %object, deleted = report.records.deleted, checked = report.swept, "delete sweep done");
                return Ok(());
            };
            let ids: Vec<String> = leads.iter().map(|l| l.lead.id.as_str().to_owned()).collect();
            let pulling = std::time::Instant::now();
            let existing = match self.crm.existing(object, &ids).await {
                Ok(existing) => existing,
                Err(error) => {
                    self.failed(object, error, report);
                    return Ok(());
                }
            };
            report.pull_seconds += pulling.elapsed().as_secs_f64();
            let existing: HashSet<&str> = existing.iter().map(String::as_str).collect();
            let missing: Vec<String> =
                ids.iter().filter(|id| !existing.contains(id.as_str())).cloned().collect();
            if !missing.is_empty() {
                tracing::info!(object = %object, count = missing.len(), "delete sweep: leads the crm no longer has are deleted");
            }
            report.swept += ids.len();
            let page = ChangePage {
                deleted: missing,
                next_cursor: Some(format!("{SWEEP_PENDING}{}", last.as_str())),
                ..ChangePage::default()
            };
            let ingesting = std::time::Instant::now();
            let ingested = self.engine.ingest(object, page, &name).await?;
            report.ingest_seconds += ingesting.elapsed().as_secs_f64();
            report.records.add(&ingested);
            after = Some(last);
        }
    }

    fn finish(&self, mut report: SyncReport, calls_before: u64) -> SyncReport {
        report.api = self.crm.usage();
        report.api_calls = report.api.calls.saturating_sub(calls_before);
        metrics::counter!("leadloop_crm_sync_passes_total").increment(1);
        report
    }

    async fn ingest(
        &self,
        object: CrmObject,
        page: ChangePage,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let ingesting = std::time::Instant::now();
        let ingested = self.engine.ingest(object, page, &self.cursor_name(object)).await?;
        report.ingest_seconds += ingesting.elapsed().as_secs_f64();
        report.records.add(&ingested);
        report.pages += 1;
        Ok(())
    }

    fn failed(&self, object: CrmObject, error: ConnectorError, report: &mut SyncReport) {
        tracing::warn!(object = %object, %error, "crm sync of this object failed; its cursor stays");
        note_retry(report, &error);
        report.errors.push((object, error.to_string()));
    }

    /// Stores `page` and every page after it, fetching each next page while the current one
    /// is being stored.
    async fn follow(
        &self,
        object: CrmObject,
        first: ChangePage,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let mut page = first;
        loop {
            let prefetch = page.more.then(|| {
                let crm = self.crm.clone();
                let request = PullRequest { object, cursor: page.next_cursor.clone() };
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let result = crm.pull(std::slice::from_ref(&request)).await;
                    (result, started.elapsed().as_secs_f64())
                })
            });
            self.ingest(object, page, report).await?;
            let Some(prefetch) = prefetch else { return Ok(()) };
            let (result, waited) = match prefetch.await {
                Ok(done) => done,
                Err(error) => {
                    self.failed(
                        object,
                        ConnectorError::Transient {
                            message: format!("page fetch stopped: {error}"),
                            retry_after: None,
                        },
                        report,
                    );
                    return Ok(());
                }
            };
            report.pull_seconds += waited;
            match result.map(|mut r| r.pop()) {
                Ok(Some(Ok(next))) => page = next,
                Ok(Some(Err(error))) | Err(error) => {
                    self.failed(object, error, report);
                    return Ok(());
                }
                Ok(None) => return Ok(()),
            }
        }
    }

    /// Passes every `interval` until `shutdown`; after a failure, waits as long as the CRM
    /// asked (`Retry-After`, even beyond `interval`: asking sooner is refused again), or else
    /// backs off (10 s doubling, never longer than `interval`).
    pub async fn run(&self, shutdown: CancellationToken, interval: Duration) {
        let mut failures = 0u32;
        loop {
            let wait = match self.pass().await {
                Ok(report) => {
                    tracing::info!(
                        fetched = report.records.fetched,
                        stored = report.records.stored,
                        quarantined = report.records.quarantined,
                        deleted = report.records.deleted,
                        swept = report.swept,
                        api_calls = report.api_calls,
                        errors = report.errors.len(),
                        "crm sync pass done"
                    );
                    if !report.errors.is_empty() {
                        // Why, once per distinct reason (a deferred pass fails every object
                        // for the same one).
                        let mut reasons: Vec<&str> = Vec::new();
                        for (_, error) in &report.errors {
                            if !reasons.contains(&error.as_str()) {
                                reasons.push(error);
                            }
                        }
                        let objects: Vec<String> = report.errors.iter().map(|(o, _)| o.to_string()).collect();
                        tracing::warn!(
                            objects = %objects.join(","),
                            reason = %reasons.join("; "),
                            retry_after_s = report.retry_after.map(|d| d.as_secs()),
                            "crm sync pass left objects for later"
                        );
                    }
                    if report.errors.is_empty() {
                        failures = 0;
                        self.events.as_ref().map_or(interval, |events| events.interval(interval))
                    } else {
                        failures += 1;
                        report.retry_after.unwrap_or_else(|| backoff_after(failures).min(interval))
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::error!(%error, "crm sync pass could not write to the store");
                    backoff_after(failures).min(interval)
                }
            };
            let requested = async {
                match &self.events {
                    Some(events) => events.poll_requested().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = requested => tracing::info!("crm poll run at once for the change events"),
            }
        }
    }
}

fn note_retry(report: &mut SyncReport, error: &ConnectorError) {
    if let ConnectorError::Transient { retry_after: Some(after), .. } = error {
        report.retry_after = Some(report.retry_after.map_or(*after, |r| r.min(*after)));
    }
}

fn backoff_after(failures: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << failures.min(8)))
}

/// How the CRM relay retries.
#[derive(Debug, Clone)]
pub struct CrmRelayConfig {
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// A record the CRM refuses is tried this many times in all, then dead-lettered.
    pub max_attempts: u32,
    /// Writes taken per round (the connector splits them into calls of its own limit).
    pub batch: usize,
}

impl Default for CrmRelayConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            max_attempts: 5,
            batch: 1000,
        }
    }
}

/// What one relay round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CrmRelayReport {
    pub written: usize,
    pub retried: usize,
    pub dead_lettered: usize,
    /// Kept back by a CRM pause (`leadloop pause crm`).
    pub held: usize,
}

/// Performs CRM effects from the outbox.
pub struct CrmRelay {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    crm: Arc<dyn Crm>,
    config: CrmRelayConfig,
    wake: Arc<Notify>,
    writer: Arc<tokio::sync::Mutex<()>>,
    /// The engine's blast-radius guard: CRM writes wait while `crm` is paused.
    guard: Option<Arc<crate::Guard>>,
}

impl std::fmt::Debug for CrmRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrmRelay").field("crm", &self.crm.name()).field("config", &self.config).finish()
    }
}

impl CrmRelay {
    pub fn new(engine: &Engine, crm: Arc<dyn Crm>, config: CrmRelayConfig) -> Self {
        let wake = Arc::new(Notify::new());
        let guard = engine.guard().cloned();
        if let Some(guard) = &guard {
            guard.add_waker(Arc::clone(&wake));
        }
        Self {
            store: engine.store().clone(),
            clock: engine.clock().clone(),
            crm,
            config,
            wake,
            writer: engine.writer_lock(),
            guard,
        }
    }

    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// One round: every CRM write ready now.
    pub async fn run_once(&self) -> Result<CrmRelayReport, EngineError> {
        let now = self.clock.now();
        let mut ready = self.store.outbox_ready(Channel::Crm, now, self.config.batch).await?;
        let mut report = CrmRelayReport::default();
        if let Some(guard) = &self.guard
            && !ready.is_empty()
        {
            let switches = guard.state().await?;
            let mut held = Batch::new();
            ready.retain(|entry| match guard.screen(entry, &switches) {
                leadloop_core::guard::Verdict::Go => true,
                leadloop_core::guard::Verdict::Hold(reason) => {
                    let mut entry = entry.clone();
                    crate::Guard::hold(&mut entry, reason, now);
                    held.update_outbox(entry);
                    false
                }
            });
            report.held = held.len();
            if !held.is_empty() {
                self.store.commit(held).await?;
            }
        }
        if ready.is_empty() {
            return Ok(report);
        }
        let writes: Vec<CrmWrite> = ready
            .iter()
            .filter_map(|entry| match &entry.effect {
                Effect::CrmUpdate { lead_id, fields } => Some(CrmWrite::UpdateLead {
                    key: entry.key.clone(),
                    lead_id: lead_id.clone(),
                    fields: fields.clone(),
                }),
                Effect::CrmTask { lead_id, owner_id, subject, due } => Some(CrmWrite::CreateTask {
                    key: entry.key.clone(),
                    lead_id: lead_id.clone(),
                    owner_id: owner_id.clone(),
                    subject: subject.clone(),
                    due: *due,
                }),
                Effect::Email { .. } | Effect::CalendarHold { .. } | Effect::Chat { .. } => None,
            })
            .collect();
        let outcomes: Vec<Result<(), ConnectorError>> = match self.crm.push(&writes).await {
            Ok(results) => {
                // The CRM answered; nothing of it is recorded yet.
                crate::relay::failpoint("crm.after_push");
                results
            }
            Err(error) => {
                // The call failed as a whole: nothing was written, the work stays.
                tracing::warn!(%error, writes = writes.len(), "crm write-back failed; will retry");
                let _writer = self.writer.lock().await;
                let mut batch = Batch::new();
                for mut entry in ready {
                    entry.attempts += 1;
                    let delay = match &error {
                        ConnectorError::Transient { retry_after: Some(after), .. } => *after,
                        _ => self.backoff(&entry),
                    };
                    entry.next_attempt_at = now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX);
                    entry.last_error = Some(error.to_string());
                    batch.update_outbox(entry);
                    report.retried += 1;
                }
                self.store.commit(batch).await?;
                metrics::counter!("leadloop_crm_writes_retried_total").increment(report.retried as u64);
                return Ok(report);
            }
        };
        let _writer = self.writer.lock().await;
        let mut batch = Batch::new();
        for (mut entry, outcome) in ready.into_iter().zip(outcomes) {
            entry.attempts += 1;
            let lead_id = entry.effect.lead_id().cloned();
            let event = match outcome {
                Ok(()) => {
                    entry.state = OutboxState::Done { at: now };
                    entry.last_error = None;
                    report.written += 1;
                    Some(EventKind::EffectDone { key: entry.key.clone() })
                }
                Err(error) if entry.attempts >= self.config.max_attempts => {
                    let reason = format!("refused {} times; last: {error}", entry.attempts);
                    tracing::error!(key = %entry.key, %reason, "crm write dead-lettered");
                    entry.state = OutboxState::Failed { at: now, reason: reason.clone() };
                    report.dead_lettered += 1;
                    Some(EventKind::EffectFailed { key: entry.key.clone(), reason })
                }
                Err(error) => {
                    let delay = self.backoff(&entry);
                    tracing::warn!(key = %entry.key, attempts = entry.attempts, retry_in_s = delay.as_secs(), %error, "crm refused a write; will retry");
                    entry.next_attempt_at = now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX);
                    entry.last_error = Some(error.to_string());
                    report.retried += 1;
                    None
                }
            };
            if let (Some(event), Some(id)) = (event, lead_id) {
                batch.append_history(id, HistoryEvent::new(now, Actor::System, event));
            }
            batch.update_outbox(entry);
        }
        self.store.commit(batch).await?;
        metrics::counter!("leadloop_crm_writes_total").increment(report.written as u64);
        metrics::counter!("leadloop_crm_writes_retried_total").increment(report.retried as u64);
        metrics::counter!("leadloop_crm_writes_dead_lettered_total").increment(report.dead_lettered as u64);
        Ok(report)
    }

    fn backoff(&self, entry: &OutboxEntry) -> Duration {
        let config = RelayConfig {
            retry_base: self.config.retry_base,
            retry_max: self.config.retry_max,
            ..RelayConfig::default()
        };
        backoff(&config, entry.key.as_str(), entry.attempts)
    }

    /// Rounds until `shutdown`, sleeping until woken or the next retry is due.
    pub async fn run(&self, shutdown: CancellationToken, max_idle: Duration) {
        let relay = RelayLoop {
            name: "crm",
            store: self.store.as_ref(),
            clock: self.clock.as_ref(),
            channel: Channel::Crm,
            wake: Some(&self.wake),
        };
        relay
            .run(&shutdown, max_idle, || async {
                let report = self.run_once().await?;
                Ok(if report.written + report.dead_lettered + report.held > 0 {
                    Round::Progress
                } else {
                    Round::Idle
                })
            })
            .await
    }
}

/// A CRM write the CRM refused for good (a dead letter): what `leadloop crm dead-letters`
/// lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// The outbox key; `leadloop crm replay KEY` names it.
    pub key: IdempotencyKey,
    pub lead_id: Option<LeadId>,
    /// `crm.update` or `crm.task`.
    pub write: &'static str,
    /// What the write carried: the fields of an update, the task's owner, subject and due date.
    pub fields: serde_json::Value,
    /// The CRM's refusal, as recorded when the write was given up.
    pub error: String,
    pub attempts: u32,
    pub queued_at: Timestamp,
    pub failed_at: Timestamp,
}

/// The CRM writes that failed for good, in key order.
pub async fn dead_letters(store: &dyn Store) -> Result<Vec<DeadLetter>, leadloop_store::StoreError> {
    Ok(store
        .outbox_failed(Channel::Crm)
        .await?
        .into_iter()
        .filter_map(|entry| {
            let OutboxState::Failed { at, reason } = &entry.state else { return None };
            let fields = match &entry.effect {
                Effect::CrmUpdate { fields, .. } => serde_json::Value::Object(fields.clone()),
                Effect::CrmTask { owner_id, subject, due, .. } => {
                    serde_json::json!({ "owner_id": owner_id, "subject": subject, "due": due })
                }
                Effect::Email { .. } | Effect::CalendarHold { .. } | Effect::Chat { .. } => {
                    serde_json::Value::Null
                }
            };
            Some(DeadLetter {
                key: entry.key.clone(),
                lead_id: entry.effect.lead_id().cloned(),
                write: entry.effect.name(),
                fields,
                error: reason.clone(),
                attempts: entry.attempts,
                queued_at: entry.created_at,
                failed_at: *at,
            })
        })
        .collect())
}

/// Which dead letters to put back in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayWhich {
    Keys(Vec<String>),
    All,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReplayReport {
    /// Keys put back in the queue, due now.
    pub replayed: Vec<String>,
    /// Keys asked for that are not dead letters of the CRM, with why.
    pub refused: Vec<(String, String)>,
}

/// Puts CRM dead letters back in the queue, due at `now`, with their attempts counted afresh;
/// each lead's history records the replay with `by` (the operator) and the failure it had.
/// Everything changes in one batch. The CRM relay performs them at its next round (the daemon
/// wakes it).
pub async fn replay(
    store: &dyn Store,
    now: Timestamp,
    which: &ReplayWhich,
    by: &Actor,
) -> Result<ReplayReport, leadloop_store::StoreError> {
    let mut report = ReplayReport::default();
    let entries: Vec<OutboxEntry> = match which {
        ReplayWhich::All => store.outbox_failed(Channel::Crm).await?,
        ReplayWhich::Keys(keys) => {
            let mut entries = Vec::new();
            for key in keys {
                let found = match IdempotencyKey::parse(key) {
                    Ok(parsed) => store.outbox_entry(&parsed).await?,
                    Err(_) => None,
                };
                match found {
                    None => report.refused.push((key.clone(), "no such outbox entry".into())),
                    Some(entry) if entry.effect.channel() != Channel::Crm => {
                        report.refused.push((key.clone(), "not a CRM write".into()))
                    }
                    Some(entry) if !matches!(entry.state, OutboxState::Failed { .. }) => {
                        report.refused.push((key.clone(), "not a dead letter (pending or written)".into()))
                    }
                    Some(entry) => entries.push(entry),
                }
            }
            entries
        }
    };
    let mut batch = Batch::new();
    for mut entry in entries {
        let OutboxState::Failed { reason, .. } = &entry.state else { continue };
        let reason = reason.clone();
        if let Some(lead) = entry.effect.lead_id().cloned() {
            batch.append_history(
                lead,
                HistoryEvent::new(
                    now,
                    by.clone(),
                    EventKind::EffectReplayed {
                        key: entry.key.clone(),
                        reason: reason.clone(),
                        attempts: entry.attempts,
                    },
                ),
            );
        }
        tracing::info!(key = %entry.key, by = %by, "crm dead letter put back in the queue");
        report.replayed.push(entry.key.to_string());
        entry.state = OutboxState::Pending;
        entry.attempts = 0;
        entry.next_attempt_at = now;
        entry.last_error = Some(format!("replayed by {by} after: {reason}"));
        batch.update_outbox(entry);
    }
    if !batch.is_empty() {
        store.commit(batch).await?;
        metrics::counter!("leadloop_crm_writes_replayed_total").increment(report.replayed.len() as u64);
    }
    Ok(report)
}
