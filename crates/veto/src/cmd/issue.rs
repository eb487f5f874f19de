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
    /// The holder's key file (public or private JWK), bound as `cnf`: the
    /// key the agent proves on every request (DPoP) and delegates with.
    /// Without it a new key is generated into --holder-key-out.
    #[arg(long)]
    holder_key: Option<PathBuf>,
    /// Where a generated holder private key is written (mode 0600; an
    /// existing file is never replaced). Default: `<agent>.holder.jwk`.
    #[arg(long, conflicts_with = "holder_key")]
    holder_key_out: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// The holder key to bind: the one given, or a new one written to a 0600
/// file (its path reported on standard error).
fn holder(a: &IssueArgs) -> anyhow::Result<veto_core::PublicKey> {
    if let Some(p) = &a.holder_key {
        return Ok(keyfile::read_public_key(p)?);
    }
    let out = a.holder_key_out.clone().unwrap_or_else(|| {
        let safe: String = a
            .agent
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        PathBuf::from(format!("{}.holder.jwk", safe.trim_start_matches('.')))
    });
    let key = veto_core::SigningKey::generate()?;
    keyfile::write_signing_key(&out, &key).with_context(|| {
        format!(
            "writing the new holder key to `{}` (give --holder-key FILE, or another --holder-key-out)",
            out.display()
        )
    })?;
    eprintln!(
        "veto issue: the holder's private key is in `{}` (mode 0600): the agent proves it on every request (`veto request --holder-key`)",
        out.display()
    );
    Ok(key.public().clone())
}

pub fn run(a: IssueArgs) -> anyhow::Result<()> {
    let holder = holder(&a)?;
    if !a.offline {
        let body = serde_json::json!({"agent": a.agent, "act": a.act, "ttl": a.ttl, "holder_key": holder.to_jwk()});
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
    let now = util::now();
    let chain = warrant::mint_root(
        &issuer,
        &a.iss,
        LinkSpec {
            sub: a.agent,
            act: a.act,
            iat: now,
            exp: now + a.ttl,
            holder: Some(holder),
        },
    )?;
    println!("{chain}");
    Ok(())
}
