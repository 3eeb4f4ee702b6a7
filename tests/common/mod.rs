//! Shared driver for the decoder tests: runs several sequences through `DecoderModel::step`
//! on a schedule (chunked prefill while others decode) or each alone, with greedy decoding.

#![allow(dead_code)]

use trident::models::decoder::{DecoderModel, StepItem};

/// One sequence of a schedule.
pub struct Plan {
    pub prompt: Vec<u32>,
    /// Prefill chunk sizes (summing to the prompt length).
    pub chunks: Vec<usize>,
    /// Step at which the sequence joins the batch.
    pub start: usize,
    /// Tokens to generate greedily.
    pub gen: usize,
}

pub fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0 as u32
}

/// Greedy tokens and the logits each came from, per sequence.
pub type Outcome = Vec<(Vec<u32>, Vec<Vec<f32>>)>;

/// Runs all plans together, one `step` call per scheduling step.
pub fn run_batched(m: &DecoderModel, plans: &[Plan]) -> Outcome {
    let mut caches: Vec<_> = plans.iter().map(|_| m.new_sequence()).collect();
    let mut out: Outcome = plans.iter().map(|_| (Vec::new(), Vec::new())).collect();
    let mut next_chunk = vec![0usize; plans.len()];
    let mut fed = vec![0usize; plans.len()];
    let mut step = 0;
    let mut max_batch = 0;
    loop {
        let mut feeds: Vec<(usize, Vec<u32>, bool)> = Vec::new();
        for (i, p) in plans.iter().enumerate() {
            if step < p.start || out[i].0.len() >= p.gen {
                continue;
            }
            if next_chunk[i] < p.chunks.len() {
                let n = p.chunks[next_chunk[i]];
                let toks = p.prompt[fed[i]..fed[i] + n].to_vec();
                fed[i] += n;
                next_chunk[i] += 1;
                feeds.push((i, toks, next_chunk[i] == p.chunks.len()));
            } else {
                feeds.push((i, vec![*out[i].0.last().unwrap()], true));
            }
        }
        if feeds.is_empty() {
            if plans
                .iter()
                .enumerate()
                .all(|(i, p)| out[i].0.len() >= p.gen)
            {
                break;
            }
            step += 1;
            continue;
        }
        max_batch = max_batch.max(feeds.len());
        let mut refs: Vec<(usize, &Vec<u32>, bool)> =
            feeds.iter().map(|(i, t, l)| (*i, t, *l)).collect();
        refs.sort_by_key(|r| r.0);
        let mut cache_refs: Vec<Option<&mut _>> = caches.iter_mut().map(Some).collect();
        let mut items: Vec<StepItem> = refs
            .iter()
            .map(|(i, t, _)| StepItem {
                tokens: t,
                cache: cache_refs[*i].take().unwrap(),
            })
            .collect();
        let logits = m.step(&mut items).unwrap();
        for ((i, _, last), l) in refs.iter().zip(logits) {
            if *last {
                out[*i].0.push(argmax(&l));
                out[*i].1.push(l);
            }
        }
        step += 1;
    }
    assert!(
        max_batch >= 2 || plans.len() < 2,
        "the schedule never batched sequences"
    );
    out
}

/// Runs each plan alone with its whole prompt as one prefill chunk.
pub fn run_solo(m: &DecoderModel, plans: &[Plan]) -> Outcome {
    plans
        .iter()
        .map(|p| {
            let solo = Plan {
                prompt: p.prompt.clone(),
                chunks: vec![p.prompt.len()],
                start: 0,
                gen: p.gen,
            };
            run_batched(m, std::slice::from_ref(&solo)).remove(0)
        })
        .collect()
}

/// A schedule of three prompts: A prefills at once, B in chunks while A decodes, C joins late
/// with a long chunk while A and B decode.
pub fn three_plans(a: Vec<u32>, b: Vec<u32>, c: Vec<u32>, gen: usize) -> Vec<Plan> {
    let (lb, lc) = (b.len(), c.len());
    vec![
        Plan {
            chunks: vec![a.len()],
            prompt: a,
            start: 0,
            gen,
        },
        Plan {
            chunks: vec![lb / 2, lb - lb / 2],
            prompt: b,
            start: 1,
            gen,
        },
        Plan {
            chunks: vec![3, lc - 3],
            prompt: c,
            start: 2,
            gen,
        },
    ]
}

/// Asserts batched and solo runs chose the same tokens with close logits; returns the
/// largest logit difference.
pub fn assert_same(batched: &Outcome, solo: &Outcome, tol: f32) -> f32 {
    let mut worst = 0f32;
    for (i, (b, s)) in batched.iter().zip(solo).enumerate() {
        assert_eq!(b.0, s.0, "sequence {i}: batched tokens differ from solo");
        for (lb, ls) in b.1.iter().zip(&s.1) {
            let d = lb
                .iter()
                .zip(ls)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            worst = worst.max(d);
        }
    }
    assert!(worst <= tol, "batched logits differ from solo by {worst}");
    worst
}

/// Logits of `prompt` and then of each token of `forced` fed one at a time.
pub fn forced_logits(m: &DecoderModel, prompt: &[u32], forced: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = m.new_sequence();
    let mut out = Vec::new();
    for toks in std::iter::once(prompt).chain(forced.chunks(1)) {
        let item = StepItem {
            tokens: toks,
            cache: &mut cache,
        };
        out.extend(m.step(&mut [item]).unwrap());
    }
    out
}

/// `text` in the model's tokens (no special tokens added).
pub fn encode(m: &DecoderModel, text: &str) -> Vec<u32> {
    m.tokenizer()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec()
}

/// [`three_plans`] on a short, a middling and a chat-formatted longer prompt, 8 tokens each:
/// the schedule the path-equivalence tests compare.
pub fn mixed_plans(m: &DecoderModel) -> Vec<Plan> {
    three_plans(
        encode(m, "Hi"),
        encode(m, "The quick brown fox jumps"),
        encode(
            m,
            "<|im_start|>user\nA much longer prompt, with punctuation and numbers 12345!<|im_end|>\n",
        ),
        8,
    )
}
