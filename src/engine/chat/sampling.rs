//! Token sampling: penalties (presence/frequency as OpenAI defines them, repetition as
//! Hugging Face does), then greedy or temperature sampling with top-k / top-p, drawn from a
//! per-sequence RNG so a fixed `seed` gives the same text whatever else is batched.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Validated sampling parameters of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// In (0, 1]; 1 disables nucleus filtering.
    pub top_p: f32,
    /// 0 (or -1 at the API) disables top-k.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// 1 disables it.
    pub repetition_penalty: f32,
    /// 0 disables it; else tokens below `min_p` × the top token's probability are dropped.
    pub min_p: f32,
    /// Added to the logits of these tokens before anything else but the grammar.
    pub logit_bias: Vec<(u32, f32)>,
    /// End-of-sequence tokens are suppressed until this many tokens were generated.
    pub min_tokens: usize,
    /// vLLM's `stop_token_ids`: tokens that end generation like end-of-sequence.
    pub stop_token_ids: Vec<u32>,
    /// vLLM's `include_stop_str_in_output`: a matched stop string stays in the text.
    pub include_stop_str: bool,
    /// `Some(k)`: report each token's log probability and its `k` likeliest alternatives.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            min_p: 0.0,
            logit_bias: Vec::new(),
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            include_stop_str: false,
            logprobs: None,
        }
    }
}

/// The sampler of one sequence: its parameters, RNG and counts of generated tokens.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    generated: HashMap<u32, u32>,
    /// Prompt tokens, for the repetition penalty.
    seen_prompt: Vec<u32>,
    /// Structured output: tokens the grammar forbids are masked before anything else.
    constraint: Option<super::constraint::Constraint>,
    /// End-of-sequence ids suppressed while fewer than `min_tokens` were generated.
    eos: Vec<u32>,
    count: usize,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let mut seen_prompt = if params.repetition_penalty != 1.0 {
            prompt.to_vec()
        } else {
            Vec::new()
        };
        seen_prompt.sort_unstable();
        seen_prompt.dedup();
        Sampler {
            params,
            rng,
            generated: HashMap::new(),
            seen_prompt,
            constraint: None,
            eos: Vec::new(),
            count: 0,
        }
    }

    /// The end-of-sequence ids `min_tokens` holds back (with the request's stop tokens).
    pub fn with_eos(mut self, eos: &[u32]) -> Self {
        self.eos = eos.to_vec();
        self.eos.extend_from_slice(&self.params.stop_token_ids);
        self
    }

    /// Adds a structured-output constraint.
    pub fn with_constraint(mut self, constraint: Option<super::constraint::Constraint>) -> Self {
        self.constraint = constraint;
        self
    }

    /// The sampler of sibling `i` (≥ 1) of an `n` > 1 request, before anything was
    /// generated: the same state with its own random stream (a set seed moves by `i`, so
    /// the choices differ and stay reproducible).
    pub fn fork(&self, i: u64) -> Sampler {
        let mut params = self.params.clone();
        params.seed = params.seed.map(|s| s.wrapping_add(i));
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Sampler {
            params,
            rng,
            generated: self.generated.clone(),
            seen_prompt: self.seen_prompt.clone(),
            constraint: self.constraint.as_ref().map(|c| c.fork()),
            eos: self.eos.clone(),
            count: self.count,
        }
    }

    /// Whether a grammar constrains this sequence.
    pub fn constrained(&self) -> bool {
        self.constraint.is_some()
    }

    /// Computes the grammar mask of the next token ahead of [`Sampler::sample`] (see
    /// [`super::constraint::Constraint::prepare`]).
    pub fn prepare(&mut self) {
        if let Some(c) = &mut self.constraint {
            c.prepare();
        }
    }

    /// The parameters, as the sampler uses them.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (modified in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        if let Some(c) = &mut self.constraint {
            c.mask(logits);
        }
        for &(t, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += bias;
            }
        }
        if self.count < self.params.min_tokens {
            self.suppress_eos(logits);
        }
        self.count += 1;
        self.apply_penalties(logits);
        let tok = if self.params.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        *self.generated.entry(tok).or_insert(0) += 1;
        if let Some(c) = &mut self.constraint {
            c.advance(tok);
        }
        tok
    }

    /// Masks the end-of-sequence tokens, unless nothing else is allowed (a grammar that is
    /// complete may only end).
    fn suppress_eos(&self, logits: &mut [f32]) {
        let other = logits
            .iter()
            .enumerate()
            .any(|(i, l)| l.is_finite() && !self.eos.contains(&(i as u32)));
        if !other {
            return;
        }
        for &e in &self.eos {
            if let Some(l) = logits.get_mut(e as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty;
            let seen = self
                .seen_prompt
                .iter()
                .copied()
                .chain(self.generated.keys().copied());
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / r } else { *l * r };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.generated {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        if p.top_k > 0 && p.top_k < cand.len() {
            // Keep the k best (ties by lower id), in any order, before sorting them.
            cand.select_nth_unstable_by(p.top_k - 1, |a, b| {
                b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
            });
            cand.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            // The nucleus needs the candidates in descending order.
            cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<f32> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if p.min_p > 0.0 {
            // Order is kept (top_p below needs it) and the rest renormalised.
            let floor = p.min_p * probs.iter().copied().fold(0.0, f32::max);
            let keep: Vec<bool> = probs.iter().map(|&q| q >= floor).collect();
            let mut k = keep.iter();
            cand.retain(|_| *k.next().unwrap_or(&true));
            probs.retain(|&q| q >= floor);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= total);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            cand.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut x = self.rng.gen::<f32>() * total;
        for (i, q) in probs.iter().enumerate() {
            if x < *q {
                return cand[i].0;
            }
            x -= q;
        }
        cand[cand.len() - 1].0
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            seed: Some(7),
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(params(0.0), &[]);
        assert_eq!(s.sample(&mut [0.1, 2.0, -1.0, 1.9]), 1);
    }

    #[test]
    fn same_seed_same_draws_other_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(
                SamplingParams {
                    seed: Some(seed),
                    ..params(1.0)
                },
                &[],
            );
            (0..40)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_nucleus() {
        let logits = [0.0f32, 5.0, 4.9, -3.0];
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 1,
                ..params(1.5)
            },
            &[],
        );
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone()), 1);
        }
        // Tokens 1 and 2 hold ~99.9% of the mass: top_p 0.9 never draws 0 or 3.
        let mut s = Sampler::new(
            SamplingParams {
                top_p: 0.9,
                ..params(1.0)
            },
            &[],
        );
        let mut seen = [0usize; 4];
        for _ in 0..200 {
            seen[s.sample(&mut logits.clone()) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[3], 0);
        assert!(seen[1] > 0 && seen[2] > 0, "{seen:?}");
    }

    #[test]
    fn min_p_drops_the_unlikely_tail() {
        // Probabilities ~0.64, 0.24, 0.09, 0.03: min_p 0.2 keeps the first two only.
        let logits = [3.0f32, 2.0, 1.0, -0.1];
        let mut s = Sampler::new(
            SamplingParams {
                min_p: 0.2,
                seed: Some(7),
                ..params(1.0)
            },
            &[],
        );
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[s.sample(&mut logits.clone()) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
    }

    #[test]
    fn logit_bias_and_min_tokens_steer_greedy_choice() {
        let logits = [1.0f32, 5.0, 2.0];
        let mut s = Sampler::new(
            SamplingParams {
                logit_bias: vec![(2, 10.0)],
                ..params(0.0)
            },
            &[],
        );
        assert_eq!(s.sample(&mut logits.clone()), 2);
        let mut s = Sampler::new(
            SamplingParams {
                logit_bias: vec![(1, -100.0)],
                ..params(0.0)
            },
            &[],
        );
        assert_eq!(s.sample(&mut logits.clone()), 2);
        // Token 1 is end-of-sequence: held back for the first two tokens, then allowed.
        let mut s = Sampler::new(
            SamplingParams {
                min_tokens: 2,
                ..params(0.0)
            },
            &[],
        )
        .with_eos(&[1]);
        let picks: Vec<u32> = (0..3).map(|_| s.sample(&mut logits.clone())).collect();
        assert_eq!(picks, [2, 2, 1]);
        // When only end-of-sequence is allowed (a finished grammar), it is not suppressed.
        let mut only_eos = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
        let mut s = Sampler::new(
            SamplingParams {
                min_tokens: 5,
                ..params(0.0)
            },
            &[],
        )
        .with_eos(&[1]);
        assert_eq!(s.sample(&mut only_eos), 1);
    }

    #[test]
    fn penalties_push_repeated_tokens_down() {
        // Frequency penalty: after token 0 was drawn twice it loses to token 1.
        let mut s = Sampler::new(
            SamplingParams {
                frequency_penalty: 0.6,
                ..params(0.0)
            },
            &[],
        );
        let logits = [1.0f32, 0.0];
        assert_eq!(s.sample(&mut logits.clone()), 0);
        assert_eq!(s.sample(&mut logits.clone()), 0);
        assert_eq!(s.sample(&mut logits.clone()), 1);
        // Presence penalty: one occurrence is enough.
        let mut s = Sampler::new(
            SamplingParams {
                presence_penalty: 1.5,
                ..params(0.0)
            },
            &[],
        );
        assert_eq!(s.sample(&mut logits.clone()), 0);
        assert_eq!(s.sample(&mut logits.clone()), 1);
        // Repetition penalty covers prompt tokens: 2.0/3 < 1.0.
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 3.0,
                ..params(0.0)
            },
            &[0],
        );
        assert_eq!(s.sample(&mut [2.0, 1.0]), 1);
    }
}
