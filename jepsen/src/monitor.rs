//! The leadership monitor: from the end of setup to the end of the final heal, every node's
//! `GET /health` is polled every [`INTERVAL`], and each change of that node's (term, leader)
//! is recorded as a `leadership` observation `{term, leader_id, role}` on that node. What
//! counts as a leader change is the checker's business ([`crate::checker::leadership`]).
//!
//! Each node has its own poller, so a node that does not answer (down, paused) delays nobody
//! else's samples, and a poll gives up after [`POLL_TIMEOUT`].

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::db::{self, Admin};
use crate::history::{History, LEADERSHIP_F};

/// How often each node is polled: well under the election timeout (250-500 ms), so that an
/// election shows up even when it is over quickly.
pub const INTERVAL: Duration = Duration::from_millis(50);

const POLL_TIMEOUT: Duration = Duration::from_millis(300);

/// Process name of the monitor's observations.
pub const MONITOR_PROCESS: &str = "leadership-monitor";

/// The running pollers.
pub struct Monitor {
    stop: watch::Sender<bool>,
    pollers: Vec<JoinHandle<u64>>,
}

impl Monitor {
    /// Starts polling `nodes` (1-based ids); `key` is the admin key (`/health` needs none, the
    /// client wants one).
    pub fn start(nodes: &[usize], key: &str, history: &History) -> Monitor {
        let (stop, stopped) = watch::channel(false);
        let admin = Admin::with_timeout(key, POLL_TIMEOUT);
        let pollers = nodes
            .iter()
            .map(|&i| tokio::spawn(poll(i, admin.clone(), history.clone(), stopped.clone())))
            .collect();
        Monitor { stop, pollers }
    }

    /// Stops polling and waits for the pollers, so that nothing is recorded after it returns.
    /// Returns the number of polls that were answered.
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        let mut answered = 0;
        for p in self.pollers {
            answered += p.await.unwrap_or(0);
        }
        answered
    }
}

async fn poll(i: usize, admin: Admin, history: History, mut stopped: watch::Receiver<bool>) -> u64 {
    let node = db::node_name(i);
    let mut last: Option<(u64, Option<u64>)> = None;
    let mut answered = 0;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => return answered,
        }
        let Some(h) = admin.health(i).await else {
            continue;
        };
        let Some(term) = h.get("term").and_then(Value::as_u64) else {
            continue;
        };
        answered += 1;
        let leader = h.get("leader_id").and_then(Value::as_u64);
        if last != Some((term, leader)) {
            last = Some((term, leader));
            history.ok(
                MONITOR_PROCESS,
                LEADERSHIP_F,
                json!({ "term": term, "leader_id": leader, "role": h.get("role") }),
                Some(&node),
            );
        }
    }
}
