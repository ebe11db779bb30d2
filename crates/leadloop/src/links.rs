//! Signed, expiring links — one-click Accept / Recycle / Disqualify in SLA mail, unsubscribe
//! and tracked redirects in nurture mail — and the public listener that serves them.
//!
//! A token is `KEYID.PAYLOAD.MAC`: the id of the key that signed it, the payload in
//! base64url, and an HMAC-SHA256 of both under that key ([`Signer`]: keys rotate, previous
//! ones still verify). SLA payloads are `ACTION.LEAD.HANDOFF.EXPIRES`; nurture payloads are a small
//! JSON object (`{"k":"u",…}` to unsubscribe, `{"k":"c",…}` for a click, whose target URL is
//! inside the signed payload, so the redirect is never open). An unsubscribe token carries the
//! address it was mailed to, sealed (ChaCha20-Poly1305 under a key derived from the link key),
//! so the address is suppressed even when the lead is gone yet never shows in a URL; a click
//! token carries the key of its email, whose delivery time tells a scanner from a reader.
//!
//! The listener exposes only `/l/TOKEN`: a GET shows a confirmation page with a form (mail
//! scanners that fetch links change nothing), the POST performs the action — for unsubscribe
//! links that POST is the RFC 8058 one-click, whatever its body's encoding. A click GET
//! records the click (when [`ClickRules`] let it count) and redirects; a HEAD records nothing.
//! The token is verified before any body is read; a client address or a token used too often
//! is answered without a durable write ([`LinkLimits`]). A link that cannot act gets a page
//! that still offers a way out ([`LinkPages`]): an expired unsubscribe still unsubscribes, an
//! expired click offers its page and an unsubscribe button, a link that does not verify
//! offers the opt-out address, an expired SLA link the lead in the CRM. It is meant to sit behind the
//! company's reverse proxy, apart from the admin listener.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use hmac::{Hmac, Mac};
use leadloop_core::nurture::{NurtureLinks, TrackedLink};
use leadloop_core::sla::{ActionOutcome, LinkMaker, SalesAction};
use leadloop_core::{IdempotencyKey, LeadId, Timestamp};
use leadloop_engine::{Click, ClickOutcome, ClickRules, Engine, Unsubscribed};
use leadloop_plugin::Secret;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use serde::Deserialize;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

type HmacSha256 = Hmac<Sha256>;

const ADDRESS_KEY_LABEL: &[u8] = b"leadloop unsubscribe address key v1";
const ADDRESS_NONCE_LABEL: &[u8] = b"leadloop unsubscribe address nonce v1";

/// `[links]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// Keys that signed links still in mailboxes, kept after a rotation so those links keep
    /// working (files; a bare name is read from `$CREDENTIALS_DIRECTORY`). A link names the
    /// key that signed it; new links are signed with the current key only.
    #[serde(default)]
    pub previous_signing_key_files: Vec<PathBuf>,
    /// The address the listener's error pages offer leads for opting out by email when a link
    /// cannot do it (cut short, signed by a retired key). Default: the reply address of
    /// nurture mail (`email.nurture_reply_to`, `reply_to`, `nurture_from`, `from`).
    pub opt_out_email: Option<String>,
    /// How long a link works.
    #[serde(default = "default_ttl", with = "leadloop_plugin::serde_duration")]
    pub ttl: Duration,
    /// How long unsubscribe and tracked links in nurture mail work (long: an unsubscribe link
    /// in an old email must still work).
    #[serde(default = "default_nurture_ttl", with = "leadloop_plugin::serde_duration")]
    pub nurture_ttl: Duration,
    /// One click per lead, step and link is counted per window this long; `0s` counts all.
    #[serde(default = "default_click_window", with = "leadloop_plugin::serde_duration")]
    pub click_window: Duration,
    /// Clicks sooner than this after their email was delivered are mail scanners fetching
    /// links, and are not counted; `0s` counts them.
    #[serde(default = "default_click_min_delay", with = "leadloop_plugin::serde_duration")]
    pub click_min_delay: Duration,
    /// `[links.limits]`: what the public listener allows one client, one link and everyone.
    #[serde(default)]
    pub limits: LinkLimits,
}

fn default_click_window() -> Duration {
    ClickRules::default().window
}

fn default_click_min_delay() -> Duration {
    ClickRules::default().min_delay
}

/// `[links.limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkLimits {
    /// A client must send its request headers within this (idle connections close after it).
    #[serde(with = "leadloop_plugin::serde_duration")]
    pub header_read_timeout: Duration,
    /// The whole request, body and answer included (else 408).
    #[serde(with = "leadloop_plugin::serde_duration")]
    pub request_timeout: Duration,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Requests handled at once; more wait their turn.
    pub max_in_flight: usize,
    /// The largest request body, in bytes (else 413, unread).
    pub max_body_bytes: usize,
    /// Requests per minute from one client address (an IPv6 client by its /64), in bursts of
    /// as many; more get 429.
    pub per_ip_per_minute: u32,
    /// Uses of one link that are acted on per `per_token_window`; past that a click still
    /// redirects but is not recorded, and an answer or unsubscribe gets 429.
    pub per_token: u32,
    #[serde(with = "leadloop_plugin::serde_duration")]
    pub per_token_window: Duration,
    /// Reverse proxies whose `X-Forwarded-For` names the client (by default loopback: a proxy
    /// on the same host).
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for LinkLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
            max_in_flight: 64,
            max_body_bytes: 8 * 1024,
            per_ip_per_minute: 120,
            per_token: 5,
            per_token_window: Duration::from_secs(600),
            trusted_proxies: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)],
        }
    }
}

impl LinkLimits {
    /// The connection-level part, for [`crate::serve::serve`].
    pub fn serve(&self) -> crate::serve::Limits {
        crate::serve::Limits {
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            max_in_flight: self.max_in_flight,
            max_body: self.max_body_bytes,
        }
    }
}

/// How the public listener treats requests: its limits, which clicks count, and what its
/// error pages offer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkRules {
    pub limits: LinkLimits,
    pub clicks: ClickRules,
    pub pages: LinkPages,
}

/// What the listener's error pages point people to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkPages {
    /// The bare address leads can write to to opt out (`mailto:`), when a link cannot do it.
    pub opt_out: Option<String>,
    /// The CRM's page of a lead, `{id}` standing for the lead id (`sla.crm_url`).
    pub crm_url: Option<String>,
}

impl LinkPages {
    /// From `links.opt_out_email`, else the first of `candidates` (the nurture mail's reply
    /// addresses, in order), as a bare address; and `sla.crm_url`.
    pub fn new<'a>(opt_out: impl IntoIterator<Item = Option<&'a str>>, crm_url: Option<&str>) -> Self {
        Self {
            opt_out: opt_out.into_iter().flatten().find_map(bare_address),
            crm_url: crm_url.map(str::to_owned),
        }
    }
}

/// `a@b` from `Name <a@b>` or `a@b`; `None` unless it looks like an address that is safe in
/// a `mailto:` URL and an HTML attribute.
fn bare_address(mailbox: &str) -> Option<String> {
    let text = match (mailbox.rfind('<'), mailbox.rfind('>')) {
        (Some(open), Some(close)) if open < close => &mailbox[open + 1..close],
        _ => mailbox,
    };
    let address = text.trim();
    let (local, domain) = address.split_once('@')?;
    let safe = |c: char| c.is_ascii_alphanumeric() || "._+-".contains(c);
    (!local.is_empty() && domain.contains('.') && address.chars().all(|c| safe(c) || c == '@'))
        .then(|| address.to_owned())
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
    /// The signer these settings describe: the current key, the previous ones, the URL and
    /// the lifetimes.
    pub fn signer(&self) -> Result<Signer, leadloop_plugin::BuildError> {
        Ok(Signer::new(self.key()?, &self.public_url, self.ttl)
            .with_nurture_ttl(self.nurture_ttl)
            .with_previous_keys(self.previous_keys()?))
    }

    /// The keys of `previous_signing_key_files`, in order.
    pub fn previous_keys(&self) -> Result<Vec<Secret>, leadloop_plugin::BuildError> {
        self.previous_signing_key_files
            .iter()
            .enumerate()
            .map(|(i, file)| {
                let key = format!("links.previous_signing_key_files[{i}]");
                let secret = leadloop_plugin::SecretSource::File(file.clone())
                    .resolve()
                    .map_err(|e| leadloop_plugin::BuildError::new(key.clone(), e.to_string()))?;
                if secret.expose().len() < MIN_KEY_BYTES {
                    return Err(leadloop_plugin::BuildError::new(
                        key,
                        format!("the key must be at least {MIN_KEY_BYTES} bytes"),
                    ));
                }
                Ok(secret)
            })
            .collect()
    }

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

    /// The listener's limits and click rules, as configured.
    pub fn rules(&self) -> LinkRules {
        LinkRules {
            limits: self.limits.clone(),
            clicks: ClickRules { window: self.click_window, min_delay: self.click_min_delay },
            pages: LinkPages::new([self.opt_out_email.as_deref()], None),
        }
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub action: SalesAction,
    pub lead: LeadId,
    pub handoff: u32,
    pub expires: Timestamp,
    /// The address the link was mailed to (sealed in the token); links made before links
    /// were bound to their recipient have none, and are refused.
    pub recipient: Option<String>,
}

/// An SLA token's payload since links are bound to their recipient: `{"k":"s",…}`, the
/// recipient's address sealed as an unsubscribe token's is.
#[derive(Debug, serde::Serialize, Deserialize)]
struct SalesPayload {
    k: String,
    a: String,
    l: LeadId,
    h: u32,
    r: String,
    e: i64,
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
        /// The address the link was mailed to, sealed ([`Signer::seal_address`]); links sent
        /// before addresses were bound have none.
        #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
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
        /// The key of the email that carried the link (older links have none).
        #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
        message: Option<IdempotencyKey>,
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

impl AnyClaim {
    fn expires(&self) -> i64 {
        match self {
            AnyClaim::Sales(claim) => claim.expires.timestamp(),
            AnyClaim::Nurture(claim) => claim.expires(),
        }
    }
}

/// A token whose MAC is right, expired or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub claim: AnyClaim,
    pub expired: bool,
}

/// One link key and its id (see [`Signer`]).
#[derive(Clone)]
struct LinkKey {
    id: String,
    secret: Secret,
}

/// The label a key's id is an HMAC of. It holds spaces, which base64url never does, so no
/// token's MAC can equal it.
const KEY_ID_LABEL: &[u8] = b"leadloop link key id v1";

impl LinkKey {
    fn new(secret: Secret) -> Self {
        let mut mac = mac_under(&secret);
        mac.update(KEY_ID_LABEL);
        let id = URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..6]);
        Self { id, secret }
    }
}

fn mac_under(key: &Secret) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    HmacSha256::new_from_slice(key.expose().as_bytes()).unwrap_or_else(|_| unreachable_mac())
}

/// Signs and verifies tokens, and makes the URLs the ladder and nurture put in emails.
///
/// A token is `KEYID.PAYLOAD.MAC`: the id of the key that signed it (8 base64url characters,
/// an HMAC of a label under the key, so it names the key without revealing it), the payload
/// in base64url, and an HMAC-SHA256 of `KEYID.PAYLOAD` under that key. New tokens are signed
/// with the current key; a token verifies with the key its id names, the current one or a
/// previous one still configured, so links outlive a key rotation. Tokens made before keys
/// had ids (`PAYLOAD.MAC`) verify with any configured key: they were signed with the one key
/// there was, current until the first rotation and previous after it.
#[derive(Clone)]
pub struct Signer {
    /// The current key first, then the previous ones.
    keys: Vec<LinkKey>,
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
            keys: vec![LinkKey::new(key)],
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

    /// Keys that no longer sign but still verify the links they signed.
    pub fn with_previous_keys(mut self, keys: impl IntoIterator<Item = Secret>) -> Self {
        for key in keys {
            let key = LinkKey::new(key);
            if !self.keys.iter().any(|k| k.id == key.id) {
                self.keys.push(key);
            }
        }
        self
    }

    /// The id of the key new tokens are signed with.
    pub fn key_id(&self) -> &str {
        &self.keys[0].id
    }

    fn current(&self) -> &LinkKey {
        &self.keys[0]
    }

    fn sign(&self, payload: &str) -> String {
        let key = self.current();
        let signed = format!("{}.{}", key.id, URL_SAFE_NO_PAD.encode(payload.as_bytes()));
        let mut mac = mac_under(&key.secret);
        mac.update(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// The token of a nurture link.
    pub fn nurture_token(&self, claim: &NurtureClaim) -> String {
        self.sign(&serde_json::to_string(claim).unwrap_or_default())
    }

    /// Verifies any token, an SLA action or a nurture link, expired or not (the listener
    /// honours an expired unsubscribe).
    pub fn open_any(&self, token: &str, now: Timestamp) -> Result<Opened, TokenError> {
        let payload = self.payload(token)?;
        let claim = if payload.starts_with('{') {
            match serde_json::from_str::<NurtureClaim>(&payload) {
                Ok(claim) => AnyClaim::Nurture(claim),
                Err(_) => AnyClaim::Sales(self.parse_bound(&payload)?),
            }
        } else {
            AnyClaim::Sales(parse_sales(&payload)?)
        };
        let expired = claim.expires() <= now.timestamp();
        Ok(Opened { claim, expired })
    }

    /// Verifies any token: an SLA action or a nurture link.
    pub fn verify_any(&self, token: &str, now: Timestamp) -> Result<AnyClaim, TokenError> {
        match self.open_any(token, now)? {
            Opened { expired: true, .. } => Err(TokenError::Expired),
            Opened { claim, .. } => Ok(claim),
        }
    }

    /// The payload of a token whose MAC is right under the key it names (or, for a token
    /// without a key id, under any configured key).
    fn payload(&self, token: &str) -> Result<String, TokenError> {
        let parts: Vec<&str> = token.split('.').collect();
        let (encoded, verified) = match parts[..] {
            [id, encoded, signature] => {
                let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Invalid)?;
                let key = self.keys.iter().find(|k| k.id == id).ok_or(TokenError::Invalid)?;
                let mut mac = mac_under(&key.secret);
                mac.update(&token.as_bytes()[..id.len() + 1 + encoded.len()]);
                (encoded, mac.verify_slice(&signature).is_ok())
            }
            [encoded, signature] => {
                let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Invalid)?;
                let verified = self.keys.iter().any(|key| {
                    let mut mac = mac_under(&key.secret);
                    mac.update(encoded.as_bytes());
                    mac.verify_slice(&signature).is_ok()
                });
                (encoded, verified)
            }
            _ => return Err(TokenError::Invalid),
        };
        if !verified {
            return Err(TokenError::Invalid);
        }
        String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).map_err(|_| TokenError::Invalid)?)
            .map_err(|_| TokenError::Invalid)
    }

    /// `address`, lowercased and sealed for `lead`'s token: ChaCha20-Poly1305 under a key
    /// derived from the current link key, with the lead as associated data and a nonce
    /// derived from lead, address and expiry (the same link is the same token; different ones
    /// never share a nonce). `None` for a blank address.
    pub fn seal_address(&self, lead: &LeadId, address: &str, expires: i64) -> Option<String> {
        let address = address.trim().to_lowercase();
        if address.is_empty() {
            return None;
        }
        let key = &self.current().secret;
        let mut mac = mac_under(key);
        mac.update(ADDRESS_NONCE_LABEL);
        for part in [lead.as_str().as_bytes(), address.as_bytes(), &expires.to_be_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        let nonce: [u8; 12] = mac.finalize().into_bytes()[..12].try_into().ok()?;
        let mut sealed = address.into_bytes();
        address_key(key)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(lead.as_str().as_bytes()),
                &mut sealed,
            )
            .ok()?;
        let mut bytes = nonce.to_vec();
        bytes.extend(sealed);
        Some(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The address [`seal_address`](Self::seal_address) sealed for `lead`, under whichever
    /// configured key sealed it (only that one opens it).
    pub fn open_address(&self, lead: &LeadId, sealed: &str) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        let (nonce, sealed) = bytes.split_at_checked(12)?;
        self.keys.iter().find_map(|key| {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut sealed = sealed.to_vec();
            let address = address_key(&key.secret)?
                .open_in_place(nonce, Aad::from(lead.as_str().as_bytes()), &mut sealed)
                .ok()?;
            String::from_utf8(address.to_vec()).ok()
        })
    }

    /// The token of an SLA link: bound to `claim.recipient` when it names one, else in the
    /// older form without a recipient (which the listener refuses).
    pub fn token(&self, claim: &Claim) -> String {
        let expires = claim.expires.timestamp();
        let sealed = claim.recipient.as_deref().and_then(|r| self.seal_address(&claim.lead, r, expires));
        let payload = match sealed {
            Some(r) => serde_json::to_string(&SalesPayload {
                k: "s".into(),
                a: claim.action.as_str().into(),
                l: claim.lead.clone(),
                h: claim.handoff,
                r,
                e: expires,
            })
            .unwrap_or_default(),
            None => format!("{}.{}.{}.{}", claim.action.as_str(), claim.lead, claim.handoff, expires),
        };
        self.sign(&payload)
    }

    /// A bound SLA payload, its recipient opened.
    fn parse_bound(&self, payload: &str) -> Result<Claim, TokenError> {
        let bound: SalesPayload = serde_json::from_str(payload).map_err(|_| TokenError::Invalid)?;
        if bound.k != "s" {
            return Err(TokenError::Invalid);
        }
        Ok(Claim {
            action: SalesAction::parse(&bound.a).ok_or(TokenError::Invalid)?,
            recipient: Some(self.open_address(&bound.l, &bound.r).ok_or(TokenError::Invalid)?),
            lead: bound.l,
            handoff: bound.h,
            expires: chrono::DateTime::from_timestamp(bound.e, 0).ok_or(TokenError::Invalid)?,
        })
    }

    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Claim, TokenError> {
        match self.verify_any(token, now)? {
            AnyClaim::Sales(claim) => Ok(claim),
            AnyClaim::Nurture(_) => Err(TokenError::Invalid),
        }
    }
}

/// An SLA payload: `ACTION.LEAD.HANDOFF.EXPIRES`.
fn parse_sales(payload: &str) -> Result<Claim, TokenError> {
    // Lead ids may contain dots: the action is first, handoff and expiry last.
    let (action, rest) = payload.split_once('.').ok_or(TokenError::Invalid)?;
    let (rest, expires) = rest.rsplit_once('.').ok_or(TokenError::Invalid)?;
    let (lead, handoff) = rest.rsplit_once('.').ok_or(TokenError::Invalid)?;
    Ok(Claim {
        action: SalesAction::parse(action).ok_or(TokenError::Invalid)?,
        lead: LeadId::new(lead),
        handoff: handoff.parse().map_err(|_| TokenError::Invalid)?,
        expires: expires
            .parse()
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
            .ok_or(TokenError::Invalid)?,
        recipient: None,
    })
}

/// The sealing key of addresses: an HMAC of a label under the link key. The labels hold
/// spaces, which base64url never does, so no token's MAC can equal them.
fn address_key(key: &Secret) -> Option<LessSafeKey> {
    let mut mac = mac_under(key);
    mac.update(ADDRESS_KEY_LABEL);
    UnboundKey::new(&CHACHA20_POLY1305, &mac.finalize().into_bytes()).ok().map(LessSafeKey::new)
}

fn unreachable_mac() -> HmacSha256 {
    // `new_from_slice` only fails for fixed-size keys, which HMAC does not have.
    HmacSha256::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| std::process::abort())
}

impl LinkMaker for Signer {
    fn link(
        &self,
        action: SalesAction,
        lead: &LeadId,
        handoff: u32,
        recipient: &str,
        now: Timestamp,
    ) -> String {
        let claim = Claim {
            action,
            lead: lead.clone(),
            handoff,
            expires: now + self.ttl,
            recipient: Some(recipient.to_owned()),
        };
        format!("{}/l/{}", self.base, self.token(&claim))
    }
}

impl NurtureLinks for Signer {
    fn unsubscribe(&self, lead: &LeadId, address: &str, now: Timestamp) -> String {
        let expires = (now + self.nurture_ttl).timestamp();
        let claim = NurtureClaim::Unsubscribe {
            lead: lead.clone(),
            address: self.seal_address(lead, address, expires),
            expires,
        };
        format!("{}/l/{}", self.base, self.nurture_token(&claim))
    }

    fn click(&self, link: &TrackedLink<'_>, now: Timestamp) -> String {
        let claim = NurtureClaim::Click {
            lead: link.lead.clone(),
            track: link.track.to_owned(),
            step: link.step.to_owned(),
            link: link.link.to_owned(),
            url: link.target.to_owned(),
            message: link.message.cloned(),
            expires: (now + self.nurture_ttl).timestamp(),
        };
        format!("{}/l/{}", self.base, self.nurture_token(&claim))
    }
}

/// The per-client and per-link rate limits, in memory (a restart forgets them; the engine's
/// click rules, which are durable, still hold).
struct Guard {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_token: DefaultKeyedRateLimiter<String>,
    trusted_proxies: Vec<IpAddr>,
    max_body: usize,
    /// Checks since the limiters last forgot idle keys.
    checks: AtomicU64,
}

/// Every this many checks the limiters forget keys that are back to a full allowance, so
/// their memory follows the recent traffic, not all traffic ever.
const FORGET_EVERY: u64 = 4096;

impl Guard {
    fn new(limits: &LinkLimits) -> Self {
        let per_minute = NonZeroU32::new(limits.per_ip_per_minute).unwrap_or(NonZeroU32::MIN);
        let per_token = NonZeroU32::new(limits.per_token).unwrap_or(NonZeroU32::MIN);
        let token_period = (limits.per_token_window / per_token.get()).max(Duration::from_millis(1));
        let token_quota = Quota::with_period(token_period)
            .unwrap_or_else(|| Quota::per_minute(per_token))
            .allow_burst(per_token);
        Self {
            per_ip: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            per_token: DefaultKeyedRateLimiter::keyed(token_quota),
            trusted_proxies: limits.trusted_proxies.clone(),
            max_body: limits.max_body_bytes,
            checks: AtomicU64::new(0),
        }
    }

    fn tidy(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.per_ip.retain_recent();
            self.per_token.retain_recent();
        }
    }

    /// `Err(wait)` when the client has used up its allowance.
    fn admit_client(&self, client: IpAddr) -> Result<(), Duration> {
        self.tidy();
        self.per_ip
            .check_key(&client_key(client))
            .map_err(|n| n.wait_time_from(DefaultClock::default().now()))
    }

    /// `Err(wait)` when this link was acted on too often lately. Keyed by the token's MAC:
    /// only verified tokens get here, so only links really sent take memory.
    fn admit_token(&self, token: &str) -> Result<(), Duration> {
        self.tidy();
        let mac = token.rsplit_once('.').map_or(token, |(_, mac)| mac).to_owned();
        self.per_token.check_key(&mac).map_err(|n| n.wait_time_from(DefaultClock::default().now()))
    }
}

/// Clients are limited by address; an IPv6 client by its /64, which one host usually holds
/// whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

/// The client's address: the peer's, or — when the peer is a trusted proxy — the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.contains(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[derive(Clone)]
struct PublicState {
    signer: Arc<Signer>,
    engine: Engine,
    clicks: ClickRules,
    guard: Arc<Guard>,
    pages: Arc<LinkPages>,
    /// Verifies and answers Slack's button clicks (`/slack/interactivity`), when configured.
    slack: Option<Arc<leadloop_slack::Slack>>,
}

/// The public listener's routes: `/l/TOKEN`, and `/slack/interactivity` when Slack is
/// configured, behind the per-client limit.
pub fn router(
    signer: Arc<Signer>,
    slack: Option<Arc<leadloop_slack::Slack>>,
    engine: Engine,
    rules: &LinkRules,
) -> Router {
    let with_slack = slack.is_some();
    let state = PublicState {
        signer,
        engine,
        clicks: rules.clicks,
        guard: Arc::new(Guard::new(&rules.limits)),
        pages: Arc::new(rules.pages.clone()),
        slack,
    };
    let mut router = Router::new().route("/l/{token}", get(confirm).post(perform));
    if with_slack {
        router = router.route("/slack/interactivity", axum::routing::post(slack_interaction));
    }
    router.layer(axum::middleware::from_fn_with_state(state.clone(), per_client)).with_state(state)
}

/// Serves the public listener on `listener` until `stop`, within `rules.limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    signer: Arc<Signer>,
    slack: Option<Arc<leadloop_slack::Slack>>,
    engine: Engine,
    rules: LinkRules,
    stop: CancellationToken,
) -> std::io::Result<()> {
    crate::serve::serve(listener, router(signer, slack, engine, &rules), rules.limits.serve(), stop).await
}

/// Refuses a client past its allowance with 429, before anything else is looked at.
async fn per_client(State(state): State<PublicState>, request: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        let client = client_ip(peer.ip(), request.headers(), &state.guard.trusted_proxies);
        if let Err(wait) = state.guard.admit_client(client) {
            metrics::counter!("leadloop_links_throttled_total", "by" => "client").increment(1);
            tracing::debug!(%client, "public listener: client over its request rate");
            return too_many(wait);
        }
    }
    next.run(request).await
}

fn too_many(wait: Duration) -> Response {
    let mut response = page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        "<p>Please wait a moment and try again.</p>",
    );
    let seconds = wait.as_secs().max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
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

/// How a lead can opt out by email when no link can do it.
fn opt_out_by_mail(pages: &LinkPages) -> String {
    match &pages.opt_out {
        Some(address) => format!(
            "<p>To stop receiving our emails, write to <a href=\"mailto:{address}?subject=Unsubscribe\">{address}</a> from the address you receive them at, with “Unsubscribe” as the subject.</p>"
        ),
        None => {
            "<p>To stop receiving our emails, reply to one of them with “Unsubscribe” as the subject.</p>"
                .to_owned()
        }
    }
}

/// A token that does not verify: cut short, tampered with, or signed by a key no longer
/// configured. Whose it was is unknown, so the page speaks to a lead and to a rep.
fn invalid(pages: &LinkPages) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "This link does not work",
        &format!(
            "<p>It may have been cut short by your mail program, or come from an old email.</p>{}<p>If you are on the sales team: answer in the CRM, or use the links in the latest email about the lead.</p>",
            opt_out_by_mail(pages)
        ),
    )
}

/// An SLA link past its expiry: the rep answers in the CRM.
fn expired_sales(pages: &LinkPages, lead: &LeadId) -> Response {
    let crm = pages.crm_url.as_deref().map(|url| url.replace("{id}", lead.as_str()));
    let body = match crm.filter(|url| url.starts_with("https://") || url.starts_with("http://")) {
        Some(url) => format!("<p>Answer in the CRM: <a href=\"{}\">open the lead</a>.</p>", escape(&url)),
        None => "<p>Answer in the CRM, or use the links in the latest email about this lead.</p>".to_owned(),
    };
    page(StatusCode::GONE, "This link has expired", &body)
}

/// An SLA link made before links named their recipient: it could be anyone's, so it acts on
/// nothing; the rep answers from a newer email or in the CRM.
fn unbound(pages: &LinkPages, lead: &LeadId) -> Response {
    let crm = pages.crm_url.as_deref().map(|url| url.replace("{id}", lead.as_str()));
    let crm = match crm.filter(|url| url.starts_with("https://") || url.starts_with("http://")) {
        Some(url) => format!("<p>Answer in the CRM: <a href=\"{}\">open the lead</a>.</p>", escape(&url)),
        None => "<p>Answer in the CRM instead.</p>".to_owned(),
    };
    page(
        StatusCode::GONE,
        "This link is from an older email",
        &format!(
            "<p>Links in leadloop's emails now name the person they were sent to, and this one does not, so it cannot record who answered. Use the links in the latest email about this lead (reminders come with new ones).</p>{crm}"
        ),
    )
}

/// A tracked link past its expiry: the page it led to, and the lead's way out.
fn expired_click(pages: &LinkPages, url: &str) -> Response {
    let target = if url.starts_with("https://") || url.starts_with("http://") {
        format!("<p>The page it led to: <a href=\"{0}\">{0}</a></p>", escape(url))
    } else {
        String::new()
    };
    page(
        StatusCode::GONE,
        "This link has expired",
        &format!(
            "{target}<p>To stop receiving these emails:</p><form method=\"post\"><button type=\"submit\">Unsubscribe</button></form>{}",
            opt_out_by_mail(pages).replacen("To stop receiving our emails, ", "Or ", 1)
        ),
    )
}

/// GET (and HEAD, which axum answers from the GET handler without a body).
async fn confirm(State(state): State<PublicState>, method: Method, Path(token): Path<String>) -> Response {
    let claim = match state.signer.open_any(&token, state.engine.clock().now()) {
        Ok(Opened { claim: AnyClaim::Nurture(claim), expired }) => {
            return nurture_get(&state, &method, &token, claim, expired).await;
        }
        Ok(Opened { claim: AnyClaim::Sales(claim), expired: true }) => {
            return expired_sales(&state.pages, &claim.lead);
        }
        Ok(Opened { claim: AnyClaim::Sales(claim), expired: false }) => claim,
        Err(_) => return invalid(&state.pages),
    };
    if claim.recipient.is_none() {
        return unbound(&state.pages, &claim.lead);
    }
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

/// The request body, read only now that the token is known good, and at most `max` bytes.
async fn read_body(body: Body, max: usize) -> Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, max).await.map_err(|_| {
        page(StatusCode::PAYLOAD_TOO_LARGE, "Too large", "<p>This request is larger than a link's form.</p>")
    })
}

/// The `reason` of the Disqualify form (the only form that asks for one), from a URL-encoded
/// body; any other body gives none.
fn reason(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let urlencoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if !urlencoded {
        return None;
    }
    form_urlencoded::parse(body)
        .find(|(name, _)| name == "reason")
        .map(|(_, value)| value.chars().filter(|c| !c.is_control()).take(200).collect::<String>())
        .filter(|r| !r.trim().is_empty())
}

/// POST: perform the action. The token is checked first, then the link's allowance, and only
/// then is the body (capped) read.
async fn perform(
    State(state): State<PublicState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // An expired SLA link acts on nothing; an expired nurture link still opts its lead out
    // (its MAC proves it was mailed to that lead, and an opt-out must always work).
    let claim = match state.signer.open_any(&token, state.engine.clock().now()) {
        Ok(Opened { claim: AnyClaim::Sales(claim), expired: true }) => {
            return expired_sales(&state.pages, &claim.lead);
        }
        Ok(Opened { claim, .. }) => claim,
        Err(_) => return invalid(&state.pages),
    };
    if let Err(wait) = state.guard.admit_token(&token) {
        metrics::counter!("leadloop_links_throttled_total", "by" => "link").increment(1);
        return too_many(wait);
    }
    let body = match read_body(body, state.guard.max_body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let claim = match claim {
        AnyClaim::Sales(claim) => claim,
        AnyClaim::Nurture(claim) => return nurture_post(&state, claim).await,
    };
    let Some(by) = claim.recipient.as_deref() else {
        return unbound(&state.pages, &claim.lead);
    };
    let reason = if claim.action == SalesAction::Disqualify { reason(&headers, &body) } else { None };
    match state.engine.sales_action(&claim.lead, claim.handoff, claim.action, reason.as_deref(), by).await {
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
            try_again()
        }
    }
}

/// A Slack button click (an interactivity request). Its signature is checked first (401 and
/// nothing changed when it is missing, forged or older than five minutes), then the button's
/// value, which is the recipient's signed one-click token; the answer is the email link's,
/// recorded as the Slack user who clicked (the person with that Slack user's email), and the
/// message is updated to show it. Slack wants an answer within 3 s: the update is sent after.
async fn slack_interaction(State(state): State<PublicState>, headers: HeaderMap, body: Body) -> Response {
    let Some(slack) = state.slack.clone() else { return StatusCode::NOT_FOUND.into_response() };
    let body = match read_body(body, state.guard.max_body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let now = state.engine.clock().now();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(error) = leadloop_slack::verify_signature(
        slack.signing_secret(),
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        now.timestamp(),
    ) {
        metrics::counter!("leadloop_slack_interactions_refused_total").increment(1);
        tracing::warn!(%error, "slack interactivity request refused");
        return (StatusCode::UNAUTHORIZED, "invalid request signature").into_response();
    }
    let Some(click) = leadloop_slack::Interaction::parse(&body) else {
        // Another kind of interaction, or a URL button: nothing to do.
        return StatusCode::OK.into_response();
    };
    let answer = |text: &str| {
        axum::Json(
            serde_json::json!({ "response_type": "ephemeral", "replace_original": false, "text": text }),
        )
        .into_response()
    };
    let claim = match state.signer.open_any(&click.value, now) {
        Ok(Opened { claim: AnyClaim::Sales(claim), expired: false }) => claim,
        Ok(Opened { expired: true, .. }) => {
            return answer("This answer has expired; please answer in the CRM.");
        }
        _ => {
            tracing::warn!(action = %click.action, "slack button with a value that is not a valid link token");
            return answer("This button cannot act; please answer in the CRM.");
        }
    };
    if claim.action.as_str() != click.action {
        tracing::warn!(action = %click.action, "slack button whose token is for another answer");
        return answer("This button cannot act; please answer in the CRM.");
    }
    let Some(recipient) = claim.recipient.clone() else {
        return answer("This button cannot act; please answer in the CRM.");
    };
    if let Err(wait) = state.guard.admit_token(&click.value) {
        metrics::counter!("leadloop_links_throttled_total", "by" => "link").increment(1);
        return too_many(wait);
    }
    // Who clicked: the Slack user's email, which names the person; the token's recipient
    // when Slack cannot tell it.
    let by = match slack.email_of(&click.user).await {
        Ok(email) => email,
        Err(error) => {
            tracing::warn!(%error, user = %click.user, "cannot map the slack user to an email; recording the message's recipient");
            recipient
        }
    };
    match state.engine.sales_action(&claim.lead, claim.handoff, claim.action, None, &by).await {
        Ok(outcome) => {
            let done = outcome == ActionOutcome::Done;
            if done {
                tracing::info!(lead_id = %claim.lead, handoff = claim.handoff, action = claim.action.as_str(), user = %click.user, "hand-off answered from slack");
            }
            let shown = match (done, claim.action) {
                (false, _) => "Already answered".to_owned(),
                (true, SalesAction::Accept) => "Accepted".to_owned(),
                (true, SalesAction::Recycle) => "Recycled to nurture".to_owned(),
                (true, SalesAction::Disqualify) => "Disqualified".to_owned(),
            };
            if let (Some(channel), Some(ts)) = (click.channel.clone(), click.ts.clone()) {
                let who = if done { by.clone() } else { "an earlier answer".to_owned() };
                tokio::spawn(async move {
                    if let Err(error) = slack.show_answer(&channel, &ts, &shown, &who).await {
                        tracing::warn!(%error, "cannot update the slack message with the answer");
                    }
                });
            }
            StatusCode::OK.into_response()
        }
        Err(error) => {
            tracing::error!(%error, lead_id = %claim.lead, "slack answer failed");
            answer("This could not be recorded just now. Nothing was lost; try again in a minute.")
        }
    }
}

fn try_again() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        "<p>This could not be recorded just now. Nothing was lost; try again in a minute.</p>",
    )
}

/// A nurture link opened: an unsubscribe shows its confirmation form (a mail scanner fetching
/// it changes nothing); a click is recorded when it counts, and redirected to its signed
/// target in any case. A HEAD, or a link used past its allowance, records nothing.
async fn nurture_get(
    state: &PublicState,
    method: &Method,
    token: &str,
    claim: NurtureClaim,
    expired: bool,
) -> Response {
    match claim {
        NurtureClaim::Unsubscribe { .. } => page(
            StatusCode::OK,
            "Unsubscribe?",
            "<p>You will receive no more of these emails.</p><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
        ),
        NurtureClaim::Click { url, .. } if expired => expired_click(&state.pages, &url),
        NurtureClaim::Click { lead, track, step, link, url, message, .. } => {
            let ignored = if method == Method::HEAD {
                Some("head")
            } else if state.guard.admit_token(token).is_err() {
                metrics::counter!("leadloop_links_throttled_total", "by" => "link").increment(1);
                Some("replayed")
            } else {
                None
            };
            match ignored {
                Some(reason) => {
                    metrics::counter!("leadloop_nurture_clicks_ignored_total", "reason" => reason)
                        .increment(1);
                }
                None => {
                    let click = Click {
                        lead: &lead,
                        track: &track,
                        step: &step,
                        link: &link,
                        url: &url,
                        message: message.as_ref(),
                    };
                    // The redirect goes out even if recording fails: the reader wanted the page.
                    match state.engine.record_click(&click, &state.clicks).await {
                        Ok(ClickOutcome::Counted) => {}
                        Ok(outcome) => {
                            tracing::debug!(lead_id = %lead, track, link, outcome = outcome.as_str(), "tracked click not counted")
                        }
                        Err(error) => {
                            tracing::warn!(%error, lead_id = %lead, track, link, "cannot record a tracked click")
                        }
                    }
                }
            }
            // 302 Found: the target is the signed one, so this is never an open redirect.
            match HeaderValue::from_str(&url) {
                Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
                Err(_) => {
                    page(StatusCode::BAD_REQUEST, "Broken link", "<p>This link's target is not valid.</p>")
                }
            }
        }
    }
}

/// A nurture link's POST: the one-click unsubscribe (RFC 8058, whatever the body) or the
/// confirmation form's, expired or not; or the unsubscribe form of an expired tracked link's
/// page, which opts out the lead the link was mailed to.
async fn nurture_post(state: &PublicState, claim: NurtureClaim) -> Response {
    let (lead, address, via) = match claim {
        NurtureClaim::Unsubscribe { lead, address, .. } => (lead, address, "one-click"),
        NurtureClaim::Click { lead, .. } => (lead, None, "expired link page"),
    };
    let address = match address.map(|sealed| state.signer.open_address(&lead, &sealed)) {
        None => None,
        Some(Some(address)) => Some(address),
        // A token whose MAC is right opens under the key that signed it; this one does not.
        Some(None) => return invalid(&state.pages),
    };
    match state.engine.unsubscribe(&lead, address.as_deref(), via).await {
        Ok(Unsubscribed::Done) => {
            tracing::info!(lead_id = %lead, "unsubscribed from nurture mail");
            unsubscribed()
        }
        Ok(Unsubscribed::Already) => unsubscribed(),
        Ok(Unsubscribed::Unknown) => {
            tracing::warn!(lead_id = %lead, "unsubscribe for a lead no longer stored, from a link without its address");
            page(
                StatusCode::OK,
                "Unsubscribed",
                "<p>The subscription this link belonged to no longer exists: none of these emails will be sent to it.</p>",
            )
        }
        Err(error) => {
            tracing::error!(%error, lead_id = %lead, "unsubscribe failed");
            try_again()
        }
    }
}

fn unsubscribed() -> Response {
    page(StatusCode::OK, "Unsubscribed", "<p>You will receive no more of these emails.</p>")
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
        let url = s.link(SalesAction::Disqualify, &LeadId::new("00Q.1"), 3, "Rep@X.example", now);
        let token = url.strip_prefix("https://leads.example.com/l/").expect("base url");
        let claim = s.verify(token, now).expect("valid");
        assert_eq!((claim.action, claim.lead.as_str(), claim.handoff), (SalesAction::Disqualify, "00Q.1", 3));
        assert_eq!(claim.recipient.as_deref(), Some("rep@x.example"), "bound to its recipient, sealed");
        assert!(!base64_payload(token).contains("x.example"));
        assert_eq!(s.verify(token, now + chrono::TimeDelta::hours(1)), Err(TokenError::Expired));
        assert_eq!(signer("another key, also thirty-two bytes").verify(token, now), Err(TokenError::Invalid));
        let (signed, mac) = token.rsplit_once('.').expect("key id, payload, MAC");
        let (id, payload) = signed.split_once('.').expect("key id, payload");
        assert_eq!(id, s.key_id());
        let forged = URL_SAFE_NO_PAD.encode("accept.00Q.1.3.9999999999");
        assert_eq!(s.verify(&format!("{id}.{forged}.{mac}"), now), Err(TokenError::Invalid));
        assert_eq!(s.verify(&format!("{payload}.{mac}"), now), Err(TokenError::Invalid));
        assert_eq!(s.verify(payload, now), Err(TokenError::Invalid));
        assert_eq!(s.verify("", now), Err(TokenError::Invalid));
    }

    #[test]
    fn nurture_tokens_carry_their_target_and_refuse_tampering() {
        let now: Timestamp = "2026-03-02T14:00:00Z".parse().expect("instant");
        let s = signer("0123456789abcdef0123456789abcdef");
        let lead = LeadId::new("00Q.1");
        let link = TrackedLink {
            message: None,
            lead: &lead,
            track: "welcome",
            step: "step 1",
            link: "pricing",
            target: "https://example.com/p?a=1",
        };
        let url = s.click(&link, now);
        let token = url.strip_prefix("https://leads.example.com/l/").expect("base url");
        let Ok(AnyClaim::Nurture(NurtureClaim::Click { lead, url, .. })) = s.verify_any(token, now) else {
            panic!("a click claim")
        };
        assert_eq!((lead.as_str(), url.as_str()), ("00Q.1", "https://example.com/p?a=1"));
        // Another target under the same MAC is refused: no open redirect.
        let (_, mac) = token.rsplit_once('.').expect("three parts");
        let forged = URL_SAFE_NO_PAD.encode(
            r#"{"k":"c","l":"00Q.1","t":"welcome","s":"step 1","n":"pricing","u":"https://evil.example","e":9999999999}"#,
        );
        assert_eq!(s.verify_any(&format!("{}.{forged}.{mac}", s.key_id()), now), Err(TokenError::Invalid));
        let unsubscribe = s.unsubscribe(&LeadId::new("00Q1"), "Ana@Acme.example", now);
        let token = unsubscribe.strip_prefix("https://leads.example.com/l/").expect("base url");
        assert!(matches!(s.verify_any(token, now), Ok(AnyClaim::Nurture(NurtureClaim::Unsubscribe { .. }))));
        // Nurture links outlive SLA links (400 days by default).
        assert!(s.verify_any(token, now + chrono::TimeDelta::days(300)).is_ok());
        assert_eq!(s.verify_any(token, now + chrono::TimeDelta::days(401)), Err(TokenError::Expired));
        // An SLA token still verifies through the same door.
        let sla = s.link(SalesAction::Accept, &LeadId::new("00Q1"), 1, "rep@x.example", now);
        let token = sla.strip_prefix("https://leads.example.com/l/").expect("base url");
        assert!(matches!(s.verify_any(token, now), Ok(AnyClaim::Sales(_))));
    }

    fn base64_payload(token: &str) -> String {
        let payload = token.split('.').nth(1).expect("KEYID.PAYLOAD.MAC");
        String::from_utf8(URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("utf-8")
    }

    #[test]
    fn sla_links_bound_to_their_recipient_and_older_ones_are_told_apart() {
        let now: Timestamp = "2026-03-02T14:00:00Z".parse().expect("instant");
        let s = signer("0123456789abcdef0123456789abcdef");
        let lead = LeadId::new("00Q1");
        let rep = s.link(SalesAction::Accept, &lead, 1, "rep@x.example", now);
        let manager = s.link(SalesAction::Accept, &lead, 1, "mgr@x.example", now);
        assert_ne!(rep, manager, "one link set per recipient");
        let token = |url: &str| url.rsplit_once("/l/").expect("token").1.to_owned();
        assert_eq!(
            s.verify(&token(&manager), now).expect("valid").recipient.as_deref(),
            Some("mgr@x.example")
        );
        // A token made before links were bound (no recipient) still verifies, without one.
        let older = legacy_token("0123456789abcdef0123456789abcdef", "accept.00Q1.1.1900000000");
        assert_eq!(s.verify(&older, now).expect("valid").recipient, None);
    }

    /// A token as leadloop made them before tokens named their key: `PAYLOAD.MAC`.
    fn legacy_token(key: &str, payload: &str) -> String {
        let encoded = URL_SAFE_NO_PAD.encode(payload);
        let mut mac = mac_under(&Secret::for_tests(key));
        mac.update(encoded.as_bytes());
        format!("{encoded}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn a_rotated_key_still_verifies_what_it_signed_and_only_the_current_one_signs() {
        let now: Timestamp = "2026-03-02T14:00:00Z".parse().expect("instant");
        let (old_key, new_key) =
            ("the old key, at least thirty-two bytes", "the new key, at least thirty-two bytes");
        let old = signer(old_key);
        let lead = LeadId::new("00Q1");
        let unsubscribe = old.unsubscribe(&lead, "ana@acme.example", now);
        let unsubscribe = unsubscribe.strip_prefix("https://leads.example.com/l/").expect("base url");
        let accept = old.link(SalesAction::Accept, &lead, 1, "rep@x.example", now);
        let accept = accept.strip_prefix("https://leads.example.com/l/").expect("base url");
        let legacy = legacy_token(old_key, r#"{"k":"u","l":"00Q1","e":1900000000}"#);

        // After the rotation, with the old key kept as a previous key: every old link works,
        // its sealed address opens, and new links name the new key.
        let rotated = signer(new_key).with_previous_keys([Secret::for_tests(old_key)]);
        assert_ne!(rotated.key_id(), old.key_id());
        let Ok(AnyClaim::Nurture(NurtureClaim::Unsubscribe { address: Some(sealed), .. })) =
            rotated.verify_any(unsubscribe, now)
        else {
            panic!("the old unsubscribe link verifies")
        };
        assert_eq!(rotated.open_address(&lead, &sealed).as_deref(), Some("ana@acme.example"));
        assert!(rotated.verify(accept, now).is_ok());
        assert!(rotated.verify_any(&legacy, now).is_ok(), "a token without a key id, by the old key");
        let fresh = rotated.unsubscribe(&lead, "ana@acme.example", now);
        assert!(fresh.contains(&format!("/l/{}.", rotated.key_id())), "{fresh}");
        let fresh = fresh.strip_prefix("https://leads.example.com/l/").expect("base url");
        assert!(old.verify_any(fresh, now).is_err(), "the old key alone cannot verify new links");

        // Once the old key is dropped, its links (with or without a key id) no longer verify.
        let dropped = signer(new_key);
        assert_eq!(dropped.verify_any(unsubscribe, now), Err(TokenError::Invalid));
        assert_eq!(dropped.verify_any(&legacy, now), Err(TokenError::Invalid));
        assert!(dropped.verify_any(fresh, now).is_ok());
        // A token naming one key but signed by another is refused.
        let (_, rest) = unsubscribe.split_once('.').expect("key id");
        assert_eq!(
            rotated.verify_any(&format!("{}.{rest}", rotated.key_id()), now),
            Err(TokenError::Invalid)
        );
        // Expired is told apart from invalid, and open_any still reads an expired token.
        let later = now + chrono::TimeDelta::days(401);
        assert_eq!(rotated.verify_any(unsubscribe, later), Err(TokenError::Expired));
        assert!(rotated.open_any(unsubscribe, later).is_ok_and(|o| o.expired));
    }

    #[test]
    fn opt_out_addresses_are_bare_and_safe() {
        let pages = LinkPages::new(
            [None, Some("Example Marketing <marketing@example.com>"), Some("x@y.example")],
            Some("https://crm.example/{id}"),
        );
        assert_eq!(pages.opt_out.as_deref(), Some("marketing@example.com"));
        assert_eq!(LinkPages::new([Some("a\"b@x.example")], None).opt_out, None);
        assert_eq!(LinkPages::new([Some("not an address")], None).opt_out, None);
    }

    #[test]
    fn sealed_addresses_open_only_for_their_lead_and_key() {
        let s = signer("0123456789abcdef0123456789abcdef");
        let lead = LeadId::new("00Q1");
        let sealed = s.seal_address(&lead, " Ana@Acme.Example ", 1_900_000_000).expect("sealed");
        assert!(!String::from_utf8_lossy(&URL_SAFE_NO_PAD.decode(&sealed).expect("base64")).contains("acme"));
        assert_eq!(s.open_address(&lead, &sealed).as_deref(), Some("ana@acme.example"));
        // The same link is the same token; another expiry is another nonce.
        assert_eq!(
            s.seal_address(&lead, "ana@acme.example", 1_900_000_000).as_deref(),
            Some(sealed.as_str())
        );
        assert_ne!(
            s.seal_address(&lead, "ana@acme.example", 1_900_000_001).as_deref(),
            Some(sealed.as_str())
        );
        assert_eq!(s.open_address(&LeadId::new("00Q2"), &sealed), None);
        assert_eq!(signer("another key, also thirty-two bytes").open_address(&lead, &sealed), None);
        assert_eq!(s.seal_address(&lead, "  ", 1_900_000_000), None);
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_names_it() {
        let trusted: Vec<IpAddr> = vec!["127.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip")];
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1, 198.51.100.7, 10.0.0.2"));
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(client_ip(ip("127.0.0.1"), &headers, &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("203.0.113.5"), &headers, &trusted), ip("203.0.113.5"));
        assert_eq!(client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted), ip("127.0.0.1"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage, 10.0.0.2"));
        assert_eq!(client_ip(ip("127.0.0.1"), &headers, &trusted), ip("10.0.0.2"));
        // An IPv6 client counts by its /64; a mapped IPv4 one as IPv4.
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
