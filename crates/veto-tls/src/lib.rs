//! veto's one TLS stack: rustls (RFC 8446, and TLS 1.2 per RFC 5246) with
//! the ring crypto provider, shared by every hop that is not NATS.
//!
//! - [`ClientTls`]: what a client trusts. The Mozilla roots compiled in
//!   (`webpki-roots`, so a fresh machine needs no system store) plus an
//!   optional PEM bundle of private CAs (`--ca-file`, env `VETO_CA_FILE`),
//!   and optionally a client certificate. Used by the authorizer's
//!   registry client (poll and SSE), the CLI, the proxy's upstream leg and
//!   the registry's PostgreSQL connections.
//! - [`ServerTls`]: a listener's certificate and key, reloaded when their
//!   files change (checked every few seconds, and on SIGHUP) without a
//!   restart; a bad new file keeps the old certificate and logs an error.
//!   Optionally it asks for a client certificate chaining to a CA
//!   (`--client-ca`), without requiring one: the server decides per
//!   request whether a verified peer certificate is needed.
//! - [`TlsError`]: what was wrong with which file.
//!
//! Certificates are X.509 (RFC 5280) in PEM (RFC 7468); private keys are
//! PKCS#8, PKCS#1 (RSA) or SEC1 (EC) in PEM.

mod client;
mod pem;
mod server;

pub use client::{ClientTls, ServerCheck};
pub use pem::{load_certs, load_key, root_store, TlsError};
pub use server::{ServerTls, DEFAULT_RELOAD_INTERVAL};

/// Re-exported so users name the same rustls (and tokio-rustls) version.
pub use rustls;
pub use tokio_rustls;

use std::sync::Arc;

/// The crypto provider every veto TLS config uses: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An error with its causes, `outer: inner: innermost`: TLS failures are
/// often wrapped (reqwest, hyper), and the useful part (`invalid peer
/// certificate: UnknownIssuer`) is the innermost one.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
