//! Retry timing for failed pushes: exponential backoff with full jitter.
//!
//! Full jitter (a uniform draw between zero and the exponential ceiling) spreads the retries
//! of many intents that failed together, so a receiver coming back is not hit by all of them
//! in the same second. The draw happens on the leader and travels in the command as
//! `retry_at`, so every replica applies the same time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use intentd_lifecycle::Timestamp;

/// Backoff bounds: the ceiling of attempt `n` is `min(cap, base * 2^n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The upper bound of the delay after failed attempt `attempt` (1 for the first push).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A delay drawn uniformly from `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rng.gen_range(0..=ceiling))
    }

    /// When to try again after failed attempt `attempt`: the receiver's `Retry-After` when it
    /// sent one (held to the cap, so a receiver cannot park an intent for a year), otherwise
    /// the jittered backoff.
    pub fn retry_at(
        &self,
        now: Timestamp,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Timestamp {
        let delay = match retry_after {
            Some(asked) => asked.min(self.cap),
            None => self.delay(attempt, rng),
        };
        now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero())
    }
}

/// Reads a `Retry-After` value: delta seconds or an HTTP date (RFC 9110). A date in the past
/// means "now"; anything unreadable is ignored.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(1), Duration::from_secs(2));
        assert_eq!(b.ceiling(5), Duration::from_secs(32));
        assert_eq!(b.ceiling(8), Duration::from_secs(256));
        assert_eq!(b.ceiling(9), Duration::from_secs(300));
        assert_eq!(b.ceiling(40), Duration::from_secs(300));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..12 {
            let ceiling = b.ceiling(attempt);
            let draws: Vec<Duration> = (0..200).map(|_| b.delay(attempt, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: the draws cover the whole range, not just near the ceiling.
            assert!(draws.iter().any(|d| *d < ceiling / 4), "attempt {attempt}");
            assert!(
                draws.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn retry_after_wins_but_is_held_to_the_cap() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let now = Utc::now();
        let asked = b.retry_at(now, 1, Some(Duration::from_secs(7)), &mut rng);
        assert_eq!(asked - now, chrono::Duration::seconds(7));
        let greedy = b.retry_at(now, 1, Some(Duration::from_secs(86_400)), &mut rng);
        assert_eq!(greedy - now, chrono::Duration::seconds(300));
        let drawn = b.retry_at(now, 3, None, &mut rng);
        assert!(drawn >= now && drawn <= now + chrono::Duration::seconds(8));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
