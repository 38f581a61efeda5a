//! Runs the real `pedm-host-config install` against a trust bundle served by a tiny HTTP
//! server in the test, on a temporary sshd configuration tree checked by the real sshd.

use base64::Engine as _;
use pedm_api::{BundleKey, KeyState, SignedBundle, TrustBundle, BUNDLE_NAMESPACE};
use pedm_e2e::fake_ca::FakeCa;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_pedm-host-config");
const SSHD: &str = "/usr/sbin/sshd";

/// The sshd binary, or `None` when it is missing outside CI (CI must have it).
fn sshd() -> Option<&'static str> {
    if Path::new(SSHD).is_file() {
        return Some(SSHD);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{SSHD} is required in CI"
    );
    eprintln!("skipping the sshd checks: {SSHD} is not installed");
    None
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn new_key() -> PrivateKey {
    PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519).unwrap()
}

fn bundle_key(k: &PrivateKey, state: KeyState) -> BundleKey {
    let public = k.public_key();
    BundleKey {
        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
        public_key: public.to_openssh().unwrap(),
        state,
    }
}

fn pin(root: &PrivateKey) -> String {
    root.public_key().fingerprint(HashAlg::Sha256).to_string()
}

fn sign(signer: &PrivateKey, bundle: &TrustBundle) -> SignedBundle {
    let payload = bundle.to_payload();
    let sig = signer
        .sign(BUNDLE_NAMESPACE, HashAlg::Sha512, &payload)
        .unwrap();
    SignedBundle::from_parts(&payload, sig.to_pem(LineEnding::LF).unwrap())
}

/// A root, three CA keys (active, next, revoked) and bundles over them.
struct Pki {
    root: PrivateKey,
    active: PrivateKey,
    next: PrivateKey,
    revoked: PrivateKey,
}

impl Pki {
    fn new() -> Self {
        Self {
            root: new_key(),
            active: new_key(),
            next: new_key(),
            revoked: new_key(),
        }
    }

    fn bundle(&self, version: u64) -> TrustBundle {
        TrustBundle {
            version,
            issued_at: now() - 60,
            expires_at: now() + 3600,
            keys: vec![
                bundle_key(&self.active, KeyState::Active),
                bundle_key(&self.next, KeyState::Next),
                bundle_key(&self.revoked, KeyState::Revoked),
            ],
        }
    }

    fn signed(&self, version: u64) -> SignedBundle {
        sign(&self.root, &self.bundle(version))
    }
}

/// The stand-in CA, fed `SignedBundle`s.
struct Server(FakeCa);

impl Server {
    fn start(bundle: &SignedBundle) -> Self {
        Server(FakeCa::start(serde_json::to_string(bundle).unwrap()))
    }

    fn serve(&self, bundle: &SignedBundle) {
        self.0.serve(serde_json::to_string(bundle).unwrap());
    }
}

/// A temporary sshd configuration tree with a passwd file and a host.toml next to it.
struct Host {
    _dir: tempfile::TempDir,
    etc: PathBuf,
    config: PathBuf,
    passwd: PathBuf,
}

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
postgres:x:110:118:PostgreSQL:/var/lib/postgresql:/bin/bash
alice:x:1000:1000:Alice:/home/alice:/bin/bash
bob:x:1001:1001:Bob:/home/bob:/bin/bash
Bad.Name:x:1002:1002::/home/bad:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";

const HOST_TOML_ACCOUNTS: &str =
    "[accounts]\npostgres = [\"db-admin\"]\nroot = [\"break-glass\"]\n";

impl Host {
    fn new() -> Self {
        Self::with_main_config(true)
    }

    fn with_main_config(include: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let etc = std::fs::canonicalize(dir.path()).unwrap().join("etc");
        std::fs::create_dir_all(etc.join("sshd_config.d")).unwrap();
        let host_key = etc.join("host_ed25519");
        if sshd().is_some() {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let mut main = String::new();
        if include {
            main.push_str(&format!("Include {}/sshd_config.d/*.conf\n", etc.display()));
        }
        main.push_str(&format!(
            "HostKey {}\nPort 2222\nListenAddress 127.0.0.1\nPidFile {}/sshd.pid\nUsePAM no\nAuthorizedKeysFile none\n",
            host_key.display(),
            etc.display()
        ));
        std::fs::write(etc.join("sshd_config"), main).unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, PASSWD).unwrap();
        let config = dir.path().join("host.toml");
        let host = Self {
            _dir: dir,
            etc,
            config,
            passwd,
        };
        host.write_config(HOST_TOML_ACCOUNTS);
        host
    }

    fn write_config(&self, accounts: &str) {
        let text = format!("passwd_file = \"{}\"\n{accounts}", self.passwd.display());
        std::fs::write(&self.config, text).unwrap();
    }

    fn install(&self, server: &Server, pin: &str, extra: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "install",
            "--ca",
            &server.0.url,
            "--trust-root",
            pin,
            "--no-reload",
        ])
        .arg("--config")
        .arg(&self.config)
        .arg("--etc-dir")
        .arg(&self.etc)
        .args(extra);
        if let Some(sshd) = sshd() {
            cmd.args(["--sshd", sshd]);
        }
        cmd.output().unwrap()
    }

    fn pedm(&self, rel: &str) -> PathBuf {
        self.etc.join("pedm").join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.pedm(rel)).unwrap()
    }

    fn dropin(&self) -> PathBuf {
        self.etc.join("sshd_config.d/50-pedm.conf")
    }

    /// Every file and directory under the tree: mode and content.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                let mode = meta.permissions().mode();
                if meta.is_dir() {
                    out.insert(p.clone(), (mode, None));
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), (mode, Some(std::fs::read(&p).unwrap())));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.etc, &mut out);
        out
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    eprintln!("=== ok\n{}{}", stdout(o), stderr(o));
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

fn assert_refused(o: &Output, needle: &str) {
    eprintln!("=== {needle}\n{}", stderr(o));
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    assert!(
        stderr(o).contains(needle),
        "stderr lacks {needle:?}:\n{}",
        stderr(o)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn good_bundle_installs_every_file_and_a_second_run_changes_nothing() {
    let pki = Pki::new();
    let bundle = pki.bundle(3);
    let server = Server::start(&sign(&pki.root, &bundle));
    let host = Host::new();

    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_ok(&out);
    let etc = host.etc.display().to_string();

    // CA keys: the active and next keys, never the revoked one.
    let ca = host.read("trusted-user-ca-keys.pub");
    assert_eq!(ca, bundle.trusted_user_ca_keys());
    assert_eq!(ca.lines().count(), 2);
    for (k, trusted) in [
        (&pki.active, true),
        (&pki.next, true),
        (&pki.revoked, false),
    ] {
        let b64 = k.public_key().to_openssh().unwrap();
        assert_eq!(ca.contains(&b64), trusted, "{b64} in\n{ca}");
    }

    // Principals: explicit mapping, regular users by their own name, nothing else.
    let mut names: Vec<String> = std::fs::read_dir(host.pedm("principals"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["alice", "bob", "postgres", "root"]);
    assert_eq!(host.read("principals/postgres"), "db-admin\n");
    assert_eq!(host.read("principals/root"), "break-glass\n");
    assert_eq!(host.read("principals/alice"), "alice\n");
    assert_eq!(host.read("principals/bob"), "bob\n");
    assert_eq!(mode(&host.pedm("principals/alice")), 0o644);

    // KRL: empty; drop-in: the three settings with absolute paths.
    assert_eq!(std::fs::read(host.pedm("revoked-keys.krl")).unwrap(), b"");
    let dropin = std::fs::read_to_string(host.dropin()).unwrap();
    assert!(
        dropin.starts_with('#') && dropin.contains("pedm-host-config"),
        "{dropin}"
    );
    let settings: Vec<&str> = dropin.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        settings,
        [
            format!("TrustedUserCAKeys {etc}/pedm/trusted-user-ca-keys.pub"),
            format!("AuthorizedPrincipalsFile {etc}/pedm/principals/%u"),
            format!("RevokedKeys {etc}/pedm/revoked-keys.krl"),
        ]
    );
    assert_eq!(mode(&host.dropin()), 0o644);
    assert_eq!(mode(&host.etc.join("pedm")), 0o755);
    assert_eq!(mode(&host.pedm("principals")), 0o755);

    // State.
    let state: serde_json::Value = serde_json::from_str(&host.read("state.json")).unwrap();
    assert_eq!(state["bundle_version"], 3);
    assert_eq!(state["ca_url"], server.0.url.as_str());
    assert_eq!(state["trust_root"], pin(&pki.root).as_str());
    let payload = base64::engine::general_purpose::STANDARD
        .decode(sign(&pki.root, &bundle).payload)
        .unwrap();
    assert_eq!(payload, bundle.to_payload());
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&payload))
    };
    assert_eq!(state["payload_sha256"], digest.as_str());
    assert_eq!(
        state["managed_accounts"],
        serde_json::json!(["alice", "bob", "postgres", "root"])
    );

    // Output: one line per file, then the summary.
    let text = stdout(&out);
    for f in [
        "sshd_config.d/50-pedm.conf",
        "pedm/trusted-user-ca-keys.pub",
        "pedm/revoked-keys.krl",
        "pedm/state.json",
    ] {
        assert!(
            text.contains(&format!("wrote {etc}/{f}\n")),
            "{f} missing in\n{text}"
        );
    }
    assert!(
        text.ends_with("installed trust bundle version 3 (2 trusted CA keys)\n"),
        "{text}"
    );

    // Idempotent.
    let before = host.snapshot();
    let again = host.install(&server, &pin(&pki.root), &[]);
    assert_ok(&again);
    assert_eq!(stdout(&again), "no changes\n");
    assert_eq!(host.snapshot(), before);

    // An existing KRL is left alone (a later refresh fills it).
    std::fs::write(host.pedm("revoked-keys.krl"), b"SSHKRL\n").unwrap();
    server.serve(&pki.signed(4));
    let newer = host.install(&server, &pin(&pki.root), &[]);
    assert_ok(&newer);
    assert_eq!(
        std::fs::read(host.pedm("revoked-keys.krl")).unwrap(),
        b"SSHKRL\n"
    );
    assert!(stdout(&newer).contains("version 4"), "{}", stdout(&newer));
    assert!(
        !stdout(&newer).contains("50-pedm.conf"),
        "{}",
        stdout(&newer)
    );
}

#[test]
fn dry_run_prints_a_diff_and_writes_nothing() {
    let pki = Pki::new();
    let server = Server::start(&pki.signed(1));
    let host = Host::new();
    let before = host.snapshot();

    let out = host.install(&server, &pin(&pki.root), &["--dry-run"]);
    assert_ok(&out);
    assert_eq!(host.snapshot(), before);
    let diff = stdout(&out);
    let etc = host.etc.display().to_string();
    assert!(
        diff.contains(&format!("+++ {etc}/sshd_config.d/50-pedm.conf\n")),
        "{diff}"
    );
    assert!(
        diff.contains(&format!(
            "+TrustedUserCAKeys {etc}/pedm/trusted-user-ca-keys.pub\n"
        )),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("+++ {etc}/pedm/principals/postgres\n")),
        "{diff}"
    );
    assert!(diff.contains("+db-admin\n"), "{diff}");
    assert!(diff.contains("--- /dev/null\n"), "{diff}");

    // After a real install, a dry run against the same bundle shows nothing; a changed
    // mapping shows exactly that change.
    assert_ok(&host.install(&server, &pin(&pki.root), &[]));
    let out = host.install(&server, &pin(&pki.root), &["--dry-run"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "no changes\n");
    host.write_config(
        "[accounts]\npostgres = [\"db-admin\", \"db-read\"]\nroot = [\"break-glass\"]\n",
    );
    let installed = host.snapshot();
    let out = host.install(&server, &pin(&pki.root), &["--dry-run"]);
    assert_ok(&out);
    let diff = stdout(&out);
    assert!(
        diff.contains(&format!("--- {etc}/pedm/principals/postgres\n")),
        "{diff}"
    );
    assert!(diff.contains(" db-admin\n+db-read\n"), "{diff}");
    assert!(!diff.contains("trusted-user-ca-keys"), "{diff}");
    assert_eq!(host.snapshot(), installed);
}

fn refused_without_trace(signed: &SignedBundle, pki: &Pki, needle: &str) {
    let server = Server::start(signed);
    let host = Host::new();
    let before = host.snapshot();
    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_refused(&out, needle);
    assert_eq!(stdout(&out), "");
    assert_eq!(host.snapshot(), before);
    assert!(!host.etc.join("pedm").exists());
}

#[test]
fn bundle_signed_by_another_key_is_refused() {
    let pki = Pki::new();
    let other = new_key();
    refused_without_trace(
        &sign(&other, &pki.bundle(1)),
        &pki,
        "not by the pinned trust root",
    );
}

#[test]
fn expired_bundle_is_refused() {
    let pki = Pki::new();
    let mut b = pki.bundle(1);
    b.issued_at = now() - 7200;
    b.expires_at = now() - 3600;
    refused_without_trace(&sign(&pki.root, &b), &pki, "expired");
}

#[test]
fn tampered_payload_is_refused() {
    let pki = Pki::new();
    let signed = pki.signed(1);
    // Same signature, payload with the revoked key brought back as "next".
    let original = base64::engine::general_purpose::STANDARD
        .decode(&signed.payload)
        .unwrap();
    let mut b: TrustBundle = serde_json::from_slice(&original).unwrap();
    for k in &mut b.keys {
        if k.state == KeyState::Revoked {
            k.state = KeyState::Next;
        }
    }
    let tampered = SignedBundle {
        payload: base64::engine::general_purpose::STANDARD.encode(b.to_payload()),
        ..signed
    };
    refused_without_trace(&tampered, &pki, "altered");
}

#[test]
fn unreachable_ca_is_refused() {
    let pki = Pki::new();
    let host = Host::new();
    let before = host.snapshot();
    // Bind and drop a listener so the port is (almost certainly) closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Server(FakeCa::start(String::new()));
    server.0.url = format!("http://127.0.0.1:{port}");
    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_refused(&out, "cannot get the trust bundle");
    assert_eq!(host.snapshot(), before);
}

#[test]
fn earlier_dropin_shadowing_ours_is_refused_and_undone() {
    if sshd().is_none() {
        return;
    }
    let pki = Pki::new();
    let server = Server::start(&pki.signed(1));
    let host = Host::new();
    std::fs::write(
        host.etc.join("sshd_config.d/40-shadow.conf"),
        "TrustedUserCAKeys /nowhere\n",
    )
    .unwrap();
    let before = host.snapshot();

    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_refused(&out, "trustedusercakeys");
    assert!(stderr(&out).contains("40-shadow.conf"), "{}", stderr(&out));
    assert!(!host.dropin().exists());
    assert!(!host.etc.join("pedm").exists());
    assert_eq!(host.snapshot(), before);
}

#[test]
fn shadowing_after_an_install_restores_the_previous_dropin() {
    if sshd().is_none() {
        return;
    }
    let pki = Pki::new();
    let server = Server::start(&pki.signed(1));
    let host = Host::new();
    assert_ok(&host.install(&server, &pin(&pki.root), &[]));
    // Someone edits our drop-in and adds a shadowing one: the run must not leave either
    // half-applied.
    std::fs::write(host.dropin(), "# old\n").unwrap();
    std::fs::write(
        host.etc.join("sshd_config.d/10-shadow.conf"),
        "RevokedKeys /dev/null\n",
    )
    .unwrap();
    server.serve(&pki.signed(2));
    let before = host.snapshot();
    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_refused(&out, "revokedkeys");
    assert_eq!(host.snapshot(), before);
    assert_eq!(std::fs::read_to_string(host.dropin()).unwrap(), "# old\n");
}

#[test]
fn main_config_without_include_is_refused() {
    if sshd().is_none() {
        return;
    }
    let pki = Pki::new();
    let server = Server::start(&pki.signed(1));
    let host = Host::with_main_config(false);
    let before = host.snapshot();
    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_refused(&out, "Include");
    assert!(stderr(&out).contains("does not read"), "{}", stderr(&out));
    assert_eq!(host.snapshot(), before);
}

#[test]
fn broken_main_config_is_refused_with_sshds_words() {
    if sshd().is_none() {
        return;
    }
    let pki = Pki::new();
    let server = Server::start(&pki.signed(1));
    let host = Host::new();
    std::fs::write(
        host.etc.join("sshd_config.d/20-typo.conf"),
        "PermitRootLogn no\n",
    )
    .unwrap();
    let before = host.snapshot();
    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_refused(&out, "sshd -t");
    assert!(stderr(&out).contains("PermitRootLogn"), "{}", stderr(&out));
    assert_eq!(host.snapshot(), before);
}

#[test]
fn rollback_and_same_version_with_other_content_are_refused() {
    let pki = Pki::new();
    let server = Server::start(&pki.signed(5));
    let host = Host::new();
    assert_ok(&host.install(&server, &pin(&pki.root), &[]));
    let installed = host.snapshot();

    server.serve(&pki.signed(4));
    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_refused(&out, "older than the installed version 5");
    assert_eq!(host.snapshot(), installed);

    let mut other = pki.bundle(5);
    other.keys.retain(|k| k.state != KeyState::Next);
    server.serve(&sign(&pki.root, &other));
    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_refused(&out, "same version, different content");
    assert_eq!(host.snapshot(), installed);
}

#[test]
fn account_dropped_from_host_toml_loses_its_principals_file() {
    let pki = Pki::new();
    let server = Server::start(&pki.signed(1));
    let host = Host::new();
    assert_ok(&host.install(&server, &pin(&pki.root), &[]));
    assert!(host.pedm("principals/postgres").exists());
    // A file we never wrote stays.
    std::fs::write(host.pedm("principals/manual"), "x\n").unwrap();

    host.write_config("[accounts]\nroot = [\"break-glass\"]\n");
    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_ok(&out);
    let postgres = host.pedm("principals/postgres");
    assert!(!postgres.exists());
    assert!(
        stdout(&out).contains(&format!("removed {}\n", postgres.display())),
        "{}",
        stdout(&out)
    );
    assert!(host.pedm("principals/manual").exists());
    let state: serde_json::Value = serde_json::from_str(&host.read("state.json")).unwrap();
    assert_eq!(
        state["managed_accounts"],
        serde_json::json!(["alice", "bob", "root"])
    );
}

#[test]
fn bad_host_toml_is_refused_before_anything_is_fetched_or_written() {
    let pki = Pki::new();
    let server = Server::start(&pki.signed(1));
    let host = Host::new();
    let before = host.snapshot();
    host.write_config("[accounts]\npostgres = [\"a b\"]\n");
    assert_refused(
        &host.install(&server, &pin(&pki.root), &[]),
        "accounts.postgres",
    );
    host.write_config("colour = \"blue\"\n");
    assert_refused(&host.install(&server, &pin(&pki.root), &[]), "colour");
    assert_eq!(host.snapshot(), before);
}

#[test]
fn malformed_pin_is_a_usage_error() {
    let pki = Pki::new();
    let server = Server::start(&pki.signed(1));
    let host = Host::new();
    let out = host.install(&server, "SHA256:nope", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn shadowing_added_after_an_install_is_reported_on_the_next_run() {
    if sshd().is_none() {
        return;
    }
    let pki = Pki::new();
    let server = Server::start(&pki.signed(1));
    let host = Host::new();
    assert_ok(&host.install(&server, &pin(&pki.root), &[]));
    // Nothing of ours would change, but sshd no longer uses our principals files.
    std::fs::write(
        host.etc.join("sshd_config.d/05-other.conf"),
        "AuthorizedPrincipalsFile /etc/ssh/other/%u\n",
    )
    .unwrap();
    let before = host.snapshot();
    let out = host.install(&server, &pin(&pki.root), &[]);
    assert_refused(&out, "authorizedprincipalsfile is \"/etc/ssh/other/%u\"");
    assert_eq!(host.snapshot(), before);
}
