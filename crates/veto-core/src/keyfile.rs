//! Key files: JWKs on disk. This is the one place the core touches the file
//! system; it does so synchronously and only when asked.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::keys::{KeyError, PublicKey, SigningKey};

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("key file `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file does not hold a usable key.
    #[error("key file `{path}`: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with the key.
        source: KeyError,
    },
    /// The file exists already; keys are never overwritten.
    #[error("key file `{0}` exists already: choose another path or remove it first")]
    Exists(PathBuf),
    /// The path names a directory or ends in `..`, not a file.
    #[error("key file `{0}`: the path names no file (it ends in `/` or `..`): give a file name")]
    NotAFile(PathBuf),
}

fn read(path: &Path) -> Result<String, KeyFileError> {
    fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.into(),
        source,
    })
}

/// Reads a private key from a JWK file.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    SigningKey::from_jwk_json(&read(path)?).map_err(|source| KeyFileError::Key {
        path: path.into(),
        source,
    })
}

/// Reads a public key from a JWK file (a private key file gives its public half).
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyFileError> {
    PublicKey::from_jwk_json(&read(path)?).map_err(|source| KeyFileError::Key {
        path: path.into(),
        source,
    })
}

/// Writes a private key as a JWK file readable only by its owner (mode 0600).
/// The key is written to a temporary file first and renamed into place, so a
/// crash never leaves a half-written key; an existing file is never replaced.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    write_new(path, key.to_private_jwk().to_json().as_bytes(), true)
}

/// Writes a public key as a JWK file (mode 0644).
pub fn write_public_key(path: &Path, key: &PublicKey) -> Result<(), KeyFileError> {
    write_new(path, key.to_jwk().to_json().as_bytes(), false)
}

/// Writes `bytes` to a new file at `path`, atomically, refusing to replace one.
pub fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<(), KeyFileError> {
    if path.exists() {
        return Err(KeyFileError::Exists(path.into()));
    }
    let io = |source| KeyFileError::Io {
        path: path.into(),
        source,
    };
    let Some(file_name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Err(KeyFileError::NotAFile(path.into()));
    };
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        // hard_link fails if `path` appeared meanwhile: never replace a key.
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    result.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.into())
        } else {
            io(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_file_round_trip_and_mode() {
        let dir = std::env::temp_dir().join(format!("veto-keyfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.jwk");
        let _ = fs::remove_file(&path);
        let key = SigningKey::generate().unwrap();
        write_signing_key(&path, &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(read_signing_key(&path).unwrap().kid(), key.kid());
        assert_eq!(read_public_key(&path).unwrap(), *key.public());
        assert!(matches!(
            write_signing_key(&path, &key),
            Err(KeyFileError::Exists(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_that_names_no_file_is_refused_by_name() {
        let key = SigningKey::generate().unwrap();
        let dir = std::env::temp_dir().join(format!("veto-keyfile-nf-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for path in [dir.join(".."), PathBuf::from("/")] {
            let err = write_signing_key(&path, &key).unwrap_err();
            assert!(
                matches!(err, KeyFileError::NotAFile(_) | KeyFileError::Exists(_)),
                "{path:?}: {err}"
            );
        }
        let err = write_public_key(&dir.join("sub").join(".."), key.public()).unwrap_err();
        assert!(matches!(err, KeyFileError::NotAFile(_)), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
