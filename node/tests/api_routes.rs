//! The HTTP API end to end: the router over a real engine and the APNs emulator on
//! 127.0.0.1. Every route, auth, tenant isolation, each error code, overload → 429.

mod api_support;

use std::time::Duration;

use api_support::{Env, Options, eventually, start, token};
use axum::http::StatusCode;
use herald_sim::emulator::DeviceState;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn alert(token: &str) -> Value {
    json!({
        "device_token": token,
        "topic": api_support::BUNDLE,
        "payload": {"aps": {"alert": "hello"}},
    })
}

fn accepted_for(env: &Env, token: &str) -> usize {
    env.emulator
        .core()
        .accepted()
        .iter()
        .filter(|a| a.device_token == token)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_is_delivered_and_its_status_reported() {
    let env = start(Options::default()).await;
    let t = token(1);
    let answer = env
        .call("POST", "/v1/push", Some(&env.acme), Some(alert(&t)))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let id = answer.body["id"].as_str().unwrap().to_owned();
    let status = env.final_status(&env.acme, &id).await;
    assert_eq!(status["status"], "delivered", "{status}");
    assert_eq!(accepted_for(&env, &t), 1);
    // A read-only key reads it too.
    let read = env
        .call(
            "GET",
            &format!("/v1/pushes/{id}"),
            Some(&env.acme_read),
            None,
        )
        .await;
    assert_eq!(read.body["status"], "delivered");
    // Not a UUID, or unknown: 404.
    let missing = env
        .call("GET", "/v1/pushes/nope", Some(&env.acme), None)
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::NOT_FOUND, "push_not_found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_gives_one_push_id_and_one_delivery() {
    let env = start(Options::default()).await;
    let t = token(2);
    let body = serde_json::to_vec(&alert(&t)).unwrap();
    let headers = [("idempotency-key", "order-17")];
    let first = env
        .call_raw(
            "POST",
            "/v1/push",
            Some(&env.acme),
            Some(body.clone()),
            &headers,
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let id = first.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        id,
        herald_node::api::push_id_for_key("acme", "order-17").to_string()
    );
    assert_eq!(
        env.final_status(&env.acme, &id).await["status"],
        "delivered"
    );
    let again = env
        .call_raw("POST", "/v1/push", Some(&env.acme), Some(body), &headers)
        .await;
    assert_eq!(again.body["id"], first.body["id"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(accepted_for(&env, &t), 1, "the retry was deduplicated");
    // Another tenant's same key is another push.
    let mut other = alert(&token(3));
    other["idempotency_key"] = json!("order-17");
    let theirs = env
        .call("POST", "/v1/push", Some(&env.globex), Some(other))
        .await;
    assert_ne!(theirs.body["id"], first.body["id"]);
    // A bad key is refused.
    let bad = env
        .call_raw(
            "POST",
            "/v1/push",
            Some(&env.acme),
            Some(b"{}".to_vec()),
            &[("idempotency-key", "has space")],
        )
        .await;
    assert_eq!(bad.code(), "invalid_field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_per_item_and_is_bounded() {
    let env = start(Options::default()).await;
    let mut bad_topic = alert(&token(12));
    bad_topic["topic"] = json!("not a topic!");
    let mut voip = alert(&token(13));
    voip["push_type"] = json!("voip"); // alert topic, voip type: the topic does not fit
    let body = json!({"pushes": [alert(&token(11)), alert("xyz"), bad_topic, voip]});
    let answer = env
        .call("POST", "/v1/push/batch", Some(&env.acme), Some(body))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["accepted"], 1);
    assert_eq!(answer.body["failed"], 3);
    let results = answer.body["results"].as_array().unwrap();
    let id = results[0]["id"].as_str().unwrap();
    assert_eq!(results[1]["error"]["code"], "bad_device_token");
    assert_eq!(results[1]["error"]["field"], "pushes[1].device_token");
    assert_eq!(results[2]["error"]["code"], "invalid_topic");
    assert_eq!(results[2]["error"]["field"], "pushes[2].topic");
    assert_eq!(results[3]["error"]["code"], "invalid_topic");
    assert_eq!(env.final_status(&env.acme, id).await["status"], "delivered");

    let too_many: Vec<Value> = (0..=herald_node::api::limits::PUSH_BATCH_MAX as u64)
        .map(|n| alert(&token(1000 + n)))
        .collect();
    let answer = env
        .call(
            "POST",
            "/v1/push/batch",
            Some(&env.acme),
            Some(json!({"pushes": too_many})),
        )
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::BAD_REQUEST, "batch_too_large")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_register_list_delete_and_broadcast_pages_by_cursor() {
    let env = start(Options::default()).await;
    for n in 0..5u64 {
        let tags = if n % 2 == 0 {
            json!(["beta", "eu"])
        } else {
            json!(["eu"])
        };
        let answer = env
            .call(
                "POST",
                "/v1/devices",
                Some(&env.acme),
                Some(json!({"token": token(100 + n), "topic": api_support::BUNDLE, "tags": tags})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    // Registering again updates.
    let again = env
        .call(
            "POST",
            "/v1/devices",
            Some(&env.acme),
            Some(
                json!({"token": token(104), "topic": api_support::BUNDLE, "tags": ["beta", "eu"]}),
            ),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    let list = env
        .call(
            "GET",
            "/v1/devices?tags=beta&limit=2",
            Some(&env.acme),
            None,
        )
        .await;
    assert_eq!(
        list.body["devices"].as_array().unwrap().len(),
        2,
        "{}",
        list.body
    );
    let cursor = list.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = env
        .call(
            "GET",
            &format!("/v1/devices?tags=beta&limit=2&cursor={cursor}"),
            Some(&env.acme),
            None,
        )
        .await;
    assert_eq!(rest.body["devices"].as_array().unwrap().len(), 1);
    assert!(rest.body["next_cursor"].is_null());

    // Broadcast to tag beta, two devices per call, resumed by cursor.
    let mut request = json!({"topic": api_support::BUNDLE, "tags": ["beta"], "limit": 2, "payload": {"aps": {"alert": "news"}}});
    let mut accepted = 0;
    let mut calls = 0;
    let mut broadcast_id = None;
    loop {
        let answer = env
            .call(
                "POST",
                "/v1/broadcast",
                Some(&env.acme),
                Some(request.clone()),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        calls += 1;
        accepted += answer.body["accepted"].as_u64().unwrap();
        broadcast_id.get_or_insert(answer.body["broadcast_id"].clone());
        if answer.body["done"] == true {
            break;
        }
        request["cursor"] = answer.body["next_cursor"].clone();
        request["broadcast_id"] = broadcast_id.clone().unwrap();
    }
    assert_eq!((accepted, calls), (3, 2));
    for n in [100, 102, 104] {
        let t = token(n);
        eventually("broadcast delivery", || accepted_for(&env, &t) == 1).await;
    }
    assert_eq!(accepted_for(&env, &token(101)), 0, "not tagged beta");
    // Replaying the same broadcast id sends nothing new (same push ids).
    let mut replay = request.clone();
    replay["cursor"] = Value::Null;
    let answer = env
        .call("POST", "/v1/broadcast", Some(&env.acme), Some(replay))
        .await;
    assert_eq!(answer.body["accepted"], 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(accepted_for(&env, &token(100)), 1);

    let path = format!("/v1/devices/{}", token(100));
    let deleted = env.call("DELETE", &path, Some(&env.acme), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let twice = env.call("DELETE", &path, Some(&env.acme), None).await;
    assert_eq!(
        (twice.status, twice.code()),
        (StatusCode::NOT_FOUND, "device_not_found")
    );
    let bad = env
        .call("DELETE", "/v1/devices/zz", Some(&env.acme), None)
        .await;
    assert_eq!(bad.code(), "bad_device_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_lists_invalidated_tokens_by_cursor_per_tenant() {
    let env = start(Options::default()).await;
    let gone: Vec<String> = (0..3).map(|n| token(200 + n)).collect();
    for (i, t) in gone.iter().enumerate() {
        env.emulator.core().set_device(
            t,
            DeviceState::Unregistered {
                at_ms: api_support::START_SECS * 1000 + 1 + i as u64,
            },
        );
        env.call(
            "POST",
            "/v1/devices",
            Some(&env.acme),
            Some(json!({"token": t, "topic": api_support::BUNDLE})),
        )
        .await;
    }
    for t in &gone {
        let answer = env
            .call("POST", "/v1/push", Some(&env.acme), Some(alert(t)))
            .await;
        let id = answer.body["id"].as_str().unwrap().to_owned();
        assert_eq!(
            env.final_status(&env.acme, &id).await["status"],
            "unregistered"
        );
    }
    let until = tokio::time::Instant::now() + api_support::PATIENCE;
    let first = loop {
        let page = env
            .call("GET", "/v1/feedback?limit=2", Some(&env.acme_read), None)
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        if page.body["items"].as_array().unwrap().len() == 2 {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "feedback never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cursor = first.body["next_cursor"].as_u64().unwrap();
    assert_eq!(cursor, 2);
    let until = tokio::time::Instant::now() + api_support::PATIENCE;
    let second = loop {
        let page = env
            .call(
                "GET",
                &format!("/v1/feedback?cursor={cursor}"),
                Some(&env.acme),
                None,
            )
            .await;
        if page.body["items"].as_array().unwrap().len() == 1 {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "third invalidation never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(second.body["truncated"], false);
    let mut seen: Vec<String> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second.body["items"].as_array().unwrap())
        .map(|i| i["token"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    assert_eq!(seen, gone);
    // Invalidated devices leave the registry.
    let devices = env.call("GET", "/v1/devices", Some(&env.acme), None).await;
    assert_eq!(devices.body["devices"], json!([]));
    // Another tenant sees none of it.
    let theirs = env
        .call("GET", "/v1/feedback", Some(&env.globex), None)
        .await;
    assert_eq!(theirs.body["items"], json!([]));
    let bad = env
        .call("GET", "/v1/feedback?cursor=abc", Some(&env.acme), None)
        .await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
    let bad = env
        .call("GET", "/v1/feedback?limit=0", Some(&env.acme), None)
        .await;
    assert_eq!(bad.code(), "invalid_query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_never_reaches_another_tenant() {
    let env = start(Options::default()).await;
    let t = token(300);
    env.call(
        "POST",
        "/v1/devices",
        Some(&env.acme),
        Some(json!({"token": t, "topic": api_support::BUNDLE, "tags": ["vip"]})),
    )
    .await;
    let pushed = env
        .call("POST", "/v1/push", Some(&env.acme), Some(alert(&t)))
        .await;
    let id = pushed.body["id"].as_str().unwrap().to_owned();

    // Reading acme's push: 404, exactly as for a push that does not exist.
    let theirs = env
        .call("GET", &format!("/v1/pushes/{id}"), Some(&env.globex), None)
        .await;
    let absent = env
        .call(
            "GET",
            "/v1/pushes/00000000-0000-0000-0000-000000000042",
            Some(&env.globex),
            None,
        )
        .await;
    assert_eq!(
        (theirs.status, theirs.body.clone()),
        (absent.status, absent.body.clone())
    );
    assert_eq!(theirs.code(), "push_not_found");
    // Acme's devices: invisible, and deleting one is 404 like any unknown device.
    let list = env
        .call("GET", "/v1/devices", Some(&env.globex), None)
        .await;
    assert_eq!(list.body["devices"], json!([]));
    let del = env
        .call(
            "DELETE",
            &format!("/v1/devices/{t}"),
            Some(&env.globex),
            None,
        )
        .await;
    assert_eq!(del.code(), "device_not_found");
    // Broadcasting to acme's tag from globex reaches nobody.
    let b = env
        .call("POST", "/v1/broadcast", Some(&env.globex), Some(json!({"topic": api_support::BUNDLE, "tags": ["vip"], "payload": {"aps": {"alert": "x"}}})))
        .await;
    assert_eq!(
        (b.body["matched"].clone(), b.body["accepted"].clone()),
        (json!(0), json!(0))
    );
    // Acting for acme (or any other tenant, existing or not): 403, the same answer.
    for other in ["acme", "no-such-tenant"] {
        let mut body = alert(&t);
        body["tenant"] = json!(other);
        let answer = env
            .call("POST", "/v1/push", Some(&env.globex), Some(body))
            .await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::FORBIDDEN, "forbidden_tenant")
        );
        assert_eq!(
            answer.body["error"]["message"],
            "this key cannot act for another tenant"
        );
        let reg = env
            .call(
                "POST",
                "/v1/devices",
                Some(&env.globex),
                Some(json!({"tenant": other, "token": t, "topic": api_support::BUNDLE})),
            )
            .await;
        assert_eq!(reg.code(), "forbidden_tenant");
    }
    // Acme still has its device.
    let mine = env.call("GET", "/v1/devices", Some(&env.acme), None).await;
    assert_eq!(mine.body["devices"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_scoped_expired_and_revoked() {
    let env = start(Options::default()).await;
    let body = Some(alert(&token(400)));
    let none = env.call("POST", "/v1/push", None, body.clone()).await;
    assert_eq!(
        (none.status, none.code()),
        (StatusCode::UNAUTHORIZED, "missing_api_key")
    );
    let basic = env
        .call_raw(
            "POST",
            "/v1/push",
            None,
            Some(b"{}".to_vec()),
            &[("authorization", "Basic abc")],
        )
        .await;
    assert_eq!(basic.code(), "missing_api_key");
    let garbage = env
        .call("POST", "/v1/push", Some("not-a-key"), body.clone())
        .await;
    assert_eq!(
        (garbage.status, garbage.code()),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );
    let forged =
        herald_node::api::ApiKeys::hs256(&[9u8; 32], std::sync::Arc::new(env.clock.clone()))
            .unwrap()
            .issue(&herald_node::api::KeyRequest::admin(), "forged")
            .unwrap();
    let answer = env
        .call("GET", "/v1/tenants", Some(&forged.key), None)
        .await;
    assert_eq!(answer.code(), "invalid_api_key");

    // Scopes.
    let read_only = env
        .call("POST", "/v1/push", Some(&env.acme_read), body.clone())
        .await;
    assert_eq!(
        (read_only.status, read_only.code()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    let tenant_admin = env.call("GET", "/v1/tenants", Some(&env.acme), None).await;
    assert_eq!(tenant_admin.code(), "insufficient_scope");
    let admin_push = env
        .call("POST", "/v1/push", Some(&env.admin), body.clone())
        .await;
    assert_eq!(
        admin_push.code(),
        "insufficient_scope",
        "an operator key cannot push"
    );

    // Issue a short-lived key, use it, revoke it.
    let issued = env
        .call(
            "POST",
            "/v1/keys",
            Some(&env.admin),
            Some(json!({"tenant": "acme", "scopes": ["push"], "ttl_secs": 60})),
        )
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
    let key = issued.body["key"].as_str().unwrap().to_owned();
    let key_id = issued.body["id"].as_str().unwrap().to_owned();
    let ok = env.call("POST", "/v1/push", Some(&key), body.clone()).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);
    let revoked = env
        .call(
            "DELETE",
            &format!("/v1/keys/{key_id}"),
            Some(&env.admin),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let after = env.call("POST", "/v1/push", Some(&key), body.clone()).await;
    assert_eq!(
        (after.status, after.code()),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );
    assert!(
        after.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );

    // Expiry follows the injected clock.
    let short = env
        .call(
            "POST",
            "/v1/keys",
            Some(&env.admin),
            Some(json!({"tenant": "acme", "scopes": ["read"], "ttl_secs": 60})),
        )
        .await;
    let short = short.body["key"].as_str().unwrap().to_owned();
    assert_eq!(
        env.call("GET", "/v1/feedback", Some(&short), None)
            .await
            .status,
        StatusCode::OK
    );
    env.clock.advance(Duration::from_secs(61));
    let expired = env.call("GET", "/v1/feedback", Some(&short), None).await;
    assert_eq!(expired.code(), "invalid_api_key");
    assert!(
        expired.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // Bad key requests.
    let bad = env
        .call(
            "POST",
            "/v1/keys",
            Some(&env.admin),
            Some(json!({"tenant": "acme", "scopes": ["admin"]})),
        )
        .await;
    assert_eq!(bad.code(), "invalid_field");
    let bad = env
        .call(
            "POST",
            "/v1/keys",
            Some(&env.admin),
            Some(json!({"tenant": "acme", "scopes": ["root"]})),
        )
        .await;
    assert_eq!(bad.code(), "invalid_field");
    let unknown = env
        .call(
            "POST",
            "/v1/keys",
            Some(&env.admin),
            Some(json!({"tenant": "nobody", "scopes": ["push"]})),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "unknown_tenant")
    );
    // A tenant key cannot issue keys.
    let escalate = env
        .call(
            "POST",
            "/v1/keys",
            Some(&env.acme),
            Some(json!({"scopes": ["admin"]})),
        )
        .await;
    assert_eq!(escalate.code(), "insufficient_scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_created_used_and_removed_through_the_api() {
    let env = start(Options::default()).await;
    let spec = json!({
        "id": "initech",
        "team_id": env.spare.team_id,
        "key_id": env.spare.key_id,
        "p8_pem": env.spare.p8_pem,
    });
    let created = env
        .call("POST", "/v1/tenants", Some(&env.admin), Some(spec.clone()))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert!(
        !created.body.to_string().contains("PRIVATE KEY"),
        "the key is never echoed"
    );
    let dup = env
        .call("POST", "/v1/tenants", Some(&env.admin), Some(spec.clone()))
        .await;
    assert_eq!(
        (dup.status, dup.code()),
        (StatusCode::CONFLICT, "tenant_exists")
    );
    let mut bad = spec.clone();
    bad["id"] = json!("other");
    bad["p8_pem"] = json!("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n");
    let bad = env
        .call("POST", "/v1/tenants", Some(&env.admin), Some(bad))
        .await;
    assert_eq!(
        (bad.code(), bad.body["error"]["field"].clone()),
        ("invalid_field", json!("p8_pem"))
    );
    let mut bad_id = spec.clone();
    bad_id["id"] = json!("no spaces");
    let bad_id = env
        .call("POST", "/v1/tenants", Some(&env.admin), Some(bad_id))
        .await;
    assert_eq!(bad_id.body["error"]["field"], "id");

    let list = env.call("GET", "/v1/tenants", Some(&env.admin), None).await;
    let ids: Vec<&str> = list.body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "globex", "initech"]);
    let one = env
        .call("GET", "/v1/tenants/initech", Some(&env.admin), None)
        .await;
    assert_eq!(one.body["team_id"], env.spare.team_id.as_str());

    let key = env
        .call(
            "POST",
            "/v1/keys",
            Some(&env.admin),
            Some(json!({"tenant": "initech", "scopes": ["push", "read"]})),
        )
        .await;
    let key = key.body["key"].as_str().unwrap().to_owned();
    let pushed = env
        .call("POST", "/v1/push", Some(&key), Some(alert(&token(500))))
        .await;
    assert_eq!(pushed.status, StatusCode::ACCEPTED, "{}", pushed.body);
    let id = pushed.body["id"].as_str().unwrap().to_owned();
    assert_eq!(env.final_status(&key, &id).await["status"], "delivered");

    let removed = env
        .call("DELETE", "/v1/tenants/initech", Some(&env.admin), None)
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let gone = env
        .call("GET", "/v1/tenants/initech", Some(&env.admin), None)
        .await;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::NOT_FOUND, "unknown_tenant")
    );
    let orphan = env
        .call("POST", "/v1/push", Some(&key), Some(alert(&token(501))))
        .await;
    assert_eq!(
        (orphan.status, orphan.code()),
        (StatusCode::NOT_FOUND, "unknown_tenant")
    );
    let again = env
        .call("DELETE", "/v1/tenants/initech", Some(&env.admin), None)
        .await;
    assert_eq!(again.code(), "unknown_tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_error_has_its_code() {
    let env = start(Options::default()).await;
    let key = Some(env.acme.as_str());
    let send = |body: Value| env.call("POST", "/v1/push", key, Some(body));

    let malformed = env
        .call_raw(
            "POST",
            "/v1/push",
            key,
            Some(b"{\"device_token\":".to_vec()),
            &[],
        )
        .await;
    assert_eq!(
        (malformed.status, malformed.code()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let wrong_shape = send(json!({"device_token": 5})).await;
    assert_eq!(wrong_shape.code(), "invalid_field");
    let unknown_field = send(json!({"device_token": token(1), "topik": "x"})).await;
    assert_eq!(unknown_field.code(), "invalid_field");

    let huge = vec![b' '; herald_node::api::limits::BODY_BYTES_MAX + 1];
    let too_big = env.call_raw("POST", "/v1/push", key, Some(huge), &[]).await;
    assert_eq!(
        (too_big.status, too_big.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );

    let mut b = alert("abc");
    let a = send(b.clone()).await;
    assert_eq!(
        (a.status, a.code(), a.body["error"]["field"].clone()),
        (
            StatusCode::BAD_REQUEST,
            "bad_device_token",
            json!("device_token")
        )
    );
    b = alert(&token(1));
    b["topic"] = json!("");
    assert_eq!(send(b.clone()).await.body["error"]["field"], "topic");
    b = alert(&token(1));
    b["push_type"] = json!("telegram");
    let a = send(b).await;
    assert_eq!(
        (a.code(), a.body["error"]["field"].clone()),
        ("invalid_push_type", json!("push_type"))
    );
    b = alert(&token(1));
    b["payload"] = json!({"aps": {"alert": "x".repeat(5000)}});
    let a = send(b).await;
    assert_eq!(
        (a.code(), a.body["error"]["field"].clone()),
        ("invalid_payload", json!("payload"))
    );
    b = alert(&token(1));
    b["payload"] = json!({});
    assert_eq!(send(b).await.code(), "invalid_payload");
    b = alert(&token(1));
    b["priority"] = json!(7);
    let a = send(b).await;
    assert_eq!(
        (a.code(), a.body["error"]["field"].clone()),
        ("invalid_field", json!("priority"))
    );
    b = alert(&token(1));
    b["push_type"] = json!("background");
    b["priority"] = json!(10);
    assert_eq!(send(b).await.body["error"]["field"], "priority");

    let nowhere = env.call("GET", "/v1/nowhere", key, None).await;
    assert_eq!(
        (nowhere.status, nowhere.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let method = env.call("PUT", "/v1/push", key, None).await;
    assert_eq!(
        (method.status, method.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_429_with_retry_after_and_a_stopping_engine_503() {
    let env = start(Options {
        unreachable: true,
        acme_queue_max: Some(2),
    })
    .await;
    for n in 0..2 {
        let answer = env
            .call(
                "POST",
                "/v1/push",
                Some(&env.acme),
                Some(alert(&token(600 + n))),
            )
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    }
    let full = env
        .call(
            "POST",
            "/v1/push",
            Some(&env.acme),
            Some(alert(&token(602))),
        )
        .await;
    assert_eq!(
        (full.status, full.code()),
        (StatusCode::TOO_MANY_REQUESTS, "overloaded")
    );
    let retry: u64 = full.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // A batch past the tenant's room is refused whole.
    let batch = env
        .call(
            "POST",
            "/v1/push/batch",
            Some(&env.acme),
            Some(json!({"pushes": [alert(&token(603))]})),
        )
        .await;
    assert_eq!(batch.status, StatusCode::TOO_MANY_REQUESTS);
    // The other tenant is unaffected.
    let other = env
        .call(
            "POST",
            "/v1/push",
            Some(&env.globex),
            Some(alert(&token(604))),
        )
        .await;
    assert_eq!(other.status, StatusCode::ACCEPTED);

    env.herald.shutdown(Duration::from_millis(100)).await;
    let stopping = env
        .call(
            "POST",
            "/v1/push",
            Some(&env.globex),
            Some(alert(&token(605))),
        )
        .await;
    assert_eq!(
        (stopping.status, stopping.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gorush_requests_are_delivered_and_answered_like_gorush() {
    let env = start(Options::default()).await;
    let (a, b) = (token(700), token(701));
    let request = json!({"notifications": [{
        "tokens": [a, b],
        "platform": 1,
        "title": "Hi",
        "message": "Hello from gorush",
        "topic": api_support::BUNDLE,
        "badge": 3,
        "sound": "default",
        "priority": "high",
        "data": {"order": 17},
    }]});
    let answer = env
        .call("POST", "/api/push", Some(&env.acme), Some(request))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"counts": 2, "logs": [], "success": "ok"})
    );
    let expected = serde_json::to_vec(&json!({
        "aps": {"alert": {"body": "Hello from gorush", "title": "Hi"}, "badge": 3, "sound": "default"},
        "order": 17,
    }))
    .unwrap();
    let digest = hex::encode(Sha256::digest(&expected));
    for t in [&a, &b] {
        eventually("gorush delivery", || accepted_for(&env, t) == 1).await;
        let record = env
            .emulator
            .core()
            .accepted()
            .into_iter()
            .find(|r| &r.device_token == t)
            .unwrap();
        assert_eq!(record.payload_sha256, digest);
        assert_eq!(record.priority, 10);
    }
    let android = env
        .call(
            "POST",
            "/api/push",
            Some(&env.acme),
            Some(json!({"notifications": [{"tokens": ["x"], "platform": 2, "message": "hi"}]})),
        )
        .await;
    assert_eq!(
        (android.status, android.code()),
        (StatusCode::BAD_REQUEST, "unsupported_platform")
    );
    let empty = env
        .call(
            "POST",
            "/api/push",
            Some(&env.acme),
            Some(json!({"notifications": []})),
        )
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_signed_outcomes_at_least_once_after_failures() {
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::http::HeaderMap;

    const SECRET: &str = "webhook-secret-0123456789";
    // A receiver on 127.0.0.1 that fails its first request with 500.
    type Log = Vec<(Option<String>, Bytes)>;
    let received: Arc<Mutex<Log>> = Arc::default();
    let log = received.clone();
    let receiver = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let signature = headers
                    .get("x-herald-signature")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let mut log = log.lock().unwrap();
                log.push((signature, body));
                if log.len() == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, receiver).await });

    let env = start(Options::default()).await;
    let url = format!("http://127.0.0.1:{}/hooks", addr.port());
    let bad = env
        .call(
            "PUT",
            "/v1/webhook",
            Some(&env.acme),
            Some(json!({"url": "https://x/", "secret": SECRET})),
        )
        .await;
    assert_eq!(
        (bad.code(), bad.body["error"]["field"].clone()),
        ("invalid_field", json!("url"))
    );
    let set = env
        .call(
            "PUT",
            "/v1/webhook",
            Some(&env.acme),
            Some(json!({"url": url, "secret": SECRET})),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    let got = env
        .call("GET", "/v1/webhook", Some(&env.acme_read), None)
        .await;
    assert_eq!(got.body, json!({"url": url}), "the secret is never shown");
    let theirs = env
        .call("GET", "/v1/webhook", Some(&env.globex), None)
        .await;
    assert_eq!(theirs.code(), "not_found");

    let mut ids = Vec::new();
    for n in 0..2 {
        let answer = env
            .call(
                "POST",
                "/v1/push",
                Some(&env.acme),
                Some(alert(&token(800 + n))),
            )
            .await;
        ids.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    // globex's outcomes never reach acme's webhook.
    env.call(
        "POST",
        "/v1/push",
        Some(&env.globex),
        Some(alert(&token(810))),
    )
    .await;

    let delivered = |log: &[(Option<String>, Bytes)]| -> Vec<String> {
        // Only events from acknowledged (2xx) requests count: every request after the first.
        log.iter()
            .skip(1)
            .flat_map(|(_, body)| {
                let v: Value = serde_json::from_slice(body).unwrap();
                v["events"].as_array().unwrap().clone()
            })
            .map(|e| e["push_id"].as_str().unwrap().to_owned())
            .collect()
    };
    eventually("both outcomes acknowledged by the webhook", || {
        let log = received.lock().unwrap();
        let seen = delivered(&log);
        ids.iter().all(|id| seen.contains(id))
    })
    .await;
    let log = received.lock().unwrap().clone();
    assert!(log.len() >= 2, "the failed request was retried");
    for (signature, body) in &log {
        assert_eq!(
            signature.as_deref(),
            Some(herald_node::api::webhook_signature(SECRET.as_bytes(), body).as_str())
        );
        let v: Value = serde_json::from_slice(body).unwrap();
        for event in v["events"].as_array().unwrap() {
            assert!(
                ids.contains(&event["push_id"].as_str().unwrap().to_owned()),
                "{event}"
            );
            assert_eq!(event["outcome"], "delivered");
        }
    }
    // The first (failed) request's events were sent again.
    let first: Value = serde_json::from_slice(&log[0].1).unwrap();
    let retried = delivered(&log);
    for event in first["events"].as_array().unwrap() {
        assert!(retried.contains(&event["push_id"].as_str().unwrap().to_owned()));
    }

    let removed = env
        .call("DELETE", "/v1/webhook", Some(&env.acme), None)
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let gone = env.call("GET", "/v1/webhook", Some(&env.acme), None).await;
    assert_eq!(gone.code(), "not_found");
    server.abort();
}
