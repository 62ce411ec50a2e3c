//! `herald demo`: a whole Herald cluster on one machine, no Apple account needed.
//!
//! In this process: the APNs emulator (TLS), **three cluster nodes in two regions** (nodes 1
//! and 2 in `eu`, node 3 in `us`; Raft over loopback mutual TLS with a generated cluster CA,
//! Raft state and write-ahead logs in redb files), each with its actor engine and its
//! router; two tenants (two teams with generated keys and their own bundle ids); a device set
//! with some unregistered and some bad tokens. The workload goes to all three nodes (app
//! servers hit any node); each push travels to its shard's owner in the node's region. A
//! burst of 503s a third of the way in is ridden out by the tenants' circuit breakers. Then a
//! second wave goes to the tokens APNs reported unregistered, through other nodes: the
//! invalidations were replicated by Raft, so none of it may reach APNs. A progress bar, then
//! a summary table.
//!
//! The demo fails if an accepted push has no final outcome, if the emulator's record of
//! accepted notifications disagrees with the number reported delivered (a lost or
//! duplicated push), or if a second-wave push was sent.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use herald_actors::apns::{
    ApnsTlsConfig, DeviceToken, Notification, Payload, PushType, Reason, SigningKey, Topic,
};
use herald_actors::backoff::Backoff;
use herald_actors::breaker::BreakerState;
use herald_actors::limits;
use herald_actors::seams::{DetRng, SharedClock, SystemClock};
use herald_actors::wal::{
    CompletionSync, FileWal, GroupCommitWal, MemoryWal, SharedWal, WalLimits,
};
use herald_actors::{
    Credentials, Endpoint, Herald, Outcome, OutcomeRecord, PushError, PushId, TenantConfig, Tuning,
};
use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
use herald_cluster::provider_tokens::{ProviderTokenConfig, ProviderTokens};
use herald_cluster::routing::{Router, RouterConfig};
use herald_cluster::transport::tls::ClusterCa;
use herald_cluster::transport::{ClusterId, LinkSecurity, NodeId};
use herald_sim::emulator::{
    Burst, DeviceEntry, DeviceState, Emulator, EmulatorConfig, FaultProfile,
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::summary::Summary;

/// The demo's knobs (all have defaults: `herald demo` needs no flags).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Notifications to send.
    #[arg(long, default_value_t = 20_000)]
    pub pushes: usize,
    /// Distinct device tokens, split between the two tenants (3% of them unregistered, 2% bad).
    #[arg(long, default_value_t = 2_000)]
    pub devices: usize,
    /// HTTP/2 connections to the emulator per tenant, at most.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Pushes per `send_batch` call (at most 1,000).
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Seed for device tokens, push ids and the engine's jitter.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Device shards of the engine.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Keep the write-ahead log in memory instead of a file (a redb `FileWal` with group
    /// commit, in a temporary directory).
    #[arg(long)]
    pub memory_wal: bool,
}

/// What a demo run found.
#[derive(Debug)]
pub struct DemoReport {
    /// Outcomes, retries and latencies (accepted → outcome).
    pub summary: Summary,
    /// Times a tenant's breaker left the closed state, per tenant.
    pub breaker_opened: BTreeMap<String, u64>,
    /// Notifications the emulator accepted.
    pub emulator_accepted: u64,
    /// 503 answers the emulator gave.
    pub emulator_503: u64,
    /// `Overloaded` answers to `send_batch` (whole batches or single pushes), all resubmitted.
    pub overloaded: u64,
    /// Per node: region, role, pushes accepted there and finished there.
    pub nodes: Vec<NodeLine>,
    /// Second-wave pushes (one per token APNs answered 410 for), each through another node.
    pub second_wave: u64,
    /// Second-wave pushes that ended `Unregistered`.
    pub second_wave_unregistered: u64,
    /// Second-wave pushes that reached APNs (must be 0).
    pub second_wave_sent: u64,
}

impl DemoReport {
    /// Breaker openings, all tenants.
    pub fn breaker_opened_total(&self) -> u64 {
        self.breaker_opened.values().sum()
    }
}

/// The demo's tenants: (tenant id, team id, bundle id).
const TENANTS: [(&str, &str, &str); 2] = [
    ("acme", "HERALDACME", "com.example.acme"),
    ("globex", "HERALDGLBX", "com.example.globex"),
];

/// How long the 503 burst lasts.
const BURST: Duration = Duration::from_millis(1_000);

/// The demo's nodes: (node id, region).
const NODES: [(u64, &str); 3] = [(1, "eu"), (2, "eu"), (3, "us")];

/// How long the cluster may take to elect a leader and map every region's shards.
const CLUSTER_READY_WAIT: Duration = Duration::from_secs(60);

/// One node of the demo cluster.
struct DemoNode {
    id: u64,
    region: &'static str,
    cluster: ClusterNode,
    engine: Herald,
    router: Arc<Router>,
    /// The node's part in the cluster-wide provider tokens (its tenants' minters).
    _provider_tokens: ProviderTokens,
    /// Pushes this node's router accepted (the node the app server called).
    accepted: AtomicU64,
}

/// Start the three nodes: Raft over loopback mutual TLS, an engine and a router each.
async fn start_cluster(
    args: &DemoArgs,
    dir: &std::path::Path,
    emulator: &Emulator,
    tenants: &[(&'static str, SigningKey)],
    clock: &SharedClock,
) -> anyhow::Result<Vec<DemoNode>> {
    let ca = ClusterCa::generate("herald demo").context("generating the cluster CA")?;
    let mut listeners = Vec::new();
    for _ in NODES {
        listeners.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    let peers: BTreeMap<u64, SocketAddr> = NODES
        .iter()
        .zip(&listeners)
        .map(|((id, _), l)| Ok((*id, l.local_addr()?)))
        .collect::<std::io::Result<_>>()?;
    let ca_pem = emulator
        .ca_pem()
        .context("the emulator has no CA")?
        .to_owned();
    let mut nodes = Vec::new();
    for ((id, region), listener) in NODES.into_iter().zip(listeners) {
        let mut config = ClusterConfig::new(
            id,
            ClusterId(1),
            peers.clone(),
            region,
            StorageLocation::Path(dir.join(format!("raft-{id}.redb"))),
            LinkSecurity::MutualTls(ca.mutual_tls(NodeId(id))?),
        );
        config.membership.shard_count = args.shards as usize;
        config.membership.founder_regions = NODES
            .iter()
            .map(|(id, region)| (*id, (*region).to_owned()))
            .collect();
        let cluster = ClusterNode::start(config, listener)
            .await
            .with_context(|| format!("starting cluster node {id}"))?;

        let mut tuning = Tuning::default();
        tuning.retry_backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        tuning.reconnect_backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        tuning.breaker_open_for = Duration::from_millis(300);
        let mut tls = ApnsTlsConfig::new();
        tls.webpki_roots(false)
            .add_root_certificates_pem(ca_pem.as_bytes());
        let mut builder = Herald::builder();
        builder
            .endpoint(Endpoint::tls("127.0.0.1", emulator.addr().port(), tls))
            .clock(clock.clone())
            .rng_seed(args.seed ^ id)
            .shards(args.shards)
            .tuning(tuning)
            .wal(open_wal(args, dir, id)?)
            .token_state(cluster.token_state());
        // One provider token per key, cluster-wide: the leader signs, every node presents it.
        let provider_tokens =
            ProviderTokens::start(&cluster, clock.clone(), ProviderTokenConfig::default());
        for (tenant, key) in tenants {
            let minter = provider_tokens.register(key.clone())?;
            let mut config = TenantConfig::new(*tenant, Credentials::Token(minter));
            config.connections(1, args.connections.max(1));
            builder.tenant(config);
        }
        let engine = builder
            .build()
            .await
            .with_context(|| format!("starting node {id}'s engine"))?;
        let router = Router::start(
            &cluster,
            engine.clone(),
            RouterConfig::new(args.seed ^ (id << 32)),
        )?;
        nodes.push(DemoNode {
            id,
            region,
            cluster,
            engine,
            router: Arc::new(router),
            _provider_tokens: provider_tokens,
            accepted: AtomicU64::new(0),
        });
    }
    // Ready when every node knows the leader and has its region's map over its members.
    let deadline = Instant::now() + CLUSTER_READY_WAIT;
    loop {
        let ready = nodes.iter().all(|n| {
            let maps = n.cluster.shard_maps().borrow().clone();
            let members = NODES.iter().filter(|(_, r)| *r == n.region).count();
            n.cluster.applied().borrow().leader.is_some()
                && maps.get(n.region).is_some_and(|m| {
                    m.owners
                        .iter()
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                        == members
                })
        });
        if ready {
            return Ok(nodes);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster did not elect a leader and map its shards within {CLUSTER_READY_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run the demo, print its summary and return it.
pub async fn run(args: DemoArgs) -> anyhow::Result<DemoReport> {
    let clock: SharedClock = Arc::new(SystemClock);
    let mut rng = DetRng::from_seed(args.seed);
    let dir = tempfile::tempdir().context("a temporary directory")?;

    let emulator = Emulator::start(EmulatorConfig::default())
        .await
        .context("starting the APNs emulator")?;
    let core = emulator.core().clone();

    // The tenants: one per team, token credentials (the same key on every node).
    let mut tenants = Vec::new();
    let mut topics = Vec::new();
    for (tenant, team, bundle) in TENANTS {
        let key = core
            .generate_team_key(team, &[bundle])
            .context("generating a demo signing key")?;
        let signing = SigningKey::from_p8_pem(key.p8_pem.as_bytes(), &key.key_id, &key.team_id)?;
        tenants.push((tenant, signing));
        topics.push(bundle.parse::<Topic>()?);
    }
    let nodes = start_cluster(&args, dir.path(), &emulator, &tenants, &clock).await?;
    let leader = nodes[0].cluster.applied().borrow().leader;

    // The device set: mostly valid, 3% unregistered a day ago, 2% bad; device i belongs to
    // tenant i % 2.
    let now = clock.now();
    let mut devices = Vec::with_capacity(args.devices);
    let mut entries = Vec::new();
    for _ in 0..args.devices.max(TENANTS.len()) {
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes);
        let token = DeviceToken::from_bytes(&bytes)?;
        let roll = rng.below(100);
        let state = if roll < 3 {
            Some(DeviceState::Unregistered {
                at_ms: now.saturating_sub(Duration::from_secs(86_400)).as_millis(),
            })
        } else if roll < 5 {
            Some(DeviceState::Bad)
        } else {
            None
        };
        if let Some(state) = state {
            entries.push(DeviceEntry {
                token: token.as_str().to_owned(),
                state,
            });
        }
        devices.push(token);
    }
    core.set_devices(&entries);

    // The workload, with explicit push ids (`apns-id`): resubmitting a push is idempotent.
    let mut per_tenant: Vec<Vec<Notification>> = vec![Vec::new(); TENANTS.len()];
    for i in 0..args.pushes {
        let device = i % devices.len();
        let tenant = device % TENANTS.len();
        per_tenant[tenant].push(notification(
            &mut rng,
            &devices[device],
            &topics[tenant],
            &format!("Hello from Herald #{i}"),
        )?);
    }

    println!(
        "herald demo: {} pushes from {} tenants ({}) to {} devices ({} unregistered or bad), \
         through a cluster of {} nodes in 2 regions ({}; Raft leader: node {}; {} shards per \
         region, ≤ {} APNs connections per tenant per node, {}), emulator at {} (TLS)",
        args.pushes,
        TENANTS.len(),
        TENANTS
            .iter()
            .map(|(t, team, bundle)| format!("{t}: team {team}, {bundle}"))
            .collect::<Vec<_>>()
            .join("; "),
        devices.len(),
        entries.len(),
        nodes.len(),
        NODES
            .iter()
            .map(|(id, region)| format!("node {id} {region}"))
            .collect::<Vec<_>>()
            .join(", "),
        leader.map_or_else(|| "?".to_owned(), |l| l.to_string()),
        args.shards,
        args.connections.max(1),
        if args.memory_wal {
            "in-memory WALs"
        } else {
            "redb WALs with group commit"
        },
        emulator.addr()
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.pushes as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} outcomes  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    // Outcomes, as every engine streams them (each push is finished by its shard's owner).
    // An APNs incident a third of the way in: 503s for a second; the breakers open, probe,
    // close, and retries ride it out.
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let burst_at = (args.pushes / 3).max(1) as u64;
    let mut collectors = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let mut stream = node.engine.outcomes();
        let seen = seen.clone();
        let bar = bar.clone();
        let core = core.clone();
        collectors.push(tokio::spawn(async move {
            loop {
                let event = stream.recv().await;
                let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
                match event {
                    Ok(record) => {
                        if !s.records.contains_key(&record.push_id) {
                            bar.inc(1);
                            *s.finished_by.entry(index).or_default() += 1;
                            s.finisher.insert(record.push_id, index);
                            s.records.insert(record.push_id, (record, Instant::now()));
                        }
                    }
                    Err(RecvError::Lagged(n)) => s.lagged += n,
                    Err(RecvError::Closed) => break,
                }
                if !s.burst_injected && s.records.len() as u64 + s.lagged >= burst_at {
                    s.burst_injected = true;
                    let incident = FaultProfile {
                        bursts: vec![Burst {
                            reason: Reason::ServiceUnavailable,
                            requests: None,
                            duration_ms: Some(BURST.as_millis() as u64),
                        }],
                        ..FaultProfile::default()
                    };
                    if let Err(e) = core.set_faults(incident) {
                        tracing::warn!(error = %e, "could not inject the 503 burst");
                    }
                }
            }
        }));
    }
    // The breakers, polled on every node: count each time one leaves the closed state.
    let breaker_opened: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let breakers = {
        let engines: Vec<Herald> = nodes.iter().map(|n| n.engine.clone()).collect();
        let opened = breaker_opened.clone();
        tokio::spawn(async move {
            let mut last: BTreeMap<(usize, &str), BreakerState> = BTreeMap::new();
            loop {
                for (index, engine) in engines.iter().enumerate() {
                    for (tenant, _, _) in TENANTS {
                        if let Ok(status) = engine.tenant_status(tenant).await {
                            let before = last.insert((index, tenant), status.breaker);
                            let mut opened = opened.lock().unwrap_or_else(PoisonError::into_inner);
                            let count = opened.entry(tenant.to_owned()).or_default();
                            if before == Some(BreakerState::Closed)
                                && status.breaker != BreakerState::Closed
                            {
                                *count += 1;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Submit: one task per tenant, batches of `window` spread over the nodes, resubmitting
    // what was refused.
    let started = Instant::now();
    let batch = args.window.clamp(1, limits::SEND_BATCH_MAX);
    let nodes = Arc::new(nodes);
    let mut submitters = Vec::new();
    for (offset, ((tenant, _, _), notifications)) in TENANTS.iter().zip(per_tenant).enumerate() {
        let nodes = nodes.clone();
        let tenant = (*tenant).to_owned();
        submitters.push(tokio::spawn(async move {
            submit(&nodes, offset, &tenant, notifications, batch).await
        }));
    }
    let mut accepted_at: HashMap<PushId, Instant> = HashMap::with_capacity(args.pushes);
    let mut overloaded = 0;
    for submitter in submitters {
        let (accepted, refusals) = submitter.await.context("a submitter panicked")??;
        accepted_at.extend(accepted);
        overloaded += refusals;
    }
    let total = accepted_at.len() as u64;
    wait_for_outcomes(&nodes, &seen, total, &accepted_at).await;
    let elapsed = started.elapsed();

    // The second wave: the tokens APNs answered 410 for, again, each through a node other
    // than the one that finished it. The invalidations are in the replicated token state:
    // every node must answer `Unregistered` without a request to APNs.
    let unregistered_before = core
        .answers_by_reason()
        .get("Unregistered")
        .copied()
        .unwrap_or(0);
    let dead: Vec<(usize, usize, DeviceToken)> = {
        let s = seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dead: BTreeMap<String, (usize, usize, DeviceToken)> = BTreeMap::new();
        for (record, _) in s.records.values() {
            if let Outcome::Unregistered { .. } = record.outcome {
                let tenant = TENANTS
                    .iter()
                    .position(|(t, _, _)| *t == record.tenant)
                    .unwrap_or(0);
                let by = s.finisher.get(&record.push_id).copied().unwrap_or(0);
                dead.entry(record.device_token.as_str().to_owned())
                    .or_insert((tenant, by, record.device_token.clone()));
            }
        }
        dead.into_values().collect()
    };
    let mut second_wave = 0u64;
    let mut second_wave_unregistered = 0u64;
    for (tenant, finished_by, token) in &dead {
        let n = notification(&mut rng, token, &topics[*tenant], "Are you still there?")?;
        let via = &nodes[(finished_by + 1) % nodes.len()];
        let id = via.router.send(TENANTS[*tenant].0, n).await?;
        second_wave += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(outcome) = nodes.iter().find_map(|n| n.router.outcome(id)) {
                if matches!(outcome, Outcome::Unregistered { .. }) {
                    second_wave_unregistered += 1;
                }
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let second_wave_sent = core
        .answers_by_reason()
        .get("Unregistered")
        .copied()
        .unwrap_or(0)
        - unregistered_before;

    // The second wave was waited for through the outcome stores: let the collectors take
    // the last records off the streams before they stop (else a node's "finished here" may
    // miss the very last push).
    let expected = accepted_at.len() as u64 + second_wave;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let taken = {
            let s = seen.lock().unwrap_or_else(PoisonError::into_inner);
            s.records.len() as u64 + s.lagged
        };
        if taken >= expected || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in &collectors {
        c.abort();
    }
    breakers.abort();
    let breaker_opened = breaker_opened
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    bar.finish_and_clear();

    // Tally: every accepted push must have exactly one final outcome.
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner));
    let mut summary = Summary::new();
    let mut missing = Vec::new();
    for (id, accepted) in &accepted_at {
        let (outcome, attempts) = match seen.records.get(id) {
            Some((record, at)) => {
                summary.record_latency(at.saturating_duration_since(*accepted));
                (record.outcome.clone(), record.attempts)
            }
            None => match nodes.iter().find_map(|n| n.router.outcome(*id)) {
                // Missed on a stream (lagged): an outcome store still has it.
                Some(outcome) => (outcome, 1),
                None => {
                    missing.push(*id);
                    continue;
                }
            },
        };
        summary.retried += u64::from(attempts.saturating_sub(1));
        tally(&mut summary, &outcome);
    }
    let node_lines: Vec<NodeLine> = nodes
        .iter()
        .enumerate()
        .map(|(index, n)| NodeLine {
            id: n.id,
            region: n.region.to_owned(),
            leader: leader == Some(n.id),
            accepted: n.accepted.load(Ordering::Relaxed),
            finished: seen.finished_by.get(&index).copied().unwrap_or(0),
        })
        .collect();
    let emulator_accepted = core.accepted_count();
    let emulator_503 = core
        .answers_by_reason()
        .get("ServiceUnavailable")
        .copied()
        .unwrap_or(0);
    let nodes =
        Arc::try_unwrap(nodes).map_err(|_| anyhow::anyhow!("a task still holds the demo nodes"))?;
    let mut drained = true;
    for node in nodes {
        drop(node.router);
        drained &= node.engine.shutdown(Duration::from_secs(5)).await.drained;
        node.cluster.stop().await;
    }
    emulator.shutdown().await;

    println!("{}", summary.table(elapsed));
    println!("{}", node_table(&node_lines));
    println!(
        "breaker: opened {} times ({}) during a {} ms burst of 503s ({emulator_503} answered)",
        breaker_opened.values().sum::<u64>(),
        breaker_opened
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        BURST.as_millis()
    );
    println!(
        "invalidations: {} tokens answered 410; a second push to each, through another node, \
         ended unregistered {} times of {second_wave} and reached APNs {second_wave_sent} times",
        dead.len(),
        second_wave_unregistered
    );
    println!(
        "emulator: {emulator_accepted} notifications accepted; {} pushes accepted by the \
         cluster, {} Overloaded answers resubmitted, shutdown drained: {drained}",
        accepted_at.len(),
        overloaded,
    );
    anyhow::ensure!(
        missing.is_empty(),
        "{} accepted pushes have no final outcome (first: {})",
        missing.len(),
        missing[0]
    );
    anyhow::ensure!(
        emulator_accepted == summary.delivered,
        "the emulator accepted {emulator_accepted} notifications but {} were reported delivered",
        summary.delivered
    );
    anyhow::ensure!(
        second_wave_sent == 0,
        "{second_wave_sent} pushes to invalidated tokens reached APNs"
    );
    Ok(DemoReport {
        summary,
        breaker_opened,
        emulator_accepted,
        emulator_503,
        overloaded,
        nodes: node_lines,
        second_wave,
        second_wave_unregistered,
        second_wave_sent,
    })
}

/// One node's line in the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLine {
    /// Its id.
    pub id: u64,
    /// Its region.
    pub region: String,
    /// It led the Raft group when the workload started.
    pub leader: bool,
    /// Pushes the app servers handed to it.
    pub accepted: u64,
    /// Pushes its engine finished (it owned their shards), second wave included.
    pub finished: u64,
}

fn node_table(lines: &[NodeLine]) -> String {
    let mut out = String::from("node  region  raft      accepted here  finished here\n");
    for l in lines {
        out.push_str(&format!(
            "{:<4}  {:<6}  {:<8}  {:>13}  {:>13}\n",
            l.id,
            l.region,
            if l.leader { "leader" } else { "follower" },
            l.accepted,
            l.finished
        ));
    }
    out
}

fn notification(
    rng: &mut DetRng,
    token: &DeviceToken,
    topic: &Topic,
    text: &str,
) -> anyhow::Result<Notification> {
    let mut payload = Payload::new();
    payload.alert(text).badge(1);
    let id = PushId::from_u128((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()));
    Ok(
        Notification::builder(token.clone(), topic.clone(), PushType::Alert)
            .payload(&payload)
            .build()?
            .with_apns_id(id.apns_id()),
    )
}

/// Wait for every accepted push's outcome (bounded: a stuck push fails the demo later).
async fn wait_for_outcomes(
    nodes: &[DemoNode],
    seen: &Mutex<Seen>,
    total: u64,
    accepted: &HashMap<PushId, Instant>,
) {
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(total);
    loop {
        let done = {
            let s = seen.lock().unwrap_or_else(PoisonError::into_inner);
            s.records.len() as u64 + s.lagged
        };
        if done >= total || Instant::now() >= deadline {
            return;
        }
        let pending: usize = nodes.iter().map(|n| n.engine.pending()).sum();
        if pending == 0 && done < total {
            // Every push finished: the streams may still be delivering the last records, or
            // lagged (then the outcome stores answer).
            tokio::time::sleep(Duration::from_millis(200)).await;
            let known = accepted
                .keys()
                .filter(|id| {
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .records
                        .contains_key(id)
                        || nodes.iter().any(|n| n.router.outcome(**id).is_some())
                })
                .count() as u64;
            if known >= total {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the outcome stream delivered.
#[derive(Debug, Default)]
struct Seen {
    records: HashMap<PushId, (OutcomeRecord, Instant)>,
    /// Which node (index) finished each push.
    finisher: HashMap<PushId, usize>,
    /// Pushes finished per node (index).
    finished_by: BTreeMap<usize, u64>,
    lagged: u64,
    burst_injected: bool,
}

fn tally(summary: &mut Summary, outcome: &Outcome) {
    match outcome {
        Outcome::Delivered { .. } => summary.delivered += 1,
        Outcome::Unregistered { .. } => summary.invalidated += 1,
        other => {
            let reason = other.reason_label();
            summary.record_failure(if reason.is_empty() {
                other.label().to_owned()
            } else {
                reason
            });
        }
    }
}

/// Submit `notifications` for `tenant` in batches, batch `k` through node `(offset + k) % 3`
/// (app servers hit any node); returns when each push was accepted and how many
/// `Overloaded` answers were received. `Overloaded`, `InProgress` and `Unavailable` (harmless:
/// each push carries its `apns-id`) pushes are resubmitted after a pause.
async fn submit(
    nodes: &[DemoNode],
    offset: usize,
    tenant: &str,
    notifications: Vec<Notification>,
    batch: usize,
) -> anyhow::Result<(Vec<(PushId, Instant)>, u64)> {
    let mut accepted = Vec::with_capacity(notifications.len());
    let mut overloaded = 0;
    let mut rest = notifications.into_iter().peekable();
    let mut k = offset;
    while rest.peek().is_some() {
        let mut pending: Vec<Notification> = rest.by_ref().take(batch).collect();
        loop {
            let node = &nodes[k % nodes.len()];
            k += 1;
            match node.router.send_batch(tenant, pending.clone()).await {
                Err(PushError::Overloaded { retry_after }) => {
                    overloaded += 1;
                    tokio::time::sleep(retry_after).await;
                }
                Err(e) => return Err(e).context("send_batch"),
                Ok(results) => {
                    let now = Instant::now();
                    let mut again = Vec::new();
                    let mut wait = Duration::ZERO;
                    for (notification, result) in pending.into_iter().zip(results) {
                        match result {
                            Ok(id) => {
                                node.accepted.fetch_add(1, Ordering::Relaxed);
                                accepted.push((id, now));
                            }
                            Err(PushError::Overloaded { retry_after }) => {
                                overloaded += 1;
                                wait = wait.max(retry_after);
                                again.push(notification);
                            }
                            Err(PushError::InProgress { retry_after, .. }) => {
                                wait = wait.max(retry_after);
                                again.push(notification);
                            }
                            Err(PushError::Unavailable(_)) => {
                                wait = wait.max(Duration::from_millis(50));
                                again.push(notification);
                            }
                            Err(e) => return Err(e).context("send_batch"),
                        }
                    }
                    if again.is_empty() {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    pending = again;
                }
            }
        }
    }
    Ok((accepted, overloaded))
}

/// Node `id`'s write-ahead log: a redb file in `dir`, behind group commit (or memory with
/// `--memory-wal`).
fn open_wal(args: &DemoArgs, dir: &std::path::Path, id: u64) -> anyhow::Result<SharedWal> {
    if args.memory_wal {
        return Ok(Arc::new(MemoryWal::new()));
    }
    let path = dir.join(format!("wal-{id}.redb"));
    let file = FileWal::open_with(&path, WalLimits::default(), CompletionSync::LAZY)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(Arc::new(GroupCommitWal::spawn(Arc::new(file))))
}
