//! `leadloop`: see `leadloop --help` and `docs/cli.md`.

/// mimalloc: sync and ingest allocate many short-lived maps and strings; glibc's allocator
/// spent a third of a bulk sync in malloc/free and fragmented (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    leadloop::cli::main()
}
