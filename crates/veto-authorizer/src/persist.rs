//! The last verified state on disk: the signed objects themselves (newest
//! snapshot, deltas since, newest checkpoint, signed issuer key set),
//! re-verified on start,
//! so a restart does not begin empty and trusts nothing it cannot verify.
//!
//! Two files: the snapshot's binary container (the JWS, `\n`, the table
//! bytes), rewritten only when the snapshot changes, and a JSON file of
//! the compact JWS of the rest. The snapshot is written first: a crash
//! between the two leaves deltas older than it (ignored as duplicates on
//! restore) or none, never a state that verifies wrongly.
//!
//! [`DiskCache`] keeps the objects to write under its own lock, apart from
//! the apply path's: the apply path records what it applied
//! ([`DiskCache::record`]) while it holds its own lock, so the recorded
//! order is the applied order (lock order: the apply lock, then this one;
//! nothing here takes the apply lock). [`DiskCache::run`] writes them,
//! coalescing bursts. What was read back ([`Saved`]) is verified and
//! applied by the sync side, which holds the verifier.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::incoming::Incoming;

const FILE: &str = "veto-authorizer-state.json";
const SNAPSHOT_FILE: &str = "veto-authorizer-snapshot.bin";

/// The signed objects as kept on disk (compact JWS forms, and the
/// snapshot's binary container; unverified until they are verified again).
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct Saved {
    /// In [`SNAPSHOT_FILE`], not in the JSON (a cache written by an
    /// older authorizer has a JWS-only `snapshot` here, which is ignored).
    #[serde(skip)]
    pub snapshot: Option<Vec<u8>>,
    pub deltas: Vec<String>,
    pub checkpoint: Option<String>,
    /// The authority-signed issuer key set last applied (never a JWKS; a
    /// cache written by an older authorizer keeps `jwks`, which is ignored).
    #[serde(default)]
    pub issuers: Option<String>,
}

#[derive(Default)]
struct Objects {
    saved: Saved,
    /// Changed since last written.
    dirty: bool,
    /// The snapshot changed since last written.
    snapshot_dirty: bool,
}

/// The signed objects recorded for the disk cache, and where they go.
pub(crate) struct DiskCache {
    dir: PathBuf,
    objects: Mutex<Objects>,
    /// Something was recorded: write soon.
    changed: Notify,
}

impl DiskCache {
    /// Creates `dir` if needed (mode 0700: only this user reads what the
    /// authorizer trusted), and reads what was kept there (if anything
    /// readable): the caller verifies it before applying it.
    pub fn open(dir: &Path) -> std::io::Result<(Self, Option<Saved>)> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let cache = Self {
            dir: dir.to_path_buf(),
            objects: Mutex::new(Objects::default()),
            changed: Notify::new(),
        };
        let saved = read(&dir.join(FILE)).map(|mut saved| {
            saved.snapshot = std::fs::read(dir.join(SNAPSHOT_FILE)).ok();
            saved
        });
        Ok((cache, saved))
    }

    fn objects(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an object that was just applied (called under the apply
    /// lock). A snapshot replaces everything before it.
    pub fn record(&self, incoming: Incoming) {
        {
            let mut guard = self.objects();
            let o = &mut *guard;
            let saved = &mut o.saved;
            match incoming {
                Incoming::Snapshot(_, t) => {
                    saved.snapshot = Some(t);
                    saved.deltas.clear();
                    o.snapshot_dirty = true;
                }
                Incoming::Delta(_, t) => saved.deltas.push(t),
                Incoming::Checkpoint(_, t) => saved.checkpoint = Some(t),
            }
            o.dirty = true;
        }
        self.changed.notify_one();
    }

    /// Keeps the signed issuer key set in use and, when it changed, writes
    /// it soon: a restart must not bring back issuer keys the registry has
    /// retired.
    pub fn record_issuers(&self, text: String) {
        {
            let mut o = self.objects();
            if o.saved.issuers.as_deref() == Some(text.as_str()) {
                return;
            }
            o.saved.issuers = Some(text);
            o.dirty = true;
        }
        self.changed.notify_one();
    }

    /// Asks for a write (of whatever changed).
    pub fn poke(&self) {
        self.changed.notify_one();
    }

    /// Deltas kept since the kept snapshot.
    pub fn kept_deltas(&self) -> usize {
        self.objects().saved.deltas.len()
    }

    /// Writes what changed, at most once a second, until `stop` turns
    /// true (flushing once more then).
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        loop {
            let stopping = tokio::select! {
                _ = self.changed.notified() => false,
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
            self.write_if_dirty().await;
            if stopping || *stop.borrow() {
                return;
            }
        }
    }

    async fn write_if_dirty(&self) {
        let (json, snapshot) = {
            let mut o = self.objects();
            if !o.dirty {
                return;
            }
            o.dirty = false;
            let snapshot = if std::mem::take(&mut o.snapshot_dirty) {
                o.saved.snapshot.clone()
            } else {
                None
            };
            (serde_json::to_vec(&o.saved), snapshot)
        };
        let Ok(json) = json else { return };
        let dir = self.dir.clone();
        let wrote_snapshot = snapshot.is_some();
        let result = tokio::task::spawn_blocking(move || {
            if let Some(bytes) = snapshot {
                write_atomic(&dir.join(SNAPSHOT_FILE), &bytes)?;
            }
            write_atomic(&dir.join(FILE), &json)
        })
        .await;
        let failed = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            tracing::warn!(error = %e, "cannot write the state cache; trying again");
            // Written again on the next round, the snapshot included: the
            // deltas in the JSON chain from it.
            let mut o = self.objects();
            o.dirty = true;
            o.snapshot_dirty |= wrote_snapshot;
        }
    }
}

fn read(path: &Path) -> Option<Saved> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(saved) => Some(saved),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable state cache");
            None
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new issuer key set is written on its own, not only with the next change of
    /// state: after a restart, a retired issuer key must not come back.
    #[tokio::test]
    async fn a_changed_issuer_set_is_written_without_waiting_for_state() {
        let dir = std::env::temp_dir().join(format!(
            "veto-persist-issuers-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (cache, saved) = DiskCache::open(&dir).unwrap();
        assert!(saved.is_none());
        cache.record_issuers(r#"{"keys":["old"]}"#.into());
        cache.write_if_dirty().await;
        cache.record_issuers(r#"{"keys":["new"]}"#.into());
        cache.write_if_dirty().await;
        let read_back = read(&dir.join(FILE)).unwrap();
        assert_eq!(read_back.issuers.as_deref(), Some(r#"{"keys":["new"]}"#));
        // The same issuer key set again is no change.
        cache.record_issuers(r#"{"keys":["new"]}"#.into());
        assert!(!cache.objects().dirty);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
