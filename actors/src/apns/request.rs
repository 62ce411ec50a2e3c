//! A request ready for the wire: what an HTTP/2 connection needs to send one notification.

use bytes::Bytes;
use http::HeaderMap;

/// One APNs request, validated and serialized: path, APNs headers and body.
///
/// Built by [`Notification::prepare`](crate::apns::Notification::prepare); the connection
/// adds the `authorization` header (token auth) and sends it as `POST https://host{path}`.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    /// The request path, `/3/device/<hex token>`.
    pub path: String,
    /// The `apns-*` headers (never `authorization`).
    pub headers: HeaderMap,
    /// The serialized JSON payload.
    pub body: Bytes,
}
