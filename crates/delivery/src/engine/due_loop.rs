//! The due loop of one leadership: read the due index up to now, hand each entry to a task,
//! and sleep until the next entry is due, something is applied, or a task finishes. What it
//! holds back (in flight, endpoint busy, breaker open, refused) is remembered here, in memory,
//! for the rest of the leadership only.

use std::collections::HashMap;

use chrono::Utc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;

use intentd_lifecycle::{DueEntry, DueKind, IntentCommand, Timestamp};

use super::{Engine, Failure, TRANSIENT_RETRY};
use crate::metrics::kind_name;

/// What the loop does with an entry after its task finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Handled: apply removed or replaced the entry.
    Done,
    /// The endpoint is at its concurrency cap, or its probe is out: try again when any task
    /// finishes.
    Busy,
    /// Not before this instant (breaker open, or a transient failure).
    Until(Instant),
    /// Apply refused the command (the entry no longer matches the state), or the entry
    /// cannot be acted on: leave it for the rest of this leadership.
    Stale,
}

/// Why an entry is not dispatched now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    InFlight,
    Busy,
    Until(Instant),
    Stale,
}

impl Engine {
    /// One leadership: dispatch due entries until the state machine closes.
    pub(super) async fn lead(&self) {
        let reader = self.shared.cluster.reader().clone();
        let mut applied = reader.subscribe();
        // Catch up with everything committed before this term, so the index is not read
        // with entries a previous leader's last commands already removed.
        while let Err(e) = self.shared.cluster.read_barrier().await {
            tracing::warn!(error = %e, "engine: waiting to catch up before dispatching");
            tokio::time::sleep(TRANSIENT_RETRY).await;
        }
        self.agree_on_retention().await;
        let mut tasks: JoinSet<(DueEntry, Next)> = JoinSet::new();
        let mut holds: HashMap<DueEntry, Hold> = HashMap::new();
        let config = &self.shared.config;
        loop {
            applied.borrow_and_update();
            let now = Utc::now();
            let instant = Instant::now();
            holds.retain(|_, h| !matches!(h, Hold::Until(t) if *t <= instant));
            let limit = holds.len() + config.batch;
            let entries = match reader.due_before(far_future(now), limit) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::error!(error = %e, "engine: reading the due index");
                    tokio::time::sleep(TRANSIENT_RETRY).await;
                    continue;
                }
            };
            let page_full = entries.len() == limit;
            let mut next_at: Option<Timestamp> = None;
            let mut saturated = false;
            for entry in entries {
                if holds.contains_key(&entry) {
                    continue;
                }
                if entry.at > now {
                    next_at = Some(entry.at);
                    break;
                }
                if tasks.len() >= config.max_in_flight {
                    saturated = true;
                    break;
                }
                holds.insert(entry, Hold::InFlight);
                let engine = self.clone();
                let span = entry_span(&entry);
                tasks.spawn(
                    async move {
                        let next = engine.dispatch(entry).await;
                        (entry, next)
                    }
                    .instrument(span),
                );
            }
            // When to look again without news: the next entry's time, unless the page ended
            // before any future entry (look again at once), or every slot is busy (a task
            // finishing wakes the loop).
            let by_index = if saturated {
                None
            } else if let Some(at) = next_at {
                Some(instant + (at - now).to_std().unwrap_or_default())
            } else if page_full {
                Some(instant)
            } else {
                None
            };
            let by_hold = holds
                .values()
                .filter_map(|h| match h {
                    Hold::Until(t) => Some(*t),
                    _ => None,
                })
                .min();
            let wake = by_index.into_iter().chain(by_hold).min();
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                () = sleep_until(wake) => {}
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    settle(&mut holds, joined);
                    while let Some(joined) = tasks.try_join_next() {
                        settle(&mut holds, joined);
                    }
                }
            }
        }
    }

    async fn dispatch(&self, entry: DueEntry) -> Next {
        let result = match entry.kind {
            DueKind::LeaseExpiry => self.expire_lease(entry.id).await,
            DueKind::Deliver => self.deliver(entry.id).await,
            DueKind::Release => {
                self.simple(IntentCommand::Release {
                    intent_id: entry.id,
                    at: Utc::now(),
                })
                .await
            }
            DueKind::Deadline => {
                self.simple(IntentCommand::TimeOut {
                    intent_id: entry.id,
                    at: Utc::now(),
                })
                .await
            }
            DueKind::Reminder => {
                self.simple(IntentCommand::Remind {
                    intent_id: entry.id,
                    at: Utc::now(),
                })
                .await
            }
            DueKind::WebhookDelivery => self.webhook(entry.id).await,
            DueKind::Purge => self.purge(entry.id).await,
            DueKind::WorkflowStep => self.advance_workflow(entry.id).await,
        };
        match result {
            Ok(next) => next,
            Err(Failure::Rejected(why)) => {
                tracing::debug!(%why, "engine: the command was refused; the entry is left alone");
                Next::Stale
            }
            Err(Failure::Transient(why)) => {
                tracing::warn!(%why, "engine: no answer for a due entry; trying again shortly");
                Next::Until(Instant::now() + TRANSIENT_RETRY)
            }
        }
    }
}

fn settle(
    holds: &mut HashMap<DueEntry, Hold>,
    joined: Result<(DueEntry, Next), tokio::task::JoinError>,
) {
    let (entry, next) = match joined {
        Ok(done) => done,
        Err(e) => {
            // A panicked task leaves its entry held for this leadership, never in a hot loop;
            // its endpoint slot was released as it unwound.
            tracing::error!(error = %e, "engine task failed");
            holds.retain(|_, h| *h != Hold::Busy);
            return;
        }
    };
    // A task that got past the endpoint check may have freed a slot or settled a probe:
    // whatever waited for one may go. One that was itself turned away freed nothing, and
    // waking the others for it would spin them against a full endpoint.
    if next != Next::Busy {
        holds.retain(|_, h| *h != Hold::Busy);
    }
    match next {
        Next::Done => {
            holds.remove(&entry);
        }
        Next::Busy => {
            holds.insert(entry, Hold::Busy);
        }
        Next::Until(t) => {
            holds.insert(entry, Hold::Until(t));
        }
        Next::Stale => {
            holds.insert(entry, Hold::Stale);
        }
    }
}

fn entry_span(entry: &DueEntry) -> tracing::Span {
    let kind = kind_name(entry.kind);
    match entry.kind {
        DueKind::WebhookDelivery => {
            tracing::info_span!("due", kind, delivery_id = %entry.id)
        }
        _ => tracing::info_span!("due", kind, intent_id = %entry.id),
    }
}

/// An upper bound for "every entry" that stays far inside the index's key encoding.
fn far_future(now: Timestamp) -> Timestamp {
    now + chrono::Duration::days(365 * 100)
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
