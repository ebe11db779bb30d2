//! The traits connector plugins implement. Only plugins know a vendor's wire format: these
//! traits speak in leadloop's own types.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Timestamp;
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
}

impl ConnectorError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectorError::Transient { .. })
    }
}

/// The objects a CRM sync reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// An account, for account-centric routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub name: Option<String>,
    pub owner_id: Option<PersonId>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CrmRecord {
    Lead(Box<Lead>),
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

/// The CRM: the system of record for leads, users and activity.
#[async_trait]
pub trait Crm: Send + Sync {
    /// The connector's name, for logs and metrics.
    fn name(&self) -> &str;

    /// Reads changes to `object` after `cursor` (`None`: from the beginning).
    async fn pull(&self, object: CrmObject, cursor: Option<&str>) -> Result<ChangePage, ConnectorError>;

    /// Writes back; one result per write, in order.
    async fn push(&self, writes: &[CrmWrite]) -> Result<Vec<Result<(), ConnectorError>>, ConnectorError>;
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
}

/// A calendar entry, reduced to what routing and the SLA need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalendarEvent {
    pub start: Timestamp,
    pub end: Timestamp,
    pub all_day: bool,
    pub summary: String,
    /// Attendee and organizer addresses.
    pub attendees: Vec<String>,
    /// Marked out of office (or transparent all-day busy time).
    pub away: bool,
}

/// Reads reps' calendars and books holds.
#[async_trait]
pub trait Calendar: Send + Sync {
    fn name(&self) -> &str;

    /// The person's events overlapping `[from, to)`, recurring ones expanded.
    async fn events(
        &self,
        person: &PersonId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<CalendarEvent>, ConnectorError>;

    /// Books a hold; returns the calendar's id for it. Booking the same `key` twice keeps one.
    async fn place_hold(
        &self,
        person: &PersonId,
        key: &IdempotencyKey,
        start: Timestamp,
        end: Timestamp,
        summary: &str,
    ) -> Result<String, ConnectorError>;
}
