//! [`FileWal`]: a durable WAL in one redb file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::{
    Completion, Finished, FinishedIndex, PendingIndex, Wal, WalError, WalLimits, WalRecord,
};
use crate::seams::{BoxFuture, Timestamp};

/// The on-disk layout version this code writes. Versions 1 (no done-marker table) and 2 (done
/// markers without notes: exactly [`MARKER_BYTES`]) are read and upgraded in place on open.
const FORMAT_VERSION: u64 = 3;
const FORMAT_KEY: &str = "format";
const RECORDS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("herald_wal_records");
const FINISHED: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("herald_wal_finished");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("herald_wal_meta");
/// Bytes of an encoded record before its payload: id (16) + shard (4).
const HEADER_BYTES: usize = 20;
/// [`CompletionSync::LAZY`]: completion commits made without an fsync in a row at most (the
/// next one is fsync'd); an append's commit, always fsync'd, makes them durable sooner.
pub const LAZY_COMPLETIONS_MAX: u32 = 16;
/// Bytes of an encoded done marker before its note: id (16) + shard (4) + finish time in ms (8).
const MARKER_BYTES: usize = 28;

/// A durable write-ahead log stored in one redb file.
///
/// # Layout
///
/// One redb database holds three tables:
/// - `herald_wal_records`: sequence number (`u64`, increasing in append order) → record,
///   encoded as `id (16 bytes, big-endian) ‖ shard (4 bytes, big-endian) ‖ payload`;
/// - `herald_wal_finished`: sequence number (`u64`, increasing in finish order) → done marker,
///   encoded as `id (16) ‖ shard (4) ‖ finish time in ms since the Unix epoch (8) ‖ note`,
///   numbers big-endian, the note the completion's opaque bytes (possibly none); written and
///   trimmed by `complete_at`/`complete_with` in the transaction that deletes the records;
/// - `herald_wal_meta`: `"format"` → the layout version (currently 3; a version-1 file, which
///   lacks the done-marker table, and a version-2 file, whose markers have no notes, are
///   upgraded on open).
///
/// Replay is a scan of the records table in key order, which is append order. After every
/// record has been completed the table is empty and numbering restarts at zero on the next open:
/// order matters only among pending records.
///
/// # Durability
///
/// `append` is one redb write transaction committed with `Durability::Immediate` (redb's
/// default: the commit is fsync'd before it returns), so one fsync per batch. `complete` is one
/// more transaction that deletes the records; redb reuses the freed pages (the file does not
/// shrink). How completions reach the disk is the [`CompletionSync`] the WAL was opened with:
/// fsync'd each ([`CompletionSync::EveryCommit`], the default of [`FileWal::open`]), or
/// lazily ([`CompletionSync::Lazy`]: durable with the next append, every `max`-th completion
/// or on close; a crash may replay pushes completed since, which are then sent again —
/// at-least-once — but never loses an acknowledged append). `herald node` uses `Lazy`: it
/// halves the fsyncs under load (measured in `docs/benchmarks.md`). Wrap a `FileWal` in a [`GroupCommitWal`](super::GroupCommitWal) to share one
/// fsync among concurrent callers.
///
/// redb calls block, so every operation runs on tokio's blocking pool (`spawn_blocking`): call
/// them from within a tokio runtime. The simulator does not use `FileWal` (it plugs in a WAL
/// over its simulated disk), so this thread use never reaches simulated code.
///
/// Cloning gives another handle to the same open store.
#[derive(Debug, Clone)]
pub struct FileWal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    db: Database,
    /// Held for the whole of a write transaction, so the indexes always match the store and
    /// sequence numbers are handed out in commit order.
    index: Mutex<Indexes>,
    /// Mirrors of the index's counters, readable without waiting for a commit in progress.
    len: AtomicUsize,
    bytes: AtomicU64,
    commits: AtomicU64,
    sync: CompletionSync,
    /// Dropped after `db` (fields drop in declaration order), so its receivers see the close
    /// only once redb has released the file. Keep it the last field.
    closed: tokio::sync::watch::Sender<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Make the lazy completions durable: after a clean close nothing is sent twice.
        let lazy = self
            .index
            .get_mut()
            .map_or(0, |indexes| indexes.lazy_completions);
        if lazy == 0 {
            return;
        }
        let synced = (|| -> Result<(), redb::Error> {
            self.db.begin_write()?.commit()?;
            Ok(())
        })();
        if let Err(e) = synced {
            tracing::warn!(error = %e, path = %self.path.display(), "write-ahead log not synced on close");
        }
    }
}

/// Reports when a [`FileWal`]'s store is closed: every handle, and every operation still running
/// on the blocking pool, has dropped it, and redb has released the file (so it can be opened
/// again). Get one from [`FileWal::closed`].
#[derive(Debug, Clone)]
pub struct WalClosed {
    rx: tokio::sync::watch::Receiver<()>,
}

impl WalClosed {
    /// True once the store is closed.
    pub fn is_closed(&self) -> bool {
        self.rx.has_changed().is_err()
    }

    /// Wait until the store is closed.
    pub async fn wait(&mut self) {
        // `changed` fails only once the sender (the store's last field) is dropped.
        while self.rx.changed().await.is_ok() {}
    }
}

/// When a [`FileWal`]'s completions are fsync'd. See [`FileWal`], "Durability".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompletionSync {
    /// Every completion commit is fsync'd before `complete` returns.
    #[default]
    EveryCommit,
    /// Completion commits are not fsync'd; they become durable with the next append's commit
    /// (always fsync'd), with every `max`-th completion commit in a row, or when the store is
    /// closed. A crash replays at most the pushes completed since then.
    Lazy {
        /// Completion commits in a row before one is fsync'd (at least 1).
        max: u32,
    },
}

impl CompletionSync {
    /// Lazy completions with [`LAZY_COMPLETIONS_MAX`] in a row at most.
    pub const LAZY: CompletionSync = CompletionSync::Lazy {
        max: LAZY_COMPLETIONS_MAX,
    };
}

#[derive(Debug)]
struct Indexes {
    pending: PendingIndex,
    finished: FinishedIndex,
    /// Completion commits made without an fsync since the last fsync'd commit.
    lazy_completions: u32,
}

impl FileWal {
    /// Open the WAL stored at `path` (created if missing) with the default [`WalLimits`].
    ///
    /// Blocks while redb opens the file (and repairs it after an unclean shutdown) and the
    /// pending records are indexed: call it at start-up, or on the blocking pool.
    ///
    /// # Errors
    /// [`WalError::Locked`] if the file is open already, [`WalError::Corrupt`] if it is not a
    /// WAL of this format, [`WalError::Io`] if it cannot be read or created.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WalError> {
        FileWal::open_with_limits(path, WalLimits::default())
    }

    /// Open the WAL stored at `path` (created if missing), bounded by `limits`.
    ///
    /// A store holding more than `limits` allows opens fine; appends fail with
    /// [`WalError::Full`] until completions bring it back under the bounds.
    ///
    /// # Errors
    /// As [`FileWal::open`].
    pub fn open_with_limits(path: impl AsRef<Path>, limits: WalLimits) -> Result<Self, WalError> {
        FileWal::open_with(path, limits, CompletionSync::EveryCommit)
    }

    /// Open the WAL stored at `path` (created if missing), bounded by `limits`, its
    /// completions made durable as `sync` says.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(
        path: impl AsRef<Path>,
        limits: WalLimits,
        sync: CompletionSync,
    ) -> Result<Self, WalError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(store_error)?;
        check_format(&db)?;
        let mut index = PendingIndex::new(limits);
        let mut finished = FinishedIndex::new(limits);
        {
            let read = db.begin_read().map_err(store_error)?;
            let table = read.open_table(RECORDS).map_err(store_error)?;
            for entry in table.iter().map_err(store_error)? {
                let (seq, value) = entry.map_err(store_error)?;
                let record = decode(value.value())?;
                index.restore(seq.value(), record.id, record.data.len(), record.shard);
            }
            let table = read.open_table(FINISHED).map_err(store_error)?;
            for entry in table.iter().map_err(store_error)? {
                let (seq, value) = entry.map_err(store_error)?;
                finished.restore(seq.value(), decode_marker(value.value())?);
            }
        }
        tracing::debug!(path = %path.display(), pending = index.len(), "write-ahead log opened");
        let inner = Inner {
            path,
            db,
            len: AtomicUsize::new(index.len()),
            bytes: AtomicU64::new(index.bytes()),
            index: Mutex::new(Indexes {
                pending: index,
                finished,
                lazy_completions: 0,
            }),
            commits: AtomicU64::new(0),
            sync,
            closed: tokio::sync::watch::Sender::new(()),
        };
        Ok(FileWal {
            inner: Arc::new(inner),
        })
    }

    /// The file this WAL is stored in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many write transactions (each one fsync) this handle committed since it was opened.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// A probe that reports when the store is closed: unlike dropping the last `FileWal`
    /// handle, this also waits for operations still running on the blocking pool.
    pub fn closed(&self) -> WalClosed {
        WalClosed {
            rx: self.inner.closed.subscribe(),
        }
    }

    fn blocking<T, F>(&self, work: F) -> BoxFuture<'static, Result<T, WalError>>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, WalError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || work(&inner))
                .await
                .map_err(|e| WalError::Io(format!("write-ahead log task failed: {e}")))?
        })
    }
}

impl Wal for FileWal {
    fn append(&self, batch: Vec<WalRecord>) -> BoxFuture<'_, Result<(), WalError>> {
        if batch.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        self.blocking(move |inner| inner.append(batch))
    }

    fn complete(&self, ids: Vec<u128>) -> BoxFuture<'_, Result<(), WalError>> {
        if ids.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let done: Vec<Completion> = ids.into_iter().map(Completion::bare).collect();
        self.blocking(move |inner| inner.complete(&done, None))
    }

    fn complete_with(
        &self,
        done: Vec<Completion>,
        at: Timestamp,
    ) -> BoxFuture<'_, Result<(), WalError>> {
        if done.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        self.blocking(move |inner| inner.complete(&done, Some(at)))
    }

    fn finished(&self) -> BoxFuture<'_, Result<Vec<Finished>, WalError>> {
        self.blocking(|inner| Ok(inner.lock().finished.list()))
    }

    fn replay(&self) -> BoxFuture<'_, Result<Vec<WalRecord>, WalError>> {
        self.blocking(Inner::replay)
    }

    fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Acquire)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Indexes> {
        // The index changes only after a commit succeeded, by code that does not panic, so a
        // poisoned lock still guards an index that matches the store.
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, index: &PendingIndex) {
        self.len.store(index.len(), Ordering::Release);
        self.bytes.store(index.bytes(), Ordering::Release);
    }

    fn append(&self, batch: Vec<WalRecord>) -> Result<(), WalError> {
        let mut guard = self.lock();
        let index = &mut guard.pending;
        let planned = index.plan_append(batch)?;
        if planned.is_empty() {
            return Ok(());
        }
        let written = (|| -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(RECORDS)?;
                let mut buf = Vec::new();
                for (seq, record) in &planned {
                    encode(record, &mut buf);
                    table.insert(*seq, buf.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match written {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                index.apply_append(&planned);
                self.publish(index);
                // This fsync'd commit made the lazy completions before it durable too.
                guard.lazy_completions = 0;
                Ok(())
            }
            Err(e) => {
                // The commit may or may not have reached the disk: never reuse its numbers.
                index.skip(&planned);
                tracing::warn!(error = %e, path = %self.path.display(), "write-ahead log append failed");
                Err(store_error(e))
            }
        }
    }

    /// Complete `ids`; with `at`, keep their done markers (and trim the old ones) in the same
    /// transaction.
    fn complete(&self, done: &[Completion], at: Option<Timestamp>) -> Result<(), WalError> {
        let mut guard = self.lock();
        let Indexes {
            pending,
            finished,
            lazy_completions,
        } = &mut *guard;
        let ids: Vec<u128> = done.iter().map(|c| c.id).collect();
        let planned = pending.plan_complete(&ids);
        if planned.is_empty() {
            return Ok(());
        }
        let markers = at.map(|at| finished.plan(&pending.markers_for(&planned, done), at));
        // With `CompletionSync::Lazy` completions are not fsync'd one by one: they become
        // durable with the next append (always fsync'd), every `max`-th completion, or on
        // close. A crash loses at most those: their pushes are replayed and sent again.
        let durable = match self.sync {
            CompletionSync::EveryCommit => true,
            CompletionSync::Lazy { max } => *lazy_completions + 1 >= max.max(1),
        };
        let written = (|| -> Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            if !durable {
                txn.set_durability(redb::Durability::None)?;
            }
            {
                let mut seqs: Vec<u64> = planned.iter().map(|(_, seq)| *seq).collect();
                seqs.sort_unstable();
                remove_sorted(&mut txn.open_table(RECORDS)?, &seqs)?;
            }
            if let Some(markers) = &markers {
                let mut table = txn.open_table(FINISHED)?;
                let mut seqs = markers.drop.clone();
                seqs.sort_unstable();
                seqs.dedup();
                remove_sorted(&mut table, &seqs)?;
                let mut buf = Vec::with_capacity(MARKER_BYTES);
                for (seq, marker) in &markers.add {
                    encode_marker(marker, &mut buf);
                    table.insert(*seq, buf.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match written {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                *lazy_completions = if durable { 0 } else { *lazy_completions + 1 };
                pending.apply_complete(&planned);
                if let Some(markers) = &markers {
                    finished.apply(markers);
                }
                self.publish(pending);
                Ok(())
            }
            Err(e) => {
                // The records stay indexed as pending; if the deletion did reach the disk, a
                // later completion of the same ids finds nothing to delete, which is harmless.
                tracing::warn!(error = %e, path = %self.path.display(), "write-ahead log complete failed");
                Err(store_error(e))
            }
        }
    }

    fn replay(&self) -> Result<Vec<WalRecord>, WalError> {
        let read = self.db.begin_read().map_err(store_error)?;
        let table = read.open_table(RECORDS).map_err(store_error)?;
        let mut records = Vec::new();
        for entry in table.iter().map_err(store_error)? {
            let (_, value) = entry.map_err(store_error)?;
            records.push(decode(value.value())?);
        }
        Ok(records)
    }
}

/// Keys at most this far apart are removed by one ordered scan (see [`remove_sorted`]).
const REMOVE_SCAN_GAP_MAX: u64 = 128;

/// Remove the keys `seqs` (ascending, each once) from `table`. Keys that lie close together
/// (a shard's records of one append are neighbours; done markers are trimmed oldest first)
/// are removed by one ordered scan of their range, which descends the tree once, instead of
/// one descent per key; a scan passes over at most [`REMOVE_SCAN_GAP_MAX`] kept keys per
/// removed one.
fn remove_sorted(table: &mut redb::Table<'_, u64, &[u8]>, seqs: &[u64]) -> Result<(), redb::Error> {
    let mut rest = seqs;
    while let Some(&first) = rest.first() {
        let run_len = rest
            .windows(2)
            .position(|pair| pair[1] - pair[0] > REMOVE_SCAN_GAP_MAX)
            .map_or(rest.len(), |at| at + 1);
        let (run, after) = rest.split_at(run_len);
        rest = after;
        match run {
            [single] => {
                table.remove(*single)?;
            }
            _ => {
                let last = run[run.len() - 1];
                table.retain_in(first..=last, |seq, _| run.binary_search(&seq).is_err())?;
            }
        }
    }
    Ok(())
}

/// Create the tables of a new store, or check an existing store's format.
fn check_format(db: &Database) -> Result<(), WalError> {
    let txn = db.begin_write().map_err(store_error)?;
    {
        let mut meta = txn.open_table(META).map_err(store_error)?;
        let found = meta
            .get(FORMAT_KEY)
            .map_err(store_error)?
            .map(|v| v.value());
        match found {
            Some(FORMAT_VERSION) => {}
            Some(1 | 2) => {
                // Version 1 lacks the done-marker table (created below), version 2's markers
                // are version 3's without a note: upgrade.
                meta.insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(store_error)?;
            }
            Some(other) => {
                return Err(WalError::Corrupt(format!(
                    "unknown write-ahead log format {other} (this build reads {FORMAT_VERSION})"
                )));
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(store_error)?;
            }
        }
        // Create the tables if they are missing.
        txn.open_table(RECORDS).map_err(store_error)?;
        txn.open_table(FINISHED).map_err(store_error)?;
    }
    txn.commit().map_err(store_error)
}

fn encode(record: &WalRecord, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(HEADER_BYTES + record.data.len());
    buf.extend_from_slice(&record.id.to_be_bytes());
    buf.extend_from_slice(&record.shard.to_be_bytes());
    buf.extend_from_slice(&record.data);
}

fn decode(value: &[u8]) -> Result<WalRecord, WalError> {
    let (Some(id), Some(shard)) = (value.get(..16), value.get(16..HEADER_BYTES)) else {
        return Err(WalError::Corrupt(format!(
            "record of {} bytes is shorter than its {HEADER_BYTES}-byte header",
            value.len()
        )));
    };
    let mut id_bytes = [0u8; 16];
    id_bytes.copy_from_slice(id);
    let mut shard_bytes = [0u8; 4];
    shard_bytes.copy_from_slice(shard);
    Ok(WalRecord {
        id: u128::from_be_bytes(id_bytes),
        shard: u32::from_be_bytes(shard_bytes),
        data: Bytes::copy_from_slice(&value[HEADER_BYTES..]),
    })
}

fn encode_marker(marker: &Finished, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&marker.id.to_be_bytes());
    buf.extend_from_slice(&marker.shard.to_be_bytes());
    buf.extend_from_slice(&marker.at.as_millis().to_be_bytes());
    buf.extend_from_slice(&marker.note);
}

fn decode_marker(value: &[u8]) -> Result<Finished, WalError> {
    if value.len() < MARKER_BYTES {
        return Err(WalError::Corrupt(format!(
            "done marker of {} bytes; expected at least {MARKER_BYTES}",
            value.len()
        )));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&value[..16]);
    let mut shard = [0u8; 4];
    shard.copy_from_slice(&value[16..20]);
    let mut at = [0u8; 8];
    at.copy_from_slice(&value[20..MARKER_BYTES]);
    Ok(Finished {
        id: u128::from_be_bytes(id),
        shard: u32::from_be_bytes(shard),
        at: Timestamp::from_millis(u64::from_be_bytes(at)),
        note: Bytes::copy_from_slice(&value[MARKER_BYTES..]),
    })
}

/// Map a redb error to a [`WalError`] without exposing redb's types.
fn store_error(e: impl Into<redb::Error>) -> WalError {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen => WalError::Locked,
        redb::Error::Io(e) => WalError::Io(e.to_string()),
        e @ (redb::Error::Corrupted(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::LockProtocolMismatch) => WalError::Corrupt(e.to_string()),
        e => WalError::Io(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The close probe waits for an operation still holding the store after the last handle
    /// is dropped; once it reports closed, the file opens again.
    #[tokio::test]
    async fn closed_probe_waits_for_operations_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        let wal = FileWal::open(&path).unwrap();
        let mut closed = wal.closed();
        let batch = vec![WalRecord::new(1, 0, b"push".to_vec())];
        let append = wal.blocking(move |inner| inner.append(batch));
        drop(wal);
        assert!(
            !closed.is_closed(),
            "an operation in flight keeps the store open"
        );
        assert!(matches!(FileWal::open(&path), Err(WalError::Locked)));
        append.await.unwrap();
        closed.wait().await;
        assert!(closed.is_closed());
        let reopened = FileWal::open(&path).unwrap();
        assert_eq!(reopened.inner.len.load(Ordering::Relaxed), 1);
    }

    /// Runs, lone keys, gaps just within and just past the scan limit, the first and last
    /// keys: exactly the named keys go, every other stays.
    #[test]
    fn remove_sorted_removes_exactly_the_named_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let gap = REMOVE_SCAN_GAP_MAX;
        let mut remove: Vec<u64> = vec![0, 1, 2, 10, 10 + gap, 10 + 2 * gap + 1, 2000, 2001];
        remove.extend(3000..3100);
        remove.push(4999);
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(RECORDS).unwrap();
            for key in 0..5000u64 {
                table.insert(key, &key.to_be_bytes()[..]).unwrap();
            }
            remove_sorted(&mut table, &remove).unwrap();
            // Keys that are not there are ignored.
            remove_sorted(&mut table, &[1, 6000]).unwrap();
        }
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        let table = read.open_table(RECORDS).unwrap();
        let left: Vec<u64> = table
            .iter()
            .unwrap()
            .map(|entry| entry.unwrap().0.value())
            .collect();
        let expected: Vec<u64> = (0..5000).filter(|k| !remove.contains(k)).collect();
        assert_eq!(left, expected);
    }
}
