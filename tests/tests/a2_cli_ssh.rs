//! The whole slice with real parts: `pedm-ssh login --no-browser` against the real CA and the
//! real test IdP, then plain `ssh` into a real sshd whose trust came only from
//! `pedm-host-config install`.

use pedm_e2e::ca::describe;
use pedm_e2e::signin::{cli_login, pedm_ssh, SignInSetup};
use pedm_e2e::sshd::TestSshd;
use pedm_e2e::{env, users};
use std::path::Path;
use std::process::Output;

const LOG_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn cert_of(key: &Path) -> std::path::PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push("-cert.pub");
    p.into()
}

#[test]
fn alice_signs_in_with_the_cli_and_runs_a_command_and_bob_cannot_be_alice() {
    if !env::require_root_and_sshd() {
        return;
    }
    let Some(s) = SignInSetup::start().expect("IdP and CA") else {
        return;
    };
    users::ensure_user("alice");
    users::ensure_user("bob");
    let sshd = TestSshd::start(s.server.url(), &s.ca.trust_root, "").expect("sshd");

    let alice_home = s.dir.path().join("alice-home");
    let alice_key = alice_home.join(".ssh/pedm_ed25519");
    std::fs::create_dir_all(&alice_home).unwrap();
    let out = cli_login(s.server.url(), &alice_home, &alice_key, "alice").expect("login");
    assert!(out.status.success(), "alice's login: {}", describe(&out));
    assert!(stdout(&out).contains("alice"), "{}", describe(&out));
    assert!(cert_of(&alice_key).exists(), "no certificate was written");
    let session = alice_home.join(".config/pedm-ssh/session.json");
    assert!(session.exists(), "no session file");

    let mark = sshd.log_mark();
    let ran = sshd.ssh("alice", &alice_key, Some(&cert_of(&alice_key)), "id -un");
    assert!(
        ran.status.success(),
        "ssh as alice: {}\n{}",
        describe(&ran),
        sshd.logs()
    );
    assert_eq!(stdout(&ran).trim(), "alice");
    sshd.wait_for_log_since(mark, "Accepted certificate ID \"alice serial=", LOG_WAIT)
        .unwrap_or_else(|e| {
            panic!(
                "{e}: sshd did not log alice's certificate:\n{}",
                sshd.logs()
            )
        });

    // `pedm-ssh status` knows who alice is.
    let st = pedm_ssh(&alice_home)
        .args(["status", "--key"])
        .arg(&alice_key)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", describe(&st));
    assert!(stdout(&st).contains("alice"), "{}", describe(&st));

    // bob signs in too, and his certificate opens bob but not alice.
    let bob_home = s.dir.path().join("bob-home");
    let bob_key = bob_home.join(".ssh/pedm_ed25519");
    std::fs::create_dir_all(&bob_home).unwrap();
    let out = cli_login(s.server.url(), &bob_home, &bob_key, "bob").expect("login");
    assert!(out.status.success(), "bob's login: {}", describe(&out));
    let mark = sshd.log_mark();
    let refused = sshd.ssh("alice", &bob_key, Some(&cert_of(&bob_key)), "id -un");
    assert!(
        !refused.status.success(),
        "bob got in as alice: {}",
        describe(&refused)
    );
    sshd.wait_for_log_since(
        mark,
        "Certificate does not contain an authorized principal",
        LOG_WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}: sshd did not state the reason:\n{}", sshd.logs()));
    let ok = sshd.ssh("bob", &bob_key, Some(&cert_of(&bob_key)), "id -un");
    assert!(ok.status.success(), "bob as bob: {}", describe(&ok));
    assert_eq!(stdout(&ok).trim(), "bob");

    // logout revokes the session at the CA: renewing then needs a new sign-in (exit 3).
    let lo = pedm_ssh(&alice_home).args(["logout"]).output().unwrap();
    assert!(lo.status.success(), "{}", describe(&lo));
    assert!(!session.exists(), "logout left the session file");
    let renew = pedm_ssh(&alice_home)
        .args(["cert", "--ca", s.server.url(), "--key"])
        .arg(&alice_key)
        .output()
        .unwrap();
    assert_eq!(renew.status.code(), Some(3), "{}", describe(&renew));
    let audit = pedm_e2e::ca::audit_export(&s.ca.data_dir);
    let text = stdout(&audit);
    assert!(
        text.contains("\"action\":\"session.revoke\""),
        "logout is not in the audit log"
    );
}

#[test]
fn cli_exit_codes_for_no_role_and_hostile_identities() {
    let Some(s) = SignInSetup::start().expect("IdP and CA") else {
        return;
    };
    for (login, code) in [("dave", 4), ("hostile-root", 4), ("hostile-newline", 4)] {
        let home = s.dir.path().join(format!("{login}-home"));
        std::fs::create_dir_all(&home).unwrap();
        let key = home.join(".ssh/pedm_ed25519");
        let out = cli_login(s.server.url(), &home, &key, login).expect("login run");
        assert_eq!(out.status.code(), Some(code), "{login}: {}", describe(&out));
        assert!(
            !home.join(".config/pedm-ssh/session.json").exists(),
            "{login} got a session file"
        );
        assert!(!cert_of(&key).exists(), "{login} got a certificate");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.lines().any(|l| l == "root"),
            "a newline in a username forged a line: {err}"
        );
    }
    // Positive control in the same setup.
    let home = s.dir.path().join("erin-home");
    std::fs::create_dir_all(&home).unwrap();
    let key = home.join(".ssh/pedm_ed25519");
    let out = cli_login(s.server.url(), &home, &key, "erin").expect("login run");
    assert!(out.status.success(), "{}", describe(&out));
}
