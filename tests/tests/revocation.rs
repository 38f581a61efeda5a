//! Revocation end to end: `pedm-ca revoke` beside a running CA, the signed KRL it publishes at
//! `GET /v1/krl` (checked with `ssh-keygen -Q` and installed where the host drop-in points
//! `RevokedKeys`), and a real sshd that then refuses exactly what was revoked.

use pedm_api::krl::SignedKrl;
use pedm_api::SignedBundle;
use pedm_e2e::ca::{audit_export, describe};
use pedm_e2e::keys::UserKey;
use pedm_e2e::signin::{api_login, call, problem_slug, SignInSetup};
use pedm_e2e::sshd::TestSshd;
use pedm_e2e::{env, users};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LOG_WAIT: Duration = Duration::from_secs(15);

fn cert_for(s: &SignInSetup, token: &str, key: &UserKey, dir: &Path, name: &str) -> PathBuf {
    let public = std::fs::read_to_string(&key.public).unwrap();
    let (st, c) = call(
        &s.server,
        "POST",
        "/v1/certs",
        Some(&json!({ "public_key": public })),
        Some(token),
    );
    assert_eq!(st, 200, "{c}");
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("{}\n", c["base"]["certificate"].as_str().unwrap()),
    )
    .unwrap();
    p
}

fn serial_of(cert: &Path) -> u64 {
    pedm_e2e::keys::inspect_cert(cert).unwrap().serial
}

/// The KRL the CA serves, verified against the root-signed bundle, written to `path`.
fn fetch_krl(s: &SignInSetup, path: &Path) -> u64 {
    let (st, b) = call(&s.server, "GET", "/v1/ca/bundle", None, None);
    assert_eq!(st, 200);
    let bundle: SignedBundle = serde_json::from_value(b).unwrap();
    let bundle = bundle
        .verify(&s.ca.trust_root, pedm_e2e::keys::now_unix())
        .unwrap();
    let (st, k) = call(&s.server, "GET", "/v1/krl", None, None);
    assert_eq!(st, 200, "{k}");
    let signed: SignedKrl = serde_json::from_value(k).unwrap();
    let v = signed
        .verify(&bundle, pedm_e2e::keys::now_unix(), None)
        .expect("the KRL verifies against the bundle's active key");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &v.krl).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    v.payload.version
}

/// `ssh-keygen -Q -f KRL CERT`: true when revoked.
fn revoked(krl: &Path, cert: &Path) -> bool {
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match (out.status.success(), text.contains("REVOKED")) {
        (false, true) => true,
        (true, false) => false,
        _ => panic!("ssh-keygen -Q said {text:?} with {}", out.status),
    }
}

fn revoke(s: &SignInSetup, args: &[&str]) -> std::process::Output {
    s.ca.command()
        .args(["revoke", "--data-dir"])
        .arg(&s.ca.data_dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn revoked_serial_user_and_key_are_refused_by_sshd_while_others_log_in() {
    if !env::require_root_and_sshd() {
        return;
    }
    let Some(s) = SignInSetup::start().expect("IdP and CA") else {
        return;
    };
    users::ensure_user("alice");
    users::ensure_user("bob");
    let sshd = TestSshd::start(s.server.url(), &s.ca.trust_root, "").expect("sshd");
    let dir = s.dir.path();
    // What the CA serves (for ssh-keygen -Q); the host installs its own copy by refreshing.
    let krl = dir.join("served.krl");
    let host_krl = sshd.pedm_dir().join("revoked-keys.krl");
    let refresh = |want: &Path| {
        let out = sshd.refresh();
        assert!(out.status.success(), "refresh: {}", describe(&out));
        assert_eq!(
            std::fs::read(&host_krl).unwrap(),
            std::fs::read(want).unwrap(),
            "the host installed another KRL"
        );
    };
    let alice = api_login(&s.server, "alice", false).unwrap();
    let bob = api_login(&s.server, "bob", false).unwrap();
    let ka = UserKey::generate(&dir.join("alice_key")).unwrap();
    let kb = UserKey::generate(&dir.join("bob_key")).unwrap();
    let kb2 = UserKey::generate(&dir.join("bob_key2")).unwrap();
    let alice_cert = cert_for(&s, &alice, &ka, dir, "alice.cert");
    let bob_1 = cert_for(&s, &bob, &kb, dir, "bob1.cert");
    let bob_2 = cert_for(&s, &bob, &kb, dir, "bob2.cert");
    let bob_other_key = cert_for(&s, &bob, &kb2, dir, "bob3.cert");

    // Before any revocation the KRL revokes nothing and everyone logs in.
    let v1 = fetch_krl(&s, &krl);
    refresh(&krl);
    for (user, key, cert) in [
        ("alice", &ka, &alice_cert),
        ("bob", &kb, &bob_1),
        ("bob", &kb2, &bob_other_key),
    ] {
        assert!(!revoked(&krl, cert));
        let out = sshd.ssh(user, &key.private, Some(cert), "true");
        assert!(out.status.success(), "{user}: {}", describe(&out));
    }

    // Revoke: bob's first serial, alice (the user), bob's second key.
    let serial = serial_of(&bob_1).to_string();
    for args in [
        vec!["--serial", serial.as_str(), "--reason", "laptop stolen"],
        vec!["--user", "alice", "--reason", "left the company"],
        vec![
            "--public-key",
            kb2.public.to_str().unwrap(),
            "--reason",
            "key leaked",
        ],
    ] {
        let out = revoke(&s, &args);
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
    }
    // A serial this CA never issued is refused, not recorded.
    let out = revoke(&s, &["--serial", "999999", "--reason", "typo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no certificate with serial 999999"));

    let v2 = fetch_krl(&s, &krl);
    refresh(&krl);
    assert!(
        v2 > v1,
        "a new KRL version after revocations ({v1} -> {v2})"
    );
    for (cert, want) in [
        (&bob_1, true),
        (&alice_cert, true),
        (&bob_other_key, true),
        (&bob_2, false),
    ] {
        assert_eq!(revoked(&krl, cert), want, "{}", cert.display());
    }
    for (user, key, cert) in [
        ("bob", &kb, &bob_1),
        ("alice", &ka, &alice_cert),
        ("bob", &kb2, &bob_other_key),
    ] {
        let mark = sshd.log_mark();
        let out = sshd.ssh(user, &key.private, Some(cert), "true");
        assert!(!out.status.success(), "{} still logs in", cert.display());
        sshd.wait_for_log_since(mark, "revoked", LOG_WAIT).unwrap();
    }
    let out = sshd.ssh("bob", &kb.private, Some(&bob_2), "id -un");
    assert!(
        out.status.success(),
        "an unrelated certificate is refused: {}",
        describe(&out)
    );

    // alice's session ended and she cannot sign in again; bob's revoked key gets nothing new.
    let (st, p) = call(
        &s.server,
        "POST",
        "/v1/certs",
        Some(&json!({"public_key": std::fs::read_to_string(&ka.public).unwrap()})),
        Some(&alice),
    );
    assert_eq!(
        (st, problem_slug(&p)),
        (401, "sign-in-required".into()),
        "{p}"
    );
    let err = api_login(&s.server, "alice", false).unwrap_err();
    assert!(format!("{err:#}").contains("forbidden"), "{err:#}");
    let (st, p) = call(
        &s.server,
        "POST",
        "/v1/certs",
        Some(&json!({"public_key": std::fs::read_to_string(&kb2.public).unwrap()})),
        Some(&bob),
    );
    assert_eq!((st, problem_slug(&p)), (403, "forbidden".into()), "{p}");

    // unrevoke lets alice sign in again; her old certificate stays revoked.
    let out =
        s.ca.command()
            .args(["unrevoke", "--data-dir"])
            .arg(&s.ca.data_dir)
            .args(["--user", "alice", "--reason", "rehired"])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    api_login(&s.server, "alice", false).expect("alice signs in after unrevoke");
    fetch_krl(&s, &krl);
    assert!(
        revoked(&krl, &alice_cert),
        "her earlier certificate is still revoked"
    );

    let actions: Vec<String> = String::from_utf8_lossy(&audit_export(&s.ca.data_dir).stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| r["action"].as_str().map(str::to_string))
        .collect();
    for a in [
        "revoke.serial",
        "revoke.user",
        "revoke.public_key",
        "unrevoke.user",
        "krl.publish",
    ] {
        assert!(actions.iter().any(|x| x == a), "no {a} in the audit log");
    }
}

#[test]
fn the_admin_api_revokes_and_rotates_for_admins_only() {
    let Some(s) = SignInSetup::start().expect("IdP and CA") else {
        return;
    };
    let carol = api_login(&s.server, "carol", false).unwrap(); // security = [admin] groups
    let alice = api_login(&s.server, "alice", false).unwrap();
    let bob = api_login(&s.server, "bob", false).unwrap();

    // Not an admin: refused, nothing changes.
    let body = json!({"kind": "user", "value": "bob", "reason": "test"});
    let (st, p) = call(
        &s.server,
        "POST",
        "/v1/revocations",
        Some(&body),
        Some(&alice),
    );
    assert_eq!((st, problem_slug(&p)), (403, "forbidden".into()), "{p}");
    let (st, _) = call(&s.server, "GET", "/v1/session", None, Some(&bob));
    assert_eq!(st, 200, "bob's session survives a refused revocation");
    // Bad input is a precise 400.
    let (st, p) = call(
        &s.server,
        "POST",
        "/v1/revocations",
        Some(&json!({"kind": "serial", "value": "abc", "reason": "x"})),
        Some(&carol),
    );
    assert_eq!(
        (st, problem_slug(&p)),
        (400, "invalid-request".into()),
        "{p}"
    );
    // carol revokes bob: his session ends at once.
    let (st, v) = call(
        &s.server,
        "POST",
        "/v1/revocations",
        Some(&body),
        Some(&carol),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sessions_ended"], 1, "{v}");
    let (st, _) = call(&s.server, "GET", "/v1/session", None, Some(&bob));
    assert_eq!(st, 401);

    // Keys: list, stage, a guarded activation, a forced one.
    let (st, _) = call(&s.server, "GET", "/v1/admin/keys", None, Some(&alice));
    assert_eq!(st, 403);
    let (st, k) = call(&s.server, "GET", "/v1/admin/keys", None, Some(&carol));
    assert_eq!(st, 200, "{k}");
    assert_eq!(k["keys"].as_array().unwrap().len(), 1);
    let (st, staged) = call(
        &s.server,
        "POST",
        "/v1/admin/keys/stage",
        Some(&json!({})),
        Some(&carol),
    );
    assert_eq!(st, 200, "{staged}");
    let fp = staged["fingerprint"].as_str().unwrap().to_string();
    let path = "/v1/admin/keys/activate";
    let (st, p) = call(
        &s.server,
        "POST",
        path,
        Some(&json!({"fingerprint": fp})),
        Some(&carol),
    );
    assert_eq!(
        (st, problem_slug(&p)),
        (409, "conflict".into()),
        "no coverage yet: {p}"
    );
    let (st, v) = call(
        &s.server,
        "POST",
        path,
        Some(&json!({"fingerprint": fp, "force": true})),
        Some(&carol),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["active"], fp.as_str());
    let key = UserKey::generate(&s.dir.path().join("k")).unwrap();
    let c = cert_for(&s, &alice, &key, s.dir.path(), "after.cert");
    assert_eq!(pedm_e2e::keys::inspect_cert(&c).unwrap().signing_ca, fp);
    let forced = String::from_utf8_lossy(&audit_export(&s.ca.data_dir).stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|r| {
            r["action"] == "key.activate"
                && r["details"]
                    .as_str()
                    .is_some_and(|d| d.contains("\"forced\":true"))
        });
    assert!(forced, "the forced activation is audited as forced");
}

#[test]
fn a_revoked_serial_leaves_the_krl_once_its_certificate_has_expired() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pedm_e2e::ca::TestCa::init(&dir.path().join("ca"), None).unwrap();
    let server = ca.serve("").unwrap();
    let key = UserKey::generate(&dir.path().join("k")).unwrap();
    let short = dir.path().join("short.cert");
    let long = dir.path().join("long.cert");
    for (path, ttl) in [(&short, "3s"), (&long, "10m")] {
        let c = ca
            .issue_break_glass(&key.public, &["break-glass"], ttl, "drill")
            .unwrap();
        std::fs::write(path, c).unwrap();
    }
    for cert in [&short, &long] {
        let serial = serial_of(cert).to_string();
        let out = ca
            .command()
            .args(["revoke", "--data-dir"])
            .arg(&ca.data_dir)
            .args(["--serial", &serial, "--reason", "drill"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }
    let url = server.url().to_string();
    let served = |path: &Path| {
        let text = reqwest::blocking::get(format!("{url}/v1/krl"))
            .unwrap()
            .text()
            .unwrap();
        let signed: SignedKrl = serde_json::from_str(&text).unwrap();
        let payload: pedm_api::krl::KrlPayload = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &signed.payload)
                .unwrap(),
        )
        .unwrap();
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &payload.krl)
                .unwrap();
        std::fs::write(path, bytes).unwrap();
        payload.version
    };
    let krl = dir.path().join("k.krl");
    let before = served(&krl);
    assert!(revoked(&krl, &short) && revoked(&krl, &long));
    let until = pedm_e2e::keys::inspect_cert(&short)
        .unwrap()
        .valid_before
        .unwrap();
    while pedm_e2e::keys::now_unix() <= until {
        std::thread::sleep(Duration::from_millis(200));
    }
    // serve re-issues the KRL on its own (its refresher runs every few seconds).
    let deadline = pedm_e2e::keys::now_unix() + 30;
    let mut after = served(&krl);
    while after == before {
        assert!(
            pedm_e2e::keys::now_unix() < deadline,
            "no new KRL after the short certificate expired"
        );
        std::thread::sleep(Duration::from_millis(250));
        after = served(&krl);
    }
    assert!(
        !revoked(&krl, &short),
        "an expired certificate's serial is still listed"
    );
    assert!(
        revoked(&krl, &long),
        "the unexpired revoked certificate must stay listed"
    );
}
