//! Exit codes, from sysexits(3) where one fits, so systemd and scripts can tell a bad config
//! (restarting will not help) from a transient failure.

/// Success.
pub const OK: u8 = 0;
/// Any other failure.
pub const FAILURE: u8 = 1;
/// The command line was wrong (clap exits with 2 on its own errors; this is for ours).
pub const USAGE: u8 = 64;
/// The input data was wrong (EX_DATAERR): a malformed `simulate` events file.
pub const DATA: u8 = 65;
/// The state directory or store failed: locked by another daemon, unreadable, full.
pub const STORE: u8 = 74;
/// The configuration is invalid (EX_CONFIG). The unit sets `RestartPreventExitStatus=78`.
pub const CONFIG: u8 = 78;
