//! The payload of a normal Raft entry: the commands that concurrent writers proposed together.
//!
//! Coalescing is what makes a busy cluster cheap: one entry (one WAL frame, one replication
//! element, one pass of openraft's per-entry bookkeeping) carries every command that was
//! waiting when the proposer last sent, each still with its own reply. The commands travel as
//! the JSON text the proposing edge encoded, kept verbatim (`RawValue`): the WAL and the
//! internal plane copy it instead of walking a `serde_json::Value` tree per hop, and only
//! apply decodes it, once per node.

use intentd_lifecycle::Command;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One entry's commands, as a JSON array of encoded [`Command`]s. Entries written before
/// commands were coalesced hold a single command object; [`Proposal::commands`] reads both.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Proposal(Box<RawValue>);

impl Proposal {
    /// Joins commands already encoded with [`Proposal::encode`] into one payload.
    ///
    /// # Errors
    /// Only if a part is not JSON, which `encode` never gives.
    pub fn join<'a>(
        parts: impl IntoIterator<Item = &'a str>,
    ) -> Result<Proposal, serde_json::Error> {
        let mut text = String::from("[");
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(part);
        }
        text.push(']');
        // Checks the syntax (a scan, no allocation per value): a payload that apply could
        // not read must never reach the log, where every node would stop on it.
        RawValue::from_string(text).map(Proposal)
    }

    /// A proposal of one command.
    pub fn single(command: &Command) -> Result<Proposal, serde_json::Error> {
        Proposal::join([Proposal::encode(command)?.as_str()])
    }

    /// The form in which a command joins a proposal.
    pub fn encode(command: &Command) -> Result<String, serde_json::Error> {
        serde_json::to_string(command)
    }

    /// The commands, in the order their replies are expected.
    pub fn commands(&self) -> Result<Vec<Command>, serde_json::Error> {
        let text = self.0.get();
        if text.starts_with('[') {
            serde_json::from_str(text)
        } else {
            serde_json::from_str(text).map(|c| vec![c])
        }
    }

    /// The JSON text, as it travels.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn revoke(n: u128) -> Command {
        Command::RevokeApiKey {
            id: Uuid::from_u128(n),
        }
    }

    #[test]
    fn joined_commands_come_back_in_order() {
        let parts: Vec<String> = (1..=3)
            .map(|n| Proposal::encode(&revoke(n)).unwrap())
            .collect();
        let p = Proposal::join(parts.iter().map(String::as_str)).unwrap();
        assert_eq!(p.commands().unwrap(), vec![revoke(1), revoke(2), revoke(3)]);
    }

    #[test]
    fn survives_the_json_round_trip_of_a_log_entry_verbatim() {
        let p = Proposal::single(&revoke(7)).unwrap();
        let wire = serde_json::to_vec(&vec![p.clone(), p]).unwrap();
        let back: Vec<Proposal> = serde_json::from_slice(&wire).unwrap();
        assert_eq!(back[1].commands().unwrap(), vec![revoke(7)]);
        assert_eq!(
            back[0].0.get(),
            Proposal::single(&revoke(7)).unwrap().0.get()
        );
    }

    #[test]
    fn reads_an_entry_written_before_coalescing() {
        let old = serde_json::to_string(&revoke(9)).unwrap();
        let p: Proposal = serde_json::from_str(&old).unwrap();
        assert_eq!(p.commands().unwrap(), vec![revoke(9)]);
    }

    #[test]
    fn a_part_that_is_not_json_is_refused() {
        assert!(Proposal::join(["{\"RevokeApiKey\":"]).is_err());
    }

    /// An entry's payload as a follower receives it: decoding refuses what is not a command
    /// list and never panics.
    #[test]
    fn fuzz_proposal() {
        let seed = Proposal::join(
            [revoke(1), revoke(2)]
                .iter()
                .map(|c| Proposal::encode(c).unwrap())
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        )
        .unwrap();
        let seeds = vec![seed.as_str().as_bytes().to_vec()];
        intentd_fuzz::fuzz("proposal", seeds, |bytes| {
            if let Ok(p) = serde_json::from_slice::<Proposal>(bytes) {
                let _ = p.commands();
            }
        });
    }
}
