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
use crate::entry::{Digest, EntryKind};
use crate::jws::{self, JwsError, Typ, UnverifiedJws};
use crate::keys::{Jwk, KeyError, KeyResolver, PublicKey, SigningKey};
use crate::reason::DenyReason;
use crate::record::{CheckRecord, RecordParts};

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

/// A chain whose structure and claims are parsed, signatures unchecked.
#[derive(Clone, Debug)]
pub struct ParsedChain {
    links: Vec<Link>,
    record: CheckRecord,
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

/// Why a chain does not parse or verify. Each names the link (0 = root)
/// and what was wrong; [`ChainError::reason`] is the denial it means.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The chain is over [`limits::MAX_CHAIN_BYTES`].
    #[error("chain of {bytes} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Bytes presented.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Nothing was presented.
    #[error("empty chain")]
    Empty,
    /// More links than [`limits::MAX_DEPTH`] (`configured` false) or the
    /// configured depth limit.
    #[error("chain of {links} links, over the {}limit of {limit}", if *configured { "configured depth " } else { "" })]
    TooDeep {
        /// Links presented.
        links: usize,
        /// The limit.
        limit: usize,
        /// Whether the limit is the configured one.
        configured: bool,
    },
    /// A link does not parse.
    #[error("link {link}: {error}")]
    Link {
        /// Which link (0 = root).
        link: usize,
        /// What is wrong with it.
        error: LinkError,
    },
    /// The root names no `kid`, so no issuer key can be looked up.
    #[error("the root link names no `kid`")]
    RootWithoutKid,
    /// No trusted issuer key has the root's `kid`.
    #[error("root signed by unknown issuer key `{0}`")]
    UnknownIssuer(String),
    /// The root carries a `par` claim.
    #[error("the root link has a `par` claim")]
    RootWithParent,
    /// A link that binds no holder key has a child.
    #[error("link {0} binds no holder key, so it cannot be delegated")]
    NotDelegable(usize),
    /// A child names another key than its parent's holder key.
    #[error("link {link} names key `{named}` but its parent's holder key is `{holder}`")]
    WrongKey {
        /// The child link.
        link: usize,
        /// The `kid` it names.
        named: String,
        /// The parent's holder key id.
        holder: String,
    },
    /// A link's signature does not verify.
    #[error("link {0}: signature does not verify")]
    BadSignature(usize),
    /// A child's `par` is not its parent's `jti`.
    #[error("link {0}: `par` is not the parent's `jti`")]
    WrongParent(usize),
    /// A child expires after its parent.
    #[error("link {0} outlives its parent")]
    Outlives(usize),
    /// A child permits an action its parent does not.
    #[error("link {link} widens the parent's actions with `{pattern}`")]
    Widens {
        /// The child link.
        link: usize,
        /// The first of its patterns the parent does not cover.
        pattern: String,
    },
}

impl ChainError {
    /// The denial this error means (DESIGN 4).
    pub fn reason(&self) -> DenyReason {
        match self {
            Self::TooLarge { .. } | Self::Empty | Self::TooDeep { .. } | Self::Link { .. } => {
                DenyReason::Malformed
            }
            Self::RootWithoutKid | Self::UnknownIssuer(_) => DenyReason::UntrustedIssuer,
            Self::BadSignature(_) => DenyReason::BadSignature,
            Self::RootWithParent
            | Self::NotDelegable(_)
            | Self::WrongKey { .. }
            | Self::WrongParent(_)
            | Self::Outlives(_)
            | Self::Widens { .. } => DenyReason::ChainInvalid,
        }
    }
}

/// Why one link does not parse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Not a compact JWS veto accepts.
    #[error(transparent)]
    Jws(#[from] JwsError),
    /// The `typ` is absent (on a child) or not a warrant's.
    #[error("{}, expected `{}`", match .0 { Some(t) => format!("wrong object type `{t}`"), None => "no object type (`typ`)".to_owned() }, Typ::Warrant.as_str())]
    Typ(Option<String>),
    /// The claims are not a warrant's JSON object.
    #[error("invalid claims: {0}")]
    Claims(#[source] serde_json::Error),
    /// An identifier claim is empty or too long.
    #[error("`{what}` must be 1 to 256 bytes, found {len}")]
    Id {
        /// `jti`, `sub`, `iss` or `par`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// An action pattern is invalid.
    #[error(transparent)]
    Actions(#[from] PatternError),
    /// The holder key (`cnf.jwk`) is not a usable Ed25519 key.
    #[error("`cnf.jwk`: {0}")]
    HolderKey(#[from] KeyError),
}

fn check_id(what: &'static str, id: &str) -> Result<(), LinkError> {
    if id.is_empty() || id.len() > limits::MAX_ID_BYTES {
        return Err(LinkError::Id {
            what,
            len: id.len(),
        });
    }
    Ok(())
}

impl ParsedChain {
    /// Parses `root~child~…~leaf` (an optional `Bearer ` prefix is not
    /// accepted here: pass the token itself).
    pub fn parse(token: &str) -> Result<Self, ChainError> {
        if token.len() > limits::MAX_CHAIN_BYTES {
            return Err(ChainError::TooLarge {
                bytes: token.len(),
                limit: limits::MAX_CHAIN_BYTES,
            });
        }
        if token.is_empty() {
            return Err(ChainError::Empty);
        }
        let depth = token.split('~').count();
        if depth > limits::MAX_DEPTH {
            return Err(ChainError::TooDeep {
                links: depth,
                limit: limits::MAX_DEPTH,
                configured: false,
            });
        }
        let mut links = Vec::with_capacity(depth);
        for (i, part) in token.split('~').enumerate() {
            links.push(parse_link(part, i).map_err(|error| ChainError::Link { link: i, error })?);
        }
        let record = check_record(&links);
        Ok(Self { links, record })
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

    /// The earliest `exp` of any link (Unix seconds): when the chain
    /// stops being valid.
    pub fn expires_at(&self) -> u64 {
        self.record.not_after()
    }

    /// What the per-request check reads, in one record.
    pub(crate) fn record(&self) -> &CheckRecord {
        &self.record
    }

    /// Checks signatures and chain rules against the trusted issuer keys:
    /// root signed by a trusted issuer; each child signed by its parent's
    /// holder key, `par` = parent `jti`, `exp` not after the parent's, `act`
    /// a subset of the parent's; at most `max_depth` links.
    pub fn verify(
        self,
        issuers: &dyn KeyResolver,
        max_depth: usize,
    ) -> Result<VerifiedChain, ChainError> {
        self.check_signatures(issuers, max_depth)?;
        Ok(VerifiedChain(self))
    }

    pub(crate) fn check_signatures(
        &self,
        issuers: &dyn KeyResolver,
        max_depth: usize,
    ) -> Result<(), ChainError> {
        if self.links.len() > max_depth {
            return Err(ChainError::TooDeep {
                links: self.links.len(),
                limit: max_depth,
                configured: true,
            });
        }
        let root = self.root();
        let kid = root.kid().ok_or(ChainError::RootWithoutKid)?;
        let issuer = issuers
            .resolve(kid)
            .ok_or_else(|| ChainError::UnknownIssuer(kid.to_owned()))?;
        if root.claims.par.is_some() {
            return Err(ChainError::RootWithParent);
        }
        verify_link(root, issuer, 0)?;
        for (i, pair) in self.links.windows(2).enumerate() {
            let (parent, child) = (&pair[0], &pair[1]);
            let n = i + 1;
            let holder = parent.holder.as_ref().ok_or(ChainError::NotDelegable(i))?;
            if let Some(named) = child.kid().filter(|k| *k != holder.kid()) {
                return Err(ChainError::WrongKey {
                    link: n,
                    named: named.to_owned(),
                    holder: holder.kid().to_owned(),
                });
            }
            verify_link(child, holder, n)?;
            if child.claims.par.as_deref() != Some(parent.claims.jti.as_str()) {
                return Err(ChainError::WrongParent(n));
            }
            if child.claims.exp > parent.claims.exp {
                return Err(ChainError::Outlives(n));
            }
            if let Some(p) = child.actions.first_uncovered(&parent.actions) {
                return Err(ChainError::Widens {
                    link: n,
                    pattern: p.to_string(),
                });
            }
        }
        Ok(())
    }
}

fn verify_link(link: &Link, key: &PublicKey, n: usize) -> Result<(), ChainError> {
    if key.verify(link.signing_input.as_bytes(), &link.signature) {
        Ok(())
    } else {
        Err(ChainError::BadSignature(n))
    }
}

fn parse_link(part: &str, i: usize) -> Result<Link, LinkError> {
    let jws = UnverifiedJws::parse(part, limits::MAX_LINK_BYTES)?;
    match (i, jws.header().typ.as_deref()) {
        (_, Some(t)) if t == Typ::Warrant.as_str() => {}
        // A plain JWT from a trusted issuer is a valid root (DESIGN 3.1).
        (0, None) => {}
        (0, Some(t)) if t.eq_ignore_ascii_case("JWT") => {}
        (_, t) => return Err(LinkError::Typ(t.map(str::to_owned))),
    }
    let payload = jws.payload_unverified()?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(LinkError::Claims)?;
    check_id("jti", &claims.jti)?;
    check_id("sub", &claims.sub)?;
    for (what, v) in [("iss", &claims.iss), ("par", &claims.par)] {
        if let Some(v) = v {
            check_id(what, v)?;
        }
    }
    let actions = ActionSet::parse(&claims.act)?;
    let holder = claims
        .cnf
        .as_ref()
        .map(|c| PublicKey::from_jwk(&c.jwk))
        .transpose()?;
    Ok(Link {
        signing_input: jws.signing_input().to_owned(),
        signature: *jws.signature(),
        header_kid: jws.header().kid.clone(),
        claims,
        actions,
        holder,
    })
}

/// Gathers what the per-request check reads of `links` (root first): one
/// probe per link `jti`, per agent (with the oldest `iat` of its links)
/// and per key that signs or is bound in the chain; the time bounds; the
/// leaf's patterns.
fn check_record(links: &[Link]) -> CheckRecord {
    let mut warrants: Vec<Digest> = Vec::with_capacity(links.len());
    let mut keys: Vec<Digest> = Vec::with_capacity(links.len() + 1);
    let mut agents: Vec<(Digest, u64)> = Vec::with_capacity(links.len());
    if let Some(kid) = links.first().and_then(Link::kid) {
        keys.push(Digest::of(EntryKind::Key, kid));
    }
    let (mut not_after, mut not_before) = (u64::MAX, 0u64);
    for link in links {
        let c = &link.claims;
        not_after = not_after.min(c.exp);
        not_before = not_before.max(c.nbf.unwrap_or(0).max(c.iat.unwrap_or(0)));
        warrants.push(Digest::of(EntryKind::Warrant, &c.jti));
        let agent = Digest::of(EntryKind::Agent, &c.sub);
        let iat = c.iat.unwrap_or(0);
        // The cutoff test is `iat <= before`, so the oldest iat per agent decides.
        match agents.iter_mut().find(|(d, _)| *d == agent) {
            Some((_, old)) => *old = (*old).min(iat),
            None => agents.push((agent, iat)),
        }
        if let Some(h) = &link.holder {
            let d = Digest::of(EntryKind::Key, h.kid());
            if !keys.contains(&d) {
                keys.push(d);
            }
        }
    }
    CheckRecord::new(RecordParts {
        not_after,
        not_before,
        warrants: &warrants,
        keys: &keys,
        agents: &agents,
        actions: links.last().map(Link::actions),
    })
}

/// Why a warrant could not be minted or delegated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WarrantError {
    /// An action pattern is invalid.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// An identifier is empty or too long.
    #[error("`{0}` must be 1 to 256 bytes")]
    Id(&'static str),
    /// The parent chain does not parse.
    #[error("parent chain: {0}")]
    Parent(#[from] ChainError),
    /// The parent's leaf binds no holder key (`cnf`).
    #[error("parent chain: its leaf binds no holder key (`cnf`), so it cannot be delegated")]
    ParentNotDelegable,
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
    let payload = crate::json::payload_bytes(&claims);
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
    let chain = ParsedChain::parse(parent)?;
    if chain.links.len() + 1 > limits::DEFAULT_DEPTH {
        return Err(WarrantError::TooDeep(chain.links.len() + 1));
    }
    let leaf = chain.leaf();
    let expected = leaf.holder().ok_or(WarrantError::ParentNotDelegable)?;
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
