//! openraft wiring for intentd: one [`Cluster`] per process.
//!
//! Every write is a [`Command`](intentd_lifecycle::Command) appended to the Raft log and
//! acknowledged only after a majority has it on disk and the leader applied it (`write` also
//! waits for this node to apply it; `write_committed` leaves that to the reads that follow).
//! Concurrent writes share entries: each node's proposer coalesces what queues up.
//! Writes that reach a follower are forwarded to the leader over the internal plane
//! ([`proto`]), which never shares a port with the public APIs.

mod clock;
mod cluster;
mod election;
mod error;
mod leader;
mod network;
mod proposer;
mod service;

pub use clock::{ClockPolicy, ClockStatus, PeerClock, Verdict};
pub use cluster::{start, Cluster, MembershipView, NodeConfig, NodeStatus, RaftTimings};
pub use error::{ConsensusError, MembershipChange};

/// Generated types of `proto/raft.proto`.
pub mod proto {
    tonic::include_proto!("intentd.raft.v1");
}

/// The openraft instance type of intentd.
pub type Raft = openraft::Raft<intentd_storage::TypeConfig>;
