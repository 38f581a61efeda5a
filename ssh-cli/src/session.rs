//! The saved session: `$XDG_CONFIG_HOME/pedm-ssh/session.json`.
//!
//! The session token is a bearer credential worth a certificate for the rest of the
//! session, so the file is created 0600 in a 0700 directory, replaced atomically, never
//! printed, and refused when its mode has been widened (someone else may have read it).

use crate::fsutil::{self, FsError};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The format version written into the file; a file of another version is refused with a
/// hint to sign in again rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// What `pedm-ssh login` saves for `cert`, `status` and `logout`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFile {
    /// Always [`FORMAT_VERSION`] when written by this build.
    pub version: u32,
    /// The CA that issued the session; later commands talk to it (unless `--ca` overrides).
    pub ca_url: String,
    /// The bearer token. Secret: never printed, never logged.
    pub session_token: String,
    /// As the CA named the user (untrusted text: escape before printing).
    pub user: String,
    /// The base principals at sign-in.
    pub principals: Vec<String>,
    /// Unix seconds (CA clock) when the session ends.
    pub expires_at: i64,
    /// The private key the certificates are for.
    pub key_path: PathBuf,
}

impl std::fmt::Debug for SessionFile {
    /// Leaves the token out so a debug print cannot leak it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionFile")
            .field("version", &self.version)
            .field("ca_url", &self.ca_url)
            .field("session_token", &"<redacted>")
            .field("user", &self.user)
            .field("principals", &self.principals)
            .field("expires_at", &self.expires_at)
            .field("key_path", &self.key_path)
            .finish()
    }
}

/// Why the session file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The file is readable or writable by others than the user.
    #[error("{} has mode {mode:04o}, readable by others; the session token may have leaked: run `chmod 600 {}` and consider `pedm-ssh logout`", path.display(), path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    /// The file is not a session this build understands.
    #[error("{} is not a valid session file ({reason}); delete it and run `pedm-ssh login` again", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Reads the session at `path`: `Ok(None)` if there is none, an error if it is too open
/// (mode wider than 0600), a symlink, or malformed. The mode is checked on the opened file.
pub fn load(path: &Path) -> Result<Option<SessionFile>, SessionError> {
    let Some((mut file, mode)) = fsutil::open_private(path)? else {
        return Ok(None);
    };
    if fsutil::is_wider_than_private(mode) {
        return Err(SessionError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(fsutil::ctx("read", path))?;
    let session: SessionFile = serde_json::from_str(&text).map_err(|e| SessionError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if session.version != FORMAT_VERSION {
        return Err(SessionError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "format version {} (this pedm-ssh writes {FORMAT_VERSION})",
                session.version
            ),
        });
    }
    Ok(Some(session))
}

/// Saves `session` at `path`: the directory is created 0700 if missing, the file is
/// written atomically with mode 0600 (a concurrent `status` sees the old session or the
/// new one, and the token is never in a file anyone else can open).
pub fn save(path: &Path, session: &SessionFile) -> Result<(), SessionError> {
    if let Some(dir) = path.parent() {
        fsutil::ensure_private_dir(dir)?;
    }
    let mut text = serde_json::to_string_pretty(session).map_err(|e| SessionError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    fsutil::write_atomic(path, text.as_bytes(), fsutil::PRIVATE_FILE_MODE)?;
    Ok(())
}

/// Deletes the session file; `Ok(false)` if there was none.
pub fn remove(path: &Path) -> Result<bool, SessionError> {
    Ok(fsutil::remove_if_exists(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> SessionFile {
        SessionFile {
            version: FORMAT_VERSION,
            ca_url: "http://127.0.0.1:8443".into(),
            session_token: "tok-secret".into(),
            user: "alice".into(),
            principals: vec!["alice".into()],
            expires_at: 1_700_000_000,
            key_path: PathBuf::from("/home/alice/.ssh/pedm_ed25519"),
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn round_trip_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/pedm-ssh/session.json");
        assert!(load(&path).unwrap().is_none());
        save(&path, &sample()).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(load(&path).unwrap(), Some(sample()));
    }

    #[test]
    fn rewrite_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pedm-ssh/session.json");
        save(&path, &sample()).unwrap();
        let mut s = sample();
        s.user = "bob".into();
        save(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().user, "bob");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["session.json".to_string()]);
    }

    #[test]
    fn too_open_file_is_refused_with_chmod_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.json");
        save(&path, &sample()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            matches!(err, SessionError::TooOpen { mode: 0o644, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
        // Re-saving (a new login) replaces it with a 0600 file.
        save(&path, &sample()).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(load(&path).is_ok());
    }

    #[test]
    fn corrupt_or_foreign_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.json");
        fsutil::create_new_file(&path, b"{not json", 0o600).unwrap();
        assert!(matches!(load(&path), Err(SessionError::Corrupt { .. })));
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = 99.into();
        fs::write(&path, v.to_string()).unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("pedm-ssh login"), "{err}");
    }

    #[test]
    fn debug_redacts_the_token() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("tok-secret"), "{s}");
    }

    #[test]
    fn remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.json");
        save(&path, &sample()).unwrap();
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        assert!(load(&path).unwrap().is_none());
    }
}
