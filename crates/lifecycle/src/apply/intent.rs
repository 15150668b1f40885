//! The transitions of one intent: create, replay, deliver, leases, reminders, resume and
//! resolution. Each rule works on a `Change` and refuses with a `Rejection`, never a panic:
//! a panic in apply would stop every replica on the same entry.

use super::*;

pub(super) fn apply_intent(
    state: &impl StateView,
    command: &IntentCommand,
) -> Result<Applied, Rejection> {
    if let IntentCommand::Create { intent, at } = command {
        if state.intent(&intent.id).is_some() {
            return Err(Rejection::AlreadyExists(intent.id));
        }
        return create(state, intent, *at, None);
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
            return Err(Rejection::Invalid(
                "a create or replay reached the change rules".into(),
            ));
        }
        IntentCommand::Deliver {
            expected_attempt,
            consumer,
            lease_until,
            ..
        } => {
            let held = killed(state, &change.intent.to_agent);
            deliver(&mut change, *expected_attempt, consumer, *lease_until, held)?;
            if held {
                hold(&mut change, state)?;
            }
        }
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
            lease_lost(&mut change, state, None, Some(*retry_at), false)?;
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
            lease_lost(&mut change, state, None, Some(*at), true)?;
        }
        IntentCommand::DeliveryFailed {
            attempt,
            error,
            retry_at,
            at,
            ..
        } => {
            change.leased(*attempt)?;
            lease_lost(&mut change, state, Some(error), *retry_at, false)?;
            push_failed(&mut change, state, error, *at);
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
            delivery_settled(&mut change, state, actor);
        }
        IntentCommand::Resume { action, actor, .. } => resume(&mut change, state, action, actor)?,
        IntentCommand::Resolve {
            resolution, actor, ..
        } => {
            resolve(&mut change, state, resolution, actor)?;
            delivery_settled(&mut change, state, actor);
        }
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
        IntentCommand::AdvanceWorkflow {
            step_id,
            attempt,
            at,
            ..
        } => workflow::tick(&mut change, state, step_id, *attempt, *at)?,
    }
    Ok(change.finish(state))
}

pub(super) fn create(
    state: &impl StateView,
    new: &NewIntent,
    at: Timestamp,
    replayed_from: Option<Uuid>,
) -> Result<Applied, Rejection> {
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
        uncounted_attempts: 0,
        lease: None,
        not_before: None,
        deliver_at: new.deliver_at,
        replayed_from,
        next_reminder_at: None,
        escalated_to: None,
        inbox_owner: None,
        purge_at: None,
        earlier_cursors: Vec::new(),
        workflow: new.workflow.clone(),
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
    change.enter(Status::Submitted, &actor, details)?;
    if new.workflow.is_some() {
        // The first step decides where the intent goes (`apply/workflow.rs`).
        workflow::start(&mut change, state)?;
    } else if is_inbox(config.as_ref()) || new.human_task.is_some() {
        // A person answers: the intent waits in the receiver's inbox instead of a queue.
        change.intent.inbox_owner = Some(new.to_agent.clone());
        change.intent.waiting_reason = Some(WaitingReason::WaitingForHuman);
        let details = obj(json!({ "waiting_reason": WaitingReason::WaitingForHuman.as_str() }));
        change.enter(Status::Waiting, "system", details)?;
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
    Ok(change.finish(state))
}

pub(super) fn replay(
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
        workflow: None,
    };
    let mut applied = create(state, &new, at, Some(old.id))?;
    letter.replayed_as = Some(new_id);
    applied.writes.push(Write::DeadLetter(letter));
    applied.writes.extend(replayed(state, old, at));
    Ok(applied)
}

pub(super) fn deliver(
    change: &mut Change,
    expected_attempt: u32,
    consumer: &str,
    lease_until: Timestamp,
    held: bool,
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
    if held {
        // The receiver is killed: the caller parks the intent instead (no lease, no attempt).
        return Ok(());
    }
    if intent.counted_attempts() >= intent.max_delivery_attempts {
        let attempts = intent.counted_attempts();
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
pub(super) fn lease_lost(
    change: &mut Change,
    state: &impl StateView,
    error: Option<&str>,
    retry_at: Option<Timestamp>,
    released: bool,
) -> Result<(), Rejection> {
    let lease = change.intent.lease.take().ok_or_else(|| {
        Rejection::Invalid(format!(
            "intent {} holds no lease to lose",
            change.intent.id
        ))
    })?;
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
    if killed(state, &change.intent.to_agent) {
        // The kill took this lease away, so the attempt does not count; the intent waits for
        // the resume instead of going back on the queue.
        details.insert("held".into(), json!(true));
        change.record(EventType::LeaseExpired, "system", details);
        change.intent.uncounted_attempts += 1;
        return hold(change, state);
    }
    let attempts = change.intent.counted_attempts();
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
        return dead_letter(change, reason);
    }
    let at = change.at;
    change.enqueue(state, at);
    if change.http {
        change.intent.not_before = retry_at;
    }
    Ok(())
}

/// FAILED with `delivery_failed`, and a dead letter to inspect and replay.
pub(super) fn dead_letter(change: &mut Change, reason: String) -> Result<(), Rejection> {
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

pub(super) fn remind(change: &mut Change, at: Timestamp) -> Result<(), Rejection> {
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
pub(super) fn after(at: Timestamp, s: u64) -> Option<Timestamp> {
    let d = chrono::Duration::try_seconds(i64::try_from(s).ok()?)?;
    at.checked_add_signed(d)
}

/// How a receiver's (or a person's) resume changes the intent. On a running workflow a
/// complete or fail is the outcome of the active step, and an approval ends the step well.
pub(super) fn resume(
    change: &mut Change,
    state: &impl StateView,
    action: &ResumeAction,
    actor: &str,
) -> Result<(), Rejection> {
    let in_workflow = workflow::runs(&change.intent);
    match action {
        ResumeAction::Complete { result } => {
            check_human_answer(&change.intent, result)?;
            if in_workflow {
                workflow::answered(change, state, result)
            } else {
                complete(change, result, actor)
            }
        }
        ResumeAction::Fail { error } if in_workflow => {
            workflow::answered_failure(change, state, error.clone())
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
        } if in_workflow => {
            change.open(*expected_policy_generation)?;
            change.intent.policy_generation += 1;
            let generation = change.intent.policy_generation;
            let details = obj(json!({
                "approve_current_step": true,
                "approved_in": change.intent.status,
                "reason": reason,
                "policy_generation": generation,
            }));
            change.record(EventType::StepApproved, actor, details);
            let outcome = json!({ "approved_by": actor, "reason": reason });
            workflow::step_succeeded(change, state, outcome)
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
pub(super) fn approve_current_step(
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
pub(super) fn check_human_answer(intent: &Intent, result: &Value) -> Result<(), Rejection> {
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
    // A reject needs no evidence or form: only an answer that goes ahead must carry them.
    if crate::inbox::Decision::of_answer(result) == Some(crate::inbox::Decision::Reject) {
        return Ok(());
    }
    if task.get("evidence_required") == Some(&Value::Bool(true)) {
        let evidence = result.get("data").and_then(|d| d.get("evidence"));
        let empty = match evidence {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.trim().is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(_) => false,
        };
        if empty {
            return Err(Rejection::Invalid(
                "this task requires evidence: a non-empty data.evidence".into(),
            ));
        }
    }
    if let Some(Value::Object(schema)) = task.get("form_schema") {
        check_form(schema, result.get("data").unwrap_or(&Value::Null))?;
    }
    Ok(())
}

/// The part of a task's `form_schema` (JSON Schema) intentd checks an answer's `data`
/// against: the schema's `type: object`, its `required` keys and each listed property's
/// `type` (and `enum`). A schema's other keywords are not checked; the form is the person's
/// answer, and these are the rules a form asks for.
fn check_form(schema: &Map<String, Value>, data: &Value) -> Result<(), Rejection> {
    let refuse = |m: String| {
        Err(Rejection::Invalid(format!(
            "data does not match the task's form: {m}"
        )))
    };
    let Value::Object(fields) = data else {
        return refuse("data must be an object".into());
    };
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(name) {
                return refuse(format!("{name} is required"));
            }
        }
    }
    let Some(Value::Object(properties)) = schema.get("properties") else {
        return Ok(());
    };
    for (name, value) in fields {
        let Some(Value::Object(p)) = properties.get(name) else {
            continue;
        };
        if let Some(Value::String(t)) = p.get("type") {
            let ok = match t.as_str() {
                "string" => value.is_string(),
                "number" => value.is_number(),
                "integer" => value.is_i64() || value.is_u64(),
                "boolean" => value.is_boolean(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                "null" => value.is_null(),
                _ => true,
            };
            if !ok {
                return refuse(format!("{name} must be of type {t}"));
            }
        }
        if let Some(Value::Array(allowed)) = p.get("enum") {
            if !allowed.contains(value) {
                return refuse(format!("{name} is not one of the allowed values"));
            }
        }
    }
    Ok(())
}

/// Completing straight from SUBMITTED, DELIVERED or ACKNOWLEDGED records the implied
/// IN_PROGRESS step first, so the event log only ever shows allowed transitions.
/// A resolution of the intent: a running workflow takes it as its active step's answer.
fn resolve(
    change: &mut Change,
    state: &impl StateView,
    resolution: &Resolution,
    actor: &str,
) -> Result<(), Rejection> {
    match resolution {
        Resolution::Completed { result } if workflow::runs(&change.intent) => {
            workflow::answered(change, state, result)
        }
        Resolution::Failed { error } if workflow::runs(&change.intent) => {
            workflow::answered_failure(change, state, error.clone())
        }
        Resolution::Completed { result } => complete(change, result, actor),
        Resolution::Failed { error } => fail(change, error, actor),
        Resolution::Canceled { reason } => {
            let details = obj(json!({ "reason": reason }));
            change.enter(Status::Canceled, actor, details)
        }
    }
}

pub(super) fn complete(change: &mut Change, result: &Value, actor: &str) -> Result<(), Rejection> {
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

pub(super) fn fail(change: &mut Change, error: &Value, actor: &str) -> Result<(), Rejection> {
    change.check(Status::Failed)?;
    change.intent.error = Some(error.clone());
    let details = obj(json!({ "error": error }));
    change.enter(Status::Failed, actor, details)
}
