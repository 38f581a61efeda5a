//! Browser sign-in against the real test IdP and the real `pedm-ca serve`, driven over HTTP
//! the way `pedm-ssh login` drives it, with a tampering proxy between the CA and the IdP.
//!
//! Every refusal is paired with a positive control in the same setup, and the proxy's request
//! log shows which refusals happen before the IdP is contacted.

use pedm_e2e::ca::{audit_export, CaServer, TestCa};
use pedm_e2e::idp;
use pedm_e2e::proxy::Mode;
use pedm_e2e::signin::{SignInSetup, CLIENT_SECRET};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use ssh_key::{Algorithm, Certificate, PrivateKey};
use std::time::Duration;
use url::Url;

type Setup = SignInSetup;

fn setup() -> Option<Setup> {
    SignInSetup::start().expect("IdP, proxy and CA")
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn post(server: &CaServer, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    let mut req = http().post(format!("{}{path}", server.url())).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("CA request");
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn problem_slug(v: &Value) -> String {
    v["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("urn:pedm-ssh:problem:"))
        .unwrap_or("(not a problem document)")
        .to_string()
}

/// A CLI-side login: secret, redirect URI, and what start answered.
struct Login {
    secret: String,
    redirect_uri: String,
    state: String,
    authorization_url: String,
}

fn new_secret() -> String {
    hex_encode(&rand::random::<[u8; 32]>())
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    hex_encode(&Sha256::digest(s.as_bytes()))
}

fn start(s: &Setup) -> Login {
    let secret = new_secret();
    let redirect_uri = format!(
        "http://127.0.0.1:{}/callback",
        40_000 + rand::random::<u16>() % 20_000
    );
    let (status, v) = post(
        &s.server,
        "/v1/auth/oidc/start",
        &json!({"redirect_uri": redirect_uri, "login_secret_sha256": sha256_hex(&secret)}),
        None,
    );
    assert_eq!(status, 200, "start: {v}\n{}", s.server.logs());
    Login {
        secret,
        redirect_uri,
        state: v["state"].as_str().unwrap().to_string(),
        authorization_url: v["authorization_url"].as_str().unwrap().to_string(),
    }
}

/// What the browser brings back to the CLI's listener.
struct Callback {
    code: String,
    state: String,
    iss: Option<String>,
}

fn sign_in_at_idp(login: &Login, user: &str) -> Callback {
    let url: Url = idp::browser_login(&login.authorization_url, user).expect("IdP sign-in");
    assert!(
        url.as_str().starts_with(&login.redirect_uri),
        "the IdP redirected to {url}, not {}",
        login.redirect_uri
    );
    let q = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    Callback {
        code: q("code").unwrap_or_else(|| panic!("no code in {url}")),
        state: q("state").unwrap_or_default(),
        iss: q("iss"),
    }
}

fn finish(s: &Setup, cb: &Callback, secret: &str) -> (u16, Value) {
    post(
        &s.server,
        "/v1/auth/oidc/finish",
        &json!({"code": cb.code, "state": cb.state, "iss": cb.iss, "login_secret": secret}),
        None,
    )
}

fn full_login(s: &Setup, user: &str) -> (u16, Value) {
    let login = start(s);
    let cb = sign_in_at_idp(&login, user);
    assert_eq!(cb.state, login.state, "the IdP returned another state");
    finish(s, &cb, &login.secret)
}

fn token_requests(s: &Setup) -> usize {
    s.proxy
        .requests()
        .iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/token"))
        .count()
}

/// Actions in the audit log, in order.
fn audit_actions(ca: &TestCa) -> Vec<Value> {
    let out = audit_export(&ca.data_dir);
    assert!(out.status.success(), "audit export failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "record")
        .collect()
}

fn sessions_created(ca: &TestCa) -> Vec<String> {
    audit_actions(ca)
        .into_iter()
        .filter(|r| r["action"] == "session.create")
        .map(|r| r["actor"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn user_public_key() -> String {
    PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .unwrap()
        .public_key()
        .to_openssh()
        .unwrap()
}

#[test]
fn alice_gets_a_session_and_a_minutes_long_certificate() {
    let Some(s) = setup() else { return };
    let (status, v) = full_login(&s, "alice");
    assert_eq!(status, 200, "finish: {v}\n{}", s.server.logs());
    assert_eq!(v["user"], "alice");
    assert_eq!(v["principals"], json!(["alice"]));
    let token = v["session_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 43, "a 256-bit base64url token");

    let (status, info) = {
        let resp = http()
            .get(format!("{}/v1/session", s.server.url()))
            .bearer_auth(&token)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().unwrap())
    };
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["method"], "browser");
    assert_eq!(info["subject"], "sub-alice");
    let auth_time = info["auth_time"]
        .as_i64()
        .expect("auth_time is present (max_age was sent)");
    assert!((info["ca_time"].as_i64().unwrap() - auth_time).abs() < 600);

    let key = user_public_key();
    let (status, c) = post(
        &s.server,
        "/v1/certs",
        &json!({"public_key": key}),
        Some(&token),
    );
    assert_eq!(status, 200, "{c}");
    let cert = Certificate::from_openssh(c["base"]["certificate"].as_str().unwrap()).unwrap();
    let serial = c["base"]["serial"].as_u64().unwrap();
    assert_eq!(cert.serial(), serial);
    assert_eq!(cert.key_id(), format!("alice serial={serial}"));
    assert_eq!(cert.valid_principals(), ["alice"]);
    let now = c["ca_time"].as_u64().unwrap();
    assert!(cert.valid_before() <= now + 240, "role max_cert_ttl is 4m");
    assert!(cert.valid_after() <= now - 59, "back-dated by clock_skew");
    let ext: Vec<&String> = cert.extensions().keys().collect();
    assert_eq!(ext, ["permit-port-forwarding", "permit-pty"]);

    // The session token is never stored: the database holds only its hash.
    let db = std::fs::read(s.ca.data_dir.join("pedm.db")).unwrap();
    let wal = std::fs::read(s.ca.data_dir.join("pedm.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the session token appears in the database"
        );
    }

    // Broken and refused keys change nothing and say what is wrong.
    for (bad, slug) in [
        ("ssh-ed25519 AAAAnot-base64", "invalid-public-key"),
        ("", "invalid-public-key"),
        (
            c["base"]["certificate"].as_str().unwrap(),
            "invalid-public-key",
        ),
        (
            include_str!("../../ca-server/testdata/rsa_2048.pub"),
            "unsupported-key",
        ),
        (
            include_str!("../../ca-server/testdata/dsa_1024.pub"),
            "unsupported-key",
        ),
    ] {
        let (status, p) = post(
            &s.server,
            "/v1/certs",
            &json!({"public_key": bad}),
            Some(&token),
        );
        assert_eq!(status, 400, "{bad:?}: {p}");
        assert_eq!(problem_slug(&p), slug, "{bad:?}: {p}");
    }
    let (status, _) = post(
        &s.server,
        "/v1/certs",
        &json!({"public_key": include_str!("../../ca-server/testdata/rsa_3072.pub")}),
        Some(&token),
    );
    assert_eq!(status, 200, "RSA 3072 is accepted");

    // Logout revokes the session at the CA.
    let (status, _) = post(&s.server, "/v1/auth/logout", &json!({}), Some(&token));
    assert_eq!(status, 200);
    let (status, p) = post(
        &s.server,
        "/v1/certs",
        &json!({"public_key": key}),
        Some(&token),
    );
    assert_eq!(
        (status, problem_slug(&p)),
        (401, "sign-in-required".into()),
        "{p}"
    );
    let (status, p) = post(
        &s.server,
        "/v1/certs",
        &json!({"public_key": key}),
        Some("x"),
    );
    assert_eq!(
        (status, problem_slug(&p)),
        (401, "sign-in-required".into()),
        "{p}"
    );
    let (status, p) = post(&s.server, "/v1/certs", &json!({"public_key": key}), None);
    assert_eq!(
        (status, problem_slug(&p)),
        (401, "sign-in-required".into()),
        "{p}"
    );

    let (status, metrics) = s.server.get("/metrics").unwrap();
    assert_eq!(status, 200);
    for line in [
        "pedm_certificates_issued_total{kind=\"base\"} 2\n",
        "pedm_refusals_total{reason=\"invalid-public-key\"} 3\n",
        "pedm_refusals_total{reason=\"unsupported-key\"} 2\n",
        "pedm_refusals_total{reason=\"sign-in-required\"} 3\n",
        "pedm_http_requests_total{route=\"/v1/certs\",status=\"200\"} 2\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("pedm_http_request_duration_seconds_bucket{le=\"+Inf\"}"));

    let actions: Vec<String> = audit_actions(&s.ca)
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_string())
        .collect();
    for a in [
        "login.start",
        "login.consume",
        "session.create",
        "cert.issue",
        "session.revoke",
    ] {
        assert!(actions.iter().any(|x| x == a), "no {a} in {actions:?}");
    }
}

#[test]
fn no_role_and_hostile_usernames_get_no_session() {
    let Some(s) = setup() else { return };
    // Positive control in the same setup.
    let (status, v) = full_login(&s, "bob");
    assert_eq!(status, 200, "{v}");
    let (status, v) = full_login(&s, "dave");
    assert_eq!((status, problem_slug(&v)), (403, "no-role".into()), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("contractors"), "{v}");
    assert!(v.get("session_token").is_none());
    for hostile in [
        "hostile-root",
        "hostile-comma",
        "hostile-dots",
        "hostile-newline",
    ] {
        let (status, v) = full_login(&s, hostile);
        assert_eq!(
            (status, problem_slug(&v)),
            (403, "username-refused".into()),
            "{hostile}: {v}"
        );
        let detail = v["detail"].as_str().unwrap();
        assert!(
            !detail.contains('\n'),
            "control characters are escaped: {detail:?}"
        );
    }
    assert_eq!(sessions_created(&s.ca), ["bob"], "only bob has a session");
    let denied = audit_actions(&s.ca)
        .into_iter()
        .filter(|r| r["action"] == "login.denied")
        .count();
    assert_eq!(denied, 5, "every denial is audited");
}

#[test]
fn finish_refusals_happen_before_the_idp_is_contacted() {
    let Some(s) = setup() else { return };
    let a = start(&s);
    let cb_a = sign_in_at_idp(&a, "alice");
    let b = start(&s);
    let before = token_requests(&s);

    // A state that no login has.
    let forged = Callback {
        state: "forged-state".into(),
        code: cb_a.code.clone(),
        iss: cb_a.iss.clone(),
    };
    let (status, v) = finish(&s, &forged, &a.secret);
    assert_eq!(
        (status, problem_slug(&v)),
        (400, "login-refused".into()),
        "{v}"
    );
    // Missing and malformed secrets.
    let (status, v) = post(
        &s.server,
        "/v1/auth/oidc/finish",
        &json!({"code": cb_a.code, "state": cb_a.state, "iss": cb_a.iss}),
        None,
    );
    assert_eq!(
        (status, problem_slug(&v)),
        (400, "invalid-request".into()),
        "{v}"
    );
    // Another login's state with this login's secret (and code): B is consumed and refused.
    let other = Callback {
        state: b.state.clone(),
        code: cb_a.code.clone(),
        iss: cb_a.iss.clone(),
    };
    let (status, v) = finish(&s, &other, &a.secret);
    assert_eq!(
        (status, problem_slug(&v)),
        (400, "login-refused".into()),
        "{v}"
    );
    assert!(
        v["detail"].as_str().unwrap().contains("login_secret"),
        "{v}"
    );
    // A wrong RFC 9207 iss on the callback (mix-up): refused.
    let c = start(&s);
    let cb_c = sign_in_at_idp(&c, "alice");
    let mixed = Callback {
        iss: Some("http://127.0.0.1:1/other-idp".into()),
        code: cb_c.code.clone(),
        state: cb_c.state.clone(),
    };
    let (status, v) = finish(&s, &mixed, &c.secret);
    assert_eq!(
        (status, problem_slug(&v)),
        (400, "login-refused".into()),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("iss"), "{v}");
    assert_eq!(
        token_requests(&s),
        before,
        "no refusal so far reached the IdP"
    );

    // Positive control: A with its own state and secret signs in, once.
    let (status, v) = finish(&s, &cb_a, &a.secret);
    assert_eq!(status, 200, "{v}\n{}", s.server.logs());
    assert_eq!(token_requests(&s), before + 1);
    // Replay of the same finish: the pending login is gone.
    let (status, v) = finish(&s, &cb_a, &a.secret);
    assert_eq!(
        (status, problem_slug(&v)),
        (400, "login-refused".into()),
        "{v}"
    );
    // A wrong secret on a fresh login consumes it: the right secret cannot be used after.
    let d = start(&s);
    let cb_d = sign_in_at_idp(&d, "alice");
    let (status, _) = finish(&s, &cb_d, &new_secret());
    assert_eq!(status, 400);
    let (status, v) = finish(&s, &cb_d, &d.secret);
    assert_eq!(
        (status, problem_slug(&v)),
        (400, "login-refused".into()),
        "{v}"
    );
    assert_eq!(
        token_requests(&s),
        before + 1,
        "only the good finish reached the IdP"
    );
    assert_eq!(sessions_created(&s.ca), ["alice"]);
}

#[test]
fn bad_redirect_uris_are_refused_before_the_idp_is_contacted() {
    let Some(s) = setup() else { return };
    let seen = s.proxy.requests().len();
    for bad in [
        "http://127.0.0.1:1@evil.example/callback",
        "https://127.0.0.1:1/callback",
        "http://localhost:1/callback",
        "http://127.0.0.1:1/other",
        "http://127.0.0.1/callback",
        "http://127.0.0.1:1/callback?next=http://evil.example",
    ] {
        let (status, v) = post(
            &s.server,
            "/v1/auth/oidc/start",
            &json!({"redirect_uri": bad, "login_secret_sha256": sha256_hex(&new_secret())}),
            None,
        );
        assert_eq!(
            (status, problem_slug(&v)),
            (400, "invalid-redirect-uri".into()),
            "{bad}: {v}"
        );
    }
    let (status, v) = post(
        &s.server,
        "/v1/auth/oidc/start",
        &json!({"redirect_uri": "http://127.0.0.1:1/callback", "login_secret_sha256": "not-hex"}),
        None,
    );
    assert_eq!(
        (status, problem_slug(&v)),
        (400, "invalid-request".into()),
        "{v}"
    );
    assert_eq!(s.proxy.requests().len(), seen, "the IdP was contacted");
    // Positive control.
    let login = start(&s);
    assert!(login.authorization_url.starts_with(&s.proxy.url()));
    let url = Url::parse(&login.authorization_url).unwrap();
    let q: std::collections::BTreeMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], login.redirect_uri);
    assert!(
        q.contains_key("nonce") && q.contains_key("max_age"),
        "{q:?}"
    );
    assert!(!login.authorization_url.contains(CLIENT_SECRET));
}

#[test]
fn tampered_id_tokens_are_refused() {
    let Some(s) = setup() else { return };
    // Positive controls: the IdP's own token, and one re-signed by the proxy's published key.
    for mode in [Mode::PassThrough, Mode::ResignValid] {
        s.proxy.set_mode(mode.clone());
        let (status, v) = full_login(&s, "alice");
        assert_eq!(status, 200, "{mode:?}: {v}\n{}", s.server.logs());
    }
    let tampered_before = s.proxy.tampered_count();
    let cases = [
        Mode::AlgNone,
        Mode::Hs256WithSecret(CLIENT_SECRET.into()),
        Mode::FlipSignature,
        Mode::OtherAudience("someone-else".into()),
        Mode::Expired,
    ];
    for mode in &cases {
        s.proxy.set_mode(mode.clone());
        let (status, v) = full_login(&s, "bob");
        assert_eq!(
            (status, problem_slug(&v)),
            (401, "id-token-refused".into()),
            "{mode:?}: {v}\n{}",
            s.server.logs()
        );
        let detail = v["detail"].as_str().unwrap();
        assert!(!detail.contains(CLIENT_SECRET), "secret in {detail}");
    }
    assert_eq!(
        s.proxy.tampered_count(),
        tampered_before + cases.len(),
        "every refused token was really tampered with"
    );
    assert_eq!(
        sessions_created(&s.ca),
        ["alice", "alice"],
        "bob never got a session"
    );
    let logs = s.server.logs();
    assert!(
        !logs.contains(CLIENT_SECRET),
        "the client secret is in the CA's log"
    );
}

#[test]
fn serve_and_local_break_glass_issue_at_once_keep_one_chain() {
    let Some(s) = setup() else { return };
    let (status, v) = full_login(&s, "alice");
    assert_eq!(status, 200, "{v}");
    let token = v["session_token"].as_str().unwrap().to_string();
    let key_file = s.dir.path().join("bg.pub");
    std::fs::write(&key_file, user_public_key()).unwrap();

    let url = s.server.url().to_string();
    let online = std::thread::spawn(move || {
        let key = user_public_key();
        let client = http();
        (0..40)
            .map(|_| {
                let resp = client
                    .post(format!("{url}/v1/certs"))
                    .bearer_auth(&token)
                    .json(&json!({"public_key": key}))
                    .send()
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
                resp.json::<Value>().unwrap()["base"]["serial"]
                    .as_u64()
                    .unwrap()
            })
            .collect::<Vec<u64>>()
    });
    let local: Vec<u64> = (0..4)
        .map(|i| {
            let cert =
                s.ca.issue_break_glass(&key_file, &["break-glass"], "1m", &format!("drill {i}"))
                    .expect("break-glass issue while serve runs");
            Certificate::from_openssh(cert.trim()).unwrap().serial()
        })
        .collect();
    let online = online.join().unwrap();
    let mut all: Vec<u64> = online.iter().chain(local.iter()).copied().collect();
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(
        all.len(),
        n,
        "a serial was issued twice: {online:?} {local:?}"
    );
    assert!(
        online.windows(2).all(|w| w[0] < w[1]),
        "serials increase: {online:?}"
    );

    let mut server = s.server;
    server.stop().unwrap();
    let out = pedm_e2e::ca::audit_verify(&s.ca.data_dir);
    assert!(
        out.status.success(),
        "the chain breaks after concurrent writers: {}",
        pedm_e2e::ca::describe(&out)
    );
    let records = audit_actions(&s.ca);
    let issued = records
        .iter()
        .filter(|r| r["action"] == "cert.issue")
        .count();
    let bg = records
        .iter()
        .filter(|r| r["action"] == "cert.break-glass")
        .count();
    assert_eq!(
        (issued, bg),
        (40, 4),
        "every certificate has its audit record"
    );
}
