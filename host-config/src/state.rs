//! `ETC/pedm/state.json`: what this host installed last.
//!
//! It carries what `refresh` needs to run without arguments (CA URL, pinned root, host
//! config), what rollback protection compares against (bundle and KRL versions and payload
//! hashes), the expiry of what is installed (so a host whose trust has gone stale says so even
//! when the CA is unreachable), which principals files this tool owns (so it removes only its
//! own), and the host's enrollment (which key signs its check-ins).
//!
//! Format history: 1 had no KRL, expiry, paths or enrollment; 2 adds them as optional fields.
//! Format 1 files are read as format 2 with those fields absent and are rewritten as format 2
//! at the next successful run. The format number was raised so that an older build, which
//! would silently drop the KRL version and with it the KRL's rollback protection, refuses the
//! file instead of rewriting it.

use crate::hostfile::is_safe_account;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The state format this build writes.
pub const STATE_FORMAT: u32 = 2;
/// Every format this build reads.
pub const READABLE_FORMATS: &[u32] = &[1, 2];

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
    /// [`STATE_FORMAT`] when written by this build; one of [`READABLE_FORMATS`] when read.
    pub format: u32,
    /// The CA the bundle was fetched from.
    pub ca_url: String,
    /// `SHA256:` fingerprint of the pinned trust root.
    pub trust_root: String,
    /// Version of the installed trust bundle.
    pub bundle_version: u64,
    /// Lower-case hex SHA-256 of the installed bundle's decoded payload bytes.
    pub payload_sha256: String,
    /// `expires_at` (unix seconds) of the installed bundle; absent in format 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_expires_at: Option<i64>,
    /// Accounts whose `principals/<account>` file this tool wrote, sorted.
    pub managed_accounts: Vec<String>,
    /// The installed KRL: the floor below which no KRL is accepted. Absent until the first
    /// refresh installs a signed KRL (install writes an empty one that carries no version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub krl: Option<KrlState>,
    /// Absolute path of the host config install used, so `refresh` runs without `--config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_config: Option<PathBuf>,
    /// Absolute path of the main sshd config, when install was given `--sshd-config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sshd_config: Option<PathBuf>,
    /// Set by `enroll`: who this host is to the CA and which key signs its check-ins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
}

/// The installed signed KRL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KrlState {
    /// `KrlPayload::version`; a KRL below it is a rollback and refused.
    pub version: u64,
    /// Lower-case hex SHA-256 of the signed payload bytes.
    pub payload_sha256: String,
    /// `KrlPayload::expires_at` (unix seconds): after it the host warns on every run.
    pub expires_at: i64,
}

/// The host's enrollment at the CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The name the CA enrolled, sent in every check-in.
    pub host_name: String,
    /// `SHA256:…` of the enrolled host public key.
    pub host_key_fingerprint: String,
    /// The sshd host *private* key that signs check-ins (read by `ssh-keygen -Y sign` only).
    pub host_key: PathBuf,
    /// Unix seconds.
    pub enrolled_at: i64,
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
        if !READABLE_FORMATS.contains(&state.format) {
            return Err(corrupt(format!(
                "format {} is not one this build reads ({READABLE_FORMATS:?}); a newer \
                 pedm-host-config wrote it: upgrade this one",
                state.format
            )));
        }
        if !is_sha256_hex(&state.payload_sha256) {
            return Err(corrupt("payload_sha256 is not a SHA-256 hex digest".into()));
        }
        if let Some(krl) = &state.krl {
            if !is_sha256_hex(&krl.payload_sha256) {
                return Err(corrupt(
                    "krl.payload_sha256 is not a SHA-256 hex digest".into(),
                ));
            }
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

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
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
            bundle_expires_at: Some(1_900_000_000),
            managed_accounts: vec!["alice".into(), "root".into()],
            krl: Some(KrlState {
                version: 3,
                payload_sha256: "cd".repeat(32),
                expires_at: 1_800_000_000,
            }),
            host_config: Some("/etc/ssh/pedm/host.toml".into()),
            sshd_config: None,
            enrollment: Some(Enrollment {
                host_name: "web-1.example.com".into(),
                host_key_fingerprint: "SHA256:xyz".into(),
                host_key: "/etc/ssh/ssh_host_ed25519_key".into(),
                enrolled_at: 1_700_000_000,
            }),
        }
    }

    #[test]
    fn format_1_files_are_read_with_the_new_fields_absent() {
        let text = r#"{
  "format": 1,
  "ca_url": "https://ca.example.com",
  "trust_root": "SHA256:abc",
  "bundle_version": 7,
  "payload_sha256": "abababababababababababababababababababababababababababababababab",
  "managed_accounts": ["alice"]
}"#;
        let s = State::parse(text, Path::new("s")).unwrap();
        assert_eq!(s.format, 1);
        assert_eq!(s.bundle_version, 7);
        assert_eq!(s.krl, None);
        assert_eq!(s.enrollment, None);
        assert_eq!(s.bundle_expires_at, None);
    }

    #[test]
    fn unknown_formats_and_bad_krl_digests_are_refused() {
        let mut s = sample();
        s.format = 3;
        let e = State::parse(&s.to_json(), Path::new("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("upgrade"), "{e}");
        let mut s = sample();
        if let Some(k) = s.krl.as_mut() {
            k.payload_sha256 = "nope".into();
        }
        let e = State::parse(&s.to_json(), Path::new("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("krl.payload_sha256"), "{e}");
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
