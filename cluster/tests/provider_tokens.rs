//! Cluster-wide provider tokens on three in-process `ClusterNode`s (loopback, plaintext,
//! in-memory storage) sharing one `ManualClock`: every node presents the leader's JWT; after
//! `M` the leader rotates and every node follows; when the leader stops, the new leader
//! rotates when the token is due, not earlier.
//!
//! Election timeouts are fixed per node; every wait is a generous deadline on an observed
//! condition; "not earlier" is checked after the new leader completed several checks as a
//! ready leader (observed, not slept).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_actors::apns::{
    ConnectionAuth, ProviderToken, SigningKey, TokenConnectionAuth, TokenMinter,
};
use herald_actors::seams::{Clock as _, ManualClock, Timestamp};
use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
use herald_cluster::provider_tokens::{ProviderTokenConfig, ProviderTokenError, ProviderTokens};
use herald_cluster::transport::{ClusterId, LinkSecurity};
use tokio::net::TcpListener;

const CLUSTER: ClusterId = ClusterId(11);
const IDS: [u64; 3] = [1, 2, 3];
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(10);
/// 50 ms ticks: election timeouts of 0.7–1.1 s, long enough that a loaded machine does not
/// cause unplanned elections (the test checks who mints).
const TICK: Duration = Duration::from_millis(50);
const START: Timestamp = Timestamp::from_secs(1_700_000_000);
const KEY_ID: &str = "ABC123DEFG";
const TEAM_ID: &str = "TEAM123456";

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

fn config(id: u64, peers: &BTreeMap<u64, SocketAddr>) -> ClusterConfig {
    let mut config = ClusterConfig::new(
        id,
        CLUSTER,
        peers.clone(),
        "eu",
        StorageLocation::InMemory,
        LinkSecurity::Plaintext,
    );
    config.tick = TICK;
    support::distinct_timeouts_and_fast_links(&mut config);
    config
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

struct Member {
    node: ClusterNode,
    tokens: ProviderTokens,
    minter: TokenMinter,
}

async fn wait_leader(members: &BTreeMap<u64, Member>) -> u64 {
    let mut leader = 0;
    wait_until("a leader known to every node", || {
        let states: Vec<_> = members
            .values()
            .map(|m| *m.node.applied().borrow())
            .collect();
        let Some(first) = states[0].leader else {
            return false;
        };
        leader = first;
        states.iter().all(|s| s.leader == Some(first))
            && members
                .get(&first)
                .is_some_and(|m| m.node.applied().borrow().is_leader)
    })
    .await;
    leader
}

/// Wait until every member's minter holds a token issued at `issued_at`; return it.
async fn wait_token_everywhere(
    what: &str,
    members: &BTreeMap<u64, Member>,
    issued_at: Timestamp,
) -> ProviderToken {
    wait_until(what, || {
        members.values().all(|m| {
            m.minter
                .cached()
                .is_some_and(|t| t.issued_at() == issued_at)
        })
    })
    .await;
    let tokens: Vec<_> = members
        .values()
        .map(|m| m.minter.newest().unwrap())
        .collect();
    assert!(
        tokens.windows(2).all(|pair| pair[0] == pair[1]),
        "every node presents the same JWT"
    );
    tokens[0].clone()
}

/// Wait until `member` has completed `n` more checks as a ready leader.
async fn wait_leader_checks(member: &Member, n: u64) {
    let checks = member.tokens.checks();
    let from = checks.borrow().leader_checks;
    wait_until("leader checks", || {
        checks.borrow().leader_checks >= from + n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_per_key_rotated_by_the_leader_and_taken_over_on_failover() {
    let clock = ManualClock::new(START);
    let p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let key = SigningKey::from_p8_pem(p8.as_bytes(), KEY_ID, TEAM_ID).unwrap();

    let mut listeners = BTreeMap::new();
    for id in IDS {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: BTreeMap<u64, SocketAddr> = listeners
        .iter()
        .map(|(&id, l)| (id, l.local_addr().unwrap()))
        .collect();
    let mut tokens_config = ProviderTokenConfig::with_interval(minutes(30)).unwrap();
    tokens_config.check_every = Duration::from_millis(20);
    let mut members = BTreeMap::new();
    for (id, listener) in listeners {
        let node = ClusterNode::start(config(id, &peers), listener)
            .await
            .unwrap();
        let tokens = ProviderTokens::start(&node, Arc::new(clock.clone()), tokens_config);
        let minter = tokens.register(key.clone()).unwrap();
        // Registering again gives the same minter; another key (or team) under the same
        // key id is refused, so a wrong `.p8` never borrows this key's tokens.
        assert!(tokens.register(key.clone()).is_ok());
        let impostor = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let impostor = SigningKey::from_p8_pem(impostor.as_bytes(), KEY_ID, TEAM_ID).unwrap();
        assert!(matches!(
            tokens.register(impostor),
            Err(ProviderTokenError::KeyMismatch { .. })
        ));
        let other_team = SigningKey::from_p8_pem(p8.as_bytes(), KEY_ID, "TEAM654321").unwrap();
        assert!(matches!(
            tokens.register(other_team),
            Err(ProviderTokenError::TeamMismatch { .. })
        ));
        // Registrations count: a key is served until every one is given back, then its id
        // is free for another key.
        let spare_p8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let spare = SigningKey::from_p8_pem(spare_p8.as_bytes(), "SPARE12345", TEAM_ID).unwrap();
        tokens.register(spare.clone()).unwrap();
        tokens.register(spare).unwrap();
        tokens.release("SPARE12345");
        assert!(tokens.minter("SPARE12345").is_some());
        tokens.release("SPARE12345");
        assert!(tokens.minter("SPARE12345").is_none());
        let reused = SigningKey::from_p8_pem(p8.as_bytes(), "SPARE12345", "TEAM654321").unwrap();
        tokens.register(reused).unwrap();
        tokens.release("SPARE12345");
        members.insert(
            id,
            Member {
                node,
                tokens,
                minter,
            },
        );
    }

    // The leader mints at once (no token yet); every node installs the same JWT.
    let leader = wait_leader(&members).await;
    let first = wait_token_everywhere("the first token on every node", &members, START).await;
    assert_eq!((first.key_id(), first.team_id()), (KEY_ID, TEAM_ID));
    // Connections on every node present it.
    for member in members.values() {
        let mut auth = TokenConnectionAuth::new(member.minter.clone());
        assert_eq!(
            auth.authorization(clock.now()).unwrap().unwrap(),
            first.bearer_header()
        );
    }

    // Not due at 29 minutes.
    clock.advance(minutes(29));
    wait_leader_checks(&members[&leader], 3).await;
    for member in members.values() {
        assert_eq!(member.minter.cached(), Some(first.clone()));
    }
    // Due at 30: the leader rotates, every node follows.
    clock.advance(minutes(1));
    let second = wait_token_everywhere(
        "the rotated token on every node",
        &members,
        START.saturating_add(minutes(30)),
    )
    .await;
    assert_ne!(second, first);
    assert_eq!(members[&leader].tokens.checks().borrow().minted, 2);

    // Ten minutes later the leader stops.
    clock.advance(minutes(10));
    let old = members.remove(&leader).unwrap();
    old.tokens.stop();
    old.node.stop().await;
    let new_leader = wait_leader(&members).await;
    assert_ne!(new_leader, leader);
    // The new leader takes over the schedule: the token is 10 minutes old, not due.
    wait_leader_checks(&members[&new_leader], 5).await;
    for member in members.values() {
        assert_eq!(member.minter.cached(), Some(second.clone()));
    }
    assert_eq!(members[&new_leader].tokens.checks().borrow().minted, 0);
    // 19 minutes later: still not due.
    clock.advance(minutes(19));
    wait_leader_checks(&members[&new_leader], 3).await;
    assert_eq!(members[&new_leader].tokens.checks().borrow().minted, 0);
    // At 30 minutes it is due: the new leader rotates, the other node follows.
    clock.advance(minutes(1));
    let third = wait_token_everywhere(
        "the new leader's token on every node",
        &members,
        START.saturating_add(minutes(60)),
    )
    .await;
    assert_ne!(third, second);
    assert_eq!(members[&new_leader].tokens.checks().borrow().minted, 1);

    // No node ever signed a token itself: every one came from the leader.
    for member in members.values() {
        assert_eq!(member.minter.minted_count(), 0);
        assert_eq!(member.minter.installed_count(), 3);
    }
    for (_, member) in members {
        member.tokens.stop();
        member.node.stop().await;
    }
}
