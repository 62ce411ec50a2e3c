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
//! - [`node`]: the [`node::ClusterActor`] shell that runs the driver over the transport (ticks,
//!   steps authenticated Raft messages, batches proposals into one `ready()`, publishes the
//!   applied index, leader and invalidations), the [`node::ClusterNode`] handle that starts and
//!   stops a node, and [`node::ReplicatedTokenState`], herald-actors' `TokenState` on the Raft
//!   log (local reads at the applied index; see the module docs for their staleness).
//!
//! - [`provider_tokens`]: one provider token per signing key, cluster-wide: the leader mints
//!   and replicates it every `M`, every node feeds it to its tenants' minters.
//!
//! Not yet here (issue "Cluster"): forwarding proposals from followers to the leader, routing
//! of pushes to shard owners and membership operations (join, drain, remove).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub use herald_actors;

pub mod node;
pub mod provider_tokens;
pub mod raft;
pub mod state;
pub mod transport;
