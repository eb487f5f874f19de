//! A registry run as a child process: `veto serve --listen 127.0.0.1:0
//! --data-dir <fresh temp dir> [options]`, stdout parsed for the address,
//! stderr (its logs) kept in `<data-dir>/registry.log`.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};

const BANNER: &str = "veto registry listening on ";

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
}

/// A fresh, empty directory under the system temporary directory.
pub(crate) fn fresh_dir(label: &str) -> anyhow::Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "veto-bench-{label}-{}-{nanos}-{n}",
        std::process::id()
    ));
    fs::create_dir(&dir).with_context(|| format!("creating the directory `{}`", dir.display()))?;
    Ok(dir)
}

/// A running registry.
pub(crate) struct Registry {
    child: Option<Child>,
    /// `http://ADDR`.
    pub base: String,
    /// The admin bearer token.
    pub token: String,
    /// The data directory.
    pub dir: PathBuf,
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
        let log =
            fs::File::create(dir.join("registry.log")).context("creating the registry log file")?;
        let mut cmd = Command::new(veto);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&dir);
        // Only what this run asks for: no VETO_* settings from the caller.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("VETO_") {
                cmd.env_remove(k);
            }
        }
        if let Some(s) = &opts.store {
            cmd.arg("--store").arg(s);
        }
        if let Some(b) = &opts.bus {
            cmd.arg("--bus").arg(b);
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
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting `{} serve`", veto.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("no stdout pipe from the registry")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Read the banner, then keep draining stdout so the child never blocks on it.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let mut reg = Self {
            child: Some(child),
            base: String::new(),
            token: String::new(),
            dir,
            keep,
        };
        let first =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60))).await?;
        let first = match first {
            Ok(l) => l,
            Err(_) => bail!("the registry did not start; its log:\n{}", reg.log_tail()),
        };
        let Some(addr) = first.strip_prefix(BANNER) else {
            bail!(
                "unexpected first line from the registry: {first:?}; its log:\n{}",
                reg.log_tail()
            );
        };
        reg.base = addr.trim().to_owned();
        reg.token = match &opts.admin_token {
            Some(t) => t.clone(),
            None => fs::read_to_string(reg.dir.join("admin.token"))
                .context("reading the admin token")?
                .trim()
                .to_owned(),
        };
        wait_ok(
            &format!("{}/healthz", reg.base),
            || format!("the registry at {} is not healthy", reg.base),
            || reg.log_tail(),
        )
        .await?;
        Ok(reg)
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
        let resp = client
            .post(format!("{}/v1/warrants", self.base))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"agent": agent, "act": act, "ttl": ttl}))
            .send()
            .await
            .context("POST /v1/warrants")?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != reqwest::StatusCode::CREATED {
            bail!("POST /v1/warrants: expected 201 Created, got {status}: {text}");
        }
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let warrant = v["warrant"]
            .as_str()
            .context("no `warrant` in the answer to POST /v1/warrants")?;
        let jti = v["jti"]
            .as_str()
            .context("no `jti` in the answer to POST /v1/warrants")?;
        Ok((warrant.to_owned(), jti.to_owned()))
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The registry process's resident set size (`VmRSS`), in KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib_of_pid(self.pid())
    }

    /// CPU time (user + system) the registry process has used, in seconds.
    pub(crate) fn cpu_secs(&self) -> anyhow::Result<f64> {
        cpu_secs_of(&format!("/proc/{}/stat", self.pid()))
    }

    /// The last lines of the registry's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the registry (SIGTERM, then SIGKILL after 10 s) and removes
    /// its data directory unless asked to keep it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(child) => stop_child(child, "registry", self.dir.clone(), self.keep).await,
            None => Ok(()),
        }
    }
}

/// Stops `child` gracefully (SIGTERM through kill(1), then SIGKILL after
/// 10 s) and removes its directory `dir` unless `keep`.
pub(crate) async fn stop_child(
    mut child: std::process::Child,
    what: &'static str,
    dir: PathBuf,
    keep: bool,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!("warning: the {what} did not stop within 10 s of SIGTERM; killing it");
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
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

/// The resident set size (`VmRSS`) of process `pid`, in KiB.
pub(crate) fn rss_kib_of_pid(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
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
    Ok(tick(11)? + tick(12)?)
}

impl Drop for Registry {
    fn drop(&mut self) {
        // On an early error: never leave the registry running.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `url` until it answers 2xx, for at most 30 s; the error names
/// what was waited for and carries the process's log.
pub async fn wait_ok(
    url: &str,
    what: impl Fn() -> String,
    log: impl Fn() -> String,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} after 30 s; its log:\n{}", what(), log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
