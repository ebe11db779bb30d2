//! WebDAV and CalDAV on the wire: requests over reqwest (PROPFIND, REPORT, PUT, DELETE with
//! preconditions), answers classified into [`ConnectorError`]s, and `multistatus` bodies
//! (RFC 4918 §13) parsed with roxmltree.

use std::time::Duration;

use base64::Engine as _;
use leadloop_core::connector::ConnectorError;
use leadloop_plugin::Secret;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};

pub const DAV: &str = "DAV:";
pub const CALDAV: &str = "urn:ietf:params:xml:ns:caldav";

/// How requests authenticate.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

impl Auth {
    fn header(&self) -> Option<String> {
        match self {
            Auth::None => None,
            Auth::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()))
            )),
            Auth::Bearer(token) => Some(format!("Bearer {}", token.expose())),
        }
    }
}

/// One answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// A CalDAV client for one set of credentials.
#[derive(Debug, Clone)]
pub struct Dav {
    http: reqwest::Client,
    auth: Auth,
    /// The configured server's origin: credentials go there and nowhere else, whatever
    /// absolute href a server answers with.
    server: Url,
}

/// The method names reqwest does not define.
fn method(name: &'static str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap_or(Method::GET)
}

impl Dav {
    pub fn new(timeout: Duration, auth: Auth, server: &Url) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("leadloop/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { http, auth, server: server.clone() })
    }

    /// Sends one request; transport failures are transient. The caller judges the status.
    pub async fn request(
        &self,
        name: &'static str,
        url: &Url,
        headers: &[(&'static str, String)],
        body: Option<String>,
    ) -> Result<Answer, ConnectorError> {
        let mut request = self.http.request(method(name), url.clone());
        if let Some(auth) = self.auth.header() {
            if url.origin() == self.server.origin() {
                request = request.header(reqwest::header::AUTHORIZATION, auth);
            } else {
                tracing::warn!(
                    url = %url,
                    "not sending calendar credentials to a server other than the configured one"
                );
            }
        }
        for (key, value) in headers {
            request = request.header(*key, value);
        }
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type(name)).body(body);
        }
        let response = request.send().await.map_err(|e| ConnectorError::Transient {
            message: format!("{name} {url}: {}", describe(&e)),
            retry_after: None,
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.map_err(|e| ConnectorError::Transient {
            message: format!("{name} {url}: reading the answer: {}", describe(&e)),
            retry_after: None,
        })?;
        Ok(Answer { status, headers, body })
    }

    /// As [`Dav::request`], with any status but `ok` turned into an error.
    pub async fn expect(
        &self,
        name: &'static str,
        url: &Url,
        headers: &[(&'static str, String)],
        body: Option<String>,
        ok: &[StatusCode],
    ) -> Result<Answer, ConnectorError> {
        let answer = self.request(name, url, headers, body).await?;
        if ok.contains(&answer.status) {
            return Ok(answer);
        }
        Err(classify(name, url, &answer))
    }

    /// PROPFIND with `Depth`, expecting a multistatus.
    pub async fn propfind(&self, url: &Url, depth: &str, props: &str) -> Result<Multistatus, ConnectorError> {
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:" xmlns:c="{CALDAV}"><d:prop>{props}</d:prop></d:propfind>"#
        );
        let answer = self
            .expect("PROPFIND", url, &[("Depth", depth.to_owned())], Some(body), &[StatusCode::MULTI_STATUS])
            .await?;
        parse_multistatus(&answer.body).map_err(|e| malformed("PROPFIND", url, &e))
    }

    /// REPORT with `Depth: 1`, expecting a multistatus.
    pub async fn report(&self, url: &Url, body: String) -> Result<Multistatus, ConnectorError> {
        let answer = self
            .expect("REPORT", url, &[("Depth", "1".to_owned())], Some(body), &[StatusCode::MULTI_STATUS])
            .await?;
        parse_multistatus(&answer.body).map_err(|e| malformed("REPORT", url, &e))
    }
}

fn content_type(method: &str) -> &'static str {
    if method == "PUT" { "text/calendar; charset=utf-8" } else { "application/xml; charset=utf-8" }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        format!("cannot connect: {}", leadloop_plugin::error_chain(error))
    } else {
        leadloop_plugin::error_chain(error)
    }
}

fn malformed(method: &str, url: &Url, problem: &str) -> ConnectorError {
    ConnectorError::Transient {
        message: format!("{method} {url}: malformed answer: {problem}"),
        retry_after: None,
    }
}

/// An unexpected status as an error: 401/403 need an operator, 5xx, 408 and 429 are worth
/// retrying (honouring `Retry-After` in seconds), anything else is refused for good.
pub fn classify(method: &str, url: &Url, answer: &Answer) -> ConnectorError {
    let status = answer.status;
    let detail: String =
        answer.body.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(200).collect();
    let message = if detail.is_empty() {
        format!("{method} {url}: {status}")
    } else {
        format!("{method} {url}: {status}: {detail}")
    };
    match status.as_u16() {
        401 | 403 => ConnectorError::Auth { message },
        408 | 429 | 500..=599 => ConnectorError::Transient {
            message,
            retry_after: answer
                .headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_secs),
        },
        _ => ConnectorError::Permanent { message },
    }
}

/// One `<d:response>`: its href, its own status (sync-collection reports removals as 404),
/// and the properties found (in a 2xx propstat).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    pub href: String,
    pub status: Option<u16>,
    pub etag: Option<String>,
    pub calendar_data: Option<String>,
    /// `resourcetype` contains `C:calendar`.
    pub is_calendar: bool,
    pub display_name: Option<String>,
    /// The href inside `current-user-principal`.
    pub principal: Option<String>,
    /// The href inside `calendar-home-set`.
    pub calendar_home: Option<String>,
    /// The collection's `sync-token` property.
    pub sync_token: Option<String>,
    /// `supported-report-set` names `sync-collection`.
    pub supports_sync: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Multistatus {
    pub responses: Vec<Response>,
    /// The top-level `sync-token` of a sync-collection answer.
    pub sync_token: Option<String>,
}

fn status_code(text: &str) -> Option<u16> {
    // `HTTP/1.1 200 OK`
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

fn is(node: &roxmltree::Node<'_, '_>, ns: &str, name: &str) -> bool {
    node.is_element() && node.tag_name().name() == name && node.tag_name().namespace() == Some(ns)
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, ns: &str, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| is(c, ns, name))
}

fn text(node: roxmltree::Node<'_, '_>) -> String {
    node.descendants().filter(|n| n.is_text()).filter_map(|n| n.text()).collect::<String>()
}

/// Parses a `multistatus` body.
pub fn parse_multistatus(body: &str) -> Result<Multistatus, String> {
    let doc = roxmltree::Document::parse(body).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if !is(&root, DAV, "multistatus") {
        return Err(format!("expected DAV:multistatus, found {}", root.tag_name().name()));
    }
    let mut out = Multistatus {
        sync_token: child(root, DAV, "sync-token").map(|n| text(n).trim().to_owned()),
        ..Multistatus::default()
    };
    for node in root.children().filter(|c| is(c, DAV, "response")) {
        let mut response = Response {
            href: child(node, DAV, "href")
                .map(|n| text(n).trim().to_owned())
                .ok_or("a response without href")?,
            status: child(node, DAV, "status").and_then(|n| status_code(&text(n))),
            ..Response::default()
        };
        for propstat in node.children().filter(|c| is(c, DAV, "propstat")) {
            let ok = child(propstat, DAV, "status")
                .and_then(|n| status_code(&text(n)))
                .is_some_and(|c| (200..300).contains(&c));
            let Some(prop) = child(propstat, DAV, "prop").filter(|_| ok) else { continue };
            for p in prop.children().filter(|c| c.is_element()) {
                let (ns, name) = (p.tag_name().namespace().unwrap_or(""), p.tag_name().name());
                let href = || child(p, DAV, "href").map(|n| text(n).trim().to_owned());
                match (ns, name) {
                    (DAV, "getetag") => response.etag = Some(text(p).trim().to_owned()),
                    (DAV, "displayname") => response.display_name = Some(text(p).trim().to_owned()),
                    (DAV, "resourcetype") => response.is_calendar = child(p, CALDAV, "calendar").is_some(),
                    (DAV, "current-user-principal") => response.principal = href(),
                    (DAV, "sync-token") => response.sync_token = Some(text(p).trim().to_owned()),
                    (DAV, "supported-report-set") => {
                        response.supports_sync = p.descendants().any(|d| is(&d, DAV, "sync-collection"))
                    }
                    (CALDAV, "calendar-home-set") => response.calendar_home = href(),
                    (CALDAV, "calendar-data") => response.calendar_data = Some(text(p)),
                    _ => {}
                }
            }
        }
        out.responses.push(response);
    }
    Ok(out)
}

/// `calendar-query` for VEVENTs overlapping `[from, to)` (RFC 4791 §7.8), with their data.
pub fn calendar_query(from: &str, to: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><c:calendar-query xmlns:d="DAV:" xmlns:c="{CALDAV}"><d:prop><d:getetag/><c:calendar-data/></d:prop><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"><c:time-range start="{from}" end="{to}"/></c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#
    )
}

/// `calendar-multiget` of `hrefs` with their data (RFC 4791 §7.9).
pub fn calendar_multiget(hrefs: &[String]) -> String {
    let hrefs: String = hrefs.iter().map(|h| format!("<d:href>{}</d:href>", xml_escape(h))).collect();
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><c:calendar-multiget xmlns:d="DAV:" xmlns:c="{CALDAV}"><d:prop><d:getetag/><c:calendar-data/></d:prop>{hrefs}</c:calendar-multiget>"#
    )
}

/// `sync-collection` from `token` (empty: everything), etags only (RFC 6578 §3.2).
pub fn sync_collection(token: Option<&str>) -> String {
    let token = token.map(xml_escape).unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><d:sync-collection xmlns:d="DAV:"><d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>"#
    )
}

/// `free-busy-query` for `[from, to)` (RFC 4791 §7.10).
pub fn free_busy_query(from: &str, to: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><c:free-busy-query xmlns:c="{CALDAV}"><c:time-range start="{from}" end="{to}"/></c:free-busy-query>"#
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn discovery_answers_are_read() {
        let body = r#"<?xml version="1.0"?>
<multistatus xmlns="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <response><href>/</href>
    <propstat><prop><current-user-principal><href>/ana/</href></current-user-principal></prop><status>HTTP/1.1 200 OK</status></propstat>
    <propstat><prop><C:calendar-home-set/></prop><status>HTTP/1.1 404 Not Found</status></propstat>
  </response>
</multistatus>"#;
        let ms = parse_multistatus(body).unwrap();
        assert_eq!(ms.responses[0].principal.as_deref(), Some("/ana/"));
        assert_eq!(ms.responses[0].calendar_home, None);
    }

    #[test]
    fn collections_tell_calendars_apart_and_carry_sync_support() {
        let body = r#"<d:multistatus xmlns:d="DAV:" xmlns:cal="urn:ietf:params:xml:ns:caldav" xmlns:cs="http://calendarserver.org/ns/">
  <d:response><d:href>/ana/</d:href><d:propstat><d:prop><d:resourcetype><d:collection/></d:resourcetype></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>
  <d:response><d:href>/ana/work/</d:href><d:propstat><d:prop>
     <d:resourcetype><d:collection/><cal:calendar/></d:resourcetype><d:displayname>Work</d:displayname>
     <d:sync-token>http://radicale.org/ns/sync/abc</d:sync-token>
     <d:supported-report-set><d:supported-report><d:report><d:sync-collection/></d:report></d:supported-report></d:supported-report-set>
  </d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>
</d:multistatus>"#;
        let ms = parse_multistatus(body).unwrap();
        assert_eq!(ms.responses.len(), 2);
        assert!(!ms.responses[0].is_calendar);
        let work = &ms.responses[1];
        assert!(work.is_calendar && work.supports_sync);
        assert_eq!(work.display_name.as_deref(), Some("Work"));
        assert_eq!(work.sync_token.as_deref(), Some("http://radicale.org/ns/sync/abc"));
    }

    #[test]
    fn sync_answers_list_changes_removals_and_the_new_token() {
        let body = r#"<multistatus xmlns="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
 <response><href>/ana/work/a.ics</href><propstat><prop><getetag>"e1"</getetag><C:calendar-data>BEGIN:VCALENDAR&#13;
END:VCALENDAR&#13;
</C:calendar-data></prop><status>HTTP/1.1 200 OK</status></propstat></response>
 <response><href>/ana/work/gone.ics</href><status>HTTP/1.1 404 Not Found</status></response>
 <sync-token>tok-2</sync-token>
</multistatus>"#;
        let ms = parse_multistatus(body).unwrap();
        assert_eq!(ms.sync_token.as_deref(), Some("tok-2"));
        assert_eq!(ms.responses[0].etag.as_deref(), Some("\"e1\""));
        assert_eq!(ms.responses[0].calendar_data.as_deref(), Some("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"));
        assert_eq!(
            (ms.responses[1].href.as_str(), ms.responses[1].status),
            ("/ana/work/gone.ics", Some(404))
        );
    }

    #[test]
    fn bodies_that_are_not_multistatus_are_refused() {
        assert!(parse_multistatus("<html><body>proxy error</body></html>").is_err());
        assert!(parse_multistatus("not xml").is_err());
        assert!(parse_multistatus(r#"<multistatus xmlns="DAV:"><response/></multistatus>"#).is_err());
    }

    /// A server that answers 200 once and reports whether the request carried credentials.
    async fn one_request_server() -> (Url, tokio::task::JoinHandle<bool>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url: Url = format!("http://{}/dav/", listener.local_addr().expect("addr")).parse().expect("url");
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
            String::from_utf8_lossy(&request).to_ascii_lowercase().contains("\r\nauthorization:")
        });
        (url, task)
    }

    #[tokio::test]
    async fn credentials_go_to_the_configured_server_only() {
        let (configured, at_configured) = one_request_server().await;
        let (other, at_other) = one_request_server().await;
        let auth = Auth::Basic { username: "ana".into(), password: Secret::for_tests("pw") };
        let dav = Dav::new(Duration::from_secs(5), auth, &configured).expect("client");
        dav.request("PROPFIND", &configured, &[], None).await.expect("configured server");
        // An absolute href a server answered with, on another host: no credentials.
        dav.request("PROPFIND", &other, &[], None).await.expect("other server");
        assert!(at_configured.await.expect("join"), "the configured server gets the credentials");
        assert!(!at_other.await.expect("join"), "another server must not");
    }

    #[test]
    fn basic_auth_and_bearer_tokens_make_their_headers() {
        let basic = Auth::Basic { username: "ana".into(), password: Secret::for_tests("pw") };
        assert_eq!(basic.header().as_deref(), Some("Basic YW5hOnB3"));
        assert_eq!(Auth::Bearer(Secret::for_tests("tok")).header().as_deref(), Some("Bearer tok"));
        assert_eq!(Auth::None.header(), None);
        // Debug output never shows a secret.
        assert!(!format!("{basic:?}").contains("pw\""), "{basic:?}");
    }

    #[test]
    fn statuses_are_classified() {
        let url: Url = "http://127.0.0.1/cal/".parse().unwrap();
        let answer = |code: u16, retry: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(r) = retry {
                headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_str(r).unwrap());
            }
            Answer { status: StatusCode::from_u16(code).unwrap(), headers, body: String::new() }
        };
        assert!(matches!(classify("REPORT", &url, &answer(401, None)), ConnectorError::Auth { .. }));
        assert!(matches!(classify("REPORT", &url, &answer(403, None)), ConnectorError::Auth { .. }));
        assert_eq!(
            classify("REPORT", &url, &answer(503, Some("7"))),
            ConnectorError::Transient {
                message: "REPORT http://127.0.0.1/cal/: 503 Service Unavailable".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(classify("REPORT", &url, &answer(404, None)), ConnectorError::Permanent { .. }));
    }
}
