//! `veto status`, `veto fleet enrol|remove`, and the fleet wait behind
//! `veto revoke --wait`: is a revocation in force at every gateway?

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use veto_core::wire::path;

use crate::client::{Client, RegistryArgs};
use crate::util;

/// The exit status of `veto revoke --wait` when the timeout passed with
/// gateways not yet reporting the revocation's version.
pub const EXIT_NOT_IN_FORCE: u8 = 3;

/// The revocation is not (yet) in force at every gateway that was live
/// when the wait began; the laggards were printed.
#[derive(Debug)]
pub struct NotInForce {
    /// The revocation's version.
    pub version: u64,
    /// Gateways that did not report it.
    pub laggards: usize,
    /// Gateways waited for.
    pub of: usize,
    /// The timeout.
    pub timeout: Duration,
}

impl std::fmt::Display for NotInForce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "version {} is not in force at {} of {} gateways after {:?} (they are listed above); `veto status` shows the fleet",
            self.version, self.laggards, self.of, self.timeout
        )
    }
}

impl std::error::Error for NotInForce {}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the fleet again every second until interrupted.
    #[arg(long)]
    watch: bool,
    /// Print the registry's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Enrol a gateway's key (its public JWK file) under a name.
    Enrol(EnrolArgs),
    /// Remove a gateway: its reports are refused from now on.
    Remove(RemoveArgs),
}

#[derive(Args, Debug)]
pub struct EnrolArgs {
    /// The gateway's name (`[A-Za-z0-9._-]`).
    #[arg(long)]
    name: String,
    /// The gateway's key: a JWK file (the public half is sent).
    #[arg(long)]
    key: std::path::PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The gateway's id (its key's thumbprint, as `veto status` shows).
    #[arg(allow_hyphen_values = true)]
    id: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Enrol(a) => {
            let client = Client::new(&a.registry)?;
            let key = match veto_core::keyfile::read_signing_key(&a.key) {
                Ok(k) => k.public().clone(),
                Err(_) => veto_core::keyfile::read_public_key(&a.key)?,
            };
            let resp = client.post(
                path::FLEET_GATEWAYS,
                &json!({"name": a.name, "key": key.to_jwk()}),
            )?;
            println!(
                "enrolled gateway `{}` as {}",
                a.name,
                resp["id"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        FleetCommand::Remove(a) => {
            let client = Client::new(&a.registry)?;
            client.delete(&format!("{}/{}", path::FLEET_GATEWAYS, a.id))?;
            println!("removed gateway {}", a.id);
            Ok(())
        }
    }
}

/// `veto status`.
pub fn run_status(a: StatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.registry)?;
    loop {
        let fleet = client.get(path::FLEET, true)?;
        if a.json {
            println!("{fleet}");
        } else {
            if a.watch {
                // Clear the screen and home the cursor (ANSI).
                print!("\x1b[2J\x1b[H");
            }
            print_fleet(&fleet);
        }
        if !a.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_fleet(fleet: &Value) {
    let head = fleet["head"].as_u64().unwrap_or(0);
    let gateways = fleet["gateways"].as_array().cloned().unwrap_or_default();
    let count = |s: &str| gateways.iter().filter(|g| g["state"] == s).count();
    println!(
        "head {head}: {} gateways, {} live, {} stale, {} lost",
        gateways.len(),
        count("live"),
        count("stale"),
        count("lost")
    );
    println!(
        "{:<12} {:<20} {:>8} {:>5} {:<6} {:>6} {:<5} {:<11} {:>9}  ERROR",
        "ID", "NAME", "APPLIED", "LAG", "STATE", "STALE", "PUSH", "POLICY", "REPORTED"
    );
    let now = veto_core::SystemClock::now_ms();
    for g in &gateways {
        let id = text(&g["id"]);
        let reported = g["last_report_ms"]
            .as_u64()
            .map_or("never".to_owned(), |t| {
                format!("{:.1}s ago", now.saturating_sub(t) as f64 / 1000.0)
            });
        let push = match (g["push"].as_str(), g["push_connected"].as_bool()) {
            (Some(p), Some(false)) => format!("{p}!"),
            (Some(p), _) => p.to_owned(),
            _ => "-".into(),
        };
        // State in capitals when it needs attention: readable without colour.
        let state = match g["state"].as_str() {
            Some("live") => "live".to_owned(),
            Some(s) => s.to_uppercase(),
            None => "-".into(),
        };
        println!(
            "{:<12} {:<20} {:>8} {:>5} {:<6} {:>6} {:<5} {:<11} {:>9}  {}",
            id.chars().take(12).collect::<String>(),
            clean(&text(&g["name"])),
            text(&g["applied_version"]),
            text(&g["lag"]),
            state,
            g["staleness_s"]
                .as_u64()
                .map_or("-".into(), |s| format!("{s}s")),
            push,
            text(&g["policy"]),
            reported,
            clean(g["error"].as_str().unwrap_or(""))
        );
    }
}

/// Text from the fleet shown on a terminal: control characters (a
/// gateway's error text is the gateway's, or a relay's) escaped.
fn clean(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A gateway as the wait prints it: `name (id…)`.
fn who(g: &Value) -> String {
    let id = text(&g["id"]);
    format!(
        "{} ({})",
        clean(&text(&g["name"])),
        id.chars().take(8).collect::<String>()
    )
}

/// Whether gateway row `g` enforces `version`: it reports it (or later),
/// or it is fail-closed and its state is past `fresh_until`, so it denies
/// every request (`stale`) until it hears from the registry again.
fn enforces(g: &Value, version: u64, now_s: u64) -> Option<&'static str> {
    if g["applied_version"].as_u64().is_some_and(|v| v >= version) {
        return Some("in force");
    }
    let closed = g["policy"] == "fail-closed";
    if closed && g["fresh_until"].as_u64().is_some_and(|t| t <= now_s) {
        return Some("stale, denying everything (fail-closed)");
    }
    None
}

/// Checks, before anything is revoked, that `client`'s token may read the
/// fleet (`--wait` needs the `fleet` scope).
pub fn can_wait(client: &Client) -> anyhow::Result<()> {
    client.get(path::FLEET, true).map(|_| ()).map_err(|e| {
        anyhow::anyhow!("--wait reads the fleet, and the token cannot: {e:#}; nothing was revoked")
    })
}

/// After a revocation acknowledged in `version`: waits until every enrolled
/// gateway — lost ones too: a gateway that stopped reporting may still be
/// allowing requests — enforces it ([`enforces`]), printing one line per
/// gateway as it does; [`NotInForce`] after `timeout`, or at once when no
/// gateway is enrolled (nothing confirms the revocation then).
pub fn wait(
    client: &Client,
    version: u64,
    timeout: Duration,
    json_out: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let first = client.get(path::FLEET, true)?;
    let waited: Vec<Value> = first["gateways"].as_array().cloned().unwrap_or_default();
    let mut done: std::collections::HashMap<String, (u64, &'static str)> = Default::default();
    let mut last = first;
    loop {
        let now_s = util::now();
        for g in last["gateways"].as_array().into_iter().flatten() {
            let id = text(&g["id"]);
            if !waited.iter().any(|w| w["id"] == g["id"]) || done.contains_key(&id) {
                continue;
            }
            if let Some(how) = enforces(g, version, now_s) {
                let ms = started.elapsed().as_millis() as u64;
                done.insert(id, (ms, how));
                if !json_out {
                    println!("  {how} at {:<32} +{ms} ms", who(g));
                }
            }
        }
        if done.len() == waited.len() || started.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        last = client.get(path::FLEET, true)?;
    }
    // The registry's own times: when each gateway's report arrived,
    // after the commit.
    let times = client
        .get(&format!("{}/{version}", path::FLEET_VERSIONS), true)
        .unwrap_or(Value::Null);
    let after = |id: &Value| {
        times["gateways"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| &g["id"] == id)
            .and_then(|g| g["after_ms"].as_u64())
    };
    let now_row = |w: &Value| {
        last["gateways"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["id"] == w["id"])
            .cloned()
            .unwrap_or(Value::Null)
    };
    let laggards: Vec<&Value> = waited
        .iter()
        .filter(|w| !done.contains_key(&text(&w["id"])))
        .collect();
    if json_out {
        let rows: Vec<Value> = waited
            .iter()
            .map(|w| {
                let now = now_row(w);
                let how = done.get(&text(&w["id"])).map(|(_, how)| *how);
                json!({
                    "id": w["id"],
                    "name": w["name"],
                    "in_force": how.is_some(),
                    "how": how,
                    "applied_version": now["applied_version"],
                    "state": now["state"],
                    "after_ms": after(&w["id"]),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"version": version, "in_force": !waited.is_empty() && laggards.is_empty(), "gateways": rows})
        );
    } else if waited.is_empty() {
        println!("  no gateway is enrolled: nothing confirms version {version} is in force (veto proxy --name)");
    } else if laggards.is_empty() {
        let last_ms = waited.iter().filter_map(|w| after(&w["id"])).max();
        match last_ms {
            Some(ms) => println!(
                "version {version} is in force at all {} gateways (the last {ms} ms after the commit)",
                waited.len()
            ),
            None => println!("version {version} is in force at all {} gateways", waited.len()),
        }
    } else {
        for w in &laggards {
            let now = now_row(w);
            println!(
                "  NOT in force at {:<32} applied {} < {version}, state {}, {}, last report {}",
                who(w),
                text(&now["applied_version"]),
                text(&now["state"]),
                text(&now["policy"]),
                now["last_report_ms"]
                    .as_u64()
                    .map_or("never".into(), |t| format!(
                        "{:.1}s ago",
                        veto_core::SystemClock::now_ms().saturating_sub(t) as f64 / 1000.0
                    )),
            );
        }
    }
    if !waited.is_empty() && laggards.is_empty() {
        Ok(())
    } else {
        Err(NotInForce {
            version,
            laggards: laggards.len().max(usize::from(waited.is_empty())),
            of: waited.len(),
            timeout,
        }
        .into())
    }
}
