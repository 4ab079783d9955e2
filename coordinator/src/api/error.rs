//! API errors: a status, a stable machine-readable code and a message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skiff_api_types::ApiErrorBody;
use tracing::warn;

use crate::store::StoreError;

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} {id:?}"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        warn!(error = %e, "API request failed on the store.");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "coordinator store is unavailable; retry",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiErrorBody {
                code: self.code.to_owned(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

impl From<crate::deploy::DeployError> for ApiError {
    fn from(e: crate::deploy::DeployError) -> Self {
        use crate::deploy::DeployError as E;
        match e {
            E::Name(_) => Self::bad_request("invalid_name", e.to_string()),
            E::Invalid(_) => Self::bad_request("invalid_stack", e.to_string()),
            E::Placement(_) => Self::new(StatusCode::CONFLICT, "unplaceable", e.to_string()),
            // 409, not 403: the token may deploy; the release conflicts
            // with the cluster's policy (and clients read 403 as a token
            // refused).
            E::Policy(_) => Self::new(StatusCode::CONFLICT, "refused_by_policy", e.to_string()),
            E::NoStack(ref name) => Self::not_found("stack", name),
            E::Store(s) | E::Network(crate::network::NetworkError::Store(s)) => s.into(),
            E::Network(_) => Self::new(StatusCode::CONFLICT, "network_full", e.to_string()),
            E::Encode(_) => {
                warn!(error = %e, "A deploy failed to encode its plans.");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}
