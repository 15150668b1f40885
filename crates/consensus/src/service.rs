//! The server side of the internal plane: hands Raft RPCs to the local openraft instance and
//! executes writes and read-index requests forwarded by followers.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tonic::{Request, Response, Status};

use intentd_lifecycle::Command;
use intentd_storage::Response as SmResponse;

use std::collections::BTreeSet;

use openraft::{BasicNode, ChangeMembers};

use crate::error::{ForwardError, MembershipChange};
use crate::proto::raft_internal_server::RaftInternal;
use crate::proto::{
    ForwardRequest, ForwardResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse,
    SnapshotChunk,
};
use crate::Raft;

pub(crate) struct InternalService {
    pub(crate) raft: Raft,
    /// Bounds a forwarded write on the leader, so a follower's caller never waits forever.
    pub(crate) write_timeout: Duration,
    /// Adding a learner waits for it to catch up, which can take far longer than a write.
    pub(crate) membership_timeout: Duration,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))
}

/// Runs a write on this node as leader. A `NotLeader` answer is definite (the entry was never
/// appended here, or was truncated), so the forwarding node may try elsewhere.
pub(crate) async fn write_as_leader(
    raft: &Raft,
    command: Command,
    timeout: Duration,
) -> Result<SmResponse, ForwardError> {
    match tokio::time::timeout(timeout, raft.client_write(command)).await {
        Err(_) => Err(ForwardError::Ambiguous),
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(ForwardError::NotLeader {
                leader_id: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(ForwardError::Internal(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(e))) => Err(ForwardError::Internal(e.to_string())),
    }
}

/// Runs a membership change on this node as leader. openraft refuses a change while another
/// is in flight; that refusal reaches the caller as an error, never as a silent retry.
pub(crate) async fn change_as_leader(
    raft: &Raft,
    change: MembershipChange,
    timeout: Duration,
) -> Result<(), ForwardError> {
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
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(ForwardError::NotLeader {
                leader_id: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(ForwardError::Refused(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(e))) => Err(ForwardError::Internal(e.to_string())),
    }
}

#[tonic::async_trait]
impl RaftInternal for InternalService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().payload)?;
        let result = self.raft.append_entries(rpc).await;
        Ok(Response::new(RaftPayload {
            payload: encode(&result)?,
        }))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().payload)?;
        let result = self.raft.vote(rpc).await;
        Ok(Response::new(RaftPayload {
            payload: encode(&result)?,
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotChunk>,
    ) -> Result<Response<RaftPayload>, Status> {
        let chunk = request.into_inner();
        let mut rpc: openraft::raft::InstallSnapshotRequest<intentd_storage::TypeConfig> =
            decode(&chunk.request)?;
        rpc.data = chunk.data;
        let result = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(RaftPayload {
            payload: encode(&result)?,
        }))
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let command: Command = decode(&request.into_inner().command)?;
        let result = write_as_leader(&self.raft, command, self.write_timeout).await;
        Ok(Response::new(ForwardResponse {
            result: encode(&result)?,
        }))
    }

    async fn change_membership(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let change: MembershipChange = decode(&request.into_inner().payload)?;
        let result = change_as_leader(&self.raft, change, self.membership_timeout).await;
        Ok(Response::new(RaftPayload {
            payload: encode(&result)?,
        }))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(Response::new(ReadIndexResponse {
                read_index: log_id.map(|l| l.index).unwrap_or(0),
            })),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}
