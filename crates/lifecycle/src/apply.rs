use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::intent::normalize_address;
use crate::{
    ApiKey, Command, Event, EventType, IdempotencyRecord, Intent, IntentCommand, NewIntent,
    PendingWith, PendingWithKind, Rejection, Resolution, ResumeAction, Status, Timestamp,
    WaitingReason,
};

/// Read access to the replicated state, as much as [`apply`] needs.
pub trait StateView {
    fn intent(&self, id: &Uuid) -> Option<Intent>;
    fn idempotency(&self, storage_key: &str) -> Option<IdempotencyRecord>;
    /// The newest cursor handed out in `agent`'s delivery queue (0 if none yet).
    fn agent_cursor(&self, agent: &str) -> u64;
    fn api_key_by_id(&self, id: &Uuid) -> Option<(String, ApiKey)>;
}

/// One change the state machine must store. Applying all writes of one command (together
/// with the applied log index) atomically is the state machine's job.
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
}

/// What the proposer is told about an applied command.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Reply {
    /// The intent after the command and the events it appended. `replayed` says the command
    /// was an idempotent repeat and changed nothing.
    Intent {
        intent: Box<Intent>,
        events: Vec<Event>,
        replayed: bool,
    },
    Done,
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
                applied.writes.push(Write::Idempotency {
                    key: claim.storage_key(),
                    record: IdempotencyRecord {
                        request_hash: claim.request_hash.clone(),
                        intent_id: command.intent_id(),
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
    }
}

fn apply_intent(state: &impl StateView, command: &IntentCommand) -> Result<Applied, Rejection> {
    if let IntentCommand::Create { intent, at } = command {
        if state.intent(&intent.id).is_some() {
            return Err(Rejection::AlreadyExists(intent.id));
        }
        return Ok(create(state, intent, *at));
    }
    let id = command.intent_id();
    let intent = state.intent(&id).ok_or(Rejection::NotFound(id))?;
    let mut change = Change::new(intent, command.at());
    match command {
        IntentCommand::Create { .. } => unreachable!("handled above"),
        IntentCommand::Deliver {
            expected_attempt,
            consumer,
            ..
        } => deliver(&mut change, *expected_attempt, consumer)?,
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
            change.open_for_patch(*expected_policy_generation)?;
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
            change.open_for_patch(*expected_policy_generation)?;
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
    Ok(change.finish())
}

fn create(state: &impl StateView, new: &NewIntent, at: Timestamp) -> Applied {
    let agent = normalize_address(&new.to_agent).to_string();
    let cursor = state.agent_cursor(&agent) + 1;
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
        agent_cursor: cursor,
        dead_lettered: false,
    };
    let mut change = Change::new(intent, at);
    let actor = new.from_agent.clone();
    change.record(EventType::Created, &actor, Map::new());
    change
        .enter(
            Status::Submitted,
            &actor,
            obj(json!({ "to_agent": new.to_agent })),
        )
        .expect("CREATED -> SUBMITTED is always allowed");
    let mut applied = change.finish();
    applied.writes.push(Write::AgentQueue {
        agent,
        cursor,
        intent_id: new.id,
    });
    applied
}

fn deliver(change: &mut Change, expected_attempt: u32, consumer: &str) -> Result<(), Rejection> {
    let intent = &change.intent;
    if intent.status.is_terminal() {
        return Err(Rejection::Terminal {
            from: intent.status,
            to: Some(Status::Delivered),
        });
    }
    if !matches!(intent.status, Status::Submitted | Status::Delivered) {
        return Err(Rejection::IllegalTransition {
            from: intent.status,
            to: Status::Delivered,
        });
    }
    if expected_attempt != intent.delivery_attempt {
        return Err(Rejection::StaleAttempt {
            expected: expected_attempt,
            current: intent.delivery_attempt,
        });
    }
    if intent.delivery_attempt >= intent.max_delivery_attempts {
        let attempts = intent.delivery_attempt;
        change.intent.dead_lettered = true;
        let error = json!({
            "code": "delivery_failed",
            "message": format!("not acknowledged after {attempts} delivery attempts"),
        });
        return fail(change, &error, "system");
    }
    change.intent.delivery_attempt += 1;
    let details = obj(json!({
        "delivery_attempt": change.intent.delivery_attempt,
        "consumer": consumer,
    }));
    change.enter(Status::Delivered, "system", details)
}

fn resume(change: &mut Change, action: &ResumeAction, actor: &str) -> Result<(), Rejection> {
    match action {
        ResumeAction::Complete { result } => complete(change, result, actor),
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
        } => {
            change.open_for_patch(*expected_policy_generation)?;
            if change.intent.status != Status::Waiting {
                return Err(Rejection::IllegalTransition {
                    from: change.intent.status,
                    to: Status::InProgress,
                });
            }
            change.intent.policy_generation += 1;
            let details = obj(json!({
                "reason": reason,
                "policy_generation": change.intent.policy_generation,
            }));
            change.enter_as(Status::InProgress, EventType::Resumed, actor, details)
        }
    }
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

/// An intent being changed by one command, with the events the change appends.
struct Change {
    intent: Intent,
    at: Timestamp,
    events: Vec<Event>,
}

impl Change {
    fn new(intent: Intent, at: Timestamp) -> Self {
        Change {
            intent,
            at,
            events: Vec::new(),
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

    /// Patches are refused on terminal intents and on a stale generation.
    fn open_for_patch(&self, expected: Option<u64>) -> Result<(), Rejection> {
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
        self.intent.pending_with = pending_with(&self.intent);
        self.record(event_type, actor, details);
        Ok(())
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

    fn finish(self) -> Applied {
        let mut writes: Vec<Write> = self.events.iter().cloned().map(Write::Event).collect();
        writes.push(Write::Intent(Box::new(self.intent.clone())));
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

fn pending_with(intent: &Intent) -> Option<PendingWith> {
    let kind = match (intent.status, intent.waiting_reason) {
        (s, _) if s.is_terminal() || s == Status::Created => return None,
        (Status::Waiting, Some(WaitingReason::WaitingForHuman)) => PendingWithKind::Human,
        (Status::Waiting, Some(WaitingReason::WaitingForTime)) => PendingWithKind::Internal,
        _ => PendingWithKind::Agent,
    };
    Some(PendingWith {
        kind,
        reference: intent.to_agent.clone(),
    })
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
