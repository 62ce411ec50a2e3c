//! The APNs protocol: requests, payloads, device tokens, answers, provider tokens and the
//! HTTP/2 connection that carries them.

pub mod reason;

pub use reason::{Disposition, Reason, UnknownReason};
