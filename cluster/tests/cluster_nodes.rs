//! Three `ClusterNode`s in one process over loopback mutual TLS: election, a token
//! invalidation replicated through `ReplicatedTokenState`, a later registration reviving the
//! token, leader failover, and a stopped node restarted from its redb file catching up.
//!
//! Election timeouts are fixed per node (no raft-rs randomness); every wait is a generous
//! deadline on an observed condition, never a sleep that assumes a machine speed.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_actors::seams::Timestamp;
use herald_actors::token_state::{TokenKey, TokenState, TokenValidity};
use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
use herald_cluster::transport::{ClusterCa, ClusterId, LinkSecurity, NodeId};
use tokio::net::TcpListener;

const CLUSTER: ClusterId = ClusterId(7);
const IDS: [u64; 3] = [1, 2, 3];
/// Deadline of every wait.
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
const TICK: Duration = Duration::from_millis(20);

fn config(id: u64, ca: &ClusterCa, peers: &BTreeMap<u64, SocketAddr>, dir: &Path) -> ClusterConfig {
    let security = LinkSecurity::MutualTls(ca.mutual_tls(NodeId(id)).unwrap());
    let mut config = ClusterConfig::new(
        id,
        CLUSTER,
        peers.clone(),
        "eu",
        StorageLocation::Path(dir.join(format!("node-{id}.redb"))),
        security,
    );
    config.tick = TICK;
    support::distinct_timeouts_and_fast_links(&mut config);
    config
}

async fn bind(addr: SocketAddr) -> TcpListener {
    // A just-stopped listener's socket is released asynchronously: retry for a while.
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

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Wait until every given node names the same leader, one of them; return its id.
async fn wait_leader(nodes: &BTreeMap<u64, ClusterNode>) -> u64 {
    let mut leader = 0;
    wait_until("a leader known to every node", || {
        let states: Vec<_> = nodes.values().map(|n| *n.applied().borrow()).collect();
        let Some(first) = states[0].leader else {
            return false;
        };
        let agreed = states.iter().all(|s| s.leader == Some(first))
            && nodes
                .get(&first)
                .is_some_and(|n| n.applied().borrow().is_leader);
        leader = first;
        agreed
    })
    .await;
    leader
}

async fn wait_everywhere(
    what: &str,
    nodes: &BTreeMap<u64, ClusterNode>,
    key: &TokenKey,
    expected: TokenValidity,
) {
    let states: Vec<_> = nodes.values().map(ClusterNode::token_state).collect();
    wait_until(what, || states.iter().all(|s| s.check(key) == expected)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_token_state_fail_over_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("herald-test").unwrap();
    let mut listeners = BTreeMap::new();
    for id in IDS {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: BTreeMap<u64, SocketAddr> = listeners
        .iter()
        .map(|(&id, l)| (id, l.local_addr().unwrap()))
        .collect();
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let node = ClusterNode::start(config(id, &ca, &peers, dir.path()), listener)
            .await
            .unwrap();
        nodes.insert(id, node);
    }

    // A leader is elected.
    let leader = wait_leader(&nodes).await;
    let follower = *IDS.iter().find(|&&id| id != leader).unwrap();

    // A follower forwards events to the leader and answers once it applied them itself.
    let forwarded = TokenKey::new("tenant-a", "ffeeddcc");
    let at = Timestamp::from_secs(1);
    assert_eq!(
        nodes[&follower]
            .token_state()
            .invalidate(forwarded.clone(), at)
            .await
            .unwrap(),
        TokenValidity::Invalidated { at }
    );
    assert_eq!(
        nodes[&follower].token_state().check(&forwarded),
        TokenValidity::Invalidated { at }
    );
    let mut follower_invalidations = nodes[&follower].token_state().subscribe();
    let key = TokenKey::new("tenant-a", "aabbccdd");

    // An invalidation proposed on the leader becomes visible on every node.
    let invalidated_at = Timestamp::from_secs(1_000);
    let leader_state: Arc<_> = nodes[&leader].token_state();
    assert_eq!(
        leader_state
            .invalidate(key.clone(), invalidated_at)
            .await
            .unwrap(),
        TokenValidity::Invalidated { at: invalidated_at }
    );
    wait_everywhere(
        "the invalidation on every node",
        &nodes,
        &key,
        TokenValidity::Invalidated { at: invalidated_at },
    )
    .await;
    let heard = tokio::time::timeout(WAIT, follower_invalidations.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((heard.key, heard.at), (key.clone(), invalidated_at));

    // A registration older than the invalidation does not revive it; a newer one does.
    assert_eq!(
        leader_state
            .register(key.clone(), Timestamp::from_secs(999))
            .await
            .unwrap(),
        TokenValidity::Invalidated { at: invalidated_at }
    );
    assert_eq!(
        leader_state
            .register(key.clone(), Timestamp::from_secs(1_001))
            .await
            .unwrap(),
        TokenValidity::Valid
    );
    wait_everywhere(
        "the revival on every node",
        &nodes,
        &key,
        TokenValidity::Valid,
    )
    .await;

    // Several events at once are coalesced and all answered.
    let many: Vec<_> = (0..20u64)
        .map(|i| {
            let state = leader_state.clone();
            tokio::spawn(async move {
                let key = TokenKey::new("tenant-a", format!("{i:08x}"));
                state.register(key, Timestamp::from_secs(10)).await
            })
        })
        .collect();
    for task in many {
        assert_eq!(task.await.unwrap().unwrap(), TokenValidity::Valid);
    }
    drop(leader_state);

    // Stop the leader: the other two elect a new one and keep committing.
    let stopped = nodes.remove(&leader).unwrap();
    stopped.stop().await;
    let new_leader = wait_leader(&nodes).await;
    assert_ne!(new_leader, leader);
    let key2 = TokenKey::new("tenant-b", "0011");
    let at2 = Timestamp::from_secs(2_000);
    assert_eq!(
        nodes[&new_leader]
            .token_state()
            .invalidate(key2.clone(), at2)
            .await
            .unwrap(),
        TokenValidity::Invalidated { at: at2 }
    );
    wait_everywhere(
        "the second invalidation on the remaining nodes",
        &nodes,
        &key2,
        TokenValidity::Invalidated { at: at2 },
    )
    .await;

    // Restart the stopped node from its redb file: it catches up.
    let listener = bind(peers[&leader]).await;
    let restarted = ClusterNode::start(config(leader, &ca, &peers, dir.path()), listener)
        .await
        .unwrap();
    let restarted_state = restarted.token_state();
    // What it applied before stopping comes back from its own log...
    wait_until("the restarted node to re-apply its log", || {
        restarted_state.check(&key) == TokenValidity::Valid
    })
    .await;
    // ...and what it missed comes from the new leader.
    wait_until("the restarted node to catch up", || {
        restarted_state.check(&key2) == TokenValidity::Invalidated { at: at2 }
    })
    .await;
    nodes.insert(leader, restarted);
    assert_eq!(wait_leader(&nodes).await, new_leader);
    assert_eq!(restarted_state.len(), 23);

    for (_, node) in nodes {
        node.stop().await;
    }
}
