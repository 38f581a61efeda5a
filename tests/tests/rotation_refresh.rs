//! The full rotation through the host's own timer job: stage → refresh → activate → refresh →
//! the old key's certificates expire and the retired key becomes gone → refresh. At every step a
//! freshly issued certificate and a still-valid one from the step before log in: not one login
//! fails. Coverage comes from the host's signed check-ins (`pedm-host-config enroll`).

use pedm_e2e::ca::{describe, TestCa};
use pedm_e2e::keys::{inspect_cert, now_unix, UserKey};
use pedm_e2e::sshd::TestSshd;
use pedm_e2e::{env, users};
use std::path::{Path, PathBuf};
use std::process::Output;

const ACCOUNT: &str = "pedm-bg";

fn ok(what: &str, out: Output) -> String {
    assert!(out.status.success(), "{what}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn issue(ca: &TestCa, key: &UserKey, ttl: &str, path: PathBuf) -> PathBuf {
    let cert = ca
        .issue_break_glass(&key.public, &["break-glass"], ttl, "rotation drill")
        .unwrap();
    std::fs::write(&path, cert).unwrap();
    path
}

fn logs_in(sshd: &TestSshd, key: &UserKey, cert: &Path) -> bool {
    let only = cert.with_extension("key");
    std::fs::copy(&key.private, &only).unwrap();
    sshd.ssh(ACCOUNT, &only, Some(cert), "true")
        .status
        .success()
}

fn trusted(sshd: &TestSshd) -> String {
    std::fs::read_to_string(sshd.pedm_dir().join("trusted-user-ca-keys.pub")).unwrap()
}

#[test]
fn rotation_through_refresh_never_locks_anyone_out() {
    if !env::require_root_and_sshd() {
        return;
    }
    users::ensure_user(ACCOUNT);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), None).unwrap();
    let server = ca
        .serve("[hosts]\nrefresh_interval = \"2s\"\nmin_hosts = 1\ncoverage = 1.0\n")
        .unwrap();
    let cfg = server.config_path().to_path_buf();
    let cmd = |args: &[&str]| {
        ca.command()
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let sshd = TestSshd::start(
        server.url(),
        &ca.trust_root,
        &format!("[accounts]\n{ACCOUNT} = [\"break-glass\"]\n"),
    )
    .unwrap();
    let token = ok("token", cmd(&["hosts", "token"])).trim().to_string();
    ok("enroll", sshd.enroll(&token, "host1"));
    let key = UserKey::generate(&dir.path().join("user")).unwrap();
    let old_key = ca.ca_key.clone();

    // Step 0: the old key only.
    let c0 = issue(&ca, &key, "30s", dir.path().join("c0.cert"));
    assert!(logs_in(&sshd, &key, &c0));

    // Step 1: stage, refresh: the host trusts both; activation waits for the interval.
    let staged = ok("stage", cmd(&["keys", "stage"]));
    let new_key = staged
        .lines()
        .find_map(|l| l.strip_prefix("staged: "))
        .unwrap()
        .trim()
        .to_string();
    ok("refresh 1", sshd.refresh());
    assert!(trusted(&sshd).contains(&new_key) && trusted(&sshd).contains(&old_key));
    let c1 = issue(&ca, &key, "30s", dir.path().join("c1.cert"));
    assert!(logs_in(&sshd, &key, &c0) && logs_in(&sshd, &key, &c1));
    let status = ok("status", cmd(&["keys", "status"]));
    assert!(
        status.contains("1 of 1 checked-in hosts trust it"),
        "{status}"
    );

    // Step 2: activate after the refresh interval, refresh: both keys' certificates log in.
    std::thread::sleep(std::time::Duration::from_secs(3));
    ok("activate", cmd(&["keys", "activate", &new_key]));
    ok("refresh 2", sshd.refresh());
    let c2 = issue(&ca, &key, "5m", dir.path().join("c2.cert"));
    assert_eq!(inspect_cert(&c2).unwrap().signing_ca, new_key);
    assert!(
        logs_in(&sshd, &key, &c1),
        "a still-valid certificate of the retired key fails"
    );
    assert!(
        logs_in(&sshd, &key, &c2),
        "a fresh certificate of the new key fails"
    );

    // Step 3: once every certificate of the old key has expired it becomes gone and leaves
    // the bundle; the next refresh drops it, and the new key's certificates still log in.
    let last = [&c0, &c1]
        .iter()
        .map(|c| inspect_cert(c).unwrap().valid_before.unwrap())
        .max()
        .unwrap();
    while now_unix() <= last {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let deadline = now_unix() + 30;
    loop {
        let list = ok("list", cmd(&["keys", "list"]));
        if list.contains(&format!("{old_key} gone")) {
            break;
        }
        assert!(
            now_unix() < deadline,
            "the retired key never became gone:\n{list}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    ok("refresh 3", sshd.refresh());
    assert!(
        !trusted(&sshd).contains(&old_key),
        "a gone key is still trusted"
    );
    let c3 = issue(&ca, &key, "5m", dir.path().join("c3.cert"));
    assert!(logs_in(&sshd, &key, &c2) && logs_in(&sshd, &key, &c3));
    // A byte-identical bundle on the next timer run is a quiet no-op.
    let again = ok("refresh 4", sshd.refresh());
    assert!(again.contains("no changes"), "{again}");
}
