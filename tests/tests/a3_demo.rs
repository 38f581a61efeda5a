//! The README's first command, `bash scripts/demo.sh`, run by the suite: it must sign alice in
//! and log in through sshd, and leave no process behind.

use pedm_e2e::{bins, env, idp};
use std::process::{Command, Stdio};

#[test]
fn the_demo_signs_alice_in_and_logs_in_over_ssh() {
    if !env::require_root_and_sshd() || !idp::node_available().expect("node check") {
        return;
    }
    idp::ensure_npm_ci().expect("npm ci");
    let run = tempfile::tempdir().unwrap();
    let dir = run.path().join("demo");
    let out = Command::new("bash")
        .arg(bins::workspace_dir().join("scripts/demo.sh"))
        .env("PEDM_DEMO_SKIP_BUILD", "1")
        .env("PEDM_DEMO_DIR", &dir)
        .stdin(Stdio::null())
        .output()
        .expect("running the demo");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the demo failed:\n{text}");
    for needle in [
        "signed in as alice",
        "Key ID: \"alice serial=1\"",
        "hello from pedm-demo",
        "Accepted certificate ID \"alice serial=1\"",
        "audit chain OK",
    ] {
        assert!(
            text.contains(needle),
            "no {needle:?} in the demo's output:\n{text}"
        );
    }
    // Every process it started is gone: nothing still holds its directory.
    let left = Command::new("pgrep")
        .args(["-f", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "the demo left processes behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
