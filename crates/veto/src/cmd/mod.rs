//! Subcommands.

use clap::{Parser, Subcommand};

mod delegate;
mod inspect;
mod issue;
mod keys;

/// veto: instant, provable credential revocation for AI agents.
#[derive(Parser, Debug)]
#[command(name = "veto", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage Ed25519 keys (JWK files).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Mint a root warrant for an agent.
    Issue(issue::IssueArgs),
    /// Delegate a narrower child warrant under a chain, offline.
    Delegate(delegate::DelegateArgs),
    /// Decode and explain a chain without trusting it.
    Inspect(inspect::InspectArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keys(c) => keys::run(c),
        Command::Issue(a) => issue::run(a),
        Command::Delegate(a) => delegate::run(a),
        Command::Inspect(a) => inspect::run(a),
    }
}
