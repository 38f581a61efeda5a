//! What the machine must offer, and where the tests may put files that sshd reads.
//!
//! Outside CI a missing prerequisite skips the test with a printed reason; with `CI=true` it
//! fails the test, so a CI run can never pass by skipping.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Debian's `openssh-server` puts sshd.
pub const SSHD: &str = "/usr/sbin/sshd";
/// sshd's privilege separation directory: `sshd -t` and `sshd -D` fail without it.
pub const PRIVSEP_DIR: &str = "/run/sshd";

/// Whether this is a CI run (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether `PEDM_E2E_SHOW_LOGS` is set: child processes print their captured logs when
/// dropped even if the test passed (run with `--nocapture` to see them).
pub fn show_logs() -> bool {
    std::env::var_os("PEDM_E2E_SHOW_LOGS").is_some_and(|v| !v.is_empty())
}

/// Whether the tests run as root (needed to create OS accounts and run sshd for them).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether `program` runs (any exit status) when started with `args`.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The first missing prerequisite of the real-sshd tests, if any.
fn missing_for_sshd() -> Option<String> {
    if !is_root() {
        return Some(
            "not running as root: the sshd tests create OS accounts and run sshd for them".into(),
        );
    }
    if !Path::new(SSHD).is_file() {
        return Some(format!(
            "{SSHD} is missing (apt-get install openssh-server)"
        ));
    }
    for (tool, args) in [
        ("ssh", &["-V"][..]),
        ("ssh-keygen", &["-?"][..]),
        ("useradd", &["--help"][..]),
        ("usermod", &["--help"][..]),
        ("getent", &["--help"][..]),
        ("flock", &["--help"][..]),
    ] {
        if !runs(tool, args) {
            return Some(format!("`{tool}` is not on PATH"));
        }
    }
    None
}

/// Gate for tests that need root, sshd and the OpenSSH client tools. Returns `false` (after
/// printing why) when the test should be skipped; panics instead when `CI=true`. Also
/// creates sshd's privilege separation directory.
pub fn require_root_and_sshd() -> bool {
    if let Some(why) = missing_for_sshd() {
        if in_ci() {
            panic!("CI=true and the end-to-end sshd tests cannot run: {why}");
        }
        eprintln!("skipping: {why}");
        return false;
    }
    ensure_privsep_dir();
    true
}

/// Gate for tests that need `ssh-keygen` only (certificate inspection, no sshd).
pub fn require_ssh_keygen() -> bool {
    if runs("ssh-keygen", &["-?"]) {
        return true;
    }
    let why = "`ssh-keygen` is not on PATH (apt-get install openssh-client)";
    if in_ci() {
        panic!("CI=true and {why}");
    }
    eprintln!("skipping: {why}");
    false
}

/// `mkdir -m 0755 /run/sshd` (facts.md: `sshd -t` fails without it).
pub fn ensure_privsep_dir() {
    if Path::new(PRIVSEP_DIR).is_dir() {
        return;
    }
    match std::fs::DirBuilder::new().mode(0o755).create(PRIVSEP_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("cannot create {PRIVSEP_DIR}: {e}"),
    }
}

/// Whether `dir` and every directory above it is owned by root (or by us) and writable by
/// nobody else: sshd's `StrictModes` check of principals files walks up to `/` like this.
pub fn path_is_strict_modes_safe(dir: &Path) -> bool {
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    let mut cur = Some(dir);
    while let Some(p) = cur {
        match std::fs::metadata(p) {
            Ok(m) if (m.uid() == 0 || m.uid() == me) && m.mode() & 0o022 == 0 => {}
            _ => return false,
        }
        cur = p.parent();
    }
    true
}

/// A directory for trees that sshd reads with `StrictModes yes`: it and all its ancestors are
/// root-owned and not group- or world-writable, which the system temp directory (mode 1777)
/// is not. `<target>/e2e-tmp` when the checkout allows it, else `/run/pedm-e2e`.
pub fn strict_tmp_base() -> PathBuf {
    let candidates = [
        crate::bins::target_dir().join("e2e-tmp"),
        PathBuf::from("/run/pedm-e2e"),
    ];
    for dir in &candidates {
        let Some(parent) = dir.parent() else { continue };
        if !path_is_strict_modes_safe(parent) {
            continue;
        }
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
        {
            Ok(()) => {}
            Err(_) => continue,
        }
        // An older directory may have another mode: make it 0755.
        if std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).is_err() {
            continue;
        }
        if path_is_strict_modes_safe(dir) {
            return dir.clone();
        }
    }
    panic!(
        "none of {candidates:?} can hold files for sshd with StrictModes yes \
         (each directory up to / must be root-owned and not group/world-writable)"
    );
}

/// A new temporary directory under [`strict_tmp_base`], mode 0755 so that sshd can read
/// principals files in it as the logging-in user. Removed when dropped.
pub fn strict_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(strict_tmp_base())
        .expect("creating a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755 on the temporary directory");
    dir
}
