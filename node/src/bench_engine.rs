//! `herald bench engine`: the actor engine against the emulator (which runs on its own
//! runtime and thread, as for `bench client`).
//!
//! Three measurements:
//! - **throughput**: pushes/s through `send_batch` → WAL (a `MemoryWal`) → shards → tenants →
//!   connections → emulator and back to an outcome, with T tenants, S shards and C
//!   connections per tenant; the submitters keep at most `window` pushes unfinished;
//! - **memory per connection**: resident set size (`VmRSS` from `/proc/self/status`: Linux
//!   only) of the process before and after T tenants open C connections each, and its peak
//!   during the throughput run. By default the emulator runs in the same process, so the
//!   figure covers both ends of a connection; with `--emulator-process` the emulator runs as
//!   `herald emulator` in a child process (driven through its admin endpoint), so the figure
//!   is the engine's alone, and the emulator's own RSS is reported beside it;
//! - **overload**: the emulator answers after a fixed delay, which bounds what the engine can
//!   deliver; 10× that is offered for a while, without resubmitting refused pushes; RSS is
//!   sampled every second and `Overloaded` answers are counted.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use herald_actors::apns::{
    ApnsTlsConfig, DeviceToken, Notification, Payload, PushType, SigningKey, TokenMinter, Topic,
};
use herald_actors::seams::{DetRng, SharedClock, SystemClock};
use herald_actors::{Credentials, Endpoint, Herald, PushError, TenantConfig, Tuning, limits};
use herald_sim::emulator::{EmulatorCore, FaultProfile, GeneratedKey, Latency, TeamConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

/// Flags of `herald bench engine`.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Pushes in the throughput run.
    #[arg(long, default_value_t = 200_000)]
    pub pushes: usize,
    /// Tenants (one APNs team each).
    #[arg(long, default_value_t = 2)]
    pub tenants: usize,
    /// Device shards.
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    /// Connections per tenant (the pool's minimum and maximum).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Pushes per `send_batch` call.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Pushes accepted and not yet finished, at most, in the throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub window: usize,
    /// Length of the overload run (seconds); 0 skips it.
    #[arg(long, default_value_t = 10)]
    pub overload_secs: u64,
    /// The emulator's answer delay during the overload run (milliseconds).
    #[arg(long, default_value_t = 2_000)]
    pub overload_latency_ms: u64,
    /// Run the emulator as `herald emulator` in a child process (so this process's RSS is
    /// the engine's alone) instead of on a thread of this process.
    #[arg(long)]
    pub emulator_process: bool,
}

/// The emulator `bench engine` pushes to.
#[derive(Debug)]
pub(crate) struct EmulatorTarget<'a> {
    pub(crate) addr: SocketAddr,
    pub(crate) ca_pem: String,
    /// Every team's key and bundle id.
    pub(crate) teams: Vec<(GeneratedKey, String)>,
    pub(crate) control: EmulatorControl<'a>,
}

/// How the bench sets the emulator's faults and reads its counters.
#[derive(Debug)]
pub(crate) enum EmulatorControl<'a> {
    /// In this process.
    InProcess(&'a EmulatorCore),
    /// A child process, through its admin endpoint.
    Process { admin: SocketAddr, pid: u32 },
}

impl EmulatorTarget<'_> {
    async fn set_faults(&self, faults: FaultProfile) -> anyhow::Result<()> {
        match &self.control {
            EmulatorControl::InProcess(core) => Ok(core.set_faults(faults)?),
            EmulatorControl::Process { admin, .. } => {
                let body = serde_json::to_string(&faults)?;
                admin_request(*admin, "PUT", "/faults", &body).await?;
                Ok(())
            }
        }
    }

    async fn accepted_count(&self) -> anyhow::Result<u64> {
        match &self.control {
            EmulatorControl::InProcess(core) => Ok(core.accepted_count()),
            EmulatorControl::Process { admin, .. } => {
                let body = admin_request(*admin, "GET", "/stats", "").await?;
                let stats: serde_json::Value = serde_json::from_str(&body)?;
                stats["accepted_total"]
                    .as_u64()
                    .context("/stats without accepted_total")
            }
        }
    }

    /// The emulator's own RSS, when it runs in another process.
    fn emulator_rss_kb(&self) -> Option<u64> {
        match &self.control {
            EmulatorControl::InProcess(_) => None,
            EmulatorControl::Process { pid, .. } => {
                rss_kb_of(&PathBuf::from(format!("/proc/{pid}/status")))
            }
        }
    }
}

/// `herald emulator` in a child process, with the benchmark's teams; killed on drop.
#[derive(Debug)]
pub(crate) struct EmulatorProcess {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    ca_pem: String,
    teams: Vec<(GeneratedKey, String)>,
    dir: PathBuf,
}

impl EmulatorProcess {
    /// Start `herald emulator` (this executable) with one generated key per `(team, bundle)`,
    /// on a runtime of `threads` workers, and wait until it listens.
    pub(crate) fn start(threads: usize, teams: Vec<(String, String)>) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("herald-bench-emu-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut toml = String::from("bind = \"127.0.0.1:0\"\nadmin_bind = \"127.0.0.1:0\"\n");
        let mut keys = Vec::new();
        for (t, (team, bundle)) in teams.iter().enumerate() {
            let key_id = format!("BENCHKEY{t:02}");
            let (config, key) = TeamConfig::generate(team, &key_id, &[bundle.as_str()])?;
            let public = config
                .keys
                .first()
                .and_then(|k| k.public_key_pem.clone())
                .context("generated key without a public key")?;
            toml.push_str(&format!(
                "\n[[teams]]\nteam_id = \"{team}\"\nbundle_ids = [\"{bundle}\"]\n\
                 [[teams.keys]]\nkey_id = \"{key_id}\"\npublic_key_pem = '''\n{public}'''\n"
            ));
            keys.push((key, bundle.clone()));
        }
        let config = dir.join("emulator.toml");
        let ca = dir.join("ca.pem");
        std::fs::write(&config, toml)?;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("emulator")
            .arg("--config")
            .arg(&config)
            .arg("--ca-out")
            .arg(&ca)
            .env("TOKIO_WORKER_THREADS", threads.to_string())
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("starting herald emulator")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut process = EmulatorProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca_pem: String::new(),
            teams: keys,
            dir,
        };
        let (mut addr, mut admin) = (None, None);
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(a) = line.strip_prefix("APNs emulator listening on ") {
                addr = Some(a.trim().parse()?);
            } else if let Some(a) = line.strip_prefix("admin endpoint on http://") {
                admin = Some(a.trim().parse()?);
            } else if line.starts_with("CA certificate written") {
                break;
            }
        }
        process.addr = addr.context("the emulator did not say where it listens")?;
        process.admin = admin.context("the emulator has no admin endpoint")?;
        process.ca_pem = std::fs::read_to_string(&ca)?;
        Ok(process)
    }

    /// The emulator as `bench engine` sees it.
    pub(crate) fn target(&self) -> EmulatorTarget<'_> {
        EmulatorTarget {
            addr: self.addr,
            ca_pem: self.ca_pem.clone(),
            teams: self.teams.clone(),
            control: EmulatorControl::Process {
                admin: self.admin,
                pid: self.child.id(),
            },
        }
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.1 request to the emulator's admin endpoint; returns the body of a 2xx answer.
async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {admin}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    anyhow::ensure!(
        status.starts_with('2'),
        "admin {method} {path}: {}",
        answer.lines().next().unwrap_or_default()
    );
    Ok(answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// Run `herald bench engine` against `emulator`.
pub(crate) fn run(emulator: &EmulatorTarget<'_>, args: EngineArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(bench(emulator, args))
}

async fn bench(emulator: &EmulatorTarget<'_>, args: EngineArgs) -> anyhow::Result<()> {
    let clock: SharedClock = Arc::new(SystemClock);
    let tenants = args.tenants.max(1);
    let connections = args.connections.clamp(1, limits::POOL_CONNECTIONS_MAX);
    let batch = args.batch.clamp(1, limits::SEND_BATCH_MAX);
    let mut tls = ApnsTlsConfig::new();
    tls.webpki_roots(false)
        .add_root_certificates_pem(emulator.ca_pem.as_bytes());

    // An engine without tenants, then the tenants with their connections: the RSS difference.
    let rss_engine = rss_kb();
    let herald = Herald::builder()
        .endpoint(Endpoint::tls("127.0.0.1", emulator.addr.port(), tls))
        .clock(clock.clone())
        .rng_seed(1)
        .shards(args.shards)
        .tuning(Tuning::default())
        .build()
        .await
        .context("starting the engine")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_kb();
    let emulator_rss_before = emulator.emulator_rss_kb();
    let mut names = Vec::new();
    let mut workloads = Vec::new();
    for (t, (key, bundle)) in emulator.teams.iter().take(tenants).enumerate() {
        let name = format!("tenant{t}");
        let signing = SigningKey::from_p8_pem(key.p8_pem.as_bytes(), &key.key_id, &key.team_id)?;
        let minter = TokenMinter::with_default_interval(signing, clock.clone());
        let mut config = TenantConfig::new(name.clone(), Credentials::Token(minter));
        config.connections(connections, connections);
        herald.add_tenant(config).await?;
        workloads.push(workload(bundle, t as u64)?);
        names.push(name);
    }
    // Connected, nothing sent yet: the connections opened at once (the pool's minimum).
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let rss_connected = rss_kb();
    let emulator_rss_connected = emulator.emulator_rss_kb();
    // Warm up: every connection carries requests (TLS and HTTP/2 set up, token accepted). The
    // same number per tenant whatever the pool size, so runs with different `--connections`
    // differ by their connections only: compare them for the cost of one connection.
    let warm = WARM_UP_PUSHES_PER_TENANT;
    let done = Arc::new(AtomicU64::new(0));
    let collector = count_outcomes(&herald, done.clone());
    let mut sent = 0;
    for (name, workload) in names.iter().zip(&workloads) {
        let notes: Vec<Notification> = (0..warm).map(|i| workload.next(i)).collect();
        submit_all(&herald, name, notes).await?;
        sent += warm as u64;
    }
    wait_done(&done, sent, Duration::from_secs(30)).await?;
    let mut open = 0;
    for name in &names {
        open += herald.tenant_status(name).await?.connections;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_after = rss_kb();
    let emulator_rss_after = emulator.emulator_rss_kb();

    // Throughput.
    let per_tenant = args.pushes / tenants;
    let started = Instant::now();
    let cpu_before = load_cpu_ms();
    let base = done.load(Ordering::Relaxed);
    let submitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (name, workload) in names.iter().cloned().zip(workloads.iter().cloned()) {
        let herald = herald.clone();
        let done = done.clone();
        let submitted = submitted.clone();
        let window = args.window as u64;
        tasks.push(tokio::spawn(async move {
            let mut overloaded = 0u64;
            let mut i = 0;
            while i < per_tenant {
                while submitted.load(Ordering::Relaxed) + base
                    > done.load(Ordering::Relaxed) + window
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let n = batch.min(per_tenant - i);
                let notes: Vec<Notification> = (i..i + n).map(|k| workload.next(k)).collect();
                overloaded += submit_all(&herald, &name, notes).await?;
                submitted.fetch_add(n as u64, Ordering::Relaxed);
                i += n;
            }
            anyhow::Ok(overloaded)
        }));
    }
    // RSS under load, sampled every 100 ms while the throughput run lasts.
    let rss_peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let rss_peak = rss_peak.clone();
        tokio::spawn(async move {
            while let Some(rss) = rss_kb() {
                rss_peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut overloaded = 0;
    for task in tasks {
        overloaded += task.await??;
    }
    let total = (per_tenant * tenants) as u64;
    wait_done(&done, base + total, Duration::from_secs(300)).await?;
    let elapsed = started.elapsed();
    let cpu_ms = load_cpu_ms().saturating_sub(cpu_before);
    sampler.abort();
    let rate = total as f64 / elapsed.as_secs_f64();

    println!(
        "engine → emulator over TLS: {tenants} tenants, {} shards, {connections} connections per \
         tenant ({open} open), MemoryWal, batches of {batch}, ≤ {} unfinished, 1 engine worker thread",
        args.shards, args.window
    );
    println!("| pushes | elapsed | pushes/s | Overloaded answers | engine CPU µs/push |");
    println!("|---|---|---|---|---|");
    println!(
        "| {total} | {:.2} s | {rate:.0} | {overloaded} | {:.1} |",
        elapsed.as_secs_f64(),
        cpu_ms as f64 * 1000.0 / total.max(1) as f64
    );
    let per = |before: u64, after: u64| (after as f64 - before as f64) / open.max(1) as f64;
    let ends = match (
        emulator_rss_before,
        emulator_rss_connected,
        emulator_rss_after,
    ) {
        (Some(before), Some(connected), Some(after)) => format!(
            "the engine's end only; the emulator's process: {before} KB → {connected} KB connected \
             ({:.0} KB per connection) → {after} KB warm ({:.0} KB per connection)",
            per(before, connected),
            per(before, after)
        ),
        _ => "both ends: the emulator is in this process".to_owned(),
    };
    match (rss_engine, rss_before, rss_connected, rss_after) {
        (Some(engine), Some(before), Some(connected), Some(after)) => println!(
            "memory (VmRSS, Linux): {engine} KB before the engine, {before} KB with {} shards and \
             no tenant, {connected} KB with {open} connections open and idle ({:.0} KB per \
             connection, the tenants' own cost included), {after} KB after {warm} warm-up pushes \
             per tenant ({:.0} KB per connection, with the pushes' state) ({ends}); peak under \
             load {} KB",
            args.shards,
            per(before, connected),
            per(before, after),
            rss_peak.load(Ordering::Relaxed)
        ),
        _ => println!("memory: VmRSS not available (Linux only)"),
    }

    // Overload: bounded delivery, 10× offered.
    if args.overload_secs > 0 {
        let latency = Duration::from_millis(args.overload_latency_ms.max(1));
        emulator
            .set_faults(FaultProfile {
                latency: Latency::Fixed {
                    ms: args.overload_latency_ms.max(1),
                },
                ..FaultProfile::default()
            })
            .await?;
        let inflight = (args.shards as usize * limits::SHARD_INFLIGHT_MAX)
            .min(open * limits::H2_STREAMS_MAX) as f64;
        let deliverable = inflight / latency.as_secs_f64();
        let offered_rate = deliverable * 10.0;
        let accepted_before = emulator.accepted_count().await?;
        let started = Instant::now();
        let end = started + Duration::from_secs(args.overload_secs);
        let mut offered = 0u64;
        let mut refused = 0u64;
        let mut refusals = 0u64;
        let mut samples = Vec::new();
        let mut next_sample = started + Duration::from_secs(1);
        let mut k = 0usize;
        let tick = Duration::from_millis(10);
        let mut next_tick = started;
        while Instant::now() < end {
            let due = (offered_rate * started.elapsed().as_secs_f64()) as u64;
            while offered < due {
                for (name, workload) in names.iter().zip(&workloads) {
                    let notes: Vec<Notification> =
                        (k..k + batch).map(|i| workload.next(i)).collect();
                    k += batch;
                    offered += batch as u64;
                    match herald.send_batch(name, notes).await {
                        Err(PushError::Overloaded { .. }) => {
                            refusals += 1;
                            refused += batch as u64;
                        }
                        Err(e) => return Err(e).context("send_batch"),
                        Ok(results) => {
                            let n = results
                                .iter()
                                .filter(|r| matches!(r, Err(PushError::Overloaded { .. })))
                                .count() as u64;
                            refused += n;
                            refusals += n;
                        }
                    }
                }
                if Instant::now() >= next_tick {
                    break;
                }
            }
            if Instant::now() >= next_sample {
                if let Some(rss) = rss_kb() {
                    samples.push(rss);
                }
                next_sample += Duration::from_secs(1);
            }
            next_tick += tick;
            tokio::time::sleep_until(next_tick).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let delivered = emulator.accepted_count().await? - accepted_before;
        emulator.set_faults(FaultProfile::default()).await?;
        println!(
            "overload: emulator answers after {} ms, so ≤ {deliverable:.0} pushes/s can be delivered \
             ({inflight:.0} in flight); offered {offered} pushes in {secs:.1} s ({:.0}/s, target \
             {offered_rate:.0}/s), {refused} refused as Overloaded ({refusals} Overloaded answers), \
             {delivered} delivered meanwhile",
            latency.as_millis(),
            offered as f64 / secs
        );
        if let (Some(max), Some(min)) = (samples.iter().max(), samples.iter().min()) {
            let steady = &samples[samples.len().min(2) - 1..];
            let (smax, smin) = (
                steady.iter().max().copied().unwrap_or(*max),
                steady.iter().min().copied().unwrap_or(*min),
            );
            println!(
                "overload RSS samples (KB, 1/s): {samples:?}; max {max} min {min}; from the 2nd \
                 second on: max {smax} min {smin} ({:+.1}%)",
                (smax as f64 / smin.max(1) as f64 - 1.0) * 100.0
            );
        }
        // Let the queues drain before shutting down.
        let _ = tokio::time::timeout(Duration::from_secs(120), async {
            while herald.pending() > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }
    collector.abort();
    let report = herald.shutdown(Duration::from_secs(10)).await;
    if !report.drained {
        println!("shutdown: {} pushes still pending", report.remaining);
    }
    Ok(())
}

/// Count every outcome the engine streams (a lagged reader counts what it missed).
fn count_outcomes(herald: &Herald, done: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let mut stream = herald.outcomes();
    tokio::spawn(async move {
        loop {
            match stream.recv().await {
                Ok(_) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(RecvError::Lagged(n)) => {
                    done.fetch_add(n, Ordering::Relaxed);
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}

async fn wait_done(done: &AtomicU64, target: u64, patience: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + patience;
    while done.load(Ordering::Relaxed) < target {
        anyhow::ensure!(
            Instant::now() < until,
            "only {} of {target} outcomes after {patience:?}",
            done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Send every push, resubmitting refused ones after the advised delay; returns the number
/// of `Overloaded` answers.
async fn submit_all(
    herald: &Herald,
    tenant: &str,
    mut pending: Vec<Notification>,
) -> anyhow::Result<u64> {
    let mut overloaded = 0;
    loop {
        match herald.send_batch(tenant, pending.clone()).await {
            Err(PushError::Overloaded { retry_after }) => {
                overloaded += 1;
                tokio::time::sleep(retry_after).await;
            }
            Err(e) => return Err(e).context("send_batch"),
            Ok(results) => {
                let mut again = Vec::new();
                let mut wait = Duration::ZERO;
                for (n, r) in pending.into_iter().zip(results) {
                    match r {
                        Ok(_) => {}
                        Err(PushError::Overloaded { retry_after }) => {
                            overloaded += 1;
                            wait = wait.max(retry_after);
                            again.push(n);
                        }
                        Err(e) => return Err(e).context("send_batch"),
                    }
                }
                if again.is_empty() {
                    return Ok(overloaded);
                }
                tokio::time::sleep(wait).await;
                pending = again;
            }
        }
    }
}

/// One tenant's pushes: an alert to each of 1,000 valid device tokens.
#[derive(Debug, Clone)]
struct Workload {
    /// One notification per device token, built before the measurement (as the client-core
    /// benchmark builds its own): pushes cycle over them, so the measured CPU is the engine's
    /// and a clone's, not the building and payload serialization of every push.
    notes: Arc<Vec<Notification>>,
}

impl Workload {
    fn next(&self, i: usize) -> Notification {
        self.notes[i % self.notes.len()].clone()
    }
}

fn workload(bundle: &str, seed: u64) -> anyhow::Result<Workload> {
    let mut rng = DetRng::from_seed(100 + seed);
    let topic: Topic = bundle.parse()?;
    let mut payload = Payload::new();
    payload.alert("benchmark");
    let notes = (0..1000)
        .map(|_| {
            let mut bytes = [0u8; 32];
            rng.fill(&mut bytes);
            let token = DeviceToken::from_bytes(&bytes)?;
            Ok(Notification::builder(token, topic.clone(), PushType::Alert)
                .payload(&payload)
                .build()?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Workload {
        notes: Arc::new(notes),
    })
}

/// Warm-up pushes per tenant before the warm memory sample (at most one `send_batch`).
const WARM_UP_PUSHES_PER_TENANT: usize = 800;

/// CPU time (user + system, ms) used so far by this process's threads, except the in-process
/// emulator's (threads named `emulator…`); see [`thread_cpu_ms`].
pub(crate) fn load_cpu_ms() -> u64 {
    thread_cpu_ms(|name| !name.starts_with("emulator"))
}

/// CPU time (user + system, milliseconds) of this process's live threads whose name `counted`
/// accepts. Linux only (0 elsewhere); `/proc` counts in clock ticks, assumed to be 100 per
/// second (Linux's `USER_HZ`), and threads that already exited are not counted.
pub(crate) fn thread_cpu_ms(counted: impl Fn(&str) -> bool) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            task_cpu_ms(&stat)
                .filter(|(name, _)| counted(name))
                .map(|(_, ms)| ms)
        })
        .sum()
}

/// CPU time (user + system, ms) of the calling thread so far; see [`thread_cpu_ms`].
pub(crate) fn thread_self_cpu_ms() -> u64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| task_cpu_ms(&stat).map(|(_, ms)| ms))
        .unwrap_or(0)
}

/// A thread's name and CPU time (ms) from its `/proc/…/stat` line.
fn task_cpu_ms(stat: &str) -> Option<(&str, u64)> {
    // `pid (comm) state ppid …`: comm may hold spaces, so split after its `)`.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after comm.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Some((stat.get(open + 1..close)?, ticks * 10))
}

/// This process's resident set size in KB (`VmRSS` in `/proc/self/status`; Linux only).
pub fn rss_kb() -> Option<u64> {
    rss_kb_of(std::path::Path::new("/proc/self/status"))
}

/// `VmRSS` in KB from a `/proc/<pid>/status` file.
fn rss_kb_of(status: &std::path::Path) -> Option<u64> {
    let status = std::fs::read_to_string(status).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
