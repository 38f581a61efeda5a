//! OS accounts for the tests, created once and safely across parallel test processes.
//!
//! `useradd -m -s /bin/sh NAME` then `usermod -p '*' NAME`: with `UsePAM no`, sshd refuses an
//! account whose password field is `!…` ("locked"), which is what `useradd` writes
//! (facts.md). Creation runs under `flock` on a root-owned lock file, and re-checks
//! `getent passwd` inside the lock, so parallel test binaries never race `useradd`.
//! Accounts carry the comment [`MARKER`]; only such accounts are ever modified.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The GECOS comment of accounts the tests created.
pub const MARKER: &str = "pedm-e2e test account";
/// The lock file serialising account creation between processes.
const LOCK_FILE: &str = "/run/pedm-e2e-users.lock";

/// A local account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: PathBuf,
    pub shell: String,
}

/// `^[a-z_][a-z0-9_-]{0,31}$`: safe for useradd, file names and shell arguments.
fn is_safe_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// The account `name` from `getent passwd`, if it exists.
pub fn lookup(name: &str) -> Option<Account> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .stdin(Stdio::null())
        .output()
        .expect("running getent");
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = line.trim_end().split(':').collect();
    if f.len() != 7 || f[0] != name {
        panic!("unexpected `getent passwd {name}` output: {line:?}");
    }
    Some(Account {
        name: f[0].to_string(),
        uid: f[2].parse().expect("numeric uid"),
        gid: f[3].parse().expect("numeric gid"),
        gecos: f[4].to_string(),
        home: PathBuf::from(f[5]),
        shell: f[6].to_string(),
    })
}

static ENSURED: Mutex<BTreeMap<String, Account>> = Mutex::new(BTreeMap::new());

/// Creation (or repair of a test account locked by an interrupted earlier run), under the
/// lock; "$1" is the account name, "$2" the marker.
const SCRIPT: &str = r#"set -e
if ! getent passwd "$1" >/dev/null; then
    useradd -m -s /bin/sh -c "$2" "$1"
    usermod -p '*' "$1"
    exit 0
fi
gecos=$(getent passwd "$1" | cut -d: -f5)
pw=$(getent shadow "$1" | cut -d: -f2)
case "$pw" in
    '!'*) if [ "$gecos" = "$2" ]; then usermod -p '*' "$1"; fi ;;
esac
"#;

/// Makes sure the local account `name` exists and can log in with a key (password field `*`,
/// shell `/bin/sh`, home directory). Creates it at most once per process; safe to call from
/// parallel tests and parallel test processes. Needs root. Panics on failure.
pub fn ensure_user(name: &str) -> Account {
    assert!(is_safe_name(name), "unsafe test account name {name:?}");
    let mut done = ENSURED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(a) = done.get(name) {
        return a.clone();
    }
    let out = Command::new("flock")
        .args([LOCK_FILE, "sh", "-c", SCRIPT, "sh", name, MARKER])
        .stdin(Stdio::null())
        .output()
        .expect("running flock");
    if !out.status.success() {
        panic!(
            "creating the test account {name:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let account = lookup(name).unwrap_or_else(|| panic!("{name} still does not exist"));
    if account.gecos != MARKER {
        eprintln!(
            "note: using the existing account {name} (uid {}), not created by the tests",
            account.uid
        );
    }
    done.insert(name.to_string(), account.clone());
    account
}
