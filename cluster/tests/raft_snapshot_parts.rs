//! A node that joins a cluster whose replicated state is larger than one transport frame
//! (4 MiB) catches up by a snapshot sent in parts (`raft::chunks`), over mutual TLS.
//!
//! Two founders apply ~60,000 device-token registrations (a snapshot of several MiB), then a
//! third node joins: it must end at the leader's applied index with the same state-machine
//! digest and every token known. Every wait is a generous deadline on an observed condition.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use herald_actors::seams::Timestamp;
use herald_actors::token_state::{TokenEvent, TokenKey, TokenState, TokenValidity};
use herald_cluster::membership::StartMode;
use herald_cluster::node::{ClusterConfig, ClusterNode, ProposeError, StorageLocation};
use herald_cluster::state::{ApplyResult, Command, TOKEN_EVENTS_PER_COMMAND_MAX, TokenEventRecord};
use herald_cluster::transport::{ClusterCa, ClusterId, FRAME_BYTES_MAX, LinkSecurity, NodeId};
use tokio::net::TcpListener;

const CLUSTER: ClusterId = ClusterId(13);
const REGION: &str = "eu";
const FOUNDERS: [u64; 2] = [1, 2];
const JOINER: u64 = 3;
const TENANT: &str = "acme";
const TOKENS: usize = 15 * TOKEN_EVENTS_PER_COMMAND_MAX;
const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);
const TICK: Duration = Duration::from_millis(20);

fn config(
    ca: &ClusterCa,
    addrs: &BTreeMap<u64, SocketAddr>,
    id: u64,
    start: StartMode,
) -> ClusterConfig {
    let security = LinkSecurity::MutualTls(ca.mutual_tls(NodeId(id)).unwrap());
    let peers = addrs
        .iter()
        .filter(|(id, _)| start == StartMode::Join || FOUNDERS.contains(id))
        .map(|(&id, &addr)| (id, addr))
        .collect();
    let mut config = ClusterConfig::new(
        id,
        CLUSTER,
        peers,
        REGION,
        StorageLocation::InMemory,
        security,
    );
    config.tick = TICK;
    support::distinct_timeouts_and_fast_links(&mut config);
    config.membership.start = start;
    config.membership.shard_count = 8;
    config.membership.founder_regions =
        FOUNDERS.iter().map(|&id| (id, REGION.to_owned())).collect();
    config
}

fn token_hex(n: usize) -> String {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
    bytes[31] = 0x5A;
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_catches_up_by_a_snapshot_larger_than_a_frame() {
    let ca = ClusterCa::generate("herald-snapshot-parts-test").unwrap();
    let mut listeners = BTreeMap::new();
    for id in [1, 2, JOINER] {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: BTreeMap<u64, SocketAddr> = listeners
        .iter()
        .map(|(&id, l)| (id, l.local_addr().unwrap()))
        .collect();
    let mut nodes = BTreeMap::new();
    for id in FOUNDERS {
        let listener = listeners.remove(&id).unwrap();
        let node = ClusterNode::start(config(&ca, &addrs, id, StartMode::Bootstrap), listener)
            .await
            .unwrap();
        nodes.insert(id, node);
    }
    wait_until("a leader", async || {
        nodes[&1].applied().borrow().leader.is_some()
    })
    .await;

    // Fill the state: registrations in the largest commands allowed.
    for batch in 0..TOKENS / TOKEN_EVENTS_PER_COMMAND_MAX {
        let events: Vec<TokenEventRecord> = (0..TOKEN_EVENTS_PER_COMMAND_MAX)
            .map(|i| TokenEventRecord {
                tenant: TENANT.to_owned(),
                token: token_hex(batch * TOKEN_EVENTS_PER_COMMAND_MAX + i),
                event: TokenEvent::Registered {
                    at: Timestamp::from_secs(1_700_000_000),
                },
            })
            .collect();
        // Asked of node 1: forwarded to the leader if node 1 is a follower. A leadership
        // change (two founders on a loaded machine) may leave a proposal's fate unknown:
        // registering again is idempotent, so propose again.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let result = nodes[&1]
                .propose(Command::TokenEvents(events.clone()), WAIT)
                .await;
            match result {
                Ok(ApplyResult::TokenEvents(_)) => break,
                Err(
                    e @ (ProposeError::NotLeader { .. }
                    | ProposeError::LeadershipLost
                    | ProposeError::LeaderUnreachable { .. }
                    | ProposeError::Overloaded),
                ) if tokio::time::Instant::now() < deadline => {
                    println!("batch {batch}: {e}; proposing again");
                    tokio::time::sleep(POLL).await;
                }
                other => panic!("batch {batch} not applied: {other:?}"),
            }
        }
    }
    let image = nodes[&1].inspect(WAIT).await.unwrap().snapshot.unwrap();
    println!("state: {} bytes for {TOKENS} tokens", image.len());
    assert!(
        image.len() > FRAME_BYTES_MAX,
        "the state ({} bytes) must not fit one frame ({FRAME_BYTES_MAX})",
        image.len()
    );

    // Join: the joiner gets the whole state by snapshot, in parts.
    nodes[&1]
        .membership_handle()
        .join(JOINER, addrs[&JOINER].to_string(), REGION, WAIT)
        .await
        .unwrap();
    let listener = listeners.remove(&JOINER).unwrap();
    let joiner = ClusterNode::start(config(&ca, &addrs, JOINER, StartMode::Join), listener)
        .await
        .unwrap();
    nodes.insert(JOINER, joiner);
    wait_until("the joiner at the founders' state", async || {
        let Some(founder) = nodes[&1].inspect(WAIT).await else {
            return false;
        };
        let Some(joined) = nodes[&JOINER].inspect(WAIT).await else {
            return false;
        };
        joined.applied_index == founder.applied_index
            && joined.snapshot.is_ok()
            && joined.snapshot == founder.snapshot
    })
    .await;
    let tokens = nodes[&JOINER].token_state();
    for n in [0, TOKENS / 2, TOKENS - 1] {
        let key = TokenKey::new(TENANT, token_hex(n));
        assert_eq!(tokens.check(&key), TokenValidity::Valid, "token {n}");
    }
    assert!(tokens.len() >= TOKENS);

    for (_, node) in nodes {
        node.stop().await;
    }
}
