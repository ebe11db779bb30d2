//! The checked-in man pages and completions match the CLI: regenerated into a temporary
//! directory, every file is byte-for-byte the one in the repository, and the repository has
//! no page the CLI no longer makes.

use std::path::PathBuf;

#[test]
fn checked_in_man_pages_and_completions_match_the_cli() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fresh = tempfile::tempdir().expect("tempdir");
    let generated = leadloop_docgen::generate(fresh.path()).expect("generate");
    assert!(generated.len() > 10, "expected a page per command: {generated:?}");
    let checked_in = leadloop_docgen::existing(&repo).expect("list checked-in files");
    let mut problems = Vec::new();
    for file in &generated {
        let want = std::fs::read(fresh.path().join(file)).expect("read generated");
        match std::fs::read(repo.join(file)) {
            Ok(have) if have == want => {}
            Ok(_) => problems.push(format!("{} differs from the CLI", file.display())),
            Err(e) => problems.push(format!("{} is missing ({e})", file.display())),
        }
    }
    for file in checked_in.iter().filter(|f| !generated.contains(f)) {
        problems.push(format!("{} is stale: no such command", file.display()));
    }
    assert!(
        problems.is_empty(),
        "{}\nregenerate with `cargo run -p leadloop-docgen` and commit the result",
        problems.join("\n")
    );
}
