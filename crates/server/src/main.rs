//! `intentd`: the server (`serve`) and a command-line client for its HTTP API.

mod bench;
mod certs;
mod client;
mod config;
mod serve;
mod sse;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: a write allocates and frees many short-lived buffers
/// on several threads (HTTP workers, the state machine, the WAL writer, sled's IO pool), and
/// glibc spent about a fifth of a busy node's CPU in its arena locks and chunk consolidation
/// (`docs/performance.md`, round 3).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "intentd",
    version,
    about = "Self-hosted intent delivery cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run a node (with no cluster settings: a one-node cluster under ./data).
    Serve(Box<config::ServeArgs>),
    /// Send, read and watch intents.
    Intents(client::IntentsCmd),
    /// Act as a receiving agent; register agents and their delivery binding.
    Agents(client::AgentsCmd),
    /// Inspect and replay dead-lettered deliveries.
    Deliveries(client::DeliveriesCmd),
    /// Manage outbound webhook subscriptions.
    Webhooks(client::WebhooksCmd),
    /// Apply (and watch) or validate scenario bundles and their workflows.
    Scenarios(client::ScenariosCmd),
    /// Manage API keys (admin key required).
    Keys(client::KeysCmd),
    /// Inspect and change the cluster's membership (admin key required).
    Cluster(client::ClusterCmd),
    /// Generate TLS certificates: a cluster CA and one certificate per node.
    Certs(certs::CertsCmd),
    /// Drive a closed-loop create load and print throughput and latency percentiles.
    Bench(bench::BenchCmd),
}

fn init_tracing(format: config::LogFormat) {
    let filter = EnvFilter::try_from_env("INTENTD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn"));
    // Colour only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("intentd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Commands::Serve(args) => {
                let config = args.resolve()?;
                init_tracing(config.log_format);
                serve::run(config).await
            }
            Commands::Intents(cmd) => cmd.run().await,
            Commands::Scenarios(cmd) => cmd.run().await,
            Commands::Agents(cmd) => cmd.run().await,
            Commands::Deliveries(cmd) => cmd.run().await,
            Commands::Webhooks(cmd) => cmd.run().await,
            Commands::Keys(cmd) => cmd.run().await,
            Commands::Bench(cmd) => cmd.run().await,
            Commands::Cluster(cmd) => cmd.run().await,
            Commands::Certs(cmd) => cmd.run(),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("intentd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
