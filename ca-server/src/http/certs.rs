//! `POST /v1/certs` and `GET /v1/session`.

use super::auth::SignedIn;
use super::elevations::{actor, store_problem};
use super::error::{ApiError, ApiJson};
use super::routes::blocking;
use super::SharedState;
use crate::audit::AuditEvent;
use crate::authority::now_secs;
use crate::authority::{BaseIssue, ElevatedGrant};
use crate::cert::{parse_user_key, KeyRefusal};
use crate::elevation;
use crate::names::{ElevationId, Principal, Username};
use crate::policy::Identity;
use crate::store::CertKind;
use crate::store::{DecisionRow, ElevationChange, ElevationRow, RevocationKind};
use axum::extract::State;
use axum::Json;
use pedm_api::{
    CertRequest, CertResponse, ElevatedCert, ElevationState, IssuedCert, ProblemType, SessionInfo,
};
use serde_json::json;

/// `POST /v1/certs`: a base certificate for the session's user on the given public key.
///
/// The policy is evaluated again from the groups stored with the session, so a role removed
/// from the configuration stops issuing at once; the certificate never outlives the session.
/// Automation sessions (token exchange) have no groups: their grant is re-derived by
/// [`crate::token::automation_grant`] (the one principal `<prefix>.<subject>`, their roles'
/// extensions, the shortest of the issuer's `max_cert_ttl` and the roles' TTLs).
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
    {
        let (user, fp) = (
            session.user.clone(),
            key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        );
        let revoked = blocking(&state, move |s| {
            let store = &s.authority.store;
            let fail = |e| ApiError::internal("reading revocations", e);
            Ok((
                store
                    .is_revoked(RevocationKind::User, &user)
                    .map_err(fail)?,
                store
                    .is_revoked(RevocationKind::PublicKey, &fp)
                    .map_err(fail)?,
            ))
        })
        .await?;
        match revoked {
            (true, _) => {
                return Err(ApiError::new(
                    ProblemType::Forbidden,
                    "your access is revoked; nothing was issued. Ask the security team (pedm-ca unrevoke)",
                ))
            }
            (_, true) => {
                return Err(ApiError::new(
                    ProblemType::Forbidden,
                    "this public key is revoked; nothing was issued. Create a new key (pedm-ssh login --key NEW_PATH)",
                ))
            }
            _ => {}
        }
    }
    let username = Username::new(&session.user)
        .map_err(|e| ApiError::internal("reading the session's username", e))?;
    let identity = Identity {
        username: username.clone(),
        groups: session.groups.iter().cloned().collect(),
    };
    let decided = if session.method == elevation::METHOD_TOKEN {
        // Automation: never from groups (it has none); see `token::automation_grant`.
        crate::token::automation_grant(
            state.tokens.issuer(&session.issuer),
            &state.policy,
            &session.user,
            &session.subject,
            &session.roles,
        )
    } else {
        state
            .policy
            .base_grant(&identity)
            .map_err(|r| r.to_string())
    };
    let grant = match decided {
        Ok(g) => g,
        Err(refusal) => {
            let (user, reason) = (session.user.clone(), refusal.clone());
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
    let Some(elevation_text) = req.elevation_id.clone() else {
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
        return Ok(Json(CertResponse {
            elevation: None,
            base: issued_cert(issued),
            ca_time: now_secs(),
        }));
    };
    let elevation_id = ElevationId::parse(&elevation_text).ok_or_else(|| {
        ApiError::new(
            ProblemType::NotFound,
            "no such elevation request (IDs are 12 letters and digits); nothing was issued",
        )
    })?;
    let who = actor(&state, &session);
    let (base, elevated, name) = blocking(&state, move |s| {
        let now = now_secs();
        let session_end = session.expires_at.max(0) as u64;
        let window =
            crate::cert::validity(now.max(0) as u64, grant.ttl.as_secs(), skew, &[session_end]);
        let mut name = String::new();
        let mut decide = |row: &ElevationRow,
                          _: &[DecisionRow]|
         -> Result<ElevatedGrant, crate::store::Rejection> {
            let e = s
                .elevations
                .iter()
                .find(|e| e.name == row.elevation)
                .ok_or_else(|| -> crate::store::Rejection {
                    format!("the elevation {} is no longer configured", row.elevation).into()
                })?;
            let w = elevation::check_issue(e, row.state, &row.times(), &row.requester, &who, now)?;
            // What approvers saw, as far as the configuration still grants it.
            let principals: Vec<Principal> = row
                .principals
                .iter()
                .filter(|p| e.principals.iter().any(|q| q.as_str() == p.as_str()))
                .filter_map(|p| Principal::new(p).ok())
                .collect();
            if principals.is_empty() {
                return Err("the elevation no longer grants the principals it was approved for; request it again".into());
            }
            name = row.elevation.clone();
            let activation = w.first_use.then(|| ElevationChange {
                state: ElevationState::Active,
                approved_at: row.approved_at,
                started_at: Some(now),
                ended_at: None,
                decision: None,
                event: AuditEvent::new(
                    who.user.clone(),
                    "elevation.activate",
                    format!("elevation={}", row.id),
                    json!({ "elevation": row.elevation, "ends_at": w.ends_at }),
                ),
            });
            Ok(ElevatedGrant {
                principals,
                ends_at: w.ends_at,
                activation,
            })
        };
        let base = BaseIssue {
            user: &username,
            public_key: &key,
            principals: &grant.principals,
            extensions: &grant.extensions,
            window,
            session: &session.id,
            details: json!({ "roles": grant.roles, "session": &session.id[..16] }),
        };
        let (b, e) = s
            .authority
            .issue_with_elevation(&base, &elevation_id, &mut decide)
            .map_err(|e| match e {
                crate::authority::CaError::Store(inner) => {
                    store_problem("issuing the elevated certificate", inner)
                }
                other => ApiError::internal("issuing the elevated certificate", other),
            })?;
        Ok((b, e, name))
    })
    .await?;
    state.metrics.issued("base");
    state.metrics.issued("elevated");
    Ok(Json(CertResponse {
        elevation: Some(ElevatedCert {
            elevation_id: elevation_text,
            elevation: name,
            cert: issued_cert(elevated),
        }),
        base: issued_cert(base),
        ca_time: now_secs(),
    }))
}

fn issued_cert(i: crate::authority::Issued) -> IssuedCert {
    IssuedCert {
        certificate: i.row.certificate,
        serial: i.row.serial,
        key_id: i.row.key_id,
        principals: i.principals,
        valid_after: i.row.valid_after,
        valid_before: i.row.valid_before,
    }
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
