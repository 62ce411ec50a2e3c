//! [`RaftDriver`]: the sans-IO shell around raft-rs `RawNode` and the state machine.

use protobuf::Message as PbMessage;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    Entry, EntryType, Message, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};

use super::storage::{RaftStorage, StorageError};
use super::{
    ELECTION_TICK_DEFAULT, HEARTBEAT_TICK_DEFAULT, LOG_ENTRIES_KEPT_DEFAULT,
    SNAPSHOT_THRESHOLD_ENTRIES_DEFAULT,
};
use crate::state::{ApplyResult, Command, CommandError, SnapshotError, StateMachine};

/// A node's Raft settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// This node's id (non-zero).
    pub id: u64,
    /// Ticks without a leader before a follower campaigns. Default:
    /// [`ELECTION_TICK_DEFAULT`].
    pub election_tick: usize,
    /// Ticks between heartbeats. Default: [`HEARTBEAT_TICK_DEFAULT`].
    pub heartbeat_tick: usize,
    /// Lower bound of the randomized election timeout; 0 means `election_tick`.
    pub min_election_tick: usize,
    /// Upper bound (exclusive) of the randomized election timeout; 0 means
    /// `2 × election_tick`.
    pub max_election_tick: usize,
    /// Snapshot and compact once this many applied entries sit past the last compaction.
    /// Default: [`SNAPSHOT_THRESHOLD_ENTRIES_DEFAULT`].
    pub snapshot_threshold_entries: u64,
    /// Entries kept behind a new snapshot. Default: [`LOG_ENTRIES_KEPT_DEFAULT`].
    pub log_entries_kept: u64,
}

impl DriverConfig {
    /// Defaults for node `id`: pre-vote and check-quorum on, timeouts from the named
    /// defaults.
    pub fn new(id: u64) -> Self {
        DriverConfig {
            id,
            election_tick: ELECTION_TICK_DEFAULT,
            heartbeat_tick: HEARTBEAT_TICK_DEFAULT,
            min_election_tick: 0,
            max_election_tick: 0,
            snapshot_threshold_entries: SNAPSHOT_THRESHOLD_ENTRIES_DEFAULT,
            log_entries_kept: LOG_ENTRIES_KEPT_DEFAULT,
        }
    }

    /// Make the election timeout exactly `ticks` (`max = min + 1`): no randomness from
    /// raft-rs's `thread_rng()`. Give every node a different value, all ≥ `election_tick`.
    pub fn fixed_election_timeout(&mut self, ticks: usize) -> &mut Self {
        self.min_election_tick = ticks;
        self.max_election_tick = ticks + 1;
        self
    }

    fn to_raft(&self, applied: u64) -> Result<raft::Config, DriverError> {
        if self.snapshot_threshold_entries <= self.log_entries_kept {
            return Err(DriverError::Config(
                "snapshot_threshold_entries must exceed log_entries_kept".to_owned(),
            ));
        }
        let config = raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            min_election_tick: self.min_election_tick,
            max_election_tick: self.max_election_tick,
            applied,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..raft::Config::default()
        };
        config
            .validate()
            .map_err(|e| DriverError::Config(e.to_string()))?;
        Ok(config)
    }
}

/// A node's Raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Following a leader (or waiting for one).
    Follower,
    /// Probing whether it could win an election (pre-vote).
    PreCandidate,
    /// Campaigning.
    Candidate,
    /// Leading.
    Leader,
}

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Self {
        match role {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// What one committed entry was and what applying it did.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedEntry {
    /// Its log index.
    pub index: u64,
    /// The term it was proposed in.
    pub term: u64,
    /// The proposer's context bytes (empty unless given to
    /// [`RaftDriver::propose`]).
    pub context: Vec<u8>,
    /// The encoded command of a [`CommittedKind::Command`] entry (empty for other kinds), so
    /// a shell can mirror what was applied without reading the log.
    pub data: Vec<u8>,
    /// Its kind and result.
    pub kind: CommittedKind,
}

/// The kind of a committed entry.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CommittedKind {
    /// An empty entry (a new leader's first).
    Empty,
    /// A command, applied to the state machine with this result.
    Command(ApplyResult),
    /// A configuration change, now in force.
    ConfChange(ConfState),
    /// A configuration change raft-rs refused to apply (every replica refuses it alike).
    ConfChangeRejected(String),
}

/// What one [`RaftDriver::ready`] produced. Everything in it is already durable: the
/// messages may be sent at once, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadyOutput {
    /// Messages to send to peers (`message.to`), in order.
    pub messages: Vec<Message>,
    /// Entries applied to the state machine, in log order.
    pub committed: Vec<CommittedEntry>,
    /// The index of a leader's snapshot installed and restored into the state machine.
    pub snapshot_restored: Option<u64>,
    /// The index of a snapshot this node took (and compacted its log behind).
    pub snapshot_taken: Option<u64>,
    /// True if this node became leader in this round.
    pub became_leader: bool,
    /// The leader this node knows of after this round, if any.
    pub leader_id: Option<u64>,
    /// The term after this round.
    pub term: u64,
}

/// Why a driver operation failed.
///
/// Errors from [`RaftDriver::ready`] are fatal for this driver instance (raft-rs's state
/// was handed out but not advanced): drop it and restart the node from its storage.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// raft-rs refused the call (its error text).
    #[error("raft: {0}")]
    Raft(String),
    /// No leader is known: the proposal was dropped. Retry later.
    #[error("proposal dropped: no leader")]
    ProposalDropped,
    /// The command is invalid.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The state-machine snapshot could not be taken or restored.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A message addressed to another node.
    #[error("message for node {to} stepped into node {id}")]
    WrongRecipient {
        /// The message's recipient.
        to: u64,
        /// This node.
        id: u64,
    },
    /// A committed entry or snapshot is not what this build can read.
    #[error("corrupt raft data: {0}")]
    Corrupt(String),
    /// The configuration is invalid.
    #[error("invalid raft config: {0}")]
    Config(String),
}

impl From<raft::Error> for DriverError {
    fn from(e: raft::Error) -> Self {
        match e {
            raft::Error::ProposalDropped => DriverError::ProposalDropped,
            e => DriverError::Raft(e.to_string()),
        }
    }
}

/// One Raft node: raft-rs `RawNode` over [`RaftStorage`], plus the [`StateMachine`] its
/// committed entries are applied to. Sans-IO: feed it ticks and messages, call
/// [`ready`](Self::ready), send what it returns.
pub struct RaftDriver {
    node: RawNode<RaftStorage>,
    storage: RaftStorage,
    machine: StateMachine,
    config: DriverConfig,
}

impl std::fmt::Debug for RaftDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftDriver")
            .field("id", &self.config.id)
            .field("role", &self.role())
            .field("term", &self.term())
            .field("leader_id", &self.leader_id())
            .field("applied_index", &self.machine.applied_index())
            .finish()
    }
}

impl RaftDriver {
    /// A driver over `storage` (fresh, bootstrapped with
    /// [`RaftStorage::initialize`], or reopened after a restart). The state machine is
    /// restored from the storage's latest snapshot; raft-rs then re-applies the committed
    /// entries after it.
    ///
    /// # Errors
    /// [`DriverError::Config`] for invalid settings, [`DriverError::Snapshot`] for an
    /// unreadable stored snapshot, [`DriverError::Raft`] if raft-rs refuses the state.
    pub fn new(
        config: DriverConfig,
        storage: RaftStorage,
        logger: &slog::Logger,
    ) -> Result<Self, DriverError> {
        let snapshot = storage.latest_snapshot();
        let machine = restore_machine(&snapshot)?;
        let raft_config = config.to_raft(machine.applied_index())?;
        let node = RawNode::new(&raft_config, storage.clone(), logger)?;
        Ok(RaftDriver {
            node,
            storage,
            machine,
            config,
        })
    }

    /// Advance logical time by one tick. Returns true if there may be work for
    /// [`ready`](Self::ready).
    pub fn tick(&mut self) -> bool {
        self.node.tick()
    }

    /// Feed a message from a peer.
    ///
    /// # Errors
    /// [`DriverError::WrongRecipient`] if it is addressed elsewhere, [`DriverError::Raft`] if
    /// raft-rs refuses it (a local message type, an unknown peer's response).
    pub fn step(&mut self, message: Message) -> Result<(), DriverError> {
        if message.to != self.config.id {
            return Err(DriverError::WrongRecipient {
                to: message.to,
                id: self.config.id,
            });
        }
        Ok(self.node.step(message)?)
    }

    /// Propose raw command bytes, with `context` bytes handed back in the
    /// [`CommittedEntry`]. A follower forwards the proposal to its leader.
    ///
    /// # Errors
    /// [`DriverError::ProposalDropped`] without a known leader.
    pub fn propose(&mut self, context: Vec<u8>, data: Vec<u8>) -> Result<(), DriverError> {
        Ok(self.node.propose(context, data)?)
    }

    /// Encode and propose a command.
    ///
    /// # Errors
    /// [`DriverError::Command`] for an invalid command, else as [`propose`](Self::propose).
    pub fn propose_command(
        &mut self,
        context: Vec<u8>,
        command: &Command,
    ) -> Result<(), DriverError> {
        let data = crate::state::encode(command)?;
        self.propose(context, data)
    }

    /// Propose a membership change (joint consensus when it changes several voters).
    ///
    /// # Errors
    /// [`DriverError::ProposalDropped`] without a leader, [`DriverError::Raft`] if another
    /// change is pending.
    pub fn propose_conf_change_v2(
        &mut self,
        context: Vec<u8>,
        change: ConfChangeV2,
    ) -> Result<(), DriverError> {
        Ok(self.node.propose_conf_change(context, change)?)
    }

    /// Propose adding `id` as a learner (it receives the log but does not vote).
    ///
    /// # Errors
    /// As [`propose_conf_change_v2`](Self::propose_conf_change_v2).
    pub fn propose_add_learner(&mut self, context: Vec<u8>, id: u64) -> Result<(), DriverError> {
        self.propose_conf_change_v2(
            context,
            conf_change(
                ConfChangeType::AddLearnerNode,
                id,
                ConfChangeTransition::Auto,
            ),
        )
    }

    /// Propose promoting learner `id` to voter through joint consensus (the joint
    /// configuration is left automatically once it is applied).
    ///
    /// # Errors
    /// As [`propose_conf_change_v2`](Self::propose_conf_change_v2).
    pub fn propose_promote(&mut self, context: Vec<u8>, id: u64) -> Result<(), DriverError> {
        self.propose_conf_change_v2(
            context,
            conf_change(ConfChangeType::AddNode, id, ConfChangeTransition::Implicit),
        )
    }

    /// Propose removing `id` (voter or learner) through joint consensus, left automatically.
    ///
    /// # Errors
    /// As [`propose_conf_change_v2`](Self::propose_conf_change_v2).
    pub fn propose_remove(&mut self, context: Vec<u8>, id: u64) -> Result<(), DriverError> {
        self.propose_conf_change_v2(
            context,
            conf_change(
                ConfChangeType::RemoveNode,
                id,
                ConfChangeTransition::Implicit,
            ),
        )
    }

    /// Ask raft-rs to hand leadership to voter `id` (leader only; a no-op elsewhere).
    pub fn transfer_leader(&mut self, id: u64) {
        self.node.transfer_leader(id);
    }

    /// The highest log index known replicated on `id`, as tracked by this node (meaningful
    /// on the leader only); `None` if `id` is not in the configuration.
    pub fn matched_index(&self, id: u64) -> Option<u64> {
        self.node
            .raft
            .prs()
            .get(id)
            .map(|progress| progress.matched)
    }

    /// The last index in this node's log.
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// True while a proposed configuration change is not applied yet (may be a false
    /// positive right after a leader change), or the configuration is joint.
    pub fn conf_change_pending(&self) -> bool {
        self.node.raft.has_pending_conf() || !self.conf_state().voters_outgoing.is_empty()
    }

    /// Tell raft-rs a peer could not be reached (the transport's send failed).
    pub fn report_unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    /// Tell raft-rs how sending a snapshot to `id` ended.
    pub fn report_snapshot(&mut self, id: u64, finished: bool) {
        let status = if finished {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.node.report_snapshot(id, status);
    }

    /// True if [`ready`](Self::ready) has work.
    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Handle raft-rs's `Ready` in its documented order and return what to send and what
    /// was applied (empty if there was nothing to do):
    ///
    /// 1. note role and leader changes; 2. take the messages a leader may send before
    ///    persisting; 3. install a received snapshot (storage, then state machine);
    /// 4. apply committed entries; 5. persist new entries and the hard state (one fsync);
    /// 6. take the persisted messages; 7. `advance`, persist the new commit index, take the
    ///    light ready's messages, apply its committed entries, `advance_apply`.
    ///
    /// Then, past the snapshot threshold, snapshot the state machine and compact the log.
    /// A snapshot (without compaction) is also taken at every applied configuration change,
    /// so the snapshot a new member receives always names it.
    ///
    /// # Errors
    /// Fatal (see [`DriverError`]): storage failures and unreadable snapshots or
    /// configuration-change entries.
    pub fn ready(&mut self) -> Result<ReadyOutput, DriverError> {
        let mut out = ReadyOutput {
            leader_id: self.leader_id(),
            term: self.term(),
            ..ReadyOutput::default()
        };
        if !self.node.has_ready() {
            return Ok(out);
        }
        let mut ready = self.node.ready();
        // 1.
        if let Some(soft) = ready.ss() {
            out.became_leader = soft.raft_state == StateRole::Leader;
        }
        // 2.
        out.messages.extend(ready.take_messages());
        // 3.
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let index = snapshot.get_metadata().index;
            let machine = restore_machine(&snapshot)?;
            self.storage.apply_snapshot(snapshot)?;
            self.machine = machine;
            tracing::debug!(id = self.config.id, index, "snapshot from leader restored");
            out.snapshot_restored = Some(index);
        }
        // 4.
        self.apply(ready.take_committed_entries(), &mut out)?;
        // 5.
        self.storage.persist(ready.entries(), ready.hs().cloned())?;
        // 6.
        out.messages.extend(ready.take_persisted_messages());
        // 7.
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.storage.set_commit(commit)?;
        }
        out.messages.extend(light.take_messages());
        self.apply(light.take_committed_entries(), &mut out)?;
        self.node.advance_apply();

        out.snapshot_taken = self.maybe_snapshot()?;
        out.leader_id = self.leader_id();
        out.term = self.term();
        Ok(out)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.node.raft.state.into()
    }

    /// The leader this node knows of, if any.
    pub fn leader_id(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    /// The highest index known committed.
    pub fn committed_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// The replicated state as applied here.
    pub fn machine(&self) -> &StateMachine {
        &self.machine
    }

    /// The storage (shared with raft-rs).
    pub fn storage(&self) -> &RaftStorage {
        &self.storage
    }

    /// The voters and learners in force (each list sorted).
    pub fn conf_state(&self) -> ConfState {
        let mut conf_state = self.node.raft.prs().conf().to_conf_state();
        conf_state.voters.sort_unstable();
        conf_state.learners.sort_unstable();
        conf_state.voters_outgoing.sort_unstable();
        conf_state.learners_next.sort_unstable();
        conf_state
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut ReadyOutput) -> Result<(), DriverError> {
        for entry in entries {
            if entry.index <= self.machine.applied_index() {
                // Covered by a snapshot restored in this round.
                continue;
            }
            if entry.index != self.machine.applied_index() + 1 {
                return Err(DriverError::Corrupt(format!(
                    "committed entry {} after applied index {}",
                    entry.index,
                    self.machine.applied_index()
                )));
            }
            let kind = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.machine.skip(entry.index);
                    CommittedKind::Empty
                }
                EntryType::EntryNormal => {
                    CommittedKind::Command(self.machine.apply_bytes(entry.index, &entry.data))
                }
                EntryType::EntryConfChange => {
                    let change: ConfChange = parse_entry(&entry)?;
                    self.machine.skip(entry.index);
                    let result = self.node.apply_conf_change(&change);
                    self.conf_change_applied(result)?
                }
                EntryType::EntryConfChangeV2 => {
                    let change: ConfChangeV2 = parse_entry(&entry)?;
                    self.machine.skip(entry.index);
                    let result = self.node.apply_conf_change(&change);
                    self.conf_change_applied(result)?
                }
            };
            let data = match kind {
                CommittedKind::Command(_) => entry.data.to_vec(),
                _ => Vec::new(),
            };
            out.committed.push(CommittedEntry {
                index: entry.index,
                term: entry.term,
                context: entry.context.to_vec(),
                data,
                kind,
            });
        }
        Ok(())
    }

    fn conf_change_applied(
        &mut self,
        result: raft::Result<ConfState>,
    ) -> Result<CommittedKind, DriverError> {
        match result {
            Ok(conf_state) => {
                // A node joining by snapshot accepts only a snapshot whose configuration
                // includes it: snapshot at every configuration change (rare; the log is not
                // compacted here). This also keeps the latest snapshot at or after the latest
                // configuration change, so a restart never re-applies a change.
                let data = self.machine.snapshot()?;
                let index = self.machine.applied_index();
                self.storage
                    .record_conf_change(index, conf_state.clone(), data)?;
                // The founders' configuration is not in the log (storage `initialize` set it):
                // a node replaying the log from index 1 would miss it. From the first change
                // on, the log therefore starts after a snapshot, so a joining node always
                // starts from a snapshot naming the whole configuration.
                if self.storage.first_index_held() == 1 {
                    self.storage.compact(index)?;
                }
                tracing::debug!(
                    id = self.config.id,
                    index,
                    ?conf_state,
                    "configuration changed"
                );
                Ok(CommittedKind::ConfChange(conf_state))
            }
            Err(e) => Ok(CommittedKind::ConfChangeRejected(e.to_string())),
        }
    }

    fn maybe_snapshot(&mut self) -> Result<Option<u64>, DriverError> {
        let applied = self.machine.applied_index();
        let compacted = self.storage.first_index_held() - 1;
        if applied.saturating_sub(compacted) <= self.config.snapshot_threshold_entries {
            return Ok(None);
        }
        let data = self.machine.snapshot()?;
        self.storage
            .create_snapshot(applied, self.storage.conf_state(), data)?;
        let compact_to = applied.saturating_sub(self.config.log_entries_kept);
        self.storage.compact(compact_to)?;
        tracing::debug!(
            id = self.config.id,
            applied,
            compact_to,
            "snapshot taken, log compacted"
        );
        Ok(Some(applied))
    }
}

fn conf_change(
    change_type: ConfChangeType,
    id: u64,
    transition: ConfChangeTransition,
) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(change_type);
    single.node_id = id;
    let mut change = ConfChangeV2::default();
    change.set_transition(transition);
    change.changes = vec![single].into();
    change
}

fn restore_machine(snapshot: &Snapshot) -> Result<StateMachine, DriverError> {
    let index = snapshot.get_metadata().index;
    if index == 0 {
        return Ok(StateMachine::new());
    }
    let machine = StateMachine::restore(&snapshot.data)?;
    if machine.applied_index() != index {
        return Err(DriverError::Corrupt(format!(
            "snapshot at index {index} holds state applied to {}",
            machine.applied_index()
        )));
    }
    Ok(machine)
}

fn parse_entry<M: PbMessage>(entry: &Entry) -> Result<M, DriverError> {
    M::parse_from_bytes(&entry.data)
        .map_err(|e| DriverError::Corrupt(format!("configuration change at {}: {e}", entry.index)))
}
