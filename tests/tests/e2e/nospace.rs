//! A full state directory: the store refuses with a clear error, acknowledges nothing it did
//! not write, and everything acknowledged before is there once space returns. The directory
//! is a small tmpfs this test mounts (the tests run as root, as CI does).

use std::path::Path;
use std::process::Command;

use leadloop_store::{SledConfig, SledStore, Store, StoreError};
use leadloop_tests::lead_id;

fn mount(dir: &Path, size: &str) {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(status.success(), "cannot mount a tmpfs at {} (this test needs root)", dir.display());
}

fn remount(dir: &Path, size: &str) {
    let status = Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(status.success(), "cannot remount {}", dir.display());
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_directory_refuses_clearly_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mountpoint = dir.path().join("small");
    std::fs::create_dir(&mountpoint).expect("mkdir");
    mount(&mountpoint, "3m");
    let _unmount = Unmount(&mountpoint);
    let state = mountpoint.join("state");

    let mut acknowledged = 0u64;
    let store = SledStore::open(&SledConfig::new(&state)).expect("open on a small tmpfs");
    let error = {
        let mut n = 0u64;
        loop {
            match store.commit(leadloop_tests::crash_batch(n)).await {
                Ok(_) => {
                    acknowledged = n + 1;
                    n += 1;
                }
                Err(error) => break error,
            }
            assert!(n < 1_000_000, "3 MiB never filled up");
        }
    };
    eprintln!("full after {acknowledged} batches: {error}");
    assert!(matches!(error, StoreError::NoSpace { .. }), "{error:?}");
    assert!(error.to_string().contains("no space left in state directory"), "{error}");

    // Space returns. The store stays refused (sled keeps the I/O error) until it is opened
    // again, which is why the daemon exits on it and systemd restarts it.
    remount(&mountpoint, "64m");
    drop(store);
    // After the restart every acknowledged batch is there, whole.
    let store = SledStore::open(&SledConfig::new(&state)).expect("reopen once space returns");
    let (mut lost, mut partial) = (Vec::new(), Vec::new());
    for n in 0..acknowledged {
        if store.lead(&lead_id(n)).await.expect("read").is_none() {
            lost.push(n);
        } else if store.history(&lead_id(n)).await.expect("history").len() != 2
            || store.outbox_entry(&leadloop_tests::outbox_key(n)).await.expect("outbox").is_none()
        {
            partial.push(n);
        }
    }
    // Each batch queued one effect under its own key: more pending effects than batches
    // present would be a duplicate.
    let present = acknowledged + u64::from(store.lead(&lead_id(acknowledged)).await.expect("read").is_some());
    let pending = store.outbox_pending(leadloop_core::Channel::Crm).await.expect("pending").0;
    eprintln!(
        "fault 8: ENOSPC on the state dir (3 MiB tmpfs) ×1 — lost {}, duplicated {}; {acknowledged} \
         batches acknowledged, {} partial",
        lost.len(),
        pending.saturating_sub(present),
        partial.len()
    );
    assert!(lost.is_empty(), "acknowledged batches lost: {lost:?}");
    assert!(partial.is_empty(), "partial batches: {partial:?}");
    assert_eq!(pending, present, "one effect per batch present, none twice");
    // And it takes writes again.
    store.commit(leadloop_tests::crash_batch(acknowledged + 1000)).await.expect("writes after space returns");
}
