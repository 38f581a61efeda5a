//! The real binary, without a CA: exit codes and refusals that need no network.

mod common;

use common::{run, Home};

#[test]
fn status_without_session_exits_3() {
    let home = Home::new();
    let r = run(home.command(&["status"]));
    assert_eq!(r.code, Some(3), "{r:?}");
    assert!(
        r.stderr
            .contains("not signed in: run `pedm-ssh login --ca URL`"),
        "{r:?}"
    );
    assert!(r.stdout.is_empty(), "{r:?}");
}

#[test]
fn cert_without_session_exits_3() {
    let home = Home::new();
    let r = run(home.command(&["cert"]));
    assert_eq!(r.code, Some(3), "{r:?}");
    assert!(r.stderr.contains("pedm-ssh login"), "{r:?}");
}

#[test]
fn logout_without_session_is_a_no_op() {
    let home = Home::new();
    let r = run(home.command(&["logout"]));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("nothing to do"), "{r:?}");
}

#[test]
fn login_to_non_loopback_http_exits_1_and_writes_nothing() {
    let home = Home::new();
    let r = run(home.command(&["login", "--ca", "http://10.0.0.1"]));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("only loopback"), "{r:?}");
    assert!(r.stderr.contains("https://"), "says what to do: {r:?}");
    // Nothing written: no ~/.ssh, no config directory.
    let entries: Vec<_> = std::fs::read_dir(home.home()).unwrap().collect();
    assert!(entries.is_empty(), "{entries:?}");
    assert!(!home.xdg().exists());
}

#[test]
fn login_url_from_env() {
    let home = Home::new();
    let mut cmd = home.command(&["login"]);
    cmd.env("PEDM_CA", "http://10.0.0.1");
    let r = run(cmd);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("only loopback"), "{r:?}");
}

#[test]
fn usage_errors_exit_2() {
    let home = Home::new();
    // No --ca and no PEDM_CA.
    let r = run(home.command(&["login"]));
    assert_eq!(r.code, Some(2), "{r:?}");
    let r = run(home.command(&["frobnicate"]));
    assert_eq!(r.code, Some(2), "{r:?}");
    let r = run(home.command(&["status", "--bogus"]));
    assert_eq!(r.code, Some(2), "{r:?}");
}

#[test]
fn help_lists_exit_codes() {
    let home = Home::new();
    let r = run(home.command(&["--help"]));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains(pedm_ssh::cli::EXIT_CODES), "{}", r.stdout);
    let r = run(home.command(&["login", "--help"]));
    assert!(r.stdout.contains("3  sign-in needed"), "{}", r.stdout);
    assert!(r.stdout.contains("--no-browser"), "{}", r.stdout);
}

#[test]
fn unreachable_ca_exits_1_with_next_step() {
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = Home::new();
    let url = format!("http://127.0.0.1:{port}");
    let r = run(home.command(&["login", "--ca", &url, "--no-browser"]));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("cannot reach the CA"), "{r:?}");
    assert!(r.stderr.contains("next: check the CA URL"), "{r:?}");
    assert!(!home.session_file().exists());
}

#[test]
fn too_open_session_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let path = home.session_file();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "{}").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = run(home.command(&["status"]));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains(&format!("chmod 600 {}", path.display())),
        "{r:?}"
    );
}

#[test]
fn too_open_key_is_refused_before_contacting_the_ca() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let key = home.key();
    pedm_ssh::keys::ensure_key(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Port 9 (discard) on loopback: never contacted because the key check comes first.
    let r = run(home.command(&["login", "--ca", "http://127.0.0.1:9"]));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains(&format!("chmod 600 {}", key.display())),
        "{r:?}"
    );
}

#[test]
fn elevation_usage_errors_exit_2() {
    let home = Home::new();
    for args in [
        &["elevate"][..],
        &["elevate", "db-admin"][..],
        &["elevate", "--reason", "x"][..],
        &["elevate", "db-admin", "--reason", "x", "--fetch", "abc"][..],
        &["elevate", "db-admin", "--reason", "x", "--for", "15"][..],
        &["elevate", "db-admin", "--reason", "x", "--for", "0m"][..],
        &["elevate", "db-admin", "--reason", "x", "--timeout", "1m"][..],
        &["elevate", "--fetch", "../x"][..],
        &["approve"][..],
        &["approve", "a/b", "--yes"][..],
        &["deny", "abc"][..],
        &["cancel"][..],
        &["revoke", "a b"][..],
    ] {
        let r = run(home.command(args));
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(!home.xdg().exists(), "{args:?}");
    }
}

#[test]
fn elevation_commands_have_help_with_examples_and_exit_codes() {
    let home = Home::new();
    for sub in [
        "elevate",
        "requests",
        "approve",
        "deny",
        "cancel",
        "revoke",
        "elevations",
    ] {
        let r = run(home.command(&[sub, "--help"]));
        assert_eq!(r.code, Some(0), "{sub}: {r:?}");
        assert!(
            r.stdout.contains(pedm_ssh::cli::EXIT_CODES),
            "{sub}: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains(&format!("  pedm-ssh {sub} ")),
            "{sub}: {}",
            r.stdout
        );
    }
    let r = run(home.command(&["elevate", "--help"]));
    for opt in [
        "--reason",
        "--for",
        "--wait",
        "--fetch",
        "--key",
        "--timeout",
    ] {
        assert!(r.stdout.contains(opt), "{opt}: {}", r.stdout);
    }
    let r = run(home.command(&["login", "--help"]));
    assert!(r.stdout.contains("--reauth"), "{}", r.stdout);
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef pedm-ssh"),
        ("fish", "complete -c pedm-ssh"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pedm-ssh"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(
            text.contains("elevate"),
            "{shell} completes the subcommands"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pedm-ssh"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
