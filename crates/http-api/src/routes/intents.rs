//! Intents: create, read, and the receiver's and operator's changes (resolve, resume,
//! controls, policy). Every change is one lifecycle command proposed through Raft; the reply is
//! sent only once it is committed on a majority and applied here.

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use intentd_lifecycle::validate::{self, IntentRequest, ResumeVerb};
use intentd_lifecycle::{ApiKey, Intent, IntentCommand, Resolution, ResumeAction};
use intentd_operations::intents::{decide_new, terminal_event, Written};
use serde_json::{json, Map, Value};

use super::{begin_change, claim, load_intent, now, propose_change, write_intent};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, JsonBody, NamedOwner, PathParam};
use crate::openapi::schemas::{
    AppliedAnswer, ControlsRequest, CreateIntentAnswer, CreateIntentRequest, IntentAnswer,
    PolicyRequest, ResolveAnswer, ResolveRequest, ResumeRequest,
};
use crate::validate::{check_len, path_uuid, Body};
use crate::{views, ApiConfig, AppState};

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_intent,
    get_intent,
    resolve_intent,
    resume_intent,
    update_controls,
    update_policy
))]
pub(crate) struct Doc;

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    let create = Router::new()
        .route("/v1/intents", post(create_intent))
        .layer(DefaultBodyLimit::max(config.max_intent_body_bytes));
    let others = Router::new()
        .route("/v1/intents/{id}", get(get_intent))
        .route("/v1/intents/{id}/resolve", post(resolve_intent))
        .route("/v1/intents/{id}/resume", post(resume_intent))
        .route("/v1/intents/{id}/controls", post(update_controls))
        .route("/v1/intents/{id}/policy", post(update_policy))
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes));
    create.merge(others)
}

// ---------------------------------------------------------------------------------------------
// Request bodies

/// The fields of `api.intents.create.request.v1.json`.
const CREATE_FIELDS: &[&str] = &[
    "intent_type",
    "correlation_id",
    "from_agent",
    "to_agent",
    "reply_to",
    "payload",
    "deadline_at",
    "remind_after_seconds",
    "remind_interval_seconds",
    "max_reminders",
    "escalate_to",
    "max_delivery_attempts",
    "human_task",
    "deliver_at",
];

/// Types a create body: wrong JSON types and unknown fields are refused here, every rule of
/// the contract by `intentd_lifecycle::validate::new_intent` (shared with the gRPC edge).
fn parse_create(body: &Value) -> Result<IntentRequest, ApiError> {
    let b = Body::strict(body)?;
    b.deny_unknown(CREATE_FIELDS)?;
    let text =
        |name: &str| -> Result<Option<String>, ApiError> { Ok(b.str(name)?.map(str::to_string)) };
    Ok(IntentRequest {
        intent_type: text("intent_type")?,
        correlation_id: text("correlation_id")?,
        from_agent: text("from_agent")?,
        to_agent: text("to_agent")?,
        reply_to: text("reply_to")?,
        // The contract lists a non-object payload among the rule violations (422), not as a
        // malformed request, so any JSON value is passed on for the rules to judge.
        payload: b.map().get("payload").cloned(),
        deadline_at: text("deadline_at")?,
        remind_after_seconds: b.uint("remind_after_seconds", 0)?,
        remind_interval_seconds: b.uint("remind_interval_seconds", 0)?,
        max_reminders: b.uint("max_reminders", 0)?,
        escalate_to: text("escalate_to")?,
        max_delivery_attempts: b.uint("max_delivery_attempts", 0)?,
        human_task: b.object("human_task")?.cloned(),
        deliver_at: text("deliver_at")?,
    })
}

/// `api.intents.resolve.request.v1.json`, with its if/then rules.
fn parse_resolve(body: &Value) -> Result<(Resolution, Option<String>), ApiError> {
    let b = Body::strict(body)?;
    b.deny_unknown(&["status", "actor", "result", "error", "reason"])?;
    let status = b.required_str("status")?;
    let actor = b.str("actor")?;
    if let Some(a) = actor {
        validate::actor(a)?;
    }
    let resolution = validate::resolution(
        status,
        b.object("result")?.cloned(),
        b.object("error")?.cloned(),
        b.str("reason")?.map(str::to_string),
    )?;
    Ok((resolution, actor.map(str::to_string)))
}

/// The two forms of a resume body (see `API.md`): the control form, recognised by
/// `approve_current_step`, and the receiver form, chosen by `action`.
fn parse_resume(body: &Value) -> Result<(ResumeAction, Option<String>), ApiError> {
    let b = Body::lenient(body)?;
    if b.map().contains_key("approve_current_step") {
        if let Some(approve) = b.bool("approve_current_step")? {
            validate::approve_current_step(approve)?;
        }
        let reason = b.str("reason")?;
        if let Some(r) = reason {
            validate::reason(r)?;
        }
        let actor = b.str("actor")?;
        if let Some(a) = actor {
            validate::actor(a)?;
        }
        let action = ResumeAction::ApproveCurrentStep {
            expected_policy_generation: b.uint("expected_policy_generation", 0)?,
            reason: reason.map(str::to_string),
        };
        return Ok((action, actor.map(str::to_string)));
    }
    // In the receiver form the body is the agent's own data (the result, the error, the
    // progress details), so an `actor` in it is used only if it happens to be a string.
    let actor = b
        .map()
        .get("actor")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut details = b.map().clone();
    details.remove("action");
    let action = match validate::resume_verb(b.str("action")?)? {
        ResumeVerb::Complete => ResumeAction::Complete {
            result: body.clone(),
        },
        ResumeVerb::Fail => ResumeAction::Fail {
            error: body.clone(),
        },
        ResumeVerb::Progress => ResumeAction::Progress { details },
        ResumeVerb::Wait => {
            let reason = validate::waiting_reason(b.str("waiting_reason")?)?;
            details.remove("waiting_reason");
            ResumeAction::Wait { reason, details }
        }
    };
    Ok((action, actor))
}

/// The fields controls and policy patches share (the gateway's request models).
#[derive(Debug, PartialEq)]
struct PatchMeta {
    expected_policy_generation: Option<u64>,
    actor: Option<String>,
    reason: Option<String>,
}

fn parse_patch_meta(b: &Body<'_>) -> Result<PatchMeta, ApiError> {
    let actor = b.str("actor")?;
    if let Some(a) = actor {
        check_len("actor", a, 3, 255)?;
    }
    let reason = b.str("reason")?;
    if let Some(r) = reason {
        check_len("reason", r, 0, 2000)?;
    }
    Ok(PatchMeta {
        expected_policy_generation: b.uint("expected_policy_generation", 0)?,
        actor: actor.map(str::to_string),
        reason: reason.map(str::to_string),
    })
}

fn parse_controls(body: &Value) -> Result<(Map<String, Value>, PatchMeta), ApiError> {
    let b = Body::lenient(body)?;
    let patch = b.required_object("controls_patch")?.clone();
    Ok((patch, parse_patch_meta(&b)?))
}

type PolicyPatch = (
    Option<Map<String, Value>>,
    Option<Map<String, Value>>,
    PatchMeta,
);

fn parse_policy(body: &Value) -> Result<PolicyPatch, ApiError> {
    let b = Body::lenient(body)?;
    let grants = b.object("grants_patch")?.cloned();
    let envelope = b.object("envelope_patch")?.cloned();
    if grants.is_none() && envelope.is_none() {
        return Err(ApiError::SchemaInvalid(
            "a policy update needs grants_patch or envelope_patch".into(),
        ));
    }
    Ok((grants, envelope, parse_patch_meta(&b)?))
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// `POST /v1/intents`. The reply means the intent is committed on a majority.
#[utoipa::path(
    post,
    path = "/v1/intents",
    tag = "intents",
    params(crate::openapi::IdempotencyKeyHeader),
    request_body = CreateIntentRequest,
    responses((status = 200, description = "Committed on a majority (or the first outcome again for a repeated Idempotency-Key)", body = CreateIntentAnswer))
)]
async fn create_intent(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let req = parse_create(&body)?;
    let at = now();
    // Only admin keys may name the sender (the field is deprecated in the contract but still
    // honoured for operators relaying on behalf).
    let decided = decide_new(
        &state.cluster,
        &caller.key,
        &req,
        state.config.default_max_delivery_attempts,
    )?;
    let intent = validate::new_intent(req, decided)?;
    let claim = claim(&state, caller.principal(), key, &body, at);
    let written = write_intent(&state, IntentCommand::Create { intent, at }, claim).await?;
    let intent = &written.intent;
    tracing::info!(intent_id = %intent.id, replayed = written.replayed, "intent created");
    Ok(Json(json!({
        "ok": true,
        "intent_id": intent.id,
        "status": intent.status.as_str(),
        "created_at": views::timestamp(&intent.created_at),
    })))
}

/// The delivery attempts of a new intent that names none (see the shared rule).
pub(crate) fn default_max_delivery_attempts(
    state: &AppState,
    to_agent: Option<&str>,
) -> Result<u32, ApiError> {
    Ok(intentd_operations::intents::default_max_delivery_attempts(
        &state.cluster,
        to_agent,
        state.config.default_max_delivery_attempts,
    )?)
}

/// `GET /v1/intents/{id}`: linearizable, never older than a write already acknowledged.
#[utoipa::path(
    get,
    path = "/v1/intents/{intent_id}",
    tag = "intents",
    params(("intent_id" = Uuid, Path, description = "The intent's id")),
    responses((status = 200, description = "The intent (linearizable)", body = IntentAnswer))
)]
async fn get_intent(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("intent_id", &id)?;
    let intent = load_intent(&state, id, true).await?;
    caller.require_observer_of(&intent)?;
    Ok(Json(
        json!({ "ok": true, "intent": views::intent(&intent) }),
    ))
}

/// `POST /v1/intents/{id}/resolve`.
#[utoipa::path(
    post,
    path = "/v1/intents/{intent_id}/resolve",
    tag = "intents",
    params(("intent_id" = Uuid, Path, description = "The intent's id"), crate::openapi::IdempotencyKeyHeader),
    request_body = ResolveRequest,
    responses((status = 200, description = "The terminal intent and its terminal event", body = ResolveAnswer))
)]
async fn resolve_intent(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("intent_id", &id)?;
    let (resolution, actor) = parse_resolve(&body)?;
    let change = begin_change(&state, &caller, "resolve", id, ApiKey::require_resolver_of).await?;
    let command = IntentCommand::Resolve {
        intent_id: id,
        resolution,
        actor: caller.actor(actor.as_deref()),
        at: change.at,
    };
    let written = propose_change(&state, change, command, key, &body).await?;
    let event = terminal_event(&state.cluster, &written).await?;
    let intent = &written.intent;
    tracing::info!(intent_id = %id, status = %intent.status, replayed = written.replayed, "intent resolved");
    Ok(Json(json!({
        "ok": true,
        "intent": views::intent(intent),
        "event": views::event(&event),
        "completion_delivery": completion_delivery(intent),
    })))
}

/// Whether the outcome is routed back to a `reply_to` agent, whose inbox thread is the intent.
fn completion_delivery(intent: &Intent) -> Value {
    match &intent.reply_to {
        Some(reply_to) => json!({
            "delivered": true,
            "reply_to": reply_to,
            "thread_id": intent.id,
        }),
        None => json!({ "delivered": false, "reason": "no_reply_to" }),
    }
}

/// The reply of resume, controls and policy.
fn applied_reply(written: &Written) -> Json<Value> {
    Json(json!({
        "ok": true,
        "applied": !written.replayed,
        "policy_generation": written.intent.policy_generation,
        "intent": views::intent(&written.intent),
    }))
}

/// `POST /v1/intents/{id}/resume`. The control form is the owner's: the SDK names the
/// owner in `owner_agent` (or `x-owner-agent`), which becomes the recorded actor unless the
/// body names one; an agent key may name only itself, as on every owner-scoped route.
#[utoipa::path(
    post,
    path = "/v1/intents/{intent_id}/resume",
    tag = "intents",
    params(("intent_id" = Uuid, Path, description = "The intent's id"), crate::openapi::IdempotencyKeyHeader, crate::openapi::OwnerQuery, crate::openapi::OwnerHeader),
    request_body = ResumeRequest,
    responses((status = 200, description = "The intent after the change", body = AppliedAnswer))
)]
async fn resume_intent(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("intent_id", &id)?;
    let (action, mut actor) = parse_resume(&body)?;
    let change = begin_change(&state, &caller, "resume", id, |key, intent| {
        key.require_resumer_of(intent, &action)
    })
    .await?;
    let intent = &change.intent;
    if let (ResumeAction::ApproveCurrentStep { .. }, Some(named)) = (&action, named.as_deref()) {
        // A client key approving what it sent names the owner as the hosted platform's
        // programs know it (their agent address, not the key's principal): a label of a change
        // it may make anyway. Everyone else may name only an owner it may act for.
        let owner = if caller.key.is_sender_of(intent) && !caller.key.is_agent() {
            intentd_lifecycle::validate::listen_address(named)?.uri()
        } else {
            format!("agent://{}", caller.owner(Some(named))?)
        };
        actor = actor.or(Some(owner));
    }
    let command = IntentCommand::Resume {
        intent_id: id,
        action,
        actor: caller.actor(actor.as_deref()),
        at: change.at,
    };
    let written = propose_change(&state, change, command, key, &body).await?;
    tracing::info!(intent_id = %id, status = %written.intent.status, replayed = written.replayed, "intent resumed");
    Ok(applied_reply(&written))
}

/// `POST /v1/intents/{id}/controls`: admin, or the client key that sent the intent; agent
/// keys cannot loosen their own rules.
#[utoipa::path(
    post,
    path = "/v1/intents/{intent_id}/controls",
    tag = "intents",
    params(("intent_id" = Uuid, Path, description = "The intent's id"), crate::openapi::IdempotencyKeyHeader, crate::openapi::OwnerQuery, crate::openapi::OwnerHeader),
    request_body = ControlsRequest,
    responses((status = 200, description = "The intent with its new controls", body = AppliedAnswer))
)]
async fn update_controls(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("intent_id", &id)?;
    let (patch, meta) = parse_controls(&body)?;
    let change = begin_change(&state, &caller, "controls", id, ApiKey::require_governor_of).await?;
    let command = IntentCommand::UpdateControls {
        intent_id: id,
        patch,
        expected_policy_generation: meta.expected_policy_generation,
        actor: caller.actor(meta.actor.as_deref()),
        reason: meta.reason,
        at: change.at,
    };
    let written = propose_change(&state, change, command, key, &body).await?;
    Ok(applied_reply(&written))
}

/// `POST /v1/intents/{id}/policy`.
#[utoipa::path(
    post,
    path = "/v1/intents/{intent_id}/policy",
    tag = "intents",
    params(("intent_id" = Uuid, Path, description = "The intent's id"), crate::openapi::IdempotencyKeyHeader, crate::openapi::OwnerQuery, crate::openapi::OwnerHeader),
    request_body = PolicyRequest,
    responses((status = 200, description = "The intent with its new policy", body = AppliedAnswer))
)]
async fn update_policy(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("intent_id", &id)?;
    let (grants_patch, envelope_patch, meta) = parse_policy(&body)?;
    let change = begin_change(&state, &caller, "policy", id, ApiKey::require_governor_of).await?;
    let command = IntentCommand::UpdatePolicy {
        intent_id: id,
        grants_patch,
        envelope_patch,
        expected_policy_generation: meta.expected_policy_generation,
        actor: caller.actor(meta.actor.as_deref()),
        reason: meta.reason,
        at: change.at,
    };
    let written = propose_change(&state, change, command, key, &body).await?;
    Ok(applied_reply(&written))
}

#[cfg(test)]
mod tests {
    use super::*;
    use intentd_lifecycle::validate::Decided;
    use intentd_lifecycle::WaitingReason;
    use uuid::Uuid;

    fn valid_create() -> Value {
        json!({
            "intent_type": "intent.generic.v1",
            "correlation_id": "6f1c2a7e-1b8f-4a1c-9a8e-3f4f7e2d9c10",
            "to_agent": "agent://acme/prod/billing",
            "payload": {"amount": 3},
        })
    }

    /// Typing and the shared rules, as the create handler applies them.
    fn create(body: &Value) -> Result<intentd_lifecycle::NewIntent, ApiError> {
        let decided = Decided {
            id: Uuid::nil(),
            from_agent: "agent://intentd/keys/ci".into(),
            default_max_delivery_attempts: 5,
        };
        Ok(validate::new_intent(parse_create(body)?, decided)?)
    }

    fn create_code(mutate: impl FnOnce(&mut Map<String, Value>)) -> &'static str {
        let mut body = valid_create();
        mutate(body.as_object_mut().unwrap());
        create(&body).unwrap_err().code()
    }

    #[test]
    fn a_minimal_create_parses() {
        let req = create(&valid_create()).unwrap();
        assert_eq!(req.intent_type, "intent.generic.v1");
        assert_eq!(req.to_agent, "agent://acme/prod/billing");
        assert_eq!(req.max_delivery_attempts, 5);
        assert_eq!(req.payload, json!({"amount": 3}));
    }

    #[test]
    fn a_full_create_parses() {
        let mut body = valid_create();
        let m = body.as_object_mut().unwrap();
        m.insert("from_agent".into(), json!("agent://acme/prod/sender"));
        m.insert("reply_to".into(), json!("agent://acme/prod/sender"));
        m.insert("deadline_at".into(), json!("2030-01-01T00:00:00Z"));
        m.insert("remind_after_seconds".into(), json!(60));
        m.insert("max_reminders".into(), json!(3));
        m.insert("max_delivery_attempts".into(), json!(2));
        m.insert(
            "human_task".into(),
            json!({"title": "Approve", "task_type": "approval", "allowed_outcomes": ["yes", "no"]}),
        );
        let req = create(&body).unwrap();
        assert_eq!(req.max_delivery_attempts, 2);
        assert_eq!(req.max_reminders, Some(3));
        assert!(req.deadline_at.is_some());
        assert_eq!(req.human_task.unwrap()["title"], "Approve");
    }

    #[test]
    fn create_contract_violations_are_422() {
        // (field, new value; None removes the field)
        let cases: Vec<(&str, Option<Value>)> = vec![
            ("intent_type", Some(json!("Generic"))),
            ("correlation_id", Some(json!("123"))),
            ("to_agent", None),
            ("payload", None),
            ("payload", Some(json!([1]))),
            ("to_agent", Some(json!("ab"))),
            ("to_agent", Some(json!("a".repeat(384)))),
            ("deadline_at", Some(json!("next tuesday"))),
            ("surprise", Some(json!(1))),
            ("max_delivery_attempts", Some(json!(0))),
            ("human_task", Some(json!({"description": "no title"}))),
            (
                "human_task",
                Some(json!({"title": "t", "task_type": "vibes"})),
            ),
        ];
        for (field, value) in cases {
            let code = create_code(|m| match value.clone() {
                Some(v) => {
                    m.insert(field.into(), v);
                }
                None => {
                    m.remove(field);
                }
            });
            assert_eq!(code, "schema_invalid", "{field}: {value:?}");
        }
    }

    #[test]
    fn create_wrong_types_are_400() {
        assert_eq!(
            create_code(|m| {
                m.insert("intent_type".into(), json!(5));
            }),
            "invalid_request"
        );
        assert_eq!(
            create_code(|m| {
                m.insert("max_delivery_attempts".into(), json!("five"));
            }),
            "invalid_request"
        );
        assert_eq!(
            create_code(|m| {
                m.insert("reply_to".into(), Value::Null);
            }),
            "invalid_request"
        );
        assert_eq!(
            create_code(|m| {
                m.insert("human_task".into(), json!({"title": 7}));
            }),
            "invalid_request"
        );
        assert_eq!(create(&json!("x")).unwrap_err().code(), "invalid_request");
    }

    #[test]
    fn resolve_requires_the_field_its_status_needs() {
        let (r, actor) =
            parse_resolve(&json!({"status": "COMPLETED", "result": {"ok": 1}})).unwrap();
        assert_eq!(
            r,
            Resolution::Completed {
                result: json!({"ok": 1})
            }
        );
        assert_eq!(actor, None);
        let (r, _) = parse_resolve(&json!({"status": "FAILED", "error": {"code": "x"}})).unwrap();
        assert_eq!(
            r,
            Resolution::Failed {
                error: json!({"code": "x"})
            }
        );
        let (r, actor) =
            parse_resolve(&json!({"status": "CANCELED", "reason": "dup", "actor": "ops"})).unwrap();
        assert_eq!(
            r,
            Resolution::Canceled {
                reason: "dup".into()
            }
        );
        assert_eq!(actor.as_deref(), Some("ops"));

        for bad in [
            json!({"status": "COMPLETED"}),
            json!({"status": "FAILED", "result": {}}),
            json!({"status": "CANCELED"}),
            json!({"status": "DONE", "result": {}}),
            json!({"result": {}}),
            json!({"status": "COMPLETED", "result": {}, "extra": 1}),
            json!({"status": "COMPLETED", "result": {}, "actor": "ab"}),
        ] {
            assert_eq!(
                parse_resolve(&bad).unwrap_err().code(),
                "schema_invalid",
                "{bad}"
            );
        }
        assert_eq!(
            parse_resolve(&json!({"status": "COMPLETED", "result": "yes"}))
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }

    #[test]
    fn resume_receiver_forms() {
        let body = json!({"answer": 42});
        assert_eq!(
            parse_resume(&body).unwrap().0,
            ResumeAction::Complete {
                result: body.clone()
            }
        );
        let body = json!({"action": "complete", "answer": 42});
        assert_eq!(
            parse_resume(&body).unwrap().0,
            ResumeAction::Complete {
                result: body.clone()
            }
        );
        let body = json!({"action": "fail", "code": "boom"});
        assert_eq!(
            parse_resume(&body).unwrap().0,
            ResumeAction::Fail {
                error: body.clone()
            }
        );
        let (action, _) = parse_resume(&json!({"action": "progress", "pct": 50})).unwrap();
        let mut details = Map::new();
        details.insert("pct".into(), json!(50));
        assert_eq!(
            action,
            ResumeAction::Progress {
                details: details.clone()
            }
        );
        let (action, _) = parse_resume(&json!({"action": "wait", "pct": 50})).unwrap();
        assert_eq!(
            action,
            ResumeAction::Wait {
                reason: WaitingReason::WaitingForAgent,
                details: details.clone()
            }
        );
        let (action, _) = parse_resume(
            &json!({"action": "wait", "waiting_reason": "WAITING_FOR_HUMAN", "pct": 50}),
        )
        .unwrap();
        assert_eq!(
            action,
            ResumeAction::Wait {
                reason: WaitingReason::WaitingForHuman,
                details
            }
        );
    }

    #[test]
    fn resume_control_form() {
        let (action, actor) = parse_resume(&json!({
            "approve_current_step": true,
            "expected_policy_generation": 3,
            "reason": "looks good",
            "actor": "ops-bot",
        }))
        .unwrap();
        assert_eq!(
            action,
            ResumeAction::ApproveCurrentStep {
                expected_policy_generation: Some(3),
                reason: Some("looks good".into())
            }
        );
        assert_eq!(actor.as_deref(), Some("ops-bot"));
        let (action, _) = parse_resume(&json!({
            "approve_current_step": true, "expected_policy_generation": null, "reason": null
        }))
        .unwrap();
        assert_eq!(
            action,
            ResumeAction::ApproveCurrentStep {
                expected_policy_generation: None,
                reason: None
            }
        );
    }

    #[test]
    fn resume_bad_bodies() {
        for (body, code) in [
            (json!({"action": "explode"}), "schema_invalid"),
            (json!({"action": 7}), "invalid_request"),
            (
                json!({"action": "wait", "waiting_reason": "BORED"}),
                "schema_invalid",
            ),
            (json!({"approve_current_step": false}), "schema_invalid"),
            (json!({"approve_current_step": "yes"}), "invalid_request"),
            (
                json!({"approve_current_step": true, "expected_policy_generation": -1}),
                "schema_invalid",
            ),
            (json!([1, 2]), "invalid_request"),
        ] {
            assert_eq!(parse_resume(&body).unwrap_err().code(), code, "{body}");
        }
        // A non-string actor inside a result is the agent's data, not a bad request.
        assert!(parse_resume(&json!({"actor": {"id": 1}})).is_ok());
    }

    #[test]
    fn controls_and_policy_bodies() {
        let (patch, meta) = parse_controls(&json!({
            "controls_patch": {"paused": true}, "expected_policy_generation": 0
        }))
        .unwrap();
        assert_eq!(patch["paused"], true);
        assert_eq!(meta.expected_policy_generation, Some(0));
        assert_eq!(
            parse_controls(&json!({})).unwrap_err().code(),
            "schema_invalid"
        );
        assert_eq!(
            parse_controls(&json!({"controls_patch": 1}))
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        let (grants, envelope, _) =
            parse_policy(&json!({"grants_patch": {"a": 1}, "envelope_patch": null})).unwrap();
        assert!(grants.is_some() && envelope.is_none());
        assert_eq!(
            parse_policy(&json!({"reason": "x"})).unwrap_err().code(),
            "schema_invalid"
        );
    }

    #[test]
    fn completion_delivery_follows_reply_to() {
        let mut intent = views::tests::sample_intent();
        assert_eq!(
            completion_delivery(&intent),
            json!({"delivered": false, "reason": "no_reply_to"})
        );
        intent.reply_to = Some("agent://acme/prod/sender".into());
        let v = completion_delivery(&intent);
        assert_eq!(v["delivered"], true);
        assert_eq!(v["thread_id"], json!(intent.id));
    }
}
