//! `POST /v1/certs` and `GET /v1/session`.

use super::auth::SignedIn;
use super::error::{ApiError, ApiJson};
use super::routes::blocking;
use super::SharedState;
use crate::audit::AuditEvent;
use crate::authority::now_secs;
use crate::cert::{parse_user_key, KeyRefusal};
use crate::names::Username;
use crate::policy::Identity;
use crate::store::CertKind;
use axum::extract::State;
use axum::Json;
use pedm_api::{CertRequest, CertResponse, IssuedCert, ProblemType, SessionInfo};
use serde_json::json;

/// `POST /v1/certs`: a base certificate for the session's user on the given public key.
///
/// The policy is evaluated again from the groups stored with the session, so a role removed
/// from the configuration stops issuing at once; the certificate never outlives the session.
pub async fn issue(
    State(state): State<SharedState>,
    SignedIn(session): SignedIn,
    ApiJson(req): ApiJson<CertRequest>,
) -> Result<Json<CertResponse>, ApiError> {
    let key = match parse_user_key(&req.public_key) {
        Ok(k) => k,
        Err(e) => {
            let kind = match e {
                KeyRefusal::Unparseable(_) | KeyRefusal::IsCertificate => {
                    ProblemType::InvalidPublicKey
                }
                KeyRefusal::UnsupportedType(_) | KeyRefusal::RsaTooSmall(_) => {
                    ProblemType::UnsupportedKey
                }
            };
            return Err(ApiError::new(kind, format!("{e}; nothing was issued")));
        }
    };
    let username = Username::new(&session.user)
        .map_err(|e| ApiError::internal("reading the session's username", e))?;
    let identity = Identity {
        username: username.clone(),
        groups: session.groups.iter().cloned().collect(),
    };
    let grant = match state.policy.base_grant(&identity) {
        Ok(g) => g,
        Err(refusal) => {
            let (user, reason) = (session.user.clone(), refusal.to_string());
            let _ = blocking(&state, move |s| {
                s.authority
                    .record(&AuditEvent::new(
                        user.clone(),
                        "cert.refused",
                        format!("user={user}"),
                        json!({ "reason": reason }),
                    ))
                    .map_err(|e| ApiError::internal("recording a refusal", e))
            })
            .await;
            return Err(ApiError::new(
                ProblemType::NoRole,
                format!("{refusal}; nothing was issued"),
            ));
        }
    };
    let skew = state.config.certs.clock_skew.0.as_secs();
    let issued = blocking(&state, move |s| {
        let now = now_secs().max(0) as u64;
        let session_end = session.expires_at.max(0) as u64;
        let window = crate::cert::validity(now, grant.ttl.as_secs(), skew, &[session_end]);
        s.authority
            .issue(
                CertKind::Base,
                &session.user,
                Some(&username),
                &key,
                &grant.principals,
                &grant.extensions,
                window,
                Some(session.id.clone()),
                json!({ "roles": grant.roles, "session": &session.id[..16] }),
            )
            .map_err(|e| ApiError::internal("issuing the certificate", e))
    })
    .await?;
    state.metrics.issued("base");
    Ok(Json(CertResponse {
        elevation: None,
        base: IssuedCert {
            certificate: issued.row.certificate,
            serial: issued.row.serial,
            key_id: issued.row.key_id,
            principals: issued.principals,
            valid_after: issued.row.valid_after,
            valid_before: issued.row.valid_before,
        },
        ca_time: now_secs(),
    }))
}

/// `GET /v1/session`: who the caller is signed in as.
pub async fn session(SignedIn(s): SignedIn) -> Json<SessionInfo> {
    Json(SessionInfo {
        user: s.user,
        issuer: s.issuer,
        subject: s.subject,
        groups: s.groups,
        roles: s.roles,
        principals: s.principals,
        auth_time: s.auth_time,
        method: s.method,
        expires_at: s.expires_at,
        ca_time: now_secs(),
    })
}
