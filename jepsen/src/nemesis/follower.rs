//! `follower-restart`: throughout its window, round after round, a node that is not the leader
//! loses touch with it and comes back: SIGKILLed, SIGTERMed (a clean shutdown) or, every
//! third round, cut off alone by a partition. It stays away for a moment, is restarted (or
//! healed) and the next round waits until every node is healthy behind one leader again.
//!
//! The leader and a majority are never touched, so the leader must stay: a node that lost
//! touch with it must ask the others before it campaigns (pre-vote) rather than raise its
//! term and depose it. The checker holds a run of only this nemesis to that (see
//! [`crate::checker::leadership`]). Each round is recorded as a `follower-down` and a
//! `follower-up` nemesis op, so that a leader change can be traced to the round before it.

use std::time::Duration;

use rand::seq::SliceRandom as _;
use serde_json::{json, Value};

use super::{kill, partition, secs_between, Ctx, FOLLOWER_DOWN, FOLLOWER_UP};
use crate::history::{OpKind, NEMESIS_PROCESS};

/// Pause before the next round when a round could not start (no leader known).
pub(super) const RETRY_AFTER: Duration = Duration::from_millis(500);

/// How long a round waits for a leader to pick the victim around.
const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a round waits for the whole cluster to be healthy again after the victim is back.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

/// Seconds a stopped follower stays down, and a partitioned one alone: long enough for a
/// node without pre-vote to time out and campaign (election timeout 250-500 ms, plus the
/// leader lease after it heard a leader).
const DOWN_S: (f64, f64) = (0.3, 3.0);
const ISOLATED_S: (f64, f64) = (1.0, 4.0);

/// How a round takes its victim away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Kill,
    Term,
    Isolate,
}

impl How {
    fn of_round(n: usize) -> How {
        match n % 3 {
            0 => How::Kill,
            1 => How::Term,
            _ => How::Isolate,
        }
    }

    fn name(self) -> &'static str {
        match self {
            How::Kill => "sigkill",
            How::Term => "sigterm",
            How::Isolate => "isolate",
        }
    }
}

/// The leader and its term, as the leader itself says: a node counts only when its own
/// `/health` says it leads, and the highest term wins should two say so (one of them stale).
async fn leader(c: &Ctx) -> Option<(usize, u64)> {
    let views = futures::future::join_all(
        c.all()
            .into_iter()
            .map(|i| async move { (i, c.admin.health(i).await) }),
    )
    .await;
    views
        .into_iter()
        .filter_map(|(i, h)| {
            let h = h?;
            if h.get("role").and_then(Value::as_str) != Some("leader") {
                return None;
            }
            Some((i, h.get("term")?.as_u64()?))
        })
        .max_by_key(|(_, term)| *term)
}

async fn wait_for_leader(c: &Ctx) -> anyhow::Result<(usize, u64)> {
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
    loop {
        if let Some(found) = leader(c).await {
            return Ok(found);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("no node said it leads for {LEADER_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn outcome(r: anyhow::Result<Value>) -> Value {
    r.unwrap_or_else(|e| json!({ "error": format!("{e:#}") }))
}

/// One round (number `n`). Fails only when no leader could be found, before anything was done
/// to any node; once a node was taken away it is always brought back.
pub(super) async fn round(c: &Ctx, n: usize) -> anyhow::Result<Value> {
    let (leader, term) = wait_for_leader(c).await?;
    let followers: Vec<usize> = c.all().into_iter().filter(|i| *i != leader).collect();
    let victim = *followers
        .choose(&mut *c.rng())
        .ok_or_else(|| anyhow::anyhow!("no node but the leader"))?;
    let node = format!("n{victim}");
    let how = How::of_round(n);
    let away = match how {
        How::Kill | How::Term => secs_between(c, DOWN_S.0, DOWN_S.1),
        How::Isolate => secs_between(c, ISOLATED_S.0, ISOLATED_S.1),
    };
    let mut round = json!({
        "round": n,
        "node": node,
        "how": how.name(),
        "leader": format!("n{leader}"),
        "term": term,
        "away_s": away.as_secs_f64(),
    });
    // Recorded before the act: a clean shutdown takes seconds, and what the node does
    // meanwhile belongs to this round.
    c.history.record(
        NEMESIS_PROCESS,
        OpKind::Info,
        FOLLOWER_DOWN,
        round.clone(),
        Some(&node),
    );
    round["done"] = outcome(match how {
        How::Kill => kill::kill(c, &[victim]),
        How::Term => kill::terminate(c, &[victim]),
        How::Isolate => partition::isolate(c, victim),
    });
    tokio::time::sleep(away).await;
    let back = match how {
        How::Kill | How::Term => kill::restart(c, &[victim]),
        How::Isolate => partition::heal(c),
    };
    let back_at = tokio::time::Instant::now();
    let healthy = c.admin.wait_healthy(&c.all(), HEALTHY_TIMEOUT).await;
    round["back"] = outcome(back);
    round["healthy_after_s"] = json!(back_at.elapsed().as_secs_f64());
    round["leader_after"] = match healthy {
        Ok(l) => json!(format!("n{l}")),
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    c.history.record(
        NEMESIS_PROCESS,
        OpKind::Info,
        FOLLOWER_UP,
        round.clone(),
        Some(&node),
    );
    Ok(round)
}

/// What the stop of the nemesis records: how many rounds of each kind, and the failures.
pub(super) fn report(rounds: &[Value]) -> Value {
    let count = |how: How| {
        rounds
            .iter()
            .filter(|r| r.get("how").and_then(Value::as_str) == Some(how.name()))
            .count()
    };
    let failed: Vec<&Value> = rounds
        .iter()
        .filter(|r| {
            r.get("error").is_some()
                || r["done"].get("error").is_some()
                || r["back"].get("error").is_some()
                || r["leader_after"].get("error").is_some()
        })
        .collect();
    let slowest = rounds
        .iter()
        .filter_map(|r| r.get("healthy_after_s").and_then(Value::as_f64))
        .fold(0.0, f64::max);
    json!({
        "rounds": rounds.len(),
        "sigkill": count(How::Kill),
        "sigterm": count(How::Term),
        "isolate": count(How::Isolate),
        "slowest_healthy_after_s": slowest,
        "failed": failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_kill_and_term_and_isolate_every_third() {
        let ways: Vec<How> = (0..6).map(How::of_round).collect();
        assert_eq!(
            ways,
            [
                How::Kill,
                How::Term,
                How::Isolate,
                How::Kill,
                How::Term,
                How::Isolate
            ]
        );
    }

    #[test]
    fn the_report_counts_rounds_and_keeps_failures() {
        let rounds = [
            json!({ "how": "sigkill", "done": {}, "back": {}, "leader_after": "n1",
                    "healthy_after_s": 0.5 }),
            json!({ "how": "sigterm", "done": {}, "back": {},
                    "leader_after": { "error": "not healthy" }, "healthy_after_s": 30.0 }),
            json!({ "round": 2, "error": "no node said it leads" }),
        ];
        let r = report(&rounds);
        assert_eq!(r["rounds"], 3);
        assert_eq!(
            (r["sigkill"].clone(), r["sigterm"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(r["failed"].as_array().map(Vec::len), Some(2));
        assert_eq!(r["slowest_healthy_after_s"], 30.0);
    }
}
