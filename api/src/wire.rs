//! Request and response bodies of the v1 API.

use serde::{Deserialize, Serialize};

/// `POST /v1/certs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRequest {
    /// The user's OpenSSH public key line.
    pub public_key: String,
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// OpenSSH certificate line (`ssh-ed25519-cert-v01@openssh.com AAAA…`).
    pub certificate: String,
    pub serial: u64,
    pub key_id: String,
    pub principals: Vec<String>,
    /// Unix seconds.
    pub valid_after: i64,
    /// Unix seconds.
    pub valid_before: i64,
}

/// Answer of `POST /v1/certs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertResponse {
    pub base: IssuedCert,
    /// The CA's clock (unix seconds) when it signed, so clients can warn of skew.
    pub ca_time: i64,
}

/// Answer of `GET /v1/auth/info`: how this CA lets people sign in, fetched by the CLI before
/// it opens its loopback listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthInfo {
    /// `true` when `[oidc]` is configured.
    pub browser: bool,
    /// The fixed loopback callback port the IdP insists on, if any; otherwise the CLI picks
    /// any free port (RFC 8252).
    pub redirect_port: Option<u16>,
}

/// `POST /v1/auth/oidc/start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcStartRequest {
    /// Must serialise exactly to `http://127.0.0.1:{port}/callback`.
    pub redirect_uri: String,
    /// Lowercase hex SHA-256 of the CLI's 256-bit `login_secret`.
    pub login_secret_sha256: String,
}

/// Answer of `POST /v1/auth/oidc/start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcStartResponse {
    /// Where the browser goes.
    pub authorization_url: String,
    /// The `state` the callback must carry; the CLI accepts no other.
    pub state: String,
    /// Unix seconds after which the pending login is gone.
    pub expires_at: i64,
}

/// `POST /v1/auth/oidc/finish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFinishRequest {
    pub code: String,
    pub state: String,
    /// RFC 9207 `iss` from the callback, when the IdP sent it.
    #[serde(default)]
    pub iss: Option<String>,
    /// The secret whose hash was given at start (64 hex characters).
    pub login_secret: String,
}

/// A new session, returned exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResponse {
    /// Bearer token for later calls; the CA keeps only its SHA-256.
    pub session_token: String,
    pub user: String,
    pub roles: Vec<String>,
    pub principals: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Answer of `GET /v1/session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub user: String,
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub principals: Vec<String>,
    /// Unix seconds, when the IdP says the user last authenticated.
    pub auth_time: Option<i64>,
    /// How the session was made: `browser`, later `device` or `token`.
    pub method: String,
    pub expires_at: i64,
    pub ca_time: i64,
}

/// Answer of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub active_key: String,
    pub bundle_version: u64,
}
