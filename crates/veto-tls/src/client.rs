//! What a client trusts, and how it checks a server.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::pem::{load_certs, load_key, root_store, TlsError};
use crate::provider;

/// How a client checks the server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCheck {
    /// The chain must lead to a trusted root and the certificate must name
    /// the host dialled (RFC 5280 path validation, RFC 6125 names). The
    /// only mode veto uses over HTTP; PostgreSQL's `verify-full`.
    Full,
    /// The chain must lead to a trusted root; the name is not checked.
    /// PostgreSQL's `verify-ca`.
    ChainOnly,
    /// The connection is encrypted but the server is not authenticated:
    /// anyone on the path can impersonate it. PostgreSQL's `require` and
    /// `prefer`, as libpq defines them; never used for HTTP.
    Unverified,
}

/// A client TLS configuration: trusted roots (webpki roots plus an
/// optional PEM CA bundle), an optional client certificate, ring as the
/// provider, TLS 1.2 and 1.3. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the webpki roots plus `ca_file` (a PEM bundle), presents
    /// `identity` (a certificate chain file and its key file) when given,
    /// and checks servers as `check` says.
    ///
    /// Errors name the file: unreadable, not PEM, no certificates, no key,
    /// a key that does not match the certificate.
    pub fn new(
        ca_file: Option<&Path>,
        identity: Option<(&Path, &Path)>,
        check: ServerCheck,
    ) -> Result<Self, TlsError> {
        let roots = Arc::new(root_store(ca_file)?);
        let what = || match ca_file {
            Some(p) => format!("the roots with `{}`", p.display()),
            None => "the webpki roots".to_owned(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config {
                what: what(),
                detail: e.to_string(),
            })?;
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::Config {
                what: what(),
                detail: e.to_string(),
            })?;
        let verifier: Arc<dyn ServerCertVerifier> = match check {
            ServerCheck::Full => verifier,
            ServerCheck::ChainOnly | ServerCheck::Unverified => Arc::new(Relaxed {
                inner: verifier,
                check,
            }),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = load_certs(cert)?;
                let der = load_key(key)?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| TlsError::KeyMismatch {
                        cert: cert.to_owned(),
                        key: key.to_owned(),
                        detail: e.to_string(),
                    })?
            }
        };
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// Reads `ca_file` (webpki roots when `None`), full verification, no
    /// client certificate: what every veto HTTP client uses.
    pub fn with_ca_file(ca_file: Option<&Path>) -> Result<Self, TlsError> {
        Self::new(ca_file, None, ServerCheck::Full)
    }

    /// The rustls configuration (for reqwest's `use_preconfigured_tls`,
    /// hyper-rustls, tokio-rustls).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

/// The webpki verifier with part of the certificate check relaxed, as a
/// libpq `sslmode` asks: `ChainOnly` (`verify-ca`) accepts a valid chain
/// whatever name it carries; `Unverified` (`require`/`prefer`) accepts any
/// certificate. The handshake signatures are always verified, so the
/// session is bound to the key in the presented certificate.
#[derive(Debug)]
struct Relaxed {
    inner: Arc<WebPkiServerVerifier>,
    check: ServerCheck,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check == ServerCheck::Unverified {
            return Ok(ServerCertVerified::assertion());
        }
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.check == ServerCheck::ChainOnly => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
