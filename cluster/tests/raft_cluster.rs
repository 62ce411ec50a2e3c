//! Raft drivers wired through an in-test network: election, replication, leader crash and
//! rejoin, a member added by ConfChangeV2 that catches up by snapshot, restart from redb,
//! and determinism (the same run twice gives the same trace).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use herald_actors::seams::Timestamp;
use herald_actors::token_state::{TokenEvent, TokenKey, TokenValidity};
use herald_cluster::raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Message, MessageType,
};
use herald_cluster::raft::{
    DriverConfig, RaftDriver, RaftStorage, Role, decode_message, encode_message, raft_logger,
};
use herald_cluster::state::{Command, MemberState, TokenEventRecord};

/// Snapshot after this many applied entries past the last compaction (small, to exercise it).
const SNAPSHOT_THRESHOLD: u64 = 20;
/// Entries kept behind a snapshot.
const KEPT: u64 = 5;
/// Rounds `settle` runs before giving up.
const ROUNDS_MAX: usize = 10_000;

struct Cluster {
    nodes: BTreeMap<u64, RaftDriver>,
    net: VecDeque<Message>,
    /// Crashed nodes: no ticks, no readies, traffic dropped both ways.
    down: BTreeSet<u64>,
    /// Partitioned nodes: they run, but their traffic is dropped both ways.
    isolated: BTreeSet<u64>,
    /// Where each node keeps its redb file (None: in memory).
    dir: Option<PathBuf>,
    trace: Vec<String>,
    snapshots_restored: BTreeMap<u64, u64>,
    snapshot_messages: usize,
}

impl Cluster {
    fn new(ids: &[u64], dir: Option<PathBuf>) -> Self {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            net: VecDeque::new(),
            down: BTreeSet::new(),
            isolated: BTreeSet::new(),
            dir,
            trace: vec![],
            snapshots_restored: BTreeMap::new(),
            snapshot_messages: 0,
        };
        for &id in ids {
            let storage = cluster.storage(id);
            storage
                .initialize(ConfState {
                    voters: ids.to_vec(),
                    ..ConfState::default()
                })
                .unwrap();
            cluster.start(id, storage);
        }
        cluster
    }

    fn storage(&self, id: u64) -> RaftStorage {
        match &self.dir {
            Some(dir) => RaftStorage::open(dir.join(format!("node-{id}.redb"))).unwrap(),
            None => RaftStorage::in_memory(),
        }
    }

    fn start(&mut self, id: u64, storage: RaftStorage) {
        let mut config = DriverConfig::new(id);
        // Fixed, distinct election timeouts: no randomness, node 1 times out first.
        config.fixed_election_timeout(config.election_tick + 3 * id as usize);
        config.snapshot_threshold_entries = SNAPSHOT_THRESHOLD;
        config.log_entries_kept = KEPT;
        let driver = RaftDriver::new(config, storage, &raft_logger(id)).unwrap();
        self.nodes.insert(id, driver);
    }

    fn node(&mut self, id: u64) -> &mut RaftDriver {
        self.nodes.get_mut(&id).unwrap()
    }

    fn up(&self) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|id| !self.down.contains(id))
            .collect()
    }

    /// Handle every ready and deliver every message until nothing moves.
    fn settle(&mut self) {
        for _ in 0..ROUNDS_MAX {
            let mut moved = false;
            for id in self.up() {
                let out = self.node(id).ready().unwrap();
                if out.became_leader {
                    assert_eq!(out.leader_id, Some(id));
                    self.trace.push(format!("leader {id} term {}", out.term));
                }
                if let Some(index) = out.snapshot_restored {
                    self.snapshots_restored.insert(id, index);
                    self.trace
                        .push(format!("node {id} restored snapshot {index}"));
                }
                if let Some(index) = out.snapshot_taken {
                    self.trace.push(format!("node {id} snapshot {index}"));
                }
                for entry in &out.committed {
                    self.trace.push(format!(
                        "node {id} applied {} term {} {:?}",
                        entry.index, entry.term, entry.kind
                    ));
                }
                moved |= !out.messages.is_empty() || !out.committed.is_empty();
                self.net.extend(out.messages);
            }
            while let Some(message) = self.net.pop_front() {
                moved = true;
                let cut = |id| self.down.contains(id) || self.isolated.contains(id);
                if cut(&message.to) || cut(&message.from) {
                    continue;
                }
                // Through the wire format, as the transport does.
                let message = decode_message(&encode_message(&message).unwrap()).unwrap();
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    self.snapshot_messages += 1;
                }
                let to = message.to;
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.step(message).unwrap();
                }
            }
            if !moved {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for id in self.up() {
                self.node(id).tick();
            }
            self.settle();
        }
    }

    /// Tick until the up nodes agree on one leader; return it.
    fn elect(&mut self) -> u64 {
        for _ in 0..200 {
            self.tick(1);
            let up = self.up();
            let leaders: BTreeSet<Option<u64>> =
                up.iter().map(|id| self.nodes[id].leader_id()).collect();
            if let [Some(leader)] = leaders.iter().copied().collect::<Vec<_>>()[..]
                && up.contains(&leader)
                && self.nodes[&leader].role() == Role::Leader
            {
                return leader;
            }
        }
        panic!("no leader elected");
    }

    fn propose(&mut self, via: u64, command: &Command) {
        self.node(via).propose_command(vec![], command).unwrap();
        self.settle();
    }

    /// Every up node has applied the same index and holds the same state.
    fn assert_agree(&self) -> u64 {
        let up = self.up();
        let first = &self.nodes[&up[0]];
        for id in &up[1..] {
            let other = &self.nodes[id];
            assert_eq!(
                other.machine().applied_index(),
                first.machine().applied_index(),
                "node {id} applied index"
            );
            assert_eq!(other.machine(), first.machine(), "node {id} state");
        }
        first.machine().applied_index()
    }
}

fn add_member(id: u64) -> Command {
    Command::AddMember {
        id,
        addr: format!("10.0.0.{id}:7000"),
        region: "eu".into(),
    }
}

fn invalidate(n: u64) -> Command {
    Command::TokenEvents(vec![TokenEventRecord {
        tenant: "acme".into(),
        token: format!("{n:08x}"),
        event: TokenEvent::Invalidated {
            at: Timestamp::from_millis(1_000 + n),
        },
    }])
}

fn add_node(id: u64) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddNode);
    single.node_id = id;
    let mut change = ConfChangeV2::default();
    change.set_changes(vec![single].into());
    change
}

#[test]
fn leader_is_elected_and_proposals_commit_everywhere() {
    let mut cluster = Cluster::new(&[1, 2, 3], None);
    let leader = cluster.elect();
    assert_eq!(leader, 1, "the shortest fixed election timeout wins");
    for id in 1..=3 {
        cluster.propose(leader, &add_member(id));
    }
    // A follower forwards its proposal to the leader.
    cluster.propose(
        3,
        &Command::SetMemberState {
            id: 2,
            state: MemberState::Active,
        },
    );
    cluster.propose(2, &invalidate(7));
    cluster.tick(3);
    let applied = cluster.assert_agree();
    // One empty leader entry, five commands.
    assert_eq!(applied, 6);
    let machine = cluster.nodes[&3].machine();
    assert_eq!(machine.members().len(), 3);
    assert_eq!(machine.members()[&2].state, MemberState::Active);
    assert_eq!(
        machine.check_token(&TokenKey::new("acme", format!("{:08x}", 7))),
        TokenValidity::Invalidated {
            at: Timestamp::from_millis(1_007)
        }
    );
}

#[test]
fn new_leader_after_a_crash_and_the_old_one_catches_up() {
    let mut cluster = Cluster::new(&[1, 2, 3], None);
    let old = cluster.elect();
    cluster.propose(old, &add_member(1));
    cluster.down.insert(old);
    let new = cluster.elect();
    assert_ne!(new, old);
    assert!(cluster.nodes[&new].term() > cluster.nodes[&old].term());
    for n in 0..30 {
        cluster.propose(new, &invalidate(n));
    }
    cluster.assert_agree();
    // The old leader comes back, follows the new one and catches up.
    cluster.down.clear();
    cluster.tick(30);
    assert_eq!(cluster.nodes[&old].leader_id(), Some(new));
    assert_eq!(cluster.nodes[&old].role(), Role::Follower);
    let applied = cluster.assert_agree();
    assert!(applied >= 32);
}

#[test]
fn fourth_node_joins_by_conf_change_and_catches_up_by_snapshot() {
    let mut cluster = Cluster::new(&[1, 2, 3], None);
    let leader = cluster.elect();
    for n in 0..50 {
        cluster.propose(leader, &invalidate(n));
    }
    let compacted_to = cluster.nodes[&leader].storage().first_index_held() - 1;
    assert!(compacted_to > 1, "the leader compacted its log");

    cluster
        .node(leader)
        .propose_conf_change_v2(vec![], add_node(4))
        .unwrap();
    // Node 4 starts empty: it learns everything from the leader.
    let storage = cluster.storage(4);
    cluster.start(4, storage);
    cluster.tick(20);
    for n in 50..55 {
        cluster.propose(leader, &invalidate(n));
    }
    cluster.tick(5);

    assert!(cluster.snapshot_messages >= 1);
    assert!(cluster.snapshots_restored.contains_key(&4));
    let voters = cluster.nodes[&4].conf_state().voters;
    assert_eq!(voters, vec![1, 2, 3, 4]);
    let applied = cluster.assert_agree();
    assert!(applied > compacted_to);
    assert_eq!(cluster.nodes[&4].machine().token_table().len(), 55);
}

#[test]
fn restarted_node_keeps_its_log_from_redb() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(&[1, 2, 3], Some(dir.path().to_owned()));
    let leader = cluster.elect();
    for n in 0..10 {
        cluster.propose(leader, &invalidate(n));
    }
    let before = cluster.assert_agree();
    let victim = 3;
    let (hard_state, last_index) = {
        let storage = cluster.nodes[&victim].storage();
        (storage.hard_state(), storage.last_index_held())
    };
    // Crash: drop the driver (and its store), then reopen the file.
    cluster.nodes.remove(&victim);
    let storage = cluster.storage(victim);
    assert_eq!(storage.hard_state(), hard_state);
    assert_eq!(storage.last_index_held(), last_index);
    cluster.start(victim, storage);
    cluster.settle();
    // It re-applies its committed log and follows on.
    cluster.propose(leader, &invalidate(99));
    cluster.tick(5);
    let after = cluster.assert_agree();
    assert_eq!(after, before + 1);
    assert_eq!(cluster.nodes[&victim].leader_id(), Some(leader));
}

/// One scenario with an election, a crash, a rejoin and a join by snapshot.
fn scenario() -> (Vec<String>, Vec<u8>) {
    let mut cluster = Cluster::new(&[1, 2, 3], None);
    let leader = cluster.elect();
    for n in 0..25 {
        cluster.propose(leader, &invalidate(n));
    }
    cluster.down.insert(leader);
    let new = cluster.elect();
    cluster.propose(new, &add_member(new));
    cluster.down.clear();
    cluster.tick(20);
    cluster
        .node(new)
        .propose_conf_change_v2(vec![], add_node(4))
        .unwrap();
    let storage = cluster.storage(4);
    cluster.start(4, storage);
    cluster.tick(20);
    cluster.assert_agree();
    let image = cluster.nodes[&4].machine().snapshot().unwrap();
    (cluster.trace, image)
}

#[test]
fn the_same_setup_gives_the_same_run() {
    let (first_trace, first_image) = scenario();
    let (second_trace, second_image) = scenario();
    assert!(
        first_trace
            .iter()
            .any(|line| line.contains("restored snapshot"))
    );
    assert_eq!(first_trace, second_trace);
    assert_eq!(first_image, second_image);
}

#[test]
fn rejected_commands_are_rejected_on_every_node() {
    let mut cluster = Cluster::new(&[1, 2, 3], None);
    let leader = cluster.elect();
    cluster.propose(
        leader,
        &Command::SetMemberState {
            id: 42,
            state: MemberState::Active,
        },
    );
    cluster
        .node(leader)
        .propose(vec![7], b"not a command".to_vec())
        .unwrap();
    cluster.settle();
    cluster.assert_agree();
    let applied: Vec<&String> = cluster
        .trace
        .iter()
        .filter(|line| line.contains("Rejected"))
        .collect();
    assert_eq!(
        applied.len(),
        6,
        "two rejections on each of three nodes: {applied:?}"
    );
}

#[test]
fn restarted_node_restores_its_snapshot_then_replays_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(&[1, 2, 3], Some(dir.path().to_owned()));
    let leader = cluster.elect();
    for n in 0..30 {
        cluster.propose(leader, &invalidate(n));
    }
    let before = cluster.assert_agree();
    let victim = 2;
    let snapshot_index = cluster.nodes[&victim]
        .storage()
        .latest_snapshot()
        .get_metadata()
        .index;
    assert!(snapshot_index > 0 && snapshot_index < before);
    cluster.nodes.remove(&victim);
    let storage = cluster.storage(victim);
    cluster.start(victim, storage);
    // Restored from the snapshot, before any entry is replayed.
    assert_eq!(
        cluster.nodes[&victim].machine().applied_index(),
        snapshot_index
    );
    cluster.settle();
    assert_eq!(cluster.nodes[&victim].machine().applied_index(), before);
    cluster.assert_agree();
}

#[test]
fn bad_input_from_the_network_is_an_error_not_a_panic() {
    use herald_cluster::raft::DriverError;
    let mut cluster = Cluster::new(&[1, 2, 3], None);
    cluster.elect();
    for garbage in [&b"\xff\xff"[..], b"\x12\xff\xff\xff\xff\x0f", &[0x0a; 300]] {
        assert!(decode_message(garbage).is_err());
    }
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgHeartbeat);
    message.from = 2;
    message.to = 9;
    assert!(matches!(
        cluster.node(1).step(message.clone()),
        Err(DriverError::WrongRecipient { to: 9, id: 1 })
    ));
    // A local message type may not come from a peer.
    message.to = 1;
    message.set_msg_type(MessageType::MsgHup);
    assert!(matches!(
        cluster.node(1).step(message),
        Err(DriverError::Raft(_))
    ));
    cluster.tick(3);
    cluster.assert_agree();
}

#[test]
fn an_isolated_leader_steps_down_and_the_majority_moves_on() {
    let mut cluster = Cluster::new(&[1, 2, 3], None);
    let old = cluster.elect();
    cluster.isolated.insert(old);
    // Check-quorum: without acks from a majority the old leader steps down.
    cluster.tick(3 * DriverConfig::new(old).election_tick);
    assert_ne!(cluster.nodes[&old].role(), Role::Leader);
    let majority: Vec<u64> = cluster.up().into_iter().filter(|id| *id != old).collect();
    let new = cluster.nodes[&majority[0]].leader_id().unwrap();
    assert_ne!(new, old);
    cluster.propose(new, &add_member(new));
    // Healed: one leader, and the old one catches up without disrupting it (pre-vote).
    cluster.isolated.clear();
    cluster.tick(30);
    assert_eq!(cluster.nodes[&old].leader_id(), Some(new));
    assert_eq!(cluster.nodes[&new].role(), Role::Leader);
    cluster.assert_agree();
}
