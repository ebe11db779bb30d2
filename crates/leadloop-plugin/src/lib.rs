//! What connector plugins share. A connector is a crate with a typed config (serde,
//! `deny_unknown_fields`) whose `build(&BuildContext)` returns the running connector; the
//! context carries what it needs from the daemon.

pub mod secret;
/// Durations in config as people write them; shared with the core's policy types.
pub use leadloop_core::serde_duration;

use std::sync::Arc;

use leadloop_core::Clock;
use tokio_util::sync::CancellationToken;

pub use secret::{Secret, SecretError, SecretSource};

/// Handed to every connector's `build`.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub clock: Arc<dyn Clock>,
    /// Cancelled when the daemon shuts down; long-running connector tasks stop on it.
    pub shutdown: CancellationToken,
}

/// A connector that could not be built: the config key at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct BuildError {
    pub key: String,
    pub message: String,
}

impl BuildError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// Reads a secret named by a `*_file` or `*_env` pair of config keys; at most one may be set.
pub fn secret_from(
    prefix: &str,
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Option<Secret>, BuildError> {
    let source = match (file, env) {
        (Some(_), Some(_)) => {
            return Err(BuildError::new(prefix, format!("set `{prefix}_file` or `{prefix}_env`, not both")));
        }
        (Some(path), None) => SecretSource::File(path.to_path_buf()),
        (None, Some(name)) => SecretSource::Env(name.to_owned()),
        (None, None) => return Ok(None),
    };
    let key = match source {
        SecretSource::File(_) => format!("{prefix}_file"),
        SecretSource::Env(_) => format!("{prefix}_env"),
    };
    source.resolve().map(Some).map_err(|e| BuildError::new(key, e.to_string()))
}

/// An error with its chain of causes, `outer: cause: root cause`, for messages an operator
/// reads: HTTP clients put the reason (`Connection refused`, a TLS failure) in a cause that their
/// own `Display` leaves out. A cause whose text the message already holds is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_names_every_cause_once() {
        let error = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"));
        assert_eq!(super::error_chain(&error), "outer: Connection refused");
        let plain = std::io::Error::other("alone");
        assert_eq!(super::error_chain(&plain), "alone");
    }
}
