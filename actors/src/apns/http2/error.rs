//! Errors of the HTTP/2 connection: opening it, and sending one request on it.

use std::time::Duration;

use crate::apns::{AuthError, ResponseError};

use super::state::GoAwayInfo;

/// Opening a connection failed. Nothing was sent; the caller may back off and retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration is unusable (a zero limit or duration).
    #[error("invalid connection config: {0}")]
    InvalidConfig(String),
    /// The byte stream could not be opened (DNS, TCP, simulated link).
    #[error("could not connect: {0}")]
    Io(String),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// TLS succeeded but ALPN did not select `h2`.
    #[error("server did not negotiate HTTP/2 via ALPN (negotiated: {negotiated:?})")]
    AlpnNotH2 {
        /// The protocol the server chose, if any.
        negotiated: Option<String>,
    },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(String),
    /// Connecting (stream + TLS + HTTP/2 handshake) took longer than the connect timeout.
    #[error("connect timed out after {after:?}")]
    Timeout {
        /// The connect timeout that elapsed.
        after: Duration,
    },
}

/// Sending one request failed. See [`SendError::was_sent`] for whether APNs may have
/// processed it.
///
/// An APNs rejection is not an error: it is a [`Delivery::Rejected`](crate::apns::Delivery).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No stream slot became free within `stream_wait_max`. Not sent; safe to resend.
    #[error("no free HTTP/2 stream within {waited:?}")]
    StreamWaitTimeout {
        /// How long the request waited.
        waited: Duration,
    },
    /// The server answered `RST_STREAM(REFUSED_STREAM)` on every attempt. Not processed;
    /// safe to resend.
    #[error("server refused the stream {attempts} times (REFUSED_STREAM)")]
    Refused {
        /// Attempts made on this connection.
        attempts: u32,
    },
    /// The server sent GOAWAY with a last-stream-id below this request's stream: APNs did
    /// not process it. Safe to resend on another connection.
    #[error("connection going away before the request was processed: GOAWAY {0}")]
    GoAway(GoAwayInfo),
    /// The connection was draining or closed before the request was sent. Safe to resend on
    /// another connection.
    #[error("connection not accepting requests: {0}")]
    Closed(String),
    /// The credentials could not produce an `authorization` header. Not sent.
    #[error("credentials unusable: {0}")]
    Auth(#[from] AuthError),
    /// The request cannot be expressed as HTTP/2 (an invalid path or header). Not sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No complete answer within the request timeout after the request was sent. APNs may
    /// have processed it.
    #[error("no answer within {after:?} after sending")]
    Timeout {
        /// The request timeout that elapsed.
        after: Duration,
    },
    /// The connection was lost after the request was sent (I/O error, dead peer, protocol
    /// error). APNs may have processed it.
    #[error("connection lost after sending: {0}")]
    ConnectionLost(String),
    /// The server reset the stream with an error code other than `REFUSED_STREAM`. APNs
    /// may have processed it.
    #[error("server reset the stream: {0}")]
    StreamReset(String),
    /// The answer does not follow the APNs protocol (a malformed or oversized body, an
    /// unknown reason or status). APNs did answer, so it may have processed the request.
    #[error("malformed APNs answer: {0}")]
    MalformedResponse(#[from] ResponseError),
}

impl SendError {
    /// True when the request may have reached APNs and been processed: resending it may
    /// deliver the notification twice. False when APNs certainly did not process it.
    pub fn was_sent(&self) -> bool {
        match self {
            SendError::StreamWaitTimeout { .. }
            | SendError::Refused { .. }
            | SendError::GoAway(_)
            | SendError::Closed(_)
            | SendError::Auth(_)
            | SendError::InvalidRequest(_) => false,
            SendError::Timeout { .. }
            | SendError::ConnectionLost(_)
            | SendError::StreamReset(_)
            | SendError::MalformedResponse(_) => true,
        }
    }

    /// True when resending cannot duplicate the notification (the opposite of
    /// [`was_sent`](Self::was_sent)). Whether resending is *useful* (an auth error will
    /// recur) is the caller's call.
    pub fn is_safe_to_resend(&self) -> bool {
        !self.was_sent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_and_unsent_are_told_apart() {
        assert!(
            !SendError::StreamWaitTimeout {
                waited: Duration::ZERO
            }
            .was_sent()
        );
        assert!(!SendError::Refused { attempts: 3 }.was_sent());
        assert!(!SendError::GoAway(GoAwayInfo::new(1, 0, b"")).was_sent());
        assert!(!SendError::Closed("x".into()).was_sent());
        assert!(!SendError::Auth(AuthError::TokenExhausted).was_sent());
        assert!(
            SendError::Timeout {
                after: Duration::ZERO
            }
            .was_sent()
        );
        assert!(SendError::ConnectionLost("x".into()).was_sent());
        assert!(SendError::MalformedResponse(ResponseError::UnexpectedStatus(302)).was_sent());
        assert!(SendError::Refused { attempts: 3 }.is_safe_to_resend());
    }
}
