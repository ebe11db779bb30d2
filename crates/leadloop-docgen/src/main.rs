//! `cargo run -p leadloop-docgen [ROOT]`: regenerates leadloop's man pages (`docs/man/`) and
//! shell completions (`completions/`) under ROOT, by default the repository this crate is in.
//! Stale pages of commands that no longer exist are removed.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let result = leadloop_docgen::existing(&root).and_then(|before| {
        let written = leadloop_docgen::generate(&root)?;
        for stale in before.iter().filter(|f| !written.contains(f)) {
            std::fs::remove_file(root.join(stale))?;
            eprintln!("removed {}", stale.display());
        }
        Ok(written)
    });
    match result {
        Ok(written) => {
            eprintln!("wrote {} files under {}", written.len(), root.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("leadloop-docgen: cannot write under {}: {e}", root.display());
            ExitCode::FAILURE
        }
    }
}
