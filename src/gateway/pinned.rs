//! The gateway's listeners pinned to one model (`model_ports`): the seed's commands call
//! `:8001/v1/chat/completions`, `:8002/v1/embeddings`, `:8003/v1/rerank`, so the gateway
//! also listens on each model's `port`. A pinned listener only accepts: its connections go
//! to the same workers, router and middleware as the main port's (`serve`), and every
//! request on them carries a [`Pin`] that `proxy` (the model a request goes to), `status`
//! (`/v1/models`, `/ready`) and `admin` (main port only) look at. The supervisor opens,
//! retargets and closes listeners at start and on reload; [`PinnedListeners`] owns them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;

/// The model a pinned listener serves, attached to each request accepted on it.
#[derive(Debug, Clone)]
pub struct Pin {
    pub model: Arc<str>,
    pub port: u16,
}

impl Pin {
    /// 404 for a request on this port that names another model.
    pub fn other_model(&self, asked: &str) -> ApiError {
        let shown: String = asked
            .chars()
            .take(128)
            .filter(|c| !c.is_control())
            .collect();
        let mut e = ApiError::model_not_found(asked);
        e.message = format!(
            "The model '{shown}' is not served on port {}: this port serves only the model '{}'. \
             Leave 'model' out (or name '{}'), or call the gateway's main port for other models.",
            self.port, self.model, self.model
        );
        e
    }

    /// 404 for a request on a port whose model a reload removed (the connection outlived it).
    pub fn gone(&self) -> ApiError {
        let mut e = ApiError::model_not_found(&self.model);
        e.message = format!(
            "Port {} served the model '{}', which is no longer configured",
            self.port, self.model
        );
        e
    }
}

/// A connection accepted on a pinned listener, with the model it is pinned to.
pub(super) type Accepted = (TcpStream, Pin);

struct Open {
    model: Arc<Mutex<Arc<str>>>,
    stop: CancellationToken,
}

/// Every pinned listener of the gateway, by port.
pub struct PinnedListeners {
    tx: mpsc::UnboundedSender<Accepted>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Accepted>>>,
    open: Mutex<BTreeMap<u16, Open>>,
    /// Parent of every listener's token: the gateway's shutdown closes them all.
    stop: CancellationToken,
}

impl Default for PinnedListeners {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        PinnedListeners {
            tx,
            rx: Mutex::new(Some(rx)),
            open: Mutex::new(BTreeMap::new()),
            stop: CancellationToken::new(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PinnedListeners {
    /// The accepted connections (`serve` takes them once).
    pub(super) fn take_incoming(&self) -> Option<mpsc::UnboundedReceiver<Accepted>> {
        lock(&self.rx).take()
    }

    /// Starts accepting on `listener` for `model` (a listener already on `port` is closed).
    pub fn open(&self, port: u16, model: &str, listener: TcpListener) {
        let model = Arc::new(Mutex::new(Arc::<str>::from(model)));
        let stop = self.stop.child_token();
        let previous = lock(&self.open).insert(
            port,
            Open {
                model: model.clone(),
                stop: stop.clone(),
            },
        );
        if let Some(p) = previous {
            p.stop.cancel();
        }
        tokio::spawn(accept_task(listener, port, model, self.tx.clone(), stop));
    }

    /// Pins the listener on `port` to another model (connections accepted from now on).
    pub fn retarget(&self, port: u16, model: &str) {
        if let Some(o) = lock(&self.open).get(&port) {
            *lock(&o.model) = Arc::from(model);
        }
    }

    /// Stops accepting on `port` (connections already open finish on their own).
    pub fn close(&self, port: u16) {
        if let Some(o) = lock(&self.open).remove(&port) {
            o.stop.cancel();
        }
    }

    /// Closes every listener (the gateway is stopping).
    pub fn close_all(&self) {
        self.stop.cancel();
        lock(&self.open).clear();
    }

    /// The open listeners: port → model id.
    pub fn ports(&self) -> BTreeMap<u16, String> {
        lock(&self.open)
            .iter()
            .map(|(p, o)| (*p, lock(&o.model).to_string()))
            .collect()
    }
}

/// Accepts on one pinned listener until `stop`, handing each connection to `serve`.
async fn accept_task(
    listener: TcpListener,
    port: u16,
    model: Arc<Mutex<Arc<str>>>,
    tx: mpsc::UnboundedSender<Accepted>,
    stop: CancellationToken,
) {
    loop {
        let socket = tokio::select! {
            r = listener.accept() => match r {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!(port, error = %e, "accept failed on a model port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let pin = Pin {
            model: lock(&model).clone(),
            port,
        };
        if tx.send((socket, pin)).is_err() {
            return;
        }
    }
}

/// Binds `port` on `host` for a model's pinned listener; the error names both.
pub async fn bind(host: &str, port: u16, model: &str) -> Result<TcpListener, String> {
    TcpListener::bind((host, port)).await.map_err(|e| {
        format!("port {port} (model {model:?}) cannot be used by the gateway on {host}: {e}")
    })
}
