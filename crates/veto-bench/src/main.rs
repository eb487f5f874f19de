//! `veto-bench`: load benchmarks for veto.
//!
//! Each subcommand starts its own registry as a real process (`veto serve`
//! on a loopback port, in a fresh temporary data directory), measures,
//! prints a result block ending in one machine-readable `bench=…` line, and
//! stops the registry.
//!
//! - `revoke`: durable revocations per second, one entry per request
//!   (`--mode single`) or in batches (`--mode batch`); on SQLite, or on
//!   PostgreSQL with one or more replicas (`--store`, `--replicas`).
//! - `fanout`: commit→receive latency of SSE deltas across many concurrent
//!   subscribers, and the registry's memory per idle subscriber.
//! - `propagation`: acknowledgement→enforcement latency of revocations in
//!   N in-process authorizers (SSE or NATS push), or in a real `veto proxy`.
//! - `proxy-overhead`: wrk through a real `veto proxy` against wrk straight
//!   to the upstream.
//! - `proxy-vs-nginx`: `veto proxy` (`--pop off` and `required`) beside
//!   nginx and a plain forwarder, pinned, with one wrk script.
//! - `soak`: sustained load through a real `veto proxy` while revocations
//!   stream in: no request for a chain is allowed once the proxy has applied
//!   its revocation, transport errors stay negligible, and the proxy's RSS
//!   stays flat; exits non-zero otherwise (a CI gate).

mod fanout;
mod fleet;
mod forward;
mod overhead;
mod peers;
mod pg;
mod propagation;
mod proxy;
mod registry;
mod revoke;
mod soak;
mod stats;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

/// veto load benchmarks.
#[derive(Parser, Debug)]
#[command(name = "veto-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Durable revocations per second (single entries or batches).
    Revoke(revoke::RevokeArgs),
    /// SSE fan-out: commit→receive latency across N subscribers, and memory per subscriber.
    Fanout(fanout::FanoutArgs),
    /// Revocation acknowledgement -> enforcement in N authorizers (SSE/NATS) or a real proxy.
    Propagation(propagation::PropagationArgs),
    /// Throughput and p99 through a real `veto proxy` vs straight to the upstream (wrk).
    ProxyOverhead(overhead::OverheadArgs),
    /// `veto proxy` (--pop off and required) beside nginx and a plain forwarder, same cores, same wrk load.
    ProxyVsNginx(peers::PeersArgs),
    /// Sustained load through a real `veto proxy` while revocations stream in (a pass/fail gate).
    #[command(after_help = soak::GATE)]
    Soak(soak::SoakArgs),
    /// What gateway reports cost the registry (CPU, bytes) at N gateways.
    FleetReceipts(fleet::ReceiptsArgs),
    /// `veto revoke --wait` end to end with N in-process gateways (p50/p99).
    FleetWait(fleet::WaitArgs),
    /// A plain reverse proxy without authorization (the proxy-overhead baseline).
    #[command(hide = true)]
    Forward(forward::ForwardArgs),
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// The `veto` binary to run the registry with (default: `veto` next to this executable).
    #[arg(long)]
    veto: Option<PathBuf>,
    /// Keep the registry's temporary data directory (database, log) after the run.
    #[arg(long)]
    keep_data: bool,
}

impl Common {
    fn veto_path(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.veto {
            return Ok(p.clone());
        }
        let exe = std::env::current_exe()
            .context("cannot locate the current executable; pass --veto PATH")?;
        let dir = exe
            .parent()
            .context("the current executable has no parent directory; pass --veto PATH")?;
        Ok(dir.join("veto"))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The forwarder is built like `veto proxy`, runtime included: one
    // thread when the process may use one core.
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if matches!(cli.cmd, Cmd::Forward(_)) && one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Revoke(a) => revoke::run(a).await,
            Cmd::Fanout(a) => fanout::run(a).await,
            Cmd::Propagation(a) => propagation::run(a).await,
            Cmd::ProxyOverhead(a) => overhead::run(a).await,
            Cmd::ProxyVsNginx(a) => peers::run(a).await,
            Cmd::Soak(a) => soak::run(a).await,
            Cmd::Forward(a) => forward::run(a).await,
            Cmd::FleetReceipts(a) => fleet::receipts(a).await,
            Cmd::FleetWait(a) => fleet::wait(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
