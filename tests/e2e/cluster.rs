//! Three (and four) real `intentd` processes on loopback: reads and writes through any node,
//! leader failover under load, catch-up through snapshots, a wiped node rejoining, membership
//! changes under load, and fast 503s without a quorum.
//!
//! Correct-client accounting: a create counts as acknowledged only on a 200 with an
//! `intent_id`; 503s and transport errors are retried with the same `Idempotency-Key` and body
//! (a 503 `unavailable` may have committed), so every acknowledged key is exactly one intent.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::cluster::{
    assert_acks_readable, assert_acks_replay, assert_distinct_ids, member_ids, targets, Ack,
    Cluster, ClusterOptions, CreateLoad,
};
use crate::support::{assert_gapless, intent_body, within, Api, PAYMENTS};

/// Issue 3: after the leader dies, writes are back within this.
const FAILOVER_GOAL: Duration = Duration::from_secs(2);
/// With `--request-timeout-ms 2000`, the longest a write may take to fail without a quorum.
const NO_QUORUM_BOUND: Duration = Duration::from_secs(4);

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Runs `intentd cluster ARGS` against node `url`, bounded in time.
async fn cluster_cli(url: &str, key: &str, args: &[&str]) -> (bool, String, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_intentd"))
        .arg("cluster")
        .args(args)
        .env("INTENTD_SERVER", url)
        .env("INTENTD_API_KEY", key)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .unwrap_or_else(|_| panic!("`intentd cluster {}` did not finish", args.join(" ")))
        .expect("run intentd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates through `api` with `key`, retrying 503s (same key, same body) until a 200 or
/// `limit`; returns the intent id and how long it took.
async fn create_until_ok(
    api: &Api,
    body: &Value,
    key: &str,
    limit: Duration,
) -> (String, Duration) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        let sent = api
            .builder(reqwest::Method::POST, "/v1/intents")
            .header("Idempotency-Key", key)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().as_u16() == 200 => {
                let v: Value = r.json().await.expect("create reply is JSON");
                let id = v["intent_id"].as_str().expect("intent_id").to_string();
                return (id, start.elapsed());
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                assert_eq!(status, 503, "create {key} answered {status}: {text}");
                last = format!("{status} {text}");
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("create {key} not acknowledged within {limit:?}; last answer: {last}");
}

/// One create through `api` that must fail fast: a 503 `unavailable` with `Retry-After`,
/// answered within [`NO_QUORUM_BOUND`]. Returns how long it took.
async fn assert_write_unavailable(api: &Api, body: &Value, key: &str, context: &str) -> Duration {
    let start = Instant::now();
    let resp = tokio::time::timeout(
        NO_QUORUM_BOUND + Duration::from_secs(6),
        api.create(body, Some(key)),
    )
    .await
    .unwrap_or_else(|_| panic!("{context}: create hung for over 10 s without a quorum"));
    let took = start.elapsed();
    resp.assert_error(503, "unavailable");
    let retry_after = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("{context}: 503 without Retry-After: {:?}", resp.headers));
    let secs: u64 = retry_after
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{context}: Retry-After {retry_after:?} is not seconds"));
    assert!(secs >= 1, "{context}: Retry-After {secs}");
    assert!(
        took < NO_QUORUM_BOUND,
        "{context}: the 503 took {took:?} (request timeout 2 s, bound {NO_QUORUM_BOUND:?})"
    );
    took
}

/// Test 1: creates through each node, reads (GET, events) and a lifecycle change through the
/// others; status and membership seen the same by every node, and by the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_serve_any_call_through_any_node() {
    within(Duration::from_secs(150), async {
        let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let ids = [1u64, 2, 3];

        for &writer in &ids {
            let body = intent_body(PAYMENTS);
            let key = format!("through-node-{writer}");
            let resp = cluster.api(writer).create(&body, Some(&key)).await;
            resp.assert_ok(200);
            let id = resp.body["intent_id"]
                .as_str()
                .expect("intent_id")
                .to_string();
            for &reader in ids.iter().filter(|&&r| r != writer) {
                let api = cluster.api(reader);
                // GET is linearizable on every node: no waiting for replication.
                let intent = api.intent(&id).await;
                assert_eq!(intent["payload"], body["payload"], "via node {reader}");
                assert_eq!(intent["correlation_id"], body["correlation_id"]);
                assert_eq!(intent["status"], json!("SUBMITTED"), "via node {reader}");
                let events = api.events(&id).await;
                let types = assert_gapless(&id, &events);
                assert_eq!(
                    types,
                    ["intent.created", "intent.submitted"],
                    "via {reader}"
                );
                // The idempotency record is replicated state: a retry through another node
                // replays the same intent.
                let again = api.create(&body, Some(&key)).await;
                again.assert_ok(200);
                assert_eq!(
                    again.body["intent_id"],
                    json!(id),
                    "replay via node {reader}"
                );
            }

            // A lifecycle change through the next node is visible at once through the third.
            let changer = ids[(writer as usize) % 3];
            let observer = ids[(writer as usize + 1) % 3];
            cluster
                .api(changer)
                .post(
                    &format!("/v1/intents/{id}/resolve"),
                    &json!({"status": "COMPLETED", "result": {"via": changer}}),
                )
                .await
                .assert_ok(200);
            let intent = cluster.api(observer).intent(&id).await;
            assert_eq!(
                intent["status"],
                json!("COMPLETED"),
                "resolved via node {changer}, GET via node {observer} is stale: {intent}"
            );
            let events = cluster.api(observer).events(&id).await;
            let types = assert_gapless(&id, &events);
            assert_eq!(
                types.last().map(String::as_str),
                Some("intent.completed"),
                "{types:?}"
            );
        }

        // Every node describes the same cluster.
        for &id in &ids {
            let status = cluster.status(id).await;
            assert_eq!(status["node"]["node_id"], json!(id), "{status}");
            assert_eq!(status["node"]["leader_id"], json!(leader), "{status}");
            let role = if id == leader { "leader" } else { "follower" };
            assert_eq!(status["node"]["role"], json!(role), "{status}");
            assert_eq!(member_ids(&status, "voters"), ids, "{status}");
            assert_eq!(
                member_ids(&status, "learners"),
                Vec::<u64>::new(),
                "{status}"
            );
            for &n in &ids {
                assert_eq!(
                    status["membership"]["nodes"][n.to_string()],
                    json!(cluster.node(n).raft_addr.to_string()),
                    "{status}"
                );
            }
        }

        // The CLI reads the same through a follower.
        let follower = ids
            .iter()
            .copied()
            .find(|&i| i != leader)
            .expect("a follower");
        let (ok, out, err) = cluster_cli(
            &cluster.node(follower).base_url(),
            &cluster.admin_key,
            &["status"],
        )
        .await;
        assert!(ok, "intentd cluster status failed: {err}");
        for &n in &ids {
            let addr = cluster.node(n).raft_addr.to_string();
            assert!(out.contains(&addr), "cluster status lacks {addr}: {out}");
        }
    })
    .await
}

/// Test 2: the leader is SIGKILLed in the middle of a create load. Every acknowledged create
/// is readable through the survivors, writes come back quickly (measured and printed), and the
/// killed node rejoins and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_sigkill_under_load_loses_no_acknowledged_create() {
    within(Duration::from_secs(200), async {
        let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
        let old_leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let urls = [1u64, 2, 3]
            .iter()
            .map(|&i| cluster.node(i).base_url())
            .collect();
        let load = CreateLoad::start(targets(urls), &cluster.admin_key, 6, "failover");
        load.wait_acked(150, Duration::from_secs(60), "before the kill")
            .await;

        let acked_before = load.acked();
        cluster.node_mut(old_leader).kill();
        let killed_at = Instant::now();
        cluster.note(&format!("SIGKILLed leader node {old_leader}"));
        load.wait_acked(
            acked_before + 150,
            Duration::from_secs(60),
            "after the kill",
        )
        .await;
        let report = load.stop().await;
        report.assert_clean();
        let survivors: Vec<u64> = cluster.running();
        let new_leader = cluster
            .wait_leader_among(&survivors, Duration::from_secs(30))
            .await;
        assert_ne!(new_leader, old_leader);

        let window = report
            .first_ack_sent_after(killed_at)
            .expect("a create sent after the kill was acknowledged");
        let gap = report.longest_gap_after(killed_at);
        let retried: Vec<&Ack> = report.acks.iter().filter(|a| a.attempts > 1).collect();
        eprintln!(
            "FAILOVER leader node {old_leader} SIGKILLed under a 6-client create load: writes \
             unavailable for {} ms (kill -> first ack of a create sent after the kill); longest \
             stretch without any ack after the kill {} ms; new leader node {new_leader}; \
             {} acked ({} needed retries); attempts {:?}",
            ms(window),
            ms(gap),
            report.acks.len(),
            retried.len(),
            report.outcomes
        );

        assert_distinct_ids(&report.acks);
        for &s in &survivors {
            assert_acks_readable(&cluster.api(s), &report.acks, &format!("survivor {s}")).await;
        }

        // The killed node rejoins and converges.
        cluster.note(&format!("restarting node {old_leader}"));
        cluster.node_mut(old_leader).spawn();
        cluster
            .node_mut(old_leader)
            .wait_healthy(Duration::from_secs(60))
            .await;
        cluster
            .wait_caught_up(&[old_leader], new_leader, Duration::from_secs(60))
            .await;
        let health = cluster.node(old_leader).health().await.expect("health");
        assert_eq!(health.1["leader_id"], json!(new_leader), "{health:?}");
        assert_eq!(health.1["role"], json!("follower"), "{health:?}");
        let rejoined = cluster.api(old_leader);
        assert_acks_readable(&rejoined, &report.acks, "the restarted node").await;
        // Retrying every acknowledged create through it replays, never duplicates.
        assert_acks_replay(&rejoined, &report.acks, "the restarted node").await;

        assert!(
            window <= FAILOVER_GOAL,
            "writes were unavailable for {window:?} after the leader died (goal {FAILOVER_GOAL:?})"
        );
    })
    .await
}

/// The snapshot ids a node's log since its last start says it loaded (`state machine loaded
/// from snapshot`), as last log indexes.
fn loaded_snapshot_indexes(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("state machine loaded from snapshot"))
        .filter_map(|l| {
            let at = l.find("snapshot=")? + "snapshot=".len();
            let id = l[at..].split_whitespace().next()?;
            id.trim_matches('"').split('-').nth(1)?.parse().ok()
        })
        .collect()
}

fn snapshot_options() -> ClusterOptions {
    ClusterOptions {
        snapshot_after_logs: Some(50),
        snapshot_logs_to_keep: Some(10),
        ..ClusterOptions::default()
    }
}

/// Runs a create load through `via` until `n` creates are acknowledged; returns the acks.
async fn load_until(cluster: &Cluster, via: &[u64], n: usize, tag: &str) -> Vec<Ack> {
    let urls = via.iter().map(|&i| cluster.node(i).base_url()).collect();
    let load = CreateLoad::start(targets(urls), &cluster.admin_key, 6, tag);
    load.wait_acked(n, Duration::from_secs(90), tag).await;
    let report = load.stop().await;
    report.assert_clean();
    assert_distinct_ids(&report.acks);
    report.acks
}

/// Test 3a: a follower is stopped, the cluster takes many more writes than the snapshot
/// threshold and purges its log, the follower restarts and catches up through a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_follower_catches_up_through_a_snapshot() {
    within(Duration::from_secs(200), async {
        let mut cluster = Cluster::start(3, snapshot_options()).await;
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let lagging = [1u64, 2, 3]
            .into_iter()
            .find(|&i| i != leader)
            .expect("follower");
        let other = [1u64, 2, 3]
            .into_iter()
            .find(|&i| i != leader && i != lagging)
            .expect("follower");

        let mut acks = load_until(&cluster, &[leader, other, lagging], 60, "before-stop").await;
        let stopped_status = cluster.status(lagging).await;
        let status = cluster.node_mut(lagging).stop().await;
        assert!(status.success(), "SIGTERM exit {status:?}");
        cluster.note(&format!("stopped node {lagging}"));
        let stopped_at = stopped_status["node"]["last_log_index"]
            .as_u64()
            .expect("last_log_index");

        acks.extend(load_until(&cluster, &[leader, other], 400, "while-stopped").await);

        // The leader must have purged past what the stopped node has: the next snapshot after
        // index stopped_at + 10 + 1 (10 kept behind a snapshot) makes a snapshot unavoidable.
        let needed = stopped_at + 10 + 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let newest = cluster.node(leader).snapshot_files().last().map(|s| s.0);
            if newest.is_some_and(|i| i >= needed) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "leader {leader} has no snapshot at or after index {needed} (newest {newest:?}) \
                 after 400 writes with --snapshot-after-logs 50\n{}",
                cluster.node(leader).log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        cluster.note(&format!("restarting node {lagging}"));
        cluster.node_mut(lagging).spawn();
        cluster
            .node_mut(lagging)
            .wait_healthy(Duration::from_secs(60))
            .await;
        let target = cluster.node(leader).applied_index().await.expect("leader");
        cluster
            .wait_applied(&[lagging], target, Duration::from_secs(60))
            .await;

        let log = cluster.node(lagging).log_since_last_start();
        let loaded = loaded_snapshot_indexes(&log);
        assert!(
            loaded.iter().any(|&i| i > stopped_at),
            "node {lagging} (stopped at log index {stopped_at}) caught up to {target} without \
             installing a newer snapshot; loaded {loaded:?}; leader snapshots {:?}\n{}",
            cluster.node(leader).snapshot_files(),
            cluster.node(lagging).log_tail(60)
        );
        let snaps = cluster.node(lagging).snapshot_files();
        assert!(
            snaps.iter().any(|s| s.0 > stopped_at),
            "node {lagging} has no snapshot file past {stopped_at}: {snaps:?}"
        );
        eprintln!(
            "SNAPSHOT CATCH-UP node {lagging} stopped at index {stopped_at}, caught up to \
             {target}, installed snapshot(s) at {loaded:?}"
        );

        assert_acks_readable(&cluster.api(lagging), &acks, "the caught-up node").await;
    })
    .await
}

/// Writes that arrive together are coalesced: each node's proposer sends whatever queued while
/// its last proposals were out as one Raft entry (or one forward to the leader), and the state
/// machine answers every command of an entry on its own. So under concurrency through all
/// three nodes each caller must get exactly its own answer: its own intent, and its own
/// idempotency verdict when its twin with the same key and a changed body raced it (one of the
/// two is created, the other is a 409, whichever the log ordered first).
#[tokio::test]
async fn concurrent_writes_through_every_node_each_get_their_own_answer() {
    within(Duration::from_secs(150), async {
        let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
        cluster.wait_leader(Duration::from_secs(30)).await;
        const WRITERS: usize = 120;
        let body = |n: usize| {
            let mut b = intent_body(PAYMENTS);
            b["payload"] = json!({ "n": n });
            b
        };
        let sends = (0..WRITERS).map(|n| {
            let api = cluster.api(1 + (n % 3) as u64);
            let twin = cluster.api(1 + ((n + 1) % 3) as u64);
            async move {
                let key = format!("coalesced-{n}");
                let (mine, changed) = (body(n), body(n + 1000));
                if n % 4 == 0 {
                    let (a, b) = tokio::join!(
                        api.create(&mine, Some(&key)),
                        twin.create(&changed, Some(&key))
                    );
                    (n, a, Some(b))
                } else {
                    (n, api.create(&mine, Some(&key)).await, None)
                }
            }
        });
        let answers = futures::future::join_all(sends).await;
        let mut ids = std::collections::BTreeSet::new();
        let reader = cluster.api(1);
        for (n, first, twin) in answers {
            let (created, want) = match twin {
                None => (first, n),
                Some(second) => match (first.status, second.status) {
                    (200, 409) => (first, n),
                    (409, 200) => (second, n + 1000),
                    other => panic!("twins of key {n} answered {other:?}"),
                },
            };
            let id = created.assert_ok(200)["intent_id"]
                .as_str()
                .expect("intent_id")
                .to_string();
            assert!(ids.insert(id.clone()), "intent {id} answered twice");
            let intent = reader.intent(&id).await;
            assert_eq!(
                intent["payload"],
                json!({ "n": want }),
                "the answer of writer {n}"
            );
        }
        assert_eq!(ids.len(), WRITERS);
    })
    .await;
}

/// Test 3b: a follower loses its whole data directory and comes back with `--join` under the
/// same id and address: it is still in the membership, so the leader brings it back through a
/// snapshot. Then it must be a working voter: with the other follower down, the leader and it
/// form the quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_follower_rejoins_and_catches_up() {
    within(Duration::from_secs(200), async {
        let mut cluster = Cluster::start(3, snapshot_options()).await;
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let wiped = [1u64, 2, 3]
            .into_iter()
            .find(|&i| i != leader)
            .expect("follower");
        let other = [1u64, 2, 3]
            .into_iter()
            .find(|&i| i != leader && i != wiped)
            .expect("follower");

        let mut acks = load_until(&cluster, &[leader, other, wiped], 200, "before-wipe").await;
        cluster.node_mut(wiped).kill();
        cluster.node_mut(wiped).wipe_data();
        cluster.note(&format!("killed node {wiped} and wiped its data"));
        acks.extend(load_until(&cluster, &[leader, other], 100, "while-wiped").await);

        cluster.note(&format!("restarting node {wiped} with --join"));
        cluster.node_mut(wiped).join = true;
        cluster.node_mut(wiped).spawn();
        cluster
            .node_mut(wiped)
            .wait_healthy(Duration::from_secs(60))
            .await;
        let target = cluster.node(leader).applied_index().await.expect("leader");
        cluster
            .wait_applied(&[wiped], target, Duration::from_secs(60))
            .await;
        assert_acks_readable(&cluster.api(wiped), &acks, "the wiped node").await;
        let status = cluster.status(wiped).await;
        assert_eq!(member_ids(&status, "voters"), [1, 2, 3], "{status}");

        // It votes and stores again: the other follower goes down, writes still commit.
        cluster.node_mut(other).kill();
        cluster.note(&format!("killed node {other}"));
        let more = load_until(&cluster, &[leader, wiped], 50, "other-down").await;
        assert_acks_readable(&cluster.api(wiped), &more, "the wiped node").await;
        acks.extend(more);

        cluster.note(&format!("restarting node {other}"));
        cluster.node_mut(other).spawn();
        cluster
            .node_mut(other)
            .wait_healthy(Duration::from_secs(60))
            .await;
        let target = cluster.node(leader).applied_index().await.expect("leader");
        cluster
            .wait_applied(&[other], target, Duration::from_secs(60))
            .await;
        assert_acks_readable(&cluster.api(other), &acks, "the restarted follower").await;
    })
    .await
}

/// Test 4: under a continuous create load, a fourth node starts with `--join`, is added as a
/// learner, promoted, and the leader is removed. No acknowledged create is lost and the final
/// membership is what was asked for, on every remaining node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_under_load_lose_nothing() {
    within(Duration::from_secs(200), async {
        let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
        cluster.wait_leader(Duration::from_secs(30)).await;
        let urls: Vec<String> = [1u64, 2, 3]
            .iter()
            .map(|&i| cluster.node(i).base_url())
            .collect();
        let tgt = targets(urls);
        let load = CreateLoad::start(tgt.clone(), &cluster.admin_key, 4, "membership");
        load.wait_acked(50, Duration::from_secs(60), "before adding")
            .await;

        let new = cluster.spawn_joining_node().await;
        cluster.note(&format!("started node {new} with --join"));
        assert_eq!(new, 4);
        let raft_addr = cluster.node(new).raft_addr.to_string();
        // Through a follower, so the call is forwarded to the leader.
        let leader = cluster
            .wait_leader_among(&[1, 2, 3], Duration::from_secs(30))
            .await;
        let via = [1u64, 2, 3]
            .into_iter()
            .find(|&i| i != leader)
            .expect("follower");
        let resp = cluster
            .api(via)
            .post(
                "/v1/cluster/learners",
                &json!({"node_id": new, "raft_addr": raft_addr}),
            )
            .await;
        let body = resp.assert_ok(200);
        assert_eq!(member_ids(body, "learners"), [4], "{body}");
        assert_eq!(member_ids(body, "voters"), [1, 2, 3], "{body}");
        // The learner has caught up (the call waits for its log) and knows the leader; wait
        // until it has also applied what the leader had, or its first requests would wait
        // for that inside the request timeout.
        cluster
            .node_mut(new)
            .wait_healthy(Duration::from_secs(30))
            .await;
        cluster
            .wait_caught_up(&[new], leader, Duration::from_secs(60))
            .await;
        tgt.write()
            .expect("targets")
            .push(cluster.node(new).base_url());
        let n = load.acked();
        load.wait_acked(n + 50, Duration::from_secs(60), "with a learner")
            .await;

        let resp = cluster
            .api(new)
            .post(&format!("/v1/cluster/members/{new}/promote"), &json!({}))
            .await;
        let body = resp.assert_ok(200);
        assert_eq!(member_ids(body, "voters"), [1, 2, 3, 4], "{body}");
        assert_eq!(member_ids(body, "learners"), Vec::<u64>::new(), "{body}");
        let n = load.acked();
        load.wait_acked(n + 50, Duration::from_secs(60), "with four voters")
            .await;

        // Remove the current leader, through the new node.
        let leader = cluster
            .wait_leader_among(&[1, 2, 3, 4], Duration::from_secs(30))
            .await;
        let resp = cluster
            .api(new)
            .delete(&format!("/v1/cluster/members/{leader}"))
            .await;
        let body = resp.assert_ok(200);
        let remaining: Vec<u64> = [1u64, 2, 3, 4]
            .into_iter()
            .filter(|&i| i != leader)
            .collect();
        assert_eq!(member_ids(body, "voters"), remaining, "{body}");
        let removed_at = Instant::now();
        cluster.note(&format!("removed leader node {leader} from the membership"));
        // Clients stop using the removed node once it is out; it keeps running meanwhile.
        let removed_url = cluster.node(leader).base_url();
        tgt.write().expect("targets").retain(|u| *u != removed_url);
        let n = load.acked();
        load.wait_acked(
            n + 100,
            Duration::from_secs(60),
            "after removing the leader",
        )
        .await;
        let report = load.stop().await;
        report.assert_clean();
        assert_distinct_ids(&report.acks);
        eprintln!(
            "MEMBERSHIP removed leader node {leader}: longest stretch without an ack after the \
             removal {} ms; {} acked; attempts {:?}",
            ms(report.longest_gap_after(removed_at)),
            report.acks.len(),
            report.outcomes
        );

        let new_leader = cluster
            .wait_leader_among(&remaining, Duration::from_secs(30))
            .await;
        assert_ne!(new_leader, leader);
        for &id in &remaining {
            let status = cluster.status(id).await;
            assert_eq!(
                member_ids(&status, "voters"),
                remaining,
                "via node {id}: {status}"
            );
            assert_eq!(
                member_ids(&status, "learners"),
                Vec::<u64>::new(),
                "{status}"
            );
            let nodes: Vec<u64> = status["membership"]["nodes"]
                .as_object()
                .expect("membership.nodes")
                .keys()
                .map(|k| k.parse().expect("node id"))
                .collect();
            assert_eq!(nodes, remaining, "membership.nodes via node {id}: {status}");
            assert_acks_readable(&cluster.api(id), &report.acks, &format!("node {id}")).await;
        }

        // The removed node can go; the three remaining take writes.
        let status = cluster.node_mut(leader).stop().await;
        assert!(status.success(), "removed node exit {status:?}");
        let more = load_until(&cluster, &remaining, 20, "after-stop").await;
        assert_acks_readable(&cluster.api(remaining[0]), &more, "a remaining node").await;
    })
    .await
}

/// Test 5: with two of three nodes down, a write on the survivor answers 503 `unavailable`
/// with `Retry-After` within about the request timeout (never hangs), both when the survivor
/// is the leader that lost its followers and when it is a follower that lost its leader; once
/// one node is back, the same create (same key) succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_quorum_writes_fail_fast_and_recover() {
    within(Duration::from_secs(200), async {
        let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let followers: Vec<u64> = [1u64, 2, 3].into_iter().filter(|&i| i != leader).collect();
        let (f1, f2) = (followers[0], followers[1]);
        let existing = cluster.api(leader).create_ok(&intent_body(PAYMENTS)).await;

        // A: the leader loses both followers.
        cluster.node_mut(f1).kill();
        cluster.node_mut(f2).kill();
        cluster.note(&format!("killed followers {f1} and {f2}"));
        let api = cluster.api(leader);
        let body_a = intent_body(PAYMENTS);
        let mut took = Vec::new();
        for _ in 0..3 {
            took.push(assert_write_unavailable(&api, &body_a, "no-quorum-a", "leader alone").await);
        }
        // Reads that must be current cannot be served either, and must not hang.
        let start = Instant::now();
        let read = api.get(&format!("/v1/intents/{existing}")).await;
        assert!(
            start.elapsed() < NO_QUORUM_BOUND,
            "linearizable GET without quorum took {:?}",
            start.elapsed()
        );
        read.assert_error(503, "unavailable");

        cluster.note(&format!("restarting node {f1}"));
        cluster.node_mut(f1).spawn();
        let back = Instant::now();
        let (id_a, _) =
            create_until_ok(&api, &body_a, "no-quorum-a", Duration::from_secs(60)).await;
        let recovered_a = back.elapsed();

        // B: the leader dies too; the follower f1 is alone with no leader.
        cluster.node_mut(leader).kill();
        cluster.note(&format!("killed node {leader}; node {f1} is alone"));
        let api = cluster.api(f1);
        let body_b = intent_body(PAYMENTS);
        for _ in 0..3 {
            took.push(
                assert_write_unavailable(&api, &body_b, "no-quorum-b", "follower alone").await,
            );
        }
        cluster.note(&format!("restarting node {f2}"));
        cluster.node_mut(f2).spawn();
        let back = Instant::now();
        let (id_b, _) =
            create_until_ok(&api, &body_b, "no-quorum-b", Duration::from_secs(60)).await;
        let recovered_b = back.elapsed();
        eprintln!(
            "NO QUORUM 503s answered in {:?} ms (request timeout 2000 ms); writes back {} ms \
             after restarting a follower (leader alone before), {} ms after restarting a node \
             (follower alone before), process start included",
            took.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            ms(recovered_a),
            ms(recovered_b)
        );

        // Everything comes back together; the ambiguous creates each made exactly one intent.
        cluster.note(&format!("restarting node {leader}"));
        cluster.node_mut(leader).spawn();
        let now_leader = cluster.wait_leader(Duration::from_secs(60)).await;
        let target = cluster
            .node(now_leader)
            .applied_index()
            .await
            .expect("leader");
        cluster
            .wait_applied(&[1, 2, 3], target, Duration::from_secs(60))
            .await;
        for id in [1u64, 2, 3] {
            let api = cluster.api(id);
            for (body, key, intent_id) in [
                (&body_a, "no-quorum-a", &id_a),
                (&body_b, "no-quorum-b", &id_b),
            ] {
                let again = api.create(body, Some(key)).await;
                again.assert_ok(200);
                assert_eq!(again.body["intent_id"], json!(intent_id), "via node {id}");
                assert_eq!(api.intent(intent_id).await["payload"], body["payload"]);
            }
            api.intent(&existing).await;
        }
    })
    .await
}
