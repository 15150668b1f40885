//! End-to-end smoke of the harness: three nodes in their own namespaces, the create workload,
//! the kill nemesis, the final heal and restart; every node must come back healthy and the
//! checker must find nothing. Needs root, /dev/fuse and the release binary, and takes about a
//! minute, so it is ignored by default:
//!
//! `cargo build --release -p intentd-server && cargo test -p intentd-jepsen --test smoke -- --ignored`

use std::time::Duration;

use intentd_jepsen::{db, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root, network namespaces and target/release/intentd"]
async fn three_nodes_survive_kills_and_heal() {
    let results = tempfile::tempdir().unwrap();
    let outcome = run::run(run::RunOptions {
        time_limit: Duration::from_secs(20),
        nemeses: vec!["kill-one".into(), "kill-leader".into()],
        nodes: 3,
        results: results.path().to_path_buf(),
        unsafe_skip_log_fsync: false,
        binary: db::default_binary(),
        seed: 42,
        quiet_s: (1.0, 2.0),
        fault_s: (2.0, 4.0),
        clients: 3,
        workload: run::WorkloadKind::Full,
    })
    .await
    .expect("the run itself works");
    println!("{}", outcome.summary);
    assert!(outcome.valid, "{}", outcome.summary);
    assert!(outcome.summary.contains("all 3 nodes healthy"));
    assert!(outcome.summary.contains("start-kill") || outcome.summary.contains("fault cycles"));
}
