//! Agents and the binding through which each one receives its intents.
//!
//! The binding is replicated state (not node configuration) because the leader's delivery
//! engine must make the same choice whichever node leads, and because the HTTP binding's
//! signing secret must survive a failover.

use serde::{Deserialize, Serialize};

use crate::{AgentAddress, Timestamp};

/// The lease length an agent gets when it registered none (or did not register at all).
pub const DEFAULT_ACK_TIMEOUT_SECS: u64 = 30;

/// How intents reach an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Binding {
    /// SSE: `GET /v1/agents/{address}/intents/stream`.
    Stream,
    /// Long-poll receive.
    Poll,
    /// The engine POSTs each delivery to `url`, signed with `secret`.
    Http {
        url: String,
        secret: String,
        max_concurrency: u32,
    },
    /// A person answers through the inbox API.
    Inbox,
    /// The platform itself (timers only).
    Internal,
}

impl Binding {
    /// The name the API uses for the binding (`delivery_mode`).
    pub fn mode(&self) -> &'static str {
        match self {
            Binding::Stream => "stream",
            Binding::Poll => "poll",
            Binding::Http { .. } => "http",
            Binding::Inbox => "inbox",
            Binding::Internal => "internal",
        }
    }
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Stored as its `agent://` form; entries written before [`AgentAddress`] existed hold
    /// the bare path, which decodes to the same value.
    pub address: AgentAddress,
    pub binding: Binding,
    /// The lease length of a delivery: how long the agent has to acknowledge.
    pub ack_timeout_secs: u64,
    /// Overrides the server default for intents created after the registration.
    pub max_delivery_attempts: Option<u32>,
    pub display_name: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl AgentConfig {
    /// What API answers show of an HTTP binding's secret: its last 4 characters.
    pub fn secret_hint(&self) -> Option<String> {
        match &self.binding {
            Binding::Http { secret, .. } => {
                let n = secret.chars().count();
                Some(secret.chars().skip(n.saturating_sub(4)).collect())
            }
            _ => None,
        }
    }
}

/// The lease length for deliveries to an agent with `config`; an unregistered agent gets
/// the server's `default_secs`.
pub fn ack_timeout_secs(config: Option<&AgentConfig>, default_secs: u64) -> u64 {
    config.map_or(default_secs, |c| c.ack_timeout_secs)
}

/// Whether the engine pushes to this agent over HTTP (an unregistered agent streams).
pub fn is_http(config: Option<&AgentConfig>) -> bool {
    matches!(config.map(|c| &c.binding), Some(Binding::Http { .. }))
}

/// Whether a person answers for this agent through the inbox.
pub fn is_inbox(config: Option<&AgentConfig>) -> bool {
    matches!(config.map(|c| &c.binding), Some(Binding::Inbox))
}

/// When a lease given at `at` to an agent with `config` ends: `at` plus its ack timeout. A
/// timeout too large for a timestamp saturates instead of panicking.
pub fn lease_until(at: Timestamp, config: Option<&AgentConfig>, default_secs: u64) -> Timestamp {
    let secs = ack_timeout_secs(config, default_secs);
    i64::try_from(secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registrations in logs and snapshots of older releases keep the bare path; they decode
    /// to the address a new registration of the same agent carries.
    #[test]
    fn registrations_of_older_releases_decode() {
        let old = r#"{"address":"acme/prod/billing","binding":{"mode":"stream"},"ack_timeout_secs":30,"max_delivery_attempts":null,"display_name":null,"created_at":"2030-01-01T00:00:00Z","updated_at":"2030-01-01T00:00:00Z"}"#;
        let config: AgentConfig = serde_json::from_str(old).unwrap();
        assert_eq!(
            config.address,
            AgentAddress::parse("address", "agent://acme/prod/billing").unwrap()
        );
        let again: AgentConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }
}
