//! The device shard's write-ahead log: accepted pushes survive a crash.
//!
//! A push is acknowledged to its caller (`202 {id}`) only after [`Wal::append`] returned `Ok`.
//! From then on the record is *pending*: it comes back from [`Wal::replay`] after a restart,
//! in append order, until the shard calls [`Wal::complete`] with its id (delivered, failed or
//! expired). Delivery is therefore at-least-once: a crash between sending a push and
//! completing it replays the push, so it may be sent twice; a push is never lost.
//!
//! # Durability guarantees
//!
//! | implementation | `append` returned `Ok` means | survives |
//! |---|---|---|
//! | [`FileWal`] | the batch is in a committed, fsync'd redb transaction | process crash, power loss |
//! | [`MemoryWal`] | the batch is in this process's memory | **nothing**: lost when the process exits |
//! | [`GroupCommitWal`] | whatever the wrapped WAL promises | whatever the wrapped WAL survives |
//!
//! A batch is atomic: either every record of it is pending or (on `Err`) none is. Completions
//! are durable when [`Wal::complete`] returns for [`FileWal`]; if a crash loses a completion the
//! record is replayed and resent, which the at-least-once contract allows.
//!
//! Appends are idempotent per id: appending an id that is already pending keeps the first
//! record and drops the new one (so a caller that saw an error may safely retry the batch).
//!
//! # Done markers (the durable dedupe memory)
//!
//! [`Wal::complete_at`] completes records *and* keeps a done marker per completed record
//! ([`Finished`]: id, shard, finish time) in the same commit, so a shard that restarts reads
//! back with [`Wal::finished`] which push ids it finished recently and still refuses to queue
//! them again. The markers are bounded by [`WalLimits`]: at most [`WAL_FINISHED_MAX`] of them
//! (the oldest are dropped first) and none older than [`WAL_FINISHED_RETENTION`] before the
//! newest completion's time (trimmed by each `complete_at`; the time comes from the caller's
//! `Clock`, never from the WAL). [`Wal::complete`] completes without a marker. A WAL that keeps
//! no markers (the trait's default methods) is still correct, only its dedupe does not survive
//! a restart.
//!
//! [`Wal::complete_with`] also keeps a few opaque bytes per marker ([`Completion::note`],
//! at most [`WAL_NOTE_BYTES_MAX`]): the shard stores the push's outcome there, so what became
//! of a push is still known after a restart.
//!
//! # Bounds
//!
//! Every WAL is bounded by [`WalLimits`]: at most [`WAL_RECORDS_MAX`] pending records and
//! [`WAL_BYTES_MAX`] pending payload bytes (past either, [`WalError::Full`]: answer
//! `Overloaded`), records of at most [`WAL_RECORD_BYTES_MAX`] bytes
//! ([`WalError::RecordTooLarge`]: a request bug), and done markers as above.
//!
//! # Why an async trait with boxed futures
//!
//! [`Wal`] is object-safe (methods return [`BoxFuture`], like
//! [`Connector`](crate::seams::Connector)) so a shard holds a [`SharedWal`] and never knows which
//! store it writes to. It is async rather than a synchronous API run by the actor because:
//! - an fsync takes milliseconds (≈3.4 ms on the reference disk); [`FileWal`] runs it on tokio's
//!   blocking pool so it never stalls the actor runtime's workers;
//! - group commit needs many callers to wait on one commit, which is natural with futures;
//! - the simulator plugs in its own implementation over a simulated disk whose latency is
//!   simulated time (`tokio::time::sleep`), and which loses unsynced writes on a simulated crash.
//!   A synchronous API could not model that latency.
//!
//! [`Wal::len`] and [`Wal::bytes`] are synchronous: every implementation keeps its pending
//! counters in memory.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use herald_actors::seams::Timestamp;
//! use herald_actors::wal::{MemoryWal, Wal, WalRecord};
//!
//! let wal = MemoryWal::new();
//! wal.append(vec![WalRecord::new(1, 7, &b"push one"[..]), WalRecord::new(2, 7, &b"push two"[..])])
//!     .await?;
//! wal.complete_at(vec![1], Timestamp::from_secs(100)).await?;
//! let pending = wal.replay().await?;
//! assert_eq!(pending.len(), 1);
//! assert_eq!(pending[0].id, 2);
//! // Push 1 is remembered as finished (for dedupe after a restart).
//! let done = wal.finished().await?;
//! assert_eq!((done[0].id, done[0].shard, done[0].at), (1, 7, Timestamp::from_secs(100)));
//! # Ok::<(), herald_actors::wal::WalError>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::keyed::KeyMap;
use crate::limits::{
    WAL_BYTES_MAX, WAL_FINISHED_MAX, WAL_FINISHED_RETENTION, WAL_RECORD_BYTES_MAX, WAL_RECORDS_MAX,
};
use crate::seams::{BoxFuture, Timestamp};

mod file;
mod group;
mod joint;
mod memory;

pub use file::{CompletionSync, FileWal, LAZY_COMPLETIONS_MAX, WalClosed};
pub use group::{GroupCommitConfig, GroupCommitWal};
pub(crate) use joint::{JointAppend, JointPart};
pub use memory::MemoryWal;

/// One write-ahead log record: an opaque payload keyed by a caller-given 128-bit id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// The caller's id for the record (the push id). Completions name records by it.
    pub id: u128,
    /// The shard the record belongs to.
    pub shard: u32,
    /// The record's bytes, opaque to the WAL (a serialized push).
    pub data: Bytes,
}

impl WalRecord {
    /// A record with id `id` for shard `shard` holding `data`.
    pub fn new(id: u128, shard: u32, data: impl Into<Bytes>) -> Self {
        WalRecord {
            id,
            shard,
            data: data.into(),
        }
    }
}

/// A done marker: record `id` of shard `shard` was completed at `at` (see the
/// [module docs](self#done-markers-the-durable-dedupe-memory)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The completed record's id.
    pub id: u128,
    /// Its shard.
    pub shard: u32,
    /// When it was completed (the caller's clock).
    pub at: Timestamp,
    /// The bytes the completion kept ([`Completion::note`]); empty if none.
    pub note: Bytes,
}

/// The most bytes a done marker keeps from [`Completion::note`]; a longer note is dropped (the
/// marker is still kept): markers are many, and their notes live in memory too.
pub const WAL_NOTE_BYTES_MAX: usize = 512;

/// One record to complete with [`Wal::complete_with`], and what its done marker keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The record's id.
    pub id: u128,
    /// Opaque bytes kept in the done marker (the shard's encoded outcome); may be empty.
    pub note: Bytes,
}

impl Completion {
    /// Complete record `id`, keeping `note` in its done marker.
    pub fn new(id: u128, note: impl Into<Bytes>) -> Self {
        Completion {
            id,
            note: note.into(),
        }
    }

    /// Complete record `id` with an empty note.
    pub fn bare(id: u128) -> Self {
        Completion::new(id, Bytes::new())
    }

    /// The note a marker keeps: `note`, or empty past [`WAL_NOTE_BYTES_MAX`].
    pub fn kept_note(&self) -> Bytes {
        if self.note.len() <= WAL_NOTE_BYTES_MAX {
            self.note.clone()
        } else {
            Bytes::new()
        }
    }
}

/// Why a WAL operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// The batch would take the WAL past its pending record or byte bound, or the group-commit
    /// queue is full. Nothing of the batch was appended; answer `Overloaded`.
    #[error("write-ahead log full")]
    Full,
    /// A record is larger than the WAL accepts. Nothing of the batch was appended.
    #[error("record {id:032x} holds {bytes} bytes; at most {max} are allowed")]
    RecordTooLarge {
        /// The offending record's id.
        id: u128,
        /// Its payload size (bytes).
        bytes: usize,
        /// The largest payload accepted (bytes).
        max: usize,
    },
    /// The store could not be read or written (disk error, failed fsync). The operation may or
    /// may not have taken effect; retrying an append is safe (appends are idempotent per id).
    #[error("write-ahead log I/O error: {0}")]
    Io(String),
    /// The store's contents are not a valid WAL (damaged file, foreign file, unknown format).
    #[error("write-ahead log store corrupt or unreadable: {0}")]
    Corrupt(String),
    /// The store is already open (in this process or another one).
    #[error("write-ahead log store is already open elsewhere")]
    Locked,
    /// The WAL's writer has stopped (its task ended): nothing more can be appended.
    #[error("write-ahead log closed")]
    Closed,
}

/// A WAL shared by the actors that use it.
pub type SharedWal = Arc<dyn Wal>;

/// Where one caller's answer to an append goes.
type AppendReply = tokio::sync::oneshot::Sender<Result<(), WalError>>;

/// Append the batches of several callers to `wal` as one batch (one commit) and answer each
/// caller, calling `issued` before each append it makes. If the merged batch is refused for
/// lack of room ([`WalError::Full`], [`WalError::RecordTooLarge`]), each caller's batch is
/// appended on its own, so one caller's oversized record or the last free places never fail
/// another. A caller that stopped waiting does not need its answer.
async fn append_together(
    wal: &dyn Wal,
    callers: Vec<(Vec<WalRecord>, AppendReply)>,
    issued: impl Fn(),
) {
    if callers.len() <= 1 {
        if let Some((batch, reply)) = callers.into_iter().next() {
            issued();
            let _ = reply.send(wal.append(batch).await);
        }
        return;
    }
    let merged: Vec<WalRecord> = callers
        .iter()
        .flat_map(|(batch, _)| batch.iter().cloned())
        .collect();
    issued();
    match wal.append(merged).await {
        Err(WalError::Full | WalError::RecordTooLarge { .. }) => {
            for (batch, reply) in callers {
                issued();
                let _ = reply.send(wal.append(batch).await);
            }
        }
        result => {
            for (_, reply) in callers {
                let _ = reply.send(result.clone());
            }
        }
    }
}

/// A device shard's write-ahead log. See the [module docs](self) for the guarantees.
pub trait Wal: Send + Sync + fmt::Debug + 'static {
    /// Append `batch` atomically. When this returns `Ok`, every record of the batch is pending
    /// (and, for a durable WAL, durable). An empty batch is a no-op. Records whose id is already
    /// pending are skipped (the first record with an id wins).
    ///
    /// Fails with [`WalError::Full`] or [`WalError::RecordTooLarge`] without appending anything.
    fn append(&self, batch: Vec<WalRecord>) -> BoxFuture<'_, Result<(), WalError>>;

    /// Mark the records named by `ids` done and reclaim their space, keeping no done marker.
    /// Ids that are not pending are ignored, so completing twice is harmless.
    fn complete(&self, ids: Vec<u128>) -> BoxFuture<'_, Result<(), WalError>>;

    /// As [`complete`](Self::complete), and in the same commit keep a done marker, finished at
    /// `at`, for every record that was pending; then drop the markers past the bounds of
    /// [`WalLimits`] (older than the retention before `at`, or beyond the count, oldest first).
    ///
    /// It is [`complete_with`](Self::complete_with) with empty notes.
    fn complete_at(&self, ids: Vec<u128>, at: Timestamp) -> BoxFuture<'_, Result<(), WalError>> {
        self.complete_with(ids.into_iter().map(Completion::bare).collect(), at)
    }

    /// As [`complete_at`](Self::complete_at), each done marker also keeping its completion's
    /// [`note`](Completion::note) (dropped if longer than [`WAL_NOTE_BYTES_MAX`]).
    ///
    /// The default keeps no marker (it is [`complete`](Self::complete)): correct, but the
    /// dedupe memory of such a WAL does not survive a restart. Every WAL of this crate
    /// overrides it.
    fn complete_with(
        &self,
        done: Vec<Completion>,
        at: Timestamp,
    ) -> BoxFuture<'_, Result<(), WalError>> {
        let _ = at;
        self.complete(done.into_iter().map(|c| c.id).collect())
    }

    /// The kept done markers, oldest first. Called by a shard when it (re)starts. The default
    /// (a WAL that keeps none) is empty.
    fn finished(&self) -> BoxFuture<'_, Result<Vec<Finished>, WalError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Every pending record (appended, not completed), in append order. Called by a shard
    /// when it (re)starts, before it appends anything new.
    fn replay(&self) -> BoxFuture<'_, Result<Vec<WalRecord>, WalError>>;

    /// How many records are pending.
    fn len(&self) -> usize;

    /// True if no record is pending.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total payload bytes of the pending records.
    fn bytes(&self) -> u64;
}

/// The bounds of one WAL. The default is [`WAL_RECORDS_MAX`], [`WAL_BYTES_MAX`],
/// [`WAL_RECORD_BYTES_MAX`], [`WAL_FINISHED_MAX`] and [`WAL_FINISHED_RETENTION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalLimits {
    records_max: usize,
    bytes_max: u64,
    record_bytes_max: usize,
    finished_max: usize,
    finished_retention: Duration,
}

impl WalLimits {
    /// Limits of at most `records_max` pending records, `bytes_max` pending payload bytes and
    /// `record_bytes_max` bytes per record.
    ///
    /// # Panics
    /// If a limit is zero or `record_bytes_max` exceeds `bytes_max`.
    #[track_caller]
    pub fn new(records_max: usize, bytes_max: u64, record_bytes_max: usize) -> Self {
        assert!(records_max > 0, "WalLimits: records_max must be > 0");
        assert!(
            record_bytes_max > 0,
            "WalLimits: record_bytes_max must be > 0"
        );
        assert!(
            record_bytes_max as u64 <= bytes_max,
            "WalLimits: record_bytes_max must be <= bytes_max"
        );
        WalLimits {
            records_max,
            bytes_max,
            record_bytes_max,
            finished_max: WAL_FINISHED_MAX,
            finished_retention: WAL_FINISHED_RETENTION,
        }
    }

    /// These limits, keeping at most `finished_max` done markers for at most `retention`
    /// each. `finished_max` may be zero (keep none). Defaults: [`WAL_FINISHED_MAX`],
    /// [`WAL_FINISHED_RETENTION`].
    pub fn with_finished(mut self, finished_max: usize, retention: Duration) -> Self {
        self.finished_max = finished_max;
        self.finished_retention = retention;
        self
    }

    /// Most done markers kept.
    pub fn finished_max(&self) -> usize {
        self.finished_max
    }

    /// How long a done marker is kept.
    pub fn finished_retention(&self) -> Duration {
        self.finished_retention
    }

    /// Most pending records.
    pub fn records_max(&self) -> usize {
        self.records_max
    }

    /// Most pending payload bytes.
    pub fn bytes_max(&self) -> u64 {
        self.bytes_max
    }

    /// Largest record payload (bytes).
    pub fn record_bytes_max(&self) -> usize {
        self.record_bytes_max
    }
}

impl Default for WalLimits {
    fn default() -> Self {
        WalLimits::new(WAL_RECORDS_MAX, WAL_BYTES_MAX, WAL_RECORD_BYTES_MAX)
    }
}

/// The in-memory index of pending records every implementation keeps: which ids are pending
/// under which sequence number, and the counters the bounds are checked against.
///
/// Operations are split in `plan_*` (check, no change) and `apply_*` (after the store
/// accepted the change), so a failed write leaves the index as it was.
#[derive(Debug)]
pub(crate) struct PendingIndex {
    limits: WalLimits,
    /// Pending id → (sequence number, payload bytes, shard). A hash map: ids are random, the
    /// map holds up to `WAL_RECORDS_MAX` of them, and it is only looked up, never iterated (so
    /// its order cannot leak into behaviour).
    by_id: KeyMap<u128, (u64, usize, u32)>,
    bytes: u64,
    next_seq: u64,
}

impl PendingIndex {
    pub(crate) fn new(limits: WalLimits) -> Self {
        PendingIndex {
            limits,
            by_id: KeyMap::default(),
            bytes: 0,
            next_seq: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Restore one record found in the store at start-up. Records must come in sequence order.
    pub(crate) fn restore(&mut self, seq: u64, id: u128, bytes: usize, shard: u32) {
        // A store written by a correct WAL holds each id once; if an id repeats, the later
        // copy wins the index and the earlier one is still replayed (at-least-once).
        if let Some((_, old_bytes, _)) = self.by_id.insert(id, (seq, bytes, shard)) {
            self.bytes = self.bytes.saturating_sub(old_bytes as u64);
        }
        self.bytes += bytes as u64;
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// Check `batch` against the bounds and give each new record its sequence number.
    /// Records whose id is pending already (or repeats within the batch) are left out.
    pub(crate) fn plan_append(
        &self,
        batch: Vec<WalRecord>,
    ) -> Result<Vec<(u64, WalRecord)>, WalError> {
        let mut planned: Vec<(u64, WalRecord)> = Vec::with_capacity(batch.len());
        let mut seen = std::collections::BTreeSet::new();
        let mut added_bytes: u64 = 0;
        let mut seq = self.next_seq;
        for record in batch {
            if record.data.len() > self.limits.record_bytes_max {
                return Err(WalError::RecordTooLarge {
                    id: record.id,
                    bytes: record.data.len(),
                    max: self.limits.record_bytes_max,
                });
            }
            if self.by_id.contains_key(&record.id) || !seen.insert(record.id) {
                continue;
            }
            added_bytes += record.data.len() as u64;
            planned.push((seq, record));
            seq += 1;
        }
        if self.by_id.len() + planned.len() > self.limits.records_max
            || self.bytes + added_bytes > self.limits.bytes_max
        {
            return Err(WalError::Full);
        }
        Ok(planned)
    }

    /// Record that `planned` (from [`Self::plan_append`]) is now in the store.
    pub(crate) fn apply_append(&mut self, planned: &[(u64, WalRecord)]) {
        for (seq, record) in planned {
            let previous = self
                .by_id
                .insert(record.id, (*seq, record.data.len(), record.shard));
            debug_assert!(previous.is_none(), "planned append of a pending id");
            self.bytes += record.data.len() as u64;
            self.next_seq = self.next_seq.max(seq + 1);
        }
    }

    /// Skip the sequence numbers of `planned` without indexing it: used after a write whose
    /// outcome is unknown, so a later append never reuses a sequence number that may be taken.
    pub(crate) fn skip(&mut self, planned: &[(u64, WalRecord)]) {
        if let Some((seq, _)) = planned.last() {
            self.next_seq = self.next_seq.max(seq + 1);
        }
    }

    /// The sequence numbers of the pending records among `ids` (each once).
    pub(crate) fn plan_complete(&self, ids: &[u128]) -> Vec<(u128, u64)> {
        let mut found: Vec<(u128, u64)> = ids
            .iter()
            .filter_map(|id| self.by_id.get(id).map(|(seq, _, _)| (*id, *seq)))
            .collect();
        // In id order, each once.
        found.sort_unstable();
        found.dedup_by_key(|(id, _)| *id);
        found
    }

    /// Record that the records of `planned` (from [`Self::plan_complete`]) left the store.
    pub(crate) fn apply_complete(&mut self, planned: &[(u128, u64)]) {
        for (id, _) in planned {
            if let Some((_, bytes, _)) = self.by_id.remove(id) {
                self.bytes = self.bytes.saturating_sub(bytes as u64);
            }
        }
    }

    /// The shard of pending record `id`.
    pub(crate) fn shard_of(&self, id: u128) -> Option<u32> {
        self.by_id.get(&id).map(|(_, _, shard)| *shard)
    }

    /// What the done markers of `planned` (from [`Self::plan_complete`]) keep: (id, shard,
    /// note), the note from the first of `done` naming the id; in id order, like `planned`.
    pub(crate) fn markers_for(
        &self,
        planned: &[(u128, u64)],
        done: &[Completion],
    ) -> Vec<(u128, u32, Bytes)> {
        // Both in id order, then merged (no lookup table per call): a stable sort keeps the
        // first completion of an id first, and `dedup` keeps it.
        let mut notes: Vec<&Completion> = done.iter().collect();
        notes.sort_by_key(|completion| completion.id);
        notes.dedup_by_key(|completion| completion.id);
        let mut notes = notes.into_iter().peekable();
        planned
            .iter()
            .filter_map(|(id, _)| {
                let shard = self.shard_of(*id)?;
                while notes.next_if(|completion| completion.id < *id).is_some() {}
                let note = notes
                    .next_if(|completion| completion.id == *id)
                    .map(Completion::kept_note)
                    .unwrap_or_default();
                Some((*id, shard, note))
            })
            .collect()
    }
}

/// The in-memory index of the done markers every implementation keeps, in finish order, with
/// the same `plan_*`/`apply_*` split as [`PendingIndex`].
#[derive(Debug)]
pub(crate) struct FinishedIndex {
    limits: WalLimits,
    /// Marker sequence number (finish order) → marker.
    by_seq: BTreeMap<u64, Finished>,
    /// (finish time in ms, sequence number) of every marker: the aged ones are a prefix, so
    /// a completion finds them without scanning every kept marker.
    by_at: std::collections::BTreeSet<(u64, u64)>,
    next_seq: u64,
}

/// The change one `complete_at` makes to the done markers.
#[derive(Debug, Default)]
pub(crate) struct FinishedPlan {
    /// Markers to add, with their sequence numbers.
    pub(crate) add: Vec<(u64, Finished)>,
    /// Sequence numbers of kept markers to drop (too old, or beyond the count).
    pub(crate) drop: Vec<u64>,
}

impl FinishedIndex {
    pub(crate) fn new(limits: WalLimits) -> Self {
        FinishedIndex {
            limits,
            by_seq: BTreeMap::new(),
            by_at: std::collections::BTreeSet::new(),
            next_seq: 0,
        }
    }

    /// Restore one marker found in the store at start-up.
    pub(crate) fn restore(&mut self, seq: u64, marker: Finished) {
        let at_ms = marker.at.as_millis();
        if let Some(old) = self.by_seq.insert(seq, marker) {
            self.by_at.remove(&(old.at.as_millis(), seq));
        }
        self.by_at.insert((at_ms, seq));
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// Every kept marker, oldest first.
    pub(crate) fn list(&self) -> Vec<Finished> {
        self.by_seq.values().cloned().collect()
    }

    /// Markers for `done` (id, shard, note) finished at `at`, and the kept markers to drop so
    /// that none is older than the retention before `at` and at most `finished_max` remain.
    pub(crate) fn plan(&self, done: &[(u128, u32, Bytes)], at: Timestamp) -> FinishedPlan {
        let retention_ms =
            u64::try_from(self.limits.finished_retention.as_millis()).unwrap_or(u64::MAX);
        let oldest_kept_ms = at.as_millis().saturating_sub(retention_ms);
        let mut plan = FinishedPlan::default();
        // Too old: a prefix of `by_at`.
        plan.drop
            .extend(self.by_at.range(..(oldest_kept_ms, 0)).map(|&(_, seq)| seq));
        let kept = self.by_seq.len() - plan.drop.len();
        // The newest `finished_max` of (kept ++ done) stay: drop the oldest kept by sequence
        // (skipping the aged ones, dropped already). Costs the markers dropped, not all kept.
        let mut excess = (kept + done.len()).saturating_sub(self.limits.finished_max);
        let old_dropped = excess.min(kept);
        plan.drop.extend(
            self.by_seq
                .iter()
                .filter(|(_, marker)| marker.at.as_millis() >= oldest_kept_ms)
                .take(old_dropped)
                .map(|(&seq, _)| seq),
        );
        excess -= old_dropped;
        for (seq, (id, shard, note)) in (self.next_seq..).zip(done.iter().skip(excess)) {
            plan.add.push((
                seq,
                Finished {
                    id: *id,
                    shard: *shard,
                    at,
                    note: note.clone(),
                },
            ));
        }
        plan
    }

    /// Record that `plan` (from [`Self::plan`]) is now in the store.
    pub(crate) fn apply(&mut self, plan: &FinishedPlan) {
        for seq in &plan.drop {
            if let Some(marker) = self.by_seq.remove(seq) {
                self.by_at.remove(&(marker.at.as_millis(), *seq));
            }
        }
        for (seq, marker) in &plan.add {
            if let Some(old) = self.by_seq.insert(*seq, marker.clone()) {
                self.by_at.remove(&(old.at.as_millis(), *seq));
            }
            self.by_at.insert((marker.at.as_millis(), *seq));
            self.next_seq = self.next_seq.max(seq + 1);
        }
    }
}

#[cfg(test)]
mod tests;
