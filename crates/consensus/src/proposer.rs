//! Coalesces the writes of concurrent callers into one Raft entry, or one forward to the leader.
//!
//! Every entry costs the same fixed work whatever it carries: a round through openraft's core
//! task, a WAL frame, a replication element per follower, a state-machine apply call, and the
//! thread hand-offs between them, which were most of a busy leader's CPU (see
//! `docs/performance.md`). So each node sends its writes through one proposer: it keeps at most
//! [`IN_FLIGHT`] proposals outstanding, and whatever arrives while they are out goes together in
//! the next one. One caller alone is sent at once (no timer, no added latency); under load the
//! batches grow with the queue. Each command keeps its own outcome: the state machine answers
//! an entry with one outcome per command, in order.

use std::sync::{Arc, Weak};
use std::time::Duration;

use intentd_storage::{Outcome, Proposal};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::cluster::{Cluster, Inner};
use crate::error::ForwardError;
use crate::leader::write_as_leader;
use crate::proto::ForwardRequest;

/// Proposals a node keeps outstanding. Two let the leader write one batch to its WAL while the
/// previous one is on the followers' disks; more only split the queue into smaller batches.
const IN_FLIGHT: usize = 2;

/// Bounds on one proposal. A command alone may be bigger (up to the edge's body limit); it
/// then goes alone. With openraft's `max_payload_entries` of 256 this keeps one replication
/// message under the internal plane's message limit.
const MAX_COMMANDS: usize = 512;
const MAX_BYTES: usize = 512 * 1024;

/// What the leader answers a forwarded proposal: its log index and one result per command
/// (a command can be refused alone, e.g. for a time stamp the leader's clock rejects).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Forwarded {
    pub(crate) index: u64,
    pub(crate) outcomes: Vec<Result<Outcome, ForwardError>>,
}

/// What one command's caller gets: its outcome and the index of the entry that carried it.
type Answer = Result<(Outcome, u64), ForwardError>;

struct Pending {
    /// The node the caller believed to lead when it submitted.
    leader: u64,
    /// The command as [`Proposal::encode`] gave it.
    command: String,
    deadline: Instant,
    reply: oneshot::Sender<Answer>,
}

/// The submitting side; the batching loop runs in [`run`].
pub(crate) struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
    /// Permits for outstanding proposals, shared with the loop.
    window: Arc<Semaphore>,
}

impl Proposer {
    /// Creates the proposer and the queue its loop drains; the loop ends when the cluster is
    /// gone.
    pub(crate) fn new() -> (Proposer, Queue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let window = Arc::new(Semaphore::new(IN_FLIGHT));
        let queue = Queue {
            rx,
            window: Arc::clone(&window),
        };
        (Proposer { tx, window }, queue)
    }

    /// Proposes `command` (encoded) through `leader` and waits for its outcome, at most
    /// `timeout`. Giving up after the command may have been sent is `Ambiguous`, as for any
    /// write whose fate is unknown.
    pub(crate) async fn submit(
        &self,
        cluster: &Cluster,
        leader: u64,
        command: String,
        timeout: Duration,
    ) -> Answer {
        self.submit_all(cluster, leader, vec![command], timeout)
            .await
            .pop()
            .unwrap_or(Err(ForwardError::Ambiguous))
    }

    /// Proposes `commands` through `leader` and answers each, in order. They may travel in
    /// different proposals (each answer names its own entry's index).
    ///
    /// Callers that find a proposal slot free send at once, from their own task, as one
    /// proposal: an idle node then pays no hand-off to the loop for the batching it does not
    /// need. The semaphore is fair, so such a caller never takes a slot the loop is waiting
    /// for. The leader's forward handler comes through here too, so a follower's batch joins
    /// the leader's own writes instead of costing an entry of its own.
    pub(crate) async fn submit_all(
        &self,
        cluster: &Cluster,
        leader: u64,
        commands: Vec<String>,
        timeout: Duration,
    ) -> Vec<Answer> {
        let deadline = Instant::now() + timeout;
        let (pendings, answers): (Vec<Pending>, Vec<oneshot::Receiver<Answer>>) = commands
            .into_iter()
            .map(|command| {
                let (reply, answer) = oneshot::channel();
                let pending = Pending {
                    leader,
                    command,
                    deadline,
                    reply,
                };
                (pending, answer)
            })
            .unzip();
        if let Ok(permit) = Arc::clone(&self.window).try_acquire_owned() {
            send(cluster, pendings).await;
            drop(permit);
        } else {
            for pending in pendings {
                if let Err(mpsc::error::SendError(pending)) = self.tx.send(pending) {
                    // The loop is gone (the node is shutting down): nothing was sent.
                    let _ = pending.reply.send(Err(ForwardError::Unavailable));
                }
            }
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) | Err(_) => Err(ForwardError::Ambiguous),
            });
        }
        out
    }
}

/// The receiving side of a [`Proposer`], handed to [`run`].
pub(crate) struct Queue {
    rx: mpsc::UnboundedReceiver<Pending>,
    window: Arc<Semaphore>,
}

/// Drains the queue into proposals until the cluster is dropped.
pub(crate) async fn run(inner: Weak<Inner>, queue: Queue) {
    let Queue { mut rx, window } = queue;
    loop {
        // Taking a permit before looking at the queue is what makes batches: while all
        // permits are out, callers pile up in the channel.
        let Ok(permit) = Arc::clone(&window).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].command.len();
        while batch.len() < MAX_COMMANDS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.command.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let cluster = Cluster { inner };
        tokio::spawn(async move {
            for group in by_leader(batch) {
                send(&cluster, group).await;
            }
            drop(permit);
        });
    }
}

/// Splits a batch by the leader each caller aimed at, keeping each group in arrival order,
/// and drops callers that already gave up (their command is better not sent at all).
fn by_leader(batch: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut groups: Vec<Vec<Pending>> = Vec::new();
    for pending in batch {
        if pending.reply.is_closed() {
            continue;
        }
        match groups.iter_mut().find(|g| g[0].leader == pending.leader) {
            Some(group) => group.push(pending),
            None => groups.push(vec![pending]),
        }
    }
    groups
}

/// Sends one group as one proposal and hands every caller its own answer.
async fn send(cluster: &Cluster, group: Vec<Pending>) {
    let leader = group[0].leader;
    let deadline = group
        .iter()
        .map(|p| p.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let timeout = deadline.saturating_duration_since(Instant::now());
    let proposal = match Proposal::join(group.iter().map(|p| p.command.as_str())) {
        Ok(proposal) => proposal,
        Err(e) => return answer_all(group, ForwardError::Internal(e.to_string())),
    };
    if leader == cluster.node_id() {
        match write_as_leader(cluster.raft(), proposal, timeout).await {
            Ok((outcomes, index)) if outcomes.len() == group.len() => {
                for (pending, outcome) in group.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(Ok((outcome, index)));
                }
            }
            Ok((outcomes, _)) => answer_all(
                group,
                ForwardError::Internal(format!(
                    "the state machine answered {} outcomes for a proposal of commands",
                    outcomes.len()
                )),
            ),
            Err(e) => answer_all(group, e),
        }
        return;
    }
    let request = ForwardRequest {
        commands: proposal.as_str().as_bytes().to_vec(),
    };
    let forwarded = cluster
        .ask_leader::<_, Forwarded, _, _>(leader, timeout, request, |mut c, r| async move {
            c.forward(r).await.map(|reply| reply.into_inner().result)
        })
        .await;
    match forwarded {
        Ok(Forwarded { index, outcomes }) if outcomes.len() == group.len() => {
            for (pending, outcome) in group.into_iter().zip(outcomes) {
                let _ = pending.reply.send(outcome.map(|o| (o, index)));
            }
        }
        Ok(Forwarded { outcomes, .. }) => answer_all(
            group,
            ForwardError::Internal(format!(
                "the leader answered {} outcomes for a proposal of commands",
                outcomes.len()
            )),
        ),
        Err(e) => answer_all(group, e),
    }
}

fn answer_all(group: Vec<Pending>, e: ForwardError) {
    for pending in group {
        let _ = pending.reply.send(Err(e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(leader: u64, command: &str) -> (Pending, oneshot::Receiver<Answer>) {
        let (reply, answer) = oneshot::channel();
        let p = Pending {
            leader,
            command: command.to_string(),
            deadline: Instant::now(),
            reply,
        };
        (p, answer)
    }

    #[tokio::test]
    async fn groups_keep_arrival_order_per_leader_and_skip_callers_that_left() {
        let (a, _ka) = pending(1, "a");
        let (b, _kb) = pending(2, "b");
        let (c, gone) = pending(1, "c");
        let (d, _kd) = pending(1, "d");
        let (e, _ke) = pending(2, "e");
        drop(gone);
        let groups = by_leader(vec![a, b, c, d, e]);
        let seen: Vec<(u64, Vec<&str>)> = groups
            .iter()
            .map(|g| (g[0].leader, g.iter().map(|p| p.command.as_str()).collect()))
            .collect();
        assert_eq!(seen, vec![(1, vec!["a", "d"]), (2, vec!["b", "e"])]);
    }

    #[tokio::test]
    async fn a_shared_failure_reaches_every_caller() {
        let (a, ra) = pending(1, "a");
        let (b, rb) = pending(1, "b");
        answer_all(vec![a, b], ForwardError::NotLeader { leader_id: Some(2) });
        for answer in [ra.await.unwrap(), rb.await.unwrap()] {
            assert!(matches!(
                answer,
                Err(ForwardError::NotLeader { leader_id: Some(2) })
            ));
        }
    }
}
