//! Loading the key and its certificate into the user's ssh-agent with `ssh-add`.
//!
//! The agent copy gets a lifetime (`ssh-add -t`) equal to the certificate's remaining life,
//! so the agent forgets the key when the certificate is useless anyway. Agent trouble never
//! fails a sign-in: the files on disk work with `ssh -i` regardless.
//!
//! An elevation's certificate sits beside the key as `PATH-elev-NAME-cert.pub`, a name
//! `ssh-add` (OpenSSH 9.2) does not look for: it loads a private key file and `FILE-cert.pub`
//! beside it, and has no option to name another certificate. So [`add_with_certificate`]
//! makes a private temporary directory (mode 0700, in the key's own directory, so the copy
//! is protected exactly as the key is), puts a copy of the private key there as `id` (0600)
//! and the elevated certificate as `id-cert.pub`, runs `ssh-add -t SECS DIR/id`, and deletes
//! the directory right after, whether `ssh-add` worked or not.
//!
//! `ssh-add` adds the plain key along with each certificate, and the agent keeps one
//! lifetime per identity, re-set by every add. Callers therefore add the elevated
//! certificate *before* the base one: the plain key then lives as long as the base
//! certificate, and each certificate has its own lifetime.
//!
//! Before a certificate is added, the earlier certificates of ours of the same kind (base,
//! or the same elevation) are removed from the agent ([`remove_earlier`]), so the agent
//! holds at most one base certificate of ours and one per elevation, and never piles up
//! certificates until servers answer "Too many authentication failures".

use crate::fsutil::{self, FsError};
use crate::paths;
use ssh_key::Certificate;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// `SSH_AUTH_SOCK` if it is set and not empty.
pub fn socket_from_env() -> Option<OsString> {
    std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty())
}

/// How long the agent should keep the key: the seconds from `now` (the CA's clock, which is
/// the one the hosts agree with) to `valid_before`; `None` when nothing is left.
pub fn lifetime(valid_before: i64, now: i64) -> Option<u64> {
    let left = valid_before.saturating_sub(now);
    u64::try_from(left).ok().filter(|s| *s > 0)
}

/// `ssh-add` could not be run or refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot run ssh-add: {0}")]
    Spawn(#[source] std::io::Error),
    /// `ssh-add`'s own message (untrusted text: escape before printing).
    #[error("ssh-add failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    /// The temporary key copy for an elevated certificate could not be made.
    #[error("cannot prepare the key for ssh-add: {0}")]
    Prepare(String),
    /// The temporary key copy could not be deleted (the user must delete it).
    #[error("could not delete the temporary key copy in {}: {source}; delete that directory", dir.display())]
    Cleanup {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<FsError> for AgentError {
    fn from(e: FsError) -> Self {
        AgentError::Prepare(e.to_string())
    }
}

async fn ssh_add(args: &[OsString]) -> Result<(), AgentError> {
    let out = tokio::process::Command::new("ssh-add")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(AgentError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AgentError::Failed {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ssh-add -t SECONDS KEY`: adds the key and, because `ssh-add` loads `KEY-cert.pub`
/// beside it, the certificate. Earlier base certificates of ours are removed first (see
/// [`remove_earlier`]).
pub async fn add(key: &Path, lifetime_secs: u64) -> Result<(), AgentError> {
    if let Ok(text) = std::fs::read_to_string(paths::certificate_of(key)) {
        if let Ok(cert) = Certificate::from_openssh(text.trim()) {
            prune_or_warn(&cert).await;
        }
    }
    add_plain(key, lifetime_secs).await
}

async fn prune_or_warn(cert: &Certificate) {
    if let Err(e) = remove_earlier(cert).await {
        eprintln!(
            "warning: could not remove earlier certificates from ssh-agent ({})",
            crate::escape::escape(&e.to_string())
        );
    }
}

/// The kind of one of our certificates, from its key ID (`USER serial=N` for a base
/// certificate, `USER serial=N elev=ID` for an elevated one): the user and the elevation ID.
pub fn kind(key_id: &str) -> (&str, Option<&str>) {
    let mut words = key_id.split(' ');
    let user = words.next().unwrap_or("");
    let elev = words.find_map(|w| w.strip_prefix("elev="));
    (user, elev)
}

/// Whether `old` (from the agent) is an earlier certificate of the same kind as `new`: for
/// the same key, or signed by the same CA key for the same user, and both base certificates
/// or both for the same elevation.
pub fn same_kind(old: &Certificate, new: &Certificate) -> bool {
    let (old_user, old_elev) = kind(old.key_id());
    let (new_user, new_elev) = kind(new.key_id());
    if old_elev != new_elev {
        return false;
    }
    old.public_key() == new.public_key()
        || (old.signature_key() == new.signature_key()
            && !new_user.is_empty()
            && old_user == new_user)
}

/// `ssh-add -L`: the public keys and certificates the agent holds, one per line (none when
/// it holds nothing).
async fn list() -> Result<Vec<String>, AgentError> {
    let out = tokio::process::Command::new("ssh-add")
        .arg("-L")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(AgentError::Spawn)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Exit 1 with "The agent has no identities." is an empty agent.
        if out.status.code() == Some(1) && stdout.contains("no identities") {
            return Ok(Vec::new());
        }
        return Err(AgentError::Failed {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(stdout.lines().map(str::to_string).collect())
}

/// Removes from the agent every certificate of the [same kind](same_kind) as `new`, so the
/// agent holds at most one base certificate of ours and one per elevation. Each is removed
/// with `ssh-add -d FILE` of a file holding that certificate (in a private temporary
/// directory). Returns how many were removed.
pub async fn remove_earlier(new: &Certificate) -> Result<usize, AgentError> {
    let stale: Vec<String> = list()
        .await?
        .into_iter()
        .filter(|line| Certificate::from_openssh(line.trim()).is_ok_and(|old| same_kind(&old, new)))
        .collect();
    if stale.is_empty() {
        return Ok(0);
    }
    let tmp = tempfile::Builder::new()
        .prefix(".pedm-ssh-del-")
        .tempdir()
        .map_err(|e| AgentError::Prepare(format!("cannot create a temporary directory: {e}")))?;
    let mut removed = 0;
    for (i, line) in stale.iter().enumerate() {
        let file = tmp.path().join(format!("old{i}-cert.pub"));
        fsutil::create_new_file(&file, format!("{}\n", line.trim()).as_bytes(), 0o600)?;
        remove_certificate(&file).await?;
        removed += 1;
    }
    Ok(removed)
}

async fn add_plain(key: &Path, lifetime_secs: u64) -> Result<(), AgentError> {
    ssh_add(&[
        "-t".into(),
        lifetime_secs.to_string().into(),
        key.as_os_str().to_os_string(),
    ])
    .await
}

/// Adds the private key `key` with `certificate` (an OpenSSH certificate line that is not
/// `KEY-cert.pub`) for `lifetime_secs`, through a temporary copy of the key (see the module
/// documentation). The copy is gone when this returns, also on error.
pub async fn add_with_certificate(
    key: &Path,
    certificate: &str,
    lifetime_secs: u64,
) -> Result<(), AgentError> {
    let private = read_private(key)?;
    let dir = key
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // tempfile creates the directory with mode 0700 and a fresh random name.
    let tmp = tempfile::Builder::new()
        .prefix(".pedm-ssh-add-")
        .tempdir_in(dir)
        .map_err(|e| {
            AgentError::Prepare(format!(
                "cannot create a directory in {}: {e}",
                dir.display()
            ))
        })?;
    if let Ok(cert) = Certificate::from_openssh(certificate.trim()) {
        prune_or_warn(&cert).await;
    }
    let tmp_key = tmp.path().join("id");
    let added = async {
        fsutil::create_new_file(&tmp_key, &private, fsutil::PRIVATE_FILE_MODE)?;
        let mut line = certificate.trim().to_string();
        line.push('\n');
        fsutil::create_new_file(
            &paths::certificate_of(&tmp_key),
            line.as_bytes(),
            fsutil::PRIVATE_FILE_MODE,
        )?;
        add_plain(&tmp_key, lifetime_secs).await
    }
    .await;
    let dir = tmp.path().to_path_buf();
    let cleaned = tmp
        .close()
        .map_err(|source| AgentError::Cleanup { dir, source });
    added?;
    cleaned
}

/// The private key file's bytes, refused (as `ssh` would) when others may read it.
fn read_private(key: &Path) -> Result<Vec<u8>, AgentError> {
    let Some((mut file, mode)) = fsutil::open_private(key)? else {
        return Err(AgentError::Prepare(format!(
            "{} does not exist",
            key.display()
        )));
    };
    if fsutil::is_wider_than_private(mode) {
        return Err(AgentError::Prepare(format!(
            "{} has mode {mode:04o}; run `chmod 600 {}`",
            key.display(),
            key.display()
        )));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(fsutil::ctx("read", key))?;
    Ok(bytes)
}

/// `ssh-add -d CERT`: removes one certificate (given by its file) from the agent.
pub async fn remove_certificate(cert: &Path) -> Result<(), AgentError> {
    ssh_add(&["-d".into(), cert.as_os_str().to_os_string()]).await
}

/// `ssh-add -d KEY`: removes the key (and its certificate) from the agent.
pub async fn remove(key: &Path) -> Result<(), AgentError> {
    ssh_add(&["-d".into(), key.as_os_str().to_os_string()]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(ca: &ssh_key::PrivateKey, subject: &ssh_key::PublicKey, key_id: &str) -> Certificate {
        let mut b = ssh_key::certificate::Builder::new_with_random_nonce(
            &mut rand::rngs::OsRng,
            subject.key_data().clone(),
            1,
            2_000_000_000,
        )
        .unwrap();
        b.serial(1).unwrap();
        b.key_id(key_id).unwrap();
        b.cert_type(ssh_key::certificate::CertType::User).unwrap();
        b.valid_principal("alice").unwrap();
        b.sign(ca).unwrap()
    }

    fn random_key() -> ssh_key::PrivateKey {
        ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519).unwrap()
    }

    #[test]
    fn kinds_from_key_ids() {
        assert_eq!(kind("alice serial=3"), ("alice", None));
        assert_eq!(kind("bob serial=3 elev=abc123"), ("bob", Some("abc123")));
        assert_eq!(kind(""), ("", None));
    }

    #[test]
    fn same_kind_matches_base_with_base_and_one_elevation_with_itself() {
        let (ca, other_ca) = (random_key(), random_key());
        let (mine, other) = (random_key(), random_key());
        let new = signed(&ca, mine.public_key(), "alice serial=9");
        assert!(same_kind(
            &signed(&ca, mine.public_key(), "alice serial=1"),
            &new
        ));
        // Another key of alice's from the same CA: still her base certificate.
        assert!(same_kind(
            &signed(&ca, other.public_key(), "alice serial=2"),
            &new
        ));
        // Someone else's certificate from another CA for another key: not ours.
        assert!(!same_kind(
            &signed(&other_ca, other.public_key(), "alice serial=2"),
            &new
        ));
        assert!(!same_kind(
            &signed(&ca, other.public_key(), "bob serial=2"),
            &new
        ));
        // Elevated certificates are another kind, one per elevation.
        let elev = signed(&ca, mine.public_key(), "alice serial=4 elev=e1");
        assert!(!same_kind(&elev, &new));
        assert!(!same_kind(&new, &elev));
        assert!(same_kind(
            &signed(&ca, mine.public_key(), "alice serial=3 elev=e1"),
            &elev
        ));
        assert!(!same_kind(
            &signed(&ca, mine.public_key(), "alice serial=3 elev=e2"),
            &elev
        ));
    }

    #[test]
    fn lifetime_is_remaining_life() {
        assert_eq!(lifetime(1600, 1000), Some(600));
        assert_eq!(lifetime(1000, 1000), None);
        assert_eq!(lifetime(900, 1000), None);
        assert_eq!(lifetime(i64::MAX, i64::MIN), Some(i64::MAX as u64));
    }
}
