//! Reading the gateway's `GET /ready` for `trident status`.
//!
//! The body is parsed leniently so `status` keeps working while the gateway's shape evolves:
//! `{"status": …, "models": {id: {"state": …}}}`, `{"models": {id: "ready"}}`,
//! `{"models": [{"id": …, "state": …}]}` or a bare list of such objects. Per-model state
//! words are the gateway's (`loading|ready|degraded|restarting|failed`); only `ready` counts as healthy.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::{check_http_url, OpsError};

/// One model as the gateway reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelState {
    /// Model id (the key in `config/models.json`).
    pub id: String,
    /// State word as reported (`ready`, `loading`, …; `unknown` when absent).
    pub state: String,
}

impl ModelState {
    /// Whether this model serves requests.
    pub fn is_ready(&self) -> bool {
        self.state.eq_ignore_ascii_case("ready")
    }
}

/// What `/ready` said, or why it could not be asked.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// The URL asked.
    pub url: String,
    /// HTTP status, absent when the gateway could not be reached.
    pub http_status: Option<u16>,
    /// Overall status word from the body, if any.
    pub status: Option<String>,
    /// Per-model states, sorted by id.
    pub models: Vec<ModelState>,
    /// Why the gateway could not be asked or understood.
    pub error: Option<String>,
}

impl Readiness {
    /// Ready iff the gateway answered, listed at least one model, and every model is ready.
    pub fn all_ready(&self) -> bool {
        self.error.is_none()
            && self.http_status == Some(200)
            && !self.models.is_empty()
            && self.models.iter().all(ModelState::is_ready)
    }
}

/// Asks `url` (the gateway's `/ready`). 503 with a body is a normal answer (not every model
/// ready); unreachable or unparsable answers end up in `error`.
pub async fn fetch(url: &str, timeout: Duration) -> Result<Readiness, OpsError> {
    let parsed = check_http_url(url)?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()?;
    let mut out = Readiness {
        url: url.to_string(),
        http_status: None,
        status: None,
        models: Vec::new(),
        error: None,
    };
    let resp = match client.get(parsed).send().await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(if e.is_connect() {
                "gateway not reachable".to_string()
            } else {
                e.to_string()
            });
            return Ok(out);
        }
    };
    out.http_status = Some(resp.status().as_u16());
    match resp.json::<Value>().await {
        Ok(body) => {
            let (status, models) = parse_ready(&body);
            out.status = status;
            out.models = models;
        }
        Err(e) => out.error = Some(format!("unreadable /ready body: {e}")),
    }
    Ok(out)
}

/// Extracts the overall status word and the per-model states from a `/ready` body.
pub fn parse_ready(body: &Value) -> (Option<String>, Vec<ModelState>) {
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_string);
    let models_value = match body {
        Value::Array(_) => Some(body),
        _ => body.get("models").or_else(|| body.get("engines")),
    };
    let mut models = match models_value {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(id, v)| ModelState {
                id: id.clone(),
                state: state_of(v),
            })
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| ModelState {
                id: ["id", "model", "name"]
                    .iter()
                    .find_map(|k| v.get(*k).and_then(Value::as_str))
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("#{i}")),
                state: state_of(v),
            })
            .collect(),
        _ => Vec::new(),
    };
    models.sort_by(|a, b| a.id.cmp(&b.id));
    (status, models)
}

/// The state word of one model entry: a bare string, or `state`/`status` inside an object,
/// or `ready: bool`.
fn state_of(v: &Value) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    for key in ["state", "status"] {
        if let Some(s) = v.get(key).and_then(Value::as_str) {
            return s.to_string();
        }
    }
    match v.get("ready").and_then(Value::as_bool) {
        Some(true) => "ready".to_string(),
        Some(false) => "not_ready".to_string(),
        None => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids_states(models: &[ModelState]) -> Vec<(&str, &str)> {
        models
            .iter()
            .map(|m| (m.id.as_str(), m.state.as_str()))
            .collect()
    }

    #[test]
    fn map_of_objects() {
        let body = json!({"status": "ok", "models": {
            "rerank": {"state": "ready", "type": "rerank"},
            "chat": {"state": "loading"}}});
        let (status, models) = parse_ready(&body);
        assert_eq!(status.as_deref(), Some("ok"));
        assert_eq!(
            ids_states(&models),
            [("chat", "loading"), ("rerank", "ready")]
        );
    }

    #[test]
    fn map_of_strings_and_list_shapes() {
        let (_, m) = parse_ready(&json!({"models": {"a": "ready", "b": "failed"}}));
        assert_eq!(ids_states(&m), [("a", "ready"), ("b", "failed")]);
        let (_, m) = parse_ready(&json!({"models": [
            {"id": "x", "status": "degraded"}, {"model": "y", "ready": true}, {"state": "ready"}]}));
        assert_eq!(
            ids_states(&m),
            [("#2", "ready"), ("x", "degraded"), ("y", "ready")]
        );
        let (s, m) = parse_ready(&json!([{"name": "z", "state": "ready"}]));
        assert_eq!(s, None);
        assert_eq!(ids_states(&m), [("z", "ready")]);
    }

    #[test]
    fn readiness_needs_every_model_ready_and_200() {
        let mut r = Readiness {
            url: String::new(),
            http_status: Some(200),
            status: None,
            models: vec![
                ModelState {
                    id: "a".into(),
                    state: "ready".into(),
                },
                ModelState {
                    id: "b".into(),
                    state: "READY".into(),
                },
            ],
            error: None,
        };
        assert!(r.all_ready());
        r.models[1].state = "loading".into();
        assert!(!r.all_ready());
        r.models[1].state = "ready".into();
        r.http_status = Some(503);
        assert!(!r.all_ready());
        r.http_status = Some(200);
        r.models.clear();
        assert!(!r.all_ready(), "no models listed is not ready");
    }

    #[test]
    fn unknown_shapes_give_no_models() {
        let (_, m) = parse_ready(&json!({"status": "ready"}));
        assert!(m.is_empty());
        let (_, m) = parse_ready(&json!(42));
        assert!(m.is_empty());
    }
}
