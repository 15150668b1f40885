//! Fleet governance (the mesh): what the cluster remembers of each agent's liveness and
//! metrics, the kill switch, and the mesh event log.
//!
//! A kill is replicated state that apply itself obeys: a `Deliver` to a killed agent is
//! accepted as a *hold* (the intent is parked, said so in its events, and no lease is given),
//! and a lease that ends while its agent is killed parks the intent too, without counting
//! the attempt. So no consumer anywhere (stream, poll, push, on any node, before or after a
//! failover) can hand a killed agent anything, and nothing is lost or failed for it: the
//! resume puts every parked intent back on the agent's queue in creation order.
//!
//! Heartbeats are observations, not decisions: see [`HEARTBEAT_COALESCE_SECS`] for which of
//! them reach the log.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Timestamp;

/// A heartbeat without metrics reaches the log only if the agent's last replicated
/// heartbeat is at least this old. Liveness needs a resolution of seconds, not of every
/// beat: an agent beating every second costs one entry per this many seconds, and an SDK
/// beating at its default 30 s costs one entry per beat, as before.
pub const HEARTBEAT_COALESCE_SECS: i64 = 10;

/// An agent with no heartbeat for this long (and no open stream) is `unreachable`.
pub const UNREACHABLE_AFTER_SECS: i64 = 90;

/// The metrics an SDK may send with a heartbeat (`MeshClient.report_metric`), each optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatMetrics {
    #[serde(default)]
    pub intents_total: u64,
    #[serde(default)]
    pub intents_succeeded: u64,
    #[serde(default)]
    pub intents_failed: u64,
    /// The average over this report's `intents_total` intents.
    #[serde(default)]
    pub avg_latency_ms: Option<f64>,
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

/// Every heartbeat's metrics folded together: counts and cost add up, the latency average
/// is weighted by the intents each report covered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FoldedMetrics {
    pub intents_total: u64,
    pub intents_succeeded: u64,
    pub intents_failed: u64,
    pub avg_latency_ms: Option<f64>,
    pub cost_usd: f64,
    /// How many reports were folded in.
    pub reports: u64,
}

impl FoldedMetrics {
    pub fn fold(&mut self, m: &HeartbeatMetrics) {
        if let Some(avg) = m.avg_latency_ms.filter(|a| a.is_finite()) {
            let before = self.intents_total as f64;
            let added = m.intents_total.max(1) as f64;
            let old = self.avg_latency_ms.unwrap_or(0.0);
            self.avg_latency_ms = Some(if self.avg_latency_ms.is_none() || before == 0.0 {
                avg
            } else {
                (old * before + avg * added) / (before + added)
            });
        }
        self.intents_total = self.intents_total.saturating_add(m.intents_total);
        self.intents_succeeded = self.intents_succeeded.saturating_add(m.intents_succeeded);
        self.intents_failed = self.intents_failed.saturating_add(m.intents_failed);
        if let Some(c) = m.cost_usd.filter(|c| c.is_finite()) {
            self.cost_usd += c;
        }
        self.reports += 1;
    }

    /// Whether most of the intents the agent reported failed: the mark of a `degraded` agent.
    pub fn failing(&self) -> bool {
        self.intents_total > 0 && self.intents_failed.saturating_mul(2) > self.intents_total
    }
}

/// How an agent is doing, as the mesh API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Unreachable,
    Killed,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unreachable => "unreachable",
            Health::Killed => "killed",
        }
    }

    pub fn parse(s: &str) -> Option<Health> {
        [
            Health::Healthy,
            Health::Degraded,
            Health::Unreachable,
            Health::Killed,
        ]
        .into_iter()
        .find(|h| h.as_str() == s)
    }
}

/// The replicated mesh record of one agent (keyed by its normalized address).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshAgent {
    pub address: String,
    #[serde(default)]
    pub killed: bool,
    #[serde(default)]
    pub killed_at: Option<Timestamp>,
    #[serde(default)]
    pub killed_by: Option<String>,
    #[serde(default)]
    pub kill_reason: Option<String>,
    #[serde(default)]
    pub resumed_at: Option<Timestamp>,
    /// The newest heartbeat that reached the log.
    #[serde(default)]
    pub last_heartbeat_at: Option<Timestamp>,
    #[serde(default)]
    pub heartbeats: u64,
    #[serde(default)]
    pub metrics: FoldedMetrics,
    /// The health last committed by a `MeshHealth` command (or a kill / resume).
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub health_changed_at: Option<Timestamp>,
    /// Intents parked while the agent is killed.
    #[serde(default)]
    pub held: u64,
    /// HTTP pushes to the agent that failed in a row; its next settled delivery resets it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub push_failures: u32,
    /// The error of the newest failed push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_push_error: Option<String>,
    /// When a push to the agent last failed: from then on its pushes count in its health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_push_failed_at: Option<Timestamp>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Failed pushes in a row that make an HTTP-bound agent `degraded`.
pub const PUSH_FAILURES_DEGRADED: u32 = 3;

/// Failed pushes in a row that make it `unreachable`: as many as open the engine's circuit
/// breaker with its default settings, after which pushes to it stop for a while.
pub const PUSH_FAILURES_UNREACHABLE: u32 = 5;

impl MeshAgent {
    /// The health the replicated facts alone give this agent at `now`, and why, for the
    /// leader's health sweep to commit when it differs from [`MeshAgent::health`]. `None`
    /// when there is nothing for a sweep to judge: a killed agent (kills and resumes set its
    /// health) or one that never sent a heartbeat (it never reported liveness, and its
    /// streams are visible only to the node that serves them).
    ///
    /// Only replicated facts count, so every leader reaches the same verdict from the same
    /// state and a failover neither repeats nor forgets a change.
    pub fn observed_health(&self, now: Timestamp) -> Option<(Health, String)> {
        if self.killed {
            return None;
        }
        if let Some(judged) = self.push_health() {
            return Some(judged);
        }
        let Some(last) = self.last_heartbeat_at else {
            // An agent reached only by pushes is judged by them once one failed.
            return self
                .last_push_failed_at
                .map(|_| (Health::Healthy, "pushes to it get through".into()));
        };
        let silent = now - last;
        if silent >= chrono::Duration::seconds(UNREACHABLE_AFTER_SECS) {
            return Some((
                Health::Unreachable,
                format!("no heartbeat for {} s", silent.num_seconds()),
            ));
        }
        let m = &self.metrics;
        if m.failing() {
            return Some((
                Health::Degraded,
                format!(
                    "{} of {} reported intents failed",
                    m.intents_failed, m.intents_total
                ),
            ));
        }
        Some((
            Health::Healthy,
            "heartbeating, most reported intents succeed".into(),
        ))
    }

    /// What the pushes in a row that failed say, when they are enough to say anything.
    pub fn push_health(&self) -> Option<(Health, String)> {
        let n = self.push_failures;
        let health = if n >= PUSH_FAILURES_UNREACHABLE {
            Health::Unreachable
        } else if n >= PUSH_FAILURES_DEGRADED {
            Health::Degraded
        } else {
            return None;
        };
        let error = self
            .last_push_error
            .as_deref()
            .unwrap_or("no error recorded");
        Some((health, format!("the last {n} pushes failed: {error}")))
    }

    /// When, with no news, [`MeshAgent::observed_health`] turns `unreachable`: the instant the
    /// sweep must look again. `None` if that cannot happen without news (killed, never beat,
    /// already silent).
    pub fn unreachable_at(&self, now: Timestamp) -> Option<Timestamp> {
        if self.killed {
            return None;
        }
        let at = self.last_heartbeat_at? + chrono::Duration::seconds(UNREACHABLE_AFTER_SECS);
        (at > now).then_some(at)
    }
}

/// What a mesh event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshEventType {
    #[serde(rename = "agent.killed")]
    Killed,
    #[serde(rename = "agent.resumed")]
    Resumed,
    #[serde(rename = "agent.health_changed")]
    HealthChanged,
}

impl MeshEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            MeshEventType::Killed => "agent.killed",
            MeshEventType::Resumed => "agent.resumed",
            MeshEventType::HealthChanged => "agent.health_changed",
        }
    }

    pub fn parse(s: &str) -> Option<MeshEventType> {
        [
            MeshEventType::Killed,
            MeshEventType::Resumed,
            MeshEventType::HealthChanged,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// One entry of the mesh event log: kills, resumes and health changes, in log order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshEvent {
    pub event_id: Uuid,
    /// Position in the log, from 1, gapless.
    pub seq: u64,
    pub event_type: MeshEventType,
    pub address: String,
    pub actor: String,
    pub at: Timestamp,
    pub from_health: Option<Health>,
    pub to_health: Option<Health>,
    pub reason: Option<String>,
    /// For a resume: how many parked intents went back on the queue.
    #[serde(default)]
    pub released: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat_at(secs_ago: i64, now: Timestamp) -> MeshAgent {
        MeshAgent {
            address: "acme/billing".into(),
            last_heartbeat_at: Some(now - chrono::Duration::seconds(secs_ago)),
            ..MeshAgent::default()
        }
    }

    #[test]
    fn failed_pushes_in_a_row_degrade_then_make_unreachable() {
        let now = chrono::Utc::now();
        let pushed = |failures: u32| MeshAgent {
            address: "acme/hooks".into(),
            push_failures: failures,
            last_push_error: Some("HTTP 502".into()),
            last_push_failed_at: Some(now),
            ..MeshAgent::default()
        };
        let health = |a: &MeshAgent| a.observed_health(now).map(|(h, _)| h);
        assert_eq!(health(&MeshAgent::default()), None, "nothing to judge");
        assert_eq!(health(&pushed(0)), Some(Health::Healthy));
        assert_eq!(
            health(&pushed(PUSH_FAILURES_DEGRADED - 1)),
            Some(Health::Healthy)
        );
        assert_eq!(
            health(&pushed(PUSH_FAILURES_DEGRADED)),
            Some(Health::Degraded)
        );
        let (h, reason) = pushed(PUSH_FAILURES_UNREACHABLE)
            .observed_health(now)
            .unwrap();
        assert_eq!(h, Health::Unreachable);
        assert_eq!(reason, "the last 5 pushes failed: HTTP 502");
        // Failing pushes outweigh heartbeats: the binding is how intents reach the agent.
        let beating = MeshAgent {
            last_heartbeat_at: Some(now),
            ..pushed(PUSH_FAILURES_UNREACHABLE)
        };
        assert_eq!(health(&beating), Some(Health::Unreachable));
        let killed = MeshAgent {
            killed: true,
            ..pushed(PUSH_FAILURES_UNREACHABLE)
        };
        assert_eq!(health(&killed), None);
    }

    #[test]
    fn observed_health_follows_heartbeats_and_reported_failures() {
        let now = chrono::Utc::now();
        let fresh = beat_at(5, now);
        assert_eq!(fresh.observed_health(now).unwrap().0, Health::Healthy);
        assert_eq!(
            fresh.unreachable_at(now),
            Some(now + chrono::Duration::seconds(UNREACHABLE_AFTER_SECS - 5))
        );

        let silent = beat_at(UNREACHABLE_AFTER_SECS, now);
        let (health, reason) = silent.observed_health(now).unwrap();
        assert_eq!(health, Health::Unreachable);
        assert_eq!(
            reason,
            format!("no heartbeat for {UNREACHABLE_AFTER_SECS} s")
        );
        assert_eq!(silent.unreachable_at(now), None, "already there");

        let mut failing = beat_at(1, now);
        failing.metrics.intents_total = 10;
        failing.metrics.intents_failed = 6;
        assert_eq!(failing.observed_health(now).unwrap().0, Health::Degraded);
        failing.metrics.intents_failed = 5;
        assert_eq!(
            failing.observed_health(now).unwrap().0,
            Health::Healthy,
            "half failed is not most"
        );

        let mut killed = beat_at(500, now);
        killed.killed = true;
        assert_eq!(killed.observed_health(now), None);
        assert_eq!(killed.unreachable_at(now), None);
        assert_eq!(
            MeshAgent::default().observed_health(now),
            None,
            "never beat"
        );
    }
}
