//! `leadloop demo` as a new user runs it (faster): it must show the whole loop — synced,
//! qualified, routed, alerted, answered, reminded, escalated to manager and executive,
//! nurtured — leave the emails where it says, and exit 0.

use std::process::Command;

#[test]
fn demo_shows_the_whole_loop_and_leaves_the_emails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_leadloop"))
        .args(["demo", "--speed", "40000", "--duration", "80h", "--leads", "120", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "synced from Salesforce: 120 leads",
        "scored every lead on fit (title, company size):",
        "became Marketing Qualified",
        "routed",
        "alerted the rep by email",
        "alerted the rep in Slack, with Accept / Recycle / Disqualify buttons",
        "slack  @U000001  New lead for you: ",
        "[Accept] [Recycle] [Disqualify]",
        "answered by the rep (status changed in Salesforce): SLA met",
        "reminded the rep: no status change in 24 h",
        "escalated to the manager: 48 h",
        "escalated to the executive: 72 h",
        "nurture emails queued",
        "summary after 80 virtual hours",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let mail = dir.path().join("state").join("mail");
    assert!(stdout.contains(&format!("the emails are in    {}", mail.display())), "{stdout}");
    let emails: Vec<_> = std::fs::read_dir(&mail).expect("mail dir").filter_map(Result::ok).collect();
    assert!(emails.len() > 50, "{} emails", emails.len());
    // Mail holds personal data: the directory is 0700, each message 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&mail), 0o700);
    assert!(emails.iter().all(|e| mode(&e.path()) == 0o600), "an .eml readable by others");
    let escalation = std::fs::read_dir(&mail)
        .expect("mail dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().contains("executive"))
        .expect("an executive escalation on disk");
    let text = std::fs::read_to_string(escalation.path()).expect("read eml");
    assert!(text.contains("Cc:"), "the executive is copied:\n{text}");

    // The "look closer" commands run as printed (the running binary, the demo's own config)
    // and agree with what the demo did: the lead shown is scored with the demo's rules, as
    // its history says.
    let commands: Vec<&str> = stdout
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("look closer"))
        .map(|line| line.trim_start().trim_start_matches("look closer").trim())
        .filter(|line| !line.is_empty())
        .collect();
    assert_eq!(commands.len(), 4, "{stdout}");
    for command in &commands {
        let out = Command::new("sh").args(["-c", command]).output().expect("run command");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!text.trim().is_empty(), "{command} printed nothing");
        if command.contains("leads show") {
            let fit = text
                .lines()
                .filter(|l| l.contains("score_changed"))
                .filter_map(|l| l.split("\"fit\":").nth(1))
                .filter_map(|rest| rest.split([',', '}']).next())
                .filter_map(|n| n.parse::<f64>().ok())
                .next_back()
                .expect("a score in the history");
            assert!(text.contains(&format!("(fit {fit:.0} + engagement")), "{command}:\n{text}");
            assert!(fit > 0.0, "{text}");
        }
        if command.contains("sla list") {
            let negative = text
                .split_whitespace()
                .any(|w| w.starts_with('-') && w[1..].starts_with(|c: char| c.is_ascii_digit()));
            assert!(!negative, "a hand-off aged negative hours:\n{text}");
        }
    }
    let funnel = commands.iter().find(|c| c.contains("report funnel")).expect("funnel command");
    let out = Command::new("sh").args(["-c", &format!("{funnel} --format json")]).output().expect("run");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["stages"][0]["entered"], 120, "the run falls inside the last 30 days: {report}");

    // The same directory twice is refused rather than mixed.
    let again = Command::new(env!("CARGO_BIN_EXE_leadloop"))
        .args(["demo", "--duration", "1h", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run demo");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a demo"));
}
