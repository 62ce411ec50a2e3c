//! The APNs protocol: requests, payloads, device tokens, answers, provider tokens and the
//! HTTP/2 connection that carries them.

pub mod auth;
pub mod certificate;
pub mod headers;
pub mod http2;
pub mod notification;
pub mod payload;
pub mod provider_token;
pub mod push_type;
pub mod reason;
pub mod request;
pub mod response;
pub mod tls;
pub mod token;
pub mod topic;

pub use auth::{AuthError, CertificateAuth, ConnectionAuth};
pub use certificate::ClientIdentity;
pub use headers::{
    ApnsId, ApnsIdError, ApnsIdStr, CollapseId, CollapseIdError, Expiration, ExpirationError,
    Priority, PriorityError,
};
pub use notification::{DEVICE_PATH_PREFIX, Notification, NotificationBuilder, NotificationError};
pub use payload::{
    Alert, AlertDictionary, Aps, CriticalSound, InterruptionLevel, LiveActivityEvent, Payload,
    PayloadError, Sound,
};
pub use provider_token::{
    ProviderToken, SigningKey, TokenConnectionAuth, TokenMinter, TokenSource,
};
pub use push_type::{PushType, PushTypeError};
pub use reason::{Disposition, Reason, UnknownReason};
pub use request::PreparedRequest;
pub use response::{Delivery, Rejection, ResponseError, error_body, parse_response};
pub use tls::{ApnsTlsConfig, TlsConfigError};
pub use token::{DeviceToken, DeviceTokenError};
pub use topic::{Topic, TopicError};
