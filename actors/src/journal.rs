//! Where a shard makes accepted pushes durable before `send` returns: the push journal.
//!
//! The engine talks to its write-ahead log through [`PushJournal`]: append a batch before
//! acknowledging, complete a push on its final outcome, replay what is pending when a shard
//! (re)starts. [`MemoryJournal`] keeps records in memory (durable across shard restarts, not
//! across process exits); a file-backed WAL plugs in through the same trait.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use herald_actors::journal::{JournalRecord, MemoryJournal, PushJournal};
//!
//! let journal = MemoryJournal::new(10);
//! journal.append(vec![JournalRecord::new(1, 0, &b"a"[..]), JournalRecord::new(2, 1, &b"b"[..])]).await?;
//! journal.complete(vec![1]).await?;
//! let pending = journal.replay().await?;
//! assert_eq!(pending.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
//! # Ok::<(), herald_actors::journal::JournalError>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use crate::seams::BoxFuture;

/// One journal record: a serialized push keyed by its push id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    /// The push id.
    pub id: u128,
    /// The shard the push belongs to.
    pub shard: u32,
    /// The serialized push.
    pub data: Bytes,
}

impl JournalRecord {
    /// A record for push `id` of shard `shard`.
    pub fn new(id: u128, shard: u32, data: impl Into<Bytes>) -> Self {
        JournalRecord {
            id,
            shard,
            data: data.into(),
        }
    }
}

/// Why a journal operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal is full: nothing was appended; answer `Overloaded`.
    #[error("journal full")]
    Full,
    /// The store failed; the operation may or may not have taken effect.
    #[error("journal I/O error: {0}")]
    Io(String),
}

/// A shared journal.
pub type SharedJournal = Arc<dyn PushJournal>;

/// The durability seam of the device shards (same contract as the WAL: atomic batches,
/// idempotent appends per id, completions may be repeated, replay in append order).
pub trait PushJournal: Send + Sync + fmt::Debug + 'static {
    /// Append `batch` atomically; when `Ok`, every record is pending.
    fn append(&self, batch: Vec<JournalRecord>) -> BoxFuture<'_, Result<(), JournalError>>;
    /// Mark the records named by `ids` done.
    fn complete(&self, ids: Vec<u128>) -> BoxFuture<'_, Result<(), JournalError>>;
    /// Every pending record, in append order.
    fn replay(&self) -> BoxFuture<'_, Result<Vec<JournalRecord>, JournalError>>;
    /// How many records are pending.
    fn len(&self) -> usize;
    /// True when nothing is pending.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An in-memory journal bounded to `records_max` pending records.
#[derive(Debug)]
pub struct MemoryJournal {
    records_max: usize,
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    next_seq: u64,
    by_seq: BTreeMap<u64, JournalRecord>,
    seq_of: BTreeMap<u128, u64>,
}

impl MemoryJournal {
    /// An empty journal holding at most `records_max` pending records.
    ///
    /// # Panics
    /// If `records_max` is zero.
    #[track_caller]
    pub fn new(records_max: usize) -> Self {
        assert!(records_max > 0, "MemoryJournal: records_max must be > 0");
        MemoryJournal {
            records_max,
            inner: Mutex::new(MemoryInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PushJournal for MemoryJournal {
    fn append(&self, batch: Vec<JournalRecord>) -> BoxFuture<'_, Result<(), JournalError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            let fresh: Vec<JournalRecord> = {
                let mut seen = std::collections::BTreeSet::new();
                batch
                    .into_iter()
                    .filter(|r| !inner.seq_of.contains_key(&r.id) && seen.insert(r.id))
                    .collect()
            };
            if inner.seq_of.len() + fresh.len() > self.records_max {
                return Err(JournalError::Full);
            }
            for record in fresh {
                let seq = inner.next_seq;
                inner.next_seq += 1;
                inner.seq_of.insert(record.id, seq);
                inner.by_seq.insert(seq, record);
            }
            Ok(())
        })
    }

    fn complete(&self, ids: Vec<u128>) -> BoxFuture<'_, Result<(), JournalError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            for id in ids {
                if let Some(seq) = inner.seq_of.remove(&id) {
                    inner.by_seq.remove(&seq);
                }
            }
            Ok(())
        })
    }

    fn replay(&self) -> BoxFuture<'_, Result<Vec<JournalRecord>, JournalError>> {
        Box::pin(async move { Ok(self.lock().by_seq.values().cloned().collect()) })
    }

    fn len(&self) -> usize {
        self.lock().seq_of.len()
    }
}
