//! `config/models.json`: the models the appliance serves.
//!
//! The seed format (DESIGN §2) loads unchanged; the optional extensions are listed in
//! [`ENTRY_KEYS`]. Loading reports every problem at once (unknown keys with their path,
//! wrong types, bad paths, duplicate ports, impossible values) so `trident check-config`
//! can print them all. The supervisor and the engines both read this file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::models::DTypeChoice;

/// Every key a model entry may carry; anything else is an error naming the key.
pub const ENTRY_KEYS: &[&str] = &[
    "name",
    "path",
    "type",
    "port",
    "gpu_memory_utilization",
    "max_model_len",
    "tensor_parallel_size",
    "dtype",
    "device",
    "gpus",
    "replicas",
    "aliases",
    "max_batch_tokens",
    "max_num_seqs",
    "max_concurrent_requests",
    "max_queue",
    "threads",
    "kv_cache_memory_mb",
    "reasoning_parser",
    "prefix_cache",
    "upstream",
    "upstream_api_key_file",
    "token_ids",
];

/// How a chat model's reasoning is separated from its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningParser {
    /// `think` when the chat template mentions `</think>` (Qwen3, DeepSeek-R1, QwQ), else
    /// `none`.
    #[default]
    Auto,
    /// Text inside `<think>…</think>` is `reasoning_content`.
    Think,
    /// Everything is `content`.
    None,
}

/// The kind of engine a model entry needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Embedding,
    Rerank,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
            ModelKind::Rerank => "rerank",
        }
    }
}

/// Where an engine runs (`device` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceSetting {
    /// CUDA when the entry lists `gpus` and the binary has CUDA support, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// How an embedding engine reads token-id inputs of `/v1/embeddings` and TEI's `/embed`
/// (`token_ids` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenIds {
    /// Refuse them with a 400: OpenAI clients (LangChain's `OpenAIEmbeddings` by default)
    /// send ids of tiktoken's `cl100k_base`, which this model would read as other tokens of
    /// its own vocabulary and embed into silently wrong vectors.
    #[default]
    Refuse,
    /// Read them as ids of the model's own vocabulary (clients that tokenise with it).
    ModelVocab,
}

/// One entry of `models.json` (key = model id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Display name (e.g. the upstream model name); the id is the map key.
    #[serde(default)]
    pub name: Option<String>,
    /// Directory, Hugging Face cache directory, or `.gguf` file. Not needed with `upstream`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(rename = "type")]
    pub kind: ModelKind,
    /// Engine port (first replica; replica `i` listens on `port + i`).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub gpu_memory_utilization: Option<f64>,
    /// Longest prompt + completion (chat) or input (encoders) in tokens.
    #[serde(default)]
    pub max_model_len: Option<usize>,
    #[serde(default)]
    pub tensor_parallel_size: Option<usize>,
    #[serde(default)]
    pub dtype: DTypeChoice,
    #[serde(default)]
    pub device: DeviceSetting,
    #[serde(default)]
    pub gpus: Vec<usize>,
    #[serde(default = "one")]
    pub replicas: usize,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Token budget of one batch (padded tokens for encoders, step tokens for chat).
    #[serde(default)]
    pub max_batch_tokens: Option<usize>,
    /// Most sequences decoding at once (chat).
    #[serde(default)]
    pub max_num_seqs: Option<usize>,
    /// Most requests in flight to this model at the gateway.
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
    /// Most inputs waiting in the engine queue before requests get 429.
    #[serde(default)]
    pub max_queue: Option<usize>,
    /// CPU threads for the model (default: every core).
    #[serde(default)]
    pub threads: Option<usize>,
    /// KV cache budget on CPU, in MiB (chat).
    #[serde(default)]
    pub kv_cache_memory_mb: Option<usize>,
    /// Whether a chat model's `<think>…</think>` comes back as `reasoning_content` (chat).
    #[serde(default)]
    pub reasoning_parser: ReasoningParser,
    /// Whether a chat model reuses the KV of prompt prefixes it has seen (default on).
    #[serde(default = "yes")]
    pub prefix_cache: bool,
    /// Remote OpenAI-compatible servers used instead of a local engine: one URL or a list
    /// (replicas of the model on other hosts, balanced and ejected like local ones).
    #[serde(default)]
    pub upstream: Option<Upstreams>,
    /// A file holding the API key sent upstream as `Authorization: Bearer …` (another
    /// trident's key, a Kubernetes or Docker secret mount). The key never sits in this file.
    #[serde(default)]
    pub upstream_api_key_file: Option<PathBuf>,
    /// Token-id inputs of embedding models: `"refuse"` (default) or `"model_vocab"`.
    #[serde(default)]
    pub token_ids: TokenIds,
}

/// The URLs of a model's remote replicas (`"upstream": "http://a"` or `["http://a", …]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Upstreams(pub Vec<String>);

impl<'de> Deserialize<'de> for Upstreams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(Upstreams(match OneOrMany::deserialize(d)? {
            OneOrMany::One(u) => vec![u],
            OneOrMany::Many(v) => v,
        }))
    }
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

/// The whole `models.json` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsFile {
    pub models: BTreeMap<String, ModelEntry>,
}

/// One problem found in a configuration, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `models.chat.gpu_memory_utilization`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration could not be used: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

/// Options for [`load_models`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Check that model paths exist (off for tests of the pure format).
    pub check_paths: bool,
}

impl ModelsFile {
    /// Reads and validates a `models.json` file, resolving relative model paths against the
    /// file's directory's parent (the repository or `/app`) when they do not exist as given.
    pub fn load(path: &Path, opts: CheckOptions) -> Result<ModelsFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Self::parse(&text, opts).map_err(|problems| ConfigError {
            file: path.display().to_string(),
            problems,
        })
    }

    /// Parses and validates the JSON text, collecting every problem.
    pub fn parse(text: &str, opts: CheckOptions) -> Result<ModelsFile, Vec<Problem>> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            vec![Problem {
                path: String::new(),
                message: format!("invalid JSON: {e}"),
            }]
        })?;
        let mut problems = Vec::new();
        let Some(top) = value.as_object() else {
            return Err(vec![problem(
                "",
                "expected a JSON object with a \"models\" key",
            )]);
        };
        for key in top.keys().filter(|k| *k != "models") {
            problems.push(problem(key, "unknown key"));
        }
        let Some(models) = top.get("models").and_then(|m| m.as_object()) else {
            problems.push(problem("models", "missing or not an object"));
            return Err(problems);
        };
        let mut entries = BTreeMap::new();
        for (id, raw) in models {
            let base = format!("models.{id}");
            match raw.as_object() {
                Some(obj) => {
                    for key in obj.keys().filter(|k| !ENTRY_KEYS.contains(&k.as_str())) {
                        problems.push(problem(&format!("{base}.{key}"), "unknown key"));
                    }
                }
                None => {
                    problems.push(problem(&base, "expected an object"));
                    continue;
                }
            }
            // Check each known key's type separately so every wrong one is reported.
            let obj = raw.as_object().expect("checked above. This is a bug.");
            let known: serde_json::Map<String, serde_json::Value> = obj
                .iter()
                .filter(|(k, _)| ENTRY_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            match serde_json::from_value::<ModelEntry>(serde_json::Value::Object(known.clone())) {
                Ok(entry) => {
                    entries.insert(id.clone(), entry);
                }
                Err(_) => problems.extend(type_problems(&base, &known)),
            }
        }
        let file = ModelsFile { models: entries };
        problems.extend(file.validate(opts));
        if problems.is_empty() {
            Ok(file)
        } else {
            Err(problems)
        }
    }

    /// Semantic checks over well-typed entries.
    pub fn validate(&self, opts: CheckOptions) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.models.is_empty() {
            problems.push(problem("models", "no models configured"));
        }
        let mut ports: BTreeMap<u16, String> = BTreeMap::new();
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for (id, e) in &self.models {
            let base = format!("models.{id}");
            let at = |k: &str| format!("{base}.{k}");
            if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(problem(
                    &base,
                    "model id must be non-empty without whitespace",
                ));
            }
            for name in std::iter::once(id).chain(e.aliases.iter()) {
                if let Some(other) = names.insert(name.clone(), id.clone()) {
                    if &other != id || name != id {
                        problems.push(problem(
                            &at("aliases"),
                            &format!("name {name:?} is already used by model {other:?}"),
                        ));
                    }
                }
            }
            if let Some(u) = e.gpu_memory_utilization {
                if !(u > 0.0 && u <= 1.0) {
                    problems.push(problem(&at("gpu_memory_utilization"), "must be in (0, 1]"));
                }
            }
            for (key, v) in [
                ("max_model_len", e.max_model_len),
                ("tensor_parallel_size", e.tensor_parallel_size),
                ("max_batch_tokens", e.max_batch_tokens),
                ("max_num_seqs", e.max_num_seqs),
                ("max_concurrent_requests", e.max_concurrent_requests),
                ("max_queue", e.max_queue),
                ("threads", e.threads),
                ("kv_cache_memory_mb", e.kv_cache_memory_mb),
                ("replicas", Some(e.replicas)),
            ] {
                if v == Some(0) {
                    problems.push(problem(&at(key), "must be at least 1"));
                }
            }
            if !e.prefix_cache && e.kind != ModelKind::Chat {
                problems.push(problem(
                    &at("prefix_cache"),
                    "only applies to chat models (type \"chat\")",
                ));
            }
            if e.token_ids != TokenIds::Refuse && e.kind != ModelKind::Embedding {
                problems.push(problem(
                    &at("token_ids"),
                    "only applies to embedding models (type \"embedding\")",
                ));
            }
            if e.device == DeviceSetting::Cpu && !e.gpus.is_empty() {
                problems.push(problem(&at("gpus"), "listed GPUs but device is \"cpu\""));
            }
            if let Some(tp) = e.tensor_parallel_size.filter(|&tp| tp > 1) {
                if e.kind != ModelKind::Chat {
                    problems.push(problem(
                        &at("tensor_parallel_size"),
                        "only applies to chat models (type \"chat\")",
                    ));
                } else if !e.gpus.is_empty() && e.gpus.len() != tp {
                    problems.push(problem(
                        &at("tensor_parallel_size"),
                        &format!(
                            "is {tp}, but \"gpus\" lists {} GPU(s): one rank runs on each GPU, so list {tp}",
                            e.gpus.len()
                        ),
                    ));
                }
            }
            match (&e.upstream, &e.path) {
                (Some(urls), _) => {
                    if urls.0.is_empty() {
                        problems.push(problem(&at("upstream"), "lists no URL"));
                    }
                    for (i, url) in urls.0.iter().enumerate() {
                        let ok = url.parse::<axum::http::Uri>().is_ok_and(|u| {
                            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                        });
                        if !ok {
                            let at = if urls.0.len() == 1 {
                                at("upstream")
                            } else {
                                format!("{}[{i}]", at("upstream"))
                            };
                            problems.push(problem(&at, "must be an http:// or https:// URL"));
                        }
                    }
                    if let Some(f) = &e.upstream_api_key_file {
                        if opts.check_paths && !f.is_file() {
                            problems.push(problem(
                                &at("upstream_api_key_file"),
                                &format!("{} is not a readable file", f.display()),
                            ));
                        }
                    }
                }
                (None, None) => {
                    problems.push(problem(&at("path"), "missing (or set \"upstream\")"))
                }
                (None, Some(p)) => {
                    if opts.check_paths && !p.exists() {
                        problems.push(problem(
                            &at("path"),
                            &format!("{} does not exist", p.display()),
                        ));
                    }
                }
            }
            if e.upstream.is_none() {
                match e.port {
                    Some(port) => {
                        for r in 0..e.replicas.max(1) {
                            let Some(p) = port.checked_add(r as u16) else {
                                problems.push(problem(&at("port"), "replica ports overflow 65535"));
                                break;
                            };
                            if let Some(other) = ports.insert(p, id.clone()) {
                                problems.push(problem(
                                    &at("port"),
                                    &format!("port {p} is also used by model {other:?}"),
                                ));
                            }
                        }
                    }
                    None => problems.push(problem(&at("port"), "missing")),
                }
            }
        }
        problems
    }

    /// Finds a model by id or alias.
    pub fn find(&self, name: &str) -> Option<(&str, &ModelEntry)> {
        self.models
            .iter()
            .find(|(id, e)| *id == name || e.aliases.iter().any(|a| a == name))
            .map(|(id, e)| (id.as_str(), e))
    }
}

fn problem(path: &str, message: &str) -> Problem {
    Problem {
        path: path.to_string(),
        message: message.to_string(),
    }
}

/// Finds which keys of an entry have the wrong type by deserialising them one at a time.
fn type_problems(base: &str, obj: &serde_json::Map<String, serde_json::Value>) -> Vec<Problem> {
    let mut out = Vec::new();
    if !obj.contains_key("type") {
        out.push(problem(
            &format!("{base}.type"),
            "missing (chat, embedding or rerank)",
        ));
    }
    for (key, value) in obj {
        let mut probe = serde_json::Map::new();
        probe.insert("type".into(), serde_json::json!("chat"));
        probe.insert(key.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<ModelEntry>(serde_json::Value::Object(probe)) {
            let msg = e.to_string();
            let msg = msg.split(" at line").next().unwrap_or(&msg).to_string();
            out.push(problem(&format!("{base}.{key}"), &msg));
        }
    }
    if out.is_empty() {
        out.push(problem(base, "invalid entry"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"models": {
      "chat": {"name": "Qwen2.5-32B-Instruct", "path": "/app/models/chat", "type": "chat",
               "port": 8001, "gpu_memory_utilization": 0.8, "max_model_len": 32768,
               "tensor_parallel_size": 2, "dtype": "auto"},
      "embedding": {"name": "bge-m3", "path": "/app/models/embedding", "type": "embedding", "port": 8002},
      "rerank": {"name": "bge-reranker-v2-m3", "path": "/app/models/rerank", "type": "rerank", "port": 8003}}}"#;

    #[test]
    fn seed_format_loads_unchanged() {
        let f = ModelsFile::parse(SEED, CheckOptions::default()).unwrap();
        assert_eq!(f.models.len(), 3);
        let chat = &f.models["chat"];
        assert_eq!(chat.kind, ModelKind::Chat);
        assert_eq!(chat.port, Some(8001));
        assert_eq!(chat.tensor_parallel_size, Some(2));
        assert_eq!(f.models["rerank"].kind, ModelKind::Rerank);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"{"models": {
          "a": {"path": "/x", "type": "chat", "port": 9000, "colour": "red", "gpu_memory_utilization": 1.5},
          "b": {"path": "/y", "type": "embedding", "port": 9000, "replicas": 0},
          "c": {"type": "sideways", "port": "x"}}, "extra": 1}"#;
        let problems = ModelsFile::parse(text, CheckOptions::default()).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in ["extra", "models.a.colour", "models.c.type", "models.c.port"] {
            assert!(
                paths.contains(&expected),
                "{expected} missing in {problems:?}"
            );
        }
        // Semantic checks only run on well-typed entries; a and b are well-typed apart from
        // a's unknown key, which is filtered before typing.
        assert!(
            paths.contains(&"models.a.gpu_memory_utilization"),
            "{problems:?}"
        );
        assert!(paths.contains(&"models.b.replicas"), "{problems:?}");
        assert!(paths.contains(&"models.b.port"), "{problems:?}");
    }

    #[test]
    fn tensor_parallel_size_is_for_chat_models_with_one_gpu_per_rank() {
        let check = |entry: &str| {
            let text = format!(r#"{{"models": {{"m": {entry}}}}}"#);
            match ModelsFile::parse(&text, CheckOptions::default()) {
                Ok(_) => Vec::new(),
                Err(p) => p.into_iter().map(|p| p.to_string()).collect(),
            }
        };
        let chat = r#"{"path": "/x", "type": "chat", "port": 9000, "tensor_parallel_size": 2"#;
        assert!(check(&format!("{chat}}}")).is_empty());
        assert!(check(&format!(r#"{chat}, "gpus": [0, 1]}}"#)).is_empty());
        let p = check(&format!(r#"{chat}, "gpus": [3]}}"#));
        assert!(
            p.len() == 1
                && p[0].contains("models.m.tensor_parallel_size")
                && p[0].contains("lists 1 GPU(s)"),
            "{p:?}"
        );
        let p =
            check(r#"{"path": "/x", "type": "rerank", "port": 9000, "tensor_parallel_size": 2}"#);
        assert!(
            p.len() == 1 && p[0].contains("only applies to chat models"),
            "{p:?}"
        );
        // 1 is the unsplit model, on any kind.
        assert!(check(
            r#"{"path": "/x", "type": "rerank", "port": 9000, "tensor_parallel_size": 1}"#
        )
        .is_empty());
    }

    #[test]
    fn upstream_is_one_url_or_a_list_each_checked() {
        let f = ModelsFile::parse(
            r#"{"models": {"a": {"type": "chat", "upstream": "https://gpu-1:8000/v1"},
                           "b": {"type": "embedding", "upstream": ["http://e1:8000", "http://e2:8000"]}}}"#,
            CheckOptions::default(),
        )
        .unwrap();
        assert_eq!(f.models["a"].upstream.as_ref().unwrap().0.len(), 1);
        assert_eq!(f.models["b"].upstream.as_ref().unwrap().0.len(), 2);
        let problems = ModelsFile::parse(
            r#"{"models": {"b": {"type": "embedding", "upstream": ["http://e1:8000", "ftp://e2"],
                                 "upstream_api_key_file": "/nonexistent/key"}}}"#,
            CheckOptions { check_paths: true },
        )
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"models.b.upstream[1]"), "{problems:?}");
        assert!(
            paths.contains(&"models.b.upstream_api_key_file"),
            "{problems:?}"
        );
        let problems = ModelsFile::parse(
            r#"{"models": {"c": {"type": "chat", "upstream": []}}}"#,
            CheckOptions::default(),
        )
        .unwrap_err();
        assert_eq!(problems[0].path, "models.c.upstream");
    }

    #[test]
    fn missing_paths_are_reported_when_checked() {
        let problems = ModelsFile::parse(SEED, CheckOptions { check_paths: true }).unwrap_err();
        assert_eq!(problems.len(), 3);
        assert!(problems[0].message.contains("does not exist"));
    }

    #[test]
    fn token_ids_default_to_refuse_and_take_two_values_on_embedding_models() {
        let text = r#"{"models": {
          "a": {"path": "/x", "type": "embedding", "port": 9000},
          "b": {"path": "/y", "type": "embedding", "port": 9001, "token_ids": "model_vocab"},
          "c": {"path": "/z", "type": "embedding", "port": 9002, "token_ids": "refuse"}}}"#;
        let f = ModelsFile::parse(text, CheckOptions::default()).unwrap();
        assert_eq!(f.models["a"].token_ids, TokenIds::Refuse);
        assert_eq!(f.models["b"].token_ids, TokenIds::ModelVocab);
        assert_eq!(f.models["c"].token_ids, TokenIds::Refuse);
        let bad = r#"{"models": {
          "a": {"path": "/x", "type": "embedding", "port": 9000, "token_ids": "tiktoken"},
          "b": {"path": "/y", "type": "chat", "port": 9001, "token_ids": "model_vocab"}}}"#;
        let problems = ModelsFile::parse(bad, CheckOptions::default()).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["models.a.token_ids", "models.b.token_ids"],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("model_vocab"), "{problems:?}");
    }

    #[test]
    fn prefix_cache_defaults_on_and_is_a_chat_boolean() {
        let text = r#"{"models": {
          "a": {"path": "/x", "type": "chat", "port": 9000},
          "b": {"path": "/y", "type": "chat", "port": 9001, "prefix_cache": false}}}"#;
        let f = ModelsFile::parse(text, CheckOptions::default()).unwrap();
        assert!(f.models["a"].prefix_cache);
        assert!(!f.models["b"].prefix_cache);
        let bad = r#"{"models": {
          "a": {"path": "/x", "type": "chat", "port": 9000, "prefix_cache": "no"},
          "b": {"path": "/y", "type": "embedding", "port": 9001, "prefix_cache": false}}}"#;
        let problems = ModelsFile::parse(bad, CheckOptions::default()).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["models.a.prefix_cache", "models.b.prefix_cache"],
            "{problems:?}"
        );
    }

    #[test]
    fn replicas_take_consecutive_ports() {
        let text = r#"{"models": {
          "a": {"path": "/x", "type": "embedding", "port": 9000, "replicas": 2},
          "b": {"path": "/y", "type": "embedding", "port": 9001}}}"#;
        let problems = ModelsFile::parse(text, CheckOptions::default()).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "models.b.port");
    }

    #[test]
    fn aliases_resolve_and_must_be_unique() {
        let text = r#"{"models": {
          "a": {"path": "/x", "type": "embedding", "port": 9000, "aliases": ["text-embedding-3-small"]}}}"#;
        let f = ModelsFile::parse(text, CheckOptions::default()).unwrap();
        assert_eq!(f.find("text-embedding-3-small").unwrap().0, "a");
        assert!(f.find("nope").is_none());
        let dup = r#"{"models": {
          "a": {"path": "/x", "type": "embedding", "port": 9000, "aliases": ["b"]},
          "b": {"path": "/y", "type": "embedding", "port": 9001}}}"#;
        assert!(ModelsFile::parse(dup, CheckOptions::default()).is_err());
    }
}
