//! Everyday use against the fake CA: `ensure` (no request while the certificate has time
//! left, a renewal when it has not), the `config` snippet, one base certificate in the
//! agent however often it is renewed, and the clock-skew warning of every renewal.

mod common;

use common::*;
use std::process::Command;

async fn run_async(c: Command) -> Run {
    tokio::task::spawn_blocking(move || run(c)).await.unwrap()
}

fn cert_requests(ca: &FakeCa) -> usize {
    ca.state.lock().unwrap().cert_requests.len()
}

/// The certificates of the agent (`ssh-add -L` lines of certificate type).
fn agent_certificates(agent: &Agent) -> Vec<String> {
    agent
        .list_public()
        .lines()
        .filter(|l| l.contains("-cert-v01@openssh.com"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_with_time_left_asks_nothing_and_works_with_the_ca_gone() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    let r = run_async(home.command(&["cert"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(cert_requests(&ca), 1);
    let before =
        std::fs::read_to_string(home.key().with_file_name("pedm_ed25519-cert.pub")).unwrap();

    let r = run_async(home.command(&["ensure", "--margin", "60s"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.starts_with("certificate ok: "), "{r:?}");
    assert_eq!(cert_requests(&ca), 1, "ensure asked the CA: {r:?}");

    let r = run_async(home.command(&["ensure", "--quiet"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
    assert_eq!(r.stderr, "", "{r:?}");
    assert_eq!(cert_requests(&ca), 1);

    // With the CA gone, still no call (a call would fail with exit 1).
    drop(ca);
    let r = run_async(home.command(&["ensure", "--quiet"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let after =
        std::fs::read_to_string(home.key().with_file_name("pedm_ed25519-cert.pub")).unwrap();
    assert_eq!(before, after);
    // But a margin beyond the certificate's life makes it try, and fail.
    let r = run_async(home.command(&["ensure", "--quiet", "--margin", "1h"])).await;
    assert_eq!(r.code, Some(1), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_renews_a_certificate_near_its_end() {
    let ca = FakeCa::start(Behaviour {
        ttl: 30,
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    // No certificate at all: renewed.
    let r = run_async(home.command(&["ensure", "--quiet"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
    assert_eq!(cert_requests(&ca), 1);
    // 30 s left, margin 60 s: renewed again.
    let r = run_async(home.command(&["ensure"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("certificate renewed"), "{r:?}");
    assert_eq!(cert_requests(&ca), 2);
    // Margin 10 s: fresh enough.
    let r = run_async(home.command(&["ensure", "--margin", "10s"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(cert_requests(&ca), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_without_a_session_or_with_a_revoked_one_exits_3() {
    let ca = FakeCa::start(Behaviour {
        ttl: 30,
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    let r = run_async(home.command(&["ensure", "--quiet"])).await;
    assert_eq!(r.code, Some(3), "{r:?}");
    home.plant_session(&ca, "alice");
    ca.state.lock().unwrap().sessions.clear();
    ca.state.lock().unwrap().users.clear();
    let r = run_async(home.command(&["ensure", "--quiet"])).await;
    assert_eq!(r.code, Some(3), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_warn_of_clock_skew() {
    let ca = FakeCa::start(Behaviour {
        ttl: 30,
        clock_offset: 120,
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    for args in [&["cert"][..], &["ensure", "--quiet"][..]] {
        let r = run_async(home.command(args)).await;
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
        assert!(r.stderr.contains("warning: "), "{args:?}: {r:?}");
        assert!(r.stderr.contains("behind"), "{args:?}: {r:?}");
    }
    // Without skew there is no warning.
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    let r = run_async(home.command(&["cert"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stderr.contains("warning"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_uses_the_saved_skew() {
    // The CA's clock is 10 minutes ahead, the certificate lives 5: on the local clock it
    // looks as if it had 15 left, on the CA's it has 5; with a 6 minute margin the saved skew
    // decides.
    let ca = FakeCa::start(Behaviour {
        ttl: 300,
        clock_offset: 600,
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    let r = run_async(home.command(&["cert"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let r = run_async(home.command(&["ensure", "--quiet", "--margin", "6m"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(cert_requests(&ca), 2, "the skew was not applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_prints_the_snippet_with_the_absolute_path() {
    let ca = FakeCa::start(Behaviour::default()).await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    // Run from another directory with PATH empty: the snippet must not depend on either.
    let mut c = home.command(&["config"]);
    c.current_dir(home.dir.path()).env("PATH", "");
    let r = run_async(c).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_pedm-ssh")).unwrap();
    let key = home.key();
    let lines: Vec<&str> = r.stdout.lines().map(str::trim).collect();
    let want = [
        format!("Match exec \"{} ensure --quiet\"", exe.display()),
        format!("CertificateFile {}-cert.pub", key.display()),
        format!("IdentityFile {}", key.display()),
        format!(
            "Include {}",
            home.xdg().join("pedm-ssh/elevations.conf").display()
        ),
    ];
    for w in &want {
        assert!(lines.contains(&w.as_str()), "missing {w:?} in {r:?}");
    }
    let at = |w: &str| lines.iter().position(|l| *l == w).unwrap();
    assert!(at(&want[0]) < at(&want[1]) && at(&want[1]) < at(&want[3]));
    assert!(exe.is_absolute());

    // A key path with a space is quoted.
    let spaced = home.dir.path().join("my keys/id");
    let r = run_async(home.command(&["config", "--key", spaced.to_str().unwrap()])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("IdentityFile \"{}\"", spaced.display())),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_holds_one_base_certificate_after_renewals() {
    let agent = Agent::start();
    let ca = FakeCa::start(Behaviour {
        ttl: 30,
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    let sock = agent.sock.to_str().unwrap().to_string();
    for args in [&["cert"][..], &["cert"][..], &["ensure", "--quiet"][..]] {
        let mut c = home.command(args);
        c.env("SSH_AUTH_SOCK", &sock);
        let r = run_async(c).await;
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
        assert!(!r.stderr.contains("warning"), "{args:?}: {r:?}");
    }
    assert_eq!(cert_requests(&ca), 3);
    let certs = agent_certificates(&agent);
    assert_eq!(certs.len(), 1, "{certs:#?}");
    // And it is the newest one.
    let last = ca.state.lock().unwrap().last_base_cert.clone().unwrap();
    let body = |l: &str| l.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(body(&certs[0]), body(&last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elevation_keeps_its_certificate_beside_one_base_certificate() {
    let agent = Agent::start();
    let ca = FakeCa::start(Behaviour {
        auto_approve: true,
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    let sock = agent.sock.to_str().unwrap().to_string();
    let mut c = home.command(&["elevate", "db-admin", "--reason", "INC-1", "--for", "5m"]);
    c.env("SSH_AUTH_SOCK", &sock).env("PEDM_SSH_POLL_MS", "50");
    let r = run_async(c).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let id = ca.state.lock().unwrap().elevations[0].id.clone();
    // Fetch it again, renew the base twice.
    let mut c = home.command(&["elevate", "--fetch", &id]);
    c.env("SSH_AUTH_SOCK", &sock);
    let r = run_async(c).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    for _ in 0..2 {
        let mut c = home.command(&["cert"]);
        c.env("SSH_AUTH_SOCK", &sock);
        assert_eq!(run_async(c).await.code, Some(0));
    }
    let certs = agent_certificates(&agent);
    assert_eq!(certs.len(), 2, "{certs:#?}");
    // `ensure` lists the elevated certificate in the file the snippet includes.
    let r = run_async(home.command(&["ensure", "--quiet"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let conf = std::fs::read_to_string(home.xdg().join("pedm-ssh/elevations.conf")).unwrap();
    let elev = home.home().join(".ssh/pedm_ed25519-elev-db-admin-cert.pub");
    assert!(
        conf.contains(&format!("CertificateFile {}\n", elev.display())),
        "{conf}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_ensures_then_runs_ssh_with_the_arguments() {
    use std::os::unix::fs::PermissionsExt;
    let ca = FakeCa::start(Behaviour {
        ttl: 30,
        ..Behaviour::default()
    })
    .await;
    let home = Home::new();
    home.plant_session(&ca, "alice");
    // A stand-in `ssh` on PATH that prints its arguments.
    let bin = home.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("ssh");
    std::fs::write(&fake, "#!/bin/sh\nprintf '%s\\n' \"$@\"\nexit 7\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = home.command(&["ssh", "-p", "2222", "alice@db1", "id", "-un"]);
    c.env("PATH", &bin);
    let r = run_async(c).await;
    // The exit status is ssh's own: the process was replaced.
    assert_eq!(r.code, Some(7), "{r:?}");
    assert_eq!(cert_requests(&ca), 1, "no renewal before ssh");
    let key = home.key();
    let args: Vec<&str> = r.stdout.lines().collect();
    let cert_opt = format!("CertificateFile={}-cert.pub", key.display());
    assert_eq!(
        args,
        vec![
            "-i",
            key.to_str().unwrap(),
            "-o",
            &cert_opt,
            "-p",
            "2222",
            "alice@db1",
            "id",
            "-un"
        ],
        "{r:?}"
    );
    // Without a session: exit 3 and ssh is not run.
    std::fs::remove_file(home.session_file()).unwrap();
    let mut c = home.command(&["ssh", "db1"]);
    c.env("PATH", &bin);
    let r = run_async(c).await;
    assert_eq!(r.code, Some(3), "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
}
