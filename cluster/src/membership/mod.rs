//! Cluster membership: bootstrap, join, drain, remove, and the status of the cluster
//! (DESIGN.md §4, §5). See `docs/cluster.md` for the operator's view.
//!
//! ```text
//!            join()                   leader: AddLearner      leader: Promote (joint, auto-leave)
//!   (none) ─────────▶ Joining ──────▶ Joining+learner ──caught up──▶ Joining+voter
//!                        │                                               │ leader: SetMemberState
//!                        │ remove()                                      ▼
//!                        │                 drain()                    Active ◀── leader rebalances
//!                        │           ┌──────────────────────────────  │     │    the region's shards
//!                        │           ▼                                 │     │
//!                        │       Draining ── its shards reassigned,    │     │ remove()
//!                        │           │       its backlog empty (the    │     │ (dead node:
//!                        │           │       node itself proposes)     │     │  shards move at once)
//!                        ▼           ▼                                 ▼     ▼
//!                      Removed ◀─────────────────────────────────────────────┘
//!                        │ leader: RemoveNode (joint, auto-leave); a removed leader hands
//!                        ▼ leadership to the most caught-up voter first
//!                   out of the Raft configuration
//! ```
//!
//! The replicated state (members and shard maps in the
//! [`StateMachine`](crate::state::StateMachine)) says what the cluster should be; the Raft
//! configuration (voters, learners) follows it. On every tick the leader runs the pure
//! planner ([`plan::plan`]) and takes its steps; a step is proposed only when the previous
//! one was applied (or [`MEMBERSHIP_RETRY_TICKS`] passed, or the term changed), and every
//! step is idempotent, so a new leader simply continues where the old one stopped.
//!
//! The admin operations ([`ClusterNode::join`], [`ClusterNode::drain`],
//! [`ClusterNode::remove`]) may be called on any member: the command is proposed there and
//! raft-rs forwards it to the leader. They check the request against the state applied on
//! that node (a precise [`MembershipError`]), propose, and return once the change is applied
//! there (retrying a lost forward every [`ADMIN_RETRY_INTERVAL`]). What follows (catching
//! up, promotion, shard handoff, removal from the configuration) happens in the background;
//! watch it with [`ClusterNode::status`] or [`ClusterNode::await_status`].
//!
//! Every node also opens a peer link to each member it learns of from the applied state, so
//! a node added with `join` is reachable by all without a restart.
//!
//! Each step the leader takes is logged and counted in
//! `herald_membership_steps_total{step}` (`add_member`, `set_member_state`, `assign_shards`,
//! `add_learner`, `promote`, `remove_node`, `transfer_leader`).
//!
//! Fencing (DESIGN.md §4): a region's shard map holds exactly one owner per shard per epoch,
//! epochs only grow (the state machine refuses any other `AssignShards`), and only `Active`
//! members of the region may be named owners.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use herald_actors::seams::{DetRng, SharedConnector};
use ractor::{Actor, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::node::{ClusterConfig, ClusterMsg, ClusterNode};
use crate::raft::{DriverError, RaftDriver, Role};
use crate::state::{Command, CommandError, MemberState, NodeId};
use crate::transport::{
    ClusterId, LinkSecurity, LinkTimings, PeerLink, PeerLinkArguments, PeerLinkConfig, PeerLinkMsg,
    PeerLinkSender,
};

use self::plan::{PlanInput, Step, owned_shards};

// ---------------------------------------------------------------------------------------------
// Limits and defaults.
// ---------------------------------------------------------------------------------------------

/// Default number of virtual shards per region, fixed when the cluster is created.
pub const SHARD_COUNT_DEFAULT: usize = 1024;
/// Default: a learner whose matched index is within this many entries of the leader's last
/// index is promoted to voter.
pub const PROMOTE_LAG_ENTRIES_MAX_DEFAULT: u64 = 64;
/// Default of [`MembershipConfig::failover_after`].
pub const FAILOVER_AFTER_DEFAULT: Duration = Duration::from_secs(30);
/// Ticks the leader waits for its last membership step to apply before planning again
/// (a lost proposal is retried after this).
pub const MEMBERSHIP_RETRY_TICKS: u64 = 25;
/// How often an admin operation re-proposes its command while waiting for it to apply.
pub const ADMIN_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// How long [`ClusterNode::status`] waits for the node's actor.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// The context bytes of membership proposals (not a client proposal: nobody awaits them).
pub const MEMBERSHIP_CONTEXT: &[u8] = b"herald/membership";

const _: () = assert!(MEMBERSHIP_RETRY_TICKS > 0);
const _: () = assert!(
    MEMBERSHIP_CONTEXT.len() != 8,
    "8-byte contexts are client proposals"
);

// ---------------------------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------------------------

/// What a node reports about the pushes it still holds for shards it no longer owns.
///
/// A draining node leaves only when its shards were reassigned **and** its probe reports no
/// backlog for them. The push engine implements it (`Herald::pending()`); [`NoBacklog`]
/// stands in for a node without an engine.
pub trait BacklogProbe: Send + Sync + fmt::Debug + 'static {
    /// Pushes accepted for `shards` of `region` on this node and not finished yet.
    fn pending(&self, region: &str, shards: &[usize]) -> usize;
}

/// A [`BacklogProbe`] that never has a backlog (a node without a push engine).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBacklog;

impl BacklogProbe for NoBacklog {
    fn pending(&self, _region: &str, _shards: &[usize]) -> usize {
        0
    }
}

/// How a node enters the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMode {
    /// A founder: on first start its storage is bootstrapped with
    /// [`ClusterConfig::peers`](crate::node::ClusterConfig::peers) as the voters. Default.
    #[default]
    Bootstrap,
    /// A new node joining a running cluster: its storage starts empty and it waits for the
    /// leader's snapshot. `peers` must name the current members (so it can answer the
    /// leader); add it with [`ClusterNode::join`] on any member.
    Join,
}

/// Membership settings of a node.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// How this node enters the cluster. Default: [`StartMode::Bootstrap`].
    pub start: StartMode,
    /// Shards per region, used when a region gets its first shard map. Must be the same on
    /// every node. Default: [`SHARD_COUNT_DEFAULT`].
    pub shard_count: usize,
    /// Regions of the founding voters; a founder not listed is in this node's region.
    /// Default: empty.
    pub founder_regions: BTreeMap<NodeId, String>,
    /// A learner this close to the leader's log is promoted. Default:
    /// [`PROMOTE_LAG_ENTRIES_MAX_DEFAULT`].
    pub promote_lag_entries_max: u64,
    /// The backlog of shards this node no longer owns. Default: [`NoBacklog`].
    pub backlog: Arc<dyn BacklogProbe>,
    /// Whether the leader runs the planner (bootstrap, promotion, rebalancing). Default: true.
    /// Off, only explicit commands change members and shard maps: for operators who pin
    /// shards by hand, and for tests that drive every epoch themselves.
    pub planner: bool,
    /// An active member the leader has heard nothing from (no Raft message, no answer) for
    /// this long loses its shards to the region's other active members, until it is heard
    /// from again; it stays a member (an operator `remove`s a node that is gone for good).
    /// `None`: never. Default: [`FAILOVER_AFTER_DEFAULT`]. Keep it well above the election
    /// timeout, so a slow but live node is not failed over at every hiccup.
    pub failover_after: Option<Duration>,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            start: StartMode::Bootstrap,
            shard_count: SHARD_COUNT_DEFAULT,
            founder_regions: BTreeMap::new(),
            promote_lag_entries_max: PROMOTE_LAG_ENTRIES_MAX_DEFAULT,
            backlog: Arc::new(NoBacklog),
            planner: true,
            failover_after: Some(FAILOVER_AFTER_DEFAULT),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Status and errors.
// ---------------------------------------------------------------------------------------------

/// A member's place in the Raft configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Voting {
    /// Votes (and counts for commits).
    Voter,
    /// Receives the log, does not vote.
    Learner,
    /// Not in the configuration (not added yet, or removed).
    Outside,
}

/// One member, as [`ClusterNode::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its node id.
    pub id: NodeId,
    /// Its transport address.
    pub addr: String,
    /// Its region.
    pub region: String,
    /// Its life-cycle state.
    pub state: MemberState,
    /// Its place in the Raft configuration.
    pub voting: Voting,
}

/// One region's shard map, summarized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionStatus {
    /// The region.
    pub region: String,
    /// The map's epoch.
    pub epoch: u64,
    /// Its shard count.
    pub shards: usize,
    /// Shards owned per node.
    pub owned: BTreeMap<NodeId, usize>,
}

/// The cluster as one node sees it (local read at its applied index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The node answering.
    pub id: NodeId,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// Its commit index.
    pub committed_index: u64,
    /// Every member, by id.
    pub members: Vec<MemberStatus>,
    /// The voters in force (sorted).
    pub voters: Vec<NodeId>,
    /// The learners in force (sorted).
    pub learners: Vec<NodeId>,
    /// Every region's shard map.
    pub regions: Vec<RegionStatus>,
    /// On the leader: active members silent past `failover_after`, whose shards failed over
    /// to the other members of their region (sorted). Empty on followers.
    pub unreachable: Vec<NodeId>,
}

impl ClusterStatus {
    /// The member `id`, if known.
    pub fn member(&self, id: NodeId) -> Option<&MemberStatus> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The shard map summary of `region`, if it has one.
    pub fn region(&self, region: &str) -> Option<&RegionStatus> {
        self.regions.iter().find(|r| r.region == region)
    }
}

/// Why a membership operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// No leader is known: nothing can be proposed. Retry later.
    #[error("no leader known")]
    NoLeader,
    /// No member with this id.
    #[error("unknown member {0}")]
    UnknownMember(NodeId),
    /// The member was removed; ids are never reused.
    #[error("member {0} was removed")]
    MemberRemoved(NodeId),
    /// A member with this id exists with another address or region.
    #[error("member {0} exists with another address or region")]
    MemberExists(NodeId),
    /// The member is not in a state the operation applies to.
    #[error("member {id} is {state:?}")]
    WrongState {
        /// The member.
        id: NodeId,
        /// Its state.
        state: MemberState,
    },
    /// Draining it would leave its region without an active member to own the shards.
    #[error("member {id} is the last active member of region {region}")]
    LastActiveInRegion {
        /// The member.
        id: NodeId,
        /// Its region.
        region: String,
    },
    /// Removing it would leave the cluster without a voter.
    #[error("member {0} is the last voter")]
    LastVoter(NodeId),
    /// The command is invalid.
    #[error(transparent)]
    Invalid(#[from] CommandError),
    /// Raft refused the proposal (its error text).
    #[error("proposal refused: {0}")]
    Refused(String),
    /// The change was not applied on this node in time (it may still be).
    #[error("timed out waiting for the change to apply")]
    Timeout,
    /// The node stopped.
    #[error("cluster node stopped")]
    Stopped,
}

/// Messages for the membership part of the [`ClusterActor`](crate::node::ClusterActor).
#[derive(Debug)]
#[non_exhaustive]
pub enum MembershipMsg {
    /// Report the status.
    Status(RpcReplyPort<ClusterStatus>),
    /// Propose a membership command (forwarded to the leader by raft-rs on a follower).
    Propose(Command, RpcReplyPort<Result<(), MembershipError>>),
}

// ---------------------------------------------------------------------------------------------
// The admin API on the node handle.
// ---------------------------------------------------------------------------------------------

/// A cloneable handle on a node's membership: read its [`ClusterStatus`] and run the admin
/// operations (join, drain, remove) without holding the [`ClusterNode`] (an HTTP API keeps
/// one). Once the node stopped, every call answers [`MembershipError::Stopped`].
#[derive(Debug, Clone)]
pub struct MembershipHandle {
    actor: ActorRef<ClusterMsg>,
}

impl MembershipHandle {
    /// The cluster as the node sees it at its applied index.
    ///
    /// # Errors
    /// [`MembershipError::Stopped`] if the node stopped or did not answer within
    /// [`STATUS_TIMEOUT`].
    pub async fn status(&self) -> Result<ClusterStatus, MembershipError> {
        let (tx, rx) = oneshot::channel();
        self.actor
            .cast(ClusterMsg::Membership(MembershipMsg::Status(tx.into())))
            .map_err(|_| MembershipError::Stopped)?;
        match tokio::time::timeout(STATUS_TIMEOUT, rx).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(_)) | Err(_) => Err(MembershipError::Stopped),
        }
    }

    /// Poll [`status`](Self::status) until `done` holds; return that status.
    ///
    /// # Errors
    /// [`MembershipError::Timeout`] after `timeout`, or as `status`.
    pub async fn await_status(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&ClusterStatus) -> bool,
    ) -> Result<ClusterStatus, MembershipError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status().await?;
            if done(&status) {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MembershipError::Timeout);
            }
            tokio::time::sleep(ADMIN_RETRY_INTERVAL / 5).await;
        }
    }

    /// Add node `id` (at transport address `addr`, in `region`) as a `Joining` member. The
    /// leader then adds it as a learner, promotes it once caught up, marks it `Active` and
    /// rebalances its region. Start the new node with [`StartMode::Join`]. Returns once the
    /// member is known on this node.
    ///
    /// # Errors
    /// [`MembershipError::MemberExists`] / [`MembershipError::MemberRemoved`] if the id is
    /// taken, [`MembershipError::Invalid`] for an empty address or region, else as
    /// [`status`](Self::status) plus [`MembershipError::NoLeader`] and
    /// [`MembershipError::Timeout`].
    pub async fn join(
        &self,
        id: NodeId,
        addr: impl Into<String>,
        region: impl Into<String>,
        timeout: Duration,
    ) -> Result<(), MembershipError> {
        let (addr, region) = (addr.into(), region.into());
        let command = Command::AddMember {
            id,
            addr: addr.clone(),
            region: region.clone(),
        };
        command.validate()?;
        self.propose_until(command, timeout, |status, _| match status.member(id) {
            None => Ok(false),
            Some(m) if m.state == MemberState::Removed => Err(MembershipError::MemberRemoved(id)),
            Some(m) if m.addr == addr && m.region == region => Ok(true),
            Some(_) => Err(MembershipError::MemberExists(id)),
        })
        .await
    }

    /// Drain member `id`: it stops owning shards (its region is rebalanced without it, at a
    /// new epoch), finishes the backlog of its old shards (its [`BacklogProbe`]), then
    /// leaves (`Removed`, out of the Raft configuration). Returns once `Draining` is
    /// applied on this node.
    ///
    /// # Errors
    /// [`MembershipError::UnknownMember`], [`MembershipError::MemberRemoved`],
    /// [`MembershipError::WrongState`] for a member still joining,
    /// [`MembershipError::LastActiveInRegion`], else as [`join`](Self::join).
    pub async fn drain(&self, id: NodeId, timeout: Duration) -> Result<(), MembershipError> {
        let command = Command::SetMemberState {
            id,
            state: MemberState::Draining,
        };
        self.propose_until(command, timeout, |status, proposed| {
            let member = status
                .member(id)
                .ok_or(MembershipError::UnknownMember(id))?;
            match member.state {
                MemberState::Draining => Ok(true),
                // A quick drain may be over before this node is asked again.
                MemberState::Removed if proposed => Ok(true),
                MemberState::Removed => Err(MembershipError::MemberRemoved(id)),
                MemberState::Joining => Err(MembershipError::WrongState {
                    id,
                    state: member.state,
                }),
                MemberState::Active => {
                    let others_active = status.members.iter().any(|m| {
                        m.id != id && m.region == member.region && m.state == MemberState::Active
                    });
                    if others_active {
                        Ok(false)
                    } else {
                        Err(MembershipError::LastActiveInRegion {
                            id,
                            region: member.region.clone(),
                        })
                    }
                }
            }
        })
        .await
    }

    /// Remove member `id` now (a dead or lost node): it is marked `Removed`, its shards are
    /// reassigned at once (new epoch) without waiting for any backlog, and it leaves the
    /// Raft configuration. Returns once `Removed` is applied on this node.
    ///
    /// # Errors
    /// [`MembershipError::UnknownMember`], [`MembershipError::LastVoter`], else as
    /// [`join`](Self::join).
    pub async fn remove(&self, id: NodeId, timeout: Duration) -> Result<(), MembershipError> {
        let command = Command::SetMemberState {
            id,
            state: MemberState::Removed,
        };
        self.propose_until(command, timeout, |status, _| {
            let member = status
                .member(id)
                .ok_or(MembershipError::UnknownMember(id))?;
            if member.state == MemberState::Removed {
                return Ok(true);
            }
            if status.voters.iter().all(|&v| v == id) {
                return Err(MembershipError::LastVoter(id));
            }
            Ok(false)
        })
        .await
    }

    /// Propose `command` until `done` (checked on this node's status first, then after
    /// each proposal; its second argument says whether `command` was proposed yet) says it
    /// is applied, or errors.
    async fn propose_until(
        &self,
        command: Command,
        timeout: Duration,
        mut done: impl FnMut(&ClusterStatus, bool) -> Result<bool, MembershipError>,
    ) -> Result<(), MembershipError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut proposed = false;
        loop {
            if done(&self.status().await?, proposed)? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MembershipError::Timeout);
            }
            let (tx, rx) = oneshot::channel();
            self.actor
                .cast(ClusterMsg::Membership(MembershipMsg::Propose(
                    command.clone(),
                    tx.into(),
                )))
                .map_err(|_| MembershipError::Stopped)?;
            match rx.await {
                Ok(Ok(())) => proposed = true,
                Ok(Err(MembershipError::NoLeader)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(MembershipError::Stopped),
            }
            // Wait for the apply (checked above on the next round), re-proposing if the
            // forward was lost.
            let wait_until = tokio::time::Instant::now() + ADMIN_RETRY_INTERVAL;
            while tokio::time::Instant::now() < wait_until {
                if done(&self.status().await?, proposed)? {
                    return Ok(());
                }
                tokio::time::sleep(ADMIN_RETRY_INTERVAL / 10).await;
            }
        }
    }
}

impl ClusterNode {
    /// A cloneable handle on this node's membership (status, join, drain, remove).
    pub fn membership_handle(&self) -> MembershipHandle {
        MembershipHandle {
            actor: self.actor().clone(),
        }
    }

    /// The cluster as this node sees it at its applied index.
    ///
    /// # Errors
    /// As [`MembershipHandle::status`].
    pub async fn status(&self) -> Result<ClusterStatus, MembershipError> {
        self.membership_handle().status().await
    }

    /// Poll [`status`](Self::status) until `done` holds; return that status.
    ///
    /// # Errors
    /// As [`MembershipHandle::await_status`].
    pub async fn await_status(
        &self,
        timeout: Duration,
        done: impl FnMut(&ClusterStatus) -> bool,
    ) -> Result<ClusterStatus, MembershipError> {
        self.membership_handle().await_status(timeout, done).await
    }

    /// Add node `id` as a `Joining` member: see [`MembershipHandle::join`].
    ///
    /// # Errors
    /// As [`MembershipHandle::join`].
    pub async fn join(
        &self,
        id: NodeId,
        addr: impl Into<String>,
        region: impl Into<String>,
        timeout: Duration,
    ) -> Result<(), MembershipError> {
        self.membership_handle()
            .join(id, addr, region, timeout)
            .await
    }

    /// Drain member `id`: see [`MembershipHandle::drain`].
    ///
    /// # Errors
    /// As [`MembershipHandle::drain`].
    pub async fn drain(&self, id: NodeId, timeout: Duration) -> Result<(), MembershipError> {
        self.membership_handle().drain(id, timeout).await
    }

    /// Remove member `id` now: see [`MembershipHandle::remove`].
    ///
    /// # Errors
    /// As [`MembershipHandle::remove`].
    pub async fn remove(&self, id: NodeId, timeout: Duration) -> Result<(), MembershipError> {
        self.membership_handle().remove(id, timeout).await
    }
}

// ---------------------------------------------------------------------------------------------
// The actor side.
// ---------------------------------------------------------------------------------------------

/// A step proposed by the leader and not applied yet.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    index: u64,
    term: u64,
    tick: u64,
}

/// The membership state of the cluster actor: the planner's bookkeeping and the peer links
/// it opened for members learned from the applied state.
#[derive(Debug)]
pub(crate) struct Membership {
    me: NodeId,
    config: MembershipConfig,
    founders: BTreeMap<NodeId, (String, String)>,
    cluster: ClusterId,
    security: LinkSecurity,
    link_timings: LinkTimings,
    /// How links to newly learned members connect (TCP, or the simulator's network).
    connector: SharedConnector,
    links: Vec<ActorRef<PeerLinkMsg>>,
    unreachable: BTreeMap<NodeId, String>,
    ticks: u64,
    in_flight: Option<InFlight>,
    last_leave_proposal: Option<u64>,
    last_owned: BTreeMap<String, Vec<usize>>,
    /// Failover: the tick each peer was last heard from, the tick this node became leader
    /// (every peer gets that long from then), the ticks of silence that make a member
    /// unreachable, and the members found unreachable (as last planned).
    heard: BTreeMap<NodeId, u64>,
    leading_since: Option<u64>,
    failover_ticks: Option<u64>,
    unreachable_members: BTreeSet<NodeId>,
}

impl Membership {
    pub(crate) fn new(config: &ClusterConfig, connector: SharedConnector) -> Self {
        let founders = config
            .peers
            .iter()
            .map(|(&id, addr)| {
                let region = config
                    .membership
                    .founder_regions
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| config.region.clone());
                (id, (addr.to_string(), region))
            })
            .collect();
        Membership {
            me: config.id,
            config: config.membership.clone(),
            founders,
            cluster: config.cluster,
            security: config.security.clone(),
            link_timings: config.link_timings,
            connector,
            links: Vec::new(),
            unreachable: BTreeMap::new(),
            ticks: 0,
            in_flight: None,
            last_leave_proposal: None,
            last_owned: BTreeMap::new(),
            heard: BTreeMap::new(),
            leading_since: None,
            failover_ticks: config.membership.failover_after.map(|after| {
                let tick = config.tick.as_millis().max(1);
                u64::try_from(after.as_millis().div_ceil(tick)).unwrap_or(u64::MAX)
            }),
            unreachable_members: BTreeSet::new(),
        }
    }

    /// A message from `peer` arrived (any kind): it is reachable.
    pub(crate) fn heard_from(&mut self, peer: NodeId) {
        self.heard.insert(peer, self.ticks);
    }

    /// Active members (not this node) silent for the failover period, as the leader sees
    /// them; logged and counted when the set changes.
    fn unreachable(&mut self, driver: &RaftDriver) -> BTreeSet<NodeId> {
        let (Some(limit), Some(since)) = (self.failover_ticks, self.leading_since) else {
            return BTreeSet::new();
        };
        let now = self.ticks;
        let silent: BTreeSet<NodeId> = driver
            .machine()
            .members()
            .values()
            .filter(|m| m.id != self.me && m.state == MemberState::Active)
            .filter(|m| {
                let last = self.heard.get(&m.id).copied().unwrap_or(0).max(since);
                now.saturating_sub(last) > limit
            })
            .map(|m| m.id)
            .collect();
        if silent != self.unreachable_members {
            for id in silent.difference(&self.unreachable_members) {
                tracing::warn!(id, "member unreachable: its shards fail over to the others");
            }
            for id in self.unreachable_members.difference(&silent) {
                tracing::info!(id, "member reachable again: it gets its shards back");
            }
            metrics::gauge!("herald_membership_unreachable_members").set(silent.len() as f64);
            self.unreachable_members = silent.clone();
        }
        silent
    }

    /// Answer a [`MembershipMsg`]; true if the driver has work (a proposal went in).
    pub(crate) fn handle(&mut self, message: MembershipMsg, driver: &mut RaftDriver) -> bool {
        match message {
            MembershipMsg::Status(reply) => {
                let _ = reply.send(status(driver, &self.unreachable_members));
                false
            }
            MembershipMsg::Propose(command, reply) => {
                let result = driver
                    .propose_command(MEMBERSHIP_CONTEXT.to_vec(), &command)
                    .map_err(|e| match e {
                        DriverError::ProposalDropped => MembershipError::NoLeader,
                        DriverError::Command(e) => MembershipError::Invalid(e),
                        e => MembershipError::Refused(e.to_string()),
                    });
                let proposed = result.is_ok();
                let _ = reply.send(result);
                proposed
            }
        }
    }

    /// Once per tick, after `ready()`: open links to new members, let a draining node leave
    /// once its backlog is done, and on the leader take the planner's next steps. True if
    /// the driver has work.
    pub(crate) async fn on_tick(
        &mut self,
        driver: &mut RaftDriver,
        peers: &mut BTreeMap<NodeId, PeerLinkSender>,
    ) -> bool {
        self.ticks += 1;
        self.open_links(driver, peers).await;
        let mut proposed = self.leave_when_drained(driver);
        if driver.role() == Role::Leader {
            self.leading_since.get_or_insert(self.ticks);
        } else {
            self.leading_since = None;
            // Only a leader judges who is silent.
            self.unreachable_members.clear();
        }
        if driver.role() == Role::Leader && self.config.planner {
            proposed |= self.lead(driver);
        } else {
            self.in_flight = None;
        }
        proposed
    }

    /// Stop the links this module opened.
    pub(crate) fn stop(&mut self) {
        for link in self.links.drain(..) {
            link.stop(None);
        }
    }

    async fn open_links(
        &mut self,
        driver: &RaftDriver,
        peers: &mut BTreeMap<NodeId, PeerLinkSender>,
    ) {
        let wanted: Vec<(NodeId, String)> = driver
            .machine()
            .members()
            .values()
            .filter(|m| m.id != self.me && m.state != MemberState::Removed)
            .filter(|m| !peers.contains_key(&m.id))
            .map(|m| (m.id, m.addr.clone()))
            .collect();
        for (id, addr) in wanted {
            let Some((host, port)) = split_addr(&addr) else {
                if self.unreachable.insert(id, addr.clone()).is_none() {
                    tracing::warn!(id, addr, "member address is not host:port; no link");
                }
                continue;
            };
            let mut config = PeerLinkConfig::new(
                crate::transport::NodeId(self.me),
                crate::transport::NodeId(id),
                self.cluster,
                host,
                port,
                self.security.clone(),
                self.connector.clone(),
                DetRng::from_seed(self.me.wrapping_mul(1_000_003) ^ id),
            );
            config.timings = self.link_timings;
            let (arguments, sender) = PeerLinkArguments::new(config);
            match Actor::spawn(None, PeerLink, arguments).await {
                Ok((link, _)) => {
                    tracing::info!(id, addr, "link to new member opened");
                    self.links.push(link);
                    peers.insert(id, sender);
                }
                Err(e) => tracing::warn!(id, error = %e, "link to new member not spawned"),
            }
        }
    }

    /// A draining node whose shards were all reassigned and whose backlog is empty proposes
    /// its own removal (forwarded to the leader), every [`MEMBERSHIP_RETRY_TICKS`].
    fn leave_when_drained(&mut self, driver: &mut RaftDriver) -> bool {
        let machine = driver.machine();
        let owned = owned_shards(machine, self.me);
        let draining = machine
            .members()
            .get(&self.me)
            .is_some_and(|m| m.state == MemberState::Draining);
        if !owned.is_empty() {
            self.last_owned = owned;
            return false;
        }
        if !draining {
            return false;
        }
        let backlog: usize = self
            .last_owned
            .iter()
            .map(|(region, shards)| self.config.backlog.pending(region, shards))
            .sum();
        if backlog > 0 {
            tracing::debug!(id = self.me, backlog, "draining: backlog not finished");
            return false;
        }
        if self
            .last_leave_proposal
            .is_some_and(|at| self.ticks < at + MEMBERSHIP_RETRY_TICKS)
        {
            return false;
        }
        self.last_leave_proposal = Some(self.ticks);
        let command = Command::SetMemberState {
            id: self.me,
            state: MemberState::Removed,
        };
        match driver.propose_command(MEMBERSHIP_CONTEXT.to_vec(), &command) {
            Ok(()) => {
                tracing::info!(id = self.me, "drained: leaving the cluster");
                true
            }
            Err(e) => {
                tracing::debug!(id = self.me, error = %e, "leave not proposed yet");
                false
            }
        }
    }

    fn lead(&mut self, driver: &mut RaftDriver) -> bool {
        if let Some(in_flight) = self.in_flight {
            let applied = driver.machine().applied_index() >= in_flight.index;
            let stale = in_flight.term != driver.term()
                || self.ticks >= in_flight.tick + MEMBERSHIP_RETRY_TICKS;
            if !applied && !stale {
                return false;
            }
            self.in_flight = None;
        }
        let conf = driver.conf_state();
        let matched: BTreeMap<NodeId, u64> = conf
            .voters
            .iter()
            .chain(&conf.learners)
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners_next)
            .filter_map(|&id| driver.matched_index(id).map(|m| (id, m)))
            .collect();
        let unreachable = self.unreachable(driver);
        let steps = plan::plan(&PlanInput {
            me: self.me,
            machine: driver.machine(),
            conf: &conf,
            conf_change_pending: driver.conf_change_pending(),
            last_index: driver.last_index(),
            matched: &matched,
            founders: &self.founders,
            shard_count: self.config.shard_count,
            promote_lag_entries_max: self.config.promote_lag_entries_max,
            unreachable: &unreachable,
        });
        if steps.is_empty() {
            return false;
        }
        let context = || MEMBERSHIP_CONTEXT.to_vec();
        for step in steps {
            tracing::info!(
                id = self.me,
                step = step.kind(),
                subject = %step.subject(),
                "membership step"
            );
            metrics::counter!("herald_membership_steps_total", "step" => step.kind()).increment(1);
            let result = match &step {
                Step::Propose(command) => driver.propose_command(context(), command),
                Step::AddLearner(id) => driver.propose_add_learner(context(), *id),
                Step::Promote(id) => driver.propose_promote(context(), *id),
                Step::RemoveNode(id) => driver.propose_remove(context(), *id),
                Step::TransferLeader(id) => {
                    driver.transfer_leader(*id);
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::warn!(
                    id = self.me,
                    step = step.kind(),
                    subject = %step.subject(),
                    error = %e,
                    "membership step refused"
                );
            }
        }
        self.in_flight = Some(InFlight {
            index: driver.last_index(),
            term: driver.term(),
            tick: self.ticks,
        });
        true
    }
}

/// The status of the cluster as applied on `driver`'s node.
fn status(driver: &RaftDriver, unreachable: &BTreeSet<NodeId>) -> ClusterStatus {
    let conf = driver.conf_state();
    let machine = driver.machine();
    let voting = |id: NodeId| {
        if conf.voters.contains(&id) || conf.voters_outgoing.contains(&id) {
            Voting::Voter
        } else if conf.learners.contains(&id) || conf.learners_next.contains(&id) {
            Voting::Learner
        } else {
            Voting::Outside
        }
    };
    ClusterStatus {
        id: driver.id(),
        leader: driver.leader_id(),
        term: driver.term(),
        applied_index: machine.applied_index(),
        committed_index: driver.committed_index(),
        members: machine
            .members()
            .values()
            .map(|m| MemberStatus {
                id: m.id,
                addr: m.addr.clone(),
                region: m.region.clone(),
                state: m.state,
                voting: voting(m.id),
            })
            .collect(),
        voters: conf.voters.clone(),
        learners: conf.learners.clone(),
        regions: machine
            .shard_maps()
            .iter()
            .map(|(region, map)| {
                let mut owned = BTreeMap::new();
                for &owner in &map.owners {
                    *owned.entry(owner).or_insert(0) += 1;
                }
                RegionStatus {
                    region: region.clone(),
                    epoch: map.epoch,
                    shards: map.owners.len(),
                    owned,
                }
            })
            .collect(),
        unreachable: unreachable.iter().copied().collect(),
    }
}

/// `host:port` → (`host`, `port`); IPv6 hosts may be bracketed.
fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_addr("127.0.0.1:7000"),
            Some(("127.0.0.1".to_owned(), 7000))
        );
        assert_eq!(split_addr("[::1]:7000"), Some(("::1".to_owned(), 7000)));
        assert_eq!(
            split_addr("node-4.herald:7"),
            Some(("node-4.herald".to_owned(), 7))
        );
        assert_eq!(split_addr("nohost"), None);
        assert_eq!(split_addr(":7000"), None);
        assert_eq!(split_addr("h:notaport"), None);
    }
}
