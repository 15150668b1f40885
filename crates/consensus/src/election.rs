//! When a node stands for election: pre-vote (Raft thesis, section 9.6), which openraft 0.9
//! does not have.
//!
//! Without it, a node that cannot hear the leader (just restarted while the leader's
//! replication stream to it is backing off, lagging, or cut off by a partition) times out,
//! raises its term and campaigns. The healthy leader refuses the vote (its lease holds), but
//! its next AppendEntries to that node is answered with the higher term, and the leader steps
//! down although it had a working majority all along: every follower restart cost the
//! cluster an election and the writes in flight.
//!
//! So openraft's own election timer is off (`Config::enable_elect = false`) and [`run`]
//! decides instead. Once the node has heard nothing from a leader for openraft's usual wait
//! (the leader lease plus a randomised election timeout; just the timeout when it knew no
//! elected leader), it first asks every other voter whether it would vote for it, which
//! changes no term and no vote anywhere. A voter agrees only when it is not the leader, has
//! not heard from an elected leader within the lease, and the asker's log is at least as
//! long as its own: the same tests openraft's real vote applies, so a pre-vote that succeeds
//! is an election that can succeed. With a majority of agreements (its own included) the node
//! calls openraft's election; otherwise nothing changed, and it asks again after another
//! randomised timeout. A node cut off from the leader alone thus never raises its term, and
//! when it comes back it simply follows.
//!
//! The clock fence shares the gate: a fenced node never asks (see `clock.rs`).

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use openraft::{CommittedLeaderId, LogId, ServerState};
use rand::Rng;
use tokio::time::Instant;

use crate::cluster::{Cluster, Inner};
use crate::proto::{PreVoteRequest, PreVoteResponse};
use crate::Raft;

/// How often the elector looks at the node's state. Small against the election timeout, so
/// elections start within a few milliseconds of when openraft itself would have started them.
const TICK: Duration = Duration::from_millis(20);

/// What one voter knows that decides whether it backs a candidate, read from openraft's state
/// and the log store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    pub(crate) leader: bool,
    /// When this node last heard from a leader that won its election (openraft touches the
    /// vote's time on every AppendEntries it accepts); `None` when its vote is for no elected
    /// leader (a candidate, or a node that just started).
    pub(crate) heard_leader_at: Option<Instant>,
    /// When the node's vote last changed or was confirmed, elected leader or not.
    pub(crate) vote_changed_at: Option<Instant>,
    pub(crate) last_log: Option<LogId<u64>>,
}

impl Standing {
    /// Reads this node's standing; `None` once Raft has stopped.
    pub(crate) async fn of(raft: &Raft, last_log: Option<LogId<u64>>) -> Option<Standing> {
        raft.with_raft_state(move |st| {
            let changed = st.vote_last_modified();
            Standing {
                leader: st.server_state == ServerState::Leader,
                heard_leader_at: changed.filter(|_| st.vote_ref().is_committed()),
                vote_changed_at: changed,
                last_log,
            }
        })
        .await
        .ok()
    }

    /// Whether this voter would back `candidate_log`'s owner in an election now. `lease` is
    /// openraft's leader lease: within it, openraft's real vote refuses too.
    pub(crate) fn grants(
        &self,
        candidate_log: Option<LogId<u64>>,
        now: Instant,
        lease: Duration,
    ) -> bool {
        if self.leader {
            return false;
        }
        let leader_alive = self
            .heard_leader_at
            .is_some_and(|at| now.saturating_duration_since(at) <= lease);
        !leader_alive && candidate_log >= self.last_log
    }

    /// How long this node waits without news before it asks for pre-votes: as openraft's own
    /// election timer would, the lease plus the election timeout after an elected leader,
    /// only the timeout otherwise (a failed election, or a node that never heard a leader).
    fn patience(&self, lease: Duration, timeout: Duration) -> Duration {
        if self.heard_leader_at.is_some() {
            lease + timeout
        } else {
            timeout
        }
    }
}

pub(crate) fn log_id_to_request(candidate_id: u64, last_log: Option<LogId<u64>>) -> PreVoteRequest {
    match last_log {
        Some(id) => PreVoteRequest {
            candidate_id,
            has_last_log: true,
            last_log_term: id.leader_id.term,
            last_log_node: id.leader_id.node_id,
            last_log_index: id.index,
        },
        None => PreVoteRequest {
            candidate_id,
            ..Default::default()
        },
    }
}

pub(crate) fn log_id_from_request(req: &PreVoteRequest) -> Option<LogId<u64>> {
    req.has_last_log.then(|| {
        LogId::new(
            CommittedLeaderId::new(req.last_log_term, req.last_log_node),
            req.last_log_index,
        )
    })
}

/// Runs this node's elections until it shuts down (see the module doc).
pub(crate) async fn run(inner: Weak<Inner>, lease: Duration, min: Duration, max: Duration) {
    let random_timeout = || rand::thread_rng().gen_range(min..=max);
    let mut timeout = random_timeout();
    // Nothing counts as silence from before this node started or last asked: a cluster that
    // starts whole gives every node one timeout to hear a leader first.
    let mut quiet_since = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let cluster = Cluster { inner };
        let (state, voters) = {
            let metrics = cluster.raft().metrics();
            let m = metrics.borrow();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            (m.state, voters)
        };
        match state {
            ServerState::Shutdown => return,
            ServerState::Leader | ServerState::Learner => continue,
            ServerState::Follower | ServerState::Candidate => {}
        }
        let me = cluster.node_id();
        if !voters.contains(&me) || cluster.inner.fenced.load(Ordering::Relaxed) {
            continue;
        }
        let Some(standing) = Standing::of(cluster.raft(), cluster.inner.log.last_log_id()).await
        else {
            return;
        };
        let now = Instant::now();
        let last_news = standing
            .vote_changed_at
            .map_or(quiet_since, |at| at.max(quiet_since));
        // The only voter has nobody to wait for or to ask (a one-node cluster that restarted);
        // once it stands, its election is given the usual time to finish.
        let alone = voters.len() == 1;
        let at_once = alone && state == ServerState::Follower;
        if !at_once && now.saturating_duration_since(last_news) < standing.patience(lease, timeout)
        {
            continue;
        }
        quiet_since = now;
        timeout = random_timeout();
        let granted = if alone {
            1
        } else {
            ask_for_pre_votes(&cluster, &voters, standing.last_log, min).await
        };
        if 2 * granted > voters.len() {
            tracing::info!(
                granted,
                voters = voters.len(),
                "pre-vote won: standing for election"
            );
            if cluster.raft().trigger().elect().await.is_err() {
                return;
            }
        } else {
            tracing::debug!(
                granted,
                voters = voters.len(),
                "pre-vote lost: staying a follower"
            );
        }
    }
}

/// Asks every other voter at once and counts the agreements, its own included, until they
/// make a majority or every answer is in; a voter that does not answer within `timeout`
/// counts as a refusal. Not waiting for the last answers matters when a voter hangs (a paused
/// leader): its silence would otherwise delay the election by the whole timeout, long enough
/// for the other follower to stand too and split the vote.
async fn ask_for_pre_votes(
    cluster: &Cluster,
    voters: &[u64],
    last_log: Option<LogId<u64>>,
    timeout: Duration,
) -> usize {
    let me = cluster.node_id();
    let mut asks: futures::stream::FuturesUnordered<_> = voters
        .iter()
        .filter(|id| **id != me)
        .map(|id| {
            let mut request = tonic::Request::new(log_id_to_request(me, last_log));
            request.set_timeout(timeout);
            let client = cluster.peer(*id);
            async move {
                let Ok(mut client) = client else { return false };
                matches!(
                    client
                        .pre_vote(request)
                        .await
                        .map(tonic::Response::into_inner),
                    Ok(PreVoteResponse { granted: true })
                )
            }
        })
        .collect();
    let mut granted = 1;
    while 2 * granted <= voters.len() {
        match asks.next().await {
            Some(true) => granted += 1,
            Some(false) => {}
            None => break,
        }
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    const LEASE: Duration = Duration::from_millis(500);

    fn follower(heard_ago: Option<u64>, last_log: Option<LogId<u64>>, now: Instant) -> Standing {
        let at = heard_ago.map(|ms| now - Duration::from_millis(ms));
        Standing {
            leader: false,
            heard_leader_at: at,
            vote_changed_at: at,
            last_log,
        }
    }

    #[test]
    fn a_voter_that_hears_its_leader_refuses() {
        let now = Instant::now();
        let standing = follower(Some(100), log(2, 10), now);
        assert!(!standing.grants(log(2, 10), now, LEASE));
        assert!(!standing.grants(log(3, 99), now, LEASE));
    }

    #[test]
    fn the_leader_refuses() {
        let now = Instant::now();
        let standing = Standing {
            leader: true,
            ..follower(None, log(2, 10), now)
        };
        assert!(!standing.grants(log(9, 99), now, LEASE));
    }

    #[test]
    fn after_the_lease_an_up_to_date_candidate_is_backed() {
        let now = Instant::now();
        let standing = follower(Some(501), log(2, 10), now);
        assert!(standing.grants(log(2, 10), now, LEASE));
        assert!(standing.grants(log(2, 11), now, LEASE));
        assert!(standing.grants(log(3, 1), now, LEASE));
        assert!(!standing.grants(log(2, 9), now, LEASE), "shorter log");
        assert!(!standing.grants(log(1, 50), now, LEASE), "older term");
        assert!(!standing.grants(None, now, LEASE), "empty log");
    }

    #[test]
    fn without_an_elected_leader_only_the_log_decides() {
        let now = Instant::now();
        let standing = follower(None, None, now);
        assert!(standing.grants(None, now, LEASE));
        assert!(standing.grants(log(1, 1), now, LEASE));
    }

    #[test]
    fn patience_adds_the_lease_only_after_an_elected_leader() {
        let now = Instant::now();
        let timeout = Duration::from_millis(300);
        assert_eq!(
            follower(Some(0), None, now).patience(LEASE, timeout),
            LEASE + timeout
        );
        assert_eq!(follower(None, None, now).patience(LEASE, timeout), timeout);
    }

    #[test]
    fn log_ids_survive_the_wire() {
        for id in [
            None,
            log(7, 42),
            Some(LogId::new(CommittedLeaderId::new(3, 9), 0)),
        ] {
            assert_eq!(log_id_from_request(&log_id_to_request(1, id)), id);
        }
    }
}
