//! The KRL that `refresh` installs is the one a running sshd enforces: after a refresh with a
//! KRL revoking serial 7, sshd refuses that certificate ("revoked") while an unrelated
//! certificate of the same CA still logs in, and a refused older KRL cannot lift the
//! revocation. Needs root, sshd and the OpenSSH tools (skipped otherwise, failed in CI).

mod common;

use common::*;
use pedm_e2e::env;
use pedm_e2e::keys::UserKey;
use pedm_e2e::sshd::{TestSshd, LOG_TIMEOUT};
use pedm_e2e::users;
use ssh_key::LineEnding;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ACCOUNT: &str = "pedm-bg";

fn keygen(args: &[&str], dir: &Path) {
    let out = Command::new("ssh-keygen")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate for `key` by the CA key file `ca`, serial `serial`, principal break-glass,
/// saved as `name` (not `KEY-cert.pub`, so ssh never offers it by itself).
fn issue(dir: &Path, ca: &Path, key: &UserKey, serial: u64, name: &str) -> PathBuf {
    let ca = ca.display().to_string();
    let public = key.public.display().to_string();
    let id = format!("break-glass serial={serial}");
    keygen(
        &[
            "-q",
            "-s",
            &ca,
            "-I",
            &id,
            "-n",
            "break-glass",
            "-z",
            &serial.to_string(),
            "-V",
            "-1m:+10m",
            &public,
        ],
        dir,
    );
    let mut auto = key.private.as_os_str().to_owned();
    auto.push("-cert.pub");
    let to = dir.join(name);
    std::fs::rename(PathBuf::from(auto), &to).unwrap();
    to
}

fn refresh(sshd: &TestSshd) -> Output {
    Command::new(BIN)
        .args(["refresh", "--no-reload", "--etc-dir"])
        .arg(sshd.etc_dir())
        .output()
        .unwrap()
}

#[test]
fn a_serial_revoked_by_the_refreshed_krl_is_refused_by_sshd_and_others_still_log_in() {
    if !env::require_root_and_sshd() {
        return;
    }
    users::ensure_user(ACCOUNT);
    let pki = Pki::new();
    let ca = FakeCa::start();
    ca.serve_bundle(&pki.signed(1));
    let empty = pki.krl(1);
    ca.serve_krl(&empty);
    let host_toml =
        format!("passwd_file = \"/etc/passwd\"\n[accounts]\n{ACCOUNT} = [\"break-glass\"]\n");
    let sshd = TestSshd::start(&ca.url, &pki.pin(), &host_toml).unwrap();
    assert_ok(&refresh(&sshd));

    let dir = tempfile::tempdir().unwrap();
    let ca_key = dir.path().join("ca");
    std::fs::write(
        &ca_key,
        pki.active.to_openssh(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.path().join("ca.pub"),
        pki.active.public_key().to_openssh().unwrap(),
    )
    .unwrap();
    let key = UserKey::generate(&dir.path().join("id")).unwrap();
    let seven = issue(dir.path(), &ca_key, &key, 7, "seven.cert");
    let eight = issue(dir.path(), &ca_key, &key, 8, "eight.cert");
    let login = |cert: &Path| sshd.ssh(ACCOUNT, &key.private, Some(cert), "id -un");
    for cert in [&seven, &eight] {
        let out = login(cert);
        assert!(out.status.success(), "{}\n{}", stderr(&out), sshd.logs());
    }

    // KRL version 2 revokes serial 7 of the active key, built by ssh-keygen itself.
    std::fs::write(dir.path().join("spec"), "serial: 7\n").unwrap();
    keygen(
        &["-k", "-f", "krl2", "-s", "ca.pub", "-z", "2", "spec"],
        dir.path(),
    );
    let body = std::fs::read(dir.path().join("krl2")).unwrap();
    ca.serve_krl(&sign_krl_payload(
        &pki.active,
        &krl_payload(&pki.active, 2, &body),
    ));
    let out = refresh(&sshd);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("installed KRL version 2"),
        "{}",
        stdout(&out)
    );

    let mark = sshd.log_mark();
    let out = login(&seven);
    assert!(
        !out.status.success(),
        "serial 7 still logs in:\n{}",
        sshd.logs()
    );
    sshd.wait_for_log_since(mark, "revoked", LOG_TIMEOUT)
        .unwrap();
    let out = login(&eight);
    assert!(out.status.success(), "{}\n{}", stderr(&out), sshd.logs());

    // The older, empty KRL is refused, so the revocation stays in force.
    ca.serve_krl(&empty);
    let out = refresh(&sshd);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("older than the installed version 2"),
        "{}",
        stderr(&out)
    );
    assert!(!login(&seven).status.success());
    assert!(login(&eight).status.success());
}
