//! `report`: runs every benchmark at full size, each in its own process (so each peak RSS is
//! its own), and writes the figures into BENCHMARKS.md between `<!-- bench:NAME -->` and
//! `<!-- /bench:NAME -->` markers (a section is appended when its markers are missing), with
//! the machine, the date, the commit and the command. Text outside the markers — the notes on
//! reading the figures — is left alone.
//!
//! `cargo run --release -p leadloop-bench -- report` regenerates everything (about 20 minutes
//! on 2 vCPUs); `--only sync --only nurture` picks benchmarks. The `smtp` benchmark needs the
//! test peers' Python (`LEADLOOP_TEST_PYTHON`, set up by `bash tests/run`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to update.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Run only these benchmarks (repeatable); default: all.
    #[arg(long)]
    only: Vec<String>,
}

/// Every benchmark, with the title of its section.
const BENCHES: &[(&str, &str)] = &[
    ("store", "Store: batched writes, group commit, the timer index"),
    ("smtp", "Email relay against a real SMTP server"),
    ("sla", "SLA ticks with 1,000,000 open hand-offs"),
    ("lifecycle", "Scoring and routing"),
    ("nurture", "Nurture: one step due for 1,000,000 enrolled leads"),
    ("sync", "Salesforce: initial sync of 1,000,000 leads, idle polling"),
    ("restart", "Restart with 1,000,000 pending timers"),
];

pub fn run(args: Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut text = std::fs::read_to_string(&args.out).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    text = replace_block(&text, "machine", "Machine", &machine());
    let commit =
        command_output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "(unknown)".into());
    for (name, title) in BENCHES {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("running {name} …");
        let started = Instant::now();
        let output = Command::new(&exe).arg(name).output()?;
        let took = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let body = if output.status.success() {
            format!(
                "Command: `cargo run --release -p leadloop-bench -- {name}` (run by `report`, {took:.0} s). \
                 Measured {} at commit {commit}.\n\n{}",
                chrono::Utc::now().format("%Y-%m-%d"),
                with_table_headers(stdout.trim_end())
            )
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // The error itself, not the backtrace after it.
            let cause: Vec<&str> = stderr
                .lines()
                .filter(|l| l.starts_with("Error") || l.contains("panicked at") || l.starts_with("Caused by"))
                .take(3)
                .collect();
            let tail: Vec<&str> = if cause.is_empty() {
                stderr.lines().rev().take(5).collect()
            } else {
                cause.into_iter().rev().collect()
            };
            format!(
                "Not measured in the last `report` run ({}): `{name}` failed: {}",
                chrono::Utc::now().format("%Y-%m-%d"),
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )
        };
        text = replace_block(&text, name, title, &body);
        // Written after each benchmark, so an interrupted run keeps what it measured.
        std::fs::write(&args.out, &text)?;
    }
    std::fs::write(&args.out, &text)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// Gives every Markdown table in `text` a header row (some benchmarks print bare rows).
fn with_table_headers(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let starts_table = line.starts_with('|') && (i == 0 || !lines[i - 1].starts_with('|'));
        let has_header =
            lines.get(i + 1).is_some_and(|next| next.starts_with("|---") || next.starts_with("| ---"));
        if starts_table && !has_header {
            if i > 0 && !lines[i - 1].is_empty() {
                out.push("");
            }
            out.push("| figure | value |");
            out.push("|---|---|");
        }
        out.push(line);
    }
    out.join("\n")
}

/// Replaces what is between the markers of `name`, or appends a section with them.
fn replace_block(text: &str, name: &str, title: &str, body: &str) -> String {
    let open = format!("<!-- bench:{name} -->");
    let close = format!("<!-- /bench:{name} -->");
    match (text.find(&open), text.find(&close)) {
        (Some(start), Some(end)) if end > start => {
            format!("{}{open}\n{body}\n{}", &text[..start], &text[end..])
        }
        _ => format!("{}\n## {title}\n\n{open}\n{body}\n{close}\n", text.trim_end()),
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "(unknown CPU)".into());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(|| "?".into(), |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = command_output("rustc", &["--version"]).unwrap_or_else(|| "rustc (unknown)".into());
    format!(
        "- {cpus} CPUs ({model}), {memory} RAM, Linux {}\n- {rustc}, release profile, mimalloc\n- sled 0.34.7 with a 64 MiB page cache (the default `store.cache_mb`)",
        kernel.trim()
    )
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_table_rows_get_a_header() {
        assert_eq!(
            with_table_headers("a line\n| x | 1 |\n| y | 2 |"),
            "a line\n\n| figure | value |\n|---|---|\n| x | 1 |\n| y | 2 |"
        );
        let full = "| figure | value |\n|---|---|\n| x | 1 |";
        assert_eq!(with_table_headers(full), full);
    }

    #[test]
    fn replaces_between_markers_and_appends_when_missing() {
        let text = "# B\n\nnotes\n<!-- bench:x -->\nold\n<!-- /bench:x -->\nmore notes\n";
        let replaced = replace_block(text, "x", "X", "new");
        assert_eq!(replaced, "# B\n\nnotes\n<!-- bench:x -->\nnew\n<!-- /bench:x -->\nmore notes\n");
        let appended = replace_block(text, "y", "Why", "fresh");
        assert!(appended.ends_with("\n## Why\n\n<!-- bench:y -->\nfresh\n<!-- /bench:y -->\n"));
        assert!(appended.contains("old"));
    }
}
