//! The headers between client and upstream: what is never forwarded
//! ([`strip`]), and what the proxy adds (`X-Forwarded-For` and who vouched
//! for what, DESIGN 3.1), made once per connection or per chain.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use http::{header, HeaderMap, HeaderName, HeaderValue};
use veto_authorizer::{Outcome, Verified};
use veto_core::wire;
use veto_core::VerifiedChain;

/// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded either way.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "http2-settings",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Client headers never forwarded, besides hop-by-hop ones: each restates
/// the request's method, target or origin, and an upstream (or framework,
/// such as Symfony or IIS rewrite rules) that honours it would run another
/// method or serve another path than the one authorized, or trust an
/// origin the client made up.
const OVERRIDES: [&str; 19] = [
    // method
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-forwarded-method",
    // target
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-envoy-original-path",
    // origin (`X-Forwarded-For` is kept and appended to)
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
];

/// The credential headers, consumed here and never forwarded.
const CREDENTIALS: [&str; 2] = ["authorization", wire::header::DPOP];

/// Which headers [`strip`] removes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strip {
    /// A response: hop-by-hop headers.
    Response,
    /// A request: hop-by-hop headers (`Upgrade` kept when `upgrade`), the
    /// credentials, `Host`, and every client header that could alias or
    /// override what the proxy decided: names with `_` (CGI/WSGI read
    /// `Veto_Agent` as `HTTP_VETO_AGENT`, the same as `Veto-Agent`; nginx
    /// drops them too), every `veto-*` header (the proxy's own namespace),
    /// and the [`OVERRIDES`].
    Request { upgrade: bool },
}

/// Removes, in one pass over the names present, every header `what`
/// names, and every header the `Connection` header lists (RFC 9110
/// 7.6.1); all repeats of each go. An upgrade forwards only
/// `Connection: upgrade`: the client's may list other headers, even the
/// proxy's own.
pub(crate) fn strip(headers: &mut HeaderMap, what: Strip) {
    let upgrade = what == Strip::Request { upgrade: true };
    // Names listed in `Connection`; almost always none.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            if upgrade && *name == header::UPGRADE {
                return false;
            }
            HOP_BY_HOP.contains(&n)
                || listed.contains(name)
                || match what {
                    Strip::Response => false,
                    Strip::Request { .. } => {
                        *name == header::HOST
                            || CREDENTIALS.contains(&n)
                            || n.contains('_')
                            || n.starts_with("veto-")
                            || OVERRIDES.contains(&n)
                    }
                }
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The header names the proxy sets, made once.
pub(crate) mod names {
    use http::HeaderName;
    use veto_core::wire::header;

    pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub(crate) static ROOT_AGENT: HeaderName = HeaderName::from_static(header::ROOT_AGENT);
    pub(crate) static DELEGATION: HeaderName = HeaderName::from_static(header::DELEGATION);
    pub(crate) static AGENT: HeaderName = HeaderName::from_static(header::AGENT);
    pub(crate) static WARRANT: HeaderName = HeaderName::from_static(header::WARRANT);
    pub(crate) static HOLDER: HeaderName = HeaderName::from_static(header::HOLDER);
    pub(crate) static STALE: HeaderName = HeaderName::from_static(header::STALE);
}

/// Who vouched for what (DESIGN 3.1), as the header values the upstream
/// gets, made for one verified chain and the holder key its request
/// proved. Always sent, percent-encoded: a `sub` holding spaces, control
/// characters or non-ASCII arrives escaped, never dropped and never
/// trimmed or normalized into another name.
pub(crate) struct Identity {
    /// The chain these values were made from, compared by address (the
    /// authorizer hands out one `Arc` per verified chain). Weak, so an idle
    /// connection does not keep a chain the verified-chain cache evicted
    /// (and its byte budget no longer counts) alive; while this is held the
    /// allocation, and so the address, is never another chain's.
    chain: Weak<VerifiedChain>,
    /// The holder thumbprint they were made with.
    holder: Option<String>,
    values: Vec<(&'static HeaderName, HeaderValue)>,
}

impl Identity {
    /// The values for `who`, the authorizer's account of `chain`.
    fn new(chain: &Arc<VerifiedChain>, who: Verified) -> Self {
        let mut delegation = String::new();
        for (i, sub) in who.delegation.iter().enumerate() {
            if i > 0 {
                delegation.push(',');
            }
            escape_identity(&mut delegation, sub);
        }
        let mut values = vec![
            (&names::ROOT_AGENT, identity_value(&who.root_agent)),
            (&names::DELEGATION, header_value(&delegation)),
            (&names::AGENT, identity_value(&who.agent)),
            (&names::WARRANT, identity_value(&who.warrant)),
        ];
        if let Some(kid) = &who.holder {
            values.push((&names::HOLDER, identity_value(kid)));
        }
        Self {
            chain: Arc::downgrade(chain),
            holder: who.holder,
            values,
        }
    }

    fn is_for(&self, chain: &Arc<VerifiedChain>, holder: Option<&str>) -> bool {
        std::ptr::eq(self.chain.as_ptr(), Arc::as_ptr(chain)) && self.holder.as_deref() == holder
    }

    /// Sets every value, replacing any of the same name.
    pub(crate) fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.values {
            headers.insert((*name).clone(), value.clone());
        }
    }
}

/// One client connection: its peer's address as an `X-Forwarded-For` hop,
/// and the identity headers of the last chain it presented (an agent
/// keeps presenting one chain on its connection, so they are made once).
pub(crate) struct Conn {
    peer: HeaderValue,
    last: std::sync::Mutex<Option<Arc<Identity>>>,
}

impl Conn {
    pub(crate) fn new(peer: SocketAddr) -> Self {
        Self {
            peer: header_value(&peer.ip().to_string()),
            last: std::sync::Mutex::new(None),
        }
    }

    /// Sets `X-Forwarded-For` to the client's hops, when they are visible
    /// ASCII, followed by this peer; otherwise to this peer alone.
    pub(crate) fn forward_for(&self, headers: &mut HeaderMap) {
        let hops = match headers
            .get(&names::X_FORWARDED_FOR)
            .filter(|v| v.to_str().is_ok())
        {
            Some(prev) => {
                let mut hops = prev.as_bytes().to_vec();
                hops.extend_from_slice(b", ");
                hops.extend_from_slice(self.peer.as_bytes());
                HeaderValue::from_bytes(&hops).ok()
            }
            None => Some(self.peer.clone()),
        };
        if let Some(v) = hops {
            headers.insert(names::X_FORWARDED_FOR.clone(), v);
        }
    }

    /// The identity headers of an allowed `outcome`: the last ones when
    /// they were made for the same chain and holder, else new ones from
    /// [`Verified::from_outcome`]; `None` for a denial.
    pub(crate) fn identity(&self, outcome: &Outcome) -> Option<Arc<Identity>> {
        let chain = outcome.chain.as_ref()?;
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*last {
            Some(id) if id.is_for(chain, outcome.holder.as_deref()) => Some(id.clone()),
            _ => {
                let id = Arc::new(Identity::new(chain, Verified::from_outcome(outcome)?));
                *last = Some(id.clone());
                Some(id)
            }
        }
    }
}

/// `text` as a header value, every byte outside RFC 3986 `pchar`
/// (unreserved, sub-delims, `:` and `@`) percent-encoded, `%` included, so
/// the value is reversible and holds only visible ASCII.
fn identity_value(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    escape_identity(&mut out, text);
    header_value(&out)
}

/// Whether `b` passes into an identity header as itself: RFC 3986
/// `pchar` without `,`, which separates the hops of `Veto-Delegation` (a
/// `sub` of `a,b` must not read as two delegators).
fn identity_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+;=:@".contains(&b)
}

/// Appends `text` to `out`, every byte outside [`identity_byte`]
/// percent-encoded (`%XX`, upper case).
fn escape_identity(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in text.bytes() {
        if identity_byte(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
}

pub(crate) fn header_value(escaped: &str) -> HeaderValue {
    #[expect(
        clippy::expect_used,
        reason = "escaped text holds only visible ASCII, which every header value may"
    )]
    HeaderValue::from_str(escaped).expect("visible ASCII is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_headers_that_alias_or_override_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("veto_agent", "admin"),
            ("veto-agent", "a"),
            ("veto-agent", "b"),
            ("veto-future", "x"),
            ("x_forwarded_for", "10.0.0.1"),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-original-method", "DELETE"),
            ("forwarded", "for=10.0.0.9;host=admin"),
            ("x-forwarded-host", "admin.internal"),
            ("x-real-ip", "10.0.0.9"),
            ("x-forwarded-for", "10.0.0.2"),
            ("accept", "*/*"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip(&mut h, Strip::Request { upgrade: false });
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-forwarded-for"]);
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        left
    }

    #[test]
    fn credentials_host_hop_by_hop_and_listed_headers_are_never_forwarded() {
        let sent = [
            ("authorization", "DPoP a"),
            ("authorization", "Bearer b"),
            ("dpop", "proof"),
            ("host", "proxy.example"),
            ("connection", "keep-alive, x-secret, Veto-Agent"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("x-secret", "1"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ];
        let mut h = headers(&sent);
        strip(&mut h, Strip::Request { upgrade: false });
        assert_eq!(names(&h), ["accept"]);

        // An upgrade keeps `Upgrade` and forwards only `Connection: upgrade`.
        let mut h = headers(&sent);
        strip(&mut h, Strip::Request { upgrade: true });
        assert_eq!(names(&h), ["accept", "connection", "upgrade"]);
        assert_eq!(h.get_all(header::CONNECTION).iter().count(), 1);
        assert_eq!(h[header::CONNECTION], "upgrade");

        // A response loses hop-by-hop and listed headers only.
        let mut h = headers(&[
            ("connection", "x-internal"),
            ("x-internal", "1"),
            ("transfer-encoding", "chunked"),
            ("veto-agent", "kept: the upstream's own"),
            ("content-type", "text/plain"),
        ]);
        strip(&mut h, Strip::Response);
        assert_eq!(names(&h), ["content-type", "veto-agent"]);
    }

    #[test]
    fn identity_values_are_escaped_never_dropped() {
        for (sub, sent) in [
            ("worker", "worker"),
            ("billing-bot@team:7", "billing-bot@team:7"),
            (" admin", "%20admin"),
            ("ad\r\nmin", "ad%0D%0Amin"),
            ("a\0b", "a%00b"),
            ("r\u{202E}lta", "r%E2%80%AElta"),
            ("100%", "100%25"),
            ("x,billing-service", "x%2Cbilling-service"),
        ] {
            assert_eq!(identity_value(sub).to_str().unwrap(), sent, "{sub:?}");
        }
    }
}
