//! Signing keys of the CA, behind a trait so the protocol code never sees where a key lives
//! (an encrypted file now, a PKCS#11 token later).

mod file;

pub use file::{
    check_private_file_mode, create_key_file, load_key_file, FileSigner, KeyFileError, Passphrase,
};

use ssh_key::{public::KeyData, HashAlg, LineEnding, PublicKey, Signature, SshSig};

/// Why a signature could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("the signing key failed: {0}")]
    Backend(String),
    #[error("encoding the signed object failed: {0}")]
    Encoding(String),
}

/// A CA key that can sign. Implementations cache whatever makes signing fast (a ready
/// `ed25519_dalek::SigningKey`, an open HSM session); a signature must never need the
/// passphrase again.
pub trait CaSigner: Send + Sync {
    /// The public half, as published in bundles and `TrustedUserCAKeys`.
    fn public_key(&self) -> &PublicKey;
    /// Raw SSH signature over `msg` (the certificate's to-be-signed bytes, or SSHSIG data).
    fn sign_raw(&self, msg: &[u8]) -> Result<Signature, SignerError>;

    /// `SHA256:…` fingerprint, the key's name everywhere.
    fn fingerprint(&self) -> String {
        self.public_key().fingerprint(HashAlg::Sha256).to_string()
    }
}

/// Adapter giving any [`CaSigner`] the shape `ssh-key` wants for certificates and SSHSIG.
pub struct SshSigning<'a>(pub &'a dyn CaSigner);

impl signature::Signer<Signature> for SshSigning<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, signature::Error> {
        self.0.sign_raw(msg).map_err(signature::Error::from_source)
    }
}

impl From<&SshSigning<'_>> for KeyData {
    fn from(s: &SshSigning<'_>) -> KeyData {
        s.0.public_key().key_data().clone()
    }
}

/// Makes an armored SSHSIG over `msg` in `namespace` (SHA-512, as `ssh-keygen -Y sign`).
pub fn sshsig_armored(
    signer: &dyn CaSigner,
    namespace: &str,
    msg: &[u8],
) -> Result<String, SignerError> {
    let sig = SshSig::sign(&SshSigning(signer), namespace, HashAlg::Sha512, msg)
        .map_err(|e| SignerError::Backend(e.to_string()))?;
    sig.to_pem(LineEnding::LF)
        .map_err(|e| SignerError::Encoding(e.to_string()))
}

/// Checks an armored SSHSIG by the key `expected` over `msg` in `namespace`.
pub fn sshsig_verify(expected: &PublicKey, namespace: &str, msg: &[u8], armored: &str) -> bool {
    let Ok(sig) = SshSig::from_pem(armored.as_bytes()) else {
        return false;
    };
    sig.public_key() == expected.key_data() && expected.verify(namespace, msg, &sig).is_ok()
}
