//! Block Kit for an SLA step: a header, the lead (name, company, title, score), why it is hot
//! (the top score reasons), the SLA deadline (the next step and when), and an actions block
//! with Accept / Recycle / Disqualify buttons whose values are the recipient's signed
//! one-click tokens, plus the CRM link. The `text` is the notification's fallback.

use serde_json::{Value, json};

/// The headline of a step's message.
pub fn headline(kind: &str, vars: &Value) -> String {
    let lead = &vars["lead"];
    let name = lead["name"].as_str().unwrap_or("a lead");
    let company = lead["company"].as_str().map(|c| format!(" ({c})")).unwrap_or_default();
    let owner = vars["owner"]["name"].as_str().unwrap_or("the rep");
    let age = vars["handoff"]["age"].as_str().unwrap_or("");
    match kind {
        "sla.alert" => format!("New lead for you: {name}{company}"),
        "sla.reminder" => format!("Reminder: contact {name}{company}, waiting {age}"),
        "sla.manager" => format!("Overdue: {name}{company}, waiting {age} for {owner}"),
        "sla.executive" => format!("Escalation: {name}{company}, waiting {age} for {owner}"),
        _ => format!("{name}{company}"),
    }
}

/// The token in a one-click link (`…/l/TOKEN`).
fn token(url: &str) -> Option<&str> {
    url.rsplit_once("/l/").map(|(_, t)| t).filter(|t| !t.is_empty())
}

/// `(text, blocks)` for `chat.postMessage`.
pub fn message(kind: &str, vars: &Value) -> (String, Value) {
    let title = headline(kind, vars);
    let lead = &vars["lead"];
    let mut fields = Vec::new();
    for (label, value) in
        [("Title", &lead["title"]), ("Company", &lead["company"]), ("Email", &lead["email"])]
    {
        if let Some(v) = value.as_str().filter(|v| !v.is_empty()) {
            fields.push(json!({ "type": "mrkdwn", "text": format!("*{label}:*\n{}", escape(v)) }));
        }
    }
    if let Some(score) = lead["score"].as_i64() {
        fields.push(json!({ "type": "mrkdwn", "text": format!("*Score:*\n{score}") }));
    }
    let mut blocks =
        vec![json!({ "type": "header", "text": { "type": "plain_text", "text": truncate(&title, 150) } })];
    if !fields.is_empty() {
        blocks.push(json!({ "type": "section", "fields": fields }));
    }
    let reasons: Vec<String> = lead["score_reasons"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).map(|s| format!("• {}", escape(s))).collect())
        .unwrap_or_default();
    if !reasons.is_empty() {
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("*Why it is hot*\n{}", reasons.join("\n")) } }));
    }
    let handoff = &vars["handoff"];
    let deadline = match (handoff["next_step"].as_str(), handoff["next_step_at"].as_str()) {
        (Some(step), Some(at)) => format!("SLA: the {step} step follows at {at} unless you answer"),
        _ => "SLA: the last step of the ladder; please answer".to_owned(),
    };
    blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": escape(&deadline) }] }));
    let mut buttons = Vec::new();
    for (action, label, style) in [
        ("accept", "Accept", Some("primary")),
        ("recycle", "Recycle", None),
        ("disqualify", "Disqualify", Some("danger")),
    ] {
        let Some(token) = vars["links"][action].as_str().and_then(token) else { continue };
        let mut button = json!({
            "type": "button",
            "action_id": action,
            "text": { "type": "plain_text", "text": label },
            "value": token,
        });
        if let Some(style) = style {
            button["style"] = json!(style);
        }
        buttons.push(button);
    }
    if let Some(url) = vars["crm_url"].as_str().filter(|u| !u.is_empty()) {
        buttons.push(json!({ "type": "button", "action_id": "open_crm", "text": { "type": "plain_text", "text": "Open in CRM" }, "url": url }));
    }
    if !buttons.is_empty() {
        blocks.push(json!({ "type": "actions", "block_id": "leadloop_answer", "elements": buttons }));
    }
    (title, Value::Array(blocks))
}

/// The message once answered: the buttons replaced by who answered what.
pub fn answered_blocks(answer: &str, by: &str) -> (String, Value) {
    let text = format!("{answer} by {by}");
    (
        text.clone(),
        json!([{ "type": "section", "text": { "type": "mrkdwn", "text": format!(":white_check_mark: {}", escape(&text)) } }]),
    )
}

/// Slack's three control characters in text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_shows_the_lead_its_reasons_the_deadline_and_three_answers() {
        let vars = json!({
            "lead": { "name": "Ana Lima", "company": "Acme", "title": "VP Sales", "score": 72,
                      "score_reasons": ["senior title (+40)", "demo request (+30)"] },
            "owner": { "name": "Rep A" },
            "handoff": { "age": "0 minutes", "next_step": "reminder", "next_step_at": "2026-03-03 09:00 EST" },
            "links": { "accept": "https://l.example/l/A.tok", "recycle": "https://l.example/l/R.tok",
                       "disqualify": "https://l.example/l/D.tok" },
            "crm_url": "https://crm.example/00Q1",
        });
        let (text, blocks) = message("sla.alert", &vars);
        assert_eq!(text, "New lead for you: Ana Lima (Acme)");
        let all = blocks.to_string();
        assert!(all.contains("senior title (+40)"), "{all}");
        assert!(all.contains("the reminder step follows at 2026-03-03 09:00 EST"), "{all}");
        let actions =
            blocks.as_array().and_then(|b| b.iter().find(|b| b["type"] == "actions")).expect("actions");
        let ids: Vec<&str> = actions["elements"]
            .as_array()
            .expect("elements")
            .iter()
            .filter_map(|e| e["action_id"].as_str())
            .collect();
        assert_eq!(ids, ["accept", "recycle", "disqualify", "open_crm"]);
        assert_eq!(actions["elements"][0]["value"], "A.tok");
        // Without links, no answer buttons.
        let (_, bare) = message("sla.reminder", &json!({ "lead": { "name": "Bo", "title": "<b>" } }));
        assert!(!bare.to_string().contains("\"accept\""));
        assert!(bare.to_string().contains("&lt;b&gt;"));
    }
}
