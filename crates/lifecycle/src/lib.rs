//! The intent lifecycle as pure data and rules.
//!
//! Every change to the replicated state is a [`Command`]. [`apply`] turns a command and a
//! read-only view of the current state into the writes it causes (or a [`Rejection`]) without
//! reading a clock, a random source or the network: whatever is nondeterministic (ids,
//! timestamps, request hashes) was decided by the proposer and travels inside the command.
//! That is what lets every replica apply the same log to the same state, and what lets the
//! rules be tested exhaustively without a runtime.

mod access;
pub mod address;
pub mod agent;
mod apply;
mod command;
mod due;
pub mod inbox;
mod intent;
pub mod json;
pub mod mesh;
mod retention;
mod status;
pub mod validate;
pub mod webhook;
pub mod workflow;

pub use access::{hash_key, presented_secret, usable_key, AccessError, ApiKey, Role, KEY_REQUIRED};
pub use address::{same_address, state_key, AddressError, AgentAddress};
pub use agent::{AgentConfig, Binding, DEFAULT_ACK_TIMEOUT_SECS};
pub use apply::{apply, Applied, Reply, StateView, Write};
pub use command::{
    canonical_json, request_hash, Command, IdempotencyClaim, IdempotencyRecord, IntentCommand,
    NewIntent, Resolution, ResumeAction,
};
pub use due::{DeadLetter, DueEntry, DueKind};
pub use inbox::{InboxChange, InboxChangeKind, InboxMessage, InboxThread, ThreadStatus};
pub use intent::{new_intent_id, Event, EventType, Intent, Lease, PendingWith, PendingWithKind};
pub use retention::Retention;
pub use status::{Status, WaitingReason};
pub use webhook::{
    Subscription, WebhookCounters, WebhookDelivery, WebhookDeliveryStatus, WebhookEvent,
    WebhookOutcome,
};
pub use workflow::{StepKind, StepState, Workflow, WorkflowStep};

/// Timestamps are UTC instants; the proposer reads the clock, never apply.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Why a command was refused. A rejection changes nothing in the state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Rejection {
    #[error("intent {0} not found")]
    NotFound(uuid::Uuid),
    #[error("intent {0} already exists")]
    AlreadyExists(uuid::Uuid),
    #[error("illegal transition from {from} to {to}")]
    IllegalTransition { from: Status, to: Status },
    /// `to` is the status the command tried to reach, when it names one.
    #[error("intent is terminal ({from}) and can no longer change{}", to.map(|t| format!(": {from} -> {t} is not allowed")).unwrap_or_default())]
    Terminal { from: Status, to: Option<Status> },
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
    #[error("stale delivery attempt: expected {expected}, current {current}")]
    StaleAttempt { expected: u32, current: u32 },
    #[error("policy generation mismatch: expected {expected}, current {current}")]
    PolicyGenerationMismatch { expected: u64, current: u64 },
    #[error("{0}")]
    Invalid(String),
}
