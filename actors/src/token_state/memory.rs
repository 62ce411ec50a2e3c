//! [`MemoryTokenState`]: token state for one process.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::{
    Invalidation, TokenEvent, TokenKey, TokenState, TokenStateError, TokenTable, TokenValidity,
};
use crate::limits::{TOKEN_INVALIDATIONS_CHANNEL_CAPACITY, TOKEN_STATE_ENTRIES_MAX};
use crate::seams::BoxFuture;

/// Token state held in this process's memory: a [`TokenTable`] behind a lock, plus the
/// invalidation broadcast.
///
/// Not replicated and not durable: the state starts empty on every start (tokens are then
/// `Unknown` until APNs or the tenant says otherwise). Use it when the engine runs alone; a
/// cluster plugs in its Raft-replicated [`TokenState`] instead.
#[derive(Debug)]
pub struct MemoryTokenState {
    table: Mutex<TokenTable>,
    invalidations: broadcast::Sender<Invalidation>,
}

impl MemoryTokenState {
    /// An empty state of at most [`TOKEN_STATE_ENTRIES_MAX`] entries.
    pub fn new() -> Self {
        MemoryTokenState::with_entries_max(TOKEN_STATE_ENTRIES_MAX)
    }

    /// An empty state of at most `entries_max` entries.
    ///
    /// # Panics
    /// If `entries_max` is zero.
    #[track_caller]
    pub fn with_entries_max(entries_max: usize) -> Self {
        let (invalidations, _) = broadcast::channel(TOKEN_INVALIDATIONS_CHANNEL_CAPACITY);
        MemoryTokenState {
            table: Mutex::new(TokenTable::with_entries_max(entries_max)),
            invalidations,
        }
    }

    /// A copy of the whole table (for inspection and tests).
    pub fn snapshot(&self) -> TokenTable {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, TokenTable> {
        // `TokenTable::apply` checks everything before it changes anything and does not panic
        // part-way, so a poisoned lock still guards a consistent table.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn apply_now(
        &self,
        key: TokenKey,
        event: TokenEvent,
    ) -> Result<TokenValidity, TokenStateError> {
        let applied = self.lock().apply(key, event)?;
        if let Some(evicted) = &applied.evicted {
            tracing::debug!(key = %evicted, "token state full: evicted oldest entry");
        }
        if let Some(invalidation) = applied.invalidation {
            // No subscriber is not an error: nobody needs to hear about it.
            let _ = self.invalidations.send(invalidation);
        }
        Ok(applied.validity)
    }
}

impl Default for MemoryTokenState {
    fn default() -> Self {
        MemoryTokenState::new()
    }
}

impl TokenState for MemoryTokenState {
    fn check(&self, key: &TokenKey) -> TokenValidity {
        self.lock().check(key)
    }

    fn apply(
        &self,
        key: TokenKey,
        event: TokenEvent,
    ) -> BoxFuture<'_, Result<TokenValidity, TokenStateError>> {
        Box::pin(async move { self.apply_now(key, event) })
    }

    fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        self.invalidations.subscribe()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}
