//! `veto serve`: run the registry on the embedded default (SQLite + SSE).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use veto_core::keyfile;
use veto_registry::{Config, Registry};

use crate::util;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "VETO_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Data directory: database, authority key, admin token.
    #[arg(long, env = "VETO_DATA_DIR", default_value = "./veto-data")]
    data_dir: PathBuf,
    /// Authority name (`iss`) in every signed object.
    #[arg(long, env = "VETO_ISS", default_value = "veto")]
    iss: String,
    /// Authority private key file (default: `<data-dir>/authority.jwk`, created on first start).
    #[arg(long, env = "VETO_AUTHORITY_KEY")]
    authority_key: Option<PathBuf>,
    /// Checkpoint interval.
    #[arg(long, default_value = "5s", value_parser = util::parse_duration)]
    heartbeat: u64,
    /// How long a checkpoint or snapshot may be relied on.
    #[arg(long, default_value = "300s", value_parser = util::parse_duration)]
    attestation_ttl: u64,
    /// How often entries past `expires_at` are pruned.
    #[arg(long, default_value = "60s", value_parser = util::parse_duration)]
    prune_interval: u64,
    /// Versions of deltas to retain for catching up.
    #[arg(long, default_value_t = 100_000)]
    retention: u64,
    /// Most concurrent SSE subscribers; more are refused with 503.
    #[arg(long, default_value_t = 10_000)]
    max_subscribers: usize,
    /// An SSE subscriber that takes no event for this long is disconnected
    /// (it reconnects and resumes from its last event id).
    #[arg(long, default_value = "30s", value_parser = util::parse_duration)]
    subscriber_timeout: u64,
    /// A client that has not sent a whole request head within this long is
    /// disconnected.
    #[arg(long, default_value = "30s", value_parser = util::parse_duration)]
    header_timeout: u64,
    /// Share the state with other replicas in PostgreSQL
    /// (`postgres://user@host/db`); default: SQLite in the data directory.
    #[arg(long, env = "VETO_STORE")]
    store: Option<String>,
    /// Also publish deltas and checkpoints to NATS JetStream (stream
    /// `VETO_SRL`), through a transactional outbox.
    #[command(flatten)]
    bus: util::BusArgs,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); reloaded
    /// when the file changes or on SIGHUP. Needs --tls-key.
    #[arg(long, env = "VETO_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "VETO_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Require, on the admin API (revocations, warrants, issuer keys), a
    /// client certificate issued by a CA in this PEM bundle, in addition
    /// to the admin token. Public endpoints stay open. Needs --tls-cert.
    #[arg(long, env = "VETO_CLIENT_CA")]
    client_ca: Option<PathBuf>,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    crate::logging::init();
    let mut config = Config::new(&a.data_dir);
    config.iss = a.iss;
    config.authority_key = a.authority_key;
    config.heartbeat = Duration::from_secs(a.heartbeat);
    config.attestation_ttl = a.attestation_ttl;
    config.prune_interval = Duration::from_secs(a.prune_interval);
    config.retention = a.retention;
    config.max_subscribers = a.max_subscribers;
    config.subscriber_timeout = Duration::from_secs(a.subscriber_timeout);
    config.header_timeout = Duration::from_secs(a.header_timeout);
    config.admin_token = std::env::var("VETO_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    config.fleet_token = std::env::var("VETO_FLEET_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(url) = &a.store {
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            anyhow::bail!(
                "--store must be a postgres:// URL (the default store is SQLite in --data-dir)"
            );
        }
    }
    let store = match (&a.store, &a.bus.ca_file) {
        (Some(url), Some(ca)) if !url.contains("sslrootcert=") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            Some(format!("{url}{sep}sslrootcert={}", ca.display()))
        }
        (url, _) => url.clone(),
    };
    config.store = store;
    config.tls = util::server_tls(
        a.tls_cert.as_deref(),
        a.tls_key.as_deref(),
        a.client_ca.as_deref(),
        ("--tls-cert", "--tls-key"),
    )?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    config.bus = a.bus.settings()?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        if let Some(bus) = &config.bus {
            first_connect(bus).await?;
        }
        let registry = Registry::open(config)
            .await
            .with_context(|| format!("opening the registry in `{}`", a.data_dir.display()))?;
        let pub_path = a.data_dir.join("authority.pub.jwk");
        if !pub_path.exists() {
            keyfile::write_public_key(&pub_path, registry.authority_key())?;
        }
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}: is another process using it? choose another with --listen", a.listen))?;
        let addr = listener.local_addr()?;
        println!("veto registry listening on {scheme}://{addr}");
        println!("  data directory : {}", a.data_dir.display());
        println!("  store          : {}", if a.store.is_some() { "PostgreSQL (shared with replicas)" } else { "SQLite (data directory)" });
        match registry.admin_token_path() {
            Some(p) => println!("  admin token    : {}", p.display()),
            None => println!("  admin token    : from VETO_ADMIN_TOKEN"),
        }
        match registry.fleet_token_path() {
            Some(p) => println!("  fleet token    : {} (gateways enrol with it: veto proxy --name NAME --fleet-token-file FILE)", p.display()),
            None => println!("  fleet token    : from VETO_FLEET_TOKEN"),
        }
        if let Some(ca) = &a.client_ca {
            println!("  client certs   : required on the admin API (issued by {})", ca.display());
        }
        println!("  authority iss  : {}", registry.iss());
        println!("  authority key  : {} (pin this file in authorizers: --authority-key)", pub_path.display());
        println!("  {}", serde_json::to_string(&registry.authority_key().to_jwk())?);
        println!("  version        : {}", registry.version());
        tracing::info!(%addr, version = registry.version(), "registry started");
        registry.serve(listener, crate::logging::shutdown_signal()).await?;
        tracing::info!("registry stopped");
        Ok(())
    })
}

/// Connects to the NATS bus once before serving: a certificate or
/// credential problem stops the start (retrying cannot fix it); an
/// unreachable server does not (deltas wait in the outbox).
async fn first_connect(bus: &veto_bus::NatsSettings) -> anyhow::Result<()> {
    match bus.connect("veto-registry").await {
        Ok(client) => {
            drop(client);
            Ok(())
        }
        Err(e) if e.is_configuration() => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "NATS unreachable at start; deltas wait in the outbox until it is back");
            Ok(())
        }
    }
}
