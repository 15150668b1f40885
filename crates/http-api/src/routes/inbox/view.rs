//! A thread as the inbox schemas show it: its status, its timeline, and the change feed's
//! cursors.

use intentd_lifecycle::webhook::derived_id;
use intentd_lifecycle::{
    Event, InboxChangeKind, InboxThread, Intent, Status, ThreadStatus, Timestamp, WaitingReason,
};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::{views, AppState};

/// Change cursors are opaque to clients; the prefix keeps them at the schema's 3 characters
/// minimum and makes a cursor from another API obvious.
const CURSOR_PREFIX: &str = "ic_";

/// The thread status of the schemas' enum.
fn thread_status(thread: &InboxThread, intent: Option<&Intent>) -> &'static str {
    let terminal = intent.is_some_and(|i| i.status.is_terminal());
    if thread.status == ThreadStatus::Resolved || terminal {
        return "done";
    }
    let waits_for_person = intent.is_some_and(|i| {
        i.status == Status::Waiting && i.waiting_reason == Some(WaitingReason::WaitingForHuman)
    });
    if waits_for_person {
        "pending"
    } else {
        "active"
    }
}

/// Timeline actors are 2..=120 characters in the schemas.
fn actor_label(actor: &str) -> String {
    if actor.chars().count() < 2 {
        return "system".into();
    }
    actor.chars().take(120).collect()
}

fn timeline(thread: &InboxThread, events: &[Event]) -> Vec<Value> {
    let mut entries: Vec<(Timestamp, Value)> = Vec::new();
    entries.push((
        thread.created_at,
        json!({
            "event_id": derived_id(&thread.thread_id, b"inbox.thread_created"),
            "event_type": "inbox.thread_created",
            "actor": "system",
            "at": views::timestamp(&thread.created_at),
            "details": { "title": thread.title },
        }),
    ));
    for e in events {
        entries.push((
            e.at,
            json!({
                "event_id": derived_id(&e.intent_id, &e.seq.to_be_bytes()),
                "event_type": e.event_type.as_str(),
                "actor": actor_label(&e.actor),
                "at": views::timestamp(&e.at),
                "details": e.details,
                "seq": e.seq,
                "status": e.status.as_str(),
            }),
        ));
    }
    for m in &thread.messages {
        let (event_type, details) = if m.deleted {
            (
                "inbox.message_deleted",
                json!({ "message_id": m.message_id }),
            )
        } else {
            (
                "inbox.message",
                json!({ "message_id": m.message_id, "text": m.text }),
            )
        };
        entries.push((
            m.at,
            json!({
                "event_id": m.message_id,
                "event_type": event_type,
                "actor": actor_label(&m.author),
                "at": views::timestamp(&m.at),
                "details": details,
            }),
        ));
    }
    // Stable: equal times keep thread creation, events, messages in that order.
    entries.sort_by_key(|(at, _)| *at);
    entries.into_iter().map(|(_, v)| v).collect()
}

/// A thread as the inbox schemas show it (see the module docs for the extra fields).
pub(crate) fn thread_view(
    thread: &InboxThread,
    intent: Option<&Intent>,
    events: &[Event],
) -> Value {
    let mut m = Map::new();
    m.insert("thread_id".into(), json!(thread.thread_id));
    m.insert("intent_id".into(), json!(thread.intent_id));
    m.insert("status".into(), json!(thread_status(thread, intent)));
    m.insert(
        "owner_agent".into(),
        json!(format!("agent://{}", thread.owner)),
    );
    let (from, to) = intent.map_or_else(
        || (thread.owner.clone(), thread.owner.clone()),
        |i| (i.from_agent.clone(), i.to_agent.clone()),
    );
    m.insert("from_agent".into(), json!(from));
    m.insert("to_agent".into(), json!(to));
    m.insert(
        "created_at".into(),
        json!(views::timestamp(&thread.created_at)),
    );
    m.insert(
        "updated_at".into(),
        json!(views::timestamp(&thread.updated_at)),
    );
    m.insert("timeline".into(), Value::Array(timeline(thread, events)));
    m.insert("title".into(), json!(thread.title));
    let messages: Vec<Value> = thread
        .messages
        .iter()
        .map(|msg| {
            json!({
                "message_id": msg.message_id,
                "author": msg.author,
                "text": (!msg.deleted).then_some(&msg.text),
                "at": views::timestamp(&msg.at),
                "deleted": msg.deleted,
            })
        })
        .collect();
    m.insert("messages".into(), Value::Array(messages));
    if let Some(i) = intent {
        m.insert("intent_status".into(), json!(i.status.as_str()));
        m.insert(
            "waiting_reason".into(),
            json!(i.waiting_reason.map(|r| r.as_str())),
        );
        let full = views::intent(i);
        for field in ["pending_with", "human_task"] {
            if let Some(v) = full.get(field) {
                m.insert(field.into(), v.clone());
            }
        }
    }
    Value::Object(m)
}

/// Loads what a thread view needs besides the thread: its intent and the intent's events.
pub(super) fn view_of(state: &AppState, thread: &InboxThread) -> Result<Value, ApiError> {
    let reader = state.cluster.reader();
    let intent = reader.intent(&thread.intent_id)?;
    let events = match &intent {
        Some(_) => reader.events(&thread.intent_id, 0, state.config.max_events_per_page)?,
        None => Vec::new(),
    };
    Ok(thread_view(thread, intent.as_ref(), &events))
}

pub(super) fn format_cursor(seq: u64) -> String {
    format!("{CURSOR_PREFIX}{seq}")
}

/// A change cursor from the query: ours, or a bare number. Anything else is a malformed
/// parameter (400).
pub(super) fn parse_cursor(raw: Option<&str>) -> Result<u64, ApiError> {
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(0);
    };
    raw.strip_prefix(CURSOR_PREFIX)
        .unwrap_or(raw)
        .parse()
        .map_err(|_| ApiError::InvalidRequest(format!("cursor {raw:?} is not an inbox cursor")))
}

pub(super) fn change_kind(kind: InboxChangeKind) -> &'static str {
    match kind {
        InboxChangeKind::Added => "added",
        InboxChangeKind::Messages => "messages",
        InboxChangeKind::Resolved => "resolved",
        InboxChangeKind::Removed => "removed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::inbox::fixtures::{event, thread};

    /// The schemas' required thread fields, and a time-ordered timeline with unique ids.
    #[test]
    fn thread_view_follows_the_schema() {
        let intent = views::tests::sample_intent();
        let v = thread_view(&thread(), Some(&intent), &[event(1, 5), event(2, 22)]);
        for field in [
            "thread_id",
            "intent_id",
            "status",
            "owner_agent",
            "from_agent",
            "to_agent",
            "created_at",
            "updated_at",
            "timeline",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
        assert_eq!(v["status"], "pending");
        assert_eq!(v["owner_agent"], "agent://acme/prod/billing");
        let timeline = v["timeline"].as_array().unwrap();
        let types: Vec<&str> = timeline
            .iter()
            .map(|e| e["event_type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "inbox.thread_created",
                "intent.created",
                "inbox.message",
                "intent.created",
                "inbox.message_deleted",
                "inbox.message"
            ]
        );
        let mut ids: Vec<&str> = timeline
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), timeline.len());
        for e in timeline {
            let actor = e["actor"].as_str().unwrap();
            assert!((2..=120).contains(&actor.chars().count()), "{actor}");
            assert!(e["details"].is_object());
        }
        // The deleted message's text is gone from both lists.
        assert!(!v.to_string().contains("\"text\":\"\""));
        assert_eq!(v["messages"][1]["text"], Value::Null);
    }
    #[test]
    fn thread_statuses() {
        let mut intent = views::tests::sample_intent();
        let mut t = thread();
        assert_eq!(thread_status(&t, Some(&intent)), "pending");
        intent.status = Status::InProgress;
        assert_eq!(thread_status(&t, Some(&intent)), "active");
        intent.status = Status::Completed;
        assert_eq!(thread_status(&t, Some(&intent)), "done");
        t.status = ThreadStatus::Resolved;
        assert_eq!(thread_status(&t, None), "done");
    }
    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_cursor(None).unwrap(), 0);
        assert_eq!(parse_cursor(Some(&format_cursor(42))).unwrap(), 42);
        assert_eq!(parse_cursor(Some("7")).unwrap(), 7);
        assert_eq!(
            parse_cursor(Some("x")).unwrap_err().code(),
            "invalid_request"
        );
        assert!(format_cursor(0).len() >= 3);
    }
}
