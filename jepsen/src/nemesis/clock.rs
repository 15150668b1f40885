//! Clock skew: libfaketime offsets on one or two nodes' wall clocks (monotonic time is left
//! alone). Offsets are seconds to minutes either way, and occasionally a day ahead, which
//! crosses idempotency-key expiry.

use rand::Rng as _;
use serde_json::{json, Value};

use super::{names, Ctx};

pub(super) fn start(c: &Ctx) -> anyhow::Result<(Vec<usize>, Value)> {
    let k = if c.nodes() > 1 && c.rng().gen_bool(0.3) {
        2
    } else {
        1
    };
    let targets = c.rand_subset(k);
    let mut offsets = serde_json::Map::new();
    for &i in &targets {
        let secs: i64 = {
            let mut r = c.rng();
            let magnitude = match r.gen_range(0..10) {
                0 => 86_400 + r.gen_range(0..3_600),
                1..=3 => r.gen_range(60..900),
                _ => r.gen_range(1..60),
            };
            if r.gen_bool(0.5) {
                magnitude
            } else {
                -magnitude
            }
        };
        c.db.set_clock_offset(i, secs)?;
        offsets.insert(format!("n{i}"), json!(secs));
    }
    Ok((targets, json!({ "offsets_s": offsets })))
}

pub(super) fn stop(c: &Ctx, targets: &[usize]) -> anyhow::Result<Value> {
    for &i in targets {
        c.db.set_clock_offset(i, 0)?;
    }
    Ok(json!({ "reset": names(targets) }))
}
