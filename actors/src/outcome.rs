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

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::apns::{ApnsId, DeviceToken, Reason};
use crate::keyed::KeyMap;
use crate::seams::Timestamp;

/// A push's id: a UUID, also sent as its `apns-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PushId(u128);

impl PushId {
    /// The id with this numeric value.
    pub const fn from_u128(value: u128) -> Self {
        PushId(value)
    }

    /// The numeric value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The id as an `apns-id`.
    pub fn apns_id(self) -> ApnsId {
        ApnsId::from(uuid::Uuid::from_u128(self.0))
    }

    /// The push id an idempotency key stands for: the same `(tenant, key)` always gives the
    /// same id, so a request retried with the same `Idempotency-Key` is deduplicated by the
    /// engine (see `Herald::send_idempotent`).
    ///
    /// The id is the first 16 bytes of SHA-256 over a domain-separated, length-prefixed
    /// encoding of `tenant` and `key` (`"herald/idempotency-key/v1" ‖ 0 ‖ len(tenant) as u64
    /// big-endian ‖ tenant ‖ key`), with the UUID version (8, custom) and variant (RFC 9562)
    /// bits set, so it is a valid `apns-id`. The length prefix means no two different
    /// `(tenant, key)` pairs hash the same input: keys of different tenants never collide
    /// (short of a SHA-256 collision).
    ///
    /// ```
    /// use herald_actors::PushId;
    ///
    /// let a = PushId::from_idempotency_key("acme", "order-42");
    /// assert_eq!(a, PushId::from_idempotency_key("acme", "order-42"));
    /// assert_ne!(a, PushId::from_idempotency_key("globex", "order-42"));
    /// // Moving bytes between tenant and key gives another id.
    /// assert_ne!(
    ///     PushId::from_idempotency_key("ab", "c"),
    ///     PushId::from_idempotency_key("a", "bc")
    /// );
    /// let uuid = uuid::Uuid::from_u128(a.as_u128());
    /// assert_eq!(uuid.get_version_num(), 8);
    /// assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
    /// ```
    pub fn from_idempotency_key(tenant: &str, key: &str) -> Self {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(IDEMPOTENCY_DOMAIN);
        hash.update([0u8]);
        hash.update((tenant.len() as u64).to_be_bytes());
        hash.update(tenant.as_bytes());
        hash.update(key.as_bytes());
        let digest = hash.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        // Version 8 (custom, RFC 9562) in the high nibble of byte 6; variant 0b10 in byte 8.
        bytes[6] = (bytes[6] & 0x0F) | 0x80;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        PushId(u128::from_be_bytes(bytes))
    }
}

/// Domain separator of [`PushId::from_idempotency_key`].
const IDEMPOTENCY_DOMAIN: &[u8] = b"herald/idempotency-key/v1";

/// Domain separator of [`PushKey::new`].
const PUSH_KEY_DOMAIN: &[u8] = b"herald/push-key/v1";

/// The engine's key for one push: its tenant and its push id, hashed into 128 bits.
///
/// Push ids are chosen by callers (`apns-id`), so two tenants may use the same one: every
/// per-push map of a shard, the dedupe memory and the write-ahead log are keyed by this
/// instead, so such pushes never collide. It is the first 16 bytes of SHA-256 over
/// `"herald/push-key/v1" ‖ 0 ‖ len(tenant) as u64 big-endian ‖ tenant ‖ push id (16 bytes)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PushKey(u128);

impl PushKey {
    /// The key of push `id` of `tenant`.
    pub(crate) fn new(tenant: &str, id: PushId) -> Self {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(PUSH_KEY_DOMAIN);
        hash.update([0u8]);
        hash.update((tenant.len() as u64).to_be_bytes());
        hash.update(tenant.as_bytes());
        hash.update(id.as_u128().to_be_bytes());
        let digest = hash.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        PushKey(u128::from_be_bytes(bytes))
    }

    /// A key as stored in the write-ahead log.
    pub(crate) const fn from_u128(value: u128) -> Self {
        PushKey(value)
    }

    /// The numeric value (the write-ahead log's record id).
    pub(crate) const fn as_u128(self) -> u128 {
        self.0
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

/// The serializable form of an [`Outcome`], for what outlives the process or crosses a
/// network: the done markers of the write-ahead log and the cluster's outcome messages.
/// Free-text details are cut to [`StoredOutcome::DETAIL_BYTES_MAX`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum StoredOutcome {
    /// [`Outcome::Delivered`].
    Delivered {
        /// The `apns-id` APNs answered with.
        apns_id: Option<String>,
    },
    /// [`Outcome::Unregistered`].
    Unregistered {
        /// Apple's timestamp, in ms since the Unix epoch.
        at_ms: u64,
    },
    /// [`Failure::Rejected`], by APNs reason name.
    Rejected {
        /// The APNs reason.
        reason: String,
    },
    /// [`Failure::AttemptsExhausted`].
    AttemptsExhausted {
        /// The last failure.
        last: String,
    },
    /// [`Failure::TenantRemoved`].
    TenantRemoved,
    /// [`Failure::Unreadable`].
    Unreadable {
        /// Why.
        detail: String,
    },
    /// [`Outcome::Expired`].
    Expired,
    /// [`Outcome::Coalesced`].
    Coalesced {
        /// The replacing push's id, big-endian.
        by: [u8; 16],
    },
    /// [`Failure::NotAccepted`].
    NotAccepted {
        /// Why.
        detail: String,
    },
}

impl StoredOutcome {
    /// The longest free-text detail kept (bytes, cut at a character boundary).
    pub const DETAIL_BYTES_MAX: usize = 256;

    /// The outcome this stands for.
    ///
    /// # Errors
    /// An APNs reason this build does not know.
    pub fn to_outcome(&self) -> Result<Outcome, String> {
        let failed = |reason| Ok(Outcome::Failed { reason });
        match self {
            StoredOutcome::Delivered { apns_id } => Ok(Outcome::Delivered {
                apns_id: apns_id.clone(),
            }),
            StoredOutcome::Unregistered { at_ms } => Ok(Outcome::Unregistered {
                at: Timestamp::from_millis(*at_ms),
            }),
            StoredOutcome::Rejected { reason } => match reason.parse::<Reason>() {
                Ok(reason) => failed(Failure::Rejected(reason)),
                Err(_) => Err(format!("unknown APNs reason {reason:?}")),
            },
            StoredOutcome::AttemptsExhausted { last } => {
                failed(Failure::AttemptsExhausted(last.clone()))
            }
            StoredOutcome::TenantRemoved => failed(Failure::TenantRemoved),
            StoredOutcome::Unreadable { detail } => failed(Failure::Unreadable(detail.clone())),
            StoredOutcome::Expired => Ok(Outcome::Expired),
            StoredOutcome::Coalesced { by } => Ok(Outcome::Coalesced {
                by: PushId::from_u128(u128::from_be_bytes(*by)),
            }),
            StoredOutcome::NotAccepted { detail } => failed(Failure::NotAccepted(detail.clone())),
        }
    }
}

impl From<&Outcome> for StoredOutcome {
    fn from(outcome: &Outcome) -> Self {
        let cut = |text: &str| {
            let mut end = text.len().min(StoredOutcome::DETAIL_BYTES_MAX);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        };
        match outcome {
            Outcome::Delivered { apns_id } => StoredOutcome::Delivered {
                apns_id: apns_id.clone(),
            },
            Outcome::Unregistered { at } => StoredOutcome::Unregistered {
                at_ms: at.as_millis(),
            },
            Outcome::Failed { reason } => match reason {
                Failure::Rejected(reason) => StoredOutcome::Rejected {
                    reason: reason.as_str().to_owned(),
                },
                Failure::AttemptsExhausted(last) => {
                    StoredOutcome::AttemptsExhausted { last: cut(last) }
                }
                Failure::TenantRemoved => StoredOutcome::TenantRemoved,
                Failure::Unreadable(detail) => StoredOutcome::Unreadable {
                    detail: cut(detail),
                },
                Failure::NotAccepted(detail) => StoredOutcome::NotAccepted {
                    detail: cut(detail),
                },
            },
            Outcome::Expired => StoredOutcome::Expired,
            Outcome::Coalesced { by } => StoredOutcome::Coalesced {
                by: by.as_u128().to_be_bytes(),
            },
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
    /// The push was never accepted: its write-ahead log append failed after `send` stopped
    /// waiting for it (`send` answered [`PushError::OutcomeUnknown`](crate::PushError)).
    /// Nothing was queued or sent; sending it again is safe.
    #[error("not accepted: {0}")]
    NotAccepted(String),
}

impl Failure {
    fn label(&self) -> String {
        match self {
            Failure::Rejected(r) => r.as_str().to_owned(),
            Failure::AttemptsExhausted(_) => "attempts_exhausted".into(),
            Failure::TenantRemoved => "tenant_removed".into(),
            Failure::Unreadable(_) => "unreadable".into(),
            Failure::NotAccepted(_) => "not_accepted".into(),
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
///
/// Outcomes are kept per (tenant, push id): push ids are chosen by callers, so two tenants may
/// use the same one. [`get_for`](Self::get_for) answers for one tenant; [`get`](Self::get)
/// for whichever tenant recorded an outcome under the id last.
///
/// ```
/// use herald_actors::outcome::{Outcome, OutcomeStore, PushId};
///
/// let store = OutcomeStore::new(10);
/// let id = PushId::from_u128(7);
/// store.record_for("acme", id, Outcome::Expired);
/// assert_eq!(store.get_for("acme", id), Some(Outcome::Expired));
/// assert_eq!(store.get_for("globex", id), None);
/// assert_eq!(store.get(id), Some(Outcome::Expired));
/// ```
#[derive(Debug)]
pub struct OutcomeStore {
    kept_max: usize,
    inner: Mutex<StoreInner>,
}

#[derive(Debug, Default)]
struct StoreInner {
    /// The kept outcomes of each id, one per tenant, the one recorded last at the end. Only
    /// looked up, never iterated (so the map's order cannot leak into behaviour).
    by_id: KeyMap<PushId, Kept>,
    /// Eviction order: (id, tenant) in the order first recorded.
    order: VecDeque<(PushId, Arc<str>)>,
    /// The tenant name recorded last, shared by the next records of the same tenant (pushes
    /// come in bursts per tenant: one allocation per burst, not per push).
    last_tenant: Option<Arc<str>>,
}

/// The outcomes kept under one push id: almost always one tenant's, held inline (no
/// allocation); several tenants' in recording order, the latest last.
#[derive(Debug)]
enum Kept {
    One(Arc<str>, Outcome),
    Many(Vec<(Arc<str>, Outcome)>),
}

impl Kept {
    /// Replace `tenant`'s outcome, which becomes the latest; false if it has none here.
    fn replace(&mut self, tenant: &str, outcome: &Outcome) -> bool {
        match self {
            Kept::One(t, kept) if &**t == tenant => {
                *kept = outcome.clone();
                true
            }
            Kept::One(..) => false,
            Kept::Many(all) => match all.iter().position(|(t, _)| &**t == tenant) {
                Some(at) => {
                    let (t, _) = all.remove(at);
                    all.push((t, outcome.clone()));
                    true
                }
                None => false,
            },
        }
    }

    /// Add `tenant`'s outcome (it has none here), the latest.
    fn push(&mut self, tenant: Arc<str>, outcome: Outcome) {
        *self = match std::mem::replace(self, Kept::Many(Vec::new())) {
            Kept::One(t, kept) => Kept::Many(vec![(t, kept), (tenant, outcome)]),
            Kept::Many(mut all) => {
                all.push((tenant, outcome));
                Kept::Many(all)
            }
        };
    }

    /// Forget `tenant`'s outcome; true if none is left.
    fn forget(&mut self, tenant: &Arc<str>) -> bool {
        match self {
            Kept::One(t, _) => t == tenant,
            Kept::Many(all) => {
                all.retain(|(t, _)| t != tenant);
                all.is_empty()
            }
        }
    }

    /// The outcome recorded last.
    fn latest(&self) -> Option<&Outcome> {
        match self {
            Kept::One(_, outcome) => Some(outcome),
            Kept::Many(all) => all.last().map(|(_, outcome)| outcome),
        }
    }

    /// `tenant`'s outcome.
    fn of(&self, tenant: &str) -> Option<&Outcome> {
        match self {
            Kept::One(t, outcome) => (&**t == tenant).then_some(outcome),
            Kept::Many(all) => all
                .iter()
                .find(|(t, _)| &**t == tenant)
                .map(|(_, outcome)| outcome),
        }
    }
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

    /// Remember `outcome` for `id` with no tenant (replacing an older one).
    pub fn record(&self, id: PushId, outcome: Outcome) {
        self.record_for("", id, outcome);
    }

    /// Remember `outcome` for push `id` of `tenant` (replacing an older one).
    pub fn record_for(&self, tenant: &str, id: PushId, outcome: Outcome) {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *guard;
        let known = inner
            .by_id
            .get_mut(&id)
            .is_some_and(|kept| kept.replace(tenant, &outcome));
        if !known {
            // New for this tenant (and almost always for the id).
            let tenant = match &inner.last_tenant {
                Some(last) if &**last == tenant => Arc::clone(last),
                _ => {
                    let name: Arc<str> = Arc::from(tenant);
                    inner.last_tenant = Some(Arc::clone(&name));
                    name
                }
            };
            match inner.by_id.entry(id) {
                std::collections::hash_map::Entry::Occupied(mut kept) => {
                    kept.get_mut().push(Arc::clone(&tenant), outcome);
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(Kept::One(Arc::clone(&tenant), outcome));
                }
            }
            inner.order.push_back((id, tenant));
        }
        while inner.order.len() > self.kept_max {
            let Some((old, tenant)) = inner.order.pop_front() else {
                break;
            };
            if let Some(kept) = inner.by_id.get_mut(&old)
                && kept.forget(&tenant)
            {
                inner.by_id.remove(&old);
            }
        }
    }

    /// The outcome of `id`, if it is known and still kept: the one recorded last if several
    /// tenants used the id.
    pub fn get(&self, id: PushId) -> Option<Outcome> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.by_id.get(&id).and_then(Kept::latest).cloned()
    }

    /// The outcome of push `id` of `tenant`, if it is known and still kept.
    pub fn get_for(&self, tenant: &str, id: PushId) -> Option<Outcome> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.by_id.get(&id)?.of(tenant).cloned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_keep_their_own_outcomes_under_one_id() {
        let store = OutcomeStore::new(3);
        let id = PushId::from_u128(9);
        store.record_for("a", id, Outcome::Expired);
        store.record_for("b", id, Outcome::Delivered { apns_id: None });
        assert_eq!(store.get_for("a", id), Some(Outcome::Expired));
        assert_eq!(
            store.get(id),
            Some(Outcome::Delivered { apns_id: None }),
            "the latest"
        );
        // The oldest goes first: a's, then b's.
        store.record_for("c", PushId::from_u128(1), Outcome::Expired);
        store.record_for("c", PushId::from_u128(2), Outcome::Expired);
        assert_eq!(store.len(), 3);
        assert_eq!(store.get_for("a", id), None);
        assert_eq!(store.get(id), Some(Outcome::Delivered { apns_id: None }));
        store.record_for("c", PushId::from_u128(3), Outcome::Expired);
        assert_eq!(store.get(id), None);
    }

    #[test]
    fn recording_again_replaces_and_makes_latest_without_a_second_place() {
        let store = OutcomeStore::new(2);
        let id = PushId::from_u128(4);
        store.record_for("a", id, Outcome::Expired);
        store.record_for("b", id, Outcome::Expired);
        store.record_for("a", id, Outcome::Delivered { apns_id: None });
        assert_eq!(store.len(), 2, "a replacement takes no new place");
        assert_eq!(store.get(id), Some(Outcome::Delivered { apns_id: None }));
        assert_eq!(store.get_for("b", id), Some(Outcome::Expired));
        // a was recorded first: it goes first, although it was replaced last.
        store.record_for("c", PushId::from_u128(8), Outcome::Expired);
        assert_eq!(store.get_for("a", id), None);
        assert_eq!(store.get(id), Some(Outcome::Expired), "b's is what is left");
    }

    #[test]
    fn three_tenants_under_one_id_keep_their_order() {
        let store = OutcomeStore::new(4);
        let id = PushId::from_u128(3);
        let delivered = Outcome::Delivered { apns_id: None };
        store.record_for("a", id, Outcome::Expired);
        store.record_for("b", id, Outcome::Expired);
        store.record_for("c", id, Outcome::Expired);
        store.record_for("b", id, delivered.clone());
        assert_eq!(store.len(), 3);
        assert_eq!(store.get(id), Some(delivered.clone()), "b's, replaced last");
        assert_eq!(store.get_for("c", id), Some(Outcome::Expired));
        assert_eq!(store.get_for("d", id), None);
        // Evicted in the order first recorded: a, then b, then c.
        store.record_for("x", PushId::from_u128(10), Outcome::Expired);
        store.record_for("x", PushId::from_u128(11), Outcome::Expired);
        assert_eq!(store.get_for("a", id), None);
        assert_eq!(store.get(id), Some(delivered), "b's is still the latest");
        store.record_for("x", PushId::from_u128(12), Outcome::Expired);
        assert_eq!(store.get_for("b", id), None);
        assert_eq!(store.get(id), Some(Outcome::Expired), "c's is what is left");
        store.record_for("x", PushId::from_u128(13), Outcome::Expired);
        assert_eq!(store.get(id), None);
        assert_eq!(store.len(), 4);
    }

    #[test]
    fn push_keys_separate_tenants_and_ids() {
        let id = PushId::from_u128(5);
        assert_eq!(PushKey::new("a", id), PushKey::new("a", id));
        assert_ne!(PushKey::new("a", id), PushKey::new("b", id));
        assert_ne!(
            PushKey::new("a", id),
            PushKey::new("a", PushId::from_u128(6))
        );
        assert_ne!(PushKey::new("a", id).as_u128(), id.as_u128());
    }
}
