//! `veto proxy`: the authorizer in front of one upstream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use veto_authorizer::{Authorizer, Config, Issuers, PopConfig, Push, StalenessPolicy};
use veto_core::{keyfile, KeySet};
use veto_proxy::{ProxyConfig, Routes};

use crate::util;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Policy {
    /// Deny with 503 `stale` when the revocation state is too old (default).
    FailClosed,
    /// Allow, flagged (`Veto-Stale: 1` upstream), counted and logged.
    FailOpen,
}

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to listen on for agents.
    #[arg(long, env = "VETO_PROXY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "VETO_PROXY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    admin_listen: SocketAddr,
    /// The upstream service, such as `http://127.0.0.1:9000`.
    #[arg(long, env = "VETO_UPSTREAM")]
    upstream: String,
    /// Threads serving requests: 0 (the default) is one per core this
    /// process may use; 1 runs the whole proxy as one event loop on one
    /// thread (what a single core, such as a container limited to one CPU,
    /// is best served by).
    #[arg(long, env = "VETO_PROXY_THREADS", default_value_t = 0)]
    threads: usize,
    /// The registry.
    #[arg(long, env = "VETO_REGISTRY", default_value = "http://127.0.0.1:8080")]
    registry: String,
    /// The registry's authority public key (pinned; `<data-dir>/authority.pub.jwk`).
    #[arg(long, env = "VETO_AUTHORITY_KEY_FILE")]
    authority_key: Vec<PathBuf>,
    /// The authority name expected as `iss`.
    #[arg(long, env = "VETO_ISS", default_value = "veto")]
    iss: String,
    /// Pin issuer keys instead of fetching the registry's signed issuer key set.
    #[arg(long)]
    issuer_key: Vec<PathBuf>,
    /// What to do when the revocation state is stale.
    #[arg(long, value_enum, default_value = "fail-closed")]
    policy: Policy,
    /// Longest the state may go without a fresh signed checkpoint.
    #[arg(long, default_value = "300s", value_parser = util::parse_duration)]
    max_staleness: u64,
    /// Poll interval (fallback and gap repair), jittered ±20%.
    #[arg(long, default_value = "60s", value_parser = util::parse_duration)]
    poll_interval: u64,
    /// A push connection that carries no news this long (no verified delta
    /// or heartbeat checkpoint newer than the last one) is dropped and
    /// reopened: about three registry heartbeats.
    #[arg(long, default_value = "15s", value_parser = util::parse_duration)]
    push_idle_timeout: u64,
    /// Byte budget of the verified-chain cache; one root warrant and its
    /// descendants may use at most 1/16 of it.
    #[arg(long, default_value = "64MiB", value_parser = util::parse_bytes)]
    chain_cache_bytes: usize,
    /// Largest snapshot read from the registry (after decompression); also
    /// caps one push event and one page of deltas.
    #[arg(long, default_value = "64MiB", value_parser = util::parse_bytes)]
    max_snapshot_bytes: usize,
    /// A client that has not sent a whole request head within this long is
    /// disconnected.
    #[arg(long, default_value = "30s", value_parser = util::parse_duration)]
    header_timeout: u64,
    /// How long the upstream may take to accept the connection and send a
    /// response head; after it the client gets 504 `upstream_timeout`. A
    /// body already streaming is not limited by it.
    #[arg(long, default_value = "30s", value_parser = util::parse_duration)]
    upstream_timeout: u64,
    /// Upgrade protocols passed to the upstream (comma-separated, such as
    /// `websocket`); any other `Upgrade` is refused with 400
    /// `upgrade_refused`. `h2c` is refused even if listed.
    #[arg(long, value_delimiter = ',', default_value = "websocket")]
    upgrade_protocols: Vec<String>,
    /// Allowed clock skew for `nbf`/`iat`.
    #[arg(long, default_value = "5s", value_parser = util::parse_duration)]
    skew: u64,
    /// Route file mapping requests to actions (`METHOD PATH ACTION` lines).
    #[arg(long)]
    routes: Option<PathBuf>,
    /// Keep the last verified state here across restarts.
    #[arg(long, env = "VETO_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not subscribe to pushes: poll only.
    #[arg(long)]
    no_push: bool,
    /// Take pushes from NATS JetStream instead of SSE.
    #[command(flatten)]
    bus: util::BusArgs,
    /// Serve agents over HTTPS with this certificate chain (PEM, leaf
    /// first); reloaded when the file changes or on SIGHUP.
    #[arg(long, env = "VETO_PROXY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "VETO_PROXY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz over HTTPS with this
    /// certificate chain (PEM); reloaded like --tls-cert.
    #[arg(long, env = "VETO_PROXY_ADMIN_TLS_CERT")]
    admin_tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert (PEM).
    #[arg(long, env = "VETO_PROXY_ADMIN_TLS_KEY")]
    admin_tls_key: Option<PathBuf>,
    /// Proof of possession (DPoP, RFC 9449): `required` (every request
    /// carries `Authorization: DPoP <chain>` and a `DPoP` proof by the
    /// leaf's holder key), `optional` (bearer chains pass; proofs sent are
    /// checked) or `off` (every chain is a bearer token).
    #[arg(long, env = "VETO_POP", default_value = "required")]
    pop: veto_authorizer::PopPolicy,
    /// How old a proof may be (its `iat`); at most 5 minutes.
    #[arg(long, default_value = "30s", value_parser = util::parse_duration)]
    pop_window: u64,
    /// Byte budget of the proof replay cache; when full, proofs are refused
    /// until older ones age out (never forgotten early).
    #[arg(long, default_value = "64MiB", value_parser = util::parse_bytes)]
    pop_replay_bytes: usize,
    /// Require a server nonce in every proof (`DPoP-Nonce`, RFC 9449 8).
    #[arg(long)]
    pop_nonce: bool,
    /// Report to the registry's fleet view under this name
    /// (`[A-Za-z0-9._-]`): what this gateway applied, signed by its own
    /// key (`veto status`, `veto revoke --wait`).
    #[arg(long, env = "VETO_GATEWAY_NAME")]
    name: Option<String>,
    /// Enrol this gateway's key with the registry's fleet token (the
    /// registry's `<data-dir>/fleet.token`) at start; without it, an
    /// operator enrols the key (`veto fleet enrol`).
    #[arg(long, env = "VETO_FLEET_TOKEN_FILE", requires = "name")]
    fleet_token_file: Option<PathBuf>,
    /// This gateway's Ed25519 key (a private JWK, 0600); default
    /// `<cache-dir>/gateway.jwk`, created on first start. --name needs one
    /// or the other.
    #[arg(long, env = "VETO_GATEWAY_KEY", requires = "name")]
    gateway_key: Option<PathBuf>,
    /// Seconds between fleet reports when nothing changes (a report also
    /// follows every applied version); the registry counts the gateway
    /// lost after three intervals without one.
    #[arg(long, default_value = "10s", value_parser = util::parse_duration, requires = "name")]
    report_interval: u64,
    /// Take the scheme and host a proof must name from `X-Forwarded-Proto`
    /// and `X-Forwarded-Host`: only when every request comes through a
    /// front end that sets both (off by default).
    #[arg(long)]
    trust_forwarded: bool,
}

pub fn run(a: ProxyArgs) -> anyhow::Result<()> {
    crate::logging::init();
    if a.authority_key.is_empty() {
        anyhow::bail!("--authority-key FILE is required: pin the registry's authority public key (`<data-dir>/authority.pub.jwk`)");
    }
    let keys = a
        .authority_key
        .iter()
        .map(|p| pinned_public_key(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    veto_authorizer::check_registry_url(&a.registry)
        .context("--registry must be an http:// or https:// URL of the registry")?;
    let client_tls = veto_tls::ClientTls::with_ca_file(a.bus.ca_file.as_deref())?;
    let tls = util::server_tls(
        a.tls_cert.as_deref(),
        a.tls_key.as_deref(),
        None,
        ("--tls-cert", "--tls-key"),
    )?;
    let admin_tls = util::server_tls(
        a.admin_tls_cert.as_deref(),
        a.admin_tls_key.as_deref(),
        None,
        ("--admin-tls-cert", "--admin-tls-key"),
    )?;
    let mut config = Config::new(&a.registry, &a.iss, KeySet::new(keys));
    config.tls = Some(client_tls.clone());
    if !a.issuer_key.is_empty() {
        let issuers = a
            .issuer_key
            .iter()
            .map(|p| pinned_public_key(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        config.issuers = Issuers::Pinned(KeySet::new(issuers));
    }
    config.push = match (a.bus.settings()?, a.no_push) {
        (Some(_), true) => anyhow::bail!("--bus and --no-push exclude each other"),
        (None, true) => Push::Off,
        (Some(bus), false) => Push::Nats(bus),
        (None, false) => Push::Sse,
    };
    let push_name = match &config.push {
        Push::Sse => "SSE".to_owned(),
        Push::Nats(bus) => format!("NATS {}", bus.servers()),
        Push::Off => "off (polling only)".to_owned(),
    };
    config.poll_interval = Duration::from_secs(a.poll_interval);
    config.push_idle_timeout = Duration::from_secs(a.push_idle_timeout);
    config.chain_cache_bytes = a.chain_cache_bytes;
    config.max_snapshot_bytes = a.max_snapshot_bytes;
    config.check.max_staleness = a.max_staleness;
    config.check.skew = a.skew;
    config.check.policy = match a.policy {
        Policy::FailClosed => StalenessPolicy::FailClosed,
        Policy::FailOpen => StalenessPolicy::FailOpen,
    };
    config.check.issuer = Some(a.iss.clone());
    if let Some(name) = &a.name {
        let key = gateway_key(a.gateway_key.as_deref(), a.cache_dir.as_deref())?;
        let token = match &a.fleet_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading the fleet token `{}`", p.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        if a.report_interval == 0 || a.report_interval > 3600 {
            anyhow::bail!("--report-interval {} s: give 1 s to 1 h", a.report_interval);
        }
        let mut fleet = veto_authorizer::FleetConfig::new(name.clone(), Arc::new(key), token);
        fleet.interval = Duration::from_secs(a.report_interval);
        config.fleet = Some(fleet);
    }
    config.cache_dir = a.cache_dir;
    if a.pop_window == 0 || a.pop_window > 300 {
        anyhow::bail!(
            "--pop-window {} s: give 1 s to 5 min (a proof is only as replayable as the window is long)",
            a.pop_window
        );
    }
    config.pop = PopConfig {
        policy: a.pop,
        window: a.pop_window,
        replay_bytes: a.pop_replay_bytes,
        nonce: a.pop_nonce,
    };
    let routes = match &a.routes {
        Some(p) => Routes::parse(
            &std::fs::read_to_string(p)
                .with_context(|| format!("reading routes `{}`", p.display()))?,
        )?,
        None => Routes::default(),
    };
    let upstream = veto_proxy::upstream_uri(&a.upstream)?;
    let upgrade_protocols: Vec<String> = a
        .upgrade_protocols
        .iter()
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    if upgrade_protocols.iter().any(|p| p == "h2c") {
        tracing::warn!("--upgrade-protocols lists `h2c`: it is refused anyway (an h2c connection would carry requests the proxy cannot authorize)");
    }
    let threads = match a.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}: choose another with --listen",
                    a.listen
                )
            })?;
        let admin = tokio::net::TcpListener::bind(a.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}: choose another with --admin-listen",
                    a.admin_listen
                )
            })?;
        let authz = Authorizer::start(config).await?;
        let scheme = |t: &Option<veto_tls::ServerTls>| if t.is_some() { "https" } else { "http" };
        println!(
            "veto proxy listening on {}://{}",
            scheme(&tls),
            listener.local_addr()?
        );
        println!(
            "  admin (metrics, health): {}://{}",
            scheme(&admin_tls),
            admin.local_addr()?
        );
        println!("  upstream : {}", a.upstream);
        println!("  registry : {} (push: {})", a.registry, push_name);
        println!(
            "  policy   : {:?}, max staleness {} s",
            a.policy, a.max_staleness
        );
        println!(
            "  proof    : {} (DPoP window {} s{})",
            a.pop,
            a.pop_window,
            if a.pop_nonce { ", server nonces" } else { "" }
        );
        veto_proxy::serve(
            authz,
            ProxyConfig {
                routes,
                header_read_timeout: Duration::from_secs(a.header_timeout),
                upstream_timeout: Duration::from_secs(a.upstream_timeout),
                upgrade_protocols,
                tls,
                admin_tls,
                upstream_tls: Some(client_tls),
                trust_forwarded: a.trust_forwarded,
                ..ProxyConfig::new(upstream)
            },
            listener,
            admin,
            crate::logging::shutdown_signal(),
        )
        .await?;
        Ok(())
    })
}

/// The gateway's key: `given`, or `<cache_dir>/gateway.jwk` (created 0600
/// in a 0700 directory on first start); one or the other is required.
fn gateway_key(
    given: Option<&std::path::Path>,
    cache_dir: Option<&std::path::Path>,
) -> anyhow::Result<veto_core::SigningKey> {
    let path = match (given, cache_dir) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(dir)) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating `{}`", dir.display()))?;
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("making `{}` private", dir.display()))?;
            }
            let path = dir.join("gateway.jwk");
            if !path.exists() {
                keyfile::write_signing_key(&path, &veto_core::SigningKey::generate()?)?;
            }
            path
        }
        (None, None) => anyhow::bail!(
            "--name needs a gateway key that outlives this process: give --cache-dir DIR (the key is kept there) or --gateway-key FILE"
        ),
    };
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)
            .with_context(|| format!("reading the gateway key `{}`", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the gateway key is readable by others: chmod 600 it (whoever reads it can report as this gateway)");
        }
    }
    keyfile::read_signing_key(&path)
        .with_context(|| format!("reading the gateway key `{}`", path.display()))
}

/// A public key to pin, from a JWK file; a private key file is refused: a
/// gateway needs, and must never hold, only the public half.
fn pinned_public_key(path: &std::path::Path) -> anyhow::Result<veto_core::PublicKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    let jwk: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("`{}` is not a JWK (JSON)", path.display()))?;
    if jwk.get("d").is_some() {
        anyhow::bail!(
            "`{}` holds a private key: pin the public half (the registry writes it to `<data-dir>/authority.pub.jwk`); a gateway must never hold the private key",
            path.display()
        );
    }
    Ok(keyfile::read_public_key(path)?)
}
