//! The real binary against a fake CA (and fake IdP authorize endpoint) that speaks the v1
//! wire contract: the whole login, cert, status and logout cycle, and the refusals.

mod common;

use common::*;
use pedm_api::ProblemType;
use std::time::Duration;

/// Runs `pedm-ssh login --no-browser` against `ca` from `home`, plays the browser, and
/// returns the finished run. `before` gets the callback URI and runs before the browser.
async fn login_via_browser(home: &Home, ca: &FakeCa, extra_env: &[(&str, &str)]) -> Run {
    login_via_browser_with(home, ca, &[], extra_env).await
}

/// [`login_via_browser`] with more arguments to `login`.
async fn login_via_browser_with(
    home: &Home,
    ca: &FakeCa,
    extra_args: &[&str],
    extra_env: &[(&str, &str)],
) -> Run {
    let mut args = vec!["login", "--ca", &ca.url, "--no-browser"];
    args.extend_from_slice(extra_args);
    let mut cmd = home.command(&args);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let (child, url, lines, rx) = tokio::task::spawn_blocking(move || spawn_until_url(cmd))
        .await
        .unwrap();
    assert!(
        url.starts_with(&format!("{}/idp/authorize?", ca.url)),
        "{url}"
    );
    // The browser: follows the IdP's redirect to the CLI's listener.
    let resp = browser().get(&url).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let run = tokio::task::spawn_blocking(move || finish(child, Some((lines, rx))))
        .await
        .unwrap();
    assert!(
        status == 200 || run.code != Some(0),
        "browser got {status} {body}; {run:?}"
    );
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_login_status_cert_logout() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();

    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("signed in as alice\n"), "{r:?}");
    assert!(r.stdout.contains("principals: alice\n"), "{r:?}");
    assert!(r.stdout.contains("serial: 101\n"), "{r:?}");
    assert!(r.stdout.contains("valid until: "), "{r:?}");
    let cert_path = home.home().join(".ssh/pedm_ed25519-cert.pub");
    assert!(
        r.stdout
            .contains(&format!("certificate: {}\n", cert_path.display())),
        "{r:?}"
    );
    assert!(r.stderr.contains("created a new key"), "{r:?}");
    assert!(!r.stderr.contains("warning"), "no skew warning: {r:?}");

    // The CA saw the exact redirect URI and a finish with the right secret.
    {
        let s = ca.state.lock().unwrap();
        assert_eq!(s.redirect_uris.len(), 1);
        let uri = &s.redirect_uris[0];
        let port: u16 = uri
            .strip_prefix("http://127.0.0.1:")
            .unwrap()
            .strip_suffix("/callback")
            .unwrap()
            .parse()
            .unwrap();
        assert_ne!(port, 0);
        assert_eq!(s.finish_ok, 1);
        assert_eq!(s.finish_refused, 0);
        // A plain login does not ask the IdP to authenticate again.
        assert_eq!(s.start_reauth, vec![false]);
        // The public key went without its comment.
        assert_eq!(
            s.cert_requests[0].split(' ').count(),
            2,
            "{:?}",
            s.cert_requests
        );
    }

    // Files and their modes.
    assert_eq!(mode(&home.key()), 0o600);
    assert_eq!(mode(&home.home().join(".ssh")), 0o700);
    assert_eq!(mode(&home.session_file()), 0o600);
    assert_eq!(mode(home.session_file().parent().unwrap()), 0o700);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.session_file()).unwrap()).unwrap();
    assert_eq!(saved["ca_url"], ca.url.as_str());
    assert_eq!(saved["user"], "alice");
    assert_eq!(saved["key_path"], home.key().to_str().unwrap());
    let token = saved["session_token"].as_str().unwrap().to_string();
    assert!(ca.state.lock().unwrap().sessions.contains(&token));
    // The token is never printed.
    assert!(!r.stdout.contains(&token) && !r.stderr.contains(&token));

    // ssh-keygen accepts the certificate; it is signed by the fake CA for our key.
    let out = std::process::Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("Key ID: \"alice serial=101\""),
        "{listing}"
    );

    // status
    let r = run(home.command(&["status"]));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("signed in as alice\n"), "{r:?}");
    assert!(r.stdout.contains("principals: alice\n"), "{r:?}");
    assert!(r.stdout.contains("certificate serial: 101"), "{r:?}");
    assert!(r.stdout.contains("left)"), "{r:?}");
    assert!(r.stdout.contains("clock skew: "), "{r:?}");

    // cert renews with the session
    let r = run(home.command(&["cert"]));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("serial: 102\n"), "{r:?}");
    let r = run(home.command(&["status"]));
    assert!(r.stdout.contains("certificate serial: 102"), "{r:?}");
    let r = run(home.command(&["status", "--json"]));
    assert_eq!(r.code, Some(0), "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("status --json is JSON");
    assert_eq!(doc["session"]["user"], "alice", "{doc}");
    assert_eq!(doc["certificate"]["serial"], 102, "{doc}");
    assert_eq!(
        doc["certificate"]["principals"],
        serde_json::json!(["alice"]),
        "{doc}"
    );
    assert!(doc["clock_skew_secs"].is_i64(), "{doc}");

    // logout revokes at the CA (which answers 204) and deletes the file
    let r = run(home.command(&["logout"]));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("revoked the session"), "{r:?}");
    assert!(!home.session_file().exists());
    assert_eq!(ca.state.lock().unwrap().revoked, vec![token]);

    let r = run(home.command(&["status"]));
    assert_eq!(r.code, Some(3), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_reauth_asks_the_ca_for_a_fresh_authentication() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    let r = login_via_browser_with(&home, &ca, &["--reauth"], &[]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("signed in as alice\n"), "{r:?}");
    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(ca.state.lock().unwrap().start_reauth, vec![true, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_session_means_sign_in_required() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    ca.state.lock().unwrap().sessions.clear();
    for cmd in ["status", "cert"] {
        let r = run(home.command(&[cmd]));
        assert_eq!(r.code, Some(3), "{cmd}: {r:?}");
        assert!(
            r.stderr
                .contains(&format!("run `pedm-ssh login --ca {}`", ca.url)),
            "{cmd}: {r:?}"
        );
    }
    // logout of a session the CA no longer knows still succeeds and deletes it
    let r = run(home.command(&["logout"]));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("already gone"), "{r:?}");
    assert!(!home.session_file().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_role_exits_4_and_saves_nothing() {
    let ca = FakeCa::start(Behaviour {
        user: "dave".into(),
        finish_problem: Some(ProblemType::NoRole),
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(4), "{r:?}");
    assert!(r.stderr.contains("No role for this identity"), "{r:?}");
    assert!(r.stderr.contains("ask your administrator"), "{r:?}");
    // The CA's detail carried an escape sequence and a newline: both escaped.
    assert!(!r.stderr.contains('\u{1b}'), "{r:?}");
    assert!(r.stderr.contains("\\u{1b}[31mdave\\nok"), "{r:?}");
    assert!(!home.session_file().exists());
    assert!(!home.home().join(".ssh/pedm_ed25519-cert.pub").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_access_denied_exits_4() {
    let ca = FakeCa::start(Behaviour {
        idp_error: Some("access_denied".into()),
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(4), "{r:?}");
    assert!(r.stderr.contains("access_denied"), "{r:?}");
    // error_description "nope\x1b[31m" arrives escaped.
    assert!(r.stderr.contains("nope\\u{1b}[31m"), "{r:?}");
    assert!(!r.stderr.contains('\u{1b}'), "{r:?}");
    assert_eq!(ca.state.lock().unwrap().finish_ok, 0);
    assert!(!home.session_file().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_idp_error_exits_1() {
    let ca = FakeCa::start(Behaviour {
        idp_error: Some("temporarily_unavailable".into()),
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("temporarily_unavailable"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_username_is_printed_escaped() {
    let ca = FakeCa::start(Behaviour {
        user: "alice\u{1b}[2K\rsigned in as root\n\u{202e}x".into(),
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        !r.stdout.contains('\u{1b}') && !r.stdout.contains('\r'),
        "{r:?}"
    );
    assert!(!r.stdout.contains('\u{202e}'), "{r:?}");
    assert!(!r.stdout.lines().any(|l| l == "signed in as root"), "{r:?}");
    assert!(
        r.stdout
            .contains("signed in as alice\\u{1b}[2K\\rsigned in as root\\n\\u{202e}x\n"),
        "{r:?}"
    );
    let r = run(home.command(&["status"]));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stdout.contains('\u{1b}'), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_callback_does_not_end_the_login() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    let cmd = home.command(&["login", "--ca", &ca.url, "--no-browser"]);
    let (child, url, lines, rx) = tokio::task::spawn_blocking(move || spawn_until_url(cmd))
        .await
        .unwrap();
    let redirect_uri = ca.state.lock().unwrap().redirect_uris[0].clone();
    // An attacker's redirect with its own code and state.
    let resp = browser()
        .get(format!("{redirect_uri}?code=attacker&state=attacker"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let s = ca.state.lock().unwrap();
        assert_eq!(s.finish_ok + s.finish_refused, 0);
    }
    // The real one still completes.
    let resp = browser().get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let r = tokio::task::spawn_blocking(move || finish(child, Some((lines, rx))))
        .await
        .unwrap();
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("signed in as alice"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_is_warned_about() {
    let ca = FakeCa::start(Behaviour {
        clock_offset: 120,
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    // The CA's clock is read a moment before ours: 1m 59s and 2m 0s are both right.
    assert!(
        r.stderr.contains("warning: this machine's clock is 2m")
            || r.stderr.contains("warning: this machine's clock is 1m 5"),
        "{r:?}"
    );
    assert!(r.stderr.contains("behind the CA's"), "{r:?}");
    let r = run(home.command(&["status"]));
    let skew: i64 = r
        .stdout
        .split("clock skew: +")
        .nth(1)
        .map(|t| {
            t.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no clock skew in {r:?}"));
    assert!((115..=125).contains(&skew), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_redirect_port_from_the_ca_is_used() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ca = FakeCa::start(Behaviour {
        redirect_port: Some(port),
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        ca.state.lock().unwrap().redirect_uris,
        vec![format!("http://127.0.0.1:{port}/callback")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_gets_key_and_certificate_and_loses_them_at_logout() {
    let agent = Agent::start();
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    let sock = agent.sock.to_str().unwrap().to_string();
    let r = login_via_browser(&home, &ca, &[("SSH_AUTH_SOCK", &sock)]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("ssh-agent: added for 1"), "{r:?}");
    let listed = agent.list();
    assert!(listed.contains("ED25519-CERT"), "{listed}");

    let mut cmd = home.command(&["logout"]);
    cmd.env("SSH_AUTH_SOCK", &sock);
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("removed"), "{r:?}");
    let listed = agent.list();
    assert!(!listed.contains("ED25519"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_agent_only_warns() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    let r = login_via_browser(&home, &ca, &[("SSH_AUTH_SOCK", "/nonexistent/agent.sock")]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stderr
            .contains("warning: could not add the key to ssh-agent"),
        "{r:?}"
    );
    assert!(r.stdout.contains("ssh-agent: not added"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_login_revokes_the_first_session() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.session_file()).unwrap()).unwrap();
    let r = login_via_browser(&home, &ca, &[]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("revoked the previous session"), "{r:?}");
    assert!(!r.stderr.contains("created a new key"), "key reused: {r:?}");
    let s = ca.state.lock().unwrap();
    assert_eq!(
        s.revoked,
        vec![first["session_token"].as_str().unwrap().to_string()]
    );
    assert_eq!(s.sessions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_key_path_is_saved_absolute() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    let mut cmd = home.command(&["login", "--ca", &ca.url, "--no-browser", "--key", "k/id"]);
    cmd.current_dir(home.dir.path());
    let (child, url, lines, rx) = tokio::task::spawn_blocking(move || spawn_until_url(cmd))
        .await
        .unwrap();
    assert_eq!(
        browser().get(&url).send().await.unwrap().status().as_u16(),
        200
    );
    let r = tokio::task::spawn_blocking(move || finish(child, Some((lines, rx))))
        .await
        .unwrap();
    assert_eq!(r.code, Some(0), "{r:?}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.session_file()).unwrap()).unwrap();
    let key = home.dir.path().join("k/id");
    assert_eq!(saved["key_path"], key.to_str().unwrap());
    assert!(home.dir.path().join("k/id-cert.pub").exists());
    assert_eq!(mode(&home.dir.path().join("k")), 0o700);
}
