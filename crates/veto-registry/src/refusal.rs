//! The registry's refusals: an HTTP status, a stable error code and a
//! message naming what was wrong, answered as `{"error", "message"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use veto_core::wire::{ErrorBody, ErrorCode};

/// A request the registry refused: the HTTP status, the stable code and a
/// message naming what was wrong. `Display` is `code: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl Refusal {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// What was wrong, and what to do.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A refusal with `status`.
pub(crate) fn err(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

/// A 400 refusal.
pub(crate) fn bad(code: ErrorCode, message: impl Into<String>) -> Refusal {
    err(StatusCode::BAD_REQUEST, code, message)
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}
