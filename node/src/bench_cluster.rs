//! `herald bench cluster`: three `ClusterNode`s in this process over loopback mutual TLS,
//! each with its redb file in a temporary directory, and
//!
//! 1. **token-state commits/s**: `--events` registrations and invalidations offered through
//!    the leader's [`ReplicatedTokenState`] by `--concurrency` tasks at once; the node batches
//!    them into `TokenEvents` entries (up to
//!    [`TOKEN_EVENTS_BATCH_MAX`](herald_cluster::node::TOKEN_EVENTS_BATCH_MAX) per entry, one fsync
//!    per `ready()` on each node). An event counts when its entry is committed and applied on
//!    the leader (its `register`/`invalidate` call returned);
//! 2. **leader failover**: `--failovers` times, stop the leader and measure until one of the
//!    others, as the new leader, has committed and applied an entry (a token event); then
//!    restart the old leader from its redb file and let it catch up before the next round.
//!    Reports each time, the median and the maximum.
//!
//! The Raft settings are the production defaults (tick [`TICK_DEFAULT`], election timeout
//! 10–20 ticks) unless `--tick-ms` says otherwise. One tokio runtime with two worker threads
//! runs all three nodes and the load, so the numbers include the load generator's own cost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use herald_actors::seams::Timestamp;
use herald_actors::token_state::{TokenKey, TokenState as _, TokenStateError};
use herald_cluster::node::{
    ClusterConfig, ClusterNode, ReplicatedTokenState, StorageLocation, TICK_DEFAULT,
};
use herald_cluster::transport::{ClusterCa, ClusterId, LinkSecurity, NodeId};
use tokio::net::TcpListener;
use tokio::time::Instant;

const CLUSTER: ClusterId = ClusterId(0xBE7C);
const IDS: [u64; 3] = [1, 2, 3];
/// Deadline of every wait in the benchmark (elections, catch-up, one event).
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(2);
/// Most concurrent offering tasks (the batcher's queue holds 4096 events).
const CONCURRENCY_MAX: usize = 4096;

/// Flags of `herald bench cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Token events to commit in the throughput run.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Tasks offering events at once.
    #[arg(long, default_value_t = 2048)]
    pub concurrency: usize,
    /// Leader failovers to measure.
    #[arg(long, default_value_t = 5)]
    pub failovers: usize,
    /// Raft tick, milliseconds (the election timeout is 10–20 ticks).
    #[arg(long, default_value_t = TICK_DEFAULT.as_millis() as u64)]
    pub tick_ms: u64,
}

/// Run `herald bench cluster` and print its report.
///
/// # Errors
/// Invalid flags, or a cluster that does not start, elect or commit within a minute.
pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
        bail!("--concurrency must be 1..={CONCURRENCY_MAX}");
    }
    if args.tick_ms == 0 {
        bail!("--tick-ms must be non-zero");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

struct Cluster {
    dir: tempfile::TempDir,
    ca: ClusterCa,
    peers: BTreeMap<u64, SocketAddr>,
    tick: Duration,
    nodes: BTreeMap<u64, ClusterNode>,
}

impl Cluster {
    async fn start(tick: Duration) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temporary directory")?;
        let ca = ClusterCa::generate("herald bench cluster")?;
        let mut listeners = BTreeMap::new();
        for id in IDS {
            listeners.insert(id, TcpListener::bind("127.0.0.1:0").await?);
        }
        let peers = listeners
            .iter()
            .map(|(&id, l)| Ok((id, l.local_addr()?)))
            .collect::<std::io::Result<BTreeMap<_, _>>>()?;
        let mut cluster = Cluster {
            dir,
            ca,
            peers,
            tick,
            nodes: BTreeMap::new(),
        };
        for (id, listener) in listeners {
            cluster.start_node(id, listener).await?;
        }
        Ok(cluster)
    }

    async fn start_node(&mut self, id: u64, listener: TcpListener) -> anyhow::Result<()> {
        let security = LinkSecurity::MutualTls(self.ca.mutual_tls(NodeId(id))?);
        let mut config = ClusterConfig::new(
            id,
            CLUSTER,
            self.peers.clone(),
            "bench",
            StorageLocation::Path(redb_path(self.dir.path(), id)),
            security,
        );
        config.tick = self.tick;
        let node = ClusterNode::start(config, listener).await?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// The leader every running node agrees on.
    async fn leader(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let states: Vec<_> = self.nodes.values().map(|n| *n.applied().borrow()).collect();
            if let Some(leader) = states.first().and_then(|s| s.leader)
                && states.iter().all(|s| s.leader == Some(leader))
                && self
                    .nodes
                    .get(&leader)
                    .is_some_and(|n| n.applied().borrow().is_leader)
            {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                bail!("no leader within {WAIT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn stop_all(self) {
        for (_, node) in self.nodes {
            node.stop().await;
        }
    }
}

fn redb_path(dir: &Path, id: u64) -> std::path::PathBuf {
    dir.join(format!("node-{id}.redb"))
}

async fn bench(args: ClusterArgs) -> anyhow::Result<()> {
    let tick = Duration::from_millis(args.tick_ms);
    let mut cluster = Cluster::start(tick).await?;
    let leader = cluster.leader().await?;
    println!(
        "cluster: 3 nodes, loopback mutual TLS, redb in {}, tick {tick:?}, leader {leader}",
        cluster.dir.path().display()
    );

    // 1. Token-state commits/s.
    let state = cluster.nodes[&leader].token_state();
    let index_before = cluster.nodes[&leader].applied().borrow().applied_index;
    let (elapsed, retried) = offer(&state, args.events, args.concurrency).await?;
    let entries = cluster.nodes[&leader].applied().borrow().applied_index - index_before;
    let rate = args.events as f64 / elapsed.as_secs_f64();
    println!(
        "token-state commits: {} events from {} tasks in {:.2} s = {:.0} events/s \
         ({} Raft entries, {:.0} events/entry, {} re-offered after a full queue)",
        args.events,
        args.concurrency,
        elapsed.as_secs_f64(),
        rate,
        entries,
        args.events as f64 / entries.max(1) as f64,
        retried,
    );
    drop(state);

    // 2. Leader failover.
    let mut times = vec![];
    for round in 0..args.failovers {
        let old = cluster.leader().await?;
        let addr = cluster.peers[&old];
        let node = cluster.nodes.remove(&old).context("leader node")?;
        let stopped = Instant::now();
        node.stop().await;
        let new = committed_by_new_leader(&cluster, round).await?;
        let took = stopped.elapsed();
        println!(
            "failover {}: leader {old} stopped, leader {new} committed after {:.0} ms",
            round + 1,
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        // Restart the old leader from its redb file and let it catch up.
        let listener = bind(addr).await?;
        cluster.start_node(old, listener).await?;
        catch_up(&cluster, old).await?;
    }
    if !times.is_empty() {
        times.sort();
        let median = times[times.len() / 2];
        let max = times[times.len() - 1];
        println!(
            "failover: {} runs, median {:.0} ms, max {:.0} ms",
            times.len(),
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    cluster.stop_all().await;
    Ok(())
}

/// Offer `events` alternating registrations and invalidations from `concurrency` tasks;
/// the time until every one is answered, and how many were re-offered after `Unavailable`.
async fn offer(
    state: &Arc<ReplicatedTokenState>,
    events: usize,
    concurrency: usize,
) -> anyhow::Result<(Duration, u64)> {
    let next = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let state = state.clone();
            let next = next.clone();
            let retried = retried.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let key = TokenKey::new("bench", format!("{:064x}", i / 2));
                    let at = Timestamp::from_secs(1_000 + i as u64);
                    let deadline = Instant::now() + WAIT;
                    loop {
                        let result = if i.is_multiple_of(2) {
                            state.register(key.clone(), at).await
                        } else {
                            state.invalidate(key.clone(), at).await
                        };
                        match result {
                            Ok(_) => break,
                            Err(TokenStateError::Unavailable(reason))
                                if Instant::now() < deadline =>
                            {
                                retried.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%reason, "event re-offered");
                                tokio::time::sleep(POLL).await;
                            }
                            Err(e) => bail!("event {i}: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok((started.elapsed(), retried.load(Ordering::Relaxed)))
}

/// Wait until a running node, as leader, has committed and applied a token event; its id.
async fn committed_by_new_leader(cluster: &Cluster, round: usize) -> anyhow::Result<u64> {
    let deadline = Instant::now() + WAIT;
    let key = TokenKey::new("bench-failover", format!("{round:064x}"));
    loop {
        for (&id, node) in &cluster.nodes {
            if !node.applied().borrow().is_leader {
                continue;
            }
            let at = Timestamp::from_secs(10 + round as u64);
            if let Ok(Ok(_)) =
                tokio::time::timeout(WAIT, node.token_state().register(key.clone(), at)).await
            {
                return Ok(id);
            }
        }
        if Instant::now() >= deadline {
            bail!("no new leader committed within {WAIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Wait until node `id` has applied as far as the leader.
async fn catch_up(cluster: &Cluster, id: u64) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let target = cluster.nodes[&leader].applied().borrow().applied_index;
    let deadline = Instant::now() + WAIT;
    while cluster.nodes[&id].applied().borrow().applied_index < target {
        if Instant::now() >= deadline {
            bail!("node {id} did not catch up within {WAIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    // A just-stopped listener's socket is released asynchronously: retry for a while.
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%addr, error = %e, "bind retried");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("binding {addr}")),
        }
    }
}
