use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::mesh::{Health, HeartbeatMetrics};
use crate::{
    AgentConfig, ApiKey, Retention, Subscription, Timestamp, WaitingReason, WebhookEvent,
    WebhookOutcome, Workflow,
};

/// A change to the replicated state: the payload of one Raft log entry.
///
/// Nearly every entry is an intent command, so boxing it to shrink the rare key variants
/// would cost an allocation on the hot path for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A change to one intent, optionally deduplicated by an idempotency key.
    Intent {
        command: IntentCommand,
        idempotency: Option<IdempotencyClaim>,
    },
    /// Stores an API key under the SHA-256 of its secret.
    PutApiKey {
        key_hash: String,
        key: ApiKey,
    },
    /// Marks a key revoked; it keeps existing so its id stays unique.
    RevokeApiKey {
        id: Uuid,
    },
    /// Registers an agent or replaces its registration (`created_at` is kept on update).
    RegisterAgent {
        config: AgentConfig,
    },
    /// Forgets a registration: the address behaves as an unregistered `Stream` agent again.
    RemoveAgent {
        address: String,
        at: Timestamp,
    },
    /// A person answers in a thread.
    InboxReply {
        thread_id: Uuid,
        message_id: Uuid,
        author: String,
        text: String,
        at: Timestamp,
    },
    /// Hands an open thread (and the intent's `pending_with`) to another owner.
    InboxDelegate {
        thread_id: Uuid,
        to: String,
        actor: String,
        at: Timestamp,
    },
    /// Marks messages deleted and empties their text.
    InboxDeleteMessages {
        thread_id: Uuid,
        message_ids: Vec<Uuid>,
        actor: String,
        at: Timestamp,
    },
    /// Creates a subscription, or updates the one of the same (owner, callback_url), which
    /// keeps its id and `created_at`.
    UpsertSubscription {
        subscription: Subscription,
    },
    RevokeSubscription {
        id: Uuid,
        at: Timestamp,
    },
    /// Stores the event and fans it out: one pending delivery, due at once, per active
    /// matching subscription of its owner.
    PublishEvent {
        event: WebhookEvent,
    },
    /// The push of attempt `attempt + 1` of a delivery ended. Compare-and-set: `attempt` and
    /// `replays` must be the delivery's current ones.
    WebhookDeliveryOutcome {
        delivery_id: Uuid,
        attempt: u32,
        #[serde(default)]
        replays: u32,
        outcome: WebhookOutcome,
        at: Timestamp,
    },
    /// Every delivery of the event back to pending, attempts reset, due at `at`.
    ReplayWebhookEvent {
        event_id: Uuid,
        at: Timestamp,
    },
    /// The cluster's retention from now on, proposed by a leader whose configuration differs
    /// from the state's. Intents that end afterwards get their purge time from it.
    SetRetention {
        retention: Retention,
    },
    /// Removes a terminal intent whose `purge_at` is not after `at`, with everything kept for
    /// it. Proposed by the leader's engine from the due index, one intent per command so an
    /// entry's size stays bounded by what one intent holds. A purge that is no longer due
    /// (the intent is gone or its purge time is after `at`) is a rejection.
    Purge {
        intent_id: Uuid,
        at: Timestamp,
    },
    /// A heartbeat that reached the log (see `mesh::HEARTBEAT_COALESCE_SECS`), with the
    /// metrics to fold into the agent's record. `event_id` names the health event it may
    /// cause (an unreachable agent beating again).
    MeshHeartbeat {
        address: String,
        metrics: Option<HeartbeatMetrics>,
        event_id: Uuid,
        at: Timestamp,
    },
    /// Blocks every delivery to the agent until a `MeshResume` (a kill of a killed agent
    /// changes nothing).
    MeshKill {
        address: String,
        actor: String,
        reason: Option<String>,
        event_id: Uuid,
        at: Timestamp,
    },
    /// Ends a kill and puts the intents it held back on the agent's queue, in order.
    MeshResume {
        address: String,
        actor: String,
        event_id: Uuid,
        at: Timestamp,
    },
    /// The leader's health sweep saw the agent's health change.
    MeshHealth {
        address: String,
        health: Health,
        reason: String,
        event_id: Uuid,
        at: Timestamp,
    },
}

impl Command {
    /// The proposer's clock reading carried by the command, if it has one. Every time the
    /// command writes into the state is derived from it, so the leader checks it before
    /// appending.
    pub fn stamped_at(&self) -> Option<Timestamp> {
        match self {
            Command::Intent { command, .. } => Some(command.at()),
            Command::RemoveAgent { at, .. }
            | Command::InboxReply { at, .. }
            | Command::InboxDelegate { at, .. }
            | Command::InboxDeleteMessages { at, .. }
            | Command::RevokeSubscription { at, .. }
            | Command::WebhookDeliveryOutcome { at, .. }
            | Command::ReplayWebhookEvent { at, .. }
            | Command::Purge { at, .. } => Some(*at),
            Command::MeshHeartbeat { at, .. }
            | Command::MeshKill { at, .. }
            | Command::MeshResume { at, .. }
            | Command::MeshHealth { at, .. } => Some(*at),
            Command::PublishEvent { event } => Some(event.at),
            Command::PutApiKey { .. }
            | Command::RevokeApiKey { .. }
            | Command::RegisterAgent { .. }
            | Command::UpsertSubscription { .. }
            | Command::SetRetention { .. } => None,
        }
    }
}

/// The proposer's claim on an idempotency key. `scope` separates callers, so two API keys
/// using the same `Idempotency-Key` value never collide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyClaim {
    pub scope: String,
    pub key: String,
    /// SHA-256 of the canonical request, computed by the proposer.
    pub request_hash: String,
    pub expires_at: Timestamp,
}

impl IdempotencyClaim {
    /// The claim a request with an idempotency key makes at `now`. The proposer decides
    /// `expires_at` (apply never reads a clock), and the hash is over the canonical form of
    /// `request`, so a reformatted retry still matches.
    pub fn new(
        scope: String,
        key: String,
        request: &Value,
        now: Timestamp,
        ttl: chrono::Duration,
    ) -> Self {
        IdempotencyClaim {
            scope,
            key,
            request_hash: request_hash(request),
            expires_at: now + ttl,
        }
    }

    /// The key under which the state machine stores the record.
    pub fn storage_key(&self) -> String {
        format!("{}\u{0}{}", self.scope, self.key)
    }
}

/// What the state remembers of a used idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub intent_id: Uuid,
    pub expires_at: Timestamp,
}

/// A new intent, validated at the edge; every field is final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewIntent {
    pub id: Uuid,
    pub intent_type: String,
    pub correlation_id: Uuid,
    pub from_agent: String,
    pub to_agent: String,
    pub reply_to: Option<String>,
    pub payload: Value,
    pub max_delivery_attempts: u32,
    pub deadline_at: Option<Timestamp>,
    pub remind_after_seconds: Option<u64>,
    pub remind_interval_seconds: Option<u64>,
    pub max_reminders: Option<u32>,
    pub escalate_to: Option<String>,
    pub human_task: Option<Value>,
    /// Delayed delivery (our extension of the create body): not enqueued before this time.
    #[serde(default)]
    pub deliver_at: Option<Timestamp>,
    /// A scenario's workflow, validated and normalised at the edge; its first step decides
    /// where the intent goes first.
    #[serde(default)]
    pub workflow: Option<Workflow>,
}

/// How the receiver resumes an intent (`POST /v1/intents/{id}/resume`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResumeAction {
    /// Completes with the body as `result`.
    Complete { result: Value },
    /// Fails with the body as `error`.
    Fail { error: Value },
    /// Moves to IN_PROGRESS (or records progress if already there).
    Progress { details: Map<String, Value> },
    /// Moves to WAITING.
    Wait {
        reason: WaitingReason,
        details: Map<String, Value>,
    },
    /// The control form, sent by the intent's owner: approves the current step, which puts
    /// any non-terminal intent IN_PROGRESS (one already there stays). Compare-and-set on the
    /// generation when `expected_policy_generation` is given.
    ApproveCurrentStep {
        expected_policy_generation: Option<u64>,
        reason: Option<String>,
    },
}

/// How a resolve ends the intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Resolution {
    Completed { result: Value },
    Failed { error: Value },
    Canceled { reason: String },
}

/// A change to one intent. `at` is the proposer's clock reading, used for timestamps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IntentCommand {
    Create {
        intent: NewIntent,
        at: Timestamp,
    },
    /// Hands the intent to a consumer under a lease that ends at `lease_until` (the proposer
    /// adds the agent's ack timeout to its clock). Compare-and-set on `expected_attempt` so
    /// that two consumers racing for the same intent cannot both win.
    Deliver {
        intent_id: Uuid,
        expected_attempt: u32,
        consumer: String,
        lease_until: Timestamp,
        at: Timestamp,
    },
    /// The lease of delivery `attempt` ran out unacknowledged. `retry_at` is when an HTTP
    /// agent gets the next push (the proposer adds backoff and jitter); other bindings see the
    /// intent again on their queue at once.
    ExpireLease {
        intent_id: Uuid,
        attempt: u32,
        retry_at: Timestamp,
        at: Timestamp,
    },
    /// The consumer holding the lease of `attempt` went away before settling it (an agent
    /// stream closed by its client): the intent is offered again at once, attempt counted,
    /// instead of waiting for the lease to run out. Compare-and-set on `attempt` and
    /// `consumer`, so a release that arrives after the lease changed hands changes nothing.
    ReleaseLease {
        intent_id: Uuid,
        attempt: u32,
        consumer: String,
        at: Timestamp,
    },
    /// The HTTP push of `attempt` failed. `retry_at: None` gives up now (dead letter).
    DeliveryFailed {
        intent_id: Uuid,
        attempt: u32,
        error: String,
        retry_at: Option<Timestamp>,
        at: Timestamp,
    },
    /// A delayed intent's `deliver_at` passed: enqueue it.
    Release {
        intent_id: Uuid,
        at: Timestamp,
    },
    /// Creates a new intent from a dead-lettered one; the old one stays FAILED.
    Replay {
        intent_id: Uuid,
        new_intent_id: Uuid,
        at: Timestamp,
    },
    /// A reminder of a WAITING_FOR_HUMAN intent is due (and maybe its escalation).
    Remind {
        intent_id: Uuid,
        at: Timestamp,
    },
    Acknowledge {
        intent_id: Uuid,
        attempt: u32,
        actor: String,
        at: Timestamp,
    },
    Resume {
        intent_id: Uuid,
        action: ResumeAction,
        actor: String,
        at: Timestamp,
    },
    Resolve {
        intent_id: Uuid,
        resolution: Resolution,
        actor: String,
        at: Timestamp,
    },
    /// The deadline passed.
    TimeOut {
        intent_id: Uuid,
        at: Timestamp,
    },
    UpdateControls {
        intent_id: Uuid,
        patch: Map<String, Value>,
        expected_policy_generation: Option<u64>,
        actor: String,
        reason: Option<String>,
        at: Timestamp,
    },
    UpdatePolicy {
        intent_id: Uuid,
        grants_patch: Option<Map<String, Value>>,
        envelope_patch: Option<Map<String, Value>>,
        expected_policy_generation: Option<u64>,
        actor: String,
        reason: Option<String>,
        at: Timestamp,
    },
    /// A time of workflow step `step_id` (its timer or its deadline) is due: apply decides
    /// what that means for the step. A compare-and-set on (current step, its attempt), so a
    /// tick that lost a race or repeats after a leader change is refused and changes nothing.
    AdvanceWorkflow {
        intent_id: Uuid,
        step_id: String,
        attempt: u32,
        at: Timestamp,
    },
}

impl IntentCommand {
    pub fn intent_id(&self) -> Uuid {
        match self {
            IntentCommand::Create { intent, .. } => intent.id,
            IntentCommand::Deliver { intent_id, .. }
            | IntentCommand::ExpireLease { intent_id, .. }
            | IntentCommand::ReleaseLease { intent_id, .. }
            | IntentCommand::DeliveryFailed { intent_id, .. }
            | IntentCommand::Release { intent_id, .. }
            | IntentCommand::Replay { intent_id, .. }
            | IntentCommand::Remind { intent_id, .. }
            | IntentCommand::Acknowledge { intent_id, .. }
            | IntentCommand::Resume { intent_id, .. }
            | IntentCommand::Resolve { intent_id, .. }
            | IntentCommand::TimeOut { intent_id, .. }
            | IntentCommand::UpdateControls { intent_id, .. }
            | IntentCommand::UpdatePolicy { intent_id, .. }
            | IntentCommand::AdvanceWorkflow { intent_id, .. } => *intent_id,
        }
    }

    pub fn at(&self) -> Timestamp {
        match self {
            IntentCommand::Create { at, .. }
            | IntentCommand::Deliver { at, .. }
            | IntentCommand::ExpireLease { at, .. }
            | IntentCommand::ReleaseLease { at, .. }
            | IntentCommand::DeliveryFailed { at, .. }
            | IntentCommand::Release { at, .. }
            | IntentCommand::Replay { at, .. }
            | IntentCommand::Remind { at, .. }
            | IntentCommand::Acknowledge { at, .. }
            | IntentCommand::Resume { at, .. }
            | IntentCommand::Resolve { at, .. }
            | IntentCommand::TimeOut { at, .. }
            | IntentCommand::UpdateControls { at, .. }
            | IntentCommand::UpdatePolicy { at, .. }
            | IntentCommand::AdvanceWorkflow { at, .. } => *at,
        }
    }
}

/// JSON with object keys sorted at every level and no insignificant whitespace, so that two
/// requests that differ only in key order or formatting hash the same. The workspace enables
/// serde_json's `preserve_order`, so plain serialization would keep the client's key order.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Hex SHA-256 of the canonical request: what an idempotency record remembers of it.
pub fn request_hash(request: &Value) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(canonical_json(request).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "é\n"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"é\n","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":"é\n","b":[1,{"x":1,"y":2}]}"#);
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&json!({"a": "é\n"})));
        assert_eq!(request_hash(&a).len(), 64);
    }
}
