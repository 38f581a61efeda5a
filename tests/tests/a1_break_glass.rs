//! A1 end to end: break-glass certificates from the real `pedm-ca issue`, a real sshd whose CA
//! trust and principals come only from `pedm-host-config install` against the running CA.
//!
//! Every refusal is paired with a positive control in the same setup, and both are asserted on
//! sshd's own log line for the decision.

use std::path::{Path, PathBuf};
use std::process::Output;

use pedm_e2e::ca::{describe, CaServer, TestCa};
use pedm_e2e::env;
use pedm_e2e::keys::{inspect_cert, now_unix, CertInfo, UserKey};
use pedm_e2e::sshd::{TestSshd, LOG_TIMEOUT};
use pedm_e2e::users;

/// The account that break-glass certificates may log into.
const BG_ACCOUNT: &str = "pedm-bg";
/// An unlisted regular account (UID >= 1000): it accepts its own name only.
const OTHER_ACCOUNT: &str = "pedm-other";
const PASSPHRASE: &str = "correct horse battery staple (e2e)";

/// A CA (serving), a private sshd configured from it, and a user key.
struct Setup {
    // Dropped in this order: sshd, then the CA, then the files.
    sshd: TestSshd,
    server: CaServer,
    ca: TestCa,
    key: UserKey,
    dir: tempfile::TempDir,
    /// Every certificate issued in this setup, in order.
    issued: Vec<CertInfo>,
}

fn setup() -> Option<Setup> {
    if !env::require_root_and_sshd() {
        return None;
    }
    let bg = users::ensure_user(BG_ACCOUNT);
    let other = users::ensure_user(OTHER_ACCOUNT);
    assert!(
        other.uid >= 1000 && other.uid <= 60000,
        "{OTHER_ACCOUNT} must be a regular account (UID 1000..=60000) for the own-name mapping: {other:?}"
    );
    assert_ne!(bg.uid, 0);

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::init(&dir.path().join("ca"), Some(PASSPHRASE)).expect("pedm-ca init");
    let server = ca.serve("").expect("pedm-ca serve");
    let host_toml =
        format!("passwd_file = \"/etc/passwd\"\n[accounts]\n{BG_ACCOUNT} = [\"break-glass\"]\n");
    let sshd = match TestSshd::start(server.url(), &ca.trust_root, &host_toml) {
        Ok(s) => s,
        Err(e) => panic!("{e:#}\n{}", server.logs()),
    };
    let key = UserKey::generate(&dir.path().join("id_user")).expect("user key");
    Some(Setup {
        sshd,
        server,
        ca,
        key,
        dir,
        issued: Vec::new(),
    })
}

impl Setup {
    /// Issues a break-glass certificate for the user key, writes it to `DIR/NAME.cert`, and
    /// checks with `ssh-keygen -L` what it carries.
    fn issue(&mut self, name: &str, principals: &[&str], ttl: &str) -> (PathBuf, CertInfo) {
        self.issue_for(&self.key.clone(), name, principals, ttl)
    }

    fn issue_for(
        &mut self,
        key: &UserKey,
        name: &str,
        principals: &[&str],
        ttl: &str,
    ) -> (PathBuf, CertInfo) {
        let before = now_unix();
        let cert = self
            .ca
            .issue_break_glass(&key.public, principals, ttl, "INC-1234 e2e test")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let after = now_unix();
        let path = self.dir.path().join(format!("{name}.cert"));
        std::fs::write(&path, &cert).expect("write certificate");
        let info = inspect_cert(&path).unwrap_or_else(|e| panic!("{e:#}"));
        check_break_glass_cert(&info, &self.ca, key, principals);
        let ttl_secs = parse_ttl(ttl);
        let (va, vb) = (info.valid_after.unwrap(), info.valid_before.unwrap());
        // Design: valid_after = now - 60 s (clock skew), valid_before = now + TTL.
        assert!(
            va >= before - 60 - 1 && va <= after - 60 + 1,
            "valid_after {va} is not issue time ({before}..={after}) - 60 s:\n{}",
            info.text
        );
        assert!(
            vb >= before + ttl_secs - 1 && vb <= after + ttl_secs + 1,
            "valid_before {vb} is not issue time ({before}..={after}) + {ttl}:\n{}",
            info.text
        );
        self.issued.push(info.clone());
        (path, info)
    }

    fn ssh(&self, user: &str, key: &Path, cert: Option<&Path>) -> Output {
        self.sshd.ssh(user, key, cert, "id -un")
    }

    fn logs(&self) -> String {
        format!("{}\n{}", self.sshd.logs(), self.server.logs())
    }

    /// The login succeeded and ran `id -un` as `user`.
    fn assert_logged_in(&self, out: &Output, user: &str) {
        assert!(
            out.status.success(),
            "ssh as {user} failed: {}\n{}",
            describe(out),
            self.logs()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{user}\n"),
            "`id -un` as {user}: {}\n{}",
            describe(out),
            self.logs()
        );
    }

    /// The login was refused (ssh exits 255 with "Permission denied") and ran nothing.
    fn assert_refused(&self, out: &Output, user: &str) {
        assert_eq!(
            out.status.code(),
            Some(255),
            "ssh as {user} was not refused: {}\n{}",
            describe(out),
            self.logs()
        );
        assert!(
            out.stdout.is_empty(),
            "a refused login printed: {}",
            describe(out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "ssh as {user}: {}\n{}",
            describe(out),
            self.logs()
        );
    }

    /// sshd logged (after `mark`) that it accepted certificate `info` for `user`, trusting it
    /// through the CA key file that pedm-host-config wrote.
    fn assert_accepted_log(&self, mark: usize, info: &CertInfo, user: &str) {
        let line = self
            .sshd
            .wait_for_log_since(
                mark,
                &format!("Accepted certificate ID \"{}\"", info.key_id),
                LOG_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        let via = self.sshd.pedm_dir().join("trusted-user-ca-keys.pub");
        for part in [
            format!("(serial {})", info.serial),
            self.ca.ca_key.clone(),
            format!("via {}", via.display()),
        ] {
            assert!(line.contains(&part), "{part:?} missing in {line:?}");
        }
        self.sshd
            .wait_for_log_since(
                mark,
                &format!("Accepted publickey for {user} from 127.0.0.1"),
                LOG_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// sshd logged (after `mark`) `reason`, the failure of certificate `cert` (when given)
    /// for `user`, then closed the connection before authentication, and accepted nothing.
    fn assert_refused_log(&self, mark: usize, user: &str, cert: Option<&CertInfo>, reason: &str) {
        self.sshd
            .wait_for_log_since(mark, reason, LOG_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"));
        if let Some(info) = cert {
            let line = self
                .sshd
                .wait_for_log_since(
                    mark,
                    &format!("Failed publickey for {user} from 127.0.0.1"),
                    LOG_TIMEOUT,
                )
                .unwrap_or_else(|e| panic!("{e:#}"));
            let id = format!("ID {} (serial {})", info.key_id, info.serial);
            assert!(
                line.contains("-CERT ") && line.contains(&id),
                "the first failure for {user} is not the certificate {id:?}: {line:?}\n{}",
                self.logs()
            );
        }
        self.sshd
            .wait_for_log_since(
                mark,
                &format!("Connection closed by authenticating user {user} 127.0.0.1"),
                LOG_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        let accepted: Vec<String> = self
            .sshd
            .log_since(mark)
            .into_iter()
            .filter(|l| l.contains("Accepted"))
            .collect();
        assert!(
            accepted.is_empty(),
            "sshd accepted something for a refused login: {accepted:?}\n{}",
            self.logs()
        );
    }
}

/// `"5m"` / `"3s"` / `"1h"` in seconds (the test's own inputs only).
fn parse_ttl(ttl: &str) -> i64 {
    let (n, unit) = ttl.split_at(ttl.len() - 1);
    let n: i64 = n.parse().expect("numeric ttl");
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        other => panic!("unit {other}"),
    }
}

/// What every break-glass certificate must carry, as `ssh-keygen -L` shows it.
fn check_break_glass_cert(info: &CertInfo, ca: &TestCa, key: &UserKey, principals: &[&str]) {
    assert_eq!(
        info.cert_type, "ssh-ed25519-cert-v01@openssh.com user certificate",
        "{}",
        info.text
    );
    assert_ne!(info.serial, 0, "serial 0:\n{}", info.text);
    assert_eq!(
        info.key_id,
        format!("break-glass serial={}", info.serial),
        "{}",
        info.text
    );
    assert_eq!(info.signing_ca, ca.ca_key, "{}", info.text);
    assert_eq!(
        info.public_key_fingerprint,
        key.fingerprint().unwrap(),
        "{}",
        info.text
    );
    let mut want: Vec<String> = principals.iter().map(|p| p.to_string()).collect();
    want.sort();
    let mut got = info.principals.clone();
    got.sort();
    assert_eq!(got, want, "{}", info.text);
    assert!(info.critical_options.is_empty(), "{}", info.text);
    let mut sorted = info.extensions.clone();
    sorted.sort();
    assert_eq!(
        info.extensions, sorted,
        "extensions not sorted:\n{}",
        info.text
    );
    assert!(
        info.valid_after.is_some() && info.valid_before.is_some(),
        "{}",
        info.text
    );
}

#[test]
fn break_glass_certificate_logs_in_as_the_mapped_account_only() {
    let Some(mut s) = setup() else { return };
    let (cert, info) = s.issue("bg", &["break-glass"], "5m");

    // Positive: the mapped account.
    let mark = s.sshd.log_mark();
    let out = s.ssh(BG_ACCOUNT, &s.key.private, Some(&cert));
    s.assert_logged_in(&out, BG_ACCOUNT);
    s.assert_accepted_log(mark, &info, BG_ACCOUNT);

    // Refused: the same certificate for another account.
    let mark = s.sshd.log_mark();
    let out = s.ssh(OTHER_ACCOUNT, &s.key.private, Some(&cert));
    s.assert_refused(&out, OTHER_ACCOUNT);
    s.assert_refused_log(
        mark,
        OTHER_ACCOUNT,
        Some(&info),
        "Certificate does not contain an authorized principal",
    );

    // And the positive control again, after the refusal.
    let mark = s.sshd.log_mark();
    let out = s.ssh(BG_ACCOUNT, &s.key.private, Some(&cert));
    s.assert_logged_in(&out, BG_ACCOUNT);
    s.assert_accepted_log(mark, &info, BG_ACCOUNT);
}

#[test]
fn an_unlisted_account_accepts_its_own_name_and_a_listed_one_only_its_list() {
    let Some(mut s) = setup() else { return };
    let (other_cert, other_info) = s.issue("other", &[OTHER_ACCOUNT], "5m");
    let (bg_name_cert, bg_name_info) = s.issue("bg-name", &[BG_ACCOUNT], "5m");

    // Positive: a certificate for the principal `pedm-other` logs into `pedm-other`, which
    // host.toml does not list (UID >= 1000: it accepts its own name).
    let mark = s.sshd.log_mark();
    let out = s.ssh(OTHER_ACCOUNT, &s.key.private, Some(&other_cert));
    s.assert_logged_in(&out, OTHER_ACCOUNT);
    s.assert_accepted_log(mark, &other_info, OTHER_ACCOUNT);

    // Refused: the same certificate for `pedm-bg`.
    let mark = s.sshd.log_mark();
    let out = s.ssh(BG_ACCOUNT, &s.key.private, Some(&other_cert));
    s.assert_refused(&out, BG_ACCOUNT);
    s.assert_refused_log(
        mark,
        BG_ACCOUNT,
        Some(&other_info),
        "Certificate does not contain an authorized principal",
    );

    // Refused: `pedm-bg` is listed, so it accepts `break-glass` only, not its own name.
    let mark = s.sshd.log_mark();
    let out = s.ssh(BG_ACCOUNT, &s.key.private, Some(&bg_name_cert));
    s.assert_refused(&out, BG_ACCOUNT);
    s.assert_refused_log(
        mark,
        BG_ACCOUNT,
        Some(&bg_name_info),
        "Certificate does not contain an authorized principal",
    );

    // The principals files say the same.
    let principals = s.sshd.pedm_dir().join("principals");
    assert_eq!(
        std::fs::read_to_string(principals.join(OTHER_ACCOUNT)).unwrap(),
        format!("{OTHER_ACCOUNT}\n")
    );
    assert_eq!(
        std::fs::read_to_string(principals.join(BG_ACCOUNT)).unwrap(),
        "break-glass\n"
    );
    assert!(
        !principals.join("root").exists(),
        "root must never get a principals file unless listed"
    );
}

#[test]
fn a_key_without_a_certificate_is_refused() {
    let Some(mut s) = setup() else { return };
    let (cert, info) = s.issue("bg", &["break-glass"], "5m");
    let fingerprint = s.key.fingerprint().unwrap();

    // Refused: the bare key (AuthorizedKeysFile none; only certificates can get in).
    let mark = s.sshd.log_mark();
    let out = s.ssh(BG_ACCOUNT, &s.key.private, None);
    s.assert_refused(&out, BG_ACCOUNT);
    s.assert_refused_log(
        mark,
        BG_ACCOUNT,
        None,
        &format!("Failed publickey for {BG_ACCOUNT} from 127.0.0.1"),
    );
    let failed = s
        .sshd
        .wait_for_log_since(mark, "Failed publickey", LOG_TIMEOUT)
        .unwrap();
    assert!(
        failed.contains(&format!("ED25519 {fingerprint}")),
        "the failure names another key: {failed:?}"
    );

    // Positive: the same key with its certificate.
    let mark = s.sshd.log_mark();
    let out = s.ssh(BG_ACCOUNT, &s.key.private, Some(&cert));
    s.assert_logged_in(&out, BG_ACCOUNT);
    s.assert_accepted_log(mark, &info, BG_ACCOUNT);
}

#[test]
fn an_expired_certificate_is_refused_and_a_fresh_one_accepted() {
    let Some(mut s) = setup() else { return };
    let (short, short_info) = s.issue("short", &["break-glass"], "3s");
    let valid_before = short_info.valid_before.unwrap();

    // Wait until ssh-keygen's valid_before has passed (sshd refuses when now >= valid_before;
    // one more second absorbs its rounding).
    while now_unix() <= valid_before {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mark = s.sshd.log_mark();
    let out = s.ssh(BG_ACCOUNT, &s.key.private, Some(&short));
    s.assert_refused(&out, BG_ACCOUNT);
    s.assert_refused_log(
        mark,
        BG_ACCOUNT,
        Some(&short_info),
        "Certificate invalid: expired",
    );

    // Positive: a fresh certificate with the same key and principal.
    let (fresh, fresh_info) = s.issue("fresh", &["break-glass"], "5m");
    let mark = s.sshd.log_mark();
    let out = s.ssh(BG_ACCOUNT, &s.key.private, Some(&fresh));
    s.assert_logged_in(&out, BG_ACCOUNT);
    s.assert_accepted_log(mark, &fresh_info, BG_ACCOUNT);
}

#[test]
fn ssh_keygen_parses_every_certificate_with_unique_increasing_serials() {
    let Some(mut s) = setup() else { return };
    let second = UserKey::generate(&s.dir.path().join("id_second")).unwrap();
    s.issue("one", &["break-glass"], "5m");
    s.issue("two", &["break-glass", OTHER_ACCOUNT], "10m");
    s.issue_for(&second, "three", &[OTHER_ACCOUNT], "1m");
    s.issue("four", &["a.b_c-D9"], "1h");
    // Two issuances at once (two processes on the same database).
    let ca = s.ca.clone();
    let pk = s.key.public.clone();
    let parallel: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let ca = &ca;
                let pk = &pk;
                scope.spawn(move || {
                    ca.issue_break_glass(pk, &["break-glass"], "5m", "parallel")
                        .unwrap_or_else(|e| panic!("{e:#}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, cert) in parallel.iter().enumerate() {
        let path = s.dir.path().join(format!("parallel-{i}.cert"));
        std::fs::write(&path, cert).unwrap();
        let info = inspect_cert(&path).unwrap_or_else(|e| panic!("{e:#}"));
        check_break_glass_cert(&info, &s.ca, &s.key, &["break-glass"]);
        s.issued.push(info);
    }

    let serials: Vec<u64> = s.issued.iter().map(|c| c.serial).collect();
    // The sequential ones increase strictly in issue order.
    assert!(
        serials[..4].windows(2).all(|w| w[0] < w[1]),
        "serials not increasing: {serials:?}"
    );
    // The parallel ones come after them; all are distinct.
    assert!(serials[4..].iter().all(|&x| x > serials[3]), "{serials:?}");
    let mut unique = serials.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        serials.len(),
        "duplicate serials: {serials:?}"
    );
    // Nothing the caller supplied (the reason) is in the key ID.
    for c in &s.issued {
        assert!(!c.key_id.contains("INC-1234") && !c.key_id.contains("parallel"));
    }
    // And sshd takes one of them: ssh-keygen's view is what sshd sees.
    let (cert, info) = s.issue("last", &["break-glass"], "5m");
    assert!(info.serial > *serials.iter().max().unwrap());
    let mark = s.sshd.log_mark();
    let out = s.ssh(BG_ACCOUNT, &s.key.private, Some(&cert));
    s.assert_logged_in(&out, BG_ACCOUNT);
    s.assert_accepted_log(mark, &info, BG_ACCOUNT);
}

#[test]
fn served_ca_keys_equal_the_installed_trusted_user_ca_keys() {
    let Some(mut s) = setup() else { return };
    let (status, served) = s.server.get("/v1/ca/keys").unwrap();
    assert_eq!(status, 200, "{served}\n{}", s.server.logs());
    let installed =
        std::fs::read_to_string(s.sshd.pedm_dir().join("trusted-user-ca-keys.pub")).unwrap();
    assert_eq!(
        served, installed,
        "GET /v1/ca/keys differs from what pedm-host-config installed"
    );
    // It holds exactly the CA key that init printed (key type and base64; comments aside),
    // and not the trust root.
    let key_lines: Vec<&str> = installed
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(key_lines.len(), 1, "{installed}");
    let blob = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(blob(key_lines[0]), blob(&s.ca.ca_public_key), "{installed}");
    let fp_file = s.dir.path().join("installed-ca.pub");
    std::fs::write(&fp_file, format!("{}\n", key_lines[0])).unwrap();
    assert_eq!(
        pedm_e2e::keys::fingerprint(&fp_file).unwrap(),
        s.ca.ca_key,
        "the installed CA key is not the ca-key init printed"
    );
    assert_ne!(s.ca.ca_key, s.ca.trust_root);

    // /healthz agrees on the active key.
    let (status, health) = s.server.get("/healthz").unwrap();
    assert_eq!(status, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["active_key"], s.ca.ca_key.as_str(), "{health}");

    // The main sshd_config names no trust itself: it all comes from the drop-in.
    let main = std::fs::read_to_string(s.sshd.config_path()).unwrap();
    for kw in [
        "TrustedUserCAKeys",
        "AuthorizedPrincipalsFile",
        "RevokedKeys",
    ] {
        assert!(!main.contains(kw), "{kw} in the main sshd_config");
    }
    let dropin =
        std::fs::read_to_string(s.sshd.etc_dir().join("sshd_config.d/50-pedm.conf")).unwrap();
    assert!(dropin.contains("TrustedUserCAKeys"), "{dropin}");

    // A second install changes nothing.
    let again = s.sshd.install(s.server.url(), &s.ca.trust_root);
    assert!(again.status.success(), "{}", describe(&again));
    assert_eq!(String::from_utf8_lossy(&again.stdout), "no changes\n");

    // sshd re-reads everything on SIGHUP and still lets a break-glass certificate in.
    s.sshd.reload().unwrap_or_else(|e| panic!("{e:#}"));
    let (cert, info) = s.issue("after-reload", &["break-glass"], "5m");
    let mark = s.sshd.log_mark();
    let out = s.ssh(BG_ACCOUNT, &s.key.private, Some(&cert));
    s.assert_logged_in(&out, BG_ACCOUNT);
    s.assert_accepted_log(mark, &info, BG_ACCOUNT);
}

#[test]
fn bad_break_glass_requests_issue_nothing() {
    if !env::require_ssh_keygen() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), None).unwrap();
    let key = UserKey::generate(&dir.path().join("id")).unwrap();
    let count_records = || -> i64 {
        let db = rusqlite::Connection::open(ca.data_dir.join("pedm.db")).unwrap();
        db.query_row("SELECT count(*) FROM certificates", [], |r| r.get(0))
            .unwrap()
    };
    let before = count_records();
    for (why, principals, ttl, reason) in [
        ("a comma in a principal", &["a,b"][..], "5m", "r"),
        ("a space in a principal", &["a b"][..], "5m", "r"),
        ("a newline in a principal", &["a\nb"][..], "5m", "r"),
        ("an empty principal", &[""][..], "5m", "r"),
        ("a TTL over 1h", &["break-glass"][..], "2h", "r"),
        ("an empty reason", &["break-glass"][..], "5m", ""),
        (
            "a control character in the reason",
            &["break-glass"][..],
            "5m",
            "a\u{7}b",
        ),
    ] {
        let out = ca.issue_output(&key.public, principals, ttl, reason);
        assert!(
            !out.status.success(),
            "{why}: issued anyway: {}",
            describe(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("cert-v01"),
            "{why}: printed a certificate: {}",
            describe(&out)
        );
        assert_eq!(count_records(), before, "{why}: a certificate was stored");
    }
    // Positive control: a good request with the same key.
    let cert = ca
        .issue_break_glass(&key.public, &["break-glass"], "5m", "INC-1 e2e")
        .unwrap();
    assert!(cert.contains("-cert-v01@openssh.com "));
    assert_eq!(count_records(), before + 1);
}
