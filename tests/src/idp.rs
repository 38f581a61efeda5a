//! The test OpenID provider (tests/idp) as a child process.
//!
//! `TestIdp::start` runs `node tests/idp/server.mjs` (an `oidc-provider` 9.13 instance with one
//! confidential client and fixed test users) and waits for its ready line. `browser_login` and
//! `device_login` sign a user in over plain HTTP, as a person with a browser would.
//!
//! Everything here is blocking (reqwest's blocking client): from an async test, call it through
//! `tokio::task::spawn_blocking`.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::blocking::{Client, Response};
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use url::Url;

/// How long `TestIdp::start` waits for the ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `ensure_npm_ci` waits for another process's `npm ci`.
const NPM_LOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// Redirects and form posts followed by one sign-in before giving up.
const MAX_HOPS: usize = 20;

/// The directory holding `server.mjs`, `package.json` and `package-lock.json`.
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

/// Whether `node` runs. Tests that need the IdP call this first: `Ok(false)` means "skip"
/// (node missing on a developer machine); with `CI=true` a missing node is an error.
pub fn node_available() -> Result<bool> {
    let found = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Ok(true);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!(
            "`node` is not on PATH, and CI=true: the test OpenID provider needs Node.js >= 20.18"
        );
    }
    eprintln!("skipping: `node` is not on PATH (the test OpenID provider needs Node.js >= 20.18)");
    Ok(false)
}

static NPM_CI: Mutex<()> = Mutex::new(());

/// Runs `npm ci --no-audit --no-fund` in tests/idp unless its node_modules is already installed
/// from the current lockfile. Safe to call from parallel tests and parallel test processes.
pub fn ensure_npm_ci() -> Result<()> {
    let _in_process = NPM_CI
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = idp_dir();
    if npm_install_is_current(&dir) {
        return Ok(());
    }
    let _across_processes = DirLock::acquire(&dir.join(".npm-ci.lock"), NPM_LOCK_TIMEOUT)?;
    if npm_install_is_current(&dir) {
        return Ok(());
    }
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `npm ci` in {}", dir.display()))?;
    if !output.status.success() {
        bail!(
            "`npm ci` in {} failed ({}):\n{}\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if !npm_install_is_current(&dir) {
        bail!(
            "`npm ci` in {} succeeded but node_modules/oidc-provider is missing",
            dir.display()
        );
    }
    Ok(())
}

/// node_modules exists, holds oidc-provider, and npm's record of the install
/// (node_modules/.package-lock.json) is not older than package-lock.json.
fn npm_install_is_current(dir: &Path) -> bool {
    let mtime = |p: PathBuf| fs::metadata(p).and_then(|m| m.modified()).ok();
    if !dir
        .join("node_modules/oidc-provider/package.json")
        .is_file()
    {
        return false;
    }
    match (
        mtime(dir.join("node_modules/.package-lock.json")),
        mtime(dir.join("package-lock.json")),
    ) {
        (Some(installed), Some(lock)) => installed >= lock,
        _ => false,
    }
}

/// A lock between processes: the directory exists while held.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: &Path, timeout: Duration) -> Result<DirLock> {
        let start = Instant::now();
        loop {
            match fs::create_dir(path) {
                Ok(()) => return Ok(DirLock(path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A holder that died leaves the directory behind: older than the
                    // timeout means stale.
                    let stale = fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > timeout);
                    if stale {
                        let _ = fs::remove_dir(path);
                        continue;
                    }
                    if start.elapsed() > timeout {
                        bail!(
                            "timed out after {timeout:?} waiting for the lock {} (remove it if no `npm ci` is running)",
                            path.display()
                        );
                    }
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating lock {}", path.display()))
                }
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// How to start the test IdP.
#[derive(Clone, Debug)]
pub struct IdpOptions {
    pub client_id: String,
    pub client_secret: String,
    /// The issuer to advertise (e.g. a proxy in front of the IdP); default
    /// `http://127.0.0.1:<port>`. No trailing slash.
    pub issuer: Option<String>,
    /// Enable the RFC 8628 device flow for the client.
    pub device_flow: bool,
    /// Port to listen on (127.0.0.1); default a free one. A taken port fails the start.
    pub port: Option<u16>,
}

impl Default for IdpOptions {
    fn default() -> Self {
        IdpOptions {
            client_id: "pedm-ca".to_string(),
            client_secret: "test-client-secret".to_string(),
            issuer: None,
            device_flow: false,
            port: None,
        }
    }
}

/// A running test IdP; dropping it kills the process.
pub struct TestIdp {
    /// The issuer it advertises (what relying parties must be configured with).
    pub issuer: String,
    /// The port it listens on at 127.0.0.1 (may differ from the issuer's).
    pub port: u16,
    pub client_id: String,
    pub client_secret: String,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl TestIdp {
    /// Spawns `node server.mjs` and waits (up to 20 s) for its `{"issuer":…,"port":…}` line.
    /// Call `ensure_npm_ci()` first.
    pub fn start(opts: IdpOptions) -> Result<TestIdp> {
        let dir = idp_dir();
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs")
            .current_dir(&dir)
            .env("IDP_CLIENT_ID", &opts.client_id)
            .env("IDP_CLIENT_SECRET", &opts.client_secret)
            .env("IDP_PORT", opts.port.unwrap_or(0).to_string())
            .env("IDP_DEVICE_FLOW", if opts.device_flow { "1" } else { "0" })
            .env_remove("IDP_ISSUER")
            .env_remove("DEBUG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(issuer) = &opts.issuer {
            cmd.env("IDP_ISSUER", issuer);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning `node server.mjs` in {}", dir.display()))?;

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err_pipe = child.stderr.take().context("child stderr not piped")?;
        let err_thread = {
            let lines = Arc::clone(&stderr);
            thread::spawn(move || drain_lines(err_pipe, |l| push_line(&lines, l)))
        };
        let out_pipe = child.stdout.take().context("child stdout not piped")?;
        let (tx, rx) = mpsc::channel::<String>();
        {
            let lines = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut first = Some(tx);
                drain_lines(out_pipe, |l| match first.take() {
                    Some(tx) => {
                        let _ = tx.send(l);
                    }
                    // Not expected (the server sends its notices to stderr): keep them anyway.
                    None => push_line(&lines, format!("[stdout] {l}")),
                });
            });
        }

        let mut idp = TestIdp {
            issuer: String::new(),
            port: 0,
            client_id: opts.client_id,
            client_secret: opts.client_secret,
            child,
            stderr,
        };
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let what = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no ready line within {READY_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => {
                        "it closed stdout without a ready line".to_string()
                    }
                };
                idp.kill();
                // The process is gone: its stderr reaches EOF.
                let _ = err_thread.join();
                bail!(
                    "test IdP failed to start: {what}; stderr:\n{}",
                    idp.stderr_lines().join("\n")
                );
            }
        };
        let ready: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("test IdP's first stdout line is not JSON: {line:?}"))?;
        idp.issuer = ready["issuer"]
            .as_str()
            .with_context(|| format!("no issuer in the ready line {line}"))?
            .to_string();
        idp.port = ready["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("no port in the ready line {line}"))?;
        Ok(idp)
    }

    /// `http://127.0.0.1:<port>` plus the issuer's path: where the IdP itself answers, even
    /// when the advertised issuer is a proxy.
    pub fn direct_url(&self) -> String {
        let path = Url::parse(&self.issuer)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The discovery document, fetched directly from the IdP's own port.
    pub fn discovery(&self) -> Result<serde_json::Value> {
        let url = format!("{}/.well-known/openid-configuration", self.direct_url());
        let resp = http_client(false)?
            .get(&url)
            .send()
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.text().with_context(|| format!("reading {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {}", snippet(&body));
        }
        serde_json::from_str(&body)
            .with_context(|| format!("{url} is not JSON: {}", snippet(&body)))
    }

    /// What the IdP wrote to stderr so far (plus any stray stdout after the ready line).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            let lines = self.stderr_lines();
            if !lines.is_empty() {
                eprintln!("--- test IdP stderr ---\n{}\n---", lines.join("\n"));
            }
        }
    }
}

fn push_line(lines: &Mutex<Vec<String>>, line: String) {
    let mut lines = lines
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Bounded, in case something logs in a loop.
    if lines.len() < 10_000 {
        lines.push(line);
    }
}

/// Reads `pipe` to EOF, line by line (lossy UTF-8), so the child never blocks or gets EPIPE.
fn drain_lines(pipe: impl Read, mut each: impl FnMut(String)) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                each(line.trim_end_matches(['\n', '\r']).to_string());
            }
        }
    }
}

fn http_client(cookies: bool) -> Result<Client> {
    Client::builder()
        .cookie_store(cookies)
        .redirect(Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

/// At most 600 characters of a response body, for error messages.
fn snippet(body: &str) -> String {
    let mut s: String = body.chars().take(600).collect();
    if s.len() < body.len() {
        s.push('…');
    }
    s
}

/// A `http://127.0.0.1:<port>/callback` (or localhost) URL: where a sign-in ends.
fn is_loopback_callback(url: &Url) -> bool {
    url.scheme() == "http"
        && matches!(url.host_str(), Some("127.0.0.1") | Some("localhost"))
        && url.path() == "/callback"
}

/// `/…/interaction/<uid>`: the IdP's login page.
fn is_interaction_page(url: &Url) -> bool {
    let mut segments: Vec<&str> = url
        .path()
        .trim_end_matches('/')
        .rsplit('/')
        .take(2)
        .collect();
    segments.reverse();
    segments.len() == 2 && segments[0] == "interaction" && !segments[1].is_empty()
}

enum Step {
    Get(Url),
    Post(Url, Vec<(String, String)>),
}

enum Outcome {
    /// A redirect to a loopback `/callback` URL (not fetched).
    Callback(Url),
    /// A page that is neither a redirect nor the login form (or the login form again).
    Page {
        url: Url,
        status: StatusCode,
        body: String,
    },
}

/// One person's browser: a cookie jar, redirects followed by hand, the login form filled in
/// with `login` the first time it shows.
struct Browser {
    client: Client,
    login: String,
    logged_in: bool,
}

impl Browser {
    fn new(login: &str) -> Result<Browser> {
        Ok(Browser {
            client: http_client(true)?,
            login: login.to_string(),
            logged_in: false,
        })
    }

    fn send(&self, step: &Step) -> Result<(Url, Response)> {
        match step {
            Step::Get(url) => {
                let resp = self
                    .client
                    .get(url.clone())
                    .send()
                    .with_context(|| format!("GET {url}"))?;
                Ok((url.clone(), resp))
            }
            Step::Post(url, form) => {
                let resp = self
                    .client
                    .post(url.clone())
                    .form(form)
                    .send()
                    .with_context(|| format!("POST {url}"))?;
                Ok((url.clone(), resp))
            }
        }
    }

    fn run(&mut self, first: Step) -> Result<Outcome> {
        let mut step = first;
        for _ in 0..MAX_HOPS {
            let (url, resp) = self.send(&step)?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .with_context(|| format!("{status} from {url} without a Location"))?
                    .to_str()
                    .with_context(|| format!("non-ASCII Location from {url}"))?;
                let next = url
                    .join(location)
                    .with_context(|| format!("bad Location {location:?} from {url}"))?;
                if is_loopback_callback(&next) {
                    return Ok(Outcome::Callback(next));
                }
                step = Step::Get(next);
                continue;
            }
            let body = resp
                .text()
                .with_context(|| format!("reading the body of {url}"))?;
            if status == StatusCode::OK && is_interaction_page(&url) && !self.logged_in {
                let form = parse_form(&body)
                    .with_context(|| format!("no login form on {url}: {}", snippet(&body)))?;
                let action = url
                    .join(&form.action)
                    .with_context(|| format!("bad form action {:?} on {url}", form.action))?;
                let mut fields = form.hidden;
                fields.push(("login".to_string(), self.login.clone()));
                fields.push(("password".to_string(), "ignored".to_string()));
                self.logged_in = true;
                step = Step::Post(action, fields);
                continue;
            }
            return Ok(Outcome::Page { url, status, body });
        }
        bail!("more than {MAX_HOPS} redirects or forms in one sign-in")
    }
}

/// Signs `login` in at the test IdP the way a browser would, starting from an authorization
/// URL (as the CA hands it out), with a fresh cookie jar. Returns the redirect to the
/// `http://127.0.0.1:<port>/callback` URL (with `code`, `state`, `iss`, or an `error`) without
/// fetching it.
pub fn browser_login(authorization_url: &str, login: &str) -> Result<Url> {
    let start = Url::parse(authorization_url)
        .with_context(|| format!("bad authorization URL {authorization_url:?}"))?;
    let mut browser = Browser::new(login)?;
    match browser.run(Step::Get(start))? {
        Outcome::Callback(url) => Ok(url),
        Outcome::Page { url, status, body } => bail!(
            "sign-in of {login:?} did not reach a /callback redirect: {status} at {url}: {}",
            snippet(&body)
        ),
    }
}

/// Completes an RFC 8628 device authorization at the test IdP for `login`: opens
/// `verification_uri` (or `verification_uri_complete`), submits `user_code`, confirms, signs in.
/// Returns once the IdP shows its success page; the polling client then gets the tokens.
pub fn device_login(verification_uri: &str, user_code: &str, login: &str) -> Result<()> {
    let start = Url::parse(verification_uri)
        .with_context(|| format!("bad verification URI {verification_uri:?}"))?;
    let mut browser = Browser::new(login)?;

    // The code entry page (or, for verification_uri_complete, an auto-submitting form).
    let (url, body) = expect_page(browser.run(Step::Get(start))?, "the device code page")?;
    let form = parse_form(&body)
        .with_context(|| format!("no form on the device code page {url}: {}", snippet(&body)))?;
    let mut fields = form.hidden;
    set_field(&mut fields, "user_code", user_code);
    let action = url.join(&form.action).context("device form action")?;

    // The confirmation page: the same form plus confirm=yes.
    let (url, body) = expect_page(
        browser.run(Step::Post(action, fields))?,
        "the device confirmation page",
    )?;
    let form = parse_form(&body).with_context(|| {
        format!(
            "user code {user_code:?} not accepted at {url}: {}",
            snippet(&body)
        )
    })?;
    if !form.hidden.iter().any(|(k, _)| k == "confirm") {
        bail!(
            "user code {user_code:?} not accepted at {url}: {}",
            snippet(&body)
        );
    }
    let action = url.join(&form.action).context("device confirm action")?;

    // Confirm, sign in, land on the success page.
    let (url, body) = expect_page(
        browser.run(Step::Post(action, form.hidden))?,
        "the device success page",
    )?;
    if !browser.logged_in || !body.contains("Sign-in Success") {
        bail!(
            "device sign-in of {login:?} did not succeed: ended at {url}: {}",
            snippet(&body)
        );
    }
    Ok(())
}

fn expect_page(outcome: Outcome, what: &str) -> Result<(Url, String)> {
    match outcome {
        Outcome::Page { url, status, body } if status == StatusCode::OK => Ok((url, body)),
        Outcome::Page { url, status, body } => {
            bail!("expected {what}, got {status} at {url}: {}", snippet(&body))
        }
        Outcome::Callback(url) => bail!("expected {what}, got a redirect to {url}"),
    }
}

fn set_field(fields: &mut Vec<(String, String)>, name: &str, value: &str) {
    fields.retain(|(k, _)| k != name);
    fields.push((name.to_string(), value.to_string()));
}

struct HtmlForm {
    action: String,
    hidden: Vec<(String, String)>,
}

/// The first `<form>` of a page: its action and hidden inputs (enough for the IdP's pages,
/// whose markup is lower-case with double-quoted attributes).
fn parse_form(html: &str) -> Result<HtmlForm> {
    let tag = regex::Regex::new(r#"(?s)<(form|input)\s([^>]*)>"#).context("tag regex")?;
    let attr =
        regex::Regex::new(r#"(?s)(?:^|\s)([a-z_-]+)\s*=\s*"([^"]*)""#).context("attr regex")?;
    let attrs = |s: &str| -> Vec<(String, String)> {
        attr.captures_iter(s)
            .map(|c| (c[1].to_string(), html_unescape(&c[2])))
            .collect()
    };
    let get =
        |a: &[(String, String)], k: &str| a.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut form: Option<HtmlForm> = None;
    for c in tag.captures_iter(html) {
        let a = attrs(&c[2]);
        if &c[1] == "form" {
            if form.is_some() {
                break;
            }
            form = Some(HtmlForm {
                action: get(&a, "action").unwrap_or_default(),
                hidden: Vec::new(),
            });
        } else if let Some(f) = form.as_mut() {
            if get(&a, "type").is_some_and(|t| t == "hidden") {
                if let Some(name) = get(&a, "name") {
                    f.hidden.push((name, get(&a, "value").unwrap_or_default()));
                }
            }
        }
    }
    form.context("the page has no <form>")
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A PKCE pair: (verifier, S256 challenge).
pub fn pkce_s256() -> (String, String) {
    let verifier = random_token(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// `n` random bytes, base64url.
pub fn random_token(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The payload of a compact JWS, decoded without any verification (for tests only).
pub fn decode_jwt_payload(jwt: &str) -> Result<serde_json::Value> {
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow!("not a compact JWS: {}", snippet(jwt)))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .context("JWT payload is not base64url")?;
    serde_json::from_slice(&bytes).context("JWT payload is not JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::atomic::{AtomicBool, Ordering};

    const REDIRECT: &str = "http://127.0.0.1:5555/callback";

    /// Installs the IdP's packages and starts one; `None` means skip (no node, not CI).
    fn start(opts: IdpOptions) -> Result<Option<TestIdp>> {
        if !node_available()? {
            return Ok(None);
        }
        ensure_npm_ci()?;
        TestIdp::start(opts).map(Some)
    }

    struct Pending {
        url: String,
        state: String,
        nonce: String,
        verifier: String,
    }

    fn authorize_url(idp: &TestIdp, disco: &Value) -> Result<Pending> {
        let (verifier, challenge) = pkce_s256();
        let state = random_token(16);
        let nonce = random_token(16);
        let endpoint = disco["authorization_endpoint"]
            .as_str()
            .context("no authorization_endpoint")?;
        let url = Url::parse_with_params(
            endpoint,
            &[
                ("response_type", "code"),
                ("client_id", idp.client_id.as_str()),
                ("redirect_uri", REDIRECT),
                ("scope", "openid email profile groups"),
                ("state", state.as_str()),
                ("nonce", nonce.as_str()),
                ("max_age", "300"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )?;
        Ok(Pending {
            url: url.to_string(),
            state,
            nonce,
            verifier,
        })
    }

    fn query(url: &Url, name: &str) -> Option<String> {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Signs `login` in and returns the ID token's claims.
    fn sign_in(idp: &TestIdp, login: &str) -> Result<Value> {
        let disco = idp.discovery()?;
        let pending = authorize_url(idp, &disco)?;
        let callback = browser_login(&pending.url, login)?;
        assert!(callback.as_str().starts_with(REDIRECT), "{callback}");
        assert_eq!(
            query(&callback, "state").as_deref(),
            Some(pending.state.as_str())
        );
        assert_eq!(
            query(&callback, "iss").as_deref(),
            Some(idp.issuer.as_str())
        );
        let code = query(&callback, "code").with_context(|| format!("no code in {callback}"))?;

        let token_endpoint = disco["token_endpoint"]
            .as_str()
            .context("no token_endpoint")?;
        let resp = http_client(false)?
            .post(token_endpoint)
            .basic_auth(&idp.client_id, Some(&idp.client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT),
                ("code_verifier", pending.verifier.as_str()),
            ])
            .send()?;
        let status = resp.status();
        let body: Value = resp.json()?;
        assert_eq!(status, StatusCode::OK, "token response {body}");
        let id_token = body["id_token"].as_str().context("no id_token")?;
        let claims = decode_jwt_payload(id_token)?;
        assert_eq!(claims["nonce"], json!(pending.nonce), "{claims}");
        assert_eq!(claims["iss"], json!(idp.issuer), "{claims}");
        assert_eq!(claims["aud"], json!(idp.client_id), "{claims}");
        Ok(claims)
    }

    #[test]
    fn discovery_advertises_issuer_and_s256_only() -> Result<()> {
        let Some(idp) = start(IdpOptions::default())? else {
            return Ok(());
        };
        assert_eq!(idp.issuer, format!("http://127.0.0.1:{}", idp.port));
        let disco = idp.discovery()?;
        assert_eq!(disco["issuer"], json!(idp.issuer));
        assert_eq!(disco["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            disco["id_token_signing_alg_values_supported"],
            json!(["RS256"])
        );
        assert_eq!(
            disco["token_endpoint"],
            json!(format!("{}/token", idp.issuer))
        );
        assert!(disco.get("device_authorization_endpoint").is_none());
        Ok(())
    }

    #[test]
    fn authorization_code_flow_for_alice() -> Result<()> {
        let Some(idp) = start(IdpOptions::default())? else {
            return Ok(());
        };
        let claims = sign_in(&idp, "alice")?;
        assert_eq!(claims["sub"], json!("sub-alice"), "{claims}");
        assert_eq!(claims["preferred_username"], json!("alice"), "{claims}");
        assert_eq!(claims["groups"], json!(["eng", "oncall"]), "{claims}");
        assert_eq!(claims["email"], json!("alice@example.com"), "{claims}");
        assert_eq!(claims["email_verified"], json!(true), "{claims}");
        assert!(claims["auth_time"].is_u64(), "no auth_time: {claims}");
        let exp = claims["exp"].as_u64().context("exp")?;
        let iat = claims["iat"].as_u64().context("iat")?;
        assert_eq!(exp - iat, 600, "ID token lifetime: {claims}");
        Ok(())
    }

    #[test]
    fn hostile_and_unverified_identities() -> Result<()> {
        let Some(idp) = start(IdpOptions::default())? else {
            return Ok(());
        };
        let claims = sign_in(&idp, "hostile-newline")?;
        assert_eq!(claims["preferred_username"], json!("eve\nroot"), "{claims}");
        assert_eq!(claims["groups"], json!(["eng"]), "{claims}");
        let claims = sign_in(&idp, "hostile-comma")?;
        assert_eq!(
            claims["preferred_username"],
            json!("alice,root"),
            "{claims}"
        );
        let claims = sign_in(&idp, "mallory")?;
        assert_eq!(claims["email"], json!("mallory@evil.example"), "{claims}");
        assert_eq!(claims["email_verified"], json!(false), "{claims}");
        let claims = sign_in(&idp, "dave")?;
        assert_eq!(claims["groups"], json!(["contractors"]), "{claims}");
        Ok(())
    }

    #[test]
    fn unknown_login_is_refused() -> Result<()> {
        let Some(idp) = start(IdpOptions::default())? else {
            return Ok(());
        };
        let disco = idp.discovery()?;
        let pending = authorize_url(&idp, &disco)?;
        let err = browser_login(&pending.url, "nobody")
            .err()
            .context("an unknown login reached the callback")?;
        let msg = format!("{err:#}");
        assert!(msg.contains("400"), "{msg}");
        assert!(msg.contains("unknown user"), "{msg}");
        Ok(())
    }

    #[test]
    fn a_bad_redirect_uri_is_refused() -> Result<()> {
        let Some(idp) = start(IdpOptions::default())? else {
            return Ok(());
        };
        let disco = idp.discovery()?;
        let pending = authorize_url(&idp, &disco)?;
        let url = pending
            .url
            .replace("127.0.0.1%3A5555", "evil.example%3A5555");
        assert_ne!(url, pending.url);
        let err = browser_login(&url, "alice")
            .err()
            .context("a foreign redirect_uri reached a callback")?;
        let msg = format!("{err:#}");
        assert!(msg.contains("redirect_uri"), "{msg}");
        Ok(())
    }

    #[test]
    fn issuer_override_is_advertised() -> Result<()> {
        let issuer = "http://127.0.0.1:1".to_string();
        let Some(idp) = start(IdpOptions {
            issuer: Some(issuer.clone()),
            ..IdpOptions::default()
        })?
        else {
            return Ok(());
        };
        assert_eq!(idp.issuer, issuer);
        assert_ne!(idp.port, 1);
        let disco = idp.discovery()?;
        assert_eq!(disco["issuer"], json!(issuer));
        for endpoint in ["authorization_endpoint", "token_endpoint", "jwks_uri"] {
            let url = disco[endpoint].as_str().context(endpoint)?;
            assert!(url.starts_with("http://127.0.0.1:1/"), "{endpoint}: {url}");
        }
        Ok(())
    }

    #[test]
    fn device_flow_completes_over_http() -> Result<()> {
        let Some(idp) = start(IdpOptions {
            device_flow: true,
            ..IdpOptions::default()
        })?
        else {
            return Ok(());
        };
        let disco = idp.discovery()?;
        let device_endpoint = disco["device_authorization_endpoint"]
            .as_str()
            .context("no device_authorization_endpoint")?;
        let http = http_client(false)?;
        let resp: Value = http
            .post(device_endpoint)
            .basic_auth(&idp.client_id, Some(&idp.client_secret))
            .form(&[
                ("client_id", idp.client_id.as_str()),
                ("scope", "openid email profile groups"),
            ])
            .send()?
            .json()?;
        let user_code = resp["user_code"].as_str().context("user_code")?;
        let device_code = resp["device_code"].as_str().context("device_code")?;
        let uri = resp["verification_uri"]
            .as_str()
            .context("verification_uri")?;

        let token_endpoint = disco["token_endpoint"].as_str().context("token_endpoint")?;
        let poll = || -> Result<Value> {
            Ok(http
                .post(token_endpoint)
                .basic_auth(&idp.client_id, Some(&idp.client_secret))
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device_code),
                ])
                .send()?
                .json()?)
        };
        assert_eq!(poll()?["error"], json!("authorization_pending"));

        let err = device_login(uri, "WRONG-CODE", "bob")
            .err()
            .context("a wrong user code was accepted")?;
        assert!(format!("{err:#}").contains("not accepted"), "{err:#}");
        device_login(uri, user_code, "bob")?;
        let tokens = poll()?;
        let claims = decode_jwt_payload(tokens["id_token"].as_str().context("id_token")?)?;
        assert_eq!(claims["preferred_username"], json!("bob"), "{claims}");
        assert_eq!(claims["groups"], json!(["eng"]), "{claims}");

        // The same through verification_uri_complete, for another user.
        let resp: Value = http
            .post(device_endpoint)
            .basic_auth(&idp.client_id, Some(&idp.client_secret))
            .form(&[("scope", "openid profile groups")])
            .send()?
            .json()?;
        let complete = resp["verification_uri_complete"]
            .as_str()
            .context("verification_uri_complete")?;
        let user_code = resp["user_code"].as_str().context("user_code")?;
        device_login(complete, user_code, "carol")?;
        Ok(())
    }

    /// A TCP proxy on `listener` to `127.0.0.1:upstream`, until the returned flag is set.
    fn tcp_proxy(listener: std::net::TcpListener, upstream: u16) -> Result<Arc<AtomicBool>> {
        use std::net::TcpStream;
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true)?;
        let flag = Arc::clone(&stop);
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let _ = down.set_nonblocking(false);
                        for (mut from, mut to) in [
                            (down.try_clone(), up.try_clone()),
                            (up.try_clone(), down.try_clone()),
                        ]
                        .into_iter()
                        .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                        {
                            thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Write);
                            });
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(stop)
    }

    #[test]
    fn sign_in_through_a_proxy_at_the_issuer() -> Result<()> {
        // With and without a path in the issuer.
        for path in ["", "/realms/pedm"] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let issuer = format!("http://127.0.0.1:{}{path}", listener.local_addr()?.port());
            let Some(idp) = start(IdpOptions {
                issuer: Some(issuer.clone()),
                ..IdpOptions::default()
            })?
            else {
                return Ok(());
            };
            assert_eq!(idp.issuer, issuer);
            let stop = tcp_proxy(listener, idp.port)?;
            let claims = sign_in(&idp, "erin");
            stop.store(true, Ordering::Relaxed);
            let claims = claims?;
            assert_eq!(claims["groups"], json!(["eng", "security"]), "{claims}");
            assert_eq!(claims["iss"], json!(issuer), "{claims}");
        }
        Ok(())
    }

    #[test]
    fn an_existing_session_is_reused_and_new_scopes_auto_consented() -> Result<()> {
        let Some(idp) = start(IdpOptions::default())? else {
            return Ok(());
        };
        let disco = idp.discovery()?;
        let mut browser = Browser::new("alice")?;
        let first = authorize_url(&idp, &disco)?
            .url
            .replace("openid+email+profile+groups", "openid");
        assert!(first.contains("scope=openid&"), "{first}");
        let Outcome::Callback(cb) = browser.run(Step::Get(Url::parse(&first)?))? else {
            bail!("first sign-in did not reach the callback");
        };
        assert!(query(&cb, "code").is_some(), "{cb}");
        assert!(browser.logged_in);
        // Same browser, more scopes: no login form (logged_in stays set, so a login form
        // would end the run as a page), the consent prompt is answered automatically.
        let second = authorize_url(&idp, &disco)?;
        let Outcome::Callback(cb) = browser.run(Step::Get(Url::parse(&second.url)?))? else {
            bail!("second sign-in did not reach the callback");
        };
        assert_eq!(query(&cb, "state").as_deref(), Some(second.state.as_str()));
        assert!(query(&cb, "code").is_some(), "{cb}");
        Ok(())
    }
}
