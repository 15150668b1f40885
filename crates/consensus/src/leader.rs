//! What a node does as leader for a write, a membership change or a linearizable read,
//! whether the request came from this node's own callers or was forwarded by a follower: the
//! one place that turns openraft's answers into the internal plane's definite or ambiguous
//! failures.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::{BasicNode, ChangeMembers};

use intentd_storage::{Outcome, Proposal, Response as SmResponse};

use crate::error::{ForwardError, MembershipChange};
use crate::Raft;

/// Runs a write on this node as leader and answers with the reply and the entry's log index
/// (a forwarding follower waits to apply up to it before answering its own caller). A
/// `NotLeader` answer is definite (the entry was never appended here, or was truncated), so
/// the forwarding node may try elsewhere.
pub(crate) async fn write_as_leader(
    raft: &Raft,
    proposal: Proposal,
    timeout: Duration,
) -> Result<(Vec<Outcome>, u64), ForwardError> {
    match tokio::time::timeout(timeout, raft.client_write(proposal)).await {
        Err(_) => Err(ForwardError::Ambiguous),
        Ok(Ok(resp)) => match resp.data {
            SmResponse::Commands(outcomes) => Ok((outcomes, resp.log_id.index)),
            other => Err(ForwardError::Internal(format!(
                "a proposal of commands was answered with {other:?}"
            ))),
        },
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(ForwardError::NotLeader {
                leader_id: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(ForwardError::Internal(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(e))) => Err(fatal(e)),
    }
}

/// A leader whose Raft stopped under a write (it is shutting down) may or may not have
/// appended and replicated the entry first: the caller learns "ambiguous", which a client with
/// an idempotency key retries safely, not an internal error.
fn fatal(e: Fatal<u64>) -> ForwardError {
    match e {
        Fatal::Stopped => ForwardError::Ambiguous,
        other => ForwardError::Internal(other.to_string()),
    }
}

/// Runs a membership change on this node as leader and answers with the log index of its
/// last entry. openraft refuses a change while another is in flight; that refusal reaches the
/// caller as an error, never as a silent retry.
pub(crate) async fn change_as_leader(
    raft: &Raft,
    change: MembershipChange,
    timeout: Duration,
) -> Result<u64, ForwardError> {
    let fut = async {
        match change {
            MembershipChange::AddLearner { node_id, raft_addr } => {
                raft.add_learner(node_id, BasicNode::new(raft_addr), true)
                    .await
            }
            MembershipChange::Promote { node_id } => {
                let voters = BTreeSet::from([node_id]);
                raft.change_membership(ChangeMembers::AddVoterIds(voters), false)
                    .await
            }
            MembershipChange::Remove { node_id } => {
                let metrics = raft.metrics().borrow().clone();
                let membership = metrics.membership_config.membership();
                let ids = BTreeSet::from([node_id]);
                if membership.voter_ids().any(|v| v == node_id) {
                    raft.change_membership(ChangeMembers::RemoveVoters(ids), false)
                        .await
                } else {
                    raft.change_membership(ChangeMembers::RemoveNodes(ids), false)
                        .await
                }
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ForwardError::Ambiguous),
        Ok(Ok(resp)) => Ok(resp.log_id.index),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(ForwardError::NotLeader {
                leader_id: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(ForwardError::Refused(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(e))) => Err(fatal(e)),
    }
}

/// The index a linearizable read must wait for, decided by this node as leader; `None` if it
/// could not confirm that it leads.
///
/// openraft's read index is its commit index (or its term's first entry). But a leader that
/// restarts takes its leadership back in the same term without committing anything new, and
/// its commit index restarts at what its state machine had applied, which a power loss can put
/// far behind what it had acknowledged: a read index from it would miss acknowledged writes
/// (the `fsync-loss` chaos row caught a follower answering 404 for one). Every acknowledged
/// write is in the leader's log, so the read also waits for the last index the log had when
/// the read arrived; entries in flight then cost the read the rest of their commit round.
pub(crate) async fn leader_read_index(raft: &Raft) -> Option<u64> {
    let last_log = raft.metrics().borrow().last_log_index.unwrap_or(0);
    let read = raft.ensure_linearizable().await.ok()?;
    Some(read.map_or(0, |l| l.index).max(last_log))
}
