//! `herald-sim`: run the deterministic simulator.
//!
//! ```text
//! herald-sim --seed 7 --trace             # one run; write trace-7.txt
//! herald-sim twice --seed 7               # run a seed twice, compare trace hashes
//! herald-sim sweep --from 0 --count 200   # many seeds; failures print their replay command
//! herald-sim diff-traces a.txt b.txt      # first divergence of two traces
//! herald-sim speed --nodes 5              # simulated seconds per wall second
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use herald_sim::sim::trace::first_divergence;
use herald_sim::sim::{RunReport, SimConfig, run};

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
}

fn config(seed: u64, shape: &Shape) -> SimConfig {
    let mut c = SimConfig::new(seed);
    c.nodes = shape.nodes;
    c.regions = shape.regions;
    c.active = Duration::from_secs(shape.active_secs);
    c.faults = !shape.no_faults;
    c.heal_bound = Duration::from_secs(shape.heal_secs);
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
            let c = config(args.seed, &args.shape);
            let a = run(&c).map_err(anyhow::Error::msg)?;
            let b = run(&c).map_err(anyhow::Error::msg)?;
            println!("run 1: hash={} events={}", a.hash, a.trace.len());
            println!("run 2: hash={} events={}", b.hash, b.trace.len());
            match first_divergence(&a.trace, &b.trace) {
                None => {
                    println!("identical");
                    Ok(exit(a.passed() && b.passed()))
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
                let report: RunReport = run(&config(seed, &shape)).map_err(anyhow::Error::msg)?;
                sim_secs += report.sim_elapsed.as_secs_f64();
                for (k, v) in &report.coverage {
                    *coverage.entry(k.clone()).or_default() += v;
                }
                if !report.passed() {
                    print!("{report}");
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
