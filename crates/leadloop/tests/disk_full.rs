//! Fault cases 12–14 (docs/faults.md): the daemon on a disk that fills up or stops answering.
//! The real binary syncs leads from the Salesforce emulator, routes each to a rep and sends the
//! rep an SLA alert; the disk under its state (a small tmpfs this test mounts: the tests run as
//! root, as CI does) or under its mail directory fills up, or a flush never returns (failpoint
//! `store.flush_stall`). The daemon must stop with exit 74 and a message naming the path, stop
//! answering `/readyz` with 200 once it knows, and after space returns and it restarts, every
//! lead's alert must arrive (counted at the SMTP peer or in the mail directory).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leadloop_sf_emulator::{Config as EmuConfig, Emulator, SeedSpec, seed};
use leadloop_tests::pki::TestPki;
use leadloop_tests::smtp_peer::{PASSWORD, SmtpPeer, USER};

/// Leads synced in each case: enough to fill a 2 MiB state directory part-way through.
const LEADS: usize = 1500;

fn mount(dir: &Path, size: &str) {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(status.success(), "cannot mount a tmpfs at {} (this test needs root)", dir.display());
}

fn remount(dir: &Path, size: &str) {
    let status =
        Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(dir).status().expect("mount");
    assert!(status.success(), "cannot remount {}", dir.display());
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The emulator with one rep and `LEADS` leads in the queue, each with a lead source (so each
/// qualifies and is routed to the rep, who gets an alert).
async fn crm() -> (Emulator, String) {
    let emu = Emulator::start(EmuConfig::default()).await.expect("emulator");
    let ids =
        seed::populate(&emu, &SeedSpec { seed: 12, managers: 1, reps: 1, accounts: 0, leads: 0, tasks: 0 });
    let leads = (0..LEADS)
        .map(|n| {
            serde_json::json!({
                "FirstName": "Lee", "LastName": format!("Full{n:05}"), "Company": format!("Disk {n} Ltd"),
                "Email": format!("lee{n}@disk{n}.example"), "LeadSource": "Web", "Status": "Open - Not Contacted", "OwnerId": ids.queue,
            })
            .as_object()
            .cloned()
            .unwrap_or_default()
        })
        .collect();
    emu.insert_many("Lead", leads);
    (emu, ids.reps[0].clone())
}

/// The daemon's config: the emulator as CRM, every lead routed to `rep`, mail as `email`.
fn write_config(dir: &Path, emu: &Emulator, rep: &str, email: &str, store: &str) -> PathBuf {
    let secret = dir.join("sf-secret");
    std::fs::write(&secret, EmuConfig::default().client_secret).expect("secret");
    let path = dir.join("leadloop.toml");
    let text = format!(
        r#"
[daemon]
max_idle = "1s"
shutdown_grace = "5s"

[store]
{store}

[crm]
type = "salesforce"

[crm.salesforce]
login_url = "{url}"
auth = "client_credentials"
client_id = "{client}"
client_secret_file = "{secret}"
page_size = 500

[scoring]
threshold = 10
[[scoring.fit]]
name = "any source"
field = "lead_source"
contains = [""]
points = 20

[routing]
fallback = "{rep}"

{email}
"#,
        url = emu.url(),
        client = EmuConfig::default().consumer_key,
        secret = secret.display(),
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn smtp_email(dir: &Path, pki: &TestPki, peer: &SmtpPeer) -> String {
    let password = dir.join("smtp_password");
    std::fs::write(&password, PASSWORD).expect("password");
    format!(
        "[email]\nfrom = \"leadloop <l@corp.example>\"\n[email.smtp]\nhost = \"localhost\"\nport = {}\nusername = \"{USER}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
        peer.port,
        password.display(),
        pki.ca_pem.display()
    )
}

/// Lines read from the daemon's stderr, each with when it was read.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;
/// `/readyz` answers (`None`: no answer), each with when its request started.
type Answers = Arc<Mutex<Vec<(Instant, Option<u16>)>>>;

/// A running `leadloop run`: its stderr lines and `/readyz` answers, each with when it came.
struct Daemon {
    child: Child,
    lines: Lines,
    readyz: Answers,
    poller: tokio::task::JoinHandle<()>,
}

impl Daemon {
    fn start(config: &Path, state: &Path, env: &[(&str, &str)]) -> Self {
        let port = leadloop_tests::smtp_peer::free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_leadloop"));
        command
            .args(["run", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .args(["--admin-listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn daemon");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), line));
                }
            }
        });
        // `/readyz` every 10 ms; each answer is kept with when its request started.
        let readyz = Arc::new(Mutex::new(Vec::new()));
        let poller = tokio::spawn({
            let readyz = Arc::clone(&readyz);
            async move {
                let client =
                    reqwest::Client::builder().timeout(Duration::from_millis(500)).build().expect("client");
                loop {
                    let asked = Instant::now();
                    let status = client
                        .get(format!("http://127.0.0.1:{port}/readyz"))
                        .send()
                        .await
                        .ok()
                        .map(|r| r.status().as_u16());
                    readyz.lock().unwrap_or_else(|p| p.into_inner()).push((asked, status));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Self { child, lines, readyz, poller }
    }

    fn stderr(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// When a line containing `text` was read, if one was.
    fn line_at(&self, text: &str) -> Option<Instant> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().find(|(_, l)| l.contains(text)).map(|(at, _)| *at)
    }

    async fn wait_exit(&mut self, limit: Duration) -> Option<(ExitStatus, Instant)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some((status, Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    fn was_ready(&self) -> bool {
        self.readyz.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|(_, s)| *s == Some(200))
    }

    /// `/readyz` answers to requests made after `after`.
    fn readyz_after(&self, after: Instant) -> Vec<Option<u16>> {
        let readyz = self.readyz.lock().unwrap_or_else(|p| p.into_inner());
        readyz.iter().filter(|(asked, _)| *asked > after).map(|(_, s)| *s).collect()
    }

    async fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let exited = self.wait_exit(Duration::from_secs(20)).await;
        exited.and_then(|(status, _)| status.code())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.poller.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a daemon started on a full or failing disk to stop by itself, then checks what
/// the issue asks: exit 74, soon after it knew, with a message naming `path`, and no `/readyz`
/// 200 once it had said so. Returns what it printed.
async fn expect_exit_74(daemon: &mut Daemon, path: &Path, saying: &str) -> String {
    let Some((status, exited_at)) = daemon.wait_exit(Duration::from_secs(45)).await else {
        panic!("the daemon did not stop within 45 s on a failing disk:\n{}", daemon.stderr());
    };
    // The stderr reader may lag the exit by a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stderr = daemon.stderr();
    assert_eq!(status.code(), Some(74), "{stderr}");
    assert!(
        daemon.was_ready(),
        "the disk filled before the daemon was ready; the test needs it to fill later:\n{stderr}"
    );
    let known = daemon.line_at("draining and stopping (exit 74)").unwrap_or_else(|| panic!("{stderr}"));
    let took = exited_at.saturating_duration_since(known);
    // shutdown_grace (5 s) and the listeners' 2 s each bound the drain.
    assert!(took < Duration::from_secs(10), "exit {took:?} after the failure was known:\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("leadloop stopped:"))
        .unwrap_or_else(|| panic!("no closing line saying why:\n{stderr}"));
    assert!(line.contains(&path.display().to_string()), "the message names {}: {line}", path.display());
    assert!(line.contains(saying), "{line}");
    let after = daemon.readyz_after(known);
    assert!(!after.contains(&Some(200)), "/readyz said 200 after the daemon knew: {after:?}");
    let saw_503 = after.contains(&Some(503));
    eprintln!("  stopped {took:?} after it knew; /readyz 503 seen while draining: {saw_503}");
    stderr
}

/// Distinct alerts (by Message-ID) and all messages the SMTP peer holds.
async fn alerts(peer: &SmtpPeer) -> (usize, usize) {
    let messages = peer.messages().await.expect("messages");
    let ids: std::collections::BTreeSet<String> =
        messages.iter().filter_map(|m| m["message_id"].as_str().map(str::to_owned)).collect();
    (ids.len(), messages.len())
}

/// Restarts the daemon on `state` with room again and waits until every lead's alert arrived.
async fn restart_until_every_alert(config: &Path, state: &Path, peer: &SmtpPeer) -> (usize, usize) {
    let daemon = Daemon::start(config, state, &[]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut counted = alerts(peer).await;
    while counted.0 < LEADS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        counted = alerts(peer).await;
    }
    let stderr = daemon.stderr();
    assert_eq!(daemon.stop().await, Some(0), "the restarted daemon stops cleanly:\n{stderr}");
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_12_a_full_state_directory_stops_the_daemon_with_74_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    mount(&small, "2m");
    let _unmount = Unmount(small.clone());
    let state = small.join("state");
    let pki = TestPki::create(dir.path()).expect("pki");
    let peer = SmtpPeer::start(Some(&pki)).expect("smtp peer");
    let (emu, rep) = crm().await;
    let config = write_config(dir.path(), &emu, &rep, &smtp_email(dir.path(), &pki, &peer), "");

    let mut daemon = Daemon::start(&config, &state, &[]);
    let stderr = expect_exit_74(&mut daemon, &state, "no space left in state directory").await;
    drop(daemon);
    let before = alerts(&peer).await;
    assert!(before.0 < LEADS, "the disk filled only after every alert was out: {before:?}\n{stderr}");

    remount(&small, "256m");
    let (distinct, total) = restart_until_every_alert(&config, &state, &peer).await;
    eprintln!(
        "fault 12: ENOSPC on the state dir under the daemon (2 MiB tmpfs, {LEADS} leads) ×1 — lost {}, duplicated {} ({} alerts before the stop)",
        LEADS.saturating_sub(distinct),
        total - distinct,
        before.0
    );
    assert_eq!(distinct, LEADS, "every lead's alert arrives once space returns");
    // Only messages accepted but not yet recorded when the disk filled are sent again (at most
    // one chunk of outcomes: 4 × the relay's concurrency of 8).
    assert!(total - distinct <= 32, "duplicated {}", total - distinct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_13_a_flush_that_never_returns_stops_the_daemon_with_74_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let pki = TestPki::create(dir.path()).expect("pki");
    let peer = SmtpPeer::start(Some(&pki)).expect("smtp peer");
    let (emu, rep) = crm().await;
    let config =
        write_config(dir.path(), &emu, &rep, &smtp_email(dir.path(), &pki, &peer), "flush_timeout = \"1s\"");

    // The 40th flush (well after start) never returns, nor any after it, as on a dying disk.
    let mut daemon = Daemon::start(&config, &state, &[("LEADLOOP_FAILPOINTS", "store.flush_stall@40")]);
    expect_exit_74(&mut daemon, &state, "did not finish writing to disk within 1 s").await;
    drop(daemon);
    let before = alerts(&peer).await;

    let (distinct, total) = restart_until_every_alert(&config, &state, &peer).await;
    eprintln!(
        "fault 13: a flush that never returns (store.flush_stall@40, flush_timeout 1 s) ×1 — lost {}, duplicated {} ({} alerts before the stop)",
        LEADS.saturating_sub(distinct),
        total - distinct,
        before.0
    );
    assert_eq!(distinct, LEADS, "every lead's alert arrives after the restart");
    assert!(total - distinct <= 32, "duplicated {}", total - distinct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_14_a_full_mail_directory_stops_the_daemon_with_74_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mail = dir.path().join("mail");
    std::fs::create_dir(&mail).expect("mkdir");
    mount(&mail, "256k");
    let _unmount = Unmount(mail.clone());
    let (emu, rep) = crm().await;
    let email = format!(
        "[email]\ndeliver = \"directory\"\ndirectory = \"{}\"\nfrom = \"leadloop <l@corp.example>\"\n",
        mail.display()
    );
    let config = write_config(dir.path(), &emu, &rep, &email, "");

    let mut daemon = Daemon::start(&config, &state, &[]);
    expect_exit_74(&mut daemon, &mail, "cannot write .eml into").await;
    drop(daemon);
    let emails = |dir: &Path| {
        std::fs::read_dir(dir)
            .expect("read mail dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
            .count()
    };
    let before = emails(&mail);
    assert!(before < LEADS, "the mail directory filled only after every alert was out");

    remount(&mail, "256m");
    let restarted = Daemon::start(&config, &state, &[]);
    let deadline = Instant::now() + Duration::from_secs(180);
    while emails(&mail) < LEADS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stderr = restarted.stderr();
    assert_eq!(restarted.stop().await, Some(0), "{stderr}");
    let after = emails(&mail);
    let partial = std::fs::read_dir(&mail)
        .expect("read mail dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    eprintln!(
        "fault 14: ENOSPC on the mail directory (256 KiB tmpfs, {LEADS} leads) ×1 — lost {}, duplicated 0 (one file per key; {before} written before the stop, {partial} partial files)",
        LEADS.saturating_sub(after)
    );
    assert_eq!(after, LEADS, "every lead's alert is written once space returns");
    assert_eq!(partial, 0, "no half-written file is left behind");
}

/// `leadloop export` into a file system that fills up: exit 74 naming the file, and no partial
/// file left to hold the space (or to be mistaken for a backup).
#[tokio::test]
async fn an_export_into_a_full_file_system_exits_74_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    {
        let store = leadloop_store::SledStore::open(&leadloop_store::SledConfig::new(&state)).expect("open");
        for n in 0..2000 {
            leadloop_store::Store::commit(store.as_ref(), leadloop_tests::crash_batch(n))
                .await
                .expect("commit");
        }
    }
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    mount(&small, "64k");
    let _unmount = Unmount(small.clone());
    let out = small.join("backup.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_leadloop"))
        .arg("export")
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/leadloop.toml"))
        .arg("--state-dir")
        .arg(&state)
        .arg(&out)
        .output()
        .expect("run export");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(74), "{stderr}");
    assert!(stderr.contains(&small.display().to_string()) && stderr.contains("No space left"), "{stderr}");
    let left: Vec<_> =
        std::fs::read_dir(&small).expect("read").filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
