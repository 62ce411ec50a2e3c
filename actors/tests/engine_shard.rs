//! The device shard end to end: priority lanes, collapse coalescing, recovery from the WAL
//! after a crash, draining shutdown, and restart-intensity escalation.

mod engine_support;

use std::time::Duration;

use engine_support::*;
use herald_actors::apns::Priority;
use herald_actors::breaker::BreakerState;
use herald_actors::{Outcome, PushError, TenantConfig};
use herald_sim::emulator::TeamConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_go_first() {
    let env = start(
        |_| {},
        |b| {
            let mut t = fast_tuning();
            t.shard_inflight_max = 1;
            b.shards(1).tuning(t);
        },
    )
    .await;
    let batch = vec![
        alert_with(1, |b| {
            b.priority(Priority::Low);
        }),
        alert_with(2, |b| {
            b.priority(Priority::Normal);
        }),
        alert_with(3, |b| {
            b.priority(Priority::Immediate);
        }),
    ];
    let ids: Vec<_> = env
        .herald
        .send_batch(TENANT, batch)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    outcomes(&env.herald, &ids).await;
    let order: Vec<u8> = env.emulator.accepted().iter().map(|a| a.priority).collect();
    assert_eq!(order, vec![10, 5, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_push_with_the_same_collapse_id_replaces_a_queued_one() {
    let env = start(|_| {}, |_| {}).await;
    let collapse = || "score".parse().unwrap();
    let batch = vec![
        alert_with(1, |b| {
            b.collapse_id(collapse());
        }),
        alert_with(1, |b| {
            b.collapse_id(collapse());
        }),
        // Same collapse id, another device: not coalesced.
        alert_with(2, |b| {
            b.collapse_id(collapse());
        }),
    ];
    let ids: Vec<_> = env
        .herald
        .send_batch(TENANT, batch)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let got = outcomes(&env.herald, &ids).await;
    assert_eq!(got[&ids[0]], Outcome::Coalesced { by: ids[1] });
    assert!(delivered(&got[&ids[1]]));
    assert!(delivered(&got[&ids[2]]));
    let sent: Vec<String> = env
        .emulator
        .accepted()
        .iter()
        .map(|a| a.apns_id.to_lowercase())
        .collect();
    assert!(!sent.contains(&ids[0].to_string()));
    assert_eq!(sent.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_shard_recovers_its_queue_from_the_wal() {
    let env = start(
        |_| {},
        |b| {
            b.shards(1);
        },
    )
    .await;
    // Unknown credentials: pushes stay queued behind the open breaker.
    let (_, unknown) = TeamConfig::generate(TEAM, "BADKEY0001", &[BUNDLE]).unwrap();
    env.herald
        .update_tenant(TenantConfig::new(TENANT, credentials(&unknown, &env.clock)))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    let until = tokio::time::Instant::now() + PATIENCE;
    while env.herald.tenant_status(TENANT).await.unwrap().breaker == BreakerState::Closed {
        assert!(tokio::time::Instant::now() < until, "breaker never opened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(env.herald.crash_shard(0).await);
    // The restarted shard replays the WAL; with good credentials everything is delivered once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(env.herald.pending(), 20);
    env.herald
        .update_tenant(TenantConfig::new(TENANT, credentials(&env.key, &env.clock)))
        .await
        .unwrap();
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert_eq!(env.emulator.accepted_count(), 20);
    eventually("pending drained", || env.herald.pending() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_refuses_new_pushes() {
    let env = start(|_| {}, |_| {}).await;
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    let report = env.herald.shutdown(PATIENCE).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(report.remaining, 0);
    assert!(ids.iter().all(|id| env.herald.outcome(*id).is_some()));
    assert_eq!(
        env.herald.send(TENANT, alert(1)).await,
        Err(PushError::ShuttingDown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_crashing_too_often_stops_the_engine() {
    let env = start(
        |_| {},
        |b| {
            b.shards(1);
        },
    )
    .await;
    let mut crashes = 0;
    let until = tokio::time::Instant::now() + PATIENCE;
    while crashes < 6 {
        assert!(
            tokio::time::Instant::now() < until,
            "crashed only {crashes} times"
        );
        if env.herald.crash_shard(0).await {
            crashes += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let until = tokio::time::Instant::now() + PATIENCE;
    loop {
        match env.herald.send(TENANT, alert(1)).await {
            Err(PushError::Stopped(_)) => break,
            _ => assert!(tokio::time::Instant::now() < until, "engine kept running"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_pushes_survive_an_engine_restart_on_a_file_wal() {
    use std::sync::Arc;

    use herald_actors::wal::FileWal;

    let dir = std::env::temp_dir().join(format!(
        "herald-engine-wal-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wal.redb");
    let (_, unknown) = TeamConfig::generate(TEAM, "BADKEY0001", &[BUNDLE]).unwrap();

    // First life: unknown credentials, so the pushes are accepted (in the WAL) but not sent.
    let wal = Arc::new(FileWal::open(&path).unwrap());
    let env = start(
        |_| {},
        |b| {
            b.wal(wal.clone());
        },
    )
    .await;
    drop(wal);
    env.herald
        .update_tenant(TenantConfig::new(TENANT, credentials(&unknown, &env.clock)))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    let report = env.herald.shutdown(Duration::from_millis(200)).await;
    assert!(!report.drained);
    assert_eq!(report.remaining, 10);
    let addr = env.emulator.addr();
    let (key, clock) = (env.key.clone(), env.clock.clone());
    drop(env.herald);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Second life: a new engine on the same file, with good credentials, sends them all.
    let wal = Arc::new(FileWal::open(&path).unwrap());
    assert_eq!(herald_actors::wal::Wal::len(&*wal), 10);
    let herald = herald_actors::Herald::builder()
        .endpoint(herald_actors::Endpoint::plaintext("127.0.0.1", addr.port()))
        .clock(Arc::new(clock.clone()))
        .tuning(fast_tuning())
        .wal(wal)
        .tenant(TenantConfig::new(TENANT, credentials(&key, &clock)))
        .build()
        .await
        .unwrap();
    let got = outcomes(&herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert_eq!(env.emulator.accepted_count(), 10);
    assert!(herald.shutdown(PATIENCE).await.drained);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_priority_pushes_leave_room_for_urgent_ones() {
    let env = start(
        |_| {},
        |b| {
            let mut t = fast_tuning();
            t.shard_queue_max = 10;
            b.shards(1).tuning(t);
        },
    )
    .await;
    // Keep everything queued: unknown credentials.
    let (_, unknown) = TeamConfig::generate(TEAM, "BADKEY0001", &[BUNDLE]).unwrap();
    env.herald
        .update_tenant(TenantConfig::new(TENANT, credentials(&unknown, &env.clock)))
        .await
        .unwrap();
    let normal = |n| {
        alert_with(n, |b| {
            b.priority(Priority::Normal);
        })
    };
    for n in 0..8 {
        env.herald.send(TENANT, normal(n)).await.unwrap();
    }
    // Priority 5 and 1 may fill 80 % of the shard...
    assert!(matches!(
        env.herald.send(TENANT, normal(8)).await,
        Err(PushError::Overloaded { .. })
    ));
    // ...the rest is for priority 10, up to the shard's bound.
    env.herald.send(TENANT, alert(9)).await.unwrap();
    env.herald.send(TENANT, alert(10)).await.unwrap();
    assert!(matches!(
        env.herald.send(TENANT, alert(11)).await,
        Err(PushError::Overloaded { .. })
    ));
    assert_eq!(env.herald.pending(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_wal_commits() {
    use std::sync::Arc;

    use herald_actors::wal::{FileWal, GroupCommitWal};

    let dir = std::env::temp_dir().join(format!(
        "herald-engine-group-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = Arc::new(FileWal::open(dir.join("wal.redb")).unwrap());
    let group = Arc::new(GroupCommitWal::spawn(file.clone()));
    let wal = group.clone();
    let env = start(
        |_| {},
        move |b| {
            b.shards(1).wal(wal);
        },
    )
    .await;
    // Nothing completes while the credentials are unknown: every commit is an append.
    let (_, unknown) = TeamConfig::generate(TEAM, "BADKEY0001", &[BUNDLE]).unwrap();
    env.herald
        .update_tenant(TenantConfig::new(TENANT, credentials(&unknown, &env.clock)))
        .await
        .unwrap();
    // 200 callers at once, on one shard: the shard does not wait for one append before
    // starting the next, so the group-commit WAL folds them into far fewer fsync'd commits.
    let before = group.commits();
    let mut tasks = Vec::new();
    for n in 0..200 {
        let herald = env.herald.clone();
        tasks.push(tokio::spawn(
            async move { herald.send(TENANT, alert(n)).await },
        ));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    let commits = group.commits() - before;
    assert!(commits < 100, "{commits} commits for 200 appends");
    env.herald
        .update_tenant(TenantConfig::new(TENANT, credentials(&env.key, &env.clock)))
        .await
        .unwrap();
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered));
    assert!(env.herald.shutdown(PATIENCE).await.drained);
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_of_pushes_finished_during_start_up_reach_an_early_subscriber() {
    use std::sync::Arc;

    use herald_actors::wal::MemoryWal;

    // First life: unknown credentials, so the pushes stay in the WAL, unsent.
    let wal = Arc::new(MemoryWal::new());
    let (_, unknown) = TeamConfig::generate(TEAM, "BADKEY0001", &[BUNDLE]).unwrap();
    let env = start(
        |_| {},
        |b| {
            b.wal(wal.clone());
        },
    )
    .await;
    env.herald
        .update_tenant(TenantConfig::new(TENANT, credentials(&unknown, &env.clock)))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let push = alert_with(n, |b| {
            b.expiration(expiring_at(START_SECS + 60));
        });
        ids.push(env.herald.send(TENANT, push).await.unwrap());
    }
    let report = env.herald.shutdown(Duration::from_millis(200)).await;
    assert_eq!(report.remaining, 3);
    drop(env.herald);

    // Down past their expiry: the next engine finishes them while it starts, before `build`
    // returns — only a subscription made on the builder sees those outcomes.
    env.clock.advance(Duration::from_secs(120));
    let mut builder = herald_actors::Herald::builder();
    let mut early = builder.subscribe_outcomes();
    let herald = builder
        .endpoint(herald_actors::Endpoint::plaintext(
            "127.0.0.1",
            env.emulator.addr().port(),
        ))
        .clock(Arc::new(env.clock.clone()))
        .tuning(fast_tuning())
        .wal(wal)
        .tenant(TenantConfig::new(TENANT, credentials(&env.key, &env.clock)))
        .build()
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        let record = tokio::time::timeout(PATIENCE, early.recv())
            .await
            .expect("an outcome for every recovered push")
            .unwrap();
        assert!(matches!(record.outcome, Outcome::Expired), "{record:?}");
        seen.push(record.push_id);
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
    assert_eq!(env.emulator.accepted_count(), 0);
    assert!(herald.shutdown(PATIENCE).await.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_survive_an_engine_restart_on_a_file_wal() {
    use std::sync::Arc;

    use herald_actors::wal::FileWal;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");

    // First life: the pushes are delivered and finished in the WAL (with their outcomes).
    let wal = Arc::new(FileWal::open(&path).unwrap());
    let env = start(
        |_| {},
        |b| {
            b.wal(wal.clone());
        },
    )
    .await;
    drop(wal);
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    let first = outcomes(&env.herald, &ids).await;
    assert!(first.values().all(delivered), "{first:?}");
    assert!(env.herald.shutdown(PATIENCE).await.drained);
    drop(env.herald);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Second life: the outcomes are known at once, from the done markers.
    let wal = Arc::new(FileWal::open(&path).unwrap());
    let herald = herald_actors::Herald::builder()
        .endpoint(herald_actors::Endpoint::plaintext(
            "127.0.0.1",
            env.emulator.addr().port(),
        ))
        .clock(Arc::new(env.clock.clone()))
        .tuning(fast_tuning())
        .wal(wal)
        .tenant(TenantConfig::new(TENANT, credentials(&env.key, &env.clock)))
        .build()
        .await
        .unwrap();
    for id in &ids {
        assert_eq!(herald.outcome_for(TENANT, *id), first.get(id).cloned());
        assert_eq!(herald.outcome_for("another-tenant", *id), None);
    }
    assert_eq!(env.emulator.accepted_count(), 5);
    assert!(herald.shutdown(PATIENCE).await.drained);
}
