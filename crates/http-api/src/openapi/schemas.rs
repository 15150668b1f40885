//! The wire shapes of the HTTP edge, as the OpenAPI document shows them.
//!
//! The handlers read bodies through the strict JSON parser (`validate::Body`, which tells a
//! 400 from a 422 and refuses duplicate keys) and write answers with the views in `views.rs`,
//! so these types are never built: they exist so that `utoipa` derives the document's
//! schemas from Rust definitions that sit beside the routes, instead of a document written
//! by hand. What keeps them true: the Python suite validates real answers against the served
//! document, and schemathesis drives every operation and checks each answer against it
//! (`tests/python/test_openapi.py`, `tests/run.sh`).
//!
//! Answers list the fields the server always sends as required and leave the others optional;
//! answer objects allow fields they do not list, so a field added to a view does not break
//! clients that validate. Request bodies list every field the parser accepts.

use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

// -------------------------------------------------------------------------------------------
// Errors

/// Every error answer of the API, whatever its status (`error.rs` builds it in one place).
#[derive(ToSchema)]
#[schema(title = "Error")]
pub struct ErrorAnswer {
    /// Always `false`.
    pub ok: bool,
    pub error: ErrorDetail,
}

/// What went wrong: a stable `code` (`schema_invalid`, `auth_failed`, `not_found`,
/// `invalid_transition`, `unavailable`, ...), a human message, and whether a retry of the
/// same request can succeed.
#[derive(ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

// -------------------------------------------------------------------------------------------
// Health, capabilities, cluster

/// `GET /health`: the node's view of the cluster. The 503 answer carries the same fields
/// beside `error`.
#[derive(ToSchema)]
pub struct HealthAnswer {
    /// Whether the node knows a leader and its clock agrees with the cluster's.
    pub ok: bool,
    pub node_id: u64,
    pub role: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub applied_index: u64,
    pub commit_index: Option<u64>,
    pub last_log_index: Option<u64>,
    /// The voters' node ids.
    pub members: Option<Vec<u64>>,
    #[schema(value_type = Option<Object>)]
    pub clock: Option<Value>,
}

/// `GET /v1/capabilities`.
#[derive(ToSchema)]
pub struct CapabilitiesAnswer {
    pub ok: bool,
    #[schema(min_items = 1)]
    pub capabilities: Vec<String>,
    /// Each matches `intent.*.v1`.
    pub supported_intent_types: Vec<String>,
}

/// `GET /v1/cluster/status`.
#[derive(ToSchema)]
pub struct ClusterStatusAnswer {
    pub ok: bool,
    #[schema(value_type = Object)]
    pub node: Value,
    #[schema(value_type = Object)]
    pub membership: Value,
}

/// `POST /v1/cluster/learners`.
#[derive(ToSchema)]
pub struct AddLearnerRequest {
    pub node_id: u64,
    /// `HOST:PORT` of the new node's Raft plane.
    pub raft_addr: String,
}

/// The membership after a change.
#[derive(ToSchema)]
pub struct MembershipAnswer {
    pub ok: bool,
    #[schema(value_type = Object)]
    pub membership: Value,
}

// -------------------------------------------------------------------------------------------
// Intents

/// `POST /v1/intents` (`api.intents.create.request.v1.json`). `from_agent` is honoured for
/// admin keys only; other keys send as their principal.
#[derive(ToSchema)]
pub struct CreateIntentRequest {
    /// `segment.segment.vN`, e.g. `payment.charge.v1`.
    #[schema(pattern = r"^[a-z0-9_]+(?:\.[a-z0-9_]+)+\.v[0-9]+$")]
    pub intent_type: String,
    pub correlation_id: Option<Uuid>,
    pub from_agent: Option<String>,
    pub to_agent: String,
    pub reply_to: Option<String>,
    #[schema(value_type = Object)]
    pub payload: Value,
    #[schema(format = DateTime)]
    pub deadline_at: Option<String>,
    pub remind_after_seconds: Option<u64>,
    pub remind_interval_seconds: Option<u64>,
    pub max_reminders: Option<u64>,
    pub escalate_to: Option<String>,
    pub max_delivery_attempts: Option<u64>,
    #[schema(value_type = Option<Object>)]
    pub human_task: Option<Value>,
    /// Holds the first delivery until then.
    #[schema(format = DateTime)]
    pub deliver_at: Option<String>,
}

/// The answer of a create: the intent is committed on a majority.
#[derive(ToSchema)]
pub struct CreateIntentAnswer {
    pub ok: bool,
    pub intent_id: Uuid,
    pub status: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// An intent as every route shows it (`views::intent`).
#[derive(ToSchema)]
pub struct IntentView {
    pub intent_id: Uuid,
    pub status: String,
    /// The same value as `status`.
    pub lifecycle_status: String,
    pub intent_type: String,
    pub correlation_id: String,
    pub from_agent: String,
    pub to_agent: String,
    pub reply_to: Option<String>,
    #[schema(value_type = Object)]
    pub payload: Value,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub delivery_attempt: u64,
    pub max_delivery_attempts: u64,
    #[schema(format = DateTime)]
    pub deadline_at: Option<String>,
    pub pending_with: Option<PendingWith>,
    #[schema(value_type = Option<Object>)]
    pub human_task: Option<Value>,
    pub policy_generation: u64,
    #[schema(value_type = Option<Object>)]
    pub controls: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub policy: Option<Value>,
    pub waiting_reason: Option<String>,
    pub dead_lettered: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub workflow: Option<Value>,
}

/// Who an intent waits for.
#[derive(ToSchema)]
pub struct PendingWith {
    /// `agent`, `human` or `internal`.
    #[schema(rename = "type")]
    pub kind: String,
    #[schema(rename = "ref")]
    pub reference: String,
}

/// `GET /v1/intents/{intent_id}`.
#[derive(ToSchema)]
pub struct IntentAnswer {
    pub ok: bool,
    pub intent: IntentView,
}

/// One lifecycle event; `seq` is gapless from 1 per intent.
#[derive(ToSchema)]
pub struct EventView {
    pub intent_id: Uuid,
    pub seq: u64,
    /// `intent.*`.
    pub event_type: String,
    pub status: String,
    #[schema(format = DateTime)]
    pub at: String,
    pub actor: Option<String>,
    pub waiting_reason: Option<String>,
    /// The agent that handled the step, when one did.
    pub handler: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

/// `GET /v1/intents/{intent_id}/events`: the events after `since`, in order.
#[derive(ToSchema)]
pub struct EventsAnswer {
    pub ok: bool,
    pub events: Vec<EventView>,
}

/// `POST /v1/intents/{intent_id}/resolve` (`api.intents.resolve.request.v1.json`).
#[derive(ToSchema)]
pub struct ResolveRequest {
    /// `COMPLETED` needs `result`, `FAILED` needs `error`, `CANCELED` needs `reason`.
    pub status: ResolveStatus,
    pub actor: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub reason: Option<String>,
}

/// How a resolve ends an intent.
#[derive(ToSchema)]
#[schema(rename_all = "UPPERCASE")]
pub enum ResolveStatus {
    Completed,
    Failed,
    Canceled,
}

/// The answer of a resolve: the terminal intent and its terminal event.
#[derive(ToSchema)]
pub struct ResolveAnswer {
    pub ok: bool,
    pub intent: IntentView,
    pub event: EventView,
    /// `{"delivered": true, "reply_to", "thread_id"}` or `{"delivered": false, "reason"}`.
    #[schema(value_type = Object)]
    pub completion_delivery: Value,
}

/// `POST /v1/intents/{intent_id}/resume`: either the control form (`approve_current_step`,
/// the owner's) or the receiver form, whose `action` (`complete`, the default, `fail`,
/// `progress`, `wait`) says what the rest of the body is: the result, the error, progress
/// details. The receiver form takes any other keys as its data.
#[derive(ToSchema)]
pub struct ResumeRequest {
    pub approve_current_step: Option<bool>,
    pub action: Option<ResumeVerb>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub expected_policy_generation: Option<u64>,
    /// For `wait`: `WAITING_FOR_HUMAN`, `WAITING_FOR_TOOL`, `WAITING_FOR_AGENT` (the default)
    /// or `WAITING_FOR_TIME`.
    pub waiting_reason: Option<String>,
}

/// What the receiver's resume does (absent: `complete`).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ResumeVerb {
    Complete,
    Fail,
    Progress,
    Wait,
}

/// `POST /v1/intents/{intent_id}/controls`.
#[derive(ToSchema)]
pub struct ControlsRequest {
    #[schema(value_type = Object)]
    pub controls_patch: Value,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub expected_policy_generation: Option<u64>,
}

/// `POST /v1/intents/{intent_id}/policy`.
#[derive(ToSchema)]
pub struct PolicyRequest {
    #[schema(value_type = Option<Object>)]
    pub grants_patch: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub envelope_patch: Option<Value>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub expected_policy_generation: Option<u64>,
}

/// The answer of resume, controls and policy: `applied` is false for an idempotent repeat.
#[derive(ToSchema)]
pub struct AppliedAnswer {
    pub ok: bool,
    pub applied: bool,
    pub policy_generation: u64,
    pub intent: IntentView,
}

/// `POST /v1/intents/{intent_id}/ack`: settles a poll or stream delivery.
#[derive(ToSchema)]
pub struct AckRequest {
    pub delivery_attempt: Option<u64>,
}

// -------------------------------------------------------------------------------------------
// Agents and delivery

/// A directory entry (`api.agents.*.response.v1.json`, plus `binding`).
#[derive(ToSchema)]
pub struct AgentView {
    pub address: String,
    pub service_account_id: String,
    pub service_account_name: String,
    pub display_name: Option<String>,
    pub status: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// How the agent receives: mode, lease length, and for HTTP the URL and `secret_hint`
    /// (shown to the agent itself and admins only), never the secret.
    #[schema(value_type = Option<Object>)]
    pub binding: Option<Value>,
}

/// `GET /v1/agents`.
#[derive(ToSchema)]
pub struct AgentsAnswer {
    pub ok: bool,
    pub agents: Vec<AgentView>,
}

/// `GET /v1/agents/{address}` and the answer of a binding change.
#[derive(ToSchema)]
pub struct AgentAnswer {
    pub ok: bool,
    pub agent: AgentView,
}

/// `PUT /v1/agents/{address}/binding`: how intents reach the agent.
#[derive(ToSchema)]
pub struct BindingRequest {
    pub delivery_mode: DeliveryMode,
    /// The HTTP binding's endpoint (https, or http to an allowed host).
    pub url: Option<String>,
    /// The HTTP binding's signing secret: `whsec_` + base64 of 24..64 bytes, or a plain
    /// string of at least 16 characters.
    pub secret: Option<String>,
    pub max_concurrency: Option<u64>,
    pub ack_timeout_seconds: Option<u64>,
    pub max_delivery_attempts: Option<u64>,
    pub display_name: Option<String>,
}

/// How intents reach an agent.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum DeliveryMode {
    Stream,
    Poll,
    Http,
}

/// `POST /v1/agents/{address}/intents/receive`: the poll binding's long poll.
#[derive(ToSchema)]
pub struct ReceiveRequest {
    /// Deliveries at most in one answer.
    pub max: Option<u64>,
    pub wait_seconds: Option<u64>,
}

/// One delivery to an agent (`views::delivery`): the agent stream's `data` and the long
/// poll's entries.
#[derive(ToSchema)]
pub struct DeliveryView {
    pub intent_id: Uuid,
    /// The agent's queue cursor.
    pub seq: u64,
    pub status: String,
    pub intent_type: String,
    pub from_agent: String,
    pub to_agent: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub delivery_attempt: u64,
}

/// The long poll's answer: what it leased, possibly nothing.
#[derive(ToSchema)]
pub struct ReceiveAnswer {
    pub ok: bool,
    pub deliveries: Vec<DeliveryView>,
}

/// `GET /v1/deliveries`: dead letters, newest last, with a cursor for the next page.
#[derive(ToSchema)]
pub struct DeadLettersAnswer {
    pub ok: bool,
    #[schema(value_type = Vec<Object>)]
    pub deliveries: Vec<Value>,
    pub next_cursor: Option<String>,
}

/// `GET /v1/deliveries/{intent_id}`.
#[derive(ToSchema)]
pub struct DeadLetterAnswer {
    pub ok: bool,
    #[schema(value_type = Object)]
    pub delivery: Value,
}

/// `POST /v1/deliveries/{intent_id}/replay`: a new intent with the dead one's content.
#[derive(ToSchema)]
pub struct ReplayAnswer {
    pub ok: bool,
    pub intent_id: Uuid,
    pub replayed_from: Uuid,
    pub applied: bool,
    #[schema(value_type = Object)]
    pub delivery: Value,
}

// -------------------------------------------------------------------------------------------
// Inbox and approvals

/// An inbox thread (one per intent that reached a person or a `reply_to` agent).
#[derive(ToSchema)]
pub struct ThreadView {
    pub thread_id: Uuid,
    pub intent_id: Option<Uuid>,
    pub owner_agent: Option<String>,
    pub title: Option<String>,
    pub status: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub timeline: Option<Vec<Value>>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub messages: Option<Vec<Value>>,
}

/// `GET /v1/inbox`.
#[derive(ToSchema)]
pub struct ThreadsAnswer {
    pub ok: bool,
    pub threads: Vec<ThreadView>,
}

/// `GET /v1/inbox/{thread_id}` and the answers of delegate.
#[derive(ToSchema)]
pub struct ThreadAnswer {
    pub ok: bool,
    pub thread: ThreadView,
}

/// `GET /v1/inbox/changes`: the owner's change feed from `cursor`.
#[derive(ToSchema)]
pub struct ChangesAnswer {
    pub ok: bool,
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<Value>,
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

/// `POST /v1/inbox/{thread_id}/reply`.
#[derive(ToSchema)]
pub struct ReplyRequest {
    pub message: String,
}

/// The answer of a reply: the new message's id and the thread with it.
#[derive(ToSchema)]
pub struct ReplyAnswer {
    pub ok: bool,
    pub message_id: Uuid,
    pub thread: ThreadView,
}

/// `POST /v1/inbox/{thread_id}/delegate`.
#[derive(ToSchema)]
pub struct DelegateRequest {
    pub delegate_to: String,
    pub note: Option<String>,
}

/// `POST /v1/inbox/{thread_id}/approve` and `/reject`.
#[derive(ToSchema)]
pub struct InboxDecisionRequest {
    pub comment: Option<String>,
    /// Data a human task asks for (`form_schema`, `evidence`).
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// One of the task's `allowed_outcomes`.
    pub outcome: Option<String>,
}

/// The answer of an approve or reject: the thread and the intent it moved.
#[derive(ToSchema)]
pub struct InboxDecisionAnswer {
    pub ok: bool,
    pub thread: ThreadView,
    pub decision: String,
    pub comment: Option<String>,
    #[schema(format = DateTime)]
    pub decided_at: String,
    pub intent: IntentView,
}

/// `POST /v1/inbox/{thread_id}/messages/delete`.
#[derive(ToSchema)]
pub struct DeleteMessagesRequest {
    pub mode: DeleteMode,
    pub message_ids: Option<Vec<Uuid>>,
    pub limit: Option<u64>,
}

/// Whose copies a delete removes: the caller's, or everyone's.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum DeleteMode {
    #[schema(rename = "self")]
    Own,
    Both,
}

/// The answer of a delete: the thread after it.
#[derive(ToSchema)]
pub struct DeleteMessagesAnswer {
    pub ok: bool,
    pub thread: ThreadView,
    pub mode: String,
}

/// `POST /v1/approvals/{approval_id}/decision`.
#[derive(ToSchema)]
pub struct ApprovalDecisionRequest {
    pub decision: ApprovalDecision,
    pub comment: Option<String>,
}

/// An approval's two outcomes.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ApprovalDecision {
    Approve,
    Reject,
}

/// The recorded decision.
#[derive(ToSchema)]
pub struct ApprovalAnswer {
    pub ok: bool,
    pub approval: ApprovalView,
}

/// One approval decision.
#[derive(ToSchema)]
pub struct ApprovalView {
    pub approval_id: Uuid,
    pub decision: String,
    pub comment: Option<String>,
    #[schema(format = DateTime)]
    pub decided_at: String,
}

// -------------------------------------------------------------------------------------------
// Webhooks

/// `POST /v1/webhooks/subscriptions` (an upsert by `callback_url`).
#[derive(ToSchema)]
pub struct SubscriptionRequest {
    pub callback_url: String,
    pub event_types: Vec<String>,
    /// Generated (and returned once) when absent.
    pub secret: Option<String>,
    pub active: Option<bool>,
    pub description: Option<String>,
}

/// A subscription; `secret` only in the answer of the upsert that generated it.
#[derive(ToSchema)]
pub struct SubscriptionView {
    pub subscription_id: Uuid,
    pub owner_agent: String,
    pub callback_url: String,
    pub event_types: Vec<String>,
    pub active: bool,
    pub description: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub secret: Option<String>,
    pub secret_hint: Option<String>,
}

/// The answer of an upsert.
#[derive(ToSchema)]
pub struct SubscriptionAnswer {
    pub ok: bool,
    pub subscription: SubscriptionView,
}

/// `GET /v1/webhooks/subscriptions`.
#[derive(ToSchema)]
pub struct SubscriptionsAnswer {
    pub ok: bool,
    pub subscriptions: Vec<SubscriptionView>,
}

/// `DELETE /v1/webhooks/subscriptions/{subscription_id}`.
#[derive(ToSchema)]
pub struct RevokedSubscriptionAnswer {
    pub ok: bool,
    pub subscription_id: Uuid,
    #[schema(format = DateTime)]
    pub revoked_at: String,
}

/// `POST /v1/webhooks/events`.
#[derive(ToSchema)]
pub struct WebhookEventRequest {
    pub event_type: String,
    pub source: String,
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// A published event with its delivery counters.
#[derive(ToSchema)]
pub struct WebhookEventAnswer {
    pub ok: bool,
    pub event_id: Uuid,
    pub owner_agent: String,
    pub event_type: String,
    pub queued_deliveries: u64,
    pub processed_deliveries: u64,
    pub delivered: u64,
    pub pending: u64,
    pub dead_lettered: u64,
    #[schema(format = DateTime)]
    pub replayed_at: Option<String>,
}

// -------------------------------------------------------------------------------------------
// Scenarios

/// `POST /v1/scenarios/apply` and `/validate` (`api.scenarios.bundle.request.v1.json`):
/// the agents and humans a scenario names, its workflow, and the intent to submit. Keys
/// intentd does not know are ignored and listed in the answer's `warnings`.
#[derive(ToSchema)]
pub struct ScenarioBundle {
    pub scenario_id: String,
    pub title: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub agents: Option<Vec<Value>>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub humans: Option<Vec<Value>>,
    #[schema(value_type = Option<Object>)]
    pub workflow: Option<Value>,
    /// `type` (the intent type), `payload`, `deadline_at`, ...
    #[schema(value_type = Object)]
    pub intent: Value,
}

/// The answer of an apply: the submitted intent and the agents it made.
#[derive(ToSchema)]
pub struct ScenarioApplyAnswer {
    pub ok: bool,
    pub intent_id: Uuid,
    pub scenario_id: String,
    pub status: String,
    pub idempotent: bool,
    #[schema(value_type = Vec<Object>)]
    pub agents: Vec<Value>,
    #[schema(value_type = Option<Object>)]
    pub pending_with: Option<Value>,
    #[schema(format = DateTime)]
    pub deadline_at: Option<String>,
    pub warnings: Option<Vec<String>>,
}

/// The answer of a validate: whether the bundle would apply, and why not.
#[derive(ToSchema)]
pub struct ScenarioValidateAnswer {
    pub ok: bool,
    pub valid: bool,
    #[schema(value_type = Vec<Object>)]
    pub errors: Vec<Value>,
    pub warnings: Vec<String>,
    pub scenario_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub plan: Option<Value>,
}

// -------------------------------------------------------------------------------------------
// Keys

/// `POST /v1/admin/keys`.
#[derive(ToSchema)]
pub struct CreateKeyRequest {
    pub name: String,
    /// `agent` needs `address`.
    pub role: KeyRole,
    pub address: Option<String>,
}

/// What a key may do (README, Roles).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum KeyRole {
    Admin,
    Client,
    Agent,
}

/// A key as listed (never its secret).
#[derive(ToSchema)]
pub struct KeyView {
    pub key_id: Uuid,
    pub name: String,
    pub role: String,
    pub address: Option<String>,
    pub principal: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub revoked: bool,
}

/// The answer of a create: the key's fields and, once, the secret itself.
#[derive(ToSchema)]
pub struct CreatedKeyAnswer {
    pub ok: bool,
    pub key: String,
    pub key_id: Uuid,
    pub name: String,
    pub role: String,
    pub address: Option<String>,
    pub principal: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub revoked: bool,
}

/// `GET /v1/admin/keys`.
#[derive(ToSchema)]
pub struct KeysAnswer {
    pub ok: bool,
    pub keys: Vec<KeyView>,
}

/// `DELETE /v1/admin/keys/{key_id}`.
#[derive(ToSchema)]
pub struct RevokedKeyAnswer {
    pub ok: bool,
    pub key_id: Uuid,
    pub revoked: bool,
}

// -------------------------------------------------------------------------------------------
// Mesh

/// `POST /v1/mesh/heartbeat` (optional body).
#[derive(ToSchema)]
pub struct HeartbeatRequest {
    /// `intents_total`, `intents_succeeded`, `intents_failed`, `avg_latency_ms`, `cost_usd`.
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
}

/// A fleet entry: health, binding, streams, leases, backlog, folded metrics.
#[derive(ToSchema)]
pub struct MeshAgentView {
    pub address: String,
    pub address_id: String,
    /// `healthy`, `degraded`, `unreachable` or `killed`.
    pub health: String,
    pub killed: bool,
    /// HTTP pushes to the agent that failed in a row (3 make it degraded, 5 unreachable).
    pub push_failures: u32,
    pub last_push_error: Option<String>,
}

/// The answer of a heartbeat: `replicated` is false when it was coalesced.
#[derive(ToSchema)]
pub struct HeartbeatAnswer {
    pub ok: bool,
    pub address: String,
    #[schema(format = DateTime)]
    pub received_at: String,
    pub replicated: bool,
    pub health: String,
    pub agent: MeshAgentView,
}

/// `GET /v1/mesh/agents`.
#[derive(ToSchema)]
pub struct MeshAgentsAnswer {
    pub ok: bool,
    pub agents: Vec<MeshAgentView>,
    pub count: u64,
}

/// `GET /v1/mesh/agents/{address}` (with recent mesh events) and the answers of kill and
/// resume (without).
#[derive(ToSchema)]
pub struct MeshAgentAnswer {
    pub ok: bool,
    pub agent: MeshAgentView,
    pub events: Option<Vec<MeshEventView>>,
}

/// `POST /v1/mesh/agents/{address}/kill`.
#[derive(ToSchema)]
pub struct KillRequest {
    pub reason: Option<String>,
}

/// A kill, resume or health change.
#[derive(ToSchema)]
pub struct MeshEventView {
    pub event_id: Uuid,
    pub seq: u64,
    pub event_type: String,
    pub address: String,
    pub actor: Option<String>,
    #[schema(format = DateTime)]
    pub at: String,
    pub from_health: Option<String>,
    pub to_health: Option<String>,
}

/// `GET /v1/mesh/events`.
#[derive(ToSchema)]
pub struct MeshEventsAnswer {
    pub ok: bool,
    pub events: Vec<MeshEventView>,
    pub next_since: u64,
}

// -------------------------------------------------------------------------------------------
// Operators' views (the console)

/// `GET /v1/admin/intents`: intents newest first, with the log index to follow the feed from.
#[derive(ToSchema)]
pub struct AdminIntentsAnswer {
    pub ok: bool,
    #[schema(value_type = Vec<Object>)]
    pub intents: Vec<Value>,
    pub cursor: u64,
    /// Where the next page starts, when there is one.
    pub next_before: Option<String>,
}

/// `GET /v1/admin/intents/{intent_id}`: an intent with what its timeline needs.
#[derive(ToSchema)]
pub struct AdminIntentAnswer {
    pub ok: bool,
    #[schema(value_type = Object)]
    pub summary: Value,
    pub intent: IntentView,
    pub events: Vec<EventView>,
    pub events_from_seq: u64,
    #[schema(value_type = Option<Object>)]
    pub dead_letter: Option<Value>,
}

/// `GET /v1/admin/webhooks`: every subscription's delivery counts and the latest attempts.
#[derive(ToSchema)]
pub struct AdminWebhooksAnswer {
    pub ok: bool,
    #[schema(value_type = Vec<Object>)]
    pub subscriptions: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    pub recent_attempts: Vec<Value>,
    /// Whether more delivery records exist than one overview reads.
    pub truncated: bool,
}
