//! The admin API: revocations and CA key rotation, for members of `[admin] groups` with a
//! browser sign-in within `[admin] approver_recent_auth` (so someone removed from the group
//! loses the power within that time).

use super::auth::SignedIn;
use super::error::{ApiError, ApiJson};
use super::routes::blocking;
use super::SharedState;
use crate::authority::{now_secs, CaError, RevokeTarget};
use crate::elevation::recent_auth;
use crate::names::Username;
use crate::store::SessionRow;
use axum::extract::State;
use axum::Json;
use pedm_api::ProblemType;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A signed-in member of `[admin] groups` with a recent sign-in.
pub struct Admin(pub SessionRow);

fn admin(state: &SharedState, session: SessionRow) -> Result<Admin, ApiError> {
    let member = state
        .config
        .admin
        .groups
        .iter()
        .any(|g| session.groups.contains(g));
    if !member {
        return Err(ApiError::new(
            ProblemType::Forbidden,
            "only members of the CA's [admin] groups may do this",
        ));
    }
    let within = state.config.admin.approver_recent_auth.0;
    if !recent_auth(session.auth_time, &session.method, within, now_secs()) {
        return Err(ApiError::new(
            ProblemType::ReauthRequired,
            format!(
                "admin actions need a browser sign-in within {}; run `pedm-ssh login --reauth`",
                pedm_api::duration::format(within)
            ),
        ));
    }
    Ok(Admin(session))
}

fn ca_problem(context: &str, e: CaError) -> ApiError {
    match e {
        CaError::Refused(m) => ApiError::new(ProblemType::Conflict, m),
        CaError::Key(k) => ApiError::new(ProblemType::InvalidPublicKey, k.to_string()),
        other => ApiError::internal(context, other),
    }
}

/// `POST /v1/revocations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationRequest {
    /// `serial`, `user`, `public_key` (an OpenSSH public key line) or `ca_key` (`SHA256:…`).
    pub kind: String,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct RevocationAnswer {
    pub new: bool,
    pub sessions_ended: u64,
    pub elevations_ended: u64,
    pub krl_version: u64,
}

pub async fn revoke(
    State(state): State<SharedState>,
    SignedIn(session): SignedIn,
    ApiJson(req): ApiJson<RevocationRequest>,
) -> Result<Json<RevocationAnswer>, ApiError> {
    let Admin(session) = admin(&state, session)?;
    let actor = session.user.clone();
    let bad = |m: String| ApiError::new(ProblemType::InvalidRequest, m);
    let target = match req.kind.as_str() {
        "serial" => Some(RevokeTarget::Serial(req.value.parse().map_err(|_| {
            bad("value must be a certificate serial (a positive number)".into())
        })?)),
        "user" => Some(RevokeTarget::User(
            Username::new(&req.value).map_err(|e| bad(e.to_string()))?,
        )),
        "public_key" => Some(RevokeTarget::PublicKey(
            crate::cert::parse_user_key(&req.value)
                .map_err(|e| ApiError::new(ProblemType::InvalidPublicKey, e.to_string()))?,
        )),
        "ca_key" => None,
        other => {
            return Err(bad(format!(
                "kind {} is not one of serial, user, public_key, ca_key",
                crate::names::escaped(other)
            )))
        }
    };
    let bundle_lifetime = state.config.bundle.lifetime.0.as_secs() as i64;
    let krl_lifetime = state.config.krl.lifetime.0.as_secs() as i64;
    let answer = blocking(&state, move |s| {
        let out = match target {
            Some(t) => s
                .authority
                .revoke(&t, &actor, &req.reason)
                .map_err(|e| ca_problem("revoking", e))?,
            None => {
                let new = s
                    .authority
                    .revoke_ca_key(&req.value, &actor, &req.reason, bundle_lifetime)
                    .map_err(|e| ca_problem("revoking the CA key", e))?;
                crate::store::RevokeOutcome {
                    new,
                    sessions_ended: 0,
                    elevations_ended: 0,
                }
            }
        };
        let krl = s
            .authority
            .ensure_krl(krl_lifetime)
            .map_err(|e| ApiError::internal("publishing the KRL", e))?;
        Ok(RevocationAnswer {
            new: out.new,
            sessions_ended: out.sessions_ended,
            elevations_ended: out.elevations_ended,
            krl_version: krl.version,
        })
    })
    .await?;
    Ok(Json(answer))
}

/// `GET /v1/admin/keys`: every CA key with its state, and the staged key's activation check.
pub async fn keys(
    State(state): State<SharedState>,
    SignedIn(session): SignedIn,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&state, session)?;
    let hosts = state.config.hosts.clone();
    let v = blocking(&state, move |s| {
        let keys = s
            .authority
            .store
            .ca_keys()
            .map_err(|e| ApiError::internal("reading keys", e))?;
        let staged = keys.iter().find(|k| k.state == pedm_api::KeyState::Next);
        let check = match staged {
            Some(k) => Some(
                s.authority
                    .activation_check(
                        &k.fingerprint,
                        hosts.refresh_interval.0.as_secs() as i64,
                        hosts.min_hosts,
                        hosts.coverage,
                    )
                    .map_err(|e| ca_problem("checking coverage", e))?,
            ),
            None => None,
        };
        Ok(json!({
            "keys": keys.iter().map(|k| json!({
                "fingerprint": k.fingerprint,
                "state": k.state.as_str(),
                "public_key": k.public_key,
                "published_in_bundle": k.published_version,
            })).collect::<Vec<_>>(),
            "activation": check.map(|c| json!({
                "covering_hosts": c.covering,
                "checked_in_hosts": c.checked_in,
                "blockers": c.blockers,
            })),
        }))
    })
    .await?;
    Ok(Json(v))
}

/// `POST /v1/admin/keys/stage`.
pub async fn stage(
    State(state): State<SharedState>,
    SignedIn(session): SignedIn,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Admin(session) = admin(&state, session)?;
    let lifetime = state.config.bundle.lifetime.0.as_secs() as i64;
    let row = blocking(&state, move |s| {
        s.authority
            .stage_key(&session.user, lifetime)
            .map_err(|e| ca_problem("staging a key", e))
    })
    .await?;
    Ok(Json(
        json!({ "fingerprint": row.fingerprint, "public_key": row.public_key, "state": "next" }),
    ))
}

/// `POST /v1/admin/keys/activate`; the fingerprint travels in the body (it contains `/`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    pub fingerprint: String,
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/admin/keys/activate`.
pub async fn activate(
    State(state): State<SharedState>,
    SignedIn(session): SignedIn,
    ApiJson(req): ApiJson<ActivateRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Admin(session) = admin(&state, session)?;
    let fingerprint = req.fingerprint.clone();
    let hosts = state.config.hosts.clone();
    let lifetime = state.config.bundle.lifetime.0.as_secs() as i64;
    let krl_lifetime = state.config.krl.lifetime.0.as_secs() as i64;
    let check = blocking(&state, move |s| {
        let check = s
            .authority
            .activation_check(
                &fingerprint,
                hosts.refresh_interval.0.as_secs() as i64,
                hosts.min_hosts,
                hosts.coverage,
            )
            .map_err(|e| ca_problem("checking coverage", e))?;
        s.authority
            .activate_key(&fingerprint, &check, req.force, &session.user, lifetime)
            .map_err(|e| ca_problem("activating the key", e))?;
        s.authority
            .ensure_krl(krl_lifetime)
            .map_err(|e| ApiError::internal("publishing the KRL", e))?;
        Ok(check)
    })
    .await?;
    Ok(Json(json!({
        "active": state.authority.active_key(),
        "forced_past": check.blockers,
    })))
}
