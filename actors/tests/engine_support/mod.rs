//! Shared helpers for the engine tests: an APNs emulator (plaintext h2c on 127.0.0.1) with
//! one team, and an engine wired to it with fast retry timings.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_actors::apns::{
    DeviceToken, Expiration, Notification, Priority, PushType, SigningKey, TokenMinter,
};
use herald_actors::backoff::Backoff;
use herald_actors::seams::{ManualClock, Timestamp};
use herald_actors::{
    Credentials, Endpoint, Herald, HeraldBuilder, Outcome, PushId, TenantConfig, Tuning,
};
use herald_sim::emulator::{Emulator, EmulatorConfig, GeneratedKey, TeamConfig};

pub const TEAM: &str = "TEAM123456";
pub const KEY_ID: &str = "KEY1234567";
pub const BUNDLE: &str = "com.example.app";
pub const TENANT: &str = "acme";
pub const START_SECS: u64 = 1_700_000_000;
/// Generous bound for anything to happen: tests never depend on machine speed, only on
/// this being long enough.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Env {
    pub emulator: Emulator,
    pub herald: Herald,
    pub key: GeneratedKey,
    pub clock: ManualClock,
}

/// Fast timings so retries and breaker cool-downs take milliseconds.
pub fn fast_tuning() -> Tuning {
    let mut t = Tuning::default();
    t.retry_backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(50));
    t.throttle_backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
    t.reconnect_backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
    t.breaker_server_errors_max = 5;
    t.breaker_open_for = Duration::from_millis(300);
    t.breaker_probe_timeout = Duration::from_secs(5);
    t
}

pub fn credentials(key: &GeneratedKey, clock: &ManualClock) -> Credentials {
    let signing =
        SigningKey::from_p8_pem(key.p8_pem.as_bytes(), &key.key_id, &key.team_id).unwrap();
    Credentials::Token(TokenMinter::with_default_interval(
        signing,
        Arc::new(clock.clone()),
    ))
}

/// An emulator (tweaked by `emulator`) and an engine with tenant [`TENANT`] (tweaked by `engine`).
pub async fn start(
    emulator: impl FnOnce(&mut EmulatorConfig),
    engine: impl FnOnce(&mut HeraldBuilder),
) -> Env {
    let (team, key) = TeamConfig::generate(TEAM, KEY_ID, &[BUNDLE]).unwrap();
    let mut config = EmulatorConfig::plaintext();
    config.teams = vec![team];
    config.admin_bind = None;
    emulator(&mut config);
    let clock = ManualClock::new(Timestamp::from_secs(START_SECS));
    let emu = Emulator::start_with_clock(config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let addr = emu.addr();
    let mut builder = Herald::builder();
    builder
        .endpoint(Endpoint::plaintext("127.0.0.1", addr.port()))
        .clock(Arc::new(clock.clone()))
        .rng_seed(7)
        .shards(4)
        .tuning(fast_tuning())
        .tenant(TenantConfig::new(TENANT, credentials(&key, &clock)));
    engine(&mut builder);
    let herald = builder.build().await.unwrap();
    Env {
        emulator: emu,
        herald,
        key,
        clock,
    }
}

/// A device token: 32 bytes derived from `n`.
pub fn token(n: u64) -> DeviceToken {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes[31] = 0xAB;
    DeviceToken::from_bytes(&bytes).unwrap()
}

pub fn alert(n: u64) -> Notification {
    alert_with(n, |_| {})
}

pub fn alert_with(
    n: u64,
    tweak: impl FnOnce(&mut herald_actors::apns::NotificationBuilder),
) -> Notification {
    let mut b = Notification::builder(token(n), BUNDLE.parse().unwrap(), PushType::Alert);
    b.raw_payload(format!(r#"{{"aps":{{"alert":"hello {n}"}}}}"#));
    b.priority(Priority::Immediate);
    tweak(&mut b);
    b.build().unwrap()
}

pub fn expiring_at(secs: u64) -> Expiration {
    Expiration::At(Timestamp::from_secs(secs))
}

/// Wait until every push in `ids` has an outcome; panic after [`PATIENCE`].
pub async fn outcomes(herald: &Herald, ids: &[PushId]) -> BTreeMap<PushId, Outcome> {
    let until = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got: BTreeMap<PushId, Outcome> = ids
            .iter()
            .filter_map(|id| herald.outcome(*id).map(|o| (*id, o)))
            .collect();
        if got.len() == ids.len() {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "only {} of {} pushes have outcomes",
            got.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until `cond` holds; panic after [`PATIENCE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn delivered(o: &Outcome) -> bool {
    matches!(o, Outcome::Delivered { .. })
}
