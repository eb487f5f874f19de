//! `veto keys`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use veto_core::wire::path;
use veto_core::{keyfile, SigningKey};

use crate::client::{Client, RegistryArgs};

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
    /// Add a new issuer key at the registry; new warrants are signed with
    /// it, warrants signed with older keys stay valid until those are retired.
    Rotate {
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Retire an issuer key: it leaves the signed issuer key set and the JWKS, and stops being trusted.
    Retire {
        /// The key's thumbprint (base64url: it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        kid: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// List the registry's issuer keys.
    List {
        #[command(flatten)]
        registry: RegistryArgs,
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
        KeysCommand::Rotate { registry } => {
            let resp = Client::new(&registry)?.post(path::ISSUER_KEYS, &serde_json::json!({}))?;
            let Some(kid) = resp["kid"].as_str() else {
                anyhow::bail!("the registry's answer has no `kid`: is `--registry` a veto registry? answer: {resp}");
            };
            println!("{kid}");
            eprintln!("new issuer key added; older keys stay trusted until `veto keys retire KID`");
            Ok(())
        }
        KeysCommand::Retire { kid, registry } => {
            Client::new(&registry)?.delete(&format!("{}/{kid}", path::ISSUER_KEYS))?;
            println!("retired issuer key {kid}");
            Ok(())
        }
        KeysCommand::List { registry } => {
            let resp = Client::new(&registry)?.get(path::ISSUER_KEYS, true)?;
            println!("{}", serde_json::to_string_pretty(&resp["keys"])?);
            Ok(())
        }
        KeysCommand::Show { file } => {
            let key = keyfile::read_public_key(&file)?;
            println!("{}", serde_json::to_string_pretty(&key.to_jwk())?);
            Ok(())
        }
    }
}
