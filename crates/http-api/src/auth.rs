//! API keys: how secrets are made and hashed, and the extractors that authenticate a request
//! before any handler runs.
//!
//! The replicated state stores only the SHA-256 of each secret, so a copied data directory or
//! snapshot leaks no credential; a request's key is hashed and looked up by that hash.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use intentd_lifecycle::{presented_secret, ApiKey, Intent};
use rand::RngCore;

use crate::error::ApiError;
use crate::AppState;

/// Kept here for the server's admin-key bootstrap; the one definition is in the lifecycle
/// crate so the gRPC edge hashes keys the same way without depending on axum.
pub use intentd_lifecycle::hash_key;

/// A new API key secret: `ik_` and 32 bytes from the operating system's CSPRNG, in hex.
/// The prefix makes keys recognisable in logs and secret scanners.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("ik_{}", hex::encode(bytes))
}

/// The secret the request presents. A header that is not visible ASCII counts as present
/// but empty, so a garbled `x-api-key` is refused rather than bypassed for the bearer token.
fn secret(parts: &Parts) -> Option<&str> {
    let header = |name| {
        parts
            .headers
            .get(name)
            .map(|v: &axum::http::HeaderValue| v.to_str().unwrap_or(""))
    };
    presented_secret(header("x-api-key"), header(AUTHORIZATION.as_str()))
}

/// The authenticated caller. Extracting it answers 401 for a missing, unknown or revoked key.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) key: ApiKey,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = intentd_operations::intents::authenticate(&state.cluster, secret(parts)).await?;
        Ok(Caller { key })
    }
}

/// The role checks are the lifecycle crate's (`ApiKey`), shared with the gRPC edge; these
/// only convert their answers.
impl Caller {
    /// The identity the key speaks for: `from_agent` of the intents it sends, event actor.
    pub(crate) fn principal(&self) -> String {
        self.key.principal()
    }

    /// The actor recorded for a change: what the body names, unless the key is an agent key,
    /// which always acts as itself.
    pub(crate) fn actor(&self, claimed: Option<&str>) -> String {
        self.key.acting_as(claimed)
    }

    pub(crate) fn require_receiver_of(&self, intent: &Intent) -> Result<(), ApiError> {
        Ok(self.key.require_receiver_of(intent)?)
    }

    pub(crate) fn require_observer_of(&self, intent: &Intent) -> Result<(), ApiError> {
        Ok(self.key.require_observer_of(intent)?)
    }

    pub(crate) fn require_listener_on(&self, address: &str) -> Result<(), ApiError> {
        Ok(self.key.require_listener_on(address)?)
    }

    pub(crate) fn require_not_agent(&self) -> Result<(), ApiError> {
        Ok(self.key.require_not_agent()?)
    }

    /// The inbox or webhook owner a request acts for, normalized (no `agent://`): the
    /// `owner_agent` it names, else the key's own principal. Only admin keys act for other
    /// owners; naming another one is refused rather than silently ignored.
    pub(crate) fn owner(&self, named: Option<&str>) -> Result<String, ApiError> {
        let own = bare(&self.principal()).to_string();
        match named {
            None => Ok(own),
            Some(named) => {
                let named = intentd_lifecycle::validate::listen_address(named)?;
                if !self.key.may_act_for(named.path()) {
                    return Err(ApiError::Forbidden(format!(
                        "this key may only act for agent://{own}"
                    )));
                }
                Ok(named.path().to_string())
            }
        }
    }

    /// Whether this key may read and act on what `owner` owns (threads, subscriptions):
    /// admin keys for anyone, client and agent keys only for their own principal.
    pub(crate) fn may_act_as(&self, owner: &str) -> bool {
        self.key.may_act_for(owner)
    }
}

/// A stored address's state key (no `agent://`): the form the replicated state keys agents,
/// threads and subscriptions by.
pub(crate) fn bare(address: &str) -> &str {
    intentd_lifecycle::state_key(address)
}

/// A caller holding an admin key; anything else is 403 (or 401 if not authenticated at all).
#[derive(Debug, Clone)]
pub(crate) struct AdminCaller(pub(crate) Caller);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.key.require_admin()?;
        Ok(AdminCaller(caller))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::http::Request;
    use intentd_lifecycle::Role;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().uri("/");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn keys_are_random_prefixed_and_hash_to_hex_sha256() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with("ik_") && a.len() == 3 + 64);
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn x_api_key_wins_over_bearer() {
        let p = parts(&[("x-api-key", "k1"), ("authorization", "Bearer actor")]);
        assert_eq!(secret(&p), Some("k1"));
        let p = parts(&[("authorization", "bearer  k2 ")]);
        assert_eq!(secret(&p), Some("k2"));
        assert_eq!(secret(&parts(&[("authorization", "Basic x")])), None);
        assert_eq!(secret(&parts(&[("x-api-key", " ")])), None);
        assert_eq!(secret(&parts(&[])), None);
    }

    pub(crate) fn caller(role: Role) -> Caller {
        Caller {
            key: ApiKey {
                id: uuid::Uuid::nil(),
                name: "ci".into(),
                role,
                created_at: chrono::Utc::now(),
                revoked: false,
            },
        }
    }

    #[test]
    fn agent_keys_are_scoped_to_their_address() {
        let agent = caller(Role::Agent {
            address: intentd_lifecycle::AgentAddress::from_stored("agent://acme/prod/billing"),
        });
        let mut intent = crate::views::tests::sample_intent();
        assert!(agent.require_receiver_of(&intent).is_ok());
        assert!(agent.require_listener_on("acme/prod/billing").is_ok());
        assert!(agent.require_listener_on("acme/prod/other").is_err());
        assert_eq!(
            agent.actor(Some("someone-else")),
            "agent://acme/prod/billing"
        );
        assert!(agent.require_not_agent().is_err());
        intent.to_agent = "agent://acme/prod/other".into();
        assert_eq!(
            agent.require_receiver_of(&intent).unwrap_err().code(),
            "forbidden"
        );
        assert!(agent.require_observer_of(&intent).is_err());
        intent.from_agent = "agent://acme/prod/billing".into();
        assert!(agent.require_observer_of(&intent).is_ok());

        assert_eq!(agent.owner(None).unwrap(), "acme/prod/billing");
        assert_eq!(
            agent.owner(Some("agent://acme/prod/billing")).unwrap(),
            "acme/prod/billing"
        );
        assert_eq!(
            agent.owner(Some("acme/prod/other")).unwrap_err().code(),
            "forbidden"
        );
        assert!(agent.may_act_as("acme/prod/billing") && !agent.may_act_as("acme/prod/x"));

        // A client key acts for its own principal only: before, it named any owner and acted
        // as the receiver of any address.
        let client = caller(Role::Client);
        assert_eq!(client.owner(None).unwrap(), "intentd/keys/ci");
        assert_eq!(
            client.owner(Some("agent://intentd/keys/ci/")).unwrap(),
            "intentd/keys/ci"
        );
        assert_eq!(
            client.owner(Some("agent://ops/alice")).unwrap_err().code(),
            "forbidden"
        );
        assert!(!client.may_act_as("acme/prod/x"));
        assert!(client.require_receiver_of(&intent).is_err());
        let admin = caller(Role::Admin);
        assert_eq!(admin.owner(Some("agent://ops/alice")).unwrap(), "ops/alice");
        assert!(admin.require_receiver_of(&intent).is_ok());
        assert_eq!(client.actor(Some("ops-bot")), "ops-bot");
        assert_eq!(client.principal(), "agent://intentd/keys/ci");
    }
}
