//! A tenant's circuit breaker: closed → open → half-open → closed.
//!
//! ```text
//!            credentials error, or
//!            BREAKER_SERVER_ERRORS_MAX 5xx in a row
//!   Closed ───────────────────────────────────────▶ Open { until }
//!     ▲                                              │ open_for elapsed
//!     │ probe answered without a 5xx                 ▼
//!     └──────────────────────────────────────── HalfOpen (one probe at a time)
//!                     probe failed: back to Open ◀──┘
//! ```
//! While open nothing is sent: the shards keep the pushes queued (they only expire).
//! Time is `tokio::time::Instant`, which paused time (tests, simulation) drives.
//!
//! ```
//! use std::time::Duration;
//! use herald_actors::breaker::{Admission, Breaker, BreakerState};
//! use tokio::time::Instant;
//!
//! let mut b = Breaker::new(2, Duration::from_secs(5), Duration::from_secs(30));
//! let t0 = Instant::now();
//! b.on_server_error(t0);
//! b.on_server_error(t0);
//! assert_eq!(b.state(), BreakerState::Open);
//! assert!(matches!(b.admit(t0), Admission::Denied { .. }));
//! let later = t0 + Duration::from_secs(5);
//! assert_eq!(b.admit(later), Admission::Probe);
//! assert!(matches!(b.admit(later), Admission::Denied { .. }));
//! b.on_success();
//! assert_eq!(b.state(), BreakerState::Closed);
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Sending normally.
    Closed,
    /// Sending one probe at a time.
    HalfOpen,
    /// Not sending.
    Open,
}

impl BreakerState {
    /// The value of the `herald_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// May a push be sent now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes.
    Allowed,
    /// Yes, as the half-open probe: its answer decides whether the breaker closes.
    Probe,
    /// No; ask again after `retry_in`.
    Denied {
        /// When asking again may succeed.
        retry_in: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed { server_errors: u32 },
    Open { until: Instant },
    HalfOpen { probe_sent: Option<Instant> },
}

/// The breaker. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Breaker {
    inner: Inner,
    server_errors_max: u32,
    open_for: Duration,
    probe_timeout: Duration,
}

impl Breaker {
    /// A closed breaker that opens after `server_errors_max` 5xx in a row, stays open
    /// `open_for`, and lets another probe through when one is unanswered after `probe_timeout`.
    ///
    /// # Panics
    /// If `server_errors_max` is zero.
    #[track_caller]
    pub fn new(server_errors_max: u32, open_for: Duration, probe_timeout: Duration) -> Self {
        assert!(
            server_errors_max > 0,
            "Breaker: server_errors_max must be > 0"
        );
        Breaker {
            inner: Inner::Closed { server_errors: 0 },
            server_errors_max,
            open_for,
            probe_timeout,
        }
    }

    /// The state now (an open breaker whose time is up still reads `Open` until admitted).
    pub fn state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Ask to send one push at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.inner {
            Inner::Closed { .. } => Admission::Allowed,
            Inner::Open { until } if now < until => Admission::Denied {
                retry_in: until - now,
            },
            Inner::Open { .. } => {
                self.inner = Inner::HalfOpen {
                    probe_sent: Some(now),
                };
                Admission::Probe
            }
            Inner::HalfOpen { probe_sent } => match probe_sent {
                Some(sent) if now < sent + self.probe_timeout => Admission::Denied {
                    retry_in: self.open_for.min(sent + self.probe_timeout - now),
                },
                _ => {
                    self.inner = Inner::HalfOpen {
                        probe_sent: Some(now),
                    };
                    Admission::Probe
                }
            },
        }
    }

    /// A push was answered without a server or credentials error.
    pub fn on_success(&mut self) {
        match self.inner {
            Inner::Closed { .. } | Inner::HalfOpen { .. } => {
                self.inner = Inner::Closed { server_errors: 0 };
            }
            // An answer to a push sent before the breaker opened: no news.
            Inner::Open { .. } => {}
        }
    }

    /// A probe came back without an answer (not sent): let the next push probe.
    pub fn on_probe_unanswered(&mut self) {
        if let Inner::HalfOpen { .. } = self.inner {
            self.inner = Inner::HalfOpen { probe_sent: None };
        }
    }

    /// APNs answered 500/503 at `now`.
    pub fn on_server_error(&mut self, now: Instant) {
        match self.inner {
            Inner::Closed { server_errors } => {
                let server_errors = server_errors + 1;
                self.inner = if server_errors >= self.server_errors_max {
                    self.open_until(now)
                } else {
                    Inner::Closed { server_errors }
                };
            }
            Inner::HalfOpen { .. } => self.inner = self.open_until(now),
            Inner::Open { .. } => {}
        }
    }

    /// APNs refused the credentials at `now`: open (again) whatever the state.
    pub fn on_credentials_error(&mut self, now: Instant) {
        self.inner = self.open_until(now);
    }

    /// Close the breaker at once (new credentials were installed).
    pub fn reset(&mut self) {
        self.inner = Inner::Closed { server_errors: 0 };
    }

    fn open_until(&self, now: Instant) -> Inner {
        Inner::Open {
            until: now + self.open_for,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_open_at_once_and_failed_probe_reopens() {
        let mut b = Breaker::new(10, Duration::from_secs(1), Duration::from_secs(3));
        let t = Instant::now();
        b.on_credentials_error(t);
        assert_eq!(b.state(), BreakerState::Open);
        let t1 = t + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admission::Probe);
        b.on_server_error(t1);
        assert_eq!(b.state(), BreakerState::Open);
        // An unanswered probe lets another one through after the probe timeout.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(b.admit(t2), Admission::Probe);
        assert!(matches!(b.admit(t2), Admission::Denied { .. }));
        assert_eq!(b.admit(t2 + Duration::from_secs(3)), Admission::Probe);
        // A success between errors resets the count.
        b.on_success();
        for _ in 0..9 {
            b.on_server_error(t2);
        }
        b.on_success();
        b.on_server_error(t2);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
