//! The client that carries proxied requests to engines and remote servers: HTTP/1.1 over
//! hyper's connection API, with one pool of keep-alive connections per gateway worker
//! thread. `proxy` sends through [`send`]; `relay` streams the response body back.
//!
//! Each worker is a single-threaded event loop (`gateway::serve`), so its pool needs no
//! lock, no shared map and no cross-thread wake-up: a request and its upstream connection
//! live on one thread. A connection goes back to the pool as soon as the response head
//! has arrived; it is taken again only once hyper reports it ready, which is after the
//! previous response body has been read to its end. A pooled connection that turns out to
//! be closed before the request was written (the server dropped an idle connection) is
//! replaced by a fresh one for that request, so an engine's idle close never reaches the
//! client as a 502.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::uri::{Authority, Scheme};
use axum::http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The request body the gateway sends: the client's, read whole (`limits::read_body`).
pub type Body = Full<Bytes>;

/// Time a TCP connect (with name resolution) and a TLS handshake get, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A pooled connection whose last request began longer ago than this is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pooled connections kept per origin and worker; one more is closed after its response.
const MAX_POOLED: usize = 512;

/// Why a request got no response from upstream (nothing of a response reached us).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream URI {0} has no http(s) origin")]
    Uri(Uri),
    #[error("could not connect to {0}: {1}")]
    Connect(Authority, std::io::Error),
    #[error("connecting to {0} took longer than {CONNECT_TIMEOUT:?}")]
    ConnectTimeout(Authority),
    #[error("TLS with {0} failed: {1}")]
    Tls(Authority, std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Scheme and authority of a request: the pool's key, with the `host` header it implies.
#[derive(Clone)]
struct Origin {
    https: bool,
    authority: Authority,
    host: HeaderValue,
}

/// Whether `uri` is https (`Some(true)`) or http; `None` for any other scheme or none.
fn is_https(uri: &Uri) -> Option<bool> {
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => Some(false),
        Some(s) if *s == Scheme::HTTPS => Some(true),
        _ => None,
    }
}

impl Origin {
    fn of(uri: &Uri) -> Option<Origin> {
        let https = is_https(uri)?;
        let authority = uri.authority()?.clone();
        let host = HeaderValue::from_str(authority.as_str()).ok()?;
        Some(Origin {
            https,
            authority,
            host,
        })
    }

    fn same(&self, https: bool, authority: &Authority) -> bool {
        self.https == https && self.authority == *authority
    }

    /// Host and port to connect to (an IPv6 literal without its brackets).
    fn address(&self) -> (&str, u16) {
        let host = self.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = self
            .authority
            .port_u16()
            .unwrap_or(if self.https { 443 } else { 80 });
        (host, port)
    }
}

struct Pooled {
    tx: SendRequest<Body>,
    /// When its last request began.
    used: Instant,
}

/// One worker's connections, by origin (a gateway has few: a linear scan beats hashing).
#[derive(Default)]
struct Pool {
    origins: Vec<(Origin, Vec<Pooled>)>,
}

impl Pool {
    /// The index of the origin's entry for `uri`, made on first use; `None` for a URI
    /// without an http(s) origin.
    fn origin(&mut self, uri: &Uri) -> Option<usize> {
        let https = is_https(uri)?;
        let authority = uri.authority()?;
        if let Some(i) = self
            .origins
            .iter()
            .position(|(o, _)| o.same(https, authority))
        {
            return Some(i);
        }
        self.origins.push((Origin::of(uri)?, Vec::new()));
        Some(self.origins.len() - 1)
    }

    /// A ready connection of origin `i`, dropping closed and expired ones on the way;
    /// connections still busy with a response body stay.
    fn checkout(&mut self, i: usize, now: Instant) -> Option<SendRequest<Body>> {
        let conns = &mut self.origins[i].1;
        let mut j = conns.len();
        while j > 0 {
            j -= 1;
            let c = &conns[j];
            if c.tx.is_closed() || (c.tx.is_ready() && now - c.used > IDLE_TIMEOUT) {
                conns.swap_remove(j);
            } else if c.tx.is_ready() {
                return Some(conns.swap_remove(j).tx);
            }
        }
        None
    }

    fn checkin(&mut self, i: usize, tx: SendRequest<Body>, used: Instant) {
        let conns = &mut self.origins[i].1;
        if conns.len() < MAX_POOLED {
            conns.push(Pooled { tx, used });
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// The calling thread's pool (the borrow never spans an await).
fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    POOL.with(|p| f(&mut p.borrow_mut()))
}

/// Sends `req` (absolute URI) on a pooled or new connection of the calling worker and
/// returns the response head with its streaming body; `now` is the caller's clock
/// reading. Dropping the future before it completes closes that connection (HTTP/1 has no
/// other way to abandon a request).
pub async fn send(
    mut req: Request<Body>,
    now: Instant,
) -> Result<Response<Incoming>, UpstreamError> {
    let found = with_pool(|p| {
        let i = p.origin(req.uri())?;
        Some((i, p.origins[i].0.host.clone()))
    });
    let Some((i, host)) = found else {
        return Err(UpstreamError::Uri(req.uri().clone()));
    };
    // Origin-form on the wire, the authority in `host`.
    let path = req.uri().path_and_query().cloned();
    *req.uri_mut() = path.map_or_else(|| Uri::from_static("/"), Uri::from);
    req.headers_mut().insert(header::HOST, host);

    if let Some(mut tx) = with_pool(|p| p.checkout(i, now)) {
        match tx.try_send_request(req).await {
            Ok(resp) => {
                with_pool(|p| p.checkin(i, tx, now));
                return Ok(resp);
            }
            // Not written: the connection had closed meanwhile. A fresh one takes it.
            Err(mut e) => match e.take_message() {
                Some(r) => req = r,
                None => return Err(e.into_error().into()),
            },
        }
    }
    // Boxed: the connect and TLS futures are most of this one's size, and the whole
    // request future is moved (copied) on every request while a connect is rare.
    let origin = with_pool(|p| p.origins[i].0.clone());
    let mut tx = Box::pin(connect(&origin)).await?;
    let resp = tx.send_request(req).await?;
    with_pool(|p| p.checkin(i, tx, now));
    Ok(resp)
}

/// Opens a connection to `origin` (TLS for https) and spawns its driver on this worker.
async fn connect(origin: &Origin) -> Result<SendRequest<Body>, UpstreamError> {
    let name = &origin.authority;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(origin.address()))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(name.clone()))?
        .map_err(|e| UpstreamError::Connect(name.clone(), e))?;
    // Requests are small writes answered at once: never hold them back (Nagle).
    let _ = tcp.set_nodelay(true);
    if !origin.https {
        return handshake(tcp).await;
    }
    let server = rustls::pki_types::ServerName::try_from(origin.address().0.to_string())
        .map_err(|e| UpstreamError::Tls(name.clone(), std::io::Error::other(e)))?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, tls_connector().connect(server, tcp))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(name.clone()))?
        .map_err(|e| UpstreamError::Tls(name.clone(), e))?;
    handshake(tls).await
}

/// HTTP/1 over `io`, its connection driven by a task on this worker.
async fn handshake<IO>(io: IO) -> Result<SendRequest<Body>, UpstreamError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

/// The TLS connector of https upstreams (`upstream_ca_file`, HTTP/1.1 by ALPN), built once.
fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let mut cfg = super::upstream_tls();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    #[test]
    fn origins_give_the_address_and_host_to_use() {
        let o = |u: &str| Origin::of(&u.parse().unwrap());
        let plain = o("http://engine:9001/v1/embeddings?x=1").unwrap();
        assert_eq!((plain.address(), plain.https), (("engine", 9001), false));
        assert_eq!(plain.host, "engine:9001");
        assert_eq!(
            o("https://api.example.com/v1").unwrap().address(),
            ("api.example.com", 443)
        );
        assert_eq!(o("http://[::1]:8000/").unwrap().address(), ("::1", 8000));
        assert_eq!(o("http://10.0.0.2/").unwrap().address(), ("10.0.0.2", 80));
        assert!(o("/v1/embeddings").is_none());
        assert!(o("ftp://host/").is_none());
        // The pool keys by scheme too: another scheme never finds a pooled http origin.
        let mut pool = Pool::default();
        let i = pool.origin(&"http://engine:9001/a".parse().unwrap());
        let j = pool.origin(&"https://engine:9001/b".parse().unwrap());
        assert!(i.is_some() && j.is_some());
        assert_ne!(i, j);
        assert_eq!(pool.origin(&"http://engine:9001/c".parse().unwrap()), i);
        assert!(pool
            .origin(&"ftp://engine:9001/".parse().unwrap())
            .is_none());
    }

    /// A server that answers `replies` requests per connection, then closes it; it
    /// counts the connections it accepted. A request for `/held` gets its head and a first
    /// chunk, and the body's end only once `hold` is notified.
    async fn closing_server(
        replies: usize,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<Notify>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(Notify::new());
        let (count, held) = (accepted.clone(), hold.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let held = held.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..replies {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => got.extend_from_slice(&buf[..k]),
                            }
                        }
                        let head = String::from_utf8_lossy(&got).to_string();
                        let body = format!("conn {n} {}", head.lines().next().unwrap_or(""));
                        let host = head
                            .lines()
                            .find(|l| l.starts_with("host:"))
                            .unwrap_or("")
                            .to_string();
                        let body = format!("{body} {host}");
                        if head.starts_with("GET /held ") {
                            let chunk = format!("{:x}\r\n{body}\r\n", body.len());
                            let resp = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                            if s.write_all(format!("{resp}{chunk}").as_bytes())
                                .await
                                .is_err()
                            {
                                return;
                            }
                            held.notified().await;
                            if s.write_all(b"0\r\n\r\n").await.is_err() {
                                return;
                            }
                            continue;
                        }
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    // Close the connection after the last reply, as a server dropping an
                    // idle keep-alive connection does.
                });
            }
        });
        (addr, accepted, hold)
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> Result<String, UpstreamError> {
        use http_body_util::BodyExt;
        let req = Request::builder()
            .uri(format!("http://{addr}{path}"))
            .body(Body::new(Bytes::new()))
            .unwrap();
        let resp = send(req, Instant::now()).await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_are_reused_in_origin_form_and_replaced_when_closed() {
        let (addr, accepted, _) = closing_server(2).await;
        // Two requests share the first connection, in origin form with the host header.
        let a = get(addr, "/a?q=1").await.unwrap();
        assert_eq!(a, format!("conn 1 GET /a?q=1 HTTP/1.1 host: {addr}"));
        assert!(get(addr, "/b").await.unwrap().starts_with("conn 1 GET /b "));
        // The server has closed it; the next request gets a new one, not an error.
        until_open(0).await;
        assert!(get(addr, "/c").await.unwrap().starts_with("conn 2 GET /c "));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Waits (bounded) until the calling thread's pool holds `n` open connections.
    async fn until_open(n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let open = || {
            with_pool(|p| {
                p.origins
                    .iter()
                    .flat_map(|(_, conns)| conns)
                    .filter(|c| !c.tx.is_closed())
                    .count()
            })
        };
        while open() != n {
            assert!(
                Instant::now() < deadline,
                "{} open connections, not {n}",
                open()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_still_carrying_a_body_is_not_shared() {
        use http_body_util::BodyExt;
        let (addr, accepted, hold) = closing_server(2).await;
        let req = Request::builder()
            .uri(format!("http://{addr}/held"))
            .body(Body::new(Bytes::new()))
            .unwrap();
        // The first response's body has not ended: its connection is busy.
        let mut held = send(req, Instant::now()).await.unwrap().into_body();
        let first = held.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(first.starts_with(b"conn 1 GET /held "));
        assert!(get(addr, "/other")
            .await
            .unwrap()
            .starts_with("conn 2 GET /other "));
        hold.notify_waiters();
        assert!(held.collect().await.unwrap().to_bytes().is_empty());
        // Once that body ended, its connection serves again: the latest one is taken first,
        // and once the server has closed that, the first one is.
        let again = get(addr, "/again").await.unwrap();
        assert!(again.starts_with("conn 2 GET /again "), "{again}");
        until_open(1).await;
        let last = get(addr, "/last").await.unwrap();
        assert!(last.starts_with("conn 1 GET /last "), "{last}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_connection_is_an_error_naming_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = get(addr, "/").await.unwrap_err();
        assert!(matches!(e, UpstreamError::Connect(..)), "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
