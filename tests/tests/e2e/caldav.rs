//! The calendar connector against a real CalDAV server (Radicale on loopback, htpasswd auth):
//! discovery, a recurring meeting in another time zone steering routing, an out-of-office day
//! taking a rep out of routing and pausing (or redirecting) the SLA, the follow-up hold booked
//! once and read back, and outages that degrade the calendar while routing carries on.
//! leadloop's clock is virtual; Radicale only stores what it is given. The engine, its rules,
//! the poller and the hold relay are the daemon's, built by `leadloop::runtime` from a config
//! around the connector under test.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::TimeDelta;
use leadloop::runtime::{Parts, Runtime, RuntimeOptions};
use leadloop_caldav::{CaldavConnector, CalendarConfig, CalendarKind, PersonCalendar};
use leadloop_core::routing::{RouteRule, RoutingConfig};
use leadloop_core::sla::{SlaConfig, SlaPolicy, WhenAway, default_policy};
use leadloop_core::{
    Calendar, Channel, Clock, Effect, EventKind, IdempotencyKey, Lead, LeadId, LeadRecord, Person, PersonId,
    Role, Timestamp, VirtualClock,
};
use leadloop_engine::Engine;
use leadloop_engine::calendar::{CalendarPoller, CalendarRelay};
use leadloop_plugin::BuildContext;
use leadloop_store::Store;
use leadloop_tests::caldav_peer::{CaldavPeer, USERS};

/// Monday 23 November 2026, 09:00 UTC (10:00 in Berlin).
fn t0() -> Timestamp {
    "2026-11-23T09:00:00Z".parse().expect("instant")
}

fn person(id: &str, zone: &str) -> Person {
    Person {
        id: PersonId::new(id),
        email: format!("{id}@corp.example"),
        name: id.to_uppercase(),
        manager: Some(PersonId::new("mgr")),
        time_zone: Some(zone.into()),
        role: Role::Rep,
        active: true,
        capacity: None,
    }
}

fn people() -> Vec<Person> {
    let mut mgr = person("mgr", "Europe/Berlin");
    mgr.manager = None;
    vec![
        person("ana", "Europe/Berlin"),
        person("bo", "America/New_York"),
        person("lee", "Europe/Berlin"),
        mgr,
    ]
}

fn routing() -> RoutingConfig {
    RoutingConfig {
        account_owner: true,
        fallback: None,
        rules: vec![RouteRule {
            name: "all".into(),
            when: Default::default(),
            pool: vec![PersonId::new("ana"), PersonId::new("bo")],
            weights: Default::default(),
        }],
    }
}

fn secret(dir: &Path, user: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{user}.password"));
    std::fs::write(&path, password).expect("write password");
    path
}

/// `[calendar]` with ana found by discovery, bo by principal, each with their own login.
fn config(dir: &Path, peer: &CaldavPeer, ana_password: &str) -> CalendarConfig {
    let login = |user: &str, password: &str| (Some(user.to_owned()), Some(secret(dir, user, password)));
    let (ana_user, ana_file) = login("ana", ana_password);
    let (bo_user, bo_file) = login("bo", USERS[2].1);
    CalendarConfig {
        kind: CalendarKind::Caldav,
        url: peer.base_url(),
        username: None,
        password_file: None,
        password_env: None,
        token_file: None,
        token_env: None,
        look_ahead_weeks: 2,
        poll_interval: Duration::from_secs(300),
        timeout: Duration::from_secs(3),
        hold: true,
        hold_length: Duration::from_secs(1800),
        people: vec![
            PersonCalendar {
                id: "ana".into(),
                calendar: None,
                principal: None,
                username: ana_user,
                password_file: ana_file,
                password_env: None,
                token_file: None,
                token_env: None,
            },
            PersonCalendar {
                id: "bo".into(),
                calendar: None,
                principal: Some("/bo/".into()),
                username: bo_user,
                password_file: bo_file,
                password_env: None,
                token_file: None,
                token_env: None,
            },
        ],
    }
}

struct Rig {
    dir: tempfile::TempDir,
    peer: CaldavPeer,
    clock: Arc<VirtualClock>,
    store: Arc<dyn Store>,
    engine: Engine,
    connector: Arc<CaldavConnector>,
    poller: Arc<CalendarPoller>,
    relay: Arc<CalendarRelay>,
}

/// The daemon's runtime for `sla`, with `[calendar]` (holds booked when `hold`) and routing
/// over ana and bo.
async fn rig(sla: SlaConfig, hold: bool, ana_password: &str) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = CaldavPeer::start(&dir.path().join("radicale")).expect("radicale");
    peer.create_calendar("ana", "work").await.expect("ana's calendar");
    peer.create_calendar("bo", "work").await.expect("bo's calendar");
    let clock = Arc::new(VirtualClock::new(t0()));
    let mut calendar_config = config(dir.path(), &peer, ana_password);
    calendar_config.hold = hold;
    let cx = BuildContext { clock: clock.clone(), shutdown: Default::default() };
    let connector = calendar_config.build(&cx).expect("build calendar");
    let (mut daemon, _) = leadloop::config::load_str(Path::new("caldav.toml"), "").expect("empty config");
    daemon.sla = sla;
    // Threshold 0: a lead is Marketing Qualified on arrival, so an unowned one is routed at once.
    daemon.scoring = leadloop_core::scoring::ScoringConfig { threshold: 0.0, ..Default::default() };
    daemon.routing = routing();
    daemon.calendar = Some(calendar_config);
    let options = RuntimeOptions::new(clock.clone())
        .state_dir(Some(dir.path().join("state")))
        .parts(Parts { calendar: true, ..Parts::ENGINE })
        .calendar(connector.clone() as Arc<dyn Calendar>);
    let runtime = Runtime::build(&daemon, options).await.expect("the daemon's runtime");
    let (store, engine) = (Arc::clone(&runtime.store), runtime.engine.clone());
    for p in people() {
        engine.upsert_person(p).await.expect("person");
    }
    let parts = runtime.calendar.expect("the calendar part");
    Rig { dir, peer, clock, store, engine, connector, poller: parts.poller, relay: parts.relay }
}

fn sla(when_away: WhenAway, backup: Option<&str>) -> SlaConfig {
    let policy = SlaPolicy { when_away, backup: backup.map(str::to_owned), ..default_policy() };
    SlaConfig { policies: vec![policy], ..SlaConfig::default() }
}

fn ics(body: &str) -> String {
    format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tests//EN\r\n{body}END:VCALENDAR\r\n")
}

/// A weekly meeting at 09:00 Tokyo on Tuesdays since October, with someone from Acme.
fn weekly_acme_meeting() -> String {
    ics(
        "BEGIN:VEVENT\r\nUID:acme-weekly\r\nDTSTAMP:20261001T000000Z\r\nDTSTART;TZID=Asia/Tokyo:20261006T090000\r\nDTEND;TZID=Asia/Tokyo:20261006T093000\r\nRRULE:FREQ=WEEKLY;BYDAY=TU\r\nSUMMARY:Acme weekly\r\nORGANIZER:mailto:bo@corp.example\r\nATTENDEE;CN=Ana Lima:mailto:ana.lima@ACME.example\r\nEND:VEVENT\r\n",
    )
}

/// Out of office all day Monday 23 and Tuesday 24 November.
fn out_of_office() -> String {
    ics(
        "BEGIN:VEVENT\r\nUID:ooo\r\nDTSTAMP:20261101T000000Z\r\nDTSTART;VALUE=DATE:20261123\r\nDTEND;VALUE=DATE:20261125\r\nSUMMARY:Out of office\r\nEND:VEVENT\r\n",
    )
}

fn lead(email: &str, owner: Option<&str>) -> Lead {
    let mut lead = Lead::new("00Q1");
    lead.first_name = Some("Ana".into());
    lead.last_name = Some("Lima".into());
    lead.company = Some("Acme".into());
    lead.email = Some(email.into());
    lead.status = Some("Open - Not Contacted".into());
    lead.owner_id = owner.map(PersonId::new);
    lead
}

fn record(email: &str) -> LeadRecord {
    LeadRecord::new(lead(email, None), t0())
}

async fn emails(store: &dyn Store, now: Timestamp) -> Vec<(String, Vec<String>)> {
    store
        .outbox_ready(Channel::Email, now, 100)
        .await
        .expect("outbox")
        .into_iter()
        .filter_map(|e| match e.effect {
            Effect::Email { kind, to, .. } => Some((kind, to)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn discovery_finds_each_persons_calendar_by_login_and_by_principal() {
    let rig = rig(sla(WhenAway::Pause, None), false, USERS[1].1).await;
    for user in ["ana", "bo"] {
        let found = rig.connector.discover(&PersonId::new(user)).await.expect("discover");
        let urls: Vec<String> = found.iter().map(|c| c.url.to_string()).collect();
        assert_eq!(urls, [rig.peer.calendar_url(user, "work")], "{user}");
        assert_eq!(found[0].display_name.as_deref(), Some("work"));
    }
    let unknown = rig.connector.discover(&PersonId::new("nobody")).await.expect_err("unknown person");
    assert!(unknown.to_string().contains("no calendar is configured for nobody"), "{unknown}");
}

#[tokio::test]
async fn a_weekly_meeting_with_the_leads_domain_in_another_zone_routes_to_that_rep() {
    let rig = rig(sla(WhenAway::Pause, None), false, USERS[1].1).await;
    rig.peer.put_event("bo", "work", "acme-weekly.ics", &weekly_acme_meeting()).await.expect("put");
    let report = rig.poller.poll_once().await;
    assert_eq!(report.problems, Vec::<String>::new());
    assert!(!rig.poller.degraded().load(Ordering::Relaxed));
    let modes = rig.connector.sync_modes(&PersonId::new("bo")).await;
    assert_eq!(
        modes.iter().map(|(_, m)| *m).collect::<Vec<_>>(),
        [Some(true)],
        "Radicale offers sync-collection"
    );
    let chart = rig.engine.org_chart();
    let route = routing().route_at(&record("ana.lima@acme.example"), &chart, rig.clock.now()).expect("route");
    // Tuesday 09:00 in Tokyo is Monday 19:00 in New York, bo's zone.
    assert_eq!((route.owner.as_str(), route.reason.as_str()), ("bo", "meets acme.example on 2026-11-23"));
    // Another company: the rule's round-robin, starting with ana.
    let route = routing().route_at(&record("eve@globex.example"), &chart, rig.clock.now()).expect("route");
    assert_eq!((route.owner.as_str(), route.reason.as_str()), ("ana", "rule all: next in the pool"));
    // Through the engine: an unowned lead from Acme arrives, is routed to bo, and the reason is
    // in its history; bo gets the alert.
    rig.engine.upsert_lead(lead("ana.lima@acme.example", None)).await.expect("lead");
    let history = rig.store.history(&LeadId::new("00Q1")).await.expect("history");
    let routed = history.iter().find_map(|(_, e)| match &e.kind {
        EventKind::OwnerChanged { to, reason, .. } => Some((to.clone(), reason.clone())),
        _ => None,
    });
    assert_eq!(routed, Some((Some(PersonId::new("bo")), "meets acme.example on 2026-11-23".to_owned())));
    assert_eq!(
        emails(rig.store.as_ref(), rig.clock.now()).await,
        [("sla.alert".to_owned(), vec!["bo@corp.example".to_owned()])]
    );
    // A change on the server reaches the next poll (sync-collection): the meeting is gone.
    rig.peer
        .put_event(
            "bo",
            "work",
            "acme-weekly.ics",
            &weekly_acme_meeting().replace("ACME.example", "initech.example"),
        )
        .await
        .expect("put");
    rig.poller.poll_once().await;
    let route =
        routing().route_at(&record("ana.lima@acme.example"), &rig.engine.org_chart(), rig.clock.now());
    assert_eq!(route.map(|r| r.owner.0), Some("ana".into()));
}

#[tokio::test]
async fn an_out_of_office_rep_is_skipped_and_the_sla_pauses_until_they_are_back() {
    let rig = rig(sla(WhenAway::Pause, None), false, USERS[1].1).await;
    rig.peer.put_event("ana", "work", "ooo.ics", &out_of_office()).await.expect("put");
    assert!(rig.poller.poll_once().await.problems.is_empty());
    let chart = rig.engine.org_chart();
    let route = routing().route_at(&record("eve@globex.example"), &chart, rig.clock.now()).expect("route");
    assert_eq!(route.owner.as_str(), "bo", "ana is away");
    // A lead assigned to ana in the CRM: the alert goes out, the reminder waits for her return.
    rig.engine.upsert_lead(lead("eve@globex.example", Some("ana"))).await.expect("lead");
    rig.clock.advance(TimeDelta::hours(24));
    rig.engine.tick().await.expect("tick");
    let now = rig.clock.now();
    assert_eq!(
        emails(rig.store.as_ref(), now).await,
        [("sla.alert".to_owned(), vec!["ana@corp.example".to_owned()])]
    );
    let history = rig.store.history(&LeadId::new("00Q1")).await.expect("history");
    assert!(
        history.iter().any(
            |(_, e)| matches!(&e.kind, EventKind::Activity { activity, .. } if activity == "sla_paused")
        )
    );
    // Back on Wednesday 00:00 Berlin (Tuesday 23:00 UTC): the reminder goes out then.
    rig.clock.set("2026-11-24T23:00:00Z".parse().expect("instant"));
    rig.engine.tick().await.expect("tick");
    let kinds: Vec<String> =
        emails(rig.store.as_ref(), rig.clock.now()).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["sla.alert", "sla.reminder"]);
}

#[tokio::test]
async fn under_a_backup_policy_an_away_reps_steps_go_to_the_backup() {
    let rig = rig(sla(WhenAway::Backup, Some("lee")), false, USERS[1].1).await;
    rig.peer.put_event("ana", "work", "ooo.ics", &out_of_office()).await.expect("put");
    rig.poller.poll_once().await;
    rig.engine.upsert_lead(lead("eve@globex.example", Some("ana"))).await.expect("lead");
    assert_eq!(
        emails(rig.store.as_ref(), rig.clock.now()).await,
        [("sla.alert".to_owned(), vec!["lee@corp.example".to_owned()])]
    );
}

#[tokio::test]
async fn the_hold_is_booked_in_the_next_free_slot_once_and_read_back() {
    let rig = rig(sla(WhenAway::Pause, None), true, USERS[1].1).await;
    // Busy 10:00–11:00 and 11:00–11:40 Berlin today: the first free half hour is 11:45.
    // (One resource per event: a CalDAV server keeps one UID per resource.)
    let pipeline = ics(
        "BEGIN:VEVENT\r\nUID:b1\r\nDTSTAMP:20261101T000000Z\r\nDTSTART;TZID=Europe/Berlin:20261123T100000\r\nDTEND;TZID=Europe/Berlin:20261123T110000\r\nSUMMARY:Pipeline\r\nEND:VEVENT\r\n",
    );
    let one_on_one = ics(
        "BEGIN:VEVENT\r\nUID:b2\r\nDTSTAMP:20261101T000000Z\r\nDTSTART:20261123T100000Z\r\nDURATION:PT40M\r\nSUMMARY:1:1\r\nEND:VEVENT\r\n",
    );
    rig.peer.put_event("ana", "work", "pipeline.ics", &pipeline).await.expect("put");
    rig.peer.put_event("ana", "work", "one-on-one.ics", &one_on_one).await.expect("put");
    assert!(rig.poller.poll_once().await.problems.is_empty());
    rig.engine.upsert_lead(lead("eve@globex.example", Some("ana"))).await.expect("lead");
    let now = rig.clock.now();
    let holds = rig.store.outbox_ready(Channel::Calendar, now, 10).await.expect("outbox");
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].key, IdempotencyKey::parse("hold/00Q1/1").expect("valid key"));
    let alert = rig.store.outbox_ready(Channel::Email, now, 10).await.expect("outbox");
    let Effect::Email { vars, .. } = &alert[0].effect else { panic!("an alert") };
    assert_eq!(vars["hold"]["start"], "2026-11-23 11:45 CET");

    // A relay that booked it but crashed before recording so: the same key again.
    let Effect::CalendarHold { person, start, end, summary, .. } = &holds[0].effect else { panic!("a hold") };
    rig.connector.place_hold(person, &holds[0].key, *start, *end, summary).await.expect("first booking");
    let report = rig.relay.run_once().await.expect("relay");
    assert_eq!(report.booked, 1);
    assert_eq!(rig.relay.run_once().await.expect("relay").booked, 0, "done once");
    let items = rig.peer.items("ana", "work").await.expect("items");
    let booked: Vec<&(String, String)> =
        items.iter().filter(|(name, _)| name.starts_with("leadloop-")).collect();
    assert_eq!(booked.len(), 1, "{items:?}");
    assert_eq!(booked[0].0, "leadloop-hold-00Q1-1.ics");
    assert!(booked[0].1.contains("DTSTART:20261123T104500Z"), "{}", booked[0].1);
    assert!(booked[0].1.contains("SUMMARY:Call Ana Lima (Acme)"), "{}", booked[0].1);
    // Read back as busy time: the next hold goes after it.
    rig.poller.poll_once().await;
    let tz: chrono_tz::Tz = "Europe/Berlin".parse().expect("zone");
    let hours = leadloop_core::sla::BusinessHours {
        start: chrono::NaiveTime::from_hms_opt(9, 0, 0).expect("time"),
        end: chrono::NaiveTime::from_hms_opt(17, 0, 0).expect("time"),
        days: vec![
            chrono::Weekday::Mon,
            chrono::Weekday::Tue,
            chrono::Weekday::Wed,
            chrono::Weekday::Thu,
            chrono::Weekday::Fri,
        ],
        holidays: None,
    };
    let next = rig.engine.org_chart().calendar.next_free_slot(
        &PersonId::new("ana"),
        now,
        TimeDelta::minutes(30),
        tz,
        &hours,
        &[],
    );
    assert_eq!(next.map(|(s, _)| s), Some("2026-11-23T11:15:00Z".parse().expect("instant")));
}

#[tokio::test]
async fn a_refused_login_degrades_the_calendar_and_routing_falls_back_to_rules() {
    let rig = rig(sla(WhenAway::Pause, None), false, "wrong password").await;
    rig.peer.put_event("bo", "work", "acme-weekly.ics", &weekly_acme_meeting()).await.expect("put");
    let report = rig.poller.poll_once().await;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].starts_with("ana: authentication failed"), "{:?}", report.problems);
    assert!(report.problems[0].contains("401"), "{:?}", report.problems);
    assert!(rig.poller.degraded().load(Ordering::Relaxed));
    // bo's calendar still counts; ana simply has no signals.
    let route = routing()
        .route_at(&record("x@acme.example"), &rig.engine.org_chart(), rig.clock.now())
        .expect("route");
    assert_eq!(route.owner.as_str(), "bo");
}

#[tokio::test]
async fn a_stopped_server_degrades_the_calendar_without_blocking_hand_offs() {
    let mut rig = rig(sla(WhenAway::Pause, None), true, USERS[1].1).await;
    rig.peer.put_event("bo", "work", "acme-weekly.ics", &weekly_acme_meeting()).await.expect("put");
    assert!(rig.poller.poll_once().await.problems.is_empty());
    rig.peer.stop();
    let report = rig.poller.poll_once().await;
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(rig.poller.degraded().load(Ordering::Relaxed));
    // No signals: routing uses its rules alone.
    let route = routing()
        .route_at(&record("x@acme.example"), &rig.engine.org_chart(), rig.clock.now())
        .expect("route");
    assert_eq!(route.reason, "rule all: next in the pool");
    // A hand-off still alerts at once; without calendar signals no hold is planned.
    rig.engine.upsert_lead(lead("eve@globex.example", Some("ana"))).await.expect("lead");
    assert_eq!(emails(rig.store.as_ref(), rig.clock.now()).await.len(), 1);
    // Back up: the next poll clears the flag.
    rig.peer.restart().expect("restart");
    assert!(rig.poller.poll_once().await.problems.is_empty());
    assert!(!rig.poller.degraded().load(Ordering::Relaxed));
    let _ = &rig.dir;
}

#[tokio::test]
async fn a_malformed_entry_is_skipped_with_its_reason_and_the_rest_keeps_working() {
    let rig = rig(sla(WhenAway::Pause, None), false, USERS[1].1).await;
    rig.peer.put_event("bo", "work", "acme-weekly.ics", &weekly_acme_meeting()).await.expect("put");
    let broken = ics(
        "BEGIN:VEVENT\r\nUID:broken\r\nDTSTAMP:20261101T000000Z\r\nDTSTART;TZID=Mars/Olympus:20261124T100000\r\nDTEND;TZID=Mars/Olympus:20261124T110000\r\nSUMMARY:Broken\r\nEND:VEVENT\r\n",
    );
    rig.peer.put_event("bo", "work", "broken.ics", &broken).await.expect("put");
    let report = rig.poller.poll_once().await;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("broken.ics") && report.problems[0].contains("Mars/Olympus"),
        "{:?}",
        report.problems
    );
    assert!(rig.poller.degraded().load(Ordering::Relaxed));
    let route = routing()
        .route_at(&record("x@acme.example"), &rig.engine.org_chart(), rig.clock.now())
        .expect("route");
    assert_eq!(route.owner.as_str(), "bo", "the good entry still counts");
}

#[tokio::test]
async fn free_busy_reports_busy_time_and_a_hold_is_removed_only_as_booked() {
    let rig = rig(sla(WhenAway::Pause, None), false, USERS[1].1).await;
    let meeting = ics(
        "BEGIN:VEVENT\r\nUID:fb1\r\nDTSTAMP:20261101T000000Z\r\nDTSTART;TZID=Europe/Berlin:20261124T100000\r\nDTEND;TZID=Europe/Berlin:20261124T110000\r\nSUMMARY:Review\r\nEND:VEVENT\r\n",
    );
    rig.peer.put_event("ana", "work", "fb1.ics", &meeting).await.expect("put");
    let ana = PersonId::new("ana");
    let busy = rig
        .connector
        .free_busy(
            &ana,
            "2026-11-24T00:00:00Z".parse().expect("instant"),
            "2026-11-25T00:00:00Z".parse().expect("instant"),
        )
        .await
        .expect("free-busy");
    assert_eq!(
        busy,
        [(
            "2026-11-24T09:00:00Z".parse().expect("instant"),
            "2026-11-24T10:00:00Z".parse().expect("instant")
        )]
    );
    // A hold, then its removal with If-Match: a stale etag leaves it, the current one removes it.
    let key = IdempotencyKey::parse("hold/00Q9/1").expect("valid key");
    let (start, end) =
        ("2026-11-24T13:00:00Z".parse().expect("instant"), "2026-11-24T13:30:00Z".parse().expect("instant"));
    rig.connector.place_hold(&ana, &key, start, end, "Call Eve").await.expect("hold");
    let name = "leadloop-hold-00Q9-1.ics";
    let etag = rig.peer.etag("ana", "work", name).await.expect("etag").expect("booked");
    let stale = rig.connector.cancel_hold(&ana, &key, "\"stale\"").await.expect_err("stale etag");
    assert!(stale.to_string().contains("changed since leadloop booked it"), "{stale}");
    assert!(rig.peer.etag("ana", "work", name).await.expect("etag").is_some());
    rig.connector.cancel_hold(&ana, &key, &etag).await.expect("cancel");
    assert_eq!(rig.peer.etag("ana", "work", name).await.expect("etag"), None);
}
