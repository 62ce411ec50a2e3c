//! What an HTTP/2 connection needs from its credentials.
//!
//! A connection authenticates either with a client certificate (in the TLS handshake,
//! nothing per request) or with provider tokens (an `authorization: bearer <JWT>` header
//! on every request, under the per-connection switching rule). The connection sees both
//! through [`ConnectionAuth`].

use std::fmt;

use http::HeaderValue;

use crate::apns::Reason;
use crate::seams::Timestamp;

/// Per-connection credentials state. One value per connection: one team per connection.
pub trait ConnectionAuth: Send + fmt::Debug + 'static {
    /// The team this connection belongs to.
    fn team_id(&self) -> &str;

    /// The `authorization` header for the next request sent at `now`, or `None` when the
    /// connection authenticates by certificate.
    fn authorization(&mut self, now: Timestamp) -> Result<Option<HeaderValue>, AuthError>;

    /// True once APNs has accepted these credentials on this connection. Until then a
    /// token-auth connection keeps a single stream open.
    fn is_confirmed(&self) -> bool;

    /// APNs answered a request sent with the current credentials without a credentials
    /// error (any status but 403 and `TooManyProviderTokenUpdates`).
    fn confirm(&mut self);

    /// APNs refused the credentials with `reason` (a 403, or 429 `TooManyProviderTokenUpdates`).
    fn rejected(&mut self, reason: Reason, now: Timestamp);
}

/// Credentials that cannot produce what a request needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The signing key could not be read or used.
    #[error("signing key unusable: {0}")]
    Key(String),
    /// A key id or team id is not 10 alphanumeric characters.
    #[error("invalid {field}: {value:?} (expected 10 alphanumeric characters)")]
    InvalidId {
        /// Which identifier.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// The client certificate or its key could not be read.
    #[error("certificate unusable: {0}")]
    Certificate(String),
    /// The connection's token is too old to use and may not be switched yet: the connection
    /// must be replaced.
    #[error("provider token on this connection is too old; open a new connection")]
    TokenExhausted,
    /// A provider token's text is not an ES256 JWT with `kid`, `iss` and `iat`.
    #[error("provider token malformed: {0}")]
    InvalidToken(String),
    /// A provider token was offered to the minter of another key or team.
    #[error("provider token belongs to another key or team")]
    TokenKeyMismatch,
    /// The minting interval is outside 20–40 minutes.
    #[error("provider token interval {minutes} min is outside 20..=40 min")]
    InvalidInterval {
        /// The interval asked for, in minutes.
        minutes: u64,
    },
}

/// Certificate authentication: the TLS handshake carries the identity, requests carry nothing.
#[derive(Debug, Clone)]
pub struct CertificateAuth {
    team_id: String,
}

impl CertificateAuth {
    /// Certificate auth for `team_id` (the team the certificate was issued to).
    pub fn new(team_id: impl Into<String>) -> Self {
        CertificateAuth {
            team_id: team_id.into(),
        }
    }
}

impl ConnectionAuth for CertificateAuth {
    fn team_id(&self) -> &str {
        &self.team_id
    }

    fn authorization(&mut self, _now: Timestamp) -> Result<Option<HeaderValue>, AuthError> {
        Ok(None)
    }

    fn is_confirmed(&self) -> bool {
        true
    }

    fn confirm(&mut self) {}

    fn rejected(&mut self, _reason: Reason, _now: Timestamp) {}
}
