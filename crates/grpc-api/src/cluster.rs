//! `intentd.v1.ClusterService`: what this node knows of the cluster. Unauthenticated, like
//! `GET /health`, so operators and load balancers can ask any node who it is.

use intentd_consensus::Cluster;
use tonic::{Request, Response, Status};

use crate::proto;
use crate::proto::cluster_service_server::ClusterService;
use crate::proto::status_response::Role;

pub(crate) struct ClusterApi {
    cluster: Cluster,
}

impl ClusterApi {
    pub(crate) fn new(cluster: Cluster) -> Self {
        ClusterApi { cluster }
    }
}

fn role(name: &str) -> Role {
    match name {
        "leader" => Role::Leader,
        "follower" => Role::Follower,
        "candidate" => Role::Candidate,
        "learner" => Role::Learner,
        "shutdown" => Role::Shutdown,
        _ => Role::Unspecified,
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let s = self.cluster.status();
        Ok(Response::new(proto::StatusResponse {
            node_id: s.node_id,
            role: role(&s.role).into(),
            leader_id: s.leader_id,
            term: s.term,
            applied_index: self.cluster.reader().applied_index(),
            commit_index: s.commit_index,
            last_log_index: s.last_log_index,
            members: s.members,
            clock_synchronized: s.clock.synchronized,
        }))
    }
}
