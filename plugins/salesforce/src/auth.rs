//! Logging in: the OAuth 2.0 JWT bearer flow (by hand: the oauth2 crate has no JWT-bearer
//! grant), client credentials and refresh token (through the oauth2 crate, its token response
//! extended with Salesforce's `instance_url` and `id`). One session is cached and shared by
//! every call; a call refused with `INVALID_SESSION_ID` asks for a new one, and concurrent
//! callers that saw the same stale session share one login. Tokens are never logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use leadloop_core::connector::ConnectorError;
use leadloop_plugin::Secret;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, ExtraTokenFields, RefreshToken,
    RequestTokenError, StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use crate::config::AuthFlow;

/// What Salesforce adds to a token response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SalesforceFields {
    pub instance_url: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub issued_at: Option<String>,
}

impl ExtraTokenFields for SalesforceFields {}

type SfTokenResponse = StandardTokenResponse<SalesforceFields, BasicTokenType>;
type SfBaseClient = oauth2::Client<
    BasicErrorResponse,
    SfTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;
type SfClient = oauth2::Client<
    BasicErrorResponse,
    SfTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A logged-in session.
pub struct Session {
    pub access_token: Secret,
    /// Where the org's REST API lives, e.g. `https://acme.my.salesforce.com`.
    pub instance_url: String,
    /// Counts logins, so a caller holding a stale session can tell whether someone already
    /// renewed it.
    pub generation: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("instance_url", &self.instance_url)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The credentials of one flow.
pub enum Credentials {
    Jwt { username: String, key: Box<EncodingKey> },
    ClientCredentials { secret: Secret },
    RefreshToken { token: Secret, secret: Option<Secret> },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flow = match self {
            Credentials::Jwt { .. } => AuthFlow::Jwt,
            Credentials::ClientCredentials { .. } => AuthFlow::ClientCredentials,
            Credentials::RefreshToken { .. } => AuthFlow::RefreshToken,
        };
        write!(f, "Credentials({flow:?}, [redacted])")
    }
}

#[derive(Debug)]
pub struct Authenticator {
    http: reqwest::Client,
    login_url: String,
    audience: String,
    client_id: String,
    credentials: Credentials,
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
    logins: AtomicU64,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

#[derive(Deserialize)]
struct JwtResponse {
    access_token: String,
    instance_url: String,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl Authenticator {
    pub fn new(
        http: reqwest::Client,
        login_url: &str,
        audience: Option<&str>,
        client_id: &str,
        credentials: Credentials,
    ) -> Self {
        let login_url = login_url.trim_end_matches('/').to_owned();
        Self {
            http,
            audience: audience.map(str::to_owned).unwrap_or_else(|| login_url.clone()),
            login_url,
            client_id: client_id.to_owned(),
            credentials,
            current: tokio::sync::Mutex::new(None),
            logins: AtomicU64::new(0),
        }
    }

    /// Token requests made so far.
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// The cached session, or a new one.
    pub async fn session(&self) -> Result<Arc<Session>, ConnectorError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref() {
            return Ok(session.clone());
        }
        let session = Arc::new(self.login().await?);
        *current = Some(session.clone());
        Ok(session)
    }

    /// `stale` was refused: log in again, unless another caller already did.
    pub async fn renew(&self, stale: &Session) -> Result<Arc<Session>, ConnectorError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref()
            && session.generation != stale.generation
        {
            return Ok(session.clone());
        }
        *current = None;
        let session = Arc::new(self.login().await?);
        *current = Some(session.clone());
        Ok(session)
    }

    /// A fresh token request, for `validate --connect`: the cached session is neither used nor
    /// replaced. Says which endpoint issued a token and the org's instance; an error names the
    /// endpoint. The token itself is dropped.
    pub async fn check(&self) -> Result<String, ConnectorError> {
        let url = self.token_url();
        let flow = match &self.credentials {
            Credentials::Jwt { .. } => "jwt",
            Credentials::ClientCredentials { .. } => "client_credentials",
            Credentials::RefreshToken { .. } => "refresh_token",
        };
        let session =
            self.login().await.map_err(|e| e.map_message(|m| format!("POST {url} ({flow}): {m}")))?;
        Ok(format!("POST {url} ({flow}): token issued, instance {}", session.instance_url))
    }

    fn token_url(&self) -> String {
        format!("{}/services/oauth2/token", self.login_url)
    }

    async fn login(&self) -> Result<Session, ConnectorError> {
        let generation = self.logins.fetch_add(1, Ordering::Relaxed) + 1;
        let (access_token, instance_url) = match &self.credentials {
            Credentials::Jwt { username, key } => self.jwt_login(username, key).await?,
            Credentials::ClientCredentials { secret } => {
                let client = self.oauth_client(Some(secret))?;
                let response = client.exchange_client_credentials().request_async(&self.http).await;
                token_parts(response)?
            }
            Credentials::RefreshToken { token, secret } => {
                let client = self.oauth_client(secret.as_ref())?;
                let refresh = RefreshToken::new(token.expose().to_owned());
                let response = client.exchange_refresh_token(&refresh).request_async(&self.http).await;
                token_parts(response)?
            }
        };
        tracing::info!(instance_url = %instance_url, generation, "logged in to salesforce");
        Ok(Session { access_token: Secret::new(access_token), instance_url, generation })
    }

    fn oauth_client(&self, secret: Option<&Secret>) -> Result<SfClient, ConnectorError> {
        let token_url = TokenUrl::new(self.token_url())
            .map_err(|e| ConnectorError::Auth { message: format!("token URL {}: {e}", self.token_url()) })?;
        let mut client = SfBaseClient::new(ClientId::new(self.client_id.clone()))
            .set_token_uri(token_url)
            .set_auth_type(AuthType::RequestBody);
        if let Some(secret) = secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
        }
        Ok(client)
    }

    async fn jwt_login(&self, username: &str, key: &EncodingKey) -> Result<(String, String), ConnectorError> {
        // Salesforce accepts an expiry at most three minutes ahead.
        let exp = chrono::Utc::now().timestamp() + 170;
        let claims = Claims { iss: &self.client_id, sub: username, aud: &self.audience, exp };
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
            .map_err(|e| ConnectorError::Auth { message: format!("cannot sign the JWT assertion: {e}") })?;
        let response = self
            .http
            .post(self.token_url())
            .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)])
            .send()
            .await
            .map_err(|e| {
                transient(
                    format!("token request to {}: {}", self.token_url(), leadloop_plugin::error_chain(&e)),
                    None,
                )
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| transient(format!("token response: {}", leadloop_plugin::error_chain(&e)), None))?;
        if status.is_success() {
            let parsed: JwtResponse = serde_json::from_slice(&body).map_err(|e| ConnectorError::Auth {
                message: format!("token response is not what Salesforce sends: {e}"),
            })?;
            return Ok((parsed.access_token, parsed.instance_url));
        }
        let detail = match serde_json::from_slice::<OAuthError>(&body) {
            Ok(e) => format!("{}: {}", e.error, e.error_description.unwrap_or_default()),
            Err(_) => String::from_utf8_lossy(&body).chars().take(200).collect(),
        };
        if status.is_server_error() || status.as_u16() == 429 {
            Err(transient(format!("token endpoint answered {status}: {detail}"), None))
        } else {
            Err(ConnectorError::Auth {
                message: format!("token endpoint refused the JWT ({status}): {detail}"),
            })
        }
    }
}

fn token_parts<E: std::error::Error + 'static>(
    response: Result<SfTokenResponse, RequestTokenError<E, BasicErrorResponse>>,
) -> Result<(String, String), ConnectorError> {
    match response {
        Ok(token) => {
            Ok((token.access_token().secret().to_owned(), token.extra_fields().instance_url.clone()))
        }
        Err(RequestTokenError::ServerResponse(e)) => Err(ConnectorError::Auth {
            message: format!(
                "token endpoint refused: {}{}",
                e.error(),
                e.error_description().map(|d| format!(": {d}")).unwrap_or_default()
            ),
        }),
        Err(RequestTokenError::Request(e)) => {
            Err(transient(format!("token request: {}", leadloop_plugin::error_chain(&e)), None))
        }
        Err(RequestTokenError::Parse(e, _)) => {
            Err(ConnectorError::Auth { message: format!("token response is not what Salesforce sends: {e}") })
        }
        Err(RequestTokenError::Other(e)) => Err(transient(format!("token request: {e}"), None)),
    }
}

pub(crate) fn transient(message: String, retry_after: Option<Duration>) -> ConnectorError {
    ConnectorError::Transient { message, retry_after }
}
