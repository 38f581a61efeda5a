//! The published revocation list: OpenSSH's binary KRL with a version and an expiry, signed
//! (SSHSIG) by the CA key that is active in the current trust bundle.
//!
//! The signature covers a JSON payload holding the version, the times and the KRL bytes, so a
//! host can refuse an expired or older KRL without trusting anything unsigned. A host accepts a
//! KRL only if the signer is the *active* key of the bundle it has accepted: a key the root has
//! removed (or marked retired, staged or revoked) can neither publish nor hide a revocation.

use crate::bundle::{BundleKey, KeyState, TrustBundle};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, PublicKey, SshSig};

/// SSHSIG namespace of KRL signatures.
pub const KRL_NAMESPACE: &str = "krl@pedm-ssh";

/// What the CA key signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KrlPayload {
    /// Strictly increasing with every new KRL; hosts refuse an older one.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; hosts refuse the KRL from then on.
    pub expires_at: i64,
    /// `SHA256:…` of the signing CA key (also inside the signature).
    pub ca_key: String,
    /// Base64 (standard, padded) of the OpenSSH binary KRL (PROTOCOL.krl).
    pub krl: String,
}

/// `GET /v1/krl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedKrl {
    /// Base64 of the JSON [`KrlPayload`].
    pub payload: String,
    /// Armored SSHSIG over the decoded payload, namespace [`KRL_NAMESPACE`].
    pub signature: String,
}

/// A KRL that passed every check, with its decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKrl {
    pub payload: KrlPayload,
    /// The binary KRL to install for sshd's `RevokedKeys`.
    pub krl: Vec<u8>,
    /// The exact payload bytes that were signed (hosts keep their hash).
    pub payload_bytes: Vec<u8>,
}

/// Why a KRL was refused. Every variant means: keep the installed KRL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrlError {
    #[error("the KRL is malformed: {0}")]
    Malformed(String),
    #[error("the KRL signature is not an SSH signature: {0}")]
    BadSignatureEncoding(String),
    #[error("the KRL is signed for namespace {0:?}, not {KRL_NAMESPACE:?}")]
    WrongNamespace(String),
    #[error("the KRL is signed by {found}, which is not the active CA key {active} of the installed trust bundle")]
    NotActiveKey { found: String, active: String },
    #[error("the KRL signature does not verify: its content was altered after signing")]
    BadSignature,
    #[error("the KRL (version {version}) expired at {expires_at} (unix time); the CA must issue a new one")]
    Expired { version: u64, expires_at: i64 },
    #[error("the KRL is version {offered}, older than the installed version {installed}; refusing a rollback that could un-revoke certificates")]
    Rollback { offered: u64, installed: u64 },
}

impl SignedKrl {
    /// Builds the wire form from payload bytes and their armored signature.
    pub fn from_parts(payload: &[u8], signature_pem: String) -> Self {
        Self {
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            signature: signature_pem,
        }
    }

    /// Verifies that the active key of `bundle` signed this KRL, that it has not expired at
    /// `now`, and that its version is not below `installed_version`; only then returns it.
    pub fn verify(
        &self,
        bundle: &TrustBundle,
        now: i64,
        installed_version: Option<u64>,
    ) -> Result<VerifiedKrl, KrlError> {
        let active: &BundleKey = bundle
            .keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .ok_or_else(|| KrlError::Malformed("the trust bundle has no active key".into()))?;
        let payload_bytes = base64::engine::general_purpose::STANDARD
            .decode(self.payload.as_bytes())
            .map_err(|_| KrlError::Malformed("payload is not base64".into()))?;
        let sig = SshSig::from_pem(self.signature.as_bytes())
            .map_err(|e| KrlError::BadSignatureEncoding(e.to_string()))?;
        if sig.namespace() != KRL_NAMESPACE {
            return Err(KrlError::WrongNamespace(sig.namespace().to_string()));
        }
        let signer = PublicKey::from(sig.public_key().clone());
        let found = signer.fingerprint(HashAlg::Sha256).to_string();
        if found != active.fingerprint {
            return Err(KrlError::NotActiveKey {
                found,
                active: active.fingerprint.clone(),
            });
        }
        signer
            .verify(KRL_NAMESPACE, &payload_bytes, &sig)
            .map_err(|_| KrlError::BadSignature)?;
        let payload: KrlPayload = serde_json::from_slice(&payload_bytes)
            .map_err(|e| KrlError::Malformed(format!("payload is not a KRL payload: {e}")))?;
        if payload.ca_key != found {
            return Err(KrlError::Malformed(format!(
                "the payload names {} but {found} signed it",
                payload.ca_key
            )));
        }
        if payload.expires_at <= payload.issued_at {
            return Err(KrlError::Malformed(
                "expires_at is not after issued_at".into(),
            ));
        }
        if now >= payload.expires_at {
            return Err(KrlError::Expired {
                version: payload.version,
                expires_at: payload.expires_at,
            });
        }
        if let Some(installed) = installed_version {
            if payload.version < installed {
                return Err(KrlError::Rollback {
                    offered: payload.version,
                    installed,
                });
            }
        }
        let krl = base64::engine::general_purpose::STANDARD
            .decode(payload.krl.as_bytes())
            .map_err(|_| KrlError::Malformed("the KRL is not base64".into()))?;
        if !krl.starts_with(b"SSHKRL\n\0") {
            return Err(KrlError::Malformed(
                "the KRL does not start with OpenSSH's KRL magic".into(),
            ));
        }
        Ok(VerifiedKrl {
            payload,
            krl,
            payload_bytes,
        })
    }
}
