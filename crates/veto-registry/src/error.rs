//! Why the registry could not start or run.

use std::path::{Path, PathBuf};

use veto_core::keyfile;

use crate::store::StoreError;

/// Why the registry could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A file in the data directory could not be used.
    #[error("data directory `{path}`: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file could not be used.
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store was written by another authority: its authority key id
    /// or `iss` differs from this registry's.
    #[error("the store was written with {what} `{stored}`, not `{ours}`: every replica must use the same authority key and iss; use the original {what}, or a new store")]
    Mismatch {
        /// `authority_kid` or `iss`.
        what: &'static str,
        /// What the store holds.
        stored: String,
        /// What this registry has.
        ours: String,
    },
    /// The operating system's random source failed (for a token or a key).
    #[error("no randomness available from the operating system: {0}")]
    Random(String),
    /// [`Registry::serve`] was called twice on one registry.
    #[error("this registry is already serving")]
    AlreadyServing,
    /// The admin token is too weak to guard the admin API.
    #[error("{0}")]
    WeakAdminToken(String),
    /// A sealed issuer key does not open (another authority's database, or
    /// an altered row), or cannot be sealed.
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
}

/// Maps an I/O error on `path` in the data directory.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::DataDir {
        path: path.into(),
        source,
    }
}
