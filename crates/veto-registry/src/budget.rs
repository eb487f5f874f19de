//! The bytes of deltas and snapshots the registry holds for clients at
//! once — replays, inline snapshots, delta listings — across every client:
//! a stranger who opens connections and never reads cannot make the
//! registry buffer more than [`CLIENT_BUDGET_BYTES`].

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::authority::Authority;
use crate::store::StoreError;

/// All the bytes of replayed deltas, inline snapshots and delta listings
/// the registry holds at once, across every client. A client that does not
/// read keeps its share until the subscriber timeout closes its
/// connection; others wait for theirs. (Live events are shared frames and
/// take no share: see [`crate::event::Event`].)
pub const CLIENT_BUDGET_BYTES: usize = 64 << 20;

/// The registry-wide budget of [`CLIENT_BUDGET_BYTES`]; clones share it.
#[derive(Clone)]
pub(crate) struct ClientBudget(Arc<Semaphore>);

/// A page of deltas read under the budget: `None` when some are no longer
/// retained; the share is held until the permit is dropped.
pub(crate) type Page = (Option<Vec<(u64, String)>>, OwnedSemaphorePermit);

impl ClientBudget {
    /// A budget of [`CLIENT_BUDGET_BYTES`].
    pub(crate) fn new() -> Self {
        Self(Arc::new(Semaphore::new(CLIENT_BUDGET_BYTES)))
    }

    /// Bytes held for clients now.
    pub(crate) fn in_use(&self) -> usize {
        CLIENT_BUDGET_BYTES.saturating_sub(self.0.available_permits())
    }

    /// A share of `bytes` (at least 1, at most the whole budget), or `None`
    /// when `give_up` completes first.
    pub(crate) async fn share(
        &self,
        bytes: usize,
        give_up: impl Future<Output = ()>,
    ) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes.clamp(1, CLIENT_BUDGET_BYTES)).unwrap_or(u32::MAX);
        tokio::select! {
            p = self.0.clone().acquire_many_owned(n) => p.ok(),
            _ = give_up => None,
        }
    }

    /// Reads deltas `since+1 ..= upto` from `authority`, at most
    /// `max_count` and `max_bytes` (a single larger delta comes alone),
    /// holding a share of the budget for what was read. `None` when the
    /// share was not granted before `give_up` completed; `Some(Err)` when
    /// the store failed.
    pub(crate) async fn page(
        &self,
        authority: &Authority,
        since: u64,
        upto: u64,
        max_count: usize,
        max_bytes: usize,
        give_up: impl Future<Output = ()>,
    ) -> Option<Result<Page, StoreError>> {
        tokio::pin!(give_up);
        let mut want = max_bytes.clamp(1, CLIENT_BUDGET_BYTES);
        loop {
            let mut permit = self.share(want, &mut give_up).await?;
            let page = match authority.deltas(since, upto, max_count, want).await {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            let bytes: usize = page
                .iter()
                .flatten()
                .map(|(_, j)| j.len())
                .sum::<usize>()
                .max(1);
            if bytes <= want || want == CLIENT_BUDGET_BYTES {
                // Give back what the page did not use.
                if bytes < want {
                    drop(permit.split(want - bytes));
                }
                return Some(Ok((page, permit)));
            }
            // One delta larger than the page: read it again under a share its size.
            drop((page, permit));
            want = bytes.min(CLIENT_BUDGET_BYTES);
        }
    }
}
