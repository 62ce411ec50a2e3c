//! The `herald` command: demo, emulator and benchmarks (node, admin and push come with the
//! HTTP API node).

use clap::{Parser, Subcommand};
use herald_node::{bench, certs_cmd, demo, emulator_cmd};

/// Herald: a distributed APNs provider.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `herald_actors=debug`.
    #[arg(long, global = true, env = "HERALD_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The demo: the APNs emulator and a push workload, a progress bar and a summary.
    Demo(demo::DemoArgs),
    /// The APNs emulator as a standalone server.
    Emulator(emulator_cmd::EmulatorArgs),
    /// Benchmarks against the emulator (see docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Generate a development cluster CA and node certificates (see docs/cluster.md).
    Certs(certs_cmd::CertsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Demo(args) => runtime()?.block_on(demo::run(args)).map(drop),
        Command::Emulator(args) => runtime()?.block_on(emulator_cmd::run(args)),
        Command::Bench(args) => bench::run(args),
        Command::Certs(args) => certs_cmd::run(args),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
