//! Wire-level stream accounting (a raw HTTP/2 client that ignores the advertised limit) and
//! serving a connection over a caller's own byte stream.

mod emulator_support;

use std::time::Duration;

use emulator_support::*;
use herald_sim::emulator::{EmulatorConfig, EmulatorCore, TeamConfig, TlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: POST, https, :path (literal, indexed name 4), :authority localhost.
fn request_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x87, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    block
}

/// Connect, exchange SETTINGS (acknowledging the server's), return the socket.
async fn raw_connect(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    tcp.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 9 && buf[3] == 0x4 && buf[4] == 0 {
            break;
        }
    }
    tcp.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap();
    tcp
}

/// Read frames until one of `kind` arrives; return its payload.
async fn read_until(tcp: &mut tokio::net::TcpStream, kind: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..9 + len).collect();
            if frame[3] == kind {
                return frame[9..].to_vec();
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before frame type {kind}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn goaway_carries_a_json_reason() {
    let s = setup(|c| {
        c.tls.mode = TlsMode::Plaintext;
        c.faults.goaway_after_streams = Some(1);
    })
    .await;
    let mut tcp = raw_connect(s.emulator.addr()).await;
    let path = format!("/3/device/{TOKEN}");
    // END_HEADERS | END_STREAM: an empty request (answered 403), which triggers the GOAWAY.
    tcp.write_all(&frame(0x1, 0x5, 1, &request_headers(&path)))
        .await
        .unwrap();
    let payload = read_until(&mut tcp, 0x7).await;
    assert_eq!(&payload[4..8], &[0, 0, 0, 0], "NO_ERROR");
    assert_eq!(&payload[8..], br#"{"reason":"Shutdown"}"#);
    drop(tcp); // (h2's graceful close waits for a PING answer a raw client never sends)
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn streams_beyond_the_limit_are_counted() {
    let s = setup(|c| {
        c.tls.mode = TlsMode::Plaintext;
        c.max_concurrent_streams = 2;
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(s.emulator.addr())
        .await
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    tcp.write_all(&out).await.unwrap();
    // Wait for the server's SETTINGS, then acknowledge them.
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 9 && buf[3] == 0x4 && buf[4] == 0 {
            break;
        }
    }
    tcp.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Four streams, none finished (no END_STREAM): two over the limit.
    let path = format!("/3/device/{TOKEN}");
    for id in [1u32, 3, 5, 7] {
        tcp.write_all(&frame(0x1, 0x4, id, &request_headers(&path)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = s.emulator.stats();
    let conn = &stats.connections[0];
    assert_eq!(conn.max_concurrent_streams, 2);
    assert_eq!(conn.streams_opened, 4, "{conn:?}");
    assert_eq!(conn.streams_accepted, 2, "{conn:?}");
    assert_eq!(conn.stream_limit_violations, 2, "{conn:?}");
    assert!(conn.max_concurrent_seen >= 3, "{conn:?}");
    drop(tcp);
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn serve_connection_over_an_in_memory_stream() {
    let (team, key) = TeamConfig::generate(TEAM, KEY_ID, &[BUNDLE]).unwrap();
    let config = EmulatorConfig {
        teams: vec![team],
        ..EmulatorConfig::default()
    };
    let clock = herald_actors::seams::ManualClock::new(herald_actors::seams::Timestamp::from_secs(
        START_SECS,
    ));
    let core = EmulatorCore::new(&config, std::sync::Arc::new(clock)).unwrap();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn({
        let core = core.clone();
        async move { core.serve_connection(server_io, None).await }
    });
    let (send, conn) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(conn);
    let bearer = format!("bearer {}", jwt(&key.p8_pem, KEY_ID, TEAM, START_SECS));
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost/3/device/{TOKEN}"))
        .header("authorization", bearer)
        .header("apns-topic", BUNDLE)
        .body(())
        .unwrap();
    let mut send = send.ready().await.unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(PAYLOAD), true)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(core.accepted_count(), 1);
    drop((send, body, resp));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

/// Wait until the client has the server's SETTINGS (it sends one stream at a time before).
async fn wait_for_settings(client: &Client) {
    for _ in 0..500 {
        if client.max_streams.load(std::sync::atomic::Ordering::SeqCst) > 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no SETTINGS from the emulator");
}

/// Token auth allows one stream until a token has been accepted: streams opened alongside
/// the first one are counted (and still answered); once an answer to a valid token has been
/// sent, concurrency is free.
#[tokio::test]
async fn one_stream_until_a_token_is_accepted() {
    let s = setup(|_| {}).await;
    let bearer = bearer(&s);
    let headers = alert_headers(&bearer);
    let headers = refs(&headers);

    // Three concurrent requests on a fresh connection: the second and third violate the rule.
    let eager = Client::connect(&s.emulator).await;
    wait_for_settings(&eager).await;
    let (a, b, c) = tokio::join!(
        eager.push(&headers),
        eager.push(&headers),
        eager.push(&headers)
    );
    assert_eq!((a.status, b.status, c.status), (200, 200, 200));
    let stats = s.emulator.stats();
    let conn = &stats.connections[0];
    assert!(conn.one_stream_violations >= 1, "{conn:?}");
    assert_eq!(conn.stream_limit_violations, 0, "{conn:?}");

    // One request first, then concurrency: no violation.
    let polite = Client::connect(&s.emulator).await;
    assert_eq!(polite.push(&headers).await.status, 200);
    let answers = tokio::join!(
        polite.push(&headers),
        polite.push(&headers),
        polite.push(&headers),
        polite.push(&headers)
    );
    assert_eq!(answers.0.status, 200);
    assert_eq!(answers.3.status, 200);
    let stats = s.emulator.stats();
    let conn = stats.connections.iter().find(|c| c.id == 2).unwrap();
    assert_eq!(conn.streams_opened, 5, "{conn:?}");
    assert_eq!(conn.one_stream_violations, 0, "{conn:?}");

    // A rejected token does not lift the rule: after a 403, concurrent streams still count.
    let rejected = Client::connect(&s.emulator).await;
    wait_for_settings(&rejected).await;
    let a = rejected.push(&[("apns-topic", BUNDLE)]).await;
    assert_eq!(a.status, 403);
    let no_auth: [(&str, &str); 1] = [("apns-topic", BUNDLE)];
    let _ = tokio::join!(rejected.push(&no_auth), rejected.push(&no_auth));
    let stats = s.emulator.stats();
    let conn = stats.connections.iter().find(|c| c.id == 3).unwrap();
    assert!(conn.one_stream_violations >= 1, "{conn:?}");
    s.emulator.shutdown().await;
}
