//! f11–f13: upstreams that misbehave at the socket level, behind an in-process gateway: one
//! that accepts and never answers, one that answers byte by byte (fast enough, then too
//! slowly), one that resets the connection (before the status and mid-stream).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trident::config::{ModelsFile, Settings};
use trident::gateway::{self, GatewayState, SystemFacts};
use trident::routing::{Backends, ReplicaState, Routes};

use super::{last_event, record};

/// What the raw upstream does with each connection.
#[derive(Clone, Copy)]
enum Upstream {
    /// Accepts, reads, never answers.
    Silent,
    /// Sends an SSE response one byte at a time, `gap` apart.
    Trickle { gap: Duration },
    /// Reads the request, then resets the connection.
    Reset,
    /// Sends the SSE headers and one event, then resets.
    ResetMidStream,
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
const SSE_BODY: &str = "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n";

/// Reads until the end of the request head (the tests send small bodies with it).
async fn read_request(s: &mut TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

// Deprecated because a lingering close blocks the thread; with a zero linger it never
// waits: the close sends RST at once, which is the point.
#[allow(deprecated)]
async fn reset(s: TcpStream) {
    // SO_LINGER 0: closing sends RST instead of FIN.
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

async fn serve_raw(mode: Upstream) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_request(&mut s).await;
                match mode {
                    Upstream::Silent => std::future::pending::<()>().await,
                    Upstream::Trickle { gap } => {
                        let _ = s.write_all(SSE_HEAD.as_bytes()).await;
                        for b in SSE_BODY.bytes() {
                            if s.write_all(&[b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(gap).await;
                        }
                    }
                    Upstream::Reset => reset(s).await,
                    Upstream::ResetMidStream => {
                        let _ = s.write_all(SSE_HEAD.as_bytes()).await;
                        let _ = s.write_all(b"data: {\"n\":1}\n\n").await;
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        reset(s).await;
                    }
                }
            });
        }
    });
    port
}

/// An in-process gateway over chat model `m` on `port`, with 1 s time limits.
async fn gateway_on(port: u16) -> String {
    let text = json!({"models": {"m": {"type": "chat", "path": "/x", "port": port}}}).to_string();
    let file = ModelsFile::parse(&text, Default::default()).unwrap();
    let backends = Backends::new(&file, "127.0.0.1", &|_, _| port);
    for r in backends.replicas() {
        r.set_state(ReplicaState::Ready);
    }
    let env = super::FAST
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let settings = Settings::load(None, false, env, &[]).unwrap();
    let state = GatewayState::new(
        Arc::new(Routes::new(backends)),
        settings,
        SystemFacts::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gateway::serve(listener, state, std::future::pending()));
    base
}

async fn chat(base: &str, stream: bool) -> (reqwest::Response, Instant) {
    let sent = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"stream": stream, "messages": []}))
        .send()
        .await
        .unwrap();
    (r, sent)
}

#[tokio::test]
async fn f11_an_upstream_that_accepts_and_never_answers() {
    let base = gateway_on(serve_raw(Upstream::Silent).await).await;
    let mut figures = Vec::new();
    for stream in [false, true] {
        let (r, sent) = chat(&base, stream).await;
        let took = sent.elapsed();
        assert_eq!(r.status(), 504);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], "upstream_timeout", "{b}");
        assert!(
            (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
            "{took:?}"
        );
        figures.push((
            if stream {
                "stream 504 after"
            } else {
                "504 after"
            },
            took,
        ));
    }
    record("f11", "upstream accepts and never answers", &figures);
}

#[tokio::test]
async fn f12_an_upstream_that_answers_byte_by_byte() {
    // Slow but never silent for 1 s: relayed whole.
    let base = gateway_on(
        serve_raw(Upstream::Trickle {
            gap: Duration::from_millis(5),
        })
        .await,
    )
    .await;
    let (r, sent) = chat(&base, true).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let whole = sent.elapsed();
    assert_eq!(text, SSE_BODY);
    // Silent for longer than the idle limit between two bytes: cut with an error event.
    let base = gateway_on(
        serve_raw(Upstream::Trickle {
            gap: Duration::from_millis(1300),
        })
        .await,
    )
    .await;
    let (mut r, sent) = chat(&base, true).await;
    assert_eq!(r.status(), 200);
    let text = super::read_rest(&mut r, Duration::from_secs(6)).await;
    let cut = sent.elapsed();
    assert_eq!(
        last_event(&text)["error"]["code"],
        "upstream_timeout",
        "{text}"
    );
    assert!(!text.contains("[DONE]"));
    record(
        "f12",
        "upstream answers byte by byte",
        &[
            ("5 ms/byte relayed whole in", whole),
            ("1.3 s/byte cut after", cut),
        ],
    );
}

#[tokio::test]
async fn f13_an_upstream_that_resets() {
    let base = gateway_on(serve_raw(Upstream::Reset).await).await;
    let (r, sent) = chat(&base, false).await;
    let took = sent.elapsed();
    assert_eq!(r.status(), 502);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "bad_gateway", "{b}");

    let base = gateway_on(serve_raw(Upstream::ResetMidStream).await).await;
    let (mut r, sent) = chat(&base, true).await;
    assert_eq!(r.status(), 200);
    let text = super::read_rest(&mut r, Duration::from_secs(5)).await;
    let cut = sent.elapsed();
    assert!(text.starts_with("data: {\"n\":1}\n\n"), "{text}");
    assert_eq!(last_event(&text)["error"]["code"], "bad_gateway", "{text}");
    record(
        "f13",
        "upstream resets",
        &[("502 after", took), ("mid-stream error event after", cut)],
    );
}
