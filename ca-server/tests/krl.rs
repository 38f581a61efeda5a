//! KRLs written by `pedm_ca::krl`, read by the real OpenSSH: `ssh-keygen -Q -f KRL FILE…`
//! (the same `krl.c` parser sshd uses for `RevokedKeys`) must call exactly the certificates
//! and keys that must be revoked "REVOKED" and all others "ok". Where `ssh-keygen -k` can
//! express the same revocations, its KRL must give the same answers and the same listing
//! (`ssh-keygen -Q -l`).
//!
//! One CA is Ed25519 (ssh-key signs its certificates), the other ECDSA P-256 (made and used
//! by `ssh-keygen -s`), so CA blobs of two algorithms and lengths appear.

use pedm_ca::krl::{decode_summary, CaSection, Krl, SectionKind};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::public::KeyData;
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey};
use std::path::{Path, PathBuf};
use std::process::Command;

const NOW: u64 = 1_700_000_000; // 2023-11-14T22:13:20Z

enum Signer {
    RustKey(Box<PrivateKey>),
    KeygenFile(PathBuf),
}

struct Ca {
    name: &'static str,
    key: KeyData,
    pub_path: PathBuf,
    signer: Signer,
}

struct User {
    name: &'static str,
    key: KeyData,
    pub_path: PathBuf,
}

/// A file `ssh-keygen -Q` is asked about: a certificate or a plain public key.
struct Subject {
    label: String,
    path: PathBuf,
}

struct Lab {
    dir: tempfile::TempDir,
    ca1: Ca,
    ca2: Ca,
    users: Vec<User>,
}

fn keygen(args: &[&str]) -> std::process::Output {
    let out = Command::new("ssh-keygen")
        .args(args)
        .env("TZ", "UTC")
        .output()
        .expect("run ssh-keygen");
    out
}

fn keygen_ok(args: &[&str]) -> String {
    let out = keygen(args);
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca1_key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        let ca1_pub = dir.path().join("ca1.pub");
        ca1_key.public_key().write_openssh_file(&ca1_pub).unwrap();
        let ca1 = Ca {
            name: "ca1",
            key: ca1_key.public_key().key_data().clone(),
            pub_path: ca1_pub,
            signer: Signer::RustKey(Box::new(ca1_key)),
        };

        let ca2_file = dir.path().join("ca2");
        keygen_ok(&[
            "-q",
            "-t",
            "ecdsa",
            "-b",
            "256",
            "-N",
            "",
            "-C",
            "ca2",
            "-f",
            p(&ca2_file),
        ]);
        let ca2_pub = dir.path().join("ca2.pub");
        let ca2 = Ca {
            name: "ca2",
            key: PublicKey::read_openssh_file(&ca2_pub)
                .unwrap()
                .key_data()
                .clone(),
            pub_path: ca2_pub,
            signer: Signer::KeygenFile(ca2_file),
        };
        assert!(ca2.key.is_ecdsa());

        let users = ["u1", "u2", "u3"]
            .into_iter()
            .map(|name| {
                let k = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
                let pub_path = dir.path().join(format!("{name}.pub"));
                let mut public = k.public_key().clone();
                public.set_comment(name);
                public.write_openssh_file(&pub_path).unwrap();
                User {
                    name,
                    key: k.public_key().key_data().clone(),
                    pub_path,
                }
            })
            .collect();
        Lab {
            dir,
            ca1,
            ca2,
            users,
        }
    }

    fn user(&self, i: usize) -> &User {
        &self.users[i]
    }

    /// A user certificate for `users[user]` signed by `ca`.
    fn cert(&self, ca: &Ca, user: usize, serial: u64, key_id: &str) -> Subject {
        let u = &self.users[user];
        let label = format!("{}/{}/serial={serial}/id={key_id}", ca.name, u.name);
        let stem = format!(
            "{}-{}-{serial}-{}",
            ca.name,
            u.name,
            key_id.replace(['@', ' '], "_")
        );
        let path = self.dir.path().join(format!("{stem}-cert.pub"));
        match &ca.signer {
            Signer::RustKey(ca_key) => {
                let mut b =
                    Builder::new_with_random_nonce(&mut OsRng, u.key.clone(), NOW - 60, NOW + 3600)
                        .unwrap();
                b.serial(serial).unwrap();
                b.key_id(key_id).unwrap();
                b.cert_type(CertType::User).unwrap();
                b.valid_principal(u.name).unwrap();
                let cert = b.sign(ca_key.as_ref()).unwrap();
                std::fs::write(&path, cert.to_openssh().unwrap()).unwrap();
            }
            Signer::KeygenFile(ca_file) => {
                let user_copy = self.dir.path().join(format!("{stem}.pub"));
                std::fs::copy(&u.pub_path, &user_copy).unwrap();
                let serial = serial.to_string();
                keygen_ok(&[
                    "-q",
                    "-s",
                    p(ca_file),
                    "-I",
                    key_id,
                    "-n",
                    u.name,
                    "-z",
                    &serial,
                    p(&user_copy),
                ]);
            }
        }
        assert!(path.exists(), "{label}");
        Subject { label, path }
    }

    fn plain(&self, user: usize) -> Subject {
        let u = &self.users[user];
        Subject {
            label: format!("{} (plain key)", u.name),
            path: u.pub_path.clone(),
        }
    }

    fn write_krl(&self, name: &str, krl: &Krl) -> PathBuf {
        let bytes = krl.encode().unwrap();
        let summary = decode_summary(&bytes).unwrap();
        assert_eq!(summary.version, krl.version());
        assert_eq!(summary.comment, krl.comment());
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// `ssh-keygen -k` run on `spec` lines, one step per CA (`-u` adds to the KRL).
    fn reference_krl(
        &self,
        name: &str,
        version: u64,
        steps: &[(Option<&Ca>, &[String])],
    ) -> PathBuf {
        let path = self.dir.path().join(name);
        let version = version.to_string();
        for (i, (ca, lines)) in steps.iter().enumerate() {
            let spec = self.dir.path().join(format!("{name}.spec{i}"));
            std::fs::write(&spec, lines.join("\n") + "\n").unwrap();
            let mut args = vec!["-k", "-f", p(&path), "-z", &version];
            if i > 0 {
                args.push("-u");
            }
            if let Some(ca) = ca {
                args.extend(["-s", p(&ca.pub_path)]);
            }
            args.push(p(&spec));
            keygen_ok(&args);
        }
        path
    }
}

/// `ssh-keygen -Q -f KRL` on every subject: `true` for "REVOKED", `false` for "ok". Any
/// other outcome (the KRL fails to load: exit 255 and nothing on stdout) fails the test.
fn answers(krl: &Path, subjects: &[&Subject]) -> Vec<(String, bool)> {
    let mut args = vec!["-Q", "-f", p(krl)];
    args.extend(subjects.iter().map(|s| p(&s.path)));
    let out = keygen(&args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        subjects.len(),
        "ssh-keygen -Q on {}: {}\nstdout: {stdout}\nstderr: {}",
        krl.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Vec<(String, bool)> = subjects
        .iter()
        .zip(&lines)
        .map(|(s, line)| {
            // "PATH (COMMENT): REVOKED" or "PATH (COMMENT): ok"
            assert!(line.starts_with(p(&s.path)), "{line}");
            let revoked = match line.rsplit_once(": ") {
                Some((_, "REVOKED")) => true,
                Some((_, "ok")) => false,
                _ => panic!("unexpected ssh-keygen -Q line {line:?}"),
            };
            (s.label.clone(), revoked)
        })
        .collect();
    let any = result.iter().any(|(_, r)| *r);
    assert_eq!(out.status.code(), Some(if any { 1 } else { 0 }), "{stdout}");
    result
}

fn expected(cases: &[(&Subject, bool)]) -> Vec<(String, bool)> {
    cases.iter().map(|(s, r)| (s.label.clone(), *r)).collect()
}

/// Checks our KRL (and, if given, ssh-keygen's) against the expectation.
fn check(krl: &Path, reference: Option<&Path>, cases: &[(&Subject, bool)]) {
    let subjects: Vec<&Subject> = cases.iter().map(|(s, _)| *s).collect();
    assert_eq!(answers(krl, &subjects), expected(cases), "our KRL");
    if let Some(reference) = reference {
        assert_eq!(
            answers(reference, &subjects),
            expected(cases),
            "ssh-keygen -k's KRL"
        );
    }
}

/// The `ssh-keygen -Q -l` listing without its header, as a sorted list of blocks (one per
/// CA, in file order otherwise).
fn listing_body(krl: &Path) -> Vec<String> {
    let text = keygen_ok(&["-Q", "-l", "-f", p(krl)]);
    let body: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.starts_with("# KRL version")
                || l.starts_with("# Generated at")
                || l.starts_with("# Comment:"))
        })
        .collect();
    let mut blocks: Vec<String> = body
        .join("\n")
        .split("\n\n")
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect();
    blocks.sort();
    blocks
}

fn same_listing(ours: &Path, reference: &Path) {
    let ours_listing = listing_body(ours);
    assert!(!ours_listing.is_empty());
    assert_eq!(ours_listing, listing_body(reference));
}

fn no_ids() -> Vec<String> {
    Vec::new()
}

#[test]
fn empty_krl_revokes_nothing_and_lists_its_header() {
    let lab = Lab::new();
    let krl = Krl::new(42, NOW, "pedm-ssh test KRL").unwrap();
    let bytes = krl.encode().unwrap();
    let s = decode_summary(&bytes).unwrap();
    assert_eq!((s.version, s.generated_at, s.sections.len()), (42, NOW, 0));
    let path = lab.write_krl("empty.krl", &krl);
    let c1 = lab.cert(&lab.ca1, 0, 1, "alice");
    let c0 = lab.cert(&lab.ca1, 1, 0, "serial-zero");
    let c2 = lab.cert(&lab.ca2, 2, 7, "carol");
    let (k1, k2) = (lab.plain(0), lab.plain(1));
    check(
        &path,
        None,
        &[
            (&c1, false),
            (&c0, false),
            (&c2, false),
            (&k1, false),
            (&k2, false),
        ],
    );

    let listing = keygen_ok(&["-Q", "-l", "-f", p(&path)]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "# KRL version 42",
            "# Generated at 20231114T221320",
            "# Comment: pedm-ssh test KRL"
        ],
        "{listing}"
    );
    assert!(lines[3..].iter().all(|l| l.is_empty()), "{listing}");
}

#[test]
fn serials_revoked_singly_and_in_ranges() {
    let lab = Lab::new();
    let serials = [5, 10, 11, 12, 13, 14, 20, 21];
    let krl = Krl::new(2, NOW, "serials")
        .unwrap()
        .with_certificates(CaSection::new(Some(lab.ca1.key.clone()), serials, no_ids()).unwrap());
    let ours = lab.write_krl("serials.krl", &krl);
    let spec: Vec<String> = ["serial: 5", "serial: 10-14", "serial: 20", "serial: 21"]
        .map(String::from)
        .to_vec();
    let reference = lab.reference_krl("serials-ref.krl", 2, &[(Some(&lab.ca1), &spec)]);

    let mut cases = Vec::new();
    let ca1_certs: Vec<(Subject, bool)> = [0u64, 4, 5, 6, 9, 10, 12, 14, 15, 19, 20, 21, 22]
        .into_iter()
        .map(|s| (lab.cert(&lab.ca1, 0, s, "alice"), serials.contains(&s)))
        .collect();
    // The same serials from the other CA are not revoked.
    let ca2_certs: Vec<Subject> = [5, 12, 21].map(|s| lab.cert(&lab.ca2, 1, s, "bob")).into();
    let plain = lab.plain(0);
    for (c, r) in &ca1_certs {
        cases.push((c, *r));
    }
    for c in &ca2_certs {
        cases.push((c, false));
    }
    cases.push((&plain, false));
    check(&ours, Some(&reference), &cases);
    same_listing(&ours, &reference);
    let kinds = decode_summary(&std::fs::read(&reference).unwrap())
        .unwrap()
        .sections;
    assert_eq!(kinds, vec![SectionKind::Certificates]);
}

#[test]
fn key_ids_revoked_for_one_ca() {
    let lab = Lab::new();
    let krl = Krl::new(3, NOW, "ids").unwrap().with_certificates(
        CaSection::new(Some(lab.ca1.key.clone()), [], ["alice", "bob@example.com"]).unwrap(),
    );
    let ours = lab.write_krl("ids.krl", &krl);
    let spec = vec!["id: alice".to_string(), "id: bob@example.com".to_string()];
    let reference = lab.reference_krl("ids-ref.krl", 3, &[(Some(&lab.ca1), &spec)]);

    let a1 = lab.cert(&lab.ca1, 0, 1, "alice");
    let a0 = lab.cert(&lab.ca1, 0, 0, "alice"); // key IDs catch serial-0 certificates too
    let a2 = lab.cert(&lab.ca1, 1, 2, "alice");
    let b = lab.cert(&lab.ca1, 1, 3, "bob@example.com");
    let near = lab.cert(&lab.ca1, 0, 4, "alice2");
    let prefix = lab.cert(&lab.ca1, 0, 5, "bob");
    let other_ca = lab.cert(&lab.ca2, 0, 1, "alice");
    check(
        &ours,
        Some(&reference),
        &[
            (&a1, true),
            (&a0, true),
            (&a2, true),
            (&b, true),
            (&near, false),
            (&prefix, false),
            (&other_ca, false),
        ],
    );
    same_listing(&ours, &reference);
}

/// `ssh-keygen -k` 9.2 cannot write a wildcard-CA section ("revoking certificates by key ID
/// requires specification of a CA key"), so there is no reference KRL here.
#[test]
fn wildcard_ca_key_id_revokes_for_every_ca() {
    let lab = Lab::new();
    let krl = Krl::new(4, NOW, "wildcard")
        .unwrap()
        .with_certificates(CaSection::new(None, [], ["alice"]).unwrap())
        .with_certificates(CaSection::new(Some(lab.ca2.key.clone()), [9], no_ids()).unwrap());
    let ours = lab.write_krl("wild.krl", &krl);
    let a1 = lab.cert(&lab.ca1, 0, 1, "alice");
    let a2 = lab.cert(&lab.ca2, 1, 2, "alice");
    let b1 = lab.cert(&lab.ca1, 1, 9, "bob"); // serial 9 is revoked for ca2 only
    let b2 = lab.cert(&lab.ca2, 1, 9, "bob");
    let b3 = lab.cert(&lab.ca2, 2, 10, "bob");
    check(
        &ours,
        None,
        &[
            (&a1, true),
            (&a2, true),
            (&b1, false),
            (&b2, true),
            (&b3, false),
        ],
    );
    let listing = keygen_ok(&["-Q", "-l", "-f", p(&ours)]);
    assert!(listing.contains("# Wildcard CA\nid: alice\n"), "{listing}");
}

#[test]
fn explicit_key_revokes_the_key_and_its_certificates() {
    let lab = Lab::new();
    let krl = Krl::new(5, NOW, "explicit")
        .unwrap()
        .with_explicit_key(lab.user(0).key.clone());
    let ours = lab.write_krl("explicit.krl", &krl);
    let line = std::fs::read_to_string(&lab.user(0).pub_path).unwrap();
    let spec = vec![format!("key: {}", line.trim())];
    let reference = lab.reference_krl("explicit-ref.krl", 5, &[(None, &spec)]);

    let k0 = lab.plain(0);
    let k1 = lab.plain(1);
    let c01 = lab.cert(&lab.ca1, 0, 1, "u1");
    let c02 = lab.cert(&lab.ca2, 0, 2, "u1");
    let c11 = lab.cert(&lab.ca1, 1, 3, "u2");
    check(
        &ours,
        Some(&reference),
        &[
            (&k0, true),
            (&c01, true),
            (&c02, true),
            (&k1, false),
            (&c11, false),
        ],
    );
    same_listing(&ours, &reference);
    let kinds = decode_summary(&std::fs::read(&reference).unwrap())
        .unwrap()
        .sections;
    assert_eq!(kinds, vec![SectionKind::ExplicitKey]);
}

#[test]
fn sha256_fingerprint_revokes_the_key_and_its_certificates() {
    let lab = Lab::new();
    let fp = lab.user(1).key.fingerprint(HashAlg::Sha256);
    let krl = Krl::new(6, NOW, "sha256")
        .unwrap()
        .with_fingerprint(&fp)
        .unwrap();
    let ours = lab.write_krl("sha256.krl", &krl);
    let spec = vec![format!("hash: {fp}")];
    let reference = lab.reference_krl("sha256-ref.krl", 6, &[(None, &spec)]);

    let k0 = lab.plain(0);
    let k1 = lab.plain(1);
    let c1 = lab.cert(&lab.ca1, 1, 1, "u2");
    let c2 = lab.cert(&lab.ca2, 1, 2, "u2");
    let c0 = lab.cert(&lab.ca1, 0, 3, "u1");
    check(
        &ours,
        Some(&reference),
        &[
            (&k1, true),
            (&c1, true),
            (&c2, true),
            (&k0, false),
            (&c0, false),
        ],
    );
    same_listing(&ours, &reference);
    let kinds = decode_summary(&std::fs::read(&reference).unwrap())
        .unwrap()
        .sections;
    assert_eq!(kinds, vec![SectionKind::FingerprintSha256]);
}

#[test]
fn two_ca_sections_revoke_only_their_own_certificates() {
    let lab = Lab::new();
    let krl = Krl::new(7, NOW, "two CAs")
        .unwrap()
        .with_certificates(CaSection::new(Some(lab.ca2.key.clone()), [6, 7, 8], ["dave"]).unwrap())
        .with_certificates(CaSection::new(Some(lab.ca1.key.clone()), [5], ["carol"]).unwrap());
    let ours = lab.write_krl("two.krl", &krl);
    let spec1 = vec!["serial: 5".to_string(), "id: carol".to_string()];
    let spec2 = vec!["serial: 6-8".to_string(), "id: dave".to_string()];
    let reference = lab.reference_krl(
        "two-ref.krl",
        7,
        &[(Some(&lab.ca1), &spec1), (Some(&lab.ca2), &spec2)],
    );

    let mut owned = Vec::new();
    for (ca, revoked_serials, revoked_id, other_id) in [
        (&lab.ca1, &[5u64][..], "carol", "dave"),
        (&lab.ca2, &[6, 7, 8][..], "dave", "carol"),
    ] {
        for s in [4u64, 5, 6, 7, 8, 9] {
            owned.push((lab.cert(ca, 0, s, "x"), revoked_serials.contains(&s)));
        }
        owned.push((lab.cert(ca, 1, 30, revoked_id), true));
        owned.push((lab.cert(ca, 1, 31, other_id), false));
    }
    let cases: Vec<(&Subject, bool)> = owned.iter().map(|(s, r)| (s, *r)).collect();
    check(&ours, Some(&reference), &cases);
    same_listing(&ours, &reference);
}

#[test]
fn revoking_a_ca_key_revokes_everything_it_signed() {
    let lab = Lab::new();
    let krl = Krl::new(8, NOW, "ca revoked")
        .unwrap()
        .with_explicit_key(lab.ca1.key.clone());
    let ours = lab.write_krl("ca.krl", &krl);
    let line = std::fs::read_to_string(&lab.ca1.pub_path).unwrap();
    let spec = vec![format!("key: {}", line.trim())];
    let reference = lab.reference_krl("ca-ref.krl", 8, &[(None, &spec)]);
    let c1 = lab.cert(&lab.ca1, 0, 1, "a");
    let c0 = lab.cert(&lab.ca1, 1, 0, "b");
    let c2 = lab.cert(&lab.ca2, 0, 1, "a");
    let k = lab.plain(0);
    check(
        &ours,
        Some(&reference),
        &[(&c1, true), (&c0, true), (&c2, false), (&k, false)],
    );
}

#[test]
fn everything_at_once_agrees_with_ssh_keygen() {
    let lab = Lab::new();
    let fp = lab.user(2).key.fingerprint(HashAlg::Sha256);
    let krl = Krl::new(9, NOW, "all")
        .unwrap()
        .with_certificates(
            CaSection::new(Some(lab.ca1.key.clone()), [1, 2, 3, 4, 10, 12, 13], ["eve"]).unwrap(),
        )
        .with_certificates(CaSection::new(Some(lab.ca2.key.clone()), [100], ["mallory"]).unwrap())
        .with_explicit_key(lab.user(1).key.clone())
        .with_fingerprint(&fp)
        .unwrap();
    let ours = lab.write_krl("all.krl", &krl);
    let kinds = decode_summary(&std::fs::read(&ours).unwrap())
        .unwrap()
        .sections;
    use SectionKind::*;
    assert_eq!(
        kinds,
        vec![Certificates, Certificates, ExplicitKey, FingerprintSha256]
    );
    let u1 = std::fs::read_to_string(&lab.user(1).pub_path).unwrap();
    let spec1: Vec<String> = ["serial: 1-4", "serial: 10", "serial: 12-13", "id: eve"]
        .map(String::from)
        .into_iter()
        .chain([format!("key: {}", u1.trim()), format!("hash: {fp}")])
        .collect();
    let spec2 = vec!["serial: 100".to_string(), "id: mallory".to_string()];
    let reference = lab.reference_krl(
        "all-ref.krl",
        9,
        &[(Some(&lab.ca1), &spec1), (Some(&lab.ca2), &spec2)],
    );

    let mut owned = Vec::new();
    for s in [0u64, 1, 3, 4, 5, 9, 10, 11, 12, 13, 14, 100] {
        let revoked = [1, 2, 3, 4, 10, 12, 13].contains(&s);
        owned.push((lab.cert(&lab.ca1, 0, s, "x"), revoked));
        owned.push((lab.cert(&lab.ca2, 0, s, "x"), s == 100));
    }
    owned.push((lab.cert(&lab.ca1, 0, 50, "eve"), true));
    owned.push((lab.cert(&lab.ca2, 0, 50, "eve"), false));
    owned.push((lab.cert(&lab.ca2, 0, 51, "mallory"), true));
    owned.push((lab.cert(&lab.ca1, 1, 52, "x"), true)); // explicit key
    owned.push((lab.cert(&lab.ca2, 2, 53, "x"), true)); // fingerprint
    owned.push((lab.plain(0), false));
    owned.push((lab.plain(1), true));
    owned.push((lab.plain(2), true));
    let cases: Vec<(&Subject, bool)> = owned.iter().map(|(s, r)| (s, *r)).collect();
    check(&ours, Some(&reference), &cases);
    same_listing(&ours, &reference);
}

/// A KRL that ssh-keygen cannot load fails the check rather than reading as "ok", so the
/// tests above cannot pass on a KRL OpenSSH ignores.
#[test]
#[should_panic(expected = "ssh-keygen -Q on")]
fn an_unreadable_krl_fails_the_check() {
    let lab = Lab::new();
    let mut bytes = Krl::new(1, NOW, "").unwrap().encode().unwrap();
    // A serial list holding serial 0, which OpenSSH refuses (and `CaSection` refuses).
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // wildcard CA, reserved
    body.extend_from_slice(&[0x20, 0, 0, 0, 8]);
    body.extend_from_slice(&0u64.to_be_bytes());
    bytes.push(1);
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    let path = lab.dir.path().join("bad.krl");
    std::fs::write(&path, bytes).unwrap();
    let c = lab.cert(&lab.ca1, 0, 1, "a");
    answers(&path, &[&c]);
}
