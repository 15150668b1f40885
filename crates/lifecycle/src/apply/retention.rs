//! Retention: the replicated setting and the purge of ended intents.

use super::*;

use crate::retention::after_secs;
use crate::Retention;

pub(super) fn set_retention(
    state: &impl StateView,
    retention: &Retention,
) -> Result<Applied, Rejection> {
    if state.retention() == *retention {
        return Err(Rejection::Invalid("the retention is already set".into()));
    }
    Ok(Applied {
        writes: vec![Write::Retention(*retention)],
        reply: Reply::Done,
    })
}

/// The purge rule: only a terminal intent, only once its `purge_at` is reached by the
/// command's own time. Anything else is refused and changes nothing, so a purge proposed by
/// a leader that read an older state (or whose clock is behind the time given) is harmless.
pub(super) fn purge(
    state: &impl StateView,
    intent_id: &Uuid,
    at: Timestamp,
) -> Result<Applied, Rejection> {
    let intent = state
        .intent(intent_id)
        .ok_or(Rejection::NotFound(*intent_id))?;
    if !intent.status.is_terminal() {
        return Err(Rejection::Invalid(format!(
            "intent {intent_id} is {} and is not purged before it ends",
            intent.status
        )));
    }
    let due = intent.purge_at.ok_or_else(|| {
        Rejection::Invalid(format!("intent {intent_id} is kept without a purge time"))
    })?;
    if due > at {
        return Err(Rejection::Invalid(format!(
            "intent {intent_id} is kept until {}",
            due.to_rfc3339()
        )));
    }
    let mut writes: Vec<Write> = due_of(&intent)
        .into_iter()
        .map(|e| Write::Undue {
            at: e.at,
            kind: e.kind,
            id: e.id,
        })
        .collect();
    writes.push(Write::Purge(Box::new(intent)));
    Ok(Applied {
        writes,
        reply: Reply::Done,
    })
}

/// A replayed dead letter has been answered: its intent is kept from now on like any other
/// ended intent (the terminal retention counted from the replay), no longer for the dead
/// letters' own age. Returns the writes that move its purge time.
pub(super) fn replayed(state: &impl StateView, old: &Intent, at: Timestamp) -> Vec<Write> {
    let mut moved = old.clone();
    moved.purge_at = after_secs(at, state.retention().terminal_secs);
    if moved.purge_at == old.purge_at {
        return Vec::new();
    }
    let mut writes = Vec::new();
    for e in due_of(old).difference(&due_of(&moved)) {
        writes.push(Write::Undue {
            at: e.at,
            kind: e.kind,
            id: e.id,
        });
    }
    for e in due_of(&moved).difference(&due_of(old)) {
        writes.push(Write::Due {
            at: e.at,
            kind: e.kind,
            id: e.id,
        });
    }
    writes.push(Write::Intent(Box::new(moved)));
    writes
}
