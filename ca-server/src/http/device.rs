//! The OAuth 2.0 device authorization flow (RFC 8628) through the CA:
//! `POST /v1/auth/device/start` and `POST /v1/auth/device/poll`. Off unless
//! `[oidc] device_flow = true`; then both answer 404 `not-found`.
//!
//! How the flow is bound: the CA is the only OIDC client. It asks the IdP for a device code,
//! keeps that `device_code` to itself and hands the CLI a fresh 256-bit `poll_token`; the
//! pending device login is keyed by the token's SHA-256 only. The session is returned only to
//! a poll carrying that token, so whoever learns the user code (it is shown on a screen) can
//! at most complete the IdP side for the person who started it, never obtain the session.
//! The ID token comes straight from the IdP's token endpoint to the CA, which is why the
//! missing `nonce` of device-flow ID tokens is acceptable here (and only here).
//!
//! Device-flow ID tokens carry no `auth_time`: device sessions are created with
//! `auth_time = None` and method `device`, and never count as a recent sign-in (the
//! elevation and approval policies treat method `device` as not recent).
//!
//! Phishing: a user code can be relayed by an attacker who started the login themselves
//! ("enter this code to fix your account"); that is why the flow is off by default.

use super::auth::{create_session, oidc_problem};
use super::error::{ApiError, ApiJson};
use super::SharedState;
use crate::authority::now_secs;
use crate::login;
use crate::oidc::{DevicePoll, OidcError, SLOW_DOWN_STEP};
use axum::extract::State;
use axum::Json;
use pedm_api::{DevicePollRequest, DevicePollResponse, DeviceStartResponse, ProblemType};
use std::collections::HashMap;

/// The longest a pending device login is kept, whatever the IdP says.
const MAX_DEVICE_LOGIN_SECS: i64 = 15 * 60;

/// At most this many pending device logins at once (start is unauthenticated).
const MAX_PENDING: usize = 10_000;

/// The longest interval the CA passes on, so a confused IdP cannot stall the CLI for hours.
const MAX_INTERVAL: u64 = 60;

/// One device login between start and the end of polling.
#[derive(Debug, Clone)]
pub struct PendingDevice {
    /// The IdP's device code: never leaves the CA.
    device_code: String,
    /// Seconds between polls, increased on every `slow_down`.
    interval: u64,
    /// Unix seconds.
    expires_at: i64,
}

/// Pending device logins, keyed by the SHA-256 (hex) of their poll token.
///
/// Kept **in memory** only: a CA restart forgets them (the CLI then gets `login-refused` and
/// starts again), and they are not shared between replicas. Expired entries are pruned on
/// every start.
#[derive(Debug, Default)]
pub struct DeviceLogins(std::sync::Mutex<HashMap<String, PendingDevice>>);

impl DeviceLogins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingDevice>> {
        // A panic while holding the lock leaves a consistent map (every update is one call).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a login; `false` when there are too many.
    fn insert(&self, key: String, pending: PendingDevice, now: i64) -> bool {
        let mut map = self.lock();
        map.retain(|_, p| p.expires_at > now);
        if map.len() >= MAX_PENDING {
            return false;
        }
        map.insert(key, pending);
        true
    }

    /// Takes a login out for one poll: single use, and no two polls of it at once.
    fn take(&self, key: &str) -> Option<PendingDevice> {
        self.lock().remove(key)
    }

    /// Puts a still-pending login back.
    fn put_back(&self, key: String, pending: PendingDevice) {
        self.lock().insert(key, pending);
    }
}

fn rp_for_device(state: &SharedState) -> Result<&crate::oidc::RelyingParty, ApiError> {
    let enabled = state.config.oidc.as_ref().is_some_and(|o| o.device_flow);
    match (&state.rp, enabled) {
        (Some(rp), true) => Ok(rp),
        _ => Err(ApiError::new(
            ProblemType::NotFound,
            "the device flow is not enabled on this CA ([oidc] device_flow = true)",
        )),
    }
}

/// `POST /v1/auth/device/start` (any body is ignored).
pub async fn start(
    State(state): State<SharedState>,
) -> Result<Json<DeviceStartResponse>, ApiError> {
    let rp = rp_for_device(&state)?;
    let auth = rp
        .device_authorization()
        .await
        .map_err(|e| oidc_problem(&e))?;
    let now = now_secs();
    let lifetime = i64::try_from(auth.expires_in)
        .unwrap_or(MAX_DEVICE_LOGIN_SECS)
        .clamp(1, MAX_DEVICE_LOGIN_SECS);
    let interval = auth.interval.min(MAX_INTERVAL);
    let poll_token = login::new_token();
    let key = login::sha256_hex(&poll_token);
    let pending = PendingDevice {
        device_code: auth.device_code,
        interval,
        expires_at: now + lifetime,
    };
    if !state.device_logins.insert(key, pending, now) {
        return Err(ApiError::new(
            ProblemType::IdpUnavailable,
            "too many device sign-ins are pending; try again in a few minutes",
        ));
    }
    Ok(Json(DeviceStartResponse {
        verification_uri: auth.verification_uri,
        verification_uri_complete: auth.verification_uri_complete,
        user_code: auth.user_code,
        interval,
        expires_at: now + lifetime,
        poll_token,
    }))
}

fn expired() -> ApiError {
    ApiError::new(
        ProblemType::LoginRefused,
        "the device code expired; start again with `pedm-ssh login --device`",
    )
}

/// `POST /v1/auth/device/poll`: polls the IdP once.
pub async fn poll(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DevicePollRequest>,
) -> Result<Json<DevicePollResponse>, ApiError> {
    let rp = rp_for_device(&state)?;
    if req.poll_token.is_empty() || req.poll_token.len() > 256 {
        return Err(ApiError::new(
            ProblemType::InvalidRequest,
            "poll_token is empty or too long",
        ));
    }
    let key = login::sha256_hex(&req.poll_token);
    let Some(mut pending) = state.device_logins.take(&key) else {
        return Err(ApiError::new(
            ProblemType::LoginRefused,
            "no pending device sign-in has this poll token (unknown, finished, or from before a CA restart); start again with `pedm-ssh login --device`",
        ));
    };
    if now_secs() >= pending.expires_at {
        return Err(expired());
    }
    let outcome = match rp.poll_device(&pending.device_code).await {
        Ok(o) => o,
        Err(e @ OidcError::Unavailable(_)) => {
            // An outage is not the user's fault: the login stays pending.
            state.device_logins.put_back(key, pending);
            return Err(oidc_problem(&e));
        }
        Err(e) => return Err(oidc_problem(&e)),
    };
    match outcome {
        DevicePoll::Pending => {
            state.device_logins.put_back(key, pending);
            Ok(Json(DevicePollResponse::Pending))
        }
        DevicePoll::SlowDown => {
            pending.interval = (pending.interval + SLOW_DOWN_STEP).min(MAX_INTERVAL);
            let interval = pending.interval;
            state.device_logins.put_back(key, pending);
            Ok(Json(DevicePollResponse::SlowDown { interval }))
        }
        DevicePoll::Expired => Err(expired()),
        DevicePoll::Denied => Err(ApiError::new(
            ProblemType::Forbidden,
            "the sign-in was denied at the identity provider",
        )),
        DevicePoll::Done(identity) => {
            let session = create_session(
                &state,
                &identity,
                crate::elevation::METHOD_DEVICE,
                format!("device={}", &key[..16]),
            )
            .await?;
            Ok(Json(DevicePollResponse::Complete(session)))
        }
    }
}
