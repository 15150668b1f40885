//! tc netem on every node's link: delay with jitter, packet loss, or both.

use rand::Rng as _;
use serde_json::{json, Value};

use super::{blocking, Ctx};

pub(super) fn start(c: &Ctx) -> anyhow::Result<Value> {
    let (delay, jitter, loss) = {
        let mut r = c.rng();
        match r.gen_range(0..3) {
            0 => (r.gen_range(50..300), r.gen_range(10..100), 0),
            1 => (0, 0, r.gen_range(5..30)),
            _ => (r.gen_range(20..150), r.gen_range(5..50), r.gen_range(2..15)),
        }
    };
    let mut spec = String::new();
    if delay > 0 {
        spec.push_str(&format!("delay {delay}ms {jitter}ms distribution normal "));
    }
    if loss > 0 {
        spec.push_str(&format!("loss {loss}%"));
    }
    for i in c.all() {
        blocking(|| c.net.netem(i, spec.trim()))?;
    }
    Ok(json!({ "netem": spec.trim(), "delay_ms": delay, "jitter_ms": jitter, "loss_pct": loss }))
}

pub(super) fn stop(c: &Ctx) -> Value {
    for i in c.all() {
        blocking(|| c.net.clear_netem(i));
    }
    json!({ "netem": "removed" })
}
