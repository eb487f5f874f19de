//! The set of revoked digests, built for the per-request check.
//!
//! A snapshot gives sorted tables (`Base`, shared by `Arc`); deltas go to a
//! small overlay, and the overlay is folded into new tables once it grows.
//! A blocked Bloom filter sits in front of everything: for an unrevoked
//! chain every probe is one cache line and no table is touched. Cloning a
//! set is cheap, so the authorizer applies a change to a copy and swaps it.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use crate::entry::{Digest, EntryKind, DIGEST_BYTES};
use crate::record::CheckRecord;

impl Hash for Digest {
    // Digests are uniformly distributed already: their first 8 bytes are the hash.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Build = BuildHasherDefault<PassThrough>;

/// A blocked Bloom filter: each digest sets 7 bits in one 64-byte block.
#[derive(Clone)]
struct Bloom {
    blocks: Vec<[u64; 8]>,
    mask: u32,
}

impl Bloom {
    fn with_capacity(n: usize) -> Self {
        // About 16 bits per entry, with room for the overlay to grow.
        let blocks = (n.max(1024) * 16 / 512).next_power_of_two();
        Self {
            blocks: vec![[0; 8]; blocks],
            mask: (blocks - 1) as u32,
        }
    }

    #[inline]
    fn split(&self, d: &Digest) -> (usize, u64) {
        self.split_raw(&d.0)
    }

    /// `split` of a digest's 12 bytes as they lie in a check record.
    #[inline]
    fn split_raw(&self, b: &[u8; DIGEST_BYTES]) -> (usize, u64) {
        let block = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & self.mask;
        let bits = u64::from_le_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]);
        (block as usize, bits)
    }

    fn insert(&mut self, d: &Digest) {
        let (block, mut bits) = self.split(d);
        let words = &mut self.blocks[block];
        for _ in 0..7 {
            let bit = (bits & 511) as usize;
            words[bit / 64] |= 1 << (bit % 64);
            bits >>= 9;
        }
    }

    #[inline]
    fn maybe(&self, d: &Digest) -> bool {
        self.maybe_raw(&d.0)
    }

    #[inline]
    fn maybe_raw(&self, d: &[u8; DIGEST_BYTES]) -> bool {
        let (block, mut bits) = self.split_raw(d);
        let words = &self.blocks[block];
        let mut all = true;
        for _ in 0..7 {
            let bit = (bits & 511) as usize;
            all &= words[bit / 64] & (1 << (bit % 64)) != 0;
            bits >>= 9;
        }
        all
    }
}

#[derive(Default)]
struct Base {
    warrants: Vec<Digest>,
    keys: Vec<Digest>,
    agents: Vec<(Digest, u64)>,
}

impl Base {
    fn len(&self) -> usize {
        self.warrants.len() + self.keys.len() + self.agents.len()
    }

    fn get(&self, kind: EntryKind, d: &Digest) -> Option<u64> {
        match kind {
            EntryKind::Warrant => self.warrants.binary_search(d).ok().map(|_| 0),
            EntryKind::Key => self.keys.binary_search(d).ok().map(|_| 0),
            EntryKind::Agent => self
                .agents
                .binary_search_by(|(x, _)| x.cmp(d))
                .ok()
                .map(|i| self.agents[i].1),
        }
    }
}

/// Revoked digests by kind; agents with their cutoff.
#[derive(Clone)]
pub struct RevocationSet {
    base: Arc<Base>,
    bloom: Arc<Bloom>,
    /// Added since `base`: kind and value (`before` for agents, else 0).
    added: Arc<HashMap<Digest, (EntryKind, u64), Build>>,
    /// Removed from `base` since it was built.
    removed: Arc<HashSet<Digest, Build>>,
    len: usize,
}

impl Default for RevocationSet {
    fn default() -> Self {
        Self::from_sorted(Vec::new(), Vec::new(), Vec::new())
    }
}

impl std::fmt::Debug for RevocationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RevocationSet({} entries)", self.len())
    }
}

impl PartialEq for RevocationSet {
    fn eq(&self, other: &Self) -> bool {
        self.tables() == other.tables()
    }
}

/// The entries of a set as sorted tables: warrants, agents (with cutoff), keys.
pub type Tables = (Vec<Digest>, Vec<(Digest, u64)>, Vec<Digest>);

impl RevocationSet {
    /// Builds a set from tables sorted in strictly ascending digest order
    /// (as a snapshot carries them; the caller has checked the order).
    pub fn from_sorted(
        warrants: Vec<Digest>,
        agents: Vec<(Digest, u64)>,
        keys: Vec<Digest>,
    ) -> Self {
        let base = Base {
            warrants,
            keys,
            agents,
        };
        let len = base.len();
        let mut bloom = Bloom::with_capacity(base.len());
        base.warrants
            .iter()
            .chain(&base.keys)
            .for_each(|d| bloom.insert(d));
        base.agents.iter().for_each(|(d, _)| bloom.insert(d));
        Self {
            base: Arc::new(base),
            bloom: Arc::new(bloom),
            added: Arc::default(),
            removed: Arc::default(),
            len,
        }
    }

    /// The value listed for a digest: `Some(before)` for an agent,
    /// `Some(0)` for a warrant or key, `None` when not listed.
    pub fn get(&self, kind: EntryKind, d: &Digest) -> Option<u64> {
        if !self.bloom.maybe(d) {
            return None;
        }
        if let Some(&(k, v)) = self.added.get(d) {
            return (k == kind).then_some(v);
        }
        if self.removed.contains(d) {
            return None;
        }
        self.base.get(kind, d)
    }

    /// Lists a digest; for agents the cutoff only ever moves later.
    /// Returns whether the set changed.
    pub fn insert(&mut self, kind: EntryKind, d: Digest, value: u64) -> bool {
        let current = self.get(kind, &d);
        let value = match (kind, current) {
            (EntryKind::Agent, Some(old)) if old >= value => return false,
            (EntryKind::Agent, _) => value,
            (_, Some(_)) => return false,
            (_, None) => 0,
        };
        Arc::make_mut(&mut self.bloom).insert(&d);
        if self.removed.contains(&d) {
            Arc::make_mut(&mut self.removed).remove(&d);
        }
        if self.base.get(kind, &d) == Some(value) {
            Arc::make_mut(&mut self.added).remove(&d);
        } else {
            Arc::make_mut(&mut self.added).insert(d, (kind, value));
        }
        if current.is_none() {
            self.len += 1;
        }
        self.maybe_compact();
        true
    }

    /// Unlists a digest. Returns whether the set changed.
    pub fn remove(&mut self, kind: EntryKind, d: &Digest) -> bool {
        if self.get(kind, d).is_none() {
            return false;
        }
        Arc::make_mut(&mut self.added).remove(d);
        if self.base.get(kind, d).is_some() {
            Arc::make_mut(&mut self.removed).insert(*d);
        }
        self.len -= 1;
        self.maybe_compact();
        true
    }

    /// Number of listed entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Listed entries per kind: `[warrants, agents, keys]`. Costs one
    /// look-up per entry changed since the last compaction, not one per
    /// entry.
    pub fn counts(&self) -> [usize; 3] {
        let at = |kind: EntryKind| match kind {
            EntryKind::Warrant => 0,
            EntryKind::Agent => 1,
            EntryKind::Key => 2,
        };
        let mut c = [
            self.base.warrants.len(),
            self.base.agents.len(),
            self.base.keys.len(),
        ];
        // `added` and `removed` never share a digest.
        for d in self.removed.iter() {
            for kind in [EntryKind::Warrant, EntryKind::Agent, EntryKind::Key] {
                if self.base.get(kind, d).is_some() {
                    c[at(kind)] -= 1;
                }
            }
        }
        for (d, &(kind, _)) in self.added.iter() {
            if self.base.get(kind, d).is_none() {
                c[at(kind)] += 1;
            }
        }
        c
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first probe of a chain's record that is listed: which kind and
    /// digest. Unrevoked chains cost one Bloom probe per id.
    pub(crate) fn first_hit(&self, record: &CheckRecord) -> Option<(EntryKind, Digest)> {
        // Test every probe against the filter first, without branching on
        // each, so the memory loads overlap; look further only on a hit.
        let mut any = false;
        record.for_each_probe(|d| any |= self.bloom.maybe_raw(d));
        if !any {
            return None;
        }
        if let Some(d) = record
            .warrants()
            .find(|d| self.get(EntryKind::Warrant, d).is_some())
        {
            return Some((EntryKind::Warrant, d));
        }
        if let Some((d, _)) = record.agents().find(|(d, iat)| {
            self.get(EntryKind::Agent, d)
                .is_some_and(|before| *iat <= before)
        }) {
            return Some((EntryKind::Agent, d));
        }
        record
            .keys()
            .find(|d| self.get(EntryKind::Key, d).is_some())
            .map(|d| (EntryKind::Key, d))
    }

    /// The effective entries as sorted tables.
    pub fn tables(&self) -> Tables {
        let live = |d: &Digest| !self.removed.contains(d) && !self.added.contains_key(d);
        let mut warrants: Vec<Digest> = self.base.warrants.iter().copied().filter(live).collect();
        let mut keys: Vec<Digest> = self.base.keys.iter().copied().filter(live).collect();
        let mut agents: Vec<(Digest, u64)> = self
            .base
            .agents
            .iter()
            .copied()
            .filter(|(d, _)| live(d))
            .collect();
        for (d, &(kind, v)) in self.added.iter() {
            match kind {
                EntryKind::Warrant => warrants.push(*d),
                EntryKind::Key => keys.push(*d),
                EntryKind::Agent => agents.push((*d, v)),
            }
        }
        warrants.sort_unstable();
        keys.sort_unstable();
        agents.sort_unstable();
        (warrants, agents, keys)
    }

    fn maybe_compact(&mut self) {
        let overlay = self.added.len() + self.removed.len();
        if overlay > 4096 + self.base.len() / 32 {
            let (w, a, k) = self.tables();
            *self = Self::from_sorted(w, a, k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_kind_follow_inserts_removals_and_compaction() {
        let dk = |kind, i: u32| Digest::of(kind, &i.to_string());
        let mut set = RevocationSet::from_sorted(
            {
                let mut v: Vec<_> = (0..50).map(|i| dk(EntryKind::Warrant, i)).collect();
                v.sort_unstable();
                v
            },
            {
                let mut v: Vec<_> = (0..20).map(|i| (dk(EntryKind::Agent, i), 5)).collect();
                v.sort_unstable();
                v
            },
            Vec::new(),
        );
        assert_eq!(set.counts(), [50, 20, 0]);
        // A later cutoff for a listed agent is no new entry.
        assert!(set.insert(EntryKind::Agent, dk(EntryKind::Agent, 3), 9));
        assert!(set.insert(EntryKind::Key, dk(EntryKind::Key, 1), 0));
        assert!(set.remove(EntryKind::Warrant, &dk(EntryKind::Warrant, 7)));
        assert!(set.remove(EntryKind::Agent, &dk(EntryKind::Agent, 3)));
        assert!(set.insert(EntryKind::Warrant, dk(EntryKind::Warrant, 7), 0));
        assert_eq!(set.counts(), [50, 19, 1]);
        assert_eq!(set.counts().iter().sum::<usize>(), set.len());
        // Many more: the overlay compacts into the base.
        for i in 100..6000 {
            set.insert(EntryKind::Warrant, dk(EntryKind::Warrant, i), 0);
        }
        assert_eq!(set.counts(), [5950, 19, 1]);
        assert_eq!(set.counts().iter().sum::<usize>(), set.len());
    }

    fn d(i: u32) -> Digest {
        Digest::of(EntryKind::Warrant, &i.to_string())
    }

    #[test]
    fn insert_remove_and_compaction_agree_with_a_model() {
        let mut set = RevocationSet::default();
        let mut model = std::collections::BTreeSet::new();
        for i in 0..20_000u32 {
            let x = d(i % 7000);
            if i % 3 == 0 {
                assert_eq!(set.remove(EntryKind::Warrant, &x), model.remove(&x));
            } else {
                assert_eq!(set.insert(EntryKind::Warrant, x, 0), model.insert(x));
            }
        }
        assert_eq!(set.len(), model.len());
        assert_eq!(set.tables().0, model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn agent_cutoff_only_moves_later() {
        let mut set = RevocationSet::default();
        let a = Digest::of(EntryKind::Agent, "bot");
        assert!(set.insert(EntryKind::Agent, a, 100));
        assert!(!set.insert(EntryKind::Agent, a, 50));
        assert!(set.insert(EntryKind::Agent, a, 200));
        assert_eq!(set.get(EntryKind::Agent, &a), Some(200));
        assert_eq!(set.get(EntryKind::Warrant, &a), None);
    }

    #[test]
    fn bloom_has_no_false_negatives() {
        let set = RevocationSet::from_sorted(
            {
                let mut v: Vec<_> = (0..50_000).map(d).collect();
                v.sort();
                v
            },
            vec![],
            vec![],
        );
        assert!((0..50_000).all(|i| set.get(EntryKind::Warrant, &d(i)).is_some()));
        assert!((50_000..60_000).all(|i| set.get(EntryKind::Warrant, &d(i)).is_none()));
    }
}
