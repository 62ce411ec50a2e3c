//! Membership over real `ClusterNode`s in one process, loopback mutual TLS, redb in a
//! tempdir: five founders in two regions bootstrap (members, shard maps), the leader fails
//! over, a stopped node restarts from disk, a sixth node joins as learner and becomes a
//! voter that owns shards, a node drains (held back by its backlog probe) and leaves, and a
//! dead node is removed with its shards reassigned at once. After every status read the
//! fencing invariant is checked: one shard map per (region, epoch) across all nodes, epochs
//! never going back on a node, owners only members of the region.
//!
//! Election timeouts are fixed per node; every wait is a generous deadline on an observed
//! condition.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_cluster::membership::{
    BacklogProbe, ClusterStatus, MembershipError, RegionStatus, StartMode, Voting,
};
use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
use herald_cluster::state::MemberState;
use herald_cluster::transport::{ClusterCa, ClusterId, LinkSecurity, NodeId};
use tokio::net::TcpListener;

const CLUSTER: ClusterId = ClusterId(11);
const FOUNDERS: [u64; 5] = [1, 2, 3, 4, 5];
const JOINER: u64 = 6;
const SHARDS: usize = 60;
/// Deadline of every wait.
const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(50);
const TICK: Duration = Duration::from_millis(20);

fn region_of(id: u64) -> &'static str {
    if id == 4 || id == 5 { "us" } else { "eu" }
}

/// A backlog probe the test sets by hand.
#[derive(Debug, Default)]
struct Backlog(AtomicUsize);

impl BacklogProbe for Backlog {
    fn pending(&self, _region: &str, _shards: &[usize]) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

struct Harness {
    founders: Vec<u64>,
    dir: tempfile::TempDir,
    ca: ClusterCa,
    addrs: BTreeMap<u64, SocketAddr>,
    nodes: BTreeMap<u64, ClusterNode>,
    backlogs: BTreeMap<u64, Arc<Backlog>>,
    /// (region, epoch) → the owned counts seen for it, on any node.
    maps: BTreeMap<(String, u64), RegionStatus>,
    /// (node, region) → the newest epoch that node reported.
    epochs: BTreeMap<(u64, String), u64>,
    /// `MembershipConfig::failover_after` of every node started.
    failover_after: Option<Duration>,
}

impl Harness {
    fn config(&self, id: u64, start: StartMode) -> ClusterConfig {
        let security = LinkSecurity::MutualTls(self.ca.mutual_tls(NodeId(id)).unwrap());
        let peers = match start {
            StartMode::Join => self.addrs.clone(),
            _ => self
                .addrs
                .iter()
                .filter(|(id, _)| self.founders.contains(id))
                .map(|(&id, &addr)| (id, addr))
                .collect(),
        };
        let mut config = ClusterConfig::new(
            id,
            CLUSTER,
            peers,
            region_of(id),
            StorageLocation::Path(self.dir.path().join(format!("node-{id}.redb"))),
            security,
        );
        config.tick = TICK;
        support::distinct_timeouts_and_fast_links(&mut config);
        config.membership.start = start;
        config.membership.shard_count = SHARDS;
        config.membership.founder_regions = self
            .founders
            .iter()
            .map(|&id| (id, region_of(id).to_owned()))
            .collect();
        config.membership.backlog = self.backlogs[&id].clone();
        config.membership.failover_after = self.failover_after;
        config
    }

    async fn start(&mut self, id: u64, start: StartMode) {
        let listener = bind(self.addrs[&id]).await;
        let node = ClusterNode::start(self.config(id, start), listener)
            .await
            .unwrap();
        self.nodes.insert(id, node);
    }

    async fn stop(&mut self, id: u64) {
        self.nodes.remove(&id).unwrap().stop().await;
    }

    /// Every running node's status, checked against the fencing invariant.
    async fn statuses(&mut self) -> BTreeMap<u64, ClusterStatus> {
        let mut all = BTreeMap::new();
        for (&id, node) in &self.nodes {
            all.insert(id, node.status().await.unwrap());
        }
        for status in all.values() {
            self.check(status);
        }
        all
    }

    fn check(&mut self, status: &ClusterStatus) {
        for region in &status.regions {
            assert_eq!(region.shards, SHARDS);
            assert_eq!(region.owned.values().sum::<usize>(), SHARDS);
            let seen = self
                .maps
                .entry((region.region.clone(), region.epoch))
                .or_insert_with(|| region.clone());
            assert_eq!(
                seen, region,
                "two shard maps for one (region, epoch), seen on node {}",
                status.id
            );
            let newest = self
                .epochs
                .entry((status.id, region.region.clone()))
                .or_insert(region.epoch);
            assert!(
                region.epoch >= *newest,
                "epoch went back on node {}",
                status.id
            );
            *newest = region.epoch;
            for owner in region.owned.keys() {
                let member = status.member(*owner).expect("owners are members");
                assert_eq!(member.region, region.region, "owner from another region");
            }
        }
    }

    /// Wait until `condition` holds for the statuses of every running node.
    async fn wait_all(
        &mut self,
        what: &str,
        mut condition: impl FnMut(&ClusterStatus) -> bool,
    ) -> BTreeMap<u64, ClusterStatus> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let statuses = self.statuses().await;
            if statuses.values().all(&mut condition) {
                return statuses;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {statuses:#?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Wait until every running node names the same running leader; return it.
    async fn leader(&mut self) -> u64 {
        let running: Vec<u64> = self.nodes.keys().copied().collect();
        let statuses = self
            .wait_all("one leader known to all", |s| {
                s.leader.is_some_and(|l| running.contains(&l))
            })
            .await;
        let leaders: Vec<_> = statuses.values().map(|s| s.leader).collect();
        if leaders.iter().all(|l| *l == leaders[0]) {
            return leaders[0].unwrap();
        }
        tokio::time::sleep(POLL).await;
        Box::pin(self.leader()).await
    }

    /// Bind a port for each of `ids` and set up (not start) their nodes; `founders` is the
    /// initial voter set.
    async fn new(founders: &[u64], ids: &[u64]) -> Harness {
        let mut listeners = BTreeMap::new();
        for &id in ids {
            listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        Harness {
            founders: founders.to_vec(),
            dir: tempfile::tempdir().unwrap(),
            ca: ClusterCa::generate("herald-membership-test").unwrap(),
            addrs: listeners
                .iter()
                .map(|(&id, l)| (id, l.local_addr().unwrap()))
                .collect(),
            nodes: BTreeMap::new(),
            backlogs: ids
                .iter()
                .map(|&id| (id, Arc::new(Backlog::default())))
                .collect(),
            maps: BTreeMap::new(),
            epochs: BTreeMap::new(),
            // Long: these tests stop nodes and expect only explicit operations to move
            // shards, unless a test says otherwise.
            failover_after: Some(Duration::from_secs(600)),
        }
    }

    async fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

async fn bind(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "bind {addr}: {e}");
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

fn active_voter(status: &ClusterStatus, id: u64) -> bool {
    status
        .member(id)
        .is_some_and(|m| m.state == MemberState::Active && m.voting == Voting::Voter)
}

fn gone(status: &ClusterStatus, id: u64) -> bool {
    status
        .member(id)
        .is_some_and(|m| m.state == MemberState::Removed && m.voting == Voting::Outside)
        && !status.voters.contains(&id)
        && status.regions.iter().all(|r| !r.owned.contains_key(&id))
}

/// Each of `owners` owns ⌊S/n⌋ or ⌈S/n⌉ shards of `region`, nobody else owns any.
fn balanced(status: &ClusterStatus, region: &str, owners: &[u64]) -> bool {
    let Some(map) = status.region(region) else {
        return false;
    };
    let (low, high) = (SHARDS / owners.len(), SHARDS.div_ceil(owners.len()));
    map.owned.len() == owners.len()
        && owners
            .iter()
            .all(|o| map.owned.get(o).is_some_and(|&n| (low..=high).contains(&n)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_bootstrap_fail_over_join_drain_and_remove() {
    let mut h = Harness::new(&FOUNDERS, &[1, 2, 3, 4, 5, JOINER]).await;

    // Bootstrap: five founders, members and one shard map per region.
    for id in FOUNDERS {
        h.start(id, StartMode::Bootstrap).await;
    }
    let leader = h.leader().await;
    let statuses = h
        .wait_all("founders active, shards balanced per region", |s| {
            FOUNDERS.iter().all(|&id| active_voter(s, id))
                && balanced(s, "eu", &[1, 2, 3])
                && balanced(s, "us", &[4, 5])
        })
        .await;
    let bootstrap_epoch = |s: &ClusterStatus, r: &str| s.region(r).unwrap().epoch;
    let eu_epoch = bootstrap_epoch(&statuses[&leader], "eu");

    // Leader failover: stop the leader, the other four elect a new one.
    h.stop(leader).await;
    let new_leader = h.leader().await;
    assert_ne!(new_leader, leader);

    // Restart the old leader from its redb file: it rejoins and agrees.
    h.start(leader, StartMode::Bootstrap).await;
    let applied = h.statuses().await[&new_leader].applied_index;
    h.wait_all("the restarted node caught up", |s| {
        s.applied_index >= applied && FOUNDERS.iter().all(|&id| active_voter(s, id))
    })
    .await;

    // Join a sixth node, asked of a follower (forwarded to the leader).
    let leader = h.leader().await;
    let follower = *FOUNDERS.iter().find(|&&id| id != leader).unwrap();
    let joiner_addr = h.addrs[&JOINER].to_string();
    // The id is checked against the members first.
    assert_eq!(
        h.nodes[&follower].join(1, "127.0.0.1:1", "eu", WAIT).await,
        Err(MembershipError::MemberExists(1))
    );
    h.nodes[&follower]
        .join(JOINER, joiner_addr.clone(), "eu", WAIT)
        .await
        .unwrap();
    h.start(JOINER, StartMode::Join).await;
    let statuses = h
        .wait_all("the joiner is an active voter owning eu shards", |s| {
            active_voter(s, JOINER) && balanced(s, "eu", &[1, 2, 3, JOINER])
        })
        .await;
    let eu_after_join = statuses[&JOINER].region("eu").unwrap().clone();
    assert!(eu_after_join.epoch > eu_epoch);
    assert_eq!(statuses[&JOINER].voters, vec![1, 2, 3, 4, 5, 6]);
    // The joined node restarts from its own disk (no bootstrap) and keeps its place.
    h.stop(JOINER).await;
    h.start(JOINER, StartMode::Join).await;
    let applied = h.statuses().await[&h.leader().await].applied_index;
    h.wait_all("the joiner restarted from disk", |s| {
        s.applied_index >= applied && active_voter(s, JOINER) && s.voters.len() == 6
    })
    .await;

    // Joining again with the same details is a no-op; another address is refused.
    let any = h.nodes.keys().copied().next().unwrap();
    h.nodes[&any]
        .join(JOINER, joiner_addr, "eu", WAIT)
        .await
        .unwrap();
    assert_eq!(
        h.nodes[&any].join(JOINER, "127.0.0.1:9", "eu", WAIT).await,
        Err(MembershipError::MemberExists(JOINER))
    );

    // Drain node 2: its shards move at a new epoch, but it stays until its backlog is done.
    h.backlogs[&2].0.store(3, Ordering::SeqCst);
    h.nodes[&JOINER].drain(2, WAIT).await.unwrap();
    let statuses = h
        .wait_all("node 2's shards reassigned", |s| {
            balanced(s, "eu", &[1, 3, JOINER])
        })
        .await;
    assert!(statuses[&2].region("eu").unwrap().epoch > eu_after_join.epoch);
    // Well past the planner's retry period, node 2 still waits for its backlog.
    tokio::time::sleep(TICK * 100).await;
    let statuses = h.statuses().await;
    assert!(statuses.values().all(|s| {
        s.member(2)
            .is_some_and(|m| m.state == MemberState::Draining && m.voting == Voting::Voter)
    }));
    h.backlogs[&2].0.store(0, Ordering::SeqCst);
    h.wait_all("node 2 left", |s| gone(s, 2)).await;
    h.stop(2).await;
    // A removed member cannot be drained again.
    let any = h.nodes.keys().copied().next().unwrap();
    assert_eq!(
        h.nodes[&any].drain(2, WAIT).await,
        Err(MembershipError::MemberRemoved(2))
    );
    assert_eq!(
        h.nodes[&any].drain(99, WAIT).await,
        Err(MembershipError::UnknownMember(99))
    );

    // Remove a dead node: stop a "us" node that is not the leader, then remove it.
    let leader = h.leader().await;
    let dead = if leader == 5 { 4 } else { 5 };
    let survivor = 9 - dead;
    h.stop(dead).await;
    let asked = *h.nodes.keys().find(|&&id| id != leader).unwrap();
    h.nodes[&asked].remove(dead, WAIT).await.unwrap();
    h.wait_all("the dead node removed, its shards reassigned", |s| {
        gone(s, dead) && balanced(s, "us", &[survivor])
    })
    .await;
    // The last active member of a region cannot be drained.
    assert_eq!(
        h.nodes[&asked].drain(survivor, WAIT).await,
        Err(MembershipError::LastActiveInRegion {
            id: survivor,
            region: "us".to_owned()
        })
    );

    // The remaining four still commit: a membership change goes through.
    let leader = h.leader().await;
    let statuses = h.statuses().await;
    assert_eq!(statuses[&leader].voters.len(), 4);
    assert!(h.maps.len() >= 5, "maps seen: {:?}", h.maps.keys());

    h.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_leader_hands_over_and_leaves() {
    let mut h = Harness::new(&[1, 2, 3], &[1, 2, 3]).await;
    for id in [1, 2, 3] {
        h.start(id, StartMode::Bootstrap).await;
    }
    h.wait_all("founders active, shards balanced", |s| {
        [1, 2, 3].iter().all(|&id| active_voter(s, id)) && balanced(s, "eu", &[1, 2, 3])
    })
    .await;
    let leader = h.leader().await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    // Asked of the leader itself.
    h.nodes[&leader].drain(leader, WAIT).await.unwrap();
    h.wait_all("the old leader drained, handed over and left", |s| {
        gone(s, leader) && balanced(s, "eu", &others) && s.leader.is_some_and(|l| l != leader)
    })
    .await;
    h.stop(leader).await;
    let new_leader = h.leader().await;
    assert!(others.contains(&new_leader));
    // The two that remain still commit membership changes: the last active member of the
    // region cannot be drained, the other can.
    h.nodes[&others[0]].drain(others[1], WAIT).await.unwrap();
    h.wait_all("the second node drained", |s| {
        gone(s, others[1]) && balanced(s, "eu", &others[..1])
    })
    .await;
    assert_eq!(
        h.nodes[&others[0]].drain(others[0], WAIT).await,
        Err(MembershipError::LastActiveInRegion {
            id: others[0],
            region: "eu".to_owned()
        })
    );
    assert_eq!(
        h.nodes[&others[0]].remove(others[0], WAIT).await,
        Err(MembershipError::LastVoter(others[0]))
    );
    h.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_fails_over_and_gets_its_shards_back() {
    let mut h = Harness::new(&[1, 2, 3], &[1, 2, 3]).await;
    h.failover_after = Some(Duration::from_secs(1));
    for id in [1, 2, 3] {
        h.start(id, StartMode::Bootstrap).await;
    }
    h.wait_all("founders active, shards balanced", |s| {
        [1, 2, 3].iter().all(|&id| active_voter(s, id)) && balanced(s, "eu", &[1, 2, 3])
    })
    .await;
    let leader = h.leader().await;
    let silent = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != silent).collect();
    let before = h.statuses().await[&leader].region("eu").unwrap().epoch;

    // Stopped (not removed): after the failover period its shards go to the other two.
    h.stop(silent).await;
    let statuses = h
        .wait_all("the silent node's shards failed over", |s| {
            balanced(s, "eu", &others)
        })
        .await;
    for status in statuses.values() {
        assert!(active_voter(status, silent), "still a member and a voter");
        assert!(status.region("eu").unwrap().epoch > before);
    }
    // The leader reports whom it failed over; followers report nobody.
    let leader = h.leader().await;
    let statuses = h.statuses().await;
    assert_eq!(statuses[&leader].unreachable, vec![silent]);
    for (id, status) in &statuses {
        if *id != leader {
            assert!(status.unreachable.is_empty());
        }
    }

    // Back from its disk: heard again, it gets its share back at a newer epoch.
    h.start(silent, StartMode::Bootstrap).await;
    h.wait_all("the node is back with its share", |s| {
        balanced(s, "eu", &[1, 2, 3]) && s.unreachable.is_empty()
    })
    .await;
    h.stop_all().await;
}
