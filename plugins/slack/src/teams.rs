//! Microsoft Teams through a Workflows webhook: the step as an Adaptive Card posted to the
//! webhook URL of a chat or channel ("When a Teams webhook request is received" → "Post card
//! in a chat or channel"). The answers are `Action.OpenUrl` buttons to the recipient's signed
//! one-click pages on the public listener, as in the email. A 429 is transient with its
//! `Retry-After`; 5xx and timeouts are transient; another 4xx is permanent (the relay then
//! sends the email).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use leadloop_core::connector::{ChatReceipt, ChatSender, ConnectorError, OutgoingChat};
use leadloop_core::{ChatService, PersonId};
use leadloop_plugin::{BuildContext, BuildError, Secret, error_chain, secret_from};
use serde::Deserialize;
use serde_json::{Value, json};

/// A webhook URL: it carries its own signature, so it is a secret (a file or an env var).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub webhook_url_file: Option<PathBuf>,
    pub webhook_url_env: Option<String>,
}

/// `[chat.teams]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsConfig {
    /// Where messages go by default (a team channel or a group chat).
    pub webhook_url_file: Option<PathBuf>,
    pub webhook_url_env: Option<String>,
    /// A person's own chat, by person id: their messages go there instead.
    #[serde(default)]
    pub people: BTreeMap<String, Webhook>,
    #[serde(default = "default_timeout", with = "leadloop_plugin::serde_duration")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl TeamsConfig {
    pub fn build(&self, _cx: &BuildContext) -> Result<Teams, BuildError> {
        let default =
            secret_from("webhook_url", self.webhook_url_file.as_deref(), self.webhook_url_env.as_deref())?;
        let mut people = BTreeMap::new();
        for (id, hook) in &self.people {
            let url =
                secret_from("webhook_url", hook.webhook_url_file.as_deref(), hook.webhook_url_env.as_deref())
                    .map_err(|e| BuildError::new(format!("people.{id}.{}", e.key), e.message))?
                    .ok_or_else(|| {
                        BuildError::new(format!("people.{id}"), "set `webhook_url_file` or `webhook_url_env`")
                    })?;
            people.insert(PersonId::new(id.clone()), url);
        }
        if default.is_none() && people.is_empty() {
            return Err(BuildError::new(
                "webhook_url_file",
                "set `webhook_url_file` or `webhook_url_env`, or `people`",
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| BuildError::new("webhook_url_file", format!("cannot build the HTTP client: {e}")))?;
        Ok(Teams { http, default, people })
    }
}

pub struct Teams {
    http: reqwest::Client,
    default: Option<Secret>,
    people: BTreeMap<PersonId, Secret>,
}

impl std::fmt::Debug for Teams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teams").field("people", &self.people.len()).finish_non_exhaustive()
    }
}

impl Teams {
    /// A connector posting to `url` (tests).
    pub fn new(url: &str) -> Self {
        Self { http: reqwest::Client::new(), default: Some(Secret::new(url)), people: BTreeMap::new() }
    }
}

/// The Workflows webhook body: a message with one Adaptive Card attachment.
pub fn card(kind: &str, to: &str, vars: &Value) -> Value {
    let title = crate::blocks::headline(kind, vars);
    let lead = &vars["lead"];
    let mut facts = Vec::new();
    for (label, value) in
        [("Title", &lead["title"]), ("Company", &lead["company"]), ("Email", &lead["email"])]
    {
        if let Some(v) = value.as_str().filter(|v| !v.is_empty()) {
            facts.push(json!({ "title": label, "value": v }));
        }
    }
    if let Some(score) = lead["score"].as_i64() {
        facts.push(json!({ "title": "Score", "value": score.to_string() }));
    }
    let mut body = vec![
        json!({ "type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true, "text": title }),
        json!({ "type": "TextBlock", "isSubtle": true, "wrap": true, "text": format!("For {to}") }),
        json!({ "type": "FactSet", "facts": facts }),
    ];
    let reasons: Vec<String> = lead["score_reasons"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).map(|s| format!("- {s}")).collect())
        .unwrap_or_default();
    if !reasons.is_empty() {
        body.push(json!({ "type": "TextBlock", "wrap": true, "text": format!("**Why it is hot**\n\n{}", reasons.join("\n")) }));
    }
    let handoff = &vars["handoff"];
    if let (Some(step), Some(at)) = (handoff["next_step"].as_str(), handoff["next_step_at"].as_str()) {
        body.push(json!({ "type": "TextBlock", "wrap": true, "isSubtle": true, "text": format!("SLA: the {step} step follows at {at} unless answered") }));
    }
    let mut actions = Vec::new();
    for (action, label) in [("accept", "Accept"), ("recycle", "Recycle"), ("disqualify", "Disqualify")] {
        if let Some(url) = vars["links"][action].as_str().filter(|u| !u.is_empty()) {
            actions.push(json!({ "type": "Action.OpenUrl", "title": label, "url": url }));
        }
    }
    if let Some(url) = vars["crm_url"].as_str().filter(|u| !u.is_empty()) {
        actions.push(json!({ "type": "Action.OpenUrl", "title": "Open in CRM", "url": url }));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
                "actions": actions,
            }
        }]
    })
}

#[async_trait]
impl ChatSender for Teams {
    fn name(&self) -> &str {
        "teams"
    }

    fn service(&self) -> ChatService {
        ChatService::Teams
    }

    async fn post(&self, chat: &OutgoingChat) -> Result<ChatReceipt, ConnectorError> {
        let url =
            chat.person.as_ref().and_then(|p| self.people.get(p)).or(self.default.as_ref()).ok_or_else(
                || ConnectorError::Permanent {
                    message: "teams: no webhook for this person and no default webhook".into(),
                },
            )?;
        let response =
            self.http.post(url.expose()).json(&card(&chat.kind, &chat.to, &chat.vars)).send().await.map_err(
                |e| ConnectorError::Transient {
                    // The URL is a secret: reqwest's error names it, so only the causes are kept.
                    message: format!("teams webhook: {}", error_chain(&e.without_url())),
                    retry_after: None,
                },
            )?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        metrics::counter!("leadloop_teams_posts_total", "status" => status.as_u16().to_string()).increment(1);
        if status.is_success() {
            return Ok(ChatReceipt { channel: String::new(), ts: String::new() });
        }
        let message = format!("teams webhook: HTTP {status}");
        Err(if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            ConnectorError::Transient { message, retry_after: retry_after.or(Some(Duration::from_secs(1))) }
        } else if status.is_server_error() || status == reqwest::StatusCode::REQUEST_TIMEOUT {
            ConnectorError::Transient { message, retry_after }
        } else if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            ConnectorError::Auth { message }
        } else {
            ConnectorError::Permanent { message }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_offers_the_recipients_signed_pages() {
        let vars = json!({
            "lead": { "name": "Ana", "company": "Acme", "score": 50, "score_reasons": ["demo request (+30)"] },
            "handoff": { "next_step": "reminder", "next_step_at": "2026-03-03 09:00 EST" },
            "links": { "accept": "https://l.example/l/A", "recycle": "https://l.example/l/R", "disqualify": "https://l.example/l/D" },
        });
        let card = card("sla.alert", "rep@x.example", &vars);
        let content = &card["attachments"][0]["content"];
        assert_eq!(content["type"], "AdaptiveCard");
        let urls: Vec<&str> = content["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .filter_map(|a| a["url"].as_str())
            .collect();
        assert_eq!(urls, ["https://l.example/l/A", "https://l.example/l/R", "https://l.example/l/D"]);
        assert!(content.to_string().contains("demo request (+30)"));
    }
}
