//! Token exchange for automation (`POST /v1/auth/token`) against the real CA: ID tokens of a
//! trusted issuer whose discovery document and JWKS the harness serves, minted with its test
//! key. Every refusal sits beside an accepted control.

use pedm_e2e::ca::{audit_export, describe, TestCa};
use pedm_e2e::env;
use pedm_e2e::keys::UserKey;
use pedm_e2e::signin::{call, problem_slug};
use pedm_e2e::token_issuer::{random_key, sign, TokenIssuer, KID};
use serde_json::{json, Value};

const AUD: &str = "pedm-ca-test";

fn config(issuer: &str) -> String {
    format!(
        r#"
[certs]
default_ttl = "10m"

[[roles]]
name = "engineer"
groups = ["eng"]
principals = ["{{username}}", "deploy"]
extensions = ["permit-pty"]

[[roles]]
name = "auditor"
groups = ["audit"]
principals = ["{{username}}"]

[[trusted_issuers]]
issuer = "{issuer}"
audience = "{AUD}"
principal_prefix = "ci"
roles_from = {{ claim = "repository", map = {{ "org/app" = "engineer", "org/docs" = "auditor" }} }}
max_cert_ttl = "2m"

[[elevations]]
name = "people-only"
principals = ["db-admin"]
eligible_roles = ["engineer"]
max_duration = "10m"
auto_approve = {{ reason_matches = "INC-[0-9]+" }}

[[elevations]]
name = "ci-deploy"
principals = ["deploy-admin"]
eligible_roles = ["engineer"]
eligible_issuers = ["{issuer}"]
max_duration = "10m"
auto_approve = {{ reason_matches = "INC-[0-9]+" }}

[[elevations]]
name = "ci-reviewed"
principals = ["release"]
eligible_roles = ["engineer"]
eligible_issuers = ["{issuer}"]
max_duration = "10m"
approval = {{ groups = ["security"], count = 1 }}
"#
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    server: pedm_e2e::ca::CaServer,
    issuer: TokenIssuer,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = TokenIssuer::start();
    let ca = TestCa::init(&dir.path().join("ca"), None).expect("pedm-ca init");
    let server = ca.serve(&config(&issuer.issuer)).expect("pedm-ca serve");
    Setup {
        _dir: dir,
        server,
        issuer,
    }
}

fn exchange(s: &Setup, token: &str) -> (u16, Value) {
    call(
        &s.server,
        "POST",
        "/v1/auth/token",
        Some(&json!({ "id_token": token })),
        None,
    )
}

fn app_claims(s: &Setup, subject: &str) -> serde_json::Map<String, Value> {
    s.issuer
        .claims(subject, AUD, json!({"repository": "org/app"}))
}

/// Exchanges a fresh valid token for `subject`; the session token.
fn session(s: &Setup, subject: &str) -> String {
    let (status, v) = exchange(s, &s.issuer.mint(&app_claims(s, subject)));
    assert_eq!(status, 200, "{v}");
    v["session_token"]
        .as_str()
        .expect("session_token")
        .to_string()
}

fn refused(s: &Setup, token: &str, what: &str) {
    let (status, v) = exchange(s, token);
    assert_eq!(status, 401, "{what}: {v}");
    assert_eq!(problem_slug(&v), "id-token-refused", "{what}: {v}");
}

#[test]
fn trusted_token_gets_a_prefixed_certificate() {
    if !env::require_ssh_keygen() {
        return;
    }
    let s = setup();
    let (status, v) = exchange(&s, &s.issuer.mint(&app_claims(&s, "alice")));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["user"], "ci.alice", "{v}");
    assert_eq!(v["principals"], json!(["ci.alice"]), "{v}");
    assert_eq!(v["roles"], json!(["engineer"]), "{v}");
    let token = v["session_token"]
        .as_str()
        .expect("session_token")
        .to_string();

    let (status, info) = call(&s.server, "GET", "/v1/session", None, Some(&token));
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["method"], "token");
    assert_eq!(info["auth_time"], Value::Null);
    assert_eq!(info["groups"], json!([]));
    assert_eq!(info["issuer"], json!(s.issuer.issuer));
    assert_eq!(info["subject"], "alice");

    let key = UserKey::generate(&s._dir.path().join("id_ci")).expect("ssh-keygen");
    let public = std::fs::read_to_string(&key.public).expect("public key");
    let (status, cert) = call(
        &s.server,
        "POST",
        "/v1/certs",
        Some(&json!({ "public_key": public.trim() })),
        Some(&token),
    );
    assert_eq!(status, 200, "{cert}");
    let base = &cert["base"];
    // Exactly the prefixed name: neither the role's `{username}` as "alice" nor its literal
    // "deploy" principal.
    assert_eq!(base["principals"], json!(["ci.alice"]), "{cert}");
    let serial = base["serial"].as_u64().expect("serial");
    assert_eq!(
        base["key_id"].as_str(),
        Some(format!("ci.alice serial={serial}").as_str()),
        "{cert}"
    );
    // TTL: the issuer's max_cert_ttl (2m) beats the default 10m.
    let life = base["valid_before"].as_i64().unwrap() - base["valid_after"].as_i64().unwrap();
    assert!(life <= 120 + 60 + 5, "{life}s: {cert}");
    let cert_file = s._dir.path().join("id_ci-cert.pub");
    std::fs::write(&cert_file, base["certificate"].as_str().unwrap()).unwrap();
    let info = pedm_e2e::keys::inspect_cert(&cert_file).expect("ssh-keygen -L");
    assert_eq!(info.principals, ["ci.alice"], "{}", info.text);
    assert_eq!(info.key_id, format!("ci.alice serial={serial}"));
    assert_eq!(info.extensions, ["permit-pty"], "{}", info.text);
    assert!(s.issuer.jwks_fetches() >= 1);
}

#[test]
fn refusals_beside_an_accepted_token() {
    let s = setup();
    // Control.
    session(&s, "build");

    // Signed by a key the issuer does not publish: same kid, and another kid.
    let other = random_key();
    refused(
        &s,
        &sign(&other, KID, &app_claims(&s, "build")),
        "same kid, other key",
    );
    refused(
        &s,
        &sign(&other, "unknown-kid", &app_claims(&s, "build")),
        "other kid",
    );

    // An issuer that is not trusted (a valid signature of the trusted key, even).
    let mut c = app_claims(&s, "build");
    c.insert("iss".into(), json!("http://127.0.0.1:1"));
    let (status, v) = exchange(&s, &s.issuer.mint(&c));
    assert_eq!(status, 401, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("not a trusted issuer"),
        "{v}"
    );
    let untrusted = TokenIssuer::start();
    refused(
        &s,
        &untrusted.mint(&untrusted.claims("build", AUD, json!({"repository": "org/app"}))),
        "untrusted issuer",
    );

    // Audience: wrong, and this CA's plus another.
    refused(
        &s,
        &s.issuer.mint(
            &s.issuer
                .claims("build", "other-ca", json!({"repository": "org/app"})),
        ),
        "wrong audience",
    );
    refused(
        &s,
        &s.issuer.mint(&s.issuer.claims(
            "build",
            AUD,
            json!({"repository": "org/app", "aud": [AUD, "other-ca"]}),
        )),
        "extra audience",
    );
    // Only this CA's, as a one-element array: accepted.
    let (status, v) = exchange(
        &s,
        &s.issuer.mint(&s.issuer.claims(
            "build",
            AUD,
            json!({"repository": "org/app", "aud": [AUD]}),
        )),
    );
    assert_eq!(status, 200, "{v}");

    // Expired.
    let now = pedm_e2e::keys::now_unix();
    refused(
        &s,
        &s.issuer.mint(&s.issuer.claims(
            "build",
            AUD,
            json!({"repository": "org/app", "iat": now - 900, "exp": now - 600}),
        )),
        "expired",
    );
    // No jti.
    refused(
        &s,
        &s.issuer.mint(&s.issuer.claims(
            "build",
            AUD,
            json!({"repository": "org/app", "jti": null}),
        )),
        "no jti",
    );
    // A subject that is not a safe name.
    refused(
        &s,
        &s.issuer.mint(
            &s.issuer
                .claims("Build/../x", AUD, json!({"repository": "org/app"})),
        ),
        "unsafe subject",
    );

    // Replay: the same token twice, only the first accepted.
    let token = s.issuer.mint(&app_claims(&s, "build"));
    assert_eq!(exchange(&s, &token).0, 200);
    refused(&s, &token, "replayed token");
    // The same jti in a differently signed-over token too.
    let mut c = app_claims(&s, "build");
    let jti = c["jti"].clone();
    assert_eq!(exchange(&s, &s.issuer.mint(&c)).0, 200);
    c.insert("sub".into(), json!("other"));
    c.insert("jti".into(), jti);
    refused(&s, &s.issuer.mint(&c), "replayed jti");

    // No mapped role: 403 no-role.
    let (status, v) = exchange(
        &s,
        &s.issuer.mint(
            &s.issuer
                .claims("build", AUD, json!({"repository": "org/unknown"})),
        ),
    );
    assert_eq!(status, 403, "{v}");
    assert_eq!(problem_slug(&v), "no-role", "{v}");

    // The refusals are audited as the browser flow's are.
    let out = audit_export(&s._dir.path().join("ca"));
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let refusals = text
        .lines()
        .filter(|l| l.contains("\"login.refused\"") && l.contains("token="))
        .count();
    assert!(refusals >= 10, "{refusals} token refusals audited:\n{text}");
    assert!(text.contains("replayed"), "{text}");
    assert!(text
        .lines()
        .any(|l| l.contains("\"login.denied\"") && l.contains("token=")));
}

fn request(s: &Setup, token: &str, elevation: &str, reason: &str) -> (u16, Value) {
    call(
        &s.server,
        "POST",
        "/v1/elevations",
        Some(&json!({"elevation": elevation, "reason": reason})),
        Some(token),
    )
}

#[test]
fn automation_elevations_need_eligible_issuers_and_never_approve() {
    let s = setup();
    let alice = session(&s, "alice");
    let bob = session(&s, "bob");

    // Not listed in eligible_issuers: 403, although the role and reason would auto-approve.
    let (status, v) = request(&s, &alice, "people-only", "INC-1");
    assert_eq!(status, 403, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("eligible_issuers"),
        "{v}"
    );
    // Listed: auto-approved.
    let (status, v) = request(&s, &alice, "ci-deploy", "INC-1");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "approved", "{v}");
    // Listed, approval rule: pending.
    let (status, v) = request(&s, &bob, "ci-reviewed", "release 1.2");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "pending", "{v}");
    let id = v["id"].as_str().expect("id").to_string();

    // A token identity approving: 403.
    let (status, v) = call(
        &s.server,
        "POST",
        &format!("/v1/elevations/{id}/approve"),
        Some(&json!({})),
        Some(&alice),
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("automation"),
        "{v}"
    );
    // Still pending.
    let (status, v) = call(
        &s.server,
        "GET",
        &format!("/v1/elevations/{id}"),
        None,
        Some(&bob),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "pending", "{v}");

    // A token whose roles are not eligible (auditor) is refused even where its issuer is listed.
    let (status, v) = exchange(
        &s,
        &s.issuer.mint(
            &s.issuer
                .claims("docs", AUD, json!({"repository": "org/docs"})),
        ),
    );
    assert_eq!(status, 200, "{v}");
    let docs = v["session_token"].as_str().unwrap().to_string();
    let (status, v) = request(&s, &docs, "ci-deploy", "INC-1");
    assert_ne!(status, 200, "{v}");
}

#[test]
fn cli_login_with_an_id_token_file() {
    use std::os::unix::fs::PermissionsExt as _;
    if !env::require_ssh_keygen() {
        return;
    }
    let s = setup();
    let home = s._dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let key = home.join("id_ci");
    let token_file = home.join("token");
    std::fs::write(&token_file, s.issuer.mint(&app_claims(&s, "alice"))).unwrap();
    // Readable by others: refused before anything is sent.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = pedm_e2e::signin::pedm_ssh(&home)
        .args(["login", "--ca", s.server.url(), "--id-token-file"])
        .arg(&token_file)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0644"),
        "{}",
        describe(&out)
    );
    assert!(!home.join("id_ci-cert.pub").exists());

    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = pedm_e2e::signin::pedm_ssh(&home)
        .args(["login", "--ca", s.server.url(), "--id-token-file"])
        .arg(&token_file)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let cert = home.join("id_ci-cert.pub");
    let info = pedm_e2e::keys::inspect_cert(&cert).expect("the certificate file");
    assert_eq!(info.principals, ["ci.alice"], "{}", info.text);

    // The same file again: the jti was used, refused (exit non-zero).
    let out = pedm_e2e::signin::pedm_ssh(&home)
        .args(["login", "--ca", s.server.url(), "--id-token-file"])
        .arg(&token_file)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("replayed"),
        "the refusal must be the replay: {}",
        describe(&out)
    );
}
