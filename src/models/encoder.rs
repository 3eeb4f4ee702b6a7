//! The encoder backend the embedding and rerank engines call: tokenisation with the
//! model's own `tokenizer.json`, batched embedding (pooled, optionally normalised) and
//! cross-encoder scoring. Plain Rust types only; tensors stay in `models::bert`.
//!
//! Threads: the forward pass runs on a private rayon pool of `threads` workers, taken
//! from `TRIDENT_ENCODER_THREADS`, else `RAYON_NUM_THREADS`, else the number of CPUs;
//! [`EncoderModel::set_threads`] changes it. dtype: `F32` runs the exact f32 path;
//! `Auto` and `Bf16` run the large linears with bf16 weights on AVX512_BF16 CPUs (f32
//! elsewhere); `F16` runs f32. [`EncoderInfo::dtype`] says what actually runs. The bf16
//! mode keeps cosine ≥ 0.9999 against the f32 sentence-transformers reference on MiniLM
//! (tests/encoder.rs checks ≥ 0.999); activations are rounded to bf16 only as matmul
//! inputs, accumulation, norms, softmax and GELU stay f32.
//!
//! On CUDA (or with `LoadOptions::generic`) the model is `models::device::bert` instead,
//! chosen by `models::device::choose`; the API and the results are the same.

use std::path::Path;

use tokenizers::{Encoding, Tokenizer, TruncationDirection};

use super::bert::{Bert, Config, Seq};
use super::device::bert::DeviceBert;
use super::device::{self, ModelPath};
use super::pooling::{self, read_st_config};
use super::tensors::Mmaps;
use super::{files, DTypeChoice, LoadOptions, ModelError};

pub use super::pooling::Pooling;

/// What the model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    Embedding,
    CrossEncoder { num_labels: usize },
}

/// Facts about a loaded encoder.
#[derive(Debug, Clone)]
pub struct EncoderInfo {
    pub model_type: String,
    pub kind: EncoderKind,
    pub hidden_size: usize,
    /// Effective maximum tokens per input, specials included.
    pub max_len: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    /// The dtype the linears run in (`"f32"` or `"bf16"`).
    pub dtype: String,
}

/// A tokenised (query, document) pair.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PairTokens {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// Characters tokenised per token of room: no vocabulary has tokens this long, so text past
/// `room × CHARS_PER_TOKEN` characters would be cut after tokenising anyway, and
/// tokenising it (a megabyte-long document times a thousand) would be work for nothing.
pub const CHARS_PER_TOKEN: usize = 32;

/// The prefix of `text` that can matter for `tokens` tokens of room.
fn cap(text: &str, tokens: usize) -> &str {
    match text
        .char_indices()
        .nth(tokens.saturating_mul(CHARS_PER_TOKEN))
    {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// The suffix of `text` that can matter for `tokens` tokens of room (for [`Truncate::Start`]).
fn cap_end(text: &str, tokens: usize) -> &str {
    let chars = tokens.saturating_mul(CHARS_PER_TOKEN);
    if chars == 0 {
        return "";
    }
    match text.char_indices().rev().nth(chars - 1) {
        Some((start, _)) => &text[start..],
        None => text,
    }
}

/// What happens to a text longer than the room it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncate {
    /// Refuse it (an input error).
    Refuse,
    /// Keep the start, drop the end (the default of every API).
    #[default]
    End,
    /// Keep the end, drop the start (Cohere's `truncate: "START"`, TEI's `Left`).
    Start,
}

/// A rerank query tokenised once for all its documents: the text, and its raw tokens
/// (already cut to the pair budget) when a real tokenizer prepared it.
#[derive(Debug, Clone)]
pub struct PreparedQuery {
    text: String,
    tokens: Option<Encoding>,
}

impl PreparedQuery {
    /// A query kept as text (backends without a tokenizer of their own, test fakes).
    pub fn text(text: &str) -> Self {
        PreparedQuery {
            text: text.to_string(),
            tokens: None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The network behind an [`EncoderModel`].
enum Net {
    /// The fast CPU kernels on a private thread pool.
    Fast {
        bert: Box<Bert>,
        pool: rayon::ThreadPool,
    },
    /// The device-generic candle path (CUDA, or the CPU backend when asked for).
    Device(Box<DeviceBert>),
}

/// An encoder model with its tokenizer.
pub struct EncoderModel {
    net: Net,
    tokenizer: Tokenizer,
    info: EncoderInfo,
    threads: usize,
}

fn default_threads() -> usize {
    ["TRIDENT_ENCODER_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|k| {
            std::env::var(k)
                .ok()?
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn build_pool(threads: usize) -> Result<rayon::ThreadPool, ModelError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("encoder-{i}"))
        .build()
        .map_err(|e| ModelError::Unsupported(format!("cannot start encoder threads: {e}")))
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

fn read_config(dir: &Path) -> Result<Config, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Files {
        what: format!("cannot read config.json ({e})"),
        path: path.clone(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
        path,
        reason: e.to_string(),
    })
}

/// `model_max_length` from `tokenizer_config.json` when it is a real limit.
fn tokenizer_max_len(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("model_max_length")?
        .as_f64()
        .filter(|n| (1.0..1e6).contains(n))
        .map(|n| n as usize)
}

impl EncoderModel {
    /// Loads a BERT / (XLM-)RoBERTa encoder directory (or Hugging Face cache entry).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self, ModelError> {
        let dir = files::resolve(path)?;
        let cfg = read_config(&dir)?;
        // The one place that dispatches on model_type for encoders.
        match cfg.model_type.as_str() {
            "bert" | "roberta" | "xlm-roberta" | "camembert" => {}
            other => {
                return Err(ModelError::Unsupported(format!(
                    "encoder model_type {other}"
                )))
            }
        }
        let st_cfg = read_st_config(&dir)?;
        let threads = default_threads();
        let weights = files::safetensors_files(&dir)?;
        let (net, dtype) = match device::choose(opts)? {
            ModelPath::Fast => {
                let mmaps = Mmaps::open(&weights)?;
                let mut bert = Bert::load(cfg.clone(), &mmaps.store()?)?;
                drop(mmaps);
                let bf16 = matches!(opts.dtype, DTypeChoice::Auto | DTypeChoice::Bf16)
                    && super::kernels::bf16::supported();
                if bf16 {
                    bert.use_bf16();
                }
                let net = Net::Fast {
                    bert: Box::new(bert),
                    pool: build_pool(threads)?,
                };
                (net, if bf16 { "bf16" } else { "f32" }.to_string())
            }
            ModelPath::Generic { device, dtype } => {
                // SAFETY: the weight files are memory-mapped read-only; trident does not
                // modify model files while serving them (the contract of mmap loaders).
                let vb = unsafe {
                    candle_nn::VarBuilder::from_mmaped_safetensors(&weights, dtype, &device)?
                };
                let net = Net::Device(Box::new(DeviceBert::load(cfg.clone(), vb)?));
                (net, format!("{dtype:?}").to_lowercase())
            }
        };
        let has_head = match &net {
            Net::Fast { bert, .. } => bert.has_head(),
            Net::Device(d) => d.has_head(),
        };

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Files {
            what: format!("cannot load tokenizer.json ({e})"),
            path: tok_path.clone(),
        })?;
        // Length limits are ours to apply; a baked-in truncation/padding would corrupt them.
        tokenizer.with_truncation(None).map_err(tok_err)?;
        tokenizer.with_padding(None);

        let positions = cfg
            .max_position_embeddings
            .saturating_sub(cfg.position_offset());
        let max_len = st_cfg
            .max_seq_length
            .or_else(|| tokenizer_max_len(&dir))
            .unwrap_or(positions)
            .min(positions);
        let kind = if has_head {
            EncoderKind::CrossEncoder {
                num_labels: cfg.labels(),
            }
        } else {
            EncoderKind::Embedding
        };
        let pooling = st_cfg.pooling.unwrap_or(match kind {
            EncoderKind::Embedding => Pooling::Mean,
            EncoderKind::CrossEncoder { .. } => Pooling::Cls,
        });
        let info = EncoderInfo {
            model_type: cfg.model_type.clone(),
            kind,
            hidden_size: cfg.hidden_size,
            max_len,
            pooling,
            normalize: st_cfg.normalize,
            dtype,
        };
        Ok(EncoderModel {
            net,
            tokenizer,
            info,
            threads,
        })
    }

    /// Facts about the model.
    pub fn info(&self) -> &EncoderInfo {
        &self.info
    }

    /// Number of threads the forward pass uses.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Sets the number of threads the forward pass uses (at least 1; CPU path only).
    pub fn set_threads(&mut self, threads: usize) -> Result<(), ModelError> {
        let threads = threads.max(1);
        if let Net::Fast { pool, .. } = &mut self.net {
            *pool = build_pool(threads)?;
        }
        self.threads = threads;
        Ok(())
    }

    /// Runs the network over `seqs`, calling `f(index, hidden [len, hidden])` per sequence;
    /// with `first_only` the hidden states may hold only the first token's row (all the
    /// caller reads), which spares most of the last layer on the CPU path.
    fn forward<F: FnMut(usize, &[f32]) + Send>(
        &self,
        seqs: &[Seq],
        first_only: bool,
        f: F,
    ) -> Result<(), ModelError> {
        match &self.net {
            Net::Fast { bert, pool } if first_only => {
                pool.install(|| bert.forward_first(seqs, self.threads, f))
            }
            Net::Fast { bert, pool } => pool.install(|| bert.forward(seqs, self.threads, f)),
            Net::Device(d) => d.forward(seqs, f),
        }
    }

    fn added(&self, pair: bool) -> usize {
        self.tokenizer.get_post_processor().map_or(0, |p| {
            use tokenizers::PostProcessor;
            p.added_tokens(pair)
        })
    }

    fn raw(&self, text: &str) -> Result<Encoding, ModelError> {
        self.tokenizer.encode(text, false).map_err(tok_err)
    }

    /// Tokenises one text with the model's specials; truncates the content so the
    /// result fits `max_len` when `truncate`, else rejects a too-long text. Only the first
    /// `max_len × CHARS_PER_TOKEN` characters are ever tokenised.
    pub fn encode_text(&self, text: &str, truncate: bool) -> Result<Vec<u32>, ModelError> {
        let how = if truncate {
            Truncate::End
        } else {
            Truncate::Refuse
        };
        self.encode_text_fit(text, how, None)
    }

    /// [`EncoderModel::encode_text`] with the cut side chosen and an optional lower limit
    /// (`max_tokens`, specials included, never above `max_len`; the specials are always
    /// kept). Only the `limit × CHARS_PER_TOKEN` characters at the kept end are tokenised.
    pub fn encode_text_fit(
        &self,
        text: &str,
        truncate: Truncate,
        max_tokens: Option<usize>,
    ) -> Result<Vec<u32>, ModelError> {
        let limit = max_tokens.map_or(self.info.max_len, |m| m.min(self.info.max_len));
        let capped = match truncate {
            Truncate::Start => cap_end(text, limit),
            Truncate::End | Truncate::Refuse => cap(text, limit),
        };
        if truncate == Truncate::Refuse && capped.len() < text.len() {
            return Err(ModelError::Input(format!(
                "input has more than {} characters, more than the limit of {limit} tokens can hold",
                limit * CHARS_PER_TOKEN,
            )));
        }
        let mut enc = self.raw(capped)?;
        let budget = limit.saturating_sub(self.added(false));
        if enc.len() > budget {
            let side = match truncate {
                Truncate::Refuse => {
                    return Err(ModelError::Input(format!(
                        "input has {} tokens, more than the limit of {limit}",
                        enc.len() + self.added(false),
                    )))
                }
                Truncate::End => TruncationDirection::Right,
                Truncate::Start => TruncationDirection::Left,
            };
            enc.truncate(budget, 0, side);
        }
        let enc = self
            .tokenizer
            .post_process(enc, None, true)
            .map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenises a (query, document) pair with the pair template; only the document is
    /// truncated to fit `max_len` (the query too, should it alone not fit).
    pub fn encode_pair(&self, query: &str, doc: &str) -> Result<PairTokens, ModelError> {
        self.encode_prepared_pair(&self.prepare_query(query)?, doc)
    }

    /// Tokenises a query once for many pairs, cut to the pair budget.
    pub fn prepare_query(&self, query: &str) -> Result<PreparedQuery, ModelError> {
        let budget = self.info.max_len.saturating_sub(self.added(true));
        let mut q = self.raw(cap(query, budget))?;
        if q.len() > budget {
            q.truncate(budget, 0, TruncationDirection::Right);
        }
        Ok(PreparedQuery {
            text: query.to_string(),
            tokens: Some(q),
        })
    }

    /// [`EncoderModel::encode_pair`] with the query already tokenised: only the document
    /// is tokenised here and truncated to the room the query leaves.
    pub fn encode_prepared_pair(
        &self,
        query: &PreparedQuery,
        doc: &str,
    ) -> Result<PairTokens, ModelError> {
        let q = match &query.tokens {
            Some(q) => q.clone(),
            None => return self.encode_prepared_pair(&self.prepare_query(&query.text)?, doc),
        };
        let budget = self.info.max_len.saturating_sub(self.added(true));
        let room = budget.saturating_sub(q.len());
        let mut d = self.raw(cap(doc, room))?;
        if d.len() > room {
            d.truncate(room, 0, TruncationDirection::Right);
        }
        let enc = self
            .tokenizer
            .post_process(q, Some(d), true)
            .map_err(tok_err)?;
        Ok(PairTokens {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }

    /// Decodes ids back to text (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer.decode(ids, false).map_err(tok_err)
    }

    /// The vocabulary string of every id (empty for unknown ids).
    pub fn token_strings(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&i| self.tokenizer.id_to_token(i).unwrap_or_default())
            .collect()
    }

    /// Embeds a batch of token-id sequences (specials included): one pooled (and,
    /// when configured, L2-normalised) vector per input, in input order.
    pub fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out = self.embed_unnormalized(batch)?;
        if self.info.normalize {
            out.iter_mut().for_each(|v| pooling::normalize(v));
        }
        Ok(out)
    }

    /// Pooled vectors without the final normalisation, whatever the model's configuration
    /// says (TEI's `normalize: false`).
    pub fn embed_unnormalized(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let h = self.info.hidden_size;
        let first_only = self.info.pooling == Pooling::Cls;
        self.forward_texts(batch, first_only, |hidden| {
            pooling::pool(hidden, h, self.info.pooling)
        })
    }

    /// One forward pass over single-text inputs (no token types): `each` maps an input's
    /// last hidden states to its result, in input order.
    fn forward_texts<T: Clone + Default + Send>(
        &self,
        batch: &[&[u32]],
        first_only: bool,
        each: impl Fn(&[f32]) -> T + Send + Sync,
    ) -> Result<Vec<T>, ModelError> {
        let seqs: Vec<Seq> = batch
            .iter()
            .map(|ids| Seq {
                ids,
                type_ids: None,
            })
            .collect();
        let mut out = vec![T::default(); batch.len()];
        self.forward(&seqs, first_only, |i, hidden| out[i] = each(hidden))?;
        Ok(out)
    }

    /// The last hidden state of every token of every input (specials included, no padding,
    /// before pooling): `[input][token][hidden]`, for TEI's `/embed_all`.
    pub fn token_states(&self, batch: &[&[u32]]) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
        let h = self.info.hidden_size;
        self.forward_texts(batch, false, |hidden| {
            hidden.chunks_exact(h).map(<[f32]>::to_vec).collect()
        })
    }

    /// Cross-encoder scores: the first label's raw logit per pair.
    pub fn score(&self, batch: &[&PairTokens]) -> Result<Vec<f32>, ModelError> {
        if !matches!(self.info.kind, EncoderKind::CrossEncoder { .. }) {
            return Err(ModelError::Unsupported(
                "score() needs a sequence-classification model; embed() and cosine for bi-encoders"
                    .into(),
            ));
        }
        let seqs: Vec<Seq> = batch
            .iter()
            .map(|p| Seq {
                ids: &p.ids,
                type_ids: Some(&p.type_ids),
            })
            .collect();
        let bert = match &self.net {
            Net::Fast { bert, .. } => bert,
            Net::Device(d) => {
                return Ok(d
                    .classify(&seqs)?
                    .into_iter()
                    .map(|l| l.first().copied().unwrap_or(f32::NAN))
                    .collect())
            }
        };
        let h = self.info.hidden_size;
        let mut cls = vec![0.0f32; batch.len() * h];
        self.forward(&seqs, true, |i, hidden| {
            if hidden.len() >= h {
                cls[i * h..(i + 1) * h].copy_from_slice(&hidden[..h]);
            }
        })?;
        Ok(cls
            .chunks_exact(h)
            .map(|c| {
                bert.classify(c)
                    .and_then(|l| l.first().copied())
                    .unwrap_or(f32::NAN)
            })
            .collect())
    }

    /// Full logits (all labels) per pair; for multi-label classifiers.
    pub fn logits(&self, batch: &[&PairTokens]) -> Result<Vec<Vec<f32>>, ModelError> {
        let seqs: Vec<Seq> = batch
            .iter()
            .map(|p| Seq {
                ids: &p.ids,
                type_ids: Some(&p.type_ids),
            })
            .collect();
        let bert = match &self.net {
            Net::Fast { bert, .. } => bert,
            Net::Device(d) => return d.classify(&seqs),
        };
        let h = self.info.hidden_size;
        let mut out = vec![Vec::new(); batch.len()];
        self.forward(&seqs, true, |i, hidden| {
            if hidden.len() >= h {
                out[i] = bert.classify(&hidden[..h]).unwrap_or_default();
            }
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_whole_characters_up_to_the_room() {
        assert_eq!(cap("abc", 1), "abc");
        let text = "é".repeat(CHARS_PER_TOKEN * 2 + 5);
        let c = cap(&text, 2);
        assert_eq!(c.chars().count(), CHARS_PER_TOKEN * 2);
        assert!(text.starts_with(c));
        assert_eq!(cap(&text, 0), "");
        assert_eq!(cap("", 3), "");
    }

    #[test]
    fn the_end_cap_keeps_whole_characters_at_the_end() {
        let text = format!("{}{}", "a".repeat(10), "é".repeat(CHARS_PER_TOKEN));
        assert_eq!(cap_end(&text, 1), "é".repeat(CHARS_PER_TOKEN));
        assert_eq!(cap_end(&text, 2), text);
        assert_eq!(cap_end(&text, 0), "");
        assert_eq!(cap_end("", 3), "");
    }
}
