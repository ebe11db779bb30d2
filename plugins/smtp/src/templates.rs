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

/// Sample data of the shape leadloop passes, for previews and validation.
pub fn sample_vars(template: &str) -> Value {
    let person = |name: &str, email: &str| json!({ "id": "005S", "name": name, "email": email, "time_zone": "America/New_York" });
    json!({
        "kind": template,
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
        },
        "owner": person("Rep Sample", "rep@example.com"),
        "manager": person("Manager Sample", "manager@example.com"),
        "executive": person("Executive Sample", "executive@example.com"),
        "handoff": {
            "number": 1,
            "started": "2026-03-02 09:00 EST",
            "age": "24 hours",
            "step": "reminder",
            "next_step": "reminder with your manager copied",
            "next_step_at": "2026-03-04 09:00 EST",
            "missed_steps": 0,
        },
        "crm_url": "https://example.my.salesforce.com/00QSAMPLE",
        // A follow-up call held in the rep's calendar at hand-off, and the rep's time away
        // (with who gets their steps instead); null when there is none.
        "hold": { "start": "2026-03-03 10:00 EST", "end": "2026-03-03 10:30 EST" },
        "away": { "until": "2026-03-04 00:00 EST", "backup": person("Backup Sample", "backup@example.com") },
        "unsubscribe_url": "https://leadloop.example.com/u/SAMPLE",
        "person": person("Manager Sample", "manager@example.com"),
        "date": "2026-03-03",
        "count": 1,
        "items": [{
            "lead_id": "00QSAMPLE",
            "handoff": 1,
            "lead": "Ana Lima",
            "company": "Acme",
            "owner": "Rep Sample",
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
        assert!(
            rendered.text.contains("is away until 2026-11-25 00:00 CET, so this goes to you, Lee Backup.")
        );
        assert!(rendered.html.contains("held in your calendar: 2026-11-24 10:00 CET"), "{}", rendered.html);
    }

    #[test]
    fn line_breaks_in_lead_data_cannot_reach_the_subject() {
        let templates = Templates::load(None).expect("load");
        let mut vars = sample_vars("sla_alert");
        vars["lead"]["name"] = json!("Ana\r\nBcc: victim@example.com");
        let rendered = templates.render("sla_alert", &vars).expect("render");
        assert!(!rendered.subject.contains('\r') && !rendered.subject.contains('\n'));
        assert!(
            rendered.subject.starts_with("New lead for you: Ana Bcc: victim@example.com"),
            "{}",
            rendered.subject
        );
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
