//! `veto-bench proxy-overhead`: what a real `veto proxy` costs in front
//! of a trivial upstream.
//!
//! An in-process upstream (axum, `200 ok`), a registry (`veto serve`) and a
//! `veto proxy` in front of the upstream; one root warrant with act
//! `http:*:/*`. Then `wrk -t<threads> -c<connections> -d<duration>
//! --latency -H "Authorization: Bearer <chain>"` runs against the upstream
//! directly and against the proxy, one after the other, in the same run
//! (the header is harmless on the direct run). From wrk's output:
//! `Requests/sec` and the `99%` latency line. Reported: the throughput
//! ratio (proxy / direct) and the added p99 (proxy − direct).
//!
//! With `--tls`, a second `veto proxy` serves agents over TLS
//! (`--tls-cert`/`--tls-key`, a certificate from a CA made for the run,
//! TLS 1.3) and wrk runs against it too, in the same run: the cost of the
//! TLS listener beside the plaintext one. wrk keeps its connections open,
//! so this is the per-request cost of TLS records, not of handshakes.
//!
//! Unless `--no-baseline`, wrk also runs against a plain reverse proxy
//! without authorization (`veto-bench forward`, a child process built like
//! `veto proxy` on the same hyper stack), so the cost of being a second
//! HTTP hop on this machine can be told apart from the cost of veto's
//! checks.
//!
//! wrk, the proxy, the upstream and the registry share the machine's
//! cores, so the proxy's CPU is taken from the same budget wrk and the
//! upstream need: on a small machine the ratio is pessimistic. `--pin`
//! (with `taskset`) puts wrk and this process (the upstream) on CPU 0 and
//! the proxy (and the plain forwarder) on CPU 1, for both sides: the
//! proxy then has a core of its own, as it would in front of a real
//! service on another host.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::proxy::Proxy;
use crate::registry::{cpu_secs_of_pid, own_cpu_secs, Registry};
use crate::Common;
use veto_testkit::Upstream;

const TARGET_RATIO: f64 = 0.70;
const TARGET_ADDED_P99_MS: f64 = 1.0;

/// Arguments of `veto-bench proxy-overhead`.
#[derive(Args, Debug, Clone)]
pub(crate) struct OverheadArgs {
    /// wrk's duration per side (`-d`), such as `15s`.
    #[arg(long, default_value = "15s")]
    duration: String,
    /// wrk's open connections (`-c`).
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk's threads (`-t`).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// The wrk binary.
    #[arg(long, default_value = "wrk")]
    wrk: String,
    /// Skip the plain-forwarder baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Pin wrk and the upstream to CPU 0, the proxy (and the forwarder) to CPU 1 (needs `taskset`).
    #[arg(long)]
    pin: bool,
    /// Also measure a proxy whose agents' listener speaks TLS.
    #[arg(long)]
    tls: bool,
    #[command(flatten)]
    common: Common,
}

/// What one wrk run reported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WrkResult {
    pub(crate) requests_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) requests: u64,
    pub(crate) non_2xx: u64,
    pub(crate) errors: String,
}

/// `1.23us`, `4.56ms`, `1.2s`, `2m` → milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e3)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|v| v * mult)
}

fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult {
        requests_per_sec: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        requests: 0,
        non_2xx: 0,
        errors: String::new(),
    };
    for line in out.lines() {
        let t = line.trim();
        let mut words = t.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => {
                r.requests_per_sec = words
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            }
            Some("50%") => r.p50_ms = words.next().and_then(parse_duration_ms).unwrap_or(f64::NAN),
            Some("99%") => r.p99_ms = words.next().and_then(parse_duration_ms).unwrap_or(f64::NAN),
            Some("Non-2xx") => {
                r.non_2xx = t
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            }
            Some("Socket") => r.errors = t.to_owned(),
            Some(n) if t.contains(" requests in ") => r.requests = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    if r.requests_per_sec.is_nan() || r.p99_ms.is_nan() {
        bail!("could not find `Requests/sec:` and the `99%` latency line in wrk's output:\n{out}");
    }
    Ok(r)
}

/// Pins every thread of process `pid` to `cpu` (`taskset -a -cp`).
pub(crate) fn pin(pid: u32, cpu: u32) -> anyhow::Result<()> {
    let st = Command::new("taskset")
        .args(["-a", "-cp", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running `taskset` (util-linux) for --pin")?;
    if !st.success() {
        bail!("`taskset -a -cp {cpu} {pid}` failed: {st}");
    }
    Ok(())
}

fn run_wrk(a: &OverheadArgs, url: &str, token: &str) -> anyhow::Result<WrkResult> {
    let mut cmd = command_on(&a.wrk, a.pin.then_some(0));
    cmd.arg(format!("-t{}", a.threads))
        .arg(format!("-c{}", a.connections))
        .arg(format!("-d{}", a.duration))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url);
    wrk_output(cmd, &a.wrk, url, "the warrant was refused?")
}

/// `program`, on CPU `cpu` alone when given: `taskset -c` execs it, so the
/// pid is the program's and its runtime sizes itself for that one core.
pub(crate) fn command_on(program: impl AsRef<std::ffi::OsStr>, cpu: Option<u32>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs a prepared wrk command against `url` and parses its report; any
/// non-2xx answer fails the run, with `refused` as the likely cause.
pub(crate) fn wrk_output(
    mut cmd: Command,
    wrk: &str,
    url: &str,
    refused: &str,
) -> anyhow::Result<WrkResult> {
    let out = cmd.output().with_context(|| {
        format!("running `{wrk}`: install it (`apt-get install -y wrk`) or pass --wrk PATH")
    })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r = parse_wrk(&text)?;
    if r.non_2xx > 0 {
        bail!(
            "{} of {} responses from {url} were not 2xx: {refused}\n{text}",
            r.non_2xx,
            r.requests
        );
    }
    Ok(r)
}

/// The plain forwarder (`veto-bench forward`), a child process killed on drop.
pub(crate) struct Forwarder {
    child: Child,
    pub(crate) base: String,
}

impl Forwarder {
    fn start(upstream: &str) -> anyhow::Result<Self> {
        Self::start_on(upstream, None)
    }

    /// Starts the forwarder, on CPU `cpu` only when given (`taskset -c`,
    /// so its runtime sizes itself for that one core).
    pub(crate) fn start_on(upstream: &str, cpu: Option<u32>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let mut child = command_on(exe, cpu)
            .arg("forward")
            .arg("--upstream")
            .arg(upstream)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting `veto-bench forward`")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        let mut f = Self {
            child,
            base: String::new(),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("the plain forwarder did not start")?;
        f.base = line
            .strip_prefix("forward listening on ")
            .with_context(|| format!("unexpected line from the forwarder: {line:?}"))?
            .trim()
            .to_owned();
        Ok(f)
    }
}

impl Forwarder {
    /// The forwarder's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second proxy, its agents' listener on TLS, measured with wrk over
/// `https://` (wrk does not check the certificate; the proxy's TLS work
/// is the same either way): wrk's result and the proxy's CPU seconds.
async fn measure_tls(
    a: &OverheadArgs,
    veto: &Path,
    reg: &Registry,
    upstream: &str,
    chain: &str,
) -> anyhow::Result<(WrkResult, f64)> {
    let dir = crate::registry::fresh_dir("proxy-tls")?;
    let ca = veto_testkit::tls::TestCa::new("veto-bench CA");
    let (cert, key) = ca.write_server(&dir, "proxy", &["127.0.0.1", "localhost"]);
    let ca_file = ca.write_ca(&dir, "ca.pem");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let proxy = Proxy::start(
        veto,
        a.common.keep_data,
        reg,
        upstream,
        &["--tls-cert", &cert, "--tls-key", &key],
    )
    .await?;
    let result = async {
        // The proxy allows the warrant over TLS (and has cached the chain).
        let client = crate::registry::bench_client(Some(&ca_file))?;
        let r = client
            .get(format!("{}/", proxy.base))
            .bearer_auth(chain)
            .send()
            .await?;
        if r.status() != reqwest::StatusCode::OK {
            bail!(
                "the TLS proxy answered {}; its log:\n{}",
                r.status(),
                proxy.log_tail()
            );
        }
        if a.pin {
            pin(proxy.pid(), 1)?;
        }
        wrk_with_cpu(a, format!("{}/", proxy.base), chain, proxy.pid()).await
    }
    .await;
    let stopped = proxy.stop().await;
    let r = result?;
    stopped?;
    Ok(r)
}

/// Runs wrk against `url` with `chain` and returns its result beside the
/// CPU seconds process `pid` spent meanwhile.
async fn wrk_with_cpu(
    a: &OverheadArgs,
    url: String,
    chain: &str,
    pid: u32,
) -> anyhow::Result<(WrkResult, f64)> {
    let cpu0 = cpu_secs_of_pid(pid)?;
    let (a2, c) = (a.clone(), chain.to_owned());
    let r = tokio::task::spawn_blocking(move || run_wrk(&a2, &url, &c)).await??;
    Ok((r, cpu_secs_of_pid(pid)? - cpu0))
}

pub(crate) async fn run(a: OverheadArgs) -> anyhow::Result<()> {
    if a.connections == 0 || a.threads == 0 {
        bail!("--connections and --threads must be at least 1");
    }
    let veto = a.common.veto_path()?;
    let reg = Registry::start(&veto, a.common.keep_data).await?;
    // Before any pinning narrows this process's CPU set.
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let result = measure(&a, &veto, &reg, cores).await;
    let stopped = reg.stop().await;
    result?;
    stopped
}

async fn measure(
    a: &OverheadArgs,
    veto: &Path,
    reg: &Registry,
    cores: usize,
) -> anyhow::Result<()> {
    let upstream = Upstream::start().await?;
    let proxy = Proxy::start(veto, a.common.keep_data, reg, &upstream.url, &[]).await?;
    let result = async {
        let client = reqwest::Client::new();
        let (chain, _) = reg
            .mint(&client, "bench-agent", &["http:*:/*"], 3600)
            .await?;
        // The proxy allows it (and has verified and cached the chain).
        let r = client
            .get(format!("{}/", proxy.base))
            .bearer_auth(&chain)
            .send()
            .await?;
        let status = r.status();
        let body = r.text().await?;
        if status != reqwest::StatusCode::OK || body != "ok" {
            bail!(
                "the proxy answered {status} {body:?} to a valid warrant; its log:\n{}",
                proxy.log_tail()
            );
        }
        if a.pin {
            pin(std::process::id(), 0)?;
            pin(proxy.pid(), 1)?;
        }
        let direct_url = format!("{}/", upstream.url);
        let proxy_url = format!("{}/", proxy.base);
        let cpu0 = own_cpu_secs()?;
        let (a2, d_url, c) = (a.clone(), direct_url.clone(), chain.clone());
        let direct = tokio::task::spawn_blocking(move || run_wrk(&a2, &d_url, &c)).await??;
        let direct_cpu = own_cpu_secs()? - cpu0;
        let plain = if a.no_baseline {
            None
        } else {
            let fwd = Forwarder::start(&upstream.url)?;
            let fpid = fwd.child.id();
            if a.pin {
                pin(fpid, 1)?;
            }
            let r = wrk_with_cpu(a, format!("{}/", fwd.base), &chain, fpid).await?;
            drop(fwd);
            Some(r)
        };
        let (cpu0, pcpu0) = (own_cpu_secs()?, cpu_secs_of_pid(proxy.pid())?);
        let (a2, p_url, c) = (a.clone(), proxy_url.clone(), chain.clone());
        let via = tokio::task::spawn_blocking(move || run_wrk(&a2, &p_url, &c)).await??;
        let (up_cpu, proxy_cpu) = (
            own_cpu_secs()? - cpu0,
            cpu_secs_of_pid(proxy.pid())? - pcpu0,
        );
        let tls = if a.tls {
            Some(measure_tls(a, veto, reg, &upstream.url, &chain).await?)
        } else {
            None
        };
        Ok::<_, anyhow::Error>((
            direct,
            plain,
            via,
            tls,
            direct_cpu,
            up_cpu,
            proxy_cpu,
            chain.len(),
        ))
    }
    .await;
    let stopped = proxy.stop().await;
    drop(upstream);
    let (direct, plain, via, tls, direct_cpu, up_cpu, proxy_cpu, chain_len) = result?;
    stopped?;
    let ratio = via.requests_per_sec / direct.requests_per_sec;
    let added_p99 = via.p99_ms - direct.p99_ms;
    let added_p50 = via.p50_ms - direct.p50_ms;
    println!("== veto-bench proxy-overhead ==");
    println!(
        "wrk             : -t{} -c{} -d{} --latency, header `Authorization: Bearer <{chain_len}-byte root warrant>`",
        a.threads, a.connections, a.duration
    );
    println!(
        "direct          : {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms ({} requests{}); upstream CPU {direct_cpu:.2} s",
        direct.requests_per_sec,
        direct.p50_ms,
        direct.p99_ms,
        direct.requests,
        if direct.errors.is_empty() { String::new() } else { format!("; {}", direct.errors) }
    );
    if let Some((p, cpu)) = &plain {
        println!(
            "plain forwarder : {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms ({} requests); forwarder CPU {cpu:.2} s ({:.1} us per request) -- baseline: a second HTTP hop without authorization",
            p.requests_per_sec,
            p.p50_ms,
            p.p99_ms,
            p.requests,
            cpu / p.requests.max(1) as f64 * 1e6
        );
    }
    println!(
        "via veto proxy  : {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms ({} requests{}); proxy CPU {proxy_cpu:.2} s ({:.1} us per request), upstream CPU {up_cpu:.2} s",
        via.requests_per_sec,
        via.p50_ms,
        via.p99_ms,
        via.requests,
        if via.errors.is_empty() { String::new() } else { format!("; {}", via.errors) },
        proxy_cpu / via.requests.max(1) as f64 * 1e6
    );
    println!(
        "throughput ratio: {:.1}% of direct; target >= {:.0}%: {}",
        ratio * 100.0,
        TARGET_RATIO * 100.0,
        if ratio >= TARGET_RATIO {
            "MET"
        } else {
            "MISSED"
        }
    );
    println!(
        "added latency   : p99 {added_p99:+.3} ms, p50 {added_p50:+.3} ms; target added p99 <= {TARGET_ADDED_P99_MS:.0} ms: {}",
        if added_p99 <= TARGET_ADDED_P99_MS { "MET" } else { "MISSED" }
    );
    if let Some((p, _)) = &plain {
        println!(
            "vs plain hop    : veto proxy throughput {:.1}% of the plain forwarder's ({:.1}% of direct); p99 {:+.3} ms, p50 {:+.3} ms vs the plain forwarder",
            via.requests_per_sec / p.requests_per_sec * 100.0,
            p.requests_per_sec / direct.requests_per_sec * 100.0,
            via.p99_ms - p.p99_ms,
            via.p50_ms - p.p50_ms
        );
    }
    if let Some((t, cpu)) = &tls {
        println!(
            "veto proxy, TLS : {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms ({} requests{}); proxy CPU {cpu:.2} s ({:.1} us per request)",
            t.requests_per_sec,
            t.p50_ms,
            t.p99_ms,
            t.requests,
            if t.errors.is_empty() { String::new() } else { format!("; {}", t.errors) },
            cpu / t.requests.max(1) as f64 * 1e6
        );
        println!(
            "TLS vs plaintext: throughput {:.1}% of the plaintext listener's ({:.1}% of direct); p99 {:+.3} ms, p50 {:+.3} ms",
            t.requests_per_sec / via.requests_per_sec * 100.0,
            t.requests_per_sec / direct.requests_per_sec * 100.0,
            t.p99_ms - via.p99_ms,
            t.p50_ms - via.p50_ms
        );
        println!(
            "bench=proxy-overhead-tls tls_rps={:.0} tls_p50_ms={:.3} tls_p99_ms={:.3} plain_listener_rps={:.0} plain_listener_p99_ms={:.3} tls_cpu_us_per_req={:.1}",
            t.requests_per_sec,
            t.p50_ms,
            t.p99_ms,
            via.requests_per_sec,
            via.p99_ms,
            cpu / t.requests.max(1) as f64 * 1e6
        );
    }
    if a.pin {
        println!("pinned          : wrk and the upstream on CPU 0, the proxy and the plain forwarder on CPU 1, on both sides (other processes on the machine are not pinned): the proxy has a core of its own");
    } else {
        println!("note            : wrk, the proxy, the upstream and the registry share this machine's {cores} cores: the proxy's work comes out of the same CPU budget as wrk's and the upstream's, so the ratio is pessimistic");
    }
    println!(
        "bench=proxy-overhead connections={} threads={} duration={} pinned={} direct_rps={:.0} proxy_rps={:.0} ratio={ratio:.3} direct_p99_ms={:.3} proxy_p99_ms={:.3} added_p99_ms={added_p99:.3} direct_p50_ms={:.3} proxy_p50_ms={:.3} proxy_cpu_us_per_req={:.1} plain_rps={:.0} plain_p99_ms={:.3}",
        a.connections,
        a.threads,
        a.duration,
        a.pin,
        direct.requests_per_sec,
        via.requests_per_sec,
        direct.p99_ms,
        via.p99_ms,
        direct.p50_ms,
        via.p50_ms,
        proxy_cpu / via.requests.max(1) as f64 * 1e6,
        plain.as_ref().map_or(f64::NAN, |(p, _)| p.requests_per_sec),
        plain.as_ref().map_or(f64::NAN, |(p, _)| p.p99_ms)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() -> anyhow::Result<()> {
        let out = "Running 15s test @ http://127.0.0.1:1/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.00us  300.00us  10.00ms   90.00%
    Req/Sec    30.00k     2.00k   35.00k    70.00%
  Latency Distribution
     50%  450.00us
     75%  600.00us
     90%  800.00us
     99%    1.50ms
  900000 requests in 15.00s, 80.00MB read
Requests/sec:  60000.00
Transfer/sec:      5.33MB
";
        let r = parse_wrk(out)?;
        assert_eq!(r.requests_per_sec, 60000.0);
        assert!((r.p50_ms - 0.45).abs() < 1e-9);
        assert!((r.p99_ms - 1.5).abs() < 1e-9);
        assert_eq!(r.requests, 900000);
        assert_eq!(r.non_2xx, 0);
        assert_eq!(parse_duration_ms("1.2s"), Some(1200.0));
        Ok(())
    }
}
