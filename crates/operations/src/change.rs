//! A change of an existing intent, made the same way by every edge: load the intent from the
//! local replica, let the caller's role check judge it, read the clock once, claim the
//! idempotency key in the change's own scope, and propose the command.
//!
//! HTTP's resolve, resume, controls and policy and gRPC's resolve, resume and ack all go
//! through [`Change`], in this order, so both edges refuse the same requests for the same
//! reasons and one idempotency key means the same change on both.

use std::time::Duration;

use intentd_consensus::Cluster;
use intentd_lifecycle::{AccessError, ApiKey, IdempotencyClaim, Intent, IntentCommand, Timestamp};
use serde_json::Value;
use uuid::Uuid;

use crate::intents::{load_intent, now, write_intent, Written};
use crate::OperationsError;

/// How long an idempotency key is remembered when the configuration names no other time:
/// a day, the contract's promise (README, "Idempotency").
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The claim an idempotency key makes over `request`: the request as the client sent it, or,
/// from gRPC, the JSON body HTTP would have been sent for it (so one key means one request
/// on both edges). No key, no claim.
pub fn claim(
    scope: String,
    key: Option<String>,
    request: &Value,
    at: Timestamp,
    ttl: Duration,
) -> Option<IdempotencyClaim> {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::days(1));
    key.map(|key| IdempotencyClaim::new(scope, key, request, at, ttl))
}

/// Idempotency scope of the per-intent changes: the same key value used by another caller,
/// for another operation or on another intent is a different key.
pub fn change_scope(caller: &ApiKey, operation: &str, id: Uuid) -> String {
    format!("{}:{operation}:{id}", caller.principal())
}

/// An intent that a caller may change, loaded and checked, with the time its change carries.
pub struct Change<'a> {
    cluster: &'a Cluster,
    scope: String,
    /// The intent as the local replica has it. Enough for the role checks: the addresses
    /// they read (`to_agent`, `from_agent`) never change, so a lagging replica cannot
    /// answer one wrong; the command itself is judged by apply against the committed state.
    pub intent: Intent,
    /// The clock reading the command and its claim carry: read once, here, never in apply.
    pub at: Timestamp,
}

impl<'a> Change<'a> {
    /// Loads intent `id` and lets `authorize` judge the caller against it. `operation` names
    /// the change in the idempotency scope ("resolve", "resume", ...).
    pub async fn begin(
        cluster: &'a Cluster,
        caller: &ApiKey,
        operation: &str,
        id: Uuid,
        authorize: impl FnOnce(&Intent) -> Result<(), AccessError>,
    ) -> Result<Change<'a>, OperationsError> {
        let intent = load_intent(cluster, id, false).await?;
        authorize(&intent)?;
        Ok(Change {
            cluster,
            scope: change_scope(caller, operation, id),
            intent,
            at: now(),
        })
    }

    /// The claim of an idempotency key on this change (see [`claim`]).
    pub fn claim(
        &self,
        key: Option<String>,
        request: &Value,
        ttl: Duration,
    ) -> Option<IdempotencyClaim> {
        claim(self.scope.clone(), key, request, self.at, ttl)
    }

    /// Proposes the change's command (see [`write_intent`] for when it answers).
    pub async fn propose(
        self,
        command: IntentCommand,
        claim: Option<IdempotencyClaim>,
    ) -> Result<Written, OperationsError> {
        write_intent(self.cluster, command, claim).await
    }
}
