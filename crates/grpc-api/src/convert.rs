//! Translation between the protobuf messages and the lifecycle crate's types. The edge owns
//! no domain types: these functions only change representation.

use intentd_lifecycle::validate::{IntentRequest, ValidationError};
use intentd_lifecycle::{
    Event, Intent, PendingWith, PendingWithKind, Status, Timestamp, WaitingReason,
};
use serde_json::{Map, Value};

use crate::proto;

pub(crate) fn timestamp(t: &Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as the RFC 3339 text the shared rules read (the HTTP form).
fn rfc3339(name: &str, t: &prost_types::Timestamp) -> Result<String, ValidationError> {
    let nanos = u32::try_from(t.nanos).ok();
    nanos
        .and_then(|n| chrono::DateTime::from_timestamp(t.seconds, n))
        .map(|t| t.to_rfc3339())
        .ok_or_else(|| ValidationError::Malformed(format!("{name} is not a valid timestamp")))
}

pub(crate) fn status(s: Status) -> proto::Status {
    match s {
        Status::Created => proto::Status::Created,
        Status::Submitted => proto::Status::Submitted,
        Status::Delivered => proto::Status::Delivered,
        Status::Acknowledged => proto::Status::Acknowledged,
        Status::InProgress => proto::Status::InProgress,
        Status::Waiting => proto::Status::Waiting,
        Status::Completed => proto::Status::Completed,
        Status::Failed => proto::Status::Failed,
        Status::Canceled => proto::Status::Canceled,
        Status::TimedOut => proto::Status::TimedOut,
    }
}

/// A status sent by a client; `None` for UNSPECIFIED and for numbers this server does not
/// know (a newer client).
pub(crate) fn lifecycle_status(raw: i32) -> Option<Status> {
    match proto::Status::try_from(raw).ok()? {
        proto::Status::Unspecified => None,
        proto::Status::Created => Some(Status::Created),
        proto::Status::Submitted => Some(Status::Submitted),
        proto::Status::Delivered => Some(Status::Delivered),
        proto::Status::Acknowledged => Some(Status::Acknowledged),
        proto::Status::InProgress => Some(Status::InProgress),
        proto::Status::Waiting => Some(Status::Waiting),
        proto::Status::Completed => Some(Status::Completed),
        proto::Status::Failed => Some(Status::Failed),
        proto::Status::Canceled => Some(Status::Canceled),
        proto::Status::TimedOut => Some(Status::TimedOut),
    }
}

fn waiting_reason(r: Option<WaitingReason>) -> proto::WaitingReason {
    match r {
        None => proto::WaitingReason::Unspecified,
        Some(WaitingReason::WaitingForHuman) => proto::WaitingReason::Human,
        Some(WaitingReason::WaitingForTool) => proto::WaitingReason::Tool,
        Some(WaitingReason::WaitingForAgent) => proto::WaitingReason::Agent,
        Some(WaitingReason::WaitingForTime) => proto::WaitingReason::Time,
    }
}

/// A waiting reason sent by a client, as the name the shared rules read; UNSPECIFIED is
/// absent (the rules' default), an unknown number is kept as a name they will refuse.
pub(crate) fn waiting_reason_name(raw: i32) -> Option<String> {
    match proto::WaitingReason::try_from(raw) {
        Ok(proto::WaitingReason::Unspecified) => None,
        Ok(proto::WaitingReason::Human) => Some(WaitingReason::WaitingForHuman.as_str().into()),
        Ok(proto::WaitingReason::Tool) => Some(WaitingReason::WaitingForTool.as_str().into()),
        Ok(proto::WaitingReason::Agent) => Some(WaitingReason::WaitingForAgent.as_str().into()),
        Ok(proto::WaitingReason::Time) => Some(WaitingReason::WaitingForTime.as_str().into()),
        Err(_) => Some(format!("WAITING_REASON_{raw}")),
    }
}

fn pending_with(p: &PendingWith) -> proto::PendingWith {
    let kind = match p.kind {
        PendingWithKind::Agent => proto::pending_with::Kind::Agent,
        PendingWithKind::Human => proto::pending_with::Kind::Human,
        PendingWithKind::Internal => proto::pending_with::Kind::Internal,
    };
    proto::PendingWith {
        kind: kind.into(),
        r#ref: p.reference.clone(),
    }
}

fn json_text(v: &Value) -> String {
    v.to_string()
}

fn map_text(m: &Map<String, Value>) -> String {
    Value::Object(m.clone()).to_string()
}

pub(crate) fn intent(i: &Intent) -> proto::Intent {
    proto::Intent {
        intent_id: i.id.to_string(),
        intent_type: i.intent_type.clone(),
        correlation_id: i.correlation_id.to_string(),
        from_agent: i.from_agent.clone(),
        to_agent: i.to_agent.clone(),
        reply_to: i.reply_to.clone(),
        payload_json: json_text(&i.payload),
        status: status(i.status).into(),
        waiting_reason: waiting_reason(i.waiting_reason).into(),
        result_json: i.result.as_ref().map(json_text),
        error_json: i.error.as_ref().map(json_text),
        created_at: Some(timestamp(&i.created_at)),
        updated_at: Some(timestamp(&i.updated_at)),
        delivery_attempt: i.delivery_attempt,
        max_delivery_attempts: i.max_delivery_attempts,
        deadline_at: i.deadline_at.as_ref().map(timestamp),
        remind_after_seconds: i.remind_after_seconds,
        remind_interval_seconds: i.remind_interval_seconds,
        max_reminders: i.max_reminders,
        remind_count: i.remind_count,
        escalate_to: i.escalate_to.clone(),
        human_task_json: i.human_task.as_ref().map(json_text),
        pending_with: i.pending_with.as_ref().map(pending_with),
        policy_generation: i.policy_generation,
        controls_json: map_text(&i.controls),
        grants_json: map_text(&i.grants),
        envelope_json: map_text(&i.envelope),
        dead_lettered: i.dead_lettered,
        last_seq: i.last_seq,
        workflow_json: i
            .workflow
            .as_ref()
            .and_then(|w| serde_json::to_value(w).ok())
            .map(|w| json_text(&w)),
    }
}

pub(crate) fn event(e: &Event) -> proto::Event {
    proto::Event {
        intent_id: e.intent_id.to_string(),
        seq: e.seq,
        event_type: e.event_type.as_str().to_string(),
        status: status(e.status).into(),
        at: Some(timestamp(&e.at)),
        actor: e.actor.clone(),
        waiting_reason: waiting_reason(e.waiting_reason).into(),
        handler: e.handler.clone(),
        details_json: map_text(&e.details),
    }
}

/// JSON text from a `*_json` field. Text that is not JSON is malformed, like a body that does
/// not parse on HTTP.
pub(crate) fn parse_json(name: &str, text: &str) -> Result<Value, ValidationError> {
    intentd_lifecycle::json::parse(text.as_bytes())
        .map_err(|e| ValidationError::Malformed(format!("{name}: {e}")))
}

/// JSON text that must hold an object; empty text means `{}`. A value of another kind is
/// malformed (HTTP: a wrong JSON type, 400).
pub(crate) fn json_object(name: &str, text: &str) -> Result<Map<String, Value>, ValidationError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match parse_json(name, text)? {
        Value::Object(m) => Ok(m),
        _ => Err(ValidationError::Malformed(format!(
            "{name} must be a JSON object"
        ))),
    }
}

/// Proto3 strings cannot be absent; an empty one means the client did not set it.
fn present(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A SendIntent as the shared create rules read it.
pub(crate) fn intent_request(
    r: proto::SendIntentRequest,
) -> Result<IntentRequest, ValidationError> {
    let payload = present(r.payload_json)
        .map(|text| parse_json("payload_json", &text))
        .transpose()?;
    let human_task = r
        .human_task_json
        .map(|text| match parse_json("human_task_json", &text)? {
            Value::Object(m) => Ok(m),
            _ => Err(ValidationError::Malformed(
                "human_task_json must be a JSON object".into(),
            )),
        })
        .transpose()?;
    Ok(IntentRequest {
        intent_type: present(r.intent_type),
        correlation_id: present(r.correlation_id),
        from_agent: r.from_agent,
        to_agent: present(r.to_agent),
        reply_to: r.reply_to,
        payload,
        deadline_at: r
            .deadline_at
            .as_ref()
            .map(|t| rfc3339("deadline_at", t))
            .transpose()?,
        remind_after_seconds: r.remind_after_seconds,
        remind_interval_seconds: r.remind_interval_seconds,
        max_reminders: r.max_reminders,
        escalate_to: r.escalate_to,
        max_delivery_attempts: r.max_delivery_attempts,
        human_task,
        // Not in the public proto yet: delayed delivery is an HTTP extension for now.
        deliver_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_unspecified_is_none() {
        for s in Status::ALL {
            assert_eq!(lifecycle_status(status(s) as i32), Some(s));
        }
        assert_eq!(lifecycle_status(0), None);
        assert_eq!(lifecycle_status(99), None);
    }

    #[test]
    fn timestamps_survive_the_trip() {
        let t = chrono::DateTime::from_timestamp(1_900_000_000, 123_456_789).unwrap();
        let text = rfc3339("t", &timestamp(&t)).unwrap();
        assert_eq!(intentd_lifecycle::validate::parse_rfc3339(&text), Some(t));
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(matches!(
            rfc3339("t", &bad),
            Err(ValidationError::Malformed(_))
        ));
    }

    #[test]
    fn json_fields() {
        assert_eq!(json_object("r", "").unwrap(), Map::new());
        assert_eq!(json_object("r", r#"{"a":1}"#).unwrap()["a"], 1);
        assert!(matches!(
            json_object("r", "[1]"),
            Err(ValidationError::Malformed(_))
        ));
        assert!(matches!(
            json_object("r", r#"{"a":1,"a":2}"#),
            Err(ValidationError::Malformed(_))
        ));
        assert!(matches!(
            json_object("r", r#"{"n":123456789012345678901234567890}"#),
            Err(ValidationError::Malformed(_))
        ));
        assert!(matches!(
            json_object("r", "{"),
            Err(ValidationError::Malformed(_))
        ));
    }

    #[test]
    fn empty_strings_are_absent_fields() {
        let req = intent_request(proto::SendIntentRequest {
            intent_type: "intent.generic.v1".into(),
            payload_json: r#"{"big": 12345678901234567890}"#.into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(req.correlation_id, None);
        assert_eq!(req.to_agent, None);
        // Integers beyond 2^53 keep every digit: the reason payloads travel as JSON text.
        assert_eq!(
            req.payload.unwrap()["big"].to_string(),
            "12345678901234567890"
        );
    }
}
