//! The verified-chain cache: signature work is done once per distinct
//! token. Revocation, expiry and freshness are never cached: they are
//! checked on every call.
//!
//! What a stranger can do to it is bounded:
//! - Only chains that were *allowed* when first seen are inserted (a
//!   chain denied for its action, expiry or revocation is not going to be
//!   reused), and a cached chain denied later as revoked or expired is
//!   dropped.
//! - It has a byte budget, counting the token and an estimate of the
//!   parsed chain, as well as an entry count.
//! - Any holder can mint descendants of its own chain offline, without
//!   the registry: every root (issuer and root `jti`) may use at most
//!   [`ROOT_SHARE`] of the budget. A root over its share evicts its own
//!   oldest chains, never anyone else's.
//!
//! It is sharded to keep lock hold times short on the hit path; a hit
//! takes one shard lock. An insert or removal takes the accounts' lock,
//! then one shard lock at a time (lock order: `roots` before any shard;
//! `get` takes only a shard).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use veto_core::VerifiedChain;

const SHARDS: usize = 16;
/// The fraction of the byte budget one root's chains may use: 1/16.
pub(crate) const ROOT_SHARE: usize = 16;
/// Fixed cost of an entry (map slot, `Arc`, root bookkeeping).
const ENTRY_OVERHEAD: usize = 160;
/// Estimated cost of one parsed link beyond its strings (claims, holder
/// key, revocation probes).
const LINK_OVERHEAD: usize = 512;
/// Estimated cost of one parsed action pattern beyond its bytes.
const PATTERN_OVERHEAD: usize = 96;

struct Entry {
    token: Box<str>,
    chain: Arc<VerifiedChain>,
    root: u64,
    bytes: usize,
    seq: u64,
}

/// One root's use of the cache, and its entries oldest first. `order` may
/// hold records of entries already evicted under global pressure (checked
/// by `seq` when popped, and compacted when they pile up).
#[derive(Default)]
struct RootUse {
    bytes: usize,
    live: usize,
    order: VecDeque<(u64, u64)>,
}

pub(crate) struct ChainCache {
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
    roots: Mutex<Roots>,
    per_shard: usize,
    budget: usize,
    root_bytes: usize,
    hasher: RandomState,
}

/// The byte accounts, kept under one lock taken only by inserts and
/// removals (never by a hit).
#[derive(Default)]
struct Roots {
    by_root: HashMap<u64, RootUse>,
    total: usize,
    seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The approximate memory a cached chain holds: the token kept for the
/// comparison on a hit, the parsed links' signing inputs (about the
/// token's size again), their decoded claims, each action pattern four
/// times its length (the string, its parsed two-byte tokens, and for the
/// leaf the check record's action program) and fixed overheads.
pub(crate) fn entry_bytes(token: &str, chain: &VerifiedChain) -> usize {
    let links: usize = chain
        .chain()
        .links()
        .iter()
        .map(|l| {
            let c = l.claims();
            let ids = c.jti.len()
                + c.sub.len()
                + c.iss.as_ref().map_or(0, String::len)
                + c.par.as_ref().map_or(0, String::len);
            let act: usize = c.act.iter().map(|a| 4 * a.len() + PATTERN_OVERHEAD).sum();
            LINK_OVERHEAD + ids + act
        })
        .sum();
    ENTRY_OVERHEAD + 2 * token.len() + links
}

impl ChainCache {
    /// At most `capacity` chains and `budget` bytes.
    pub fn new(capacity: usize, budget: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            roots: Mutex::new(Roots::default()),
            per_shard: (capacity / SHARDS).max(1),
            budget,
            root_bytes: budget / ROOT_SHARE,
            hasher: RandomState::new(),
        }
    }

    /// A new, empty cache with the same limits (and a new hash key).
    pub fn empty_like(&self) -> Self {
        Self::new(self.per_shard * SHARDS, self.budget)
    }

    /// Keyed by a keyed hash of the token's last 64 bytes (the leaf's
    /// signature); a hit still compares the whole token.
    fn key(&self, token: &str) -> u64 {
        let tail = &token.as_bytes()[token.len().saturating_sub(64)..];
        self.hasher.hash_one((token.len(), tail))
    }

    fn root_key(&self, chain: &VerifiedChain) -> u64 {
        let root = chain.chain().root().claims();
        self.hasher
            .hash_one((root.iss.as_deref(), root.jti.as_str()))
    }

    fn shard(&self, k: u64) -> MutexGuard<'_, HashMap<u64, Entry>> {
        lock(&self.shards[k as usize % SHARDS])
    }

    pub fn get(&self, token: &str) -> Option<Arc<VerifiedChain>> {
        let k = self.key(token);
        let shard = self.shard(k);
        match shard.get(&k) {
            Some(e) if *e.token == *token => Some(e.chain.clone()),
            _ => None,
        }
    }

    /// Caches a chain that was allowed. A chain bigger than a root's share
    /// is not cached at all (it is verified on every request).
    pub fn insert(&self, token: &str, chain: Arc<VerifiedChain>) {
        let bytes = entry_bytes(token, &chain);
        if bytes > self.root_bytes {
            return;
        }
        let k = self.key(token);
        let root = self.root_key(&chain);
        let mut roots = lock(&self.roots);
        // The root pays for its own growth first: its oldest chains go.
        loop {
            let r = roots.by_root.entry(root).or_default();
            if r.bytes + bytes <= self.root_bytes {
                break;
            }
            let Some((seq, old)) = r.order.pop_front() else {
                break;
            };
            self.remove_at(&mut roots, old, |e| e.seq == seq);
        }
        self.remove_at(&mut roots, k, |_| true);
        // Then the whole cache makes room, if it must, from whoever is in
        // it: arbitrary chains (so in proportion to each root's use),
        // starting with this shard, which also bounds the entry count.
        {
            let mut shard = self.shard(k);
            while shard.len() >= self.per_shard {
                let Some(&victim) = shard.keys().next() else {
                    break;
                };
                if let Some(old) = shard.remove(&victim) {
                    forget(&mut roots, &old);
                }
            }
        }
        let mut i = k as usize;
        let mut empty = 0;
        while roots.total + bytes > self.budget && empty < SHARDS {
            let mut shard = lock(&self.shards[i % SHARDS]);
            match shard.keys().next().copied() {
                Some(victim) => {
                    if let Some(old) = shard.remove(&victim) {
                        forget(&mut roots, &old);
                    }
                    empty = 0;
                }
                None => empty += 1,
            }
            i = i.wrapping_add(1);
        }
        roots.seq += 1;
        let seq = roots.seq;
        roots.total += bytes;
        self.shard(k).insert(
            k,
            Entry {
                token: token.into(),
                chain,
                root,
                bytes,
                seq,
            },
        );
        let r = roots.by_root.entry(root).or_default();
        r.bytes += bytes;
        r.live += 1;
        r.order.push_back((seq, k));
        if r.order.len() > 2 * r.live + 64 {
            let live = |&(seq, k): &(u64, u64)| self.shard(k).get(&k).is_some_and(|e| e.seq == seq);
            r.order.retain(live);
        }
    }

    /// Drops a chain (revoked or expired: it will not be allowed again).
    pub fn remove(&self, token: &str) {
        let k = self.key(token);
        let mut roots = lock(&self.roots);
        self.remove_at(&mut roots, k, |e| *e.token == *token);
    }

    /// Removes the entry at `k` if `which` says it is the one meant.
    fn remove_at(&self, roots: &mut Roots, k: u64, which: impl Fn(&Entry) -> bool) {
        let mut shard = self.shard(k);
        if shard.get(&k).is_some_and(which) {
            if let Some(old) = shard.remove(&k) {
                forget(roots, &old);
            }
        }
    }

    /// Bytes held (estimated).
    pub fn bytes(&self) -> usize {
        lock(&self.roots).total
    }

    /// Chains held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// Takes an evicted entry off the accounts.
fn forget(roots: &mut Roots, old: &Entry) {
    roots.total -= old.bytes;
    if let Some(r) = roots.by_root.get_mut(&old.root) {
        r.bytes -= old.bytes;
        r.live -= 1;
        if r.live == 0 {
            roots.by_root.remove(&old.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use veto_core::{warrant, CheckConfig, Checker, KeySet, LinkSpec, ParsedChain, SigningKey};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    struct World {
        issuer: SigningKey,
        checker: Checker,
    }

    impl World {
        fn new() -> Self {
            let issuer = SigningKey::from_seed(&[7; 32]);
            let checker = Checker::new(
                KeySet::new([issuer.public().clone()]),
                CheckConfig::default(),
            );
            Self { issuer, checker }
        }

        /// A root for `sub` and its holder key.
        fn root(&self, sub: &str) -> (String, SigningKey) {
            let holder = SigningKey::generate().unwrap();
            let spec = LinkSpec {
                sub: sub.into(),
                act: vec!["http:GET:/*".into()],
                iat: NOW - 10,
                exp: NOW + 3600,
                holder: Some(holder.public().clone()),
            };
            (
                warrant::mint_root(&self.issuer, "veto", spec).unwrap(),
                holder,
            )
        }

        /// A distinct child of `parent`, padded with `pad` action patterns.
        fn child(&self, parent: &str, holder: &SigningKey, pad: usize) -> String {
            let act = (0..pad.max(1))
                .map(|i| format!("http:GET:/p{i}/{}", "x".repeat(100)))
                .collect();
            let spec = LinkSpec {
                sub: "child".into(),
                act,
                iat: NOW - 5,
                exp: NOW + 1800,
                holder: Some(holder.public().clone()),
            };
            warrant::delegate(parent, holder, spec).unwrap()
        }

        fn verified(&self, token: &str) -> Arc<VerifiedChain> {
            Arc::new(
                self.checker
                    .verify(ParsedChain::parse(token).unwrap())
                    .unwrap(),
            )
        }
    }

    #[test]
    fn the_estimate_grows_with_the_token_and_its_patterns() {
        let w = World::new();
        let (root, holder) = w.root("a");
        let small = w.child(&root, &holder, 1);
        let big = w.child(&root, &holder, 40);
        let (s, b) = (
            entry_bytes(&small, &w.verified(&small)),
            entry_bytes(&big, &w.verified(&big)),
        );
        assert!(s >= 2 * small.len(), "{s} for a {}-byte token", small.len());
        assert!(
            b >= 2 * big.len() + 40 * 200,
            "{b} for a {}-byte token",
            big.len()
        );
    }

    #[test]
    fn the_byte_budget_holds_whatever_is_inserted() {
        let w = World::new();
        let budget = 256 << 10;
        let cache = ChainCache::new(1 << 20, budget);
        // Many roots (so the per-root share is not what binds), many chains each.
        for r in 0..40 {
            let (root, holder) = w.root(&format!("agent-{r}"));
            for _ in 0..10 {
                let t = w.child(&root, &holder, 10);
                cache.insert(&t, w.verified(&t));
                assert!(cache.bytes() <= budget, "{} over {budget}", cache.bytes());
            }
        }
        assert!(
            cache.len() > 10,
            "the budget is used: {} chains",
            cache.len()
        );
        assert!(cache.bytes() > budget / 2, "{} of {budget}", cache.bytes());
    }

    #[test]
    fn one_root_cannot_take_more_than_its_share_nor_evict_others() {
        let w = World::new();
        let budget = 1 << 20;
        let cache = ChainCache::new(1 << 20, budget);
        // Bystanders: 8 roots, one chain each, all cached.
        let bystanders: Vec<String> = (0..8)
            .map(|i| {
                let (root, holder) = w.root(&format!("bystander-{i}"));
                let t = w.child(&root, &holder, 2);
                cache.insert(&t, w.verified(&t));
                t
            })
            .collect();
        // One holder mints 300 large descendants offline.
        let (root, holder) = w.root("attacker");
        let mut last = String::new();
        for _ in 0..300 {
            last = w.child(&root, &holder, 30);
            cache.insert(&last, w.verified(&last));
        }
        let attacker_bytes: usize = cache.bytes()
            - bystanders
                .iter()
                .map(|t| entry_bytes(t, &w.verified(t)))
                .sum::<usize>();
        assert!(
            attacker_bytes <= budget / ROOT_SHARE,
            "one root holds {attacker_bytes} bytes, over its share of {}",
            budget / ROOT_SHARE
        );
        assert!(
            attacker_bytes > budget / ROOT_SHARE / 2,
            "its share is used: {attacker_bytes}"
        );
        for t in &bystanders {
            assert!(cache.get(t).is_some(), "a bystander's chain was evicted");
        }
        // The root's newest chain is cached: it evicted its own oldest.
        assert!(cache.get(&last).is_some());
        // Its bookkeeping stays bounded too.
        let roots = lock(&cache.roots);
        let order = roots.by_root.values().map(|r| r.order.len()).max().unwrap();
        assert!(order <= 300, "{order} records");
    }

    #[test]
    fn a_chain_over_a_roots_share_is_not_cached() {
        let w = World::new();
        let (root, holder) = w.root("a");
        let t = w.child(&root, &holder, 40);
        let size = entry_bytes(&t, &w.verified(&t));
        let cache = ChainCache::new(1024, size * ROOT_SHARE - 1);
        cache.insert(&t, w.verified(&t));
        assert!(cache.get(&t).is_none());
        assert_eq!(cache.bytes(), 0);
        let cache = ChainCache::new(1024, size * ROOT_SHARE);
        cache.insert(&t, w.verified(&t));
        assert!(cache.get(&t).is_some());
    }

    #[test]
    fn removal_and_reinsertion_keep_the_accounts_exact() {
        let w = World::new();
        let cache = ChainCache::new(1024, 1 << 20);
        let (root, holder) = w.root("a");
        let t = w.child(&root, &holder, 3);
        cache.insert(&t, w.verified(&t));
        cache.insert(&t, w.verified(&t));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), entry_bytes(&t, &w.verified(&t)));
        cache.remove(&t);
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
        assert!(lock(&cache.roots).by_root.is_empty());
    }

    #[test]
    fn the_entry_count_still_binds() {
        let w = World::new();
        let cache = ChainCache::new(SHARDS * 2, 64 << 20);
        for r in 0..100 {
            let (root, holder) = w.root(&format!("agent-{r}"));
            let t = w.child(&root, &holder, 1);
            cache.insert(&t, w.verified(&t));
        }
        assert!(cache.len() <= SHARDS * 2, "{}", cache.len());
    }
}
