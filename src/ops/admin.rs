//! `trident reload` and `trident restart MODEL`: the operator's commands on a running
//! appliance, run on its own machine (inside the container: `docker compose exec trident
//! trident reload`, or `./deploy.sh reload`). They call the gateway's admin endpoints on
//! loopback with the appliance's own API key (read from the same settings `serve` reads),
//! print the report, and with `--wait` follow `/ready` until every model serves again.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use super::{check_http_url, OpsError};

/// Where the gateway is and how to call it (shared by both commands).
#[derive(Debug, Clone, Args)]
pub struct AdminTarget {
    /// The gateway (default: loopback on the configured port).
    #[arg(long)]
    pub url: Option<String>,
    /// The API key (default: the first key of the appliance's settings).
    #[arg(long)]
    pub api_key: Option<String>,
    /// After the command, wait up to this many seconds until `/ready` says every model
    /// serves (0: do not wait).
    #[arg(long, default_value_t = 0.0)]
    pub wait_secs: f64,
    /// Print the gateway's JSON report instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `trident reload`.
#[derive(Debug, Clone, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub target: AdminTarget,
}

/// Arguments of `trident restart`.
#[derive(Debug, Clone, Args)]
pub struct RestartArgs {
    /// The model (id, alias or name) whose replicas restart one at a time.
    pub model: String,
    #[command(flatten)]
    pub target: AdminTarget,
}

/// What the settings give: the gateway's port and the appliance's first key.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub port: u16,
    pub api_key: Option<String>,
}

/// `trident reload`: exit 0 when applied (and, with `--wait`, serving), 1 otherwise.
pub async fn reload(args: &ReloadArgs, defaults: &Defaults) -> Result<i32, OpsError> {
    call(&args.target, defaults, "/admin/reload").await
}

/// `trident restart MODEL`: exit 0 when every replica came back, 1 otherwise.
pub async fn restart(args: &RestartArgs, defaults: &Defaults) -> Result<i32, OpsError> {
    if args.model.is_empty() {
        return Err(OpsError::InvalidArgument("give a model id".into()));
    }
    let path = format!("/admin/restart/{}", encode_path(&args.model));
    call(&args.target, defaults, &path).await
}

/// Percent-encodes a model id for a URL path (ids may hold `/`, kept as it is).
fn encode_path(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn call(t: &AdminTarget, d: &Defaults, path: &str) -> Result<i32, OpsError> {
    let base = t
        .url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", d.port));
    let base = check_http_url(&base)?
        .as_str()
        .trim_end_matches('/')
        .to_string();
    // A rolling restart of a large model takes minutes: no overall limit on the call.
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let mut req = client.post(format!("{base}{path}"));
    if let Some(key) = t.api_key.as_ref().or(d.api_key.as_ref()) {
        req = req.bearer_auth(key);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trident: cannot reach the gateway at {base}: {e}");
            return Ok(1);
        }
    };
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = body["error"]["message"].as_str().unwrap_or("no message");
        eprintln!("trident: HTTP {}: {msg}", status.as_u16());
        return Ok(1);
    }
    if t.json {
        println!("{body}");
    } else {
        println!("{}", summary(&body));
    }
    if t.wait_secs > 0.0 {
        return Ok(wait_ready(&client, &base, Duration::from_secs_f64(t.wait_secs)).await);
    }
    Ok(0)
}

/// One line per report: what a reload did, or how long each replica's restart took.
pub fn summary(report: &Value) -> String {
    let names = |k: &str| -> String {
        let v: Vec<&str> = report[k]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if v.is_empty() {
            "-".into()
        } else {
            v.join(", ")
        }
    };
    // The gateway's listeners pinned to one model (`model_ports`), when there are any.
    let pinned: Vec<String> = report["model_ports"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(port, id)| format!(":{port} {}", id.as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    match report["object"].as_str() {
        Some("reload") => format!(
            "reloaded {}\n  added:     {}\n  removed:   {}\n  changed:   {}\n  resized:   {}\n  unchanged: {}{}",
            report["file"].as_str().unwrap_or("the models file"),
            names("added"),
            names("removed"),
            names("changed"),
            names("resized"),
            names("unchanged"),
            if pinned.is_empty() {
                String::new()
            } else {
                format!("\n  model ports: {}", pinned.join(", "))
            },
        ),
        Some("restart") => {
            let steps: Vec<String> = report["replicas"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| format!("replica {} in {} s", r["replica"], r["seconds"]))
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "restarted {}: {}",
                report["model"].as_str().unwrap_or("?"),
                steps.join(", ")
            )
        }
        _ => report.to_string(),
    }
}

/// Polls `/ready` until it says ready (0) or `limit` passes (1), printing each change.
async fn wait_ready(client: &reqwest::Client, base: &str, limit: Duration) -> i32 {
    let until = Instant::now() + limit;
    let mut last = String::new();
    loop {
        let now = match client
            .get(format!("{base}/ready"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
        {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let line = ready_line(&now);
        if line != last {
            println!("{line}");
            last = line;
        }
        if now["status"] == "ready" {
            return 0;
        }
        if Instant::now() >= until {
            eprintln!(
                "trident: not every model serves after {} s",
                limit.as_secs()
            );
            return 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ready_line(v: &Value) -> String {
    let models: Vec<String> = v["models"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(id, s)| format!("{id}={}", s["state"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{}: {}",
        v["status"].as_str().unwrap_or("no answer"),
        models.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_name_every_model() {
        let r = serde_json::json!({"object": "reload", "file": "m.json", "added": ["b"],
            "removed": [], "changed": ["c"], "resized": [], "unchanged": ["a", "d"]});
        let s = summary(&r);
        assert!(s.contains("added:     b"), "{s}");
        assert!(s.contains("removed:   -"), "{s}");
        assert!(s.contains("unchanged: a, d"), "{s}");
        assert!(!s.contains("model ports"), "{s}");
        let r = serde_json::json!({"object": "reload", "file": "m.json", "unchanged": ["a"],
            "model_ports": {"8001": "a", "8002": "b"}});
        assert!(summary(&r).ends_with("\n  model ports: :8001 a, :8002 b"));
        let r = serde_json::json!({"object": "restart", "model": "chat",
            "replicas": [{"replica": 0, "seconds": 1.5}, {"replica": 1, "seconds": 2.0}]});
        assert_eq!(
            summary(&r),
            "restarted chat: replica 0 in 1.5 s, replica 1 in 2.0 s"
        );
        assert_eq!(encode_path("Qwen/Qwen2.5 32B"), "Qwen/Qwen2.5%2032B");
        let v = serde_json::json!({"status": "not_ready", "models": {"a": {"state": "loading"}}});
        assert_eq!(ready_line(&v), "not_ready: a=loading");
    }
}
