//! Salesforce records to leadloop's types and back. The standard fields are mapped here;
//! config adds custom ones (`Interests__c = "interests"`). A record that cannot be mapped —
//! a required field missing, an address that is not one, a value of the wrong type — is
//! quarantined with the reason instead of failing its page.

use std::collections::BTreeMap;

use leadloop_core::connector::{Account, Activity, Contact, CrmObject, CrmRecord, Quarantined};
use leadloop_core::{Lead, LeadId, Person, PersonId, Role, Timestamp};
use serde_json::{Map, Value};

/// leadloop fields a Salesforce field may map to, per object (`custom.NAME` is always allowed
/// for leads, where it lands in `Lead::custom`).
const LEAD_TARGETS: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "company",
    "account_id",
    "title",
    "industry",
    "company_size",
    "country",
    "time_zone",
    "lead_source",
    "status",
    "owner_id",
    "opted_out",
    "interests",
];
const CONTACT_TARGETS: &[&str] = &["first_name", "last_name", "email", "account_id", "owner_id", "opted_out"];
const USER_TARGETS: &[&str] = &["email", "name", "first_name", "last_name", "manager", "time_zone", "active"];
const TASK_TARGETS: &[&str] = &["who", "subject", "status", "closed", "owner_id", "type", "due"];
const ACCOUNT_TARGETS: &[&str] = &["name", "owner_id", "domain"];

/// The standard mapping: Salesforce field → leadloop field.
pub fn standard(object: CrmObject) -> &'static [(&'static str, &'static str)] {
    match object {
        CrmObject::Lead => &[
            ("FirstName", "first_name"),
            ("LastName", "last_name"),
            ("Email", "email"),
            ("Company", "company"),
            ("Title", "title"),
            ("Industry", "industry"),
            ("NumberOfEmployees", "company_size"),
            ("Country", "country"),
            ("LeadSource", "lead_source"),
            ("Status", "status"),
            ("OwnerId", "owner_id"),
            ("HasOptedOutOfEmail", "opted_out"),
            ("ConvertedAccountId", "account_id"),
        ],
        CrmObject::Contact => &[
            ("FirstName", "first_name"),
            ("LastName", "last_name"),
            ("Email", "email"),
            ("AccountId", "account_id"),
            ("OwnerId", "owner_id"),
            ("HasOptedOutOfEmail", "opted_out"),
        ],
        CrmObject::User => &[
            ("Email", "email"),
            ("Name", "name"),
            ("ManagerId", "manager"),
            ("TimeZoneSidKey", "time_zone"),
            ("IsActive", "active"),
        ],
        CrmObject::Task => &[
            ("WhoId", "who"),
            ("Subject", "subject"),
            ("Status", "status"),
            ("IsClosed", "closed"),
            ("OwnerId", "owner_id"),
            ("Type", "type"),
            ("ActivityDate", "due"),
        ],
        CrmObject::Account => &[("Name", "name"), ("OwnerId", "owner_id"), ("Website", "domain")],
    }
}

/// Whether `target` names a leadloop field of `object`.
pub fn check_target(object: CrmObject, target: &str) -> Result<(), String> {
    let targets = match object {
        CrmObject::Lead => LEAD_TARGETS,
        CrmObject::Contact => CONTACT_TARGETS,
        CrmObject::User => USER_TARGETS,
        CrmObject::Task => TASK_TARGETS,
        CrmObject::Account => ACCOUNT_TARGETS,
    };
    if targets.contains(&target) {
        return Ok(());
    }
    if matches!(object, CrmObject::Lead | CrmObject::Task)
        && let Some(name) = target.strip_prefix("custom.")
        && !name.is_empty()
    {
        return Ok(());
    }
    Err(format!(
        "`{target}` is not a leadloop {object} field; known: {}{}",
        targets.join(", "),
        if matches!(object, CrmObject::Lead | CrmObject::Task) { ", custom.NAME" } else { "" }
    ))
}

/// The longest text Salesforce stores in a field, in characters, from its field reference
/// (`string`/`email`/`picklist` lengths); a record holding more did not come from Salesforce
/// as documented, and would carry it into subjects, logs and the store. Custom fields are
/// capped at a long text area's 131,072.
pub fn max_chars(object: CrmObject, field: &str) -> usize {
    const LONG_TEXT: usize = 131_072;
    let known: &[(&str, usize)] = match object {
        CrmObject::Lead => &[
            ("FirstName", 40),
            ("LastName", 80),
            ("Email", 80),
            ("Company", 255),
            ("Title", 128),
            ("Industry", 255),
            ("Country", 80),
            ("LeadSource", 255),
            ("Status", 255),
        ],
        CrmObject::Contact => &[("FirstName", 40), ("LastName", 80), ("Email", 80)],
        CrmObject::User => {
            &[("Email", 128), ("Name", 121), ("FirstName", 40), ("LastName", 80), ("TimeZoneSidKey", 40)]
        }
        CrmObject::Task => &[("Subject", 255), ("Status", 255), ("Type", 255)],
        CrmObject::Account => &[("Name", 255), ("Website", 255)],
    };
    known.iter().find(|(name, _)| name.eq_ignore_ascii_case(field)).map_or(LONG_TEXT, |(_, n)| *n)
}

/// Why a mapped text value cannot be taken as it is: bytes that were not UTF-8 (replaced by
/// U+FFFD when the response was decoded), or more characters than Salesforce stores.
fn text_problem(object: CrmObject, field: &str, value: &str) -> Option<String> {
    if value.contains('\u{FFFD}') {
        return Some(format!("{field}: not valid UTF-8 (the CRM sent bytes that are not text)"));
    }
    let limit = max_chars(object, field);
    // Counting stops past the limit: a huge value costs no more than the limit.
    let count = value.chars().take(limit + 1).count();
    (count > limit).then(|| {
        format!("{field}: {} characters, more than the {limit} Salesforce allows", value.chars().count())
    })
}

/// The record as kept in the quarantine: a text value over its field's limit is cut to the
/// limit, marked, so a huge field is not stored whole.
fn quarantined_raw(object: CrmObject, raw: &Map<String, Value>) -> Value {
    let mut out = raw.clone();
    for (field, value) in out.iter_mut() {
        if let Value::String(text) = value {
            let limit = max_chars(object, field);
            if text.chars().take(limit + 1).count() > limit {
                let total = text.chars().count();
                let kept: String = text.chars().take(limit).collect();
                *text = format!("{kept}… [cut: {total} characters]");
            }
        }
    }
    Value::Object(out)
}

/// The mapping in force for one object: standard fields plus config, config winning.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub object: CrmObject,
    /// Salesforce field → leadloop field, in a stable order.
    pub fields: BTreeMap<String, String>,
}

impl Mapping {
    pub fn new(object: CrmObject, extra: &BTreeMap<String, String>) -> Self {
        let mut fields: BTreeMap<String, String> =
            standard(object).iter().map(|(crm, ours)| ((*crm).to_owned(), (*ours).to_owned())).collect();
        // A config entry mapping a field to a target the standard mapping already fills
        // replaces the standard source of that target.
        for (crm, ours) in extra {
            fields.retain(|_, target| target != ours || ours.starts_with("custom."));
            fields.insert(crm.clone(), ours.clone());
        }
        Self { object, fields }
    }

    /// The SOQL select list: `Id`, `SystemModstamp`, then the mapped fields.
    pub fn select_list(&self) -> String {
        let mut names = vec!["Id".to_owned(), "SystemModstamp".to_owned()];
        names.extend(self.fields.keys().filter(|k| *k != "Id" && *k != "SystemModstamp").cloned());
        names.join(", ")
    }

    /// The Salesforce field that leadloop field `ours` (or `custom.ours`) is read from.
    pub fn crm_field(&self, ours: &str) -> Option<&str> {
        let custom = format!("custom.{ours}");
        self.fields.iter().find(|(_, t)| *t == ours || **t == custom).map(|(crm, _)| crm.as_str())
    }

    /// Maps one record, or says why it cannot be.
    pub fn map(&self, raw: &Map<String, Value>) -> Result<CrmRecord, Quarantined> {
        let id = raw.get("Id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let quarantine = |reason: String| Quarantined {
            object: self.object,
            id: (!id.is_empty()).then(|| id.clone()),
            reason,
            raw: quarantined_raw(self.object, raw),
        };
        if !is_salesforce_id(&id) {
            return Err(quarantine(if id.is_empty() {
                "missing required field Id".into()
            } else {
                format!("Id `{id}` is not a Salesforce id")
            }));
        }
        for crm in self.fields.keys() {
            if let Some(Value::String(text)) = raw.get(crm)
                && let Some(problem) = text_problem(self.object, crm, text)
            {
                return Err(quarantine(problem));
            }
        }
        let mut values = Values::default();
        for (crm, ours) in &self.fields {
            let value = raw.get(crm).cloned().unwrap_or(Value::Null);
            if let Some(name) = ours.strip_prefix("custom.") {
                if !value.is_null() {
                    values.custom.insert(name.to_owned(), value);
                }
            } else {
                values.fields.insert(ours.as_str(), (crm.as_str(), value));
            }
        }
        let result = match self.object {
            CrmObject::Lead => lead(&id, &values).map(|l| CrmRecord::Lead(Box::new(l))),
            CrmObject::Contact => contact(&id, &values).map(CrmRecord::Contact),
            CrmObject::User => user(&id, &values).map(CrmRecord::User),
            CrmObject::Task => task(&id, raw, &values).map(CrmRecord::Activity),
            CrmObject::Account => account(&id, &values).map(CrmRecord::Account),
        };
        result.map_err(quarantine)
    }
}

#[derive(Default)]
struct Values<'a> {
    /// leadloop field → (Salesforce field, value).
    fields: BTreeMap<&'a str, (&'a str, Value)>,
    custom: BTreeMap<String, Value>,
}

impl Values<'_> {
    fn string(&self, ours: &str) -> Result<Option<String>, String> {
        match self.fields.get(ours) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((_, Value::String(s))) if s.trim().is_empty() => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.trim().to_owned())),
            Some((_, Value::Number(n))) => Ok(Some(n.to_string())),
            Some((_, Value::Bool(b))) => Ok(Some(b.to_string())),
            Some((crm, other)) => Err(format!("{crm}: {other} is not a text value")),
        }
    }

    fn required(&self, ours: &str, crm_default: &str) -> Result<String, String> {
        self.string(ours)?.ok_or_else(|| {
            let crm = self.fields.get(ours).map(|(c, _)| *c).unwrap_or(crm_default);
            format!("missing required field {crm}")
        })
    }

    fn boolean(&self, ours: &str) -> Result<Option<bool>, String> {
        match self.fields.get(ours) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((_, Value::Bool(b))) => Ok(Some(*b)),
            Some((_, Value::String(s))) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some((_, Value::String(s))) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some((crm, other)) => Err(format!("{crm}: {other} is not true or false")),
        }
    }

    fn count(&self, ours: &str) -> Result<Option<u32>, String> {
        match self.fields.get(ours) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((crm, Value::Number(n))) => n
                .as_f64()
                .filter(|f| *f >= 0.0 && *f <= f64::from(u32::MAX))
                .map(|f| Some(f as u32))
                .ok_or_else(|| format!("{crm}: {n} is not a count")),
            Some((crm, Value::String(s))) => {
                s.trim().parse::<u32>().map(Some).map_err(|_| format!("{crm}: `{s}` is not a number"))
            }
            Some((crm, other)) => Err(format!("{crm}: {other} is not a number")),
        }
    }

    fn list(&self, ours: &str) -> Result<Vec<String>, String> {
        match self.fields.get(ours) {
            None | Some((_, Value::Null)) => Ok(Vec::new()),
            // A multi-select picklist arrives as `a;b;c`.
            Some((_, Value::String(s))) => {
                Ok(s.split([';', ',']).map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect())
            }
            Some((_, Value::Array(items))) => {
                Ok(items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            }
            Some((crm, other)) => Err(format!("{crm}: {other} is not a list")),
        }
    }

    fn id(&self, ours: &str) -> Result<Option<String>, String> {
        let Some(value) = self.string(ours)? else { return Ok(None) };
        if is_salesforce_id(&value) {
            Ok(Some(value))
        } else {
            let crm = self.fields.get(ours).map(|(c, _)| *c).unwrap_or(ours);
            Err(format!("{crm}: `{value}` is not a Salesforce id"))
        }
    }

    fn email(&self, ours: &str) -> Result<Option<String>, String> {
        let Some(value) = self.string(ours)? else { return Ok(None) };
        if plausible_email(&value) {
            Ok(Some(value))
        } else {
            let crm = self.fields.get(ours).map(|(c, _)| *c).unwrap_or("Email");
            Err(format!("{crm}: `{value}` is not a valid email address"))
        }
    }
}

fn lead(id: &str, v: &Values<'_>) -> Result<Lead, String> {
    let mut lead = Lead::new(id);
    lead.first_name = v.string("first_name")?;
    lead.last_name = Some(v.required("last_name", "LastName")?);
    lead.email = v.email("email")?;
    lead.company = v.string("company")?;
    lead.account_id = v.id("account_id")?;
    lead.title = v.string("title")?;
    lead.industry = v.string("industry")?;
    lead.company_size = v.count("company_size")?;
    lead.country = v.string("country")?;
    lead.time_zone = v.string("time_zone")?;
    lead.lead_source = v.string("lead_source")?;
    lead.status = v.string("status")?;
    lead.owner_id = v.id("owner_id")?.map(PersonId::new);
    lead.opted_out = v.boolean("opted_out")?.unwrap_or(false);
    lead.interests = v.list("interests")?;
    lead.custom = v.custom.clone();
    Ok(lead)
}

fn contact(id: &str, v: &Values<'_>) -> Result<Contact, String> {
    Ok(Contact {
        id: id.to_owned(),
        first_name: v.string("first_name")?,
        last_name: Some(v.required("last_name", "LastName")?),
        email: v.email("email")?,
        account_id: v.id("account_id")?,
        owner_id: v.id("owner_id")?.map(PersonId::new),
        opted_out: v.boolean("opted_out")?.unwrap_or(false),
    })
}

fn user(id: &str, v: &Values<'_>) -> Result<Person, String> {
    let email = v.email("email")?.ok_or_else(|| "missing required field Email".to_owned())?;
    let name = match v.string("name")? {
        Some(name) => name,
        None => {
            let parts: Vec<String> =
                [v.string("first_name")?, v.string("last_name")?].into_iter().flatten().collect();
            if parts.is_empty() { email.clone() } else { parts.join(" ") }
        }
    };
    Ok(Person {
        id: PersonId::new(id),
        email,
        name,
        manager: v.id("manager")?.map(PersonId::new),
        time_zone: v.string("time_zone")?,
        role: Role::Rep,
        active: v.boolean("active")?.unwrap_or(true),
        capacity: None,
    })
}

fn task(id: &str, raw: &Map<String, Value>, v: &Values<'_>) -> Result<Activity, String> {
    let who = v.id("who")?.ok_or_else(|| "missing required field WhoId".to_owned())?;
    let closed = v.boolean("closed")?.unwrap_or(false)
        || v.string("status")?.is_some_and(|s| s.eq_ignore_ascii_case("completed"));
    let at = raw
        .get("SystemModstamp")
        .and_then(Value::as_str)
        .and_then(parse_datetime)
        .ok_or_else(|| "SystemModstamp missing or not a date-time".to_owned())?;
    let mut detail = BTreeMap::new();
    detail.insert("task_id".to_owned(), Value::String(id.to_owned()));
    detail.insert("modstamp".to_owned(), Value::String(format_datetime(at)));
    for (key, ours) in
        [("subject", "subject"), ("type", "type"), ("owner_id", "owner_id"), ("status", "status")]
    {
        if let Some(value) = v.string(ours)? {
            detail.insert(key.to_owned(), Value::String(value));
        }
    }
    for (name, value) in &v.custom {
        detail.insert(name.clone(), value.clone());
    }
    Ok(Activity {
        lead_id: LeadId::new(who),
        at,
        kind: if closed { "task_completed" } else { "task_open" }.to_owned(),
        detail,
    })
}

fn account(id: &str, v: &Values<'_>) -> Result<Account, String> {
    Ok(Account {
        id: id.to_owned(),
        name: v.string("name")?,
        owner_id: v.id("owner_id")?.map(PersonId::new),
        domain: v.string("domain")?.and_then(|w| website_domain(&w)),
    })
}

/// `https://www.Example.com/about` → `example.com`.
pub fn website_domain(website: &str) -> Option<String> {
    let rest = website.trim();
    let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = host.split(':').next().unwrap_or_default().to_ascii_lowercase();
    let host = host.strip_prefix("www.").unwrap_or(&host).to_owned();
    (host.contains('.') && !host.starts_with('.')).then_some(host)
}

/// 15 or 18 alphanumeric characters.
pub fn is_salesforce_id(id: &str) -> bool {
    (id.len() == 15 || id.len() == 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn plausible_email(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else { return false };
    !local.is_empty()
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !address.chars().any(|c| c.is_whitespace() || c == ',' || c == '<' || c == '>')
}

/// Salesforce writes `2026-11-23T16:35:33.000+0000`; SOQL also accepts RFC 3339.
pub fn parse_datetime(s: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A SOQL date-time literal, e.g. `2026-11-23T16:35:33.000Z`.
pub fn format_datetime(t: Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The write-back field holding the reason of a one-click Disqualify answer; written to
/// `disqualify_reason_field` when one is configured.
pub const DISQUALIFY_REASON: &str = "disqualify_reason";

/// leadloop's field names in a write-back, to Salesforce's. Unknown names are returned in
/// the second list (the relay records them; they are not sent).
pub fn lead_update_fields(
    mapping: &Mapping,
    fields: &Map<String, Value>,
) -> (Map<String, Value>, Vec<String>) {
    let mut out = Map::new();
    let mut unknown = Vec::new();
    for (ours, value) in fields {
        match mapping.crm_field(ours) {
            Some(crm) => {
                out.insert(crm.to_owned(), value.clone());
            }
            None => unknown.push(ours.clone()),
        }
    }
    (out, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn lead_mapping() -> Mapping {
        let mut extra = BTreeMap::new();
        extra.insert("Interests__c".to_owned(), "interests".to_owned());
        extra.insert("Segment__c".to_owned(), "custom.segment".to_owned());
        Mapping::new(CrmObject::Lead, &extra)
    }

    #[test]
    fn maps_a_lead_with_custom_fields() {
        let record = lead_mapping()
            .map(&raw(json!({
                "Id": "00Q000000000001AAA", "FirstName": "Ada", "LastName": "Byron",
                "Email": "ada@example.com", "NumberOfEmployees": 250, "HasOptedOutOfEmail": false,
                "OwnerId": "005000000000001AAA", "Interests__c": "analytics;security",
                "Segment__c": "enterprise", "Status": "Open - Not Contacted"
            })))
            .expect("maps");
        let CrmRecord::Lead(lead) = record else { panic!("not a lead: {record:?}") };
        assert_eq!(lead.display_name(), "Ada Byron");
        assert_eq!(lead.company_size, Some(250));
        assert_eq!(lead.interests, ["analytics", "security"]);
        assert_eq!(lead.custom.get("segment"), Some(&json!("enterprise")));
        assert_eq!(lead.owner_id, Some(PersonId::new("005000000000001AAA")));
        assert!(lead_mapping().select_list().contains("Interests__c"));
    }

    #[test]
    fn quarantines_with_the_reason() {
        let cases = [
            (json!({"LastName": "X"}), "missing required field Id"),
            (json!({"Id": "00Q000000000002AAA"}), "missing required field LastName"),
            (
                json!({"Id": "00Q000000000003AAA", "LastName": "X", "Email": "not-an-address"}),
                "Email: `not-an-address` is not a valid email address",
            ),
            (
                json!({"Id": "00Q000000000004AAA", "LastName": "X", "NumberOfEmployees": "lots"}),
                "NumberOfEmployees: `lots` is not a number",
            ),
            (
                json!({"Id": "00Q000000000005AAA", "LastName": "X", "OwnerId": "nobody"}),
                "OwnerId: `nobody` is not a Salesforce id",
            ),
        ];
        for (input, reason) in cases {
            let error = lead_mapping().map(&raw(input.clone())).expect_err("quarantined");
            assert_eq!(error.reason, reason, "{input}");
            assert_eq!(error.raw, input);
        }
    }

    #[test]
    fn quarantines_text_over_salesforce_limits_or_not_utf8_and_keeps_it_cut() {
        let long = "x".repeat(1_500_000);
        let error = lead_mapping()
            .map(&raw(json!({"Id": "00Q000000000006AAA", "LastName": "X", "FirstName": long})))
            .expect_err("quarantined");
        assert_eq!(error.reason, "FirstName: 1500000 characters, more than the 40 Salesforce allows");
        let kept = error.raw["FirstName"].as_str().expect("text");
        assert!(kept.starts_with(&"x".repeat(40)) && kept.ends_with("… [cut: 1500000 characters]"), "{kept}");
        assert!(kept.len() < 100);
        // At the limit is fine, as is a custom field far longer than a standard one.
        let at_limit = json!({"Id": "00Q000000000007AAA", "LastName": "X", "FirstName": "y".repeat(40),
            "Segment__c": "z".repeat(5000)});
        lead_mapping().map(&raw(at_limit)).expect("maps");
        let error = lead_mapping()
            .map(&raw(json!({"Id": "00Q000000000008AAA", "LastName": "Bad\u{FFFD}Byte"})))
            .expect_err("quarantined");
        assert_eq!(error.reason, "LastName: not valid UTF-8 (the CRM sent bytes that are not text)");
    }

    #[test]
    fn maps_users_tasks_and_accounts() {
        let user = Mapping::new(CrmObject::User, &BTreeMap::new())
            .map(&raw(json!({"Id": "005000000000001AAA", "Email": "rep@example.com", "Name": "Rep One",
                "ManagerId": "005000000000002AAA", "TimeZoneSidKey": "Europe/Berlin", "IsActive": true})))
            .expect("user");
        let CrmRecord::User(person) = user else { panic!("not a user") };
        assert_eq!(person.manager, Some(PersonId::new("005000000000002AAA")));
        assert_eq!(person.time_zone.as_deref(), Some("Europe/Berlin"));

        let task = Mapping::new(CrmObject::Task, &BTreeMap::new())
            .map(&raw(
                json!({"Id": "00T000000000001AAA", "WhoId": "00Q000000000001AAA", "Status": "Completed",
                "IsClosed": true, "SystemModstamp": "2026-11-23T16:35:33.000+0000", "Subject": "Call"}),
            ))
            .expect("task");
        let CrmRecord::Activity(activity) = task else { panic!("not an activity") };
        assert_eq!(activity.kind, "task_completed");
        assert_eq!(activity.detail.get("modstamp"), Some(&json!("2026-11-23T16:35:33.000Z")));

        let account = Mapping::new(CrmObject::Account, &BTreeMap::new())
            .map(&raw(
                json!({"Id": "001000000000001AAA", "Name": "Acme", "Website": "https://www.Acme.com/about"}),
            ))
            .expect("account");
        let CrmRecord::Account(account) = account else { panic!("not an account") };
        assert_eq!(account.domain.as_deref(), Some("acme.com"));
    }

    #[test]
    fn write_back_names_salesforce_fields() {
        let mut fields = Map::new();
        fields.insert("status".into(), json!("Working - Contacted"));
        fields.insert("owner_id".into(), json!("005000000000001AAA"));
        fields.insert("segment".into(), json!("smb"));
        fields.insert("disqualify_reason".into(), json!("no budget"));
        let (out, unknown) = lead_update_fields(&lead_mapping(), &fields);
        assert_eq!(out.get("Status"), Some(&json!("Working - Contacted")));
        assert_eq!(out.get("OwnerId"), Some(&json!("005000000000001AAA")));
        assert_eq!(out.get("Segment__c"), Some(&json!("smb")));
        assert_eq!(unknown, ["disqualify_reason"]);
    }
}
