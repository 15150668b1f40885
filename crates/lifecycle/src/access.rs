use serde::{Deserialize, Serialize};

use crate::{same_address, AgentAddress, Intent, ResumeAction, Timestamp};

/// What an API key may do. The full table, route by route, is in the README ("Roles"); the
/// rule behind it: a key acts as the *receiver* of an address only if it is that address's
/// agent key (or admin), and governs an intent as its *owner* only if it sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Role {
    /// Everything, including creating other keys and acting for any address.
    Admin,
    /// Sends intents as its principal (`agent://intentd/keys/<name>`), observes the ones it
    /// sent and governs them as their owner; it is the receiver of no address but its own
    /// principal (its inbox, its webhook subscriptions).
    Client,
    /// Sends as `address`, observes and governs what it sent, and is the receiver of intents
    /// addressed to `address`. Stored as the `agent://` string it always was.
    Agent { address: AgentAddress },
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
            Role::Agent { address } => address.uri(),
            Role::Admin | Role::Client => format!("agent://intentd/keys/{}", self.name),
        }
    }

    /// Whether this key may act as the receiver of `address` (listen, lease, receive, resume
    /// as the receiver, rebind, read its inbox): admin keys for any address, the others only
    /// for their own principal.
    pub fn may_act_for(&self, address: &str) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::Client | Role::Agent { .. } => same_address(&self.principal(), address),
        }
    }

    /// Whether this key sent `intent`, which makes it the intent's owner.
    pub fn is_sender_of(&self, intent: &Intent) -> bool {
        same_address(&self.principal(), &intent.from_agent)
    }

    /// The `from_agent` of an intent this key creates, given the one the request names. Only
    /// admin keys relay on behalf of others: ownership follows `from_agent`, so a client that
    /// could name any sender could make itself the owner of nothing it may see, or name
    /// another key's principal and govern that key's intents.
    pub fn sender_of_new(&self, claimed: Option<&str>) -> String {
        match (claimed, &self.role) {
            (Some(claimed), Role::Admin) => claimed.to_string(),
            _ => self.principal(),
        }
    }
}

/// Why a caller may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No key, an unknown key or a revoked one (HTTP 401, gRPC UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// A known key acting outside its scope (HTTP 403, gRPC PERMISSION_DENIED).
    #[error("{0}")]
    Forbidden(String),
}

/// Hex SHA-256 of a key secret: the key under which the state stores the key. A fast hash is
/// enough because the secrets carry 256 bits of entropy; nothing here protects a weak password.
pub fn hash_key(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// The secret a request presents, given its `x-api-key` and `authorization` values (HTTP
/// headers or gRPC metadata alike). The SDK sends `x-api-key` always and may add a bearer
/// *actor* token that is not an API key, so the explicit key wins when both are present.
pub fn presented_secret<'a>(
    x_api_key: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(v) = x_api_key {
        return Some(v.trim()).filter(|s| !s.is_empty());
    }
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|s| !s.is_empty())
}

/// The message a request without any key gets, on every edge.
pub const KEY_REQUIRED: &str = "an API key is required (x-api-key or Authorization: Bearer)";

/// Decides whether the key found for a presented secret (if any) may be used.
pub fn usable_key(found: Option<ApiKey>) -> Result<ApiKey, AccessError> {
    match found {
        Some(key) if !key.revoked => Ok(key),
        Some(_) => Err(AccessError::Unauthenticated(
            "this API key has been revoked".into(),
        )),
        None => Err(AccessError::Unauthenticated("unknown API key".into())),
    }
}

impl ApiKey {
    pub fn is_agent(&self) -> bool {
        matches!(self.role, Role::Agent { .. })
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.role, Role::Admin)
    }

    /// Whom a request acts as when it names `claimed` (an `actor`): admin and client keys may
    /// label the actor of a change they are allowed to make (operators relaying, an owner
    /// program naming itself as the hosted platform lets it); agent keys always act as
    /// themselves. The label never widens what the key may do.
    pub fn acting_as(&self, claimed: Option<&str>) -> String {
        match claimed {
            Some(claimed) if !self.is_agent() => claimed.to_string(),
            _ => self.principal(),
        }
    }

    /// Acting as an intent's receiver (resume's receiver forms, ack): the receiver's key or
    /// admin.
    pub fn require_receiver_of(&self, intent: &Intent) -> Result<(), AccessError> {
        if self.may_act_for(&intent.to_agent) {
            Ok(())
        } else {
            Err(AccessError::Forbidden(format!(
                "this key may not act on intents addressed to {}",
                intent.to_agent
            )))
        }
    }

    /// Resolving (complete, fail, cancel): the receiver, or the owner on its own behalf (the
    /// hosted platform's programs create an intent, approve its step, then resolve it).
    pub fn require_resolver_of(&self, intent: &Intent) -> Result<(), AccessError> {
        if self.is_sender_of(intent) {
            return Ok(());
        }
        self.require_receiver_of(intent)
    }

    /// Resuming an intent. The receiver's forms (complete, fail, progress, wait) are the
    /// receiver's alone; the control form (`approve_current_step`) is also the owner's: on
    /// the hosted platform the owner of an intent approves the step it gates itself.
    pub fn require_resumer_of(
        &self,
        intent: &Intent,
        action: &ResumeAction,
    ) -> Result<(), AccessError> {
        match action {
            ResumeAction::ApproveCurrentStep { .. } if self.is_sender_of(intent) => Ok(()),
            _ => self.require_receiver_of(intent),
        }
    }

    /// Reading an intent (its view, events, dead letter): its receiver, or its owner.
    pub fn require_observer_of(&self, intent: &Intent) -> Result<(), AccessError> {
        if self.may_act_for(&intent.to_agent) || self.is_sender_of(intent) {
            Ok(())
        } else {
            Err(AccessError::Forbidden(format!(
                "this key may not read intents addressed to {}",
                intent.to_agent
            )))
        }
    }

    /// Listening on an agent's delivery queue (which leases its intents), receiving from it,
    /// or changing its binding.
    pub fn require_listener_on(&self, address: &str) -> Result<(), AccessError> {
        if self.may_act_for(address) {
            Ok(())
        } else {
            Err(AccessError::Forbidden(format!(
                "this key may not act as the receiver of {address}"
            )))
        }
    }

    /// Controls and policy patches: admin, or a client key on an intent it sent. Agent keys
    /// cannot loosen the rules they run under, even on what they sent.
    pub fn require_governor_of(&self, intent: &Intent) -> Result<(), AccessError> {
        match &self.role {
            Role::Admin => Ok(()),
            Role::Client if self.is_sender_of(intent) => Ok(()),
            Role::Client => Err(AccessError::Forbidden(
                "a client key may change controls or policy only of the intents it sent".into(),
            )),
            Role::Agent { .. } => Err(AccessError::Forbidden(
                "agent keys may not change controls or policy".into(),
            )),
        }
    }

    /// Applying a scenario registers agents and sends as the key: not for agent keys.
    pub fn require_not_agent(&self) -> Result<(), AccessError> {
        if self.is_agent() {
            Err(AccessError::Forbidden(
                "agent keys may not apply scenarios".into(),
            ))
        } else {
            Ok(())
        }
    }

    pub fn require_admin(&self) -> Result<(), AccessError> {
        match self.role {
            Role::Admin => Ok(()),
            _ => Err(AccessError::Forbidden(
                "this route needs an admin key".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: Role) -> ApiKey {
        ApiKey {
            id: uuid::Uuid::nil(),
            name: "ci".into(),
            role,
            created_at: chrono::DateTime::UNIX_EPOCH,
            revoked: false,
        }
    }

    /// Keys written before `AgentAddress` existed decode, and new ones encode the same way.
    #[test]
    fn agent_roles_keep_their_stored_form() {
        let old = r#"{"kind":"agent","address":"agent://acme/prod/billing"}"#;
        let role: Role = serde_json::from_str(old).unwrap();
        assert_eq!(
            role,
            Role::Agent {
                address: AgentAddress::parse("address", "acme/prod/billing").unwrap()
            }
        );
        assert_eq!(serde_json::to_string(&role).unwrap(), old);
    }

    #[test]
    fn secrets_hash_to_hex_sha256() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn x_api_key_wins_over_bearer() {
        assert_eq!(
            presented_secret(Some("k1"), Some("Bearer actor")),
            Some("k1")
        );
        assert_eq!(presented_secret(None, Some("bearer  k2 ")), Some("k2"));
        assert_eq!(presented_secret(None, Some("Basic x")), None);
        assert_eq!(presented_secret(Some(" "), Some("Bearer k3")), None);
        assert_eq!(presented_secret(None, None), None);
    }

    #[test]
    fn revoked_and_unknown_keys_are_unauthenticated() {
        let mut k = key(Role::Client);
        assert!(usable_key(Some(k.clone())).is_ok());
        k.revoked = true;
        assert!(matches!(
            usable_key(Some(k)),
            Err(AccessError::Unauthenticated(m)) if m.contains("revoked")
        ));
        assert!(matches!(
            usable_key(None),
            Err(AccessError::Unauthenticated(_))
        ));
    }

    #[test]
    fn agent_keys_act_as_themselves_and_only_on_their_address() {
        let agent = key(Role::Agent {
            address: AgentAddress::from_stored("agent://acme/prod/billing"),
        });
        assert_eq!(
            agent.acting_as(Some("someone-else")),
            "agent://acme/prod/billing"
        );
        assert!(agent.require_listener_on("acme/prod/billing").is_ok());
        assert!(agent.require_listener_on("acme/prod/other").is_err());
        assert!(agent.require_not_agent().is_err());
        assert!(agent.require_admin().is_err());
        let client = key(Role::Client);
        assert_eq!(client.acting_as(Some("ops-bot")), "ops-bot");
        assert_eq!(client.acting_as(None), "agent://intentd/keys/ci");
        assert!(client.require_not_agent().is_ok());
        assert!(key(Role::Admin).require_admin().is_ok());
    }

    fn sample_intent() -> crate::Intent {
        crate::Intent {
            id: uuid::Uuid::nil(),
            intent_type: "payment.charge.v1".into(),
            correlation_id: uuid::Uuid::nil(),
            from_agent: "acme/prod/sender".into(),
            to_agent: "agent://acme/prod/payments".into(),
            reply_to: None,
            payload: serde_json::json!({}),
            status: crate::Status::Submitted,
            waiting_reason: None,
            result: None,
            error: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            updated_at: chrono::DateTime::UNIX_EPOCH,
            delivery_attempt: 0,
            max_delivery_attempts: 3,
            deadline_at: None,
            remind_after_seconds: None,
            remind_interval_seconds: None,
            max_reminders: None,
            remind_count: 0,
            escalate_to: None,
            human_task: None,
            pending_with: None,
            policy_generation: 0,
            controls: Default::default(),
            grants: Default::default(),
            envelope: Default::default(),
            last_seq: 2,
            agent_cursor: 1,
            dead_lettered: false,
            uncounted_attempts: 0,
            lease: None,
            not_before: None,
            deliver_at: None,
            replayed_from: None,
            next_reminder_at: None,
            escalated_to: None,
            inbox_owner: None,
            purge_at: None,
            earlier_cursors: Vec::new(),
            workflow: None,
        }
    }

    #[test]
    fn the_sender_may_approve_but_not_act_as_the_receiver() {
        let sender = key(Role::Agent {
            address: AgentAddress::from_stored("agent://acme/prod/sender"),
        });
        let mut intent = sample_intent();
        let approve = ResumeAction::ApproveCurrentStep {
            expected_policy_generation: None,
            reason: None,
        };
        let complete = ResumeAction::Complete {
            result: serde_json::json!({}),
        };
        assert!(sender.require_resumer_of(&intent, &approve).is_ok());
        assert!(matches!(
            sender.require_resumer_of(&intent, &complete),
            Err(AccessError::Forbidden(_))
        ));
        let receiver = key(Role::Agent {
            address: AgentAddress::from_stored("acme/prod/payments"),
        });
        assert!(receiver.require_resumer_of(&intent, &approve).is_ok());
        assert!(receiver.require_resumer_of(&intent, &complete).is_ok());
        // A third agent may do neither.
        intent.from_agent = "agent://acme/prod/other".into();
        assert!(sender.require_resumer_of(&intent, &approve).is_err());
        // A client key is no receiver: before the roles were tightened it completed
        // intents addressed to any agent.
        assert!(key(Role::Client)
            .require_resumer_of(&intent, &complete)
            .is_err());
        assert!(key(Role::Admin)
            .require_resumer_of(&intent, &complete)
            .is_ok());
    }

    /// The README's role table for one intent, cell by cell: sent by client key `ci` to
    /// `acme/prod/payments`. Keys: admin, the sending client, another client, the receiver's
    /// agent key, another agent key.
    #[test]
    fn the_role_table() {
        let intent = crate::Intent {
            from_agent: "agent://intentd/keys/ci".into(),
            to_agent: "agent://acme/prod/payments".into(),
            ..sample_intent()
        };
        let named = |name: &str, role: Role| ApiKey {
            name: name.into(),
            ..key(role)
        };
        let keys = [
            ("admin", named("root", Role::Admin)),
            ("sender", named("ci", Role::Client)),
            ("client", named("other", Role::Client)),
            (
                "receiver",
                named(
                    "pay",
                    Role::Agent {
                        address: AgentAddress::from_stored("agent://acme/prod/payments"),
                    },
                ),
            ),
            (
                "agent",
                named(
                    "x",
                    Role::Agent {
                        address: AgentAddress::from_stored("agent://acme/prod/other"),
                    },
                ),
            ),
        ];
        let approve = ResumeAction::ApproveCurrentStep {
            expected_policy_generation: None,
            reason: None,
        };
        let complete = ResumeAction::Complete {
            result: serde_json::json!({}),
        };
        type Check = Box<dyn Fn(&ApiKey) -> bool>;
        let i = intent.clone();
        let j = intent.clone();
        let k = intent.clone();
        let l = intent.clone();
        let m = intent.clone();
        let n = intent.clone();
        let rows: Vec<(&str, Check, [bool; 5])> = vec![
            // action                       admin  sender client receiver agent
            (
                "observe",
                Box::new(move |key| key.require_observer_of(&i).is_ok()),
                [true, true, false, true, false],
            ),
            (
                "resolve",
                Box::new(move |key| key.require_resolver_of(&j).is_ok()),
                [true, true, false, true, false],
            ),
            (
                "resume as receiver",
                Box::new(move |key| key.require_resumer_of(&k, &complete).is_ok()),
                [true, false, false, true, false],
            ),
            (
                "approve_current_step",
                Box::new(move |key| key.require_resumer_of(&l, &approve).is_ok()),
                [true, true, false, true, false],
            ),
            (
                "controls and policy",
                Box::new(move |key| key.require_governor_of(&m).is_ok()),
                [true, true, false, false, false],
            ),
            (
                "ack",
                Box::new(move |key| key.require_receiver_of(&n).is_ok()),
                [true, false, false, true, false],
            ),
            (
                "listen, receive, rebind, inbox of the receiver",
                Box::new(|key| key.require_listener_on("acme/prod/payments").is_ok()),
                [true, false, false, true, false],
            ),
            (
                "inbox and webhooks of the sender",
                Box::new(|key| key.may_act_for("agent://intentd/keys/ci")),
                [true, true, false, false, false],
            ),
            (
                "administer keys and the cluster",
                Box::new(|key| key.require_admin().is_ok()),
                [true, false, false, false, false],
            ),
        ];
        for (action, check, expected) in &rows {
            for ((who, key), want) in keys.iter().zip(expected) {
                assert_eq!(check(key), *want, "{who} / {action}");
            }
        }
        // Only admin keys relay on behalf of another sender.
        assert_eq!(
            keys[0].1.sender_of_new(Some("agent://a/b/c")),
            "agent://a/b/c"
        );
        for (_, key) in &keys[1..] {
            assert_eq!(key.sender_of_new(Some("agent://a/b/c")), key.principal());
        }
    }
}
