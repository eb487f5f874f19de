//! `veto revoke` and `veto revocations list`.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use veto_core::wire::{path, DelegatedRevokeRequest, RevokeEntry, RevokeRequest, RevokeResponse};
use veto_core::EntryKind;

use crate::client::{Client, RegistryArgs};
use crate::util;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Warrant,
    Agent,
    Key,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// What to revoke: a warrant (by `jti`; its descendants go with it),
    /// an agent (by id, credentials issued up to `--before`), or a key (by thumbprint).
    #[arg(value_enum, required_unless_present = "as_holder")]
    kind: Option<Kind>,
    /// The `jti`, agent id or key thumbprint (base64url ids may start with `-`).
    #[arg(allow_hyphen_values = true, required_unless_present = "as_holder")]
    id: Option<String>,
    /// Revoke as a holder instead of with the admin token: link `--link`
    /// of `--chain`, proved with `--holder-key` (the key of that link or of
    /// one above it; DPoP, RFC 9449).
    #[arg(long, requires_all = ["holder_key", "chain", "link"], conflicts_with_all = ["kind", "id", "before", "expires_at"])]
    as_holder: bool,
    /// With --as-holder: the private key (JWK file) bound by the link or by one above it.
    #[arg(long, env = "VETO_HOLDER_KEY")]
    holder_key: Option<std::path::PathBuf>,
    /// With --as-holder: the chain (`-`, `@FILE` or the chain itself).
    #[arg(long, env = "VETO_CHAIN")]
    chain: Option<String>,
    /// With --as-holder: the link to revoke, 0 = the root.
    #[arg(long)]
    link: Option<usize>,
    /// Why: unspecified, key_compromise, affiliation_changed, superseded,
    /// cessation_of_operation, privilege_withdrawn.
    #[arg(long, default_value = "unspecified")]
    reason: String,
    /// Agents: revoke credentials issued at or before this Unix time (or `now`, the default).
    #[arg(long)]
    before: Option<String>,
    /// Unix time after which nothing this entry matches can be valid, so it can be pruned.
    #[arg(long)]
    expires_at: Option<u64>,
    /// Free text for the audit log (not published).
    #[arg(long, allow_hyphen_values = true)]
    note: Option<String>,
    /// After the registry acknowledges, wait until every enrolled gateway
    /// enforces the revocation: reports its version, or (fail-closed) is
    /// past its staleness limit and denies everything. One line per
    /// gateway; exit 3 naming the laggards when --timeout passes first, or
    /// when no gateway is enrolled. Needs a token with the `fleet` scope
    /// (checked before revoking).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "10s", value_parser = util::parse_duration, requires = "wait")]
    timeout: u64,
    /// With --wait: print one JSON object with every gateway's outcome.
    #[arg(long, requires = "wait")]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn parse_time(text: &str) -> anyhow::Result<u64> {
    if text == "now" {
        return Ok(util::now());
    }
    text.parse()
        .map_err(|_| anyhow::anyhow!("invalid time `{text}`: give Unix seconds or `now`"))
}

/// `veto revoke --as-holder`: `POST /v1/revocations/delegated`.
fn run_as_holder(a: RevokeArgs, client: &Client) -> anyhow::Result<()> {
    let (Some(key_file), Some(chain), Some(link)) = (&a.holder_key, &a.chain, a.link) else {
        anyhow::bail!("--as-holder needs --holder-key, --chain and --link");
    };
    let chain = util::read_chain(chain)?;
    let chain = chain.strip_prefix("DPoP ").unwrap_or(&chain).to_owned();
    let key = veto_core::keyfile::read_signing_key(key_file)?;
    let body = DelegatedRevokeRequest {
        link,
        reason: Some(a.reason),
        note: a.note,
    };
    if a.wait {
        super::fleet::can_wait(client)?;
    }
    let resp = client.post_as_holder(
        path::REVOCATIONS_DELEGATED,
        &serde_json::to_value(&body)?,
        &chain,
        &key,
    )?;
    let first = serde_json::from_value::<RevokeResponse>(resp.clone())
        .ok()
        .and_then(|r| r.entries.into_iter().next())
        .ok_or_else(|| {
            anyhow::anyhow!("the registry's answer is not a revocation result: {resp}")
        })?;
    let said = if first.created {
        format!(
            "revoked link {link} (warrant `{}`) in version {}",
            first.id, first.version
        )
    } else {
        format!(
            "link {link} (warrant `{}`) was already revoked in version {}",
            first.id, first.version
        )
    };
    if a.json {
        eprintln!("{said}");
    } else {
        println!("{said}");
    }
    if a.wait {
        let timeout = std::time::Duration::from_secs(a.timeout);
        return super::fleet::wait(client, first.version, timeout, a.json);
    }
    Ok(())
}

pub fn run(a: RevokeArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.registry)?;
    if a.as_holder {
        return run_as_holder(a, &client);
    }
    let (Some(kind), Some(id)) = (a.kind, a.id) else {
        anyhow::bail!(
            "give what to revoke (`warrant`, `agent` or `key`) and its id, or --as-holder"
        );
    };
    let before = match kind {
        Kind::Agent => Some(parse_time(a.before.as_deref().unwrap_or("now"))?),
        _ if a.before.is_some() => anyhow::bail!("--before applies only to agents"),
        _ => None,
    };
    let kind = match kind {
        Kind::Warrant => EntryKind::Warrant,
        Kind::Agent => EntryKind::Agent,
        Kind::Key => EntryKind::Key,
    };
    let request = RevokeRequest {
        entries: vec![RevokeEntry {
            kind: kind.as_str().to_owned(),
            id,
            reason: Some(a.reason),
            before,
            expires_at: a.expires_at,
            note: a.note,
        }],
    };
    if a.wait {
        super::fleet::can_wait(&client)?;
    }
    let resp = client.post(path::REVOCATIONS, &serde_json::to_value(&request)?)?;
    let Some(first) = serde_json::from_value::<RevokeResponse>(resp.clone())
        .ok()
        .and_then(|r| r.entries.into_iter().next())
    else {
        anyhow::bail!(
            "the registry's answer is not a revocation result with an entry: is `--registry` a veto registry? answer: {resp}"
        );
    };
    let (kind, id, version) = (first.kind.as_str(), first.id, first.version);
    let said = if first.created {
        format!("revoked {kind} `{id}` in version {version}")
    } else {
        format!("{kind} `{id}` was already revoked in version {version}")
    };
    // With --json, standard output is the one JSON object.
    if a.json {
        eprintln!("{said}");
    } else {
        println!("{said}");
    }
    if a.wait {
        let timeout = std::time::Duration::from_secs(a.timeout);
        return super::fleet::wait(&client, version, timeout, a.json);
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum RevocationsCommand {
    /// List the audit log: who revoked what, when, why, in which version.
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only this id.
    #[arg(long, allow_hyphen_values = true)]
    id: Option<String>,
    /// Only what this actor did (a token name, `admin`, or a holder).
    #[arg(long, allow_hyphen_values = true)]
    actor: Option<String>,
    /// Only at or after this Unix time.
    #[arg(long)]
    since: Option<u64>,
    /// Only before this Unix time.
    #[arg(long)]
    until: Option<u64>,
    /// Start after this sequence number (the `next` of a previous page).
    #[arg(long)]
    after: Option<i64>,
    /// Records per page (1 to 1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run_list(cmd: RevocationsCommand) -> anyhow::Result<()> {
    let RevocationsCommand::List(a) = cmd;
    let client = Client::new(&a.registry)?;
    let mut q = vec![format!("limit={}", a.limit)];
    for (k, v) in [("kind", a.kind), ("id", a.id), ("actor", a.actor)] {
        if let Some(v) = v {
            q.push(format!("{k}={}", urlencode(&v)));
        }
    }
    for (k, v) in [("since", a.since), ("until", a.until)] {
        if let Some(v) = v {
            q.push(format!("{k}={v}"));
        }
    }
    if let Some(v) = a.after {
        q.push(format!("after={v}"));
    }
    let resp = client.get(&format!("{}?{}", path::REVOCATIONS, q.join("&")), true)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(());
    }
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .or_else(|| v.as_u64().map(|n| n.to_string()))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:>6}  {:<20}  {:<8}  {:<16}  {:<8}  {:<40}  {:<20}  version",
        "seq", "at", "actor", "action", "kind", "id", "reason"
    );
    for r in resp["items"].as_array().into_iter().flatten() {
        let at = r["at"].as_u64().map(util::rfc3339).unwrap_or_default();
        println!(
            "{:>6}  {:<20}  {:<8}  {:<16}  {:<8}  {:<40}  {:<20}  {}",
            s(&r["seq"]),
            at,
            s(&r["actor"]),
            s(&r["action"]),
            s(&r["kind"]),
            s(&r["id"]),
            s(&r["reason"]),
            s(&r["version"])
        );
    }
    if let Some(next) = resp["next"].as_i64() {
        println!("more: --after {next}");
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
