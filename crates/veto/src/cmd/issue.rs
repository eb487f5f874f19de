//! `veto issue --offline`: mint a root warrant with a local issuer key.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use veto_core::{keyfile, warrant, LinkSpec};

use crate::client::{Client, RegistryArgs};
use crate::util;

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// Sign locally with `--issuer-key` instead of asking the registry.
    #[arg(long)]
    offline: bool,
    /// The issuer's private key file (with `--offline`).
    #[arg(long, required_if_eq("offline", "true"))]
    issuer_key: Option<PathBuf>,
    /// The issuer name written as `iss`.
    #[arg(long, default_value = "veto")]
    iss: String,
    /// The agent id (`sub`).
    #[arg(long, allow_hyphen_values = true)]
    agent: String,
    /// Permitted action patterns, e.g. `http:GET:/orders/*`.
    #[arg(long = "act", num_args = 1.., required = true)]
    act: Vec<String>,
    /// Lifetime, e.g. `15m`, `12h`.
    #[arg(long, value_parser = util::parse_duration)]
    ttl: u64,
    /// The holder's key file (public or private JWK), bound as `cnf` so the
    /// holder can delegate.
    #[arg(long)]
    holder_key: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(a: IssueArgs) -> anyhow::Result<()> {
    if !a.offline {
        let mut body = serde_json::json!({"agent": a.agent, "act": a.act, "ttl": a.ttl});
        if let Some(p) = &a.holder_key {
            body["holder_key"] = serde_json::to_value(keyfile::read_public_key(p)?.to_jwk())?;
        }
        let resp = Client::new(&a.registry)?.post(veto_core::wire::path::WARRANTS, &body)?;
        let Some(chain) = resp["warrant"].as_str() else {
            bail!("the registry answered without a warrant");
        };
        println!("{chain}");
        return Ok(());
    }
    let issuer_path = a
        .issuer_key
        .context("`--offline` needs `--issuer-key FILE`")?;
    let issuer = keyfile::read_signing_key(&issuer_path)?;
    let holder = a
        .holder_key
        .as_deref()
        .map(keyfile::read_public_key)
        .transpose()?;
    let now = util::now();
    let chain = warrant::mint_root(
        &issuer,
        &a.iss,
        LinkSpec {
            sub: a.agent,
            act: a.act,
            iat: now,
            exp: now + a.ttl,
            holder,
        },
    )?;
    println!("{chain}");
    Ok(())
}
