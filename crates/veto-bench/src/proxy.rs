//! A real `veto proxy` run as a child process, and a tiny in-process
//! upstream (axum, `GET /` → `200 ok`) for it to front.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::sync::watch;

use crate::registry::{fresh_dir, Registry};

const BANNER: &str = "veto proxy listening on ";
const ADMIN: &str = "admin (metrics, health): ";

/// An in-process upstream answering `200 ok` to every request, on its own
/// loopback port; stops when dropped.
pub(crate) struct Upstream {
    /// `http://ADDR`.
    pub base: String,
    stop: watch::Sender<bool>,
}

impl Upstream {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the upstream's port")?;
        let addr: SocketAddr = listener.local_addr()?;
        let app = axum::Router::new().fallback(|| async { "ok" });
        let (stop, mut rx) = watch::channel(false);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await;
        });
        Ok(Self {
            base: format!("http://{addr}"),
            stop,
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A running `veto proxy`.
pub(crate) struct Proxy {
    child: Option<Child>,
    /// `http://ADDR` for agents.
    pub base: String,
    /// `http://ADDR` for `/metrics`, `/healthz`, `/readyz`.
    pub admin: String,
    /// Holds `proxy.log` (its stderr).
    pub dir: PathBuf,
    keep: bool,
}

impl Proxy {
    /// Starts `veto proxy` in front of `upstream`, pinned to `reg`'s
    /// authority key, with `extra` arguments (such as `--poll-interval
    /// 3600s`), and waits until `/readyz` on its admin port answers 200.
    pub(crate) async fn start(
        veto: &Path,
        keep: bool,
        reg: &Registry,
        upstream: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = fresh_dir("proxy")?;
        let log = fs::File::create(dir.join("proxy.log")).context("creating the proxy log file")?;
        let mut cmd = Command::new(veto);
        cmd.arg("proxy")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--upstream")
            .arg(upstream)
            .arg("--registry")
            .arg(&reg.base)
            .arg("--authority-key")
            .arg(reg.authority_pub())
            .args(extra);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("VETO_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting `{} proxy`", veto.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("no stdout pipe from the proxy")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for _ in 0..2 {
                if let Some(Ok(l)) = lines.next() {
                    let _ = tx.send(l);
                }
            }
            for _ in lines {}
        });
        let mut p = Self {
            child: Some(child),
            base: String::new(),
            admin: String::new(),
            dir,
            keep,
        };
        let lines = tokio::task::spawn_blocking(move || {
            let a = rx.recv_timeout(Duration::from_secs(60))?;
            let b = rx.recv_timeout(Duration::from_secs(10))?;
            Ok::<_, std::sync::mpsc::RecvTimeoutError>((a, b))
        })
        .await?;
        let Ok((first, second)) = lines else {
            bail!("the proxy did not start; its log:\n{}", p.log_tail());
        };
        let (Some(base), Some(admin)) = (
            first.strip_prefix(BANNER),
            second.split_once(ADMIN).map(|(_, a)| a),
        ) else {
            bail!(
                "unexpected first lines from the proxy: {first:?}, {second:?}; its log:\n{}",
                p.log_tail()
            );
        };
        p.base = base.trim().to_owned();
        p.admin = admin.trim().to_owned();
        crate::registry::wait_ok(
            &format!("{}/readyz", p.admin),
            || format!("the proxy at {} is not ready", p.base),
            || p.log_tail(),
        )
        .await?;
        Ok(p)
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The last lines of the proxy's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the proxy (SIGTERM, then SIGKILL after 10 s) and removes its
    /// directory unless asked to keep it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(child) => {
                crate::registry::stop_child(child, "proxy", self.dir.clone(), self.keep).await
            }
            None => Ok(()),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
