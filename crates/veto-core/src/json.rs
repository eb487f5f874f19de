//! JSON that veto writes and cannot fail to write.

use serde::Serialize;

/// The JSON of a value veto writes (signed payloads, JWKs): plain structs
/// of strings, numbers, lists and options, with no maps keyed by
/// non-strings and no hand-written `Serialize`, so serialization cannot fail.
pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    #[expect(
        clippy::expect_used,
        reason = "serde_json fails only on non-string map keys or a failing Serialize impl; veto's payloads and JWKs have neither"
    )]
    serde_json::to_string(value).expect("veto's payloads and JWKs always serialize")
}

/// The JSON bytes of a payload to sign; see [`to_json`].
pub(crate) fn payload_bytes<T: Serialize>(payload: &T) -> Vec<u8> {
    to_json(payload).into_bytes()
}
