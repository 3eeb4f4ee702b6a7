//! The per-boot engine token: engines listen on loopback ports that any local user could
//! reach, so `trident serve` gives every engine it starts a random token
//! ([`ENGINE_TOKEN_ENV`]) and the gateway and supervisor send it on every request
//! ([`ENGINE_TOKEN_HEADER`]); an engine started with a token answers nothing without it.
//! The only way in is the gateway, with its API keys. Tokens are compared as SHA-256
//! digests in constant time. An engine started by hand without the variable is open, as
//! before.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::ApiError;

/// The environment variable that hands an engine its token.
pub const ENGINE_TOKEN_ENV: &str = "TRIDENT_ENGINE_TOKEN";
/// The request header that carries it.
pub const ENGINE_TOKEN_HEADER: &str = "x-trident-engine-token";

/// The token an engine requires, as a digest.
#[derive(Clone)]
pub struct EngineToken([u8; 32]);

impl std::fmt::Debug for EngineToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineToken([redacted])")
    }
}

impl EngineToken {
    pub fn new(token: &str) -> Self {
        EngineToken(Sha256::digest(token.as_bytes()).into())
    }

    /// The token from the environment, if the supervisor set one.
    pub fn from_env() -> Option<Self> {
        std::env::var(ENGINE_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .map(|t| EngineToken::new(&t))
    }

    pub fn accepts(&self, presented: Option<&[u8]>) -> bool {
        let Some(p) = presented else {
            return false;
        };
        let d: [u8; 32] = Sha256::digest(p).into();
        self.0.ct_eq(&d).into()
    }
}

/// A fresh random token for one boot of the supervisor (32 bytes from the OS, hex).
pub fn generate() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Middleware: 401 in the envelope unless the request carries the engine's token.
pub async fn require_token(State(token): State<EngineToken>, req: Request, next: Next) -> Response {
    let presented = req.headers().get(ENGINE_TOKEN_HEADER).map(|v| v.as_bytes());
    if token.accepts(presented) {
        return next.run(req).await;
    }
    let mut err = ApiError::unauthorized().with_code("invalid_engine_token");
    err.message = "Engines answer only the gateway: send requests to the gateway's port".into();
    err.into_response()
}

/// Wraps an engine's router so every route needs the token, when there is one.
pub fn guard(app: axum::Router, token: Option<EngineToken>) -> axum::Router {
    match token {
        Some(t) => app.layer(axum::middleware::from_fn_with_state(t, require_token)),
        None => app,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_accepted() {
        let t = EngineToken::new("s3cret");
        assert!(t.accepts(Some(b"s3cret")));
        assert!(!t.accepts(Some(b"s3cret ")));
        assert!(!t.accepts(Some(b"")));
        assert!(!t.accepts(None));
        assert!(!format!("{t:?}").contains("s3cret"));
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
