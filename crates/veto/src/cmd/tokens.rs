//! `veto tokens create | list | revoke`: named API tokens with scopes
//! (DESIGN 5), managed with the bootstrap admin token.

use clap::{Args, Subcommand};
use serde_json::json;
use veto_core::wire::path;

use crate::client::{Client, RegistryArgs};
use crate::util;

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a named token with scopes; prints the token once.
    Create(CreateArgs),
    /// List the named tokens (never the tokens themselves).
    List(ListArgs),
    /// Revoke a named token.
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Its name, as the audit log will show it (`A-Z a-z 0-9 . _ -`).
    #[arg(long)]
    name: String,
    /// A scope it gets: revoke, mint, audit, keys, fleet (repeatable).
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The token's name.
    name: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(cmd: TokensCommand) -> anyhow::Result<()> {
    match cmd {
        TokensCommand::Create(a) => {
            let client = Client::new(&a.registry)?;
            let resp = client.post(path::TOKENS, &json!({"name": a.name, "scopes": a.scopes}))?;
            let Some(token) = resp["token"].as_str() else {
                anyhow::bail!("the registry answered without a token: {resp}");
            };
            eprintln!(
                "veto tokens: created `{}` with scopes {}; the token is shown only now:",
                a.name, resp["scopes"]
            );
            println!("{token}");
        }
        TokensCommand::List(a) => {
            let client = Client::new(&a.registry)?;
            let resp = client.get(path::TOKENS, true)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&resp)?);
                return Ok(());
            }
            println!(
                "{:<24}  {:<32}  {:<20}  revoked",
                "name", "scopes", "created"
            );
            for t in resp["tokens"].as_array().into_iter().flatten() {
                let scopes: Vec<&str> = t["scopes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str())
                    .collect();
                println!(
                    "{:<24}  {:<32}  {:<20}  {}",
                    t["name"].as_str().unwrap_or("?"),
                    scopes.join(","),
                    t["created_at"]
                        .as_u64()
                        .map(util::rfc3339)
                        .unwrap_or_default(),
                    t["revoked_at"]
                        .as_u64()
                        .map(util::rfc3339)
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        TokensCommand::Revoke(a) => {
            let client = Client::new(&a.registry)?;
            client.delete(&format!("{}/{}", path::TOKENS, a.name))?;
            println!("revoked token `{}`", a.name);
        }
    }
    Ok(())
}
