//! Email templates: minijinja (the Jinja syntax admins know), three parts per template —
//! `NAME.subject.j2`, `NAME.txt.j2`, `NAME.html.j2` — loaded from a directory, with built-in
//! defaults for any template the directory does not provide. HTML parts are autoescaped.
//! Undefined variables are errors (strict mode): a missing variable fails `validate` with the
//! template, line and variable, and never renders as a blank.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Value, json};

/// The parts of every template.
pub const PARTS: [&str; 3] = ["subject", "txt", "html"];

/// The templates leadloop ships; each can be overridden from the templates directory.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("sla_alert.subject", include_str!("../templates/sla_alert.subject.j2")),
    ("sla_alert.txt", include_str!("../templates/sla_alert.txt.j2")),
    ("sla_alert.html", include_str!("../templates/sla_alert.html.j2")),
    ("sla_reminder.subject", include_str!("../templates/sla_reminder.subject.j2")),
    ("sla_reminder.txt", include_str!("../templates/sla_reminder.txt.j2")),
    ("sla_reminder.html", include_str!("../templates/sla_reminder.html.j2")),
    ("sla_manager.subject", include_str!("../templates/sla_manager.subject.j2")),
    ("sla_manager.txt", include_str!("../templates/sla_manager.txt.j2")),
    ("sla_manager.html", include_str!("../templates/sla_manager.html.j2")),
    ("sla_executive.subject", include_str!("../templates/sla_executive.subject.j2")),
    ("sla_executive.txt", include_str!("../templates/sla_executive.txt.j2")),
    ("sla_executive.html", include_str!("../templates/sla_executive.html.j2")),
    ("sla_digest.subject", include_str!("../templates/sla_digest.subject.j2")),
    ("sla_digest.txt", include_str!("../templates/sla_digest.txt.j2")),
    ("sla_digest.html", include_str!("../templates/sla_digest.html.j2")),
    ("sla_weekly.subject", include_str!("../templates/sla_weekly.subject.j2")),
    ("sla_weekly.txt", include_str!("../templates/sla_weekly.txt.j2")),
    ("sla_weekly.html", include_str!("../templates/sla_weekly.html.j2")),
    ("nurture_example.subject", include_str!("../templates/nurture_example.subject.j2")),
    ("nurture_example.txt", include_str!("../templates/nurture_example.txt.j2")),
    ("nurture_example.html", include_str!("../templates/nurture_example.html.j2")),
    ("guard_alert.subject", include_str!("../templates/guard_alert.subject.j2")),
    ("guard_alert.txt", include_str!("../templates/guard_alert.txt.j2")),
    ("guard_alert.html", include_str!("../templates/guard_alert.html.j2")),
];

/// A problem with a template, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    /// The file, or `built-in:NAME.PART` for a shipped template.
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("no template named `{0}`")]
    Unknown(String),
    #[error("template {name}: {message}")]
    Render { name: String, message: String },
}

/// The loaded templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    /// Where each `NAME.PART` came from, for messages.
    origin: BTreeMap<String, String>,
    /// Problems found while loading (syntax errors); `validate` reports them.
    load_problems: Vec<TemplateProblem>,
}

impl Templates {
    /// The built-in templates, overridden by `*.j2` files in `dir` if given.
    pub fn load(dir: Option<&Path>) -> Result<Self, TemplateProblem> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") { AutoEscape::Html } else { AutoEscape::None }
        });
        env.set_keep_trailing_newline(false);
        let mut sources: BTreeMap<String, (String, String)> = BUILT_IN
            .iter()
            .map(|(name, text)| ((*name).to_owned(), (format!("built-in:{name}"), (*text).to_owned())))
            .collect();
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir).map_err(|e| TemplateProblem {
                file: dir.display().to_string(),
                line: 0,
                message: format!("cannot read templates directory: {e}"),
            })?;
            let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for path in files {
                let Some(name) =
                    path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".j2"))
                else {
                    continue;
                };
                let text = std::fs::read_to_string(&path).map_err(|e| TemplateProblem {
                    file: path.display().to_string(),
                    line: 0,
                    message: format!("cannot read template: {e}"),
                })?;
                sources.insert(name.to_owned(), (path.display().to_string(), text));
            }
        }
        let mut origin = BTreeMap::new();
        let mut load_problems = Vec::new();
        for (name, (file, text)) in sources {
            if let Err(error) = env.add_template_owned(name.clone(), text) {
                load_problems.push(TemplateProblem {
                    file: file.clone(),
                    line: error.line().unwrap_or(0),
                    message: format!("syntax error: {}", error.detail().unwrap_or("invalid template")),
                });
            }
            origin.insert(name, file);
        }
        Ok(Self { env, origin, load_problems })
    }

    /// The template names (without part) that have all three parts.
    pub fn names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for full in self.origin.keys() {
            if let Some((name, _)) = full.rsplit_once('.')
                && PARTS.iter().all(|part| self.origin.contains_key(&format!("{name}.{part}")))
            {
                names.insert(name.to_owned());
            }
        }
        names
    }

    pub fn render(&self, name: &str, vars: &Value) -> Result<Rendered, RenderError> {
        let part = |part: &str| -> Result<String, RenderError> {
            let full = format!("{name}.{part}");
            let template = self.env.get_template(&full).map_err(|_| RenderError::Unknown(name.to_owned()))?;
            template
                .render(vars)
                .map_err(|e| RenderError::Render { name: full.clone(), message: describe(&e) })
        };
        Ok(Rendered { subject: single_line(&part("subject")?), text: part("txt")?, html: part("html")? })
    }

    /// Every problem with the templates named in `required` (and any loaded ones that fail
    /// to parse): missing parts, syntax errors, variables that the data leadloop passes does
    /// not have, and render errors with sample data.
    pub fn validate(&self, required: &[&str]) -> Vec<TemplateProblem> {
        let mut problems = self.load_problems.clone();
        let known = known_variables();
        for name in required {
            for part in PARTS {
                let full = format!("{name}.{part}");
                let Some(file) = self.origin.get(&full) else {
                    problems.push(TemplateProblem {
                        file: format!("{name}.{part}.j2"),
                        line: 0,
                        message: format!("template `{name}` has no `{part}` part"),
                    });
                    continue;
                };
                let Ok(template) = self.env.get_template(&full) else {
                    continue;
                };
                let mut unknown = false;
                for variable in template.undeclared_variables(true) {
                    if !known.contains(&variable)
                        && !known.iter().any(|k| k.starts_with(&format!("{variable}.")))
                    {
                        unknown = true;
                        problems.push(TemplateProblem {
                            file: file.clone(),
                            line: line_of(template.source(), &variable),
                            message: format!("unknown variable `{variable}`"),
                        });
                    }
                }
                if !unknown && let Err(error) = template.render(sample_vars(name)) {
                    problems.push(TemplateProblem {
                        file: file.clone(),
                        line: error.line().unwrap_or(0),
                        message: describe(&error),
                    });
                }
            }
        }
        problems
    }
}

fn describe(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

/// The first line mentioning `variable` (1-based), or 0.
fn line_of(source: &str, variable: &str) -> usize {
    let head = variable.split('.').next().unwrap_or(variable);
    source
        .lines()
        .position(|l| l.contains(variable))
        .or_else(|| source.lines().position(|l| l.contains(head)))
        .map_or(0, |i| i + 1)
}

/// Subjects are one line: any CR, LF or other control character becomes a space, so lead data
/// cannot start a new header.
pub fn single_line(text: &str) -> String {
    let cleaned: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Sample data of the shape leadloop passes, for previews and validation: realistic values for
/// every variable any built-in template uses. A template whose name starts with `nurture` gets
/// nurture links (`links.guide`) instead of the SLA's one-click answers.
pub fn sample_vars(template: &str) -> Value {
    let mut vars = sla_sample();
    if template.starts_with("nurture") {
        vars["kind"] = json!("nurture");
        vars["step"] = json!("day 3");
        vars["links"] = json!({ "guide": "https://leadloop.example.com/l/SAMPLE-GUIDE" });
    } else if template == "guard_alert" {
        vars["kind"] = json!("guard.alert");
        vars["what"] = json!("nurture email paused");
        vars["message"] = json!("20 hard bounces within 1h (limit 20): nurture email is paused.");
        vars["at"] = json!("2026-03-02T14:00:00Z");
        vars["action"] = json!("When the list is fixed: leadloop resume nurture");
    } else {
        vars["kind"] = json!(template);
    }
    vars
}

fn sla_sample() -> Value {
    let person = |name: &str, email: &str| json!({ "id": "005S", "name": name, "email": email, "time_zone": "America/New_York" });
    json!({
        "kind": "sla.reminder",
        "step": "reminder",
        "lead": {
            "id": "00QSAMPLE",
            "name": "Ana Lima",
            "first_name": "Ana",
            "last_name": "Lima",
            "email": "ana.lima@acme.example",
            "company": "Acme",
            "title": "VP Engineering",
            "industry": "Software",
            "country": "US",
            "lead_source": "Web",
            "status": "Open - Not Contacted",
            "stage": "marketing_qualified",
            "score": 72,
            "interests": ["integrations"],
            "score_reasons": ["senior title (+40)", "demo request (+30)", "content downloads (+10)"],
        },
        "owner": person("Rep Sample", "rep@example.com"),
        "manager": person("Manager Sample", "manager@example.com"),
        "executive": person("Executive Sample", "executive@example.com"),
        "handoff": {
            "number": 1,
            "started": "2026-03-02 09:00 EST",
            "age": "24 hours",
            "step": "reminder",
            "next_step": "manager",
            "next_step_at": "2026-03-04 09:00 EST",
            "next_copies": ["Manager Sample"],
            "missed_steps": 0,
        },
        "crm_url": "https://example.my.salesforce.com/00QSAMPLE",
        // A follow-up call held in the rep's calendar at hand-off, and the rep's time away
        // (with who gets their steps instead); null when there is none.
        "hold": { "start": "2026-03-03 10:00 EST", "end": "2026-03-03 10:30 EST" },
        "away": { "until": "2026-03-04 00:00 EST", "backup": person("Backup Sample", "backup@example.com") },
        "unsubscribe_url": "https://leadloop.example.com/l/SAMPLE-UNSUBSCRIBE",
        // Nurture mail: the track, the step and its number, the round, the lead's local time.
        "track": "welcome",
        "step_number": 2,
        "steps": 3,
        "round": 1,
        "local_time": "2026-03-03 10:00 EST",
        "person": person("Manager Sample", "manager@example.com"),
        "date": "2026-03-03",
        "count": 1,
        "items": [{
            "lead_id": "00QSAMPLE",
            "handoff": 1,
            "lead": "Ana Lima",
            "company": "Acme",
            "owner": "Rep Sample",
            "owner_email": "rep@example.com",
            "step": "manager",
            "started": "2026-03-02 09:00 EST",
            "age": "24 hours",
            "crm_url": "https://example.my.salesforce.com/00QSAMPLE",
        }],
        "summary": {
            "handoffs": 12,
            "met": 9,
            "breached": 3,
            "met_percent": 75,
            "median_first_touch": "3 hours",
            "week_ending": "2026-03-09",
        },
        "links": {
            "accept": "https://leadloop.example.com/l/SAMPLE-ACCEPT",
            "recycle": "https://leadloop.example.com/l/SAMPLE-RECYCLE",
            "disqualify": "https://leadloop.example.com/l/SAMPLE-DISQUALIFY",
        },
    })
}

/// Dotted paths of every variable in [`sample_vars`].
pub fn known_variables() -> BTreeSet<String> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeSet<String>) {
        if !prefix.is_empty() {
            out.insert(prefix.to_owned());
        }
        if let Value::Object(map) = value {
            for (key, child) in map {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                walk(&path, child, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", &sample_vars("x"), &mut out);
    walk("", &sample_vars("nurture"), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: &[&str] = &[
        "sla_alert",
        "sla_reminder",
        "sla_manager",
        "sla_executive",
        "sla_digest",
        "sla_weekly",
        "nurture_example",
    ];

    #[test]
    fn built_in_templates_validate_and_render() {
        let templates = Templates::load(None).expect("load");
        assert_eq!(templates.validate(REQUIRED), vec![]);
        for name in REQUIRED {
            let rendered = templates.render(name, &sample_vars(name)).expect("render");
            assert!(!rendered.subject.is_empty() && !rendered.subject.contains('\n'), "{name}: {rendered:?}");
            let expected = if *name == "sla_weekly" { "75%" } else { "Ana" };
            assert!(rendered.text.contains(expected), "{name}: {}", rendered.text);
        }
    }

    /// Every built-in template, by name (each has three parts).
    fn built_in_names() -> Vec<&'static str> {
        let mut names: Vec<&str> =
            BUILT_IN.iter().filter_map(|(full, _)| full.strip_suffix(".subject")).collect();
        names.sort_unstable();
        names
    }

    /// The per-lead emails of the SLA ladder.
    const LADDER: &[&str] = &["sla_alert", "sla_reminder", "sla_manager", "sla_executive"];

    /// The variables with everything optional left out, as a lead with only a name, a rep with
    /// no manager or executive on record, no `[links]`, no `sla.crm_url`, no scoring, the last
    /// step of the ladder, and nurture with no links.
    fn bare_vars(name: &str) -> Value {
        let mut vars = sample_vars(name);
        for field in
            ["first_name", "email", "company", "title", "industry", "country", "lead_source", "status"]
        {
            vars["lead"][field] = Value::Null;
        }
        vars["lead"]["name"] = json!("Lima");
        vars["lead"]["interests"] = json!([]);
        vars["lead"]["score_reasons"] = json!([]);
        for role in ["manager", "executive"] {
            vars[role] = json!({ "id": "", "name": format!("(no {role} on record)"), "email": null, "time_zone": null });
        }
        vars["handoff"]["next_step"] = Value::Null;
        vars["handoff"]["next_step_at"] = Value::Null;
        vars["handoff"]["next_copies"] = json!([]);
        vars["crm_url"] = json!("");
        vars["unsubscribe_url"] = json!("");
        vars["hold"] = Value::Null;
        vars["away"] = Value::Null;
        vars["links"] = if name.starts_with("nurture") {
            json!({})
        } else {
            json!({ "accept": "", "recycle": "", "disqualify": "" })
        };
        vars["items"] = json!([{
            "lead_id": "00QSAMPLE", "handoff": 1, "lead": "Lima", "company": null, "owner": null,
            "owner_email": null, "step": "manager", "started": "2026-03-02 09:00 EST", "age": "2 days",
            "crm_url": "",
        }]);
        vars["summary"]["median_first_touch"] = Value::Null;
        vars
    }

    /// What an HTML part says once its entities are decoded.
    fn unescape(html: &str) -> String {
        html.replace("&#x2f;", "/")
            .replace("&#x27;", "'")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }

    /// Everything a reader would see as broken: an empty or scheme-only link, a label with
    /// nothing after it, an unrendered tag, a value that printed as `none`, stray blank lines,
    /// and text and HTML parts that disagree about what the email offers.
    fn hygiene(r: &Rendered) -> Vec<String> {
        let mut problems = Vec::new();
        let html = unescape(&r.html);
        for (part, body) in
            [("subject", r.subject.as_str()), ("txt", r.text.as_str()), ("html", html.as_str())]
        {
            let mut flag = |what: String| problems.push(format!("{part}: {what}"));
            if body.trim().is_empty() {
                flag("empty".into());
            }
            for bad in [
                "{{",
                "}}",
                "{%",
                "%}",
                "href=\"\"",
                "href=''",
                "<>",
                "()",
                "undefined",
                " ,",
                " .",
                " ;",
                "  :",
            ] {
                if body.contains(bad) {
                    flag(format!("contains {bad:?}"));
                }
            }
            for word in body.split(|c: char| !c.is_alphanumeric()) {
                if ["none", "None", "null", "NaN"].contains(&word) {
                    flag(format!("a value printed as {word:?}"));
                }
            }
            for scheme in ["http://", "https://", "mailto:"] {
                for (at, _) in body.match_indices(scheme) {
                    let after = body[at + scheme.len()..].chars().next();
                    if after.is_none_or(|c| c.is_whitespace() || "\"'<>?&".contains(c)) {
                        flag(format!("an empty {scheme} link"));
                    }
                }
            }
        }
        if r.subject.contains("  ") || r.subject.ends_with(':') {
            problems.push(format!("subject: {:?}", r.subject));
        }
        let lines: Vec<&str> = r.text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.ends_with(' ') {
                problems.push(format!("txt: trailing space in {line:?}"));
            }
            // A label ending in `:` introduces something on the next lines (indented, a list or
            // a URL); with nothing there, a value or a link is missing.
            if line.trim_end().ends_with(':') {
                let next = lines.get(i + 1).copied().unwrap_or("");
                let introduces = next.starts_with(' ') || next.starts_with("- ") || next.starts_with("http");
                if !introduces {
                    problems.push(format!("txt: {line:?} is followed by {next:?}"));
                }
            }
            if line.is_empty() && lines.get(i + 1).is_some_and(|next| next.is_empty()) {
                problems.push(format!("txt: two blank lines before line {}", i + 2));
            }
        }
        if r.text.starts_with('\n') || r.text.ends_with("\n\n") {
            problems.push("txt: starts or ends with a blank line".into());
        }
        for href in html.split("href=\"").skip(1).filter_map(|h| h.split('"').next()) {
            let ok = ["http://", "https://", "mailto:"].iter().any(|scheme| {
                href.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty() && !rest.starts_with('?'))
            });
            if !ok {
                problems.push(format!("html: link to {href:?}"));
            }
        }
        for empty in ["<p></p>", "<li></li>", "<ul>\n</ul>", "<strong></strong>", "<a href"] {
            if empty != "<a href" && html.contains(empty) {
                problems.push(format!("html: {empty}"));
            }
        }
        // The two parts offer the same: every URL and every offer in one is in the other.
        let urls = |body: &str| -> BTreeSet<String> {
            body.split(|c: char| c.is_whitespace() || "\"<>".contains(c))
                .filter(|w| ["http://", "https://", "mailto:"].iter().any(|s| w.starts_with(s)))
                .map(|w| w.trim_end_matches(['.', ',', ')']).to_owned())
                .collect()
        };
        let (text_urls, mut html_urls) = (urls(&r.text), urls(&html));
        // `mailto:ADDRESS` behind an address the text shows plainly (clients link it) is the same.
        html_urls.retain(|url| {
            url.strip_prefix("mailto:")
                .is_none_or(|address| address.contains('?') || !r.text.contains(address))
        });
        for url in text_urls.symmetric_difference(&html_urls) {
            problems.push(format!("only one part links {url}"));
        }
        for offer in [
            "Open the lead",
            "Why this lead",
            "Answer in one click",
            "held in your calendar",
            "is away until",
            "What you can do",
            "we picked for you",
        ] {
            if r.text.contains(offer) != html.contains(offer) {
                problems.push(format!("only one part says {offer:?}"));
            }
        }
        problems
    }

    #[test]
    fn every_built_in_template_reads_cleanly_with_full_and_with_bare_vars() {
        let templates = Templates::load(None).expect("load");
        let names = built_in_names();
        assert_eq!(names.len(), 8, "{names:?}");
        let mut failures = Vec::new();
        for name in names {
            for (label, vars) in [("full", sample_vars(name)), ("bare", bare_vars(name))] {
                let rendered =
                    templates.render(name, &vars).unwrap_or_else(|e| panic!("{name} ({label}): {e}"));
                let problems = hygiene(&rendered);
                if !problems.is_empty() {
                    failures.push(format!(
                        "{name} ({label}): {problems:#?}\n--- subject\n{}\n--- txt\n{}\n--- html\n{}",
                        rendered.subject, rendered.text, rendered.html
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn the_hygiene_check_sees_what_a_reader_would() {
        let clean = Rendered {
            subject: "Contact Ana".into(),
            text: "Ana is yours.\n\nOpen the lead: https://crm.example/1".into(),
            html: "<p>Ana is yours.</p>\n<p><a href=\"https://crm.example/1\">Open the lead</a></p>".into(),
        };
        assert_eq!(hygiene(&clean), Vec::<String>::new());
        let broken =
            |text: &str, html: &str| Rendered { text: text.into(), html: html.into(), ..clean.clone() };
        for (text, html) in [
            ("Ana is yours.\n\nOpen the lead: ", "<p><a href=\"\">Open the lead</a></p>"),
            ("Ana is yours.\n\nOpen the lead: http://", "<p><a href=\"http://\">Open the lead</a></p>"),
            ("Ana (none) is yours.", "<p>Ana (none) is yours.</p>"),
            ("Ana is {{ lead.name }}.", "<p>Ana</p>"),
            ("Ana is yours.\n\n\nBye.", "<p>Ana is yours.</p><p>Bye.</p>"),
            ("Ana is yours.\nOpen the lead:\nBye.", "<p>Open the lead</p>"),
            ("Ask: mailto:?subject=x", "<p><a href=\"mailto:?subject=x\">Ask</a></p>"),
            ("Ana is yours.", "<p>Ana is yours. <a href=\"https://crm.example/1\">Open the lead</a></p>"),
        ] {
            assert!(!hygiene(&broken(text, html)).is_empty(), "not flagged: {text:?} / {html:?}");
        }
    }

    #[test]
    fn the_ladder_links_the_lead_only_with_a_crm_url() {
        let templates = Templates::load(None).expect("load");
        for name in LADDER {
            let with = templates.render(name, &sample_vars(name)).expect("render");
            let url = "https://example.my.salesforce.com/00QSAMPLE";
            assert!(with.text.contains(&format!("Open the lead: {url}")), "{name}: {}", with.text);
            assert!(
                unescape(&with.html).contains(&format!("<a href=\"{url}\"><strong>Open the lead")),
                "{name}"
            );
            let mut vars = sample_vars(name);
            vars["crm_url"] = json!("");
            let without = templates.render(name, &vars).expect("render");
            assert!(!without.text.contains("Open the lead"), "{name}: {}", without.text);
            assert!(!without.html.contains("Open the lead"), "{name}: {}", without.html);
        }
        let mut vars = sample_vars("sla_digest");
        vars["items"][0]["crm_url"] = json!("");
        let digest = templates.render("sla_digest", &vars).expect("render");
        assert!(!digest.text.contains("Open the lead:"), "{}", digest.text);
        assert!(!digest.html.contains("href=\"\""), "{}", digest.html);
    }

    #[test]
    fn ladder_emails_lead_with_the_point_and_say_why_the_lead_matters() {
        let templates = Templates::load(None).expect("load");
        for name in LADDER {
            let mut vars = sample_vars(name);
            vars["away"] = Value::Null;
            let rendered = templates.render(name, &vars).expect("render");
            let first = rendered.text.lines().next().unwrap_or_default();
            assert!(first.starts_with("Ana Lima, VP Engineering at Acme, "), "{name}: {first}");
            assert!(rendered.subject.contains("ontact Ana Lima (Acme)"), "{name}: {}", rendered.subject);
            assert!(
                rendered
                    .text
                    .contains("Why this lead: senior title (+40), demo request (+30), content downloads (+10); score 72."),
                "{name}: {}",
                rendered.text
            );
            vars["lead"]["score_reasons"] = json!([]);
            let plain = templates.render(name, &vars).expect("render");
            assert!(!plain.text.contains("Why this lead"), "{name}: {}", plain.text);
            // Without a title or company the name reads on: no dangling comma.
            for (title, company, reads) in [
                (None, None, "Ana Lima "),
                (None, Some("Acme"), "Ana Lima at Acme "),
                (Some("CTO"), None, "Ana Lima, CTO, "),
            ] {
                vars["lead"]["title"] = json!(title);
                vars["lead"]["company"] = json!(company);
                let rendered = templates.render(name, &vars).expect("render");
                assert!(rendered.text.starts_with(reads), "{name}: {}", rendered.text);
                assert!(
                    unescape(&rendered.html)
                        .starts_with(&format!("<p><strong>Ana Lima</strong>{}", &reads[8..])),
                    "{name}: {}",
                    rendered.html
                );
            }
        }
        let alert = templates.render("sla_alert", &sample_vars("sla_alert")).expect("render");
        assert!(
            alert.text.contains("If the status has not changed by 2026-03-04 09:00 EST, you get a reminder with Manager Sample copied."),
            "{}",
            alert.text
        );
    }

    #[test]
    fn the_executive_escalation_offers_what_can_be_done() {
        let templates = Templates::load(None).expect("load");
        let rendered = templates.render("sla_executive", &sample_vars("sla_executive")).expect("render");
        let text = &rendered.text;
        assert!(text.contains("What you can do:"), "{text}");
        assert!(
            text.contains("- Executive Sample: ask Manager Sample for a plan:\n  mailto:manager@example.com?cc=rep%40example.com&subject=Plan%20for%20Ana%20Lima%2C%20waiting%2024%20hours"),
            "{text}"
        );
        assert!(text.contains("- Open the lead: https://example.my.salesforce.com/00QSAMPLE"), "{text}");
        assert!(text.contains("  Accept:      https://leadloop.example.com/l/SAMPLE-ACCEPT"), "{text}");
        let html = unescape(&rendered.html);
        assert!(
            html.contains("<a href=\"mailto:manager@example.com?cc=rep%40example.com&subject=Plan%20for"),
            "{html}"
        );
        // With no manager on record there is no one to ask: no mailto, the rest stays.
        let mut vars = sample_vars("sla_executive");
        vars["manager"] = json!({ "id": "", "name": "(no manager on record)", "email": "ops@example.com", "time_zone": null });
        let rendered = templates.render("sla_executive", &vars).expect("render");
        assert!(
            !rendered.text.contains("mailto:") && !rendered.text.contains("no manager"),
            "{}",
            rendered.text
        );
        assert!(rendered.text.contains("- Open the lead: "), "{}", rendered.text);
    }

    #[test]
    fn the_nurture_email_promises_only_what_it_links() {
        let templates = Templates::load(None).expect("load");
        let with = templates.render("nurture_example", &sample_vars("nurture_example")).expect("render");
        assert_eq!(with.subject, "Ana, the guide we picked for you");
        assert!(
            with.text.contains(
                "Here is the guide we picked for you, as you showed interest in integrations:\nhttps://leadloop.example.com/l/SAMPLE-GUIDE"
            ),
            "{}",
            with.text
        );
        assert!(
            with.text.contains(
                "To stop receiving these emails: https://leadloop.example.com/l/SAMPLE-UNSUBSCRIBE"
            )
        );
        // Two links: a short list, each by its name.
        let mut vars = sample_vars("nurture_example");
        vars["links"] =
            json!({ "checklist": "https://x.example/c", "customer story": "https://x.example/s" });
        let two = templates.render("nurture_example", &vars).expect("render");
        assert_eq!(two.subject, "Ana, a few things we picked for you");
        assert!(
            two.text
                .contains("- The checklist: https://x.example/c\n- The customer story: https://x.example/s"),
            "{}",
            two.text
        );
        // No link: no promise, and no unsubscribe line without its link.
        let without = templates.render("nurture_example", &bare_vars("nurture_example")).expect("render");
        assert_eq!(without.subject, "Thank you for your interest");
        for part in [&without.subject, &without.text, &without.html] {
            assert!(
                !part.contains("guide") && !part.contains("picked") && !part.contains("stop receiving"),
                "{part}"
            );
        }
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let templates = Templates::load(None).expect("load");
        let mut vars = sample_vars("sla_alert");
        vars["lead"]["company"] = json!("<script>Acme & Co</script>");
        let rendered = templates.render("sla_alert", &vars).expect("render");
        assert!(
            rendered.html.contains("&lt;script&gt;Acme &amp; Co&lt;&#x2f;script&gt;"),
            "{}",
            rendered.html
        );
        assert!(rendered.text.contains("<script>Acme & Co</script>"));
    }

    #[test]
    fn the_alert_names_the_held_call_slot_and_an_away_reps_backup() {
        let templates = Templates::load(None).expect("load");
        let mut vars = sample_vars("sla_alert");
        vars["hold"] = Value::Null;
        vars["away"] = Value::Null;
        let plain = templates.render("sla_alert", &vars).expect("render");
        assert!(!plain.text.contains("held in your calendar"), "{}", plain.text);
        vars["hold"] = json!({ "start": "2026-11-24 10:00 CET", "end": "2026-11-24 10:30 CET" });
        vars["away"] = json!({ "until": "2026-11-25 00:00 CET", "backup": { "name": "Lee Backup" } });
        let rendered = templates.render("sla_alert", &vars).expect("render");
        assert!(
            rendered.text.contains(
                "A call slot is held in your calendar: 2026-11-24 10:00 CET to 2026-11-24 10:30 CET."
            ),
            "{}",
            rendered.text
        );
        assert!(rendered.text.starts_with(
            "Lee Backup: Rep Sample is away until 2026-11-25 00:00 CET, so this new lead comes to you.\n"
        ));
        assert!(rendered.html.contains("held in your calendar: 2026-11-24 10:00 CET"), "{}", rendered.html);
    }

    #[test]
    fn line_breaks_in_lead_data_cannot_reach_the_subject() {
        let templates = Templates::load(None).expect("load");
        let mut vars = sample_vars("sla_alert");
        vars["lead"]["name"] = json!("Ana\r\nBcc: victim@example.com");
        let rendered = templates.render("sla_alert", &vars).expect("render");
        assert!(!rendered.subject.contains('\r') && !rendered.subject.contains('\n'));
        assert!(rendered.subject.starts_with("Contact Ana Bcc: victim@example.com"), "{}", rendered.subject);
    }

    #[test]
    fn unknown_variable_and_syntax_error_are_located() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("sla_alert.txt.j2"),
            "Hello {{ owner.name }}\nLead: {{ lead.frist_name }}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("sla_reminder.html.j2"), "<p>\n{% if lead.name %}\nno end\n")
            .expect("write");
        let templates = Templates::load(Some(dir.path())).expect("load");
        let problems: Vec<String> = templates.validate(REQUIRED).iter().map(ToString::to_string).collect();
        let alert = dir.path().join("sla_alert.txt.j2").display().to_string();
        let reminder = dir.path().join("sla_reminder.html.j2").display().to_string();
        assert!(
            problems.contains(&format!("{alert}:2: unknown variable `lead.frist_name`")),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with(&format!("{reminder}:")) && p.contains("syntax error")),
            "{problems:#?}"
        );
    }

    #[test]
    fn missing_variable_at_render_time_is_an_error_not_a_blank() {
        let templates = Templates::load(None).expect("load");
        let mut vars = sample_vars("sla_manager");
        vars.as_object_mut().expect("object").remove("manager");
        let error = templates.render("sla_manager", &vars).expect_err("strict undefined");
        assert!(error.to_string().contains("sla_manager"), "{error}");
    }
}
