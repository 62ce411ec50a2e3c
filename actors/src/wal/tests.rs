//! One suite run against every [`Wal`] implementation, plus implementation-specific tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use super::*;

fn record(id: u128, data: &str) -> WalRecord {
    WalRecord::new(id, (id % 4) as u32, data.as_bytes().to_vec())
}

fn ids(records: &[WalRecord]) -> Vec<u128> {
    records.iter().map(|r| r.id).collect()
}

fn small_limits() -> WalLimits {
    WalLimits::new(4, 100, 40)
}

/// The behaviour every WAL shares. `make` opens a fresh WAL with the given limits.
async fn suite(make: &dyn Fn(WalLimits) -> SharedWal) {
    // Append order is replay order, across batches; completions remove records.
    let wal = make(WalLimits::default());
    assert!(wal.is_empty());
    wal.append(vec![record(3, "c"), record(1, "a")])
        .await
        .unwrap();
    wal.append(vec![record(2, "b")]).await.unwrap();
    wal.append(vec![]).await.unwrap();
    assert_eq!(wal.len(), 3);
    assert_eq!(wal.bytes(), 3);
    assert_eq!(ids(&wal.replay().await.unwrap()), vec![3, 1, 2]);
    wal.complete(vec![1, 99]).await.unwrap();
    wal.complete(vec![1]).await.unwrap(); // twice is harmless
    let replayed = wal.replay().await.unwrap();
    assert_eq!(replayed, vec![record(3, "c"), record(2, "b")]);
    assert_eq!(wal.len(), 2);
    assert_eq!(wal.bytes(), 2);

    // Appends are idempotent per id: the first record wins, within and across batches.
    wal.append(vec![record(3, "other"), record(4, "d"), record(4, "dup")])
        .await
        .unwrap();
    assert_eq!(
        wal.replay().await.unwrap(),
        vec![record(3, "c"), record(2, "b"), record(4, "d")]
    );
    // A completed id may be appended again, and goes to the end.
    wal.complete(vec![3]).await.unwrap();
    wal.append(vec![record(3, "again")]).await.unwrap();
    assert_eq!(ids(&wal.replay().await.unwrap()), vec![2, 4, 3]);
    wal.complete(vec![2, 3, 4]).await.unwrap();
    assert!(wal.is_empty());
    assert_eq!(wal.bytes(), 0);

    // Bounds: records, bytes, record size. A failing batch appends nothing.
    let wal = make(small_limits());
    wal.append(vec![record(1, "a"), record(2, "b"), record(3, "c")])
        .await
        .unwrap();
    assert_eq!(
        wal.append(vec![record(4, "d"), record(5, "e")]).await,
        Err(WalError::Full)
    );
    assert_eq!(wal.len(), 3);
    wal.append(vec![record(4, "d")]).await.unwrap();
    assert_eq!(wal.append(vec![record(5, "e")]).await, Err(WalError::Full));
    // A batch of only pending ids adds nothing, so it fits even when full.
    wal.append(vec![record(1, "a")]).await.unwrap();
    wal.complete(vec![1, 2, 3, 4]).await.unwrap();

    let big = "x".repeat(41);
    assert_eq!(
        wal.append(vec![record(5, "e"), record(6, &big)]).await,
        Err(WalError::RecordTooLarge {
            id: 6,
            bytes: 41,
            max: 40
        })
    );
    assert!(wal.is_empty());
    let forty = "y".repeat(40);
    wal.append(vec![record(7, &forty), record(8, &forty)])
        .await
        .unwrap();
    assert_eq!(
        wal.append(vec![record(9, &forty)]).await,
        Err(WalError::Full),
        "byte bound"
    );
    assert_eq!(wal.bytes(), 80);
    assert_eq!(ids(&wal.replay().await.unwrap()), vec![7, 8]);

    finished_markers(make).await;
}

fn at(secs: u64) -> crate::seams::Timestamp {
    crate::seams::Timestamp::from_secs(secs)
}

fn marker_ids(markers: &[Finished]) -> Vec<u128> {
    markers.iter().map(|m| m.id).collect()
}

/// Done markers: kept by `complete_at` (not by `complete`), only for pending records, in
/// finish order, trimmed by count and by age relative to the newest completion.
async fn finished_markers(make: &dyn Fn(WalLimits) -> SharedWal) {
    let limits = WalLimits::default().with_finished(3, std::time::Duration::from_secs(100));
    let wal = make(limits);
    assert!(wal.finished().await.unwrap().is_empty());
    let batch: Vec<WalRecord> = (1..=6).map(|id| record(id, "p")).collect();
    wal.append(batch).await.unwrap();
    wal.complete(vec![1]).await.unwrap();
    assert!(
        wal.finished().await.unwrap().is_empty(),
        "complete keeps no marker"
    );
    // 99 is not pending: no marker for it.
    wal.complete_at(vec![2, 99], at(1_000)).await.unwrap();
    assert_eq!(
        wal.finished().await.unwrap(),
        vec![Finished {
            id: 2,
            shard: 2,
            at: at(1_000),
            note: Bytes::new(),
        }]
    );
    assert_eq!(ids(&wal.replay().await.unwrap()), vec![3, 4, 5, 6]);
    // Count bound: the oldest goes first.
    wal.complete_at(vec![3, 4], at(1_010)).await.unwrap();
    wal.complete_at(vec![5], at(1_020)).await.unwrap();
    assert_eq!(marker_ids(&wal.finished().await.unwrap()), vec![3, 4, 5]);
    // Age bound: markers finished more than 100 s before the newest completion go.
    wal.complete_at(vec![6], at(1_115)).await.unwrap();
    assert_eq!(marker_ids(&wal.finished().await.unwrap()), vec![5, 6]);
    assert!(wal.is_empty());
    // A batch larger than the bound keeps its newest.
    let batch: Vec<WalRecord> = (10..15).map(|id| record(id, "q")).collect();
    wal.append(batch).await.unwrap();
    wal.complete_at((10..15).collect(), at(1_120))
        .await
        .unwrap();
    assert_eq!(marker_ids(&wal.finished().await.unwrap()), vec![12, 13, 14]);
    // Notes: kept with their markers; one past the bound is dropped, its marker kept.
    wal.append(vec![record(20, "r"), record(21, "s")])
        .await
        .unwrap();
    let notes = complete_and_list_notes(
        &*wal,
        vec![
            Completion::new(20, &b"delivered"[..]),
            Completion::new(21, vec![7u8; WAL_NOTE_BYTES_MAX + 1]),
        ],
        at(1_130),
    )
    .await;
    assert_eq!(
        notes,
        [(14, "".into()), (20, "delivered".into()), (21, "".into())]
    );
    // Out of order, an id that is not pending, and an id named twice (its first note wins).
    wal.append(vec![record(31, "t"), record(30, "u")])
        .await
        .unwrap();
    let notes = complete_and_list_notes(
        &*wal,
        vec![
            Completion::new(31, &b"b"[..]),
            Completion::new(99, &b"x"[..]),
            Completion::new(30, &b"a"[..]),
            Completion::new(31, &b"c"[..]),
        ],
        at(1_140),
    )
    .await;
    assert_eq!(notes, [(21, "".into()), (30, "a".into()), (31, "b".into())]);
}

/// Complete `done` at `at`, then list every kept marker's (id, note as text).
async fn complete_and_list_notes(
    wal: &dyn Wal,
    done: Vec<Completion>,
    at: crate::seams::Timestamp,
) -> Vec<(u128, String)> {
    wal.complete_with(done, at).await.unwrap();
    let markers = wal.finished().await.unwrap();
    markers
        .into_iter()
        .map(|m| (m.id, String::from_utf8_lossy(&m.note).into_owned()))
        .collect()
}

#[tokio::test]
async fn memory_wal_suite() {
    suite(&|limits| Arc::new(MemoryWal::with_limits(limits))).await;
}

#[tokio::test]
async fn file_wal_suite() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    suite(&|limits| {
        let path = dir
            .path()
            .join(format!("wal-{}.redb", n.fetch_add(1, Ordering::Relaxed)));
        Arc::new(FileWal::open_with_limits(path, limits).unwrap())
    })
    .await;
}

#[tokio::test]
async fn group_commit_wal_suite() {
    suite(&|limits| {
        Arc::new(GroupCommitWal::spawn(Arc::new(MemoryWal::with_limits(
            limits,
        ))))
    })
    .await;
}

#[tokio::test]
async fn group_commit_over_file_wal_suite() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    suite(&|limits| {
        let path = dir
            .path()
            .join(format!("wal-{}.redb", n.fetch_add(1, Ordering::Relaxed)));
        Arc::new(GroupCommitWal::spawn(Arc::new(
            FileWal::open_with_limits(path, limits).unwrap(),
        )))
    })
    .await;
}

/// A WAL that holds every append until the test releases it, and records batch sizes and the
/// operations it is given.
#[derive(Debug)]
struct GatedWal {
    inner: MemoryWal,
    gate: Semaphore,
    batches: std::sync::Mutex<Vec<usize>>,
    ops: std::sync::Mutex<Vec<String>>,
}

impl GatedWal {
    /// Over `inner`, letting `permits` appends through before the test adds more.
    fn new(inner: MemoryWal, permits: usize) -> Arc<Self> {
        Arc::new(GatedWal {
            inner,
            gate: Semaphore::new(permits),
            batches: std::sync::Mutex::new(Vec::new()),
            ops: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn log(&self, op: &str, ids: &[u128]) {
        self.ops.lock().unwrap().push(format!("{op} {ids:?}"));
    }
}

impl Wal for GatedWal {
    fn append(&self, batch: Vec<WalRecord>) -> BoxFuture<'_, Result<(), WalError>> {
        Box::pin(async move {
            self.gate.acquire().await.unwrap().forget();
            self.batches.lock().unwrap().push(batch.len());
            self.log("append", &ids(&batch));
            self.inner.append(batch).await
        })
    }
    fn complete(&self, ids: Vec<u128>) -> BoxFuture<'_, Result<(), WalError>> {
        self.log("complete", &ids);
        self.inner.complete(ids)
    }
    fn complete_with(
        &self,
        done: Vec<Completion>,
        at: Timestamp,
    ) -> BoxFuture<'_, Result<(), WalError>> {
        let ids: Vec<u128> = done.iter().map(|c| c.id).collect();
        self.log("complete_with", &ids);
        self.inner.complete_with(done, at)
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

#[tokio::test]
async fn group_commit_coalesces_waiting_appenders() {
    let gated = GatedWal::new(MemoryWal::new(), 0);
    let wal = GroupCommitWal::spawn(gated.clone());
    // The first append is taken by the writer and held at the gate...
    let first = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append(vec![record(0, "first")]).await }
    });
    while wal.commits() == 0 {
        tokio::task::yield_now().await;
    }
    // ...while 49 more callers queue up behind it.
    let waiting: Vec<_> = (1..50u128)
        .map(|id| {
            let wal = wal.clone();
            tokio::spawn(async move { wal.append(vec![record(id, "x")]).await })
        })
        .collect();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    gated.gate.add_permits(100);
    first.await.unwrap().unwrap();
    for task in waiting {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        *gated.batches.lock().unwrap(),
        vec![1, 49],
        "one commit for all waiting callers"
    );
    assert_eq!(wal.commits(), 2);
    assert_eq!(
        ids(&wal.replay().await.unwrap()),
        (0..50).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn group_commit_puts_appends_before_completions_unless_an_id_is_reused() {
    let logged = GatedWal::new(MemoryWal::new(), 1);
    let wal = GroupCommitWal::spawn(logged.clone());
    let at = Timestamp::from_secs(1_700_000_000);
    wal.append(vec![record(0, "a"), record(1, "b")])
        .await
        .unwrap();
    enum Op {
        Append(u128, &'static str),
        Complete(u128),
        CompleteWith(u128),
    }
    // Hold the writer on an append (of `held_id`), queue `ops` as one round behind it, release.
    let round = |held_id: u128, ops: Vec<Op>| {
        let wal = wal.clone();
        let logged = logged.clone();
        async move {
            let commits = wal.commits();
            let held = tokio::spawn({
                let wal = wal.clone();
                async move { wal.append(vec![record(held_id, "h")]).await }
            });
            while wal.commits() == commits {
                tokio::task::yield_now().await;
            }
            let waiting: Vec<_> = ops
                .into_iter()
                .map(|op| {
                    let wal = wal.clone();
                    tokio::spawn(async move {
                        match op {
                            Op::Append(id, data) => wal.append(vec![record(id, data)]).await,
                            Op::Complete(id) => wal.complete(vec![id]).await,
                            Op::CompleteWith(id) => {
                                wal.complete_with(vec![Completion::bare(id)], at).await
                            }
                        }
                    })
                })
                .collect();
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            logged.gate.add_permits(10);
            held.await.unwrap().unwrap();
            for task in waiting {
                task.await.unwrap().unwrap();
            }
        }
    };
    // Completions queued before an append are committed after it.
    round(
        100,
        vec![Op::CompleteWith(0), Op::Append(2, "c"), Op::Complete(1)],
    )
    .await;
    // An id completed and appended again in one round: the completion goes first.
    round(101, vec![Op::CompleteWith(2), Op::Append(2, "again")]).await;
    let ops = logged.ops.lock().unwrap().clone();
    assert_eq!(
        ops[1..],
        [
            "append [100]",
            "append [2]",
            "complete_with [0]",
            "complete [1]",
            "append [101]",
            "complete_with [2]",
            "append [2]",
        ],
        "{ops:?}"
    );
    let replayed = wal.replay().await.unwrap();
    let again = replayed.iter().find(|r| r.id == 2).expect("2 pending");
    assert_eq!(&again.data[..], b"again");
}

#[tokio::test]
async fn group_commit_answers_each_caller_on_its_own_when_a_batch_does_not_fit() {
    let gated = GatedWal::new(MemoryWal::with_limits(small_limits()), 0);
    let wal = GroupCommitWal::spawn(gated.clone());
    let first = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append(vec![record(0, "a")]).await }
    });
    while wal.commits() == 0 {
        tokio::task::yield_now().await;
    }
    let big = "x".repeat(41);
    let batches = [
        vec![record(1, "b")],
        vec![record(2, &big)],
        vec![record(3, "c")],
    ];
    let waiting: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            let wal = wal.clone();
            tokio::spawn(async move { wal.append(batch).await })
        })
        .collect();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    gated.gate.add_permits(100);
    first.await.unwrap().unwrap();
    let mut answers = Vec::new();
    for task in waiting {
        answers.push(task.await.unwrap());
    }
    assert_eq!(answers[0], Ok(()));
    assert!(matches!(
        answers[1],
        Err(WalError::RecordTooLarge { id: 2, .. })
    ));
    assert_eq!(answers[2], Ok(()));
    assert_eq!(ids(&wal.replay().await.unwrap()), vec![0, 1, 3]);
}

#[tokio::test]
async fn group_commit_queue_full_is_overload() {
    let gated = GatedWal::new(MemoryWal::new(), 0);
    let wal = GroupCommitWal::spawn_with(
        gated.clone(),
        GroupCommitConfig {
            queue_max: 2,
            group_records_max: 8,
        },
    );
    let mut tasks = Vec::new();
    for id in 0..3u128 {
        let handle = wal.clone();
        tasks.push(tokio::spawn(async move {
            handle.append(vec![record(id, "a")]).await
        }));
        // Let the writer take the first request before queueing the others.
        while wal.commits() == 0 {
            tokio::task::yield_now().await;
        }
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(wal.append(vec![record(9, "z")]).await, Err(WalError::Full));
    gated.gate.add_permits(10);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_wal_group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileWal::open(dir.path().join("wal.redb")).unwrap();
    let wal = GroupCommitWal::spawn(Arc::new(file.clone()));
    let callers = 64u128;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|id| {
            let wal = wal.clone();
            tokio::spawn(async move { wal.append(vec![record(id, "push")]).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let grouped = started.elapsed();
    assert_eq!(file.len(), callers as usize);
    assert!(
        file.commits() < callers as u64,
        "{} commits for {callers} callers",
        file.commits()
    );

    // For comparison: one commit per append.
    let started = std::time::Instant::now();
    for id in 1000..1000 + callers {
        file.append(vec![record(id, "push")]).await.unwrap();
    }
    let single = started.elapsed();
    eprintln!(
        "{callers} appends: grouped {grouped:?} in {} commits; one by one {single:?} ({:?}/commit)",
        wal.commits(),
        single / callers as u32
    );
}

#[tokio::test]
async fn file_wal_reopens_with_pending_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    {
        let wal = FileWal::open(&path).unwrap();
        wal.append(vec![record(5, "e"), record(1, "a")])
            .await
            .unwrap();
        wal.append(vec![record(9, "i")]).await.unwrap();
        wal.complete(vec![5]).await.unwrap();
        // A second handle to an open file is refused, not a panic.
        assert_eq!(FileWal::open(&path).unwrap_err(), WalError::Locked);
    }
    let wal = FileWal::open(&path).unwrap();
    assert_eq!(wal.len(), 2);
    assert_eq!(wal.bytes(), 2);
    assert_eq!(
        wal.replay().await.unwrap(),
        vec![record(1, "a"), record(9, "i")]
    );
    // New appends follow the replayed ones, and ids stay idempotent across the restart.
    wal.append(vec![record(1, "dup"), record(2, "b")])
        .await
        .unwrap();
    assert_eq!(ids(&wal.replay().await.unwrap()), vec![1, 9, 2]);
    // Emptied, reopened, numbering restarts but order holds.
    wal.complete(vec![1, 9, 2]).await.unwrap();
    drop(wal);
    let wal = FileWal::open(&path).unwrap();
    assert!(wal.is_empty());
    wal.append(vec![record(7, "g")]).await.unwrap();
    wal.append(vec![record(3, "c")]).await.unwrap();
    assert_eq!(ids(&wal.replay().await.unwrap()), vec![7, 3]);
}

#[test]
fn file_wal_rejects_a_file_that_is_not_a_wal() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0xA5; 64 * 1024]).unwrap();
    let err = FileWal::open(&garbage).unwrap_err();
    assert!(
        matches!(err, WalError::Corrupt(_) | WalError::Io(_)),
        "{err:?}"
    );

    let short = dir.path().join("short.redb");
    std::fs::write(&short, b"not a database").unwrap();
    let err = FileWal::open(&short).unwrap_err();
    assert!(
        matches!(err, WalError::Corrupt(_) | WalError::Io(_)),
        "{err:?}"
    );

    let missing_dir = dir.path().join("no/such/dir/wal.redb");
    assert!(matches!(FileWal::open(&missing_dir), Err(WalError::Io(_))));
}

#[tokio::test]
async fn file_wal_keeps_done_markers_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    {
        let wal = FileWal::open(&path).unwrap();
        wal.append(vec![record(1, "a"), record(2, "b"), record(3, "c")])
            .await
            .unwrap();
        wal.complete_at(vec![1, 3], at(50)).await.unwrap();
    }
    let wal = FileWal::open(&path).unwrap();
    assert_eq!(
        wal.finished().await.unwrap(),
        vec![
            Finished {
                id: 1,
                shard: 1,
                at: at(50),
                note: Bytes::new(),
            },
            Finished {
                id: 3,
                shard: 3,
                at: at(50),
                note: Bytes::new(),
            }
        ]
    );
    assert_eq!(ids(&wal.replay().await.unwrap()), vec![2]);
    // Numbering continues after the restored markers: order holds.
    wal.complete_at(vec![2], at(60)).await.unwrap();
    assert_eq!(marker_ids(&wal.finished().await.unwrap()), vec![1, 3, 2]);
}

#[tokio::test]
async fn file_wal_upgrades_a_version_1_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    {
        // A version-1 store: format 1, one pending record, no done-marker table.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(file_tests::META).unwrap();
            meta.insert("format", 1u64).unwrap();
            let mut records = txn.open_table(file_tests::RECORDS).unwrap();
            let mut value = 5u128.to_be_bytes().to_vec();
            value.extend_from_slice(&1u32.to_be_bytes());
            value.extend_from_slice(b"old");
            records.insert(0u64, value.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let wal = FileWal::open(&path).unwrap();
    assert_eq!(
        wal.replay().await.unwrap(),
        vec![WalRecord::new(5, 1, &b"old"[..])]
    );
    wal.complete_at(vec![5], at(7)).await.unwrap();
    assert_eq!(marker_ids(&wal.finished().await.unwrap()), vec![5]);
}

#[test]
fn file_wal_rejects_an_unknown_format_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(file_tests::META).unwrap();
            meta.insert("format", 99u64).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = FileWal::open(&path).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt(m) if m.contains("99")),
        "{err:?}"
    );
}

#[test]
fn file_wal_rejects_a_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    drop(FileWal::open(&path).unwrap());
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut records = txn.open_table(file_tests::RECORDS).unwrap();
            records.insert(0u64, &b"short"[..]).unwrap();
        }
        txn.commit().unwrap();
    }
    assert!(matches!(FileWal::open(&path), Err(WalError::Corrupt(_))));
}

#[tokio::test]
async fn file_wal_reads_a_version_2_file_whose_markers_have_no_notes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(file_tests::META).unwrap();
            meta.insert("format", 2u64).unwrap();
            txn.open_table(file_tests::RECORDS).unwrap();
            let mut finished = txn.open_table(file_tests::FINISHED).unwrap();
            let mut marker = 9u128.to_be_bytes().to_vec();
            marker.extend_from_slice(&3u32.to_be_bytes());
            marker.extend_from_slice(&40_000u64.to_be_bytes());
            finished.insert(0u64, marker.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let wal = FileWal::open(&path).unwrap();
    assert_eq!(
        wal.finished().await.unwrap(),
        vec![Finished {
            id: 9,
            shard: 3,
            at: at(40),
            note: Bytes::new(),
        }]
    );
    wal.append(vec![record(4, "d")]).await.unwrap();
    wal.complete_with(vec![Completion::new(4, &b"n"[..])], at(41))
        .await
        .unwrap();
    drop(wal);
    let wal = FileWal::open(&path).unwrap();
    let notes: Vec<Bytes> = wal
        .finished()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.note)
        .collect();
    assert_eq!(notes, vec![Bytes::new(), Bytes::from_static(b"n")]);
}

mod file_tests {
    use redb::TableDefinition;
    // The layout is part of the format: tests write to it directly.
    pub(super) const FINISHED: TableDefinition<'static, u64, &[u8]> =
        TableDefinition::new("herald_wal_finished");
    pub(super) const RECORDS: TableDefinition<'static, u64, &[u8]> =
        TableDefinition::new("herald_wal_records");
    pub(super) const META: TableDefinition<'static, &str, u64> =
        TableDefinition::new("herald_wal_meta");
}
