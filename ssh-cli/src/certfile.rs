//! The certificate beside the key, `PATH-cert.pub`, where `ssh` and `ssh-add` find it.
//!
//! What the CA sends is checked before it is written: it must parse as an OpenSSH user
//! certificate for *our* public key, so a confused or hostile CA cannot make us install a
//! certificate for someone else's key. The file is replaced atomically, so an `ssh` started
//! during a renewal reads the old certificate or the new one, never half of one.

use crate::fsutil::{self, FsError};
use crate::paths;
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, PublicKey};
use std::path::{Path, PathBuf};

/// What pedm-ssh shows about a certificate. Times are unix seconds; strings are untrusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub path: PathBuf,
    pub serial: u64,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: i64,
    pub valid_before: i64,
}

/// Why a certificate is refused or cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The CA's answer is not an OpenSSH certificate.
    #[error("the CA sent a certificate this client cannot parse ({0}); tell the CA operator")]
    Invalid(String),
    /// The certificate certifies another key than ours.
    #[error("the CA sent a certificate for another key than {}; nothing was written; tell the CA operator", key.display())]
    WrongKey { key: PathBuf },
    /// Host certificate where a user certificate is needed.
    #[error("the CA sent a host certificate instead of a user certificate; nothing was written; tell the CA operator")]
    NotUser,
    /// The file on disk is not a certificate.
    #[error("{} is not an OpenSSH certificate ({reason}); run `pedm-ssh cert` to replace it", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error(transparent)]
    Fs(#[from] FsError),
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn info(path: PathBuf, cert: &Certificate) -> CertInfo {
    CertInfo {
        path,
        serial: cert.serial(),
        key_id: cert.key_id().to_string(),
        principals: cert.valid_principals().to_vec(),
        valid_after: to_i64(cert.valid_after()),
        valid_before: to_i64(cert.valid_before()),
    }
}

/// Parses the certificate line the CA sent and checks that it is a user certificate for
/// `public`. The signature is not checked here: the hosts do that against the trust bundle.
pub fn check_issued(
    line: &str,
    public: &PublicKey,
    key_path: &Path,
) -> Result<Certificate, CertError> {
    let cert =
        Certificate::from_openssh(line.trim()).map_err(|e| CertError::Invalid(e.to_string()))?;
    if cert.public_key() != public.key_data() {
        return Err(CertError::WrongKey {
            key: key_path.to_path_buf(),
        });
    }
    if cert.cert_type() != CertType::User {
        return Err(CertError::NotUser);
    }
    Ok(cert)
}

/// Writes `cert` to `PATH-cert.pub` (mode 0644, atomically) and returns what it holds.
pub fn save(key_path: &Path, cert: &Certificate) -> Result<CertInfo, CertError> {
    save_at(paths::certificate_of(key_path), cert)
}

/// Writes `cert` to `path` (mode 0644, atomically) and returns what it holds.
pub fn save_at(path: PathBuf, cert: &Certificate) -> Result<CertInfo, CertError> {
    let mut line = cert
        .to_openssh()
        .map_err(|e| CertError::Invalid(e.to_string()))?;
    line.push('\n');
    fsutil::write_atomic(&path, line.as_bytes(), fsutil::PUBLIC_FILE_MODE)?;
    Ok(info(path, cert))
}

/// Reads `PATH-cert.pub`; `Ok(None)` if there is none.
pub fn load(key_path: &Path) -> Result<Option<CertInfo>, CertError> {
    load_at(paths::certificate_of(key_path))
}

/// Reads the certificate at `path`; `Ok(None)` if there is none.
pub fn load_at(path: PathBuf) -> Result<Option<CertInfo>, CertError> {
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fsutil::ctx("read", &path)(e).into()),
    };
    let cert = Certificate::from_openssh(text.trim()).map_err(|e| CertError::Unreadable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some(info(path, &cert)))
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A throwaway CA for tests.
    use ssh_key::certificate::{Builder, CertType};
    use ssh_key::{Algorithm, Certificate, PrivateKey, PublicKey};

    pub fn sign(subject: &PublicKey, cert_type: CertType, valid_before: u64) -> Certificate {
        let mut rng = rand::rngs::OsRng;
        let ca = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let mut b =
            Builder::new_with_random_nonce(&mut rng, subject.key_data().clone(), 1, valid_before)
                .unwrap();
        b.serial(7).unwrap();
        b.key_id("alice serial=7").unwrap();
        b.cert_type(cert_type).unwrap();
        b.valid_principal("alice").unwrap();
        b.sign(&ca).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::sign;
    use super::*;
    use ssh_key::{Algorithm, PrivateKey};
    use std::os::unix::fs::PermissionsExt;

    fn key() -> PublicKey {
        PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    #[test]
    fn accepts_user_cert_for_our_key_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("k");
        let ours = key();
        let line = sign(&ours, CertType::User, 2_000_000_000)
            .to_openssh()
            .unwrap();
        let cert = check_issued(&line, &ours, &key_path).unwrap();
        let saved = save(&key_path, &cert).unwrap();
        assert_eq!(saved.path, dir.path().join("k-cert.pub"));
        assert_eq!(saved.serial, 7);
        assert_eq!(saved.key_id, "alice serial=7");
        assert_eq!(saved.principals, vec!["alice".to_string()]);
        assert_eq!(saved.valid_before, 2_000_000_000);
        let mode = std::fs::metadata(&saved.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(load(&key_path).unwrap(), Some(saved));
        let out = std::process::Command::new("ssh-keygen")
            .arg("-L")
            .arg("-f")
            .arg(dir.path().join("k-cert.pub"))
            .output()
            .unwrap();
        assert!(out.status.success());
    }

    #[test]
    fn refuses_cert_for_another_key_or_host_cert_or_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("k");
        let ours = key();
        let theirs = sign(&key(), CertType::User, 2_000_000_000)
            .to_openssh()
            .unwrap();
        assert!(matches!(
            check_issued(&theirs, &ours, &key_path),
            Err(CertError::WrongKey { .. })
        ));
        let host = sign(&ours, CertType::Host, 2_000_000_000)
            .to_openssh()
            .unwrap();
        assert!(matches!(
            check_issued(&host, &ours, &key_path),
            Err(CertError::NotUser)
        ));
        assert!(matches!(
            check_issued("ssh-ed25519 AAAA", &ours, &key_path),
            Err(CertError::Invalid(_))
        ));
        assert!(load(&key_path).unwrap().is_none());
        std::fs::write(dir.path().join("k-cert.pub"), "junk").unwrap();
        assert!(matches!(load(&key_path), Err(CertError::Unreadable { .. })));
    }
}
