//! Handlers.

use super::error::ApiError;
use super::SharedState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use pedm_api::{Health, ProblemType, SignedBundle};

/// Runs blocking store work off the async executor.
pub(super) async fn blocking<T: Send + 'static>(
    state: &SharedState,
    f: impl FnOnce(&SharedState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(|e| ApiError::internal("a worker task", e))?
}

pub async fn healthz(State(state): State<SharedState>) -> Result<Json<Health>, ApiError> {
    blocking(&state, |s| {
        let version = s
            .authority
            .signed_bundle()
            .map_err(|e| ApiError::internal("reading the bundle", e))?
            .map(|(v, _)| v)
            .unwrap_or(0);
        Ok(Json(Health {
            status: "ok".into(),
            active_key: s.authority.active_key(),
            bundle_version: version,
        }))
    })
    .await
}

pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

pub async fn bundle(State(state): State<SharedState>) -> Result<Json<SignedBundle>, ApiError> {
    blocking(&state, |s| {
        match s
            .authority
            .signed_bundle()
            .map_err(|e| ApiError::internal("reading the bundle", e))?
        {
            Some((_, b)) => Ok(Json(b)),
            None => Err(ApiError::new(
                ProblemType::NotFound,
                "no trust bundle has been published yet",
            )),
        }
    })
    .await
}

pub async fn ca_keys(State(state): State<SharedState>) -> Result<impl IntoResponse, ApiError> {
    let text = blocking(&state, |s| {
        s.authority
            .trusted_keys_text()
            .map_err(|e| ApiError::internal("reading the bundle", e))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}
