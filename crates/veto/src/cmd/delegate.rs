//! `veto delegate`: extend a chain with a narrower child, offline.

use std::path::PathBuf;

use clap::Args;
use veto_core::{keyfile, warrant, LinkSpec, ParsedChain};

use crate::util;

#[derive(Args, Debug)]
pub struct DelegateArgs {
    /// The parent chain: the text itself, `@FILE`, or `-` for stdin.
    #[arg(long)]
    parent: String,
    /// The parent holder's private key file (the key the parent's leaf binds).
    #[arg(long)]
    holder_key: PathBuf,
    /// The new holder's key file (public or private JWK); default: the
    /// parent's holder key, for a narrower sub-task of the same agent.
    #[arg(long)]
    to_key: Option<PathBuf>,
    /// The agent the child is for; default: the parent leaf's agent.
    #[arg(long, allow_hyphen_values = true)]
    agent: Option<String>,
    /// Permitted action patterns; each must be covered by the parent's.
    #[arg(long = "act", num_args = 1.., required = true)]
    act: Vec<String>,
    /// Lifetime, e.g. `5m`; must not outlive the parent.
    #[arg(long, value_parser = util::parse_duration)]
    ttl: u64,
}

pub fn run(a: DelegateArgs) -> anyhow::Result<()> {
    let parent = util::read_chain(&a.parent)?;
    let holder_key = keyfile::read_signing_key(&a.holder_key)?;
    let to = match &a.to_key {
        Some(p) => keyfile::read_public_key(p)?,
        None => holder_key.public().clone(),
    };
    let sub = match a.agent {
        Some(s) => s,
        None => ParsedChain::parse(&parent)
            .map_err(|d| anyhow::anyhow!("parent chain: {d}"))?
            .leaf()
            .claims()
            .sub
            .clone(),
    };
    let now = util::now();
    let chain = warrant::delegate(
        &parent,
        &holder_key,
        LinkSpec {
            sub,
            act: a.act,
            iat: now,
            exp: now + a.ttl,
            holder: Some(to),
        },
    )?;
    println!("{chain}");
    Ok(())
}
