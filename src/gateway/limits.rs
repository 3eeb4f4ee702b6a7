//! Request limits of the gateway: body size and body read time, request ids, the in-flight
//! counter that draining waits on, and the draining switch itself. Per-model admission
//! lives with each model in the routing table (`routing::admission`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use tokio::sync::Notify;

use super::GatewayState;
use crate::api::{self, ApiError, BodyLimit};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Counts requests in flight (streams until their last byte) and lets draining wait for 0.
#[derive(Debug, Default)]
pub struct Inflight {
    count: AtomicUsize,
    idle: Notify,
    draining: AtomicBool,
}

/// Held while a request is in flight.
#[derive(Debug)]
pub struct InflightGuard(Arc<Inflight>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Inflight {
    pub fn enter(self: &Arc<Self>) -> InflightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Waits until nothing is in flight or `timeout` passed; true when idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() == 0;
            }
        }
    }
}

/// Admits a proxied request: 503 while draining; otherwise it counts as in flight until its
/// response body ends (the proxy moves the guard into the body).
pub fn admit(s: &GatewayState) -> Result<InflightGuard, ApiError> {
    if s.inflight.is_draining() {
        return Err(ApiError::unavailable("The server is shutting down"));
    }
    Ok(s.inflight.enter())
}

/// Reads the whole body within `body_read_timeout_secs` and `max_body_bytes` (413 / 408
/// envelopes), so a client that trickles its body cannot hold a slot.
pub async fn read_body(s: &GatewayState, body: Body) -> Result<Bytes, ApiError> {
    let limit = s.settings.max_body_bytes;
    let timeout = Duration::from_secs(s.settings.body_read_timeout_secs.max(1));
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::too_large(limit)
            } else {
                ApiError::invalid("Could not read the request body")
            })
        }
        Err(_) => {
            let mut e =
                ApiError::invalid("Timed out reading the request body").with_code("timeout");
            e.status = axum::http::StatusCode::REQUEST_TIMEOUT;
            Err(e)
        }
    }
}

fn acceptable_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// A fresh request id: 128 random bits as 32 lowercase hex digits, written on the stack.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    let mut out = [0u8; 32];
    for (i, c) in out.iter_mut().enumerate() {
        *c = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).expect("hex is a valid header value. This is a bug.")
}

/// The gateway's outermost layer: keeps a sane incoming `x-request-id` or makes one and
/// echoes it on the response, and puts any error response that is not JSON yet (a
/// framework rejection) in the envelope, which states the body limit. (No gateway route
/// uses the JSON extractor, so the limit is not put in the request's extensions: that
/// map would be allocated for it on every request.) A plain
/// tower service rather than `middleware::from_fn`, which boxes a future and clones the
/// inner service on every request (both showed in the gateway's profile).
#[derive(Debug, Clone, Copy)]
pub struct Front(pub BodyLimit);

impl<S> tower::Layer<S> for Front {
    type Service = FrontService<S>;
    fn layer(&self, inner: S) -> FrontService<S> {
        FrontService {
            inner,
            limit: self.0,
        }
    }
}

/// [`Front`] around the router.
#[derive(Debug, Clone)]
pub struct FrontService<S> {
    inner: S,
    limit: BodyLimit,
}

impl<S> tower::Service<Request> for FrontService<S>
where
    S: tower::Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = FrontFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if acceptable_id(v) => v.clone(),
            _ => {
                let v = new_request_id();
                req.headers_mut().insert(X_REQUEST_ID.clone(), v.clone());
                v
            }
        };
        FrontFuture {
            inner: self.inner.call(req),
            id: Some(id),
            limit: self.limit,
        }
    }
}

/// The response half of [`FrontService`].
pub struct FrontFuture<F> {
    inner: F,
    id: Option<HeaderValue>,
    limit: BodyLimit,
}

impl<F, E> std::future::Future for FrontFuture<F>
where
    F: std::future::Future<Output = Result<Response, E>> + Unpin,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let resp = ready!(Pin::new(&mut this.inner).poll(cx))?;
        let mut resp = api::envelope(resp, this.limit);
        if let Some(id) = this.id.take() {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 32);
            assert!(id
                .as_bytes()
                .iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert!(acceptable_id(&id));
        }
    }

    #[tokio::test]
    async fn inflight_waits_for_the_last_guard() {
        let f = Arc::new(Inflight::default());
        let g = f.enter();
        assert!(!f.wait_idle(Duration::from_millis(10)).await);
        let f2 = f.clone();
        let waiter = tokio::spawn(async move { f2.wait_idle(Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(g);
        assert!(waiter.await.unwrap());
        assert_eq!(f.count(), 0);
    }
}
