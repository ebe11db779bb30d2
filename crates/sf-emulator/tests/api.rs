//! The emulator through its wire API, with reqwest against a started emulator: OAuth grants,
//! sessions, SOQL (accepted and rejected queries), paging, getDeleted, sObject Collections,
//! Composite, limits, every fault, the control endpoints and the binary.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use leadloop_sf_emulator::seed::{SeedSpec, populate};
use leadloop_sf_emulator::{Config, Emulator, Fault};
use serde_json::{Map, Value, json};

const V: &str = "v62.0";

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

/// A key pair made with openssl: (private PEM, public PEM).
fn key_pair(dir: &tempfile::TempDir, name: &str) -> (String, String) {
    let private: PathBuf = dir.path().join(format!("{name}.pem"));
    let public: PathBuf = dir.path().join(format!("{name}.pub.pem"));
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl genpkey")
        .success();
    assert!(ok, "openssl genpkey failed");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("run openssl pkey")
        .success();
    assert!(ok, "openssl pkey failed");
    (
        std::fs::read_to_string(private).expect("private key"),
        std::fs::read_to_string(public).expect("public key"),
    )
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn login(emu: &Emulator) -> Api {
        let http = reqwest::Client::new();
        let cfg = emu.config();
        let resp = http
            .post(format!("{}/services/oauth2/token", emu.url()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", cfg.consumer_key.as_str()),
                ("client_secret", cfg.client_secret.as_str()),
            ])
            .send()
            .await
            .expect("token request");
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("token json");
        Api { http, base: emu.url(), token: body["access_token"].as_str().expect("token").to_owned() }
    }

    async fn get_raw(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.expect("get")
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.get_raw(path).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn query(&self, soql: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}/services/data/{V}/query", self.base))
            .query(&[("q", soql)])
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("query");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn lead(last: &str, company: &str, extra: Value) -> Map<String, Value> {
    let mut m = obj(json!({ "LastName": last, "Company": company }));
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    m
}

async fn token_request(emu: &Emulator, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/services/oauth2/token", emu.url()))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

#[tokio::test]
async fn jwt_bearer_grant_verifies_signature_issuer_audience_expiry_and_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = key_pair(&dir, "app");
    let (other_private, _) = key_pair(&dir, "other");
    let config = Config {
        jwt_public_key_pem: Some(public),
        usernames: vec!["sync@example.com".into()],
        ..Config::default()
    };
    let emu = Emulator::start(config).await.expect("start");
    let now = emu.now().timestamp();
    let sign = |key: &str, claims: Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(key.as_bytes()).expect("encoding key"),
        )
        .expect("sign")
    };
    let claims = |aud: &str, sub: &str, exp: i64| json!({ "iss": "leadloop-consumer-key", "sub": sub, "aud": aud, "exp": exp });
    let grant = "urn:ietf:params:oauth:grant-type:jwt-bearer";

    let good = sign(&private, claims(&emu.url(), "sync@example.com", now + 120));
    let (status, body) = token_request(&emu, &[("grant_type", grant), ("assertion", &good)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["instance_url"], emu.url());
    assert!(body.get("expires_in").is_none());
    assert!(body["issued_at"].as_str().expect("issued_at").parse::<i64>().is_ok());
    for key in ["access_token", "id", "signature", "scope"] {
        assert!(body[key].is_string(), "{key} missing in {body}");
    }
    let login_aud = sign(&private, claims("https://login.salesforce.com", "sync@example.com", now + 60));
    assert_eq!(token_request(&emu, &[("grant_type", grant), ("assertion", &login_aud)]).await.0, 200);

    let cases = [
        (
            "wrong key",
            sign(&other_private, claims(&emu.url(), "sync@example.com", now + 60)),
            "invalid_grant",
        ),
        (
            "wrong aud",
            sign(&private, claims("https://evil.example", "sync@example.com", now + 60)),
            "invalid_grant",
        ),
        ("expired", sign(&private, claims(&emu.url(), "sync@example.com", now - 5)), "invalid_grant"),
        ("too far ahead", sign(&private, claims(&emu.url(), "sync@example.com", now + 600)), "invalid_grant"),
        ("unknown user", sign(&private, claims(&emu.url(), "nobody@example.com", now + 60)), "invalid_grant"),
        (
            "wrong issuer",
            sign(
                &private,
                json!({ "iss": "other", "sub": "sync@example.com", "aud": emu.url(), "exp": now + 60 }),
            ),
            "invalid_client",
        ),
        ("garbage", "not.a.jwt".to_owned(), "invalid_grant"),
    ];
    for (name, assertion, error) in cases {
        let (status, body) = token_request(&emu, &[("grant_type", grant), ("assertion", &assertion)]).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"], error, "{name}: {body}");
        assert!(body["error_description"].is_string(), "{name}: {body}");
    }
    // Expiry is judged by the emulator's clock.
    emu.advance(Duration::from_secs(600));
    let (status, _) = token_request(&emu, &[("grant_type", grant), ("assertion", &good)]).await;
    assert_eq!(status, 400);
    assert_eq!(emu.logins(), 10);
    assert_eq!(emu.api_calls(), 0);
}

#[tokio::test]
async fn client_credentials_and_refresh_token_grants() {
    let config = Config { refresh_tokens: vec!["5Aep861-refresh".into()], ..Config::default() };
    let emu = Emulator::start(config).await.expect("start");
    let ok = [
        ("grant_type", "client_credentials"),
        ("client_id", "leadloop-consumer-key"),
        ("client_secret", "leadloop-client-secret"),
    ];
    assert_eq!(token_request(&emu, &ok).await.0, 200);
    let (status, body) = token_request(
        &emu,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "leadloop-consumer-key"),
            ("client_secret", "nope"),
        ],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_client")));
    // HTTP Basic.
    let resp = reqwest::Client::new()
        .post(format!("{}/services/oauth2/token", emu.url()))
        .basic_auth("leadloop-consumer-key", Some("leadloop-client-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("basic");
    assert_eq!(resp.status(), 200);

    let refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", "5Aep861-refresh"),
        ("client_id", "leadloop-consumer-key"),
    ];
    let (status, body) = token_request(&emu, &refresh).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token").is_none());
    let (status, body) = token_request(
        &emu,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "unknown"),
            ("client_id", "leadloop-consumer-key"),
        ],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    let (status, body) = token_request(
        &emu,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "5Aep861-refresh"),
            ("client_id", "leadloop-consumer-key"),
            ("client_secret", "wrong"),
        ],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_client")));
    let (status, body) = token_request(&emu, &[("grant_type", "password")]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_grant_type")));
    assert_eq!(emu.logins(), 7);
}

#[tokio::test]
async fn sessions_are_required_and_can_expire() {
    let config = Config { session_ttl: Some(Duration::from_secs(3600)), ..Config::default() };
    let emu = Emulator::start(config).await.expect("start");
    let api = Api::login(&emu).await;
    assert_eq!(api.get(&format!("/services/data/{V}/limits")).await.0, 200);
    let anonymous = Api { token: "00Dxx!bogus".into(), ..Api::login(&emu).await };
    let (status, body) = anonymous.get(&format!("/services/data/{V}/limits")).await;
    assert_eq!(status, 401);
    assert_eq!(body, json!([{ "message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID" }]));

    let calls = emu.api_calls();
    let (status, versions) = anonymous.get("/services/data").await;
    assert_eq!((status, versions[0]["version"].as_str()), (200, Some("62.0")));
    assert_eq!(emu.api_calls(), calls, "the versions list is not an API call");

    emu.advance(Duration::from_secs(3599));
    assert_eq!(api.get(&format!("/services/data/{V}/limits")).await.0, 200);
    emu.advance(Duration::from_secs(2));
    assert_eq!(api.get(&format!("/services/data/{V}/limits")).await.0, 401);

    let api = Api::login(&emu).await;
    assert_eq!(api.get(&format!("/services/data/{V}/limits")).await.0, 200);
    emu.expire_sessions();
    let (status, body) = api.get(&format!("/services/data/{V}/limits")).await;
    assert_eq!(status, 401);
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");
    // Any vNN.N is accepted; a malformed version is not found.
    let api = Api::login(&emu).await;
    assert_eq!(api.get("/services/data/v45.0/limits").await.0, 200);
    assert_eq!(api.get("/services/data/v45/limits").await.0, 404);
}

#[tokio::test]
async fn queries_page_with_locators_and_keep_their_result_set() {
    let emu = Emulator::start(Config::default()).await.expect("start");
    let leads: Vec<_> = (0..450)
        .map(|i| lead(&format!("L{i:03}"), "Acme", json!({ "Email": format!("l{i}@acme.example") })))
        .collect();
    let ids = emu.insert_many("Lead", leads);
    let api = Api::login(&emu).await;
    let resp = api
        .http
        .get(format!("{}/services/data/{V}/query", api.base))
        .query(&[("q", "SELECT Id, LastName, Email, Title FROM Lead ORDER BY SystemModstamp, Id")])
        .header("Sforce-Query-Options", "batchSize=200")
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("query");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("sforce-limit-info").is_some());
    let first: Value = resp.json().await.expect("json");
    assert_eq!(first["totalSize"], 450);
    assert_eq!(first["done"], false);
    let records = first["records"].as_array().expect("records");
    assert_eq!(records.len(), 200);
    assert_eq!(
        records[0]["attributes"],
        json!({ "type": "Lead", "url": format!("/services/data/{V}/sobjects/Lead/{}", ids[0]) })
    );
    assert_eq!(records[0]["Id"], ids[0].as_str());
    assert_eq!(records[0]["LastName"], "L000");
    assert_eq!(records[0]["Title"], Value::Null);

    // Records inserted or changed after the query do not shift its pages.
    emu.insert("Lead", lead("Late", "Acme", json!({})));
    emu.update("Lead", &ids[0], obj(json!({ "Title": "moved" })));

    let mut seen: Vec<String> = records.iter().map(|r| r["Id"].as_str().expect("id").to_owned()).collect();
    let mut next = first["nextRecordsUrl"].as_str().map(str::to_owned);
    let mut pages = 1;
    while let Some(url) = next {
        assert!(url.starts_with(&format!("/services/data/{V}/query/01g")), "{url}");
        let (status, page) = api.get(&url).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["totalSize"], 450);
        seen.extend(
            page["records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| r["Id"].as_str().expect("id").to_owned()),
        );
        next = page["nextRecordsUrl"].as_str().map(str::to_owned);
        pages += 1;
        if next.is_none() {
            assert_eq!(page["done"], true);
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    // Locators expire after 15 minutes of emulator time.
    let (_, again) = api.query("SELECT Id FROM Lead").await;
    assert_eq!(again["done"], true, "default batch is 2000");
    let resp = api
        .http
        .get(format!("{}/services/data/{V}/query", api.base))
        .query(&[("q", "SELECT Id FROM Lead")])
        .header("Sforce-Query-Options", "batchSize=200")
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("query");
    let page: Value = resp.json().await.expect("json");
    let url = page["nextRecordsUrl"].as_str().expect("next").to_owned();
    emu.advance(Duration::from_secs(16 * 60));
    let (status, body) = api.get(&url).await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_QUERY_LOCATOR");
}

#[tokio::test]
async fn soql_accepts_the_subset_and_rejects_with_salesforce_codes() {
    let emu = Emulator::start(Config::default()).await.expect("start");
    emu.declare_field("Lead", "Segment__c");
    let t0 = emu.now();
    let rows = [
        ("Ada", "Lovelace", "ada@analytical.example", "Open - Not Contacted", 10, "US", Some("SMB")),
        ("Grace", "Hopper", "grace@navy.example", "Working - Contacted", 500, "US", Some("Enterprise")),
        ("Alan", "O'Turing", "alan@bletchley.example", "Open - Not Contacted", 50, "GB", None),
        (
            "Edsger",
            "Dijkstra",
            "ewd@utexas.example",
            "Closed - Not Converted",
            2000,
            "NL",
            Some("Enterprise"),
        ),
    ];
    for (first, last, email, status, n, country, segment) in rows {
        let mut m = lead(
            last,
            "Co",
            json!({ "FirstName": first, "Email": email, "Status": status, "NumberOfEmployees": n, "Country": country }),
        );
        if let Some(s) = segment {
            m.insert("Segment__c".into(), json!(s));
        }
        emu.insert("Lead", m);
    }
    let api = Api::login(&emu).await;
    let since = (t0 - chrono::Duration::seconds(5)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let later = (t0 + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%S.000+0000").to_string();
    let accepted: Vec<(String, usize)> = vec![
        ("SELECT Id FROM Lead".into(), 4),
        ("select id, email from lead".into(), 4),
        ("SELECT Id FROM Lead WHERE Country = 'US'".into(), 2),
        ("SELECT Id FROM Lead WHERE country = 'us'".into(), 2),
        ("SELECT Id FROM Lead WHERE Country != 'US'".into(), 2),
        ("SELECT Id FROM Lead WHERE Country <> 'US'".into(), 2),
        ("SELECT Id FROM Lead WHERE NumberOfEmployees >= 50 AND NumberOfEmployees < 2000".into(), 2),
        ("SELECT Id FROM Lead WHERE NumberOfEmployees > 10 OR Country = 'US'".into(), 4),
        (
            "SELECT Id FROM Lead WHERE Country = 'US' AND (NumberOfEmployees > 100 OR FirstName = 'Ada')"
                .into(),
            2,
        ),
        ("SELECT Id FROM Lead WHERE NOT Country = 'US'".into(), 2),
        ("SELECT Id FROM Lead WHERE Country IN ('GB', 'NL')".into(), 2),
        ("SELECT Id FROM Lead WHERE Country NOT IN ('GB', 'NL')".into(), 2),
        ("SELECT Id FROM Lead WHERE Email LIKE '%.example'".into(), 4),
        ("SELECT Id FROM Lead WHERE Email LIKE 'a%'".into(), 2),
        ("SELECT Id FROM Lead WHERE LastName = 'O\\'Turing'".into(), 1),
        ("SELECT Id FROM Lead WHERE Segment__c = null".into(), 1),
        ("SELECT Id FROM Lead WHERE Segment__c != null".into(), 3),
        ("SELECT Id FROM Lead WHERE IsConverted = false".into(), 0),
        ("SELECT Id FROM Lead WHERE IsDeleted = false".into(), 4),
        (format!("SELECT Id FROM Lead WHERE SystemModstamp > {since}"), 4),
        (format!("SELECT Id FROM Lead WHERE SystemModstamp >= {later}"), 0),
        (
            format!(
                "SELECT Id FROM Lead WHERE CreatedDate < {later} AND LastModifiedDate > 2020-01-01T00:00:00+01:00"
            ),
            4,
        ),
        ("SELECT Id FROM Lead WHERE CreatedDate > 2020-01-01T00:00:00.000Z".into(), 4),
        ("SELECT Id FROM Lead ORDER BY NumberOfEmployees DESC LIMIT 2".into(), 2),
        ("SELECT Id FROM Lead ORDER BY Segment__c ASC NULLS LAST, LastName LIMIT 3 OFFSET 1".into(), 3),
        ("SELECT Id FROM Lead LIMIT 10 OFFSET 3".into(), 1),
        ("SELECT Id FROM Group".into(), 0),
    ];
    for (q, n) in &accepted {
        let (status, body) = api.query(q).await;
        assert_eq!(status, 200, "{q}: {body}");
        assert_eq!(body["records"].as_array().map(Vec::len), Some(*n), "{q}: {body}");
        assert_eq!(body["totalSize"], *n, "{q}");
    }
    let (_, body) = api.query("SELECT LastName FROM Lead ORDER BY NumberOfEmployees DESC").await;
    let names: Vec<&str> = body["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["LastName"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["Dijkstra", "Hopper", "O'Turing", "Lovelace"]);
    let (_, body) = api.query("SELECT LastName FROM Lead ORDER BY Segment__c NULLS FIRST, LastName").await;
    assert_eq!(body["records"][0]["LastName"], "O'Turing");
    let (_, body) = api.query("SELECT Name, segment__c FROM Lead WHERE FirstName = 'Ada'").await;
    assert_eq!(body["records"][0]["Name"], "Ada Lovelace");
    assert_eq!(body["records"][0]["Segment__c"], "SMB", "canonical field names in results");
    let (status, body) = api.query("SELECT COUNT() FROM Lead WHERE Country = 'US'").await;
    assert_eq!((status, body["totalSize"].as_u64(), body["done"].as_bool()), (200, Some(2), Some(true)));
    assert_eq!(body["records"], json!([]));

    let rejected = [
        ("SELECT FROM Lead", "MALFORMED_QUERY"),
        ("SELECT Id Lead", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead WHERE", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead WHERE Country = 'US' AND Email = 'x' OR Title = 'y'", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead WHERE Country == 'US'", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead WHERE Country = 'US", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead LIMIT x", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead ORDER Country", "MALFORMED_QUERY"),
        ("SELECT * FROM Lead", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead GARBAGE", "MALFORMED_QUERY"),
        ("DELETE FROM Lead", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead OFFSET 2001", "NUMBER_OUTSIDE_VALID_RANGE"),
        ("SELECT Nope FROM Lead", "INVALID_FIELD"),
        ("SELECT Id FROM Lead WHERE Nope__c = 'x'", "INVALID_FIELD"),
        ("SELECT Id FROM Lead ORDER BY Nope", "INVALID_FIELD"),
        ("SELECT Id FROM Lead WHERE SystemModstamp > '2026-01-01T00:00:00Z'", "INVALID_FIELD"),
        ("SELECT Id FROM Lead WHERE IsConverted = 'false'", "INVALID_FIELD"),
        ("SELECT Id FROM Lead WHERE CreatedDate > 2026-01-01", "INVALID_FIELD"),
        ("SELECT Id FROM Widget__c", "INVALID_TYPE"),
        ("SELECT Id FROM Opportunity", "INVALID_TYPE"),
    ];
    for (q, code) in rejected {
        let (status, body) = api.query(q).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert_eq!(body[0]["errorCode"], code, "{q}: {body}");
        assert!(
            body[0]["message"].as_str().is_some_and(|m| m.contains("ERROR at Row:1:Column:")),
            "{q}: {body}"
        );
    }
    let (_, body) = api.query("SELECT Nope FROM Lead").await;
    assert_eq!(
        body[0]["message"],
        "\nSELECT Nope FROM Lead\n       ^\nERROR at Row:1:Column:8\nNo such column 'Nope' on entity 'Lead'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."
    );
    let (status, body) = api.get(&format!("/services/data/{V}/query")).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (400, Some("MALFORMED_QUERY")));
}

#[tokio::test]
async fn incremental_sync_is_a_range_scan_over_systemmodstamp() {
    let emu = Emulator::start(Config::default()).await.expect("start");
    let spec = SeedSpec { leads: 300, ..SeedSpec::default() };
    let ids = populate(&emu, &spec);
    assert_eq!(emu.count("Lead"), 300);
    assert_eq!(ids.reps.len(), 8);
    let api = Api::login(&emu).await;
    let (_, body) =
        api.query("SELECT Id, SystemModstamp FROM Lead ORDER BY SystemModstamp, Id LIMIT 1000").await;
    let last = body["records"][299]["SystemModstamp"].as_str().expect("stamp").to_owned();
    assert!(last.ends_with("+0000") && last.len() == 28, "{last}");
    emu.advance(Duration::from_secs(5));
    emu.update("Lead", &ids.leads[7], obj(json!({ "Status": "Working - Contacted" })));
    let q = format!(
        "SELECT Id, Status FROM Lead WHERE SystemModstamp > {last} ORDER BY SystemModstamp, Id LIMIT 2000"
    );
    let (status, body) = api.query(&q).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["totalSize"], 1);
    assert_eq!(body["records"][0]["Id"], ids.leads[7].as_str());
    assert_eq!(body["records"][0]["Status"], "Working - Contacted");
}

#[tokio::test]
async fn deleted_records_are_listed_within_a_15_day_window() {
    let emu = Emulator::start(Config::default()).await.expect("start");
    let a = emu.insert("Lead", lead("A", "Co", json!({})));
    let b = emu.insert("Lead", lead("B", "Co", json!({})));
    let t0 = emu.now();
    assert!(emu.delete("Lead", &a));
    assert!(!emu.delete("Lead", &a), "already deleted");
    emu.advance(Duration::from_secs(3600));
    assert!(emu.delete("Lead", &b));
    assert_eq!(emu.count("Lead"), 0);
    let api = Api::login(&emu).await;
    let fmt =
        |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S%:z").to_string().replace('+', "%2B");
    let start = fmt(t0 - chrono::Duration::minutes(1));
    let end = fmt(emu.now() + chrono::Duration::minutes(1));
    let (status, body) =
        api.get(&format!("/services/data/{V}/sobjects/Lead/deleted/?start={start}&end={end}")).await;
    assert_eq!(status, 200, "{body}");
    let deleted: Vec<&str> = body["deletedRecords"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(deleted, [a.as_str(), b.as_str()]);
    assert!(
        body["deletedRecords"][0]["deletedDate"]
            .as_str()
            .is_some_and(|d| d.ends_with(".000+0000") || d.ends_with("+0000"))
    );
    assert!(body["earliestDateAvailable"].is_string() && body["latestDateCovered"].is_string());
    let mid = fmt(t0 + chrono::Duration::minutes(30));
    let (_, body) =
        api.get(&format!("/services/data/{V}/sobjects/Lead/deleted/?start={mid}&end={end}")).await;
    assert_eq!(body["deletedRecords"].as_array().map(Vec::len), Some(1));
    // A querying client no longer sees them.
    let (_, body) = api.query("SELECT Id FROM Lead").await;
    assert_eq!(body["totalSize"], 0);
    // Sixteen days later the window has moved past both.
    emu.advance(Duration::from_secs(16 * 24 * 3600));
    let (status, body) = api
        .get(&format!("/services/data/{V}/sobjects/Lead/deleted/?start={start}&end={}", fmt(emu.now())))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_REPLICATION_DATE");
    let recent = fmt(emu.now() - chrono::Duration::days(14));
    let (status, body) = api
        .get(&format!("/services/data/{V}/sobjects/Lead/deleted/?start={recent}&end={}", fmt(emu.now())))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deletedRecords"], json!([]));
    let (status, body) =
        api.get(&format!("/services/data/{V}/sobjects/Lead/deleted/?start={end}&end={start}")).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (400, Some("INVALID_REPLICATION_DATE")));
}

#[tokio::test]
async fn collections_write_in_order_with_per_record_errors_and_all_or_none() {
    let emu = Emulator::start(Config::default()).await.expect("start");
    let ids = populate(&emu, &SeedSpec { leads: 5, tasks: 0, ..SeedSpec::default() });
    let inactive = emu.insert(
        "User",
        obj(json!({ "Username": "gone@example.com", "LastName": "Gone", "IsActive": false })),
    );
    let gone = ids.leads[4].clone();
    emu.delete("Lead", &gone);
    let api = Api::login(&emu).await;
    let path = format!("/services/data/{V}/composite/sobjects");
    let rec = |id: &str, fields: Value| {
        let mut m = obj(json!({ "attributes": { "type": "Lead" }, "Id": id }));
        m.extend(obj(fields));
        Value::Object(m)
    };
    let unknown = "00Q5g0000000ZZZZZZ";
    emu.fault(Fault::RecordError {
        id: ids.leads[3].clone(),
        status_code: "UNABLE_TO_LOCK_ROW".into(),
        message: "unable to obtain exclusive access to this record".into(),
        times: 1,
    });
    let body = json!({ "allOrNone": false, "records": [
        rec(&ids.leads[0], json!({ "Status": "Working - Contacted", "OwnerId": ids.reps[0] })),
        rec(&ids.leads[1], json!({ "Status": "Qualified-ish" })),
        rec(&ids.leads[2], json!({ "OwnerId": inactive })),
        rec(&ids.leads[3], json!({ "Title": "x" })),
        rec(&gone, json!({ "Title": "x" })),
        rec(unknown, json!({ "Title": "x" })),
        rec(&ids.leads[2], json!({ "OwnerId": ids.queue })),
        rec(&ids.leads[2], json!({ "OwnerId": "00Q5g0000000AAAAAA" })),
        rec(&ids.leads[2], json!({ "Name": "Computed" })),
    ]});
    let (status, results) = api.send(reqwest::Method::PATCH, &path, &body).await;
    assert_eq!(status, 200, "{results}");
    let codes: Vec<Option<&str>> =
        results.as_array().expect("array").iter().map(|r| r["errors"][0]["statusCode"].as_str()).collect();
    assert_eq!(
        codes,
        [
            None,
            Some("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
            Some("INACTIVE_OWNER_OR_USER"),
            Some("UNABLE_TO_LOCK_ROW"),
            Some("ENTITY_IS_DELETED"),
            Some("INVALID_CROSS_REFERENCE_KEY"),
            None,
            Some("FIELD_INTEGRITY_EXCEPTION"),
            Some("INVALID_FIELD_FOR_INSERT_UPDATE"),
        ]
    );
    assert_eq!(results[0], json!({ "id": ids.leads[0], "success": true, "errors": [] }));
    assert_eq!(results[1]["errors"][0]["fields"], json!(["Status"]));
    assert_eq!(emu.get("Lead", &ids.leads[0]).expect("lead")["Status"], "Working - Contacted");
    assert_eq!(emu.get("Lead", &ids.leads[2]).expect("lead")["OwnerId"], ids.queue.as_str());
    // The fault fired once: the same record now updates.
    let (_, results) = api
        .send(
            reqwest::Method::PATCH,
            &path,
            &json!({ "records": [rec(&ids.leads[3], json!({ "Title": "y" }))] }),
        )
        .await;
    assert_eq!(results[0]["success"], true);

    // All or none: one bad record rolls back the good ones.
    let before = emu.get("Lead", &ids.leads[0]).expect("lead");
    let body = json!({ "allOrNone": true, "records": [
        rec(&ids.leads[0], json!({ "Title": "rolled back" })),
        rec(&ids.leads[1], json!({ "Status": "nope" })),
    ]});
    let (_, results) = api.send(reqwest::Method::PATCH, &path, &body).await;
    assert_eq!(results[0]["success"], false);
    assert_eq!(results[0]["errors"][0]["statusCode"], "ALL_OR_NONE_OPERATION_ROLLED_BACK");
    assert_eq!(results[1]["errors"][0]["statusCode"], "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    assert_eq!(emu.get("Lead", &ids.leads[0]).expect("lead"), before);

    // Create: required fields, default status, ids in order.
    let body = json!({ "allOrNone": false, "records": [
        { "attributes": { "type": "Lead" }, "LastName": "New", "Company": "Co", "Email": "new@co.example" },
        { "attributes": { "type": "Lead" }, "LastName": "NoCompany" },
        { "attributes": { "type": "Task" }, "Subject": "Call", "Status": "Completed", "WhoId": ids.leads[0] },
    ]});
    let (status, results) = api.send(reqwest::Method::POST, &path, &body).await;
    assert_eq!(status, 200);
    let new_id = results[0]["id"].as_str().expect("id");
    assert!(new_id.starts_with("00Q"));
    assert_eq!(emu.get("Lead", new_id).expect("new")["Status"], "Open - Not Contacted");
    assert_eq!(results[1]["errors"][0]["statusCode"], "REQUIRED_FIELD_MISSING");
    let task = results[2]["id"].as_str().expect("task");
    assert!(task.starts_with("00T"));
    assert_eq!(emu.get("Task", task).expect("task")["IsClosed"], true);
    let created_all_or_none = json!({ "allOrNone": true, "records": [
        { "attributes": { "type": "Lead" }, "LastName": "Rolled", "Company": "Co" },
        { "attributes": { "type": "Lead" }, "LastName": "Broken" },
    ]});
    let count = emu.count("Lead");
    api.send(reqwest::Method::POST, &path, &created_all_or_none).await;
    assert_eq!(emu.count("Lead"), count);

    // Request-level errors.
    let many: Vec<Value> = (0..201)
        .map(|_| json!({ "attributes": { "type": "Lead" }, "LastName": "x", "Company": "y" }))
        .collect();
    let (status, body) = api.send(reqwest::Method::POST, &path, &json!({ "records": many })).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (400, Some("EXCEEDED_ID_LIMIT")));
    let (status, body) = api
        .send(
            reqwest::Method::PATCH,
            &path,
            &json!({ "records": [rec(&ids.leads[0], json!({ "Bogus": 1 }))] }),
        )
        .await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (400, Some("INVALID_FIELD")));
    let (status, _) = api
        .send(
            reqwest::Method::PATCH,
            &path,
            &json!({ "records": [rec(&ids.leads[0], json!({ "Interests__c": "AI" }))] }),
        )
        .await;
    assert_eq!(status, 200, "declared custom fields are writable");

    // Single records.
    let (status, body) = api.get(&format!("/services/data/{V}/sobjects/Lead/{}", ids.leads[0])).await;
    assert_eq!(status, 200);
    assert_eq!(body["Id"], ids.leads[0].as_str());
    assert_eq!(body["attributes"]["type"], "Lead");
    let (status, body) =
        api.get(&format!("/services/data/{V}/sobjects/Lead/{}?fields=Email,Status", ids.leads[0])).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_object().map(Map::len), Some(3));
    let (status, _) = api
        .send(
            reqwest::Method::PATCH,
            &format!("/services/data/{V}/sobjects/Lead/{}", ids.leads[0]),
            &json!({ "Rating": "Hot" }),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(emu.get("Lead", &ids.leads[0]).expect("lead")["Rating"], "Hot");
    let (status, body) = api
        .send(
            reqwest::Method::PATCH,
            &format!("/services/data/{V}/sobjects/Lead/{}", ids.leads[0]),
            &json!({ "Status": "bad" }),
        )
        .await;
    assert_eq!(
        (status, body[0]["errorCode"].as_str()),
        (400, Some("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"))
    );
    assert_eq!(
        api.get(&format!("/services/data/{V}/sobjects/Lead/{gone}")).await.1[0]["errorCode"],
        "ENTITY_IS_DELETED"
    );
    assert_eq!(api.get(&format!("/services/data/{V}/sobjects/Lead/{unknown}")).await.0, 404);
}

#[tokio::test]
async fn composite_runs_subrequests_with_references_as_one_call() {
    let emu = Emulator::start(Config::default()).await.expect("start");
    let owner = emu
        .insert("User", obj(json!({ "Username": "rep@example.com", "LastName": "Rep", "IsActive": true })));
    let api = Api::login(&emu).await;
    let calls = emu.api_calls();
    let body = json!({ "allOrNone": false, "compositeRequest": [
        { "method": "POST", "url": format!("/services/data/{V}/sobjects/Lead"), "referenceId": "NewLead",
          "body": { "LastName": "Composite", "Company": "Co", "OwnerId": owner } },
        { "method": "GET", "url": format!("/services/data/{V}/sobjects/Lead/@{{NewLead.id}}"), "referenceId": "Fetched" },
        { "method": "GET", "url": format!("/services/data/{V}/query?q=SELECT+Id,LastName+FROM+Lead"), "referenceId": "Q" },
        { "method": "PATCH", "url": format!("/services/data/{V}/composite/sobjects"), "referenceId": "Upd",
          "body": { "records": [{ "attributes": { "type": "Lead" }, "Id": "@{Q.records[0].Id}", "Rating": "Warm" }] } },
    ]});
    let (status, out) =
        api.send(reqwest::Method::POST, &format!("/services/data/{V}/composite"), &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(emu.api_calls(), calls + 1, "a composite request counts one call");
    let subs = out["compositeResponse"].as_array().expect("responses");
    assert_eq!(subs.len(), 4);
    assert_eq!(subs[0]["httpStatusCode"], 201);
    assert_eq!(subs[0]["referenceId"], "NewLead");
    let id = subs[0]["body"]["id"].as_str().expect("id");
    assert_eq!(subs[1]["body"]["Id"], id);
    assert_eq!(subs[2]["body"]["totalSize"], 1);
    assert_eq!(subs[3]["body"][0]["success"], true);
    assert_eq!(emu.get("Lead", id).expect("lead")["Rating"], "Warm");

    // All or none: a failing subrequest rolls back the earlier ones and halts the rest.
    let count = emu.count("Lead");
    let body = json!({ "allOrNone": true, "compositeRequest": [
        { "method": "POST", "url": format!("/services/data/{V}/sobjects/Lead"), "referenceId": "A", "body": { "LastName": "A", "Company": "Co" } },
        { "method": "PATCH", "url": format!("/services/data/{V}/sobjects/Lead/{id}"), "referenceId": "B", "body": { "Status": "nope" } },
        { "method": "GET", "url": format!("/services/data/{V}/limits"), "referenceId": "C" },
    ]});
    let (_, out) = api.send(reqwest::Method::POST, &format!("/services/data/{V}/composite"), &body).await;
    let subs = out["compositeResponse"].as_array().expect("responses");
    assert_eq!(subs[0]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert_eq!(subs[1]["body"][0]["errorCode"], "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    assert_eq!(subs[2]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert_eq!(emu.count("Lead"), count);

    // Without all-or-none, a subrequest that refers to a failed one fails; the others run.
    let body = json!({ "allOrNone": false, "compositeRequest": [
        { "method": "POST", "url": format!("/services/data/{V}/sobjects/Lead"), "referenceId": "Bad", "body": { "LastName": "x" } },
        { "method": "GET", "url": format!("/services/data/{V}/sobjects/Lead/@{{Bad.id}}"), "referenceId": "Dep" },
        { "method": "GET", "url": format!("/services/data/{V}/limits"), "referenceId": "Ok" },
    ]});
    let (_, out) = api.send(reqwest::Method::POST, &format!("/services/data/{V}/composite"), &body).await;
    let subs = out["compositeResponse"].as_array().expect("responses");
    assert_eq!(
        (subs[0]["httpStatusCode"].as_u64(), subs[0]["body"][0]["errorCode"].as_str()),
        (Some(400), Some("REQUIRED_FIELD_MISSING"))
    );
    assert_eq!(
        (subs[1]["httpStatusCode"].as_u64(), subs[1]["body"][0]["errorCode"].as_str()),
        (Some(400), Some("PROCESSING_HALTED"))
    );
    assert_eq!(subs[2]["httpStatusCode"], 200);

    let too_many: Vec<Value> = (0..26).map(|i| json!({ "method": "GET", "url": format!("/services/data/{V}/limits"), "referenceId": format!("r{i}") })).collect();
    let (status, _) = api
        .send(
            reqwest::Method::POST,
            &format!("/services/data/{V}/composite"),
            &json!({ "compositeRequest": too_many }),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn api_usage_is_reported_counted_and_enforced() {
    let config = Config { daily_api_limit: 5, ..Config::default() };
    let emu = Emulator::start(config).await.expect("start");
    let api = Api::login(&emu).await;
    let resp = api.get_raw(&format!("/services/data/{V}/limits")).await;
    assert_eq!(resp.headers()["sforce-limit-info"], "api-usage=1/5");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body, json!({ "DailyApiRequests": { "Max": 5, "Remaining": 4 } }));
    for _ in 0..4 {
        assert_eq!(api.get_raw(&format!("/services/data/{V}/limits")).await.status(), 200);
    }
    let resp = api.get_raw(&format!("/services/data/{V}/limits")).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["sforce-limit-info"], "api-usage=5/5");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body,
        json!([{ "message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED" }])
    );
    assert_eq!(emu.api_calls(), 5);
    // Token requests are not API calls.
    Api::login(&emu).await;
    assert_eq!(emu.api_calls(), 5);
    emu.set_api_usage(2);
    let resp = api.get_raw(&format!("/services/data/{V}/limits")).await;
    assert_eq!(
        (resp.status().as_u16(), resp.headers()["sforce-limit-info"].to_str().ok()),
        (200, Some("api-usage=3/5"))
    );
}

#[tokio::test]
async fn a_connected_app_quota_shows_as_a_second_limit_entry_and_is_enforced() {
    let config = Config {
        app_api_quota: Some(leadloop_sf_emulator::AppQuota { app_name: "leadloop".into(), quota: 3 }),
        ..Config::default()
    };
    let emu = Emulator::start(config).await.expect("start");
    let api = Api::login(&emu).await;
    let limits = format!("/services/data/{V}/limits");
    for used in 1..=3 {
        let resp = api.get_raw(&limits).await;
        assert_eq!(
            resp.headers()["sforce-limit-info"].to_str().ok(),
            Some(format!("api-usage={used}/100000; per-app-api-usage={used}/3(appName=leadloop)").as_str())
        );
    }
    let resp = api.get_raw(&limits).await;
    assert_eq!(resp.status(), 403, "past the app's quota");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");
}

#[tokio::test]
async fn composite_takes_at_most_five_queries() {
    let emu = Emulator::start(Config::default()).await.expect("start");
    let api = Api::login(&emu).await;
    let query = |i: usize| json!({ "method": "GET", "url": format!("/services/data/{V}/query?q=SELECT+Id+FROM+Lead"), "referenceId": format!("q{i}") });
    let five: Vec<Value> = (0..5).map(query).collect();
    let (status, out) = api
        .send(
            reqwest::Method::POST,
            &format!("/services/data/{V}/composite"),
            &json!({ "compositeRequest": five }),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let six: Vec<Value> = (0..6).map(query).collect();
    let (status, out) = api
        .send(
            reqwest::Method::POST,
            &format!("/services/data/{V}/composite"),
            &json!({ "compositeRequest": six }),
        )
        .await;
    assert_eq!((status, out[0]["errorCode"].as_str()), (400, Some("LIMIT_EXCEEDED")), "{out}");
}

#[tokio::test]
async fn every_fault_fires_as_queued_and_is_consumed() {
    let emu = Emulator::start(Config { batch_size: 200, ..Config::default() }).await.expect("start");
    emu.insert_many("Lead", (0..700).map(|i| lead(&format!("L{i}"), "Co", json!({}))).collect());
    let api = Api::login(&emu).await;
    let limits = format!("/services/data/{V}/limits");

    emu.fault(Fault::Status {
        status: 503,
        retry_after: Some(7),
        times: 2,
        path_contains: Some("/query".into()),
    });
    assert_eq!(api.get_raw(&limits).await.status(), 200, "path filter");
    for _ in 0..2 {
        let resp = api.get_raw(&format!("/services/data/{V}/query?q=SELECT+Id+FROM+Lead")).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "7");
        let body: Value = resp.json().await.expect("json");
        assert!(body[0]["errorCode"].is_string());
    }
    assert_eq!(api.get_raw(&format!("/services/data/{V}/query?q=SELECT+Id+FROM+Lead")).await.status(), 200);

    emu.fault(Fault::Status { status: 429, retry_after: None, times: 1, path_contains: None });
    let resp = api.get_raw(&limits).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none());

    emu.fault(Fault::LimitExceeded { times: 1 });
    let (status, body) = api.get(&limits).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (403, Some("REQUEST_LIMIT_EXCEEDED")));
    assert_eq!(api.get(&limits).await.0, 200);

    // The second follow-up page fetch fails once; retrying the same URL succeeds.
    let (_, first) = api.query("SELECT Id FROM Lead").await;
    emu.fault(Fault::FailPage { nth: 2 });
    let next = first["nextRecordsUrl"].as_str().expect("next").to_owned();
    let (status, second) = api.get(&next).await;
    assert_eq!(status, 200);
    let third_url = second["nextRecordsUrl"].as_str().expect("next").to_owned();
    assert_eq!(api.get(&third_url).await.0, 500);
    let (status, third) = api.get(&third_url).await;
    assert_eq!(status, 200);
    assert_eq!(third["records"].as_array().map(Vec::len), Some(200));

    emu.fault(Fault::Slow { delay: Duration::from_millis(300), times: 1 });
    let started = Instant::now();
    assert_eq!(api.get(&limits).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    emu.fault(Fault::Malformed { times: 1 });
    let resp = api.get_raw(&limits).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("text");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert_eq!(api.get(&limits).await.0, 200);

    emu.fault(Fault::LimitExceeded { times: 3 });
    emu.clear_faults();
    assert_eq!(api.get(&limits).await.0, 200);
    let statuses: Vec<u16> =
        emu.requests().iter().filter(|r| r.path.contains("/limits")).map(|r| r.status).collect();
    assert!(statuses.contains(&429) && statuses.contains(&403));
}

#[tokio::test]
async fn a_record_has_a_page_at_its_lightning_url() {
    let emu = Emulator::start(Config::default()).await.expect("start");
    let owner = emu.insert("User", obj(json!({ "FirstName": "Rita", "LastName": "Rep", "IsActive": true })));
    let id = emu.insert(
        "Lead",
        lead(
            "Lima",
            "Acme & <Co>",
            json!({ "FirstName": "Ana", "Title": "VP Engineering", "OwnerId": owner }),
        ),
    );
    let http = reqwest::Client::new();
    let page = |path: String| {
        let http = http.clone();
        async move {
            let resp = http.get(path).send().await.expect("get");
            let status = resp.status().as_u16();
            let kind = resp.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_owned());
            (status, kind, resp.text().await.expect("text"))
        }
    };
    let (status, kind, html) = page(format!("{}/lightning/r/Lead/{id}/view", emu.url())).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(kind.as_deref(), Some("text/html; charset=utf-8"));
    assert!(html.contains("<h1>Lead: Ana Lima</h1>"), "{html}");
    assert!(html.contains("<td>VP Engineering</td>"), "{html}");
    assert!(html.contains("<td>Acme &amp; &lt;Co&gt;</td>"), "escaped: {html}");
    assert!(html.contains(&format!("<td>Rita Rep ({owner})</td>")), "the owner by name: {html}");
    // Not an API call, and no session needed.
    assert_eq!(emu.api_calls(), 0);
    emu.delete("Lead", &id);
    let (status, _, html) = page(format!("{}/lightning/r/Lead/{id}/view", emu.url())).await;
    assert_eq!(status, 404);
    assert!(html.contains("was deleted"), "{html}");
    for path in ["/lightning/r/Lead/00Qnope/view", "/lightning/r/Nope/x/view", "/lightning/r/Lead"] {
        assert_eq!(page(format!("{}{path}", emu.url())).await.0, 404, "{path}");
    }
}

#[tokio::test]
async fn control_endpoints_drive_an_emulator_from_outside() {
    let emu = Emulator::start(Config::default()).await.expect("start");
    let http = reqwest::Client::new();
    let base = emu.url();
    let ids: Value = http
        .post(format!("{base}/__emulator/insert/Lead"))
        .json(&json!([{ "LastName": "A", "Company": "Co" }, { "LastName": "B", "Company": "Co" }]))
        .send()
        .await
        .expect("insert")
        .json()
        .await
        .expect("ids");
    assert_eq!(ids.as_array().map(Vec::len), Some(2));
    // Bulk inserts larger than axum's default 2 MB body limit are accepted.
    let many: Vec<Value> = (0..20_000)
        .map(|i| json!({ "LastName": format!("Bulk{i}"), "Company": "Co", "Description": "x".repeat(100) }))
        .collect();
    let resp =
        http.post(format!("{base}/__emulator/insert/Contact")).json(&many).send().await.expect("bulk insert");
    assert_eq!(resp.status(), 200);
    assert_eq!(emu.count("Contact"), 20_000);
    let api = Api::login(&emu).await;
    let resp = http
        .post(format!("{base}/__emulator/fault"))
        .json(&json!({ "kind": "status", "status": 500, "times": 1 }))
        .send()
        .await
        .expect("fault");
    assert_eq!(resp.status(), 204);
    assert_eq!(api.get(&format!("/services/data/{V}/limits")).await.0, 500);
    let resp = http
        .post(format!("{base}/__emulator/fault"))
        .json(&json!({ "kind": "status", "status": 200 }))
        .send()
        .await
        .expect("fault");
    assert_eq!(resp.status(), 400);
    let before = emu.now();
    http.post(format!("{base}/__emulator/advance?secs=3600")).send().await.expect("advance");
    assert!(emu.now() - before >= chrono::Duration::seconds(3600));
    http.post(format!("{base}/__emulator/expire-sessions")).send().await.expect("expire");
    assert_eq!(api.get(&format!("/services/data/{V}/limits")).await.0, 401);
    let stats: Value =
        http.get(format!("{base}/__emulator/stats")).send().await.expect("stats").json().await.expect("json");
    assert_eq!(stats["counts"]["Lead"], 2);
    assert_eq!(stats["logins"], 1);
    assert_eq!(stats["api_calls"], 0, "the 500 fault and the 401 were not counted; control calls never are");
}

#[tokio::test]
async fn the_binary_serves_a_seeded_org_until_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_leadloop-sf-emulator"))
        .args(["--seed-leads", "2500", "--seed-tasks", "10", "--batch-size", "1000"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn emulator");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("ready in time")
        .expect("read")
        .expect("a line");
    let url = line.strip_prefix("listening on ").expect("listening line").to_owned();
    let http = reqwest::Client::new();
    let stats: Value =
        http.get(format!("{url}/__emulator/stats")).send().await.expect("stats").json().await.expect("json");
    assert_eq!(stats["counts"]["Lead"], 2500);
    assert_eq!(stats["counts"]["Task"], 10);
    let token: Value = http
        .post(format!("{url}/services/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "leadloop-consumer-key"),
            ("client_secret", "leadloop-client-secret"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let page: Value = http
        .get(format!("{url}/services/data/{V}/query"))
        .query(&[("q", "SELECT Id, Email, Interests__c FROM Lead")])
        .bearer_auth(token["access_token"].as_str().expect("token"))
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(page["records"].as_array().map(Vec::len), Some(1000));
    assert!(page["records"][0]["Interests__c"].is_string());
    let pid = child.id().expect("pid");
    let killed = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").expect("wait");
    assert!(status.success(), "{status}");
}

impl Api {
    async fn bayeux(&self, messages: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/cometd/62.0", self.base))
            .bearer_auth(&self.token)
            .json(&messages)
            .send()
            .await
            .expect("cometd");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn subscribe(&self, replay: i64) -> (String, Value) {
        let (_, hs) = self.bayeux(json!([{"channel": "/meta/handshake", "version": "1.0"}])).await;
        let client = hs[0]["clientId"].as_str().expect("client id").to_owned();
        let (_, sub) = self
            .bayeux(json!([{"channel": "/meta/subscribe", "clientId": client,
                "subscription": "/data/ChangeEvents", "ext": {"replay": {"/data/ChangeEvents": replay}}}]))
            .await;
        (client, sub[0].clone())
    }

    async fn connect(&self, client: &str) -> Vec<Value> {
        let (status, body) = self
            .bayeux(
                json!([{"channel": "/meta/connect", "clientId": client, "connectionType": "long-polling"}]),
            )
            .await;
        assert_eq!(status, 200);
        body.as_array().cloned().unwrap_or_default()
    }
}

#[tokio::test]
async fn writes_publish_change_events_over_cometd_with_replay_retention_and_gaps() {
    let config = Config {
        streaming_timeout: std::time::Duration::from_millis(300),
        overflow_after: 2,
        ..Config::default()
    };
    let emu = Emulator::start(config).await.expect("start");
    let api = Api::login(&emu).await;
    // No session: 401, as the data API.
    let anonymous = reqwest::Client::new()
        .post(format!("{}/cometd/62.0", emu.url()))
        .json(&json!([{"channel": "/meta/handshake"}]))
        .send()
        .await
        .expect("post");
    assert_eq!(anonymous.status(), 401);

    let (client, sub) = api.subscribe(-1).await;
    assert_eq!(sub["successful"], true, "{sub}");
    let id = emu.insert(
        "Lead",
        json!({"LastName": "Ada", "Company": "Acme"}).as_object().cloned().unwrap_or_default(),
    );
    emu.update("Lead", &id, json!({"Title": "CTO"}).as_object().cloned().unwrap_or_default());
    emu.delete("Lead", &id);
    let mut got = Vec::new();
    while got.len() < 3 {
        let answer = api.connect(&client).await;
        let reply = answer.last().expect("connect reply");
        assert_eq!(reply["channel"], "/meta/connect");
        assert_eq!(reply["successful"], true);
        got.extend(answer.into_iter().filter(|m| m["channel"] == "/data/ChangeEvents"));
    }
    let header = |i: usize| got[i]["data"]["payload"]["ChangeEventHeader"].clone();
    assert_eq!(header(0)["changeType"], "CREATE");
    assert_eq!(header(0)["entityName"], "Lead");
    assert_eq!(header(0)["recordIds"], json!([id]));
    assert_eq!(got[0]["data"]["payload"]["LastName"], "Ada");
    for key in ["commitTimestamp", "transactionKey", "sequenceNumber", "commitUser", "changedFields"] {
        assert!(!header(0)[key].is_null(), "{key} in {}", header(0));
    }
    assert_eq!(header(1)["changeType"], "UPDATE");
    assert_eq!(header(1)["changedFields"], json!(["Title", "LastModifiedDate"]));
    assert_eq!(got[1]["data"]["payload"]["Title"], "CTO");
    assert_eq!(header(2)["changeType"], "DELETE");
    let replay = |i: usize| got[i]["data"]["event"]["replayId"].as_i64().expect("replay id");
    assert!(replay(0) < replay(1) && replay(1) < replay(2));

    // A per-object channel carries only its object; replay resumes after an id.
    let (_, hs) = api.bayeux(json!([{"channel": "/meta/handshake"}])).await;
    let other = hs[0]["clientId"].as_str().expect("client").to_owned();
    let (_, sub) = api
        .bayeux(
            json!([{"channel": "/meta/subscribe", "clientId": other, "subscription": "/data/LeadChangeEvent",
            "ext": {"replay": {"/data/LeadChangeEvent": replay(0)}}}]),
        )
        .await;
    assert_eq!(sub[0]["successful"], true);
    emu.insert("Contact", json!({"LastName": "Bob"}).as_object().cloned().unwrap_or_default());
    let answer = api.connect(&other).await;
    let replays: Vec<i64> =
        answer.iter().filter_map(|m| m.pointer("/data/event/replayId").and_then(Value::as_i64)).collect();
    assert_eq!(replays, [replay(1), replay(2)], "after the given id, Lead only");

    // Gap and overflow events.
    emu.publish_gap("Lead", "GAP_UPDATE", vec![id.clone()]);
    emu.insert_many(
        "Lead",
        (0..3)
            .map(|i| {
                json!({"LastName": format!("L{i}"), "Company": "C"}).as_object().cloned().unwrap_or_default()
            })
            .collect(),
    );
    let mut types = Vec::new();
    for _ in 0..5 {
        for m in api.connect(&client).await {
            if let Some(t) = m.pointer("/data/payload/ChangeEventHeader/changeType").and_then(Value::as_str) {
                types.push(t.to_owned());
            }
        }
        if types.len() >= 5 {
            break;
        }
    }
    assert_eq!(
        types,
        ["CREATE", "GAP_UPDATE", "CREATE", "CREATE", "GAP_OVERFLOW"],
        "the third insert overflowed"
    );

    // Retention: after 72 hours an old replay id is refused; -2 and -1 still work.
    emu.advance(std::time::Duration::from_secs(73 * 3600));
    let (_, sub) = api.subscribe(replay(0)).await;
    assert_eq!(sub["successful"], false);
    assert!(sub["error"].as_str().is_some_and(|e| e.starts_with("400::The replayId")), "{sub}");
    assert_eq!(api.subscribe(-2).await.1["successful"], true);
    assert_eq!(api.subscribe(-1).await.1["successful"], true);

    // A forgotten client is told to handshake again.
    emu.drop_streaming_clients();
    let answer = api.connect(&client).await;
    assert_eq!(answer[0]["error"], "403::Unknown client");
    assert_eq!(answer[0]["advice"]["reconnect"], "handshake");
    emu.shutdown().await;

    // An org without Change Data Capture refuses the subscription.
    let emu = Emulator::start(Config { change_events: false, ..Config::default() }).await.expect("start");
    let api = Api::login(&emu).await;
    let (_, sub) = api.subscribe(-1).await;
    assert_eq!(sub["successful"], false);
    assert!(sub["error"].as_str().is_some_and(|e| e.starts_with("403::")), "{sub}");
    emu.shutdown().await;
}
