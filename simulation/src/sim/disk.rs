//! The simulated disk: what each host keeps across a crash.
//!
//! A host's software (its futures, actors and memory) is dropped when turmoil crashes it;
//! its disk lives here, outside the host, keyed by host name, and is handed to the next
//! incarnation:
//!
//! - **Raft storage**: a [`RaftStorage`] whose every write is synced before the call
//!   returns (the production store fsyncs each write), so everything it holds survives.
//! - **Write-ahead log**: a [`SimWal`]. An `append` first "writes and fsyncs" for
//!   [`FSYNC_LATENCY`] of simulated time and only then makes the batch durable and answers
//!   `Ok`; a crash during that time drops the future, so the unsynced batch is lost and was
//!   never acknowledged. Completions are made durable the same way (a lost completion means
//!   a resend, which at-least-once allows). `complete_at` keeps a done marker per completed
//!   record in the same commit, bounded like the production WAL (retention and count of
//!   [`WalLimits`]), so a shard's durable dedupe survives a simulated crash.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use herald_actors::seams::{BoxFuture, Timestamp};
use herald_actors::wal::{Completion, Finished, Wal, WalError, WalLimits, WalRecord};
use herald_cluster::raft::RaftStorage;

/// Simulated time one WAL write + fsync takes.
pub const FSYNC_LATENCY: Duration = Duration::from_millis(2);

/// Every host's disk. Cloning gives another handle to the same disks.
#[derive(Clone, Default)]
pub struct SimDisk(Arc<Mutex<BTreeMap<String, HostDisk>>>);

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk")
            .field("hosts", &self.lock().keys().cloned().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Default)]
struct HostDisk {
    raft: Option<RaftStorage>,
    wal: Arc<Mutex<DurableWal>>,
}

impl SimDisk {
    /// The Raft storage on `host`'s disk (created empty the first time).
    pub fn raft_storage(&self, host: &str) -> RaftStorage {
        self.lock()
            .entry(host.to_owned())
            .or_default()
            .raft
            .get_or_insert_with(RaftStorage::in_memory)
            .clone()
    }

    /// The write-ahead log on `host`'s disk, bounded by `limits`.
    pub fn wal(&self, host: &str, limits: WalLimits) -> SimWal {
        let durable = self.lock().entry(host.to_owned()).or_default().wal.clone();
        SimWal { durable, limits }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, HostDisk>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The synced contents of one WAL.
#[derive(Debug, Default)]
struct DurableWal {
    records: BTreeMap<u64, WalRecord>,
    by_id: BTreeMap<u128, u64>,
    bytes: u64,
    next_seq: u64,
    /// Done markers in finish order (marker sequence number → marker).
    finished: BTreeMap<u64, Finished>,
    next_finished: u64,
}

/// A [`Wal`] on the simulated disk. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SimWal {
    durable: Arc<Mutex<DurableWal>>,
    limits: WalLimits,
}

impl SimWal {
    fn lock(&self) -> MutexGuard<'_, DurableWal> {
        self.durable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Check and apply a batch atomically (after its fsync).
    fn append_now(&self, batch: Vec<WalRecord>) -> Result<(), WalError> {
        let mut wal = self.lock();
        let mut fresh: Vec<WalRecord> = Vec::with_capacity(batch.len());
        let mut added_bytes = 0u64;
        for record in batch {
            if record.data.len() > self.limits.record_bytes_max() {
                return Err(WalError::RecordTooLarge {
                    id: record.id,
                    bytes: record.data.len(),
                    max: self.limits.record_bytes_max(),
                });
            }
            if wal.by_id.contains_key(&record.id) || fresh.iter().any(|r| r.id == record.id) {
                continue;
            }
            added_bytes += record.data.len() as u64;
            fresh.push(record);
        }
        if wal.by_id.len() + fresh.len() > self.limits.records_max()
            || wal.bytes + added_bytes > self.limits.bytes_max()
        {
            return Err(WalError::Full);
        }
        for record in fresh {
            let seq = wal.next_seq;
            wal.next_seq += 1;
            wal.by_id.insert(record.id, seq);
            wal.records.insert(seq, record);
        }
        wal.bytes += added_bytes;
        Ok(())
    }
}

impl SimWal {
    /// Remove the pending records named by `done` (after the fsync); return the (id, shard,
    /// note) of those that were pending.
    fn complete_now(wal: &mut DurableWal, done: Vec<Completion>) -> Vec<(u128, u32, Bytes)> {
        let mut completed = Vec::new();
        for completion in done {
            if let Some(seq) = wal.by_id.remove(&completion.id)
                && let Some(record) = wal.records.remove(&seq)
            {
                wal.bytes -= record.data.len() as u64;
                completed.push((completion.id, record.shard, completion.kept_note()));
            }
        }
        completed
    }

    /// Keep a marker for each of `done` finished at `at`, then drop the markers older than the
    /// retention before `at` and the oldest beyond the count bound.
    fn keep_markers(&self, wal: &mut DurableWal, done: Vec<(u128, u32, Bytes)>, at: Timestamp) {
        for (id, shard, note) in done {
            let seq = wal.next_finished;
            wal.next_finished += 1;
            wal.finished.insert(
                seq,
                Finished {
                    id,
                    shard,
                    at,
                    note,
                },
            );
        }
        let oldest_kept = at.saturating_sub(self.limits.finished_retention());
        wal.finished.retain(|_, marker| marker.at >= oldest_kept);
        while wal.finished.len() > self.limits.finished_max() {
            wal.finished.pop_first();
        }
    }
}

impl Wal for SimWal {
    fn append(&self, batch: Vec<WalRecord>) -> BoxFuture<'_, Result<(), WalError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            // Write + fsync. A crash now drops this future: the batch never reaches the disk.
            tokio::time::sleep(FSYNC_LATENCY).await;
            self.append_now(batch)
        })
    }

    fn complete(&self, ids: Vec<u128>) -> BoxFuture<'_, Result<(), WalError>> {
        Box::pin(async move {
            tokio::time::sleep(FSYNC_LATENCY).await;
            Self::complete_now(
                &mut self.lock(),
                ids.into_iter().map(Completion::bare).collect(),
            );
            Ok(())
        })
    }

    fn complete_with(
        &self,
        done: Vec<Completion>,
        at: Timestamp,
    ) -> BoxFuture<'_, Result<(), WalError>> {
        Box::pin(async move {
            // Write + fsync; a crash now loses the completion and its markers together.
            tokio::time::sleep(FSYNC_LATENCY).await;
            let mut wal = self.lock();
            let done = Self::complete_now(&mut wal, done);
            self.keep_markers(&mut wal, done, at);
            Ok(())
        })
    }

    fn finished(&self) -> BoxFuture<'_, Result<Vec<Finished>, WalError>> {
        Box::pin(async move { Ok(self.lock().finished.values().cloned().collect()) })
    }

    fn replay(&self) -> BoxFuture<'_, Result<Vec<WalRecord>, WalError>> {
        Box::pin(async move { Ok(self.lock().records.values().cloned().collect()) })
    }

    fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_unsynced_append_is_lost_and_a_synced_one_survives() {
        let disk = SimDisk::default();
        let wal = disk.wal("n1", WalLimits::new(2, 1024, 64));
        wal.append(vec![WalRecord::new(1, 0, &b"a"[..])])
            .await
            .unwrap();
        // A "crash" mid-append: the future is dropped before its fsync finished.
        let crashed = wal.append(vec![WalRecord::new(2, 0, &b"b"[..])]);
        let _ = tokio::time::timeout(FSYNC_LATENCY / 2, crashed).await;
        let next = disk.wal("n1", WalLimits::default());
        let ids: Vec<u128> = next.replay().await.unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1]);
        // Bounds and idempotence.
        let too_big = WalRecord::new(3, 0, vec![0u8; 65]);
        assert!(matches!(
            wal.append(vec![too_big]).await,
            Err(WalError::RecordTooLarge { .. })
        ));
        wal.append(vec![
            WalRecord::new(1, 0, &b"a"[..]),
            WalRecord::new(4, 0, &b"d"[..]),
        ])
        .await
        .unwrap();
        assert_eq!(wal.len(), 2);
        assert_eq!(
            wal.append(vec![WalRecord::new(5, 0, &b"e"[..])]).await,
            Err(WalError::Full)
        );
        wal.complete(vec![1, 4, 99]).await.unwrap();
        assert!(wal.is_empty());
        assert_eq!(wal.bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn done_markers_survive_a_crash_within_their_bounds() {
        let disk = SimDisk::default();
        let limits = WalLimits::new(8, 1024, 64).with_finished(2, Duration::from_secs(10));
        let wal = disk.wal("n1", limits);
        let batch = (1..=3).map(|id| WalRecord::new(id, id as u32, &b"x"[..]));
        wal.append(batch.collect()).await.unwrap();
        wal.complete_at(vec![1, 2], Timestamp::from_secs(1))
            .await
            .unwrap();
        // A crash mid-completion loses record 3's completion and marker together.
        let crashed = wal.complete_at(vec![3], Timestamp::from_secs(2));
        let _ = tokio::time::timeout(FSYNC_LATENCY / 2, crashed).await;
        let next = disk.wal("n1", limits);
        let ids =
            |markers: Vec<Finished>| markers.iter().map(|m| (m.id, m.shard)).collect::<Vec<_>>();
        assert_eq!(ids(next.finished().await.unwrap()), vec![(1, 1), (2, 2)]);
        assert_eq!(next.len(), 1);
        // Count bound: the oldest marker goes. Unknown ids keep no marker.
        next.complete_at(vec![3, 99], Timestamp::from_secs(3))
            .await
            .unwrap();
        assert_eq!(ids(next.finished().await.unwrap()), vec![(2, 2), (3, 3)]);
        // Retention bound: markers older than 10 s before `at` go.
        next.complete_at(vec![], Timestamp::from_secs(12))
            .await
            .unwrap();
        assert_eq!(ids(next.finished().await.unwrap()), vec![(3, 3)]);
    }
}
