//! The boundary between the chat engine and the decoder model: a trait the scheduler calls,
//! implemented by [`DecoderModel`] (below) and by a fake in the scheduler's tests, so the
//! batching logic is exercised without weights and nothing above this line sees a tensor.

use std::sync::Arc;

use tokenizers::Tokenizer;

use crate::models::decoder::{DecoderInfo, DecoderModel, KvBlock, SeqCache, StepItem};
use crate::models::ModelError;

/// One sequence's part of a forward step: the tokens it appends and its KV cache.
pub struct BatchItem<'a, C> {
    pub tokens: &'a [u32],
    pub cache: &'a mut C,
}

/// A decoder as the chat engine sees it. It lives on the model thread only; handlers use a
/// clone of its tokenizer.
pub trait DecoderBackend {
    /// The KV cache of one sequence.
    type Cache;
    /// Keys and values of a run of positions that several caches can share (the prefix
    /// cache's unit).
    type Block;
    fn info(&self) -> &DecoderInfo;
    fn tokenizer(&self) -> &Tokenizer;
    /// An empty cache for a new sequence.
    fn new_sequence(&self) -> Self::Cache;
    /// One forward step over several sequences; each item appends its tokens (a prefill
    /// chunk or one decode token) and gets the logits of its last token, in item order.
    fn step(&self, items: &mut [BatchItem<'_, Self::Cache>]) -> Result<Vec<Vec<f32>>, ModelError>;
    /// A copy of a sequence's cache for a sibling that continues from the same prompt
    /// (`n` > 1), or `None` where copying is not possible; the sibling then prefills the
    /// prompt itself.
    fn fork(&self, cache: &Self::Cache) -> Option<Self::Cache>;
    /// A copy of positions `start..start + len` of a cache as a shareable block, or `None`
    /// where the backend cannot share blocks (then the prefix cache stays empty).
    fn export_block(&self, cache: &Self::Cache, start: usize, len: usize) -> Option<Self::Block>;
    /// A cache whose first positions are `blocks`, shared rather than copied (the cache
    /// holds them until it is dropped), or `None` where the backend cannot share blocks.
    fn with_prefix(&self, blocks: Vec<Arc<Self::Block>>) -> Option<Self::Cache>;
}

impl DecoderBackend for DecoderModel {
    type Cache = SeqCache;
    type Block = KvBlock;

    fn info(&self) -> &DecoderInfo {
        DecoderModel::info(self)
    }

    fn tokenizer(&self) -> &Tokenizer {
        DecoderModel::tokenizer(self)
    }

    fn new_sequence(&self) -> SeqCache {
        DecoderModel::new_sequence(self)
    }

    fn step(&self, items: &mut [BatchItem<'_, SeqCache>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut steps: Vec<StepItem<'_>> = items
            .iter_mut()
            .map(|it| StepItem {
                tokens: it.tokens,
                cache: &mut *it.cache,
            })
            .collect();
        DecoderModel::step(self, &mut steps)
    }

    fn fork(&self, cache: &SeqCache) -> Option<SeqCache> {
        cache.fork()
    }

    fn export_block(&self, cache: &SeqCache, start: usize, len: usize) -> Option<KvBlock> {
        DecoderModel::export_block(self, cache, start, len)
    }

    fn with_prefix(&self, blocks: Vec<Arc<KvBlock>>) -> Option<SeqCache> {
        DecoderModel::with_prefix(self, blocks)
    }
}
