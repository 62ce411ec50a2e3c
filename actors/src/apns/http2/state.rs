//! The connection lifecycle as a plain state machine (sans-IO).
//!
//! ```text
//!               connected                    first answer without a
//!  Connecting ─────────────► Ready(Unconfirmed) ─── credentials error ───► Ready(Confirmed)
//!      │                       │        ▲                                   │
//!      │                       │        └───── credentials switched ────────┤
//!      │                       │                                            │
//!      │                       │ GOAWAY received / close() / handles dropped│
//!      │                       ▼                                            │
//!      │                  Draining(cause) ◄─────────────────────────────────┘
//!      │                       │  (no new streams; in-flight streams finish)
//!      │                       │ last stream done, or drain timeout
//!      ▼                       ▼
//!  Closed(reason) ◄──── from any state: I/O error, PING timeout, protocol error,
//!                       peer closed, driver dropped
//! ```
//!
//! Every event has one transition method (`on_*`). Each returns `true` when the state
//! changed; an event that does not apply to the current state is ignored (for example a
//! confirmation arriving after the connection closed). `Closed` is terminal.

use std::fmt;

use crate::apns::Reason;

/// Where a connection is in its life. See the module docs for the diagram.
///
/// ```
/// use herald_actors::apns::http2::{CloseReason, Confirmation, ConnectionState, GoAwayInfo};
///
/// let mut state = ConnectionState::Connecting;
/// assert!(state.on_connected(Confirmation::Unconfirmed));
/// assert_eq!(state.stream_limit(1000, 500), 1); // one stream until confirmed
/// assert!(state.on_confirmation(Confirmation::Confirmed));
/// assert_eq!(state.stream_limit(1000, 500), 500);
/// assert!(state.on_go_away(GoAwayInfo::new(7, 0, br#"{"reason":"Shutdown"}"#)));
/// assert!(!state.accepts_new_streams());
/// assert!(state.on_closed(CloseReason::GoAway(state.go_away().unwrap().clone())));
/// assert!(state.is_closed());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// TCP, TLS and the HTTP/2 handshake are under way.
    Connecting,
    /// Open for new requests.
    Ready(Confirmation),
    /// No new requests; streams already in flight finish.
    Draining(DrainCause),
    /// The connection is gone. Terminal.
    Closed(CloseReason),
}

/// Whether APNs has accepted this connection's credentials yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Confirmation {
    /// Not yet accepted: one stream at a time (Apple's rule for token auth).
    Unconfirmed,
    /// Accepted: as many streams as the server and the config allow.
    Confirmed,
}

/// Why a connection stopped taking new requests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainCause {
    /// The server sent GOAWAY.
    GoAway(GoAwayInfo),
    /// The owner called `close()`, or dropped every handle.
    CloseRequested,
}

/// Why a connection closed: the close report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// Closed on request (`close()` or every handle dropped) after in-flight streams finished.
    #[error("closed on request")]
    Requested,
    /// The server sent GOAWAY (and the connection then drained and closed).
    #[error("server sent GOAWAY: {0}")]
    GoAway(GoAwayInfo),
    /// A keepalive PING went unanswered: the peer is dead.
    #[error("PING not answered in time: peer presumed dead")]
    PingTimeout,
    /// The peer closed the connection without GOAWAY.
    #[error("peer closed the connection")]
    PeerClosed,
    /// An I/O error on the byte stream.
    #[error("I/O error: {0}")]
    Io(String),
    /// The peer broke the HTTP/2 protocol (the client sent GOAWAY with an error code).
    #[error("HTTP/2 protocol error: {0}")]
    Protocol(String),
    /// In-flight streams did not finish within the drain bound after GOAWAY or `close()`.
    #[error("in-flight streams did not finish while draining")]
    DrainTimeout,
    /// The driver was dropped (or its task aborted) before the connection closed.
    #[error("connection driver dropped")]
    DriverDropped,
}

/// A GOAWAY frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAwayInfo {
    /// Streams with ids up to this one may have been processed; higher ones were not.
    pub last_stream_id: u32,
    /// The HTTP/2 error code (0 = `NO_ERROR`, a graceful shutdown).
    pub error_code: u32,
    /// The debug data, as text (lossy UTF-8, truncated to `limits::GOAWAY_DEBUG_BYTES_MAX`).
    pub debug_data: String,
    /// The `reason` member when the debug data is APNs' JSON `{"reason": "..."}`.
    pub reason: Option<String>,
}

impl GoAwayInfo {
    /// Build from the frame fields; parses `{"reason": ...}` out of the debug data.
    pub fn new(last_stream_id: u32, error_code: u32, debug_data: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            reason: String,
        }
        let reason = serde_json::from_slice::<Body>(debug_data)
            .ok()
            .map(|b| b.reason);
        GoAwayInfo {
            last_stream_id,
            error_code,
            debug_data: String::from_utf8_lossy(debug_data).into_owned(),
            reason,
        }
    }

    /// The HTTP/2 name of the error code (`NO_ERROR`, `PROTOCOL_ERROR`, ...).
    pub fn error_name(&self) -> String {
        format!("{:?}", h2::Reason::from(self.error_code))
    }

    /// The APNs reason from the debug data, when it is one APNs documents (e.g. `Shutdown`).
    pub fn apns_reason(&self) -> Option<Reason> {
        self.reason.as_deref().and_then(|r| r.parse().ok())
    }

    /// True when `stream_id` was certainly not processed by the server.
    pub fn was_unprocessed(&self, stream_id: u32) -> bool {
        stream_id > self.last_stream_id
    }

    /// Fold a later GOAWAY into this one: the last-stream-id only goes down; a later error
    /// code or non-empty debug data replaces the earlier one.
    pub fn merge(&mut self, later: GoAwayInfo) {
        self.last_stream_id = self.last_stream_id.min(later.last_stream_id);
        if later.error_code != 0 {
            self.error_code = later.error_code;
        }
        if !later.debug_data.is_empty() {
            self.debug_data = later.debug_data;
            self.reason = later.reason;
        }
    }
}

impl fmt::Display for GoAwayInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (last stream {})",
            self.error_name(),
            self.last_stream_id
        )?;
        match &self.reason {
            Some(reason) => write!(f, ", reason {reason}"),
            None if !self.debug_data.is_empty() => write!(f, ", debug data {:?}", self.debug_data),
            None => Ok(()),
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionState::Connecting => f.write_str("connecting"),
            ConnectionState::Ready(Confirmation::Unconfirmed) => {
                f.write_str("ready (credentials unconfirmed)")
            }
            ConnectionState::Ready(Confirmation::Confirmed) => f.write_str("ready"),
            ConnectionState::Draining(DrainCause::GoAway(info)) => {
                write!(f, "draining after GOAWAY {info}")
            }
            ConnectionState::Draining(DrainCause::CloseRequested) => {
                f.write_str("draining after close request")
            }
            ConnectionState::Closed(reason) => write!(f, "closed: {reason}"),
        }
    }
}

impl ConnectionState {
    /// Event: the handshake finished. `Connecting → Ready(confirmation)`.
    pub fn on_connected(&mut self, confirmation: Confirmation) -> bool {
        match self {
            ConnectionState::Connecting => {
                *self = ConnectionState::Ready(confirmation);
                true
            }
            _ => false,
        }
    }

    /// Event: the credentials' confirmation changed (accepted, or switched to a new token).
    /// `Ready(_) → Ready(confirmation)`.
    pub fn on_confirmation(&mut self, confirmation: Confirmation) -> bool {
        match self {
            ConnectionState::Ready(current) if *current != confirmation => {
                *current = confirmation;
                true
            }
            _ => false,
        }
    }

    /// Event: the server sent GOAWAY. `Ready | Draining → Draining(GoAway)`; a second
    /// GOAWAY is merged into the first.
    pub fn on_go_away(&mut self, info: GoAwayInfo) -> bool {
        match self {
            ConnectionState::Connecting
            | ConnectionState::Ready(_)
            | ConnectionState::Draining(DrainCause::CloseRequested) => {
                *self = ConnectionState::Draining(DrainCause::GoAway(info));
                true
            }
            ConnectionState::Draining(DrainCause::GoAway(current)) => {
                let before = current.clone();
                current.merge(info);
                *current != before
            }
            ConnectionState::Closed(_) => false,
        }
    }

    /// Event: the owner asked to close (or dropped every handle).
    /// `Connecting | Ready → Draining(CloseRequested)`.
    pub fn on_close_requested(&mut self) -> bool {
        match self {
            ConnectionState::Connecting | ConnectionState::Ready(_) => {
                *self = ConnectionState::Draining(DrainCause::CloseRequested);
                true
            }
            _ => false,
        }
    }

    /// Event: the connection ended. `any → Closed(reason)`; `Closed` stays as it was.
    pub fn on_closed(&mut self, reason: CloseReason) -> bool {
        match self {
            ConnectionState::Closed(_) => false,
            _ => {
                *self = ConnectionState::Closed(reason);
                true
            }
        }
    }

    /// True when a new request may open a stream.
    pub fn accepts_new_streams(&self) -> bool {
        matches!(self, ConnectionState::Ready(_))
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, ConnectionState::Closed(_))
    }

    /// The GOAWAY received, if any.
    pub fn go_away(&self) -> Option<&GoAwayInfo> {
        match self {
            ConnectionState::Draining(DrainCause::GoAway(info))
            | ConnectionState::Closed(CloseReason::GoAway(info)) => Some(info),
            _ => None,
        }
    }

    /// How many streams may be in flight now: `min(server_streams_max, streams_max)` when
    /// confirmed, one while unconfirmed, zero when not accepting new streams.
    pub fn stream_limit(&self, server_streams_max: usize, streams_max: usize) -> usize {
        match self {
            ConnectionState::Ready(Confirmation::Confirmed) => server_streams_max.min(streams_max),
            ConnectionState::Ready(Confirmation::Unconfirmed) => {
                server_streams_max.min(streams_max).min(1)
            }
            _ => 0,
        }
    }
}

impl From<bool> for Confirmation {
    fn from(confirmed: bool) -> Self {
        if confirmed {
            Confirmation::Confirmed
        } else {
            Confirmation::Unconfirmed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goaway(last: u32) -> GoAwayInfo {
        GoAwayInfo::new(last, 0, br#"{"reason":"Shutdown"}"#)
    }

    #[test]
    fn happy_path() {
        let mut s = ConnectionState::Connecting;
        assert_eq!(s.stream_limit(10, 5), 0);
        assert!(s.on_connected(Confirmation::Unconfirmed));
        assert!(!s.on_connected(Confirmation::Confirmed));
        assert_eq!(s.stream_limit(10, 5), 1);
        assert!(s.on_confirmation(Confirmation::Confirmed));
        assert!(!s.on_confirmation(Confirmation::Confirmed));
        assert_eq!(s.stream_limit(10, 5), 5);
        assert_eq!(s.stream_limit(3, 5), 3);
        assert_eq!(s.stream_limit(0, 5), 0);
        assert!(s.on_close_requested());
        assert!(!s.accepts_new_streams());
        assert_eq!(s.stream_limit(10, 5), 0);
        assert!(s.on_closed(CloseReason::Requested));
        assert!(!s.on_closed(CloseReason::PingTimeout));
        assert_eq!(s, ConnectionState::Closed(CloseReason::Requested));
        assert!(!s.on_go_away(goaway(1)));
        assert!(!s.on_confirmation(Confirmation::Unconfirmed));
    }

    #[test]
    fn go_away_drains_and_merges() {
        let mut s = ConnectionState::Ready(Confirmation::Confirmed);
        assert!(s.on_go_away(GoAwayInfo::new(u32::MAX >> 1, 0, b"")));
        assert!(s.on_go_away(goaway(7)));
        let info = s.go_away().unwrap().clone();
        assert_eq!(info.last_stream_id, 7);
        assert_eq!(info.apns_reason(), Some(Reason::Shutdown));
        assert!(info.was_unprocessed(9));
        assert!(!info.was_unprocessed(7));
        assert!(!s.on_close_requested());
        assert_eq!(info.error_name(), "NO_ERROR");
        assert!(info.to_string().contains("Shutdown"), "{info}");
    }

    #[test]
    fn non_json_debug_data_is_kept_as_text() {
        let info = GoAwayInfo::new(1, 2, b"bye");
        assert_eq!(info.reason, None);
        assert_eq!(info.debug_data, "bye");
        assert_eq!(info.error_name(), "INTERNAL_ERROR");
    }
}
