//! Deterministic sample orgs for tests, the benchmark and the demo: an executive, managers and
//! reps (with managers, time zones and `@example.com` emails), a lead queue, accounts with web
//! domains, leads (about 30 % at an account's domain) and tasks on leads. The same seed gives the
//! same org.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use crate::Emulator;
use crate::store::BlobBuilder;

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

/// Writes the leads straight into record blobs, in chunks so the lock is released now and then:
/// a million leads take seconds.
fn insert_leads(
    emu: &Emulator,
    count: usize,
    rng: &mut StdRng,
    domains: &[String],
    account_names: &[String],
    queue: &str,
) -> Vec<String> {
    const FIELDS: [&str; 15] = [
        "FirstName",
        "LastName",
        "Name",
        "Email",
        "Company",
        "Title",
        "Industry",
        "NumberOfEmployees",
        "Country",
        "LeadSource",
        "Status",
        "OwnerId",
        "HasOptedOutOfEmail",
        "IsConverted",
        "Interests__c",
    ];
    let mut ids = Vec::with_capacity(count);
    let (oi, f) = {
        let mut db = emu.shared.db_mut();
        let Some(oi) = db.object_index("Lead") else { return ids };
        let obj = &mut db.objects[oi];
        let f: Vec<u16> = FIELDS.iter().map(|name| obj.declare(name)).collect();
        (oi, f)
    };
    let mut blob = BlobBuilder::with_capacity(512);
    let mut email = String::with_capacity(96);
    let mut name = String::with_capacity(48);
    let mut company = String::with_capacity(48);
    let mut interests = String::with_capacity(64);
    let mut done = 0;
    while done < count {
        let chunk = (count - done).min(20_000);
        let now = emu.shared.now_ms();
        let mut db = emu.shared.db_mut();
        for i in done..done + chunk {
            use std::fmt::Write;
            let first = pick(rng, FIRST);
            let last = pick(rng, LAST);
            company.clear();
            email.clear();
            let _ = write!(email, "{}.{}{i}@", slug(first), slug(last));
            if !domains.is_empty() && rng.random_bool(0.3) {
                let a = rng.random_range(0..domains.len());
                company.push_str(&account_names[a]);
                email.push_str(&domains[a]);
            } else {
                let _ = write!(company, "{} {}", pick(rng, COMPANY_A), pick(rng, COMPANY_B));
                let _ = write!(email, "{}{}.example", slug(&company), i % 997);
            }
            let n = rng.random_range(1..=3);
            interests.clear();
            let mut taken = 0;
            while taken < n {
                let x = pick(rng, INTERESTS);
                if !interests.split(';').any(|p| p == x) {
                    if taken > 0 {
                        interests.push(';');
                    }
                    interests.push_str(x);
                    taken += 1;
                }
            }
            name.clear();
            let _ = write!(name, "{first} {last}");
            blob.text(f[0], first)
                .text(f[1], last)
                .text(f[2], &name)
                .text(f[3], &email)
                .text(f[4], &company)
                .text(f[5], pick(rng, TITLES))
                .text(f[6], pick(rng, INDUSTRIES))
                .int(f[7], rng.random_range(1..=5000))
                .text(f[8], pick(rng, COUNTRIES))
                .text(f[9], pick(rng, SOURCES))
                .text(f[10], "Open - Not Contacted")
                .text(f[11], queue)
                .boolean(f[12], rng.random_bool(0.05))
                .boolean(f[13], false)
                .text(f[14], &interests);
            if let Some(id) = db.insert_blob(oi, blob.finish(), now) {
                ids.push(id.to_string());
            }
        }
        drop(db);
        done += chunk;
    }
    ids
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
    ids.leads = insert_leads(emu, spec.leads, &mut rng, &domains, &account_names, &ids.queue);
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
