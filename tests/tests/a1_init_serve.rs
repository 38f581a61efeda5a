//! `pedm-ca init` and `pedm-ca serve` as an operator meets them: what init prints and
//! refuses, encrypted key files, file-mode refusals, and TLS.

use pedm_e2e::bins;
use pedm_e2e::ca::{describe, toml_string, TestCa};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn pedm_ca(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bins::pedm_ca());
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("PEDM_CA_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running pedm-ca")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn ssh_keygen_y(key: &Path, passphrase: &str) -> Output {
    Command::new("ssh-keygen")
        .args(["-y", "-P", passphrase, "-f"])
        .arg(key)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen")
}

#[test]
fn init_prints_three_lines_encrypts_keys_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let ca = TestCa::init(&data, Some("correct horse battery staple")).unwrap();
    for (name, fp) in [("trust-root.key", &ca.trust_root), ("ca-1.key", &ca.ca_key)] {
        let key = data.join("keys").join(name);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
        let wrong = ssh_keygen_y(&key, "wrong");
        assert!(
            !wrong.status.success(),
            "{name} opens without its passphrase"
        );
        let right = ssh_keygen_y(&key, "correct horse battery staple");
        assert!(right.status.success(), "{name}: {}", describe(&right));
        // The fingerprint init printed is that of the key in the file.
        let pubfile = dir.path().join(format!("{name}.pub"));
        std::fs::write(&pubfile, &right.stdout).unwrap();
        let l = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&pubfile)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&l.stdout).contains(fp.as_str()),
            "{name}"
        );
    }
    assert_ne!(
        ca.trust_root, ca.ca_key,
        "the trust root is a key of its own"
    );
    assert!(ca.ca_public_key.starts_with("ssh-ed25519 "));

    // A second init on the same directory changes nothing.
    let before = std::fs::read(data.join("keys/ca-1.key")).unwrap();
    let again = pedm_ca(
        &["init", "--data-dir", data.to_str().unwrap()],
        &[("PEDM_CA_PASSPHRASE", "other")],
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        describe(&again)
    );
    assert_eq!(std::fs::read(data.join("keys/ca-1.key")).unwrap(), before);
}

#[test]
fn init_without_passphrase_is_refused_unless_insecure_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let out = pedm_ca(&["init", "--data-dir", data.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("PEDM_CA_PASSPHRASE"),
        "{}",
        describe(&out)
    );
    assert!(!data.join("pedm.db").exists(), "nothing is written");

    // A passphrase file readable by others is refused.
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "s3cret\n").unwrap();
    chmod(&pass, 0o644);
    let out = pedm_ca(
        &[
            "init",
            "--data-dir",
            data.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("chmod 600"), "{}", describe(&out));
    assert!(!data.join("pedm.db").exists());
    chmod(&pass, 0o600);
    let out = pedm_ca(
        &[
            "init",
            "--data-dir",
            data.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(ssh_keygen_y(&data.join("keys/ca-1.key"), "s3cret")
        .status
        .success());

    // --insecure-no-passphrase writes keys that open without one.
    let data2 = dir.path().join("ca2");
    let out = pedm_ca(
        &[
            "init",
            "--data-dir",
            data2.to_str().unwrap(),
            "--insecure-no-passphrase",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(ssh_keygen_y(&data2.join("keys/ca-1.key"), "")
        .status
        .success());
}

#[test]
fn serve_refuses_key_files_readable_by_others_and_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), Some("pw")).unwrap();
    let key = ca.data_dir.join("keys/ca-1.key");
    chmod(&key, 0o640);
    let err = ca
        .serve("")
        .err()
        .expect("serve must refuse a 0640 key file");
    let text = format!("{err:#}");
    assert!(
        text.contains("chmod 600") && text.contains("ca-1.key"),
        "{text}"
    );
    // Positive control: fixed, it serves.
    chmod(&key, 0o600);
    let server = ca.serve("").unwrap();
    let (status, body) = server.get("/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&ca.ca_key), "{body}");
}

#[test]
fn serve_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), None).unwrap();
    let config = dir.path().join("bad.toml");
    for (text, key) in [
        ("listen = \"0.0.0.0:8443\"\npublic_url = \"https://ca.example\"\n", "listen"),
        ("listen = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:1\"\nbogus = 1\n", "bogus"),
        (
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:1\"\n[certs]\ndefault_ttl = \"ten minutes\"\n",
            "default_ttl",
        ),
    ] {
        // data_dir first: it must come before any [table].
        std::fs::write(
            &config,
            format!("data_dir = {}\n{text}", toml_string(&ca.data_dir)),
        )
        .unwrap();
        let out = pedm_ca(&["serve", "--config", config.to_str().unwrap()], &[]);
        assert!(!out.status.success(), "{text}");
        assert!(stderr(&out).contains(key), "{key}: {}", describe(&out));
    }
}

#[test]
fn serve_speaks_tls_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::init(&dir.path().join("ca"), None).unwrap();
    let d = dir.path();
    let (cert, key, root_pem) = (d.join("tls.crt"), d.join("tls.key"), d.join("root.crt"));
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stdin(Stdio::null())
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", describe(&out));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "1",
            "-subj",
            "/CN=e2e root",
            "-keyout",
            "root.key",
            "-out",
            "root.crt",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "root.crt",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
    ]);
    let server = ca
        .serve(&format!(
            "[tls]\ncert_file = {}\nkey_file = {}\n",
            toml_string(&cert),
            toml_string(&key)
        ))
        .unwrap();
    let root = reqwest::Certificate::from_pem(&std::fs::read(&root_pem).unwrap()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(root)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let https = format!("https://127.0.0.1:{}/healthz", server.port());
    let resp = client.get(&https).send().expect("TLS request");
    assert_eq!(resp.status().as_u16(), 200);
    // Plain HTTP to the TLS port gets no API answer.
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", server.port()))
        .timeout(Duration::from_secs(10))
        .send();
    assert!(
        plain.map(|r| r.status().as_u16() != 200).unwrap_or(true),
        "plain HTTP answered on the TLS listener"
    );
}
