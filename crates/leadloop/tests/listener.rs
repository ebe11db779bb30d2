//! The listeners under abuse. Slow clients are cut off at the header timeout, and a flood of
//! them on the public listener, at a low open-file limit, does not silence the daemon's
//! `/healthz`; oversize bodies are refused unread and a token is checked before any body; a
//! replayed link is acted on a few times, not 2,000; a greedy client gets 429 while others
//! get through.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use leadloop::links::{LinkLimits, LinkRules, Signer};
use leadloop::serve::Limits;
use leadloop_core::nurture::{NurtureLinks as _, TrackedLink};
use leadloop_core::sla::{LinkMaker as _, SalesAction, SlaConfig, SlaRules};
use leadloop_core::{EventKind, Lead, LeadId, Person, PersonId, Role, VirtualClock};
use leadloop_engine::{ClickRules, Engine};
use leadloop_plugin::Secret;
use leadloop_store::{SledConfig, SledStore, Store};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const KEY: &str = "a test key that is at least 32 bytes long";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

/// Opens a connection and sends half a request: what a slowloris client does.
async fn half_request(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(b"GET /l/x HTTP/1.1\r\nHost: leads.example.com\r\n").await.ok()?;
    Some(stream)
}

/// True when the server closes `stream` (end of file or reset) within `limit`.
async fn closed_within(mut stream: TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_slow_clients_starves_neither_listener() {
    // The daemon runs with 128 open files; 150 half-sent requests to its public listener
    // would take them all, for the 2 s of the header timeout, if it accepted every connection.
    let dir = tempfile::tempdir().expect("tempdir");
    let (public, admin) = (free_port(), free_port());
    let key = dir.path().join("link-key");
    std::fs::write(&key, KEY).expect("key");
    let config = dir.path().join("leadloop.toml");
    std::fs::write(
        &config,
        format!(
            "[links]\npublic_listen = \"127.0.0.1:{public}\"\npublic_url = \"https://leads.example.com\"\nsigning_key_file = \"{}\"\n\n[links.limits]\nheader_read_timeout = \"2s\"\nmax_connections = 48\n",
            key.display()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log");
    let mut daemon = Command::new("sh")
        .args(["-c", "ulimit -n 128 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_leadloop"))
        .args(["run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("daemon");
    // No pooled connections: each request needs the daemon to accept a new one.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let health = format!("http://127.0.0.1:{admin}/healthz");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("http://127.0.0.1:{admin}/readyz")).send().await.map(|r| r.status()).ok()
        != Some(reqwest::StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "the daemon never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let public_addr: SocketAddr = format!("127.0.0.1:{public}").parse().expect("addr");
    let mut slow = Vec::new();
    for _ in 0..150 {
        slow.extend(half_request(public_addr).await);
    }
    assert!(slow.len() >= 140, "only {} connections opened", slow.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Health keeps answering, at once, while the public listener is flooded.
    for _ in 0..5 {
        let started = Instant::now();
        let response = client.get(&health).send().await;
        let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
        assert_eq!(response.map(|r| r.status().as_u16()).ok(), Some(200), "healthz during the flood\n{log}");
        assert!(started.elapsed() < Duration::from_secs(1), "healthz took {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every slow connection is closed: 48 at a time, each after 2 s without headers.
    let closed =
        futures::future::join_all(slow.into_iter().map(|s| closed_within(s, Duration::from_secs(15)))).await;
    assert!(
        closed.iter().all(|c| *c),
        "{} of {} slow connections still open",
        closed.iter().filter(|c| !**c).count(),
        closed.len()
    );
    // And the public listener serves again.
    let page = client.get(format!("http://127.0.0.1:{public}/l/nonsense")).send().await.expect("public GET");
    assert_eq!(page.status(), 403);

    let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the daemon did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_of_the_admin_listener_are_cut_off_while_health_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = leadloop::admin::router(leadloop::admin::AdminState {
        ready: Arc::new(AtomicBool::new(true)),
        metrics: None,
        store: None,
        sla: Arc::new(SlaConfig::default()),
        scoring: Arc::new(leadloop_core::scoring::ScoringConfig::default()),
        auth: Arc::new(leadloop::admin::AdminAuth::Loopback),
        guard: None,
        crm_wake: None,
    });
    let limits = Limits { header_read_timeout: Duration::from_secs(1), ..Limits::ADMIN };
    tokio::spawn(leadloop::serve::serve(listener, router, limits, CancellationToken::new()));
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(half_request(addr).await.expect("connect"));
    }
    let health = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let response = health.get(format!("http://{addr}/healthz")).send().await.expect("healthz");
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let closed =
        futures::future::join_all(slow.into_iter().map(|s| closed_within(s, Duration::from_secs(5)))).await;
    assert!(closed.iter().all(|c| *c), "slow connections left open");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    signer: Arc<Signer>,
    clock: Arc<VirtualClock>,
    addr: SocketAddr,
    base: String,
}

async fn rig(rules: LinkRules) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir.path())).expect("store");
    let clock = Arc::new(VirtualClock::new("2026-03-02T14:00:00Z".parse().expect("instant")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let base = format!("http://{addr}");
    let signer = Arc::new(Signer::new(Secret::for_tests(KEY), &base, Duration::from_secs(14 * 86_400)));
    let key = dir.path().join("link-key");
    std::fs::write(&key, KEY).expect("key");
    let (config, _) = leadloop::config::load_str(
        Path::new("t.toml"),
        &format!(
            "[[scoring.engagement]]\nname = \"clicks\"\nactivity = \"email_click\"\npoints = 1\n[[nurture.tracks]]\nname = \"t\"\n[[nurture.tracks.steps]]\nafter = \"30d\"\ntemplate = \"nurture_example\"\n[links]\npublic_listen = \"{addr}\"\npublic_url = \"{base}\"\nsigning_key_file = \"{}\"\n",
            key.display()
        ),
    )
    .expect("config");
    let policy = config
        .rules(SlaRules::new(SlaConfig::default()).with_links(signer.clone()))
        .with_nurture(config.nurture_rules(Some(signer.clone())));
    let engine = Engine::new(Arc::clone(&store), clock.clone(), Arc::new(policy));
    tokio::spawn(leadloop::links::serve(
        listener,
        signer.clone(),
        None,
        engine.clone(),
        rules,
        CancellationToken::new(),
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
    lead.email = Some("ana@acme.example".into());
    lead.status = Some("Open - Not Contacted".into());
    lead.owner_id = Some(PersonId::new("005A"));
    engine.upsert_lead(lead).await.expect("lead");
    Rig { _dir: dir, store, signer, clock, addr, base }
}

impl Rig {
    fn now(&self) -> leadloop_core::Timestamp {
        leadloop_core::Clock::now(&*self.clock)
    }

    fn path(&self, url: &str) -> String {
        url.strip_prefix(&self.base).expect("a link of this listener").to_owned()
    }

    async fn history(&self) -> Vec<EventKind> {
        self.store
            .history(&LeadId::new("00Q1"))
            .await
            .expect("history")
            .into_iter()
            .map(|(_, e)| e.kind)
            .collect()
    }

    /// Sends `head` (and `body`) on a fresh connection and returns the status line's code, or
    /// `None` when nothing came back within 3 seconds.
    async fn raw(&self, head: String, body: &[u8]) -> Option<u16> {
        let mut stream = TcpStream::connect(self.addr).await.ok()?;
        stream.write_all(head.as_bytes()).await.ok()?;
        // A server that refuses early may close before the body is all sent.
        let _ = stream.write_all(body).await;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        tokio::time::timeout(Duration::from_secs(3), async {
            while !answer.windows(2).any(|w| w == b"\r\n") {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await
        .ok()?;
        String::from_utf8_lossy(&answer).split(' ').nth(1)?.parse().ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_are_refused_unread_and_the_token_comes_first() {
    let rig = rig(LinkRules::default()).await;
    let accept =
        rig.path(&rig.signer.link(SalesAction::Accept, &LeadId::new("00Q1"), 1, "rep@x.example", rig.now()));
    let events = rig.history().await.len();

    // 2 MiB announced: refused before a byte of it is sent.
    let head = format!(
        "POST {accept} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    assert_eq!(rig.raw(head, b"").await, Some(413));
    // A chunked body past the cap (16 KiB): refused when the cap is reached.
    let mut chunked = Vec::new();
    for _ in 0..16 {
        chunked.extend_from_slice(format!("400\r\n{}\r\n", "x".repeat(1024)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!("POST {accept} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(rig.raw(head, &chunked).await, Some(413));
    // A bad token is refused without waiting for a body that never comes.
    let head = "POST /l/bad.token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned();
    assert_eq!(rig.raw(head, b"").await, Some(403));
    assert_eq!(rig.history().await.len(), events, "nothing was written");
    let record = rig.store.lead(&LeadId::new("00Q1")).await.expect("read").expect("lead");
    assert!(record.handoff.is_some(), "the hand-off is still open");

    // Within the cap the same answer goes through.
    let client = reqwest::Client::new();
    let done = client
        .post(format!("{}{accept}", rig.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("x={}", "y".repeat(4000)))
        .send()
        .await
        .expect("POST");
    assert_eq!(done.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_replays_of_a_link_are_not_two_thousand_writes() {
    // Every click would count (no click rules) and the client is not limited: only the
    // per-link allowance stands between the replays and the store.
    let limits = LinkLimits { per_ip_per_minute: 1_000_000, per_token: 5, ..LinkLimits::default() };
    let rules = LinkRules {
        limits,
        clicks: ClickRules { window: Duration::ZERO, min_delay: Duration::ZERO },
        ..LinkRules::default()
    };
    let rig = rig(rules).await;
    let lead = LeadId::new("00Q1");
    let click = |name: &str| {
        rig.signer.click(
            &TrackedLink {
                message: None,
                lead: &lead,
                track: "t",
                step: "step 1",
                link: name,
                target: "https://www.example.com/guide",
            },
            rig.now(),
        )
    };
    let guide = click("guide");
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let statuses: Vec<u16> = futures::stream::iter(0..2000)
        .map(|_| {
            let (client, url) = (client.clone(), guide.clone());
            async move { client.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 302), "every replay still redirects");
    let clicks = |history: &[EventKind]| {
        history
            .iter()
            .filter(|e| matches!(e, EventKind::Activity { activity, .. } if activity == "email_click"))
            .count()
    };
    assert_eq!(clicks(&rig.history().await), 5, "only the link's allowance was recorded");

    // The unsubscribe link: one write, then nothing, then 429.
    let unsubscribe = rig.signer.unsubscribe(&lead, "ana@acme.example", rig.now());
    let statuses: Vec<u16> = futures::stream::iter(0..2000)
        .map(|_| {
            let (client, url) = (client.clone(), unsubscribe.clone());
            async move { client.post(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1995);
    let history = rig.history().await;
    let unsubscribes = history
        .iter()
        .filter(|e| matches!(e, EventKind::Activity { activity, .. } if activity == "unsubscribe"))
        .count();
    assert_eq!(unsubscribes, 1);
    assert!(rig.store.suppression("ana@acme.example").await.expect("read").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greedy_client_gets_429_and_others_still_get_through() {
    let limits = LinkLimits {
        per_ip_per_minute: 10,
        trusted_proxies: vec!["127.0.0.1".parse().expect("ip")],
        ..LinkLimits::default()
    };
    let rig = rig(LinkRules { limits, ..LinkRules::default() }).await;
    let client = reqwest::Client::new();
    let url = format!("{}/l/nonsense", rig.base);
    let from = |ip: &'static str| client.get(&url).header("x-forwarded-for", format!("198.51.100.9, {ip}"));
    for _ in 0..10 {
        assert_eq!(from("203.0.113.7").send().await.expect("GET").status(), 403);
    }
    let refused = from("203.0.113.7").send().await.expect("GET");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    // Another client behind the same proxy is not affected.
    assert_eq!(from("203.0.113.8").send().await.expect("GET").status(), 403);

    // A peer that is not a trusted proxy is limited by its own address, whatever it claims.
    let mut answers = Vec::new();
    for n in 0..11 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
        let mut stream = socket.connect(rig.addr).await.expect("connect");
        let request = format!(
            "GET /l/nonsense HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.{n}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        answers.push(String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_owned());
    }
    assert_eq!(answers.iter().filter(|a| a.contains(" 403 ")).count(), 10, "{answers:?}");
    assert!(answers[10].contains(" 429 "), "{answers:?}");
}
