//! Device-token validity: may the shard send to this token?
//!
//! Three kinds of [`TokenEvent`] change a token's state, each stamped with a [`Timestamp`]:
//! the tenant registers a token (`POST /v1/devices`), unregisters it
//! (`DELETE /v1/devices/{token}`), or APNs reports it invalid (`410 Unregistered` with Apple's
//! `timestamp`). State is kept per [`TokenKey`] (tenant, token).
//!
//! # Last-writer-wins rules (DESIGN.md §5)
//!
//! An entry remembers the latest time of each kind of event ([`TokenEntry`]); its
//! [`TokenValidity`] follows from those three times:
//! - an invalidation at `T` beats every registration at or before `T`: the token is
//!   [`TokenValidity::Invalidated`] (a send is skipped with outcome `Unregistered`);
//! - a registration after `T` revives it: [`TokenValidity::Valid`];
//! - an unregistration at `U` cancels registrations at or before `U`, but never an
//!   invalidation: with no live registration and no standing invalidation the token is
//!   [`TokenValidity::Unknown`] (sends go ahead; APNs decides);
//! - **ties**: an invalidation and a registration at the same millisecond leave the token
//!   invalidated, and an unregistration beats a registration at the same millisecond. Both
//!   ties resolve to the side that sends less, which is the safe one.
//!
//! Because each time only ever grows, [`merge`] is a join: applying the same set of events in
//! any order, any number of times, gives the same entry (commutative, associative, idempotent).
//! A replicated implementation can therefore apply events as Raft commits them and every
//! replica agrees at equal applied index. [`TokenTable`] is that deterministic state machine,
//! bounds included; [`MemoryTokenState`] wraps it for a single process.
//!
//! # Bounds and eviction
//!
//! A [`TokenTable`] holds at most [`TOKEN_STATE_ENTRIES_MAX`] entries. To admit a new key when
//! full it evicts the entry whose latest event is oldest **among entries that are not
//! invalidated**: forgetting a valid or unregistered token only turns it into `Unknown`, which
//! sends just like `Valid`. Invalidations are never evicted, since that would let a send reach a
//! token whose invalidation was committed. If every entry is an invalidation, the new event is
//! refused with [`TokenStateError::Full`] (the next send to that token meets APNs' 410 again).
//! Eviction depends on the order events arrive, so order-independence holds for tables under
//! their bound.
//!
//! # Invalidation stream
//!
//! [`TokenState::subscribe`] gives a receiver of every invalidation that takes effect (changes
//! the entry to invalidated, or to a later invalidation time). The channel is a bounded tokio
//! broadcast of [`TOKEN_INVALIDATIONS_CHANNEL_CAPACITY`]: a subscriber that falls further
//! behind gets `RecvError::Lagged(n)` and must resynchronise from the store.
//!
//! ```
//! use herald_actors::seams::Timestamp;
//! use herald_actors::token_state::{TokenEvent, TokenValidity, merge};
//!
//! let t = Timestamp::from_secs(1_000);
//! let invalid = merge(None, TokenEvent::Invalidated { at: t });
//! // A registration older than the invalidation does not revive the token...
//! let still = merge(Some(invalid), TokenEvent::Registered { at: Timestamp::from_secs(999) });
//! assert_eq!(still.validity(), TokenValidity::Invalidated { at: t });
//! // ...a newer one does.
//! let revived = merge(Some(still), TokenEvent::Registered { at: Timestamp::from_secs(1_001) });
//! assert_eq!(revived.validity(), TokenValidity::Valid);
//! ```

use std::fmt;

use tokio::sync::broadcast;

use crate::seams::{BoxFuture, Timestamp};

#[cfg(doc)]
use crate::limits::{TOKEN_INVALIDATIONS_CHANNEL_CAPACITY, TOKEN_STATE_ENTRIES_MAX};

mod memory;
mod table;

pub use memory::MemoryTokenState;
pub use table::{Applied, TokenTable};

/// What a key's token state is keyed by: the tenant and the device token.
///
/// Device tokens are hexadecimal; the key stores them in lower case so `ABCD` and `abcd` name
/// the same device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey {
    tenant: String,
    token: String,
}

impl TokenKey {
    /// The key of `token` (hex, any case) under `tenant`.
    pub fn new(tenant: impl Into<String>, token: impl Into<String>) -> Self {
        let mut token = token.into();
        token.make_ascii_lowercase();
        TokenKey {
            tenant: tenant.into(),
            token,
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The device token, in lower case.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.token)
    }
}

/// Something that happened to a device token, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenEvent {
    /// The tenant registered the token (the app handed it over, again or for the first time).
    Registered {
        /// When, by the registering server's clock.
        at: Timestamp,
    },
    /// The tenant removed the token from its registrations.
    Unregistered {
        /// When, by the unregistering server's clock.
        at: Timestamp,
    },
    /// APNs reported the token invalid (410 `Unregistered`/`ExpiredToken`).
    Invalidated {
        /// Apple's `timestamp`: when the token stopped being valid.
        at: Timestamp,
    },
}

impl TokenEvent {
    /// When the event happened.
    pub fn at(&self) -> Timestamp {
        match *self {
            TokenEvent::Registered { at }
            | TokenEvent::Unregistered { at }
            | TokenEvent::Invalidated { at } => at,
        }
    }
}

/// Whether a send to a token should go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenValidity {
    /// Registered, with no invalidation at or after the registration: send.
    Valid,
    /// APNs invalidated the token at `at` and it was not registered since: skip the send
    /// (outcome `Unregistered`).
    Invalidated {
        /// Apple's timestamp of the standing invalidation.
        at: Timestamp,
    },
    /// Nothing standing is known about the token (never seen, unregistered, or evicted): send
    /// and let APNs decide.
    Unknown,
}

impl TokenValidity {
    /// True unless the token is invalidated: a send may go ahead.
    pub fn may_send(&self) -> bool {
        !matches!(self, TokenValidity::Invalidated { .. })
    }
}

/// The state of one key: the latest time of each kind of event seen for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TokenEntry {
    registered_at: Option<Timestamp>,
    unregistered_at: Option<Timestamp>,
    invalidated_at: Option<Timestamp>,
}

impl TokenEntry {
    /// The latest registration seen.
    pub fn registered_at(&self) -> Option<Timestamp> {
        self.registered_at
    }

    /// The latest unregistration seen.
    pub fn unregistered_at(&self) -> Option<Timestamp> {
        self.unregistered_at
    }

    /// The latest invalidation seen (whether or not a later registration revived the token).
    pub fn invalidated_at(&self) -> Option<Timestamp> {
        self.invalidated_at
    }

    /// The time of the latest event of any kind (the epoch for an empty entry).
    pub fn latest(&self) -> Timestamp {
        [
            self.registered_at,
            self.unregistered_at,
            self.invalidated_at,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Timestamp::EPOCH)
    }

    /// The token's validity under the rules in the [module docs](self).
    pub fn validity(&self) -> TokenValidity {
        if let Some(invalidated) = self.invalidated_at {
            // Tie: the invalidation wins.
            if self
                .registered_at
                .is_none_or(|registered| registered <= invalidated)
            {
                return TokenValidity::Invalidated { at: invalidated };
            }
        }
        match self.registered_at {
            // Tie: the unregistration wins.
            Some(registered)
                if self
                    .unregistered_at
                    .is_none_or(|unregistered| unregistered < registered) =>
            {
                TokenValidity::Valid
            }
            _ => TokenValidity::Unknown,
        }
    }

    /// The entry that has seen every event `self` and `other` have seen (the join of both).
    /// Commutative, associative and idempotent.
    pub fn join(self, other: TokenEntry) -> TokenEntry {
        TokenEntry {
            registered_at: self.registered_at.max(other.registered_at),
            unregistered_at: self.unregistered_at.max(other.unregistered_at),
            invalidated_at: self.invalidated_at.max(other.invalidated_at),
        }
    }
}

/// The last-writer-wins rule as a pure function: the entry after `event` happens to a key whose
/// entry was `existing` (`None` for a key never seen).
///
/// Applying any set of events, in any order and any number of times, gives the same entry.
pub fn merge(existing: Option<TokenEntry>, event: TokenEvent) -> TokenEntry {
    let mut entry = existing.unwrap_or_default();
    match event {
        TokenEvent::Registered { at } => entry.registered_at = entry.registered_at.max(Some(at)),
        TokenEvent::Unregistered { at } => {
            entry.unregistered_at = entry.unregistered_at.max(Some(at))
        }
        TokenEvent::Invalidated { at } => entry.invalidated_at = entry.invalidated_at.max(Some(at)),
    }
    entry
}

/// An invalidation that took effect, as sent to [`TokenState::subscribe`]rs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The invalidated token.
    pub key: TokenKey,
    /// Apple's timestamp of the invalidation.
    pub at: Timestamp,
}

/// Why a token event was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenStateError {
    /// The store is at its entry bound and every entry is an invalidation (which is never
    /// evicted): the event for a new key was refused.
    #[error("token state full: every entry is a standing invalidation")]
    Full,
    /// The store cannot take events right now (a replicated store without a leader or quorum).
    /// Retry later.
    #[error("token state unavailable: {0}")]
    Unavailable(String),
}

/// A shared token state.
pub type SharedTokenState = std::sync::Arc<dyn TokenState>;

/// Device-token validity, consulted by the shard before each send. See the
/// [module docs](self) for the rules.
///
/// `check` is synchronous: it reads local state (for a replicated store, the state applied on
/// this node, which may trail the cluster by the entries not yet applied here). Events are
/// asynchronous: a replicated store answers once the event is committed.
pub trait TokenState: Send + Sync + fmt::Debug + 'static {
    /// The validity of `key`'s token according to every event applied here.
    fn check(&self, key: &TokenKey) -> TokenValidity;

    /// Apply `event` to `key` and answer the resulting validity.
    fn apply(
        &self,
        key: TokenKey,
        event: TokenEvent,
    ) -> BoxFuture<'_, Result<TokenValidity, TokenStateError>>;

    /// Record that the tenant registered `key`'s token at `at`.
    fn register(
        &self,
        key: TokenKey,
        at: Timestamp,
    ) -> BoxFuture<'_, Result<TokenValidity, TokenStateError>> {
        self.apply(key, TokenEvent::Registered { at })
    }

    /// Record that the tenant unregistered `key`'s token at `at`.
    fn unregister(
        &self,
        key: TokenKey,
        at: Timestamp,
    ) -> BoxFuture<'_, Result<TokenValidity, TokenStateError>> {
        self.apply(key, TokenEvent::Unregistered { at })
    }

    /// Record that APNs reported `key`'s token invalid at `apple_timestamp`.
    fn invalidate(
        &self,
        key: TokenKey,
        apple_timestamp: Timestamp,
    ) -> BoxFuture<'_, Result<TokenValidity, TokenStateError>> {
        self.apply(
            key,
            TokenEvent::Invalidated {
                at: apple_timestamp,
            },
        )
    }

    /// A receiver of every invalidation that takes effect from now on.
    fn subscribe(&self) -> broadcast::Receiver<Invalidation>;

    /// How many keys have an entry.
    fn len(&self) -> usize;

    /// True if no key has an entry.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
