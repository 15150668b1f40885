//! Agent addresses: one type, one rule.
//!
//! An address arrives in many places (a path segment, `to_agent`, `reply_to`, a key's
//! `address`, a binding, an `owner_agent`) and used to be normalised in each with slightly
//! different rules, so one entry point could accept what another refused (a `to_agent` of
//! `http://evil/x`, or one with a newline that forged a log line). Every edge now parses into
//! [`AgentAddress`] once, and everything after compares and keys by it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "agent://";

/// The length of the path after `agent://` (so the full form fits the contract's 383).
pub const PATH_LEN: (usize, usize) = (3, 375);

/// An agent address in its canonical form: the path after `agent://` with no surrounding
/// slashes (`acme/prod/billing`). `agent://acme/prod/billing`, `acme/prod/billing` and
/// `agent://acme/prod/billing/` all parse to the same value.
///
/// It serialises as its full `agent://` form. It deserialises leniently (through
/// [`state_key`], never refusing) because log entries and snapshots written before this type
/// existed hold addresses that the stricter parse of new requests would refuse; a replica must
/// still replay them to the same state.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentAddress(String);

/// Why a string is not an agent address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error(
        "{field} must be an agent address (agent://org/workspace/name), not a {scheme}:// URL"
    )]
    OtherScheme { field: String, scheme: String },
    #[error("{field} is an empty agent address")]
    Empty { field: String },
    #[error("{field} must be {min} to {max} characters after agent:// (got {got})")]
    Length {
        field: String,
        min: usize,
        max: usize,
        got: usize,
    },
    #[error("{field} may not contain whitespace or control characters")]
    BadCharacter { field: String },
    #[error("{field} may not contain an empty path segment (//)")]
    EmptySegment { field: String },
}

/// The single normalisation: drop the `agent://` scheme, then the slashes around the path.
fn normalise(raw: &str) -> &str {
    state_key(raw).trim_matches('/')
}

/// The key the replicated state files a stored address under: the address without its
/// `agent://` scheme. For every address that came through [`AgentAddress::parse`] this is
/// its [`AgentAddress::path`]. It deliberately does not trim slashes: apply must key entries
/// written by older releases (which did not trim) exactly as those releases did, or a replica
/// replaying the log would diverge from one that applied it at the time.
pub fn state_key(stored: &str) -> &str {
    stored.strip_prefix(SCHEME).unwrap_or(stored)
}

impl AgentAddress {
    /// Parses an address a request names. `field` names it in the error message.
    pub fn parse(field: &str, raw: &str) -> Result<Self, AddressError> {
        let field = field.to_string();
        if let Some((scheme, _)) = raw.split_once("://") {
            if scheme != "agent" {
                return Err(AddressError::OtherScheme {
                    field,
                    scheme: scheme.chars().take(32).collect(),
                });
            }
        }
        let path = normalise(raw);
        if path.is_empty() {
            return Err(AddressError::Empty { field });
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AddressError::BadCharacter { field });
        }
        if path.contains("//") {
            return Err(AddressError::EmptySegment { field });
        }
        let got = path.chars().count();
        if got < PATH_LEN.0 || got > PATH_LEN.1 {
            return Err(AddressError::Length {
                field,
                min: PATH_LEN.0,
                max: PATH_LEN.1,
                got,
            });
        }
        Ok(AgentAddress(path.to_string()))
    }

    /// An address already in the replicated state, keyed as apply keys it, never refused.
    pub fn from_stored(stored: &str) -> Self {
        AgentAddress(state_key(stored).to_string())
    }

    /// The path after `agent://`: the form state is keyed by.
    pub fn path(&self) -> &str {
        &self.0
    }

    /// The full form, `agent://` and the path: what answers and intents show.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }

    /// Whether a stored address (with or without the scheme) names this agent.
    pub fn is(&self, stored: &str) -> bool {
        state_key(stored) == self.0
    }
}

/// Whether two stored addresses name the same agent (the same state key).
pub fn same_address(a: &str, b: &str) -> bool {
    state_key(a) == state_key(b)
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.0)
    }
}

impl fmt::Debug for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentAddress({SCHEME}{})", self.0)
    }
}

impl Serialize for AgentAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri())
    }
}

impl<'de> Deserialize<'de> for AgentAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ok(AgentAddress::from_stored(&raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_normalisation_for_every_spelling() {
        let a = AgentAddress::parse("to_agent", "agent://acme/prod/billing").unwrap();
        for raw in [
            "acme/prod/billing",
            "agent://acme/prod/billing/",
            "/acme/prod/billing/",
        ] {
            assert_eq!(AgentAddress::parse("to_agent", raw).unwrap(), a);
        }
        assert_eq!(a.path(), "acme/prod/billing");
        assert_eq!(a.uri(), "agent://acme/prod/billing");
        assert!(a.is("agent://acme/prod/billing") && a.is("acme/prod/billing"));
        assert!(!a.is("acme/prod/other"));
    }

    #[test]
    fn refuses_what_no_entry_point_may_accept() {
        let bad = |raw: &str| AgentAddress::parse("to_agent", raw).unwrap_err();
        assert!(matches!(bad("agent://"), AddressError::Empty { .. }));
        assert!(matches!(bad("agent:///"), AddressError::Empty { .. }));
        assert!(matches!(
            bad("http://evil/x"),
            AddressError::OtherScheme { .. }
        ));
        assert!(matches!(
            bad("https://evil/x"),
            AddressError::OtherScheme { .. }
        ));
        assert!(matches!(
            bad("agent://acme/a\0b"),
            AddressError::BadCharacter { .. }
        ));
        assert!(matches!(
            bad("agent://acme/a\nINFO forged"),
            AddressError::BadCharacter { .. }
        ));
        assert!(matches!(bad("acme/a b"), AddressError::BadCharacter { .. }));
        assert!(matches!(bad("acme//b"), AddressError::EmptySegment { .. }));
        assert!(matches!(bad("ab"), AddressError::Length { .. }));
        assert!(matches!(bad(&"a".repeat(376)), AddressError::Length { .. }));
        assert!(AgentAddress::parse("to_agent", &"a".repeat(375)).is_ok());
    }

    #[test]
    fn serialises_as_a_string_and_reads_old_entries_without_refusing() {
        let a = AgentAddress::parse("address", "acme/prod/billing").unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            "\"agent://acme/prod/billing\""
        );
        let old: AgentAddress = serde_json::from_str("\"acme/prod/billing\"").unwrap();
        assert_eq!(old, a);
        // Keyed as the release that wrote it keyed it: no trimming on replay.
        let slash: AgentAddress = serde_json::from_str("\"agent://acme/x/\"").unwrap();
        assert_eq!(slash.path(), "acme/x/");
        // An address an older release accepted is still read back (and compares as stored).
        let lax: AgentAddress = serde_json::from_str("\"agent://a b\"").unwrap();
        assert_eq!(lax.path(), "a b");
    }
}
