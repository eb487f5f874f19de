//! `veto keys`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use veto_core::{keyfile, SigningKey};

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Generate a new Ed25519 private key as a JWK file (mode 0600).
    Generate {
        /// Where to write the private key; never overwrites a file.
        #[arg(long)]
        out: PathBuf,
        /// Also write the public key here.
        #[arg(long)]
        public_out: Option<PathBuf>,
    },
    /// Print the public JWK and thumbprint of a key file.
    Show {
        /// A private or public JWK file.
        file: PathBuf,
    },
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Generate { out, public_out } => {
            let key = SigningKey::generate().context("generating a key")?;
            keyfile::write_signing_key(&out, &key)?;
            if let Some(p) = public_out {
                keyfile::write_public_key(&p, key.public())?;
            }
            println!("{}", key.kid());
            eprintln!("wrote private key `{}` (kid {})", out.display(), key.kid());
            Ok(())
        }
        KeysCommand::Show { file } => {
            let key = keyfile::read_public_key(&file)?;
            println!("{}", serde_json::to_string_pretty(&key.to_jwk())?);
            Ok(())
        }
    }
}
