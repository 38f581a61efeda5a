//! Sign-in endpoints: `/v1/auth/info`, `/v1/auth/oidc/start`, `/v1/auth/oidc/finish`,
//! `/v1/auth/logout`, and the bearer-session extractor every signed-in endpoint uses.
//!
//! Every refusal here happens before the IdP is contacted when it can: redirect URI, secret
//! format, pending-login lookup, secret match and the RFC 9207 `iss` check all come before
//! the code exchange.

use super::error::{ApiError, ApiJson};
use super::routes::blocking;
use super::SharedState;
use crate::audit::AuditEvent;
use crate::authority::now_secs;
use crate::login::{self, LoginInputError};
use crate::oidc::OidcError;
use crate::policy::Refusal;
use crate::store::{PendingLogin, SessionRow};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::Json;
use pedm_api::{
    AuthInfo, OidcFinishRequest, OidcStartRequest, OidcStartResponse, ProblemType, SessionResponse,
    TokenExchangeRequest,
};
use serde_json::json;

/// `GET /v1/auth/info`.
pub async fn info(State(state): State<SharedState>) -> Json<AuthInfo> {
    Json(AuthInfo {
        browser: state.rp.is_some(),
        redirect_port: state.config.oidc.as_ref().and_then(|o| o.redirect_port),
    })
}

fn rp(state: &SharedState) -> Result<&crate::oidc::RelyingParty, ApiError> {
    state.rp.as_ref().ok_or_else(|| {
        ApiError::new(
            ProblemType::NotFound,
            "browser sign-in is not configured on this CA ([oidc] is missing)",
        )
    })
}

pub(super) fn oidc_problem(e: &OidcError) -> ApiError {
    let kind = match e {
        OidcError::Unavailable(_) => ProblemType::IdpUnavailable,
        OidcError::GrantRefused(_) => ProblemType::LoginRefused,
        OidcError::IdToken(_) => ProblemType::IdTokenRefused,
    };
    ApiError::new(kind, e.to_string())
}

/// Writes a refusal into the audit log (best effort: the refusal stands either way).
async fn audit_refusal(state: &SharedState, action: &str, subject: String, reason: String) {
    let action = action.to_string();
    let _ = blocking(state, move |s| {
        s.authority
            .record(&AuditEvent::new(
                "anonymous",
                &action,
                subject,
                json!({ "reason": reason }),
            ))
            .map_err(|e| ApiError::internal("recording a refusal", e))
    })
    .await;
}

/// `POST /v1/auth/oidc/start`.
pub async fn start(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<OidcStartRequest>,
) -> Result<Json<OidcStartResponse>, ApiError> {
    let rp = rp(&state)?;
    let fixed = state.config.oidc.as_ref().and_then(|o| o.redirect_port);
    login::check_redirect_uri(&req.redirect_uri, fixed)
        .map_err(|e| ApiError::new(ProblemType::InvalidRedirectUri, e.to_string()))?;
    login::check_secret_hash(&req.login_secret_sha256)
        .map_err(|e| ApiError::new(ProblemType::InvalidRequest, e.to_string()))?;
    let auth = rp
        .authorization(&req.redirect_uri, req.reauth)
        .await
        .map_err(|e| oidc_problem(&e))?;
    let now = now_secs();
    let pending = PendingLogin {
        state: login::sha256_hex(&auth.state),
        secret_sha256: req.login_secret_sha256,
        redirect_uri: req.redirect_uri,
        nonce: auth.nonce,
        pkce_verifier: auth.pkce_verifier,
        reauth: req.reauth,
        created_at: now,
        expires_at: now + login::PENDING_LOGIN_SECS,
    };
    let expires_at = pending.expires_at;
    blocking(&state, move |s| {
        let event = AuditEvent::new(
            "anonymous",
            "login.start",
            format!("login={}", &pending.state[..16]),
            json!({ "redirect_uri": pending.redirect_uri, "expires_at": pending.expires_at, "reauth": pending.reauth }),
        );
        s.authority
            .store
            .create_pending_login(&pending, &event)
            .map_err(|e| ApiError::internal("storing the pending login", e))
    })
    .await?;
    Ok(Json(OidcStartResponse {
        authorization_url: auth.url,
        state: auth.state,
        expires_at,
    }))
}

/// `POST /v1/auth/oidc/finish`.
pub async fn finish(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<OidcFinishRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let rp = rp(&state)?;
    let refused = |detail: String| ApiError::new(ProblemType::LoginRefused, detail);
    let secret_hash = login::secret_hash(&req.login_secret).map_err(|e: LoginInputError| {
        refused(format!(
            "{e}; start the sign-in again with `pedm-ssh login`"
        ))
    })?;
    let state_hash = login::sha256_hex(&req.state);
    let subject = format!("login={}", &state_hash[..16]);
    // Consumed whatever happens next: a pending login is redeemed at most once.
    let pending = {
        let (h, subject) = (state_hash.clone(), subject.clone());
        blocking(&state, move |s| {
            let event = AuditEvent::new("anonymous", "login.consume", subject, json!({}));
            s.authority
                .store
                .take_pending_login(&h, &event)
                .map_err(|e| ApiError::internal("reading the pending login", e))
        })
        .await?
    };
    let Some(pending) = pending else {
        let reason = "no pending login has this state (unknown, already used, or from another CA)";
        audit_refusal(&state, "login.refused", subject, reason.into()).await;
        return Err(refused(format!(
            "{reason}; start the sign-in again with `pedm-ssh login`"
        )));
    };
    let now = now_secs();
    let reason = if now >= pending.expires_at {
        Some("the pending login has expired (5 minutes)".to_string())
    } else if !login::same_hash(&secret_hash, &pending.secret_sha256) {
        Some("the login_secret does not belong to this login".to_string())
    } else {
        let required = rp
            .iss_parameter_required()
            .await
            .map_err(|e| oidc_problem(&e))?;
        login::check_callback_issuer(req.iss.as_deref(), rp.issuer(), required).err()
    };
    if let Some(reason) = reason {
        audit_refusal(&state, "login.refused", subject, reason.clone()).await;
        return Err(refused(format!(
            "{reason}; start the sign-in again with `pedm-ssh login`"
        )));
    }

    let identity = match rp
        .redeem(
            &req.code,
            &pending.redirect_uri,
            &pending.pkce_verifier,
            &pending.nonce,
            pending.reauth,
        )
        .await
    {
        Ok(i) => i,
        Err(e) => {
            audit_refusal(&state, "login.refused", subject, e.to_string()).await;
            return Err(oidc_problem(&e));
        }
    };

    let response = create_session(
        &state,
        &identity,
        crate::elevation::METHOD_BROWSER,
        format!("login={}", &state_hash[..16]),
    )
    .await?;
    Ok(Json(response))
}

/// The end of every interactive sign-in (browser and device): the policy (`identity`, then
/// `base_grant`), the revoked-user check, then the session row and its audit event.
/// `login_ref` names the pending login in audit events (`login=…` or `device=…`). The
/// session's `auth_time` is the identity's: `None` for the device flow, whose sessions never
/// count as a recent sign-in.
pub(super) async fn create_session(
    state: &SharedState,
    identity: &crate::oidc::VerifiedIdentity,
    method: &str,
    login_ref: String,
) -> Result<SessionResponse, ApiError> {
    let state = state.clone();
    let decision = state
        .policy
        .identity(&identity.claims)
        .and_then(|id| state.policy.base_grant(&id).map(|g| (id, g)));
    let (who, grant) = match decision {
        Ok((who, grant)) => (
            who,
            NewSession {
                roles: grant.roles,
                principals: grant.principals.iter().map(|p| p.to_string()).collect(),
            },
        ),
        Err(refusal) => {
            let detail = json!({
                "reason": refusal.to_string(),
                "issuer": identity.issuer,
                "subject": identity.subject,
            });
            let _ = blocking(&state, move |s| {
                s.authority
                    .record(&AuditEvent::new(
                        "anonymous",
                        "login.denied",
                        login_ref,
                        detail,
                    ))
                    .map_err(|e| ApiError::internal("recording a refusal", e))
            })
            .await;
            let kind = match refusal {
                Refusal::NoRole { .. } => ProblemType::NoRole,
                _ => ProblemType::UsernameRefused,
            };
            return Err(ApiError::new(
                kind,
                format!("{refusal}; no session was created"),
            ));
        }
    };

    open_session(
        &state,
        &who.username,
        who.groups.iter().cloned().collect(),
        grant,
        identity,
        method,
        login_ref,
    )
    .await
}

/// What a session grants, decided before [`open_session`].
pub(super) struct NewSession {
    pub roles: Vec<String>,
    pub principals: Vec<String>,
}

/// The end of every sign-in, once the identity is decided: the revoked-user check, then the
/// session row and its audit event.
async fn open_session(
    state: &SharedState,
    username: &crate::names::Username,
    groups: Vec<String>,
    grant: NewSession,
    identity: &crate::oidc::VerifiedIdentity,
    method: &str,
    login_ref: String,
) -> Result<SessionResponse, ApiError> {
    let state = state.clone();
    let now = now_secs();
    let revoked = {
        let user = username.to_string();
        blocking(&state, move |s| {
            s.authority
                .store
                .is_revoked(crate::store::RevocationKind::User, &user)
                .map_err(|e| ApiError::internal("reading revocations", e))
        })
        .await?
    };
    if revoked {
        audit_refusal(
            &state,
            "login.refused",
            login_ref,
            format!("user {username} is revoked"),
        )
        .await;
        return Err(ApiError::new(
            ProblemType::Forbidden,
            "your access is revoked; no session was created. Ask the security team (pedm-ca unrevoke)",
        ));
    }
    let token = login::new_token();
    let session_ttl = state.config.certs.session_ttl.0.as_secs() as i64;
    let row = SessionRow {
        id: login::sha256_hex(&token),
        user: username.to_string(),
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
        groups,
        roles: grant.roles,
        principals: grant.principals,
        auth_time: identity.auth_time,
        method: method.to_string(),
        created_at: now,
        expires_at: now + session_ttl,
        revoked_at: None,
    };
    let response = SessionResponse {
        session_token: token,
        user: row.user.clone(),
        roles: row.roles.clone(),
        principals: row.principals.clone(),
        expires_at: row.expires_at,
    };
    blocking(&state, move |s| {
        let event = AuditEvent::new(
            row.user.clone(),
            "session.create",
            format!("session={}", &row.id[..16]),
            json!({
                "issuer": row.issuer,
                "subject": row.subject,
                "groups": row.groups,
                "roles": row.roles,
                "auth_time": row.auth_time,
                "method": row.method,
                "expires_at": row.expires_at,
            }),
        );
        s.authority
            .store
            .create_session(&row, &event)
            .map_err(|e| ApiError::internal("storing the session", e))
    })
    .await?;
    Ok(response)
}

/// `POST /v1/auth/token`: exchanges an ID token of a `[[trusted_issuers]]` issuer for an
/// automation session (method `token`, no `auth_time`, no groups; see [`crate::token`]).
/// Every refusal is audited as `login.refused` (`login.denied` for a token without a role).
pub async fn token(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<TokenExchangeRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    use crate::token::TokenRefusal;
    let login_ref = format!("token={}", &login::sha256_hex(&req.id_token)[..16]);
    let identity = match state.tokens.verify(&req.id_token, now_secs()).await {
        Ok(i) => i,
        Err(e) => {
            let action = match e {
                TokenRefusal::NoRole(_) => "login.denied",
                _ => "login.refused",
            };
            audit_refusal(&state, action, login_ref, e.to_string()).await;
            return Err(match e {
                TokenRefusal::IdToken(_) => {
                    ApiError::new(ProblemType::IdTokenRefused, e.to_string())
                }
                TokenRefusal::Unavailable(_) => {
                    ApiError::new(ProblemType::IdpUnavailable, e.to_string())
                }
                TokenRefusal::NoRole(m) => {
                    ApiError::new(ProblemType::NoRole, format!("{m}; no session was created"))
                }
            });
        }
    };
    // The same refusals as for people: a reserved or privileged name gets nothing.
    if let Some(owner) = state
        .policy
        .reserved_or_privileged(identity.username.as_str())
    {
        let reason = format!("the name {} is {owner}", identity.username);
        audit_refusal(&state, "login.denied", login_ref, reason.clone()).await;
        return Err(ApiError::new(
            ProblemType::UsernameRefused,
            format!("{reason}; no session was created"),
        ));
    }
    let verified = crate::oidc::VerifiedIdentity {
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
        auth_time: None,
        claims: serde_json::Map::new(),
    };
    let response = open_session(
        &state,
        &identity.username,
        Vec::new(),
        NewSession {
            roles: identity.roles.clone(),
            principals: vec![identity.principal.to_string()],
        },
        &verified,
        crate::elevation::METHOD_TOKEN,
        login_ref,
    )
    .await?;
    Ok(Json(response))
}

/// A valid, unexpired, unrevoked session named by the `Authorization: Bearer` header.
pub struct SignedIn(pub SessionRow);

fn sign_in_required(what: &str) -> ApiError {
    ApiError::new(
        ProblemType::SignInRequired,
        format!("{what}; sign in with `pedm-ssh login`"),
    )
}

impl FromRequestParts<SharedState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| sign_in_required("no session token was sent"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| sign_in_required("the Authorization header is not a bearer token"))?;
        // Looked up by its hash: the token itself is never stored or compared.
        let id = login::sha256_hex(token);
        let row = blocking(state, move |s| {
            s.authority
                .store
                .session(&id)
                .map_err(|e| ApiError::internal("reading the session", e))
        })
        .await?
        .ok_or_else(|| sign_in_required("the session is unknown"))?;
        if row.revoked_at.is_some() {
            return Err(sign_in_required("the session was revoked"));
        }
        if now_secs() >= row.expires_at {
            return Err(sign_in_required("the session has expired"));
        }
        Ok(SignedIn(row))
    }
}

/// `POST /v1/auth/logout`: revokes the caller's session.
pub async fn logout(
    State(state): State<SharedState>,
    SignedIn(session): SignedIn,
) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(&state, move |s| {
        let event = AuditEvent::new(
            session.user.clone(),
            "session.revoke",
            format!("session={}", &session.id[..16]),
            json!({ "reason": "logout" }),
        );
        s.authority
            .store
            .revoke_session(&session.id, now_secs(), &event)
            .map_err(|e| ApiError::internal("revoking the session", e))
    })
    .await?;
    Ok(Json(json!({ "revoked": true })))
}
