//! Everyday use with real parts (real CA, real test IdP, real sshd, real ssh-agent): plain
//! `ssh` through the `pedm-ssh config` snippet logs in, renews an expired certificate on its
//! own, and leaves one base certificate of ours in the agent; `ensure` with time left needs
//! no CA at all.

use pedm_e2e::ca::describe;
use pedm_e2e::signin::{cli_login, pedm_ssh, SignInSetup};
use pedm_e2e::sshd::TestSshd;
use pedm_e2e::{env, users};
use ssh_key::Certificate;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// alice is in `oncall`: with this role her certificates live 5 seconds (the shortest TTL of
/// her roles wins).
const SHORT_ROLE: &str = r#"
[[roles]]
name = "short"
groups = ["oncall"]
principals = ["{username}"]
max_cert_ttl = "5s"
"#;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn cert_of(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push("-cert.pub");
    p.into()
}

fn read_cert(key: &Path) -> Certificate {
    let text = std::fs::read_to_string(cert_of(key)).expect("certificate file");
    Certificate::from_openssh(text.trim()).expect("certificate")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An ssh-agent of the test's own, stopped on drop.
struct Agent {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent {
            child,
            sock,
            _dir: dir,
        }
    }

    /// The certificates the agent holds for `user` (key ID `USER serial=...`), as
    /// (key ID, serial).
    fn certificates_of(&self, user: &str) -> Vec<(String, u64)> {
        let out = Command::new("ssh-add")
            .arg("-L")
            .env("SSH_AUTH_SOCK", &self.sock)
            .output()
            .expect("ssh-add -L");
        stdout(&out)
            .lines()
            .filter_map(|l| Certificate::from_openssh(l.trim()).ok())
            .filter(|c| c.key_id().starts_with(&format!("{user} serial=")))
            .map(|c| (c.key_id().to_string(), c.serial()))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plain `ssh -F CONFIG -p PORT alice@127.0.0.1 id -un`, with the environment the user's
/// shell would have (HOME, XDG_CONFIG_HOME, SSH_AUTH_SOCK), which the `Match exec` child
/// inherits.
fn plain_ssh(home: &Path, config: &Path, agent: &Agent, port: u16, user: &str) -> Output {
    Command::new("ssh")
        .arg("-F")
        .arg(config)
        .args(["-p", &port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .arg("id -un")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("SSH_AUTH_SOCK", &agent.sock)
        .env_remove("PEDM_CA")
        .stdin(Stdio::null())
        .output()
        .expect("running ssh")
}

#[test]
fn plain_ssh_through_the_snippet_renews_an_expired_certificate_on_its_own() {
    if !env::require_root_and_sshd() {
        return;
    }
    let Some(s) = SignInSetup::start_with(SHORT_ROLE).expect("IdP and CA") else {
        return;
    };
    users::ensure_user("alice");
    let sshd = TestSshd::start(s.server.url(), &s.ca.trust_root, "").expect("sshd");
    let agent = Agent::start();

    let home = s.dir.path().join("alice-home");
    let key = home.join(".ssh/pedm_ed25519");
    std::fs::create_dir_all(&home).expect("home");
    let out = cli_login(s.server.url(), &home, &key, "alice").expect("login");
    assert!(out.status.success(), "login: {}", describe(&out));
    let first = read_cert(&key);
    let ttl = first.valid_before() - now().min(first.valid_before());
    assert!(ttl <= 5, "the short role did not apply: {ttl} s left");

    // The snippet, plus what a test needs to talk to a throw-away sshd.
    let snippet = pedm_ssh(&home).arg("config").output().expect("config");
    assert!(snippet.status.success(), "{}", describe(&snippet));
    let exe = std::fs::canonicalize(pedm_e2e::bins::pedm_ssh()).expect("pedm-ssh path");
    assert!(
        stdout(&snippet).contains(&format!("Match exec \"{} ensure --quiet\"", exe.display())),
        "{}",
        describe(&snippet)
    );
    let config = s.dir.path().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "{}Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  \
GlobalKnownHostsFile /dev/null\n  BatchMode yes\n  PreferredAuthentications publickey\n  \
ConnectTimeout 20\n  LogLevel ERROR\n",
            stdout(&snippet)
        ),
    )
    .expect("write ssh_config");

    let ran = plain_ssh(&home, &config, &agent, sshd.port(), "alice");
    assert!(
        ran.status.success(),
        "plain ssh: {}\n{}",
        describe(&ran),
        sshd.logs()
    );
    assert_eq!(stdout(&ran).trim(), "alice");
    // Right away once more: with 5 s of life and the default 60 s margin, `ensure` renews
    // again, and the agent must not keep the certificate of the first run beside it.
    let ran = plain_ssh(&home, &config, &agent, sshd.port(), "alice");
    assert!(ran.status.success(), "plain ssh again: {}", describe(&ran));
    let in_agent = agent.certificates_of("alice");
    assert_eq!(in_agent.len(), 1, "{in_agent:?}");
    assert_eq!(in_agent[0].1, read_cert(&key).serial(), "{in_agent:?}");

    // Wait until the certificate on disk has expired, then plain ssh again.
    let current = read_cert(&key);
    while now() <= current.valid_before() + 1 {
        std::thread::sleep(Duration::from_millis(250));
    }
    let mark = sshd.log_mark();
    let ran = plain_ssh(&home, &config, &agent, sshd.port(), "alice");
    assert!(
        ran.status.success(),
        "plain ssh after expiry: {}\n{}",
        describe(&ran),
        sshd.logs()
    );
    assert_eq!(stdout(&ran).trim(), "alice");
    let renewed = read_cert(&key);
    assert!(
        renewed.serial() != current.serial() && renewed.valid_before() > current.valid_before(),
        "ensure did not renew the certificate"
    );
    sshd.wait_for_log_since(
        mark,
        &format!(
            "Accepted certificate ID \"alice serial={}",
            renewed.serial()
        ),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: sshd did not log the new certificate:\n{}",
            sshd.logs()
        )
    });

    // Every `ensure` added its certificate to the agent; only one of ours is left.
    let in_agent = agent.certificates_of("alice");
    assert!(in_agent.len() <= 1, "{in_agent:?}");
    assert!(
        in_agent
            .iter()
            .all(|(_, serial)| *serial == renewed.serial()),
        "{in_agent:?}"
    );
}

#[test]
fn ensure_with_time_left_succeeds_with_the_ca_stopped() {
    let Some(mut s) = SignInSetup::start().expect("IdP and CA") else {
        return;
    };
    // bob's certificates live 4 minutes.
    let home = s.dir.path().join("bob-home");
    let key = home.join(".ssh/pedm_ed25519");
    std::fs::create_dir_all(&home).expect("home");
    let out = cli_login(s.server.url(), &home, &key, "bob").expect("login");
    assert!(out.status.success(), "login: {}", describe(&out));
    let before = std::fs::read(cert_of(&key)).expect("certificate");
    s.server.stop().expect("stop the CA");

    for margin in ["1s", "60s"] {
        let out = pedm_ssh(&home)
            .args(["ensure", "--quiet", "--margin", margin])
            .output()
            .expect("ensure");
        assert_eq!(out.status.code(), Some(0), "{margin}: {}", describe(&out));
        assert!(out.stdout.is_empty(), "{}", describe(&out));
    }
    assert_eq!(std::fs::read(cert_of(&key)).expect("certificate"), before);
    // A margin beyond the certificate's life needs the CA, which is gone: exit 1.
    let out = pedm_ssh(&home)
        .args(["ensure", "--quiet", "--margin", "1h"])
        .output()
        .expect("ensure");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}
