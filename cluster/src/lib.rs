//! # herald-cluster
//!
//! Herald's cluster layer: the Raft (raft-rs) driver and replicated state machine
//! (membership, shard map, tenants, provider tokens, device-token state), the node
//! transport and routing.
//!
//! - [`raft`]: durable Raft storage on redb (or in memory) and the sans-IO [`raft::RaftDriver`]
//!   around raft-rs `RawNode` (tick, step, propose, ready).
//! - [`state`]: the replicated [`state::Command`]s and the [`state::StateMachine`] they are
//!   applied to, with snapshots and deterministic shard rebalancing.
//! - [`transport`]: node-to-node links: length-prefixed rmp-serde envelopes, mutual TLS with
//!   a cluster CA, the `PeerLink` actor and the inbound listener.
//!
//! Not yet here: the actor shell that runs the Raft driver over the transport, routing of
//! pushes to shard owners, and the replicated `TokenState` (issue "Cluster").
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub use herald_actors;

pub mod raft;
pub mod state;
pub mod transport;
