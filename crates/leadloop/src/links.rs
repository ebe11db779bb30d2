//! Signed, expiring links — one-click Accept / Recycle / Disqualify in SLA mail, unsubscribe
//! and tracked redirects in nurture mail — and the public listener that serves them.
//!
//! A token is `PAYLOAD.MAC`: the payload in base64url, and an HMAC-SHA256 of it under the
//! configured key. SLA payloads are `ACTION.LEAD.HANDOFF.EXPIRES`; nurture payloads are a small
//! JSON object (`{"k":"u",…}` to unsubscribe, `{"k":"c",…}` for a click, whose target URL is
//! inside the signed payload, so the redirect is never open). The listener exposes only
//! `/l/TOKEN`: a GET shows a confirmation page with a form (mail scanners that fetch links
//! change nothing), the POST performs the action — for unsubscribe links that POST is the
//! RFC 8058 one-click (`List-Unsubscribe=One-Click`). A click GET records the click and
//! redirects. It is meant to sit behind the company's reverse proxy, apart from the admin
//! listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use leadloop_core::nurture::NurtureLinks;
use leadloop_core::sla::{ActionOutcome, LinkMaker, SalesAction};
use leadloop_core::{LeadId, Timestamp};
use leadloop_engine::Engine;
use leadloop_plugin::Secret;
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// `[links]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksConfig {
    /// Where the public listener binds; put the company's reverse proxy in front of it.
    pub public_listen: SocketAddr,
    /// How leads and reps reach it, e.g. `https://leads.example.com`.
    pub public_url: String,
    /// The HMAC key (at least 32 bytes): a file (a bare name is read from
    /// `$CREDENTIALS_DIRECTORY`) or an environment variable.
    pub signing_key_file: Option<PathBuf>,
    pub signing_key_env: Option<String>,
    /// How long a link works.
    #[serde(default = "default_ttl", with = "leadloop_plugin::serde_duration")]
    pub ttl: Duration,
    /// How long unsubscribe and tracked links in nurture mail work (long: an unsubscribe link
    /// in an old email must still work).
    #[serde(default = "default_nurture_ttl", with = "leadloop_plugin::serde_duration")]
    pub nurture_ttl: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(14 * 24 * 3600)
}

fn default_nurture_ttl() -> Duration {
    Duration::from_secs(400 * 24 * 3600)
}

/// The smallest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

impl LinksConfig {
    pub fn key(&self) -> Result<Secret, leadloop_plugin::BuildError> {
        let key = leadloop_plugin::secret_from(
            "links.signing_key",
            self.signing_key_file.as_deref(),
            self.signing_key_env.as_deref(),
        )?
        .ok_or_else(|| {
            leadloop_plugin::BuildError::new("links", "set `signing_key_file` or `signing_key_env`")
        })?;
        if key.expose().len() < MIN_KEY_BYTES {
            return Err(leadloop_plugin::BuildError::new(
                "links.signing_key_file",
                format!("the key must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)"),
            ));
        }
        Ok(key)
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub action: SalesAction,
    pub lead: LeadId,
    pub handoff: u32,
    pub expires: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this link is not valid")]
    Invalid,
    #[error("this link has expired")]
    Expired,
}

/// What a verified nurture token says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum NurtureClaim {
    /// Unsubscribe `l` from nurture mail.
    #[serde(rename = "u")]
    Unsubscribe {
        #[serde(rename = "l")]
        lead: LeadId,
        #[serde(rename = "e")]
        expires: i64,
    },
    /// A click on link `n` of `t`'s step `s`, redirecting to `u`.
    #[serde(rename = "c")]
    Click {
        #[serde(rename = "l")]
        lead: LeadId,
        #[serde(rename = "t")]
        track: String,
        #[serde(rename = "s")]
        step: String,
        #[serde(rename = "n")]
        link: String,
        #[serde(rename = "u")]
        url: String,
        #[serde(rename = "e")]
        expires: i64,
    },
}

impl NurtureClaim {
    fn expires(&self) -> i64 {
        match self {
            NurtureClaim::Unsubscribe { expires, .. } | NurtureClaim::Click { expires, .. } => *expires,
        }
    }
}

/// Any verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyClaim {
    Sales(Claim),
    Nurture(NurtureClaim),
}

/// Signs and verifies tokens, and makes the URLs the ladder and nurture put in emails.
#[derive(Clone)]
pub struct Signer {
    key: Secret,
    base: String,
    ttl: chrono::TimeDelta,
    nurture_ttl: chrono::TimeDelta,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(key: Secret, public_url: &str, ttl: Duration) -> Self {
        Self {
            key,
            base: public_url.trim_end_matches('/').to_owned(),
            ttl: chrono::TimeDelta::from_std(ttl).unwrap_or(chrono::TimeDelta::days(14)),
            nurture_ttl: chrono::TimeDelta::days(400),
        }
    }

    /// How long nurture links (unsubscribe, tracked redirects) work.
    pub fn with_nurture_ttl(mut self, ttl: Duration) -> Self {
        self.nurture_ttl = chrono::TimeDelta::from_std(ttl).unwrap_or(chrono::TimeDelta::days(400));
        self
    }

    fn sign(&self, payload: &str) -> String {
        let encoded = URL_SAFE_NO_PAD.encode(payload.as_bytes());
        let mut mac = self.mac();
        mac.update(encoded.as_bytes());
        format!("{encoded}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// The token of a nurture link.
    pub fn nurture_token(&self, claim: &NurtureClaim) -> String {
        self.sign(&serde_json::to_string(claim).unwrap_or_default())
    }

    /// Verifies any token: an SLA action or a nurture link.
    pub fn verify_any(&self, token: &str, now: Timestamp) -> Result<AnyClaim, TokenError> {
        let payload = self.payload(token)?;
        if payload.starts_with('{') {
            let claim: NurtureClaim = serde_json::from_str(&payload).map_err(|_| TokenError::Invalid)?;
            if claim.expires() <= now.timestamp() {
                return Err(TokenError::Expired);
            }
            return Ok(AnyClaim::Nurture(claim));
        }
        self.verify(token, now).map(AnyClaim::Sales)
    }

    /// The payload of a token whose MAC is right.
    fn payload(&self, token: &str) -> Result<String, TokenError> {
        let (encoded, signature) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Invalid)?;
        let mut mac = self.mac();
        mac.update(encoded.as_bytes());
        mac.verify_slice(&signature).map_err(|_| TokenError::Invalid)?;
        String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).map_err(|_| TokenError::Invalid)?)
            .map_err(|_| TokenError::Invalid)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        HmacSha256::new_from_slice(self.key.expose().as_bytes()).unwrap_or_else(|_| unreachable_mac())
    }

    pub fn token(&self, claim: &Claim) -> String {
        let payload = format!(
            "{}.{}.{}.{}",
            claim.action.as_str(),
            claim.lead,
            claim.handoff,
            claim.expires.timestamp()
        );
        self.sign(&payload)
    }

    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Claim, TokenError> {
        let (encoded, signature) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Invalid)?;
        let mut mac = self.mac();
        mac.update(encoded.as_bytes());
        mac.verify_slice(&signature).map_err(|_| TokenError::Invalid)?;
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).map_err(|_| TokenError::Invalid)?)
            .map_err(|_| TokenError::Invalid)?;
        // Lead ids may contain dots: the action is first, handoff and expiry last.
        let (action, rest) = payload.split_once('.').ok_or(TokenError::Invalid)?;
        let (rest, expires) = rest.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let (lead, handoff) = rest.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let claim = Claim {
            action: SalesAction::parse(action).ok_or(TokenError::Invalid)?,
            lead: LeadId::new(lead),
            handoff: handoff.parse().map_err(|_| TokenError::Invalid)?,
            expires: expires
                .parse()
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .ok_or(TokenError::Invalid)?,
        };
        if claim.expires <= now {
            return Err(TokenError::Expired);
        }
        Ok(claim)
    }
}

fn unreachable_mac() -> HmacSha256 {
    // `new_from_slice` only fails for fixed-size keys, which HMAC does not have.
    HmacSha256::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| std::process::abort())
}

impl LinkMaker for Signer {
    fn link(&self, action: SalesAction, lead: &LeadId, handoff: u32, now: Timestamp) -> String {
        let claim = Claim { action, lead: lead.clone(), handoff, expires: now + self.ttl };
        format!("{}/l/{}", self.base, self.token(&claim))
    }
}

impl NurtureLinks for Signer {
    fn unsubscribe(&self, lead: &LeadId, now: Timestamp) -> String {
        let claim =
            NurtureClaim::Unsubscribe { lead: lead.clone(), expires: (now + self.nurture_ttl).timestamp() };
        format!("{}/l/{}", self.base, self.nurture_token(&claim))
    }

    fn click(
        &self,
        lead: &LeadId,
        track: &str,
        step: &str,
        link: &str,
        target: &str,
        now: Timestamp,
    ) -> String {
        let claim = NurtureClaim::Click {
            lead: lead.clone(),
            track: track.to_owned(),
            step: step.to_owned(),
            link: link.to_owned(),
            url: target.to_owned(),
            expires: (now + self.nurture_ttl).timestamp(),
        };
        format!("{}/l/{}", self.base, self.nurture_token(&claim))
    }
}

#[derive(Clone)]
struct PublicState {
    signer: Arc<Signer>,
    engine: Engine,
}

/// The public listener's routes: `/l/TOKEN` and nothing else.
pub fn router(signer: Arc<Signer>, engine: Engine) -> Router {
    Router::new().route("/l/{token}", get(confirm).post(perform)).with_state(PublicState { signer, engine })
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\"><title>{title}</title></head><body style=\"font-family:sans-serif;max-width:36em;margin:3em auto\"><h1>{title}</h1>{body}</body></html>"
    );
    (status, Html(html)).into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn refused(error: TokenError) -> Response {
    let status = match error {
        TokenError::Invalid => StatusCode::FORBIDDEN,
        TokenError::Expired => StatusCode::GONE,
    };
    page(status, &error.to_string(), "<p>Open the lead in the CRM instead.</p>")
}

async fn confirm(State(state): State<PublicState>, Path(token): Path<String>) -> Response {
    let claim = match state.signer.verify_any(&token, state.engine.clock().now()) {
        Ok(AnyClaim::Sales(claim)) => claim,
        Ok(AnyClaim::Nurture(claim)) => return nurture_get(&state, claim).await,
        Err(error) => return refused(error),
    };
    let lead = state.engine.store().lead(&claim.lead).await.ok().flatten();
    let name = lead.map(|r| r.lead.display_name()).unwrap_or_else(|| claim.lead.to_string());
    let (title, extra) = match claim.action {
        SalesAction::Accept => (format!("Accept {}?", escape(&name)), String::new()),
        SalesAction::Recycle => (format!("Recycle {} to nurture?", escape(&name)), String::new()),
        SalesAction::Disqualify => (
            format!("Disqualify {}?", escape(&name)),
            "<p><label>Reason <input name=\"reason\" maxlength=\"200\" required></label></p>".to_owned(),
        ),
    };
    let form = format!("<form method=\"post\">{extra}<button type=\"submit\">Confirm</button></form>");
    page(StatusCode::OK, &title, &form)
}

#[derive(Debug, Deserialize)]
struct Answer {
    reason: Option<String>,
}

async fn perform(
    State(state): State<PublicState>,
    Path(token): Path<String>,
    Form(answer): Form<Answer>,
) -> Response {
    let claim = match state.signer.verify_any(&token, state.engine.clock().now()) {
        Ok(AnyClaim::Sales(claim)) => claim,
        Ok(AnyClaim::Nurture(claim)) => return nurture_post(&state, claim).await,
        Err(error) => return refused(error),
    };
    let reason: Option<String> = answer
        .reason
        .map(|r| r.chars().filter(|c| !c.is_control()).take(200).collect())
        .filter(|r: &String| !r.trim().is_empty());
    match state.engine.sales_action(&claim.lead, claim.handoff, claim.action, reason.as_deref()).await {
        Ok(ActionOutcome::Done) => {
            tracing::info!(lead_id = %claim.lead, handoff = claim.handoff, action = claim.action.as_str(), "hand-off answered from an email link");
            page(
                StatusCode::OK,
                "Done",
                "<p>Thank you. The CRM is being updated and the reminders for this lead have stopped.</p>",
            )
        }
        Ok(ActionOutcome::AlreadyClosed) => page(
            StatusCode::CONFLICT,
            "Already answered",
            "<p>This hand-off is already closed (answered, reassigned or removed). Nothing was changed.</p>",
        ),
        Err(error) => {
            tracing::error!(%error, lead_id = %claim.lead, "email link action failed");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>leadloop could not record this just now. Nothing was lost; try the link again in a minute.</p>",
            )
        }
    }
}

/// A nurture link opened: an unsubscribe shows its confirmation form (a mail scanner fetching
/// it changes nothing); a click is recorded and redirected to its signed target.
async fn nurture_get(state: &PublicState, claim: NurtureClaim) -> Response {
    match claim {
        NurtureClaim::Unsubscribe { .. } => page(
            StatusCode::OK,
            "Unsubscribe?",
            "<p>You will receive no more of these emails.</p><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
        ),
        NurtureClaim::Click { lead, track, step, link, url, .. } => {
            // The redirect goes out even if recording fails: the reader wanted the page.
            if let Err(error) = state.engine.record_click(&lead, &track, &step, &link, &url).await {
                tracing::warn!(%error, lead_id = %lead, track, link, "cannot record a tracked click");
            }
            // 302 Found: the target is the signed one, so this is never an open redirect.
            match axum::http::HeaderValue::from_str(&url) {
                Ok(location) => {
                    (StatusCode::FOUND, [(axum::http::header::LOCATION, location)]).into_response()
                }
                Err(_) => {
                    page(StatusCode::BAD_REQUEST, "Broken link", "<p>This link's target is not valid.</p>")
                }
            }
        }
    }
}

/// A nurture link's POST: the one-click unsubscribe (RFC 8058) or the confirmation form's.
async fn nurture_post(state: &PublicState, claim: NurtureClaim) -> Response {
    let NurtureClaim::Unsubscribe { lead, .. } = claim else {
        return page(StatusCode::METHOD_NOT_ALLOWED, "Not here", "<p>Nothing to do.</p>");
    };
    match state.engine.unsubscribe(&lead, "one-click").await {
        Ok(_) => {
            tracing::info!(lead_id = %lead, "lead unsubscribed from nurture mail");
            page(StatusCode::OK, "Unsubscribed", "<p>You will receive no more of these emails.</p>")
        }
        Err(error) => {
            tracing::error!(%error, lead_id = %lead, "unsubscribe failed");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>This could not be recorded just now. Nothing was lost; try again in a minute.</p>",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(key: &str) -> Signer {
        Signer::new(Secret::for_tests(key), "https://leads.example.com/", Duration::from_secs(3600))
    }

    #[test]
    fn tokens_round_trip_and_refuse_tampering_expiry_and_other_keys() {
        let now: Timestamp = "2026-03-02T14:00:00Z".parse().expect("instant");
        let s = signer("0123456789abcdef0123456789abcdef");
        let url = s.link(SalesAction::Disqualify, &LeadId::new("00Q.1"), 3, now);
        let token = url.strip_prefix("https://leads.example.com/l/").expect("base url");
        let claim = s.verify(token, now).expect("valid");
        assert_eq!((claim.action, claim.lead.as_str(), claim.handoff), (SalesAction::Disqualify, "00Q.1", 3));
        assert_eq!(s.verify(token, now + chrono::TimeDelta::hours(1)), Err(TokenError::Expired));
        assert_eq!(signer("another key, also thirty-two bytes").verify(token, now), Err(TokenError::Invalid));
        let (payload, mac) = token.split_once('.').expect("two parts");
        let forged = URL_SAFE_NO_PAD.encode("accept.00Q.1.3.9999999999");
        assert_eq!(s.verify(&format!("{forged}.{mac}"), now), Err(TokenError::Invalid));
        assert_eq!(s.verify(payload, now), Err(TokenError::Invalid));
        assert_eq!(s.verify("", now), Err(TokenError::Invalid));
    }

    #[test]
    fn nurture_tokens_carry_their_target_and_refuse_tampering() {
        let now: Timestamp = "2026-03-02T14:00:00Z".parse().expect("instant");
        let s = signer("0123456789abcdef0123456789abcdef");
        let url =
            s.click(&LeadId::new("00Q.1"), "welcome", "step 1", "pricing", "https://example.com/p?a=1", now);
        let token = url.strip_prefix("https://leads.example.com/l/").expect("base url");
        let Ok(AnyClaim::Nurture(NurtureClaim::Click { lead, url, .. })) = s.verify_any(token, now) else {
            panic!("a click claim")
        };
        assert_eq!((lead.as_str(), url.as_str()), ("00Q.1", "https://example.com/p?a=1"));
        // Another target under the same MAC is refused: no open redirect.
        let (_, mac) = token.split_once('.').expect("two parts");
        let forged = URL_SAFE_NO_PAD.encode(
            r#"{"k":"c","l":"00Q.1","t":"welcome","s":"step 1","n":"pricing","u":"https://evil.example","e":9999999999}"#,
        );
        assert_eq!(s.verify_any(&format!("{forged}.{mac}"), now), Err(TokenError::Invalid));
        let unsubscribe = s.unsubscribe(&LeadId::new("00Q1"), now);
        let token = unsubscribe.strip_prefix("https://leads.example.com/l/").expect("base url");
        assert!(matches!(s.verify_any(token, now), Ok(AnyClaim::Nurture(NurtureClaim::Unsubscribe { .. }))));
        // Nurture links outlive SLA links (400 days by default).
        assert!(s.verify_any(token, now + chrono::TimeDelta::days(300)).is_ok());
        assert_eq!(s.verify_any(token, now + chrono::TimeDelta::days(401)), Err(TokenError::Expired));
        // An SLA token still verifies through the same door.
        let sla = s.link(SalesAction::Accept, &LeadId::new("00Q1"), 1, now);
        let token = sla.strip_prefix("https://leads.example.com/l/").expect("base url");
        assert!(matches!(s.verify_any(token, now), Ok(AnyClaim::Sales(_))));
    }
}
