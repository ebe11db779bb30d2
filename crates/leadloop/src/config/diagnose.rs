//! Finding every problem in a config file at once.
//!
//! serde stops at the first error, so the schema pass loops: deserialize; on an error, record
//! it with its line and key, blank out the offending entry (spaces in place of its bytes, so
//! every later line and column stays true) and try again. Then the semantic checks run on the
//! result (missing required fields, references between people, manager loops), skipping
//! anything whose entry was blanked so one mistake is reported once.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use leadloop_core::{OrgChart, PersonId};
use toml::de::{DeTable, DeValue};

use super::Config;

/// The most schema errors collected before giving up; a file this broken is better fixed first.
const MAX_SCHEMA_ERRORS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One finding, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the finding concerns the whole file.
    pub line: usize,
    pub column: usize,
    /// Dotted path of the key, e.g. `daemon.admin_listen` or `people[2].manager`.
    pub key: String,
    pub message: String,
    pub severity: Severity,
}

impl Diagnostic {
    pub fn file_error(file: &Path, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message,
            severity: Severity::Error,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        if self.severity == Severity::Warning {
            f.write_str(": warning")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Findings in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn single(diagnostic: Diagnostic) -> Self {
        Self(vec![diagnostic])
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in &self.0 {
            writeln!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// An entry of the file with where it sits: the key, the value, and everything beneath it.
#[derive(Debug)]
struct Node {
    path: String,
    key: Range<usize>,
    extent: Range<usize>,
    children: Vec<Node>,
}

fn index_table(table: &DeTable<'_>, prefix: &str) -> Vec<Node> {
    table
        .iter()
        .map(|(key, value)| {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            node(path, key.span(), value)
        })
        .collect()
}

fn node(path: String, key: Range<usize>, value: &toml::Spanned<DeValue<'_>>) -> Node {
    let children = match value.get_ref() {
        DeValue::Table(table) => index_table(table, &path),
        DeValue::Array(array) => array
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let span = item.span();
                node(format!("{path}[{i}]"), span.clone(), item)
            })
            .collect(),
        _ => Vec::new(),
    };
    let value_span = value.span();
    let start = key.start.min(value_span.start);
    let end = children.iter().map(|c| c.extent.end).fold(key.end.max(value_span.end), usize::max);
    Node { path, key, extent: start..end, children }
}

/// The deepest entry whose extent holds `at`.
fn deepest(nodes: &[Node], at: usize) -> Option<&Node> {
    let found =
        nodes.iter().find(|n| n.extent.contains(&at) || (n.extent.is_empty() && n.extent.start == at))?;
    Some(deepest(&found.children, at).unwrap_or(found))
}

fn find<'a>(nodes: &'a [Node], path: &str) -> Option<&'a Node> {
    for node in nodes {
        if node.path == path {
            return Some(node);
        }
        if path.starts_with(&node.path)
            && let Some(found) = find(&node.children, path)
        {
            return Some(found);
        }
    }
    None
}

/// Line and column (1-based) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Widens `range` to whole lines when nothing else shares them (a `[table]` header's brackets,
/// a trailing comment), so blanking leaves valid TOML behind.
fn widen(text: &str, range: Range<usize>) -> Range<usize> {
    let bytes = text.as_bytes();
    let line_start = bytes[..range.start].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let line_end = bytes[range.end..].iter().position(|b| *b == b'\n').map_or(text.len(), |i| range.end + i);
    let head = text[line_start..range.start].trim_matches(|c: char| c.is_whitespace() || c == '[');
    let tail = text[range.end..line_end].trim_matches(|c: char| c.is_whitespace() || c == ']');
    let start = if head.is_empty() { line_start } else { range.start };
    // Only a range that starts its line takes the closing brackets after it: the last element
    // of a one-line array (`key = ["bad"]`) must leave the array's `]` behind.
    let end =
        if (tail.is_empty() && head.is_empty()) || tail.starts_with('#') { line_end } else { range.end };
    start..end
}

fn blank(text: &mut String, range: Range<usize>) {
    let mut bytes = std::mem::take(text).into_bytes();
    for byte in &mut bytes[range] {
        if *byte != b'\n' {
            *byte = b' ';
        }
    }
    // Whole UTF-8 sequences were replaced byte for byte by ASCII spaces.
    *text = String::from_utf8(bytes).unwrap_or_default();
}

pub fn parse_and_check(file: &Path, text: &str) -> Result<(Config, Diagnostics), Diagnostics> {
    let at = |offset: usize, key: String, message: String, severity| {
        let (line, column) = position(text, offset);
        Diagnostic { file: file.to_path_buf(), line, column, key, message, severity }
    };

    // Syntax: every error the recovering parser finds.
    let (_, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let found = syntax
            .iter()
            .map(|e| {
                at(
                    e.span().map_or(0, |s| s.start),
                    String::new(),
                    e.message().trim().to_owned(),
                    Severity::Error,
                )
            })
            .collect();
        return Err(Diagnostics(found));
    }

    // Schema: types and unknown keys, one round per error.
    let mut findings = Vec::new();
    let mut blanked: BTreeSet<String> = BTreeSet::new();
    let mut working = text.to_owned();
    let config = loop {
        let error = match toml::from_str::<Config>(&working) {
            Ok(config) => break config,
            Err(error) => error,
        };
        let span = error.span().unwrap_or(0..0);
        let nodes = DeTable::parse(&working).map(|t| index_table(t.get_ref(), "")).unwrap_or_default();
        let culprit = deepest(&nodes, span.start);
        let key = culprit.map(|n| n.path.clone()).unwrap_or_default();
        findings.push(at(span.start, key.clone(), error.message().trim().to_owned(), Severity::Error));
        let Some(culprit) = culprit else {
            return Err(Diagnostics(findings));
        };
        if findings.len() >= MAX_SCHEMA_ERRORS || !blanked.insert(key) {
            return Err(Diagnostics(findings));
        }
        let range = widen(&working, culprit.extent.clone());
        blank(&mut working, range);
    };

    // Semantics, on what parsed. Template problems are located in the template files.
    let mut findings_extra = Vec::new();
    let nodes = DeTable::parse(text).map(|t| index_table(t.get_ref(), "")).unwrap_or_default();
    let locate = |path: &str| -> usize {
        // The entry itself, or the nearest enclosing one that exists in the file.
        let mut probe = path.to_owned();
        loop {
            if let Some(node) = find(&nodes, &probe) {
                return node.key.start;
            }
            match probe.rfind(['.', '[']) {
                Some(cut) => probe.truncate(cut),
                None => return 0,
            }
        }
    };
    let mut report = |path: String, message: String, severity: Severity| {
        if blanked
            .iter()
            .any(|b| path == *b || path.starts_with(&format!("{b}.")) || path.starts_with(&format!("{b}[")))
        {
            return;
        }
        findings.push(at(locate(&path), path, message, severity));
    };
    check_store(&config, &mut report);
    check_people(&config, &mut report);
    check_email(&config, &mut report, &mut findings_extra);
    check_crm(&config, &mut report);
    check_outbox(&config, &mut report);
    check_guard(&config, &mut report);
    check_sla(&config, &mut report);
    check_links(&config, &mut report);
    check_scoring(&config, &mut report);
    check_routing(&config, &mut report);
    check_calendar(&config, &mut report);
    check_chat(&config, &mut report);
    check_nurture(&config, &mut report);
    check_secret_modes(text, &mut report);
    check_daemon(&config, &mut report);

    findings.sort_by_key(|d| (d.line, d.column));
    findings.extend(findings_extra);
    let diagnostics = Diagnostics(findings);
    if diagnostics.has_errors() { Err(diagnostics) } else { Ok((config, diagnostics)) }
}

/// The unit's `TimeoutStopSec=30s` must cover the drain (`shutdown_grace`) and the listeners'
/// own 2 s each after it, or systemd kills the daemon mid-drain.
fn check_daemon(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    check_admin(config, report);
    const UNIT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
    const LISTENERS: std::time::Duration = std::time::Duration::from_secs(4);
    let grace = config.daemon.shutdown_grace;
    if grace + LISTENERS >= UNIT_STOP_TIMEOUT {
        report(
            "daemon.shutdown_grace".into(),
            format!(
                "{} plus up to 4 s for the listeners reaches the unit's TimeoutStopSec=30s: systemd would kill leadloop before it drains; keep it under 26s or raise TimeoutStopSec in the unit too",
                humantime::format_duration(grace)
            ),
            Severity::Warning,
        );
    }
}

/// The admin token reads and is long enough; an admin listener other hosts can reach is a
/// warning (its data views need the token there, and it speaks plain HTTP).
fn check_admin(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let token = match config.daemon.admin_token() {
        Ok(token) => token,
        Err(error) => {
            report(format!("daemon.{}", error.key), error.message, Severity::Error);
            return;
        }
    };
    let listen = config.daemon.admin_listen;
    if listen.ip().is_loopback() {
        return;
    }
    let message = match token {
        None => format!(
            "{listen} is not loopback and no admin_token_file is set: the data views (/sla, /leads, /quarantine, /report/funnel) answer 403, and /healthz, /readyz and /metrics are open to anyone who reaches it; bind it to loopback, or set admin_token_file"
        ),
        Some(_) => format!(
            "{listen} is not loopback: the admin listener speaks plain HTTP, so the admin token and lead data cross the network in clear; keep it on loopback or a private network, or put a TLS proxy in front"
        ),
    };
    report("daemon.admin_listen".into(), message, Severity::Warning);
}

/// Secret files (`*_file` keys other than CA certificates) readable by group or others, outside
/// systemd's credentials directory: a warning, since anyone on the host could read them.
fn check_secret_modes(text: &str, report: &mut impl FnMut(String, String, Severity)) {
    fn walk(value: &toml::Value, path: &str, found: &mut Vec<(String, String)>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    if let toml::Value::String(file) = value
                        && key.ends_with("_file")
                        && key != "ca_file"
                    {
                        found.push((path.clone(), file.clone()));
                    }
                    if let toml::Value::Array(files) = value
                        && key.ends_with("_files")
                    {
                        for (i, file) in files.iter().enumerate() {
                            if let toml::Value::String(file) = file {
                                found.push((format!("{path}[{i}]"), file.clone()));
                            }
                        }
                    }
                    walk(value, &path, found);
                }
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), found);
                }
            }
            _ => {}
        }
    }
    let Ok(table) = text.parse::<toml::Table>() else { return };
    let value = toml::Value::Table(table);
    let mut found = Vec::new();
    walk(&value, "", &mut found);
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY");
    for (key, file) in found {
        let path = Path::new(&file);
        if path.is_relative() && credentials.is_some() {
            continue; // systemd's LoadCredential= makes these private to the service
        }
        let Ok(meta) = std::fs::metadata(path) else { continue };
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            report(
                key,
                format!(
                    "secret file {file} can be read by others on this host (mode {mode:04o}); `chmod 600 {file}`, or pass it with systemd's LoadCredential="
                ),
                Severity::Warning,
            );
        }
    }
}

fn check_store(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let store = &config.store;
    match store.engine {
        super::StoreEngine::Sled => {
            for key in store.postgres_keys_set() {
                report(
                    format!("store.{key}"),
                    "applies only to engine = \"postgres\"; ignored with sled".into(),
                    Severity::Warning,
                );
            }
            if store.flush_timeout < std::time::Duration::from_secs(1) {
                report(
                    "store.flush_timeout".into(),
                    "must be at least 1s (a healthy disk can take that long to flush)".into(),
                    Severity::Error,
                );
            }
        }
        super::StoreEngine::Postgres => {
            if let Some(schema) = &store.schema
                && let Err(message) = leadloop_store_postgres::check_schema_name(schema)
            {
                report("store.schema".into(), message, Severity::Error);
            }
            match store.postgres() {
                // Reported above, whatever the URL did, so every problem shows at once.
                Err(e) if e.key == "schema" => {}
                Err(e) => report(format!("store.{}", e.key), e.message, Severity::Error),
                Ok(pg) => {
                    if pg.pool_size < 2 {
                        report(
                            "store.pool_size".into(),
                            "must be at least 2 (one connection commits while others read)".into(),
                            Severity::Error,
                        );
                    }
                    if pg.sslmode == leadloop_store_postgres::SslMode::Require {
                        report(
                            "store.sslmode".into(),
                            "\"require\" encrypts but does not check the server's certificate; use \"verify-full\" (with ca_file for a private CA)".into(),
                            Severity::Warning,
                        );
                    }
                }
            }
            if let Some(ca) = &store.ca_file {
                if store.sslmode.unwrap_or_default() != leadloop_store_postgres::SslMode::VerifyFull {
                    report(
                        "store.ca_file".into(),
                        "used only with sslmode = \"verify-full\"; ignored".into(),
                        Severity::Warning,
                    );
                } else if let Err(e) = std::fs::metadata(ca) {
                    report(
                        "store.ca_file".into(),
                        format!("cannot read {}: {e}", ca.display()),
                        Severity::Error,
                    );
                }
            }
        }
    }
}

fn check_people(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let mut ids = BTreeSet::new();
    for (i, person) in config.people.iter().enumerate() {
        let path = format!("people[{i}]");
        for (field, present) in
            [("id", person.id.is_some()), ("email", person.email.is_some()), ("name", person.name.is_some())]
        {
            if !present {
                report(path.clone(), format!("missing required key `{field}`"), Severity::Error);
            }
        }
        if let Some(id) = &person.id {
            if id.trim().is_empty() {
                report(format!("{path}.id"), "must not be empty".into(), Severity::Error);
            } else if !ids.insert(id.clone()) {
                report(format!("{path}.id"), format!("person `{id}` is defined twice"), Severity::Error);
            }
        }
        if let Some(email) = &person.email
            && !plausible_email(email)
        {
            report(format!("{path}.email"), format!("`{email}` is not an email address"), Severity::Error);
        }
        if person.manager.is_none() && person.role == leadloop_core::Role::Rep {
            let message = match &config.sla.fallback_email {
                Some(fallback) => {
                    format!("no manager: escalations for this rep go to sla.fallback_email ({fallback})")
                }
                None => "no manager and no sla.fallback_email: escalations for this rep copy no manager"
                    .to_owned(),
            };
            report(path.clone(), message, Severity::Warning);
        }
    }
    // Everyone with an id is in the chart, complete or not, so a missing email is not also
    // reported as an unknown manager.
    let chart = OrgChart::new(config.people.iter().filter_map(|p| {
        Some(leadloop_core::Person {
            id: PersonId::new(p.id.clone()?),
            email: String::new(),
            name: String::new(),
            manager: p.manager.clone().map(PersonId::new),
            time_zone: None,
            role: p.role,
            active: p.active,
            capacity: p.capacity,
        })
    }));
    let index_of = |id: &PersonId| config.people.iter().position(|p| p.id.as_deref() == Some(id.as_str()));
    for problem in chart.check() {
        use leadloop_core::person::OrgChartError;
        let (person, what) = match &problem {
            OrgChartError::UnknownManager { person, .. } => (person, "manager"),
            OrgChartError::Cycle { person } | OrgChartError::SelfManaged { person } => (person, "manager"),
        };
        if let Some(i) = index_of(person) {
            report(format!("people[{i}].{what}"), problem.to_string(), Severity::Error);
        }
    }
}

fn check_email(
    config: &Config,
    report: &mut impl FnMut(String, String, Severity),
    extra: &mut Vec<Diagnostic>,
) {
    let Some(email) = &config.email else { return };
    for (key, message) in email.check() {
        report(format!("email.{key}"), message, Severity::Error);
    }
    if let Some(smtp) = &email.smtp {
        if let Err(e) = leadloop_plugin::secret_from(
            "password",
            smtp.password_file.as_deref(),
            smtp.password_env.as_deref(),
        ) {
            report(format!("email.smtp.{}", e.key), e.message, Severity::Error);
        }
        if let Some(ca) = &smtp.ca_file
            && let Err(e) = std::fs::metadata(ca)
        {
            report(
                "email.smtp.ca_file".into(),
                format!("cannot read {}: {e}", ca.display()),
                Severity::Error,
            );
        }
        if smtp.tls == leadloop_smtp::TlsMode::Plain
            && !["localhost", "127.0.0.1", "::1"].contains(&smtp.host.as_str())
        {
            report(
                "email.smtp.tls".into(),
                format!("tls = \"plain\" sends mail and credentials unencrypted to {}", smtp.host),
                Severity::Warning,
            );
        }
    }
    match email.templates() {
        Err(problem) => report("email.templates_dir".into(), problem.to_string(), Severity::Error),
        Ok(templates) => {
            for problem in templates.validate(leadloop_smtp::REQUIRED_TEMPLATES) {
                extra.push(Diagnostic {
                    file: PathBuf::from(&problem.file),
                    line: problem.line,
                    column: 0,
                    key: String::new(),
                    message: problem.message,
                    severity: Severity::Error,
                });
            }
        }
    }
}

fn check_crm(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let Some(crm) = &config.crm else { return };
    if !super::CRM_TYPES.contains(&crm.kind.as_str()) {
        report(
            "crm.type".into(),
            format!("unknown CRM `{}`; known: {}", crm.kind, super::CRM_TYPES.join(", ")),
            Severity::Error,
        );
        return;
    }
    if crm.poll_interval < std::time::Duration::from_secs(10) {
        report(
            "crm.poll_interval".into(),
            "polls more often than every 10 s spend the CRM's API allowance for little".into(),
            Severity::Warning,
        );
    }
    let Some(salesforce) = &crm.salesforce else {
        report(
            "crm.salesforce".into(),
            "type = \"salesforce\" needs a [crm.salesforce] table".into(),
            Severity::Error,
        );
        return;
    };
    let problems = salesforce.check();
    for (key, message) in &problems {
        report(format!("crm.salesforce.{key}"), message.clone(), Severity::Error);
    }
    if let Some(host) = cleartext_host(&salesforce.login_url) {
        report("crm.salesforce.login_url".into(), cleartext_message(&host), Severity::Error);
    }
    let creates_tasks = config.sla.policies.iter().flat_map(|p| &p.steps).any(|step| {
        step.actions.iter().any(|a| matches!(a, leadloop_core::sla::StepAction::CreateTask { .. }))
    });
    if creates_tasks && salesforce.task_key_field.is_none() {
        report(
            "crm.salesforce.task_key_field".into(),
            "SLA steps create follow-up tasks, but no External ID field is named for them: a crash \
             between Salesforce's answer and leadloop recording it would create a task twice \
             (see docs/salesforce.md, \"Tasks exactly once\")"
                .into(),
            Severity::Warning,
        );
    }
    if problems.is_empty() {
        // Reads the secrets and parses the key, without calling Salesforce.
        let cx = leadloop_plugin::BuildContext {
            clock: std::sync::Arc::new(leadloop_core::SystemClock),
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        if let Err(e) = salesforce.build(&cx) {
            report(format!("crm.salesforce.{}", e.key), e.message, Severity::Error);
        }
    }
}

fn check_sla(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let sla = &config.sla;
    if let Some(fallback) = &sla.fallback_email
        && !plausible_email(fallback)
    {
        report("sla.fallback_email".into(), format!("`{fallback}` is not an email address"), Severity::Error);
    }
    if let Some(executive) = &sla.executive
        && !config.people.iter().any(|p| p.id.as_deref() == Some(executive.as_str()))
    {
        report(
            "sla.executive".into(),
            format!(
                "`{executive}` is not among the configured people; unless a CRM connector supplies it, escalations fall back to the top of each rep's manager chain"
            ),
            Severity::Warning,
        );
    }
    if sla.open_statuses.is_empty() {
        report(
            "sla.open_statuses".into(),
            "no open status: no hand-off would ever start".into(),
            Severity::Error,
        );
    }
    let templates = match config.email.as_ref().map(|e| e.templates()) {
        Some(Ok(templates)) => Some(templates),
        Some(Err(_)) => None, // reported with the email settings
        None => leadloop_smtp::Templates::load(None).ok(),
    };
    let mut names = BTreeSet::new();
    for (i, policy) in sla.policies.iter().enumerate() {
        let path = format!("sla.policy[{i}]");
        if !names.insert(policy.name.clone()) {
            report(
                format!("{path}.name"),
                format!("policy `{}` is defined twice", policy.name),
                Severity::Error,
            );
        }
        if policy.steps.is_empty() {
            report(path.clone(), "a policy needs at least one [[sla.policy.step]]".into(), Severity::Error);
        }
        check_first_touch(&path, policy, report);
        let mut steps = BTreeSet::new();
        let mut previous = std::time::Duration::ZERO;
        for (j, step) in policy.steps.iter().enumerate() {
            let step_path = format!("{path}.step[{j}]");
            if !steps.insert(step.name.clone()) {
                report(
                    format!("{step_path}.name"),
                    format!("step `{}` appears twice in this policy", step.name),
                    Severity::Error,
                );
            }
            if step.after < previous {
                report(
                    format!("{step_path}.after"),
                    "steps must be in order of `after`".into(),
                    Severity::Error,
                );
            }
            previous = step.after;
            if j == 0
                && step.actions.iter().any(|a| matches!(a, leadloop_core::sla::StepAction::Reassign { .. }))
            {
                report(
                    format!("{step_path}.actions"),
                    "the first step cannot reassign: the hand-off has just started".into(),
                    Severity::Error,
                );
            }
            if step.to.is_empty() {
                report(
                    format!("{step_path}.to"),
                    "a step needs at least one recipient".into(),
                    Severity::Error,
                );
            }
            for (list, recipients) in [("to", &step.to), ("cc", &step.cc)] {
                for recipient in recipients.iter() {
                    if let leadloop_core::sla::Recipient::Address(address) = recipient {
                        let bare = address.trim_start_matches("address:");
                        if !address.starts_with("address:") || !plausible_email(bare) {
                            report(
                                format!("{step_path}.{list}"),
                                format!(
                                    "`{address}` is not a recipient: use \"rep\", \"manager\", \"executive\" or \"address:someone@example.com\""
                                ),
                                Severity::Error,
                            );
                        }
                    }
                }
            }
            if let Some(templates) = &templates
                && !templates.names().contains(&step.template)
            {
                report(
                    format!("{step_path}.template"),
                    format!(
                        "no template `{}` (known: {})",
                        step.template,
                        templates.names().into_iter().collect::<Vec<_>>().join(", ")
                    ),
                    Severity::Error,
                );
            }
        }
        if let Some(digest) = &policy.digest
            && digest.roles.is_empty()
        {
            report(
                format!("{path}.digest"),
                "a digest needs `roles` (\"manager\", \"executive\")".into(),
                Severity::Error,
            );
        }
        if let Some(hours) = &policy.business_hours {
            if hours.start >= hours.end {
                report(
                    format!("{path}.business_hours"),
                    "`start` must be before `end`".into(),
                    Severity::Error,
                );
            }
            if hours.days.is_empty() {
                report(format!("{path}.business_hours"), "no working days".into(), Severity::Error);
            }
            if let Some(calendar) = &hours.holidays
                && !sla.holidays.contains_key(calendar)
            {
                report(
                    format!("{path}.business_hours"),
                    format!("no holiday calendar `{calendar}` in [sla.holidays]"),
                    Severity::Error,
                );
            }
        }
    }
}

fn check_links(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let Some(links) = &config.links else { return };
    let current = match links.key() {
        Ok(key) => Some(key),
        Err(error) => {
            report(error.key, error.message, Severity::Error);
            None
        }
    };
    for (i, file) in links.previous_signing_key_files.iter().enumerate() {
        let key = format!("links.previous_signing_key_files[{i}]");
        match leadloop_plugin::SecretSource::File(file.clone()).resolve() {
            Err(error) => report(key, error.to_string(), Severity::Error),
            Ok(previous) if previous.expose().len() < crate::links::MIN_KEY_BYTES => report(
                key,
                format!("the key must be at least {} bytes", crate::links::MIN_KEY_BYTES),
                Severity::Error,
            ),
            Ok(previous) if current.as_ref() == Some(&previous) => report(
                key,
                "is the current key (signing_key_file or signing_key_env); list only keys that signed links before".into(),
                Severity::Warning,
            ),
            Ok(_) => {}
        }
    }
    if let Some(address) = &links.opt_out_email
        && crate::links::LinkPages::new([Some(address.as_str())], None).opt_out.is_none()
    {
        report(
            "links.opt_out_email".into(),
            format!("`{address}` is not a plain email address"),
            Severity::Error,
        );
    }
    if !(links.public_url.starts_with("https://") || links.public_url.starts_with("http://")) {
        report(
            "links.public_url".into(),
            format!("`{}` is not an http(s) URL", links.public_url),
            Severity::Error,
        );
    } else if links.public_url.starts_with("http://") {
        report(
            "links.public_url".into(),
            "links travel in email; serve them over https".into(),
            Severity::Warning,
        );
    }
    if links.public_listen == config.daemon.admin_listen {
        report(
            "links.public_listen".into(),
            "must differ from daemon.admin_listen: the public listener serves only signed links".into(),
            Severity::Error,
        );
    }
    if links.click_window.is_zero() {
        report(
            "links.click_window".into(),
            "0s counts every click, replays included: repeated clicks can reach an engagement cap".into(),
            Severity::Warning,
        );
    }
    if links.click_min_delay.is_zero() {
        report(
            "links.click_min_delay".into(),
            "0s counts clicks made as the email is delivered, which are mail scanners fetching its links"
                .into(),
            Severity::Warning,
        );
    }
    let limits = &links.limits;
    let zero = |key: &str, is_zero: bool, report: &mut dyn FnMut(String, String, Severity)| {
        if is_zero {
            report(format!("links.limits.{key}"), "must be more than 0".into(), Severity::Error);
        }
    };
    zero("header_read_timeout", limits.header_read_timeout.is_zero(), report);
    zero("request_timeout", limits.request_timeout.is_zero(), report);
    zero("max_connections", limits.max_connections == 0, report);
    zero("max_in_flight", limits.max_in_flight == 0, report);
    zero("per_ip_per_minute", limits.per_ip_per_minute == 0, report);
    zero("per_token", limits.per_token == 0, report);
    zero("per_token_window", limits.per_token_window.is_zero(), report);
    if limits.max_body_bytes < MIN_LINK_BODY {
        report(
            "links.limits.max_body_bytes".into(),
            format!(
                "must be at least {MIN_LINK_BODY}: mail clients send the one-click unsubscribe as a multipart form"
            ),
            Severity::Error,
        );
    }
}

/// The smallest body cap accepted for the public listener, in bytes.
const MIN_LINK_BODY: usize = 1024;

fn check_scoring(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    const FIELDS: [&str; 7] =
        ["title", "industry", "country", "lead_source", "company", "company_size", "email_domain"];
    let scoring = &config.scoring;
    if !(scoring.threshold.is_finite() && scoring.threshold > 0.0) {
        report("scoring.threshold".into(), "must be a positive number".into(), Severity::Error);
    }
    if scoring.half_life.is_zero() {
        report("scoring.half_life".into(), "must be longer than zero".into(), Severity::Error);
    }
    let mut names = BTreeSet::new();
    for (i, rule) in scoring.fit.iter().enumerate() {
        if !FIELDS.contains(&rule.field.as_str()) && !rule.field.starts_with("custom.") {
            report(
                format!("scoring.fit[{i}].field"),
                format!("unknown field `{}` (known: {}, custom.NAME)", rule.field, FIELDS.join(", ")),
                Severity::Error,
            );
        }
        if !names.insert(rule.name.clone()) {
            report(
                format!("scoring.fit[{i}].name"),
                format!("rule `{}` is defined twice", rule.name),
                Severity::Error,
            );
        }
    }
    for (i, rule) in scoring.engagement.iter().enumerate() {
        if !names.insert(rule.name.clone()) {
            report(
                format!("scoring.engagement[{i}].name"),
                format!("rule `{}` is defined twice", rule.name),
                Severity::Error,
            );
        }
        if scoring.engagement[..i].iter().any(|r| r.activity == rule.activity) {
            report(
                format!("scoring.engagement[{i}].activity"),
                format!("activity `{}` already has a rule; only the first would count", rule.activity),
                Severity::Error,
            );
        }
    }
}

fn check_routing(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let known = |id: &PersonId| config.people.iter().any(|p| p.id.as_deref() == Some(id.as_str()));
    let mut names = BTreeSet::new();
    for (i, rule) in config.routing.rules.iter().enumerate() {
        if !names.insert(rule.name.clone()) {
            report(
                format!("routing.rule[{i}].name"),
                format!("rule `{}` is defined twice", rule.name),
                Severity::Error,
            );
        }
        if rule.pool.is_empty() {
            report(
                format!("routing.rule[{i}].pool"),
                "a rule needs at least one person in its pool".into(),
                Severity::Error,
            );
        }
        for member in rule.pool.iter().chain(rule.weights.keys()) {
            if !known(member) {
                report(
                    format!("routing.rule[{i}].pool"),
                    format!(
                        "`{member}` is not among the configured people; unless the CRM supplies it, it is skipped"
                    ),
                    Severity::Warning,
                );
            }
        }
        for (member, weight) in &rule.weights {
            if !rule.pool.contains(member) {
                report(
                    format!("routing.rule[{i}].weights"),
                    format!("`{member}` has a weight but is not in the pool"),
                    Severity::Error,
                );
            } else if *weight == 0 {
                report(
                    format!("routing.rule[{i}].weights"),
                    format!("`{member}` has weight 0: leave it out of the pool instead"),
                    Severity::Error,
                );
            }
        }
    }
}

fn check_nurture(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let rules = match leadloop_core::nurture::NurtureRules::new(config.nurture.clone()) {
        Ok(rules) => rules,
        Err(problems) => {
            for problem in problems {
                report(problem.key, problem.message, Severity::Error);
            }
            return;
        }
    };
    let templates = match config.email.as_ref().map(|e| e.templates()) {
        Some(Ok(templates)) => Some(templates),
        Some(Err(_)) => None, // reported with the email settings
        None => leadloop_smtp::Templates::load(None).ok(),
    };
    if let Some(templates) = templates {
        let names = templates.names();
        for (path, template) in rules.templates() {
            if !names.contains(&template) {
                let known = names.iter().cloned().collect::<Vec<_>>().join(", ");
                report(path, format!("no template `{template}` (known: {known})"), Severity::Error);
            }
        }
    }
    for (key, message) in rules.repeated_steps() {
        report(key, message, Severity::Warning);
    }
    if !rules.is_empty() && config.links.is_none() {
        // No nurture mail without a working unsubscribe: the link in the body and the
        // List-Unsubscribe header both point at the public listener.
        report(
            "nurture.tracks".into(),
            "nurture mail needs [links]: every nurture email carries a signed unsubscribe link and a List-Unsubscribe header served by the public listener; configure [links] (public_listen, public_url, signing_key_file) or remove the tracks".into(),
            Severity::Error,
        );
    }
}

fn check_outbox(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let outbox = &config.outbox;
    for (key, rate) in
        [("rate_per_second", outbox.rate_per_second), ("per_domain_per_second", outbox.per_domain_per_second)]
    {
        if let Some(rate) = rate
            && !(rate > 0.0 && rate.is_finite())
        {
            report(format!("outbox.{key}"), "must be a positive number".into(), Severity::Error);
        }
    }
    if outbox.retry_base > outbox.retry_max {
        report("outbox.retry_base".into(), "must not exceed retry_max".into(), Severity::Error);
    }
    if outbox.concurrency == 0 {
        report("outbox.concurrency".into(), "must be at least 1".into(), Severity::Error);
    }
}

fn check_guard(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let guard = &config.guard;
    if guard.max_bounces > 0 && guard.bounce_window.is_zero() {
        report(
            "guard.bounce_window".into(),
            "must be longer than 0s while max_bounces is set (0 max_bounces turns the bounce guard off)"
                .into(),
            Severity::Error,
        );
    }
    if let Some(address) = &guard.ops_address
        && !plausible_email(address)
    {
        report("guard.ops_address".into(), format!("`{address}` is not an email address"), Severity::Error);
    }
    if guard.ops_address.is_some() && config.email.is_none() {
        report(
            "guard.ops_address".into(),
            "no [email] is configured, so the guard's alerts wait in the outbox; they are still logged and counted".into(),
            Severity::Warning,
        );
    }
    if guard.max_bounces == 0 && guard.surge_per_hour == 0 && !config.nurture.tracks.is_empty() {
        report(
            "guard".into(),
            "max_bounces = 0 and surge_per_hour = 0 turn off both automatic guards of nurture mail; a bad list or a new track mails without a stop".into(),
            Severity::Warning,
        );
    }
}

/// The host of an `http://` URL that is not on loopback: credentials sent there cross the
/// network in clear.
fn cleartext_host(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if parsed.scheme() != "http" {
        return None;
    }
    let host = parsed.host_str()?.trim_start_matches('[').trim_end_matches(']').to_owned();
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then_some(host)
}

fn cleartext_message(host: &str) -> String {
    format!(
        "http:// would send credentials and lead data to {host} unencrypted; use https:// (http:// is accepted on loopback only, for tests and the emulator)"
    )
}

/// What ends a policy's hand-offs as satisfied (`satisfied_by`, `first_touch_activities`).
fn check_first_touch(
    path: &str,
    policy: &leadloop_core::sla::SlaPolicy,
    report: &mut impl FnMut(String, String, Severity),
) {
    use leadloop_core::sla::SatisfiedBy;
    if policy.satisfied_by.is_empty() {
        report(
            format!("{path}.satisfied_by"),
            "nothing would satisfy a hand-off: list \"status\" and/or \"activity\"".into(),
            Severity::Error,
        );
        return;
    }
    let activity = policy.satisfied_by.contains(&SatisfiedBy::Activity);
    if activity && policy.first_touch_activities.iter().all(|k| k.trim().is_empty()) {
        report(
            format!("{path}.first_touch_activities"),
            "satisfied_by has \"activity\" but no activity kind is listed: name the task types that count, e.g. [\"call\", \"email\"]".into(),
            Severity::Error,
        );
    }
    if !policy.satisfied_by.contains(&SatisfiedBy::Status) {
        report(
            format!("{path}.satisfied_by"),
            "without \"status\", a change of the lead's status (even to a closed one) does not end the hand-off; only a logged activity, an email link or a change of owner does".into(),
            Severity::Warning,
        );
    }
    if !activity && policy.first_touch_activities != leadloop_core::sla::call_and_email() {
        report(
            format!("{path}.first_touch_activities"),
            "has no effect unless satisfied_by lists \"activity\"".into(),
            Severity::Warning,
        );
    }
}

fn check_calendar(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    let known = |id: &str| config.people.iter().any(|p| p.id.as_deref() == Some(id));
    for (i, policy) in config.sla.policies.iter().enumerate() {
        match (policy.when_away, &policy.backup) {
            (leadloop_core::sla::WhenAway::Backup, None) => report(
                format!("sla.policy[{i}].backup"),
                "when_away = \"backup\" needs a backup: `manager` or a person's id".into(),
                Severity::Error,
            ),
            (_, Some(backup)) if backup != "manager" && !known(backup) => report(
                format!("sla.policy[{i}].backup"),
                format!(
                    "`{backup}` is not among the configured people; unless the CRM supplies it, the rep keeps their steps"
                ),
                Severity::Warning,
            ),
            _ => {}
        }
    }
    let Some(calendar) = &config.calendar else { return };
    for (key, message) in calendar.check() {
        report(format!("calendar.{key}"), message, Severity::Error);
    }
    if let Some(host) = cleartext_host(&calendar.url) {
        report("calendar.url".into(), cleartext_message(&host), Severity::Error);
    }
    for (i, person) in calendar.people.iter().enumerate() {
        if !known(&person.id) {
            report(
                format!("calendar.person[{i}].id"),
                format!(
                    "`{}` is not among the configured people; unless the CRM supplies it, this calendar is read for nobody",
                    person.id
                ),
                Severity::Warning,
            );
        }
    }
}

/// `[chat]` and the steps' `channels`: a channel named with no connector for it, people
/// unknown, secrets not named, cleartext, Slack buttons without signed links.
fn check_chat(config: &Config, report: &mut impl FnMut(String, String, Severity)) {
    use leadloop_core::Reach;
    let chat = config.chat.as_ref();
    let configured = |reach: Reach| match reach {
        Reach::Email => true,
        Reach::Slack => chat.is_some_and(|c| c.slack.is_some()),
        Reach::Teams => chat.is_some_and(|c| c.teams.is_some()),
    };
    let reachable = |reach: Reach| {
        chat.is_some_and(|c| {
            c.default_channels.contains(&reach) || c.people.values().any(|l| l.contains(&reach))
        })
    };
    // Without [chat] chat is off: steps naming chat channels reach everyone by email, as
    // docs/chat.md says (the example config's ladder names Slack with [chat] commented out).
    let policies = if chat.is_some() { config.sla.policies.as_slice() } else { &[] };
    for (i, policy) in policies.iter().enumerate() {
        for (j, step) in policy.steps.iter().enumerate() {
            for reach in step.channels.iter().copied().filter(|r| *r != Reach::Email) {
                let name = reach.as_str();
                if !configured(reach) {
                    report(
                        format!("sla.policy[{i}].step[{j}].channels"),
                        format!(
                            "`{name}` without a [chat.{name}] table: this step reaches everyone by email"
                        ),
                        Severity::Warning,
                    );
                } else if !reachable(reach) {
                    report(
                        format!("sla.policy[{i}].step[{j}].channels"),
                        format!(
                            "nobody is reachable in {name} ([chat] default_channels or people): this step reaches everyone by email"
                        ),
                        Severity::Warning,
                    );
                }
            }
            if step.channels.is_empty() {
                report(
                    format!("sla.policy[{i}].step[{j}].channels"),
                    "no channel: the step reaches everyone by email".into(),
                    Severity::Warning,
                );
            }
        }
    }
    let Some(chat) = chat else { return };
    let known = |id: &str| config.people.iter().any(|p| p.id.as_deref() == Some(id));
    for (id, channels) in &chat.people {
        if !known(id) {
            report(
                format!("chat.people.{id}"),
                format!(
                    "`{id}` is not among the configured people; unless the CRM supplies it, this applies to nobody"
                ),
                Severity::Warning,
            );
        }
        for reach in channels.iter().filter(|r| !configured(**r)) {
            let name = reach.as_str();
            report(
                format!("chat.people.{id}"),
                format!("`{name}` without a [chat.{name}] table: reached by email instead"),
                Severity::Warning,
            );
        }
    }
    for reach in chat.default_channels.iter().filter(|r| !configured(**r)) {
        let name = reach.as_str();
        report(
            "chat.default_channels".into(),
            format!("`{name}` without a [chat.{name}] table: reached by email instead"),
            Severity::Warning,
        );
    }
    let secret = |file: bool, env: bool, key: &str, report: &mut dyn FnMut(String, String, Severity)| match (
        file, env,
    ) {
        (false, false) => report(key.to_owned(), format!("set `{key}_file` or `{key}_env`"), Severity::Error),
        (true, true) => {
            report(key.to_owned(), format!("set `{key}_file` or `{key}_env`, not both"), Severity::Error)
        }
        _ => {}
    };
    if let Some(slack) = &chat.slack {
        if config.links.is_none() {
            report(
                "chat.slack".into(),
                "Slack's Accept / Recycle / Disqualify buttons need [links] (their values are signed link tokens) and its public listener (Slack's interactivity URL): without it messages have no buttons".into(),
                Severity::Warning,
            );
        }
        let mut at = |key: String, message: String, severity: Severity| {
            report(format!("chat.slack.{key}"), message, severity)
        };
        secret(slack.bot_token_file.is_some(), slack.bot_token_env.is_some(), "bot_token", &mut at);
        secret(
            slack.signing_secret_file.is_some(),
            slack.signing_secret_env.is_some(),
            "signing_secret",
            &mut at,
        );
        if reqwest::Url::parse(&slack.api_url)
            .map(|u| u.scheme() != "https" && u.scheme() != "http")
            .unwrap_or(true)
        {
            at("api_url".into(), "must be an http or https URL".into(), Severity::Error);
        } else if let Some(host) = cleartext_host(&slack.api_url) {
            at("api_url".into(), cleartext_message(&host), Severity::Error);
        }
    }
    if let Some(teams) = &chat.teams {
        let mut at = |key: String, message: String, severity: Severity| {
            report(format!("chat.teams.{key}"), message, severity)
        };
        if teams.people.is_empty() {
            secret(teams.webhook_url_file.is_some(), teams.webhook_url_env.is_some(), "webhook_url", &mut at);
        }
        for (id, hook) in &teams.people {
            let mut at = |key: String, message: String, severity: Severity| {
                report(format!("chat.teams.people.{id}.{key}"), message, severity)
            };
            secret(hook.webhook_url_file.is_some(), hook.webhook_url_env.is_some(), "webhook_url", &mut at);
        }
    }
}

fn plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '<' || c == '>')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the checks on `input` and compares the rendered findings with `expect`.
    fn check(input: &str, expect: &[&str]) {
        let rendered: Vec<String> = match parse_and_check(Path::new("t.toml"), input) {
            Ok((_, diagnostics)) | Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(rendered, expect, "input:\n{input}");
    }

    const PEOPLE: &str = r#"
[[people]]
id = "005A"
email = "rep@x.example"
name = "Rep A"
manager = "005M"

[[people]]
id = "005M"
email = "mgr@x.example"
name = "Manager M"
role = "manager"
"#;

    #[test]
    fn cleartext_credentials_off_loopback_are_refused() {
        assert_eq!(cleartext_host("http://login.example.com"), Some("login.example.com".into()));
        assert_eq!(cleartext_host("http://10.0.0.5:8080/dav/"), Some("10.0.0.5".into()));
        for ok in [
            "https://login.salesforce.com",
            "http://127.0.0.1:4321",
            "http://localhost:5232/",
            "http://[::1]:80/",
        ] {
            assert_eq!(cleartext_host(ok), None, "{ok}");
        }
        assert!(
            cleartext_message("x.example")
                .starts_with("http:// would send credentials and lead data to x.example")
        );
    }

    #[test]
    fn tasks_without_an_external_id_field_are_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret").expect("write");
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let crm = format!(
            "[crm]\ntype = \"salesforce\"\n[crm.salesforce]\nlogin_url = \"https://login.salesforce.com\"\nclient_id = \"id\"\nauth = \"client_credentials\"\nclient_secret_file = \"{}\"\n",
            secret.display()
        );
        let sla = "[[sla.policy]]\nname = \"p\"\n[[sla.policy.step]]\nname = \"alert\"\nafter = \"0s\"\nkind = \"sla.alert\"\ntemplate = \"sla_alert\"\nto = [\"rep\"]\nactions = [{ type = \"create_task\", subject = \"Call\" }]\n";
        check(
            &format!("{crm}{sla}"),
            &[
                "t.toml:3:6: crm.salesforce.task_key_field: warning: SLA steps create follow-up tasks, but no External ID field is named for them: a crash between Salesforce's answer and leadloop recording it would create a task twice (see docs/salesforce.md, \"Tasks exactly once\")",
            ],
        );
        let keyed = crm.replace("auth = ", "task_key_field = \"Leadloop_Key__c\"\nauth = ");
        check(&format!("{keyed}{sla}"), &[]);
        let bad = crm.replace("auth = ", "task_key_field = \"Leadloop Key\"\nauth = ");
        check(
            &format!("{bad}{sla}"),
            &[
                "t.toml:6:1: crm.salesforce.task_key_field: `Leadloop Key` is not a Salesforce field API name (letters, digits and `_`, like `Leadloop_Key__c`)",
            ],
        );
    }

    #[test]
    fn change_events_are_on_by_default_and_their_safety_poll_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret").expect("write");
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let crm = format!(
            "[crm]\ntype = \"salesforce\"\n[crm.salesforce]\nlogin_url = \"https://login.salesforce.com\"\nclient_id = \"id\"\nauth = \"client_credentials\"\nclient_secret_file = \"{}\"\n",
            secret.display()
        );
        check(&crm, &[]);
        let (config, _) = crate::config::load_str(std::path::Path::new("t.toml"), &crm).expect("valid");
        let salesforce = config.crm.and_then(|c| c.salesforce).expect("salesforce");
        assert!(salesforce.events, "on by default");
        assert_eq!(salesforce.events_poll_interval, std::time::Duration::from_secs(3600));
        check(&crm.replace("auth = ", "events = false\nauth = "), &[]);
        check(
            &crm.replace("auth = ", "events_poll_interval = \"10s\"\nauth = "),
            &[
                "t.toml:6:1: crm.salesforce.events_poll_interval: 10 s is too often for a safety-net poll (at least 60 s; the events bring changes in seconds)",
            ],
        );
        // Without events the poll runs at `crm.poll_interval`; the safety-net interval is unused.
        check(&crm.replace("auth = ", "events = false\nevents_poll_interval = \"10s\"\nauth = "), &[]);
        check(
            &crm.replace("auth = ", "events = \"yes\"\nauth = "),
            &["t.toml:6:10: crm.salesforce.events: invalid type: string \"yes\", expected a boolean"],
        );
    }

    #[test]
    fn an_admin_listener_off_loopback_is_a_warning_and_its_token_is_checked() {
        check("[daemon]\nadmin_listen = \"127.0.0.1:9477\"\n", &[]);
        check("[daemon]\nadmin_listen = \"[::1]:9477\"\n", &[]);
        check(
            "[daemon]\nadmin_listen = \"0.0.0.0:9477\"\n",
            &[
                "t.toml:2:1: daemon.admin_listen: warning: 0.0.0.0:9477 is not loopback and no admin_token_file is set: the data views (/sla, /leads, /quarantine, /report/funnel) answer 403, and /healthz, /readyz and /metrics are open to anyone who reaches it; bind it to loopback, or set admin_token_file",
            ],
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("admin_token");
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("write");
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        check(
            &format!(
                "[daemon]\nadmin_listen = \"10.0.0.5:9477\"\nadmin_token_file = \"{}\"\n",
                token.display()
            ),
            &[
                "t.toml:2:1: daemon.admin_listen: warning: 10.0.0.5:9477 is not loopback: the admin listener speaks plain HTTP, so the admin token and lead data cross the network in clear; keep it on loopback or a private network, or put a TLS proxy in front",
            ],
        );
        std::fs::write(&token, "short\n").expect("write");
        check(
            &format!("[daemon]\nadmin_token_file = \"{}\"\n", token.display()),
            &[
                "t.toml:2:1: daemon.admin_token_file: the admin token must be at least 32 bytes (e.g. `openssl rand -hex 32`)",
            ],
        );
        check(
            &format!("[daemon]\nadmin_token_file = \"{}\"\n", dir.path().join("missing").display()),
            &[format!(
                "t.toml:2:1: daemon.admin_token_file: cannot read secret file {}: no such file",
                dir.path().join("missing").display()
            )
            .as_str()],
        );
    }

    #[test]
    fn a_shutdown_grace_the_unit_cannot_wait_for_is_a_warning() {
        check("[daemon]\nshutdown_grace = \"25s\"\n", &[]);
        check(
            "[daemon]\nshutdown_grace = \"26s\"\n",
            &[
                "t.toml:2:1: daemon.shutdown_grace: warning: 26s plus up to 4 s for the listeners reaches the unit's TimeoutStopSec=30s: systemd would kill leadloop before it drains; keep it under 26s or raise TimeoutStopSec in the unit too",
            ],
        );
    }

    #[test]
    fn secret_files_others_can_read_are_a_warning_at_their_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("link_key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef0123456789abcdef").expect("write");
        let input = format!(
            "[links]\npublic_listen = \"127.0.0.1:9478\"\npublic_url = \"https://leads.example.com\"\nsigning_key_file = \"{}\"\n",
            key.display()
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        check(
            &input,
            &[&format!(
                "t.toml:4:1: links.signing_key_file: warning: secret file {0} can be read by others on this host (mode 0644); `chmod 600 {0}`, or pass it with systemd's LoadCredential=",
                key.display()
            )],
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        check(&input, &[]);
    }

    #[test]
    fn calendar_problems_are_reported_at_their_keys() {
        let input = format!(
            "{PEOPLE}\n[calendar]\ntype = \"caldav\"\nurl = \"ftp://cal.example\"\nusername = \"leadloop\"\nlook_ahead_weeks = 0\n\n[[calendar.person]]\nid = \"ghost\"\ncalendar = \"/ghost/work/\"\nprincipal = \"/ghost/\"\n\n[[sla.policy]]\nname = \"p\"\nwhen_away = \"backup\"\n[[sla.policy.step]]\nname = \"alert\"\nafter = \"0s\"\nkind = \"sla.alert\"\ntemplate = \"sla_alert\"\nto = [\"rep\"]\n"
        );
        let rendered: Vec<String> = match parse_and_check(Path::new("t.toml"), &input) {
            Ok((_, diagnostics)) | Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
        };
        let line = |key: &str| input.lines().position(|l| l.starts_with(key)).map_or(0, |i| i + 1);
        for expected in [
            format!("t.toml:{}:1: calendar.url: must be an http or https URL", line("url =")),
            format!(
                "t.toml:{}:1: calendar.username: a username needs `password_file` or `password_env`",
                line("username")
            ),
            format!(
                "t.toml:{}:1: calendar.look_ahead_weeks: must be between 1 and 52",
                line("look_ahead_weeks")
            ),
            format!(
                "t.toml:{}:1: calendar.person[0]: set `calendar` or `principal`, not both",
                line("[[calendar.person]]")
            ),
            format!(
                "t.toml:{}:1: calendar.person[0].id: warning: `ghost` is not among the configured people; unless the CRM supplies it, this calendar is read for nobody",
                line("id = \"ghost\"")
            ),
        ] {
            assert!(rendered.iter().any(|r| r == &expected), "missing {expected}\nin {rendered:#?}");
        }
        assert!(
            rendered
                .iter()
                .any(|r| r.contains("sla.policy[0].backup: when_away = \"backup\" needs a backup")),
            "{rendered:#?}"
        );
    }

    #[test]
    fn chat_channels_and_connectors_are_checked_at_their_keys() {
        let ladder = "\n[[sla.policy]]\nname = \"p\"\n[[sla.policy.step]]\nname = \"alert\"\nafter = \"0s\"\nkind = \"sla.alert\"\ntemplate = \"sla_alert\"\nto = [\"rep\"]\nchannels = [\"slack\", \"email\"]\n";
        // Without [chat], chat is off and steps naming it reach everyone by email: no finding.
        check(&format!("{PEOPLE}{ladder}"), &[]);
        // A step in Slack with [chat] but no [chat.slack]: everyone by email, said once.
        check(
            &format!("{PEOPLE}\n[chat]\ndefault_channels = [\"email\"]\n{ladder}"),
            &[
                "t.toml:25:1: sla.policy[0].step[0].channels: warning: `slack` without a [chat.slack] table: this step reaches everyone by email",
            ],
        );
        // Slack configured but its secrets not named, nobody reachable, an unknown person,
        // a cleartext API off loopback, no [links] for the buttons.
        check(
            &format!(
                "{PEOPLE}\n[chat]\npeople = {{ ghost = [\"teams\"] }}\n\n[chat.slack]\napi_url = \"http://slack.example/api\"\nsigning_secret_env = \"S\"\n{ladder}"
            ),
            &[
                "t.toml:15:12: chat.people.ghost: warning: `ghost` is not among the configured people; unless the CRM supplies it, this applies to nobody",
                "t.toml:15:12: chat.people.ghost: warning: `teams` without a [chat.teams] table: reached by email instead",
                "t.toml:17:7: chat.slack: warning: Slack's Accept / Recycle / Disqualify buttons need [links] (their values are signed link tokens) and its public listener (Slack's interactivity URL): without it messages have no buttons",
                "t.toml:17:7: chat.slack.bot_token: set `bot_token_file` or `bot_token_env`",
                "t.toml:18:1: chat.slack.api_url: http:// would send credentials and lead data to slack.example unencrypted; use https:// (http:// is accepted on loopback only, for tests and the emulator)",
                "t.toml:29:1: sla.policy[0].step[0].channels: warning: nobody is reachable in slack ([chat] default_channels or people): this step reaches everyone by email",
            ],
        );
        // Teams needs a webhook, from a file or the environment.
        check(
            &format!(
                "{PEOPLE}\n[chat]\ndefault_channels = [\"email\", \"teams\"]\n\n[chat.teams]\ntimeout = \"5s\"\n"
            ),
            &["t.toml:17:7: chat.teams.webhook_url: set `webhook_url_file` or `webhook_url_env`"],
        );
    }

    #[test]
    fn a_valid_file_has_no_findings() {
        check(PEOPLE, &[]);
        check("", &[]);
    }

    #[test]
    fn unknown_keys_are_all_reported_with_lines() {
        let input = format!("[daemon]\nbogus = 1\nmax_idle = \"5s\"\n{PEOPLE}\nalso_bogus = true\n");
        let found = match parse_and_check(Path::new("t.toml"), &input) {
            Err(d) => d,
            Ok(_) => panic!("must fail"),
        };
        let lines: Vec<_> = found.iter().map(|d| (d.line, d.key.as_str())).collect();
        assert_eq!(lines, [(2, "daemon.bogus"), (17, "people[1].also_bogus")]);
        assert!(found.0[0].message.contains("unknown field `bogus`"), "{}", found.0[0].message);
    }

    #[test]
    fn type_errors_and_reference_errors_come_together() {
        check(
            "[daemon]\nadmin_listen = \"not an address\"\nshutdown_grace = \"soon\"\n\n[[people]]\nid = \"005A\"\nemail = \"rep@x.example\"\nname = \"Rep\"\nmanager = \"005Z\"\ntime_zone = \"Mars/Olympus\"\n",
            &[
                "t.toml:2:16: daemon.admin_listen: invalid socket address syntax",
                "t.toml:3:18: daemon.shutdown_grace: invalid duration \"soon\" (expected number at 0); write e.g. \"10s\", \"5m\", \"24h\"",
                "t.toml:9:1: people[0].manager: 005A names manager 005Z, who is not known",
                "t.toml:10:13: people[0].time_zone: failed to parse timezone: 'Mars/Olympus'",
            ],
        );
    }

    #[test]
    fn missing_fields_and_loops_are_reported_at_their_entry() {
        check(
            "[[people]]\nid = \"a\"\nemail = \"a@x.example\"\nname = \"A\"\nmanager = \"b\"\n\n[[people]]\nid = \"b\"\nname = \"B\"\nmanager = \"a\"\n",
            &[
                "t.toml:5:1: people[0].manager: the manager chain of a loops back on itself",
                "t.toml:7:1: people[1]: missing required key `email`",
                "t.toml:10:1: people[1].manager: the manager chain of b loops back on itself",
            ],
        );
    }

    #[test]
    fn warnings_do_not_fail() {
        let (_, warnings) = parse_and_check(
            Path::new("t.toml"),
            "[[people]]\nid = \"a\"\nemail = \"a@x.example\"\nname = \"A\"\n",
        )
        .expect("valid");
        let rendered: Vec<_> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "t.toml:1:1: people[0]: warning: no manager and no sla.fallback_email: escalations for this rep copy no manager"
            ]
        );
    }

    #[test]
    fn sla_policies_are_checked_against_templates_and_calendars() {
        check(
            "[[sla.policy]]\nname = \"p\"\nbusiness_hours = { start = \"17:00\", end = \"09:00\", holidays = \"xx\" }\n[[sla.policy.step]]\nname = \"alert\"\nafter = \"1h\"\nkind = \"sla.alert\"\ntemplate = \"sla_alrt\"\nto = [\"rep\", \"boss@x.example\"]\n[[sla.policy.step]]\nname = \"alert\"\nafter = \"0s\"\nkind = \"sla.alert\"\ntemplate = \"sla_alert\"\nto = [\"rep\"]\n",
            &[
                "t.toml:3:1: sla.policy[0].business_hours: `start` must be before `end`",
                "t.toml:3:1: sla.policy[0].business_hours: no holiday calendar `xx` in [sla.holidays]",
                "t.toml:8:1: sla.policy[0].step[0].template: no template `sla_alrt` (known: guard_alert, nurture_example, sla_alert, sla_digest, sla_executive, sla_manager, sla_reminder, sla_weekly)",
                "t.toml:9:1: sla.policy[0].step[0].to: `boss@x.example` is not a recipient: use \"rep\", \"manager\", \"executive\" or \"address:someone@example.com\"",
                "t.toml:11:1: sla.policy[0].step[1].name: step `alert` appears twice in this policy",
                "t.toml:12:1: sla.policy[0].step[1].after: steps must be in order of `after`",
            ],
        );
    }

    #[test]
    fn what_satisfies_a_hand_off_is_checked() {
        const STEP: &str = "[[sla.policy.step]]\nname = \"alert\"\nafter = \"0s\"\nkind = \"sla.alert\"\ntemplate = \"sla_alert\"\nto = [\"rep\"]\n";
        check(
            &format!(
                "[[sla.policy]]\nname = \"p\"\nsatisfied_by = [\"status\", \"activity\"]\nfirst_touch_activities = [\"call\"]\n{STEP}"
            ),
            &[],
        );
        check(
            &format!("[[sla.policy]]\nname = \"p\"\nsatisfied_by = []\n{STEP}"),
            &[
                "t.toml:3:1: sla.policy[0].satisfied_by: nothing would satisfy a hand-off: list \"status\" and/or \"activity\"",
            ],
        );
        check(
            &format!(
                "[[sla.policy]]\nname = \"p\"\nsatisfied_by = [\"activity\"]\nfirst_touch_activities = []\n{STEP}"
            ),
            &[
                "t.toml:3:1: sla.policy[0].satisfied_by: warning: without \"status\", a change of the lead's status (even to a closed one) does not end the hand-off; only a logged activity, an email link or a change of owner does",
                "t.toml:4:1: sla.policy[0].first_touch_activities: satisfied_by has \"activity\" but no activity kind is listed: name the task types that count, e.g. [\"call\", \"email\"]",
            ],
        );
        check(
            &format!("[[sla.policy]]\nname = \"p\"\nfirst_touch_activities = [\"meeting\"]\n{STEP}"),
            &[
                "t.toml:3:1: sla.policy[0].first_touch_activities: warning: has no effect unless satisfied_by lists \"activity\"",
            ],
        );
    }

    #[test]
    fn postgres_without_a_url_names_the_keys_to_set() {
        check(
            "[store]\nengine = \"postgres\"\nschema = \"Bad-Name\"\npool_size = 1\nsslmode = \"disable\"\nca_file = \"/etc/ssl/pg.pem\"\n",
            &[
                "t.toml:2:1: store.engine: engine = \"postgres\" needs `url_file` or `url_env` (the connection URL is a secret and is never written in this file)",
                "t.toml:3:1: store.schema: schema `Bad-Name`: use 1 to 63 lowercase letters, digits and `_`, not starting with a digit or `pg_`",
                "t.toml:6:1: store.ca_file: warning: used only with sslmode = \"verify-full\"; ignored",
            ],
        );
        check(
            "[store]\nengine = \"postgres\"\nurl_file = \"/nonexistent/leadloop/pg-url\"\nsslmode = \"verify-ca\"\n",
            &[
                "t.toml:3:1: store.url_file: cannot read secret file /nonexistent/leadloop/pg-url: no such file",
                "t.toml:4:11: store.sslmode: unknown variant `verify-ca`, expected one of `disable`, `require`, `verify-full`",
            ],
        );
        check(
            "[store]\nengine = \"postgres\"\nurl_file = \"/nonexistent/leadloop/pg-url\"\nurl_env = \"PG_URL\"\n",
            &["t.toml:4:1: store.url_env: set `url_file` or `url_env`, not both"],
        );
    }

    #[test]
    fn postgres_url_file_is_read_and_never_shown() {
        check(
            "[store]\nengine = \"postgres\"\nurl_file = \"/nonexistent/leadloop/pg-url\"\n",
            &[
                "t.toml:3:1: store.url_file: cannot read secret file /nonexistent/leadloop/pg-url: no such file",
            ],
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let url = dir.path().join("pg-url");
        std::fs::write(&url, "postgres://leadloop:s3cret-pw@db.example/crm\n").expect("write");
        std::fs::set_permissions(&url, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let input = format!(
            "[store]\nengine = \"postgres\"\nurl_file = \"{}\"\npool_size = 4\nstatement_timeout = \"5s\"\nschema = \"crm_leads\"\n",
            url.display()
        );
        let (config, warnings) = parse_and_check(Path::new("t.toml"), &input).expect("valid");
        assert!(warnings.0.is_empty(), "{warnings}");
        let pg = config.store.postgres().expect("postgres settings");
        assert_eq!(
            (pg.pool_size, pg.statement_timeout, pg.schema.as_str()),
            (4, std::time::Duration::from_secs(5), "crm_leads")
        );
        assert_eq!(pg.describe(), "leadloop@db.example:5432/crm");
        for shown in [format!("{config:?}"), format!("{pg:?}")] {
            assert!(!shown.contains("s3cret-pw"), "{shown}");
        }
        // A URL that does not parse is reported at its key, without its text.
        std::fs::write(&url, "postgres://leadloop:s3cret-pw@db.example/crm?sslmode=sideways\n")
            .expect("write");
        let rendered: Vec<String> = match parse_and_check(Path::new("t.toml"), &input) {
            Ok((_, d)) | Err(d) => d.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(rendered.len(), 1, "{rendered:?}");
        assert!(
            rendered[0].starts_with("t.toml:3:1: store.url_file: cannot parse the connection URL"),
            "{rendered:?}"
        );
        assert!(!rendered[0].contains("s3cret-pw"), "{rendered:?}");
    }

    #[test]
    fn postgres_settings_with_sled_are_pointed_out() {
        check(
            "[store]\ncache_mb = 32\nurl_env = \"PG_URL\"\nsslmode = \"require\"\n",
            &[
                "t.toml:3:1: store.url_env: warning: applies only to engine = \"postgres\"; ignored with sled",
                "t.toml:4:1: store.sslmode: warning: applies only to engine = \"postgres\"; ignored with sled",
            ],
        );
    }

    #[test]
    fn link_limits_are_checked_at_their_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "a test key that is at least 32 bytes long").expect("key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let head = format!(
            "[links]\npublic_listen = \"127.0.0.1:9478\"\npublic_url = \"https://leads.example.com\"\nsigning_key_file = \"{}\"\n",
            key.display()
        );
        check(&format!("{head}[links.limits]\nmax_connections = 512\nper_token_window = \"10min\"\n"), &[]);
        check(
            &format!(
                "{head}click_window = \"0s\"\nclick_min_delay = \"0s\"\n[links.limits]\nheader_read_timeout = \"0s\"\nmax_connections = 0\nmax_body_bytes = 100\nper_token = 0\ntrusted_proxies = [\"proxy.local\"]\n"
            ),
            &[
                "t.toml:5:1: links.click_window: warning: 0s counts every click, replays included: repeated clicks can reach an engagement cap",
                "t.toml:6:1: links.click_min_delay: warning: 0s counts clicks made as the email is delivered, which are mail scanners fetching its links",
                "t.toml:8:1: links.limits.header_read_timeout: must be more than 0",
                "t.toml:9:1: links.limits.max_connections: must be more than 0",
                "t.toml:10:1: links.limits.max_body_bytes: must be at least 1024: mail clients send the one-click unsubscribe as a multipart form",
                "t.toml:11:1: links.limits.per_token: must be more than 0",
                "t.toml:12:20: links.limits.trusted_proxies[0]: invalid IP address syntax",
            ],
        );
    }

    /// A `[links]` table whose key file exists (0600), for configs that need one.
    fn links_table(dir: &Path) -> String {
        let key = dir.join("key");
        std::fs::write(&key, "a test key that is at least 32 bytes long").expect("key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        format!(
            "[links]\npublic_listen = \"127.0.0.1:9478\"\npublic_url = \"https://leads.example.com\"\nsigning_key_file = \"{}\"\n",
            key.display()
        )
    }

    #[test]
    fn previous_link_keys_are_read_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let head = links_table(dir.path());
        let old = dir.path().join("old");
        std::fs::write(&old, "the key before the rotation, 32+ bytes").expect("write");
        std::fs::set_permissions(&old, PermissionsExt::from_mode(0o600)).expect("chmod");
        let list = |files: &[&Path]| {
            let files: Vec<String> = files.iter().map(|f| format!("\"{}\"", f.display())).collect();
            format!("{head}previous_signing_key_files = [{}]\n", files.join(", "))
        };
        // Each finding is at its element of the array (line 5), whose column depends on the
        // temporary directory's name.
        let column = |text: &str, file: &Path| {
            let line = text.lines().nth(4).expect("line 5");
            line.find(&format!("\"{}\"", file.display())).expect("listed") + 1
        };
        check(&list(&[&old]), &[]);
        let (missing, current) = (dir.path().join("missing"), dir.path().join("key"));
        let text = list(&[&old, &missing, &current]);
        check(
            &text,
            &[
                format!(
                    "t.toml:5:{}: links.previous_signing_key_files[1]: cannot read secret file {}: no such file",
                    column(&text, &missing),
                    missing.display()
                )
                .as_str(),
                format!(
                    "t.toml:5:{}: links.previous_signing_key_files[2]: warning: is the current key (signing_key_file or signing_key_env); list only keys that signed links before",
                    column(&text, &current)
                )
                .as_str(),
            ],
        );
        std::fs::set_permissions(&old, PermissionsExt::from_mode(0o644)).expect("chmod");
        let text = list(&[&old]);
        check(
            &text,
            &[format!(
                "t.toml:5:{1}: links.previous_signing_key_files[0]: warning: secret file {0} can be read by others on this host (mode 0644); `chmod 600 {0}`, or pass it with systemd's LoadCredential=",
                old.display(),
                column(&text, &old)
            )
            .as_str()],
        );
    }

    #[test]
    fn guard_settings_are_checked() {
        // The defaults, and a valid section, raise nothing.
        check("", &[]);
        check(
            "[guard]\nexempt_internal = false\nmax_bounces = 5\nbounce_window = \"30m\"\nsurge_per_hour = 100\n",
            &[],
        );
        check(
            "[guard]\nmax_bounces = 5\nbounce_window = \"0s\"\nops_address = \"ops\"\n",
            &[
                "t.toml:3:1: guard.bounce_window: must be longer than 0s while max_bounces is set (0 max_bounces turns the bounce guard off)",
                "t.toml:4:1: guard.ops_address: `ops` is not an email address",
                "t.toml:4:1: guard.ops_address: warning: no [email] is configured, so the guard's alerts wait in the outbox; they are still logged and counted",
            ],
        );
        check(
            "[guard]\nops_address = \"ops@x.example\"\n",
            &[
                "t.toml:2:1: guard.ops_address: warning: no [email] is configured, so the guard's alerts wait in the outbox; they are still logged and counted",
            ],
        );
        check(
            "[guard]\nsurge_per_hour = -1\n",
            &["t.toml:2:18: guard.surge_per_hour: invalid value: integer `-1`, expected u64"],
        );
        check(
            "[guard]\npause = true\n",
            &[
                "t.toml:2:1: guard.pause: unknown field `pause`, expected one of `exempt_internal`, `max_bounces`, `bounce_window`, `surge_per_hour`, `ops_address`",
            ],
        );
    }

    #[test]
    fn nurture_without_links_is_an_error() {
        let tracks = "[[nurture.tracks]]\nname = \"t\"\n[[nurture.tracks.steps]]\nafter = \"1d\"\ntemplate = \"nurture_example\"\n";
        check(
            &format!("[nurture]\nfrequency_cap = {{ max = 2, per = \"7days\" }}\n\n{tracks}"),
            &[
                "t.toml:4:11: nurture.tracks: nurture mail needs [links]: every nurture email carries a signed unsubscribe link and a List-Unsubscribe header served by the public listener; configure [links] (public_listen, public_url, signing_key_file) or remove the tracks",
            ],
        );
        // [nurture] settings without tracks send nothing: no links needed.
        check("[nurture]\nfrequency_cap = { max = 2, per = \"7days\" }\n", &[]);
        let dir = tempfile::tempdir().expect("tempdir");
        check(&format!("{}{tracks}", links_table(dir.path())), &[]);
    }

    #[test]
    fn a_nurture_step_that_repeats_an_earlier_one_is_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let links = links_table(dir.path());
        let track = |second: &str| {
            format!(
                "{links}[[nurture.tracks]]\nname = \"t\"\n[[nurture.tracks.steps]]\nname = \"day 1\"\nafter = \"1d\"\ntemplate = \"nurture_example\"\nlinks = {{ guide = \"https://x.example/guide\" }}\n[[nurture.tracks.steps]]\nafter = \"2d\"\ntemplate = \"nurture_example\"\n{second}\n"
            )
        };
        let warnings = |text: &str| -> Vec<String> {
            let (_, warnings) = parse_and_check(Path::new("t.toml"), text).expect("valid");
            warnings.iter().map(ToString::to_string).filter(|w| w.contains("nurture.tracks")).collect()
        };
        assert_eq!(
            warnings(&track("links = { guide = \"https://x.example/guide\" }")),
            [
                "t.toml:12:1: nurture.tracks[0].steps[1]: warning: `step 2` sends the same email as `day 1` (template `nurture_example`, the same links): the lead gets it twice; give each step its own template or links"
            ]
        );
        // Other content: not the same email.
        assert_eq!(
            warnings(&track("links = { \"customer story\" = \"https://x.example/story\" }")),
            Vec::<String>::new()
        );
        // The same email only for leads whose interest picks the earlier step's template.
        let text = track("links = { guide = \"https://x.example/guide\" }").replace(
            "after = \"2d\"\ntemplate = \"nurture_example\"",
            "after = \"2d\"\ntemplate = \"sla_alert\"\nby_interest = { ai = \"nurture_example\" }",
        );
        assert_eq!(
            warnings(&text),
            [
                "t.toml:12:1: nurture.tracks[0].steps[1]: warning: `step 2` sends the same email as `day 1` to leads interested in `ai` (template `nurture_example`, the same links): the lead gets it twice; give each step its own template or links"
            ]
        );
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        check("[daemon\nstate_dir = 1\n", &["t.toml:1:8: unclosed table, expected `]`"]);
    }

    #[test]
    fn bad_email_and_duplicates() {
        check(
            "[[people]]\nid = \"a\"\nemail = \"not-an-email\"\nname = \"A\"\nrole = \"executive\"\n[[people]]\nid = \"a\"\nemail = \"a@x.example\"\nname = \"A2\"\nrole = \"executive\"\n",
            &[
                "t.toml:3:1: people[0].email: `not-an-email` is not an email address",
                "t.toml:7:1: people[1].id: person `a` is defined twice",
            ],
        );
    }
}
