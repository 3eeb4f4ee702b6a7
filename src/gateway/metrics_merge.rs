//! `GET /metrics`: the gateway's own families plus every running engine's scraped
//! `/metrics`, merged into one valid exposition (one `# HELP`/`# TYPE` per family).
//!
//! Every sample gets `component="gateway"` or `component="engine"` so the gateway's request
//! counters and the engines' do not collide; `replica` is added only for models with more
//! than one replica, keeping cardinality low. Engine series already carry `model`; the ones
//! that do not (the process collector's `process_*`) get the engine's model id, so three
//! engines' process figures stay three series.
//!
//! Before rendering, the gateway sets its own gauges from the routing table:
//! `trident_model_ready{component="gateway"}` (1 while a replica serves; this series stays
//! when an engine is down and its own series with it), the in-flight request count, and
//! `trident_engine_restarts_total`, `…_upstream_retries_total` and `…_ejections_total` at 0
//! for every model (a counter that first appears at 1 hides its first event from
//! `increase()`).

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::future::join_all;

use super::GatewayState;
use crate::engine::access::ENGINE_TOKEN_HEADER;

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /metrics`.
pub async fn metrics(State(s): State<GatewayState>) -> Response {
    let client = &s.client;
    let table = s.routes.current();
    let token = &table.engine_token;
    let scrapes = table.models.iter().flat_map(|m| {
        let many = m.replicas.len() > 1;
        let model = m.id.to_string();
        m.replicas
            .iter()
            .filter(|r| !r.remote && r.is_ready())
            .map(move |r| {
                let model = model.clone();
                let url = format!("{}/metrics", r.base_url);
                let client = client.clone();
                let replica = many.then(|| r.index.to_string());
                let token = token.clone();
                async move {
                    let mut req = client.get(url).timeout(SCRAPE_TIMEOUT);
                    if let Some(t) = token {
                        req = req.header(ENGINE_TOKEN_HEADER, t);
                    }
                    let text = req
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())?
                        .text()
                        .await
                        .ok()?;
                    let mut labels = vec![("component", "engine".to_string()), ("model", model)];
                    if let Some(i) = replica {
                        labels.push(("replica", i));
                    }
                    Some((text, labels))
                }
            })
    });
    set_gateway_gauges(&s);
    let mut sources = vec![(
        s.metrics.render(),
        vec![("component", "gateway".to_string())],
    )];
    sources.extend(join_all(scrapes).await.into_iter().flatten());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        merge(&sources),
    )
        .into_response()
}

/// The gateway's own gauges, from the routing table, just before they are rendered.
fn set_gateway_gauges(s: &GatewayState) {
    // Reset first: a model a reload removed leaves the gauge instead of reading 0 forever.
    s.metrics.ready.reset();
    for m in &s.routes.load().models {
        s.metrics
            .ready
            .with_label_values(&[&m.id, m.kind.as_str()])
            .set(i64::from(m.replicas_ready() > 0));
        // Exported at 0 before the first event, so `increase()` sees the first one.
        s.metrics.restarts.with_label_values(&[&m.id]);
        s.metrics.retries.with_label_values(&[&m.id]);
        s.metrics.ejections.with_label_values(&[&m.id]);
    }
    s.metrics
        .gateway_inflight
        .set(i64::try_from(s.inflight.count()).unwrap_or(i64::MAX));
    s.metrics.gateway_connections.set(
        i64::try_from(s.connections.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX),
    );
}

struct Family {
    name: String,
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merges expositions, adding `labels` to every sample of its source (a label the sample
/// already has keeps the sample's value).
pub fn merge(sources: &[(String, Vec<(&str, String)>)]) -> String {
    let mut families: Vec<Family> = Vec::new();
    let index = |families: &mut Vec<Family>, name: &str| -> usize {
        match families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                families.push(Family {
                    name: name.to_string(),
                    help: None,
                    kind: None,
                    samples: Vec::new(),
                });
                families.len() - 1
            }
        }
    };
    for (text, labels) in sources {
        let extra: Vec<(&str, String)> = labels
            .iter()
            .map(|(k, v)| (*k, format!("{k}=\"{}\"", escape(v))))
            .collect();
        let mut current: Option<String> = None;
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                let i = index(&mut families, name);
                families[i].help.get_or_insert_with(|| help.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
                let i = index(&mut families, name);
                families[i].kind.get_or_insert_with(|| kind.to_string());
                current = Some(name.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let family = match &current {
                Some(f)
                    if name == f
                        || name
                            .strip_prefix(f.as_str())
                            .is_some_and(|r| r.starts_with('_')) =>
                {
                    f.clone()
                }
                _ => name.to_string(),
            };
            let i = index(&mut families, &family);
            families[i]
                .samples
                .push(with_labels(line, name_end, &extra));
        }
    }
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        if let Some(h) = &f.help {
            out.push_str(&format!("# HELP {} {h}\n", f.name));
        }
        if let Some(k) = &f.kind {
            out.push_str(&format!("# TYPE {} {k}\n", f.name));
        }
        for s in &f.samples {
            out.push_str(s);
            out.push('\n');
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// True when the label set `inner` (between the braces) has a label named `key`.
fn has_label(inner: &str, key: &str) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '=' if !quoted && inner[start..i].trim() == key => return true,
            ',' if !quoted => start = i + 1,
            _ => {}
        }
    }
    false
}

fn with_labels(line: &str, name_end: usize, labels: &[(&str, String)]) -> String {
    if labels.is_empty() {
        return line.to_string();
    }
    let (name, rest) = line.split_at(name_end);
    // The value after the closing brace never contains '}'.
    let close = rest
        .starts_with('{')
        .then(|| rest.rfind('}').unwrap_or(rest.len()));
    let inner = close.map(|c| &rest[1..c]).unwrap_or("");
    let extra = labels
        .iter()
        .filter(|(k, _)| !has_label(inner, k))
        .map(|(_, kv)| kv.as_str())
        .collect::<Vec<_>>()
        .join(",");
    if extra.is_empty() {
        return line.to_string();
    }
    if let Some(close) = close {
        let sep = if inner.trim().is_empty() { "" } else { "," };
        let after = rest.get(close + 1..).unwrap_or("");
        format!("{name}{{{inner}{sep}{extra}}}{after}")
    } else {
        format!("{name}{{{extra}}}{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_merge_once_with_source_labels() {
        let a = "# HELP t_req Requests\n# TYPE t_req counter\nt_req{model=\"e\"} 3\n# TYPE t_lat histogram\nt_lat_bucket{le=\"1\"} 1\nt_lat_sum 0.5\nt_lat_count 1\n";
        let b = "# HELP t_req Requests\n# TYPE t_req counter\nt_req{model=\"c\"} 4\nt_up 1\n";
        let out = merge(&[
            (a.to_string(), vec![("component", "gateway".into())]),
            (
                b.to_string(),
                vec![("component", "engine".into()), ("replica", "1".into())],
            ),
        ]);
        assert_eq!(out.matches("# TYPE t_req counter").count(), 1, "{out}");
        assert_eq!(out.matches("# HELP t_req").count(), 1);
        assert!(
            out.contains("t_req{model=\"e\",component=\"gateway\"} 3"),
            "{out}"
        );
        assert!(out.contains("t_req{model=\"c\",component=\"engine\",replica=\"1\"} 4"));
        assert!(out.contains("t_lat_sum{component=\"gateway\"} 0.5"));
        assert!(out.contains("t_up{component=\"engine\",replica=\"1\"} 1"));
        // Samples of a family stay together under its TYPE line.
        let req_type = out.find("# TYPE t_req").unwrap();
        let c_sample = out.find("t_req{model=\"c\"").unwrap();
        let lat_type = out.find("# TYPE t_lat").unwrap();
        assert!(req_type < c_sample && c_sample < lat_type, "{out}");
    }

    #[test]
    fn a_label_the_sample_has_is_not_added_again() {
        let a = "# TYPE t_req counter\nt_req{model=\"chat\",route=\"/a,model=x\"} 3\nprocess_open_fds 9\n";
        let out = merge(&[(
            a.to_string(),
            vec![("component", "engine".into()), ("model", "chat".into())],
        )]);
        assert!(
            out.contains("t_req{model=\"chat\",route=\"/a,model=x\",component=\"engine\"} 3"),
            "{out}"
        );
        assert!(
            out.contains("process_open_fds{component=\"engine\",model=\"chat\"} 9"),
            "{out}"
        );
        assert!(has_label("a=\"1\", model=\"m\"", "model"));
        assert!(!has_label("a=\"model=\\\"x\"", "model"));
    }
}
