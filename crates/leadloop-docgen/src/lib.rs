//! leadloop's man pages and shell completions, generated from the CLI definition
//! ([`leadloop::cli::Cli`]) with clap_mangen and clap_complete. `cargo run -p leadloop-docgen`
//! writes them into the repository (`docs/man/`, `completions/`); a test regenerates them into
//! a temporary directory and fails when the checked-in files differ, so they always match the
//! CLI. The Debian package installs them.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// Where the man pages go, relative to the output root.
pub const MAN_DIR: &str = "docs/man";
/// Where the completions go, relative to the output root.
pub const COMPLETIONS_DIR: &str = "completions";

/// The completion scripts: shell and file name (as the package installs them).
pub const COMPLETIONS: [(Shell, &str); 3] =
    [(Shell::Bash, "leadloop.bash"), (Shell::Zsh, "_leadloop"), (Shell::Fish, "leadloop.fish")];

/// Sections added to `leadloop(1)` after the ones clap knows (its options and subcommands).
const EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
Any other failure (for \fBvalidate \-\-connect\fR: a connection check failed).
.TP
\fB64\fR
Usage error: bad flags or arguments.
.TP
\fB65\fR
Bad input data (\fBsimulate\fR events).
.TP
\fB74\fR
State directory or store error: locked, unreadable, damaged or full; with PostgreSQL, the
server unreachable, the schema in use or too new.
.TP
\fB78\fR
Configuration error. The systemd unit does not restart the daemon after it.
.SH ENVIRONMENT
.TP
\fBLEADLOOP_CONFIG\fR
The config file when \fB\-\-config\fR is not given; without either,
\fI/etc/leadloop/leadloop.toml\fR.
.TP
\fBRUST_LOG\fR
The log level of \fBleadloop run\fR (default \fBinfo\fR).
.SH FILES
.TP
\fI/etc/leadloop/leadloop.toml\fR
The config file (the package installs the annotated example).
.TP
\fI/var/lib/leadloop\fR
The state directory of the service (the store, its lock, staged mail).
.TP
\fI/usr/lib/systemd/system/leadloop.service\fR
The hardened systemd unit; it runs as the system user \fBleadloop\fR.
.SH "SEE ALSO"
\fI/usr/share/doc/leadloop/cli.md\fR (the command\-line contract),
\fI/usr/share/doc/leadloop/operations.md\fR (running the service),
\fBsystemctl\fR(1), \fBjournalctl\fR(1)
"#;

/// Writes every man page and completion script under `root` (creating `docs/man/` and
/// `completions/`), and returns the files written, relative to `root`, sorted.
pub fn generate(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man_dir = root.join(MAN_DIR);
    std::fs::create_dir_all(&man_dir)?;
    let command = leadloop::cli::Cli::command().disable_help_subcommand(true);
    let mut built = command.clone();
    built.build();
    let source = format!("leadloop {}", built.get_version().unwrap_or_default());
    man_pages(&built, &source, &man_dir, &mut written)?;

    let completions_dir = root.join(COMPLETIONS_DIR);
    std::fs::create_dir_all(&completions_dir)?;
    for (shell, name) in COMPLETIONS {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "leadloop", &mut text);
        std::fs::write(completions_dir.join(name), text)?;
        written.push(Path::new(COMPLETIONS_DIR).join(name));
    }
    written.sort();
    Ok(written)
}

/// One page per command and subcommand (`leadloop.1`, `leadloop-sla-list.1`, …), named as
/// `man leadloop-sla-list` finds them.
fn man_pages(
    command: &clap::Command,
    source: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, source, dir, written)?;
    }
    let man = clap_mangen::Man::new(command.clone()).source(source).manual("leadloop manual");
    let name = man.get_filename();
    let mut text = Vec::new();
    man.render(&mut text)?;
    if command.get_display_name().is_none_or(|n| n == "leadloop") {
        text.write_all(EXTRA.as_bytes())?;
    }
    std::fs::write(dir.join(&name), text)?;
    written.push(Path::new(MAN_DIR).join(name));
    Ok(())
}

/// The files under `root` that [`generate`] owns: every file in `docs/man/` and the completion
/// scripts, relative to `root`, sorted. A page left over from a removed command shows up here.
pub fn existing(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    match std::fs::read_dir(root.join(MAN_DIR)) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    found.push(Path::new(MAN_DIR).join(entry.file_name()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for (_, name) in COMPLETIONS {
        if root.join(COMPLETIONS_DIR).join(name).is_file() {
            found.push(Path::new(COMPLETIONS_DIR).join(name));
        }
    }
    found.sort();
    Ok(found)
}
