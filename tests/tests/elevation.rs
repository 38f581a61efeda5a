//! Just-in-time elevation end to end: the real test IdP, the real CA, and (for the login
//! checks) a real sshd whose account `pedm-postgres` accepts only the `db-admin` principal.
//!
//! The account is a test account of ours rather than the system's `postgres`, which exists on
//! machines with PostgreSQL installed and is locked (no login) there.

use pedm_e2e::ca::{audit_export, audit_verify, describe};
use pedm_e2e::keys::{now_unix, UserKey};
use pedm_e2e::signin::{api_login, call, problem_slug, SignInSetup};
use pedm_e2e::sshd::TestSshd;
use pedm_e2e::{env, users};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PG: &str = "pedm-postgres";
const LOG_WAIT: Duration = Duration::from_secs(15);

/// Elevations with second-long clocks, beside the harness's `db-admin` (count 1, auto for
/// oncall with `INC-[0-9]+`).
const ELEVATIONS: &str = r#"
[[elevations]]
name = "db-admin-2"
principals = ["db-admin"]
eligible_roles = ["engineer"]
max_duration = "30m"
approval = { groups = ["security"], count = 2 }

[[elevations]]
name = "short-pending"
principals = ["db-admin"]
eligible_roles = ["engineer"]
max_duration = "30m"
pending_timeout = "2s"
approval = { groups = ["security"], count = 1 }

[[elevations]]
name = "short-use"
principals = ["db-admin"]
eligible_roles = ["engineer"]
max_duration = "30m"
use_within = "2s"
approval = { groups = ["security"], count = 1 }
"#;

fn setup() -> Option<SignInSetup> {
    SignInSetup::start_with(ELEVATIONS).expect("IdP and CA")
}

fn request(s: &SignInSetup, token: &str, elevation: &str, reason: &str, secs: u64) -> (u16, Value) {
    call(
        &s.server,
        "POST",
        "/v1/elevations",
        Some(&json!({"elevation": elevation, "reason": reason, "duration_secs": secs})),
        Some(token),
    )
}

fn act(
    s: &SignInSetup,
    token: &str,
    id: &str,
    action: &str,
    comment: Option<&str>,
) -> (u16, Value) {
    let body = match comment {
        Some(c) => json!({ "comment": c }),
        None => json!({}),
    };
    call(
        &s.server,
        "POST",
        &format!("/v1/elevations/{id}/{action}"),
        Some(&body),
        Some(token),
    )
}

fn certs(s: &SignInSetup, token: &str, key: &str, elevation: Option<&str>) -> (u16, Value) {
    let mut body = json!({ "public_key": key });
    if let Some(id) = elevation {
        body["elevation_id"] = json!(id);
    }
    call(&s.server, "POST", "/v1/certs", Some(&body), Some(token))
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

fn wait_until(t: i64) {
    while now_unix() <= t {
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{}\n", text.trim())).unwrap();
    p
}

#[test]
fn bob_elevates_with_carols_approval_logs_in_as_postgres_and_the_grant_ends_by_itself() {
    if !env::require_root_and_sshd() {
        return;
    }
    let Some(s) = setup() else { return };
    users::ensure_user("bob");
    users::ensure_user(PG);
    let sshd = TestSshd::start(
        s.server.url(),
        &s.ca.trust_root,
        &format!("[accounts]\n{PG} = [\"db-admin\"]\n"),
    )
    .expect("sshd");
    let dir = s.dir.path();
    let key = UserKey::generate(&dir.join("bob_key")).unwrap();
    let public = std::fs::read_to_string(&key.public).unwrap();
    let bob = api_login(&s.server, "bob", false).unwrap();
    let carol = api_login(&s.server, "carol", false).unwrap();

    // Without elevation bob is bob, not postgres.
    let (st, c) = certs(&s, &bob, &public, None);
    assert_eq!(st, 200, "{c}");
    let base0 = write(
        dir,
        "base0.cert",
        c["base"]["certificate"].as_str().unwrap(),
    );
    let mark = sshd.log_mark();
    let out = sshd.ssh(PG, &key.private, Some(&base0), "id -un");
    assert!(
        !out.status.success(),
        "bob got in as {PG} without elevation"
    );
    sshd.wait_for_log_since(
        mark,
        "Certificate does not contain an authorized principal",
        LOG_WAIT,
    )
    .unwrap();

    // Request (a person must approve: bob is not on call), carol approves.
    let (st, r) = request(&s, &bob, "db-admin", "INC-1234 reindex", 6);
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["state"], "pending", "{r}");
    let id = id_of(&r);
    let (st, p) = certs(&s, &bob, &public, Some(&id));
    assert_eq!(
        (st, problem_slug(&p)),
        (409, "conflict".into()),
        "pending is not usable: {p}"
    );
    let (st, list) = call(
        &s.server,
        "GET",
        "/v1/elevations?approvable=true",
        None,
        Some(&carol),
    );
    assert_eq!(st, 200);
    let shown = &list["elevations"][0];
    assert_eq!(
        (shown["id"].as_str(), shown["requester"].as_str()),
        (Some(id.as_str()), Some("bob"))
    );
    assert_eq!(shown["reason"], "INC-1234 reindex");
    let (st, a) = act(&s, &carol, &id, "approve", Some("ok"));
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["state"], "approved");
    assert_eq!(a["approved_by"], json!(["carol"]));

    // The clock starts at the first certificate.
    let (st, c) = certs(&s, &bob, &public, Some(&id));
    assert_eq!(st, 200, "{c}");
    let elev = &c["elevation"]["cert"];
    let serial = elev["serial"].as_u64().unwrap();
    assert_eq!(elev["key_id"], format!("bob serial={serial} elev={id}"));
    assert_eq!(elev["principals"], json!(["db-admin"]));
    assert_eq!(c["base"]["principals"], json!(["bob"]));
    let (_, now_view) = call(
        &s.server,
        "GET",
        &format!("/v1/elevations/{id}"),
        None,
        Some(&bob),
    );
    assert_eq!(now_view["state"], "active", "{now_view}");
    let ends_at = now_view["ends_at"].as_i64().unwrap();
    assert!(
        elev["valid_before"].as_i64().unwrap() <= ends_at,
        "outlives the grant"
    );
    let elev_cert = write(dir, "elev.cert", elev["certificate"].as_str().unwrap());
    let base = write(dir, "base.cert", c["base"]["certificate"].as_str().unwrap());
    let mark = sshd.log_mark();
    let out = sshd.ssh(PG, &key.private, Some(&elev_cert), "id -un");
    assert!(
        out.status.success(),
        "elevated login: {}\n{}",
        describe(&out),
        sshd.logs()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), PG);
    sshd.wait_for_log_since(mark, &format!("elev={id}"), LOG_WAIT)
        .unwrap();

    // After the grant's end: no new elevated certificate, the old one is refused, the base
    // certificate still works.
    wait_until(ends_at);
    let (st, p) = certs(&s, &bob, &public, Some(&id));
    assert_eq!((st, problem_slug(&p)), (409, "conflict".into()), "{p}");
    let mark = sshd.log_mark();
    let out = sshd.ssh(PG, &key.private, Some(&elev_cert), "id -un");
    assert!(
        !out.status.success(),
        "the elevated certificate outlived its grant"
    );
    sshd.wait_for_log_since(mark, "Certificate invalid: expired", LOG_WAIT)
        .unwrap();
    let out = sshd.ssh("bob", &key.private, Some(&base), "id -un");
    assert!(
        out.status.success(),
        "the base certificate died with the elevation: {}",
        describe(&out)
    );

    // The audit log verifies and shows every step with its actor.
    let mut server = s.server;
    server.stop().unwrap();
    let v = audit_verify(&s.ca.data_dir);
    assert!(v.status.success(), "{}", describe(&v));
    let records: Vec<Value> = String::from_utf8_lossy(&audit_export(&s.ca.data_dir).stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["subject"] == format!("elevation={id}"))
        .collect();
    let steps: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap().into(),
                r["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("bob", "elevation.request"),
        ("carol", "elevation.approve"),
        ("bob", "elevation.activate"),
        ("system", "elevation.expired"),
    ];
    for (actor, action) in want {
        assert!(
            steps.iter().any(|(a, b)| a == actor && b == action),
            "no ({actor}, {action}) in {steps:?}"
        );
    }
}

#[test]
fn auto_approval_needs_every_condition_and_the_whole_reason() {
    let Some(s) = setup() else { return };
    let alice = api_login(&s.server, "alice", false).unwrap();
    let bob = api_login(&s.server, "bob", false).unwrap();
    for (token, reason, want) in [
        (&alice, "INC-1234", "approved"),
        (&alice, "INC-1 give me root", "pending"),
        (&alice, "because", "pending"),
        (&bob, "INC-1234", "pending"),
    ] {
        let (st, r) = request(&s, token, "db-admin", reason, 60);
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["state"], want, "{reason}: {r}");
    }
    // Bad reasons and durations are refused with what was wrong.
    for bad in ["two\nlines", "ansi \u{1b}[2J", "", &"x".repeat(201)] {
        let (st, p) = request(&s, &alice, "db-admin", bad, 60);
        assert_eq!(
            (st, problem_slug(&p)),
            (400, "invalid-reason".into()),
            "{bad:?}: {p}"
        );
    }
    let (st, p) = request(&s, &alice, "db-admin", "INC-1234", 3 * 3600);
    assert_eq!(
        (st, problem_slug(&p)),
        (403, "elevation-refused".into()),
        "{p}"
    );
    assert!(
        p["detail"].as_str().unwrap().contains("30m"),
        "states the maximum: {p}"
    );
    let (st, p) = request(&s, &alice, "no-such", "INC-1234", 60);
    assert_eq!(
        (st, problem_slug(&p)),
        (403, "elevation-refused".into()),
        "{p}"
    );
    // carol (security only) is not eligible.
    let carol = api_login(&s.server, "carol", false).unwrap();
    let (st, p) = request(&s, &carol, "db-admin", "INC-1234", 60);
    assert_eq!(
        (st, problem_slug(&p)),
        (403, "elevation-refused".into()),
        "{p}"
    );
}

#[test]
fn approvals_count_people_never_the_requester_and_only_while_pending() {
    let Some(s) = setup() else { return };
    let bob = api_login(&s.server, "bob", false).unwrap();
    let carol = api_login(&s.server, "carol", false).unwrap();
    let erin = api_login(&s.server, "erin", false).unwrap();
    let alice = api_login(&s.server, "alice", false).unwrap();

    // erin cannot approve her own request; carol can.
    let (_, r) = request(&s, &erin, "db-admin", "because", 60);
    let own = id_of(&r);
    let (st, p) = act(&s, &erin, &own, "approve", None);
    assert_eq!((st, problem_slug(&p)), (403, "forbidden".into()), "{p}");
    let (st, a) = act(&s, &carol, &own, "approve", None);
    assert_eq!((st, a["state"].as_str()), (200, Some("approved")), "{a}");

    // count = 2: carol twice is one approval; carol and erin are two.
    let (_, r) = request(&s, &bob, "db-admin-2", "because", 60);
    let two = id_of(&r);
    let (st, a) = act(&s, &carol, &two, "approve", None);
    assert_eq!(
        (st, a["state"].as_str(), a["approvals_needed"].as_u64()),
        (200, Some("pending"), Some(1)),
        "{a}"
    );
    let (st, p) = act(&s, &carol, &two, "approve", None);
    assert_eq!(st, 409, "a second approval by the same person: {p}");
    assert!(p["detail"].as_str().unwrap().contains("counts once"), "{p}");
    let (_, still) = call(
        &s.server,
        "GET",
        &format!("/v1/elevations/{two}"),
        None,
        Some(&bob),
    );
    assert_eq!(still["state"], "pending");
    // alice is not in security.
    let (st, p) = act(&s, &alice, &two, "approve", None);
    assert_eq!((st, problem_slug(&p)), (403, "forbidden".into()), "{p}");
    let (st, a) = act(&s, &erin, &two, "approve", None);
    assert_eq!((st, a["state"].as_str()), (200, Some("approved")), "{a}");
    assert_eq!(a["approved_by"], json!(["carol", "erin"]));

    // Denied: cannot be used or approved afterwards.
    let (_, r) = request(&s, &bob, "db-admin", "because", 60);
    let denied = id_of(&r);
    let (st, p) = act(&s, &carol, &denied, "deny", None);
    assert_eq!(
        (st, problem_slug(&p)),
        (400, "invalid-reason".into()),
        "a denial needs a comment: {p}"
    );
    let (st, d) = act(&s, &carol, &denied, "deny", Some("not during the freeze"));
    assert_eq!((st, d["state"].as_str()), (200, Some("denied")), "{d}");
    let (st, p) = certs(
        &s,
        &bob,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKcDSA8Gc9P1UOVhIHWe4sKpb4FbCsW2Bsuq4Mmv0uZS",
        Some(&denied),
    );
    assert_eq!((st, problem_slug(&p)), (409, "conflict".into()), "{p}");
    let (st, _) = act(&s, &erin, &denied, "approve", None);
    assert_eq!(st, 409);

    // Past its pending timeout a request cannot be approved.
    let (_, r) = request(&s, &bob, "short-pending", "because", 60);
    let stale = id_of(&r);
    wait_until(r["deadline"].as_i64().unwrap());
    let (st, p) = act(&s, &carol, &stale, "approve", None);
    assert_eq!((st, problem_slug(&p)), (409, "conflict".into()), "{p}");
    // Approved but unused past use_within: lapsed.
    let (_, r) = request(&s, &bob, "short-use", "because", 60);
    let unused = id_of(&r);
    let (_, a) = act(&s, &carol, &unused, "approve", None);
    wait_until(a["deadline"].as_i64().unwrap());
    let (_, v) = call(
        &s.server,
        "GET",
        &format!("/v1/elevations/{unused}"),
        None,
        Some(&bob),
    );
    assert_eq!(v["state"], "lapsed", "{v}");
    let key = UserKey::generate(&s.dir.path().join("k")).unwrap();
    let public = std::fs::read_to_string(&key.public).unwrap();
    let (st, _) = certs(&s, &bob, &public, Some(&unused));
    assert_eq!(st, 409);

    // Cancel is the requester's; revoke is an approver's or an admin's.
    let (_, r) = request(&s, &bob, "db-admin", "because", 60);
    let c = id_of(&r);
    let (st, _) = act(&s, &alice, &c, "cancel", None);
    assert_eq!(st, 403);
    let (st, v) = act(&s, &bob, &c, "cancel", None);
    assert_eq!((st, v["state"].as_str()), (200, Some("cancelled")));
    let (_, r) = request(&s, &alice, "db-admin", "INC-77", 60);
    let auto = id_of(&r);
    let (st, _) = act(&s, &bob, &auto, "revoke", None);
    assert_eq!(st, 403, "bob is neither approver nor admin");
    let (st, v) = act(&s, &carol, &auto, "revoke", Some("done"));
    assert_eq!((st, v["state"].as_str()), (200, Some("revoked")));
    let (st, _) = certs(&s, &alice, &public, Some(&auto));
    assert_eq!(st, 409, "a revoked grant issues nothing");
}

#[test]
fn nobody_uses_anothers_elevation_and_a_privileged_username_gets_nothing() {
    let Some(s) = setup() else { return };
    let alice = api_login(&s.server, "alice", false).unwrap();
    let bob = api_login(&s.server, "bob", false).unwrap();
    let (_, r) = request(&s, &alice, "db-admin", "INC-1234", 60);
    assert_eq!(r["state"], "approved");
    let id = id_of(&r);
    let key = UserKey::generate(&s.dir.path().join("k")).unwrap();
    let public = std::fs::read_to_string(&key.public).unwrap();
    let (st, p) = certs(&s, &bob, &public, Some(&id));
    assert_eq!((st, problem_slug(&p)), (404, "not-found".into()), "{p}");
    let (st, _) = call(
        &s.server,
        "GET",
        &format!("/v1/elevations/{id}"),
        None,
        Some(&bob),
    );
    assert_eq!(st, 404, "bob may not even see it");
    let (st, c) = certs(&s, &alice, &public, Some(&id));
    assert_eq!(st, 200, "positive control: {c}");
    // An IdP user named after the principal an elevation grants.
    let err = api_login(&s.server, "hostile-dbadmin", false).unwrap_err();
    assert!(format!("{err:#}").contains("username-refused"), "{err:#}");
}

#[test]
fn a_stale_approver_sign_in_is_refused_until_reauth() {
    // An approver_recent_auth of seconds.
    let Some(s) =
        SignInSetup::start_with_admin("approver_recent_auth = \"2s\"\n", "").expect("setup")
    else {
        return;
    };
    let bob = api_login(&s.server, "bob", false).unwrap();
    let carol = api_login(&s.server, "carol", false).unwrap();
    let (_, r) = request(&s, &bob, "db-admin", "because", 60);
    let id = id_of(&r);
    std::thread::sleep(Duration::from_secs(3));
    let (st, p) = act(&s, &carol, &id, "approve", None);
    assert_eq!(
        (st, problem_slug(&p)),
        (401, "reauth-required".into()),
        "{p}"
    );
    assert!(p["detail"].as_str().unwrap().contains("--reauth"), "{p}");
    let carol2 = api_login(&s.server, "carol", true).unwrap();
    let (st, a) = act(&s, &carol2, &id, "approve", None);
    assert_eq!((st, a["state"].as_str()), (200, Some("approved")), "{a}");
}

fn cli_ok(home: &Path, args: &[&str]) -> std::process::Output {
    pedm_e2e::signin::pedm_ssh(home)
        .args(args)
        .output()
        .expect("running pedm-ssh")
}

#[test]
fn the_cli_elevates_waits_for_a_person_and_the_elevated_certificate_opens_postgres() {
    if !env::require_root_and_sshd() {
        return;
    }
    let Some(s) = setup() else { return };
    users::ensure_user("bob");
    users::ensure_user(PG);
    let sshd = TestSshd::start(
        s.server.url(),
        &s.ca.trust_root,
        &format!("[accounts]\n{PG} = [\"db-admin\"]\n"),
    )
    .expect("sshd");
    let url = s.server.url().to_string();
    let homes: Vec<PathBuf> = ["bob", "carol"]
        .iter()
        .map(|u| {
            let h = s.dir.path().join(format!("{u}-home"));
            std::fs::create_dir_all(&h).unwrap();
            let out = pedm_e2e::signin::cli_login(&url, &h, &h.join(".ssh/pedm_ed25519"), u)
                .expect("login");
            assert!(out.status.success(), "{u}: {}", describe(&out));
            h
        })
        .collect();
    let (bob, carol) = (&homes[0], &homes[1]);

    // bob asks; not on call, so it waits for a person: exit 5 with the ID.
    let out = cli_ok(
        bob,
        &[
            "elevate",
            "db-admin",
            "--reason",
            "INC-4711 vacuum",
            "--for",
            "5m",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no id line in {text}"))
        .trim()
        .to_string();

    // carol sees it and approves without a terminal, so with --yes.
    let out = cli_ok(carol, &["requests", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["elevations"][0]["id"], id.as_str(), "{list}");
    let out = cli_ok(carol, &["approve", &id]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no terminal, no --yes: {}",
        describe(&out)
    );
    let out = cli_ok(carol, &["approve", &id, "--yes", "--comment", "go"]);
    assert!(out.status.success(), "{}", describe(&out));

    // bob fetches: PATH-elev-db-admin-cert.pub beside his key opens postgres.
    let out = cli_ok(bob, &["elevate", "--fetch", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    let key = bob.join(".ssh/pedm_ed25519");
    let elev = bob.join(".ssh/pedm_ed25519-elev-db-admin-cert.pub");
    assert!(elev.exists(), "no elevated certificate file");
    // Offer only the elevated certificate (a copy of the key without the base one beside it).
    let only = s.dir.path().join("bob-elev-only");
    std::fs::copy(&key, &only).unwrap();
    let mark = sshd.log_mark();
    let ran = sshd.ssh(PG, &only, Some(&elev), "id -un");
    assert!(ran.status.success(), "{}\n{}", describe(&ran), sshd.logs());
    sshd.wait_for_log_since(mark, &format!("elev={id}"), LOG_WAIT)
        .unwrap();
    let out = cli_ok(bob, &["elevations", "--json"]);
    let mine: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mine["elevations"][0]["state"], "active", "{mine}");
    // bob cancels his own grant; the CA then issues nothing for it.
    let out = cli_ok(bob, &["cancel", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = cli_ok(bob, &["elevate", "--fetch", &id]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
}
