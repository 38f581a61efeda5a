//! `ETC/pedm/state.json`: what this host installed last.
//!
//! It carries what `refresh` needs to run without arguments (CA URL, pinned root), what
//! rollback protection compares against (bundle version and payload hash), and which
//! principals files this tool owns (so it removes only its own).

use crate::hostfile::is_safe_account;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The only state format this build reads and writes.
pub const STATE_FORMAT: u32 = 1;

/// Why the saved state cannot be used. Every variant stops the run: without a trustworthy
/// state, rollback protection cannot be enforced.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the state file {path} is corrupt ({message}); restore it from a backup, or delete it \
         to start over (deleting it drops rollback protection for one install)"
    )]
    Corrupt { path: PathBuf, message: String },
}

/// The saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Always [`STATE_FORMAT`].
    pub format: u32,
    /// The CA the bundle was fetched from.
    pub ca_url: String,
    /// `SHA256:` fingerprint of the pinned trust root.
    pub trust_root: String,
    /// Version of the installed trust bundle.
    pub bundle_version: u64,
    /// Lower-case hex SHA-256 of the installed bundle's decoded payload bytes.
    pub payload_sha256: String,
    /// Accounts whose `principals/<account>` file this tool wrote, sorted.
    pub managed_accounts: Vec<String>,
}

impl State {
    /// Pretty JSON with a trailing newline; deterministic for equal states, so an unchanged
    /// state compares byte-equal and the run stays idempotent.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses and checks a state file's text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, StateError> {
        let corrupt = |message: String| StateError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let state: State = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
        if state.format != STATE_FORMAT {
            return Err(corrupt(format!(
                "format {} is not {STATE_FORMAT}",
                state.format
            )));
        }
        if state.payload_sha256.len() != 64
            || !state.payload_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(corrupt("payload_sha256 is not a SHA-256 hex digest".into()));
        }
        // The names become paths that get removed: never trust them blindly.
        if let Some(bad) = state.managed_accounts.iter().find(|a| !is_safe_account(a)) {
            return Err(corrupt(format!(
                "managed_accounts holds the unsafe name {bad:?}"
            )));
        }
        Ok(state)
    }
}

/// Loads the state if the file exists.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => State::parse(&text, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            format: STATE_FORMAT,
            ca_url: "https://ca.example.com".into(),
            trust_root: "SHA256:abc".into(),
            bundle_version: 7,
            payload_sha256: "ab".repeat(32),
            managed_accounts: vec!["alice".into(), "root".into()],
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let text = s.to_json();
        assert!(text.ends_with("}\n"));
        assert_eq!(State::parse(&text, Path::new("s")).unwrap(), s);
    }

    #[test]
    fn refuses_unsafe_account_names_and_bad_digests() {
        let mut s = sample();
        s.managed_accounts.push("../../sshd_config".into());
        let e = State::parse(&s.to_json(), Path::new("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsafe name"), "{e}");
        let mut s = sample();
        s.payload_sha256 = "zz".into();
        assert!(State::parse(&s.to_json(), Path::new("s")).is_err());
        assert!(State::parse("{", Path::new("s")).is_err());
    }
}
