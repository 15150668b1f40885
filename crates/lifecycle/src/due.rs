//! The due-time index and dead letters: what the leader's engine must do, and when.
//!
//! Apply writes a `Write::Due` whenever it gives something a time at which the engine has to
//! act, and a `Write::Undue` when that time is replaced or no longer matters. The times also
//! live in the records themselves (the intent's lease, `not_before`, `deadline_at`,
//! `next_reminder_at`; a webhook delivery's `next_attempt_at`), so the exact key of an entry
//! can always be rebuilt for its removal.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Timestamp;

/// What the engine does when an entry is due. `id` is an intent id, except for
/// `WebhookDelivery` where it is a delivery id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DueKind {
    /// Propose `ExpireLease` for the intent's current lease.
    LeaseExpiry,
    /// Push the intent to its HTTP agent (`Deliver` then POST).
    Deliver,
    /// Propose `Release`: a delayed intent's `deliver_at` passed.
    Release,
    /// Propose `TimeOut`.
    Deadline,
    /// Propose `Remind`.
    Reminder,
    /// Push the webhook delivery.
    WebhookDelivery,
    /// Propose `Purge`: a terminal intent's retention ran out (`Intent::purge_at`).
    Purge,
    /// Propose `AdvanceWorkflow` for the intent's active step (its timer or its deadline).
    WorkflowStep,
}

impl DueKind {
    pub const ALL: [DueKind; 8] = [
        DueKind::LeaseExpiry,
        DueKind::Deliver,
        DueKind::Release,
        DueKind::Deadline,
        DueKind::Reminder,
        DueKind::WebhookDelivery,
        DueKind::Purge,
        DueKind::WorkflowStep,
    ];

    /// A stable one-byte code (storage keys).
    pub fn code(self) -> u8 {
        match self {
            DueKind::LeaseExpiry => 1,
            DueKind::Deliver => 2,
            DueKind::Release => 3,
            DueKind::Deadline => 4,
            DueKind::Reminder => 5,
            DueKind::WebhookDelivery => 6,
            DueKind::Purge => 7,
            DueKind::WorkflowStep => 8,
        }
    }

    pub fn from_code(code: u8) -> Option<DueKind> {
        DueKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// One entry of the due-time index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DueEntry {
    pub at: Timestamp,
    pub kind: DueKind,
    pub id: Uuid,
}

/// An intent that failed because its deliveries were used up (or its HTTP push gave up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub intent_id: Uuid,
    pub at: Timestamp,
    pub reason: String,
    /// The new intent a `Replay` created from this one.
    pub replayed_as: Option<Uuid>,
}
