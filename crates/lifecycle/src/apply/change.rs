//! `Change`: one intent being changed by one command, and the bookkeeping every transition
//! shares (events, status entry, queue and due entries, inbox thread moves) that `finish`
//! turns into writes.

use super::*;

/// An intent being changed by one command, with the events the change appends and the
/// writes it causes besides the intent and its events.
pub(super) struct Change {
    /// The intent as the command found it (`None` for a create), to diff due entries.
    pub(super) before: Option<Intent>,
    pub(super) intent: Intent,
    pub(super) at: Timestamp,
    pub(super) events: Vec<Event>,
    pub(super) extra: Vec<Write>,
    /// The intent is being created by this command.
    pub(super) fresh: bool,
    /// The receiver is bound to HTTP (known once `enqueue` or `lease_lost` looked).
    pub(super) http: bool,
    /// The intent's inbox thread when this change creates it.
    pub(super) thread: Option<InboxThread>,
    /// Changes to record for the thread (created here) in its owner's feed.
    pub(super) thread_changes: Vec<InboxChangeKind>,
    /// The thread goes to this (normalized) owner: an escalation.
    pub(super) move_thread: Option<String>,
}

impl Change {
    pub(super) fn new(intent: Intent, at: Timestamp) -> Self {
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

    pub(super) fn check(&self, to: Status) -> Result<(), Rejection> {
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
    pub(super) fn open(&self, expected: Option<u64>) -> Result<(), Rejection> {
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
    pub(super) fn leased(&self, attempt: u32) -> Result<Lease, Rejection> {
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
    pub(super) fn enqueue(&mut self, state: &impl StateView, at: Timestamp) {
        let cursor = state.agent_cursor(state_key(&self.intent.to_agent)) + 1;
        self.enqueue_at(state, at, cursor);
    }

    /// `enqueue` at a cursor the caller chose: a command that enqueues several intents of
    /// one agent (a resume) numbers them itself, since its own writes are not visible to it.
    pub(super) fn enqueue_at(&mut self, state: &impl StateView, at: Timestamp, cursor: u64) {
        let agent = state_key(&self.intent.to_agent).to_string();
        if self.intent.agent_cursor != 0 {
            self.intent.earlier_cursors.push(self.intent.agent_cursor);
        }
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

    pub(super) fn enter(
        &mut self,
        to: Status,
        actor: &str,
        details: Map<String, Value>,
    ) -> Result<(), Rejection> {
        self.enter_as(to, EventType::entering(to), actor, details)
    }

    pub(super) fn enter_as(
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

    pub(super) fn waits_for_human(&self) -> bool {
        self.intent.status == Status::Waiting
            && self.intent.waiting_reason == Some(WaitingReason::WaitingForHuman)
    }

    /// Appends an event with the next `seq`; the only place where `seq` is assigned.
    pub(super) fn record(
        &mut self,
        event_type: EventType,
        actor: &str,
        details: Map<String, Value>,
    ) {
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
    pub(super) fn normalize(&mut self) {
        workflow::close(&mut self.intent, self.at);
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

    pub(super) fn finish(mut self, state: &impl StateView) -> Applied {
        self.normalize();
        let at = self.at;
        let became_terminal = self.intent.status.is_terminal()
            && !self.before.as_ref().is_some_and(|b| b.status.is_terminal());
        if became_terminal {
            self.intent.purge_at = state.retention().purge_at(at, self.intent.dead_lettered);
        }
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

/// The due entries an intent's times call for: none but its purge once it is terminal.
pub(super) fn due_of(i: &Intent) -> BTreeSet<DueEntry> {
    let mut out = BTreeSet::new();
    if i.status.is_terminal() {
        if let Some(at) = i.purge_at {
            out.insert(DueEntry {
                at,
                kind: DueKind::Purge,
                id: i.id,
            });
        }
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
    add(
        i.workflow.as_ref().and_then(Workflow::due_at),
        DueKind::WorkflowStep,
    );
    out
}

/// An event as webhook receivers get it: the same fields as the events API.
pub(super) fn event_json(e: &Event) -> Value {
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

pub(super) fn pending_with(intent: &Intent) -> Option<PendingWith> {
    if let Some(step) = intent.workflow.as_ref().and_then(Workflow::active) {
        if step.kind.timer_seconds().is_some() && !intent.status.is_terminal() {
            // A timer step: the cluster itself holds the intent until the step's time.
            return Some(PendingWith {
                kind: PendingWithKind::Internal,
                reference: format!("workflow_step:{}", step.step_id),
            });
        }
    }
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
