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
//! | `follower-restart` | until its stop, round after round: a node that is not the leader is SIGKILLed, SIGTERMed or isolated alone for a moment, brought back, and the cluster is waited on (see [`follower`]) | report the rounds |

mod clock;
mod follower;
mod kill;
mod membership;
mod netem;
mod partition;
mod power;

use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    "follower-restart",
];

/// The nemeses that never act on the leader, so that the leader must not change while they
/// run: the checker fails such a run on any leader change. `follower-restart` chooses its
/// victim among the nodes that are not the leader and keeps a majority with the leader. No
/// other nemesis qualifies: the random ones (`kill-one`, `pause-one`, `partition-one`, ...)
/// may pick the leader, `netem` and `clock` act on it too, and `membership` may remove it.
pub const LEADER_PRESERVING: &[&str] = &["follower-restart"];

/// The nemesis op `follower-restart` records when it takes a follower away, and when the
/// follower is back and the cluster healthy again (or the round gave up waiting).
pub const FOLLOWER_DOWN: &str = "follower-down";
pub const FOLLOWER_UP: &str = "follower-up";

/// Whether nemesis `name` never acts on the leader (see [`LEADER_PRESERVING`]).
pub fn preserves_leader(name: &str) -> bool {
    LEADER_PRESERVING.contains(&name)
}

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
    /// The rounds of this fault window so far (see [`Nemesis::hold`]).
    FollowerRestarts(Vec<Value>),
}

/// One nemesis of the schedule.
pub struct Nemesis {
    pub name: String,
    active: Active,
    /// Rounds done over the whole run (`follower-restart`): they rotate through the ways of
    /// taking a follower away across fault windows, not afresh in each.
    rounds: usize,
}

impl Nemesis {
    pub fn new(name: &str) -> Nemesis {
        Nemesis {
            name: name.to_string(),
            active: Active::Idle,
            rounds: 0,
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

    /// Keeps the fault on for `d`. Most faults only wait; `follower-restart` acts throughout,
    /// one round after another, and may overrun `d` by the end of its last round (a restart
    /// and the wait for a healthy cluster, both bounded).
    pub async fn hold(&mut self, c: &Ctx, d: Duration) {
        let Active::FollowerRestarts(rounds) = &mut self.active else {
            tokio::time::sleep(d).await;
            return;
        };
        let end = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < end {
            let n = self.rounds;
            match follower::round(c, n).await {
                Ok(v) => {
                    rounds.push(v);
                    self.rounds += 1;
                }
                Err(e) => {
                    rounds.push(json!({ "round": n, "error": format!("{e:#}") }));
                    // Nothing was done to any node; try again a little later.
                    tokio::time::sleep_until(
                        end.min(tokio::time::Instant::now() + follower::RETRY_AFTER),
                    )
                    .await;
                }
            }
        }
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
            "follower-restart" => (
                Active::FollowerRestarts(Vec::new()),
                json!({ "rounds": "until stop" }),
            ),
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
            Active::FollowerRestarts(rounds) => follower::report(&rounds),
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
pub(crate) fn secs_between(c: &Ctx, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(c.rng().gen_range(lo..hi))
}
