//! Static checks of the deployment files that no test here can run for real (Grafana cannot
//! be pulled or installed here; see docs/CONTAINER.md): compose.yaml, the Prometheus config
//! and alert rules, Grafana's provisioning and dashboards. Every metric a dashboard or an
//! alert queries must be one that `src/metrics.rs` defines, every panel must use the
//! provisioned datasource uid, and every variable a query uses must be defined. The live
//! counterpart is scripts/e2e-monitoring.sh (every query on real data); `promtool test rules`
//! runs the alert rules' unit tests (.ci/run).

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

/// Metric names defined in src/metrics.rs (its `"trident_…"` and `"process_…"` string
/// constants), plus Prometheus' own `up`.
fn defined_metrics() -> BTreeSet<String> {
    let src = read("src/metrics.rs");
    let mut names: BTreeSet<String> = src
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            (s.starts_with("trident_") || s.starts_with("process_"))
                && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect();
    names.insert("up".to_string());
    assert!(
        names.len() >= 10,
        "too few metric names found in src/metrics.rs: {names:?}"
    );
    names
}

/// Metric identifiers in a PromQL expression (`trident_…`, `process_…`, and `up` before a
/// selector), with histogram suffixes removed.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut i = 0;
    while i < expr.len() {
        let tail = &expr[i..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        if end == 0 {
            i += tail.chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let name = &tail[..end];
        i += end;
        // A metric name is a whole word outside quotes (label values may look like one).
        let quoted = expr[..i - end].matches('"').count() % 2 == 1;
        let metric = name.starts_with("trident_")
            || name.starts_with("process_")
            || (name == "up" && tail[end..].starts_with('{'));
        if quoted || !metric {
            continue;
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(base.to_string());
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

/// Grafana's built-in variables a query may use besides the dashboard's own.
const BUILTIN_VARS: &[&str] = &["__rate_interval", "__interval", "__range", "__all"];

/// `$name` and `${name}` variable references in a string.
fn variables_in(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in s.match_indices('$') {
        let rest = s[i + 1..].trim_start_matches('{');
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            out.push(rest[..end].to_string());
        }
    }
    out
}

#[test]
fn every_panel_uses_the_provisioned_datasource_and_defined_metrics() {
    let uid = datasource_uid();
    let defined = defined_metrics();
    let mut used = BTreeSet::new();
    let mut uids = BTreeSet::new();
    for (path, dash) in dashboards() {
        let name = path.display();
        let dash_uid = dash["uid"].as_str().unwrap_or("");
        assert!(!dash_uid.is_empty(), "{name}: no uid");
        assert!(
            uids.insert(dash_uid.to_string()),
            "{name}: uid {dash_uid} twice"
        );
        // Provisioned dashboards carry no numeric id (Grafana assigns one).
        assert!(dash["id"].is_null(), "{name}: id must be null");
        assert!(
            dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{name}"
        );
        assert!(
            dash["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "trident")),
            "{name}: tag trident (the dashboards' links list dashboards by it)"
        );
        let vars: BTreeSet<String> = dash["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        for needed in ["instance", "model"] {
            assert!(vars.contains(needed), "{name}: no ${needed} variable");
        }
        let mut queries = 0;
        let mut ids = BTreeSet::new();
        for panel in all_panels(&dash) {
            let title = panel["title"].as_str().unwrap_or("?");
            assert!(
                panel["id"].as_u64().is_some_and(|id| ids.insert(id)),
                "{name}: '{title}' has no id or a repeated one"
            );
            let g = &panel["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(99));
            assert!(
                x + w <= 24 && g["h"].as_u64().is_some(),
                "{name}: '{title}' gridPos {g}"
            );
            assert!(
                title.contains(" / ")
                    && title
                        .chars()
                        .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)),
                "{name}: '{title}' is not titled in English and Chinese (\"Requests / 请求\")"
            );
            if panel["type"] == "row" {
                continue;
            }
            let desc = panel["description"].as_str().unwrap_or("");
            assert!(
                !desc.is_ascii() && desc.chars().any(|c| c.is_ascii_alphabetic()),
                "{name}: '{title}' needs an English and a Chinese description"
            );
            assert_eq!(
                panel["datasource"]["uid"].as_str(),
                Some(uid.as_str()),
                "{name}: panel '{title}'"
            );
            let targets = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: '{title}' has no targets"));
            assert!(!targets.is_empty(), "{name}: '{title}' has no queries");
            let mut refs = BTreeSet::new();
            for t in targets {
                assert_eq!(
                    t["datasource"]["uid"].as_str(),
                    Some(uid.as_str()),
                    "{name}: '{title}' target"
                );
                assert!(
                    t["refId"]
                        .as_str()
                        .is_some_and(|r| refs.insert(r.to_string())),
                    "{name}: '{title}' target without a unique refId"
                );
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: '{title}' target without expr"));
                let found = metrics_in(expr);
                assert!(
                    !found.is_empty(),
                    "{name}: '{title}' queries no known metric: {expr}"
                );
                for m in found {
                    assert!(
                        defined.contains(&m),
                        "{name}: '{title}' uses {m}, which src/metrics.rs does not define"
                    );
                    used.insert(m);
                }
                for v in variables_in(expr) {
                    assert!(
                        vars.contains(&v) || BUILTIN_VARS.contains(&v.as_str()),
                        "{name}: '{title}' uses ${v}, which no variable defines: {expr}"
                    );
                }
                queries += 1;
            }
        }
        for var in dash["templating"]["list"].as_array().into_iter().flatten() {
            let vname = var["name"].as_str().unwrap_or("?");
            if var["type"] == "query" {
                assert_eq!(
                    var["datasource"]["uid"].as_str(),
                    Some(uid.as_str()),
                    "{name}: variable {vname}"
                );
                let query = var["query"]["query"]
                    .as_str()
                    .or(var["query"].as_str())
                    .unwrap_or_else(|| panic!("{name}: variable {vname} has no query"));
                assert!(
                    query.starts_with("label_values("),
                    "{name}: {vname}: {query}"
                );
                for m in metrics_in(query) {
                    assert!(defined.contains(&m), "{name}: variable {vname} uses {m}");
                }
                // A variable may only refer to variables defined before it.
                let earlier: Vec<String> = dash["templating"]["list"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take_while(|v| v["name"] != var["name"])
                    .filter_map(|v| v["name"].as_str().map(str::to_string))
                    .collect();
                for v in variables_in(query) {
                    assert!(earlier.contains(&v), "{name}: {vname} refers to ${v}");
                }
            }
        }
        assert!(queries >= 5, "{name}: only {queries} queries");
    }
    for board in [
        "trident-overview",
        "trident-chat",
        "trident-embedding",
        "trident-rerank",
        "trident-gateway",
        "trident-gpu",
        "trident-host",
    ] {
        assert!(uids.contains(board), "dashboard {board} missing");
    }
    // The panels the issues ask for, by the metric each needs, somewhere in the dashboards.
    // Every defined metric has a panel (virtual memory says little next to RSS).
    for needed in defined
        .iter()
        .filter(|m| *m != "process_virtual_memory_bytes")
    {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}

/// The committed JSON is what monitoring/grafana/dashboards.py writes.
#[test]
fn dashboards_match_their_generator() {
    let Ok(out) = std::process::Command::new("python3")
        .arg(root().join("monitoring/grafana/dashboards.py"))
        .arg("--check")
        .output()
    else {
        eprintln!("python3 not found; dashboards.py --check skipped");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The chart ships a byte-for-byte copy of the dashboards (`scripts/check-chart.sh --write`
/// syncs it); a panel added here and not there would land only in compose installs.
#[test]
fn chart_dashboards_are_a_copy_of_the_repository_dashboards() {
    let ours = root().join("monitoring/grafana/dashboards");
    let chart = root().join("charts/trident/dashboards");
    let names = |dir: &PathBuf| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect()
    };
    assert_eq!(
        names(&ours),
        names(&chart),
        "dashboard files differ; run scripts/check-chart.sh --write"
    );
    for name in names(&ours) {
        let a = std::fs::read(ours.join(&name)).unwrap();
        let b = std::fs::read(chart.join(&name)).unwrap();
        assert!(
            a == b,
            "charts/trident/dashboards/{name} is stale; run scripts/check-chart.sh --write"
        );
    }
}

/// What the official Grafana image needs: provisioning under /etc/grafana/provisioning with
/// files its user (uid 472) can read, dashboards by file, not editable in the UI.
#[test]
fn grafana_provisioning_matches_the_official_image() {
    use std::os::unix::fs::PermissionsExt;
    let compose = yaml("compose.yaml");
    let vols: Vec<&str> = compose["services"]["grafana"]["volumes"]
        .as_sequence()
        .expect("grafana volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        vols.contains(&"./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro"),
        "{vols:?}"
    );
    let p = yaml("monitoring/grafana/provisioning/dashboards/trident.yaml");
    assert_eq!(p["apiVersion"].as_u64(), Some(1));
    let provider = &p["providers"][0];
    assert_eq!(provider["allowUiUpdates"].as_bool(), Some(false));
    assert_eq!(provider["disableDeletion"].as_bool(), Some(true));
    assert!(provider["folderUid"].as_str().is_some());
    let mut files = vec![
        root().join("monitoring/grafana/provisioning/dashboards/trident.yaml"),
        root().join("monitoring/grafana/provisioning/datasources/prometheus.yaml"),
    ];
    files.extend(dashboards().into_iter().map(|(p, _)| p));
    for f in files {
        let mode = std::fs::metadata(&f).expect("stat").permissions().mode();
        assert!(
            mode & 0o004 != 0,
            "{} is not world-readable ({mode:o})",
            f.display()
        );
    }
}

/// Alert rules: each queries defined metrics and carries `for:`, a severity, a summary and a
/// runbook; prometheus.yml loads the file and compose mounts it beside prometheus.yml.
#[test]
fn alert_rules_are_complete_and_loaded() {
    let defined = defined_metrics();
    let rules = yaml("monitoring/prometheus/alerts.yml");
    let mut names = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let alert = rule["alert"].as_str().expect("alerting rules only");
            assert!(names.insert(alert.to_string()), "{alert} twice");
            let expr = rule["expr"].as_str().expect("expr");
            let found = metrics_in(expr);
            assert!(!found.is_empty(), "{alert}: {expr}");
            for m in found {
                assert!(
                    defined.contains(&m),
                    "{alert} uses {m}, not in src/metrics.rs"
                );
            }
            assert!(rule["for"].as_str().is_some(), "{alert}: no for:");
            let sev = rule["labels"]["severity"].as_str();
            assert!(
                matches!(sev, Some("critical" | "warning")),
                "{alert}: severity {sev:?}"
            );
            for a in ["summary", "description", "runbook"] {
                assert!(
                    rule["annotations"][a]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{alert}: no {a}"
                );
            }
        }
    }
    for needed in [
        "TridentScrapeFailing",
        "TridentModelNotReady",
        "TridentEngineRestarted",
        "TridentEngineCrashLooping",
        "TridentHighErrorRatio",
        "TridentHighLatencyP95",
        "TridentRequestsShed",
        "TridentKvCacheNearlyFull",
        "TridentGpuMemoryNearlyFull",
    ] {
        assert!(names.contains(needed), "alert {needed} missing");
    }
    let docs = read("docs/MONITORING.md");
    for n in &names {
        assert!(
            docs.contains(n.as_str()),
            "docs/MONITORING.md does not describe {n}"
        );
    }
    let prom = yaml("monitoring/prometheus/prometheus.yml");
    let files: Vec<&str> = prom["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(files, ["alerts.yml"]);
    let compose = yaml("compose.yaml");
    let vols: Vec<&str> = compose["services"]["prometheus"]["volumes"]
        .as_sequence()
        .expect("prometheus volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        vols.contains(&"./monitoring/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"),
        "{vols:?}"
    );
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
    assert_eq!(
        metrics_in("max(1 - up{job=\"trident\"}) + process_open_fds{model=\"trident_x\"}"),
        ["up", "process_open_fds"]
    );
    assert_eq!(
        variables_in("rate(a{m=~\"$model\"}[$__rate_interval]) ${instance}"),
        ["model", "__rate_interval", "instance"]
    );
}
