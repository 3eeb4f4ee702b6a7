//! Static checks of the deployment files that no test here can run for real (Grafana cannot
//! be pulled or installed here; see docs/CONTAINER.md): compose.yaml, the Prometheus config,
//! Grafana's provisioning and dashboards. Every metric a dashboard queries must be one that
//! `src/metrics.rs` defines, and every panel must use the provisioned datasource uid.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// Metric names defined in src/metrics.rs (its `"trident_…"` string constants).
fn defined_metrics() -> BTreeSet<String> {
    let src = read("src/metrics.rs");
    let names: BTreeSet<String> = src
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("trident_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect();
    assert!(
        names.len() >= 10,
        "too few metric names found in src/metrics.rs: {names:?}"
    );
    names
}

/// `trident_…` identifiers in a PromQL expression, with histogram suffixes removed.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(pos) = rest.find("trident_") {
        let tail = &rest[pos..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(base.to_string());
        rest = &tail[end..];
    }
    out
}

fn datasource_uid() -> String {
    let ds = yaml("monitoring/grafana/provisioning/datasources/prometheus.yaml");
    let list = ds["datasources"].as_sequence().expect("datasources list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["type"].as_str(), Some("prometheus"));
    assert_eq!(
        list[0]["url"].as_str(),
        Some("http://prometheus:9090"),
        "datasource must point at the compose service"
    );
    list[0]["uid"]
        .as_str()
        .expect("fixed datasource uid")
        .to_string()
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = root().join("monitoring/grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            out.push((path, v));
        }
    }
    assert!(!out.is_empty(), "no dashboards in {}", dir.display());
    out
}

fn all_panels(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(all_panels(p));
    }
    out
}

#[test]
fn every_panel_uses_the_provisioned_datasource_and_defined_metrics() {
    let uid = datasource_uid();
    let defined = defined_metrics();
    for (path, dash) in dashboards() {
        let name = path.display();
        assert!(
            dash["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{name}: no uid"
        );
        let mut used = BTreeSet::new();
        let mut queries = 0;
        for panel in all_panels(&dash) {
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap_or("?");
            assert_eq!(
                panel["datasource"]["uid"].as_str(),
                Some(uid.as_str()),
                "{name}: panel '{title}'"
            );
            let targets = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: '{title}' has no targets"));
            assert!(!targets.is_empty(), "{name}: '{title}' has no queries");
            for t in targets {
                assert_eq!(
                    t["datasource"]["uid"].as_str(),
                    Some(uid.as_str()),
                    "{name}: '{title}' target"
                );
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: '{title}' target without expr"));
                let found = metrics_in(expr);
                assert!(
                    !found.is_empty(),
                    "{name}: '{title}' queries no trident_ metric: {expr}"
                );
                for m in found {
                    assert!(
                        defined.contains(&m),
                        "{name}: '{title}' uses {m}, which src/metrics.rs does not define"
                    );
                    used.insert(m);
                }
                queries += 1;
            }
        }
        for var in dash["templating"]["list"].as_array().into_iter().flatten() {
            if var["type"] == "query" {
                assert_eq!(
                    var["datasource"]["uid"].as_str(),
                    Some(uid.as_str()),
                    "{name}: variable"
                );
            }
        }
        assert!(queries >= 10, "{name}: only {queries} queries");
        // The panels the issue asks for, by the metric each needs.
        for needed in [
            "trident_requests_total",
            "trident_request_duration_seconds",
            "trident_queue_depth",
            "trident_time_to_first_token_seconds",
            "trident_inter_token_latency_seconds",
            "trident_generated_tokens_total",
            "trident_running_sequences",
            "trident_waiting_sequences",
            "trident_kv_cache_usage_ratio",
            "trident_engine_restarts_total",
            "trident_rejected_requests_total",
        ] {
            assert!(used.contains(needed), "{name}: no panel shows {needed}");
        }
    }
}

#[test]
fn dashboard_provider_points_at_the_mounted_dashboards() {
    let p = yaml("monitoring/grafana/provisioning/dashboards/trident.yaml");
    let provider = &p["providers"][0];
    assert_eq!(provider["type"].as_str(), Some("file"));
    assert_eq!(provider["folder"].as_str(), Some("trident"));
    let path = provider["options"]["path"].as_str().expect("path");
    // compose.yaml must mount monitoring/grafana/dashboards exactly there.
    let compose = yaml("compose.yaml");
    let vols: Vec<&str> = compose["services"]["grafana"]["volumes"]
        .as_sequence()
        .expect("grafana volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        vols.iter()
            .any(|v| v.starts_with("./monitoring/grafana/dashboards:")
                && v.contains(&format!(":{path}"))),
        "grafana must mount the dashboards at {path}: {vols:?}"
    );
}

#[test]
fn prometheus_scrapes_the_appliance_service() {
    let prom = yaml("monitoring/prometheus/prometheus.yml");
    let jobs = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "trident")
        .expect("job trident");
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    let target = job["static_configs"][0]["targets"][0]
        .as_str()
        .expect("target");
    // The metrics-only listener, unpublished, on the compose network: /metrics on :8000
    // needs the API key.
    assert_eq!(target, "trident:9100");
    let compose = yaml("compose.yaml");
    let env = &compose["services"]["trident"]["environment"];
    assert_eq!(env["TRIDENT_METRICS_PORT"].as_str(), Some("9100"));
    let published = compose["services"]["trident"]["ports"]
        .as_sequence()
        .expect("ports");
    assert!(
        published
            .iter()
            .all(|p| !p.as_str().unwrap_or("").ends_with(":9100")),
        "the metrics port must not be published: {published:?}"
    );
}

#[test]
fn compose_defaults_are_secure() {
    let compose = yaml("compose.yaml");
    for (name, svc) in compose["services"].as_mapping().expect("services") {
        let caps: Vec<&str> = svc["cap_drop"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .collect();
        assert_eq!(caps, ["ALL"], "{name:?} must drop every capability");
        let opts: Vec<&str> = svc["security_opt"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .collect();
        assert!(
            opts.contains(&"no-new-privileges:true"),
            "{name:?} must set no-new-privileges"
        );
    }
    let app = &compose["services"]["trident"];
    let env = &app["environment"];
    assert_eq!(env["TRIDENT_GENERATE_API_KEY"].as_str(), Some("true"));
    assert_eq!(
        env["TRIDENT_API_KEY_FILE"].as_str(),
        Some("/app/state/api_key")
    );
    assert_eq!(
        env["TRIDENT_METRICS_PUBLIC"].as_str(),
        Some("${TRIDENT_METRICS_PUBLIC:-false}")
    );
    let vols: Vec<&str> = app["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(vols.contains(&"trident-state:/app/state"), "{vols:?}");
    assert!(compose["volumes"]
        .as_mapping()
        .unwrap()
        .contains_key("trident-state"));
    // Grafana has no default admin password and refuses to start without one.
    let grafana = &compose["services"]["grafana"];
    assert_eq!(
        grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].as_str(),
        Some("${GRAFANA_ADMIN_PASSWORD:-}")
    );
    let entry = format!("{:?}", grafana["entrypoint"]);
    assert!(
        entry.contains("exit 1") && entry.contains("GRAFANA_ADMIN_PASSWORD"),
        "{entry}"
    );
}

#[test]
fn compose_profiles_and_mounted_files_exist() {
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_mapping().expect("services");
    let profile = |s: &str| {
        compose["services"][s]["profiles"][0]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(
        profile("trident"),
        None,
        "the appliance runs without a profile"
    );
    assert_eq!(profile("prometheus").as_deref(), Some("monitoring"));
    assert_eq!(profile("grafana").as_deref(), Some("monitoring"));
    assert_eq!(profile("nginx").as_deref(), Some("nginx"));
    let app = &compose["services"]["trident"];
    assert_eq!(app["read_only"].as_bool(), Some(true));
    assert_eq!(app["restart"].as_str(), Some("unless-stopped"));
    let grace = app["stop_grace_period"]
        .as_str()
        .expect("stop_grace_period");
    let secs: u64 = grace.trim_end_matches('s').parse().expect("seconds");
    assert!(
        secs >= 30,
        "stop_grace_period {grace} is shorter than the drain"
    );
    for (_, svc) in services {
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let Some(spec) = v.as_str() else { continue };
            let src = spec.split(':').next().unwrap_or("");
            if src.starts_with("./") {
                assert!(
                    Path::new(&root().join(src)).exists(),
                    "compose mounts missing {src}"
                );
            }
        }
    }
    // The override files parse too.
    for f in ["compose/gpu.yaml", "compose/models-dir.yaml"] {
        let v = yaml(f);
        assert!(v["services"]["trident"].is_mapping(), "{f}");
    }
}

#[test]
fn metric_name_extraction() {
    assert_eq!(
        metrics_in("histogram_quantile(0.9, sum by (le) (rate(trident_ttft_bucket{a=\"b\"}[5m]))) / trident_x_count"),
        ["trident_ttft", "trident_x"]
    );
    assert!(metrics_in("up").is_empty());
}
