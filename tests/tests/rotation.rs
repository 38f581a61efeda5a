//! CA key rotation with a real sshd: stage → hosts learn the next key → activation (guarded
//! by publication time and host coverage) → certificates of both keys log in → emergency
//! revocation of the old key. The host picks up each new bundle with `pedm-host-config
//! refresh`; its check-ins are signed here by hand with its sshd host key (the check-in of a
//! key that is not the host's must not count).

use base64::Engine as _;
use pedm_api::{CheckinPayload, CHECKIN_NAMESPACE};
use pedm_e2e::ca::describe;
use pedm_e2e::keys::{inspect_cert, now_unix, UserKey};
use pedm_e2e::signin::{api_login, call, SignInSetup};
use pedm_e2e::sshd::TestSshd;
use pedm_e2e::{env, users};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HOSTS: &str = r#"
[hosts]
refresh_interval = "2s"
min_hosts = 1
coverage = 1.0
"#;

fn pedm_ca(s: &SignInSetup, args: &[&str]) -> Output {
    s.ca.command()
        .args(args)
        .arg("--config")
        .arg(s.server.config_path())
        .output()
        .unwrap()
}

fn cert(s: &SignInSetup, token: &str, key: &UserKey, path: PathBuf) -> PathBuf {
    let public = std::fs::read_to_string(&key.public).unwrap();
    let (st, c) = call(
        &s.server,
        "POST",
        "/v1/certs",
        Some(&json!({ "public_key": public })),
        Some(token),
    );
    assert_eq!(st, 200, "{c}");
    std::fs::write(
        &path,
        format!("{}\n", c["base"]["certificate"].as_str().unwrap()),
    )
    .unwrap();
    path
}

/// Signs a check-in with `key_file` (an sshd host private key) via `ssh-keygen -Y sign`.
fn checkin(
    s: &SignInSetup,
    dir: &Path,
    key_file: &Path,
    fingerprint: &str,
    bundle_version: u64,
) -> (u16, Value) {
    let payload = serde_json::to_vec(&CheckinPayload {
        host_name: "host1".into(),
        host_key_fingerprint: fingerprint.into(),
        bundle_version,
        krl_version: None,
        time: now_unix(),
    })
    .unwrap();
    let msg = dir.join("checkin.json");
    std::fs::write(&msg, &payload).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", CHECKIN_NAMESPACE, "-f"])
        .arg(key_file)
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let sig = std::fs::read_to_string(dir.join("checkin.json.sig")).unwrap();
    std::fs::remove_file(dir.join("checkin.json.sig")).unwrap();
    call(
        &s.server,
        "POST",
        "/v1/hosts/checkin",
        Some(&json!({
            "payload": base64::engine::general_purpose::STANDARD.encode(&payload),
            "signature": sig,
        })),
        None,
    )
}

fn fingerprint(pubkey: &Path) -> String {
    pedm_e2e::keys::fingerprint(pubkey).unwrap()
}

fn bundle_version(s: &SignInSetup) -> u64 {
    let (_, h) = call(&s.server, "GET", "/healthz", None, None);
    h["bundle_version"].as_u64().unwrap()
}

fn logs_in(sshd: &TestSshd, key: &UserKey, cert: &Path) -> bool {
    let only = cert.with_extension("key");
    std::fs::copy(&key.private, &only).unwrap();
    sshd.ssh("alice", &only, Some(cert), "true")
        .status
        .success()
}

#[test]
fn rotation_without_lockout_then_emergency_revocation_of_the_old_key() {
    if !env::require_root_and_sshd() {
        return;
    }
    let Some(s) = SignInSetup::start_with(HOSTS).expect("IdP and CA") else {
        return;
    };
    users::ensure_user("alice");
    let sshd = TestSshd::start(s.server.url(), &s.ca.trust_root, "").expect("sshd");
    let dir = s.dir.path();
    let alice = api_login(&s.server, "alice", false).unwrap();
    let key = UserKey::generate(&dir.join("alice_key")).unwrap();
    let old_key = s.ca.ca_key.clone();
    let c1 = cert(&s, &alice, &key, dir.join("c1.cert"));
    assert!(logs_in(&sshd, &key, &c1));

    // Stage: a new key, published as next; activation is refused at once.
    let out = pedm_ca(&s, &["keys", "stage"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let new_key = text
        .lines()
        .find_map(|l| l.strip_prefix("staged: "))
        .unwrap()
        .trim()
        .to_string();
    let staged_in = bundle_version(&s);
    let out = pedm_ca(&s, &["keys", "activate", &new_key]);
    assert!(
        !out.status.success(),
        "activated without coverage: {}",
        describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checked-in host"), "{err}");

    // The host installs the bundle naming the next key, enrolls and checks in.
    let out = sshd.refresh();
    assert!(out.status.success(), "{}", describe(&out));
    let trusted =
        std::fs::read_to_string(sshd.pedm_dir().join("trusted-user-ca-keys.pub")).unwrap();
    assert!(
        trusted.contains(&new_key) && trusted.contains(&old_key),
        "{trusted}"
    );
    let out = pedm_ca(&s, &["hosts", "token"]);
    assert!(out.status.success(), "{}", describe(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let host_pub = sshd.etc_dir().join("ssh_host_ed25519_key.pub");
    let host_fp = fingerprint(&host_pub);
    let (st, e) = call(
        &s.server,
        "POST",
        "/v1/hosts/enroll",
        Some(
            &json!({"token": token, "host_name": "host1", "host_key": std::fs::read_to_string(&host_pub).unwrap()}),
        ),
        None,
    );
    assert_eq!(st, 200, "{e}");
    let (st, _) = call(
        &s.server,
        "POST",
        "/v1/hosts/enroll",
        Some(
            &json!({"token": token, "host_name": "host2", "host_key": std::fs::read_to_string(&host_pub).unwrap()}),
        ),
        None,
    );
    assert_eq!(st, 403, "a join token is single use");
    // A check-in signed by another key does not count.
    let other = UserKey::generate(&dir.join("not_the_host_key")).unwrap();
    let (st, v) = checkin(&s, dir, &other.private, &host_fp, staged_in);
    assert_eq!(st, 403, "{v}");
    let out = pedm_ca(&s, &["keys", "status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 of 0 checked-in hosts"),
        "{}",
        describe(&out)
    );
    let (st, v) = checkin(
        &s,
        dir,
        &sshd.etc_dir().join("ssh_host_ed25519_key"),
        &host_fp,
        staged_in,
    );
    assert_eq!(st, 200, "{v}");

    // After the refresh interval, with full coverage, activation goes ahead.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = pedm_ca(&s, &["keys", "activate", &new_key]);
    assert!(out.status.success(), "{}", describe(&out));
    let c2 = cert(&s, &alice, &key, dir.join("c2.cert"));
    assert_eq!(
        inspect_cert(&c2).unwrap().signing_ca,
        new_key,
        "the running CA signs with the new key"
    );
    assert_eq!(inspect_cert(&c1).unwrap().signing_ca, old_key);
    let out = sshd.refresh();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        logs_in(&sshd, &key, &c1),
        "a certificate of the retired key is locked out"
    );
    assert!(
        logs_in(&sshd, &key, &c2),
        "a certificate of the new key is refused"
    );

    // Emergency: the old key is revoked; after the next refresh its certificates are refused.
    let out = pedm_ca(
        &s,
        &[
            "revoke",
            "--ca-key",
            &old_key,
            "--reason",
            "key file copied",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = sshd.refresh();
    assert!(out.status.success(), "{}", describe(&out));
    let trusted =
        std::fs::read_to_string(sshd.pedm_dir().join("trusted-user-ca-keys.pub")).unwrap();
    assert!(
        !trusted.contains(&old_key),
        "the revoked key is still trusted: {trusted}"
    );
    assert!(
        !logs_in(&sshd, &key, &c1),
        "a certificate of the revoked key still logs in"
    );
    assert!(logs_in(&sshd, &key, &c2));
    let (st, _) = call(&s.server, "GET", "/v1/krl", None, None);
    assert_eq!(st, 200);
    let out = pedm_ca(&s, &["keys", "list"]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        list.contains(&format!("{old_key} revoked")) && list.contains(&format!("{new_key} active")),
        "{list}"
    );
}
