//! Child processes: started by waiting for a ready line on stdout, killed on
//! drop, stopped gracefully on request; their memory; readiness by polling.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process may take to print its ready line in the tests.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The line `veto serve` prints once it listens (the `http://` or
/// `https://` URL follows).
pub(crate) const REGISTRY_BANNER: &str = "veto registry listening on http";
/// The first line `veto proxy` prints once it listens (the URL follows).
pub(crate) const PROXY_BANNER: &str = "veto proxy listening on http";
/// The line after it, with the admin URL.
pub(crate) const PROXY_ADMIN_BANNER: &str = "  admin (metrics, health): http";

fn error(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// A child process, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Process {
    /// Spawns `cmd` with stdout piped and stderr written to `log`, and
    /// waits up to `timeout` until a stdout line satisfies `ready`; returns
    /// the process and that line. Later stdout is drained so the child
    /// never blocks on it. The error carries the process's stderr.
    pub fn start(
        mut cmd: Command,
        name: &str,
        log: &Path,
        timeout: Duration,
        ready: impl Fn(&str) -> bool + Send + 'static,
    ) -> std::io::Result<(Self, String)> {
        let stderr = std::fs::File::create(log)
            .map_err(|e| error(format!("creating `{}`: {e}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd
            .spawn()
            .map_err(|e| error(format!("spawning {name}: {e}")))?;
        let stdout = child.stdout.take();
        let mut process = Self {
            child,
            name: name.to_owned(),
            log: log.to_owned(),
        };
        let Some(stdout) = stdout else {
            return Err(error(format!("no stdout pipe from {name}")));
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.as_ref().is_some_and(|_| ready(&line)) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        match rx.recv_timeout(timeout) {
            Ok(line) => Ok((process, line)),
            Err(_) => {
                let status = process.child.try_wait().ok().flatten();
                process.kill();
                Err(error(format!(
                    "{name} did not become ready within {timeout:?} (exit status {status:?}); its stderr:\n{}",
                    process.log_text()
                )))
            }
        }
    }

    /// As [`Process::start`] with [`READY_TIMEOUT`], failing the test
    /// (panicking) when the process does not become ready.
    #[expect(clippy::panic, reason = "a test kit: the test fails at this step")]
    pub fn spawn(
        cmd: Command,
        name: &str,
        log: &Path,
        ready: impl Fn(&str) -> bool + Send + 'static,
    ) -> (Self, String) {
        Self::start(cmd, name, log, READY_TIMEOUT, ready).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `cmd` (a `veto serve`) and waits for its banner; returns the
    /// process and its URL.
    pub fn start_registry(
        cmd: Command,
        log: &Path,
        timeout: Duration,
    ) -> std::io::Result<(Self, String)> {
        let (process, line) = Self::start(cmd, "veto serve", log, timeout, |l| {
            l.starts_with(REGISTRY_BANNER)
        })?;
        Ok((process, find_url(&line)?))
    }

    /// Starts `cmd` (a `veto proxy`) and waits for its two banner lines;
    /// returns the process, its URL and its admin URL.
    pub fn start_proxy(
        cmd: Command,
        log: &Path,
        timeout: Duration,
    ) -> std::io::Result<(Self, String, String)> {
        // The listen address is the first line, the admin address the second.
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let (process, admin_line) = Self::start(cmd, "veto proxy", log, timeout, move |l| {
            if let Ok(mut seen) = seen.lock() {
                seen.push(l.to_owned());
            }
            l.starts_with(PROXY_ADMIN_BANNER)
        })?;
        let first = lines
            .lock()
            .ok()
            .and_then(|l| l.first().cloned())
            .unwrap_or_default();
        if !first.starts_with(PROXY_BANNER) {
            return Err(error(format!("veto proxy: first line `{first}`")));
        }
        Ok((process, find_url(&first)?, find_url(&admin_line)?))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines the process wrote to stderr.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Sends SIGKILL (no chance to clean up) and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process gracefully: SIGTERM (through kill(1)), then
    /// SIGKILL if it is still running after `grace`. Returns whether it
    /// stopped by itself. Blocks while it waits.
    pub fn terminate(mut self, grace: Duration) -> std::io::Result<bool> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(true)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first `http://…` or `https://…` URL in a line, without a trailing
/// slash; panics when there is none.
#[expect(clippy::panic, reason = "a test kit: the test fails at this step")]
pub fn url_in(line: &str) -> String {
    find_url(line).unwrap_or_else(|e| panic!("{e}"))
}

/// The first `http://…` or `https://…` URL in a line, without a
/// trailing slash.
fn find_url(line: &str) -> std::io::Result<String> {
    let start = [line.find("http://"), line.find("https://")]
        .into_iter()
        .flatten()
        .min()
        .ok_or_else(|| error(format!("no URL in `{line}`")))?;
    Ok(line[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned())
}

/// A `program` command without the caller's `VETO_*` variables, so it
/// runs with only what the test or benchmark asks for.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VETO_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A [`veto_bin`](crate::veto_bin) command with a clean environment: no
/// `VETO_*` variables from the caller, no user config file.
pub fn veto_command(config_home: &Path) -> Command {
    program_command(crate::veto_bin(), config_home)
}

/// As [`veto_command`], running the `veto` binary at `program` (such as an
/// older build).
pub(crate) fn program_command(
    program: &(impl AsRef<std::ffi::OsStr> + ?Sized),
    config_home: &Path,
) -> Command {
    let mut cmd = clean_command(program);
    cmd.env("XDG_CONFIG_HOME", config_home)
        .env("HOME", config_home);
    cmd
}

/// Resident set size and its peak, in KiB, from `/proc/<pid>/status`
/// (0 for what cannot be read).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (
        status_field(&status, "VmRSS:").unwrap_or(0),
        status_field(&status, "VmHWM:").unwrap_or(0),
    )
}

/// The resident set size (`VmRSS`) of process `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> std::io::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("reading {path}: {e}")))?;
    status_field(&status, "VmRSS:").ok_or_else(|| error(format!("no VmRSS in {path}")))
}

/// The number in field `name` (such as `VmRSS:`) of a `/proc/<pid>/status`.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Polls `GET url` until it answers 2xx, for at most `timeout`; the error
/// names what was waited for and carries `log()` (the process's log).
pub async fn wait_ok(
    url: &str,
    timeout: Duration,
    what: impl Fn() -> String,
    log: impl Fn() -> String,
) -> std::io::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{} after {timeout:?}; its log:\n{}", what(), log()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
