//! Request validation: a 200 round trip and every 400/404/405/413 reason.

mod emulator_support;

use emulator_support::*;

#[tokio::test]
async fn accepted_push_is_recorded() {
    let s = setup(|_| {}).await;
    let client = Client::connect(&s.emulator).await;
    let bearer = bearer(&s);
    let id = "EABEAE76-A4F8-4B6D-9A8B-5C1A0D4E2F10";
    let mut headers = alert_headers(&bearer);
    headers.push(("apns-id", id.to_owned()));
    headers.push(("apns-collapse-id", "c1".to_owned()));
    headers.push(("apns-priority", "5".to_owned()));
    let answer = client.push(&refs(&headers)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.apns_id.as_deref(), Some(id));
    assert_eq!(answer.unique_id, None, "production sends no apns-unique-id");
    assert_eq!(
        client.max_streams.load(std::sync::atomic::Ordering::SeqCst),
        1000
    );

    let record = s.emulator.accepted();
    assert_eq!(record.len(), 1);
    let n = &record[0];
    assert_eq!(n.apns_id, id);
    assert_eq!(n.device_token, TOKEN);
    assert_eq!(n.topic, BUNDLE);
    assert_eq!(n.push_type.as_deref(), Some("alert"));
    assert_eq!(n.priority, 5);
    assert_eq!(n.collapse_id.as_deref(), Some("c1"));
    assert_eq!(n.time_ms, START_SECS * 1000);
    assert_eq!(n.payload_sha256, sha256_hex(PAYLOAD));
    assert_eq!(s.emulator.accepted_count(), 1);
    assert_eq!(s.emulator.stats().answers_by_status.get(&200), Some(&1));

    // Without an apns-id the emulator makes one up (canonical, uppercase).
    let answer = client.push(&refs(&alert_headers(&bearer))).await;
    let generated = answer.apns_id.unwrap();
    assert_eq!(generated.len(), 36);
    assert_eq!(generated, generated.to_uppercase());
    s.emulator.shutdown().await;
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// Send `headers` (on top of a valid bearer) and expect `status` `reason`.
async fn expect(client: &Client, headers: &[(&str, &str)], status: u16, reason: &str) {
    let answer = client.push(headers).await;
    assert_eq!(answer.status, status, "{headers:?} → {answer:?}");
    assert_eq!(answer.reason.as_deref(), Some(reason), "{headers:?}");
    assert!(answer.apns_id.is_some(), "every answer carries apns-id");
}

#[tokio::test]
async fn every_header_reason() {
    let s = setup(|_| {}).await;
    let client = Client::connect(&s.emulator).await;
    let b = bearer(&s);
    let auth = ("authorization", b.as_str());
    let topic = ("apns-topic", BUNDLE);
    let long_collapse = "x".repeat(65);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![auth, topic, topic], "DuplicateHeaders"),
        (vec![auth, topic, ("apns-id", "not-a-uuid")], "BadMessageId"),
        (
            vec![auth, topic, ("apns-expiration", "soon")],
            "BadExpirationDate",
        ),
        (vec![auth, topic, ("apns-priority", "7")], "BadPriority"),
        (
            vec![
                auth,
                topic,
                ("apns-push-type", "background"),
                ("apns-priority", "10"),
            ],
            "BadPriority",
        ),
        (
            vec![auth, topic, ("apns-push-type", "telepathy")],
            "InvalidPushType",
        ),
        (vec![auth, topic, ("apns-push-type", "voip")], "BadTopic"),
        (
            vec![auth, topic, ("apns-push-type", "liveactivity")],
            "BadTopic",
        ),
        (vec![auth, ("apns-push-type", "alert")], "MissingTopic"),
        (vec![auth, ("apns-topic", "com..bad topic")], "BadTopic"),
        (
            vec![auth, ("apns-topic", "com.other.app")],
            "TopicDisallowed",
        ),
        (
            vec![auth, topic, ("apns-collapse-id", long_collapse.as_str())],
            "BadCollapseId",
        ),
    ];
    for (headers, reason) in cases {
        expect(&client, &headers, 400, reason).await;
    }
    // Suffixed topics of the team's bundle are allowed with their push types.
    let voip = client
        .push(&[
            auth,
            ("apns-topic", "com.example.app.voip"),
            ("apns-push-type", "voip"),
        ])
        .await;
    assert_eq!(voip.status, 200, "{voip:?}");
    let by_reason = s.emulator.answers_by_reason();
    assert_eq!(by_reason.get("BadTopic"), Some(&3));
    assert_eq!(by_reason.get("DuplicateHeaders"), Some(&1));
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn path_method_token_and_payload_reasons() {
    let s = setup(|_| {}).await;
    let client = Client::connect(&s.emulator).await;
    let b = bearer(&s);
    let h = [("authorization", b.as_str()), ("apns-topic", BUNDLE)];
    let path = format!("/3/device/{TOKEN}");
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("GET", path.clone(), vec![], 405, "MethodNotAllowed"),
        (
            "POST",
            "/3/notdevice/ab".into(),
            PAYLOAD.to_vec(),
            404,
            "BadPath",
        ),
        (
            "POST",
            "/3/device/".into(),
            PAYLOAD.to_vec(),
            400,
            "MissingDeviceToken",
        ),
        (
            "POST",
            "/3/device/xyz123".into(),
            PAYLOAD.to_vec(),
            400,
            "BadDeviceToken",
        ),
        (
            "POST",
            format!("/3/device/{TOKEN}a"),
            PAYLOAD.to_vec(),
            400,
            "BadDeviceToken",
        ),
        ("POST", path.clone(), vec![], 400, "PayloadEmpty"),
        (
            "POST",
            path.clone(),
            vec![b' '; 4097],
            413,
            "PayloadTooLarge",
        ),
    ];
    for (method, path, body, status, reason) in cases {
        let answer = client.request(method, &path, &h, &body).await.unwrap();
        assert_eq!(answer.status, status, "{method} {path} → {answer:?}");
        assert_eq!(answer.reason.as_deref(), Some(reason));
    }
    // 4096 bytes is fine; VoIP may carry 5120.
    let ok = client
        .request("POST", &path, &h, &[b' '; 4096])
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let voip = [
        ("authorization", b.as_str()),
        ("apns-topic", "com.example.app.voip"),
        ("apns-push-type", "voip"),
    ];
    let ok = client
        .request("POST", &path, &voip, &[b' '; 5120])
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let big = client
        .request("POST", &path, &voip, &[b' '; 5121])
        .await
        .unwrap();
    assert_eq!(big.status, 413);
    s.emulator.shutdown().await;
}
