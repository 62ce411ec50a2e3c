//! Tenants end to end: TLS, the connection pool growing and shrinking, GOAWAY, the rate
//! limit, removal.

mod engine_support;

use std::sync::Arc;
use std::time::Duration;

use engine_support::*;
use herald_actors::apns::ApnsTlsConfig;
use herald_actors::breaker::BreakerState;
use herald_actors::rate_limit::RateLimit;
use herald_actors::seams::{ManualClock, Timestamp};
use herald_actors::{Endpoint, Failure, Herald, Outcome, TenantConfig};
use herald_sim::emulator::{Burst, Emulator, EmulatorConfig, Latency, TeamConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_over_tls() {
    let (team, key) = TeamConfig::generate(TEAM, KEY_ID, &[BUNDLE]).unwrap();
    let config = EmulatorConfig {
        teams: vec![team],
        admin_bind: None,
        ..EmulatorConfig::default()
    };
    let clock = ManualClock::new(Timestamp::from_secs(START_SECS));
    let emulator = Emulator::start_with_clock(config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let mut tls = ApnsTlsConfig::new();
    tls.webpki_roots(false)
        .add_root_certificates_pem(emulator.ca_pem().unwrap().as_bytes());
    let herald = Herald::builder()
        .endpoint(Endpoint::tls("127.0.0.1", emulator.addr().port(), tls))
        .clock(Arc::new(clock.clone()))
        .rng_seed(3)
        .tuning(fast_tuning())
        .tenant(TenantConfig::new(TENANT, credentials(&key, &clock)))
        .build()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(herald.send(TENANT, alert(n)).await.unwrap());
    }
    let got = outcomes(&herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert_eq!(emulator.accepted_count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_under_load_and_shrinks_when_idle() {
    let env = start(
        |c| c.faults.latency = Latency::Fixed { ms: 300 },
        |b| {
            let mut t = fast_tuning();
            t.pool_tick = Duration::from_millis(10);
            b.tuning(t);
        },
    )
    .await;
    let batch: Vec<_> = (0..400).map(alert).collect();
    let ids: Vec<_> = env
        .herald
        .send_batch(TENANT, batch)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut most = 0;
    let until = tokio::time::Instant::now() + PATIENCE;
    while ids.iter().any(|id| env.herald.outcome(*id).is_none()) {
        most = most.max(env.herald.tenant_status(TENANT).await.unwrap().connections);
        assert!(tokio::time::Instant::now() < until, "pushes not finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(most >= 2, "pool never grew: {most}");
    assert!(most <= 4, "pool exceeded its maximum: {most}");
    assert!(
        ids.iter()
            .all(|id| delivered(&env.herald.outcome(*id).unwrap()))
    );
    let until = tokio::time::Instant::now() + PATIENCE;
    while env.herald.tenant_status(TENANT).await.unwrap().connections > 1 {
        assert!(tokio::time::Instant::now() < until, "pool never shrank");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_reconnects_and_loses_nothing() {
    let env = start(|c| c.faults.goaway_after_streams = Some(7), |_| {}).await;
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert!(env.emulator.stats().goaways >= 1);
    let accepted = env.emulator.accepted();
    for id in &ids {
        let id = id.to_string();
        assert!(
            accepted.iter().any(|a| a.apns_id.eq_ignore_ascii_case(&id)),
            "{id} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spaces_sends_out() {
    let env = start(|_| {}, |_| {}).await;
    let mut slow = TenantConfig::new("slow", credentials(&env.key, &env.clock));
    slow.rate_limit(RateLimit {
        per_second: 100.0,
        burst: 1,
    });
    env.herald.add_tenant(slow).await.unwrap();
    let started = tokio::time::Instant::now();
    let batch: Vec<_> = (0..20).map(alert).collect();
    let ids: Vec<_> = env
        .herald
        .send_batch("slow", batch)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered));
    // 20 sends at 100/s with a burst of 1 need at least 190 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_tenant_fails_its_queued_pushes() {
    let env = start(|_| {}, |_| {}).await;
    let (_, unknown) = TeamConfig::generate(TEAM, "BADKEY0001", &[BUNDLE]).unwrap();
    env.herald
        .add_tenant(TenantConfig::new(
            "doomed",
            credentials(&unknown, &env.clock),
        ))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(env.herald.send("doomed", alert(n)).await.unwrap());
    }
    let until = tokio::time::Instant::now() + PATIENCE;
    while env.herald.tenant_status("doomed").await.unwrap().breaker == BreakerState::Closed {
        assert!(tokio::time::Instant::now() < until, "breaker never opened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    env.herald.remove_tenant("doomed").await.unwrap();
    let got = outcomes(&env.herald, &ids).await;
    for outcome in got.values() {
        assert_eq!(
            outcome,
            &Outcome::Failed {
                reason: Failure::TenantRemoved
            }
        );
    }
    assert!(env.herald.tenant_status("doomed").await.is_err());
    assert_eq!(env.emulator.accepted_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_shutdown_answers_reconnect_and_retry() {
    let env = start(
        |c| {
            c.faults.bursts = vec![Burst {
                reason: herald_actors::apns::Reason::Shutdown,
                requests: Some(3),
                duration_ms: None,
            }]
        },
        |_| {},
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(env.herald.send(TENANT, alert(n)).await.unwrap());
    }
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert_eq!(env.emulator.answers_by_reason().get("Shutdown"), Some(&3));
    assert!(env.emulator.stats().connections_total >= 2, "no reconnect");
    assert_eq!(env.emulator.accepted_count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_tokens_rotate_as_time_passes() {
    let env = start(|_| {}, |_| {}).await;
    let mut ids = Vec::new();
    for round in 0..4u64 {
        for n in 0..5 {
            ids.push(
                env.herald
                    .send(TENANT, alert(round * 10 + n))
                    .await
                    .unwrap(),
            );
        }
        let got = outcomes(&env.herald, &ids).await;
        assert!(got.values().all(delivered), "round {round}: {got:?}");
        // 35 minutes later the minter has a new token and connections switch to it (they
        // used the old one for more than 20 minutes, and it is not yet an hour old).
        env.clock.advance(Duration::from_secs(35 * 60));
    }
    let reasons = env.emulator.answers_by_reason();
    assert!(
        reasons.is_empty(),
        "APNs refused something while tokens rotated: {reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_tenants_deliver_over_mutual_tls() {
    // A push CA, and a client certificate from it for TEAM / BUNDLE (Apple's subject layout).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test Push CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Apple Push Services: {BUNDLE}"),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, TEAM);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = params.signed_by(&client_key, &issuer).unwrap();
    let identity = herald_actors::apns::ClientIdentity::from_pem(
        client_cert.pem().as_bytes(),
        client_key.serialize_pem().as_bytes(),
    )
    .unwrap();

    let mut config = EmulatorConfig {
        admin_bind: None,
        ..EmulatorConfig::default()
    };
    config.tls.client_ca_pem = Some(ca_cert.pem());
    config.tls.require_client_cert = true;
    let emulator = Emulator::start(config).await.unwrap();
    let mut tls = ApnsTlsConfig::new();
    tls.webpki_roots(false)
        .add_root_certificates_pem(emulator.ca_pem().unwrap().as_bytes());
    let herald = Herald::builder()
        .endpoint(Endpoint::tls("127.0.0.1", emulator.addr().port(), tls))
        .tuning(fast_tuning())
        .tenant(TenantConfig::new(
            TENANT,
            herald_actors::Credentials::Certificate(identity),
        ))
        .build()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(herald.send(TENANT, alert(n)).await.unwrap());
    }
    let got = outcomes(&herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert_eq!(emulator.accepted_count(), 10);
}
