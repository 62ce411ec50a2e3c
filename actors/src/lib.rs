//! # herald-actors
//!
//! Herald's embeddable APNs push engine. This crate speaks APNs exactly (validated
//! requests, payloads, provider tokens, HTTP/2 connections and every answer APNs gives),
//! and runs on the determinism [`seams`] so the simulator can drive it.
//!
//! ```
//! use herald_actors::apns::Reason;
//!
//! let reason: Reason = "Unregistered".parse().unwrap();
//! assert_eq!(reason.status(), 410);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod apns;
pub mod backoff;
pub mod breaker;
mod connection;
mod engine;
pub mod limits;
pub mod outcome;
pub mod rate_limit;
pub mod seams;
mod shard;
mod supervisor;
mod tenant;
pub mod token_state;
pub mod wal;

pub use engine::{
    BuildError, Endpoint, Herald, HeraldBuilder, PushError, ShutdownReport, TenantError, Tuning,
};
pub use outcome::{Failure, Invalidation, Outcome, OutcomeRecord, PushId};
pub use tenant::{Credentials, TenantConfig, TenantStatus};
