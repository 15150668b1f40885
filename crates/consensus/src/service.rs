//! The server side of the internal plane: hands Raft RPCs to the local openraft instance and
//! executes writes and read-index requests forwarded by followers.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tonic::{Request, Response, Status};

use intentd_lifecycle::Command;
use intentd_storage::{LogStore, Outcome};
use serde_json::value::RawValue;

use crate::clock::{clock_status, stamp_acceptable, wall_micros, ClockWatch};
use crate::cluster::{Cluster, Inner};
use crate::election::{log_id_from_request, Standing};
use crate::error::{ForwardError, MembershipChange};
use crate::leader::{change_as_leader, leader_read_index};
use crate::proposer::Forwarded;
use crate::proto::raft_internal_server::RaftInternal;
use crate::proto::{
    ClockProbe, ClockReading, ForwardRequest, ForwardResponse, PreVoteRequest, PreVoteResponse,
    RaftPayload, ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
};
use crate::Raft;

pub(crate) struct InternalService {
    pub(crate) node_id: u64,
    pub(crate) raft: Raft,
    pub(crate) clock: Arc<ClockWatch>,
    /// The log openraft writes, for the last log id a pre-vote compares.
    pub(crate) log: LogStore,
    /// openraft's leader lease: a voter that heard its leader within it refuses pre-votes.
    pub(crate) leader_lease: Duration,
    /// Bounds a forwarded write on the leader, so a follower's caller never waits forever.
    pub(crate) write_timeout: Duration,
    /// Adding a learner waits for it to catch up, which can take far longer than a write.
    pub(crate) membership_timeout: Duration,
    /// The node this service belongs to, for its proposer; set once the node is built (the
    /// service starts serving before that, and answers forwards with `Unavailable` until then).
    pub(crate) node: Arc<OnceLock<Weak<Inner>>>,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A forwarded batch: a JSON array of commands, each read here (a payload apply could not
/// read would stop every node on it) and kept with its text, which is what gets logged.
fn read_batch(bytes: &[u8]) -> Result<Vec<(&RawValue, Command)>, Status> {
    let parts: Vec<&RawValue> =
        serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(e.to_string()))?;
    parts
        .into_iter()
        .map(|part| {
            let command = serde_json::from_str(part.get())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Ok((part, command))
        })
        .collect()
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))
}

impl InternalService {
    /// A forwarded command is appended only if this leader's clock is in agreement with the
    /// cluster and the command's stamp is believable on it: the follower's own fence may not
    /// have noticed yet that its clock jumped, and the stamp outlives every clock.
    fn clock_check(&self) -> Result<(), ForwardError> {
        let status = clock_status(&self.raft, &self.clock, self.node_id);
        if status.synchronized {
            Ok(())
        } else {
            Err(ForwardError::ClockSkew(format!(
                "the leader's clock is more than {} ms off from {} of {} voters",
                status.max_offset_ms, status.disagreeing_voters, status.voters
            )))
        }
    }

    /// The second half of the check above, per command of a batch.
    fn stamp_check(&self, command: &Command, now: i64) -> Result<(), ForwardError> {
        let Some(at) = command.stamped_at() else {
            return Ok(());
        };
        let stamp = at.timestamp_micros();
        let policy = self.clock.policy();
        // A command may be retried against new leaders for up to the write timeout before
        // it gets here, so an old stamp is only suspicious beyond twice that.
        if stamp_acceptable(stamp, now, policy.max_offset, 2 * self.write_timeout) {
            Ok(())
        } else {
            Err(ForwardError::ClockSkew(format!(
                "the command was stamped {:.3} s from the leader's clock",
                (stamp - now) as f64 / 1e6
            )))
        }
    }
}

#[tonic::async_trait]
impl RaftInternal for InternalService {
    async fn clock(&self, _request: Request<ClockProbe>) -> Result<Response<ClockReading>, Status> {
        Ok(Response::new(ClockReading {
            wall_micros: wall_micros(),
        }))
    }

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

    async fn pre_vote(
        &self,
        request: Request<PreVoteRequest>,
    ) -> Result<Response<PreVoteResponse>, Status> {
        let request = request.into_inner();
        let candidate_log = log_id_from_request(&request);
        let standing = Standing::of(&self.raft, self.log.last_log_id())
            .await
            .ok_or_else(|| Status::unavailable("raft has stopped"))?;
        let granted = standing.grants(
            candidate_log,
            tokio::time::Instant::now(),
            self.leader_lease,
        );
        tracing::debug!(candidate = request.candidate_id, granted, "pre-vote asked");
        Ok(Response::new(PreVoteResponse { granted }))
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

    /// Proposes a follower's batch through this node's proposer, so that it shares entries
    /// with the leader's own writes and with other followers' batches (an entry per forward
    /// tripled the entries of a load spread over three nodes). Every command is read here
    /// before it is logged (a payload apply could not read would stop every node on it) and
    /// checked against this node's clock; one refused alone leaves the others to go on.
    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let refuse = |e: ForwardError| -> Result<Response<ForwardResponse>, Status> {
            Ok(Response::new(ForwardResponse {
                result: encode(&Err::<Forwarded, _>(e))?,
            }))
        };
        let Some(inner) = self.node.get().and_then(Weak::upgrade) else {
            return refuse(ForwardError::Unavailable);
        };
        let cluster = Cluster { inner };
        let bytes = request.into_inner().commands;
        if let Err(e) = self.clock_check() {
            return refuse(e);
        }
        let now = wall_micros();
        let parts = read_batch(&bytes)?;
        let mut outcomes: Vec<Option<Result<Outcome, ForwardError>>> = Vec::new();
        let mut accepted = Vec::with_capacity(parts.len());
        for (part, command) in &parts {
            match self.stamp_check(command, now) {
                Ok(()) => {
                    accepted.push(part.get().to_owned());
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        let answers = if accepted.is_empty() {
            Vec::new()
        } else {
            cluster
                .proposer()
                .submit_all(&cluster, self.node_id, accepted, self.write_timeout)
                .await
        };
        // The follower waits to apply up to the index it is given before it answers, so it
        // gets the last entry any of its commands went into.
        let index = answers
            .iter()
            .filter_map(|a| a.as_ref().ok().map(|(_, index)| *index))
            .max()
            .unwrap_or(0);
        let mut answers = answers.into_iter().map(|a| a.map(|(outcome, _)| outcome));
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.or_else(|| answers.next()))
            .collect::<Option<Vec<_>>>();
        let result = match outcomes {
            Some(outcomes) if answers.next().is_none() => Ok(Forwarded { index, outcomes }),
            _ => Err(ForwardError::Internal(
                "the proposer answered a different number of commands".into(),
            )),
        };
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
        match leader_read_index(&self.raft).await {
            Some(read_index) => Ok(Response::new(ReadIndexResponse { read_index })),
            None => Err(Status::unavailable(
                "this node could not confirm its leadership",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    use uuid::Uuid;

    use intentd_storage::{Proposal, TypeConfig};

    use super::*;

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    /// One valid message of each kind the internal plane decodes, tagged by its first byte.
    fn seeds() -> Vec<Vec<u8>> {
        let command = Command::RevokeApiKey {
            id: Uuid::from_u128(7),
        };
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(4)),
            entries: vec![Entry {
                log_id: log_id(5),
                payload: EntryPayload::Normal(Proposal::single(&command).unwrap()),
            }],
            leader_commit: Some(log_id(4)),
        };
        let vote = VoteRequest::<u64>::new(Vote::new(4, 2), Some(log_id(5)));
        let snapshot = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: Default::default(),
            offset: 0,
            data: Vec::new(),
            done: true,
        };
        let batch = format!("[{}]", Proposal::encode(&command).unwrap());
        let tagged = |tag: u8, body: Vec<u8>| [vec![tag], body].concat();
        vec![
            tagged(0, serde_json::to_vec(&append).unwrap()),
            tagged(1, serde_json::to_vec(&vote).unwrap()),
            tagged(2, serde_json::to_vec(&snapshot).unwrap()),
            tagged(3, batch.into_bytes()),
            tagged(
                4,
                br#"{"AddLearner":{"node_id":4,"raft_addr":"127.0.0.1:7004"}}"#.to_vec(),
            ),
        ]
    }

    /// What a peer (or anything that reaches the internal port) sends is refused with a
    /// status when it is not a valid message, never a panic; a forwarded command's stamp is
    /// checked whatever time it names.
    #[test]
    fn fuzz_internal_messages() {
        intentd_fuzz::fuzz("internal_plane", seeds(), |input| {
            let Some((tag, body)) = input.split_first() else {
                return;
            };
            match tag % 5 {
                0 => drop(decode::<AppendEntriesRequest<TypeConfig>>(body)),
                1 => drop(decode::<VoteRequest<u64>>(body)),
                2 => drop(decode::<InstallSnapshotRequest<TypeConfig>>(body)),
                3 => {
                    if let Ok(parts) = read_batch(body) {
                        for (_, command) in parts {
                            if let Some(at) = command.stamped_at() {
                                stamp_acceptable(
                                    at.timestamp_micros(),
                                    wall_micros(),
                                    Duration::from_millis(500),
                                    Duration::from_secs(20),
                                );
                            }
                        }
                    }
                }
                _ => drop(decode::<MembershipChange>(body)),
            }
        });
    }
}
