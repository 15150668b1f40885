use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// What an API key may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Role {
    /// Everything, including creating other keys.
    Admin,
    /// Sends intents and observes them; acts as `from_agent` = its principal.
    Client,
    /// May only listen on, resume and resolve intents addressed to `address`.
    Agent { address: String },
}

/// An API key as the replicated state keeps it: the secret itself is never stored, only its
/// SHA-256 (the map key in the state machine), so a copied data directory leaks no credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: uuid::Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub revoked: bool,
}

impl ApiKey {
    /// The agent identity this key speaks for, used as `from_agent` and as the event actor.
    pub fn principal(&self) -> String {
        match &self.role {
            Role::Agent { address } => address.clone(),
            Role::Admin | Role::Client => format!("agent://intentd/keys/{}", self.name),
        }
    }

    /// Whether this key may act as the receiver of intents addressed to `to_agent`.
    pub fn may_act_for(&self, to_agent: &str) -> bool {
        match &self.role {
            Role::Admin | Role::Client => true,
            Role::Agent { address } => crate::intent::same_address(address, to_agent),
        }
    }
}
