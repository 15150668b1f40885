//! What the leader remembers per push URL: a concurrency cap and a circuit breaker. Both only
//! shape how fast pushes go, never whether an intent is delivered, so they live in memory and
//! a failover that loses them is harmless.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::due_loop::Next;
use super::Engine;
use crate::breaker::{Admit, Breaker, BreakerConfig};
use crate::metrics::Metrics;
use crate::push::PushOutcome;

pub(super) struct Endpoint {
    limit: u32,
    permits: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
}

impl Engine {
    pub(super) fn endpoint(&self, url: &str, limit: u32) -> Arc<Endpoint> {
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
    pub(super) fn acquire(self: &Arc<Self>, metrics: &Metrics) -> Result<Slot, Next> {
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
pub(super) struct Slot {
    endpoint: Arc<Endpoint>,
    _permit: OwnedSemaphorePermit,
    reported: bool,
}

impl Slot {
    pub(super) fn finish(mut self, outcome: &PushOutcome) {
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
    pub(super) fn abandon(self) {
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
