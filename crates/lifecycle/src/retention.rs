//! Retention: how long the state keeps an intent after it ended.
//!
//! The setting is part of the replicated state (`Command::SetRetention`, proposed by the
//! leader from its configuration), not read from each node's configuration at apply: the
//! purge time of an intent is written into the intent and the due index when it ends, and
//! every replica must write the same time. A changed setting therefore applies to intents
//! that end after the change; those already ended keep the time they were given.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// How long ended intents are kept. `0` keeps them forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Seconds a terminal intent (with its events, inbox thread, idempotency claims, queue
    /// entries and webhook deliveries) is kept after it ended.
    pub terminal_secs: u64,
    /// Seconds a dead-lettered intent that was not replayed is kept after it failed, so that
    /// it can still be inspected and replayed. Once replayed it is kept like any other
    /// terminal intent, counted from the replay.
    pub dead_letter_secs: u64,
}

impl Retention {
    /// When an intent that ended at `ended_at` is purged; `None` keeps it forever.
    pub fn purge_at(&self, ended_at: Timestamp, dead_lettered: bool) -> Option<Timestamp> {
        let secs = if dead_lettered {
            self.dead_letter_secs
        } else {
            self.terminal_secs
        };
        after_secs(ended_at, secs)
    }
}

/// `at` plus `secs`, `None` for 0 (forever) or a time beyond chrono's range (forever too).
pub(crate) fn after_secs(at: Timestamp, secs: u64) -> Option<Timestamp> {
    if secs == 0 {
        return None;
    }
    let secs = i64::try_from(secs).ok()?;
    at.checked_add_signed(chrono::Duration::try_seconds(secs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_keeps_forever_and_dead_letters_have_their_own_age() {
        let t = chrono::DateTime::from_timestamp(1_000, 0).unwrap();
        let r = Retention {
            terminal_secs: 10,
            dead_letter_secs: 0,
        };
        assert_eq!(
            r.purge_at(t, false),
            Some(t + chrono::Duration::seconds(10))
        );
        assert_eq!(r.purge_at(t, true), None);
        let r = Retention {
            terminal_secs: 0,
            dead_letter_secs: 60,
        };
        assert_eq!(r.purge_at(t, false), None);
        assert_eq!(r.purge_at(t, true), Some(t + chrono::Duration::seconds(60)));
        assert_eq!(Retention::default().purge_at(t, false), None);
        assert_eq!(
            Retention {
                terminal_secs: u64::MAX,
                dead_letter_secs: 0
            }
            .purge_at(t, false),
            None
        );
    }
}
