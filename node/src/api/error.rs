//! The API's errors: one JSON shape, `{"error": {"code", "message", "field"?}}`, a precise
//! HTTP status per code, and `Retry-After` on 429.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_actors::PushError;
use herald_actors::apns::{NotificationError, PayloadError};
use serde::Serialize;

use super::limits;

/// Every error code the API answers with, and its HTTP status. `docs/openapi.yaml` documents
/// each one (a test checks it).
pub const ERROR_CODES: &[(&str, u16)] = &[
    ("malformed_json", 400),
    ("invalid_field", 400),
    ("invalid_query", 400),
    ("bad_device_token", 400),
    ("invalid_topic", 400),
    ("invalid_push_type", 400),
    ("invalid_payload", 400),
    ("batch_too_large", 400),
    ("unsupported_platform", 400),
    ("missing_api_key", 401),
    ("invalid_api_key", 401),
    ("insufficient_scope", 403),
    ("forbidden_tenant", 403),
    ("not_found", 404),
    ("unknown_tenant", 404),
    ("push_not_found", 404),
    ("device_not_found", 404),
    ("member_not_found", 404),
    ("method_not_allowed", 405),
    ("tenant_exists", 409),
    ("limit_reached", 409),
    ("in_progress", 409),
    ("membership_conflict", 409),
    ("body_too_large", 413),
    ("overloaded", 429),
    ("internal", 500),
    ("unavailable", 503),
];

/// An error answer. Its message never contains a secret (key, JWT or `.p8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error with `code` (one of [`ERROR_CODES`]) and a message.
    ///
    /// # Panics
    /// If `code` is not in [`ERROR_CODES`] (a programmer error).
    #[track_caller]
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        assert!(
            ERROR_CODES.iter().any(|(c, _)| *c == code),
            "undocumented error code {code}"
        );
        ApiError {
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// The same error naming the request field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// `invalid_field` for `field`.
    #[track_caller]
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new("invalid_field", message).with_field(field)
    }

    /// 429 `overloaded` with `Retry-After`.
    pub fn overloaded(retry_after: Duration) -> Self {
        let mut e = ApiError::new("overloaded", "overloaded; retry later");
        e.retry_after = Some(retry_after.max(limits::RETRY_AFTER_MIN));
        e
    }

    /// The error code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The field at fault, if one is named.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        let code = ERROR_CODES
            .iter()
            .find(|(c, _)| *c == self.code)
            .map_or(500, |(_, s)| *s);
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON body of a per-item result (batch answers).
    pub(crate) fn body(&self) -> Body<'_> {
        Body {
            code: self.code,
            message: &self.message,
            field: self.field.as_deref(),
        }
    }

    /// The error for a push the engine refused.
    pub fn from_push(e: &PushError) -> Self {
        match e {
            PushError::UnknownTenant(t) => {
                ApiError::new("unknown_tenant", format!("unknown tenant {t:?}"))
            }
            PushError::Overloaded { retry_after } => ApiError::overloaded(*retry_after),
            PushError::BatchTooLarge(n) => ApiError::new(
                "batch_too_large",
                format!("{n} pushes; at most {} per batch", limits::PUSH_BATCH_MAX),
            ),
            PushError::ShuttingDown => ApiError::new("unavailable", "the node is shutting down"),
            PushError::Stopped(_) => ApiError::new("unavailable", "the engine stopped"),
            PushError::Unavailable(detail) => ApiError::new(
                "unavailable",
                format!(
                    "{detail}; the push may or may not have been accepted: retry with the same \
                     Idempotency-Key"
                ),
            ),
            PushError::Wal(_) => {
                ApiError::new("unavailable", "the write-ahead log failed; not accepted")
            }
            PushError::InProgress { retry_after, .. } => {
                let mut e = ApiError::new(
                    "in_progress",
                    "an earlier request with this push id is still being accepted: retry \
                     with the same Idempotency-Key after Retry-After",
                );
                e.retry_after = Some((*retry_after).max(limits::RETRY_AFTER_MIN));
                e
            }
            other => ApiError::new("internal", other.to_string()),
        }
    }

    /// The error for a notification that does not validate, naming the field at fault.
    pub fn from_notification(e: &NotificationError) -> Self {
        match e {
            NotificationError::MissingPayload => {
                ApiError::new("invalid_payload", e.to_string()).with_field("payload")
            }
            NotificationError::Payload(p) => {
                let field = match p {
                    PayloadError::Empty
                    | PayloadError::TooLarge { .. }
                    | PayloadError::NotAnObject(_) => "payload",
                    _ => "payload.aps",
                };
                ApiError::new("invalid_payload", e.to_string()).with_field(field)
            }
            NotificationError::TopicMismatch { .. } => {
                ApiError::new("invalid_topic", e.to_string()).with_field("topic")
            }
            NotificationError::PriorityNotAllowed { .. } => {
                ApiError::invalid("priority", e.to_string())
            }
            NotificationError::BadDeviceToken(_) => {
                ApiError::new("bad_device_token", e.to_string()).with_field("device_token")
            }
            other => ApiError::invalid("notification", other.to_string()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(Envelope { error: self.body() })).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_retry_after() {
        let e = ApiError::overloaded(Duration::from_millis(1500));
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        let r = e.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let e = ApiError::overloaded(Duration::from_millis(1));
        assert_eq!(e.into_response().headers()[header::RETRY_AFTER], "1");
        for (code, status) in ERROR_CODES {
            assert_eq!(ApiError::new(code, "x").status().as_u16(), *status);
        }
    }

    #[test]
    #[should_panic(expected = "undocumented error code")]
    fn undocumented_codes_are_a_programmer_error() {
        let _ = ApiError::new("nope", "x");
    }
}
