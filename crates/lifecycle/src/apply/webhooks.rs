//! Webhooks: subscriptions, the fan-out of lifecycle events to them, and push outcomes.

use super::*;

pub(super) fn upsert_subscription(
    state: &impl StateView,
    subscription: &Subscription,
) -> Result<Applied, Rejection> {
    let mut sub = subscription.clone();
    sub.owner = state_key(&sub.owner).to_string();
    if sub.callback_url.is_empty() || sub.event_types.is_empty() {
        return Err(Rejection::Invalid(
            "a subscription needs a callback_url and at least one event type".into(),
        ));
    }
    let existing = state.subscriptions_of(&sub.owner);
    if let Some(same) = existing.iter().find(|s| s.callback_url == sub.callback_url) {
        sub.id = same.id;
        sub.created_at = same.created_at;
    } else if state.subscription(&sub.id).is_some() {
        return Err(Rejection::AlreadyExists(sub.id));
    }
    if sub.active {
        sub.revoked_at = None;
    }
    Ok(Applied {
        writes: vec![Write::Subscription(Box::new(sub.clone()))],
        reply: Reply::Subscription(Box::new(sub)),
    })
}

/// One pending delivery, due at the event's time, per active matching subscription.
pub(super) fn fan_out(
    event: &WebhookEvent,
    subs: &[Subscription],
    writes: &mut Vec<Write>,
) -> Vec<WebhookDelivery> {
    writes.push(Write::WebhookEvent(Box::new(event.clone())));
    let mut deliveries = Vec::new();
    for sub in subs
        .iter()
        .filter(|s| s.active && s.matches(&event.event_type))
    {
        let delivery = WebhookDelivery {
            delivery_id: derived_id(&event.event_id, sub.id.as_bytes()),
            event_id: event.event_id,
            subscription_id: sub.id,
            attempts: 0,
            replays: 0,
            status: WebhookDeliveryStatus::Pending,
            next_attempt_at: Some(event.at),
            last_error: None,
        };
        writes.push(Write::Due {
            at: event.at,
            kind: DueKind::WebhookDelivery,
            id: delivery.delivery_id,
        });
        writes.push(Write::WebhookDelivery(Box::new(delivery.clone())));
        deliveries.push(delivery);
    }
    deliveries
}

pub(super) fn webhook_outcome(
    state: &impl StateView,
    delivery_id: &Uuid,
    (attempt, replays): (u32, u32),
    outcome: &WebhookOutcome,
) -> Result<Applied, Rejection> {
    let mut d = state
        .webhook_delivery(delivery_id)
        .ok_or(Rejection::NotFound(*delivery_id))?;
    if replays != d.replays {
        return Err(Rejection::Invalid(format!(
            "webhook delivery {delivery_id} was replayed since this push began"
        )));
    }
    if attempt != d.attempts {
        return Err(Rejection::StaleAttempt {
            expected: attempt,
            current: d.attempts,
        });
    }
    if d.status != WebhookDeliveryStatus::Pending {
        return Err(Rejection::Invalid(format!(
            "webhook delivery {delivery_id} is no longer pending"
        )));
    }
    let mut writes = Vec::new();
    if let Some(old) = d.next_attempt_at.take() {
        writes.push(Write::Undue {
            at: old,
            kind: DueKind::WebhookDelivery,
            id: d.delivery_id,
        });
    }
    d.attempts += 1;
    match outcome {
        WebhookOutcome::Delivered => {
            d.status = WebhookDeliveryStatus::Delivered;
            d.last_error = None;
        }
        WebhookOutcome::Failed { error, retry_at } => {
            d.last_error = Some(error.clone());
            match retry_at {
                Some(retry) => {
                    d.next_attempt_at = Some(*retry);
                    writes.push(Write::Due {
                        at: *retry,
                        kind: DueKind::WebhookDelivery,
                        id: d.delivery_id,
                    });
                }
                None => d.status = WebhookDeliveryStatus::DeadLettered,
            }
        }
    }
    writes.push(Write::WebhookDelivery(Box::new(d.clone())));
    Ok(Applied {
        writes,
        reply: Reply::WebhookDelivery(Box::new(d)),
    })
}
