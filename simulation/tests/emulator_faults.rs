//! Device registry, fault injection, stream limits, the admin endpoint and determinism.

mod emulator_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use emulator_support::*;
use herald_sim::emulator::{
    Burst, DeviceRateLimit, DeviceState, EmulatorConfig, FaultProfile, Latency, UnknownTokenPolicy,
};

const OTHER: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

async fn push_to(client: &Client, bearer: &str, token: &str) -> Answer {
    client
        .request(
            "POST",
            &format!("/3/device/{token}"),
            &refs(&alert_headers(bearer)),
            PAYLOAD,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn device_states() {
    let s = setup(|c| c.unknown_tokens = UnknownTokenPolicy::Accept).await;
    let client = Client::connect(&s.emulator).await;
    let b = bearer(&s);
    let at = START_SECS * 1000 - 5_000;
    s.emulator
        .set_device(TOKEN, DeviceState::Unregistered { at_ms: at });
    let a = client.push(&refs(&alert_headers(&b))).await;
    assert_eq!(
        (a.status, a.reason.as_deref(), a.timestamp),
        (410, Some("Unregistered"), Some(at))
    );

    s.emulator
        .set_device(TOKEN, DeviceState::Expired { at_ms: at });
    let a = client.push(&refs(&alert_headers(&b))).await;
    assert_eq!(
        (a.status, a.reason.as_deref(), a.timestamp),
        (410, Some("ExpiredToken"), Some(at))
    );

    s.emulator.set_device(TOKEN, DeviceState::Bad);
    let a = client.push(&refs(&alert_headers(&b))).await;
    assert_eq!(
        (a.status, a.reason.as_deref()),
        (400, Some("BadDeviceToken"))
    );

    s.emulator.set_device(
        TOKEN,
        DeviceState::Valid {
            topic: Some("com.example.other".into()),
        },
    );
    let a = client.push(&refs(&alert_headers(&b))).await;
    assert_eq!(
        (a.status, a.reason.as_deref()),
        (400, Some("DeviceTokenNotForTopic"))
    );

    s.emulator.set_device(
        TOKEN,
        DeviceState::Valid {
            topic: Some(BUNDLE.into()),
        },
    );
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);

    s.emulator
        .set_unknown_token_policy(UnknownTokenPolicy::Unregistered);
    let a = push_to(&client, &b, OTHER).await;
    assert_eq!((a.status, a.timestamp), (410, Some(START_SECS * 1000)));
    s.emulator.set_unknown_token_policy(UnknownTokenPolicy::Bad);
    assert_eq!(
        push_to(&client, &b, OTHER).await.reason.as_deref(),
        Some("BadDeviceToken")
    );
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn too_many_requests_per_device() {
    let s = setup(|c| {
        c.device_rate_limit = Some(DeviceRateLimit {
            max_pushes: 2,
            window_ms: 60_000,
        })
    })
    .await;
    let client = Client::connect(&s.emulator).await;
    let b = bearer(&s);
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);
    let a = client.push(&refs(&alert_headers(&b))).await;
    assert_eq!(
        (a.status, a.reason.as_deref()),
        (429, Some("TooManyRequests"))
    );
    assert_eq!(
        push_to(&client, &b, OTHER).await.status,
        200,
        "other devices are unaffected"
    );
    s.clock.advance(Duration::from_secs(61));
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn error_rates_and_bursts() {
    let s = setup(|c| {
        c.faults = FaultProfile {
            service_unavailable_rate: 1.0,
            ..FaultProfile::default()
        }
    })
    .await;
    let client = Client::connect(&s.emulator).await;
    let b = bearer(&s);
    for _ in 0..3 {
        let a = client.push(&refs(&alert_headers(&b))).await;
        assert_eq!(
            (a.status, a.reason.as_deref()),
            (503, Some("ServiceUnavailable"))
        );
    }
    assert_eq!(s.emulator.accepted_count(), 0);

    s.emulator
        .set_faults(FaultProfile {
            bursts: vec![Burst {
                reason: "Shutdown".parse().unwrap(),
                requests: Some(2),
                duration_ms: None,
            }],
            ..FaultProfile::default()
        })
        .unwrap();
    for _ in 0..2 {
        let a = client.push(&refs(&alert_headers(&b))).await;
        assert_eq!((a.status, a.reason.as_deref()), (503, Some("Shutdown")));
    }
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);

    // A timed burst ends by the emulator's clock.
    s.emulator
        .set_faults(FaultProfile {
            bursts: vec![Burst {
                reason: "InternalServerError".parse().unwrap(),
                requests: None,
                duration_ms: Some(10_000),
            }],
            ..FaultProfile::default()
        })
        .unwrap();
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 500);
    s.clock.advance(Duration::from_secs(11));
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);
    assert_eq!(s.emulator.stats().answers_by_status.get(&503), Some(&5));
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn refused_streams_and_dropped_connections() {
    let s = setup(|c| {
        c.faults = FaultProfile {
            refused_stream_rate: 1.0,
            ..FaultProfile::default()
        }
    })
    .await;
    let client = Client::connect(&s.emulator).await;
    let b = bearer(&s);
    let err = client
        .request(
            "POST",
            &format!("/3/device/{TOKEN}"),
            &refs(&alert_headers(&b)),
            PAYLOAD,
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(h2::Reason::REFUSED_STREAM), "{err:?}");
    assert_eq!(s.emulator.stats().refused_streams, 1);
    assert_eq!(s.emulator.accepted_count(), 0);

    s.emulator
        .set_faults(FaultProfile {
            connection_drop_rate: 1.0,
            ..FaultProfile::default()
        })
        .unwrap();
    let dropped = client
        .request(
            "POST",
            &format!("/3/device/{TOKEN}"),
            &refs(&alert_headers(&b)),
            PAYLOAD,
        )
        .await;
    assert!(dropped.is_err(), "{dropped:?}");
    assert_eq!(s.emulator.stats().dropped_connections, 1);
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn goaway_after_n_streams_and_idle_timeout() {
    let s = setup(|c| {
        c.faults = FaultProfile {
            goaway_after_streams: Some(2),
            ..FaultProfile::default()
        }
    })
    .await;
    let b = bearer(&s);
    let client = Client::connect(&s.emulator).await;
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = client
        .request(
            "POST",
            &format!("/3/device/{TOKEN}"),
            &refs(&alert_headers(&b)),
            PAYLOAD,
        )
        .await;
    assert!(after.is_err(), "no new streams after GOAWAY: {after:?}");
    assert_eq!(s.emulator.stats().goaways, 1);
    let fresh = Client::connect(&s.emulator).await;
    assert_eq!(fresh.push(&refs(&alert_headers(&b))).await.status, 200);

    s.emulator
        .set_faults(FaultProfile {
            idle_timeout_ms: Some(50),
            ..FaultProfile::default()
        })
        .unwrap();
    let idle = Client::connect(&s.emulator).await;
    assert_eq!(idle.push(&refs(&alert_headers(&b))).await.status, 200);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let a = idle.push(&refs(&alert_headers(&b))).await;
    assert_eq!((a.status, a.reason.as_deref()), (400, Some("IdleTimeout")));
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn stream_limit_is_advertised_tracked_and_changeable() {
    let s = setup(|c| {
        c.max_concurrent_streams = 2;
        c.faults = FaultProfile {
            latency: Latency::Fixed { ms: 150 },
            ..FaultProfile::default()
        };
    })
    .await;
    let b = bearer(&s);
    let client = std::sync::Arc::new(Client::connect(&s.emulator).await);
    // Confirm the token first (one stream), then fire six at once.
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);
    assert_eq!(client.max_streams.load(Ordering::SeqCst), 2);
    let mut handles = Vec::new();
    for _ in 0..6 {
        let client = client.clone();
        let b = b.clone();
        handles.push(tokio::spawn(async move {
            client.push(&refs(&alert_headers(&b))).await.status
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), 200);
    }
    let stats = s.emulator.stats();
    let conn = &stats.connections[0];
    assert_eq!(conn.max_concurrent_streams, 2);
    assert_eq!(conn.max_concurrent_seen, 2, "{conn:?}");
    assert_eq!(conn.streams_opened, 7);
    assert_eq!(conn.stream_limit_violations, 0);

    // A new limit: live connections get GOAWAY, new ones see the new value.
    s.emulator.set_max_concurrent_streams(5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = s.emulator.stats();
    assert!(!stats.connections[0].open, "{stats:?}");
    let fresh = Client::connect(&s.emulator).await;
    assert_eq!(fresh.push(&refs(&alert_headers(&b))).await.status, 200);
    assert_eq!(fresh.max_streams.load(Ordering::SeqCst), 5);
    s.emulator.shutdown().await;
}

/// Minimal HTTP/1.1 client for the admin endpoint.
async fn admin(s: &Setup, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.emulator.admin_addr().unwrap())
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn admin_endpoint() {
    let s = setup(|_| {}).await;
    let client = Client::connect(&s.emulator).await;
    let b = bearer(&s);
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);

    let (status, body) = admin(&s, "GET", "/stats", "").await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["accepted_total"], 1);

    let (status, body) = admin(&s, "GET", &format!("/record?token={TOKEN}"), "").await;
    assert_eq!(status, 200);
    let record: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(record.as_array().unwrap().len(), 1);
    let (_, body) = admin(&s, "GET", &format!("/record?token={OTHER}"), "").await;
    assert_eq!(body, "[]");

    let faults = r#"{"service_unavailable_rate": 1.0, "latency": {"kind": "fixed", "ms": 1}}"#;
    assert_eq!(admin(&s, "PUT", "/faults", faults).await.0, 204);
    assert_eq!(s.emulator.faults().service_unavailable_rate, 1.0);
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 503);
    let (_, body) = admin(&s, "GET", "/faults", "").await;
    assert!(body.contains("\"service_unavailable_rate\":1.0"), "{body}");
    assert_eq!(admin(&s, "PUT", "/faults", "{}").await.0, 204);

    let devices = format!(r#"[{{"token": "{TOKEN}", "state": "unregistered", "at_ms": 1234}}]"#);
    assert_eq!(admin(&s, "POST", "/devices", &devices).await.0, 204);
    let a = client.push(&refs(&alert_headers(&b))).await;
    assert_eq!((a.status, a.timestamp), (410, Some(1234)));

    assert_eq!(
        admin(&s, "PUT", "/settings", r#"{"max_concurrent_streams": 7}"#)
            .await
            .0,
        204
    );
    assert_eq!(s.emulator.max_concurrent_streams(), 7);
    assert_eq!(admin(&s, "DELETE", "/record", "").await.0, 204);
    assert_eq!(s.emulator.accepted_count(), 0);
    assert_eq!(admin(&s, "PUT", "/faults", "not json").await.0 / 100, 4);
    let bad_rate = r#"{"refused_stream_rate": 1.5}"#;
    assert_eq!(admin(&s, "PUT", "/faults", bad_rate).await.0, 422);
    s.emulator.shutdown().await;
}

/// One run: a fixed request sequence against a seeded, manually clocked emulator.
async fn run(seed: u64) -> (Vec<String>, Vec<herald_sim::emulator::AcceptedNotification>) {
    let s = setup(|c: &mut EmulatorConfig| {
        c.seed = seed;
        c.tls.mode = herald_sim::emulator::TlsMode::Plaintext;
        c.faults = FaultProfile {
            service_unavailable_rate: 0.2,
            too_many_requests_rate: 0.1,
            refused_stream_rate: 0.2,
            latency: Latency::Uniform {
                min_ms: 0,
                max_ms: 3,
            },
            ..FaultProfile::default()
        };
    })
    .await;
    let b = bearer(&s);
    let client = Client::connect(&s.emulator).await;
    let mut answers = Vec::new();
    for i in 0..40 {
        s.clock.advance(Duration::from_millis(250));
        let token = if i % 3 == 0 { OTHER } else { TOKEN };
        let line = match client
            .request(
                "POST",
                &format!("/3/device/{token}"),
                &refs(&alert_headers(&b)),
                PAYLOAD,
            )
            .await
        {
            Ok(a) => format!("{} {:?} {:?}", a.status, a.reason, a.apns_id),
            Err(e) => format!("reset {:?}", e.reason()),
        };
        answers.push(line);
    }
    let record = s.emulator.accepted();
    s.emulator.shutdown().await;
    (answers, record)
}

#[tokio::test]
async fn same_seed_same_answers_and_record() {
    let (a1, r1) = run(42).await;
    let (a2, r2) = run(42).await;
    assert_eq!(a1, a2);
    assert_eq!(r1, r2);
    assert!(a1.iter().any(|l| l.starts_with("200")));
    assert!(a1.iter().any(|l| l.starts_with("503")));
    assert!(a1.iter().any(|l| l.starts_with("reset")));
    let (a3, _) = run(43).await;
    assert_ne!(a1, a3, "another seed, other answers");
}

#[tokio::test]
async fn latency_and_periodic_goaway() {
    let s = setup(|c| {
        c.faults = FaultProfile {
            latency: Latency::Fixed { ms: 100 },
            goaway_every_ms: Some(300),
            ..FaultProfile::default()
        }
    })
    .await;
    let b = bearer(&s);
    let client = Client::connect(&s.emulator).await;
    let started = tokio::time::Instant::now();
    assert_eq!(client.push(&refs(&alert_headers(&b))).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.emulator.stats().goaways, 1);
    let after = client
        .request(
            "POST",
            &format!("/3/device/{TOKEN}"),
            &refs(&alert_headers(&b)),
            PAYLOAD,
        )
        .await;
    assert!(after.is_err(), "{after:?}");
    s.emulator.shutdown().await;
}
