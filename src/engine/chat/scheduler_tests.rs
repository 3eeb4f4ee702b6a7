//! Scheduler tests with the fake decoder (no tokio runtime, no weights).

use std::time::Instant;

use tokio::sync::mpsc;

use super::*;
use crate::engine::chat::sampling::SamplingParams;
use crate::engine::chat::testutil::{mix, FakeDecoder, EOS, E_ACUTE};

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

pub(super) fn request(prompt: Vec<u32>, max_tokens: usize) -> (GenRequest, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(1024);
    let req = GenRequest {
        prompt,
        params: greedy(),
        stop: Vec::new(),
        max_tokens,
        ignore_eos: false,
        events: tx,
        enqueued: Instant::now(),
        constraint: None,
        siblings: Vec::new(),
    };
    (req, rx)
}

/// Limits with the prefix cache off (its own tests turn it on).
fn cfg(max_num_seqs: usize, max_batch_tokens: usize, kv: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_batch_tokens,
        decode_prefill_tokens: max_batch_tokens,
        kv_budget_tokens: kv,
        prefix_block_tokens: 0,
    }
}

/// Collects a finished stream: (text, finish reason, completion tokens).
pub(super) fn collect(rx: &mut mpsc::Receiver<Event>) -> Option<(String, FinishReason, usize)> {
    let mut text = String::new();
    while let Ok(ev) = rx.try_recv() {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Logprob(_) => {}
            Event::Finished {
                reason,
                completion_tokens,
                ..
            } => return Some((text, reason, completion_tokens)),
            Event::Error(e) => panic!("error event: {e}"),
        }
    }
    None
}

pub(super) fn run_to_end(s: &mut Scheduler<FakeDecoder>, m: &FakeDecoder) -> usize {
    let mut steps = 0;
    while !s.is_idle() {
        s.step(m);
        steps += 1;
        assert!(steps < 10_000, "scheduler does not terminate");
    }
    steps
}

pub(super) fn solo(prompt: Vec<u32>, max_tokens: usize) -> (String, FinishReason, usize) {
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(cfg(4, 512, 10_000));
    let (req, mut rx) = request(prompt, max_tokens);
    s.add(req);
    run_to_end(&mut s, &m);
    collect(&mut rx).expect("finished")
}

#[test]
fn batched_and_chunked_output_equals_solo_output() {
    let prompts: Vec<Vec<u32>> = vec![
        (0..11).map(|i| i % 5).collect(),
        vec![3, 1],
        (0..7).map(|i| (i * 3) % 5).collect(),
    ];
    let alone: Vec<_> = prompts.iter().map(|p| solo(p.clone(), 9)).collect();
    let m = FakeDecoder::new(mix);
    // A small token budget forces chunked prefill while others decode.
    let mut s = Scheduler::new(cfg(3, 4, 10_000));
    let mut rxs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (req, rx) = request(p.clone(), 9);
        s.add(req);
        rxs.push(rx);
        // Later requests arrive while earlier ones are already running.
        for _ in 0..i * 2 {
            s.step(&m);
        }
    }
    run_to_end(&mut s, &m);
    for (rx, want) in rxs.iter_mut().zip(&alone) {
        assert_eq!(&collect(rx).expect("finished"), want);
    }
    let steps = m.steps.borrow();
    assert!(steps.iter().all(|st| st.iter().sum::<usize>() <= 4));
    assert!(
        steps.iter().any(|st| st.len() == 3),
        "never batched all three"
    );
}

#[test]
fn new_sequence_joins_between_decode_steps_and_running_streams_keep_flowing() {
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(cfg(4, 6, 10_000));
    let (a, mut rx_a) = request(vec![1, 2], 40);
    s.add(a);
    for _ in 0..3 {
        s.step(&m);
    }
    let (b, mut rx_b) = request((0..20).map(|i| i % 5).collect(), 2);
    s.add(b);
    let before = m.steps.borrow().len();
    // While B's 20-token prompt is prefilled in chunks of ≤ 5, A decodes one token per step.
    for _ in 0..4 {
        let st = s.step(&m);
        assert_eq!(st.batch_seqs, 2);
        assert!(st.batch_tokens <= 6);
    }
    let steps = m.steps.borrow()[before..].to_vec();
    assert_eq!(steps, vec![vec![1, 5]; 4]);
    run_to_end(&mut s, &m);
    assert_eq!(collect(&mut rx_b).expect("b").2, 2);
    assert_eq!(collect(&mut rx_a).expect("a").2, 40);
}

#[test]
fn max_num_seqs_and_kv_budget_bound_the_running_set() {
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(cfg(2, 64, 10_000));
    let mut rxs = Vec::new();
    for _ in 0..5 {
        let (r, rx) = request(vec![1, 2, 3], 5);
        s.add(r);
        rxs.push(rx);
    }
    let st = s.step(&m);
    assert_eq!((st.running, st.waiting), (2, 3));
    // Held back by max_num_seqs, not by the KV budget.
    assert_eq!(st.kv_blocked, 0);
    run_to_end(&mut s, &m);
    assert!(m.steps.borrow().iter().all(|st| st.len() <= 2));
    // KV budget 20 tokens; each request needs 3 + 5 = 8 worst case: two fit, not three.
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(cfg(8, 64, 20));
    for _ in 0..3 {
        let (r, rx) = request(vec![1, 2, 3], 5);
        s.add(r);
        rxs.push(rx);
    }
    let st = s.step(&m);
    assert_eq!((st.running, st.waiting), (2, 1));
    assert_eq!(st.kv_blocked, 1);
    assert!((st.kv_usage - 16.0 / 20.0).abs() < 1e-9);
    run_to_end(&mut s, &m);
    assert_eq!(s.kv_usage(), 0.0);
    for rx in rxs.iter_mut() {
        assert_eq!(collect(rx).expect("finished").2, 5);
    }
}

#[test]
fn disconnected_client_frees_its_sequence_within_one_step() {
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(cfg(4, 64, 100));
    let (a, rx_a) = request(vec![1, 2], 50);
    let (b, mut rx_b) = request(vec![3], 5);
    s.add(a);
    s.add(b);
    s.step(&m);
    assert_eq!(s.running_len(), 2);
    drop(rx_a);
    let st = s.step(&m);
    assert_eq!(st.disconnected, 1);
    assert_eq!(st.running, 1);
    assert_eq!(st.batch_seqs, 1, "the abandoned sequence still ran");
    assert!((s.kv_usage() - 6.0 / 100.0).abs() < 1e-9);
    run_to_end(&mut s, &m);
    assert_eq!(collect(&mut rx_b).expect("b").2, 5);
    // A waiting request whose client left never reaches the model.
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(cfg(1, 64, 100));
    let (a, mut rx_a) = request(vec![1], 3);
    let (b, rx_b) = request(vec![2], 3);
    s.add(a);
    s.add(b);
    drop(rx_b);
    run_to_end(&mut s, &m);
    assert!(m.steps.borrow().iter().all(|st| st.len() == 1));
    assert_eq!(m.steps.borrow().len(), 3);
    assert!(collect(&mut rx_a).is_some());
}

#[test]
fn eos_stops_and_max_tokens_is_length() {
    fn eos_after_3(h: &[u32]) -> u32 {
        if h.len() >= 5 {
            EOS
        } else {
            0
        }
    }
    let m = FakeDecoder::new(eos_after_3);
    let mut s = Scheduler::new(cfg(4, 64, 100));
    let (r, mut rx) = request(vec![1, 2], 10);
    s.add(r);
    run_to_end(&mut s, &m);
    // Prompt "ab", generated a a a then </s> (counted, never shown).
    assert_eq!(
        collect(&mut rx),
        Some(("aaa".into(), FinishReason::Stop, 4))
    );
    let m = FakeDecoder::new(|_| 1);
    let mut s = Scheduler::new(cfg(4, 64, 100));
    let (r, mut rx) = request(vec![1, 2], 3);
    s.add(r);
    run_to_end(&mut s, &m);
    assert_eq!(
        collect(&mut rx),
        Some(("bbb".into(), FinishReason::Length, 3))
    );
}

#[test]
fn stop_strings_across_tokens_and_whole_characters() {
    // Generates " e" "Ã" "©" " e" ... : the text " eé eé…".
    fn cycle(h: &[u32]) -> u32 {
        [4, E_ACUTE[0], E_ACUTE[1]][(h.len() - 1) % 3]
    }
    let m = FakeDecoder::new(cycle);
    let mut s = Scheduler::new(cfg(4, 64, 100));
    let (mut r, mut rx) = request(vec![0], 20);
    r.stop = vec!["é e".into()];
    s.add(r);
    let mut pieces = Vec::new();
    while !s.is_idle() {
        s.step(&m);
        while let Ok(ev) = rx.try_recv() {
            pieces.push(ev);
        }
    }
    let text: String = pieces
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, " e");
    assert!(pieces
        .iter()
        .all(|e| !matches!(e, Event::Text(t) if t.contains('\u{FFFD}'))));
    assert!(matches!(
        pieces.last(),
        Some(Event::Finished {
            reason: FinishReason::Stop,
            ..
        })
    ));
    // Without a stop string the two-byte character arrives whole, in one piece.
    let m = FakeDecoder::new(cycle);
    let mut s = Scheduler::new(cfg(4, 64, 100));
    let (r, mut rx) = request(vec![0], 6);
    s.add(r);
    let mut texts = Vec::new();
    while !s.is_idle() {
        s.step(&m);
        while let Ok(ev) = rx.try_recv() {
            if let Event::Text(t) = ev {
                texts.push(t);
            }
        }
    }
    assert_eq!(texts, vec![" e", "é", " e", "é"]);
}

#[test]
fn model_failure_ends_the_batch_with_an_error_event() {
    let mut m = FakeDecoder::new(mix);
    m.fail = true;
    let mut s = Scheduler::new(cfg(4, 64, 100));
    let (r, mut rx) = request(vec![1], 3);
    s.add(r);
    let st = s.step(&m);
    assert!(st.failed.is_some());
    assert!(s.is_idle());
    assert!(matches!(rx.try_recv(), Ok(Event::Error(_))));
    // An empty prompt is refused at once.
    let (r, mut rx) = request(Vec::new(), 3);
    s.add(r);
    assert!(s.is_idle());
    assert!(matches!(rx.try_recv(), Ok(Event::Error(_))));
}

#[test]
fn slow_client_gets_every_event_through_a_small_channel() {
    let m = FakeDecoder::new(|_| 1);
    let mut s = Scheduler::new(cfg(4, 64, 100));
    let (tx, mut rx) = mpsc::channel(2);
    let (mut r, _) = request(vec![1], 10);
    r.events = tx;
    s.add(r);
    let mut got = Vec::new();
    let mut n = 0;
    while !s.is_idle() {
        s.step(&m);
        n += 1;
        // The client reads one event every other step.
        if n % 2 == 0 {
            if let Ok(ev) = rx.try_recv() {
                got.push(ev);
            }
        }
        assert!(n < 1000);
    }
    while let Ok(ev) = rx.try_recv() {
        got.push(ev);
    }
    let text: String = got
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "b".repeat(10));
    assert!(matches!(got.last(), Some(Event::Finished { .. })));
}

#[test]
fn logprobs_come_before_each_token_from_the_raw_logits() {
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(cfg(4, 512, 10_000));
    let (mut req, mut rx) = request(vec![1, 2, 3], 4);
    req.params.logprobs = Some(2);
    // A bias the sampler applies (too small to change the choice) must not show in the
    // reported probabilities.
    req.params.logit_bias = vec![(0, 5.0)];
    s.add(req);
    run_to_end(&mut s, &m);
    let mut lps = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let Event::Logprob(lp) = ev {
            lps.push(lp);
        }
    }
    assert_eq!(lps.len(), 4);
    // The fake decoder puts logit 10 on one token of 8 and 0 on the rest.
    let want = 10.0 - (10f64.exp() + 7.0).ln() as f32;
    for lp in &lps {
        assert!((lp.chosen.logprob - want).abs() < 1e-4, "{lp:?}");
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0], lp.chosen, "greedy picks the likeliest");
        assert!((lp.top[1].logprob - (want - 10.0)).abs() < 1e-4);
    }
}

/// A request with `n - 1` siblings and the receivers of all `n` choices.
pub(super) fn group(
    prompt: Vec<u32>,
    max_tokens: usize,
    n: usize,
) -> (GenRequest, Vec<mpsc::Receiver<Event>>) {
    let (mut req, rx) = request(prompt, max_tokens);
    let mut rxs = vec![rx];
    for _ in 1..n {
        let (tx, rx) = mpsc::channel(1024);
        req.siblings.push(tx);
        rxs.push(rx);
    }
    (req, rxs)
}

#[test]
fn siblings_share_the_prefill_and_each_equals_a_solo_run() {
    let prompt: Vec<u32> = (0..9).map(|i| (i * 2) % 5).collect();
    let alone = solo(prompt.clone(), 6);
    for can_fork in [true, false] {
        let mut m = FakeDecoder::new(mix);
        m.can_fork = can_fork;
        let mut s = Scheduler::new(cfg(4, 512, 10_000));
        let (req, mut rxs) = group(prompt.clone(), 6, 3);
        s.add(req);
        run_to_end(&mut s, &m);
        for rx in rxs.iter_mut() {
            assert_eq!(collect(rx).expect("finished"), alone, "can_fork {can_fork}");
        }
        // The prompt's 9 tokens go through the model once when caches fork, three times
        // (one prefill each) when they cannot.
        let prefilled: usize = m
            .steps
            .borrow()
            .iter()
            .flatten()
            .filter(|&&t| t == 9)
            .count();
        assert_eq!(
            prefilled,
            if can_fork { 1 } else { 3 },
            "can_fork {can_fork}"
        );
        assert_eq!(s.kv_usage(), 0.0, "every reservation was given back");
    }
}

#[test]
fn a_group_is_admitted_whole_and_reserves_kv_for_every_choice() {
    let m = FakeDecoder::new(mix);
    // Room for 3 sequences: a running one leaves too little for a group of 3.
    let mut s = Scheduler::new(cfg(3, 64, 10_000));
    let (a, mut rx_a) = request(vec![1, 2], 20);
    s.add(a);
    s.step(&m);
    let (g, mut rxs) = group(vec![3, 4], 4, 3);
    s.add(g);
    let st = s.step(&m);
    assert_eq!((st.running, st.waiting), (1, 1), "the group waits for room");
    run_to_end(&mut s, &m);
    assert!(collect(&mut rx_a).is_some());
    for rx in rxs.iter_mut() {
        assert_eq!(collect(rx).expect("finished").2, 4);
    }
    // KV: each of 3 choices reserves prompt + max_tokens.
    let mut s = Scheduler::new(cfg(8, 64, 3 * (2 + 4)));
    let (g, _rxs) = group(vec![3, 4], 4, 3);
    s.add(g);
    let st = s.step(&m);
    assert_eq!(st.running, 3);
    assert!((s.kv_usage() - 1.0).abs() < 1e-9);
}

#[test]
fn siblings_sample_independently_and_a_seed_keeps_them_reproducible() {
    // Flat logits: every token is equally likely, so choices differ by their random draws.
    fn flat(_: &[u32]) -> u32 {
        0
    }
    let run = || {
        let m = FakeDecoder::new(flat);
        let mut s = Scheduler::new(cfg(8, 512, 10_000));
        let (mut req, mut rxs) = group(vec![1, 2, 3], 12, 4);
        req.params = SamplingParams {
            temperature: 2.0,
            seed: Some(11),
            ..SamplingParams::default()
        };
        req.ignore_eos = true;
        s.add(req);
        run_to_end(&mut s, &m);
        rxs.iter_mut()
            .map(|rx| collect(rx).expect("finished").0)
            .collect::<Vec<_>>()
    };
    let a = run();
    assert_eq!(a, run(), "the same seed gives the same choices");
    let distinct: std::collections::HashSet<_> = a.iter().collect();
    assert!(distinct.len() > 1, "all choices were equal: {a:?}");
}

#[test]
fn prefill_while_decoding_stays_within_its_own_budget() {
    let prompt_b: Vec<u32> = (0..20).map(|i| (i * 2) % 5).collect();
    let (want_a, want_b) = (solo(vec![1, 2, 3], 12), solo(prompt_b.clone(), 3));
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(SchedulerConfig {
        decode_prefill_tokens: 3,
        ..cfg(4, 16, 10_000)
    });
    let (a, mut rx_a) = request(vec![1, 2, 3], 12);
    s.add(a);
    // Nothing decodes yet: A's whole prompt runs in one step.
    assert_eq!(s.step(&m).batch_tokens, 3);
    let (b, mut rx_b) = request(prompt_b, 3);
    s.add(b);
    let before = m.steps.borrow().len();
    // A decodes, so B's 20 prompt tokens go 3 at a time although 15 would fit the step.
    for _ in 0..6 {
        s.step(&m);
    }
    assert_eq!(m.steps.borrow()[before..], vec![vec![1, 3]; 6]);
    s.step(&m);
    assert_eq!(m.steps.borrow().last(), Some(&vec![1, 2]));
    run_to_end(&mut s, &m);
    assert_eq!(collect(&mut rx_a).expect("a"), want_a);
    assert_eq!(collect(&mut rx_b).expect("b"), want_b);
}

#[test]
fn prompts_take_the_whole_step_budget_when_nothing_decodes() {
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(SchedulerConfig {
        decode_prefill_tokens: 2,
        ..cfg(4, 16, 10_000)
    });
    let (a, _rx_a) = request((0..10).map(|i| i % 5).collect(), 4);
    let (b, _rx_b) = request((0..10).map(|i| (i + 1) % 5).collect(), 4);
    s.add(a);
    s.add(b);
    s.step(&m);
    // A finished its prompt and decodes: B's last 4 prompt tokens now go 2 per step.
    s.step(&m);
    s.step(&m);
    assert_eq!(*m.steps.borrow(), vec![vec![10, 6], vec![1, 2], vec![1, 2]]);
}

#[test]
fn a_zero_prefill_budget_still_admits_prompts() {
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(SchedulerConfig {
        decode_prefill_tokens: 0,
        ..cfg(4, 16, 10_000)
    });
    assert_eq!(s.config().decode_prefill_tokens, 1);
    let (a, mut rx_a) = request(vec![1, 2], 30);
    s.add(a);
    s.step(&m);
    let (b, mut rx_b) = request(vec![3, 4, 0], 2);
    s.add(b);
    run_to_end(&mut s, &m);
    assert_eq!(collect(&mut rx_b).expect("b").2, 2);
    assert_eq!(collect(&mut rx_a).expect("a").2, 30);
}
