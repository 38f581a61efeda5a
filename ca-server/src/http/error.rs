//! Mapping every failure to an RFC 9457 problem document. Details never carry secrets;
//! internal errors are logged and answered with a generic text.

use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use pedm_api::problem::PROBLEM_CONTENT_TYPE;
use pedm_api::{Problem, ProblemType};
use serde::de::DeserializeOwned;

/// A refusal or failure on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub kind: ProblemType,
    pub detail: String,
}

/// Attached to error responses so the metrics layer can count refusals by type.
#[derive(Debug, Clone, Copy)]
pub struct RefusalKind(pub &'static str);

impl ApiError {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// An internal failure: logged in full, answered without internals.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {err}");
        Self::new(ProblemType::Internal, format!("{context} failed; nothing was issued. The operator can find the cause in the CA's log"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem::new(self.kind, self.detail);
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp =
            (status, [(header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)], body).into_response();
        resp.extensions_mut().insert(RefusalKind(self.kind.slug()));
        resp
    }
}

/// JSON body extractor whose rejections are problem documents naming what was wrong.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(ApiError::new(
                ProblemType::InvalidRequest,
                format!(
                    "{}; send a JSON body as documented in docs/api.md",
                    rejection.body_text()
                ),
            )),
        }
    }
}

/// Answers unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::new(ProblemType::NotFound, "no such endpoint; see docs/api.md")
}
