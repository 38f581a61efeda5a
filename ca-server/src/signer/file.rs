//! File-backed Ed25519 keys in OpenSSH private-key format, encrypted at rest
//! (aes256-ctr + bcrypt-pbkdf, readable by `ssh-keygen -y -P`).

use super::{CaSigner, SignerError};
use ed25519_dalek::Signer as _;
use ssh_key::{
    private::KeypairData, rand_core::OsRng, Algorithm, LineEnding, PrivateKey, PublicKey, Signature,
};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A passphrase; never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    pub fn new(text: String) -> Self {
        Passphrase(Zeroizing::new(text))
    }
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is mode {mode:04o}, readable or writable by others; run `chmod 600 {path}` (and check who else could have read it)")]
    ModeTooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is not an OpenSSH private key: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path} is encrypted: set PEDM_CA_PASSPHRASE or pass --passphrase-file")]
    PassphraseNeeded { path: PathBuf },
    #[error("{path} cannot be decrypted: the passphrase is wrong")]
    WrongPassphrase { path: PathBuf },
    #[error("{path} holds a {found} key; CA keys are Ed25519")]
    NotEd25519 { path: PathBuf, found: String },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Refuses a file that group or others may read or write: the mode must be 0600 or stricter.
pub fn check_private_file_mode(path: &Path) -> Result<(), KeyFileError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Read {
        path: path.into(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::ModeTooOpen {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}

/// An Ed25519 key held in memory as a ready `ed25519_dalek::SigningKey`, so each signature
/// costs one Ed25519 operation and no key reconstruction.
pub struct FileSigner {
    signing: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl CaSigner for FileSigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }
    fn sign_raw(&self, msg: &[u8]) -> Result<Signature, SignerError> {
        let sig = self.signing.sign(msg);
        Signature::new(Algorithm::Ed25519, sig.to_bytes().to_vec())
            .map_err(|e| SignerError::Backend(e.to_string()))
    }
}

impl FileSigner {
    fn from_private(key: &PrivateKey, path: &Path) -> Result<Self, KeyFileError> {
        match key.key_data() {
            KeypairData::Ed25519(kp) => {
                let signing = ed25519_dalek::SigningKey::from_bytes(&kp.private.to_bytes());
                let public = PublicKey::from(key.public_key().key_data().clone());
                Ok(FileSigner { signing, public })
            }
            other => Err(KeyFileError::NotEd25519 {
                path: path.into(),
                found: other
                    .algorithm()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "unknown".into()),
            }),
        }
    }
}

/// Loads a key file, refusing a mode wider than 0600, and decrypting with `passphrase`.
pub fn load_key_file(
    path: &Path,
    passphrase: Option<&Passphrase>,
) -> Result<FileSigner, KeyFileError> {
    check_private_file_mode(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.into(),
        source,
    })?;
    let key = PrivateKey::from_openssh(&text).map_err(|e| KeyFileError::Format {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let key = if key.is_encrypted() {
        let pass =
            passphrase.ok_or_else(|| KeyFileError::PassphraseNeeded { path: path.into() })?;
        key.decrypt(pass.bytes())
            .map_err(|_| KeyFileError::WrongPassphrase { path: path.into() })?
    } else {
        key
    };
    FileSigner::from_private(&key, path)
}

/// Creates a new Ed25519 key at `path` (mode 0600, refusing to overwrite), encrypted unless
/// `passphrase` is `None`, and returns it ready to sign.
pub fn create_key_file(
    path: &Path,
    passphrase: Option<&Passphrase>,
    comment: &str,
) -> Result<FileSigner, KeyFileError> {
    let mut key =
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(|e| KeyFileError::Format {
            path: path.into(),
            reason: e.to_string(),
        })?;
    key.set_comment(comment);
    let signer = FileSigner::from_private(&key, path)?;
    let stored = match passphrase {
        Some(p) => key
            .encrypt(&mut OsRng, p.bytes())
            .map_err(|e| KeyFileError::Format {
                path: path.into(),
                reason: e.to_string(),
            })?,
        None => key,
    };
    let text = stored
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyFileError::Format {
            path: path.into(),
            reason: e.to_string(),
        })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists { path: path.into() }
            } else {
                KeyFileError::Write {
                    path: path.into(),
                    source,
                }
            }
        })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|source| KeyFileError::Write {
            path: path.into(),
            source,
        })?;
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::{sshsig_armored, sshsig_verify};

    #[test]
    fn encrypted_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let pass = Passphrase::new("correct horse".into());
        let made = create_key_file(&path, Some(&pass), "test").unwrap();
        assert!(matches!(
            create_key_file(&path, Some(&pass), "t"),
            Err(KeyFileError::Exists { .. })
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(PrivateKey::from_openssh(&text).unwrap().is_encrypted());
        let loaded = load_key_file(&path, Some(&pass)).unwrap();
        assert_eq!(loaded.public_key(), made.public_key());
        assert!(matches!(
            load_key_file(&path, None),
            Err(KeyFileError::PassphraseNeeded { .. })
        ));
        let wrong = Passphrase::new("wrong".into());
        assert!(matches!(
            load_key_file(&path, Some(&wrong)),
            Err(KeyFileError::WrongPassphrase { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_key_file(&path, Some(&pass)).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn sshsig_binds_namespace_message_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = create_key_file(&dir.path().join("a"), None, "a").unwrap();
        let b = create_key_file(&dir.path().join("b"), None, "b").unwrap();
        let sig = sshsig_armored(&a, "ns@test", b"hello").unwrap();
        assert!(sshsig_verify(a.public_key(), "ns@test", b"hello", &sig));
        assert!(!sshsig_verify(a.public_key(), "other@test", b"hello", &sig));
        assert!(!sshsig_verify(a.public_key(), "ns@test", b"hellO", &sig));
        assert!(!sshsig_verify(b.public_key(), "ns@test", b"hello", &sig));
        assert!(!sshsig_verify(
            a.public_key(),
            "ns@test",
            b"hello",
            "garbage"
        ));
    }
}
