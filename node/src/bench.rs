//! `herald bench`: throughput of the client core (`bench client`, via [`crate::pusher`]) and
//! of the actor engine (`bench engine`, see [`crate::bench_engine`]) against the emulator, and
//! the raw HTTP/2 rate of the emulator and of nghttp2's own server under `h2load`.
//!
//! To compare like with like on a 2-core machine, the emulator runs on its own tokio
//! runtime (one worker thread by default: one core), and the load generator (Herald's
//! client core, or h2load with `-t 1`) gets the other core. nghttpd runs with its default
//! single worker.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use herald_actors::apns::{
    ApnsTlsConfig, DeviceToken, Notification, Payload, PushType, SigningKey, TokenMinter, Topic,
};
use herald_actors::seams::{Clock as _, DetRng, SharedClock, SystemClock, TcpConnector};
use herald_sim::emulator::{Emulator, EmulatorConfig};
use rustls::pki_types::ServerName;

use crate::pusher::{Pusher, PusherConfig, run_all};

/// `herald bench …`
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Worker threads of the emulator's runtime (1 leaves the other core to the load generator).
    #[arg(long, global = true, default_value_t = 1)]
    pub emulator_threads: usize,
    /// Which benchmark.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Herald's client core → emulator: pushes/s with 1 and N connections.
    Client(ClientArgs),
    /// h2load → emulator, and h2load → nghttpd, with the same request.
    H2load(H2loadArgs),
    /// The actor engine → emulator: pushes/s, memory per connection, RSS under overload.
    Engine(crate::bench_engine::EngineArgs),
    /// Three cluster nodes over loopback mutual TLS: token-state commits/s, leader failover.
    Cluster(crate::bench_cluster::ClusterArgs),
    /// End to end over HTTP: batch ingest → node → emulator; pushes/s and accept latency.
    Http(crate::bench_http::HttpArgs),
}

/// Flags of `herald bench client`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Pushes per configuration.
    #[arg(long, default_value_t = 200_000)]
    pub pushes: usize,
    /// Connection counts to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub connections: Vec<usize>,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 400)]
    pub window: usize,
}

/// Flags of `herald bench h2load`.
#[derive(Debug, Clone, clap::Args)]
pub struct H2loadArgs {
    /// Requests per run.
    #[arg(long, default_value_t = 200_000)]
    pub requests: usize,
    /// Client connections (h2load `-c`).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Streams in flight per connection (h2load `-m`).
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// Skip the nghttpd baseline.
    #[arg(long)]
    pub no_nghttpd: bool,
}

const TEAM_ID: &str = "HERALDBNCH";
pub(crate) const BUNDLE_ID: &str = "com.example.herald";

/// Run a benchmark command.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let BenchCommand::Cluster(cluster) = args.command {
        // No emulator: the cluster benchmark does not talk to APNs.
        return crate::bench_cluster::run(cluster);
    }
    if let BenchCommand::Http(http) = args.command {
        // Starts its own emulator and node (or loads a running node).
        return crate::bench_http::run(http);
    }
    let teams = match &args.command {
        BenchCommand::Engine(engine) => engine.tenants.max(1),
        _ => 1,
    };
    if let BenchCommand::Engine(engine) = &args.command
        && engine.emulator_process
    {
        // The emulator in a child process: this process's RSS is the engine's alone.
        let team_keys = (0..teams).map(team_names).collect();
        let emulator =
            crate::bench_engine::EmulatorProcess::start(args.emulator_threads.max(1), team_keys)?;
        let target = emulator.target();
        return crate::bench_engine::run(&target, engine.clone());
    }
    let emulator = EmulatorThread::start(args.emulator_threads.max(1), teams)?;
    let result = match args.command {
        BenchCommand::Client(args) => client(&emulator, args),
        BenchCommand::H2load(args) => h2load(&emulator, args),
        BenchCommand::Engine(args) => crate::bench_engine::run(&emulator.target(), args),
        BenchCommand::Cluster(_) | BenchCommand::Http(_) => unreachable!("handled above"),
    };
    emulator.stop();
    result
}

fn client(emulator: &EmulatorThread, args: ClientArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!(
        "client core → emulator over TLS: {} pushes per row, window {}",
        args.pushes, args.window
    );
    println!("| connections | window | pushes/s | p50 | p99 | failed | CPU µs/push |");
    println!("|---|---|---|---|---|---|---|");
    for &connections in &args.connections {
        let summary_row = runtime.block_on(async {
            let clock: SharedClock = Arc::new(SystemClock);
            let tls = ApnsTlsConfig::new()
                .webpki_roots(false)
                .add_root_certificates_pem(emulator.ca_pem.as_bytes())
                .build()?;
            let key = SigningKey::from_p8_pem(emulator.p8.as_bytes(), &emulator.key_id, TEAM_ID)?;
            let minter = TokenMinter::with_default_interval(key, clock.clone());
            let pusher = Pusher::new(
                PusherConfig {
                    host: emulator.addr.ip().to_string(),
                    port: emulator.addr.port(),
                    tls: Some((tls, ServerName::from(emulator.addr.ip()))),
                    connections,
                    attempts_max: 3,
                    backoff_base: Duration::from_millis(10),
                    backoff_max: Duration::from_millis(100),
                },
                minter,
                clock,
                Arc::new(TcpConnector),
            );
            pusher.warm_up().await?;
            let notifications = Arc::new(workload(args.pushes)?);
            let mut rng = DetRng::from_seed(1);
            let started = tokio::time::Instant::now();
            let cpu_before = crate::bench_engine::load_cpu_ms();
            let summary = run_all(
                &pusher,
                notifications,
                args.window,
                &mut rng,
                Arc::new(|| {}),
            )
            .await;
            let elapsed = started.elapsed();
            let cpu_ms = crate::bench_engine::load_cpu_ms().saturating_sub(cpu_before);
            pusher.close().await;
            anyhow::Ok((summary, elapsed, cpu_ms))
        })?;
        let (summary, elapsed, cpu_ms) = summary_row;
        println!(
            "| {connections} | {} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.1} |",
            args.window,
            summary.finished() as f64 / elapsed.as_secs_f64(),
            summary.latency_percentile(50.0).as_secs_f64() * 1000.0,
            summary.latency_percentile(99.0).as_secs_f64() * 1000.0,
            summary.failed.values().sum::<u64>(),
            cpu_ms as f64 * 1000.0 / summary.finished().max(1) as f64,
        );
    }
    Ok(())
}

/// `pushes` small alert notifications to 1,000 distinct (valid) device tokens.
fn workload(pushes: usize) -> anyhow::Result<Vec<Notification>> {
    let mut rng = DetRng::from_seed(2);
    let topic: Topic = BUNDLE_ID.parse()?;
    let tokens: Vec<DeviceToken> = (0..1000)
        .map(|_| {
            let mut bytes = [0u8; 32];
            rng.fill(&mut bytes);
            DeviceToken::from_bytes(&bytes)
        })
        .collect::<Result<_, _>>()?;
    let mut payload = Payload::new();
    payload.alert("benchmark");
    (0..pushes)
        .map(|i| {
            Notification::builder(
                tokens[i % tokens.len()].clone(),
                topic.clone(),
                PushType::Alert,
            )
            .payload(&payload)
            .build()
            .map_err(anyhow::Error::from)
        })
        .collect()
}

fn h2load(emulator: &EmulatorThread, args: H2loadArgs) -> anyhow::Result<()> {
    let dir = scratch_dir("h2load")?;
    let payload = dir.join("payload.json");
    std::fs::write(&payload, br#"{"aps":{"alert":"benchmark"}}"#)?;
    let token = "0123456789abcdef".repeat(4);
    let key = SigningKey::from_p8_pem(emulator.p8.as_bytes(), &emulator.key_id, TEAM_ID)?;
    let jwt = key.sign(SystemClock.now())?;
    let headers = [
        format!("apns-topic: {BUNDLE_ID}"),
        "apns-push-type: alert".to_owned(),
        format!("authorization: bearer {}", jwt.jwt()),
    ];
    let url = format!("https://{}/3/device/{token}", emulator.addr);
    let rate = run_h2load(&args, &payload, &headers, &url)?;
    println!(
        "h2load → emulator:  {:.0} req/s  ({} requests, -c {} -m {} -t 1)",
        rate, args.requests, args.clients, args.streams
    );
    if !args.no_nghttpd {
        let rate = nghttpd_baseline(&args, &dir, &payload, &headers, &token)?;
        println!(
            "h2load → nghttpd:   {:.0} req/s  (same request; nghttpd serves a static file)",
            rate
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn nghttpd_baseline(
    args: &H2loadArgs,
    dir: &std::path::Path,
    payload: &std::path::Path,
    headers: &[String],
    token: &str,
) -> anyhow::Result<f64> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    let key_path = dir.join("nghttpd.key");
    let cert_path = dir.join("nghttpd.crt");
    std::fs::write(&key_path, cert.signing_key.serialize_pem())?;
    std::fs::write(&cert_path, cert.cert.pem())?;
    let docroot = dir.join("htdocs");
    std::fs::create_dir_all(docroot.join("3/device"))?;
    std::fs::write(docroot.join("3/device").join(token), b"")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = Command::new("nghttpd")
        .arg("--address=127.0.0.1")
        .arg(format!("--htdocs={}", docroot.display()))
        .arg(port.to_string())
        .arg(&key_path)
        .arg(&cert_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting nghttpd (apt-get install nghttp2-server)")?;
    std::thread::sleep(Duration::from_millis(500));
    let url = format!("https://127.0.0.1:{port}/3/device/{token}");
    let result = run_h2load(args, payload, headers, &url);
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn run_h2load(
    args: &H2loadArgs,
    payload: &std::path::Path,
    headers: &[String],
    url: &str,
) -> anyhow::Result<f64> {
    let mut command = Command::new("h2load");
    command
        .arg(format!("-n{}", args.requests))
        .arg(format!("-c{}", args.clients))
        .arg(format!("-m{}", args.streams))
        .arg("-t1")
        .arg(format!("--data={}", payload.display()));
    for header in headers {
        command.arg("-H").arg(header);
    }
    let output = command
        .arg(url)
        .output()
        .context("running h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_h2load(&text).with_context(|| format!("unexpected h2load output:\n{text}"))
}

/// The request rate from h2load's `finished in …, N req/s, …` line, if every request succeeded.
fn parse_h2load(text: &str) -> anyhow::Result<f64> {
    let requests = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .context("no requests line")?;
    if !requests.contains(" 0 failed") || !requests.contains(" 0 errored") {
        bail!("some requests failed: {requests}");
    }
    let statuses = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .context("no status line")?;
    if !statuses.contains(" 0 4xx") || !statuses.contains(" 0 5xx") {
        bail!("some requests were refused: {statuses}");
    }
    let finished = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .context("no finished line")?;
    let rate = finished
        .split(", ")
        .find(|part| part.ends_with("req/s"))
        .and_then(|part| part.trim_end_matches(" req/s").trim().parse::<f64>().ok())
        .context("no req/s figure")?;
    Ok(rate)
}

fn scratch_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("herald-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The emulator on its own one-thread runtime, on its own OS thread.
pub(crate) struct EmulatorThread {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) ca_pem: String,
    p8: String,
    key_id: String,
    /// Every team's key (the first is `p8`/`key_id`, team [`TEAM_ID`]) and bundle id.
    pub(crate) teams: Vec<(herald_sim::emulator::GeneratedKey, String)>,
    /// The emulator's controls (faults, counters).
    pub(crate) core: herald_sim::emulator::EmulatorCore,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl EmulatorThread {
    pub(crate) fn start(threads: usize, teams: usize) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Named `emulator…` so that CPU time can be told apart (see `bench_engine::load_cpu_ms`).
        let thread = std::thread::Builder::new()
            .name("emulator".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("emulator-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = async {
                        let emulator = Emulator::start(EmulatorConfig::default()).await?;
                        let mut keys = Vec::new();
                        for t in 0..teams {
                            let (team, bundle) = team_names(t);
                            let key = emulator.core().generate_team_key(&team, &[&bundle])?;
                            keys.push((key, bundle));
                        }
                        anyhow::Ok((emulator, keys))
                    }
                    .await;
                    match started {
                        Ok((emulator, keys)) => {
                            let _ = ready_tx.send(Ok((
                                emulator.addr(),
                                emulator.ca_pem().unwrap_or_default().to_owned(),
                                keys,
                                emulator.core().clone(),
                            )));
                            let _ = stop_rx.await;
                            emulator.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        let (addr, ca_pem, teams, core) = ready_rx.recv().context("emulator thread died")??;
        let (first, _) = teams.first().context("no team")?;
        Ok(EmulatorThread {
            addr,
            ca_pem,
            p8: first.p8_pem.clone(),
            key_id: first.key_id.clone(),
            teams,
            core,
            stop,
            thread,
        })
    }

    /// The emulator as `bench engine` sees it.
    fn target(&self) -> crate::bench_engine::EmulatorTarget<'_> {
        crate::bench_engine::EmulatorTarget {
            addr: self.addr,
            ca_pem: self.ca_pem.clone(),
            teams: self.teams.clone(),
            control: crate::bench_engine::EmulatorControl::InProcess(&self.core),
        }
    }

    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Team id and bundle id of benchmark team `t` (team 0 is the client benchmark's).
pub(crate) fn team_names(t: usize) -> (String, String) {
    if t == 0 {
        (TEAM_ID.to_owned(), BUNDLE_ID.to_owned())
    } else {
        (format!("HERALDB{t:03}"), format!("{BUNDLE_ID}{t}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load_summary() {
        let text = "finished in 2.01s, 49751.24 req/s, 3.40MB/s\n\
                    requests: 100000 total, 100000 started, 100000 done, 100000 succeeded, 0 failed, 0 errored, 0 timeout\n\
                    status codes: 100000 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        assert!((parse_h2load(text).unwrap() - 49751.24).abs() < 0.01);
        let failed = text.replace("0 failed", "3 failed");
        assert!(parse_h2load(&failed).is_err());
        let refused = text.replace("0 4xx", "9 4xx");
        assert!(parse_h2load(&refused).is_err());
    }
}
