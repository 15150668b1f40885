use intentd_lifecycle::Rejection;

/// Why a write or a linearizable read did not succeed. The HTTP and gRPC edges map these
/// once each to their status codes.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// The state machine refused the command; nothing changed anywhere.
    #[error(transparent)]
    Rejected(Rejection),
    /// No leader is known or no quorum answers. Definitely not applied: safe to retry.
    #[error("the cluster has no leader or no quorum right now")]
    Unavailable { retry_after_secs: u64 },
    /// The write was handed to Raft but its fate is unknown (leadership lost, timeout):
    /// it may or may not commit. Callers with an idempotency key can retry safely.
    #[error("the write may or may not have been committed")]
    Ambiguous,
    /// This node's wall clock (or the proposer's) disagrees with the cluster's by more than
    /// the allowed offset, so it may not stamp commands. Nothing was appended: safe to retry,
    /// here once the clock is back or at another node.
    #[error("clock not synchronized: {0}")]
    ClockUnsynchronized(String),
    /// The cluster refused an administrative request as it stands (e.g. a membership change
    /// while another is in progress, or removing the last voter).
    #[error("refused: {0}")]
    Refused(String),
    #[error("internal consensus error: {0}")]
    Internal(String),
}

impl ConsensusError {
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        ConsensusError::Internal(e.to_string())
    }
}

/// What the leader tells a forwarding follower; travels as JSON over the internal plane.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum ForwardError {
    /// The receiver is not the leader (any more); the sender should look again.
    NotLeader {
        leader_id: Option<u64>,
    },
    Unavailable,
    /// This node leads but has not heard from a quorum lately: answer at once, do not wait.
    NoQuorum,
    Ambiguous,
    /// The command's time stamp is not believable on the leader's clock; never appended.
    ClockSkew(String),
    /// The leader refused the request as invalid (e.g. a membership change in progress).
    Refused(String),
    Internal(String),
}

impl From<ForwardError> for ConsensusError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::NotLeader { .. } | ForwardError::Unavailable | ForwardError::NoQuorum => {
                ConsensusError::Unavailable {
                    retry_after_secs: 1,
                }
            }
            ForwardError::Ambiguous => ConsensusError::Ambiguous,
            ForwardError::ClockSkew(m) => ConsensusError::ClockUnsynchronized(m),
            ForwardError::Refused(m) => ConsensusError::Refused(m),
            ForwardError::Internal(m) => ConsensusError::Internal(m),
        }
    }
}

/// A membership change as it travels to the leader.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum MembershipChange {
    /// Adds a non-voting member; answers once it has caught up with the log.
    AddLearner { node_id: u64, raft_addr: String },
    /// Turns a learner into a voter.
    Promote { node_id: u64 },
    /// Removes a voter or learner from the cluster.
    Remove { node_id: u64 },
}
