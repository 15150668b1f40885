//! The two watching streams: an agent's deliveries and an intent's events.
//!
//! Both are served from the local replica: applied state only moves forward, so a stream
//! never goes backwards. Neither polls: each registers on the one key it reads (the agent's
//! queue, the intent) with `StateReader::watch_queue` / `watch_intent` and wakes only when an
//! applied batch wrote that key, so thousands of idle streams cost writes to other agents
//! nothing. They register before their first read and mark the wake-ups seen before each
//! read, so an entry applied between a read and the wait still wakes them.

use std::time::Duration;

use futures::Stream;
use intentd_consensus::{Cluster, ConsensusError};
use intentd_lifecycle::{agent, Command, Event, Intent, IntentCommand, Reply, Status};
use intentd_storage::Waiter;
use tokio::time::Instant;
use uuid::Uuid;

use crate::intents::now;
use crate::DeliveryError;

/// What a watching stream yields besides errors.
#[derive(Debug, Clone, PartialEq)]
pub enum Watch<T> {
    /// News to pass on.
    Next(T),
    /// Nothing new came within the idle limit, or (intent events) the intent is terminal and
    /// nothing is left after the cursor. The stream ends right after this; a client that
    /// wants more reconnects from `cursor`.
    Quiet { cursor: u64 },
}

/// How a stream reads and how long it may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// After this long without news the stream yields [`Watch::Quiet`] and ends; `None`
    /// keeps it open until the consumer drops it.
    pub idle: Option<Duration>,
    /// How many events or queue entries are read from storage per step.
    pub batch: usize,
    /// Lease length for agents that did not register one (`--ack-timeout-secs`).
    pub default_ack_timeout_secs: u64,
}

/// Which statuses a listener wants to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusFilter(Vec<Status>);

impl StatusFilter {
    /// The default: only actionable (non-terminal) intents.
    pub fn actionable() -> Self {
        StatusFilter(
            Status::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .collect(),
        )
    }

    /// An explicit list replaces the default; an empty one means the default.
    pub fn of(statuses: Vec<Status>) -> Self {
        if statuses.is_empty() {
            Self::actionable()
        } else {
            StatusFilter(statuses)
        }
    }

    /// A comma-separated list of status names, case-insensitive (`?status=` on HTTP); blank
    /// means the default. Returns the first unknown name on failure.
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        let Some(list) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(Self::actionable());
        };
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Status::parse(&s.to_ascii_uppercase()).ok_or_else(|| s.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::of)
    }

    pub fn wants(&self, status: Status) -> bool {
        self.0.contains(&status)
    }

    pub fn statuses(&self) -> &[Status] {
        &self.0
    }
}

/// One intent handed to a listener, at its place in the agent's queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The agent's queue cursor: it only grows, so a listener resumes with the highest one
    /// it saw.
    pub cursor: u64,
    pub intent: Intent,
}

async fn wait_until(waiter: &mut Waiter, deadline: Option<Instant>) -> Result<bool, DeliveryError> {
    let changed = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, waiter.changed()).await {
            Ok(changed) => changed,
            Err(_elapsed) => return Ok(false),
        },
        None => waiter.changed().await,
    };
    changed
        .map(|()| true)
        .map_err(|_| DeliveryError::ShuttingDown)
}

/// The deliveries of the agent at `address` after queue cursor `since`.
///
/// Each queued intent whose status `filter` wants is sent once, in queue order. A SUBMITTED
/// intent is delivered first when the listener wants DELIVERED ones, so the delivery itself
/// is a committed lifecycle step: `IntentCommand::Deliver` is a compare-and-set on the
/// attempt, and when another consumer won the race the current state is sent instead.
///
/// A failed delivery (no quorum) yields the error and ends the stream without moving past
/// the entry, so a listener reconnecting from the last cursor it saw retries it.
pub fn agent_deliveries(
    cluster: Cluster,
    address: String,
    since: u64,
    filter: StatusFilter,
    consumer: String,
    options: StreamOptions,
) -> impl Stream<Item = Result<Watch<Delivery>, DeliveryError>> + Send + 'static {
    async_stream::stream! {
        let reader = cluster.reader().clone();
        let mut queue = reader.watch_queue(&address);
        let mut cursor = since;
        let idle_deadline = || options.idle.map(|idle| Instant::now() + idle);
        let mut deadline = idle_deadline();
        loop {
            queue.mark_seen();
            let entries = match reader.agent_queue(&address, cursor, options.batch) {
                Ok(entries) => entries,
                Err(e) => {
                    yield Err(e.into());
                    return;
                }
            };
            if entries.is_empty() {
                match wait_until(&mut queue, deadline).await {
                    Ok(true) => continue,
                    Ok(false) => yield Ok(Watch::Quiet { cursor }),
                    Err(e) => yield Err(e),
                }
                return;
            }
            for (entry_cursor, id) in entries {
                match offer(&cluster, id, &consumer, &filter, options.default_ack_timeout_secs).await {
                    Ok(Some(intent)) => {
                        yield Ok(Watch::Next(Delivery { cursor: entry_cursor, intent }));
                        deadline = idle_deadline();
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, intent_id = %id, agent = %address, "delivery failed; ending the stream");
                        yield Err(e);
                        return;
                    }
                }
                cursor = entry_cursor;
            }
        }
    }
}

/// Offers one queued intent to `consumer`: what to send, if the filter wants it.
async fn offer(
    cluster: &Cluster,
    id: Uuid,
    consumer: &str,
    filter: &StatusFilter,
    default_ack_timeout_secs: u64,
) -> Result<Option<Intent>, DeliveryError> {
    let reader = cluster.reader();
    let Some(mut intent) = reader.intent(&id)? else {
        return Ok(None);
    };
    // Deliverable: fresh, or delivered before and its lease ran out (a redelivery). A delayed
    // intent is not on the queue before its release, so it never shows up here early.
    let deliverable = match intent.status {
        Status::Submitted => true,
        Status::Delivered => intent.lease.is_none(),
        _ => false,
    };
    if deliverable && filter.wants(Status::Delivered) {
        // The lease lasts the agent's ack timeout (the server default unless it registered one).
        let config = reader.agent_config(&intent.to_agent)?;
        let at = now();
        let deliver = IntentCommand::Deliver {
            intent_id: id,
            expected_attempt: intent.delivery_attempt,
            consumer: consumer.to_string(),
            lease_until: agent::lease_until(at, config.as_ref(), default_ack_timeout_secs),
            at,
        };
        let command = Command::Intent {
            command: deliver,
            idempotency: None,
        };
        match cluster.write(command).await {
            Ok(Reply::Intent { intent: after, .. }) => intent = *after,
            Ok(_) => {
                return Err(DeliveryError::Internal(
                    "Deliver answered without an intent".into(),
                ))
            }
            Err(ConsensusError::Rejected(rejection)) => {
                tracing::debug!(intent_id = %id, %rejection, "delivery lost a race; sending the current state");
                // The winner's write may not be applied here yet.
                cluster.read_barrier().await?;
                match reader.intent(&id)? {
                    Some(current) => intent = current,
                    None => return Ok(None),
                }
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(filter.wants(intent.status).then_some(intent))
}

/// The events of intent `id` after `since`, in `seq` order, live as they are applied.
///
/// Ends right after the terminal event. When the intent is already terminal and nothing is
/// left after `since`, it says [`Watch::Quiet`] at once rather than holding the stream open
/// for the whole idle limit: a terminal intent never has more events.
pub fn intent_events(
    cluster: Cluster,
    id: Uuid,
    since: u64,
    options: StreamOptions,
) -> impl Stream<Item = Result<Watch<Event>, DeliveryError>> + Send + 'static {
    async_stream::stream! {
        let reader = cluster.reader().clone();
        let mut changes = reader.watch_intent(&id);
        let mut cursor = since;
        let idle_deadline = || options.idle.map(|idle| Instant::now() + idle);
        let mut deadline = idle_deadline();
        loop {
            changes.mark_seen();
            let events = match reader.events(&id, cursor, options.batch) {
                Ok(events) => events,
                Err(e) => {
                    yield Err(e.into());
                    return;
                }
            };
            if !events.is_empty() {
                for event in events {
                    cursor = event.seq;
                    let terminal = event.event_type.is_terminal();
                    yield Ok(Watch::Next(event));
                    if terminal {
                        return;
                    }
                }
                deadline = idle_deadline();
                continue;
            }
            let terminal = match reader.intent(&id) {
                Ok(intent) => intent.is_some_and(|i| i.status.is_terminal()),
                Err(e) => {
                    yield Err(e.into());
                    return;
                }
            };
            if terminal {
                yield Ok(Watch::Quiet { cursor });
                return;
            }
            match wait_until(&mut changes, deadline).await {
                Ok(true) => continue,
                Ok(false) => yield Ok(Watch::Quiet { cursor }),
                Err(e) => yield Err(e),
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_is_non_terminal() {
        let f = StatusFilter::parse(None).unwrap();
        assert!(f.wants(Status::Submitted) && f.wants(Status::Delivered));
        assert!(!f.statuses().iter().any(|s| s.is_terminal()));
        assert_eq!(StatusFilter::parse(Some(" ")).unwrap(), f);
        assert_eq!(StatusFilter::of(Vec::new()), f);
        assert_eq!(
            StatusFilter::parse(Some("completed, DELIVERED")).unwrap(),
            StatusFilter(vec![Status::Completed, Status::Delivered])
        );
        assert_eq!(StatusFilter::parse(Some("DONE")).unwrap_err(), "DONE");
    }
}
