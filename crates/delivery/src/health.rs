//! The leader's mesh health sweep: commits an agent's health when the replicated facts say
//! it changed (`MeshHealth`), so `GET /v1/mesh/events` lists the change, its webhook goes
//! out, and a new leader knows it.
//!
//! Health is still derived when read (the mesh routes add what the answering node sees of
//! the agent's streams); what the sweep writes is the cluster's own record of each change,
//! judged by [`MeshAgent::observed_health`] from replicated state alone. That makes the
//! sweep stateless: after a failover the new leader compares the same facts with the same
//! committed health and proposes exactly the changes not yet committed, and apply ignores a
//! repeat of one that was (`set_health` writes nothing when the health is already so).
//!
//! It wakes on mesh writes (a heartbeat, a kill, a committed change) and at the instant the
//! first heartbeating agent would fall silent for `UNREACHABLE_AFTER_SECS`; there is no
//! polling interval. A busy fleet's heartbeats are coalesced into one sweep per
//! [`MIN_SWEEP_GAP`].

use std::time::Duration;

use chrono::Utc;
use intentd_consensus::{Cluster, ConsensusError};
use intentd_lifecycle::mesh::{Health, MeshAgent};
use intentd_lifecycle::{Command, Timestamp};
use tokio::time::Instant;
use uuid::Uuid;

/// Sweeps at most this often however fast mesh writes come: a health change needs to be
/// seen within seconds, and each sweep reads every mesh record.
const MIN_SWEEP_GAP: Duration = Duration::from_secs(1);

/// How long a sweep whose proposal failed without an answer (no quorum, lost leadership on
/// the way) waits before looking again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The change to commit for `agent` at `now`, if its observed health differs from the
/// committed one. An agent with no committed health counts as healthy, so a new agent that
/// is fine adds no event.
pub(crate) fn due_change(agent: &MeshAgent, now: Timestamp) -> Option<(Health, String)> {
    let (observed, reason) = agent.observed_health(now)?;
    (observed != agent.health.unwrap_or(Health::Healthy)).then_some((observed, reason))
}

/// Runs the sweep for one leadership; returns only when the state machine closes. The
/// engine drops it with the leadership.
pub(crate) async fn sweep(cluster: Cluster) {
    let reader = cluster.reader().clone();
    let mut mesh = reader.watch_mesh();
    while let Err(e) = cluster.read_barrier().await {
        tracing::warn!(error = %e, "health sweep: waiting to catch up");
        tokio::time::sleep(RETRY_AFTER).await;
    }
    loop {
        mesh.mark_seen();
        let started = Instant::now();
        let now = Utc::now();
        let mut next = None;
        match reader.mesh_agents() {
            Ok(agents) => {
                for agent in &agents {
                    if let Some((health, reason)) = due_change(agent, now) {
                        if !propose(&cluster, agent, health, reason, now).await {
                            next = Some(started + RETRY_AFTER);
                        }
                    }
                    if let Some(at) = agent.unreachable_at(now) {
                        let wait = (at - now).to_std().unwrap_or_default();
                        next =
                            Some(next.map_or(started + wait, |n: Instant| n.min(started + wait)));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "health sweep: reading the mesh records");
                next = Some(started + RETRY_AFTER);
            }
        }
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = mesh.changed() => if changed.is_err() { return },
            () = sleep => {}
        }
        tokio::time::sleep_until(started + MIN_SWEEP_GAP).await;
    }
}

/// Proposes one change; `false` if it should be tried again (no answer). A refusal means
/// the state moved on (the agent was killed meanwhile): the mesh write that did it wakes
/// the sweep anyway.
async fn propose(
    cluster: &Cluster,
    agent: &MeshAgent,
    health: Health,
    reason: String,
    at: Timestamp,
) -> bool {
    let command = Command::MeshHealth {
        address: agent.address.clone(),
        health,
        reason,
        event_id: Uuid::now_v7(),
        at,
    };
    match cluster.write(command).await {
        Ok(_) => {
            tracing::info!(address = %agent.address, health = health.as_str(), "agent health changed");
            true
        }
        Err(ConsensusError::Rejected(rejection)) => {
            tracing::debug!(address = %agent.address, %rejection, "health change refused");
            true
        }
        Err(e) => {
            tracing::warn!(address = %agent.address, error = %e, "health change not committed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_from_the_committed_health_is_proposed() {
        let now = Utc::now();
        let mut agent = MeshAgent {
            address: "acme/billing".into(),
            last_heartbeat_at: Some(now),
            ..MeshAgent::default()
        };
        assert_eq!(
            due_change(&agent, now),
            None,
            "a fine new agent adds no event"
        );
        agent.metrics.intents_total = 4;
        agent.metrics.intents_failed = 3;
        assert_eq!(due_change(&agent, now).unwrap().0, Health::Degraded);
        agent.health = Some(Health::Degraded);
        assert_eq!(due_change(&agent, now), None, "already committed");
        agent.metrics.intents_total = 40;
        assert_eq!(due_change(&agent, now).unwrap().0, Health::Healthy);
        let later = now + chrono::Duration::hours(1);
        assert_eq!(due_change(&agent, later).unwrap().0, Health::Unreachable);
        agent.killed = true;
        assert_eq!(
            due_change(&agent, later),
            None,
            "kills set a killed agent's health"
        );
    }
}
