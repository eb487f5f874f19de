//! The last verified state on disk: the signed objects themselves (newest
//! snapshot, deltas since, newest checkpoint, JWKS), re-verified on start,
//! so a restart does not begin empty and trusts nothing it cannot verify.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Incoming, Inner};

const FILE: &str = "veto-authorizer-state.json";

#[derive(Default, Serialize, Deserialize)]
pub(crate) struct Objects {
    pub snapshot: Option<String>,
    pub deltas: Vec<String>,
    pub checkpoint: Option<String>,
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(skip)]
    pub dirty: bool,
}

impl Objects {
    pub fn record(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Snapshot(_, t) => {
                self.snapshot = Some(t);
                self.deltas.clear();
            }
            Incoming::Delta(_, t) => self.deltas.push(t),
            Incoming::Checkpoint(_, t) => self.checkpoint = Some(t),
        }
        self.dirty = true;
    }
}

/// Loads and re-verifies the cached objects; anything that fails to
/// verify is dropped with a warning.
pub(crate) fn load(inner: &Arc<Inner>, dir: &Path) {
    let path = dir.join(FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let objects: Objects = match serde_json::from_str(&text) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable state cache");
            return;
        }
    };
    let now = inner.now();
    let v = &inner.verifier;
    if let Some(jwks) = &objects.jwks {
        if let (crate::Issuers::Jwks { .. }, Ok(keys)) =
            (&inner.config.issuers, crate::sync::parse_jwks(jwks))
        {
            inner.set_issuers(keys);
            if let Ok(mut o) = inner.apply_lock.lock() {
                o.jwks = Some(jwks.clone());
            }
        }
    }
    let mut loaded = 0;
    if let Some(t) = objects.snapshot {
        match v.snapshot(&t, now) {
            Ok(s) => loaded += usize::from(inner.apply(Incoming::Snapshot(s, t)).is_ok()),
            Err(e) => tracing::warn!(error = %e, "cached snapshot does not verify; ignoring it"),
        }
    }
    for t in objects.deltas {
        match v.delta(&t, now) {
            Ok(d) => loaded += usize::from(inner.apply(Incoming::Delta(d, t)).is_ok()),
            Err(e) => tracing::warn!(error = %e, "cached delta does not verify; ignoring it"),
        }
    }
    if let Some(t) = objects.checkpoint {
        if let Ok(c) = v.checkpoint(&t, now) {
            let _ = inner.apply(Incoming::Checkpoint(c, t));
        }
    }
    let c = inner.current.load();
    tracing::info!(
        version = c.state.ver(),
        objects = loaded,
        "loaded the cached revocation state (still subject to staleness)"
    );
}

pub(crate) async fn persist_loop(inner: Arc<Inner>, dir: PathBuf) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        let stopping = tokio::select! {
            _ = inner.persist_now.notified() => false,
            _ = stop.changed() => true,
        };
        if !stopping {
            // Coalesce bursts: at most one write a second (but flush at once
            // when shutting down meanwhile).
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
        }
        write_if_dirty(&inner, &dir).await;
        if stopping || *stop.borrow() {
            return;
        }
    }
}

async fn write_if_dirty(inner: &Inner, dir: &Path) {
    let json = {
        let Ok(mut o) = inner.apply_lock.lock() else {
            return;
        };
        if !o.dirty {
            return;
        }
        o.dirty = false;
        serde_json::to_vec(&*o)
    };
    let Ok(json) = json else { return };
    let path = dir.join(FILE);
    let result = tokio::task::spawn_blocking(move || write_atomic(&path, &json)).await;
    if let Ok(Err(e)) = result {
        tracing::warn!(error = %e, "cannot write the state cache");
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}
