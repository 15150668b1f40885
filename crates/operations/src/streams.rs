//! The two watching streams: an agent's deliveries and an intent's events.
//!
//! Both are served from the local replica: applied state only moves forward, so a stream
//! never goes backwards. Neither polls: each registers on the one key it reads (the agent's
//! queue, the intent) with `StateReader::watch_queue` / `watch_intent` and wakes only when an
//! applied batch wrote that key, so thousands of idle streams cost writes to other agents
//! nothing. They register before their first read and mark the wake-ups seen before each
//! read, so an entry applied between a read and the wait still wakes them.

use std::collections::HashMap;
use std::time::Duration;

use futures::Stream;
use intentd_consensus::{Cluster, ConsensusError};
use intentd_lifecycle::{agent, Command, Event, Intent, IntentCommand, Reply, Status};
use intentd_storage::{StateReader, Waiter};
use tokio::time::Instant;
use uuid::Uuid;

use crate::consumers::{Seat, StreamConsumers};
use crate::intents::now;
use crate::OperationsError;

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

async fn wait_until(
    waiter: &mut Waiter,
    deadline: Option<Instant>,
) -> Result<bool, OperationsError> {
    let changed = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, waiter.changed()).await {
            Ok(changed) => changed,
            Err(_elapsed) => return Ok(false),
        },
        None => waiter.changed().await,
    };
    changed
        .map(|()| true)
        .map_err(|_| OperationsError::ShuttingDown)
}

/// The deliveries of the agent at `address` after queue cursor `since`.
///
/// Each queued intent whose status `filter` wants is sent once, in queue order. A listener
/// that wants DELIVERED intents is a consumer, one of the address's competing workers: a
/// fresh intent (or one whose lease ended) is delivered first, and sent only if this
/// stream's `IntentCommand::Deliver` won it. `Deliver` is a compare-and-set on the attempt,
/// replicated, so of two streams (on one node or two) racing for one attempt exactly one
/// wins; the loser sends nothing and sees the intent again only if the winner's lease ends
/// and it is re-enqueued with the next attempt. An intent some consumer already took is
/// therefore not sent to the others; one nobody ever took (an owner moved it on before any
/// delivery) is sent to every listener that wants its status, as is everything sent to a
/// listener that does not want DELIVERED ones (it only watches).
///
/// Consumers of one node take turns ([`StreamConsumers`]): the least loaded goes first.
///
/// When the client goes away (the stream is dropped before it ended by itself), the leases
/// it still holds are released at once with `IntentCommand::ReleaseLease`, so another
/// consumer gets them now rather than when they run out. A stream that ends by itself (idle
/// limit, failure, shutdown) keeps them: its client reconnects and may still be working on
/// them.
///
/// A failed delivery (no quorum) yields the error and ends the stream without moving past
/// the entry, so a listener reconnecting from the last cursor it saw retries it.
pub fn agent_deliveries(
    cluster: Cluster,
    consumers: StreamConsumers,
    address: String,
    since: u64,
    filter: StatusFilter,
    consumer: String,
    options: StreamOptions,
) -> impl Stream<Item = Result<Watch<Delivery>, OperationsError>> + Send + 'static {
    async_stream::stream! {
        let reader = cluster.reader().clone();
        let mut queue = reader.watch_queue(&address);
        let consuming = filter.wants(Status::Delivered);
        // A consumer also wakes when an intent of the address changes (one of its leases was
        // settled) and when another consumer of the address moves (its turn may have come).
        let mut addressed = consuming.then(|| reader.watch_addressed_to(&address));
        let mut seat = consuming.then(|| consumers.join(&address, since));
        let mut leases = Leases::new(cluster.clone(), consumer.clone());
        let mut cursor = since;
        let idle_deadline = || options.idle.map(|idle| Instant::now() + idle);
        let mut deadline = idle_deadline();
        loop {
            queue.mark_seen();
            if let Some(addressed) = addressed.as_mut() {
                addressed.mark_seen();
            }
            if let Some(seat) = seat.as_mut() {
                seat.mark_seen();
            }
            // The load only ranks this stream against others: a stream alone on its address
            // (the usual case) does not re-read what it holds at every wake-up.
            if let Some(seat) = seat.as_ref().filter(|s| !s.alone()) {
                match leases.refresh(&reader) {
                    Ok(held) => seat.holds(held),
                    Err(e) => {
                        leases.keep();
                        yield Err(e);
                        return;
                    }
                }
            }
            let entries = match reader.agent_queue(&address, cursor, options.batch) {
                Ok(entries) => entries,
                Err(e) => {
                    leases.keep();
                    yield Err(e.into());
                    return;
                }
            };
            let mut wait = entries.is_empty();
            for (entry_cursor, id) in entries {
                let offered = offer(
                    &cluster,
                    id,
                    entry_cursor,
                    &filter,
                    seat.as_ref(),
                    &mut leases,
                    options.default_ack_timeout_secs,
                )
                .await;
                match offered {
                    Ok(Offer::Send(intent)) => {
                        yield Ok(Watch::Next(Delivery { cursor: entry_cursor, intent: *intent }));
                        deadline = idle_deadline();
                    }
                    Ok(Offer::Skip) => {}
                    Ok(Offer::NotMyTurn) => {
                        wait = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, intent_id = %id, agent = %address, "delivery failed; ending the stream");
                        leases.keep();
                        yield Err(e);
                        return;
                    }
                }
                cursor = entry_cursor;
                if let Some(seat) = &seat {
                    seat.moved_to(cursor);
                }
            }
            if !wait {
                continue;
            }
            match wait_for_news(&mut queue, addressed.as_mut(), seat.as_mut(), deadline).await {
                Ok(true) => continue,
                Ok(false) => {
                    leases.keep();
                    yield Ok(Watch::Quiet { cursor });
                }
                Err(e) => {
                    leases.keep();
                    yield Err(e);
                }
            }
            return;
        }
    }
}

/// Waits for any of a stream's wake-ups, up to `deadline`: `Ok(false)` when it passed.
async fn wait_for_news(
    queue: &mut Waiter,
    addressed: Option<&mut Waiter>,
    seat: Option<&mut Seat>,
    deadline: Option<Instant>,
) -> Result<bool, OperationsError> {
    let news = async {
        tokio::select! {
            changed = queue.changed() => changed,
            changed = async {
                match addressed {
                    Some(addressed) => addressed.changed().await,
                    None => std::future::pending().await,
                }
            } => changed,
            () = async {
                match seat {
                    Some(seat) => seat.changed().await,
                    None => std::future::pending().await,
                }
            } => Ok(()),
        }
    };
    let changed = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, news).await {
            Ok(changed) => changed,
            Err(_elapsed) => return Ok(false),
        },
        None => news.await,
    };
    changed
        .map(|()| true)
        .map_err(|_| OperationsError::ShuttingDown)
}

/// The leases one consuming stream won and may still hold, by intent: the attempt of each.
///
/// Dropped with the stream: unless the stream ended by itself ([`Leases::keep`]), the ones
/// still held are released so that another consumer gets them at once.
struct Leases {
    cluster: Cluster,
    consumer: String,
    held: HashMap<Uuid, u32>,
    keep: bool,
}

impl Leases {
    fn new(cluster: Cluster, consumer: String) -> Self {
        Leases {
            cluster,
            consumer,
            held: HashMap::new(),
            keep: false,
        }
    }

    /// Forgets the leases that were settled (acknowledged, progressed, resolved), released
    /// or expired since, and says how many are left.
    fn refresh(&mut self, reader: &StateReader) -> Result<usize, OperationsError> {
        let mut gone = Vec::new();
        for (id, attempt) in &self.held {
            let still = reader
                .intent(id)?
                .is_some_and(|i| holds(&i, &self.consumer, *attempt));
            if !still {
                gone.push(*id);
            }
        }
        for id in gone {
            self.held.remove(&id);
        }
        Ok(self.held.len())
    }

    /// The stream ended by itself: its client will reconnect and may still be working on
    /// what it holds.
    fn keep(&mut self) {
        self.keep = true;
    }
}

fn holds(intent: &Intent, consumer: &str, attempt: u32) -> bool {
    intent.status == Status::Delivered
        && intent
            .lease
            .as_ref()
            .is_some_and(|l| l.consumer == consumer && l.attempt == attempt)
}

impl Drop for Leases {
    fn drop(&mut self) {
        if self.keep || self.held.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Only what is still held: settled ones would only be refused.
        let reader = self.cluster.reader().clone();
        if self.refresh(&reader).is_err() || self.held.is_empty() {
            return;
        }
        let cluster = self.cluster.clone();
        let consumer = std::mem::take(&mut self.consumer);
        let held = std::mem::take(&mut self.held);
        runtime.spawn(async move {
            for (intent_id, attempt) in held {
                let release = IntentCommand::ReleaseLease {
                    intent_id,
                    attempt,
                    consumer: consumer.clone(),
                    at: now(),
                };
                let command = Command::Intent {
                    command: release,
                    idempotency: None,
                };
                match cluster.write(command).await {
                    Ok(_) => {
                        tracing::info!(%intent_id, attempt, %consumer, "stream closed; its lease is released")
                    }
                    // Settled or expired meanwhile: nothing to give back.
                    Err(ConsensusError::Rejected(rejection)) => {
                        tracing::debug!(%intent_id, attempt, %rejection, "nothing to release")
                    }
                    // The lease still runs out and is offered again then.
                    Err(e) => {
                        tracing::warn!(%intent_id, attempt, error = %e, "releasing a closed stream's lease failed")
                    }
                }
            }
        });
    }
}

/// What a stream does with one queue entry.
#[derive(Debug)]
enum Offer {
    Send(Box<Intent>),
    Skip,
    /// Another consumer of this node goes first; look again when something changes.
    NotMyTurn,
}

/// Offers the queued intent `id` (at queue cursor `entry`): what to send, if anything.
async fn offer(
    cluster: &Cluster,
    id: Uuid,
    entry: u64,
    filter: &StatusFilter,
    seat: Option<&Seat>,
    leases: &mut Leases,
    default_ack_timeout_secs: u64,
) -> Result<Offer, OperationsError> {
    let reader = cluster.reader();
    let Some(intent) = reader.intent(&id)? else {
        return Ok(Offer::Skip);
    };
    let wanted = |intent: Intent| {
        if filter.wants(intent.status) {
            Offer::Send(Box::new(intent))
        } else {
            Offer::Skip
        }
    };
    let Some(seat) = seat else {
        return Ok(wanted(intent));
    };
    // Deliverable: fresh, or delivered before and its lease ran out (a redelivery). A delayed
    // intent is not on the queue before its release, so it never shows up here early.
    let deliverable = match intent.status {
        Status::Submitted => true,
        Status::Delivered => intent.lease.is_none(),
        _ => false,
    };
    if !deliverable {
        // Delivered before: that attempt is its lease holder's alone. Never delivered
        // (moved on by its owner, or waiting): nobody's, so every consumer sees it.
        return Ok(if intent.delivery_attempt == 0 {
            wanted(intent)
        } else {
            Offer::Skip
        });
    }
    if !seat.my_turn(entry) {
        return Ok(Offer::NotMyTurn);
    }
    // The lease lasts the agent's ack timeout (the server default unless it registered one).
    let config = reader.agent_config(&intent.to_agent)?;
    let at = now();
    let deliver = IntentCommand::Deliver {
        intent_id: id,
        expected_attempt: intent.delivery_attempt,
        consumer: leases.consumer.clone(),
        lease_until: agent::lease_until(at, config.as_ref(), default_ack_timeout_secs),
        at,
    };
    let command = Command::Intent {
        command: deliver,
        idempotency: None,
    };
    match cluster.write(command).await {
        Ok(Reply::Intent { intent: after, .. }) => {
            let attempt = after.delivery_attempt;
            if holds(&after, &leases.consumer, attempt) {
                leases.held.insert(id, attempt);
                seat.took_one();
                Ok(Offer::Send(after))
            } else {
                // Out of attempts: the delivery failed the intent instead of leasing it.
                Ok(wanted(*after))
            }
        }
        Ok(_) => Err(OperationsError::Internal(
            "Deliver answered without an intent".into(),
        )),
        Err(ConsensusError::Rejected(rejection)) => {
            // Another consumer (a stream here or on another node, or a poller) holds this
            // attempt: it is theirs, and this stream sends nothing.
            tracing::debug!(intent_id = %id, %rejection, "delivery lost a race; not sending it");
            Ok(Offer::Skip)
        }
        Err(other) => Err(other.into()),
    }
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
) -> impl Stream<Item = Result<Watch<Event>, OperationsError>> + Send + 'static {
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
