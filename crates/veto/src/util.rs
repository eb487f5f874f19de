//! Small helpers shared by subcommands.

use std::io::Read as _;

use anyhow::{bail, Context as _};
use veto_core::{Clock as _, SystemClock};

/// Now, in Unix seconds.
pub fn now() -> u64 {
    SystemClock.now()
}

/// Parses a duration such as `90`, `90s`, `15m`, `12h`, `30d`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration `{text}`: expected a number with an optional unit s, m, h or d, such as `15m`"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "invalid duration unit in `{text}`: use s, m, h or d"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|&s| s > 0)
        .ok_or_else(|| format!("duration `{text}` must be positive and not overflow"))
}

/// Reads a chain given on the command line, as `@FILE`, or as `-` for stdin.
pub fn read_chain(arg: &str) -> anyhow::Result<String> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the chain from standard input")?;
        s
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading the chain from `{path}`"))?
    } else {
        arg.to_owned()
    };
    let text = text.trim();
    let text = text.strip_prefix("Bearer ").unwrap_or(text);
    if text.is_empty() {
        bail!("the chain is empty");
    }
    Ok(text.to_owned())
}

/// Formats a Unix time as RFC 3339 UTC.
pub fn rfc3339(t: u64) -> String {
    let days = t / 86_400;
    let rem = t % 86_400;
    // Civil-from-days (H. Hinnant), valid for the Unix era.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses a byte size such as `65536`, `512KiB`, `64MiB`, `1GiB` (binary
/// units; `K`/`M`/`G` and `KB`/`MB`/`GB` are read as the same).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: usize = num.parse().map_err(|_| {
        format!("invalid size `{text}`: expected a number with an optional unit KiB, MiB or GiB, such as `64MiB`")
    })?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size unit in `{text}`: use KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("size `{text}` must be positive and not overflow"))
}

/// A listener's TLS from `--tls-cert`/`--tls-key` style flags: both or
/// neither (`flags` names them for the error), and `client_ca` only with
/// them. Files are read now, so a bad one stops the start, named.
pub fn server_tls(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    client_ca: Option<&std::path::Path>,
    flags: (&str, &str),
) -> anyhow::Result<Option<veto_tls::ServerTls>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(veto_tls::ServerTls::load(cert, key, client_ca)?)),
        (None, None) if client_ca.is_some() => {
            bail!(
                "--client-ca needs TLS: give {} and {} too",
                flags.0,
                flags.1
            )
        }
        (None, None) => Ok(None),
        (Some(_), None) => bail!(
            "{} needs {} (the certificate's private key)",
            flags.0,
            flags.1
        ),
        (None, Some(_)) => bail!("{} needs {} (the certificate chain)", flags.1, flags.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("65536"), Ok(65_536));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("64mb"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("5TiB").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}

/// The NATS bus flags `veto serve` and `veto proxy` share.
#[derive(clap::Args, Debug, Default)]
pub struct BusArgs {
    /// NATS JetStream server URL(s), comma-separated: `nats://host:4222`
    /// (TLS when the server asks for it) or `tls://host:4222` (TLS
    /// required), optionally with `user:password@` or `token@`.
    #[arg(long, env = "VETO_BUS")]
    pub bus: Option<String>,
    /// A PEM bundle of CA certificates trusted beside the webpki roots,
    /// for servers with certificates from a private CA: the NATS servers
    /// and, on `veto proxy`, an `https://` registry and upstream; on `veto
    /// serve`, PostgreSQL (`sslmode=verify-ca|verify-full`; added to the
    /// --store URL as `sslrootcert` unless it has one).
    #[arg(long, env = "VETO_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// NATS credentials: a `.creds` file (user JWT and NKey seed) or a
    /// file holding an NKey user seed.
    #[arg(long, env = "VETO_NATS_CREDS", requires = "bus")]
    pub nats_creds: Option<std::path::PathBuf>,
}

impl BusArgs {
    /// The validated bus settings, `None` without `--bus`; refuses at
    /// start what cannot be served (another scheme, an unusable CA or
    /// credentials file), naming it.
    pub fn settings(&self) -> anyhow::Result<Option<veto_bus::NatsSettings>> {
        let Some(urls) = &self.bus else {
            return Ok(None);
        };
        veto_bus::NatsSettings::new(urls, self.ca_file.as_deref(), self.nats_creds.as_deref())
            .map(Some)
            .context("--bus")
    }
}
