//! # herald-sim
//!
//! The APNs emulator (used by tests, the demo and the benchmarks) and the deterministic
//! cluster simulator ([`sim`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod emulator;
pub mod sim;
