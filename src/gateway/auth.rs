//! API-key authentication: `Authorization: Bearer <key>` only.
//!
//! Keys are kept as SHA-256 digests and compared in constant time against every configured
//! key (no early exit), so neither the key nor its length leaks through timing. Keys never
//! reach logs, metrics or error bodies.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::GatewayState;
use crate::api::ApiError;
use crate::config::Secret;
use crate::metrics::reason;

/// The accepted keys, as digests.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl ApiKeys {
    pub fn new(keys: &[Secret]) -> Self {
        ApiKeys {
            digests: keys.iter().map(|k| digest(k.expose().as_bytes())).collect(),
        }
    }

    /// No keys configured: every request passes.
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        if self.is_open() {
            return true;
        }
        let Some(value) = authorization else {
            return false;
        };
        let Some(token) = bearer_token(value) else {
            return false;
        };
        let d = digest(token);
        let mut ok = subtle::Choice::from(0u8);
        for k in &self.digests {
            ok |= k.ct_eq(&d);
        }
        ok.into()
    }
}

/// The token of a `Bearer` credential (scheme case-insensitive, RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Paths served without a key.
fn is_public(path: &str, metrics_public: bool) -> bool {
    matches!(path, "/health" | "/ready") || (metrics_public && path == "/metrics")
}

/// Middleware: 401 envelope unless the request carries a configured key.
pub async fn require_key(State(s): State<GatewayState>, req: Request, next: Next) -> Response {
    if s.keys.is_open() || is_public(req.uri().path(), s.settings.metrics_public) {
        return next.run(req).await;
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if s.keys.check(auth) {
        next.run(req).await
    } else {
        s.metrics
            .rejected
            .with_label_values(&["", "gateway", reason::UNAUTHORIZED])
            .inc();
        let mut resp = ApiError::unauthorized().into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_bearer_keys_pass() {
        let keys = ApiKeys::new(&[Secret::new("sk-alpha"), Secret::new("sk-beta-2")]);
        assert!(keys.check(Some(b"Bearer sk-alpha")));
        assert!(keys.check(Some(b"bearer sk-beta-2")));
        for bad in [
            &b"Bearer sk-alph"[..],
            b"Bearer sk-alphaX",
            b"Bearer ",
            b"Basic sk-alpha",
            b"sk-alpha",
            b"Bearersk-alpha",
            b"Bearer sk-gamma",
        ] {
            assert!(!keys.check(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!keys.check(None));
        assert!(ApiKeys::new(&[]).check(None));
        assert!(!format!("{keys:?}").contains("alpha"));
    }

    #[test]
    fn health_and_ready_are_public_metrics_only_when_configured() {
        assert!(is_public("/health", false));
        assert!(is_public("/ready", false));
        assert!(!is_public("/metrics", false));
        assert!(is_public("/metrics", true));
        assert!(!is_public("/v1/models", true));
    }
}
