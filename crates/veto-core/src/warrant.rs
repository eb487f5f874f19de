//! Warrants: root links minted by an issuer, child links delegated by the
//! holder of the parent, presented as `root~child~…~leaf` (DESIGN 3.1).
//!
//! Parsing reads every link's claims without trusting them, so the
//! revocation check can run before any signature work; a denial based on
//! unverified claims is always safe. [`ParsedChain::verify`] then checks
//! signatures and the chain rules and yields a [`VerifiedChain`].

use serde::{Deserialize, Serialize};

use crate::action::{ActionSet, PatternError};
use crate::b64;
use crate::decision::{Denial, DenyReason};
use crate::entry::{Digest, EntryKind};
use crate::jws::{self, Typ, UnverifiedJws};
use crate::keys::{Jwk, KeyResolver, PublicKey, SigningKey};

/// Limits applied while parsing a chain.
pub mod limits {
    /// Largest chain accepted, in bytes.
    pub const MAX_CHAIN_BYTES: usize = 32 * 1024;
    /// Largest single link, in bytes.
    pub const MAX_LINK_BYTES: usize = 8 * 1024;
    /// Longest chain ever parsed, whatever the configured depth.
    pub const MAX_DEPTH: usize = 16;
    /// Default configured depth limit.
    pub const DEFAULT_DEPTH: usize = 8;
    /// Longest `jti`, `sub`, `iss` or `par`.
    pub const MAX_ID_BYTES: usize = 256;
}

/// The holder confirmation claim: the key the holder signs children with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cnf {
    /// The holder's public key.
    pub jwk: Jwk,
}

/// The claims of one link. A plain EdDSA JWT with `jti`, `sub` and `exp`
/// is a valid root: a missing `act` grants nothing, a missing `iat` counts
/// as 0 (so any agent revocation covers it), a missing `cnf` means the link
/// cannot be delegated. Other members (such as `aud` or `scope`) are
/// ignored, as JWT allows, and never acted on; a member given twice is
/// refused as malformed, so no two readers can disagree on a link.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Link id.
    pub jti: String,
    /// Issuer (root) or delegating agent (child).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The agent this link is for.
    pub sub: String,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Expires at.
    pub exp: u64,
    /// Permitted action patterns.
    #[serde(default)]
    pub act: Vec<String>,
    /// Holder key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Cnf>,
    /// Parent link's `jti` (children only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub par: Option<String>,
}

/// One parsed, not yet verified link.
#[derive(Clone, Debug)]
pub struct Link {
    signing_input: String,
    signature: [u8; 64],
    header_kid: Option<String>,
    claims: Claims,
    actions: ActionSet,
    holder: Option<PublicKey>,
}

impl Link {
    /// The link's claims (unverified until the chain is verified).
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The parsed `act`.
    pub fn actions(&self) -> &ActionSet {
        &self.actions
    }

    /// The holder key bound by `cnf`, if any.
    pub fn holder(&self) -> Option<&PublicKey> {
        self.holder.as_ref()
    }

    /// The `kid` of the protected header.
    pub fn kid(&self) -> Option<&str> {
        self.header_kid.as_deref()
    }
}

/// What the revocation check looks up for a chain, computed once at parse
/// time: one probe per link id, per agent (with the link's `iat`), and per
/// key that signs or is bound in the chain.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    pub(crate) warrants: Vec<Digest>,
    pub(crate) agents: Vec<(Digest, u64)>,
    pub(crate) keys: Vec<Digest>,
}

/// A chain whose structure and claims are parsed, signatures unchecked.
#[derive(Clone, Debug)]
pub struct ParsedChain {
    links: Vec<Link>,
    probes: Probes,
}

/// A chain whose signatures and chain rules hold. Time validity, revocation
/// and freshness are not part of it: they are checked on every request.
#[derive(Clone, Debug)]
pub struct VerifiedChain(ParsedChain);

impl VerifiedChain {
    /// The chain.
    pub fn chain(&self) -> &ParsedChain {
        &self.0
    }
}

fn malformed(message: impl Into<String>) -> Denial {
    Denial::new(DenyReason::Malformed, message)
}

fn check_id(what: &str, id: &str, link: usize) -> Result<(), Denial> {
    if id.is_empty() || id.len() > limits::MAX_ID_BYTES {
        return Err(malformed(format!(
            "link {link}: `{what}` must be 1 to 256 bytes, found {}",
            id.len()
        )));
    }
    Ok(())
}

impl ParsedChain {
    /// Parses `root~child~…~leaf` (an optional `Bearer ` prefix is not
    /// accepted here: pass the token itself).
    pub fn parse(token: &str) -> Result<Self, Denial> {
        if token.len() > limits::MAX_CHAIN_BYTES {
            return Err(malformed(format!(
                "chain of {} bytes, over the {}-byte limit",
                token.len(),
                limits::MAX_CHAIN_BYTES
            )));
        }
        if token.is_empty() {
            return Err(malformed("empty chain"));
        }
        let depth = token.split('~').count();
        if depth > limits::MAX_DEPTH {
            return Err(malformed(format!(
                "chain of {depth} links, over the limit of {}",
                limits::MAX_DEPTH
            )));
        }
        let mut links = Vec::with_capacity(depth);
        for (i, part) in token.split('~').enumerate() {
            links.push(parse_link(part, i)?);
        }
        let probes = probes(&links);
        Ok(Self { links, probes })
    }

    /// The links, root first.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The leaf link (the presenting agent's).
    pub fn leaf(&self) -> &Link {
        // `parse` never yields an empty chain.
        &self.links[self.links.len() - 1]
    }

    /// The root link.
    pub fn root(&self) -> &Link {
        &self.links[0]
    }

    pub(crate) fn probes(&self) -> &Probes {
        &self.probes
    }

    /// Checks signatures and chain rules against the trusted issuer keys:
    /// root signed by a trusted issuer; each child signed by its parent's
    /// holder key, `par` = parent `jti`, `exp` not after the parent's, `act`
    /// a subset of the parent's; at most `max_depth` links.
    pub fn verify(
        self,
        issuers: &dyn KeyResolver,
        max_depth: usize,
    ) -> Result<VerifiedChain, Denial> {
        self.check_signatures(issuers, max_depth)?;
        Ok(VerifiedChain(self))
    }

    pub(crate) fn check_signatures(
        &self,
        issuers: &dyn KeyResolver,
        max_depth: usize,
    ) -> Result<(), Denial> {
        if self.links.len() > max_depth {
            return Err(malformed(format!(
                "chain of {} links, over the configured depth limit of {max_depth}",
                self.links.len()
            )));
        }
        let root = self.root();
        let kid = root.kid().ok_or_else(|| {
            Denial::new(DenyReason::UntrustedIssuer, "the root link names no `kid`")
        })?;
        let issuer = issuers.resolve(kid).ok_or_else(|| {
            Denial::new(
                DenyReason::UntrustedIssuer,
                format!("root signed by unknown issuer key `{kid}`"),
            )
        })?;
        if root.claims.par.is_some() {
            return Err(Denial::new(
                DenyReason::ChainInvalid,
                "the root link has a `par` claim",
            ));
        }
        verify_link(root, issuer, 0)?;
        for (i, pair) in self.links.windows(2).enumerate() {
            let (parent, child) = (&pair[0], &pair[1]);
            let n = i + 1;
            let holder = parent.holder.as_ref().ok_or_else(|| {
                Denial::new(
                    DenyReason::ChainInvalid,
                    format!("link {i} binds no holder key, so it cannot be delegated"),
                )
            })?;
            if child.kid().is_some_and(|k| k != holder.kid()) {
                return Err(Denial::new(
                    DenyReason::ChainInvalid,
                    format!(
                        "link {n} names key `{}` but its parent's holder key is `{}`",
                        child.kid().unwrap_or_default(),
                        holder.kid()
                    ),
                ));
            }
            verify_link(child, holder, n)?;
            if child.claims.par.as_deref() != Some(parent.claims.jti.as_str()) {
                return Err(Denial::new(
                    DenyReason::ChainInvalid,
                    format!("link {n}: `par` is not the parent's `jti`"),
                ));
            }
            if child.claims.exp > parent.claims.exp {
                return Err(Denial::new(
                    DenyReason::ChainInvalid,
                    format!("link {n} outlives its parent"),
                ));
            }
            if let Some(p) = child.actions.first_uncovered(&parent.actions) {
                return Err(Denial::new(
                    DenyReason::ChainInvalid,
                    format!("link {n} widens the parent's actions with `{p}`"),
                ));
            }
        }
        Ok(())
    }
}

fn verify_link(link: &Link, key: &PublicKey, n: usize) -> Result<(), Denial> {
    if key.verify(link.signing_input.as_bytes(), &link.signature) {
        Ok(())
    } else {
        Err(Denial::new(
            DenyReason::BadSignature,
            format!("link {n}: signature does not verify"),
        ))
    }
}

fn parse_link(part: &str, i: usize) -> Result<Link, Denial> {
    let jws = UnverifiedJws::parse(part, limits::MAX_LINK_BYTES)
        .map_err(|e| malformed(format!("link {i}: {e}")))?;
    match (i, jws.header().typ.as_deref()) {
        (_, Some(t)) if t == Typ::Warrant.as_str() => {}
        // A plain JWT from a trusted issuer is a valid root (DESIGN 3.1).
        (0, None) => {}
        (0, Some(t)) if t.eq_ignore_ascii_case("JWT") => {}
        (_, None) => {
            return Err(malformed(format!(
                "link {i}: no object type (`typ`), expected `{}`",
                Typ::Warrant.as_str()
            )))
        }
        (_, Some(t)) => {
            return Err(malformed(format!(
                "link {i}: wrong object type `{t}`, expected `{}`",
                Typ::Warrant.as_str()
            )))
        }
    }
    let payload = jws
        .payload_unverified()
        .map_err(|e| malformed(format!("link {i}: {e}")))?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|e| malformed(format!("link {i}: invalid claims: {e}")))?;
    check_id("jti", &claims.jti, i)?;
    check_id("sub", &claims.sub, i)?;
    for (what, v) in [("iss", &claims.iss), ("par", &claims.par)] {
        if let Some(v) = v {
            check_id(what, v, i)?;
        }
    }
    let actions = ActionSet::parse(&claims.act)
        .map_err(|e: PatternError| malformed(format!("link {i}: {e}")))?;
    let holder = claims
        .cnf
        .as_ref()
        .map(|c| PublicKey::from_jwk(&c.jwk))
        .transpose()
        .map_err(|e| malformed(format!("link {i}: `cnf.jwk`: {e}")))?;
    Ok(Link {
        signing_input: jws.signing_input().to_owned(),
        signature: *jws.signature(),
        header_kid: jws.header().kid.clone(),
        claims,
        actions,
        holder,
    })
}

fn probes(links: &[Link]) -> Probes {
    let mut p = Probes::default();
    if let Some(kid) = links.first().and_then(Link::kid) {
        p.keys.push(Digest::of(EntryKind::Key, kid));
    }
    for link in links {
        p.warrants
            .push(Digest::of(EntryKind::Warrant, &link.claims.jti));
        let agent = Digest::of(EntryKind::Agent, &link.claims.sub);
        let iat = link.claims.iat.unwrap_or(0);
        // The cutoff test is `iat <= before`, so the oldest iat per agent decides.
        match p.agents.iter_mut().find(|(d, _)| *d == agent) {
            Some((_, old)) => *old = (*old).min(iat),
            None => p.agents.push((agent, iat)),
        }
        if let Some(h) = &link.holder {
            let d = Digest::of(EntryKind::Key, h.kid());
            if !p.keys.contains(&d) {
                p.keys.push(d);
            }
        }
    }
    p
}

/// Why a warrant could not be minted or delegated.
#[derive(Debug, thiserror::Error)]
pub enum WarrantError {
    /// An action pattern is invalid.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// An identifier is empty or too long.
    #[error("`{0}` must be 1 to 256 bytes")]
    Id(&'static str),
    /// The parent chain is not usable.
    #[error("parent chain: {0}")]
    Parent(String),
    /// The given holder key is not the one the parent binds.
    #[error("the holder key `{given}` is not the parent's holder key `{expected}`")]
    WrongHolder {
        /// The key given.
        given: String,
        /// The key the parent binds.
        expected: String,
    },
    /// The child would permit an action the parent does not.
    #[error("the parent does not permit `{0}`: a delegation may only narrow the actions")]
    Widens(String),
    /// The child would outlive its parent.
    #[error("the child would expire at {child}, after its parent at {parent}: use a shorter ttl")]
    Outlives {
        /// The child's requested expiry.
        child: u64,
        /// The parent's expiry.
        parent: u64,
    },
    /// The chain would be longer than allowed.
    #[error("the chain would have {0} links, over the limit of {max}", max = limits::DEFAULT_DEPTH)]
    TooDeep(usize),
    /// No randomness for the `jti`.
    #[error("no randomness available for a `jti`: {0}")]
    Random(String),
}

/// What a new link says; the signer decides `iss`, `par` and `jti`.
#[derive(Clone, Debug)]
pub struct LinkSpec {
    /// The agent.
    pub sub: String,
    /// Permitted action patterns.
    pub act: Vec<String>,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// The holder key to bind, if the link may be delegated further.
    pub holder: Option<PublicKey>,
}

/// A fresh random `jti`: 128 bits, base64url.
pub fn new_jti() -> Result<String, WarrantError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| WarrantError::Random(e.to_string()))?;
    Ok(b64::encode(&bytes))
}

fn sign_link(
    key: &SigningKey,
    iss: &str,
    spec: LinkSpec,
    jti: String,
    par: Option<String>,
) -> Result<String, WarrantError> {
    ActionSet::parse(&spec.act)?;
    if spec.sub.is_empty() || spec.sub.len() > limits::MAX_ID_BYTES {
        return Err(WarrantError::Id("sub"));
    }
    let claims = Claims {
        jti,
        iss: Some(iss.to_owned()),
        sub: spec.sub,
        iat: Some(spec.iat),
        nbf: Some(spec.iat),
        exp: spec.exp,
        act: spec.act,
        cnf: spec.holder.map(|k| Cnf { jwk: k.to_jwk() }),
        par,
    };
    let payload = serde_json::to_vec(&claims).map_err(|e| WarrantError::Parent(e.to_string()))?;
    Ok(jws::sign(Typ::Warrant, key, &payload))
}

/// Mints a root warrant signed by an issuer key, with a fresh `jti`.
pub fn mint_root(issuer: &SigningKey, iss: &str, spec: LinkSpec) -> Result<String, WarrantError> {
    mint_root_with_jti(issuer, iss, spec, new_jti()?)
}

/// Mints a root warrant with the given `jti`, which must be unique to it
/// (take one from [`new_jti`]): for a caller that records the `jti`, such
/// as the registry's audit log.
pub fn mint_root_with_jti(
    issuer: &SigningKey,
    iss: &str,
    spec: LinkSpec,
    jti: String,
) -> Result<String, WarrantError> {
    if iss.is_empty() || iss.len() > limits::MAX_ID_BYTES {
        return Err(WarrantError::Id("iss"));
    }
    sign_link(issuer, iss, spec, jti, None)
}

/// Delegates a child under `parent` (a whole chain), signed with the parent
/// leaf's holder private key. Refuses a child that would widen `act` or
/// outlive the parent. Returns the extended chain.
pub fn delegate(
    parent: &str,
    holder_key: &SigningKey,
    spec: LinkSpec,
) -> Result<String, WarrantError> {
    let chain = ParsedChain::parse(parent).map_err(|d| WarrantError::Parent(d.message))?;
    if chain.links.len() + 1 > limits::DEFAULT_DEPTH {
        return Err(WarrantError::TooDeep(chain.links.len() + 1));
    }
    let leaf = chain.leaf();
    let expected = leaf.holder().ok_or_else(|| {
        WarrantError::Parent(
            "its leaf binds no holder key (`cnf`), so it cannot be delegated".into(),
        )
    })?;
    if expected != holder_key.public() {
        return Err(WarrantError::WrongHolder {
            given: holder_key.kid().into(),
            expected: expected.kid().into(),
        });
    }
    let child_actions = ActionSet::parse(&spec.act)?;
    if let Some(p) = child_actions.first_uncovered(leaf.actions()) {
        return Err(WarrantError::Widens(p.to_string()));
    }
    if spec.exp > leaf.claims.exp {
        return Err(WarrantError::Outlives {
            child: spec.exp,
            parent: leaf.claims.exp,
        });
    }
    let iss = leaf.claims.sub.clone();
    let child = sign_link(
        holder_key,
        &iss,
        spec,
        new_jti()?,
        Some(leaf.claims.jti.clone()),
    )?;
    Ok(format!("{parent}~{child}"))
}
