//! What a host refuses on refresh, served by a proxy in front of the real CA: foreign, old,
//! expired or tampered bundles, and KRLs signed by any key but the bundle's active one,
//! tampered, expired or older. Every refusal keeps the host's files and fails the run.

use base64::Engine as _;
use pedm_api::krl::{KrlPayload, SignedKrl, KRL_NAMESPACE};
use pedm_api::{SignedBundle, TrustBundle, BUNDLE_NAMESPACE};
use pedm_e2e::ca::{describe, TestCa};
use pedm_e2e::env;
use pedm_e2e::keys::now_unix;
use pedm_e2e::proxy::TamperProxy;
use pedm_e2e::sshd::TestSshd;
use ssh_key::{HashAlg, LineEnding, PrivateKey};
use std::collections::BTreeMap;
use std::path::Path;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn key(path: &Path) -> PrivateKey {
    PrivateKey::read_openssh_file(path).unwrap()
}

fn sign_bundle(signer: &PrivateKey, b: &TrustBundle) -> String {
    let payload = b.to_payload();
    let sig = signer
        .sign(BUNDLE_NAMESPACE, HashAlg::Sha512, &payload)
        .unwrap();
    serde_json::to_string(&SignedBundle::from_parts(
        &payload,
        sig.to_pem(LineEnding::LF).unwrap(),
    ))
    .unwrap()
}

fn sign_krl(signer: &PrivateKey, p: &KrlPayload) -> String {
    let payload = serde_json::to_vec(p).unwrap();
    let sig = signer
        .sign(KRL_NAMESPACE, HashAlg::Sha512, &payload)
        .unwrap();
    serde_json::to_string(&SignedKrl::from_parts(
        &payload,
        sig.to_pem(LineEnding::LF).unwrap(),
    ))
    .unwrap()
}

fn get(url: &str) -> String {
    reqwest::blocking::get(url).unwrap().text().unwrap()
}

fn bundle_of(text: &str) -> TrustBundle {
    let s: SignedBundle = serde_json::from_str(text).unwrap();
    serde_json::from_slice(&B64.decode(&s.payload).unwrap()).unwrap()
}

fn krl_payload_of(text: &str) -> KrlPayload {
    let s: SignedKrl = serde_json::from_str(text).unwrap();
    serde_json::from_slice(&B64.decode(&s.payload).unwrap()).unwrap()
}

fn snapshot(sshd: &TestSshd) -> BTreeMap<String, Vec<u8>> {
    let dir = sshd.pedm_dir();
    ["trusted-user-ca-keys.pub", "revoked-keys.krl", "state.json"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

/// Serves `body` at `path` through the proxy and checks that refresh refuses it, naming
/// `needle`, without touching a file.
fn refused(sshd: &TestSshd, proxy: &TamperProxy, path: &str, body: String, needle: &str) {
    let before = snapshot(sshd);
    proxy.set_override(path, Some(body));
    let out = sshd.refresh();
    proxy.set_override(path, None);
    assert!(
        !out.status.success(),
        "refresh accepted what it must refuse ({needle})"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "expected {needle:?}: {}",
        describe(&out)
    );
    assert_eq!(
        snapshot(sshd),
        before,
        "a refused refresh changed files ({needle})"
    );
}

#[test]
fn hosts_refuse_foreign_old_expired_and_tampered_bundles_and_krls() {
    if !env::require_root_and_sshd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), None).unwrap();
    let server = ca.serve("[krl]\nlifetime = \"4s\"\n").unwrap();
    let cfg = server.config_path().to_path_buf();
    let cmd = |args: &[&str]| {
        let out = ca
            .command()
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let proxy = TamperProxy::bind().unwrap();
    proxy.set_upstream(server.url());
    let sshd = TestSshd::start(&proxy.url(), &ca.trust_root, "").unwrap();
    let root = key(&ca.data_dir.join("keys/trust-root.key"));
    let k1 = key(&ca.data_dir.join("keys/ca-1.key"));
    let stranger =
        PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
    let url = server.url().to_string();

    let bundle_v1 = get(&format!("{url}/v1/ca/bundle"));
    let krl_by_k1 = get(&format!("{url}/v1/krl"));
    let out = sshd.refresh();
    assert!(out.status.success(), "{}", describe(&out));

    // Stage a second key: bundle v2, installed.
    cmd(&["keys", "stage"]);
    let out = sshd.refresh();
    assert!(out.status.success(), "{}", describe(&out));
    let bundle_v2_text = get(&format!("{url}/v1/ca/bundle"));
    let v2 = bundle_of(&bundle_v2_text);
    assert_eq!(v2.version, 2);

    // Bundles.
    refused(
        &sshd,
        &proxy,
        "/v1/ca/bundle",
        bundle_v1.clone(),
        "older than the installed version",
    );
    let mut other = v2.clone();
    other.expires_at += 60;
    refused(
        &sshd,
        &proxy,
        "/v1/ca/bundle",
        sign_bundle(&root, &other),
        "same version, different content",
    );
    let mut v3 = v2.clone();
    v3.version = 3;
    refused(
        &sshd,
        &proxy,
        "/v1/ca/bundle",
        sign_bundle(&k1, &v3),
        "not by the pinned trust root",
    );
    refused(
        &sshd,
        &proxy,
        "/v1/ca/bundle",
        sign_bundle(&stranger, &v3),
        "not by the pinned trust root",
    );
    let mut expired = v3.clone();
    expired.issued_at = now_unix() - 100;
    expired.expires_at = now_unix() - 10;
    refused(
        &sshd,
        &proxy,
        "/v1/ca/bundle",
        sign_bundle(&root, &expired),
        "expired",
    );
    let mut tampered: SignedBundle = serde_json::from_str(&sign_bundle(&root, &v3)).unwrap();
    let mut bytes = B64.decode(&tampered.payload).unwrap();
    let at = String::from_utf8_lossy(&bytes)
        .find("\"version\":3")
        .unwrap()
        + 10;
    bytes[at] = b'4';
    tampered.payload = B64.encode(&bytes);
    refused(
        &sshd,
        &proxy,
        "/v1/ca/bundle",
        serde_json::to_string(&tampered).unwrap(),
        "altered",
    );

    // KRLs: activate the staged key; the current KRL is signed by it.
    let staged = v2
        .keys
        .iter()
        .find(|k| k.state == pedm_api::KeyState::Next)
        .unwrap()
        .fingerprint
        .clone();
    cmd(&["keys", "activate", &staged, "--force"]);
    let out = sshd.refresh();
    assert!(out.status.success(), "{}", describe(&out));
    let current = get(&format!("{url}/v1/krl"));
    let payload = krl_payload_of(&current);
    assert_eq!(payload.ca_key, staged);
    let k2 = key(&ca.data_dir.join("keys/ca-2.key"));

    refused(
        &sshd,
        &proxy,
        "/v1/krl",
        krl_by_k1.clone(),
        "not the active CA key",
    );
    refused(
        &sshd,
        &proxy,
        "/v1/krl",
        sign_krl(
            &stranger,
            &KrlPayload {
                ca_key: stranger
                    .public_key()
                    .fingerprint(HashAlg::Sha256)
                    .to_string(),
                ..payload.clone()
            },
        ),
        "not the active CA key",
    );
    let mut tampered: SignedKrl = serde_json::from_str(&current).unwrap();
    let mut bytes = B64.decode(&tampered.payload).unwrap();
    let at = String::from_utf8_lossy(&bytes)
        .find("\"expires_at\":")
        .unwrap()
        + 13;
    bytes[at] = if bytes[at] == b'9' {
        b'8'
    } else {
        bytes[at] + 1
    };
    tampered.payload = B64.encode(&bytes);
    refused(
        &sshd,
        &proxy,
        "/v1/krl",
        serde_json::to_string(&tampered).unwrap(),
        "altered",
    );
    let older = KrlPayload {
        version: payload.version - 1,
        ..payload.clone()
    };
    refused(
        &sshd,
        &proxy,
        "/v1/krl",
        sign_krl(&k2, &older),
        "older than the installed version",
    );
    let expired = KrlPayload {
        issued_at: now_unix() - 100,
        expires_at: now_unix() - 10,
        version: payload.version + 1,
        ..payload.clone()
    };
    refused(&sshd, &proxy, "/v1/krl", sign_krl(&k2, &expired), "expired");

    // A staged key may not sign KRLs either.
    cmd(&["keys", "stage"]);
    let out = sshd.refresh();
    assert!(out.status.success(), "{}", describe(&out));
    let k3 = key(&ca.data_dir.join("keys/ca-3.key"));
    let by_staged = KrlPayload {
        ca_key: k3.public_key().fingerprint(HashAlg::Sha256).to_string(),
        version: payload.version + 5,
        issued_at: now_unix(),
        expires_at: now_unix() + 600,
        ..payload.clone()
    };
    refused(
        &sshd,
        &proxy,
        "/v1/krl",
        sign_krl(&k3, &by_staged),
        "not the active CA key",
    );
    // Revoked: the old key signs a fresh-looking KRL after its revocation.
    let k1_fp = k1.public_key().fingerprint(HashAlg::Sha256).to_string();
    cmd(&["revoke", "--ca-key", &k1_fp, "--reason", "drill"]);
    let out = sshd.refresh();
    assert!(out.status.success(), "{}", describe(&out));
    let by_revoked = KrlPayload {
        ca_key: k1_fp,
        ..by_staged
    };
    refused(
        &sshd,
        &proxy,
        "/v1/krl",
        sign_krl(&k1, &by_revoked),
        "not the active CA key",
    );

    // Positive control: with the proxy passing through, refresh succeeds.
    let out = sshd.refresh();
    assert!(out.status.success(), "{}", describe(&out));
}
