//! `[crm.salesforce]`: where the org is, how leadloop logs in, which fields it reads, and how
//! much of the daily API allowance it may spend. Secrets come from `*_file` or `*_env` keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use leadloop_core::connector::CrmObject;
use serde::Deserialize;

/// How leadloop authenticates to Salesforce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFlow {
    /// OAuth 2.0 JWT bearer: an RS256 assertion signed with the connected app's key.
    #[default]
    Jwt,
    /// OAuth 2.0 client credentials against the org's My Domain token endpoint.
    ClientCredentials,
    /// OAuth 2.0 refresh token, from an earlier authorization.
    RefreshToken,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// The token endpoint's host: `https://login.salesforce.com`, `https://test.salesforce.com`
    /// or the org's My Domain (required for client credentials). Also the JWT's `aud`.
    #[serde(default = "default_login_url")]
    pub login_url: String,
    /// The JWT `aud` when it differs from `login_url` (rare: a My Domain login URL with the
    /// assertion still addressed to `https://login.salesforce.com`).
    pub audience: Option<String>,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default)]
    pub auth: AuthFlow,
    /// The connected app's consumer key.
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    /// The integration user, for the JWT flow.
    pub username: Option<String>,
    /// PEM private key of the connected app's certificate, for the JWT flow.
    pub private_key_file: Option<PathBuf>,
    pub private_key_env: Option<String>,
    pub refresh_token_file: Option<PathBuf>,
    pub refresh_token_env: Option<String>,
    /// Records per query page (200–2000).
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// How late a transaction may commit after its `SystemModstamp`: a query that started at
    /// T moves the watermark only to T minus this, so such a record is read by the next
    /// query instead of skipped; records read twice are deduplicated.
    #[serde(default = "default_overlap", with = "leadloop_plugin::serde_duration")]
    pub overlap: Duration,
    /// Share of the daily API allowance kept for SLA-critical writes: bulk sync stops when
    /// less than this remains.
    #[serde(default = "default_reserve")]
    pub budget_reserve: f64,
    /// A custom Task field marked External ID and unique (e.g. `Leadloop_Key__c`): follow-up
    /// tasks are then upserted on it with their idempotency key, so a call repeated after a
    /// crash updates the task instead of creating a second one. Without it, such a repeat
    /// may leave two tasks (`validate` says so).
    pub task_key_field: Option<String>,
    /// How long one HTTP request may take.
    #[serde(default = "default_timeout", with = "leadloop_plugin::serde_duration")]
    pub timeout: Duration,
    /// Extra fields to read, per object: Salesforce field → leadloop field (`first_name`,
    /// `interests`, `time_zone`, … or `custom.NAME`). They add to, and may override, the
    /// standard mapping.
    #[serde(default)]
    pub fields: FieldsConfig,
    /// The Lead field (a custom text field such as `Disqualify_Reason__c`) that the reason a
    /// rep types in a one-click Disqualify answer is written to. Unset, the reason stays in
    /// leadloop's history only.
    #[serde(default)]
    pub disqualify_reason_field: Option<String>,
    /// Follow Change Data Capture events (Streaming API, `/data/ChangeEvents`) so a change
    /// reaches leadloop in seconds; the `SystemModstamp` poll keeps running as a safety net
    /// every `events_poll_interval`. Where the org does not allow it, the poll runs at
    /// `crm.poll_interval` as without events.
    #[serde(default = "default_true")]
    pub events: bool,
    /// How often the safety-net poll runs while change events flow.
    #[serde(default = "default_events_poll_interval", with = "leadloop_plugin::serde_duration")]
    pub events_poll_interval: Duration,
}

fn default_true() -> bool {
    true
}

fn default_events_poll_interval() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsConfig {
    #[serde(default)]
    pub lead: BTreeMap<String, String>,
    #[serde(default)]
    pub contact: BTreeMap<String, String>,
    #[serde(default)]
    pub user: BTreeMap<String, String>,
    #[serde(default)]
    pub task: BTreeMap<String, String>,
    #[serde(default)]
    pub account: BTreeMap<String, String>,
}

impl FieldsConfig {
    pub fn for_object(&self, object: CrmObject) -> &BTreeMap<String, String> {
        match object {
            CrmObject::Lead => &self.lead,
            CrmObject::Contact => &self.contact,
            CrmObject::User => &self.user,
            CrmObject::Task => &self.task,
            CrmObject::Account => &self.account,
        }
    }
}

fn default_login_url() -> String {
    "https://login.salesforce.com".into()
}

fn default_api_version() -> String {
    "v62.0".into()
}

fn default_page_size() -> usize {
    2000
}

fn default_overlap() -> Duration {
    Duration::from_secs(5)
}

fn default_reserve() -> f64 {
    0.2
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

impl SalesforceConfig {
    /// A config for the given org and client, everything else default (tests, the demo).
    pub fn new(login_url: impl Into<String>, client_id: impl Into<String>, auth: AuthFlow) -> Self {
        Self {
            login_url: login_url.into(),
            audience: None,
            api_version: default_api_version(),
            auth,
            client_id: client_id.into(),
            client_secret_file: None,
            client_secret_env: None,
            username: None,
            private_key_file: None,
            private_key_env: None,
            refresh_token_file: None,
            refresh_token_env: None,
            page_size: default_page_size(),
            overlap: default_overlap(),
            budget_reserve: default_reserve(),
            task_key_field: None,
            timeout: default_timeout(),
            fields: FieldsConfig::default(),
            disqualify_reason_field: None,
            events: true,
            events_poll_interval: default_events_poll_interval(),
        }
    }

    /// Problems found without reading secrets or the network: `(key, message)` pairs, the key
    /// relative to `[crm.salesforce]`.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(self.login_url.starts_with("https://") || self.login_url.starts_with("http://")) {
            problems.push(("login_url".into(), format!("`{}` is not an http(s) URL", self.login_url)));
        }
        if !valid_version(&self.api_version) {
            problems.push((
                "api_version".into(),
                format!("`{}` is not an API version like `v62.0`", self.api_version),
            ));
        }
        if let Some(field) = &self.disqualify_reason_field
            && (field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            problems.push((
                "disqualify_reason_field".into(),
                format!("`{field}` is not a Salesforce field name (like `Disqualify_Reason__c`)"),
            ));
        }
        if self.client_id.trim().is_empty() {
            problems.push(("client_id".into(), "must not be empty".into()));
        }
        if !(200..=2000).contains(&self.page_size) {
            problems.push(("page_size".into(), format!("{} is outside 200..=2000", self.page_size)));
        }
        if self.events && self.events_poll_interval < Duration::from_secs(60) {
            problems.push((
                "events_poll_interval".into(),
                format!(
                    "{} s is too often for a safety-net poll (at least 60 s; the events bring changes in seconds)",
                    self.events_poll_interval.as_secs()
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.budget_reserve) {
            problems.push((
                "budget_reserve".into(),
                format!("{} is not a share between 0 and 1 (0.2 keeps 20 %)", self.budget_reserve),
            ));
        }
        if let Some(field) = &self.task_key_field
            && !is_api_name(field)
        {
            problems.push((
                "task_key_field".into(),
                format!("`{field}` is not a Salesforce field API name (letters, digits and `_`, like `Leadloop_Key__c`)"),
            ));
        }
        let has = |file: &Option<PathBuf>, env: &Option<String>| file.is_some() || env.is_some();
        match self.auth {
            AuthFlow::Jwt => {
                if self.username.is_none() {
                    problems.push(("username".into(), "the JWT flow needs the integration user".into()));
                }
                if !has(&self.private_key_file, &self.private_key_env) {
                    problems.push((
                        "private_key_file".into(),
                        "the JWT flow needs the connected app's key (`private_key_file` or `private_key_env`)"
                            .into(),
                    ));
                }
            }
            AuthFlow::ClientCredentials => {
                if !has(&self.client_secret_file, &self.client_secret_env) {
                    problems.push((
                        "client_secret_file".into(),
                        "client credentials need `client_secret_file` or `client_secret_env`".into(),
                    ));
                }
            }
            AuthFlow::RefreshToken => {
                if !has(&self.refresh_token_file, &self.refresh_token_env) {
                    problems.push((
                        "refresh_token_file".into(),
                        "the refresh-token flow needs `refresh_token_file` or `refresh_token_env`".into(),
                    ));
                }
            }
        }
        for object in CrmObject::ALL {
            for (crm, target) in self.fields.for_object(object) {
                if !valid_field_name(crm) {
                    problems.push((
                        format!("fields.{object}.{crm}"),
                        format!("`{crm}` is not a Salesforce field name"),
                    ));
                }
                if let Err(message) = crate::mapping::check_target(object, target) {
                    problems.push((format!("fields.{object}.{crm}"), message));
                }
            }
        }
        problems
    }
}

fn valid_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else { return false };
    let Some((major, minor)) = rest.split_once('.') else { return false };
    !major.is_empty()
        && !minor.is_empty()
        && major.bytes().all(|b| b.is_ascii_digit())
        && minor.bytes().all(|b| b.is_ascii_digit())
}

/// Letters, digits and underscores, starting with a letter (custom fields end in `__c`).
pub(crate) fn valid_field_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A field API name: a letter, then letters, digits and single underscores (`Leadloop_Key__c`
/// ends in the custom-field suffix, whose double underscore is allowed).
fn is_api_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_each_flow_for_its_secret() {
        let mut config = SalesforceConfig::new("https://login.salesforce.com", "key", AuthFlow::Jwt);
        let keys: Vec<String> = config.check().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["username", "private_key_file"]);
        config.auth = AuthFlow::ClientCredentials;
        config.client_secret_env = Some("SF_SECRET".into());
        assert!(config.check().is_empty());
        config.page_size = 5000;
        config.api_version = "62".into();
        config.fields.lead.insert("Bad Field".into(), "nowhere".into());
        let keys: Vec<String> = config.check().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["api_version", "page_size", "fields.lead.Bad Field", "fields.lead.Bad Field"]);
    }
}
