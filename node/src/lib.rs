//! # herald-node
//!
//! The `herald` binary's commands as a library, so integration tests can run them: the
//! demo, the standalone emulator, the benchmarks, `herald node` (configuration,
//! credentials and their reload, logging, ops endpoints, the node server) and the API's
//! command-line clients (`herald push`, `herald admin`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod admin_cmd;
pub mod api;
pub mod bench;
pub mod bench_cluster;
pub mod bench_engine;
pub mod bench_http;
pub mod certs_cmd;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod emulator_cmd;
pub mod http_client;
pub mod logging;
pub mod ops;
pub mod push_cmd;
pub mod pusher;
pub mod server;
pub mod summary;
