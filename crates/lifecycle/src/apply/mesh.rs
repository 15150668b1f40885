//! The mesh: heartbeats folded into an agent's record, kill and resume, health changes, and
//! the holds that keep a killed agent's deliveries parked (see `crate::mesh`).

use super::*;
use crate::mesh::{Health, HeartbeatMetrics, MeshAgent, MeshEvent, MeshEventType};

fn record_of(state: &impl StateView, address: &str) -> MeshAgent {
    state.mesh_agent(address).unwrap_or_else(|| MeshAgent {
        address: address.to_string(),
        ..MeshAgent::default()
    })
}

/// Whether deliveries to `to_agent` are held by a kill.
pub(super) fn killed(state: &impl StateView, to_agent: &str) -> bool {
    state
        .mesh_agent(state_key(to_agent))
        .is_some_and(|m| m.killed)
}

pub(super) fn heartbeat(
    state: &impl StateView,
    address: &str,
    metrics: Option<&HeartbeatMetrics>,
    event_id: Uuid,
    at: Timestamp,
) -> Result<Applied, Rejection> {
    let address = checked(address)?;
    let mut agent = record_of(state, address);
    agent.last_heartbeat_at = Some(agent.last_heartbeat_at.map_or(at, |t| t.max(at)));
    agent.heartbeats += 1;
    if let Some(m) = metrics {
        agent.metrics.fold(m);
    }
    let mut writes = Vec::new();
    // A beat from an agent last judged unreachable is news worth an event; other changes
    // come from the leader's health sweep (`MeshHealth`).
    if !agent.killed && agent.health == Some(Health::Unreachable) {
        let reason = "a heartbeat arrived".to_string();
        change_health(
            state,
            &mut agent,
            Health::Healthy,
            reason,
            event_id,
            at,
            &mut writes,
        );
    }
    writes.push(Write::MeshAgent(Box::new(agent.clone())));
    Ok(Applied {
        writes,
        reply: Reply::Mesh(Box::new(agent)),
    })
}

pub(super) fn set_health(
    state: &impl StateView,
    address: &str,
    health: Health,
    reason: &str,
    event_id: Uuid,
    at: Timestamp,
) -> Result<Applied, Rejection> {
    let address = checked(address)?;
    let mut agent = record_of(state, address);
    if health == Health::Killed || agent.killed {
        return Err(Rejection::Invalid(
            "kills and resumes change a killed agent's health, not a health report".into(),
        ));
    }
    let mut writes = Vec::new();
    if agent.health != Some(health) {
        change_health(
            state,
            &mut agent,
            health,
            reason.to_string(),
            event_id,
            at,
            &mut writes,
        );
        writes.push(Write::MeshAgent(Box::new(agent.clone())));
    }
    Ok(Applied {
        writes,
        reply: Reply::Mesh(Box::new(agent)),
    })
}

pub(super) fn kill(
    state: &impl StateView,
    address: &str,
    actor: &str,
    reason: Option<&str>,
    event_id: Uuid,
    at: Timestamp,
) -> Result<Applied, Rejection> {
    let address = checked(address)?;
    let mut agent = record_of(state, address);
    let mut writes = Vec::new();
    // A repeated kill (a retry) changes nothing and says so by adding no event.
    if !agent.killed {
        let from = agent.health;
        agent.killed = true;
        agent.killed_at = Some(at);
        agent.killed_by = Some(actor.to_string());
        agent.kill_reason = reason.map(str::to_string);
        agent.health = Some(Health::Killed);
        agent.health_changed_at = Some(at);
        let event = MeshEvent {
            event_id,
            seq: state.mesh_event_cursor() + 1,
            event_type: MeshEventType::Killed,
            address: address.to_string(),
            actor: actor.to_string(),
            at,
            from_health: from,
            to_health: Some(Health::Killed),
            reason: reason.map(str::to_string),
            released: 0,
        };
        publish(state, &event, &[address, state_key(actor)], &mut writes);
        writes.push(Write::MeshAgent(Box::new(agent.clone())));
    }
    Ok(Applied {
        writes,
        reply: Reply::Mesh(Box::new(agent)),
    })
}

/// Ends a kill and puts every intent it held back on the agent's queue, oldest first
/// (intent ids are time-ordered), each at a new cursor so that streams and pollers meet it
/// again, and HTTP agents get a push due at once.
pub(super) fn resume(
    state: &impl StateView,
    address: &str,
    actor: &str,
    event_id: Uuid,
    at: Timestamp,
) -> Result<Applied, Rejection> {
    let address = checked(address)?;
    let mut agent = record_of(state, address);
    let mut writes = Vec::new();
    if !agent.killed {
        return Ok(Applied {
            writes,
            reply: Reply::Mesh(Box::new(agent)),
        });
    }
    let mut cursor = state.agent_cursor(address);
    let mut released = 0;
    for id in state.mesh_holds(address) {
        writes.push(Write::MeshUnhold {
            agent: address.to_string(),
            intent_id: id,
        });
        let Some(intent) = state.intent(&id) else {
            continue;
        };
        // A held intent can still end meanwhile (canceled, timed out): nothing to release.
        if intent.status.is_terminal() || intent.lease.is_some() {
            continue;
        }
        cursor += 1;
        released += 1;
        let mut change = Change::new(intent, at);
        change.enqueue_at(state, at, cursor);
        let details = obj(json!({ "agent": address, "reason": "agent_resumed" }));
        change.record(EventType::DeliveryReleased, actor, details);
        writes.extend(change.finish(state).writes);
    }
    let from = agent.health;
    agent.killed = false;
    agent.resumed_at = Some(at);
    agent.held = 0;
    agent.health = Some(Health::Healthy);
    agent.health_changed_at = Some(at);
    let event = MeshEvent {
        event_id,
        seq: state.mesh_event_cursor() + 1,
        event_type: MeshEventType::Resumed,
        address: address.to_string(),
        actor: actor.to_string(),
        at,
        from_health: from,
        to_health: Some(Health::Healthy),
        reason: None,
        released,
    };
    publish(state, &event, &[address, state_key(actor)], &mut writes);
    writes.push(Write::MeshAgent(Box::new(agent.clone())));
    Ok(Applied {
        writes,
        reply: Reply::Mesh(Box::new(agent)),
    })
}

/// How much of a push's error the agent's record keeps.
const PUSH_ERROR_CHARS: usize = 200;

/// A push to the intent's agent failed: counted on the agent's mesh record, which the
/// health sweep judges.
pub(super) fn push_failed(change: &mut Change, state: &impl StateView, error: &str, at: Timestamp) {
    let address = state_key(&change.intent.to_agent).to_string();
    let mut agent = record_of(state, &address);
    agent.push_failures = agent.push_failures.saturating_add(1);
    agent.last_push_error = Some(error.chars().take(PUSH_ERROR_CHARS).collect());
    agent.last_push_failed_at = Some(at);
    change.extra.push(Write::MeshAgent(Box::new(agent)));
}

/// The intent's agent settled a delivery (acknowledged or resolved it): pushes to it get
/// through again. Written only when failures were counted, so settling costs no write.
pub(super) fn delivery_settled(change: &mut Change, state: &impl StateView, actor: &str) {
    let address = state_key(&change.intent.to_agent);
    if state_key(actor) != address {
        return;
    }
    if let Some(mut agent) = state.mesh_agent(address).filter(|a| a.push_failures > 0) {
        agent.push_failures = 0;
        change.extra.push(Write::MeshAgent(Box::new(agent)));
    }
}

/// Parks a delivery to a killed agent: no lease, no attempt, no push due; an event says why
/// the intent waits. A second hold of the same intent is refused, so consumers that keep
/// offering it add nothing to its history.
pub(super) fn hold(change: &mut Change, state: &impl StateView) -> Result<(), Rejection> {
    let address = state_key(&change.intent.to_agent).to_string();
    let holds = state.mesh_holds(&address);
    if holds.contains(&change.intent.id) {
        return Err(Rejection::Invalid(format!(
            "the delivery of intent {} is held: agent {address} is killed",
            change.intent.id
        )));
    }
    let mut agent = record_of(state, &address);
    agent.held += 1;
    change.intent.not_before = None;
    let details = obj(json!({
        "agent": address,
        "reason": "agent_killed",
        "killed_at": agent.killed_at,
    }));
    change.record(EventType::DeliveryHeld, "system", details);
    change.extra.push(Write::MeshHold {
        agent: address,
        intent_id: change.intent.id,
    });
    change.extra.push(Write::MeshAgent(Box::new(agent)));
    Ok(())
}

fn change_health(
    state: &impl StateView,
    agent: &mut MeshAgent,
    to: Health,
    reason: String,
    event_id: Uuid,
    at: Timestamp,
    writes: &mut Vec<Write>,
) {
    let event = MeshEvent {
        event_id,
        seq: state.mesh_event_cursor() + 1,
        event_type: MeshEventType::HealthChanged,
        address: agent.address.clone(),
        actor: "system".into(),
        at,
        from_health: agent.health,
        to_health: Some(to),
        reason: Some(reason),
        released: 0,
    };
    agent.health = Some(to);
    agent.health_changed_at = Some(at);
    publish(state, &event, &[agent.address.as_str()], writes);
}

/// Stores the mesh event and fans it out as a webhook event to the subscriptions of each
/// of `owners` (the agent itself, and whoever killed or resumed it).
fn publish(state: &impl StateView, event: &MeshEvent, owners: &[&str], writes: &mut Vec<Write>) {
    writes.push(Write::MeshEvent(Box::new(event.clone())));
    let mut seen = BTreeSet::new();
    for owner in owners.iter().filter(|o| !o.is_empty()) {
        if !seen.insert(*owner) {
            continue;
        }
        let subs = state.subscriptions_of(owner);
        let event_type = event.event_type.as_str();
        if !subs.iter().any(|s| s.active && s.matches(event_type)) {
            continue;
        }
        let webhook = WebhookEvent {
            event_id: derived_id(&event.event_id, owner.as_bytes()),
            event_type: event_type.to_string(),
            source: "intentd".into(),
            owner: owner.to_string(),
            payload: serde_json::to_value(event).unwrap_or(Value::Null),
            at: event.at,
        };
        fan_out(&webhook, &subs, writes);
    }
}

fn checked(address: &str) -> Result<&str, Rejection> {
    let address = state_key(address);
    if address.is_empty() {
        return Err(Rejection::Invalid("the agent address is empty".into()));
    }
    Ok(address)
}
