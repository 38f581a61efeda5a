//! `install` writes the systemd service and timer that run `refresh`: their content, that
//! the ExecStart really refreshes this host, and when no units are written.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const SERVICE: &str = "pedm-host-config-refresh.service";
const TIMER: &str = "pedm-host-config-refresh.timer";

fn unit_value<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn install_writes_a_hardened_service_and_a_timer_that_run_refresh_for_this_tree() {
    let pki = Pki::new();
    let ca = FakeCa::start();
    ca.serve_bundle(&pki.signed(1));
    ca.serve_krl(&pki.krl(1));
    let host = Host::new();
    let units = host.dir.path().join("systemd");
    std::fs::create_dir(&units).unwrap();
    let units_arg = units.display().to_string();

    let out = host.install(&ca, &pki.pin(), &["--systemd-dir", &units_arg]);
    assert_ok(&out);
    for u in [SERVICE, TIMER] {
        let line = format!("wrote {}", units.join(u).display());
        assert!(
            stdout(&out).lines().any(|l| l == line),
            "{line}:\n{}",
            stdout(&out)
        );
        assert_eq!(
            std::fs::metadata(units.join(u))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
    }
    // --no-reload: written, not enabled (and never enabled outside systemd).
    assert!(
        stderr(&out).contains("the refresh timer is written, not enabled"),
        "{}",
        stderr(&out)
    );

    let service = std::fs::read_to_string(units.join(SERVICE)).unwrap();
    let bin = std::fs::canonicalize(BIN).unwrap();
    let mut expected = format!(
        "{} refresh --config {} --etc-dir {}",
        bin.display(),
        host.config.display(),
        host.etc.display()
    );
    if let Some(sshd) = sshd() {
        expected.push_str(&format!(" --sshd {sshd}"));
    }
    assert_eq!(
        unit_value(&service, "ExecStart"),
        [expected.as_str()],
        "{service}"
    );
    assert_eq!(unit_value(&service, "Type"), ["oneshot"]);
    assert_eq!(unit_value(&service, "ProtectSystem"), ["strict"]);
    assert_eq!(
        unit_value(&service, "ReadWritePaths"),
        [host.etc.display().to_string().as_str()]
    );
    assert_eq!(unit_value(&service, "NoNewPrivileges"), ["yes"]);
    assert_eq!(unit_value(&service, "PrivateTmp"), ["yes"]);

    let timer = std::fs::read_to_string(units.join(TIMER)).unwrap();
    assert_eq!(unit_value(&timer, "OnUnitActiveSec"), ["5min"]);
    assert_eq!(unit_value(&timer, "OnBootSec"), ["1min"]);
    assert_eq!(unit_value(&timer, "RandomizedDelaySec"), ["1min"]);
    assert_eq!(unit_value(&timer, "Unit"), [SERVICE]);
    assert_eq!(unit_value(&timer, "WantedBy"), ["timers.target"]);

    // systemd itself parses both without a complaint.
    if let Ok(v) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join(SERVICE))
        .arg(units.join(TIMER))
        .output()
    {
        let complaints = String::from_utf8_lossy(&v.stderr);
        assert!(
            v.status.success() && complaints.trim().is_empty(),
            "systemd-analyze verify:\n{complaints}"
        );
    }

    // What the timer would run refreshes this host (the KRL comes in).
    let words: Vec<&str> = expected.split(' ').collect();
    let run = Command::new(words[0]).args(&words[1..]).output().unwrap();
    assert_ok(&run);
    assert!(
        stdout(&run).contains("installed KRL version 1"),
        "{}",
        stdout(&run)
    );

    // Idempotent: a second install changes nothing, units included.
    let before = host.snapshot();
    let again = host.install(&ca, &pki.pin(), &["--systemd-dir", &units_arg]);
    assert_ok(&again);
    assert_eq!(stdout(&again), "no changes\n");
    assert_unchanged(&before, &host, "second install");
}

#[test]
fn dry_run_shows_the_units_and_writes_none() {
    let pki = Pki::new();
    let ca = FakeCa::start();
    ca.serve_bundle(&pki.signed(1));
    let host = Host::new();
    let units = host.dir.path().join("systemd");
    std::fs::create_dir(&units).unwrap();
    let before = host.snapshot();
    let out = host.install(
        &ca,
        &pki.pin(),
        &["--dry-run", "--systemd-dir", &units.display().to_string()],
    );
    assert_ok(&out);
    let diff = stdout(&out);
    assert!(
        diff.contains(&format!("+++ {}\n", units.join(SERVICE).display())),
        "{diff}"
    );
    assert!(diff.contains("+OnUnitActiveSec=5min\n"), "{diff}");
    assert_unchanged(&before, &host, "dry run");
}

#[test]
fn no_units_for_a_staging_tree_or_a_missing_unit_directory() {
    let pki = Pki::new();
    let ca = FakeCa::start();
    ca.serve_bundle(&pki.signed(1));

    // An --etc-dir other than /etc/ssh without --systemd-dir: not scheduled on this machine.
    let host = Host::new();
    let out = host.install(&ca, &pki.pin(), &[]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("no refresh timer written") && stderr(&out).contains("--systemd-dir"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains(SERVICE), "{}", stdout(&out));

    // A unit directory that does not exist: skipped with a note, the rest installs.
    let host = Host::new();
    let missing = host.dir.path().join("no-systemd-here");
    let out = host.install(
        &ca,
        &pki.pin(),
        &["--systemd-dir", &missing.display().to_string()],
    );
    assert_ok(&out);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!missing.exists());
    assert!(host.pedm("trusted-user-ca-keys.pub").exists());
}
