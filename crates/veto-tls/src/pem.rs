//! Reading PEM files: certificates, private keys, CA bundles.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// What was wrong with a TLS file or setting. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file has no PEM block at all (perhaps DER, or the wrong file).
    #[error("`{path}` is not PEM: expected `-----BEGIN CERTIFICATE-----` or `-----BEGIN PRIVATE KEY-----` blocks (convert DER with `openssl x509 -inform der`)")]
    NotPem {
        /// The file.
        path: PathBuf,
    },
    /// A PEM block is malformed (bad base64, no end line).
    #[error("`{path}` has a malformed PEM block: {detail}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        detail: String,
    },
    /// The file is PEM but holds no certificate.
    #[error("`{path}` holds no certificates (no `-----BEGIN CERTIFICATE-----` block)")]
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
    /// The file is PEM but holds no private key.
    #[error("`{path}` holds no private key (expected a PKCS#8, PKCS#1 or SEC1 PEM block)")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in a CA bundle cannot be a trust anchor.
    #[error("`{path}`: certificate {index} is not a usable CA certificate: {detail}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Which certificate (0-based).
        index: usize,
        /// What rustls said.
        detail: String,
    },
    /// The key is of a kind ring cannot sign with, or does not belong to
    /// the certificate.
    #[error("`{key}` cannot serve `{cert}`: {detail}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        detail: String,
    },
    /// rustls refused the configuration (for example, a client CA bundle
    /// it cannot build a verifier from).
    #[error("{what}: {detail}")]
    Config {
        /// What was being built, naming the file.
        what: String,
        /// What rustls said.
        detail: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// The certificates in a PEM file, in order (a leaf first, then its
/// intermediates, for a server chain). Errors: unreadable, not PEM, a
/// malformed block, or no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        e => TlsError::BadPem {
            path: path.to_owned(),
            detail: e.to_string(),
        },
    })
}

/// The roots a veto client trusts: the Mozilla roots compiled in
/// (`webpki-roots`) plus every certificate of `ca_file`, a PEM bundle.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        add_bundle(&mut roots, path)?;
    }
    Ok(roots)
}

/// Adds every certificate of the PEM bundle at `path` to `roots`.
pub(crate) fn add_bundle(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    for (index, cert) in load_certs(path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_owned(),
            index,
            detail: e.to_string(),
        })?;
    }
    Ok(())
}
