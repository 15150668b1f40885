//! The leader-side delivery engine: acts on the due-time index.
//!
//! Every node runs [`Engine::run`], but it only works while the node leads: the leader's state
//! machine is the most current one, and one actor avoids two nodes pushing the same intent.
//! It never changes state itself; it proposes commands (`ExpireLease`, `Deliver`,
//! `DeliveryFailed`, `Release`, `TimeOut`, `Remind`, `WebhookDeliveryOutcome`, `Purge`, and
//! `SetRetention` once per leadership when its configuration differs) and apply
//! decides. Whatever is nondeterministic (the clock, the backoff jitter) is decided here and
//! carried in the command. The schedule lives only in the replicated due index, so a new
//! leader reads it from the start and nothing is forgotten on failover.
//!
//! The loop takes due entries up to now, hands each to a task, then sleeps until the next
//! entry is due, an entry is applied anywhere in the state (it may add an earlier entry), or
//! a task finishes; there is no polling interval. Entries it is working on or holding back
//! (endpoint busy, breaker open, a rejected command) are remembered in memory so the index
//! is not re-dispatched in a loop; that memory dies with the leadership.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;
use uuid::Uuid;

use intentd_consensus::{Cluster, ConsensusError};
use intentd_lifecycle::{
    state_key, Binding, Command, DueEntry, DueKind, Intent, IntentCommand, Reply, Resolution,
    Retention, Status, Subscription, Timestamp, WebhookDelivery, WebhookDeliveryStatus,
    WebhookEvent, WebhookOutcome, DEFAULT_ACK_TIMEOUT_SECS,
};

use crate::backoff::Backoff;
use crate::breaker::{Admit, Breaker, BreakerConfig};
use crate::metrics::{kind_name, Metrics};
use crate::push::{Message, PushFailure, PushOutcome, Pusher, Settled};
use crate::ssrf::AllowList;

/// Pushes to one webhook callback URL at a time per subscription endpoint: subscriptions
/// have no concurrency setting of their own.
const WEBHOOK_CONCURRENCY: u32 = 4;

/// How long an entry whose command failed without an answer (no quorum, timeout) waits
/// before it is tried again.
const TRANSIENT_RETRY: Duration = Duration::from_secs(1);

/// The consumer named in the lease of an HTTP push.
const HTTP_CONSUMER: &str = "intentd-http-push";

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Hosts and ranges pushes may reach despite the SSRF guard.
    pub allow: AllowList,
    pub backoff: Backoff,
    /// One push, from connect to the last byte of the answer.
    pub request_timeout: Duration,
    /// Lease length for agents that registered none.
    pub default_ack_timeout_secs: u64,
    pub breaker: BreakerConfig,
    /// Pushes of one webhook delivery before it is dead-lettered.
    pub webhook_max_attempts: u32,
    /// Due entries worked on at once (proposals and pushes).
    pub max_in_flight: usize,
    /// Due entries read per look at the index, beyond those already held.
    pub batch: usize,
    /// PEM certificates trusted for HTTPS pushes besides the bundled public roots (a
    /// private CA of the receivers).
    pub extra_roots_pem: Option<Arc<Vec<u8>>>,
    /// The retention this node wants: a leader whose state holds another proposes it.
    /// `None` leaves the state's retention alone (engine tests that set none).
    pub retention: Option<Retention>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            allow: AllowList::default(),
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(10),
            default_ack_timeout_secs: DEFAULT_ACK_TIMEOUT_SECS,
            breaker: BreakerConfig::default(),
            webhook_max_attempts: 8,
            max_in_flight: 256,
            batch: 128,
            extra_roots_pem: None,
            retention: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("building the push client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The engine of one node. Cheap to clone; clones share endpoints and metrics.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    cluster: Cluster,
    config: EngineConfig,
    metrics: Metrics,
    pusher: Pusher,
    /// Per push URL: its concurrency cap and breaker. Kept across leaderships of this node,
    /// so a receiver known to be down stays held back after a re-election here.
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

struct Endpoint {
    limit: u32,
    permits: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
}

/// What the loop does with an entry after its task finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
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
    pub fn new(
        cluster: Cluster,
        config: EngineConfig,
        metrics: Metrics,
    ) -> Result<Self, EngineError> {
        let pusher = Pusher::new(
            config.allow.clone(),
            config.request_timeout,
            config.extra_roots_pem.as_deref().map(Vec::as_slice),
        )?;
        metrics.bind(&cluster);
        Ok(Engine {
            shared: Arc::new(Shared {
                cluster,
                config,
                metrics,
                pusher,
                endpoints: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Runs until `shutdown` resolves or Raft stops: leads while the node is leader, idles
    /// otherwise. Losing leadership or shutting down drops every task of the leadership at
    /// once (an interrupted push is redelivered after its lease: at least once).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let mut raft_metrics = self.shared.cluster.raft().metrics();
        tokio::pin!(shutdown);
        loop {
            let term = loop {
                let leading = {
                    let m = raft_metrics.borrow_and_update();
                    (m.state.is_leader() && m.current_leader == Some(m.id))
                        .then_some(m.current_term)
                };
                if let Some(term) = leading {
                    break term;
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    changed = raft_metrics.changed() => if changed.is_err() { return },
                }
            };
            tracing::info!(term, "leading: the delivery engine starts");
            self.shared.metrics.set_engine_active(true);
            let mut watch = raft_metrics.clone();
            let lost = watch.wait_for(|m| !m.state.is_leader() || m.current_term != term);
            let stop = tokio::select! {
                _ = &mut shutdown => true,
                lost = lost => lost.is_err(),
                () = self.lead() => true,
                () = crate::health::sweep(self.shared.cluster.clone()) => true,
            };
            self.shared.metrics.set_engine_active(false);
            tracing::info!(term, "the delivery engine stops");
            if stop {
                return;
            }
        }
    }

    /// One leadership: dispatch due entries until the state machine closes.
    async fn lead(&self) {
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

    /// Makes the state's retention this node's configured one, once per leadership: the
    /// purge times of intents are decided at apply from the replicated setting, so every
    /// replica writes the same ones. Nodes configured differently hand the setting back and
    /// forth as leadership moves; the README asks for one value on every node.
    async fn agree_on_retention(&self) {
        let Some(wanted) = self.shared.config.retention else {
            return;
        };
        loop {
            match self.shared.cluster.reader().retention() {
                Ok(current) if current == wanted => return,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "engine: reading the retention"),
            }
            match self
                .write(Command::SetRetention { retention: wanted })
                .await
            {
                Ok(_) => {
                    tracing::info!(?wanted, "retention set");
                    return;
                }
                // Someone set it meanwhile (this node's earlier try that looked lost).
                Err(Failure::Rejected(why)) => {
                    tracing::debug!(%why, "engine: retention not set");
                    return;
                }
                Err(Failure::Transient(why)) => {
                    tracing::warn!(%why, "engine: setting the retention; trying again");
                    tokio::time::sleep(TRANSIENT_RETRY).await;
                }
            }
        }
    }

    /// Purges an ended intent whose retention ran out. Apply checks the purge time against
    /// this command's `at`, so a purge decided on a stale read is refused and changes nothing.
    async fn purge(&self, id: Uuid) -> Result<Next, Failure> {
        self.write(Command::Purge {
            intent_id: id,
            at: Utc::now(),
        })
        .await?;
        self.shared.metrics.purged();
        tracing::debug!("purged");
        Ok(Next::Done)
    }

    /// Proposes a command, timing the commit.
    async fn write(&self, command: Command) -> Result<Reply, Failure> {
        let started = Instant::now();
        let result = self.shared.cluster.write(command).await;
        self.shared.metrics.commit(started.elapsed());
        match result {
            Ok(reply) => Ok(reply),
            Err(ConsensusError::Rejected(rejection)) => {
                Err(Failure::Rejected(rejection.to_string()))
            }
            Err(other) => Err(Failure::Transient(other.to_string())),
        }
    }

    async fn write_intent(&self, command: IntentCommand) -> Result<Intent, Failure> {
        match self
            .write(Command::Intent {
                command,
                idempotency: None,
            })
            .await?
        {
            Reply::Intent { intent, .. } => Ok(*intent),
            other => Err(Failure::Rejected(format!(
                "an intent command was answered with {other:?}"
            ))),
        }
    }

    /// Release, TimeOut, Remind: one command, no push.
    async fn simple(&self, command: IntentCommand) -> Result<Next, Failure> {
        let intent = self.write_intent(command).await?;
        if intent.dead_lettered && intent.status == Status::Failed {
            self.shared.metrics.dead_lettered();
        }
        Ok(Next::Done)
    }

    fn agent_binding(&self, intent: &Intent) -> Result<(Option<Binding>, u64), Failure> {
        let config = self
            .shared
            .cluster
            .reader()
            .agent_config(state_key(&intent.to_agent))
            .map_err(|e| Failure::Transient(e.to_string()))?;
        let ack = config
            .as_ref()
            .map_or(self.shared.config.default_ack_timeout_secs, |c| {
                c.ack_timeout_secs
            });
        Ok((config.map(|c| c.binding), ack))
    }

    async fn expire_lease(&self, id: Uuid) -> Result<Next, Failure> {
        let Some(intent) = self.load(id)? else {
            return Ok(Next::Stale);
        };
        let Some(lease) = intent.lease.clone() else {
            return Ok(Next::Stale);
        };
        let (binding, _) = self.agent_binding(&intent)?;
        let now = Utc::now();
        let retry_at =
            self.shared
                .config
                .backoff
                .retry_at(now, lease.attempt, None, &mut rand::thread_rng());
        let after = self
            .write_intent(IntentCommand::ExpireLease {
                intent_id: id,
                attempt: lease.attempt,
                retry_at,
                at: now,
            })
            .await?;
        let mode = binding.as_ref().map_or("stream", Binding::mode);
        self.shared.metrics.lease_expired();
        self.shared.metrics.delivery(mode, "lease_expired");
        if after.dead_lettered && after.status == Status::Failed {
            self.shared.metrics.dead_lettered();
            self.shared.metrics.delivery(mode, "dead_lettered");
        }
        tracing::info!(attempt = lease.attempt, status = %after.status, "lease expired");
        Ok(Next::Done)
    }

    /// A workflow step's timer or deadline is due: propose the tick for the step and attempt
    /// that are active now. Apply decides what the time means for the step; the tick names
    /// both, so one proposed twice (here, or by the next leader) is refused the second time.
    async fn advance_workflow(&self, id: Uuid) -> Result<Next, Failure> {
        let Some(intent) = self.load(id)? else {
            return Ok(Next::Stale);
        };
        let Some(step) = intent.workflow.as_ref().and_then(|w| w.active()) else {
            return Ok(Next::Stale);
        };
        let (step_id, attempt) = (step.step_id.clone(), step.attempt);
        let after = self
            .write_intent(IntentCommand::AdvanceWorkflow {
                intent_id: id,
                step_id: step_id.clone(),
                attempt,
                at: Utc::now(),
            })
            .await?;
        tracing::info!(step_id, attempt, status = %after.status, "workflow step ticked");
        Ok(Next::Done)
    }

    fn load(&self, id: Uuid) -> Result<Option<Intent>, Failure> {
        self.shared
            .cluster
            .reader()
            .intent(&id)
            .map_err(|e| Failure::Transient(e.to_string()))
    }

    /// The push of one intent to its HTTP agent: take an endpoint slot and the breaker's
    /// consent first (a push held back spends no attempt), then `Deliver`, POST, and the
    /// outcome's command.
    async fn deliver(&self, id: Uuid) -> Result<Next, Failure> {
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

    fn retry_at(&self, now: Timestamp, attempt: u32, failure: &PushFailure) -> Option<Timestamp> {
        (!failure.permanent).then(|| {
            self.shared.config.backoff.retry_at(
                now,
                attempt,
                failure.retry_after,
                &mut rand::thread_rng(),
            )
        })
    }

    /// One push of a webhook delivery and its recorded outcome (CAS on `attempts`).
    async fn webhook(&self, delivery_id: Uuid) -> Result<Next, Failure> {
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

    fn endpoint(&self, url: &str, limit: u32) -> Arc<Endpoint> {
        let limit = limit.max(1);
        let mut endpoints = self
            .shared
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let entry = endpoints
            .entry(url.to_string())
            .or_insert_with(|| Arc::new(Endpoint::new(limit, self.shared.config.breaker)));
        if entry.limit != limit {
            // The agent re-registered with another cap: new permits, same breaker history.
            let breaker = entry
                .breaker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            *entry = Arc::new(Endpoint {
                limit,
                permits: Arc::new(Semaphore::new(limit as usize)),
                breaker: Mutex::new(breaker),
            });
        }
        entry.clone()
    }
}

impl Endpoint {
    fn new(limit: u32, breaker: BreakerConfig) -> Self {
        Endpoint {
            limit,
            permits: Arc::new(Semaphore::new(limit as usize)),
            breaker: Mutex::new(Breaker::new(breaker)),
        }
    }

    /// A concurrency slot and the breaker's consent, or what to do with the entry instead.
    fn acquire(self: &Arc<Self>, metrics: &Metrics) -> Result<Slot, Next> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Err(Next::Busy);
        };
        let admit = self
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(Instant::now());
        match admit {
            Admit::Yes | Admit::Probe => Ok(Slot {
                endpoint: self.clone(),
                _permit: permit,
                reported: false,
            }),
            Admit::Until(until) => {
                metrics.breaker_rejected();
                Err(Next::Until(until))
            }
            Admit::ProbeOut => Err(Next::Busy),
        }
    }
}

/// A taken endpoint slot; report how the push went, or that it was not sent.
struct Slot {
    endpoint: Arc<Endpoint>,
    _permit: OwnedSemaphorePermit,
    reported: bool,
}

impl Slot {
    fn finish(mut self, outcome: &PushOutcome) {
        self.reported = true;
        let mut breaker = self
            .endpoint
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match outcome {
            PushOutcome::Accepted { .. } => breaker.success(),
            PushOutcome::Failed(f) if f.unhealthy => breaker.failure(Instant::now()),
            // The receiver is up and answered; it just refused this message.
            PushOutcome::Failed(_) => breaker.success(),
        }
    }

    /// The push will not be sent: dropping the slot unreported hands the probe on.
    fn abandon(self) {
        drop(self);
    }
}

impl Drop for Slot {
    /// A slot dropped without a result (the push was not sent, its task was cancelled at a
    /// leadership change, or it panicked) must not leave a half-open breaker waiting for a
    /// probe that never reports: the next push becomes the probe instead.
    fn drop(&mut self) {
        if !self.reported {
            self.endpoint
                .breaker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .abandon();
        }
    }
}

#[derive(Debug)]
enum Failure {
    /// Apply refused the command: the entry no longer matches the state.
    Rejected(String),
    /// No answer (no quorum, timeout, storage trouble): worth another try.
    Transient(String),
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
