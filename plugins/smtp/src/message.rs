//! Composing a MIME message from a rendered template: headers, multipart/alternative body,
//! and the `Message-ID` derived from the effect's idempotency key.

use leadloop_core::connector::{ConnectorError, OutgoingEmail};
use leadloop_core::{IdempotencyKey, Timestamp};
use lettre::Message;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use sha2::{Digest, Sha256};

use crate::EmailConfig;
use crate::templates::Templates;

/// Hex SHA-256 of an idempotency key.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `<HASH@DOMAIN>`: the same key always yields the same id, so a resend after a crash is
/// recognisably the same message.
pub fn message_id(key: &IdempotencyKey, domain: &str) -> String {
    format!("<{}@{domain}>", &key_hash(key.as_str())[..32])
}

/// `List-Unsubscribe` (RFC 2369), on nurture mail only.
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

/// Turns an [`OutgoingEmail`] into a MIME message.
#[derive(Debug)]
pub struct Composer {
    templates: Templates,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    nurture_from: Mailbox,
    nurture_reply_to: Option<Mailbox>,
    id_domain: String,
}

fn mailbox(text: &str) -> Result<Mailbox, String> {
    text.parse().map_err(|e| format!("`{text}` is not a mailbox ({e})"))
}

impl Composer {
    pub fn new(config: &EmailConfig, templates: Templates) -> Result<Self, String> {
        let from = mailbox(&config.from)?;
        let nurture_from = match &config.nurture_from {
            Some(text) => mailbox(text)?,
            None => from.clone(),
        };
        let id_domain = match &config.message_id_domain {
            Some(domain) => domain.clone(),
            None => from.email.domain().to_owned(),
        };
        Ok(Self {
            templates,
            reply_to: config.reply_to.as_deref().map(mailbox).transpose()?,
            nurture_reply_to: config.nurture_reply_to.as_deref().map(mailbox).transpose()?,
            from,
            nurture_from,
            id_domain,
        })
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    pub fn id_domain(&self) -> &str {
        &self.id_domain
    }

    /// Failures here are permanent: the same input would fail again.
    pub fn compose(&self, email: &OutgoingEmail, now: Timestamp) -> Result<Message, ConnectorError> {
        let permanent = |message: String| ConnectorError::Permanent { message };
        if email.to.is_empty() {
            return Err(permanent("no recipient".into()));
        }
        let rendered =
            self.templates.render(&email.template, &email.vars).map_err(|e| permanent(e.to_string()))?;
        let nurture = email.kind == "nurture";
        let (from, reply_to) = if nurture {
            (&self.nurture_from, self.nurture_reply_to.as_ref().or(self.reply_to.as_ref()))
        } else {
            (&self.from, self.reply_to.as_ref())
        };
        let mut builder = Message::builder()
            .from(from.clone())
            .subject(rendered.subject)
            .message_id(Some(message_id(&email.key, &self.id_domain)))
            .date(std::time::SystemTime::from(now));
        if let Some(reply_to) = reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        for address in &email.to {
            builder = builder.to(recipient(address)?);
        }
        for address in &email.cc {
            builder = builder.cc(recipient(address)?);
        }
        // The signed one-click URL (RFC 8058) that leadloop's public listener serves. Nurture
        // mail never goes out without one (validate refuses nurture tracks without [links]).
        if nurture {
            let url = email
                .vars
                .get("unsubscribe_url")
                .and_then(|v| v.as_str())
                .filter(|u| !u.is_empty())
                .ok_or_else(|| {
                    permanent(
                        "nurture mail without an unsubscribe link is never sent: configure [links]".into(),
                    )
                })?;
            if url.chars().any(|c| c.is_control() || c == '>' || c == '<' || c.is_whitespace()) {
                return Err(permanent(format!("unsubscribe URL {url:?} is not a plain URL")));
            }
            builder = builder.header(ListUnsubscribe(format!("<{url}>"))).header(ListUnsubscribePost);
        }
        builder
            .multipart(MultiPart::alternative_plain_html(rendered.text, rendered.html))
            .map_err(|e| permanent(format!("cannot build message: {e}")))
    }
}

/// Recipients are bare addresses; anything else (a name, CR/LF, several addresses) is refused.
fn recipient(address: &str) -> Result<Mailbox, ConnectorError> {
    let parsed: lettre::Address = address
        .parse()
        .map_err(|e| ConnectorError::Permanent { message: format!("invalid address {address:?}: {e}") })?;
    Ok(Mailbox::new(None, parsed))
}
