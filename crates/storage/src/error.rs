use std::path::PathBuf;

/// Everything that can go wrong below the Raft traits. Converted to openraft's
/// `StorageError` in exactly one place per trait method (see [`StorageError::into_raft`]).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("sled error: {0}")]
    Sled(#[from] sled::Error),
    #[error("encoding error: {0}")]
    Codec(#[from] serde_json::Error),
    /// A file's bytes do not match what this crate wrote: a checksum, a length or a record
    /// that cannot be decoded anywhere but in the tail of the newest WAL segment.
    #[error("corrupt {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The state on disk contradicts itself (for example the state machine is behind the
    /// purged log and no snapshot covers the gap).
    #[error("inconsistent storage: {0}")]
    Inconsistent(String),
    /// Another process (or another `open` in this one) holds the data directory.
    #[error("data directory {0} is locked by another store")]
    Locked(PathBuf),
    /// The WAL writer thread stopped, after an IO error or because the store is closing.
    #[error("wal writer stopped: {0}")]
    WriterStopped(String),
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<tokio::task::JoinError> for StorageError {
    fn from(e: tokio::task::JoinError) -> Self {
        StorageError::Task(e.to_string())
    }
}

pub(crate) type RaftError = openraft::StorageError<u64>;

impl StorageError {
    /// Wraps this error for openraft, naming what was being done (`StorageIOError::write_logs`,
    /// `read_state_machine`, ...).
    pub(crate) fn into_raft(
        self,
        make: fn(openraft::AnyError) -> openraft::StorageIOError<u64>,
    ) -> RaftError {
        RaftError::from(make(openraft::AnyError::new(&self)))
    }
}
