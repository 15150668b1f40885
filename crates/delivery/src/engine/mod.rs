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
//!
//! Where each concern lives: `due_loop` reads the index and hands out entries; `timers`
//! proposes the entries that need no push (lease expiries, releases, deadlines, reminders,
//! workflow ticks, purges, and the retention setting); `agent_push` pushes an intent to an
//! HTTP-bound agent; `webhook_push` pushes a webhook event to a subscription; `endpoint`
//! holds what the leader remembers per push URL (the concurrency cap and the breaker).

mod agent_push;
mod due_loop;
mod endpoint;
mod timers;
mod webhook_push;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use intentd_consensus::{Cluster, ConsensusError};
use intentd_lifecycle::{
    state_key, Binding, Command, Intent, IntentCommand, Reply, Retention, Timestamp,
    DEFAULT_ACK_TIMEOUT_SECS,
};

use crate::backoff::Backoff;
use crate::breaker::BreakerConfig;
use crate::metrics::Metrics;
use crate::push::{PushFailure, Pusher};
use crate::ssrf::AllowList;

use endpoint::Endpoint;

/// How long an entry whose command failed without an answer (no quorum, timeout) waits
/// before it is tried again.
const TRANSIENT_RETRY: Duration = Duration::from_secs(1);

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

    fn load(&self, id: Uuid) -> Result<Option<Intent>, Failure> {
        self.shared
            .cluster
            .reader()
            .intent(&id)
            .map_err(|e| Failure::Transient(e.to_string()))
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
}

#[derive(Debug)]
enum Failure {
    /// Apply refused the command: the entry no longer matches the state.
    Rejected(String),
    /// No answer (no quorum, timeout, storage trouble): worth another try.
    Transient(String),
}
