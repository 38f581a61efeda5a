//! The real `pedm-ca` binary: `init`, `serve` as a child process, `issue`, `audit`.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bins;
use crate::logs::Lines;

/// How long `serve` may take to print `listening on` (key decryption with bcrypt-pbkdf).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped CA may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at a free port (another process may take the port chosen).
const PORT_ATTEMPTS: usize = 5;
/// The `USER` the CLI runs as: break-glass records name it as the operator.
pub const OPERATOR: &str = "e2e-operator";

/// A CA made by `pedm-ca init`.
#[derive(Clone, Debug)]
pub struct TestCa {
    pub data_dir: PathBuf,
    /// `SHA256:…` of the trust root, as `init` printed it.
    pub trust_root: String,
    /// `SHA256:…` of the first CA signing key, as `init` printed it.
    pub ca_key: String,
    /// The CA public key line `init` printed.
    pub ca_public_key: String,
    passphrase: Option<String>,
}

/// Text of an `Output` for messages.
pub fn describe(o: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A free TCP port on 127.0.0.1 at the time of the call (it may be taken before use).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Sends SIGTERM to `pid` (best effort).
pub fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, then waits up to `timeout` for the exit, then SIGKILL. Returns the exit status.
pub fn terminate(child: &mut Child, timeout: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    sigterm(child.id());
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait()
}

/// `pedm-ca ARGS` with a clean environment for the passphrase and the operator name.
fn pedm_ca(passphrase: Option<&str>) -> Command {
    let mut cmd = Command::new(bins::pedm_ca());
    cmd.stdin(Stdio::null())
        .env_remove("SUDO_USER")
        .env("USER", OPERATOR)
        .env_remove("PEDM_LOG")
        // Plain log lines in the captured output.
        .env("NO_COLOR", "1");
    match passphrase {
        Some(p) => cmd.env("PEDM_CA_PASSPHRASE", p),
        None => cmd.env_remove("PEDM_CA_PASSPHRASE"),
    };
    cmd
}

/// Runs `pedm-ca audit verify --data-dir DIR`.
pub fn audit_verify(data_dir: &Path) -> Output {
    pedm_ca(None)
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("running pedm-ca audit verify")
}

/// Runs `pedm-ca audit export --data-dir DIR`.
pub fn audit_export(data_dir: &Path) -> Output {
    pedm_ca(None)
        .args(["audit", "export", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("running pedm-ca audit export")
}

impl TestCa {
    /// `pedm-ca init --data-dir DIR` with the passphrase in `PEDM_CA_PASSPHRASE`, or
    /// `--insecure-no-passphrase` when `None`.
    pub fn init(data_dir: &Path, passphrase: Option<&str>) -> Result<TestCa> {
        Self::init_with_args(data_dir, passphrase, &[])
    }

    /// [`TestCa::init`] with more arguments (e.g. `--bundle-lifetime 10s`).
    pub fn init_with_args(
        data_dir: &Path,
        passphrase: Option<&str>,
        extra_args: &[&str],
    ) -> Result<TestCa> {
        let mut cmd = pedm_ca(passphrase);
        cmd.args(["init", "--data-dir"])
            .arg(data_dir)
            .args(extra_args);
        if passphrase.is_none() {
            cmd.arg("--insecure-no-passphrase");
        }
        let out = cmd.output().context("running pedm-ca init")?;
        if !out.status.success() {
            bail!("pedm-ca init failed: {}", describe(&out));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let field = |i: usize, prefix: &str| -> Result<String> {
            lines
                .get(i)
                .and_then(|l| l.strip_prefix(prefix))
                .filter(|fp| fp.starts_with("SHA256:"))
                .map(str::to_string)
                .with_context(|| {
                    format!(
                        "pedm-ca init: line {} is not `{prefix}SHA256:…`:\n{text}",
                        i + 1
                    )
                })
        };
        let trust_root = field(0, "trust-root: ")?;
        let ca_key = field(1, "ca-key: ")?;
        let ca_public_key = lines
            .get(2)
            .filter(|l| l.starts_with("ssh-ed25519 "))
            .with_context(|| format!("pedm-ca init: line 3 is not an ssh-ed25519 key:\n{text}"))?
            .to_string();
        if lines.len() != 3 {
            bail!("pedm-ca init printed {} lines, not 3:\n{text}", lines.len());
        }
        Ok(TestCa {
            data_dir: data_dir.to_path_buf(),
            trust_root,
            ca_key,
            ca_public_key,
            passphrase: passphrase.map(str::to_string),
        })
    }

    /// `pedm-ca` with this CA's passphrase in the environment.
    pub fn command(&self) -> Command {
        pedm_ca(self.passphrase.as_deref())
    }

    /// Runs `pedm-ca issue --data-dir DIR --public-key KEY --principal P… --ttl TTL
    /// --reason REASON` and returns its output, whatever it is.
    pub fn issue_output(
        &self,
        public_key: &Path,
        principals: &[&str],
        ttl: &str,
        reason: &str,
    ) -> Output {
        let mut cmd = self.command();
        cmd.args(["issue", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--public-key")
            .arg(public_key);
        for p in principals {
            cmd.args(["--principal", p]);
        }
        cmd.args(["--ttl", ttl, "--reason", reason]);
        cmd.output().expect("running pedm-ca issue")
    }

    /// Break-glass issuance; returns the certificate line (with a final newline).
    pub fn issue_break_glass(
        &self,
        public_key: &Path,
        principals: &[&str],
        ttl: &str,
        reason: &str,
    ) -> Result<String> {
        let out = self.issue_output(public_key, principals, ttl, reason);
        if !out.status.success() {
            bail!("pedm-ca issue failed: {}", describe(&out));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let cert = text.trim();
        if !cert.starts_with("ssh-")
            || !cert.contains("-cert-v01@openssh.com ")
            || cert.contains('\n')
        {
            bail!(
                "pedm-ca issue did not print one certificate line: {}",
                describe(&out)
            );
        }
        Ok(format!("{cert}\n"))
    }

    /// Writes `ca.toml` next to the data directory (listen and `public_url` on a free port,
    /// `data_dir`, then `extra_toml`) and runs `pedm-ca serve --config ca.toml` until it
    /// prints `listening on ADDR`. Retries on another port when the chosen one was taken.
    pub fn serve(&self, extra_toml: &str) -> Result<CaServer> {
        let config = self
            .data_dir
            .parent()
            .context("the data directory has no parent")?
            .join(format!(
                "{}-ca.toml",
                self.data_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let text = format!(
                "listen = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\ndata_dir = {}\n{extra_toml}\n",
                toml_string(&self.data_dir)
            );
            std::fs::write(&config, &text)
                .with_context(|| format!("writing {}", config.display()))?;
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;
            match CaServer::spawn(self, &config, port)? {
                Ok(server) => return Ok(server),
                Err((err, port_taken)) => {
                    if !port_taken {
                        return Err(err);
                    }
                    last_err = Some(err);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }
}

/// A path as a TOML basic string.
pub fn toml_string(p: &Path) -> String {
    let s = p.to_str().expect("UTF-8 path");
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A running `pedm-ca serve`. Dropping it stops it with SIGTERM (so it writes its shutdown
/// checkpoint) and waits.
pub struct CaServer {
    child: Option<Child>,
    url: String,
    port: u16,
    config: PathBuf,
    stdout: Lines,
    stderr: Lines,
}

impl CaServer {
    /// `Ok(Err((error, port_taken)))` when the server did not come up.
    #[allow(clippy::type_complexity)]
    fn spawn(
        ca: &TestCa,
        config: &Path,
        port: u16,
    ) -> Result<std::result::Result<CaServer, (anyhow::Error, bool)>> {
        let mut child = ca
            .command()
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning pedm-ca serve")?;
        let stdout = Lines::new();
        let stderr = Lines::new();
        stdout.drain(child.stdout.take().context("stdout not piped")?, "");
        stderr.drain(child.stderr.take().context("stderr not piped")?, "");
        let mut server = CaServer {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            port,
            config: config.to_path_buf(),
            stdout,
            stderr,
        };
        let ready = server
            .stdout
            .wait_for(0, READY_TIMEOUT, |l| l.starts_with("listening on "));
        match ready {
            Some((_, line)) => {
                let addr = line.trim_start_matches("listening on ").trim();
                if addr != format!("127.0.0.1:{port}") {
                    let err = anyhow::anyhow!(
                        "pedm-ca serve listens on {addr}, not 127.0.0.1:{port}\n{}",
                        server.logs()
                    );
                    return Ok(Err((err, false)));
                }
                Ok(Ok(server))
            }
            None => {
                let status = server
                    .child
                    .as_mut()
                    .map(|c| terminate(c, STOP_TIMEOUT))
                    .transpose()?;
                server.child = None;
                let logs = server.logs();
                let taken = logs.contains("Address already in use")
                    || logs.contains("address already in use");
                let err = anyhow::anyhow!(
                    "pedm-ca serve did not print `listening on` (exit: {status:?})\n{logs}"
                );
                Ok(Err((err, taken)))
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `ca.toml` it runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// The captured stdout and stderr, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- pedm-ca serve stdout ---\n{}\n--- pedm-ca serve stderr ---\n{}\n---",
            self.stdout.text(),
            self.stderr.text()
        )
    }

    /// `GET url + path`: status and body text.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.url);
        let resp = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?
            .get(&url)
            .send()
            .with_context(|| format!("GET {url}\n{}", self.logs()))?;
        let status = resp.status().as_u16();
        let body = resp.text().with_context(|| format!("reading {url}"))?;
        Ok((status, body))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, wait for the exit (which writes the shutdown checkpoint), return the status.
    /// The captured lines stay readable afterwards.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let status = terminate(&mut child, STOP_TIMEOUT)?;
        // The process is gone: its pipes reach EOF, and the readers finish.
        self.stdout.wait_ended(STOP_TIMEOUT);
        self.stderr.wait_ended(STOP_TIMEOUT);
        Ok(status)
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, STOP_TIMEOUT);
        }
        if thread::panicking() || crate::env::show_logs() {
            eprintln!("{}", self.logs());
        }
    }
}
