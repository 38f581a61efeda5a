//! Which principals each local account accepts: a pure function of the passwd text and the
//! host configuration, so every rule is unit-tested without touching the system.
//!
//! Rules:
//! - an account listed in `[accounts]` accepts exactly the listed principals;
//! - an unlisted passwd account with `min_uid <= uid <= max_uid` accepts its own name only;
//! - root (name `root` or UID 0) never accepts its own name, whatever `min_uid` says;
//! - an unlisted account whose name is a reserved principal (`root`, `break-glass`) or a
//!   principal that `[accounts]` grants elsewhere gets nothing, because its own name would
//!   let every holder of that role principal in (list it explicitly if that is intended);
//! - passwd entries with unsafe names (see [`is_safe_account`]) are skipped.

use crate::hostfile::{is_safe_account, HostConfig};
use std::collections::{BTreeMap, BTreeSet};

/// Principals that name roles, never people, so no account accepts them implicitly.
pub const RESERVED_PRINCIPALS: &[&str] = &["root", "break-glass"];

/// One passwd entry, as far as the mapping cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
}

/// The result of the mapping.
///
/// Invariant: every key is a safe account name; every value is non-empty, sorted and
/// deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    pub accounts: BTreeMap<String, Vec<String>>,
    /// Things the operator should know (skipped entries, collisions); not errors.
    pub warnings: Vec<String>,
}

impl Mapping {
    /// The content of `principals/<account>`: one principal per line.
    pub fn file_content(principals: &[String]) -> String {
        let mut out = String::new();
        for p in principals {
            out.push_str(p);
            out.push('\n');
        }
        out
    }
}

/// Parses passwd(5) text. Comments, blank lines, NIS `+`/`-` entries and lines that do not
/// have seven fields with a numeric UID are skipped (they cannot be mapped safely). The first
/// entry of a name wins, as with `getpwnam`.
pub fn parse_passwd(text: &str) -> (Vec<PasswdEntry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty()
            || trimmed.starts_with('#')
            || trimmed.starts_with('+')
            || trimmed.starts_with('-')
        {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let uid = match (
            fields.len(),
            fields.get(2).and_then(|u| u.parse::<u32>().ok()),
        ) {
            (7, Some(uid)) => uid,
            _ => {
                warnings.push(format!(
                    "passwd line {}: not a passwd entry, skipped",
                    i + 1
                ));
                continue;
            }
        };
        let name = fields[0].to_string();
        if seen.insert(name.clone()) {
            entries.push(PasswdEntry { name, uid });
        }
    }
    (entries, warnings)
}

/// Maps accounts to the principals they accept (see the module docs for the rules).
pub fn map_accounts(passwd_text: &str, config: &HostConfig) -> Mapping {
    let (entries, mut warnings) = parse_passwd(passwd_text);
    let mut accounts: BTreeMap<String, Vec<String>> = config.accounts.clone();
    let granted: BTreeSet<&str> = config
        .accounts
        .values()
        .flatten()
        .map(String::as_str)
        .collect();

    for e in entries {
        if config.accounts.contains_key(&e.name) {
            continue;
        }
        if e.uid == 0 || e.name == "root" {
            continue;
        }
        if e.uid < config.min_uid || e.uid > config.max_uid {
            continue;
        }
        if !is_safe_account(&e.name) {
            warnings.push(format!(
                "passwd account {:?} (uid {}) has a name that is not safe to map, skipped",
                e.name, e.uid
            ));
            continue;
        }
        if RESERVED_PRINCIPALS.contains(&e.name.as_str()) || granted.contains(e.name.as_str()) {
            warnings.push(format!(
                "passwd account {} (uid {}) is named like a role principal that others hold, so it does \
                 not accept its own name; list it under [accounts] if it should",
                e.name, e.uid
            ));
            continue;
        }
        accounts.insert(e.name.clone(), vec![e.name]);
    }
    Mapping { accounts, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
postgres:x:110:118:PostgreSQL:/var/lib/postgresql:/bin/bash
alice:x:1000:1000:Alice:/home/alice:/bin/bash
bob:x:1001:1001:Bob:/home/bob:/bin/bash
Mallory:x:1002:1002::/home/m:/bin/sh
ev/il:x:1003:1003::/home/e:/bin/sh
carol:x:60000:60000::/home/c:/bin/sh
dave:x:60001:60001::/home/d:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";

    fn cfg(accounts: &[(&str, &[&str])], min_uid: u32, max_uid: u32) -> HostConfig {
        HostConfig {
            accounts: accounts
                .iter()
                .map(|(a, ps)| (a.to_string(), ps.iter().map(|p| p.to_string()).collect()))
                .collect(),
            min_uid,
            max_uid,
            ..HostConfig::default()
        }
    }

    fn names(m: &Mapping) -> Vec<&str> {
        m.accounts.keys().map(String::as_str).collect()
    }

    #[test]
    fn defaults_map_regular_users_to_their_own_name() {
        let m = map_accounts(PASSWD, &cfg(&[], 1000, 60000));
        assert_eq!(names(&m), ["alice", "bob", "carol"]);
        assert_eq!(m.accounts["alice"], vec!["alice".to_string()]);
        // nobody (65534) and dave (60001) are above max_uid, daemon/postgres below min_uid.
        assert!(!m.accounts.contains_key("nobody"));
        assert!(!m.accounts.contains_key("dave"));
        assert!(!m.accounts.contains_key("daemon"));
    }

    #[test]
    fn root_never_gets_its_own_name_even_with_min_uid_zero() {
        let m = map_accounts(PASSWD, &cfg(&[], 0, 65534));
        assert!(!m.accounts.contains_key("root"), "{m:?}");
        assert_eq!(m.accounts["daemon"], vec!["daemon".to_string()]);
        assert_eq!(m.accounts["nobody"], vec!["nobody".to_string()]);
        // A second UID-0 account is root too.
        let m = map_accounts("toor:x:0:0::/root:/bin/sh\n", &cfg(&[], 0, 65534));
        assert!(m.accounts.is_empty(), "{m:?}");
    }

    #[test]
    fn uid_bounds_are_inclusive() {
        let m = map_accounts(PASSWD, &cfg(&[], 1001, 60001));
        assert_eq!(names(&m), ["bob", "carol", "dave"]);
        let m = map_accounts(PASSWD, &cfg(&[], 1000, 1000));
        assert_eq!(names(&m), ["alice"]);
    }

    #[test]
    fn listed_accounts_get_exactly_their_principals() {
        let m = map_accounts(
            PASSWD,
            &cfg(
                &[
                    ("postgres", &["db-admin"]),
                    ("root", &["break-glass"]),
                    ("alice", &["ops"]),
                ],
                1000,
                60000,
            ),
        );
        assert_eq!(m.accounts["postgres"], vec!["db-admin".to_string()]);
        assert_eq!(m.accounts["root"], vec!["break-glass".to_string()]);
        // Listing replaces the own-name default.
        assert_eq!(m.accounts["alice"], vec!["ops".to_string()]);
        // A listed account need not be in passwd (it may be created later).
        let m = map_accounts("", &cfg(&[("svc", &["deploy"])], 1000, 60000));
        assert_eq!(names(&m), ["svc"]);
    }

    #[test]
    fn principals_are_sorted_and_deduplicated_in_the_file() {
        let mut c = cfg(&[], 1000, 60000);
        // HostConfig from the parser is already sorted/deduplicated; the file reflects it.
        c.accounts
            .insert("postgres".into(), vec!["a".into(), "b".into()]);
        let m = map_accounts(PASSWD, &c);
        assert_eq!(Mapping::file_content(&m.accounts["postgres"]), "a\nb\n");
        let parsed = crate::hostfile::parse(
            "[accounts]\npostgres = [\"z\", \"a\", \"z\", \"m\"]\n",
            std::path::Path::new("h"),
        )
        .unwrap();
        let m = map_accounts("", &parsed);
        assert_eq!(Mapping::file_content(&m.accounts["postgres"]), "a\nm\nz\n");
    }

    #[test]
    fn unsafe_passwd_names_are_skipped_with_a_warning() {
        let m = map_accounts(PASSWD, &cfg(&[], 1000, 60000));
        assert!(!m.accounts.contains_key("Mallory"));
        assert!(!m.accounts.keys().any(|k| k.contains('/')));
        assert!(
            m.warnings.iter().any(|w| w.contains("Mallory")),
            "{:?}",
            m.warnings
        );
        assert!(
            m.warnings.iter().any(|w| w.contains("ev/il")),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn accounts_named_like_role_principals_get_nothing_implicitly() {
        let passwd = "db-admin:x:1005:1005::/h:/bin/sh\nbreak-glass:x:1006:1006::/h:/bin/sh\nerin:x:1007:1007::/h:/bin/sh\n";
        let m = map_accounts(passwd, &cfg(&[("postgres", &["db-admin"])], 1000, 60000));
        assert_eq!(names(&m), ["erin", "postgres"]);
        assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
    }

    #[test]
    fn malformed_and_duplicate_lines() {
        let text = "# comment\n\n+nis\nshort:x:1000\nbad:x:abc:1::/h:/bin/sh\nann:x:1000:1::/h:/bin/sh\nann:x:0:0::/h:/bin/sh\n";
        let (entries, warnings) = parse_passwd(text);
        assert_eq!(
            entries,
            vec![PasswdEntry {
                name: "ann".into(),
                uid: 1000
            }]
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        let m = map_accounts(text, &cfg(&[], 1000, 60000));
        assert_eq!(m.accounts["ann"], vec!["ann".to_string()]);
    }
}
