//! The decoder backend API used by the chat engine: load a Llama / Qwen2 / Qwen3 checkpoint
//! (GGUF file or Hugging Face safetensors directory), describe it ([`DecoderInfo`]), and run
//! batched forward steps over many sequences, each with its own [`SeqCache`].
//!
//! The model itself is [`super::llama::Llama`]; this module finds the files, the tokenizer
//! (`tokenizer.json`, or rebuilt from GGUF metadata by [`super::gguf_tokenizer`]) and the
//! generation settings (eos/bos tokens, chat template). On CUDA (or with
//! `LoadOptions::generic`) the loaded model moves to `models::device::llama`, chosen by
//! `models::device::choose`, with its KV caches on the device.

use std::path::{Path, PathBuf};

use candle_core::DType;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::device::llama::{DeviceCache, DeviceLlama, DeviceStep};
use super::device::tp::{TpCache, TpLlama, TpStep};
use super::device::{self, ModelPath};
use super::files::resolve;
use super::llama::gguf::GgufFile;
use super::llama::{st, KvCache, Llama, SeqStep};
use super::{gguf_tokenizer, DTypeChoice, LoadOptions, ModelError};

pub use super::llama::KvBlock;

/// What the chat engine needs to know about a loaded decoder.
#[derive(Debug, Clone)]
pub struct DecoderInfo {
    pub model_type: String,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// K+V bytes for one token over all layers, at the cache dtype (f32 on the CPU path, the
    /// activations' dtype on the device path).
    pub kv_bytes_per_token: usize,
    /// Every token id that ends generation (config, generation config, GGUF, tokenizer).
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Whether prompts should start with the bos token (`tokenizer_config.json`
    /// `add_bos_token`, else GGUF `tokenizer.ggml.add_bos_token`, else false).
    pub add_bos_token: bool,
    pub chat_template: Option<String>,
    /// Weight format, e.g. `f32`, `bf16` or `gguf:Q4_1`.
    pub dtype: String,
    /// The checkpoint's own sampling defaults (`generation_config.json`), used where a
    /// request does not set a value.
    pub sampling_defaults: SamplingDefaults,
}

/// Sampling values a checkpoint recommends in its `generation_config.json` (as vLLM reads
/// them: `do_sample` is not consulted); each is `None` when the file does not set it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
}

impl SamplingDefaults {
    /// Reads the values out of a parsed `generation_config.json`.
    pub fn from_generation_config(gen: &Value) -> Self {
        // A value a request could not send either is dropped (a request that sets none
        // must never be refused for the checkpoint's sake).
        let f = |k: &str, ok: fn(f64) -> bool| {
            gen.get(k)
                .and_then(Value::as_f64)
                .filter(|&x| x.is_finite() && ok(x))
        };
        SamplingDefaults {
            temperature: f("temperature", |x| (0.0..=2.0).contains(&x)),
            top_p: f("top_p", |x| x > 0.0 && x <= 1.0),
            top_k: gen
                .get("top_k")
                .and_then(Value::as_i64)
                .filter(|&k| k >= -1),
            min_p: f("min_p", |x| (0.0..=1.0).contains(&x)),
            repetition_penalty: f("repetition_penalty", |x| x > 0.0),
        }
    }

    /// Whether the checkpoint sets any value.
    pub fn is_empty(&self) -> bool {
        *self == SamplingDefaults::default()
    }
}

/// The KV cache of one sequence (not `Clone`: on the device path it owns blocks of a pool).
/// On the CPU path its first positions may be [`KvBlock`]s shared with other sequences
/// (the chat engine's prefix cache); the device path does not share blocks yet.
#[derive(Debug)]
pub struct SeqCache {
    inner: CacheInner,
}

#[derive(Debug)]
enum CacheInner {
    Fast(KvCache),
    Device(DeviceCache),
    Tp(TpCache),
}

impl SeqCache {
    /// Number of tokens cached (the position of the next token).
    pub fn len(&self) -> usize {
        match &self.inner {
            CacheInner::Fast(c) => c.len,
            CacheInner::Device(c) => c.len,
            CacheInner::Tp(c) => c.len(),
        }
    }

    /// Whether no token has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy for a sequence continuing from the same tokens: the CPU path's caches are
    /// plain vectors and copy; the device path's blocks are not shared yet (`None`).
    pub fn fork(&self) -> Option<SeqCache> {
        match &self.inner {
            CacheInner::Fast(c) => Some(SeqCache {
                inner: CacheInner::Fast(c.clone()),
            }),
            CacheInner::Device(_) | CacheInner::Tp(_) => None,
        }
    }
}

/// One sequence's part of a [`DecoderModel::step`].
pub struct StepItem<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
}

/// The network behind a [`DecoderModel`].
enum Net {
    Fast(Box<Llama>),
    Device(Box<DeviceLlama>),
    /// Split over several devices (`tensor_parallel_size`).
    Tp(Box<TpLlama>),
}

/// A loaded decoder with its tokenizer; lives on one dedicated model thread.
pub struct DecoderModel {
    net: Net,
    tokenizer: Tokenizer,
    info: DecoderInfo,
}

/// Generation settings gathered from the side files of a checkpoint.
#[derive(Default)]
struct Meta {
    eos: Vec<u32>,
    bos_id: Option<u32>,
    bos: Option<String>,
    eos_tok: Option<String>,
    add_bos: Option<bool>,
    template: Option<String>,
    sampling: SamplingDefaults,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": …}`.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// `chat_template.jinja`, or `tokenizer_config.json` `chat_template` (a string, or a list of
/// `{name, template}` of which the `default` one is taken).
fn dir_template(dir: &Path, tc: Option<&Value>) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    match tc?.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|e| e.get("template"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// Reads generation settings from the Hugging Face side files in `dir`.
fn dir_meta(dir: &Path, config: Option<&Value>) -> Meta {
    let tc = read_json(&dir.join("tokenizer_config.json"));
    let gen = read_json(&dir.join("generation_config.json"));
    let mut eos = config
        .map(|c| ids(c.get("eos_token_id")))
        .unwrap_or_default();
    eos.extend(
        gen.as_ref()
            .map(|g| ids(g.get("eos_token_id")))
            .unwrap_or_default(),
    );
    let bos_id = config
        .and_then(|c| ids(c.get("bos_token_id")).first().copied())
        .or_else(|| {
            gen.as_ref()
                .and_then(|g| ids(g.get("bos_token_id")).first().copied())
        });
    Meta {
        eos,
        bos_id,
        bos: token_str(tc.as_ref().and_then(|t| t.get("bos_token"))),
        eos_tok: token_str(tc.as_ref().and_then(|t| t.get("eos_token"))),
        add_bos: tc
            .as_ref()
            .and_then(|t| t.get("add_bos_token"))
            .and_then(Value::as_bool),
        template: dir_template(dir, tc.as_ref()),
        sampling: gen
            .as_ref()
            .map(SamplingDefaults::from_generation_config)
            .unwrap_or_default(),
    }
}

fn gguf_meta(g: &GgufFile) -> Meta {
    let id = |k: &str| g.meta_usize(k).map(|x| x as u32);
    let mut eos: Vec<u32> = [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ]
    .iter()
    .filter_map(|k| id(k))
    .collect();
    eos.dedup();
    Meta {
        eos,
        bos_id: id("tokenizer.ggml.bos_token_id"),
        bos: None,
        eos_tok: None,
        add_bos: g
            .meta("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok()),
        template: g
            .meta("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned(),
        sampling: SamplingDefaults::default(),
    }
}

fn load_tokenizer_json(path: &Path) -> Result<Tokenizer, ModelError> {
    Tokenizer::from_file(path)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
}

/// The single `.gguf` file of a directory, if it has exactly one.
fn single_gguf(dir: &Path) -> Result<Option<PathBuf>, ModelError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    Ok(if found.len() == 1 { found.pop() } else { None })
}

/// The `.gguf` file a decoder path loads, if it is a GGUF checkpoint.
fn gguf_of(path: &Path) -> Result<Option<PathBuf>, ModelError> {
    if path.is_file() {
        Ok(Some(path.to_path_buf()))
    } else if !path.join("config.json").exists() {
        single_gguf(path)
    } else {
        Ok(None)
    }
}

/// The decoder configuration of a checkpoint, read without its weights.
pub fn read_config(path: &Path) -> Result<super::llama::DecoderConfig, ModelError> {
    let path = resolve(path)?;
    match gguf_of(&path)? {
        Some(g) => GgufFile::open(&g)?.config(),
        None => Ok(st::read_config(&path)?.cfg),
    }
}

/// Why the decoder at `path` cannot be split over `tensor_parallel` ranks (`None`: it can),
/// from its configuration alone: the check before an engine starts.
pub fn split_problem(path: &Path, tensor_parallel: usize) -> Result<Option<String>, ModelError> {
    let cfg = read_config(path)?;
    Ok(super::device::llama::split_problem(&cfg, tensor_parallel))
}

impl DecoderModel {
    /// Loads a decoder from a directory (safetensors or one `.gguf`), a Hugging Face cache
    /// directory, or a `.gguf` file.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self, ModelError> {
        let choice = device::choose(opts)?;
        let path = resolve(path)?;
        let gguf = gguf_of(&path)?;
        let mut model = match (&gguf, &choice) {
            (Some(g), _) => Self::load_gguf(g)?,
            (None, ModelPath::Fast) => Self::load_safetensors(&path, opts.dtype)?,
            // Dense weights are read in the device's dtype, so the host copy is no larger.
            (None, ModelPath::Generic { dtype, .. }) => {
                let choice = match dtype {
                    DType::BF16 => DTypeChoice::Bf16,
                    DType::F16 => DTypeChoice::F16,
                    _ => DTypeChoice::F32,
                };
                Self::load_safetensors(&path, choice)?
            }
        };
        if let ModelPath::Generic { device, dtype } = choice {
            let Net::Fast(fast) = &model.net else {
                unreachable!("loaders build the fast model first. This is a bug.")
            };
            let (net, dt) = if opts.tensor_parallel > 1 {
                let devices = device::rank_devices(opts)?;
                let tp = TpLlama::new(fast, &devices, dtype)?;
                let dt = tp.dtype();
                (Net::Tp(Box::new(tp)), dt)
            } else {
                let d = DeviceLlama::from_llama(fast, &device, dtype)?;
                let dt = d.dtype();
                (Net::Device(Box::new(d)), dt)
            };
            let c = &fast.cfg;
            // Over every rank: each holds its share of the KV heads.
            model.info.kv_bytes_per_token =
                2 * c.num_layers * c.num_kv_heads * c.head_dim * dt.size_in_bytes();
            if gguf.is_none() {
                model.info.dtype = format!("{dt:?}").to_lowercase();
            }
            model.net = net;
        }
        Ok(model)
    }

    fn load_gguf(file: &Path) -> Result<Self, ModelError> {
        let mut g = GgufFile::open(file)?;
        let model = g.load_model()?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let side_tokenizer = dir.join("tokenizer.json");
        let tokenizer = if side_tokenizer.exists() {
            load_tokenizer_json(&side_tokenizer)?
        } else {
            gguf_tokenizer::from_gguf(&g.content)?
        };
        let mut meta = gguf_meta(&g);
        if let Some(t) = dir_template(dir, read_json(&dir.join("tokenizer_config.json")).as_ref()) {
            meta.template = Some(t);
        }
        if let Some(gen) = read_json(&dir.join("generation_config.json")) {
            meta.sampling = SamplingDefaults::from_generation_config(&gen);
        }
        let dtype = g
            .content
            .tensor_infos
            .get("blk.0.attn_q.weight")
            .map(|i| format!("gguf:{:?}", i.ggml_dtype))
            .unwrap_or_else(|| "gguf".into());
        Ok(Self::assemble(model, tokenizer, meta, dtype))
    }

    fn load_safetensors(dir: &Path, choice: DTypeChoice) -> Result<Self, ModelError> {
        let dtype = match choice {
            DTypeChoice::Auto | DTypeChoice::F32 => DType::F32,
            DTypeChoice::F16 => DType::F16,
            DTypeChoice::Bf16 => DType::BF16,
        };
        let (model, hf) = st::load_model(dir, dtype)?;
        let tokenizer = load_tokenizer_json(&dir.join("tokenizer.json"))?;
        let meta = dir_meta(dir, Some(&hf.json));
        Ok(Self::assemble(
            model,
            tokenizer,
            meta,
            format!("{dtype:?}").to_lowercase(),
        ))
    }

    fn assemble(model: Llama, tokenizer: Tokenizer, meta: Meta, dtype: String) -> Self {
        let model = Box::new(model);
        let c = &model.cfg;
        let mut eos = meta.eos;
        let eos_tok = meta
            .eos_tok
            .or_else(|| eos.first().and_then(|&i| tokenizer.id_to_token(i)));
        if let Some(id) = eos_tok.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
            eos.push(id);
        }
        let mut seen = std::collections::HashSet::new();
        eos.retain(|x| seen.insert(*x));
        let bos_id = meta
            .bos_id
            .or_else(|| meta.bos.as_deref().and_then(|t| tokenizer.token_to_id(t)));
        let bos = meta
            .bos
            .or_else(|| bos_id.and_then(|i| tokenizer.id_to_token(i)));
        let info = DecoderInfo {
            model_type: c.model_type.clone(),
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            num_layers: c.num_layers,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            kv_bytes_per_token: model.kv_bytes_per_token(),
            eos_token_ids: eos,
            bos_token_id: bos_id,
            bos_token: bos,
            eos_token: eos_tok,
            add_bos_token: meta.add_bos.unwrap_or(false),
            chat_template: meta.template,
            dtype,
            sampling_defaults: meta.sampling,
        };
        DecoderModel {
            net: Net::Fast(model),
            tokenizer,
            info,
        }
    }

    /// The model's description.
    pub fn info(&self) -> &DecoderInfo {
        &self.info
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Bounds the device KV cache by `bytes` (the engine's KV budget); the CPU path's caches
    /// are plain per-sequence vectors, bounded by the scheduler alone.
    pub fn set_kv_budget(&self, bytes: usize) {
        match &self.net {
            Net::Device(m) => m.set_kv_budget(bytes),
            Net::Tp(m) => m.set_kv_budget(bytes),
            Net::Fast(_) => {}
        }
    }

    /// A KV cache that starts with `blocks`, shared rather than copied; `None` on the device
    /// path, whose pool blocks are not shared yet.
    pub fn with_prefix(&self, blocks: Vec<std::sync::Arc<KvBlock>>) -> Option<SeqCache> {
        match &self.net {
            Net::Fast(m) => Some(SeqCache {
                inner: CacheInner::Fast(m.cache_with_prefix(blocks)),
            }),
            Net::Device(_) | Net::Tp(_) => None,
        }
    }

    /// A copy of positions `start..start + len` of `cache` as a shareable block; `None` on the
    /// device path or when the positions are not cached.
    pub fn export_block(&self, cache: &SeqCache, start: usize, len: usize) -> Option<KvBlock> {
        match (&self.net, &cache.inner) {
            (Net::Fast(m), CacheInner::Fast(c)) => c.export(start, len, m.kv_dim()),
            _ => None,
        }
    }

    /// An empty KV cache for a new sequence.
    pub fn new_sequence(&self) -> SeqCache {
        let inner = match &self.net {
            Net::Fast(m) => CacheInner::Fast(m.new_cache()),
            Net::Device(m) => CacheInner::Device(m.new_cache()),
            Net::Tp(m) => CacheInner::Tp(m.new_cache()),
        };
        SeqCache { inner }
    }

    /// One forward step over several sequences: each item appends `tokens` (a prefill chunk
    /// or one decode token) to its cache and gets the logits of its last token. Bad input
    /// (empty chunk, unknown token id, too many positions) is a [`ModelError::Input`] and
    /// leaves every cache unchanged.
    pub fn step(&self, items: &mut [StepItem<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let foreign = || ModelError::Input("cache belongs to another model".into());
        match &self.net {
            Net::Fast(m) => {
                let mut steps = Vec::with_capacity(items.len());
                for it in items.iter_mut() {
                    let CacheInner::Fast(cache) = &mut it.cache.inner else {
                        return Err(foreign());
                    };
                    steps.push(SeqStep {
                        tokens: it.tokens,
                        cache,
                    });
                }
                m.step(&mut steps)
            }
            Net::Device(m) => {
                let mut steps = Vec::with_capacity(items.len());
                for it in items.iter_mut() {
                    let CacheInner::Device(cache) = &mut it.cache.inner else {
                        return Err(foreign());
                    };
                    steps.push(DeviceStep {
                        tokens: it.tokens,
                        cache,
                    });
                }
                m.step(&mut steps)
            }
            Net::Tp(m) => {
                let mut steps = Vec::with_capacity(items.len());
                for it in items.iter_mut() {
                    let CacheInner::Tp(cache) = &mut it.cache.inner else {
                        return Err(foreign());
                    };
                    steps.push(TpStep {
                        tokens: it.tokens,
                        cache,
                    });
                }
                m.step(&mut steps)
            }
        }
    }
}
