//! The CA as one value: the store, the active signing key, the trust root (while it is
//! online) and the checkpoint log. Commands and HTTP handlers go through it, so every
//! issuance follows the same path: policy decision → serial → signature → durable record.

use crate::audit::{verify_chain, AuditEvent, ChainError, ChainReport, Checkpoint};
use crate::cert::{parse_user_key, CertSpec, KeyRefusal};
use crate::names::{ElevationId, KeyId, Principal, Username};
use crate::signer::{
    create_key_file, load_key_file, sshsig_armored, CaSigner, KeyFileError, Passphrase,
};
use crate::store::{
    BundleRow, CaKeyRow, CertKind, ElevatedPlan, IssueIntent, IssuedRow, RevocationKind,
    RevocationRow, SignedCert, SqliteStore, Store, StoreError, TrustRootRow,
};
use pedm_api::{BundleKey, KeyState, SignedBundle, TrustBundle, BUNDLE_NAMESPACE};
use ssh_key::{HashAlg, PublicKey};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// File names inside the data directory.
pub const DB_FILE: &str = "pedm.db";
pub const KEYS_DIR: &str = "keys";
pub const ROOT_KEY_FILE: &str = "keys/trust-root.key";
pub const CHECKPOINT_FILE: &str = "audit-checkpoints.jsonl";

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Key(#[from] KeyRefusal),
    #[error("the audit log does not verify")]
    Chain(#[from] ChainError),
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn openssh_line(key: &PublicKey) -> String {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh()
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub trust_root: String,
    pub ca_key: String,
    /// The CA public key line, for `TrustedUserCAKeys`.
    pub ca_public_key: String,
}

/// Creates a new CA in `data_dir`: trust root, first CA key, database, first bundle, first
/// checkpoint. Refuses to overwrite anything.
pub fn init(
    data_dir: &Path,
    passphrase: Option<&Passphrase>,
    bundle_lifetime_secs: i64,
) -> Result<InitReport, CaError> {
    for existing in [DB_FILE, KEYS_DIR, CHECKPOINT_FILE] {
        let p = data_dir.join(existing);
        if p.exists() {
            return Err(CaError::Refused(format!(
                "{} already exists; refusing to overwrite anything",
                p.display()
            )));
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir.join(KEYS_DIR))
        .map_err(|e| {
            CaError::Io(format!(
                "cannot create {}: {e}",
                data_dir.join(KEYS_DIR).display()
            ))
        })?;
    let root = create_key_file(
        &data_dir.join(ROOT_KEY_FILE),
        passphrase,
        "pedm-ssh trust root",
    )?;
    let ca_file = "keys/ca-1.key";
    let ca = create_key_file(&data_dir.join(ca_file), passphrase, "pedm-ssh CA key 1")?;
    let store = SqliteStore::create(&data_dir.join(DB_FILE))?;
    let root_row = TrustRootRow {
        fingerprint: root.fingerprint(),
        public_key: openssh_line(root.public_key()),
        key_file: ROOT_KEY_FILE.into(),
    };
    let key_row = CaKeyRow {
        fingerprint: ca.fingerprint(),
        public_key: openssh_line(ca.public_key()),
        state: KeyState::Active,
        key_file: ca_file.into(),
        created_at: now_secs(),
        published_version: None,
        published_at: None,
    };
    store.init_ca(
        &root_row,
        &key_row,
        &AuditEvent::new(
            "system",
            "ca.init",
            key_row.fingerprint.clone(),
            serde_json::json!({"trust_root": root_row.fingerprint, "ca_key": key_row.fingerprint, "encrypted": passphrase.is_some()}),
        ),
    )?;
    let ca: Arc<dyn CaSigner> = Arc::new(ca);
    let authority = Authority {
        store: Arc::new(store),
        signer: RwLock::new(ca),
        passphrase: passphrase.cloned(),
        root: Some(Arc::new(root)),
        data_dir: data_dir.to_path_buf(),
        checkpoint_every: 1000,
        since_checkpoint: AtomicU64::new(0),
    };
    authority.publish_bundle("system", bundle_lifetime_secs)?;
    authority.checkpoint()?;
    Ok(InitReport {
        trust_root: root_row.fingerprint,
        ca_key: key_row.fingerprint,
        ca_public_key: key_row.public_key,
    })
}

/// A certificate the CA issued, with what the client needs to know.
#[derive(Debug, Clone)]
pub struct Issued {
    pub row: IssuedRow,
    pub principals: Vec<String>,
}

/// The base certificate of an issuance that also carries an elevation.
pub struct BaseIssue<'a> {
    pub user: &'a Username,
    pub public_key: &'a PublicKey,
    pub principals: &'a [Principal],
    pub extensions: &'a BTreeSet<String>,
    pub window: (u64, u64),
    /// SHA-256 hex of the session token.
    pub session: &'a str,
    pub details: serde_json::Value,
}

/// What stands between a staged key and its activation.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationCheck {
    /// Checked-in hosts whose installed bundle names the key.
    pub covering: u64,
    pub checked_in: u64,
    /// Why activation would be refused; empty when it may go ahead.
    pub blockers: Vec<String>,
}

/// What `pedm-ca revoke` names.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    Serial(u64),
    User(Username),
    PublicKey(PublicKey),
}

fn check_reason(reason: &str) -> Result<String, CaError> {
    let r = reason.trim();
    if r.is_empty() || r.chars().count() > 200 || r.chars().any(char::is_control) {
        return Err(CaError::Refused(
            "--reason must be 1-200 printable characters".into(),
        ));
    }
    Ok(r.to_string())
}

/// Decides, on the stored request, what its elevated certificate may carry.
pub type GrantDecider<'a> = dyn FnMut(
        &crate::store::ElevationRow,
        &[crate::store::DecisionRow],
    ) -> Result<ElevatedGrant, crate::store::Rejection>
    + 'a;

/// What the elevation policy allows an elevated certificate, decided in the transaction.
pub struct ElevatedGrant {
    pub principals: Vec<Principal>,
    /// Unix seconds: the grant's end.
    pub ends_at: i64,
    /// Set on first use (approved → active).
    pub activation: Option<crate::store::ElevationChange>,
}

fn sign_cert(
    signer: &dyn CaSigner,
    public_key: &PublicKey,
    serial: u64,
    key_id: KeyId,
    principals: &[Principal],
    window: (u64, u64),
    extensions: &BTreeSet<String>,
) -> Result<SignedCert, crate::cert::CertError> {
    let spec = CertSpec::new(
        public_key.clone(),
        serial,
        key_id.clone(),
        principals.to_vec(),
        window.0,
        window.1,
        extensions.clone(),
    )?;
    let cert = spec.sign(signer)?;
    let certificate = cert
        .to_openssh()
        .map_err(|e| crate::cert::CertError::Signing(e.to_string()))?;
    Ok(SignedCert {
        certificate,
        key_id: key_id.to_string(),
        valid_after: window.0 as i64,
        valid_before: window.1 as i64,
    })
}

/// A running CA.
pub struct Authority {
    pub store: Arc<dyn Store>,
    /// The active key, swapped when a rotation commits (here or in another process).
    signer: RwLock<Arc<dyn CaSigner>>,
    /// Kept to load the next key after a rotation; zeroized on drop.
    passphrase: Option<Passphrase>,
    root: Option<Arc<dyn CaSigner>>,
    data_dir: PathBuf,
    checkpoint_every: u64,
    since_checkpoint: AtomicU64,
}

impl Authority {
    /// Opens the CA in `data_dir` with its active key. The trust root is loaded when its key
    /// file is present (root online); otherwise bundles cannot be re-signed here.
    pub fn open(
        data_dir: &Path,
        passphrase: Option<&Passphrase>,
        checkpoint_every: u64,
    ) -> Result<Self, CaError> {
        let store = SqliteStore::open(&data_dir.join(DB_FILE))?;
        let keys = store.ca_keys()?;
        let active = keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .ok_or_else(|| CaError::Refused("no active CA key in the store".into()))?;
        let signer = load_key_file(&data_dir.join(&active.key_file), passphrase)?;
        if signer.fingerprint() != active.fingerprint {
            return Err(CaError::Refused(format!(
                "{} holds {}, but the store says the active key is {}",
                active.key_file,
                signer.fingerprint(),
                active.fingerprint
            )));
        }
        let root_row = store.trust_root()?;
        let root_path = data_dir.join(&root_row.key_file);
        let root: Option<Arc<dyn CaSigner>> = if root_path.exists() {
            let r = load_key_file(&root_path, passphrase)?;
            if r.fingerprint() != root_row.fingerprint {
                return Err(CaError::Refused(format!(
                    "{} holds {}, not the trust root {}",
                    root_row.key_file,
                    r.fingerprint(),
                    root_row.fingerprint
                )));
            }
            Some(Arc::new(r))
        } else {
            None
        };
        Ok(Self {
            store: Arc::new(store),
            signer: RwLock::new(Arc::new(signer)),
            passphrase: passphrase.cloned(),
            root,
            data_dir: data_dir.to_path_buf(),
            checkpoint_every: checkpoint_every.max(1),
            since_checkpoint: AtomicU64::new(0),
        })
    }

    pub fn active_key(&self) -> String {
        self.current_signer().fingerprint()
    }

    /// The signer now. Callers hold the `Arc` for one operation; the store refuses to record
    /// a certificate whose signer is no longer the active key.
    pub fn current_signer(&self) -> Arc<dyn CaSigner> {
        match self.signer.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads the active key from the store if it is not the one in memory (a rotation by
    /// `pedm-ca keys activate` in another process). Returns whether it changed.
    pub fn reload_signer(&self) -> Result<bool, CaError> {
        let keys = self.store.ca_keys()?;
        let active = keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .ok_or_else(|| CaError::Refused("no active CA key in the store".into()))?;
        if active.fingerprint == self.active_key() {
            return Ok(false);
        }
        let signer = load_key_file(
            &self.data_dir.join(&active.key_file),
            self.passphrase.as_ref(),
        )?;
        if signer.fingerprint() != active.fingerprint {
            return Err(CaError::Refused(format!(
                "{} holds {}, but the store says the active key is {}",
                active.key_file,
                signer.fingerprint(),
                active.fingerprint
            )));
        }
        let signer: Arc<dyn CaSigner> = Arc::new(signer);
        match self.signer.write() {
            Ok(mut g) => *g = signer,
            Err(poisoned) => *poisoned.into_inner() = signer,
        }
        tracing::info!(active_key = %active.fingerprint, "the active CA key changed; now signing with it");
        Ok(true)
    }

    /// Signs and stores the next bundle version with the current key set.
    pub fn publish_bundle(&self, actor: &str, lifetime_secs: i64) -> Result<BundleRow, CaError> {
        let root = self.root.clone().ok_or_else(|| {
            CaError::Refused(
                "the trust root is offline; a new bundle must be signed where it lives".into(),
            )
        })?;
        // A root replaced by another process must never sign again.
        let current = self.store.trust_root()?;
        if root.fingerprint() != current.fingerprint {
            return Err(CaError::Refused(format!(
                "the trust root was replaced ({} is current, this process holds {}); restart pedm-ca serve",
                current.fingerprint,
                root.fingerprint()
            )));
        }
        let row = self.store.publish_bundle(actor, &mut |version, keys| {
            let now = now_secs();
            let bundle = TrustBundle {
                version,
                issued_at: now,
                expires_at: now + lifetime_secs,
                keys: keys
                    .iter()
                    .map(|k| BundleKey {
                        fingerprint: k.fingerprint.clone(),
                        public_key: k.public_key.clone(),
                        state: k.state,
                    })
                    .collect(),
            };
            bundle.check_structure().map_err(|e| e.to_string())?;
            let payload = bundle.to_payload();
            let signature = sshsig_armored(root.as_ref(), BUNDLE_NAMESPACE, &payload)
                .map_err(|e| e.to_string())?;
            Ok(BundleRow {
                version,
                payload,
                signature,
                issued_at: bundle.issued_at,
                expires_at: bundle.expires_at,
            })
        })?;
        self.after_write()?;
        Ok(row)
    }

    /// Re-signs the bundle when none exists, the key set changed, or less than half of its
    /// lifetime is left. Returns the current bundle.
    pub fn ensure_bundle(&self, lifetime_secs: i64) -> Result<BundleRow, CaError> {
        let keys = self.store.ca_keys()?;
        if let Some(b) = self.store.latest_bundle()? {
            let content: Option<TrustBundle> = serde_json::from_slice(&b.payload).ok();
            let same_keys = content.is_some_and(|c| {
                let published: BTreeMap<_, _> = c
                    .keys
                    .iter()
                    .map(|k| (k.fingerprint.clone(), k.state))
                    .collect();
                let stored: BTreeMap<_, _> = keys
                    .iter()
                    .filter(|k| k.state != KeyState::Gone)
                    .map(|k| (k.fingerprint.clone(), k.state))
                    .collect();
                published == stored
            });
            let fresh = b.expires_at - now_secs() > lifetime_secs / 2;
            if same_keys && fresh {
                return Ok(b);
            }
            if self.root.is_none() {
                // Keep serving what the root signed; hosts will say loudly when it expires.
                return Ok(b);
            }
        }
        self.publish_bundle("system", lifetime_secs)
    }

    /// The current bundle in wire form.
    pub fn signed_bundle(&self) -> Result<Option<(u64, SignedBundle)>, CaError> {
        Ok(self
            .store
            .latest_bundle()?
            .map(|b| (b.version, SignedBundle::from_parts(&b.payload, b.signature))))
    }

    /// `TrustedUserCAKeys` text of the current bundle.
    pub fn trusted_keys_text(&self) -> Result<String, CaError> {
        let b = self
            .store
            .latest_bundle()?
            .ok_or_else(|| CaError::Refused("no bundle published yet".into()))?;
        let bundle: TrustBundle = serde_json::from_slice(&b.payload)
            .map_err(|e| CaError::Refused(format!("stored bundle unreadable: {e}")))?;
        Ok(bundle.trusted_user_ca_keys())
    }

    /// Issues one certificate: serial allocated, signed and recorded in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        kind: CertKind,
        actor: &str,
        user: Option<&Username>,
        public_key: &PublicKey,
        principals: &[Principal],
        extensions: &BTreeSet<String>,
        window: (u64, u64),
        session: Option<String>,
        details: serde_json::Value,
    ) -> Result<Issued, CaError> {
        self.with_current_key(|| {
            self.issue_once(
                kind,
                actor,
                user,
                public_key,
                principals,
                extensions,
                window,
                session.clone(),
                details.clone(),
            )
        })
    }

    /// Runs `op`; when it fails because a rotation committed since the signer was loaded,
    /// loads the new active key and runs it once more.
    fn with_current_key<T>(
        &self,
        mut op: impl FnMut() -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        match op() {
            Err(CaError::Store(StoreError::KeyChanged { .. })) => {
                self.reload_signer()?;
                op()
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_once(
        &self,
        kind: CertKind,
        actor: &str,
        user: Option<&Username>,
        public_key: &PublicKey,
        principals: &[Principal],
        extensions: &BTreeSet<String>,
        window: (u64, u64),
        session: Option<String>,
        details: serde_json::Value,
    ) -> Result<Issued, CaError> {
        let signer = self.current_signer();
        let mut intent = self.intent(kind, actor, user, public_key, principals, session, details);
        intent.ca_key = signer.fingerprint();
        let row = self.store.issue_certificate(&intent, &mut |serial| {
            let key_id = match user {
                Some(u) if kind == CertKind::Base => KeyId::User {
                    user: u.clone(),
                    serial,
                },
                _ => KeyId::BreakGlass { serial },
            };
            sign_cert(
                signer.as_ref(),
                public_key,
                serial,
                key_id,
                principals,
                window,
                extensions,
            )
        })?;
        self.after_write()?;
        Ok(Issued {
            row,
            principals: intent.principals,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn intent(
        &self,
        kind: CertKind,
        actor: &str,
        user: Option<&Username>,
        public_key: &PublicKey,
        principals: &[Principal],
        session: Option<String>,
        details: serde_json::Value,
    ) -> IssueIntent {
        IssueIntent {
            kind,
            actor: actor.to_string(),
            user: user
                .map(|u| u.to_string())
                .unwrap_or_else(|| "break-glass".into()),
            principals: principals.iter().map(|p| p.to_string()).collect(),
            public_key_fingerprint: fingerprint(public_key),
            ca_key: self.active_key(),
            session,
            elevation_id: None,
            details,
        }
    }

    /// Issues the base certificate and the certificate of an elevation on the same key, in
    /// one transaction. `decide` runs inside it on the stored request and returns what the
    /// elevated certificate may carry, or refuses; the elevated certificate's
    /// `valid_before` is at most `min(base window end, grant end)`.
    pub fn issue_with_elevation(
        &self,
        base: &BaseIssue<'_>,
        elevation: &ElevationId,
        decide: &mut GrantDecider<'_>,
    ) -> Result<(Issued, Issued), CaError> {
        self.with_current_key(|| self.issue_with_elevation_once(base, elevation, decide))
    }

    fn issue_with_elevation_once(
        &self,
        base: &BaseIssue<'_>,
        elevation: &ElevationId,
        decide: &mut GrantDecider<'_>,
    ) -> Result<(Issued, Issued), CaError> {
        let signer = self.current_signer();
        let mut base_intent = self.intent(
            CertKind::Base,
            base.user.as_str(),
            Some(base.user),
            base.public_key,
            base.principals,
            Some(base.session.to_string()),
            base.details.clone(),
        );
        base_intent.ca_key = signer.fingerprint();
        let mut plan_for = |row: &crate::store::ElevationRow,
                            decisions: &[crate::store::DecisionRow]|
         -> Result<ElevatedPlan, crate::store::Rejection> {
            let grant = decide(row, decisions)?;
            let mut intent = self.intent(
                CertKind::Elevated,
                base.user.as_str(),
                Some(base.user),
                base.public_key,
                &grant.principals,
                Some(base.session.to_string()),
                serde_json::json!({ "elevation": row.elevation, "grant_ends_at": grant.ends_at }),
            );
            intent.elevation_id = Some(row.id.clone());
            intent.ca_key = signer.fingerprint();
            Ok(ElevatedPlan {
                intent,
                activation: grant.activation,
                ends_at: grant.ends_at,
            })
        };
        let mut sign_base = |serial| {
            let key_id = KeyId::User {
                user: base.user.clone(),
                serial,
            };
            sign_cert(
                signer.as_ref(),
                base.public_key,
                serial,
                key_id,
                base.principals,
                base.window,
                base.extensions,
            )
        };
        let principals_cell = std::cell::RefCell::new(Vec::<Principal>::new());
        let mut sign_elevated = |serial, plan: &ElevatedPlan| {
            let principals: Vec<Principal> = plan
                .intent
                .principals
                .iter()
                .filter_map(|p| Principal::new(p).ok())
                .collect();
            principals_cell.replace(principals.clone());
            let end = (plan.ends_at.max(0) as u64).min(base.window.1);
            let key_id = KeyId::Elevated {
                user: base.user.clone(),
                serial,
                elevation: elevation.clone(),
            };
            sign_cert(
                signer.as_ref(),
                base.public_key,
                serial,
                key_id,
                &principals,
                (base.window.0, end),
                base.extensions,
            )
        };
        let (base_row, elevated_row) = self.store.issue_with_elevation(
            &base_intent,
            &mut sign_base,
            elevation.as_str(),
            &mut plan_for,
            &mut sign_elevated,
        )?;
        self.after_write()?;
        Ok((
            Issued {
                row: base_row,
                principals: base_intent.principals,
            },
            Issued {
                row: elevated_row,
                principals: principals_cell
                    .into_inner()
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            },
        ))
    }

    /// Break-glass issuance for when the IdP is down: fixed key ID `break-glass serial=N`,
    /// audited with the operator and the reason.
    pub fn break_glass(
        &self,
        operator: &str,
        public_key_text: &str,
        principals: &[String],
        ttl_secs: u64,
        reason: &str,
        clock_skew_secs: u64,
    ) -> Result<Issued, CaError> {
        let key = parse_user_key(public_key_text)?;
        if principals.is_empty() {
            return Err(CaError::Refused("name at least one --principal".into()));
        }
        let principals = principals
            .iter()
            .map(|p| Principal::new(p).map_err(|e| CaError::Refused(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let reason = check_reason(reason)?;
        let now = now_secs() as u64;
        let window = crate::cert::validity(now, ttl_secs, clock_skew_secs, &[]);
        let ext: BTreeSet<String> = ["permit-pty".to_string()].into();
        self.issue(
            CertKind::BreakGlass,
            &format!("break-glass:{operator}"),
            None,
            &key,
            &principals,
            &ext,
            window,
            None,
            serde_json::json!({"reason": reason, "operator": operator}),
        )
    }

    /// Revokes a serial, a user or a user public key. Refuses a serial this CA never issued
    /// (a typo must not look like a revocation). Returns what changed; revoking what is
    /// already revoked changes nothing.
    pub fn revoke(
        &self,
        target: &RevokeTarget,
        actor: &str,
        reason: &str,
    ) -> Result<crate::store::RevokeOutcome, CaError> {
        let reason = check_reason(reason)?;
        let (kind, value) = match target {
            RevokeTarget::Serial(n) => {
                if !self.store.certificate_exists(*n)? {
                    return Err(CaError::Refused(format!(
                        "this CA issued no certificate with serial {n}; check the serial (ssh-keygen -L -f CERT)"
                    )));
                }
                (RevocationKind::Serial, n.to_string())
            }
            RevokeTarget::User(u) => (RevocationKind::User, u.to_string()),
            RevokeTarget::PublicKey(k) => (RevocationKind::PublicKey, fingerprint(k)),
        };
        let now = now_secs();
        let row = RevocationRow {
            kind,
            value: value.clone(),
            reason: reason.clone(),
            actor: actor.to_string(),
            created_at: now,
        };
        let event = AuditEvent::new(
            actor,
            &format!("revoke.{}", kind.as_str()),
            format!("{}={value}", kind.as_str()),
            serde_json::json!({ "reason": reason }),
        );
        let out = self.store.revoke(&row, now, &event)?;
        if out.new {
            self.after_write()?;
        }
        Ok(out)
    }

    /// Lifts a user's revocation so they may sign in again (their old certificates stay
    /// revoked until they expire: those serials remain in the KRL).
    pub fn unrevoke_user(
        &self,
        user: &Username,
        actor: &str,
        reason: &str,
    ) -> Result<bool, CaError> {
        let reason = check_reason(reason)?;
        let event = AuditEvent::new(
            actor,
            "unrevoke.user",
            format!("user={user}"),
            serde_json::json!({ "reason": reason }),
        );
        let lifted =
            self.store
                .lift_revocation(RevocationKind::User, user.as_str(), now_secs(), &event)?;
        if lifted {
            self.after_write()?;
        }
        Ok(lifted)
    }

    /// Publishes a new signed KRL when what is revoked changed or less than half of the
    /// current one's lifetime is left; returns the current one. Revoked serials leave the KRL
    /// once their certificates have expired.
    /// The stored KRL when it is fresh (more than half of its life left) and signed by the
    /// key this process signs with; otherwise [`Authority::ensure_krl`].
    pub fn current_krl(&self, lifetime_secs: i64) -> Result<crate::store::KrlRow, CaError> {
        if let Some(current) = self.store.latest_krl()? {
            let fresh = current.expires_at - now_secs() > lifetime_secs / 2;
            if fresh && self.krl_signed_by_active(&current) {
                return Ok(current);
            }
        }
        self.ensure_krl(lifetime_secs)
    }

    fn krl_signed_by_active(&self, krl: &crate::store::KrlRow) -> bool {
        serde_json::from_slice::<pedm_api::krl::KrlPayload>(&krl.payload)
            .is_ok_and(|p| p.ca_key == self.active_key())
    }

    pub fn ensure_krl(&self, lifetime_secs: i64) -> Result<crate::store::KrlRow, CaError> {
        // Sign only with the key that is active now (another process may have rotated).
        self.reload_signer()?;
        let now = now_secs();
        let keys = self.store.ca_keys()?;
        let mut by_ca: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (ca, serial) in self.store.revoked_serials(now)? {
            by_ca.entry(ca).or_default().push(serial);
        }
        let mut fingerprints: Vec<String> = self
            .store
            .revocations()?
            .into_iter()
            .filter(|r| matches!(r.kind, RevocationKind::PublicKey | RevocationKind::CaKey))
            .map(|r| r.value)
            .collect();
        fingerprints.sort();
        fingerprints.dedup();
        let content = serde_json::json!({ "serials": by_ca, "fingerprints": fingerprints });
        let content_sha256 = crate::login::sha256_hex(&content.to_string());
        if let Some(current) = self.store.latest_krl()? {
            let fresh = current.expires_at - now > lifetime_secs / 2;
            // Hosts accept a KRL only from the bundle's active key: after an activation the
            // KRL must be signed again by the new key at once.
            if fresh
                && self.krl_signed_by_active(&current)
                && current.content_sha256 == content_sha256
            {
                return Ok(current);
            }
        }
        let signer = self.current_signer();
        let row = self.store.publish_krl(&mut |version| {
            let mut krl = crate::krl::Krl::new(version, now.max(0) as u64, "pedm-ssh")
                .map_err(|e| e.to_string())?;
            for (ca, serials) in &by_ca {
                let key = keys
                    .iter()
                    .find(|k| &k.fingerprint == ca)
                    .and_then(|k| PublicKey::from_openssh(&k.public_key).ok())
                    .ok_or_else(|| format!("certificate signed by unknown CA key {ca}"))?;
                let section = crate::krl::CaSection::new(
                    Some(key.key_data().clone()),
                    serials.iter().copied(),
                    Vec::<String>::new(),
                )
                .map_err(|e| e.to_string())?;
                krl = krl.with_certificates(section);
            }
            for fp in &fingerprints {
                let parsed: ssh_key::Fingerprint = fp.parse().map_err(|e| format!("{fp}: {e}"))?;
                krl = krl.with_fingerprint(&parsed).map_err(|e| e.to_string())?;
            }
            let bytes = krl.encode().map_err(|e| e.to_string())?;
            let payload = pedm_api::krl::KrlPayload {
                version,
                issued_at: now,
                expires_at: now + lifetime_secs,
                ca_key: signer.fingerprint(),
                krl: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes),
            };
            let payload = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
            let signature = sshsig_armored(signer.as_ref(), pedm_api::krl::KRL_NAMESPACE, &payload)
                .map_err(|e| e.to_string())?;
            Ok(crate::store::KrlRow {
                version,
                payload,
                signature,
                content_sha256: content_sha256.clone(),
                issued_at: now,
                expires_at: now + lifetime_secs,
            })
        })?;
        self.after_write()?;
        Ok(row)
    }

    /// Creates a new CA key (encrypted with the CA's passphrase when it has one), stages it as
    /// `next` and publishes a bundle naming it, so hosts trust it before it signs anything.
    pub fn stage_key(&self, actor: &str, bundle_lifetime_secs: i64) -> Result<CaKeyRow, CaError> {
        let keys = self.store.ca_keys()?;
        if let Some(k) = keys.iter().find(|k| k.state == KeyState::Next) {
            return Err(CaError::Refused(format!(
                "{} is already staged; activate it (pedm-ca keys activate {}) before staging another",
                k.fingerprint, k.fingerprint
            )));
        }
        let file = format!("{KEYS_DIR}/ca-{}.key", keys.len() + 1);
        let path = self.data_dir.join(&file);
        if path.exists() {
            return Err(CaError::Refused(format!(
                "{} already exists; refusing to overwrite a key file",
                path.display()
            )));
        }
        let key = create_key_file(
            &path,
            self.passphrase.as_ref(),
            &format!("pedm-ssh CA key {}", keys.len() + 1),
        )?;
        let row = CaKeyRow {
            fingerprint: key.fingerprint(),
            public_key: openssh_line(key.public_key()),
            state: KeyState::Next,
            key_file: file,
            created_at: now_secs(),
            published_version: None,
            published_at: None,
        };
        self.store.add_ca_key(
            &row,
            &AuditEvent::new(
                actor,
                "key.stage",
                row.fingerprint.clone(),
                serde_json::json!({ "key_file": row.key_file }),
            ),
        )?;
        self.after_write()?;
        self.publish_or_draft(actor, bundle_lifetime_secs)?;
        Ok(row)
    }

    /// Deletes a staged key that was never published (a mistake made while the root is
    /// offline); a published key is never deleted.
    pub fn delete_key(&self, fingerprint: &str, actor: &str) -> Result<(), CaError> {
        let key_file = self
            .store
            .ca_keys()?
            .into_iter()
            .find(|k| k.fingerprint == fingerprint)
            .map(|k| k.key_file);
        self.store
            .delete_unpublished_key(
                fingerprint,
                &AuditEvent::new(
                    actor,
                    "key.delete",
                    fingerprint.to_string(),
                    serde_json::json!({}),
                ),
            )
            .map_err(|e| match e {
                StoreError::Conflict(m) => CaError::Refused(m),
                other => CaError::Store(other),
            })?;
        self.after_write()?;
        if let Some(f) = key_file {
            let _ = std::fs::remove_file(self.data_dir.join(f));
        }
        Ok(())
    }

    /// Whether the staged key `fingerprint` may be activated now, and why (not).
    pub fn activation_check(
        &self,
        fingerprint: &str,
        refresh_interval_secs: i64,
        min_hosts: u64,
        coverage: f64,
    ) -> Result<ActivationCheck, CaError> {
        let now = now_secs();
        let keys = self.store.ca_keys()?;
        let key = keys
            .iter()
            .find(|k| k.fingerprint == fingerprint)
            .ok_or_else(|| {
                CaError::Refused(format!("no CA key {fingerprint}; see `pedm-ca keys list`"))
            })?;
        let mut blockers = Vec::new();
        if key.state != KeyState::Next {
            blockers.push(format!(
                "{fingerprint} is {}, not staged (next)",
                key.state.as_str()
            ));
        }
        let published_version = key.published_version.unwrap_or(u64::MAX);
        match key.published_at {
            None => blockers.push("it has not been published in a bundle yet".into()),
            Some(at) if now < at + refresh_interval_secs => blockers.push(format!(
                "it was published {}s ago; hosts refresh every {}s, wait {}s more",
                now - at,
                refresh_interval_secs,
                at + refresh_interval_secs - now
            )),
            Some(_) => {}
        }
        let hosts = self.store.latest_checkins()?;
        let checked_in = hosts.iter().filter(|(_, c)| c.is_some()).count() as u64;
        let covering = hosts
            .iter()
            .filter(|(_, c)| {
                c.as_ref()
                    .is_some_and(|c| c.bundle_version >= published_version)
            })
            .count() as u64;
        let share = if checked_in == 0 {
            0.0
        } else {
            covering as f64 / checked_in as f64
        };
        if covering < min_hosts {
            blockers.push(format!(
                "{covering} checked-in host(s) trust it, at least {min_hosts} must ([hosts] min_hosts)"
            ));
        }
        if share < coverage {
            blockers.push(format!(
                "{covering} of {checked_in} checked-in hosts trust it ({:.0}%), {:.0}% must ([hosts] coverage)",
                share * 100.0,
                coverage * 100.0
            ));
        }
        Ok(ActivationCheck {
            covering,
            checked_in,
            blockers,
        })
    }

    /// Activates the staged key: the active key becomes retired, and a new bundle says so.
    /// Refused while `check` has blockers unless `force` (audited as forced).
    pub fn activate_key(
        &self,
        fingerprint: &str,
        check: &ActivationCheck,
        force: bool,
        actor: &str,
        bundle_lifetime_secs: i64,
    ) -> Result<(), CaError> {
        if !check.blockers.is_empty() && !force {
            return Err(CaError::Refused(format!(
                "not activating {fingerprint}: {}; pass --force to override (audited)",
                check.blockers.join("; ")
            )));
        }
        let previous = self.active_key();
        self.store.activate_key(
            fingerprint,
            &AuditEvent::new(
                actor,
                "key.activate",
                fingerprint.to_string(),
                serde_json::json!({
                    "previous": previous,
                    "forced": force && !check.blockers.is_empty(),
                    "blockers": check.blockers,
                    "covering_hosts": check.covering,
                    "checked_in_hosts": check.checked_in,
                }),
            ),
        )?;
        self.after_write()?;
        self.reload_signer()?;
        self.publish_or_draft(actor, bundle_lifetime_secs)?;
        Ok(())
    }

    /// Revokes a CA key that is not the active one: it leaves the trusted set in a new
    /// bundle at once and its fingerprint goes into the KRL, so nothing it signed is accepted
    /// and no KRL signed by it either. The active key must be replaced first.
    pub fn revoke_ca_key(
        &self,
        fingerprint: &str,
        actor: &str,
        reason: &str,
        bundle_lifetime_secs: i64,
    ) -> Result<bool, CaError> {
        let reason = check_reason(reason)?;
        if fingerprint == self.active_key() {
            return Err(CaError::Refused(format!(
                "{fingerprint} is the active key; stage and activate a new one first (pedm-ca keys stage; pedm-ca keys activate NEW --force)"
            )));
        }
        let changed = self.store.set_key_state(
            fingerprint,
            &[KeyState::Next, KeyState::Retired, KeyState::Gone],
            KeyState::Revoked,
            &AuditEvent::new(
                actor,
                "key.revoke",
                fingerprint.to_string(),
                serde_json::json!({ "reason": reason }),
            ),
        )?;
        if !changed {
            let known = self
                .store
                .ca_keys()?
                .iter()
                .any(|k| k.fingerprint == fingerprint);
            if !known {
                return Err(CaError::Refused(format!(
                    "no CA key {fingerprint}; see `pedm-ca keys list`"
                )));
            }
        }
        let now = now_secs();
        self.store.revoke(
            &RevocationRow {
                kind: RevocationKind::CaKey,
                value: fingerprint.to_string(),
                reason: reason.clone(),
                actor: actor.to_string(),
                created_at: now,
            },
            now,
            &AuditEvent::new(
                actor,
                "revoke.ca_key",
                format!("ca_key={fingerprint}"),
                serde_json::json!({ "reason": reason }),
            ),
        )?;
        self.after_write()?;
        self.publish_or_draft(actor, bundle_lifetime_secs)?;
        Ok(changed)
    }

    /// Retired keys whose certificates have all expired become `gone` (no longer published).
    pub fn retire_expired_keys(&self, bundle_lifetime_secs: i64) -> Result<usize, CaError> {
        let now = now_secs();
        let mut gone = 0;
        for k in self
            .store
            .ca_keys()?
            .into_iter()
            .filter(|k| k.state == KeyState::Retired)
        {
            let last = self.store.last_valid_before(&k.fingerprint)?.unwrap_or(0);
            if last <= now
                && self.store.set_key_state(
                    &k.fingerprint,
                    &[KeyState::Retired],
                    KeyState::Gone,
                    &AuditEvent::new(
                        "system",
                        "key.gone",
                        k.fingerprint.clone(),
                        serde_json::json!({ "last_valid_before": last }),
                    ),
                )?
            {
                gone += 1;
            }
        }
        if gone > 0 && self.root.is_some() {
            self.publish_bundle("system", bundle_lifetime_secs)?;
        }
        Ok(gone)
    }

    /// Whether the trust root's key file is here (root online).
    pub fn root_online(&self) -> bool {
        self.root.is_some()
    }

    /// Publishes a new bundle when the root is online; otherwise the change waits as a draft
    /// (`pedm-ca bundle draft` → `bundle sign` where the root lives → `bundle import`).
    pub fn publish_or_draft(
        &self,
        actor: &str,
        lifetime_secs: i64,
    ) -> Result<Option<BundleRow>, CaError> {
        if self.root.is_none() {
            tracing::warn!("the trust root is offline: the key change waits for a signed bundle (pedm-ca bundle draft | sign | import)");
            return Ok(None);
        }
        self.publish_bundle(actor, lifetime_secs).map(Some)
    }

    /// The bundle the root should sign next: the current key set, version latest + 1.
    pub fn bundle_draft(&self, lifetime_secs: i64) -> Result<TrustBundle, CaError> {
        let version = self.store.latest_bundle()?.map_or(1, |b| b.version + 1);
        let now = now_secs();
        let bundle = TrustBundle {
            version,
            issued_at: now,
            expires_at: now + lifetime_secs,
            keys: self
                .store
                .ca_keys()?
                .into_iter()
                .filter(|k| k.state != KeyState::Gone)
                .map(|k| BundleKey {
                    fingerprint: k.fingerprint,
                    public_key: k.public_key,
                    state: k.state,
                })
                .collect(),
        };
        bundle
            .check_structure()
            .map_err(|e| CaError::Refused(e.to_string()))?;
        Ok(bundle)
    }

    /// Stores a bundle the offline root signed: it must verify against this CA's trust root,
    /// be the next version, and name exactly the current key set and states.
    pub fn import_bundle(&self, signed: &SignedBundle, actor: &str) -> Result<u64, CaError> {
        let root = self.store.trust_root()?;
        let bundle = signed
            .verify(&root.fingerprint, now_secs())
            .map_err(|e| CaError::Refused(e.to_string()))?;
        let payload = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            signed.payload.as_bytes(),
        )
        .map_err(|_| CaError::Refused("payload is not base64".into()))?;
        let row = self.store.publish_bundle(actor, &mut |version, keys| {
            if bundle.version != version {
                return Err(format!(
                    "the signed bundle is version {}, but the next version is {version}; make a new draft",
                    bundle.version
                ));
            }
            let want: BTreeMap<_, _> = keys.iter().map(|k| (k.fingerprint.clone(), k.state)).collect();
            let got: BTreeMap<_, _> = bundle.keys.iter().map(|k| (k.fingerprint.clone(), k.state)).collect();
            if want != got {
                return Err("the signed bundle does not name the CA's current keys and states; make a new draft".into());
            }
            Ok(BundleRow {
                version,
                payload: payload.clone(),
                signature: signed.signature.clone(),
                issued_at: bundle.issued_at,
                expires_at: bundle.expires_at,
            })
        })?;
        self.after_write()?;
        Ok(row.version)
    }

    /// Makes a one-time join token for host enrollment; only its SHA-256 is stored.
    pub fn join_token(&self, actor: &str, ttl_secs: i64) -> Result<String, CaError> {
        let token = format!("pedm-join-{}", crate::login::new_token());
        let hash = crate::login::sha256_hex(&token);
        let now = now_secs();
        let event = AuditEvent::new(
            actor,
            "host.token",
            format!("token={}", &hash[..16]),
            serde_json::json!({ "expires_at": now + ttl_secs }),
        );
        self.store
            .create_join_token(&hash, now, now + ttl_secs, &event)?;
        self.after_write()?;
        Ok(token)
    }

    /// Counts a committed write and checkpoints every `checkpoint_every` records.
    fn after_write(&self) -> Result<(), CaError> {
        let n = self.since_checkpoint.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.checkpoint_every {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Records an event that changes nothing else.
    pub fn record(&self, event: &AuditEvent) -> Result<(), CaError> {
        self.store.record(event)?;
        self.after_write()
    }

    /// Signs a checkpoint of the current chain head, stores it and appends it to the file
    /// outside the database.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, CaError> {
        self.since_checkpoint.store(0, Ordering::SeqCst);
        let Some(head) = self.store.audit_head()? else {
            return Ok(None);
        };
        if self
            .store
            .checkpoints()?
            .last()
            .is_some_and(|c| c.seq == head.seq)
        {
            return Ok(None);
        }
        let cp = Checkpoint::sign(
            &head,
            crate::store::now_ms(),
            self.current_signer().as_ref(),
        )
        .map_err(|e| CaError::Io(e.to_string()))?;
        self.store.add_checkpoint(&cp)?;
        append_checkpoint_file(&self.data_dir.join(CHECKPOINT_FILE), &cp)?;
        Ok(Some(cp))
    }
}

fn append_checkpoint_file(path: &Path, cp: &Checkpoint) -> Result<(), CaError> {
    let mut line = serde_json::to_string(cp).map_err(|e| CaError::Io(e.to_string()))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CaError::Io(format!("cannot open {}: {e}", path.display())))?;
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| CaError::Io(format!("cannot append to {}: {e}", path.display())))
}

/// Reads the checkpoint file; a missing file holds none.
pub fn read_checkpoint_file(path: &Path) -> Result<Vec<Checkpoint>, CaError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CaError::Io(format!("cannot read {}: {e}", path.display()))),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                CaError::Io(format!(
                    "{} line {}: not a checkpoint: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// Verifies the audit chain of the CA in `data_dir` against the checkpoints in the database
/// and in the file outside it. Needs no passphrase.
pub fn verify_audit(data_dir: &Path) -> Result<ChainReport, CaError> {
    let store = SqliteStore::open(&data_dir.join(DB_FILE))?;
    let keys: BTreeMap<String, PublicKey> = store
        .ca_keys()?
        .into_iter()
        .filter_map(|k| {
            PublicKey::from_openssh(&k.public_key)
                .ok()
                .map(|p| (k.fingerprint, p))
        })
        .collect();
    let mut records = Vec::new();
    loop {
        let since = records
            .last()
            .map(|r: &crate::audit::AuditRecord| r.seq)
            .unwrap_or(0);
        let batch = store.audit_records(since, 10_000)?;
        if batch.is_empty() {
            break;
        }
        records.extend(batch);
    }
    let mut checkpoints = store.checkpoints()?;
    checkpoints.extend(read_checkpoint_file(&data_dir.join(CHECKPOINT_FILE))?);
    checkpoints.sort_by_key(|c| c.seq);
    checkpoints.dedup();
    Ok(verify_chain(&records, &checkpoints, &keys)?)
}

/// Replaces a compromised trust root: a new root key (encrypted with `passphrase`) becomes the
/// root, and a bundle signed by it is published. Hosts pinned to the old root refuse it from now
/// on and must be re-installed with the new fingerprint (`pedm-host-config install
/// --trust-root NEW`). A running `serve` refuses to sign with the old root and must be
/// restarted. Returns the new root's fingerprint.
pub fn replace_trust_root(
    data_dir: &Path,
    passphrase: Option<&Passphrase>,
    actor: &str,
    reason: &str,
    bundle_lifetime_secs: i64,
) -> Result<String, CaError> {
    let reason = check_reason(reason)?;
    let store = SqliteStore::open(&data_dir.join(DB_FILE))?;
    let old = store.trust_root()?;
    let file = format!("{KEYS_DIR}/trust-root-{}.key", now_secs());
    let path = data_dir.join(&file);
    if path.exists() {
        return Err(CaError::Refused(format!(
            "{} already exists",
            path.display()
        )));
    }
    let root = create_key_file(&path, passphrase, "pedm-ssh trust root (replacement)")?;
    let row = TrustRootRow {
        fingerprint: root.fingerprint(),
        public_key: openssh_line(root.public_key()),
        key_file: file,
    };
    store.replace_trust_root(
        &row,
        &AuditEvent::new(
            actor,
            "root.replace",
            row.fingerprint.clone(),
            serde_json::json!({ "previous": old.fingerprint, "reason": reason }),
        ),
    )?;
    drop(store);
    let ca = Authority::open(data_dir, passphrase, 1000)?;
    ca.publish_bundle(actor, bundle_lifetime_secs)?;
    ca.checkpoint()?;
    Ok(row.fingerprint)
}

/// Signs a bundle draft with the trust root's key file, where the root lives (offline). The
/// key file must be 0600; the signature covers exactly the draft's payload bytes.
pub fn sign_bundle_draft(
    root_key_file: &Path,
    passphrase: Option<&Passphrase>,
    draft: &TrustBundle,
) -> Result<SignedBundle, CaError> {
    draft
        .check_structure()
        .map_err(|e| CaError::Refused(e.to_string()))?;
    let root = load_key_file(root_key_file, passphrase)?;
    let payload = draft.to_payload();
    let signature = sshsig_armored(&root, BUNDLE_NAMESPACE, &payload)
        .map_err(|e| CaError::Io(e.to_string()))?;
    Ok(SignedBundle::from_parts(&payload, signature))
}
