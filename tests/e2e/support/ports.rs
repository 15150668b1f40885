//! The ports test servers listen on, and why no start depends on luck.
//!
//! A server's addresses must be known before it starts and stay its own across restarts: a
//! cluster's peers name each other's Raft addresses in `--peers`, the Raft membership keeps
//! them, and tests keep clients of a node across its restart. So a port is chosen by the
//! harness, not by binding port 0 in the server. Two things make that choice safe:
//! - The ports lie outside the kernel's ephemeral range, with a lock file per port (below),
//!   so neither another test process nor any process's outgoing connection takes one: the
//!   old "pick a free port, release it, start the server on it" lost its port to a connect()
//!   in between once ("binding the raft address ...: Address already in use").
//! - A process outside the tests may still listen on one. A start that lost a port that way
//!   exits with [`LOST_PORT`] in its log before it serves anything; the harness then throws
//!   the start away and makes it again on fresh ports ([`super::cluster::Cluster::start`],
//!   [`super::Server::start_with`], `Cluster::spawn_joining_node`), a whole cluster at once
//!   since its peers must know each other's addresses in advance. A restart keeps its ports,
//!   which stay reserved (locked) by this process until it exits.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};

/// What the server's log says when a port it was given is taken (the OS error of `bind`).
pub const LOST_PORT: &str = "Address already in use";

/// Ports handed to test servers. They lie below the kernel's ephemeral range (32768-60999 by
/// default), from which every outgoing connection of every process takes its local port: a
/// port picked there (bind to 0, release, start the server on it) could be taken by some
/// connect() in between, and a fresh-clone run once failed with "Address already in use".
/// Nothing takes a port from this range on its own, and a lock file per port keeps the test
/// processes that run at once (nextest runs each test in its own) apart.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// The lock files of the ports this process reserved, held until it exits so that a server
/// restarted on its old address still owns it.
static RESERVED: std::sync::Mutex<Vec<File>> = std::sync::Mutex::new(Vec::new());

/// `n` distinct loopback addresses reserved for this test process (see [`TEST_PORTS`]).
pub fn free_ports(n: usize) -> Vec<SocketAddr> {
    use fs2::FileExt as _;
    let dir = std::env::temp_dir().join("intentd-e2e-ports");
    std::fs::create_dir_all(&dir).expect("create the port lock directory");
    let span = TEST_PORTS.len();
    // Processes start their search at different places, so they rarely meet on a lock.
    let start = (std::process::id() as usize).wrapping_mul(7919) % span;
    let mut reserved = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
    let mut addrs = Vec::with_capacity(n);
    for i in 0..span {
        if addrs.len() == n {
            break;
        }
        let port = TEST_PORTS.start + ((start + i) % span) as u16;
        let Ok(lock) = File::create(dir.join(format!("{port}.lock"))) else {
            continue;
        };
        if lock.try_lock_exclusive().is_err() {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Something outside the tests may listen there; the probe is closed at once.
        if TcpListener::bind(addr).is_err() {
            continue;
        }
        reserved.push(lock);
        addrs.push(addr);
    }
    assert_eq!(
        addrs.len(),
        n,
        "not enough free test ports in {TEST_PORTS:?}"
    );
    addrs
}
