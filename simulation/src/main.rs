//! `herald-sim`: run the deterministic simulator.
//!
//! ```text
//! herald-sim --seed 7 --trace             # one run; write trace-7.txt
//! herald-sim twice --seed 7               # run a seed twice, compare trace hashes
//! herald-sim sweep --from 0 --count 200   # many seeds; failures print their replay command
//! ```
//!
//! `twice` and `sweep` run every seed in a fresh child process (`herald-sim run`), as a replay
//! does: tokio's task ids are process-wide, and the order in which a crashed host's tasks are
//! dropped follows them, so two runs of one seed *in one process* can order simultaneous
//! events differently. A fresh process per run makes a sweep's failure replay exactly.
//!
//! ```text
//! herald-sim diff-traces a.txt b.txt      # first divergence of two traces
//! herald-sim speed --nodes 5              # simulated seconds per wall second
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use herald_sim::sim::trace::first_divergence;
use herald_sim::sim::{SimConfig, run};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(name = "herald-sim", about = "Herald's deterministic simulator")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one seed (the default).
    Run(RunArgs),
    /// Run one seed twice and compare the trace hashes.
    Twice(RunArgs),
    /// Run a range of seeds.
    Sweep {
        /// First seed.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Number of seeds.
        #[arg(long, default_value_t = 100)]
        count: u64,
        #[command(flatten)]
        shape: Shape,
    },
    /// Show the first divergence of two trace files.
    DiffTraces {
        /// First trace.
        left: PathBuf,
        /// Second trace.
        right: PathBuf,
    },
    /// Measure simulated seconds per wall second.
    Speed {
        /// Seeds to average over.
        #[arg(long, default_value_t = 3)]
        count: u64,
        #[command(flatten)]
        shape: Shape,
    },
}

#[derive(Debug, Clone, Args)]
struct Shape {
    /// Cluster nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Regions.
    #[arg(long, default_value_t = 2)]
    regions: usize,
    /// Simulated seconds of workload and faults.
    #[arg(long, default_value_t = 10)]
    active_secs: u64,
    /// Liveness bound: simulated seconds the cluster gets to converge after healing.
    #[arg(long, default_value_t = 120)]
    heal_secs: u64,
    /// No faults.
    #[arg(long)]
    no_faults: bool,
    /// Simulated milliseconds per step (and the least message latency).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    tick_ms: u64,
    /// Turn on a deliberately re-introduced bug: skip-token-check, forget-wal, stale-epoch.
    #[cfg(feature = "sim-bugs")]
    #[arg(long = "bug")]
    bugs: Vec<String>,
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// The seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    shape: Shape,
    /// Write the trace (to the path given, else `trace-<seed>.txt`).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    trace: Option<String>,
    /// Log the stack's tracing output (RUST_LOG filters it) to stderr.
    #[arg(long)]
    verbose: bool,
    /// Write a JSON summary of the run here (how `twice` and `sweep` read their children).
    #[arg(long, hide = true)]
    summary: Option<PathBuf>,
}

/// What a child run reports to its parent (`run --summary PATH`).
#[derive(Debug, Serialize, Deserialize)]
struct ChildSummary {
    passed: bool,
    hash: String,
    events: usize,
    sim_secs: f64,
    coverage: BTreeMap<String, u64>,
    /// The human report (with the replay command when it failed).
    report: String,
}

/// The command-line arguments that give a child run `shape`.
fn shape_args(shape: &Shape) -> Vec<String> {
    let mut args = vec![
        format!("--nodes={}", shape.nodes),
        format!("--regions={}", shape.regions),
        format!("--active-secs={}", shape.active_secs),
        format!("--heal-secs={}", shape.heal_secs),
        format!("--tick-ms={}", shape.tick_ms),
    ];
    if shape.no_faults {
        args.push("--no-faults".into());
    }
    #[cfg(feature = "sim-bugs")]
    for bug in &shape.bugs {
        args.push(format!("--bug={bug}"));
    }
    args
}

/// Run `seed` in a fresh `herald-sim run` process (see the module docs for why); its trace
/// goes to `trace` when given.
fn run_in_child(seed: u64, shape: &Shape, trace: Option<&Path>) -> anyhow::Result<ChildSummary> {
    let exe = std::env::current_exe().context("locating the herald-sim binary")?;
    let summary = std::env::temp_dir().join(format!(
        "herald-sim-{}-{seed}-{}.json",
        std::process::id(),
        CHILD_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut command = std::process::Command::new(exe);
    command
        .arg("run")
        .arg(format!("--seed={seed}"))
        .args(shape_args(shape))
        .arg("--summary")
        .arg(&summary)
        .stdout(std::process::Stdio::null());
    if let Some(trace) = trace {
        command.arg(format!("--trace={}", trace.display()));
    }
    let status = command
        .status()
        .with_context(|| format!("running seed {seed} in a child process"))?;
    let text = std::fs::read_to_string(&summary);
    let _ = std::fs::remove_file(&summary);
    let text =
        text.with_context(|| format!("seed {seed}: the child run ({status}) left no summary"))?;
    serde_json::from_str(&text).with_context(|| format!("seed {seed}: unreadable child summary"))
}

static CHILD_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn config(seed: u64, shape: &Shape) -> SimConfig {
    let mut c = SimConfig::new(seed);
    c.nodes = shape.nodes;
    c.regions = shape.regions;
    c.active = Duration::from_secs(shape.active_secs);
    c.faults = !shape.no_faults;
    c.heal_bound = Duration::from_secs(shape.heal_secs);
    c.tick = Duration::from_millis(shape.tick_ms);
    #[cfg(feature = "sim-bugs")]
    {
        c.bugs = shape
            .bugs
            .iter()
            .filter_map(|b| herald_sim::sim::world::parse_bug(b))
            .collect();
    }
    c
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    // Before anything signs a JWT: the simulator's signatures must not depend on OS randomness.
    herald_sim::sim::signing::install();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    match command {
        Command::Run(args) => {
            if args.verbose {
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                    .with_writer(std::io::stderr)
                    .init();
            }
            let report = run(&config(args.seed, &args.shape)).map_err(anyhow::Error::msg)?;
            print!("{report}");
            if let Some(path) = &args.summary {
                let summary = ChildSummary {
                    passed: report.passed(),
                    hash: report.hash.clone(),
                    events: report.trace.len(),
                    sim_secs: report.sim_elapsed.as_secs_f64(),
                    coverage: report.coverage.clone(),
                    report: report.to_string(),
                };
                std::fs::write(path, serde_json::to_vec(&summary)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = args.trace {
                let path = if path.is_empty() {
                    format!("trace-{}.txt", args.seed)
                } else {
                    path
                };
                std::fs::write(&path, report.trace.join("\n") + "\n")
                    .with_context(|| format!("writing {path}"))?;
                println!("trace written to {path}");
            }
            Ok(exit(report.passed()))
        }
        Command::Twice(args) => {
            let dir = std::env::temp_dir();
            let pid = std::process::id();
            let paths = [1, 2].map(|n| dir.join(format!("herald-sim-twice-{pid}-{n}.txt")));
            let a = run_in_child(args.seed, &args.shape, Some(&paths[0]))?;
            let b = run_in_child(args.seed, &args.shape, Some(&paths[1]))?;
            let read = |p: &PathBuf| -> anyhow::Result<Vec<String>> {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                let _ = std::fs::remove_file(p);
                Ok(text.lines().map(str::to_owned).collect())
            };
            let (trace_a, trace_b) = (read(&paths[0])?, read(&paths[1])?);
            println!("run 1: hash={} events={}", a.hash, a.events);
            println!("run 2: hash={} events={}", b.hash, b.events);
            match first_divergence(&trace_a, &trace_b) {
                None if a.hash == b.hash => {
                    println!("identical");
                    if !a.passed {
                        print!("{}", a.report);
                    }
                    Ok(exit(a.passed && b.passed))
                }
                None => {
                    println!("NOT deterministic: equal traces, different hashes");
                    Ok(ExitCode::FAILURE)
                }
                Some(d) => {
                    println!("NOT deterministic: {d}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Sweep { from, count, shape } => {
            let started = Instant::now();
            let mut failed = vec![];
            let mut coverage: BTreeMap<String, u64> = BTreeMap::new();
            let mut sim_secs = 0.0;
            for seed in from..from + count {
                let report = run_in_child(seed, &shape, None)?;
                sim_secs += report.sim_secs;
                for (k, v) in &report.coverage {
                    *coverage.entry(k.clone()).or_default() += v;
                }
                if !report.passed {
                    print!("{}", report.report);
                    failed.push(seed);
                }
            }
            let wall = started.elapsed().as_secs_f64();
            println!("coverage:");
            for (k, v) in &coverage {
                println!("  {k:<40} {v}");
            }
            println!(
                "seeds {from}..{} ({count}): {} failed {failed:?}; wall {wall:.1}s, {:.1} sim-s per wall-s",
                from + count,
                failed.len(),
                sim_secs / wall.max(1e-9)
            );
            Ok(exit(failed.is_empty()))
        }
        Command::DiffTraces { left, right } => {
            let read = |p: &PathBuf| -> anyhow::Result<Vec<String>> {
                Ok(std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .lines()
                    .map(str::to_owned)
                    .collect())
            };
            let (a, b) = (read(&left)?, read(&right)?);
            match first_divergence(&a, &b) {
                None => {
                    println!("identical ({} lines)", a.len());
                    Ok(ExitCode::SUCCESS)
                }
                Some(d) => {
                    println!("{d}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Speed { count, shape } => {
            let started = Instant::now();
            let mut sim_secs = 0.0;
            for seed in 0..count {
                sim_secs += run(&config(seed, &shape))
                    .map_err(anyhow::Error::msg)?
                    .sim_elapsed
                    .as_secs_f64();
            }
            let wall = started.elapsed().as_secs_f64();
            println!(
                "nodes={} seeds={count}: {sim_secs:.1} sim-s in {wall:.2} wall-s = {:.1} sim-s per wall-s",
                shape.nodes,
                sim_secs / wall.max(1e-9)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
