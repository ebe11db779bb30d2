//! The emails `leadloop demo` leaves behind, read as their recipients would: every link has a
//! target, each ladder email opens the lead's page on the Salesforce emulator, the executive
//! escalation offers something to do, and no nurtured lead gets the same email twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use base64::Engine;

/// One `.eml` file: its name, subject and decoded text and HTML parts.
#[derive(Debug)]
struct Eml {
    name: String,
    subject: String,
    text: String,
    html: String,
}

fn split_head(raw: &str) -> (&str, &str) {
    raw.split_once("\r\n\r\n").or_else(|| raw.split_once("\n\n")).unwrap_or((raw, ""))
}

/// A header's value, unfolded.
fn header(head: &str, name: &str) -> Option<String> {
    let unfolded = head.replace("\r\n", "\n").replace("\n ", " ").replace("\n\t", " ");
    unfolded.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
    })
}

fn quoted_printable(body: &str) -> String {
    let body = body.replace("\r\n", "\n").replace("=\n", "");
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'=', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode(head: &str, body: &str) -> String {
    match header(head, "Content-Transfer-Encoding").unwrap_or_default().to_ascii_lowercase().as_str() {
        "quoted-printable" => quoted_printable(body),
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD.decode(compact).expect("base64 part");
            String::from_utf8(bytes).expect("utf-8 part")
        }
        _ => body.replace("\r\n", "\n"),
    }
}

fn parse(path: &Path) -> Eml {
    let raw = std::fs::read_to_string(path).expect("read eml");
    let (head, body) = split_head(&raw);
    let subject = header(head, "Subject").expect("a subject");
    let content_type = header(head, "Content-Type").expect("a content type");
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .map(|b| b.trim_matches('"').to_owned())
        .expect("multipart/alternative");
    let (mut text, mut html) = (String::new(), String::new());
    for part in body.split(&format!("--{boundary}")) {
        let (part_head, part_body) = split_head(part.trim_start_matches(['\r', '\n']));
        let kind = header(part_head, "Content-Type").unwrap_or_default();
        if kind.starts_with("text/plain") {
            text = decode(part_head, part_body);
        } else if kind.starts_with("text/html") {
            html = decode(part_head, part_body)
                .replace("&#x2f;", "/")
                .replace("&#x27;", "'")
                .replace("&quot;", "\"")
                .replace("&amp;", "&");
        }
    }
    assert!(!text.is_empty() && !html.is_empty(), "{}: both parts", path.display());
    Eml { name: path.file_name().expect("name").to_string_lossy().into_owned(), subject, text, html }
}

/// What would read as broken in any email.
fn problems(eml: &Eml) -> Vec<String> {
    let mut out = Vec::new();
    for (part, body) in [("subject", &eml.subject), ("text", &eml.text), ("html", &eml.html)] {
        for bad in ["href=\"\"", "{{", "{%", "<>", "()"] {
            if body.contains(bad) {
                out.push(format!("{part}: {bad:?}"));
            }
        }
        for word in body.split(|c: char| !c.is_alphanumeric()) {
            if ["none", "None", "null"].contains(&word) {
                out.push(format!("{part}: a value printed as {word:?}"));
            }
        }
        for scheme in ["http://", "https://", "mailto:"] {
            for (at, _) in body.match_indices(scheme) {
                let next = body[at + scheme.len()..].chars().next();
                if next.is_none_or(|c| c.is_whitespace() || "\"'<>?&".contains(c)) {
                    out.push(format!("{part}: an empty {scheme} link"));
                }
            }
        }
    }
    for line in eml.text.lines() {
        if line.ends_with(": ") {
            out.push(format!("text: {line:?} has nothing after its label"));
        }
    }
    out
}

/// The text with its URLs left out: what the reader reads, whatever the link tokens.
fn without_urls(text: &str) -> String {
    text.split_whitespace()
        .filter(|w| !w.starts_with("http://") && !w.starts_with("https://"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_demo_emails_link_the_emulator_offer_actions_and_never_repeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_leadloop"))
        .args(["demo", "--speed", "40000", "--duration", "80h", "--leads", "120", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run demo");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mail = dir.path().join("state").join("mail");
    let mut files: Vec<_> =
        std::fs::read_dir(&mail).expect("mail dir").filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    let emails: Vec<Eml> = files.iter().map(|p| parse(p)).collect();

    let mut failures = Vec::new();
    let mut crm_hosts = BTreeSet::new();
    let mut kinds = BTreeMap::<String, usize>::new();
    let mut nurture = BTreeMap::<String, Vec<&Eml>>::new();
    for eml in &emails {
        for problem in problems(eml) {
            failures.push(format!("{}: {problem}", eml.name));
        }
        let parts: Vec<&str> = eml.name.split(['_', '-']).collect();
        match parts.as_slice() {
            // sla_LEAD_HANDOFF_STEP-HASH.eml
            ["sla", lead, _, step, ..] => {
                *kinds.entry((*step).to_owned()).or_default() += 1;
                let path = format!("/lightning/r/Lead/{lead}/view");
                let link = eml
                    .text
                    .lines()
                    .find_map(|l| l.trim_start_matches("- ").strip_prefix("Open the lead: "))
                    .map(str::to_owned);
                match link {
                    Some(url) if url.starts_with("http://127.0.0.1:") && url.ends_with(&path) => {
                        crm_hosts.insert(url.trim_end_matches(&path).to_owned());
                        if !eml.html.contains(&format!("href=\"{url}\"")) {
                            failures.push(format!("{}: the HTML part does not link {url}", eml.name));
                        }
                    }
                    other => failures.push(format!("{}: open-the-lead link {other:?}", eml.name)),
                }
                if *step == "executive" {
                    for offer in ["What you can do:", ": ask ", "mailto:", "Answer in one click:"] {
                        if !eml.text.contains(offer) {
                            failures.push(format!("{}: the executive is not offered {offer:?}", eml.name));
                        }
                    }
                }
            }
            // nurture_LEAD_TRACK_ROUND_STEP-HASH.eml
            ["nurture", lead, ..] => nurture.entry((*lead).to_owned()).or_default().push(eml),
            _ => failures.push(format!("{}: an email of an unknown kind", eml.name)),
        }
    }
    for step in ["alert", "reminder", "manager", "executive"] {
        assert!(kinds.get(step).copied().unwrap_or(0) > 0, "no {step} email in {kinds:?}");
    }
    // One emulator, and not the public link listener: the CRM links open the emulator's pages.
    let stdout = String::from_utf8_lossy(&out.stdout);
    match crm_hosts.iter().collect::<Vec<_>>().as_slice() {
        [emulator] if stdout.contains(&format!("Salesforce emulator  {emulator} ")) => {}
        hosts => failures.push(format!("CRM links to {hosts:?}, the demo printed:\n{stdout}")),
    }
    assert!(nurture.values().any(|sent| sent.len() >= 2), "some lead gets two nurture emails");
    for (lead, sent) in &nurture {
        let read: BTreeSet<(String, String)> =
            sent.iter().map(|e| (e.subject.clone(), without_urls(&e.text))).collect();
        if read.len() != sent.len() {
            failures.push(format!(
                "{lead} gets the same nurture email twice: {:?}",
                sent.first().map(|e| &e.subject)
            ));
        }
        for eml in sent {
            if !eml.text.contains("we picked for you")
                || !eml.text.contains("To stop receiving these emails: http")
            {
                failures.push(format!(
                    "{}: the nurture email does not link what it promises:\n{}",
                    eml.name, eml.text
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}
