//! `veto-bench proxy-vs-nginx`: `veto proxy` beside nginx, the reverse
//! proxy users would otherwise deploy, in one run on the same cores with
//! the same load generator.
//!
//! One in-process upstream (axum, `200 ok`) and one registry (`veto
//! serve`). In front of the upstream, one after the other: nothing
//! (direct), **nginx** (Debian's package; one process doing the work of
//! one worker: `master_process off`, so killing it leaves nothing behind,
//! `access_log off`, HTTP/1.1 keep-alive to the upstream — a plain reverse
//! proxy), a plain hyper forwarder with no authorization (`veto-bench
//! forward`), `veto proxy --pop off` and `veto proxy --pop required` (the
//! default). With pinning (the default; `--no-pin` turns it off), wrk and
//! the upstream run on CPU 0 and each proxy is started on CPU 1 alone
//! (`taskset -c 1`, so nginx and the tokio runtimes size themselves for
//! one core).
//!
//! Every target gets the same wrk Lua script and the same headers:
//! `Authorization: DPoP <depth-1 chain>` and a `DPoP` proof made by the
//! chain's holder for the `--pop required` proxy's URL, a fresh one per
//! request from a pool made before that run (sized from the `--pop off`
//! throughput; a replayed proof would be refused, and any non-2xx fails the
//! run). The other targets ignore both headers, so the load generator's
//! work is the same everywhere and only the proxy in the middle differs.
//!
//! Every target runs from the start to the end; `--rounds` (default 3)
//! times each is measured once, in the order above, since one run on a
//! shared 2-core machine swings by ±15% (a neighbour's burst lands on one
//! target and not the next).
//!
//! Reported, per round: requests/s and p50/p99 per target and each
//! proxy's CPU per request (`/proc/<pid>/stat`, all and user space). Then
//! the medians over the rounds of: `--pop off` / nginx (target ≥ 0.90),
//! its p99 minus nginx's (target ≤ +0.2 ms), `--pop required` / `off`, and
//! for `--pop required` the share of its CPU (all, and user space) that
//! one Ed25519 `verify_strict` per request explains (timed here on the same
//! machine) and the extra CPU per request over `--pop off`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use veto_core::dpop::{self, ProofSpec};

use crate::overhead::{command_on, pin, wrk_output, Forwarder, WrkResult};
use crate::proxy::Proxy;
use crate::registry::{cpu_times_of_pid, fresh_dir, Registry};
use crate::Common;
use veto_testkit::Upstream;

const TARGET_RATIO: f64 = 0.90;
const TARGET_ADDED_P99_MS: f64 = 0.2;
/// The proxy's proof window (`--pop-window`, default 30 s): older proofs
/// are refused.
const PROOF_WINDOW_SECS: u64 = 30;
/// The longest wrk run, so the proofs made before it stay in the window.
const MAX_SECS: u64 = 20;

/// Arguments of `veto-bench proxy-vs-nginx`.
#[derive(Args, Debug, Clone)]
pub(crate) struct PeersArgs {
    /// wrk's duration per target, in seconds (at most 20: proofs must stay
    /// inside the proxy's 30 s window).
    #[arg(long, default_value_t = 8)]
    secs: u64,
    /// wrk's open connections (`-c`).
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk's threads (`-t`).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// The wrk binary.
    #[arg(long, default_value = "wrk")]
    wrk: String,
    /// The nginx binary (Debian: `apt-get install -y nginx`).
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Do not pin: by default wrk and the upstream run on CPU 0 and each proxy on CPU 1.
    #[arg(long)]
    no_pin: bool,
    /// Rounds: each target runs once per round; the ratios reported are
    /// the medians of the rounds' ratios (one run on a shared machine
    /// swings by ±15%).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    #[command(flatten)]
    common: Common,
}

/// One target's figures.
struct Measured {
    name: &'static str,
    wrk: WrkResult,
    /// The proxy's CPU seconds during its run, in user space and in the
    /// kernel (none for direct).
    cpu_s: Option<(f64, f64)>,
}

impl Measured {
    /// µs of CPU per request: (user + kernel, user).
    fn cpu_us_per_request(&self) -> Option<(f64, f64)> {
        let n = self.wrk.requests.max(1) as f64;
        self.cpu_s.map(|(u, k)| ((u + k) * 1e6 / n, u * 1e6 / n))
    }
}

/// nginx as a plain reverse proxy, a child process killed on drop.
struct Nginx {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Nginx {
    fn start(bin: &Path, upstream: &str, cpu: Option<u32>) -> anyhow::Result<Self> {
        let dir = fresh_dir("nginx")?;
        let port = free_port()?;
        let up = upstream
            .strip_prefix("http://")
            .with_context(|| format!("upstream {upstream} is not http://"))?;
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             \x20 upstream app {{ server {up}; keepalive 64; }}\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://app;\n\
             \x20     proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).context("writing nginx.conf")?;
        let child = command_on(bin, cpu)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {}: install it (`apt-get install -y nginx`) or pass --nginx PATH",
                    bin.display()
                )
            })?;
        let n = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "nginx did not listen on {port} within 10 s; its log:\n{}",
                    std::fs::read_to_string(n.dir.join("error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    }

    /// CPU seconds (user, kernel) of the one nginx process.
    fn cpu_times(&self) -> anyhow::Result<(f64, f64)> {
        cpu_times_of_pid(self.child.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The wrk script: every request carries the chain and the next proof of
/// this thread's pool (`<proofs>.<thread>`, one per line), cycling.
const SCRIPT: &str = r#"
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local f = assert(io.open(args[1], "r"))
  auth = "DPoP " .. f:read("*l")
  f:close()
  proofs = {}
  n = 0
  for line in io.lines(args[2] .. "." .. tid) do
    n = n + 1
    proofs[n] = line
  end
  i = 0
end
function request()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format("GET", "/", { ["Authorization"] = auth, ["DPoP"] = proofs[i] })
end
"#;

/// Files shared by every wrk run: the script, the chain, the proof pools.
struct Load {
    dir: PathBuf,
}

impl Load {
    fn new(chain: &str) -> anyhow::Result<Self> {
        let dir = fresh_dir("wrk")?;
        std::fs::write(dir.join("script.lua"), SCRIPT)?;
        std::fs::write(dir.join("chain"), format!("{chain}\n"))?;
        Ok(Self { dir })
    }

    /// Writes `per_thread` fresh proofs for each of `threads` pools.
    fn proofs(
        &self,
        threads: u32,
        per_thread: usize,
        key: &veto_core::SigningKey,
        url: &str,
        chain: &str,
    ) -> anyhow::Result<()> {
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        for t in 0..threads {
            let f = std::fs::File::create(self.dir.join(format!("proofs.{t}")))?;
            let mut w = std::io::BufWriter::new(f);
            for _ in 0..per_thread {
                let proof = dpop::make(
                    key,
                    &ProofSpec {
                        method: "GET",
                        url,
                        chain,
                        iat,
                        nonce: None,
                    },
                )?;
                writeln!(w, "{proof}")?;
            }
            w.flush()?;
        }
        Ok(())
    }

    fn run(&self, a: &PeersArgs, url: &str) -> anyhow::Result<WrkResult> {
        let mut cmd = command_on(&a.wrk, (!a.no_pin).then_some(0));
        cmd.arg(format!("-t{}", a.threads))
            .arg(format!("-c{}", a.connections))
            .arg(format!("-d{}s", a.secs))
            .arg("--latency")
            .arg("-s")
            .arg(self.dir.join("script.lua"))
            .arg(url)
            .arg("--")
            .arg(self.dir.join("chain"))
            .arg(self.dir.join("proofs"));
        wrk_output(
            cmd,
            &a.wrk,
            url,
            "a refused chain, or a replayed proof (the pool ran out)?",
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One wrk run against `url`, with the CPU of the process(es) behind it.
async fn measure(
    a: &PeersArgs,
    load: &Load,
    name: &'static str,
    url: String,
    cpu: impl Fn() -> anyhow::Result<(f64, f64)>,
) -> anyhow::Result<Measured> {
    let before = cpu()?;
    // The in-process upstream keeps running on the runtime's other workers.
    let wrk = tokio::task::block_in_place(|| load.run(a, &url))?;
    let after = cpu()?;
    Ok(Measured {
        name,
        wrk,
        cpu_s: Some((after.0 - before.0, after.1 - before.1)),
    })
}

/// Mean µs of one Ed25519 `verify_strict` of a proof's signing input.
fn verify_floor_us(proof: &str, key: &veto_core::SigningKey) -> anyhow::Result<f64> {
    use base64::Engine as _;
    let (input, sig) = proof.rsplit_once('.').context("a proof is a compact JWS")?;
    let sig: [u8; 64] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("a proof's signature is 64 bytes"))?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    let public = ed25519_dalek::VerifyingKey::from_bytes(key.public().as_bytes())?;
    let n = 2_000;
    let start = Instant::now();
    for _ in 0..n {
        public
            .verify_strict(std::hint::black_box(input.as_bytes()), &sig)
            .context("the proof's signature does not verify")?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

pub(crate) async fn run(a: PeersArgs) -> anyhow::Result<()> {
    if a.connections == 0 || a.threads == 0 || a.rounds == 0 {
        bail!("--connections, --threads and --rounds must be at least 1");
    }
    if a.secs == 0 || a.secs > MAX_SECS {
        bail!(
            "--secs must be 1 to {MAX_SECS}: proofs older than the proxy's 30 s window are refused"
        );
    }
    let veto = a.common.veto_path()?;
    let reg = Registry::start(&veto, a.common.keep_data).await?;
    let result = compare(&a, &veto, &reg).await;
    let stopped = reg.stop().await;
    result?;
    stopped
}

async fn compare(a: &PeersArgs, veto: &Path, reg: &Registry) -> anyhow::Result<()> {
    let cpu = (!a.no_pin).then_some(1u32);
    let upstream = Upstream::start().await?;
    let client = reqwest::Client::new();
    let holder = veto_core::SigningKey::generate()?;
    let (chain, _) = reg
        .mint_held(
            &client,
            "bench-agent",
            &["http:*:/*"],
            3600,
            holder.public(),
        )
        .await?;
    if let Some(_cpu) = cpu {
        pin(std::process::id(), 0)?;
    }
    let load = Load::new(&chain)?;

    // Every target runs from the start to the end, so each round measures
    // the same processes.
    let nginx = Nginx::start(&a.nginx, &upstream.url, cpu)?;
    let fwd = Forwarder::start_on(&upstream.url, cpu)?;
    let off = Proxy::start_on(
        cpu,
        veto,
        a.common.keep_data,
        reg,
        &upstream.url,
        &["--pop", "off"],
    )
    .await?;
    let req = Proxy::start_on(
        cpu,
        veto,
        a.common.keep_data,
        reg,
        &upstream.url,
        &["--pop", "required"],
    )
    .await?;
    let req_url = format!("{}/", req.base);
    let (fwd_pid, off_pid, req_pid) = (fwd.pid(), off.pid(), req.pid());

    // One `verify_strict` per request bounds what `--pop required` can
    // do: on one core (pinned), never more than 1/verify proofs a second.
    let sample = dpop::make(
        &holder,
        &ProofSpec {
            method: "GET",
            url: &req_url,
            chain: &chain,
            iat: 0,
            nonce: None,
        },
    )?;
    let floor_us = verify_floor_us(&sample, &holder)?;
    let cores = if a.no_pin {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        1
    };
    let most_proofs_per_sec = cores as f64 * 1e6 / floor_us * 1.2;

    let mut rounds: Vec<Vec<Measured>> = Vec::new();
    for round in 1..=a.rounds {
        eprintln!("round {round} of {}", a.rounds);
        let mut rows = Vec::new();
        // Targets that ignore the proof: a small pool, reused.
        load.proofs(a.threads, 1_000, &holder, &req_url, &chain)?;
        let direct = measure(a, &load, "direct", format!("{}/", upstream.url), || {
            Ok((0.0, 0.0))
        })
        .await?;
        rows.push(Measured {
            cpu_s: None,
            ..direct
        });
        let url = format!("{}/", nginx.base);
        rows.push(measure(a, &load, "nginx", url, || nginx.cpu_times()).await?);
        let url = format!("{}/", fwd.base);
        rows.push(
            measure(a, &load, "hyper forwarder", url, || {
                cpu_times_of_pid(fwd_pid)
            })
            .await?,
        );
        let m = measure(a, &load, "veto --pop off", format!("{}/", off.base), || {
            cpu_times_of_pid(off_pid)
        })
        .await
        .with_context(|| format!("the --pop off proxy's log:\n{}", off.log_tail()))?;
        let off_rate = m.wrk.requests_per_sec;
        rows.push(m);

        // `--pop required`: a fresh proof per request, the pool sized from
        // the last round's `required` rate (twice it), or in the first
        // round from `off` (1.5 times): making proofs takes time, and they
        // must all stay inside the proxy's window.
        let expected = match rounds.last().and_then(|r: &Vec<Measured>| r.last()) {
            Some(last) => last.wrk.requests_per_sec * 2.0,
            None => off_rate * 1.5,
        }
        .min(most_proofs_per_sec);
        let per_thread =
            ((expected * a.secs as f64) / f64::from(a.threads)).ceil() as usize + 1_000;
        let made = Instant::now();
        load.proofs(a.threads, per_thread, &holder, &req_url, &chain)?;
        let took = made.elapsed();
        eprintln!(
            "made {} proofs in {:.1} s",
            per_thread * a.threads as usize,
            took.as_secs_f64()
        );
        // Every proof carries the `iat` of the start of this pool: the last
        // request must still fall inside the proxy's window.
        if took.as_secs() + a.secs + 2 > PROOF_WINDOW_SECS {
            bail!(
                "making the proofs took {:.1} s: with --secs {} the last ones would be older than the proxy's {PROOF_WINDOW_SECS} s proof window; use a smaller --secs",
                took.as_secs_f64(),
                a.secs
            );
        }
        let m = measure(a, &load, "veto --pop required", req_url.clone(), || {
            cpu_times_of_pid(req_pid)
        })
        .await
        .with_context(|| format!("the --pop required proxy's log:\n{}", req.log_tail()))?;
        rows.push(m);
        rounds.push(rows);
    }
    off.stop().await?;
    req.stop().await?;
    drop((nginx, fwd));
    drop(upstream);
    report(a, &rounds, floor_us, chain.len());
    Ok(())
}

/// One round's figures.
struct Round {
    off_over_nginx: f64,
    added_p99_ms: f64,
    required_over_off: f64,
    /// µs of CPU per request (all, user space).
    off_cpu: (f64, f64),
    required_cpu: (f64, f64),
}

/// The median of `v` (NaN when empty).
fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    crate::stats::percentile(&crate::stats::sorted(v.into_iter().collect()), 0.5)
}

fn report(a: &PeersArgs, rounds: &[Vec<Measured>], floor_us: f64, chain_len: usize) {
    println!("== veto-bench proxy-vs-nginx ==");
    println!(
        "wrk             : -t{} -c{} -d{}s --latency, Lua script: `Authorization: DPoP <{chain_len}-byte chain>` and a fresh `DPoP` proof per request, the same for every target; {} rounds, each target once per round",
        a.threads, a.connections, a.secs, rounds.len()
    );
    if a.no_pin {
        println!("pinning         : none (everything shares the machine's cores)");
    } else {
        println!("pinning         : wrk and the upstream on CPU 0; each proxy started on CPU 1 alone (taskset -c 1)");
    }
    for (i, rows) in rounds.iter().enumerate() {
        for m in rows {
            let cpu = m
                .cpu_us_per_request()
                .map(|(all, user)| {
                    format!(", proxy CPU {all:.1} µs/request ({user:.1} in user space)")
                })
                .unwrap_or_default();
            println!(
                "round {} {:<19}: {:>8.0} req/s, p50 {:.3} ms, p99 {:.3} ms ({} requests){cpu}",
                i + 1,
                m.name,
                m.wrk.requests_per_sec,
                m.wrk.p50_ms,
                m.wrk.p99_ms,
                m.wrk.requests
            );
        }
    }
    let of = |rows: &[Measured], n: &str| {
        rows.iter()
            .find(|m| m.name == n)
            .map(|m| (m.wrk.clone(), m.cpu_us_per_request()))
    };
    let mut per_round = Vec::new();
    for rows in rounds {
        let (Some((nginx, _)), Some((off, off_cpu)), Some((req, req_cpu))) = (
            of(rows, "nginx"),
            of(rows, "veto --pop off"),
            of(rows, "veto --pop required"),
        ) else {
            continue;
        };
        let nan = (f64::NAN, f64::NAN);
        per_round.push(Round {
            off_over_nginx: off.requests_per_sec / nginx.requests_per_sec,
            added_p99_ms: off.p99_ms - nginx.p99_ms,
            required_over_off: req.requests_per_sec / off.requests_per_sec,
            off_cpu: off_cpu.unwrap_or(nan),
            required_cpu: req_cpu.unwrap_or(nan),
        });
    }
    let med = |f: fn(&Round) -> f64| median(per_round.iter().map(f));
    let ratio = med(|r| r.off_over_nginx);
    let added = med(|r| r.added_p99_ms);
    let req_ratio = med(|r| r.required_over_off);
    let (off_cpu, off_user) = (med(|r| r.off_cpu.0), med(|r| r.off_cpu.1));
    let (req_cpu, req_user) = (med(|r| r.required_cpu.0), med(|r| r.required_cpu.1));
    let share = floor_us / req_cpu;
    let user_share = floor_us / req_user;
    let list = |f: fn(&Round) -> f64| {
        per_round
            .iter()
            .map(|r| format!("{:.3}", f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "--pop off/nginx    : median {ratio:.3} of nginx's throughput ({}; target ≥ {TARGET_RATIO:.2}: {}), p99 median {added:+.3} ms ({}; target ≤ +{TARGET_ADDED_P99_MS} ms: {})",
        list(|r| r.off_over_nginx),
        if ratio >= TARGET_RATIO { "met" } else { "NOT met" },
        list(|r| r.added_p99_ms),
        if added <= TARGET_ADDED_P99_MS { "met" } else { "NOT met" }
    );
    println!(
        "--pop required     : median {req_ratio:.3} of --pop off ({}); proxy CPU {req_cpu:.1} µs/request vs {off_cpu:.1} (+{:.1}), in user space {req_user:.1} vs {off_user:.1} (+{:.1}); one Ed25519 verify_strict {floor_us:.1} µs = {:.0}% of its CPU per request, {:.0}% of its user-space CPU",
        list(|r| r.required_over_off),
        req_cpu - off_cpu,
        req_user - off_user,
        share * 100.0,
        user_share * 100.0
    );
    let rate = |n: &str| {
        median(
            rounds
                .iter()
                .filter_map(|rows| of(rows, n))
                .map(|(w, _)| w.requests_per_sec),
        )
    };
    println!(
        "bench=proxy-vs-nginx secs={} connections={} rounds={} direct={:.0} nginx={:.0} forward={:.0} veto_off={:.0} veto_required={:.0} off_over_nginx={ratio:.3} off_added_p99_ms={added:.3} required_over_off={req_ratio:.3} verify_us={floor_us:.1} verify_share={share:.2} verify_share_user={user_share:.2}",
        a.secs,
        a.connections,
        rounds.len(),
        rate("direct"),
        rate("nginx"),
        rate("hyper forwarder"),
        rate("veto --pop off"),
        rate("veto --pop required"),
    );
}
