//! Where pedm-ssh keeps its files. Everything is derived from `HOME` and
//! `XDG_CONFIG_HOME` passed in explicitly, so tests never touch the real home directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variables pedm-ssh reads to find its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub home: Option<OsString>,
    pub xdg_config_home: Option<OsString>,
}

impl Env {
    /// Reads `HOME` and `XDG_CONFIG_HOME` from the process environment.
    pub fn from_process() -> Self {
        Self {
            home: std::env::var_os("HOME"),
            xdg_config_home: std::env::var_os("XDG_CONFIG_HOME"),
        }
    }
}

/// `HOME` is needed but unset, empty or relative.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("HOME is not set to an absolute directory; set HOME, or pass --key PATH and set XDG_CONFIG_HOME")]
pub struct NoHome;

/// An absolute path from an environment value, or `None` for unset, empty or relative
/// values (the XDG base directory spec says relative ones are to be ignored).
fn absolute(value: Option<&OsString>) -> Option<PathBuf> {
    let v = value?;
    let p = Path::new(v);
    (p.is_absolute()).then(|| p.to_path_buf())
}

/// A `--key` path made absolute against the current directory, so the session remembers
/// a path that still works from another directory.
pub fn absolute_key(path: &Path) -> Result<PathBuf, crate::fsutil::FsError> {
    std::path::absolute(path).map_err(crate::fsutil::ctx("resolve", path))
}

/// `$HOME`, which must be absolute.
pub fn home(env: &Env) -> Result<PathBuf, NoHome> {
    absolute(env.home.as_ref()).ok_or(NoHome)
}

/// The default private key: `~/.ssh/pedm_ed25519`, a key of its own so pedm-ssh never
/// touches the user's other keys.
pub fn default_key(env: &Env) -> Result<PathBuf, NoHome> {
    Ok(home(env)?.join(".ssh").join("pedm_ed25519"))
}

/// The configuration directory: `$XDG_CONFIG_HOME/pedm-ssh`, else `$HOME/.config/pedm-ssh`.
pub fn config_dir(env: &Env) -> Result<PathBuf, NoHome> {
    match absolute(env.xdg_config_home.as_ref()) {
        Some(base) => Ok(base.join("pedm-ssh")),
        None => Ok(home(env)?.join(".config").join("pedm-ssh")),
    }
}

/// The session file inside [`config_dir`].
pub fn session_file(env: &Env) -> Result<PathBuf, NoHome> {
    Ok(config_dir(env)?.join("session.json"))
}

/// Appends `suffix` to the file name of `path` (`key` → `key.pub`, `key-cert.pub`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The public key beside a private key: `PATH.pub`, as ssh-keygen names it.
pub fn public_key_of(key: &Path) -> PathBuf {
    with_suffix(key, ".pub")
}

/// The certificate beside a private key: `PATH-cert.pub`, the name `ssh` and `ssh-add` look
/// for next to an identity file.
pub fn certificate_of(key: &Path) -> PathBuf {
    with_suffix(key, "-cert.pub")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(home: Option<&str>, xdg: Option<&str>) -> Env {
        Env {
            home: home.map(OsString::from),
            xdg_config_home: xdg.map(OsString::from),
        }
    }

    #[test]
    fn config_dir_prefers_absolute_xdg() {
        assert_eq!(
            config_dir(&env(Some("/h"), Some("/x"))).unwrap(),
            PathBuf::from("/x/pedm-ssh")
        );
        assert_eq!(
            config_dir(&env(Some("/h"), None)).unwrap(),
            PathBuf::from("/h/.config/pedm-ssh")
        );
        assert_eq!(
            config_dir(&env(Some("/h"), Some("rel"))).unwrap(),
            PathBuf::from("/h/.config/pedm-ssh")
        );
        assert_eq!(
            config_dir(&env(Some("/h"), Some(""))).unwrap(),
            PathBuf::from("/h/.config/pedm-ssh")
        );
        assert_eq!(config_dir(&env(None, None)), Err(NoHome));
        assert_eq!(
            session_file(&env(None, Some("/x"))).unwrap(),
            PathBuf::from("/x/pedm-ssh/session.json")
        );
    }

    #[test]
    fn key_paths() {
        let k = default_key(&env(Some("/h"), None)).unwrap();
        assert_eq!(k, PathBuf::from("/h/.ssh/pedm_ed25519"));
        assert_eq!(public_key_of(&k), PathBuf::from("/h/.ssh/pedm_ed25519.pub"));
        assert_eq!(
            certificate_of(&k),
            PathBuf::from("/h/.ssh/pedm_ed25519-cert.pub")
        );
        assert_eq!(default_key(&env(Some("relative"), None)), Err(NoHome));
    }
}
