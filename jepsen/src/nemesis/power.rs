//! Loss of un-fsynced writes: a majority (or every node) loses power at once. Each target is
//! SIGKILLed and its lossy filesystem drops every byte the node had not fsynced. With the WAL
//! fsync in place nothing acknowledged may be lost; with `--unsafe-skip-log-fsync` it is.

use rand::Rng as _;
use serde_json::{json, Value};

use super::{blocking, names, Ctx};

pub(super) fn power_off(c: &Ctx) -> anyhow::Result<(Vec<usize>, Value)> {
    if !c.db.opts.lossy_fs {
        anyhow::bail!("fsync-loss needs the nodes on the lossy filesystem");
    }
    let everyone = c.rng().gen_bool(0.6);
    let targets = if everyone {
        c.all()
    } else {
        c.rand_subset(c.majority())
    };
    // Every target dies before any buffer is dropped: one power cut, not a sequence.
    for &i in &targets {
        blocking(|| c.db.kill(i))?;
    }
    let mut dropped = serde_json::Map::new();
    for &i in &targets {
        let bytes = blocking(|| c.db.power_off(i))?;
        dropped.insert(format!("n{i}"), json!(bytes));
    }
    Ok((
        targets.clone(),
        json!({ "powered_off": names(&targets), "dropped_unsynced_bytes": dropped }),
    ))
}
