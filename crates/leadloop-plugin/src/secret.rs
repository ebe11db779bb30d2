//! Secrets never live in the config text: a key ending in `_file` names a file to read
//! (systemd's `LoadCredential=` puts them under `$CREDENTIALS_DIRECTORY`), or a key ending in
//! `_env` names an environment variable. A [`Secret`] prints as `[redacted]` everywhere.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("environment variable {name} is not set")]
    Env { name: String },
    #[error("secret from {from} is empty")]
    Empty { from: String },
}

/// A secret value; its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret obtained at run time (a session token from a login).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// A secret from a literal, for tests.
    #[doc(hidden)]
    pub fn for_tests(value: &str) -> Self {
        Self(value.to_owned())
    }

    /// The value, for the one place that must send it (an AUTH command, a token request).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl SecretSource {
    /// Relative file paths are taken from `$CREDENTIALS_DIRECTORY` when systemd set it.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretSource::File(path) => {
                let path = credentials_path(path);
                let raw = std::fs::read_to_string(&path)
                    .map_err(|e| SecretError::File { path: shown(&path), reason: reason(&path, &e) })?;
                raw.trim_end_matches(['\r', '\n']).to_owned()
            }
            SecretSource::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::Env { name: name.clone() })?
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty { from: self.to_string() });
        }
        Ok(Secret(value))
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// The path as an admin can find it: a relative one is shown from the working directory.
fn shown(path: &Path) -> PathBuf {
    if path.is_relative() {
        std::env::current_dir().map(|dir| dir.join(path)).unwrap_or_else(|_| path.to_path_buf())
    } else {
        path.to_path_buf()
    }
}

/// Why a secret file could not be read, in an admin's terms.
fn reason(path: &Path, error: &std::io::Error) -> String {
    let mut reason = match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (the user leadloop runs as must be able to read it)".to_owned()
        }
        std::io::ErrorKind::IsADirectory => "it is a directory, not a file".to_owned(),
        _ => error.to_string(),
    };
    if path.is_relative() {
        reason.push_str(
            "; a relative path is read from the working directory, or from $CREDENTIALS_DIRECTORY when systemd sets it (LoadCredential=)",
        );
    }
    reason
}

fn credentials_path(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        std::fs::write(&path, "hunter2\n").expect("write");
        let secret = SecretSource::File(path).resolve().expect("resolves");
        assert_eq!(secret.expose(), "hunter2");
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
    }

    #[test]
    fn missing_and_empty_secrets_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = SecretSource::File(dir.path().join("nope")).resolve().expect_err("missing");
        assert_eq!(
            missing.to_string(),
            format!("cannot read secret file {}: no such file", dir.path().join("nope").display())
        );
        // A bare name says where it was looked for.
        let bare = SecretSource::File("surely-missing-secret".into()).resolve().expect_err("missing");
        let cwd = std::env::current_dir().expect("cwd");
        assert!(
            bare.to_string().contains(&cwd.join("surely-missing-secret").display().to_string()),
            "{bare}"
        );
        assert!(bare.to_string().contains("$CREDENTIALS_DIRECTORY"), "{bare}");
        let empty_path = dir.path().join("empty");
        std::fs::write(&empty_path, "\n").expect("write");
        let empty = SecretSource::File(empty_path).resolve().expect_err("empty");
        assert!(empty.to_string().contains("is empty"), "{empty}");
        let env = SecretSource::Env("LEADLOOP_TEST_SURELY_UNSET_VAR".into()).resolve().expect_err("unset");
        assert_eq!(env.to_string(), "environment variable LEADLOOP_TEST_SURELY_UNSET_VAR is not set");
    }
}
