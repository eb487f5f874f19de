//! Talking to a running registry: address and admin token from flags,
//! environment, or a config file.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::Value;

/// Where the registry is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Registry URL.
    #[arg(long, env = "VETO_REGISTRY")]
    pub registry: Option<String>,
    /// Admin token.
    #[arg(long, env = "VETO_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin token (such as `<data-dir>/admin.token`).
    #[arg(long, env = "VETO_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Config file with `registry = URL` and `token_file = PATH` lines
    /// (default `$XDG_CONFIG_HOME/veto/config` or `~/.config/veto/config`).
    #[arg(long, env = "VETO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Private CAs (PEM bundle) trusted, beside the built-in webpki roots,
    /// for an `https://` registry.
    #[arg(long, env = "VETO_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM chain) for a registry started with
    /// `--client-ca`. Needs --client-key.
    #[arg(long, env = "VETO_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, env = "VETO_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

fn config_path(explicit: &Option<PathBuf>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.clone());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("veto").join("config"))
}

fn read_config(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config `{}`", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!(
                "config `{}` line {}: expected `key = value`",
                path.display(),
                n + 1
            );
        };
        out.push((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()));
    }
    Ok(out)
}

/// A client for the registry's HTTP API.
pub struct Client {
    base: String,
    token: Option<String>,
    /// A small runtime runs each call (the CLI is otherwise synchronous).
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Client {
    /// Resolves the address and token.
    pub fn new(a: &RegistryArgs) -> anyhow::Result<Self> {
        let mut registry = a.registry.clone();
        let mut token = a.token.clone();
        let mut token_file = a.token_file.clone();
        if let Some(path) = config_path(&a.config).filter(|p| a.config.is_some() || p.exists()) {
            for (k, v) in read_config(&path)? {
                match k.as_str() {
                    "registry" => registry = registry.or(Some(v)),
                    "token" => token = token.or(Some(v)),
                    "token_file" => token_file = token_file.or(Some(v.into())),
                    other => bail!(
                        "config `{}`: unknown key `{other}` (expected registry, token, token_file)",
                        path.display()
                    ),
                }
            }
        }
        if token.is_none() {
            if let Some(f) = &token_file {
                token = Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading the admin token from `{}`", f.display()))?
                        .trim()
                        .to_owned(),
                );
            }
        }
        let base = registry
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_owned();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        veto_authorizer::check_registry_url(&base)
            .context("--registry (or VETO_REGISTRY) must be an http:// or https:// URL")?;
        let identity = a.client_cert.as_deref().zip(a.client_key.as_deref());
        let tls =
            veto_tls::ClientTls::new(a.ca_file.as_deref(), identity, veto_tls::ServerCheck::Full)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls.config()).clone())
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self {
            base,
            token,
            rt,
            http,
        })
    }

    fn send(&self, req: reqwest::RequestBuilder, admin: bool) -> anyhow::Result<(u16, String)> {
        let (status, body) = self.send_bytes(req, admin)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    fn send_bytes(
        &self,
        req: reqwest::RequestBuilder,
        admin: bool,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let req = if admin {
            let token = self.token.as_deref().context(
                "no admin token: pass --token, --token-file <data-dir>/admin.token, or set VETO_ADMIN_TOKEN",
            )?;
            req.bearer_auth(token)
        } else {
            req
        };
        let base = self.base.clone();
        self.rt.block_on(async move {
            let resp = req
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach the registry at {base}: {}: is `veto serve` running there? (set --registry or VETO_REGISTRY; for a private CA, --ca-file)", veto_tls::error_chain(&e)))?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await?;
            Ok((status, body.to_vec()))
        })
    }

    fn check(status: u16, text: String) -> anyhow::Result<Value> {
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let code = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("error");
            let msg = value.get("message").and_then(Value::as_str).unwrap_or("");
            bail!("registry refused ({status} {code}): {msg}");
        }
        Ok(value)
    }

    /// An admin POST with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let req = self.http.post(format!("{}{path}", self.base)).json(body);
        let (s, t) = self.send(req, true)?;
        Self::check(s, t)
    }

    /// A POST with a JSON body authenticated by the holder of `chain`
    /// (DPoP, RFC 9449): a fresh proof for this URL is made with `key`.
    pub fn post_as_holder(
        &self,
        path: &str,
        body: &Value,
        chain: &str,
        key: &veto_core::SigningKey,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let proof = veto_core::dpop::make(
            key,
            &veto_core::dpop::ProofSpec {
                method: "POST",
                url: &url,
                chain,
                iat: crate::util::now(),
                nonce: None,
            },
        )?;
        let req = self
            .http
            .post(url)
            .header(reqwest::header::AUTHORIZATION, format!("DPoP {chain}"))
            .header(veto_core::wire::header::DPOP, proof)
            .json(body);
        let (s, t) = self.send(req, false)?;
        Self::check(s, t)
    }

    /// An admin DELETE.
    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let req = self.http.delete(format!("{}{path}", self.base));
        let (s, t) = self.send(req, true)?;
        Self::check(s, t)
    }

    /// A GET; `admin` adds the token.
    pub fn get(&self, path: &str, admin: bool) -> anyhow::Result<Value> {
        let req = self.http.get(format!("{}{path}", self.base));
        let (s, t) = self.send(req, admin)?;
        Self::check(s, t)
    }

    /// `GET path` (public), the body as bytes (a snapshot's binary container).
    pub fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let req = self.http.get(format!("{}{path}", self.base));
        let (s, body) = self.send_bytes(req, false)?;
        if s >= 400 {
            Self::check(s, String::from_utf8_lossy(&body).into_owned())?;
            bail!("registry answered {s}");
        }
        Ok(body)
    }

    /// `GET path` (public), the body as text.
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let req = self.http.get(format!("{}{path}", self.base));
        let (s, t) = self.send(req, false)?;
        if s >= 400 {
            Self::check(s, t)?;
            bail!("registry answered {s}");
        }
        Ok(t)
    }
}
