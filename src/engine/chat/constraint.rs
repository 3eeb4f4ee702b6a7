//! Structured output: a request's `response_format` (`json_object`, `json_schema`) or vLLM's
//! `guided_json` / `guided_regex` / `guided_choice` / `structured_outputs`, compiled by the
//! `llguidance` grammar engine into a per-sequence token mask that the sampler applies before
//! it draws, so the output always matches.
//!
//! The tokenizer's trie is built once per engine, on the first constrained request
//! ([`Grammars`]); a grammar is compiled on the handler's blocking thread, never on the model
//! thread, and invalid schemas are a 400 naming the parameter. The model thread only masks and
//! advances ([`Constraint`]).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use tokenizers::Tokenizer;
use toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

/// What a request asked the output to match.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON Schema.
    JsonSchema(Value),
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect).
    Lark(String),
}

impl ConstraintSpec {
    fn grammar(&self) -> TopLevelGrammar {
        match self {
            ConstraintSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(serde_json::json!({"type": "object"}))
            }
            ConstraintSpec::JsonSchema(s) => TopLevelGrammar::from_json_schema(s.clone()),
            ConstraintSpec::Regex(r) => TopLevelGrammar::from_regex(r),
            ConstraintSpec::Choice(c) => {
                let alts: Vec<String> = c
                    .iter()
                    .map(|s| serde_json::to_string(s).expect("a string serialises. This is a bug."))
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
            ConstraintSpec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }
}

/// The tokenizer as the grammar engine sees it: every token's bytes, plus re-tokenisation.
struct Env {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        let text = String::from_utf8_lossy(s);
        self.tokenizer
            .encode(text.as_ref(), false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }
}

/// One engine's grammar compiler.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// Builds the token trie of `tokenizer` for a model with `vocab_size` logits.
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize, eos: u32) -> Result<Grammars, String> {
        let json: Value =
            serde_json::from_str(&tokenizer.to_string(false).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let mut words =
            llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| e.to_string())?;
        let n = vocab_size.max(words.len());
        words.resize(n, Vec::new());
        let info = TokRxInfo {
            vocab_size: n as u32,
            tok_eos: eos,
            tok_bos: None,
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        let env: TokEnv = Arc::new(Env {
            trie: TokTrie::from(&info, &words),
            tokenizer,
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// Compiles a constraint; the error text is the grammar engine's, for a 400.
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<Constraint, String> {
        let parser = self
            .factory
            .create_parser(spec.grammar())
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Constraint {
            matcher,
            ready: None,
        })
    }
}

/// One sequence's live constraint.
pub struct Constraint {
    matcher: Matcher,
    /// The mask of the next token, computed ahead by [`Constraint::prepare`] (beside the
    /// forward pass) and taken by [`Constraint::mask`].
    ready: Option<Result<SimpleVob, String>>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraint")
    }
}

impl Constraint {
    /// Sets every logit the grammar does not allow next to -inf. Once the grammar is complete
    /// only end-of-sequence is allowed. A matcher in error allows only end-of-sequence too, so
    /// the sequence ends rather than producing unconstrained text.
    pub fn mask(&mut self, logits: &mut [f32]) {
        let mask = match self.ready.take() {
            Some(m) => m,
            None => self.compute(),
        };
        match mask {
            Ok(mask) => {
                for (i, l) in logits.iter_mut().enumerate() {
                    if !mask.is_allowed(i as u32) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "structured output: the grammar engine failed; ending the sequence");
                let eos = self.eos();
                for (i, l) in logits.iter_mut().enumerate() {
                    if i as u32 != eos {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
        }
    }

    fn eos(&self) -> u32 {
        self.matcher
            .tok_env()
            .map(|e| e.tok_trie().eos_token())
            .unwrap_or(0)
    }

    /// An independent copy in the same state (a sibling sequence of `n` > 1).
    pub fn fork(&self) -> Constraint {
        Constraint {
            matcher: self.matcher.deep_clone(),
            ready: self.ready.clone(),
        }
    }

    /// Computes the next token's mask now, so that [`Constraint::mask`] only applies it. The
    /// scheduler calls this on another thread while the forward pass runs: the grammar's work
    /// then costs no time on the model thread.
    pub fn prepare(&mut self) {
        if self.ready.is_none() {
            self.ready = Some(self.compute());
        }
    }

    fn compute(&mut self) -> Result<SimpleVob, String> {
        self.matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())
    }

    /// Records the sampled token.
    pub fn advance(&mut self, token: u32) {
        self.ready = None;
        if let Err(e) = self.matcher.consume_token(token) {
            tracing::warn!(error = %e, token, "structured output: token rejected by the grammar");
        }
    }
}

/// Reads the structured-output fields of a request: `None` for free text, else the spec and
/// the parameter it came from (for error messages). Setting more than one is a 400.
pub fn spec_of(
    f: &crate::api::types::completions::StructuredFields,
) -> Result<Option<(ConstraintSpec, &'static str)>, crate::api::ApiError> {
    use crate::api::ApiError;
    let bad = |param: &str, msg: &str| ApiError::invalid_param(param, msg);
    let present = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    let mut found: Vec<(ConstraintSpec, &'static str)> = Vec::new();
    if let Some(rf) = f.response_format.as_ref().filter(|v| !v.is_null()) {
        match rf.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => found.push((ConstraintSpec::JsonObject, "response_format")),
            Some("json_schema") => {
                let schema = rf
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .filter(|s| s.is_object() || s.is_boolean())
                    .ok_or_else(|| {
                        bad(
                            "response_format",
                            "'response_format.json_schema.schema' must be a JSON Schema object",
                        )
                    })?;
                found.push((
                    ConstraintSpec::JsonSchema(schema.clone()),
                    "response_format",
                ));
            }
            _ => {
                return Err(bad(
                    "response_format",
                    "'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                ))
            }
        }
    }
    if present(&f.guided_json) {
        found.push((
            schema_value(f.guided_json.as_ref(), "guided_json")?,
            "guided_json",
        ));
    }
    if present(&f.guided_regex) {
        found.push((
            regex_value(f.guided_regex.as_ref(), "guided_regex")?,
            "guided_regex",
        ));
    }
    if present(&f.guided_choice) {
        found.push((
            choice_value(f.guided_choice.as_ref(), "guided_choice")?,
            "guided_choice",
        ));
    }
    if present(&f.guided_grammar) {
        found.push((
            lark_value(f.guided_grammar.as_ref(), "guided_grammar")?,
            "guided_grammar",
        ));
    }
    if let Some(so) = f.structured_outputs.as_ref().filter(|v| !v.is_null()) {
        let p = "structured_outputs";
        let obj = so
            .as_object()
            .ok_or_else(|| bad(p, "'structured_outputs' must be an object"))?;
        let spec = match (
            obj.get("json"),
            obj.get("regex"),
            obj.get("choice"),
            obj.get("grammar"),
        ) {
            (Some(j), None, None, None) => schema_value(Some(j), p)?,
            (None, Some(r), None, None) => regex_value(Some(r), p)?,
            (None, None, Some(c), None) => choice_value(Some(c), p)?,
            (None, None, None, Some(g)) => lark_value(Some(g), p)?,
            _ => {
                return Err(bad(
                    p,
                    "'structured_outputs' must set exactly one of json, regex, choice, grammar",
                ))
            }
        };
        found.push((spec, p));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(_, p)| *p).collect();
        return Err(bad(
            names[1],
            &format!(
                "only one structured-output parameter may be set, got {}",
                names.join(", ")
            ),
        ));
    }
    Ok(found.pop())
}

fn schema_value(
    v: Option<&Value>,
    param: &'static str,
) -> Result<ConstraintSpec, crate::api::ApiError> {
    match v {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
            .map(ConstraintSpec::JsonSchema)
            .ok_or_else(|| {
                crate::api::ApiError::invalid_param(
                    param,
                    format!("'{param}' is not a JSON Schema"),
                )
            }),
        Some(o @ Value::Object(_)) => Ok(ConstraintSpec::JsonSchema(o.clone())),
        _ => Err(crate::api::ApiError::invalid_param(
            param,
            format!("'{param}' must be a JSON Schema object"),
        )),
    }
}

fn regex_value(
    v: Option<&Value>,
    param: &'static str,
) -> Result<ConstraintSpec, crate::api::ApiError> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(ConstraintSpec::Regex(s.clone())),
        _ => Err(crate::api::ApiError::invalid_param(
            param,
            format!("'{param}' must be a non-empty regular expression"),
        )),
    }
}

fn lark_value(
    v: Option<&Value>,
    param: &'static str,
) -> Result<ConstraintSpec, crate::api::ApiError> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(ConstraintSpec::Lark(s.clone())),
        _ => Err(crate::api::ApiError::invalid_param(
            param,
            format!("'{param}' must be a non-empty grammar"),
        )),
    }
}

fn choice_value(
    v: Option<&Value>,
    param: &'static str,
) -> Result<ConstraintSpec, crate::api::ApiError> {
    let list: Option<Vec<String>> = v
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect());
    match list {
        Some(l) if !l.is_empty() && l.iter().all(|s| !s.is_empty()) => {
            Ok(ConstraintSpec::Choice(l))
        }
        _ => Err(crate::api::ApiError::invalid_param(
            param,
            format!("'{param}' must be a non-empty list of non-empty strings"),
        )),
    }
}
