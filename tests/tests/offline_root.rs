//! An offline trust root: key changes wait as a draft, which is signed where the root lives and
//! imported; only the root's signature over the current key set is accepted.

use pedm_api::SignedBundle;
use pedm_e2e::ca::{describe, TestCa};
use pedm_e2e::keys::now_unix;
use std::path::Path;
use std::process::{Command, Output};

fn run(ca: &TestCa, args: &[&str]) -> Output {
    ca.command().args(args).output().unwrap()
}

fn health_version(url: &str) -> u64 {
    let h: serde_json::Value = reqwest::blocking::get(format!("{url}/healthz"))
        .unwrap()
        .json()
        .unwrap();
    h["bundle_version"].as_u64().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn key_changes_wait_for_the_offline_root_and_only_its_signature_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), None).unwrap();
    // Take the root offline.
    let offline = dir.path().join("offline");
    std::fs::create_dir(&offline).unwrap();
    let root_key = offline.join("trust-root.key");
    std::fs::rename(ca.data_dir.join("keys/trust-root.key"), &root_key).unwrap();
    let server = ca.serve("").unwrap();
    let url = server.url().to_string();
    assert_eq!(health_version(&url), 1);
    let cfg = server.config_path().to_path_buf();

    let out = run(&ca, &["keys", "stage", "--config", p(&cfg)]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust root is offline"));
    let staged = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("staged: ").map(str::to_string))
        .unwrap();
    assert_eq!(
        health_version(&url),
        1,
        "nothing is published without the root"
    );

    let draft = dir.path().join("draft.json");
    let out = run(
        &ca,
        &["bundle", "draft", "--config", p(&cfg), "--out", p(&draft)],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let text = std::fs::read_to_string(&draft).unwrap();
    assert!(
        text.contains(&staged) && text.contains("\"version\": 2"),
        "{text}"
    );

    // Signed by some other key: refused at import, nothing published.
    let other = dir.path().join("other.key");
    let kg = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f", p(&other)])
        .output()
        .unwrap();
    assert!(kg.status.success());
    let wrong = dir.path().join("wrong.json");
    let out = run(
        &ca,
        &[
            "bundle",
            "sign",
            "--root-key",
            p(&other),
            "--in",
            p(&draft),
            "--out",
            p(&wrong),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = run(&ca, &["bundle", "import", "--config", p(&cfg), p(&wrong)]);
    assert!(
        !out.status.success(),
        "a bundle signed by another key was imported"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pinned trust root"),
        "{}",
        describe(&out)
    );

    // Signed by the root where it lives: imported and served.
    let signed = dir.path().join("signed.json");
    let out = run(
        &ca,
        &[
            "bundle",
            "sign",
            "--root-key",
            p(&root_key),
            "--in",
            p(&draft),
            "--out",
            p(&signed),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    // A tampered copy is refused first.
    let mut tampered: SignedBundle =
        serde_json::from_str(&std::fs::read_to_string(&signed).unwrap()).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bytes = b64.decode(&tampered.payload).unwrap();
    let at = String::from_utf8_lossy(&bytes)
        .find("\"expires_at\":")
        .unwrap()
        + 13;
    bytes[at] = if bytes[at] == b'9' {
        b'8'
    } else {
        bytes[at] + 1
    };
    tampered.payload = b64.encode(&bytes);
    let tampered_file = dir.path().join("tampered.json");
    std::fs::write(&tampered_file, serde_json::to_string(&tampered).unwrap()).unwrap();
    let out = run(
        &ca,
        &["bundle", "import", "--config", p(&cfg), p(&tampered_file)],
    );
    assert!(
        !out.status.success(),
        "a tampered bundle was imported: {}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("altered"),
        "{}",
        describe(&out)
    );
    let out = run(&ca, &["bundle", "import", "--config", p(&cfg), p(&signed)]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(health_version(&url), 2);
    let served: SignedBundle = reqwest::blocking::get(format!("{url}/v1/ca/bundle"))
        .unwrap()
        .json()
        .unwrap();
    let b = served.verify(&ca.trust_root, now_unix()).unwrap();
    assert!(b
        .keys
        .iter()
        .any(|k| k.fingerprint == staged && k.state == pedm_api::KeyState::Next));
    // The same bundle again is not the next version.
    let out = run(&ca, &["bundle", "import", "--config", p(&cfg), p(&signed)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("next version"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_replaced_root_is_refused_by_hosts_pinned_to_the_old_one() {
    if !pedm_e2e::env::require_root_and_sshd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), None).unwrap();
    let out = run(
        &ca,
        &[
            "replace-root",
            "--data-dir",
            p(&ca.data_dir),
            "--reason",
            "INC-9 root exposed",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let new_root = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("trust-root: ").map(str::to_string))
        .unwrap();
    assert_ne!(new_root, ca.trust_root);
    let server = ca.serve("").unwrap();
    let mut sshd = pedm_e2e::sshd::TestSshd::prepare("").unwrap();
    let old_pin = sshd.install(server.url(), &ca.trust_root);
    assert!(
        !old_pin.status.success(),
        "a host pinned to the old root accepted the new bundle"
    );
    assert!(
        String::from_utf8_lossy(&old_pin.stderr).contains("not by the pinned trust root"),
        "{}",
        describe(&old_pin)
    );
    let new_pin = sshd.install(server.url(), &new_root);
    assert!(new_pin.status.success(), "{}", describe(&new_pin));
    sshd.run().unwrap();
}

#[test]
fn only_a_key_no_bundle_named_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), None).unwrap();
    let data = ca.data_dir.clone();
    // The active key was published by init: never deleted.
    let out = run(&ca, &["keys", "delete", &ca.ca_key, "--data-dir", p(&data)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("never deleted"),
        "{}",
        describe(&out)
    );
    // Root offline: a staged key waits unpublished, and may be deleted.
    std::fs::rename(
        data.join("keys/trust-root.key"),
        dir.path().join("root.key"),
    )
    .unwrap();
    let out = run(&ca, &["keys", "stage", "--data-dir", p(&data)]);
    assert!(out.status.success(), "{}", describe(&out));
    let staged = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("staged: ").map(str::to_string))
        .unwrap();
    assert!(data.join("keys/ca-2.key").exists());
    let out = run(&ca, &["keys", "delete", &staged, "--data-dir", p(&data)]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        !data.join("keys/ca-2.key").exists(),
        "the key file is gone too"
    );
    let list = run(&ca, &["keys", "list", "--data-dir", p(&data)]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&staged));
    // Once published (root back, a new stage publishes), it can no longer be deleted.
    std::fs::rename(
        dir.path().join("root.key"),
        data.join("keys/trust-root.key"),
    )
    .unwrap();
    let out = run(&ca, &["keys", "stage", "--data-dir", p(&data)]);
    let staged = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("staged: ").map(str::to_string))
        .unwrap();
    let out = run(&ca, &["keys", "delete", &staged, "--data-dir", p(&data)]);
    assert!(!out.status.success(), "a published key was deleted");
    let audit = pedm_e2e::ca::audit_verify(&data);
    assert!(audit.status.success(), "{}", describe(&audit));
}
