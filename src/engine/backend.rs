//! The boundary between the encoder engines and the model code: a trait the engine calls,
//! implemented by `models::encoder::EncoderModel` (and by fakes in tests), so nothing
//! above this line sees a tensor.

/// Token ids and segment ids of one (query, document) pair: a plain type of the model
/// layer, used as is so pairs cross the boundary without copies.
pub use crate::models::encoder::PairTokens;
/// A rerank query tokenised once per request, for all of its documents.
pub use crate::models::encoder::PreparedQuery;
/// Which end of a too-long text is cut (or whether it is refused).
pub use crate::models::encoder::Truncate;
use crate::models::ModelError;

/// What an encoder engine needs to know about its model.
#[derive(Debug, Clone)]
pub struct EncoderMeta {
    pub model_type: String,
    /// Maximum tokens per input, specials included.
    pub max_len: usize,
    pub hidden_size: usize,
    /// True for a `*ForSequenceClassification` cross-encoder.
    pub cross_encoder: bool,
    /// The dtype that actually runs.
    pub dtype: String,
    /// How token states become one vector (`mean`, `cls`, …; TEI's `/info` names it).
    pub pooling: String,
}

/// An encoder model as the engine sees it. Tokenisation methods are called from blocking
/// worker threads concurrently with `embed`/`score` on the model thread.
pub trait EncoderBackend: Send + Sync + 'static {
    fn meta(&self) -> EncoderMeta;
    /// Tokenizes one text with specials; truncates at `max_len` or fails when `truncate` is false.
    fn encode_text(&self, text: &str, truncate: bool) -> Result<Vec<u32>, ModelError>;
    /// Tokenizes one text to fit `max_tokens` (at most `max_len`, specials included),
    /// cutting the side `truncate` names. The default knows only [`Truncate::End`] and
    /// [`Truncate::Refuse`] at `max_len` (test fakes); the real model overrides it.
    fn encode_text_fit(
        &self,
        text: &str,
        truncate: Truncate,
        max_tokens: Option<usize>,
    ) -> Result<Vec<u32>, ModelError> {
        let _ = max_tokens;
        self.encode_text(text, truncate != Truncate::Refuse)
    }
    /// Tokenizes a pair with the model's pair template, truncating only the document.
    fn encode_pair(&self, query: &str, doc: &str) -> Result<PairTokens, ModelError>;
    /// Tokenizes a query once for many pairs (default: keeps the text).
    fn prepare_query(&self, query: &str) -> Result<PreparedQuery, ModelError> {
        Ok(PreparedQuery::text(query))
    }
    /// [`EncoderBackend::encode_pair`] for a prepared query: only `doc` is tokenized.
    fn encode_prepared_pair(
        &self,
        query: &PreparedQuery,
        doc: &str,
    ) -> Result<PairTokens, ModelError> {
        self.encode_pair(query.as_str(), doc)
    }
    fn decode(&self, ids: &[u32]) -> Result<String, ModelError>;
    fn token_strings(&self, ids: &[u32]) -> Vec<String>;
    /// Largest valid token id + 1.
    fn vocab_size(&self) -> usize;
    /// Pooled (and normalised if configured) vectors, in input order.
    fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError>;
    /// Pooled vectors never normalised, in input order.
    fn embed_unnormalized(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError>;
    /// The last hidden state of every token (no padding, before pooling), in input order.
    fn token_states(&self, batch: &[&[u32]]) -> Result<Vec<Vec<Vec<f32>>>, ModelError>;
    /// Raw logits of the first label, in input order.
    fn score(&self, batch: &[&PairTokens]) -> Result<Vec<f32>, ModelError>;
}
