//! The device registry: what APNs knows about each device token.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use herald_actors::apns::Reason;
use herald_actors::seams::Timestamp;
use serde::{Deserialize, Serialize};

/// The state of one device token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeviceState {
    /// The token is active; if `topic` is set, only for that bundle id (else
    /// `DeviceTokenNotForTopic`).
    Valid {
        /// The bundle id the token belongs to, if bound.
        #[serde(default)]
        topic: Option<String>,
    },
    /// The app was removed at `at_ms`: answer 410 `Unregistered` with that timestamp.
    Unregistered {
        /// When the token stopped being valid (ms since the epoch).
        at_ms: u64,
    },
    /// The token expired at `at_ms`: answer 410 `ExpiredToken` with that timestamp.
    Expired {
        /// When the token expired (ms since the epoch).
        at_ms: u64,
    },
    /// The token is not valid (or is for the other environment): 400 `BadDeviceToken`.
    Bad,
}

/// A device token and its state, as configured or set over the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// The device token (hex; compared case-insensitively).
    pub token: String,
    /// Its state.
    #[serde(flatten)]
    pub state: DeviceState,
}

/// What to answer for a token the registry does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnknownTokenPolicy {
    /// Accept it (200).
    #[default]
    Accept,
    /// 400 `BadDeviceToken`.
    Bad,
    /// 410 `Unregistered`, timestamped now.
    Unregistered,
}

/// More than `max_pushes` to one token within `window_ms` → 429 `TooManyRequests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRateLimit {
    /// Pushes allowed per window.
    pub max_pushes: u32,
    /// The window (milliseconds).
    pub window_ms: u64,
}

/// The registry: token states plus per-token recent push times.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    states: BTreeMap<String, DeviceState>,
    recent: BTreeMap<String, VecDeque<Timestamp>>,
    pub(crate) unknown: UnknownTokenPolicy,
    pub(crate) rate_limit: Option<DeviceRateLimit>,
}

impl Registry {
    pub(crate) fn set(&mut self, token: &str, state: DeviceState) {
        self.states.insert(token.to_ascii_lowercase(), state);
    }

    pub(crate) fn state(&self, token: &str) -> Option<&DeviceState> {
        self.states.get(&token.to_ascii_lowercase())
    }

    /// The answer for a push to `token` for bundle id `bundle` at `now`: `None` to accept,
    /// else the reason and (for 410) timestamp.
    pub(crate) fn check(
        &mut self,
        token: &str,
        bundle: &str,
        now: Timestamp,
    ) -> Option<(Reason, Option<Timestamp>)> {
        let token = token.to_ascii_lowercase();
        match self.states.get(&token) {
            Some(DeviceState::Bad) => return Some((Reason::BadDeviceToken, None)),
            Some(DeviceState::Unregistered { at_ms }) => {
                return Some((Reason::Unregistered, Some(Timestamp::from_millis(*at_ms))));
            }
            Some(DeviceState::Expired { at_ms }) => {
                return Some((Reason::ExpiredToken, Some(Timestamp::from_millis(*at_ms))));
            }
            Some(DeviceState::Valid { topic: Some(t) }) if t != bundle => {
                return Some((Reason::DeviceTokenNotForTopic, None));
            }
            Some(DeviceState::Valid { .. }) => {}
            None => match self.unknown {
                UnknownTokenPolicy::Accept => {}
                UnknownTokenPolicy::Bad => return Some((Reason::BadDeviceToken, None)),
                UnknownTokenPolicy::Unregistered => {
                    return Some((Reason::Unregistered, Some(now)));
                }
            },
        }
        if let Some(limit) = self.rate_limit {
            let window = Duration::from_millis(limit.window_ms);
            let times = self.recent.entry(token).or_default();
            while times.front().is_some_and(|t| now.since(*t) >= window) {
                times.pop_front();
            }
            if times.len() >= limit.max_pushes as usize {
                return Some((Reason::TooManyRequests, None));
            }
            times.push_back(now);
        }
        None
    }
}
