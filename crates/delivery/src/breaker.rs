//! A circuit breaker per push endpoint.
//!
//! When a receiver is down, every due push to it would fail, burn an attempt and add load to
//! a service that is trying to come back. After `threshold` consecutive failures the breaker
//! opens: nothing is pushed (and no attempt is spent) until a cool-down passes; then exactly
//! one probe goes out. A successful probe closes it; a failed one opens it again for twice
//! the cool-down, up to a cap. The breaker is leader-local memory: a new leader starts closed,
//! which costs at most `threshold` failed pushes.
//!
//! Time is passed in, so the state machine is tested without a clock.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// The first cool-down; it doubles after each failed probe.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            threshold: 5,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { cooldown: Duration, probing: bool },
}

/// Whether a push may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: push.
    Yes,
    /// Half-open: this push is the single probe; report its result.
    Probe,
    /// Open: try again at `until`.
    Until(Instant),
    /// Half-open with the probe still out: wait for its result.
    ProbeOut,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: State::Closed { failures: 0 },
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Yes,
            State::Open { until, cooldown } if now >= until => {
                self.state = State::HalfOpen {
                    cooldown,
                    probing: true,
                };
                Admit::Probe
            }
            State::Open { until, .. } => Admit::Until(until),
            State::HalfOpen { probing: true, .. } => Admit::ProbeOut,
            State::HalfOpen {
                cooldown,
                probing: false,
            } => {
                self.state = State::HalfOpen {
                    cooldown,
                    probing: true,
                };
                Admit::Probe
            }
        }
    }

    /// A push reached a healthy receiver: any evidence of recovery closes the breaker.
    pub fn success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// A push failed in a way that says the receiver is unhealthy.
    pub fn failure(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failures } if failures + 1 >= self.config.threshold => State::Open {
                until: now + self.config.cooldown,
                cooldown: self.config.cooldown,
            },
            State::Closed { failures } => State::Closed {
                failures: failures + 1,
            },
            State::HalfOpen { cooldown, .. } => {
                let cooldown = cooldown.saturating_mul(2).min(self.config.max_cooldown);
                State::Open {
                    until: now + cooldown,
                    cooldown,
                }
            }
            // A push admitted before the breaker opened failed late: already open.
            open @ State::Open { .. } => open,
        };
    }

    /// An admitted probe was not sent after all (the delivery lost a race): let the next
    /// push be the probe.
    pub fn abandon(&mut self) {
        if let State::HalfOpen { cooldown, .. } = self.state {
            self.state = State::HalfOpen {
                cooldown,
                probing: false,
            };
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            threshold: 3,
            cooldown: 2 * S,
            max_cooldown: 5 * S,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let t = Instant::now();
        let mut b = breaker();
        b.failure(t);
        b.failure(t);
        b.success();
        b.failure(t);
        b.failure(t);
        assert_eq!(b.admit(t), Admit::Yes, "a success reset the count");
        b.failure(t);
        assert!(b.is_open());
        assert_eq!(b.admit(t + S), Admit::Until(t + 2 * S));
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let t = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.failure(t));
        assert_eq!(b.admit(t + 2 * S), Admit::Probe);
        assert_eq!(b.admit(t + 2 * S), Admit::ProbeOut);
        assert_eq!(b.admit(t + 3 * S), Admit::ProbeOut);
        b.success();
        assert_eq!(b.admit(t + 3 * S), Admit::Yes);
        assert!(!b.is_open());
    }

    #[test]
    fn failed_probes_double_the_cooldown_up_to_the_cap() {
        let t = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.failure(t));
        let mut now = t;
        let mut expected = 2 * S;
        for _ in 0..4 {
            assert_eq!(b.admit(now), Admit::Until(now + expected));
            now += expected;
            assert_eq!(b.admit(now), Admit::Probe);
            b.failure(now);
            expected = (expected * 2).min(5 * S);
        }
        assert_eq!(b.admit(now), Admit::Until(now + 5 * S));
    }

    #[test]
    fn an_abandoned_probe_hands_the_probe_on() {
        let t = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.failure(t));
        assert_eq!(b.admit(t + 2 * S), Admit::Probe);
        b.abandon();
        assert_eq!(b.admit(t + 2 * S), Admit::Probe);
        assert_eq!(b.admit(t + 2 * S), Admit::ProbeOut);
    }

    #[test]
    fn a_late_failure_keeps_it_open_without_extending() {
        let t = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.failure(t));
        b.failure(t + S);
        assert_eq!(b.admit(t + S), Admit::Until(t + 2 * S));
    }
}
