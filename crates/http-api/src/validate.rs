//! Checking request bodies against the contract, by hand.
//!
//! The contract distinguishes two kinds of bad input, and clients act on the difference:
//! a value of the wrong JSON type (or JSON that does not parse) is a 400 `invalid_request`,
//! while well-typed JSON that breaks a rule of the schema (a pattern, an enum, a required field,
//! a length, an unknown field) is a 422 `schema_invalid`. A generic deserializer cannot tell
//! these apart, so bodies are parsed to a [`Value`] and walked with [`Body`].

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

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

    /// A nested object under the strict rules (schemas' `$defs` allow no `null` either).
    pub(crate) fn strict_map(map: &'a Map<String, Value>) -> Self {
        Body {
            map,
            null_is_absent: false,
        }
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
        let mut unknown: Vec<&str> = self
            .map
            .keys()
            .map(String::as_str)
            .filter(|k| !allowed.contains(k))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort_unstable();
        Err(ApiError::SchemaInvalid(format!(
            "unknown field(s): {}",
            unknown.join(", ")
        )))
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

    /// An array of strings, each `min..=max` characters, with `min_items..=max_items` items.
    pub(crate) fn str_array(
        &self,
        name: &str,
        (min, max): (usize, usize),
        (min_items, max_items): (usize, usize),
    ) -> Result<Option<Vec<&'a str>>, ApiError> {
        let items = match self.get(name) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(wrong_type(name, "an array of strings")),
        };
        if items.len() < min_items || items.len() > max_items {
            return Err(ApiError::SchemaInvalid(format!(
                "{name} must have {min_items} to {max_items} items"
            )));
        }
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => check_len(name, s, min, max).map(|()| s.as_str()),
                _ => Err(wrong_type(name, "an array of strings")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
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

    /// Like [`Body::uint`], for fields the domain keeps as `u32`.
    pub(crate) fn uint32(&self, name: &str, minimum: u64) -> Result<Option<u32>, ApiError> {
        self.uint(name, minimum)?
            .map(|v| {
                u32::try_from(v)
                    .map_err(|_| ApiError::SchemaInvalid(format!("{name} is too large")))
            })
            .transpose()
    }
}

fn wrong_type(name: &str, expected: &str) -> ApiError {
    ApiError::InvalidRequest(format!("{name} must be {expected}"))
}

fn missing(name: &str) -> ApiError {
    ApiError::SchemaInvalid(format!("{name} is required"))
}

/// JSON Schema lengths count code points, not bytes.
pub(crate) fn check_len(name: &str, s: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(ApiError::SchemaInvalid(format!(
            "{name} must be {min} to {max} characters long (got {n})"
        )));
    }
    Ok(())
}

/// `^[a-z0-9_]+(?:\.[a-z0-9_]+)+\.v[0-9]+$`: at least three dot-separated segments of
/// `[a-z0-9_]`, the last of which is `v` and a version number.
pub(crate) fn is_intent_type(s: &str) -> bool {
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
pub(crate) fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::parse_str(s).ok()
}

/// An RFC 3339 date-time with an offset, normalized to UTC.
pub(crate) fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The intent id from a path segment; a bad one is a contract violation (422).
pub(crate) fn path_uuid(name: &str, raw: &str) -> Result<Uuid, ApiError> {
    parse_uuid(raw).ok_or_else(|| ApiError::SchemaInvalid(format!("{name} must be a UUID")))
}

/// JSON with object keys sorted at every level and no insignificant whitespace, so that two
/// requests that differ only in key order or formatting hash the same. The workspace enables
/// serde_json's `preserve_order`, so plain serialization would keep the client's key order.
pub(crate) fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Hex SHA-256 of the canonical body: what an idempotency record remembers of a request.
pub(crate) fn request_hash(body: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(body).as_bytes()))
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
        assert_eq!(
            path_uuid("intent_id", "nope").unwrap_err().code(),
            "schema_invalid"
        );
    }

    #[test]
    fn rfc3339_is_normalized_to_utc() {
        let t = parse_rfc3339("2030-01-01T02:00:00+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2030-01-01T00:00:00+00:00");
        assert!(parse_rfc3339("2030-01-01").is_none());
        assert!(parse_rfc3339("tomorrow").is_none());
    }

    #[test]
    fn wrong_types_are_400_and_rule_breaks_are_422() {
        let v = json!({"s": 1, "o": "x", "n": -1, "f": 1.5, "b": "yes", "big": 5_000_000_000u64});
        let body = Body::strict(&v).unwrap();
        assert_eq!(body.str("s").unwrap_err().code(), "invalid_request");
        assert_eq!(body.object("o").unwrap_err().code(), "invalid_request");
        assert_eq!(body.uint("n", 0).unwrap_err().code(), "schema_invalid");
        assert_eq!(body.uint("f", 0).unwrap_err().code(), "invalid_request");
        assert_eq!(body.bool("b").unwrap_err().code(), "invalid_request");
        assert_eq!(body.uint32("big", 1).unwrap_err().code(), "schema_invalid");
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

    #[test]
    fn lengths_count_characters() {
        assert!(check_len("x", "äöü", 3, 3).is_ok());
        assert!(check_len("x", "ab", 3, 10).is_err());
    }

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "é\n"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"é\n","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":"é\n","b":[1,{"x":1,"y":2}]}"#);
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&json!({"a": "é\n"})));
        assert_eq!(request_hash(&a).len(), 64);
    }
}
