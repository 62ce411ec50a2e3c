//! How every push ends: [`PushId`], [`Outcome`], the bounded [`OutcomeStore`] behind
//! `Herald::outcome`, and the [`Invalidation`]s streamed when APNs says a token is gone.
//!
//! Every accepted push ends with exactly one outcome.
//!
//! ```
//! use herald_actors::outcome::{Outcome, OutcomeStore, PushId};
//!
//! let store = OutcomeStore::new(2);
//! let (a, b, c) = (PushId::from_u128(1), PushId::from_u128(2), PushId::from_u128(3));
//! store.record(a, Outcome::Expired);
//! store.record(b, Outcome::Expired);
//! store.record(c, Outcome::Expired);
//! assert_eq!(store.get(a), None); // the oldest is forgotten
//! assert_eq!(store.get(c), Some(Outcome::Expired));
//! assert_eq!(a.to_string(), "00000000-0000-0000-0000-000000000001");
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use crate::apns::{ApnsId, DeviceToken, Reason};
use crate::seams::Timestamp;

/// A push's id: a UUID, also sent as its `apns-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PushId(u128);

impl PushId {
    /// The id with this numeric value.
    pub const fn from_u128(value: u128) -> Self {
        PushId(value)
    }

    /// The numeric value (the WAL's record id).
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The id as an `apns-id`.
    pub fn apns_id(self) -> ApnsId {
        ApnsId::from(uuid::Uuid::from_u128(self.0))
    }
}

impl From<ApnsId> for PushId {
    fn from(id: ApnsId) -> Self {
        PushId(id.as_uuid().as_u128())
    }
}

impl fmt::Display for PushId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_u128(self.0).hyphenated(), f)
    }
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// APNs accepted it (200).
    Delivered {
        /// The `apns-id` APNs answered with.
        apns_id: Option<String>,
    },
    /// The device token is no longer valid: APNs said so (410) or its invalidation was
    /// already known, in which case the push was not sent.
    Unregistered {
        /// When the token stopped being valid (Apple's timestamp).
        at: Timestamp,
    },
    /// It failed for good.
    Failed {
        /// Why.
        reason: Failure,
    },
    /// Its `apns-expiration` passed before it could be delivered.
    Expired,
    /// A newer push with the same collapse id to the same device replaced it before it was sent.
    Coalesced {
        /// The push that replaced it.
        by: PushId,
    },
}

impl Outcome {
    /// The `outcome` label of `herald_pushes_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Unregistered { .. } => "unregistered",
            Outcome::Failed { .. } => "failed",
            Outcome::Expired => "expired",
            Outcome::Coalesced { .. } => "coalesced",
        }
    }

    /// The `reason` label of `herald_pushes_total` (empty when there is none).
    pub fn reason_label(&self) -> String {
        match self {
            Outcome::Failed { reason } => reason.label(),
            _ => String::new(),
        }
    }
}

/// Why a push failed for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// APNs rejected it permanently (a request bug, a bad token, a token for another topic).
    #[error("rejected by APNs: {0}")]
    Rejected(Reason),
    /// Every allowed attempt failed; the last failure is given.
    #[error("attempts exhausted; last: {0}")]
    AttemptsExhausted(String),
    /// Its tenant was removed before it could be sent.
    #[error("tenant removed")]
    TenantRemoved,
    /// The push could not be read back from the write-ahead log.
    #[error("unreadable WAL record: {0}")]
    Unreadable(String),
}

impl Failure {
    fn label(&self) -> String {
        match self {
            Failure::Rejected(r) => r.as_str().to_owned(),
            Failure::AttemptsExhausted(_) => "attempts_exhausted".into(),
            Failure::TenantRemoved => "tenant_removed".into(),
            Failure::Unreadable(_) => "unreadable".into(),
        }
    }
}

/// One finished push, as streamed by `Herald::outcomes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeRecord {
    /// The push.
    pub push_id: PushId,
    /// Its tenant.
    pub tenant: String,
    /// Its device token.
    pub device_token: DeviceToken,
    /// How it ended.
    pub outcome: Outcome,
    /// Sends that reached (or may have reached) APNs.
    pub attempts: u32,
}

/// APNs said a device token is no longer valid (410), as of `at` (Apple's timestamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The tenant whose push learned it.
    pub tenant: String,
    /// The token.
    pub device_token: DeviceToken,
    /// When it stopped being valid.
    pub at: Timestamp,
}

/// The last outcomes, bounded: the oldest are forgotten first.
#[derive(Debug)]
pub struct OutcomeStore {
    kept_max: usize,
    inner: Mutex<StoreInner>,
}

#[derive(Debug, Default)]
struct StoreInner {
    by_id: BTreeMap<PushId, Outcome>,
    order: VecDeque<PushId>,
}

impl OutcomeStore {
    /// A store keeping at most `kept_max` outcomes.
    ///
    /// # Panics
    /// If `kept_max` is zero.
    #[track_caller]
    pub fn new(kept_max: usize) -> Self {
        assert!(kept_max > 0, "OutcomeStore: kept_max must be > 0");
        OutcomeStore {
            kept_max,
            inner: Mutex::new(StoreInner::default()),
        }
    }

    /// Remember `outcome` for `id` (replacing an older one).
    pub fn record(&self, id: PushId, outcome: Outcome) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.by_id.insert(id, outcome).is_none() {
            inner.order.push_back(id);
        }
        while inner.order.len() > self.kept_max {
            if let Some(old) = inner.order.pop_front() {
                inner.by_id.remove(&old);
            }
        }
    }

    /// The outcome of `id`, if it is known and still kept.
    pub fn get(&self, id: PushId) -> Option<Outcome> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.by_id.get(&id).cloned()
    }

    /// How many outcomes are kept.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .order
            .len()
    }

    /// True when no outcome is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
