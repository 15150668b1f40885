//! `PUT /v1/agents/{address}/binding` (our extension; the CLI's `intentd agents register`):
//! how an agent receives its intents, and the part of the agent directory that shows it.
//!
//! ```json
//! {"delivery_mode": "stream"|"poll"|"http"|"inbox"|"internal",
//!  "url"?, "secret"?, "max_concurrency"?,          // http only; url and secret required
//!  "ack_timeout_seconds"?, "max_delivery_attempts"?, "display_name"?}
//! ```
//! The registration is replicated state (`Command::RegisterAgent`), so every node's engine
//! makes the same choice. An HTTP binding's URL is checked against SSRF targets here as far
//! as it can be without DNS (its shape, a literal address: 422), and the addresses its name
//! resolves to by the engine at every push. The secret is kept (the engine signs with it)
//! but never shown again: answers carry `secret_hint` only.

use axum::Json;
use intentd_lifecycle::validate::listen_address;
use intentd_lifecycle::AgentAddress;
use intentd_lifecycle::{AgentConfig, Binding, Command, DEFAULT_ACK_TIMEOUT_SECS};
use serde_json::{json, Map, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::schemas::AgentAnswer;
use crate::routes::{checked_url, now, write};
use crate::validate::{check_len, Body};
use crate::{views, AppState};

/// The fields of a binding, shared with a scenario's `agents[]` entries.
pub(crate) const BINDING_FIELDS: &[&str] = &[
    "delivery_mode",
    "url",
    "secret",
    "max_concurrency",
    "ack_timeout_seconds",
    "max_delivery_attempts",
    "display_name",
];

/// Concurrent pushes to one HTTP endpoint when the registration names no cap.
pub(crate) const DEFAULT_MAX_CONCURRENCY: u32 = 4;
const MAX_CONCURRENCY: u64 = 1000;
/// A lease longer than a day would keep a crashed consumer's intents hostage for too long.
const MAX_ACK_TIMEOUT_SECS: u64 = 24 * 60 * 60;
/// Standard Webhooks secrets (`whsec_` + base64 of 24 to 64 bytes) fit comfortably.
const SECRET_LEN: (usize, usize) = (16, 256);
const URL_LEN: (usize, usize) = (8, 2048);

/// A binding as a request states it, before the URL check and the clock.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BindingRequest {
    pub(crate) binding: Binding,
    pub(crate) ack_timeout_secs: u64,
    pub(crate) max_delivery_attempts: Option<u32>,
    pub(crate) display_name: Option<String>,
}

impl BindingRequest {
    /// The replicated registration; `created_at` is kept by apply when the agent exists.
    pub(crate) fn into_config(
        self,
        address: AgentAddress,
        at: intentd_lifecycle::Timestamp,
    ) -> AgentConfig {
        AgentConfig {
            address,
            binding: self.binding,
            ack_timeout_secs: self.ack_timeout_secs,
            max_delivery_attempts: self.max_delivery_attempts,
            display_name: self.display_name,
            created_at: at,
            updated_at: at,
        }
    }

    /// The URL the SSRF check must pass, if any.
    pub(crate) fn url(&self) -> Option<&str> {
        match &self.binding {
            Binding::Http { url, .. } => Some(url),
            _ => None,
        }
    }
}

fn to_u32(name: &str, v: u64) -> Result<u32, ApiError> {
    u32::try_from(v).map_err(|_| ApiError::SchemaInvalid(format!("{name} is too large")))
}

/// Reads the binding fields of `b`; `default_mode` applies when `delivery_mode` is absent
/// (a scenario's agents default to streaming, a registration must say).
pub(crate) fn parse_binding_fields(
    b: &Body<'_>,
    default_mode: Option<&str>,
) -> Result<BindingRequest, ApiError> {
    let mode = match b.str("delivery_mode")? {
        Some(m) => m,
        None => default_mode
            .ok_or_else(|| ApiError::SchemaInvalid("delivery_mode is required".into()))?,
    };
    let url = b.str("url")?;
    let secret = b.str("secret")?;
    let max_concurrency = b.uint("max_concurrency", 1)?;
    let binding = match mode {
        "http" => {
            let url =
                url.ok_or_else(|| ApiError::SchemaInvalid("an http binding needs a url".into()))?;
            check_len("url", url, URL_LEN.0, URL_LEN.1)?;
            let secret = secret.ok_or_else(|| {
                ApiError::SchemaInvalid("an http binding needs a secret to sign with".into())
            })?;
            check_len("secret", secret, SECRET_LEN.0, SECRET_LEN.1)?;
            intentd_delivery::signing::check_secret(secret)
                .map_err(|e| ApiError::SchemaInvalid(format!("secret is refused: {e}")))?;
            let max_concurrency = max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY.into());
            if max_concurrency > MAX_CONCURRENCY {
                return Err(ApiError::SchemaInvalid(format!(
                    "max_concurrency must be at most {MAX_CONCURRENCY}"
                )));
            }
            Binding::Http {
                url: url.to_string(),
                secret: secret.to_string(),
                max_concurrency: to_u32("max_concurrency", max_concurrency)?,
            }
        }
        "stream" | "poll" | "inbox" | "internal" => {
            // Pushing is the only thing these fields configure; accepting them silently
            // would let a typo in the mode go unnoticed.
            for (name, set) in [
                ("url", url.is_some()),
                ("secret", secret.is_some()),
                ("max_concurrency", max_concurrency.is_some()),
            ] {
                if set {
                    return Err(ApiError::SchemaInvalid(format!(
                        "{name} applies only to delivery_mode http"
                    )));
                }
            }
            match mode {
                "stream" => Binding::Stream,
                "poll" => Binding::Poll,
                "inbox" => Binding::Inbox,
                _ => Binding::Internal,
            }
        }
        other => {
            return Err(ApiError::SchemaInvalid(format!(
                "delivery_mode {other:?} is not one of stream, poll, http, inbox, internal"
            )))
        }
    };
    let ack_timeout_secs = b
        .uint("ack_timeout_seconds", 1)?
        .unwrap_or(DEFAULT_ACK_TIMEOUT_SECS);
    if ack_timeout_secs > MAX_ACK_TIMEOUT_SECS {
        return Err(ApiError::SchemaInvalid(format!(
            "ack_timeout_seconds must be at most {MAX_ACK_TIMEOUT_SECS}"
        )));
    }
    let max_delivery_attempts = b
        .uint("max_delivery_attempts", 1)?
        .map(|v| to_u32("max_delivery_attempts", v))
        .transpose()?;
    let display_name = b.str("display_name")?;
    if let Some(d) = display_name {
        check_len("display_name", d, 1, 255)?;
    }
    Ok(BindingRequest {
        binding,
        ack_timeout_secs,
        max_delivery_attempts,
        display_name: display_name.map(str::to_string),
    })
}

/// The body of `PUT /v1/agents/{address}/binding`.
pub(crate) fn parse_binding(body: &Value) -> Result<BindingRequest, ApiError> {
    let b = Body::strict(body)?;
    b.deny_unknown(BINDING_FIELDS)?;
    parse_binding_fields(&b, None)
}

/// How an agent receives, as the directory shows it (never the secret; an agent with no
/// registration streams with the default lease, which is what it shows). Where an HTTP agent is pushed to, and which secret
/// signs its pushes, is for the agent itself and admins (`reveal`): another agent's key
/// reading them could aim at or impersonate that endpoint.
pub(crate) fn binding_view(config: Option<&AgentConfig>, reveal: bool) -> Value {
    let mut m = Map::new();
    let binding = config.map_or(&Binding::Stream, |c| &c.binding);
    m.insert("delivery_mode".into(), json!(binding.mode()));
    if let Binding::Http {
        url,
        max_concurrency,
        ..
    } = binding
    {
        m.insert("max_concurrency".into(), json!(max_concurrency));
        if reveal {
            m.insert("url".into(), json!(url));
            m.insert(
                "secret_hint".into(),
                json!(config.and_then(AgentConfig::secret_hint)),
            );
        }
    }
    m.insert(
        "ack_timeout_seconds".into(),
        json!(config.map_or(DEFAULT_ACK_TIMEOUT_SECS, |c| c.ack_timeout_secs)),
    );
    m.insert(
        "max_delivery_attempts".into(),
        json!(config.and_then(|c| c.max_delivery_attempts)),
    );
    m.insert("registered".into(), json!(config.is_some()));
    if let Some(c) = config {
        m.insert("updated_at".into(), json!(views::timestamp(&c.updated_at)));
    }
    Value::Object(m)
}

/// `PUT /v1/agents/{address}/binding`. Agent keys may register only their own address.
#[utoipa::path(
    put,
    path = "/v1/agents/{address}/binding",
    tag = "agents",
    params(("address" = String, Path, description = "An agent address (`acme/prod/billing` or `agent://acme/prod/billing`; slashes may be sent as `%2F`)")),
    request_body = crate::openapi::schemas::BindingRequest,
    responses((status = 200, description = "The agent with its new binding", body = AgentAnswer))
)]
pub(crate) async fn put_binding(
    state: &AppState,
    caller: &Caller,
    raw_address: &str,
    body: &Value,
) -> Result<Json<Value>, ApiError> {
    let address = listen_address(raw_address)?;
    caller.require_listener_on(address.path())?;
    let request = parse_binding(body)?;
    if let Some(url) = request.url() {
        checked_url(state, "url", url)?;
    }
    let config = request.into_config(address.clone(), now());
    write(state, Command::RegisterAgent { config }).await?;
    tracing::info!(agent = %address, "agent binding registered");
    super::directory::agent_answer(state, caller, address.path())
}

#[cfg(test)]
mod tests {
    use super::super::directory::agent_address;
    use super::*;

    fn parse(v: Value) -> Result<BindingRequest, ApiError> {
        parse_binding(&v)
    }

    #[test]
    fn plain_modes_parse_with_defaults() {
        for (mode, binding) in [
            ("stream", Binding::Stream),
            ("poll", Binding::Poll),
            ("inbox", Binding::Inbox),
            ("internal", Binding::Internal),
        ] {
            let r = parse(json!({ "delivery_mode": mode })).unwrap();
            assert_eq!(r.binding, binding);
            assert_eq!(r.ack_timeout_secs, DEFAULT_ACK_TIMEOUT_SECS);
            assert_eq!(r.max_delivery_attempts, None);
            assert!(r.url().is_none());
        }
        let r = parse(json!({
            "delivery_mode": "poll", "ack_timeout_seconds": 5,
            "max_delivery_attempts": 2, "display_name": "Billing"
        }))
        .unwrap();
        assert_eq!(
            (
                r.ack_timeout_secs,
                r.max_delivery_attempts,
                r.display_name.as_deref()
            ),
            (5, Some(2), Some("Billing"))
        );
    }

    #[test]
    fn http_needs_url_and_secret() {
        let r = parse(json!({
            "delivery_mode": "http", "url": "https://hooks.example.com/in",
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        }))
        .unwrap();
        assert_eq!(r.url(), Some("https://hooks.example.com/in"));
        assert!(matches!(
            r.binding,
            Binding::Http {
                max_concurrency: DEFAULT_MAX_CONCURRENCY,
                ..
            }
        ));
        for bad in [
            json!({"delivery_mode": "http", "secret": "0123456789abcdef"}),
            json!({"delivery_mode": "http", "url": "https://x.example.com"}),
            json!({"delivery_mode": "http", "url": "https://x.example.com", "secret": "short"}),
            json!({"delivery_mode": "http", "url": "https://x.example.com",
                   "secret": "0123456789abcdef", "max_concurrency": 0}),
            json!({"delivery_mode": "http", "url": "https://x.example.com",
                   "secret": "0123456789abcdef", "max_concurrency": 5000}),
        ] {
            assert_eq!(
                parse(bad.clone()).unwrap_err().code(),
                "schema_invalid",
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_bindings_are_422_and_wrong_types_400() {
        for bad in [
            json!({}),
            json!({"delivery_mode": "carrier_pigeon"}),
            json!({"delivery_mode": "poll", "url": "https://x.example.com"}),
            json!({"delivery_mode": "stream", "secret": "0123456789abcdef"}),
            json!({"delivery_mode": "poll", "ack_timeout_seconds": 0}),
            json!({"delivery_mode": "poll", "ack_timeout_seconds": 100000}),
            json!({"delivery_mode": "poll", "max_delivery_attempts": 0}),
            json!({"delivery_mode": "poll", "display_name": ""}),
            json!({"delivery_mode": "poll", "surprise": 1}),
        ] {
            assert_eq!(
                parse(bad.clone()).unwrap_err().code(),
                "schema_invalid",
                "{bad}"
            );
        }
        for bad in [
            json!({"delivery_mode": 1}),
            json!({"delivery_mode": "poll", "ack_timeout_seconds": "5"}),
            json!("poll"),
        ] {
            assert_eq!(
                parse(bad.clone()).unwrap_err().code(),
                "invalid_request",
                "{bad}"
            );
        }
    }

    #[test]
    fn addresses_are_normalized() {
        assert_eq!(
            agent_address("agent://acme/prod/billing/").unwrap(),
            "acme/prod/billing"
        );
        assert_eq!(agent_address("ab").unwrap_err().code(), "schema_invalid");
        assert_eq!(
            agent_address("agent://").unwrap_err().code(),
            "schema_invalid"
        );
        assert_eq!(agent_address("a b c").unwrap_err().code(), "schema_invalid");
    }

    #[test]
    fn the_view_never_shows_the_secret() {
        let at = chrono::DateTime::UNIX_EPOCH;
        let config = parse(json!({
            "delivery_mode": "http", "url": "https://hooks.example.com/in",
            "secret": "0123456789abcdefWXYZ"
        }))
        .unwrap()
        .into_config(
            AgentAddress::parse("address", "acme/prod/billing").unwrap(),
            at,
        );
        let hidden = binding_view(Some(&config), false);
        assert!(hidden.get("url").is_none() && hidden.get("secret_hint").is_none());
        let v = binding_view(Some(&config), true);
        assert_eq!(v["delivery_mode"], "http");
        assert_eq!(v["secret_hint"], "WXYZ");
        assert!(!v.to_string().contains("0123456789abcdef"), "{v}");
        let v = binding_view(None, true);
        assert_eq!(v["delivery_mode"], "stream");
        assert_eq!(v["registered"], false);
        assert_eq!(v["ack_timeout_seconds"], DEFAULT_ACK_TIMEOUT_SECS);
    }
}
