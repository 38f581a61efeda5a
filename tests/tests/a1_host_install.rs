//! A1 end to end: `pedm-host-config install` against the real CA's trust bundle accepts only
//! a bundle that the pinned trust root signed, unaltered and unexpired, and a refused bundle
//! writes nothing. Each refusal has its positive control in the same sshd tree.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use pedm_e2e::ca::{describe, TestCa};
use pedm_e2e::env;
use pedm_e2e::fake_ca::FakeCa;
use pedm_e2e::keys::{now_unix, UserKey};
use pedm_e2e::sshd::{TestSshd, LOG_TIMEOUT};
use pedm_e2e::users;
use serde_json::Value;

const ACCOUNT: &str = "pedm-bg";

fn host_toml() -> String {
    format!("passwd_file = \"/etc/passwd\"\n[accounts]\n{ACCOUNT} = [\"break-glass\"]\n")
}

/// The bundle's payload, decoded.
fn payload(bundle: &Value) -> Value {
    let b64 = bundle["payload"].as_str().expect("payload");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

fn with_payload(bundle: &Value, payload: &Value) -> String {
    let mut b = bundle.clone();
    b["payload"] = base64::engine::general_purpose::STANDARD
        .encode(payload.to_string())
        .into();
    b.to_string()
}

/// A snapshot of the tree (mode and content of every file).
type Snapshot = BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>;

/// The install failed and left every file of the tree as it was in `before`.
fn assert_refused_unchanged(
    sshd: &TestSshd,
    before: &Snapshot,
    out: &std::process::Output,
    what: &str,
) {
    assert!(
        !out.status.success(),
        "{what}: install succeeded: {}",
        describe(out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("wrote "),
        "{what}: {}",
        describe(out)
    );
    eprintln!(
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    assert!(
        sshd.snapshot() == *before,
        "{what}: a refused install changed files: {}",
        describe(out)
    );
}

#[test]
fn a_bundle_from_another_trust_root_is_refused_and_writes_nothing() {
    if !env::require_root_and_sshd() {
        return;
    }
    users::ensure_user(ACCOUNT);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), None).unwrap();
    let other = TestCa::init(&dir.path().join("other"), None).unwrap();
    assert_ne!(ca.trust_root, other.trust_root);
    let server = ca.serve("").unwrap();
    let mut sshd = TestSshd::prepare(&host_toml()).unwrap();
    let before = sshd.snapshot();

    // Refused: the running CA's bundle under another CA's pin.
    let out = sshd.install(server.url(), &other.trust_root);
    assert_refused_unchanged(&sshd, &before, &out, "another trust root pinned");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&other.trust_root),
        "the refusal does not name the pinned root: {err}"
    );

    // Positive: the right pin installs, and sshd lets this CA's certificate in...
    let out = sshd.install(server.url(), &ca.trust_root);
    assert!(out.status.success(), "{}", describe(&out));
    assert_ne!(sshd.snapshot(), before);
    sshd.run().unwrap();
    let key = UserKey::generate(&dir.path().join("id")).unwrap();
    let good = dir.path().join("good.cert");
    std::fs::write(
        &good,
        ca.issue_break_glass(&key.public, &["break-glass"], "5m", "e2e")
            .unwrap(),
    )
    .unwrap();
    let mark = sshd.log_mark();
    let out = sshd.ssh(ACCOUNT, &key.private, Some(&good), "id -un");
    assert!(out.status.success(), "{}\n{}", describe(&out), sshd.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{ACCOUNT}\n"));
    sshd.wait_for_log_since(
        mark,
        "Accepted certificate ID \"break-glass serial=",
        LOG_TIMEOUT,
    )
    .unwrap();

    // ...but not the other CA's, which it never trusted.
    let bad = dir.path().join("bad.cert");
    std::fs::write(
        &bad,
        other
            .issue_break_glass(&key.public, &["break-glass"], "5m", "e2e")
            .unwrap(),
    )
    .unwrap();
    let mark = sshd.log_mark();
    let out = sshd.ssh(ACCOUNT, &key.private, Some(&bad), "id -un");
    assert_eq!(
        out.status.code(),
        Some(255),
        "{}\n{}",
        describe(&out),
        sshd.logs()
    );
    assert!(out.stdout.is_empty());
    let line = sshd
        .wait_for_log_since(
            mark,
            &format!("Failed publickey for {ACCOUNT}"),
            LOG_TIMEOUT,
        )
        .unwrap();
    assert!(
        line.contains(&format!("CA ED25519 {}", other.ca_key)),
        "the failure is not the other CA's certificate: {line}"
    );
    sshd.wait_for_log_since(
        mark,
        &format!("Connection closed by authenticating user {ACCOUNT}"),
        LOG_TIMEOUT,
    )
    .unwrap();
    assert!(
        !sshd.log_since(mark).iter().any(|l| l.contains("Accepted")),
        "{}",
        sshd.logs()
    );
}

#[test]
fn an_expired_bundle_is_refused_and_writes_nothing() {
    if !env::require_root_and_sshd() {
        return;
    }
    users::ensure_user(ACCOUNT);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let ca = TestCa::init_with_args(&data, None, &["--bundle-lifetime", "2s"]).unwrap();
    // The trust root goes offline: serve cannot re-sign and keeps serving what it has.
    let root_key = data.join("keys/trust-root.key");
    let offline = dir.path().join("offline-trust-root.key");
    std::fs::rename(&root_key, &offline).unwrap();
    let mut server = ca.serve("").unwrap();
    let (status, body) = server.get("/v1/ca/bundle").unwrap();
    assert_eq!(status, 200, "{body}");
    let bundle: Value = serde_json::from_str(&body).unwrap();
    let expires_at = payload(&bundle)["expires_at"].as_i64().expect("expires_at");
    assert!(
        expires_at <= now_unix() + 2,
        "init --bundle-lifetime 2s made a bundle expiring at {expires_at}"
    );
    while now_unix() <= expires_at {
        std::thread::sleep(Duration::from_millis(200));
    }
    let sshd = TestSshd::prepare(&host_toml()).unwrap();
    let before = sshd.snapshot();
    let out = sshd.install(server.url(), &ca.trust_root);
    assert_refused_unchanged(&sshd, &before, &out, "expired bundle");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("expired"),
        "the refusal does not say why: {err}"
    );

    // Positive: with the root back online, a restarted CA re-signs and the install succeeds.
    server.stop().unwrap();
    std::fs::rename(&offline, &root_key).unwrap();
    let server = ca.serve("").unwrap();
    let out = sshd.install(server.url(), &ca.trust_root);
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        server.logs()
    );
    let installed =
        std::fs::read_to_string(sshd.pedm_dir().join("trusted-user-ca-keys.pub")).unwrap();
    assert_eq!(server.get("/v1/ca/keys").unwrap().1, installed);
}

#[test]
fn a_tampered_bundle_is_refused_and_writes_nothing() {
    if !env::require_root_and_sshd() {
        return;
    }
    users::ensure_user(ACCOUNT);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), None).unwrap();
    let server = ca.serve("").unwrap();
    let (status, body) = server.get("/v1/ca/bundle").unwrap();
    assert_eq!(status, 200, "{body}");
    let real: Value = serde_json::from_str(&body).unwrap();
    let content = payload(&real);
    let attacker = UserKey::generate(&dir.path().join("attacker_ca")).unwrap();
    let attacker_line = std::fs::read_to_string(&attacker.public).unwrap();
    let attacker_fp = attacker.fingerprint().unwrap();

    let mut cases: Vec<(&str, String)> = Vec::new();
    {
        // Another CA key slipped in.
        let mut p = content.clone();
        let keys = p["keys"].as_array_mut().expect("keys array");
        let mut extra = keys[0].clone();
        extra["fingerprint"] = attacker_fp.clone().into();
        extra["public_key"] = attacker_line.trim().into();
        keys.push(extra);
        cases.push(("an extra CA key", with_payload(&real, &p)));
    }
    {
        // The CA key replaced by the attacker's.
        let mut p = content.clone();
        p["keys"][0]["fingerprint"] = attacker_fp.clone().into();
        p["keys"][0]["public_key"] = attacker_line.trim().into();
        cases.push(("the CA key replaced", with_payload(&real, &p)));
    }
    {
        // A later expiry.
        let mut p = content.clone();
        p["expires_at"] = (p["expires_at"].as_i64().unwrap() + 86_400 * 365).into();
        cases.push(("a later expiry", with_payload(&real, &p)));
    }
    {
        // One signature byte changed (inside the base64 body of the armor).
        let sig = real["signature"].as_str().unwrap().to_string();
        let mut lines: Vec<String> = sig.lines().map(str::to_string).collect();
        let mid = lines.len() / 2;
        let line = &mut lines[mid];
        let pos = line.len() / 2;
        let c = line.as_bytes()[pos];
        let flipped = if c == b'A' { 'B' } else { 'A' };
        line.replace_range(pos..pos + 1, &flipped.to_string());
        let mut b = real.clone();
        b["signature"] = (lines.join("\n") + "\n").into();
        cases.push(("a signature byte changed", b.to_string()));
    }

    let fake = FakeCa::start(body.clone());
    let sshd = TestSshd::prepare(&host_toml()).unwrap();
    let before = sshd.snapshot();
    for (what, tampered) in &cases {
        fake.serve(tampered.clone());
        let out = sshd.install(&fake.url, &ca.trust_root);
        assert_refused_unchanged(&sshd, &before, &out, what);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("signature"),
            "{what}: the refusal does not blame the signature: {err}"
        );
    }

    // Positive control: the untampered bundle through the same fake CA installs, and only
    // the real CA key is trusted.
    fake.serve(body);
    let out = sshd.install(&fake.url, &ca.trust_root);
    assert!(out.status.success(), "{}", describe(&out));
    let installed =
        std::fs::read_to_string(sshd.pedm_dir().join("trusted-user-ca-keys.pub")).unwrap();
    assert!(!installed.contains(attacker_line.split_whitespace().nth(1).unwrap()));
    assert_eq!(server.get("/v1/ca/keys").unwrap().1, installed);
}
