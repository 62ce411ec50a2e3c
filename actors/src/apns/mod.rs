//! The APNs protocol: requests, payloads, device tokens, answers, provider tokens and the
//! HTTP/2 connection that carries them.

pub mod auth;
pub mod http2;
pub mod reason;
pub mod request;
pub mod response;

pub use auth::{AuthError, CertificateAuth, ConnectionAuth};
pub use reason::{Disposition, Reason, UnknownReason};
pub use request::PreparedRequest;
pub use response::{Delivery, Rejection, ResponseError, error_body, parse_response};
