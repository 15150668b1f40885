//! Nemeses: faults with a start and a stop, run on a schedule by [`crate::run`]. Every start
//! and stop is recorded in the history as a `nemesis` op (`start-<name>` / `stop-<name>`,
//! kind Info) whose value says what was done to whom.
//!
//! | name | start | stop |
//! | --- | --- | --- |
//! | `kill-one`, `kill-leader`, `kill-minority`, `kill-all` | SIGKILL | restart |
//! | `pause-one`, `pause-leader` | SIGSTOP | SIGCONT |
//! | `partition-one`, `partition-leader`, `partition-halves`, `partition-ring`, `partition-bridge` | iptables DROP in the nodes' namespaces | flush |
//! | `netem` | delay/jitter/loss on every node's link (tc netem, or the NFQUEUE emulator in [`crate::linkem`] where the kernel has no netem) | remove |
//! | `clock` | libfaketime offset on one or two nodes | offset 0 |
//! | `membership` | remove a voter (under load) | add it back as learner, promote |
//! | `fsync-loss` | power off a majority or all nodes: SIGKILL + drop every unsynced write | restart |
//! | `partition-kill` | isolate the leader, then kill a node of the majority side | heal, restart |

mod clock;
mod kill;
mod membership;
mod netem;
mod partition;
mod power;

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::Rng as _;
use serde_json::{json, Value};

use crate::db::{Admin, Db};
use crate::history::History;
use crate::net::Net;

/// Every nemesis name, in the order the full matrix runs them.
pub const ALL: &[&str] = &[
    "kill-one",
    "kill-leader",
    "kill-minority",
    "kill-all",
    "pause-one",
    "pause-leader",
    "partition-one",
    "partition-leader",
    "partition-halves",
    "partition-ring",
    "partition-bridge",
    "netem",
    "clock",
    "membership",
    "fsync-loss",
    "partition-kill",
];

/// What the nodes must be started with for a set of nemeses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub faketime: bool,
    pub lossy_fs: bool,
}

pub fn needs(names: &[String]) -> Needs {
    Needs {
        faketime: names.iter().any(|n| n == "clock"),
        lossy_fs: names.iter().any(|n| n == "fsync-loss"),
    }
}

/// Checks nemesis names.
pub fn validate(names: &[String]) -> anyhow::Result<()> {
    for n in names {
        if !ALL.contains(&n.as_str()) {
            anyhow::bail!("unknown nemesis {n:?}; known: {}", ALL.join(", "));
        }
    }
    Ok(())
}

/// What nemeses act on.
pub struct Ctx {
    pub db: Arc<Db>,
    pub net: Arc<Net>,
    pub admin: Admin,
    pub history: History,
    pub rng: Mutex<StdRng>,
}

impl Ctx {
    pub fn nodes(&self) -> usize {
        self.db.len()
    }

    pub fn all(&self) -> Vec<usize> {
        (1..=self.nodes()).collect()
    }

    pub fn rand_node(&self) -> usize {
        self.rng().gen_range(1..=self.nodes())
    }

    pub fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.rng.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `k` distinct random nodes.
    pub fn rand_subset(&self, k: usize) -> Vec<usize> {
        let mut all = self.all();
        all.shuffle(&mut *self.rng());
        all.truncate(k);
        all.sort_unstable();
        all
    }

    /// The current leader, or a random node when none is known.
    pub async fn leader_or_any(&self) -> (usize, bool) {
        match self.admin.leader(self.nodes()).await {
            Some(l) if l >= 1 && l <= self.nodes() => (l, true),
            _ => (self.rand_node(), false),
        }
    }

    pub fn majority(&self) -> usize {
        self.nodes() / 2 + 1
    }
}

/// Runs blocking work (process control, `ip`, `iptables`) off the async workers' hot path.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The state of one fault between its start and its stop.
#[derive(Debug, Default)]
enum Active {
    #[default]
    Idle,
    Killed(Vec<usize>),
    Paused(Vec<usize>),
    Partitioned,
    Netem,
    Clock(Vec<usize>),
    Removed(usize),
    PartitionKilled(Vec<usize>),
}

/// One nemesis of the schedule.
pub struct Nemesis {
    pub name: String,
    active: Active,
}

impl Nemesis {
    pub fn new(name: &str) -> Nemesis {
        Nemesis {
            name: name.to_string(),
            active: Active::Idle,
        }
    }

    pub fn is_active(&self) -> bool {
        !matches!(self.active, Active::Idle)
    }

    /// Starts the fault and records `start-<name>` with what was done.
    pub async fn start(&mut self, c: &Ctx) -> Value {
        let result = self.do_start(c).await;
        let value = match result {
            Ok(v) => v,
            Err(e) => json!({ "error": format!("{e:#}") }),
        };
        c.history.nemesis_start(&self.name, value.clone());
        tracing::info!(nemesis = %self.name, %value, "nemesis start");
        value
    }

    /// Ends the fault (a no-op when it is not active) and records `stop-<name>`.
    pub async fn stop(&mut self, c: &Ctx) -> Value {
        let active = std::mem::take(&mut self.active);
        let value = match self.do_stop(c, active).await {
            Ok(v) => v,
            Err(e) => json!({ "error": format!("{e:#}") }),
        };
        c.history.nemesis_stop(&self.name, value.clone());
        tracing::info!(nemesis = %self.name, %value, "nemesis stop");
        value
    }

    async fn do_start(&mut self, c: &Ctx) -> anyhow::Result<Value> {
        let name = self.name.clone();
        let (active, value) = match name.as_str() {
            "kill-one" | "kill-leader" | "kill-minority" | "kill-all" => {
                let targets = kill::targets(c, &name).await;
                let v = kill::kill(c, &targets)?;
                (Active::Killed(targets), v)
            }
            "pause-one" | "pause-leader" => {
                let (targets, v) = kill::pause(c, &name).await?;
                (Active::Paused(targets), v)
            }
            "partition-one" | "partition-leader" | "partition-halves" | "partition-ring"
            | "partition-bridge" => {
                let v = partition::start(c, &name).await?;
                (Active::Partitioned, v)
            }
            "netem" => (Active::Netem, netem::start(c)?),
            "clock" => {
                let (targets, v) = clock::start(c)?;
                (Active::Clock(targets), v)
            }
            "membership" => {
                let (node, v) = membership::remove(c).await?;
                (Active::Removed(node), v)
            }
            "fsync-loss" => {
                let (targets, v) = power::power_off(c)?;
                (Active::Killed(targets), v)
            }
            "partition-kill" => {
                let mut v = partition::start(c, "partition-leader").await?;
                // The side that still has a majority loses one more node.
                let isolated = v["isolated"].as_u64().unwrap_or(0) as usize;
                let others: Vec<usize> = c.all().into_iter().filter(|n| *n != isolated).collect();
                let victim = *others
                    .choose(&mut *c.rng())
                    .ok_or_else(|| anyhow::anyhow!("no node to kill"))?;
                v["killed"] = kill::kill(c, &[victim])?["killed"].clone();
                (Active::PartitionKilled(vec![victim]), v)
            }
            other => anyhow::bail!("unknown nemesis {other}"),
        };
        self.active = active;
        Ok(value)
    }

    async fn do_stop(&mut self, c: &Ctx, active: Active) -> anyhow::Result<Value> {
        Ok(match active {
            Active::Idle => json!({ "noop": true }),
            Active::Killed(t) => kill::restart(c, &t)?,
            Active::Paused(t) => kill::resume(c, &t)?,
            Active::Partitioned => partition::heal(c)?,
            Active::Netem => netem::stop(c),
            Active::Clock(t) => clock::stop(c, &t)?,
            Active::Removed(n) => membership::add_back(c, n).await?,
            Active::PartitionKilled(t) => {
                let mut v = partition::heal(c)?;
                v["restarted"] = kill::restart(c, &t)?["restarted"].clone();
                v
            }
        })
    }
}

/// Undoes every fault there is, whatever the nemeses think is active: heals the network,
/// removes netem, resets clocks, resumes paused nodes, starts every node that is down, and
/// restores the full voter set. Recorded as `final-heal` (start and stop).
pub async fn heal_everything(c: &Ctx) -> Value {
    let mut out = json!({});
    out["net"] = match blocking(|| c.net.heal_all()) {
        Ok(()) => json!("healed"),
        Err(e) => json!(format!("{e:#}")),
    };
    if c.db.opts.faketime {
        for i in c.all() {
            let _ = c.db.set_clock_offset(i, 0);
        }
        out["clock"] = json!("reset");
    }
    let mut started = Vec::new();
    for i in c.all() {
        let _ = blocking(|| c.db.resume(i));
        if !c.db.is_running(i) {
            match blocking(|| c.db.start(i)) {
                Ok(()) => started.push(i),
                Err(e) => out[format!("start-n{i}")] = json!(format!("{e:#}")),
            }
        }
    }
    out["started"] = json!(started);
    out["membership"] = membership::restore_all(c).await;
    out
}

/// Helper for values naming nodes.
pub(crate) fn names(nodes: &[usize]) -> Value {
    json!(nodes.iter().map(|i| format!("n{i}")).collect::<Vec<_>>())
}

/// A random duration in `[lo, hi)` seconds.
pub(crate) fn secs_between(c: &Ctx, lo: f64, hi: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(c.rng().gen_range(lo..hi))
}
