//! Cohere's embed API on the embedding engine: `POST /v2/embed` and `POST /v1/embed`.
//!
//! Both validate into `api::types::cohere::CohereEmbed`, embed through the shared core
//! (`embed_task`), apply `output_dimension` (truncate + renormalise, as `dimensions` on
//! `/v1/embeddings`) and answer Cohere's shape: v2 always by type (`float` when no
//! `embedding_types` were given); v1 a plain list of floats (`embeddings_floats`) without
//! `embedding_types`, else by type. The compressed types come from `api::types::quantize`.

use axum::extract::State;
use axum::Json;

use super::{embed_task, EmbedOutput, EmbedTask, EncoderState};
use crate::api::types::cohere::{
    CohereEmbed, CohereEmbedRequest, CohereEmbedResponse, CohereEmbeddings, EmbedMeta,
    EmbeddingType, EmbeddingsByType,
};
use crate::api::types::embeddings::{apply_dimensions, check_dimensions, EmbeddingInput};
use crate::api::{ApiError, ApiJson};
use crate::metrics::reason;

/// The texts' float vectors (after `output_dimension`), the validated request and the
/// tokens used.
async fn run(
    s: &EncoderState,
    req: &CohereEmbedRequest,
) -> Result<(Vec<Vec<f32>>, CohereEmbed, usize), ApiError> {
    s.common.check_model(req.model.as_deref())?;
    let parsed = req
        .task()
        .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let hidden = s.runtime()?.backend.meta().hidden_size;
    check_dimensions(parsed.output_dimension, hidden)
        .map_err(|_| {
            ApiError::invalid_param(
                "output_dimension",
                format!("'output_dimension' must be between 1 and {hidden}"),
            )
        })
        .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let task = EmbedTask {
        inputs: parsed
            .texts
            .iter()
            .cloned()
            .map(EmbeddingInput::Text)
            .collect(),
        param: parsed.param,
        overflow: parsed.overflow,
        max_tokens: parsed.max_tokens,
        output: EmbedOutput::Vector { normalize: None },
    };
    let done = embed_task(s, task).await?;
    let tokens = done.prompt_tokens;
    let vectors = done
        .vectors()?
        .into_iter()
        .map(|v| apply_dimensions(v, parsed.output_dimension))
        .collect();
    Ok((vectors, parsed, tokens))
}

fn new_id() -> String {
    let n = rand::random::<u128>();
    // A UUID-shaped id, like Cohere's.
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        n >> 96,
        (n >> 80) & 0xffff,
        (n >> 64) & 0xffff,
        (n >> 48) & 0xffff,
        n & 0xffff_ffff_ffff
    )
}

/// `POST /v2/embed`.
pub(super) async fn embed_v2(
    State(s): State<EncoderState>,
    ApiJson(req): ApiJson<CohereEmbedRequest>,
) -> Result<Json<CohereEmbedResponse>, ApiError> {
    let (vectors, parsed, tokens) = run(&s, &req).await?;
    let types = if parsed.types.is_empty() {
        vec![EmbeddingType::Float]
    } else {
        parsed.types
    };
    Ok(Json(CohereEmbedResponse {
        id: new_id(),
        embeddings: CohereEmbeddings::ByType(EmbeddingsByType::build(vectors, &types)),
        texts: parsed.texts,
        meta: EmbedMeta::new("2", tokens),
        response_type: "embeddings_by_type",
    }))
}

/// `POST /v1/embed`.
pub(super) async fn embed_v1(
    State(s): State<EncoderState>,
    ApiJson(req): ApiJson<CohereEmbedRequest>,
) -> Result<Json<CohereEmbedResponse>, ApiError> {
    let (vectors, parsed, tokens) = run(&s, &req).await?;
    let (embeddings, response_type) = if parsed.types.is_empty() {
        (CohereEmbeddings::Floats(vectors), "embeddings_floats")
    } else {
        (
            CohereEmbeddings::ByType(EmbeddingsByType::build(vectors, &parsed.types)),
            "embeddings_by_type",
        )
    };
    Ok(Json(CohereEmbedResponse {
        id: new_id(),
        embeddings,
        texts: parsed.texts,
        meta: EmbedMeta::new("1", tokens),
        response_type,
    }))
}
