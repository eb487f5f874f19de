//! `veto._veto`: the native part of the `veto` Python package. One
//! implementation of veto's formats and rules — keys, warrant chains,
//! DPoP proofs (RFC 9449), the authorizer with its push/poll sync and
//! staleness policy — exposed to Python through PyO3. The Python layer
//! (`python/veto/__init__.py`) adds the idioms: `Chain`, `Registry`,
//! `DPoPAuth`, typed exceptions, the ASGI middleware.
//!
//! Errors: bad input raises `ValueError` naming what was wrong; an
//! authorizer that cannot start raises `RuntimeError`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use veto_authorizer::{Config, Issuers, PopPolicy, Presented, Push, StalenessPolicy};
use veto_core::dpop::{self, Credential, ProofSpec, Scheme};
use veto_core::warrant::{self, LinkSpec, ParsedChain};
use veto_core::wire::ErrorCode;
use veto_core::{keyfile, DenyReason, KeySet, PublicKey, SigningKey};

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An Ed25519 key (RFC 8037): a holder's, an issuer's or a gateway's.
#[pyclass(module = "veto._veto", frozen)]
struct Key {
    key: SigningKey,
}

#[pymethods]
impl Key {
    /// A new random key.
    #[staticmethod]
    fn generate() -> PyResult<Self> {
        Ok(Self {
            key: SigningKey::generate().map_err(value_error)?,
        })
    }

    /// Reads a private JWK file (as `veto keys generate` writes).
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        Ok(Self {
            key: keyfile::read_signing_key(&path).map_err(value_error)?,
        })
    }

    /// A key from a private JWK (JSON text).
    #[staticmethod]
    fn from_jwk(text: &str) -> PyResult<Self> {
        Ok(Self {
            key: SigningKey::from_jwk_json(text).map_err(value_error)?,
        })
    }

    /// Writes the private JWK to a new file, mode 0600.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        keyfile::write_signing_key(&path, &self.key).map_err(value_error)
    }

    /// The RFC 7638 thumbprint of the public key.
    #[getter]
    fn kid(&self) -> String {
        self.key.kid().to_owned()
    }

    /// The public JWK, as JSON text.
    fn public_jwk(&self) -> String {
        self.key.public().to_jwk().to_json()
    }

    /// The private JWK, as JSON text (keep it secret).
    fn private_jwk(&self) -> String {
        self.key.to_private_jwk().to_json()
    }

    fn __repr__(&self) -> String {
        format!("Key(kid={:?})", self.key.kid())
    }
}

fn public_from(jwk: Option<&str>) -> PyResult<Option<PublicKey>> {
    jwk.map(|t| PublicKey::from_jwk_json(t).map_err(value_error))
        .transpose()
}

fn spec(agent: String, act: Vec<String>, ttl: u64, to: Option<&str>) -> PyResult<LinkSpec> {
    if ttl == 0 {
        return Err(PyValueError::new_err("ttl must be at least 1 second"));
    }
    let iat = now();
    Ok(LinkSpec {
        sub: agent,
        act,
        iat,
        exp: iat.saturating_add(ttl),
        holder: public_from(to)?,
    })
}

/// Mints a root warrant offline, signed by `issuer` for `iss`; `holder`
/// is the public JWK (JSON text) it binds.
#[pyfunction]
#[pyo3(signature = (issuer, iss, agent, act, ttl, holder=None))]
fn mint_offline(
    issuer: &Key,
    iss: &str,
    agent: String,
    act: Vec<String>,
    ttl: u64,
    holder: Option<&str>,
) -> PyResult<String> {
    warrant::mint_root(&issuer.key, iss, spec(agent, act, ttl, holder)?).map_err(value_error)
}

/// Delegates a narrower child under `parent`, signed with the parent
/// leaf's holder key `holder`; `to` is the public JWK (JSON text) the
/// child binds. Returns the extended chain. Refuses a child that widens
/// the actions or outlives its parent.
#[pyfunction]
#[pyo3(signature = (parent, holder, agent, act, ttl, to=None))]
fn delegate(
    parent: &str,
    holder: &Key,
    agent: String,
    act: Vec<String>,
    ttl: u64,
    to: Option<&str>,
) -> PyResult<String> {
    let parent = parent.strip_prefix("DPoP ").unwrap_or(parent).trim();
    warrant::delegate(parent, &holder.key, spec(agent, act, ttl, to)?).map_err(value_error)
}

/// The claims of every link of `chain`, root first, as JSON text; read
/// without verifying anything (as `veto inspect`).
#[pyfunction]
fn links(chain: &str) -> PyResult<String> {
    let chain = chain.strip_prefix("DPoP ").unwrap_or(chain).trim();
    let parsed = ParsedChain::parse(chain).map_err(value_error)?;
    let claims: Vec<&veto_core::warrant::Claims> =
        parsed.links().iter().map(|l| l.claims()).collect();
    serde_json::to_string(&claims).map_err(value_error)
}

/// A DPoP proof (RFC 9449) for one request: `method` and `url` as sent,
/// `chain` exactly as sent after `Authorization: DPoP `, signed by the
/// leaf's holder key, with a fresh `jti`; `nonce` is the server's last
/// `DPoP-Nonce`, if any.
#[pyfunction]
#[pyo3(signature = (chain, key, method, url, nonce=None))]
fn dpop_proof(
    chain: &str,
    key: &Key,
    method: &str,
    url: &str,
    nonce: Option<&str>,
) -> PyResult<String> {
    dpop::canonical_htu(url).map_err(value_error)?;
    dpop::make(
        &key.key,
        &ProofSpec {
            method,
            url,
            chain,
            iat: now(),
            nonce,
        },
    )
    .map_err(value_error)
}

/// The canonical form of a request URL for DPoP `htu`, as the proxy
/// builds it (scheme and host lowercased, default port dropped, the path
/// canonical, query and fragment dropped).
#[pyfunction]
fn canonical_htu(url: &str) -> PyResult<String> {
    dpop::canonical_htu(url).map_err(value_error)
}

/// The canonical form of a request path (RFC 3986 dot segments removed,
/// only unreserved characters percent-decoded), as veto's proxy builds
/// actions and `htu`; `ValueError` for the encoded `/`, `\\`, `.` and
/// other ambiguous forms the proxy refuses.
#[pyfunction]
fn canonical_path(path: &str) -> PyResult<String> {
    veto_core::canonical_path(path).map_err(value_error)
}

/// The HTTP status veto's proxy answers a denial `reason` with.
#[pyfunction]
fn deny_status(reason: &str) -> PyResult<u16> {
    DenyReason::ALL
        .into_iter()
        .find(|r| r.as_str() == reason)
        .map(|r| veto_authorizer::http_status(r).as_u16())
        .ok_or_else(|| PyValueError::new_err(format!("`{reason}` is not a veto denial reason")))
}

/// Every error code the registry and the proxy answer with, and every
/// denial reason.
#[pyfunction]
fn error_codes() -> (Vec<&'static str>, Vec<&'static str>) {
    (
        ErrorCode::ALL.iter().map(|c| c.as_str()).collect(),
        DenyReason::ALL.iter().map(|r| r.as_str()).collect(),
    )
}

/// What the authorizer decided: `allowed`; when denied, `reason` (a veto
/// denial reason such as `revoked`) and `message`; `stale` when only the
/// fail-open policy let it through; `pop_error` the RFC 9449 error for
/// `WWW-Authenticate` when the proof was refused. True when allowed.
#[pyclass(module = "veto._veto", frozen, name = "Decision")]
struct Decision {
    #[pyo3(get)]
    allowed: bool,
    #[pyo3(get)]
    reason: Option<&'static str>,
    #[pyo3(get)]
    stale: bool,
    #[pyo3(get)]
    message: Option<String>,
    #[pyo3(get)]
    pop_error: Option<&'static str>,
}

#[pymethods]
impl Decision {
    fn __bool__(&self) -> bool {
        self.allowed
    }

    /// Raises the `veto.errors.Denied` subclass named after the reason when
    /// denied; nothing when allowed.
    fn raise_for_denial(&self, py: Python<'_>) -> PyResult<()> {
        let (Some(reason), false) = (self.reason, self.allowed) else {
            return Ok(());
        };
        let error = py
            .import("veto.errors")?
            .getattr("error_for")?
            .call1((reason, self.message.as_deref().unwrap_or("denied")))?;
        Err(PyErr::from_value(error))
    }

    fn __repr__(&self) -> String {
        match (self.allowed, self.reason) {
            (true, _) => format!(
                "Decision(allowed=True, stale={})",
                if self.stale { "True" } else { "False" }
            ),
            (false, reason) => format!(
                "Decision(allowed=False, reason={:?}, message={:?})",
                reason.unwrap_or("denied"),
                self.message.as_deref().unwrap_or("")
            ),
        }
    }
}

fn checked(outcome: veto_authorizer::Outcome) -> Decision {
    let pop_error = outcome.pop_error.map(|e| e.as_str());
    match outcome.decision {
        veto_core::Decision::Allow { stale } => Decision {
            allowed: true,
            reason: None,
            stale,
            message: None,
            pop_error: None,
        },
        veto_core::Decision::Deny(d) => Decision {
            allowed: false,
            reason: Some(d.reason.as_str()),
            stale: false,
            message: Some(d.message),
            pop_error,
        },
    }
}

/// A chain given as a `str`, or as anything whose `str()` is the chain
/// (`veto.Chain`): the `str` object, read without a copy.
fn chain_text<'py>(chain: &Bound<'py, PyAny>) -> PyResult<Bound<'py, pyo3::types::PyString>> {
    match chain.cast::<pyo3::types::PyString>() {
        Ok(s) => Ok(s.clone()),
        Err(_) => chain.str(),
    }
}

/// The authorizer, running in this process on its own threads: verifies
/// chains and proofs, keeps the revocation state in sync with the
/// registry by push (SSE or NATS) and polling, and applies the staleness
/// policy. `check` never waits on the network.
#[pyclass(module = "veto._veto", frozen)]
struct Authorizer {
    runtime: tokio::runtime::Runtime,
    inner: veto_authorizer::Authorizer,
}

#[pymethods]
impl Authorizer {
    /// Starts syncing from `registry` (its URL), pinned to the authority
    /// public key `authority_key` (JWK JSON text). `pop`: `required`,
    /// `optional` or `off`; `policy`: `fail-closed` or `fail-open`;
    /// `push`: `sse`, `off`, or a `nats://` URL; durations in seconds.
    #[new]
    #[pyo3(signature = (registry, authority_key, iss="veto", pop="required", policy="fail-closed", max_staleness=300, poll_interval=60, push="sse", cache_dir=None, ca_file=None, issuer_keys=None))]
    #[expect(
        clippy::too_many_arguments,
        reason = "Python keyword arguments, each with a default"
    )]
    fn new(
        py: Python<'_>,
        registry: &str,
        authority_key: &str,
        iss: &str,
        pop: &str,
        policy: &str,
        max_staleness: u64,
        poll_interval: u64,
        push: &str,
        cache_dir: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        issuer_keys: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let key = PublicKey::from_jwk_json(authority_key).map_err(value_error)?;
        let mut config = Config::new(registry, iss, KeySet::new([key]));
        config.pop.policy = pop.parse::<PopPolicy>().map_err(value_error)?;
        config.check.policy = match policy {
            "fail-closed" => StalenessPolicy::FailClosed,
            "fail-open" => StalenessPolicy::FailOpen,
            other => {
                return Err(PyValueError::new_err(format!(
                    "policy `{other}`: give `fail-closed` or `fail-open`"
                )))
            }
        };
        config.check.issuer = Some(iss.to_owned());
        config.check.max_staleness = max_staleness;
        config.poll_interval = Duration::from_secs(poll_interval.max(1));
        config.push = match push {
            "sse" => Push::Sse,
            "off" => Push::Off,
            url if url.starts_with("nats://") || url.starts_with("tls://") => Push::Nats(
                veto_bus::NatsSettings::new(url, ca_file.as_deref(), None).map_err(value_error)?,
            ),
            other => {
                return Err(PyValueError::new_err(format!(
                    "push `{other}`: give `sse`, `off` or a nats:// URL"
                )))
            }
        };
        config.cache_dir = cache_dir;
        if let Some(ca) = &ca_file {
            config.tls = Some(veto_tls::ClientTls::with_ca_file(Some(ca)).map_err(value_error)?);
        }
        if let Some(keys) = issuer_keys {
            let keys = keys
                .iter()
                .map(|k| PublicKey::from_jwk_json(k).map_err(value_error))
                .collect::<PyResult<Vec<_>>>()?;
            config.issuers = Issuers::Pinned(KeySet::new(keys));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("veto-authorizer")
            .enable_all()
            .build()
            .map_err(|e| {
                PyRuntimeError::new_err(format!("starting the authorizer's runtime: {e}"))
            })?;
        let inner = py
            .detach(|| runtime.block_on(veto_authorizer::Authorizer::start(config)))
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(Self { runtime, inner })
    }

    /// Decides `chain` for `action`. With `dpop` (the request's `DPoP`
    /// header), `method` and `url` (as the request was addressed), the
    /// proof of possession is checked; without them, the chain is
    /// presented as a bearer token (denied `pop_required` unless `pop` is
    /// `off`). `chain` is a `str` or a `veto.Chain`. Returns a [`Decision`].
    #[pyo3(signature = (chain, action, dpop=None, method=None, url=None))]
    fn check(
        &self,
        chain: &Bound<'_, PyAny>,
        action: &str,
        dpop: Option<&str>,
        method: Option<&str>,
        url: Option<&str>,
    ) -> PyResult<Decision> {
        let text = chain_text(chain)?;
        let chain = text.to_str()?;
        if dpop.is_some() && url.is_none() {
            return Err(PyValueError::new_err(
                "a DPoP proof is checked against the request it came with: give method= and url= with dpop=",
            ));
        }
        // An `Authorization` value, or the bare chain: the scheme names how
        // it is presented (case-insensitive, RFC 9110 11.1); a bare chain
        // is DPoP when a proof comes with it.
        let (scheme, chain) = match chain.split_once(' ') {
            Some((s, rest)) if s.eq_ignore_ascii_case("dpop") => (Scheme::Dpop, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("bearer") => (Scheme::Bearer, rest),
            _ if dpop.is_some() => (Scheme::Dpop, chain),
            _ => (Scheme::Bearer, chain),
        };
        let htu = match url {
            Some(u) => dpop::canonical_htu(u).map_err(value_error)?,
            None => String::new(),
        };
        let outcome = self.inner.check_request(&Presented {
            credential: Credential {
                scheme,
                chain: chain.trim(),
                proof: dpop,
            },
            method: method.unwrap_or(""),
            htu: &htu,
            action,
        });
        Ok(checked(outcome))
    }

    /// Decides an HTTP request from its headers, as veto's proxy does:
    /// `authorization` and `dpop` are every value of those headers (exactly
    /// one credential, at most one proof: RFC 9449 rules), `method` and
    /// `url` the request as addressed, `action` what it asks to do.
    /// Returns what [`Authorizer::check`] returns.
    fn check_headers(
        &self,
        authorization: Vec<Vec<u8>>,
        dpop: Vec<Vec<u8>>,
        method: &str,
        url: &str,
        action: &str,
    ) -> PyResult<Decision> {
        let auth: Vec<&[u8]> = authorization.iter().map(Vec::as_slice).collect();
        let proofs: Vec<&[u8]> = dpop.iter().map(Vec::as_slice).collect();
        let credential = match dpop::credential(&auth, &proofs) {
            Ok(c) => c,
            Err(d) => {
                let pop_error =
                    matches!(d.reason, DenyReason::PopRequired | DenyReason::PopInvalid)
                        .then_some("invalid_token");
                return Ok(Decision {
                    allowed: false,
                    reason: Some(d.reason.as_str()),
                    stale: false,
                    message: Some(d.message),
                    pop_error,
                });
            }
        };
        let htu = dpop::canonical_htu(url).map_err(value_error)?;
        let outcome = self.inner.check_request(&Presented {
            credential,
            method,
            htu: &htu,
            action,
        });
        Ok(checked(outcome))
    }

    /// The sync state (JSON text): version, head, fresh, staleness, push.
    fn status(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner.status()).map_err(value_error)
    }

    /// Prometheus metrics, text format.
    fn metrics(&self) -> String {
        self.inner.metrics_text()
    }

    /// Polls the registry once now.
    fn sync_now(&self, py: Python<'_>) {
        py.detach(|| self.runtime.block_on(self.inner.sync_now()));
    }

    /// Stops syncing; checks go on against the last state (and turn stale).
    fn close(&self) {
        self.inner.shutdown();
    }
}

/// The native module.
#[pymodule]
fn _veto(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Key>()?;
    m.add_class::<Authorizer>()?;
    m.add_class::<Decision>()?;
    m.add_function(wrap_pyfunction!(mint_offline, m)?)?;
    m.add_function(wrap_pyfunction!(delegate, m)?)?;
    m.add_function(wrap_pyfunction!(links, m)?)?;
    m.add_function(wrap_pyfunction!(dpop_proof, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_htu, m)?)?;
    m.add_function(wrap_pyfunction!(error_codes, m)?)?;
    m.add_function(wrap_pyfunction!(deny_status, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_path, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
