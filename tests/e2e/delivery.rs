//! Issue 4, the delivery engine, on a three-node cluster (docs/delivery-design.md).
//!
//! The engine runs only on the leader and keeps no schedule of its own: every timer is a due
//! entry in the replicated state. So when the leader is SIGKILLed with intents in every
//! waiting state (a stream lease running, an HTTP retry pending, a deadline ahead, a reminder
//! ahead), the new leader must find all of them in the due index and act on each at its time.
//! Plus: `GET /metrics` on every node answers Prometheus text with the delivery counters and
//! the Raft gauges.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::cluster::{Cluster, ClusterOptions};
use crate::support::receiver::{describe, new_secret, Mode, Receiver};
use crate::support::{address_path, intent_body, within, Api, SseStream};

/// The stream lease, reminder and deadline are set this far ahead, so that setting up all
/// four states comfortably fits before the kill and every timer falls due after it.
const LEASE_SECS: u64 = 10;
const REMIND_SECS: u64 = 10;
const DEADLINE_SECS: i64 = 15;
/// What the failing HTTP receiver asks for in `Retry-After`.
const RETRY_AFTER_SECS: u64 = 5;
/// After the kill, each timer must have fired within this.
const AFTER_KILL: Duration = Duration::from_secs(60);
/// A timer may fire this much after its due time (an election and a debug build included).
const LATE_BOUND_SECS: i64 = 10;

fn delivery_options() -> ClusterOptions {
    ClusterOptions {
        extra_args: [
            "--delivery-allow-hosts",
            "127.0.0.1",
            "--delivery-base-backoff-ms",
            "200",
            // Above RETRY_AFTER_SECS: the engine holds a receiver's Retry-After to this cap.
            "--delivery-max-backoff-ms",
            "8000",
            "--delivery-timeout-ms",
            "3000",
            "--max-delivery-attempts",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..ClusterOptions::default()
    }
}

fn at(v: &Value) -> DateTime<Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Polls `check` every 100 ms until it returns `Some`, panicking after `limit` with `what`
/// and the node logs the caller passes in `logs`.
async fn poll_until<T, F, Fut>(
    limit: Duration,
    what: &str,
    logs: impl Fn() -> String,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bind(api: &Api, address: &str, binding: Value) -> Value {
    let resp = api
        .put(
            &format!("/v1/agents/{}/binding", address_path(address)),
            &binding,
        )
        .await;
    resp.assert_ok(200).clone()
}

/// Reads the agent stream of `address` after `since` until `intent_id` is offered; returns
/// the delivery object. The stream is read on until the server ends it: a client that
/// closes its stream mid-lease gives the lease back at once, and these consumers keep theirs.
async fn next_delivery_of(
    api: &Api,
    address: &str,
    since: u64,
    intent_id: &str,
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    let mut since = since;
    loop {
        let path = format!(
            "/v1/agents/{}/intents/stream?since={since}&wait_seconds=1",
            address_path(address)
        );
        let mut stream = SseStream::open_ok(api, &path, &[]).await;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{intent_id} not offered on {address} within {limit:?}"
            );
            let Some(frame) = stream.next(left).await else {
                break;
            };
            if frame.event() == "stream.timeout" {
                continue;
            }
            let d = frame.json();
            if let Some(seq) = d["seq"].as_u64() {
                since = since.max(seq);
            }
            if d["intent_id"] == json!(intent_id) {
                stream.rest(Duration::from_secs(30)).await;
                return d;
            }
        }
    }
}

/// All node logs, for failure messages.
fn all_logs(cluster: &Cluster, lines: usize) -> String {
    cluster
        .nodes
        .values()
        .map(|n| n.log_tail(lines))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The leader is SIGKILLed with one intent leased to a stream consumer that went away, one
/// waiting for an HTTP retry, one waiting for its deadline and one waiting for a reminder.
/// The new leader must redeliver the first after its lease, push the second once the
/// receiver is back, time the third out and send the fourth's reminder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_leader_rebuilds_the_delivery_schedule_after_sigkill() {
    within(Duration::from_secs(240), async {
        let mut cluster = Cluster::start(3, delivery_options()).await;
        let old_leader = cluster.wait_leader(Duration::from_secs(30)).await;
        // Everything goes through a follower that survives the kill.
        let via = [1u64, 2, 3]
            .into_iter()
            .find(|&i| i != old_leader)
            .expect("a follower");
        let api = cluster.api(via);

        // 1. Leased: a stream consumer takes the delivery and goes away.
        let stream_agent = "agent://acme/prod/failover-stream";
        bind(
            &api,
            stream_agent,
            json!({"delivery_mode": "stream", "ack_timeout_seconds": LEASE_SECS}),
        )
        .await;
        let leased = api.create_ok(&intent_body(stream_agent)).await;
        let first = next_delivery_of(&api, stream_agent, 0, &leased, Duration::from_secs(30)).await;
        let leased_at = Instant::now();
        assert_eq!(first["delivery_attempt"], json!(1), "{first}");
        assert_eq!(first["status"], json!("DELIVERED"), "{first}");
        let cursor = first["seq"].as_u64().expect("seq");

        // 2. Awaiting an HTTP retry: the receiver is down and asks for a later retry.
        let secret = new_secret();
        let rx = Receiver::start(
            &secret,
            Mode::Fail {
                status: 503,
                retry_after: Some(RETRY_AFTER_SECS),
            },
        )
        .await;
        let http_agent = "agent://acme/prod/failover-http";
        bind(
            &api,
            http_agent,
            json!({"delivery_mode": "http", "url": rx.url(), "secret": secret,
                   "ack_timeout_seconds": 3, "max_delivery_attempts": 100}),
        )
        .await;
        let retrying = api.create_ok(&intent_body(http_agent)).await;
        rx.wait("the first push", Duration::from_secs(30), |p| !p.is_empty())
            .await;
        // ... and the failure is committed (an event after the delivery records it).
        poll_until(
            Duration::from_secs(30),
            "the failed push to be recorded",
            || all_logs(&cluster, 40),
            || async {
                let t = types(&api.events(&retrying).await);
                let delivered = t.iter().position(|x| x == "intent.delivered")?;
                (t.len() > delivered + 1).then_some(())
            },
        )
        .await;

        // 3. Awaiting its deadline.
        let deadline_at = Utc::now() + chrono::Duration::seconds(DEADLINE_SECS);
        let mut body = intent_body("agent://acme/prod/failover-nobody");
        body["deadline_at"] =
            json!(deadline_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let expiring = api.create_ok(&body).await;

        // 4. Waiting for a reminder.
        let mut body = intent_body("agent://acme/prod/failover-human");
        body["human_task"] =
            json!({"title": "Approve", "allowed_outcomes": ["approved", "rejected"]});
        body["remind_after_seconds"] = json!(REMIND_SECS);
        body["remind_interval_seconds"] = json!(REMIND_SECS);
        body["max_reminders"] = json!(3);
        let waiting = api.create_ok(&body).await;
        let waiting_created = at(&api.intent(&waiting).await["created_at"]);

        // Before the kill, nothing has fired yet: otherwise the test would not test failover.
        let leased_now = api.intent(&leased).await;
        assert_eq!(leased_now["status"], json!("DELIVERED"), "{leased_now}");
        assert_eq!(leased_now["delivery_attempt"], json!(1), "{leased_now}");
        let retrying_now = api.intent(&retrying).await;
        assert_eq!(retrying_now["status"], json!("DELIVERED"), "{retrying_now}");
        assert_eq!(api.intent(&expiring).await["status"], json!("SUBMITTED"));
        let waiting_now = api.intent(&waiting).await;
        assert_eq!(waiting_now["status"], json!("WAITING"), "{waiting_now}");
        assert!(
            !types(&api.events(&waiting).await).contains(&"intent.reminder_sent".to_string()),
            "reminder before the kill"
        );
        let setup = leased_at.elapsed();
        assert!(
            setup < Duration::from_secs(LEASE_SECS - 2)
                && Utc::now() < deadline_at - chrono::Duration::seconds(2),
            "setup took {setup:?}: the timers would fire before the kill (machine too slow?)"
        );

        cluster.node_mut(old_leader).kill();
        let killed_at = Instant::now();
        let killed_utc = Utc::now();
        cluster.note(&format!(
            "SIGKILLed leader node {old_leader}; leased={leased} retrying={retrying} \
             expiring={expiring} waiting={waiting}"
        ));
        rx.set_mode(Mode::Succeed {
            body: Some(json!({"status": "COMPLETED", "result": {"pushed": "after failover"}})),
        });
        let survivors = cluster.running();
        let new_leader = cluster
            .wait_leader_among(&survivors, Duration::from_secs(30))
            .await;
        assert_ne!(new_leader, old_leader);
        cluster.note(&format!("new leader node {new_leader}"));
        let logs = || all_logs(&cluster, 80);

        // 1. The lease runs out on the new leader; the next consumer gets attempt 2.
        let second = next_delivery_of(&api, stream_agent, cursor, &leased, AFTER_KILL).await;
        assert_eq!(second["delivery_attempt"], json!(2), "{second}");
        assert_eq!(second["status"], json!("DELIVERED"), "{second}");
        api.post(
            &format!("/v1/intents/{leased}/resume"),
            &json!({"handled_by": "second consumer"}),
        )
        .await
        .assert_ok(200);
        let events = api.events(&leased).await;
        let t = types(&events);
        let expired = events
            .iter()
            .find(|e| e["event_type"] == json!("intent.lease_expired"))
            .unwrap_or_else(|| panic!("no intent.lease_expired: {t:?}\n{}", logs()));
        let delivered = events
            .iter()
            .find(|e| e["event_type"] == json!("intent.delivered"))
            .expect("delivered event");
        assert!(
            at(&expired["at"])
                >= at(&delivered["at"]) + chrono::Duration::seconds(LEASE_SECS as i64),
            "lease expired early: {events:#?}"
        );
        assert!(
            at(&expired["at"]) >= killed_utc,
            "expired before the kill: {events:#?}"
        );
        assert!(
            at(&expired["at"])
                <= at(&delivered["at"])
                    + chrono::Duration::seconds(LEASE_SECS as i64 + LATE_BOUND_SECS),
            "lease expired late (schedule not rebuilt promptly): {events:#?}"
        );
        assert_eq!(api.intent(&leased).await["status"], json!("COMPLETED"));

        // 2. The retry reaches the recovered receiver, signed, from the new leader.
        let done = poll_until(
            AFTER_KILL,
            "the HTTP retry to complete the intent",
            logs,
            || async {
                let i = api.intent(&retrying).await;
                (i["status"] == json!("COMPLETED")).then_some(i)
            },
        )
        .await;
        rx.assert_all_verified();
        let pushes = rx.pushes_for(&retrying);
        for p in &pushes {
            p.assert_well_formed();
        }
        let last = pushes.last().expect("pushes");
        assert_eq!(last.answered, 200, "{}", describe(&pushes));
        assert!(last.at > killed_at, "{}", describe(&pushes));
        let attempt = done["delivery_attempt"].as_u64().expect("attempt");
        assert!(attempt >= 2, "{done}");
        assert_eq!(
            last.webhook_id.as_deref(),
            Some(format!("{retrying}:{attempt}").as_str()),
            "{}",
            describe(&pushes)
        );
        assert_eq!(last.json["intent_id"], json!(retrying), "{}", last.body);
        assert_eq!(
            last.json["delivery_attempt"],
            json!(attempt),
            "{}",
            last.body
        );
        assert!(
            pushes.len() as u64 <= attempt,
            "more pushes than attempts: {}",
            describe(&pushes)
        );
        assert_eq!(
            done["result"],
            json!({"pushed": "after failover"}),
            "{done}"
        );

        // 3. TIMED_OUT at the deadline, not before.
        let timed_out = poll_until(AFTER_KILL, "TIMED_OUT at the deadline", logs, || async {
            let events = api.events(&expiring).await;
            events
                .iter()
                .find(|e| e["event_type"] == json!("intent.timed_out"))
                .cloned()
        })
        .await;
        assert!(
            at(&timed_out["at"]) >= deadline_at - chrono::Duration::milliseconds(1),
            "{timed_out}"
        );
        assert!(
            at(&timed_out["at"]) <= deadline_at + chrono::Duration::seconds(LATE_BOUND_SECS),
            "timed out late: {timed_out}"
        );
        assert_eq!(api.intent(&expiring).await["status"], json!("TIMED_OUT"));

        // 4. The reminder is sent, on time, by the new leader.
        let reminder = poll_until(AFTER_KILL, "intent.reminder_sent", logs, || async {
            api.events(&waiting)
                .await
                .into_iter()
                .find(|e| e["event_type"] == json!("intent.reminder_sent"))
        })
        .await;
        assert!(
            at(&reminder["at"]) >= waiting_created + chrono::Duration::seconds(REMIND_SECS as i64),
            "reminder early: {reminder}"
        );
        assert!(
            at(&reminder["at"])
                <= waiting_created
                    + chrono::Duration::seconds(REMIND_SECS as i64 + LATE_BOUND_SECS),
            "reminder late: {reminder}"
        );
        assert_eq!(reminder["status"], json!("WAITING"), "{reminder}");
        assert_eq!(api.intent(&waiting).await["status"], json!("WAITING"));

        let since_kill = |e: &Value| (at(&e["at"]) - killed_utc).num_milliseconds();
        eprintln!(
            "DELIVERY FAILOVER leader {old_leader} SIGKILLed {setup:?} after the lease began; \
             new leader {new_leader}; after the kill (ms): lease expired {}, HTTP retry \
             delivered {} (attempt {attempt}, {} pushes), timed out {}, reminder sent {}",
            since_kill(expired),
            last.at.duration_since(killed_at).as_millis(),
            pushes.len(),
            since_kill(&timed_out),
            since_kill(&reminder),
        );
    })
    .await
}

/// One Prometheus text sample: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format strictly enough to catch malformed output:
/// comments are `# HELP name text` / `# TYPE name kind`, every other line is
/// `name{label="value",...} number`.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(t) = rest.strip_prefix("TYPE ") {
                let kind = t.split_whitespace().nth(1).unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad TYPE line {line:?}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample without value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("value {v:?} is not a number in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    let mut val = String::new();
                    let mut chars = after.char_indices();
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, n)) = chars.next() {
                                    val.push(if n == 'n' { '\n' } else { n });
                                }
                            }
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            c => val.push(c),
                        }
                    }
                    let end = end.unwrap_or_else(|| panic!("unterminated label in {line:?}"));
                    labels.insert(k.trim_start_matches(',').to_string(), val);
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn sum_of(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
        .collect();
    (!matching.is_empty()).then(|| matching.iter().map(|s| s.value).sum())
}

async fn scrape(api: &Api) -> (String, Vec<Sample>) {
    let anonymous = Api::new(&api.url(""), None);
    let resp = anonymous.get("/metrics").await;
    assert_eq!(
        resp.status, 200,
        "GET /metrics without a key: {}",
        resp.text
    );
    let ctype = resp.header("content-type").unwrap_or("").to_string();
    assert!(ctype.starts_with("text/plain"), "content-type {ctype:?}");
    let samples = parse_prometheus(&resp.text);
    (resp.text, samples)
}

/// `GET /metrics` on every node of a three-node cluster: Prometheus text, no key needed, the
/// Raft gauges agree with `/health`, and the leader's delivery counters count what happened
/// (a stream delivery, a lease expiry, an HTTP dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_on_every_node_show_delivery_counters_and_raft_gauges() {
    within(Duration::from_secs(180), async {
        let mut cluster = Cluster::start(3, delivery_options()).await;
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let api = cluster.api(leader);
        let logs = || all_logs(&cluster, 60);

        // A stream delivery whose 1 s lease runs out.
        let agent = "agent://acme/prod/metrics-stream";
        bind(
            &api,
            agent,
            json!({"delivery_mode": "stream", "ack_timeout_seconds": 1}),
        )
        .await;
        let leased = api.create_ok(&intent_body(agent)).await;
        next_delivery_of(&api, agent, 0, &leased, Duration::from_secs(30)).await;
        poll_until(
            Duration::from_secs(30),
            "the lease to expire",
            logs,
            || async {
                types(&api.events(&leased).await)
                    .contains(&"intent.lease_expired".to_string())
                    .then_some(())
            },
        )
        .await;

        // An HTTP push that dead-letters after 2 attempts (the create's max_delivery_attempts).
        let secret = new_secret();
        let rx = Receiver::start(
            &secret,
            Mode::Fail {
                status: 500,
                retry_after: None,
            },
        )
        .await;
        let http_agent = "agent://acme/prod/metrics-http";
        bind(
            &api,
            http_agent,
            json!({"delivery_mode": "http", "url": rx.url(), "secret": secret}),
        )
        .await;
        let mut body = intent_body(http_agent);
        body["max_delivery_attempts"] = json!(2);
        let failing = api.create_ok(&body).await;
        poll_until(Duration::from_secs(60), "the dead letter", logs, || async {
            let i = api.intent(&failing).await;
            (i["status"] == json!("FAILED")).then_some(())
        })
        .await;
        rx.assert_all_verified();
        assert_eq!(
            rx.pushes_for(&failing).len(),
            2,
            "{}",
            describe(&rx.pushes())
        );
        for p in rx.pushes() {
            p.assert_well_formed();
        }

        let target = cluster
            .node(leader)
            .applied_index()
            .await
            .expect("leader health");
        cluster
            .wait_applied(&[1, 2, 3], target, Duration::from_secs(30))
            .await;
        for id in [1u64, 2, 3] {
            let (text, samples) = scrape(&cluster.api(id)).await;
            let health = cluster.node(id).health().await.expect("health").1;
            let ctx = format!("node {id} /metrics:\n{text}\n/health: {health}");

            // HTTP requests by route and status.
            assert!(
                sum_of(&samples, "intentd_http_requests_total", None).is_some(),
                "{ctx}"
            );
            // Raft gauges agree with /health.
            let gauge = |name: &str| {
                sum_of(&samples, name, None).unwrap_or_else(|| panic!("no {name}: {ctx}"))
            };
            assert_eq!(
                gauge("intentd_raft_term"),
                health["term"].as_f64().expect("term"),
                "{ctx}"
            );
            assert_eq!(gauge("intentd_raft_leader_id"), leader as f64, "{ctx}");
            assert!(
                gauge("intentd_raft_applied_index") >= target as f64,
                "{ctx}"
            );
            assert!(
                gauge("intentd_raft_last_log_index") >= gauge("intentd_raft_applied_index"),
                "{ctx}"
            );
            // Delivery series exist on every node (zero on followers, whose engine is idle).
            for name in [
                "intentd_deliveries_total",
                "intentd_lease_expiries_total",
                "intentd_dead_letters_total",
                "intentd_retry_queue_depth",
            ] {
                assert!(
                    samples.iter().any(|s| s.name == name)
                        || text.contains(&format!("# TYPE {name} ")),
                    "no {name}: {ctx}"
                );
            }
            let leads = if id == leader { 1.0 } else { 0.0 };
            assert_eq!(gauge("intentd_raft_is_leader"), leads, "{ctx}");
            assert_eq!(gauge("intentd_engine_active"), leads, "{ctx}");
            if id == leader {
                assert!(gauge("intentd_lease_expiries_total") >= 1.0, "{ctx}");
                assert!(gauge("intentd_dead_letters_total") >= 1.0, "{ctx}");
                assert!(
                    sum_of(
                        &samples,
                        "intentd_deliveries_total",
                        Some(("binding", "stream"))
                    )
                    .unwrap_or(0.0)
                        >= 1.0,
                    "{ctx}"
                );
                assert!(
                    sum_of(
                        &samples,
                        "intentd_deliveries_total",
                        Some(("binding", "http"))
                    )
                    .unwrap_or(0.0)
                        >= 2.0,
                    "{ctx}"
                );
            }
        }
    })
    .await
}
