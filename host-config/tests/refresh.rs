//! Runs the real `pedm-host-config refresh` against a stand-in CA on a temporary sshd tree
//! (checked by the real sshd): what it installs, what it refuses, and that a refusal leaves
//! every file exactly as it was (content, mode, inode, mtime).

mod common;

use base64::Engine as _;
use common::*;
use pedm_api::krl::KrlPayload;
use pedm_api::{KeyState, SignedBundle, TrustBundle, BUNDLE_NAMESPACE};
use ssh_key::{HashAlg, LineEnding};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn higher_bundle_installs_new_ca_keys_and_the_signed_krl_replaces_the_empty_one() {
    let pki = Pki::new();
    let ca = FakeCa::start();
    ca.serve_bundle(&pki.signed(1));
    let host = Host::new();
    assert_ok(&host.install(&ca, &pki.pin(), &[]));
    assert_eq!(host.krl(), b"");
    let empty_ino = host.ino(&host.krl_path());
    let ca_keys_before = host.read("trusted-user-ca-keys.pub");
    assert!(!ca_keys_before.contains(&pki.next.public_key().to_openssh().unwrap()));

    // Version 2 stages the next key; the KRL comes with it.
    let v2 = pki.bundle_with_next(2);
    ca.serve_bundle(&sign_bundle(&pki.root, &v2));
    let krl = pki.krl(1);
    ca.serve_krl(&krl);
    // No --config: the host config comes from state.json.
    let out = host.refresh(&[]);
    assert_ok(&out);
    let ca_keys = host.read("trusted-user-ca-keys.pub");
    assert_eq!(ca_keys, v2.trusted_user_ca_keys());
    assert!(ca_keys.contains(&pki.next.public_key().to_openssh().unwrap()));
    assert!(!ca_keys.contains(&pki.revoked.public_key().to_openssh().unwrap()));
    assert_eq!(host.krl(), krl_bytes(&krl));
    assert_ne!(host.ino(&host.krl_path()), empty_ino);
    let text = stdout(&out);
    let etc = host.etc.display().to_string();
    for line in [
        format!("wrote {etc}/pedm/trusted-user-ca-keys.pub"),
        format!("wrote {etc}/pedm/revoked-keys.krl"),
        format!("wrote {etc}/pedm/state.json"),
        "installed trust bundle version 2 (3 trusted CA keys)".to_string(),
        "installed KRL version 1".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    assert!(!text.contains("50-pedm.conf"), "{text}");

    // OpenSSH reads the installed KRL (a corrupt one would make ssh-keygen -Q fail).
    let q = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(host.krl_path())
        .arg(host.host_pub())
        .output()
        .unwrap();
    assert!(
        q.status.success(),
        "ssh-keygen -Q: {}",
        String::from_utf8_lossy(&q.stderr)
    );

    let state = host.state();
    assert_eq!(state["format"], 2);
    assert_eq!(state["bundle_version"], 2);
    assert_eq!(state["bundle_expires_at"], v2.expires_at);
    assert_eq!(state["krl"]["version"], 1);
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&krl.payload)
        .unwrap();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&payload))
    };
    assert_eq!(state["krl"]["payload_sha256"], digest.as_str());
    assert_eq!(state["host_config"], host.config.display().to_string());
}

#[test]
fn identical_bundle_and_krl_are_a_quiet_no_op_that_touches_nothing() {
    let pki = Pki::new();
    let s = installed_and_refreshed(&pki);
    let before = s.host.snapshot();
    for _ in 0..2 {
        let out = s.host.refresh(&[]);
        assert_ok(&out);
        assert_eq!(stdout(&out), "no changes\n");
        assert!(!stderr(&out).contains("WARNING"), "{}", stderr(&out));
        assert_unchanged(&before, &s.host, "a no-op refresh");
    }
}

#[test]
fn refresh_recomputes_principals_from_host_toml_and_passwd() {
    let pki = Pki::new();
    let s = installed_and_refreshed(&pki);
    assert_eq!(s.host.read("principals/postgres"), "db-admin\n");
    s.host
        .write_config("[accounts]\npostgres = [\"db-admin\", \"db-read\"]\n");
    std::fs::write(
        &s.host.passwd,
        format!("{PASSWD}carol:x:1002:1002::/home/carol:/bin/sh\n"),
    )
    .unwrap();
    let out = s.host.refresh(&[]);
    assert_ok(&out);
    assert_eq!(s.host.read("principals/postgres"), "db-admin\ndb-read\n");
    assert_eq!(s.host.read("principals/carol"), "carol\n");
    // root is no longer listed and was ours: removed.
    assert!(!s.host.pedm("principals/root").exists());
    // Neither bundle nor KRL changed, so neither is announced.
    assert!(!stdout(&out).contains("installed"), "{}", stdout(&out));
}

/// Serves each case's bundle (with the good KRL) and checks the refusal.
fn refuse_bundles(pki: &Pki, s: &Setup, cases: Vec<(&str, SignedBundle, &str)>) {
    let before = s.host.snapshot();
    for (what, bundle, needle) in cases {
        s.ca.serve_bundle(&bundle);
        let out = s.host.refresh(&[]);
        assert_refused(&out, needle);
        assert!(
            stderr(&out).contains("nothing was changed"),
            "{what}: {}",
            stderr(&out)
        );
        assert_unchanged(&before, &s.host, what);
    }
    // Positive control: a good, higher bundle through the same stand-in installs.
    s.ca.serve_bundle(&pki.signed(3));
    assert_ok(&s.host.refresh(&[]));
    assert_eq!(s.host.state()["bundle_version"], 3);
}

#[test]
fn refused_bundles_keep_every_file() {
    let pki = Pki::new();
    let s = installed_and_refreshed(&pki);
    let stranger = new_key();

    let mut other_content = pki.bundle(1);
    other_content.keys.retain(|k| k.state != KeyState::Retired);

    let mut expired = pki.bundle(2);
    expired.issued_at = now() - 7200;
    expired.expires_at = now() - 10;

    // Same signature, the revoked key brought back as "next".
    let good = pki.signed(2);
    let mut b: TrustBundle = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(&good.payload)
            .unwrap(),
    )
    .unwrap();
    for k in &mut b.keys {
        if k.state == KeyState::Revoked {
            k.state = KeyState::Next;
        }
    }
    let tampered = SignedBundle {
        payload: base64::engine::general_purpose::STANDARD.encode(b.to_payload()),
        ..good
    };

    refuse_bundles(
        &pki,
        &s,
        vec![
            (
                "signed by the active CA key instead of the root",
                sign_bundle(&pki.active, &pki.bundle(2)),
                "not by the pinned trust root",
            ),
            (
                "signed by an unknown key",
                sign_bundle(&stranger, &pki.bundle(2)),
                &format!("signed by {}", fp(&stranger)),
            ),
            (
                "version 0",
                sign_bundle(&pki.root, &pki.bundle(0)),
                "version must be at least 1",
            ),
            (
                "the same version with other content",
                sign_bundle(&pki.root, &other_content),
                "same version, different content",
            ),
            (
                "an expired bundle",
                sign_bundle(&pki.root, &expired),
                "expired",
            ),
            ("a tampered bundle", tampered, "altered"),
        ],
    );
}

#[test]
fn a_lower_bundle_version_is_a_refused_rollback() {
    let pki = Pki::new();
    let s = installed_and_refreshed(&pki);
    s.ca.serve_bundle(&pki.signed(4));
    assert_ok(&s.host.refresh(&[]));
    let before = s.host.snapshot();
    s.ca.serve_bundle(&pki.signed(3));
    let out = s.host.refresh(&[]);
    assert_refused(&out, "older than the installed version 4");
    assert_unchanged(&before, &s.host, "rollback");
}

/// A KRL with version 6 signed by `k` (the payload names `k` as its signer).
fn krl6(k: &ssh_key::PrivateKey, body: &[u8]) -> pedm_api::krl::SignedKrl {
    sign_krl_payload(k, &krl_payload(k, 6, body))
}

#[test]
fn refused_krls_keep_every_file() {
    let pki = Pki::new();
    let s = installed_and_refreshed(&pki);
    let before = s.host.snapshot();
    let stranger = new_key();
    let body = empty_krl(6, "six");

    let mut expired = krl_payload(&pki.active, 6, &body);
    expired.issued_at = now() - 7200;
    expired.expires_at = now() - 5;
    // Same signature, other KRL bytes in the payload.
    let good6 = krl6(&pki.active, &body);
    let mut p: KrlPayload = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(&good6.payload)
            .unwrap(),
    )
    .unwrap();
    p.krl = base64::engine::general_purpose::STANDARD.encode(empty_krl(7, "tampered"));
    let tampered = pedm_api::krl::SignedKrl {
        payload: base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&p).unwrap()),
        ..good6.clone()
    };
    let wrong_namespace = {
        let bytes = serde_json::to_vec(&krl_payload(&pki.active, 6, &body)).unwrap();
        let sig = pki
            .active
            .sign(BUNDLE_NAMESPACE, HashAlg::Sha512, &bytes)
            .unwrap();
        pedm_api::krl::SignedKrl::from_parts(&bytes, sig.to_pem(LineEnding::LF).unwrap())
    };

    // The installed bundle (served again, byte-identical) has a retired and a revoked key;
    // with the staged key it is v2 below.
    let cases = vec![
        (
            "signed by the revoked key",
            krl6(&pki.revoked, &body),
            "which is not the active CA key",
        ),
        (
            "signed by the retired key",
            krl6(&pki.retired, &body),
            "which is not the active CA key",
        ),
        (
            "signed by an unknown key",
            krl6(&stranger, &body),
            "which is not the active CA key",
        ),
        ("a tampered KRL", tampered, "altered"),
        (
            "an expired KRL",
            sign_krl_payload(&pki.active, &expired),
            "expired",
        ),
        (
            "an older KRL",
            pki.krl(4),
            "older than the installed version 5",
        ),
        ("signed for another namespace", wrong_namespace, "namespace"),
    ];
    for (what, krl, needle) in cases {
        s.ca.serve_krl(&krl);
        let out = s.host.refresh(&[]);
        assert_refused(&out, needle);
        assert_eq!(stdout(&out), "", "{what}");
        assert!(
            stderr(&out).contains("refusing the KRL")
                && stderr(&out).contains("the installed KRL stays in force"),
            "{what}: {}",
            stderr(&out)
        );
        assert_unchanged(&before, &s.host, what);
    }

    // Positive control: the active key's KRL 6 installs; the same again is a no-op (an equal
    // version is not a rollback).
    s.ca.serve_krl(&good6);
    let out = s.host.refresh(&[]);
    assert_ok(&out);
    assert_eq!(s.host.krl(), body);
    assert_eq!(stdout(&s.host.refresh(&[])), "no changes\n");
}

#[test]
fn a_new_bundle_installs_even_when_its_krl_is_refused_and_the_krl_stays() {
    let pki = Pki::new();
    let s = installed_and_refreshed(&pki);
    let krl_ino = s.host.ino(&s.host.krl_path());
    let installed_krl = s.host.krl();
    let body = empty_krl(6, "six");

    // Bundle v2 stages `next`; a KRL signed by the staged key is refused, the bundle is not.
    let v2 = pki.bundle_with_next(2);
    s.ca.serve_bundle(&sign_bundle(&pki.root, &v2));
    s.ca.serve_krl(&krl6(&pki.next, &body));
    let out = s.host.refresh(&[]);
    assert_failed(&out, "which is not the active CA key");
    assert!(
        stderr(&out).contains("trust bundle version 2 was installed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        s.host.read("trusted-user-ca-keys.pub"),
        v2.trusted_user_ca_keys()
    );
    assert_eq!(
        (s.host.krl(), s.host.ino(&s.host.krl_path())),
        (installed_krl.clone(), krl_ino)
    );
    assert_eq!(s.host.state()["bundle_version"], 2);
    assert_eq!(s.host.state()["krl"]["version"], 5);

    // Rotation: v3 makes `next` active and retires the old active key. The CA still serves
    // the KRL the old key signed (it re-signs only at its next re-issue): refused, while v3,
    // which the root signed, is installed.
    let rotated = TrustBundle {
        version: 3,
        issued_at: now() - 60,
        expires_at: now() + 3600,
        keys: vec![
            bundle_key(&pki.next, KeyState::Active),
            bundle_key(&pki.active, KeyState::Retired),
        ],
    };
    s.ca.serve_bundle(&sign_bundle(&pki.root, &rotated));
    s.ca.serve_krl(&krl6(&pki.active, &body));
    let out = s.host.refresh(&[]);
    assert_failed(&out, "which is not the active CA key");
    assert_eq!(
        s.host.read("trusted-user-ca-keys.pub"),
        rotated.trusted_user_ca_keys()
    );
    assert_eq!(
        (s.host.krl(), s.host.ino(&s.host.krl_path())),
        (installed_krl, krl_ino)
    );
    assert_eq!(s.host.state()["krl"]["version"], 5);

    // Once the CA re-signs with the new active key, the KRL comes in.
    s.ca.serve_krl(&krl6(&pki.next, &body));
    let out = s.host.refresh(&[]);
    assert_ok(&out);
    assert_eq!(stdout(&out).lines().last(), Some("installed KRL version 6"));
    assert_eq!(s.host.krl(), body);
    assert_eq!(s.host.state()["bundle_version"], 3);
}

#[test]
fn unreachable_ca_or_missing_krl_keeps_files_and_fails() {
    let pki = Pki::new();
    let s = installed_and_refreshed(&pki);
    let before = s.host.snapshot();
    let out = s.host.refresh(&["--ca", &closed_url()]);
    assert_refused(&out, "cannot get the trust bundle");
    assert!(
        stderr(&out).contains("cannot reach the CA"),
        "{}",
        stderr(&out)
    );
    assert_unchanged(&before, &s.host, "unreachable CA");

    s.ca.unset("GET", "/v1/krl");
    let out = s.host.refresh(&[]);
    assert_refused(&out, "cannot get the KRL");
    assert!(stderr(&out).contains("HTTP 404"), "{}", stderr(&out));
    assert_unchanged(&before, &s.host, "no KRL served");

    // The CA answering garbage is refused too.
    s.ca.set("GET", "/v1/krl", 200, "{\"not\":\"a krl\"}");
    assert_refused(&s.host.refresh(&[]), "cannot get the KRL");
    assert_unchanged(&before, &s.host, "garbage KRL");

    // A new bundle still installs without a KRL; the KRL file is not touched.
    let krl = s.host.krl_path();
    let (bytes, ino) = (s.host.krl(), s.host.ino(&krl));
    s.ca.serve_bundle(&pki.signed(2));
    let out = s.host.refresh(&[]);
    assert_failed(&out, "cannot get the KRL");
    assert!(
        stderr(&out).contains("trust bundle version 2 was installed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.host.state()["bundle_version"], 2);
    assert_eq!((s.host.krl(), s.host.ino(&krl)), (bytes, ino));
}

#[test]
fn expired_installed_trust_warns_on_every_run_until_replaced() {
    let pki = Pki::new();
    let ca = FakeCa::start();
    let host = Host::new();
    let mut short = pki.bundle(1);
    short.expires_at = now() + 5;
    let short = sign_bundle(&pki.root, &short);
    let mut krl = krl_payload(&pki.active, 1, &empty_krl(1, "short"));
    krl.expires_at = now() + 5;
    let krl_expiry = krl.expires_at;
    ca.serve_bundle(&short);
    ca.serve_krl(&sign_krl_payload(&pki.active, &krl));
    assert_ok(&host.install(&ca, &pki.pin(), &[]));
    let out = host.refresh(&[]);
    assert_ok(&out);
    assert!(!stderr(&out).contains("WARNING"), "{}", stderr(&out));

    while now() <= krl_expiry {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let before = host.snapshot();
    // The CA still serves the stale bundle: refused, and the warning says what is wrong.
    let out = host.refresh(&[]);
    assert_refused(
        &out,
        "WARNING: the installed trust bundle (version 1) expired",
    );
    assert!(stderr(&out).contains("WARNING: the installed KRL (version 1) expired"));
    assert!(
        stderr(&out).contains("refusing the trust bundle"),
        "{}",
        stderr(&out)
    );
    // The CA unreachable: still warned, every time.
    for _ in 0..2 {
        let out = host.refresh(&["--ca", &closed_url()]);
        assert_refused(
            &out,
            "WARNING: the installed trust bundle (version 1) expired",
        );
        assert!(
            stderr(&out).contains("cannot reach the CA"),
            "{}",
            stderr(&out)
        );
    }
    assert_unchanged(&before, &host, "stale runs");

    // A fresh bundle and KRL end the warnings.
    ca.serve_bundle(&pki.signed(2));
    ca.serve_krl(&pki.krl(2));
    let out = host.refresh(&[]);
    assert_ok(&out);
    assert!(!stderr(&out).contains("WARNING"), "{}", stderr(&out));
}

#[test]
fn the_krl_file_is_replaced_atomically_never_empty_or_partial() {
    let pki = Pki::new();
    let s = installed_and_refreshed(&pki);
    // Big KRLs (a long comment) make a torn write easy to observe.
    let bodies: Vec<Vec<u8>> = (6..14)
        .map(|v| empty_krl(v, &format!("{v}").repeat(200_000)))
        .collect();
    let mut known: Vec<Vec<u8>> = bodies.clone();
    known.push(s.host.krl());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let path = s.host.krl_path();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match std::fs::read(&path) {
                    Ok(b) if known.contains(&b) => {}
                    Ok(b) => bad.push(format!("read {} unknown bytes", b.len())),
                    Err(e) => bad.push(format!("read failed: {e}")),
                }
                reads += 1;
            }
            (reads, bad)
        })
    };
    for (i, body) in bodies.iter().enumerate() {
        let v = 6 + i as u64;
        let before_ino = s.host.ino(&s.host.krl_path());
        s.ca.serve_krl(&sign_krl_payload(
            &pki.active,
            &krl_payload(&pki.active, v, body),
        ));
        assert_ok(&s.host.refresh(&[]));
        assert_ne!(
            s.host.ino(&s.host.krl_path()),
            before_ino,
            "version {v}: same inode"
        );
        assert_eq!(&s.host.krl(), body);
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, bad) = reader.join().unwrap();
    assert!(reads > 10, "the reader only got {reads} reads in");
    assert!(
        bad.is_empty(),
        "{} of {reads} reads were torn: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(s.host.etc.join("pedm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn sshd_is_reloaded_only_when_the_dropin_changed() {
    let pki = Pki::new();
    let s = installed_and_refreshed(&pki);
    // A new KRL and bundle, drop-in unchanged: no reload is attempted or asked for, even
    // without --no-reload.
    s.ca.serve_bundle(&pki.signed(2));
    s.ca.serve_krl(&pki.krl(6));
    let out = s.host.refresh_reloading(&[]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("installed KRL version 6"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out).to_lowercase();
    assert!(!err.contains("reload") && !err.contains("sighup"), "{err}");

    // Someone edited the drop-in: refresh puts it back and (with --no-reload) says that
    // sshd needs a reload.
    let good = std::fs::read_to_string(s.host.dropin()).unwrap();
    std::fs::write(s.host.dropin(), format!("{good}# local edit\n")).unwrap();
    let out = s.host.refresh(&[]);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(s.host.dropin()).unwrap(), good);
    assert!(
        stdout(&out).contains(&format!("wrote {}", s.host.dropin().display())),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("--no-reload: sshd applies the new drop-in at its next reload"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn format_1_state_is_read_and_upgraded() {
    let pki = Pki::new();
    let ca = FakeCa::start();
    let bundle = pki.signed(1);
    ca.serve_bundle(&bundle);
    let host = Host::new();
    assert_ok(&host.install(&ca, &pki.pin(), &[]));
    // What the first build wrote: no KRL, expiry, paths or enrollment.
    let st = host.state();
    let old = serde_json::json!({
        "format": 1,
        "ca_url": st["ca_url"],
        "trust_root": st["trust_root"],
        "bundle_version": st["bundle_version"],
        "payload_sha256": st["payload_sha256"],
        "managed_accounts": st["managed_accounts"],
    });
    std::fs::write(host.pedm("state.json"), format!("{old:#}\n")).unwrap();
    let krl = pki.krl(1);
    ca.serve_krl(&krl);

    let out = host.refresh(&[]);
    assert_refused(&out, "pass --config");
    let config = host.config.display().to_string();
    let out = host.refresh(&["--config", &config]);
    assert_ok(&out);
    let st = host.state();
    assert_eq!(st["format"], 2);
    assert_eq!(st["krl"]["version"], 1);
    assert_eq!(host.krl(), krl_bytes(&krl));
}

#[test]
fn refresh_before_install_says_to_install() {
    let host = Host::new();
    let before = host.snapshot();
    assert_refused(&host.refresh(&[]), "run `pedm-host-config install");
    assert_unchanged(&before, &host, "refresh before install");
}
