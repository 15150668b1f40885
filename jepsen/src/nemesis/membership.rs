//! Membership changes under load: a voter is removed through the admin API, later added back
//! as a learner (which catches up) and promoted. The final heal restores every missing voter.

use std::time::Duration;

use rand::seq::SliceRandom as _;
use reqwest::Method;
use serde_json::{json, Value};

use super::Ctx;
use crate::db::raft_addr;

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A node other than `not` that answers, to send admin calls to.
async fn via(c: &Ctx, not: usize) -> usize {
    for i in c.all() {
        if i != not && c.admin.health(i).await.is_some() {
            return i;
        }
    }
    c.all().into_iter().find(|i| *i != not).unwrap_or(1)
}

pub(super) async fn remove(c: &Ctx) -> anyhow::Result<(usize, Value)> {
    let victim = *c.all().choose(&mut *c.rng()).expect("nodes");
    let through = via(c, victim).await;
    let (status, body) = c
        .admin
        .call(
            Method::DELETE,
            through,
            &format!("/v1/cluster/members/{victim}"),
            None,
            CALL_TIMEOUT,
        )
        .await?;
    Ok((
        victim,
        json!({ "removed": format!("n{victim}"), "via": format!("n{through}"),
                "status": status, "membership": body.get("membership") }),
    ))
}

/// Adds node `n` back as a learner and promotes it. Bounded retries.
pub(super) async fn add_back(c: &Ctx, n: usize) -> anyhow::Result<Value> {
    let mut log = Vec::new();
    for attempt in 0..3 {
        let through = via(c, n).await;
        let learner = c
            .admin
            .call(
                Method::POST,
                through,
                "/v1/cluster/learners",
                Some(json!({ "node_id": n, "raft_addr": raft_addr(n) })),
                CALL_TIMEOUT,
            )
            .await;
        let learner_status = match &learner {
            Ok((s, _)) => json!(s),
            Err(e) => json!(format!("{e:#}")),
        };
        let promote = c
            .admin
            .call(
                Method::POST,
                through,
                &format!("/v1/cluster/members/{n}/promote"),
                Some(json!({})),
                CALL_TIMEOUT,
            )
            .await;
        let promote_status = match &promote {
            Ok((s, _)) => json!(s),
            Err(e) => json!(format!("{e:#}")),
        };
        log.push(json!({ "attempt": attempt, "via": format!("n{through}"),
                          "learner": learner_status, "promote": promote_status }));
        if voters(c).await.is_some_and(|v| v.contains(&(n as u64))) {
            return Ok(json!({ "added": format!("n{n}"), "steps": log }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(json!({ "added": false, "node": format!("n{n}"), "steps": log }))
}

/// The voter set as some node sees it.
async fn voters(c: &Ctx) -> Option<Vec<u64>> {
    for i in c.all() {
        if let Ok(s) = c.admin.cluster_status(i).await {
            if let Some(v) = s.pointer("/membership/voters").and_then(Value::as_array) {
                return Some(v.iter().filter_map(Value::as_u64).collect());
            }
        }
    }
    None
}

/// Makes every node a voter again (used by the final heal).
pub(super) async fn restore_all(c: &Ctx) -> Value {
    // A leader must exist before membership can change.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.admin.leader(c.nodes()).await.is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some(v) = voters(c).await else {
        return json!("membership unknown");
    };
    let missing: Vec<usize> = c
        .all()
        .into_iter()
        .filter(|i| !v.contains(&(*i as u64)))
        .collect();
    let mut out = Vec::new();
    for n in missing {
        out.push(match add_back(c, n).await {
            Ok(v) => v,
            Err(e) => json!(format!("{e:#}")),
        });
    }
    json!({ "voters_before": v, "restored": out })
}
