//! The pure planner: what a group of revocation requests writes on top of
//! the stored state, decided without I/O so both backends write the same
//! thing and it is testable on its own (`tests.rs`).

use std::collections::HashMap;

use veto_core::{Entry, EntryKind, Head, Reason, Removed, SrlSigner};

use super::{Committed, EntryOutcome, NewEntry};

/// A version to insert.
pub(crate) struct VersionRow {
    pub ver: u64,
    pub head: Head,
    pub iat: u64,
    pub jws: String,
}

/// An audit record to insert.
pub(crate) struct AuditRow {
    pub at: u64,
    pub actor: String,
    pub action: &'static str,
    pub kind: Option<EntryKind>,
    pub id: Option<String>,
    pub reason: Option<Reason>,
    pub before: Option<u64>,
    pub expires_at: Option<u64>,
    pub note: Option<String>,
    pub ver: Option<u64>,
}

/// What one group of revocation requests writes.
pub(crate) struct Plan {
    pub results: Vec<Committed>,
    pub versions: Vec<VersionRow>,
    /// Entries to upsert, with the version that last published them: one
    /// row per (kind, id), holding the join of everything asked for it.
    pub entries: Vec<(Entry, u64)>,
    /// Live entries published before this group whose life only grew:
    /// (kind, id, new `expires_at`, `None` = never). No version: expiry is
    /// registry bookkeeping (authorizers neither store nor apply it; an
    /// entry leaves their state only through a pruning delta's `rm`).
    pub extend: Vec<(EntryKind, String, Option<u64>)>,
    pub audit: Vec<AuditRow>,
}

/// A live entry as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The version that last published it.
    pub ver: u64,
    /// The agent cutoff (agents only).
    pub before: Option<u64>,
    /// When it may be pruned; `None`: never.
    pub expires_at: Option<u64>,
}

/// Live entries already stored, by (kind, id).
pub(crate) type Existing = HashMap<(EntryKind, String), Stored>;

/// The longer of two lives, where `None` (no expiry) is the longest: what
/// an entry asked for twice keeps (DESIGN 5: no request narrows an
/// acknowledged revocation).
pub(crate) fn join_expiry(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

/// Decides, without I/O, what a group of requests writes on top of version
/// `ver`/`head`. Every (kind, id) keeps the join of all that was asked for
/// it: the latest agent cutoff, the longest life (no `expires_at` is the
/// longest). A request whose join moves an agent cutoff later, or revokes
/// something not live, gets a version of its own; one that only lengthens
/// a life is answered with the existing version (`created: false`) and
/// extends the stored expiry; one that changes nothing creates nothing.
pub(crate) fn plan(
    requests: &[(Vec<NewEntry>, String)],
    existing: &Existing,
    mut ver: u64,
    mut head: Head,
    signer: &SrlSigner,
    now: u64,
) -> Plan {
    let mut live = existing.clone();
    let mut plan = Plan {
        results: Vec::with_capacity(requests.len()),
        versions: Vec::new(),
        entries: Vec::new(),
        extend: Vec::new(),
        audit: Vec::new(),
    };
    // Where each key sits in `plan.entries` / `plan.extend`, so a key asked
    // for twice in one group is written once, with the join.
    let mut row_of: HashMap<(EntryKind, String), usize> = HashMap::new();
    let mut extend_of: HashMap<(EntryKind, String), usize> = HashMap::new();
    let mut extend: Vec<Option<(EntryKind, String, Option<u64>)>> = Vec::new();
    for (entries, actor) in requests {
        let mut outcomes = Vec::new();
        // Per outcome: the new expiry when the request lengthened a life.
        let mut extended: Vec<Option<Option<u64>>> = Vec::new();
        let mut added: Vec<(Entry, Option<String>)> = Vec::new();
        for new in fold_duplicates(entries) {
            let mut e = new.entry;
            let key = (e.kind, e.id.clone());
            let old = live.get(&key).copied();
            if let Some(old) = old {
                e.before = e.before.max(old.before);
                e.expires_at = join_expiry(e.expires_at, old.expires_at);
            }
            match old {
                Some(old) if old.before == e.before => {
                    let grew = old.expires_at != e.expires_at;
                    if grew {
                        live.insert(
                            key.clone(),
                            Stored {
                                expires_at: e.expires_at,
                                ..old
                            },
                        );
                        if let Some(&i) = row_of.get(&key) {
                            plan.entries[i].0.expires_at = e.expires_at;
                        } else if let Some(x) =
                            extend_of.get(&key).and_then(|&i| extend[i].as_mut())
                        {
                            x.2 = e.expires_at;
                        } else {
                            extend_of.insert(key.clone(), extend.len());
                            extend.push(Some((e.kind, e.id.clone(), e.expires_at)));
                        }
                    }
                    extended.push(grew.then_some(e.expires_at));
                    outcomes.push(EntryOutcome {
                        kind: e.kind,
                        id: e.id,
                        version: old.ver,
                        created: false,
                    });
                }
                _ => {
                    live.insert(
                        key,
                        Stored {
                            ver: ver + 1,
                            before: e.before,
                            expires_at: e.expires_at,
                        },
                    );
                    outcomes.push(EntryOutcome {
                        kind: e.kind,
                        id: e.id.clone(),
                        version: ver + 1,
                        created: true,
                    });
                    extended.push(None);
                    added.push((e, new.note));
                }
            }
        }
        // Entries that were revoked already are audited in every case; one
        // whose life grew says so, with the expiry it keeps now (absent:
        // never expires).
        for (o, grew) in outcomes.iter().zip(&extended).filter(|(o, _)| !o.created) {
            plan.audit.push(AuditRow {
                at: now,
                actor: actor.clone(),
                action: if grew.is_some() {
                    "revoke_extend"
                } else {
                    "revoke_existing"
                },
                kind: Some(o.kind),
                id: Some(o.id.clone()),
                reason: None,
                before: None,
                expires_at: grew.flatten(),
                note: None,
                ver: Some(o.version),
            });
        }
        if added.is_empty() {
            plan.results.push(Committed {
                new_version: None,
                entries: outcomes,
                added: Vec::new(),
            });
            continue;
        }
        ver += 1;
        let published: Vec<Entry> = added.iter().map(|(e, _)| e.clone()).collect();
        let (jws, new_head) = signer.delta(ver, head, now, published.clone(), Vec::new());
        plan.versions.push(VersionRow {
            ver,
            head: new_head,
            iat: now,
            jws: jws.clone(),
        });
        for (e, note) in added {
            plan.audit.push(AuditRow {
                at: now,
                actor: actor.clone(),
                action: "revoke",
                kind: Some(e.kind),
                id: Some(e.id.clone()),
                reason: Some(e.reason),
                before: e.before,
                expires_at: e.expires_at,
                note,
                ver: Some(ver),
            });
            let key = (e.kind, e.id.clone());
            // A row published anew carries the whole join, so a pending
            // expiry-only update of it is folded in.
            if let Some(i) = extend_of.remove(&key) {
                extend[i] = None;
            }
            match row_of.get(&key) {
                Some(&i) => plan.entries[i] = (e, ver),
                None => {
                    row_of.insert(key, plan.entries.len());
                    plan.entries.push((e, ver));
                }
            }
        }
        head = new_head;
        plan.results.push(Committed {
            new_version: Some((ver, new_head, jws)),
            entries: outcomes,
            added: published,
        });
    }
    plan.extend = extend.into_iter().flatten().collect();
    plan
}

/// The audit records of a pruning version.
pub(crate) fn prune_audit(removed: &[Removed], now: u64, ver: u64) -> Vec<AuditRow> {
    removed
        .iter()
        .map(|r| AuditRow {
            at: now,
            actor: "registry".into(),
            action: "prune",
            kind: Some(r.kind),
            id: Some(r.id.clone()),
            reason: None,
            before: None,
            expires_at: None,
            note: None,
            ver: Some(ver),
        })
        .collect()
}

/// The (kind, id) pairs a group of requests touches.
pub(crate) fn keys_of(requests: &[(Vec<NewEntry>, String)]) -> Vec<(EntryKind, String)> {
    let mut keys: Vec<(EntryKind, String)> = requests
        .iter()
        .flat_map(|(es, _)| es.iter().map(|e| (e.entry.kind, e.entry.id.clone())))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Folds repeats of a (kind, id) in one request into the first, keeping the
/// latest agent cutoff and the longest life: a repeat must never narrow what
/// an acknowledged request revoked.
pub(crate) fn fold_duplicates(entries: &[NewEntry]) -> Vec<NewEntry> {
    let mut index: HashMap<(EntryKind, &str), usize> = HashMap::with_capacity(entries.len());
    let mut out: Vec<NewEntry> = Vec::with_capacity(entries.len());
    for new in entries {
        match index.get(&(new.entry.kind, new.entry.id.as_str())) {
            Some(&i) => {
                let kept = &mut out[i].entry;
                kept.before = kept.before.max(new.entry.before);
                kept.expires_at = match (kept.expires_at, new.entry.expires_at) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            None => {
                index.insert((new.entry.kind, new.entry.id.as_str()), out.len());
                out.push(new.clone());
            }
        }
    }
    out
}
