//! The push of an intent to its HTTP-bound agent: an endpoint slot and the breaker's consent,
//! a `Deliver` lease that outlives the push, the signed POST, and the outcome as a command.

use chrono::Utc;
use tokio::time::Instant;
use uuid::Uuid;

use intentd_lifecycle::{Binding, IntentCommand, Resolution, Status};
use intentd_operations::view::{self, Handed};

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
        let body =
            serde_json::to_vec(&view::delivery(&delivered, Handed::Pushed)).unwrap_or_default();
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
