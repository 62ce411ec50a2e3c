//! FileWal crash recovery: a child process appends and completes, then dies with
//! `process::abort()` (no destructors, no clean shutdown); the parent reopens the file and
//! checks that replay returns exactly what was acknowledged and not completed, in order.

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use herald_actors::wal::{CompletionSync, FileWal, GroupCommitWal, Wal, WalLimits, WalRecord};

/// Set in the child's environment: the WAL file to write, then crash.
const CHILD_PATH: &str = "HERALD_WAL_CRASH_PATH";
/// Which scenario the child runs.
const CHILD_SCENARIO: &str = "HERALD_WAL_CRASH_SCENARIO";

fn record(id: u128) -> WalRecord {
    WalRecord::new(id, (id % 16) as u32, format!("push {id}").into_bytes())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The sequential scenario: 10 batches of 1..=5 records; every third id completed.
/// Returns the ids that must be pending, in append order.
async fn sequential(wal: &dyn Wal) -> Vec<u128> {
    let mut next = 0u128;
    let mut pending = Vec::new();
    for batch in 0..10 {
        let ids: Vec<u128> = (next..next + 1 + batch % 5).collect();
        next += ids.len() as u128;
        wal.append(ids.iter().copied().map(record).collect())
            .await
            .unwrap();
        let done: Vec<u128> = ids.iter().copied().filter(|id| id % 3 == 0).collect();
        wal.complete(done).await.unwrap();
        pending.extend(ids.into_iter().filter(|id| id % 3 != 0));
    }
    pending
}

/// Run the child scenarios when this test binary is started as the crashing child.
#[test]
fn crash_child() {
    let (Ok(path), Ok(scenario)) = (std::env::var(CHILD_PATH), std::env::var(CHILD_SCENARIO))
    else {
        return; // Not the child: nothing to do.
    };
    let rt = runtime();
    rt.block_on(async move {
        let (file, scenario) = match scenario.strip_suffix("-lazy") {
            Some(base) => (
                FileWal::open_with(&path, WalLimits::default(), CompletionSync::LAZY).unwrap(),
                base.to_owned(),
            ),
            None => (FileWal::open(&path).unwrap(), scenario),
        };
        let mut out = std::io::stdout().lock();
        match scenario.as_str() {
            "sequential" => {
                sequential(&file).await;
                writeln!(out, "done").unwrap();
            }
            "concurrent" => {
                // Many appenders through group commit; each prints its id once acknowledged.
                // Crash while later appends are still in flight.
                let wal = Arc::new(GroupCommitWal::spawn(Arc::new(file)));
                let (acks, mut acked) = tokio::sync::mpsc::channel(1024);
                for id in 0..400u128 {
                    let wal = Arc::clone(&wal);
                    let acks = acks.clone();
                    tokio::spawn(async move {
                        if wal.append(vec![record(id)]).await.is_ok() {
                            // Complete the even ids right away, the odd ones stay pending.
                            if id % 2 == 0 && wal.complete(vec![id]).await.is_ok() {
                                let _ = acks.send(format!("completed {id}")).await;
                            }
                            let _ = acks.send(format!("acked {id}")).await;
                        }
                    });
                }
                drop(acks);
                let (mut acknowledged, mut completed) = (0, 0);
                while let Some(line) = acked.recv().await {
                    writeln!(out, "{line}").unwrap();
                    out.flush().unwrap();
                    if line.starts_with("acked") {
                        acknowledged += 1;
                    } else {
                        completed += 1;
                    }
                    if acknowledged >= 150 && completed >= 20 {
                        break;
                    }
                }
            }
            other => panic!("unknown scenario {other}"),
        }
        out.flush().unwrap();
        // Die without any cleanup: no destructors, no redb shutdown.
        std::process::abort();
    });
}

/// Start this test binary as the child running `scenario` against `path`; its stdout lines.
fn crash(path: &Path, scenario: &str) -> Vec<String> {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_PATH, path)
        .env(CHILD_SCENARIO, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        !output.status.success(),
        "the child must crash, not exit cleanly"
    );
    // The test harness prints `test crash_child ... ` before the child's first line.
    output
        .stdout
        .lines()
        .map(|l| {
            let l = l.unwrap();
            match l.rsplit_once("... ") {
                Some((_, ours)) => ours.to_string(),
                None => l,
            }
        })
        .collect()
}

#[test]
fn file_wal_replays_pending_records_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard-0.redb");
    let lines = crash(&path, "sequential");
    assert!(lines.iter().any(|l| l == "done"), "child output: {lines:?}");

    let rt = runtime();
    let expected = rt.block_on(sequential(&herald_actors::wal::MemoryWal::new()));
    let wal = FileWal::open(&path).unwrap();
    let replayed = rt.block_on(wal.replay()).unwrap();
    let expected_records: Vec<WalRecord> = expected.iter().copied().map(record).collect();
    assert_eq!(replayed, expected_records);
    assert_eq!(wal.len(), expected.len());

    // The recovered WAL keeps working: complete half, append more, reopen, replay again.
    let (done, rest) = expected.split_at(expected.len() / 2);
    rt.block_on(wal.complete(done.to_vec())).unwrap();
    rt.block_on(wal.append(vec![record(1000)])).unwrap();
    drop(wal);
    let wal = FileWal::open(&path).unwrap();
    let mut still: Vec<u128> = rest.to_vec();
    still.push(1000);
    let replayed: Vec<u128> = rt
        .block_on(wal.replay())
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(replayed, still);
}

#[test]
fn file_wal_loses_no_acknowledged_append_when_crashing_mid_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard-1.redb");
    let lines = crash(&path, "concurrent");
    let acked: Vec<u128> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("acked "))
        .map(|id| id.parse().unwrap())
        .collect();
    let completed: Vec<u128> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("completed "))
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(
        acked.len() >= 150 && completed.len() >= 20,
        "child output: {lines:?}"
    );

    let rt = runtime();
    let wal = FileWal::open(&path).unwrap();
    let replayed = rt.block_on(wal.replay()).unwrap();
    let replayed_ids: std::collections::BTreeSet<u128> = replayed.iter().map(|r| r.id).collect();
    assert_eq!(replayed_ids.len(), replayed.len(), "each id replayed once");
    for id in &acked {
        // Every acknowledged append is there, unless its completion was acknowledged too.
        if !completed.contains(id) {
            assert!(replayed_ids.contains(id), "acknowledged push {id} lost");
        }
    }
    for id in &completed {
        assert!(!replayed_ids.contains(id), "completed push {id} replayed");
    }
    for r in &replayed {
        assert_eq!(r, &record(r.id), "record intact");
    }
    eprintln!(
        "crash mid-flight: {} acknowledged, {} completed, {} replayed (in-flight appends may add some)",
        acked.len(),
        completed.len(),
        replayed.len()
    );
}

#[test]
fn lazy_completions_lose_no_acknowledged_append_in_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard-lazy.redb");
    let lines = crash(&path, "concurrent-lazy");
    let acked: Vec<u128> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("acked "))
        .map(|id| id.parse().unwrap())
        .collect();
    let completed: std::collections::BTreeSet<u128> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("completed "))
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(acked.len() >= 150, "child output: {lines:?}");
    let rt = runtime();
    let wal = FileWal::open(&path).unwrap();
    let replayed = rt.block_on(wal.replay()).unwrap();
    let replayed_ids: std::collections::BTreeSet<u128> = replayed.iter().map(|r| r.id).collect();
    assert_eq!(replayed_ids.len(), replayed.len(), "each id replayed once");
    // The contract that matters: nothing acknowledged and not completed is lost. Completed
    // pushes may come back (their completions were not yet durable): sent again, at least once.
    for id in &acked {
        if !completed.contains(id) {
            assert!(replayed_ids.contains(id), "acknowledged push {id} lost");
        }
    }
    for r in &replayed {
        assert_eq!(r, &record(r.id), "record intact");
    }
    let again = replayed_ids.intersection(&completed).count();
    eprintln!(
        "lazy completions: {} acknowledged, {} completed, {} of them replayed",
        acked.len(),
        completed.len(),
        again
    );
}

#[test]
fn lazy_completions_are_durable_after_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard-lazy-close.redb");
    let rt = runtime();
    rt.block_on(async {
        let wal = FileWal::open_with(&path, WalLimits::default(), CompletionSync::LAZY).unwrap();
        wal.append((0..10).map(record).collect()).await.unwrap();
        for id in 0..5 {
            wal.complete(vec![id]).await.unwrap();
        }
        let mut closed = wal.closed();
        drop(wal);
        closed.wait().await;
    });
    let wal = FileWal::open(&path).unwrap();
    let replayed: Vec<u128> = rt
        .block_on(wal.replay())
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(replayed, (5..10).collect::<Vec<_>>());
}

#[test]
fn file_wal_reopens_after_drop_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard-2.redb");
    let rt = runtime();
    let expected = rt.block_on(async {
        let file = FileWal::open(&path).unwrap();
        let wal = GroupCommitWal::spawn(Arc::new(file));
        let pending = sequential(&wal).await;
        // Drop the handle while the writer task still holds the store: nothing is flushed or
        // closed explicitly.
        drop(wal);
        pending
    });
    drop(rt); // the writer task (and the store it holds) goes with the runtime
    let wal = FileWal::open(&path).unwrap();
    let rt = runtime();
    let replayed: Vec<u128> = rt
        .block_on(wal.replay())
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(replayed, expected);
}
