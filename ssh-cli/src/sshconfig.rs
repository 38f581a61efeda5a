//! `pedm-ssh config`: the `ssh_config` snippet that makes plain `ssh`, `scp`, `rsync` and
//! `git` refresh the certificate on their own, and the `elevations.conf` file it includes.
//!
//! The snippet is
//!
//! ```text
//! Match exec "/abs/path/pedm-ssh ensure --quiet"
//!   CertificateFile /home/me/.ssh/pedm_ed25519-cert.pub
//!   IdentityFile /home/me/.ssh/pedm_ed25519
//!   Include /home/me/.config/pedm-ssh/elevations.conf
//! Match all
//! ```
//!
//! `ssh` runs the `Match exec` command for every connection; `ensure` renews the certificate
//! when it is about to expire (and makes no network call otherwise) and rewrites
//! `elevations.conf` with one `CertificateFile` line per elevated certificate that is still
//! valid, before `ssh` reads the `Include`. The path of `pedm-ssh` is absolute
//! (`std::env::current_exe`), so the snippet works whether or not `pedm-ssh` is on `PATH`.

use crate::app::Ctx;
use crate::exit::{Exit, Failure};
use crate::fsutil::{self, FsError};
use crate::{certfile, paths, session};
use clap::Args;
use std::path::{Path, PathBuf};

/// `pedm-ssh config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The private key [default: the one used at sign-in, else ~/.ssh/pedm_ed25519].
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
}

/// The file the snippet includes: `$XDG_CONFIG_HOME/pedm-ssh/elevations.conf`.
pub fn elevations_file(env: &paths::Env) -> Result<PathBuf, paths::NoHome> {
    Ok(paths::config_dir(env)?.join("elevations.conf"))
}

/// A path that `ssh_config` cannot carry safely (quotes, backslashes, control characters).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} cannot be written into an ssh_config file (it contains a quote, a backslash or a control character); move it or pass --key PATH")]
pub struct Unquotable(pub String);

fn text_of(path: &Path) -> Result<&str, Unquotable> {
    let s = path
        .to_str()
        .ok_or_else(|| Unquotable(path.display().to_string()))?;
    if s.chars()
        .any(|c| c.is_control() || matches!(c, '"' | '\'' | '\\' | '`' | '$'))
    {
        return Err(Unquotable(crate::escape::escape(s)));
    }
    Ok(s)
}

/// A path as an `ssh_config` argument: `%` doubled when the keyword expands `%` tokens
/// (`CertificateFile`, `IdentityFile`, `Match exec`), double-quoted when it has spaces.
fn config_arg(path: &Path, tokens: bool) -> Result<String, Unquotable> {
    let s = text_of(path)?;
    let s = if tokens {
        s.replace('%', "%%")
    } else {
        s.to_string()
    };
    Ok(if s.contains(' ') || s.contains('\t') {
        format!("\"{s}\"")
    } else {
        s
    })
}

/// The `Match exec` command: the absolute path of `pedm-ssh` (single-quoted for the shell
/// when it has spaces), then `ensure --quiet`, all in double quotes for `ssh_config`.
fn exec_arg(exe: &Path) -> Result<String, Unquotable> {
    let s = text_of(exe)?.replace('%', "%%");
    let cmd = if s.contains(' ') || s.contains('\t') {
        format!("'{s}'")
    } else {
        s
    };
    Ok(format!("\"{cmd} ensure --quiet\""))
}

/// The snippet for `exe` (absolute), `key` and the included `elevations` file.
pub fn snippet(exe: &Path, key: &Path, elevations: &Path) -> Result<String, Unquotable> {
    Ok(format!(
        "# pedm-ssh: renew the certificate before each connection and offer it\n\
Match exec {}\n  CertificateFile {}\n  IdentityFile {}\n  Include {}\nMatch all\n",
        exec_arg(exe)?,
        config_arg(&paths::certificate_of(key), true)?,
        config_arg(key, true)?,
        config_arg(elevations, false)?,
    ))
}

/// The content of `elevations.conf`: a `CertificateFile` line for each elevated
/// certificate beside `key` that is still valid at `now`.
pub fn elevations_content(key: &Path, now: i64) -> String {
    let mut out = String::from(
        "# Written by pedm-ssh (ensure, elevate): the elevated certificates still valid.\n",
    );
    for path in paths::elevation_certificates(key) {
        let Ok(Some(cert)) = certfile::load_at(path) else {
            continue;
        };
        if cert.valid_before <= now {
            continue;
        }
        if let Ok(arg) = config_arg(&cert.path, true) {
            out.push_str(&format!("CertificateFile {arg}\n"));
        }
    }
    out
}

/// Rewrites `elevations.conf` when its content changes; `Ok(true)` if it was written.
pub fn write_elevations(env: &paths::Env, key: &Path, now: i64) -> Result<bool, Failure> {
    let file = elevations_file(env)?;
    let content = elevations_content(key, now);
    if std::fs::read_to_string(&file).ok().as_deref() == Some(content.as_str()) {
        return Ok(false);
    }
    write(&file, &content)?;
    Ok(true)
}

fn write(file: &Path, content: &str) -> Result<(), FsError> {
    if let Some(dir) = file.parent() {
        fsutil::ensure_private_dir(dir)?;
    }
    fsutil::write_atomic(file, content.as_bytes(), fsutil::PUBLIC_FILE_MODE)
}

/// `pedm-ssh config`: prints the snippet.
pub fn run(ctx: &Ctx, args: &ConfigArgs) -> Result<(), Failure> {
    let key = match &args.key {
        Some(k) => paths::absolute_key(k)?,
        None => match session::load(&paths::session_file(&ctx.env)?)
            .ok()
            .flatten()
        {
            Some(s) => s.key_path,
            None => paths::default_key(&ctx.env)?,
        },
    };
    let exe = std::env::current_exe().map_err(|e| {
        Failure::plain(
            Exit::Error,
            format!("cannot find the path of this pedm-ssh: {e}"),
        )
    })?;
    let exe = std::path::absolute(&exe).map_err(fsutil::ctx("resolve", &exe))?;
    let elevations = elevations_file(&ctx.env)?;
    let text =
        snippet(&exe, &key, &elevations).map_err(|e| Failure::plain(Exit::Error, e.to_string()))?;
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_lines() {
        let s = snippet(
            Path::new("/opt/bin/pedm-ssh"),
            Path::new("/h/.ssh/pedm_ed25519"),
            Path::new("/h/.config/pedm-ssh/elevations.conf"),
        )
        .unwrap();
        assert!(
            s.contains("\nMatch exec \"/opt/bin/pedm-ssh ensure --quiet\"\n"),
            "{s}"
        );
        assert!(
            s.contains("\n  CertificateFile /h/.ssh/pedm_ed25519-cert.pub\n"),
            "{s}"
        );
        assert!(s.contains("\n  IdentityFile /h/.ssh/pedm_ed25519\n"), "{s}");
        assert!(
            s.contains("\n  Include /h/.config/pedm-ssh/elevations.conf\n"),
            "{s}"
        );
        assert!(s.ends_with("Match all\n"), "{s}");
    }

    #[test]
    fn spaces_are_quoted_and_percent_doubled() {
        let s = snippet(
            Path::new("/my bin/pedm-ssh"),
            Path::new("/h o/100%/k"),
            Path::new("/h o/e.conf"),
        )
        .unwrap();
        assert!(
            s.contains("Match exec \"'/my bin/pedm-ssh' ensure --quiet\""),
            "{s}"
        );
        assert!(
            s.contains("CertificateFile \"/h o/100%%/k-cert.pub\""),
            "{s}"
        );
        assert!(s.contains("IdentityFile \"/h o/100%%/k\""), "{s}");
        assert!(s.contains("Include \"/h o/e.conf\""), "{s}");
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in ["/a\"b", "/a'b", "/a\\b", "/a\nb", "/a$b", "/a`b"] {
            assert!(
                snippet(Path::new(bad), Path::new("/k"), Path::new("/e")).is_err(),
                "{bad:?}"
            );
            assert!(
                snippet(Path::new("/x"), Path::new(bad), Path::new("/e")).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn elevations_content_lists_only_valid_certificates() {
        use crate::certfile::test_support::sign;
        use ssh_key::certificate::CertType;
        use ssh_key::{Algorithm, PrivateKey};
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        let public = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone();
        let live = sign(&public, CertType::User, 2_000);
        let dead = sign(&public, CertType::User, 1_000);
        certfile::save_at(dir.path().join("id-elev-live-cert.pub"), &live).unwrap();
        certfile::save_at(dir.path().join("id-elev-dead-cert.pub"), &dead).unwrap();
        let c = elevations_content(&key, 1_500);
        let live_path = dir.path().join("id-elev-live-cert.pub");
        assert!(
            c.contains(&format!("CertificateFile {}\n", live_path.display())),
            "{c}"
        );
        assert!(!c.contains("dead"), "{c}");
        assert_eq!(c.lines().filter(|l| l.starts_with("Cert")).count(), 1);
    }
}
