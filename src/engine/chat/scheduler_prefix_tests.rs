//! Prefix-cache tests of the scheduler with the fake decoder, whose next token depends on
//! the whole cached history: a block reused after the wrong prefix, or a wrong position,
//! changes the output.

use super::tests::{collect, group, request, solo};
use super::*;
use crate::engine::chat::testutil::{mix, FakeDecoder};

/// Limits with 4-token prefix-cache blocks.
fn cached(max_num_seqs: usize, max_batch_tokens: usize, kv: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_batch_tokens,
        decode_prefill_tokens: max_batch_tokens,
        kv_budget_tokens: kv,
        prefix_block_tokens: 4,
    }
}

/// A 12-token "system prompt" followed by a distinct tail.
fn with_prefix(tail: &[u32]) -> Vec<u32> {
    let mut p: Vec<u32> = (0..12).map(|i| (i * 3 + 1) % 5).collect();
    p.extend_from_slice(tail);
    p
}

/// Steps until idle, checking after every step that reservations and idle cached blocks
/// stay within the KV budget.
fn run_checked(s: &mut Scheduler<FakeDecoder>, m: &FakeDecoder) -> Vec<StepStats> {
    let mut all = Vec::new();
    while !s.is_idle() {
        all.push(s.step(m));
        assert_within_budget(s);
        assert!(all.len() < 10_000, "scheduler does not terminate");
    }
    all
}

fn assert_within_budget(s: &Scheduler<FakeDecoder>) {
    let idle = s.prefix_cache().map_or(0, PrefixCache::idle_tokens);
    assert!(
        s.reserved + idle <= s.cfg.kv_budget_tokens,
        "reserved {} + idle cached {idle} over the budget {}",
        s.reserved,
        s.cfg.kv_budget_tokens
    );
}

fn hits(stats: &[StepStats]) -> (usize, usize) {
    stats.iter().fold((0, 0), |(q, h), st| {
        (q + st.prefix_query_tokens, h + st.prefix_hit_tokens)
    })
}

#[test]
fn a_cached_prefix_is_not_prefilled_again_and_the_output_is_unchanged() {
    let first = with_prefix(&[2, 2]);
    let second = with_prefix(&[4]);
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(cached(4, 512, 10_000));
    let (a, mut rx_a) = request(first.clone(), 6);
    s.add(a);
    let stats = run_checked(&mut s, &m);
    assert_eq!(hits(&stats), (14, 0), "the first request misses");
    // Its three whole prompt blocks are cached.
    assert_eq!(s.prefix_cache().map(PrefixCache::len), Some(3));
    let (b, mut rx_b) = request(second.clone(), 6);
    s.add(b);
    let before = m.steps.borrow().len();
    let stats = run_checked(&mut s, &m);
    // 12 of 13 prompt tokens come from the cache: only the tail is prefilled.
    assert_eq!(hits(&stats), (13, 12));
    assert_eq!(m.steps.borrow()[before], vec![1]);
    assert_eq!(collect(&mut rx_a).expect("a"), solo(first, 6));
    assert_eq!(collect(&mut rx_b).expect("b"), solo(second.clone(), 6));
    // The same prompt again: its whole blocks before the last token hit, and the answer is
    // still the solo one.
    let (c, mut rx_c) = request(second.clone(), 6);
    s.add(c);
    let stats = run_checked(&mut s, &m);
    assert_eq!(hits(&stats), (13, 12));
    assert_eq!(collect(&mut rx_c).expect("c"), solo(second, 6));
}

#[test]
fn a_different_prefix_or_a_backend_without_sharing_misses() {
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(cached(4, 512, 10_000));
    let (a, _rx) = request(with_prefix(&[1]), 2);
    s.add(a);
    run_checked(&mut s, &m);
    // The second block differs: only the first one matches.
    let mut other = with_prefix(&[1]);
    other[5] = (other[5] + 1) % 5;
    let (b, mut rx_b) = request(other.clone(), 4);
    s.add(b);
    assert_eq!(hits(&run_checked(&mut s, &m)), (13, 4));
    assert_eq!(collect(&mut rx_b).expect("b"), solo(other.clone(), 4));
    // The first block differs: nothing matches, though later blocks hold the same tokens.
    other[0] = (other[0] + 1) % 5;
    let (c, _rx) = request(other, 4);
    s.add(c);
    assert_eq!(hits(&run_checked(&mut s, &m)), (13, 0));
    // A backend that cannot share blocks never caches anything.
    let mut m = FakeDecoder::new(mix);
    m.can_share = false;
    let mut s = Scheduler::new(cached(4, 512, 10_000));
    for _ in 0..2 {
        let (r, mut rx) = request(with_prefix(&[3]), 4);
        s.add(r);
        assert_eq!(hits(&run_checked(&mut s, &m)), (13, 0));
        assert_eq!(collect(&mut rx).expect("r"), solo(with_prefix(&[3]), 4));
    }
    assert_eq!(s.prefix_cache().map(PrefixCache::len), Some(0));
}

#[test]
fn idle_blocks_are_evicted_before_a_request_is_refused() {
    let m = FakeDecoder::new(mix);
    // 40 tokens of KV: a 16-token prompt leaves 4 blocks (16 tokens) behind.
    let mut s = Scheduler::new(cached(4, 512, 40));
    let (a, _rx) = request((0..16).map(|i| i % 5).collect(), 4);
    s.add(a);
    run_checked(&mut s, &m);
    assert_eq!(s.prefix_cache().map(PrefixCache::idle_tokens), Some(16));
    // 26 + 4 reserved + 16 idle > 40: two blocks must go, and the request runs at once.
    let prompt: Vec<u32> = (0..26).map(|i| (i * 2 + 1) % 5).collect();
    let (b, mut rx_b) = request(prompt.clone(), 4);
    s.add(b);
    let st = s.step(&m);
    assert_within_budget(&s);
    assert_eq!((st.running, st.kv_blocked), (1, 0));
    assert!(s.prefix_cache().map_or(0, PrefixCache::len) < 4);
    run_checked(&mut s, &m);
    assert_eq!(collect(&mut rx_b).expect("b"), solo(prompt, 4));
    // A request that does not fit beside the running ones yet leaves the cache alone.
    let (d, _rx_d) = request(vec![2; 10], 20);
    s.add(d);
    let st = s.step(&m);
    assert_eq!(st.running, 1);
    let blocks = s.prefix_cache().map_or(0, PrefixCache::len);
    assert!(blocks > 0);
    let (c, _rx_c) = request(vec![1; 10], 5);
    s.add(c);
    let st = s.step(&m);
    assert_eq!(st.kv_blocked, 1, "c waits for d's reservation");
    assert_eq!(s.prefix_cache().map_or(0, PrefixCache::len), blocks);
    assert_within_budget(&s);
}

#[test]
fn blocks_held_by_a_running_sequence_are_not_evicted() {
    let m = FakeDecoder::new(mix);
    let mut s = Scheduler::new(cached(4, 512, 100));
    let p: Vec<u32> = vec![1, 2, 3, 4, 0, 1, 2, 3];
    let q: Vec<u32> = vec![4, 4, 3, 3, 2, 2, 1, 1];
    for prompt in [&p, &q] {
        let mut r = prompt.clone();
        r.push(0);
        let (req, _rx) = request(r, 1);
        s.add(req);
        run_checked(&mut s, &m);
    }
    assert_eq!(s.prefix_cache().map(PrefixCache::idle_tokens), Some(16));
    // A reuses P's two blocks and holds them while it decodes.
    let mut a_prompt = p.clone();
    a_prompt.push(2);
    let (a, mut rx_a) = request(a_prompt.clone(), 40);
    s.add(a);
    let st = s.step(&m);
    assert_eq!(st.prefix_hit_tokens, 8);
    assert_eq!(
        s.running[0].cache.shared.len(),
        2,
        "A's cache holds the blocks"
    );
    assert_eq!(s.prefix_cache().map(PrefixCache::idle_tokens), Some(8));
    // C needs every idle token: Q's blocks go, P's (held by A) stay.
    let c_prompt: Vec<u32> = vec![3; 12];
    let (c, mut rx_c) = request(c_prompt.clone(), 100 - 49 - 12);
    s.add(c);
    let st = s.step(&m);
    assert_eq!((st.running, st.kv_blocked), (2, 0));
    assert_within_budget(&s);
    let cache = s.prefix.as_mut().expect("prefix cache on");
    assert_eq!(cache.lookup(&[p.clone(), vec![0]].concat()).len(), 2);
    assert!(cache.lookup(&[q.clone(), vec![0]].concat()).is_empty());
    run_checked(&mut s, &m);
    assert_eq!(collect(&mut rx_a).expect("a"), solo(a_prompt, 40));
    assert_eq!(collect(&mut rx_c).expect("c"), solo(c_prompt, 39));
    assert_eq!(s.kv_usage(), 0.0);
}

#[test]
fn batched_chunked_siblings_with_the_prefix_cache_equal_solo_runs() {
    let prompts: Vec<Vec<u32>> = vec![
        with_prefix(&[0, 1, 2]),
        with_prefix(&[3]),
        with_prefix(&[4, 4, 4, 4, 4, 1]),
    ];
    let alone: Vec<_> = prompts.iter().map(|p| solo(p.clone(), 7)).collect();
    let m = FakeDecoder::new(mix);
    // Chunks of at most 5 tokens, the cache filling while later requests arrive.
    let mut s = Scheduler::new(cached(8, 5, 10_000));
    let mut choices = Vec::new();
    let mut stats = Vec::new();
    for p in &prompts {
        let (req, rxs) = group(p.clone(), 7, 2);
        s.add(req);
        choices.push(rxs);
        for _ in 0..6 {
            stats.push(s.step(&m));
            assert_within_budget(&s);
        }
    }
    stats.extend(run_checked(&mut s, &m));
    for (i, rxs) in choices.iter_mut().enumerate() {
        for rx in rxs.iter_mut() {
            assert_eq!(collect(rx).expect("finished"), alone[i], "prompt {i}");
        }
    }
    // The later two prompts reused the first one's three blocks.
    assert_eq!(hits(&stats), (15 + 13 + 18, 24));
    assert_eq!(s.kv_usage(), 0.0);
}
