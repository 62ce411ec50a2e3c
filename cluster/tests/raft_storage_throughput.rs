//! Durable append throughput of the redb Raft storage, with and without batching.
//! Ignored by default (it measures the disk): `cargo test -p herald-cluster --test
//! raft_storage_throughput -- --ignored --nocapture`.

use std::time::Instant;

use herald_cluster::raft::RaftStorage;
use herald_cluster::raft::eraftpb::{Entry, HardState};

/// Bytes of command data per entry (about one batched token-event command).
const ENTRY_BYTES: usize = 256;

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        data: vec![0xAB; ENTRY_BYTES].into(),
        ..Entry::default()
    }
}

fn measure(batch: u64, writes: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let storage = RaftStorage::open(dir.path().join("raft.redb")).unwrap();
    let start = Instant::now();
    let mut next = 1;
    for _ in 0..writes {
        let entries: Vec<Entry> = (next..next + batch).map(entry).collect();
        next += batch;
        let hard_state = HardState {
            term: 1,
            vote: 1,
            commit: next - 1,
            ..HardState::default()
        };
        storage.persist(&entries, Some(hard_state)).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    (writes as f64 / secs, (writes * batch) as f64 / secs)
}

#[test]
#[ignore = "measures the disk"]
fn durable_appends_per_second() {
    for (batch, writes) in [(1, 200), (16, 200), (128, 100), (1024, 20)] {
        let (fsyncs, entries) = measure(batch, writes);
        println!(
            "batch {batch:>5}: {fsyncs:>7.0} durable writes/s, {entries:>9.0} entries/s ({:.2} ms/write)",
            1000.0 / fsyncs
        );
    }
}

/// Commits per second of a one-node group on redb, proposing `batch` commands per `ready()`
/// (each `ready()` is one durable append plus one durable commit-index update).
#[test]
#[ignore = "measures the disk"]
fn driver_commits_per_second() {
    use herald_actors::seams::Timestamp;
    use herald_actors::token_state::TokenEvent;
    use herald_cluster::raft::eraftpb::ConfState;
    use herald_cluster::raft::{DriverConfig, RaftDriver, Role, raft_logger};
    use herald_cluster::state::{Command, TokenEventRecord};

    for batch in [1u64, 16, 128] {
        let dir = tempfile::tempdir().unwrap();
        let storage = RaftStorage::open(dir.path().join("raft.redb")).unwrap();
        storage
            .initialize(ConfState {
                voters: vec![1],
                ..ConfState::default()
            })
            .unwrap();
        let mut config = DriverConfig::new(1);
        config.fixed_election_timeout(config.election_tick);
        let mut driver = RaftDriver::new(config, storage, &raft_logger(1)).unwrap();
        while driver.role() != Role::Leader {
            driver.tick();
            driver.ready().unwrap();
        }
        let rounds = 2_000 / batch;
        let start = Instant::now();
        let mut committed = 0;
        for round in 0..rounds {
            for n in 0..batch {
                let command = Command::TokenEvents(vec![TokenEventRecord {
                    tenant: "acme".into(),
                    token: format!("{:016x}", round * batch + n),
                    event: TokenEvent::Invalidated {
                        at: Timestamp::from_millis(n),
                    },
                }]);
                driver.propose_command(vec![], &command).unwrap();
            }
            committed += driver.ready().unwrap().committed.len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "batch {batch:>4}: {:>8.0} commits/s ({committed} commits, {rounds} readies)",
            committed as f64 / secs
        );
    }
}
