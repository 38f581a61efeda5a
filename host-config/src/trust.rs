//! Accepting a trust bundle: signature by the pinned root, expiry, structure (all in
//! [`SignedBundle::verify`]), then rollback protection against what is installed.
//!
//! Shared by `install` and `refresh`: a bundle that fails here must leave the host exactly
//! as it was.

use base64::Engine as _;
use pedm_api::{BundleError, SignedBundle, TrustBundle};
use sha2::{Digest, Sha256};

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("refusing the trust bundle: {0}")]
    Invalid(#[from] BundleError),
    #[error(
        "refusing the trust bundle: it is version {offered}, older than the installed version \
         {installed} (a rollback); if the CA was restored from a backup, have the trust root sign \
         a bundle above version {installed}"
    )]
    Rollback { offered: u64, installed: u64 },
    #[error(
        "refusing the trust bundle: same version, different content: version {version} is \
         installed with payload SHA-256 {installed_sha256}, but the CA now serves {offered_sha256} \
         under the same version; a changed bundle must carry a higher version"
    )]
    SameVersionDifferentContent {
        version: u64,
        installed_sha256: String,
        offered_sha256: String,
    },
}

/// What is installed, as far as rollback protection cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: u64,
    /// Lower-case hex SHA-256 of the decoded payload.
    pub payload_sha256: String,
}

/// A bundle that passed every check.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub bundle: TrustBundle,
    /// Lower-case hex SHA-256 of the decoded payload bytes.
    pub payload_sha256: String,
    /// True when the very same bundle is already installed.
    pub already_installed: bool,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Verifies `signed` against the pinned root at `now` (unix seconds), then applies the
/// rollback rules against `installed`.
pub fn accept(
    signed: &SignedBundle,
    root_pin: &str,
    now: i64,
    installed: Option<&Installed>,
) -> Result<Accepted, AcceptError> {
    let bundle = signed.verify(root_pin, now)?;
    // `verify` already decoded the payload successfully; decoding again cannot fail.
    let payload = base64::engine::general_purpose::STANDARD
        .decode(signed.payload.as_bytes())
        .map_err(|_| BundleError::Malformed("payload is not base64".into()))?;
    let payload_sha256 = sha256_hex(&payload);
    let already_installed = check_rollback(bundle.version, &payload_sha256, installed)?;
    Ok(Accepted {
        bundle,
        payload_sha256,
        already_installed,
    })
}

/// The rollback rules: a lower version is refused; an equal version is accepted only with a
/// byte-identical payload (returns `true`: nothing new); a higher version is accepted
/// (returns `false`).
pub fn check_rollback(
    version: u64,
    payload_sha256: &str,
    installed: Option<&Installed>,
) -> Result<bool, AcceptError> {
    let Some(installed) = installed else {
        return Ok(false);
    };
    if version < installed.version {
        return Err(AcceptError::Rollback {
            offered: version,
            installed: installed.version,
        });
    }
    if version == installed.version {
        if payload_sha256 == installed.payload_sha256 {
            return Ok(true);
        }
        return Err(AcceptError::SameVersionDifferentContent {
            version,
            installed_sha256: installed.payload_sha256.clone(),
            offered_sha256: payload_sha256.to_string(),
        });
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(version: u64, sha: &str) -> Installed {
        Installed {
            version,
            payload_sha256: sha.to_string(),
        }
    }

    #[test]
    fn first_install_accepts_any_version() {
        assert!(!check_rollback(1, "aa", None).unwrap());
    }

    #[test]
    fn lower_version_is_refused() {
        let e = check_rollback(4, "aa", Some(&inst(5, "bb"))).unwrap_err();
        assert!(matches!(
            e,
            AcceptError::Rollback {
                offered: 4,
                installed: 5
            }
        ));
        assert!(e.to_string().contains("rollback"));
    }

    #[test]
    fn same_version_different_payload_is_refused() {
        let e = check_rollback(5, "aa", Some(&inst(5, "bb"))).unwrap_err();
        assert!(matches!(
            e,
            AcceptError::SameVersionDifferentContent { version: 5, .. }
        ));
        assert!(e.to_string().contains("same version, different content"));
    }

    #[test]
    fn identical_bundle_is_a_no_op_and_higher_is_new() {
        assert!(check_rollback(5, "aa", Some(&inst(5, "aa"))).unwrap());
        assert!(!check_rollback(6, "cc", Some(&inst(5, "aa"))).unwrap());
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
