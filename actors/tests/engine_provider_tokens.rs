//! Provider-token errors through the engine, from the emulator's fault bursts:
//! `403 ExpiredProviderToken` makes the engine mint a new token and resend; `429
//! TooManyProviderTokenUpdates` makes it back off and resend with the token it has. Either way
//! every push ends delivered, or failed with the reason once the retry bound is hit: never lost.

mod engine_support;

use std::sync::Arc;

use engine_support::*;
use herald_actors::apns::{Reason, SigningKey, TokenMinter};
use herald_actors::{Credentials, Failure, Outcome, TenantConfig};
use herald_sim::emulator::{Burst, FaultProfile};

/// A burst answering the next `requests` requests with `reason`.
fn burst(reason: Reason, requests: u64) -> FaultProfile {
    FaultProfile {
        bursts: vec![Burst {
            reason,
            requests: Some(requests),
            duration_ms: None,
        }],
        ..FaultProfile::default()
    }
}

/// The engine of `env` with a tenant whose minter the test can watch, and `attempts_max`.
async fn watched_minter(env: &Env) -> TokenMinter {
    let signing =
        SigningKey::from_p8_pem(env.key.p8_pem.as_bytes(), &env.key.key_id, &env.key.team_id)
            .unwrap();
    let minter = TokenMinter::with_default_interval(signing, Arc::new(env.clock.clone()));
    env.herald
        .update_tenant(TenantConfig::new(
            TENANT,
            Credentials::Token(minter.clone()),
        ))
        .await
        .unwrap();
    minter
}

fn answered(env: &Env, reason: Reason) -> u64 {
    env.emulator
        .answers_by_reason()
        .get(reason.as_str())
        .copied()
        .unwrap_or(0)
}

fn with_attempts(attempts_max: u32) -> impl FnOnce(&mut herald_actors::HeraldBuilder) {
    move |b| {
        let mut t = fast_tuning();
        t.attempts_max = attempts_max;
        b.shards(1).tuning(t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_provider_token_mints_a_new_one_and_delivers() {
    let env = start(|_| {}, with_attempts(8)).await;
    let minter = watched_minter(&env).await;
    env.emulator
        .set_faults(burst(Reason::ExpiredProviderToken, 3))
        .unwrap();
    let minted_before = minter.minted_count();
    let ids: Vec<_> = env
        .herald
        .send_batch(TENANT, (0..5).map(alert).collect())
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert_eq!(answered(&env, Reason::ExpiredProviderToken), 3);
    assert_eq!(env.emulator.accepted_count(), 5);
    // Each 403 made the connection mint a fresh token (rather than resend the rejected one).
    assert!(
        minter.minted_count() > minted_before,
        "minted {} before, {} after",
        minted_before,
        minter.minted_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_provider_token_past_the_retry_bound_fails_with_the_reason() {
    let env = start(|_| {}, with_attempts(2)).await;
    watched_minter(&env).await;
    // Every request is refused for longer than the push may be tried.
    env.emulator
        .set_faults(burst(Reason::ExpiredProviderToken, 1_000))
        .unwrap();
    let id = env.herald.send(TENANT, alert(1)).await.unwrap();
    let got = outcomes(&env.herald, &[id]).await;
    assert_eq!(
        got[&id],
        Outcome::Failed {
            reason: Failure::AttemptsExhausted("ExpiredProviderToken".into())
        }
    );
    assert_eq!(answered(&env, Reason::ExpiredProviderToken), 2);
    assert_eq!(env.emulator.accepted_count(), 0);
    assert_eq!(env.herald.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_provider_token_updates_backs_off_and_delivers() {
    let env = start(|_| {}, with_attempts(8)).await;
    let minter = watched_minter(&env).await;
    // Warm up: one delivery, so the connection holds its token.
    let first = env.herald.send(TENANT, alert(100)).await.unwrap();
    outcomes(&env.herald, &[first]).await;
    let minted_before = minter.minted_count();
    env.emulator
        .set_faults(burst(Reason::TooManyProviderTokenUpdates, 3))
        .unwrap();
    let ids: Vec<_> = env
        .herald
        .send_batch(TENANT, (0..5).map(alert).collect())
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert_eq!(answered(&env, Reason::TooManyProviderTokenUpdates), 3);
    assert_eq!(env.emulator.accepted_count(), 6);
    // Switching tokens is what APNs complained about: no new token was minted for it.
    assert_eq!(minter.minted_count(), minted_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_provider_token_updates_past_the_retry_bound_fails_with_the_reason() {
    let env = start(|_| {}, with_attempts(3)).await;
    watched_minter(&env).await;
    env.emulator
        .set_faults(burst(Reason::TooManyProviderTokenUpdates, 1_000))
        .unwrap();
    let id = env.herald.send(TENANT, alert(1)).await.unwrap();
    let got = outcomes(&env.herald, &[id]).await;
    assert_eq!(
        got[&id],
        Outcome::Failed {
            reason: Failure::AttemptsExhausted("TooManyProviderTokenUpdates".into())
        }
    );
    assert_eq!(answered(&env, Reason::TooManyProviderTokenUpdates), 3);
    assert_eq!(env.herald.pending(), 0);
}
