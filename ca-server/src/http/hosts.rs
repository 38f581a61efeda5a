//! Host endpoints: the signed KRL, enrollment with a one-time join token, and check-ins signed
//! with the enrolled sshd host key.

use super::error::{ApiError, ApiJson};
use super::routes::blocking;
use super::SharedState;
use crate::audit::AuditEvent;
use crate::authority::now_secs;
use crate::store::{CheckinRow, EnrollOutcome, HostRow};
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use pedm_api::krl::SignedKrl;
use pedm_api::{
    CheckinPayload, CheckinResponse, EnrollRequest, EnrollResponse, ProblemType, SignedCheckin,
    CHECKIN_NAMESPACE,
};
use serde_json::json;
use ssh_key::{HashAlg, PublicKey, SshSig};

/// How far a check-in's time may be from the CA's.
const CHECKIN_SKEW_SECS: i64 = 300;

/// `GET /v1/krl`: the published KRL. Every path that changes what is revoked (or the active
/// key) publishes a new one itself, and `serve` re-issues it as it ages, so this read-only
/// endpoint only rebuilds when the stored KRL is missing, past half of its life or signed by
/// a key that is no longer the active one.
pub async fn krl(State(state): State<SharedState>) -> Result<Json<SignedKrl>, ApiError> {
    let lifetime = state.config.krl.lifetime.0.as_secs() as i64;
    let row = blocking(&state, move |s| {
        s.authority
            .current_krl(lifetime)
            .map_err(|e| ApiError::internal("publishing the KRL", e))
    })
    .await?;
    Ok(Json(SignedKrl::from_parts(&row.payload, row.signature)))
}

fn host_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

/// `POST /v1/hosts/enroll`.
pub async fn enroll(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    if !host_name_ok(&req.host_name) {
        return Err(ApiError::new(
            ProblemType::InvalidRequest,
            "host_name must be 1-253 characters of [a-z0-9.-]",
        ));
    }
    let key = PublicKey::from_openssh(req.host_key.trim()).map_err(|e| {
        ApiError::new(
            ProblemType::InvalidPublicKey,
            format!("host_key is not an OpenSSH public key line: {e}"),
        )
    })?;
    if !matches!(key.key_data(), ssh_key::public::KeyData::Ed25519(_)) {
        return Err(ApiError::new(
            ProblemType::UnsupportedKey,
            "enroll the host's Ed25519 key (/etc/ssh/ssh_host_ed25519_key.pub)",
        ));
    }
    let fp = key.fingerprint(HashAlg::Sha256).to_string();
    let now = now_secs();
    let mut clean = key.clone();
    clean.set_comment("");
    let host = HostRow {
        host_key_fp: fp.clone(),
        host_name: req.host_name.clone(),
        host_key: clean.to_openssh().unwrap_or_default().trim().to_string(),
        enrolled_at: now,
    };
    let token_hash = crate::login::sha256_hex(&req.token);
    let outcome = blocking(&state, move |s| {
        let event = AuditEvent::new(
            format!("host:{}", host.host_name),
            "host.enroll",
            format!("host_key={}", host.host_key_fp),
            json!({ "host_name": host.host_name, "token": &token_hash[..16] }),
        );
        s.authority
            .store
            .enroll_host(&token_hash, &host, now, &event)
            .map_err(|e| ApiError::internal("enrolling the host", e))
    })
    .await?;
    match outcome {
        EnrollOutcome::Enrolled => Ok(Json(EnrollResponse {
            host_name: req.host_name,
            host_key_fingerprint: fp,
        })),
        other => {
            let why = match other {
                EnrollOutcome::TokenUsed => "the join token was already used",
                EnrollOutcome::TokenExpired => "the join token has expired",
                _ => "the join token is unknown",
            };
            Err(ApiError::new(
                ProblemType::Forbidden,
                format!("{why}; make a new one with `pedm-ca hosts token`"),
            ))
        }
    }
}

/// `POST /v1/hosts/checkin`: counted only when signed by an enrolled host key whose
/// fingerprint the payload names, and recent.
pub async fn checkin(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<SignedCheckin>,
) -> Result<Json<CheckinResponse>, ApiError> {
    let bad = |m: &str| ApiError::new(ProblemType::InvalidRequest, m.to_string());
    let payload_bytes = base64::engine::general_purpose::STANDARD
        .decode(req.payload.as_bytes())
        .map_err(|_| bad("payload is not base64"))?;
    let payload: CheckinPayload =
        serde_json::from_slice(&payload_bytes).map_err(|e| bad(&format!("payload: {e}")))?;
    let sig = SshSig::from_pem(req.signature.as_bytes())
        .map_err(|_| bad("signature is not an armored SSH signature"))?;
    let now = now_secs();
    let fp = payload.host_key_fingerprint.clone();
    let host = {
        let fp = fp.clone();
        blocking(&state, move |s| {
            s.authority
                .store
                .host(&fp)
                .map_err(|e| ApiError::internal("reading hosts", e))
        })
        .await?
    };
    let verified = host.as_ref().is_some_and(|h| {
        PublicKey::from_openssh(&h.host_key).is_ok_and(|k| {
            sig.namespace() == CHECKIN_NAMESPACE
                && sig.public_key() == k.key_data()
                && k.verify(CHECKIN_NAMESPACE, &payload_bytes, &sig).is_ok()
        })
    });
    let fresh = (payload.time - now).abs() <= CHECKIN_SKEW_SECS;
    let counted = verified && fresh;
    let row = CheckinRow {
        host_key_fp: fp.clone(),
        bundle_version: payload.bundle_version,
        krl_version: payload.krl_version,
        at: now,
    };
    let why = if counted {
        "counted"
    } else if !verified {
        "not signed by an enrolled host key"
    } else {
        "its time is more than 5 minutes from the CA's"
    };
    let event = AuditEvent::new(
        format!("host:{}", crate::names::escaped(&payload.host_name)),
        if counted {
            "host.checkin"
        } else {
            "host.checkin_refused"
        },
        format!("host_key={}", crate::names::escaped(&fp)),
        json!({
            "bundle_version": payload.bundle_version,
            "krl_version": payload.krl_version,
            "result": why,
        }),
    );
    blocking(&state, move |s| {
        if counted {
            s.authority
                .store
                .record_checkin(&row, &event)
                .map_err(|e| ApiError::internal("recording the check-in", e))
        } else {
            s.authority
                .record(&event)
                .map_err(|e| ApiError::internal("recording the check-in", e))
        }
    })
    .await?;
    if !counted {
        return Err(ApiError::new(
            ProblemType::Forbidden,
            format!("the check-in does not count: {why}; enroll with `pedm-host-config enroll --token T`"),
        ));
    }
    Ok(Json(CheckinResponse {
        counted,
        ca_time: now,
    }))
}
