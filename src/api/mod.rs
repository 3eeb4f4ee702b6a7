//! HTTP building blocks shared by engines and the gateway: the error envelope, the JSON
//! extractor, the fallback handlers that put framework rejections in the envelope, and the
//! OpenAI-compatible request/response types.

pub mod error;
pub mod json;
pub mod types;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use error::ApiError;
pub use json::ApiJson;

/// The body limit of a router, stored in request extensions so rejections can state it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Fallback for unknown routes.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::route_not_found(req.uri().path())
}

/// Fallback for a known route called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Middleware: any error response that is not already JSON (a rejection produced by a
/// layer, e.g. the body limit or a timeout) is rewritten into the envelope.
/// Also records the router's [`BodyLimit`] for the JSON extractor.
pub async fn envelope_errors(
    axum::extract::State(limit): axum::extract::State<BodyLimit>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut().insert(limit);
    envelope(next.run(req).await, limit)
}

/// `resp`, or the envelope for it when it is an error response that is not JSON yet.
pub fn envelope(resp: Response, limit: BodyLimit) -> Response {
    let status = resp.status();
    if status.is_success() || status.is_informational() || status.is_redirection() {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return resp;
    }
    let err = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(limit.0),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::unsupported_media_type(),
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => ApiError::timeout(),
        StatusCode::NOT_FOUND => ApiError::route_not_found(""),
        s if s.is_client_error() => ApiError::invalid("The request could not be processed"),
        _ => ApiError::internal("Internal error"),
    };
    let mut out = err.into_response();
    *out.status_mut() = status;
    out
}

/// Answers `GET /health`.
pub async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}
