//! Delay with jitter, packet loss, or both, on every node's link: the kernel's netem qdisc
//! where there is one, else the harness's NFQUEUE emulator (the history says which).

use rand::Rng as _;
use serde_json::{json, Value};

use super::{blocking, Ctx};
use crate::linkem::LinkFault;

pub(super) fn start(c: &Ctx) -> anyhow::Result<Value> {
    let (delay, jitter, loss) = {
        let mut r = c.rng();
        match r.gen_range(0..3) {
            0 => (r.gen_range(50..300), r.gen_range(10..100), 0),
            1 => (0, 0, r.gen_range(5..30)),
            _ => (r.gen_range(20..150), r.gen_range(5..50), r.gen_range(2..15)),
        }
    };
    let fault = LinkFault {
        delay_ms: delay,
        jitter_ms: jitter,
        loss_pct: loss,
    };
    let mut via = "";
    for i in c.all() {
        let seed = c.rng().gen();
        via = blocking(|| c.net.impair(i, fault, seed))?;
    }
    Ok(json!({ "via": via, "delay_ms": delay, "jitter_ms": jitter, "loss_pct": loss }))
}

pub(super) fn stop(c: &Ctx) -> Value {
    let mut counts = serde_json::Map::new();
    for i in c.all() {
        if let Some((dropped, delayed)) = blocking(|| c.net.clear_impairment(i)) {
            counts.insert(
                format!("n{i}"),
                json!({ "dropped": dropped, "delayed": delayed }),
            );
        }
    }
    json!({ "netem": "removed", "packets": counts })
}
