//! Exponential backoff with full jitter, bounded by attempts and by `apns-expiration`.
//!
//! The ceiling for attempt `n` (1-based) is `base · 2^(n-1)`, capped at `max`; the delay is
//! drawn uniformly from `0..=ceiling` ("full jitter") from a [`DetRng`], so a fleet of retries
//! spreads out and the same seed gives the same delays.
//!
//! ```
//! use std::time::Duration;
//! use herald_actors::backoff::Backoff;
//! use herald_actors::seams::DetRng;
//!
//! let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
//! assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
//! assert_eq!(backoff.ceiling(3), Duration::from_millis(400));
//! assert_eq!(backoff.ceiling(30), Duration::from_secs(1));
//! let mut rng = DetRng::from_seed(1);
//! assert!(backoff.delay(3, &mut rng) <= Duration::from_millis(400));
//! ```

use std::time::Duration;

use crate::apns::Expiration;
use crate::seams::{DetRng, Timestamp};

/// An exponential backoff schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Ceilings starting at `base`, doubling per attempt, never above `max`.
    ///
    /// # Panics
    /// If `base` is zero or above `max`.
    #[track_caller]
    pub fn new(base: Duration, max: Duration) -> Self {
        assert!(!base.is_zero(), "Backoff: base must be > 0");
        assert!(base <= max, "Backoff: base must be <= max");
        Backoff { base, max }
    }

    /// The ceiling of the delay before attempt `attempt + 1` (after `attempt` failures, 1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// A delay drawn uniformly from `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32, rng: &mut DetRng) -> Duration {
        rng.jitter(self.ceiling(attempt))
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// The attempts are used up.
    Exhausted,
    /// The next attempt would come after the push's `apns-expiration`.
    Expired,
}

/// Decide on a retry after `attempts` failed attempts (counting the last one): a jittered delay,
/// unless `attempts` reached `attempts_max` or the delay would end past `expiration`.
///
/// [`Expiration::Immediately`] ("deliver once or drop") never retries.
///
/// ```
/// use std::time::Duration;
/// use herald_actors::apns::Expiration;
/// use herald_actors::backoff::{retry_decision, Backoff, RetryDecision};
/// use herald_actors::seams::{DetRng, Timestamp};
///
/// let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// let mut rng = DetRng::from_seed(7);
/// let now = Timestamp::from_secs(1000);
/// assert!(matches!(retry_decision(&b, 1, 8, now, None, &mut rng), RetryDecision::RetryAfter(_)));
/// assert_eq!(retry_decision(&b, 8, 8, now, None, &mut rng), RetryDecision::Exhausted);
/// let soon = Some(Expiration::At(Timestamp::from_secs(999)));
/// assert_eq!(retry_decision(&b, 1, 8, now, soon, &mut rng), RetryDecision::Expired);
/// ```
pub fn retry_decision(
    backoff: &Backoff,
    attempts: u32,
    attempts_max: u32,
    now: Timestamp,
    expiration: Option<Expiration>,
    rng: &mut DetRng,
) -> RetryDecision {
    if matches!(expiration, Some(Expiration::Immediately)) {
        return RetryDecision::Expired;
    }
    if attempts >= attempts_max {
        return RetryDecision::Exhausted;
    }
    let delay = backoff.delay(attempts, rng);
    match expiration {
        Some(e) if e.is_expired(now.saturating_add(delay)) => RetryDecision::Expired,
        _ => RetryDecision::RetryAfter(delay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_ceiling_and_repeat_per_seed() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
        let mut a = DetRng::from_seed(3);
        let mut c = DetRng::from_seed(3);
        for attempt in 1..20 {
            let d = b.delay(attempt, &mut a);
            assert!(d <= b.ceiling(attempt));
            assert_eq!(d, b.delay(attempt, &mut c));
        }
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(500));
    }
}
