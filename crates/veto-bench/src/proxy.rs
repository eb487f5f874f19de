//! A real `veto proxy` run as a child process; the in-process upstream it
//! fronts is [`veto_testkit::Upstream`].

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use veto_core::wire::path;
use veto_testkit::{clean_command, wait_ok, Process};

use crate::registry::{fresh_dir, stop_process, Registry, READY_TIMEOUT, START_TIMEOUT};

/// A running `veto proxy` (killed on drop unless stopped).
pub(crate) struct Proxy {
    process: Option<Process>,
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
        Self::start_on(None, veto, keep, reg, upstream, extra).await
    }

    /// As [`Proxy::start`], on CPU `cpu` only when given (`taskset -c`
    /// execs the proxy, so its runtime sizes itself for that one core).
    pub(crate) async fn start_on(
        cpu: Option<u32>,
        veto: &Path,
        keep: bool,
        reg: &Registry,
        upstream: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = fresh_dir("proxy")?;
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = clean_command(Path::new("taskset"));
                c.arg("-c").arg(cpu.to_string()).arg(veto);
                c
            }
            None => clean_command(veto),
        };
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
        // wrk and the load clients send bearer chains: no per-request proof.
        if !extra.contains(&"--pop") {
            cmd.args(["--pop", "off"]);
        }
        let log = dir.join("proxy.log");
        let (process, base, admin) =
            tokio::task::spawn_blocking(move || Process::start_proxy(cmd, &log, START_TIMEOUT))
                .await?
                .map_err(|e| anyhow!("the proxy did not start: {e}"))?;
        let p = Self {
            process: Some(process),
            base,
            admin,
            dir,
            keep,
        };
        wait_ok(
            &format!("{}{}", p.admin, path::READYZ),
            READY_TIMEOUT,
            || format!("the proxy at {} is not ready", p.base),
            || p.log_tail(),
        )
        .await?;
        Ok(p)
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::id)
    }

    /// The last lines of the proxy's log.
    pub(crate) fn log_tail(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(20))
            .unwrap_or_default()
    }

    /// Stops the proxy (SIGTERM, then SIGKILL after 10 s) and removes its
    /// directory unless asked to keep it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        match self.process.take() {
            Some(process) => stop_process(process, "proxy", self.dir.clone(), self.keep).await,
            None => Ok(()),
        }
    }
}
