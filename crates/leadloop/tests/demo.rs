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
    let emails: Vec<_> = std::fs::read_dir(&mail).expect("mail dir").collect();
    assert!(emails.len() > 50, "{} emails", emails.len());
    let escalation = std::fs::read_dir(&mail)
        .expect("mail dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().contains("executive"))
        .expect("an executive escalation on disk");
    let text = std::fs::read_to_string(escalation.path()).expect("read eml");
    assert!(text.contains("Cc:"), "the executive is copied:\n{text}");

    // The same directory twice is refused rather than mixed.
    let again = Command::new(env!("CARGO_BIN_EXE_leadloop"))
        .args(["demo", "--duration", "1h", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run demo");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a demo"));
}
