//! The `leadloop` binary as operators use it: validate, run, signals, the state-directory lock,
//! export and import. Each test starts the real binary.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leadloop"))
}

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/leadloop.toml")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn signal(child: &Child, name: &str) {
    let status =
        Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
}

/// Waits for the child to exit, up to `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(config: &Path, state: &Path) -> Self {
        let port = free_port();
        let child = bin()
            .args(["run", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .args(["--admin-listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        Self { child, port }
    }

    /// Waits until `/readyz` answers 200 (the listener binds before the daemon is ready).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _) = self.get("/readyz").await;
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "daemon never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET `path` once the listener answers (it binds before reporting ready).
    async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match reqwest::get(&url).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    return (status, response.text().await.expect("body"));
                }
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(error) => panic!("daemon never answered {url}: {error}"),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn example_config_validates() {
    let output = bin().arg("validate").arg("--config").arg(example_config()).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("valid"), "{stderr}");
}

#[test]
fn unknown_key_exits_78_naming_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = std::fs::read_to_string(example_config()).expect("read example");
    let line = text.lines().count() + 1;
    text.push_str("surprise = true\n");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).expect("write");
    let output = bin().arg("validate").arg("--config").arg(&path).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(&format!("bad.toml:{line}:1:")), "line {line} not named: {stderr}");
    assert!(stderr.contains("unknown field `surprise`"), "{stderr}");
    // `run` refuses the same file with the same code, before touching any state.
    let state = dir.path().join("state");
    let output =
        bin().arg("run").arg("--config").arg(&path).arg("--state-dir").arg(&state).output().expect("run");
    assert_eq!(output.status.code(), Some(78));
    assert!(!state.exists(), "no partial state for a bad config");
}

#[test]
fn missing_config_file_is_named() {
    let output = bin().args(["validate", "--config", "/nonexistent/leadloop.toml"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78));
    assert!(stderr.contains("/nonexistent/leadloop.toml: cannot read config file"), "{stderr}");
}

#[tokio::test]
async fn daemon_serves_health_and_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(&example_config(), &state);
    let (status, body) = daemon.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    daemon.wait_ready().await;
    let (status, mut metrics) = daemon.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("leadloop_build_info{version="), "{metrics}");
    // The hand-off gauges are counted by a background scan that starts with the daemon.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics.contains("leadloop_sla_open_handoffs") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = daemon.get("/metrics").await.1;
    }
    assert!(metrics.contains("leadloop_sla_open_handoffs 0"), "{metrics}");
    assert!(metrics.contains("leadloop_funnel_leads{stage=\"marketing_qualified\"} 0"), "{metrics}");
    assert!(metrics.contains("leadloop_sla_overdue_handoffs{step=\"reminder\"} 0"), "{metrics}");
    assert!(metrics.contains("leadloop_ready 1"), "{metrics}");

    // A second daemon on the same state directory fails at once, naming the holder.
    let second = bin()
        .args(["run", "--config"])
        .arg(example_config())
        .arg("--state-dir")
        .arg(&state)
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("second daemon");
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(74), "{second_err}");
    assert!(
        second_err.contains(&format!("in use by another leadloop (pid {})", daemon.child.id())),
        "{second_err}"
    );

    let started = Instant::now();
    signal(&daemon.child, "TERM");
    let status = wait_exit(&mut daemon.child, Duration::from_secs(10)).expect("exits within 10 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", stderr_of(&mut daemon.child));
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = stderr_of(&mut daemon.child);
    assert!(log.contains("SIGTERM received; draining") && log.contains("leadloop stopped"), "{log}");
}

#[tokio::test]
async fn sighup_with_a_broken_config_keeps_the_running_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("leadloop.toml");
    std::fs::copy(example_config(), &config).expect("copy");
    let mut daemon = Daemon::start(&config, &dir.path().join("state"));
    daemon.wait_ready().await;

    std::fs::write(&config, "[daemon]\nmax_idle = 5\n").expect("break config");
    signal(&daemon.child, "HUP");
    // Fix it again and reload, so the log shows both outcomes in order.
    let fixed = std::fs::read_to_string(example_config()).expect("read");
    let deadline = Instant::now() + Duration::from_secs(10);
    // The daemon keeps serving while and after it refuses the reload.
    while Instant::now() < deadline {
        assert_eq!(daemon.get("/healthz").await.0, 200);
        let (_, metrics) = daemon.get("/metrics").await;
        if metrics.contains("leadloop_config_reloads_total{result=\"rejected\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    std::fs::write(&config, fixed).expect("fix config");
    signal(&daemon.child, "HUP");
    while Instant::now() < deadline {
        let (_, metrics) = daemon.get("/metrics").await;
        if metrics.contains("leadloop_config_reloads_total{result=\"applied\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    signal(&daemon.child, "TERM");
    assert_eq!(wait_exit(&mut daemon.child, Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
    let log = stderr_of(&mut daemon.child);
    let refused = log.find("config reload refused; keeping the running config").expect(&log);
    let applied = log.find("config reloaded").expect(&log);
    assert!(refused < applied, "{log}");
    assert!(log.contains("max_idle"), "the refusal names the key: {log}");
}

#[test]
fn unusable_state_dir_fails_with_exit_74() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("write");
    let output = bin()
        .args(["run", "--config"])
        .arg(example_config())
        .arg("--state-dir")
        .arg(file.join("state"))
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(74), "{stderr}");
    assert!(stderr.contains("cannot use state directory"), "{stderr}");
}

/// A damaged store (a file cut short) stops the daemon at start with exit 74 and what to do,
/// instead of opening empty and sending every alert again; `--state-dir` naming a file says so.
#[tokio::test]
async fn a_damaged_store_or_a_file_as_state_dir_exits_74_saying_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    state_with_a_handoff(&state).await;
    let file = state.join("db").join("db");
    std::fs::OpenOptions::new().write(true).open(&file).expect("open").set_len(10).expect("truncate");
    let run = |state: &Path| {
        bin()
            .args(["run", "--config"])
            .arg(example_config())
            .arg("--state-dir")
            .arg(state)
            .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
            .output()
            .expect("run")
    };
    let output = run(&state);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(74), "{stderr}");
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(stderr.contains("restore it from a backup"), "{stderr}");

    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "").expect("write");
    let output = run(&a_file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(74), "{stderr}");
    assert!(stderr.contains("is a file, not a directory"), "{stderr}");
}

#[tokio::test]
async fn export_then_import_gives_equal_checksums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // Let a daemon write the configured people, then stop it.
    let mut daemon = Daemon::start(&example_config(), &state);
    daemon.wait_ready().await;
    signal(&daemon.child, "TERM");
    assert_eq!(wait_exit(&mut daemon.child, Duration::from_secs(10)).and_then(|s| s.code()), Some(0));

    let backup = dir.path().join("backup.jsonl");
    let export = bin().arg("export").arg("--state-dir").arg(&state).arg(&backup).output().expect("export");
    assert_eq!(export.status.code(), Some(0), "{}", String::from_utf8_lossy(&export.stderr));
    let first: serde_json::Value = serde_json::from_slice(&export.stdout).expect("summary json");
    assert_eq!(first["records"], 4, "the four configured people: {first}");

    let restored = dir.path().join("restored");
    let import = bin().arg("import").arg("--state-dir").arg(&restored).arg(&backup).output().expect("import");
    assert_eq!(import.status.code(), Some(0), "{}", String::from_utf8_lossy(&import.stderr));
    let again = bin()
        .arg("export")
        .arg("--state-dir")
        .arg(&restored)
        .arg(dir.path().join("again.jsonl"))
        .output()
        .expect("export");
    let second: serde_json::Value = serde_json::from_slice(&again.stdout).expect("summary json");
    let records = |v: &serde_json::Value| v["records"].as_i64().unwrap_or(-1);
    eprintln!(
        "fault 10: export then import ×1 — lost {}, duplicated {} (records {} → {}; equal checksums: {})",
        (records(&first) - records(&second)).max(0),
        (records(&second) - records(&first)).max(0),
        records(&first),
        records(&second),
        first == second
    );
    assert_eq!(first, second);

    // Importing again into the now non-empty directory is refused.
    let twice = bin().arg("import").arg("--state-dir").arg(&restored).arg(&backup).output().expect("import");
    assert_eq!(twice.status.code(), Some(74));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("not empty"));
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let output = bin().args(["run", "--no-such-flag"]).output().expect("run");
    assert_eq!(output.status.code(), Some(64));
    let output = bin().arg("frobnicate").output().expect("run");
    assert_eq!(output.status.code(), Some(64));
    let output = bin().arg("--help").output().expect("run");
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("validate"));
    // `--version` is the workspace's version, the one every crate carries.
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
        .expect("workspace manifest");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("workspace version");
    let output = bin().arg("--version").output().expect("run");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("leadloop {version}"));
}

#[tokio::test]
async fn systemd_is_told_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let port = free_port();
    // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's pid.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_leadloop"))
        .args(["run", "--config"])
        .arg(example_config())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--admin-listen", &format!("127.0.0.1:{port}")])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let guard = KillOnDrop(child.id());
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    // READY=1 first, then a watchdog ping within the 1 s half-interval.
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("no notification ({e}); so far: {seen:?}"));
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    signal(&child, "TERM");
    while !seen.contains("STOPPING=1") {
        let n = socket.recv(&mut buf).expect("notification");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
    // It exited; killing its pid now could hit a new process.
    std::mem::forget(guard);
    let ready = seen.find("READY=1").expect("ready");
    let stopping = seen.find("STOPPING=1").expect("stopping");
    assert!(ready < stopping, "{seen}");
}

/// Kills a process by pid when dropped, so a failed assertion leaves no daemon behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-KILL").arg(self.0.to_string()).stderr(Stdio::null()).status();
    }
}

#[test]
fn validate_locates_template_errors_and_unreadable_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).expect("mkdir");
    std::fs::write(templates.join("sla_reminder.txt.j2"), "Hi {{ owner.name }}\n{{ lead.nmae }}\n")
        .expect("write");
    let config = dir.path().join("leadloop.toml");
    std::fs::write(
        &config,
        format!(
            "[email]\nfrom = \"leadloop <l@corp.example>\"\ntemplates_dir = \"{}\"\n[email.smtp]\nhost = \"smtp.corp.example\"\nusername = \"u\"\npassword_file = \"{}\"\n",
            templates.display(),
            dir.path().join("missing-password").display()
        ),
    )
    .expect("write config");
    let output = bin().arg("validate").arg("--config").arg(&config).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("email.smtp.password_file: cannot read secret file"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2: unknown variable `lead.nmae`",
            templates.join("sla_reminder.txt.j2").display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_test_sends_through_starttls_and_prints_the_reply_without_the_password() {
    use leadloop_tests::pki::TestPki;
    use leadloop_tests::smtp_peer::{PASSWORD, SmtpPeer, USER};
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::create(dir.path()).expect("pki");
    let peer = SmtpPeer::start(Some(&pki)).expect("peer");
    std::fs::write(dir.path().join("smtp_password"), PASSWORD).expect("write");
    let config = dir.path().join("leadloop.toml");
    std::fs::write(
        &config,
        format!(
            "[email]\nfrom = \"leadloop <l@corp.example>\"\n[email.smtp]\nhost = \"localhost\"\nport = {}\nusername = \"{USER}\"\npassword_file = \"smtp_password\"\nca_file = \"{}\"\n",
            peer.port,
            pki.ca_pem.display()
        ),
    )
    .expect("write config");
    let output = tokio::task::spawn_blocking({
        let config = config.clone();
        let credentials = dir.path().to_path_buf();
        move || {
            bin()
                .args(["email", "test", "--to", "rep@corp.example", "--config"])
                .arg(&config)
                .env("CREDENTIALS_DIRECTORY", credentials)
                .output()
                .expect("run")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("@corp.example> 250"), "{stdout}");
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    let messages = peer.messages().await.expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["tls"], true);
    assert_eq!(messages[0]["rcpt_tos"], serde_json::json!(["rep@corp.example"]));
}

/// A lead whose CRM name holds terminal escapes and a line break is shown escaped in the
/// human tables (`leads list`, `sla list`, `sla show`): one row, no escape byte reaches the
/// terminal. JSON output carries the same value, as JSON.
#[tokio::test]
async fn terminal_tables_escape_control_characters_from_crm_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    state_with_a_handoff_named(&state, "Ana\u{1b}[2J\nForged row").await;
    for command in [&["leads", "list"][..], &["sla", "list"], &["sla", "show", "00Q1"]] {
        let output = bin()
            .args(command)
            .arg("--config")
            .arg(example_config())
            .arg("--state-dir")
            .arg(&state)
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(!text.contains('\u{1b}'), "{command:?}: {text:?}");
        assert!(text.contains("Ana\\u001b[2J\\u000aForged row"), "{command:?}: {text}");
        assert!(!text.lines().any(|l| l.starts_with("Forged row")), "{command:?}: {text}");
    }
    let output = bin()
        .args(["leads", "list", "--format", "json", "--config"])
        .arg(example_config())
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("run");
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(rows[0]["lead"], "Ana\u{1b}[2J\nForged row");
}

/// A state directory with one hand-off that started 30 hours ago (so its reminder is out).
async fn state_with_a_handoff(dir: &Path) {
    state_with_a_handoff_named(dir, "Ana").await;
}

async fn state_with_a_handoff_named(dir: &Path, first_name: &str) {
    use leadloop_core::sla::{SlaConfig, SlaRules};
    use leadloop_core::{Lead, Person, PersonId, Role, VirtualClock};
    let store: std::sync::Arc<dyn leadloop_store::Store> =
        leadloop_store::SledStore::open(&leadloop_store::SledConfig::new(dir)).expect("store");
    let clock = std::sync::Arc::new(VirtualClock::new(chrono::Utc::now() - chrono::TimeDelta::hours(30)));
    let engine = leadloop_engine::Engine::new(
        store,
        clock.clone(),
        std::sync::Arc::new(SlaRules::new(SlaConfig::default())),
    );
    engine
        .upsert_person(Person {
            id: PersonId::new("005A0000001"),
            email: "ana.rep@example.com".into(),
            name: "Ana Rep".into(),
            manager: None,
            time_zone: None,
            role: Role::Rep,
            active: true,
            capacity: None,
        })
        .await
        .expect("person");
    let mut lead = Lead::new("00Q1");
    lead.first_name = Some(first_name.into());
    lead.status = Some("Open - Not Contacted".into());
    lead.owner_id = Some(PersonId::new("005A0000001"));
    engine.upsert_lead(lead).await.expect("lead");
    clock.advance(chrono::TimeDelta::hours(30));
    engine.tick().await.expect("tick");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_list_and_show_read_the_store_or_a_running_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    state_with_a_handoff(&state).await;
    let list = |extra: &[&str]| {
        bin()
            .args(["sla", "list", "--format", "json", "--config"])
            .arg(example_config())
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .output()
            .expect("run")
    };
    let output = list(&["--overdue"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["lead_id"], "00Q1");
    assert_eq!(rows[0]["last_step"], "reminder");
    assert_eq!(rows[0]["next_step"], "manager");
    assert_eq!(rows[0]["overdue"], true);
    let other_rep: serde_json::Value =
        serde_json::from_slice(&list(&["--rep", "005B"]).stdout).expect("json");
    assert_eq!(other_rep, serde_json::json!([]));

    // `leads show` explains the score (the example config scores titles and activities).
    let shown = bin()
        .args(["leads", "show", "00Q1", "--config"])
        .arg(example_config())
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(0), "{}", String::from_utf8_lossy(&shown.stderr));
    assert!(
        text.contains("score     0 (fit 0 + engagement 0; threshold 65; engagement halves every 30 days)"),
        "{text}"
    );
    assert!(text.contains("handoff_started"), "{text}");

    let listed = bin()
        .args(["leads", "list", "--stage", "just_a_name", "--format", "json", "--config"])
        .arg(example_config())
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("run");
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(rows[0]["lead_id"], "00Q1");
    assert_eq!(rows[0]["open_handoff"], 1);

    // With a daemon holding the state directory, the same command asks its admin listener.
    let daemon = Daemon::start(&example_config(), &state);
    daemon.wait_ready().await;
    let admin = format!("127.0.0.1:{}", daemon.port);
    let output = tokio::task::spawn_blocking({
        let state = state.clone();
        move || {
            bin()
                .args(["sla", "show", "00Q1", "--format", "json", "--admin-listen", &admin, "--config"])
                .arg(example_config())
                .arg("--state-dir")
                .arg(&state)
                .output()
                .expect("run")
        }
    })
    .await
    .expect("join");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(shown["open_handoff"]["handoff"], 1);
    let kinds: Vec<&str> =
        shown["history"].as_array().expect("history").iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"handoff_started"), "{kinds:?}");
    // The alert is in the outbox (queued, or sent if the daemon's relay got to it first).
    let emails = shown["emails"].as_array().expect("emails");
    assert_eq!(emails[0]["step"], "alert", "{emails:?}");
    assert!(["queued", "sent"].contains(&emails[0]["state"].as_str().unwrap_or_default()), "{emails:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_funnel_report_counts_inventory_flow_conversion_and_time_in_stage() {
    use leadloop_core::rules::{LifecycleConfig, Rules};
    use leadloop_core::scoring::{EngagementRule, ScoringConfig};
    use leadloop_core::sla::{SlaConfig, SlaRules};
    use leadloop_core::{Lead, VirtualClock};
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    {
        let store: std::sync::Arc<dyn leadloop_store::Store> =
            leadloop_store::SledStore::open(&leadloop_store::SledConfig::new(&state)).expect("store");
        let clock = std::sync::Arc::new(VirtualClock::new(chrono::Utc::now() - chrono::TimeDelta::days(2)));
        let scoring = ScoringConfig {
            threshold: 50.0,
            engagement: vec![EngagementRule {
                name: "demo".into(),
                activity: "form_submit".into(),
                points: 60.0,
                cap: None,
                per: Duration::from_secs(86_400),
            }],
            ..ScoringConfig::default()
        };
        let lifecycle = LifecycleConfig {
            status_stages: [("Working - Contacted".to_owned(), leadloop_core::Stage::SalesQualified)].into(),
        };
        let rules = Rules::new(SlaRules::new(SlaConfig::default()), scoring, lifecycle, Default::default());
        let engine = leadloop_engine::Engine::new(store, clock.clone(), std::sync::Arc::new(rules));
        for id in ["a", "b", "c"] {
            engine.upsert_lead(Lead::new(id)).await.expect("lead");
        }
        clock.advance(chrono::TimeDelta::hours(2));
        for id in ["a", "b"] {
            let activity = leadloop_core::connector::Activity {
                lead_id: leadloop_core::LeadId::new(id),
                at: chrono::Utc::now(),
                kind: "form_submit".into(),
                detail: Default::default(),
            };
            engine.record_activity(activity).await.expect("activity");
        }
        clock.advance(chrono::TimeDelta::hours(4));
        let mut a = Lead::new("a");
        a.status = Some("Working - Contacted".into());
        engine.upsert_lead(a).await.expect("status");
    }
    let output = bin()
        .args(["report", "funnel", "--since", "7d", "--format", "json", "--config"])
        .arg(example_config())
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let stage = |name: &str| {
        report["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .find(|s| s["stage"] == name)
            .cloned()
            .expect("stage")
    };
    // a and b: Just a Name → Engaged → MQL at +2 h; a → SQL at +6 h; c stays.
    assert_eq!(stage("just_a_name")["inventory"], 1);
    assert_eq!(stage("just_a_name")["left"], 2);
    assert_eq!(stage("just_a_name")["converted"], 2);
    assert_eq!(stage("just_a_name")["median_hours_in_stage"], 2.0);
    assert_eq!(stage("marketing_qualified")["entered"], 2);
    assert_eq!(stage("marketing_qualified")["inventory"], 1);
    assert_eq!(stage("marketing_qualified")["conversion_rate"], 1.0);
    assert_eq!(stage("marketing_qualified")["median_hours_in_stage"], 4.0);
    assert_eq!(stage("sales_qualified")["inventory"], 1);

    // The table's columns line up with its header: every row ends each column where the
    // header does.
    let output = bin()
        .args(["report", "funnel", "--since", "7d", "--config"])
        .arg(example_config())
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let ends = |line: &str| -> Vec<usize> {
        line.char_indices()
            .zip(line.chars().skip(1).chain([' ']))
            .filter(|((_, c), next)| *c != ' ' && *next == ' ')
            .map(|((i, _), _)| line[..=i].chars().count())
            .collect()
    };
    let header = ends(lines[0]);
    // The stage table, then a blank line and the speed to lead.
    assert!(text.contains("\nspeed to lead: "), "{text}");
    for row in lines[1..].iter().take_while(|l| !l.is_empty()) {
        let row_ends = ends(row);
        // The numeric columns (after the label) end where the header's do.
        assert_eq!(&row_ends[row_ends.len() - 6..], &header[header.len() - 6..], "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_never_create_a_state_directory_and_find_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("not-here");
    let unused_admin = format!("127.0.0.1:{}", free_port());
    // The example config's nurture tracks are commented out (they need [links]): `nurture
    // preview` reads one with a track.
    let key = dir.path().join("links-key");
    std::fs::write(&key, "a test key that is at least 32 bytes long").expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let nurture_config = dir.path().join("nurture.toml");
    std::fs::write(
        &nurture_config,
        format!(
            "[links]\npublic_listen = \"127.0.0.1:9478\"\npublic_url = \"https://leads.example.com\"\nsigning_key_file = \"{}\"\n[[nurture.tracks]]\nname = \"long-term\"\n[[nurture.tracks.steps]]\nafter = \"1mo\"\ntemplate = \"nurture_example\"\n",
            key.display()
        ),
    )
    .expect("config");
    for args in [
        &["sla", "list"][..],
        &["sla", "show", "00Q1"],
        &["leads", "list"],
        &["leads", "show", "00Q1"],
        &["quarantine"],
        &["report", "funnel"],
        &["nurture", "preview", "long-term", "--lead", "00Q1"],
        &["email", "preview", "--template", "sla_alert", "--lead", "00Q1"],
        &["email", "test", "--to", "a@example.com"],
        &["export", "backup.jsonl"],
    ] {
        let mut command = bin();
        let config = if args[0] == "nurture" { nurture_config.clone() } else { example_config() };
        command.args(args).arg("--config").arg(config).arg("--state-dir").arg(&missing);
        if ["sla", "leads", "quarantine", "report"].contains(&args[0]) {
            command.args(["--admin-listen", &unused_admin]);
        }
        let output = command.current_dir(dir.path()).output().expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
        assert!(
            stderr.contains(&format!("no leadloop state in {}", missing.display())),
            "{args:?}: {stderr}"
        );
        if args[0] == "sla" {
            assert!(stderr.contains(&format!("no daemon answered at {unused_admin}")), "{stderr}");
            assert!(stderr.contains("--state-dir DIR"), "{stderr}");
        }
    }

    // A daemon running elsewhere is found through its admin listener, and says so.
    let state = dir.path().join("state");
    state_with_a_handoff(&state).await;
    let daemon = Daemon::start(&example_config(), &state);
    daemon.wait_ready().await;
    let admin = format!("127.0.0.1:{}", daemon.port);
    let missing_dir = missing.clone();
    let output = tokio::task::spawn_blocking(move || {
        bin()
            .args(["sla", "list", "--format", "json", "--admin-listen", &admin, "--config"])
            .arg(example_config())
            .arg("--state-dir")
            .arg(&missing_dir)
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("read from the daemon at 127.0.0.1:"), "{stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(rows[0]["lead_id"], "00Q1");
    assert!(!missing.exists());

    // The funnel is read through the daemon too while it holds the state directory.
    let admin = format!("127.0.0.1:{}", daemon.port);
    let output = tokio::task::spawn_blocking(move || {
        bin()
            .args(["report", "funnel", "--format", "json", "--admin-listen", &admin, "--config"])
            .arg(example_config())
            .arg("--state-dir")
            .arg(&state)
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert!(report["stages"].as_array().is_some_and(|s| !s.is_empty()), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_data_views_need_the_token_and_the_commands_send_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    state_with_a_handoff(&state).await;
    let token = "3f6c0a9e8b7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d";
    let token_file = dir.path().join("admin_token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let config = dir.path().join("leadloop.toml");
    std::fs::write(&config, format!("[daemon]\nadmin_token_file = \"{}\"\n", token_file.display()))
        .expect("config");
    let no_token = dir.path().join("no-token.toml");
    std::fs::write(&no_token, "[daemon]\n").expect("config");

    let daemon = Daemon::start(&config, &state);
    daemon.wait_ready().await;
    assert_eq!(daemon.get("/healthz").await.0, 200);
    assert_eq!(daemon.get("/metrics").await.0, 200);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", daemon.port);
    for path in ["/sla", "/sla/00Q1", "/leads", "/quarantine", "/report/funnel"] {
        let bare = client.get(url(path)).send().await.expect("GET");
        assert_eq!(bare.status(), 401, "{path} without a token");
        assert!(bare.headers().contains_key("www-authenticate"), "{path}");
        let wrong = client.get(url(path)).bearer_auth(&token[1..]).send().await.expect("GET");
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let right = client.get(url(path)).bearer_auth(token).send().await.expect("GET");
        assert_eq!(right.status(), 200, "{path} with the token");
    }
    let leads: serde_json::Value =
        client.get(url("/leads")).bearer_auth(token).send().await.expect("GET").json().await.expect("json");
    assert_eq!(leads[0]["lead_id"], "00Q1", "{leads}");

    // The read-only commands ask the daemon (it holds the state directory) with the token of
    // their config; without one they are refused, and say what to set.
    let admin = format!("127.0.0.1:{}", daemon.port);
    let run = move |config: PathBuf, state: PathBuf, admin: String| {
        tokio::task::spawn_blocking(move || {
            bin()
                .args(["leads", "list", "--format", "json", "--admin-listen", &admin, "--config"])
                .arg(&config)
                .arg("--state-dir")
                .arg(&state)
                .output()
                .expect("run")
        })
    };
    let output = run(config.clone(), state.clone(), admin.clone()).await.expect("join");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(rows[0]["lead_id"], "00Q1");
    let output = run(no_token, state.clone(), admin).await.expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(74), "{stderr}");
    assert!(
        stderr.contains("401 Unauthorized") && stderr.contains("set daemon.admin_token_file"),
        "{stderr}"
    );
    assert!(!stderr.contains(token), "{stderr}");
}

#[test]
fn without_config_the_default_path_is_named_with_how_to_change_it() {
    let output = bin().args(["sla", "list"]).env_remove("LEADLOOP_CONFIG").output().expect("run");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/etc/leadloop/leadloop.toml: cannot read config file (the default; pass --config FILE or set LEADLOOP_CONFIG)"), "{stderr}");
}

/// `leadloop leads list | head -1` ends quietly when `head` stops reading (no panic, exit 0).
#[tokio::test]
async fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    {
        let store = leadloop_store::SledStore::open(&leadloop_store::SledConfig::new(&state)).expect("store");
        let mut batch = leadloop_store::Batch::new();
        for i in 0..5000 {
            let mut lead = leadloop_core::Lead::new(format!("00Q{i:06}"));
            lead.first_name = Some("A long enough name to fill the pipe".into());
            batch.put_lead(leadloop_core::LeadRecord::new(lead, chrono::Utc::now()));
        }
        leadloop_store::Store::commit(store.as_ref(), batch).await.expect("commit");
    }
    let script = format!(
        "set -o pipefail; '{}' leads list --config '{}' --state-dir '{}' | head -1",
        env!("CARGO_BIN_EXE_leadloop"),
        example_config().display(),
        state.display()
    );
    let output = Command::new("bash").args(["-c", &script]).output().expect("bash");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 1);
}

/// An events file with a byte that is not UTF-8 is refused naming the line and column.
#[test]
fn simulate_names_the_line_that_is_not_utf8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    let mut bytes = br#"{"at":"2026-03-02T14:00:00Z","type":"lead","lead":{"id":"00Q1"}}"#.to_vec();
    bytes.extend_from_slice(b"\n{\"at\":\"2026-03-02T15:00:00Z\",\"x\":\"\xff\"}\n");
    std::fs::write(&events, bytes).expect("write");
    let output = bin()
        .args(["simulate", "--config"])
        .arg(example_config())
        .arg("--events")
        .arg(&events)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains(&format!("{}:2:35: not UTF-8 text (byte 0xff)", events.display())), "{stderr}");
}

fn guard_cli(args: &[&str], state: &Path, admin: u16) -> std::process::Output {
    bin()
        .args(args)
        .arg("--config")
        .arg(example_config())
        .arg("--state-dir")
        .arg(state)
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .output()
        .expect("leadloop")
}

/// `leadloop pause` while the daemon runs reaches it through the admin listener (no
/// restart); the pause is in the store, so the next start honours it; with no daemon the
/// commands act on the store itself.
#[tokio::test]
async fn pause_reaches_the_running_daemon_and_a_restart_honours_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(&example_config(), &state);
    daemon.wait_ready().await;
    let out = guard_cli(&["pause", "email", "--reason", "bad template"], &state, daemon.port);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("paused email (through the running daemon)"), "{stdout}");
    assert!(stdout.contains("internal SLA mail (reps, managers, executives) still goes"), "{stdout}");
    let (status, metrics) = daemon.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("leadloop_guard_paused{scope=\"email\"} 1"), "{metrics}");
    assert!(metrics.contains("leadloop_guard_events_total{event=\"paused\"} 1"), "{metrics}");
    let (_, view) = daemon.get("/guard").await;
    let view: serde_json::Value = serde_json::from_str(&view).expect("json");
    assert_eq!(view["state"]["email"]["reason"], "bad template", "{view}");

    signal(&daemon.child, "TERM");
    wait_exit(&mut daemon.child, Duration::from_secs(10)).expect("stops");
    let mut daemon = Daemon::start(&example_config(), &state);
    daemon.wait_ready().await;
    let (_, view) = daemon.get("/guard").await;
    let view: serde_json::Value = serde_json::from_str(&view).expect("json");
    assert_eq!(view["state"]["email"]["reason"], "bad template", "still paused after a restart: {view}");
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(metrics.contains("leadloop_guard_paused{scope=\"email\"} 1"), "{metrics}");
    signal(&daemon.child, "TERM");
    wait_exit(&mut daemon.child, Duration::from_secs(10)).expect("stops");
    let log = stderr_of(&mut daemon.child);
    assert!(log.contains("paused by the guard"), "{log}");

    // No daemon: the store itself.
    let port = free_port();
    let out = guard_cli(&["resume", "all"], &state, port);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("resumed all: 0 held entries released (through the store)"), "{stdout}");
    let out = guard_cli(&["pause"], &state, port);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("email    running") && stdout.contains("surge    none"), "{stdout}");
}
