//! Deterministic sample orgs for tests, the benchmark and the demo: an executive, managers and
//! reps (with managers, time zones and `@example.com` emails), a lead queue, accounts with web
//! domains, leads (about 30 % at an account's domain) and tasks on leads. The same seed gives the
//! same org.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use crate::Emulator;

/// How big an org to make.
#[derive(Debug, Clone)]
pub struct SeedSpec {
    pub seed: u64,
    pub managers: usize,
    pub reps: usize,
    pub accounts: usize,
    pub leads: usize,
    /// Tasks on leads (a mix of completed and open).
    pub tasks: usize,
}

impl Default for SeedSpec {
    fn default() -> Self {
        SeedSpec { seed: 42, managers: 2, reps: 8, accounts: 20, leads: 200, tasks: 100 }
    }
}

/// The Ids made, by kind.
#[derive(Debug, Clone, Default)]
pub struct SeedIds {
    pub executive: String,
    pub managers: Vec<String>,
    pub reps: Vec<String>,
    /// The lead queue (`Group`, Type `Queue`).
    pub queue: String,
    pub accounts: Vec<String>,
    pub leads: Vec<String>,
    pub tasks: Vec<String>,
}

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "John",
    "Margaret",
    "Ken",
    "Radia",
    "Dennis",
    "Hedy",
    "Tim",
    "Sophie",
    "Linus",
    "Katherine",
    "Niklaus",
    "Shafi",
    "Leslie",
    "Mary",
    "Guido",
    "Anita",
    "Bjarne",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "McCarthy",
    "Hamilton",
    "Thompson",
    "Perlman",
    "Ritchie",
    "Lamarr",
    "Berners-Lee",
    "Wilson",
    "Torvalds",
    "Johnson",
    "Wirth",
    "Goldwasser",
    "Lamport",
    "Keller",
    "Rossum",
    "Borg",
    "Stroustrup",
];
const COMPANY_A: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Wonka",
    "Gringotts",
    "Oscorp",
    "Aperture",
    "Massive",
    "Blue Sun",
    "Dunder",
    "Pied Piper",
    "Nakatomi",
];
const COMPANY_B: &[&str] =
    &["Labs", "Industries", "Systems", "Corp", "Group", "Analytics", "Dynamics", "Works"];
const TITLES: &[&str] = &[
    "CTO",
    "VP Engineering",
    "Head of Marketing",
    "Data Engineer",
    "Procurement Manager",
    "CEO",
    "Developer",
    "Director of Sales",
    "IT Manager",
    "Analyst",
];
const INDUSTRIES: &[&str] =
    &["Technology", "Finance", "Healthcare", "Manufacturing", "Retail", "Education", "Energy", "Media"];
const COUNTRIES: &[&str] = &["US", "DE", "FR", "GB", "NL", "CA", "AU", "JP", "BR", "IN"];
const SOURCES: &[&str] =
    &["Web", "Webinar", "Trade Show", "Partner Referral", "Advertisement", "Purchased List"];
const INTERESTS: &[&str] = &["Analytics", "Automation", "Integrations", "Security", "Mobile", "AI"];
const ZONES: &[&str] = &[
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
];
const SUBJECTS: &[&str] = &["Call", "Email", "Meeting", "Demo", "Follow up"];

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn map(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn slug(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric()).flat_map(char::to_lowercase).collect()
}

fn user(
    first: &str,
    last: &str,
    email: &str,
    title: &str,
    zone: &str,
    manager: Option<&str>,
) -> Map<String, Value> {
    let mut m = map(vec![
        ("Username", Value::from(email)),
        ("Email", Value::from(email)),
        ("FirstName", Value::from(first)),
        ("LastName", Value::from(last)),
        ("Title", Value::from(title)),
        ("TimeZoneSidKey", Value::from(zone)),
        ("IsActive", Value::Bool(true)),
    ]);
    if let Some(manager) = manager {
        m.insert("ManagerId".into(), Value::from(manager));
    }
    m
}

/// Fills `emu` with an org made from `spec`.
pub fn populate(emu: &Emulator, spec: &SeedSpec) -> SeedIds {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut ids = SeedIds::default();
    emu.declare_field("Lead", "Interests__c");
    ids.executive = emu.insert(
        "User",
        user("Erin", "Exec", "erin.exec@example.com", "Chief Revenue Officer", "America/New_York", None),
    );
    for i in 0..spec.managers {
        let (first, last) = (FIRST[i % FIRST.len()], LAST[(i * 7 + 3) % LAST.len()]);
        let email = format!("{}.{}.m{i}@example.com", slug(first), slug(last));
        let zone = ZONES[i % ZONES.len()];
        ids.managers
            .push(emu.insert("User", user(first, last, &email, "Sales Manager", zone, Some(&ids.executive))));
    }
    for i in 0..spec.reps {
        let (first, last) = (FIRST[(i * 5 + 1) % FIRST.len()], LAST[(i * 11 + 2) % LAST.len()]);
        let email = format!("{}.{}.r{i}@example.com", slug(first), slug(last));
        let zone = ZONES[(i * 3 + 1) % ZONES.len()];
        let manager = if ids.managers.is_empty() {
            ids.executive.clone()
        } else {
            ids.managers[i % ids.managers.len()].clone()
        };
        ids.reps
            .push(emu.insert("User", user(first, last, &email, "Account Executive", zone, Some(&manager))));
    }
    ids.queue = emu.insert(
        "Group",
        map(vec![
            ("Name", Value::from("Unassigned Leads")),
            ("Type", Value::from("Queue")),
            ("DeveloperName", Value::from("Unassigned_Leads")),
        ]),
    );
    let owners: Vec<String> =
        if ids.reps.is_empty() { vec![ids.executive.clone()] } else { ids.reps.clone() };
    let mut domains = Vec::with_capacity(spec.accounts);
    let mut account_names = Vec::with_capacity(spec.accounts);
    let mut accounts = Vec::with_capacity(spec.accounts);
    for i in 0..spec.accounts {
        let name = format!(
            "{} {}",
            COMPANY_A[i % COMPANY_A.len()],
            COMPANY_B[(i / COMPANY_A.len()) % COMPANY_B.len()]
        );
        let name = if i >= COMPANY_A.len() * COMPANY_B.len() { format!("{name} {i}") } else { name };
        let domain = format!("{}.example", slug(&name));
        accounts.push(map(vec![
            ("Name", Value::from(name.as_str())),
            ("OwnerId", Value::from(owners[rng.random_range(0..owners.len())].as_str())),
            ("Website", Value::from(format!("https://www.{domain}"))),
            ("Industry", Value::from(pick(&mut rng, INDUSTRIES))),
        ]));
        domains.push(domain);
        account_names.push(name);
    }
    ids.accounts = emu.insert_many("Account", accounts);
    // Leads are inserted in chunks so a huge seed never holds every map in memory at once.
    let mut chunk = Vec::with_capacity(10_000.min(spec.leads));
    for i in 0..spec.leads {
        let first = pick(&mut rng, FIRST);
        let last = pick(&mut rng, LAST);
        let (company, domain) = if !domains.is_empty() && rng.random_bool(0.3) {
            let a = rng.random_range(0..domains.len());
            (account_names[a].clone(), domains[a].clone())
        } else {
            let company = format!("{} {}", pick(&mut rng, COMPANY_A), pick(&mut rng, COMPANY_B));
            let domain = format!("{}{}.example", slug(&company), i % 997);
            (company, domain)
        };
        let n = rng.random_range(1..=3);
        let mut interests: Vec<&str> = Vec::with_capacity(n);
        while interests.len() < n {
            let x = pick(&mut rng, INTERESTS);
            if !interests.contains(&x) {
                interests.push(x);
            }
        }
        let lead = map(vec![
            ("FirstName", Value::from(first)),
            ("LastName", Value::from(last)),
            ("Email", Value::from(format!("{}.{}{i}@{domain}", slug(first), slug(last)))),
            ("Company", Value::from(company)),
            ("Title", Value::from(pick(&mut rng, TITLES))),
            ("Industry", Value::from(pick(&mut rng, INDUSTRIES))),
            ("NumberOfEmployees", Value::from(rng.random_range(1..=5000))),
            ("Country", Value::from(pick(&mut rng, COUNTRIES))),
            ("LeadSource", Value::from(pick(&mut rng, SOURCES))),
            ("Status", Value::from("Open - Not Contacted")),
            ("OwnerId", Value::from(ids.queue.as_str())),
            ("HasOptedOutOfEmail", Value::Bool(rng.random_bool(0.05))),
            ("IsConverted", Value::Bool(false)),
            ("Interests__c", Value::from(interests.join(";"))),
        ]);
        chunk.push(lead);
        if chunk.len() == chunk.capacity() {
            ids.leads.extend(emu.insert_many("Lead", std::mem::take(&mut chunk)));
            chunk.reserve(10_000.min(spec.leads));
        }
    }
    if !chunk.is_empty() {
        ids.leads.extend(emu.insert_many("Lead", chunk));
    }
    if !ids.leads.is_empty() {
        let today = emu.now().date_naive();
        let mut tasks = Vec::with_capacity(spec.tasks);
        for _ in 0..spec.tasks {
            let who = &ids.leads[rng.random_range(0..ids.leads.len())];
            let done = rng.random_bool(0.6);
            let subject = pick(&mut rng, SUBJECTS);
            let day = today + chrono::Duration::days(rng.random_range(-20..=10));
            tasks.push(map(vec![
                ("Subject", Value::from(subject)),
                ("Status", Value::from(if done { "Completed" } else { "Not Started" })),
                ("WhoId", Value::from(who.as_str())),
                ("OwnerId", Value::from(owners[rng.random_range(0..owners.len())].as_str())),
                ("ActivityDate", Value::from(day.format("%Y-%m-%d").to_string())),
                ("Priority", Value::from("Normal")),
                ("Type", Value::from(if subject == "Email" { "Email" } else { "Call" })),
            ]));
        }
        ids.tasks = emu.insert_many("Task", tasks);
    }
    ids
}
