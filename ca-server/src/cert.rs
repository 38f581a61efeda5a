//! Building OpenSSH user certificates from a policy decision. Pure apart from the signer
//! call: the serial, times and principals come in as values.

use crate::names::{KeyId, Principal};
use crate::signer::{CaSigner, SshSigning};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::public::{EcdsaPublicKey, KeyData};
use ssh_key::rand_core::OsRng;
use ssh_key::{Certificate, PublicKey};
use std::collections::BTreeSet;

/// Smallest RSA modulus accepted for user keys.
pub const MIN_RSA_BITS: usize = 3072;

/// Why a user's public key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error("the public key is not one OpenSSH public key line (\"TYPE BASE64 [COMMENT]\"): {0}")]
    Unparseable(String),
    #[error(
        "a certificate was sent where a plain public key is expected; send the .pub of the key"
    )]
    IsCertificate,
    #[error("{0} keys are not accepted; use Ed25519 (ssh-keygen -t ed25519), ECDSA P-256/P-384, sk-ssh-ed25519 or RSA of at least 3072 bits")]
    UnsupportedType(String),
    #[error("RSA keys must have at least {MIN_RSA_BITS} bits, this one has {0}")]
    RsaTooSmall(usize),
}

/// Parses one public key line and checks that its type and size are accepted.
pub fn parse_user_key(text: &str) -> Result<PublicKey, KeyRefusal> {
    let line = text.trim_end_matches(['\n', '\r']);
    if line.contains(['\n', '\r', '\0']) {
        return Err(KeyRefusal::Unparseable("more than one line".into()));
    }
    if line
        .split(' ')
        .next()
        .is_some_and(|t| t.contains("-cert-v01@openssh.com"))
    {
        return Err(KeyRefusal::IsCertificate);
    }
    let key = PublicKey::from_openssh(line).map_err(|e| KeyRefusal::Unparseable(e.to_string()))?;
    check_user_key(key.key_data())?;
    Ok(key)
}

/// Accepts Ed25519, ECDSA P-256/P-384, FIDO `sk-ssh-ed25519@openssh.com` and RSA ≥ 3072.
pub fn check_user_key(key: &KeyData) -> Result<(), KeyRefusal> {
    match key {
        KeyData::Ed25519(_) | KeyData::SkEd25519(_) => Ok(()),
        KeyData::Ecdsa(EcdsaPublicKey::NistP256(_) | EcdsaPublicKey::NistP384(_)) => Ok(()),
        KeyData::Rsa(rsa) => {
            let bits = rsa_bits(rsa.n.as_positive_bytes().unwrap_or(&[]));
            if bits >= MIN_RSA_BITS {
                Ok(())
            } else {
                Err(KeyRefusal::RsaTooSmall(bits))
            }
        }
        other => Err(KeyRefusal::UnsupportedType(other.algorithm().to_string())),
    }
}

fn rsa_bits(n: &[u8]) -> usize {
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    n.len() * 8 - n[0].leading_zeros() as usize
}

/// Everything a certificate states. Construct with [`CertSpec::new`], which refuses
/// the states that must never be signed.
#[derive(Debug, Clone)]
pub struct CertSpec {
    public_key: PublicKey,
    serial: u64,
    key_id: KeyId,
    principals: Vec<Principal>,
    valid_after: u64,
    valid_before: u64,
    extensions: BTreeSet<String>,
}

/// A certificate that must not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("serial 0 is reserved")]
    ZeroSerial,
    #[error("a certificate without principals would be valid for every account")]
    NoPrincipals,
    #[error("the validity window is empty (valid_before {before} <= valid_after {after})")]
    EmptyWindow { after: u64, before: u64 },
    #[error("signing failed: {0}")]
    Signing(String),
}

impl CertSpec {
    pub fn new(
        public_key: PublicKey,
        serial: u64,
        key_id: KeyId,
        principals: Vec<Principal>,
        valid_after: u64,
        valid_before: u64,
        extensions: BTreeSet<String>,
    ) -> Result<Self, CertError> {
        if serial == 0 {
            return Err(CertError::ZeroSerial);
        }
        if principals.is_empty() {
            return Err(CertError::NoPrincipals);
        }
        if valid_before <= valid_after {
            return Err(CertError::EmptyWindow {
                after: valid_after,
                before: valid_before,
            });
        }
        Ok(Self {
            public_key,
            serial,
            key_id,
            principals,
            valid_after,
            valid_before,
            extensions,
        })
    }

    /// Signs the certificate. Principals and extensions are written in sorted order.
    pub fn sign(&self, signer: &dyn CaSigner) -> Result<Certificate, CertError> {
        let err = |e: ssh_key::Error| CertError::Signing(e.to_string());
        let mut b = Builder::new_with_random_nonce(
            &mut OsRng,
            self.public_key.key_data().clone(),
            self.valid_after,
            self.valid_before,
        )
        .map_err(err)?;
        b.serial(self.serial).map_err(err)?;
        b.cert_type(CertType::User).map_err(err)?;
        b.key_id(self.key_id.to_string()).map_err(err)?;
        let principals: BTreeSet<&str> = self.principals.iter().map(Principal::as_str).collect();
        for p in principals {
            b.valid_principal(p).map_err(err)?;
        }
        for e in &self.extensions {
            b.extension(e.as_str(), "").map_err(err)?;
        }
        b.sign(&SshSigning(signer)).map_err(err)
    }
}

/// The validity window: back-dated by `clock_skew`, ending at the earliest of `now + ttl`
/// and every bound given (session end, later an elevation's end).
pub fn validity(now: u64, ttl_secs: u64, clock_skew_secs: u64, bounds: &[u64]) -> (u64, u64) {
    let after = now.saturating_sub(clock_skew_secs);
    let before = bounds
        .iter()
        .copied()
        .fold(now.saturating_add(ttl_secs), u64::min);
    (after, before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Username;
    use crate::signer::create_key_file;
    use ssh_key::{Algorithm, HashAlg, PrivateKey};

    fn user_key() -> PublicKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    fn p(s: &str) -> Principal {
        Principal::new(s).unwrap()
    }

    #[test]
    fn signs_what_the_spec_says() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_key_file(&dir.path().join("ca"), None, "ca").unwrap();
        let key = user_key();
        let id = KeyId::User {
            user: Username::new("alice").unwrap(),
            serial: 42,
        };
        let ext: BTreeSet<String> = [
            "permit-pty".to_string(),
            "permit-port-forwarding".to_string(),
        ]
        .into();
        let spec = CertSpec::new(
            key.clone(),
            42,
            id,
            vec![p("zed"), p("alice")],
            1000,
            1600,
            ext,
        )
        .unwrap();
        let cert = spec.sign(&ca).unwrap();
        assert_eq!(cert.serial(), 42);
        assert_eq!(cert.key_id(), "alice serial=42");
        assert_eq!(cert.valid_principals(), ["alice", "zed"]);
        assert_eq!(cert.valid_after(), 1000);
        assert_eq!(cert.valid_before(), 1600);
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.public_key(), key.key_data());
        assert_eq!(
            cert.extensions().keys().collect::<Vec<_>>(),
            ["permit-port-forwarding", "permit-pty"]
        );
        assert!(cert.critical_options().is_empty());
        let ca_fp = ca.public_key().fingerprint(HashAlg::Sha256);
        cert.validate_at(1100, &[ca_fp]).unwrap();
        let other = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        assert!(cert
            .validate_at(1100, &[other.public_key().fingerprint(HashAlg::Sha256)])
            .is_err());
    }

    #[test]
    fn refuses_unsignable_specs() {
        let id = || KeyId::BreakGlass { serial: 1 };
        let none = BTreeSet::new;
        assert_eq!(
            CertSpec::new(user_key(), 0, id(), vec![p("a")], 1, 2, none()).err(),
            Some(CertError::ZeroSerial)
        );
        assert_eq!(
            CertSpec::new(user_key(), 1, id(), vec![], 1, 2, none()).err(),
            Some(CertError::NoPrincipals)
        );
        assert_eq!(
            CertSpec::new(user_key(), 1, id(), vec![p("a")], 2, 2, none()).err(),
            Some(CertError::EmptyWindow {
                after: 2,
                before: 2
            })
        );
    }

    #[test]
    fn validity_window() {
        assert_eq!(validity(1000, 600, 60, &[]), (940, 1600));
        assert_eq!(validity(1000, 600, 60, &[1200]), (940, 1200));
        assert_eq!(validity(1000, 600, 60, &[5000, 1300]), (940, 1300));
        assert_eq!(validity(30, 600, 60, &[]), (0, 630));
    }

    #[test]
    fn user_key_types() {
        let ed = user_key().to_openssh().unwrap();
        assert!(parse_user_key(&ed).is_ok());
        assert!(parse_user_key(&format!("{ed} a comment\n")).is_ok());
        let p256 = PrivateKey::random(
            &mut OsRng,
            Algorithm::Ecdsa {
                curve: ssh_key::EcdsaCurve::NistP256,
            },
        );
        if let Ok(k) = p256 {
            assert!(parse_user_key(&k.public_key().to_openssh().unwrap()).is_ok());
        }
        assert!(matches!(
            parse_user_key("ssh-ed25519 AAAA"),
            Err(KeyRefusal::Unparseable(_))
        ));
        assert!(matches!(
            parse_user_key(""),
            Err(KeyRefusal::Unparseable(_))
        ));
        assert!(matches!(
            parse_user_key(&format!("{ed}\n{ed}")),
            Err(KeyRefusal::Unparseable(_))
        ));
        assert_eq!(
            parse_user_key("ssh-ed25519-cert-v01@openssh.com AAAA x"),
            Err(KeyRefusal::IsCertificate)
        );
        // Fixed test vectors made with ssh-keygen: a 1024-bit DSA key and a 2048-bit RSA key.
        assert!(matches!(
            parse_user_key(DSA_1024),
            Err(KeyRefusal::UnsupportedType(_))
        ));
        assert_eq!(parse_user_key(RSA_2048), Err(KeyRefusal::RsaTooSmall(2048)));
        assert!(parse_user_key(RSA_3072).is_ok());
    }

    #[test]
    fn rsa_bit_length() {
        assert_eq!(rsa_bits(&[0x01]), 1);
        assert_eq!(rsa_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(rsa_bits(&[]), 0);
    }

    const DSA_1024: &str = include_str!("../testdata/dsa_1024.pub");
    const RSA_2048: &str = include_str!("../testdata/rsa_2048.pub");
    const RSA_3072: &str = include_str!("../testdata/rsa_3072.pub");
}
