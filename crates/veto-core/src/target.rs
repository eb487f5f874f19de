//! The one canonical form of an HTTP request target (DESIGN 4).
//!
//! The action `http:METHOD:PATH`, the route file and the request forwarded
//! upstream all use the path this module returns, so no spelling of a path
//! can be authorized as one resource and served as another.
//!
//! Rules, applied to an origin-form target `/path?query`:
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded; every other escape is kept, with uppercase hex;
//! - dot segments (`.`, `..`) written as such are removed as RFC 3986
//!   §5.2.4 says; a `..` that would climb above `/` is refused;
//! - refused: an encoded `/` (`%2F`) or `\` (`%5C`), a raw `\`, an encoded
//!   `.` that would form a dot segment (`%2e`, `.%2E`, `%2e%2e`), an invalid
//!   or truncated escape, control characters (raw or encoded, `%00`
//!   included), raw non-ASCII bytes, an empty segment (`//`), `;` path
//!   parameters, and any other character RFC 3986 does not allow in a path
//!   (`"`, `<`, `>`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`, space, `#`);
//! - asterisk-form (`*`) and authority-form (`host:443`) targets are
//!   refused: neither names a path;
//! - the query is kept exactly as sent and is not part of the path.
//!
//! Everything refused is something servers are known to read in different
//! ways (`%2F` and `\` as separators, `..;` as `..` in Java servers, `//`
//! merged by nginx), so refusing is the only answer that cannot disagree
//! with the upstream.

use std::fmt;

/// Why a request target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// `*` (asterisk-form) or `host:port` (authority-form).
    #[error("request target `{0}` names no path: only `/path` targets are accepted")]
    NotOriginForm(String),
    /// `%2F`.
    #[error("an encoded `/` (`{0}`) in the path is refused: servers disagree on whether it separates segments")]
    EncodedSlash(String),
    /// `\` or `%5C`.
    #[error("a backslash (`{0}`) in the path is refused: some servers read it as `/`")]
    Backslash(String),
    /// `%2E` forming `.` or `..`.
    #[error("the path segment `{0}` is an encoded dot segment: write `.` and `..` unencoded, or not at all")]
    EncodedDotSegment(String),
    /// `..` above the root.
    #[error("the path climbs above `/` with `..`")]
    AboveRoot,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-escape `{0}` in the path: `%` must be followed by two hex digits")]
    BadEscape(String),
    /// A control character, raw or encoded.
    #[error("a control character ({0}) in the path is refused")]
    Control(String),
    /// A byte above 0x7F, unencoded.
    #[error("a raw non-ASCII byte in the path is refused: percent-encode it")]
    NonAscii,
    /// `//`.
    #[error("an empty path segment (`//`) is refused: servers disagree on whether it is merged")]
    EmptySegment,
    /// `;`.
    #[error("`;` in the path is refused: servers disagree on path parameters (`..;`); encode it as `%3B` if it is data")]
    Parameter,
    /// Another character a path may not hold unencoded.
    #[error("the character `{0}` is not allowed unencoded in a path: percent-encode it")]
    Disallowed(char),
    /// `%25` followed by two hex digits: an escape, escaped again.
    #[error("`{0}` is an escape escaped again (double encoding): servers that decode twice would read another path; send it once")]
    DoubleEncoded(String),
    /// Escapes that do not decode to UTF-8 (overlong forms of `.` and `/`
    /// included).
    #[error("the escapes in path segment `{0}` are not UTF-8 (an overlong or truncated sequence): servers disagree on what they mean")]
    NotUtf8(String),
    /// A character that Unicode normalization (NFKC) turns into `.`, `/`
    /// or `\`.
    #[error("the path holds U+{0:04X}, which normalizes to `.`, `/` or `\\`: servers that normalize would read another path")]
    Confusable(u32),
    /// A method with lowercase letters.
    #[error("method `{0}` is refused: methods are case-sensitive (RFC 9110 9.1) and servers disagree on lowercase ones; send it in uppercase")]
    Method(String),
}

impl TargetError {
    /// The API error code for every refused target.
    pub const CODE: &'static str = crate::wire::ErrorCode::BadTarget.as_str();
}

/// A request target in canonical form: the path to authorize and forward,
/// and the query exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    path: String,
    query: Option<String>,
}

impl Target {
    /// Canonicalizes an origin-form target (`/path` or `/path?query`).
    pub fn parse(target: &str) -> Result<Self, TargetError> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (target, None),
        };
        Ok(Self {
            path: canonical_path(path)?,
            query,
        })
    }

    /// The canonical path, such as `/orders/7`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query, without `?`, exactly as sent.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
}

impl fmt::Display for Target {
    /// The canonical path, then `?query` when there was one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Allowed unencoded in a segment besides unreserved: sub-delims other
/// than `;`, and `:` and `@` (RFC 3986 `pchar`).
fn is_plain(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Characters NFKC maps to `.`, `/` or `\`: fullwidth and small forms,
/// leaders and slashes.
const CONFUSABLES: [char; 10] = [
    '\u{2024}', // ONE DOT LEADER
    '\u{FE52}', // SMALL FULL STOP
    '\u{FF0E}', // FULLWIDTH FULL STOP
    '\u{2044}', // FRACTION SLASH
    '\u{2215}', // DIVISION SLASH
    '\u{29F8}', // BIG SOLIDUS
    '\u{FF0F}', // FULLWIDTH SOLIDUS
    '\u{2216}', // SET MINUS
    '\u{FE68}', // SMALL REVERSE SOLIDUS
    '\u{FF3C}', // FULLWIDTH REVERSE SOLIDUS
];

/// Refuses a canonical segment whose remaining escapes are not UTF-8 or
/// decode to a character that normalizes to `.`, `/` or `\`.
fn check_escaped_text(seg: &str) -> Result<(), TargetError> {
    if !seg.contains('%') {
        return Ok(());
    }
    let b = seg.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                bytes.push(hi * 16 + lo);
                i += 3;
            }
            (c, _, _) => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| TargetError::NotUtf8(seg.chars().take(64).collect()))?;
    match text.chars().find(|c| CONFUSABLES.contains(c)) {
        Some(c) => Err(TargetError::Confusable(u32::from(c))),
        None => Ok(()),
    }
}

/// Refuses a method that is not in uppercase: `post` and `POST` are
/// different methods to a strict server and the same to a lenient one, so
/// neither a route rule nor a warrant could name it reliably.
pub fn check_method(method: &str) -> Result<(), TargetError> {
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(TargetError::Method(method.chars().take(32).collect()));
    }
    Ok(())
}

fn describe_control(b: u8) -> String {
    format!("byte 0x{b:02X}")
}

/// One segment, decoded as far as the rules allow; the flag says whether
/// an encoded `.` was decoded in it.
fn canonical_segment(seg: &str) -> Result<(String, bool), TargetError> {
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let escape = || seg.get(i..(i + 3).min(seg.len())).unwrap_or("%").to_owned();
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    // Show at most the `%` and two bytes, cut at a char boundary.
                    let shown: String = seg[i..].chars().take(3).collect();
                    return Err(TargetError::BadEscape(shown));
                };
                let v = hi * 16 + lo;
                if v == b'%'
                    && bytes.get(i + 3).copied().and_then(hex).is_some()
                    && bytes.get(i + 4).copied().and_then(hex).is_some()
                {
                    return Err(TargetError::DoubleEncoded(seg[i..i + 5].to_owned()));
                }
                match v {
                    b'/' => return Err(TargetError::EncodedSlash(escape())),
                    b'\\' => return Err(TargetError::Backslash(escape())),
                    0..=0x1F | 0x7F => return Err(TargetError::Control(format!("`{}`", escape()))),
                    b'.' => {
                        encoded_dot = true;
                        out.push('.');
                    }
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(TargetError::Backslash("\\".into())),
            0..=0x1F | 0x7F => return Err(TargetError::Control(describe_control(b))),
            0x80..=0xFF => return Err(TargetError::NonAscii),
            b';' => return Err(TargetError::Parameter),
            b if is_unreserved(b) || is_plain(b) => {
                out.push(char::from(b));
                i += 1;
            }
            b => return Err(TargetError::Disallowed(char::from(b))),
        }
    }
    check_escaped_text(&out)?;
    Ok((out, encoded_dot))
}

/// The canonical form of a path (no query).
pub fn canonical_path(path: &str) -> Result<String, TargetError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(TargetError::NotOriginForm(
            path.chars().take(64).collect::<String>(),
        ));
    };
    let raw: Vec<&str> = rest.split('/').collect();
    let last = raw.len() - 1;
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (i, seg) in raw.into_iter().enumerate() {
        let (seg, encoded_dot) = canonical_segment(seg)?;
        let is_last = i == last;
        match seg.as_str() {
            "." | ".." if encoded_dot => return Err(TargetError::EncodedDotSegment(seg)),
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(TargetError::AboveRoot);
                }
            }
            "" if !is_last => return Err(TargetError::EmptySegment),
            _ => {
                out.push(seg);
                continue;
            }
        }
        // A final `.`, `..` or empty segment leaves a trailing `/`.
        if is_last {
            out.push(String::new());
        }
    }
    Ok(format!("/{}", out.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(input: &str) -> String {
        Target::parse(input)
            .unwrap_or_else(|e| panic!("`{input}` refused: {e}"))
            .to_string()
    }

    #[test]
    fn plain_targets_are_unchanged() {
        for t in [
            "/",
            "/orders/7",
            "/orders/7/",
            "/orders/7?x=1&y=%2F..",
            "/a:b@c/!$&'()*+,=",
            "/file.txt",
            "/a..b/...",
            "/%20x%C3%A9",
        ] {
            assert_eq!(ok(t), t);
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(ok("/orders/../secret.txt"), "/secret.txt");
        assert_eq!(ok("/orders/./7"), "/orders/7");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/a/b/../../c?q=/../"), "/c?q=/../");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_uppercased() {
        assert_eq!(ok("/%6Frders/%37"), "/orders/7");
        assert_eq!(ok("/a%2eb"), "/a.b");
        assert_eq!(ok("/%7e%5f%2d"), "/~_-");
        assert_eq!(ok("/a%3ab%c3%a9%3B"), "/a%3Ab%C3%A9%3B");
        assert_eq!(ok("/a%20b"), "/a%20b");
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        use TargetError as E;
        type IsExpected = fn(&TargetError) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("/..", |e| *e == E::AboveRoot),
            ("/a/../..", |e| *e == E::AboveRoot),
            ("/orders/%2e%2e/secret", |e| {
                matches!(e, E::EncodedDotSegment(_))
            }),
            ("/orders/.%2E/secret", |e| {
                matches!(e, E::EncodedDotSegment(_))
            }),
            ("/orders/%2E./secret", |e| {
                matches!(e, E::EncodedDotSegment(_))
            }),
            ("/orders/%2e/x", |e| matches!(e, E::EncodedDotSegment(_))),
            ("/orders%2f..%2fsecret", |e| matches!(e, E::EncodedSlash(_))),
            ("/orders%2F7", |e| matches!(e, E::EncodedSlash(_))),
            ("/orders\\..\\secret", |e| matches!(e, E::Backslash(_))),
            ("/orders%5c7", |e| matches!(e, E::Backslash(_))),
            ("/a%", |e| matches!(e, E::BadEscape(_))),
            ("/a%4", |e| matches!(e, E::BadEscape(_))),
            ("/a%zz", |e| matches!(e, E::BadEscape(_))),
            ("/a%4é", |e| matches!(e, E::BadEscape(_))),
            ("/a%00", |e| matches!(e, E::Control(_))),
            ("/a%0a", |e| matches!(e, E::Control(_))),
            ("/a%7F", |e| matches!(e, E::Control(_))),
            ("/a\tb", |e| matches!(e, E::Control(_))),
            ("/a\0b", |e| matches!(e, E::Control(_))),
            ("/é", |e| *e == E::NonAscii),
            ("/orders//7", |e| *e == E::EmptySegment),
            ("/orders/%252e%252e/x", |e| matches!(e, E::DoubleEncoded(_))),
            ("/orders/%252F", |e| matches!(e, E::DoubleEncoded(_))),
            ("/orders/%c0%ae%c0%ae/x", |e| matches!(e, E::NotUtf8(_))),
            ("/orders/%e0%80%af", |e| matches!(e, E::NotUtf8(_))),
            ("/orders/%C3", |e| matches!(e, E::NotUtf8(_))),
            ("/orders/%EF%BC%8E%EF%BC%8E/x", |e| {
                *e == E::Confusable(0xFF0E)
            }),
            ("/orders/%EF%BC%8F", |e| *e == E::Confusable(0xFF0F)),
            ("/orders/a%E2%88%95b", |e| *e == E::Confusable(0x2215)),
            ("//orders", |e| *e == E::EmptySegment),
            ("/orders/..;/secret", |e| *e == E::Parameter),
            ("/orders;x=1", |e| *e == E::Parameter),
            ("/a b", |e| *e == E::Disallowed(' ')),
            ("/a|b", |e| *e == E::Disallowed('|')),
            ("/a#b", |e| *e == E::Disallowed('#')),
            ("*", |e| matches!(e, E::NotOriginForm(_))),
            ("example.com:443", |e| matches!(e, E::NotOriginForm(_))),
            ("", |e| matches!(e, E::NotOriginForm(_))),
            ("http://host/x", |e| matches!(e, E::NotOriginForm(_))),
        ];
        for (input, want) in cases {
            match Target::parse(input) {
                Ok(t) => panic!("`{input}` accepted as `{t}`"),
                Err(e) => {
                    assert!(want(&e), "`{input}`: unexpected error {e:?}");
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    fn target_strategy() -> impl Strategy<Value = String> {
        // Paths built from the pieces that matter, plus arbitrary bytes.
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("%41".to_owned()),
            Just("%3b".to_owned()),
            Just("%".to_owned()),
            Just(";".to_owned()),
            Just("\\".to_owned()),
            "[a-z]{1,3}",
            any::<char>().prop_map(String::from),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #[test]
        fn canonical_form_is_a_fixed_point(input in target_strategy()) {
            if let Ok(t) = Target::parse(&input) {
                let once = t.to_string();
                let twice = Target::parse(&once).map(|t| t.to_string());
                prop_assert_eq!(twice, Ok(once));
            }
        }

        #[test]
        fn canonical_paths_hold_no_ambiguous_form(input in target_strategy()) {
            if let Ok(t) = Target::parse(&input) {
                let p = t.path();
                prop_assert!(p.starts_with('/'));
                prop_assert!(!p.contains("//"));
                prop_assert!(!p.contains('\\') && !p.contains(';'));
                prop_assert!(p.is_ascii() && !p.bytes().any(|b| b.is_ascii_control()));
                for seg in p.split('/') {
                    prop_assert!(seg != "." && seg != "..", "dot segment in `{}`", p);
                }
                // Every remaining escape is uppercase and not of an
                // unreserved character, `/` or `\`.
                for (i, _) in p.match_indices('%') {
                    let esc = &p[i + 1..i + 3];
                    prop_assert_eq!(esc, esc.to_ascii_uppercase());
                    let v = u8::from_str_radix(esc, 16).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(!is_unreserved(v) && v != b'/' && v != b'\\');
                }
            }
        }

        #[test]
        fn never_panics_on_any_string(input in ".*") {
            let _ = Target::parse(&input);
        }

        #[test]
        fn a_refused_segment_is_refused_wherever_it_sits(
            prefix in "(/[a-z]{1,3}){0,3}",
            bad in prop_oneof![Just("%2F"), Just("%5C"), Just("%2e%2e"), Just("%00"), Just(";"), Just("%G0")],
            suffix in "(/[a-z]{1,3}){0,3}",
        ) {
            let input = format!("{prefix}/x{bad}{suffix}");
            let refused = Target::parse(&input).is_err();
            // `%2e%2e` inside `x%2e%2e` is not a dot segment.
            prop_assert_eq!(refused, bad != "%2e%2e", "`{}`", input);
            let input = format!("{prefix}/{bad}{suffix}");
            prop_assert!(Target::parse(&input).is_err(), "`{}`", input);
        }
    }

    #[test]
    fn escaped_text_that_is_fine_stays() {
        // A lone escaped `%`, UTF-8 text, reserved characters.
        assert_eq!(ok("/a%25b"), "/a%25b");
        assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(ok("/a%3Ab"), "/a%3Ab");
    }

    #[test]
    fn methods_must_be_uppercase() {
        for m in ["GET", "POST", "PROPFIND", "M-SEARCH"] {
            assert_eq!(check_method(m), Ok(()), "{m}");
        }
        for m in ["get", "Post", "dELETE"] {
            assert!(
                matches!(check_method(m), Err(TargetError::Method(_))),
                "{m}"
            );
        }
    }
}
