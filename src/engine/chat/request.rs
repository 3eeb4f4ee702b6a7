//! Request checks of the text-generation endpoints: the model-free checks of a chat or
//! completion request (`check_chat`, `check_completion`; the fuzz targets call them too),
//! sampling values in range (errors name the parameter), prompts rendered and tokenised
//! (on blocking threads), and the context length check that happens before anything is
//! queued.

use serde_json::Value;
use tokenizers::Tokenizer;

use super::constraint::{spec_of, ConstraintSpec};
use super::logprobs::MAX_TOP_LOGPROBS;
use super::sampling::SamplingParams;
use super::tools::{self, Tools};
use crate::api::types::chat::{parse_messages, ChatCompletionRequest};
use crate::api::types::completions::{CompletionRequest, SamplingFields, StopField};
use crate::api::types::refuse_unsupported;
use crate::api::ApiError;
use crate::models::decoder::{DecoderInfo, SamplingDefaults};
use crate::models::encoder::CHARS_PER_TOKEN;

/// Most stop strings per request.
pub const MAX_STOP: usize = 4;
/// Longest stop string, in bytes (the matcher holds back at most this much text and
/// compares it against each stop string on every token).
pub const MAX_STOP_BYTES: usize = 256;

/// Sampling settings of a request after validation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub params: SamplingParams,
    pub stop: Vec<String>,
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub ignore_eos: bool,
    /// Choices per prompt (each sampled independently from the shared prompt).
    pub n: usize,
}

/// Most choices per prompt (OpenAI's limit); a model also caps it at its `max_num_seqs`.
pub const MAX_N: usize = 128;
/// Most prompts in one completion request.
pub const MAX_PROMPTS: usize = 128;

fn range(
    param: &str,
    v: Option<f64>,
    ok: impl Fn(f64) -> bool,
    what: &str,
) -> Result<Option<f32>, ApiError> {
    match v {
        Some(x) if !x.is_finite() || !ok(x) => Err(ApiError::invalid_param(
            param,
            format!("'{param}' must be {what} (got {x})"),
        )),
        other => Ok(other.map(|x| x as f32)),
    }
}

/// Checks every sampling value; the first problem is reported with its parameter name.
pub fn validate(f: &SamplingFields) -> Result<Generation, ApiError> {
    let n = match f.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid_param(
                "n",
                format!("'n' must be between 1 and {MAX_N} (got {n})"),
            ))
        }
    };
    let max_tokens = match f.max_tokens {
        Some(m) if m < 1 => {
            return Err(ApiError::invalid_param(
                f.max_tokens_param,
                format!("'{}' must be at least 1 (got {m})", f.max_tokens_param),
            ))
        }
        Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        None => None,
    };
    let temperature = range(
        "temperature",
        f.temperature,
        |x| (0.0..=2.0).contains(&x),
        "between 0 and 2",
    )?;
    let top_p = range("top_p", f.top_p, |x| x > 0.0 && x <= 1.0, "in (0, 1]")?;
    let presence = range(
        "presence_penalty",
        f.presence_penalty,
        |x| (-2.0..=2.0).contains(&x),
        "between -2 and 2",
    )?;
    let frequency = range(
        "frequency_penalty",
        f.frequency_penalty,
        |x| (-2.0..=2.0).contains(&x),
        "between -2 and 2",
    )?;
    let repetition = range(
        "repetition_penalty",
        f.repetition_penalty,
        |x| x > 0.0,
        "greater than 0",
    )?;
    let top_k = match f.top_k {
        Some(k) if k < -1 => {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("'top_k' must be -1 or 0 (disabled) or a positive number (got {k})"),
            ))
        }
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        _ => 0,
    };
    let stop = match &f.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "'stop' accepts at most {MAX_STOP} strings (got {})",
                stop.len()
            ),
        ));
    }
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "each 'stop' string may have at most {MAX_STOP_BYTES} bytes (got one of {})",
                long.len()
            ),
        ));
    }
    let min_p = range(
        "min_p",
        f.extras.min_p,
        |x| (0.0..=1.0).contains(&x),
        "between 0 and 1",
    )?;
    let min_tokens = match f.extras.min_tokens {
        Some(m) if m < 0 => {
            return Err(ApiError::invalid_param(
                "min_tokens",
                format!("'min_tokens' must be at least 0 (got {m})"),
            ))
        }
        Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
        None => 0,
    };
    let logprobs = match f.logprobs {
        Some(k) if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) => {
            return Err(ApiError::invalid_param(
                f.logprobs_param,
                format!(
                    "'{}' must be between 0 and {MAX_TOP_LOGPROBS} (got {k})",
                    f.logprobs_param
                ),
            ))
        }
        other => other.map(|k| k as usize),
    };
    if let Some(max) = max_tokens.filter(|&m| min_tokens > m) {
        return Err(ApiError::invalid_param(
            "min_tokens",
            format!("'min_tokens' ({min_tokens}) must not exceed the maximum tokens ({max})"),
        ));
    }
    Ok(Generation {
        params: SamplingParams {
            temperature: temperature.unwrap_or(1.0),
            top_p: top_p.unwrap_or(1.0),
            top_k,
            seed: f.seed.map(|s| s as u64),
            presence_penalty: presence.unwrap_or(0.0),
            frequency_penalty: frequency.unwrap_or(0.0),
            repetition_penalty: repetition.unwrap_or(1.0),
            min_p: min_p.unwrap_or(0.0),
            logit_bias: logit_bias(f.extras.logit_bias.as_ref())?,
            min_tokens,
            stop_token_ids: stop_token_ids(f.extras.stop_token_ids.as_deref())?,
            include_stop_str: f.extras.include_stop_str_in_output,
            logprobs,
        },
        stop,
        max_tokens,
        ignore_eos: f.ignore_eos,
        n,
    })
}

/// Most entries of `logit_bias` (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;

/// `logit_bias` as OpenAI defines it: an object of token ids (decimal strings) to a bias in
/// [-100, 100]. Ids are checked against the vocabulary by [`check_vocab`].
fn logit_bias(v: Option<&serde_json::Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |msg: String| ApiError::invalid_param("logit_bias", msg);
    let map = match v {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => {
            return Err(bad(
                "'logit_bias' must be an object of token ids to biases".into()
            ))
        }
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(bad(format!(
            "'logit_bias' accepts at most {MAX_LOGIT_BIAS} tokens (got {})",
            map.len()
        )));
    }
    map.iter()
        .map(|(k, v)| {
            let id = k
                .parse::<u32>()
                .map_err(|_| bad(format!("'logit_bias' keys must be token ids (got {k:?})")))?;
            match v.as_f64() {
                Some(b) if (-100.0..=100.0).contains(&b) => Ok((id, b as f32)),
                _ => Err(bad(format!(
                    "'logit_bias' values must be numbers between -100 and 100 (got {v} for {k})"
                ))),
            }
        })
        .collect()
}

/// Most `stop_token_ids`.
pub const MAX_STOP_TOKEN_IDS: usize = 64;

fn stop_token_ids(ids: Option<&[i64]>) -> Result<Vec<u32>, ApiError> {
    let ids = ids.unwrap_or_default();
    if ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(ApiError::invalid_param(
            "stop_token_ids",
            format!(
                "'stop_token_ids' accepts at most {MAX_STOP_TOKEN_IDS} ids (got {})",
                ids.len()
            ),
        ));
    }
    ids.iter()
        .map(|&t| {
            u32::try_from(t).map_err(|_| {
                ApiError::invalid_param(
                    "stop_token_ids",
                    format!("'stop_token_ids' must be token ids (got {t})"),
                )
            })
        })
        .collect()
}

/// 400 naming `logit_bias` or `stop_token_ids` when one names a token outside the
/// vocabulary.
pub fn check_vocab(gen: &Generation, vocab: usize) -> Result<(), ApiError> {
    let p = &gen.params;
    let outside = |param: &str, t: u32| {
        Err(ApiError::invalid_param(
            param,
            format!("token id {t} is outside the vocabulary (size {vocab})"),
        ))
    };
    if let Some((t, _)) = p.logit_bias.iter().find(|(t, _)| *t as usize >= vocab) {
        return outside("logit_bias", *t);
    }
    if let Some(t) = p.stop_token_ids.iter().find(|&&t| t as usize >= vocab) {
        return outside("stop_token_ids", *t);
    }
    Ok(())
}

/// A chat request after every check that needs no model: `messages` ready for the
/// template, the sampling values, the tools, and the one grammar to enforce (with the
/// parameter it came from).
#[derive(Debug, Clone)]
pub struct CheckedChat {
    pub messages: Vec<Value>,
    pub gen: Generation,
    pub tools: Option<Tools>,
    pub spec: Option<(ConstraintSpec, &'static str)>,
    /// `chat_template_kwargs`: extra template variables.
    pub kwargs: Option<serde_json::Map<String, Value>>,
}

/// `chat_template_kwargs`: an object of template variables, or absent.
pub fn template_kwargs(
    v: Option<&Value>,
) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(ApiError::invalid_param(
            "chat_template_kwargs",
            "'chat_template_kwargs' must be an object of template variables",
        )),
    }
}

/// The checks of `POST /v1/chat/completions` before the template runs (also the fuzz
/// target's entry point, so both see the same rules).
pub fn check_chat(
    req: &ChatCompletionRequest,
    defaults: &SamplingDefaults,
) -> Result<CheckedChat, ApiError> {
    let mut messages = parse_messages(&req.messages)?;
    tools::arguments_as_objects(&mut messages);
    if req.top_logprobs.is_some() && req.logprobs != Some(true) {
        return Err(ApiError::invalid_param(
            "top_logprobs",
            "'top_logprobs' needs 'logprobs': true",
        ));
    }
    let gen = validate(&req.sampling().with_defaults(defaults))?;
    refuse_unsupported(&req.other, gen.n)?;
    let tools = tools::parse(
        req.tools.as_ref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    let spec = match (
        spec_of(&req.structured)?,
        tools.as_ref().and_then(|t| t.forcing_grammar()),
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "a required tool call and a structured-output format cannot both be enforced",
            ));
        }
        (Some(sp), None) => Some(sp),
        (None, Some(g)) => Some((g, "tool_choice")),
        (None, None) => None,
    };
    Ok(CheckedChat {
        messages,
        gen,
        tools,
        spec,
        kwargs: template_kwargs(req.chat_template_kwargs.as_ref())?,
    })
}

/// One prompt of a completion request: text, or token ids in the model's vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// A completion request after every check that needs no model.
#[derive(Debug, Clone)]
pub struct CheckedCompletion {
    pub prompts: Vec<PromptInput>,
    /// Each choice's text starts with its prompt.
    pub echo: bool,
    pub gen: Generation,
    pub spec: Option<(ConstraintSpec, &'static str)>,
}

/// `prompt` as OpenAI defines it: a string, a list of strings, a list of token ids, or a
/// list of such lists.
fn prompts(v: &Value) -> Result<Vec<PromptInput>, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "prompt",
            "'prompt' must be a string, a list of strings, a list of token ids or a list of token-id lists",
        )
    };
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(bad)
            })
            .collect()
    };
    let list = match v {
        Value::String(t) => return Ok(vec![PromptInput::Text(t.clone())]),
        Value::Array(a) if a.is_empty() => {
            return Err(ApiError::invalid_param(
                "prompt",
                "'prompt' must not be empty",
            ))
        }
        Value::Array(a) if a[0].is_number() => return Ok(vec![PromptInput::Tokens(ids(a)?)]),
        Value::Array(a) => a,
        _ => return Err(bad()),
    };
    if list.len() > MAX_PROMPTS {
        return Err(ApiError::invalid_param(
            "prompt",
            format!(
                "'prompt' accepts at most {MAX_PROMPTS} prompts (got {})",
                list.len()
            ),
        ));
    }
    list.iter()
        .map(|p| match p {
            Value::String(t) => Ok(PromptInput::Text(t.clone())),
            Value::Array(a) => Ok(PromptInput::Tokens(ids(a)?)),
            _ => Err(bad()),
        })
        .collect()
}

/// The checks of `POST /v1/completions` before tokenisation.
pub fn check_completion(
    req: &CompletionRequest,
    defaults: &SamplingDefaults,
) -> Result<CheckedCompletion, ApiError> {
    let prompts = prompts(&req.prompt)?;
    let gen = validate(&req.sampling().with_defaults(defaults))?;
    refuse_unsupported(&req.other, gen.n)?;
    if prompts.len() * gen.n > MAX_N {
        return Err(ApiError::invalid_param(
            "n",
            format!(
                "a request may ask for at most {MAX_N} choices in all ({} prompts × n = {} asked)",
                prompts.len(),
                prompts.len() * gen.n
            ),
        ));
    }
    if req.echo && gen.params.logprobs.is_some() {
        return Err(ApiError::invalid_param(
            "echo",
            "'echo' with 'logprobs' would need the prompt's log probabilities, which this engine does not compute; drop one of them",
        ));
    }
    Ok(CheckedCompletion {
        prompts,
        echo: req.echo,
        gen,
        spec: spec_of(&req.structured)?,
    })
}

/// Tokenises prompt text without the tokenizer's post-processor, adding the bos token
/// when the model wants one and the text does not already start with it (chat templates
/// usually write it themselves).
pub fn encode(
    tok: &Tokenizer,
    info: &DecoderInfo,
    text: &str,
    add_special: bool,
    max_model_len: usize,
) -> Result<Vec<u32>, ApiError> {
    check_chars(text.chars().count(), max_model_len, "prompt")?;
    let enc = tok.encode(text, false).map_err(|e| {
        tracing::warn!(error = %e, "tokenisation failed");
        ApiError::invalid("The prompt could not be tokenised")
    })?;
    let mut ids = enc.get_ids().to_vec();
    if add_special && info.add_bos_token {
        if let Some(bos) = info.bos_token_id {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
    }
    Ok(ids)
}

/// Rejects a text that cannot fit the context whatever it tokenises to, before any work
/// is spent on it: more than `max_model_len × CHARS_PER_TOKEN` characters (no vocabulary
/// has tokens that long).
pub fn check_chars(chars: usize, max_model_len: usize, param: &str) -> Result<(), ApiError> {
    let cap = max_model_len.saturating_mul(CHARS_PER_TOKEN);
    if chars <= cap {
        return Ok(());
    }
    let mut e = ApiError::context_length(format!(
        "This model's maximum context length is {max_model_len} tokens; the {param} has more than {cap} characters, which cannot fit."
    ));
    e.param = Some(param.to_string());
    Err(e)
}

/// Characters in every string of a JSON value (message contents, tool arguments, …).
pub fn json_chars(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::String(s) => s.chars().count(),
        serde_json::Value::Array(a) => a.iter().map(json_chars).sum(),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| k.chars().count() + json_chars(v))
            .sum(),
        _ => 0,
    }
}

/// The completion budget of a prompt: `max_tokens` when given, else the rest of the
/// context. 400 `context_length_exceeded` when prompt + completion do not fit.
pub fn completion_budget(
    prompt_tokens: usize,
    max_tokens: Option<usize>,
    max_model_len: usize,
    param: &str,
) -> Result<usize, ApiError> {
    let err = |msg: String| {
        let mut e = ApiError::context_length(msg);
        e.param = Some(param.to_string());
        e
    };
    if prompt_tokens >= max_model_len {
        return Err(err(format!(
            "This model's maximum context length is {max_model_len} tokens; the prompt has {prompt_tokens} tokens, which leaves no room for a completion."
        )));
    }
    match max_tokens {
        None => Ok(max_model_len - prompt_tokens),
        Some(m) if prompt_tokens.saturating_add(m) > max_model_len => Err(err(format!(
            "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({prompt_tokens} in the prompt, {m} for the completion). Reduce the prompt or the completion length.",
            prompt_tokens.saturating_add(m)
        ))),
        Some(m) => Ok(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> SamplingFields {
        SamplingFields {
            max_tokens_param: "max_tokens",
            ..SamplingFields::default()
        }
    }

    fn param_of(f: SamplingFields) -> Option<String> {
        validate(&f).unwrap_err().param
    }

    #[test]
    fn out_of_range_values_name_their_parameter() {
        let p = |p: &str| Some(p.to_string());
        assert_eq!(
            param_of(SamplingFields {
                logprobs: Some(21),
                logprobs_param: "top_logprobs",
                ..fields()
            }),
            p("top_logprobs")
        );
        assert_eq!(
            param_of(SamplingFields {
                temperature: Some(2.5),
                ..fields()
            }),
            p("temperature")
        );
        assert_eq!(
            param_of(SamplingFields {
                temperature: Some(-0.1),
                ..fields()
            }),
            p("temperature")
        );
        assert_eq!(
            param_of(SamplingFields {
                top_p: Some(0.0),
                ..fields()
            }),
            p("top_p")
        );
        assert_eq!(
            param_of(SamplingFields {
                top_p: Some(1.1),
                ..fields()
            }),
            p("top_p")
        );
        assert_eq!(
            param_of(SamplingFields {
                top_k: Some(-2),
                ..fields()
            }),
            p("top_k")
        );
        assert_eq!(
            param_of(SamplingFields {
                presence_penalty: Some(2.1),
                ..fields()
            }),
            p("presence_penalty")
        );
        assert_eq!(
            param_of(SamplingFields {
                frequency_penalty: Some(-3.0),
                ..fields()
            }),
            p("frequency_penalty")
        );
        assert_eq!(
            param_of(SamplingFields {
                repetition_penalty: Some(0.0),
                ..fields()
            }),
            p("repetition_penalty")
        );
        assert_eq!(
            param_of(SamplingFields {
                n: Some(0),
                ..fields()
            }),
            p("n")
        );
        assert_eq!(
            param_of(SamplingFields {
                n: Some(MAX_N as i64 + 1),
                ..fields()
            }),
            p("n")
        );
        assert_eq!(
            param_of(SamplingFields {
                max_tokens: Some(0),
                ..fields()
            }),
            p("max_tokens")
        );
        assert_eq!(
            param_of(SamplingFields {
                max_tokens: Some(-1),
                max_tokens_param: "max_completion_tokens",
                ..fields()
            }),
            p("max_completion_tokens")
        );
        let five = StopField::Many((0..5).map(|i| i.to_string()).collect());
        assert_eq!(
            param_of(SamplingFields {
                stop: Some(five),
                ..fields()
            }),
            p("stop")
        );
    }

    #[test]
    fn valid_values_pass_through() {
        let g = validate(&SamplingFields {
            temperature: Some(0.0),
            top_k: Some(-1),
            top_p: Some(1.0),
            seed: Some(42),
            stop: Some(StopField::One("x".into())),
            max_tokens: Some(5),
            n: Some(3),
            ..fields()
        })
        .unwrap();
        assert_eq!(g.n, 3);
        assert_eq!(g.params.temperature, 0.0);
        assert_eq!(g.params.top_k, 0);
        assert_eq!(g.params.seed, Some(42));
        assert_eq!(g.stop, vec!["x".to_string()]);
        assert_eq!(g.max_tokens, Some(5));
    }

    #[test]
    fn prompts_take_every_openai_form() {
        use serde_json::json;
        let t = |s: &str| PromptInput::Text(s.into());
        assert_eq!(prompts(&json!("a")).unwrap(), vec![t("a")]);
        assert_eq!(prompts(&json!(["a", "b"])).unwrap(), vec![t("a"), t("b")]);
        assert_eq!(
            prompts(&json!([1, 2])).unwrap(),
            vec![PromptInput::Tokens(vec![1, 2])]
        );
        assert_eq!(
            prompts(&json!([[1], "c"])).unwrap(),
            vec![PromptInput::Tokens(vec![1]), t("c")]
        );
        for bad in [
            json!([]),
            json!(3),
            json!([1, "a"]),
            json!([-1]),
            json!([{}]),
            json!(null),
        ] {
            assert_eq!(
                prompts(&bad).unwrap_err().param.as_deref(),
                Some("prompt"),
                "{bad}"
            );
        }
        let many: Vec<String> = (0..=MAX_PROMPTS).map(|i| i.to_string()).collect();
        assert!(prompts(&json!(many)).is_err());
    }

    #[test]
    fn model_defaults_fill_only_what_the_request_left_unset() {
        let d = SamplingDefaults {
            temperature: Some(0.6),
            top_p: Some(0.95),
            top_k: Some(20),
            min_p: Some(0.05),
            repetition_penalty: Some(1.1),
        };
        let g = validate(&fields().with_defaults(&d)).unwrap();
        assert_eq!(
            (g.params.temperature, g.params.top_p, g.params.top_k),
            (0.6, 0.95, 20)
        );
        assert_eq!((g.params.min_p, g.params.repetition_penalty), (0.05, 1.1));
        let g = validate(
            &SamplingFields {
                temperature: Some(0.0),
                top_k: Some(-1),
                ..fields()
            }
            .with_defaults(&d),
        )
        .unwrap();
        assert_eq!((g.params.temperature, g.params.top_k), (0.0, 0));
        assert_eq!(g.params.top_p, 0.95);
    }

    #[test]
    fn context_budget() {
        assert_eq!(completion_budget(10, None, 100, "messages").unwrap(), 90);
        assert_eq!(
            completion_budget(10, Some(90), 100, "messages").unwrap(),
            90
        );
        let e = completion_budget(10, Some(91), 100, "messages").unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert_eq!(e.status.as_u16(), 400);
        assert!(completion_budget(100, None, 100, "prompt").is_err());
    }
}
