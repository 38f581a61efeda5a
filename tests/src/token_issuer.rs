//! A stand-in automation issuer (a CI system) for token exchange: serves its discovery
//! document and JWKS over plain HTTP from a thread, and mints EdDSA ID tokens with its
//! Ed25519 test key.

use crate::proxy::proxy_jwk;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The key ID the issuer publishes its key under.
pub const KID: &str = "ci-test-key";

/// An issuer at `http://127.0.0.1:PORT` (its URL is its `iss`), serving
/// `/.well-known/openid-configuration` and `/jwks` until the process ends.
pub struct TokenIssuer {
    pub issuer: String,
    pub key: SigningKey,
    jwks_fetches: Arc<AtomicUsize>,
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh Ed25519 key from the OS random source.
pub fn random_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// A compact JWS of `claims`, signed with `key` under `kid` (EdDSA).
pub fn sign(key: &SigningKey, kid: &str, claims: &Map<String, Value>) -> String {
    let header = json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"});
    let h = b64(serde_json::to_vec(&header).unwrap_or_default());
    let p = b64(serde_json::to_vec(claims).unwrap_or_default());
    let sig = key.sign(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", b64(sig.to_bytes()))
}

impl TokenIssuer {
    pub fn start() -> TokenIssuer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let issuer = format!(
            "http://{}",
            listener.local_addr().expect("the listener's address")
        );
        let key = random_key();
        let mut jwk = proxy_jwk(&key);
        jwk["kid"] = json!(KID);
        let jwks = json!({ "keys": [jwk] }).to_string();
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "authorization_endpoint": format!("{issuer}/authorize"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
        })
        .to_string();
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&fetches);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req);
                let (status, text) = if head.starts_with("GET /.well-known/openid-configuration ") {
                    ("200 OK", discovery.clone())
                } else if head.starts_with("GET /jwks ") {
                    counter.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", jwks.clone())
                } else {
                    ("404 Not Found", "{}".to_string())
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        TokenIssuer {
            issuer,
            key,
            jwks_fetches: fetches,
        }
    }

    /// How often `/jwks` was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a valid token for `subject`: this issuer, `audience`, five minutes of life,
    /// a fresh `jti`, and `extra` merged in last (a `Value::Null` removes a claim).
    pub fn claims(&self, subject: &str, audience: &str, extra: Value) -> Map<String, Value> {
        let now = crate::keys::now_unix();
        let mut c = Map::new();
        c.insert("iss".into(), json!(self.issuer));
        c.insert("sub".into(), json!(subject));
        c.insert("aud".into(), json!(audience));
        c.insert("iat".into(), json!(now));
        c.insert("exp".into(), json!(now + 300));
        c.insert(
            "jti".into(),
            json!(format!("{:016x}", rand::random::<u64>())),
        );
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                if v.is_null() {
                    c.remove(&k);
                } else {
                    c.insert(k, v);
                }
            }
        }
        c
    }

    /// A token signed with this issuer's published key.
    pub fn mint(&self, claims: &Map<String, Value>) -> String {
        sign(&self.key, KID, claims)
    }
}
