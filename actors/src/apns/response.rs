//! Turning an APNs answer into a [`Delivery`]: a rejection is a value, not an error.

use bytes::Bytes;
use serde::Deserialize;

use crate::apns::Reason;
use crate::seams::Timestamp;

/// What APNs did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 200: APNs accepted the notification for delivery.
    Accepted {
        /// The `apns-id` APNs echoed or assigned.
        apns_id: Option<String>,
    },
    /// APNs refused the notification; see [`Rejection::reason`].
    Rejected(Rejection),
}

/// An APNs refusal: status, reason and, for 410, when the token stopped being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status.
    pub status: u16,
    /// The reason from the body.
    pub reason: Reason,
    /// For 410: the last time APNs confirmed the token was valid (Apple's milliseconds).
    pub timestamp: Option<Timestamp>,
    /// The `apns-id` from the response headers.
    pub apns_id: Option<String>,
}

/// An answer that does not follow the APNs protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// An error status whose body is not the documented JSON object.
    #[error("APNs answered {status} with a body that is not {{\"reason\": ...}}: {detail}")]
    MalformedBody {
        /// The HTTP status.
        status: u16,
        /// What was wrong.
        detail: String,
    },
    /// A reason string APNs does not document.
    #[error("APNs answered {status} with an unknown reason {reason:?}")]
    UnknownReason {
        /// The HTTP status.
        status: u16,
        /// The reason as sent.
        reason: String,
    },
    /// A status code APNs does not use.
    #[error("APNs answered with unexpected status {0}")]
    UnexpectedStatus(u16),
}

#[derive(Deserialize)]
struct ErrorBody {
    reason: String,
    #[serde(default)]
    timestamp: Option<u64>,
}

/// Parse an APNs answer: `status`, the `apns-id` header and the (possibly empty) body.
///
/// ```
/// use herald_actors::apns::{parse_response, Delivery, Reason};
///
/// let body = br#"{"reason":"Unregistered","timestamp":1700000000123}"#;
/// match parse_response(410, None, body).unwrap() {
///     Delivery::Rejected(r) => {
///         assert_eq!(r.reason, Reason::Unregistered);
///         assert_eq!(r.timestamp.unwrap().as_millis(), 1_700_000_000_123);
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
pub fn parse_response(
    status: u16,
    apns_id: Option<String>,
    body: &[u8],
) -> Result<Delivery, ResponseError> {
    if status == 200 {
        return Ok(Delivery::Accepted { apns_id });
    }
    if !matches!(status, 400 | 403 | 404 | 405 | 410 | 413 | 429 | 500 | 503) {
        return Err(ResponseError::UnexpectedStatus(status));
    }
    let parsed: ErrorBody =
        serde_json::from_slice(body).map_err(|e| ResponseError::MalformedBody {
            status,
            detail: e.to_string(),
        })?;
    let reason: Reason = parsed
        .reason
        .parse()
        .map_err(|_| ResponseError::UnknownReason {
            status,
            reason: parsed.reason.clone(),
        })?;
    Ok(Delivery::Rejected(Rejection {
        status,
        reason,
        timestamp: parsed.timestamp.map(Timestamp::from_millis),
        apns_id,
    }))
}

/// Serialize an error body the way APNs does (used by the emulator and tests).
pub fn error_body(reason: Reason, timestamp: Option<Timestamp>) -> Bytes {
    let value = match timestamp {
        Some(t) => serde_json::json!({ "reason": reason.as_str(), "timestamp": t.as_millis() }),
        None => serde_json::json!({ "reason": reason.as_str() }),
    };
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips() {
        for reason in Reason::ALL {
            let ts = (reason.status() == 410).then(|| Timestamp::from_millis(42));
            let body = error_body(reason, ts);
            let got = parse_response(reason.status(), Some("id".into()), &body).unwrap();
            assert_eq!(
                got,
                Delivery::Rejected(Rejection {
                    status: reason.status(),
                    reason,
                    timestamp: ts,
                    apns_id: Some("id".into()),
                })
            );
        }
    }

    #[test]
    fn malformed_answers_are_typed_errors() {
        assert!(matches!(
            parse_response(400, None, b"not json"),
            Err(ResponseError::MalformedBody { status: 400, .. })
        ));
        assert!(matches!(
            parse_response(400, None, b""),
            Err(ResponseError::MalformedBody { .. })
        ));
        assert!(matches!(
            parse_response(400, None, br#"{"reason":"Whatever"}"#),
            Err(ResponseError::UnknownReason { .. })
        ));
        assert_eq!(
            parse_response(302, None, b""),
            Err(ResponseError::UnexpectedStatus(302))
        );
        assert_eq!(
            parse_response(200, None, b"ignored"),
            Ok(Delivery::Accepted { apns_id: None })
        );
    }
}
