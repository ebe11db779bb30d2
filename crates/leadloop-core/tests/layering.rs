//! The core's layering, checked on its sources: state modules (what the lead record, the
//! history, timers and decisions are made of) import no rule module, so rules depend on state
//! and never the other way round (ARCHITECTURE.md, "State does not depend on rules").

use std::path::Path;

const STATE: &[&str] = &[
    "ids",
    "actor",
    "stage",
    "lead",
    "handoff",
    "nurture_state",
    "history",
    "effect",
    "timer",
    "decision",
    "person",
    "calendar",
    "local_time",
    "clock",
];

const RULES: &[&str] = &["sla", "nurture", "scoring", "routing", "rules", "schedule", "policy"];

/// The crate modules `source` names (`crate::x`, `use crate::{x, …}`), outside its tests.
fn imports(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    let mut found = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            found.extend(group.split(',').map(|p| p.trim().split("::").next().unwrap_or("").to_owned()));
        } else {
            found.push(rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect());
        }
    }
    found
}

#[test]
fn state_modules_import_no_rule() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for module in STATE {
        let source = std::fs::read_to_string(src.join(format!("{module}.rs"))).expect("state module source");
        let bad: Vec<String> = imports(&source).into_iter().filter(|m| RULES.contains(&m.as_str())).collect();
        assert!(bad.is_empty(), "state module `{module}` imports rule modules {bad:?}");
    }
}

#[test]
fn the_import_check_sees_both_forms() {
    let source = "use crate::{lead::LeadRecord, sla::Handoff};\nfn f(x: crate::nurture::NurtureState) {}\n#[cfg(test)]\nuse crate::rules;";
    assert_eq!(imports(source), ["lead", "sla", "nurture"]);
}
