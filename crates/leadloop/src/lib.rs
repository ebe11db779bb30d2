//! The leadloop binary's library: command-line interface, config file, daemon lifecycle and
//! admin HTTP. It is the only crate that knows the config format and the CLI; the rest of the
//! workspace gets plain values from it.

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod email_cmd;
pub mod exit;
pub mod links;
pub mod nurture_cmd;
pub mod report;
pub mod runtime;
pub mod simulate;
pub mod sla_cmd;
pub mod sync_cmd;
pub mod telemetry;
