//! Herald's APNs client core against the emulator, end to end: real TLS and HTTP/2 on
//! 127.0.0.1, Herald's builder, provider tokens and connection on one side, the emulator's
//! validation, authentication, device registry and faults on the other.
//!
//! Malformed answers (bad JSON, unknown reasons or statuses, broken frames) are not here:
//! the emulator never produces them, and `actors/tests/http2_connection.rs` covers them
//! against a scripted h2 server.

mod client_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client_support::*;
use herald_actors::apns::http2::{ApnsConnection, CloseReason, ConnectionState, SendError};
use herald_actors::apns::{
    ApnsId, AuthError, CertificateAuth, CollapseId, ConnectionAuth, Delivery, Expiration,
    Notification, PreparedRequest, Priority, ProviderToken, PushType, Reason, TokenMinter, Topic,
};
use herald_actors::seams::{Clock as _, ManualClock, Timestamp};
use herald_sim::emulator::{
    Burst, DeviceRateLimit, DeviceState, FaultProfile, KeyConfig, KeyEnvironment, Latency,
    TeamConfig,
};
use http::HeaderValue;

fn burst(reason: Reason) -> FaultProfile {
    FaultProfile {
        bursts: vec![Burst {
            reason,
            requests: Some(1),
            duration_ms: None,
        }],
        ..FaultProfile::default()
    }
}

/// Reasons the emulator never produces for a request from Herald's client. They are still
/// round-tripped, injected with a fault burst, to prove the client parses them.
const INJECTED_ONLY: [(Reason, &str); 2] = [
    // No emulator rule answers Forbidden (Apple documents no trigger for it either).
    (Reason::Forbidden, "no emulator rule"),
    // The emulator answers 405 to any method but POST; Herald's client only sends POST.
    (Reason::MethodNotAllowed, "the client only sends POST"),
];

/// Which reasons came back through the client, and how they were produced: `genuine` by
/// an emulator rule or a failure it models (500/503/Shutdown come from fault bursts, as
/// APNs' own failures would), `injected` by a burst of a reason no rule produces.
#[derive(Default)]
struct Coverage {
    genuine: BTreeSet<Reason>,
    injected: BTreeSet<Reason>,
}

impl Coverage {
    #[track_caller]
    fn genuine(&mut self, result: Result<Delivery, SendError>, reason: Reason) {
        assert_rejected(result, reason);
        self.genuine.insert(reason);
    }
}

/// A crafted request: what Herald's builder would refuse to produce.
fn crafted(edit: impl FnOnce(&mut PreparedRequest)) -> PreparedRequest {
    let mut request = notification(&device(100), None).prepare();
    edit(&mut request);
    request
}

fn bearer(token: &ProviderToken) -> Option<HeaderValue> {
    Some(token.bearer_header())
}

/// (1) Every reason APNs documents comes back through the client as a typed rejection with
/// the right status (and, for 410, Apple's timestamp).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_round_trips_through_the_client() {
    let client_ca = TestCa::new("Herald Test Push CA");
    let env = start(|c| c.tls.client_ca_pem = Some(client_ca.pem.clone())).await;
    let emulator = &env.emulator;
    let now = env.clock.now();
    let mut cov = Coverage::default();

    // 200.
    let connection = env.open().await;
    let id = apns_ids(1, 1)[0];
    let result = within(30, connection.send(&request(&device(1), id))).await;
    assert_accepted(&result, &id);

    // 400/410 from the device registry and the team's topics: well-formed requests.
    let at_ms = START_SECS * 1000 - 86_400_000;
    emulator.set_device(device(2).as_str(), DeviceState::Unregistered { at_ms });
    emulator.set_device(
        device(3).as_str(),
        DeviceState::Expired { at_ms: at_ms + 1 },
    );
    emulator.set_device(device(4).as_str(), DeviceState::Bad);
    emulator.set_device(
        device(5).as_str(),
        DeviceState::Valid {
            topic: Some("com.example.other".into()),
        },
    );
    let send = |n: Notification| {
        let connection = connection.clone();
        async move { within(30, connection.send(&n.prepare())).await }
    };
    let r = assert_rejected(
        send(notification(&device(2), None)).await,
        Reason::Unregistered,
    );
    assert_eq!(r.timestamp, Some(Timestamp::from_millis(at_ms)));
    cov.genuine.insert(Reason::Unregistered);
    let r = assert_rejected(
        send(notification(&device(3), None)).await,
        Reason::ExpiredToken,
    );
    assert_eq!(r.timestamp, Some(Timestamp::from_millis(at_ms + 1)));
    cov.genuine.insert(Reason::ExpiredToken);
    cov.genuine(
        send(notification(&device(4), None)).await,
        Reason::BadDeviceToken,
    );
    cov.genuine(
        send(notification(&device(5), None)).await,
        Reason::DeviceTokenNotForTopic,
    );
    cov.genuine(
        send(notification_for(&device(6), "com.not.ours", None)).await,
        Reason::TopicDisallowed,
    );
    emulator.set_device_rate_limit(Some(DeviceRateLimit {
        max_pushes: 1,
        window_ms: 3_600_000,
    }));
    assert!(matches!(
        send(notification(&device(7), None)).await,
        Ok(Delivery::Accepted { .. })
    ));
    cov.genuine(
        send(notification(&device(7), None)).await,
        Reason::TooManyRequests,
    );
    emulator.set_device_rate_limit(None);

    // 400/404/413 for requests Herald's builder refuses to make: hand-crafted.
    assert!(CollapseId::new(&"c".repeat(65)).is_err());
    assert!(Expiration::from_header("soon").is_err());
    assert!(ApnsId::new("not-a-uuid").is_err());
    assert!("7".parse::<Priority>().is_err());
    assert!(Topic::new("com..example").is_err());
    assert!("bogus".parse::<PushType>().is_err());
    let mut empty = Notification::builder(device(8), BUNDLE.parse().unwrap(), PushType::Alert);
    assert!(empty.raw_payload(Bytes::new()).build().is_err());
    let crafted_cases: Vec<(Reason, PreparedRequest)> = vec![
        (
            Reason::BadCollapseId,
            crafted(|r| {
                r.headers.insert(
                    "apns-collapse-id",
                    HeaderValue::from_str(&"c".repeat(65)).unwrap(),
                );
            }),
        ),
        (
            Reason::BadExpirationDate,
            crafted(|r| {
                r.headers
                    .insert("apns-expiration", HeaderValue::from_static("soon"));
            }),
        ),
        (
            Reason::BadMessageId,
            crafted(|r| {
                r.headers
                    .insert("apns-id", HeaderValue::from_static("not-a-uuid"));
            }),
        ),
        (
            Reason::BadPriority,
            crafted(|r| {
                r.headers
                    .insert("apns-priority", HeaderValue::from_static("7"));
            }),
        ),
        (
            Reason::BadTopic,
            crafted(|r| {
                r.headers
                    .insert("apns-topic", HeaderValue::from_static("com..example"));
            }),
        ),
        (
            Reason::DuplicateHeaders,
            crafted(|r| {
                r.headers
                    .append("apns-topic", HeaderValue::from_static(BUNDLE));
            }),
        ),
        (
            Reason::InvalidPushType,
            crafted(|r| {
                r.headers
                    .insert("apns-push-type", HeaderValue::from_static("bogus"));
            }),
        ),
        (
            Reason::MissingTopic,
            crafted(|r| {
                r.headers.remove("apns-topic");
            }),
        ),
        (Reason::PayloadEmpty, crafted(|r| r.body = Bytes::new())),
        (
            Reason::PayloadTooLarge,
            crafted(|r| {
                r.body = Bytes::from(format!(r#"{{"aps":{{}},"pad":"{}"}}"#, "x".repeat(5000)));
            }),
        ),
        (
            Reason::MissingDeviceToken,
            crafted(|r| r.path = "/3/device/".into()),
        ),
        (
            Reason::BadDeviceToken,
            crafted(|r| r.path = "/3/device/not-hex".into()),
        ),
        (
            Reason::BadPath,
            crafted(|r| r.path = format!("/2/device/{}", device(9))),
        ),
    ];
    for (reason, request) in crafted_cases {
        cov.genuine(within(30, connection.send(&request)).await, reason);
    }
    // None of those broke the connection.
    assert!(
        connection.state().accepts_new_streams(),
        "{}",
        connection.state()
    );

    // 403s from the credentials, on connections whose credentials the test scripts.
    let auth_case = |headers: Vec<Option<HeaderValue>>| {
        let auth = ScriptedAuth::new(headers);
        let rejections = auth.rejections.clone();
        (auth, rejections)
    };
    let valid = env.key.sign(now).unwrap();
    let cases = [
        (Reason::MissingProviderToken, vec![None]),
        (
            Reason::InvalidProviderToken,
            vec![Some(HeaderValue::from_static("bearer not.a.jwt"))],
        ),
        (
            Reason::ExpiredProviderToken,
            vec![bearer(
                &env.key
                    .sign(now.saturating_sub(Duration::from_secs(61 * 60)))
                    .unwrap(),
            )],
        ),
    ];
    for (reason, headers) in cases {
        let (auth, rejections) = auth_case(headers);
        let scripted = env.open_auth(Box::new(auth)).await;
        cov.genuine(
            within(
                30,
                scripted.send(&notification(&device(10), None).prepare()),
            )
            .await,
            reason,
        );
        assert_eq!(
            *rejections.lock().unwrap(),
            vec![reason],
            "credentials told"
        );
        scripted.close();
    }

    // A second team's token on a connection bound to the first team.
    let other = emulator
        .generate_team_key("TEAM999999", &["com.other.app"])
        .unwrap();
    let other_key = herald_actors::apns::SigningKey::from_p8_pem(
        other.p8_pem.as_bytes(),
        &other.key_id,
        "TEAM999999",
    )
    .unwrap();
    let (auth, rejections) = auth_case(vec![bearer(&valid), bearer(&other_key.sign(now).unwrap())]);
    let scripted = env.open_auth(Box::new(auth)).await;
    let first = within(
        30,
        scripted.send(&notification(&device(11), None).prepare()),
    )
    .await;
    assert!(matches!(first, Ok(Delivery::Accepted { .. })), "{first:?}");
    cov.genuine(
        within(
            30,
            scripted.send(&notification_for(&device(11), "com.other.app", None).prepare()),
        )
        .await,
        Reason::UnrelatedKeyIdInToken,
    );
    assert_eq!(
        *rejections.lock().unwrap(),
        vec![Reason::UnrelatedKeyIdInToken]
    );
    scripted.close();

    // Switching tokens on a connection within 20 minutes.
    let (auth, rejections) = auth_case(vec![
        bearer(&valid),
        bearer(
            &env.key
                .sign(now.saturating_sub(Duration::from_secs(1)))
                .unwrap(),
        ),
    ]);
    let scripted = env.open_auth(Box::new(auth)).await;
    let first = within(
        30,
        scripted.send(&notification(&device(12), None).prepare()),
    )
    .await;
    assert!(matches!(first, Ok(Delivery::Accepted { .. })), "{first:?}");
    cov.genuine(
        within(
            30,
            scripted.send(&notification(&device(12), None).prepare()),
        )
        .await,
        Reason::TooManyProviderTokenUpdates,
    );
    assert_eq!(
        *rejections.lock().unwrap(),
        vec![Reason::TooManyProviderTokenUpdates]
    );
    scripted.close();

    // A key registered for the sandbox only, against a production emulator.
    let (team, sandbox) = TeamConfig::generate(TEAM, "SANDBOXKEY", &[BUNDLE]).unwrap();
    let sandbox_only = KeyConfig {
        environment: KeyEnvironment::Sandbox,
        ..team.keys[0].clone()
    };
    emulator
        .add_team_key(TEAM, &[BUNDLE], &sandbox_only)
        .unwrap();
    let sandbox_key =
        herald_actors::apns::SigningKey::from_p8_pem(sandbox.p8_pem.as_bytes(), "SANDBOXKEY", TEAM)
            .unwrap();
    let (auth, _) = auth_case(vec![bearer(&sandbox_key.sign(now).unwrap())]);
    let scripted = env.open_auth(Box::new(auth)).await;
    cov.genuine(
        within(
            30,
            scripted.send(&notification(&device(13), None).prepare()),
        )
        .await,
        Reason::BadEnvironmentKeyIdInToken,
    );
    scripted.close();

    // A client certificate from the trusted CA but without a team (no OU).
    let no_team = client_ca.identity(&[(
        rcgen::DnType::CommonName,
        "Apple Push Services: com.example.app",
    )]);
    assert_eq!(no_team.team_id(), None);
    let config = env.config_with(trusting(emulator, Some(no_team)), emulator.addr().port());
    let cert_connection = env
        .try_open(config, Box::new(CertificateAuth::new(TEAM)))
        .await
        .unwrap();
    cov.genuine(
        within(
            30,
            cert_connection.send(&notification(&device(14), None).prepare()),
        )
        .await,
        Reason::BadCertificate,
    );
    cert_connection.close();

    // A development (sandbox-only) certificate against a production emulator.
    let development = client_ca.identity(&[
        (
            rcgen::DnType::CommonName,
            "Apple Development IOS Push Services: com.example.app",
        ),
        (rcgen::DnType::OrganizationalUnitName, TEAM),
    ]);
    let config = env.config_with(
        trusting(emulator, Some(development)),
        emulator.addr().port(),
    );
    let cert_connection = env
        .try_open(config, Box::new(CertificateAuth::new(TEAM)))
        .await
        .unwrap();
    cov.genuine(
        within(
            30,
            cert_connection.send(&notification(&device(14), None).prepare()),
        )
        .await,
        Reason::BadCertificateEnvironment,
    );
    cert_connection.close();

    // 500/503 and Shutdown from fault bursts.
    for reason in [
        Reason::InternalServerError,
        Reason::ServiceUnavailable,
        Reason::Shutdown,
    ] {
        emulator.set_faults(burst(reason)).unwrap();
        cov.genuine(send(notification(&device(15), None)).await, reason);
    }
    emulator.set_faults(FaultProfile::default()).unwrap();

    // IdleTimeout: a connection idle longer than the emulator allows.
    emulator
        .set_faults(FaultProfile {
            idle_timeout_ms: Some(200),
            ..FaultProfile::default()
        })
        .unwrap();
    let idle = env.open().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    cov.genuine(
        within(30, idle.send(&notification(&device(16), None).prepare())).await,
        Reason::IdleTimeout,
    );
    match within(30, idle.closed()).await {
        CloseReason::GoAway(info) => assert_eq!(info.apns_reason(), Some(Reason::IdleTimeout)),
        other => panic!("expected GOAWAY after IdleTimeout, got {other}"),
    }
    emulator.set_faults(FaultProfile::default()).unwrap();

    // The reasons the emulator cannot produce for this client, injected.
    for (reason, _why) in INJECTED_ONLY {
        emulator.set_faults(burst(reason)).unwrap();
        assert_rejected(send(notification(&device(17), None)).await, reason);
        cov.injected.insert(reason);
    }
    emulator.set_faults(FaultProfile::default()).unwrap();

    let all: BTreeSet<Reason> = Reason::ALL.into_iter().collect();
    let injected_only: BTreeSet<Reason> = INJECTED_ONLY.iter().map(|(r, _)| *r).collect();
    let missing: Vec<_> = all
        .difference(&cov.genuine)
        .filter(|r| !injected_only.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "reasons not produced end to end: {missing:?}"
    );
    assert!(cov.genuine.is_disjoint(&injected_only));
    assert_eq!(cov.injected, injected_only);
    // The emulator counted every answer it gave.
    let answered = emulator.answers_by_reason();
    for reason in Reason::ALL {
        assert!(
            answered.contains_key(reason.as_str()),
            "{reason} not counted"
        );
    }
    env.emulator.shutdown().await;
}

/// One lane of the rotation workload: a connection (replaced when its token is exhausted)
/// and the headers each of its connections presented.
struct Lane {
    connection: Option<ApnsConnection>,
    logs: Vec<Arc<std::sync::Mutex<Vec<Presented>>>>,
}

#[derive(Default)]
struct RotationTally {
    sent: u64,
    exhausted: u64,
    expired_answers: u64,
}

impl Lane {
    fn new() -> Self {
        Lane {
            connection: None,
            logs: Vec::new(),
        }
    }

    /// Deliver one notification, opening connections as needed; resends what the client
    /// says may be resent.
    async fn deliver(&mut self, env: &Env, minter: &TokenMinter, tally: &mut RotationTally) {
        let request = notification(&device(1), None).prepare();
        for _attempt in 0..5 {
            let connection = match &self.connection {
                Some(c) => c.clone(),
                None => {
                    let auth = RecordingAuth::new(minter.clone());
                    self.logs.push(auth.log.clone());
                    let c = env.open_auth(Box::new(auth)).await;
                    self.connection = Some(c.clone());
                    c
                }
            };
            match within(30, connection.send(&request)).await {
                Ok(Delivery::Accepted { .. }) => {
                    tally.sent += 1;
                    return;
                }
                Ok(Delivery::Rejected(r)) if r.reason == Reason::ExpiredProviderToken => {
                    tally.expired_answers += 1;
                }
                Err(SendError::Auth(AuthError::TokenExhausted)) => {
                    tally.exhausted += 1;
                    connection.close();
                    self.connection = None;
                }
                other => panic!("unexpected answer: {other:?}"),
            }
        }
        panic!("not delivered in 5 attempts");
    }
}

/// Check the per-connection token rule from the client's side: a connection switches
/// tokens only after 20 minutes and never presents a token an hour old.
fn check_presented(log: &[Presented]) -> usize {
    let mut switches = 0;
    let mut current: Option<(&str, Timestamp)> = None;
    for p in log {
        let token = ProviderToken::from_jwt(&p.jwt).unwrap();
        assert!(
            token.age(p.at) < Duration::from_secs(3600),
            "token {} min old presented",
            token.age(p.at).as_secs() / 60
        );
        match current {
            Some((jwt, _)) if jwt == p.jwt => {}
            Some((_, since)) => {
                assert!(
                    p.at.since(since) >= Duration::from_secs(20 * 60),
                    "switched after {} min",
                    p.at.since(since).as_secs() / 60
                );
                switches += 1;
                current = Some((&p.jwt, p.at));
            }
            None => current = Some((&p.jwt, p.at)),
        }
    }
    switches
}

/// (2) Provider-token rotation over hours of simulated time, the clock shared by client and
/// emulator: no ExpiredProviderToken, no TooManyProviderTokenUpdates, tokens rotate.
async fn rotation_over_hours(interval_minutes: u64) {
    let env = start(|_| {}).await;
    let minter = TokenMinter::new(
        env.key.clone(),
        env.client_clock(),
        Duration::from_secs(interval_minutes * 60),
    )
    .unwrap();
    let step = Duration::from_secs(7 * 60);
    let steps = 6 * 60 / 7;
    let mut busy = Lane::new();
    let mut sporadic = Lane::new();
    let mut tally = RotationTally::default();
    for i in 0..steps {
        busy.deliver(&env, &minter, &mut tally).await;
        busy.deliver(&env, &minter, &mut tally).await;
        // A second connection, used every 70 minutes, starting 21 minutes in.
        if i % 10 == 3 {
            sporadic.deliver(&env, &minter, &mut tally).await;
        }
        env.clock.advance(step);
    }
    let total_minutes = steps * 7;
    let answers = env.emulator.answers_by_reason();
    assert!(answers.is_empty(), "M = {interval_minutes}: {answers:?}");
    assert_eq!(tally.expired_answers, 0);
    assert_eq!(tally.exhausted, 0, "steady use never exhausts a token");
    assert_eq!(env.emulator.accepted_count(), tally.sent);
    let minted = minter.minted_count();
    assert!(
        minted >= total_minutes / 60 && minted <= total_minutes / interval_minutes + 1,
        "M = {interval_minutes}: {minted} tokens minted over {total_minutes} min"
    );
    let busy_switches: usize = busy
        .logs
        .iter()
        .map(|l| check_presented(&l.lock().unwrap()))
        .sum();
    let sporadic_switches: usize = sporadic
        .logs
        .iter()
        .map(|l| check_presented(&l.lock().unwrap()))
        .sum();
    eprintln!(
        "M = {interval_minutes}: {} pushes over {total_minutes} min, {minted} tokens minted, \
         busy connection switched {busy_switches} times, sporadic {sporadic_switches}",
        tally.sent
    );
    assert_eq!(busy.logs.len(), 1, "one connection carried the busy lane");
    assert!(
        busy_switches as u64 >= total_minutes / 60,
        "busy connection switched {busy_switches} times"
    );
    assert!(
        sporadic_switches >= 3,
        "sporadic connection switched {sporadic_switches} times"
    );
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotation_over_hours_with_a_30_minute_interval() {
    rotation_over_hours(30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotation_over_hours_with_a_40_minute_interval() {
    rotation_over_hours(40).await;
}

/// (2b) APNs' clock runs a few minutes ahead of ours. With M = 40 a connection that opens
/// on a token just under 40 minutes old keeps it 20 minutes, so near the end APNs counts it
/// over an hour old: ExpiredProviderToken. The client retires that connection's token
/// (TokenExhausted), a new connection carries on with the newest token, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_clock_ahead_expires_a_token_and_a_new_connection_recovers() {
    let clock = ManualClock::new(Timestamp::from_secs(START_SECS));
    let emulator_clock = AheadClock {
        base: clock.clone(),
        ahead: Duration::from_secs(3 * 60),
    };
    let env = start_with_clocks(clock, Arc::new(emulator_clock), |_| {}).await;
    let minter = TokenMinter::new(
        env.key.clone(),
        env.client_clock(),
        Duration::from_secs(40 * 60),
    )
    .unwrap();
    let mut early = Lane::new();
    let mut late = Lane::new();
    let mut early_tally = RotationTally::default();
    let mut late_tally = RotationTally::default();
    for minute in 0..120 {
        early.deliver(&env, &minter, &mut early_tally).await;
        // Opens at minute 39, on the token minted at minute 0.
        if minute >= 39 {
            late.deliver(&env, &minter, &mut late_tally).await;
        }
        env.clock.advance(Duration::from_secs(60));
    }
    assert_eq!(early_tally.expired_answers, 0);
    assert_eq!(early.logs.len(), 1);
    assert!(
        late_tally.expired_answers >= 1,
        "APNs never saw an expired token"
    );
    assert_eq!(
        late_tally.exhausted, late_tally.expired_answers,
        "every expiry retired its connection's token"
    );
    assert_eq!(late.logs.len() as u64, 1 + late_tally.exhausted);
    for log in early.logs.iter().chain(&late.logs) {
        check_presented(&log.lock().unwrap());
    }
    assert_eq!(
        env.emulator.accepted_count(),
        early_tally.sent + late_tally.sent
    );
    let answers = env.emulator.answers_by_reason();
    assert_eq!(
        answers.keys().collect::<Vec<_>>(),
        vec!["ExpiredProviderToken"]
    );
    env.emulator.shutdown().await;
}

/// Send `requests` by apns-id until every one is accepted, on as many connections as it
/// takes. Checks, after each connection closes, that nothing reported as not processed was
/// processed. Returns how many times each id was reported as possibly processed (and
/// resent anyway).
async fn deliver_all_resending(
    env: &Env,
    requests: &BTreeMap<String, PreparedRequest>,
    rounds_max: usize,
) -> (BTreeMap<String, usize>, usize) {
    let mut pending: Vec<String> = requests.keys().cloned().collect();
    let mut maybe_sent = BTreeMap::<String, usize>::new();
    let mut accepted = BTreeSet::new();
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds <= rounds_max, "still {} pending", pending.len());
        let connection = env.open().await;
        let batch: Vec<_> = pending.iter().map(|id| requests[id].clone()).collect();
        let results = send_all(&connection, &batch).await;
        let mut unsent = Vec::new();
        let mut next = Vec::new();
        let mut kinds = BTreeMap::<&str, usize>::new();
        for (id, result) in pending.iter().zip(results) {
            match result {
                Ok(Delivery::Accepted { apns_id }) => {
                    assert_eq!(apns_id.as_deref(), Some(id.as_str()));
                    assert!(accepted.insert(id.clone()), "{id} accepted twice");
                }
                Ok(Delivery::Rejected(r)) => panic!("{id} rejected: {r:?}"),
                Err(e) if !e.was_sent() => {
                    *kinds.entry(unsent_kind(&e)).or_insert(0) += 1;
                    unsent.push(id.clone());
                    next.push(id.clone());
                }
                Err(e) => {
                    *maybe_sent.entry(id.clone()).or_default() += 1;
                    next.push(id.clone());
                    eprintln!("{id}: {e} (may have been processed; resent)");
                }
            }
        }
        connection.close();
        within(60, connection.closed()).await;
        let counts = env.record_counts();
        for id in &unsent {
            if !maybe_sent.contains_key(id) {
                assert_eq!(
                    counts.get(id),
                    None,
                    "{id} was reported as not processed but APNs processed it"
                );
            }
        }
        eprintln!(
            "round {rounds}: {} sent, {} not processed {kinds:?}, {} maybe processed",
            pending.len(),
            unsent.len(),
            next.len() - unsent.len()
        );
        pending = next;
    }
    assert_eq!(accepted.len(), requests.len());
    (maybe_sent, rounds)
}

fn unsent_kind(e: &SendError) -> &'static str {
    match e {
        SendError::GoAway(_) => "GoAway",
        SendError::Closed(_) => "Closed",
        SendError::Refused { .. } => "Refused",
        SendError::StreamWaitTimeout { .. } => "StreamWaitTimeout",
        _ => "other",
    }
}

/// Every notification is in the record exactly once, except those reported as possibly
/// processed: once, plus at most once per such report.
fn assert_nothing_lost(env: &Env, ids: &BTreeSet<String>, maybe_sent: &BTreeMap<String, usize>) {
    let counts = env.record_counts();
    for id in ids {
        let count = counts.get(id).copied().unwrap_or(0);
        let maybe = maybe_sent.get(id).copied().unwrap_or(0);
        assert!(
            (1..=1 + maybe).contains(&count),
            "{id} recorded {count} times, reported possibly processed {maybe} times"
        );
    }
    assert!(
        counts.keys().all(|id| ids.contains(id)),
        "unknown ids recorded"
    );
}

/// (3) GOAWAY mid-flight: streams above the last-stream-id are reported not processed,
/// resent on new connections; nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_mid_flight_loses_nothing() {
    let env = start(|c| {
        // Few streams at once, so most requests are still waiting when GOAWAY comes.
        c.max_concurrent_streams = 10;
        c.faults = FaultProfile {
            goaway_after_streams: Some(7),
            latency: Latency::Fixed { ms: 20 },
            ..FaultProfile::default()
        };
    })
    .await;
    let requests: BTreeMap<String, PreparedRequest> = apns_ids(60, 3)
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id.as_str().to_string(), request(&device(i as u64), id)))
        .collect();
    let (maybe_sent, rounds) = deliver_all_resending(&env, &requests, 200).await;
    assert!(rounds > 1, "GOAWAY cut nothing off");
    assert!(env.emulator.stats().goaways >= rounds as u64 - 1);
    let ids: BTreeSet<String> = requests.keys().cloned().collect();
    assert_nothing_lost(&env, &ids, &maybe_sent);
    env.emulator.shutdown().await;
}

/// (3b) Connections dropped abruptly (no GOAWAY, no answer): requests in flight are
/// reported as possibly processed and resent, the rest as not processed. Nothing is lost;
/// only the possibly processed ones may be there twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lose_nothing() {
    let env = start(|c| {
        c.max_concurrent_streams = 10;
        c.faults = FaultProfile {
            connection_drop_rate: 0.05,
            latency: Latency::Fixed { ms: 10 },
            ..FaultProfile::default()
        };
    })
    .await;
    let requests: BTreeMap<String, PreparedRequest> = apns_ids(80, 8)
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id.as_str().to_string(), request(&device(i as u64), id)))
        .collect();
    let (maybe_sent, rounds) = deliver_all_resending(&env, &requests, 500).await;
    assert!(rounds > 1, "no connection was dropped");
    assert!(env.emulator.stats().dropped_connections > 0);
    assert!(!maybe_sent.is_empty(), "no request was in flight at a drop");
    let ids: BTreeSet<String> = requests.keys().cloned().collect();
    assert_nothing_lost(&env, &ids, &maybe_sent);
    env.emulator.shutdown().await;
}

/// (4) REFUSED_STREAM: refused streams are resent; every notification ends accepted, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_resent_until_accepted() {
    let env = start(|c| {
        c.faults = FaultProfile {
            refused_stream_rate: 0.3,
            ..FaultProfile::default()
        };
    })
    .await;
    let ids = apns_ids(100, 4);
    let connection = env.open().await;
    let mut pending: Vec<(ApnsId, PreparedRequest)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, request(&device(i as u64), *id)))
        .collect();
    let mut given_up = 0;
    for _round in 0..50 {
        if pending.is_empty() {
            break;
        }
        let batch: Vec<_> = pending.iter().map(|(_, r)| r.clone()).collect();
        let results = send_all(&connection, &batch).await;
        let mut next = Vec::new();
        for ((id, request), result) in pending.into_iter().zip(results) {
            match result {
                Ok(_) => assert_accepted(&result, &id),
                Err(SendError::Refused { attempts }) => {
                    assert_eq!(attempts, herald_actors::limits::REFUSED_STREAM_ATTEMPTS_MAX);
                    given_up += 1;
                    next.push((id, request));
                }
                Err(e) => panic!("{}: {e} (was_sent {})", &*id.as_str(), e.was_sent()),
            }
        }
        pending = next;
    }
    assert!(pending.is_empty(), "{} never accepted", pending.len());
    assert!(connection.state().accepts_new_streams());
    let stats = env.emulator.stats();
    assert!(stats.refused_streams > 0);
    eprintln!(
        "{} streams refused, {given_up} sends gave up after {} attempts",
        stats.refused_streams,
        herald_actors::limits::REFUSED_STREAM_ATTEMPTS_MAX
    );
    let all: BTreeSet<String> = ids.iter().map(|id| id.as_str().to_string()).collect();
    assert_nothing_lost(&env, &all, &BTreeMap::new());
    env.emulator.shutdown().await;
}

/// (5) The server's SETTINGS_MAX_CONCURRENT_STREAMS is respected on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_is_respected_on_the_wire() {
    let env = start(|c| {
        c.faults = FaultProfile {
            latency: Latency::Fixed { ms: 5 },
            ..FaultProfile::default()
        };
    })
    .await;
    env.emulator.set_max_concurrent_streams(5);
    let connection = env.open().await;
    let ids = apns_ids(200, 5);
    let requests: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| request(&device(i as u64), *id))
        .collect();
    let results = send_all(&connection, &requests).await;
    for (id, result) in ids.iter().zip(&results) {
        assert_accepted(result, id);
    }
    let stats = env.emulator.stats();
    assert_eq!(stats.connections.len(), 1, "{:?}", stats.connections);
    let c = &stats.connections[0];
    assert_eq!(c.max_concurrent_streams, 5);
    assert_eq!(c.streams_opened, 200, "{c:?}");
    assert_eq!(c.stream_limit_violations, 0, "{c:?}");
    assert!(c.max_concurrent_seen <= 5, "{c:?}");
    assert!(
        c.max_concurrent_seen >= 2,
        "requests were not concurrent: {c:?}"
    );
    assert_eq!(stats.refused_streams, 0);
    let all: BTreeSet<String> = ids.iter().map(|id| id.as_str().to_string()).collect();
    assert_nothing_lost(&env, &all, &BTreeMap::new());
    env.emulator.shutdown().await;
}

/// (5b) The stream limit lowered while requests are in flight: the emulator sends GOAWAY,
/// the client finishes what was sent and reports the rest unprocessed; new connections
/// respect the new limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_lowered_mid_flight() {
    let env = start(|c| {
        c.max_concurrent_streams = 20;
        c.faults = FaultProfile {
            latency: Latency::Fixed { ms: 20 },
            ..FaultProfile::default()
        };
    })
    .await;
    let requests: BTreeMap<String, PreparedRequest> = apns_ids(150, 9)
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id.as_str().to_string(), request(&device(i as u64), id)))
        .collect();
    let connection = env.open().await;
    let batch: Vec<_> = requests.values().cloned().collect();
    let sending = {
        let connection = connection.clone();
        tokio::spawn(async move { send_all(&connection, &batch).await })
    };
    let emulator = &env.emulator;
    wait_until("the first connection carried 30 streams", || {
        emulator
            .stats()
            .connections
            .first()
            .is_some_and(|c| c.streams_accepted >= 30)
    })
    .await;
    emulator.set_max_concurrent_streams(3);
    let results = within(120, sending).await.unwrap();
    let mut rest = BTreeMap::new();
    for ((id, request), result) in requests.iter().zip(results) {
        match result {
            Ok(Delivery::Accepted { .. }) => {}
            Err(e) if !e.was_sent() => {
                rest.insert(id.clone(), request.clone());
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert!(!rest.is_empty(), "GOAWAY cut nothing off");
    assert!(matches!(
        within(60, connection.closed()).await,
        CloseReason::GoAway(_)
    ));
    let (maybe_sent, _) = deliver_all_resending(&env, &rest, 10).await;
    assert!(maybe_sent.is_empty(), "{maybe_sent:?}");
    let stats = emulator.stats();
    assert!(stats.connections.len() >= 2);
    for c in &stats.connections {
        assert_eq!(c.stream_limit_violations, 0, "{c:?}");
        assert!(
            c.max_concurrent_seen <= u64::from(c.max_concurrent_streams),
            "{c:?}"
        );
    }
    assert!(
        stats.connections[1..]
            .iter()
            .all(|c| c.max_concurrent_streams == 3)
    );
    let ids: BTreeSet<String> = requests.keys().cloned().collect();
    assert_nothing_lost(&env, &ids, &BTreeMap::new());
    env.emulator.shutdown().await;
}

/// (6) A peer that silently stops answering is found by PING: the connection closes with
/// PingTimeout, the request in flight fails as possibly processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_found_by_ping() {
    let env = start(|_| {}).await;
    let proxy = Proxy::start(env.emulator.addr()).await;
    let mut config = env.config_with(env.tls.clone(), proxy.addr.port());
    config.ping_interval = Duration::from_millis(200);
    config.ping_timeout = Duration::from_millis(1000);
    let connection = env
        .try_open(
            config,
            Box::new(herald_actors::apns::TokenConnectionAuth::new(
                env.minter.clone(),
            )),
        )
        .await
        .unwrap();
    let first = apns_ids(2, 6);
    let result = within(30, connection.send(&request(&device(1), first[0]))).await;
    assert_accepted(&result, &first[0]);

    // The next answer takes long; the request reaches the emulator, then the link goes
    // silent both ways.
    env.emulator
        .set_faults(FaultProfile {
            latency: Latency::Fixed { ms: 60_000 },
            ..FaultProfile::default()
        })
        .unwrap();
    let in_flight = {
        let connection = connection.clone();
        let request = request(&device(2), first[1]);
        tokio::spawn(async move { connection.send(&request).await })
    };
    let emulator = &env.emulator;
    wait_until("the emulator holds the second stream", || {
        emulator
            .stats()
            .connections
            .iter()
            .any(|c| c.streams_accepted >= 2)
    })
    .await;
    proxy.cut();

    let reason = within(30, connection.closed()).await;
    assert_eq!(reason, CloseReason::PingTimeout);
    let error = within(30, in_flight).await.unwrap().unwrap_err();
    assert!(error.was_sent(), "{error}");
    assert!(matches!(error, SendError::ConnectionLost(_)), "{error}");
    let late = within(30, connection.send(&request(&device(3), apns_ids(3, 7)[2]))).await;
    let late = late.unwrap_err();
    assert!(!late.was_sent(), "{late}");
    assert_eq!(
        connection.state(),
        ConnectionState::Closed(CloseReason::PingTimeout)
    );
    env.emulator.shutdown().await;
}

/// (7) Certificate auth: a client certificate (OU = team, CN/UID = bundle) loaded by
/// Herald, no authorization header; a certificate from another CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_auth_round_trip_and_wrong_certificate_refused() {
    let client_ca = TestCa::new("Herald Test Push CA");
    let env = start(|c| {
        c.tls.client_ca_pem = Some(client_ca.pem.clone());
        c.tls.require_client_cert = true;
    })
    .await;
    let emulator = &env.emulator;

    let by_cn = client_ca.identity(&[
        (
            rcgen::DnType::CommonName,
            "Apple Push Services: com.example.app",
        ),
        (rcgen::DnType::OrganizationalUnitName, TEAM),
    ]);
    let by_uid = client_ca.identity(&[
        (uid(), BUNDLE),
        (rcgen::DnType::CommonName, "Herald test certificate"),
        (rcgen::DnType::OrganizationalUnitName, TEAM),
    ]);
    let ids = apns_ids(2, 7);
    for (identity, id) in [(by_cn, ids[0]), (by_uid, ids[1])] {
        assert_eq!(identity.team_id(), Some(TEAM));
        assert_eq!(identity.topic(), Some(BUNDLE));
        let mut auth = identity.certificate_auth().unwrap();
        assert_eq!(auth.authorization(env.clock.now()), Ok(None));
        let config = env.config_with(trusting(emulator, Some(identity)), emulator.addr().port());
        let connection = env.try_open(config, Box::new(auth)).await.unwrap();
        let result = within(30, connection.send(&request(&device(1), id))).await;
        assert_accepted(&result, &id);
        connection.close();
    }
    let record = emulator.accepted();
    assert_eq!(record.len(), 2);
    assert!(record.iter().all(|n| n.topic == BUNDLE));

    // A certificate with the right subject from a CA the emulator does not trust.
    let rogue_ca = TestCa::new("Rogue CA");
    let rogue = rogue_ca.identity(&[
        (
            rcgen::DnType::CommonName,
            "Apple Push Services: com.example.app",
        ),
        (rcgen::DnType::OrganizationalUnitName, TEAM),
    ]);
    let auth = rogue.certificate_auth().unwrap();
    let config = env.config_with(trusting(emulator, Some(rogue)), emulator.addr().port());
    assert_refused(&env, env.try_open(config, Box::new(auth)).await).await;

    // No certificate at all (token auth) where one is required.
    let config = env.config();
    let auth = herald_actors::apns::TokenConnectionAuth::new(env.minter.clone());
    assert_refused(&env, env.try_open(config, Box::new(auth)).await).await;

    assert_eq!(
        emulator.accepted().len(),
        2,
        "nothing accepted after the refusals"
    );
    env.emulator.shutdown().await;
}

/// The TLS handshake fails, or (TLS 1.3: the client finishes its handshake before the
/// server checks its certificate) the first request fails.
async fn assert_refused(
    env: &Env,
    opened: Result<ApnsConnection, herald_actors::apns::http2::ConnectError>,
) {
    match opened {
        Err(e) => eprintln!("refused at connect: {e}"),
        Ok(connection) => {
            let result = within(
                30,
                connection.send(&request(&device(1), apns_ids(1, 99)[0])),
            )
            .await;
            assert!(result.is_err(), "accepted: {result:?}");
            eprintln!("refused at first request: {}", result.unwrap_err());
            let reason = within(30, connection.closed()).await;
            eprintln!("closed: {reason}");
        }
    }
    assert_eq!(env.emulator.stats().answers_by_status.get(&403), None);
}

/// An answer that comes before the request body was queued (the emulator answers
/// IdleTimeout from the headers alone, then closes the connection) is still read. The
/// client used to fail such a request as `ConnectionLost` when the stream had closed before
/// `send_data` (h2: "inactive stream"), in about one try in ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answer_before_the_body_is_read() {
    let env = start(|c| {
        c.faults = FaultProfile {
            idle_timeout_ms: Some(50),
            ..FaultProfile::default()
        };
    })
    .await;
    for _ in 0..40 {
        let connection = env.open().await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let result = within(
            30,
            connection.send(&notification(&device(1), None).prepare()),
        )
        .await;
        assert_rejected(result, Reason::IdleTimeout);
        within(30, connection.closed()).await;
    }
    env.emulator.shutdown().await;
}

/// (9) APNs allows one stream on a token-auth connection until a token has been accepted.
/// Herald's client, on a fresh connection with 20 sends fired at once, keeps to it: the
/// emulator counts no one-stream violation, yet the sends after the first run concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_token_connection_honours_one_stream_rule() {
    let env = start(|c| {
        c.faults = FaultProfile {
            latency: Latency::Fixed { ms: 20 },
            ..FaultProfile::default()
        };
    })
    .await;
    let connection = env.open().await;
    let ids = apns_ids(20, 9);
    let requests: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| request(&device(i as u64), *id))
        .collect();
    let results = send_all(&connection, &requests).await;
    for (id, result) in ids.iter().zip(&results) {
        assert_accepted(result, id);
    }
    let stats = env.emulator.stats();
    assert_eq!(stats.connections.len(), 1, "{:?}", stats.connections);
    let c = &stats.connections[0];
    assert_eq!(c.streams_opened, 20, "{c:?}");
    assert_eq!(c.one_stream_violations, 0, "{c:?}");
    assert_eq!(c.stream_limit_violations, 0, "{c:?}");
    assert!(
        c.max_concurrent_seen >= 2,
        "sends after the first were not concurrent: {c:?}"
    );
    env.emulator.shutdown().await;
}
