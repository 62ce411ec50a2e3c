//! End to end against the APNs emulator under faults: crashed actors, 5xx storms, throttling,
//! invalidated tokens, bad credentials, overload.

mod engine_support;

use std::time::Duration;

use engine_support::*;
use herald_actors::breaker::BreakerState;
use herald_actors::{Outcome, PushError, TenantConfig};
use herald_sim::emulator::{Burst, DeviceRateLimit, DeviceState, Latency, TeamConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_connection_loses_nothing() {
    let env = start(|c| c.faults.latency = Latency::Fixed { ms: 100 }, |_| {}).await;
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    // Some pushes are in flight (each answer takes 100 ms): kill the connection actor.
    eventually("pushes in flight", || {
        env.emulator.stats().connections.iter().any(|c| c.open)
    })
    .await;
    assert!(env.herald.crash_connection(TENANT).await);
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    // At least once: every push reached APNs (a resend may have duplicated one).
    let accepted = env.emulator.accepted();
    for id in &ids {
        let id = id.to_string();
        assert!(
            accepted.iter().any(|a| a.apns_id.eq_ignore_ascii_case(&id)),
            "{id} lost"
        );
    }
    let status = env.herald.tenant_status(TENANT).await.unwrap();
    assert!(
        status.connections >= 1,
        "the tenant restarted its connection"
    );
}

/// Every answer the emulator gave so far.
fn answers(env: &Env) -> u64 {
    env.emulator.stats().answers_by_status.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_unavailable_storm_opens_the_breaker_until_a_probe_succeeds() {
    // 503 for every request until the (manual) clock moves a second.
    let env = start(
        |c| {
            c.faults.bursts = vec![Burst {
                reason: herald_actors::apns::Reason::ServiceUnavailable,
                requests: None,
                duration_ms: Some(1000),
            }]
        },
        |b| {
            let mut t = fast_tuning();
            t.breaker_open_for = Duration::from_secs(3);
            t.attempts_max = 100;
            b.tuning(t);
        },
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    // 503s in a row open the breaker.
    let herald = env.herald.clone();
    let until = tokio::time::Instant::now() + PATIENCE;
    while herald.tenant_status(TENANT).await.unwrap().breaker != BreakerState::Open {
        assert!(tokio::time::Instant::now() < until, "breaker never opened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // While it is open nothing new is sent (requests already in flight finish first).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = answers(&env);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        herald.tenant_status(TENANT).await.unwrap().breaker,
        BreakerState::Open
    );
    assert_eq!(answers(&env), before);
    assert!(ids.iter().all(|id| env.herald.outcome(*id).is_none()));
    // The storm ends; after the cool-down a probe succeeds and closes the breaker.
    env.clock.advance(Duration::from_secs(2));
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert_eq!(
        env.herald.tenant_status(TENANT).await.unwrap().breaker,
        BreakerState::Closed
    );
    let storm = env.emulator.answers_by_reason()["ServiceUnavailable"];
    assert!(storm >= 5, "{storm}");
    // The breaker kept the storm short: far fewer 503s than 20 pushes × retries.
    assert!(storm < 60, "{storm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_is_retried_after_a_delay() {
    let env = start(
        |c| {
            c.device_rate_limit = Some(DeviceRateLimit {
                max_pushes: 1,
                window_ms: 50,
            })
        },
        |b| {
            let mut t = fast_tuning();
            t.attempts_max = 50;
            b.tuning(t);
        },
    )
    .await;
    // Three pushes to one device (different collapse ids, so none replaces another).
    let batch: Vec<_> = (0..3)
        .map(|i| {
            alert_with(1, |b| {
                b.collapse_id(format!("c{i}").parse().unwrap());
            })
        })
        .collect();
    let ids: Vec<_> = env
        .herald
        .send_batch(TENANT, batch)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // The emulator's per-device window runs on the shared manual clock: move it along.
    let clock = env.clock.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            clock.advance(Duration::from_millis(20));
        }
    });
    let got = outcomes(&env.herald, &ids).await;
    ticker.abort();
    assert!(got.values().all(delivered), "{got:?}");
    assert!(
        env.emulator
            .answers_by_reason()
            .get("TooManyRequests")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    assert_eq!(env.emulator.accepted_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_token_is_invalidated_and_never_sent_again() {
    let env = start(|_| {}, |_| {}).await;
    let gone_at_ms = (START_SECS - 60) * 1000 + 123;
    env.emulator.set_device(
        token(9).as_str(),
        DeviceState::Unregistered { at_ms: gone_at_ms },
    );
    let mut invalidations = env.herald.invalidations();
    let first = env.herald.send(TENANT, alert(9)).await.unwrap();
    let got = outcomes(&env.herald, &[first]).await;
    let at = herald_actors::seams::Timestamp::from_millis(gone_at_ms);
    assert_eq!(got[&first], Outcome::Unregistered { at });
    let inv = invalidations.recv().await.unwrap();
    assert_eq!((inv.device_token, inv.at), (token(9), at));

    // Later pushes to that token end Unregistered without a send.
    let second = env.herald.send(TENANT, alert(9)).await.unwrap();
    let got = outcomes(&env.herald, &[second]).await;
    assert_eq!(got[&second], Outcome::Unregistered { at });
    assert_eq!(
        env.emulator.answers_by_reason().get("Unregistered"),
        Some(&1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_error_opens_breaker_and_update_recovers_without_loss() {
    let env = start(|_| {}, |_| {}).await;
    let (_, unknown) = TeamConfig::generate(TEAM, "BADKEY0001", &[BUNDLE]).unwrap();
    let good = TenantConfig::new(TENANT, credentials(&env.key, &env.clock));
    let bad = TenantConfig::new(TENANT, credentials(&unknown, &env.clock));
    env.herald.update_tenant(bad).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    let until = tokio::time::Instant::now() + PATIENCE;
    while env.herald.tenant_status(TENANT).await.unwrap().breaker == BreakerState::Closed {
        assert!(tokio::time::Instant::now() < until, "breaker never opened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Queued, not failed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ids.iter().all(|id| env.herald.outcome(*id).is_none()));
    assert_eq!(env.emulator.accepted_count(), 0);

    env.herald.update_tenant(good).await.unwrap();
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert_eq!(env.emulator.accepted_count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_tenant_answers_overloaded() {
    let env = start(|c| c.faults.latency = Latency::Fixed { ms: 300 }, |_| {}).await;
    let mut small = TenantConfig::new("small", credentials(&env.key, &env.clock));
    small.queue_max(3);
    env.herald.add_tenant(small).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(env.herald.send("small", alert(n)).await.unwrap());
    }
    assert!(matches!(
        env.herald.send("small", alert(4)).await,
        Err(PushError::Overloaded { .. })
    ));
    // Room frees up as pushes finish.
    outcomes(&env.herald, &ids).await;
    env.herald.send("small", alert(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_after_the_invalidation_revives_the_token() {
    use herald_actors::token_state::{MemoryTokenState, TokenKey, TokenState, TokenValidity};

    let tokens = std::sync::Arc::new(MemoryTokenState::new());
    let shared = tokens.clone();
    let env = start(
        |_| {},
        move |b| {
            b.token_state(shared);
        },
    )
    .await;
    let gone_at_ms = (START_SECS - 60) * 1000;
    env.emulator.set_device(
        token(5).as_str(),
        DeviceState::Unregistered { at_ms: gone_at_ms },
    );
    let first = env.herald.send(TENANT, alert(5)).await.unwrap();
    outcomes(&env.herald, &[first]).await;
    let key = TokenKey::new(TENANT, token(5).as_str());
    let at = herald_actors::seams::Timestamp::from_millis(gone_at_ms);
    assert_eq!(tokens.check(&key), TokenValidity::Invalidated { at });

    // The app registers the token again after Apple's timestamp (and APNs knows it again).
    env.emulator
        .set_device(token(5).as_str(), DeviceState::Valid { topic: None });
    tokens
        .register(
            key,
            herald_actors::seams::Timestamp::from_millis(gone_at_ms + 1),
        )
        .await
        .unwrap();
    let second = env.herald.send(TENANT, alert(5)).await.unwrap();
    assert!(delivered(&outcomes(&env.herald, &[second]).await[&second]));
}
