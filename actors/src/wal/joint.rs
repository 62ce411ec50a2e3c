//! [`JointAppend`]: the shard parts of one `send_batch` written as one WAL append.
//!
//! `Herald::send_batch` splits a batch by device shard and every shard appends its part to the
//! WAL itself (it decides first which pushes are duplicates or do not fit). Appended one by
//! one, a batch spread over four shards took two or three commits in a row behind the
//! group-commit writer: the first part started a commit alone, the others queued for the next.
//! A `JointAppend` collects the parts instead and appends them as **one** batch once every
//! part is in (or known to bring nothing), so a batch costs one commit.
//!
//! Every part is settled exactly once: by [`JointPart::append`], or as empty by dropping it (a
//! shard with nothing to append, a request dropped unprocessed, a shard that stopped) or
//! through its [`PartHandle`] (the engine, when it stops waiting for the shard to take the
//! request). Whatever comes second does nothing. So the other parts never wait for one that
//! will not come.
//!
//! If the joint append fails with [`WalError::Full`] or [`WalError::RecordTooLarge`], each part
//! is appended again on its own, so one shard's oversized record or the WAL's last free places
//! decide only that part's answer — the same rule as [`GroupCommitWal`](super::GroupCommitWal).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{AppendReply as Reply, SharedWal, WalError, WalRecord, append_together};

/// Collects the parts of one batch into one [`Wal::append`](super::Wal::append).
#[derive(Debug)]
pub(crate) struct JointAppend {
    wal: SharedWal,
    state: Mutex<Parts>,
}

#[derive(Debug)]
struct Parts {
    /// Parts not settled yet.
    remaining: usize,
    /// Each contributing part's records and the sender of its answer.
    taken: Vec<(Vec<WalRecord>, Reply)>,
}

/// One shard's share of a [`JointAppend`]; dropped unused, it settles as empty.
#[derive(Debug)]
pub(crate) struct JointPart {
    handle: PartHandle,
}

/// Settles a [`JointPart`] held by someone else as empty (see [`PartHandle::skip`]).
#[derive(Debug, Clone)]
pub(crate) struct PartHandle {
    joint: Arc<JointAppend>,
    settled: Arc<AtomicBool>,
}

impl JointAppend {
    /// A joint append of `parts` parts to `wal`, and its parts.
    pub(crate) fn split(wal: SharedWal, parts: usize) -> Vec<JointPart> {
        let joint = Arc::new(JointAppend {
            wal,
            state: Mutex::new(Parts {
                remaining: parts,
                taken: Vec::with_capacity(parts),
            }),
        });
        (0..parts)
            .map(|_| JointPart {
                handle: PartHandle {
                    joint: Arc::clone(&joint),
                    settled: Arc::new(AtomicBool::new(false)),
                },
            })
            .collect()
    }

    /// Settle one part (with `records`, or as empty with `None`); returns every part's records
    /// once this was the last one to settle.
    fn settle(
        &self,
        records: Option<(Vec<WalRecord>, Reply)>,
    ) -> Option<Vec<(Vec<WalRecord>, Reply)>> {
        // Settling never panics while holding the lock, so a poisoned lock still holds
        // consistent parts.
        let mut parts = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(part) = records {
            parts.taken.push(part);
        }
        parts.remaining = parts.remaining.saturating_sub(1);
        if parts.remaining == 0 && !parts.taken.is_empty() {
            Some(std::mem::take(&mut parts.taken))
        } else {
            None
        }
    }
}

impl JointPart {
    /// Append `records` together with the other parts; answers when the joint append (or, if
    /// it failed for lack of room, this part's own) finished.
    ///
    /// # Errors
    /// What the WAL answered; [`WalError::Closed`] if this part was settled already or the
    /// task appending for every part was dropped (runtime shut down).
    pub(crate) async fn append(self, records: Vec<WalRecord>) -> Result<(), WalError> {
        let handle = &self.handle;
        if handle.settled.swap(true, Ordering::AcqRel) {
            return Err(WalError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        if let Some(taken) = handle.joint.settle(Some((records, reply))) {
            // The last part in appends for everyone.
            append_together(handle.joint.wal.as_ref(), taken, || {}).await;
        }
        answer.await.unwrap_or(Err(WalError::Closed))
    }

    /// A handle that can settle this part as empty while someone else holds it.
    pub(crate) fn handle(&self) -> PartHandle {
        self.handle.clone()
    }
}

impl Drop for JointPart {
    fn drop(&mut self) {
        self.handle.skip();
    }
}

impl PartHandle {
    /// Settle the part as bringing nothing (no-op if it was settled already). If it was the
    /// last one, the others' records are appended on a new task.
    pub(crate) fn skip(&self) {
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(taken) = self.joint.settle(None) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let wal = Arc::clone(&self.joint.wal);
                runtime.spawn(async move { append_together(wal.as_ref(), taken, || {}).await });
            }
            // No runtime left (shutting down): dropping the replies answers `Closed`.
            Err(_) => drop(taken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{MemoryWal, WalLimits};

    fn record(id: u128, shard: u32) -> WalRecord {
        WalRecord::new(id, shard, vec![1, 2, 3])
    }

    /// The `N` parts of a joint append to `wal`.
    fn parts<const N: usize>(wal: &SharedWal) -> [JointPart; N] {
        let parts = JointAppend::split(Arc::clone(wal), N);
        parts
            .try_into()
            .unwrap_or_else(|_| unreachable!("split makes N parts"))
    }

    #[tokio::test]
    async fn parts_are_appended_once_all_are_settled() {
        let wal: SharedWal = Arc::new(MemoryWal::new());
        let [first, second, third] = parts(&wal);
        let a = tokio::spawn(first.append(vec![record(1, 0), record(2, 0)]));
        tokio::task::yield_now().await;
        assert_eq!(
            wal.len(),
            0,
            "nothing is appended before every part is settled"
        );
        let engine_handle = second.handle();
        drop(second); // a request dropped unprocessed
        tokio::task::yield_now().await;
        assert_eq!(wal.len(), 0);
        engine_handle.skip(); // settled by the drop already: counts nothing twice
        tokio::task::yield_now().await;
        assert_eq!(wal.len(), 0);
        let c = tokio::spawn(third.append(vec![record(3, 2)]));
        assert_eq!(c.await.unwrap(), Ok(()));
        assert_eq!(a.await.unwrap(), Ok(()));
        assert_eq!(wal.len(), 3);
    }

    #[tokio::test]
    async fn the_last_part_skipped_appends_the_others() {
        let wal: SharedWal = Arc::new(MemoryWal::new());
        let [first, second] = parts(&wal);
        let waiting = tokio::spawn(first.append(vec![record(1, 0)]));
        tokio::task::yield_now().await;
        // The engine stopped waiting for the shard: the shard's part may not append after.
        second.handle().skip();
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(wal.len(), 1);
        assert_eq!(
            second.append(vec![record(9, 1)]).await,
            Err(WalError::Closed)
        );
        assert_eq!(wal.len(), 1);
    }

    #[tokio::test]
    async fn without_room_each_part_gets_its_own_answer() {
        let wal: SharedWal = Arc::new(MemoryWal::with_limits(WalLimits::new(2, 1 << 20, 1 << 10)));
        let [first, second] = parts(&wal);
        let small = tokio::spawn(first.append(vec![record(1, 0), record(2, 0)]));
        tokio::task::yield_now().await;
        let big = second.append(vec![record(3, 1)]).await;
        assert_eq!(
            small.await.unwrap(),
            Ok(()),
            "the part that fits is appended"
        );
        assert_eq!(big, Err(WalError::Full));
        assert_eq!(wal.len(), 2);
    }
}
