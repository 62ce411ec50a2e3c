//! Every rejection reason APNs returns, its HTTP status, and what Herald does about it.
//!
//! The vocabulary is shared by the client (which turns answers into outcomes) and the
//! emulator (which produces them), so both spell every reason exactly as Apple does.

use std::fmt;
use std::str::FromStr;

/// A reason string from an APNs error response body (`{"reason": "..."}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// 400: the collapse identifier exceeds the maximum allowed size.
    BadCollapseId,
    /// 400: the specified device token is invalid (or belongs to the other environment).
    BadDeviceToken,
    /// 400: the `apns-expiration` value is invalid.
    BadExpirationDate,
    /// 400: the `apns-id` value is invalid.
    BadMessageId,
    /// 400: the `apns-priority` value is invalid.
    BadPriority,
    /// 400: the `apns-topic` value is invalid.
    BadTopic,
    /// 400: the device token does not match the specified topic.
    DeviceTokenNotForTopic,
    /// 400: one or more headers were repeated.
    DuplicateHeaders,
    /// 400: idle time out; reconnect and retry.
    IdleTimeout,
    /// 400: the `apns-push-type` value is invalid.
    InvalidPushType,
    /// 400: the device token is not specified in the request path.
    MissingDeviceToken,
    /// 400: the `apns-topic` header is missing but required.
    MissingTopic,
    /// 400: the message payload is empty.
    PayloadEmpty,
    /// 400: pushing to this topic is not allowed.
    TopicDisallowed,
    /// 403: the certificate is invalid.
    BadCertificate,
    /// 403: the client certificate is for the wrong environment.
    BadCertificateEnvironment,
    /// 403: the provider token is stale and a new token should be generated.
    ExpiredProviderToken,
    /// 403: the specified action is not allowed.
    Forbidden,
    /// 403: the provider token is not valid, or its signature cannot be verified.
    InvalidProviderToken,
    /// 403: no provider certificate was used and no `authorization` header was supplied.
    MissingProviderToken,
    /// 403: the key id in the provider token is unrelated to this connection.
    UnrelatedKeyIdInToken,
    /// 403: the key id in the provider token does not match the environment.
    BadEnvironmentKeyIdInToken,
    /// 404: the request path was invalid.
    BadPath,
    /// 405: the request method was not `POST`.
    MethodNotAllowed,
    /// 410: the device token is no longer active for the topic.
    Unregistered,
    /// 410: the device token has expired.
    ExpiredToken,
    /// 413: the payload was too large.
    PayloadTooLarge,
    /// 429: the provider changed its authentication token too often.
    TooManyProviderTokenUpdates,
    /// 429: too many requests were made consecutively to the same device token.
    TooManyRequests,
    /// 500: an internal server error occurred.
    InternalServerError,
    /// 503: the service is unavailable.
    ServiceUnavailable,
    /// 503: the APNs server is shutting down.
    Shutdown,
}

/// What Herald does with a rejection: the class of handling each [`Reason`] maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Disposition {
    /// A request bug: fail the push permanently with the reason.
    Permanent,
    /// The device token is invalid (bad format or wrong environment): fail and report it.
    TokenInvalid,
    /// The device token is not valid for this topic: fail and report it.
    TokenNotForTopic,
    /// The device token is no longer active: invalidate it at Apple's timestamp.
    Unregistered,
    /// Credentials are wrong: open the tenant's breaker, keep pushes queued.
    Credentials,
    /// The provider token expired: mint a new one, open a new connection, retry.
    RefreshToken,
    /// The connection is unusable (idle time out, unrelated key, shutdown): reconnect and retry.
    Reconnect,
    /// This device is pushed too often: delay, then retry.
    DeviceThrottled,
    /// The provider token changed too often on this connection: back off, keep the token, retry.
    TokenUpdateBackoff,
    /// APNs failed: retry with backoff.
    RetryLater,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 32] = [
        Reason::BadCollapseId,
        Reason::BadDeviceToken,
        Reason::BadExpirationDate,
        Reason::BadMessageId,
        Reason::BadPriority,
        Reason::BadTopic,
        Reason::DeviceTokenNotForTopic,
        Reason::DuplicateHeaders,
        Reason::IdleTimeout,
        Reason::InvalidPushType,
        Reason::MissingDeviceToken,
        Reason::MissingTopic,
        Reason::PayloadEmpty,
        Reason::TopicDisallowed,
        Reason::BadCertificate,
        Reason::BadCertificateEnvironment,
        Reason::ExpiredProviderToken,
        Reason::Forbidden,
        Reason::InvalidProviderToken,
        Reason::MissingProviderToken,
        Reason::UnrelatedKeyIdInToken,
        Reason::BadEnvironmentKeyIdInToken,
        Reason::BadPath,
        Reason::MethodNotAllowed,
        Reason::Unregistered,
        Reason::ExpiredToken,
        Reason::PayloadTooLarge,
        Reason::TooManyProviderTokenUpdates,
        Reason::TooManyRequests,
        Reason::InternalServerError,
        Reason::ServiceUnavailable,
        Reason::Shutdown,
    ];

    /// The reason exactly as APNs spells it in the response body.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::BadCollapseId => "BadCollapseId",
            Reason::BadDeviceToken => "BadDeviceToken",
            Reason::BadExpirationDate => "BadExpirationDate",
            Reason::BadMessageId => "BadMessageId",
            Reason::BadPriority => "BadPriority",
            Reason::BadTopic => "BadTopic",
            Reason::DeviceTokenNotForTopic => "DeviceTokenNotForTopic",
            Reason::DuplicateHeaders => "DuplicateHeaders",
            Reason::IdleTimeout => "IdleTimeout",
            Reason::InvalidPushType => "InvalidPushType",
            Reason::MissingDeviceToken => "MissingDeviceToken",
            Reason::MissingTopic => "MissingTopic",
            Reason::PayloadEmpty => "PayloadEmpty",
            Reason::TopicDisallowed => "TopicDisallowed",
            Reason::BadCertificate => "BadCertificate",
            Reason::BadCertificateEnvironment => "BadCertificateEnvironment",
            Reason::ExpiredProviderToken => "ExpiredProviderToken",
            Reason::Forbidden => "Forbidden",
            Reason::InvalidProviderToken => "InvalidProviderToken",
            Reason::MissingProviderToken => "MissingProviderToken",
            Reason::UnrelatedKeyIdInToken => "UnrelatedKeyIdInToken",
            Reason::BadEnvironmentKeyIdInToken => "BadEnvironmentKeyIdInToken",
            Reason::BadPath => "BadPath",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::Unregistered => "Unregistered",
            Reason::ExpiredToken => "ExpiredToken",
            Reason::PayloadTooLarge => "PayloadTooLarge",
            Reason::TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::InternalServerError => "InternalServerError",
            Reason::ServiceUnavailable => "ServiceUnavailable",
            Reason::Shutdown => "Shutdown",
        }
    }

    /// The HTTP status APNs answers with for this reason.
    pub const fn status(self) -> u16 {
        match self {
            Reason::BadCollapseId
            | Reason::BadDeviceToken
            | Reason::BadExpirationDate
            | Reason::BadMessageId
            | Reason::BadPriority
            | Reason::BadTopic
            | Reason::DeviceTokenNotForTopic
            | Reason::DuplicateHeaders
            | Reason::IdleTimeout
            | Reason::InvalidPushType
            | Reason::MissingDeviceToken
            | Reason::MissingTopic
            | Reason::PayloadEmpty
            | Reason::TopicDisallowed => 400,
            Reason::BadCertificate
            | Reason::BadCertificateEnvironment
            | Reason::ExpiredProviderToken
            | Reason::Forbidden
            | Reason::InvalidProviderToken
            | Reason::MissingProviderToken
            | Reason::UnrelatedKeyIdInToken
            | Reason::BadEnvironmentKeyIdInToken => 403,
            Reason::BadPath => 404,
            Reason::MethodNotAllowed => 405,
            Reason::Unregistered | Reason::ExpiredToken => 410,
            Reason::PayloadTooLarge => 413,
            Reason::TooManyProviderTokenUpdates | Reason::TooManyRequests => 429,
            Reason::InternalServerError => 500,
            Reason::ServiceUnavailable | Reason::Shutdown => 503,
        }
    }

    /// How Herald handles this reason (see `docs/apns.md`).
    pub const fn disposition(self) -> Disposition {
        match self {
            Reason::BadCollapseId
            | Reason::BadExpirationDate
            | Reason::BadMessageId
            | Reason::BadPriority
            | Reason::BadTopic
            | Reason::DuplicateHeaders
            | Reason::InvalidPushType
            | Reason::MissingDeviceToken
            | Reason::MissingTopic
            | Reason::PayloadEmpty
            | Reason::TopicDisallowed
            | Reason::BadPath
            | Reason::MethodNotAllowed
            | Reason::PayloadTooLarge => Disposition::Permanent,
            Reason::BadDeviceToken => Disposition::TokenInvalid,
            Reason::DeviceTokenNotForTopic => Disposition::TokenNotForTopic,
            Reason::Unregistered | Reason::ExpiredToken => Disposition::Unregistered,
            Reason::BadCertificate
            | Reason::BadCertificateEnvironment
            | Reason::Forbidden
            | Reason::InvalidProviderToken
            | Reason::MissingProviderToken
            | Reason::BadEnvironmentKeyIdInToken => Disposition::Credentials,
            Reason::ExpiredProviderToken => Disposition::RefreshToken,
            Reason::IdleTimeout | Reason::UnrelatedKeyIdInToken | Reason::Shutdown => {
                Disposition::Reconnect
            }
            Reason::TooManyRequests => Disposition::DeviceThrottled,
            Reason::TooManyProviderTokenUpdates => Disposition::TokenUpdateBackoff,
            Reason::InternalServerError | Reason::ServiceUnavailable => Disposition::RetryLater,
        }
    }

    /// True when the push may be sent again (possibly after a delay or on a new connection).
    pub const fn is_retryable(self) -> bool {
        matches!(
            self.disposition(),
            Disposition::RefreshToken
                | Disposition::Reconnect
                | Disposition::DeviceThrottled
                | Disposition::TokenUpdateBackoff
                | Disposition::RetryLater
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason string is not one APNs documents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown APNs reason {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        assert!("Nonsense".parse::<Reason>().is_err());
    }

    #[test]
    fn statuses_follow_apples_table() {
        assert_eq!(Reason::Unregistered.status(), 410);
        assert_eq!(Reason::ExpiredProviderToken.status(), 403);
        assert_eq!(Reason::TooManyProviderTokenUpdates.status(), 429);
        assert_eq!(Reason::Shutdown.status(), 503);
        assert_eq!(Reason::IdleTimeout.status(), 400);
        assert!(Reason::IdleTimeout.is_retryable());
        assert!(!Reason::BadTopic.is_retryable());
        assert_eq!(
            Reason::Unregistered.disposition(),
            Disposition::Unregistered
        );
    }
}
