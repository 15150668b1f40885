//! The rules of a scenario workflow (`docs/workflows-design.md`): which step is active, what
//! its start does to the intent, and where its outcome leads.
//!
//! What must stay true (checked by the property tests in `tests/rules.rs`): a workflow intent
//! that is not terminal has exactly one active step and `current` names it; a terminal one has
//! none. Every tick is a command that names the step and attempt it is for, so a repeated or
//! late tick is refused and changes nothing.
//!
//! Where the intent goes follows the step: an agent step puts it on that agent's queue
//! (`to_agent` becomes the step's agent; the first step is delivered exactly like a plain
//! intent, later ones are IN_PROGRESS with `delivery_attempt` back at 0, since the lifecycle
//! table has no way back to SUBMITTED or DELIVERED); a human step makes it WAITING for a
//! person with the step's task in the owner's inbox; a timer step makes it WAITING for time
//! with a due entry for the engine; a notification or tool step succeeds in the same entry.

use super::*;
use crate::inbox::Decision;
use crate::workflow::{StepKind, StepState, Workflow};

/// Where a step's end leads.
enum Next {
    Step(String, u32),
    /// A retry that starts at the given time (its `retry_delay_seconds` after the failure).
    Later(String, u32, Timestamp),
    Complete(Value),
    Fail(Value),
}

fn workflow(change: &mut Change) -> Result<&mut Workflow, Rejection> {
    let id = change.intent.id;
    change
        .intent
        .workflow
        .as_mut()
        .ok_or_else(|| Rejection::Invalid(format!("intent {id} runs no workflow")))
}

/// The active step's id and attempt.
fn active(change: &Change) -> Result<(String, u32), Rejection> {
    change
        .intent
        .workflow
        .as_ref()
        .and_then(Workflow::active)
        .map(|s| (s.step_id.clone(), s.attempt))
        .ok_or_else(|| Rejection::Invalid("the workflow has no active step".into()))
}

/// Whether the intent runs a workflow that is still going (so outcomes go to its step).
pub(super) fn runs(intent: &Intent) -> bool {
    !intent.status.is_terminal()
        && intent
            .workflow
            .as_ref()
            .is_some_and(|w| w.active().is_some())
}

/// Starts a new intent's workflow at its first step.
pub(super) fn start(change: &mut Change, state: &impl StateView) -> Result<(), Rejection> {
    let first = workflow(change)?
        .steps
        .first()
        .map(|s| s.step_id.clone())
        .ok_or_else(|| Rejection::Invalid("a workflow needs at least one step".into()))?;
    go(change, state, Next::Step(first, 1))
}

/// Follows `next`: starts steps (and ends the ones that end at once) until a step waits or
/// the workflow ends. The graph is acyclic (checked at the edge, and bounded here anyway),
/// so this ends.
fn go(change: &mut Change, state: &impl StateView, mut next: Next) -> Result<(), Rejection> {
    let limit = change.intent.workflow.as_ref().map_or(0, |w| w.steps.len()) + 1;
    for _ in 0..limit {
        match next {
            Next::Complete(result) => {
                workflow(change)?.current = None;
                return complete(change, &result, "system");
            }
            Next::Fail(error) => {
                workflow(change)?.current = None;
                return fail(change, &error, "system");
            }
            Next::Step(id, attempt) => match activate(change, state, &id, attempt)? {
                None => return Ok(()),
                Some(outcome) => next = succeed(change, outcome)?,
            },
            Next::Later(id, attempt, at) => return wait_to_retry(change, &id, attempt, at),
        }
    }
    Err(Rejection::Invalid(
        "the workflow did not settle on a step (a cycle of instant steps?)".into(),
    ))
}

/// Makes `id` the active step with `attempt` and puts the intent where its work is. Answers
/// the step's outcome when it ends at once (notification, tool).
fn activate(
    change: &mut Change,
    state: &impl StateView,
    id: &str,
    attempt: u32,
) -> Result<Option<Value>, Rejection> {
    let at = change.at;
    let wf = workflow(change)?;
    let step = wf
        .step_mut(id)
        .ok_or_else(|| Rejection::Invalid(format!("the workflow has no step {id:?}")))?;
    step.state = StepState::Active;
    step.attempt = attempt;
    step.started_at = Some(at);
    step.finished_at = None;
    step.outcome = None;
    step.deadline_at = step.step_deadline_seconds.and_then(|s| after(at, s));
    step.timer_at = step.kind.timer_seconds().and_then(|s| after(at, s));
    let step = step.clone();
    wf.current = Some(id.to_string());

    let mut details = obj(json!({
        "step_id": id,
        "attempt": attempt,
        "step_kind": step.kind.name(),
    }));
    let mut instant = None;
    match &step.kind {
        StepKind::Agent { address } => {
            let i = &mut change.intent;
            i.to_agent = address.clone();
            i.human_task = None;
            i.inbox_owner = None;
            if i.status == Status::Submitted {
                // The first step: delivered like any plain intent.
                change.enqueue(state, at);
            } else {
                i.delivery_attempt = 0;
                i.lease = None;
                if i.status != Status::InProgress {
                    change.enter(Status::InProgress, "system", obj(json!({ "step_id": id })))?;
                }
                change.enqueue(state, at);
            }
            details.insert("assigned_to".into(), json!(address));
        }
        StepKind::Human { address } => {
            let i = &mut change.intent;
            // The person is the receiver now: the previous step's agent can no longer answer.
            i.to_agent = address.clone();
            i.human_task = step.human_task.clone();
            i.remind_after_seconds = step.remind_after_seconds;
            i.remind_interval_seconds = step.remind_interval_seconds;
            i.max_reminders = step.max_reminders;
            i.escalate_to = step.escalate_to.clone();
            i.remind_count = 0;
            i.escalated_to = None;
            i.next_reminder_at = None;
            i.inbox_owner = Some(address.clone());
            open_task(change, state, address, &step.step_id);
            wait_for(change, WaitingReason::WaitingForHuman)?;
            details.insert("assigned_to".into(), json!(address));
        }
        StepKind::Delay { .. }
        | StepKind::Timeout { .. }
        | StepKind::Reminder { .. }
        | StepKind::Escalation { .. } => {
            wait_for(change, WaitingReason::WaitingForTime)?;
            details.insert("timer_at".into(), json!(step.timer_at));
        }
        StepKind::Notification { message } => {
            details.insert("message".into(), json!(message));
            instant = Some(json!({ "notified": true, "message": message }));
        }
        StepKind::Tool { tool_id } => {
            instant = Some(json!({ "tool_id": tool_id, "executed": false }));
        }
    }
    if let Some(d) = step.deadline_at {
        details.insert("step_deadline_at".into(), json!(d));
    }
    change.record(EventType::WorkflowStepStarted, "system", details);
    Ok(instant)
}

/// WAITING for `reason`. An intent already WAITING (the table has no WAITING -> WAITING)
/// only changes its reason; the step's start event records the move.
fn wait_for(change: &mut Change, reason: WaitingReason) -> Result<(), Rejection> {
    if change.intent.status == Status::Waiting {
        change.intent.waiting_reason = Some(reason);
        if reason == WaitingReason::WaitingForHuman {
            let at = change.at;
            change.intent.next_reminder_at = change
                .intent
                .remind_after_seconds
                .and_then(|s| after(at, s));
        }
        change.intent.pending_with = pending_with(&change.intent);
        return Ok(());
    }
    change.check(Status::Waiting)?;
    change.intent.waiting_reason = Some(reason);
    let details = obj(json!({ "waiting_reason": reason.as_str() }));
    change.enter(Status::Waiting, "system", details)
}

/// The step's task in `owner`'s inbox: the intent's thread (`thread_id` = intent id), created
/// for the first human step and reopened (and moved to this step's owner) for later ones.
fn open_task(change: &mut Change, state: &impl StateView, owner: &str, step_id: &str) {
    let at = change.at;
    let owner = state_key(owner).to_string();
    let title = change
        .intent
        .human_task
        .as_ref()
        .and_then(|t| t.get("title"))
        .and_then(Value::as_str)
        .map_or_else(|| step_id.to_string(), str::to_string);
    let existing = match change.thread.take() {
        Some(t) => Some(t),
        None if change.fresh => None,
        None => state.inbox_thread(&change.intent.id),
    };
    match existing {
        Some(mut thread) => {
            let reopened = thread.status != ThreadStatus::Open;
            thread.status = ThreadStatus::Open;
            thread.title = title;
            if thread.owner != owner {
                change.move_thread = Some(owner);
            } else if reopened {
                change.thread_changes.push(InboxChangeKind::Added);
            } else {
                change.thread_changes.push(InboxChangeKind::Messages);
            }
            change.thread = Some(thread);
        }
        None => {
            change.thread = Some(InboxThread {
                thread_id: change.intent.id,
                intent_id: change.intent.id,
                owner,
                title,
                status: ThreadStatus::Open,
                created_at: at,
                updated_at: at,
                messages: Vec::new(),
                change_seq: 0,
            });
            change.thread_changes.push(InboxChangeKind::Added);
        }
    }
}

/// The active step ended well with `outcome`: where that leads.
fn succeed(change: &mut Change, outcome: Value) -> Result<Next, Rejection> {
    let at = change.at;
    let (id, attempt) = active(change)?;
    let step = workflow(change)?
        .step_mut(&id)
        .ok_or_else(|| Rejection::Invalid(format!("the workflow has no step {id:?}")))?;
    step.state = StepState::Succeeded;
    step.finished_at = Some(at);
    step.retry_at = None;
    step.outcome = Some(outcome.clone());
    let next = step.on_success.clone();
    let details = obj(json!({
        "step_id": id,
        "attempt": attempt,
        "outcome": outcome,
        "next_step": next,
    }));
    change.record(EventType::WorkflowStepSucceeded, "system", details);
    Ok(match next {
        Some(next) => Next::Step(next, 1),
        None => Next::Complete(outcome),
    })
}

/// The active step failed with `error`: run it again while its retries last, else follow
/// `on_failure`, else fail the intent.
fn failed(change: &mut Change, error: Value) -> Result<Next, Rejection> {
    let at = change.at;
    let (id, attempt) = active(change)?;
    let step = workflow(change)?
        .step_mut(&id)
        .ok_or_else(|| Rejection::Invalid(format!("the workflow has no step {id:?}")))?;
    if attempt <= step.max_retries {
        let retry_at = step.retry_delay_seconds.and_then(|s| after(at, s));
        let mut details = obj(json!({ "step_id": id, "attempt": attempt, "error": error }));
        if let Some(r) = retry_at {
            details.insert("retry_at".into(), json!(r));
        }
        change.record(EventType::WorkflowStepRetried, "system", details);
        return Ok(match retry_at {
            Some(r) => Next::Later(id, attempt + 1, r),
            None => Next::Step(id, attempt + 1),
        });
    }
    step.state = StepState::Failed;
    step.finished_at = Some(at);
    step.retry_at = None;
    step.outcome = Some(error.clone());
    let next = step.on_failure.clone();
    let details = obj(json!({
        "step_id": id,
        "attempt": attempt,
        "error": error,
        "next_step": next,
    }));
    change.record(EventType::WorkflowStepFailed, "system", details);
    Ok(match next {
        Some(next) => Next::Step(next, 1),
        None => Next::Fail(error),
    })
}

/// A retry with a delay: `attempt` of step `id` is the active one but nothing of it runs
/// until `at`, when the engine's tick starts it. Meanwhile the intent waits for time and holds
/// no lease, so no consumer is offered the step before its retry starts.
fn wait_to_retry(
    change: &mut Change,
    id: &str,
    attempt: u32,
    at: Timestamp,
) -> Result<(), Rejection> {
    let wf = workflow(change)?;
    let step = wf
        .step_mut(id)
        .ok_or_else(|| Rejection::Invalid(format!("the workflow has no step {id:?}")))?;
    step.state = StepState::Active;
    step.attempt = attempt;
    step.started_at = None;
    step.finished_at = None;
    step.outcome = None;
    step.deadline_at = None;
    step.timer_at = None;
    step.retry_at = Some(at);
    wf.current = Some(id.to_string());
    change.intent.lease = None;
    wait_for(change, WaitingReason::WaitingForTime)
}

/// The active step succeeded (an agent's result, a person's approval, an owner's
/// `approve_current_step`).
pub(super) fn step_succeeded(
    change: &mut Change,
    state: &impl StateView,
    outcome: Value,
) -> Result<(), Rejection> {
    close_task(change, state);
    let next = succeed(change, outcome)?;
    go(change, state, next)
}

/// The active step failed.
pub(super) fn step_failed(
    change: &mut Change,
    state: &impl StateView,
    error: Value,
) -> Result<(), Rejection> {
    close_task(change, state);
    let next = failed(change, error)?;
    go(change, state, next)
}

/// A human step that ends takes its task out of the pending ones: the thread is resolved (a
/// later human step, or this one's retry, opens it again).
fn close_task(change: &mut Change, state: &impl StateView) {
    let human = matches!(
        change
            .intent
            .workflow
            .as_ref()
            .and_then(Workflow::active)
            .map(|s| &s.kind),
        Some(StepKind::Human { .. })
    );
    if !human {
        return;
    }
    let thread = match change.thread.take() {
        Some(t) => Some(t),
        None => state.inbox_thread(&change.intent.id),
    };
    if let Some(mut t) = thread {
        if t.status == ThreadStatus::Open {
            t.status = ThreadStatus::Resolved;
            change.thread_changes.push(InboxChangeKind::Resolved);
        }
        change.thread = Some(t);
    }
}

/// Only an agent or a person answers a step with a result or an error; a timer step ends by
/// its time, an `approve_current_step` or a cancel.
fn answerable(change: &Change) -> Result<(), Rejection> {
    match change.intent.workflow.as_ref().and_then(Workflow::active) {
        Some(s) if s.retry_at.is_some() => Err(Rejection::Invalid(format!(
            "workflow step {:?} waits to start attempt {} at {}: nothing answers it before",
            s.step_id,
            s.attempt,
            s.retry_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        ))),
        Some(s) if matches!(s.kind, StepKind::Agent { .. } | StepKind::Human { .. }) => Ok(()),
        Some(s) => Err(Rejection::Invalid(format!(
            "workflow step {:?} is a {} step: it ends by its time, an approve_current_step or \
             a cancel, not by an answer",
            s.step_id,
            s.kind.name()
        ))),
        None => Err(Rejection::Invalid("the workflow has no active step".into())),
    }
}

/// A `Fail` answer (resume or resolve) for the active agent or human step.
pub(super) fn answered_failure(
    change: &mut Change,
    state: &impl StateView,
    error: Value,
) -> Result<(), Rejection> {
    answerable(change)?;
    step_failed(change, state, error)
}

/// A `Complete` answer for the active step: a person's reject (by `decision` or by a reject
/// outcome) fails a human step, anything else succeeds it. The task's rules were checked.
pub(super) fn answered(
    change: &mut Change,
    state: &impl StateView,
    result: &Value,
) -> Result<(), Rejection> {
    answerable(change)?;
    let human = matches!(
        change
            .intent
            .workflow
            .as_ref()
            .and_then(Workflow::active)
            .map(|s| &s.kind),
        Some(StepKind::Human { .. })
    );
    if human && Decision::of_answer(result) == Some(Decision::Reject) {
        let error =
            json!({ "code": "rejected", "message": "the step was rejected", "answer": result });
        return step_failed(change, state, error);
    }
    step_succeeded(change, state, result.clone())
}

/// `AdvanceWorkflow`: a time of step `step_id` attempt `attempt` is due at `at`.
pub(super) fn tick(
    change: &mut Change,
    state: &impl StateView,
    step_id: &str,
    attempt: u32,
    at: Timestamp,
) -> Result<(), Rejection> {
    change.open(None)?;
    let (current, current_attempt) = active(change)?;
    if current != step_id || current_attempt != attempt {
        return Err(Rejection::Invalid(format!(
            "stale workflow tick for step {step_id:?} attempt {attempt}: the active step is \
             {current:?} attempt {current_attempt}"
        )));
    }
    let step = change
        .intent
        .workflow
        .as_ref()
        .and_then(|w| w.step(step_id))
        .cloned()
        .ok_or_else(|| Rejection::Invalid(format!("the workflow has no step {step_id:?}")))?;
    if let Some(retry_at) = step.retry_at {
        if retry_at > at {
            return Err(Rejection::Invalid(format!(
                "the retry of workflow step {step_id:?} is not due yet"
            )));
        }
        if let Some(s) = workflow(change)?.step_mut(step_id) {
            s.retry_at = None;
        }
        return go(change, state, Next::Step(step_id.to_string(), attempt));
    }
    if step.deadline_at.is_some_and(|d| d <= at) {
        let seconds = step.step_deadline_seconds.unwrap_or(0);
        let error = json!({
            "code": "step_timeout",
            "message": format!("step {step_id} did not finish within {seconds} seconds"),
            "step_id": step_id,
        });
        return step_failed(change, state, error);
    }
    if step.timer_at.is_none_or(|t| t > at) {
        return Err(Rejection::Invalid(format!(
            "nothing of workflow step {step_id:?} is due yet"
        )));
    }
    let done = json!({ "step_id": step_id, "timer_at": step.timer_at });
    match &step.kind {
        StepKind::Delay { .. } => step_succeeded(change, state, done),
        StepKind::Timeout { seconds } => {
            let error = json!({
                "code": "step_timeout",
                "message": format!("step {step_id} was not approved within {seconds} seconds"),
                "step_id": step_id,
            });
            step_failed(change, state, error)
        }
        StepKind::Reminder { to, .. } => {
            let details = obj(json!({ "step_id": step_id, "pending_with": to }));
            change.record(EventType::ReminderSent, "system", details);
            step_succeeded(change, state, done)
        }
        StepKind::Escalation { to, .. } => {
            let from = change.intent.to_agent.clone();
            let details = obj(json!({ "step_id": step_id, "from": from, "to": to }));
            change.record(EventType::Escalated, "system", details);
            step_succeeded(change, state, done)
        }
        _ => Err(Rejection::Invalid(format!(
            "workflow step {step_id:?} has no timer"
        ))),
    }
}

/// A workflow whose intent became terminal some other way (canceled, timed out, dead
/// lettered) ends with it: its active step is skipped, so no step stays active.
pub(super) fn close(intent: &mut Intent, at: Timestamp) {
    if !intent.status.is_terminal() {
        return;
    }
    let Some(wf) = intent.workflow.as_mut() else {
        return;
    };
    if let Some(id) = wf.current.take() {
        if let Some(step) = wf.step_mut(&id).filter(|s| s.state == StepState::Active) {
            step.state = StepState::Skipped;
            step.finished_at = Some(at);
            step.retry_at = None;
        }
    }
}
