//! The CA as OpenID Connect relying party: discovery, the authorization request (PKCE S256,
//! `nonce`, `max_age`), the code exchange and ID-token verification.
//!
//! The CA is the only holder of the client secret; the CLI never talks to the IdP except
//! through a browser. ID tokens are verified by `openidconnect` against the issuer's JWKS with
//! an explicit algorithm allow-list (never `none`, never HMAC: a MAC keyed with the client
//! secret would let anyone holding that secret mint identities), for `iss`, `aud`, `exp`,
//! `iat` and `nonce`. The claims the policy reads are taken from the payload whose signature
//! was just verified, so every claim type the IdP sends reaches the policy unchanged.

use base64::Engine as _;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreIdToken, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, NonceVerifier,
    PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Signature algorithms accepted on ID tokens: asymmetric only.
pub const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 7] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Scopes requested at sign-in.
const SCOPES: [&str; 3] = ["email", "profile", "groups"];

/// The shortest time between two JWKS re-fetches on an unknown `kid`, so a flood of tokens
/// with made-up key IDs cannot make the CA hammer the IdP.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Discovery fields `openidconnect` does not model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraMetadata {
    /// RFC 9207: the IdP puts `iss` on every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    /// RFC 8628: where the CA asks for a device code.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type RpClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in failed at or after the IdP. Messages never contain tokens or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// Discovery, JWKS or the token endpoint could not be reached or answered garbage.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The token endpoint refused the code (reused, expired, wrong verifier or redirect URI).
    #[error("the identity provider refused the authorization code: {0}; sign in again")]
    GrantRefused(String),
    /// The ID token failed verification.
    #[error("the ID token was refused: {0}")]
    IdToken(String),
}

/// What the relying party is configured with.
#[derive(Clone)]
pub struct RpSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Sent as `max_age`, so the IdP returns `auth_time`; an older `auth_time` is refused.
    pub max_age: Duration,
    /// Tolerance for the IdP's clock on `auth_time`.
    pub clock_skew: Duration,
}

impl std::fmt::Debug for RpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// One authorization request, to be kept by the CA until the callback comes back.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// A verified ID token.
#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    pub issuer: String,
    pub subject: String,
    /// Unix seconds; present when the IdP honoured `max_age`.
    pub auth_time: Option<i64>,
    /// Every claim of the verified payload.
    pub claims: Map<String, Value>,
}

struct Discovered {
    metadata: Metadata,
    client: RpClient,
}

/// The relying party. Discovery happens on first use and is retried until it succeeds, so
/// the CA starts even while the IdP is down (break-glass still works then).
pub struct RelyingParty {
    settings: RpSettings,
    issuer_url: IssuerUrl,
    http: reqwest::Client,
    discovered: tokio::sync::RwLock<Option<Arc<Discovered>>>,
    last_jwks_fetch: Mutex<Option<Instant>>,
}

fn now_secs() -> i64 {
    crate::authority::now_secs()
}

impl RelyingParty {
    pub fn new(settings: RpSettings) -> Result<Self, OidcError> {
        let issuer_url = IssuerUrl::new(settings.issuer.clone())
            .map_err(|e| OidcError::Unavailable(format!("oidc.issuer is not a URL: {e}")))?;
        // No redirects: the IdP's endpoints are taken from discovery, never from a 30x.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        Ok(Self {
            settings,
            issuer_url,
            http,
            discovered: tokio::sync::RwLock::new(None),
            last_jwks_fetch: Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    fn client_for(&self, metadata: &Metadata) -> RpClient {
        CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.clone())),
        )
    }

    async fn discovered(&self) -> Result<Arc<Discovered>, OidcError> {
        if let Some(d) = self.discovered.read().await.as_ref() {
            return Ok(d.clone());
        }
        let mut slot = self.discovered.write().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let metadata = Metadata::discover_async(self.issuer_url.clone(), &self.http)
            .await
            .map_err(|e| {
                OidcError::Unavailable(format!(
                    "discovery at {} failed: {}",
                    self.settings.issuer,
                    error_chain(&e)
                ))
            })?;
        if let Ok(mut t) = self.last_jwks_fetch.lock() {
            *t = Some(Instant::now());
        }
        let d = Arc::new(Discovered {
            client: self.client_for(&metadata),
            metadata,
        });
        *slot = Some(d.clone());
        Ok(d)
    }

    /// Whether the IdP promises RFC 9207 `iss` on authorization responses (then it is
    /// required on the callback).
    pub async fn iss_parameter_required(&self) -> Result<bool, OidcError> {
        Ok(self
            .discovered()
            .await?
            .metadata
            .additional_metadata()
            .authorization_response_iss_parameter_supported)
    }

    /// Makes an authorization request for `redirect_uri` (already checked by the caller).
    /// With `reauth`, `max_age=0` makes the IdP authenticate the user again.
    pub async fn authorization(
        &self,
        redirect_uri: &str,
        reauth: bool,
    ) -> Result<AuthorizationRequest, OidcError> {
        let d = self.discovered().await?;
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| OidcError::Unavailable(format!("redirect URI: {e}")))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = crate::login::new_token();
        let nonce = crate::login::new_token();
        let (state_for_fn, nonce_for_fn) = (state.clone(), nonce.clone());
        let mut req = d
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state_for_fn),
                move || Nonce::new(nonce_for_fn),
            )
            .set_pkce_challenge(challenge)
            .set_max_age(self.max_age(reauth))
            .set_redirect_uri(Cow::Owned(redirect));
        for s in SCOPES {
            req = req.add_scope(Scope::new(s.to_string()));
        }
        let (url, _, _) = req.url();
        Ok(AuthorizationRequest {
            url: url.to_string(),
            state,
            nonce,
            pkce_verifier: verifier.secret().clone(),
        })
    }

    fn max_age(&self, reauth: bool) -> Duration {
        if reauth {
            Duration::ZERO
        } else {
            self.settings.max_age
        }
    }

    /// Exchanges the code and verifies the ID token it brings; `reauth` as at authorization.
    pub async fn redeem(
        &self,
        code: &str,
        redirect_uri: &str,
        pkce_verifier: &str,
        nonce: &str,
        reauth: bool,
    ) -> Result<VerifiedIdentity, OidcError> {
        let d = self.discovered().await?;
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| OidcError::Unavailable(format!("redirect URI: {e}")))?;
        let response = d
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Unavailable(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => {
                    OidcError::GrantRefused(r.error().as_ref().to_string())
                }
                // A token response that does not parse carries an ID token that is not a JWS
                // of ours (`alg: none` fails here): a refusal, not an outage.
                RequestTokenError::Parse(e, _) => {
                    OidcError::IdToken(format!("the token response does not parse: {e}"))
                }
                other => OidcError::Unavailable(format!(
                    "the token endpoint failed: {}",
                    error_chain(&other)
                )),
            })?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::IdToken("the token response has no id_token".into()))?
            .clone();
        let max_age = self.max_age(reauth);
        let nonce = Nonce::new(nonce.to_string());
        self.verify_with_refetch(d, &id_token, || &nonce, max_age)
            .await
    }

    /// Verifies, and on an unknown `kid` refetches the JWKS (rate-limited) and tries once more.
    async fn verify_with_refetch<'n, N: NonceVerifier>(
        &self,
        d: Arc<Discovered>,
        id_token: &CoreIdToken,
        nonce: impl Fn() -> N + 'n,
        max_age: Duration,
    ) -> Result<VerifiedIdentity, OidcError> {
        match self.verify(&d, id_token, nonce(), max_age) {
            Err(VerifyFailure::UnknownKey) => {
                let d = self.refetch_jwks(&d).await?;
                match self.verify(&d, id_token, nonce(), max_age) {
                    Ok(v) => Ok(v),
                    Err(VerifyFailure::UnknownKey) => Err(OidcError::IdToken(
                        "it is signed by a key the issuer does not publish".into(),
                    )),
                    Err(VerifyFailure::Refused(m)) => Err(OidcError::IdToken(m)),
                }
            }
            Err(VerifyFailure::Refused(m)) => Err(OidcError::IdToken(m)),
            Ok(v) => Ok(v),
        }
    }

    async fn refetch_jwks(&self, current: &Arc<Discovered>) -> Result<Arc<Discovered>, OidcError> {
        let recently = self
            .last_jwks_fetch
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() < JWKS_REFETCH_INTERVAL);
        if recently {
            return Ok(current.clone());
        }
        if let Ok(mut t) = self.last_jwks_fetch.lock() {
            *t = Some(Instant::now());
        }
        let jwks = CoreJsonWebKeySet::fetch_async(current.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| {
                OidcError::Unavailable(format!("fetching the JWKS failed: {}", error_chain(&e)))
            })?;
        let metadata = current.metadata.clone().set_jwks(jwks);
        let d = Arc::new(Discovered {
            client: self.client_for(&metadata),
            metadata,
        });
        *self.discovered.write().await = Some(d.clone());
        Ok(d)
    }

    fn verify(
        &self,
        d: &Discovered,
        id_token: &CoreIdToken,
        nonce: impl NonceVerifier,
        max_age: Duration,
    ) -> Result<VerifiedIdentity, VerifyFailure> {
        let verifier = d
            .client
            .id_token_verifier()
            .set_allowed_algs(ALLOWED_ALGS)
            .require_issuer_match(true)
            .require_audience_match(true);
        let claims = id_token.claims(&verifier, nonce).map_err(|e| match e {
            ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            ) => VerifyFailure::UnknownKey,
            other => VerifyFailure::Refused(describe_claims_error(&other)),
        })?;
        let subject = claims.subject().as_str().to_string();
        let issuer = claims.issuer().as_str().to_string();
        let auth_time = claims.auth_time().map(|t| t.timestamp());
        if let Some(t) = auth_time {
            let now = now_secs();
            let skew = self.settings.clock_skew.as_secs() as i64;
            if t > now + skew {
                return Err(VerifyFailure::Refused(
                    "auth_time lies in the future".into(),
                ));
            }
            if now - t > max_age.as_secs() as i64 + skew {
                return Err(VerifyFailure::Refused(format!(
                    "the sign-in it reports is older than max_age ({})",
                    pedm_api::duration::format(max_age)
                )));
            }
        }
        let raw = id_token.to_string();
        let payload = raw
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
            .ok_or_else(|| VerifyFailure::Refused("its payload is not a JSON object".into()))?;
        Ok(VerifiedIdentity {
            issuer,
            subject,
            auth_time,
            claims: payload,
        })
    }
}

/// What the IdP's device authorization endpoint (RFC 8628 §3.2) handed the CA.
///
/// `device_code` stays at the CA: it is never sent to the CLI, which gets a poll token of the
/// CA's own instead (see `http::device`).
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Seconds the device code lives.
    pub expires_in: u64,
    /// Seconds between polls; [`DEFAULT_DEVICE_INTERVAL`] when the IdP sends none.
    pub interval: u64,
}

/// RFC 8628 §3.2: the polling interval when the IdP gives none.
pub const DEFAULT_DEVICE_INTERVAL: u64 = 5;

/// RFC 8628 §3.5: how much longer to wait after each `slow_down`.
pub const SLOW_DOWN_STEP: u64 = 5;

/// The answer of one poll of the token endpoint with a device code.
#[derive(Debug, Clone)]
pub enum DevicePoll {
    /// `authorization_pending`: the user has not finished yet.
    Pending,
    /// `slow_down`: poll less often.
    SlowDown,
    /// `expired_token`: the device code is dead; start again.
    Expired,
    /// `access_denied`: the user (or the IdP) refused.
    Denied,
    /// Tokens, with a verified ID token. `auth_time` is always `None`.
    Done(VerifiedIdentity),
}

#[derive(Deserialize)]
struct RawDeviceAuthorization {
    device_code: String,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

#[derive(Deserialize)]
struct RawTokenError {
    error: String,
}

#[derive(Deserialize)]
struct RawTokenResponse {
    #[serde(default)]
    id_token: Option<String>,
}

/// Maps a token-endpoint `error` of a device-code poll (RFC 8628 §3.5). Any other error is
/// a refusal of the grant.
pub fn classify_device_error(error: &str) -> Result<DevicePoll, OidcError> {
    match error {
        "authorization_pending" => Ok(DevicePoll::Pending),
        "slow_down" => Ok(DevicePoll::SlowDown),
        "expired_token" => Ok(DevicePoll::Expired),
        "access_denied" => Ok(DevicePoll::Denied),
        other => Err(OidcError::GrantRefused(other.chars().take(64).collect())),
    }
}

fn check_http_url(text: &str, what: &str) -> Result<(), OidcError> {
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "https" | "http") => Ok(()),
        _ => Err(OidcError::Unavailable(format!(
            "the identity provider's {what} is not an http(s) URL"
        ))),
    }
}

/// The device flow (RFC 8628). Both calls are plain form POSTs with `client_secret_basic`,
/// made by the CA alone: the CLI never sees the device code or talks to the IdP.
impl RelyingParty {
    fn client_auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        // RFC 6749 §2.3.1: both parts form-urlencoded before Basic.
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        req.basic_auth(
            enc(&self.settings.client_id),
            Some(enc(&self.settings.client_secret)),
        )
    }

    /// Asks the IdP's `device_authorization_endpoint` for a device and user code.
    pub async fn device_authorization(&self) -> Result<DeviceAuthorization, OidcError> {
        let d = self.discovered().await?;
        let endpoint = d
            .metadata
            .additional_metadata()
            .device_authorization_endpoint
            .clone()
            .ok_or_else(|| {
                OidcError::Unavailable(
                    "the identity provider advertises no device_authorization_endpoint".into(),
                )
            })?;
        let scope = std::iter::once("openid")
            .chain(SCOPES)
            .collect::<Vec<_>>()
            .join(" ");
        let resp = self
            .client_auth(self.http.post(&endpoint))
            .form(&[("scope", scope.as_str())])
            .send()
            .await
            .map_err(|e| {
                OidcError::Unavailable(format!(
                    "the device authorization endpoint failed: {}",
                    error_chain(&e)
                ))
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            OidcError::Unavailable(format!(
                "the device authorization endpoint failed: {}",
                error_chain(&e)
            ))
        })?;
        if !status.is_success() {
            let error = serde_json::from_slice::<RawTokenError>(&bytes)
                .map(|e| e.error.chars().take(64).collect::<String>())
                .unwrap_or_else(|_| format!("HTTP {status}"));
            return Err(OidcError::Unavailable(format!(
                "the device authorization endpoint refused: {error}"
            )));
        }
        let raw: RawDeviceAuthorization = serde_json::from_slice(&bytes).map_err(|e| {
            OidcError::Unavailable(format!(
                "the device authorization response does not parse: {e}"
            ))
        })?;
        check_http_url(&raw.verification_uri, "verification_uri")?;
        if let Some(c) = &raw.verification_uri_complete {
            check_http_url(c, "verification_uri_complete")?;
        }
        Ok(DeviceAuthorization {
            device_code: raw.device_code,
            user_code: raw.user_code,
            verification_uri: raw.verification_uri,
            verification_uri_complete: raw.verification_uri_complete,
            expires_in: raw.expires_in,
            interval: raw
                .interval
                .filter(|i| *i > 0)
                .unwrap_or(DEFAULT_DEVICE_INTERVAL),
        })
    }

    /// Polls the token endpoint once with `device_code` and, on success, verifies the ID token:
    /// signature with the algorithm allow-list, `iss`, `aud`, `exp`, `iat`. Device-flow ID
    /// tokens carry no `nonce` (the CA never sent one), so here — and only here — a missing
    /// nonce is accepted; a present one is refused. The binding is instead that the CA itself
    /// received the token from the token endpoint over TLS in exchange for a device code that
    /// never left the CA. `auth_time` is dropped: a device session never counts as recent.
    pub async fn poll_device(&self, device_code: &str) -> Result<DevicePoll, OidcError> {
        let d = self.discovered().await?;
        let endpoint = d
            .metadata
            .token_endpoint()
            .ok_or_else(|| OidcError::Unavailable("no token endpoint".into()))?
            .url()
            .clone();
        let resp = self
            .client_auth(self.http.post(endpoint))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code),
            ])
            .send()
            .await
            .map_err(|e| {
                OidcError::Unavailable(format!("the token endpoint failed: {}", error_chain(&e)))
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            OidcError::Unavailable(format!("the token endpoint failed: {}", error_chain(&e)))
        })?;
        // An `error` member is an error whatever the status says (RFC 6749 §5.2 says 400).
        if let Ok(e) = serde_json::from_slice::<RawTokenError>(&bytes) {
            return classify_device_error(&e.error);
        }
        if !status.is_success() {
            return Err(OidcError::Unavailable(format!(
                "the token endpoint answered HTTP {status}"
            )));
        }
        let raw: RawTokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| OidcError::IdToken(format!("the token response does not parse: {e}")))?;
        let text = raw
            .id_token
            .ok_or_else(|| OidcError::IdToken("the token response has no id_token".into()))?;
        let id_token: CoreIdToken = serde_json::from_value(Value::String(text))
            .map_err(|e| OidcError::IdToken(format!("the id_token does not parse: {e}")))?;
        let no_nonce = || {
            |n: Option<&Nonce>| match n {
                None => Ok(()),
                Some(_) => Err("a device-flow ID token must not carry a nonce".to_string()),
            }
        };
        let mut identity = self
            .verify_with_refetch(d, &id_token, no_nonce, self.settings.max_age)
            .await?;
        identity.auth_time = None;
        Ok(DevicePoll::Done(identity))
    }
}

enum VerifyFailure {
    UnknownKey,
    Refused(String),
}

/// A refusal in words an operator can act on; the token itself is never included.
fn describe_claims_error(e: &ClaimsVerificationError) -> String {
    match e {
        ClaimsVerificationError::Expired(_) => "it has expired (exp)".into(),
        ClaimsVerificationError::InvalidAudience(_) => {
            "its audience (aud) is not this CA's client_id".into()
        }
        ClaimsVerificationError::InvalidIssuer(_) => {
            "its issuer (iss) is not the configured issuer".into()
        }
        ClaimsVerificationError::InvalidNonce(_) => "its nonce does not match this sign-in".into(),
        ClaimsVerificationError::InvalidAuthTime(_) => "its auth_time is unacceptable".into(),
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_has_no_symmetric_or_none() {
        for alg in ALLOWED_ALGS {
            let name = serde_json::to_value(&alg).unwrap();
            let name = name.as_str().unwrap();
            assert!(!name.starts_with("HS"), "{name}");
            assert_ne!(name, "none");
        }
    }

    #[test]
    fn device_errors_map_per_rfc_8628() {
        assert!(matches!(
            classify_device_error("authorization_pending"),
            Ok(DevicePoll::Pending)
        ));
        assert!(matches!(
            classify_device_error("slow_down"),
            Ok(DevicePoll::SlowDown)
        ));
        assert!(matches!(
            classify_device_error("expired_token"),
            Ok(DevicePoll::Expired)
        ));
        assert!(matches!(
            classify_device_error("access_denied"),
            Ok(DevicePoll::Denied)
        ));
        assert!(matches!(
            classify_device_error("invalid_grant"),
            Err(OidcError::GrantRefused(e)) if e == "invalid_grant"
        ));
    }

    #[test]
    fn settings_debug_hides_the_secret() {
        let s = RpSettings {
            issuer: "http://127.0.0.1:1".into(),
            client_id: "c".into(),
            client_secret: "hunter2".into(),
            max_age: Duration::from_secs(60),
            clock_skew: Duration::from_secs(60),
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
