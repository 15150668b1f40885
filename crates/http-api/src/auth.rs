//! API keys: how secrets are made and hashed, and the extractors that authenticate a request
//! before any handler runs.
//!
//! The replicated state stores only the SHA-256 of each secret, so a copied data directory or
//! snapshot leaks no credential; a request's key is hashed and looked up by that hash.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use intentd_lifecycle::{ApiKey, Intent, Role};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

/// A new API key secret: `ik_` and 32 bytes from the operating system's CSPRNG, in hex.
/// The prefix makes keys recognisable in logs and secret scanners.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("ik_{}", hex::encode(bytes))
}

/// Hex SHA-256 of a key secret: the key under which the state stores the key. A fast hash is
/// enough because the secrets carry 256 bits of entropy; nothing here protects a weak password.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The secret a request presents: `x-api-key`, or else `Authorization: Bearer`. The SDK sends
/// `x-api-key` always and may add a bearer *actor* token that is not an API key, so the
/// explicit header wins.
fn presented_secret(parts: &Parts) -> Option<&str> {
    if let Some(v) = parts.headers.get("x-api-key") {
        return v.to_str().ok().map(str::trim).filter(|s| !s.is_empty());
    }
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|s| !s.is_empty())
}

/// The authenticated caller. Extracting it answers 401 for a missing, unknown or revoked key.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) key: ApiKey,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = presented_secret(parts).ok_or_else(|| {
            ApiError::AuthFailed(
                "an API key is required (x-api-key or Authorization: Bearer)".into(),
            )
        })?;
        let hash = hash_key(secret);
        let reader = state.cluster.reader();
        let mut found = reader.api_key(&hash)?;
        if found.is_none() {
            // A key created moments ago through another node may not be applied here yet;
            // one read barrier makes "create a key, then use it anywhere" work. If the barrier
            // fails there is no leader, and the key cannot be vouched for either way.
            if state.cluster.read_barrier().await.is_ok() {
                found = reader.api_key(&hash)?;
            }
        }
        match found {
            Some(key) if !key.revoked => Ok(Caller { key }),
            Some(_) => Err(ApiError::AuthFailed("this API key has been revoked".into())),
            None => Err(ApiError::AuthFailed("unknown API key".into())),
        }
    }
}

impl Caller {
    /// The identity the key speaks for: `from_agent` of the intents it sends, event actor.
    pub(crate) fn principal(&self) -> String {
        self.key.principal()
    }

    pub(crate) fn is_agent(&self) -> bool {
        matches!(self.key.role, Role::Agent { .. })
    }

    /// The actor recorded for a change: what the body names, unless the key is an agent key,
    /// which always acts as itself.
    pub(crate) fn actor(&self, claimed: Option<&str>) -> String {
        match claimed {
            Some(actor) if !self.is_agent() => actor.to_string(),
            _ => self.principal(),
        }
    }

    /// Agent keys act only as the receiver of intents addressed to them.
    pub(crate) fn require_receiver_of(&self, intent: &Intent) -> Result<(), ApiError> {
        if self.key.may_act_for(&intent.to_agent) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this key may not act on intents addressed to {}",
                intent.to_agent
            )))
        }
    }

    /// Reading an intent: its receiver, or the agent that sent it (which wants to watch it).
    pub(crate) fn require_observer_of(&self, intent: &Intent) -> Result<(), ApiError> {
        if self.key.may_act_for(&intent.to_agent) || intent.from_agent == self.principal() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this key may not read intents addressed to {}",
                intent.to_agent
            )))
        }
    }

    /// Listening on an agent's queue.
    pub(crate) fn require_listener_on(&self, address: &str) -> Result<(), ApiError> {
        if self.key.may_act_for(address) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this key may not listen on {address}"
            )))
        }
    }

    /// Operations reserved to admin and client keys (controls and policy patches).
    pub(crate) fn require_not_agent(&self) -> Result<(), ApiError> {
        if self.is_agent() {
            Err(ApiError::Forbidden(
                "agent keys may not change controls or policy".into(),
            ))
        } else {
            Ok(())
        }
    }
}

/// A caller holding an admin key; anything else is 403 (or 401 if not authenticated at all).
#[derive(Debug, Clone)]
pub(crate) struct AdminCaller(pub(crate) Caller);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        match caller.key.role {
            Role::Admin => Ok(AdminCaller(caller)),
            _ => Err(ApiError::Forbidden("this route needs an admin key".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

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
        assert_eq!(presented_secret(&p), Some("k1"));
        let p = parts(&[("authorization", "bearer  k2 ")]);
        assert_eq!(presented_secret(&p), Some("k2"));
        assert_eq!(
            presented_secret(&parts(&[("authorization", "Basic x")])),
            None
        );
        assert_eq!(presented_secret(&parts(&[("x-api-key", " ")])), None);
        assert_eq!(presented_secret(&parts(&[])), None);
    }

    fn caller(role: Role) -> Caller {
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
            address: "agent://acme/prod/billing".into(),
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

        let client = caller(Role::Client);
        assert!(client.require_receiver_of(&intent).is_ok());
        assert_eq!(client.actor(Some("ops-bot")), "ops-bot");
        assert_eq!(client.principal(), "agent://intentd/keys/ci");
    }
}
