//! Dedupe and idempotency end to end: a resend under the same `apns-id` (or idempotency key)
//! returns the same id and sends nothing — also after a shard crash or an engine restart on
//! the same file WAL — and tenants never share a push id space.

mod engine_support;

use std::sync::Arc;
use std::time::Duration;

use engine_support::*;
use herald_actors::wal::{FileWal, Wal};
use herald_actors::{Endpoint, Herald, PushId, TenantConfig};

fn with_id(n: u64, id: PushId) -> herald_actors::apns::Notification {
    alert(n).with_apns_id(id.apns_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_an_engine_restart_on_a_file_wal_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let id = PushId::from_u128(0x1234_5678_9abc_4def_8123_4567_89ab_cdef);

    // First life: send and deliver.
    let wal = Arc::new(FileWal::open(&path).unwrap());
    let env = start(
        |_| {},
        |b| {
            b.wal(wal.clone());
        },
    )
    .await;
    drop(wal);
    assert_eq!(env.herald.send(TENANT, with_id(1, id)).await, Ok(id));
    let got = outcomes(&env.herald, &[id]).await;
    assert!(delivered(&got[&id]), "{got:?}");
    assert!(env.herald.shutdown(PATIENCE).await.drained);
    let addr = env.emulator.addr();
    let (key, clock) = (env.key.clone(), env.clock.clone());
    drop(env.herald);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Second life on the same file: the WAL remembers the push finished.
    let wal = Arc::new(FileWal::open(&path).unwrap());
    assert!(wal.is_empty());
    assert_eq!(wal.finished().await.unwrap().len(), 1);
    let herald = Herald::builder()
        .endpoint(Endpoint::plaintext("127.0.0.1", addr.port()))
        .clock(Arc::new(clock.clone()))
        .tuning(fast_tuning())
        .wal(wal.clone())
        .tenant(TenantConfig::new(TENANT, credentials(&key, &clock)))
        .build()
        .await
        .unwrap();
    assert_eq!(herald.send(TENANT, with_id(1, id)).await, Ok(id));
    assert_eq!(herald.pending(), 0, "the resend was queued");
    assert!(wal.is_empty(), "the resend was appended");
    // A different push still goes out, so the first one had every chance to be resent.
    let other = herald.send(TENANT, alert(2)).await.unwrap();
    let got = outcomes(&herald, &[other]).await;
    assert!(delivered(&got[&other]));
    let sent: Vec<String> = env
        .emulator
        .accepted()
        .iter()
        .map(|a| a.apns_id.to_lowercase())
        .collect();
    assert_eq!(sent.iter().filter(|s| **s == id.to_string()).count(), 1);
    assert_eq!(env.emulator.accepted_count(), 2);
    assert!(herald.shutdown(PATIENCE).await.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_shard_crash_sends_nothing() {
    let env = start(
        |_| {},
        |b| {
            b.shards(1);
        },
    )
    .await;
    let id = PushId::from_u128(0xAAAA_0000_0000_4000_8000_0000_0000_0001);
    assert_eq!(env.herald.send(TENANT, with_id(1, id)).await, Ok(id));
    outcomes(&env.herald, &[id]).await;
    assert!(env.herald.crash_shard(0).await);
    // The restarted shard rebuilt its dedupe memory from the WAL's done markers.
    let until = tokio::time::Instant::now() + PATIENCE;
    loop {
        match env.herald.send(TENANT, with_id(1, id)).await {
            Ok(got) => {
                assert_eq!(got, id);
                break;
            }
            // The shard may still be restarting (not accepted: safe to send again).
            Err(e) => assert!(tokio::time::Instant::now() < until, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let other = env.herald.send(TENANT, alert(2)).await.unwrap();
    outcomes(&env.herald, &[other]).await;
    assert_eq!(env.emulator.accepted_count(), 2);
    assert_eq!(env.herald.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_may_use_the_same_apns_id() {
    let env = start(
        |_| {},
        |b| {
            b.shards(1);
        },
    )
    .await;
    env.herald
        .add_tenant(TenantConfig::new(
            "globex",
            credentials(&env.key, &env.clock),
        ))
        .await
        .unwrap();
    let id = PushId::from_u128(0xBBBB_0000_0000_4000_8000_0000_0000_0002);
    // Same apns-id, same device, same shard; both are queued (the second is not a duplicate).
    assert_eq!(env.herald.send(TENANT, with_id(1, id)).await, Ok(id));
    assert_eq!(env.herald.send("globex", with_id(1, id)).await, Ok(id));
    // Within each tenant it still is one.
    assert_eq!(env.herald.send("globex", with_id(1, id)).await, Ok(id));
    eventually("both delivered", || env.emulator.accepted_count() == 2).await;
    eventually("nothing pending", || env.herald.pending() == 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent: Vec<String> = env
        .emulator
        .accepted()
        .iter()
        .map(|a| a.apns_id.to_lowercase())
        .collect();
    assert_eq!(sent, vec![id.to_string(), id.to_string()]);
    // Each tenant has its own outcome under the id.
    assert!(
        env.herald
            .outcome_for(TENANT, id)
            .as_ref()
            .is_some_and(delivered)
    );
    assert!(
        env.herald
            .outcome_for("globex", id)
            .as_ref()
            .is_some_and(delivered)
    );
    assert_eq!(env.herald.outcome_for("initech", id), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_dedupe_per_tenant() {
    let env = start(|_| {}, |_| {}).await;
    env.herald
        .add_tenant(TenantConfig::new(
            "globex",
            credentials(&env.key, &env.clock),
        ))
        .await
        .unwrap();
    let first = env
        .herald
        .send_idempotent(TENANT, "order-42", alert(1))
        .await
        .unwrap();
    assert_eq!(first, PushId::from_idempotency_key(TENANT, "order-42"));
    // A retried request (even with another body) is the same push.
    let again = env
        .herald
        .send_idempotent(TENANT, "order-42", alert(1))
        .await
        .unwrap();
    assert_eq!(again, first);
    // Another tenant's key with the same text is another push.
    let theirs = env
        .herald
        .send_idempotent("globex", "order-42", alert(1))
        .await
        .unwrap();
    assert_ne!(theirs, first);
    let got = outcomes(&env.herald, &[first, theirs]).await;
    assert!(got.values().all(delivered), "{got:?}");
    // After delivery too.
    let late = env
        .herald
        .send_idempotent(TENANT, "order-42", alert(1))
        .await
        .unwrap();
    assert_eq!(late, first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent: Vec<String> = env
        .emulator
        .accepted()
        .iter()
        .map(|a| a.apns_id.to_lowercase())
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.contains(&first.to_string()));
    assert!(sent.contains(&theirs.to_string()));
}
