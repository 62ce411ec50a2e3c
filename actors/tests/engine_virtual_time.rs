//! The engine on virtual time: the emulator served over in-memory streams (the connector
//! seam), tokio's paused clock, a manual wall clock. Nothing here depends on the machine's
//! speed, and a minute of retries takes milliseconds.

mod engine_support;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use engine_support::{BUNDLE, KEY_ID, START_SECS, TEAM, TENANT, alert, credentials, fast_tuning};
use herald_actors::apns::Reason;
use herald_actors::seams::{BoxFuture, BoxStream, Connector, ManualClock, Timestamp};
use herald_actors::{Endpoint, Herald, PushId, TenantConfig};
use herald_sim::emulator::{Burst, EmulatorConfig, EmulatorCore, Latency, TeamConfig};

/// Opens an in-memory stream and serves the emulator on its other end.
#[derive(Debug)]
struct InMemory(EmulatorCore);

impl Connector for InMemory {
    fn connect<'a>(&'a self, _host: &'a str, _port: u16) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let core = self.0.clone();
            tokio::spawn(async move { core.serve_connection(server, None).await });
            Ok(Box::new(client) as BoxStream)
        })
    }
}

/// Run 200 pushes through a flaky emulator; return every push's outcome label.
async fn run(seed: u64) -> BTreeMap<PushId, String> {
    let (team, key) = TeamConfig::generate(TEAM, KEY_ID, &[BUNDLE]).unwrap();
    let mut config = EmulatorConfig::plaintext();
    config.teams = vec![team];
    config.seed = seed;
    config.faults.latency = Latency::Uniform {
        min_ms: 5,
        max_ms: 200,
    };
    config.faults.internal_server_error_rate = 0.1;
    config.faults.bursts = vec![Burst {
        reason: Reason::ServiceUnavailable,
        requests: Some(20),
        duration_ms: None,
    }];
    let clock = ManualClock::new(Timestamp::from_secs(START_SECS));
    let core = EmulatorCore::new(&config, Arc::new(clock.clone())).unwrap();
    let mut tuning = fast_tuning();
    tuning.attempts_max = 50;
    let herald = Herald::builder()
        .endpoint(Endpoint::plaintext("apns.invalid", 443))
        .connector(Arc::new(InMemory(core.clone())))
        .clock(Arc::new(clock.clone()))
        .rng_seed(seed)
        .tuning(tuning)
        .tenant(TenantConfig::new(TENANT, credentials(&key, &clock)))
        .build()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(herald.send(TENANT, alert(n)).await.unwrap());
    }
    let mut got = BTreeMap::new();
    while got.len() < ids.len() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        for id in &ids {
            if let Some(outcome) = herald.outcome(*id) {
                got.insert(*id, outcome.label().to_owned());
            }
        }
    }
    let report = herald.shutdown(Duration::from_secs(1)).await;
    assert!(report.drained);
    assert!(core.accepted_count() >= 200);
    got
}

#[tokio::test(start_paused = true)]
async fn flaky_apns_on_virtual_time_delivers_everything() {
    let first = run(11).await;
    assert!(
        first.values().all(|label| label == "delivered"),
        "{first:?}"
    );
    // The same seed gives the same push ids and the same outcomes.
    assert_eq!(run(11).await, first);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_backlog_drains_at_the_configured_rate() {
    let (team, key) = TeamConfig::generate(TEAM, KEY_ID, &[BUNDLE]).unwrap();
    let mut config = EmulatorConfig::plaintext();
    config.teams = vec![team];
    let clock = ManualClock::new(Timestamp::from_secs(START_SECS));
    let core = EmulatorCore::new(&config, Arc::new(clock.clone())).unwrap();
    let mut tenant = TenantConfig::new(TENANT, credentials(&key, &clock));
    tenant.rate_limit(herald_actors::rate_limit::RateLimit {
        per_second: 50.0,
        burst: 10,
    });
    let herald = Herald::builder()
        .endpoint(Endpoint::plaintext("apns.invalid", 443))
        .connector(Arc::new(InMemory(core.clone())))
        .clock(Arc::new(clock.clone()))
        .rng_seed(5)
        .tuning(fast_tuning())
        .tenant(tenant)
        .build()
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let batch: Vec<_> = (0..500).map(alert).collect();
    let ids: Vec<_> = herald
        .send_batch(TENANT, batch)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    while ids.iter().any(|id| herald.outcome(*id).is_none()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    // 500 pushes at 50/s after a burst of 10: 9.8 s, and not much more.
    assert!(took >= Duration::from_millis(9_800), "{took:?}");
    assert!(took <= Duration::from_secs(12), "{took:?}");
    assert_eq!(core.accepted_count(), 500);
}
