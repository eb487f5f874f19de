//! `veto srl show`: fetch and verify the published state.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use veto_core::{keyfile, KeySet, SrlState, SrlVerifier};

use crate::client::{Client, RegistryArgs};
use crate::util;

#[derive(Subcommand, Debug)]
pub enum SrlCommand {
    /// Fetch the snapshot and checkpoint, verify them against the pinned
    /// authority key, and summarize them.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The pinned authority public key file.
    #[arg(long, env = "VETO_AUTHORITY_KEY_FILE")]
    authority_key: PathBuf,
    /// The authority name expected as `iss`.
    #[arg(long, default_value = "veto")]
    iss: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(cmd: SrlCommand) -> anyhow::Result<()> {
    let SrlCommand::Show(a) = cmd;
    let key = keyfile::read_public_key(&a.authority_key)?;
    let verifier = SrlVerifier::new(KeySet::new([key]), a.iss);
    let client = Client::new(&a.registry)?;
    let now = util::now();
    // The binary container: the JWS, `\n`, the table bytes (not trimmed).
    let body = client.get_bytes(veto_core::wire::path::SRL)?;
    let snapshot = verifier
        .snapshot(&body, now)
        .map_err(|e| anyhow::anyhow!("the snapshot does not verify against the pinned key: {e}"))?;
    let (ver, head, iat, exp) = (snapshot.ver, snapshot.head, snapshot.iat, snapshot.exp);
    let (w, ag, k) = snapshot.set.tables();
    let mut state = SrlState::new();
    state.apply_snapshot(snapshot)?;
    let cp = client.get_text(veto_core::wire::path::SRL_CHECKPOINT)?;
    let cp = verifier
        .checkpoint(cp.trim(), now)
        .map_err(|e| anyhow::anyhow!("the checkpoint does not verify: {e}"))?;
    let cp_note = match state.apply_checkpoint(&cp) {
        Ok(_) => "consistent with the snapshot".to_owned(),
        Err(e) => format!("NOT consistent with the snapshot: {e}"),
    };
    println!("snapshot (verified): version {ver}, {} bytes", body.len());
    println!("  head     {head}");
    println!(
        "  signed   {} ({} s ago), valid until {}",
        util::rfc3339(iat),
        now.saturating_sub(iat),
        util::rfc3339(exp)
    );
    println!(
        "  entries  {} warrants, {} agents, {} keys (listed by SHA-256/96 digest)",
        w.len(),
        ag.len(),
        k.len()
    );
    println!(
        "checkpoint (verified): version {}, signed {} ({} s ago): {cp_note}",
        cp.payload.ver,
        util::rfc3339(cp.payload.iat),
        now.saturating_sub(cp.payload.iat)
    );
    Ok(())
}
