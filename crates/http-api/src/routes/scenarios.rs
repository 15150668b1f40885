//! `POST /v1/scenarios/apply` and `POST /v1/scenarios/validate`
//! (`api.scenarios.bundle.request.v1.json`): register the agents a scenario names, with their
//! delivery binding, and submit its intent; `validate` answers what `apply` would do without
//! doing it.
//!
//! What a bundle means here:
//! - `agents[]` entries take our binding fields besides the schema's (`delivery_mode`,
//!   `url`, `secret`, `max_concurrency`, `ack_timeout_seconds`, `max_delivery_attempts`). An
//!   entry with a `delivery_mode` or `create_if_missing: true` is registered (mode `stream`
//!   when unnamed); others are only named.
//! - `humans[]` are registered with the `inbox` binding at their `contact` as the address,
//!   so an intent addressed to them waits in their inbox for a decision.
//! - `workflow.steps` run whole, in the cluster (`docs/workflows-design.md`): each step
//!   becomes a `WorkflowStep` of the intent's `Workflow` (lifecycle `apply/workflow.rs`
//!   walks it, one replicated command per tick). A step is a person's when it
//!   `requires_approval`, is a `human_approval` step, has a `human_task` or is assigned to
//!   a `humans[]` role (an inbox task; its `human_task` rules are checked on the answer);
//!   an agent's when `assigned_to` names one; a timer for `delay`/`timeout`/`reminder`/
//!   `escalation` (`runtime_config.seconds`); instant for `notification`, and for a
//!   `tool_id` with nobody assigned (intentd runs no tools; a warning says so). The graph is
//!   checked here: unique ids, existing edge targets, every step reachable, no cycle (422
//!   naming the cycle); with no edge named, the list order. A `macro_id` is refused (422).
//! - The intent goes to the first step's owner (else the first agent, else the first
//!   human). `escalate_to` may name a role, as may `assigned_to`.
//! - `idempotency_key` (or the `Idempotency-Key` header) makes a repeat answer the first
//!   intent with `idempotent: true`.
//! - Bundles are copied as published (product pages, the seeds' repositories), and those
//!   carry fields the schema does not list: `title` is read like `description`, a
//!   `scenario_id` may contain hyphens (`replacing-webhooks.demo.v1`), and any other key
//!   intentd does not know, at any level, is ignored and named in the answer's `warnings`
//!   (`unknown field ignored: agents[0].colour`), so a typo stays visible without making the
//!   bundle fail. Wrong types and broken rules of known fields are refused as usual.
//!
//! Deviations from `api.scenarios.bundle.response.v1.json`: the answer also has `"ok": true`
//! (every success body does), `status` is the intent's real status (SUBMITTED for an agent
//! that has not received it yet, not one of the schema's three), and agent addresses carry
//! the `agent://` scheme. `validate` answers `{"ok": true, "valid", "errors": [{"code",
//! "message"}], "warnings", "plan"}` with status 200 for a bundle that breaks the contract.

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use intentd_lifecycle::validate::{self, Decided, IntentRequest};
use intentd_lifecycle::workflow;
use intentd_lifecycle::{
    AgentAddress, AgentConfig, Command, IntentCommand, NewIntent, StepKind, Workflow, WorkflowStep,
};
use intentd_operations::intents::Written;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::agents::{agent_address, parse_binding_fields, BindingRequest, BINDING_FIELDS};
use super::{checked_url, claim, now, write, write_intent};
use crate::auth::{bare, Caller};
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, JsonBody};
use crate::openapi::schemas::{ScenarioApplyAnswer, ScenarioBundle, ScenarioValidateAnswer};
use crate::validate::{check_len, Body};
use crate::{views, ApiConfig, AppState};

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(apply, validate_bundle))]
pub(crate) struct Doc;

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route("/v1/scenarios/apply", post(apply))
        .route("/v1/scenarios/validate", post(validate_bundle))
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
}

/// One participant to register (or only name).
#[derive(Debug, Clone, PartialEq)]
struct Participant {
    role: String,
    /// Normalized (no `agent://`).
    address: String,
    /// `None`: named only, not registered.
    binding: Option<BindingRequest>,
}

/// What applying a bundle does.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    scenario_id: String,
    participants: Vec<Participant>,
    intent: IntentRequest,
    /// The workflow the intent runs, when the bundle has steps.
    workflow: Option<Workflow>,
    idempotency_key: Option<String>,
    warnings: Vec<String>,
}

fn array<'a>(b: &Body<'a>, name: &str, max: usize) -> Result<&'a [Value], ApiError> {
    match b.map().get(name) {
        None => Ok(&[]),
        Some(Value::Array(items)) if items.len() <= max => Ok(items),
        Some(Value::Array(_)) => Err(ApiError::SchemaInvalid(format!(
            "{name} lists at most {max} entries"
        ))),
        Some(_) => Err(ApiError::InvalidRequest(format!("{name} must be an array"))),
    }
}

/// `^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$`: the schema's pattern plus the hyphen, which published
/// bundles use (`replacing-webhooks.demo.v1`).
fn is_scenario_id(s: &str) -> bool {
    s.split('.').all(|w| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    })
}

/// Names each key of `b` that `allowed` does not list in `warnings`; `at` is where `b` is
/// in the bundle (empty at the top).
fn note_unknown(b: &Body<'_>, allowed: &[&str], at: &str, warnings: &mut Vec<String>) {
    for key in b.unknown(allowed) {
        let path = if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        };
        warnings.push(format!("unknown field ignored: {path}"));
    }
}

/// A `human_task` without the keys `HumanTaskSpec` does not list, each named in `warnings`:
/// the create rules the task goes through next refuse unknown keys, a bundle only notes them.
fn known_human_task(
    task: &Map<String, Value>,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<Map<String, Value>, ApiError> {
    let value = Value::Object(task.clone());
    note_unknown(
        &Body::strict(&value)?,
        validate::HUMAN_TASK_FIELDS,
        at,
        warnings,
    );
    let mut known = task.clone();
    known.retain(|k, _| validate::HUMAN_TASK_FIELDS.contains(&k.as_str()));
    Ok(known)
}

fn parse_agent(
    value: &Value,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<Participant, ApiError> {
    let b = Body::strict(value)?;
    let mut allowed = vec!["role", "address", "create_if_missing"];
    allowed.extend_from_slice(BINDING_FIELDS);
    note_unknown(&b, &allowed, at, warnings);
    let role = b.required_str("role")?;
    check_len("agents[].role", role, 1, 100)?;
    let address = b.required_str("address")?;
    check_len("agents[].address", address, 1, 383)?;
    let register =
        b.bool("create_if_missing")?.unwrap_or(false) || b.map().contains_key("delivery_mode");
    let binding = parse_binding_fields(&b, Some("stream"))?;
    Ok(Participant {
        role: role.to_string(),
        address: agent_address(address)?,
        binding: register.then_some(binding),
    })
}

fn parse_human(
    value: &Value,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<Participant, ApiError> {
    let b = Body::strict(value)?;
    note_unknown(&b, &["role", "contact", "display_name"], at, warnings);
    let role = b.required_str("role")?;
    check_len("humans[].role", role, 1, 100)?;
    let contact = b.required_str("contact")?;
    check_len("humans[].contact", contact, 1, 255)?;
    let display_name = b.str("display_name")?;
    if let Some(d) = display_name {
        check_len("humans[].display_name", d, 1, 255)?;
    }
    let mut binding = parse_binding_fields(&Body::strict(&json!({}))?, Some("inbox"))?;
    binding.display_name = display_name.map(str::to_string);
    Ok(Participant {
        role: role.to_string(),
        address: agent_address(contact)?,
        binding: Some(binding),
    })
}

/// A workflow step as the bundle gives it, before its roles are resolved.
#[derive(Debug)]
struct StepSpec {
    at: String,
    step_id: String,
    runtime_type: Option<String>,
    runtime_config: Map<String, Value>,
    tool_id: Option<String>,
    assigned_to: Option<String>,
    human: bool,
    human_task: Option<Map<String, Value>>,
    step_deadline_seconds: Option<u64>,
    max_retries: u32,
    retry_delay_seconds: Option<u64>,
    remind_after_seconds: Option<u64>,
    remind_interval_seconds: Option<u64>,
    max_reminders: Option<u64>,
    escalate_to: Option<String>,
    on_success: Option<String>,
    on_failure: Option<String>,
}

const STEP_FIELDS: &[&str] = &[
    "step_id",
    "tool_id",
    "runtime_type",
    "runtime_config",
    "assigned_to",
    "requires_approval",
    "step_deadline_seconds",
    "retry",
    "human_task",
    "remind_after_seconds",
    "remind_interval_seconds",
    "max_reminders",
    "escalate_to",
    "on_success",
    "on_failure",
];

const RUNTIME_TYPES: &[&str] = &[
    "human_approval",
    "timeout",
    "reminder",
    "delay",
    "escalation",
    "notification",
];

fn parse_step(value: &Value, at: String, warnings: &mut Vec<String>) -> Result<StepSpec, ApiError> {
    let s = Body::strict(value)?;
    note_unknown(&s, STEP_FIELDS, &at, warnings);
    let human_task = s
        .object("human_task")?
        .map(|t| known_human_task(t, &format!("{at}.human_task"), warnings))
        .transpose()?;
    let step_id = s.required_str("step_id")?;
    check_len("workflow.steps[].step_id", step_id, 1, 100)?;
    let runtime = s.str("runtime_type")?;
    if let Some(r) = runtime {
        if !RUNTIME_TYPES.contains(&r) {
            return Err(ApiError::SchemaInvalid(format!(
                "workflow.steps[].runtime_type {r:?} is not one of {}",
                RUNTIME_TYPES.join(", ")
            )));
        }
    }
    let edge = |name: &str| -> Result<Option<String>, ApiError> {
        let v = s.str(name)?;
        if let Some(v) = v {
            check_len(&format!("workflow.steps[].{name}"), v, 1, 100)?;
        }
        Ok(v.map(str::to_string))
    };
    let mut max_retries = 0;
    let mut retry_delay_seconds = None;
    if let Some(retry) = s.object("retry")? {
        let retry = Value::Object(retry.clone());
        let r = Body::strict(&retry)?;
        note_unknown(
            &r,
            &["max_retries", "retry_delay_seconds"],
            &format!("{at}.retry"),
            warnings,
        );
        max_retries = u32::try_from(r.uint("max_retries", 0)?.unwrap_or(0)).map_err(|_| {
            ApiError::SchemaInvalid("workflow.steps[].retry.max_retries is too large".into())
        })?;
        retry_delay_seconds = r.uint("retry_delay_seconds", 1)?;
    }
    let tool_id = s.str("tool_id")?;
    if let Some(t) = tool_id {
        check_len("workflow.steps[].tool_id", t, 1, 255)?;
    }
    for name in ["assigned_to", "escalate_to"] {
        if let Some(v) = s.str(name)? {
            check_len(&format!("workflow.steps[].{name}"), v, 0, 383)?;
        }
    }
    Ok(StepSpec {
        human: s.bool("requires_approval")?.unwrap_or(false)
            || runtime == Some("human_approval")
            || human_task.is_some(),
        at,
        step_id: step_id.to_string(),
        runtime_type: runtime.map(str::to_string),
        runtime_config: s.object("runtime_config")?.cloned().unwrap_or_default(),
        tool_id: tool_id.map(str::to_string),
        assigned_to: s.str("assigned_to")?.map(str::to_string),
        human_task,
        step_deadline_seconds: s.uint("step_deadline_seconds", 1)?,
        max_retries,
        retry_delay_seconds,
        remind_after_seconds: s.uint("remind_after_seconds", 1)?,
        remind_interval_seconds: s.uint("remind_interval_seconds", 1)?,
        max_reminders: s.uint("max_reminders", 1)?,
        escalate_to: s.str("escalate_to")?.map(str::to_string),
        on_success: edge("on_success")?,
        on_failure: edge("on_failure")?,
    })
}

fn parse_workflow(b: &Body<'_>, warnings: &mut Vec<String>) -> Result<Vec<StepSpec>, ApiError> {
    let Some(workflow) = b.object("workflow")? else {
        return Ok(Vec::new());
    };
    let workflow = Value::Object(workflow.clone());
    let w = Body::strict(&workflow)?;
    note_unknown(&w, &["macro_id", "steps"], "workflow", warnings);
    if w.str("macro_id")?.is_some() {
        return Err(ApiError::SchemaInvalid(
            "workflow.macro_id: intentd has no workflow macros".into(),
        ));
    }
    let steps = array(&w, "steps", 100)?;
    if w.map().contains_key("steps") && steps.is_empty() {
        return Err(ApiError::SchemaInvalid(
            "workflow.steps needs at least one step".into(),
        ));
    }
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| parse_step(step, format!("workflow.steps[{i}]"), warnings))
        .collect()
}

/// The seconds a timer step waits: `runtime_config.seconds` (or the `delay_seconds`,
/// `timeout_seconds`, `after_seconds` spellings), else its `step_deadline_seconds` for a
/// timeout, else none (it acts at once).
fn timer_seconds(spec: &StepSpec) -> Result<u64, ApiError> {
    for name in [
        "seconds",
        "delay_seconds",
        "timeout_seconds",
        "after_seconds",
    ] {
        match spec.runtime_config.get(name) {
            None => continue,
            Some(v) => {
                return v.as_u64().ok_or_else(|| {
                    ApiError::SchemaInvalid(format!(
                        "{}.runtime_config.{name} must be an integer >= 0",
                        spec.at
                    ))
                })
            }
        }
    }
    Ok(match spec.runtime_type.as_deref() {
        Some("timeout") => spec.step_deadline_seconds.unwrap_or(0),
        _ => 0,
    })
}

/// The step's owner, when it is a person: a role of `humans[]`, or any step that asks for
/// approval or has a human task.
fn is_human_role(participants: &[Participant], name: &str) -> bool {
    participants.iter().any(|p| {
        p.role == name
            && p.binding
                .as_ref()
                .is_some_and(|b| b.binding.mode() == "inbox")
    })
}

/// Turns the bundle's steps into the workflow the intent runs: roles resolved to addresses,
/// each step's kind decided, and the graph checked and normalised
/// (`intentd_lifecycle::workflow::normalise`: unique ids, edges to existing steps, every step
/// reachable, no cycle; list order when no step names an edge).
fn build_workflow(
    participants: &[Participant],
    specs: Vec<StepSpec>,
    warnings: &mut Vec<String>,
) -> Result<Workflow, ApiError> {
    let first_of = |inbox: bool| {
        participants
            .iter()
            .find(|p| {
                p.binding
                    .as_ref()
                    .is_some_and(|b| b.binding.mode() == "inbox")
                    == inbox
            })
            .map(|p| format!("agent://{}", p.address))
    };
    let uri = |name: &str| resolve(participants, name).map(|a| format!("agent://{a}"));
    let mut steps = Vec::with_capacity(specs.len());
    for spec in specs {
        let human = spec.human
            || spec
                .assigned_to
                .as_deref()
                .is_some_and(|a| is_human_role(participants, a));
        let kind = match spec.runtime_type.as_deref() {
            Some(kind @ ("delay" | "timeout" | "reminder" | "escalation")) => {
                let seconds = timer_seconds(&spec)?;
                let target = |name: Option<&String>| -> Result<String, ApiError> {
                    match name {
                        Some(n) => uri(n),
                        None => first_of(true).or_else(|| first_of(false)).ok_or_else(|| {
                            ApiError::SchemaInvalid(format!(
                                "{}: a {kind} step needs assigned_to or escalate_to",
                                spec.at
                            ))
                        }),
                    }
                };
                match kind {
                    "delay" => StepKind::Delay { seconds },
                    "timeout" => StepKind::Timeout { seconds },
                    "reminder" => StepKind::Reminder {
                        seconds,
                        to: target(spec.assigned_to.as_ref())?,
                    },
                    _ => StepKind::Escalation {
                        seconds,
                        to: target(spec.escalate_to.as_ref().or(spec.assigned_to.as_ref()))?,
                    },
                }
            }
            Some("notification") => StepKind::Notification {
                message: spec.runtime_config.get("message").cloned().or_else(|| {
                    (!spec.runtime_config.is_empty())
                        .then(|| Value::Object(spec.runtime_config.clone()))
                }),
            },
            _ if human => {
                let address = match &spec.assigned_to {
                    Some(a) => uri(a)?,
                    None => first_of(true).ok_or_else(|| {
                        ApiError::SchemaInvalid(format!(
                            "{}: a human step needs assigned_to or a humans[] entry",
                            spec.at
                        ))
                    })?,
                };
                StepKind::Human { address }
            }
            _ => match (&spec.assigned_to, &spec.tool_id) {
                (Some(a), _) => StepKind::Agent { address: uri(a)? },
                (None, Some(tool_id)) => {
                    warnings.push(format!(
                        "{}: intentd does not execute tool {tool_id:?}; with no assigned_to the \
                         step succeeds at once",
                        spec.at
                    ));
                    StepKind::Tool {
                        tool_id: tool_id.clone(),
                    }
                }
                (None, None) => StepKind::Agent {
                    address: first_of(false).or_else(|| first_of(true)).ok_or_else(|| {
                        ApiError::SchemaInvalid(format!(
                            "{}: the step names no assigned_to, tool_id or runtime_type, and the \
                             bundle no agent",
                            spec.at
                        ))
                    })?,
                },
            },
        };
        let mut step = WorkflowStep::new(spec.step_id.clone(), kind);
        if matches!(step.kind, StepKind::Human { .. }) {
            let mut task = spec.human_task.clone().unwrap_or_default();
            task.entry("title").or_insert_with(|| json!(spec.step_id));
            validate::human_task(&task)?;
            step.human_task = Some(Value::Object(task));
            step.remind_after_seconds = spec.remind_after_seconds;
            step.remind_interval_seconds = spec.remind_interval_seconds;
            step.max_reminders = spec
                .max_reminders
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            step.escalate_to = spec.escalate_to.as_deref().map(uri).transpose()?;
        }
        step.step_deadline_seconds = spec.step_deadline_seconds;
        step.max_retries = spec.max_retries;
        step.retry_delay_seconds = spec.retry_delay_seconds;
        step.on_success = spec.on_success;
        step.on_failure = spec.on_failure;
        steps.push(step);
    }
    workflow::normalise(&mut steps).map_err(|e| ApiError::SchemaInvalid(e.to_string()))?;
    Ok(Workflow::new(steps))
}

/// A role of the bundle, or else an address as given.
fn resolve(participants: &[Participant], name: &str) -> Result<String, ApiError> {
    match participants.iter().find(|p| p.role == name) {
        Some(p) => Ok(p.address.clone()),
        None => agent_address(name),
    }
}

/// The top-level fields of a bundle: the schema's, and `title`, which published bundles carry.
const BUNDLE_FIELDS: &[&str] = &[
    "scenario_id",
    "title",
    "description",
    "idempotency_key",
    "agents",
    "humans",
    "workflow",
    "intent",
];

const INTENT_FIELDS: &[&str] = &[
    "type",
    "payload",
    "deadline_at",
    "remind_after_seconds",
    "remind_interval_seconds",
    "max_reminders",
    "escalate_to",
    "max_delivery_attempts",
    "human_task",
];

/// Reads a bundle into a plan. Everything the intent must satisfy beyond the bundle's own
/// schema (the `intent.*.v1`-style type, the human task's shape) is checked when the plan
/// becomes a `NewIntent` ([`new_intent`]).
fn parse_bundle(body: &Value) -> Result<Plan, ApiError> {
    let b = Body::strict(body)?;
    let mut warnings = Vec::new();
    note_unknown(&b, BUNDLE_FIELDS, "", &mut warnings);
    let scenario_id = b.required_str("scenario_id")?;
    check_len("scenario_id", scenario_id, 3, 255)?;
    if !is_scenario_id(scenario_id) {
        return Err(ApiError::SchemaInvalid(format!(
            "scenario_id {scenario_id:?} does not match ^[a-z0-9_-]+(?:\\.[a-z0-9_-]+)*$"
        )));
    }
    if let Some(t) = b.str("title")? {
        check_len("title", t, 0, 255)?;
    }
    if let Some(d) = b.str("description")? {
        check_len("description", d, 0, 1000)?;
    }
    let idempotency_key = b
        .str("idempotency_key")?
        .map(validate::idempotency_key)
        .transpose()?;
    let mut participants = Vec::new();
    for (n, a) in array(&b, "agents", 50)?.iter().enumerate() {
        participants.push(parse_agent(a, &format!("agents[{n}]"), &mut warnings)?);
    }
    for (n, h) in array(&b, "humans", 20)?.iter().enumerate() {
        participants.push(parse_human(h, &format!("humans[{n}]"), &mut warnings)?);
    }
    let specs = parse_workflow(&b, &mut warnings)?;
    let workflow = if specs.is_empty() {
        None
    } else {
        Some(build_workflow(&participants, specs, &mut warnings)?)
    };
    let first = workflow.as_ref().and_then(|w| w.steps.first());

    let spec = b.required_object("intent")?;
    let spec = Value::Object(spec.clone());
    let i = Body::strict(&spec)?;
    note_unknown(&i, INTENT_FIELDS, "intent", &mut warnings);
    let human_task = i
        .object("human_task")?
        .map(|t| known_human_task(t, "intent.human_task", &mut warnings))
        .transpose()?;
    let intent_type = i.required_str("type")?;
    check_len("intent.type", intent_type, 3, 255)?;
    if let Some(e) = i.str("escalate_to")? {
        check_len("intent.escalate_to", e, 0, 383)?;
    }
    // The intent starts with its first step's owner; a timer or instant first step keeps it
    // with the bundle's first participant until a step with an owner comes.
    let to_agent = match first.map(|s| &s.kind) {
        Some(StepKind::Agent { address } | StepKind::Human { address }) => {
            crate::auth::bare(address).to_string()
        }
        _ => participants
            .first()
            .map(|p| p.address.clone())
            .ok_or_else(|| {
                ApiError::SchemaInvalid(
                    "the scenario names no receiver: add agents[], humans[] or a workflow step \
                     with assigned_to"
                        .into(),
                )
            })?,
    };
    let escalate_to = i
        .str("escalate_to")?
        .map(|e| resolve(&participants, e))
        .transpose()?;
    let intent = IntentRequest {
        intent_type: Some(intent_type.to_string()),
        correlation_id: None,
        from_agent: None,
        to_agent: Some(format!("agent://{to_agent}")),
        reply_to: None,
        payload: Some(i.map().get("payload").cloned().unwrap_or_else(|| json!({}))),
        deadline_at: i.str("deadline_at")?.map(str::to_string),
        remind_after_seconds: i.uint("remind_after_seconds", 1)?,
        remind_interval_seconds: i.uint("remind_interval_seconds", 1)?,
        max_reminders: i.uint("max_reminders", 1)?,
        escalate_to: escalate_to.map(|e| format!("agent://{e}")),
        max_delivery_attempts: i.uint("max_delivery_attempts", 1)?,
        human_task,
        deliver_at: None,
    };
    Ok(Plan {
        scenario_id: scenario_id.to_string(),
        participants,
        intent,
        workflow,
        idempotency_key,
        warnings,
    })
}

/// The plan's intent as the domain's `NewIntent`, under the contract's create rules.
fn new_intent(state: &AppState, caller: &Caller, plan: &Plan) -> Result<NewIntent, ApiError> {
    let mut request = plan.intent.clone();
    request.correlation_id = Some(Uuid::new_v4().to_string());
    // A binding the scenario registers overrides what is registered now.
    let to = request.to_agent.as_deref().map(crate::auth::bare);
    let from_plan = plan
        .participants
        .iter()
        .find(|p| Some(p.address.as_str()) == to)
        .and_then(|p| p.binding.as_ref())
        .and_then(|b| b.max_delivery_attempts);
    let default_max_delivery_attempts = match from_plan {
        Some(n) => n,
        None => super::intents::default_max_delivery_attempts(state, request.to_agent.as_deref())?,
    };
    let decided = Decided {
        id: intentd_lifecycle::new_intent_id(),
        from_agent: caller.principal(),
        default_max_delivery_attempts,
    };
    let mut intent = validate::new_intent(request, decided)?;
    intent.workflow = plan.workflow.clone();
    let size = intent.payload.to_string().len();
    if size > state.config.max_intent_body_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "the intent payload is {size} bytes; intents take at most {}",
            state.config.max_intent_body_bytes
        )));
    }
    Ok(intent)
}

/// Parses and checks a bundle completely (the URLs included), without writing anything.
fn check(state: &AppState, caller: &Caller, body: &Value) -> Result<(Plan, NewIntent), ApiError> {
    let plan = parse_bundle(body)?;
    let intent = new_intent(state, caller, &plan)?;
    for p in &plan.participants {
        if let Some(url) = p.binding.as_ref().and_then(BindingRequest::url) {
            checked_url(state, "agents[].url", url)?;
        }
    }
    Ok((plan, intent))
}

fn participant_view(p: &Participant, existed: bool) -> Value {
    json!({
        "role": p.role,
        "address": format!("agent://{}", p.address),
        "created": p.binding.is_some() && !existed,
    })
}

fn registered(state: &AppState, address: &str) -> Result<Option<AgentConfig>, ApiError> {
    Ok(state.cluster.reader().agent_config(address)?)
}

/// `POST /v1/scenarios/apply`. Agent keys may not (a scenario registers other agents).
#[utoipa::path(
    post,
    path = "/v1/scenarios/apply",
    tag = "scenarios",
    params(crate::openapi::IdempotencyKeyHeader),
    request_body = ScenarioBundle,
    responses((status = 200, description = "The agents made and the intent submitted", body = ScenarioApplyAnswer))
)]
async fn apply(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(header_key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_not_agent()?;
    let (plan, intent) = check(&state, &caller, &body)?;
    // Registering an agent that does not exist yet is how a scenario brings it up; changing
    // the binding of one that does is rebinding it, which is its own key's or an admin's
    // (applying the same scenario again changes nothing and stays allowed).
    for p in &plan.participants {
        let (Some(wanted), Some(existing)) = (&p.binding, registered(&state, &p.address)?) else {
            continue;
        };
        let wanted = wanted
            .clone()
            .into_config(AgentAddress::from_stored(&p.address), existing.created_at);
        let same = AgentConfig {
            address: existing.address.clone(),
            updated_at: existing.updated_at,
            ..wanted
        } == existing;
        if !same && !caller.may_act_as(&p.address) {
            return Err(ApiError::Forbidden(format!(
                "this key may not change the binding of the registered agent agent://{}",
                bare(&p.address)
            )));
        }
    }
    let mut agents = Vec::with_capacity(plan.participants.len());
    for p in &plan.participants {
        let existed = registered(&state, &p.address)?.is_some();
        if let Some(binding) = &p.binding {
            let config = binding
                .clone()
                .into_config(AgentAddress::from_stored(&p.address), now());
            write(&state, Command::RegisterAgent { config }).await?;
        }
        agents.push(participant_view(p, existed));
    }
    let at = now();
    let key = header_key.or_else(|| plan.idempotency_key.clone());
    let claim = claim(
        &state,
        format!("{}:scenario", caller.principal()),
        key,
        &body,
        at,
    );
    let written: Written =
        write_intent(&state, IntentCommand::Create { intent, at }, claim).await?;
    let i = &written.intent;
    tracing::info!(scenario_id = %plan.scenario_id, intent_id = %i.id, replayed = written.replayed, "scenario applied");
    let pending_with = i
        .pending_with
        .as_ref()
        .map_or_else(|| i.to_agent.clone(), |p| p.reference.clone());
    Ok(Json(json!({
        "ok": true,
        "intent_id": i.id,
        "scenario_id": plan.scenario_id,
        "status": i.status.as_str(),
        "pending_with": pending_with,
        "idempotent": written.replayed,
        "agents": agents,
        "deadline_at": i.deadline_at.as_ref().map(views::timestamp),
        "created_at": views::timestamp(&i.created_at),
        "workflow": i.workflow.as_ref().map(views::workflow),
        "warnings": plan.warnings,
    })))
}

/// `POST /v1/scenarios/validate`: the plan `apply` would carry out, or why it would refuse.
#[utoipa::path(
    post,
    path = "/v1/scenarios/validate",
    tag = "scenarios",
    request_body = ScenarioBundle,
    responses((status = 200, description = "Whether the bundle would apply", body = ScenarioValidateAnswer))
)]
async fn validate_bundle(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_not_agent()?;
    let (plan, intent) = match check(&state, &caller, &body) {
        Ok(checked) => checked,
        Err(
            e @ (ApiError::InvalidRequest(_)
            | ApiError::SchemaInvalid(_)
            | ApiError::PayloadTooLarge(_)),
        ) => {
            return Ok(Json(json!({
                "ok": true,
                "valid": false,
                "errors": [{ "code": e.code(), "message": e.to_string() }],
                "warnings": [],
            })))
        }
        Err(other) => return Err(other),
    };
    let mut agents = Vec::with_capacity(plan.participants.len());
    for p in &plan.participants {
        let existed = registered(&state, &p.address)?.is_some();
        let mut v = participant_view(p, existed);
        v["register"] = json!(p.binding.is_some());
        v["delivery_mode"] = json!(p.binding.as_ref().map(|b| b.binding.mode()));
        agents.push(v);
    }
    Ok(Json(json!({
        "ok": true,
        "valid": true,
        "errors": [],
        "warnings": plan.warnings,
        "scenario_id": plan.scenario_id,
        "plan": {
            "agents": agents,
            "intent": {
                "intent_type": intent.intent_type,
                "to_agent": intent.to_agent,
                "from_agent": intent.from_agent,
                "payload": intent.payload,
                "human_task": intent.human_task,
                "deadline_at": intent.deadline_at.as_ref().map(views::timestamp),
                "escalate_to": intent.escalate_to,
                "max_delivery_attempts": intent.max_delivery_attempts,
            },
            "workflow": intent.workflow.as_ref().map(views::workflow),
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use intentd_lifecycle::Binding;

    fn bundle() -> Value {
        json!({
            "scenario_id": "approval.nginx_rollout.v1",
            "agents": [
                {"role": "deployer", "address": "agent://acme/prod/deployer",
                 "delivery_mode": "poll"},
                {"role": "auditor", "address": "acme/prod/auditor"},
            ],
            "humans": [{"role": "lead", "contact": "acme/people/lead"}],
            "workflow": {"steps": [
                {"step_id": "approve", "assigned_to": "lead", "requires_approval": true,
                 "human_task": {"title": "Roll out nginx?", "allowed_outcomes": ["approved", "rejected"]},
                 "escalate_to": "auditor", "remind_after_seconds": 60},
                {"step_id": "deploy", "assigned_to": "deployer"},
            ]},
            "intent": {"type": "ops.nginx_rollout.v1", "payload": {"version": "1.27"}},
        })
    }

    #[test]
    fn a_bundle_becomes_a_plan() {
        let plan = parse_bundle(&bundle()).unwrap();
        assert_eq!(plan.scenario_id, "approval.nginx_rollout.v1");
        let modes: Vec<Option<&str>> = plan
            .participants
            .iter()
            .map(|p| p.binding.as_ref().map(|b| b.binding.mode()))
            .collect();
        assert_eq!(modes, [Some("poll"), None, Some("inbox")]);
        assert_eq!(plan.participants[0].address, "acme/prod/deployer");
        assert_eq!(
            plan.intent.to_agent.as_deref(),
            Some("agent://acme/people/lead")
        );
        // The steps become the workflow the intent runs: a person's approval, then the
        // deployer, in list order.
        let wf = plan.workflow.as_ref().expect("a workflow");
        let approve = &wf.steps[0];
        assert_eq!(
            approve.kind,
            StepKind::Human {
                address: "agent://acme/people/lead".into()
            }
        );
        assert_eq!(approve.on_success.as_deref(), Some("deploy"));
        assert_eq!(
            approve.escalate_to.as_deref(),
            Some("agent://acme/prod/auditor")
        );
        assert_eq!(approve.remind_after_seconds, Some(60));
        assert_eq!(
            approve.human_task.as_ref().unwrap()["title"],
            "Roll out nginx?"
        );
        assert_eq!(
            wf.steps[1].kind,
            StepKind::Agent {
                address: "agent://acme/prod/deployer".into()
            }
        );
        assert_eq!(wf.steps[1].on_success, None);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert_eq!(plan.intent.payload, Some(json!({"version": "1.27"})));
    }

    fn with_steps(steps: Value) -> Value {
        json!({
            "scenario_id": "wf.test.v1",
            "agents": [{"role": "worker", "address": "acme/prod/worker", "delivery_mode": "stream"}],
            "humans": [{"role": "lead", "contact": "acme/people/lead"}],
            "workflow": {"steps": steps},
            "intent": {"type": "ops.wf.v1"},
        })
    }

    #[test]
    fn broken_workflow_graphs_are_refused_with_a_clear_message() {
        let cases = [
            (
                json!([{"step_id": "a", "assigned_to": "worker"}, {"step_id": "a", "assigned_to": "worker"}]),
                "used twice",
            ),
            (
                json!([{"step_id": "a", "assigned_to": "worker", "on_success": "nope"}]),
                "not a step of this workflow",
            ),
            (
                json!([{"step_id": "a", "assigned_to": "worker", "on_failure": "c"},
                    {"step_id": "b", "assigned_to": "worker"},
                    {"step_id": "c", "assigned_to": "worker"}]),
                "cannot be reached",
            ),
            (
                json!([{"step_id": "a", "assigned_to": "worker", "on_success": "b"},
                    {"step_id": "b", "assigned_to": "lead", "on_failure": "a"}]),
                "cycle: a -> b -> a",
            ),
            (
                json!([{"step_id": "a", "runtime_type": "delay", "runtime_config": {"seconds": "x"}}]),
                "runtime_config.seconds",
            ),
            (
                json!([{"step_id": "a", "requires_approval": true, "human_task": {"title": "t", "task_type": "dance"}}]),
                "task_type",
            ),
        ];
        for (steps, message) in cases {
            let err = parse_bundle(&with_steps(steps.clone())).unwrap_err();
            assert_eq!(err.code(), "schema_invalid", "{steps}");
            assert!(err.to_string().contains(message), "{steps}: {err}");
        }
    }

    #[test]
    fn each_step_gets_its_kind() {
        let plan = parse_bundle(&with_steps(json!([
            {"step_id": "work", "assigned_to": "worker", "step_deadline_seconds": 30,
             "retry": {"max_retries": 2}, "on_success": "ask", "on_failure": "tell"},
            {"step_id": "ask", "runtime_type": "human_approval", "on_success": "wait"},
            {"step_id": "wait", "runtime_type": "timeout", "runtime_config": {"seconds": 5}},
            {"step_id": "tell", "runtime_type": "notification", "runtime_config": {"message": "late"}},
        ])))
        .unwrap();
        let wf = plan.workflow.unwrap();
        let kinds: Vec<&StepKind> = wf.steps.iter().map(|s| &s.kind).collect();
        assert_eq!(
            kinds,
            [
                &StepKind::Agent {
                    address: "agent://acme/prod/worker".into()
                },
                &StepKind::Human {
                    address: "agent://acme/people/lead".into()
                },
                &StepKind::Timeout { seconds: 5 },
                &StepKind::Notification {
                    message: Some(json!("late"))
                },
            ]
        );
        assert_eq!(
            (wf.steps[0].max_retries, wf.steps[0].step_deadline_seconds),
            (2, Some(30))
        );
        // A human step without a task gets one titled by its id.
        assert_eq!(wf.steps[1].human_task, Some(json!({"title": "ask"})));
        // Edges named: an omitted one ends the workflow.
        assert_eq!(wf.steps[2].on_success, None);
        assert_eq!(
            plan.intent.to_agent.as_deref(),
            Some("agent://acme/prod/worker")
        );
    }

    #[test]
    fn without_a_workflow_the_first_agent_receives() {
        let plan = parse_bundle(&json!({
            "scenario_id": "simple",
            "agents": [{"role": "a", "address": "acme/prod/a", "create_if_missing": true}],
            "intent": {"type": "ops.ping.v1"},
        }))
        .unwrap();
        assert_eq!(plan.intent.to_agent.as_deref(), Some("agent://acme/prod/a"));
        assert_eq!(plan.intent.payload, Some(json!({})));
        assert_eq!(
            plan.participants[0].binding.as_ref().unwrap().binding,
            Binding::Stream
        );
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn bad_bundles() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"intent": {"type": "a.b.v1"}, "agents": [{"role": "r", "address": "a/b/c"}]}),
                "schema_invalid",
            ),
            (
                json!({"scenario_id": "Bad-Id", "intent": {"type": "a.b.v1"}}),
                "schema_invalid",
            ),
            (json!({"scenario_id": "ok_id"}), "schema_invalid"),
            (
                json!({"scenario_id": "ok_id", "intent": {"type": "a.b.v1"}}),
                "schema_invalid",
            ),
            (
                json!({"scenario_id": "ok_id", "intent": {"type": "a.b.v1"},
                    "agents": [{"role": "r", "address": "a/b/c", "delivery_mode": "fax"}]}),
                "schema_invalid",
            ),
            (
                json!({"scenario_id": "ok_id", "intent": {"type": "a.b.v1"},
                    "agents": [{"role": "r", "address": "a/b/c"}],
                    "workflow": {"macro_id": "m1"}}),
                "schema_invalid",
            ),
            (
                json!({"scenario_id": "ok.", "intent": {"type": "a.b.v1"},
                    "agents": [{"role": "r", "address": "a/b/c"}]}),
                "schema_invalid",
            ),
            (
                json!({"scenario_id": "ok id", "intent": {"type": "a.b.v1"},
                    "agents": [{"role": "r", "address": "a/b/c"}]}),
                "schema_invalid",
            ),
            (
                json!({"scenario_id": "ok_id", "title": 7, "intent": {"type": "a.b.v1"},
                    "agents": [{"role": "r", "address": "a/b/c"}]}),
                "invalid_request",
            ),
            (
                json!({"scenario_id": "ok_id", "title": "t".repeat(256),
                    "intent": {"type": "a.b.v1"}, "agents": [{"role": "r", "address": "a/b/c"}]}),
                "schema_invalid",
            ),
            (
                json!({"scenario_id": "ok_id", "intent": {"type": "a.b.v1"}, "agents": {}}),
                "invalid_request",
            ),
            (
                json!({"scenario_id": "ok_id", "intent": "x"}),
                "invalid_request",
            ),
        ];
        for (body, code) in cases {
            assert_eq!(parse_bundle(&body).unwrap_err().code(), code, "{body}");
        }
    }

    /// The replacing-webhooks seed's bundle, as published: `title`, a hyphenated id, a
    /// streaming agent and a one-step workflow.
    const SEED: &str = include_str!("../../../../tests/fixtures/replacing-webhooks.scenario.json");

    #[test]
    fn the_published_seed_bundle_applies_as_it_is() {
        let plan = parse_bundle(&serde_json::from_str(SEED).unwrap()).unwrap();
        assert_eq!(plan.scenario_id, "replacing-webhooks.demo.v1");
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let agent = &plan.participants[0];
        assert_eq!(
            (agent.role.as_str(), agent.address.as_str()),
            ("payment_service", "payment-service-demo")
        );
        let binding = agent.binding.as_ref().expect("registered");
        assert_eq!(binding.binding, Binding::Stream);
        assert_eq!(
            binding.display_name.as_deref(),
            Some("Payment Service (demo)")
        );
        assert_eq!(
            plan.intent.to_agent.as_deref(),
            Some("agent://payment-service-demo")
        );
        assert_eq!(
            plan.intent.intent_type.as_deref(),
            Some("intent.payment.process.v1")
        );
        assert_eq!(plan.intent.max_delivery_attempts, Some(3));
        assert_eq!(
            plan.intent.payload.as_ref().unwrap()["order_id"],
            "ORD-1207"
        );
    }

    #[test]
    fn unknown_keys_anywhere_are_ignored_and_named() {
        let mut body = bundle();
        body["scenario_id"] = json!("approval-nginx.roll-out.v1");
        body["colour"] = json!("blue");
        body["title"] = json!("Roll out nginx");
        body["agents"][1]["note"] = json!({"any": "thing"});
        body["humans"][0]["email"] = json!("lead@example.com");
        body["workflow"]["version"] = json!(2);
        body["workflow"]["steps"][0]["human_task"]["priority"] = json!("high");
        body["workflow"]["steps"][1]["timeout"] = json!(30);
        body["intent"]["priority"] = json!(1);
        let plan = parse_bundle(&body).unwrap();
        assert_eq!(plan.scenario_id, "approval-nginx.roll-out.v1");
        let unknown: Vec<&str> = plan
            .warnings
            .iter()
            .filter_map(|w| w.strip_prefix("unknown field ignored: "))
            .collect();
        assert_eq!(
            unknown,
            [
                "colour",
                "agents[1].note",
                "humans[0].email",
                "workflow.version",
                "workflow.steps[0].human_task.priority",
                "workflow.steps[1].timeout",
                "intent.priority",
            ]
        );
        // Nothing else is warned about, and nothing unknown reaches the workflow.
        assert_eq!(plan.warnings.len(), unknown.len(), "{:?}", plan.warnings);
        let wf = plan.workflow.as_ref().unwrap();
        let task = wf.steps[0]
            .human_task
            .as_ref()
            .unwrap()
            .as_object()
            .unwrap();
        assert!(!task.contains_key("priority"), "{task:?}");
        assert_eq!(task["title"], "Roll out nginx?");
        // The plan is the one the bundle without the unknown keys makes.
        let clean = parse_bundle(&bundle()).unwrap();
        assert_eq!(plan.participants, clean.participants);
        assert_eq!(plan.intent, clean.intent);
        assert_eq!(plan.workflow, clean.workflow);
    }
}
