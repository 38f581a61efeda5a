//! The RFC 8628 device flow through the CA, against the real test IdP (device flow enabled)
//! behind the tampering proxy and the real `pedm-ca serve`: over HTTP, and with the real
//! `pedm-ssh login --device`.
//!
//! The test IdP's device codes live 10 minutes and it never answers `slow_down`, so
//! `expired_token` and `access_denied` are produced by the proxy answering the token
//! endpoint in the IdP's place; the CA cannot tell the difference.

use pedm_e2e::idp;
use pedm_e2e::keys::UserKey;
use pedm_e2e::signin::{api_login, call, pedm_ssh, problem_slug, SignInSetup};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn setup(ca_device_flow: bool, extra: &str) -> Option<SignInSetup> {
    SignInSetup::start_device(ca_device_flow, extra).expect("IdP and CA")
}

fn start(s: &SignInSetup) -> Value {
    let (status, v) = call(
        &s.server,
        "POST",
        "/v1/auth/device/start",
        Some(&json!({})),
        None,
    );
    assert_eq!(status, 200, "{v}");
    v
}

fn poll(s: &SignInSetup, poll_token: &str) -> (u16, Value) {
    call(
        &s.server,
        "POST",
        "/v1/auth/device/poll",
        Some(&json!({ "poll_token": poll_token })),
        None,
    )
}

/// Polls until the answer is no longer `pending` (at most 30 s).
fn poll_until_done(s: &SignInSetup, poll_token: &str) -> (u16, Value) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = poll(s, poll_token);
        if status != 200 || v["status"] != json!("pending") || Instant::now() > end {
            return (status, v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The path of the IdP's token endpoint, as the proxy sees it.
fn token_path(s: &SignInSetup) -> String {
    let disco = s.idp.discovery().expect("discovery");
    let url = url::Url::parse(disco["token_endpoint"].as_str().expect("token_endpoint"))
        .expect("token endpoint URL");
    url.path().to_string()
}

/// A device-flow session as alice, over HTTP; returns the session token.
fn device_session(s: &SignInSetup, login: &str) -> String {
    let st = start(s);
    idp::device_login(
        st["verification_uri"].as_str().expect("verification_uri"),
        st["user_code"].as_str().expect("user_code"),
        login,
    )
    .expect("device login at the IdP");
    let (status, v) = poll_until_done(s, st["poll_token"].as_str().expect("poll_token"));
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("complete")),
        "{v}"
    );
    v["session_token"]
        .as_str()
        .expect("session_token")
        .to_string()
}

#[test]
fn device_flow_end_to_end_over_http_gives_a_device_session_and_a_certificate() {
    let Some(s) = setup(true, "") else { return };
    let st = start(&s);
    for field in ["verification_uri", "user_code", "poll_token"] {
        assert!(
            st[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {st}"
        );
    }
    // The IdP sends no interval: the CA says 5 s. The device code stays at the CA.
    assert_eq!(st["interval"], json!(5), "{st}");
    assert!(st.get("device_code").is_none(), "{st}");
    assert!(
        st["expires_at"].as_i64().unwrap() > pedm_e2e::keys::now_unix(),
        "{st}"
    );
    let token = st["poll_token"].as_str().unwrap();

    // Before the user acts: pending.
    let (status, v) = poll(&s, token);
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("pending")),
        "{v}"
    );
    // A made-up poll token gets nothing.
    let (status, v) = poll(&s, "not-a-poll-token");
    assert_eq!(
        (status, problem_slug(&v)),
        (400, "login-refused".into()),
        "{v}"
    );

    idp::device_login(
        st["verification_uri"].as_str().unwrap(),
        st["user_code"].as_str().unwrap(),
        "alice",
    )
    .expect("device login at the IdP");
    let (status, v) = poll_until_done(&s, token);
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("complete")),
        "{v}"
    );
    assert_eq!(v["user"], json!("alice"), "{v}");
    let session = v["session_token"].as_str().unwrap().to_string();

    // Single use: the same poll token gets no second session.
    let (status, again) = poll(&s, token);
    assert_eq!(
        (status, problem_slug(&again)),
        (400, "login-refused".into()),
        "{again}"
    );

    let (status, info) = call(&s.server, "GET", "/v1/session", None, Some(&session));
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["method"], json!("device"), "{info}");
    assert_eq!(info["auth_time"], Value::Null, "{info}");
    assert_eq!(info["user"], json!("alice"), "{info}");

    let key = UserKey::generate(&s.dir.path().join("alice_key")).expect("key");
    let public = std::fs::read_to_string(&key.public).expect("public key");
    let (status, cert) = call(
        &s.server,
        "POST",
        "/v1/certs",
        Some(&json!({ "public_key": public.trim() })),
        Some(&session),
    );
    assert_eq!(status, 200, "{cert}");
    assert_eq!(cert["base"]["principals"], json!(["alice"]), "{cert}");
    assert!(
        cert["base"]["certificate"]
            .as_str()
            .is_some_and(|c| c.starts_with("ssh-ed25519-cert-v01@openssh.com ")),
        "{cert}"
    );
}

#[test]
fn with_device_flow_off_the_endpoints_answer_404() {
    // The IdP offers the device flow; the CA's [oidc] device_flow is off (the default).
    let Some(s) = setup(false, "") else { return };
    let (status, v) = call(
        &s.server,
        "POST",
        "/v1/auth/device/start",
        Some(&json!({})),
        None,
    );
    assert_eq!((status, problem_slug(&v)), (404, "not-found".into()), "{v}");
    let (status, v) = poll(&s, "anything");
    assert_eq!((status, problem_slug(&v)), (404, "not-found".into()), "{v}");
    // The CLI says so and exits 1.
    let home = tempfile::tempdir().unwrap();
    let out = pedm_ssh(home.path())
        .args(["login", "--device", "--ca", s.server.url()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not offer device sign-in"), "{err}");
}

#[test]
fn an_expired_device_code_is_login_refused_and_a_denial_is_forbidden() {
    let Some(s) = setup(true, "") else { return };
    let path = token_path(&s);

    let st = start(&s);
    s.proxy
        .set_override(&path, Some(r#"{"error":"expired_token"}"#.into()));
    let (status, v) = poll(&s, st["poll_token"].as_str().unwrap());
    assert_eq!(
        (status, problem_slug(&v)),
        (400, "login-refused".into()),
        "{v}"
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("the device code expired"),
        "{v}"
    );
    // It is over: the pending login is gone.
    s.proxy.set_override(&path, None);
    let (status, v) = poll(&s, st["poll_token"].as_str().unwrap());
    assert_eq!(
        (status, problem_slug(&v)),
        (400, "login-refused".into()),
        "{v}"
    );
    assert!(!v["detail"].as_str().unwrap().contains("expired"), "{v}");

    let st = start(&s);
    s.proxy
        .set_override(&path, Some(r#"{"error":"access_denied"}"#.into()));
    let (status, v) = poll(&s, st["poll_token"].as_str().unwrap());
    assert_eq!((status, problem_slug(&v)), (403, "forbidden".into()), "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("denied at the identity provider"),
        "{v}"
    );
    s.proxy.set_override(&path, None);
}

/// Runs `pedm-ssh login --device`, and with `login` completes the IdP side from the URL and
/// code it prints; returns its exit code and stderr.
fn cli_device_login(
    s: &SignInSetup,
    home: &std::path::Path,
    key: &std::path::Path,
    login: Option<&str>,
) -> (Option<i32>, String) {
    let mut child = pedm_ssh(home)
        .args(["login", "--device", "--ca", s.server.url(), "--key"])
        .arg(key)
        .env("PEDM_SSH_POLL_MS", "200")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning pedm-ssh login --device");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    if let Some(login) = login {
        let (mut url, mut code) = (None, None);
        while url.is_none() || code.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("pedm-ssh printed no URL and code");
            if line.starts_with("http://") && !line.contains(' ') {
                url = Some(line);
            } else if let Some(c) = line.strip_prefix("code: ") {
                code = Some(c.to_string());
            }
        }
        idp::device_login(&url.unwrap(), &code.unwrap(), login).expect("device login");
    }
    let out = child.wait_with_output().unwrap();
    let err = reader.join().unwrap_or_default().join("\n");
    (
        out.status.code(),
        format!("{err}\n{}", String::from_utf8_lossy(&out.stdout)),
    )
}

#[test]
fn the_cli_signs_in_with_the_device_flow_and_exits_3_on_expiry_and_4_on_denial() {
    let Some(s) = setup(true, "") else { return };
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("id_ed25519");
    let (code, out) = cli_device_login(&s, home.path(), &key, Some("alice"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("signed in as alice"), "{out}");
    let cert = home.path().join("id_ed25519-cert.pub");
    let info = pedm_e2e::keys::inspect_cert(&cert).expect("certificate file");
    assert_eq!(info.principals, vec!["alice".to_string()], "{out}");

    let path = token_path(&s);
    s.proxy
        .set_override(&path, Some(r#"{"error":"expired_token"}"#.into()));
    let (code, out) = cli_device_login(&s, home.path(), &key, None);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("the device code expired"), "{out}");

    s.proxy
        .set_override(&path, Some(r#"{"error":"access_denied"}"#.into()));
    let (code, out) = cli_device_login(&s, home.path(), &key, None);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("denied at the identity provider"), "{out}");
    s.proxy.set_override(&path, None);
}

const RECENT: &str = r#"
[[elevations]]
name = "needs-recent"
principals = ["db-admin"]
eligible_roles = ["engineer"]
max_duration = "30m"
require_recent_auth = "1h"
approval = { groups = ["security"], count = 1 }
"#;

#[test]
fn a_device_flow_session_cannot_request_an_elevation_that_requires_a_recent_sign_in() {
    let Some(s) = setup(true, RECENT) else { return };
    let body =
        json!({"elevation": "needs-recent", "reason": "INC-1 fix the db", "duration_secs": 600});
    let device = device_session(&s, "bob");
    let (status, v) = call(
        &s.server,
        "POST",
        "/v1/elevations",
        Some(&body),
        Some(&device),
    );
    assert_eq!(
        (status, problem_slug(&v)),
        (401, "reauth-required".into()),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("device"), "{v}");
    // The same person, signed in with the browser just now, may.
    let browser = api_login(&s.server, "bob", true).expect("browser sign-in");
    let (status, v) = call(
        &s.server,
        "POST",
        "/v1/elevations",
        Some(&body),
        Some(&browser),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], json!("pending"), "{v}");
}
