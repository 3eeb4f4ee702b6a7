//! The operator's endpoints on a running appliance: `POST /admin/reload` (apply the edited
//! models.json) and `POST /admin/restart/{model}` (a rolling restart of one model). They
//! need the API key like every route, and answer only connections from this machine
//! (`trident reload` / `trident restart` inside the container, `docker exec`, `kubectl
//! exec`): 403 from anywhere else, so a key handed to API users cannot restart models. They
//! are not on the listeners pinned to one model (`pinned`): 404 there.
//! The work itself is the supervisor's: a handler sends a [`Command`] over [`Control`] and
//! answers with the report it gets back. Commands run one at a time, in order.

use std::net::SocketAddr;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::{mpsc, oneshot};

use super::GatewayState;
use crate::api::ApiError;

/// The peer address of a gateway connection (set on every request by `serve`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What the supervisor answers: a JSON report, or an error for the caller.
pub type Reply = Result<serde_json::Value, ApiError>;

/// One operator command for the supervisor.
#[derive(Debug)]
pub enum Command {
    /// Re-read the models file and apply the difference.
    Reload(oneshot::Sender<Reply>),
    /// Restart the model's replicas one at a time, each drained first.
    Restart {
        model: String,
        reply: oneshot::Sender<Reply>,
    },
}

/// The gateway's handle on the supervisor's command loop.
#[derive(Debug, Clone)]
pub struct Control(mpsc::Sender<Command>);

impl Control {
    /// A handle and the receiving end the supervisor serves.
    pub fn channel() -> (Control, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(16);
        (Control(tx), rx)
    }

    /// Sends a command and waits for its reply.
    pub async fn call(&self, make: impl FnOnce(oneshot::Sender<Reply>) -> Command) -> Reply {
        let (tx, rx) = oneshot::channel();
        let stopped = || ApiError::unavailable("The supervisor is shutting down");
        self.0.send(make(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Admin calls only on the main port, only from this machine, only with a supervisor,
/// never while draining.
fn admit(s: &GatewayState, req: &Request) -> Result<Control, ApiError> {
    if let Some(pin) = req.extensions().get::<super::pinned::Pin>() {
        let mut e = ApiError::route_not_found(req.uri().path());
        e.message = format!(
            "Admin endpoints are served on the gateway's main port only, not on port {} (the \
             port of the model '{}')",
            pin.port, pin.model
        );
        return Err(e);
    }
    let local = req
        .extensions()
        .get::<Peer>()
        .is_some_and(|p| p.0.ip().is_loopback());
    if !local {
        return Err(ApiError::forbidden(
            "Admin endpoints answer only connections from the appliance's own machine: run \
             `trident reload` or `trident restart MODEL` there (docker exec, kubectl exec)",
        ));
    }
    if s.inflight.is_draining() {
        return Err(ApiError::unavailable("The server is shutting down"));
    }
    s.control
        .clone()
        .ok_or_else(|| ApiError::unavailable("This gateway runs without a supervisor"))
}

fn answer(r: Reply) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /admin/reload`.
pub async fn reload(State(s): State<GatewayState>, req: Request) -> Response {
    match admit(&s, &req) {
        Ok(c) => answer(c.call(Command::Reload).await),
        Err(e) => e.into_response(),
    }
}

/// `POST /admin/restart/{model}`.
pub async fn restart(
    State(s): State<GatewayState>,
    Path(model): Path<String>,
    req: Request,
) -> Response {
    match admit(&s, &req) {
        Ok(c) => answer(c.call(|reply| Command::Restart { model, reply }).await),
        Err(e) => e.into_response(),
    }
}
