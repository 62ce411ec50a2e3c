//! Fault injection: what goes wrong, how often, drawn from the emulator's seeded RNG.

use std::time::Duration;

use herald_actors::apns::Reason;
use herald_actors::seams::{DetRng, Timestamp};
use serde::{Deserialize, Serialize};

/// A fault profile: every knob defaults to "no fault". Loadable from TOML, changeable at
/// run time ([`super::EmulatorCore::set_faults`], `PUT /faults`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FaultProfile {
    /// Delay before every response.
    pub latency: Latency,
    /// Probability of 429 `TooManyRequests` per request.
    pub too_many_requests_rate: f64,
    /// Probability of 500 `InternalServerError` per request.
    pub internal_server_error_rate: f64,
    /// Probability of 503 `ServiceUnavailable` per request.
    pub service_unavailable_rate: f64,
    /// Bursts of one answer; a burst starts when the profile is applied.
    pub bursts: Vec<Burst>,
    /// Send GOAWAY on a connection after it has carried this many streams.
    pub goaway_after_streams: Option<u64>,
    /// Send GOAWAY on every connection this often (milliseconds).
    pub goaway_every_ms: Option<u64>,
    /// Probability of resetting a stream with `REFUSED_STREAM` before processing it.
    pub refused_stream_rate: f64,
    /// Probability, per request, of closing the connection abruptly (no answer, no GOAWAY).
    pub connection_drop_rate: f64,
    /// A connection idle longer than this (milliseconds) answers its next request
    /// 400 `IdleTimeout` and sends GOAWAY.
    pub idle_timeout_ms: Option<u64>,
    /// Probability that a response is slow.
    pub slow_response_rate: f64,
    /// The extra delay of a slow response (milliseconds).
    pub slow_response_ms: u64,
}

impl FaultProfile {
    /// Parse a fault profile from TOML (the `[faults]` table's contents).
    pub fn from_toml(text: &str) -> Result<Self, super::EmulatorError> {
        let profile: FaultProfile =
            toml::from_str(text).map_err(|e| super::EmulatorError::Config(e.to_string()))?;
        profile.validate()?;
        Ok(profile)
    }

    /// Check that every rate is a probability (finite, within 0..=1).
    pub fn validate(&self) -> Result<(), super::EmulatorError> {
        let rates = [
            ("too_many_requests_rate", self.too_many_requests_rate),
            (
                "internal_server_error_rate",
                self.internal_server_error_rate,
            ),
            ("service_unavailable_rate", self.service_unavailable_rate),
            ("refused_stream_rate", self.refused_stream_rate),
            ("connection_drop_rate", self.connection_drop_rate),
            ("slow_response_rate", self.slow_response_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(super::EmulatorError::Config(format!(
                    "faults.{name} = {rate} is not a probability in 0..=1"
                )));
            }
        }
        Ok(())
    }

    /// Read a fault profile from a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, super::EmulatorError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| super::EmulatorError::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text)
    }
}

/// A latency distribution (delay before each response).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Latency {
    /// No added delay.
    #[default]
    None,
    /// Always `ms`.
    Fixed {
        /// The delay (milliseconds).
        ms: u64,
    },
    /// Uniform in `min_ms..=max_ms`.
    Uniform {
        /// Smallest delay (milliseconds).
        min_ms: u64,
        /// Largest delay (milliseconds).
        max_ms: u64,
    },
    /// Piecewise uniform through the given percentiles: 0..p50 for half the requests,
    /// p50..p90 for 40 %, p90..p99 for 9 %, p99..max for 1 %.
    Percentiles {
        /// Median (milliseconds).
        p50_ms: u64,
        /// 90th percentile (milliseconds).
        p90_ms: u64,
        /// 99th percentile (milliseconds).
        p99_ms: u64,
        /// Maximum (milliseconds).
        max_ms: u64,
    },
}

impl Latency {
    pub(crate) fn draw(self, rng: &mut DetRng) -> Duration {
        let between = |rng: &mut DetRng, lo: u64, hi: u64| {
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            lo + rng.below((hi - lo).saturating_add(1))
        };
        let ms = match self {
            Latency::None => 0,
            Latency::Fixed { ms } => ms,
            Latency::Uniform { min_ms, max_ms } => between(rng, min_ms, max_ms),
            Latency::Percentiles {
                p50_ms,
                p90_ms,
                p99_ms,
                max_ms,
            } => {
                let u = rng.below(1000);
                match u {
                    0..500 => between(rng, 0, p50_ms),
                    500..900 => between(rng, p50_ms, p90_ms),
                    900..990 => between(rng, p90_ms, p99_ms),
                    _ => between(rng, p99_ms, max_ms),
                }
            }
        };
        Duration::from_millis(ms)
    }
}

/// A burst: every request answered with `reason` (its status follows from it) while the
/// burst lasts. It lasts `requests` requests and/or `duration_ms` from when the profile is
/// applied (by the emulator's clock); with neither set it lasts until the profile changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// The answer, e.g. `ServiceUnavailable`, `Shutdown`, `InternalServerError`, `TooManyRequests`.
    #[serde(with = "reason_serde")]
    pub reason: Reason,
    /// How many requests the burst answers.
    #[serde(default)]
    pub requests: Option<u64>,
    /// How long the burst lasts (milliseconds).
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// Serialize a [`Reason`] as Apple's string.
pub(crate) mod reason_serde {
    use herald_actors::apns::Reason;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.as_str())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the faults decided for one stream, drawn when the stream is accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamPlan {
    pub(crate) refuse: bool,
    pub(crate) drop_connection: bool,
    pub(crate) delay: Duration,
    pub(crate) injected: Option<Reason>,
    pub(crate) generated_id: uuid::Uuid,
    pub(crate) unique_id: uuid::Uuid,
}

/// A profile in force, with the progress of its bursts.
#[derive(Debug, Default)]
pub(crate) struct ActiveFaults {
    pub(crate) profile: FaultProfile,
    applied_at: Timestamp,
    burst_used: Vec<u64>,
}

impl ActiveFaults {
    pub(crate) fn new(profile: FaultProfile, now: Timestamp) -> Self {
        let burst_used = vec![0; profile.bursts.len()];
        ActiveFaults {
            profile,
            applied_at: now,
            burst_used,
        }
    }

    /// Draw the plan for one stream. The number of draws is fixed per stream, so every
    /// stream consumes the RNG alike whatever the profile.
    pub(crate) fn plan(&mut self, rng: &mut DetRng, now: Timestamp) -> StreamPlan {
        let p = &self.profile;
        let generated_id = rng.uuid();
        let unique_id = rng.uuid();
        let refuse = rng.chance(p.refused_stream_rate);
        let drop_connection = rng.chance(p.connection_drop_rate);
        let mut delay = p.latency.draw(rng);
        if rng.chance(p.slow_response_rate) {
            delay = delay.saturating_add(Duration::from_millis(p.slow_response_ms));
        }
        let r429 = rng.chance(p.too_many_requests_rate);
        let r500 = rng.chance(p.internal_server_error_rate);
        let r503 = rng.chance(p.service_unavailable_rate);
        let mut injected = None;
        if !refuse && !drop_connection {
            for (burst, used) in p.bursts.iter().zip(self.burst_used.iter_mut()) {
                let in_time = burst
                    .duration_ms
                    .is_none_or(|d| now.since(self.applied_at) < Duration::from_millis(d));
                let in_count = burst.requests.is_none_or(|n| *used < n);
                if in_time && in_count {
                    *used += 1;
                    injected = Some(burst.reason);
                    break;
                }
            }
            if injected.is_none() {
                injected = if r503 {
                    Some(Reason::ServiceUnavailable)
                } else if r500 {
                    Some(Reason::InternalServerError)
                } else if r429 {
                    Some(Reason::TooManyRequests)
                } else {
                    None
                };
            }
        }
        StreamPlan {
            refuse,
            drop_connection,
            delay,
            injected,
            generated_id,
            unique_id,
        }
    }
}
