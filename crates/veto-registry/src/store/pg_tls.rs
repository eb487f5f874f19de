//! PostgreSQL over TLS: `sslmode` and `sslrootcert` in the store URL,
//! with the meanings libpq gives them, on veto's one TLS stack.
//!
//! | `sslmode` | what the registry does |
//! |---|---|
//! | `disable` | plain TCP |
//! | `prefer` (the default, as in libpq) | TLS if the server offers it, else plain; the certificate is not checked (protects only against passive eavesdropping) |
//! | `require` | TLS or no connection; the certificate is not checked (as libpq) |
//! | `verify-ca` | TLS; the server's chain must lead to a trusted root; the name is not checked |
//! | `verify-full` | TLS; trusted chain and the certificate names the host dialled: use this across machines |
//!
//! Trusted roots are the webpki roots plus `sslrootcert=FILE` (a PEM
//! bundle) when the URL gives one (`veto serve --ca-file` adds it when the
//! URL does not). `allow` is refused: nothing needs plain-first.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use veto_tls::rustls::pki_types::ServerName;
use veto_tls::tokio_rustls::{client, TlsConnector};
use veto_tls::{ClientTls, ServerCheck};

use super::StoreError;

/// A store URL split into what tokio-postgres reads and the TLS connector
/// its `sslmode` calls for.
pub(crate) fn target(url: &str) -> Result<(String, MakeRustls), StoreError> {
    let bad = |detail: String| StoreError::Url { detail };
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut check = ServerCheck::Unverified;
    let mut ca: Option<PathBuf> = None;
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        match k {
            "sslmode" => match v {
                "disable" | "prefer" | "require" => {
                    check = ServerCheck::Unverified;
                    kept.push(param.to_owned());
                }
                "verify-ca" | "verify-full" => {
                    check = if v == "verify-ca" {
                        ServerCheck::ChainOnly
                    } else {
                        ServerCheck::Full
                    };
                    kept.push("sslmode=require".to_owned());
                }
                other => {
                    return Err(bad(format!(
                        "sslmode `{other}` is not supported: use disable, prefer, require, verify-ca or verify-full"
                    )))
                }
            },
            "sslrootcert" => {
                if v.is_empty() {
                    return Err(bad("`sslrootcert` is empty: give a PEM CA bundle".into()));
                }
                ca = Some(PathBuf::from(v));
            }
            _ => kept.push(param.to_owned()),
        }
    }
    let tls = ClientTls::new(ca.as_deref(), None, check)?;
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, MakeRustls(TlsConnector::from(tls.config()))))
}

/// tokio-postgres's TLS hook on rustls.
#[derive(Clone)]
pub(crate) struct MakeRustls(TlsConnector);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{domain}` is not a host name for TLS: {e}"),
            )
        })?;
        Ok(RustlsConnect {
            connector: self.0.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub(crate) struct RustlsConnect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream to PostgreSQL. No channel binding is offered (SCRAM
/// authenticates without `-PLUS`).
pub(crate) struct RustlsStream<S>(client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step fails the test"
)]
mod tests {
    use super::*;

    /// `base` with `sslmode` (and other parameters) set.
    fn with(base: &str, params: &str) -> String {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}{params}")
    }

    /// Whether the session behind `url` is encrypted, as the server sees it.
    async fn encrypted(url: &str) -> Result<bool, StoreError> {
        let client = super::super::postgres::connect(url).await?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(row.get::<_, bool>(0))
    }

    /// Against the machine's PostgreSQL: `disable` is plain, `require` is
    /// TLS when the server has it on (and refused with a clear error when
    /// it does not), and `verify-full` refuses a certificate that no
    /// trusted CA issued, naming the problem.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sslmode_against_a_real_server() {
        let Ok(base) = std::env::var("VETO_TEST_POSTGRES_URL") else {
            eprintln!("skipped: VETO_TEST_POSTGRES_URL is not set");
            return;
        };
        assert!(!encrypted(&with(&base, "sslmode=disable")).await.unwrap());
        let server_tls = {
            let client = super::super::postgres::connect(&with(&base, "sslmode=disable"))
                .await
                .unwrap();
            let row = client.query_one("SHOW ssl", &[]).await.unwrap();
            row.get::<_, String>(0) == "on"
        };
        let required = encrypted(&with(&base, "sslmode=require")).await;
        if server_tls {
            assert!(required.unwrap(), "sslmode=require gives a TLS session");
            // prefer takes TLS when offered.
            assert!(encrypted(&with(&base, "sslmode=prefer")).await.unwrap());
            let e = encrypted(&with(&base, "sslmode=verify-full"))
                .await
                .expect_err("no trusted CA issued the server's certificate")
                .to_string();
            assert!(
                e.contains("invalid peer certificate") || e.contains("UnknownIssuer"),
                "the error names the certificate problem: {e}"
            );
        } else {
            eprintln!("the server has ssl off: checking that require is refused");
            let e = required
                .expect_err("require against a plain server")
                .to_string();
            assert!(e.contains("TLS") || e.contains("SSL"), "{e}");
        }
    }

    #[test]
    fn sslmode_maps_to_what_tokio_postgres_reads() {
        let url = |u: &str| target(u).map(|(u, _)| u);
        assert_eq!(
            url("postgres://h/db").ok().as_deref(),
            Some("postgres://h/db")
        );
        assert_eq!(
            url("postgres://h/db?sslmode=verify-full&application_name=x")
                .ok()
                .as_deref(),
            Some("postgres://h/db?sslmode=require&application_name=x")
        );
        assert_eq!(
            url("postgres://h/db?sslmode=disable").ok().as_deref(),
            Some("postgres://h/db?sslmode=disable")
        );
        let e = target("postgres://h/db?sslmode=allow")
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("sslmode `allow` is not supported")));
        let e = target("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.is_some_and(|e| e.contains("/nonexistent/ca.pem")),
            "names the file"
        );
    }
}
