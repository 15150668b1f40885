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
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum ForwardError {
    /// The receiver is not the leader (any more); the sender should look again.
    NotLeader {
        leader_id: Option<u64>,
    },
    Unavailable,
    Ambiguous,
    /// The leader refused the request as invalid (e.g. a membership change in progress).
    Refused(String),
    Internal(String),
}

impl From<ForwardError> for ConsensusError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::NotLeader { .. } | ForwardError::Unavailable => {
                ConsensusError::Unavailable {
                    retry_after_secs: 1,
                }
            }
            ForwardError::Ambiguous => ConsensusError::Ambiguous,
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
