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

/// An elevation name this client will not put into a file name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the CA named the elevation {0}, which is not a safe file name part (1-32 of a-z, 0-9, _ and -); nothing was written; tell the CA operator")]
pub struct BadElevationName(
    /// The name, escaped for printing.
    pub String,
);

/// Whether `name` may become part of a file name: `[a-z0-9_-]{1,32}`, so no `/`, no `.`,
/// nothing a shell or terminal treats specially.
pub fn is_safe_elevation_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The elevated certificate beside a private key: `PATH-elev-NAME-cert.pub`. The name comes
/// from the CA and is refused, not cleaned up, unless it is [safe](is_safe_elevation_name).
pub fn elevation_certificate_of(key: &Path, name: &str) -> Result<PathBuf, BadElevationName> {
    if !is_safe_elevation_name(name) {
        return Err(BadElevationName(crate::escape::escape(name)));
    }
    Ok(with_suffix(key, &format!("-elev-{name}-cert.pub")))
}

/// The elevated certificates beside a private key (`PATH-elev-NAME-cert.pub` with a safe
/// NAME), sorted; none if the directory cannot be read.
pub fn elevation_certificates(key: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(base)) = (key.parent(), key.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{base}-elev-");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let elev = name.strip_prefix(&prefix)?.strip_suffix("-cert.pub")?;
            is_safe_elevation_name(elev).then(|| e.path())
        })
        .collect();
    found.sort();
    found
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

    #[test]
    fn elevation_certificate_names() {
        let k = PathBuf::from("/h/.ssh/pedm_ed25519");
        assert_eq!(
            elevation_certificate_of(&k, "db-admin").unwrap(),
            PathBuf::from("/h/.ssh/pedm_ed25519-elev-db-admin-cert.pub")
        );
        assert!(elevation_certificate_of(&k, "a_b-9").is_ok());
        assert!(elevation_certificate_of(&k, &"x".repeat(32)).is_ok());
        for bad in [
            "",
            "../x",
            "x/y",
            "..",
            ".",
            "DB",
            "db admin",
            "db\nadmin",
            "db\u{1b}",
            "dé",
            &"x".repeat(33),
        ] {
            assert!(elevation_certificate_of(&k, bad).is_err(), "{bad:?}");
        }
        let e = elevation_certificate_of(&k, "../x\n").unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn elevation_certificates_are_found_beside_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("id");
        for name in [
            "id",
            "id-cert.pub",
            "id-elev-db-admin-cert.pub",
            "id-elev-web-cert.pub",
            "id-elev-BAD-cert.pub",
            "other-elev-db-admin-cert.pub",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(
            elevation_certificates(&k),
            vec![
                dir.path().join("id-elev-db-admin-cert.pub"),
                dir.path().join("id-elev-web-cert.pub")
            ]
        );
        assert!(elevation_certificates(&dir.path().join("missing/id")).is_empty());
    }
}
