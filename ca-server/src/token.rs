//! Token exchange for automation (`POST /v1/auth/token`): ID tokens of `[[trusted_issuers]]`
//! (CI systems, workload identity) become sessions of automation identities.
//!
//! A token is verified by `openidconnect` against its issuer's JWKS with the same algorithm
//! allow-list as sign-in ([`crate::oidc::ALLOWED_ALGS`]): signature, `iss`, `aud`, `exp`,
//! `iat`. On top of that `aud` must be exactly the one configured audience (a token that
//! names other audiences too is refused), and a `jti` is required: the [`ReplayCache`]
//! refuses a `jti` seen before while its token is still valid.
//!
//! The identity's username and only principal is `<principal_prefix>.<subject>`, so it can
//! never equal a person's name: the policy refuses any person whose username starts with a
//! configured `<principal_prefix>.`, and prefixes are unique per issuer.

use crate::config::TrustedIssuerConfig;
use crate::names::{Principal, Username};
use crate::oidc::{OidcError, ALLOWED_ALGS};
use base64::Engine as _;
use openidconnect::core::{CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet};
use openidconnect::{
    ClaimsVerificationError, ClientId, IssuerUrl, Nonce, SignatureVerificationError,
};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest time between two JWKS fetches for one issuer after the first, so a flood of
/// tokens with made-up key IDs cannot make the CA hammer the issuer.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Most `jti`s remembered at once; beyond that new tokens are refused until old ones
/// expire (only tokens with a valid signature of a trusted issuer get this far).
const REPLAY_CACHE_MAX: usize = 100_000;

/// Why a token was refused; messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// 401 `id-token-refused`.
    #[error("the ID token was refused: {0}")]
    IdToken(String),
    /// 503: the issuer's keys could not be fetched.
    #[error("the token issuer is unavailable: {0}")]
    Unavailable(String),
    /// 403 `no-role`.
    #[error("{0}")]
    NoRole(String),
}

impl From<OidcError> for TokenRefusal {
    fn from(e: OidcError) -> Self {
        match e {
            OidcError::Unavailable(m) => TokenRefusal::Unavailable(m),
            OidcError::GrantRefused(m) | OidcError::IdToken(m) => TokenRefusal::IdToken(m),
        }
    }
}

fn refused(m: impl Into<String>) -> TokenRefusal {
    TokenRefusal::IdToken(m.into())
}

/// A verified automation identity.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    pub issuer: String,
    pub subject: String,
    /// `<principal_prefix>.<subject>`: the username and only principal.
    pub username: Username,
    pub principal: Principal,
    /// Mapped through `roles_from`, never empty, sorted.
    pub roles: Vec<String>,
}

/// `jti`s seen per issuer, each kept until its token's `exp`.
///
/// In memory only: a restart of the CA forgets it, so a token captured before a restart can
/// be replayed once more until it expires. Keep issuer token lifetimes short. Entries are
/// pruned by expiry on every use.
#[derive(Debug, Default)]
pub struct ReplayCache {
    seen: Mutex<HashMap<(String, String), i64>>,
}

impl ReplayCache {
    /// Records `jti` of `issuer`, valid until `exp`; false (refuse) when it was seen already
    /// and has not expired, or the cache is full.
    pub fn first_use(&self, issuer: &str, jti: &str, exp: i64, now: i64) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        seen.retain(|_, e| *e > now);
        let key = (issuer.to_string(), jti.to_string());
        if seen.contains_key(&key) || seen.len() >= REPLAY_CACHE_MAX {
            return false;
        }
        seen.insert(key, exp);
        true
    }

    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Keys {
    jwks: Option<CoreJsonWebKeySet>,
    fetched: Option<Instant>,
}

/// One trusted issuer with its cached keys.
pub struct TrustedIssuer {
    pub config: TrustedIssuerConfig,
    keys: tokio::sync::Mutex<Keys>,
}

/// Every trusted issuer, the HTTP client that fetches their keys, and the replay cache.
pub struct TokenExchange {
    issuers: Vec<TrustedIssuer>,
    http: reqwest::Client,
    pub replay: ReplayCache,
}

/// The `iss` of a compact JWS, without verifying anything (only to pick the issuer).
pub fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

fn payload(token: &str) -> Result<Map<String, Value>, TokenRefusal> {
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        .ok_or_else(|| refused("its payload is not a JSON object"))
}

/// `aud` is exactly `audience`: the string, or an array holding only it.
pub fn audience_is_exactly(claims: &Map<String, Value>, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(a)) => a.len() == 1 && a[0].as_str() == Some(audience),
        _ => false,
    }
}

/// The roles `roles_from` maps the claim's value (a string or an array of strings) to.
pub fn mapped_roles(config: &TrustedIssuerConfig, claims: &Map<String, Value>) -> Vec<String> {
    let values: Vec<&str> = match claims.get(&config.roles_from.claim) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    values
        .into_iter()
        .filter_map(|v| config.roles_from.map.get(v).cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `<prefix>.<subject>`, with the subject checked like a username.
pub fn automation_name(prefix: &str, subject: &str) -> Result<(Username, Principal), String> {
    Username::new(subject).map_err(|e| format!("its subject is not a safe name: {e}"))?;
    let name = format!("{prefix}.{subject}");
    let username = Username::new(&name).map_err(|_| {
        format!("the name {name:?} is longer than 32 characters or otherwise not a username")
    })?;
    let principal = Principal::new(&name).map_err(|e| e.to_string())?;
    Ok((username, principal))
}

impl TokenExchange {
    pub fn new(configs: &[TrustedIssuerConfig]) -> Result<Self, OidcError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        Ok(Self {
            issuers: configs
                .iter()
                .map(|c| TrustedIssuer {
                    config: c.clone(),
                    keys: tokio::sync::Mutex::new(Keys {
                        jwks: None,
                        fetched: None,
                    }),
                })
                .collect(),
            http,
            replay: ReplayCache::default(),
        })
    }

    /// The configuration of `issuer`, if trusted.
    pub fn issuer(&self, issuer: &str) -> Option<&TrustedIssuerConfig> {
        self.issuers
            .iter()
            .find(|i| i.config.issuer == issuer)
            .map(|i| &i.config)
    }

    async fn get_json(&self, url: &str) -> Result<Value, TokenRefusal> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| TokenRefusal::Unavailable(format!("fetching {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(TokenRefusal::Unavailable(format!(
                "{url} answered HTTP {}",
                resp.status()
            )));
        }
        resp.json()
            .await
            .map_err(|e| TokenRefusal::Unavailable(format!("{url} is not JSON: {e}")))
    }

    async fn fetch_jwks(&self, c: &TrustedIssuerConfig) -> Result<CoreJsonWebKeySet, TokenRefusal> {
        let uri = match &c.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    c.issuer.trim_end_matches('/')
                );
                let doc = self.get_json(&url).await?;
                if doc.get("issuer").and_then(Value::as_str) != Some(c.issuer.as_str()) {
                    return Err(TokenRefusal::Unavailable(format!(
                        "the discovery document at {url} names another issuer"
                    )));
                }
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| TokenRefusal::Unavailable(format!("{url} has no jwks_uri")))?
            }
        };
        let v = self.get_json(&uri).await?;
        serde_json::from_value(v)
            .map_err(|e| TokenRefusal::Unavailable(format!("{uri} is not a JWKS: {e}")))
    }

    /// The issuer's keys: fetched on first use, and again (`refresh`) at most every
    /// [`JWKS_REFETCH_INTERVAL`].
    async fn keys(
        &self,
        i: &TrustedIssuer,
        refresh: bool,
    ) -> Result<CoreJsonWebKeySet, TokenRefusal> {
        let mut k = i.keys.lock().await;
        let recent = k
            .fetched
            .is_some_and(|t| t.elapsed() < JWKS_REFETCH_INTERVAL);
        if let Some(jwks) = &k.jwks {
            if !refresh || recent {
                return Ok(jwks.clone());
            }
        } else if recent {
            return Err(TokenRefusal::Unavailable(
                "the issuer's keys could not be fetched recently; try again later".into(),
            ));
        }
        k.fetched = Some(Instant::now());
        let jwks = self.fetch_jwks(&i.config).await?;
        k.jwks = Some(jwks.clone());
        Ok(jwks)
    }

    /// Verifies `token` and maps it to an automation identity. `now` is unix seconds.
    pub async fn verify(&self, token: &str, now: i64) -> Result<TokenIdentity, TokenRefusal> {
        let iss =
            unverified_issuer(token).ok_or_else(|| refused("it is not a JWT with an iss claim"))?;
        let i = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| refused("its iss is not a trusted issuer ([[trusted_issuers]])"))?;
        let c = &i.config;
        let id_token: CoreIdToken = serde_json::from_value(Value::String(token.to_string()))
            .map_err(|e| refused(format!("it does not parse as an ID token: {e}")))?;
        let issuer_url = IssuerUrl::new(c.issuer.clone())
            .map_err(|e| TokenRefusal::Unavailable(format!("the issuer is not a URL: {e}")))?;
        let check = |jwks: CoreJsonWebKeySet| -> Result<(), ClaimsVerificationError> {
            let verifier = CoreIdTokenVerifier::new_public_client(
                ClientId::new(c.audience.clone()),
                issuer_url.clone(),
                jwks,
            )
            .set_allowed_algs(ALLOWED_ALGS);
            // No nonce: the token was not minted for a sign-in of ours (the `jti` replay
            // cache and the exact audience bind it instead).
            id_token
                .claims(&verifier, |_: Option<&Nonce>| Ok(()))
                .map(|_| ())
        };
        let first = check(self.keys(i, false).await?);
        let result = match first {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => match check(self.keys(i, true).await?) {
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) => Err(refused("it is signed by a key the issuer does not publish")),
                other => other.map_err(|e| refused(describe(&e))),
            },
            other => other.map_err(|e| refused(describe(&e))),
        };
        result?;
        let claims = payload(token)?;
        if !audience_is_exactly(&claims, &c.audience) {
            return Err(refused(format!(
                "its audience (aud) must be exactly {:?} and nothing else",
                c.audience
            )));
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| refused("it has no exp"))?;
        if exp <= now {
            return Err(refused("it has expired (exp)"));
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| refused("it has no jti (needed to refuse replays)"))?;
        if !self.replay.first_use(&c.issuer, jti, exp, now) {
            return Err(refused("its jti was used before (a replayed token)"));
        }
        let subject = match claims.get(&c.subject_claim) {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(refused(format!(
                    "it has no string {:?} claim for the subject",
                    c.subject_claim
                )))
            }
        };
        let (username, principal) =
            automation_name(&c.principal_prefix, &subject).map_err(refused)?;
        let roles = mapped_roles(c, &claims);
        if roles.is_empty() {
            return Err(TokenRefusal::NoRole(format!(
                "no value of its {:?} claim maps to a role (roles_from.map)",
                c.roles_from.claim
            )));
        }
        Ok(TokenIdentity {
            issuer: c.issuer.clone(),
            subject,
            username,
            principal,
            roles,
        })
    }
}

/// What a base certificate of an automation session carries now, re-derived from the
/// configuration (so a role or issuer removed stops issuing at once): the one principal
/// `<principal_prefix>.<subject>`, the extensions of the session's roles that the issuer
/// still maps to, and the shortest of the issuer's `max_cert_ttl` and those roles' TTLs.
pub fn automation_grant(
    issuer: Option<&TrustedIssuerConfig>,
    policy: &crate::policy::Policy,
    user: &str,
    subject: &str,
    session_roles: &[String],
) -> Result<crate::policy::BaseGrant, String> {
    let c = issuer.ok_or("the session's issuer is no longer a trusted issuer")?;
    let (username, principal) = automation_name(&c.principal_prefix, subject)?;
    if username.as_str() != user {
        return Err("the session's name no longer matches its issuer's principal_prefix".into());
    }
    if let Some(why) = policy.reserved_or_privileged(principal.as_str()) {
        return Err(format!("the name {principal} is {why}"));
    }
    let mapped: BTreeSet<&str> = c.roles_from.map.values().map(String::as_str).collect();
    let roles: Vec<&crate::policy::Role> = policy
        .roles
        .iter()
        .filter(|r| mapped.contains(r.name.as_str()) && session_roles.contains(&r.name))
        .collect();
    if roles.is_empty() {
        return Err("none of the session's roles is still mapped by its issuer".into());
    }
    let mut ttl = c.max_cert_ttl.0;
    let mut extensions = BTreeSet::new();
    for r in &roles {
        ttl = ttl.min(r.max_cert_ttl.unwrap_or(policy.default_ttl));
        extensions.extend(r.extensions.iter().cloned());
    }
    Ok(crate::policy::BaseGrant {
        roles: roles.iter().map(|r| r.name.clone()).collect(),
        principals: vec![principal],
        extensions,
        ttl,
    })
}

fn describe(e: &ClaimsVerificationError) -> String {
    match e {
        ClaimsVerificationError::Expired(_) => "it has expired (exp)".into(),
        ClaimsVerificationError::InvalidAudience(_) => {
            "its audience (aud) is not this CA's configured audience".into()
        }
        ClaimsVerificationError::InvalidIssuer(_) => "its issuer (iss) does not match".into(),
        ClaimsVerificationError::SignatureVerification(s) => match s {
            SignatureVerificationError::DisallowedAlg(a) => {
                format!("its signature algorithm {a} is not allowed (asymmetric algorithms only)")
            }
            SignatureVerificationError::NoSignature => "it is not signed".into(),
            _ => "its signature does not verify".into(),
        },
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replay_cache_refuses_a_second_use_until_expiry() {
        let c = ReplayCache::default();
        assert!(c.first_use("https://ci", "j1", 100, 50));
        assert!(!c.first_use("https://ci", "j1", 100, 60));
        // Per issuer.
        assert!(c.first_use("https://other", "j1", 100, 60));
        assert!(c.first_use("https://ci", "j2", 80, 60));
        assert_eq!(c.len(), 3);
        // Pruned by expiry: j2 (exp 80) is gone at 80, j1 stays until 100.
        assert!(c.first_use("https://ci", "j3", 200, 80));
        assert_eq!(c.len(), 3);
        assert!(!c.first_use("https://ci", "j1", 100, 99));
        assert!(c.first_use("https://ci", "j1", 300, 100));
    }

    #[test]
    fn audience_must_be_exactly_one() {
        let m = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(audience_is_exactly(&m(json!({"aud": "ca"})), "ca"));
        assert!(audience_is_exactly(&m(json!({"aud": ["ca"]})), "ca"));
        assert!(!audience_is_exactly(&m(json!({"aud": ["ca", "x"]})), "ca"));
        assert!(!audience_is_exactly(&m(json!({"aud": "x"})), "ca"));
        assert!(!audience_is_exactly(&m(json!({})), "ca"));
    }

    #[test]
    fn names_carry_the_prefix() {
        let (u, p) = automation_name("ci", "alice").unwrap();
        assert_eq!(u.as_str(), "ci.alice");
        assert_eq!(p.as_str(), "ci.alice");
        assert!(automation_name("ci", "Alice").is_err());
        assert!(automation_name("ci", "a/b").is_err());
        assert!(automation_name("ci", "").is_err());
        assert!(automation_name("ci", &"a".repeat(30)).is_err());
        assert!(automation_name("ci", &"a".repeat(29)).is_ok());
    }
}
