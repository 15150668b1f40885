//! The one parser of JSON that clients send (HTTP bodies, gRPC `*_json` fields): `serde_json`
//! with two refusals it does not make.
//!
//! - **Duplicate keys.** `serde_json` keeps the last of two equal keys, so
//!   `{"role":"client","role":"admin"}` read as an admin key request while a proxy, a log or
//!   a WAF in front that keeps the first saw a client key. An object that names a key twice
//!   has no single meaning: refused with 400.
//! - **Integers beyond `i64`/`u64`.** Without `serde_json`'s `arbitrary_precision` feature an
//!   integer that fits neither is silently read as the nearest `f64`, so a payload's
//!   `123456789012345678901234567890` came back as `1.2345678901234568e29`. We refuse such
//!   integers (400) rather than turn that feature on: it changes how every `serde_json::Value`
//!   in the workspace holds numbers, which breaks deserialising internally tagged and
//!   untagged enums through buffered content (our replicated commands and API keys are
//!   internally tagged, so old WAL entries and snapshots would stop decoding), and the gRPC
//!   edge carries payload numbers as protobuf `double` anyway, so they could not stay exact
//!   end to end. Integers within `i64`/`u64` stay exact, as before; numbers written with a
//!   fraction or an exponent are floats, as the sender wrote them.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a text is not JSON we accept. The message goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("the body is not valid JSON: {0}")]
    Syntax(String),
    #[error(
        "the integer {0} is outside the 64-bit range intentd keeps exactly; send it as a string"
    )]
    HugeInteger(String),
}

/// Parses JSON a client sent, refusing duplicate keys and integers beyond 64 bits.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| JsonError::Syntax(e.to_string()))?;
    if let Some(huge) = huge_integer(bytes) {
        return Err(JsonError::HugeInteger(huge));
    }
    Ok(value)
}

/// Builds a [`Value`] like `serde_json` does, except that a repeated key in an object is an
/// error instead of overwriting the earlier one.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(A::Error::custom(format_args!(
                    "duplicate key {key:?} in an object"
                )));
            }
            let value = map.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The first integer literal (no fraction, no exponent) of a syntactically valid JSON text
/// that fits neither `i64` nor `u64`. `serde_json` hands such a literal to the visitor as an
/// `f64` indistinguishable from a float, so the text itself is looked at.
fn huge_integer(bytes: &[u8]) -> Option<String> {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let literal = std::str::from_utf8(&bytes[start..i]).unwrap_or_default();
                let integer = !literal.contains(['.', 'e', 'E']);
                if integer && literal.parse::<i64>().is_err() && literal.parse::<u64>().is_err() {
                    return Some(literal.to_string());
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        // Before: serde_json kept the last one, and this body created an admin key.
        let err = parse(br#"{"role":"client","role":"admin"}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate key \"role\""), "{err}");
        assert!(parse(br#"{"payload":{"a":1,"b":{"c":1,"c":2}}}"#).is_err());
        assert!(parse(br#"[{"a":1},{"a":1,"a":1}]"#).is_err());
        // Equal keys in different objects are fine.
        assert_eq!(
            parse(br#"[{"a":1},{"a":2}]"#).unwrap(),
            json!([{"a": 1}, {"a": 2}])
        );
    }

    #[test]
    fn parses_like_serde_json_otherwise() {
        let text = br#" {"s":"x\"y","n":-3,"u":18446744073709551615,"f":1.5e3,"b":true,"z":null,"l":[1,"2"],"o":{}} "#;
        assert_eq!(
            parse(text).unwrap(),
            serde_json::from_slice::<Value>(text).unwrap()
        );
        assert!(matches!(parse(b"{"), Err(JsonError::Syntax(_))));
        assert!(matches!(parse(b"{} {}"), Err(JsonError::Syntax(_))));
    }

    #[test]
    fn integers_beyond_64_bits_are_refused_not_rounded() {
        // Before: read as 1.2345678901234568e29, silently.
        let err = parse(br#"{"payload":{"n":123456789012345678901234567890}}"#).unwrap_err();
        assert_eq!(
            err,
            JsonError::HugeInteger("123456789012345678901234567890".into())
        );
        assert!(parse(br#"[-9223372036854775809]"#).is_err());
        assert_eq!(
            parse(br#"[-9223372036854775808, 18446744073709551615]"#).unwrap(),
            json!([i64::MIN, u64::MAX])
        );
        // Floats are floats; digits inside strings are text.
        assert!(parse(br#"{"f":1e30,"g":123456789012345678901234567890.5}"#).is_ok());
        assert!(parse(br#"{"s":"123456789012345678901234567890","t":"\\"}"#).is_ok());
    }

    /// Every HTTP body and gRPC `*_json` field goes through this parser. On any bytes it
    /// answers without panicking, and what it accepts serde_json reads as the same value
    /// (it only refuses more: duplicate keys, integers beyond 64 bits).
    #[test]
    fn fuzz_strict_json() {
        let seeds = vec![
            br#"{"intent_type":"a.b.v1","to_agent":"agent://x/y","payload":{"n":[1,-2,3.5e-3,"\u00e9",true,null]}}"#.to_vec(),
            br#"[{"a":{"b":{"c":[[[]]]}}},"\ud83d\ude00",18446744073709551615,-9223372036854775808]"#.to_vec(),
        ];
        intentd_fuzz::fuzz("strict_json", seeds, |bytes| {
            if let Ok(value) = parse(bytes) {
                let loose: Value = serde_json::from_slice(bytes)
                    .unwrap_or_else(|e| panic!("accepted what serde_json refuses: {e}"));
                assert_eq!(value, loose);
            }
        });
    }
}
