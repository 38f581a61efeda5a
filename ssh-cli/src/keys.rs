//! The user's key pair, by default `~/.ssh/pedm_ed25519`.
//!
//! pedm-ssh creates an Ed25519 key of its own when none exists, so it never rewrites the
//! user's other keys. The private file is created 0600 (the mode is given to `open`, there
//! is no chmod afterwards) in a `~/.ssh` created 0700; an existing private key whose mode
//! grants anything to group or others is refused, as `ssh` itself refuses it.

use crate::fsutil::{self, FsError};
use crate::paths;
use ssh_key::{LineEnding, PrivateKey, PublicKey};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The comment written into keys pedm-ssh creates, so `ssh-add -l` shows where they came
/// from.
pub const KEY_COMMENT: &str = "pedm-ssh";

/// The key the certificates are for.
#[derive(Debug, Clone)]
pub struct UserKey {
    /// The private key file (what `ssh -i` and `ssh-add` take).
    pub path: PathBuf,
    /// Its public half, sent to the CA.
    pub public: PublicKey,
    /// Whether this run created the key.
    pub created: bool,
}

/// Why the key cannot be used or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The private key file grants access to group or others.
    #[error("private key {} has mode {mode:04o}, accessible by others; run `chmod 600 {}` (and consider replacing the key)", path.display(), path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    /// Neither the private file nor `PATH.pub` is a readable OpenSSH key.
    #[error("cannot read the key {}: {reason}; pass --key PATH of an OpenSSH key, or move this file away so pedm-ssh creates a new one", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// `PATH.pub` holds another key than the private file.
    #[error("{} does not match the private key {}; delete {} and run again so pedm-ssh rewrites it", public.display(), path.display(), public.display())]
    Mismatch { path: PathBuf, public: PathBuf },
    #[error("cannot generate a key: {0}")]
    Generate(String),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Loads the key at `path`, or creates a new Ed25519 key there (with `PATH.pub`) if no
/// file exists. Never overwrites an existing private key.
pub fn ensure_key(path: &Path) -> Result<UserKey, KeyError> {
    match fsutil::open_private(path)? {
        Some((file, mode)) => load_existing(path, file, mode),
        None => create(path),
    }
}

fn load_existing(path: &Path, mut file: std::fs::File, mode: u32) -> Result<UserKey, KeyError> {
    if fsutil::is_wider_than_private(mode) {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(fsutil::ctx("read", path))?;
    let pub_path = paths::public_key_of(path);
    let from_pub = || -> Result<PublicKey, String> {
        let line = std::fs::read_to_string(&pub_path).map_err(|e| format!("{e}"))?;
        PublicKey::from_openssh(line.trim()).map_err(|e| e.to_string())
    };
    // The OpenSSH format keeps the public key in clear even when the private part is
    // encrypted, so no passphrase is needed here.
    let public = match PrivateKey::from_openssh(text.as_bytes()) {
        Ok(private) => {
            let public = private.public_key().clone();
            match from_pub() {
                Ok(on_disk) if on_disk.key_data() != public.key_data() => {
                    return Err(KeyError::Mismatch {
                        path: path.to_path_buf(),
                        public: pub_path,
                    })
                }
                Ok(_) => {}
                Err(_) if !pub_path.exists() => write_public(&pub_path, &public)?,
                Err(reason) => {
                    return Err(KeyError::Unreadable {
                        path: pub_path,
                        reason,
                    })
                }
            }
            public
        }
        // Another private key format (PEM, say): ssh-add understands it, so the public key
        // beside it is enough.
        Err(priv_err) => from_pub().map_err(|pub_err| KeyError::Unreadable {
            path: path.to_path_buf(),
            reason: format!(
                "not an OpenSSH private key ({priv_err}), and {}: {pub_err}",
                pub_path.display()
            ),
        })?,
    };
    Ok(UserKey {
        path: path.to_path_buf(),
        public,
        created: false,
    })
}

fn create(path: &Path) -> Result<UserKey, KeyError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fsutil::ensure_private_dir(dir)?;
    }
    let mut private = PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    private.set_comment(KEY_COMMENT);
    let pem = private
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    // create_new: never replaces a key that appeared since we looked.
    fsutil::create_new_file(path, pem.as_bytes(), fsutil::PRIVATE_FILE_MODE)?;
    let public = private.public_key().clone();
    write_public(&paths::public_key_of(path), &public)?;
    Ok(UserKey {
        path: path.to_path_buf(),
        public,
        created: true,
    })
}

fn write_public(pub_path: &Path, public: &PublicKey) -> Result<(), KeyError> {
    let mut line = public
        .to_openssh()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    line.push('\n');
    fsutil::write_atomic(pub_path, line.as_bytes(), fsutil::PUBLIC_FILE_MODE)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_0600_key_with_pub_that_ssh_keygen_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let ssh_dir = dir.path().join(".ssh");
        let path = ssh_dir.join("pedm_ed25519");
        let key = ensure_key(&path).unwrap();
        assert!(key.created);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&ssh_dir), 0o700);
        let pub_path = paths::public_key_of(&path);
        assert_eq!(mode(&pub_path), 0o644);
        assert_eq!(key.public.algorithm(), ssh_key::Algorithm::Ed25519);

        let out = Command::new("ssh-keygen")
            .arg("-l")
            .arg("-f")
            .arg(&pub_path)
            .output()
            .expect("ssh-keygen runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        let fp = key.public.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        assert!(listing.contains(&fp), "{listing} vs {fp}");
        assert!(listing.contains("(ED25519)"), "{listing}");
        // ssh-keygen also reads the private file (it checks its mode, too).
        let out = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());

        // Second run loads the same key and creates nothing.
        let again = ensure_key(&path).unwrap();
        assert!(!again.created);
        assert_eq!(again.public.key_data(), key.public.key_data());
    }

    #[test]
    fn existing_0644_key_is_refused_with_chmod_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        ensure_key(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = ensure_key(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::TooOpen { mode: 0o644, .. }),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .contains(&format!("chmod 600 {}", path.display())));
    }

    #[test]
    fn missing_pub_is_rewritten_and_mismatch_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = ensure_key(&path).unwrap();
        let pub_path = paths::public_key_of(&path);
        fs::remove_file(&pub_path).unwrap();
        let again = ensure_key(&path).unwrap();
        assert_eq!(again.public.key_data(), key.public.key_data());
        assert!(pub_path.exists());

        let other = dir.path().join("other");
        ensure_key(&other).unwrap();
        fs::copy(paths::public_key_of(&other), &pub_path).unwrap();
        assert!(matches!(ensure_key(&path), Err(KeyError::Mismatch { .. })));
    }

    #[test]
    fn garbage_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fsutil::create_new_file(&path, b"garbage", 0o600).unwrap();
        assert!(matches!(
            ensure_key(&path),
            Err(KeyError::Unreadable { .. })
        ));
        // And it was not replaced.
        assert_eq!(fs::read(&path).unwrap(), b"garbage");
    }
}
