use intentd_consensus::ConsensusError;
use intentd_lifecycle::{AccessError, Rejection};
use intentd_storage::StorageError;

/// Why an operation or a stream of this crate failed. Each edge maps it once to its own
/// error (the HTTP JSON error, a gRPC `Status`).
#[derive(Debug, thiserror::Error)]
pub enum OperationsError {
    /// The caller is not authenticated or acts outside its key's scope.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A write or read barrier failed: a rejection, no quorum, an ambiguous commit.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The node's state machine is closing; a stream cannot go on here.
    #[error("this node is shutting down")]
    ShuttingDown,
    /// A bug: the state machine answered something the caller cannot have caused.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Rejection> for OperationsError {
    fn from(rejection: Rejection) -> Self {
        OperationsError::Consensus(ConsensusError::Rejected(rejection))
    }
}
