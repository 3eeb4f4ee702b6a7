//! text-embeddings-inference's API on the embedding engine: `POST /embed` (pooled vectors,
//! `normalize` default true, `dimensions`), `POST /embed_all` (every token's last hidden
//! state, before pooling, without padding) and `GET /info` (the model and the engine's
//! limits). Both POST routes run through the shared core (`embed_task`); token-id `inputs`
//! follow the model's `token_ids` setting like `/v1/embeddings`.

use axum::extract::State;
use axum::Json;

use super::{embed_task, tokenize_permits, EmbedOutput, EmbedTask, EncoderState, MAX_BATCH_SIZE};
use crate::api::types::embeddings::{
    apply_dimensions, check_dimensions, parse_inputs_named, MAX_INPUTS,
};
use crate::api::types::tei::{dtype_name, TeiEmbedRequest, TeiInfo, TeiModelType, TeiPooling};
use crate::api::{ApiError, ApiJson};
use crate::metrics::reason;

/// Validates a TEI body into a task for `output`.
fn task(
    s: &EncoderState,
    req: &TeiEmbedRequest,
    output: EmbedOutput,
) -> Result<EmbedTask, ApiError> {
    s.common.check_model(req.model.as_deref())?;
    let checked = (|| {
        req.check_prompt()?;
        Ok::<_, ApiError>(EmbedTask {
            inputs: parse_inputs_named(&req.inputs, "inputs")?,
            param: "inputs",
            overflow: req.overflow()?,
            max_tokens: None,
            output,
        })
    })();
    checked.inspect_err(|_| s.common.reject(reason::INVALID))
}

/// `POST /embed`: `[[f32]]`, one pooled vector per input.
pub(super) async fn embed(
    State(s): State<EncoderState>,
    ApiJson(req): ApiJson<TeiEmbedRequest>,
) -> Result<Json<Vec<Vec<f32>>>, ApiError> {
    let normalize = req.normalize.unwrap_or(true);
    let task = task(
        &s,
        &req,
        EmbedOutput::Vector {
            normalize: Some(normalize),
        },
    )?;
    let hidden = s.runtime()?.backend.meta().hidden_size;
    check_dimensions(req.dimensions, hidden).inspect_err(|_| s.common.reject(reason::INVALID))?;
    let vectors = embed_task(&s, task).await?.vectors()?;
    Ok(Json(
        vectors
            .into_iter()
            .map(|v| match normalize {
                true => apply_dimensions(v, req.dimensions),
                // Without normalisation the cut vector stays unscaled too.
                false => v
                    .into_iter()
                    .take(req.dimensions.unwrap_or(usize::MAX))
                    .collect(),
            })
            .collect(),
    ))
}

/// `POST /embed_all`: `[[[f32]]]`, input × token × hidden.
pub(super) async fn embed_all(
    State(s): State<EncoderState>,
    ApiJson(req): ApiJson<TeiEmbedRequest>,
) -> Result<Json<Vec<Vec<Vec<f32>>>>, ApiError> {
    if req.dimensions.is_some() || req.normalize.is_some() {
        s.common.reject(reason::INVALID);
        let param = if req.dimensions.is_some() {
            "dimensions"
        } else {
            "normalize"
        };
        return Err(ApiError::invalid_param(
            param,
            format!("'{param}' applies to /embed; /embed_all returns the raw token states"),
        ));
    }
    let task = task(&s, &req, EmbedOutput::Tokens)?;
    Ok(Json(embed_task(&s, task).await?.token_states()?))
}

/// `GET /info`.
pub(super) async fn info(State(s): State<EncoderState>) -> Result<Json<TeiInfo>, ApiError> {
    let meta = s.runtime()?.backend.meta();
    Ok(Json(TeiInfo {
        model_id: s
            .options
            .name
            .clone()
            .unwrap_or_else(|| s.common.id.to_string()),
        model_sha: None,
        model_dtype: dtype_name(&meta.dtype),
        model_type: TeiModelType {
            embedding: TeiPooling {
                pooling: meta.pooling,
            },
        },
        max_concurrent_requests: s.options.max_queue,
        max_input_length: meta.max_len,
        max_batch_tokens: s.options.max_batch_tokens,
        max_batch_requests: Some(MAX_BATCH_SIZE),
        max_client_batch_size: MAX_INPUTS,
        auto_truncate: true,
        tokenization_workers: tokenize_permits(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        sha: None,
        docker_label: None,
    }))
}
