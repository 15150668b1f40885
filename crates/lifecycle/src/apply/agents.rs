//! Agents: registering a binding and delegating an intent to another agent.

use super::*;

pub(super) fn register_agent(
    state: &impl StateView,
    config: &AgentConfig,
) -> Result<Applied, Rejection> {
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

pub(super) fn delegate(
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

pub(super) fn applied_thread_intent(applied: &Applied) -> Uuid {
    match &applied.reply {
        Reply::Thread(t) => t.intent_id,
        _ => Uuid::nil(),
    }
}
