//! `leadloop`: see `leadloop --help` and `docs/cli.md`.

fn main() -> std::process::ExitCode {
    leadloop::cli::main()
}
