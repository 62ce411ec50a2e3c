//! # herald-cluster
//!
//! Herald's cluster layer: the Raft (raft-rs) driver and replicated state machine
//! (membership, shard map, tenants, provider tokens, device-token state), the node
//! transport and routing. This crate is built out by the "Cluster" issue; today it only
//! fixes the workspace's shape so the other crates can depend on it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub use herald_actors;

pub mod transport;
