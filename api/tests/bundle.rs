//! Trust-bundle verification: only the pinned root's signature over an unexpired,
//! well-formed bundle is accepted.

use pedm_api::{BundleError, BundleKey, KeyState, SignedBundle, TrustBundle, BUNDLE_NAMESPACE};
use ssh_key::{rand_core::OsRng, Algorithm, HashAlg, LineEnding, PrivateKey};

fn key() -> PrivateKey {
    PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap()
}

fn fp(k: &PrivateKey) -> String {
    k.public_key().fingerprint(HashAlg::Sha256).to_string()
}

fn bundle_with(ca: &PrivateKey, state: KeyState) -> TrustBundle {
    TrustBundle {
        version: 3,
        issued_at: 1_000,
        expires_at: 2_000,
        keys: vec![BundleKey {
            fingerprint: fp(ca),
            public_key: ca.public_key().to_openssh().unwrap().trim().to_string(),
            state,
        }],
    }
}

fn sign(root: &PrivateKey, namespace: &str, payload: &[u8]) -> SignedBundle {
    let sig = root.sign(namespace, HashAlg::Sha512, payload).unwrap();
    SignedBundle::from_parts(payload, sig.to_pem(LineEnding::LF).unwrap())
}

#[test]
fn accepts_the_pinned_roots_bundle() {
    let (root, ca) = (key(), key());
    let b = bundle_with(&ca, KeyState::Active);
    let signed = sign(&root, BUNDLE_NAMESPACE, &b.to_payload());
    assert_eq!(signed.verify(&fp(&root), 1_500).unwrap(), b);
    assert!(b.trusted_user_ca_keys().starts_with(&b.keys[0].public_key));
}

#[test]
fn refuses_another_signer() {
    let (root, other, ca) = (key(), key(), key());
    let b = bundle_with(&ca, KeyState::Active);
    let signed = sign(&other, BUNDLE_NAMESPACE, &b.to_payload());
    assert!(matches!(
        signed.verify(&fp(&root), 1_500),
        Err(BundleError::WrongSigner { .. })
    ));
}

#[test]
fn refuses_other_namespace() {
    let (root, ca) = (key(), key());
    let b = bundle_with(&ca, KeyState::Active);
    let signed = sign(&root, "file", &b.to_payload());
    assert!(matches!(
        signed.verify(&fp(&root), 1_500),
        Err(BundleError::WrongNamespace(_))
    ));
}

#[test]
fn refuses_tampered_payload() {
    let (root, ca, evil) = (key(), key(), key());
    let b = bundle_with(&ca, KeyState::Active);
    let signed = sign(&root, BUNDLE_NAMESPACE, &b.to_payload());
    let tampered = SignedBundle::from_parts(
        &bundle_with(&evil, KeyState::Active).to_payload(),
        signed.signature,
    );
    assert_eq!(
        tampered.verify(&fp(&root), 1_500),
        Err(BundleError::BadSignature)
    );
}

#[test]
fn refuses_expired() {
    let (root, ca) = (key(), key());
    let b = bundle_with(&ca, KeyState::Active);
    let signed = sign(&root, BUNDLE_NAMESPACE, &b.to_payload());
    assert_eq!(
        signed.verify(&fp(&root), 2_000),
        Err(BundleError::Expired {
            version: 3,
            expires_at: 2_000
        })
    );
}

#[test]
fn refuses_malformed_content_even_when_signed() {
    let (root, ca) = (key(), key());
    // No active key.
    let b = bundle_with(&ca, KeyState::Next);
    let signed = sign(&root, BUNDLE_NAMESPACE, &b.to_payload());
    assert!(matches!(
        signed.verify(&fp(&root), 1_500),
        Err(BundleError::Malformed(_))
    ));
    // Fingerprint that does not match the key.
    let mut b = bundle_with(&ca, KeyState::Active);
    b.keys[0].fingerprint = fp(&root);
    let signed = sign(&root, BUNDLE_NAMESPACE, &b.to_payload());
    assert!(matches!(
        signed.verify(&fp(&root), 1_500),
        Err(BundleError::Malformed(_))
    ));
    // Garbage signature.
    let signed = SignedBundle::from_parts(b"{}", "not a signature".into());
    assert!(matches!(
        signed.verify(&fp(&root), 1_500),
        Err(BundleError::BadSignatureEncoding(_))
    ));
}
