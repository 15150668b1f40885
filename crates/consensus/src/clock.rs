//! Clock agreement between nodes: the fence that keeps a wrong wall clock out of the log.
//!
//! Every time in the replicated state (lease ends, retry times, idempotency expiry, reminder
//! and deadline times) is computed from the `at` that the proposing node stamped on its
//! command. A node whose clock is a minute ahead would stamp due times a minute in the
//! future (pushes wait in real time), and one a day behind would write idempotency claims
//! that have already expired for everyone else. No rule inside `apply` can repair a wrong
//! stamp, since apply must not read a clock; so the wrong stamp must never be proposed.
//!
//! Each node probes every peer's wall clock over the internal plane (NTP-style: the offset is
//! taken at the midpoint of the round trip, half the round trip is the uncertainty). A peer
//! whose offset lies beyond `max_offset` even after allowing for the uncertainty is known to
//! disagree; one within it is known to agree; anything else (no answer lately, a round trip
//! too slow to tell) is unknown. A node counts itself synchronised while a majority of the
//! voters, itself included, is not known to disagree with it: the fence trips on evidence of
//! skew, not on a lossy or slow link (which cannot commit anything anyway). Out of sync, the
//! node refuses writes (callers get a retryable 503), does not campaign, and as leader stops
//! heartbeating so that a node with a good clock takes over. A jump of the local clock is noticed at once, without waiting for a
//! probe: each sample remembers the monotonic clock too, and the wall clock's drift from it
//! since the sample is subtracted from the measured offset.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch on this node's wall clock (what commands are stamped with).
pub(crate) fn wall_micros() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// How far clocks may disagree and how they are watched.
#[derive(Debug, Clone, Copy)]
pub struct ClockPolicy {
    /// The largest disagreement between two nodes' wall clocks that the cluster accepts.
    pub max_offset: Duration,
    /// How often each peer is probed.
    pub probe_interval: Duration,
    /// A sample older than this no longer counts (the peer may have changed since).
    pub stale_after: Duration,
}

impl Default for ClockPolicy {
    fn default() -> Self {
        ClockPolicy {
            max_offset: Duration::from_millis(500),
            probe_interval: Duration::from_millis(250),
            stale_after: Duration::from_secs(3),
        }
    }
}

/// One probe of a peer's clock.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The peer's wall clock minus ours at the midpoint of the round trip, in microseconds.
    offset: i64,
    /// Half the round trip: the true offset lies within `offset ± uncertainty`.
    uncertainty: i64,
    /// Our wall clock and monotonic clock when the reply came back.
    wall: i64,
    mono: Instant,
}

/// What this node knows of one peer's clock, for `/health` and the cluster status.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct PeerClock {
    /// The peer's clock minus ours in milliseconds, corrected for our own clock's drift
    /// since the sample; `None` before the first answer.
    pub offset_ms: Option<f64>,
    pub uncertainty_ms: Option<f64>,
    /// Milliseconds since the last answer.
    pub age_ms: Option<u64>,
    pub verdict: Verdict,
}

/// What a peer's clock says about ours.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Within the allowed offset, uncertainty included.
    Agrees,
    /// Beyond the allowed offset, uncertainty included.
    Disagrees,
    /// No recent answer, or a round trip too slow to tell.
    Unknown,
}

impl PeerClock {
    fn unknown(age: Option<Duration>) -> Self {
        PeerClock {
            offset_ms: None,
            uncertainty_ms: None,
            age_ms: age.map(|a| a.as_millis() as u64),
            verdict: Verdict::Unknown,
        }
    }
}

/// Whether this node's clock may stamp commands, and why.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct ClockStatus {
    pub synchronized: bool,
    pub max_offset_ms: u64,
    /// Voters whose clocks are known to disagree with ours.
    pub disagreeing_voters: usize,
    pub voters: usize,
    pub peers: BTreeMap<u64, PeerClock>,
}

/// A sample whose wall-clock reading has since moved apart from the monotonic clock by more
/// than `max_offset / JUMP_FRACTION` was taken before a jump of our clock. Slewing (at most a
/// few milliseconds within `stale_after`) stays far below it.
const JUMP_FRACTION: i64 = 10;

/// Samples kept per peer. Judging by the sharpest recent one (the shortest round trip, as NTP
/// does) keeps a jittery link from fencing a node whose clock is fine.
const SAMPLES_PER_PEER: usize = 8;

/// The samples of every peer; pure bookkeeping, the probing lives in the cluster.
#[derive(Debug)]
pub(crate) struct ClockWatch {
    policy: ClockPolicy,
    samples: Mutex<HashMap<u64, VecDeque<Sample>>>,
}

impl ClockWatch {
    pub(crate) fn new(policy: ClockPolicy) -> Self {
        ClockWatch {
            policy,
            samples: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn policy(&self) -> ClockPolicy {
        self.policy
    }

    /// Records a probe that left at `sent_wall` / `sent_mono`, was answered with the peer's
    /// `peer_wall`, and came back at `recv_mono`. The midpoint is taken on the monotonic
    /// clock, so a jump of our wall clock during the probe does not bend the sample.
    pub(crate) fn record(
        &self,
        peer: u64,
        sent_wall: i64,
        sent_mono: Instant,
        peer_wall: i64,
        recv_mono: Instant,
    ) {
        let rtt = recv_mono.saturating_duration_since(sent_mono).as_micros() as i64;
        let sample = Sample {
            offset: peer_wall - (sent_wall + rtt / 2),
            uncertainty: rtt / 2 + 1,
            wall: sent_wall + rtt,
            mono: recv_mono,
        };
        let mut samples = self.lock();
        let kept = samples.entry(peer).or_default();
        if kept.len() == SAMPLES_PER_PEER {
            kept.pop_front();
        }
        kept.push_back(sample);
    }

    /// Forgets peers that are no longer members.
    pub(crate) fn retain(&self, members: &[u64]) {
        self.lock().retain(|id, _| members.contains(id));
    }

    /// Judges our clock against the voters' at (`now_wall`, `now_mono`).
    pub(crate) fn assess(
        &self,
        me: u64,
        voters: &[u64],
        now_wall: i64,
        now_mono: Instant,
    ) -> ClockStatus {
        let max = self.policy.max_offset.as_micros() as i64;
        // Assessed under the lock: a few peers' samples, and it runs on every write, where a
        // copy of the map would be the larger cost.
        let samples = self.lock();
        let mut peers = BTreeMap::new();
        let mut disagreeing = 0;
        for (&id, kept) in samples.iter().filter(|(id, _)| **id != me) {
            let Some(latest) = kept.back() else { continue };
            let age = now_mono.saturating_duration_since(latest.mono);
            let fresh =
                |s: &&Sample| now_mono.saturating_duration_since(s.mono) <= self.policy.stale_after;
            // If our wall clock moved differently from the monotonic clock since a sample, our
            // clock jumped (or drifted) by that much; the peer's did not move with it.
            let drift = |s: &Sample| {
                let since = now_mono.saturating_duration_since(s.mono);
                (now_wall - s.wall) - since.as_micros() as i64
            };
            // Samples taken on our clock as it is now measure the offset directly, and a probe
            // answered after a jump outranks every sample from before it, however sharp. Only
            // until such a probe answers (one probe interval) do the older samples judge,
            // corrected by the jump. Without that rule, one wall-clock step shared by every
            // node (a paused and resumed VM host, an NTP step on a one-host cluster) fenced
            // all of them for as long as the sharpest pre-jump sample stayed fresh.
            let present = kept
                .iter()
                .filter(fresh)
                .filter(|s| drift(s).abs() <= max / JUMP_FRACTION)
                .min_by_key(|s| s.uncertainty);
            let sample =
                present.or_else(|| kept.iter().filter(fresh).min_by_key(|s| s.uncertainty));
            let Some(sample) = sample else {
                peers.insert(id, PeerClock::unknown(Some(age)));
                continue;
            };
            let offset = sample.offset - drift(sample);
            let distance = offset.unsigned_abs() as i64;
            let verdict = if distance + sample.uncertainty <= max {
                Verdict::Agrees
            } else if distance - sample.uncertainty > max {
                Verdict::Disagrees
            } else {
                Verdict::Unknown
            };
            if verdict == Verdict::Disagrees && voters.contains(&id) {
                disagreeing += 1;
            }
            peers.insert(
                id,
                PeerClock {
                    offset_ms: Some(offset as f64 / 1000.0),
                    uncertainty_ms: Some(sample.uncertainty as f64 / 1000.0),
                    age_ms: Some(age.as_millis() as u64),
                    verdict,
                },
            );
        }
        for &id in voters.iter().filter(|id| **id != me) {
            peers.entry(id).or_insert(PeerClock::unknown(None));
        }
        // A one-voter cluster has nobody to disagree with; an uninitialised node has no
        // voters and nothing to stamp for.
        let synchronized = voters.is_empty() || voters.len() - disagreeing > voters.len() / 2;
        ClockStatus {
            synchronized,
            max_offset_ms: self.policy.max_offset.as_millis() as u64,
            disagreeing_voters: disagreeing,
            voters: voters.len(),
            peers,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, VecDeque<Sample>>> {
        self.samples.lock().expect("clock samples lock poisoned")
    }
}

/// Whether a stamp taken by another node's clock is believable here: not ahead of our clock
/// by more than the allowed offset, and not so far behind that neither the offset nor the
/// time a command may spend being forwarded and retried explains it.
pub(crate) fn stamp_acceptable(
    stamp_micros: i64,
    now_micros: i64,
    max_offset: Duration,
    max_transit: Duration,
) -> bool {
    let ahead = stamp_micros - now_micros;
    let max = max_offset.as_micros() as i64;
    ahead <= max && -ahead <= max + max_transit.as_micros() as i64
}

/// This node's clock judged against the voters of its current membership.
pub(crate) fn clock_status(raft: &crate::Raft, watch: &ClockWatch, me: u64) -> ClockStatus {
    let voters: Vec<u64> = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    watch.assess(me, &voters, wall_micros(), std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    fn watch() -> ClockWatch {
        ClockWatch::new(ClockPolicy::default())
    }

    /// A probe sent at wall `t` over a 2 ms round trip to a peer whose clock reads
    /// `t + offset + 1 ms` at the midpoint.
    fn probe(w: &ClockWatch, peer: u64, t: i64, mono: Instant, offset: i64) {
        let back = mono + Duration::from_millis(2);
        w.record(peer, t, mono, t + 1_000 + offset, back);
    }

    #[test]
    fn a_lone_voter_is_synchronized() {
        let s = watch().assess(1, &[1], 0, Instant::now());
        assert!(s.synchronized);
    }

    #[test]
    fn peers_not_heard_from_are_unknown_not_disagreeing() {
        let s = watch().assess(1, &[1, 2, 3], 0, Instant::now());
        assert!(s.synchronized);
        assert_eq!(s.disagreeing_voters, 0);
        assert_eq!(s.peers[&2].verdict, Verdict::Unknown);
        assert_eq!(s.peers[&2].offset_ms, None);
    }

    #[test]
    fn one_disagreeing_peer_of_two_leaves_a_majority() {
        let w = watch();
        let mono = Instant::now();
        probe(&w, 2, 100 * SEC, mono, 3_000);
        probe(&w, 3, 100 * SEC, mono, 90 * SEC);
        let s = w.assess(
            1,
            &[1, 2, 3],
            100 * SEC + 2_000,
            mono + Duration::from_millis(2),
        );
        assert!(s.synchronized);
        assert_eq!(s.disagreeing_voters, 1);
        assert_eq!(s.peers[&2].verdict, Verdict::Agrees);
        assert_eq!(s.peers[&3].verdict, Verdict::Disagrees);
        let offset = s.peers[&2].offset_ms.unwrap();
        assert!((offset - 3.0).abs() < 0.01, "{offset}");
    }

    #[test]
    fn the_node_that_disagrees_with_everyone_is_fenced() {
        let w = watch();
        let mono = Instant::now();
        probe(&w, 1, 100 * SEC, mono, -60 * SEC);
        probe(&w, 2, 100 * SEC, mono, -60 * SEC - 2_000);
        let s = w.assess(
            3,
            &[1, 2, 3],
            100 * SEC + 2_000,
            mono + Duration::from_millis(2),
        );
        assert!(!s.synchronized);
        assert_eq!(s.disagreeing_voters, 2);
    }

    #[test]
    fn two_clocks_off_in_different_ways_fence_everyone() {
        let w = watch();
        let mono = Instant::now();
        probe(&w, 2, 100 * SEC, mono, 30 * SEC);
        probe(&w, 3, 100 * SEC, mono, -50 * SEC);
        let s = w.assess(
            1,
            &[1, 2, 3],
            100 * SEC + 2_000,
            mono + Duration::from_millis(2),
        );
        assert!(!s.synchronized);
    }

    #[test]
    fn a_jump_of_our_own_clock_counts_at_once() {
        let w = watch();
        let mono = Instant::now();
        probe(&w, 2, 100 * SEC, mono, 0);
        probe(&w, 3, 100 * SEC, mono, 0);
        let later = mono + Duration::from_millis(100);
        let steady = w.assess(1, &[1, 2, 3], 100 * SEC + 100_000, later);
        assert!(steady.synchronized);
        assert_eq!(steady.peers[&2].verdict, Verdict::Agrees);
        // Same monotonic instant, wall clock a day ahead: both peers now look a day behind.
        let jumped = w.assess(1, &[1, 2, 3], 100 * SEC + 100_000 + 86_400 * SEC, later);
        assert!(!jumped.synchronized);
        let offset = jumped.peers[&2].offset_ms.unwrap();
        assert!((offset + 86_400_000.0).abs() < 1.0, "{offset}");
    }

    #[test]
    fn a_probe_after_our_clock_jumped_outranks_the_samples_before_it() {
        // `peer_ahead`: how far the peers' clocks are from ours after the jump, as the first
        // probe after it measures.
        let after_jump = |peer_ahead: i64| {
            let w = watch();
            let mono = Instant::now();
            // Sharp samples before the jump: peers agree.
            probe(&w, 2, 100 * SEC, mono, 0);
            probe(&w, 3, 100 * SEC, mono, 0);
            // Our wall clock jumps 21 s ahead of the monotonic clock: until a probe answers,
            // that reads as our clock being off.
            let jumped_at = mono + Duration::from_millis(100);
            let jumped = 121 * SEC + 100_000;
            assert!(!w.assess(1, &[1, 2, 3], jumped, jumped_at).synchronized);
            // Probes after the jump, over a slower link than before.
            let t = jumped_at + Duration::from_millis(250);
            let sent = jumped + 250_000;
            for peer in [2, 3] {
                let back = t + Duration::from_millis(4);
                w.record(peer, sent, t, sent + 2_000 + peer_ahead, back);
            }
            w.assess(1, &[1, 2, 3], sent + 4_000, t + Duration::from_millis(4))
        };
        // Every clock jumped together (a resumed VM host whose clock caught up): the probes
        // find the peers where our clock now is, and they decide.
        let shared = after_jump(0);
        assert!(shared.synchronized, "{shared:?}");
        assert_eq!(shared.peers[&2].verdict, Verdict::Agrees);
        // Our clock alone stepped: the probes after it measure the step.
        let alone = after_jump(-21 * SEC);
        assert!(!alone.synchronized, "{alone:?}");
        let offset = alone.peers[&2].offset_ms.unwrap();
        assert!((offset + 21_000.0).abs() < 1.0, "{offset}");
    }

    #[test]
    fn stale_samples_say_nothing() {
        let w = watch();
        let mono = Instant::now();
        probe(&w, 2, 100 * SEC, mono, 60 * SEC);
        probe(&w, 3, 100 * SEC, mono, 60 * SEC);
        let fresh = w.assess(1, &[1, 2, 3], 100 * SEC, mono + Duration::from_millis(2));
        assert!(!fresh.synchronized);
        let later = mono + Duration::from_secs(4);
        let s = w.assess(1, &[1, 2, 3], 104 * SEC, later);
        assert!(s.synchronized);
        assert_eq!(s.peers[&2].verdict, Verdict::Unknown);
        assert_eq!(s.peers[&2].age_ms, Some(3_998));
    }

    #[test]
    fn a_slow_round_trip_cannot_tell() {
        let w = watch();
        let mono = Instant::now();
        // 900 ms round trip: +-450 ms of doubt around a 100 ms offset.
        w.record(
            2,
            0,
            mono,
            100_000 + 450_000,
            mono + Duration::from_millis(900),
        );
        // 900 ms round trip around a 10 s offset: that is skew whatever the doubt.
        w.record(
            3,
            0,
            mono,
            10_000_000 + 450_000,
            mono + Duration::from_millis(900),
        );
        let s = w.assess(1, &[1, 2, 3], 900_000, mono + Duration::from_millis(900));
        assert_eq!(s.peers[&2].verdict, Verdict::Unknown);
        assert_eq!(s.peers[&3].verdict, Verdict::Disagrees);
    }

    #[test]
    fn the_sharpest_recent_sample_decides() {
        let w = watch();
        let mono = Instant::now();
        probe(&w, 2, 0, mono, 0);
        // A later probe over a jittery link: 900 ms round trip.
        let t = mono + Duration::from_millis(250);
        w.record(
            2,
            250_000,
            t,
            250_000 + 450_000,
            t + Duration::from_millis(900),
        );
        let now = t + Duration::from_millis(900);
        let s = w.assess(1, &[1, 2, 3], 1_150_000, now);
        assert_eq!(s.peers[&2].verdict, Verdict::Agrees);
        assert!(s.peers[&2].uncertainty_ms.unwrap() < 2.0);
    }

    #[test]
    fn learners_do_not_count() {
        let w = watch();
        let mono = Instant::now();
        probe(&w, 4, 0, mono, 60 * SEC);
        probe(&w, 5, 0, mono, 60 * SEC);
        let s = w.assess(1, &[1, 2, 3], 2_000, mono + Duration::from_millis(2));
        assert!(s.synchronized);
        assert_eq!(s.peers[&4].verdict, Verdict::Disagrees);
    }

    #[test]
    fn stamps_from_the_future_are_refused_and_old_ones_only_within_transit() {
        let max = Duration::from_millis(500);
        let transit = Duration::from_secs(10);
        let now = 1_000 * SEC;
        assert!(stamp_acceptable(now + 400_000, now, max, transit));
        assert!(!stamp_acceptable(now + 600_000, now, max, transit));
        assert!(stamp_acceptable(now - 10 * SEC, now, max, transit));
        assert!(!stamp_acceptable(now - 11 * SEC, now, max, transit));
    }
}
