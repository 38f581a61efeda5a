//! The loopback listener that receives the identity provider's redirect (RFC 8252 §7.3).
//!
//! It listens on `127.0.0.1` only and answers `GET /callback?code=…&state=…&iss=…`.
//! Anyone on this machine (or a web page the browser shows) can send it requests, so:
//!
//! - it accepts only the `state` of this login (compared in constant time); a request with
//!   another state, no state, or without `code` gets a 400 page and the listener **keeps
//!   waiting**, so a forged redirect can neither end nor hijack the login;
//! - an IdP error redirect (`error=…`) ends the login only when it carries our `state`,
//!   for the same reason;
//! - it answers only for the `Host` it is reachable as (`127.0.0.1:PORT`), which keeps
//!   DNS-rebinding pages out;
//! - its pages reflect nothing from the request, and ask not to be cached;
//! - any other path is a 404; the first good callback wins and the listener closes.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{oneshot, watch};

/// How long the CLI waits for the browser, matching the CA's 5-minute pending login.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The OAuth error code with which an IdP says the user (or policy) refused.
pub const ACCESS_DENIED: &str = "access_denied";

/// A good redirect: the authorization code, our own `state`, and the RFC 9207 `iss`.
#[derive(Clone, PartialEq, Eq)]
pub struct Callback {
    pub code: String,
    pub state: String,
    pub iss: Option<String>,
}

impl std::fmt::Debug for Callback {
    /// Leaves the code out: it is half of what redeems the login.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("code", &"<redacted>")
            .field("state", &self.state)
            .field("iss", &self.iss)
            .finish()
    }
}

/// Why no good callback arrived. IdP-supplied strings are raw here; escape them to print.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The IdP redirected with `error=access_denied` (the user or the IdP's policy said no).
    #[error("the identity provider refused the sign-in (access_denied)")]
    Denied { description: Option<String> },
    /// The IdP redirected with another `error`.
    #[error("the identity provider answered with an error")]
    Idp {
        error: String,
        description: Option<String>,
    },
    /// Nobody completed the sign-in in time.
    #[error("sign-in timed out after {} s", .0.as_secs())]
    TimedOut(Duration),
    /// The loopback port cannot be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The listener stopped on its own.
    #[error("the callback listener failed: {0}")]
    Serve(String),
}

/// A bound loopback listener, not yet serving. Binding first lets the caller learn the
/// port (and so the redirect URI) before it starts the login at the CA.
#[derive(Debug)]
pub struct Listener {
    listener: tokio::net::TcpListener,
    port: u16,
}

/// The redirect URI for `port`, exactly as the CA requires it.
pub fn redirect_uri(port: u16) -> String {
    format!("http://127.0.0.1:{port}/callback")
}

impl Listener {
    /// Binds `127.0.0.1:port`; `0` picks a free port.
    pub async fn bind(port: u16) -> Result<Self, CallbackError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| CallbackError::Bind { addr, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| CallbackError::Bind { addr, source })?
            .port();
        Ok(Self { listener, port })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:{port}/callback`.
    pub fn redirect_uri(&self) -> String {
        redirect_uri(self.port)
    }

    /// Serves until a callback with `expected_state` arrives (or an IdP error with it), or
    /// until `timeout`. Forged or incomplete requests are answered with 400 and ignored.
    /// The browser gets its answer page before this returns; then the port is closed.
    pub async fn wait(
        self,
        expected_state: &str,
        timeout: Duration,
    ) -> Result<Callback, CallbackError> {
        let (tx, rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            expected_state: expected_state.to_string(),
            host: format!("127.0.0.1:{}", self.port),
            done: Mutex::new(Some(tx)),
        });
        let app = Router::new()
            .route("/callback", get(handle_callback))
            .fallback(not_found)
            .with_state(shared);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let server = tokio::spawn(async move {
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                })
                .await
        });
        // If this future is dropped (the caller gave up), the server goes with it.
        let _guard = AbortOnDrop(server.abort_handle());
        let outcome = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(CallbackError::Serve("the listener stopped".into())),
            Err(_) => Err(CallbackError::TimedOut(timeout)),
        };
        // Let the last response reach the browser, then close the port.
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        outcome
    }
}

type Outcome = Result<Callback, CallbackError>;

/// Aborts the server task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Shared {
    expected_state: String,
    host: String,
    done: Mutex<Option<oneshot::Sender<Outcome>>>,
}

impl Shared {
    /// Delivers the outcome; `false` if one was delivered already.
    fn finish(&self, outcome: Outcome) -> bool {
        let sender = match self.done.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        match sender {
            Some(tx) => tx.send(outcome).is_ok(),
            None => false,
        }
    }
}

/// The query parameters the callback understands, each at most once.
#[derive(Debug, Default)]
struct Params {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Parses the query; `None` if a parameter we read appears twice (ambiguous, so refused).
fn parse_params(query: Option<&str>) -> Option<Params> {
    let mut p = Params::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "code" => &mut p.code,
            "state" => &mut p.state,
            "iss" => &mut p.iss,
            "error" => &mut p.error,
            "error_description" => &mut p.error_description,
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return None;
        }
    }
    Some(p)
}

/// Constant-time string equality (the length may leak; the content does not).
fn same_secret(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

const PAGE_SIGNED_IN: &str = "signed in, you can close this tab and return to the terminal";
const PAGE_REFUSED: &str =
    "the identity provider refused the sign-in; see the terminal for what to do next";
const PAGE_NOT_OURS: &str = "this is not the sign-in pedm-ssh is waiting for (wrong or missing state); it was ignored, and pedm-ssh is still waiting";
const PAGE_NO_CODE: &str =
    "the sign-in response has no authorization code; it was ignored, and pedm-ssh is still waiting";
const PAGE_ALREADY: &str = "this sign-in is already complete; you can close this tab";
const PAGE_BAD_HOST: &str = "wrong Host";
const PAGE_NOT_FOUND: &str = "not found";

/// A small fixed HTML page (nothing from the request is reflected in it).
fn page(status: StatusCode, message: &'static str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>pedm-ssh</title></head>\
         <body><p>pedm-ssh: {message}</p></body></html>\n"
    );
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    resp
}

async fn not_found() -> Response {
    page(StatusCode::NOT_FOUND, PAGE_NOT_FOUND)
}

async fn handle_callback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let host_ok = headers
        .get(header::HOST)
        .is_some_and(|h| h.as_bytes() == shared.host.as_bytes());
    if !host_ok {
        return page(StatusCode::BAD_REQUEST, PAGE_BAD_HOST);
    }
    let Some(params) = parse_params(query.as_deref()) else {
        return page(StatusCode::BAD_REQUEST, PAGE_NOT_OURS);
    };
    let ours = params
        .state
        .as_deref()
        .is_some_and(|s| same_secret(s, &shared.expected_state));
    if !ours {
        return page(StatusCode::BAD_REQUEST, PAGE_NOT_OURS);
    }
    if let Some(error) = params.error {
        let description = params.error_description;
        let outcome = if error == ACCESS_DENIED {
            CallbackError::Denied { description }
        } else {
            CallbackError::Idp { error, description }
        };
        return if shared.finish(Err(outcome)) {
            page(StatusCode::OK, PAGE_REFUSED)
        } else {
            page(StatusCode::BAD_REQUEST, PAGE_ALREADY)
        };
    }
    let (Some(code), Some(state)) = (params.code.filter(|c| !c.is_empty()), params.state) else {
        return page(StatusCode::BAD_REQUEST, PAGE_NO_CODE);
    };
    let cb = Callback {
        code,
        state,
        iss: params.iss,
    };
    if shared.finish(Ok(cb)) {
        page(StatusCode::OK, PAGE_SIGNED_IN)
    } else {
        page(StatusCode::BAD_REQUEST, PAGE_ALREADY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uri_is_exact() {
        assert_eq!(redirect_uri(8250), "http://127.0.0.1:8250/callback");
    }

    #[test]
    fn duplicate_parameters_are_refused() {
        assert!(parse_params(Some("code=a&code=b&state=s")).is_none());
        let p = parse_params(Some("code=a%20b&state=s&iss=http%3A%2F%2Fi&x=1&x=2")).unwrap();
        assert_eq!(p.code.as_deref(), Some("a b"));
        assert_eq!(p.iss.as_deref(), Some("http://i"));
        assert!(parse_params(None).unwrap().code.is_none());
    }

    #[test]
    fn constant_time_compare() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn callback_debug_hides_code() {
        let cb = Callback {
            code: "secret-code".into(),
            state: "s".into(),
            iss: None,
        };
        assert!(!format!("{cb:?}").contains("secret-code"));
    }
}
