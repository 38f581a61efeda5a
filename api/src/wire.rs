//! Request and response bodies of the v1 API.

use serde::{Deserialize, Serialize};

/// `POST /v1/certs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRequest {
    /// The user's OpenSSH public key line.
    pub public_key: String,
    /// Also issue the certificate of this elevation (the caller's own, approved or active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elevation_id: Option<String>,
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

/// An elevation's certificate: only the elevation's principals, key ID `USER serial=N elev=ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElevatedCert {
    pub elevation_id: String,
    /// The configured elevation's name, for the file name `PATH-elev-NAME-cert.pub`.
    pub elevation: String,
    pub cert: IssuedCert,
}

/// Answer of `POST /v1/certs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertResponse {
    pub base: IssuedCert,
    /// The elevated certificate, on the same key, when `elevation_id` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elevation: Option<ElevatedCert>,
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
    /// Make the IdP authenticate the user again (`max_age=0`), for a recent `auth_time`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reauth: bool,
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

/// `POST /v1/auth/token`: an ID token of a `[[trusted_issuers]]` issuer, for automation.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchangeRequest {
    pub id_token: String,
}

impl std::fmt::Debug for TokenExchangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchangeRequest")
            .field("id_token", &"<redacted>")
            .finish()
    }
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

/// Answer of `POST /v1/auth/device/start` (RFC 8628 through the CA).
///
/// The IdP's `device_code` never leaves the CA; the CLI instead holds `poll_token`, a fresh
/// 256-bit secret of the CA's whose SHA-256 names the pending device login. Whoever has the
/// user code but not the poll token can complete the IdP side but never gets the session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStartResponse {
    /// Where the user enters `user_code` (at the IdP).
    pub verification_uri: String,
    /// The same with the code filled in, when the IdP offers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// Seconds to wait between two polls (5 when the IdP gave none).
    pub interval: u64,
    /// Unix seconds after which the device code is dead.
    pub expires_at: i64,
    /// Secret for `/v1/auth/device/poll`; only its SHA-256 is kept by the CA.
    pub poll_token: String,
}

impl std::fmt::Debug for DeviceStartResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStartResponse")
            .field("verification_uri", &self.verification_uri)
            .field("verification_uri_complete", &self.verification_uri_complete)
            .field("user_code", &self.user_code)
            .field("interval", &self.interval)
            .field("expires_at", &self.expires_at)
            .field("poll_token", &"<redacted>")
            .finish()
    }
}

/// `POST /v1/auth/device/poll`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePollRequest {
    pub poll_token: String,
}

impl std::fmt::Debug for DevicePollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePollRequest")
            .field("poll_token", &"<redacted>")
            .finish()
    }
}

/// Answer of `POST /v1/auth/device/poll` when no refusal ended the login. Each call polls the
/// IdP once; the client paces itself by `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DevicePollResponse {
    /// The user has not finished at the IdP yet.
    Pending,
    /// Poll less often: wait `interval` seconds (already increased) between polls.
    SlowDown { interval: u64 },
    /// Signed in: the session, exactly as the browser flow returns it.
    Complete(SessionResponse),
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

/// `POST /v1/elevations`: ask for an elevation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElevationRequest {
    /// The configured elevation's name (`[[elevations]] name`).
    pub elevation: String,
    /// Why; 1–200 printable characters. Shown to approvers, audited, never in a certificate.
    pub reason: String,
    /// How long the grant lasts once first used, in seconds; at most the elevation's
    /// `max_duration`. `None`: the maximum.
    #[serde(default)]
    pub duration_secs: Option<u64>,
}

/// Life-cycle state of an elevation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElevationState {
    /// Waiting for approvals.
    Pending,
    /// Approved, not used yet; lapses after `use_within`.
    Approved,
    /// Its first certificate was issued; the clock runs.
    Active,
    /// The grant's time is over.
    Expired,
    /// An eligible approver said no.
    Denied,
    /// The requester withdrew it.
    Cancelled,
    /// Ended early by an approver or an admin.
    Revoked,
    /// Approved but not used within `use_within`.
    Lapsed,
    /// Still pending after `pending_timeout`.
    TimedOut,
}

impl ElevationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
            Self::Revoked => "revoked",
            Self::Lapsed => "lapsed",
            Self::TimedOut => "timed_out",
        }
    }

    /// Whether no transition can leave this state.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Approved | Self::Active)
    }
}

impl std::str::FromStr for ElevationState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::Pending,
            Self::Approved,
            Self::Active,
            Self::Expired,
            Self::Denied,
            Self::Cancelled,
            Self::Revoked,
            Self::Lapsed,
            Self::TimedOut,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown elevation state {s:?}"))
    }
}

/// One decision on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    pub approver: String,
    /// `approve` or `deny`.
    pub decision: String,
    pub comment: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

/// An elevation request as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElevationView {
    /// Short random identifier (`[a-z0-9]{12}`), used in key IDs (`elev=ID`).
    pub id: String,
    pub requester: String,
    pub elevation: String,
    pub principals: Vec<String>,
    pub reason: String,
    pub duration_secs: u64,
    pub state: ElevationState,
    /// Unix seconds.
    pub created_at: i64,
    /// When it was approved (by policy or the last needed approver).
    pub approved_at: Option<i64>,
    /// `auto` when policy approved it.
    pub approved_by: Vec<String>,
    /// Approvals still needed while pending.
    pub approvals_needed: u32,
    /// First certificate: the grant's clock starts here.
    pub started_at: Option<i64>,
    /// started_at + duration, once active.
    pub ends_at: Option<i64>,
    /// Deadline of the current state: pending → times out, approved → lapses, active → ends.
    pub deadline: Option<i64>,
    pub decisions: Vec<ApprovalView>,
    /// The requester's other elevations of the last 30 days (approvers' view only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<ElevationSummary>,
}

/// A past elevation, in an approver's view of a requester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElevationSummary {
    pub id: String,
    pub elevation: String,
    pub state: ElevationState,
    pub created_at: i64,
    pub reason: String,
}

/// Answer of `GET /v1/elevations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElevationList {
    pub elevations: Vec<ElevationView>,
    pub ca_time: i64,
}

/// `POST /v1/elevations/{id}/approve|deny|cancel|revoke`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Required for `deny`; optional otherwise. Same rules as a reason.
    #[serde(default)]
    pub comment: Option<String>,
}

/// SSHSIG namespace of host check-ins, signed with the host's sshd host key.
pub const CHECKIN_NAMESPACE: &str = "host-checkin@pedm-ssh";

/// `POST /v1/hosts/enroll`: a host registers its sshd host key once, with a one-time join
/// token from `pedm-ca hosts token`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// The host's name as it will appear in coverage reports (`[a-z0-9.-]{1,253}`).
    pub host_name: String,
    /// The sshd host public key (OpenSSH line) whose signatures count as this host's check-ins.
    pub host_key: String,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"<redacted>")
            .field("host_name", &self.host_name)
            .field("host_key", &self.host_key)
            .finish()
    }
}

/// Answer of `POST /v1/hosts/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub host_name: String,
    /// `SHA256:…` of the enrolled host key.
    pub host_key_fingerprint: String,
}

/// What a host reports after a refresh; signed with its enrolled host key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckinPayload {
    pub host_name: String,
    /// `SHA256:…` of the host key that signs this check-in.
    pub host_key_fingerprint: String,
    /// The trust bundle version installed now.
    pub bundle_version: u64,
    /// The KRL version installed now, if any.
    pub krl_version: Option<u64>,
    /// Unix seconds on the host when it signed; the CA refuses stale or future check-ins.
    pub time: i64,
}

/// `POST /v1/hosts/checkin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckin {
    /// Base64 (standard) of the JSON [`CheckinPayload`].
    pub payload: String,
    /// Armored SSHSIG over the decoded payload, namespace [`CHECKIN_NAMESPACE`].
    pub signature: String,
}

/// Answer of `POST /v1/hosts/checkin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinResponse {
    /// Whether the check-in counts toward coverage (signed by an enrolled host key).
    pub counted: bool,
    pub ca_time: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn device_poll_answers_have_a_status_tag() {
        let v = |r: &DevicePollResponse| serde_json::to_value(r).unwrap();
        assert_eq!(
            v(&DevicePollResponse::Pending),
            json!({"status": "pending"})
        );
        assert_eq!(
            v(&DevicePollResponse::SlowDown { interval: 10 }),
            json!({"status": "slow_down", "interval": 10})
        );
        let session = SessionResponse {
            session_token: "t".into(),
            user: "alice".into(),
            roles: vec!["engineer".into()],
            principals: vec!["alice".into()],
            expires_at: 1,
        };
        let complete = DevicePollResponse::Complete(session);
        assert_eq!(
            v(&complete),
            json!({"status": "complete", "session_token": "t", "user": "alice",
                   "roles": ["engineer"], "principals": ["alice"], "expires_at": 1})
        );
        let back: DevicePollResponse = serde_json::from_value(v(&complete)).unwrap();
        assert_eq!(back, complete);
        assert!(serde_json::from_value::<DevicePollRequest>(
            json!({"poll_token": "p", "device_code": "x"})
        )
        .is_err());
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let e = EnrollRequest {
            token: "pedm-join-SECRET".into(),
            host_name: "h".into(),
            host_key: "k".into(),
        };
        let p = DevicePollRequest {
            poll_token: "SECRET".into(),
        };
        let d = DeviceStartResponse {
            verification_uri: "u".into(),
            verification_uri_complete: None,
            user_code: "c".into(),
            interval: 5,
            expires_at: 1,
            poll_token: "SECRET".into(),
        };
        for text in [format!("{e:?}"), format!("{p:?}"), format!("{d:?}")] {
            assert!(!text.contains("SECRET"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }
}
