//! Measures how fast a client can pull every lead out of a running emulator (the binary, started
//! with `--seed-leads N`): one query, then every `nextRecordsUrl`, each page parsed as JSON.
//!
//! `cargo run --release -p leadloop-sf-emulator --example page_bench -- http://127.0.0.1:PORT`

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use serde_json::Value;

#[tokio::main]
async fn main() {
    let base = std::env::args().nth(1).expect("usage: page_bench BASE_URL");
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{base}/services/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "leadloop-consumer-key"),
            ("client_secret", "leadloop-client-secret"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let token = token["access_token"].as_str().expect("access_token").to_owned();
    let soql = "SELECT Id, FirstName, LastName, Email, Company, Title, Industry, NumberOfEmployees, Country, \
                LeadSource, Status, OwnerId, HasOptedOutOfEmail, IsConverted, Interests__c, SystemModstamp \
                FROM Lead WHERE SystemModstamp > 2000-01-01T00:00:00Z ORDER BY SystemModstamp, Id";
    let started = Instant::now();
    let first = http
        .get(format!("{base}/services/data/v62.0/query"))
        .query(&[("q", soql)])
        .bearer_auth(&token)
        .send()
        .await
        .expect("query");
    let mut page: Value = serde_json::from_slice(&first.bytes().await.expect("body")).expect("json");
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut records = page["records"].as_array().map_or(0, Vec::len);
    let mut pages = 1;
    let mut slowest = 0.0f64;
    while let Some(next) = page["nextRecordsUrl"].as_str().map(str::to_owned) {
        let t = Instant::now();
        let bytes = http
            .get(format!("{base}{next}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("page")
            .bytes()
            .await
            .expect("body");
        page = serde_json::from_slice(&bytes).expect("json");
        slowest = slowest.max(t.elapsed().as_secs_f64() * 1000.0);
        records += page["records"].as_array().map_or(0, Vec::len);
        pages += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "records={records} pages={pages} total_s={secs:.2} records_per_s={:.0} first_page_ms={first_ms:.1} \
         slowest_next_page_ms={slowest:.1} mean_page_ms={:.2}",
        records as f64 / secs,
        secs * 1000.0 / pages as f64
    );
}
