//! One-click links end to end: the alert carries signed links; the public listener shows a
//! confirmation page on GET, performs on POST, writes back to the CRM through the outbox, and
//! stops the ladder. Tampered, expired and repeated links change nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use leadloop::links::{LinkPages, LinkRules, Signer};
use leadloop_core::nurture::{NurtureLinks as _, TrackedLink};
use leadloop_core::sla::{SlaConfig, SlaRules};
use leadloop_core::{Channel, Effect, Lead, LeadId, Person, PersonId, Role, VirtualClock};
use leadloop_engine::Engine;
use leadloop_plugin::Secret;
use leadloop_store::{SledConfig, SledStore, Store};

struct Rig {
    _dir: tempfile::TempDir,
    signer: Arc<Signer>,
    engine: Engine,
    clock: Arc<VirtualClock>,
    store: Arc<dyn Store>,
    client: reqwest::Client,
}

async fn rig() -> Rig {
    rig_with(LinkRules::default()).await
}

async fn rig_with(link_rules: LinkRules) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path())).expect("store");
    let clock = Arc::new(VirtualClock::new("2026-03-02T14:00:00Z".parse().expect("instant")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let signer = Arc::new(Signer::new(
        Secret::for_tests("a test key that is at least 32 bytes long"),
        &base,
        Duration::from_secs(14 * 24 * 3600),
    ));
    let rules = SlaRules::new(SlaConfig::default()).with_links(signer.clone());
    let engine = Engine::new(Arc::clone(&store), clock.clone(), Arc::new(rules));
    tokio::spawn(leadloop::links::serve(
        listener,
        signer.clone(),
        None,
        engine.clone(),
        link_rules,
        tokio_util::sync::CancellationToken::new(),
    ));
    engine
        .upsert_person(Person {
            id: PersonId::new("005A"),
            email: "rep@x.example".into(),
            name: "Rep".into(),
            manager: None,
            time_zone: None,
            role: Role::Rep,
            active: true,
            capacity: None,
        })
        .await
        .expect("person");
    let mut lead = Lead::new("00Q1");
    lead.first_name = Some("Ana".into());
    lead.status = Some("Open - Not Contacted".into());
    lead.owner_id = Some(PersonId::new("005A"));
    engine.upsert_lead(lead).await.expect("lead");
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    Rig { _dir: dir, signer, engine, clock, store, client }
}

async fn link(rig: &Rig, action: &str) -> String {
    let alert = rig.store.outbox_ready(Channel::Email, rig.clock_now(), 10).await.expect("outbox");
    let Effect::Email { vars, .. } = &alert[0].effect else { panic!("not an email") };
    vars["links"][action].as_str().expect("link").to_owned()
}

impl Rig {
    fn clock_now(&self) -> leadloop_core::Timestamp {
        leadloop_core::Clock::now(&*self.clock)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_from_the_alert_writes_back_and_stops_the_ladder() {
    let rig = rig().await;
    let accept = link(&rig, "accept").await;
    // A GET (what a mail scanner does) only shows the confirmation.
    let page = rig.client.get(&accept).send().await.expect("get");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("body").contains("<form method=\"post\">"));
    assert!(rig.store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead").handoff.is_some());

    let done = rig.client.post(&accept).form(&[("x", "")]).send().await.expect("post");
    assert_eq!(done.status(), 200);
    let record = rig.store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
    assert!(record.handoff.is_none(), "ladder stopped");
    assert_eq!(record.lead.status.as_deref(), Some("Working - Contacted"));
    let writes = rig.store.outbox_ready(Channel::Crm, rig.clock_now(), 10).await.expect("outbox");
    assert_eq!(writes.len(), 1);
    match &writes[0].effect {
        Effect::CrmUpdate { fields, .. } => assert_eq!(fields["status"], "Working - Contacted"),
        other => panic!("expected a CRM update, got {other:?}"),
    }
    // No reminder 24 hours later.
    rig.clock.advance(TimeDelta::hours(25));
    assert_eq!(rig.engine.tick().await.expect("tick").fired, 0);

    // The same link again, or another link from the same email: already answered.
    assert_eq!(rig.client.post(&accept).form(&[("x", "")]).send().await.expect("post").status(), 409);
    let recycle = link(&rig, "recycle").await;
    assert_eq!(rig.client.post(&recycle).form(&[("x", "")]).send().await.expect("post").status(), 409);
    assert_eq!(rig.store.outbox_ready(Channel::Crm, rig.clock_now(), 10).await.expect("outbox").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disqualify_records_the_reason() {
    let rig = rig().await;
    let disqualify = link(&rig, "disqualify").await;
    let response =
        rig.client.post(&disqualify).form(&[("reason", "student, no budget")]).send().await.expect("post");
    assert_eq!(response.status(), 200);
    let writes = rig.store.outbox_ready(Channel::Crm, rig.clock_now(), 10).await.expect("outbox");
    match &writes[0].effect {
        Effect::CrmUpdate { fields, .. } => {
            assert_eq!(fields["status"], "Disqualified");
            assert_eq!(fields["disqualify_reason"], "student, no budget");
        }
        other => panic!("expected a CRM update, got {other:?}"),
    }
    let history = rig.store.history(&LeadId::new("00Q1")).await.expect("history");
    assert!(history.iter().any(|(_, e)| matches!(&e.kind, leadloop_core::EventKind::HandoffEnded { outcome, .. } if outcome.to_string().contains("student, no budget"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_expired_links_change_nothing() {
    let rig = rig().await;
    let accept = link(&rig, "accept").await;
    let (base, token) = accept.rsplit_once('/').expect("token");
    let (signed, mac) = token.rsplit_once('.').expect("KEYID.PAYLOAD.MAC");
    let mut forged_mac = mac.to_owned();
    forged_mac.replace_range(0..1, if mac.starts_with('A') { "B" } else { "A" });
    let tampered = format!("{base}/{signed}.{forged_mac}");
    assert_eq!(rig.client.post(&tampered).form(&[("x", "")]).send().await.expect("post").status(), 403);
    assert_eq!(rig.client.get(format!("{base}/nonsense")).send().await.expect("get").status(), 403);
    // Only the link route exists on the public listener.
    let root = base.trim_end_matches("/l");
    assert_eq!(rig.client.get(format!("{root}/metrics")).send().await.expect("get").status(), 404);
    rig.clock.advance(TimeDelta::days(15));
    assert_eq!(rig.client.post(&accept).form(&[("x", "")]).send().await.expect("post").status(), 410);
    assert!(
        rig.store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead").lead.status.as_deref()
            == Some("Open - Not Contacted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_broken_links_give_pages_with_a_way_out() {
    let pages = LinkPages::new(
        [Some("Example Marketing <optout@x.example>")],
        Some("https://crm.example/lead/{id}/view"),
    );
    let rig = rig_with(LinkRules { pages, ..LinkRules::default() }).await;
    let accept = link(&rig, "accept").await;
    let base = accept.rsplit_once("/l/").expect("link").0.to_owned();
    let now = rig.clock_now();
    let lead = LeadId::new("00Q1");
    let click = rig.signer.click(
        &TrackedLink {
            message: None,
            lead: &lead,
            track: "welcome",
            step: "day 1",
            link: "guide",
            target: "https://www.example.com/guide?a=1&b=2",
        },
        now,
    );
    let mut other = Lead::new("00Q2");
    other.email = Some("bo@acme.example".into());
    rig.engine.upsert_lead(other).await.expect("lead");
    let unsubscribe = rig.signer.unsubscribe(&LeadId::new("00Q2"), "bo@acme.example", now);

    // A link cut short: whoever it was for learns how to opt out by email, and reps where to
    // answer instead. No link on the page is empty.
    let broken =
        rig.client.get(format!("{base}/l/{}", &accept[accept.len() - 20..])).send().await.expect("get");
    assert_eq!(broken.status(), 403);
    let body = broken.text().await.expect("body");
    assert!(
        body.contains("<a href=\"mailto:optout@x.example?subject=Unsubscribe\">optout@x.example</a>"),
        "{body}"
    );
    assert!(body.contains("sales team"), "{body}");
    assert!(!body.contains("href=\"\""), "{body}");

    // Past their expiry: the SLA link points the rep at the lead in the CRM.
    rig.clock.advance(TimeDelta::days(401));
    let expired = rig.client.post(&accept).form(&[("x", "")]).send().await.expect("post");
    assert_eq!(expired.status(), 410);
    let body = expired.text().await.expect("body");
    assert!(body.contains("<a href=\"https://crm.example/lead/00Q1/view\">open the lead</a>"), "{body}");
    // The tracked link offers the page it led to and an unsubscribe button that works.
    let page = rig.client.get(&click).send().await.expect("get");
    assert_eq!(page.status(), 410);
    let body = page.text().await.expect("body");
    assert!(body.contains("<a href=\"https://www.example.com/guide?a=1&amp;b=2\">"), "{body}");
    assert!(body.contains("<form method=\"post\">") && body.contains("optout@x.example"), "{body}");
    let unsubscribed = |history: Vec<(u64, leadloop_core::HistoryEvent)>| {
        history.iter().any(|(_, e)| {
            matches!(&e.kind, leadloop_core::EventKind::Activity { activity, .. } if activity == "unsubscribe")
        })
    };
    assert!(!unsubscribed(rig.store.history(&lead).await.expect("history")));
    let done = rig.client.post(&click).form(&[("x", "")]).send().await.expect("post");
    assert_eq!(done.status(), 200);
    assert!(unsubscribed(rig.store.history(&lead).await.expect("history")));
    // And an expired unsubscribe link still unsubscribes: its address is suppressed.
    assert_eq!(rig.client.get(&unsubscribe).send().await.expect("get").status(), 200);
    let done = rig.client.post(&unsubscribe).send().await.expect("post");
    assert_eq!(done.status(), 200);
    assert!(rig.store.suppression("bo@acme.example").await.expect("read").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_recorded_as_the_recipient_whose_link_was_used() {
    let rig = rig().await;
    rig.engine
        .upsert_person(Person {
            id: PersonId::new("005M"),
            email: "Mgr@X.example".into(),
            name: "Manager".into(),
            manager: None,
            time_zone: None,
            role: Role::Manager,
            active: true,
            capacity: None,
        })
        .await
        .expect("person");
    let now = rig.clock_now();
    let base = link(&rig, "accept").await.rsplit_once("/l/").expect("link").0.to_owned();
    // A link made before links named their recipient acts on nothing.
    let older = rig.signer.token(&leadloop::links::Claim {
        action: leadloop_core::sla::SalesAction::Accept,
        lead: LeadId::new("00Q1"),
        handoff: 1,
        expires: now + TimeDelta::days(1),
        recipient: None,
    });
    let older = format!("{base}/l/{older}");
    let page = rig.client.get(&older).send().await.expect("get");
    assert_eq!(page.status(), 410);
    assert!(page.text().await.expect("body").contains("latest email about this lead"));
    assert_eq!(rig.client.post(&older).form(&[("x", "")]).send().await.expect("post").status(), 410);
    assert!(rig.store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead").handoff.is_some());

    // The manager's own link (as their copy of an escalation carries it): recorded as theirs.
    let managers = leadloop_core::sla::LinkMaker::link(
        rig.signer.as_ref(),
        leadloop_core::sla::SalesAction::Accept,
        &LeadId::new("00Q1"),
        1,
        "mgr@x.example",
        now,
    );
    assert_eq!(rig.client.post(&managers).form(&[("x", "")]).send().await.expect("post").status(), 200);
    let history = rig.store.history(&LeadId::new("00Q1")).await.expect("history");
    let actor = history
        .iter()
        .find(|(_, e)| matches!(e.kind, leadloop_core::EventKind::StatusChanged { .. }))
        .map(|(_, e)| e.actor.clone());
    assert_eq!(
        actor,
        Some(leadloop_core::Actor::Sales { person: Some(PersonId::new("005M")), address: None })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_an_address_no_one_has_is_recorded_as_that_address() {
    let rig = rig().await;
    let now = rig.clock_now();
    let link = leadloop_core::sla::LinkMaker::link(
        rig.signer.as_ref(),
        leadloop_core::sla::SalesAction::Recycle,
        &LeadId::new("00Q1"),
        1,
        "Sales-Ops@X.example",
        now,
    );
    assert_eq!(rig.client.post(&link).form(&[("x", "")]).send().await.expect("post").status(), 200);
    let history = rig.store.history(&LeadId::new("00Q1")).await.expect("history");
    assert!(
        history.iter().any(|(_, e)| e.actor
            == leadloop_core::Actor::Sales { person: None, address: Some("sales-ops@x.example".into()) }),
        "{history:?}"
    );
}
