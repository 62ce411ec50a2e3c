//! [`FileWal`]: a durable WAL in one redb file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::{PendingIndex, Wal, WalError, WalLimits, WalRecord};
use crate::seams::BoxFuture;

/// The on-disk layout version this code reads and writes.
const FORMAT_VERSION: u64 = 1;
const FORMAT_KEY: &str = "format";
const RECORDS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("herald_wal_records");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("herald_wal_meta");
/// Bytes of an encoded record before its payload: id (16) + shard (4).
const HEADER_BYTES: usize = 20;

/// A durable write-ahead log stored in one redb file.
///
/// # Layout
///
/// One redb database holds two tables:
/// - `herald_wal_records`: sequence number (`u64`, increasing in append order) → record,
///   encoded as `id (16 bytes, big-endian) ‖ shard (4 bytes, big-endian) ‖ payload`;
/// - `herald_wal_meta`: `"format"` → the layout version (currently 1).
///
/// Replay is a scan of the records table in key order, which is append order. After every
/// record has been completed the table is empty and numbering restarts at zero on the next open:
/// order matters only among pending records.
///
/// # Durability
///
/// `append` is one redb write transaction committed with `Durability::Immediate` (redb's
/// default: the commit is fsync'd before it returns), so one fsync per batch. `complete` is one
/// more such transaction that deletes the records; redb reuses the freed pages (the file does
/// not shrink). Wrap a `FileWal` in a [`GroupCommitWal`](super::GroupCommitWal) to share one
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
    /// Held for the whole of a write transaction, so the index always matches the store and
    /// sequence numbers are handed out in commit order.
    index: Mutex<PendingIndex>,
    /// Mirrors of the index's counters, readable without waiting for a commit in progress.
    len: AtomicUsize,
    bytes: AtomicU64,
    commits: AtomicU64,
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
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(store_error)?;
        check_format(&db)?;
        let mut index = PendingIndex::new(limits);
        {
            let read = db.begin_read().map_err(store_error)?;
            let table = read.open_table(RECORDS).map_err(store_error)?;
            for entry in table.iter().map_err(store_error)? {
                let (seq, value) = entry.map_err(store_error)?;
                let record = decode(value.value())?;
                index.restore(seq.value(), record.id, record.data.len());
            }
        }
        tracing::debug!(path = %path.display(), pending = index.len(), "write-ahead log opened");
        let inner = Inner {
            path,
            db,
            len: AtomicUsize::new(index.len()),
            bytes: AtomicU64::new(index.bytes()),
            index: Mutex::new(index),
            commits: AtomicU64::new(0),
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
        self.blocking(move |inner| inner.complete(&ids))
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
    fn lock(&self) -> MutexGuard<'_, PendingIndex> {
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
        let mut index = self.lock();
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
                self.publish(&index);
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

    fn complete(&self, ids: &[u128]) -> Result<(), WalError> {
        let mut index = self.lock();
        let planned = index.plan_complete(ids);
        if planned.is_empty() {
            return Ok(());
        }
        let written = (|| -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(RECORDS)?;
                for (_, seq) in &planned {
                    table.remove(*seq)?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match written {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                index.apply_complete(&planned);
                self.publish(&index);
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
        // Create the records table if it is missing.
        txn.open_table(RECORDS).map_err(store_error)?;
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
