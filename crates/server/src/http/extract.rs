//! Request extractors whose failures are problem documents that name the field at fault.

use super::error::ApiError;
use crate::app::{App, Principal};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A JSON body: wrong content type is 415, larger than `LIMIT` bytes 413, bad syntax 400, and a
/// body that parses but does not fit the schema 422 with the path of the offending field.
pub struct ApiJson<T, const LIMIT: usize = { super::MAX_BODY }>(pub T);

impl<T: DeserializeOwned, const LIMIT: usize> FromRequest<Arc<App>> for ApiJson<T, LIMIT> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<App>) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                gpucloud_api::ProblemCode::UnsupportedMediaType,
                "the body must be JSON with Content-Type: application/json",
            ));
        }
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                gpucloud_api::ProblemCode::PayloadTooLarge,
                format!("the body is larger than {LIMIT} bytes"),
            )
        };
        let bytes = if LIMIT == super::MAX_BODY {
            Bytes::from_request(req, state).await.map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, gpucloud_api::ProblemCode::MalformedBody, r.body_text())
                }
            })?
        } else {
            // The router's default limit is for the extractor above; a route with its own
            // limit reads the body itself.
            axum::body::to_bytes(req.into_body(), LIMIT).await.map_err(|_| too_large())?
        };
        parse_json(&bytes).map(ApiJson)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                gpucloud_api::ProblemCode::MalformedJson,
                format!("the body is not valid JSON: {inner}"),
            ),
            Category::Data => {
                let field = if path == "." { None } else { Some(path.clone()) };
                let detail = match &field {
                    Some(f) => format!("{f}: {inner}"),
                    None => inner.to_string(),
                };
                let mut err =
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, gpucloud_api::ProblemCode::InvalidRequest, detail);
                err.field = field;
                err
            }
        }
    })
}

/// The authenticated caller. The idempotency layer may have resolved it already.
pub struct Auth(pub Principal);

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(Auth(p.clone()));
        }
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        Ok(Auth(app.authenticate(header).await?))
    }
}
