//! Where every managed file lives, derived from one absolute sshd configuration directory.
//!
//! All paths written into the drop-in come from here, so the text sshd reads and the paths
//! this tool writes can never disagree.

use std::path::{Path, PathBuf};

/// Why a configuration directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("the sshd configuration directory {0} is not an absolute path")]
    NotAbsolute(PathBuf),
    #[error(
        "the sshd configuration directory {0:?} is not valid UTF-8; sshd_config cannot name it"
    )]
    NotUtf8(PathBuf),
    #[error(
        "the sshd configuration directory {path} contains {what}, which sshd_config cannot carry \
         safely; use a directory without it"
    )]
    UnsafeCharacter { path: String, what: String },
}

/// The managed file tree under one sshd configuration directory (`/etc/ssh` normally).
///
/// Invariant: `etc` is absolute, UTF-8, and free of characters that sshd_config would
/// interpret (quotes, backslashes, `%` tokens, control characters), so its paths can be
/// written into sshd_config and compared verbatim with `sshd -T` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    etc: PathBuf,
}

impl Layout {
    /// Checks `etc` (which must already be absolute, e.g. canonicalised) and builds the layout.
    pub fn new(etc: &Path) -> Result<Self, LayoutError> {
        if !etc.is_absolute() {
            return Err(LayoutError::NotAbsolute(etc.to_path_buf()));
        }
        let text = etc
            .to_str()
            .ok_or_else(|| LayoutError::NotUtf8(etc.to_path_buf()))?;
        for c in text.chars() {
            let what = match c {
                '"' | '\'' => Some("a quote"),
                '\\' => Some("a backslash"),
                '%' => Some("a '%' (sshd expands %-tokens)"),
                c if c.is_control() => Some("a control character"),
                _ => None,
            };
            if let Some(what) = what {
                return Err(LayoutError::UnsafeCharacter {
                    path: text.to_string(),
                    what: what.to_string(),
                });
            }
        }
        Ok(Self {
            etc: etc.to_path_buf(),
        })
    }

    /// The sshd configuration directory itself.
    pub fn etc(&self) -> &Path {
        &self.etc
    }

    /// `ETC/pedm`: everything this tool owns apart from the drop-in.
    pub fn pedm_dir(&self) -> PathBuf {
        self.etc.join("pedm")
    }

    /// `ETC/pedm/trusted-user-ca-keys.pub`, named by `TrustedUserCAKeys`.
    pub fn ca_keys(&self) -> PathBuf {
        self.pedm_dir().join("trusted-user-ca-keys.pub")
    }

    /// `ETC/pedm/principals`: one file per account, named by `AuthorizedPrincipalsFile`.
    pub fn principals_dir(&self) -> PathBuf {
        self.pedm_dir().join("principals")
    }

    /// The principals file of one account. The caller guarantees `account` is a safe
    /// account name (see [`crate::hostfile::is_safe_account`]), so it cannot escape the dir.
    pub fn principals_file(&self, account: &str) -> PathBuf {
        self.principals_dir().join(account)
    }

    /// `ETC/pedm/revoked-keys.krl`, named by `RevokedKeys`.
    pub fn krl(&self) -> PathBuf {
        self.pedm_dir().join("revoked-keys.krl")
    }

    /// `ETC/pedm/state.json`: what was installed, for rollback protection and clean-up.
    pub fn state(&self) -> PathBuf {
        self.pedm_dir().join("state.json")
    }

    /// `ETC/sshd_config.d`, which the main config must `Include`.
    pub fn dropin_dir(&self) -> PathBuf {
        self.etc.join("sshd_config.d")
    }

    /// `ETC/sshd_config.d/50-pedm.conf`.
    pub fn dropin(&self) -> PathBuf {
        self.dropin_dir().join("50-pedm.conf")
    }

    /// The default main sshd config, `ETC/sshd_config`.
    pub fn main_config(&self) -> PathBuf {
        self.etc.join("sshd_config")
    }

    /// Value sshd should report for `trustedusercakeys`.
    pub fn ca_keys_value(&self) -> String {
        path_text(&self.ca_keys())
    }

    /// Value sshd should report for `authorizedprincipalsfile` (`%u` stays unexpanded).
    pub fn principals_value(&self) -> String {
        format!("{}/%u", path_text(&self.principals_dir()))
    }

    /// Value sshd should report for `revokedkeys`.
    pub fn krl_value(&self) -> String {
        path_text(&self.krl())
    }
}

/// Layout paths are UTF-8 by construction ([`Layout::new`] checks the root).
fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_hang_off_etc() {
        let l = Layout::new(Path::new("/etc/ssh")).unwrap();
        assert_eq!(
            l.ca_keys(),
            Path::new("/etc/ssh/pedm/trusted-user-ca-keys.pub")
        );
        assert_eq!(l.principals_value(), "/etc/ssh/pedm/principals/%u");
        assert_eq!(l.krl_value(), "/etc/ssh/pedm/revoked-keys.krl");
        assert_eq!(l.dropin(), Path::new("/etc/ssh/sshd_config.d/50-pedm.conf"));
        assert_eq!(l.state(), Path::new("/etc/ssh/pedm/state.json"));
    }

    #[test]
    fn refuses_relative_and_unsafe_roots() {
        assert!(matches!(
            Layout::new(Path::new("etc/ssh")),
            Err(LayoutError::NotAbsolute(_))
        ));
        for bad in [
            "/tmp/a\"b",
            "/tmp/a%b",
            "/tmp/a\\b",
            "/tmp/a'b",
            "/tmp/a\nb",
        ] {
            assert!(
                matches!(
                    Layout::new(Path::new(bad)),
                    Err(LayoutError::UnsafeCharacter { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(Layout::new(Path::new("/tmp/with space")).is_ok());
    }
}
