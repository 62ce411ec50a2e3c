//! Push routing and proposal forwarding on three in-process nodes over loopback mutual TLS,
//! each with its own engine, all delivering to one APNs emulator (plaintext h2c on 127.0.0.1).
//!
//! - proposals made on a follower are forwarded to the leader and applied everywhere;
//! - pushes accepted on every node are delivered once each, each by its shard's owner, and
//!   every accepting node answers their outcome;
//! - a shard-map change (a new epoch) while pushes are in flight loses none;
//! - a forged ForwardPush with a stale epoch, or for a shard the receiver does not own, is
//!   refused with the receiver's epoch, and a current one is accepted and its outcome sent
//!   back;
//! - an origin re-sends a refused push to its owner under the same id, and answers the
//!   outcome the owner sends back.
//!
//! Every wait is a generous deadline on an observed condition, never a sleep that assumes a
//! machine speed.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_actors::apns::{DeviceToken, Notification, Priority, PushType, SigningKey, TokenMinter};
use herald_actors::seams::{DetRng, ManualClock, TcpConnector, Timestamp};
use herald_actors::{Credentials, Endpoint, Herald, Outcome, PushId, TenantConfig};
use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
use herald_cluster::routing::wire::{
    ForwardedPush, decode_outcome, decode_push, encode_outcome, encode_push,
};
use herald_cluster::routing::{Router, RouterConfig};
use herald_cluster::state::{ApplyResult, Command, MemberState, ShardMap};
use herald_cluster::transport::{
    self, AckResult, ClusterCa, ClusterId, Inbound, InboundConfig, LinkSecurity, NodeId, PeerLink,
    PeerLinkArguments, PeerLinkConfig, PeerMessage, spawn_listener,
};
use herald_sim::emulator::{Emulator, EmulatorConfig, GeneratedKey, TeamConfig};
use ractor::Actor;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const CLUSTER: ClusterId = ClusterId(11);
const REGION: &str = "eu";
const SHARDS: u32 = 8;
const TEAM: &str = "TEAM123456";
const KEY_ID: &str = "KEY1234567";
const BUNDLE: &str = "com.example.app";
const TENANT: &str = "acme";
const START_SECS: u64 = 1_700_000_000;
/// Deadline of every wait.
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
const TICK: Duration = Duration::from_millis(20);
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most batches one node sends in the map-change phase.
const BATCHES_MAX: u64 = 2_000;

struct Env {
    emulator: Emulator,
    key: GeneratedKey,
    clock: ManualClock,
    ca: ClusterCa,
}

async fn env() -> Env {
    let (team, key) = TeamConfig::generate(TEAM, KEY_ID, &[BUNDLE]).unwrap();
    let mut config = EmulatorConfig::plaintext();
    config.teams = vec![team];
    config.admin_bind = None;
    let clock = ManualClock::new(Timestamp::from_secs(START_SECS));
    let emulator = Emulator::start_with_clock(config, Arc::new(clock.clone()))
        .await
        .unwrap();
    Env {
        emulator,
        key,
        clock,
        ca: ClusterCa::generate("herald-routing-test").unwrap(),
    }
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

    fn config(&self, id: u64, peers: &BTreeMap<u64, SocketAddr>) -> ClusterConfig {
        let security = LinkSecurity::MutualTls(self.ca.mutual_tls(NodeId(id)).unwrap());
        let mut config = ClusterConfig::new(
            id,
            CLUSTER,
            peers.clone(),
            REGION,
            StorageLocation::InMemory,
            security,
        );
        config.tick = TICK;
        // These tests pin members and shard maps themselves, epoch by epoch.
        config.membership.planner = false;
        support::distinct_timeouts_and_fast_links(&mut config);
        config
    }

    /// Start the nodes of `ids` (whose listeners are given) of a cluster of `peers`, each
    /// with an engine and a router.
    async fn start(
        &self,
        listeners: BTreeMap<u64, TcpListener>,
        peers: &BTreeMap<u64, SocketAddr>,
    ) -> BTreeMap<u64, Member> {
        let mut members = BTreeMap::new();
        for (id, listener) in listeners {
            let node = ClusterNode::start(self.config(id, peers), listener)
                .await
                .unwrap();
            let engine = self.engine(id).await;
            let mut config = RouterConfig::new(100 + id);
            // Generous: a re-send must only follow a refusal, never a slow machine.
            config.ack_timeout = Duration::from_secs(30);
            let router = Router::start(&node, engine, config).unwrap();
            members.insert(id, Member { node, router });
        }
        members
    }
}

struct Member {
    node: ClusterNode,
    router: Router,
}

async fn listeners(ids: &[u64]) -> (BTreeMap<u64, TcpListener>, BTreeMap<u64, SocketAddr>) {
    let mut listeners = BTreeMap::new();
    for &id in ids {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers = listeners
        .iter()
        .map(|(&id, l)| (id, l.local_addr().unwrap()))
        .collect();
    (listeners, peers)
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

/// Wait until every node names the same leader; return it.
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
                .is_none_or(|m| m.node.applied().borrow().is_leader)
    })
    .await;
    leader
}

async fn wait_map(members: &BTreeMap<u64, Member>, epoch: u64) {
    wait_until(&format!("shard map epoch {epoch} on every node"), || {
        members.values().all(|m| {
            m.node
                .shard_maps()
                .borrow()
                .get(REGION)
                .is_some_and(|map| map.epoch == epoch)
        })
    })
    .await;
}

/// Make `ids` active members of the region through `via`.
async fn activate(via: &ClusterNode, ids: &[u64], peers: &BTreeMap<u64, SocketAddr>) {
    for &id in ids {
        let add = Command::AddMember {
            id,
            addr: peers[&id].to_string(),
            region: REGION.into(),
        };
        assert_eq!(
            via.propose(add, PROPOSE_TIMEOUT).await,
            Ok(ApplyResult::Applied)
        );
        let active = Command::SetMemberState {
            id,
            state: MemberState::Active,
        };
        assert_eq!(
            via.propose(active, PROPOSE_TIMEOUT).await,
            Ok(ApplyResult::Applied)
        );
    }
}

fn assign(epoch: u64, owners: &[u64]) -> Command {
    Command::AssignShards {
        region: REGION.into(),
        epoch,
        owners: (0..SHARDS as usize)
            .map(|s| owners[s % owners.len()])
            .collect(),
    }
}

fn token(n: u64) -> DeviceToken {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes[31] = 0xCD;
    DeviceToken::from_bytes(&bytes).unwrap()
}

fn alert(n: u64) -> Notification {
    let mut b = Notification::builder(token(n), BUNDLE.parse().unwrap(), PushType::Alert);
    b.raw_payload(format!(r#"{{"aps":{{"alert":"hello {n}"}}}}"#));
    b.priority(Priority::Immediate);
    b.build().unwrap()
}

/// Wait until every push has a `Delivered` outcome on the node that accepted it.
async fn wait_delivered(members: &BTreeMap<u64, Member>, accepted: &[(u64, PushId)]) {
    wait_until("an outcome for every push on its accepting node", || {
        accepted
            .iter()
            .all(|(node, id)| members[node].router.outcome(*id).is_some())
    })
    .await;
    for (node, id) in accepted {
        let outcome = members[node].router.outcome(*id).unwrap();
        assert!(
            matches!(outcome, Outcome::Delivered { .. }),
            "push {id} accepted on {node}: {outcome:?}"
        );
    }
}

/// Every push in the emulator's record exactly once.
fn assert_delivered_once(emulator: &Emulator, accepted: &[(u64, PushId)]) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for record in emulator.core().accepted() {
        *seen.entry(record.apns_id.to_lowercase()).or_default() += 1;
    }
    for (node, id) in accepted {
        assert_eq!(
            seen.get(&id.to_string()).copied(),
            Some(1),
            "push {id} accepted on node {node} must be delivered exactly once"
        );
    }
}

async fn stop(members: BTreeMap<u64, Member>) {
    for (_, member) in members {
        let engine = member.router.engine().clone();
        member.router.stop();
        engine.shutdown(Duration::from_secs(5)).await;
        member.node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_their_owners_and_survive_a_map_change() {
    let env = env().await;
    let ids = [1, 2, 3];
    let (listeners, peers) = listeners(&ids).await;
    let members = env.start(listeners, &peers).await;
    let leader = wait_leader(&members).await;
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();

    // Proposal forwarding: every command below is proposed on a follower, answered with the
    // result it applied there, and applied everywhere.
    let via = &members[&follower].node;
    activate(via, &ids, &peers).await;
    assert_eq!(
        via.propose(assign(1, &[1, 2, 3]), PROPOSE_TIMEOUT).await,
        Ok(ApplyResult::Applied)
    );
    // Applied on the follower before it answered.
    assert_eq!(
        via.shard_maps().borrow().get(REGION).map(|m| m.epoch),
        Some(1)
    );
    wait_map(&members, 1).await;
    // A stale epoch proposed on a follower is rejected by the state machine, not lost.
    assert!(matches!(
        via.propose(assign(1, &[2]), PROPOSE_TIMEOUT).await,
        Ok(ApplyResult::Rejected(_))
    ));

    // Pushes accepted on every node: delivered once each, by their shard's owner.
    let mut accepted = vec![];
    for n in 0..48u64 {
        let node = ids[(n % 3) as usize];
        let id = members[&node].router.send(TENANT, alert(n)).await.unwrap();
        accepted.push((node, id));
    }
    wait_delivered(&members, &accepted).await;
    assert_delivered_once(&env.emulator, &accepted);
    let map1 = members[&1]
        .node
        .shard_maps()
        .borrow()
        .get(REGION)
        .cloned()
        .unwrap();
    let mut forwarded = 0;
    for (n, (node, id)) in accepted.iter().enumerate() {
        let shard = members[&1].router.engine().shard_of(&token(n as u64));
        let owner = map1.owners[shard as usize];
        forwarded += usize::from(owner != *node);
        for (&other, member) in &members {
            assert_eq!(
                member.router.engine().outcome(*id).is_some(),
                other == owner,
                "push {id} (shard {shard}) must be sent by its owner {owner} only"
            );
        }
    }
    assert!(forwarded > 0, "some pushes must have been forwarded");

    // A map change while pushes are in flight on every node: none is lost. Every node keeps
    // sending until it has applied the new map and sent ten more batches.
    let sent = AtomicUsize::new(0);
    let batches: Vec<_> = ids
        .iter()
        .map(|&node| {
            let member = &members[&node];
            let sent = &sent;
            async move {
                let mut accepted = vec![];
                let mut after = 0;
                for n in 0..BATCHES_MAX {
                    let n = 10_000 * node + 2 * n;
                    let batch = vec![alert(n), alert(n + 1)];
                    let results = member.router.send_batch(TENANT, batch).await.unwrap();
                    for (k, result) in (n..).zip(results) {
                        accepted.push((node, result.unwrap(), k));
                    }
                    sent.fetch_add(2, Ordering::SeqCst);
                    let epoch = member
                        .node
                        .shard_maps()
                        .borrow()
                        .get(REGION)
                        .map(|m| m.epoch);
                    after += usize::from(epoch == Some(2));
                    if after == 10 {
                        break;
                    }
                }
                accepted
            }
        })
        .collect();
    let change = async {
        wait_until("some pushes sent", || sent.load(Ordering::SeqCst) >= 60).await;
        members[&follower]
            .node
            .propose(assign(2, &[3, 1, 2]), PROPOSE_TIMEOUT)
            .await
    };
    let (results, changed) = tokio::join!(futures_util::future::join_all(batches), change);
    assert_eq!(changed, Ok(ApplyResult::Applied));
    wait_map(&members, 2).await;
    let with_tokens: Vec<(u64, PushId, u64)> = results.into_iter().flatten().collect();
    let accepted: Vec<(u64, PushId)> = with_tokens
        .iter()
        .map(|&(node, id, _)| (node, id))
        .collect();
    wait_delivered(&members, &accepted).await;
    assert_delivered_once(&env.emulator, &accepted);
    // Both maps were in use: some pushes were sent by their epoch-1 owner, some by their
    // epoch-2 owner (every shard changed owner).
    let map2 = members[&1]
        .node
        .shard_maps()
        .borrow()
        .get(REGION)
        .cloned()
        .unwrap();
    let (mut by_old, mut by_new) = (0, 0);
    for (_, id, n) in &with_tokens {
        let sender: Vec<u64> = members
            .iter()
            .filter(|(_, m)| m.router.engine().outcome(*id).is_some())
            .map(|(&node, _)| node)
            .collect();
        assert_eq!(sender.len(), 1, "push {id} sent by {sender:?}");
        let shard = members[&1].router.engine().shard_of(&token(*n)) as usize;
        if sender[0] == map1.owners[shard] {
            by_old += 1;
        } else {
            assert_eq!(
                sender[0], map2.owners[shard],
                "push {id} sent by a non-owner"
            );
            by_new += 1;
        }
    }
    assert!(
        by_old > 0 && by_new > 0,
        "old map {by_old}, new map {by_new}"
    );

    stop(members).await;
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forward_pushes_are_fenced_by_epoch_and_owner() {
    let env = env().await;
    // Nodes 1 and 2 are real (a quorum of three); the test speaks as node 3.
    let (mut listeners, peers) = listeners(&[1, 2, 3]).await;
    let fake_listener = listeners.remove(&3).unwrap();
    let members = env.start(listeners, &peers).await;
    wait_leader(&members).await;
    let via = &members[&1].node;
    activate(via, &[1, 2], &peers).await;
    assert_eq!(
        via.propose(assign(1, &[1]), PROPOSE_TIMEOUT).await,
        Ok(ApplyResult::Applied)
    );
    assert_eq!(
        via.propose(assign(2, &[1, 2]), PROPOSE_TIMEOUT).await,
        Ok(ApplyResult::Applied)
    );
    wait_map(&members, 2).await;

    // What node 1 answers node 3 arrives at node 3's (fake) listener.
    let (deliver, mut answers) = mpsc::channel(64);
    let security = LinkSecurity::MutualTls(env.ca.mutual_tls(NodeId(3)).unwrap());
    let _fake_inbound = spawn_listener(
        fake_listener,
        Arc::new(InboundConfig::new(
            NodeId(3),
            CLUSTER,
            security.clone(),
            deliver,
        )),
    )
    .unwrap();
    let (arguments, to_node1) = PeerLinkArguments::new(PeerLinkConfig::new(
        NodeId(3),
        NodeId(1),
        CLUSTER,
        "127.0.0.1",
        peers[&1].port(),
        security,
        Arc::new(TcpConnector),
        DetRng::from_seed(3),
    ));
    let (link, _) = Actor::spawn(None, PeerLink, arguments).await.unwrap();

    let map: ShardMap = via.shard_maps().borrow().get(REGION).cloned().unwrap();
    let engine = members[&1].router.engine().clone();
    // Tokens of a shard node 1 owns, and of one node 2 owns, at epoch 2.
    let find = |owner: u64, skip: u64| {
        (skip..)
            .find(|&n| map.owners[engine.shard_of(&token(n)) as usize] == owner)
            .unwrap()
    };
    let own = find(1, 0);
    let other = find(2, 0);
    let current = find(1, own + 1);
    let mut next_id = 0xF00D_0000u128;
    let mut forge = |n: u64, epoch: u64| {
        next_id += 1;
        let id = PushId::from_u128(next_id);
        let notification = alert(n).with_apns_id(id.apns_id());
        let shard = engine.shard_of(&token(n));
        let push = ForwardedPush::new(TENANT, shard, REGION, epoch, id, notification);
        let push_id = transport::PushId(id.as_u128().to_be_bytes());
        (
            id,
            push_id,
            PeerMessage::ForwardPush {
                push_id,
                push: encode_push(&push).unwrap(),
            },
        )
    };
    // Outcomes that arrive while waiting for an ack (node 1 may relay a push's outcome
    // before its ack task sends the ack: no order is promised) are kept for later.
    let mut early_outcomes: Vec<(transport::PushId, Vec<u8>)> = vec![];
    let mut ack = async |answers: &mut mpsc::Receiver<Inbound>, expected: transport::PushId| loop {
        let inbound = tokio::time::timeout(WAIT, answers.recv())
            .await
            .expect("an ack from node 1")
            .unwrap();
        assert_eq!(inbound.from, NodeId(1));
        match inbound.msg {
            PeerMessage::Ack { push_id, result } if push_id == expected => return result,
            PeerMessage::Outcome { push_id, outcome } => early_outcomes.push((push_id, outcome)),
            _ => {}
        }
    };

    // Stale epoch: refused with node 1's epoch; never sent.
    let (stale_id, push_id, message) = forge(own, 1);
    to_node1.try_send(message).unwrap();
    assert_eq!(
        ack(&mut answers, push_id).await,
        AckResult::StaleEpoch { epoch: 2 }
    );
    // A future epoch is refused too.
    let (_, push_id, message) = forge(own, 3);
    to_node1.try_send(message).unwrap();
    assert_eq!(
        ack(&mut answers, push_id).await,
        AckResult::StaleEpoch { epoch: 2 }
    );
    // Current epoch, but a shard node 2 owns: not the owner.
    let (_, push_id, message) = forge(other, 2);
    to_node1.try_send(message).unwrap();
    assert_eq!(ack(&mut answers, push_id).await, AckResult::NotOwner);
    // Garbage in place of a push: a typed refusal, the node keeps serving.
    let garbage_id = transport::PushId([9; 16]);
    to_node1
        .try_send(PeerMessage::ForwardPush {
            push_id: garbage_id,
            push: b"not a push".to_vec(),
        })
        .unwrap();
    assert!(matches!(
        ack(&mut answers, garbage_id).await,
        AckResult::Refused { .. }
    ));
    // Current epoch and owner: accepted (after its WAL append), delivered, and its outcome
    // comes back to the (fake) origin.
    let (good_id, push_id, message) = forge(current, 2);
    to_node1.try_send(message).unwrap();
    assert_eq!(ack(&mut answers, push_id).await, AckResult::Accepted);
    let early = early_outcomes
        .iter()
        .find(|(id, _)| *id == push_id)
        .map(|(_, outcome)| decode_outcome(outcome).unwrap());
    let outcome = loop {
        if let Some(outcome) = early {
            break outcome;
        }
        let inbound = tokio::time::timeout(WAIT, answers.recv())
            .await
            .unwrap()
            .unwrap();
        if let PeerMessage::Outcome {
            push_id: id,
            outcome,
        } = inbound.msg
            && id == push_id
        {
            break decode_outcome(&outcome).unwrap();
        }
    };
    assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    let delivered: Vec<String> = env
        .emulator
        .core()
        .accepted()
        .into_iter()
        .map(|r| r.apns_id.to_lowercase())
        .collect();
    assert_eq!(delivered, vec![good_id.to_string()]);
    assert!(engine.outcome(stale_id).is_none());

    // The origin side against a (fake) owner: node 3 joins and owns shards at epoch 3. A
    // push node 1 accepts for one of them goes to node 3; refused `StaleEpoch`, node 1 sends
    // it again with the same id; accepted, the push is node 1's; the outcome node 3 sends
    // back is what node 1 answers for it.
    activate(via, &[3], &peers).await;
    assert_eq!(
        via.propose(assign(3, &[1, 2, 3]), PROPOSE_TIMEOUT).await,
        Ok(ApplyResult::Applied)
    );
    wait_map(&members, 3).await;
    let map: ShardMap = via.shard_maps().borrow().get(REGION).cloned().unwrap();
    let n = (0..)
        .find(|&n| map.owners[engine.shard_of(&token(n)) as usize] == 3)
        .unwrap();
    let fake_owner = async {
        let mut seen = vec![];
        while seen.len() < 2 {
            let inbound = tokio::time::timeout(WAIT, answers.recv())
                .await
                .expect("a forwarded push for node 3")
                .unwrap();
            let PeerMessage::ForwardPush { push_id, push } = inbound.msg else {
                continue;
            };
            let push = decode_push(&push).unwrap();
            assert_eq!((push.tenant.as_str(), push.epoch), (TENANT, 3));
            assert_eq!(push.push_id, push_id.0);
            let result = if seen.is_empty() {
                AckResult::StaleEpoch { epoch: 3 }
            } else {
                AckResult::Accepted
            };
            to_node1
                .try_send(PeerMessage::Ack { push_id, result })
                .unwrap();
            seen.push(push.id());
        }
        seen
    };
    let (sent, seen) = tokio::join!(members[&1].router.send(TENANT, alert(n)), fake_owner);
    let id = sent.unwrap();
    assert_eq!(seen, vec![id, id]);
    assert!(members[&1].router.outcome(id).is_none());
    let outcome = Outcome::Delivered {
        apns_id: Some(id.to_string()),
    };
    to_node1
        .try_send(PeerMessage::Outcome {
            push_id: transport::PushId(id.as_u128().to_be_bytes()),
            outcome: encode_outcome(&outcome).unwrap(),
        })
        .unwrap();
    wait_until("the owner's outcome on node 1", || {
        members[&1].router.outcome(id) == Some(outcome.clone())
    })
    .await;

    // Batches: node 1's batch of three pushes for node 3's shards travels as one
    // ForwardBatch; node 3 (fake) takes two and answers the third StaleEpoch in one AckBatch;
    // node 1 sends that one again, alone.
    let for_node3: Vec<u64> = (n + 1..)
        .filter(|&n| map.owners[engine.shard_of(&token(n)) as usize] == 3)
        .take(3)
        .collect();
    let fake_owner = async {
        let mut batches = 0;
        let mut alone = vec![];
        while alone.is_empty() {
            let inbound = tokio::time::timeout(WAIT, answers.recv())
                .await
                .expect("forwarded pushes for node 3")
                .unwrap();
            match inbound.msg {
                PeerMessage::ForwardBatch { pushes } => {
                    batches += 1;
                    assert_eq!(pushes.len(), 3);
                    let results = pushes
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            let result = if i == 2 {
                                AckResult::StaleEpoch { epoch: 3 }
                            } else {
                                AckResult::Accepted
                            };
                            (p.push_id, result)
                        })
                        .collect();
                    to_node1
                        .try_send(PeerMessage::AckBatch { results })
                        .unwrap();
                }
                PeerMessage::ForwardPush { push_id, .. } => {
                    to_node1
                        .try_send(PeerMessage::Ack {
                            push_id,
                            result: AckResult::Accepted,
                        })
                        .unwrap();
                    alone.push(push_id);
                }
                _ => {}
            }
        }
        (batches, alone)
    };
    let batch: Vec<Notification> = for_node3.iter().map(|&n| alert(n)).collect();
    let (results, (batches, alone)) =
        tokio::join!(members[&1].router.send_batch(TENANT, batch), fake_owner);
    let ids: Vec<PushId> = results.unwrap().into_iter().map(Result::unwrap).collect();
    assert_eq!(batches, 1);
    assert_eq!(
        alone,
        vec![transport::PushId(ids[2].as_u128().to_be_bytes())]
    );
    // And served: a forged batch to node 1 gets one answer per push, each fenced alone.
    let (_, stale_push, stale) = forge(own, 1);
    let mine_now = (current + 1..)
        .find(|&n| map.owners[engine.shard_of(&token(n)) as usize] == 1)
        .unwrap();
    let (_, fresh_push, fresh) = forge(mine_now, 3);
    let entry = |message: PeerMessage| match message {
        PeerMessage::ForwardPush { push_id, push } => transport::ForwardedEntry { push_id, push },
        other => panic!("{other:?}"),
    };
    to_node1
        .try_send(PeerMessage::ForwardBatch {
            pushes: vec![entry(stale), entry(fresh)],
        })
        .unwrap();
    let results = loop {
        let inbound = tokio::time::timeout(WAIT, answers.recv())
            .await
            .expect("a batch ack from node 1")
            .unwrap();
        if let PeerMessage::AckBatch { results } = inbound.msg {
            break results;
        }
    };
    assert_eq!(
        results,
        vec![
            (stale_push, AckResult::StaleEpoch { epoch: 3 }),
            (fresh_push, AckResult::Accepted)
        ]
    );

    // A proposal on the follower is forwarded, applied, and its (rejected) result typed.
    let leader = wait_leader(&members).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let remove = Command::RemoveTenant {
        tenant: "nobody".into(),
    };
    assert!(matches!(
        members[&follower]
            .node
            .propose(remove, PROPOSE_TIMEOUT)
            .await,
        Ok(ApplyResult::Rejected(_))
    ));

    link.stop(None);
    stop(members).await;
    env.emulator.shutdown().await;
}
