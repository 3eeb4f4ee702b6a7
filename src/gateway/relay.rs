//! The response half of a proxied exchange: the engine's body relayed frame by frame
//! under the exchange's time limits (`Limits`: first frame, then the idle gap of a
//! stream). A failure or a limit ends an SSE stream with a final `data: {"error":…}`
//! event and any other body with an error. `proxy` sends the request and hands the
//! response here.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName};
use axum::response::Response;

use super::proxy::{hop_by_hop, Finish};
use crate::api::ApiError;
use crate::config::settings::secs;

/// Time limits of one proxied exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    stream: bool,
    /// From sending the request to the first body frame: the whole request for a
    /// non-streaming call, `first_byte_timeout` for a stream.
    pub first: Duration,
    /// Longest silence between body frames after the first (streams only).
    idle: Option<Duration>,
}

impl Limits {
    pub fn of(settings: &crate::config::Settings, stream: bool) -> Limits {
        if stream {
            Limits {
                stream,
                first: secs(settings.first_byte_timeout_secs),
                idle: Some(secs(settings.stream_idle_timeout_secs)),
            }
        } else {
            Limits {
                stream,
                first: Duration::from_secs(settings.request_timeout_secs.max(1)),
                idle: None,
            }
        }
    }

    pub fn timeout_error(&self) -> ApiError {
        let what = if self.stream {
            "The model's engine did not start answering within the first-byte timeout"
        } else {
            "The model's engine did not answer within the request timeout"
        };
        ApiError::upstream_timeout(what)
    }
}

/// Passes the upstream response through, streaming its body under the exchange's time
/// limits (`timer` is the exchange's, still set for the first frame).
pub(super) fn respond(
    resp: axum::http::Response<hyper::body::Incoming>,
    mut finish: Finish,
    limits: Limits,
    timer: Pin<Box<tokio::time::Sleep>>,
) -> Response {
    finish.status = resp.status();
    let (mut parts, upstream) = resp.into_parts();
    drop_hop_by_hop(&mut parts.headers);
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let relay = Relay {
        upstream,
        sse,
        done: false,
        tail: SseTail::default(),
        timer,
        limits,
        finish,
    };
    let mut out = Response::new(Body::new(relay));
    *out.status_mut() = parts.status;
    *out.headers_mut() = parts.headers;
    out
}

/// Removes hop-by-hop headers in place; the map is only rebuilt when it has one (engines
/// rarely send them), so the common response keeps its headers without a copy.
fn drop_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    let mut kept = HeaderMap::with_capacity(headers.len());
    // The map yields a name once, then `None` for each further value under it.
    let mut name: Option<HeaderName> = None;
    for (k, v) in std::mem::take(headers) {
        if k.is_some() {
            name = k;
        }
        if let Some(k) = name.as_ref().filter(|k| !hop_by_hop(k)) {
            kept.append(k.clone(), v);
        }
    }
    *headers = kept;
}

/// The response body relayed from the engine, frame by frame. An upstream failure or a
/// time limit (first frame, then the idle gap of a stream) ends an SSE stream with an
/// error event (closing a half-written event first) and any other body with an error,
/// which makes the server abort the response. Dropping it (the client left) drops the
/// upstream body, which closes the engine connection.
struct Relay {
    upstream: hyper::body::Incoming,
    sse: bool,
    done: bool,
    /// To close a half-written SSE event before the error event.
    tail: SseTail,
    /// Fires when the current time limit passes; re-armed after each frame of a stream.
    timer: Pin<Box<tokio::time::Sleep>>,
    limits: Limits,
    finish: Finish,
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let polled = match Pin::new(&mut this.upstream).poll_frame(cx) {
            Poll::Ready(p) => p,
            Poll::Pending => {
                ready!(this.timer.as_mut().poll(cx));
                this.done = true;
                tracing::warn!(model = %this.finish.model.id, "upstream went silent; ending the response");
                let err = ApiError::upstream_timeout(
                    "The model's engine stopped sending within the stream idle timeout; the response is incomplete",
                );
                return Poll::Ready(Some(this.fail(err)));
            }
        };
        match polled {
            Some(Ok(frame)) => {
                if let Some(b) = frame.data_ref() {
                    this.tail.remember(b);
                    if let Some(idle) = this.limits.idle {
                        this.timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + idle);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.done = true;
                tracing::warn!(model = %this.finish.model.id, error = %e, "upstream failed mid-response");
                let err = ApiError::bad_gateway(
                    "The model's engine stopped while streaming; the response is incomplete",
                );
                Poll::Ready(Some(this.fail(err)))
            }
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.upstream.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.done {
            http_body::SizeHint::with_exact(0)
        } else {
            self.upstream.size_hint()
        }
    }
}

impl Relay {
    /// The last frame after a failure: an SSE error event, or an error for other bodies.
    fn fail(&self, err: ApiError) -> Result<http_body::Frame<Bytes>, std::io::Error> {
        if !self.sse {
            return Err(std::io::Error::other(err.message));
        }
        Ok(http_body::Frame::data(self.tail.error_event(&err)))
    }
}

/// The last two bytes of a relayed SSE body: enough to end a half-written event (or line)
/// before the final error event, so a client sees that event whole. Pure, so the fuzz
/// target drives it with any byte stream cut into any frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseTail([u8; 2]);

impl Default for SseTail {
    /// Nothing sent yet: at an event boundary.
    fn default() -> Self {
        SseTail([b'\n', b'\n'])
    }
}

impl SseTail {
    /// Notes a frame's bytes as sent.
    pub fn remember(&mut self, b: &[u8]) {
        match b.len() {
            0 => {}
            1 => self.0 = [self.0[1], b[0]],
            n => self.0 = [b[n - 2], b[n - 1]],
        }
    }

    /// The final `data: {"error":…}` event, preceded by whatever ends the current event.
    pub fn error_event(&self, err: &ApiError) -> Bytes {
        let sep = if self.0 == [b'\n', b'\n'] {
            ""
        } else if self.0[1] == b'\n' {
            "\n"
        } else {
            "\n\n"
        };
        Bytes::from(format!("{sep}data: {}\n\n", err.to_json()))
    }
}
