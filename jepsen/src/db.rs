//! The intentd nodes: each one runs in its own network namespace (`ip netns exec`, which
//! execs, so the child's pid is intentd's), listens on its namespace address, keeps its data
//! under `<results>/nodes/n<i>/data` and logs to `<results>/nodes/n<i>/intentd.log` (appended
//! across restarts). Optional: libfaketime with a per-node offset file (clock nemesis) and the
//! lossy FUSE filesystem over the data directory (power-off nemesis).
//!
//! Every pid is also kept in a process-wide registry so that [`emergency_kill_all`] (called
//! from the panic hook and the Ctrl-C handler) can kill nodes without any lock held.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::fusefs;
use crate::net;

pub const HTTP_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 9090;
pub const RAFT_PORT: u16 = 7000;

/// libfaketime as packaged by Debian.
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

static PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn register(pid: i32) {
    PIDS.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn unregister(pid: i32) {
    PIDS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

/// SIGKILLs every node this process started. Safe to call from a panic hook or signal path.
pub fn emergency_kill_all() {
    let pids = match PIDS.try_lock() {
        Ok(g) => g.clone(),
        Err(_) => Vec::new(),
    };
    for pid in pids {
        // SAFETY: kill(2) on pids we spawned.
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGKILL);
        }
    }
    // Anything else inside our namespaces too.
    net::kill_namespace_processes();
}

#[derive(Debug, Clone)]
pub struct DbOptions {
    /// The release `intentd` binary.
    pub binary: PathBuf,
    /// Per-run directory; nodes live under `<dir>/nodes/`.
    pub dir: PathBuf,
    pub admin_key: String,
    /// Start nodes with `--unsafe-skip-log-fsync`.
    pub unsafe_skip_log_fsync: bool,
    /// Run nodes under libfaketime (needed by the clock nemesis).
    pub faketime: bool,
    /// Mount the lossy filesystem over each data directory (needed by power-off nemeses).
    pub lossy_fs: bool,
    pub nodes: usize,
    /// More `intentd serve` flags for every node.
    pub extra_args: Vec<String>,
}

/// One node. Indexes are 1-based and equal to the Raft node id.
pub struct Node {
    pub id: usize,
    child: Option<Child>,
    paused: bool,
    mount: Option<fusefs::Mount>,
    pub starts: u32,
}

pub struct Db {
    pub opts: DbOptions,
    nodes: Vec<Mutex<Node>>,
}

pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

pub fn http_url(i: usize) -> String {
    format!("http://{}:{HTTP_PORT}", net::node_ip(i))
}

pub fn raft_addr(i: usize) -> String {
    format!("{}:{RAFT_PORT}", net::node_ip(i))
}

impl Db {
    pub fn new(opts: DbOptions) -> anyhow::Result<Db> {
        fusefs::cleanup_leftover_mounts();
        let mut nodes = Vec::new();
        for i in 1..=opts.nodes {
            let n = Node {
                id: i,
                child: None,
                paused: false,
                mount: None,
                starts: 0,
            };
            nodes.push(Mutex::new(n));
        }
        let db = Db { opts, nodes };
        for i in 1..=db.opts.nodes {
            fs::create_dir_all(db.node_dir(i))?;
            if db.opts.faketime {
                db.set_clock_offset(i, 0)?;
            }
            if db.opts.lossy_fs {
                let m = fusefs::Mount::start(&db.node_dir(i).join("disk"), &db.data_dir(i))?;
                db.node(i).mount = Some(m);
            }
        }
        Ok(db)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn node(&self, i: usize) -> std::sync::MutexGuard<'_, Node> {
        self.nodes[i - 1].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.opts.dir.join("nodes").join(node_name(i))
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("data")
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("intentd.log")
    }

    fn clock_file(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("faketime")
    }

    fn peers(&self) -> String {
        (1..=self.opts.nodes)
            .map(|j| format!("{j}={}", raft_addr(j)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `i` if it is not running.
    pub fn start(&self, i: usize) -> anyhow::Result<()> {
        let mut n = self.node(i);
        if let Some(c) = n.child.as_mut() {
            if c.try_wait()?.is_none() {
                return Ok(());
            }
            unregister(c.id() as i32);
            n.child = None;
        }
        let ip = net::node_ip(i);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .with_context(|| format!("opening {}", self.log_path(i).display()))?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &net::ns_name(i), "env"]);
        if self.opts.faketime {
            c.arg(format!("LD_PRELOAD={FAKETIME_LIB}"));
            c.arg(format!(
                "FAKETIME_TIMESTAMP_FILE={}",
                self.clock_file(i).display()
            ));
            c.arg("FAKETIME_CACHE_DURATION=1");
            // Skew the wall clock only, as a badly synchronised host would; monotonic time
            // keeps running (tokio timers, Raft elections).
            c.arg("FAKETIME_DONT_FAKE_MONOTONIC=1");
        }
        c.arg(&self.opts.binary).arg("serve");
        c.arg("--data-dir").arg(self.data_dir(i));
        c.arg("--http-addr").arg(format!("{ip}:{HTTP_PORT}"));
        c.arg("--grpc-addr").arg(format!("{ip}:{GRPC_PORT}"));
        c.arg("--raft-addr").arg(format!("{ip}:{RAFT_PORT}"));
        c.arg("--node-id").arg(i.to_string());
        c.arg("--peers").arg(self.peers());
        c.arg("--admin-key").arg(&self.opts.admin_key);
        if self.opts.unsafe_skip_log_fsync {
            c.arg("--unsafe-skip-log-fsync");
        }
        c.args(&self.opts.extra_args);
        c.env(
            "INTENTD_LOG",
            "info,openraft=warn,sled=warn,h2=warn,tower=warn",
        );
        c.env_remove("INTENTD_DATA_DIR");
        c.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: a Ctrl-C on the harness's terminal is not theirs; the
            // harness kills them itself.
            .process_group(0);
        let child = c.spawn().context("spawning intentd")?;
        register(child.id() as i32);
        n.child = Some(child);
        n.paused = false;
        n.starts += 1;
        Ok(())
    }

    /// Whether node `i`'s process is alive (paused counts as alive).
    pub fn is_running(&self, i: usize) -> bool {
        let mut n = self.node(i);
        match n.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, i: usize, sig: i32) -> anyhow::Result<bool> {
        let n = self.node(i);
        let Some(c) = n.child.as_ref() else {
            return Ok(false);
        };
        // SAFETY: kill(2) on our own child, which has not been reaped (we hold it).
        if unsafe { libc::kill(c.id() as i32, sig) } != 0 {
            return Ok(false);
        }
        Ok(true)
    }

    /// SIGKILL and reap. Returns whether a process was killed.
    pub fn kill(&self, i: usize) -> anyhow::Result<bool> {
        let mut n = self.node(i);
        let Some(mut c) = n.child.take() else {
            return Ok(false);
        };
        let pid = c.id() as i32;
        let alive = matches!(c.try_wait(), Ok(None));
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        c.wait().context("reaping a killed node")?;
        unregister(pid);
        n.paused = false;
        Ok(alive)
    }

    /// SIGKILL, then drop every write the node had not fsynced (with the lossy filesystem;
    /// without it this is a plain kill). Returns the number of bytes dropped.
    pub fn power_off(&self, i: usize) -> anyhow::Result<u64> {
        self.kill(i)?;
        let n = self.node(i);
        Ok(n.mount.as_ref().map_or(0, |m| m.power_off()))
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&self, i: usize, grace: Duration) -> anyhow::Result<()> {
        self.resume(i)?;
        if self.signal(i, libc::SIGTERM)? {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && self.is_running(i) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill(i)?;
        Ok(())
    }

    pub fn pause(&self, i: usize) -> anyhow::Result<bool> {
        let ok = self.signal(i, libc::SIGSTOP)?;
        if ok {
            self.node(i).paused = true;
        }
        Ok(ok)
    }

    pub fn resume(&self, i: usize) -> anyhow::Result<bool> {
        let ok = self.signal(i, libc::SIGCONT)?;
        self.node(i).paused = false;
        Ok(ok)
    }

    /// Sets node `i`'s wall-clock offset (libfaketime re-reads the file within a second).
    pub fn set_clock_offset(&self, i: usize, secs: i64) -> anyhow::Result<()> {
        if !self.opts.faketime {
            bail!("nodes were not started under libfaketime");
        }
        let spec = if secs >= 0 {
            format!("+{secs}s\n")
        } else {
            format!("{secs}s\n")
        };
        let tmp = self.clock_file(i).with_extension("tmp");
        fs::write(&tmp, spec)?;
        fs::rename(&tmp, self.clock_file(i))?;
        Ok(())
    }

    /// Bytes written by node `i` and not yet fsynced (lossy filesystem only).
    pub fn unsynced_bytes(&self, i: usize) -> u64 {
        self.node(i)
            .mount
            .as_ref()
            .map_or(0, |m| m.switch.unsynced_bytes())
    }

    pub fn starts(&self, i: usize) -> u32 {
        self.node(i).starts
    }

    /// Kills every node and unmounts the lossy filesystems.
    pub fn teardown(&self) {
        for i in 1..=self.len() {
            let _ = self.kill(i);
        }
        for i in 1..=self.len() {
            let m = self.node(i).mount.take();
            drop(m);
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A small HTTP client for node health and admin calls.
#[derive(Clone)]
pub struct Admin {
    http: reqwest::Client,
    key: String,
}

impl Admin {
    pub fn new(key: &str) -> Admin {
        Admin::with_timeout(key, Duration::from_secs(3))
    }

    /// A client whose every request (connecting included) gives up after `timeout`.
    pub fn with_timeout(key: &str, timeout: Duration) -> Admin {
        Admin {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(1)))
                .no_proxy()
                .build()
                .expect("reqwest client"),
            key: key.to_string(),
        }
    }

    /// `GET /health` of node `i`: the body if it answered at all (200 or 503).
    pub async fn health(&self, i: usize) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/health", http_url(i)))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// The leader as seen by the first node that knows one.
    pub async fn leader(&self, nodes: usize) -> Option<usize> {
        for i in 1..=nodes {
            if let Some(h) = self.health(i).await {
                if let Some(l) = h.get("leader_id").and_then(Value::as_u64) {
                    return Some(l as usize);
                }
            }
        }
        None
    }

    pub async fn cluster_status(&self, i: usize) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}/v1/cluster/status", http_url(i)))
            .header("x-api-key", &self.key)
            .send()
            .await?;
        Ok(r.json().await?)
    }

    /// An admin call; returns (HTTP status, body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        i: usize,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", http_url(i)))
            .header("x-api-key", &self.key)
            .timeout(timeout);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Waits until every node in `which` answers /health 200 and all name the same leader
    /// that is itself among `which`. Bounded by `timeout`.
    pub async fn wait_healthy(&self, which: &[usize], timeout: Duration) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            let mut leaders = Vec::new();
            let mut all_ok = true;
            for &i in which {
                match self.health(i).await {
                    Some(h) if h.get("ok") == Some(&Value::Bool(true)) => {
                        leaders.push(h.get("leader_id").and_then(Value::as_u64));
                    }
                    other => {
                        all_ok = false;
                        last = format!("n{i}: {other:?}");
                    }
                }
            }
            if all_ok {
                if let Some(Some(l)) = leaders.first().copied() {
                    if leaders.iter().all(|x| *x == Some(l)) && which.contains(&(l as usize)) {
                        return Ok(l as usize);
                    }
                }
                last = format!("leaders disagree: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("cluster not healthy after {timeout:?}: {last}")
    }
}

/// Finds the release binary: `$INTENTD_BIN`, else `<workspace>/target/release/intentd`.
pub fn default_binary() -> PathBuf {
    if let Ok(p) = std::env::var("INTENTD_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("release")
        .join("intentd")
}

/// Whether `intentd serve` knows `flag` (flags that other work adds may not exist yet).
pub fn serve_supports(binary: &Path, flag: &str) -> bool {
    Command::new(binary)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}
