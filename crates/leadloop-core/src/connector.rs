//! The traits connector plugins implement. Only plugins know a vendor's wire format: these
//! traits speak in leadloop's own types.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Timestamp;
pub use crate::calendar::CalendarEvent;
use crate::effect::IdempotencyKey;
use crate::lead::{Lead, LeadId};
use crate::person::{Person, PersonId};

/// A connector's failure, classified so the engine knows whether to retry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConnectorError {
    /// Worth retrying: timeouts, connection errors, 4xx SMTP replies, 429/503.
    #[error("temporary failure: {message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// Not worth retrying: the peer refused for good (5xx SMTP, a rejected record).
    #[error("permanent failure: {message}")]
    Permanent { message: String },
    /// Credentials were refused; an operator must act.
    #[error("authentication failed: {message}")]
    Auth { message: String },
    /// A local disk the connector writes to is full (the `.eml` directory): no retry in this
    /// process helps, so the daemon stops (exit 74) and the work waits for the restart.
    #[error("no space left: {message}")]
    NoSpace { message: String },
}

impl ConnectorError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectorError::Transient { .. })
    }

    /// The same failure with its message rewritten, e.g. to name the server it concerns.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            ConnectorError::Transient { message, retry_after } => {
                ConnectorError::Transient { message: f(message), retry_after }
            }
            ConnectorError::Permanent { message } => ConnectorError::Permanent { message: f(message) },
            ConnectorError::Auth { message } => ConnectorError::Auth { message: f(message) },
            ConnectorError::NoSpace { message } => ConnectorError::NoSpace { message: f(message) },
        }
    }
}

/// The objects a CRM sync reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrmObject {
    Lead,
    Contact,
    User,
    Task,
    Account,
}

/// An activity on a lead, as the CRM or a tracked link reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    pub lead_id: LeadId,
    pub at: Timestamp,
    /// `task_completed`, `email_open`, `email_click`, `form_submit`, `web_visit`,
    /// `content_download`, `meeting`, `unsubscribe`, `bounce`, …
    pub kind: String,
    pub detail: BTreeMap<String, serde_json::Value>,
}

impl Activity {
    /// The key that identifies this activity at its source, if it has one: see
    /// [`activity_source_key`].
    pub fn source_key(&self) -> Option<String> {
        activity_source_key(&self.detail)
    }
}

/// The key that identifies an activity at its source — a CRM task's id and modification
/// stamp (`task_id`, `modstamp` in its detail) — so the same version read again is recognised
/// and taken in once. `None` for activities without a source id.
pub fn activity_source_key(detail: &BTreeMap<String, serde_json::Value>) -> Option<String> {
    let id = detail.get("task_id")?.as_str()?;
    let stamp = detail.get("modstamp").and_then(|v| v.as_str()).unwrap_or("");
    Some(format!("task/{id}/{stamp}"))
}

/// An account, for account-centric routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub name: Option<String>,
    pub owner_id: Option<PersonId>,
    pub domain: Option<String>,
}

/// A CRM contact: a person already in a customer relationship. leadloop never scores,
/// routes or nurtures contacts; it keeps them so their addresses and accounts are known.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Contact {
    pub id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub account_id: Option<String>,
    pub owner_id: Option<PersonId>,
    pub opted_out: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CrmRecord {
    Lead(Box<Lead>),
    Contact(Contact),
    User(Person),
    Activity(Activity),
    Account(Account),
}

/// A record the connector could not map, kept with the reason instead of failing the batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    pub object: CrmObject,
    pub id: Option<String>,
    pub reason: String,
    pub raw: serde_json::Value,
}

/// One page of changes since a cursor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChangePage {
    pub records: Vec<CrmRecord>,
    pub deleted: Vec<String>,
    pub quarantined: Vec<Quarantined>,
    /// Opaque to the engine; stored only once the records above are durable.
    pub next_cursor: Option<String>,
    /// More pages follow for the same pass.
    pub more: bool,
    /// When the CRM last changed each record of the page (Salesforce's `SystemModstamp`), by
    /// record id, where known: the start of the speed-to-alert measurement.
    pub changed_at: BTreeMap<String, Timestamp>,
    /// The CRM no longer keeps the deletes since the cursor (an outage longer than its
    /// window): records deleted meanwhile can only be found by asking which of the ids
    /// leadloop holds still exist ([`Crm::existing`]). The engine records that a sweep is
    /// due in the same batch as this page.
    pub sweep: bool,
}

/// What a CRM's change events said since a position: the records they name, read as the CRM
/// holds them now, as one page per object in [`CrmObject::ALL`]'s order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeEvents {
    pub pages: Vec<(CrmObject, ChangePage)>,
    /// Where the next read resumes (opaque to the engine; stored in the same batch as the last
    /// page, so it never passes changes that are not durable). `None`: unchanged.
    pub position: Option<String>,
    /// Changes may have been missed (an expired replay position, a gap or overflow event):
    /// why. The engine then runs the poll at once, which covers them.
    pub gap: Option<String>,
    /// Events read.
    pub events: usize,
}

/// A write to the CRM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CrmWrite {
    UpdateLead {
        key: IdempotencyKey,
        lead_id: LeadId,
        fields: serde_json::Map<String, serde_json::Value>,
    },
    CreateTask {
        key: IdempotencyKey,
        lead_id: LeadId,
        owner_id: PersonId,
        subject: String,
        due: Option<Timestamp>,
    },
}

impl CrmObject {
    /// Every object, in the order a sync pass ingests them: people and accounts before the
    /// leads that name them as owners, activities last.
    pub const ALL: [CrmObject; 5] =
        [CrmObject::User, CrmObject::Account, CrmObject::Lead, CrmObject::Contact, CrmObject::Task];

    pub fn as_str(self) -> &'static str {
        match self {
            CrmObject::Lead => "lead",
            CrmObject::Contact => "contact",
            CrmObject::User => "user",
            CrmObject::Task => "task",
            CrmObject::Account => "account",
        }
    }
}

impl std::fmt::Display for CrmObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object's next page, asked of [`Crm::pull`].
#[derive(Debug, Clone, PartialEq)]
pub struct PullRequest {
    pub object: CrmObject,
    /// What the last durable page returned as `next_cursor`; `None` reads from the beginning.
    pub cursor: Option<String>,
}

/// The CRM's API allowance as the connector last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ApiUsage {
    /// Calls this connector made since it was built.
    pub calls: u64,
    /// The CRM's count of calls used in its current window (e.g. Salesforce's rolling 24 h).
    pub used: Option<u64>,
    pub max: Option<u64>,
    /// Calls the connector will still spend on bulk sync before keeping the rest in reserve.
    pub bulk_left: Option<u64>,
}

/// Ids asked of [`Crm::existing`] in one call.
pub const SWEEP_CHUNK: usize = 300;

/// The CRM: the system of record for leads, users and activity.
#[async_trait]
pub trait Crm: Send + Sync {
    /// The connector's name, for logs and metrics.
    fn name(&self) -> &str;

    /// Reads the next page of changes for each object asked, in one call where the CRM allows
    /// (the first pages of a pass share one request). One result per request, in order: a
    /// failure of one object does not fail the others.
    async fn pull(
        &self,
        requests: &[PullRequest],
    ) -> Result<Vec<Result<ChangePage, ConnectorError>>, ConnectorError>;

    /// Writes back; one result per write, in order.
    async fn push(&self, writes: &[CrmWrite]) -> Result<Vec<Result<(), ConnectorError>>, ConnectorError>;

    /// Which of `ids` (records of `object`) the CRM still holds; one call for at most
    /// [`SWEEP_CHUNK`] ids. The delete sweep after a long outage asks it for the ids in the
    /// store. A connector that cannot answer leaves deletes to [`ChangePage::deleted`].
    async fn existing(&self, object: CrmObject, _ids: &[String]) -> Result<Vec<String>, ConnectorError> {
        Err(ConnectorError::Permanent {
            message: format!("the {} connector cannot check which {object} records exist", self.name()),
        })
    }

    /// The API allowance, for `sync --once`, metrics and the budget governor's log lines.
    fn usage(&self) -> ApiUsage {
        ApiUsage::default()
    }

    /// The connector's last reading of the CRM's allowance, in its own encoding (opaque to the
    /// engine, like a cursor). The engine keeps it in the store after each pass and gives it
    /// back to a new process through [`Crm::restore_budget_state`], so a `sync --once` knows the
    /// budget before its first call. `None`: nothing worth keeping.
    fn budget_state(&self) -> Option<String> {
        None
    }

    /// Takes back what [`Crm::budget_state`] returned in an earlier process; a connector ignores
    /// a reading too old to trust or one it cannot read.
    fn restore_budget_state(&self, _state: &str) {}

    /// Whether this connector can follow change events ([`Crm::changes`]).
    fn has_events(&self) -> bool {
        false
    }

    /// Waits for change events after `position` (what the last stored [`ChangeEvents`] said;
    /// `None`: from now on) on `objects`, up to the CRM's long-poll timeout, and reads the
    /// records they name. An empty answer with no position is a timeout. A `Permanent` error
    /// means the CRM does not offer events (not allowed for the org): the poll carries on.
    async fn changes(
        &self,
        _objects: &[CrmObject],
        _position: Option<&str>,
    ) -> Result<ChangeEvents, ConnectorError> {
        Err(ConnectorError::Permanent {
            message: format!("the {} connector has no change events", self.name()),
        })
    }

    /// A live check for `leadloop validate --connect`: logs in afresh (for Salesforce, the
    /// OAuth token request) and reads nothing. `Ok` says what answered; the error says why it
    /// failed, naming what was asked.
    async fn check(&self) -> Result<String, ConnectorError> {
        Err(no_check(self.name()))
    }
}

/// What a connector without a live check answers to `check`: a failure, so that
/// `validate --connect` never reports a peer as reachable without having reached it.
fn no_check(name: &str) -> ConnectorError {
    ConnectorError::Permanent { message: format!("the {name} connector has no live check") }
}

/// A message for the mailer: which template, for whom, with what data. The mailer renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutgoingEmail {
    /// Becomes the `Message-ID`, so a resend after a crash carries the same id.
    pub key: IdempotencyKey,
    pub kind: String,
    pub template: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub vars: serde_json::Value,
    /// The one address this copy goes to (the envelope), `to` and `cc` being the headers;
    /// `None`: every address in `to` and `cc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_to: Option<String>,
}

/// The server's acceptance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendReceipt {
    pub message_id: String,
    pub reply: String,
}

/// Sends email.
#[async_trait]
pub trait Mailer: Send + Sync {
    fn name(&self) -> &str;

    /// Returns only once the server accepted the message (SMTP 250), or an error that says
    /// whether to retry.
    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, ConnectorError>;

    /// A live check for `leadloop validate --connect`: opens a session with the server (for
    /// SMTP: EHLO, STARTTLS when configured, AUTH) and sends no mail.
    async fn check(&self) -> Result<String, ConnectorError> {
        Err(no_check(self.name()))
    }
}

/// A chat message for a chat connector, which renders it (Slack: Block Kit; Teams: an Adaptive
/// Card) from the step's variables: the lead, its top score reasons, the SLA deadline, and the
/// one-click answers bound to `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutgoingChat {
    pub key: IdempotencyKey,
    pub kind: String,
    pub service: crate::effect::ChatService,
    /// The person's email address (Slack finds the user by it).
    pub to: String,
    pub person: Option<PersonId>,
    pub lead_id: Option<LeadId>,
    pub vars: serde_json::Value,
}

/// Where the chat service put a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatReceipt {
    /// The conversation (Slack: the channel or DM id); empty where the service tells none.
    pub channel: String,
    /// The message's id in it (Slack: `ts`); empty where the service tells none.
    pub ts: String,
}

/// Posts chat messages (one connector per service).
#[async_trait]
pub trait ChatSender: Send + Sync {
    fn name(&self) -> &str;

    fn service(&self) -> crate::effect::ChatService;

    /// Returns once the service accepted the message. [`ConnectorError::Permanent`] when it
    /// never will (an unknown or deactivated user): the relay then sends the email fallback.
    /// [`ConnectorError::Transient`] with `retry_after` when throttled.
    async fn post(&self, message: &OutgoingChat) -> Result<ChatReceipt, ConnectorError>;

    /// A live check for `leadloop validate --connect`.
    async fn check(&self) -> Result<String, ConnectorError> {
        Err(no_check(self.name()))
    }
}

/// A calendar entry that could not be read, kept with the reason instead of failing the read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedEntry {
    /// Where it lives (the resource's URL).
    pub href: String,
    pub reason: String,
}

/// What one read of a person's calendars returned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CalendarRead {
    pub events: Vec<CalendarEvent>,
    /// Entries skipped as unreadable (malformed iCalendar, unknown time zone, …).
    pub skipped: Vec<SkippedEntry>,
}

/// Reads people's calendars and books holds.
#[async_trait]
pub trait Calendar: Send + Sync {
    fn name(&self) -> &str;

    /// The people this connector has a calendar for.
    fn people(&self) -> Vec<PersonId>;

    /// The person's events overlapping `[from, to)`, recurring ones expanded; all-day
    /// entries and floating times are placed in `time_zone` (the person's). Unreadable
    /// entries are skipped and listed; an unreachable calendar is an error.
    async fn events(
        &self,
        person: &PersonId,
        from: Timestamp,
        to: Timestamp,
        time_zone: chrono_tz::Tz,
    ) -> Result<CalendarRead, ConnectorError>;

    /// Books a hold; returns the calendar's id for it. Booking the same `key` twice keeps one.
    async fn place_hold(
        &self,
        person: &PersonId,
        key: &IdempotencyKey,
        start: Timestamp,
        end: Timestamp,
        summary: &str,
    ) -> Result<String, ConnectorError>;

    /// A live check for `leadloop validate --connect`: reaches the person's configured calendar
    /// (for CalDAV: a PROPFIND on the collection, or discovery from the principal) and changes
    /// nothing.
    async fn check(&self, person: &PersonId) -> Result<String, ConnectorError> {
        let _ = person;
        Err(no_check(self.name()))
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// A mailer that implements only what it must.
    struct Bare;

    #[async_trait]
    impl Mailer for Bare {
        fn name(&self) -> &str {
            "bare"
        }

        async fn send(&self, _email: &OutgoingEmail) -> Result<SendReceipt, ConnectorError> {
            Err(ConnectorError::Permanent { message: "unused".into() })
        }
    }

    #[test]
    fn a_connector_without_a_live_check_fails_it_rather_than_passing_unchecked() {
        let mailer = Bare;
        let mut check = mailer.check();
        let Poll::Ready(result) = check.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
            panic!("the default check awaits nothing");
        };
        assert_eq!(
            result,
            Err(ConnectorError::Permanent { message: "the bare connector has no live check".into() })
        );
    }
}
