//! Subcommands.

use clap::{Parser, Subcommand};

mod delegate;
mod demo;
pub mod fleet;
mod inspect;
mod issue;
mod keys;
mod proxy;
mod request;
mod revoke;
mod serve;
mod srl;
mod tokens;

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
    /// Run the registry (SQLite store, SSE push) on this machine.
    Serve(serve::ServeArgs),
    /// Run the reverse proxy: the authorizer in front of an upstream.
    Proxy(Box<proxy::ProxyArgs>),
    /// Send an HTTP request with a chain and a fresh DPoP proof (curl-like).
    Request(request::RequestArgs),
    /// Print a DPoP proof (RFC 9449) for a method and URL, for any HTTP client.
    Dpop(request::DpopArgs),
    /// Run the whole product on loopback and measure time-to-deny.
    Demo(demo::DemoArgs),
    /// Revoke a warrant, an agent or a key at the registry.
    Revoke(revoke::RevokeArgs),
    /// The registry's audit log.
    #[command(subcommand)]
    Revocations(revoke::RevocationsCommand),
    /// The published revocation state.
    #[command(subcommand)]
    Srl(srl::SrlCommand),
    /// Named API tokens with scopes (revoke, mint, audit, keys, fleet).
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// The fleet: every gateway, what it applied, whether it is live.
    Status(fleet::StatusArgs),
    /// Enrol or remove gateway keys.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keys(c) => keys::run(c),
        Command::Issue(a) => issue::run(a),
        Command::Delegate(a) => delegate::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Revoke(a) => revoke::run(a),
        Command::Proxy(a) => proxy::run(*a),
        Command::Demo(a) => demo::run(a),
        Command::Request(a) => request::run(a),
        Command::Dpop(a) => request::run_dpop(a),
        Command::Revocations(c) => revoke::run_list(c),
        Command::Srl(c) => srl::run(c),
        Command::Tokens(c) => tokens::run(c),
        Command::Status(a) => fleet::run_status(a),
        Command::Fleet(c) => fleet::run(c),
    }
}
