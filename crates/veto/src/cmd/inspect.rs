//! `veto inspect`: decode and explain a chain without trusting it.

use std::path::PathBuf;

use clap::Args;
use veto_core::{keyfile, CheckConfig, Checker, KeySet, ParsedChain};

use crate::util;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The chain: the text itself, `@FILE`, or `-` for stdin.
    chain: String,
    /// Also verify signatures and chain rules against this issuer key file.
    #[arg(long)]
    issuer_key: Option<PathBuf>,
    /// Print the decoded links as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let token = util::read_chain(&a.chain)?;
    let chain = ParsedChain::parse(&token).map_err(|e| anyhow::anyhow!("{}: {e}", e.reason()))?;
    let now = util::now();
    if a.json {
        let links: Vec<_> = chain
            .links()
            .iter()
            .map(|l| serde_json::json!({"kid": l.kid(), "claims": l.claims()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&links)?);
    } else {
        println!(
            "chain of {} link(s), root first (claims decoded, NOT trusted):",
            chain.links().len()
        );
        for (i, link) in chain.links().iter().enumerate() {
            let c = link.claims();
            println!("link {i}:");
            println!("  jti  {}", c.jti);
            println!("  sub  {}", c.sub);
            println!("  iss  {}", c.iss.as_deref().unwrap_or("-"));
            println!("  kid  {}  (signing key)", link.kid().unwrap_or("-"));
            if let Some(t) = c.iat {
                println!("  iat  {} ({t})", util::rfc3339(t));
            }
            let left = if c.exp > now {
                format!("{} s left", c.exp - now)
            } else {
                "EXPIRED".into()
            };
            println!("  exp  {} ({}, {left})", util::rfc3339(c.exp), c.exp);
            println!(
                "  act  {}",
                if c.act.is_empty() {
                    "(none)".into()
                } else {
                    c.act.join(" ")
                }
            );
            println!(
                "  cnf  {}",
                link.holder()
                    .map_or("(none: cannot be delegated)", |h| h.kid())
            );
            if let Some(p) = &c.par {
                println!("  par  {p}");
            }
        }
    }
    match a.issuer_key {
        Some(path) => {
            let issuer = keyfile::read_public_key(&path)?;
            let checker = Checker::new(KeySet::new([issuer]), CheckConfig::default());
            match checker.verify(chain) {
                Ok(_) => note(
                    a.json,
                    "signatures and chain rules: OK (revocation and expiry not checked here)",
                ),
                Err(d) => {
                    note(a.json, &format!("signatures and chain rules: FAILED: {d}"));
                    std::process::exit(2);
                }
            }
        }
        None => note(
            a.json,
            "signatures: not checked (pass --issuer-key FILE to verify)",
        ),
    }
    Ok(())
}

/// Status lines: on stdout for people, on stderr when stdout is JSON.
fn note(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}
