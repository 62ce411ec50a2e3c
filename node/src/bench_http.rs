//! `herald bench http`: the whole path under load — HTTP/1.1 batch ingest (`POST
//! /v1/push/batch`) → the node's router → the engine (file WAL, fsync'd) → APNs (the TLS
//! emulator). Reports accepted pushes/s, 429 answers, accept latency percentiles (per batch
//! request: from sending it to its answer, which comes after the WAL append), and how many of
//! the accepted pushes the emulator received by the end.
//!
//! By default it starts everything in this process: the emulator (on a thread and one-worker
//! runtime of its own, as APNs runs elsewhere), one `herald node` from a generated
//! configuration (its data in a temporary directory) and a tenant with a key. It reports the
//! process's CPU per accepted push and its split: the node(s), the emulator and the load
//! generator (by thread), so the node's own cost per push is measured, not estimated.
//! `--nodes 3` starts a cluster of three nodes in one region (mutual TLS between them, from a
//! generated CA) and spreads the connections over their APIs, so most pushes are forwarded to
//! their shard's owner. With `--url` and `--key` it loads a running node instead (tokens must
//! then be valid for that tenant's APNs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use herald_actors::seams::{DetRng, SystemClock};
use hyper::Method;
use serde_json::json;

use crate::api::{ApiKeys, KeyRequest, Scope};
use crate::bench::EmulatorThread;
use crate::bench_engine::{thread_cpu_ms, thread_self_cpu_ms};
use crate::config::Overrides;
use crate::http_client::ApiClient;
use crate::server::Node;

/// The load generator's thread (its CPU is reported apart from the node's).
const LOAD_THREAD: &str = "bench-load";

/// Flags of `herald bench http`.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Concurrent HTTP connections, each sending one batch at a time.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Pushes per batch request (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Distinct device tokens the pushes go to.
    #[arg(long, default_value_t = 10_000)]
    pub tokens: usize,
    /// Offer this many pushes per second in all (batches paced evenly over the connections)
    /// instead of as many as the target takes; a batch that waits for its connection's
    /// previous one counts its latency from its due time.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Device shards of the in-process node(s).
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// In-process nodes (one region, mutual TLS between them), 1..=5.
    #[arg(long, default_value_t = 1)]
    pub nodes: u64,
    /// Load this running node instead of an in-process one (`http://host:port`).
    #[arg(long, requires = "key")]
    pub url: Option<String>,
    /// A push-scope key for `--url`.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

/// Run `herald bench http`.
///
/// # Errors
/// The in-process node does not start, or the target never accepts a push.
pub fn run(args: HttpArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(args))
}

/// The in-process target: the emulator (on a thread and one-worker runtime of its own, as
/// APNs is elsewhere: its CPU is reported apart) and the nodes.
struct Local {
    emulator: EmulatorThread,
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

async fn start_local(shards: u32, count: u64) -> anyhow::Result<(Local, Vec<ApiClient>)> {
    anyhow::ensure!((1..=5).contains(&count), "--nodes must be 1..=5");
    let emulator = tokio::task::spawn_blocking(|| EmulatorThread::start(1, 1)).await??;
    let dir = tempfile::tempdir()?;
    let (key, bundle) = emulator.teams.first().context("no team")?;
    let (team, _) = crate::bench::team_names(0);
    std::fs::write(dir.path().join("bench.p8"), &key.p8_pem)?;
    anyhow::ensure!(
        !emulator.ca_pem.is_empty(),
        "the emulator has no CA (not TLS)"
    );
    std::fs::write(dir.path().join("emulator-ca.pem"), &emulator.ca_pem)?;
    let mut secret = [0u8; 32];
    DetRng::from_os().fill(&mut secret);
    std::fs::write(dir.path().join("api-key.secret"), hex::encode(secret))?;
    // A cluster: ports for the peers, and a CA with a certificate per node.
    let mut ports = Vec::new();
    for _ in 0..count {
        ports.push(
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
        );
    }
    let pki = dir.path().join("pki");
    let mut cluster_toml = String::new();
    if count > 1 {
        std::fs::create_dir_all(&pki)?;
        let ca = herald_cluster::transport::tls::ClusterCa::generate("herald bench http")?;
        ca.write_pem(&pki)?;
        for id in 1..=count {
            ca.issue(herald_cluster::transport::NodeId(id))?
                .write_pem(&pki)?;
        }
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{} = \"127.0.0.1:{p}\"", i + 1))
            .collect();
        cluster_toml = format!("[cluster]\npeers = {{ {} }}\n", peers.join(", "));
    }
    let common = format!(
        r#"
[log]
filter = "warn"

[limits]
shards = {shards}

[apns]
endpoint = "custom"
host = "127.0.0.1"
port = {port}
ca_file = "emulator-ca.pem"

[[tenants]]
id = "bench"
team_id = "{team}"
key_id = "{kid}"
p8 = "bench.p8"
topics = ["{bundle}"]
connections_max = 4
"#,
        port = emulator.addr.port(),
        kid = key.key_id
    );
    let mut nodes = Vec::new();
    for id in 1..=count {
        let tls = if count > 1 {
            format!(
                "[cluster.tls]\nca = \"pki/ca.pem\"\ncert = \"pki/node-{id}.pem\"\nkey = \"pki/node-{id}.key.pem\"\n"
            )
        } else {
            String::new()
        };
        let config = format!(
            "[node]\nid = {id}\nregion = \"bench\"\napi_listen = \"127.0.0.1:0\"\n\
             cluster_listen = \"127.0.0.1:{}\"\ndata_dir = \"data-{id}\"\n\
             api_key_secret_file = \"api-key.secret\"\n\n{cluster_toml}{tls}{common}",
            ports[id as usize - 1]
        );
        let path = dir.path().join(format!("node-{id}.toml"));
        std::fs::write(&path, config)?;
        nodes.push(Node::start(&path, Overrides::default()).await?);
    }
    let keys = ApiKeys::hs256(hex::encode(secret).as_bytes(), Arc::new(SystemClock))?;
    let issued = keys.issue(&KeyRequest::tenant("bench", &[Scope::Push]), "bench-1")?;
    let clients = nodes
        .iter()
        .map(|n| {
            ApiClient::new(
                &format!("http://{}", n.api_addr()),
                Some(issued.key.clone()),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        Local {
            emulator,
            nodes,
            _dir: dir,
        },
        clients,
    ))
}

/// A few request bodies to cycle through (building JSON per request would load the
/// generator, which shares the cores with the node).
fn bodies(args: &HttpArgs, seed: u64) -> Vec<Bytes> {
    let mut rng = DetRng::from_seed(seed);
    (0..8)
        .map(|_| {
            let pushes: Vec<_> = (0..args.batch)
                .map(|_| {
                    let n = rng.below(args.tokens.max(1) as u64);
                    let mut token = [0u8; 32];
                    token[..8].copy_from_slice(&n.to_be_bytes());
                    token[8..16].copy_from_slice(&(n ^ 0x9e37_79b9_7f4a_7c15).to_be_bytes());
                    json!({
                        "device_token": hex::encode(token),
                        "topic": crate::bench::BUNDLE_ID,
                        "payload": {"aps": {"alert": "bench"}},
                    })
                })
                .collect();
            Bytes::from(json!({ "pushes": pushes }).to_string())
        })
        .collect()
}

#[derive(Default)]
struct Totals {
    accepted: AtomicU64,
    refused: AtomicU64,
    overloaded: AtomicU64,
    requests: AtomicU64,
    /// Refused items by error code.
    codes: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

async fn run_async(args: HttpArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=1000).contains(&args.batch), "--batch must be 1..=1000");
    anyhow::ensure!(args.rate != Some(0), "--rate must be at least 1");
    let (local, clients) = match &args.url {
        Some(url) => (None, vec![ApiClient::new(url, args.key.clone())?]),
        None => {
            let (local, clients) = start_local(args.shards, args.nodes).await?;
            (Some(local), clients)
        }
    };
    let target = clients
        .iter()
        .map(|c| c.url().to_owned())
        .collect::<Vec<_>>()
        .join(", ");
    // Warm up: wait until a batch is taken (the node elects itself and maps its shards).
    let probe = bodies(
        &HttpArgs {
            batch: 1,
            ..args.clone()
        },
        0,
    )
    .remove(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for client in &clients {
        loop {
            let mut c = client.connect().await?;
            // A batch answers 200 even when its items were refused: look at `accepted`.
            if let Ok((status, answer)) = c
                .send(Method::POST, "/v1/push/batch", Some(probe.clone()))
                .await
                && status.is_success()
                && serde_json::from_slice::<serde_json::Value>(&answer)
                    .is_ok_and(|a| a["accepted"] == 1)
            {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} never accepted a push",
                client.url()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let already = local
        .as_ref()
        .map_or(0, |l| l.emulator.core.accepted_count());

    let totals = Arc::new(Totals::default());
    let cpu_before = CpuSplit::now();
    let started = tokio::time::Instant::now();
    let end = started + Duration::from_secs(args.secs);
    // The load generator runs on a thread and runtime of its own, as a client process would:
    // on the node's runtime its tasks would wait behind the node's work, and that queueing
    // would be counted as the node's accept latency.
    let (answer, loaded) = tokio::sync::oneshot::channel();
    let load = load(
        args.clone(),
        clients.clone(),
        Arc::clone(&totals),
        started,
        end,
    );
    std::thread::Builder::new()
        .name(LOAD_THREAD.into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(load));
            // This thread's CPU, read before it exits (the count of an exited thread is gone).
            let _ = answer.send(result.map(|latency| (latency, thread_self_cpu_ms())));
        })?;
    let (latency, load_ms) = loaded.await.context("the load thread stopped")??;
    let elapsed = started.elapsed().as_secs_f64();
    let mut cpu = CpuSplit::now().since(&cpu_before);
    cpu.load_ms = load_ms;
    cpu.total_ms += load_ms;
    let accepted = totals.accepted.load(Ordering::Relaxed);
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "herald bench http: {} connections × batches of {} for {:.1} s → {target}{}",
        args.connections,
        args.batch,
        elapsed,
        args.rate
            .map(|r| format!(", offered {r} pushes/s"))
            .unwrap_or_default(),
    );
    println!(
        "  accepted {accepted} pushes = {:.0} pushes/s ({} batch requests = {:.0}/s); \
         refused items {}, 429 answers {}",
        accepted as f64 / elapsed,
        totals.requests.load(Ordering::Relaxed),
        totals.requests.load(Ordering::Relaxed) as f64 / elapsed,
        totals.refused.load(Ordering::Relaxed),
        totals.overloaded.load(Ordering::Relaxed)
    );
    let codes = totals
        .codes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if !codes.is_empty() {
        println!("  refused items by code: {codes:?}");
    }
    println!(
        "  accept latency per batch request (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        latency.max() as f64 / 1000.0
    );
    // With an in-process target this is everything on the machine's cores: load generator,
    // node(s) and emulator: the cost of a push, beside the rate the cores allowed. Then the
    // node's part alone: what a push costs the node, so what its cores would carry if the
    // load generator and APNs ran elsewhere.
    let per_push = |ms: u64| ms as f64 * 1000.0 / accepted.max(1) as f64;
    println!(
        "  CPU of this process during the load: {:.2} s = {:.1} µs per accepted push ({:.2} cores)",
        cpu.total_ms as f64 / 1000.0,
        per_push(cpu.total_ms),
        cpu.total_ms as f64 / 1000.0 / elapsed
    );
    if local.is_some() && accepted > 0 {
        let node_us = per_push(cpu.node_ms());
        println!(
            "  of which node(s) {:.1} µs, emulator {:.1} µs, load generator {:.1} µs per push; \
             the node's CPU per push carries {:.0} pushes/s per core",
            node_us,
            per_push(cpu.emulator_ms),
            per_push(cpu.load_ms),
            1e6 / node_us.max(f64::MIN_POSITIVE)
        );
    }
    if let Some(local) = local {
        // Every accepted push reaches the emulator (delivered) — within a bound.
        let want = already + accepted;
        let drain_started = tokio::time::Instant::now();
        let deadline = drain_started + Duration::from_secs(120);
        while local.emulator.core.accepted_count() < want && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got = local.emulator.core.accepted_count() - already;
        println!(
            "  the emulator received {got} of the {accepted} accepted pushes ({:.1} s after the load)",
            drain_started.elapsed().as_secs_f64()
        );
        let mut drained = true;
        for node in local.nodes {
            drained &= node.shutdown().await.engine.drained;
        }
        let emulator = local.emulator;
        tokio::task::spawn_blocking(move || emulator.stop()).await?;
        anyhow::ensure!(
            got >= accepted,
            "{} accepted pushes did not reach the emulator",
            accepted - got
        );
        anyhow::ensure!(drained, "a node did not drain its accepted pushes");
    }
    Ok(())
}

/// CPU time (ms) used by this process's threads, split by who ran them.
struct CpuSplit {
    total_ms: u64,
    /// The in-process emulator's threads (`emulator…`).
    emulator_ms: u64,
    /// The load generator's thread (it reports its own: it has exited when the load is over).
    load_ms: u64,
}

impl CpuSplit {
    /// The CPU used so far by the live threads (the load generator's is set by the caller).
    fn now() -> Self {
        CpuSplit {
            total_ms: thread_cpu_ms(|name| name != LOAD_THREAD),
            emulator_ms: thread_cpu_ms(|name| name.starts_with("emulator")),
            load_ms: 0,
        }
    }

    /// The CPU used between `before` and this sample.
    fn since(&self, before: &CpuSplit) -> CpuSplit {
        CpuSplit {
            total_ms: self.total_ms.saturating_sub(before.total_ms),
            emulator_ms: self.emulator_ms.saturating_sub(before.emulator_ms),
            load_ms: 0,
        }
    }

    /// Everything but the emulator and the load generator: the node(s).
    fn node_ms(&self) -> u64 {
        self.total_ms
            .saturating_sub(self.emulator_ms)
            .saturating_sub(self.load_ms)
    }
}

/// The load: `args.connections` connections to `clients` (round robin), each sending one batch
/// at a time until `end`; the merged accept latencies.
async fn load(
    args: HttpArgs,
    clients: Vec<ApiClient>,
    totals: Arc<Totals>,
    started: tokio::time::Instant,
    end: tokio::time::Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut tasks = Vec::new();
    let connections = args.connections.max(1);
    // With `--rate`: each connection sends one batch per `every`, the connections staggered.
    let every = args
        .rate
        .map(|rate| Duration::from_secs_f64((connections * args.batch) as f64 / rate as f64));
    for c in 0..connections {
        let client = clients[c % clients.len()].clone();
        let totals = totals.clone();
        let bodies = bodies(&args, c as u64 + 1);
        let mut due = every.map(|every| started + every.mul_f64(c as f64 / connections as f64));
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| unreachable!("valid bounds"));
            let mut connection = client.connect().await?;
            let mut i = 0;
            while tokio::time::Instant::now() < end {
                let sent = match (due, every) {
                    (Some(at), Some(every)) => {
                        if at >= end {
                            break;
                        }
                        due = Some(at + every);
                        if tokio::time::Instant::now() > at {
                            // The previous batch's answer came after this one was due: count
                            // the wait (no coordinated omission).
                            at
                        } else {
                            // On time: from the wake-up (the timer's millisecond granularity
                            // is the load generator's, not the target's).
                            tokio::time::sleep_until(at).await;
                            tokio::time::Instant::now()
                        }
                    }
                    _ => tokio::time::Instant::now(),
                };
                let body = bodies[i % bodies.len()].clone();
                i += 1;
                let (status, answer) = connection
                    .send(Method::POST, "/v1/push/batch", Some(body))
                    .await?;
                let micros = sent.elapsed().as_micros().max(1) as u64;
                let _ = latency.record(micros.min(60_000_000));
                totals.requests.fetch_add(1, Ordering::Relaxed);
                match status.as_u16() {
                    200 => {
                        let answer: serde_json::Value =
                            serde_json::from_slice(&answer).context("batch answer is not JSON")?;
                        let accepted = answer["accepted"].as_u64().unwrap_or(0);
                        let failed = answer["failed"].as_u64().unwrap_or(0);
                        totals.accepted.fetch_add(accepted, Ordering::Relaxed);
                        totals.refused.fetch_add(failed, Ordering::Relaxed);
                        if failed > 0 {
                            let codes = answer["results"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|r| {
                                    let e = &r["error"];
                                    Some(format!(
                                        "{}: {}",
                                        e["code"].as_str()?,
                                        e["message"].as_str().unwrap_or("")
                                    ))
                                });
                            let mut sample = totals.codes.lock().unwrap_or_else(|e| e.into_inner());
                            for code in codes {
                                *sample.entry(code).or_default() += 1;
                            }
                        }
                    }
                    429 => {
                        totals.overloaded.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => anyhow::bail!(
                        "batch answered {other}: {}",
                        String::from_utf8_lossy(&answer)
                    ),
                }
            }
            anyhow::Ok(latency)
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| unreachable!("valid bounds"));
    for task in tasks {
        let h = task.await.context("load task panicked")??;
        latency.add(h).context("merging histograms")?;
    }
    Ok(latency)
}
