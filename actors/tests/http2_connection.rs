//! The APNs HTTP/2 connection against a real h2 server over TLS on 127.0.0.1.

mod support;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use herald_actors::apns::http2::{
    ApnsConnection, CloseReason, ConnectError, ConnectionConfig, ConnectionState, SendError,
    connect,
};
use herald_actors::apns::{
    CertificateAuth, ConnectionAuth, Delivery, Reason, ResponseError, error_body,
};
use herald_actors::seams::{ManualClock, TcpConnector, Timestamp};
use support::*;
use tokio::time::Instant;

/// Fail the test instead of hanging it.
async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test step timed out")
}

/// Wait (bounded) until `condition` holds.
async fn wait_until(mut condition: impl FnMut() -> bool) {
    within(5, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

async fn open_with(config: ConnectionConfig, auth: impl ConnectionAuth) -> ApnsConnection {
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_700_000_000)));
    let (connection, driver) = within(5, connect(config, &TcpConnector, Box::new(auth), clock))
        .await
        .expect("connect");
    tokio::spawn(driver.run());
    connection
}

async fn open(config: ConnectionConfig) -> ApnsConnection {
    open_with(config, CertificateAuth::new("TEAM123456")).await
}

/// Fire `n` concurrent sends with apns-ids `r0..r{n-1}`.
async fn send_all(
    connection: &ApnsConnection,
    n: usize,
) -> Vec<(String, Result<Delivery, SendError>)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let connection = connection.clone();
            tokio::spawn(async move {
                let id = format!("r{i}");
                let result = connection.send(&request(&id)).await;
                (id, result)
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(within(10, task).await.unwrap());
    }
    out
}

fn assert_no_duplicates(ids: &[String]) {
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a request was processed twice: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_200_with_apns_id() {
    let server = TestServer::start(ServerOptions::new(|_| Reply::ok())).await;
    let connection = open_with(server.config(), FakeAuth::new(true)).await;
    let delivery = within(
        5,
        connection.send(&request("EABEAE76-A4F8-4B6D-9A8B-5C1A0D4E2F10")),
    )
    .await
    .unwrap();
    assert_eq!(
        delivery,
        Delivery::Accepted {
            apns_id: Some("EABEAE76-A4F8-4B6D-9A8B-5C1A0D4E2F10".into())
        }
    );
    let seen = server.stats.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.path, request("x").path);
    assert_eq!(seen.headers["authorization"], "bearer fixed.test.token");
    assert_eq!(seen.headers["apns-topic"], "com.example.app");
    assert_eq!(seen.body, br#"{"aps":{"alert":"hi"}}"#);
    assert!(matches!(connection.state(), ConnectionState::Ready(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_410_is_parsed_with_timestamp() {
    let server = TestServer::start(ServerOptions::new(|_| Reply::Answer {
        status: 410,
        body: error_body(
            Reason::Unregistered,
            Some(Timestamp::from_millis(1_700_000_000_123)),
        ),
        delay: Duration::ZERO,
    }))
    .await;
    let connection = open(server.config()).await;
    match within(5, connection.send(&request("a"))).await.unwrap() {
        Delivery::Rejected(r) => {
            assert_eq!(r.status, 410);
            assert_eq!(r.reason, Reason::Unregistered);
            assert_eq!(r.timestamp, Some(Timestamp::from_millis(1_700_000_000_123)));
            assert_eq!(r.apns_id.as_deref(), Some("a"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_from_server_settings_is_respected() {
    let mut options = ServerOptions::new(|_| Reply::ok_after(Duration::from_millis(20)));
    options.max_concurrent_streams = Some(3);
    let server = TestServer::start(options).await;
    let connection = open(server.config()).await;
    let results = send_all(&connection, 30).await;
    for (id, result) in &results {
        assert!(result.is_ok(), "{id}: {result:?}");
    }
    let max = server.stats.max_concurrent.load(Ordering::SeqCst);
    assert!(max <= 3, "server saw {max} concurrent streams");
    assert_eq!(connection.stream_limit(), 3);
    assert_eq!(connection.in_flight(), 0);
    assert_no_duplicates(&server.stats.processed_ids());
    assert_eq!(server.stats.processed_ids().len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_streams_max_caps_the_server_limit() {
    let server = TestServer::start(ServerOptions::new(|_| {
        Reply::ok_after(Duration::from_millis(20))
    }))
    .await;
    let mut config = server.config();
    config.streams_max = 2;
    let connection = open(config).await;
    let results = send_all(&connection, 12).await;
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    assert!(server.stats.max_concurrent.load(Ordering::SeqCst) <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_until_credentials_are_confirmed() {
    let server = TestServer::start(ServerOptions::new(|seen| {
        let delay = if seen.index == 0 { 150 } else { 60 };
        Reply::ok_after(Duration::from_millis(delay))
    }))
    .await;
    let auth = FakeAuth::new(false);
    let connection = open_with(server.config(), auth.clone()).await;
    assert_eq!(connection.stream_limit(), 1);
    let results = send_all(&connection, 10).await;
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(
        server
            .stats
            .max_concurrent_before_first_answer
            .load(Ordering::SeqCst),
        1,
        "more than one stream before the credentials were confirmed"
    );
    assert!(
        server.stats.max_concurrent.load(Ordering::SeqCst) > 1,
        "once confirmed, streams should run concurrently"
    );
    assert!(auth.confirmed.load(Ordering::SeqCst));
    assert!(matches!(
        connection.state(),
        ConnectionState::Ready(herald_actors::apns::http2::Confirmation::Confirmed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rejection_is_reported_to_auth() {
    let server = TestServer::start(ServerOptions::new(|_| Reply::Answer {
        status: 403,
        body: error_body(Reason::ExpiredProviderToken, None),
        delay: Duration::ZERO,
    }))
    .await;
    let auth = FakeAuth::new(false);
    let connection = open_with(server.config(), auth.clone()).await;
    let delivery = within(5, connection.send(&request("a"))).await.unwrap();
    assert!(matches!(delivery, Delivery::Rejected(r) if r.reason == Reason::ExpiredProviderToken));
    assert_eq!(
        *auth.rejections.lock().unwrap(),
        vec![Reason::ExpiredProviderToken]
    );
    assert_eq!(auth.confirms.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_resent_on_the_same_connection() {
    // The first two streams are refused; no request can be refused more than twice.
    let server = TestServer::start(ServerOptions::new(|seen| {
        if seen.index < 2 {
            Reply::Refuse
        } else {
            Reply::ok_after(Duration::from_millis(10))
        }
    }))
    .await;
    let connection = open(server.config()).await;
    let results = send_all(&connection, 8).await;
    for (id, result) in &results {
        assert!(result.is_ok(), "{id}: {result:?}");
    }
    let processed = server.stats.processed_ids();
    assert_no_duplicates(&processed);
    assert_eq!(processed.len(), 8);
    assert_eq!(server.stats.accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_every_time_gives_up_without_processing() {
    let server = TestServer::start(ServerOptions::new(|_| Reply::Refuse)).await;
    let connection = open(server.config()).await;
    let error = within(5, connection.send(&request("a"))).await.unwrap_err();
    assert_eq!(error, SendError::Refused { attempts: 3 });
    assert!(!error.was_sent());
    assert!(server.stats.processed_ids().is_empty());
    assert_eq!(server.stats.accepted.load(Ordering::SeqCst), 3);
}

/// Every request is answered once, or reported not processed (and indeed was not).
fn check_go_away_outcomes(
    results: &[(String, Result<Delivery, SendError>)],
    processed: &[String],
    strict: bool,
) -> (usize, usize, usize) {
    assert_no_duplicates(processed);
    let processed: HashSet<_> = processed.iter().cloned().collect();
    let mut answered = 0;
    let mut unprocessed = 0;
    let mut maybe = 0;
    for (id, result) in results {
        match result {
            Ok(_) => {
                answered += 1;
                assert!(processed.contains(id), "{id} answered but not processed");
            }
            Err(e) if !e.was_sent() => {
                unprocessed += 1;
                assert!(
                    !processed.contains(id),
                    "{id} reported not processed ({e}) but the server processed it"
                );
            }
            Err(e) => {
                maybe += 1;
                assert!(!strict, "{id}: {e} (may have been processed)");
            }
        }
    }
    assert!(unprocessed > 0, "nothing was cut off by GOAWAY");
    (answered, unprocessed, maybe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_go_away_mid_flight() {
    let mut options = ServerOptions::new(|_| Reply::ok_after(Duration::from_millis(30)));
    options.max_concurrent_streams = Some(10);
    options.script = Script::GracefulGoAwayAfter(5);
    let server = TestServer::start(options).await;
    let connection = open(server.config()).await;
    let results = send_all(&connection, 30).await;
    let (answered, _, _) = check_go_away_outcomes(&results, &server.stats.processed_ids(), true);
    assert!(
        answered >= 5,
        "streams below the last-stream-id finish normally"
    );

    let error = within(5, connection.send(&request("late")))
        .await
        .unwrap_err();
    assert!(!error.was_sent(), "{error}");
    let reason = within(5, connection.closed()).await;
    assert!(
        matches!(reason, CloseReason::GoAway(ref info) if info.error_code == 0),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_go_away_mid_flight() {
    let mut options = ServerOptions::new(|_| Reply::ok_after(Duration::from_millis(30)));
    options.max_concurrent_streams = Some(10);
    options.script = Script::AbruptGoAwayAfter(5);
    let server = TestServer::start(options).await;
    let connection = open(server.config()).await;
    // Warm up so the server's SETTINGS (10 streams) are in force.
    within(5, connection.send(&request("warm"))).await.unwrap();
    let results = send_all(&connection, 30).await;
    // Abrupt: streams the server took may die unanswered (reported as maybe processed);
    // whatever is reported as not processed must not have been.
    let processed = server.stats.processed_ids();
    let (_, unprocessed, maybe) = check_go_away_outcomes(&results, &processed, false);
    // The server's application took 4 of the 30 before shutting down; its h2 layer may
    // have received (and declared in GOAWAY) a few more. Everything else was cut off.
    assert!(maybe >= processed.len() - 1, "{results:?}");
    assert_eq!(unprocessed + maybe, 30);
    let reason = within(5, connection.closed()).await;
    assert!(matches!(reason, CloseReason::GoAway(_)), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_away_debug_data_reason_is_reported() {
    let (addr, _server) = raw_server(|mut tcp| async move {
        write(&mut tcp, &frame(FRAME_SETTINGS, 0, 0, &[])).await;
        write(&mut tcp, &go_away(0, 0, br#"{"reason":"Shutdown"}"#)).await;
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut sink).await;
    })
    .await;
    let mut config = ConnectionConfig::new("127.0.0.1", addr.port(), None);
    short_bounds(&mut config);
    let connection = open(config).await;
    let reason = within(5, connection.closed()).await;
    match reason {
        CloseReason::GoAway(info) => {
            assert_eq!(info.reason.as_deref(), Some("Shutdown"));
            assert_eq!(info.apns_reason(), Some(Reason::Shutdown));
            assert_eq!(info.last_stream_id, 0);
        }
        other => panic!("{other}"),
    }
    let error = within(5, connection.send(&request("a"))).await.unwrap_err();
    assert!(!error.was_sent(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_is_found_by_ping() {
    let mut options = ServerOptions::new(|_| Reply::ok());
    options.script = Script::DeadAfterHandshake;
    let server = TestServer::start(options).await;
    let mut config = server.config();
    config.ping_interval = Duration::from_millis(200);
    config.ping_timeout = Duration::from_millis(200);
    config.request_timeout = Duration::from_secs(10);
    let start = Instant::now();
    let connection = open(config).await;
    let in_flight = {
        let connection = connection.clone();
        tokio::spawn(async move { connection.send(&request("a")).await })
    };
    let reason = within(5, connection.closed()).await;
    let elapsed = start.elapsed();
    assert_eq!(reason, CloseReason::PingTimeout);
    assert!(elapsed >= Duration::from_millis(390), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let error = within(5, in_flight).await.unwrap().unwrap_err();
    assert!(matches!(error, SendError::ConnectionLost(_)), "{error}");
    assert!(error.was_sent());
    assert_eq!(
        connection.state(),
        ConnectionState::Closed(CloseReason::PingTimeout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_peer_survives_pings() {
    let server = TestServer::start(ServerOptions::new(|_| Reply::ok())).await;
    let mut config = server.config();
    config.ping_interval = Duration::from_millis(50);
    config.ping_timeout = Duration::from_millis(500);
    let connection = open(config).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(connection.state(), ConnectionState::Ready(_)));
    within(5, connection.send(&request("a"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_times_out_when_tls_never_completes() {
    let mut options = ServerOptions::new(|_| Reply::ok());
    options.script = Script::NeverHandshake;
    let server = TestServer::start(options).await;
    let mut config = server.config();
    config.connect_timeout = Duration::from_millis(300);
    let start = Instant::now();
    let clock = Arc::new(ManualClock::default());
    let result = within(
        5,
        connect(
            config,
            &TcpConnector,
            Box::new(CertificateAuth::new("T")),
            clock,
        ),
    )
    .await;
    assert_eq!(
        result.err(),
        Some(ConnectError::Timeout {
            after: Duration::from_millis(300)
        })
    );
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_h2_alpn_is_a_typed_error() {
    let mut options = ServerOptions::new(|_| Reply::ok());
    options.alpn_h2 = false;
    let server = TestServer::start(options).await;
    let clock = Arc::new(ManualClock::default());
    let result = within(
        5,
        connect(
            server.config(),
            &TcpConnector,
            Box::new(CertificateAuth::new("T")),
            clock,
        ),
    )
    .await;
    assert_eq!(
        result.err(),
        Some(ConnectError::AlpnNotH2 { negotiated: None })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_leaves_the_connection_usable() {
    let server = TestServer::start(ServerOptions::new(|seen| {
        if seen.index == 0 {
            Reply::Hang
        } else {
            Reply::ok()
        }
    }))
    .await;
    let mut config = server.config();
    config.request_timeout = Duration::from_millis(300);
    let connection = open(config).await;
    let error = within(5, connection.send(&request("a"))).await.unwrap_err();
    assert_eq!(
        error,
        SendError::Timeout {
            after: Duration::from_millis(300)
        }
    );
    assert!(error.was_sent());
    assert_eq!(connection.in_flight(), 0);
    within(5, connection.send(&request("b"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_wait_is_bounded() {
    let mut options = ServerOptions::new(|_| Reply::Hang);
    options.max_concurrent_streams = Some(1);
    let server = TestServer::start(options).await;
    let mut config = server.config();
    config.stream_wait_max = Duration::from_millis(200);
    let connection = open(config).await;
    let hung = {
        let connection = connection.clone();
        tokio::spawn(async move { connection.send(&request("a")).await })
    };
    wait_until(|| connection.in_flight() == 1).await;
    let error = within(5, connection.send(&request("b"))).await.unwrap_err();
    assert_eq!(
        error,
        SendError::StreamWaitTimeout {
            waited: Duration::from_millis(200)
        }
    );
    assert!(!error.was_sent());
    hung.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_typed_errors() {
    let server = TestServer::start(ServerOptions::new(|seen| Reply::Answer {
        status: 400,
        body: if seen.index == 0 {
            Bytes::from_static(b"not json")
        } else {
            Bytes::from(vec![b' '; 20_000])
        },
        delay: Duration::ZERO,
    }))
    .await;
    let connection = open(server.config()).await;
    let error = within(5, connection.send(&request("a"))).await.unwrap_err();
    assert!(
        matches!(
            error,
            SendError::MalformedResponse(ResponseError::MalformedBody { status: 400, .. })
        ),
        "{error}"
    );
    let error = within(5, connection.send(&request("b"))).await.unwrap_err();
    assert!(
        matches!(&error, SendError::MalformedResponse(ResponseError::MalformedBody { detail, .. }) if detail.contains("exceeds")),
        "{error}"
    );
    assert!(matches!(connection.state(), ConnectionState::Ready(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_closes_with_protocol_error() {
    let (addr, _server) = raw_server(|mut tcp| async move {
        write(&mut tcp, &frame(FRAME_SETTINGS, 0, 0, &[])).await;
        // Wait for the request, then send a SETTINGS frame of an impossible length.
        while let Ok(f) = read_frame(&mut tcp).await {
            if f.kind == FRAME_HEADERS {
                write(&mut tcp, &frame(FRAME_SETTINGS, 0, 0, &[0, 3, 0])).await;
            }
        }
    })
    .await;
    let mut config = ConnectionConfig::new("127.0.0.1", addr.port(), None);
    short_bounds(&mut config);
    let connection = open(config).await;
    let error = within(5, connection.send(&request("a"))).await.unwrap_err();
    assert!(matches!(error, SendError::ConnectionLost(_)), "{error}");
    assert!(error.was_sent());
    let reason = within(5, connection.closed()).await;
    assert!(matches!(reason, CloseReason::Protocol(_)), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_round_trip() {
    let mut options = ServerOptions::new(|_| Reply::ok());
    options.tls = false;
    let server = TestServer::start(options).await;
    let connection = open(server.plain_config()).await;
    let delivery = within(5, connection.send(&request("p"))).await.unwrap();
    assert_eq!(
        delivery,
        Delivery::Accepted {
            apns_id: Some("p".into())
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_close_finishes_in_flight_requests() {
    let server = TestServer::start(ServerOptions::new(|_| {
        Reply::ok_after(Duration::from_millis(300))
    }))
    .await;
    let connection = open(server.config()).await;
    within(5, connection.send(&request("warm"))).await.unwrap();
    let sends = {
        let connection = connection.clone();
        tokio::spawn(async move { send_all(&connection, 5).await })
    };
    wait_until(|| server.stats.current.load(Ordering::SeqCst) == 5).await;
    connection.close();
    assert!(matches!(connection.state(), ConnectionState::Draining(_)));
    let error = within(5, connection.send(&request("late")))
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::Closed(_)), "{error}");
    for (id, result) in within(5, sends).await.unwrap() {
        assert!(result.is_ok(), "{id}: {result:?}");
    }
    assert_eq!(within(5, connection.closed()).await, CloseReason::Requested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lowering_its_stream_limit_is_followed() {
    // Raw server: 5 streams at first; after 10 answers, SETTINGS lowers it to 2. Every
    // stream opened after the client acknowledged the change must find at most 2 open.
    let violations = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let max_after = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (addr, _server) = {
        let violations = violations.clone();
        let max_after = max_after.clone();
        raw_server(move |tcp| {
            let violations = violations.clone();
            let max_after = max_after.clone();
            async move {
                let (mut read, write_half) = tcp.into_split();
                let write_half = Arc::new(tokio::sync::Mutex::new(write_half));
                let send = |bytes: Vec<u8>| {
                    let write_half = write_half.clone();
                    async move {
                        let _ = tokio::io::AsyncWriteExt::write_all(
                            &mut *write_half.lock().await,
                            &bytes,
                        )
                        .await;
                    }
                };
                send(settings_max_streams(5)).await;
                let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let mut lowered = false;
                let mut acked = false;
                while let Ok(f) = read_frame(&mut read).await {
                    match f.kind {
                        FRAME_SETTINGS if f.flags & FLAG_ACK == 0 => {
                            send(frame(FRAME_SETTINGS, FLAG_ACK, 0, &[])).await;
                        }
                        FRAME_SETTINGS if lowered => acked = true,
                        FRAME_PING if f.flags & FLAG_ACK == 0 => {
                            send(frame(FRAME_PING, FLAG_ACK, 0, &f.payload)).await;
                        }
                        FRAME_HEADERS => {
                            let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
                            if acked {
                                max_after.fetch_max(now_open, Ordering::SeqCst);
                                if now_open > 2 {
                                    violations.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            let (open, answered) = (open.clone(), answered.clone());
                            let answer = send(ok_headers(f.stream));
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                open.fetch_sub(1, Ordering::SeqCst);
                                answered.fetch_add(1, Ordering::SeqCst);
                                answer.await;
                            });
                        }
                        _ => {}
                    }
                    if !lowered && answered.load(Ordering::SeqCst) >= 10 {
                        lowered = true;
                        send(settings_max_streams(2)).await;
                    }
                }
            }
        })
        .await
    };
    let mut config = ConnectionConfig::new("127.0.0.1", addr.port(), None);
    short_bounds(&mut config);
    let connection = open(config).await;
    let first = send_all(&connection, 20).await;
    assert!(first.iter().all(|(_, r)| r.is_ok()), "{first:?}");
    let second = send_all(&connection, 20).await;
    assert!(second.iter().all(|(_, r)| r.is_ok()), "{second:?}");
    assert_eq!(connection.stream_limit(), 2);
    assert_eq!(violations.load(Ordering::SeqCst), 0);
    assert!(max_after.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_closes_the_connection() {
    let server = TestServer::start(ServerOptions::new(|_| Reply::ok())).await;
    let clock = Arc::new(ManualClock::default());
    let (connection, driver) = within(
        5,
        connect(
            server.config(),
            &TcpConnector,
            Box::new(CertificateAuth::new("T")),
            clock,
        ),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(driver.run());
    let other = connection.clone();
    within(5, other.send(&request("a"))).await.unwrap();
    drop(connection);
    assert!(matches!(other.state(), ConnectionState::Ready(_)));
    drop(other);
    assert_eq!(within(5, driver).await.unwrap(), CloseReason::Requested);
}

/// Paused time over in-memory links (the simulator's setting): the default 60 s PING
/// interval and 10 s timeout elapse in virtual time.
#[tokio::test(start_paused = true)]
async fn ping_keepalive_runs_on_paused_time() {
    let mut options = ServerOptions::new(|_| Reply::ok());
    options.tls = false;
    let live = DuplexConnector::new(options);
    let clock = Arc::new(ManualClock::default());
    let config = ConnectionConfig::new("sim.apns", 443, None);
    let (connection, driver) = connect(
        config.clone(),
        &live,
        Box::new(CertificateAuth::new("T")),
        clock.clone(),
    )
    .await
    .unwrap();
    tokio::spawn(driver.run());
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(matches!(connection.state(), ConnectionState::Ready(_)));
    connection.send(&request("a")).await.unwrap();

    let mut options = ServerOptions::new(|_| Reply::ok());
    options.tls = false;
    options.script = Script::DeadAfterHandshake;
    let dead = DuplexConnector::new(options);
    let start = Instant::now();
    let (connection, driver) = connect(config, &dead, Box::new(CertificateAuth::new("T")), clock)
        .await
        .unwrap();
    tokio::spawn(driver.run());
    assert_eq!(connection.closed().await, CloseReason::PingTimeout);
    let elapsed = start.elapsed();
    let expected = herald_actors::limits::PING_INTERVAL + herald_actors::limits::PING_TIMEOUT;
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_secs(1),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_above_go_away_last_stream_id_are_reported_unprocessed() {
    // Raw server: answer the warm-up (stream 1), take three more streams (3, 5, 7), then
    // GOAWAY(last = 3) and answer stream 3 only.
    let (addr, _server) = raw_server(|mut tcp| async move {
        write(&mut tcp, &settings_max_streams(10)).await;
        let mut streams = Vec::new();
        while let Ok(f) = read_frame(&mut tcp).await {
            match f.kind {
                FRAME_SETTINGS if f.flags & FLAG_ACK == 0 => {
                    write(&mut tcp, &frame(FRAME_SETTINGS, FLAG_ACK, 0, &[])).await;
                }
                FRAME_HEADERS if f.stream == 1 => write(&mut tcp, &ok_headers(1)).await,
                FRAME_HEADERS => {
                    streams.push(f.stream);
                    if streams.len() == 3 {
                        write(&mut tcp, &go_away(3, 0, br#"{"reason":"Shutdown"}"#)).await;
                        write(&mut tcp, &ok_headers(3)).await;
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    let mut config = ConnectionConfig::new("127.0.0.1", addr.port(), None);
    short_bounds(&mut config);
    let connection = open(config).await;
    within(5, connection.send(&request("warm"))).await.unwrap();
    wait_until(|| connection.stream_limit() == 10).await;
    let results = send_all(&connection, 3).await;
    let answered = results.iter().filter(|(_, r)| r.is_ok()).count();
    let cut_off: Vec<_> = results
        .iter()
        .filter_map(|(_, r)| match r {
            Err(SendError::GoAway(info)) => Some(info.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(answered, 1, "{results:?}");
    assert_eq!(cut_off.len(), 2, "{results:?}");
    for info in &cut_off {
        assert_eq!(info.last_stream_id, 3);
        assert_eq!(info.apns_reason(), Some(Reason::Shutdown));
        assert!(!SendError::GoAway(info.clone()).was_sent());
    }
    let reason = within(5, connection.closed()).await;
    assert!(
        matches!(reason, CloseReason::GoAway(ref info) if info.last_stream_id == 3),
        "{reason}"
    );
}
