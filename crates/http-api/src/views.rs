//! The JSON the API shows for domain values.
//!
//! The lifecycle crate's serde derives describe the replicated encoding, which must stay
//! stable for the log; the public JSON follows the AXME schemas instead (field names such as
//! `intent_id`, `lifecycle_status`, `pending_with.type`). Keeping the two apart lets either
//! change without breaking the other.
//!
//! Optional fields whose schema type is a plain string or object are left out when unset
//! rather than sent as `null`, since `null` would not validate against those schemas.

use chrono::SecondsFormat;
use intentd_lifecycle::{
    Event, Intent, PendingWith, PendingWithKind, Status, StepKind, Timestamp, Workflow,
};
use serde_json::{json, Map, Value};

/// RFC 3339 in UTC with a `Z`, microsecond precision (what Python's `fromisoformat` reads).
pub(crate) fn timestamp(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn put_some<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        map.insert(key.into(), v.into());
    }
}

fn pending_with(p: &PendingWith) -> Value {
    let kind = match p.kind {
        PendingWithKind::Agent => "agent",
        PendingWithKind::Human => "human",
        PendingWithKind::Internal => "internal",
    };
    json!({ "type": kind, "ref": p.reference })
}

/// The full intent, as `GET /v1/intents/{id}` and the write routes return it.
pub(crate) fn intent(i: &Intent) -> Value {
    let mut m = Map::new();
    m.insert("intent_id".into(), json!(i.id));
    m.insert("status".into(), json!(i.status.as_str()));
    m.insert("lifecycle_status".into(), json!(i.status.as_str()));
    m.insert("intent_type".into(), json!(i.intent_type));
    m.insert("correlation_id".into(), json!(i.correlation_id));
    m.insert("from_agent".into(), json!(i.from_agent));
    m.insert("to_agent".into(), json!(i.to_agent));
    put_some(&mut m, "reply_to", i.reply_to.clone());
    m.insert("payload".into(), i.payload.clone());
    m.insert("result".into(), i.result.clone().unwrap_or(Value::Null));
    m.insert("error".into(), i.error.clone().unwrap_or(Value::Null));
    m.insert("created_at".into(), json!(timestamp(&i.created_at)));
    m.insert("updated_at".into(), json!(timestamp(&i.updated_at)));
    m.insert("delivery_attempt".into(), json!(i.delivery_attempt));
    m.insert(
        "max_delivery_attempts".into(),
        json!(i.max_delivery_attempts),
    );
    put_some(&mut m, "deadline_at", i.deadline_at.as_ref().map(timestamp));
    put_some(&mut m, "remind_after_seconds", i.remind_after_seconds);
    put_some(&mut m, "remind_interval_seconds", i.remind_interval_seconds);
    put_some(&mut m, "max_reminders", i.max_reminders);
    m.insert("remind_count".into(), json!(i.remind_count));
    put_some(&mut m, "escalate_to", i.escalate_to.clone());
    put_some(&mut m, "human_task", i.human_task.clone());
    put_some(
        &mut m,
        "pending_with",
        i.pending_with.as_ref().map(pending_with),
    );
    m.insert("policy_generation".into(), json!(i.policy_generation));
    m.insert("controls".into(), Value::Object(i.controls.clone()));
    m.insert(
        "policy".into(),
        json!({ "grants": i.grants, "envelope": i.envelope }),
    );
    m.insert(
        "waiting_reason".into(),
        i.waiting_reason
            .map_or(Value::Null, |r| Value::from(r.as_str())),
    );
    m.insert("dead_lettered".into(), json!(i.dead_lettered));
    put_some(&mut m, "workflow", i.workflow.as_ref().map(workflow));
    Value::Object(m)
}

/// A scenario workflow: the active step and every step with its spec and state, in the
/// bundle's order.
pub(crate) fn workflow(w: &Workflow) -> Value {
    let steps: Vec<Value> = w
        .steps
        .iter()
        .map(|s| {
            let mut m = Map::new();
            m.insert("step_id".into(), json!(s.step_id));
            m.insert("kind".into(), json!(s.kind.name()));
            match &s.kind {
                StepKind::Agent { address } | StepKind::Human { address } => {
                    m.insert("assigned_to".into(), json!(address));
                }
                StepKind::Reminder { to, .. } | StepKind::Escalation { to, .. } => {
                    m.insert("assigned_to".into(), json!(to));
                }
                StepKind::Tool { tool_id } => {
                    m.insert("tool_id".into(), json!(tool_id));
                }
                StepKind::Notification { message } => {
                    put_some(&mut m, "message", message.clone());
                }
                StepKind::Delay { .. } | StepKind::Timeout { .. } => {}
            }
            put_some(&mut m, "seconds", s.kind.timer_seconds());
            m.insert("state".into(), json!(s.state));
            m.insert("attempt".into(), json!(s.attempt));
            m.insert("max_retries".into(), json!(s.max_retries));
            put_some(&mut m, "retry_delay_seconds", s.retry_delay_seconds);
            put_some(&mut m, "step_deadline_seconds", s.step_deadline_seconds);
            put_some(&mut m, "human_task", s.human_task.clone());
            m.insert("on_success".into(), json!(s.on_success));
            m.insert("on_failure".into(), json!(s.on_failure));
            put_some(&mut m, "started_at", s.started_at.as_ref().map(timestamp));
            put_some(&mut m, "finished_at", s.finished_at.as_ref().map(timestamp));
            put_some(&mut m, "deadline_at", s.deadline_at.as_ref().map(timestamp));
            put_some(&mut m, "timer_at", s.timer_at.as_ref().map(timestamp));
            put_some(&mut m, "retry_at", s.retry_at.as_ref().map(timestamp));
            put_some(&mut m, "outcome", s.outcome.clone());
            Value::Object(m)
        })
        .collect();
    json!({ "current_step": w.current, "steps": steps })
}

/// One lifecycle event, as the events list, the intent stream and resolve return it.
pub(crate) fn event(e: &Event) -> Value {
    json!({
        "intent_id": e.intent_id,
        "seq": e.seq,
        "event_type": e.event_type.as_str(),
        "status": e.status.as_str(),
        "at": timestamp(&e.at),
        "actor": e.actor,
        "waiting_reason": e.waiting_reason.map(|r| r.as_str()),
        "handler": e.handler,
        "details": e.details,
    })
}

/// The SSE event name for an agent-stream delivery: `intent.` and the status in lower case.
pub(crate) fn delivery_event_name(status: Status) -> String {
    format!("intent.{}", status.as_str().to_ascii_lowercase())
}

/// One delivery on an agent's stream. `seq` is the agent's queue cursor, not the intent's
/// event seq: the SDK resumes `listen()` with the highest `seq` it saw.
pub(crate) fn delivery(i: &Intent, cursor: u64) -> Value {
    json!({
        "intent_id": i.id,
        "seq": cursor,
        "status": i.status.as_str(),
        "intent_type": i.intent_type,
        "correlation_id": i.correlation_id,
        "from_agent": i.from_agent,
        "to_agent": i.to_agent,
        "reply_to": i.reply_to,
        "payload": i.payload,
        "delivery_attempt": i.delivery_attempt,
        "max_delivery_attempts": i.max_delivery_attempts,
        "created_at": timestamp(&i.created_at),
        "deadline_at": i.deadline_at.as_ref().map(timestamp),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use intentd_lifecycle::{EventType, WaitingReason};
    use uuid::Uuid;

    pub(crate) fn sample_intent() -> Intent {
        let at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        Intent {
            id: Uuid::from_u128(1),
            intent_type: "intent.generic.v1".into(),
            correlation_id: Uuid::from_u128(2),
            from_agent: "agent://intentd/keys/ci".into(),
            to_agent: "agent://acme/prod/billing".into(),
            reply_to: None,
            payload: json!({"amount": 3}),
            status: Status::Waiting,
            waiting_reason: Some(WaitingReason::WaitingForHuman),
            result: None,
            error: None,
            created_at: at,
            updated_at: at,
            delivery_attempt: 1,
            max_delivery_attempts: 5,
            deadline_at: None,
            remind_after_seconds: None,
            remind_interval_seconds: None,
            max_reminders: None,
            remind_count: 0,
            escalate_to: None,
            human_task: None,
            pending_with: Some(PendingWith {
                kind: PendingWithKind::Human,
                reference: "agent://acme/prod/billing".into(),
            }),
            policy_generation: 2,
            controls: Map::new(),
            grants: Map::new(),
            envelope: Map::new(),
            last_seq: 4,
            agent_cursor: 7,
            dead_lettered: false,
            uncounted_attempts: 0,
            lease: None,
            not_before: None,
            deliver_at: None,
            replayed_from: None,
            next_reminder_at: None,
            escalated_to: None,
            inbox_owner: None,
            purge_at: None,
            earlier_cursors: Vec::new(),
            workflow: None,
        }
    }

    #[test]
    fn intent_view_follows_the_get_schema() {
        let v = intent(&sample_intent());
        assert_eq!(v["intent_id"], "00000000-0000-0000-0000-000000000001");
        assert_eq!(v["status"], "WAITING");
        assert_eq!(v["lifecycle_status"], "WAITING");
        assert_eq!(v["created_at"], "2030-01-02T03:04:05.000000Z");
        assert_eq!(
            v["pending_with"],
            json!({"type": "human", "ref": "agent://acme/prod/billing"})
        );
        assert_eq!(v["waiting_reason"], "WAITING_FOR_HUMAN");
        assert_eq!(v["policy_generation"], 2);
        assert_eq!(v["result"], Value::Null);
        // Schema-typed optional strings are omitted rather than null.
        for absent in ["reply_to", "deadline_at", "escalate_to", "human_task"] {
            assert!(v.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn event_view_has_every_contract_field() {
        let e = Event {
            intent_id: Uuid::from_u128(1),
            seq: 3,
            event_type: EventType::Completed,
            status: Status::Completed,
            at: Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap(),
            actor: "agent://acme/prod/billing".into(),
            waiting_reason: None,
            handler: Some("agent://acme/prod/billing".into()),
            details: Map::new(),
        };
        let v = event(&e);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "intent_id",
                "seq",
                "event_type",
                "status",
                "at",
                "actor",
                "waiting_reason",
                "handler",
                "details"
            ]
        );
        assert_eq!(v["event_type"], "intent.completed");
        assert_eq!(v["at"], "2030-01-02T03:04:05.000000Z");
    }

    #[test]
    fn delivery_view_carries_the_cursor_as_seq() {
        let mut i = sample_intent();
        i.status = Status::Delivered;
        let v = delivery(&i, 42);
        assert_eq!(v["seq"], 42);
        assert_eq!(v["status"], "DELIVERED");
        assert_eq!(delivery_event_name(Status::Delivered), "intent.delivered");
        assert_eq!(
            delivery_event_name(Status::InProgress),
            "intent.in_progress"
        );
    }
}
