//! [`MemoryWal`]: a WAL in process memory. **Not durable.**

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::{
    Completion, Finished, FinishedIndex, PendingIndex, Wal, WalError, WalLimits, WalRecord,
};
use crate::seams::{BoxFuture, Timestamp};

/// A write-ahead log kept in this process's memory.
///
/// # Not durable
///
/// **Every pending record is lost when the process exits or crashes.** `append` returning `Ok`
/// only means the record is in memory. Use it in tests, or when embedding the engine in a
/// program that accepts losing accepted pushes on a crash; use [`FileWal`](super::FileWal)
/// when an acknowledged push must survive one.
///
/// It follows every other rule of [`Wal`] exactly (bounds, atomic batches, idempotent ids,
/// append order), so code tested against it behaves the same on a durable WAL.
#[derive(Debug)]
pub struct MemoryWal {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    index: PendingIndex,
    records: BTreeMap<u64, WalRecord>,
    finished: FinishedIndex,
}

impl MemoryWal {
    /// An empty in-memory WAL with the default [`WalLimits`].
    pub fn new() -> Self {
        MemoryWal::with_limits(WalLimits::default())
    }

    /// An empty in-memory WAL bounded by `limits`.
    pub fn with_limits(limits: WalLimits) -> Self {
        MemoryWal {
            state: Mutex::new(State {
                index: PendingIndex::new(limits),
                records: BTreeMap::new(),
                finished: FinishedIndex::new(limits),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is updated only after every check passed, with no code that can panic in
        // between, so a poisoned lock still guards a consistent state: keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append_now(&self, batch: Vec<WalRecord>) -> Result<(), WalError> {
        let mut state = self.lock();
        let planned = state.index.plan_append(batch)?;
        state.index.apply_append(&planned);
        for (seq, record) in planned {
            state.records.insert(seq, record);
        }
        Ok(())
    }

    fn complete_now(&self, done: &[Completion], at: Option<Timestamp>) {
        let mut state = self.lock();
        let ids: Vec<u128> = done.iter().map(|c| c.id).collect();
        let planned = state.index.plan_complete(&ids);
        if let Some(at) = at {
            let done = state.index.markers_for(&planned, done);
            let markers = state.finished.plan(&done, at);
            state.finished.apply(&markers);
        }
        state.index.apply_complete(&planned);
        for (_, seq) in planned {
            state.records.remove(&seq);
        }
    }
}

impl Default for MemoryWal {
    fn default() -> Self {
        MemoryWal::new()
    }
}

impl Wal for MemoryWal {
    fn append(&self, batch: Vec<WalRecord>) -> BoxFuture<'_, Result<(), WalError>> {
        Box::pin(async move { self.append_now(batch) })
    }

    fn complete(&self, ids: Vec<u128>) -> BoxFuture<'_, Result<(), WalError>> {
        Box::pin(async move {
            let done: Vec<Completion> = ids.into_iter().map(Completion::bare).collect();
            self.complete_now(&done, None);
            Ok(())
        })
    }

    fn complete_with(
        &self,
        done: Vec<Completion>,
        at: Timestamp,
    ) -> BoxFuture<'_, Result<(), WalError>> {
        Box::pin(async move {
            self.complete_now(&done, Some(at));
            Ok(())
        })
    }

    fn finished(&self) -> BoxFuture<'_, Result<Vec<Finished>, WalError>> {
        Box::pin(async move { Ok(self.lock().finished.list()) })
    }

    fn replay(&self) -> BoxFuture<'_, Result<Vec<WalRecord>, WalError>> {
        Box::pin(async move { Ok(self.lock().records.values().cloned().collect()) })
    }

    fn len(&self) -> usize {
        self.lock().index.len()
    }

    fn bytes(&self) -> u64 {
        self.lock().index.bytes()
    }
}
