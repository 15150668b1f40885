//! The reads and writes every edge operation on an intent is made of, so that the HTTP and
//! gRPC edges authenticate, read and propose in exactly the same way.

use chrono::Utc;
use intentd_consensus::Cluster;
use intentd_lifecycle::validate::{Decided, IntentRequest};
use intentd_lifecycle::{
    hash_key, usable_key, AccessError, ApiKey, Command, Event, IdempotencyClaim, Intent,
    IntentCommand, Reply, Timestamp, KEY_REQUIRED,
};
use uuid::Uuid;

use crate::OperationsError;

/// Finds the key for a presented secret (see `intentd_lifecycle::presented_secret`).
///
/// A key created moments ago through another node may not be applied here yet; one read
/// barrier makes "create a key, then use it anywhere" work. If the barrier fails there is no
/// leader, and the key cannot be vouched for either way: it stays unknown.
pub async fn authenticate(
    cluster: &Cluster,
    secret: Option<&str>,
) -> Result<ApiKey, OperationsError> {
    let secret = secret.ok_or_else(|| AccessError::Unauthenticated(KEY_REQUIRED.into()))?;
    let hash = hash_key(secret);
    let reader = cluster.reader();
    let mut found = reader.api_key(&hash)?;
    if found.is_none() {
        // A key made through another node moments ago may not be here yet. If this node
        // cannot catch up (no leader, still joining), "unknown key" would be a guess: 503.
        cluster.read_barrier().await?;
        found = reader.api_key(&hash)?;
    }
    Ok(usable_key(found)?)
}

/// Reads an intent from the local replica. A miss is confirmed with a read barrier before it
/// becomes "not found", so an intent created through another node moments ago is still found.
/// With `linearizable`, the barrier comes first and the answer reflects every acknowledged
/// write (a read of an intent must never show a state older than one already returned).
pub async fn load_intent(
    cluster: &Cluster,
    id: Uuid,
    linearizable: bool,
) -> Result<Intent, OperationsError> {
    let reader = cluster.reader();
    if linearizable {
        cluster.read_barrier().await?;
    } else {
        cluster.settled().await;
        if let Some(intent) = reader.intent(&id)? {
            return Ok(intent);
        }
        cluster.read_barrier().await?;
    }
    reader
        .intent(&id)?
        .ok_or_else(|| intentd_lifecycle::Rejection::NotFound(id).into())
}

/// What an accepted intent command returned.
#[derive(Debug, Clone)]
pub struct Written {
    pub intent: Intent,
    pub events: Vec<Event>,
    /// The command was an idempotent repeat and changed nothing.
    pub replayed: bool,
}

/// Proposes one intent command through Raft and answers once it is committed and the leader
/// applied it. The reply carries the intent and its new events, which is the whole answer, so
/// this node does not wait for its own apply; reads that follow here wait for it instead
/// (`Cluster::settled`, which `load_intent` and the edges' reads go through).
pub async fn write_intent(
    cluster: &Cluster,
    command: IntentCommand,
    idempotency: Option<IdempotencyClaim>,
) -> Result<Written, OperationsError> {
    refuse_killed_sender(cluster, &command)?;
    let reply = cluster
        .write_committed(Command::Intent {
            command,
            idempotency,
        })
        .await?;
    match reply {
        Reply::Intent {
            intent,
            events,
            replayed,
        } => Ok(Written {
            intent: *intent,
            events,
            replayed,
        }),
        _ => Err(OperationsError::Internal(
            "an intent command was answered without an intent".into(),
        )),
    }
}

/// A killed agent cannot send: not a new intent from it, nor an acknowledgement, resume or
/// resolution in its name (its leases were taken away with the kill). Read from the local
/// replica, like the key itself; the kill's holds in apply are what keep deliveries safe.
fn refuse_killed_sender(cluster: &Cluster, command: &IntentCommand) -> Result<(), OperationsError> {
    let sender = match command {
        IntentCommand::Create { intent, .. } => &intent.from_agent,
        IntentCommand::Acknowledge { actor, .. }
        | IntentCommand::Resume { actor, .. }
        | IntentCommand::Resolve { actor, .. } => actor,
        _ => return Ok(()),
    };
    match cluster.reader().mesh_agent(sender)? {
        Some(agent) if agent.killed => Err(AccessError::Forbidden(format!(
            "agent agent://{} is killed (since {}): it cannot send until it is resumed",
            agent.address,
            agent.killed_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        ))
        .into()),
        _ => Ok(()),
    }
}

/// The event that ended the intent: the last one the command appended, or, on an idempotent
/// replay (which appends nothing), the intent's last event, which is terminal for good.
pub async fn terminal_event(
    cluster: &Cluster,
    written: &Written,
) -> Result<Event, OperationsError> {
    if let Some(event) = written.events.last() {
        return Ok(event.clone());
    }
    let intent = &written.intent;
    cluster.settled().await;
    cluster
        .reader()
        .events(&intent.id, intent.last_seq.saturating_sub(1), 1)?
        .pop()
        .ok_or_else(|| {
            OperationsError::Internal(format!(
                "intent {} has no event {}",
                intent.id, intent.last_seq
            ))
        })
}

/// The clock reading a command carries; read once per request at the edge, never in apply.
pub fn now() -> Timestamp {
    Utc::now()
}

/// The delivery attempts of a new intent that names none: the receiver's registration may
/// override the server default (`AgentConfig::max_delivery_attempts`). Read from the local
/// replica: a registration made moments ago through another node may not count yet.
pub fn default_max_delivery_attempts(
    cluster: &Cluster,
    to_agent: Option<&str>,
    server_default: u32,
) -> Result<u32, OperationsError> {
    let configured = match to_agent {
        Some(to) => cluster
            .reader()
            .agent_config(to)?
            .and_then(|c| c.max_delivery_attempts),
        None => None,
    };
    Ok(configured.unwrap_or(server_default))
}

/// What a create decides at the edge before the contract's rules run
/// (`intentd_lifecycle::validate::new_intent`): a fresh time-ordered id, the sender as the
/// caller's key allows it to be named (admin keys may name one; the others send as their
/// principal, which makes them the intent's owner), and the delivery attempts when the
/// request names none. Both edges create with it, so one request is one intent either way.
pub fn decide_new(
    cluster: &Cluster,
    caller: &ApiKey,
    request: &IntentRequest,
    server_default_attempts: u32,
) -> Result<Decided, OperationsError> {
    Ok(Decided {
        id: intentd_lifecycle::new_intent_id(),
        from_agent: caller.sender_of_new(request.from_agent.as_deref()),
        default_max_delivery_attempts: default_max_delivery_attempts(
            cluster,
            request.to_agent.as_deref(),
            server_default_attempts,
        )?,
    })
}
