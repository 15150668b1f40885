//! The agent directory: every known agent (registered, named by an agent key, or sent to),
//! with its binding as the caller may see it.

use super::binding::binding_view;
use super::*;
use crate::openapi::schemas::{AgentAnswer, AgentsAnswer};
use intentd_lifecycle::validate::listen_address;

/// An agent address from a path or a body, under the one address rule, as the state keys it.
pub(crate) fn agent_address(raw: &str) -> Result<String, ApiError> {
    Ok(listen_address(raw)?.path().to_string())
}

/// One known agent: an address with a registration, a queue, an agent key, or several.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentInfo {
    pub(crate) address: String,
    created_at: Timestamp,
    config: Option<AgentConfig>,
}

/// An agent exists once it registered a binding, an agent key names it or an intent was sent
/// to it. Its `created_at` is the earliest of its registration, the key's creation and its
/// first queued intent.
pub(crate) fn known_agents(state: &AppState) -> Result<Vec<AgentInfo>, ApiError> {
    let reader = state.cluster.reader();
    let mut agents: BTreeMap<String, Option<Timestamp>> = BTreeMap::new();
    let mut configs: BTreeMap<String, AgentConfig> = BTreeMap::new();
    for config in reader.agent_configs()? {
        let address = config.address.path().to_string();
        agents.insert(address.clone(), Some(config.created_at));
        configs.insert(address, config);
    }
    for (_, key) in reader.api_keys()? {
        if let (Role::Agent { address }, false) = (&key.role, key.revoked) {
            let entry = agents.entry(address.path().to_string()).or_default();
            *entry = Some(entry.map_or(key.created_at, |t| t.min(key.created_at)));
        }
    }
    for summary in reader.agents()? {
        let address = bare_address(&summary.address).to_string();
        let first = match reader.agent_queue(&address, 0, 1)?.first() {
            Some((_, id)) => reader.intent(id)?.map(|i| i.created_at),
            None => None,
        };
        let entry = agents.entry(address).or_default();
        *entry = match (*entry, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(agents
        .into_iter()
        .map(|(address, created_at)| AgentInfo {
            config: configs.remove(&address),
            address,
            created_at: created_at.unwrap_or(DateTime::UNIX_EPOCH),
        })
        .collect())
}

/// An entry of `api.agents.*.response.v1.json` (`additionalProperties: false`). There are no
/// service accounts in intentd; the address stands in for the id and its last segment for
/// the name, which is what the hosted platform derives the address from.
fn agent_view(agent: &AgentInfo, caller: &Caller) -> Value {
    let name = agent
        .address
        .rsplit('/')
        .next()
        .filter(|n| n.chars().count() >= 2)
        .unwrap_or(&agent.address);
    let config = agent.config.as_ref();
    json!({
        "address": format!("agent://{}", agent.address),
        "service_account_id": agent.address,
        "service_account_name": name.chars().take(120).collect::<String>(),
        "display_name": config.and_then(|c| c.display_name.clone()),
        "status": "active",
        "created_at": views::timestamp(&agent.created_at),
        "binding": binding_view(config, caller.may_act_as(&agent.address)),
    })
}

#[utoipa::path(
    get,
    path = "/v1/agents",
    tag = "agents",
    responses((status = 200, description = "The agent directory", body = AgentsAnswer))
)]
pub(super) async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let agents: Vec<Value> = known_agents(&state)?
        .iter()
        .map(|a| agent_view(a, &caller))
        .collect();
    Ok(Json(json!({ "ok": true, "agents": agents })))
}

#[utoipa::path(
    get,
    path = "/v1/agents/{address}",
    tag = "agents",
    params(("address" = String, Path, description = "An agent address (`acme/prod/billing` or `agent://acme/prod/billing`; slashes may be sent as `%2F`)")),
    responses((status = 200, description = "One agent", body = AgentAnswer))
)]
pub(super) fn get_agent(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> Result<Json<Value>, ApiError> {
    let address = intentd_lifecycle::validate::listen_address(raw)?;
    agent_answer(state, caller, address.path())
}

/// `{"ok": true, "agent": ...}` for the agent at the normalized `address`.
pub(crate) fn agent_answer(
    state: &AppState,
    caller: &Caller,
    address: &str,
) -> Result<Json<Value>, ApiError> {
    let agent = known_agents(state)?
        .into_iter()
        .find(|a| a.address == address)
        .ok_or_else(|| ApiError::NotFound(format!("agent agent://{address} not found")))?;
    Ok(Json(
        json!({ "ok": true, "agent": agent_view(&agent, caller) }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn agent_view_matches_the_schema_fields() {
        let agent = AgentInfo {
            address: "acme/prod/billing".into(),
            created_at: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
            config: None,
        };
        let v = agent_view(
            &agent,
            &crate::auth::tests::caller(intentd_lifecycle::Role::Admin),
        );
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "address",
                "binding",
                "created_at",
                "display_name",
                "service_account_id",
                "service_account_name",
                "status"
            ]
        );
        assert_eq!(v["binding"]["delivery_mode"], "stream");
        assert_eq!(v["address"], "agent://acme/prod/billing");
        assert_eq!(v["service_account_name"], "billing");
        assert_eq!(v["status"], "active");
    }
}
