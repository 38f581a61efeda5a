//! The trust bundle: the set of CA public keys hosts should trust, with their states, a
//! version and an expiry, signed (SSHSIG) by the trust root.
//!
//! The signature covers the exact payload bytes, which travel base64-encoded next to it, so
//! no canonical JSON is needed and `ssh-keygen -Y verify -n trust-bundle@pedm-ssh` can check
//! a bundle by hand. A host pins the root by its `SHA256:` fingerprint; the root's public key
//! travels inside the SSHSIG and is accepted only if its fingerprint equals the pin.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, PublicKey, SshSig};

/// SSHSIG namespace of trust-bundle signatures; a signature made for any other purpose
/// (audit checkpoints, KRLs, host check-ins) can never pass as a bundle signature.
pub const BUNDLE_NAMESPACE: &str = "trust-bundle@pedm-ssh";

/// Life-cycle state of a CA key as published to hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published ahead of use so hosts trust it before it signs anything.
    Next,
    /// The one key that signs certificates now.
    Active,
    /// No longer signs; trusted until every certificate it signed has expired.
    Retired,
    /// Never to be trusted again.
    Revoked,
    /// Retired and every certificate it signed has expired: no longer published.
    Gone,
}

impl KeyState {
    /// Whether hosts put a key in this state into `TrustedUserCAKeys`.
    pub fn trusted(self) -> bool {
        matches!(self, KeyState::Next | KeyState::Active | KeyState::Retired)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
            KeyState::Gone => "gone",
        }
    }
}

impl std::str::FromStr for KeyState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "next" => Ok(KeyState::Next),
            "active" => Ok(KeyState::Active),
            "retired" => Ok(KeyState::Retired),
            "revoked" => Ok(KeyState::Revoked),
            "gone" => Ok(KeyState::Gone),
            other => Err(format!("unknown key state {other:?}")),
        }
    }
}

/// One published CA key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleKey {
    /// `SHA256:…` fingerprint of `public_key`.
    pub fingerprint: String,
    /// OpenSSH public key line, without comment.
    pub public_key: String,
    pub state: KeyState,
}

/// The content of a trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundle {
    /// Strictly increasing; hosts refuse anything not above what they installed.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; hosts refuse the bundle from then on.
    pub expires_at: i64,
    pub keys: Vec<BundleKey>,
}

impl TrustBundle {
    /// The bytes the trust root signs.
    pub fn to_payload(&self) -> Vec<u8> {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Lines for `TrustedUserCAKeys`: every key hosts should trust, in bundle order.
    pub fn trusted_user_ca_keys(&self) -> String {
        let mut out = String::new();
        for k in self.keys.iter().filter(|k| k.state.trusted()) {
            out.push_str(&k.public_key);
            out.push(' ');
            out.push_str(&format!("pedm-ca {} {}", k.state.as_str(), k.fingerprint));
            out.push('\n');
        }
        out
    }

    /// The active key, which exists exactly once in every valid bundle.
    pub fn active_key(&self) -> Option<&BundleKey> {
        self.keys.iter().find(|k| k.state == KeyState::Active)
    }

    /// Structural checks every bundle must pass before anyone relies on it.
    pub fn check_structure(&self) -> Result<(), BundleError> {
        if self.version == 0 {
            return Err(BundleError::Malformed("version must be at least 1".into()));
        }
        if self.expires_at <= self.issued_at {
            return Err(BundleError::Malformed(
                "expires_at is not after issued_at".into(),
            ));
        }
        let active = self
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Active)
            .count();
        if active != 1 {
            return Err(BundleError::Malformed(format!(
                "a bundle needs exactly one active key, this one has {active}"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for k in &self.keys {
            let parsed = PublicKey::from_openssh(&k.public_key).map_err(|_| {
                BundleError::Malformed(format!(
                    "key {} is not an OpenSSH public key",
                    k.fingerprint
                ))
            })?;
            let fp = parsed.fingerprint(HashAlg::Sha256).to_string();
            if fp != k.fingerprint {
                return Err(BundleError::Malformed(format!(
                    "key listed as {} has fingerprint {fp}",
                    k.fingerprint
                )));
            }
            if k.public_key.contains('\n') || k.public_key.split(' ').count() != 2 {
                return Err(BundleError::Malformed(format!(
                    "key {} must be exactly \"TYPE BASE64\"",
                    k.fingerprint
                )));
            }
            if !seen.insert(fp) {
                return Err(BundleError::Malformed(format!(
                    "key {} is listed twice",
                    k.fingerprint
                )));
            }
        }
        Ok(())
    }
}

/// A bundle as served by `GET /v1/ca/bundle`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedBundle {
    /// Base64 (standard, padded) of [`TrustBundle::to_payload`].
    pub payload: String,
    /// Armored SSHSIG (`-----BEGIN SSH SIGNATURE-----`) over the decoded payload, namespace
    /// [`BUNDLE_NAMESPACE`], made by the trust root.
    pub signature: String,
}

/// Why a bundle was refused. Every variant means: install nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle is malformed: {0}")]
    Malformed(String),
    #[error("the bundle signature is not an SSH signature: {0}")]
    BadSignatureEncoding(String),
    #[error("the bundle is signed for namespace {0:?}, not {BUNDLE_NAMESPACE:?}")]
    WrongNamespace(String),
    #[error("the bundle is signed by {found}, not by the pinned trust root {pinned}")]
    WrongSigner { pinned: String, found: String },
    #[error("the bundle signature does not verify: its content was altered after signing")]
    BadSignature,
    #[error("the bundle (version {version}) expired at {expires_at} (unix time); the CA must re-sign it")]
    Expired { version: u64, expires_at: i64 },
}

impl SignedBundle {
    /// Verifies the signature against the pinned root fingerprint, then the structure and
    /// expiry, and only then returns the content.
    pub fn verify(&self, root_pin: &str, now: i64) -> Result<TrustBundle, BundleError> {
        let payload = base64::engine::general_purpose::STANDARD
            .decode(self.payload.as_bytes())
            .map_err(|_| BundleError::Malformed("payload is not base64".into()))?;
        let sig = SshSig::from_pem(self.signature.as_bytes())
            .map_err(|e| BundleError::BadSignatureEncoding(e.to_string()))?;
        if sig.namespace() != BUNDLE_NAMESPACE {
            return Err(BundleError::WrongNamespace(sig.namespace().to_string()));
        }
        let signer = PublicKey::from(sig.public_key().clone());
        let found = signer.fingerprint(HashAlg::Sha256).to_string();
        if found != root_pin {
            return Err(BundleError::WrongSigner {
                pinned: root_pin.to_string(),
                found,
            });
        }
        signer
            .verify(BUNDLE_NAMESPACE, &payload, &sig)
            .map_err(|_| BundleError::BadSignature)?;
        let bundle: TrustBundle = serde_json::from_slice(&payload)
            .map_err(|e| BundleError::Malformed(format!("payload is not a bundle: {e}")))?;
        bundle.check_structure()?;
        if now >= bundle.expires_at {
            return Err(BundleError::Expired {
                version: bundle.version,
                expires_at: bundle.expires_at,
            });
        }
        Ok(bundle)
    }

    /// Builds the wire form from a payload and its armored signature.
    pub fn from_parts(payload: &[u8], signature_pem: String) -> Self {
        Self {
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            signature: signature_pem,
        }
    }
}
