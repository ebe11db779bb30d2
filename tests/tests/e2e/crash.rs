//! SIGKILL during writes loses nothing reported durable, and never leaves half a batch.
//!
//! A child process commits batches (lead + history + timer + outbox entry) from four tasks and
//! prints `durable N` after each commit returns. The test kills it at a random moment, reopens
//! the store, and checks that every N printed is there, whole, and that no batch is partial.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use leadloop_store::{SledConfig, SledStore, Store};
use leadloop_tests::{lead_id, outbox_key, timer_key};
use rand::Rng;

const CYCLES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::rng();
    let mut acknowledged: BTreeSet<u64> = BTreeSet::new();
    let mut next_first = 0u64;
    for cycle in 0..CYCLES {
        let mut child = Command::new(env!("CARGO_BIN_EXE_leadloop-crash-writer"))
            .arg(dir.path())
            .arg(next_first.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the store is open, then let it write for a random while.
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).expect("writer opened"), "open");
        let run_for = Duration::from_millis(rng.random_range(5..150));
        std::thread::sleep(run_for);
        // SIGKILL: no destructors, no flush.
        child.kill().expect("kill");
        child.wait().expect("wait");
        reader.join().expect("reader");
        let before = acknowledged.len();
        for line in rx.try_iter() {
            if let Some(n) = line.strip_prefix("durable ") {
                acknowledged.insert(n.parse().expect("number"));
            }
        }
        let this_cycle = acknowledged.len() - before;

        let store = SledStore::open(&SledConfig::new(dir.path())).expect("reopen after SIGKILL");
        let mut present = BTreeSet::new();
        let mut after = None;
        loop {
            let page = store.leads(after.as_ref(), 1000).await.expect("leads");
            let Some(last) = page.last() else { break };
            after = Some(last.lead.id.clone());
            for record in &page {
                let n: u64 = record.lead.id.as_str()[1..].parse().expect("lead number");
                present.insert(n);
            }
        }
        let lost: Vec<_> = acknowledged.difference(&present).collect();
        assert!(lost.is_empty(), "cycle {cycle}: acknowledged but lost: {lost:?}");
        // Every batch present is whole: history, timer and outbox entry came with the lead.
        for &n in &present {
            let history = store.history(&lead_id(n)).await.expect("history");
            assert_eq!(history.len(), 2, "cycle {cycle}: lead {n} has partial history {history:?}");
            assert!(
                store.timer(&timer_key(n)).await.expect("timer").is_some(),
                "cycle {cycle}: lead {n} lacks its timer"
            );
            assert!(
                store.outbox_entry(&outbox_key(n)).await.expect("outbox").is_some(),
                "cycle {cycle}: lead {n} lacks its outbox entry"
            );
        }
        eprintln!(
            "cycle {cycle}: killed after {run_for:?}; {this_cycle} acknowledged this cycle, {} in all; {} present",
            acknowledged.len(),
            present.len()
        );
        next_first =
            present.iter().max().map_or(0, |n| n + 1).max(acknowledged.iter().max().map_or(0, |n| n + 1))
                + 1000;
        drop(store);
    }
    assert!(acknowledged.len() > CYCLES, "the writer must have acknowledged writes: {}", acknowledged.len());
}
