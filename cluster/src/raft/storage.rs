//! [`RaftStorage`]: raft-rs [`Storage`] on redb (durable, fsync'd) or in memory.
//!
//! Every write goes to an in-memory copy of the log and, for a redb-backed store, to one
//! redb write transaction that is committed with `Durability::Immediate` (fsync) before the
//! call returns. Reads are served from memory. The log is bounded by compaction
//! ([`RaftStorage::compact`]), so holding it in memory is cheap.
//!
//! On disk (one redb file):
//! - table `raft_entries`: log index → protobuf `Entry`;
//! - table `raft_meta`: `hard_state`, `conf_state` (protobuf), `truncated` (index and term of
//!   the last discarded entry, 16 bytes little endian), `snapshot` (protobuf `Snapshot`, data
//!   included).
//!
//! Opening checks that the log is contiguous and every record parses; a damaged file gives
//! [`StorageError::Corrupt`], never a panic.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const KEY_HARD_STATE: &str = "hard_state";
const KEY_CONF_STATE: &str = "conf_state";
const KEY_TRUNCATED: &str = "truncated";
const KEY_SNAPSHOT: &str = "snapshot";

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The redb backend failed (I/O, lock, transaction).
    #[error("raft storage backend: {0}")]
    Backend(String),
    /// The file holds something that is not a valid Raft log.
    #[error("raft storage corrupt: {0}")]
    Corrupt(String),
    /// The operation names entries already discarded by compaction or a snapshot.
    #[error("index {index} is compacted (first index {first_index})")]
    Compacted {
        /// The index asked for.
        index: u64,
        /// The first index still held.
        first_index: u64,
    },
    /// Appended entries would leave a gap after the last entry.
    #[error("append at {index} leaves a gap after last index {last_index}")]
    Gap {
        /// The first appended index.
        index: u64,
        /// The last index held.
        last_index: u64,
    },
    /// Appended entries would overwrite entries already committed (Raft never does this:
    /// a committed entry is final).
    #[error("append at {index} would overwrite committed entries (commit index {commit})")]
    OverwritesCommitted {
        /// The first appended index.
        index: u64,
        /// The stored commit index.
        commit: u64,
    },
    /// The index is past the end of the log.
    #[error("index {index} is past last index {last_index}")]
    Unavailable {
        /// The index asked for.
        index: u64,
        /// The last index held.
        last_index: u64,
    },
    /// Compaction past the latest snapshot would discard entries no snapshot covers.
    #[error("compact to {index} past the latest snapshot at {snapshot_index}")]
    NotSnapshotted {
        /// The compaction index asked for.
        index: u64,
        /// The latest snapshot's index.
        snapshot_index: u64,
    },
    /// A snapshot older than the one (or the log) already held.
    #[error("snapshot at {index} is out of date")]
    SnapshotOutOfDate {
        /// The snapshot's index.
        index: u64,
    },
    /// `initialize` on a store that already holds Raft state.
    #[error("storage already initialized")]
    AlreadyInitialized,
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}

/// The Raft log, hard state, configuration and latest snapshot of one node.
///
/// Cheap to clone: clones share one store (raft-rs owns one copy inside `RawNode`, the
/// driver keeps another to persist `ready()` output). All methods take `&self`.
#[derive(Clone)]
pub struct RaftStorage {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for RaftStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("RaftStorage")
            .field("durable", &inner.disk.is_some())
            .field("first_index", &inner.core.first_index())
            .field("last_index", &inner.core.last_index())
            .field("hard_state", &inner.core.hard_state)
            .finish()
    }
}

impl RaftStorage {
    /// An empty in-memory store (tests and the simulator): same behaviour, no durability.
    pub fn in_memory() -> Self {
        RaftStorage::from_parts(Core::default(), None)
    }

    /// Open (or create) the redb file at `path` and load its Raft state.
    ///
    /// # Errors
    /// [`StorageError::Backend`] if the file cannot be opened (locked, unreadable),
    /// [`StorageError::Corrupt`] if it does not hold a valid Raft log.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let db = redb::Database::create(path.as_ref()).map_err(backend)?;
        let core = load(&db)?;
        Ok(RaftStorage::from_parts(core, Some(db)))
    }

    /// Whether writes reach a durable file.
    pub fn is_durable(&self) -> bool {
        self.lock().disk.is_some()
    }

    /// Give a fresh store its first configuration (bootstrap of a new cluster's founders).
    ///
    /// # Errors
    /// [`StorageError::AlreadyInitialized`] if the store holds any Raft state.
    pub fn initialize(&self, conf_state: ConfState) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if inner.core != Core::default() {
            return Err(StorageError::AlreadyInitialized);
        }
        let mut next = inner.core.clone();
        next.conf_state = conf_state;
        inner.commit(next, |w| w.conf_state = true)
    }

    /// Append `entries` (contiguous), replacing any held entries at or after the first one.
    ///
    /// # Errors
    /// [`StorageError::Compacted`] if they overwrite compacted entries, [`StorageError::Gap`]
    /// if they start past the last index + 1, or a backend error.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.persist(entries, None)
    }

    /// Set the hard state (term, vote, commit).
    ///
    /// # Errors
    /// A backend error.
    pub fn set_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        self.persist(&[], Some(hard_state))
    }

    /// Append `entries` and set `hard_state` in one durable write (one fsync): what one
    /// `ready()` needs persisted before its persisted messages are sent.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn persist(
        &self,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<(), StorageError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let mut inner = self.lock();
        let mut next = inner.core.clone();
        let from = match entries.first() {
            Some(first) => {
                let commit = next.hard_state.commit;
                if first.index <= commit && first.index <= next.last_index() {
                    return Err(StorageError::OverwritesCommitted {
                        index: first.index,
                        commit,
                    });
                }
                Some(next.splice(entries, first.index)?)
            }
            None => None,
        };
        if let Some(hs) = hard_state {
            next.hard_state = hs;
        }
        inner.commit(next, |w| {
            w.entries_from = from;
            w.hard_state = true;
        })
    }

    /// Set the commit index of the hard state (after `advance`'s light ready).
    ///
    /// # Errors
    /// A backend error.
    pub fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if inner.core.hard_state.commit == commit {
            return Ok(());
        }
        let mut next = inner.core.clone();
        next.hard_state.commit = commit;
        inner.commit(next, |w| w.hard_state = true)
    }

    /// Set the configuration (after a configuration change is applied).
    ///
    /// # Errors
    /// A backend error.
    pub fn set_conf_state(&self, conf_state: ConfState) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let mut next = inner.core.clone();
        next.conf_state = conf_state;
        inner.commit(next, |w| w.conf_state = true)
    }

    /// Install a snapshot received from the leader: it replaces the whole log, the
    /// configuration, and moves the commit index to the snapshot's index.
    ///
    /// # Errors
    /// [`StorageError::SnapshotOutOfDate`] if the log already holds or discarded its index.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let meta = snapshot.get_metadata();
        if meta.index < inner.core.first_index() {
            return Err(StorageError::SnapshotOutOfDate { index: meta.index });
        }
        let mut next = inner.core.clone();
        next.truncated_index = meta.index;
        next.truncated_term = meta.term;
        next.entries.clear();
        next.hard_state.term = next.hard_state.term.max(meta.term);
        next.hard_state.commit = meta.index;
        next.conf_state = meta.get_conf_state().clone();
        next.snapshot = snapshot;
        inner.commit(next, |w| {
            w.entries_from = Some(0);
            w.hard_state = true;
            w.conf_state = true;
            w.truncated = true;
            w.snapshot = true;
        })
    }

    /// Record a snapshot of the state machine at `index` (applied there), with the
    /// configuration `conf_state` in force at that index. Does not discard entries: call
    /// [`compact`](Self::compact) for that.
    /// Moves the stored commit index up to `index` if it was behind (an applied entry is
    /// committed).
    ///
    /// # Errors
    /// [`StorageError::Compacted`] / [`StorageError::Unavailable`] if the term of `index` is
    /// unknown, [`StorageError::SnapshotOutOfDate`] if a newer snapshot is held.
    pub fn create_snapshot(
        &self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let next = inner.core.with_snapshot(index, conf_state, data)?;
        inner.commit(next, |w| {
            w.snapshot = true;
            w.hard_state = true;
        })
    }

    /// Set the configuration that an applied configuration change at `index` put in force
    /// and record a snapshot of the state machine there (`data`), in one durable write. So a
    /// crash never leaves the stored configuration ahead of the stored snapshot, and the
    /// latest snapshot always covers the latest configuration change.
    ///
    /// # Errors
    /// As [`create_snapshot`](Self::create_snapshot).
    pub fn record_conf_change(
        &self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let next = inner.core.with_snapshot(index, conf_state.clone(), data)?;
        let next = Core { conf_state, ..next };
        inner.commit(next, |w| {
            w.snapshot = true;
            w.conf_state = true;
            w.hard_state = true;
        })
    }

    /// Discard every entry at or before `index` (log compaction). Only entries covered by
    /// the latest snapshot may go, so a lagging follower always gets entries or a snapshot.
    /// Compacting to or below the already discarded index does nothing.
    ///
    /// # Errors
    /// [`StorageError::NotSnapshotted`] past the latest snapshot, [`StorageError::Unavailable`]
    /// past the last index.
    pub fn compact(&self, index: u64) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if index <= inner.core.truncated_index {
            return Ok(());
        }
        let snapshot_index = inner.core.snapshot.get_metadata().index;
        if index > snapshot_index {
            return Err(StorageError::NotSnapshotted {
                index,
                snapshot_index,
            });
        }
        let term = inner.core.term(index)?;
        let mut next = inner.core.clone();
        let drop = usize::try_from(index - next.truncated_index).unwrap_or(usize::MAX);
        next.entries.drain(..drop.min(next.entries.len()));
        next.truncated_index = index;
        next.truncated_term = term;
        inner.commit(next, |w| {
            w.truncated = true;
            w.compact_to = Some(index);
        })
    }

    /// The hard state.
    pub fn hard_state(&self) -> HardState {
        self.lock().core.hard_state.clone()
    }

    /// The configuration.
    pub fn conf_state(&self) -> ConfState {
        self.lock().core.conf_state.clone()
    }

    /// The latest snapshot (empty, index 0, if none).
    pub fn latest_snapshot(&self) -> Snapshot {
        self.lock().core.snapshot.clone()
    }

    /// The first index held (the discarded index + 1).
    pub fn first_index_held(&self) -> u64 {
        self.lock().core.first_index()
    }

    /// The last index held.
    pub fn last_index_held(&self) -> u64 {
        self.lock().core.last_index()
    }

    fn from_parts(core: Core, disk: Option<redb::Database>) -> Self {
        RaftStorage {
            inner: Arc::new(Mutex::new(Inner { core, disk })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `core` half-written: every writer
        // builds the next state aside and swaps it in only after the disk write succeeded.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let inner = self.lock();
        Ok(RaftState::new(
            inner.core.hard_state.clone(),
            inner.core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let inner = self.lock();
        let core = &inner.core;
        if low <= core.truncated_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > core.last_index() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let offset = core.truncated_index + 1;
        let (lo, hi) = ((low - offset) as usize, (high - offset) as usize);
        let mut entries = core.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.lock().core.term(idx).map_err(|e| match e {
            StorageError::Compacted { .. } => raft::Error::Store(raft::StorageError::Compacted),
            _ => raft::Error::Store(raft::StorageError::Unavailable),
        })
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.lock().core.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.lock().core.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let inner = self.lock();
        let index = inner.core.snapshot.get_metadata().index;
        if index == 0 || index < request_index {
            // The driver snapshots as the log grows; raft-rs asks again later.
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(inner.core.snapshot.clone())
    }
}

/// The in-memory copy of the Raft state.
#[derive(Debug, Clone, Default, PartialEq)]
struct Core {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last discarded entry (0, 0 for a fresh log).
    truncated_index: u64,
    truncated_term: u64,
    /// Entries `truncated_index + 1 ..= last_index`.
    entries: Vec<Entry>,
    snapshot: Snapshot,
}

impl Core {
    fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }

    fn last_index(&self) -> u64 {
        self.truncated_index + self.entries.len() as u64
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if index < self.truncated_index {
            return Err(StorageError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        let last_index = self.last_index();
        if index > last_index {
            return Err(StorageError::Unavailable { index, last_index });
        }
        Ok(self.entries[(index - self.first_index()) as usize].term)
    }

    /// A copy holding a new snapshot at `index`.
    fn with_snapshot(
        &self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<Core, StorageError> {
        if index < self.snapshot.get_metadata().index {
            return Err(StorageError::SnapshotOutOfDate { index });
        }
        let term = self.term(index)?;
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        // The snapshot's index was applied, so it is committed: never leave the stored commit
        // index behind it (a restart would start raft-rs with applied > committed).
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = hard_state.commit.max(index);
        Ok(Core {
            snapshot,
            hard_state,
            ..self.clone()
        })
    }

    /// Replace entries from `index` on with `entries`; returns `index`.
    fn splice(&mut self, entries: &[Entry], index: u64) -> Result<u64, StorageError> {
        if index <= self.truncated_index {
            return Err(StorageError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        let last_index = self.last_index();
        if index > last_index + 1 {
            return Err(StorageError::Gap { index, last_index });
        }
        for (offset, entry) in entries.iter().enumerate() {
            if entry.index != index + offset as u64 {
                return Err(StorageError::Gap {
                    index: entry.index,
                    last_index: index + offset as u64 - 1,
                });
            }
        }
        self.entries.truncate((index - self.first_index()) as usize);
        self.entries.extend_from_slice(entries);
        Ok(index)
    }
}

/// What a write changed, so the disk write touches only that.
#[derive(Default)]
struct Written {
    /// Rewrite entries from this index on (0: every entry).
    entries_from: Option<u64>,
    /// Delete entries at or before this index.
    compact_to: Option<u64>,
    hard_state: bool,
    conf_state: bool,
    truncated: bool,
    snapshot: bool,
}

struct Inner {
    core: Core,
    disk: Option<redb::Database>,
}

impl Inner {
    /// Write `next` (the parts `what` names) to disk, fsync, then make it current.
    fn commit(&mut self, next: Core, what: impl FnOnce(&mut Written)) -> Result<(), StorageError> {
        if let Some(db) = &self.disk {
            let mut written = Written::default();
            what(&mut written);
            write(db, &next, &written)?;
        }
        self.core = next;
        Ok(())
    }
}

fn write(db: &redb::Database, core: &Core, what: &Written) -> Result<(), StorageError> {
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut entries = txn.open_table(ENTRIES).map_err(backend)?;
        if let Some(from) = what.entries_from {
            entries.retain_in(from.., |_, _| false).map_err(backend)?;
            for entry in core.entries.iter().filter(|e| e.index >= from) {
                let bytes = entry.write_to_bytes().map_err(encode_error)?;
                entries
                    .insert(entry.index, bytes.as_slice())
                    .map_err(backend)?;
            }
        }
        if let Some(to) = what.compact_to {
            entries.retain_in(..=to, |_, _| false).map_err(backend)?;
        }
        let mut meta = txn.open_table(META).map_err(backend)?;
        let mut put = |key: &str, bytes: Vec<u8>| -> Result<(), StorageError> {
            meta.insert(key, bytes.as_slice()).map_err(backend)?;
            Ok(())
        };
        if what.hard_state {
            put(
                KEY_HARD_STATE,
                core.hard_state.write_to_bytes().map_err(encode_error)?,
            )?;
        }
        if what.conf_state {
            put(
                KEY_CONF_STATE,
                core.conf_state.write_to_bytes().map_err(encode_error)?,
            )?;
        }
        if what.truncated {
            let mut bytes = core.truncated_index.to_le_bytes().to_vec();
            bytes.extend_from_slice(&core.truncated_term.to_le_bytes());
            put(KEY_TRUNCATED, bytes)?;
        }
        if what.snapshot {
            put(
                KEY_SNAPSHOT,
                core.snapshot.write_to_bytes().map_err(encode_error)?,
            )?;
        }
    }
    // Durability::Immediate (redb's default): commit returns after fsync.
    txn.commit().map_err(backend)
}

fn load(db: &redb::Database) -> Result<Core, StorageError> {
    // Create the tables on first open so a read transaction finds them.
    let txn = db.begin_write().map_err(backend)?;
    txn.open_table(ENTRIES).map_err(backend)?;
    txn.open_table(META).map_err(backend)?;
    txn.commit().map_err(backend)?;

    let txn = db.begin_read().map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let read = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
        Ok(meta.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    };
    let mut core = Core::default();
    if let Some(bytes) = read(KEY_HARD_STATE)? {
        core.hard_state = parse(KEY_HARD_STATE, &bytes)?;
    }
    if let Some(bytes) = read(KEY_CONF_STATE)? {
        core.conf_state = parse(KEY_CONF_STATE, &bytes)?;
    }
    if let Some(bytes) = read(KEY_SNAPSHOT)? {
        core.snapshot = parse(KEY_SNAPSHOT, &bytes)?;
    }
    if let Some(bytes) = read(KEY_TRUNCATED)? {
        let (index, term) = bytes
            .split_at_checked(8)
            .and_then(|(i, t)| Some((i.try_into().ok()?, t.try_into().ok()?)))
            .ok_or_else(|| corrupt("truncated state is not 16 bytes"))?;
        core.truncated_index = u64::from_le_bytes(index);
        core.truncated_term = u64::from_le_bytes(term);
    }
    let entries = txn.open_table(ENTRIES).map_err(backend)?;
    for item in entries.iter().map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        let entry: Entry = parse("entry", value.value())?;
        let expected = core.last_index() + 1;
        if key.value() != expected || entry.index != expected {
            return Err(corrupt(&format!(
                "log not contiguous: expected index {expected}, found key {} entry {}",
                key.value(),
                entry.index
            )));
        }
        core.entries.push(entry);
    }
    if core.hard_state.commit > core.last_index() {
        return Err(corrupt("commit index past the last entry"));
    }
    Ok(core)
}

fn parse<M: PbMessage>(what: &str, bytes: &[u8]) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|e| corrupt(&format!("{what}: {e}")))
}

fn corrupt(message: &str) -> StorageError {
    StorageError::Corrupt(message.to_owned())
}

fn backend(e: impl Into<redb::Error>) -> StorageError {
    StorageError::Backend(e.into().to_string())
}

fn encode_error(e: protobuf::ProtobufError) -> StorageError {
    StorageError::Backend(format!("protobuf encode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Entry::default()
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState {
            voters: ids.to_vec(),
            ..ConfState::default()
        }
    }

    fn exercise(store: &RaftStorage) {
        store.initialize(voters(&[1, 2, 3])).unwrap();
        assert_eq!(
            store.initialize(voters(&[1])),
            Err(StorageError::AlreadyInitialized)
        );
        store
            .persist(
                &[entry(1, 1), entry(2, 1), entry(3, 1)],
                Some(hard_state(1, 1, 2)),
            )
            .unwrap();
        // A new leader overwrites the tail.
        store.append(&[entry(3, 2), entry(4, 2)]).unwrap();
        assert_eq!(store.term(3).unwrap(), 2);
        assert_eq!(
            store.append(&[entry(9, 2)]),
            Err(StorageError::Gap {
                index: 9,
                last_index: 4
            })
        );
        assert_eq!(
            store.compact(2),
            Err(StorageError::NotSnapshotted {
                index: 2,
                snapshot_index: 0
            })
        );
        store.set_commit(1).unwrap();
        store
            .create_snapshot(2, voters(&[1, 2, 3]), b"image".to_vec())
            .unwrap();
        assert_eq!(store.hard_state().commit, 2);
        store.compact(2).unwrap();
        assert_eq!(Storage::first_index(store).unwrap(), 3);
        assert_eq!(Storage::last_index(store).unwrap(), 4);
        assert_eq!(store.term(2).unwrap(), 1);
        assert!(store.term(1).is_err());
        assert!(
            store
                .entries(2, 4, None, GetEntriesContext::empty(false))
                .is_err()
        );
        assert!(
            store
                .entries(3, 9, None, GetEntriesContext::empty(false))
                .is_err()
        );
        let got = store
            .entries(3, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, vec![entry(3, 2), entry(4, 2)]);
        assert_eq!(store.snapshot(0, 2).unwrap().get_metadata().index, 2);
        assert!(store.append(&[entry(2, 3)]).is_err());
    }

    #[test]
    fn memory_store_follows_raft_rules() {
        exercise(&RaftStorage::in_memory());
    }

    #[test]
    fn redb_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let expected = {
            let store = RaftStorage::open(&path).unwrap();
            assert!(store.is_durable());
            exercise(&store);
            store.set_commit(4).unwrap();
            format!("{store:?}")
        };
        let store = RaftStorage::open(&path).unwrap();
        assert_eq!(format!("{store:?}"), expected);
        assert_eq!(store.hard_state(), hard_state(1, 1, 4));
        assert_eq!(store.conf_state(), voters(&[1, 2, 3]));
        assert_eq!(store.latest_snapshot().data.as_ref(), b"image");
        let got = store
            .entries(3, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, vec![entry(3, 2), entry(4, 2)]);
    }

    #[test]
    fn snapshot_from_leader_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let store = RaftStorage::open(&path).unwrap();
            store.append(&[entry(1, 1), entry(2, 1)]).unwrap();
            let mut snap = Snapshot {
                data: b"leader image".to_vec().into(),
                ..Snapshot::default()
            };
            snap.mut_metadata().index = 10;
            snap.mut_metadata().term = 3;
            snap.mut_metadata().set_conf_state(voters(&[1, 2, 3, 4]));
            store.apply_snapshot(snap.clone()).unwrap();
            snap.mut_metadata().index = 0;
            assert!(store.apply_snapshot(snap).is_err());
        }
        let store = RaftStorage::open(&path).unwrap();
        assert_eq!(store.first_index_held(), 11);
        assert_eq!(store.last_index_held(), 10);
        assert_eq!(store.term(10).unwrap(), 3);
        assert_eq!(store.hard_state().commit, 10);
        assert_eq!(store.conf_state(), voters(&[1, 2, 3, 4]));
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.redb");
        std::fs::write(&path, vec![0xA5; 8192]).unwrap();
        assert!(RaftStorage::open(&path).is_err());

        let path = dir.path().join("bad-entry.redb");
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(ENTRIES)
                .unwrap()
                .insert(1u64, &b"\xff\xff\xff"[..])
                .unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(
            RaftStorage::open(&path),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Append `len` entries of `term`, starting `back` entries before the end.
        Append { back: u64, len: u64, term: u64 },
        /// Commit up to `back` entries before the end.
        Commit { back: u64 },
        /// Snapshot at `back` entries before the end, then compact `keep` behind it.
        SnapshotCompact { back: u64, keep: u64 },
    }

    fn arb_op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..4, 1u64..6, 1u64..4).prop_map(|(back, len, term)| Op::Append {
                back,
                len,
                term
            }),
            (0u64..4).prop_map(|back| Op::Commit { back }),
            (0u64..4, 0u64..3).prop_map(|(back, keep)| Op::SnapshotCompact { back, keep }),
        ]
    }

    fn run_op(store: &RaftStorage, op: &Op) {
        let last = store.last_index_held();
        let first = store.first_index_held();
        match *op {
            Op::Append { back, len, term } => {
                let start = last.saturating_sub(back).max(first);
                let entries: Vec<Entry> = (start..start + len).map(|i| entry(i, term)).collect();
                let commit = store.hard_state().commit;
                if start <= commit && start <= last {
                    // Raft never rewrites committed entries; both stores refuse to.
                    assert!(matches!(
                        store.append(&entries),
                        Err(StorageError::OverwritesCommitted { .. })
                    ));
                } else {
                    store.append(&entries).unwrap();
                }
            }
            Op::Commit { back } => {
                let commit = last.saturating_sub(back).max(store.hard_state().commit);
                store.set_commit(commit).unwrap();
            }
            Op::SnapshotCompact { back, keep } => {
                let index = last.saturating_sub(back);
                let snapshot_index = store.latest_snapshot().get_metadata().index;
                if index < first || index <= snapshot_index {
                    return;
                }
                store
                    .create_snapshot(index, voters(&[1]), index.to_le_bytes().to_vec())
                    .unwrap();
                store.compact(index.saturating_sub(keep)).unwrap();
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Whatever the writes, the redb store holds after reopening exactly what the
        /// in-memory store holds.
        #[test]
        fn redb_after_reopen_equals_memory(ops in proptest::collection::vec(arb_op(), 1..25)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("raft.redb");
            let memory = RaftStorage::in_memory();
            {
                let durable = RaftStorage::open(&path).unwrap();
                for op in &ops {
                    run_op(&memory, op);
                    run_op(&durable, op);
                }
            }
            let reopened = RaftStorage::open(&path).unwrap();
            let (m, r) = (memory.lock().core.clone(), reopened.lock().core.clone());
            proptest::prop_assert_eq!(m, r);
        }
    }
}
