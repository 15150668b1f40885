//! The state machine's rules: `apply` turns one command and a read-only view of the state into
//! the writes to store and the reply, or a rejection. It is pure (no clock, no I/O) and
//! deterministic, so every replica applying the same entry writes the same thing.
//!
//! `mod.rs` dispatches; each concern has its file: intent transitions (`intent`), the
//! per-change bookkeeping (`change`), inbox feeds (`inbox`), webhooks (`webhooks`) and agents
//! (`agents`).

mod agents;
mod change;
mod inbox;
mod intent;
mod mesh;
mod retention;
mod webhooks;
mod workflow;

use agents::*;
use change::*;
use inbox::*;
use intent::*;
use mesh::{delivery_settled, hold, killed, push_failed};
use retention::*;
use webhooks::*;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::address::{state_key, AgentAddress};
use crate::agent::{is_http, is_inbox};
use crate::webhook::derived_id;
use crate::{
    AgentConfig, ApiKey, Command, DeadLetter, DueEntry, DueKind, Event, EventType,
    IdempotencyRecord, InboxChange, InboxChangeKind, InboxMessage, InboxThread, Intent,
    IntentCommand, Lease, NewIntent, PendingWith, PendingWithKind, Rejection, Resolution,
    ResumeAction, Status, Subscription, ThreadStatus, Timestamp, WaitingReason, WebhookDelivery,
    WebhookDeliveryStatus, WebhookEvent, WebhookOutcome, Workflow,
};

/// Read access to the replicated state, as much as [`apply`] needs.
///
/// Addresses passed in are normalized (no `agent://`).
pub trait StateView {
    fn intent(&self, id: &Uuid) -> Option<Intent>;
    fn idempotency(&self, storage_key: &str) -> Option<IdempotencyRecord>;
    /// The newest cursor handed out in `agent`'s delivery queue (0 if none yet).
    fn agent_cursor(&self, agent: &str) -> u64;
    fn api_key_by_id(&self, id: &Uuid) -> Option<(String, ApiKey)>;
    fn agent_config(&self, address: &str) -> Option<AgentConfig>;
    /// Every subscription of `owner`, revoked ones included.
    fn subscriptions_of(&self, owner: &str) -> Vec<Subscription>;
    fn subscription(&self, id: &Uuid) -> Option<Subscription>;
    fn inbox_thread(&self, thread_id: &Uuid) -> Option<InboxThread>;
    /// The newest `seq` of `owner`'s inbox change feed (0 if none yet).
    fn inbox_cursor(&self, owner: &str) -> u64;
    fn webhook_event(&self, event_id: &Uuid) -> Option<WebhookEvent>;
    fn webhook_delivery(&self, delivery_id: &Uuid) -> Option<WebhookDelivery>;
    fn webhook_deliveries(&self, event_id: &Uuid) -> Vec<WebhookDelivery>;
    fn dead_letter(&self, intent_id: &Uuid) -> Option<DeadLetter>;
    /// The retention set by the last `SetRetention` (keep forever if none).
    fn retention(&self) -> crate::Retention;
    fn mesh_agent(&self, address: &str) -> Option<crate::mesh::MeshAgent>;
    /// The intents a kill of `agent` holds, oldest first.
    fn mesh_holds(&self, agent: &str) -> Vec<Uuid>;
    /// The newest `seq` of the mesh event log (0 if none yet).
    fn mesh_event_cursor(&self) -> u64;
}

/// One change the state machine must store. Applying all writes of one command (together
/// with the applied log index) atomically is the state machine's job. Writes are stored in
/// order; a later write of the same record replaces an earlier one.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Intent(Box<Intent>),
    Event(Event),
    Idempotency {
        key: String,
        record: IdempotencyRecord,
    },
    /// `intent_id` is offered to `agent` at `cursor`; cursors per agent only grow.
    AgentQueue {
        agent: String,
        cursor: u64,
        intent_id: Uuid,
    },
    ApiKey {
        key_hash: String,
        key: ApiKey,
    },
    /// Stores (or replaces) an agent registration, keyed by its normalized address.
    AgentConfig(Box<AgentConfig>),
    RemoveAgent {
        address: String,
    },
    /// Adds an entry to the due-time index.
    Due {
        at: Timestamp,
        kind: DueKind,
        id: Uuid,
    },
    /// Removes an entry of the due-time index (absent is fine).
    Undue {
        at: Timestamp,
        kind: DueKind,
        id: Uuid,
    },
    DeadLetter(DeadLetter),
    /// Stores a thread; the store keeps the per-owner index in step with `owner`.
    InboxThread(Box<InboxThread>),
    /// Appends to `owner`'s change feed (`change.seq` is the next one of that owner).
    InboxChange {
        owner: String,
        change: InboxChange,
    },
    /// Stores a subscription; the store keeps the per-owner index.
    Subscription(Box<Subscription>),
    WebhookEvent(Box<WebhookEvent>),
    /// Stores a delivery; the store keeps the per-event index.
    WebhookDelivery(Box<WebhookDelivery>),
    /// Stores the cluster's retention setting.
    Retention(crate::Retention),
    /// Removes the intent and every record kept for it: its events, its idempotency claims,
    /// its agent queue entries (`agent_cursor` and `earlier_cursors`), its dead letter, its
    /// inbox thread (and that thread's index entry), and the webhook events derived from its
    /// events with their deliveries and those deliveries' due entries. The store knows where
    /// each lives; the intent's own due entries come as `Undue` writes before it.
    Purge(Box<Intent>),
    /// Stores (or replaces) an agent's mesh record.
    MeshAgent(Box<crate::mesh::MeshAgent>),
    /// A kill of `agent` holds `intent_id`.
    MeshHold {
        agent: String,
        intent_id: Uuid,
    },
    /// The hold ended (absent is fine).
    MeshUnhold {
        agent: String,
        intent_id: Uuid,
    },
    /// Appends to the mesh event log (`seq` is the next one).
    MeshEvent(Box<crate::mesh::MeshEvent>),
}

/// What the proposer is told about an applied command.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Reply {
    /// The intent after the command and the events it appended. `replayed` says the command
    /// was an idempotent repeat and changed nothing. A `Replay` answers with the new intent.
    Intent {
        intent: Box<Intent>,
        events: Vec<Event>,
        replayed: bool,
    },
    Done,
    Agent(Box<AgentConfig>),
    Thread(Box<InboxThread>),
    Subscription(Box<Subscription>),
    /// The event and every delivery it has (after a publish or a replay).
    WebhookEvent {
        event: Box<WebhookEvent>,
        deliveries: Vec<WebhookDelivery>,
    },
    WebhookDelivery(Box<WebhookDelivery>),
    /// An agent's mesh record after a heartbeat, kill, resume or health change.
    Mesh(Box<crate::mesh::MeshAgent>),
}

/// The effect of one accepted command.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub writes: Vec<Write>,
    pub reply: Reply,
}

/// Decides what `command` does to `state`. Deterministic: the same state and command always
/// give the same answer, on every replica. A rejection leaves the state untouched.
pub fn apply(state: &impl StateView, command: &Command) -> Result<Applied, Rejection> {
    match command {
        Command::Intent {
            command,
            idempotency,
        } => {
            if let Some(claim) = idempotency {
                let stored = state
                    .idempotency(&claim.storage_key())
                    .filter(|r| r.expires_at > command.at());
                if let Some(record) = stored {
                    if record.request_hash != claim.request_hash {
                        return Err(Rejection::IdempotencyConflict);
                    }
                    let intent = state
                        .intent(&record.intent_id)
                        .ok_or(Rejection::NotFound(record.intent_id))?;
                    return Ok(Applied {
                        writes: Vec::new(),
                        reply: Reply::Intent {
                            intent: Box::new(intent),
                            events: Vec::new(),
                            replayed: true,
                        },
                    });
                }
            }
            let mut applied = apply_intent(state, command)?;
            if let Some(claim) = idempotency {
                // A replay answers with the new intent; a repeat must find that one again.
                let intent_id = match &applied.reply {
                    Reply::Intent { intent, .. } => intent.id,
                    _ => command.intent_id(),
                };
                applied.writes.push(Write::Idempotency {
                    key: claim.storage_key(),
                    record: IdempotencyRecord {
                        request_hash: claim.request_hash.clone(),
                        intent_id,
                        expires_at: claim.expires_at,
                    },
                });
            }
            Ok(applied)
        }
        Command::PutApiKey { key_hash, key } => {
            if state.api_key_by_id(&key.id).is_some() {
                return Err(Rejection::Invalid(format!("api key {} exists", key.id)));
            }
            Ok(Applied {
                writes: vec![Write::ApiKey {
                    key_hash: key_hash.clone(),
                    key: key.clone(),
                }],
                reply: Reply::Done,
            })
        }
        Command::RevokeApiKey { id } => {
            let (key_hash, mut key) = state
                .api_key_by_id(id)
                .ok_or_else(|| Rejection::Invalid(format!("no api key {id}")))?;
            key.revoked = true;
            Ok(Applied {
                writes: vec![Write::ApiKey { key_hash, key }],
                reply: Reply::Done,
            })
        }
        Command::RegisterAgent { config } => register_agent(state, config),
        Command::RemoveAgent { address, .. } => {
            let address = state_key(address);
            if state.agent_config(address).is_none() {
                return Err(Rejection::Invalid(format!(
                    "agent {address} is not registered"
                )));
            }
            Ok(Applied {
                writes: vec![Write::RemoveAgent {
                    address: address.to_string(),
                }],
                reply: Reply::Done,
            })
        }
        Command::InboxReply {
            thread_id,
            message_id,
            author,
            text,
            at,
        } => {
            let mut thread = state
                .inbox_thread(thread_id)
                .ok_or(Rejection::NotFound(*thread_id))?;
            if thread.messages.iter().any(|m| m.message_id == *message_id) {
                return Err(Rejection::AlreadyExists(*message_id));
            }
            thread.messages.push(InboxMessage {
                message_id: *message_id,
                author: author.clone(),
                text: text.clone(),
                at: *at,
                deleted: false,
            });
            let mut inbox = Inbox::default();
            inbox.touch(state, &mut thread, InboxChangeKind::Messages, *at);
            Ok(inbox.finish_thread(thread))
        }
        Command::InboxDelegate {
            thread_id, to, at, ..
        } => delegate(state, thread_id, to, *at),
        Command::InboxDeleteMessages {
            thread_id,
            message_ids,
            at,
            ..
        } => {
            let mut thread = state
                .inbox_thread(thread_id)
                .ok_or(Rejection::NotFound(*thread_id))?;
            if message_ids.is_empty() {
                return Err(Rejection::Invalid("no message ids to delete".into()));
            }
            for id in message_ids {
                let message = thread
                    .messages
                    .iter_mut()
                    .find(|m| m.message_id == *id)
                    .ok_or_else(|| {
                        Rejection::Invalid(format!("thread {thread_id} has no message {id}"))
                    })?;
                message.deleted = true;
                message.text.clear();
            }
            let mut inbox = Inbox::default();
            inbox.touch(state, &mut thread, InboxChangeKind::Messages, *at);
            Ok(inbox.finish_thread(thread))
        }
        Command::UpsertSubscription { subscription } => upsert_subscription(state, subscription),
        Command::RevokeSubscription { id, at } => {
            let mut sub = state.subscription(id).ok_or(Rejection::NotFound(*id))?;
            if sub.revoked_at.is_none() {
                sub.revoked_at = Some(*at);
            }
            sub.active = false;
            sub.updated_at = *at;
            Ok(Applied {
                writes: vec![Write::Subscription(Box::new(sub.clone()))],
                reply: Reply::Subscription(Box::new(sub)),
            })
        }
        Command::PublishEvent { event } => {
            if state.webhook_event(&event.event_id).is_some() {
                return Err(Rejection::AlreadyExists(event.event_id));
            }
            let mut event = event.clone();
            event.owner = state_key(&event.owner).to_string();
            let subs = state.subscriptions_of(&event.owner);
            let mut writes = Vec::new();
            let deliveries = fan_out(&event, &subs, &mut writes);
            Ok(Applied {
                writes,
                reply: Reply::WebhookEvent {
                    event: Box::new(event),
                    deliveries,
                },
            })
        }
        Command::WebhookDeliveryOutcome {
            delivery_id,
            attempt,
            replays,
            outcome,
            ..
        } => webhook_outcome(state, delivery_id, (*attempt, *replays), outcome),
        Command::ReplayWebhookEvent { event_id, at } => {
            let event = state
                .webhook_event(event_id)
                .ok_or(Rejection::NotFound(*event_id))?;
            let mut writes = Vec::new();
            let mut deliveries = state.webhook_deliveries(event_id);
            for d in &mut deliveries {
                if let Some(old) = d.next_attempt_at {
                    writes.push(Write::Undue {
                        at: old,
                        kind: DueKind::WebhookDelivery,
                        id: d.delivery_id,
                    });
                }
                d.attempts = 0;
                d.replays += 1;
                d.status = WebhookDeliveryStatus::Pending;
                d.next_attempt_at = Some(*at);
                d.last_error = None;
                writes.push(Write::Due {
                    at: *at,
                    kind: DueKind::WebhookDelivery,
                    id: d.delivery_id,
                });
                writes.push(Write::WebhookDelivery(Box::new(d.clone())));
            }
            Ok(Applied {
                writes,
                reply: Reply::WebhookEvent {
                    event: Box::new(event),
                    deliveries,
                },
            })
        }
        Command::SetRetention { retention } => set_retention(state, retention),
        Command::Purge { intent_id, at } => purge(state, intent_id, *at),
        Command::MeshHeartbeat {
            address,
            metrics,
            event_id,
            at,
        } => mesh::heartbeat(state, address, metrics.as_ref(), *event_id, *at),
        Command::MeshKill {
            address,
            actor,
            reason,
            event_id,
            at,
        } => mesh::kill(state, address, actor, reason.as_deref(), *event_id, *at),
        Command::MeshResume {
            address,
            actor,
            event_id,
            at,
        } => mesh::resume(state, address, actor, *event_id, *at),
        Command::MeshHealth {
            address,
            health,
            reason,
            event_id,
            at,
        } => mesh::set_health(state, address, *health, reason, *event_id, *at),
    }
}

/// JSON merge patch (RFC 7386) one level deep: `null` removes a key, anything else replaces it.
fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
