//! Checking request bodies against the contract, by hand.
//!
//! The contract distinguishes two kinds of bad input, and clients act on the difference:
//! a value of the wrong JSON type (or JSON that does not parse) is a 400 `invalid_request`,
//! while well-typed JSON that breaks a rule of the schema (a pattern, an enum, a required field,
//! a length, an unknown field) is a 422 `schema_invalid`. A generic deserializer cannot tell
//! these apart, so bodies are parsed to a [`Value`] and walked with [`Body`].
//!
//! Only the JSON typing lives here. The rules themselves (patterns, lengths, required
//! fields, the if/then rules of resolve) are `intentd_lifecycle::validate`'s, shared with the
//! gRPC edge; this module re-exports the few that routes use directly.

use serde_json::{Map, Value};
use uuid::Uuid;

pub(crate) use intentd_lifecycle::validate::check_len;

use crate::error::ApiError;

/// A JSON object being validated, field by field.
pub(crate) struct Body<'a> {
    map: &'a Map<String, Value>,
    /// The gateway's Pydantic models accept `null` for optional fields; the JSON Schemas of the
    /// public API do not. Each body is read under the rules of the contract it comes from.
    null_is_absent: bool,
}

impl<'a> Body<'a> {
    /// A body whose schema allows no `null` for optional fields.
    pub(crate) fn strict(value: &'a Value) -> Result<Self, ApiError> {
        Self::new(value, false)
    }

    /// A body whose optional fields may be `null`, meaning absent.
    pub(crate) fn lenient(value: &'a Value) -> Result<Self, ApiError> {
        Self::new(value, true)
    }

    fn new(value: &'a Value, null_is_absent: bool) -> Result<Self, ApiError> {
        match value {
            Value::Object(map) => Ok(Body {
                map,
                null_is_absent,
            }),
            _ => Err(ApiError::InvalidRequest(
                "the request body must be a JSON object".into(),
            )),
        }
    }

    pub(crate) fn map(&self) -> &'a Map<String, Value> {
        self.map
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        match self.map.get(name) {
            Some(Value::Null) if self.null_is_absent => None,
            other => other,
        }
    }

    /// Refuses fields the schema does not list (`additionalProperties: false`).
    pub(crate) fn deny_unknown(&self, allowed: &[&str]) -> Result<(), ApiError> {
        let unknown = self.unknown(allowed);
        if unknown.is_empty() {
            return Ok(());
        }
        Err(ApiError::SchemaInvalid(format!(
            "unknown field(s): {}",
            unknown.join(", ")
        )))
    }

    /// The fields `allowed` does not list, sorted: for bodies that ignore them but say so.
    pub(crate) fn unknown(&self, allowed: &[&str]) -> Vec<&'a str> {
        let mut unknown: Vec<&str> = self
            .map
            .keys()
            .map(String::as_str)
            .filter(|k| !allowed.contains(k))
            .collect();
        unknown.sort_unstable();
        unknown
    }

    pub(crate) fn str(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(name, "a string")),
        }
    }

    pub(crate) fn required_str(&self, name: &str) -> Result<&'a str, ApiError> {
        self.str(name)?.ok_or_else(|| missing(name))
    }

    pub(crate) fn object(&self, name: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(wrong_type(name, "an object")),
        }
    }

    pub(crate) fn required_object(&self, name: &str) -> Result<&'a Map<String, Value>, ApiError> {
        self.object(name)?.ok_or_else(|| missing(name))
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(wrong_type(name, "a boolean")),
        }
    }

    /// A non-negative integer no smaller than `minimum`. A negative integer is well-typed but
    /// below the minimum, so it is a 422; a fraction or a string is the wrong type (400).
    pub(crate) fn uint(&self, name: &str, minimum: u64) -> Result<Option<u64>, ApiError> {
        let n = match self.get(name) {
            None => return Ok(None),
            Some(Value::Number(n)) => n,
            Some(_) => return Err(wrong_type(name, "an integer")),
        };
        match (n.as_u64(), n.as_i64()) {
            (Some(v), _) if v >= minimum => Ok(Some(v)),
            (Some(_), _) | (None, Some(_)) => Err(ApiError::SchemaInvalid(format!(
                "{name} must be an integer >= {minimum}"
            ))),
            (None, None) => Err(wrong_type(name, "an integer")),
        }
    }
}

fn wrong_type(name: &str, expected: &str) -> ApiError {
    ApiError::InvalidRequest(format!("{name} must be {expected}"))
}

fn missing(name: &str) -> ApiError {
    ApiError::SchemaInvalid(format!("{name} is required"))
}

/// The intent id from a path segment; a bad one is a contract violation (422).
pub(crate) fn path_uuid(name: &str, raw: &str) -> Result<Uuid, ApiError> {
    Ok(intentd_lifecycle::validate::uuid_field(name, raw)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_path_uuids_are_422() {
        assert!(path_uuid("intent_id", "6f1c2a7e-1b8f-4a1c-9a8e-3f4f7e2d9c10").is_ok());
        assert_eq!(
            path_uuid("intent_id", "nope").unwrap_err().code(),
            "schema_invalid"
        );
    }

    #[test]
    fn wrong_types_are_400_and_rule_breaks_are_422() {
        let v = json!({"s": 1, "o": "x", "n": -1, "f": 1.5, "b": "yes"});
        let body = Body::strict(&v).unwrap();
        assert_eq!(body.str("s").unwrap_err().code(), "invalid_request");
        assert_eq!(body.object("o").unwrap_err().code(), "invalid_request");
        assert_eq!(body.uint("n", 0).unwrap_err().code(), "schema_invalid");
        assert_eq!(body.uint("f", 0).unwrap_err().code(), "invalid_request");
        assert_eq!(body.bool("b").unwrap_err().code(), "invalid_request");
        assert_eq!(
            body.required_str("absent").unwrap_err().code(),
            "schema_invalid"
        );
        assert_eq!(
            Body::strict(&json!([1])).err().unwrap().code(),
            "invalid_request"
        );
    }

    #[test]
    fn null_is_absent_only_when_lenient() {
        let v = json!({"reason": null});
        assert_eq!(Body::lenient(&v).unwrap().str("reason").unwrap(), None);
        assert_eq!(
            Body::strict(&v).unwrap().str("reason").unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn unknown_fields_are_listed() {
        let v = json!({"a": 1, "zz": 2, "yy": 3});
        let err = Body::strict(&v).unwrap().deny_unknown(&["a"]).unwrap_err();
        assert_eq!(err.code(), "schema_invalid");
        assert!(err.to_string().contains("yy, zz"));
    }
}
