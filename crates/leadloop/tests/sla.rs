//! The SLA ladder in virtual time, through `simulate`: events in, effects out, compared with
//! a compact expected rendering. Each case is one `check(config, events, expect)`.

use std::path::Path;

use leadloop::config;

const PEOPLE: &str = r#"
{"at":"2026-03-02T14:00:00Z","type":"user","user":{"id":"005E","email":"ceo@x.example","name":"Exec","time_zone":"America/New_York","role":"executive"}}
{"at":"2026-03-02T14:00:00Z","type":"user","user":{"id":"005M","email":"mgr@x.example","name":"Manager","manager_id":"005E","time_zone":"America/New_York"}}
{"at":"2026-03-02T14:00:00Z","type":"user","user":{"id":"005A","email":"rep@x.example","name":"Rep A","manager_id":"005M","time_zone":"America/New_York"}}
{"at":"2026-03-02T14:00:00Z","type":"user","user":{"id":"005B","email":"bo@x.example","name":"Rep B","manager_id":"005M","time_zone":"Europe/Berlin"}}
"#;

fn lead(at: &str, fields: &str) -> String {
    format!("{{\"at\":\"{at}\",\"type\":\"lead\",\"lead\":{{\"id\":\"00Q1\",{fields}}}}}\n")
}

const HANDOFF: &str = r#""email":"ana@acme.example","first_name":"Ana","company":"Acme","status":"Open - Not Contacted","owner_id":"005A""#;

/// Renders effects as `AT kind step to=… cc=…` (emails) or `AT effect …` lines.
fn run(config_toml: &str, events: &str, until: Option<&str>) -> Vec<String> {
    let (config, _) = config::load_str(Path::new("test.toml"), config_toml).expect("config");
    let mut out = Vec::new();
    let code = leadloop::simulate::simulate(
        &config,
        Path::new("events.jsonl"),
        events,
        until.map(|u| u.parse().expect("instant")),
        &mut out,
    );
    assert_eq!(code, 0, "simulate failed: {}", String::from_utf8_lossy(&out));
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        // One line per email: the rep's copy. The copies for the others it reaches (keys
        // `…/STEP/to/HASH`, each `deliver_to` its recipient) show the same To and Cc; the
        // ladder's own tests check them.
        .filter(|line| !line.contains("/to/"))
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            let list = |k: &str| {
                v[k].as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            };
            match v["effect"].as_str() {
                Some("email") => format!(
                    "{} {} to={} cc={}",
                    v["at"].as_str().unwrap_or(""),
                    v["kind"].as_str().unwrap_or(""),
                    list("to"),
                    list("cc")
                ),
                Some("stage") => format!(
                    "{} stage {} {}->{}",
                    v["at"].as_str().unwrap_or(""),
                    v["lead_id"].as_str().unwrap_or(""),
                    v["from"].as_str().unwrap_or(""),
                    v["to"].as_str().unwrap_or("")
                ),
                Some("assign") => format!(
                    "{} assign {} to {}",
                    v["at"].as_str().unwrap_or(""),
                    v["lead_id"].as_str().unwrap_or(""),
                    v["owner_id"].as_str().unwrap_or("")
                ),
                Some(other) => format!(
                    "{} {other} {}",
                    v["at"].as_str().unwrap_or(""),
                    v.get("fields").or(v.get("subject")).map(ToString::to_string).unwrap_or_default()
                ),
                None => line.to_owned(),
            }
        })
        .collect()
}

fn check(config_toml: &str, events: &str, expect: &[&str]) {
    assert_eq!(run(config_toml, events, None), expect, "events:\n{events}");
}

#[test]
fn the_seed_ladder_exactly() {
    check(
        "",
        &format!("{PEOPLE}{}", lead("2026-03-02T14:00:00Z", HANDOFF)),
        &[
            "2026-03-02T14:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-03T14:00:00Z sla.reminder to=rep@x.example cc=",
            "2026-03-04T14:00:00Z sla.manager to=rep@x.example cc=mgr@x.example",
            "2026-03-05T14:00:00Z sla.executive to=rep@x.example,mgr@x.example cc=ceo@x.example",
        ],
    );
}

#[test]
fn a_status_change_at_23h59_stops_the_ladder_after_the_alert() {
    check(
        "",
        &format!(
            "{PEOPLE}{}{}",
            lead("2026-03-02T14:00:00Z", HANDOFF),
            lead("2026-03-03T13:59:00Z", r#""status":"Working - Contacted""#)
        ),
        &["2026-03-02T14:00:00Z sla.alert to=rep@x.example cc="],
    );
}

#[test]
fn reassignment_restarts_the_ladder_for_the_new_owner() {
    check(
        "",
        &format!(
            "{PEOPLE}{}{}",
            lead("2026-03-02T14:00:00Z", HANDOFF),
            lead("2026-03-03T20:00:00Z", r#""owner_id":"005B""#)
        ),
        &[
            "2026-03-02T14:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-03T14:00:00Z sla.reminder to=rep@x.example cc=",
            "2026-03-03T20:00:00Z sla.alert to=bo@x.example cc=",
            "2026-03-04T20:00:00Z sla.reminder to=bo@x.example cc=",
            "2026-03-05T20:00:00Z sla.manager to=bo@x.example cc=mgr@x.example",
            "2026-03-06T20:00:00Z sla.executive to=bo@x.example,mgr@x.example cc=ceo@x.example",
        ],
    );
}

#[test]
fn two_quick_status_flips_end_the_first_handoff_and_start_a_second() {
    // Open → Working (satisfied) → Open again a minute later: a new hand-off, alerted anew.
    let events = format!(
        "{PEOPLE}{}{}{}",
        lead("2026-03-02T14:00:00Z", HANDOFF),
        lead("2026-03-02T14:01:00Z", r#""status":"Working - Contacted""#),
        lead("2026-03-02T14:02:00Z", r#""status":"Open - Not Contacted""#)
    );
    let out = run("", &events, Some("2026-03-03T15:00:00Z"));
    assert_eq!(
        out,
        [
            "2026-03-02T14:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-02T14:02:00Z sla.alert to=rep@x.example cc=",
            "2026-03-03T14:02:00Z sla.reminder to=rep@x.example cc=",
        ]
    );
}

#[test]
fn a_lead_deleted_mid_ladder_gets_nothing_more() {
    check(
        "",
        &format!(
            "{PEOPLE}{}{{\"at\":\"2026-03-04T10:00:00Z\",\"type\":\"delete\",\"lead_id\":\"00Q1\"}}\n",
            lead("2026-03-02T14:00:00Z", HANDOFF)
        ),
        &[
            "2026-03-02T14:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-03T14:00:00Z sla.reminder to=rep@x.example cc=",
        ],
    );
}

#[test]
fn a_rep_with_no_manager_escalates_to_the_fallback_address() {
    let events = format!(
        "{}{}",
        r#"{"at":"2026-03-02T14:00:00Z","type":"user","user":{"id":"005A","email":"rep@x.example","name":"Rep A"}}
"#,
        lead("2026-03-02T14:00:00Z", HANDOFF)
    );
    check(
        "[sla]\nfallback_email = \"sales-ops@x.example\"\n",
        &events,
        &[
            "2026-03-02T14:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-03T14:00:00Z sla.reminder to=rep@x.example cc=",
            "2026-03-04T14:00:00Z sla.manager to=rep@x.example cc=sales-ops@x.example",
            "2026-03-05T14:00:00Z sla.executive to=rep@x.example,sales-ops@x.example cc=",
        ],
    );
}

#[test]
fn a_queue_owner_or_a_closed_status_starts_no_handoff() {
    let events = format!(
        "{}{}{}",
        r#"{"at":"2026-03-02T14:00:00Z","type":"user","user":{"id":"00GQ","email":"queue@x.example","name":"Inbound queue","role":"queue"}}
"#,
        lead("2026-03-02T14:00:00Z", r#""status":"Open - Not Contacted","owner_id":"00GQ""#),
        r#"{"at":"2026-03-02T15:00:00Z","type":"lead","lead":{"id":"00Q2","status":"Closed - Converted","owner_id":"00GQ"}}
"#
    );
    check("", &events, &[]);
}

#[test]
fn a_completed_task_stops_the_ladder_when_the_policy_says_so() {
    let config = r#"
[[sla.policy]]
name = "demo-requests"
stop_on_task = true
[[sla.policy.step]]
name = "alert"
after = "0s"
kind = "sla.alert"
template = "sla_alert"
to = ["rep"]
[[sla.policy.step]]
name = "reminder"
after = "5m"
kind = "sla.reminder"
template = "sla_reminder"
to = ["rep"]
cc = ["manager", "address:inbound-lead@x.example"]
"#;
    let stopped = format!(
        "{PEOPLE}{}{{\"at\":\"2026-03-02T14:04:00Z\",\"type\":\"activity\",\"lead_id\":\"00Q1\",\"kind\":\"task_completed\",\"detail\":{{}}}}\n",
        lead("2026-03-02T14:00:00Z", HANDOFF)
    );
    check(config, &stopped, &["2026-03-02T14:00:00Z sla.alert to=rep@x.example cc="]);
    let not_stopped = format!("{PEOPLE}{}", lead("2026-03-02T14:00:00Z", HANDOFF));
    check(
        config,
        &not_stopped,
        &[
            "2026-03-02T14:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-02T14:05:00Z sla.reminder to=rep@x.example cc=mgr@x.example,inbound-lead@x.example",
        ],
    );
}

const BUSINESS: &str = r#"
[sla.holidays]
us = ["2026-03-09"]

[[sla.policy]]
name = "business"
business_hours = { start = "09:00", end = "17:00", holidays = "us" }
[[sla.policy.step]]
name = "alert"
after = "0s"
kind = "sla.alert"
template = "sla_alert"
to = ["rep"]
[[sla.policy.step]]
name = "reminder"
after = "8h"
kind = "sla.reminder"
template = "sla_reminder"
to = ["rep"]
[[sla.policy.step]]
name = "manager"
after = "16h"
kind = "sla.manager"
template = "sla_manager"
to = ["rep"]
cc = ["manager"]
"#;

#[test]
fn business_hours_skip_the_weekend_and_a_holiday_in_the_reps_zone() {
    // Friday 2026-03-06 15:00 New York (20:00Z). 8 working hours: 2 on Friday, then Monday
    // 9 March is a holiday, so 6 on Tuesday: 15:00 New York (19:00Z, after the US DST change
    // on 8 March). 16 hours: Wednesday 15:00 New York.
    let events = format!("{PEOPLE}{}", lead("2026-03-06T20:00:00Z", HANDOFF));
    check(
        BUSINESS,
        &events,
        &[
            "2026-03-06T20:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-10T19:00:00Z sla.reminder to=rep@x.example cc=",
            "2026-03-11T19:00:00Z sla.manager to=rep@x.example cc=mgr@x.example",
        ],
    );
}

#[test]
fn business_hours_follow_berlin_across_its_own_dst_change() {
    // Rep B is in Berlin, which changes on 29 March. Friday 27 March 16:00 Berlin (15:00Z):
    // 1 h on Friday, 7 h on Monday 30 March: 16:00 Berlin summer time (14:00Z).
    let events = format!(
        "{PEOPLE}{}",
        lead("2026-03-27T15:00:00Z", r#""status":"Open - Not Contacted","owner_id":"005B""#)
    );
    let out = run(BUSINESS, &events, Some("2026-03-31T00:00:00Z"));
    assert_eq!(
        out,
        [
            "2026-03-27T15:00:00Z sla.alert to=bo@x.example cc=",
            "2026-03-30T14:00:00Z sla.reminder to=bo@x.example cc="
        ]
    );
}

#[test]
fn events_must_be_ordered_and_well_formed() {
    let (config, _) = config::load_str(Path::new("t.toml"), "").expect("config");
    let mut out = Vec::new();
    let code = leadloop::simulate::simulate(
        &config,
        Path::new("e.jsonl"),
        "{\"at\":\"2026-03-02T14:00:00Z\",\"type\":\"lead\",\"lead\":{\"id\":\"a\"}}\n{\"at\":\"2026-03-01T00:00:00Z\",\"type\":\"delete\",\"lead_id\":\"a\"}\n{\"at\":\"x\"}\n",
        None,
        &mut out,
    );
    assert_eq!(code, 65);
}

#[test]
fn steps_due_at_the_same_instant_are_all_sent_under_catch_up_latest() {
    let config = r#"
[[sla.policy]]
name = "twin"
[[sla.policy.step]]
name = "alert"
after = "0s"
kind = "sla.alert"
template = "sla_alert"
to = ["rep"]
[[sla.policy.step]]
name = "ops"
after = "0s"
kind = "sla.alert"
template = "sla_alert"
to = ["address:ops@x.example"]
"#;
    check(
        config,
        &format!("{PEOPLE}{}", lead("2026-03-02T14:00:00Z", HANDOFF)),
        &[
            "2026-03-02T14:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-02T14:00:00Z sla.alert to=ops@x.example cc=",
        ],
    );
}

#[test]
fn an_inactive_manager_is_replaced_by_the_fallback() {
    let events = format!(
        "{}{}",
        r#"{"at":"2026-03-02T14:00:00Z","type":"user","user":{"id":"005M","email":"mgr@x.example","name":"Gone","active":false}}
{"at":"2026-03-02T14:00:00Z","type":"user","user":{"id":"005A","email":"rep@x.example","name":"Rep A","manager_id":"005M"}}
"#,
        lead("2026-03-02T14:00:00Z", HANDOFF)
    );
    let out = run("[sla]\nfallback_email = \"ops@x.example\"\n", &events, Some("2026-03-04T15:00:00Z"));
    assert_eq!(
        out.last().map(String::as_str),
        Some("2026-03-04T14:00:00Z sla.manager to=rep@x.example cc=ops@x.example")
    );
}

#[test]
fn bad_event_lines_stop_the_run_before_any_output() {
    let (config, _) = config::load_str(Path::new("t.toml"), "").expect("config");
    let mut out = Vec::new();
    let events = concat!(
        "{\"at\":\"2026-03-02T14:00:00Z\",\"type\":\"lead\",\"lead\":{\"id\":\"a\",\"status\":\"Open - Not Contacted\"}}\n",
        "{\"at\":\"2026-03-02T15:00:00Z\",\"type\":\"lead\",\"lead\":{\"id\":\"a\",\"opted_out\":\"yes\"}}\n",
        "{\"at\":\"2026-03-02T16:00:00Z\",\"type\":\"user\",\"user\":{\"id\":\"u\",\"email\":\"u@x.example\",\"time_zone\":\"Mars/Base\"}}\n",
        "{\"at\":\"2026-03-01T00:00:00Z\",\"type\":\"delete\",\"lead_id\":\"a\"}\n",
    );
    let code = leadloop::simulate::simulate(&config, Path::new("e.jsonl"), events, None, &mut out);
    assert_eq!(code, 65);
    assert!(out.is_empty(), "nothing printed: {}", String::from_utf8_lossy(&out));
}

#[test]
fn an_unanswered_lead_is_reassigned_to_the_manager_and_its_ladder_restarts() {
    let config = r#"
[[sla.policy]]
name = "hot"
[[sla.policy.step]]
name = "alert"
after = "0s"
kind = "sla.alert"
template = "sla_alert"
to = ["rep"]
[[sla.policy.step]]
name = "reassign"
after = "2h"
kind = "sla.reminder"
template = "sla_reminder"
to = ["rep"]
cc = ["manager"]
actions = [{ type = "reassign", to = "manager" }]
"#;
    let out = run(
        config,
        &format!("{PEOPLE}{}", lead("2026-03-02T14:00:00Z", HANDOFF)),
        Some("2026-03-02T15:00:00Z"),
    );
    assert_eq!(out, ["2026-03-02T14:00:00Z sla.alert to=rep@x.example cc="]);
    let out = run(
        config,
        &format!("{PEOPLE}{}", lead("2026-03-02T14:00:00Z", HANDOFF)),
        Some("2026-03-02T17:00:00Z"),
    );
    assert_eq!(
        out,
        [
            "2026-03-02T14:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-02T16:00:00Z assign 00Q1 to 005M",
            "2026-03-02T16:00:00Z sla.reminder to=rep@x.example cc=mgr@x.example",
            "2026-03-02T16:00:00Z crm.update {\"owner_id\":\"005M\"}",
            "2026-03-02T16:00:00Z sla.alert to=mgr@x.example cc=",
        ]
    );
}

const DIGEST: &str = r#"
[[sla.policy]]
name = "digest"
digest = { time = "08:00", roles = ["manager"] }
[[sla.policy.step]]
name = "alert"
after = "0s"
kind = "sla.alert"
template = "sla_alert"
to = ["rep"]
[[sla.policy.step]]
name = "manager"
after = "24h"
kind = "sla.manager"
template = "sla_manager"
to = ["rep"]
cc = ["manager"]
"#;

#[test]
fn managers_get_one_daily_digest_instead_of_a_copy_per_lead() {
    // Two leads for Rep A, one answered before the digest goes out.
    let events = format!(
        "{PEOPLE}{}{}{}",
        lead("2026-03-02T14:00:00Z", HANDOFF),
        r#"{"at":"2026-03-02T15:00:00Z","type":"lead","lead":{"id":"00Q2","first_name":"Raj","status":"Open - Not Contacted","owner_id":"005A"}}
{"at":"2026-03-02T16:00:00Z","type":"lead","lead":{"id":"00Q3","first_name":"Eve","status":"Open - Not Contacted","owner_id":"005A"}}
"#,
        r#"{"at":"2026-03-03T18:00:00Z","type":"lead","lead":{"id":"00Q3","status":"Working - Contacted"}}
"#
    );
    let out = run(DIGEST, &events, Some("2026-03-04T14:00:00Z"));
    assert_eq!(
        out,
        [
            "2026-03-02T14:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-02T15:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-02T16:00:00Z sla.alert to=rep@x.example cc=",
            // The manager step goes to the rep only; the manager is not copied per lead.
            "2026-03-03T14:00:00Z sla.manager to=rep@x.example cc=",
            "2026-03-03T15:00:00Z sla.manager to=rep@x.example cc=",
            "2026-03-03T16:00:00Z sla.manager to=rep@x.example cc=",
            // 08:00 in New York the next morning: one digest with the two leads still open.
            "2026-03-04T13:00:00Z sla.digest to=mgr@x.example cc=",
        ]
    );
    let (config, _) = config::load_str(Path::new("t.toml"), DIGEST).expect("config");
    let mut raw = Vec::new();
    leadloop::simulate::simulate(
        &config,
        Path::new("e"),
        &events,
        Some("2026-03-04T14:00:00Z".parse().expect("at")),
        &mut raw,
    );
    let digest = String::from_utf8(raw).expect("utf-8").lines().last().map(str::to_owned).expect("line");
    assert!(
        digest.contains(
            "\"subject\":\"Follow up: 2 leads in your team waiting for first contact (2026-03-04)\""
        ),
        "{digest}"
    );
}

#[test]
fn executives_get_a_weekly_summary() {
    let config = "[sla]\nweekly_summary = { day = \"mon\", time = \"08:00\" }\n";
    let events = format!(
        "{PEOPLE}{}{}{}{}",
        lead("2026-03-02T14:00:00Z", HANDOFF),
        lead("2026-03-02T17:00:00Z", r#""status":"Working - Contacted""#),
        r#"{"at":"2026-03-03T15:00:00Z","type":"lead","lead":{"id":"00Q2","first_name":"Raj","status":"Open - Not Contacted","owner_id":"005A"}}
"#,
        r#"{"at":"2026-03-06T15:00:00Z","type":"lead","lead":{"id":"00Q2","status":"Working - Contacted"}}
"#
    );
    let (config, _) = config::load_str(Path::new("t.toml"), config).expect("config");
    let mut raw = Vec::new();
    let code = leadloop::simulate::simulate(
        &config,
        Path::new("e"),
        &events,
        Some("2026-03-09T14:00:00Z".parse().expect("at")),
        &mut raw,
    );
    assert_eq!(code, 0);
    let text = String::from_utf8(raw).expect("utf-8");
    let weekly: Vec<&str> = text.lines().filter(|l| l.contains("sla.weekly")).collect();
    assert_eq!(weekly.len(), 1, "{text}");
    // Monday 9 March, 08:00 New York (EDT from 8 March): 12:00Z. One met (3 h), one breached.
    assert!(weekly[0].contains("\"at\":\"2026-03-09T12:00:00Z\""), "{}", weekly[0]);
    assert!(weekly[0].contains("\"to\":[\"ceo@x.example\"]"), "{}", weekly[0]);
    assert!(weekly[0].contains("50% answered in time (2 hand-offs)"), "{}", weekly[0]);
}

#[test]
fn a_deleted_and_restored_lead_keeps_counting_its_handoffs() {
    let events = format!(
        "{PEOPLE}{}{}{}",
        lead("2026-03-02T14:00:00Z", HANDOFF),
        "{\"at\":\"2026-03-02T15:00:00Z\",\"type\":\"delete\",\"lead_id\":\"00Q1\"}\n",
        lead("2026-03-02T16:00:00Z", HANDOFF)
    );
    let (config, _) = config::load_str(Path::new("t.toml"), "").expect("config");
    let mut raw = Vec::new();
    let code = leadloop::simulate::simulate(
        &config,
        Path::new("e"),
        &events,
        Some("2026-03-02T17:00:00Z".parse().expect("at")),
        &mut raw,
    );
    assert_eq!(code, 0);
    let keys: Vec<String> = String::from_utf8(raw)
        .expect("utf-8")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["key"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    // The restored lead's hand-off is number 2: its alert is not mistaken for the first one's.
    assert_eq!(keys, ["sla/00Q1/1/alert", "sla/00Q1/2/alert"]);
}

const SCORING: &str = r#"
[scoring]
threshold = 65
half_life = "30days"

[[scoring.fit]]
name = "senior title"
field = "title"
contains = ["vp", "director", "chief"]
points = 40

[[scoring.fit]]
name = "student"
field = "title"
contains = ["student"]
points = -50

[[scoring.engagement]]
name = "demo request"
activity = "form_submit"
points = 20

[[scoring.engagement]]
name = "visits"
activity = "web_visit"
points = 3
cap = 6
per = "7days"

[lifecycle]
status_stages = { "Working - Contacted" = "sales_qualified", "Disqualified" = "disqualified" }
"#;

fn activity(at: &str, kind: &str) -> String {
    format!(
        "{{\"at\":\"{at}\",\"type\":\"activity\",\"lead_id\":\"00Q1\",\"kind\":\"{kind}\",\"detail\":{{}}}}\n"
    )
}

#[test]
fn activities_push_a_lead_over_the_threshold_to_marketing_qualified() {
    // No owner yet: scoring and stages only, no hand-off.
    let events = format!(
        "{PEOPLE}{}{}{}{}{}",
        lead("2026-03-02T14:00:00Z", r#""title":"VP Engineering","status":"Open - Not Contacted""#),
        activity("2026-03-02T15:00:00Z", "web_visit"),
        activity("2026-03-02T15:05:00Z", "web_visit"),
        activity("2026-03-02T15:10:00Z", "web_visit"),
        activity("2026-03-03T09:00:00Z", "form_submit")
    );
    // fit 40; visits 3 + 3 (the third is capped); the form makes 66 ≥ 65.
    check(
        SCORING,
        &events,
        &[
            "2026-03-02T15:00:00Z stage 00Q1 just_a_name->engaged",
            "2026-03-03T09:00:00Z stage 00Q1 engaged->marketing_qualified",
        ],
    );
}

#[test]
fn a_crm_status_moves_the_stage_as_a_sales_action_and_ends_the_handoff() {
    let events = format!(
        "{PEOPLE}{}{}{}{}{}",
        lead("2026-03-02T14:00:00Z", r#""title":"VP Engineering","status":"Open - Not Contacted""#),
        activity("2026-03-02T14:10:00Z", "web_visit"),
        activity("2026-03-02T14:20:00Z", "web_visit"),
        activity("2026-03-02T14:30:00Z", "form_submit"),
        lead("2026-03-02T15:00:00Z", r#""owner_id":"005A""#)
    );
    let events = format!("{events}{}", lead("2026-03-02T16:00:00Z", r#""status":"Working - Contacted""#));
    check(
        SCORING,
        &events,
        &[
            "2026-03-02T14:10:00Z stage 00Q1 just_a_name->engaged",
            "2026-03-02T14:30:00Z stage 00Q1 engaged->marketing_qualified",
            "2026-03-02T15:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-02T16:00:00Z stage 00Q1 marketing_qualified->sales_qualified",
        ],
    );
}

#[test]
fn a_student_never_qualifies() {
    let events = format!(
        "{PEOPLE}{}{}{}",
        lead("2026-03-02T14:00:00Z", r#""title":"Student","status":"Open - Not Contacted""#),
        activity("2026-03-02T15:00:00Z", "form_submit"),
        activity("2026-03-02T15:10:00Z", "form_submit")
    );
    check(SCORING, &events, &["2026-03-02T15:00:00Z stage 00Q1 just_a_name->engaged"]);
}

const ROUTING: &str = r#"
[scoring]
threshold = 30
[[scoring.engagement]]
name = "demo request"
activity = "form_submit"
points = 40

[routing]
fallback = "005M"
[[routing.rule]]
name = "us"
match = { country = ["US"] }
pool = ["005A", "005B"]
"#;

#[test]
fn qualified_leads_are_routed_round_robin_and_their_ladder_starts() {
    let mut events = String::from(PEOPLE);
    for (i, at) in ["2026-03-02T14:00:00Z", "2026-03-02T14:10:00Z", "2026-03-02T14:20:00Z"].iter().enumerate()
    {
        events.push_str(&format!(
            "{{\"at\":\"{at}\",\"type\":\"lead\",\"lead\":{{\"id\":\"L{i}\",\"country\":\"US\",\"status\":\"Open - Not Contacted\"}}}}\n"
        ));
        events.push_str(&format!(
            "{{\"at\":\"{at}\",\"type\":\"activity\",\"lead_id\":\"L{i}\",\"kind\":\"form_submit\",\"detail\":{{}}}}\n"
        ));
    }
    // A lead no rule matches goes to the fallback.
    events.push_str("{\"at\":\"2026-03-02T14:30:00Z\",\"type\":\"lead\",\"lead\":{\"id\":\"L9\",\"country\":\"BR\",\"status\":\"Open - Not Contacted\"}}\n");
    events.push_str("{\"at\":\"2026-03-02T14:30:00Z\",\"type\":\"activity\",\"lead_id\":\"L9\",\"kind\":\"form_submit\",\"detail\":{}}\n");
    let out = run(ROUTING, &events, Some("2026-03-02T15:00:00Z"));
    let interesting: Vec<&str> =
        out.iter().map(String::as_str).filter(|l| l.contains("assign") || l.contains("sla.alert")).collect();
    assert_eq!(
        interesting,
        [
            "2026-03-02T14:00:00Z assign L0 to 005A",
            "2026-03-02T14:00:00Z sla.alert to=rep@x.example cc=",
            "2026-03-02T14:10:00Z assign L1 to 005B",
            "2026-03-02T14:10:00Z sla.alert to=bo@x.example cc=",
            "2026-03-02T14:20:00Z assign L2 to 005A",
            "2026-03-02T14:20:00Z sla.alert to=rep@x.example cc=",
            "2026-03-02T14:30:00Z assign L9 to 005M",
            "2026-03-02T14:30:00Z sla.alert to=mgr@x.example cc=",
        ]
    );
}

#[test]
fn routing_rules_can_match_custom_fields_such_as_segment() {
    let config = r#"
[scoring]
threshold = 30
[[scoring.engagement]]
name = "demo request"
activity = "form_submit"
points = 40
[routing]
[[routing.rule]]
name = "enterprise"
match = { custom = { segment = ["Enterprise"] } }
pool = ["005B"]
[[routing.rule]]
name = "everyone else"
pool = ["005A"]
"#;
    let events = format!(
        "{PEOPLE}{}{}{}{}",
        "{\"at\":\"2026-03-02T14:00:00Z\",\"type\":\"lead\",\"lead\":{\"id\":\"E1\",\"status\":\"Open - Not Contacted\",\"custom\":{\"segment\":\"Enterprise\"}}}\n",
        "{\"at\":\"2026-03-02T14:00:00Z\",\"type\":\"activity\",\"lead_id\":\"E1\",\"kind\":\"form_submit\",\"detail\":{}}\n",
        "{\"at\":\"2026-03-02T14:05:00Z\",\"type\":\"lead\",\"lead\":{\"id\":\"S1\",\"status\":\"Open - Not Contacted\",\"custom\":{\"segment\":\"SMB\"}}}\n",
        "{\"at\":\"2026-03-02T14:05:00Z\",\"type\":\"activity\",\"lead_id\":\"S1\",\"kind\":\"form_submit\",\"detail\":{}}\n",
    );
    let out = run(config, &events, Some("2026-03-02T15:00:00Z"));
    let assigns: Vec<&str> = out.iter().map(String::as_str).filter(|l| l.contains("assign")).collect();
    assert_eq!(assigns, ["2026-03-02T14:00:00Z assign E1 to 005B", "2026-03-02T14:05:00Z assign S1 to 005A"]);
}

#[test]
fn a_lead_sales_recycles_is_not_requalified_on_its_old_score() {
    let config = SCORING.replace(
        r#"status_stages = { "Working - Contacted" = "sales_qualified", "Disqualified" = "disqualified" }"#,
        r#"status_stages = { "Working - Contacted" = "sales_qualified", "Nurture" = "recycled" }"#,
    );
    let events = format!(
        "{PEOPLE}{}{}{}{}{}{}",
        lead("2026-03-02T14:00:00Z", r#""title":"VP Engineering","status":"Open - Not Contacted""#),
        activity("2026-03-02T14:10:00Z", "web_visit"),
        activity("2026-03-02T14:20:00Z", "web_visit"),
        activity("2026-03-02T14:30:00Z", "form_submit"),
        lead("2026-03-02T15:00:00Z", r#""status":"Nurture""#),
        activity("2026-03-02T16:00:00Z", "web_visit")
    );
    check(
        &config,
        &events,
        &[
            "2026-03-02T14:10:00Z stage 00Q1 just_a_name->engaged",
            "2026-03-02T14:30:00Z stage 00Q1 engaged->marketing_qualified",
            "2026-03-02T15:00:00Z stage 00Q1 marketing_qualified->recycled",
        ],
    );
}

#[test]
fn the_accounts_owner_gets_its_leads_first() {
    let events = format!(
        "{PEOPLE}{}{}{}",
        "{\"at\":\"2026-03-02T14:00:00Z\",\"type\":\"account\",\"account\":{\"id\":\"001A\",\"name\":\"Acme\",\"owner_id\":\"005B\",\"domain\":\"acme.example\"}}\n",
        "{\"at\":\"2026-03-02T14:00:00Z\",\"type\":\"lead\",\"lead\":{\"id\":\"L1\",\"email\":\"ana@acme.example\",\"country\":\"US\",\"status\":\"Open - Not Contacted\"}}\n",
        "{\"at\":\"2026-03-02T14:00:00Z\",\"type\":\"activity\",\"lead_id\":\"L1\",\"kind\":\"form_submit\",\"detail\":{}}\n",
    );
    let out = run(ROUTING, &events, Some("2026-03-02T15:00:00Z"));
    let assigns: Vec<&str> =
        out.iter().map(String::as_str).filter(|l| l.contains("assign") || l.contains("sla.alert")).collect();
    // The "us" rule would pick 005A; the account's owner comes first.
    assert_eq!(
        assigns,
        ["2026-03-02T14:00:00Z assign L1 to 005B", "2026-03-02T14:00:00Z sla.alert to=bo@x.example cc="]
    );
}
