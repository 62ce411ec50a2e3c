//! The router follows the node's links: a node that joins a running cluster (links opened
//! later by membership, not at start) gets shards from the planner, and pushes accepted on
//! the founders for those shards are forwarded to it and delivered once each.
//!
//! Two founders and the joiner in region "eu", each with its own engine and router, mutual
//! TLS from a generated CA, all delivering to one APNs emulator (plaintext h2c on
//! 127.0.0.1). Every wait is a generous deadline on an observed condition.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_actors::apns::{DeviceToken, Notification, Priority, PushType, SigningKey, TokenMinter};
use herald_actors::seams::{ManualClock, Timestamp};
use herald_actors::{Credentials, Endpoint, Herald, Outcome, PushId, TenantConfig};
use herald_cluster::membership::StartMode;
use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
use herald_cluster::routing::{Router, RouterConfig};
use herald_cluster::transport::{ClusterCa, ClusterId, LinkSecurity, NodeId};
use herald_sim::emulator::{Emulator, EmulatorConfig, GeneratedKey, TeamConfig};
use tokio::net::TcpListener;

const CLUSTER: ClusterId = ClusterId(12);
const REGION: &str = "eu";
const SHARDS: u32 = 8;
const FOUNDERS: [u64; 2] = [1, 2];
const JOINER: u64 = 3;
const TEAM: &str = "TEAM123456";
const KEY_ID: &str = "KEY1234567";
const BUNDLE: &str = "com.example.app";
const TENANT: &str = "acme";
const START_SECS: u64 = 1_700_000_000;
/// Pushes each founder sends to shards the joiner owns.
const PUSHES_PER_FOUNDER: u64 = 10;
/// Deadline of every wait.
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
const TICK: Duration = Duration::from_millis(20);

struct Member {
    node: ClusterNode,
    router: Router,
}

struct Env {
    emulator: Emulator,
    key: GeneratedKey,
    clock: ManualClock,
    ca: ClusterCa,
    addrs: BTreeMap<u64, SocketAddr>,
}

impl Env {
    async fn engine(&self, seed: u64) -> Herald {
        let signing = SigningKey::from_p8_pem(
            self.key.p8_pem.as_bytes(),
            &self.key.key_id,
            &self.key.team_id,
        )
        .unwrap();
        let credentials = Credentials::Token(TokenMinter::with_default_interval(
            signing,
            Arc::new(self.clock.clone()),
        ));
        Herald::builder()
            .endpoint(Endpoint::plaintext(
                "127.0.0.1",
                self.emulator.addr().port(),
            ))
            .clock(Arc::new(self.clock.clone()))
            .rng_seed(seed)
            .shards(SHARDS)
            .tenant(TenantConfig::new(TENANT, credentials))
            .build()
            .await
            .unwrap()
    }

    fn config(&self, id: u64, start: StartMode) -> ClusterConfig {
        let security = LinkSecurity::MutualTls(self.ca.mutual_tls(NodeId(id)).unwrap());
        // Founders know only each other; the joiner knows everyone.
        let peers = self
            .addrs
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
        config.membership.shard_count = SHARDS as usize;
        config.membership.founder_regions =
            FOUNDERS.iter().map(|&id| (id, REGION.to_owned())).collect();
        config
    }

    async fn start(&self, id: u64, listener: TcpListener, start: StartMode) -> Member {
        let node = ClusterNode::start(self.config(id, start), listener)
            .await
            .unwrap();
        let engine = self.engine(id).await;
        let mut config = RouterConfig::new(100 + id);
        // Generous: a re-send must only follow a refusal, never a slow machine.
        config.ack_timeout = Duration::from_secs(30);
        let router = Router::start(&node, engine, config).unwrap();
        Member { node, router }
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

fn token(n: u64) -> DeviceToken {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes[31] = 0xAB;
    DeviceToken::from_bytes(&bytes).unwrap()
}

fn alert(n: u64) -> Notification {
    let mut b = Notification::builder(token(n), BUNDLE.parse().unwrap(), PushType::Alert);
    b.raw_payload(format!(r#"{{"aps":{{"alert":"hello {n}"}}}}"#));
    b.priority(Priority::Immediate);
    b.build().unwrap()
}

/// The region's owner of `n`'s shard as `member` sees it.
fn owner_of(member: &Member, n: u64) -> Option<u64> {
    let shard = member.router.engine().shard_of(&token(n)) as usize;
    member
        .node
        .shard_maps()
        .borrow()
        .get(REGION)
        .and_then(|map| map.owners.get(shard).copied())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_a_node_that_joined_after_the_routers_started() {
    let (team, key) = TeamConfig::generate(TEAM, KEY_ID, &[BUNDLE]).unwrap();
    let mut emulator_config = EmulatorConfig::plaintext();
    emulator_config.teams = vec![team];
    emulator_config.admin_bind = None;
    let clock = ManualClock::new(Timestamp::from_secs(START_SECS));
    let emulator = Emulator::start_with_clock(emulator_config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let mut listeners = BTreeMap::new();
    for id in FOUNDERS.into_iter().chain([JOINER]) {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let env = Env {
        emulator,
        key,
        clock,
        ca: ClusterCa::generate("herald-routing-join-test").unwrap(),
        addrs: listeners
            .iter()
            .map(|(&id, l)| (id, l.local_addr().unwrap()))
            .collect(),
    };

    let mut members = BTreeMap::new();
    for id in FOUNDERS {
        let listener = listeners.remove(&id).unwrap();
        members.insert(id, env.start(id, listener, StartMode::Bootstrap).await);
    }
    wait_until("the founders' shard map", || {
        members
            .values()
            .all(|m| m.node.shard_maps().borrow().contains_key(REGION))
    })
    .await;
    assert!(
        members
            .values()
            .all(|m| !m.node.peer_links().contains_key(&JOINER)),
        "founders start without a link to the joiner"
    );

    // The joiner is added through a founder, starts empty and gets shards from the planner.
    members[&1]
        .node
        .join(JOINER, env.addrs[&JOINER].to_string(), REGION, WAIT)
        .await
        .unwrap();
    let listener = listeners.remove(&JOINER).unwrap();
    members.insert(JOINER, env.start(JOINER, listener, StartMode::Join).await);
    wait_until("every node sees the joiner owning shards", || {
        members
            .values()
            .all(|m| (0..SHARDS as u64 * 16).any(|n| owner_of(m, n) == Some(JOINER)))
    })
    .await;
    wait_until("the founders linked to the joiner", || {
        FOUNDERS
            .iter()
            .all(|id| members[id].node.peer_links().contains_key(&JOINER))
    })
    .await;

    // Each founder accepts pushes for the joiner's shards.
    let mut accepted: Vec<(u64, PushId)> = vec![];
    for origin in FOUNDERS {
        let mut n = origin * 1_000_000;
        let mut sent = 0;
        while sent < PUSHES_PER_FOUNDER {
            n += 1;
            if owner_of(&members[&origin], n) != Some(JOINER) {
                continue;
            }
            let id = members[&origin]
                .router
                .send(TENANT, alert(n))
                .await
                .unwrap();
            accepted.push((origin, id));
            sent += 1;
        }
    }
    wait_until("an outcome for every push on its accepting node", || {
        accepted
            .iter()
            .all(|(node, id)| members[node].router.outcome(*id).is_some())
    })
    .await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for record in env.emulator.core().accepted() {
        *seen.entry(record.apns_id.to_lowercase()).or_default() += 1;
    }
    for (origin, id) in &accepted {
        let outcome = members[origin].router.outcome(*id).unwrap();
        assert!(
            matches!(outcome, Outcome::Delivered { .. }),
            "push {id} accepted on {origin}: {outcome:?}"
        );
        // The joiner's engine sent it; the founder's did not.
        assert!(members[&JOINER].router.engine().outcome(*id).is_some());
        assert!(members[origin].router.engine().outcome(*id).is_none());
        assert_eq!(seen.get(&id.to_string()).copied(), Some(1), "push {id}");
    }

    for (_, member) in members {
        let engine = member.router.engine().clone();
        member.router.stop();
        engine.shutdown(Duration::from_secs(5)).await;
        member.node.stop().await;
    }
    env.emulator.shutdown().await;
}
