//! The child process of the crash test: commits crash-test batches from several tasks at once
//! and prints `durable N` after each commit returns. The parent kills it with SIGKILL at a
//! random moment and then checks that every N printed is in the store, whole.
//!
//! Usage: leadloop-crash-writer STATE_DIR FIRST_N

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use leadloop_store::{SledConfig, SledStore, Store};

const WRITERS: u64 = 4;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or_else(|| anyhow::anyhow!("usage: leadloop-crash-writer STATE_DIR FIRST_N"))?;
    let first: u64 = args.next().unwrap_or_else(|| "0".into()).parse()?;
    let store: Arc<dyn Store> = SledStore::open(&SledConfig::new(dir))?;
    let next = Arc::new(AtomicU64::new(first));
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    {
        let mut out = stdout.lock().map_err(|_| anyhow::anyhow!("stdout poisoned"))?;
        writeln!(out, "open")?;
        out.flush()?;
    }
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (store, next, stdout) = (Arc::clone(&store), Arc::clone(&next), Arc::clone(&stdout));
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                store.commit(leadloop_tests::crash_batch(n)).await?;
                let mut out = stdout.lock().map_err(|_| anyhow::anyhow!("stdout poisoned"))?;
                writeln!(out, "durable {n}")?;
                out.flush()?;
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
