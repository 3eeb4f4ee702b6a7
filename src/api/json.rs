//! `ApiJson<T>`: the JSON body extractor of every handler.
//!
//! Unlike `axum::Json` it answers every rejection with the OpenAI envelope: wrong content
//! type (415), body too large (413), malformed JSON, a JSON array or scalar where an object
//! is expected, and type errors naming the offending field (400).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body deserialised into `T`, with envelope rejections.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::unsupported_media_type());
        }
        let limit = req
            .extensions()
            .get::<crate::api::BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(2 * 1024 * 1024);
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit)
            } else {
                ApiError::invalid("Could not read the request body")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a request body into `T` with envelope errors (shared with the gateway, which
/// looks at bodies before forwarding them).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(format!(
            "We could not parse the JSON body of your request: {}",
            strip_location(&e.to_string())
        ))
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid("The request body must be a JSON object"));
    }
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    T::deserialize(de).map_err(|e| {
        let path = track.path().to_string();
        let msg = strip_location(&e.to_string());
        let missing = msg
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        if let Some(field) = missing {
            ApiError::invalid_param(field, format!("'{field}' is required"))
        } else if path.is_empty() || path == "." {
            ApiError::invalid(format!("Invalid request: {msg}"))
        } else {
            ApiError::invalid_param(&path, format!("Invalid value for '{path}': {msg}"))
        }
    })
}

fn strip_location(msg: &str) -> String {
    msg.split(" at line ").next().unwrap_or(msg).to_string()
}
