//! The inbox writes of one command: change-feed entries numbered per owner.

use super::*;

/// Inbox writes of one command: change-feed entries numbered per owner.
#[derive(Default)]
pub(super) struct Inbox {
    pub(super) cursors: BTreeMap<String, u64>,
    pub(super) writes: Vec<Write>,
}

impl Inbox {
    /// Records a change of `thread` in its owner's feed.
    pub(super) fn touch(
        &mut self,
        state: &impl StateView,
        thread: &mut InboxThread,
        kind: InboxChangeKind,
        at: Timestamp,
    ) {
        let owner = thread.owner.clone();
        let seq = self.record(state, &owner, thread.thread_id, kind, at);
        thread.change_seq = seq;
        thread.updated_at = at;
    }

    pub(super) fn record(
        &mut self,
        state: &impl StateView,
        owner: &str,
        thread_id: Uuid,
        kind: InboxChangeKind,
        at: Timestamp,
    ) -> u64 {
        let cursor = self
            .cursors
            .entry(owner.to_string())
            .or_insert_with(|| state.inbox_cursor(owner));
        *cursor += 1;
        let seq = *cursor;
        self.writes.push(Write::InboxChange {
            owner: owner.to_string(),
            change: InboxChange {
                seq,
                thread_id,
                kind,
                at,
            },
        });
        seq
    }

    /// The thread leaves its owner's inbox for `new_owner`'s; both feeds record it.
    pub(super) fn move_to(
        &mut self,
        state: &impl StateView,
        thread: &mut InboxThread,
        new_owner: String,
        at: Timestamp,
    ) {
        let old = std::mem::replace(&mut thread.owner, new_owner);
        self.record(state, &old, thread.thread_id, InboxChangeKind::Removed, at);
        self.touch(state, thread, InboxChangeKind::Added, at);
    }

    pub(super) fn finish_thread(mut self, thread: InboxThread) -> Applied {
        self.writes
            .push(Write::InboxThread(Box::new(thread.clone())));
        Applied {
            writes: self.writes,
            reply: Reply::Thread(Box::new(thread)),
        }
    }
}
