//! Shared by the refresh, enroll and unit tests: a stand-in CA that serves bundles and KRLs
//! and records what hosts post to it, a PKI of test keys (root and CA keys in every state),
//! signed bundles and KRLs, and a temporary sshd tree driven by the real binary.
#![allow(dead_code)]

use base64::Engine as _;
use pedm_api::krl::{KrlPayload, SignedKrl, KRL_NAMESPACE};
use pedm_api::{BundleKey, KeyState, SignedBundle, TrustBundle, BUNDLE_NAMESPACE};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub const BIN: &str = env!("CARGO_BIN_EXE_pedm-host-config");
pub const SSHD: &str = "/usr/sbin/sshd";

/// The sshd binary, or `None` when it is missing outside CI (CI must have it).
pub fn sshd() -> Option<&'static str> {
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

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------
// The stand-in CA.

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: String,
}

#[derive(Default)]
struct Inner {
    /// (method, path) -> (status, JSON body)
    routes: HashMap<(String, String), (u16, String)>,
    requests: Vec<Recorded>,
}

/// Serves whatever JSON each route is given (404 for unset routes) and records every
/// request with its body, until the process ends. Check-ins are answered `counted: true`
/// unless told otherwise.
pub struct FakeCa {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl FakeCa {
    pub fn start() -> FakeCa {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner::default()));
        let shared = Arc::clone(&inner);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = find(&req, b"\r\n\r\n") {
                        break Some(i + 4);
                    }
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&req[..head_end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                while req.len() < head_end + length {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = String::from_utf8_lossy(&req[head_end..]).into_owned();
                let mut first = head.lines().next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_string();
                let path = first.next().unwrap_or("").to_string();
                let (status, text) = {
                    let mut g = shared.lock().unwrap();
                    g.requests.push(Recorded {
                        method: method.clone(),
                        path: path.clone(),
                        body,
                    });
                    g.routes
                        .get(&(method, path))
                        .cloned()
                        .unwrap_or((404, "{}".into()))
                };
                let reason = if status == 200 { "OK" } else { "Error" };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        let ca = FakeCa { url, inner };
        ca.set(
            "POST",
            "/v1/hosts/checkin",
            200,
            &format!("{{\"counted\":true,\"ca_time\":{}}}", now()),
        );
        ca
    }

    pub fn set(&self, method: &str, path: &str, status: u16, body: &str) {
        self.inner
            .lock()
            .unwrap()
            .routes
            .insert((method.into(), path.into()), (status, body.into()));
    }

    pub fn unset(&self, method: &str, path: &str) {
        self.inner
            .lock()
            .unwrap()
            .routes
            .remove(&(method.to_string(), path.to_string()));
    }

    pub fn serve_bundle(&self, b: &SignedBundle) {
        self.set(
            "GET",
            "/v1/ca/bundle",
            200,
            &serde_json::to_string(b).unwrap(),
        );
    }

    pub fn serve_krl(&self, k: &SignedKrl) {
        self.set("GET", "/v1/krl", 200, &serde_json::to_string(k).unwrap());
    }

    /// Bodies of the requests to `method path` so far.
    pub fn bodies(&self, method: &str, path: &str) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .map(|r| r.body.clone())
            .collect()
    }

    pub fn checkins(&self) -> Vec<String> {
        self.bodies("POST", "/v1/hosts/checkin")
    }

    pub fn clear(&self) {
        self.inner.lock().unwrap().requests.clear();
    }
}

/// A URL on which (almost certainly) nothing listens.
pub fn closed_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

// ---------------------------------------------------------------------------------------
// Keys, bundles, KRLs.

pub fn new_key() -> PrivateKey {
    PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519).unwrap()
}

pub fn fp(k: &PrivateKey) -> String {
    k.public_key().fingerprint(HashAlg::Sha256).to_string()
}

pub fn bundle_key(k: &PrivateKey, state: KeyState) -> BundleKey {
    BundleKey {
        fingerprint: fp(k),
        public_key: k.public_key().to_openssh().unwrap(),
        state,
    }
}

pub fn sign_bundle(signer: &PrivateKey, bundle: &TrustBundle) -> SignedBundle {
    let payload = bundle.to_payload();
    let sig = signer
        .sign(BUNDLE_NAMESPACE, HashAlg::Sha512, &payload)
        .unwrap();
    SignedBundle::from_parts(&payload, sig.to_pem(LineEnding::LF).unwrap())
}

/// OpenSSH's empty KRL (PROTOCOL.krl): magic, format 1, `krl_version`, date, flags,
/// reserved, comment.
pub fn empty_krl(krl_version: u64, comment: &str) -> Vec<u8> {
    let mut out = b"SSHKRL\n\0".to_vec();
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&krl_version.to_be_bytes());
    out.extend_from_slice(&1_700_000_000u64.to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(comment.len() as u32).to_be_bytes());
    out.extend_from_slice(comment.as_bytes());
    out
}

/// A KRL payload over `krl`, valid from a minute ago for an hour.
pub fn krl_payload(signer: &PrivateKey, version: u64, krl: &[u8]) -> KrlPayload {
    KrlPayload {
        version,
        issued_at: now() - 60,
        expires_at: now() + 3600,
        ca_key: fp(signer),
        krl: base64::engine::general_purpose::STANDARD.encode(krl),
    }
}

pub fn sign_krl_payload(signer: &PrivateKey, payload: &KrlPayload) -> SignedKrl {
    let bytes = serde_json::to_vec(payload).unwrap();
    let sig = signer.sign(KRL_NAMESPACE, HashAlg::Sha512, &bytes).unwrap();
    SignedKrl::from_parts(&bytes, sig.to_pem(LineEnding::LF).unwrap())
}

/// The KRL bytes inside a signed KRL.
pub fn krl_bytes(k: &SignedKrl) -> Vec<u8> {
    let payload: KrlPayload = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(&k.payload)
            .unwrap(),
    )
    .unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(payload.krl)
        .unwrap()
}

/// The trust root and one CA key in each published state.
pub struct Pki {
    pub root: PrivateKey,
    pub active: PrivateKey,
    pub next: PrivateKey,
    pub retired: PrivateKey,
    pub revoked: PrivateKey,
}

impl Pki {
    pub fn new() -> Self {
        Self {
            root: new_key(),
            active: new_key(),
            next: new_key(),
            retired: new_key(),
            revoked: new_key(),
        }
    }

    pub fn pin(&self) -> String {
        fp(&self.root)
    }

    /// Active, retired and revoked keys; valid for an hour.
    pub fn bundle(&self, version: u64) -> TrustBundle {
        TrustBundle {
            version,
            issued_at: now() - 60,
            expires_at: now() + 3600,
            keys: vec![
                bundle_key(&self.active, KeyState::Active),
                bundle_key(&self.retired, KeyState::Retired),
                bundle_key(&self.revoked, KeyState::Revoked),
            ],
        }
    }

    /// [`Pki::bundle`] plus the staged `next` key.
    pub fn bundle_with_next(&self, version: u64) -> TrustBundle {
        let mut b = self.bundle(version);
        b.keys.insert(1, bundle_key(&self.next, KeyState::Next));
        b
    }

    pub fn signed(&self, version: u64) -> SignedBundle {
        sign_bundle(&self.root, &self.bundle(version))
    }

    /// An empty KRL of `version`, signed by the active key.
    pub fn krl(&self, version: u64) -> SignedKrl {
        let body = empty_krl(version, &format!("test KRL {version}"));
        sign_krl_payload(&self.active, &krl_payload(&self.active, version, &body))
    }
}

// ---------------------------------------------------------------------------------------
// The host.

pub const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
postgres:x:110:118:PostgreSQL:/var/lib/postgresql:/bin/bash
alice:x:1000:1000:Alice:/home/alice:/bin/bash
bob:x:1001:1001:Bob:/home/bob:/bin/bash
";

pub const HOST_TOML_ACCOUNTS: &str =
    "[accounts]\npostgres = [\"db-admin\"]\nroot = [\"break-glass\"]\n";

/// What a file or directory is, down to its inode and modification time, so "nothing was
/// touched" means exactly that (a rewrite with equal content changes the inode; a temporary
/// file created and removed changes the directory's mtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub ino: u64,
    pub mtime_ns: i128,
    pub content: Option<Vec<u8>>,
}

pub type Snapshot = BTreeMap<PathBuf, Entry>;

/// A temporary sshd configuration tree (with an Ed25519 host key where sshd expects it), a
/// passwd file and a host.toml next to it.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub etc: PathBuf,
    pub config: PathBuf,
    pub passwd: PathBuf,
}

impl Host {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let etc = std::fs::canonicalize(dir.path()).unwrap().join("etc");
        std::fs::create_dir_all(etc.join("sshd_config.d")).unwrap();
        let host_key = etc.join("ssh_host_ed25519_key");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test host", "-f"])
            .arg(&host_key)
            .status()
            .unwrap();
        assert!(st.success());
        let main = format!(
            "Include {etc}/sshd_config.d/*.conf\nHostKey {etc}/ssh_host_ed25519_key\nPort 2222\n\
             ListenAddress 127.0.0.1\nPidFile {etc}/sshd.pid\nUsePAM no\nAuthorizedKeysFile none\n",
            etc = etc.display()
        );
        std::fs::write(etc.join("sshd_config"), main).unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, PASSWD).unwrap();
        let config = std::fs::canonicalize(dir.path()).unwrap().join("host.toml");
        let host = Self {
            dir,
            etc,
            config,
            passwd,
        };
        host.write_config(HOST_TOML_ACCOUNTS);
        host
    }

    pub fn write_config(&self, accounts: &str) {
        let text = format!("passwd_file = \"{}\"\n{accounts}", self.passwd.display());
        std::fs::write(&self.config, text).unwrap();
    }

    fn cmd(&self, sub: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg(sub)
            .arg("--etc-dir")
            .arg(&self.etc)
            .stdin(Stdio::null());
        cmd
    }

    pub fn install(&self, ca: &FakeCa, pin: &str, extra: &[&str]) -> Output {
        let mut cmd = self.cmd("install");
        cmd.args(["--ca", &ca.url, "--trust-root", pin, "--no-reload"])
            .arg("--config")
            .arg(&self.config)
            .args(extra);
        if let Some(sshd) = sshd() {
            cmd.args(["--sshd", sshd]);
        }
        cmd.output().unwrap()
    }

    /// `refresh --etc-dir ETC --no-reload EXTRA…` (host config and CA URL from state.json).
    pub fn refresh(&self, extra: &[&str]) -> Output {
        let mut cmd = self.cmd("refresh");
        cmd.arg("--no-reload").args(extra);
        cmd.output().unwrap()
    }

    /// `refresh` without `--no-reload`.
    pub fn refresh_reloading(&self, extra: &[&str]) -> Output {
        let mut cmd = self.cmd("refresh");
        cmd.args(extra);
        cmd.output().unwrap()
    }

    pub fn enroll(&self, token: &str, extra: &[&str]) -> Output {
        let mut cmd = self.cmd("enroll");
        cmd.args(["--token", token]).args(extra);
        cmd.output().unwrap()
    }

    pub fn pedm(&self, rel: &str) -> PathBuf {
        self.etc.join("pedm").join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.pedm(rel)).unwrap()
    }

    pub fn krl_path(&self) -> PathBuf {
        self.pedm("revoked-keys.krl")
    }

    pub fn krl(&self) -> Vec<u8> {
        std::fs::read(self.krl_path()).unwrap()
    }

    pub fn ino(&self, p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    pub fn dropin(&self) -> PathBuf {
        self.etc.join("sshd_config.d/50-pedm.conf")
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_str(&self.read("state.json")).unwrap()
    }

    pub fn host_pub(&self) -> PathBuf {
        self.etc.join("ssh_host_ed25519_key.pub")
    }

    /// Every file and directory under the whole temporary directory (tree, host.toml,
    /// passwd), with inode and mtime.
    pub fn snapshot(&self) -> Snapshot {
        fn walk(dir: &Path, out: &mut Snapshot) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                let entry = Entry {
                    mode: meta.permissions().mode(),
                    ino: meta.ino(),
                    mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
                    content: (!meta.is_dir()).then(|| std::fs::read(&p).unwrap()),
                };
                let is_dir = meta.is_dir();
                out.insert(p.clone(), entry);
                if is_dir {
                    walk(&p, out);
                }
            }
        }
        let mut out = Snapshot::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

/// The first difference between two snapshots, for assertion messages.
pub fn diff(a: &Snapshot, b: &Snapshot) -> String {
    for (p, e) in a {
        match b.get(p) {
            None => return format!("{} disappeared", p.display()),
            Some(f) if f != e => {
                let what = if f.content != e.content {
                    "content"
                } else if f.ino != e.ino {
                    "inode"
                } else if f.mtime_ns != e.mtime_ns {
                    "mtime"
                } else {
                    "mode"
                };
                return format!("{} changed ({what})", p.display());
            }
            _ => {}
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            return format!("{} appeared", p.display());
        }
    }
    "no difference".into()
}

pub fn assert_unchanged(before: &Snapshot, host: &Host, what: &str) {
    let after = host.snapshot();
    assert!(after == *before, "{what}: {}", diff(before, &after));
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output) {
    eprintln!("=== ok\n{}{}", stdout(o), stderr(o));
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// Exit 1 with `needle` in stderr (something may have been written).
pub fn assert_failed(o: &Output, needle: &str) {
    eprintln!("=== {needle}\n{}{}", stdout(o), stderr(o));
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

/// Exit 1 with `needle` in stderr and nothing claimed written on stdout.
pub fn assert_refused(o: &Output, needle: &str) {
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
    assert!(!stdout(o).contains("wrote "), "{}", stdout(o));
}

/// A host installed from bundle v1 and refreshed once to KRL v5, with the CA serving both.
pub struct Setup {
    pub ca: FakeCa,
    pub host: Host,
    pub bundle: SignedBundle,
    pub krl: SignedKrl,
}

pub fn installed_and_refreshed(pki: &Pki) -> Setup {
    let ca = FakeCa::start();
    let bundle = pki.signed(1);
    let krl = pki.krl(5);
    ca.serve_bundle(&bundle);
    ca.serve_krl(&krl);
    let host = Host::new();
    assert_ok(&host.install(&ca, &pki.pin(), &[]));
    assert_ok(&host.refresh(&[]));
    assert_eq!(host.krl(), krl_bytes(&krl));
    Setup {
        ca,
        host,
        bundle,
        krl,
    }
}
