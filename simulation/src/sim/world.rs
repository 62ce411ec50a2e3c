//! The simulated world: N cluster nodes in R regions, the APNs emulator and the workload as
//! turmoil hosts, all from one `u64` seed; the driver loop that steps it, fires faults, and
//! checks the invariants.
//!
//! ```text
//!  client (workload) ──JSON lines──▶ n1..nN: API ─▶ Router ─▶ Herald engine ─h2c─▶ apns
//!                                     │                └─ forward to the shard's owner ─▶ other nodes
//!                                     │ ClusterNode (Raft, peer links) ◀─▶ other nodes
//!                                     │ ReplicatedTokenState = the engine's token state
//!                                     └ SimWal + RaftStorage on the SimDisk (outside the host)
//! ```
//!
//! Each node host runs the real stack: [`ClusterNode::start_with`] on a [`SimAcceptor`] and
//! [`SimConnector`] over turmoil TCP, a [`Router`] as its intake (pushes go to their shard's
//! owner in the region), and its [`Herald`] engine whose connector reaches the
//! emulator host over turmoil TCP (plaintext HTTP/2), with the node's
//! [`ReplicatedTokenState`](herald_cluster::node::ReplicatedTokenState) as its token state,
//! the [`SimWal`](super::disk::SimWal) as its WAL and a skewable [`SimClock`]. A small admin
//! task on the leader plays the operator: it adds the members, activates them, assigns the
//! shard maps, and now and then races a second, stale reassignment (which the epoch check
//! must refuse).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_actors::apns::{
    DeviceToken, Expiration, Notification, Priority, PushType, SigningKey, TokenMinter,
};
use herald_actors::backoff::Backoff;
use herald_actors::seams::{Clock, DetRng, Timestamp};
use herald_actors::token_state::{TokenKey, TokenState, TokenValidity};
use herald_actors::wal::WalLimits;
use herald_actors::{Credentials, Endpoint, Herald, TenantConfig, Tuning};
use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
use herald_cluster::routing::{Router, RouterConfig};
use herald_cluster::state::devices::{DeviceChange, DeviceOp};
use herald_cluster::state::{ApplyResult, Command, MemberState, StateMachine};
use herald_cluster::transport::{ClusterId, LinkSecurity};
use sha2::{Digest, Sha256};
use tokio::io::BufReader;

use super::disk::SimDisk;
use super::faults::{self, FaultKind, ScheduledFault, Swarm, Targets};
use super::invariants::{AcceptedPush, NodeView, Observations, ObservedOutcome, uuid_text};
use super::network::{SimAcceptor, SimConnector, read_line, serve_emulator, write_line};
use super::signing;
use super::trace::{Trace, trace_hash};
use super::workload::{self, API_PORT, ApiRequest, ApiResponse, TokenPlan, WorkloadConfig};
use crate::emulator::{DeviceState, EmulatorConfig, EmulatorCore, FaultProfile, GeneratedKey};

/// The emulator's host name.
pub const APNS_HOST: &str = "apns";
/// The emulator's port (plaintext HTTP/2).
pub const APNS_PORT: u16 = 443;
/// The workload's host name.
pub const CLIENT_HOST: &str = "client";
/// The node transport port.
pub const RAFT_PORT: u16 = 7000;
/// The tenant every push belongs to.
pub const TENANT: &str = "acme";
/// Its Apple team id, key id and topic.
pub const TEAM: &str = "TEAM123456";
/// The signing key id.
pub const KEY_ID: &str = "KEY1234567";
/// The app's topic.
pub const BUNDLE: &str = "com.example.app";
/// Wall-clock time at simulated time zero.
pub const EPOCH: Timestamp = Timestamp::from_secs(1_700_000_000);
/// How often each node reports its applied state and token view to the invariants.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(100);
/// How often the admin task on the leader looks at membership and shard maps.
pub const ADMIN_EVERY: Duration = Duration::from_secs(1);
/// Default simulated time per step ([`SimConfig::tick`]).
pub const TICK_DEFAULT: Duration = Duration::from_millis(3);
/// Most nodes in a simulated cluster.
pub const NODES_MAX: usize = 16;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The run's seed: everything else is drawn from it.
    pub seed: u64,
    /// Cluster nodes (1..=[`NODES_MAX`]).
    pub nodes: usize,
    /// Regions; nodes are spread over them round-robin.
    pub regions: usize,
    /// Simulated time the workload and the faults are active.
    pub active: Duration,
    /// After the faults heal, the cluster must converge within this (liveness bound).
    pub heal_bound: Duration,
    /// Draw faults from the seed (false: a fault-free run).
    pub faults: bool,
    /// Device shards per engine.
    pub shards: u32,
    /// Simulated time per turmoil step, also the least message latency. Each step polls
    /// every host, so this sets the cost of a simulated second (1 ms: 9 nodes ≈ 58× real
    /// time in release; 3 ms: ≈ 120×). Default: [`TICK_DEFAULT`].
    pub tick: Duration,
    /// Mean pause between workload requests (milliseconds).
    pub pause_mean_ms: u64,
    /// Deliberately re-introduced bugs turned on for this run (`sim-bugs` feature).
    #[cfg(feature = "sim-bugs")]
    pub bugs: Vec<herald_actors::sim_bugs::SimBug>,
}

impl SimConfig {
    /// Defaults: 3 nodes in 2 regions, 10 s active, 120 s to heal (see `docs/simulation.md`: a
    /// black-holed APNs connection takes up to ~70 s to be noticed), faults on.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 3,
            regions: 2,
            active: Duration::from_secs(10),
            heal_bound: Duration::from_secs(120),
            faults: true,
            shards: 4,
            tick: TICK_DEFAULT,
            pause_mean_ms: 40,
            #[cfg(feature = "sim-bugs")]
            bugs: Vec::new(),
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The configuration it ran.
    pub config: SimConfig,
    /// The faults enabled.
    pub swarm: Swarm,
    /// The trace lines.
    pub trace: Vec<String>,
    /// The trace's hash.
    pub hash: String,
    /// Invariant violations (empty: the run passed).
    pub violations: Vec<String>,
    /// "Sometimes" counters: faults fired and paths reached.
    pub coverage: BTreeMap<String, u64>,
    /// Pushes the nodes accepted.
    pub accepted: usize,
    /// Simulated time the run took.
    pub sim_elapsed: Duration,
}

impl RunReport {
    /// True if no invariant was violated.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let c = &self.config;
        #[allow(unused_mut)]
        let mut features = String::new();
        #[allow(unused_mut)]
        let mut bugs = String::new();
        #[cfg(feature = "sim-bugs")]
        {
            features.push_str(" --features sim-bugs");
            for bug in &c.bugs {
                bugs.push_str(&format!(" --bug {}", bug_name(*bug)));
            }
        }
        format!(
            "cargo run -p herald-sim --release{features} -- run --seed {} --nodes {} --regions {} --active-secs {} --heal-secs {} --tick-ms {}{}{bugs} --trace trace-{}.txt",
            c.seed,
            c.nodes,
            c.regions,
            c.active.as_secs(),
            c.heal_bound.as_secs(),
            c.tick.as_millis(),
            if c.faults { "" } else { " --no-faults" },
            c.seed
        )
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed={} nodes={} regions={} swarm=[{}] accepted={} events={} hash={} sim={:.1}s {}",
            self.config.seed,
            self.config.nodes,
            self.config.regions,
            self.swarm,
            self.accepted,
            self.trace.len(),
            self.hash,
            self.sim_elapsed.as_secs_f64(),
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        for v in &self.violations {
            writeln!(f, "  violation: {v}")?;
        }
        if !self.passed() {
            writeln!(f, "  replay: {}", self.replay_command())?;
        }
        Ok(())
    }
}

/// The command-line name of a deliberately re-introduced bug.
#[cfg(feature = "sim-bugs")]
pub fn bug_name(bug: herald_actors::sim_bugs::SimBug) -> &'static str {
    use herald_actors::sim_bugs::SimBug;
    match bug {
        SimBug::SkipTokenCheck => "skip-token-check",
        SimBug::ForgetWalOnRestart => "forget-wal",
        SimBug::AcceptStaleEpoch => "stale-epoch",
        _ => "unknown",
    }
}

/// The bug named `name` on the command line.
#[cfg(feature = "sim-bugs")]
pub fn parse_bug(name: &str) -> Option<herald_actors::sim_bugs::SimBug> {
    herald_actors::sim_bugs::SimBug::ALL
        .into_iter()
        .find(|b| bug_name(*b) == name)
}

/// The clock seam under simulation: [`EPOCH`] + simulated time + this node's skew.
///
/// Inside a host, simulated time is `turmoil::sim_elapsed()`; outside (the driver loop,
/// e.g. when it changes the emulator's faults) it is the time the driver last published
/// to the clock's shared [`DriverTime`].
#[derive(Debug, Clone, Default)]
pub struct SimClock {
    skew_ms: Arc<AtomicI64>,
    driver: DriverTime,
}

/// The simulated time the driver loop last stepped to (milliseconds), for clocks read
/// outside a host.
#[derive(Debug, Clone, Default)]
pub struct DriverTime(Arc<AtomicU64>);

impl DriverTime {
    /// Publish the driver's simulated time.
    pub fn set(&self, elapsed: Duration) {
        self.0.store(elapsed.as_millis() as u64, Ordering::SeqCst);
    }
}

impl SimClock {
    /// A clock without skew that reads `driver` outside hosts.
    pub fn new(driver: DriverTime) -> Self {
        SimClock {
            skew_ms: Arc::default(),
            driver,
        }
    }

    /// Set the skew (milliseconds, either direction).
    pub fn set_skew_ms(&self, ms: i64) {
        self.skew_ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        let elapsed = turmoil::sim_elapsed()
            .unwrap_or_else(|| Duration::from_millis(self.driver.0.load(Ordering::SeqCst)));
        let ms = EPOCH.as_millis() as i64
            + elapsed.as_millis() as i64
            + self.skew_ms.load(Ordering::SeqCst);
        Timestamp::from_millis(ms.max(0) as u64)
    }
}

/// What every host shares (kept outside the hosts: it survives crashes).
struct World {
    seed: u64,
    nodes: Vec<String>,
    regions: usize,
    shards: u32,
    disk: SimDisk,
    obs: Arc<Mutex<Observations>>,
    trace: Trace,
    clocks: BTreeMap<String, SimClock>,
    boots: BTreeMap<String, AtomicU64>,
    election_ticks: Vec<usize>,
    emulator: EmulatorCore,
    key: GeneratedKey,
    tokens: TokenPlan,
    /// The admin races stale reassignments only before this (the active phase's end), so
    /// the healed cluster can settle.
    race_until_ms: u64,
}

impl World {
    fn obs(&self) -> MutexGuard<'_, Observations> {
        self.obs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn region(&self, index: usize) -> String {
        format!("r{}", index % self.regions + 1)
    }
}

fn now_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

/// Run one simulation.
///
/// # Errors
/// If the world cannot be set up (an invalid configuration); invariant violations are in
/// the report, not errors.
pub fn run(config: &SimConfig) -> Result<RunReport, String> {
    #[cfg(feature = "sim-bugs")]
    herald_actors::sim_bugs::set(&config.bugs);
    // BUGGIFY fault points in production code: on with the swarm's faults.
    if config.faults {
        herald_actors::buggify::enable(config.seed ^ BUGGIFY_SEED);
    }
    let report = run_world(config);
    let fired = herald_actors::buggify::disable();
    #[cfg(feature = "sim-bugs")]
    herald_actors::sim_bugs::set(&[]);
    report.map(|mut report| {
        for (point, count) in fired {
            if count > 0 {
                *report
                    .coverage
                    .entry(format!("buggify:{point}"))
                    .or_default() += count;
            }
        }
        report
    })
}

/// How long the simulated API waits for a registration to be applied.
const API_CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Devices per simulated broadcast (one page).
const BROADCAST_PAGE: usize = 32;

/// The simulator's Raft part size (production: 1 MiB).
const SIM_RAFT_PART_BYTES: usize = 128;

/// Mixed into the run's seed for the BUGGIFY draws.
const BUGGIFY_SEED: u64 = 0xb466_1f7a;

fn run_world(config: &SimConfig) -> Result<RunReport, String> {
    if config.nodes == 0 || config.nodes > NODES_MAX || config.regions == 0 {
        return Err(format!(
            "nodes must be 1..={NODES_MAX} and regions at least 1"
        ));
    }
    let mut root = DetRng::from_seed(config.seed);
    let mut fault_rng = root.fork();
    let workload_rng = root.fork();
    let mut setup_rng = root.fork();
    let swarm = if config.faults {
        Swarm::draw(&mut fault_rng)
    } else {
        Swarm::none()
    };
    let nodes: Vec<String> = (1..=config.nodes).map(|i| format!("n{i}")).collect();
    let tokens = TokenPlan::draw(&mut setup_rng, 24, 4, 6);

    let trace = Trace::default();
    // The team key from the seed and RFC 6979 signatures: random bytes in the
    // `authorization` header would change HPACK sizes and so turmoil's draws (signing.rs).
    signing::install();
    let (team, key) = signing::team_key(&mut setup_rng, TEAM, KEY_ID, &[BUNDLE])?;
    let mut emulator_config = EmulatorConfig::plaintext();
    emulator_config.teams = vec![team];
    emulator_config.seed = setup_rng.next_u64();
    emulator_config.record_capacity = 1_000_000;
    let driver_time = DriverTime::default();
    let emulator_clock = SimClock::new(driver_time.clone());
    let emulator =
        EmulatorCore::new(&emulator_config, Arc::new(emulator_clock)).map_err(|e| e.to_string())?;
    for token in &tokens.dead {
        emulator.set_device(
            token,
            DeviceState::Unregistered {
                at_ms: EPOCH.as_millis(),
            },
        );
    }
    // Distinct, seed-shuffled election timeouts (raft-rs would draw them from thread_rng).
    let mut election_ticks: Vec<usize> = (0..config.nodes).map(|i| 10 + 3 * i).collect();
    for i in (1..election_ticks.len()).rev() {
        let j = setup_rng.below(i as u64 + 1) as usize;
        election_ticks.swap(i, j);
    }
    let world = Arc::new(World {
        seed: config.seed,
        nodes: nodes.clone(),
        regions: config.regions,
        shards: config.shards,
        disk: SimDisk::default(),
        obs: Arc::new(Mutex::new(Observations::default())),
        trace: trace.clone(),
        clocks: nodes
            .iter()
            .map(|n| (n.clone(), SimClock::new(driver_time.clone())))
            .collect(),
        boots: nodes
            .iter()
            .map(|n| (n.clone(), AtomicU64::new(0)))
            .collect(),
        election_ticks,
        emulator: emulator.clone(),
        key,
        tokens: tokens.clone(),
        race_until_ms: (Duration::from_secs(2) + config.active).as_millis() as u64,
    });

    let warmup = Duration::from_secs(2);
    let active_end = warmup + config.active;
    let targets = Targets {
        nodes: &nodes,
        apns: APNS_HOST,
        client: CLIENT_HOST,
        storm_tokens: &tokens.storm,
    };
    let mut schedule: std::collections::VecDeque<ScheduledFault> =
        faults::schedule(&swarm, &mut fault_rng, &targets, warmup, active_end).into();
    trace.record_at(
        Duration::ZERO,
        "sim",
        format!("seed {} swarm [{swarm}]", config.seed),
    );

    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(config.seed)
        .simulation_duration(active_end + config.heal_bound + Duration::from_secs(60))
        .tick_duration(config.tick)
        .min_message_latency(config.tick)
        .max_message_latency(Duration::from_millis(10));
    let mut sim = builder.build();

    {
        let core = emulator.clone();
        sim.host(APNS_HOST, move || {
            let core = core.clone();
            async move {
                serve_emulator(core, APNS_PORT).await?;
                Ok(())
            }
        });
    }
    for (index, name) in nodes.iter().enumerate() {
        let world = world.clone();
        sim.host(name.as_str(), move || {
            let world = world.clone();
            async move { node_main(world, index).await }
        });
    }
    {
        let workload_config = WorkloadConfig {
            nodes: nodes.clone(),
            tokens: tokens.clone(),
            until: active_end,
            pause_mean_ms: config.pause_mean_ms,
        };
        let trace = trace.clone();
        sim.client(CLIENT_HOST, async move {
            // Let the cluster elect and the admin assign shards first.
            tokio::time::sleep(warmup).await;
            workload::run(workload_config, workload_rng, trace).await;
            Ok(())
        });
    }

    let mut crashed: BTreeSet<String> = BTreeSet::new();
    let mut healed = false;
    let mut heal_started = Duration::ZERO;
    let mut last_check = Duration::ZERO;
    let mut client_done = false;
    loop {
        let now = sim.elapsed();
        driver_time.set(now);
        while schedule.front().is_some_and(|f| f.at <= now) {
            let Some(fault) = schedule.pop_front() else {
                break;
            };
            apply_fault(&mut sim, &world, &fault.kind, &mut crashed);
        }
        if !healed && now >= active_end && client_done {
            // Heal everything, restart what is down, and start the liveness clock.
            heal(&mut sim, &world, &mut crashed);
            schedule.clear();
            healed = true;
            heal_started = now;
        }
        if healed && now >= last_check + Duration::from_millis(500) {
            last_check = now;
            let verdict = world.obs().converged(&nodes);
            match verdict {
                Ok(()) => {
                    trace.record_at(now, "sim", "converged");
                    break;
                }
                Err(why) if now >= heal_started + config.heal_bound => {
                    world.obs().not_live(why);
                    break;
                }
                Err(_) => {}
            }
        }
        match sim.step() {
            Ok(done) => client_done = client_done || done,
            Err(e) => {
                world.obs().violations.push(format!("host failed: {e}"));
                break;
            }
        }
    }
    let sim_elapsed = sim.elapsed();
    drop(sim);

    let delivered: BTreeSet<String> = emulator
        .accepted()
        .into_iter()
        .map(|a| a.apns_id.to_lowercase())
        .collect();
    let mut obs = world.obs();
    obs.check_no_loss(&delivered);
    for (reason, count) in emulator.answers_by_reason() {
        *obs.coverage.entry(format!("apns:{reason}")).or_default() += count;
    }
    let lines = trace.lines();
    Ok(RunReport {
        config: config.clone(),
        swarm,
        hash: trace_hash(&lines),
        trace: lines,
        violations: obs.violations.clone(),
        coverage: obs.coverage.clone(),
        accepted: obs.accepted.len(),
        sim_elapsed,
    })
}

fn apply_fault(
    sim: &mut turmoil::Sim<'_>,
    world: &World,
    kind: &FaultKind,
    crashed: &mut BTreeSet<String>,
) {
    let now = sim.elapsed();
    world.trace.record_at(now, "sim", kind);
    world.obs().reached(kind.label());
    match kind {
        FaultKind::Partition(a, b) => sim.partition(a.as_str(), b.as_str()),
        FaultKind::Repair(a, b) => sim.repair(a.as_str(), b.as_str()),
        FaultKind::PartitionOneWay(a, b) => sim.partition_oneway(a.as_str(), b.as_str()),
        FaultKind::RepairOneWay(a, b) => sim.repair_oneway(a.as_str(), b.as_str()),
        FaultKind::FailRate(rate) => sim.set_fail_rate(*rate),
        FaultKind::MaxLatency(ms) => {
            sim.set_max_message_latency(Duration::from_millis((*ms).max(10)));
        }
        FaultKind::Crash(node) => {
            if crashed.insert(node.clone()) {
                sim.crash(node.as_str());
            }
        }
        FaultKind::Restart(node) => {
            if crashed.remove(node) {
                sim.bounce(node.as_str());
            }
        }
        FaultKind::Skew(node, ms) => {
            if let Some(clock) = world.clocks.get(node) {
                clock.set_skew_ms(*ms);
            }
        }
        FaultKind::Apns(_, profile) => {
            let _ = world.emulator.set_faults(profile.clone());
        }
        FaultKind::ApnsClear => {
            let _ = world.emulator.set_faults(FaultProfile::default());
        }
        FaultKind::Storm410(tokens) => {
            let at_ms = EPOCH.as_millis() + now.as_millis() as u64;
            for token in tokens {
                world
                    .emulator
                    .set_device(token, DeviceState::Unregistered { at_ms });
            }
        }
    }
}

fn heal(sim: &mut turmoil::Sim<'_>, world: &World, crashed: &mut BTreeSet<String>) {
    let now = sim.elapsed();
    world.trace.record_at(
        now,
        "sim",
        "heal: repair all links, restart crashed nodes, clear APNs faults",
    );
    let mut hosts: Vec<String> = world.nodes.clone();
    hosts.push(APNS_HOST.into());
    hosts.push(CLIENT_HOST.into());
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            sim.repair(a.as_str(), b.as_str());
        }
    }
    sim.set_fail_rate(0.0);
    sim.set_max_message_latency(Duration::from_millis(10));
    for node in std::mem::take(crashed) {
        sim.bounce(node.as_str());
    }
    let _ = world.emulator.set_faults(FaultProfile::default());
}

/// Engine timings for the simulation: quick retries so a run's backlog drains in seconds.
fn sim_tuning() -> Tuning {
    let mut t = Tuning::default();
    t.retry_backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    t.throttle_backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1_000));
    t.reconnect_backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    t.breaker_open_for = Duration::from_millis(500);
    t.attempts_max = 50;
    t
}

type HostResult = Result<(), Box<dyn std::error::Error>>;

/// One node's software. Runs again from its disk after a bounce.
async fn node_main(world: Arc<World>, index: usize) -> HostResult {
    let name = world.nodes[index].clone();
    let id = index as u64 + 1;
    let boot = world.boots[&name].fetch_add(1, Ordering::SeqCst);
    world.trace.record(&name, format!("boot {boot}"));
    let peers: BTreeMap<u64, SocketAddr> = world
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                i as u64 + 1,
                SocketAddr::new(turmoil::lookup(n.as_str()), RAFT_PORT),
            )
        })
        .collect();
    let mut config = ClusterConfig::new(
        id,
        ClusterId(1),
        peers,
        world.region(index),
        StorageLocation::InMemory,
        LinkSecurity::Plaintext,
    );
    config.tick = Duration::from_millis(50);
    // Small parts, so the simulator's Raft messages of more than a few entries (and every
    // snapshot) travel in parts, under the faults.
    config.raft_part_bytes = SIM_RAFT_PART_BYTES;
    // Frequent compaction, so a node back from a crash or a partition often catches up by
    // snapshot (production: every 1024 entries, 64 kept).
    // Shard failover after 3 s of silence (production: 30 s): partitions and crashes move shards.
    config.membership.failover_after = Some(Duration::from_secs(3));
    config.driver.snapshot_threshold_entries = 4;
    config.driver.log_entries_kept = 1;
    // Every founder's region (else a founder is taken to be in this node's region, and the
    // first leader's planner files the others there: a region without members has no map).
    config.membership.founder_regions = (0..world.nodes.len())
        .map(|i| (i as u64 + 1, world.region(i)))
        .collect();
    config.membership.shard_count = world.shards as usize;
    config
        .driver
        .fixed_election_timeout(world.election_ticks[index]);
    let acceptor = SimAcceptor::bind(RAFT_PORT).await?;
    let storage = world.disk.raft_storage(&name);
    let node = Arc::new(
        ClusterNode::start_with(config, acceptor, Arc::new(SimConnector), Some(storage)).await?,
    );
    let clock = world.clocks[&name].clone();
    let signing = SigningKey::from_p8_pem(world.key.p8_pem.as_bytes(), KEY_ID, TEAM)?;
    let minter = TokenMinter::with_default_interval(signing, Arc::new(clock.clone()));
    let mut builder = Herald::builder();
    // Subscribed before the build: pushes recovered from the WAL may finish while it runs.
    let mut outcomes = builder.subscribe_outcomes();
    let herald = builder
        .endpoint(Endpoint::plaintext(APNS_HOST, APNS_PORT))
        .connector(Arc::new(SimConnector))
        .clock(Arc::new(clock.clone()))
        .rng_seed(world.seed ^ (id << 48) ^ (boot << 32))
        .shards(world.shards)
        .tuning(sim_tuning())
        .wal(Arc::new(world.disk.wal(&name, WalLimits::default())))
        .token_state(node.token_state())
        .tenant(TenantConfig::new(TENANT, Credentials::Token(minter)))
        .build()
        .await?;
    // The intake routes each push to its shard's owner in this region (forwarding over the
    // peer links when another node owns it), as `herald node` does.
    let router = Arc::new(Router::start(
        &node,
        herald.clone(),
        RouterConfig::new(world.seed ^ 0x7e57 ^ (id << 44) ^ (boot << 24)),
    )?);

    // Outcomes, as a tenant's webhook would see them.
    {
        let world = world.clone();
        let name = name.clone();
        tokio::spawn(async move {
            loop {
                match outcomes.recv().await {
                    Ok(record) => {
                        let observed = ObservedOutcome {
                            node: name.clone(),
                            boot,
                            label: record.outcome.label().to_owned(),
                            reason: record.outcome.reason_label(),
                            attempts: record.attempts,
                            at_ms: now_ms(),
                        };
                        world.trace.record(
                            &name,
                            format!(
                                "outcome {} {} attempts={}",
                                &uuid_text(record.push_id.as_u128())[..8],
                                observed.label,
                                observed.attempts
                            ),
                        );
                        world.obs().outcome(record.push_id.as_u128(), observed);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    // The observer: applied state, leadership, token view, outcomes missed by the stream.
    {
        let world = world.clone();
        let node = node.clone();
        let router = router.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let mut last_leader = None;
            loop {
                tokio::time::sleep(OBSERVE_EVERY).await;
                observe(&world, &name, boot, &node, &router, &mut last_leader).await;
            }
        });
    }
    // The operator, on whichever node leads.
    {
        let world = world.clone();
        let node = node.clone();
        let mut rng = DetRng::from_seed(world.seed ^ 0xad41 ^ (id << 40) ^ (boot << 20));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ADMIN_EVERY).await;
                admin_round(&world, &node, &mut rng).await;
            }
        });
    }

    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", API_PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let world = world.clone();
        let router = router.clone();
        let node = node.clone();
        let clock = clock.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let (read, mut write) = tokio::io::split(stream);
            let mut reader = BufReader::new(read);
            let Ok(Some(line)) = read_line(&mut reader).await else {
                return;
            };
            let response = match serde_json::from_str::<ApiRequest>(&line) {
                Ok(request) => {
                    serve_request(&world, &name, boot, &router, &node, &clock, request).await
                }
                Err(e) => ApiResponse {
                    results: vec![Err(format!("bad request: {e}"))],
                },
            };
            if let Ok(text) = serde_json::to_string(&response) {
                let _ = write_line(&mut write, &text).await;
            }
        });
    }
}

fn notification(
    token: &str,
    priority: u8,
    expires_at: Option<Timestamp>,
) -> Result<Notification, String> {
    let token: DeviceToken = token.parse().map_err(|e| format!("{e}"))?;
    let mut b = Notification::builder(
        token,
        BUNDLE.parse().map_err(|e| format!("{e}"))?,
        PushType::Alert,
    );
    b.raw_payload(r#"{"aps":{"alert":"hello"}}"#);
    b.priority(match priority {
        5 => Priority::Normal,
        1 => Priority::Low,
        _ => Priority::Immediate,
    });
    if let Some(at) = expires_at {
        b.expiration(Expiration::At(at));
    }
    b.build().map_err(|e| e.to_string())
}

async fn serve_request(
    world: &World,
    name: &str,
    boot: u64,
    router: &Router,
    node: &ClusterNode,
    clock: &SimClock,
    request: ApiRequest,
) -> ApiResponse {
    let requested_ms = now_ms();
    let accepted = |id: herald_actors::PushId, token: &str| {
        world.trace.record(
            name,
            format!(
                "accepted {} for {}",
                &uuid_text(id.as_u128())[..8],
                &token[..8]
            ),
        );
        world.obs().accepted.insert(
            id.as_u128(),
            AcceptedPush {
                node: name.to_owned(),
                boot,
                token: token.to_owned(),
                requested_ms,
                accepted_ms: now_ms(),
            },
        );
        Ok(uuid_text(id.as_u128()))
    };
    let results = match request {
        ApiRequest::Push {
            token,
            priority,
            expires_in_ms,
        } => {
            let expires =
                expires_in_ms.map(|ms| clock.now().saturating_add(Duration::from_millis(ms)));
            match notification(&token, priority, expires) {
                Ok(n) => match router.send(TENANT, n).await {
                    Ok(id) => vec![accepted(id, &token)],
                    Err(e) => vec![Err(e.to_string())],
                },
                Err(e) => vec![Err(e)],
            }
        }
        ApiRequest::Batch { tokens } => send_batch(router, &tokens, &accepted).await,
        ApiRequest::Register { token } => {
            let change = DeviceChange {
                tenant: TENANT.to_owned(),
                token: token.clone(),
                op: DeviceOp::Register {
                    topic: BUNDLE.to_owned(),
                    tags: vec![workload::group_tag(&token)],
                    at_ms: clock.now().as_millis(),
                },
            };
            match node
                .devices()
                .change(vec![change], API_CHANGE_TIMEOUT)
                .await
            {
                Ok(applied) => vec![Ok(format!("{applied:?}"))],
                Err(e) => vec![Err(e.to_string())],
            }
        }
        ApiRequest::Broadcast { tag } => {
            let tags: BTreeSet<String> = tag.into_iter().collect();
            match node
                .devices()
                .page(TENANT, Some(BUNDLE), &tags, None, BROADCAST_PAGE)
                .await
            {
                Ok((devices, _)) if devices.is_empty() => vec![],
                Ok((devices, _)) => {
                    let tokens: Vec<String> = devices.into_iter().map(|(t, _)| t).collect();
                    let results = send_batch(router, &tokens, &accepted).await;
                    if results.iter().any(Result::is_ok) {
                        world.obs().reached("workload:broadcast_sent");
                    }
                    results
                }
                Err(e) => vec![Err(e.to_string())],
            }
        }
    };
    ApiResponse { results }
}

/// One alert to each of `tokens`, in one batch through the router.
async fn send_batch(
    router: &Router,
    tokens: &[String],
    accepted: &impl Fn(herald_actors::PushId, &str) -> Result<String, String>,
) -> Vec<Result<String, String>> {
    let built: Result<Vec<Notification>, String> =
        tokens.iter().map(|t| notification(t, 10, None)).collect();
    match built {
        Ok(batch) => match router.send_batch(TENANT, batch).await {
            Ok(results) => results
                .into_iter()
                .zip(tokens)
                .map(|(r, token)| match r {
                    Ok(id) => accepted(id, token),
                    Err(e) => Err(e.to_string()),
                })
                .collect(),
            Err(e) => vec![Err(e.to_string())],
        },
        Err(e) => vec![Err(e)],
    }
}

async fn observe(
    world: &World,
    name: &str,
    boot: u64,
    node: &ClusterNode,
    router: &Router,
    last_leader: &mut Option<(u64, u64)>,
) {
    let applied = *node.applied().borrow();
    if applied.is_leader && *last_leader != Some((applied.term, node.id())) {
        *last_leader = Some((applied.term, node.id()));
        world
            .trace
            .record(name, format!("leader of term {}", applied.term));
        world.obs().leader(applied.term, node.id());
    }
    let Some(inspection) = node.inspect(Duration::from_secs(1)).await else {
        return;
    };
    let Ok(bytes) = inspection.snapshot else {
        return;
    };
    let digest = hex::encode(&Sha256::digest(&bytes)[..8]);
    let maps: Vec<(String, u64, Vec<u64>)> = match StateMachine::restore(&bytes) {
        Ok(machine) => machine
            .shard_maps()
            .iter()
            .map(|(region, map)| (region.clone(), map.epoch, map.owners.clone()))
            .collect(),
        Err(_) => vec![],
    };
    let view = NodeView {
        boot,
        applied_index: inspection.applied_index,
        digest,
        leader: applied.leader,
        term: inspection.term,
    };
    let tokens = node.token_state();
    let mut obs = world.obs();
    obs.inspected(name, view, &maps);
    for token in world.tokens.dead.iter().chain(&world.tokens.storm) {
        let key = (name.to_owned(), boot, token.clone());
        if !obs.invalidation_seen.contains_key(&key)
            && matches!(
                tokens.check(&TokenKey::new(TENANT, token.as_str())),
                TokenValidity::Invalidated { .. }
            )
        {
            obs.invalidation_seen.insert(key, now_ms());
            obs.reached("invalidation_applied");
        }
    }
    // Outcomes not seen on an engine's stream: it lags under overload, and a restarted
    // owner replays its WAL before the observer subscribes. Ask this node's router (its own
    // engine, or an outcome an owner relayed back) about every push still without one,
    // whichever node accepted it: the owner that finished a forwarded push may not have
    // relayed it (its record of the origin is not durable).
    let missing: Vec<u128> = obs
        .accepted
        .keys()
        .filter(|id| !obs.outcomes.contains_key(id))
        .copied()
        .take(256)
        .collect();
    // What this incarnation's router knows of the pushes it accepted.
    let unknown: Vec<u128> = obs
        .accepted
        .iter()
        .filter(|(id, a)| a.node == name && a.boot == boot && !obs.known_at_origin.contains(id))
        .map(|(id, _)| *id)
        .take(512)
        .collect();
    for id in unknown {
        if router
            .outcome(herald_actors::PushId::from_u128(id))
            .is_some()
        {
            obs.known_at_origin.insert(id);
        }
    }
    for id in missing {
        if let Some(outcome) = router.outcome(herald_actors::PushId::from_u128(id)) {
            let observed = ObservedOutcome {
                node: name.to_owned(),
                boot,
                label: outcome.label().to_owned(),
                reason: outcome.reason_label(),
                attempts: 0,
                at_ms: now_ms(),
            };
            obs.outcome(id, observed);
        }
    }
}

/// The operator: add and activate members, assign shard maps, and now and then race a
/// stale reassignment (the epoch check must refuse it).
async fn admin_round(world: &World, node: &ClusterNode, rng: &mut DetRng) {
    if !node.applied().borrow().is_leader {
        return;
    }
    let Some(inspection) = node.inspect(Duration::from_secs(1)).await else {
        return;
    };
    let Ok(machine) = inspection.snapshot.as_deref().map(StateMachine::restore) else {
        return;
    };
    let Ok(machine) = machine else {
        return;
    };
    let timeout = Duration::from_secs(2);
    let host = format!("n{}", node.id());
    for (i, name) in world.nodes.iter().enumerate() {
        let id = i as u64 + 1;
        match machine.members().get(&id).map(|m| m.state) {
            None => {
                let command = Command::AddMember {
                    id,
                    addr: format!("{name}:{RAFT_PORT}"),
                    region: world.region(i),
                };
                let _ = node.propose(command, timeout).await;
            }
            Some(MemberState::Joining) => {
                let command = Command::SetMemberState {
                    id,
                    state: MemberState::Active,
                };
                let _ = node.propose(command, timeout).await;
            }
            Some(_) => {}
        }
    }
    for r in 0..world.regions {
        let region = format!("r{}", r + 1);
        match machine.rebalance_command(&region, world.shards as usize) {
            Ok(Some(command)) => {
                let result = node.propose(command, timeout).await;
                world
                    .trace
                    .record(&host, format!("assign shards {region}: {}", brief(&result)));
            }
            Ok(None) => {
                // Balanced: sometimes race a stale reassignment against a fresh one.
                let Some(map) = machine.shard_maps().get(&region) else {
                    continue;
                };
                let eligible: Vec<u64> = machine
                    .members()
                    .values()
                    .filter(|m| m.region == region && m.state == MemberState::Active)
                    .map(|m| m.id)
                    .collect();
                if eligible.len() < 2 || now_ms() >= world.race_until_ms || !rng.chance(0.3) {
                    continue;
                }
                let rotate = |owners: &[u64], by: usize| -> Vec<u64> {
                    owners
                        .iter()
                        .map(|o| {
                            let at = eligible.iter().position(|e| e == o).unwrap_or(0);
                            eligible[(at + by) % eligible.len()]
                        })
                        .collect()
                };
                let epoch = map.epoch + 1;
                for by in [1, 2] {
                    let command = Command::AssignShards {
                        region: region.clone(),
                        epoch,
                        owners: rotate(&map.owners, by),
                    };
                    let result = node.propose(command, timeout).await;
                    world.trace.record(
                        &host,
                        format!("reassign {region} epoch {epoch}: {}", brief(&result)),
                    );
                    if let Ok(ApplyResult::Rejected(_)) = result {
                        world.obs().reached("admin:stale_assignment_refused");
                    }
                    // Give the observers a look between the two.
                    tokio::time::sleep(Duration::from_millis(150 + rng.below(300))).await;
                }
            }
            Err(_) => {}
        }
    }
}

fn brief<E: fmt::Display>(result: &Result<ApplyResult, E>) -> String {
    match result {
        Ok(ApplyResult::Applied) => "applied".into(),
        Ok(ApplyResult::Rejected(r)) => format!("rejected ({r:?})"),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error ({e})"),
    }
}
