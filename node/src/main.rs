//! The `herald` command: node, demo, emulator, benchmarks, and the API's clients (push,
//! admin).

use clap::{Parser, Subcommand};
use herald_node::{admin_cmd, bench, certs_cmd, demo, emulator_cmd, push_cmd, server};

/// mimalloc instead of glibc's malloc: a node allocates and frees per push on several threads,
/// where glibc's arenas and consolidation cost a fifth of the CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turn transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`; it also
/// covers memory mapped already).
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`) and gives freed memory back
/// after a short delay, so a node under steady load keeps faulting fresh 2 MiB pages in; each
/// such fault stalled the worker that took it for 6–9 ms on the reference machine (one in ~30
/// batch requests at 3,000 pushes/s), which was most of the accept p99 (docs/benchmarks.md).
/// Latency-sensitive servers commonly run without THP; a failure here only costs that tail.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("herald: could not turn transparent huge pages off ({e}); latency may spike");
    }
}

/// Herald: a distributed APNs provider.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `herald_actors=debug`.
    /// Default `warn`; for `herald node`, the configuration's `[log] filter`.
    #[arg(long, global = true, env = "HERALD_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One cluster node: engine, cluster, HTTP server (see docs/operations.md).
    Node(server::NodeArgs),
    /// The demo: the APNs emulator and a push workload, a progress bar and a summary.
    Demo(demo::DemoArgs),
    /// The APNs emulator as a standalone server.
    Emulator(emulator_cmd::EmulatorArgs),
    /// Benchmarks against the emulator (see docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Generate a development cluster CA and node certificates (see docs/cluster.md).
    Certs(certs_cmd::CertsArgs),
    /// Send one push through a node's HTTP API (and wait for its outcome with --wait).
    Push(push_cmd::PushArgs),
    /// Cluster status, members, shards, tenants and API keys (see docs/operations.md).
    Admin(admin_cmd::AdminArgs),
}

fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Node(args) => return server::main(args, cli.log),
        other => other,
    };
    // The demo stops three nodes at its end: their links closing are expected, not warnings.
    let default_filter = match command {
        Command::Demo(_) => "error",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            cli.log.as_deref().unwrap_or(default_filter),
        ))
        .with_writer(std::io::stderr)
        .init();
    match command {
        Command::Node(_) => Ok(()),
        Command::Demo(args) => runtime()?.block_on(demo::run(args)).map(drop),
        Command::Emulator(args) => runtime()?.block_on(emulator_cmd::run(args)),
        Command::Bench(args) => bench::run(args),
        Command::Certs(args) => certs_cmd::run(args),
        Command::Push(args) => {
            let status = runtime()?.block_on(push_cmd::run(args))?;
            if status != 0 {
                std::process::exit(i32::from(status));
            }
            Ok(())
        }
        Command::Admin(args) => runtime()?.block_on(admin_cmd::run(args)),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
