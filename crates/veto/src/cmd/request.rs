//! `veto request` (a curl-like client that proves its holder key on every
//! request) and `veto dpop` (prints a proof for any other HTTP client).
//! Proofs follow RFC 9449 ([`veto_core::dpop`]).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use veto_core::dpop::{self, ProofSpec};
use veto_core::wire::header::{DPOP, DPOP_NONCE};
use veto_core::{keyfile, SigningKey};

use crate::util;

/// The chain and the key that proves holding it.
#[derive(Args, Debug)]
pub struct HolderArgs {
    /// The chain: `-` for standard input, `@FILE`, or the chain itself.
    #[arg(long, env = "VETO_CHAIN")]
    chain: String,
    /// The leaf's holder private key (JWK file): the key its `cnf.jwk` binds.
    #[arg(long, env = "VETO_HOLDER_KEY")]
    holder_key: PathBuf,
}

impl HolderArgs {
    fn load(&self) -> anyhow::Result<(String, SigningKey)> {
        let chain = util::read_chain(&self.chain)?;
        let chain = chain.strip_prefix("DPoP ").unwrap_or(&chain).to_owned();
        let key = keyfile::read_signing_key(&self.holder_key)?;
        let parsed = veto_core::ParsedChain::parse(&chain).context("the chain does not parse")?;
        match parsed.leaf().holder() {
            Some(bound) if bound == key.public() => Ok((chain, key)),
            Some(bound) => bail!(
                "--holder-key `{}` is key `{}`, but the chain's leaf binds `{}`: give the leaf holder's private key",
                self.holder_key.display(),
                key.kid(),
                bound.kid()
            ),
            None => bail!(
                "the chain's leaf binds no holder key (`cnf.jwk`), so no proof can be made for it: issue it with --holder-key"
            ),
        }
    }
}

#[derive(Args, Debug)]
pub struct RequestArgs {
    /// The request method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    method: String,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// The request body; `@FILE` reads a file, `@-` standard input.
    #[arg(short = 'd', long = "data")]
    data: Option<String>,
    /// Print the response status line and headers before the body.
    #[arg(short = 'i', long = "include")]
    include: bool,
    /// Private CAs (PEM bundle) trusted beside the webpki roots.
    #[arg(long, env = "VETO_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(flatten)]
    holder: HolderArgs,
    /// The URL.
    url: String,
}

#[derive(Args, Debug)]
pub struct DpopArgs {
    /// The request method the proof is for.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    method: String,
    /// A server nonce to include (from a `DPoP-Nonce` response header).
    #[arg(long)]
    nonce: Option<String>,
    #[command(flatten)]
    holder: HolderArgs,
    /// The URL the proof is for (query and fragment are left out of `htu`).
    url: String,
}

/// `veto dpop`: prints one proof, for `DPoP: <proof>` beside
/// `Authorization: DPoP <chain>`.
pub fn run_dpop(a: DpopArgs) -> anyhow::Result<()> {
    check_url(&a.url)?;
    let (chain, key) = a.holder.load()?;
    let method = method(&a.method)?;
    println!(
        "{}",
        proof(&key, &method, &a.url, &chain, a.nonce.as_deref())?
    );
    Ok(())
}

fn check_url(url: &str) -> anyhow::Result<()> {
    dpop::canonical_htu(url).with_context(|| format!("`{url}` cannot be named in a proof"))?;
    Ok(())
}

fn method(m: &str) -> anyhow::Result<String> {
    veto_core::check_method(m).with_context(|| format!("-X `{m}`"))?;
    Ok(m.to_owned())
}

fn proof(
    key: &SigningKey,
    method: &str,
    url: &str,
    chain: &str,
    nonce: Option<&str>,
) -> anyhow::Result<String> {
    Ok(dpop::make(
        key,
        &ProofSpec {
            method,
            url,
            chain,
            iat: util::now(),
            nonce,
        },
    )?)
}

/// `veto request`: sends one request with `Authorization: DPoP <chain>`
/// and a fresh proof; when the server answers 401 `use_dpop_nonce` with a
/// `DPoP-Nonce`, retries once with it. Prints the body (and with `-i` the
/// status and headers); exits non-zero on a 4xx or 5xx answer.
pub fn run(a: RequestArgs) -> anyhow::Result<()> {
    check_url(&a.url)?;
    let (chain, key) = a.holder.load()?;
    let method = method(&a.method)?;
    let body = match a.data.as_deref() {
        None => None,
        Some("@-") => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                .context("reading the body from standard input")?;
            Some(b)
        }
        Some(d) => match d.strip_prefix('@') {
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("reading the body `{path}`"))?)
            }
            None => Some(d.as_bytes().to_vec()),
        },
    };
    let mut extra = reqwest::header::HeaderMap::new();
    for h in &a.headers {
        let Some((name, value)) = h.split_once(':') else {
            bail!("-H `{h}`: expected `Name: value`");
        };
        let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("-H `{h}`: invalid header name"))?;
        if name == reqwest::header::AUTHORIZATION || name.as_str() == DPOP {
            bail!("-H `{h}`: `veto request` sets `Authorization` and `DPoP` itself");
        }
        let value = reqwest::header::HeaderValue::from_str(value.trim())
            .with_context(|| format!("-H `{h}`: invalid header value"))?;
        extra.append(name, value);
    }
    let tls = veto_tls::ClientTls::with_ca_file(a.ca_file.as_deref())?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls.config()).clone())
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let m = reqwest::Method::from_bytes(method.as_bytes())?;
    let send = |nonce: Option<String>| {
        let proof = proof(&key, &method, &a.url, &chain, nonce.as_deref());
        let req = http
            .request(m.clone(), &a.url)
            .headers(extra.clone())
            .header(reqwest::header::AUTHORIZATION, format!("DPoP {chain}"));
        let body = body.clone();
        let url = &a.url;
        async move {
            let mut req = req.header(DPOP, proof?);
            if let Some(b) = body {
                req = req.body(b);
            }
            req.send()
                .await
                .with_context(|| format!("sending the request to `{url}`"))
        }
    };
    let resp = rt.block_on(async {
        let resp = send(None).await?;
        let nonce = resp
            .headers()
            .get(DPOP_NONCE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let wants_nonce = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("use_dpop_nonce"));
        match nonce {
            Some(n) if wants_nonce => send(Some(n)).await,
            _ => Ok(resp),
        }
    })?;
    let status = resp.status();
    let mut out = std::io::stdout().lock();
    if a.include {
        writeln!(out, "{:?} {}", resp.version(), status)?;
        for (name, value) in resp.headers() {
            writeln!(
                out,
                "{}: {}",
                name,
                String::from_utf8_lossy(value.as_bytes())
            )?;
        }
        writeln!(out)?;
    }
    let bytes = rt.block_on(resp.bytes())?;
    out.write_all(&bytes)?;
    out.flush()?;
    if status.is_client_error() || status.is_server_error() {
        eprintln!("veto request: the server answered {status}");
        std::process::exit(22);
    }
    Ok(())
}
