//! A listener's TLS: its certificate reloaded when the files change, and
//! an optional request for client certificates.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::watch;

use crate::pem::{add_bundle, load_certs, load_key, TlsError};
use crate::provider;

/// How often [`ServerTls::watch`] looks at the files' modification times.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// A listener's TLS configuration. The certificate chain and key are read
/// from files and read again when either file's modification time or
/// length changes (see [`ServerTls::watch`]) or on SIGHUP; a new file
/// that does not load (half written, wrong key) leaves the current
/// certificate in place and is logged. New connections get the newest
/// certificate; open ones keep theirs. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    cert: Arc<Reloading>,
    client_auth: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert.cert)
            .field("key", &self.cert.key)
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

impl ServerTls {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (its PEM private
    /// key). With `client_ca` (a PEM bundle), clients are asked for a
    /// certificate chaining to one of its CAs; a client that sends none is
    /// still accepted (the server checks per request, see
    /// [`ServerTls::requests_client_certs`]), one that sends an invalid
    /// one is refused in the handshake. ALPN offers `http/1.1`.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let current = load_pair(cert, key)?;
        let reloading = Arc::new(Reloading {
            cert: cert.to_owned(),
            key: key.to_owned(),
            stamps: Mutex::new(stamps(cert, key)),
            current: ArcSwap::from_pointee(current),
        });
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config {
                what: "the server protocol versions".into(),
                detail: e.to_string(),
            })?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                add_bundle(&mut roots, path)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TlsError::Config {
                            what: format!("client certificate verifier from `{}`", path.display()),
                            detail: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(reloading.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            cert: reloading,
            client_auth: client_ca.is_some(),
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// An acceptor for incoming connections.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Whether clients are asked for certificates (`client_ca` was given).
    pub fn requests_client_certs(&self) -> bool {
        self.client_auth
    }

    /// Reads the files again if their modification time or length changed
    /// since the last load; returns whether a new certificate was
    /// installed. A file that does not load keeps the current certificate
    /// and returns the error (and it is tried again at the next change).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.cert.reload(false)
    }

    /// Reads the files again now, changed or not.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.cert.reload(true)
    }

    /// Watches the files until `stop` turns true: every `interval`
    /// ([`DEFAULT_RELOAD_INTERVAL`]) it reloads changed files, and on
    /// SIGHUP it reloads them regardless. Outcomes are logged.
    pub async fn watch(self, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates are reloaded on file changes only");
                None
            }
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            match self.cert.reload(forced) {
                Ok(true) => {
                    tracing::info!(cert = %self.cert.cert.display(), "loaded a new TLS certificate")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "the new TLS certificate does not load; still serving the previous one")
                }
            }
        }
    }
}

/// The certificate files and the certificate in use.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    /// Modification time and length of each file at the last attempt.
    stamps: Mutex<[Option<(SystemTime, u64)>; 2]>,
    current: ArcSwap<CertifiedKey>,
}

impl Reloading {
    fn reload(&self, forced: bool) -> Result<bool, TlsError> {
        let now = stamps(&self.cert, &self.key);
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if !forced && *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let pair = load_pair(&self.cert, &self.key)?;
        self.current.store(Arc::new(pair));
        Ok(true)
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn stamps(cert: &Path, key: &Path) -> [Option<(SystemTime, u64)>; 2] {
    [stamp(cert), stamp(key)]
}

/// A certificate chain and its key, checked to belong together.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    let mismatch = |detail: String| TlsError::KeyMismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        detail,
    };
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| mismatch(e.to_string()))
}
