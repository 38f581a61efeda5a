//! A private OpenSSH sshd on 127.0.0.1 whose CA trust and principals come only from
//! `pedm-host-config install`.
//!
//! The tree lives under [`crate::env::strict_tempdir`]: root-owned 0755 up to `/`, so sshd
//! runs with its default `StrictModes yes` (the system temp directory, mode 1777, would make
//! it refuse the principals files). The main `sshd_config` sets only what a private instance
//! needs and `Include`s `ETC/sshd_config.d/*.conf` *first*, as Debian's does, so the
//! `50-pedm.conf` drop-in that `pedm-host-config` writes is effective (sshd keeps the first
//! value it reads). Nothing else names a CA key or a principals file.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::bins;
use crate::ca::{describe, free_port, terminate};
use crate::env::{self, SSHD};
use crate::logs::Lines;

/// How long sshd may take to print `Server listening on`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped sshd may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a free port (another process may take the port chosen).
const PORT_ATTEMPTS: usize = 5;
/// Default bound for log waits in tests (a failure bound, never a correctness condition).
pub const LOG_TIMEOUT: Duration = Duration::from_secs(15);

/// A running private sshd. Dropping it stops sshd and removes the tree.
pub struct TestSshd {
    child: Option<Child>,
    port: u16,
    etc: PathBuf,
    config: PathBuf,
    host_toml: PathBuf,
    log: Lines,
    install: Output,
    // Last: removed after sshd has stopped.
    dir: TempDir,
}

impl TestSshd {
    /// Lays out a fresh sshd tree, runs `pedm-host-config install --ca CA_URL --trust-root
    /// TRUST_ROOT --config host.toml --etc-dir ETC --sshd /usr/sbin/sshd --no-reload` with
    /// `host_toml` as the host configuration, and starts sshd on a free port. Fails (with the
    /// installer's output) when the install fails.
    pub fn start(ca_url: &str, trust_root: &str, host_toml: &str) -> Result<TestSshd> {
        let mut sshd = Self::prepare(host_toml)?;
        sshd.install = sshd.install(ca_url, trust_root);
        if !sshd.install.status.success() {
            bail!(
                "pedm-host-config install failed: {}",
                describe(&sshd.install)
            );
        }
        sshd.run()?;
        Ok(sshd)
    }

    /// Lays out a fresh sshd tree (host key, main `sshd_config`, empty `sshd_config.d/`,
    /// `host.toml`) without installing anything or starting sshd: for tests of the install
    /// itself. [`TestSshd::install`] and [`TestSshd::run`] do the rest.
    pub fn prepare(host_toml: &str) -> Result<TestSshd> {
        env::ensure_privsep_dir();
        let dir = env::strict_tempdir("sshd-");
        let root = dir.path().to_path_buf();
        let etc = root.join("etc");
        std::fs::create_dir_all(etc.join("sshd_config.d"))?;
        let host_key = etc.join("ssh_host_ed25519_key");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "pedm-e2e host", "-f"])
            .arg(&host_key)
            .stdin(Stdio::null())
            .output()
            .context("running ssh-keygen for the host key")?;
        if !out.status.success() {
            bail!("ssh-keygen (host key) failed: {}", describe(&out));
        }
        let config = etc.join("sshd_config");
        let host_toml_path = root.join("host.toml");
        std::fs::write(&host_toml_path, host_toml)?;

        let mut sshd = TestSshd {
            child: None,
            port: 0,
            etc,
            config,
            host_toml: host_toml_path,
            log: Lines::new(),
            install: Output {
                status: Default::default(),
                stdout: Vec::new(),
                stderr: Vec::new(),
            },
            dir,
        };
        sshd.write_main_config(free_port())?;
        Ok(sshd)
    }

    /// Every file and directory under the tree except sshd's pid file: mode and content.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(meta) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                let mode = meta.permissions().mode();
                if meta.is_dir() {
                    out.insert(p.clone(), (mode, None));
                    walk(&p, out);
                } else if p.file_name().is_some_and(|n| n != "sshd.pid") {
                    out.insert(p.clone(), (mode, std::fs::read(&p).ok()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }

    fn main_config_text(&self, port: u16) -> String {
        let etc = self.etc.display();
        format!(
            "# Private sshd of the pedm-ssh end-to-end tests. CA trust and principals come only\n\
             # from the pedm-host-config drop-in, included first so that its values win.\n\
             Include {etc}/sshd_config.d/*.conf\n\
             Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {etc}/ssh_host_ed25519_key\n\
             PidFile {}/sshd.pid\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             AuthorizedKeysFile none\n\
             PermitRootLogin no\n\
             StrictModes yes\n\
             LogLevel VERBOSE\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             X11Forwarding no\n",
            self.dir.path().display()
        )
    }

    fn write_main_config(&mut self, port: u16) -> Result<()> {
        std::fs::write(&self.config, self.main_config_text(port))
            .with_context(|| format!("writing {}", self.config.display()))?;
        self.port = port;
        Ok(())
    }

    /// Runs `pedm-host-config install` against `ca_url` for this tree (again); returns its
    /// output whatever it is. sshd re-reads the data files per connection; a changed drop-in
    /// needs [`TestSshd::reload`].
    pub fn install(&self, ca_url: &str, trust_root: &str) -> Output {
        self.install_with(ca_url, trust_root, &[])
    }

    /// [`TestSshd::install`] with more arguments (e.g. `--dry-run`).
    pub fn install_with(&self, ca_url: &str, trust_root: &str, extra: &[&str]) -> Output {
        Command::new(bins::pedm_host_config())
            .args(["install", "--ca", ca_url, "--trust-root", trust_root])
            .arg("--config")
            .arg(&self.host_toml)
            .arg("--etc-dir")
            .arg(&self.etc)
            .arg("--sshd-config")
            .arg(&self.config)
            .args(["--sshd", SSHD, "--no-reload"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("running pedm-host-config install")
    }

    /// `pedm-host-config refresh` for this tree (what the systemd timer runs on a host).
    pub fn refresh(&self) -> Output {
        Command::new(bins::pedm_host_config())
            .arg("refresh")
            .arg("--etc-dir")
            .arg(&self.etc)
            .args(["--sshd", SSHD, "--no-reload"])
            .stdin(Stdio::null())
            .output()
            .expect("running pedm-host-config refresh")
    }

    /// `pedm-host-config enroll --token T` with this tree's sshd host key.
    pub fn enroll(&self, token: &str, host_name: &str) -> Output {
        Command::new(bins::pedm_host_config())
            .args(["enroll", "--token", token, "--host-name", host_name])
            .arg("--etc-dir")
            .arg(&self.etc)
            .stdin(Stdio::null())
            .output()
            .expect("running pedm-host-config enroll")
    }

    /// Starts `sshd -D -e -f CONFIG` and waits for `Server listening on`, retrying on another
    /// port when the port was taken.
    pub fn run(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("sshd is already running");
        }
        let mut last = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            if attempt > 0 {
                self.write_main_config(free_port())?;
            }
            let mark = self.log.len();
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("spawning {SSHD}"))?;
            // A fresh Lines per process, so that "ended" means this process ended.
            let log = Lines::new();
            for line in self.log.snapshot() {
                log.push(line);
            }
            log.drain(
                child.stdout.take().context("stdout not piped")?,
                "[stdout] ",
            );
            log.drain(child.stderr.take().context("stderr not piped")?, "");
            self.log = log;
            let wanted = format!("Server listening on 127.0.0.1 port {}", self.port);
            if self
                .log
                .wait_for(mark, READY_TIMEOUT, |l| l.contains(&wanted))
                .is_some()
            {
                self.child = Some(child);
                return Ok(());
            }
            let status = terminate(&mut child, STOP_TIMEOUT)?;
            self.log.wait_ended(STOP_TIMEOUT);
            let lines = self.log.since(mark).join("\n");
            last = format!("sshd did not start ({status}):\n{lines}");
            if !lines.contains("Address already in use") {
                break;
            }
        }
        bail!(
            "{last}\n--- sshd_config ---\n{}",
            self.main_config_text(self.port)
        )
    }

    /// Sends SIGHUP (sshd re-executes itself and re-reads its configuration) and waits until
    /// it listens again.
    pub fn reload(&self) -> Result<()> {
        let child = self.child.as_ref().context("sshd is not running")?;
        let mark = self.log.len();
        let st = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()?;
        if !st.success() {
            bail!("kill -HUP failed");
        }
        let wanted = format!("Server listening on 127.0.0.1 port {}", self.port);
        self.wait_for_log_since(mark, &wanted, READY_TIMEOUT)?;
        Ok(())
    }

    /// The sshd configuration directory (`--etc-dir` of the install).
    pub fn etc_dir(&self) -> &Path {
        &self.etc
    }

    /// `ETC/pedm`, where `pedm-host-config` keeps its files.
    pub fn pedm_dir(&self) -> PathBuf {
        self.etc.join("pedm")
    }

    /// The main `sshd_config`.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The `host.toml` given to the installer.
    pub fn host_toml_path(&self) -> &Path {
        &self.host_toml
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the first `pedm-host-config install` printed.
    pub fn install_output(&self) -> &Output {
        &self.install
    }

    /// sshd's log lines so far (stderr; stdout lines are prefixed `[stdout] `).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.snapshot()
    }

    /// The number of log lines so far: pass it to [`TestSshd::wait_for_log_since`] to look
    /// only at what a later connection logs.
    pub fn log_mark(&self) -> usize {
        self.log.len()
    }

    /// Log lines from `mark` on.
    pub fn log_since(&self, mark: usize) -> Vec<String> {
        self.log.since(mark)
    }

    /// The whole log, for failure messages.
    pub fn logs(&self) -> String {
        format!("--- sshd log ---\n{}\n---", self.log.text())
    }

    /// Waits for a log line containing `substring` and returns it. `timeout` only bounds a
    /// failure; the error carries the whole log.
    pub fn wait_for_log(&self, substring: &str, timeout: Duration) -> Result<String> {
        self.wait_for_log_since(0, substring, timeout)
    }

    /// [`TestSshd::wait_for_log`] for lines at index `mark` or later.
    pub fn wait_for_log_since(
        &self,
        mark: usize,
        substring: &str,
        timeout: Duration,
    ) -> Result<String> {
        match self.log.wait_for(mark, timeout, |l| l.contains(substring)) {
            Some((_, line)) => Ok(line),
            None => bail!(
                "sshd logged no line containing {substring:?} (after line {mark}, within {timeout:?})\n{}",
                self.logs()
            ),
        }
    }

    /// Runs `ssh -F /dev/null -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes
    /// -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null [-o CertificateFile=CERT]
    /// -i KEY -p PORT USER@127.0.0.1 COMMAND`. With `cert = None` no certificate is offered:
    /// panics if `KEY-cert.pub` exists (ssh would offer it on its own) unless it is `cert`.
    pub fn ssh(&self, user: &str, key: &Path, cert: Option<&Path>, command: &str) -> Output {
        let mut auto_cert = key.as_os_str().to_owned();
        auto_cert.push("-cert.pub");
        assert!(
            cert.is_some_and(|c| c.as_os_str() == auto_cert) || !Path::new(&auto_cert).exists(),
            "{} exists: ssh would offer it by itself; keep certificates elsewhere",
            Path::new(&auto_cert).display()
        );
        let mut cmd = Command::new("ssh");
        cmd.args([
            "-F",
            "/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "ConnectTimeout=20",
            // No "Permanently added" warnings; errors such as "Permission denied" remain.
            "-o",
            "LogLevel=ERROR",
        ]);
        if let Some(cert) = cert {
            let mut opt = std::ffi::OsString::from("CertificateFile=");
            opt.push(cert);
            cmd.arg("-o").arg(opt);
        }
        cmd.arg("-i")
            .arg(key)
            .args(["-p", &self.port.to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::null())
            .env_remove("SSH_AUTH_SOCK");
        cmd.output().expect("running ssh")
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, STOP_TIMEOUT);
        }
        if thread::panicking() || crate::env::show_logs() {
            eprintln!("{}", self.logs());
            eprintln!(
                "--- pedm-host-config install ---\n{}",
                describe(&self.install)
            );
        }
    }
}
