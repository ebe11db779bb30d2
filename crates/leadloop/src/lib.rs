//! The leadloop binary's library: command-line interface, config file, daemon lifecycle and
//! admin HTTP. It is the only crate that knows the config format and the CLI; the rest of the
//! workspace gets plain values from it.

pub mod admin;
pub mod cli;
pub mod config;
pub mod connect_cmd;
pub mod daemon;
pub mod demo;
pub mod email_cmd;
pub mod exit;
pub mod links;
pub mod nurture_cmd;
pub mod report;
pub mod runtime;
pub mod serve;
pub mod simulate;
pub mod sla_cmd;
pub mod sync_cmd;
pub mod telemetry;

/// Prints a line on stdout, like `println!`, except that a reader that went away
/// (`leadloop leads list | head`) ends the command quietly with exit 0, as Unix tools do,
/// instead of a panic.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out_line(format_args!($($arg)*))
    };
}

/// What [`outln!`] calls.
pub fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    if let Err(error) = written {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cannot write to standard output: {error}");
        std::process::exit(i32::from(exit::FAILURE));
    }
}
