//! The server side of the internal plane: hands Raft RPCs to the local openraft instance and
//! executes writes and read-index requests forwarded by followers.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tonic::{Request, Response, Status};

use intentd_lifecycle::Command;
use intentd_storage::Response as SmResponse;

use crate::error::ForwardError;
use crate::proto::raft_internal_server::RaftInternal;
use crate::proto::{
    ForwardRequest, ForwardResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse,
};
use crate::Raft;

pub(crate) struct InternalService {
    pub(crate) raft: Raft,
    /// Bounds a forwarded write on the leader, so a follower's caller never waits forever.
    pub(crate) write_timeout: Duration,
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
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().payload)?;
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
