//! Process faults: SIGKILL (one node, the leader, a minority, all at once), SIGTERM (a clean
//! shutdown) and SIGSTOP/SIGCONT.

use std::time::Duration;

use serde_json::{json, Value};

use super::{blocking, names, Ctx};

/// Which nodes a kill nemesis hits.
pub(super) async fn targets(c: &Ctx, name: &str) -> Vec<usize> {
    match name {
        "kill-one" => vec![c.rand_node()],
        "kill-leader" => vec![c.leader_or_any().await.0],
        "kill-minority" => c.rand_subset((c.nodes() - 1) / 2),
        _ => c.all(),
    }
}

/// SIGKILLs every target (all before any restart: "at once").
pub(super) fn kill(c: &Ctx, targets: &[usize]) -> anyhow::Result<Value> {
    let mut killed = Vec::new();
    for &i in targets {
        if blocking(|| c.db.kill(i))? {
            killed.push(i);
        }
    }
    Ok(json!({ "targets": names(targets), "killed": names(&killed) }))
}

/// How long a SIGTERMed node may take to shut down before it is SIGKILLed.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// SIGTERMs every target and waits for it to exit (SIGKILL after [`TERM_GRACE`]).
pub(super) fn terminate(c: &Ctx, targets: &[usize]) -> anyhow::Result<Value> {
    for &i in targets {
        blocking(|| c.db.stop(i, TERM_GRACE))?;
    }
    Ok(json!({ "terminated": names(targets) }))
}

pub(super) fn restart(c: &Ctx, targets: &[usize]) -> anyhow::Result<Value> {
    for &i in targets {
        blocking(|| c.db.start(i))?;
    }
    Ok(json!({ "restarted": names(targets) }))
}

pub(super) async fn pause(c: &Ctx, name: &str) -> anyhow::Result<(Vec<usize>, Value)> {
    let target = if name == "pause-leader" {
        c.leader_or_any().await.0
    } else {
        c.rand_node()
    };
    let ok = blocking(|| c.db.pause(target))?;
    Ok((
        vec![target],
        json!({ "paused": names(&[target]), "signalled": ok }),
    ))
}

pub(super) fn resume(c: &Ctx, targets: &[usize]) -> anyhow::Result<Value> {
    for &i in targets {
        blocking(|| c.db.resume(i))?;
    }
    Ok(json!({ "resumed": names(targets) }))
}
