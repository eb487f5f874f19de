//! Gateway reports (`veto-report+jwt`, DESIGN 5): what an authorizer has
//! applied, signed by the gateway's own enrolled Ed25519 key, so the
//! registry can show that a revocation is in force everywhere.
//!
//! Pure: making and verifying a report; enrolment, ordering and storage
//! are the registry's.

use serde::{Deserialize, Serialize};

use crate::jws::{self, JwsError, Typ, UnverifiedJws};
use crate::keys::{PublicKey, SigningKey};

/// Largest report accepted, in bytes of compact JWS.
pub const MAX_REPORT_BYTES: usize = 8 << 10;
/// Longest gateway name, in bytes (`[A-Za-z0-9._-]`).
pub const MAX_NAME_BYTES: usize = 64;
/// Longest `error` text kept in a report, in bytes; longer ones are cut
/// (at a character boundary) by [`ReportPayload::new_error`].
pub const MAX_ERROR_BYTES: usize = 512;

/// A gateway's report. Times are Unix seconds, as in JWT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportPayload {
    /// The registry's `iss` the report is for (its audience).
    pub aud: String,
    /// The gateway's name (`[A-Za-z0-9._-]`, at most [`MAX_NAME_BYTES`]).
    pub name: String,
    /// Signed at.
    pub iat: u64,
    /// Orders this gateway's reports, across its restarts too: the Unix
    /// time in milliseconds when it was made, or one more than the last
    /// one, whichever is larger. With `iat`, an old report replayed is
    /// refused.
    pub seq: u64,
    /// The applied revocation state's version.
    pub ver: u64,
    /// Its head (base64url SHA-256).
    pub head: String,
    /// Whether the state is fresh (DESIGN 4).
    pub fresh: bool,
    /// Seconds since the newest attestation was signed, if one was seen.
    pub staleness_s: Option<u64>,
    /// Until when (Unix seconds) its state stays fresh without news: past
    /// it, a fail-closed gateway denies every request. `None` before it
    /// has a signed state.
    pub fresh_until: Option<u64>,
    /// The push transport: `sse`, `nats` or `off`.
    pub push: String,
    /// Whether the push subscription is connected.
    pub push_connected: bool,
    /// The staleness policy: `fail-closed` or `fail-open`.
    pub policy: String,
    /// The last sync error, if the last attempt failed.
    pub error: Option<String>,
    /// Seconds between reports when nothing changes: the registry counts
    /// a gateway lost after several such intervals without one.
    pub interval_s: u64,
    /// The gateway's veto version.
    pub veto: String,
}

impl ReportPayload {
    /// `error` cut to [`MAX_ERROR_BYTES`] at a character boundary.
    pub fn new_error(error: &str) -> String {
        let mut end = error.len().min(MAX_ERROR_BYTES);
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error[..end].to_owned()
    }
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The JWS is malformed, of another `typ`, too large, or its
    /// signature does not verify with the enrolled key.
    #[error("report: {0}")]
    Jws(#[from] JwsError),
    /// The header names no key (`kid`).
    #[error("report: the header names no key (`kid`)")]
    NoKid,
    /// The payload is not a report.
    #[error("report payload: {0}")]
    Payload(String),
    /// It is for another registry.
    #[error("report is for `{found}`, not this registry (`{expected}`)")]
    Audience {
        /// This registry's `iss`.
        expected: String,
        /// The report's `aud`.
        found: String,
    },
    /// Signed too far from now (`iat` beyond the allowance either way).
    #[error("report signed at {iat}, {now} now: outside the {skew} s allowance")]
    Time {
        /// The report's `iat`.
        iat: u64,
        /// Now.
        now: u64,
        /// The allowance.
        skew: u64,
    },
    /// A field is out of its range.
    #[error("report: {0}")]
    Field(&'static str),
}

/// Signs `payload` with the gateway's key.
pub fn sign(key: &SigningKey, payload: &ReportPayload) -> String {
    // Serializing a struct of strings, integers and booleans cannot fail.
    let bytes = serde_json::to_vec(payload).unwrap_or_default();
    jws::sign(Typ::Report, key, &bytes)
}

/// The key id (`kid`) a report's header names, read without verifying:
/// which enrolled key to verify it with.
///
/// # Errors
///
/// [`ReportError::Jws`] when it is not a compact JWS under the size cap,
/// [`ReportError::NoKid`] without a `kid`.
pub fn kid(token: &str) -> Result<String, ReportError> {
    let jws = UnverifiedJws::parse(token, MAX_REPORT_BYTES)?;
    jws.header().kid.clone().ok_or(ReportError::NoKid)
}

/// Verifies a report with the gateway's enrolled key: `typ`, signature,
/// audience `aud`, `iat` within `skew` seconds of `now` (either way: a
/// report is news, not history), and the fields' ranges.
///
/// # Errors
///
/// Every [`ReportError`].
pub fn verify(
    token: &str,
    key: &PublicKey,
    aud: &str,
    now: u64,
    skew: u64,
) -> Result<ReportPayload, ReportError> {
    let jws = UnverifiedJws::parse(token, MAX_REPORT_BYTES)?;
    jws.expect_typ(Typ::Report)?;
    jws.verify_with(key)?;
    let bytes = jws.payload_unverified()?;
    let p: ReportPayload =
        serde_json::from_slice(&bytes).map_err(|e| ReportError::Payload(e.to_string()))?;
    if p.aud != aud {
        return Err(ReportError::Audience {
            expected: aud.into(),
            found: p.aud,
        });
    }
    if p.iat > now.saturating_add(skew) || p.iat < now.saturating_sub(skew) {
        return Err(ReportError::Time {
            iat: p.iat,
            now,
            skew,
        });
    }
    check_name(&p.name).map_err(|_| ReportError::Field("`name` is not a gateway name"))?;
    if p.error.as_ref().is_some_and(|e| e.len() > MAX_ERROR_BYTES) {
        return Err(ReportError::Field("`error` is too long"));
    }
    if !matches!(p.push.as_str(), "sse" | "nats" | "off") {
        return Err(ReportError::Field("`push` is not sse, nats or off"));
    }
    if !matches!(p.policy.as_str(), "fail-closed" | "fail-open") {
        return Err(ReportError::Field(
            "`policy` is not fail-closed or fail-open",
        ));
    }
    if p.interval_s == 0 || p.interval_s > 3600 {
        return Err(ReportError::Field("`interval_s` is not 1 to 3600"));
    }
    if p.head.len() > 64 || p.veto.len() > 64 {
        return Err(ReportError::Field("`head` or `veto` is too long"));
    }
    Ok(p)
}

/// Checks a gateway name: 1 to [`MAX_NAME_BYTES`] bytes of
/// `[A-Za-z0-9._-]`.
///
/// # Errors
///
/// [`NameError`].
pub fn check_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError)
    }
}

/// A gateway name that breaks the rule of [`check_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a gateway name is 1 to 64 characters of A-Z a-z 0-9 . _ -")]
pub struct NameError;

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(now: u64) -> ReportPayload {
        ReportPayload {
            aud: "veto".into(),
            name: "gw-1".into(),
            iat: now,
            seq: 1,
            ver: 7,
            head: "h".into(),
            fresh: true,
            staleness_s: Some(2),
            fresh_until: Some(now + 298),
            push: "sse".into(),
            push_connected: true,
            policy: "fail-closed".into(),
            error: None,
            interval_s: 10,
            veto: "0.1.0".into(),
        }
    }

    #[test]
    fn a_report_verifies_only_with_its_key_for_its_registry_now() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let now = 1_800_000_000;
        let token = sign(&key, &payload(now));
        assert_eq!(kid(&token).unwrap(), key.kid());
        assert_eq!(
            verify(&token, key.public(), "veto", now, 30).unwrap(),
            payload(now)
        );
        assert!(matches!(
            verify(&token, other.public(), "veto", now, 30),
            Err(ReportError::Jws(_))
        ));
        assert!(matches!(
            verify(&token, key.public(), "other", now, 30),
            Err(ReportError::Audience { .. })
        ));
        for late in [now + 31, now - 31] {
            assert!(matches!(
                verify(&token, key.public(), "veto", late, 30),
                Err(ReportError::Time { .. })
            ));
        }
        // Another object signed by the same key is not a report.
        let delta = jws::sign(
            Typ::Delta,
            &key,
            &serde_json::to_vec(&payload(now)).unwrap(),
        );
        assert!(verify(&delta, key.public(), "veto", now, 30).is_err());
    }

    #[test]
    fn fields_out_of_range_are_refused() {
        let key = SigningKey::generate().unwrap();
        let now = 1_800_000_000;
        let cases: [fn(&mut ReportPayload); 6] = [
            |p| p.name = "a b".into(),
            |p| p.name = "x".repeat(65),
            |p| p.push = "carrier-pigeon".into(),
            |p| p.policy = "fail-sideways".into(),
            |p| p.interval_s = 0,
            |p| p.error = Some("e".repeat(513)),
        ];
        for edit in cases {
            let mut p = payload(now);
            edit(&mut p);
            let token = sign(&key, &p);
            assert!(
                matches!(
                    verify(&token, key.public(), "veto", now, 30),
                    Err(ReportError::Field(_))
                ),
                "{p:?}"
            );
        }
        assert_eq!(ReportPayload::new_error(&"é".repeat(300)).len(), 512);
    }
}
