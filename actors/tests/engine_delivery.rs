//! End to end against the APNs emulator: pushes are delivered once each, in priority order,
//! coalesced, deduplicated, and the engine drains on shutdown.

mod engine_support;

use std::collections::BTreeMap;
use std::time::Duration;

use engine_support::*;
use herald_actors::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_push_is_delivered_exactly_once() {
    let env = start(|_| {}, |_| {}).await;
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");

    // The emulator saw each push exactly once, under the push id as apns-id.
    let accepted = env.emulator.accepted();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for a in &accepted {
        *seen.entry(a.apns_id.to_lowercase()).or_default() += 1;
    }
    assert_eq!(seen.len(), ids.len());
    for id in &ids {
        assert_eq!(seen.get(&id.to_string()), Some(&1), "push {id}");
    }
    let report = env.herald.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_send_and_duplicate_ids() {
    let env = start(|_| {}, |_| {}).await;
    let batch: Vec<_> = (0..50).map(alert).collect();
    let results = env.herald.send_batch(TENANT, batch).await.unwrap();
    let ids: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    // Sending a push again under the same apns-id is deduplicated.
    let again = alert_with(0, |b| {
        b.apns_id(ids[0].apns_id());
    });
    assert_eq!(env.herald.send(TENANT, again).await.unwrap(), ids[0]);
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(env.emulator.accepted_count(), 50);
    assert!(matches!(
        env.herald.send("nobody", alert(1)).await,
        Err(herald_actors::PushError::UnknownTenant(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_pushes_are_not_sent() {
    let env = start(|_| {}, |_| {}).await;
    let stale = alert_with(1, |b| {
        b.expiration(expiring_at(START_SECS - 10));
    });
    let fresh = alert_with(2, |b| {
        b.expiration(expiring_at(START_SECS + 3600));
    });
    let a = env.herald.send(TENANT, stale).await.unwrap();
    let b = env.herald.send(TENANT, fresh).await.unwrap();
    let got = outcomes(&env.herald, &[a, b]).await;
    assert_eq!(got[&a], Outcome::Expired);
    assert!(delivered(&got[&b]));
    assert_eq!(env.emulator.accepted_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_push_ids() {
    let a = start(|_| {}, |_| {}).await;
    let b = start(|_| {}, |_| {}).await;
    for n in 0..5 {
        let x = a.herald.send(TENANT, alert(n)).await.unwrap();
        let y = b.herald.send(TENANT, alert(n)).await.unwrap();
        assert_eq!(x, y);
        assert_eq!(a.herald.shard_of(&token(n)), b.herald.shard_of(&token(n)));
    }
}
