//! Broadcast channels (iOS 18 Live Activities): channel management on the APNs listener
//! (`/1/apps/<bundle>/channels`) and broadcast pushes (`/4/broadcasts/apps/<bundle>`).

mod emulator_support;

use emulator_support::*;
use herald_sim::emulator::{CHANNELS_PER_APP_MAX_DEFAULT, EmulatorConfig};

const LIVE: &[u8] = br#"{"aps":{"timestamp":1700000000,"event":"update","content-state":{}}}"#;

fn channels_path(bundle: &str) -> String {
    format!("/1/apps/{bundle}/channels")
}

fn broadcast_path(bundle: &str) -> String {
    format!("/4/broadcasts/apps/{bundle}")
}

async fn create(client: &Client, bearer: &str, bundle: &str, body: &str) -> Answer {
    client
        .request(
            "POST",
            &channels_path(bundle),
            &[("authorization", bearer)],
            body.as_bytes(),
        )
        .await
        .unwrap()
}

async fn broadcast(client: &Client, bearer: &str, channel: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![
        ("authorization", bearer),
        ("apns-channel-id", channel),
        ("apns-push-type", "liveactivity"),
    ];
    headers.extend_from_slice(extra);
    client
        .request("POST", &broadcast_path(BUNDLE), &headers, LIVE)
        .await
        .unwrap()
}

/// GET on the admin endpoint (HTTP/1.1): the JSON body.
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert_eq!(&out[9..12], "200", "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn channel_lifecycle_and_broadcast() {
    let s = setup(|_| {}).await;
    let bearer = bearer(&s);
    let client = Client::connect(&s.emulator).await;

    let created = create(
        &client,
        &bearer,
        BUNDLE,
        r#"{"message-storage-policy": 1, "push-type": "LiveActivity"}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.header("apns-channel-id").unwrap().to_owned();
    assert_eq!(id.len(), 24, "base64 of 16 bytes: {id}");
    assert!(id.ends_with("=="));
    assert!(created.header("apns-request-id").is_some());

    // Read one (the request id is echoed).
    let request_id = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let read = client
        .request(
            "GET",
            &channels_path(BUNDLE),
            &[
                ("authorization", &bearer),
                ("apns-channel-id", &id),
                ("apns-request-id", request_id),
            ],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.header("apns-request-id"), Some(request_id));
    assert_eq!(read.json()["message-storage-policy"], 1);
    assert_eq!(read.json()["push-type"], "LiveActivity");

    // List: GET without a channel id, and Apple's `all-channels`.
    for path in [
        channels_path(BUNDLE),
        format!("/1/apps/{BUNDLE}/all-channels"),
    ] {
        let list = client
            .request("GET", &path, &[("authorization", &bearer)], b"")
            .await
            .unwrap();
        assert_eq!(list.status, 200, "{list:?}");
        assert_eq!(list.json()["channels"], serde_json::json!([id.clone()]));
    }
    assert_eq!(s.emulator.channels(BUNDLE)[0].id, id);
    let admin = s.emulator.admin_addr().unwrap();
    let listed = admin_get(admin, &format!("/channels?bundle={BUNDLE}")).await;
    assert_eq!(listed[0]["id"], serde_json::json!(id));
    assert_eq!(listed[0]["message_storage_policy"], 1);

    // Broadcast.
    let apns_id = "EABEAE76-A4F8-4B6D-9A8B-5C1A0D4E2F10";
    let pushed = broadcast(
        &client,
        &bearer,
        &id,
        &[("apns-id", apns_id), ("apns-priority", "5")],
    )
    .await;
    assert_eq!(pushed.status, 200, "{pushed:?}");
    assert_eq!(pushed.apns_id.as_deref(), Some(apns_id));
    let record = s.emulator.accepted();
    assert_eq!(record.len(), 1);
    let n = &record[0];
    assert_eq!(n.channel_id.as_deref(), Some(id.as_str()));
    assert_eq!(n.device_token, "");
    assert_eq!(n.topic, format!("{BUNDLE}.push-type.liveactivity"));
    assert_eq!(n.push_type.as_deref(), Some("liveactivity"));
    assert_eq!((n.priority, n.payload_bytes), (5, LIVE.len()));
    assert_eq!(s.emulator.stats().broadcasts_total, 1);
    // The record's JSON carries the channel; older JSON without it still reads.
    let json = serde_json::to_value(n).unwrap();
    assert_eq!(json["channel_id"], serde_json::json!(id));
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("channel_id");
    let back: herald_sim::emulator::AcceptedNotification = serde_json::from_value(old).unwrap();
    assert_eq!(back.channel_id, None);

    // Delete, then it is gone everywhere.
    let delete = |id: String| {
        let client = &client;
        let bearer = &bearer;
        async move {
            client
                .request(
                    "DELETE",
                    &channels_path(BUNDLE),
                    &[("authorization", bearer), ("apns-channel-id", &id)],
                    b"",
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(delete(id.clone()).await.status, 204);
    let again = delete(id.clone()).await;
    assert_eq!(
        (again.status, again.reason.as_deref()),
        (404, Some("ChannelNotRegistered"))
    );
    let read = client
        .request(
            "GET",
            &channels_path(BUNDLE),
            &[("authorization", &bearer), ("apns-channel-id", &id)],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(
        (read.status, read.reason.as_deref()),
        (404, Some("ChannelNotRegistered"))
    );
    let pushed = broadcast(&client, &bearer, &id, &[]).await;
    assert_eq!(
        (pushed.status, pushed.reason.as_deref()),
        (400, Some("BadChannelId"))
    );
    assert!(pushed.apns_id.is_some());
    assert!(s.emulator.channels(BUNDLE).is_empty());
    assert_eq!(s.emulator.accepted_count(), 1);
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn broadcast_and_management_validation() {
    let s = setup(|_| {}).await;
    let other = s
        .emulator
        .generate_team_key("TEAM999999", &["com.other.app"])
        .unwrap();
    let bearer = bearer(&s);
    let client = Client::connect(&s.emulator).await;
    let id = create(
        &client,
        &bearer,
        BUNDLE,
        r#"{"message-storage-policy": 0, "push-type": "LiveActivity"}"#,
    )
    .await
    .header("apns-channel-id")
    .unwrap()
    .to_owned();

    let expect = |a: Answer, status: u16, reason: &str| {
        assert_eq!(
            (a.status, a.reason.as_deref()),
            (status, Some(reason)),
            "{a:?}"
        );
    };
    // Broadcast pushes.
    let missing = client
        .request(
            "POST",
            &broadcast_path(BUNDLE),
            &[
                ("authorization", &bearer),
                ("apns-push-type", "liveactivity"),
            ],
            LIVE,
        )
        .await
        .unwrap();
    expect(missing, 400, "MissingChannelId");
    let wrong_type = client
        .request(
            "POST",
            &broadcast_path(BUNDLE),
            &[
                ("authorization", &bearer),
                ("apns-channel-id", &id),
                ("apns-push-type", "alert"),
            ],
            LIVE,
        )
        .await
        .unwrap();
    expect(wrong_type, 400, "InvalidPushType");
    let no_type = client
        .request(
            "POST",
            &broadcast_path(BUNDLE),
            &[("authorization", &bearer), ("apns-channel-id", &id)],
            LIVE,
        )
        .await
        .unwrap();
    expect(no_type, 400, "InvalidPushType");
    expect(
        broadcast(&client, &bearer, &id, &[("apns-priority", "7")]).await,
        400,
        "BadPriority",
    );
    expect(
        broadcast(&client, &bearer, &id, &[("apns-expiration", "soon")]).await,
        400,
        "BadExpirationDate",
    );
    expect(
        broadcast(&client, &bearer, "bm90LWEtY2hhbm5lbA==", &[]).await,
        400,
        "BadChannelId",
    );
    let empty = client
        .request(
            "POST",
            &broadcast_path(BUNDLE),
            &[
                ("authorization", &bearer),
                ("apns-channel-id", &id),
                ("apns-push-type", "liveactivity"),
            ],
            b"",
        )
        .await
        .unwrap();
    expect(empty, 400, "PayloadEmpty");
    let big = vec![b'x'; 4097];
    let large = client
        .request(
            "POST",
            &broadcast_path(BUNDLE),
            &[
                ("authorization", &bearer),
                ("apns-channel-id", &id),
                ("apns-push-type", "liveactivity"),
            ],
            &big,
        )
        .await
        .unwrap();
    expect(large, 413, "PayloadTooLarge");
    let not_ours = client
        .request(
            "POST",
            &broadcast_path("com.other.app"),
            &[
                ("authorization", &bearer),
                ("apns-channel-id", &id),
                ("apns-push-type", "liveactivity"),
            ],
            LIVE,
        )
        .await
        .unwrap();
    expect(not_ours, 400, "TopicDisallowed");
    let get = client
        .request(
            "GET",
            &broadcast_path(BUNDLE),
            &[("authorization", &bearer)],
            b"",
        )
        .await
        .unwrap();
    expect(get, 405, "MethodNotAllowed");

    // Same auth rules as device pushes.
    let anonymous = Client::connect(&s.emulator).await;
    expect(
        anonymous
            .request(
                "POST",
                &broadcast_path(BUNDLE),
                &[("apns-channel-id", &id), ("apns-push-type", "liveactivity")],
                LIVE,
            )
            .await
            .unwrap(),
        403,
        "MissingProviderToken",
    );
    expect(
        anonymous
            .request("GET", &channels_path(BUNDLE), &[], b"")
            .await
            .unwrap(),
        403,
        "MissingProviderToken",
    );
    let other_bearer = format!(
        "bearer {}",
        jwt(&other.p8_pem, &other.key_id, "TEAM999999", START_SECS)
    );
    expect(
        client
            .request(
                "GET",
                &channels_path("com.other.app"),
                &[("authorization", &other_bearer)],
                b"",
            )
            .await
            .unwrap(),
        403,
        "UnrelatedKeyIdInToken",
    );
    // The other team sees its own (empty) app, not ours.
    let theirs = Client::connect(&s.emulator).await;
    let list = theirs
        .request(
            "GET",
            &channels_path("com.other.app"),
            &[("authorization", &other_bearer)],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(list.json()["channels"], serde_json::json!([]));
    expect(
        theirs
            .request(
                "GET",
                &channels_path(BUNDLE),
                &[("authorization", &other_bearer)],
                b"",
            )
            .await
            .unwrap(),
        400,
        "TopicDisallowed",
    );

    // Channel management bodies and headers.
    expect(
        create(
            &client,
            &bearer,
            BUNDLE,
            r#"{"message-storage-policy": 2, "push-type": "LiveActivity"}"#,
        )
        .await,
        400,
        "BadMessageStoragePolicy",
    );
    expect(
        create(&client, &bearer, BUNDLE, "not json").await,
        400,
        "BadMessageStoragePolicy",
    );
    expect(
        create(
            &client,
            &bearer,
            BUNDLE,
            r#"{"message-storage-policy": 0, "push-type": "alert"}"#,
        )
        .await,
        400,
        "InvalidPushType",
    );
    expect(
        create(&client, &bearer, BUNDLE, "").await,
        400,
        "PayloadEmpty",
    );
    expect(
        client
            .request(
                "DELETE",
                &channels_path(BUNDLE),
                &[("authorization", &bearer)],
                b"",
            )
            .await
            .unwrap(),
        400,
        "MissingChannelId",
    );
    expect(
        client
            .request(
                "PUT",
                &channels_path(BUNDLE),
                &[("authorization", &bearer)],
                b"{}",
            )
            .await
            .unwrap(),
        405,
        "MethodNotAllowed",
    );
    assert_eq!(s.emulator.channels(BUNDLE).len(), 1);
    assert_eq!(s.emulator.accepted_count(), 0);
    let reasons = s.emulator.answers_by_reason();
    assert_eq!(reasons.get("BadChannelId"), Some(&1));
    assert_eq!(reasons.get("MissingChannelId"), Some(&2));
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn channels_per_app_are_limited() {
    assert_eq!(CHANNELS_PER_APP_MAX_DEFAULT, 10_000);
    assert_eq!(
        EmulatorConfig::default().channels_per_app_max,
        CHANNELS_PER_APP_MAX_DEFAULT
    );
    let s = setup(|c| {
        c.channels_per_app_max = 3;
        c.teams[0].bundle_ids.push("com.example.second".into());
    })
    .await;
    let bearer = bearer(&s);
    let client = Client::connect(&s.emulator).await;
    let body = r#"{"message-storage-policy": 0, "push-type": "LiveActivity"}"#;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let a = create(&client, &bearer, BUNDLE, body).await;
        assert_eq!(a.status, 201, "{a:?}");
        ids.push(a.header("apns-channel-id").unwrap().to_owned());
    }
    let over = create(&client, &bearer, BUNDLE, body).await;
    assert_eq!(
        (over.status, over.reason.as_deref()),
        (400, Some("TooManyChannels"))
    );
    // The limit is per app.
    assert_eq!(
        create(&client, &bearer, "com.example.second", body)
            .await
            .status,
        201
    );
    // Deleting one makes room.
    let deleted = client
        .request(
            "DELETE",
            &channels_path(BUNDLE),
            &[("authorization", &bearer), ("apns-channel-id", &ids[0])],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(deleted.status, 204);
    assert_eq!(create(&client, &bearer, BUNDLE, body).await.status, 201);
    assert_eq!(s.emulator.channels(BUNDLE).len(), 3);
    s.emulator.shutdown().await;
}
