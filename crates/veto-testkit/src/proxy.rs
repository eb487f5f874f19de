//! A running `veto proxy`.

#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a test kit: a step that fails fails the test there, with what went wrong"
)]

use std::sync::atomic::Ordering;

use serde_json::Value;
use veto_core::wire::path;

use crate::metrics::metric_value;
use crate::process::{veto_command, Process, READY_TIMEOUT};
use crate::registry::{Registry, STARTS};
use crate::TempDir;

/// A running `veto proxy`.
#[derive(Debug)]
pub struct Proxy {
    process: Process,
    /// Where agents send requests.
    pub url: String,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_url: String,
    http: reqwest::Client,
}

impl Proxy {
    /// Starts `veto proxy --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
    /// --upstream UPSTREAM --registry URL --authority-key FILE`, plus `args`,
    /// logging into `dir`. Unless `args` name a `--pop` policy, the proxy
    /// runs with `--pop off`: the tests that use it send bearer chains and
    /// are about revocation, sync and hostile input. Proof of possession,
    /// and the `required` default, are tested with [`Proxy::start_exact`].
    pub fn start(dir: &TempDir, registry: &Registry, upstream: &str, args: &[&str]) -> Self {
        Self::start_via(dir, registry, &registry.url, upstream, args)
    }

    /// As [`Proxy::start`], with exactly `args` (the proxy's own defaults
    /// otherwise, `--pop required` among them).
    pub fn start_exact(dir: &TempDir, registry: &Registry, upstream: &str, args: &[&str]) -> Self {
        Self::launch(dir, registry, &registry.url, upstream, args)
    }

    /// As [`Proxy::start`], reaching the registry at `via` (such as a
    /// fault-injecting relay in front of it).
    pub fn start_via(
        dir: &TempDir,
        registry: &Registry,
        via: &str,
        upstream: &str,
        args: &[&str],
    ) -> Self {
        let mut args = args.to_vec();
        if !args.contains(&"--pop") {
            args.extend(["--pop", "off"]);
        }
        Self::launch(dir, registry, via, upstream, &args)
    }

    fn launch(
        dir: &TempDir,
        registry: &Registry,
        via: &str,
        upstream: &str,
        args: &[&str],
    ) -> Self {
        let log = dir.path().join(format!(
            "proxy-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = veto_command(dir.path());
        cmd.arg("proxy")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--upstream", upstream, "--registry", via])
            .arg("--authority-key")
            .arg(registry.authority_key_file())
            .args(args);
        let (process, url, admin_url) =
            Process::start_proxy(cmd, &log, READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        Self {
            process,
            url,
            admin_url,
            http: crate::http_client(),
        }
    }

    /// Replaces the HTTP client its helpers use (for an HTTPS admin
    /// listener, one that trusts the test CA).
    pub fn set_http(&mut self, http: reqwest::Client) {
        self.http = http;
    }

    /// What the proxy wrote to stderr so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// `{url}{path}`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `GET {admin_url}{path}`.
    async fn admin(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.admin_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the proxy's admin address: {e}"))
    }

    /// The admin `/healthz` body.
    pub async fn health(&self) -> Value {
        self.admin(path::HEALTHZ)
            .await
            .json()
            .await
            .expect("healthz is JSON")
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin(path::METRICS)
            .await
            .text()
            .await
            .expect("metrics text")
    }

    /// One series (`name` or `name{labels}`) from `/metrics`; 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

impl Proxy {
    /// The status of the admin `/readyz` (200 fresh, 503 stale).
    pub async fn readyz_status(&self) -> u16 {
        self.admin(path::READYZ).await.status().as_u16()
    }
}
