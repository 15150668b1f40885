//! `intentd-jepsen`: runs intentd nodes in network namespaces under faults and checks the
//! history. Needs root (namespaces, iptables, tc, FUSE). Exit status: 0 when every run is
//! valid, 1 on any anomaly, 2 when the harness itself failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use intentd_jepsen::{db, fusefs, nemesis, net, run};

#[derive(Parser, Debug)]
#[command(
    name = "intentd-jepsen",
    about = "Jepsen-style fault injection for intentd"
)]
struct Cli {
    /// Seconds of faults per run (the heal, restart and drain come after).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Comma-separated nemeses; default: every one, each in its own run (the matrix).
    /// `--mixed` schedules the named ones together in one run instead.
    #[arg(long, value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Run the given (or all) nemeses mixed in a single run.
    #[arg(long)]
    mixed: bool,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value = "jepsen/results")]
    results: PathBuf,
    /// Start nodes with `--unsafe-skip-log-fsync` (the checker must then find losses
    /// under fsync-loss).
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// The intentd binary [default: $INTENTD_BIN or target/release/intentd].
    #[arg(long)]
    binary: Option<PathBuf>,
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent create clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// `full` (creates, consumers, races, reads) or `creates` (create-only, faster).
    #[arg(long, default_value = "full")]
    workload: String,
    /// Only remove what a crashed run left behind (namespaces, mounts, processes) and exit.
    #[arg(long)]
    cleanup: bool,
}

fn cleanup_everything() {
    db::emergency_kill_all();
    fusefs::cleanup_leftover_mounts();
    net::cleanup();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JEPSEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if cli.cleanup {
        cleanup_everything();
        return ExitCode::SUCCESS;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("intentd-jepsen needs root (network namespaces, iptables, tc, FUSE)");
        return ExitCode::from(2);
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        cleanup_everything();
    }));

    let names: Vec<String> = if cli.nemesis.is_empty() {
        nemesis::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        cli.nemesis.iter().map(|s| s.trim().to_string()).collect()
    };
    if let Err(e) = nemesis::validate(&names) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let runs: Vec<Vec<String>> = if cli.mixed {
        vec![names]
    } else {
        names.into_iter().map(|n| vec![n]).collect()
    };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        let all_runs = async {
            let mut outcomes = Vec::new();
            for (k, nemeses) in runs.into_iter().enumerate() {
                let opts = run::RunOptions {
                    time_limit: Duration::from_secs(cli.time_limit),
                    nemeses,
                    nodes: cli.nodes,
                    results: cli.results.clone(),
                    unsafe_skip_log_fsync: cli.unsafe_no_fsync,
                    binary: cli.binary.clone().unwrap_or_else(db::default_binary),
                    seed: seed.wrapping_add(k as u64),
                    quiet_s: (2.0, 5.0),
                    fault_s: (4.0, 10.0),
                    clients: cli.clients,
                    workload: if cli.workload == "creates" {
                        run::WorkloadKind::Creates
                    } else {
                        run::WorkloadKind::Full
                    },
                };
                tracing::info!(nemeses = ?opts.nemeses, seed = opts.seed, "run starting");
                let outcome = run::run(opts).await?;
                println!("{}", outcome.summary);
                outcomes.push(outcome);
            }
            anyhow::Ok(outcomes)
        };
        tokio::select! {
            r = all_runs => r.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    });
    match result {
        Ok(Some(outcomes)) => {
            let bad: Vec<_> = outcomes.iter().filter(|o| !o.valid).collect();
            println!("{} run(s), {} with anomalies", outcomes.len(), bad.len());
            for o in &bad {
                println!("  INVALID: {}", o.dir.display());
            }
            if bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(None) => {
            eprintln!("interrupted; cleaning up");
            cleanup_everything();
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("intentd-jepsen: {e:#}");
            cleanup_everything();
            ExitCode::from(2)
        }
    }
}
