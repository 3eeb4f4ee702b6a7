//! The prefix cache: KV blocks of prompt prefixes that later sequences reuse instead of
//! prefilling them again (a RAG system prompt, an agent's tool list, earlier turns).
//!
//! Prompts are cut into blocks of `block_tokens` tokens. A block is content-addressed by
//! its tokens *and* its parent block, so it matches only after the same whole prefix: the
//! key is a chain over every earlier block, like a chained hash but exact (a hash collision
//! can never alias two prefixes). Blocks are `Arc`s: a sequence whose cache starts with
//! cached blocks holds them, and a block someone holds (strong count > 1) is never evicted.
//! Eviction takes the least recently used *leaf* (a block no cached block continues), so a
//! chain shrinks from its end and every cached block stays reachable from the start.
//!
//! The [`Scheduler`](super::scheduler::Scheduler) owns the cache, decides how much of the
//! KV budget it may hold and copies block data out of a sequence's cache through the
//! backend ([`DecoderBackend::export_block`](super::backend::DecoderBackend)).

use std::collections::HashMap;
use std::sync::Arc;

/// Tokens per block on the engine's CPU path.
pub const DEFAULT_BLOCK_TOKENS: usize = 16;

type BlockId = u64;

/// What identifies a block: its parent (`None` for a prompt's first block) and its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    parent: Option<BlockId>,
    tokens: Box<[u32]>,
}

#[derive(Debug)]
struct Entry<B> {
    key: Key,
    block: Arc<B>,
    /// Cached blocks whose parent this is (a block with children is not evicted).
    children: usize,
    /// Logical time of the last lookup or insertion that went through this block.
    used: u64,
}

/// Content-addressed KV blocks with reference counts and LRU eviction of leaves.
#[derive(Debug)]
pub struct PrefixCache<B> {
    block_tokens: usize,
    index: HashMap<Key, BlockId>,
    entries: HashMap<BlockId, Entry<B>>,
    next_id: BlockId,
    clock: u64,
}

impl<B> PrefixCache<B> {
    /// An empty cache of `block_tokens`-token blocks (at least 1).
    pub fn new(block_tokens: usize) -> Self {
        PrefixCache {
            block_tokens: block_tokens.max(1),
            index: HashMap::new(),
            entries: HashMap::new(),
            next_id: 0,
            clock: 0,
        }
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// KV tokens held by blocks no sequence holds: memory the cache alone accounts for, and
    /// can give back by eviction. (Blocks a sequence holds are inside its reservation.)
    pub fn idle_tokens(&self) -> usize {
        let idle = self
            .entries
            .values()
            .filter(|e| Arc::strong_count(&e.block) == 1)
            .count();
        idle * self.block_tokens
    }

    /// Walks the chain of cached blocks that starts `tokens` (whole blocks, at most
    /// `max_blocks`) and returns their ids in order.
    fn walk(&self, tokens: &[u32], max_blocks: usize) -> Vec<BlockId> {
        let mut ids = Vec::new();
        let mut parent = None;
        for chunk in tokens.chunks_exact(self.block_tokens).take(max_blocks) {
            let key = Key {
                parent,
                tokens: chunk.into(),
            };
            match self.index.get(&key) {
                Some(&id) => {
                    ids.push(id);
                    parent = Some(id);
                }
                None => break,
            }
        }
        ids
    }

    fn touch(&mut self, ids: &[BlockId]) {
        self.clock += 1;
        for id in ids {
            if let Some(e) = self.entries.get_mut(id) {
                e.used = self.clock;
            }
        }
    }

    /// The longest cached run of whole blocks at the start of `prompt`, leaving at least one
    /// prompt token uncached (its logits start generation). The returned `Arc`s pin the
    /// blocks for as long as the caller holds them.
    pub fn lookup(&mut self, prompt: &[u32]) -> Vec<Arc<B>> {
        let usable = prompt.len().saturating_sub(1) / self.block_tokens;
        let ids = self.walk(prompt, usable);
        self.touch(&ids);
        ids.iter()
            .map(|id| self.entries[id].block.clone())
            .collect()
    }

    /// Caches the whole blocks of `prompt` that are not cached yet, in order. `free` is the
    /// KV budget (tokens) left beside the cache; the cache evicts its least recently used
    /// idle blocks to make room and inserts only what fits. `make(start, len)` builds the
    /// data of the block at positions `start..start + len` (`None`: the backend cannot, and
    /// insertion stops). Returns the blocks inserted.
    pub fn insert(
        &mut self,
        prompt: &[u32],
        free: usize,
        mut make: impl FnMut(usize, usize) -> Option<B>,
    ) -> usize {
        let bt = self.block_tokens;
        let whole = prompt.len() / bt;
        let known = self.walk(prompt, whole);
        self.touch(&known);
        let missing = whole - known.len();
        if missing == 0 {
            return 0;
        }
        // The chain being extended must survive the eviction below.
        let pins: Vec<Arc<B>> = known
            .iter()
            .map(|id| self.entries[id].block.clone())
            .collect();
        let mut room = free;
        if room < missing * bt {
            room += self.evict(missing * bt - room);
        }
        drop(pins);
        let mut parent = known.last().copied();
        let mut inserted = 0;
        for i in known.len()..known.len() + missing.min(room / bt) {
            let Some(data) = make(i * bt, bt) else { break };
            let id = self.next_id;
            self.next_id += 1;
            let key = Key {
                parent,
                tokens: prompt[i * bt..(i + 1) * bt].into(),
            };
            if let Some(p) = parent.and_then(|p| self.entries.get_mut(&p)) {
                p.children += 1;
            }
            self.index.insert(key.clone(), id);
            self.entries.insert(
                id,
                Entry {
                    key,
                    block: Arc::new(data),
                    children: 0,
                    used: self.clock,
                },
            );
            parent = Some(id);
            inserted += 1;
        }
        inserted
    }

    /// Evicts idle leaf blocks, least recently used first, until at least `tokens` tokens
    /// are freed or none is left to evict; returns the tokens freed.
    pub fn evict(&mut self, tokens: usize) -> usize {
        let mut freed = 0;
        while freed < tokens {
            // Oldest idle leaves first; evicting a leaf can make its parent one, so rescan.
            let mut leaves: Vec<(u64, BlockId)> = self
                .entries
                .iter()
                .filter(|(_, e)| e.children == 0 && Arc::strong_count(&e.block) == 1)
                .map(|(&id, e)| (e.used, id))
                .collect();
            if leaves.is_empty() {
                break;
            }
            leaves.sort_unstable();
            for (_, id) in leaves {
                if freed >= tokens {
                    break;
                }
                self.remove(id);
                freed += self.block_tokens;
            }
        }
        freed
    }

    fn remove(&mut self, id: BlockId) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        self.index.remove(&e.key);
        if let Some(p) = e.key.parent.and_then(|p| self.entries.get_mut(&p)) {
            p.children -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of 2-token blocks whose data is the block's start position.
    fn cache() -> PrefixCache<usize> {
        PrefixCache::new(2)
    }

    fn fill(c: &mut PrefixCache<usize>, prompt: &[u32]) -> usize {
        c.insert(prompt, usize::MAX / 2, |start, _| Some(start))
    }

    #[test]
    fn a_block_matches_only_after_the_same_whole_prefix() {
        let mut c = cache();
        assert_eq!(fill(&mut c, &[1, 2, 3, 4, 5]), 2);
        assert_eq!(c.len(), 2);
        // Two whole blocks cached; one token must stay for the logits.
        let hit: Vec<usize> = c.lookup(&[1, 2, 3, 4, 9]).iter().map(|b| **b).collect();
        assert_eq!(hit, vec![0, 2]);
        assert_eq!(
            c.lookup(&[1, 2, 3, 4]).len(),
            1,
            "the last token stays uncached"
        );
        // The second block's tokens after another first block do not match.
        assert!(c.lookup(&[9, 9, 3, 4, 5]).is_empty());
        assert_eq!(c.lookup(&[1, 2, 3, 9, 5]).len(), 1);
        // Inserting a prompt with a cached prefix adds only the missing blocks.
        assert_eq!(fill(&mut c, &[1, 2, 3, 4, 7, 8, 0]), 1);
        assert_eq!(fill(&mut c, &[1, 2, 3, 4, 7, 8]), 0);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn eviction_takes_idle_leaves_oldest_first_and_spares_held_blocks() {
        let mut c = cache();
        fill(&mut c, &[1, 1, 2, 2]); // chain a: 2 blocks
        fill(&mut c, &[3, 3, 4, 4]); // chain b: 2 blocks
        c.lookup(&[1, 1, 2, 2, 0]); // a is now the more recent
        assert_eq!(c.evict(2), 2);
        // b's leaf went first; b's root is still reachable.
        assert_eq!(c.lookup(&[3, 3, 4, 4, 0]).len(), 1);
        assert_eq!(c.lookup(&[1, 1, 2, 2, 0]).len(), 2);
        // A held block is never evicted, nor its ancestors.
        let held = c.lookup(&[1, 1, 2, 2, 0]);
        assert_eq!(c.idle_tokens(), 2, "only b's root is idle");
        assert_eq!(c.evict(100), 2);
        assert_eq!(c.len(), 2);
        drop(held);
        assert_eq!(c.idle_tokens(), 4);
        assert_eq!(c.evict(100), 4);
        assert!(c.is_empty());
    }

    #[test]
    fn insertion_evicts_for_room_and_stops_when_nothing_fits() {
        let mut c = cache();
        fill(&mut c, &[1, 1, 2, 2]);
        // No free budget: the old chain is evicted to make room for the new one.
        assert_eq!(c.insert(&[5, 5, 6, 6], 0, |s, _| Some(s)), 2);
        assert!(c.lookup(&[1, 1, 2, 2, 0]).is_empty());
        // Room for one block only when the rest is held.
        let held = c.lookup(&[5, 5, 6, 6, 0]);
        assert_eq!(c.insert(&[7, 7, 8, 8], 3, |s, _| Some(s)), 1);
        drop(held);
        // A backend that cannot build blocks caches nothing.
        assert_eq!(c.insert(&[9, 9], 10, |_, _| None), 0);
        // Extending a chain never evicts the chain itself.
        let mut c = cache();
        fill(&mut c, &[1, 1]);
        assert_eq!(c.insert(&[1, 1, 2, 2], 0, |s, _| Some(s)), 0);
        assert_eq!(c.lookup(&[1, 1, 0]).len(), 1);
    }
}
