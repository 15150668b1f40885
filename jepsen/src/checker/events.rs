//! Per-intent event logs: gapless increasing seq, one log seen by every
//! observer, legal transitions, exactly one terminal event and nothing after
//! it, and exact SSE resumes.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::{ex, Analysis, CheckerConfig, Ev, Prop, PropertyResult};

/// Terminal statuses.
pub(crate) fn is_terminal(status: &str) -> bool {
    matches!(status, "COMPLETED" | "FAILED" | "CANCELED" | "TIMED_OUT")
}

fn is_terminal_event(event_type: &str) -> bool {
    matches!(
        event_type,
        "intent.completed" | "intent.failed" | "intent.canceled" | "intent.timed_out"
    )
}

/// Events that record something without a status change.
fn keeps_status(event_type: &str) -> bool {
    matches!(
        event_type,
        "intent.progress"
            | "intent.controls_updated"
            | "intent.policy_updated"
            | "intent.lease_expired"
            | "intent.reminder_sent"
            | "intent.escalated"
            | "intent.step_approved"
            | "intent.delivery_held"
            | "intent.delivery_released"
            | "workflow.step_started"
            | "workflow.step_succeeded"
            | "workflow.step_failed"
            | "workflow.step_retried"
    )
}

/// The status an event type enters, for the status-entering types.
fn entered_status(event_type: &str) -> Option<&'static str> {
    Some(match event_type {
        "intent.created" => "CREATED",
        "intent.submitted" => "SUBMITTED",
        "intent.delivered" => "DELIVERED",
        "intent.acknowledged" => "ACKNOWLEDGED",
        "intent.in_progress" | "intent.resumed" => "IN_PROGRESS",
        "intent.waiting" => "WAITING",
        "intent.completed" => "COMPLETED",
        "intent.failed" => "FAILED",
        "intent.canceled" => "CANCELED",
        "intent.timed_out" => "TIMED_OUT",
        _ => return None,
    })
}

/// The AXP lifecycle table (API.md), independent of the implementation.
pub(crate) fn allowed(from: &str, to: &str) -> bool {
    if is_terminal(from) {
        return false;
    }
    if to == "TIMED_OUT" {
        return true;
    }
    match from {
        "CREATED" => to == "SUBMITTED",
        "SUBMITTED" => matches!(
            to,
            "DELIVERED" | "IN_PROGRESS" | "WAITING" | "FAILED" | "CANCELED"
        ),
        "DELIVERED" => matches!(
            to,
            "ACKNOWLEDGED" | "IN_PROGRESS" | "WAITING" | "FAILED" | "CANCELED" | "DELIVERED"
        ),
        "ACKNOWLEDGED" => matches!(to, "IN_PROGRESS" | "WAITING" | "FAILED" | "CANCELED"),
        "IN_PROGRESS" => matches!(to, "WAITING" | "COMPLETED" | "FAILED" | "CANCELED"),
        "WAITING" => matches!(to, "IN_PROGRESS" | "COMPLETED" | "FAILED" | "CANCELED"),
        _ => false,
    }
}

fn ev_json(e: &Ev) -> Value {
    json!({"seq": e.seq, "event_type": e.event_type, "status": e.status})
}

pub(crate) fn check(a: &Analysis<'_>, cfg: &CheckerConfig) -> Vec<PropertyResult> {
    let mut gapless = Prop::new("seq-gapless-increasing", cfg);
    let mut prefix = Prop::new("observer-views-one-log", cfg);
    let mut trans = Prop::new("legal-transitions", cfg);
    let mut one_terminal = Prop::new("exactly-one-terminal-event", cfg);
    let mut after = Prop::new("nothing-after-terminal", cfg);
    let mut resume = Prop::new("sse-resume-exact", cfg);

    for (id, views) in &a.views {
        // Gapless, strictly increasing, starting at 1, in every view.
        for v in views {
            gapless.checked(1);
            if let Some((i, e)) = v
                .events
                .iter()
                .enumerate()
                .find(|(i, e)| e.seq != *i as u64 + 1)
            {
                gapless.violation(ex(&[
                    ("intent_id", json!(id)),
                    ("observer", json!(v.observer)),
                    ("position", json!(i)),
                    ("expected_seq", json!(i + 1)),
                    ("seq", json!(e.seq)),
                    (
                        "seqs",
                        json!(v.events.iter().map(|e| e.seq).collect::<Vec<_>>()),
                    ),
                ]));
            }
        }
        // One log: every observation of a seq agrees with the canonical one.
        prefix.checked(1);
        let mut by_seq: BTreeMap<u64, (&Ev, &str)> = BTreeMap::new();
        if let Some(c) = a.canonical.get(id) {
            let first = views
                .iter()
                .find(|v| v.events.len() == c.len() && v.observer.starts_with("final-read"))
                .or_else(|| views.iter().find(|v| v.events.len() == c.len()))
                .map_or("canonical", |v| v.observer.as_str());
            for e in c {
                by_seq.entry(e.seq).or_insert((e, first));
            }
        }
        let mut conflicted = false;
        for v in views {
            for e in &v.events {
                match by_seq.get(&e.seq) {
                    Some((seen, who)) if !seen.same(e) => {
                        if !conflicted {
                            prefix.violation(ex(&[
                                ("intent_id", json!(id)),
                                ("seq", json!(e.seq)),
                                ("observer_a", json!(who)),
                                ("event_a", ev_json(seen)),
                                ("observer_b", json!(v.observer)),
                                ("event_b", ev_json(e)),
                            ]));
                        }
                        conflicted = true;
                    }
                    Some(_) => {}
                    None => {
                        by_seq.insert(e.seq, (e, v.observer.as_str()));
                    }
                }
            }
        }
    }

    for (id, log) in &a.canonical {
        trans.checked(1);
        one_terminal.checked(1);
        after.checked(1);
        // Transitions.
        let mut prev: Option<&Ev> = None;
        for e in log {
            let bad = match prev {
                None => {
                    if e.event_type != "intent.created" || e.status != "CREATED" {
                        Some("the first event is not intent.created/CREATED")
                    } else {
                        None
                    }
                }
                Some(p) => {
                    if let Some(s) = entered_status(&e.event_type) {
                        if s != e.status {
                            Some("event type and status disagree")
                        } else if !allowed(&p.status, &e.status) {
                            Some("transition not in the lifecycle table")
                        } else {
                            None
                        }
                    } else if keeps_status(&e.event_type) {
                        if e.status != p.status {
                            Some("a status-keeping event changed the status")
                        } else {
                            None
                        }
                    } else {
                        Some("unknown event type")
                    }
                }
            };
            // A status-keeping event after a terminal one is reported by
            // nothing-after-terminal, not here.
            let after_terminal = prev.is_some_and(|p| is_terminal(&p.status));
            if let Some(why) = bad {
                if !(after_terminal && keeps_status(&e.event_type)) {
                    trans.violation(ex(&[
                        ("intent_id", json!(id)),
                        ("why", json!(why)),
                        ("from", prev.map_or(Value::Null, ev_json)),
                        ("to", ev_json(e)),
                    ]));
                    break;
                }
            }
            prev = Some(e);
        }
        // Terminal events.
        let terminals: Vec<&Ev> = log
            .iter()
            .filter(|e| is_terminal_event(&e.event_type))
            .collect();
        let final_status = a
            .final_intent(id)
            .and_then(|i| i.get("status"))
            .and_then(Value::as_str);
        if terminals.len() > 1 {
            one_terminal.violation(ex(&[
                ("intent_id", json!(id)),
                ("why", json!("more than one terminal event")),
                (
                    "terminal_events",
                    json!(terminals.iter().map(|e| ev_json(e)).collect::<Vec<_>>()),
                ),
            ]));
        } else if terminals.is_empty() && final_status.is_some_and(is_terminal) {
            one_terminal.violation(ex(&[
                ("intent_id", json!(id)),
                ("why", json!("terminal status without a terminal event")),
                ("status", json!(final_status)),
            ]));
        }
        if let Some(pos) = log.iter().position(|e| is_terminal(&e.status)) {
            if pos + 1 < log.len() {
                after.violation(ex(&[
                    ("intent_id", json!(id)),
                    ("terminal", ev_json(&log[pos])),
                    ("after", ev_json(&log[pos + 1])),
                    ("extra_events", json!(log.len() - pos - 1)),
                ]));
            }
        }
    }

    // SSE resumes, per connection.
    let mut ev_conns: HashMap<(&str, &str), (u64, Vec<u64>)> = HashMap::new();
    let mut ag_conns: HashMap<(&str, &str), (u64, Vec<u64>)> = HashMap::new();
    let mut order: Vec<(bool, (&str, &str))> = Vec::new();
    for p in &a.pairs {
        if !p.is_ok() {
            continue;
        }
        let v = p.value();
        let (map, is_ev, pos) = match p.f() {
            "event" => (&mut ev_conns, true, v.get("seq").and_then(Value::as_u64)),
            "agent-delivery" => (
                &mut ag_conns,
                false,
                v.get("cursor").and_then(Value::as_u64),
            ),
            _ => continue,
        };
        let (Some(conn), Some(pos)) = (v.get("conn").and_then(Value::as_str), pos) else {
            continue;
        };
        let since = v.get("since").and_then(Value::as_u64).unwrap_or(0);
        let k = (p.process(), conn);
        let entry = map.entry(k).or_insert_with(|| {
            order.push((is_ev, k));
            (since, Vec::new())
        });
        entry.1.push(pos);
    }
    for (is_ev, k) in order {
        let (since, seqs) = if is_ev { &ev_conns[&k] } else { &ag_conns[&k] };
        resume.checked(1);
        let bad = if is_ev {
            // The intent stream: exactly since+1, since+2, ...
            seqs.iter()
                .enumerate()
                .find(|(i, s)| **s != since + 1 + *i as u64)
                .map(|(i, s)| (i, *s, Some(since + 1 + i as u64)))
        } else {
            // The agent stream: cursors above `since`, strictly increasing
            // (entries of intents that became terminal are skipped).
            let mut last = *since;
            let mut bad = None;
            for (i, s) in seqs.iter().enumerate() {
                if *s <= last {
                    bad = Some((i, *s, None));
                    break;
                }
                last = *s;
            }
            bad
        };
        if let Some((i, got, expected)) = bad {
            resume.violation(ex(&[
                (
                    "stream",
                    json!(if is_ev { "intent-events" } else { "agent" }),
                ),
                ("process", json!(k.0)),
                ("conn", json!(k.1)),
                ("since", json!(since)),
                ("position", json!(i)),
                ("got", json!(got)),
                ("expected", json!(expected)),
            ]));
        }
    }

    vec![
        gapless.finish(),
        prefix.finish(),
        trans.finish(),
        one_terminal.finish(),
        after.finish(),
        resume.finish(),
    ]
}
