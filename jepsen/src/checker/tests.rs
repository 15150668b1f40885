//! The checker on small hand-made histories: one per anomaly, a clean one,
//! indeterminate creates, and the leader changes seen by the monitor.

use serde_json::{json, Value};

use super::leadership::{leader_changes, started_nemeses, Epoch};
use super::{check, CheckReport, CheckerConfig};
use crate::history::{Op, OpKind};

const ID: &str = "00000000-0000-4000-8000-000000000001";
const ID2: &str = "00000000-0000-4000-8000-000000000002";
const WF: &str = "00000000-0000-4000-8000-000000000003";
const AGENT: &str = "jepsen/t/a1";
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Builds a history with increasing index and time (1 ms apart).
#[derive(Default)]
struct H {
    ops: Vec<Op>,
}

impl H {
    fn push(
        &mut self,
        process: &str,
        kind: OpKind,
        f: &str,
        value: Value,
        node: Option<&str>,
    ) -> &mut Self {
        let i = self.ops.len() as u64;
        self.ops.push(Op {
            index: i,
            process: process.into(),
            kind,
            f: f.into(),
            value,
            time_ns: (i + 1) * 1_000_000,
            node: node.map(str::to_string),
        });
        self
    }
    fn invoke(&mut self, p: &str, f: &str, v: Value) -> &mut Self {
        self.push(p, OpKind::Invoke, f, v, Some("n1"))
    }
    fn ok(&mut self, p: &str, f: &str, v: Value) -> &mut Self {
        self.push(p, OpKind::Ok, f, v, Some("n1"))
    }
    fn info(&mut self, p: &str, f: &str, v: Value) -> &mut Self {
        self.push(p, OpKind::Info, f, v, Some("n1"))
    }
    fn fail(&mut self, p: &str, f: &str, v: Value) -> &mut Self {
        self.push(p, OpKind::Fail, f, v, Some("n1"))
    }
    fn binding(&mut self) -> &mut Self {
        self.ok(
            "setup",
            "agent-binding",
            json!({"agent": AGENT, "mode": "stream"}),
        )
    }
    fn create_ok(&mut self, p: &str, key: &str, id: &str) -> &mut Self {
        self.invoke(
            p,
            "create",
            json!({"key": key, "agent": AGENT, "payload": payload(key)}),
        )
        .ok(
            p,
            "create",
            json!({"key": key, "intent_id": id, "status": "SUBMITTED"}),
        )
    }
    /// A scenario apply whose workflow runs `work`, then `note` (its only edges).
    fn workflow_ok(&mut self, p: &str, key: &str, id: &str) -> &mut Self {
        let graph = json!({"first": "work", "edges": {
            "work": {"on_success": "note", "on_failure": "note"},
            "note": {"on_success": null, "on_failure": null},
        }});
        self.invoke(
            p,
            "create",
            json!({"key": key, "agent": AGENT, "payload": payload(key), "workflow": graph}),
        )
        .ok(
            p,
            "create",
            json!({"key": key, "intent_id": id, "workflow": true}),
        )
    }
    fn read(&mut self, p: &str, id: &str, status: &str, attempt: u64) -> &mut Self {
        self.invoke(p, "read", json!({"intent_id": id})).ok(
            p,
            "read",
            json!({"intent_id": id, "found": true, "status": status, "delivery_attempt": attempt}),
        )
    }
    fn deliver(
        &mut self,
        id: &str,
        key: &str,
        attempt: u64,
        cursor: u64,
        conn: &str,
        since: u64,
    ) -> &mut Self {
        self.ok(
            "sse-agent-0",
            "agent-delivery",
            json!({"agent": AGENT, "conn": conn, "since": since, "cursor": cursor, "intent_id": id,
                   "delivery_attempt": attempt, "status": "DELIVERED", "key": key}),
        )
    }
    fn stream_events(
        &mut self,
        p: &str,
        id: &str,
        conn: &str,
        since: u64,
        log: &[Value],
    ) -> &mut Self {
        for e in log {
            let mut v = e.clone();
            v["intent_id"] = json!(id);
            v["conn"] = json!(conn);
            v["since"] = json!(since);
            self.ok(p, "event", v);
        }
        self
    }
    fn heal(&mut self) -> &mut Self {
        self.push("nemesis", OpKind::Info, "stop-partition", json!({}), None)
    }
    fn final_reads(
        &mut self,
        id: &str,
        key: &str,
        status: &str,
        attempt: u64,
        log: &[Value],
    ) -> &mut Self {
        for n in NODES {
            self.final_read_on(n, id, key, status, attempt, log);
        }
        self
    }
    fn final_read_on(
        &mut self,
        node: &str,
        id: &str,
        key: &str,
        status: &str,
        attempt: u64,
        log: &[Value],
    ) -> &mut Self {
        let intent = json!({"intent_id": id, "status": status, "to_agent": format!("agent://{AGENT}"),
                            "payload": payload(key), "delivery_attempt": attempt});
        self.push(
            "final",
            OpKind::Ok,
            "final-read",
            json!({"intent_id": id, "found": true, "intent": intent, "events": log}),
            Some(node),
        )
    }
    fn check(&self) -> CheckReport {
        check(&self.ops, &CheckerConfig::default())
    }
}

fn payload(key: &str) -> Value {
    json!({"jepsen_key": key, "n": 1})
}

fn ev(seq: u64, t: &str, status: &str) -> Value {
    json!({"seq": seq, "event_type": t, "status": status, "at": format!("2025-01-01T00:00:{seq:02}Z"), "details": {}})
}

fn delivered_ev(seq: u64, attempt: u64) -> Value {
    json!({"seq": seq, "event_type": "intent.delivered", "status": "DELIVERED",
           "at": format!("2025-01-01T00:00:{seq:02}Z"), "details": {"delivery_attempt": attempt}})
}

/// created, submitted, delivered(1), acknowledged, in_progress, completed.
fn full_log() -> Vec<Value> {
    vec![
        ev(1, "intent.created", "CREATED"),
        ev(2, "intent.submitted", "SUBMITTED"),
        delivered_ev(3, 1),
        ev(4, "intent.acknowledged", "ACKNOWLEDGED"),
        ev(5, "intent.in_progress", "IN_PROGRESS"),
        ev(6, "intent.completed", "COMPLETED"),
    ]
}

fn step_ev(seq: u64, kind: &str, step: &str, attempt: u64, status: &str) -> Value {
    json!({"seq": seq, "event_type": format!("workflow.step_{kind}"), "status": status,
           "at": format!("2025-01-01T00:00:{seq:02}Z"),
           "details": {"step_id": step, "attempt": attempt,
                       "step_kind": if step == "work" { "agent" } else { "notification" }}})
}

/// A workflow intent: its agent step delivered and retried once, then failed into `note`.
fn workflow_log() -> Vec<Value> {
    vec![
        ev(1, "intent.created", "CREATED"),
        ev(2, "intent.submitted", "SUBMITTED"),
        step_ev(3, "started", "work", 1, "SUBMITTED"),
        delivered_ev(4, 1),
        step_ev(5, "retried", "work", 1, "DELIVERED"),
        ev(6, "intent.in_progress", "IN_PROGRESS"),
        step_ev(7, "started", "work", 2, "IN_PROGRESS"),
        step_ev(8, "failed", "work", 2, "IN_PROGRESS"),
        step_ev(9, "started", "note", 1, "IN_PROGRESS"),
        step_ev(10, "succeeded", "note", 1, "IN_PROGRESS"),
        ev(11, "intent.completed", "COMPLETED"),
    ]
}

/// A clean run of one intent through the whole lifecycle.
fn clean() -> H {
    clean_with(false)
}

/// [`clean`], and a workflow that runs whole beside it.
fn clean_with_workflow() -> H {
    clean_with(true)
}

fn clean_with(workflow: bool) -> H {
    let mut h = H::default();
    let log = full_log();
    h.binding()
        .push("nemesis", OpKind::Info, "start-partition", json!({}), None)
        .create_ok("create-0", "k1", ID)
        .read("reader-0", ID, "SUBMITTED", 0)
        .deliver(ID, "k1", 1, 1, "c1", 0)
        .invoke("acker-0", "ack", json!({"intent_id": ID, "attempt": 1}))
        .ok(
            "acker-0",
            "ack",
            json!({"intent_id": ID, "status": "ACKNOWLEDGED"}),
        )
        .stream_events("events-0", ID, "e1", 0, &log[..3])
        .stream_events("events-0", ID, "e2", 3, &log[3..])
        .invoke(
            "resolver-0",
            "resolve",
            json!({"intent_id": ID, "status": "COMPLETED"}),
        )
        .ok(
            "resolver-0",
            "resolve",
            json!({"intent_id": ID, "status": "COMPLETED"}),
        )
        .read("reader-0", ID, "COMPLETED", 1);
    if workflow {
        // The retried agent step put the intent back on the queue at attempt 0.
        h.workflow_ok("workflow-0", "w1", WF)
            .deliver(WF, "w1", 1, 2, "c1", 1)
            .read("reader-0", WF, "IN_PROGRESS", 0);
    }
    h.heal()
        .ok("drain", "drain-end", json!({"open": 0}))
        .final_reads(ID, "k1", "COMPLETED", 1, &log);
    if workflow {
        h.final_reads(WF, "w1", "COMPLETED", 1, &workflow_log());
    }
    h
}

#[test]
fn a_repeated_or_stray_workflow_tick() {
    // The delay's timer proposed by two leaders: the step started twice for attempt 2.
    let mut log = workflow_log();
    log.insert(8, step_ev(8, "started", "work", 2, "IN_PROGRESS"));
    for (i, e) in log.iter_mut().enumerate() {
        e["seq"] = json!(i + 1);
    }
    let mut h = clean_with_workflow();
    h.final_reads(WF, "w1", "COMPLETED", 1, &log);
    assert_only(&h.check(), &["workflow-steps-once"]);

    // A step the graph has no edge to.
    let mut log = workflow_log();
    log[8] = step_ev(9, "started", "elsewhere", 1, "IN_PROGRESS");
    log[9] = step_ev(10, "succeeded", "elsewhere", 1, "IN_PROGRESS");
    let mut h = clean_with_workflow();
    h.final_reads(WF, "w1", "COMPLETED", 1, &log);
    assert_only(&h.check(), &["workflow-steps-once"]);
}

fn assert_only(report: &CheckReport, names: &[&str]) {
    for p in &report.properties {
        let expected_bad = names.contains(&p.name.as_str());
        assert_eq!(
            !p.ok,
            expected_bad,
            "property {} ok={} (expected violations only in {names:?})\n{}",
            p.name,
            p.ok,
            report.summary()
        );
    }
    assert!(!report.valid);
}

fn assert_flags(report: &CheckReport, name: &str) {
    let p = report
        .property(name)
        .unwrap_or_else(|| panic!("no property {name}"));
    assert!(
        !p.ok && p.count > 0 && !p.examples.is_empty(),
        "{}",
        report.summary()
    );
    assert!(!report.valid);
}

#[test]
fn clean_history_passes() {
    for h in [clean(), clean_with_workflow()] {
        let r = h.check();
        assert!(r.valid, "{}", r.summary());
    }
    // Under a fault that leaves the leader alone, with the monitor's samples, every property
    // has something to check.
    let r = clean_under(&["follower-restart"], steady()).check();
    assert!(r.valid, "{}", r.summary());
    for p in &r.properties {
        assert!(p.checked > 0, "{} checked nothing", p.name);
    }
    // JSON round trip of the report.
    let s = serde_json::to_string(&r).unwrap();
    let back: CheckReport = serde_json::from_str(&s).unwrap();
    assert_eq!(back, r);
}

#[test]
fn lost_acknowledged_create() {
    let mut h = clean();
    h.create_ok("create-1", "k2", ID2);
    for n in NODES {
        h.push(
            "final",
            OpKind::Ok,
            "final-read",
            json!({"intent_id": ID2, "found": false, "intent": null, "events": []}),
            Some(n),
        );
    }
    assert_only(&h.check(), &["no-lost-acked-creates"]);
}

#[test]
fn indeterminate_creates_are_not_lost() {
    let mut h = clean();
    // A create that timed out, one that failed, one never completed: none exists.
    h.invoke(
        "create-1",
        "create",
        json!({"key": "k2", "agent": AGENT, "payload": payload("k2")}),
    )
    .info(
        "create-1",
        "create",
        json!({"key": "k2", "error": "timeout"}),
    )
    .invoke(
        "create-2",
        "create",
        json!({"key": "k3", "agent": AGENT, "payload": payload("k3")}),
    )
    .fail("create-2", "create", json!({"key": "k3", "error": "503"}))
    .invoke(
        "create-3",
        "create",
        json!({"key": "k4", "agent": AGENT, "payload": payload("k4")}),
    );
    // ... and an indeterminate one that did take effect, seen later: fine too.
    h.invoke(
        "create-4",
        "create",
        json!({"key": "k5", "agent": AGENT, "payload": payload("k5")}),
    )
    .info(
        "create-4",
        "create",
        json!({"key": "k5", "error": "timeout"}),
    )
    .deliver(ID2, "k5", 1, 2, "c1", 0);
    let log = vec![
        ev(1, "intent.created", "CREATED"),
        ev(2, "intent.submitted", "SUBMITTED"),
        delivered_ev(3, 1),
        ev(4, "intent.canceled", "CANCELED"),
    ];
    h.final_reads(ID2, "k5", "CANCELED", 1, &log);
    let r = h.check();
    assert!(r.valid, "{}", r.summary());
}

#[test]
fn phantom_intent() {
    let mut h = clean();
    h.deliver(ID2, "never-sent", 1, 2, "c1", 0);
    assert_only(&h.check(), &["no-phantom-intents"]);
}

#[test]
fn phantom_payload_changed() {
    let mut h = clean();
    let last = h.ops.len() - 1;
    h.ops[last].value["intent"]["payload"]["n"] = json!(2);
    let r = h.check();
    assert_flags(&r, "no-phantom-intents");
}

#[test]
fn duplicate_intent_per_key() {
    let mut h = clean();
    // The concurrent duplicate create got a different id.
    h.create_ok("create-1", "k1", ID2);
    let log = full_log();
    h.final_reads(ID2, "k1", "COMPLETED", 1, &log);
    h.deliver(ID2, "k1", 1, 3, "c1", 0);
    assert_only(&h.check(), &["one-intent-per-key"]);
}

#[test]
fn seq_gap() {
    let mut h = clean();
    // One node's log is missing seq 4: gap (and a divergent replica).
    let mut log = full_log();
    log.remove(3);
    h.final_read_on("n2", ID, "k1", "COMPLETED", 1, &log);
    let r = h.check();
    assert_flags(&r, "seq-gapless-increasing");
    assert_flags(&r, "replicas-identical-after-heal");
}

#[test]
fn seq_not_increasing_in_a_stream() {
    let mut h = clean();
    let log = full_log();
    h.stream_events(
        "events-1",
        ID,
        "x1",
        0,
        &[log[0].clone(), log[2].clone(), log[1].clone()],
    );
    assert_flags(&h.check(), "seq-gapless-increasing");
}

#[test]
fn diverging_observer_views() {
    let mut h = clean();
    // A stream saw a different seq 3 than the replicated log has.
    let mut log = full_log();
    log[2] = ev(3, "intent.canceled", "CANCELED");
    h.stream_events("events-1", ID, "x1", 0, &log[..3]);
    assert_only(&h.check(), &["observer-views-one-log"]);
}

#[test]
fn illegal_transition() {
    let mut h = clean();
    let mut log = full_log();
    // SUBMITTED -> ACKNOWLEDGED is not in the table.
    log.remove(2);
    for (i, e) in log.iter_mut().enumerate() {
        e["seq"] = json!(i + 1);
    }
    h.ops.retain(|o| {
        o.f != "final-read"
            && o.f != "event"
            && o.f != "read"
            && o.f != "agent-delivery"
            && o.f != "ack"
    });
    h.final_reads(ID, "k1", "COMPLETED", 0, &log);
    assert_only(&h.check(), &["legal-transitions"]);
}

#[test]
fn two_terminal_events() {
    let mut h = clean();
    let mut log = full_log();
    log.push(ev(7, "intent.canceled", "CANCELED"));
    h.ops.retain(|o| o.f != "final-read");
    h.final_reads(ID, "k1", "CANCELED", 1, &log);
    let r = h.check();
    assert_flags(&r, "exactly-one-terminal-event");
    assert_flags(&r, "nothing-after-terminal");
}

#[test]
fn terminal_status_without_terminal_event() {
    let mut h = clean();
    let log = full_log()[..5].to_vec();
    h.ops
        .retain(|o| o.f != "final-read" && o.f != "event" && o.f != "read");
    h.final_reads(ID, "k1", "COMPLETED", 1, &log);
    assert_flags(&h.check(), "exactly-one-terminal-event");
}

#[test]
fn event_after_terminal() {
    let mut h = clean();
    let mut log = full_log();
    log.push(json!({"seq": 7, "event_type": "intent.progress", "status": "COMPLETED", "at": "x", "details": {}}));
    h.ops.retain(|o| o.f != "final-read");
    h.final_reads(ID, "k1", "COMPLETED", 1, &log);
    assert_only(&h.check(), &["nothing-after-terminal"]);
}

#[test]
fn stale_ack_changed_state() {
    let mut h = clean();
    // Attempt 2 was delivered (seen), then an ack for attempt 1 was accepted.
    h.deliver(ID, "k1", 2, 5, "c2", 1)
        .invoke("acker-1", "ack", json!({"intent_id": ID, "attempt": 1}))
        .ok(
            "acker-1",
            "ack",
            json!({"intent_id": ID, "status": "ACKNOWLEDGED"}),
        );
    assert_flags(&h.check(), "stale-attempt-changes-nothing");
}

#[test]
fn stale_ack_rejected_or_not_applied_is_fine() {
    let mut h = clean();
    h.deliver(ID, "k1", 2, 5, "c2", 1)
        .invoke("acker-1", "ack", json!({"intent_id": ID, "attempt": 1}))
        .fail("acker-1", "ack", json!({"intent_id": ID, "http": 409}))
        .invoke(
            "acker-1",
            "resolve",
            json!({"intent_id": ID, "attempt": 1, "status": "COMPLETED"}),
        )
        .ok(
            "acker-1",
            "resolve",
            json!({"intent_id": ID, "applied": false, "status": "COMPLETED"}),
        );
    let r = h.check();
    assert!(r.valid, "{}", r.summary());
}

#[test]
fn stale_resolve_changed_state() {
    let mut h = clean();
    h.deliver(ID, "k1", 2, 5, "c2", 1)
        .invoke(
            "acker-1",
            "resolve",
            json!({"intent_id": ID, "attempt": 1, "status": "COMPLETED"}),
        )
        .ok(
            "acker-1",
            "resolve",
            json!({"intent_id": ID, "status": "COMPLETED"}),
        );
    assert_flags(&h.check(), "stale-attempt-changes-nothing");
}

#[test]
fn undelivered_after_heal() {
    let mut h = clean();
    h.create_ok("create-1", "k2", ID2);
    let log = vec![
        ev(1, "intent.created", "CREATED"),
        ev(2, "intent.submitted", "SUBMITTED"),
    ];
    h.final_reads(ID2, "k2", "SUBMITTED", 0, &log);
    // Never delivered, and after the drain still open: stuck on both counts.
    assert_only(
        &h.check(),
        &["delivered-after-heal", "terminal-after-drain"],
    );
}

#[test]
fn delivered_too_late_after_heal() {
    let mut h = clean();
    h.create_ok("create-1", "k2", ID2);
    // Observed delivery 2 minutes after the heal, still not terminal.
    let late = h.ops.last().unwrap().time_ns + 120_000_000_000;
    h.deliver(ID2, "k2", 1, 2, "c1", 1);
    h.ops.last_mut().unwrap().time_ns = late;
    let log = vec![
        ev(1, "intent.created", "CREATED"),
        ev(2, "intent.submitted", "SUBMITTED"),
        delivered_ev(3, 1),
    ];
    h.final_reads(ID2, "k2", "DELIVERED", 1, &log);
    for o in h.ops.iter_mut().rev().take(3) {
        o.time_ns = late + 1;
    }
    assert_flags(&h.check(), "delivered-after-heal");
}

#[test]
fn sse_resume_skipping() {
    let mut h = clean();
    let log = full_log();
    // Resumed with since=2 but the first event was seq 4.
    h.stream_events("events-1", ID, "x1", 0, &log[..2])
        .stream_events("events-1", ID, "x2", 2, &log[3..]);
    let r = h.check();
    assert_flags(&r, "sse-resume-exact");
    assert_flags(&r, "seq-gapless-increasing");
}

#[test]
fn sse_resume_duplicating() {
    let mut h = clean();
    let log = full_log();
    // Resumed with since=3 but seq 3 came again.
    h.stream_events("events-1", ID, "x1", 0, &log[..3])
        .stream_events("events-1", ID, "x2", 3, &log[2..]);
    assert_flags(&h.check(), "sse-resume-exact");
}

#[test]
fn agent_stream_resume_duplicating() {
    let mut h = clean();
    // Resumed with since=1 but the cursor-1 delivery came again.
    h.deliver(ID, "k1", 1, 1, "c2", 1);
    assert_only(&h.check(), &["sse-resume-exact"]);
}

#[test]
fn non_linearizable_read() {
    let mut h = clean();
    // After the resolve completed, a read still sees IN_PROGRESS: stale.
    h.read("reader-1", ID, "IN_PROGRESS", 1);
    assert_only(&h.check(), &["linearizable-status-reads"]);
}

#[test]
fn non_linearizable_read_goes_backwards() {
    let mut h = H::default();
    let log = full_log();
    h.binding()
        .create_ok("create-0", "k1", ID)
        .deliver(ID, "k1", 1, 1, "c1", 0)
        .read("reader-0", ID, "ACKNOWLEDGED", 1)
        .read("reader-1", ID, "DELIVERED", 1)
        .heal()
        .final_reads(ID, "k1", "COMPLETED", 1, &log);
    assert_only(&h.check(), &["linearizable-status-reads"]);
}

#[test]
fn read_not_found_after_acknowledged_create() {
    let mut h = clean();
    let at = h
        .ops
        .iter()
        .position(|o| o.f == "create" && o.kind == OpKind::Ok)
        .unwrap()
        + 1;
    let i = h.ops.len() as u64;
    // Insert a not-found read right after the create's ack (times kept increasing).
    let mut extra = vec![
        Op {
            index: i,
            process: "reader-9".into(),
            kind: OpKind::Invoke,
            f: "read".into(),
            value: json!({"intent_id": ID}),
            time_ns: 0,
            node: Some("n2".into()),
        },
        Op {
            index: i + 1,
            process: "reader-9".into(),
            kind: OpKind::Ok,
            f: "read".into(),
            value: json!({"intent_id": ID, "found": false}),
            time_ns: 0,
            node: Some("n2".into()),
        },
    ];
    let t = h.ops[at - 1].time_ns;
    extra[0].time_ns = t + 1;
    extra[1].time_ns = t + 2;
    h.ops.splice(at..at, extra);
    assert_only(&h.check(), &["linearizable-status-reads"]);
}

#[test]
fn concurrent_reads_may_see_either_order() {
    let mut h = H::default();
    let log = full_log();
    h.binding()
        .create_ok("create-0", "k1", ID)
        .deliver(ID, "k1", 1, 1, "c1", 0);
    // Two overlapping reads: one sees ACKNOWLEDGED, the other (completing
    // later, but invoked before the first completed) DELIVERED: linearizable.
    h.invoke("reader-0", "read", json!({"intent_id": ID}))
        .invoke("reader-1", "read", json!({"intent_id": ID}))
        .ok("reader-0", "read", json!({"intent_id": ID, "found": true, "status": "ACKNOWLEDGED", "delivery_attempt": 1}))
        .ok("reader-1", "read", json!({"intent_id": ID, "found": true, "status": "DELIVERED", "delivery_attempt": 1}))
        .heal()
        .final_reads(ID, "k1", "COMPLETED", 1, &log);
    let r = h.check();
    assert!(r.valid, "{}", r.summary());
}

#[test]
fn replica_divergence() {
    let mut h = clean();
    // n3 disagrees on the intent's final fields only.
    let log = full_log();
    h.final_read_on("n3", ID, "k1", "COMPLETED", 2, &log);
    assert_only(&h.check(), &["replicas-identical-after-heal"]);
}

#[test]
fn summary_names_every_property() {
    let r = clean().check();
    let s = r.summary();
    for p in &r.properties {
        assert!(s.contains(&p.name));
    }
    assert!(s.contains("VALID"));
}

#[test]
fn check_file_writes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let h = clean();
    let path = dir.path().join("history.jsonl");
    crate::history::write_jsonl(&path, &h.ops).unwrap();
    let r = super::check_file(&path, dir.path(), &CheckerConfig::default()).unwrap();
    assert!(r.valid, "{}", r.summary());
    for f in ["check.json", "summary.txt", "plot.png"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
}

/// After a drain, an intent that the final reads show non-terminal is stuck; without a
/// drain marker (create-only workload) the same history is not judged.
#[test]
fn stuck_after_drain_is_reported() {
    let mut h = H::default();
    let log = &full_log()[..4];
    h.binding()
        .create_ok("create-0", "k1", ID)
        .deliver(ID, "k1", 1, 1, "c1", 0)
        .heal();
    let mut drained = H { ops: h.ops.clone() };
    h.final_reads(ID, "k1", "ACKNOWLEDGED", 1, log);
    assert!(h
        .check()
        .property("terminal-after-drain")
        .is_some_and(|p| p.ok && p.checked == 0));
    drained
        .ok("drain", "drain-end", json!({"open": 1}))
        .final_reads(ID, "k1", "ACKNOWLEDGED", 1, log);
    let r = drained.check();
    let p = r.property("terminal-after-drain").expect("checked");
    assert!(!p.ok && p.count == 4, "{p:?}");
    assert!(!r.valid);
    let mut done = H {
        ops: drained.ops.clone(),
    };
    done.ops
        .retain(|o| o.f != "final-read" && o.f != "drain-end");
    done.ok("drain", "drain-end", json!({"open": 0}));
    done.final_reads(ID, "k1", "COMPLETED", 1, &full_log());
    assert!(done
        .check()
        .property("terminal-after-drain")
        .is_some_and(|p| p.ok && p.checked == 4));
}

/// A leadership sample: node `node` reports `term` and `leader`.
fn seen(node: &str, term: u64, leader: Option<u64>) -> Op {
    let role = if leader == node[1..].parse().ok() {
        "leader"
    } else {
        "follower"
    };
    Op {
        node: Some(node.to_string()),
        ..Op::new(
            crate::monitor::MONITOR_PROCESS,
            OpKind::Ok,
            crate::history::LEADERSHIP_F,
            json!({"term": term, "leader_id": leader, "role": role}),
        )
    }
}

/// A nemesis op (`follower-down`, `start-kill-leader`, ...).
fn fault(f: &str, value: Value) -> Op {
    Op::new("nemesis", OpKind::Info, f, value)
}

/// Numbers ops as the recorder would: index in order, 1 ms apart.
fn numbered(mut ops: Vec<Op>) -> Vec<Op> {
    for (i, op) in ops.iter_mut().enumerate() {
        op.index = i as u64;
        op.time_ns = (i as u64 + 1) * 1_000_000;
    }
    ops
}

/// `clean()` with its fault renamed to the nemeses `names` (started one after the other), and
/// `extra` right after the first start.
fn clean_under(names: &[&str], extra: Vec<Op>) -> H {
    let mut ops = Vec::new();
    for op in clean_with_workflow().ops {
        match op.f.as_str() {
            "start-partition" => {
                for n in names {
                    ops.push(fault(&format!("start-{n}"), json!({})));
                }
                ops.extend(extra.iter().cloned());
            }
            "stop-partition" => {
                for n in names {
                    ops.push(fault(&format!("stop-{n}"), json!({})));
                }
                ops.push(fault("start-final-heal", json!({})));
                ops.push(fault("stop-final-heal", json!({})));
            }
            _ => ops.push(op),
        }
    }
    H { ops: numbered(ops) }
}

/// Three followers-and-leader views of term 3 under n1, with a restarted n2 that first knows
/// no leader and a lagging n3 that still reports term 2.
fn steady() -> Vec<Op> {
    vec![
        seen("n1", 3, Some(1)),
        seen("n2", 3, Some(1)),
        seen("n3", 2, Some(3)),
        seen("n3", 3, Some(1)),
        fault("follower-down", json!({"node": "n2", "how": "sigkill"})),
        seen("n2", 3, None),
        seen("n2", 3, Some(1)),
        follower_up("n2", "n1"),
    ]
}

/// The end of a `follower-restart` round: `node` back, the cluster healthy under `leader`.
fn follower_up(node: &str, leader: &str) -> Op {
    fault(
        "follower-up",
        json!({"node": node, "how": "sigkill", "done": {"killed": [node]},
               "back": {"restarted": [node]}, "leader_after": leader}),
    )
}

#[test]
fn leader_changes_ignore_restarts_and_stale_views() {
    let l = leader_changes(&numbered(steady()));
    assert!(l.changes.is_empty(), "{l:?}");
    assert_eq!(l.samples, 6);
    let first = Epoch {
        term: 3,
        leader: Some(1),
    };
    assert_eq!(
        (l.first, l.last, l.term_rise),
        (Some(first), Some(first), 0)
    );
    assert_eq!(l.won_terms, 0);
}

#[test]
fn every_rise_of_the_term_is_a_leader_change() {
    let mut ops = steady();
    ops.extend([
        // n2 campaigns: term 4, no leader yet; then wins it; the rest follows.
        seen("n2", 4, None),
        seen("n1", 4, Some(2)),
        seen("n2", 4, Some(2)),
        // The old leader wins term 5 back: a change although the leader is the same.
        seen("n1", 5, Some(1)),
        // Several elections between two polls are seen once; the term says how many.
        seen("n3", 8, Some(1)),
        seen("n2", 7, Some(1)),
    ]);
    let l = leader_changes(&numbered(ops));
    let epochs: Vec<(Epoch, Epoch, &str)> = l
        .changes
        .iter()
        .map(|c| (c.from, c.to, c.observer.as_str()))
        .collect();
    let e = |term, leader| Epoch { term, leader };
    assert_eq!(
        epochs,
        [
            (e(3, Some(1)), e(4, None), "n2"),
            (e(4, Some(2)), e(5, Some(1)), "n1"),
            (e(5, Some(1)), e(8, Some(1)), "n3"),
        ]
    );
    assert_eq!(l.term_rise, 5);
    assert_eq!(l.won_terms, 3, "terms 4, 5 and 8");
    assert_eq!(l.last, Some(e(8, Some(1))));
}

#[test]
fn two_leaders_in_one_term_count_as_a_change() {
    let ops = numbered(vec![seen("n1", 3, Some(1)), seen("n2", 3, Some(2))]);
    let l = leader_changes(&ops);
    assert_eq!(l.changes.len(), 1);
    assert_eq!(l.term_rise, 0);
}

#[test]
fn harness_steps_are_not_faults() {
    let h = clean_under(&["follower-restart"], vec![]);
    let mut ops = h.ops;
    ops.push(fault("start-restart-all", json!({})));
    assert_eq!(started_nemeses(&ops), ["follower-restart"]);
}

#[test]
fn follower_restarts_that_keep_the_leader_are_valid() {
    let r = clean_under(&["follower-restart"], steady()).check();
    assert!(r.valid, "{}", r.summary());
    let p = r.property("no-leader-change").expect("checked");
    assert!(p.ok && p.checked == 6, "{p:?}");
    assert!(r.leadership.judged);
    assert!(
        r.summary()
            .contains("leader changes: 0 (term 3 (leader n1) -> term 3 (leader n1)"),
        "{}",
        r.summary()
    );
}

#[test]
fn a_leader_change_under_follower_restarts_is_an_anomaly() {
    let mut ops = steady();
    ops.push(fault(
        "follower-down",
        json!({"node": "n3", "how": "sigterm"}),
    ));
    ops.push(seen("n3", 4, None));
    let r = clean_under(&["follower-restart"], ops).check();
    assert_only(&r, &["no-leader-change"]);
    let p = r.property("no-leader-change").expect("checked");
    assert_eq!(p.count, 1);
    let message = p.examples[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("term 3 (leader n1) -> term 4 (no leader), seen on n3")
            && message.contains("after follower-down")
            && message.contains("sigterm"),
        "{message}"
    );
    assert_eq!(p.examples[0]["to"], json!({"term": 4, "leader": null}));
    assert_eq!(p.examples[0]["last_fault"]["f"], "follower-down");
}

#[test]
fn a_judged_run_without_samples_cannot_pass() {
    let r = clean_under(&["follower-restart"], vec![follower_up("n2", "n1")]).check();
    assert_only(&r, &["no-leader-change"]);
}

#[test]
fn a_judged_run_without_a_completed_round_cannot_pass() {
    let mut ops: Vec<Op> = steady()
        .into_iter()
        .filter(|o| o.f != "follower-up")
        .collect();
    let mut unhealthy = follower_up("n2", "n1");
    unhealthy.value["leader_after"] = json!({"error": "cluster not healthy after 30s"});
    ops.push(unhealthy);
    ops.push(fault(
        "follower-up",
        json!({"round": 1, "error": "no node said it leads"}),
    ));
    let r = clean_under(&["follower-restart"], ops).check();
    assert_only(&r, &["no-leader-change"]);
    assert_eq!(r.leadership.follower_rounds, 0);
    assert!(r.leadership.changes.is_empty());
}

#[test]
fn leader_changes_under_faults_that_move_the_leader_are_only_counted() {
    let mut ops = steady();
    ops.push(seen("n2", 4, Some(2)));
    let r = clean_under(&["follower-restart", "kill-leader"], ops).check();
    assert!(r.valid, "{}", r.summary());
    let p = r.property("no-leader-change").expect("reported");
    assert!(p.ok && p.checked == 0, "{p:?}");
    assert!(!r.leadership.judged);
    assert_eq!(r.leadership.changes.len(), 1);
    assert!(
        r.summary()
            .contains("leader changes: 1 (term 3 (leader n1) -> term 4 (leader n2)")
            && r.summary()
                .contains("not judged: faults that may move the leader (kill-leader)"),
        "{}",
        r.summary()
    );
}
