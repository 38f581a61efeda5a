//! Persistence behind a trait: SQLite (embedded default) now, PostgreSQL later.
//!
//! Invariants every back-end keeps: each state change and its audit record commit in one
//! transaction; serials and the audit chain head are read inside the writing transaction,
//! never cached across transactions (another process may write to the same store); no
//! certificate is returned before its transaction is durable.

mod sqlite;

pub use sqlite::{now_ms, SqliteStore};

use crate::audit::{AuditEvent, AuditRecord, Checkpoint};
use crate::cert::CertError;
use pedm_api::KeyState;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the certificate could not be made: {0}")]
    Cert(#[from] CertError),
    #[error("{0}")]
    Other(String),
    /// The certificate was to be signed by a key that is no longer the active one (a
    /// rotation committed meanwhile); nothing was written. Reload the signer and retry.
    #[error("the active CA key changed (signer {signer}, active {active:?})")]
    KeyChanged {
        signer: String,
        active: Option<String>,
    },
    /// The row the operation needs does not exist; the message says which.
    #[error("{0}")]
    NotFound(String),
    /// A decision made inside a transaction (by policy) refused the change; nothing was
    /// written. The HTTP layer downcasts it to the policy's refusal.
    #[error("{0}")]
    Rejected(Rejection),
}

/// A refusal from a closure running inside a store transaction.
pub type Rejection = Box<dyn std::error::Error + Send + Sync>;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A CA signing key as stored; rows are never deleted, so old checkpoints stay verifiable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaKeyRow {
    pub fingerprint: String,
    pub public_key: String,
    pub state: KeyState,
    /// Relative to the data directory.
    pub key_file: String,
    pub created_at: i64,
    /// The first bundle version that published the key, and when.
    pub published_version: Option<u64>,
    pub published_at: Option<i64>,
}

/// The trust root's public half (the private key may live offline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRootRow {
    pub fingerprint: String,
    pub public_key: String,
    pub key_file: String,
}

/// A signed bundle as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRow {
    pub version: u64,
    pub payload: Vec<u8>,
    pub signature: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// What kind of certificate, for the record and the audit action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    Base,
    Elevated,
    BreakGlass,
}

impl CertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::Base => "base",
            CertKind::Elevated => "elevated",
            CertKind::BreakGlass => "break-glass",
        }
    }
}

/// Facts about a certificate known before its serial is allocated.
#[derive(Debug, Clone)]
pub struct IssueIntent {
    pub kind: CertKind,
    /// Username, or the operator for break-glass.
    pub actor: String,
    pub user: String,
    pub principals: Vec<String>,
    pub public_key_fingerprint: String,
    pub ca_key: String,
    /// SHA-256 hex of the session token, for base certificates.
    pub session: Option<String>,
    /// The elevation an elevated certificate carries.
    pub elevation_id: Option<String>,
    /// Extra audit details (for example the break-glass reason).
    pub details: serde_json::Value,
}

/// What the signer made for an allocated serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCert {
    pub certificate: String,
    pub key_id: String,
    pub valid_after: i64,
    pub valid_before: i64,
}

/// An issued certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedRow {
    pub serial: u64,
    pub key_id: String,
    pub certificate: String,
    pub valid_after: i64,
    pub valid_before: i64,
    pub audit_seq: u64,
}

/// A signed-in session; `id` is the SHA-256 of the token, the token itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub user: String,
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub principals: Vec<String>,
    pub auth_time: Option<i64>,
    pub method: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// A browser login between `start` and `finish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    pub state: String,
    pub secret_sha256: String,
    pub redirect_uri: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// The user asked to authenticate again (`max_age=0`).
    pub reauth: bool,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Signs the bundle for an allocated version over the current key set.
pub type BundleMaker<'a> =
    dyn FnMut(u64, &[CaKeyRow]) -> std::result::Result<BundleRow, String> + 'a;

/// An elevation request as stored. `state` is what was last written; time-based transitions
/// (timed out, lapsed, expired) are computed by the policy and written by the sweeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElevationRow {
    pub id: String,
    pub requester: String,
    /// SHA-256 hex of the session that asked.
    pub session_id: String,
    pub elevation: String,
    /// The principals the elevation granted when it was requested.
    pub principals: Vec<String>,
    pub reason: String,
    pub duration_secs: u64,
    pub state: pedm_api::ElevationState,
    pub created_at: i64,
    pub approved_at: Option<i64>,
    pub started_at: Option<i64>,
    /// When a final state was written.
    pub ended_at: Option<i64>,
}

impl ElevationRow {
    /// The times the elevation policy decides on.
    pub fn times(&self) -> crate::elevation::Times {
        crate::elevation::Times {
            created_at: self.created_at,
            approved_at: self.approved_at,
            started_at: self.started_at,
            duration_secs: self.duration_secs,
        }
    }
}

/// One decision on a request: `auto`, `approve`, `deny`, `cancel`, `revoke`, or a time-based
/// `timed_out`, `lapsed`, `expired` written by the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRow {
    pub elevation_id: String,
    pub actor: String,
    pub decision: String,
    pub comment: Option<String>,
    pub at: i64,
}

/// A state change of an elevation, with its audit record, written in one transaction.
#[derive(Debug, Clone)]
pub struct ElevationChange {
    pub state: pedm_api::ElevationState,
    pub approved_at: Option<i64>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub decision: Option<DecisionRow>,
    pub event: AuditEvent,
}

/// What an elevated certificate needs, decided inside the issuing transaction.
#[derive(Debug, Clone)]
pub struct ElevatedPlan {
    pub intent: IssueIntent,
    /// The first use: approved → active, the grant's clock starts.
    pub activation: Option<ElevationChange>,
    /// Unix seconds; the certificate's `valid_before` is at most this.
    pub ends_at: i64,
}

/// Makes a certificate for an allocated serial.
pub type CertSign<'a> = dyn FnMut(u64) -> std::result::Result<SignedCert, CertError> + 'a;
/// Makes the elevated certificate for an allocated serial, bounded by the plan's end.
pub type ElevatedSign<'a> =
    dyn FnMut(u64, &ElevatedPlan) -> std::result::Result<SignedCert, CertError> + 'a;
/// Decides, inside the transaction, what an elevated issuance may do.
pub type ElevationPlanner<'a> =
    dyn FnMut(&ElevationRow, &[DecisionRow]) -> std::result::Result<ElevatedPlan, Rejection> + 'a;
/// Decides, inside the transaction, how a request changes (or refuses).
pub type ElevationDecider<'a> = dyn FnMut(&ElevationRow, &[DecisionRow]) -> std::result::Result<ElevationChange, Rejection>
    + 'a;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    /// One certificate, by serial (decimal text).
    Serial,
    /// Every certificate of a user, and their sign-ins until lifted.
    User,
    /// A user public key, by `SHA256:` fingerprint: every certificate on it, and new ones.
    PublicKey,
    /// A CA key, by `SHA256:` fingerprint: everything it signed.
    CaKey,
}

impl RevocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serial => "serial",
            Self::User => "user",
            Self::PublicKey => "public_key",
            Self::CaKey => "ca_key",
        }
    }
}

impl std::str::FromStr for RevocationKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "serial" => Ok(Self::Serial),
            "user" => Ok(Self::User),
            "public_key" => Ok(Self::PublicKey),
            "ca_key" => Ok(Self::CaKey),
            other => Err(format!("unknown revocation kind {other:?}")),
        }
    }
}

/// An active revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRow {
    pub kind: RevocationKind,
    pub value: String,
    pub reason: String,
    pub actor: String,
    pub created_at: i64,
}

/// What a revocation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// False when the same revocation was already in force (nothing changed).
    pub new: bool,
    pub sessions_ended: u64,
    pub elevations_ended: u64,
}

/// A published KRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrlRow {
    pub version: u64,
    /// The signed JSON payload (`pedm_api::krl::KrlPayload`).
    pub payload: Vec<u8>,
    pub signature: String,
    /// SHA-256 hex of what the KRL revokes, to tell when a new one is needed.
    pub content_sha256: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Signs the KRL for an allocated version.
pub type KrlMaker<'a> = dyn FnMut(u64) -> std::result::Result<KrlRow, String> + 'a;

/// An enrolled host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub host_key_fp: String,
    pub host_name: String,
    pub host_key: String,
    pub enrolled_at: i64,
}

/// A host's report of what it installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckinRow {
    pub host_key_fp: String,
    pub bundle_version: u64,
    pub krl_version: Option<u64>,
    pub at: i64,
}

/// How an enrollment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollOutcome {
    Enrolled,
    UnknownToken,
    TokenUsed,
    TokenExpired,
}

/// Everything the CA persists.
pub trait Store: Send + Sync {
    /// Sets up a new CA: trust root, first active key, the `ca.init` record.
    fn init_ca(
        &self,
        root: &TrustRootRow,
        key: &CaKeyRow,
        event: &AuditEvent,
    ) -> Result<AuditRecord>;
    /// The current trust root (the newest; earlier ones are kept as history).
    fn trust_root(&self) -> Result<TrustRootRow>;
    /// Makes `root` the trust root (after a compromise of the old one).
    fn replace_trust_root(&self, root: &TrustRootRow, event: &AuditEvent) -> Result<()>;
    /// Every CA key ever used.
    fn ca_keys(&self) -> Result<Vec<CaKeyRow>>;
    fn latest_bundle(&self) -> Result<Option<BundleRow>>;
    /// Allocates the next bundle version and stores what `make` signs for it, with audit.
    fn publish_bundle(&self, actor: &str, make: &mut BundleMaker<'_>) -> Result<BundleRow>;
    /// Allocates a serial, has `sign` make the certificate for it, stores it with its audit
    /// record and commits; only then returns.
    fn issue_certificate(&self, intent: &IssueIntent, sign: &mut CertSign<'_>)
        -> Result<IssuedRow>;
    /// Issues the base certificate and an elevation's certificate in one transaction. The
    /// elevation is read and `plan` decides inside it, so a revoke, expiry or lapse racing
    /// the issue cannot leak a certificate; a first use activates the elevation.
    fn issue_with_elevation(
        &self,
        base: &IssueIntent,
        sign_base: &mut CertSign<'_>,
        elevation_id: &str,
        plan: &mut ElevationPlanner<'_>,
        sign_elevated: &mut ElevatedSign<'_>,
    ) -> Result<(IssuedRow, IssuedRow)>;
    /// Stores a new request, with the policy's automatic approval if it gave one.
    fn create_elevation(
        &self,
        row: &ElevationRow,
        decision: Option<&DecisionRow>,
        events: &[AuditEvent],
    ) -> Result<()>;
    fn elevation(&self, id: &str) -> Result<Option<(ElevationRow, Vec<DecisionRow>)>>;
    /// A user's requests created at or after `since`, newest first.
    fn elevations_of(&self, user: &str, since: i64) -> Result<Vec<ElevationRow>>;
    /// Every request whose stored state is pending, approved or active.
    fn open_elevations(&self) -> Result<Vec<ElevationRow>>;
    /// Reads the request and its decisions, lets `decide` choose the change, writes it with
    /// its audit record; all in one transaction. `Ok(None)`: no such request.
    fn change_elevation(
        &self,
        id: &str,
        decide: &mut ElevationDecider<'_>,
    ) -> Result<Option<ElevationRow>>;
    /// Deletes a staged key that no bundle ever named; refuses every other key.
    fn delete_unpublished_key(&self, fingerprint: &str, event: &AuditEvent) -> Result<()>;
    /// Adds a CA key (staged as `next`).
    fn add_ca_key(&self, key: &CaKeyRow, event: &AuditEvent) -> Result<()>;
    /// Moves the active key to `retired` and `fingerprint` (which must be `next`) to
    /// `active`, in one transaction: exactly one key is active at every moment.
    fn activate_key(&self, fingerprint: &str, event: &AuditEvent) -> Result<()>;
    /// Changes a key's state if it is in one of `from`; false otherwise (nothing written).
    fn set_key_state(
        &self,
        fingerprint: &str,
        from: &[KeyState],
        to: KeyState,
        event: &AuditEvent,
    ) -> Result<bool>;
    /// The latest `valid_before` of any certificate the key signed.
    fn last_valid_before(&self, ca_key: &str) -> Result<Option<i64>>;
    /// Records a revocation with its audit record; a user revocation also ends the user's
    /// sessions and open elevations in the same transaction.
    fn revoke(&self, r: &RevocationRow, now: i64, event: &AuditEvent) -> Result<RevokeOutcome>;
    /// Lifts an active revocation; false if there was none.
    fn lift_revocation(
        &self,
        kind: RevocationKind,
        value: &str,
        now: i64,
        event: &AuditEvent,
    ) -> Result<bool>;
    /// Active revocations.
    fn revocations(&self) -> Result<Vec<RevocationRow>>;
    fn is_revoked(&self, kind: RevocationKind, value: &str) -> Result<bool>;
    /// (CA key, serial) of every unexpired certificate that a revocation covers.
    fn revoked_serials(&self, now: i64) -> Result<Vec<(String, u64)>>;
    fn certificate_exists(&self, serial: u64) -> Result<bool>;
    fn latest_krl(&self) -> Result<Option<KrlRow>>;
    /// Allocates the next KRL version and stores what `make` signs for it, with audit.
    fn publish_krl(&self, make: &mut KrlMaker<'_>) -> Result<KrlRow>;
    fn create_join_token(
        &self,
        token_sha256: &str,
        now: i64,
        expires_at: i64,
        event: &AuditEvent,
    ) -> Result<()>;
    /// Consumes a join token and enrolls the host key, in one transaction.
    fn enroll_host(
        &self,
        token_sha256: &str,
        host: &HostRow,
        now: i64,
        event: &AuditEvent,
    ) -> Result<EnrollOutcome>;
    fn host(&self, host_key_fp: &str) -> Result<Option<HostRow>>;
    fn record_checkin(&self, checkin: &CheckinRow, event: &AuditEvent) -> Result<()>;
    /// Every enrolled host with its newest check-in.
    fn latest_checkins(&self) -> Result<Vec<(HostRow, Option<CheckinRow>)>>;
    /// Every request with its decisions created at or after `since` (reports).
    fn elevations_since(&self, since: i64) -> Result<Vec<(ElevationRow, Vec<DecisionRow>)>>;
    /// Records an event that changes nothing else (a refusal, say).
    fn record(&self, event: &AuditEvent) -> Result<AuditRecord>;
    fn audit_head(&self) -> Result<Option<AuditRecord>>;
    fn audit_records(&self, since_seq: u64, limit: u64) -> Result<Vec<AuditRecord>>;
    fn add_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()>;
    fn checkpoints(&self) -> Result<Vec<Checkpoint>>;
    fn create_session(&self, session: &SessionRow, event: &AuditEvent) -> Result<()>;
    fn session(&self, id: &str) -> Result<Option<SessionRow>>;
    /// Marks the session revoked; false if it did not exist or was already revoked.
    fn revoke_session(&self, id: &str, now: i64, event: &AuditEvent) -> Result<bool>;
    fn create_pending_login(&self, login: &PendingLogin, event: &AuditEvent) -> Result<()>;
    /// Removes and returns the pending login with this state (single use).
    fn take_pending_login(&self, state: &str, event: &AuditEvent) -> Result<Option<PendingLogin>>;
}
