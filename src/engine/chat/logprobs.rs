//! Log probabilities of generated tokens (`logprobs`, `top_logprobs`): computed on the model
//! thread from the model's raw logits of the step (before the grammar mask, biases,
//! penalties and temperature, as vLLM reports them by default), then shaped as chat
//! (`{"content": [{token, logprob, bytes, top_logprobs}]}`) or legacy completion
//! (`{tokens, token_logprobs, top_logprobs, text_offset}`) objects.

use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

/// Most alternatives per token a request may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One candidate token: its text (as the tokenizer decodes it alone) and log probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub token: String,
    pub logprob: f32,
}

/// The chosen token of one step and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub chosen: Candidate,
    /// Most likely first; `top_logprobs` long.
    pub top: Vec<Candidate>,
}

/// The `top` most likely token ids of `logits`, most likely first (ties: lower id first).
fn top_ids(logits: &[f32], top: usize) -> Vec<u32> {
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(top + 1);
    if top == 0 {
        return Vec::new();
    }
    for (i, &l) in logits.iter().enumerate() {
        if best.len() == top && l <= best[top - 1].0 {
            continue;
        }
        let at = best.partition_point(|&(b, _)| b >= l);
        best.insert(at, (l, i as u32));
        best.truncate(top);
    }
    best.into_iter().map(|(_, i)| i).collect()
}

/// Log-softmax of `raw` at `chosen` and at the `top` most likely tokens.
pub fn compute(raw: &[f32], chosen: u32, top: usize, tok: &Tokenizer) -> TokenLogprob {
    let max = raw.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = raw.iter().map(|&l| f64::from(l - max).exp()).sum();
    let norm = max + sum.ln() as f32;
    let cand = |id: u32| Candidate {
        token: tok.decode(&[id], false).unwrap_or_default(),
        logprob: raw.get(id as usize).map_or(f32::NEG_INFINITY, |l| l - norm),
    };
    TokenLogprob {
        chosen: cand(chosen),
        top: top_ids(raw, top).into_iter().map(cand).collect(),
    }
}

/// A JSON number for a log probability (`-9999.0` for an impossible token, as OpenAI sends
/// it, since JSON has no infinity).
fn lp(x: f32) -> Value {
    json!(if x.is_finite() { x } else { -9999.0 })
}

fn entry(c: &Candidate) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("token".into(), json!(c.token));
    m.insert("logprob".into(), lp(c.logprob));
    m.insert("bytes".into(), json!(c.token.as_bytes()));
    m
}

/// The chat shape: `{"content": [...], "refusal": null}`.
pub fn chat_json(items: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = items
        .iter()
        .map(|t| {
            let mut m = entry(&t.chosen);
            let top: Vec<Value> = t.top.iter().map(|c| Value::Object(entry(c))).collect();
            m.insert("top_logprobs".into(), Value::Array(top));
            Value::Object(m)
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The legacy completion shape; `offset` is the text offset of the first token.
pub fn completion_json(items: &[TokenLogprob], offset: usize) -> Value {
    let mut at = offset;
    let mut offsets = Vec::with_capacity(items.len());
    for t in items {
        offsets.push(at);
        at += t.chosen.token.len();
    }
    let top: Vec<Value> = items
        .iter()
        .map(|t| {
            let m: Map<String, Value> = t
                .top
                .iter()
                .map(|c| (c.token.clone(), lp(c.logprob)))
                .collect();
            Value::Object(m)
        })
        .collect();
    json!({
        "tokens": items.iter().map(|t| t.chosen.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": items.iter().map(|t| lp(t.chosen.logprob)).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

/// The text length the tokens of `items` cover (for the next chunk's offsets).
pub fn text_len(items: &[TokenLogprob]) -> usize {
    items.iter().map(|t| t.chosen.token.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_ids_are_the_largest_in_order() {
        let l = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(top_ids(&l, 3), [1, 3, 4]);
        assert_eq!(top_ids(&l, 0), Vec::<u32>::new());
        assert_eq!(top_ids(&l, 9).len(), 5);
    }

    #[test]
    fn shapes_carry_every_token() {
        let c = |t: &str, l: f32| Candidate {
            token: t.into(),
            logprob: l,
        };
        let items = vec![
            TokenLogprob {
                chosen: c("Hi", -0.1),
                top: vec![c("Hi", -0.1), c("Yo", -2.5)],
            },
            TokenLogprob {
                chosen: c("!", f32::NEG_INFINITY),
                top: vec![],
            },
        ];
        let chat = chat_json(&items);
        assert_eq!(chat["content"][0]["token"], "Hi");
        assert_eq!(chat["content"][0]["bytes"], json!([72, 105]));
        assert_eq!(chat["content"][0]["top_logprobs"][1]["token"], "Yo");
        assert_eq!(chat["content"][1]["logprob"], json!(-9999.0));
        let legacy = completion_json(&items, 5);
        assert_eq!(legacy["tokens"], json!(["Hi", "!"]));
        assert_eq!(legacy["text_offset"], json!([5, 7]));
        assert!((legacy["top_logprobs"][0]["Yo"].as_f64().unwrap() + 2.5).abs() < 1e-6);
        assert_eq!(text_len(&items), 3);
    }
}
