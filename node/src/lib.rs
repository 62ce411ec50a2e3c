//! # herald-node
//!
//! The `herald` binary's commands as a library, so integration tests can run them: the
//! demo, the standalone emulator and the benchmarks. The HTTP API node, admin and push
//! commands come with the "herald node" issue.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod bench;
pub mod bench_cluster;
pub mod bench_engine;
pub mod certs_cmd;
pub mod demo;
pub mod emulator_cmd;
pub mod pusher;
pub mod summary;
