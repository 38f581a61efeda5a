//! `host.toml`: which local accounts accept which certificate principals.
//!
//! ```toml
//! passwd_file = "/etc/passwd"   # default
//! min_uid = 1000                # default: unlisted accounts from this UID on accept their own name
//! max_uid = 60000               # default: ... up to this UID (nobody = 65534 stays out)
//!
//! [accounts]
//! postgres = ["db-admin"]
//! root = ["break-glass"]
//! ```
//!
//! Everything is validated on load; a name that would need rewriting is refused, never
//! rewritten, and every error names the offending key.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default `passwd_file`.
pub const DEFAULT_PASSWD_FILE: &str = "/etc/passwd";
/// Default `min_uid`: the first regular user on Debian and most distributions.
pub const DEFAULT_MIN_UID: u32 = 1000;
/// Default `max_uid`: the top of Debian's regular user range; `nobody` (65534) is above it.
pub const DEFAULT_MAX_UID: u32 = 60000;

/// Why `host.toml` was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    #[error("cannot read the host config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the host config {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the host config {path} is invalid: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The raw file, exactly as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostFile {
    #[serde(default)]
    accounts: BTreeMap<String, Vec<String>>,
    passwd_file: Option<PathBuf>,
    min_uid: Option<u32>,
    max_uid: Option<u32>,
}

/// A validated host configuration.
///
/// Invariants: every account name satisfies [`is_safe_account`], every principal list is
/// non-empty, sorted and deduplicated, every principal satisfies [`is_safe_principal`], and
/// `min_uid <= max_uid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Explicit mapping: account -> principals it accepts (and nothing else).
    pub accounts: BTreeMap<String, Vec<String>>,
    /// The passwd database to read unlisted accounts from.
    pub passwd_file: PathBuf,
    /// Lowest UID of an unlisted account that accepts its own name.
    pub min_uid: u32,
    /// Highest UID of an unlisted account that accepts its own name.
    pub max_uid: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            accounts: BTreeMap::new(),
            passwd_file: PathBuf::from(DEFAULT_PASSWD_FILE),
            min_uid: DEFAULT_MIN_UID,
            max_uid: DEFAULT_MAX_UID,
        }
    }
}

/// `^[a-z_][a-z0-9._-]{0,31}$`: a POSIX-portable account name that is also a safe file name
/// (it cannot be `.`/`..` or contain `/`), since it becomes `principals/<account>`.
pub fn is_safe_account(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b[1..].iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// `^[A-Za-z0-9._-]+$`: the only principal characters the CA issues; anything else (spaces,
/// commas, slashes) could be misread by sshd or smuggle a second principal.
pub fn is_safe_principal(p: &str) -> bool {
    !p.is_empty()
        && p.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Reads and validates `host.toml`.
pub fn load(path: &Path) -> Result<HostConfig, HostFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates the text of `host.toml`; `path` only labels errors.
pub fn parse(text: &str, path: &Path) -> Result<HostConfig, HostFileError> {
    let raw: RawHostFile = toml::from_str(text).map_err(|e| HostFileError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let invalid = |key: String, message: String| HostFileError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    };

    let min_uid = raw.min_uid.unwrap_or(DEFAULT_MIN_UID);
    let max_uid = raw.max_uid.unwrap_or(DEFAULT_MAX_UID);
    if min_uid > max_uid {
        return Err(invalid(
            "min_uid".into(),
            format!("{min_uid} is above max_uid ({max_uid}); no account could match"),
        ));
    }
    let passwd_file = raw
        .passwd_file
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PASSWD_FILE));
    if passwd_file.as_os_str().is_empty() {
        return Err(invalid(
            "passwd_file".into(),
            "is empty; name a passwd file such as /etc/passwd".into(),
        ));
    }

    let mut accounts = BTreeMap::new();
    for (name, principals) in raw.accounts {
        let key = format!("accounts.{name}");
        if !is_safe_account(&name) {
            return Err(invalid(
                key,
                format!(
                    "{name:?} is not a valid account name (it must match ^[a-z_][a-z0-9._-]{{0,31}}$)"
                ),
            ));
        }
        if principals.is_empty() {
            return Err(invalid(
                key,
                "the principal list is empty; list at least one principal, or remove the account"
                    .into(),
            ));
        }
        for p in &principals {
            if !is_safe_principal(p) {
                return Err(invalid(
                    key,
                    format!(
                        "principal {p:?} is not allowed: principals may only contain A-Z a-z 0-9 . _ - \
                         (write one principal per list item)"
                    ),
                ));
            }
        }
        let mut principals = principals;
        principals.sort();
        principals.dedup();
        accounts.insert(name, principals);
    }
    Ok(HostConfig {
        accounts,
        passwd_file,
        min_uid,
        max_uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<HostConfig, HostFileError> {
        parse(text, Path::new("host.toml"))
    }

    fn err(text: &str) -> String {
        match p(text) {
            Ok(c) => panic!("accepted {text:?} as {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_apply() {
        let c = p("").unwrap();
        assert_eq!(c, HostConfig::default());
        assert_eq!((c.min_uid, c.max_uid), (1000, 60000));
        assert_eq!(c.passwd_file, Path::new("/etc/passwd"));
    }

    #[test]
    fn parses_mapping_sorted_and_deduplicated() {
        let c = p(r#"
            passwd_file = "/srv/passwd"
            min_uid = 500
            max_uid = 999
            [accounts]
            postgres = ["db-admin", "Db.Backup_1", "db-admin"]
            root = ["break-glass"]
        "#)
        .unwrap();
        assert_eq!(
            c.accounts["postgres"],
            vec!["Db.Backup_1".to_string(), "db-admin".to_string()]
        );
        assert_eq!(c.accounts["root"], vec!["break-glass".to_string()]);
        assert_eq!((c.min_uid, c.max_uid), (500, 999));
        assert_eq!(c.passwd_file, Path::new("/srv/passwd"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = err("min_uids = 5\n");
        assert!(e.contains("min_uids"), "{e}");
        let e = err("[account]\nroot = [\"x\"]\n");
        assert!(e.contains("account"), "{e}");
    }

    #[test]
    fn bad_account_names_are_refused_by_key() {
        for name in [
            "Root",
            "1abc",
            "a/b",
            "..",
            "a b",
            "abcdefghijklmnopqrstuvwxyz0123456",
        ] {
            let e = err(&format!("[accounts]\n\"{name}\" = [\"x\"]\n"));
            assert!(e.contains(&format!("accounts.{name}")), "{e}");
            assert!(e.contains("not a valid account name"), "{e}");
        }
        // 32 characters is the longest allowed.
        assert!(p("[accounts]\nabcdefghijklmnopqrstuvwxyz012345 = [\"x\"]\n").is_ok());
    }

    #[test]
    fn bad_principals_are_refused_by_key() {
        for bad in ["a b", "a,b", "../x", "", "x\ny", "é"] {
            let text = format!(
                "[accounts]\npostgres = [{}]\n",
                toml::Value::String(bad.to_string())
            );
            let e = err(&text);
            assert!(e.contains("accounts.postgres"), "{e}");
            assert!(e.contains("is not allowed"), "{e}");
        }
    }

    #[test]
    fn empty_principal_list_is_refused() {
        let e = err("[accounts]\npostgres = []\n");
        assert!(e.contains("accounts.postgres"), "{e}");
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn wrong_types_and_bounds_are_refused() {
        let e = err("min_uid = -1\n");
        assert!(e.contains("min_uid"), "{e}");
        let e = err("min_uid = 2000\nmax_uid = 1000\n");
        assert!(e.contains("min_uid") && e.contains("above max_uid"), "{e}");
        let e = err("[accounts]\npostgres = \"db-admin\"\n");
        assert!(e.contains("postgres"), "{e}");
    }

    #[test]
    fn safe_name_rules() {
        assert!(is_safe_account("_apt"));
        assert!(is_safe_account("svc-web.1"));
        assert!(!is_safe_account(""));
        assert!(!is_safe_account("-x"));
        assert!(!is_safe_account(".x"));
        assert!(is_safe_principal("Break-Glass.2_x"));
        assert!(!is_safe_principal("a,b"));
        assert!(!is_safe_principal("a/b"));
    }
}
