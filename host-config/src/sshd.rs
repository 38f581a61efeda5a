//! The drop-in we give sshd, and the checks that sshd really uses it.
//!
//! `sshd -t` proves the whole configuration parses; `sshd -T` proves the *effective* values
//! are ours. The second matters because sshd keeps the first value it reads for these
//! keywords: an earlier drop-in (`40-other.conf`), a line in the main file above the
//! `Include`, or a main file without the `Include` silently wins over `50-pedm.conf`.
//!
//! Observed with OpenSSH 9.2p1: `sshd -T` prints lower-case keywords followed by one space
//! and the value as configured (quotes removed, `%u` left unexpanded), and `none` when unset:
//!
//! ```text
//! trustedusercakeys /etc/ssh/pedm/trusted-user-ca-keys.pub
//! revokedkeys /etc/ssh/pedm/revoked-keys.krl
//! authorizedprincipalsfile /etc/ssh/pedm/principals/%u
//! ```

use crate::layout::Layout;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Default location of sshd on Debian and most distributions.
pub const DEFAULT_SSHD: &str = "/usr/sbin/sshd";
/// sshd's privilege separation directory; `sshd -t` fails without it.
pub const PRIVSEP_DIR: &str = "/run/sshd";

/// Why sshd cannot be used or did not accept our configuration.
#[derive(Debug, thiserror::Error)]
pub enum SshdError {
    #[error("sshd was not found at {0}; pass the right path with --sshd")]
    Missing(PathBuf),
    #[error("cannot run {sshd}: {source}")]
    Spawn {
        sshd: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`sshd -t -f {config}` refused the configuration: {output}")]
    Syntax { config: PathBuf, output: String },
    #[error("`sshd -T -f {config} -C user={user},…` failed: {output}")]
    Dump {
        config: PathBuf,
        user: String,
        output: String,
    },
    #[error("{0}")]
    NotEffective(String),
    #[error("reloading sshd failed: {0}; the files are installed, reload sshd by hand (SIGHUP) so the drop-in applies")]
    Reload(String),
}

/// One of our settings and the value sshd must report for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The keyword as written in sshd_config.
    pub keyword: &'static str,
    /// The path, unquoted, exactly as `sshd -T` prints it.
    pub value: String,
}

impl Setting {
    /// The keyword as `sshd -T` prints it.
    pub fn effective_keyword(&self) -> String {
        self.keyword.to_ascii_lowercase()
    }
}

/// The three settings of the drop-in, in file order.
pub fn settings(layout: &Layout) -> Vec<Setting> {
    vec![
        Setting {
            keyword: "TrustedUserCAKeys",
            value: layout.ca_keys_value(),
        },
        Setting {
            keyword: "AuthorizedPrincipalsFile",
            value: layout.principals_value(),
        },
        Setting {
            keyword: "RevokedKeys",
            value: layout.krl_value(),
        },
    ]
}

/// Quotes a value for sshd_config when it contains blanks or a `#`. [`Layout`] guarantees
/// there is no quote, backslash or `%` to escape.
fn quote(value: &str) -> String {
    if value.chars().any(|c| c.is_whitespace() || c == '#') {
        format!("\"{value}\"")
    } else {
        value.to_string()
    }
}

/// The full text of `50-pedm.conf`.
pub fn dropin_text(layout: &Layout) -> String {
    let mut out = String::from(
        "# Managed by pedm-host-config: do not edit, changes are overwritten on the next run.\n\
         # sshd keeps the first value it reads, so a drop-in sorting before this one (or a line\n\
         # above the Include in sshd_config) overrides these settings.\n",
    );
    for s in settings(layout) {
        let _ = writeln!(out, "{} {}", s.keyword, quote(&s.value));
    }
    out
}

/// Parses `sshd -T` output into keyword -> value (first occurrence wins, like sshd).
pub fn parse_effective(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (k, v) = match line.split_once(' ') {
            Some((k, v)) => (k, v),
            None => (line, ""),
        };
        if !k.is_empty() {
            out.entry(k.to_ascii_lowercase())
                .or_insert_with(|| v.to_string());
        }
    }
    out
}

/// A setting whose effective value is not ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub setting: Setting,
    /// What sshd reports (`None` if the keyword is missing from the output).
    pub found: Option<String>,
}

/// Compares the effective values with ours.
pub fn compare(effective: &BTreeMap<String, String>, wanted: &[Setting]) -> Vec<Mismatch> {
    wanted
        .iter()
        .filter_map(|s| {
            let found = effective.get(&s.effective_keyword()).cloned();
            (found.as_deref() != Some(s.value.as_str())).then(|| Mismatch {
                setting: s.clone(),
                found,
            })
        })
        .collect()
}

/// Lines in the main config and in the drop-in directory (other than ours) that set
/// `keyword`, as `path:line`, to point the operator at the culprit. Best effort.
fn find_setters(keyword: &str, main_config: &Path, layout: &Layout) -> Vec<String> {
    let mut files = vec![main_config.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(layout.dropin_dir()) {
        let mut dropins: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf") && *p != layout.dropin())
            .collect();
        dropins.sort();
        files.extend(dropins);
    }
    let mut hits = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.eq_ignore_ascii_case(keyword) {
                hits.push(format!("{}:{}", f.display(), i + 1));
            }
        }
    }
    hits
}

/// Explains mismatches in operator terms.
pub fn explain(mismatches: &[Mismatch], user: &str, main_config: &Path, layout: &Layout) -> String {
    let include = format!("Include {}/*.conf", layout.dropin_dir().display());
    if !mismatches.is_empty()
        && mismatches.len() == settings(layout).len()
        && mismatches
            .iter()
            .all(|m| m.found.as_deref() == Some("none"))
    {
        return format!(
            "sshd does not read {}: with {} the effective trustedusercakeys, authorizedprincipalsfile \
             and revokedkeys are all none; add `{include}` near the top of {}",
            layout.dropin().display(),
            main_config.display(),
            main_config.display()
        );
    }
    let mut out =
        format!("sshd would not use our settings (checked with `sshd -T -C user={user}`):");
    for m in mismatches {
        let kw = m.setting.effective_keyword();
        let found = m.found.as_deref().unwrap_or("(not reported)");
        let _ = write!(out, "\n  {kw} is {found:?}, not {:?}", m.setting.value);
        let setters = find_setters(m.setting.keyword, main_config, layout);
        if setters.is_empty() {
            let _ = write!(
                out,
                " (shadowed by a setting read before {})",
                layout.dropin().display()
            );
        } else {
            let _ = write!(out, " (shadowed: also set at {})", setters.join(", "));
        }
    }
    let _ = write!(
        out,
        "\nsshd keeps the first value it reads: remove those settings, or make sure `{include}` comes \
         before them and no drop-in sorting before 50-pedm.conf sets them"
    );
    out
}

/// Finds sshd: `--sshd` if given (it must exist), else [`DEFAULT_SSHD`], else `sshd` on PATH.
/// `Ok(None)` means sshd is not installed.
pub fn locate(explicit: Option<&Path>) -> Result<Option<PathBuf>, SshdError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(Some(p.to_path_buf()))
        } else {
            Err(SshdError::Missing(p.to_path_buf()))
        };
    }
    let default = Path::new(DEFAULT_SSHD);
    if default.is_file() {
        return Ok(Some(default.to_path_buf()));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    Ok(std::env::split_paths(&path)
        .map(|d| d.join("sshd"))
        .find(|p| p.is_file()))
}

/// Creates sshd's privilege separation directory if missing. Best effort: without the
/// privilege to create it, `sshd -t` will say what is wrong.
pub fn ensure_privsep_dir() {
    use std::os::unix::fs::DirBuilderExt;
    let dir = Path::new(PRIVSEP_DIR);
    if !dir.exists() {
        let _ = std::fs::DirBuilder::new().mode(0o755).create(dir);
    }
}

fn run(sshd: &Path, args: &[&str]) -> Result<(bool, String, String), SshdError> {
    let out = Command::new(sshd)
        .args(args)
        .output()
        .map_err(|source| SshdError::Spawn {
            sshd: sshd.to_path_buf(),
            source,
        })?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// Runs `sshd -t -f MAIN`, then `sshd -T -f MAIN -C user=U,host=localhost,addr=127.0.0.1`
/// for each of `users`, and checks that the three effective values are ours.
pub fn check(
    sshd: &Path,
    main_config: &Path,
    users: &[String],
    layout: &Layout,
) -> Result<(), SshdError> {
    ensure_privsep_dir();
    let config = main_config.to_string_lossy().into_owned();
    let (ok, stdout, stderr) = run(sshd, &["-t", "-f", &config])?;
    if !ok {
        let output = if stderr.is_empty() {
            stdout.trim().to_string()
        } else {
            stderr
        };
        return Err(SshdError::Syntax {
            config: main_config.to_path_buf(),
            output,
        });
    }
    let wanted = settings(layout);
    for user in users {
        let spec = format!("user={user},host=localhost,addr=127.0.0.1");
        let (ok, stdout, stderr) = run(sshd, &["-T", "-f", &config, "-C", &spec])?;
        if !ok {
            return Err(SshdError::Dump {
                config: main_config.to_path_buf(),
                user: user.clone(),
                output: stderr,
            });
        }
        let mismatches = compare(&parse_effective(&stdout), &wanted);
        if !mismatches.is_empty() {
            return Err(SshdError::NotEffective(explain(
                &mismatches,
                user,
                main_config,
                layout,
            )));
        }
    }
    Ok(())
}

/// How sshd learned about a changed drop-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// `systemctl reload UNIT` succeeded.
    Systemd(String),
    /// Not under systemd: the operator must send SIGHUP.
    Manual,
}

/// Reloads sshd through systemd (`ssh.service`, else `sshd.service`) when systemd runs.
pub fn reload() -> Result<Reload, SshdError> {
    if !Path::new("/run/systemd/system").exists() {
        return Ok(Reload::Manual);
    }
    let mut errors = Vec::new();
    for unit in ["ssh.service", "sshd.service"] {
        match Command::new("systemctl").args(["reload", unit]).output() {
            Ok(o) if o.status.success() => return Ok(Reload::Systemd(unit.to_string())),
            Ok(o) => errors.push(format!(
                "systemctl reload {unit}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => errors.push(format!("systemctl reload {unit}: {e}")),
        }
    }
    Err(SshdError::Reload(errors.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(Path::new("/etc/ssh")).unwrap()
    }

    #[test]
    fn dropin_text_is_header_then_exact_settings() {
        let text = dropin_text(&layout());
        let mut lines = text.lines();
        assert!(lines
            .next()
            .unwrap()
            .starts_with("# Managed by pedm-host-config"));
        let settings: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            settings,
            [
                "TrustedUserCAKeys /etc/ssh/pedm/trusted-user-ca-keys.pub",
                "AuthorizedPrincipalsFile /etc/ssh/pedm/principals/%u",
                "RevokedKeys /etc/ssh/pedm/revoked-keys.krl",
            ]
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn dropin_quotes_paths_with_blanks() {
        let l = Layout::new(Path::new("/srv/my ssh")).unwrap();
        assert!(dropin_text(&l)
            .contains("TrustedUserCAKeys \"/srv/my ssh/pedm/trusted-user-ca-keys.pub\"\n"));
        // sshd -T prints it unquoted, which is what we compare with.
        assert_eq!(
            settings(&l)[0].value,
            "/srv/my ssh/pedm/trusted-user-ca-keys.pub"
        );
    }

    #[test]
    fn compare_finds_shadowed_and_unset_values() {
        let l = layout();
        let good = "port 22\ntrustedusercakeys /etc/ssh/pedm/trusted-user-ca-keys.pub\n\
                    revokedkeys /etc/ssh/pedm/revoked-keys.krl\n\
                    authorizedprincipalsfile /etc/ssh/pedm/principals/%u\n";
        assert!(compare(&parse_effective(good), &settings(&l)).is_empty());

        let shadowed = good.replace(
            "trustedusercakeys /etc/ssh/pedm/trusted-user-ca-keys.pub",
            "trustedusercakeys /nowhere",
        );
        let m = compare(&parse_effective(&shadowed), &settings(&l));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].setting.keyword, "TrustedUserCAKeys");
        assert_eq!(m[0].found.as_deref(), Some("/nowhere"));
        let text = explain(&m, "root", Path::new("/nonexistent/sshd_config"), &l);
        assert!(text.contains("trustedusercakeys is \"/nowhere\""), "{text}");

        let none = "trustedusercakeys none\nrevokedkeys none\nauthorizedprincipalsfile none\n";
        let m = compare(&parse_effective(none), &settings(&l));
        assert_eq!(m.len(), 3);
        let text = explain(&m, "root", Path::new("/etc/ssh/sshd_config"), &l);
        assert!(
            text.contains("Include /etc/ssh/sshd_config.d/*.conf"),
            "{text}"
        );

        let m = compare(&parse_effective("port 22\n"), &settings(&l));
        assert!(m.iter().all(|m| m.found.is_none()) && m.len() == 3);
    }

    #[test]
    fn explicit_sshd_must_exist() {
        assert!(matches!(
            locate(Some(Path::new("/nonexistent/sshd"))),
            Err(SshdError::Missing(_))
        ));
    }
}
