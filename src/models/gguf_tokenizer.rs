//! Rebuilds a `tokenizers::Tokenizer` from the `tokenizer.ggml.*` metadata of a GGUF file,
//! for checkpoints that ship no `tokenizer.json`.
//!
//! * `gpt2` (byte-level BPE): vocabulary, merges and a pre-tokenizer split chosen from
//!   `tokenizer.ggml.pre` the way llama.cpp chooses its regexes (`smollm`, `llama-bpe`,
//!   `qwen2`, plain `gpt2` as the default);
//! * `llama` (SentencePiece BPE): vocabulary with scores; merges are derived from the scores,
//!   `▁` stands for spaces and `<0xNN>` tokens give byte fallback.
//!
//! Control (type 3) and user-defined (type 4) tokens become added tokens, so chat markers such
//! as `<|im_start|>` are matched whole in text.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

use super::ModelError;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

fn strings(ct: &Content, key: &str) -> Result<Vec<String>, ModelError> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| tok_err(format!("GGUF has no `{key}`")))?;
    let arr = v.to_vec().map_err(tok_err)?;
    arr.iter()
        .map(|s| s.to_string().cloned().map_err(tok_err))
        .collect()
}

fn ints(ct: &Content, key: &str) -> Option<Vec<i64>> {
    let arr = ct.metadata.get(key)?.to_vec().ok()?;
    arr.iter()
        .map(|v| match v {
            Value::I32(x) => Some(*x as i64),
            Value::U32(x) => Some(*x as i64),
            Value::I64(x) => Some(*x),
            Value::U64(x) => Some(*x as i64),
            Value::U8(x) => Some(*x as i64),
            Value::I8(x) => Some(*x as i64),
            Value::U16(x) => Some(*x as i64),
            Value::I16(x) => Some(*x as i64),
            _ => None,
        })
        .collect()
}

fn floats(ct: &Content, key: &str) -> Option<Vec<f32>> {
    let arr = ct.metadata.get(key)?.to_vec().ok()?;
    arr.iter().map(|v| v.to_f32().ok()).collect()
}

fn split(re: &str) -> Result<PreTokenizerWrapper, ModelError> {
    Ok(Split::new(
        SplitPattern::Regex(re.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?
    .into())
}

/// The pre-tokenizer llama.cpp applies for a `tokenizer.ggml.pre` value (byte-level models).
fn byte_level_pre(pre: &str) -> Result<PreTokenizerWrapper, ModelError> {
    let mut parts = match pre {
        "llama-bpe" | "llama3" | "smaug-bpe" | "falcon3" => vec![split(LLAMA3)?],
        "qwen2" | "qwen2.5" | "qwen-2.5" | "deepseek-r1-qwen" => vec![split(QWEN2)?],
        // Digits are split one by one before the GPT-2 regex.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" => {
            vec![split(r"\p{N}")?, split(GPT2)?]
        }
        _ => vec![split(GPT2)?],
    };
    parts.push(ByteLevel::new(false, false, false).into());
    Ok(Sequence::new(parts).into())
}

/// Builds the tokenizer described by the GGUF metadata.
pub fn from_gguf(ct: &Content) -> Result<Tokenizer, ModelError> {
    let model = ct
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| tok_err("GGUF has no `tokenizer.ggml.model`"))?
        .clone();
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let types = ints(ct, "tokenizer.ggml.token_type").unwrap_or_default();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut tokenizer = match model.as_str() {
        "gpt2" => {
            let merges = strings(ct, "tokenizer.ggml.merges")?
                .into_iter()
                .map(|m| {
                    // The separator is the first space after the first character.
                    let cut = m
                        .char_indices()
                        .skip(1)
                        .find(|(_, c)| *c == ' ')
                        .map(|(i, _)| i);
                    match cut {
                        Some(i) => Ok((m[..i].to_string(), m[i + 1..].to_string())),
                        None => Err(tok_err(format!("malformed merge `{m}`"))),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let pre = ct
                .metadata
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.to_string().ok())
                .cloned()
                .unwrap_or_default();
            let ignore_merges = matches!(pre.as_str(), "llama-bpe" | "llama3");
            let bpe = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .ignore_merges(ignore_merges)
                .build()
                .map_err(tok_err)?;
            let mut t = Tokenizer::new(bpe);
            t.with_pre_tokenizer(Some(byte_level_pre(&pre)?));
            t.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
            t
        }
        "llama" => spm(ct, &tokens, vocab)?,
        other => {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer model `{other}`"
            )))
        }
    };
    let of_type = |want: i64| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| **ty == want)
            .map(|(t, _)| AddedToken::from(t.clone(), want == 3).normalized(false))
            .collect()
    };
    tokenizer.add_special_tokens(of_type(3)).map_err(tok_err)?;
    tokenizer.add_tokens(of_type(4)).map_err(tok_err)?;
    Ok(tokenizer)
}

/// SentencePiece-style BPE: merges derived from the scores of the merged pieces.
fn spm(ct: &Content, tokens: &[String], vocab: Vocab) -> Result<Tokenizer, ModelError> {
    let scores = floats(ct, "tokenizer.ggml.scores").unwrap_or_else(|| vec![0.0; tokens.len()]);
    let mut merges: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        for (i, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(i);
            if vocab.contains_key(a) && vocab.contains_key(b) {
                merges.push((
                    scores.get(id).copied().unwrap_or(0.0),
                    id as u32,
                    a.to_string(),
                    b.to_string(),
                ));
            }
        }
    }
    // Higher score first; ties by id, as SentencePiece prefers earlier pieces.
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges: Vec<(String, String)> = merges.into_iter().map(|(_, _, a, b)| (a, b)).collect();
    let unk = ct
        .metadata
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|i| tokens.get(i as usize).cloned());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u);
    }
    let mut t = Tokenizer::new(builder.build().map_err(tok_err)?);
    let add_space = ct
        .metadata
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if add_space {
        norm.push(Prepend::new("▁".into()).into());
    }
    norm.push(Replace::new(" ", "▁").map_err(tok_err)?.into());
    t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norm)))
        .map_err(tok_err)?;
    let mut dec: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(tok_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    t.with_decoder(Some(DecoderSequence::new(dec)));
    Ok(t)
}
