//! A chain's check record: everything the per-request check reads, built
//! once when the chain is parsed and laid out in one contiguous buffer.
//!
//! A verified chain is checked again on every request (revocation, time,
//! action; DESIGN 4). Read from the parsed links, that touches every link's
//! claims, three probe vectors and the leaf's pattern vectors — a dozen
//! scattered heap blocks, each a cache miss once thousands of distinct
//! chains rotate through a gateway. The record keeps the two time bounds
//! and the probe digests and the leaf's patterns in one contiguous buffer —
//! inline in the record for chains up to depth 4 or so — so a cache-cold
//! check reads a few adjacent cache lines plus the revocation set's Bloom
//! blocks. The links stay as they were, for the messages of a denial.
//!
//! Buffer layout (lengths from the counts):
//!
//! ```text
//! warrants: 12-byte digest × n_warrants     one per link `jti`
//! keys:     12-byte digest × n_keys         the root's `kid`, each bound `cnf` key
//! agents:   12-byte digest + u64 (LE) iat × n_agents   one per `sub`, its oldest `iat`
//! actions:  the leaf's patterns as an action program (see `action::write_program`)
//! ```

use crate::action::{self, ActionSet};
use crate::entry::{Digest, DIGEST_BYTES};

const AGENT_BYTES: usize = DIGEST_BYTES + 8;

/// What a chain is checked against, gathered from its links.
pub(crate) struct RecordParts<'a> {
    /// The earliest `exp` of any link (Unix seconds).
    pub not_after: u64,
    /// The latest `max(nbf, iat)` of any link (Unix seconds; 0 when none).
    pub not_before: u64,
    /// One digest per link `jti`.
    pub warrants: &'a [Digest],
    /// The root's `kid` and each bound key, once each.
    pub keys: &'a [Digest],
    /// One digest per `sub`, with its oldest `iat`.
    pub agents: &'a [(Digest, u64)],
    /// The leaf's patterns.
    pub actions: Option<&'a ActionSet>,
}

/// What the per-request check reads of a chain (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct CheckRecord {
    /// The earliest `exp` of any link (Unix seconds).
    not_after: u64,
    /// The latest `max(nbf, iat)` of any link (Unix seconds; 0 when none).
    not_before: u64,
    n_warrants: u16,
    n_keys: u16,
    n_agents: u16,
    bytes: Bytes,
}

/// Bytes a depth-4 chain's record needs fit inline (13 probes, 4 agent
/// `iat`s and a few patterns), so the check reads them from the record
/// itself, one dependent cache miss fewer than behind a pointer; longer
/// chains or pattern lists go to the heap.
const INLINE: usize = 256;

#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "inline on purpose: the per-request check reads the bytes without a pointer chase"
)]
enum Bytes {
    Inline { len: u16, buf: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Bytes {
    fn new(v: Vec<u8>) -> Self {
        match u16::try_from(v.len()) {
            Ok(len) if v.len() <= INLINE => {
                let mut buf = [0u8; INLINE];
                buf[..v.len()].copy_from_slice(&v);
                Self::Inline { len, buf }
            }
            _ => Self::Heap(v.into_boxed_slice()),
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Self::Inline { len, buf } => &buf[..usize::from(*len)],
            Self::Heap(b) => b,
        }
    }
}

impl CheckRecord {
    /// Lays out what [`ParsedChain::parse`](crate::ParsedChain::parse)
    /// gathered from a chain's links.
    pub(crate) fn new(parts: RecordParts<'_>) -> Self {
        let RecordParts {
            not_after,
            not_before,
            warrants,
            keys,
            agents,
            actions,
        } = parts;
        let mut bytes = Vec::with_capacity(
            (warrants.len() + keys.len()) * DIGEST_BYTES + agents.len() * AGENT_BYTES + 64,
        );
        for d in warrants.iter().chain(keys) {
            bytes.extend_from_slice(&d.0);
        }
        for (d, iat) in agents {
            bytes.extend_from_slice(&d.0);
            bytes.extend_from_slice(&iat.to_le_bytes());
        }
        if let Some(actions) = actions {
            actions.write_program(&mut bytes);
        }
        let count = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        Self {
            not_after,
            not_before,
            n_warrants: count(warrants.len()),
            n_keys: count(keys.len()),
            n_agents: count(agents.len()),
            bytes: Bytes::new(bytes),
        }
    }

    /// The earliest `exp` of any link (Unix seconds).
    pub(crate) fn not_after(&self) -> u64 {
        self.not_after
    }

    /// Whether every link is within its validity at `now`, allowing `skew`
    /// seconds for `nbf`/`iat` (the same test as each link's, combined).
    pub(crate) fn in_time(&self, now: u64, skew: u64) -> bool {
        now < self.not_after && self.not_before <= now.saturating_add(skew)
    }

    fn digests(&self, from: usize, n: u16) -> impl Iterator<Item = Digest> + '_ {
        self.bytes[from..from + usize::from(n) * DIGEST_BYTES]
            .chunks_exact(DIGEST_BYTES)
            .map(digest)
    }

    /// One digest per link `jti`.
    pub(crate) fn warrants(&self) -> impl Iterator<Item = Digest> + '_ {
        self.digests(0, self.n_warrants)
    }

    /// One digest per key that signs or is bound in the chain.
    pub(crate) fn keys(&self) -> impl Iterator<Item = Digest> + '_ {
        self.digests(usize::from(self.n_warrants) * DIGEST_BYTES, self.n_keys)
    }

    fn agents_at(&self) -> usize {
        (usize::from(self.n_warrants) + usize::from(self.n_keys)) * DIGEST_BYTES
    }

    /// One digest per agent, with the oldest `iat` of its links.
    pub(crate) fn agents(&self) -> impl Iterator<Item = (Digest, u64)> + '_ {
        let from = self.agents_at();
        self.bytes[from..from + usize::from(self.n_agents) * AGENT_BYTES]
            .chunks_exact(AGENT_BYTES)
            .map(|rec| {
                let (d, iat) = rec.split_at(DIGEST_BYTES);
                let mut b = [0u8; 8];
                b.copy_from_slice(iat);
                (digest(d), u64::from_le_bytes(b))
            })
    }

    /// Calls `f` with every probe digest's bytes as they lie in the
    /// buffer (warrants, keys, agents), without copying: the Bloom pass
    /// of the revocation check.
    #[inline]
    pub(crate) fn for_each_probe(&self, mut f: impl FnMut(&[u8; DIGEST_BYTES])) {
        let ids = (usize::from(self.n_warrants) + usize::from(self.n_keys)) * DIGEST_BYTES;
        let agents = usize::from(self.n_agents) * AGENT_BYTES;
        let (ids, rest) = self.bytes.split_at(ids.min(self.bytes.len()));
        for d in ids.chunks_exact(DIGEST_BYTES) {
            if let Some(d) = d.first_chunk() {
                f(d);
            }
        }
        for rec in rest[..agents.min(rest.len())].chunks_exact(AGENT_BYTES) {
            if let Some(d) = rec.first_chunk() {
                f(d);
            }
        }
    }

    /// Whether the leaf's patterns permit `action`.
    pub(crate) fn allows(&self, action: &str) -> bool {
        let from = self.agents_at() + usize::from(self.n_agents) * AGENT_BYTES;
        action::program_allows(&self.bytes[from..], action.as_bytes())
    }
}

fn digest(bytes: &[u8]) -> Digest {
    let mut d = [0u8; DIGEST_BYTES];
    d.copy_from_slice(bytes);
    Digest(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryKind;

    fn record(patterns: &[String]) -> CheckRecord {
        let d = |k, s: &str| Digest::of(k, s);
        let warrants = [d(EntryKind::Warrant, "w0"), d(EntryKind::Warrant, "w1")];
        let keys = [d(EntryKind::Key, "k0")];
        let agents = [(d(EntryKind::Agent, "a0"), 7)];
        let actions = ActionSet::parse(patterns).unwrap();
        CheckRecord::new(RecordParts {
            not_after: 100,
            not_before: 10,
            warrants: &warrants,
            keys: &keys,
            agents: &agents,
            actions: Some(&actions),
        })
    }

    /// Inline and on the heap, the record reads back what it was given.
    #[test]
    fn reads_back_inline_and_on_the_heap() {
        let short = vec!["http:GET:/orders/*".to_owned()];
        let long: Vec<String> = (0..20)
            .map(|i| format!("http:GET:/path-{i:03}/*"))
            .collect();
        for (patterns, inline) in [(short, true), (long, false)] {
            let r = record(&patterns);
            assert_eq!(matches!(r.bytes, Bytes::Inline { .. }), inline);
            assert_eq!(r.warrants().count(), 2);
            assert_eq!(
                r.keys().collect::<Vec<_>>(),
                [Digest::of(EntryKind::Key, "k0")]
            );
            assert_eq!(
                r.agents().collect::<Vec<_>>(),
                [(Digest::of(EntryKind::Agent, "a0"), 7)]
            );
            let mut probes = 0;
            r.for_each_probe(|_| probes += 1);
            assert_eq!(probes, 4);
            let allowed = if inline {
                "http:GET:/orders/7"
            } else {
                "http:GET:/path-019/x"
            };
            assert!(r.allows(allowed));
            assert!(!r.allows("http:POST:/orders/7"));
            assert!(r.in_time(50, 0) && !r.in_time(100, 0) && !r.in_time(5, 4) && r.in_time(5, 5));
        }
    }
}
