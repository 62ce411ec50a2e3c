//! The cluster node: the [`ClusterActor`] shell around the sans-IO [`RaftDriver`], the
//! [`ClusterNode`] handle that starts and stops one node (storage, listener, peer links,
//! actor), and [`ReplicatedTokenState`], herald-actors' [`TokenState`] on the Raft log.
//!
//! ```text
//!  listener ──Inbound{from, Raft(bytes)}──▶ forwarder ──▶ ClusterActor ──try_send──▶ PeerLink ×P
//!                                                       │  tick (interval), step, propose
//!  ReplicatedTokenState ──Propose(TokenEvents)──────────▶│  ready() ─▶ messages, applied
//!        ▲ check(): token-table mirror ◀────────────────┤  watch<AppliedState>
//!        └ subscribe(): invalidations ◀─────────────────┘  broadcast<Invalidation>
//! ```
//!
//! A one-node cluster (plaintext and in memory here; production uses
//! [`LinkSecurity::MutualTls`] and a redb path):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//! use herald_actors::seams::Timestamp;
//! use herald_actors::token_state::{TokenKey, TokenState, TokenValidity};
//! use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
//! use herald_cluster::transport::{ClusterId, LinkSecurity};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let peers = BTreeMap::from([(1, listener.local_addr()?)]);
//! let mut config = ClusterConfig::new(
//!     1, ClusterId(1), peers, "eu", StorageLocation::InMemory, LinkSecurity::Plaintext,
//! );
//! config.tick = Duration::from_millis(5);
//! let node = ClusterNode::start(config, listener).await?;
//!
//! let mut applied = node.applied();
//! applied.wait_for(|state| state.is_leader).await?;
//! let tokens = node.token_state();
//! let key = TokenKey::new("tenant", "abcd");
//! let at = Timestamp::from_secs(1_000);
//! assert_eq!(tokens.invalidate(key.clone(), at).await?, TokenValidity::Invalidated { at });
//! assert_eq!(tokens.check(&key), TokenValidity::Invalidated { at });
//! node.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! # The shell
//!
//! The actor only ticks, steps, proposes and handles `ready()`; every decision is the
//! driver's. Ticks come from a `tokio::time` interval of [`ClusterConfig::tick`]. Inbound Raft
//! bytes are decoded only after the listener authenticated the link (mutual TLS in
//! production), and a message whose Raft `from` differs from the authenticated sender is
//! dropped. Proposals and steps do not call `ready()` themselves: they schedule one `Flush`
//! message behind everything already in the mailbox, so every command that arrived while the
//! previous `ready()` was being handled goes into the same `ready()` cycle (one fsync).
//!
//! A proposal is answered when its entry is applied **on this node**, with the
//! [`ApplyResult`]. A follower that knows the leader forwards the proposal to it over its
//! peer link and answers when it applies the entry itself (see [`routing`](crate::routing));
//! without a known leader it answers [`ProposeError::NotLeader`]. If the
//! term changes before the entry is applied, the proposal is answered
//! [`ProposeError::LeadershipLost`]: its outcome is unknown (it may still commit), which is
//! harmless for the idempotent token events.
//!
//! # Token-state reads and their staleness
//!
//! [`ReplicatedTokenState::check`] reads a mirror of the token table as applied on this
//! node: the actor replays each applied token-event entry on it (O(events); a snapshot
//! installed from the leader is copied whole). The mirror costs a second copy of the table
//! in memory. It is a local read at this node's applied index, not a linearizable read:
//! - on the leader it includes every committed event, since the leader applies in the same
//!   `ready()` that learns of the commit;
//! - on a follower it trails the leader by its replication delay: the commit index reaches
//!   followers on the next append or heartbeat (at most `heartbeat_tick` ticks), plus the
//!   network;
//! - a node cut off from the leader keeps serving its last applied state indefinitely
//!   (watch [`AppliedState`] to tell).
//!
//! An invalidation is visible on a node once the entry carrying it is applied there.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_actors::limits::TOKEN_INVALIDATIONS_CHANNEL_CAPACITY;
use herald_actors::seams::{BoxFuture, DetRng, SharedConnector, TcpConnector};
use herald_actors::token_state::{
    Invalidation, TokenEvent, TokenKey, TokenState, TokenStateError, TokenTable, TokenValidity,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::membership::{Membership, MembershipConfig, MembershipMsg, StartMode};
use crate::raft::chunks::{self, RAFT_PART_BYTES_DEFAULT, Reassembly};
use crate::raft::eraftpb::{ConfState, MessageType};
use crate::raft::{
    CommittedKind, DriverConfig, DriverError, RaftDriver, RaftStorage, ReadyOutput, Role,
    StorageError, decode_message, encode_message, raft_logger,
};
use crate::routing::{
    ProposalForwards, ROUTING_INBOUND_CAPACITY, answer_forwarded, is_routing_message,
};
use crate::state::{
    ApplyResult, Command, CommandError, ProviderTokenRecord, ShardMap,
    TOKEN_EVENTS_PER_COMMAND_MAX, TokenEventRecord,
};
use crate::transport::Acceptor;
use crate::transport::{
    ClusterId, Inbound, InboundConfig, LinkSecurity, LinkTimings, Listener, NodeId, PeerLink,
    PeerLinkArguments, PeerLinkConfig, PeerLinkMsg, PeerLinkSender, PeerMessage, spawn_acceptor,
};

// ---------------------------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------------------------

/// Default length of one Raft tick.
pub const TICK_DEFAULT: Duration = Duration::from_millis(100);
/// Capacity of the channel from the listener to the actor, in messages.
pub const INBOUND_CHANNEL_CAPACITY: usize = 1024;
/// Most token events coalesced into one [`Command::TokenEvents`] proposal.
pub const TOKEN_EVENTS_BATCH_MAX: usize = 512;
/// How long the token-event batcher waits for more events after the first of a batch.
pub const TOKEN_EVENTS_BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Capacity of the token-event batcher's queue; a full queue answers `Unavailable`.
pub const TOKEN_EVENTS_QUEUE_CAPACITY: usize = 4096;
/// A token event not applied locally within this is answered `Unavailable`.
pub const TOKEN_EVENT_APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most proposals awaiting their apply on one node; more are refused as overload.
pub const PENDING_PROPOSALS_MAX: usize = 4096;

const _: () = assert!(TOKEN_EVENTS_BATCH_MAX <= TOKEN_EVENTS_PER_COMMAND_MAX);
const _: () = assert!(TOKEN_EVENTS_BATCH_MAX <= TOKEN_EVENTS_QUEUE_CAPACITY);
const _: () = assert!(INBOUND_CHANNEL_CAPACITY > 0 && PENDING_PROPOSALS_MAX > 0);

// ---------------------------------------------------------------------------------------------
// Configuration, errors, published state.
// ---------------------------------------------------------------------------------------------

/// Where a node keeps its Raft log and snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageLocation {
    /// A redb file (fsync'd); reopened on restart.
    Path(PathBuf),
    /// In memory: lost on stop. Tests only.
    InMemory,
}

/// How to start one node.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id (non-zero).
    pub id: u64,
    /// The cluster's id; links from other clusters are refused.
    pub cluster: ClusterId,
    /// Every voter of the initial configuration, this node included: id → `host:port`.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// This node's region.
    pub region: String,
    /// Where the Raft state lives.
    pub storage: StorageLocation,
    /// Link security (always mutual TLS in production).
    pub security: LinkSecurity,
    /// Length of one Raft tick. Default: [`TICK_DEFAULT`].
    pub tick: Duration,
    /// Raft settings; `driver.id` must equal `id`.
    pub driver: DriverConfig,
    /// Timeouts and reconnect backoff of the peer links. Default: [`LinkTimings::default`].
    pub link_timings: LinkTimings,
    /// Membership settings (start mode, shard count, founders' regions, backlog probe).
    /// Default: [`MembershipConfig::default`].
    pub membership: MembershipConfig,
    /// Encoded Raft messages longer than this (snapshots) travel in parts of this size
    /// ([`crate::raft::chunks`]). Default: [`RAFT_PART_BYTES_DEFAULT`].
    pub raft_part_bytes: usize,
}

impl ClusterConfig {
    /// A configuration with the default tick and Raft settings.
    pub fn new(
        id: u64,
        cluster: ClusterId,
        peers: BTreeMap<u64, SocketAddr>,
        region: impl Into<String>,
        storage: StorageLocation,
        security: LinkSecurity,
    ) -> Self {
        ClusterConfig {
            id,
            cluster,
            peers,
            region: region.into(),
            storage,
            security,
            tick: TICK_DEFAULT,
            driver: DriverConfig::new(id),
            link_timings: LinkTimings::default(),
            membership: MembershipConfig::default(),
            raft_part_bytes: RAFT_PART_BYTES_DEFAULT,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The configuration is inconsistent.
    #[error("invalid cluster config: {0}")]
    Config(String),
    /// The Raft storage could not be opened or initialized.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Raft driver refused to start.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The listener could not start.
    #[error("listener: {0}")]
    Listener(String),
    /// An actor could not be spawned.
    #[error("actor spawn: {0}")]
    Spawn(String),
}

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader; `leader` is the one it knows, if any.
    #[error("not leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<u64>,
    },
    /// The term changed before the entry was applied here: its outcome is unknown.
    #[error("leadership changed before the proposal was applied; outcome unknown")]
    LeadershipLost,
    /// The command is invalid.
    #[error(transparent)]
    Invalid(#[from] CommandError),
    /// Too many proposals await their apply ([`PENDING_PROPOSALS_MAX`]).
    #[error("too many pending proposals")]
    Overloaded,
    /// Raft refused the proposal (its error text).
    #[error("proposal refused: {0}")]
    Refused(String),
    /// The node stopped.
    #[error("cluster node stopped")]
    Stopped,
    /// A follower could not forward the proposal to the leader it knows (no link, or the
    /// link's queue is full or stopped).
    #[error("leader {leader} unreachable")]
    LeaderUnreachable {
        /// The leader the proposal was for.
        leader: u64,
    },
    /// A forwarded proposal was not applied here within
    /// [`FORWARDED_PROPOSAL_TIMEOUT`](crate::routing::FORWARDED_PROPOSAL_TIMEOUT): its outcome
    /// is unknown.
    #[error("forwarded proposal not applied in time; outcome unknown")]
    Timeout,
}

/// Every region's applied shard map, by region (published by the node after each change).
pub type ShardMaps = Arc<BTreeMap<String, ShardMap>>;

/// What the node has applied, published on a `watch` after every `ready()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppliedState {
    /// The highest index applied to the state machine here.
    pub applied_index: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// True if this node is the leader.
    pub is_leader: bool,
}

/// The reply to a [`ClusterMsg::Propose`].
pub type ProposeReply = RpcReplyPort<Result<ApplyResult, ProposeError>>;

/// Messages of the [`ClusterActor`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterMsg {
    /// Propose a command; answered once it is applied here.
    Propose(Command, ProposeReply),
    /// One Raft tick (from the actor's interval).
    Tick,
    /// A message from a peer, from the listener.
    Inbound(Inbound),
    /// Handle `ready()` now (scheduled by proposals and steps).
    Flush,
    /// A membership request (status, admin operations); see [`crate::membership`].
    Membership(MembershipMsg),
    /// Report what is applied here: the applied index and a snapshot of the state machine
    /// (for the simulator's invariant checks and for diagnostics).
    Inspect(RpcReplyPort<Inspection>),
    /// Run a read of the state machine as applied here (see [`StateRead`]).
    Read(StateRead),
    /// A large Raft message's parts were queued (`ok`) or given up on.
    PartsSent {
        /// The peer.
        to: u64,
        /// Whether the message was a snapshot (raft-rs waits for its report).
        snapshot: bool,
        /// Whether every part was queued.
        ok: bool,
    },
}

/// A read of the applied state machine, run on the cluster actor between two messages (so it
/// sees one applied index). Keep it short: the actor does nothing else meanwhile.
pub struct StateRead(Box<dyn FnOnce(&crate::state::StateMachine) + Send>);

impl StateRead {
    /// A read running `read`.
    pub fn new(read: impl FnOnce(&crate::state::StateMachine) + Send + 'static) -> Self {
        StateRead(Box::new(read))
    }
}

impl std::fmt::Debug for StateRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateRead")
    }
}

/// A node's applied state, answered to [`ClusterMsg::Inspect`].
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The highest index applied to the state machine here.
    pub applied_index: u64,
    /// The current term.
    pub term: u64,
    /// The state machine at `applied_index`, as [`StateMachine::snapshot`](crate::state::StateMachine::snapshot)
    /// bytes (equal states give equal bytes), or the encoding error's text.
    pub snapshot: Result<Vec<u8>, String>,
}

// ---------------------------------------------------------------------------------------------
// The actor.
// ---------------------------------------------------------------------------------------------

/// The actor that owns a [`RaftDriver`]. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterActor;

/// The [`ClusterActor`]'s start arguments.
#[derive(Debug)]
pub struct ClusterArguments {
    driver: RaftDriver,
    tick: Duration,
    peers: BTreeMap<u64, PeerLinkSender>,
    inbound: mpsc::Receiver<Inbound>,
    routing: mpsc::Sender<Inbound>,
    shared: Arc<Shared>,
    membership: Membership,
    raft_part_bytes: usize,
}

/// What the actor publishes and the handles read.
#[derive(Debug)]
struct Shared {
    applied: watch::Sender<AppliedState>,
    invalidations: broadcast::Sender<Invalidation>,
    tokens: RwLock<TokenTable>,
    shard_maps: watch::Sender<ShardMaps>,
    provider: watch::Sender<ProviderTokenView>,
    /// The node's current peer links (configured peers, then members opened by membership).
    links: watch::Sender<BTreeMap<u64, PeerLinkSender>>,
    /// Revoked API keys as applied here, and the state machine's revocations version copied.
    revoked: RwLock<(u64, BTreeMap<String, u64>)>,
}

/// The provider tokens applied on a node, for [`crate::provider_tokens`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProviderTokenView {
    /// The newest token per key id, as applied here.
    pub(crate) tokens: BTreeMap<String, ProviderTokenRecord>,
    /// The term of the last entry applied here. A leader whose current term equals it has
    /// applied every entry committed before its term, so its view of the tokens is complete.
    pub(crate) last_applied_term: u64,
}

impl Shared {
    /// Copy the machine's revoked keys when they changed (or `force`: a restored snapshot).
    fn publish_revocations(&self, machine: &crate::state::StateMachine, force: bool) {
        let version = machine.revocations_version();
        let mut revoked = self
            .revoked
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if force || revoked.0 != version {
            *revoked = (version, machine.revoked_keys().clone());
        }
    }

    fn publish_provider_tokens(
        &self,
        machine: &crate::state::StateMachine,
        last_term: Option<u64>,
    ) {
        self.provider.send_if_modified(|view| {
            let mut changed = false;
            if let Some(term) = last_term
                && view.last_applied_term != term
            {
                view.last_applied_term = term;
                changed = true;
            }
            if view.tokens != *machine.provider_tokens() {
                view.tokens = machine.provider_tokens().clone();
                changed = true;
            }
            changed
        });
    }

    fn tokens(&self) -> std::sync::RwLockReadGuard<'_, TokenTable> {
        // The table is replaced whole under the write lock; a poisoned lock still holds a
        // complete table.
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Apply the token events of an applied `TokenEvents` entry to the mirror; false if the
    /// bytes are not such a command (the caller then copies the machine's table).
    fn mirror(&self, data: &[u8]) -> bool {
        let Ok(Command::TokenEvents(records)) = crate::state::decode(data) else {
            return false;
        };
        let mut table = self
            .tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for record in records {
            // The same call, on the same state, as `StateMachine::apply`; its result was
            // already reported by the state machine.
            let _ = table.apply(TokenKey::new(record.tenant, record.token), record.event);
        }
        true
    }

    fn set_tokens(&self, table: TokenTable) {
        *self
            .tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = table;
    }
}

/// A proposal awaiting its apply.
#[derive(Debug)]
struct Pending {
    term: u64,
    reply: ProposeReply,
}

/// The [`ClusterActor`]'s state.
#[derive(Debug)]
pub struct ClusterState {
    driver: RaftDriver,
    peers: BTreeMap<u64, PeerLinkSender>,
    shared: Arc<Shared>,
    pending: BTreeMap<u64, Pending>,
    next_proposal: u64,
    flush_scheduled: bool,
    term: u64,
    tasks: Vec<JoinHandle<()>>,
    membership: Membership,
    proposals: ProposalForwards,
    /// Large Raft messages: the part size, the next message number, the task queuing each
    /// peer's current one, and what peers are sending here.
    raft_part_bytes: usize,
    next_parted: u64,
    part_senders: BTreeMap<u64, JoinHandle<()>>,
    reassembly: Reassembly,
    /// The actor itself (absent only in unit tests that drive a state by hand).
    myself: Option<ActorRef<ClusterMsg>>,
}

impl Actor for ClusterActor {
    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = ClusterArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        arguments: ClusterArguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ticker = myself.send_interval(arguments.tick, || ClusterMsg::Tick);
        let mut inbound = arguments.inbound;
        let forward_to = myself.clone();
        let routing = arguments.routing;
        let forwarder = tokio::spawn(async move {
            while let Some(message) = inbound.recv().await {
                // Pushes, acks and outcomes go to the router (if any), never behind Raft I/O.
                if is_routing_message(&message.msg) {
                    if let Err(e) = routing.try_send(message) {
                        metrics::counter!("herald_routing_inbound_dropped_total").increment(1);
                        tracing::debug!(error = %e, "routing message dropped");
                    }
                    continue;
                }
                if forward_to.cast(ClusterMsg::Inbound(message)).is_err() {
                    return;
                }
            }
        });
        let term = arguments.driver.term();
        let proposals = ProposalForwards::new(arguments.driver.id(), arguments.tick);
        let mut state = ClusterState {
            driver: arguments.driver,
            peers: arguments.peers,
            shared: arguments.shared,
            pending: BTreeMap::new(),
            next_proposal: 0,
            flush_scheduled: false,
            term,
            tasks: vec![ticker, forwarder],
            membership: arguments.membership,
            proposals,
            raft_part_bytes: arguments.raft_part_bytes,
            next_parted: 0,
            part_senders: BTreeMap::new(),
            reassembly: Reassembly::default(),
            myself: Some(myself.clone()),
        };
        state
            .shared
            .set_tokens(state.driver.machine().token_table().clone());
        state
            .shared
            .publish_revocations(state.driver.machine(), true);
        // Re-apply what the log holds committed past the restored snapshot before serving any
        // read, so a restarted node never shows an older state (an older shard map epoch)
        // than it had already applied.
        while state.driver.machine().applied_index() < state.driver.committed_index() {
            let before = state.driver.machine().applied_index();
            state.handle_ready()?;
            if state.driver.machine().applied_index() == before {
                break;
            }
        }
        state
            .shared
            .publish_provider_tokens(state.driver.machine(), None);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ClusterMsg::Tick => {
                state.proposals.on_tick();
                state.driver.tick();
                state.handle_ready()?;
                let has_work = state
                    .membership
                    .on_tick(&mut state.driver, &mut state.peers)
                    .await;
                if state.peers.len() != state.shared.links.borrow().len() {
                    // Membership opened links to new members: let the router see them.
                    state.shared.links.send_replace(state.peers.clone());
                }
                if has_work {
                    state.schedule_flush(&myself)?;
                }
            }
            ClusterMsg::Flush => {
                state.flush_scheduled = false;
                state.handle_ready()?;
            }
            ClusterMsg::Inbound(inbound) => {
                if state.step_inbound(inbound) {
                    state.schedule_flush(&myself)?;
                }
            }
            ClusterMsg::Propose(command, reply) => {
                if state.propose(command, reply) {
                    state.schedule_flush(&myself)?;
                }
            }
            ClusterMsg::Membership(message) => {
                if state.membership.handle(message, &mut state.driver) {
                    state.schedule_flush(&myself)?;
                }
            }
            ClusterMsg::Read(StateRead(read)) => read(state.driver.machine()),
            ClusterMsg::PartsSent { to, snapshot, ok } => {
                state.part_senders.remove(&to);
                if !ok {
                    state.driver.report_unreachable(to);
                }
                if snapshot {
                    state.driver.report_snapshot(to, ok);
                    state.schedule_flush(&myself)?;
                }
            }
            ClusterMsg::Inspect(reply) => {
                let machine = state.driver.machine();
                let _ = reply.send(Inspection {
                    applied_index: machine.applied_index(),
                    term: state.driver.term(),
                    snapshot: machine.snapshot().map_err(|e| e.to_string()),
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for task in state.tasks.drain(..) {
            task.abort();
        }
        for (_, task) in std::mem::take(&mut state.part_senders) {
            task.abort();
        }
        state.membership.stop();
        for (_, pending) in std::mem::take(&mut state.pending) {
            let _ = pending.reply.send(Err(ProposeError::Stopped));
        }
        state.proposals.fail_all(&ProposeError::Stopped);
        Ok(())
    }
}

impl ClusterState {
    fn schedule_flush(&mut self, myself: &ActorRef<ClusterMsg>) -> Result<(), ActorProcessingErr> {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            myself.cast(ClusterMsg::Flush)?;
        }
        Ok(())
    }

    /// Handle an inbound message: a Raft step, or a forwarded proposal or its answer; true
    /// if the driver may have work.
    fn step_inbound(&mut self, inbound: Inbound) -> bool {
        self.membership.heard_from(inbound.from.0);
        match inbound.msg {
            PeerMessage::ProposeForward {
                request_id,
                command,
            } => {
                let (tx, rx) = oneshot::channel();
                answer_forwarded(self.peers.get(&inbound.from.0).cloned(), request_id, rx);
                match crate::state::decode(&command) {
                    Ok(command) => {
                        self.propose_with(command, tx.into(), Some((inbound.from.0, request_id)))
                    }
                    Err(e) => {
                        let _ = tx.send(Err(ProposeError::Invalid(e)));
                        false
                    }
                }
            }
            PeerMessage::ProposeAnswer { request_id, result } => {
                let leader = self.driver.leader_id();
                let next = self.proposals.on_answer(
                    inbound.from.0,
                    request_id,
                    result,
                    leader,
                    &self.peers,
                );
                self.after_forward(next)
            }
            PeerMessage::RaftPart {
                message,
                index,
                total,
                bytes,
            } => {
                let from = inbound.from;
                match self.reassembly.accept(from.0, message, index, total, bytes) {
                    Ok(Some(whole)) => self.step(Inbound {
                        from,
                        msg: PeerMessage::Raft(whole),
                    }),
                    Ok(None) => false,
                    Err(e) => {
                        tracing::warn!(from = from.0, error = %e, "raft message part dropped");
                        false
                    }
                }
            }
            _ => self.step(inbound),
        }
    }

    /// Act on what the proposal forwarder asks; true if the driver may have work.
    fn after_forward(&mut self, next: crate::routing::Next) -> bool {
        match next {
            crate::routing::Next::Done => false,
            crate::routing::Next::ProposeHere(command, reply) => {
                self.propose_with(command, reply, None)
            }
        }
    }

    /// Queue a large Raft message for `link` in parts, in a task (one per peer: a newer
    /// message replaces an older one still being queued).
    fn send_parts(&mut self, link: PeerLinkSender, bytes: &[u8], snapshot: bool) {
        let to = link.peer().0;
        let message = self.next_parted;
        self.next_parted += 1;
        let parts = chunks::split(message, bytes, self.raft_part_bytes);
        metrics::counter!("herald_raft_parted_messages_total").increment(1);
        tracing::debug!(
            to,
            bytes = bytes.len(),
            parts = parts.len(),
            snapshot,
            "raft message in parts"
        );
        let Some(myself) = self.myself.clone() else {
            return;
        };
        let task = tokio::spawn(async move {
            let ok = chunks::send_parts(link, parts).await;
            let _ = myself.cast(ClusterMsg::PartsSent { to, snapshot, ok });
        });
        if let Some(older) = self.part_senders.insert(to, task) {
            older.abort();
        }
    }

    /// Step an inbound message; true if the driver may have work.
    fn step(&mut self, inbound: Inbound) -> bool {
        let PeerMessage::Raft(bytes) = inbound.msg else {
            tracing::debug!(from = inbound.from.0, kind = inbound.msg.kind(), "ignored");
            return false;
        };
        // The listener authenticated `inbound.from`; only now is the protobuf parsed.
        let message = match decode_message(&bytes) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(from = inbound.from.0, error = %e, "undecodable raft message");
                return false;
            }
        };
        if message.from != inbound.from.0 {
            tracing::warn!(
                link = inbound.from.0,
                claimed = message.from,
                "raft message sender differs from the authenticated peer; dropped"
            );
            return false;
        }
        match self.driver.step(message) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(from = inbound.from.0, error = %e, "raft step refused");
                false
            }
        }
    }

    /// Propose a command; true if it went into the driver.
    fn propose(&mut self, command: Command, reply: ProposeReply) -> bool {
        self.propose_with(command, reply, None)
    }

    /// Propose a command, forwarded from `origin` (node, request id) if given; true if it
    /// went into the driver. A follower forwards a local caller's command to the leader.
    fn propose_with(
        &mut self,
        command: Command,
        reply: ProposeReply,
        origin: Option<(u64, u64)>,
    ) -> bool {
        if self.driver.role() != Role::Leader {
            let leader = self.driver.leader_id();
            match leader {
                Some(leader)
                    if origin.is_none()
                        && leader != self.driver.id()
                        && self.peers.contains_key(&leader) =>
                {
                    self.proposals.forward(command, reply, leader, &self.peers);
                }
                _ => {
                    let _ = reply.send(Err(ProposeError::NotLeader { leader }));
                }
            }
            return false;
        }
        if self.pending.len() >= PENDING_PROPOSALS_MAX {
            let _ = reply.send(Err(ProposeError::Overloaded));
            return false;
        }
        let id = self.next_proposal;
        self.next_proposal += 1;
        match self
            .driver
            .propose_command(crate::routing::proposal_context(id, origin), &command)
        {
            Ok(()) => {
                let term = self.driver.term();
                self.pending.insert(id, Pending { term, reply });
                true
            }
            Err(DriverError::Command(e)) => {
                let _ = reply.send(Err(ProposeError::Invalid(e)));
                false
            }
            Err(DriverError::ProposalDropped) => {
                let leader = self.driver.leader_id();
                let _ = reply.send(Err(ProposeError::NotLeader { leader }));
                false
            }
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Refused(e.to_string())));
                false
            }
        }
    }

    /// Handle one `ready()`: send, publish, answer proposals. A driver error is fatal for
    /// the actor (restart the node from its storage).
    fn handle_ready(&mut self) -> Result<(), ActorProcessingErr> {
        let out = self.driver.ready()?;
        self.send(&out);
        // Shard maps are published before any proposal is answered: a caller sees its change.
        if (!out.committed.is_empty() || out.snapshot_restored.is_some())
            && **self.shared.shard_maps.borrow() != *self.driver.machine().shard_maps()
        {
            let maps = Arc::new(self.driver.machine().shard_maps().clone());
            self.shared.shard_maps.send_replace(maps);
        }
        // A restored snapshot replaces the table: copy it whole (rare). Otherwise replay the
        // applied events on the mirror, in log order: the same deterministic table logic from
        // the same state gives the same table as the state machine's.
        let mut resync = out.snapshot_restored.is_some();
        for entry in &out.committed {
            let CommittedKind::Command(result) = &entry.kind else {
                continue;
            };
            if let ApplyResult::TokenEvents(results) = result {
                if !resync {
                    resync = !self.shared.mirror(&entry.data);
                }
                for applied in results.iter().flatten() {
                    if let Some(invalidation) = &applied.invalidation {
                        // No subscriber is not an error.
                        let _ = self.shared.invalidations.send(invalidation.clone());
                    }
                }
            }
            self.proposals
                .on_applied(&entry.context, &entry.data, result);
            if let Some(id) = crate::routing::proposal_id(&entry.context)
                && self
                    .pending
                    .get(&id)
                    .is_some_and(|pending| pending.term == entry.term)
                && let Some(pending) = self.pending.remove(&id)
            {
                let _ = pending.reply.send(Ok(result.clone()));
            }
        }
        if resync {
            self.shared
                .set_tokens(self.driver.machine().token_table().clone());
        }
        self.shared
            .publish_revocations(self.driver.machine(), out.snapshot_restored.is_some());
        if !out.committed.is_empty() || out.snapshot_restored.is_some() {
            self.shared.publish_provider_tokens(
                self.driver.machine(),
                out.committed.last().map(|entry| entry.term),
            );
        }
        if out.term != self.term || self.driver.role() != Role::Leader {
            self.term = out.term;
            for (_, pending) in std::mem::take(&mut self.pending) {
                let _ = pending.reply.send(Err(ProposeError::LeadershipLost));
            }
        }
        if out.leader_id != self.shared.applied.borrow().leader {
            let next = self.proposals.on_leader(out.leader_id, &self.peers);
            for next in next {
                // A proposal handed back here goes into the next `ready()`.
                self.after_forward(next);
            }
        }
        let applied = AppliedState {
            applied_index: self.driver.machine().applied_index(),
            leader: out.leader_id,
            term: out.term,
            is_leader: self.driver.role() == Role::Leader,
        };
        self.shared.applied.send_if_modified(|current| {
            let changed = *current != applied;
            *current = applied;
            changed
        });
        Ok(())
    }

    fn send(&mut self, out: &ReadyOutput) {
        for message in &out.messages {
            let to = message.to;
            let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let sent = match (self.peers.get(&to), encode_message(message)) {
                (Some(link), Ok(bytes)) if bytes.len() > self.raft_part_bytes => {
                    self.send_parts(link.clone(), &bytes, is_snapshot);
                    // Reported when queued (ClusterMsg::PartsSent).
                    continue;
                }
                (Some(link), Ok(bytes)) => link.try_send(PeerMessage::Raft(bytes)).map_err(|e| {
                    tracing::debug!(to, error = %e, "raft message not queued");
                }),
                (None, _) => {
                    tracing::warn!(to, "raft message for a node without a link");
                    Err(())
                }
                (_, Err(e)) => {
                    tracing::warn!(to, error = %e, "raft message not encodable");
                    Err(())
                }
            };
            if sent.is_err() {
                self.driver.report_unreachable(to);
                if is_snapshot {
                    self.driver.report_snapshot(to, false);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The node handle.
// ---------------------------------------------------------------------------------------------

/// A running node: its listener, peer links and [`ClusterActor`]. Stop it with
/// [`stop`](Self::stop) (which releases its storage, so it can be restarted from it).
#[derive(Debug)]
pub struct ClusterNode {
    id: u64,
    actor: ActorRef<ClusterMsg>,
    actor_task: JoinHandle<()>,
    links: Vec<ActorRef<PeerLinkMsg>>,
    listener: Listener,
    shared: Arc<Shared>,
    token_state: Arc<ReplicatedTokenState>,
    region: String,
    routing_inbound: std::sync::Mutex<Option<mpsc::Receiver<Inbound>>>,
}

impl ClusterNode {
    /// Start a node: open (or create and bootstrap with `config.peers` as voters) its
    /// storage, serve `listener`, link to every other peer, and start the actor.
    ///
    /// # Errors
    /// [`ClusterError`] if the configuration is inconsistent or a part fails to start.
    pub async fn start(
        config: ClusterConfig,
        listener: TcpListener,
    ) -> Result<ClusterNode, ClusterError> {
        ClusterNode::start_with(config, listener, Arc::new(TcpConnector), None).await
    }

    /// Start a node on any inbound stream source and any [`Connector`](herald_actors::seams::Connector)
    /// (the simulator's network), optionally on an already-open `storage` (the simulator's
    /// disk, which outlives a simulated crash); `None` opens `config.storage`. Otherwise as
    /// [`start`](Self::start).
    ///
    /// # Errors
    /// [`ClusterError`] if the configuration is inconsistent or a part fails to start.
    pub async fn start_with(
        config: ClusterConfig,
        acceptor: impl Acceptor,
        connector: SharedConnector,
        storage: Option<RaftStorage>,
    ) -> Result<ClusterNode, ClusterError> {
        if config.id == 0 || config.driver.id != config.id {
            return Err(ClusterError::Config(
                "id must be non-zero and equal driver.id".to_owned(),
            ));
        }
        if !config.peers.contains_key(&config.id) {
            return Err(ClusterError::Config(
                "peers must include this node".to_owned(),
            ));
        }
        let storage = match (storage, &config.storage) {
            (Some(storage), _) => storage,
            (None, StorageLocation::Path(path)) => RaftStorage::open(path)?,
            (None, StorageLocation::InMemory) => RaftStorage::in_memory(),
        };
        // A joining node starts empty and waits for the leader's snapshot.
        let initialized = match config.membership.start {
            StartMode::Join => Ok(()),
            _ => storage.initialize(ConfState {
                voters: config.peers.keys().copied().collect(),
                ..ConfState::default()
            }),
        };
        match initialized {
            Ok(()) | Err(StorageError::AlreadyInitialized) => {}
            Err(e) => return Err(e.into()),
        }
        let driver = RaftDriver::new(config.driver.clone(), storage, &raft_logger(config.id))?;

        let local = NodeId(config.id);
        let (deliver, inbound) = mpsc::channel(INBOUND_CHANNEL_CAPACITY);
        let inbound_config = Arc::new(InboundConfig::new(
            local,
            config.cluster,
            config.security.clone(),
            deliver,
        ));
        let listener = spawn_acceptor(acceptor, inbound_config)
            .map_err(|e| ClusterError::Listener(e.to_string()))?;

        let mut peers = BTreeMap::new();
        let mut links = vec![];
        for (&peer, addr) in config.peers.iter().filter(|(id, _)| **id != config.id) {
            let mut link_config = PeerLinkConfig::new(
                local,
                NodeId(peer),
                config.cluster,
                addr.ip().to_string(),
                addr.port(),
                config.security.clone(),
                connector.clone(),
                DetRng::from_seed(config.id.wrapping_mul(1_000_003) ^ peer),
            );
            link_config.timings = config.link_timings;
            let (arguments, sender) = PeerLinkArguments::new(link_config);
            let (link, _) = Actor::spawn(None, PeerLink, arguments)
                .await
                .map_err(|e| ClusterError::Spawn(e.to_string()))?;
            links.push(link);
            peers.insert(peer, sender);
        }

        let (invalidations, _) = broadcast::channel(TOKEN_INVALIDATIONS_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            applied: watch::Sender::new(AppliedState::default()),
            invalidations,
            tokens: RwLock::new(TokenTable::new()),
            shard_maps: watch::Sender::new(Arc::new(driver.machine().shard_maps().clone())),
            provider: watch::Sender::new(ProviderTokenView::default()),
            links: watch::Sender::new(peers.clone()),
            revoked: RwLock::new((0, BTreeMap::new())),
        });
        let (routing, routing_inbound) = mpsc::channel(ROUTING_INBOUND_CAPACITY);
        let arguments = ClusterArguments {
            driver,
            tick: config.tick,
            peers,
            inbound,
            routing,
            shared: shared.clone(),
            membership: Membership::new(&config, connector.clone()),
            raft_part_bytes: config.raft_part_bytes,
        };
        let (actor, actor_task) = Actor::spawn(None, ClusterActor, arguments)
            .await
            .map_err(|e| ClusterError::Spawn(e.to_string()))?;
        let token_state = Arc::new(ReplicatedTokenState::new(actor.clone(), shared.clone()));
        tracing::info!(id = config.id, region = %config.region, "cluster node started");
        Ok(ClusterNode {
            id: config.id,
            actor,
            actor_task,
            links,
            listener,
            shared,
            token_state,
            region: config.region,
            routing_inbound: std::sync::Mutex::new(Some(routing_inbound)),
        })
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Every region's shard map as applied on this node, updated when it changes.
    pub fn shard_maps(&self) -> watch::Receiver<ShardMaps> {
        self.shared.shard_maps.subscribe()
    }

    /// The senders of this node's current peer links, by peer id.
    pub fn peer_links(&self) -> BTreeMap<u64, PeerLinkSender> {
        self.shared.links.borrow().clone()
    }

    /// This node's peer links, updated when membership opens a link to a new member
    /// (the [`Router`](crate::routing::Router) follows it).
    pub fn peer_links_watch(&self) -> watch::Receiver<BTreeMap<u64, PeerLinkSender>> {
        self.shared.links.subscribe()
    }

    /// The routing messages (forwarded pushes, acks, outcomes) peers send this node: the
    /// first call takes the channel (the [`Router`](crate::routing::Router) does), later
    /// calls get `None`. Until taken, and when the taker lags by
    /// [`ROUTING_INBOUND_CAPACITY`] messages, they are dropped (counted).
    pub fn take_routing_inbound(&self) -> Option<mpsc::Receiver<Inbound>> {
        self.routing_inbound
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address the listener serves.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The actor (to send [`ClusterMsg::Propose`]).
    pub fn actor(&self) -> &ActorRef<ClusterMsg> {
        &self.actor
    }

    /// What this node has applied, updated after every `ready()`.
    pub fn applied(&self) -> watch::Receiver<AppliedState> {
        self.shared.applied.subscribe()
    }

    /// Propose `command` and wait until it is applied here (or `timeout` passes).
    ///
    /// # Errors
    /// [`ProposeError`]; [`ProposeError::Stopped`] also on timeout.
    pub async fn propose(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<ApplyResult, ProposeError> {
        propose(&self.actor, command, timeout).await
    }

    /// What this node has applied (see [`Inspection`]), or `None` if it did not answer
    /// within `timeout` (stopped).
    pub async fn inspect(&self, timeout: Duration) -> Option<Inspection> {
        let (tx, rx) = oneshot::channel();
        self.actor.cast(ClusterMsg::Inspect(tx.into())).ok()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    /// Revoked API keys, read at this node's applied index, and cluster-wide revocation.
    pub fn revocations(&self) -> Revocations {
        Revocations {
            shared: self.shared.clone(),
            actor: self.actor.clone(),
        }
    }

    /// The replicated device registry and feedback log, through this node.
    pub fn devices(&self) -> crate::devices::DeviceDirectory {
        crate::devices::DeviceDirectory::new(self.actor.clone())
    }

    /// The token state replicated through this node.
    pub fn token_state(&self) -> Arc<ReplicatedTokenState> {
        self.token_state.clone()
    }

    /// The provider tokens applied on this node (see [`crate::provider_tokens`]).
    pub(crate) fn provider_token_view(&self) -> watch::Receiver<ProviderTokenView> {
        self.shared.provider.subscribe()
    }

    /// Stop the actor, the links and the listener, and wait until the storage is released.
    pub async fn stop(self) {
        self.actor.stop(Some("node stopped".to_owned()));
        let _ = self.actor_task.await;
        for link in &self.links {
            link.stop(None);
        }
        self.listener.shutdown();
        tracing::info!(id = self.id, "cluster node stopped");
    }
}

pub(crate) async fn propose(
    actor: &ActorRef<ClusterMsg>,
    command: Command,
    timeout: Duration,
) -> Result<ApplyResult, ProposeError> {
    let (tx, rx) = oneshot::channel();
    actor
        .cast(ClusterMsg::Propose(command, tx.into()))
        .map_err(|_| ProposeError::Stopped)?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) | Err(_) => Err(ProposeError::Stopped),
    }
}

// ---------------------------------------------------------------------------------------------
// Replicated token state.
// ---------------------------------------------------------------------------------------------

type EventReply = oneshot::Sender<Result<TokenValidity, TokenStateError>>;

/// herald-actors' [`TokenState`] on the Raft log of one [`ClusterNode`].
///
/// - `check` reads this node's applied token table (local read; see the
///   [module docs](self) for how stale it can be);
/// - `apply` queues the event for a batcher that coalesces events for up to
///   [`TOKEN_EVENTS_BATCH_WINDOW`] or [`TOKEN_EVENTS_BATCH_MAX`] events into one
///   [`Command::TokenEvents`] proposal, and answers once that entry is applied on this
///   node. On a follower the proposal is forwarded to the leader; without a known leader
///   `apply` answers [`TokenStateError::Unavailable`] ("not leader …"). A lost leadership, a
///   full queue or [`TOKEN_EVENT_APPLY_TIMEOUT`] also answer `Unavailable` (the event may
///   still have committed: events are idempotent, retry);
/// - `subscribe` streams the invalidations applied on this node.
#[derive(Debug)]
pub struct ReplicatedTokenState {
    shared: Arc<Shared>,
    queue: mpsc::Sender<(TokenEventRecord, EventReply)>,
    batcher: JoinHandle<()>,
}

impl ReplicatedTokenState {
    fn new(actor: ActorRef<ClusterMsg>, shared: Arc<Shared>) -> Self {
        let (queue, rx) = mpsc::channel(TOKEN_EVENTS_QUEUE_CAPACITY);
        let batcher = tokio::spawn(batch_events(actor, rx));
        ReplicatedTokenState {
            shared,
            queue,
            batcher,
        }
    }
}

impl Drop for ReplicatedTokenState {
    fn drop(&mut self) {
        self.batcher.abort();
    }
}

async fn batch_events(
    actor: ActorRef<ClusterMsg>,
    mut rx: mpsc::Receiver<(TokenEventRecord, EventReply)>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + TOKEN_EVENTS_BATCH_WINDOW;
        while batch.len() < TOKEN_EVENTS_BATCH_MAX {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => batch.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        let actor = actor.clone();
        // Batches are pipelined: the next is collected while this one commits.
        tokio::spawn(async move {
            let (records, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let result = propose(
                &actor,
                Command::TokenEvents(records),
                TOKEN_EVENT_APPLY_TIMEOUT,
            )
            .await;
            match result {
                Ok(ApplyResult::TokenEvents(results)) if results.len() == replies.len() => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result.map(|applied| applied.validity));
                    }
                }
                other => {
                    let error = match other {
                        Err(e) => e.to_string(),
                        Ok(result) => format!("unexpected apply result {result:?}"),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(TokenStateError::Unavailable(error.clone())));
                    }
                }
            }
        });
    }
}

/// Revoked API keys (by key id), replicated through Raft: [`revoke`](Self::revoke) proposes a
/// [`Command::RevokeKey`]; [`is_revoked`](Self::is_revoked) reads this node's applied copy
/// (as stale as its applied index: a revocation is in force on a node once applied there).
#[derive(Clone)]
pub struct Revocations {
    shared: Arc<Shared>,
    actor: ActorRef<ClusterMsg>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let revoked = self
            .shared
            .revoked
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f.debug_struct("Revocations")
            .field("revoked", &revoked.1.len())
            .finish()
    }
}

impl Revocations {
    /// True when key `id` is revoked at `now_ms` (ms since the epoch) on this node.
    pub fn is_revoked(&self, id: &str, now_ms: u64) -> bool {
        self.shared
            .revoked
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .1
            .get(id)
            .is_some_and(|until| *until > now_ms)
    }

    /// Revoke key `id` on every node until `until_ms`; returns once applied on this node.
    ///
    /// # Errors
    /// [`RevokeError::Full`] when the state holds the most revoked keys; else the proposal's
    /// error (an invalid id is [`ProposeError::Refused`]).
    pub async fn revoke(
        &self,
        id: &str,
        until_ms: u64,
        now_ms: u64,
        timeout: Duration,
    ) -> Result<(), RevokeError> {
        let command = Command::RevokeKey {
            id: id.to_owned(),
            until_ms,
            now_ms,
        };
        command
            .validate()
            .map_err(|e| RevokeError::Propose(ProposeError::Refused(e.to_string())))?;
        match propose(&self.actor, command, timeout)
            .await
            .map_err(RevokeError::Propose)?
        {
            ApplyResult::Rejected(crate::state::Rejection::RevocationsFull(n)) => {
                Err(RevokeError::Full(n))
            }
            ApplyResult::Rejected(why) => {
                Err(RevokeError::Propose(ProposeError::Refused(why.to_string())))
            }
            _ => Ok(()),
        }
    }
}

/// Why [`Revocations::revoke`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// The replicated state holds the most revoked keys it may.
    #[error("{0} keys are revoked, the most the state holds")]
    Full(usize),
    /// The proposal failed.
    #[error(transparent)]
    Propose(ProposeError),
}

impl TokenState for ReplicatedTokenState {
    fn check(&self, key: &TokenKey) -> TokenValidity {
        self.shared.tokens().check(key)
    }

    fn apply(
        &self,
        key: TokenKey,
        event: TokenEvent,
    ) -> BoxFuture<'_, Result<TokenValidity, TokenStateError>> {
        Box::pin(async move {
            let record = TokenEventRecord {
                tenant: key.tenant().to_owned(),
                token: key.token().to_owned(),
                event,
            };
            let (tx, rx) = oneshot::channel();
            self.queue
                .try_send((record, tx))
                .map_err(|_| TokenStateError::Unavailable("token event queue full".to_owned()))?;
            rx.await.unwrap_or_else(|_| {
                Err(TokenStateError::Unavailable(
                    "cluster node stopped".to_owned(),
                ))
            })
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        self.shared.invalidations.subscribe()
    }

    fn len(&self) -> usize {
        self.shared.tokens().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::eraftpb::Message;

    /// A follower's state (voters 1 and 2, no links), never started as an actor.
    fn follower_state() -> ClusterState {
        let storage = RaftStorage::in_memory();
        storage
            .initialize(ConfState {
                voters: vec![1, 2],
                ..ConfState::default()
            })
            .unwrap();
        let driver = RaftDriver::new(DriverConfig::new(1), storage, &raft_logger(1)).unwrap();
        let (invalidations, _) = broadcast::channel(TOKEN_INVALIDATIONS_CHANNEL_CAPACITY);
        ClusterState {
            term: driver.term(),
            driver,
            peers: BTreeMap::new(),
            shared: Arc::new(Shared {
                applied: watch::Sender::new(AppliedState::default()),
                invalidations,
                tokens: RwLock::new(TokenTable::new()),
                shard_maps: watch::Sender::new(Arc::new(BTreeMap::new())),
                provider: watch::Sender::new(ProviderTokenView::default()),
                links: watch::Sender::new(BTreeMap::new()),
                revoked: RwLock::new((0, BTreeMap::new())),
            }),
            pending: BTreeMap::new(),
            next_proposal: 0,
            flush_scheduled: false,
            tasks: vec![],
            membership: Membership::new(
                &ClusterConfig::new(
                    1,
                    ClusterId(1),
                    BTreeMap::from([(1, SocketAddr::from(([127, 0, 0, 1], 1)))]),
                    "eu",
                    StorageLocation::InMemory,
                    LinkSecurity::Plaintext,
                ),
                Arc::new(TcpConnector),
            ),
            proposals: ProposalForwards::new(1, Duration::from_millis(100)),
            raft_part_bytes: RAFT_PART_BYTES_DEFAULT,
            next_parted: 0,
            part_senders: BTreeMap::new(),
            reassembly: Reassembly::default(),
            myself: None,
        }
    }

    fn heartbeat(from: u64) -> Vec<u8> {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgHeartbeat);
        message.from = from;
        message.to = 1;
        message.term = 1;
        encode_message(&message).unwrap()
    }

    fn inbound(from: u64, msg: PeerMessage) -> Inbound {
        Inbound {
            from: NodeId(from),
            msg,
        }
    }

    #[test]
    fn steps_only_raft_messages_from_their_authenticated_sender() {
        let mut state = follower_state();
        // Node 3 claims to relay a message of node 2: dropped before raft-rs sees it.
        assert!(!state.step(inbound(3, PeerMessage::Raft(heartbeat(2)))));
        assert!(!state.step(inbound(2, PeerMessage::Raft(b"\x0a\xff\xff".to_vec()))));
        assert!(!state.step(inbound(2, PeerMessage::Ping { nonce: 1 })));
        assert_eq!(state.driver.leader_id(), None);
        assert!(state.step(inbound(2, PeerMessage::Raft(heartbeat(2)))));
        assert_eq!(state.driver.leader_id(), Some(2));
    }

    #[tokio::test]
    async fn a_follower_answers_not_leader() {
        let mut state = follower_state();
        assert!(state.step(inbound(2, PeerMessage::Raft(heartbeat(2)))));
        let (tx, rx) = oneshot::channel();
        let command = Command::RemoveTenant {
            tenant: "t".to_owned(),
        };
        assert!(!state.propose(command, tx.into()));
        assert_eq!(
            rx.await.unwrap(),
            Err(ProposeError::NotLeader { leader: Some(2) })
        );
        assert!(state.pending.is_empty());
    }

    #[test]
    fn the_mirror_replays_to_the_state_machines_table() {
        use crate::state::StateMachine;
        use herald_actors::seams::Timestamp;

        let state = follower_state();
        let mut machine = StateMachine::new();
        state.shared.set_tokens(machine.token_table().clone());
        let record = |token: &str, event| TokenEventRecord {
            tenant: "t".to_owned(),
            token: token.to_owned(),
            event,
        };
        let at = Timestamp::from_secs(5);
        let command = Command::TokenEvents(vec![
            record("aa", TokenEvent::Registered { at }),
            record("bb", TokenEvent::Invalidated { at }),
            record("aa", TokenEvent::Invalidated { at }),
        ]);
        let bytes = crate::state::encode(&command).unwrap();
        machine.apply_bytes(1, &bytes);
        assert!(state.shared.mirror(&bytes));
        assert_eq!(*state.shared.tokens(), *machine.token_table());
        assert!(!state.shared.mirror(b"not a command"));
    }
}
