//! Admin: API keys. The secret is shown once, at creation; the cluster keeps only its hash.

use axum::extract::State;
use axum::routing::{delete, get};
use axum::{Json, Router};
use intentd_lifecycle::{ApiKey, Command, Role};
use serde_json::{json, Value};
use uuid::Uuid;

use super::now;
use crate::auth::{generate_key, hash_key, AdminCaller};
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::openapi::schemas::{CreateKeyRequest, CreatedKeyAnswer, KeysAnswer, RevokedKeyAnswer};
use crate::validate::{check_len, path_uuid, Body};
use crate::{views, AppState};

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_key, list_keys, revoke_key))]
pub(crate) struct Doc;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/keys", get(list_keys).post(create_key))
        .route("/v1/admin/keys/{id}", delete(revoke_key))
}

/// A key to create: its name and role.
#[derive(Debug, PartialEq)]
struct NewKey {
    name: String,
    role: Role,
}

/// Names become part of the key's principal (`agent://intentd/keys/<name>`), so they are
/// restricted to characters that are safe in an address.
fn parse_new_key(body: &Value) -> Result<NewKey, ApiError> {
    let b = Body::strict(body)?;
    b.deny_unknown(&["name", "role", "address"])?;
    let name = b.required_str("name")?;
    check_len("name", name, 1, 64)?;
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(ApiError::SchemaInvalid(
            "name may contain only letters, digits, '-', '_' and '.'".into(),
        ));
    }
    let address = b.str("address")?;
    let role = match (b.required_str("role")?, address) {
        ("admin", None) => Role::Admin,
        ("client", None) => Role::Client,
        ("agent", Some(address)) => {
            // Stored with the scheme, the form `to_agent` has.
            Role::Agent {
                address: intentd_lifecycle::validate::listen_address(address)?,
            }
        }
        ("agent", None) => {
            return Err(ApiError::SchemaInvalid(
                "an agent key needs the address it acts for".into(),
            ))
        }
        ("admin" | "client", Some(_)) => {
            return Err(ApiError::SchemaInvalid(
                "only agent keys have an address".into(),
            ))
        }
        (other, _) => {
            return Err(ApiError::SchemaInvalid(format!(
                "role {other:?} is not one of admin, client, agent"
            )))
        }
    };
    Ok(NewKey {
        name: name.to_string(),
        role,
    })
}

fn role_fields(role: &Role) -> (&'static str, Option<String>) {
    match role {
        Role::Admin => ("admin", None),
        Role::Client => ("client", None),
        Role::Agent { address } => ("agent", Some(address.uri())),
    }
}

/// A key without its secret (which the server does not have anyway).
fn key_view(key: &ApiKey) -> Value {
    let (role, address) = role_fields(&key.role);
    json!({
        "key_id": key.id,
        "name": key.name,
        "role": role,
        "address": address,
        "principal": key.principal(),
        "created_at": views::timestamp(&key.created_at),
        "revoked": key.revoked,
    })
}

/// `POST /v1/admin/keys`.
#[utoipa::path(
    post,
    path = "/v1/admin/keys",
    tag = "admin",
    request_body = CreateKeyRequest,
    responses((status = 200, description = "The key, with its secret shown this once", body = CreatedKeyAnswer))
)]
async fn create_key(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let new = parse_new_key(&body)?;
    // Two live keys with one name would share a principal and with it idempotency scopes.
    // Checked on a current view; two concurrent creations can still race, which only admins
    // can cause.
    state.cluster.read_barrier().await?;
    let taken = state
        .cluster
        .reader()
        .api_keys()?
        .iter()
        .any(|(_, k)| k.name == new.name && !k.revoked);
    if taken {
        return Err(ApiError::Conflict {
            code: "already_exists",
            message: format!("a live key named {:?} exists", new.name),
        });
    }
    let secret = generate_key();
    let key = ApiKey {
        id: Uuid::new_v4(),
        name: new.name,
        role: new.role,
        created_at: now(),
        revoked: false,
    };
    state
        .cluster
        .write(Command::PutApiKey {
            key_hash: hash_key(&secret),
            key: key.clone(),
        })
        .await?;
    tracing::info!(key_id = %key.id, name = %key.name, by = %caller.key.name, "api key created");
    let mut view = key_view(&key);
    view["ok"] = json!(true);
    view["key"] = json!(secret);
    Ok(Json(view))
}

/// `GET /v1/admin/keys`.
#[utoipa::path(
    get,
    path = "/v1/admin/keys",
    tag = "admin",
    responses((status = 200, description = "Every key, without secrets", body = KeysAnswer))
)]
async fn list_keys(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<Value>, ApiError> {
    state.cluster.read_barrier().await?;
    let mut keys: Vec<ApiKey> = state
        .cluster
        .reader()
        .api_keys()?
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    keys.sort_by_key(|k| (k.created_at, k.id));
    let keys: Vec<Value> = keys.iter().map(key_view).collect();
    Ok(Json(json!({ "ok": true, "keys": keys })))
}

/// `DELETE /v1/admin/keys/{id}`: the key stays, marked revoked, so its id stays unique.
#[utoipa::path(
    delete,
    path = "/v1/admin/keys/{key_id}",
    tag = "admin",
    params(("key_id" = Uuid, Path, description = "The key")),
    responses((status = 200, description = "Revoked", body = RevokedKeyAnswer))
)]
async fn revoke_key(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("key_id", &id)?;
    state.cluster.read_barrier().await?;
    let known = state
        .cluster
        .reader()
        .api_keys()?
        .into_iter()
        .any(|(_, k)| k.id == id);
    if !known {
        return Err(ApiError::NotFound(format!("api key {id} not found")));
    }
    state.cluster.write(Command::RevokeApiKey { id }).await?;
    tracing::info!(key_id = %id, by = %caller.key.name, "api key revoked");
    Ok(Json(json!({ "ok": true, "key_id": id, "revoked": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_key_bodies() {
        assert_eq!(
            parse_new_key(&json!({"name": "ci", "role": "client"})).unwrap(),
            NewKey {
                name: "ci".into(),
                role: Role::Client
            }
        );
        assert_eq!(
            parse_new_key(
                &json!({"name": "billing", "role": "agent", "address": "acme/prod/billing"})
            )
            .unwrap()
            .role,
            Role::Agent {
                address: intentd_lifecycle::AgentAddress::from_stored("agent://acme/prod/billing")
            }
        );
        for bad in [
            json!({"name": "ci", "role": "root"}),
            json!({"name": "ci", "role": "agent"}),
            json!({"name": "ci", "role": "client", "address": "a/b/c"}),
            json!({"name": "c i", "role": "client"}),
            json!({"name": "", "role": "client"}),
            json!({"role": "client"}),
            json!({"name": "ci", "role": "client", "extra": true}),
        ] {
            assert_eq!(
                parse_new_key(&bad).unwrap_err().code(),
                "schema_invalid",
                "{bad}"
            );
        }
    }

    #[test]
    fn key_view_has_no_secret() {
        let key = ApiKey {
            id: Uuid::nil(),
            name: "ci".into(),
            role: Role::Client,
            created_at: chrono::Utc::now(),
            revoked: false,
        };
        let v = key_view(&key);
        assert!(v.get("key").is_none());
        assert_eq!(v["role"], "client");
        assert_eq!(v["principal"], "agent://intentd/keys/ci");
    }
}
