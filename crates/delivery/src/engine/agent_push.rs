//! The push of an intent to its HTTP-bound agent: an endpoint slot and the breaker's consent,
//! a `Deliver` lease that outlives the push, the signed POST, and the outcome as a command.

use chrono::Utc;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use intentd_lifecycle::{Binding, Intent, IntentCommand, Resolution, Status, Timestamp};

use super::due_loop::Next;
use super::{Engine, Failure};
use crate::push::{Message, PushOutcome, Settled};

/// The consumer named in the lease of an HTTP push.
const HTTP_CONSUMER: &str = "intentd-http-push";

impl Engine {
    /// The push of one intent to its HTTP agent: take an endpoint slot and the breaker's
    /// consent first (a push held back spends no attempt), then `Deliver`, POST, and the
    /// outcome's command.
    pub(super) async fn deliver(&self, id: Uuid) -> Result<Next, Failure> {
        let Some(intent) = self.load(id)? else {
            return Ok(Next::Stale);
        };
        if intent.status.is_terminal() {
            return Ok(Next::Stale);
        }
        let (binding, ack_secs) = self.agent_binding(&intent)?;
        let Some(Binding::Http {
            url,
            secret,
            max_concurrency,
        }) = binding
        else {
            tracing::warn!(agent = %intent.to_agent, "a push is due but the agent has no HTTP binding");
            return Ok(Next::Stale);
        };
        let endpoint = self.endpoint(&url, max_concurrency);
        let slot = match endpoint.acquire(&self.shared.metrics) {
            Ok(slot) => slot,
            Err(next) => return Ok(next),
        };

        let now = Utc::now();
        // The lease must outlive the push itself, or it could expire while the answer is
        // still on its way and the intent be pushed twice for nothing.
        let lease_secs = ack_secs.max(self.shared.config.request_timeout.as_secs() + 1);
        let delivered = self
            .write_intent(IntentCommand::Deliver {
                intent_id: id,
                expected_attempt: intent.delivery_attempt,
                consumer: HTTP_CONSUMER.into(),
                lease_until: now + chrono::Duration::seconds(lease_secs as i64),
                at: now,
            })
            .await;
        let delivered = match delivered {
            Ok(intent) => intent,
            Err(e) => {
                slot.abandon();
                return Err(e);
            }
        };
        let Some(lease) = delivered.lease.clone() else {
            // Attempts used up: Deliver failed the intent instead.
            slot.abandon();
            if delivered.status == Status::Failed {
                self.shared.metrics.dead_lettered();
                self.shared.metrics.delivery("http", "dead_lettered");
            }
            return Ok(Next::Done);
        };
        let attempt = lease.attempt;
        let message_id = format!("{id}:{attempt}");
        let body = serde_json::to_vec(&push_body(&delivered)).unwrap_or_default();
        let started = Instant::now();
        let outcome = self
            .shared
            .pusher
            .push(
                Message {
                    url: &url,
                    secret: &secret,
                    id: &message_id,
                    body,
                },
                Utc::now().timestamp(),
            )
            .await;
        self.shared.metrics.push(started.elapsed());
        slot.finish(&outcome);

        let at = Utc::now();
        let command = match outcome {
            PushOutcome::Accepted { settled: None } => IntentCommand::Acknowledge {
                intent_id: id,
                attempt,
                actor: delivered.to_agent.clone(),
                at,
            },
            PushOutcome::Accepted {
                settled: Some(settled),
            } => IntentCommand::Resolve {
                intent_id: id,
                resolution: match settled {
                    Settled::Completed(result) => Resolution::Completed { result },
                    Settled::Failed(error) => Resolution::Failed { error },
                },
                actor: delivered.to_agent.clone(),
                at,
            },
            PushOutcome::Failed(ref failure) => IntentCommand::DeliveryFailed {
                intent_id: id,
                attempt,
                error: failure.error.clone(),
                retry_at: self.retry_at(at, attempt, failure),
                at,
            },
        };
        let label = match &command {
            IntentCommand::Acknowledge { .. } => "delivered",
            IntentCommand::Resolve { .. } => "settled",
            _ => "failed",
        };
        tracing::info!(attempt, outcome = label, "pushed");
        self.shared.metrics.delivery("http", label);
        match self.write_intent(command).await {
            Ok(after) => {
                if after.dead_lettered && after.status == Status::Failed {
                    self.shared.metrics.dead_lettered();
                    self.shared.metrics.delivery("http", "dead_lettered");
                }
            }
            // The receiver answered through the API first, or the lease ran out meanwhile:
            // the state already moved on.
            Err(Failure::Rejected(why)) => tracing::debug!(%why, "push outcome not recorded"),
            // No quorum: the lease expires and the intent is pushed again (at least once).
            Err(Failure::Transient(why)) => {
                tracing::warn!(%why, "push outcome not recorded; the lease will expire")
            }
        }
        Ok(Next::Done)
    }
}

/// The JSON body of an intent push: the intent as the agent stream shows it, plus the
/// attempt, so receivers can dedupe on (`intent_id`, `delivery_attempt`).
fn push_body(intent: &Intent) -> Value {
    let ts = |t: &Timestamp| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    json!({
        "type": format!("intent.{}", intent.status.as_str().to_ascii_lowercase()),
        "intent_id": intent.id,
        "status": intent.status.as_str(),
        "intent_type": intent.intent_type,
        "correlation_id": intent.correlation_id,
        "from_agent": intent.from_agent,
        "to_agent": intent.to_agent,
        "reply_to": intent.reply_to,
        "payload": intent.payload,
        "delivery_attempt": intent.delivery_attempt,
        "max_delivery_attempts": intent.max_delivery_attempts,
        "created_at": ts(&intent.created_at),
        "deadline_at": intent.deadline_at.as_ref().map(ts),
        "lease_expires_at": intent.lease.as_ref().map(|l| ts(&l.expires_at)),
    })
}
