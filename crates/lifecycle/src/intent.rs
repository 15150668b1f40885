use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Status, Timestamp, WaitingReason, Workflow};

/// A fresh intent id: a time-ordered UUID (version 7) rather than a random one. Intents and
/// their events are keyed by id in the state machine's B-tree, so ids that grow with time add
/// each new intent at the right edge of one leaf instead of splitting and dirtying leaves all
/// over the tree (random ids cost a create measurable node splits and flush volume).
pub fn new_intent_id() -> Uuid {
    Uuid::now_v7()
}

/// Who currently holds the intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingWithKind {
    Agent,
    Human,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWith {
    pub kind: PendingWithKind,
    pub reference: String,
}

/// An intent as the replicated state holds it. Absent optional fields are left out of the
/// stored record (and read back as absent): most are absent for most of an intent's life,
/// and every record is written on each transition and read by every apply that touches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub id: Uuid,
    pub intent_type: String,
    pub correlation_id: Uuid,
    pub from_agent: String,
    pub to_agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    pub payload: Value,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<WaitingReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// How many times the intent has been handed to a consumer.
    pub delivery_attempt: u32,
    pub max_delivery_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_after_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_interval_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reminders: Option<u32>,
    pub remind_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human_task: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_with: Option<PendingWith>,
    /// Bumped by every accepted controls/policy patch and control-form resume; clients use it
    /// as a compare-and-set token.
    pub policy_generation: u64,
    pub controls: Map<String, Value>,
    pub grants: Map<String, Value>,
    pub envelope: Map<String, Value>,
    /// The `seq` of the newest event; events are numbered 1..=last_seq with no gaps.
    pub last_seq: u64,
    /// The receiving agent's queue cursor at which this intent was last offered.
    pub agent_cursor: u64,
    /// Set when the intent failed because every delivery attempt was used up.
    pub dead_lettered: bool,
    /// The consumer currently holding the intent, while DELIVERED and unacknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// When the next `Deliver` (HTTP push or retry) or the `Release` of a delayed intent is
    /// due; only set while the intent waits for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// Delayed delivery as created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<Timestamp>,
    /// The dead-lettered intent this one replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_from: Option<Uuid>,
    /// When the next reminder is due, while WAITING_FOR_HUMAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_reminder_at: Option<Timestamp>,
    /// Set once the reminders ran out and the intent went to `escalate_to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_to: Option<String>,
    /// Who answers for a WAITING_FOR_HUMAN intent now (normalized): the receiver at first,
    /// then whoever it was delegated or escalated to. `pending_with` follows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_owner: Option<String>,
    /// When retention removes the terminal intent and everything kept for it (see
    /// [`crate::Retention`]). Set when it ends, from the retention the state held then;
    /// `None` keeps it forever. The `Purge` due entry is derived from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<Timestamp>,
    /// The queue cursors of the agent at which it was offered before `agent_cursor` (one per
    /// re-enqueue, so at most `max_delivery_attempts`): a purge removes those queue entries
    /// too, without scanning the agent's queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_cursors: Vec<u64>,
    /// The scenario workflow this intent runs, step by step (`None` for a plain intent).
    /// `to_agent`, `human_task` and the reminder fields follow its active step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Workflow>,
    /// Delivery attempts that do not count against `max_delivery_attempts`: leases that ended
    /// while the agent was killed (the kill took them away; the agent never had its chance).
    #[serde(default)]
    pub uncounted_attempts: u32,
}

impl Intent {
    /// The delivery attempts that count against `max_delivery_attempts`.
    pub fn counted_attempts(&self) -> u32 {
        self.delivery_attempt
            .saturating_sub(self.uncounted_attempts)
    }
}

/// A delivery handed to one consumer: until `expires_at` nobody else gets the intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub consumer: String,
    pub attempt: u32,
    pub expires_at: Timestamp,
}

/// The names of lifecycle events as clients see them (`intent.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Created,
    Submitted,
    Delivered,
    Acknowledged,
    InProgress,
    Progress,
    Waiting,
    Resumed,
    Completed,
    Failed,
    Canceled,
    TimedOut,
    ControlsUpdated,
    PolicyUpdated,
    /// A lease ran out (or an HTTP push failed); the status stays.
    LeaseExpired,
    /// A reminder went to the human owner; the status stays.
    ReminderSent,
    /// The reminders ran out and the intent went to `escalate_to`; the status stays.
    Escalated,
    /// The owner approved the current step of an intent already IN_PROGRESS; the status
    /// stays, but the approval (and its new `policy_generation`) must be on the record.
    StepApproved,
    /// A workflow step became active (`details.step_id`, `attempt`); the status follows it.
    WorkflowStepStarted,
    /// A workflow step ended well (`details.step_id`, `outcome`).
    WorkflowStepSucceeded,
    /// A workflow step failed and will not run again (`details.step_id`, `error`).
    WorkflowStepFailed,
    /// A workflow step failed and starts again with the next attempt.
    WorkflowStepRetried,
    /// The receiving agent is killed: the delivery waits (no lease, no attempt) until the
    /// agent is resumed; the status stays.
    DeliveryHeld,
    /// The agent was resumed and the held intent is back on its queue; the status stays.
    DeliveryReleased,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "intent.created",
            EventType::Submitted => "intent.submitted",
            EventType::Delivered => "intent.delivered",
            EventType::Acknowledged => "intent.acknowledged",
            EventType::InProgress => "intent.in_progress",
            EventType::Progress => "intent.progress",
            EventType::Waiting => "intent.waiting",
            EventType::Resumed => "intent.resumed",
            EventType::Completed => "intent.completed",
            EventType::Failed => "intent.failed",
            EventType::Canceled => "intent.canceled",
            EventType::TimedOut => "intent.timed_out",
            EventType::ControlsUpdated => "intent.controls_updated",
            EventType::PolicyUpdated => "intent.policy_updated",
            EventType::LeaseExpired => "intent.lease_expired",
            EventType::ReminderSent => "intent.reminder_sent",
            EventType::Escalated => "intent.escalated",
            EventType::StepApproved => "intent.step_approved",
            EventType::WorkflowStepStarted => "workflow.step_started",
            EventType::WorkflowStepSucceeded => "workflow.step_succeeded",
            EventType::WorkflowStepFailed => "workflow.step_failed",
            EventType::WorkflowStepRetried => "workflow.step_retried",
            EventType::DeliveryHeld => "intent.delivery_held",
            EventType::DeliveryReleased => "intent.delivery_released",
        }
    }

    /// The event that records entering `status`.
    pub fn entering(status: Status) -> EventType {
        match status {
            Status::Created => EventType::Created,
            Status::Submitted => EventType::Submitted,
            Status::Delivered => EventType::Delivered,
            Status::Acknowledged => EventType::Acknowledged,
            Status::InProgress => EventType::InProgress,
            Status::Waiting => EventType::Waiting,
            Status::Completed => EventType::Completed,
            Status::Failed => EventType::Failed,
            Status::Canceled => EventType::Canceled,
            Status::TimedOut => EventType::TimedOut,
        }
    }

    /// Events that record something without changing the status.
    pub fn keeps_status(self) -> bool {
        matches!(
            self,
            EventType::Progress
                | EventType::ControlsUpdated
                | EventType::PolicyUpdated
                | EventType::LeaseExpired
                | EventType::ReminderSent
                | EventType::Escalated
                | EventType::StepApproved
                | EventType::WorkflowStepStarted
                | EventType::WorkflowStepSucceeded
                | EventType::WorkflowStepFailed
                | EventType::WorkflowStepRetried
                | EventType::DeliveryHeld
                | EventType::DeliveryReleased
        )
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventType::Completed | EventType::Failed | EventType::Canceled | EventType::TimedOut
        )
    }
}

/// One entry of an intent's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub intent_id: Uuid,
    pub seq: u64,
    pub event_type: EventType,
    /// The intent's status after this event.
    pub status: Status,
    pub at: Timestamp,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<WaitingReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    pub details: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as releases before absent fields were left out stored it: every optional
    /// field written as `null`.
    fn record_with_nulls() -> Value {
        serde_json::json!({
            "id": "0190a6f0-0000-7000-8000-000000000001",
            "intent_type": "payment.charge.v1",
            "correlation_id": "0190a6f0-0000-7000-8000-000000000002",
            "from_agent": "acme/sender",
            "to_agent": "acme/payments",
            "reply_to": null,
            "payload": {"order_id": "42"},
            "status": "SUBMITTED",
            "waiting_reason": null,
            "result": null,
            "error": null,
            "created_at": "2026-12-03T10:00:00Z",
            "updated_at": "2026-12-03T10:00:00Z",
            "delivery_attempt": 0,
            "max_delivery_attempts": 5,
            "deadline_at": null,
            "remind_after_seconds": null,
            "remind_interval_seconds": null,
            "max_reminders": null,
            "remind_count": 0,
            "escalate_to": null,
            "human_task": null,
            "pending_with": null,
            "policy_generation": 0,
            "controls": {},
            "grants": {},
            "envelope": {},
            "last_seq": 1,
            "agent_cursor": 1,
            "dead_lettered": false,
            "lease": null,
            "not_before": null,
            "deliver_at": null,
            "replayed_from": null,
            "next_reminder_at": null,
            "escalated_to": null,
            "inbox_owner": null
        })
    }

    #[test]
    fn records_stored_with_nulls_still_read_and_absent_fields_are_left_out() {
        let old: Intent = serde_json::from_value(record_with_nulls()).unwrap();
        let stored = serde_json::to_value(&old).unwrap();
        let fields = stored.as_object().unwrap();
        assert!(fields.values().all(|v| !v.is_null()), "{stored}");
        assert!(!fields.contains_key("deadline_at"));
        let again: Intent = serde_json::from_value(stored).unwrap();
        assert_eq!(again, old);
    }
}
