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
//! - [`membership`]: bootstrap, join, drain and remove, driven by the leader's deterministic
//!   planner, and [`membership::ClusterStatus`] (see `docs/cluster.md`).
//! - [`routing`]: the [`routing::Router`] that sends each push to its shard's owner in this
//!   region (fenced by the shard map's epoch, re-sent on refusal, outcomes sent back), and
//!   forwarding of proposals from followers to the leader.
//! - [`provider_tokens`]: one provider token per signing key, cluster-wide: the leader mints
//!   and replicates it every `M`, every node feeds it to its tenants' minters.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub use herald_actors;

pub mod devices;
pub mod membership;
pub mod node;
pub mod provider_tokens;
pub mod raft;
pub mod routing;
pub mod state;
pub mod transport;
