//! The pure rules of the browser sign-in: which redirect URIs are acceptable, what a login
//! secret and its hash look like, and how secrets are turned into the hashes the store keeps.
//!
//! The CLI proves it is the one that started a login by presenting the `login_secret` whose
//! SHA-256 it gave at start; the `state` alone (visible in browser history) is not enough.
//! Tokens, states and secrets are stored only as SHA-256 hashes.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a pending login waits for its callback.
pub const PENDING_LOGIN_SECS: i64 = 300;

/// Why a redirect URI or a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginInputError {
    #[error("redirect_uri {0} must be exactly http://127.0.0.1:PORT/callback (RFC 8252 loopback, explicit port, no user info, query or fragment)")]
    RedirectUri(String),
    #[error("redirect_uri must use port {expected}, the one this CA's identity provider accepts")]
    RedirectPort { expected: u16 },
    #[error(
        "login_secret_sha256 must be 64 lowercase hex characters (the SHA-256 of the login secret)"
    )]
    SecretHash,
    #[error("login_secret must be the 64 lowercase hex characters generated at start")]
    Secret,
}

/// Accepts `redirect_uri` only if it is, byte for byte, what a URL parser serialises to
/// `http://127.0.0.1:{port}/callback`; returns the port. With `fixed_port`, the port must be
/// that one.
pub fn check_redirect_uri(text: &str, fixed_port: Option<u16>) -> Result<u16, LoginInputError> {
    let refused = || LoginInputError::RedirectUri(format!("{text:?}"));
    let url = url::Url::parse(text).map_err(|_| refused())?;
    let port = match (url.scheme(), url.host(), url.port()) {
        ("http", Some(url::Host::Ipv4(ip)), Some(port)) if ip.octets() == [127, 0, 0, 1] => port,
        _ => return Err(refused()),
    };
    if port == 0 {
        return Err(refused());
    }
    let expected = format!("http://127.0.0.1:{port}/callback");
    if url.as_str() != expected || text != expected {
        return Err(refused());
    }
    if let Some(fixed) = fixed_port {
        if fixed != port {
            return Err(LoginInputError::RedirectPort { expected: fixed });
        }
    }
    Ok(port)
}

fn is_lower_hex_64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks the hash the CLI sends at start.
pub fn check_secret_hash(s: &str) -> Result<(), LoginInputError> {
    if is_lower_hex_64(s) {
        Ok(())
    } else {
        Err(LoginInputError::SecretHash)
    }
}

/// Checks the secret the CLI sends at finish and returns its hash.
pub fn secret_hash(secret: &str) -> Result<String, LoginInputError> {
    if is_lower_hex_64(secret) {
        Ok(sha256_hex(secret))
    } else {
        Err(LoginInputError::Secret)
    }
}

/// Lowercase hex SHA-256 of the text's bytes: how sessions, states and secrets are stored.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Constant-time equality of two hashes.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// RFC 9207: the `iss` on the callback must be the configured issuer; it must be present when
/// the IdP advertises that it always sends it.
pub fn check_callback_issuer(
    iss: Option<&str>,
    issuer: &str,
    required: bool,
) -> Result<(), String> {
    match iss {
        Some(i) if i == issuer => Ok(()),
        Some(i) => Err(format!(
            "the callback's iss {i:?} is not the configured issuer: the response may come from another identity provider (mix-up attack)"
        )),
        None if required => Err(
            "the callback carries no iss although the identity provider always sends one".into(),
        ),
        None => Ok(()),
    }
}

/// A new 256-bit random token, base64url without padding.
pub fn new_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_loopback_callbacks() {
        assert_eq!(
            check_redirect_uri("http://127.0.0.1:4321/callback", None),
            Ok(4321)
        );
        for bad in [
            "http://127.0.0.1:1@evil.example/callback",
            "https://127.0.0.1:1/callback",
            "http://localhost:1/callback",
            "http://127.0.0.1:1/other",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:0/callback",
            "http://127.0.0.1:80/callback",
            "http://127.0.0.1:1/callback?x=1",
            "http://127.0.0.1:1/callback#f",
            "http://127.0.0.1:1/callback/",
            "http://127.0.0.1:01/callback",
            "http://127.1:1/callback",
            "http://[::1]:1/callback",
            "http://user@127.0.0.1:1/callback",
            "HTTP://127.0.0.1:1/callback",
            "http://127.0.0.1:1/./callback",
            "http://127.0.0.1:1/Callback",
            " http://127.0.0.1:1/callback",
            "http://127.0.0.2:1/callback",
            "",
        ] {
            assert!(check_redirect_uri(bad, None).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fixed_port_is_enforced() {
        assert_eq!(
            check_redirect_uri("http://127.0.0.1:8250/callback", Some(8250)),
            Ok(8250)
        );
        assert_eq!(
            check_redirect_uri("http://127.0.0.1:8251/callback", Some(8250)),
            Err(LoginInputError::RedirectPort { expected: 8250 })
        );
    }

    #[test]
    fn secrets_and_hashes() {
        let secret = "ab".repeat(32);
        let h = secret_hash(&secret).unwrap();
        assert!(check_secret_hash(&h).is_ok());
        assert_eq!(h, sha256_hex(&secret));
        assert!(same_hash(&h, &sha256_hex(&secret)));
        assert!(!same_hash(&h, &sha256_hex(&"cd".repeat(32))));
        assert!(!same_hash(&h, &h[..63]));
        for bad in [
            "",
            "AB".repeat(32).as_str(),
            &"a".repeat(63),
            &"g".repeat(64),
        ] {
            assert_eq!(secret_hash(bad), Err(LoginInputError::Secret), "{bad:?}");
            assert_eq!(check_secret_hash(bad), Err(LoginInputError::SecretHash));
        }
    }

    #[test]
    fn callback_issuer() {
        let i = "http://127.0.0.1:9/idp";
        assert!(check_callback_issuer(Some(i), i, true).is_ok());
        assert!(check_callback_issuer(None, i, false).is_ok());
        assert!(check_callback_issuer(None, i, true).is_err());
        assert!(check_callback_issuer(Some("http://evil"), i, false).is_err());
        assert!(check_callback_issuer(Some(&format!("{i}/")), i, false).is_err());
    }

    #[test]
    fn tokens_are_distinct() {
        assert_ne!(new_token(), new_token());
        assert_eq!(new_token().len(), 43);
    }
}
