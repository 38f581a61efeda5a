//! The v1 HTTP API: axum routes as plain async functions over [`AppState`].

mod admin;
pub mod auth;
mod certs;
pub mod device;
pub mod elevations;
pub mod error;
mod hosts;
mod routes;

use crate::authority::Authority;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::Policy;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Instant;

/// Shared by every handler.
pub struct AppState {
    pub authority: Authority,
    pub config: Config,
    pub policy: Policy,
    pub metrics: Metrics,
    /// The OpenID Connect relying party, when `[oidc]` is configured.
    pub rp: Option<crate::oidc::RelyingParty>,
    /// The configured elevations, validated.
    pub elevations: Vec<crate::elevation::Elevation>,
    /// Pending RFC 8628 device logins (in memory; see [`device::DeviceLogins`]).
    pub device_logins: device::DeviceLogins,
    /// `[[trusted_issuers]]` for `POST /v1/auth/token`, with their keys and the replay cache.
    pub tokens: crate::token::TokenExchange,
}

pub type SharedState = Arc<AppState>;

/// Builds the router with every v1 route, problem-document 404s and request metrics.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/metrics", get(routes::metrics))
        .route("/v1/ca/bundle", get(routes::bundle))
        .route("/v1/ca/keys", get(routes::ca_keys))
        .route("/v1/krl", get(hosts::krl))
        .route("/v1/revocations", post(admin::revoke))
        .route("/v1/admin/keys", get(admin::keys))
        .route("/v1/admin/keys/stage", post(admin::stage))
        .route("/v1/admin/keys/activate", post(admin::activate))
        .route("/v1/hosts/enroll", post(hosts::enroll))
        .route("/v1/hosts/checkin", post(hosts::checkin))
        .route("/v1/auth/info", get(auth::info))
        .route("/v1/auth/oidc/start", post(auth::start))
        .route("/v1/auth/oidc/finish", post(auth::finish))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/auth/token", post(auth::token))
        .route("/v1/auth/device/start", post(device::start))
        .route("/v1/auth/device/poll", post(device::poll))
        .route("/v1/session", get(certs::session))
        .route("/v1/certs", post(certs::issue))
        .route(
            "/v1/elevations",
            post(elevations::request).get(elevations::list),
        )
        .route("/v1/elevations/{id}", get(elevations::show))
        .route("/v1/elevations/{id}/approve", post(elevations::approve))
        .route("/v1/elevations/{id}/deny", post(elevations::deny))
        .route("/v1/elevations/{id}/cancel", post(elevations::cancel))
        .route("/v1/elevations/{id}/revoke", post(elevations::revoke))
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn track(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    state.metrics.request(
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    if let Some(kind) = resp.extensions().get::<error::RefusalKind>() {
        state.metrics.refused(kind.0);
    }
    resp
}
