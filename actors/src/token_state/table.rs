//! [`TokenTable`]: the deterministic, bounded token-state machine.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Invalidation, TokenEntry, TokenEvent, TokenKey, TokenStateError, TokenValidity, merge,
};
use crate::limits::TOKEN_STATE_ENTRIES_MAX;
use crate::seams::Timestamp;

/// Every key's [`TokenEntry`], bounded, with the eviction rule of the
/// [module docs](super#bounds-and-eviction).
///
/// Plain data, no I/O, no clock, no randomness, ordered maps only: the same events applied in
/// the same order give the same table on every replica. [`MemoryTokenState`](super::MemoryTokenState)
/// wraps one for a process; a replicated store applies committed events to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTable {
    entries: BTreeMap<TokenKey, TokenEntry>,
    /// The entries that may be evicted (not invalidated), oldest latest event first.
    evictable: BTreeSet<(Timestamp, TokenKey)>,
    entries_max: usize,
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The key's validity after the event.
    pub validity: TokenValidity,
    /// The invalidation to publish, if the event made one take effect.
    pub invalidation: Option<Invalidation>,
    /// The key evicted to make room, if any.
    pub evicted: Option<TokenKey>,
}

impl TokenTable {
    /// An empty table of at most [`TOKEN_STATE_ENTRIES_MAX`] entries.
    pub fn new() -> Self {
        TokenTable::with_entries_max(TOKEN_STATE_ENTRIES_MAX)
    }

    /// An empty table of at most `entries_max` entries.
    ///
    /// # Panics
    /// If `entries_max` is zero.
    #[track_caller]
    pub fn with_entries_max(entries_max: usize) -> Self {
        assert!(entries_max > 0, "TokenTable: entries_max must be > 0");
        TokenTable {
            entries: BTreeMap::new(),
            evictable: BTreeSet::new(),
            entries_max,
        }
    }

    /// The validity of `key`'s token.
    pub fn check(&self, key: &TokenKey) -> TokenValidity {
        self.entries
            .get(key)
            .map_or(TokenValidity::Unknown, TokenEntry::validity)
    }

    /// `key`'s entry, if it has one.
    pub fn entry(&self, key: &TokenKey) -> Option<&TokenEntry> {
        self.entries.get(key)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&TokenKey, &TokenEntry)> {
        self.entries.iter()
    }

    /// How many keys have an entry.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no key has an entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most entries this table holds.
    pub fn entries_max(&self) -> usize {
        self.entries_max
    }

    /// Apply `event` to `key` under the last-writer-wins rule ([`merge`]).
    ///
    /// # Errors
    /// [`TokenStateError::Full`] if `key` is new, the table is full and every entry is an
    /// invalidation. The table is then unchanged.
    pub fn apply(&mut self, key: TokenKey, event: TokenEvent) -> Result<Applied, TokenStateError> {
        let existing = self.entries.get(&key).copied();
        let merged = merge(existing, event);
        let validity = merged.validity();
        if existing == Some(merged) {
            return Ok(Applied {
                validity,
                invalidation: None,
                evicted: None,
            });
        }
        let mut evicted = None;
        if existing.is_none() && self.entries.len() >= self.entries_max {
            let Some((_, oldest)) = self.evictable.pop_first() else {
                return Err(TokenStateError::Full);
            };
            self.entries.remove(&oldest);
            evicted = Some(oldest);
        }
        if let Some(old) = existing
            && is_evictable(&old)
        {
            self.evictable.remove(&(old.latest(), key.clone()));
        }
        if is_evictable(&merged) {
            self.evictable.insert((merged.latest(), key.clone()));
        }
        let was = existing.map_or(TokenValidity::Unknown, |e| e.validity());
        let invalidation = match validity {
            TokenValidity::Invalidated { at } if was != validity => Some(Invalidation {
                key: key.clone(),
                at,
            }),
            _ => None,
        };
        self.entries.insert(key, merged);
        debug_assert!(self.entries.len() <= self.entries_max);
        Ok(Applied {
            validity,
            invalidation,
            evicted,
        })
    }
}

impl Default for TokenTable {
    fn default() -> Self {
        TokenTable::new()
    }
}

fn is_evictable(entry: &TokenEntry) -> bool {
    entry.validity().may_send()
}
