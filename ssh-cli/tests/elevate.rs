//! Elevations end to end against the fake CA: the real `pedm-ssh` binary asks, waits,
//! fetches, lists and decides; a real ssh-agent receives the certificates.

mod common;

use common::*;
use pedm_api::{ElevationState, ElevationView};
use std::path::Path;
use std::process::Command;

/// `pedm-ssh ARGS` in `home` with a fast poll.
fn cmd(home: &Home, args: &[&str]) -> Command {
    let mut c = home.command(args);
    c.env("PEDM_SSH_POLL_MS", "50");
    c
}

async fn run_async(c: Command) -> Run {
    tokio::task::spawn_blocking(move || run(c)).await.unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn read_line(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// `ssh-keygen -L -f PATH`.
fn keygen_listing(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn elev_cert(home: &Home) -> std::path::PathBuf {
    home.home().join(".ssh/pedm_ed25519-elev-db-admin-cert.pub")
}

fn base_cert(home: &Home) -> std::path::PathBuf {
    home.home().join(".ssh/pedm_ed25519-cert.pub")
}

fn only_elevation_id(ca: &FakeCa) -> String {
    let s = ca.state.lock().unwrap();
    assert_eq!(s.elevations.len(), 1, "{:?}", s.elevations);
    s.elevations[0].id.clone()
}

/// A pending request by `requester`, put straight into the fake CA's store.
fn pending_view(id: &str, requester: &str, reason: &str) -> ElevationView {
    let t = now();
    ElevationView {
        id: id.into(),
        requester: requester.into(),
        elevation: "db-admin".into(),
        principals: vec!["db-admin".into()],
        reason: reason.into(),
        duration_secs: 900,
        state: ElevationState::Pending,
        created_at: t - 90,
        approved_at: None,
        approved_by: vec![],
        approvals_needed: 1,
        started_at: None,
        ends_at: None,
        deadline: Some(t + 3000),
        decisions: vec![],
        recent: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_at_once_writes_both_certificates_and_loads_both_into_the_agent() {
    let agent = Agent::start();
    let ca = FakeCa::start(Behaviour {
        auto_approve: true,
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    let sock = agent.sock.to_str().unwrap().to_string();
    let mut c = cmd(
        &home,
        &["elevate", "db-admin", "--reason", "INC-1234", "--for", "5m"],
    );
    c.env("SSH_AUTH_SOCK", &sock);
    let r = run_async(c).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let id = only_elevation_id(&ca);
    assert!(r.stdout.contains(&format!("(request {id})")), "{r:?}");
    assert!(
        r.stdout.contains("approved by policy (automatic)\n"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(&format!(
            "elevated certificate: {}\n",
            elev_cert(&home).display()
        )),
        "{r:?}"
    );
    assert!(r.stdout.contains("principals: db-admin\n"), "{r:?}");
    // Each for its own remaining life (the CA's clock may tick a second meanwhile).
    assert!(
        r.stdout.contains("ssh-agent: added for 5m 0s\n")
            || r.stdout.contains("ssh-agent: added for 4m 59s\n"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("ssh-agent (base): added for 10m 0s\n")
            || r.stdout.contains("ssh-agent (base): added for 9m 59s\n"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("warning"), "{r:?}");

    // What was asked for, and that the certificate request named the elevation.
    {
        let s = ca.state.lock().unwrap();
        assert_eq!(s.elevation_requests.len(), 1);
        assert_eq!(s.elevation_requests[0].elevation, "db-admin");
        assert_eq!(s.elevation_requests[0].reason, "INC-1234");
        assert_eq!(s.elevation_requests[0].duration_secs, Some(300));
        assert_eq!(s.cert_elevation_ids, vec![Some(id.clone())]);
        // The files hold exactly what the CA issued in that one answer.
        assert_eq!(
            read_line(&elev_cert(&home)),
            s.last_elevated_cert.clone().unwrap()
        );
        assert_eq!(
            read_line(&base_cert(&home)),
            s.last_base_cert.clone().unwrap()
        );
    }
    let elev = keygen_listing(&elev_cert(&home));
    assert!(
        elev.contains(&format!("Key ID: \"alice serial=101 elev={id}\"")),
        "{elev}"
    );
    assert!(
        elev.contains("Principals: \n                db-admin\n"),
        "{elev}"
    );
    let base = keygen_listing(&base_cert(&home));
    assert!(base.contains("Key ID: \"alice serial=102\""), "{base}");
    assert!(
        base.contains("Principals: \n                alice\n"),
        "{base}"
    );

    // The agent holds the key with both certificates, each the one on disk.
    let listed = agent.list_public();
    let cert_blobs: Vec<&str> = listed
        .lines()
        .filter(|l| l.starts_with("ssh-ed25519-cert-v01@openssh.com "))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(cert_blobs.len(), 2, "{listed}");
    for file in [elev_cert(&home), base_cert(&home)] {
        let blob = read_line(&file).split(' ').nth(1).unwrap().to_string();
        assert!(
            cert_blobs.contains(&blob.as_str()),
            "{file:?} not in {listed}"
        );
    }
    // No temporary key copy is left anywhere near the key (nor the directory holding it).
    assert_eq!(
        names_in(&home.home().join(".ssh")),
        vec![
            "pedm_ed25519",
            "pedm_ed25519-cert.pub",
            "pedm_ed25519-elev-db-admin-cert.pub",
            "pedm_ed25519.pub"
        ]
    );

    // `status` shows it beside the base certificate.
    let r = run_async(cmd(&home, &["status"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "elevated certificate: {} (principals db-admin; until ",
            elev_cert(&home).display()
        )),
        "{r:?}"
    );

    // Logout takes the elevated certificate out of the agent too.
    let mut c = cmd(&home, &["logout"]);
    c.env("SSH_AUTH_SOCK", &sock);
    let r = run_async(c).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let listed = agent.list_public();
    assert!(!listed.contains("ssh-ed25519"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_request_exits_5_with_its_id_and_fetch_gets_it_later() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let alice = Home::new();
    alice.plant_session(&ca, "alice");
    let carol = Home::new();
    carol.plant_session(&ca, "carol");

    let r = run_async(cmd(&alice, &["elevate", "db-admin", "--reason", "INC-9"])).await;
    assert_eq!(r.code, Some(5), "{r:?}");
    let id = only_elevation_id(&ca);
    assert!(r.stdout.contains(&format!("\nid: {id}\n")), "{r:?}");
    assert!(
        r.stdout
            .contains("is pending, 1 approval needed, times out in"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(&format!("pedm-ssh elevate --fetch {id}")),
        "{r:?}"
    );
    assert!(!elev_cert(&alice).exists());
    assert!(ca.state.lock().unwrap().cert_elevation_ids.is_empty());
    // The duration was left to the CA (its maximum).
    assert_eq!(
        ca.state.lock().unwrap().elevation_requests[0].duration_secs,
        None
    );

    // Still pending: --fetch says so with exit 5 and asks for no certificate.
    let r = run_async(cmd(&alice, &["elevate", "--fetch", &id])).await;
    assert_eq!(r.code, Some(5), "{r:?}");
    assert!(ca.state.lock().unwrap().cert_elevation_ids.is_empty());

    // `elevations` shows it with its time left.
    let r = run_async(cmd(&alice, &["elevations"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let row = r.stdout.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        row.contains("pending")
            && (row.contains("times out in 1h 0m") || row.contains("times out in 59m 5")),
        "{r:?}"
    );

    let r = run_async(cmd(&carol, &["approve", &id, "--yes"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let r = run_async(cmd(&alice, &["elevate", "--fetch", &id])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("approved by carol\n"), "{r:?}");
    assert!(elev_cert(&alice).exists() && base_cert(&alice).exists());
    assert_eq!(ca.elevation(&id).state, ElevationState::Active);

    let r = run_async(cmd(&alice, &["elevations"])).await;
    let row = r.stdout.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        row.contains("active") && (row.contains("ends in 30m 0s") || row.contains("ends in 29m 5")),
        "{r:?}"
    );
}

/// Starts `elevate --wait` for `home` and returns once it reports the pending state.
async fn start_waiting(home: &Home) -> (Proc, Vec<String>, std::sync::mpsc::Receiver<String>) {
    let c = cmd(
        home,
        &["elevate", "db-admin", "--reason", "INC-77", "--wait"],
    );
    tokio::task::spawn_blocking(move || {
        let (child, _line, lines, rx) =
            spawn_until_line(c, |l| l.starts_with("waiting for approval of "));
        (child, lines, rx)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_follows_pending_to_approved_names_the_approver_and_fetches() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let alice = Home::new();
    alice.plant_session(&ca, "alice");
    let carol = Home::new();
    carol.plant_session(&ca, "carol");
    let (child, lines, rx) = start_waiting(&alice).await;
    let id = only_elevation_id(&ca);
    assert!(
        lines
            .last()
            .unwrap()
            .contains(&format!("{id}: pending, 1 approval needed")),
        "{lines:?}"
    );
    // The approval comes from another user while alice's pedm-ssh polls.
    let r = run_async(cmd(&carol, &["approve", &id, "--yes", "--comment", "ok"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("approved by carol"), "{r:?}");

    let r = tokio::task::spawn_blocking(move || finish(child, Some((lines, rx))))
        .await
        .unwrap();
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("approved by carol\n"), "{r:?}");
    assert!(r.stdout.contains("elevated certificate: "), "{r:?}");
    // Not a terminal: one line per state change, not one per poll.
    assert_eq!(
        r.stderr
            .lines()
            .filter(|l| l.starts_with("waiting for approval"))
            .count(),
        1,
        "{r:?}"
    );
    assert!(
        !r.stderr.contains('\r') && !r.stderr.contains('\u{1b}'),
        "{r:?}"
    );
    assert!(elev_cert(&alice).exists());
    assert_eq!(
        ca.state.lock().unwrap().cert_elevation_ids,
        vec![Some(id.clone())]
    );
    assert_eq!(
        ca.state.lock().unwrap().decisions,
        vec![(id, "approve".into(), "carol".into(), Some("ok".into()))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ends_with_exit_4_when_denied() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let alice = Home::new();
    alice.plant_session(&ca, "alice");
    let carol = Home::new();
    carol.plant_session(&ca, "carol");
    let (child, lines, rx) = start_waiting(&alice).await;
    let id = only_elevation_id(&ca);
    let r = run_async(cmd(
        &carol,
        &["deny", &id, "--comment", "use the read-only role"],
    ))
    .await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("denied"), "{r:?}");
    let r = tokio::task::spawn_blocking(move || finish(child, Some((lines, rx))))
        .await
        .unwrap();
    assert_eq!(r.code, Some(4), "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "request {id} was denied by carol: use the read-only role"
        )),
        "{r:?}"
    );
    assert!(!elev_cert(&alice).exists());
    assert!(ca.state.lock().unwrap().cert_elevation_ids.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_gives_up_with_exit_1_after_its_timeout() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let alice = Home::new();
    alice.plant_session(&ca, "alice");
    let r = run_async(cmd(
        &alice,
        &[
            "elevate",
            "db-admin",
            "--reason",
            "INC-1",
            "--wait",
            "--timeout",
            "1s",
        ],
    ))
    .await;
    assert_eq!(r.code, Some(1), "{r:?}");
    let id = only_elevation_id(&ca);
    assert!(
        r.stderr.contains(&format!(
            "gave up waiting after 1s: request {id} is still pending"
        )),
        "{r:?}"
    );
    assert!(r.stderr.contains(&format!("pedm-ssh cancel {id}")), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_an_existing_request_reports_its_end() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let alice = Home::new();
    alice.plant_session(&ca, "alice");
    let mut v = pending_view("abc123abc123", "alice", "INC-5");
    v.state = ElevationState::TimedOut;
    ca.insert_elevation(v);
    let r = run_async(cmd(
        &alice,
        &["elevate", "--fetch", "abc123abc123", "--wait"],
    ))
    .await;
    assert_eq!(r.code, Some(4), "{r:?}");
    assert!(r.stderr.contains("timed out"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_without_a_terminal_needs_yes_and_sends_nothing_otherwise() {
    let ca = FakeCa::start(Behaviour::default()).await;
    ca.insert_elevation(pending_view("req000000001", "bob", "INC-42"));
    let carol = Home::new();
    carol.plant_session(&ca, "carol");

    let r = run_async(cmd(&carol, &["approve", "req000000001"])).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("--yes"), "{r:?}");
    assert!(r.stderr.contains("nothing was sent"), "{r:?}");
    assert!(ca.state.lock().unwrap().decisions.is_empty());
    assert_eq!(ca.elevation("req000000001").state, ElevationState::Pending);

    let r = run_async(cmd(&carol, &["approve", "req000000001", "--yes"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("  requester:  bob\n"), "{r:?}");
    assert!(r.stdout.contains("  reason:     INC-42\n"), "{r:?}");
    assert!(r.stdout.contains("  duration:   15m\n"), "{r:?}");
    assert!(
        r.stdout
            .contains("approved req000000001 (bob's db-admin): approved by carol\n"),
        "{r:?}"
    );
    assert_eq!(
        ca.state.lock().unwrap().decisions,
        vec![(
            "req000000001".to_string(),
            "approve".to_string(),
            "carol".to_string(),
            None
        )]
    );
    assert_eq!(ca.elevation("req000000001").state, ElevationState::Approved);

    // Not pending any more: nothing to approve, nothing sent.
    let r = run_async(cmd(&carol, &["approve", "req000000001", "--yes"])).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("is approved, not pending"), "{r:?}");
    assert_eq!(ca.state.lock().unwrap().decisions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_needs_a_comment_cancel_and_revoke_send_theirs() {
    let ca = FakeCa::start(Behaviour::default()).await;
    ca.insert_elevation(pending_view("req000000001", "bob", "INC-42"));
    ca.insert_elevation(pending_view("req000000002", "bob", "INC-43"));
    let carol = Home::new();
    carol.plant_session(&ca, "carol");
    let bob = Home::new();
    bob.plant_session(&ca, "bob");

    let r = run_async(cmd(&carol, &["deny", "req000000001"])).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("--comment"), "{r:?}");
    // A comment that breaks the rule is refused before it is sent.
    let r = run_async(cmd(&carol, &["deny", "req000000001", "--comment", "a\nb"])).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("1-200 printable characters"), "{r:?}");
    assert!(ca.state.lock().unwrap().decisions.is_empty());

    let r = run_async(cmd(&carol, &["deny", "req000000001", "--comment", "no"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(ca.elevation("req000000001").state, ElevationState::Denied);

    let r = run_async(cmd(&bob, &["cancel", "req000000002"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("now cancelled"), "{r:?}");
    assert_eq!(
        ca.elevation("req000000002").state,
        ElevationState::Cancelled
    );

    let r = run_async(cmd(
        &carol,
        &["revoke", "req000000002", "--comment", "done"],
    ))
    .await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let d = ca.state.lock().unwrap().decisions.clone();
    assert_eq!(
        d.iter()
            .map(|(id, a, u, c)| format!("{id} {a} {u} {c:?}"))
            .collect::<Vec<_>>(),
        vec![
            "req000000001 deny carol Some(\"no\")",
            "req000000002 cancel bob None",
            "req000000002 revoke carol Some(\"done\")",
        ]
    );
    // The CA's refusals keep their exit codes: bob may not approve his own (403 → 4).
    ca.insert_elevation(pending_view("req000000003", "bob", "INC-44"));
    let r = run_async(cmd(&bob, &["approve", "req000000003", "--yes"])).await;
    assert_eq!(r.code, Some(4), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fields_from_other_users_are_printed_escaped() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let requester = "mallory\n  requester:  bob\u{1b}[2J";
    ca.insert_elevation(pending_view(
        "req000000009",
        requester,
        "fix\n  reason:     INC-1\u{1b}[2J\r\u{7}",
    ));
    // An older request by the same person, so the fake CA reports it as recent too.
    let mut old = pending_view("req000000008", requester, "old\u{1b}[31m");
    old.state = ElevationState::Expired;
    ca.insert_elevation(old);
    let carol = Home::new();
    carol.plant_session(&ca, "carol");

    for args in [&["requests"][..], &["approve", "req000000009", "--yes"][..]] {
        let r = run_async(cmd(&carol, args)).await;
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
        let out = format!("{}{}", r.stdout, r.stderr);
        for bad in ['\u{1b}', '\r', '\u{7}'] {
            assert!(!out.contains(bad), "{args:?}: {bad:?} in {out:?}");
        }
        assert!(
            r.stdout
                .contains("  requester:  mallory\\n  requester:  bob\\u{1b}[2J\n"),
            "{args:?}: {r:?}"
        );
        assert!(
            r.stdout
                .contains("  reason:     fix\\n  reason:     INC-1\\u{1b}[2J\\r\\u{7}\n"),
            "{args:?}: {r:?}"
        );
        assert!(r.stdout.contains("old\\u{1b}[31m"), "{args:?}: {r:?}");
        // Exactly one requester and one reason line: nothing was forged.
        assert_eq!(
            r.stdout
                .lines()
                .filter(|l| l.starts_with("  requester:"))
                .count(),
            1,
            "{args:?}: {r:?}"
        );
        assert_eq!(
            r.stdout
                .lines()
                .filter(|l| l.starts_with("  reason:"))
                .count(),
            1,
            "{args:?}: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_one_parseable_document_without_raw_controls() {
    let ca = FakeCa::start(Behaviour::default()).await;
    ca.insert_elevation(pending_view("req000000001", "bob", "x\u{9b}2J\u{1b}[2J"));
    let carol = Home::new();
    carol.plant_session(&ca, "carol");
    let r = run_async(cmd(&carol, &["requests", "--json"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        !r.stdout.contains('\u{1b}') && !r.stdout.contains('\u{9b}'),
        "{r:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["elevations"][0]["id"], "req000000001");
    assert_eq!(v["elevations"][0]["reason"], "x\u{9b}2J\u{1b}[2J");
    assert_eq!(v["elevations"][0]["state"], "pending");
    assert!(v["ca_time"].is_i64());

    let bob = Home::new();
    bob.plant_session(&ca, "bob");
    let r = run_async(cmd(&bob, &["elevations", "--json"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["elevations"].as_array().unwrap().len(), 1);
    assert_eq!(v["elevations"][0]["requester"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_elevation_name_from_the_ca_is_refused_and_nothing_is_written() {
    // `/../../x` would really escape: with a directory `pedm_ed25519-elev-` beside the key,
    // `~/.ssh/pedm_ed25519-elev-/../../x-cert.pub` is `~/x-cert.pub`.
    for name in ["../x", "/../../x", "DB-Admin", "db admin"] {
        let ca = FakeCa::start(Behaviour {
            auto_approve: true,
            elevated_cert_name: Some(name.into()),
            ..Behaviour::default()
        })
        .await;
        let home = Home::new();
        home.plant_session(&ca, "alice");
        std::fs::create_dir_all(home.home().join(".ssh/pedm_ed25519-elev-")).unwrap();
        let r = run_async(cmd(&home, &["elevate", "db-admin", "--reason", "INC-1"])).await;
        assert_eq!(r.code, Some(1), "{name}: {r:?}");
        assert!(
            r.stderr.contains(&format!(
                "the CA named the elevation {name}, which is not a safe file name"
            )),
            "{name}: {r:?}"
        );
        // The CA did issue (the fake does not know better) ...
        assert_eq!(ca.state.lock().unwrap().cert_elevation_ids.len(), 1);
        // ... but nothing was written: not outside ~/.ssh, not inside it.
        assert_eq!(names_in(&home.home()), vec![".ssh"], "{name}");
        assert_eq!(
            names_in(&home.home().join(".ssh")),
            vec!["pedm_ed25519", "pedm_ed25519-elev-", "pedm_ed25519.pub"],
            "{name}"
        );
        assert!(names_in(&home.home().join(".ssh/pedm_ed25519-elev-")).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reason_breaking_the_rule_is_refused_before_it_is_sent() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    let long = "x".repeat(201);
    for reason in ["a\nb", "\u{1b}[2J", "", long.as_str()] {
        let r = run_async(cmd(&home, &["elevate", "db-admin", "--reason", reason])).await;
        assert_eq!(r.code, Some(1), "{reason:?}: {r:?}");
        assert!(
            r.stderr.contains("1-200 printable characters"),
            "{reason:?}: {r:?}"
        );
        assert!(!r.stderr.contains('\u{1b}'), "{r:?}");
    }
    assert!(ca.state.lock().unwrap().elevation_requests.is_empty());
    // The CA's own refusals map to their exit codes: an unknown elevation is refused (4).
    let r = run_async(cmd(&home, &["elevate", "root", "--reason", "x"])).await;
    assert_eq!(r.code, Some(4), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevation_commands_need_a_session() {
    let home = Home::new();
    for args in [
        &["elevate", "db-admin", "--reason", "x"][..],
        &["requests"][..],
        &["elevations"][..],
        &["approve", "abc", "--yes"][..],
        &["deny", "abc", "--comment", "no"][..],
        &["cancel", "abc"][..],
    ] {
        let r = run_async(cmd(&home, args)).await;
        assert_eq!(r.code, Some(3), "{args:?}: {r:?}");
        assert!(r.stderr.contains("pedm-ssh login"), "{args:?}: {r:?}");
    }
}

/// Runs `pedm-ssh ARGS` for `home` on a pseudo-terminal (util-linux `script`), typing
/// `input`; stdout and stderr both arrive in `Run::stdout`, as the terminal shows them.
fn in_terminal(home: &Home, args: &[&str], input: &str) -> Run {
    use std::io::Write;
    let mut line = format!("'{}'", env!("CARGO_BIN_EXE_pedm-ssh"));
    for a in args {
        assert!(!a.contains('\''));
        line.push_str(&format!(" '{a}'"));
    }
    let c = cmd(home, &[]);
    let mut script = Command::new("script");
    script
        .args(["-qec", &line, "/dev/null"])
        .env("SHELL", "/bin/sh");
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    script
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = Proc(Some(script.spawn().unwrap()));
    let mut stdin = child.get().stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    // Keep stdin open until the run ends: `script` stops forwarding at end of input.
    let r = finish(child, None);
    drop(stdin);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_on_a_terminal_asks_and_sends_only_on_yes() {
    let ca = FakeCa::start(Behaviour::default()).await;
    ca.insert_elevation(pending_view("req000000001", "bob", "INC-42"));
    let carol = Home::new();
    carol.plant_session(&ca, "carol");
    let run_n =
        tokio::task::block_in_place(|| in_terminal(&carol, &["approve", "req000000001"], "n\n"));
    assert_eq!(run_n.code, Some(1), "{run_n:?}");
    assert!(run_n.stdout.contains("approve? [y/N]"), "{run_n:?}");
    assert!(run_n.stdout.contains("requester:  bob"), "{run_n:?}");
    assert!(
        run_n.stdout.contains("not approved: nothing was sent"),
        "{run_n:?}"
    );
    assert!(ca.state.lock().unwrap().decisions.is_empty());

    let run_y =
        tokio::task::block_in_place(|| in_terminal(&carol, &["approve", "req000000001"], "y\n"));
    assert_eq!(run_y.code, Some(0), "{run_y:?}");
    assert!(run_y.stdout.contains("approved req000000001"), "{run_y:?}");
    assert_eq!(ca.state.lock().unwrap().decisions.len(), 1);
    assert_eq!(ca.elevation("req000000001").state, ElevationState::Approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_a_terminal_shows_a_spinner_with_the_state() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let alice = Home::new();
    alice.plant_session(&ca, "alice");
    let r = tokio::task::block_in_place(|| {
        in_terminal(
            &alice,
            &[
                "elevate",
                "db-admin",
                "--reason",
                "INC-1",
                "--wait",
                "--timeout",
                "2s",
            ],
            "",
        )
    });
    assert_eq!(r.code, Some(1), "{r:?}");
    let id = only_elevation_id(&ca);
    // The spinner redraws its line in place: carriage return, erase line, frame, state.
    let redraws = r.stdout.matches("\r\u{1b}[2K").count();
    assert!(redraws >= 3, "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "waiting for approval of {id}: pending, 1 approval needed, times out in"
        )),
        "{r:?}"
    );
    assert!(
        ["| ", "/ ", "- ", "\\ "]
            .iter()
            .all(|f| r.stdout.contains(&format!("\u{1b}[2K{f}waiting"))),
        "every frame shows: {r:?}"
    );
    // ... and is erased before the final message.
    assert!(
        r.stdout
            .contains("\r\u{1b}[2Kerror: gave up waiting after 2s"),
        "{r:?}"
    );
}
