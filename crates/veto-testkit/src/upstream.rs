//! An in-process upstream answering `200 ok` to every request.

use tokio::sync::watch;

/// An upstream on its own loopback port answering `ok` to everything;
/// stops when dropped (unless [`Upstream::detach`]ed).
#[derive(Debug)]
pub struct Upstream {
    /// `http://ADDR`.
    pub url: String,
    stop: Option<watch::Sender<bool>>,
}

impl Upstream {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new().fallback(|| async { "ok" });
        let (stop, mut rx) = watch::channel(false);
        tokio::spawn(async move {
            let stopped = async move {
                // A sender dropped without a stop (detached) never stops it.
                while rx.changed().await.is_ok() {
                    if *rx.borrow() {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await;
        });
        Ok(Self {
            url,
            stop: Some(stop),
        })
    }

    /// Keeps the upstream serving until the runtime ends; its URL.
    pub fn detach(mut self) -> String {
        self.stop = None;
        std::mem::take(&mut self.url)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

/// An upstream in this process answering `ok` to everything, serving until
/// the runtime ends; its URL. Panics when it cannot bind.
#[expect(clippy::panic, reason = "a test kit: the test fails at this step")]
pub async fn ok_upstream() -> String {
    match Upstream::start().await {
        Ok(upstream) => upstream.detach(),
        Err(e) => panic!("binding the upstream: {e}"),
    }
}
