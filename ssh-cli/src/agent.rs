//! Loading the key and its certificate into the user's ssh-agent with `ssh-add`.
//!
//! The agent copy gets a lifetime (`ssh-add -t`) equal to the certificate's remaining life,
//! so the agent forgets the key when the certificate is useless anyway. Agent trouble never
//! fails a sign-in: the files on disk work with `ssh -i` regardless.

use std::ffi::OsString;
use std::path::Path;
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
