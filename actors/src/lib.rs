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
pub mod limits;
pub mod seams;
pub mod token_state;
pub mod wal;
