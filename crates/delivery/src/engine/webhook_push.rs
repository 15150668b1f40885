//! The push of a webhook event to a subscription's callback URL, and its outcome recorded as
//! a compare-and-set on the delivery's attempts.

use chrono::Utc;
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use intentd_lifecycle::{
    Command, Subscription, WebhookDelivery, WebhookDeliveryStatus, WebhookEvent, WebhookOutcome,
};

use super::due_loop::Next;
use super::{Engine, Failure};
use crate::push::{Message, PushOutcome};

/// Pushes to one webhook callback URL at a time per subscription endpoint: subscriptions
/// have no concurrency setting of their own.
const WEBHOOK_CONCURRENCY: u32 = 4;

impl Engine {
    /// One push of a webhook delivery and its recorded outcome (CAS on `attempts`).
    pub(super) async fn webhook(&self, delivery_id: Uuid) -> Result<Next, Failure> {
        let reader = self.shared.cluster.reader();
        let transient = |e: intentd_storage::StorageError| Failure::Transient(e.to_string());
        let Some(delivery) = reader.webhook_delivery(&delivery_id).map_err(transient)? else {
            return Ok(Next::Stale);
        };
        if delivery.status != WebhookDeliveryStatus::Pending {
            return Ok(Next::Stale);
        }
        let subscription = reader
            .subscription(&delivery.subscription_id)
            .map_err(transient)?;
        let Some(event) = reader
            .webhook_event(&delivery.event_id)
            .map_err(transient)?
        else {
            return Ok(Next::Stale);
        };
        let subscription = match subscription {
            Some(s) if s.active && s.revoked_at.is_none() => s,
            _ => {
                let outcome = WebhookOutcome::Failed {
                    error: "the subscription is revoked or inactive".into(),
                    retry_at: None,
                };
                self.webhook_outcome(&delivery, outcome).await?;
                return Ok(Next::Done);
            }
        };
        let endpoint = self.endpoint(&subscription.callback_url, WEBHOOK_CONCURRENCY);
        let slot = match endpoint.acquire(&self.shared.metrics) {
            Ok(slot) => slot,
            Err(next) => return Ok(next),
        };
        let outcome = self.push_webhook(&subscription, &event).await;
        slot.finish(&outcome);
        let attempt = delivery.attempts + 1;
        let outcome = match outcome {
            PushOutcome::Accepted { .. } => WebhookOutcome::Delivered,
            PushOutcome::Failed(failure) => {
                let retry_at = if attempt >= self.shared.config.webhook_max_attempts {
                    None
                } else {
                    self.retry_at(Utc::now(), attempt, &failure)
                };
                WebhookOutcome::Failed {
                    error: failure.error,
                    retry_at,
                }
            }
        };
        self.webhook_outcome(&delivery, outcome).await?;
        Ok(Next::Done)
    }

    async fn push_webhook(&self, subscription: &Subscription, event: &WebhookEvent) -> PushOutcome {
        let body = json!({
            "type": event.event_type,
            "timestamp": event.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "event_id": event.event_id,
            "source": event.source,
            "data": event.payload,
        });
        let message_id = event.event_id.to_string();
        let started = Instant::now();
        let outcome = self
            .shared
            .pusher
            .push(
                Message {
                    url: &subscription.callback_url,
                    secret: &subscription.secret,
                    id: &message_id,
                    body: serde_json::to_vec(&body).unwrap_or_default(),
                },
                Utc::now().timestamp(),
            )
            .await;
        self.shared.metrics.push(started.elapsed());
        outcome
    }

    async fn webhook_outcome(
        &self,
        delivery: &WebhookDelivery,
        outcome: WebhookOutcome,
    ) -> Result<(), Failure> {
        let label = match &outcome {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Failed { retry_at: None, .. } => "dead_lettered",
            WebhookOutcome::Failed { .. } => "failed",
        };
        tracing::info!(
            attempt = delivery.attempts + 1,
            outcome = label,
            "webhook pushed"
        );
        self.shared.metrics.webhook_push(label);
        self.write(Command::WebhookDeliveryOutcome {
            delivery_id: delivery.delivery_id,
            attempt: delivery.attempts,
            replays: delivery.replays,
            outcome,
            at: Utc::now(),
        })
        .await
        .map(|_| ())
    }
}
