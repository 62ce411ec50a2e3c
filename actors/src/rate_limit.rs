//! A token bucket: a tenant's sending rate limit.
//!
//! The bucket holds at most `burst` tokens and refills at `per_second`; each push takes one.
//! Time is `tokio::time::Instant` (paused time drives it in tests and simulation).
//!
//! ```
//! use std::time::Duration;
//! use herald_actors::rate_limit::TokenBucket;
//! use tokio::time::Instant;
//!
//! let t0 = Instant::now();
//! let mut bucket = TokenBucket::new(10.0, 2, t0);
//! assert!(bucket.try_take(t0).is_ok());
//! assert!(bucket.try_take(t0).is_ok());
//! let wait = bucket.try_take(t0).unwrap_err();
//! assert_eq!(wait, Duration::from_millis(100));
//! assert!(bucket.try_take(t0 + wait).is_ok());
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// A tenant's rate limit: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Pushes per second, sustained.
    pub per_second: f64,
    /// Pushes allowed at once after an idle period.
    pub burst: u32,
}

/// A token bucket. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilling at `per_second`, as of `now`.
    ///
    /// # Panics
    /// If `per_second` is not positive and finite, or `burst` is zero.
    #[track_caller]
    pub fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        assert!(
            per_second.is_finite() && per_second > 0.0,
            "TokenBucket: per_second must be positive"
        );
        assert!(burst > 0, "TokenBucket: burst must be > 0");
        TokenBucket {
            per_second,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refilled_at: now,
        }
    }

    /// A bucket for `limit`.
    pub fn from_limit(limit: RateLimit, now: Instant) -> Self {
        TokenBucket::new(limit.per_second, limit.burst, now)
    }

    /// Take one token at `now`, or say how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            let millis = (missing / self.per_second * 1000.0).ceil();
            Err(Duration::from_millis(millis.max(1.0) as u64))
        }
    }
}
