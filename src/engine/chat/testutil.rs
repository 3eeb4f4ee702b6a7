//! Test doubles for the chat engine: a tiny byte-level BPE tokenizer and a fake decoder
//! whose next token is a function of the whole cached history, so any mistake in chunking,
//! batching or cache bookkeeping changes its output.

use std::cell::RefCell;
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::backend::{BatchItem, DecoderBackend};
use crate::models::decoder::DecoderInfo;
use crate::models::ModelError;

/// Token ids of the test vocabulary.
pub const EOS: u32 = 7;
/// "Ã" and "©": the two bytes of "é".
pub const E_ACUTE: [u32; 2] = [5, 6];

/// Vocabulary: a b c d " e" Ã © </s> (the last one special).
pub fn tokenizer() -> Tokenizer {
    let json = r#"{"version":"1.0","truncation":null,"padding":null,
      "added_tokens":[{"id":7,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
      "normalizer":null,
      "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
      "post_processor":null,
      "decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
      "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,
        "end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,
        "vocab":{"a":0,"b":1,"c":2,"d":3,"Ġe":4,"Ã":5,"©":6,"</s>":7},"merges":[]}}"#;
    json.parse().expect("test tokenizer JSON is valid")
}

/// Deterministic fake decoder.
pub struct FakeDecoder {
    info: DecoderInfo,
    tok: Tokenizer,
    /// Next token given the cached history.
    pub next: fn(&[u32]) -> u32,
    /// Tokens per item of every step, in call order.
    pub steps: RefCell<Vec<Vec<usize>>>,
    pub fail: bool,
    /// Whether caches can be copied (else `n` > 1 siblings prefill themselves).
    pub can_fork: bool,
    /// Whether caches can share blocks (else the prefix cache stays empty).
    pub can_share: bool,
}

/// The fake's KV cache: the whole history, and the shared blocks it starts with (held, as
/// a real cache holds them).
#[derive(Debug, Clone, Default)]
pub struct FakeCache {
    pub tokens: Vec<u32>,
    pub shared: Vec<Arc<Vec<u32>>>,
}

/// The default rule: a hash of the history over the ordinary tokens 0..=4.
pub fn mix(h: &[u32]) -> u32 {
    let s = h.iter().enumerate().fold(17u64, |a, (i, &t)| {
        a.wrapping_mul(31).wrapping_add(u64::from(t) + i as u64)
    });
    (s % 5) as u32
}

impl FakeDecoder {
    pub fn new(next: fn(&[u32]) -> u32) -> Self {
        FakeDecoder {
            info: DecoderInfo {
                model_type: "fake".into(),
                vocab_size: 8,
                max_position_embeddings: 4096,
                num_layers: 1,
                num_kv_heads: 1,
                head_dim: 1,
                kv_bytes_per_token: 8,
                eos_token_ids: vec![EOS],
                bos_token_id: None,
                bos_token: None,
                eos_token: Some("</s>".into()),
                add_bos_token: false,
                chat_template: None,
                dtype: "f32".into(),
                sampling_defaults: Default::default(),
            },
            tok: tokenizer(),
            next,
            steps: RefCell::new(Vec::new()),
            fail: false,
            can_fork: true,
            can_share: true,
        }
    }
}

impl DecoderBackend for FakeDecoder {
    type Cache = FakeCache;
    /// A block's "keys and values" are its tokens, so a block reused after the wrong
    /// prefix changes the output.
    type Block = Vec<u32>;

    fn info(&self) -> &DecoderInfo {
        &self.info
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    fn new_sequence(&self) -> FakeCache {
        FakeCache::default()
    }

    fn fork(&self, cache: &FakeCache) -> Option<FakeCache> {
        self.can_fork.then(|| cache.clone())
    }

    fn export_block(&self, cache: &FakeCache, start: usize, len: usize) -> Option<Vec<u32>> {
        let block = cache.tokens.get(start..start + len)?;
        self.can_share.then(|| block.to_vec())
    }

    fn with_prefix(&self, blocks: Vec<Arc<Vec<u32>>>) -> Option<FakeCache> {
        self.can_share.then(|| FakeCache {
            tokens: blocks.iter().flat_map(|b| b.iter().copied()).collect(),
            shared: blocks,
        })
    }

    fn step(&self, items: &mut [BatchItem<'_, FakeCache>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.steps
            .borrow_mut()
            .push(items.iter().map(|i| i.tokens.len()).collect());
        if self.fail {
            return Err(ModelError::Input("fake failure".into()));
        }
        Ok(items
            .iter_mut()
            .map(|it| {
                it.cache.tokens.extend_from_slice(it.tokens);
                let mut logits = vec![0.0f32; 8];
                logits[(self.next)(&it.cache.tokens) as usize] = 10.0;
                logits
            })
            .collect())
    }
}
