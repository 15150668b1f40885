//! The contract's rules for what a client may ask, whatever wire format carried the request.
//!
//! Every edge (HTTP JSON, gRPC protobuf) first decodes its input into plain typed values and
//! then asks this module whether they obey the rules, so a request refused on one edge is
//! refused on the other with the same message. The distinction the HTTP contract draws
//! between a value of the wrong kind (400) and a well-typed value that breaks a rule (422)
//! survives here as [`ValidationError::Malformed`] and [`ValidationError::Rule`]; gRPC
//! answers both with `INVALID_ARGUMENT`.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{AddressError, AgentAddress, NewIntent, Resolution, Timestamp, WaitingReason};

/// Why a request does not satisfy the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A value of the wrong kind: a string where an object belongs, text that is not JSON.
    #[error("{0}")]
    Malformed(String),
    /// A well-typed value against a rule: a pattern, an enum, a length, a required field.
    #[error("{0}")]
    Rule(String),
}

/// A malformed address breaks a rule of the contract (422), like any other pattern.
impl From<AddressError> for ValidationError {
    fn from(error: AddressError) -> Self {
        ValidationError::Rule(error.to_string())
    }
}

/// JSON we do not accept is malformed input (400), like text that is not JSON at all.
impl From<crate::json::JsonError> for ValidationError {
    fn from(error: crate::json::JsonError) -> Self {
        ValidationError::Malformed(error.to_string())
    }
}

fn rule(message: impl Into<String>) -> ValidationError {
    ValidationError::Rule(message.into())
}

/// Agent addresses (`to_agent`, `from_agent`, `reply_to`) are 3..=383 characters.
pub const ADDRESS_LEN: (usize, usize) = (3, 383);
/// An actor named in a change request is 3..=255 characters.
pub const ACTOR_LEN: (usize, usize) = (3, 255);
/// Free-text reasons are at most 2000 characters.
pub const MAX_REASON_LEN: usize = 2000;
/// Idempotency keys are opaque but stored in the replicated state, so their size is bounded.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// JSON Schema lengths count code points, not bytes; both edges follow the schema.
pub fn check_len(name: &str, s: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(rule(format!(
            "{name} must be {min} to {max} characters long (got {n})"
        )));
    }
    Ok(())
}

/// `^[a-z0-9_]+(?:\.[a-z0-9_]+)+\.v[0-9]+$`: at least three dot-separated segments of
/// `[a-z0-9_]`, the last of which is `v` and a version number.
pub fn is_intent_type(s: &str) -> bool {
    let segments: Vec<&str> = s.split('.').collect();
    let Some((version, names)) = segments.split_last() else {
        return false;
    };
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let version_ok = version
        .strip_prefix('v')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    names.len() >= 2 && version_ok && names.iter().all(|w| word(w))
}

/// A UUID in the hyphenated form JSON Schema's `format: uuid` means; `uuid` itself would
/// also accept the simple, braced and URN forms, which other clients would then echo back.
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::parse_str(s).ok()
}

/// An id field (`intent_id`, `correlation_id`, ...); a bad one is a rule violation.
pub fn uuid_field(name: &str, raw: &str) -> Result<Uuid, ValidationError> {
    parse_uuid(raw).ok_or_else(|| rule(format!("{name} must be a UUID")))
}

/// An RFC 3339 date-time with an offset, normalized to UTC.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// An idempotency key as presented, trimmed. Refused as malformed (not a rule break): the
/// HTTP contract treats a bad header like a bad parameter.
pub fn idempotency_key(raw: &str) -> Result<String, ValidationError> {
    let key = raw.trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ValidationError::Malformed(format!(
            "the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
        )));
    }
    Ok(key.to_string())
}

/// An actor named by a change request.
pub fn actor(a: &str) -> Result<(), ValidationError> {
    check_len("actor", a, ACTOR_LEN.0, ACTOR_LEN.1)
}

/// The address a request names (a path, an `owner_agent`), under the one address rule.
pub fn listen_address(raw: &str) -> Result<AgentAddress, ValidationError> {
    Ok(AgentAddress::parse("address", raw)?)
}

/// A free-text reason.
pub fn reason(r: &str) -> Result<(), ValidationError> {
    check_len("reason", r, 0, MAX_REASON_LEN)
}

/// A value the contract requires to be a JSON object (a payload, a result, an error).
pub fn object(name: &str, value: Value) -> Result<Map<String, Value>, ValidationError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(rule(format!("{name} must be an object"))),
    }
}

/// A request to create an intent as the client stated it: decoded from its wire format but
/// not yet checked. The fields are those of `api.intents.create.request.v1.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntentRequest {
    pub intent_type: Option<String>,
    pub correlation_id: Option<String>,
    pub from_agent: Option<String>,
    pub to_agent: Option<String>,
    pub reply_to: Option<String>,
    pub payload: Option<Value>,
    pub deadline_at: Option<String>,
    pub remind_after_seconds: Option<u64>,
    pub remind_interval_seconds: Option<u64>,
    pub max_reminders: Option<u64>,
    pub escalate_to: Option<String>,
    pub max_delivery_attempts: Option<u64>,
    /// Already known to be a JSON object; its shape is checked by [`human_task`].
    pub human_task: Option<Map<String, Value>>,
    /// Our extension: delayed delivery, an RFC 3339 date-time.
    pub deliver_at: Option<String>,
}

impl IntentRequest {
    /// The request as the JSON body an HTTP client would have sent for it, with only the
    /// fields that are set. Hashing this makes one idempotency key mean the same request on
    /// both edges: an HTTP create and a gRPC create with equal fields are the same request.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put("intent_type", self.intent_type.clone().map(Value::from));
        put(
            "correlation_id",
            self.correlation_id.clone().map(Value::from),
        );
        put("from_agent", self.from_agent.clone().map(Value::from));
        put("to_agent", self.to_agent.clone().map(Value::from));
        put("reply_to", self.reply_to.clone().map(Value::from));
        put("payload", self.payload.clone());
        put("deadline_at", self.deadline_at.clone().map(Value::from));
        put(
            "remind_after_seconds",
            self.remind_after_seconds.map(Value::from),
        );
        put(
            "remind_interval_seconds",
            self.remind_interval_seconds.map(Value::from),
        );
        put("max_reminders", self.max_reminders.map(Value::from));
        put("escalate_to", self.escalate_to.clone().map(Value::from));
        put(
            "max_delivery_attempts",
            self.max_delivery_attempts.map(Value::from),
        );
        put("human_task", self.human_task.clone().map(Value::Object));
        put("deliver_at", self.deliver_at.clone().map(Value::from));
        Value::Object(m)
    }
}

/// What the server decides for a new intent; never taken from the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub id: Uuid,
    /// The sender, after the caller's key had its say (see `ApiKey::acting_as`).
    pub from_agent: String,
    /// Used when the request sets no `max_delivery_attempts`.
    pub default_max_delivery_attempts: u32,
}

/// An optional address field in its canonical `agent://` form.
fn address(name: &str, a: Option<&str>) -> Result<Option<String>, ValidationError> {
    Ok(a.map(|a| AgentAddress::parse(name, a))
        .transpose()?
        .map(|a| a.uri()))
}

fn at_least(name: &str, v: Option<u64>, minimum: u64) -> Result<Option<u64>, ValidationError> {
    match v {
        Some(v) if v < minimum => Err(rule(format!("{name} must be an integer >= {minimum}"))),
        other => Ok(other),
    }
}

fn at_least_u32(name: &str, v: Option<u64>, minimum: u64) -> Result<Option<u32>, ValidationError> {
    at_least(name, v, minimum)?
        .map(|v| u32::try_from(v).map_err(|_| rule(format!("{name} is too large"))))
        .transpose()
}

/// Checks a create request against the contract and turns it into the domain's
/// [`NewIntent`].
pub fn new_intent(req: IntentRequest, decided: Decided) -> Result<NewIntent, ValidationError> {
    let intent_type = req
        .intent_type
        .ok_or_else(|| rule("intent_type is required"))?;
    if !is_intent_type(&intent_type) {
        return Err(rule(format!(
            "intent_type {intent_type:?} does not match ^[a-z0-9_]+(?:\\.[a-z0-9_]+)+\\.v[0-9]+$"
        )));
    }
    let correlation_id = req
        .correlation_id
        .ok_or_else(|| rule("correlation_id is required"))?;
    let correlation_id = uuid_field("correlation_id", &correlation_id)?;
    let to_agent = req.to_agent.ok_or_else(|| rule("to_agent is required"))?;
    let to_agent = AgentAddress::parse("to_agent", &to_agent)?.uri();
    // A named sender is checked even when the key's role overrides it, so a malformed one is
    // never silently accepted.
    address("from_agent", req.from_agent.as_deref())?;
    let from_agent = AgentAddress::parse("from_agent", &decided.from_agent)?.uri();
    let reply_to = address("reply_to", req.reply_to.as_deref())?;
    let payload = req.payload.ok_or_else(|| rule("payload is required"))?;
    let payload = Value::Object(object("payload", payload)?);
    let deadline_at = req
        .deadline_at
        .map(|s| parse_rfc3339(&s).ok_or_else(|| rule("deadline_at must be an RFC 3339 date-time")))
        .transpose()?;
    let deliver_at = req
        .deliver_at
        .map(|s| parse_rfc3339(&s).ok_or_else(|| rule("deliver_at must be an RFC 3339 date-time")))
        .transpose()?;
    if let Some(e) = &req.escalate_to {
        check_len("escalate_to", e, 0, ADDRESS_LEN.1)?;
    }
    if let Some(task) = &req.human_task {
        human_task(task)?;
    }
    let max_delivery_attempts =
        at_least_u32("max_delivery_attempts", req.max_delivery_attempts, 1)?
            .unwrap_or(decided.default_max_delivery_attempts);
    Ok(NewIntent {
        id: decided.id,
        intent_type,
        correlation_id,
        from_agent,
        to_agent,
        reply_to,
        payload,
        max_delivery_attempts,
        deadline_at,
        remind_after_seconds: at_least("remind_after_seconds", req.remind_after_seconds, 1)?,
        remind_interval_seconds: at_least(
            "remind_interval_seconds",
            req.remind_interval_seconds,
            1,
        )?,
        max_reminders: at_least_u32("max_reminders", req.max_reminders, 1)?,
        escalate_to: req.escalate_to,
        human_task: req.human_task.map(Value::Object),
        deliver_at,
        workflow: None,
    })
}

/// The task types `HumanTaskSpec.task_type` allows.
pub const HUMAN_TASK_TYPES: &[&str] = &[
    "approval",
    "review",
    "clarification",
    "provide_data",
    "attach_file",
    "manual_action",
    "confirmation",
    "validate_real_world",
    "validate_output",
    "assignment",
    "delegation",
    "reroute",
    "override",
    "escalate",
];

/// The fields of `HumanTaskSpec`.
pub const HUMAN_TASK_FIELDS: &[&str] = &[
    "title",
    "description",
    "task_type",
    "allowed_outcomes",
    "required_comment",
    "assignees",
    "evidence_required",
    "form_schema",
];

/// `HumanTaskSpec` of the create schema. The task is a JSON object in the domain (it travels
/// as JSON on both edges), so its fields are checked here, kind and rule alike.
pub fn human_task(task: &Map<String, Value>) -> Result<(), ValidationError> {
    let mut unknown: Vec<&str> = task
        .keys()
        .map(String::as_str)
        .filter(|k| !HUMAN_TASK_FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(rule(format!(
            "unknown field(s) in human_task: {}",
            unknown.join(", ")
        )));
    }
    let text = |name: &str| -> Result<Option<&str>, ValidationError> {
        match task.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ValidationError::Malformed(format!(
                "human_task.{name} must be a string"
            ))),
        }
    };
    let title = text("title")?.ok_or_else(|| rule("human_task.title is required"))?;
    check_len("human_task.title", title, 0, 255)?;
    if let Some(d) = text("description")? {
        check_len("human_task.description", d, 0, 2000)?;
    }
    if let Some(t) = text("task_type")? {
        if !HUMAN_TASK_TYPES.contains(&t) {
            return Err(rule(format!(
                "human_task.task_type {t:?} is not one of {}",
                HUMAN_TASK_TYPES.join(", ")
            )));
        }
    }
    string_list(task, "allowed_outcomes", (1, 64), (1, 20))?;
    string_list(task, "assignees", (1, ADDRESS_LEN.1), (1, 20))?;
    for flag in ["required_comment", "evidence_required"] {
        if !matches!(task.get(flag), None | Some(Value::Bool(_))) {
            return Err(ValidationError::Malformed(format!(
                "human_task.{flag} must be a boolean"
            )));
        }
    }
    if !matches!(task.get("form_schema"), None | Some(Value::Object(_))) {
        return Err(ValidationError::Malformed(
            "human_task.form_schema must be an object".into(),
        ));
    }
    Ok(())
}

/// An optional array of strings, each `min..=max` characters, with `min_items..=max_items`.
fn string_list(
    task: &Map<String, Value>,
    name: &str,
    (min, max): (usize, usize),
    (min_items, max_items): (usize, usize),
) -> Result<(), ValidationError> {
    let items = match task.get(name) {
        None => return Ok(()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ValidationError::Malformed(format!(
                "human_task.{name} must be an array of strings"
            )))
        }
    };
    if items.len() < min_items || items.len() > max_items {
        return Err(rule(format!(
            "human_task.{name} must have {min_items} to {max_items} items"
        )));
    }
    for item in items {
        match item {
            Value::String(s) => check_len(&format!("human_task.{name}"), s, min, max)?,
            _ => {
                return Err(ValidationError::Malformed(format!(
                    "human_task.{name} must be an array of strings"
                )))
            }
        }
    }
    Ok(())
}

/// `api.intents.resolve.request.v1.json`'s if/then rules: the status names one of the three
/// ways to end an intent and brings the field that way needs.
pub fn resolution(
    status: &str,
    result: Option<Map<String, Value>>,
    error: Option<Map<String, Value>>,
    reason_text: Option<String>,
) -> Result<Resolution, ValidationError> {
    if let Some(r) = &reason_text {
        reason(r)?;
    }
    let needs = |field: &str| rule(format!("{field} is required when status is {status}"));
    match status {
        "COMPLETED" => Ok(Resolution::Completed {
            result: Value::Object(result.ok_or_else(|| needs("result"))?),
        }),
        "FAILED" => Ok(Resolution::Failed {
            error: Value::Object(error.ok_or_else(|| needs("error"))?),
        }),
        "CANCELED" => Ok(Resolution::Canceled {
            reason: reason_text.ok_or_else(|| needs("reason"))?,
        }),
        other => Err(rule(format!(
            "status {other:?} is not one of COMPLETED, FAILED, CANCELED"
        ))),
    }
}

/// The reason a `wait` resume gives; absent means the intent waits on another agent.
pub fn waiting_reason(raw: Option<&str>) -> Result<WaitingReason, ValidationError> {
    match raw {
        None => Ok(WaitingReason::WaitingForAgent),
        Some(r) => WaitingReason::parse(r).ok_or_else(|| {
            rule(format!(
                "waiting_reason {r:?} is not one of WAITING_FOR_HUMAN, WAITING_FOR_TOOL, \
                 WAITING_FOR_AGENT, WAITING_FOR_TIME"
            ))
        }),
    }
}

/// The receiver's verbs of a resume (`action`); absent means `complete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeVerb {
    Complete,
    Fail,
    Progress,
    Wait,
}

pub fn resume_verb(raw: Option<&str>) -> Result<ResumeVerb, ValidationError> {
    match raw {
        None | Some("complete") => Ok(ResumeVerb::Complete),
        Some("fail") => Ok(ResumeVerb::Fail),
        Some("progress") => Ok(ResumeVerb::Progress),
        Some("wait") => Ok(ResumeVerb::Wait),
        Some(other) => Err(rule(format!(
            "action {other:?} is not one of complete, fail, progress, wait"
        ))),
    }
}

/// The control form of a resume must approve: refusing a step is a resolve, not a resume.
pub fn approve_current_step(approve: bool) -> Result<(), ValidationError> {
    if approve {
        Ok(())
    } else {
        Err(rule(
            "approve_current_step=false is not an action; resolve the intent to reject it",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn intent_type_pattern() {
        for ok in ["intent.generic.v1", "a.b.v10", "x_1.y_2.z.v0", "acme.v1.v2"] {
            assert!(is_intent_type(ok), "{ok}");
        }
        for bad in [
            "",
            "a.v1",
            "intent.generic",
            "Intent.generic.v1",
            "a..b.v1",
            "a.b.v",
            "a.b.V1",
            "a.b.v1.",
            ".a.b.v1",
            "a.b-c.v1",
            "a.b.v1x",
        ] {
            assert!(!is_intent_type(bad), "{bad}");
        }
    }

    #[test]
    fn uuid_must_be_hyphenated() {
        assert!(parse_uuid("6f1c2a7e-1b8f-4a1c-9a8e-3f4f7e2d9c10").is_some());
        assert!(parse_uuid("6f1c2a7e1b8f4a1c9a8e3f4f7e2d9c10").is_none());
        assert!(parse_uuid("not-a-uuid").is_none());
        assert!(matches!(
            uuid_field("intent_id", "nope"),
            Err(ValidationError::Rule(_))
        ));
    }

    #[test]
    fn rfc3339_is_normalized_to_utc() {
        let t = parse_rfc3339("2030-01-01T02:00:00+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2030-01-01T00:00:00+00:00");
        assert!(parse_rfc3339("2030-01-01").is_none());
        assert!(parse_rfc3339("tomorrow").is_none());
    }

    #[test]
    fn lengths_count_characters() {
        assert!(check_len("x", "äöü", 3, 3).is_ok());
        assert!(check_len("x", "ab", 3, 10).is_err());
    }

    #[test]
    fn listen_addresses_lose_scheme_and_slashes() {
        assert_eq!(
            listen_address("agent://acme/prod/billing/").unwrap().path(),
            "acme/prod/billing"
        );
        assert!(listen_address("agent:///").is_err());
    }

    /// The addresses of a create follow the same rule as keys and bindings: before it, a
    /// `to_agent` of `agent://`, one with NUL or a newline, and `http://evil/x` were accepted.
    #[test]
    fn create_addresses_follow_the_one_address_rule() {
        for bad in [
            "agent://",
            "agent://acme/\0x",
            "agent://acme/a\nINFO forged",
            "http://evil/x",
        ] {
            let mut req = request();
            req.to_agent = Some(bad.into());
            assert!(
                matches!(new_intent(req, decided()), Err(ValidationError::Rule(_))),
                "{bad:?} was accepted"
            );
        }
        let mut req = request();
        req.to_agent = Some("acme/prod/billing/".into());
        req.reply_to = Some("agent://acme/prod/replies".into());
        let new = new_intent(req, decided()).unwrap();
        assert_eq!(new.to_agent, "agent://acme/prod/billing");
        assert_eq!(new.reply_to.as_deref(), Some("agent://acme/prod/replies"));
    }

    #[test]
    fn idempotency_keys_are_trimmed_and_bounded() {
        assert_eq!(idempotency_key(" k ").unwrap(), "k");
        assert!(matches!(
            idempotency_key(" "),
            Err(ValidationError::Malformed(_))
        ));
        assert!(idempotency_key(&"k".repeat(256)).is_err());
        assert!(idempotency_key(&"k".repeat(255)).is_ok());
    }

    fn request() -> IntentRequest {
        IntentRequest {
            intent_type: Some("intent.generic.v1".into()),
            correlation_id: Some("6f1c2a7e-1b8f-4a1c-9a8e-3f4f7e2d9c10".into()),
            to_agent: Some("agent://acme/prod/billing".into()),
            payload: Some(json!({"amount": 3})),
            ..IntentRequest::default()
        }
    }

    fn decided() -> Decided {
        Decided {
            id: Uuid::from_u128(7),
            from_agent: "agent://intentd/keys/ci".into(),
            default_max_delivery_attempts: 5,
        }
    }

    #[test]
    fn a_minimal_request_becomes_a_new_intent() {
        let new = new_intent(request(), decided()).unwrap();
        assert_eq!(new.id, Uuid::from_u128(7));
        assert_eq!(new.intent_type, "intent.generic.v1");
        assert_eq!(new.max_delivery_attempts, 5);
        assert_eq!(new.from_agent, "agent://intentd/keys/ci");
        assert_eq!(new.payload, json!({"amount": 3}));
    }

    #[test]
    fn every_rule_of_a_create_is_a_rule_error() {
        type Mutation = Box<dyn Fn(&mut IntentRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "pattern",
                Box::new(|r| r.intent_type = Some("Generic".into())),
            ),
            ("no type", Box::new(|r| r.intent_type = None)),
            ("uuid", Box::new(|r| r.correlation_id = Some("123".into()))),
            ("no to", Box::new(|r| r.to_agent = None)),
            ("short to", Box::new(|r| r.to_agent = Some("ab".into()))),
            ("long to", Box::new(|r| r.to_agent = Some("a".repeat(384)))),
            ("short reply", Box::new(|r| r.reply_to = Some("ab".into()))),
            ("no payload", Box::new(|r| r.payload = None)),
            ("list payload", Box::new(|r| r.payload = Some(json!([1])))),
            (
                "deadline",
                Box::new(|r| r.deadline_at = Some("soon".into())),
            ),
            (
                "deliver_at",
                Box::new(|r| r.deliver_at = Some("2030-01-01".into())),
            ),
            ("attempts", Box::new(|r| r.max_delivery_attempts = Some(0))),
            (
                "huge attempts",
                Box::new(|r| r.max_delivery_attempts = Some(5_000_000_000)),
            ),
            ("remind", Box::new(|r| r.remind_after_seconds = Some(0))),
            (
                "task title",
                Box::new(|r| r.human_task = json!({"description": "x"}).as_object().cloned()),
            ),
            (
                "task type",
                Box::new(|r| {
                    r.human_task = json!({"title": "t", "task_type": "vibes"})
                        .as_object()
                        .cloned()
                }),
            ),
            (
                "task field",
                Box::new(|r| r.human_task = json!({"title": "t", "x": 1}).as_object().cloned()),
            ),
        ];
        for (what, mutate) in cases {
            let mut req = request();
            mutate(&mut req);
            assert!(
                matches!(new_intent(req, decided()), Err(ValidationError::Rule(_))),
                "{what}"
            );
        }
    }

    #[test]
    fn human_task_kinds_are_malformed_and_lists_are_bounded() {
        let task = |v: Value| v.as_object().cloned().unwrap();
        assert!(
            human_task(&task(json!({"title": "Approve", "task_type": "approval",
            "allowed_outcomes": ["yes", "no"], "required_comment": true})))
            .is_ok()
        );
        assert!(matches!(
            human_task(&task(json!({"title": 1}))),
            Err(ValidationError::Malformed(_))
        ));
        assert!(matches!(
            human_task(&task(json!({"title": "t", "allowed_outcomes": "yes"}))),
            Err(ValidationError::Malformed(_))
        ));
        assert!(matches!(
            human_task(&task(json!({"title": "t", "allowed_outcomes": []}))),
            Err(ValidationError::Rule(_))
        ));
        assert!(matches!(
            human_task(&task(json!({"title": "t", "required_comment": "yes"}))),
            Err(ValidationError::Malformed(_))
        ));
    }

    #[test]
    fn deliver_at_is_optional_and_normalized_to_utc() {
        assert_eq!(new_intent(request(), decided()).unwrap().deliver_at, None);
        let mut req = request();
        req.deliver_at = Some("2030-01-01T02:00:00+02:00".into());
        assert_eq!(req.to_json()["deliver_at"], "2030-01-01T02:00:00+02:00");
        let new = new_intent(req, decided()).unwrap();
        assert_eq!(new.deliver_at, parse_rfc3339("2030-01-01T00:00:00Z"));
    }

    #[test]
    fn to_json_has_only_the_fields_set() {
        let mut req = request();
        req.max_delivery_attempts = Some(2);
        assert_eq!(
            req.to_json(),
            json!({
                "intent_type": "intent.generic.v1",
                "correlation_id": "6f1c2a7e-1b8f-4a1c-9a8e-3f4f7e2d9c10",
                "to_agent": "agent://acme/prod/billing",
                "payload": {"amount": 3},
                "max_delivery_attempts": 2,
            })
        );
    }

    #[test]
    fn resolutions_need_the_field_of_their_status() {
        let obj = |v: Value| v.as_object().cloned();
        assert_eq!(
            resolution("COMPLETED", obj(json!({"a": 1})), None, None).unwrap(),
            Resolution::Completed {
                result: json!({"a": 1})
            }
        );
        assert_eq!(
            resolution("CANCELED", None, None, Some("dup".into())).unwrap(),
            Resolution::Canceled {
                reason: "dup".into()
            }
        );
        for (status, result, error, reason) in [
            ("COMPLETED", None, None, None),
            ("FAILED", obj(json!({})), None, None),
            ("CANCELED", None, None, None),
            ("DONE", obj(json!({})), None, None),
            ("CANCELED", None, None, Some("x".repeat(2001))),
        ] {
            assert!(
                matches!(
                    resolution(status, result, error, reason),
                    Err(ValidationError::Rule(_))
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn resume_words() {
        assert_eq!(resume_verb(None).unwrap(), ResumeVerb::Complete);
        assert_eq!(resume_verb(Some("wait")).unwrap(), ResumeVerb::Wait);
        assert!(resume_verb(Some("explode")).is_err());
        assert_eq!(
            waiting_reason(None).unwrap(),
            WaitingReason::WaitingForAgent
        );
        assert_eq!(
            waiting_reason(Some("WAITING_FOR_HUMAN")).unwrap(),
            WaitingReason::WaitingForHuman
        );
        assert!(waiting_reason(Some("BORED")).is_err());
        assert!(approve_current_step(true).is_ok());
        assert!(approve_current_step(false).is_err());
    }
}
