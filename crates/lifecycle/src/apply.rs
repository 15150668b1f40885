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
    WebhookDeliveryStatus, WebhookEvent, WebhookOutcome,
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
            outcome,
            ..
        } => webhook_outcome(state, delivery_id, *attempt, outcome),
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
    }
}

fn register_agent(state: &impl StateView, config: &AgentConfig) -> Result<Applied, Rejection> {
    let mut config = config.clone();
    // Edges register only parsed addresses, which have no surrounding slashes; the trim stays
    // so entries written before `AgentAddress` existed replay to the state they made then.
    let path = config.address.path().trim_matches('/');
    if path.is_empty() {
        return Err(Rejection::Invalid("the agent address is empty".into()));
    }
    config.address = AgentAddress::from_stored(path);
    if config.ack_timeout_secs == 0 {
        return Err(Rejection::Invalid(
            "ack_timeout_seconds must be >= 1".into(),
        ));
    }
    if config.max_delivery_attempts == Some(0) {
        return Err(Rejection::Invalid(
            "max_delivery_attempts must be >= 1".into(),
        ));
    }
    if let crate::Binding::Http {
        url,
        max_concurrency,
        ..
    } = &config.binding
    {
        if url.is_empty() || *max_concurrency == 0 {
            return Err(Rejection::Invalid(
                "an http binding needs a url and max_concurrency >= 1".into(),
            ));
        }
    }
    if let Some(existing) = state.agent_config(config.address.path()) {
        config.created_at = existing.created_at;
    }
    Ok(Applied {
        writes: vec![Write::AgentConfig(Box::new(config.clone()))],
        reply: Reply::Agent(Box::new(config)),
    })
}

fn delegate(
    state: &impl StateView,
    thread_id: &Uuid,
    to: &str,
    at: Timestamp,
) -> Result<Applied, Rejection> {
    let mut thread = state
        .inbox_thread(thread_id)
        .ok_or(Rejection::NotFound(*thread_id))?;
    if thread.status == ThreadStatus::Resolved {
        return Err(Rejection::Invalid(format!(
            "thread {thread_id} is resolved"
        )));
    }
    let new_owner = state_key(to).to_string();
    if new_owner.is_empty() || new_owner == thread.owner {
        return Err(Rejection::Invalid(format!(
            "thread {thread_id} is already with {new_owner:?}"
        )));
    }
    let mut inbox = Inbox::default();
    inbox.move_to(state, &mut thread, new_owner, at);
    let mut applied = inbox.finish_thread(thread);
    if let Some(mut intent) = state.intent(&applied_thread_intent(&applied)) {
        if !intent.status.is_terminal() {
            intent.inbox_owner = Some(to.to_string());
            intent.pending_with = pending_with(&intent);
            intent.updated_at = at;
            applied.writes.push(Write::Intent(Box::new(intent)));
        }
    }
    Ok(applied)
}

fn applied_thread_intent(applied: &Applied) -> Uuid {
    match &applied.reply {
        Reply::Thread(t) => t.intent_id,
        _ => Uuid::nil(),
    }
}

fn upsert_subscription(
    state: &impl StateView,
    subscription: &Subscription,
) -> Result<Applied, Rejection> {
    let mut sub = subscription.clone();
    sub.owner = state_key(&sub.owner).to_string();
    if sub.callback_url.is_empty() || sub.event_types.is_empty() {
        return Err(Rejection::Invalid(
            "a subscription needs a callback_url and at least one event type".into(),
        ));
    }
    let existing = state.subscriptions_of(&sub.owner);
    if let Some(same) = existing.iter().find(|s| s.callback_url == sub.callback_url) {
        sub.id = same.id;
        sub.created_at = same.created_at;
    } else if state.subscription(&sub.id).is_some() {
        return Err(Rejection::AlreadyExists(sub.id));
    }
    if sub.active {
        sub.revoked_at = None;
    }
    Ok(Applied {
        writes: vec![Write::Subscription(Box::new(sub.clone()))],
        reply: Reply::Subscription(Box::new(sub)),
    })
}

/// One pending delivery, due at the event's time, per active matching subscription.
fn fan_out(
    event: &WebhookEvent,
    subs: &[Subscription],
    writes: &mut Vec<Write>,
) -> Vec<WebhookDelivery> {
    writes.push(Write::WebhookEvent(Box::new(event.clone())));
    let mut deliveries = Vec::new();
    for sub in subs
        .iter()
        .filter(|s| s.active && s.matches(&event.event_type))
    {
        let delivery = WebhookDelivery {
            delivery_id: derived_id(&event.event_id, sub.id.as_bytes()),
            event_id: event.event_id,
            subscription_id: sub.id,
            attempts: 0,
            status: WebhookDeliveryStatus::Pending,
            next_attempt_at: Some(event.at),
            last_error: None,
        };
        writes.push(Write::Due {
            at: event.at,
            kind: DueKind::WebhookDelivery,
            id: delivery.delivery_id,
        });
        writes.push(Write::WebhookDelivery(Box::new(delivery.clone())));
        deliveries.push(delivery);
    }
    deliveries
}

fn webhook_outcome(
    state: &impl StateView,
    delivery_id: &Uuid,
    attempt: u32,
    outcome: &WebhookOutcome,
) -> Result<Applied, Rejection> {
    let mut d = state
        .webhook_delivery(delivery_id)
        .ok_or(Rejection::NotFound(*delivery_id))?;
    if attempt != d.attempts {
        return Err(Rejection::StaleAttempt {
            expected: attempt,
            current: d.attempts,
        });
    }
    if d.status != WebhookDeliveryStatus::Pending {
        return Err(Rejection::Invalid(format!(
            "webhook delivery {delivery_id} is no longer pending"
        )));
    }
    let mut writes = Vec::new();
    if let Some(old) = d.next_attempt_at.take() {
        writes.push(Write::Undue {
            at: old,
            kind: DueKind::WebhookDelivery,
            id: d.delivery_id,
        });
    }
    d.attempts += 1;
    match outcome {
        WebhookOutcome::Delivered => {
            d.status = WebhookDeliveryStatus::Delivered;
            d.last_error = None;
        }
        WebhookOutcome::Failed { error, retry_at } => {
            d.last_error = Some(error.clone());
            match retry_at {
                Some(retry) => {
                    d.next_attempt_at = Some(*retry);
                    writes.push(Write::Due {
                        at: *retry,
                        kind: DueKind::WebhookDelivery,
                        id: d.delivery_id,
                    });
                }
                None => d.status = WebhookDeliveryStatus::DeadLettered,
            }
        }
    }
    writes.push(Write::WebhookDelivery(Box::new(d.clone())));
    Ok(Applied {
        writes,
        reply: Reply::WebhookDelivery(Box::new(d)),
    })
}

fn apply_intent(state: &impl StateView, command: &IntentCommand) -> Result<Applied, Rejection> {
    if let IntentCommand::Create { intent, at } = command {
        if state.intent(&intent.id).is_some() {
            return Err(Rejection::AlreadyExists(intent.id));
        }
        return Ok(create(state, intent, *at, None));
    }
    let id = command.intent_id();
    let intent = state.intent(&id).ok_or(Rejection::NotFound(id))?;
    if let IntentCommand::Replay {
        new_intent_id, at, ..
    } = command
    {
        return replay(state, &intent, *new_intent_id, *at);
    }
    let mut change = Change::new(intent, command.at());
    match command {
        IntentCommand::Create { .. } | IntentCommand::Replay { .. } => {
            unreachable!("handled above")
        }
        IntentCommand::Deliver {
            expected_attempt,
            consumer,
            lease_until,
            ..
        } => deliver(&mut change, *expected_attempt, consumer, *lease_until)?,
        IntentCommand::ExpireLease {
            attempt,
            retry_at,
            at,
            ..
        } => {
            let lease = change.leased(*attempt)?;
            if lease.expires_at > *at {
                return Err(Rejection::Invalid(format!(
                    "the lease of attempt {attempt} runs until {}",
                    lease.expires_at.to_rfc3339()
                )));
            }
            lease_lost(&mut change, state, None, Some(*retry_at), false);
        }
        IntentCommand::ReleaseLease {
            attempt,
            consumer,
            at,
            ..
        } => {
            let lease = change.leased(*attempt)?;
            if lease.consumer != *consumer {
                return Err(Rejection::Invalid(format!(
                    "delivery attempt {attempt} is leased to another consumer"
                )));
            }
            lease_lost(&mut change, state, None, Some(*at), true);
        }
        IntentCommand::DeliveryFailed {
            attempt,
            error,
            retry_at,
            ..
        } => {
            change.leased(*attempt)?;
            lease_lost(&mut change, state, Some(error), *retry_at, false);
        }
        IntentCommand::Release { at, .. } => {
            change.open(None)?;
            let i = &change.intent;
            match i.not_before {
                Some(t) if t <= *at => {}
                _ => return Err(Rejection::Invalid("nothing is due to be released".into())),
            }
            if i.status == Status::Submitted && i.agent_cursor == 0 {
                change.enqueue(state, *at);
            } else {
                // A push is due for an agent the engine no longer pushes to (its binding
                // changed): the intent stays on the queue and the push time goes.
                change.intent.not_before = None;
                change.intent.updated_at = *at;
            }
        }
        IntentCommand::Remind { at, .. } => remind(&mut change, *at)?,
        IntentCommand::Acknowledge { attempt, actor, .. } => {
            let current = change.intent.delivery_attempt;
            if *attempt != current {
                return Err(Rejection::StaleAttempt {
                    expected: *attempt,
                    current,
                });
            }
            change.enter(Status::Acknowledged, actor, Map::new())?;
        }
        IntentCommand::Resume { action, actor, .. } => resume(&mut change, action, actor)?,
        IntentCommand::Resolve {
            resolution, actor, ..
        } => match resolution {
            Resolution::Completed { result } => complete(&mut change, result, actor)?,
            Resolution::Failed { error } => fail(&mut change, error, actor)?,
            Resolution::Canceled { reason } => {
                let details = obj(json!({ "reason": reason }));
                change.enter(Status::Canceled, actor, details)?;
            }
        },
        IntentCommand::TimeOut { at, .. } => {
            match change.intent.deadline_at {
                Some(deadline) if deadline <= *at => {}
                _ => return Err(Rejection::Invalid("the deadline has not passed".into())),
            }
            change.intent.error = Some(json!({
                "code": "intent_timeout",
                "message": "the intent passed its deadline_at",
            }));
            change.enter(Status::TimedOut, "system", Map::new())?;
        }
        IntentCommand::UpdateControls {
            patch,
            expected_policy_generation,
            actor,
            reason,
            ..
        } => {
            change.open(*expected_policy_generation)?;
            merge_patch(&mut change.intent.controls, patch);
            change.intent.policy_generation += 1;
            let details = obj(json!({
                "controls_patch": patch,
                "reason": reason,
                "policy_generation": change.intent.policy_generation,
            }));
            change.record(EventType::ControlsUpdated, actor, details);
        }
        IntentCommand::UpdatePolicy {
            grants_patch,
            envelope_patch,
            expected_policy_generation,
            actor,
            reason,
            ..
        } => {
            if grants_patch.is_none() && envelope_patch.is_none() {
                return Err(Rejection::Invalid(
                    "a policy update needs grants_patch or envelope_patch".into(),
                ));
            }
            change.open(*expected_policy_generation)?;
            if let Some(p) = grants_patch {
                merge_patch(&mut change.intent.grants, p);
            }
            if let Some(p) = envelope_patch {
                merge_patch(&mut change.intent.envelope, p);
            }
            change.intent.policy_generation += 1;
            let details = obj(json!({
                "grants_patch": grants_patch,
                "envelope_patch": envelope_patch,
                "reason": reason,
                "policy_generation": change.intent.policy_generation,
            }));
            change.record(EventType::PolicyUpdated, actor, details);
        }
    }
    Ok(change.finish(state))
}

fn create(
    state: &impl StateView,
    new: &NewIntent,
    at: Timestamp,
    replayed_from: Option<Uuid>,
) -> Applied {
    let agent = state_key(&new.to_agent).to_string();
    let config = state.agent_config(&agent);
    let intent = Intent {
        id: new.id,
        intent_type: new.intent_type.clone(),
        correlation_id: new.correlation_id,
        from_agent: new.from_agent.clone(),
        to_agent: new.to_agent.clone(),
        reply_to: new.reply_to.clone(),
        payload: new.payload.clone(),
        status: Status::Created,
        waiting_reason: None,
        result: None,
        error: None,
        created_at: at,
        updated_at: at,
        delivery_attempt: 0,
        max_delivery_attempts: new.max_delivery_attempts,
        deadline_at: new.deadline_at,
        remind_after_seconds: new.remind_after_seconds,
        remind_interval_seconds: new.remind_interval_seconds,
        max_reminders: new.max_reminders,
        remind_count: 0,
        escalate_to: new.escalate_to.clone(),
        human_task: new.human_task.clone(),
        pending_with: None,
        policy_generation: 0,
        controls: Map::new(),
        grants: Map::new(),
        envelope: Map::new(),
        last_seq: 0,
        agent_cursor: 0,
        dead_lettered: false,
        lease: None,
        not_before: None,
        deliver_at: new.deliver_at,
        replayed_from,
        next_reminder_at: None,
        escalated_to: None,
        inbox_owner: None,
    };
    let mut change = Change::new(intent, at);
    change.fresh = true;
    change.before = None;
    let actor = new.from_agent.clone();
    change.record(EventType::Created, &actor, Map::new());
    let mut details = obj(json!({ "to_agent": new.to_agent }));
    if let Some(from) = replayed_from {
        details.insert("replayed_from".into(), json!(from));
    }
    change
        .enter(Status::Submitted, &actor, details)
        .expect("CREATED -> SUBMITTED is always allowed");
    if is_inbox(config.as_ref()) || new.human_task.is_some() {
        // A person answers: the intent waits in the receiver's inbox instead of a queue.
        change.intent.inbox_owner = Some(new.to_agent.clone());
        change.intent.waiting_reason = Some(WaitingReason::WaitingForHuman);
        let details = obj(json!({ "waiting_reason": WaitingReason::WaitingForHuman.as_str() }));
        change
            .enter(Status::Waiting, "system", details)
            .expect("SUBMITTED -> WAITING is always allowed");
        let title = new
            .human_task
            .as_ref()
            .and_then(|t| t.get("title"))
            .and_then(Value::as_str)
            .unwrap_or(&new.intent_type)
            .to_string();
        let thread = InboxThread {
            thread_id: new.id,
            intent_id: new.id,
            owner: agent,
            title,
            status: ThreadStatus::Open,
            created_at: at,
            updated_at: at,
            messages: Vec::new(),
            change_seq: 0,
        };
        change.thread = Some(thread);
        change.thread_changes.push(InboxChangeKind::Added);
    } else if new.deliver_at.is_some_and(|d| d > at) {
        // Held back: not on the queue until `Release` at `deliver_at`.
        change.intent.not_before = new.deliver_at;
    } else {
        change.enqueue(state, at);
    }
    change.finish(state)
}

fn replay(
    state: &impl StateView,
    old: &Intent,
    new_id: Uuid,
    at: Timestamp,
) -> Result<Applied, Rejection> {
    let mut letter = state
        .dead_letter(&old.id)
        .ok_or_else(|| Rejection::Invalid(format!("intent {} is not dead-lettered", old.id)))?;
    if let Some(done) = letter.replayed_as {
        return Err(Rejection::Invalid(format!(
            "intent {} was already replayed as {done}",
            old.id
        )));
    }
    if state.intent(&new_id).is_some() {
        return Err(Rejection::AlreadyExists(new_id));
    }
    let new = NewIntent {
        id: new_id,
        intent_type: old.intent_type.clone(),
        correlation_id: old.correlation_id,
        from_agent: old.from_agent.clone(),
        to_agent: old.to_agent.clone(),
        reply_to: old.reply_to.clone(),
        payload: old.payload.clone(),
        max_delivery_attempts: old.max_delivery_attempts,
        deadline_at: None,
        remind_after_seconds: None,
        remind_interval_seconds: None,
        max_reminders: None,
        escalate_to: None,
        human_task: None,
        deliver_at: None,
    };
    let mut applied = create(state, &new, at, Some(old.id));
    letter.replayed_as = Some(new_id);
    applied.writes.push(Write::DeadLetter(letter));
    Ok(applied)
}

fn deliver(
    change: &mut Change,
    expected_attempt: u32,
    consumer: &str,
    lease_until: Timestamp,
) -> Result<(), Rejection> {
    let intent = &change.intent;
    if intent.status.is_terminal() {
        return Err(Rejection::Terminal {
            from: intent.status,
            to: Some(Status::Delivered),
        });
    }
    // The compare-and-set comes first: a consumer that lost the race to another one hears
    // "stale attempt" whatever the winner did to the status meanwhile.
    if expected_attempt != intent.delivery_attempt {
        return Err(Rejection::StaleAttempt {
            expected: expected_attempt,
            current: intent.delivery_attempt,
        });
    }
    let deliverable = match intent.status {
        Status::Submitted => true,
        Status::Delivered => intent.lease.is_none(),
        _ => false,
    };
    if !deliverable {
        return Err(Rejection::IllegalTransition {
            from: intent.status,
            to: Status::Delivered,
        });
    }
    if intent.status == Status::Submitted && intent.agent_cursor == 0 {
        return Err(Rejection::Invalid(
            "the intent is held back until its deliver_at".into(),
        ));
    }
    if intent.delivery_attempt >= intent.max_delivery_attempts {
        let attempts = intent.delivery_attempt;
        return dead_letter(
            change,
            format!("not acknowledged after {attempts} delivery attempts"),
        );
    }
    change.intent.delivery_attempt += 1;
    let attempt = change.intent.delivery_attempt;
    change.intent.lease = Some(Lease {
        consumer: consumer.to_string(),
        attempt,
        expires_at: lease_until,
    });
    change.intent.not_before = None;
    let details = obj(json!({
        "delivery_attempt": attempt,
        "consumer": consumer,
        "lease_until": lease_until,
    }));
    change.enter(Status::Delivered, "system", details)
}

/// The delivery of the current lease failed, ran out or was `released` by its consumer: try
/// again or give up.
fn lease_lost(
    change: &mut Change,
    state: &impl StateView,
    error: Option<&str>,
    retry_at: Option<Timestamp>,
    released: bool,
) {
    let lease = change
        .intent
        .lease
        .take()
        .expect("checked by Change::leased");
    let mut details = obj(json!({
        "delivery_attempt": lease.attempt,
        "consumer": lease.consumer,
    }));
    if let Some(e) = error {
        details.insert("error".into(), json!(e));
    }
    if released {
        details.insert("released".into(), json!(true));
    }
    let attempts = change.intent.delivery_attempt;
    let give_up = attempts >= change.intent.max_delivery_attempts || retry_at.is_none();
    if !give_up {
        details.insert("retry_at".into(), json!(retry_at));
    }
    change.record(EventType::LeaseExpired, "system", details);
    if give_up {
        let reason = match error {
            Some(e) if attempts < change.intent.max_delivery_attempts => {
                format!("delivery attempt {attempts} failed and will not be retried: {e}")
            }
            Some(e) => format!("not delivered after {attempts} delivery attempts: {e}"),
            None if released => {
                format!("released unsettled after {attempts} delivery attempts")
            }
            None => format!("not acknowledged after {attempts} delivery attempts"),
        };
        dead_letter(change, reason).expect("DELIVERED -> FAILED is always allowed");
        return;
    }
    let at = change.at;
    change.enqueue(state, at);
    if change.http {
        change.intent.not_before = retry_at;
    }
}

/// FAILED with `delivery_failed`, and a dead letter to inspect and replay.
fn dead_letter(change: &mut Change, reason: String) -> Result<(), Rejection> {
    let error = json!({ "code": "delivery_failed", "message": reason });
    fail(change, &error, "system")?;
    change.intent.dead_lettered = true;
    change.extra.push(Write::DeadLetter(DeadLetter {
        intent_id: change.intent.id,
        at: change.at,
        reason,
        replayed_as: None,
    }));
    Ok(())
}

fn remind(change: &mut Change, at: Timestamp) -> Result<(), Rejection> {
    change.open(None)?;
    let i = &change.intent;
    if !(i.status == Status::Waiting && i.waiting_reason == Some(WaitingReason::WaitingForHuman)) {
        return Err(Rejection::Invalid(
            "the intent is not waiting for a person".into(),
        ));
    }
    match i.next_reminder_at {
        Some(t) if t <= at => {}
        _ => return Err(Rejection::Invalid("no reminder is due".into())),
    }
    change.intent.remind_count += 1;
    let count = change.intent.remind_count;
    let owner = change
        .intent
        .inbox_owner
        .clone()
        .unwrap_or_else(|| change.intent.to_agent.clone());
    change.record(
        EventType::ReminderSent,
        "system",
        obj(json!({ "remind_count": count, "pending_with": owner })),
    );
    let exhausted = change.intent.max_reminders.is_some_and(|max| count >= max);
    if !exhausted {
        let interval = change
            .intent
            .remind_interval_seconds
            .or(change.intent.remind_after_seconds);
        change.intent.next_reminder_at = interval.and_then(|s| after(at, s));
        return Ok(());
    }
    change.intent.next_reminder_at = None;
    let Some(target) = change.intent.escalate_to.clone() else {
        return Ok(());
    };
    if change.intent.escalated_to.is_some() {
        return Ok(());
    }
    change.intent.escalated_to = Some(target.clone());
    change.intent.inbox_owner = Some(target.clone());
    change.intent.pending_with = pending_with(&change.intent);
    change.record(
        EventType::Escalated,
        "system",
        obj(json!({ "from": owner, "to": target })),
    );
    change.move_thread = Some(state_key(&target).to_string());
    Ok(())
}

/// `at` plus `s` seconds, or `None` when that is past what a timestamp can hold: a huge
/// interval from a client must mean "never", not a panic on every replica.
fn after(at: Timestamp, s: u64) -> Option<Timestamp> {
    let d = chrono::Duration::try_seconds(i64::try_from(s).ok()?)?;
    at.checked_add_signed(d)
}

fn resume(change: &mut Change, action: &ResumeAction, actor: &str) -> Result<(), Rejection> {
    match action {
        ResumeAction::Complete { result } => {
            check_human_answer(&change.intent, result)?;
            complete(change, result, actor)
        }
        ResumeAction::Fail { error } => fail(change, error, actor),
        ResumeAction::Progress { details } => {
            if change.intent.status == Status::InProgress {
                change.record(EventType::Progress, actor, details.clone());
                Ok(())
            } else {
                change.enter(Status::InProgress, actor, details.clone())
            }
        }
        ResumeAction::Wait { reason, details } => {
            change.check(Status::Waiting)?;
            change.intent.waiting_reason = Some(*reason);
            change.enter(Status::Waiting, actor, details.clone())
        }
        ResumeAction::ApproveCurrentStep {
            expected_policy_generation,
            reason,
        } => approve_current_step(
            change,
            *expected_policy_generation,
            reason.as_deref(),
            actor,
        ),
    }
}

/// The owner's go-ahead for the step the intent is on. Programs written for the hosted
/// platform create an intent, approve its step at once and resolve it themselves, so the
/// approval must work from whatever non-terminal status the intent has reached by then
/// (SUBMITTED, DELIVERED, ACKNOWLEDGED or WAITING all move to IN_PROGRESS, a transition the
/// table allows). An intent already IN_PROGRESS keeps its status, but the approval still
/// counts: it bumps `policy_generation` and leaves an event, so a client's compare-and-set
/// token always moves with an accepted control-form resume.
///
/// A terminal intent is refused (409) and so is a stale `expected` generation; like every
/// rejection, neither changes anything. CREATED never lasts past the command that creates
/// the intent, so the table's refusal of CREATED -> IN_PROGRESS cannot be met here.
fn approve_current_step(
    change: &mut Change,
    expected: Option<u64>,
    reason: Option<&str>,
    actor: &str,
) -> Result<(), Rejection> {
    change.open(expected)?;
    let from = change.intent.status;
    change.intent.policy_generation += 1;
    let details = obj(json!({
        "approve_current_step": true,
        "approved_in": from,
        "reason": reason,
        "policy_generation": change.intent.policy_generation,
    }));
    if from == Status::InProgress {
        change.record(EventType::StepApproved, actor, details);
        Ok(())
    } else {
        change.enter_as(Status::InProgress, EventType::Resumed, actor, details)
    }
}

/// A person's answer to a human task (approve / reject through the inbox) must name one of
/// the task's `allowed_outcomes` and carry a comment when the task requires one.
fn check_human_answer(intent: &Intent, result: &Value) -> Result<(), Rejection> {
    let waiting_for_human = intent.status == Status::Waiting
        && intent.waiting_reason == Some(WaitingReason::WaitingForHuman);
    let Some(task) = intent.human_task.as_ref().filter(|_| waiting_for_human) else {
        return Ok(());
    };
    if let Some(Value::Array(allowed)) = task.get("allowed_outcomes") {
        let outcome = result.get("outcome").and_then(Value::as_str);
        if !outcome.is_some_and(|o| allowed.iter().any(|a| a.as_str() == Some(o))) {
            let names: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
            return Err(Rejection::Invalid(format!(
                "outcome must be one of {}",
                names.join(", ")
            )));
        }
    }
    if task.get("required_comment") == Some(&Value::Bool(true)) {
        let comment = result.get("comment").and_then(Value::as_str);
        if comment.is_none_or(|c| c.trim().is_empty()) {
            return Err(Rejection::Invalid("this task requires a comment".into()));
        }
    }
    Ok(())
}

/// Completing straight from SUBMITTED, DELIVERED or ACKNOWLEDGED records the implied
/// IN_PROGRESS step first, so the event log only ever shows allowed transitions.
fn complete(change: &mut Change, result: &Value, actor: &str) -> Result<(), Rejection> {
    let status = change.intent.status;
    if matches!(
        status,
        Status::Submitted | Status::Delivered | Status::Acknowledged
    ) {
        change.enter(Status::InProgress, actor, obj(json!({ "implied": true })))?;
    } else {
        change.check(Status::Completed)?;
    }
    change.intent.result = Some(result.clone());
    change.enter(Status::Completed, actor, Map::new())
}

fn fail(change: &mut Change, error: &Value, actor: &str) -> Result<(), Rejection> {
    change.check(Status::Failed)?;
    change.intent.error = Some(error.clone());
    let details = obj(json!({ "error": error }));
    change.enter(Status::Failed, actor, details)
}

/// Inbox writes of one command: change-feed entries numbered per owner.
#[derive(Default)]
struct Inbox {
    cursors: BTreeMap<String, u64>,
    writes: Vec<Write>,
}

impl Inbox {
    /// Records a change of `thread` in its owner's feed.
    fn touch(
        &mut self,
        state: &impl StateView,
        thread: &mut InboxThread,
        kind: InboxChangeKind,
        at: Timestamp,
    ) {
        let owner = thread.owner.clone();
        let seq = self.record(state, &owner, thread.thread_id, kind, at);
        thread.change_seq = seq;
        thread.updated_at = at;
    }

    fn record(
        &mut self,
        state: &impl StateView,
        owner: &str,
        thread_id: Uuid,
        kind: InboxChangeKind,
        at: Timestamp,
    ) -> u64 {
        let cursor = self
            .cursors
            .entry(owner.to_string())
            .or_insert_with(|| state.inbox_cursor(owner));
        *cursor += 1;
        let seq = *cursor;
        self.writes.push(Write::InboxChange {
            owner: owner.to_string(),
            change: InboxChange {
                seq,
                thread_id,
                kind,
                at,
            },
        });
        seq
    }

    /// The thread leaves its owner's inbox for `new_owner`'s; both feeds record it.
    fn move_to(
        &mut self,
        state: &impl StateView,
        thread: &mut InboxThread,
        new_owner: String,
        at: Timestamp,
    ) {
        let old = std::mem::replace(&mut thread.owner, new_owner);
        self.record(state, &old, thread.thread_id, InboxChangeKind::Removed, at);
        self.touch(state, thread, InboxChangeKind::Added, at);
    }

    fn finish_thread(mut self, thread: InboxThread) -> Applied {
        self.writes
            .push(Write::InboxThread(Box::new(thread.clone())));
        Applied {
            writes: self.writes,
            reply: Reply::Thread(Box::new(thread)),
        }
    }
}

/// An intent being changed by one command, with the events the change appends and the
/// writes it causes besides the intent and its events.
struct Change {
    /// The intent as the command found it (`None` for a create), to diff due entries.
    before: Option<Intent>,
    intent: Intent,
    at: Timestamp,
    events: Vec<Event>,
    extra: Vec<Write>,
    /// The intent is being created by this command.
    fresh: bool,
    /// The receiver is bound to HTTP (known once `enqueue` or `lease_lost` looked).
    http: bool,
    /// The intent's inbox thread when this change creates it.
    thread: Option<InboxThread>,
    /// Changes to record for the thread (created here) in its owner's feed.
    thread_changes: Vec<InboxChangeKind>,
    /// The thread goes to this (normalized) owner: an escalation.
    move_thread: Option<String>,
}

impl Change {
    fn new(intent: Intent, at: Timestamp) -> Self {
        Change {
            before: Some(intent.clone()),
            intent,
            at,
            events: Vec::new(),
            extra: Vec::new(),
            fresh: false,
            http: false,
            thread: None,
            thread_changes: Vec::new(),
            move_thread: None,
        }
    }

    fn check(&self, to: Status) -> Result<(), Rejection> {
        let from = self.intent.status;
        if from.is_terminal() {
            return Err(Rejection::Terminal { from, to: Some(to) });
        }
        if !from.can_transition_to(to) {
            return Err(Rejection::IllegalTransition { from, to });
        }
        Ok(())
    }

    /// Changes that keep the status are refused on terminal intents and, for patches, on a
    /// stale generation.
    fn open(&self, expected: Option<u64>) -> Result<(), Rejection> {
        if self.intent.status.is_terminal() {
            return Err(Rejection::Terminal {
                from: self.intent.status,
                to: None,
            });
        }
        match expected {
            Some(expected) if expected != self.intent.policy_generation => {
                Err(Rejection::PolicyGenerationMismatch {
                    expected,
                    current: self.intent.policy_generation,
                })
            }
            _ => Ok(()),
        }
    }

    /// The lease of `attempt`, if it is the current one of a DELIVERED intent.
    fn leased(&self, attempt: u32) -> Result<Lease, Rejection> {
        self.open(None)?;
        match &self.intent.lease {
            Some(lease) if lease.attempt == attempt && self.intent.status == Status::Delivered => {
                Ok(lease.clone())
            }
            Some(lease) if lease.attempt != attempt => Err(Rejection::StaleAttempt {
                expected: attempt,
                current: lease.attempt,
            }),
            _ if attempt != self.intent.delivery_attempt => Err(Rejection::StaleAttempt {
                expected: attempt,
                current: self.intent.delivery_attempt,
            }),
            _ => Err(Rejection::Invalid(format!(
                "delivery attempt {attempt} holds no lease"
            ))),
        }
    }

    /// Puts the intent on its agent's queue at a new cursor; an HTTP agent gets a push due
    /// at `at`.
    fn enqueue(&mut self, state: &impl StateView, at: Timestamp) {
        let agent = state_key(&self.intent.to_agent).to_string();
        let cursor = state.agent_cursor(&agent) + 1;
        self.intent.agent_cursor = cursor;
        self.http = is_http(state.agent_config(&agent).as_ref());
        self.intent.not_before = self.http.then_some(at);
        self.intent.updated_at = self.at;
        self.extra.push(Write::AgentQueue {
            agent,
            cursor,
            intent_id: self.intent.id,
        });
    }

    fn enter(
        &mut self,
        to: Status,
        actor: &str,
        details: Map<String, Value>,
    ) -> Result<(), Rejection> {
        self.enter_as(to, EventType::entering(to), actor, details)
    }

    fn enter_as(
        &mut self,
        to: Status,
        event_type: EventType,
        actor: &str,
        details: Map<String, Value>,
    ) -> Result<(), Rejection> {
        self.check(to)?;
        self.intent.status = to;
        if to != Status::Waiting {
            self.intent.waiting_reason = None;
        }
        if self.waits_for_human() && self.intent.next_reminder_at.is_none() {
            // Reminders start when a person is first asked, and not again after escalation.
            if self.intent.escalated_to.is_none() {
                self.intent.next_reminder_at = self
                    .intent
                    .remind_after_seconds
                    .and_then(|s| after(self.at, s));
            }
        }
        self.intent.pending_with = pending_with(&self.intent);
        self.record(event_type, actor, details);
        Ok(())
    }

    fn waits_for_human(&self) -> bool {
        self.intent.status == Status::Waiting
            && self.intent.waiting_reason == Some(WaitingReason::WaitingForHuman)
    }

    /// Appends an event with the next `seq`; the only place where `seq` is assigned.
    fn record(&mut self, event_type: EventType, actor: &str, details: Map<String, Value>) {
        self.intent.last_seq += 1;
        self.intent.updated_at = self.at;
        self.events.push(Event {
            intent_id: self.intent.id,
            seq: self.intent.last_seq,
            event_type,
            status: self.intent.status,
            at: self.at,
            actor: actor.to_string(),
            waiting_reason: self.intent.waiting_reason,
            handler: match self.intent.status {
                Status::Created => None,
                _ => Some(self.intent.to_agent.clone()),
            },
            details,
        });
    }

    /// Drops the times that no longer apply to the intent's status, so that the due index
    /// (derived from them) holds only work the engine can still do.
    fn normalize(&mut self) {
        let i = &mut self.intent;
        if i.status != Status::Delivered {
            i.lease = None;
        }
        if !(matches!(i.status, Status::Submitted | Status::Delivered) && i.lease.is_none()) {
            i.not_before = None;
        }
        if !(i.status == Status::Waiting
            && i.waiting_reason == Some(WaitingReason::WaitingForHuman))
        {
            i.next_reminder_at = None;
        }
        i.pending_with = pending_with(i);
    }

    fn finish(mut self, state: &impl StateView) -> Applied {
        self.normalize();
        let at = self.at;
        let mut writes: Vec<Write> = self.events.iter().cloned().map(Write::Event).collect();
        writes.push(Write::Intent(Box::new(self.intent.clone())));

        // The due index follows the intent's times: remove what went, add what came.
        let old: BTreeSet<DueEntry> = self.before.as_ref().map(due_of).unwrap_or_default();
        let new: BTreeSet<DueEntry> = due_of(&self.intent);
        for e in old.difference(&new) {
            writes.push(Write::Undue {
                at: e.at,
                kind: e.kind,
                id: e.id,
            });
        }
        for e in new.difference(&old) {
            writes.push(Write::Due {
                at: e.at,
                kind: e.kind,
                id: e.id,
            });
        }
        writes.append(&mut self.extra);

        // The inbox: the thread created, escalated or resolved by this change.
        let became_terminal = self.intent.status.is_terminal()
            && !self.before.as_ref().is_some_and(|b| b.status.is_terminal());
        let mut inbox = Inbox::default();
        let mut thread = self.thread.take();
        let needs_thread = self.move_thread.is_some() || became_terminal;
        if thread.is_none() && needs_thread && !self.fresh {
            thread = state.inbox_thread(&self.intent.id);
        }
        if let Some(t) = thread.as_mut() {
            for kind in std::mem::take(&mut self.thread_changes) {
                inbox.touch(state, t, kind, at);
            }
            if let Some(owner) = self.move_thread.take() {
                if owner != t.owner {
                    inbox.move_to(state, t, owner, at);
                }
            }
        }
        if became_terminal {
            if let Some(reply_to) = self.intent.reply_to.clone() {
                // The completion goes to the `reply_to` agent's inbox, carrying the result.
                let owner = state_key(&reply_to).to_string();
                let t = thread.get_or_insert_with(|| InboxThread {
                    thread_id: self.intent.id,
                    intent_id: self.intent.id,
                    owner: String::new(),
                    title: format!("{}: {}", self.intent.intent_type, self.intent.status),
                    status: ThreadStatus::Open,
                    created_at: at,
                    updated_at: at,
                    messages: Vec::new(),
                    change_seq: 0,
                });
                t.messages.push(InboxMessage {
                    message_id: derived_id(&self.intent.id, b"completion"),
                    author: self.intent.to_agent.clone(),
                    text: json!({
                        "status": self.intent.status,
                        "result": self.intent.result,
                        "error": self.intent.error,
                    })
                    .to_string(),
                    at,
                    deleted: false,
                });
                t.status = ThreadStatus::Resolved;
                if t.owner.is_empty() {
                    t.owner = owner;
                    inbox.touch(state, t, InboxChangeKind::Added, at);
                } else if t.owner != owner {
                    inbox.move_to(state, t, owner, at);
                } else {
                    inbox.touch(state, t, InboxChangeKind::Resolved, at);
                }
            } else if let Some(t) = thread.as_mut().filter(|t| t.status == ThreadStatus::Open) {
                t.status = ThreadStatus::Resolved;
                inbox.touch(state, t, InboxChangeKind::Resolved, at);
            }
        }
        writes.append(&mut inbox.writes);
        if let Some(t) = thread {
            writes.push(Write::InboxThread(Box::new(t)));
        }

        // Lifecycle events go to the sender's matching webhook subscriptions.
        if !self.events.is_empty() {
            let owner = state_key(&self.intent.from_agent).to_string();
            let subs = state.subscriptions_of(&owner);
            if subs.iter().any(|s| s.active) {
                for e in &self.events {
                    let event_type = e.event_type.as_str();
                    if !subs.iter().any(|s| s.active && s.matches(event_type)) {
                        continue;
                    }
                    let event = WebhookEvent {
                        event_id: derived_id(&e.intent_id, &e.seq.to_be_bytes()),
                        event_type: event_type.to_string(),
                        source: "intentd".into(),
                        owner: owner.clone(),
                        payload: event_json(e),
                        at: e.at,
                    };
                    fan_out(&event, &subs, &mut writes);
                }
            }
        }

        Applied {
            writes,
            reply: Reply::Intent {
                intent: Box::new(self.intent),
                events: self.events,
                replayed: false,
            },
        }
    }
}

/// The due entries an intent's times call for.
fn due_of(i: &Intent) -> BTreeSet<DueEntry> {
    let mut out = BTreeSet::new();
    if i.status.is_terminal() {
        return out;
    }
    let mut add = |at: Option<Timestamp>, kind: DueKind| {
        if let Some(at) = at {
            out.insert(DueEntry { at, kind, id: i.id });
        }
    };
    add(i.lease.as_ref().map(|l| l.expires_at), DueKind::LeaseExpiry);
    let held_back = i.status == Status::Submitted && i.agent_cursor == 0;
    let kind = if held_back {
        DueKind::Release
    } else {
        DueKind::Deliver
    };
    add(i.not_before, kind);
    add(i.deadline_at, DueKind::Deadline);
    add(i.next_reminder_at, DueKind::Reminder);
    out
}

/// An event as webhook receivers get it: the same fields as the events API.
fn event_json(e: &Event) -> Value {
    json!({
        "intent_id": e.intent_id,
        "seq": e.seq,
        "event_type": e.event_type.as_str(),
        "status": e.status,
        "at": e.at,
        "actor": e.actor,
        "waiting_reason": e.waiting_reason,
        "handler": e.handler,
        "details": e.details,
    })
}

fn pending_with(intent: &Intent) -> Option<PendingWith> {
    let kind = match (intent.status, intent.waiting_reason) {
        (s, _) if s.is_terminal() || s == Status::Created => return None,
        (Status::Waiting, Some(WaitingReason::WaitingForHuman)) => PendingWithKind::Human,
        (Status::Waiting, Some(WaitingReason::WaitingForTime)) => PendingWithKind::Internal,
        _ => PendingWithKind::Agent,
    };
    let reference = match kind {
        PendingWithKind::Human => intent
            .inbox_owner
            .clone()
            .unwrap_or_else(|| intent.to_agent.clone()),
        _ => intent.to_agent.clone(),
    };
    Some(PendingWith { kind, reference })
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
