//! `pedm-ca policy explain` as an operator runs it: the real binary on a config file,
//! never touching a store (the data directory does not even exist).

use std::path::PathBuf;
use std::process::Command;

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"
data_dir = "/nonexistent/pedm-ca-policy-explain"

[[roles]]
name = "engineer"
groups = ["eng"]
principals = ["{username}"]
max_cert_ttl = "10m"

[[elevations]]
name = "db-admin"
principals = ["db-admin"]
eligible_roles = ["engineer"]
max_duration = "30m"
require_recent_auth = "15m"
approval = { groups = ["security"], count = 1 }
auto_approve = { groups = ["oncall"], reason_matches = "INC-[0-9]+", hours = { days = "Mon-Fri", from = "08:00", to = "18:00", tz = "Europe/Berlin" } }

[[elevations]]
name = "deploy"
principals = ["deploy"]
eligible_roles = ["engineer"]
max_duration = "15m"
auto_approve = { groups = ["oncall"] }
"#;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("ca.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn explain(config: &PathBuf, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_pedm-ca"))
        .args(["policy", "explain", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("run pedm-ca");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Fri 2024-03-29 08:30 in Berlin, and Saturday 11:00 there.
const WEEKDAY: &str = "2024-03-29T08:30:00+01:00";
const WEEKEND: &str = "2024-03-30T10:00:00Z";

#[test]
fn policy_explain_exit_codes_and_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, CONFIG);

    // Base certificate only.
    let r = explain(&config, &["--user", "bob", "--groups", "eng"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("granted by role(s) \"engineer\""),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("ttl: 10m"), "{}", r.stdout);

    // Auto-approved: oncall, whole-match reason, office hours.
    let args =
        |user: &'static str, groups: &'static str, reason: &'static str, at: &'static str| {
            vec![
                "--user",
                user,
                "--groups",
                groups,
                "--elevation",
                "db-admin",
                "--reason",
                reason,
                "--at",
                at,
            ]
        };
    let r = explain(&config, &args("alice", "eng,oncall", "INC-1234", WEEKDAY));
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("result: granted at once (auto-approved)"),
        "{}",
        r.stdout
    );

    // Pending: a reason that does not match as a whole, the weekend, not oncall.
    for (user, groups, reason, at, failing) in [
        (
            "alice",
            "eng,oncall",
            "INC-1 give me root",
            WEEKDAY,
            "reason_matches",
        ),
        ("alice", "eng,oncall", "INC-1234", WEEKEND, "hours"),
        ("bob", "eng", "INC-1234", WEEKDAY, "groups"),
    ] {
        let r = explain(&config, &args(user, groups, reason, at));
        assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("result: pending"), "{}", r.stdout);
        assert!(
            r.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(failing) && l.contains(": no, ")),
            "{failing} must be shown failing: {}",
            r.stdout
        );
    }

    // Refused: not eligible (no role), unknown elevation, bad reason, auto-only not met.
    let r = explain(&config, &args("dave", "contractors", "INC-1234", WEEKDAY));
    assert_eq!(r.code, Some(4), "{}", r.stdout);
    assert!(
        r.stdout.contains("base certificate: refused"),
        "{}",
        r.stdout
    );
    let r = explain(
        &config,
        &[
            "--user",
            "bob",
            "--groups",
            "eng",
            "--elevation",
            "root-shell",
        ],
    );
    assert_eq!(r.code, Some(4), "{}", r.stdout);
    assert!(
        r.stdout.contains("no elevation named \"root-shell\""),
        "{}",
        r.stdout
    );
    let r = explain(&config, &args("bob", "eng", "fix\u{1b}[2Jit", WEEKDAY));
    assert_eq!(r.code, Some(4), "{}", r.stdout);
    assert!(!r.stdout.contains('\u{1b}'), "escaped: {:?}", r.stdout);
    let r = explain(
        &config,
        &[
            "--user",
            "bob",
            "--groups",
            "eng",
            "--elevation",
            "deploy",
            "--reason",
            "x",
        ],
    );
    assert_eq!(r.code, Some(4), "{}", r.stdout);
    assert!(
        r.stdout.contains("granted only automatically"),
        "{}",
        r.stdout
    );
    // A username equal to an elevation's principal gets nothing.
    let r = explain(&config, &["--user", "db-admin", "--groups", "eng"]);
    assert_eq!(r.code, Some(4), "{}", r.stdout);

    // Usage and config errors are not refusals.
    let r = explain(&config, &["--user", "bob", "--at", "yesterday"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("--at"), "{}", r.stderr);
    let bad = write_config(&dir, &CONFIG.replace("count = 1", "count = 0"));
    let r = explain(&bad, &["--user", "bob"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("elevations[0].approval.count"),
        "{}",
        r.stderr
    );
}
