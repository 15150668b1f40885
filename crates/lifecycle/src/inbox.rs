//! The human inbox: one thread per intent that waits for a person (and per completion sent
//! to a `reply_to` agent), owned by one normalized address at a time, and a per-owner change
//! feed so that clients can sync with `GET /v1/inbox/changes?since=N`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadStatus {
    Open,
    /// The intent behind the thread is terminal.
    Resolved,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxMessage {
    pub message_id: Uuid,
    pub author: String,
    /// Emptied when the message is deleted: a deletion must really remove what was said.
    pub text: String,
    pub at: Timestamp,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxThread {
    /// Equal to `intent_id`: one thread per intent.
    pub thread_id: Uuid,
    pub intent_id: Uuid,
    /// Normalized address (no `agent://`).
    pub owner: String,
    pub title: String,
    pub status: ThreadStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub messages: Vec<InboxMessage>,
    /// The owner's change-feed `seq` of the newest change to this thread.
    pub change_seq: u64,
}

/// What happened to a thread, as its owner's change feed tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxChangeKind {
    /// The thread arrived in this owner's inbox (new, delegated or escalated here).
    Added,
    /// A message was added or deleted.
    Messages,
    /// The intent behind the thread became terminal.
    Resolved,
    /// The thread left this owner's inbox (delegated or escalated away).
    Removed,
}

/// One entry of an owner's change feed; `seq` grows by one per owner from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxChange {
    pub seq: u64,
    pub thread_id: Uuid,
    pub kind: InboxChangeKind,
    pub at: Timestamp,
}

/// A person's decision on an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    /// The `decision` value of the approvals schemas.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }

    /// The decision an answer records: its `decision` (what approve/reject write), else its
    /// `outcome` when that is one of a decision's names. A workflow's human step fails on a
    /// reject and succeeds on anything else.
    pub fn of_answer(answer: &Value) -> Option<Decision> {
        match answer.get("decision").and_then(Value::as_str) {
            Some("approve") => return Some(Decision::Approve),
            Some("reject") => return Some(Decision::Reject),
            _ => {}
        }
        let outcome = answer.get("outcome").and_then(Value::as_str)?;
        [Decision::Approve, Decision::Reject]
            .into_iter()
            .find(|d| d.outcomes().iter().any(|n| n.eq_ignore_ascii_case(outcome)))
    }

    /// Outcome names this decision may go by, preferred first.
    fn outcomes(self) -> &'static [&'static str] {
        match self {
            Decision::Approve => &["approved", "approve", "yes", "accept", "accepted"],
            Decision::Reject => &["rejected", "reject", "no", "deny", "denied", "declined"],
        }
    }
}

/// The `outcome` a decision records: the first of its names the task allows, else its
/// preferred name (which apply then refuses if the task restricts outcomes). The rule every
/// edge that records a person's approve/reject goes by.
pub fn outcome_for(decision: Decision, human_task: Option<&Value>) -> String {
    let allowed: Vec<&str> = human_task
        .and_then(|t| t.get("allowed_outcomes"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let names = decision.outcomes();
    names
        .iter()
        .find(|n| allowed.iter().any(|a| a.eq_ignore_ascii_case(n)))
        .map(|n| {
            allowed
                .iter()
                .find(|a| a.eq_ignore_ascii_case(n))
                .map_or(n.to_string(), |a| a.to_string())
        })
        .unwrap_or_else(|| names[0].to_string())
}

/// Which messages of a thread a delete names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageSelection {
    /// These messages, each of which must be in the thread.
    Ids(Vec<Uuid>),
    /// The newest this many the caller may delete that are not deleted yet.
    Newest(usize),
}

/// Why a delete may not go ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeleteRefusal {
    #[error("message {0} is not in this thread")]
    NotInThread(Uuid),
    #[error("message {0} is not yours; mode both deletes others' messages")]
    NotYours(Uuid),
}

/// The messages a delete by `actor` removes now, or why it may not. `others` lets it remove
/// anyone's messages (the `both` mode), otherwise only the actor's own. Messages already
/// deleted are not removed (nor counted) again, and a message named twice counts once.
pub fn messages_to_delete(
    thread: &InboxThread,
    selection: &MessageSelection,
    others: bool,
    actor: &str,
) -> Result<Vec<Uuid>, DeleteRefusal> {
    let mine = |author: &str| crate::same_address(author, actor);
    match selection {
        MessageSelection::Ids(ids) => {
            let mut chosen = Vec::new();
            for id in ids {
                let message = thread
                    .messages
                    .iter()
                    .find(|m| m.message_id == *id)
                    .ok_or(DeleteRefusal::NotInThread(*id))?;
                if !others && !mine(&message.author) {
                    return Err(DeleteRefusal::NotYours(*id));
                }
                if !message.deleted && !chosen.contains(id) {
                    chosen.push(*id);
                }
            }
            Ok(chosen)
        }
        MessageSelection::Newest(n) => Ok(thread
            .messages
            .iter()
            .rev()
            .filter(|m| !m.deleted && (others || mine(&m.author)))
            .take(*n)
            .map(|m| m.message_id)
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcomes_follow_the_task() {
        assert_eq!(outcome_for(Decision::Approve, None), "approved");
        assert_eq!(outcome_for(Decision::Reject, None), "rejected");
        let task = json!({"title": "t", "allowed_outcomes": ["Yes", "No"]});
        assert_eq!(outcome_for(Decision::Approve, Some(&task)), "Yes");
        assert_eq!(outcome_for(Decision::Reject, Some(&task)), "No");
        let task = json!({"title": "t", "allowed_outcomes": ["ship", "hold"]});
        assert_eq!(outcome_for(Decision::Approve, Some(&task)), "approved");
    }
}
