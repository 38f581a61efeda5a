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

use crate::fsutil::{self, FsError};
use crate::paths;
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
/// beside it, the certificate.
pub async fn add(key: &Path, lifetime_secs: u64) -> Result<(), AgentError> {
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
        add(&tmp_key, lifetime_secs).await
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

    #[test]
    fn lifetime_is_remaining_life() {
        assert_eq!(lifetime(1600, 1000), Some(600));
        assert_eq!(lifetime(1000, 1000), None);
        assert_eq!(lifetime(900, 1000), None);
        assert_eq!(lifetime(i64::MAX, i64::MIN), Some(i64::MAX as u64));
    }
}
