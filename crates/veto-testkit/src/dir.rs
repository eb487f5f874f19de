//! Directories no other test, run or process uses.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh, empty directory `<prefix>-<label>-<pid>-<n>-<nanos>` under the
/// system temporary directory; the caller removes it.
pub fn fresh_dir(prefix: &str, label: &str) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "{prefix}-{label}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let path = std::env::temp_dir().join(name);
    std::fs::create_dir(&path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("creating `{}`: {e}", path.display()))
    })?;
    Ok(path)
}

/// A fresh directory under the system temporary directory, removed on drop
/// (with the PostgreSQL schema its registries used, if any).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a directory whose name no other test (or test run) uses;
    /// panics when it cannot.
    #[expect(clippy::panic, reason = "a test kit: the test fails at this step")]
    pub fn new(label: &str) -> Self {
        match fresh_dir("veto-e2e", label) {
            Ok(path) => Self(path),
            Err(e) => panic!("{e}"),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        crate::pg::drop_registry_schema(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
