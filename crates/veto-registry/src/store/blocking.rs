//! The one place where the blocking SQLite store meets async callers: each
//! call moves its arguments onto the blocking pool, runs there, and comes
//! back through a boxed future, so a commit waiting on `fsync` never holds
//! a runtime worker.

use std::sync::Arc;

use veto_core::{Head, SrlSigner};

#[cfg(test)]
use super::LiveRow;
use super::{
    AuditFilter, AuditRecord, Backend, Committed, GatewayRow, IssuerKeyRow, Loaded, NewEntry,
    Pruned, ReportRow, SqliteStore, StoreError, StoreFuture, TokenRow,
};

/// [`SqliteStore`] as a [`Backend`]: every call on the blocking pool.
pub(crate) struct OnBlockingPool(Arc<SqliteStore>);

impl OnBlockingPool {
    pub(crate) fn new(store: SqliteStore) -> Self {
        Self(Arc::new(store))
    }

    /// Runs `f` on the blocking pool.
    fn run<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.0);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&store))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        })
    }
}

impl Backend for OnBlockingPool {
    fn meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        let key = key.to_owned();
        self.run(move |s| s.meta(&key))
    }

    fn meta_or_set<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(move |s| s.meta_or_set(&key, &value))
    }

    fn load(&self) -> StoreFuture<'_, Loaded> {
        self.run(SqliteStore::load)
    }

    #[cfg(test)]
    fn live(&self) -> StoreFuture<'_, Vec<LiveRow>> {
        self.run(SqliteStore::live)
    }

    fn commit(
        &self,
        requests: Vec<(Vec<NewEntry>, String)>,
        signer: SrlSigner,
        now: u64,
    ) -> StoreFuture<'_, Vec<Committed>> {
        self.run(move |s| s.commit(&requests, &signer, now))
    }

    fn prune(&self, signer: SrlSigner, now: u64, limit: usize) -> StoreFuture<'_, Option<Pruned>> {
        self.run(move |s| s.prune(&signer, now, limit))
    }

    fn deltas(
        &self,
        since: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreFuture<'_, Vec<(u64, String)>> {
        self.run(move |s| s.deltas(since, upto, limit, max_bytes))
    }

    fn head(&self) -> StoreFuture<'_, (u64, Head)> {
        self.run(SqliteStore::head)
    }

    fn drop_deltas(&self, upto: u64, only_published: bool) -> StoreFuture<'_, usize> {
        self.run(move |s| s.drop_deltas(upto, only_published))
    }

    fn audit<'a>(
        &'a self,
        now: u64,
        actor: &'a str,
        action: &'a str,
        id: Option<&'a str>,
        note: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        let (actor, action) = (actor.to_owned(), action.to_owned());
        let (id, note) = (id.map(str::to_owned), note.map(str::to_owned));
        self.run(move |s| s.audit(now, &actor, &action, id.as_deref(), note.as_deref()))
    }

    fn audit_log(&self, filter: AuditFilter) -> StoreFuture<'_, Vec<AuditRecord>> {
        self.run(move |s| s.audit_log(&filter))
    }

    fn issuer_keys(&self) -> StoreFuture<'_, Vec<IssuerKeyRow>> {
        self.run(SqliteStore::issuer_keys)
    }

    fn add_issuer_key<'a>(
        &'a self,
        kid: &'a str,
        private_jwk: &'a str,
        now: u64,
        actor: &'a str,
    ) -> StoreFuture<'a, ()> {
        let (kid, jwk, actor) = (kid.to_owned(), private_jwk.to_owned(), actor.to_owned());
        self.run(move |s| s.add_issuer_key(&kid, &jwk, now, &actor))
    }

    fn tokens(&self) -> StoreFuture<'_, Vec<TokenRow>> {
        self.run(SqliteStore::tokens)
    }

    fn add_token<'a>(&'a self, row: &'a TokenRow, actor: &'a str) -> StoreFuture<'a, bool> {
        let (row, actor) = (row.clone(), actor.to_owned());
        self.run(move |s| s.add_token(&row, &actor))
    }

    fn revoke_token<'a>(
        &'a self,
        name: &'a str,
        now: u64,
        actor: &'a str,
    ) -> StoreFuture<'a, bool> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.run(move |s| s.revoke_token(&name, now, &actor))
    }

    fn gateways(&self) -> StoreFuture<'_, Vec<GatewayRow>> {
        self.run(SqliteStore::gateways)
    }

    fn enrol_gateway<'a>(&'a self, row: &'a GatewayRow, actor: &'a str) -> StoreFuture<'a, bool> {
        let (row, actor) = (row.clone(), actor.to_owned());
        self.run(move |s| s.enrol_gateway(&row, &actor))
    }

    fn remove_gateway<'a>(
        &'a self,
        id: &'a str,
        now: u64,
        actor: &'a str,
    ) -> StoreFuture<'a, bool> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.run(move |s| s.remove_gateway(&id, now, &actor))
    }

    fn record_report<'a>(&'a self, row: &'a ReportRow) -> StoreFuture<'a, bool> {
        let row = row.clone();
        self.run(move |s| s.record_report(&row))
    }

    fn reports(&self) -> StoreFuture<'_, Vec<ReportRow>> {
        self.run(SqliteStore::reports)
    }

    fn applied_since(&self, ver: u64) -> StoreFuture<'_, Vec<(String, u64)>> {
        self.run(move |s| s.applied_since(ver))
    }

    fn prune_applied(&self, before_ms: u64) -> StoreFuture<'_, u64> {
        self.run(move |s| s.prune_applied(before_ms))
    }

    fn seal_issuer_key<'a>(&'a self, kid: &'a str, sealed: &'a str) -> StoreFuture<'a, bool> {
        let (kid, sealed) = (kid.to_owned(), sealed.to_owned());
        self.run(move |s| s.seal_issuer_key(&kid, &sealed))
    }

    fn retire_issuer_key<'a>(
        &'a self,
        kid: &'a str,
        now: u64,
        actor: &'a str,
    ) -> StoreFuture<'a, bool> {
        let (kid, actor) = (kid.to_owned(), actor.to_owned());
        self.run(move |s| s.retire_issuer_key(&kid, now, &actor))
    }

    fn unpublished(&self, limit: usize) -> StoreFuture<'_, Vec<(u64, String)>> {
        self.run(move |s| s.unpublished(limit))
    }

    fn mark_published(&self, ver: u64) -> StoreFuture<'_, ()> {
        self.run(move |s| s.mark_published(ver))
    }

    fn checkpoint(&self) -> Option<StoreFuture<'_, ()>> {
        Some(self.run(SqliteStore::checkpoint))
    }
}
