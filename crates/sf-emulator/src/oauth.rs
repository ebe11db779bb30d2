//! `POST /services/oauth2/token`: the JWT bearer, client credentials and refresh token grants,
//! answering as Salesforce does (no `expires_in`; `{"error","error_description"}` on failure).

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::http::{Reply, form_decode, form_get};
use crate::{Session, Shared};

/// The organisation Id the emulator reports.
const ORG_ID: &str = "00D5g00000LEADLP";

/// Audiences accepted besides the emulator's own URL.
const LOGIN_HOSTS: [&str; 2] = ["https://login.salesforce.com", "https://test.salesforce.com"];

fn oauth_error(error: &str, description: &str) -> Reply {
    Reply::json(400, &json!({ "error": error, "error_description": description }))
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<serde_json::Value>,
    exp: Option<i64>,
}

pub(crate) fn token(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Reply {
    let form = form_decode(&String::from_utf8_lossy(body));
    match form_get(&form, "grant_type") {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => jwt_bearer(shared, &form),
        Some("client_credentials") => client_credentials(shared, headers, &form),
        Some("refresh_token") => refresh(shared, headers, &form),
        _ => oauth_error("unsupported_grant_type", "grant type not supported"),
    }
}

fn jwt_bearer(shared: &Shared, form: &[(String, String)]) -> Reply {
    let Some(assertion) = form_get(form, "assertion") else {
        return oauth_error("invalid_grant", "invalid assertion");
    };
    let Some(pem) = shared.config.jwt_public_key_pem.as_deref() else {
        return oauth_error("invalid_grant", "no certificate is configured for this connected app");
    };
    let key = match DecodingKey::from_rsa_pem(pem.as_bytes()) {
        Ok(key) => key,
        Err(error) => {
            tracing::warn!(%error, "emulator jwt public key does not parse");
            return oauth_error("invalid_grant", "invalid assertion");
        }
    };
    // The signature is checked here; the claims below, against the emulator's clock.
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = match jsonwebtoken::decode::<Claims>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(error) => {
            tracing::debug!(%error, "emulator rejected jwt");
            return oauth_error("invalid_grant", "invalid assertion");
        }
    };
    if claims.iss.as_deref() != Some(shared.config.consumer_key.as_str()) {
        return oauth_error("invalid_client", "client identifier invalid");
    }
    let auds: Vec<String> = match &claims.aud {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => {
            items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        }
        _ => Vec::new(),
    };
    let aud_ok = auds.iter().any(|a| {
        let a = a.trim_end_matches('/');
        let login = shared.config.login_url.as_deref().unwrap_or(&shared.url).trim_end_matches('/');
        a == login || LOGIN_HOSTS.contains(&a)
    });
    if !aud_ok {
        return oauth_error("invalid_grant", "audience is invalid");
    }
    let now_s = shared.now_ms().div_euclid(1000);
    match claims.exp {
        None => return oauth_error("invalid_grant", "invalid assertion: exp is required"),
        Some(exp) if exp <= now_s => return oauth_error("invalid_grant", "expired authorization code"),
        Some(exp) if exp > now_s + 180 => {
            return oauth_error(
                "invalid_grant",
                "invalid assertion: exp is more than 3 minutes in the future",
            );
        }
        Some(_) => {}
    }
    let Some(user) = claims.sub.filter(|s| shared.config.usernames.iter().any(|u| u.eq_ignore_ascii_case(s)))
    else {
        return oauth_error("invalid_grant", "user hasn't approved this consumer");
    };
    issue(shared, &user)
}

/// `client_id`/`client_secret` from the form or HTTP Basic.
fn client_auth(headers: &HeaderMap, form: &[(String, String)]) -> (Option<String>, Option<String>) {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_owned(), b.to_owned())));
    let id = form_get(form, "client_id").map(str::to_owned).or_else(|| basic.as_ref().map(|b| b.0.clone()));
    let secret = form_get(form, "client_secret").map(str::to_owned).or_else(|| basic.map(|b| b.1));
    (id, secret)
}

fn client_credentials(shared: &Shared, headers: &HeaderMap, form: &[(String, String)]) -> Reply {
    let (id, secret) = client_auth(headers, form);
    if id.as_deref() != Some(shared.config.consumer_key.as_str())
        || secret.as_deref() != Some(shared.config.client_secret.as_str())
    {
        return oauth_error("invalid_client", "invalid client credentials");
    }
    let user =
        shared.config.usernames.first().cloned().unwrap_or_else(|| "integration@example.com".to_owned());
    issue(shared, &user)
}

fn refresh(shared: &Shared, headers: &HeaderMap, form: &[(String, String)]) -> Reply {
    let (id, secret) = client_auth(headers, form);
    if id.as_deref() != Some(shared.config.consumer_key.as_str()) {
        return oauth_error("invalid_client", "invalid client identifier");
    }
    if secret.is_some_and(|s| s != shared.config.client_secret) {
        return oauth_error("invalid_client", "invalid client credentials");
    }
    match form_get(form, "refresh_token") {
        Some(t) if shared.config.refresh_tokens.iter().any(|r| r == t) => {
            let user = shared
                .config
                .usernames
                .first()
                .cloned()
                .unwrap_or_else(|| "integration@example.com".to_owned());
            issue(shared, &user)
        }
        _ => oauth_error("invalid_grant", "expired access/refresh token"),
    }
}

/// Issues a session for `username` and answers the token response.
fn issue(shared: &Shared, username: &str) -> Reply {
    let now = shared.now_ms();
    let user_id = {
        let db = shared.db();
        db.object("User")
            .and_then(|users| {
                let f = users.field("Username")?;
                users.index.values().filter_map(|&s| users.record(s)).find_map(|r| match r.get(f) {
                    crate::store::Val::Str(u) if u.eq_ignore_ascii_case(username) => Some(r.id.to_string()),
                    _ => None,
                })
            })
            .unwrap_or_else(|| "0055g00000INTGRAAA".to_owned())
    };
    let mut rng = rand::rng();
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._";
    let secret: String = (0..96).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect();
    let access_token = format!("{ORG_ID}!{secret}");
    shared.sessions().insert(access_token.clone(), Session { issued_ms: now });
    let id = format!("{}/id/{ORG_ID}/{user_id}", shared.url);
    let issued_at = now.to_string();
    let signature = match Hmac::<Sha256>::new_from_slice(shared.config.client_secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(id.as_bytes());
            mac.update(issued_at.as_bytes());
            STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    tracing::debug!(username, "emulator issued a session");
    Reply::json(
        200,
        &json!({
            "access_token": access_token,
            "signature": signature,
            "scope": "api",
            "instance_url": shared.url,
            "id": id,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }),
    )
}
