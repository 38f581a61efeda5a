//! KRL verification: only the active key of the accepted bundle may publish a KRL, and only
//! an unexpired one that is not older than the installed one is accepted.

use base64::Engine as _;
use pedm_api::krl::{KrlError, KrlPayload, SignedKrl, KRL_NAMESPACE};
use pedm_api::{BundleKey, KeyState, TrustBundle};
use ssh_key::{rand_core::OsRng, Algorithm, HashAlg, LineEnding, PrivateKey};

const EMPTY_KRL: &[u8] = b"SSHKRL\n\0\0\0\0\x01";

fn key() -> PrivateKey {
    PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap()
}

fn fp(k: &PrivateKey) -> String {
    k.public_key().fingerprint(HashAlg::Sha256).to_string()
}

fn entry(k: &PrivateKey, state: KeyState) -> BundleKey {
    BundleKey {
        fingerprint: fp(k),
        public_key: k.public_key().to_openssh().unwrap().trim().to_string(),
        state,
    }
}

struct Keys {
    active: PrivateKey,
    next: PrivateKey,
    retired: PrivateKey,
    revoked: PrivateKey,
}

fn keys() -> Keys {
    Keys {
        active: key(),
        next: key(),
        retired: key(),
        revoked: key(),
    }
}

fn bundle(k: &Keys) -> TrustBundle {
    TrustBundle {
        version: 4,
        issued_at: 1_000,
        expires_at: 9_000,
        keys: vec![
            entry(&k.active, KeyState::Active),
            entry(&k.next, KeyState::Next),
            entry(&k.retired, KeyState::Retired),
            entry(&k.revoked, KeyState::Revoked),
        ],
    }
}

fn payload(signer: &PrivateKey, version: u64, expires_at: i64) -> Vec<u8> {
    serde_json::to_vec(&KrlPayload {
        version,
        issued_at: 1_000,
        expires_at,
        ca_key: fp(signer),
        krl: base64::engine::general_purpose::STANDARD.encode(EMPTY_KRL),
    })
    .unwrap()
}

fn sign(signer: &PrivateKey, namespace: &str, payload: &[u8]) -> SignedKrl {
    let sig = signer.sign(namespace, HashAlg::Sha512, payload).unwrap();
    SignedKrl::from_parts(payload, sig.to_pem(LineEnding::LF).unwrap())
}

#[test]
fn accepts_the_active_keys_krl() {
    let k = keys();
    let signed = sign(&k.active, KRL_NAMESPACE, &payload(&k.active, 7, 2_000));
    let v = signed.verify(&bundle(&k), 1_500, Some(7)).unwrap();
    assert_eq!(v.krl, EMPTY_KRL);
    assert_eq!(v.payload.version, 7);
}

#[test]
fn refuses_every_key_but_the_active_one() {
    let k = keys();
    let stranger = key();
    for signer in [&k.next, &k.retired, &k.revoked, &stranger] {
        let signed = sign(signer, KRL_NAMESPACE, &payload(signer, 7, 2_000));
        assert!(
            matches!(
                signed.verify(&bundle(&k), 1_500, None),
                Err(KrlError::NotActiveKey { .. })
            ),
            "{}",
            fp(signer)
        );
    }
}

#[test]
fn refuses_tampered_expired_older_and_foreign_namespace() {
    let k = keys();
    let b = bundle(&k);
    let good = payload(&k.active, 7, 2_000);
    let mut signed = sign(&k.active, KRL_NAMESPACE, &good);
    let mut altered = good.clone();
    let at = altered.iter().position(|&c| c == b'7').unwrap();
    altered[at] = b'8';
    signed.payload = base64::engine::general_purpose::STANDARD.encode(&altered);
    assert_eq!(signed.verify(&b, 1_500, None), Err(KrlError::BadSignature));

    let signed = sign(&k.active, KRL_NAMESPACE, &good);
    assert!(matches!(
        signed.verify(&b, 2_000, None),
        Err(KrlError::Expired { .. })
    ));
    assert!(matches!(
        signed.verify(&b, 1_500, Some(8)),
        Err(KrlError::Rollback {
            offered: 7,
            installed: 8
        })
    ));
    let bundle_sig = sign(&k.active, "trust-bundle@pedm-ssh", &good);
    assert!(matches!(
        bundle_sig.verify(&b, 1_500, None),
        Err(KrlError::WrongNamespace(_))
    ));
}

#[test]
fn refuses_a_payload_naming_another_key_or_without_krl_magic() {
    let k = keys();
    let b = bundle(&k);
    let lying = payload(&k.next, 7, 2_000);
    let signed = sign(&k.active, KRL_NAMESPACE, &lying);
    assert!(matches!(
        signed.verify(&b, 1_500, None),
        Err(KrlError::Malformed(_))
    ));
    let not_krl = serde_json::to_vec(&KrlPayload {
        version: 1,
        issued_at: 1_000,
        expires_at: 2_000,
        ca_key: fp(&k.active),
        krl: base64::engine::general_purpose::STANDARD.encode(b"not a krl"),
    })
    .unwrap();
    let signed = sign(&k.active, KRL_NAMESPACE, &not_krl);
    assert!(matches!(
        signed.verify(&b, 1_500, None),
        Err(KrlError::Malformed(_))
    ));
}
