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
    let now = crate::util::now_ms();
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
            text(&g["name"]),
            text(&g["applied_version"]),
            text(&g["lag"]),
            state,
            g["staleness_s"]
                .as_u64()
                .map_or("-".into(), |s| format!("{s}s")),
            push,
            text(&g["policy"]),
            reported,
            g["error"].as_str().unwrap_or("")
        );
    }
}

/// After a revocation acknowledged in `version`: waits until every
/// gateway that is not lost now reports `version` or later, printing one
/// line per gateway as it does; [`NotInForce`] after `timeout`.
pub fn wait(
    client: &Client,
    version: u64,
    timeout: Duration,
    json_out: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let first = client.get(path::FLEET, true)?;
    let waited: Vec<Value> = first["gateways"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|g| g["state"] != "lost")
        .collect();
    let lost: Vec<String> = first["gateways"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["state"] == "lost")
        .map(|g| text(&g["name"]))
        .collect();
    if !json_out && !lost.is_empty() {
        eprintln!("not waiting for lost gateways: {}", lost.join(", "));
    }
    if waited.is_empty() && !json_out {
        eprintln!("no live gateway reports to this registry: nothing to wait for (enrol gateways with `veto proxy --name`)");
    }
    let mut done: std::collections::HashMap<String, u64> = Default::default();
    let mut last = first;
    loop {
        for g in last["gateways"].as_array().into_iter().flatten() {
            let id = text(&g["id"]);
            let applied = g["applied_version"].as_u64().unwrap_or(0);
            if applied >= version
                && waited.iter().any(|w| w["id"] == g["id"])
                && !done.contains_key(&id)
            {
                let ms = started.elapsed().as_millis() as u64;
                done.insert(id, ms);
                if !json_out {
                    println!("  in force at {:<20} +{ms} ms", text(&g["name"]));
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
    let laggards: Vec<&Value> = waited
        .iter()
        .filter(|w| !done.contains_key(&text(&w["id"])))
        .collect();
    if json_out {
        let rows: Vec<Value> = waited
            .iter()
            .map(|w| {
                let now = last["gateways"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|g| g["id"] == w["id"])
                    .cloned()
                    .unwrap_or(Value::Null);
                json!({
                    "id": w["id"],
                    "name": w["name"],
                    "in_force": done.contains_key(&text(&w["id"])),
                    "applied_version": now["applied_version"],
                    "state": now["state"],
                    "after_ms": after(&w["id"]),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"version": version, "in_force": laggards.is_empty(), "gateways": rows, "lost": lost})
        );
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
            let now = last["gateways"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|g| g["id"] == w["id"])
                .cloned()
                .unwrap_or(Value::Null);
            println!(
                "  NOT in force at {:<20} applied {} < {version}, state {}, last report {}",
                text(&w["name"]),
                text(&now["applied_version"]),
                text(&now["state"]),
                now["last_report_ms"]
                    .as_u64()
                    .map_or("never".into(), |t| format!(
                        "{:.1}s ago",
                        util::now_ms().saturating_sub(t) as f64 / 1000.0
                    )),
            );
        }
    }
    if laggards.is_empty() {
        Ok(())
    } else {
        Err(NotInForce {
            version,
            laggards: laggards.len(),
            of: waited.len(),
            timeout,
        }
        .into())
    }
}
