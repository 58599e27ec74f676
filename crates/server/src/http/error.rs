//! The one mapping from errors to HTTP: RFC 9457 problem+json bodies, 5xx details only in logs.

use crate::app::AppError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gpucloud_api::Problem;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: gpucloud_api::ProblemCode,
    pub detail: String,
    pub field: Option<String>,
    pub current_state: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: gpucloud_api::ProblemCode, detail: impl Into<String>) -> ApiError {
        ApiError { status, code, detail: detail.into(), field: None, current_state: None }
    }

    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code,
            field: self.field.clone(),
            current_state: self.current_state.clone(),
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        use StatusCode as S;
        let detail = e.to_string();
        match e {
            AppError::Unauthenticated | AppError::BadKey => {
                ApiError::new(S::UNAUTHORIZED, gpucloud_api::ProblemCode::Unauthorized, detail)
            }
            AppError::Forbidden(_) => ApiError::new(S::FORBIDDEN, gpucloud_api::ProblemCode::Forbidden, detail),
            AppError::NotFound { .. } => ApiError::new(S::NOT_FOUND, gpucloud_api::ProblemCode::NotFound, detail),
            AppError::Invalid { field, .. } => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, gpucloud_api::ProblemCode::InvalidRequest, detail).field(field)
            }
            AppError::Illegal(t) => ApiError {
                current_state: Some(t.state.to_string()),
                ..ApiError::new(S::CONFLICT, gpucloud_api::ProblemCode::IllegalTransition, detail)
            },
            AppError::Conflict(_) => ApiError::new(S::CONFLICT, gpucloud_api::ProblemCode::Conflict, detail),
            AppError::Fenced(_) => ApiError::new(S::CONFLICT, gpucloud_api::ProblemCode::Fenced, detail),
            AppError::PaymentRequired(_) => {
                ApiError::new(S::PAYMENT_REQUIRED, gpucloud_api::ProblemCode::PaymentRequired, detail)
            }
            AppError::QuotaExceeded(_) => ApiError::new(S::CONFLICT, gpucloud_api::ProblemCode::QuotaExceeded, detail),
            AppError::Contended(_) => {
                ApiError::new(S::SERVICE_UNAVAILABLE, gpucloud_api::ProblemCode::Contended, detail)
            }
            AppError::BadGateway(_) => ApiError::new(S::BAD_GATEWAY, gpucloud_api::ProblemCode::BadGateway, detail),
            AppError::Store(e) => {
                tracing::error!(error = %e, "store error");
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    gpucloud_api::ProblemCode::Internal,
                    "internal error; the server log has the details",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        resp
    }
}
