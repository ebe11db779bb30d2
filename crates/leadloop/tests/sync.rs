//! `leadloop sync --once` as an operator runs it, against the Salesforce emulator: counts on
//! stdout (human and JSON), a second pass that fetches nothing new, a config error that names
//! the key, and a CRM that refuses the login.

use std::path::Path;
use std::process::Command;

use leadloop_sf_emulator::{Config, Emulator, SeedSpec, seed};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leadloop"))
}

fn write_config(dir: &Path, url: &str, secret: &str) -> std::path::PathBuf {
    let secret_file = dir.join("sf-secret");
    std::fs::write(&secret_file, secret).expect("secret");
    let path = dir.join("leadloop.toml");
    let text = format!(
        r#"
[daemon]
state_dir = "{state}"

[crm]
type = "salesforce"

[crm.salesforce]
login_url = "{url}"
auth = "client_credentials"
client_id = "{client}"
client_secret_file = "{secret}"

[crm.salesforce.fields.lead]
Interests__c = "interests"
"#,
        state = dir.join("state").display(),
        client = Config::default().consumer_key,
        secret = secret_file.display(),
    );
    std::fs::write(&path, text).expect("config");
    path
}

#[tokio::test]
async fn sync_once_prints_counts_and_a_second_pass_finds_nothing_new() {
    let emu = Emulator::start(Config::default()).await.expect("emulator");
    seed::populate(&emu, &SeedSpec { seed: 3, managers: 1, reps: 3, accounts: 5, leads: 300, tasks: 10 });
    emu.insert(
        "Lead",
        serde_json::json!({"LastName": "Bad", "Email": "nope"}).as_object().cloned().unwrap_or_default(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &emu.url(), &Config::default().client_secret);

    let run = |format: &'static str| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            bin().args(["sync", "--once", "--format", format, "--config"]).arg(&config).output().expect("run")
        })
    };
    let out = run("json").await.expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["quarantined"], 1);
    assert!(report["stored"].as_u64().expect("stored") >= 300, "{report}");
    assert!(report["api_calls"].as_u64().expect("calls") <= 3, "{report}");
    assert_eq!(report["api_max"], 100_000);

    let out = run("human").await.expect("join");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("quarantined   1"), "{text}");
    assert!(text.contains("api calls     1"), "{text}");
    assert!(text.contains("left for bulk sync"), "{text}");

    let out = bin().args(["quarantine", "--format", "json", "--config"]).arg(&config).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["object"], "lead");
    assert!(
        rows[0]["reason"].as_str().expect("reason").contains("Email: `nope` is not a valid email address")
    );
}

#[tokio::test]
async fn refused_login_and_bad_config_are_clear() {
    let emu = Emulator::start(Config::default()).await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &emu.url(), "wrong-secret");
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        move || bin().args(["sync", "--once", "--config"]).arg(&config).output().expect("run")
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!text.contains("wrong-secret") && !String::from_utf8_lossy(&out.stderr).contains("wrong-secret"));

    let text = std::fs::read_to_string(&config).expect("read").replace("client_credentials", "password");
    std::fs::write(&config, text).expect("write");
    let out = bin().args(["sync", "--once", "--config"]).arg(&config).output().expect("run");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("leadloop.toml:") && stderr.contains("crm.salesforce.auth"), "{stderr}");
}

#[tokio::test]
async fn the_daemon_syncs_on_start_and_writes_back_owner_changes() {
    let emu = Emulator::start(Config::default()).await.expect("emulator");
    let ids =
        seed::populate(&emu, &SeedSpec { seed: 5, managers: 1, reps: 2, accounts: 3, leads: 40, tasks: 0 });
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &emu.url(), &Config::default().client_secret);
    // Every lead qualifies on its source alone and leaves the queue for a rep.
    let mut text = std::fs::read_to_string(&config).expect("read");
    text.push_str(&format!(
        "\n[scoring]\nthreshold = 10\n[[scoring.fit]]\nname = \"any source\"\nfield = \"lead_source\"\ncontains = [\"\"]\npoints = 20\n\n[routing]\nfallback = \"{}\"\n",
        ids.reps[0]
    ));
    std::fs::write(&config, text).expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let mut child = bin()
        .args(["run", "--config"])
        .arg(&config)
        .args(["--admin-listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("daemon");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut owned = 0;
    while std::time::Instant::now() < deadline {
        // Routed: to the owner of the lead's account, or by the fallback; out of the queue.
        owned = emu
            .all("Lead")
            .iter()
            .filter(|l| l["OwnerId"].as_str().is_some_and(|o| ids.reps.iter().any(|r| r == o)))
            .count();
        if owned == 40 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut metrics = String::new();
    while std::time::Instant::now() < deadline {
        metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        if metrics.contains("leadloop_crm_sync_passes_total") && metrics.contains("leadloop_crm_writes_total")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    assert_eq!(owned, 40, "the routed owners were written back to Salesforce");
    assert!(metrics.contains("leadloop_crm_sync_passes_total"), "{metrics}");
    assert!(metrics.contains("leadloop_crm_writes_total"), "{metrics}");
    assert_eq!(status.code(), Some(0));
}

/// Lines of JSON on stdout.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn start_daemon(config: &Path, port: u16) -> std::process::Child {
    bin()
        .args(["run", "--config"])
        .arg(config)
        .args(["--admin-listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("daemon")
}

async fn stop_daemon(mut child: std::process::Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    assert_eq!(status.code(), Some(0));
}

/// Waits (in real time: the daemon runs on the system clock) until `done` holds.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Dead letters, as an admin meets them: the SLA sets a status the org's restricted picklist
/// lacks, Salesforce refuses it for good, `crm dead-letters` lists it (through the running
/// daemon's admin listener, and from the store once it stopped), the admin adds the value
/// to the picklist and `crm replay` puts the write back: Salesforce receives it once, and the
/// lead's history says who replayed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_for_good_are_listed_and_replayed_once_the_picklist_is_fixed() {
    const STATUS: &str = "Nurture - Later";
    let emu = Emulator::start(Config::default()).await.expect("emulator");
    let ids =
        seed::populate(&emu, &SeedSpec { seed: 5, managers: 1, reps: 2, accounts: 3, leads: 3, tasks: 0 });
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &emu.url(), &Config::default().client_secret);
    let mut text = std::fs::read_to_string(&config).expect("read");
    // Every lead qualifies and is routed; the alert step sets a status Salesforce refuses,
    // and a refused write is given up at once.
    text = text.replace("[crm]\n", "[crm]\nmax_write_attempts = 1\n");
    text.push_str(&format!(
        "\n[scoring]\nthreshold = 10\n[[scoring.fit]]\nname = \"any source\"\nfield = \"lead_source\"\ncontains = [\"\"]\npoints = 20\n\n[routing]\nfallback = \"{}\"\n\n[[sla.policy]]\nname = \"p\"\n[[sla.policy.step]]\nname = \"alert\"\nafter = \"0s\"\nkind = \"sla.alert\"\ntemplate = \"sla_alert\"\nto = [\"rep\"]\nactions = [{{ type = \"set_status\", status = \"{STATUS}\" }}]\n",
        ids.reps[0]
    ));
    std::fs::write(&config, text).expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let cli = |args: &[&str]| {
        let mut command = bin();
        command.args(["crm"]).args(args).arg("--config").arg(&config);
        command.args(["--admin-listen", &format!("127.0.0.1:{port}")]);
        command.output().expect("run")
    };
    let dead_letters = || {
        let out = cli(&["dead-letters", "--format", "json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        json_lines(&out)
    };

    let daemon = start_daemon(&config, port);
    let mut rows = Vec::new();
    wait_for("three dead letters", || {
        // The daemon may not answer yet.
        let out = cli(&["dead-letters", "--format", "json"]);
        rows = if out.status.success() { json_lines(&out) } else { Vec::new() };
        rows.len() == 3
    })
    .await;
    for row in &rows {
        assert_eq!(row["write"], "crm.update", "{row}");
        assert_eq!(row["fields"]["status"], STATUS, "{row}");
        assert_eq!(row["attempts"], 1, "{row}");
        let error = row["error"].as_str().expect("error");
        assert!(error.contains("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"), "{error}");
    }
    let first = rows[0]["key"].as_str().expect("key").to_owned();
    let lead = rows[0]["lead_id"].as_str().expect("lead").to_owned();
    assert!(emu.get("Lead", &lead).is_some_and(|l| l["Status"] != STATUS));

    // The admin adds the value to the picklist, then replays one write through the daemon.
    emu.add_lead_status(STATUS);
    let patches = || {
        emu.requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.contains("/composite/sobjects"))
            .count()
    };
    let before = patches();
    let out = cli(&["replay", &first, "--by", "ada"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("replayed  {first}"));
    wait_for("the replayed write", || emu.get("Lead", &lead).is_some_and(|l| l["Status"] == STATUS)).await;
    assert_eq!(dead_letters().len(), 2, "the other two stay dead letters");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(patches() - before, 1, "Salesforce received the replayed write once");
    stop_daemon(daemon).await;

    // The daemon is stopped: the commands work on the store itself.
    assert_eq!(dead_letters().len(), 2);
    let out = cli(&["replay", "no-such-key"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused   no-such-key: no such outbox entry"));
    let out = cli(&["replay", "--all", "--by", "bob", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json_lines(&out)[0]["replayed"].as_array().map(Vec::len), Some(2));
    assert!(dead_letters().is_empty());
    let out = bin()
        .args(["leads", "show", &lead, "--format", "json", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let replayed: Vec<&serde_json::Value> = shown["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["kind"] == "effect_replayed")
        .collect();
    assert_eq!(replayed.len(), 1, "{shown}");
    assert_eq!(replayed[0]["actor"]["who"], "ada (via the admin listener)");
    assert!(replayed[0]["reason"].as_str().expect("reason").contains("RESTRICTED_PICKLIST"));

    // Started again, the daemon writes the two replayed on the store.
    let daemon = start_daemon(&config, port);
    wait_for("every lead's status written", || {
        emu.all("Lead").iter().filter(|l| l["Status"] == STATUS).count() == 3
    })
    .await;
    stop_daemon(daemon).await;
}
