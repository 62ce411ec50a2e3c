//! [`GroupCommitWal`]: many concurrent appenders, one commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{
    AppendReply as Reply, Completion, Finished, SharedWal, Wal, WalError, WalRecord,
    append_together,
};
use crate::limits::{WAL_GROUP_COMMIT_QUEUE_MAX, WAL_GROUP_COMMIT_RECORDS_MAX};
use crate::seams::{BoxFuture, Timestamp};

/// Settings of a [`GroupCommitWal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Requests that may wait for the writer. Default value: [`WAL_GROUP_COMMIT_QUEUE_MAX`].
    pub queue_max: usize,
    /// The writer stops draining once a group holds this many records. Default value:
    /// [`WAL_GROUP_COMMIT_RECORDS_MAX`].
    pub group_records_max: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            queue_max: WAL_GROUP_COMMIT_QUEUE_MAX,
            group_records_max: WAL_GROUP_COMMIT_RECORDS_MAX,
        }
    }
}

/// A [`Wal`] that coalesces concurrent appends (and completions) into one commit of the wrapped
/// WAL.
///
/// Callers send their batch over a bounded channel with a oneshot for the answer. One writer
/// task takes the first request, drains every request already waiting (up to
/// [`WAL_GROUP_COMMIT_RECORDS_MAX`] records), appends them to the wrapped WAL as **one** batch
/// (one transaction, one fsync) and answers every caller. While that commit runs, new requests
/// queue up and form the next group, so the commit rate adapts to the fsync latency by itself.
///
/// A group's completions are merged too (one operation for those keeping done markers, one
/// for plain `complete`s; merged `complete_at` calls keep their markers with the latest of
/// their finish times) and committed **after** the group's appends: an append's callers are
/// waiting to acknowledge pushes, a completion only reclaims space. That reordering is safe
/// because a record is completed only after its append returned, i.e. in an earlier group;
/// the one exception, a completion naming an id that an append of the same group writes
/// again, is detected, and then the completions go first, as their callers issued them.
///
/// Each caller keeps its own answer: if the merged batch fails with [`WalError::Full`] or
/// [`WalError::RecordTooLarge`], the writer retries each caller's batch on its own, so one
/// caller's oversized record or the last free slots never fail another caller. Any other error
/// (I/O) is answered to every caller of the group.
///
/// When the queue holds [`WAL_GROUP_COMMIT_QUEUE_MAX`] requests, `append` and `complete` fail
/// at once with [`WalError::Full`] (answer `Overloaded`) rather than wait.
///
/// `replay`, `finished`, `len` and `bytes` go straight to the wrapped WAL: replay before
/// appending.
/// The writer task ends when the last handle is dropped.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use herald_actors::wal::{FileWal, GroupCommitWal, SharedWal, Wal, WalRecord};
///
/// let dir = tempfile::tempdir().unwrap();
/// let file = FileWal::open(dir.path().join("shard-7.redb"))?;
/// let wal: SharedWal = Arc::new(GroupCommitWal::spawn(Arc::new(file.clone())));
/// // Recover first, then take new work.
/// assert!(wal.replay().await?.is_empty());
/// let appenders: Vec<_> = (0..8u128)
///     .map(|id| {
///         let wal = Arc::clone(&wal);
///         tokio::spawn(async move { wal.append(vec![WalRecord::new(id, 7, vec![1, 2, 3])]).await })
///     })
///     .collect();
/// for appender in appenders {
///     appender.await.unwrap()?; // durable: safe to answer 202
/// }
/// assert_eq!(wal.len(), 8);
/// assert!(file.commits() <= 8);
/// # Ok::<(), herald_actors::wal::WalError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct GroupCommitWal {
    inner: SharedWal,
    requests: mpsc::Sender<Request>,
    commits: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Request {
    Append {
        batch: Vec<WalRecord>,
        reply: oneshot::Sender<Result<(), WalError>>,
    },
    Complete {
        done: Vec<Completion>,
        /// `Some` for `complete_at`/`complete_with` (keep done markers finished then).
        at: Option<Timestamp>,
        reply: oneshot::Sender<Result<(), WalError>>,
    },
}

impl GroupCommitWal {
    /// Wrap `inner` with the default [`GroupCommitConfig`] and spawn the writer task.
    ///
    /// # Panics
    /// If called outside a tokio runtime.
    #[track_caller]
    pub fn spawn(inner: SharedWal) -> Self {
        GroupCommitWal::spawn_with(inner, GroupCommitConfig::default())
    }

    /// Wrap `inner` with `config` and spawn the writer task.
    ///
    /// # Panics
    /// If called outside a tokio runtime, or if a value of `config` is zero.
    #[track_caller]
    pub fn spawn_with(inner: SharedWal, config: GroupCommitConfig) -> Self {
        assert!(
            config.queue_max > 0,
            "GroupCommitConfig::queue_max must be > 0"
        );
        assert!(
            config.group_records_max > 0,
            "GroupCommitConfig::group_records_max must be > 0"
        );
        let (requests, receiver) = mpsc::channel(config.queue_max);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            inner: Arc::clone(&inner),
            requests: receiver,
            group_records_max: config.group_records_max,
            commits: Arc::clone(&commits),
        };
        tokio::spawn(writer.run());
        GroupCommitWal {
            inner,
            requests,
            commits,
        }
    }

    /// How many operations (appends and completions) the writer issued to the wrapped WAL:
    /// one commit each.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn submit(
        &self,
        request: Request,
        reply: oneshot::Receiver<Result<(), WalError>>,
    ) -> BoxFuture<'_, Result<(), WalError>> {
        let sent = self.requests.try_send(request);
        Box::pin(async move {
            match sent {
                Ok(()) => reply.await.unwrap_or(Err(WalError::Closed)),
                Err(mpsc::error::TrySendError::Full(_)) => Err(WalError::Full),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(WalError::Closed),
            }
        })
    }
}

impl Wal for GroupCommitWal {
    fn append(&self, batch: Vec<WalRecord>) -> BoxFuture<'_, Result<(), WalError>> {
        if batch.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Request::Append { batch, reply }, answer)
    }

    fn complete(&self, ids: Vec<u128>) -> BoxFuture<'_, Result<(), WalError>> {
        if ids.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let (reply, answer) = oneshot::channel();
        let request = Request::Complete {
            done: ids.into_iter().map(Completion::bare).collect(),
            at: None,
            reply,
        };
        self.submit(request, answer)
    }

    fn complete_with(
        &self,
        done: Vec<Completion>,
        at: Timestamp,
    ) -> BoxFuture<'_, Result<(), WalError>> {
        if done.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let (reply, answer) = oneshot::channel();
        let request = Request::Complete {
            done,
            at: Some(at),
            reply,
        };
        self.submit(request, answer)
    }

    fn finished(&self) -> BoxFuture<'_, Result<Vec<Finished>, WalError>> {
        self.inner.finished()
    }

    fn replay(&self) -> BoxFuture<'_, Result<Vec<WalRecord>, WalError>> {
        self.inner.replay()
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn bytes(&self) -> u64 {
        self.inner.bytes()
    }
}

struct Writer {
    inner: SharedWal,
    requests: mpsc::Receiver<Request>,
    group_records_max: usize,
    commits: Arc<AtomicU64>,
}

/// Completions merged into one operation of the wrapped WAL.
#[derive(Default)]
struct Completions {
    done: Vec<Completion>,
    /// The latest finish time of merged `complete_at` calls (`None`: plain `complete`s).
    at: Option<Timestamp>,
    replies: Vec<Reply>,
}

impl Completions {
    fn add(&mut self, done: Vec<Completion>, at: Option<Timestamp>, reply: Reply) {
        self.done.extend(done);
        self.at = self.at.max(at);
        self.replies.push(reply);
    }
}

/// Everything the writer took from the queue for one round.
#[derive(Default)]
struct Group {
    appends: Vec<(Vec<WalRecord>, Reply)>,
    /// `complete_at`/`complete_with` calls (they keep done markers).
    marked: Completions,
    /// Plain `complete` calls.
    plain: Completions,
}

impl Group {
    fn add(&mut self, request: Request) -> usize {
        match request {
            Request::Append { batch, reply } => {
                let n = batch.len();
                self.appends.push((batch, reply));
                n
            }
            Request::Complete { done, at, reply } => {
                let n = done.len();
                match at {
                    Some(_) => self.marked.add(done, at, reply),
                    None => self.plain.add(done, None, reply),
                }
                n
            }
        }
    }

    /// True if a completion of this group names a record an append of this group writes
    /// (possible only when an id is reused right after it finished): then the completions
    /// must go first, as their callers issued them first.
    fn completes_an_appended_id(&self) -> bool {
        if self.marked.replies.is_empty() && self.plain.replies.is_empty() {
            return false;
        }
        let appended: std::collections::BTreeSet<u128> = self
            .appends
            .iter()
            .flat_map(|(batch, _)| batch.iter().map(|r| r.id))
            .collect();
        self.marked
            .done
            .iter()
            .chain(&self.plain.done)
            .any(|c| appended.contains(&c.id))
    }
}

impl Writer {
    async fn run(mut self) {
        loop {
            let Some(first) = self.requests.recv().await else {
                return; // every handle dropped
            };
            let mut group = Group::default();
            let mut records = group.add(first);
            while records < self.group_records_max {
                match self.requests.try_recv() {
                    Ok(request) => records += group.add(request),
                    Err(_) => break,
                }
            }
            let completions_first = group.completes_an_appended_id();
            let Group {
                appends,
                marked,
                plain,
            } = group;
            if completions_first {
                self.commit_completions(marked).await;
                self.commit_completions(plain).await;
                self.commit_appends(appends).await;
            } else {
                // Appends first: their callers wait to acknowledge pushes, while completions
                // only reclaim space (nobody waits on them but the shard's next completion).
                self.commit_appends(appends).await;
                self.commit_completions(marked).await;
                self.commit_completions(plain).await;
            }
        }
    }

    async fn commit_appends(&self, group: Vec<(Vec<WalRecord>, Reply)>) {
        if group.is_empty() {
            return;
        }
        let callers = group.len();
        append_together(self.inner.as_ref(), group, || {
            self.commits.fetch_add(1, Ordering::Relaxed);
        })
        .await;
        tracing::trace!(callers, "group commit");
    }

    async fn commit_completions(&self, group: Completions) {
        if group.replies.is_empty() {
            return;
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        let result = match group.at {
            Some(at) => self.inner.complete_with(group.done, at).await,
            None => {
                let ids = group.done.into_iter().map(|c| c.id).collect();
                self.inner.complete(ids).await
            }
        };
        for reply in group.replies {
            let _ = reply.send(result.clone());
        }
    }
}
