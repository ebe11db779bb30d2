//! A real SMTP server on loopback for the tests: `tests/peers/smtp_peer.py` (aiosmtpd) with
//! STARTTLS and AUTH, read back and steered through its small HTTP interface.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

use serde_json::{Value, json};

use crate::pki::TestPki;

pub const USER: &str = "leadloop";
pub const PASSWORD: &str = "s3cret-for-tests";

/// The Python with the test peers installed: `$LEADLOOP_TEST_PYTHON`, or the venv that
/// `tests/run` creates in `target/peers-venv`.
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("LEADLOOP_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = workspace_root().join("target/peers-venv/bin/python");
    assert!(venv.exists(), "{} is missing: run `bash tests/run`, which creates it", venv.display());
    venv
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// An `[email]` config that sends to `localhost:port` over STARTTLS with AUTH, trusting `pki`'s
/// CA; the password is written to a file in `dir`.
pub fn email_config(
    dir: &std::path::Path,
    pki: &TestPki,
    port: u16,
) -> std::io::Result<leadloop_smtp::EmailConfig> {
    let password = dir.join("smtp_password");
    std::fs::write(&password, format!("{PASSWORD}\n"))?;
    Ok(leadloop_smtp::EmailConfig {
        deliver: leadloop_smtp::Deliver::Smtp,
        from: "leadloop <leadloop@corp.example>".into(),
        reply_to: Some("sales-ops@corp.example".into()),
        nurture_from: Some("Corp Marketing <marketing@corp.example>".into()),
        nurture_reply_to: None,
        templates_dir: None,
        directory: None,
        message_id_domain: None,
        smtp: Some(leadloop_smtp::SmtpConfig {
            host: "localhost".into(),
            port: Some(port),
            tls: leadloop_smtp::TlsMode::Starttls,
            username: Some(USER.into()),
            password_file: Some(password),
            password_env: None,
            ca_file: Some(pki.ca_pem.clone()),
            connect_timeout: std::time::Duration::from_secs(5),
            timeout: std::time::Duration::from_secs(30),
            pool_size: 4,
        }),
    })
}

#[derive(Debug)]
pub struct SmtpPeer {
    child: Child,
    _stdin: ChildStdin,
    pub port: u16,
    http: String,
    client: reqwest::Client,
}

impl SmtpPeer {
    /// Starts the peer; with `pki`, it offers STARTTLS with the leaf certificate and requires
    /// TLS before AUTH and mail.
    pub fn start(pki: Option<&TestPki>) -> anyhow::Result<Self> {
        Self::start_with(pki, false)
    }

    /// As [`SmtpPeer::start`]; with `implicit_tls`, TLS from the first byte (SMTPS).
    pub fn start_with(pki: Option<&TestPki>, implicit_tls: bool) -> anyhow::Result<Self> {
        let port = free_port();
        let http_port = free_port();
        let mut command = Command::new(python());
        command
            .arg(workspace_root().join("tests/peers/smtp_peer.py"))
            .args(["--port", &port.to_string(), "--http-port", &http_port.to_string()])
            .args(["--user", USER, "--password", PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(pki) = pki {
            command.arg("--cert").arg(&pki.leaf_pem).arg("--key").arg(&pki.leaf_key);
        }
        if implicit_tls {
            command.arg("--implicit-tls");
        }
        let mut child = command.spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "ready", "SMTP peer did not start: {line:?}");
        Ok(Self {
            child,
            _stdin: stdin,
            port,
            http: format!("http://127.0.0.1:{http_port}"),
            client: reqwest::Client::new(),
        })
    }

    pub async fn messages(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self.client.get(format!("{}/messages", self.http)).send().await?.json().await?)
    }

    pub async fn faults(&self, faults: Value) -> anyhow::Result<()> {
        self.client.post(format!("{}/faults", self.http)).json(&faults).send().await?.error_for_status()?;
        Ok(())
    }

    pub async fn reset(&self) -> anyhow::Result<()> {
        self.client.post(format!("{}/reset", self.http)).json(&json!({})).send().await?.error_for_status()?;
        Ok(())
    }
}

impl Drop for SmtpPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
