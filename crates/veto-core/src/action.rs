//! Action patterns. An action is a string such as `http:GET:/orders/7`;
//! segments are separated by `:` or `/`. A pattern may end a segment with
//! `*`: at the very end of the pattern `*` matches any rest (so `http:GET:/*`
//! covers every GET path and `*` covers everything); elsewhere it matches the
//! rest of one segment (`http:*:/health` covers any method on `/health`).
//!
//! Because a mid-pattern `*` is always followed by a separator, matching and
//! containment are both single left-to-right passes, with no backtracking.

use std::fmt;

/// Limits on a pattern.
pub const MAX_PATTERN_BYTES: usize = 256;

/// Why a pattern was rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern is empty.
    #[error("empty action pattern")]
    Empty,
    /// The pattern is too long.
    #[error("action pattern of {0} bytes, over the 256-byte limit")]
    TooLong(usize),
    /// More patterns than one warrant may carry.
    #[error("{0} action patterns, over the limit of 64 per warrant")]
    TooMany(usize),
    /// A `*` is not at the end of a segment.
    #[error("action pattern `{0}`: `*` may only end a segment (followed by `:`, `/` or the end)")]
    MisplacedStar(String),
    /// Control characters are not allowed.
    #[error("action pattern `{0}` contains a control character")]
    Control(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Lit(u8),
    /// Rest of one segment: `[^:/]*`.
    Seg,
    /// Any rest: `.*`.
    Tail,
}

fn is_sep(b: u8) -> bool {
    b == b':' || b == b'/'
}

/// A validated action pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    toks: Vec<Tok>,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Pattern {
    /// Parses and validates a pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Err(PatternError::Empty);
        }
        if bytes.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::TooLong(bytes.len()));
        }
        let mut toks = Vec::with_capacity(bytes.len());
        for (i, &b) in bytes.iter().enumerate() {
            if b.is_ascii_control() {
                return Err(PatternError::Control(text.into()));
            }
            toks.push(match (b, bytes.get(i + 1)) {
                (b'*', None) => Tok::Tail,
                (b'*', Some(&next)) if is_sep(next) => Tok::Seg,
                (b'*', Some(_)) => return Err(PatternError::MisplacedStar(text.into())),
                (b, _) => Tok::Lit(b),
            });
        }
        Ok(Self {
            text: text.into(),
            toks,
        })
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the concrete `action` matches (a `*` in an action is literal).
    pub fn matches(&self, action: &str) -> bool {
        let a = action.as_bytes();
        covers(&self.toks, a.len(), |j| Tok::Lit(a[j]))
    }

    /// Whether every action `other` matches is matched by `self`.
    pub fn covers(&self, other: &Pattern) -> bool {
        covers(&self.toks, other.toks.len(), |j| other.toks[j])
    }
}

/// `L(c) ⊆ L(p)`, with `c` given by length and accessor so a literal action
/// needs no token vector.
fn covers(p: &[Tok], c_len: usize, c: impl Fn(usize) -> Tok) -> bool {
    let (mut i, mut j) = (0, 0);
    loop {
        match p.get(i) {
            None => return j == c_len,
            Some(Tok::Tail) => return true,
            Some(Tok::Lit(x)) => {
                if j < c_len && c(j) == Tok::Lit(*x) {
                    i += 1;
                    j += 1;
                } else {
                    return false;
                }
            }
            Some(Tok::Seg) => {
                // A segment star is followed by a separator in `p`, so
                // consuming greedily up to the next separator is exact.
                while j < c_len {
                    match c(j) {
                        Tok::Lit(y) if !is_sep(y) => j += 1,
                        Tok::Seg => j += 1,
                        _ => break,
                    }
                }
                i += 1;
            }
        }
    }
}

// An action program: a set's patterns as bytes, each ended by `END`. A
// literal is its own byte (patterns refuse control characters, so no
// literal collides with the three markers).
const END: u8 = 0x00;
const SEG: u8 = 0x01;
const TAIL: u8 = 0x02;

/// Whether some pattern of the action program `prog` (written by
/// [`ActionSet::write_program`]) matches `action`: [`ActionSet::allows`]
/// over one contiguous buffer.
pub(crate) fn program_allows(prog: &[u8], action: &[u8]) -> bool {
    // Patterns are never empty, so an empty piece is only the one after
    // the last `END`.
    prog.split(|&b| b == END)
        .filter(|p| !p.is_empty())
        .any(|p| {
            let (mut i, mut j) = (0, 0);
            loop {
                match p.get(i) {
                    None => return j == action.len(),
                    Some(&TAIL) => return true,
                    Some(&SEG) => {
                        while j < action.len() && !is_sep(action[j]) {
                            j += 1;
                        }
                        i += 1;
                    }
                    Some(&x) => {
                        if action.get(j) != Some(&x) {
                            return false;
                        }
                        i += 1;
                        j += 1;
                    }
                }
            }
        })
}

/// A set of permitted actions (a warrant's `act`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ActionSet {
    patterns: Vec<Pattern>,
}

/// Most patterns one warrant may carry.
pub const MAX_PATTERNS: usize = 64;

impl ActionSet {
    /// Parses every pattern; at most [`MAX_PATTERNS`].
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        if patterns.len() > MAX_PATTERNS {
            return Err(PatternError::TooMany(patterns.len()));
        }
        let patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// The patterns.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether some pattern matches `action`.
    pub fn allows(&self, action: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(action))
    }

    /// Appends the patterns as an action program for [`program_allows`]:
    /// each pattern's tokens, then `END`.
    pub(crate) fn write_program(&self, out: &mut Vec<u8>) {
        for p in &self.patterns {
            out.extend(p.toks.iter().map(|t| match *t {
                Tok::Lit(b) => b,
                Tok::Seg => SEG,
                Tok::Tail => TAIL,
            }));
            out.push(END);
        }
    }

    /// Whether every pattern of `self` is covered by some pattern of `parent`.
    pub fn is_subset_of(&self, parent: &ActionSet) -> bool {
        self.patterns
            .iter()
            .all(|c| parent.patterns.iter().any(|p| p.covers(c)))
    }

    /// The first pattern of `self` that `parent` does not cover.
    pub fn first_uncovered<'a>(&'a self, parent: &ActionSet) -> Option<&'a Pattern> {
        self.patterns
            .iter()
            .find(|c| !parent.patterns.iter().any(|p| p.covers(c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn matching() {
        assert!(p("*").matches("http:GET:/a/b"));
        assert!(p("http:GET:/orders/*").matches("http:GET:/orders/7/items"));
        assert!(!p("http:GET:/orders/*").matches("http:GET:/order"));
        assert!(p("http:*:/health").matches("http:POST:/health"));
        assert!(!p("http:*:/health").matches("http:POST:/x/health"));
        assert!(p("read:ord*").matches("read:orders:7"));
        assert!(p("a:b").matches("a:b"));
        assert!(!p("a:b").matches("a:bc"));
    }

    #[test]
    fn containment() {
        assert!(p("*").covers(&p("http:*:/x")));
        assert!(p("http:*").covers(&p("http:GET:/*")));
        assert!(p("http:*:/x").covers(&p("http:GET:/x")));
        assert!(p("http:*:/x").covers(&p("http:G*:/x")));
        assert!(!p("http:GET:/x").covers(&p("http:*:/x")));
        assert!(!p("http:*:/x").covers(&p("http:*")));
        assert!(!p("http:GET:/*").covers(&p("http:*")));
        assert!(!p("a:*:b").covers(&p("a:*")));
    }

    #[test]
    fn misplaced_star() {
        assert!(matches!(
            Pattern::parse("a*b"),
            Err(PatternError::MisplacedStar(_))
        ));
        assert!(matches!(Pattern::parse(""), Err(PatternError::Empty)));
    }

    fn action_text(min: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(vec!["a", "b", ":", "/"]), min..8)
            .prop_map(|v| v.concat())
    }

    fn pattern_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(vec!["a", "b", ":", "/", "*"]),
            1..8,
        )
        .prop_map(|v| v.concat())
        .prop_filter("valid", |s| Pattern::parse(s).is_ok())
    }

    /// Every string over `alphabet` of length `0..=max`.
    fn all_strings(alphabet: &[char], max: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut level = vec![String::new()];
        for _ in 0..max {
            level = level
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            out.extend(level.iter().cloned());
        }
        out
    }

    /// Soundness of containment, exhaustively over a small alphabet: for
    /// every pair of valid patterns up to 5 bytes, if `p` covers `c` then
    /// every action up to 6 bytes that `c` matches, `p` matches.
    #[test]
    fn covers_is_sound_exhaustively() {
        let actions = all_strings(&['a', 'b', ':', '/'], 6);
        let words = actions.len().div_ceil(64);
        let patterns: Vec<(Pattern, Vec<u64>)> = all_strings(&['a', 'b', ':', '/', '*'], 5)
            .iter()
            .filter_map(|t| Pattern::parse(t).ok())
            .map(|pat| {
                let mut bits = vec![0u64; words];
                for (i, a) in actions.iter().enumerate() {
                    if pat.matches(a) {
                        bits[i / 64] |= 1 << (i % 64);
                    }
                }
                (pat, bits)
            })
            .collect();
        let (mut covered, mut pairs) = (0u64, 0u64);
        for (p, p_bits) in &patterns {
            for (c, c_bits) in &patterns {
                pairs += 1;
                if !p.covers(c) {
                    continue;
                }
                covered += 1;
                for (w, (pw, cw)) in p_bits.iter().zip(c_bits).enumerate() {
                    let missing = cw & !pw;
                    assert!(
                        missing == 0,
                        "`{p}` covers `{c}` but does not match `{}`",
                        actions[w * 64 + missing.trailing_zeros() as usize]
                    );
                }
            }
        }
        // The pairs that reach the assertion are many, not a rare case.
        eprintln!(
            "{} patterns, {} actions: {covered} of {pairs} pairs covered",
            patterns.len(),
            actions.len()
        );
        assert!(patterns.len() > 1000, "{} patterns", patterns.len());
        assert!(covered > 10_000, "{covered} of {pairs} pairs covered");
    }

    /// An action drawn from `pattern`'s language: each segment star
    /// replaced by a run of non-separators, a final star by any rest.
    fn action_in(pattern: &str, fills: &[String]) -> String {
        let b = pattern.as_bytes();
        let mut out = String::new();
        let mut k = 0;
        for (i, &c) in b.iter().enumerate() {
            if c != b'*' {
                out.push(char::from(c));
                continue;
            }
            let fill = &fills[k % fills.len()];
            k += 1;
            if i + 1 == b.len() {
                out.push_str(fill);
            } else {
                out.extend(fill.chars().filter(|c| *c != ':' && *c != '/'));
            }
        }
        out
    }

    proptest! {
        // Soundness of containment on longer patterns, with the action
        // drawn from the child's language so that every case asserts.
        #[test]
        fn covers_is_sound(
            pt in pattern_text(),
            ct in pattern_text(),
            fills in proptest::collection::vec(action_text(0), 1..4),
        ) {
            let (pp, cp) = (p(&pt), p(&ct));
            let action = action_in(&ct, &fills);
            prop_assert!(cp.matches(&action), "{ct} must match {action}");
            if pp.covers(&cp) {
                prop_assert!(pp.matches(&action), "{pt} covers {ct} but not {action}");
            }
        }

        // The flat action program decides exactly like the pattern set.
        #[test]
        fn program_allows_like_the_set(
            pts in proptest::collection::vec(pattern_text(), 0..4),
            action in action_text(0),
        ) {
            let set = ActionSet::parse(&pts).unwrap();
            let mut prog = Vec::new();
            set.write_program(&mut prog);
            prop_assert_eq!(program_allows(&prog, action.as_bytes()), set.allows(&action));
        }

        // A literal pattern covers exactly what it matches.
        #[test]
        fn literal_containment_is_matching(pt in pattern_text(), action in action_text(1)) {
            let lit = p(&action);
            prop_assert_eq!(p(&pt).covers(&lit), p(&pt).matches(&action));
        }
    }
}
