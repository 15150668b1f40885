use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Status, Timestamp, WaitingReason};

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

/// An intent as the replicated state holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub id: Uuid,
    pub intent_type: String,
    pub correlation_id: Uuid,
    pub from_agent: String,
    pub to_agent: String,
    pub reply_to: Option<String>,
    pub payload: Value,
    pub status: Status,
    pub waiting_reason: Option<WaitingReason>,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// How many times the intent has been handed to a consumer.
    pub delivery_attempt: u32,
    pub max_delivery_attempts: u32,
    pub deadline_at: Option<Timestamp>,
    pub remind_after_seconds: Option<u64>,
    pub remind_interval_seconds: Option<u64>,
    pub max_reminders: Option<u32>,
    pub remind_count: u32,
    pub escalate_to: Option<String>,
    pub human_task: Option<Value>,
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
    #[serde(default)]
    pub lease: Option<Lease>,
    /// When the next `Deliver` (HTTP push or retry) or the `Release` of a delayed intent is
    /// due; only set while the intent waits for one.
    #[serde(default)]
    pub not_before: Option<Timestamp>,
    /// Delayed delivery as created.
    #[serde(default)]
    pub deliver_at: Option<Timestamp>,
    /// The dead-lettered intent this one replays.
    #[serde(default)]
    pub replayed_from: Option<Uuid>,
    /// When the next reminder is due, while WAITING_FOR_HUMAN.
    #[serde(default)]
    pub next_reminder_at: Option<Timestamp>,
    /// Set once the reminders ran out and the intent went to `escalate_to`.
    #[serde(default)]
    pub escalated_to: Option<String>,
    /// Who answers for a WAITING_FOR_HUMAN intent now (normalized): the receiver at first,
    /// then whoever it was delegated or escalated to. `pending_with` follows it.
    #[serde(default)]
    pub inbox_owner: Option<String>,
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
    pub waiting_reason: Option<WaitingReason>,
    pub handler: Option<String>,
    pub details: Map<String, Value>,
}
