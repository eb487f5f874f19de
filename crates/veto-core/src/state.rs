//! The authorizer's copy of the published state, and the rules for moving
//! it forward (DESIGN 4). Pure: every input is a verified object, every
//! outcome a value; the caller decides what to fetch next.

use crate::entry::EntryKind;
use crate::keys::KeySet;
use crate::set::RevocationSet;
use crate::srl::{Head, VerifiedCheckpoint, VerifiedDelta, VerifiedIssuers, VerifiedSnapshot};

/// The newest signed statement "as of `iat`, our version is current".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attestation {
    /// The version attested.
    pub ver: u64,
    /// When the authority signed it.
    pub iat: u64,
    /// Its expiry.
    pub exp: u64,
}

/// What applying an object did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The state moved to a newer version.
    Advanced {
        /// Version before.
        from: u64,
        /// Version after.
        to: u64,
    },
    /// The state is unchanged and its freshness was renewed.
    Refreshed,
    /// Already applied, or older than the state: nothing to do.
    Ignored,
}

/// Why an object was not applied. Every case leaves the state unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A newer version exists than the next one: catch up by fetching the
    /// missing deltas (or a snapshot).
    #[error("gap: applied version is {applied}, received version {received}")]
    Gap {
        /// The applied version.
        applied: u64,
        /// The version received.
        received: u64,
    },
    /// A snapshot (or issuer key set) older than the applied one: never
    /// roll back.
    #[error("rollback refused: applied version is {applied}, received version {received}")]
    Rollback {
        /// The applied version.
        applied: u64,
        /// The received object's version.
        received: u64,
    },
    /// Two different objects for one version, both signed by the
    /// authority: two heads of the revocation state, or two issuer key
    /// sets.
    #[error("equivocation: version {ver} was signed twice, differently")]
    Equivocation {
        /// The version.
        ver: u64,
    },
    /// The next delta does not extend the applied head.
    #[error("delta {ver} does not extend the applied head (wrong `prev`)")]
    BrokenChain {
        /// The delta's version.
        ver: u64,
    },
}

/// The applied issuer key set (DESIGN 3.5): the keys that may sign root
/// warrants, and the version of the authority-signed set they came from.
/// Pure, like [`SrlState`]; the caller verifies the set first
/// ([`crate::SrlVerifier::issuers`]).
#[derive(Clone, Debug, Default)]
pub struct IssuerSet {
    applied: Option<(u64, KeySet)>,
}

impl IssuerSet {
    /// No set applied yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The applied set's version, if any.
    pub fn ver(&self) -> Option<u64> {
        self.applied.as_ref().map(|(v, _)| *v)
    }

    /// The applied keys, if any.
    pub fn keys(&self) -> Option<&KeySet> {
        self.applied.as_ref().map(|(_, k)| k)
    }

    /// Applies a verified set: a higher version replaces the keys
    /// ([`Applied::Advanced`]; from 0 when none was applied); the applied
    /// version with the same keys changes nothing ([`Applied::Ignored`]);
    /// the applied version with other keys is [`ApplyError::Equivocation`];
    /// a lower version is [`ApplyError::Rollback`]. The same keys in
    /// another order are the same set.
    ///
    /// # Errors
    ///
    /// [`ApplyError::Rollback`], [`ApplyError::Equivocation`]; either
    /// leaves the applied set unchanged.
    pub fn apply(&mut self, set: VerifiedIssuers) -> Result<Applied, ApplyError> {
        match &self.applied {
            Some((ver, _)) if set.ver < *ver => Err(ApplyError::Rollback {
                applied: *ver,
                received: set.ver,
            }),
            Some((ver, keys)) if set.ver == *ver => {
                if same_keys(keys, &set.keys) {
                    Ok(Applied::Ignored)
                } else {
                    Err(ApplyError::Equivocation { ver: *ver })
                }
            }
            applied => {
                let from = applied.as_ref().map_or(0, |(v, _)| *v);
                let to = set.ver;
                self.applied = Some((set.ver, set.keys));
                Ok(Applied::Advanced { from, to })
            }
        }
    }
}

/// Whether two key sets hold the same keys, in any order.
fn same_keys(a: &KeySet, b: &KeySet) -> bool {
    fn kids(k: &KeySet) -> Vec<&str> {
        let mut v: Vec<&str> = k.keys().iter().map(|k| k.kid()).collect();
        v.sort_unstable();
        v
    }
    kids(a) == kids(b)
}

/// The applied revocation state.
#[derive(Clone, Debug, Default)]
pub struct SrlState {
    ver: u64,
    head: Head,
    set: RevocationSet,
    attested: Option<Attestation>,
}

impl SrlState {
    /// The empty state at version 0; never fresh until attested.
    pub fn new() -> Self {
        Self::default()
    }

    /// A state at a known version, head and set, not attested: the
    /// authority's own view of what it has committed.
    pub fn at(ver: u64, head: Head, set: RevocationSet) -> Self {
        Self {
            ver,
            head,
            set,
            attested: None,
        }
    }

    /// The applied version.
    pub fn ver(&self) -> u64 {
        self.ver
    }

    /// The applied head.
    pub fn head(&self) -> Head {
        self.head
    }

    /// The revoked entries.
    pub fn set(&self) -> &RevocationSet {
        &self.set
    }

    /// The newest attestation of this state's chain.
    pub fn attested(&self) -> Option<Attestation> {
        self.attested
    }

    /// Until when the state is fresh: `min(exp, iat + max_staleness)` of
    /// the newest attestation. A delta applied on top of an attested
    /// version keeps that attestation: the state knows at least as much as
    /// it did at `iat`.
    pub fn fresh_until(&self, max_staleness: u64) -> Option<u64> {
        self.attested
            .map(|a| a.exp.min(a.iat.saturating_add(max_staleness)))
    }

    /// Whether the state is fresh at `now`.
    pub fn is_fresh(&self, now: u64, max_staleness: u64) -> bool {
        self.fresh_until(max_staleness)
            .is_some_and(|until| now < until)
    }

    /// Seconds since the newest attestation was signed, if any.
    pub fn age(&self, now: u64) -> Option<u64> {
        self.attested.map(|a| now.saturating_sub(a.iat))
    }

    fn attest(&mut self, ver: u64, iat: u64, exp: u64) {
        // Only ever forward: a replayed older attestation renews nothing.
        if self.attested.is_none_or(|a| iat > a.iat) {
            self.attested = Some(Attestation { ver, iat, exp });
        }
    }

    /// Applies a snapshot: never rolls back; equal version with another
    /// head is an equivocation.
    pub fn apply_snapshot(&mut self, snapshot: VerifiedSnapshot) -> Result<Applied, ApplyError> {
        let VerifiedSnapshot {
            ver,
            head,
            iat,
            exp,
            set,
        } = snapshot;
        if ver < self.ver {
            return Err(ApplyError::Rollback {
                applied: self.ver,
                received: ver,
            });
        }
        if ver == self.ver {
            if head != self.head {
                return Err(ApplyError::Equivocation { ver });
            }
            self.attest(ver, iat, exp);
            return Ok(Applied::Refreshed);
        }
        let from = self.ver;
        *self = Self {
            ver,
            head,
            set,
            attested: Some(Attestation { ver, iat, exp }),
        };
        Ok(Applied::Advanced { from, to: ver })
    }

    /// Applies the next delta; ignores one already applied.
    pub fn apply_delta(&mut self, delta: &VerifiedDelta) -> Result<Applied, ApplyError> {
        let p = &delta.payload;
        if p.ver <= self.ver {
            return Ok(Applied::Ignored);
        }
        if p.ver > self.ver + 1 {
            return Err(ApplyError::Gap {
                applied: self.ver,
                received: p.ver,
            });
        }
        if p.prev != self.head {
            return Err(ApplyError::BrokenChain { ver: p.ver });
        }
        for e in &p.rm {
            self.set
                .remove(e.kind, &crate::entry::Digest::of(e.kind, &e.id));
        }
        for e in &p.add {
            let value = if e.kind == EntryKind::Agent {
                e.before.unwrap_or(0)
            } else {
                0
            };
            self.set.insert(e.kind, e.digest(), value);
        }
        let from = self.ver;
        self.ver = p.ver;
        self.head = delta.head;
        Ok(Applied::Advanced { from, to: p.ver })
    }

    /// Applies a checkpoint: renews freshness when it attests our head.
    pub fn apply_checkpoint(
        &mut self,
        checkpoint: &VerifiedCheckpoint,
    ) -> Result<Applied, ApplyError> {
        let p = &checkpoint.payload;
        if p.ver < self.ver {
            return Ok(Applied::Ignored);
        }
        if p.ver > self.ver {
            return Err(ApplyError::Gap {
                applied: self.ver,
                received: p.ver,
            });
        }
        if p.head != self.head {
            return Err(ApplyError::Equivocation { ver: p.ver });
        }
        self.attest(p.ver, p.iat, p.exp);
        Ok(Applied::Refreshed)
    }
}
