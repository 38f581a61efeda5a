//! A CA with browser sign-in: the test IdP behind the tampering proxy, `pedm-ca serve`
//! configured with the proxy as issuer, and a driver for the real `pedm-ssh login`.

use crate::ca::{toml_string, CaServer, TestCa};
use crate::idp::{self, IdpOptions, TestIdp};
use crate::proxy::TamperProxy;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The client secret the IdP and the CA share in tests.
pub const CLIENT_SECRET: &str = "e2e-client-secret-0123456789";

/// Roles of the tests: `eng` → engineer (own name, 4m), `security` → security (own name).
pub fn ca_oidc_config(issuer: &str, secret_file: &Path) -> String {
    ca_oidc_config_with_admin(issuer, secret_file, "")
}

/// [`ca_oidc_config`] with more keys in its `[admin]` table.
pub fn ca_oidc_config_with_admin(issuer: &str, secret_file: &Path, admin_extra: &str) -> String {
    format!(
        r#"
[oidc]
issuer = "{issuer}"
client_id = "pedm-ca"
client_secret_file = {secret}

[certs]
default_ttl = "5m"
session_ttl = "1h"

[[roles]]
name = "engineer"
groups = ["eng"]
principals = ["{{username}}"]
max_cert_ttl = "4m"
extensions = ["permit-pty", "permit-port-forwarding"]

[[roles]]
name = "security"
groups = ["security"]
principals = ["{{username}}"]

[admin]
groups = ["security"]
{admin_extra}

[[elevations]]
name = "db-admin"
principals = ["db-admin"]
eligible_roles = ["engineer"]
max_duration = "30m"
approval = {{ groups = ["security"], count = 1 }}
auto_approve = {{ groups = ["oncall"], reason_matches = "INC-[0-9]+" }}
"#,
        secret = toml_string(secret_file)
    )
}

/// IdP, proxy and CA, stopped on drop.
pub struct SignInSetup {
    pub server: CaServer,
    pub proxy: TamperProxy,
    pub idp: TestIdp,
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
}

impl SignInSetup {
    /// `None`: skip (no Node.js outside CI).
    pub fn start() -> Result<Option<SignInSetup>> {
        Self::start_with("")
    }

    /// [`SignInSetup::start`] with more CA configuration appended (`[[elevations]]` tables,
    /// say; top-level keys cannot be added this way).
    pub fn start_with(extra_toml: &str) -> Result<Option<SignInSetup>> {
        Self::start_with_admin("", extra_toml)
    }

    /// [`SignInSetup::start_with`] with more keys in `[admin]` (`approver_recent_auth`).
    pub fn start_with_admin(admin_extra: &str, extra_toml: &str) -> Result<Option<SignInSetup>> {
        Self::start_inner(admin_extra, extra_toml, false, false)
    }

    /// [`SignInSetup::start_with`] with the IdP's device flow enabled, and the CA's
    /// `[oidc] device_flow` set to `ca_device_flow`.
    pub fn start_device(ca_device_flow: bool, extra_toml: &str) -> Result<Option<SignInSetup>> {
        Self::start_inner("", extra_toml, true, ca_device_flow)
    }

    fn start_inner(
        admin_extra: &str,
        extra_toml: &str,
        idp_device_flow: bool,
        ca_device_flow: bool,
    ) -> Result<Option<SignInSetup>> {
        if !idp::node_available()? {
            return Ok(None);
        }
        idp::ensure_npm_ci()?;
        let dir = tempfile::tempdir()?;
        let proxy = TamperProxy::bind()?;
        let idp = TestIdp::start(IdpOptions {
            client_secret: CLIENT_SECRET.into(),
            issuer: Some(proxy.url()),
            device_flow: idp_device_flow,
            ..IdpOptions::default()
        })?;
        proxy.set_upstream(&format!("http://127.0.0.1:{}", idp.port));
        let ca = TestCa::init(&dir.path().join("ca"), None)?;
        let secret_file = dir.path().join("client-secret");
        std::fs::write(&secret_file, CLIENT_SECRET)?;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))?;
        let mut config = ca_oidc_config_with_admin(&proxy.url(), &secret_file, admin_extra);
        if ca_device_flow {
            config = config.replacen(
                "client_id = \"pedm-ca\"\n",
                "client_id = \"pedm-ca\"\ndevice_flow = true\n",
                1,
            );
        }
        let server = ca.serve(&format!("{config}\n{extra_toml}"))?;
        Ok(Some(SignInSetup {
            server,
            proxy,
            idp,
            ca,
            dir,
        }))
    }
}

/// `pedm-ssh` with a throw-away HOME and XDG_CONFIG_HOME under `home`, no agent.
pub fn pedm_ssh(home: &Path) -> Command {
    let mut cmd = Command::new(crate::bins::pedm_ssh());
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("PEDM_CA")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null());
    cmd
}

/// Runs `pedm-ssh login --ca URL --no-browser --key KEY` as a person would: reads the URL it
/// prints alone on a line of stderr, signs `login` in at the IdP, follows the redirect to the
/// CLI's own listener (which must answer 200), and returns the CLI's output once it exits.
/// A CLI that refuses the sign-in still answers its callback page; see its exit status.
pub fn cli_login(ca_url: &str, home: &Path, key: &Path, login: &str) -> Result<Output> {
    let mut child = pedm_ssh(home)
        .args(["login", "--ca", ca_url, "--no-browser", "--key"])
        .arg(key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning pedm-ssh login")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let url = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("http://") || line.starts_with("https://") => {
                if !line.contains(' ') {
                    break line;
                }
            }
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                let err = reader.join().unwrap_or_default().join("\n");
                bail!(
                    "pedm-ssh login printed no URL alone on a stderr line ({}):\n{err}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
    };
    let callback = idp::browser_login(&url, login);
    let browser_result = callback.and_then(|cb| {
        // The browser follows the IdP's redirect to the CLI's listener.
        let resp = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?
            .get(cb.as_str())
            .send()?;
        Ok(resp.status().as_u16())
    });
    let out = child.wait_with_output()?;
    let err = reader.join().unwrap_or_default().join("\n");
    let status =
        browser_result.with_context(|| format!("browser part failed; CLI stderr:\n{err}"))?;
    if status != 200 {
        bail!("the CLI's callback page answered {status}; CLI stderr:\n{err}");
    }
    Ok(Output {
        status: out.status,
        stdout: out.stdout,
        stderr: err.into_bytes(),
    })
}

/// A JSON call to the CA: status and body (a problem document on refusals).
pub fn call(
    server: &CaServer,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client");
    let url = format!("{}{path}", server.url());
    let mut req = match method {
        "GET" => client.get(&url),
        _ => client.post(&url),
    };
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("CA request");
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

/// The last segment of a problem document's type URI.
pub fn problem_slug(v: &serde_json::Value) -> String {
    v["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("urn:pedm-ssh:problem:"))
        .unwrap_or("(not a problem document)")
        .to_string()
}

/// Signs `login` in over the API as the CLI does (start, IdP, finish), optionally asking the
/// IdP to authenticate again; returns the session token.
pub fn api_login(server: &CaServer, login: &str, reauth: bool) -> Result<String> {
    use sha2::{Digest, Sha256};
    let secret: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let hash: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let redirect_uri = format!(
        "http://127.0.0.1:{}/callback",
        40_000 + rand::random::<u16>() % 20_000
    );
    let (status, start) = call(
        server,
        "POST",
        "/v1/auth/oidc/start",
        Some(&serde_json::json!({
            "redirect_uri": redirect_uri,
            "login_secret_sha256": hash,
            "reauth": reauth,
        })),
        None,
    );
    if status != 200 {
        bail!("start: {status} {start}");
    }
    let url = start["authorization_url"]
        .as_str()
        .context("authorization_url")?;
    let cb = idp::browser_login(url, login)?;
    let q = |k: &str| {
        cb.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    let (status, v) = call(
        server,
        "POST",
        "/v1/auth/oidc/finish",
        Some(&serde_json::json!({
            "code": q("code").context("no code on the callback")?,
            "state": q("state").context("no state on the callback")?,
            "iss": q("iss"),
            "login_secret": secret,
        })),
        None,
    );
    if status != 200 {
        bail!("finish for {login}: {status} {v}");
    }
    Ok(v["session_token"]
        .as_str()
        .context("session_token")?
        .to_string())
}
