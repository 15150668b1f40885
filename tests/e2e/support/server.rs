//! Starts the real `intentd` binary as a child process, on loopback ports of its own and a
//! temporary data directory, and stops it the ways a machine can: SIGKILL, SIGTERM, SIGINT.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::api::Api;

/// How long a (debug, possibly contended) server may take to elect itself and serve writes.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a clean shutdown may take after SIGTERM/SIGINT.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// A running (or stopped) `intentd serve` with everything needed to start it again on the
/// same data directory and the same addresses.
pub struct Server {
    /// Owns the data directory and the log file; removed when the test ends.
    dir: TempDir,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub admin_key: String,
    child: Option<Child>,
    /// stdout and stderr of every start, appended, so a failing test can show what happened.
    log_path: PathBuf,
    starts: u32,
    /// More `serve` arguments, appended at every start (e.g. connection limits).
    extra_args: Vec<String>,
}

impl Server {
    /// Starts a one-node cluster and waits until it serves writes.
    pub async fn start() -> Server {
        Server::start_with(&[]).await
    }

    /// [`Server::start`] with more `serve` arguments.
    pub async fn start_with(extra_args: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("intentd-e2e-")
            .tempdir()
            .expect("create temp dir");
        let log_path = dir.path().join("server.log");
        let [http_addr, grpc_addr, raft_addr] = free_addrs();
        let mut server = Server {
            dir,
            http_addr,
            grpc_addr,
            raft_addr,
            admin_key: format!("e2e-admin-{}", uuid::Uuid::new_v4().simple()),
            child: None,
            log_path,
            starts: 0,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// A client that authenticates with the admin key.
    pub fn admin(&self) -> Api {
        Api::new(&self.base_url(), Some(&self.admin_key))
    }

    /// A client that sends no key at all.
    pub fn anonymous(&self) -> Api {
        Api::new(&self.base_url(), None)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open server log");
        writeln!(log, "===== e2e harness: start #{} =====", self.starts).expect("write log");
        let stderr: File = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_intentd"));
        // The test alone decides the configuration: no INTENTD_* from the caller's shell.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("INTENTD_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--http-addr")
            .arg(self.http_addr.to_string())
            .arg("--grpc-addr")
            .arg(self.grpc_addr.to_string())
            .arg("--raft-addr")
            .arg(self.raft_addr.to_string())
            .arg("--node-id")
            .arg("1")
            .arg("--admin-key")
            .arg(&self.admin_key)
            .args(&self.extra_args)
            .env("INTENTD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("spawn intentd");
        self.child = Some(child);
    }

    /// Polls `GET /health` until it answers 200 with `role: leader`, failing the test if the
    /// process exits first or the deadline passes.
    pub async fn wait_ready(&mut self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let url = format!("{}/health", self.base_url());
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "intentd exited with {status} before it was ready\n{}",
                    self.log_tail(80)
                );
            }
            let last = match http.get(&url).send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    if status == 200 && body["role"] == "leader" {
                        return;
                    }
                    format!("{status} {body}")
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "intentd not ready after {READY_DEADLINE:?}; last /health: {last}\n{}",
                    self.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the process gets no chance to flush anything it has not already made durable.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("server is running");
        child.kill().expect("SIGKILL intentd");
        child.wait().expect("reap intentd");
    }

    /// Sends `signal` and waits for the process to exit on its own.
    pub async fn stop_with(&mut self, signal: libc::c_int) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; the child has not been reaped yet, so the
        // pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "intentd did not exit within {STOP_DEADLINE:?} of signal {signal}\n{}",
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait.
    pub async fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM).await
    }

    /// Starts the binary again on the same data directory and addresses.
    pub async fn restart(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    /// The last `lines` lines of the server's output, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- last {} lines of {} ---\n{}",
            all.len() - from,
            self.log_path.display(),
            all[from..].join("\n")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
    }
}

/// Three distinct free loopback addresses (see [`free_ports`]).
fn free_addrs() -> [SocketAddr; 3] {
    let addrs = free_ports(3);
    [addrs[0], addrs[1], addrs[2]]
}

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
