//! A tampering HTTP proxy between the CA (the relying party) and the test IdP.
//!
//! The end-to-end tests must show that the CA refuses forged ID tokens without any test hook in
//! the binaries. So the IdP is started with an issuer URL that points at this proxy, the CA is
//! configured with that issuer, and every request of the CA (discovery, JWKS, token endpoint)
//! and of the test browser passes through here on its way to the IdP:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use pedm_e2e::idp::{IdpOptions, TestIdp};
//! use pedm_e2e::proxy::{Mode, TamperProxy};
//! let proxy = TamperProxy::bind()?; // its port must be known before the IdP starts
//! let idp = TestIdp::start(IdpOptions { issuer: Some(proxy.url()), ..IdpOptions::default() })?;
//! proxy.set_upstream(&idp.direct_url()); // requests before this get 503
//! // ... start the CA with issuer = proxy.url() (== idp.issuer) ...
//! proxy.set_mode(Mode::Expired);
//! // ... sign in: the CA must refuse; then `assert!(proxy.tampered_count() > 0)`.
//! # Ok(()) }
//! ```
//!
//! What it changes, in every mode (PassThrough included, so that the key set the CA fetched at
//! start does not depend on the mode at that moment and modes can be switched at any time):
//! - JWKS responses (the path named by discovery's `jwks_uri`, or any path ending in `/jwks`):
//!   the proxy's own Ed25519 public key is appended ([`TamperProxy::jwk`], kid `tamper-proxy`).
//! - Discovery (`…/.well-known/openid-configuration`): `EdDSA` is added to
//!   `id_token_signing_alg_values_supported`, so the proxy's key is trusted exactly like the
//!   IdP's even by a relying party that intersects its allow-list with what is advertised.
//!
//! What it changes in every mode but PassThrough: the `id_token` of 200 JSON responses of the
//! token endpoint (discovery's `token_endpoint`, or any path ending in `/token`), see [`Mode`]
//! and [`tamper_id_token`]. Everything else is relayed unchanged (status, headers including
//! `Location` and every `Set-Cookie`, body); redirects are never followed.
//!
//! The proxy speaks plain HTTP/1.1, one request per connection (`Connection: close`), reads
//! request bodies by `Content-Length` and refuses chunked ones (501). It never panics on what a
//! client sends; a bad request gets a 4xx, an unreachable upstream a 502.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use hmac::{Hmac, Mac};
use reqwest::blocking::Client;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::redirect::Policy;
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};

/// The `kid` of the proxy's own key, in its JWK and in the tokens it signs.
pub const PROXY_KID: &str = "tamper-proxy";

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
const MAX_BODY: u64 = 16 * 1024 * 1024;
/// Socket and upstream timeouts.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What the proxy does to the ID tokens coming back from the token endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Relay the token unchanged.
    PassThrough,
    /// Header `{"alg":"none","typ":"JWT"}`, the same payload, an empty signature (`h.p.`).
    AlgNone,
    /// Header `{"alg":"HS256","kid":<original kid>,"typ":"JWT"}`, the same payload, signed with
    /// HMAC-SHA256 keyed with this string (give it the client secret).
    Hs256WithSecret(String),
    /// The original header and payload, one bit of the signature flipped.
    FlipSignature,
    /// The same claims re-signed with the proxy's own key (header
    /// `{"alg":"EdDSA","kid":"tamper-proxy","typ":"JWT"}`): the positive control, to be
    /// ACCEPTED by the CA, which proves that the next two modes fail for their claim only.
    ResignValid,
    /// `aud` replaced with this value, re-signed with the proxy's key.
    OtherAudience(String),
    /// `exp` = now − 600 s and `iat` = now − 1200 s, re-signed with the proxy's key.
    Expired,
}

/// The tampering proxy, listening on `127.0.0.1:<port>` and serving in background threads.
/// Dropping it stops accepting connections; requests already in progress finish on their own.
pub struct TamperProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: Mutex<Option<String>>,
    /// Paths answered with a fixed JSON body instead of the upstream's.
    overrides: Mutex<std::collections::BTreeMap<String, String>>,
    mode: Mutex<Mode>,
    tampered: AtomicUsize,
    requests: Mutex<Vec<(String, String)>>,
    /// Endpoint paths learned from a relayed discovery document.
    endpoints: Mutex<Endpoints>,
    key: SigningKey,
    stop: AtomicBool,
}

#[derive(Default)]
struct Endpoints {
    token: Option<String>,
    jwks: Option<String>,
}

impl TamperProxy {
    /// Binds `127.0.0.1:0` and starts serving. Until [`set_upstream`](Self::set_upstream) is
    /// called every request gets 503. The mode starts as [`Mode::PassThrough`].
    pub fn bind() -> Result<TamperProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the tamper proxy")?;
        let addr = listener
            .local_addr()
            .context("the tamper proxy's address")?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(None),
            overrides: Mutex::new(std::collections::BTreeMap::new()),
            mode: Mutex::new(Mode::PassThrough),
            tampered: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            endpoints: Mutex::new(Endpoints::default()),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
            stop: AtomicBool::new(false),
        });
        // The blocking client is built (and eventually dropped) on the proxy's own threads,
        // never on the caller's, which may be inside an async runtime.
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let state = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("tamper-proxy-{}", addr.port()))
            .spawn(move || {
                let client = match upstream_client() {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok(()));
                        client
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                accept_loop(listener, state, client);
            })
            .context("spawning the tamper proxy thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("the tamper proxy thread died while starting"),
        }
        Ok(TamperProxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:<port>`, no trailing slash: the issuer to give the IdP and the CA.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where requests go: `http://127.0.0.1:<idp port>` (e.g. `TestIdp::direct_url()`). The
    /// request's path and query are appended. An unusable URL shows up as 502 answers.
    pub fn set_upstream(&self, upstream: &str) {
        *lock(&self.shared.upstream) = Some(upstream.trim_end_matches('/').to_string());
    }

    /// Changes what happens to the next ID tokens; takes effect for responses relayed from now.
    /// Answers `GET path` (exact, without query) with `body` as JSON from now on, or
    /// forwards it again with `None`: for serving a host stale, foreign or tampered documents
    /// from in front of the real CA.
    pub fn set_override(&self, path: &str, body: Option<String>) {
        let mut o = lock(&self.shared.overrides);
        match body {
            Some(b) => {
                o.insert(path.to_string(), b);
            }
            None => {
                o.remove(path);
            }
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    pub fn mode(&self) -> Mode {
        lock(&self.shared.mode).clone()
    }

    /// How many ID tokens were rewritten so far.
    pub fn tampered_count(&self) -> usize {
        self.shared.tampered.load(Ordering::SeqCst)
    }

    /// `(method, path with query)` of every request read so far, in arrival order.
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.shared.requests).clone()
    }

    /// The public JWK the proxy appends to JWKS responses.
    pub fn jwk(&self) -> Value {
        proxy_jwk(&self.shared.key)
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn upstream_client() -> Result<Client> {
    Client::builder()
        .redirect(Policy::none())
        .no_proxy()
        .timeout(IO_TIMEOUT)
        .build()
        .context("building the tamper proxy's HTTP client")
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, client: Client) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // E.g. too many open files: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let shared = Arc::clone(&shared);
        let client = client.clone();
        let spawned = thread::Builder::new()
            .name("tamper-proxy-conn".to_string())
            .spawn(move || handle_connection(stream, &shared, &client));
        if spawned.is_err() {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A request as read from a client.
#[derive(Debug)]
struct Request {
    method: String,
    /// Origin form: path and query.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A response to write to the client.
struct Response {
    status: u16,
    /// Raw header values (they need not be UTF-8).
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    fn error(status: u16, msg: &str) -> Response {
        Response {
            status,
            headers: vec![(
                "content-type".to_string(),
                b"text/plain; charset=utf-8".to_vec(),
            )],
            body: format!("tamper proxy: {msg}\n").into_bytes(),
        }
    }
}

/// A refusal of a request, answered with `status`.
#[derive(Debug)]
struct Refusal {
    status: u16,
    msg: String,
}

fn refuse(status: u16, msg: impl Into<String>) -> Refusal {
    Refusal {
        status,
        msg: msg.into(),
    }
}

fn handle_connection(mut stream: TcpStream, shared: &Shared, client: &Client) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let (response, head_only) = match read_request(&mut stream) {
        Ok(None) => return, // closed without sending anything (e.g. the wake-up from Drop)
        Ok(Some(req)) => {
            lock(&shared.requests).push((req.method.clone(), req.target.clone()));
            let head_only = req.method == "HEAD";
            (serve(&req, shared, client), head_only)
        }
        Err(refusal) => (Response::error(refusal.status, &refusal.msg), false),
    };
    let _ = write_response(&mut stream, &response, head_only);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    // Read what the client may still send (e.g. after a refused head) until it closes, so that
    // closing with unread input does not reset the connection and lose the answer.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut sink = [0u8; 8192];
    let mut drained = 0usize;
    while drained < 1024 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Reads one request. `Ok(None)`: the connection closed before a request line arrived.
fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, Refusal> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(refuse(431, "request head too large"));
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| refuse(400, format!("reading the request: {e}")))?;
        if n == 0 {
            if buf.iter().all(|b| b.is_ascii_whitespace()) {
                return Ok(None);
            }
            return Err(refuse(400, "connection closed inside the request head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| refuse(400, "request head is not UTF-8"))?;
    let mut req = parse_head(head)?;

    if req
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err(refuse(
            501,
            "Transfer-Encoding (chunked request bodies) is not supported; send Content-Length",
        ));
    }
    let mut length: Option<u64> = None;
    for (_, v) in req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let n: u64 = v
            .parse()
            .map_err(|_| refuse(400, format!("bad Content-Length {v:?}")))?;
        if length.is_some_and(|l| l != n) {
            return Err(refuse(400, "conflicting Content-Length headers"));
        }
        length = Some(n);
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return Err(refuse(413, "request body too large"));
    }
    let expects_continue = req
        .headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case("100-continue"));
    let mut body = buf[head_end + 4..].to_vec();
    if expects_continue && (body.len() as u64) < length {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|e| refuse(400, format!("writing 100 Continue: {e}")))?;
    }
    // Bounded above by MAX_BODY, so it fits in usize.
    let length = usize::try_from(length).map_err(|_| refuse(413, "request body too large"))?;
    if body.len() < length {
        let start = body.len();
        body.resize(length, 0);
        stream
            .read_exact(&mut body[start..])
            .map_err(|e| refuse(400, format!("reading the request body: {e}")))?;
    }
    // Anything after the body (a pipelined request) is ignored: the connection closes.
    body.truncate(length);
    req.body = body;
    Ok(Some(req))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Parses the request line and headers (without the final empty line).
fn parse_head(head: &str) -> Result<Request, Refusal> {
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(refuse(400, format!("bad request line {line:?}")));
    };
    if method.is_empty() || !method.chars().all(is_token_char) {
        return Err(refuse(400, format!("bad method {method:?}")));
    }
    if !version.starts_with("HTTP/1.") {
        return Err(refuse(505, format!("unsupported version {version:?}")));
    }
    let target = if target.starts_with('/') {
        target.to_string()
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        // Absolute form: keep path and query.
        match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => rest[i..].to_string(),
            Some(i) => format!("/{}", &rest[i..]),
            None => "/".to_string(),
        }
    } else {
        return Err(refuse(400, format!("bad request target {target:?}")));
    };
    if target.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(refuse(400, "control characters in the request target"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err(refuse(400, "obsolete header line folding"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(400, format!("bad header line {line:?}")));
        };
        if name.is_empty() || !name.chars().all(is_token_char) {
            return Err(refuse(400, format!("bad header name {name:?}")));
        }
        headers.push((
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    Ok(Request {
        method: method.to_string(),
        target,
        headers,
        body: Vec::new(),
    })
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the ones the
/// proxy sets itself.
fn is_connection_header(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn serve(req: &Request, shared: &Shared, client: &Client) -> Response {
    let path = req.target.split('?').next().unwrap_or_default();
    if let Some(body) = lock(&shared.overrides).get(path).cloned() {
        return Response {
            status: 200,
            headers: vec![("content-type".to_string(), b"application/json".to_vec())],
            body: body.into_bytes(),
        };
    }
    let Some(upstream) = lock(&shared.upstream).clone() else {
        return Response::error(503, "no upstream set yet (call set_upstream)");
    };
    let headers = match upstream_headers(req) {
        Ok(headers) => headers,
        Err(refusal) => return Response::error(refusal.status, &refusal.msg),
    };
    let mut resp = match forward(req, headers, &upstream, client) {
        Ok(resp) => resp,
        Err(e) => return Response::error(502, &format!("upstream {upstream}: {e:#}")),
    };
    tamper_response(req, &mut resp, shared);
    resp
}

/// The request's headers to send upstream.
fn upstream_headers(req: &Request) -> Result<HeaderMap, Refusal> {
    // Headers named by Connection are hop-by-hop too.
    let named_by_connection: Vec<String> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        // Host comes from the upstream URL (the IdP rewrites it to the issuer's anyway);
        // Accept-Encoding is dropped so that responses arrive uncompressed and can be edited.
        if is_connection_header(&lower)
            || named_by_connection.contains(&lower)
            || ["host", "accept-encoding", "expect"].contains(&lower.as_str())
        {
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| refuse(400, format!("bad header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| refuse(400, format!("bad value of header {name}")))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn forward(req: &Request, headers: HeaderMap, upstream: &str, client: &Client) -> Result<Response> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .with_context(|| format!("method {:?}", req.method))?;
    let head = req.method == "HEAD";
    let url = format!("{upstream}{}", req.target);
    let resp = client
        .request(method, &url)
        .headers(headers)
        .body(req.body.clone())
        .send()
        .with_context(|| format!("{} {url}", req.method))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        // A HEAD answer keeps the upstream's Content-Length (it has no body to count).
        .filter(|(name, _)| {
            !is_connection_header(name.as_str()) || (head && name.as_str() == "content-length")
        })
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect();
    let body = resp
        .bytes()
        .with_context(|| format!("reading the response of {url}"))?
        .to_vec();
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn write_response(stream: &mut TcpStream, resp: &Response, head_only: bool) -> std::io::Result<()> {
    let reason = reqwest::StatusCode::from_u16(resp.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", resp.status).into_bytes();
    for (name, value) in &resp.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    // No body, and no Content-Length, for 1xx, 204 and 304 (RFC 9110 §8.6).
    let bodiless = resp.status < 200 || resp.status == 204 || resp.status == 304;
    // A relayed HEAD answer may carry the upstream's Content-Length already.
    let relayed_length = head_only && header(resp, "content-length").is_some();
    if !bodiless && !relayed_length {
        out.extend_from_slice(format!("content-length: {}\r\n", resp.body.len()).as_bytes());
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    if !bodiless && !head_only {
        out.extend_from_slice(&resp.body);
    }
    stream.write_all(&out)
}

fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a [u8]> {
    resp.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn is_json(resp: &Response) -> bool {
    header(resp, "content-type")
        .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
        .is_some_and(|v| v.contains("json"))
}

/// The path of a URL given in discovery.
fn url_path(url: &Value) -> Option<String> {
    url::Url::parse(url.as_str()?)
        .ok()
        .map(|u| u.path().to_string())
}

fn tamper_response(req: &Request, resp: &mut Response, shared: &Shared) {
    if resp.status != 200 || !is_json(resp) {
        return;
    }
    let path = req.target.split('?').next().unwrap_or_default();
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(&resp.body) else {
        return;
    };
    let (is_token, is_jwks) = {
        let known = lock(&shared.endpoints);
        (
            path.ends_with("/token") || known.token.as_deref() == Some(path),
            path.ends_with("/jwks") || known.jwks.as_deref() == Some(path),
        )
    };
    if path.ends_with("/.well-known/openid-configuration") {
        {
            let mut known = lock(&shared.endpoints);
            if let Some(p) = doc.get("token_endpoint").and_then(url_path) {
                known.token = Some(p);
            }
            if let Some(p) = doc.get("jwks_uri").and_then(url_path) {
                known.jwks = Some(p);
            }
        }
        if let Some(Value::Array(algs)) = doc.get_mut("id_token_signing_alg_values_supported") {
            if !algs.contains(&json!("EdDSA")) {
                algs.push(json!("EdDSA"));
            }
        }
    } else if is_jwks {
        if let Some(Value::Array(keys)) = doc.get_mut("keys") {
            if !keys.iter().any(|k| k["kid"] == json!(PROXY_KID)) {
                keys.push(proxy_jwk(&shared.key));
            }
        }
    } else if is_token {
        let mode = lock(&shared.mode).clone();
        if mode == Mode::PassThrough {
            return;
        }
        let Some(token) = doc.get("id_token").and_then(Value::as_str) else {
            return;
        };
        let access_token = doc.get("access_token").and_then(Value::as_str);
        match tamper_id_token(&mode, token, &shared.key, access_token) {
            Ok(forged) => {
                doc.insert("id_token".to_string(), Value::String(forged));
                shared.tampered.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                eprintln!("tamper proxy: left an id_token unchanged ({mode:?}): {e:#}");
                return;
            }
        }
    } else {
        return;
    }
    match serde_json::to_vec(&Value::Object(doc)) {
        Ok(body) => resp.body = body,
        Err(e) => eprintln!("tamper proxy: re-encoding a JSON body: {e}"),
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The public JWK of `key` as the proxy publishes it.
pub fn proxy_jwk(key: &SigningKey) -> Value {
    json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64(key.verifying_key().as_bytes()),
        "kid": PROXY_KID,
        "use": "sig",
        "alg": "EdDSA",
    })
}

/// `at_hash` for an EdDSA (Ed25519) token: the left half of SHA-512, as openidconnect computes it.
fn eddsa_at_hash(access_token: &str) -> String {
    let digest = Sha512::digest(access_token.as_bytes());
    b64(&digest[..digest.len() / 2])
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Rewrites a compact JWS `token` as `mode` says (PassThrough returns it unchanged). `key` signs
/// the re-signed modes; when their payload carries `at_hash` and `access_token` is given,
/// `at_hash` is recomputed for EdDSA so that only the intended claim is wrong.
pub fn tamper_id_token(
    mode: &Mode,
    token: &str,
    key: &SigningKey,
    access_token: Option<&str>,
) -> Result<String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else {
        bail!("not a compact JWS: {} parts", parts.len());
    };
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).context("header")?)
        .context("header JSON")?;
    let Value::Object(mut claims) =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).context("payload")?)
            .context("payload JSON")?
    else {
        bail!("the payload is not a JSON object");
    };
    let mut signature = URL_SAFE_NO_PAD.decode(s).context("signature")?;

    let resign = |claims: serde_json::Map<String, Value>| -> Result<String> {
        let header = json!({"alg": "EdDSA", "kid": PROXY_KID, "typ": "JWT"});
        let h = b64(serde_json::to_vec(&header)?);
        let p = b64(serde_json::to_vec(&Value::Object(claims))?);
        let sig = key.sign(format!("{h}.{p}").as_bytes());
        Ok(format!("{h}.{p}.{}", b64(sig.to_bytes())))
    };
    let fix_at_hash = |claims: &mut serde_json::Map<String, Value>| {
        if let (Some(at), true) = (access_token, claims.contains_key("at_hash")) {
            claims.insert("at_hash".to_string(), json!(eddsa_at_hash(at)));
        }
    };

    match mode {
        Mode::PassThrough => Ok(token.to_string()),
        Mode::AlgNone => {
            let h = b64(br#"{"alg":"none","typ":"JWT"}"#);
            Ok(format!("{h}.{p}."))
        }
        Mode::Hs256WithSecret(secret) => {
            let mut header_out = serde_json::Map::new();
            header_out.insert("alg".to_string(), json!("HS256"));
            if let Some(kid) = header.get("kid") {
                header_out.insert("kid".to_string(), kid.clone());
            }
            header_out.insert("typ".to_string(), json!("JWT"));
            let h = b64(serde_json::to_vec(&Value::Object(header_out))?);
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .map_err(|e| anyhow::anyhow!("HMAC key: {e}"))?;
            mac.update(format!("{h}.{p}").as_bytes());
            Ok(format!("{h}.{p}.{}", b64(mac.finalize().into_bytes())))
        }
        Mode::FlipSignature => {
            if signature.is_empty() {
                bail!("the token has no signature to flip");
            }
            let middle = signature.len() / 2;
            signature[middle] ^= 0x01;
            Ok(format!("{h}.{p}.{}", b64(&signature)))
        }
        Mode::ResignValid => {
            fix_at_hash(&mut claims);
            resign(claims)
        }
        Mode::OtherAudience(aud) => {
            claims.insert("aud".to_string(), json!(aud));
            fix_at_hash(&mut claims);
            resign(claims)
        }
        Mode::Expired => {
            let now = now();
            claims.insert("exp".to_string(), json!(now.saturating_sub(600)));
            claims.insert("iat".to_string(), json!(now.saturating_sub(1200)));
            fix_at_hash(&mut claims);
            resign(claims)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idp::{
        browser_login, ensure_npm_ci, node_available, pkce_s256, random_token, IdpOptions, TestIdp,
    };
    use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
    use openidconnect::core::{
        CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    };
    use openidconnect::{AccessToken, AccessTokenHash};
    use openidconnect::{
        ClaimsVerificationError, ClientId, ClientSecret, IssuerUrl, Nonce,
        SignatureVerificationError,
    };
    use std::io::BufRead as _;
    use std::str::FromStr as _;

    const ISSUER: &str = "http://127.0.0.1:9/issuer";
    const CLIENT_ID: &str = "pedm-ca";
    const SECRET: &str = "test-client-secret";
    const ACCESS_TOKEN: &str = "access-token-123";
    const IDP_KID: &str = "idp-key-1";

    /// A fake IdP: an Ed25519 key of its own (kid `idp-key-1`).
    fn idp_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn idp_jwk() -> Value {
        let mut jwk = proxy_jwk(&idp_key());
        jwk["kid"] = json!(IDP_KID);
        jwk
    }

    fn original_claims() -> Value {
        let now = now();
        json!({
            "iss": ISSUER,
            "sub": "sub-alice",
            "aud": CLIENT_ID,
            "exp": now + 600,
            "iat": now,
            "nonce": "n-0S6_WzA2Mj",
            "preferred_username": "eve\nroot",
            "groups": ["eng", "oncall"],
            "at_hash": "original-at-hash",
        })
    }

    /// A hand-made ID token signed by the fake IdP.
    fn original_token() -> String {
        let h = b64(
            serde_json::to_vec(&json!({"alg": "EdDSA", "kid": IDP_KID, "typ": "JWT"})).unwrap(),
        );
        let p = b64(serde_json::to_vec(&original_claims()).unwrap());
        let sig = idp_key().sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", b64(sig.to_bytes()))
    }

    fn segments(token: &str) -> (String, String, String) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        (parts[0].into(), parts[1].into(), parts[2].into())
    }

    fn decode_json(segment: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    fn proxy_key() -> SigningKey {
        SigningKey::from_bytes(&[42u8; 32])
    }

    fn tamper(mode: Mode) -> String {
        tamper_id_token(&mode, &original_token(), &proxy_key(), Some(ACCESS_TOKEN)).unwrap()
    }

    /// Verifies an EdDSA token with the public key in `jwk` (as published), returns its claims.
    fn verify_with_jwk(token: &str, jwk: &Value) -> Value {
        let (h, p, s) = segments(token);
        assert_eq!(jwk["kty"], json!("OKP"));
        assert_eq!(jwk["crv"], json!("Ed25519"));
        let x: [u8; 32] = URL_SAFE_NO_PAD
            .decode(jwk["x"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let key = VerifyingKey::from_bytes(&x).unwrap();
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap();
        key.verify(format!("{h}.{p}").as_bytes(), &sig)
            .expect("Ed25519 signature verifies with the published key");
        decode_json(&p)
    }

    /// What openidconnect 4.1 (the CA's relying-party library) says about `token`, with the
    /// IdP's key and the proxy's key in the key set, and `algs` allowed.
    fn openidconnect_verdict(
        token: &str,
        algs: Vec<CoreJwsSigningAlgorithm>,
    ) -> Result<(), ClaimsVerificationError> {
        let jwks: CoreJsonWebKeySet =
            serde_json::from_value(json!({"keys": [idp_jwk(), proxy_jwk(&proxy_key())]})).unwrap();
        let verifier = CoreIdTokenVerifier::new_confidential_client(
            ClientId::new(CLIENT_ID.into()),
            ClientSecret::new(SECRET.into()),
            IssuerUrl::new(ISSUER.into()).unwrap(),
            jwks,
        )
        .set_allowed_algs(algs);
        let id_token = match CoreIdToken::from_str(token) {
            Ok(t) => t,
            Err(e) => return Err(ClaimsVerificationError::Other(format!("parse: {e}"))),
        };
        id_token
            .claims(&verifier, |_: Option<&Nonce>| -> Result<(), String> {
                Ok(())
            })
            .map(|_| ())
    }

    /// openidconnect's refusal of an `alg: none` token (NoSignature, or DisallowedAlg).
    fn is_unsigned_refusal(verdict: &Result<(), ClaimsVerificationError>) -> bool {
        matches!(
            verdict,
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoSignature
                    | SignatureVerificationError::DisallowedAlg(_)
            ))
        )
    }

    fn asymmetric() -> Vec<CoreJwsSigningAlgorithm> {
        vec![
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            CoreJwsSigningAlgorithm::EdDsa,
        ]
    }

    #[test]
    fn the_hand_made_token_is_valid() {
        // The baseline for every refusal below.
        assert_eq!(
            openidconnect_verdict(&original_token(), asymmetric()),
            Ok(())
        );
        let claims = verify_with_jwk(&original_token(), &idp_jwk());
        assert_eq!(claims, original_claims());
    }

    #[test]
    fn alg_none_keeps_the_payload_and_drops_the_signature() {
        let forged = tamper(Mode::AlgNone);
        let (h, p, s) = segments(&forged);
        let (_, p0, _) = segments(&original_token());
        assert_eq!(decode_json(&h), json!({"alg": "none", "typ": "JWT"}));
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&h).unwrap(),
            br#"{"alg":"none","typ":"JWT"}"#
        );
        assert_eq!(p, p0, "same payload");
        assert_eq!(s, "", "empty signature");
        assert!(forged.ends_with('.'));
        let verdict = openidconnect_verdict(&forged, asymmetric());
        assert!(is_unsigned_refusal(&verdict), "{verdict:?}");
    }

    #[test]
    fn hs256_is_keyed_with_the_client_secret() {
        let forged = tamper(Mode::Hs256WithSecret(SECRET.into()));
        let (h, p, s) = segments(&forged);
        let (_, p0, _) = segments(&original_token());
        assert_eq!(
            decode_json(&h),
            json!({"alg": "HS256", "kid": IDP_KID, "typ": "JWT"})
        );
        assert_eq!(p, p0, "same payload");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(&s).unwrap())
            .expect("HMAC-SHA256 with the client secret");
        let mut other = Hmac::<Sha256>::new_from_slice(b"another secret").unwrap();
        other.update(format!("{h}.{p}").as_bytes());
        assert!(other
            .verify_slice(&URL_SAFE_NO_PAD.decode(&s).unwrap())
            .is_err());
        // A well-formed attack: a verifier that allowed HS256 would accept it...
        let mut with_hs256 = asymmetric();
        with_hs256.push(CoreJwsSigningAlgorithm::HmacSha256);
        assert_eq!(openidconnect_verdict(&forged, with_hs256), Ok(()));
        // ...and an asymmetric allow-list refuses it.
        assert!(matches!(
            openidconnect_verdict(&forged, asymmetric()),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::DisallowedAlg(_)
            ))
        ));
    }

    #[test]
    fn flip_signature_changes_exactly_one_bit() {
        let original = original_token();
        let forged = tamper(Mode::FlipSignature);
        let (h, p, s) = segments(&forged);
        let (h0, p0, s0) = segments(&original);
        assert_eq!((&h, &p), (&h0, &p0), "same header and payload");
        let s = URL_SAFE_NO_PAD.decode(s).unwrap();
        let s0 = URL_SAFE_NO_PAD.decode(s0).unwrap();
        assert_eq!(s.len(), s0.len());
        let differing_bits: u32 = s.iter().zip(&s0).map(|(a, b)| (a ^ b).count_ones()).sum();
        assert_eq!(differing_bits, 1);
        assert!(matches!(
            openidconnect_verdict(&forged, asymmetric()),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::CryptoError(_)
            ))
        ));
        // No signature: nothing to flip.
        let unsigned = format!("{h0}.{p0}.");
        assert!(tamper_id_token(&Mode::FlipSignature, &unsigned, &proxy_key(), None).is_err());
    }

    #[test]
    fn resign_valid_keeps_the_claims_and_verifies_with_the_published_jwk() {
        let forged = tamper(Mode::ResignValid);
        let (h, _, _) = segments(&forged);
        assert_eq!(
            decode_json(&h),
            json!({"alg": "EdDSA", "kid": PROXY_KID, "typ": "JWT"})
        );
        let claims = verify_with_jwk(&forged, &proxy_jwk(&proxy_key()));
        let mut expected = original_claims();
        expected["at_hash"] = json!(eddsa_at_hash(ACCESS_TOKEN));
        assert_eq!(claims, expected);
        // Not verifiable with the IdP's key.
        let (h, p, s) = segments(&forged);
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap();
        assert!(idp_key()
            .verifying_key()
            .verify(format!("{h}.{p}").as_bytes(), &sig)
            .is_err());
        // The positive control: openidconnect parses the OKP key and accepts the token.
        assert_eq!(openidconnect_verdict(&forged, asymmetric()), Ok(()));
    }

    #[test]
    fn at_hash_matches_what_openidconnect_computes_for_eddsa() {
        use openidconnect::core::CoreJsonWebKey;
        let jwk: CoreJsonWebKey = serde_json::from_value(proxy_jwk(&proxy_key())).unwrap();
        let expected = AccessTokenHash::from_token(
            &AccessToken::new(ACCESS_TOKEN.into()),
            &CoreJwsSigningAlgorithm::EdDsa,
            &jwk,
        )
        .unwrap();
        assert_eq!(eddsa_at_hash(ACCESS_TOKEN), expected.to_string());
        // Without an access token, at_hash is left alone.
        let forged =
            tamper_id_token(&Mode::ResignValid, &original_token(), &proxy_key(), None).unwrap();
        let (_, p, _) = segments(&forged);
        assert_eq!(decode_json(&p)["at_hash"], json!("original-at-hash"));
    }

    #[test]
    fn other_audience_changes_only_aud() {
        let forged = tamper(Mode::OtherAudience("someone-else".into()));
        let claims = verify_with_jwk(&forged, &proxy_jwk(&proxy_key()));
        let mut expected = original_claims();
        expected["aud"] = json!("someone-else");
        expected["at_hash"] = json!(eddsa_at_hash(ACCESS_TOKEN));
        assert_eq!(claims, expected);
        assert!(matches!(
            openidconnect_verdict(&forged, asymmetric()),
            Err(ClaimsVerificationError::InvalidAudience(_))
        ));
    }

    #[test]
    fn expired_changes_only_exp_and_iat() {
        let before = now();
        let forged = tamper(Mode::Expired);
        let after = now();
        let claims = verify_with_jwk(&forged, &proxy_jwk(&proxy_key()));
        let exp = claims["exp"].as_u64().unwrap();
        let iat = claims["iat"].as_u64().unwrap();
        assert!((before - 600..=after - 600).contains(&exp), "exp {exp}");
        assert_eq!(exp - iat, 600);
        let mut expected = original_claims();
        expected["exp"] = json!(exp);
        expected["iat"] = json!(iat);
        expected["at_hash"] = json!(eddsa_at_hash(ACCESS_TOKEN));
        assert_eq!(claims, expected);
        assert!(matches!(
            openidconnect_verdict(&forged, asymmetric()),
            Err(ClaimsVerificationError::Expired(_))
        ));
    }

    #[test]
    fn pass_through_and_garbage() {
        let original = original_token();
        assert_eq!(
            tamper_id_token(&Mode::PassThrough, &original, &proxy_key(), None).unwrap(),
            original
        );
        for garbage in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!.??.",
            "e30.W10.",
            "e30.e30.%%",
        ] {
            for mode in [Mode::AlgNone, Mode::FlipSignature, Mode::ResignValid] {
                assert!(
                    tamper_id_token(&mode, garbage, &proxy_key(), None).is_err(),
                    "{mode:?} {garbage:?}"
                );
            }
        }
    }

    #[test]
    fn request_heads_are_parsed_strictly() {
        let req =
            parse_head("POST /token?x=1 HTTP/1.1\r\nHost: a\r\nX-A:  b \r\nContent-Length: 3")
                .unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.target, "/token?x=1");
        assert_eq!(
            req.headers,
            vec![
                ("Host".to_string(), "a".to_string()),
                ("X-A".to_string(), "b".to_string()),
                ("Content-Length".to_string(), "3".to_string()),
            ]
        );
        let req = parse_head("GET http://127.0.0.1:5/jwks?a HTTP/1.1").unwrap();
        assert_eq!(req.target, "/jwks?a");
        let req = parse_head("GET http://127.0.0.1:5 HTTP/1.1").unwrap();
        assert_eq!(req.target, "/");
        for bad in [
            "",
            "GET",
            "GET /",
            "GET / HTTP/2",
            "GET  / HTTP/1.1",
            "G(T / HTTP/1.1",
            "GET * HTTP/1.1",
            "GET / HTTP/1.1\r\nNoColon",
            "GET / HTTP/1.1\r\nA: b\r\n folded",
            "GET / HTTP/1.1\r\nBad Name: x",
        ] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
    }

    // ---- Through the proxy, with a tiny upstream ----

    /// Requests the tiny upstream received: (method, target, headers, body).
    type Seen = Arc<Mutex<Vec<(String, String, Vec<(String, String)>, Vec<u8>)>>>;

    /// A one-request-per-connection HTTP server on a std TcpListener, answering:
    /// `/.well-known/openid-configuration`, `/token` (a JSON id_token), `/jwks` (the fake IdP's
    /// key), `/redirect` (302 with Location and two Set-Cookie), `/teapot` (418 JSON with an
    /// id_token), `/echo` (the request as JSON), anything else 404.
    fn tiny_upstream() -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let seen: Seen = Arc::default();
        let log = Arc::clone(&seen);
        let issuer = base.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Ok(Some(req)) = read_request(&mut stream) else {
                    continue;
                };
                lock(&log).push((
                    req.method.clone(),
                    req.target.clone(),
                    req.headers.clone(),
                    req.body.clone(),
                ));
                let path = req.target.split('?').next().unwrap_or_default();
                let json_resp = |status: u16, v: Value| Response {
                    status,
                    headers: vec![("content-type".into(), b"application/json".to_vec())],
                    body: serde_json::to_vec(&v).unwrap(),
                };
                let token_body = json!({
                    "access_token": ACCESS_TOKEN,
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "id_token": original_token(),
                    "scope": "openid",
                });
                let resp = match path {
                    "/.well-known/openid-configuration" => json_resp(
                        200,
                        json!({
                            "issuer": issuer,
                            "token_endpoint": format!("{issuer}/oauth/tok"),
                            "jwks_uri": format!("{issuer}/keys"),
                            "id_token_signing_alg_values_supported": ["RS256"],
                        }),
                    ),
                    "/token" if req.target.contains("status=400") => json_resp(400, token_body),
                    "/token" if req.target.contains("type=text") => Response {
                        status: 200,
                        headers: vec![("content-type".into(), b"text/plain".to_vec())],
                        body: serde_json::to_vec(&token_body).unwrap(),
                    },
                    "/token" | "/oauth/tok" => json_resp(200, token_body),
                    "/teapot" => json_resp(418, token_body),
                    "/jwks" | "/keys" => json_resp(200, json!({"keys": [idp_jwk()]})),
                    "/redirect" => Response {
                        status: 302,
                        headers: vec![
                            (
                                "location".into(),
                                b"http://127.0.0.1:5555/callback?code=abc&state=xyz".to_vec(),
                            ),
                            ("set-cookie".into(), b"a=1; Path=/; HttpOnly".to_vec()),
                            ("set-cookie".into(), b"b=2; Path=/x".to_vec()),
                        ],
                        body: Vec::new(),
                    },
                    "/echo" => json_resp(
                        201,
                        json!({
                            "method": req.method,
                            "target": req.target,
                            "body": String::from_utf8_lossy(&req.body),
                        }),
                    ),
                    _ => Response {
                        status: 404,
                        headers: vec![("content-type".into(), b"text/plain".to_vec())],
                        body: b"upstream: not found".to_vec(),
                    },
                };
                let _ = write_response(&mut stream, &resp, req.method == "HEAD");
                let _ = stream.shutdown(Shutdown::Write);
            }
        });
        (base, seen)
    }

    fn client() -> Client {
        Client::builder()
            .redirect(Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn get_json(url: &str) -> Value {
        let resp = client().get(url).send().unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        resp.json().unwrap()
    }

    #[test]
    fn proxy_rewrites_id_tokens_and_appends_its_key() {
        let (upstream, _) = tiny_upstream();
        let proxy = TamperProxy::bind().unwrap();
        proxy.set_upstream(&format!("{upstream}/"));
        let base = proxy.url();

        // JWKS: the IdP's key, then the proxy's (in PassThrough too).
        let jwks = get_json(&format!("{base}/jwks"));
        assert_eq!(jwks["keys"], json!([idp_jwk(), proxy.jwk()]));
        assert_eq!(proxy.jwk()["kid"], json!(PROXY_KID));
        assert_eq!(proxy.jwk()["kty"], json!("OKP"));

        // PassThrough: the token is untouched.
        let body = get_json(&format!("{base}/token"));
        assert_eq!(body["id_token"], json!(original_token()));
        assert_eq!(proxy.tampered_count(), 0);

        proxy.set_mode(Mode::ResignValid);
        assert_eq!(proxy.mode(), Mode::ResignValid);
        let resp = client()
            .post(format!("{base}/token"))
            .form(&[("grant_type", "authorization_code"), ("code", "c")])
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().unwrap();
        assert_eq!(proxy.tampered_count(), 1);
        let forged = body["id_token"].as_str().unwrap();
        assert_ne!(forged, original_token());
        // Verifiable with the key the proxy published in the JWKS response.
        let claims = verify_with_jwk(forged, &jwks["keys"][1]);
        assert_eq!(claims["sub"], json!("sub-alice"));
        // The rest of the token response is intact.
        assert_eq!(body["access_token"], json!(ACCESS_TOKEN));
        assert_eq!(body["expires_in"], json!(3600));

        proxy.set_mode(Mode::AlgNone);
        let body = get_json(&format!("{base}/token"));
        let (h, _, s) = segments(body["id_token"].as_str().unwrap());
        assert_eq!(decode_json(&h)["alg"], json!("none"));
        assert_eq!(s, "");
        assert_eq!(proxy.tampered_count(), 2);

        // Not the token endpoint, not 200, or not JSON: unchanged.
        for (path, status) in [
            ("/teapot", 418),
            ("/token?status=400", 400),
            ("/token?type=text", 200),
        ] {
            let resp = client().get(format!("{base}{path}")).send().unwrap();
            assert_eq!(resp.status(), status, "{path}");
            let body: Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
            assert_eq!(body["id_token"], json!(original_token()), "{path}");
        }
        assert_eq!(proxy.tampered_count(), 2);

        // Discovery names other endpoints: the proxy follows them.
        let disco = get_json(&format!("{base}/.well-known/openid-configuration"));
        assert_eq!(
            disco["id_token_signing_alg_values_supported"],
            json!(["RS256", "EdDSA"])
        );
        assert_eq!(
            disco["token_endpoint"],
            json!(format!("{upstream}/oauth/tok"))
        );
        let keys = get_json(&format!("{base}/keys"));
        assert_eq!(keys["keys"], json!([idp_jwk(), proxy.jwk()]));
        let body = get_json(&format!("{base}/oauth/tok?x=1"));
        assert_ne!(body["id_token"], json!(original_token()));
        assert_eq!(proxy.tampered_count(), 3);

        proxy.set_mode(Mode::PassThrough);
        let body = get_json(&format!("{base}/oauth/tok"));
        assert_eq!(body["id_token"], json!(original_token()));
        assert_eq!(proxy.tampered_count(), 3);

        let seen: Vec<(String, String)> = proxy.requests();
        assert_eq!(seen[0], ("GET".to_string(), "/jwks".to_string()));
        assert_eq!(seen[2], ("POST".to_string(), "/token".to_string()));
        assert!(seen.contains(&("GET".to_string(), "/oauth/tok?x=1".to_string())));
        assert_eq!(seen.len(), 11);
    }

    #[test]
    fn proxy_relays_other_traffic_unchanged() {
        let (upstream, seen) = tiny_upstream();
        let proxy = TamperProxy::bind().unwrap();
        proxy.set_upstream(&upstream);
        proxy.set_mode(Mode::FlipSignature);
        let base = proxy.url();

        // Redirects are relayed, not followed; every Set-Cookie survives.
        let resp = client().get(format!("{base}/redirect")).send().unwrap();
        assert_eq!(resp.status(), 302);
        assert_eq!(
            resp.headers()["location"],
            "http://127.0.0.1:5555/callback?code=abc&state=xyz"
        );
        let cookies: Vec<&str> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["a=1; Path=/; HttpOnly", "b=2; Path=/x"]);
        assert_eq!(resp.headers()["connection"], "close");

        // Method, path, query, body and end-to-end headers reach the upstream; hop-by-hop
        // headers do not; the status comes back.
        let resp = client()
            .put(format!("{base}/echo?a=1&b=%20"))
            .header("x-custom", "yes")
            .header("connection", "x-private")
            .header("x-private", "hop")
            .body("hello body")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 201);
        let echo: Value = resp.json().unwrap();
        assert_eq!(
            echo,
            json!({"method": "PUT", "target": "/echo?a=1&b=%20", "body": "hello body"})
        );
        let (method, target, headers, body) = lock(&seen).last().cloned().unwrap();
        assert_eq!(
            (method.as_str(), target.as_str()),
            ("PUT", "/echo?a=1&b=%20")
        );
        assert_eq!(body, b"hello body");
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        assert!(has("x-custom"), "{headers:?}");
        assert!(!has("x-private"), "{headers:?}");
        assert!(
            !headers.iter().any(|(_, v)| v.contains("x-private")),
            "{headers:?}"
        );

        let resp = client().get(format!("{base}/nowhere")).send().unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.text().unwrap(), "upstream: not found");
        let resp = client().head(format!("{base}/jwks")).send().unwrap();
        assert_eq!(resp.status(), 200);
        let upstream_length = serde_json::to_vec(&json!({"keys": [idp_jwk()]}))
            .unwrap()
            .len();
        assert_eq!(
            resp.headers()["content-length"],
            upstream_length.to_string().as_str()
        );
        assert_eq!(proxy.tampered_count(), 0);
    }

    /// Sends raw bytes, returns the raw answer.
    fn raw(port: u16, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let _ = s.shutdown(Shutdown::Write);
        let mut out = String::new();
        let _ = std::io::BufReader::new(s).read_to_string(&mut out);
        out
    }

    fn status_line(answer: &str) -> String {
        std::io::BufReader::new(answer.as_bytes())
            .lines()
            .next()
            .and_then(|l| l.ok())
            .unwrap_or_default()
    }

    #[test]
    fn proxy_answers_503_without_upstream_and_survives_garbage() {
        let proxy = TamperProxy::bind().unwrap();
        let port = proxy.port();
        let resp = client()
            .get(format!("{}/jwks", proxy.url()))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 503);

        let (upstream, _) = tiny_upstream();
        proxy.set_upstream(&upstream);
        for (bytes, status) in [
            (&b"\x00\xff garbage\r\n\r\n"[..], "HTTP/1.1 400 Bad Request"),
            (
                b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                "HTTP/1.1 400 Bad Request",
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
                "HTTP/1.1 400 Bad Request",
            ),
            (
                b"POST /token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                "HTTP/1.1 501 Not Implemented",
            ),
            (
                b"GET /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
                "HTTP/1.1 400 Bad Request",
            ),
            (b"GET /jwks HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK"),
        ] {
            let answer = raw(port, bytes);
            assert_eq!(
                status_line(&answer),
                status,
                "{:?}: {answer}",
                String::from_utf8_lossy(bytes)
            );
        }
        let huge = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(
            status_line(&raw(port, &huge)),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        // Still serving.
        let jwks = get_json(&format!("{}/jwks", proxy.url()));
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
        let answer = raw(port, b"GET /jwks HTTP/1.1\r\nHost: x\r\n\r\n");
        let length: usize = answer
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        assert_eq!(
            body.len(),
            length,
            "Content-Length matches the rewritten body"
        );

        // An upstream that is not there: 502, not a hang or a crash.
        proxy.set_upstream("http://127.0.0.1:1");
        let resp = client()
            .get(format!("{}/jwks", proxy.url()))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 502);
    }

    #[test]
    fn dropping_the_proxy_stops_it() {
        let proxy = TamperProxy::bind().unwrap();
        let port = proxy.port();
        drop(proxy);
        // The listener is closed: connections are refused.
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    // ---- With the real test IdP behind the proxy ----

    /// One authorization-code sign-in of alice through the proxy; returns the token response
    /// and the nonce sent.
    fn sign_in_through(idp: &TestIdp, disco: &Value) -> Result<(Value, String)> {
        let (verifier, challenge) = pkce_s256();
        let state = random_token(16);
        let nonce = random_token(16);
        let redirect = "http://127.0.0.1:5555/callback";
        let endpoint = disco["authorization_endpoint"]
            .as_str()
            .context("authorization_endpoint")?;
        let url = url::Url::parse_with_params(
            endpoint,
            &[
                ("response_type", "code"),
                ("client_id", idp.client_id.as_str()),
                ("redirect_uri", redirect),
                ("scope", "openid profile groups"),
                ("state", state.as_str()),
                ("nonce", nonce.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )?;
        let callback = browser_login(url.as_str(), "alice")?;
        let param = |name: &str| {
            callback
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        assert_eq!(param("state").as_deref(), Some(state.as_str()));
        let code = param("code").context("no code in the callback")?;
        let token_endpoint = disco["token_endpoint"].as_str().context("token_endpoint")?;
        let resp = client()
            .post(token_endpoint)
            .basic_auth(&idp.client_id, Some(&idp.client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect),
                ("code_verifier", verifier.as_str()),
            ])
            .send()?;
        assert_eq!(resp.status(), 200);
        Ok((resp.json()?, nonce))
    }

    #[test]
    fn forged_tokens_from_the_real_idp_meet_openidconnect() -> Result<()> {
        if !node_available()? {
            return Ok(());
        }
        ensure_npm_ci()?;
        let proxy = TamperProxy::bind()?;
        let idp = TestIdp::start(IdpOptions {
            issuer: Some(proxy.url()),
            ..IdpOptions::default()
        })?;
        assert_eq!(idp.issuer, proxy.url());
        proxy.set_upstream(&idp.direct_url());

        let http = client();
        let disco: Value = http
            .get(format!("{}/.well-known/openid-configuration", proxy.url()))
            .send()?
            .json()?;
        assert_eq!(
            disco["token_endpoint"],
            json!(format!("{}/token", proxy.url()))
        );
        let algs = &disco["id_token_signing_alg_values_supported"];
        assert_eq!(algs, &json!(["RS256", "EdDSA"]));
        let jwks_uri = disco["jwks_uri"].as_str().context("jwks_uri")?;
        assert_eq!(jwks_uri, format!("{}/jwks", proxy.url()));
        let jwks: Value = http.get(jwks_uri).send()?.json()?;
        let keys = jwks["keys"].as_array().context("keys")?;
        assert_eq!(keys.last(), Some(&proxy.jwk()), "{jwks}");
        assert!(keys.len() >= 2, "the IdP's own key is kept: {jwks}");
        let jwks: CoreJsonWebKeySet = serde_json::from_value(jwks)?;

        type Expect = fn(&Result<(), ClaimsVerificationError>) -> bool;
        let cases: Vec<(Mode, Expect)> = vec![
            (Mode::PassThrough, |v| v.is_ok()),
            (Mode::ResignValid, |v| v.is_ok()),
            (Mode::AlgNone, is_unsigned_refusal),
            (Mode::Hs256WithSecret(idp.client_secret.clone()), |v| {
                matches!(
                    v,
                    Err(ClaimsVerificationError::SignatureVerification(
                        SignatureVerificationError::DisallowedAlg(_)
                    ))
                )
            }),
            (Mode::FlipSignature, |v| {
                matches!(
                    v,
                    Err(ClaimsVerificationError::SignatureVerification(
                        SignatureVerificationError::CryptoError(_)
                    ))
                )
            }),
            (Mode::OtherAudience("someone-else".into()), |v| {
                matches!(v, Err(ClaimsVerificationError::InvalidAudience(_)))
            }),
            (Mode::Expired, |v| {
                matches!(v, Err(ClaimsVerificationError::Expired(_)))
            }),
        ];
        for (mode, expected) in cases {
            proxy.set_mode(mode.clone());
            let before = proxy.tampered_count();
            let (body, nonce) = sign_in_through(&idp, &disco)?;
            let tampered = usize::from(mode != Mode::PassThrough);
            assert_eq!(proxy.tampered_count(), before + tampered, "{mode:?}");
            let token = body["id_token"].as_str().context("id_token")?;
            let verifier = CoreIdTokenVerifier::new_confidential_client(
                ClientId::new(idp.client_id.clone()),
                ClientSecret::new(idp.client_secret.clone()),
                IssuerUrl::new(idp.issuer.clone())?,
                jwks.clone(),
            )
            .set_allowed_algs(asymmetric());
            let nonce = Nonce::new(nonce);
            let verdict = match CoreIdToken::from_str(token) {
                Ok(id_token) => {
                    let verdict = id_token.claims(&verifier, &nonce).map(|_| ());
                    if let (Ok(()), Ok(claims)) = (&verdict, id_token.claims(&verifier, &nonce)) {
                        // at_hash, when the IdP sends it, still matches for the new algorithm.
                        if let Some(at_hash) = claims.access_token_hash() {
                            let alg = id_token.signing_alg()?;
                            let key = id_token.signing_key(&verifier)?;
                            let access = body["access_token"].as_str().context("access_token")?;
                            let expected = AccessTokenHash::from_token(
                                &AccessToken::new(access.into()),
                                alg,
                                key,
                            )?;
                            assert_eq!(at_hash, &expected, "{mode:?}");
                        }
                    }
                    verdict
                }
                Err(e) => Err(ClaimsVerificationError::Other(format!("parse: {e}"))),
            };
            assert!(expected(&verdict), "{mode:?}: {verdict:?}");
            let (h, _, _) = segments(token);
            let alg = decode_json(&h)["alg"].clone();
            match mode {
                Mode::PassThrough => assert_eq!(alg, json!("RS256")),
                Mode::ResignValid | Mode::OtherAudience(_) | Mode::Expired => {
                    assert_eq!(alg, json!("EdDSA"))
                }
                _ => {}
            }
        }
        let seen = proxy.requests();
        assert!(
            seen.iter().any(|(m, p)| m == "POST" && p == "/token"),
            "{seen:?}"
        );
        Ok(())
    }
}
