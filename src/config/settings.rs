//! Appliance settings beyond the models: ports, API keys, timeouts, limits, logging.
//!
//! Layered with the `config` crate: built-in defaults < `config/trident.toml` (or the file
//! named by `--settings`) < environment (`TRIDENT_…`, e.g. `TRIDENT_PORT=9000`,
//! `TRIDENT_API_KEYS=k1,k2`) < command-line flags. Secrets are [`Secret`]s, which never
//! print their value.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A secret string (API key). `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret's value; call only where it is compared or sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How the gateway spreads requests over replicas of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    #[default]
    LeastOutstanding,
    LeastLatency,
}

/// Every setting, with its default documented on the field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the gateway (or a lone engine) binds. Default `0.0.0.0`.
    pub host: String,
    /// Gateway port. Default 8000.
    pub port: u16,
    /// The gateway also listens on each model's `port` from models.json, pinned to that
    /// model (the seed's `:8001/v1/chat/completions` works as written), and the engines move
    /// to private loopback ports (`port + engine_port_offset`). False: engines listen on the
    /// entries' ports and the gateway only on `port`. Default true.
    pub model_ports: bool,
    /// With `model_ports`, an engine of an entry with `port` P listens on 127.0.0.1 at
    /// P + this + replica index. Default 10000 (8001 → 18001).
    pub engine_port_offset: u16,
    /// Accepted API keys (`Bearer`). Empty: no authentication.
    #[serde(deserialize_with = "keys_from_list_or_csv")]
    pub api_keys: Vec<Secret>,
    /// File with one API key per line (blank lines and `#` comments ignored).
    pub api_key_file: Option<PathBuf>,
    /// When no key is configured, create `api_key_file` with a fresh random key (mode 0600)
    /// if it does not exist yet; when keys are configured a missing file is skipped. The
    /// container sets it, so a fresh appliance is never open. Default false.
    pub generate_api_key: bool,
    /// Let `trident serve` listen on a non-loopback address without API keys. Default
    /// false: it refuses, saying how to set a key.
    pub allow_unauthenticated: bool,
    /// Serve `/metrics` without an API key. Default false.
    pub metrics_public: bool,
    /// A second listener (on `host`) that serves only `/metrics`, without a key, for a
    /// scraper on an internal network (compose: Prometheus on the compose network; the
    /// port is not published). 0 (the default): none.
    pub metrics_port: u16,
    /// Allowed CORS origins; empty disables CORS. Default empty.
    pub cors_origins: Vec<String>,
    /// `text` or `json`. Default text.
    pub log_format: LogFormat,
    /// Replica balancing strategy. Default `least_outstanding`.
    pub balance: Balance,
    /// Whole-request timeout for non-streaming requests, seconds. Default 600.
    pub request_timeout_secs: u64,
    /// Time a streaming request may wait for the engine's first byte (status, headers and
    /// first body frame), seconds. Generous: a long prompt's prefill comes first. Default 120.
    pub first_byte_timeout_secs: f64,
    /// Longest silence allowed between two frames of a streamed response, seconds; past it
    /// the stream ends with an SSE error event. Local engines send a keep-alive comment
    /// every 10 s, so only a stuck engine goes this quiet. Default 60.
    pub stream_idle_timeout_secs: f64,
    /// Seconds between liveness probes of a ready engine. Default 5.
    pub liveness_interval_secs: f64,
    /// Time one liveness probe may take, seconds. Default 5.
    pub liveness_timeout_secs: f64,
    /// Consecutive failed liveness probes after which an engine is declared hung, taken out
    /// of routing, stopped (SIGTERM, then SIGKILL) and restarted. Default 3.
    pub liveness_failures: u32,
    /// An engine reports itself hung when its model thread has not come back from one unit
    /// of work (a forward step or batch) for this long, seconds. Default 120.
    pub model_stall_secs: f64,
    /// Time allowed to read request headers, seconds (slow clients are cut). Default 10.
    /// It also closes an HTTP/1 keep-alive connection that stays idle this long between
    /// requests (clients' pools reconnect on their own).
    pub header_read_timeout_secs: u64,
    /// Open client connections past which a new one is answered 503 and closed. 0: no cap.
    /// Default 4096 (the container's file-descriptor limit is far higher).
    pub max_connections: usize,
    /// HTTP/2 keep-alive: a PING every this many seconds on a quiet connection; a peer that
    /// does not answer one within the same time is disconnected. Default 30.
    pub http2_keepalive_secs: u64,
    /// Concurrent streams one HTTP/2 connection may open. Default 256.
    pub http2_max_streams: u32,
    /// PEM certificate chain and private key: the gateway listens with TLS (an engine host
    /// serving a gateway host over the network). Both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle trusted for `https://` upstreams, beside the system's roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Time allowed to read a request body, seconds. Default 30.
    pub body_read_timeout_secs: u64,
    /// Largest request body in bytes. Default 8 MiB.
    pub max_body_bytes: usize,
    /// Time an engine may take to become ready, seconds. Default 300.
    pub startup_timeout_secs: u64,
    /// Time in-flight requests get to finish on SIGTERM, seconds. Default 25.
    pub drain_timeout_secs: u64,
    /// Gateway worker threads, each with its own event loop and upstream connections.
    /// 0 (the default): one per CPU core.
    pub gateway_threads: usize,
    /// Set by [`Settings::load`] when it generated `api_key_file` (not a setting).
    #[serde(skip)]
    pub generated_key_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: "0.0.0.0".into(),
            port: 8000,
            model_ports: true,
            engine_port_offset: 10_000,
            api_keys: Vec::new(),
            api_key_file: None,
            generate_api_key: false,
            allow_unauthenticated: false,
            metrics_public: false,
            metrics_port: 0,
            cors_origins: Vec::new(),
            log_format: LogFormat::Text,
            balance: Balance::LeastOutstanding,
            request_timeout_secs: 600,
            first_byte_timeout_secs: 120.0,
            stream_idle_timeout_secs: 60.0,
            liveness_interval_secs: 5.0,
            liveness_timeout_secs: 5.0,
            liveness_failures: 3,
            model_stall_secs: 120.0,
            header_read_timeout_secs: 10,
            max_connections: 4096,
            http2_keepalive_secs: 30,
            http2_max_streams: 256,
            tls_cert_file: None,
            tls_key_file: None,
            upstream_ca_file: None,
            body_read_timeout_secs: 30,
            max_body_bytes: 8 * 1024 * 1024,
            startup_timeout_secs: 300,
            drain_timeout_secs: 25,
            gateway_threads: 0,
            generated_key_file: None,
        }
    }
}

/// Errors while building the settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings: {0}")]
    Config(#[from] config::ConfigError),
    #[error("API key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn keys_from_list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Keys {
        List(Vec<String>),
        Csv(String),
    }
    let keys = match Keys::deserialize(d)? {
        Keys::List(v) => v,
        Keys::Csv(s) => s.split(',').map(str::to_owned).collect(),
    };
    Ok(keys
        .into_iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .map(Secret)
        .collect())
}

/// A duration setting in (fractional) seconds; at least 1 ms, and anything unrepresentable
/// (NaN, huge) is "forever" rather than a panic.
pub fn secs(value: f64) -> Duration {
    if value.is_nan() {
        return Duration::MAX;
    }
    Duration::try_from_secs_f64(value.max(0.001)).unwrap_or(Duration::MAX)
}

impl Settings {
    /// The names of every setting (the keys of `trident.toml`).
    pub fn keys() -> Vec<String> {
        match serde_json::to_value(Settings::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Builds the layered settings. `file` is optional (missing = skipped unless it was named
    /// explicitly); `env` is the environment to read (`std::env::vars()` in production);
    /// `overrides` are flag values as `(key, value)` pairs.
    pub fn load(
        file: Option<&Path>,
        file_required: bool,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, String)],
    ) -> Result<Settings, SettingsError> {
        let defaults = config::Config::try_from(&SettingsDefaults(Settings::default()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(f) = file {
            builder = builder.add_source(
                config::File::from(f)
                    .format(config::FileFormat::Toml)
                    .required(file_required),
            );
        }
        // Only variables naming a setting are settings; others (TRIDENT_MODELS,
        // TRIDENT_LOG, TRIDENT_API_KEY of the bench client, …) belong to other readers.
        let known = Settings::keys();
        let env_map: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix("TRIDENT_")
                    .is_some_and(|rest| known.contains(&rest.to_ascii_lowercase()))
            })
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("TRIDENT")
                .source(Some(env_map))
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("cors_origins"),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.clone())?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        if let Some(path) = settings.api_key_file.clone() {
            if settings.generate_api_key && !path.exists() {
                if !settings.api_keys.is_empty() {
                    return Ok(settings);
                }
                super::keygen::create_key_file(&path).map_err(|source| SettingsError::KeyFile {
                    path: path.clone(),
                    source,
                })?;
                settings.generated_key_file = Some(path.clone());
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|source| SettingsError::KeyFile { path, source })?;
            settings.api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(Secret::new),
            );
        }
        Ok(settings)
    }
}

/// Serialises the defaults with real key values so they can seed the `config` builder.
struct SettingsDefaults(Settings);

impl Serialize for SettingsDefaults {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = serde_json::to_value(&self.0).map_err(serde::ser::Error::custom)?;
        // Defaults never contain keys; drop the field so it is not a redacted placeholder.
        if let Some(o) = v.as_object_mut() {
            o.remove("api_keys");
            o.retain(|_, val| !val.is_null());
        }
        v.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_then_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trident.toml");
        std::fs::write(
            &file,
            "port = 7000\nrequest_timeout_secs = 5\nlog_format = \"json\"\n",
        )
        .unwrap();

        let s = Settings::load(Some(&file), true, env(&[]), &[]).unwrap();
        assert_eq!(
            (s.port, s.request_timeout_secs, s.log_format),
            (7000, 5, LogFormat::Json)
        );
        assert_eq!(s.max_body_bytes, Settings::default().max_body_bytes);

        let s = Settings::load(Some(&file), true, env(&[("TRIDENT_PORT", "7100")]), &[]).unwrap();
        assert_eq!(s.port, 7100);
        assert_eq!(s.request_timeout_secs, 5);

        let s = Settings::load(
            Some(&file),
            true,
            env(&[("TRIDENT_PORT", "7100")]),
            &[("port", "7200".into())],
        )
        .unwrap();
        assert_eq!(s.port, 7200);
    }

    #[test]
    fn model_ports_are_on_by_default_and_off_by_file_or_env() {
        let s = Settings::load(None, false, env(&[]), &[]).unwrap();
        assert!(s.model_ports);
        assert_eq!(s.engine_port_offset, 10_000);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trident.toml");
        std::fs::write(&file, "model_ports = false\nengine_port_offset = 500\n").unwrap();
        let s = Settings::load(Some(&file), true, env(&[]), &[]).unwrap();
        assert_eq!((s.model_ports, s.engine_port_offset), (false, 500));
        let s = Settings::load(None, false, env(&[("TRIDENT_MODEL_PORTS", "false")]), &[]).unwrap();
        assert!(!s.model_ports);
    }

    #[test]
    fn api_keys_from_env_csv_and_file_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "# team keys\nk-three\n\n").unwrap();
        let s = Settings::load(
            None,
            false,
            env(&[
                ("TRIDENT_API_KEYS", "k-one, k-two"),
                ("TRIDENT_API_KEY_FILE", keys.to_str().unwrap()),
            ]),
            &[],
        )
        .unwrap();
        let exposed: Vec<&str> = s.api_keys.iter().map(Secret::expose).collect();
        assert_eq!(exposed, ["k-one", "k-two", "k-three"]);
        let printed = format!("{s:?} {}", serde_json::to_string(&s).unwrap());
        assert!(
            !printed.contains("k-one") && !printed.contains("k-three"),
            "{printed}"
        );
    }

    #[test]
    fn other_trident_variables_are_not_settings() {
        let s = Settings::load(
            None,
            false,
            env(&[
                ("TRIDENT_MODELS", "config/models.json"),
                ("TRIDENT_LOG", "debug"),
                ("TRIDENT_API_KEY", "client-side"),
                ("TRIDENT_PORT", "9100"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(s.port, 9100);
        assert!(s.api_keys.is_empty());
    }

    #[test]
    fn a_missing_key_file_is_generated_once_with_mode_0600_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api_key");
        let vars = || {
            env(&[
                ("TRIDENT_API_KEY_FILE", file.to_str().unwrap()),
                ("TRIDENT_GENERATE_API_KEY", "true"),
            ])
        };
        let first = Settings::load(None, false, vars(), &[]).unwrap();
        assert_eq!(first.generated_key_file.as_deref(), Some(file.as_path()));
        assert_eq!(first.api_keys.len(), 1);
        let key = first.api_keys[0].expose().to_string();
        assert!(key.len() >= 40, "{key}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The next start reads the same key and generates nothing.
        let again = Settings::load(None, false, vars(), &[]).unwrap();
        assert_eq!(again.generated_key_file, None);
        assert_eq!(again.api_keys[0].expose(), key);
        // Keys configured otherwise: a missing file is skipped, not created.
        let other = dir.path().join("other");
        let s = Settings::load(
            None,
            false,
            env(&[
                ("TRIDENT_API_KEY_FILE", other.to_str().unwrap()),
                ("TRIDENT_GENERATE_API_KEY", "true"),
                ("TRIDENT_API_KEYS", "k-set"),
            ]),
            &[],
        )
        .unwrap();
        assert!(!other.exists());
        assert_eq!(s.api_keys.len(), 1);
        // Without generate_api_key a missing file stays an error.
        let err = Settings::load(
            None,
            false,
            env(&[("TRIDENT_API_KEY_FILE", other.to_str().unwrap())]),
            &[],
        );
        assert!(err.is_err());
    }

    #[test]
    fn unknown_setting_in_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trident.toml");
        std::fs::write(&file, "prot = 1\n").unwrap();
        let err = Settings::load(Some(&file), true, env(&[]), &[]).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }
}
