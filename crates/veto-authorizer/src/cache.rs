//! The verified-chain cache: signature work is done once per distinct
//! token. Only chains that verified are inserted, so an attacker cannot
//! fill it with junk; it is sharded to keep lock hold times short, and
//! bounded. Revocation, expiry and freshness are never cached.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex};

use veto_core::VerifiedChain;

const SHARDS: usize = 16;

/// Keyed hash of the token → the whole token and its verified chain.
type Shard = Mutex<HashMap<u64, (Box<str>, Arc<VerifiedChain>)>>;

pub(crate) struct ChainCache {
    shards: Vec<Shard>,
    per_shard: usize,
    hasher: RandomState,
}

impl ChainCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// Keyed by a keyed hash of the token's last 64 bytes (the leaf's
    /// signature); a hit still compares the whole token.
    fn key(&self, token: &str) -> u64 {
        let tail = &token.as_bytes()[token.len().saturating_sub(64)..];
        self.hasher.hash_one((token.len(), tail))
    }

    pub fn get(&self, token: &str) -> Option<Arc<VerifiedChain>> {
        let k = self.key(token);
        let shard = self.shards[k as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match shard.get(&k) {
            Some((t, chain)) if **t == *token => Some(chain.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, token: &str, chain: Arc<VerifiedChain>) {
        let k = self.key(token);
        let mut shard = self.shards[k as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard {
            // Bounded: drop an arbitrary half rather than track recency on the hot path.
            let drop: Vec<u64> = shard.keys().take(self.per_shard / 2 + 1).copied().collect();
            for d in drop {
                shard.remove(&d);
            }
        }
        shard.insert(k, (token.into(), chain));
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}
