//! `leadloop validate --connect` as an operator runs it, against the real peers the other
//! end-to-end tests use: PostgreSQL on 127.0.0.1:5432, the Salesforce emulator, aiosmtpd with
//! STARTTLS and AUTH, Radicale. Every check passes with good settings (and nothing is written:
//! no mail, no schema); a wrong password and a closed port fail each kind of check, with the
//! peer's reason on that check's line and exit status 1.
//!
//! PostgreSQL is `LEADLOOP_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`);
//! `LEADLOOP_TEST_PG=skip` leaves out the store when none can run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use leadloop_sf_emulator::{Config as SfConfig, Emulator};
use leadloop_tests::caldav_peer::CaldavPeer;
use leadloop_tests::pki::TestPki;
use leadloop_tests::smtp_peer::{PASSWORD, SmtpPeer, USER, free_port};

fn pg_url() -> String {
    std::env::var("LEADLOOP_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Whether the store check is part of these tests: PostgreSQL answers, or the test fails
/// unless `LEADLOOP_TEST_PG=skip`.
async fn with_postgres() -> bool {
    match tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await {
        Ok(_) => true,
        Err(error) if std::env::var("LEADLOOP_TEST_PG").as_deref() == Ok("skip") => {
            eprintln!("store check left out: PostgreSQL is unreachable ({error}) and LEADLOOP_TEST_PG=skip");
            false
        }
        Err(error) => panic!("PostgreSQL is unreachable: {error}; start it or set LEADLOOP_TEST_PG=skip"),
    }
}

/// What the config points at; each field is spliced into the TOML as it is.
struct Peers {
    pg_url: Option<String>,
    schema: String,
    sf_url: String,
    sf_secret: String,
    smtp_port: u16,
    smtp_password: String,
    ca: PathBuf,
    caldav_url: String,
    ana_password: String,
    ana_calendar: String,
    /// bo's `calendar = …` or `principal = …` line.
    bo_target: String,
}

fn secret(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).expect("write secret");
    path.display().to_string()
}

fn write_config(dir: &Path, peers: &Peers) -> PathBuf {
    let mut text = format!("[daemon]\nstate_dir = \"{}\"\n\n", dir.join("state").display());
    if let Some(url) = &peers.pg_url {
        text += &format!(
            "[store]\nengine = \"postgres\"\nurl_file = \"{}\"\nsslmode = \"disable\"\nschema = \"{}\"\n\n",
            secret(dir, "pg-url", url),
            peers.schema
        );
    }
    text += &format!(
        r#"[email]
from = "leadloop <leadloop@corp.example>"
deliver = "smtp"

[email.smtp]
host = "localhost"
port = {smtp_port}
tls = "starttls"
username = "{USER}"
password_file = "{smtp_password}"
ca_file = "{ca}"
connect_timeout = "5s"

[crm]
type = "salesforce"

[crm.salesforce]
login_url = "{sf_url}"
auth = "client_credentials"
client_id = "{client}"
client_secret_file = "{sf_secret}"

[calendar]
type = "caldav"
url = "{caldav_url}"

[[calendar.person]]
id = "005A0000001"
calendar = "{ana_calendar}"
username = "ana"
password_file = "{ana_password}"

[[calendar.person]]
id = "005A0000002"
{bo_target}
username = "bo"
password_file = "{bo_password}"
"#,
        smtp_port = peers.smtp_port,
        smtp_password = secret(dir, "smtp-password", &peers.smtp_password),
        ca = peers.ca.display(),
        sf_url = peers.sf_url,
        client = SfConfig::default().consumer_key,
        sf_secret = secret(dir, "sf-secret", &peers.sf_secret),
        caldav_url = peers.caldav_url,
        ana_calendar = peers.ana_calendar,
        ana_password = secret(dir, "ana-password", &peers.ana_password),
        bo_target = peers.bo_target,
        bo_password = secret(dir, "bo-password", "bo-pw"),
    );
    let path = dir.join("leadloop.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

async fn validate_connect(config: &Path) -> Output {
    let config = config.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_leadloop"))
            .args(["validate", "--connect", "--config"])
            .arg(&config)
            .output()
            .expect("run leadloop")
    })
    .await
    .expect("join")
}

/// The line of check `kind name`, split into its result, its time in ms and its text.
fn line<'a>(stdout: &'a str, kind: &str, name: &str) -> (&'a str, u128, &'a str) {
    let found = stdout
        .lines()
        .find(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(kind) && words.next() == Some(name)
        })
        .unwrap_or_else(|| panic!("no `{kind} {name}` line in:\n{stdout}"));
    let mut words = found.split_whitespace();
    let (_, _, result, took) = (words.next(), words.next(), words.next(), words.next());
    let took = took.and_then(|t| t.strip_suffix("ms")).and_then(|t| t.parse().ok()).expect("a time in ms");
    let text = found.split_once("ms  ").map(|(_, text)| text).expect("two spaces before the text");
    (result.expect("a result"), took, text)
}

fn unique_schema(tag: &str) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("leadloop_test_{secs}_{}_{tag}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_passes_against_the_real_peers_and_writes_nothing() {
    let postgres = with_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::create(dir.path()).expect("pki");
    let smtp = SmtpPeer::start(Some(&pki)).expect("smtp peer");
    let caldav = CaldavPeer::start(&dir.path().join("radicale")).expect("radicale");
    caldav.create_calendar("ana", "work").await.expect("ana's calendar");
    caldav.create_calendar("bo", "work").await.expect("bo's calendar");
    let sf = Emulator::start(SfConfig::default()).await.expect("emulator");
    let schema = unique_schema("connect");
    let config = write_config(
        dir.path(),
        &Peers {
            pg_url: postgres.then(pg_url),
            schema: schema.clone(),
            sf_url: sf.url(),
            sf_secret: SfConfig::default().client_secret,
            smtp_port: smtp.port,
            smtp_password: PASSWORD.into(),
            ca: pki.ca_pem.clone(),
            caldav_url: caldav.base_url(),
            ana_password: "ana-pw".into(),
            ana_calendar: "/ana/work/".into(),
            bo_target: "principal = \"/bo/\"".into(),
        },
    );

    let out = validate_connect(&config).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("leadloop.toml: valid"), "{stderr}");

    let (result, _, text) = line(&stdout, "crm", "salesforce");
    assert_eq!(result, "ok", "{stdout}");
    assert!(
        text.contains("/services/oauth2/token (client_credentials): token issued, instance http://"),
        "{text}"
    );
    let (result, _, text) = line(&stdout, "email", "smtp");
    assert_eq!(result, "ok", "{stdout}");
    assert_eq!(text, format!("localhost:{}: EHLO, STARTTLS, AUTH, NOOP accepted; no mail sent", smtp.port));
    let (result, _, text) = line(&stdout, "calendar", "005A0000001");
    assert_eq!(result, "ok", "{stdout}");
    assert_eq!(text, format!("PROPFIND {}ana/work/: a calendar collection \"work\"", caldav.base_url()));
    let (result, _, text) = line(&stdout, "calendar", "005A0000002");
    assert_eq!(result, "ok", "{stdout}");
    assert_eq!(text, format!("discovery found 1 calendar(s): {}bo/work/", caldav.base_url()));
    let checks = if postgres {
        let (result, _, text) = line(&stdout, "store", "postgres");
        assert_eq!(result, "ok", "{stdout}");
        assert!(text.contains("127.0.0.1:5432/test: connected, PostgreSQL "), "{text}");
        5
    } else {
        4
    };
    let skipped = usize::from(!postgres);
    assert_eq!(
        stdout.lines().last(),
        Some(format!("connections: {checks} ok, 0 failed, {skipped} skipped").as_str())
    );
    assert_eq!(stdout.lines().count(), checks + skipped + 1, "{stdout}");

    // Nothing was written: no mail reached the server, no schema was created.
    assert!(smtp.messages().await.expect("messages").is_empty(), "a check sent mail");
    if postgres {
        let (client, connection) =
            tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await.expect("pg");
        tokio::spawn(connection);
        let found =
            client.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema]).await.expect("query");
        assert!(found.is_empty(), "validate --connect created schema {schema}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_its_check_with_the_peers_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::create(dir.path()).expect("pki");
    let smtp = SmtpPeer::start(Some(&pki)).expect("smtp peer");
    let caldav = CaldavPeer::start(&dir.path().join("radicale")).expect("radicale");
    caldav.create_calendar("ana", "work").await.expect("ana's calendar");
    caldav.create_calendar("bo", "work").await.expect("bo's calendar");
    let sf = Emulator::start(SfConfig::default()).await.expect("emulator");
    let postgres = with_postgres().await;
    // The test server trusts local connections, so no password is refused: a database that
    // does not exist is the server's own refusal.
    let pg_url = postgres.then(|| {
        let url = pg_url();
        let base = url.rsplit_once('/').map(|(base, _)| base.to_owned()).unwrap_or(url);
        format!("{base}/leadloop_no_such_db")
    });
    let config = write_config(
        dir.path(),
        &Peers {
            pg_url,
            schema: unique_schema("refused"),
            sf_url: sf.url(),
            sf_secret: "wrong-sf-secret".into(),
            smtp_port: smtp.port,
            smtp_password: "wrong-smtp-password".into(),
            ca: pki.ca_pem.clone(),
            caldav_url: caldav.base_url(),
            ana_password: "wrong-ana-password".into(),
            // bo's discovery still works: one failing person does not fail the others.
            ana_calendar: "/ana/work/".into(),
            bo_target: "principal = \"/bo/\"".into(),
        },
    );

    let out = validate_connect(&config).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");

    let (result, _, text) = line(&stdout, "crm", "salesforce");
    assert_eq!(result, "FAILED", "{stdout}");
    assert!(text.starts_with("authentication failed: POST http://"), "{text}");
    assert!(text.contains("invalid_client"), "{text}");
    let (result, _, text) = line(&stdout, "email", "smtp");
    assert_eq!(result, "FAILED", "{stdout}");
    assert!(text.starts_with(&format!("authentication failed: localhost:{}: ", smtp.port)), "{text}");
    assert!(text.contains("535"), "{text}");
    let (result, _, text) = line(&stdout, "calendar", "005A0000001");
    assert_eq!(result, "FAILED", "{stdout}");
    assert!(
        text.starts_with(&format!(
            "authentication failed: PROPFIND {}ana/work/: 401 Unauthorized",
            caldav.base_url()
        )),
        "{text}"
    );
    let (result, _, _) = line(&stdout, "calendar", "005A0000002");
    assert_eq!(result, "ok", "{stdout}");
    let failed = if postgres {
        let (result, _, text) = line(&stdout, "store", "postgres");
        assert_eq!(result, "FAILED", "{stdout}");
        assert!(text.contains("/leadloop_no_such_db: cannot connect: "), "{text}");
        assert!(text.contains("SQLSTATE 3D000"), "{text}");
        4
    } else {
        3
    };
    let skipped = usize::from(!postgres);
    assert_eq!(
        stdout.lines().last(),
        Some(format!("connections: 1 ok, {failed} failed, {skipped} skipped").as_str())
    );
    for secret in ["wrong-sf-secret", "wrong-smtp-password", "wrong-ana-password"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} was printed");
    }
    assert!(smtp.messages().await.expect("messages").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_fails_its_check_naming_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::create(dir.path()).expect("pki");
    let postgres = with_postgres().await;
    let closed = [free_port(), free_port(), free_port(), free_port()];
    let config = write_config(
        dir.path(),
        &Peers {
            pg_url: postgres.then(|| format!("postgres://postgres@127.0.0.1:{}/test", closed[0])),
            schema: unique_schema("closed"),
            sf_url: format!("http://127.0.0.1:{}", closed[1]),
            sf_secret: SfConfig::default().client_secret,
            smtp_port: closed[2],
            smtp_password: PASSWORD.into(),
            ca: pki.ca_pem.clone(),
            caldav_url: format!("http://127.0.0.1:{}/", closed[3]),
            ana_password: "ana-pw".into(),
            ana_calendar: "/ana/work/".into(),
            bo_target: "principal = \"/bo/\"".into(),
        },
    );

    let out = validate_connect(&config).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let refused = "Connection refused";
    let (result, _, text) = line(&stdout, "crm", "salesforce");
    assert_eq!(result, "FAILED", "{stdout}");
    assert!(text.starts_with(&format!(
        "temporary failure: POST http://127.0.0.1:{}/services/oauth2/token",
        closed[1]
    )));
    assert!(text.contains(refused) || text.contains("error sending request"), "{text}");
    let (result, _, text) = line(&stdout, "email", "smtp");
    assert_eq!(result, "FAILED", "{stdout}");
    assert!(
        text.contains(&format!("cannot connect to localhost:{}", closed[2])) && text.contains(refused),
        "{text}"
    );
    for person in ["005A0000001", "005A0000002"] {
        let (result, _, text) = line(&stdout, "calendar", person);
        assert_eq!(result, "FAILED", "{stdout}");
        assert!(
            text.contains(&format!("http://127.0.0.1:{}/", closed[3])) && text.contains("cannot connect"),
            "{text}"
        );
    }
    if postgres {
        let (result, _, text) = line(&stdout, "store", "postgres");
        assert_eq!(result, "FAILED", "{stdout}");
        assert!(text.contains(&format!("127.0.0.1:{}/test: cannot connect: ", closed[0])), "{text}");
        assert!(text.contains(refused), "{text}");
    }
    let failed = if postgres { 5 } else { 4 };
    let skipped = usize::from(!postgres);
    assert_eq!(
        stdout.lines().last(),
        Some(format!("connections: 0 ok, {failed} failed, {skipped} skipped").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_url_that_is_not_a_calendar_fails_its_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::create(dir.path()).expect("pki");
    let smtp = SmtpPeer::start(Some(&pki)).expect("smtp peer");
    let caldav = CaldavPeer::start(&dir.path().join("radicale")).expect("radicale");
    caldav.create_calendar("ana", "work").await.expect("ana's calendar");
    let sf = Emulator::start(SfConfig::default()).await.expect("emulator");
    let config = write_config(
        dir.path(),
        &Peers {
            pg_url: None,
            schema: unique_schema("unused"),
            sf_url: sf.url(),
            sf_secret: SfConfig::default().client_secret,
            smtp_port: smtp.port,
            smtp_password: PASSWORD.into(),
            ca: pki.ca_pem.clone(),
            caldav_url: caldav.base_url(),
            ana_password: "ana-pw".into(),
            // ana's principal collection exists, but holds calendars rather than being one.
            ana_calendar: "/ana/".into(),
            bo_target: "calendar = \"/bo/nothing/\"".into(),
        },
    );

    let out = validate_connect(&config).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let (result, _, text) = line(&stdout, "calendar", "005A0000001");
    assert_eq!(result, "FAILED", "{stdout}");
    assert_eq!(
        text,
        format!(
            "permanent failure: PROPFIND {}ana/: answered, but it is not a calendar collection",
            caldav.base_url()
        )
    );
    let (result, _, text) = line(&stdout, "calendar", "005A0000002");
    assert_eq!(result, "FAILED", "{stdout}");
    assert!(
        text.starts_with(&format!("permanent failure: PROPFIND {}bo/nothing/: 404", caldav.base_url())),
        "{text}"
    );
    // Without [store], the sled store is listed as skipped.
    assert_eq!(stdout.lines().last(), Some("connections: 2 ok, 2 failed, 1 skipped"));
}

#[test]
fn the_example_config_has_nothing_to_reach_and_says_so() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/leadloop.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_leadloop"))
        .args(["validate", "--connect", "--config"])
        .arg(&example)
        .output()
        .expect("run leadloop");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let (result, took, text) = line(&stdout, "store", "sled");
    assert_eq!((result, took, text), ("skipped", 0, "/var/lib/leadloop: embedded, nothing to connect to"));
    let (result, _, text) = line(&stdout, "email", "directory");
    assert_eq!(result, "skipped");
    assert_eq!(text, "deliver = \"directory\" writes into /var/lib/leadloop/mail: nothing to connect to");
    assert_eq!(stdout.lines().last(), Some("connections: 0 ok, 0 failed, 2 skipped"));
}
