//! The human inbox: one thread per intent that waits for a person (and per completion sent
//! to a `reply_to` agent), owned by one normalized address at a time, and a per-owner change
//! feed so that clients can sync with `GET /v1/inbox/changes?since=N`.

use serde::{Deserialize, Serialize};
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
