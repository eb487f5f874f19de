//! A registry run as a child process: `veto serve --listen 127.0.0.1:0
//! --data-dir <fresh temp dir> [options]`, stdout parsed for the address,
//! stderr (its logs) kept in `<data-dir>/registry.log`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use veto_core::wire::path;
use veto_testkit::{clean_command, vm_rss_kib, wait_ok, Process};

/// How long `veto serve` or `veto proxy` may take to print its banner.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may then take to answer `/healthz` or `/readyz`.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How many log lines an error carries.
const LOG_TAIL: usize = 20;

/// Options for `veto serve` beyond the defaults (SQLite, SSE only).
#[derive(Clone, Debug, Default)]
pub(crate) struct ServeOpts {
    /// `--store postgres://...`: share the state with other replicas.
    pub store: Option<String>,
    /// `--bus nats://...`: also publish to NATS JetStream.
    pub bus: Option<String>,
    /// `--authority-key FILE`: one authority key for every replica.
    pub authority_key: Option<PathBuf>,
    /// `VETO_ADMIN_TOKEN`: one admin token for every replica.
    pub admin_token: Option<String>,
    /// `--heartbeat` (such as `1s`).
    pub heartbeat: Option<String>,
    /// `--ca-file FILE`: a private CA for a `tls://` bus.
    pub ca_file: Option<PathBuf>,
    /// Serve HTTPS with a certificate from a CA made for the run
    /// (`--tls-cert`/`--tls-key`); clients trust it through
    /// [`Registry::ca_file`].
    pub tls: bool,
}

/// An HTTP client for the benchmarks: no Nagle delay, trusting `ca_file`
/// (a PEM bundle) beside the webpki roots.
pub(crate) fn bench_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let tls = veto_tls::ClientTls::with_ca_file(ca_file)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls((*tls.config()).clone())
        .tcp_nodelay(true)
        .build()?)
}

/// A fresh, empty directory under the system temporary directory.
pub(crate) fn fresh_dir(label: &str) -> anyhow::Result<PathBuf> {
    Ok(veto_testkit::fresh_dir("veto-bench", label)?)
}

/// A running registry (killed on drop unless stopped).
pub(crate) struct Registry {
    process: Option<Process>,
    /// `http://ADDR`.
    pub base: String,
    /// The admin bearer token.
    pub token: String,
    /// The data directory.
    pub dir: PathBuf,
    /// The CA its certificate chains to, with `ServeOpts::tls`.
    pub ca_file: Option<PathBuf>,
    keep: bool,
}

impl Registry {
    /// Starts `veto serve` with the defaults and waits until `/healthz` answers.
    pub(crate) async fn start(veto: &Path, keep: bool) -> anyhow::Result<Self> {
        Self::start_with(veto, keep, &ServeOpts::default()).await
    }

    /// Starts `veto serve` with `opts` and waits until `/healthz` answers.
    pub(crate) async fn start_with(
        veto: &Path,
        keep: bool,
        opts: &ServeOpts,
    ) -> anyhow::Result<Self> {
        if !veto.is_file() {
            bail!(
                "the `veto` binary was not found at `{}`: build it (`cargo build --release -p veto`) or pass --veto PATH",
                veto.display()
            );
        }
        let dir = fresh_dir("registry")?;
        // Only what this run asks for: no VETO_* settings from the caller.
        let mut cmd = clean_command(veto);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&dir);
        if let Some(s) = &opts.store {
            cmd.arg("--store").arg(s);
        }
        if let Some(b) = &opts.bus {
            cmd.arg("--bus").arg(b);
        }
        if let Some(c) = &opts.ca_file {
            cmd.arg("--ca-file").arg(c);
        }
        if let Some(k) = &opts.authority_key {
            cmd.arg("--authority-key").arg(k);
        }
        if let Some(h) = &opts.heartbeat {
            cmd.arg("--heartbeat").arg(h);
        }
        if let Some(t) = &opts.admin_token {
            cmd.env("VETO_ADMIN_TOKEN", t);
        }
        let ca_file = if opts.tls {
            let ca = veto_testkit::tls::TestCa::new("veto-bench CA");
            let (cert, key) = ca.write_server(&dir, "registry", &["127.0.0.1", "localhost"]);
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            Some(ca.write_ca(&dir, "ca.pem"))
        } else {
            None
        };
        let log = dir.join("registry.log");
        let (process, base) =
            tokio::task::spawn_blocking(move || Process::start_registry(cmd, &log, START_TIMEOUT))
                .await?
                .map_err(|e| anyhow!("the registry did not start: {e}"))?;
        let mut reg = Self {
            process: Some(process),
            base,
            token: String::new(),
            dir,
            ca_file,
            keep,
        };
        reg.token = match &opts.admin_token {
            Some(t) => t.clone(),
            None => fs::read_to_string(reg.dir.join("admin.token"))
                .context("reading the admin token")?
                .trim()
                .to_owned(),
        };
        if reg.ca_file.is_none() {
            wait_ok(
                &format!("{}{}", reg.base, path::HEALTHZ),
                READY_TIMEOUT,
                || format!("the registry at {} is not healthy", reg.base),
                || reg.log_tail(),
            )
            .await?;
        } else {
            let client = reg.client()?;
            let deadline = std::time::Instant::now() + READY_TIMEOUT;
            loop {
                let r = client
                    .get(format!("{}{}", reg.base, path::HEALTHZ))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "the registry at {} is not healthy: {}",
                        reg.base,
                        reg.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(reg)
    }

    /// A client that trusts this registry's certificate (when on TLS).
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        bench_client(self.ca_file.as_deref())
    }

    /// The authority public key file `veto serve` wrote (for authorizers to pin).
    pub(crate) fn authority_pub(&self) -> PathBuf {
        self.dir.join("authority.pub.jwk")
    }

    /// Mints a root warrant for `agent` with actions `act`, valid `ttl` seconds;
    /// returns `(chain, jti)`.
    pub(crate) async fn mint(
        &self,
        client: &reqwest::Client,
        agent: &str,
        act: &[&str],
        ttl: u64,
    ) -> anyhow::Result<(String, String)> {
        // The registry binds a holder key in every warrant; this one is
        // never proved (bearer chains to `--pop off` proxies).
        let unheld = veto_core::SigningKey::generate()?;
        self.mint_held(client, agent, act, ttl, unheld.public())
            .await
    }

    /// As [`Registry::mint`], binding `holder` (the key requests prove).
    pub(crate) async fn mint_held(
        &self,
        client: &reqwest::Client,
        agent: &str,
        act: &[&str],
        ttl: u64,
        holder: &veto_core::PublicKey,
    ) -> anyhow::Result<(String, String)> {
        let resp = client
            .post(format!("{}{}", self.base, path::WARRANTS))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"agent": agent, "act": act, "ttl": ttl,
                "holder_key": holder.to_jwk()}))
            .send()
            .await
            .with_context(|| format!("POST {}", path::WARRANTS))?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != reqwest::StatusCode::CREATED {
            bail!(
                "POST {}: expected 201 Created, got {status}: {text}",
                path::WARRANTS
            );
        }
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let warrant = v["warrant"]
            .as_str()
            .with_context(|| format!("no `warrant` in the answer to POST {}", path::WARRANTS))?;
        let jti = v["jti"]
            .as_str()
            .with_context(|| format!("no `jti` in the answer to POST {}", path::WARRANTS))?;
        Ok((warrant.to_owned(), jti.to_owned()))
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::id)
    }

    /// The registry process's resident set size (`VmRSS`), in KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        Ok(vm_rss_kib(self.pid())?)
    }

    /// CPU time (user + system) the registry process has used, in seconds.
    pub(crate) fn cpu_secs(&self) -> anyhow::Result<f64> {
        cpu_secs_of(&format!("/proc/{}/stat", self.pid()))
    }

    /// The last lines of the registry's log.
    pub(crate) fn log_tail(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(LOG_TAIL))
            .unwrap_or_default()
    }

    /// Stops the registry (SIGTERM, then SIGKILL after 10 s) and removes
    /// its data directory unless asked to keep it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        match self.process.take() {
            Some(process) => stop_process(process, "registry", self.dir.clone(), self.keep).await,
            None => Ok(()),
        }
    }
}

/// Stops `process` gracefully (SIGTERM, then SIGKILL after 10 s) and
/// removes its directory `dir` unless `keep`.
pub(crate) async fn stop_process(
    process: Process,
    what: &'static str,
    dir: PathBuf,
    keep: bool,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        if !process.terminate(STOP_GRACE)? {
            eprintln!("warning: the {what} did not stop within 10 s of SIGTERM; killed it");
        }
        if keep {
            println!("{what} directory kept: {}", dir.display());
        } else {
            fs::remove_dir_all(&dir).with_context(|| format!("removing `{}`", dir.display()))?;
        }
        Ok(())
    })
    .await?
}

/// CPU time (user + system) of this process, in seconds.
pub(crate) fn own_cpu_secs() -> anyhow::Result<f64> {
    cpu_secs_of("/proc/self/stat")
}

/// CPU time (user + system) of process `pid`, in seconds.
pub(crate) fn cpu_secs_of_pid(pid: u32) -> anyhow::Result<f64> {
    cpu_secs_of(&format!("/proc/{pid}/stat"))
}

/// CPU time (user + system) of every process on this machine named
/// `postgres` (a local PostgreSQL server's postmaster and backends), in
/// seconds; `None` when there is none.
pub(crate) fn local_postgres_cpu_secs() -> Option<f64> {
    let mut total = None;
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let path = format!("/proc/{pid}/stat");
        let Ok(stat) = fs::read_to_string(&path) else {
            continue;
        };
        if !stat.contains(" (postgres) ") {
            continue;
        }
        if let Ok(cpu) = cpu_secs_of(&path) {
            *total.get_or_insert(0.0) += cpu;
        }
    }
    total
}

/// `utime + stime` from a `/proc/<pid>/stat` file. Linux reports them in
/// USER_HZ ticks, which is 100 per second on every supported architecture.
fn cpu_secs_of(path: &str) -> anyhow::Result<f64> {
    let (user, system) = cpu_times_of(path)?;
    Ok(user + system)
}

/// CPU time of process `pid` in user space and in the kernel, in seconds.
pub(crate) fn cpu_times_of_pid(pid: u32) -> anyhow::Result<(f64, f64)> {
    cpu_times_of(&format!("/proc/{pid}/stat"))
}

fn cpu_times_of(path: &str) -> anyhow::Result<(f64, f64)> {
    let stat = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the `(comm)`, which may itself contain spaces: state is
    // field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("malformed {path}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        let v: u64 = f
            .get(i)
            .with_context(|| format!("malformed {path}"))?
            .parse()?;
        Ok(v as f64 / 100.0)
    };
    Ok((tick(11)?, tick(12)?))
}
