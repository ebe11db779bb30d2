//! A real CalDAV server on loopback for the tests: Radicale (PyPI, pinned in
//! `tests/requirements.txt`) from the peers' venv, with htpasswd auth (plain entries), a
//! temporary storage directory and a free port. The harness creates calendars and events
//! over plain HTTP, as a calendar client would.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::smtp_peer::{free_port, python};

/// The users Radicale knows, `user:password`.
pub const USERS: &[(&str, &str)] = &[("leadloop", "cal-s3cret"), ("ana", "ana-pw"), ("bo", "bo-pw")];

#[derive(Debug)]
pub struct CaldavPeer {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
    client: reqwest::Client,
}

fn password(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).map(|(_, p)| *p).unwrap_or("")
}

impl CaldavPeer {
    /// Starts Radicale with its storage under `dir`, and waits until it accepts connections.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(dir.join("collections"))?;
        let users: String = USERS.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
        std::fs::write(dir.join("users"), users)?;
        let config = format!(
            "[server]\nhosts = 127.0.0.1:{port}\n\n[auth]\ntype = htpasswd\nhtpasswd_filename = {users}\nhtpasswd_encryption = plain\ndelay = 0\n\n[rights]\ntype = owner_only\n\n[storage]\nfilesystem_folder = {storage}\n\n[logging]\nlevel = warning\nmask_passwords = True\n",
            users = dir.join("users").display(),
            storage = dir.join("collections").display(),
        );
        std::fs::write(dir.join("config"), config)?;
        let mut peer = Self { child: None, dir, port, client: reqwest::Client::new() };
        peer.launch()?;
        Ok(peer)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let child = Command::new(python())
            .args(["-m", "radicale", "--config"])
            .arg(self.dir.join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Radicale logs every start; kept in its directory, quoted if it fails to start.
            .stderr(
                std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("radicale.log"))?,
            )
            .spawn()?;
        self.child = Some(child);
        // Readiness: the port accepts connections (a process start, not a test's timing).
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(self.dir.join("radicale.log")).unwrap_or_default();
                anyhow::bail!("radicale exited at start: {status}\n{log}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "radicale did not listen on {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server (an outage); [`CaldavPeer::restart`] brings it back with its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// `/user/name/`.
    pub fn calendar_url(&self, user: &str, name: &str) -> String {
        format!("http://127.0.0.1:{}/{user}/{name}/", self.port)
    }

    async fn send(
        &self,
        user: &str,
        method: &str,
        url: &str,
        body: Option<String>,
    ) -> anyhow::Result<(StatusCode, String)> {
        let mut request = self
            .client
            .request(Method::from_bytes(method.as_bytes())?, url)
            .basic_auth(user, Some(password(user)));
        if let Some(body) = body {
            let kind = if method == "PUT" {
                "text/calendar; charset=utf-8"
            } else {
                "application/xml; charset=utf-8"
            };
            request = request.header("Content-Type", kind).body(body);
        }
        let response = request.send().await?;
        Ok((response.status(), response.text().await?))
    }

    /// Creates calendar `name` of `user` (MKCALENDAR).
    pub async fn create_calendar(&self, user: &str, name: &str) -> anyhow::Result<String> {
        // Radicale makes the principal collection on the user's first request.
        self.send(user, "PROPFIND", &format!("http://127.0.0.1:{}/{user}/", self.port), None).await?;
        let url = self.calendar_url(user, name);
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop><D:displayname>{name}</D:displayname></D:prop></D:set></C:mkcalendar>"#
        );
        let (status, text) = self.send(user, "MKCALENDAR", &url, Some(body)).await?;
        anyhow::ensure!(status == StatusCode::CREATED, "MKCALENDAR {url}: {status} {text}");
        Ok(url)
    }

    /// Writes `ics` as resource `name` in `user`'s calendar `calendar`.
    pub async fn put_event(&self, user: &str, calendar: &str, name: &str, ics: &str) -> anyhow::Result<()> {
        let url = format!("{}{name}", self.calendar_url(user, calendar));
        let (status, text) = self.send(user, "PUT", &url, Some(ics.to_owned())).await?;
        anyhow::ensure!(status.is_success(), "PUT {url}: {status} {text}");
        Ok(())
    }

    /// Writes a file straight into Radicale's storage, bypassing its checks (a malformed
    /// entry another client could have left there).
    pub fn plant_raw(&self, user: &str, calendar: &str, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.dir.join("collections/collection-root").join(user).join(calendar).join(name);
        std::fs::write(path, text)?;
        // Radicale caches per collection; a changed item with a new mtime is read afresh.
        Ok(())
    }

    /// The entity tag of resource `name` in `user`'s calendar `calendar`, if it exists.
    pub async fn etag(&self, user: &str, calendar: &str, name: &str) -> anyhow::Result<Option<String>> {
        let url = format!("{}{name}", self.calendar_url(user, calendar));
        let response = self
            .client
            .request(Method::from_bytes(b"PROPFIND")?, &url)
            .basic_auth(user, Some(password(user)))
            .header("Depth", "0")
            .body(r#"<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/></D:prop></D:propfind>"#)
            .send()
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let listing =
            leadloop_caldav::dav::parse_multistatus(&response.text().await?).map_err(anyhow::Error::msg)?;
        Ok(listing.responses.into_iter().find_map(|r| r.etag))
    }

    /// The resources of a calendar: (name, text), via GET of each listed href.
    pub async fn items(&self, user: &str, calendar: &str) -> anyhow::Result<Vec<(String, String)>> {
        let url = self.calendar_url(user, calendar);
        let response = self
            .client
            .request(Method::from_bytes(b"PROPFIND")?, &url)
            .basic_auth(user, Some(password(user)))
            .header("Depth", "1")
            .body(r#"<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/></D:prop></D:propfind>"#)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == StatusCode::MULTI_STATUS,
            "PROPFIND {url}: {}",
            response.status()
        );
        let listing =
            leadloop_caldav::dav::parse_multistatus(&response.text().await?).map_err(anyhow::Error::msg)?;
        let mut out = Vec::new();
        for response in listing.responses.iter().filter(|r| r.href.ends_with(".ics")) {
            let name = response.href.rsplit('/').next().unwrap_or(&response.href).to_owned();
            let (_, body) = self.send(user, "GET", &format!("{url}{name}"), None).await?;
            out.push((name, body));
        }
        out.sort();
        Ok(out)
    }
}

impl Drop for CaldavPeer {
    fn drop(&mut self) {
        self.stop();
    }
}
