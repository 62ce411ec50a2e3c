//! Routing: pushes to their shard's owner in this region, and proposals to the Raft leader.
//!
//! ```text
//!  caller ─▶ Router::send ─ shard_of(token) ─▶ applied shard map (this region)
//!                │ owner == self ──────────────────────────▶ local Herald engine (WAL) ─▶ Ok(id)
//!                └ owner == P ─ ForwardPush{push_id, wire} ─▶ PeerLink(P) ─▶ P's Router
//!                       ▲                                      │ fence: (shard, region, epoch)
//!                       └──────────── Ack{push_id, result} ◀───┘ is P's current ownership?
//!                                                              │ then P's engine (WAL append)
//!  Router::outcome(id) ◀── remote outcome cache ◀── Outcome{push_id} ◀── P's engine outcomes
//! ```
//!
//! * [`Router`] (one per node) holds the local engine, the applied shard maps published by
//!   the [`ClusterNode`](crate::node::ClusterNode) and its peer links. [`Router::send`] and
//!   [`Router::send_batch`] have the shapes of `Herald::send`/`send_batch`.
//! * [`wire`]: the versioned rmp-serde forms of a forwarded push and of an outcome, validated
//!   on decode.
//! * Proposal forwarding (a follower sends `Propose` to the leader it knows) lives in a
//!   crate-private module driven by the [`ClusterActor`](crate::node::ClusterActor).
//!
//! See `docs/cluster.md` (`## Routing`) for the protocol, its fencing and its failure cases.

mod proposals;
mod router;
pub mod wire;

pub(crate) use proposals::{
    Next, ProposalForwards, answer_forwarded, is_routing_message, proposal_context, proposal_id,
};
pub use router::{Router, RouterConfig, RouterError};

use std::time::Duration;

use herald_actors::limits::OUTCOMES_KEPT_MAX;

// ---------------------------------------------------------------------------------------------
// Limits: every bound of routing, named in one place.
// ---------------------------------------------------------------------------------------------

/// Most pushes one node has forwarded to one peer and not yet seen acknowledged.
pub const FORWARDS_PER_PEER_MAX: usize = 4096;
/// Most pushes one node has forwarded (all peers) and not yet seen acknowledged.
pub const FORWARDS_TOTAL_MAX: usize = 16_384;
/// Most pushes in one `ForwardBatch` message (a batch for one owner is split beyond).
pub const FORWARD_BATCH_PUSHES_MAX: usize = 256;
/// About the most push bytes in one `ForwardBatch` (well under the transport's frame bound).
pub const FORWARD_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Most forwarded pushes an owner handles at once (decode, fence, WAL append); more are
/// answered `Overloaded`.
pub const SERVED_FORWARDS_MAX: usize = 4096;
/// Default wait for an owner's `Ack` before the origin re-sends.
pub const FORWARD_ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default number of sends (first + re-sends) of one push before `Unavailable`.
pub const FORWARD_ATTEMPTS_DEFAULT: u32 = 5;
/// The most sends of one push a configuration may ask for.
pub const FORWARD_ATTEMPTS_MAX: u32 = 32;
/// Default pause before a re-send (doubled per attempt, capped at [`RESEND_BACKOFF_MAX`]).
pub const RESEND_BACKOFF_DEFAULT: Duration = Duration::from_millis(20);
/// Cap of the pause between re-sends.
pub const RESEND_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long an origin waits for its own shard map to reach the epoch an owner reported.
pub const MAP_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a push waiting for this node's map to catch up looks at it again.
pub const MAP_CATCH_UP_POLL: Duration = Duration::from_millis(10);
/// `retry_after` of the `Overloaded` answered when forwarding limits are reached.
pub const FORWARD_OVERLOAD_RETRY_AFTER: Duration = Duration::from_millis(100);
/// Most (push → origin node) records an owner keeps to send outcomes back; the oldest go.
pub const ORIGINS_KEPT_MAX: usize = 100_000;
/// Most forwarded pushes an origin tracks while it waits for their outcomes (the oldest are
/// forgotten: their outcome, if it never comes back, stays on the owner).
pub const AWAITED_OUTCOMES_MAX: usize = 100_000;
/// A forwarded push without an outcome this long after its owner took it is asked about
/// ([`PeerMessage::OutcomeQuery`](crate::transport::PeerMessage::OutcomeQuery)), and again
/// every such period while it has none.
pub const OUTCOME_QUERY_AFTER: Duration = Duration::from_secs(30);
/// How often the origin looks for pushes to ask about.
pub const OUTCOME_QUERY_EVERY: Duration = Duration::from_secs(5);
/// Most outcome queries an origin sends per round.
pub const OUTCOME_QUERIES_PER_ROUND: usize = 256;
/// Most outcomes of forwarded pushes an origin keeps for `Router::outcome`; the oldest go.
pub const REMOTE_OUTCOMES_KEPT_MAX: usize = OUTCOMES_KEPT_MAX;
/// Capacity of the channel from the node's inbound dispatch to its router, in messages. A
/// full channel drops the message (counted); the origin's ack timeout re-sends.
pub const ROUTING_INBOUND_CAPACITY: usize = 4096;
/// Most proposals one follower has forwarded to the leader and not yet seen applied.
pub const FORWARDED_PROPOSALS_MAX: usize = 1024;
/// A forwarded proposal not applied here within this is answered `ProposeError::Timeout`.
pub const FORWARDED_PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);

const _: () = assert!(FORWARDS_PER_PEER_MAX <= FORWARDS_TOTAL_MAX);
const _: () = assert!(FORWARD_BATCH_BYTES_MAX * 2 <= crate::transport::FRAME_BYTES_MAX);
const _: () = assert!(FORWARD_BATCH_PUSHES_MAX <= SERVED_FORWARDS_MAX);
const _: () =
    assert!(FORWARD_ATTEMPTS_DEFAULT >= 1 && FORWARD_ATTEMPTS_DEFAULT <= FORWARD_ATTEMPTS_MAX);
const _: () = assert!(RESEND_BACKOFF_DEFAULT.as_millis() <= RESEND_BACKOFF_MAX.as_millis());
const _: () = assert!(SERVED_FORWARDS_MAX > 0 && ROUTING_INBOUND_CAPACITY > 0);
const _: () = assert!(FORWARDED_PROPOSALS_MAX > 0 && ORIGINS_KEPT_MAX > 0);
