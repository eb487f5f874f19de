//! veto's NATS JetStream bus, over the official `async-nats` client: the
//! connection settings the registry (publisher) and the authorizers
//! (subscribers) share, validated once at start.
//!
//! - [`NatsSettings::new`] reads `--bus` (one or more comma-separated
//!   `nats://` or `tls://` server URLs, optionally with `user:password@` or
//!   `token@`), `--ca-file` (a PEM bundle trusted beside the webpki roots)
//!   and `--nats-creds` (a `.creds` file or an NKey user seed), and refuses
//!   anything it cannot serve with a [`SettingsError`] naming the URL or
//!   file and what to do. No secret is ever printed: URLs are shown without
//!   their credentials and files by path only.
//! - [`NatsSettings::connect`] opens a client with those settings (TLS on
//!   rustls with the ring provider, the workspace's one crypto provider);
//!   a failure is a [`ConnectError`] that tells a certificate or
//!   credential problem (configuration: it will not heal by retrying) from
//!   an unreachable server.
//!
//! The JetStream names and message ids are in `veto_core::wire::nats`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

pub use async_nats::Client;

/// How long one attempt to reach one server may take (TCP, TLS, CONNECT).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// NATS's default port.
const DEFAULT_PORT: u16 = 4222;

/// Validated settings of the NATS bus: where the servers are, whom to
/// trust, who we are. Cheap to clone; `Debug` and [`NatsSettings::servers`]
/// show no secret.
#[derive(Clone)]
pub struct NatsSettings {
    servers: Vec<ServerAddr>,
    shown: String,
    auth: Auth,
    tls: Arc<rustls::ClientConfig>,
}

/// How the client authenticates. The secrets stay in here.
#[derive(Clone)]
enum Auth {
    None,
    UserPassword { user: String, pass: String },
    Token(String),
    NKey(String),
    Creds(String),
}

impl Auth {
    fn describe(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::UserPassword { .. } => "user and password",
            Auth::Token(_) => "token",
            Auth::NKey(_) => "nkey",
            Auth::Creds(_) => "credentials file",
        }
    }
}

impl fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSettings")
            .field("servers", &self.shown)
            .field("auth", &self.auth.describe())
            .finish_non_exhaustive()
    }
}

/// Why the bus settings were refused at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// `--bus` named no server.
    #[error("the NATS URL list is empty: give one or more `nats://host:port` or `tls://host:port`, comma-separated")]
    Empty,
    /// A server URL does not parse.
    #[error(
        "NATS URL `{url}` is not a URL ({reason}): write `nats://host:port` or `tls://host:port`"
    )]
    Url {
        /// The URL, credentials hidden.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// A scheme other than `nats` or `tls`.
    #[error("NATS URL `{url}`: scheme `{scheme}` is not served; use `nats://` (TLS when the server asks for it) or `tls://` (TLS required)")]
    Scheme {
        /// The URL, credentials hidden.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// A URL with a path, query or fragment (a NATS URL has none).
    #[error("NATS URL `{url}` has a path, query or fragment; write only `scheme://[credentials@]host[:port]`")]
    Extra {
        /// The URL, credentials hidden.
        url: String,
    },
    /// Two URLs carry different credentials.
    #[error("the NATS URLs carry different credentials; the client has one identity: put the same credentials in every URL, or in one")]
    MixedCredentials,
    /// Credentials both in a URL and in `--nats-creds`.
    #[error("NATS credentials are given twice (in the URL `{url}` and in `{path}`): keep one")]
    TwoCredentials {
        /// The URL, credentials hidden.
        url: String,
        /// The credentials file.
        path: PathBuf,
    },
    /// The CA file cannot be read.
    #[error("CA file `{path}`: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA file is not a PEM bundle of usable CA certificates.
    #[error("CA file `{path}`: {reason}; it must be a PEM bundle of CA certificates (`-----BEGIN CERTIFICATE-----`)")]
    CaPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The credentials file cannot be read.
    #[error("NATS credentials file `{path}`: {source}")]
    CredsFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The credentials file holds neither a `.creds` file nor an NKey seed.
    #[error("NATS credentials file `{path}` {reason}; give a `.creds` file (user JWT and seed, as `nsc` writes it) or a file holding one NKey user seed (`SU…`)")]
    Creds {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its content).
        reason: &'static str,
    },
    /// The TLS client configuration could not be built.
    #[error("TLS client configuration: {0}")]
    Tls(String),
}

/// What kind of problem stopped a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// TLS failed: most often the server's certificate is not trusted
    /// (its CA is not in the CA file) or names another host.
    Certificate,
    /// The server refused the credentials (or their absence).
    Authorization,
    /// No server could be reached in time, or the connection broke.
    Unreachable,
}

/// Why [`NatsSettings::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {servers}: {problem}")]
pub struct ConnectError {
    servers: String,
    failure: ConnectFailure,
    problem: String,
}

impl ConnectError {
    fn new(servers: &str, e: &async_nats::ConnectError) -> Self {
        let detail = chain(e);
        // A failed handshake comes as an I/O error around rustls's.
        let tls = matches!(e.kind(), ConnectErrorKind::Tls) || is_rustls(e);
        let (failure, problem) = match e.kind() {
            _ if tls => (
                ConnectFailure::Certificate,
                format!("TLS failed ({detail}); if the server's certificate is issued by a private CA, give its CA bundle with --ca-file"),
            ),
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => (
                ConnectFailure::Authorization,
                format!("the server refused our credentials ({detail}); check the user, token or --nats-creds"),
            ),
            _ => (ConnectFailure::Unreachable, detail),
        };
        Self {
            servers: servers.to_owned(),
            failure,
            problem,
        }
    }

    /// What kind of problem it was.
    pub fn failure(&self) -> ConnectFailure {
        self.failure
    }

    /// Whether retrying cannot help until the configuration changes (a
    /// certificate or credential problem, not an unreachable server).
    pub fn is_configuration(&self) -> bool {
        matches!(
            self.failure,
            ConnectFailure::Certificate | ConnectFailure::Authorization
        )
    }
}

/// Whether rustls's error is in `e`'s chain (also inside an I/O error,
/// whose `source` skips the error it wraps).
fn is_rustls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if is_rustls(inner) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// An error and its sources, joined with `: `, lowercase as they come.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A URL shown without its credentials, for messages and logs.
fn redact(raw: &str) -> String {
    let (scheme, rest) = raw.split_once("://").unwrap_or(("", raw));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => format!("<credentials>@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    if scheme.is_empty() {
        format!("{host}{tail}")
    } else {
        format!("{scheme}://{host}{tail}")
    }
}

fn decode(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

/// The credentials a URL carries: `user:password@` or `token@`.
fn url_auth(url: &url::Url) -> Auth {
    match (url.username(), url.password()) {
        ("", None) => Auth::None,
        (user, Some(pass)) => Auth::UserPassword {
            user: decode(user),
            pass: decode(pass),
        },
        (token, None) => Auth::Token(decode(token)),
    }
}

fn same_auth(a: &Auth, b: &Auth) -> bool {
    match (a, b) {
        (Auth::UserPassword { user, pass }, Auth::UserPassword { user: u2, pass: p2 }) => {
            user == u2 && pass == p2
        }
        (Auth::Token(a), Auth::Token(b)) => a == b,
        _ => false,
    }
}

/// Reads a PEM bundle of CA certificates: at least one, each usable as a
/// trust anchor.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let pem = std::fs::read(path).map_err(|source| SettingsError::CaFile {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SettingsError::CaPem {
            path: path.to_owned(),
            reason: format!("unreadable PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(SettingsError::CaPem {
            path: path.to_owned(),
            reason: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// The TLS client configuration: the webpki roots, plus the CA file's.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, SettingsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let (_, ignored) = roots.add_parsable_certificates(load_ca_file(path)?);
        if ignored > 0 {
            return Err(SettingsError::CaPem {
                path: path.to_owned(),
                reason: format!("{ignored} certificate(s) in it cannot be used as a CA"),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Reads `--nats-creds`: a `.creds` file or an NKey user seed.
fn read_creds(path: &Path) -> Result<Auth, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::CredsFile {
        path: path.to_owned(),
        source,
    })?;
    let bad = |reason| SettingsError::Creds {
        path: path.to_owned(),
        reason,
    };
    if text.contains("-----BEGIN NATS USER JWT-----") {
        // Parsed now so a broken file is refused at start, not at connect.
        ConnectOptions::with_credentials(&text)
            .map_err(|_| bad("holds a user JWT but no usable seed"))?;
        return Ok(Auth::Creds(text));
    }
    let seed = text.trim();
    if !seed.starts_with("SU") {
        return Err(bad("is not a credentials file"));
    }
    nkeys::KeyPair::from_seed(seed).map_err(|_| bad("holds no valid NKey seed"))?;
    Ok(Auth::NKey(seed.to_owned()))
}

impl NatsSettings {
    /// Validates the settings: `urls` is one or more comma-separated server
    /// URLs, `nats://` (plain, or TLS when the server requires it) or
    /// `tls://` (TLS required), `[user:password@|token@]host[:port]` (port
    /// 4222 by default; a URL without a scheme is `nats://`); `ca_file` a
    /// PEM bundle of CA certificates trusted beside the webpki roots;
    /// `creds_file` a `.creds` file (user JWT and NKey seed) or a file
    /// holding an NKey user seed. Files are read now.
    ///
    /// Errors: a URL that is not `nats://` or `tls://`, does not parse or
    /// has a path; URLs with different credentials; credentials both in a
    /// URL and a file; an unreadable or unusable CA or credentials file.
    pub fn new(
        urls: &str,
        ca_file: Option<&Path>,
        creds_file: Option<&Path>,
    ) -> Result<Self, SettingsError> {
        let mut servers = Vec::new();
        let mut shown = Vec::new();
        let mut auth = Auth::None;
        let mut auth_url = String::new();
        for raw in urls.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let redacted = redact(raw);
            let with_scheme = if raw.contains("://") {
                raw.to_owned()
            } else {
                format!("nats://{raw}")
            };
            let mut url = url::Url::parse(&with_scheme).map_err(|e| SettingsError::Url {
                url: redacted.clone(),
                reason: e.to_string(),
            })?;
            if !matches!(url.scheme(), "nats" | "tls") {
                return Err(SettingsError::Scheme {
                    url: redacted,
                    scheme: url.scheme().to_owned(),
                });
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(SettingsError::Url {
                    url: redacted,
                    reason: "no host".into(),
                });
            }
            if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some()
            {
                return Err(SettingsError::Extra { url: redacted });
            }
            let here = url_auth(&url);
            match (&auth, &here) {
                (_, Auth::None) => {}
                (Auth::None, _) => {
                    auth = here;
                    auth_url.clone_from(&redacted);
                }
                (have, _) if same_auth(have, &here) => {}
                _ => return Err(SettingsError::MixedCredentials),
            }
            // The secrets leave the URL: async-nats would not use them, and
            // nothing that prints an address can show them.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            if url.port().is_none() {
                let _ = url.set_port(Some(DEFAULT_PORT));
            }
            let shown_url = format!(
                "{}://{}:{}",
                url.scheme(),
                url.host_str().unwrap_or_default(),
                url.port().unwrap_or(DEFAULT_PORT)
            );
            servers.push(ServerAddr::from_url(url).map_err(|e| SettingsError::Url {
                url: redacted,
                reason: e.to_string(),
            })?);
            shown.push(shown_url);
        }
        if servers.is_empty() {
            return Err(SettingsError::Empty);
        }
        if let Some(path) = creds_file {
            if !matches!(auth, Auth::None) {
                return Err(SettingsError::TwoCredentials {
                    url: auth_url,
                    path: path.to_owned(),
                });
            }
            auth = read_creds(path)?;
        }
        Ok(Self {
            servers,
            shown: shown.join(","),
            auth,
            tls: Arc::new(tls_config(ca_file)?),
        })
    }

    /// The servers, comma-separated, without credentials (for logs).
    pub fn servers(&self) -> &str {
        &self.shown
    }

    /// Connects to one of the servers (each is tried once, in random
    /// order), as client `name`. The client then reconnects by itself
    /// with exponential backoff up to 4 s, to any server of the list or
    /// of the cluster's.
    ///
    /// Errors: [`ConnectError`], telling a certificate or credential
    /// problem ([`ConnectError::is_configuration`]) from an unreachable
    /// server.
    pub async fn connect(&self, name: &str) -> Result<Client, ConnectError> {
        let shown = self.shown.clone();
        let mut options = ConnectOptions::new()
            .name(name)
            .tls_client_config((*self.tls).clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(move |event| {
                let shown = shown.clone();
                async move { tracing::info!(servers = %shown, %event, "NATS connection event") }
            });
        options = match &self.auth {
            Auth::None => options,
            Auth::UserPassword { user, pass } => {
                options.user_and_password(user.clone(), pass.clone())
            }
            Auth::Token(t) => options.token(t.clone()),
            Auth::NKey(seed) => options.nkey(seed.clone()),
            Auth::Creds(text) => options.credentials(text).map_err(|_| ConnectError {
                servers: self.shown.clone(),
                failure: ConnectFailure::Authorization,
                problem: "the credentials file no longer parses".into(),
            })?,
        };
        options
            .connect(self.servers.clone())
            .await
            .map_err(|e| ConnectError::new(&self.shown, &e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests: a failed step fails the test"
    )]

    use super::*;

    #[test]
    fn urls_schemes_and_credentials() {
        let s = NatsSettings::new(" nats://a:1 , tls://b ,c:3", None, None).unwrap();
        assert_eq!(s.servers(), "nats://a:1,tls://b:4222,nats://c:3");
        for bad in ["http://a:4222", "ws://a", "wss://a", "https://a"] {
            let e = NatsSettings::new(bad, None, None).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("not served"), "{e}");
        }
        assert!(matches!(
            NatsSettings::new(" , ", None, None),
            Err(SettingsError::Empty)
        ));
        assert!(matches!(
            NatsSettings::new("nats://a/x", None, None),
            Err(SettingsError::Extra { .. })
        ));
        // Credentials are kept out of everything shown.
        let s = NatsSettings::new("nats://u:s3cret@a,nats://b", None, None).unwrap();
        assert!(
            matches!(&s.auth, Auth::UserPassword { user, pass } if user == "u" && pass == "s3cret")
        );
        assert!(!format!("{s:?}{}", s.servers()).contains("s3cret"));
        let s = NatsSettings::new("tls://t0ken@a", None, None).unwrap();
        assert!(matches!(&s.auth, Auth::Token(t) if t == "t0ken"));
        let e = NatsSettings::new("nats://u:s3cret@a,nats://u:other@b", None, None).unwrap_err();
        assert!(matches!(e, SettingsError::MixedCredentials));
        let e = NatsSettings::new("http://u:s3cret@a", None, None)
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("s3cret") && e.contains("http://<credentials>@a"),
            "{e}"
        );
        let e = NatsSettings::new("nats://u:s3cret@[oops", None, None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn files_are_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("veto-bus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = NatsSettings::new("tls://a", Some(&missing), None).unwrap_err();
        assert!(matches!(e, SettingsError::CaFile { .. }), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let e = NatsSettings::new("tls://a", Some(&empty), None).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let creds = dir.join("bad.creds");
        std::fs::write(&creds, "SUsecretbutbroken").unwrap();
        let e = NatsSettings::new("nats://a", None, Some(&creds))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no valid NKey seed") && !e.contains("secret"),
            "{e}"
        );
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        std::fs::write(&creds, format!("{seed}\n")).unwrap();
        let s = NatsSettings::new("nats://a", None, Some(&creds)).unwrap();
        assert!(matches!(s.auth, Auth::NKey(_)));
        let e = NatsSettings::new("nats://u:p@a", None, Some(&creds)).unwrap_err();
        assert!(matches!(e, SettingsError::TwoCredentials { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
