//! `herald node` beyond one in-process node:
//! - the `herald` binary: JSON logs, `SIGHUP` reloads, `SIGTERM` drains and exits 0;
//! - three nodes from config files with mutual TLS between them (certificates written as
//!   PEM files): every node becomes ready (leader known, state applied), and pushes sent to
//!   one node's HTTP API reach their shards' owners on the others, are delivered, and their
//!   status is answered by the node they were sent to — to their tenant only.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use herald_actors::seams::SystemClock;
use herald_cluster::transport::NodeId;
use herald_cluster::transport::tls::ClusterCa;
use herald_node::api::{ApiKeys, KeyRequest, Scope};
use herald_node::config::Overrides;
use herald_node::server::Node;
use herald_sim::emulator::{Emulator, EmulatorConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TEAM: &str = "TEAMAAAAAA";
const BUNDLE: &str = "com.example.acme";

/// A port that was free a moment ago (the listener is dropped before use).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// One HTTP/1.1 request with a bearer key and an optional JSON body: (status, JSON body).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// `POST /v1/push/batch` of `pushes` to `addr` with `key`, again until every push is accepted
/// (within 60 s): the push ids.
async fn batch_until_accepted(
    addr: SocketAddr,
    key: &str,
    pushes: &[serde_json::Value],
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let batch = serde_json::json!({ "pushes": pushes });
        let (code, body) = call(addr, "POST", "/v1/push/batch", key, Some(batch)).await;
        if code == 200 && body["accepted"] == pushes.len() {
            return body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch never accepted by {addr}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_status(addr: SocketAddr, path: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status(addr, path).await != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr}{path} never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Write the tenant key, the emulator CA and the API secret into `dir`; the `[apns]` and
/// `[[tenants]]` TOML for them.
fn common(dir: &Path, emulator: &Emulator) -> String {
    let key = emulator.core().generate_team_key(TEAM, &[BUNDLE]).unwrap();
    std::fs::write(dir.join("acme.p8"), &key.p8_pem).unwrap();
    std::fs::write(dir.join("emulator-ca.pem"), emulator.ca_pem().unwrap()).unwrap();
    std::fs::write(dir.join("api-key.secret"), "k".repeat(48)).unwrap();
    format!(
        r#"
[apns]
endpoint = "custom"
host = "127.0.0.1"
port = {port}
ca_file = "emulator-ca.pem"

[[tenants]]
id = "acme"
team_id = "{TEAM}"
key_id = "{kid}"
p8 = "acme.p8"
topics = ["{BUNDLE}"]
"#,
        port = emulator.addr().port(),
        kid = key.key_id
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_json_reloads_on_sighup_and_drains_on_sigterm() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        r#"
[node]
id = 1
api_listen = "{api}"
cluster_listen = "127.0.0.1:0"
data_dir = "data"
api_key_secret_file = "api-key.secret"
shutdown_deadline_secs = 10
"#
    ) + &common(dir.path(), &emulator);
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, config).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["node", "--config"])
        .arg(&path)
        .env("HERALD_LOG_FORMAT", "json")
        .env("HERALD_LOG_FILTER", "info")
        .env_remove("HERALD_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    wait_status(api, "/healthz", 200).await;
    wait_status(api, "/readyz", 200).await;
    assert_eq!(status(api, "/metrics").await, Some(200));

    let kill = |signal: &str| {
        let ok = Command::new("kill")
            .args([signal, pid.as_str()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} failed");
    };
    kill("-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(api, "/healthz").await,
        Some(200),
        "SIGHUP must not stop the node"
    );
    kill("-TERM");

    let exit = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    let (exit, stderr) = tokio::time::timeout(Duration::from_secs(60), exit)
        .await
        .expect("the node did not exit after SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit {exit:?}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(value.get("level").is_some(), "{line}");
    }
    for expected in [
        "herald node started",
        "SIGHUP: reloading",
        "termination signal received",
        "herald node stopped",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("PRIVATE KEY"), "key material logged");
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_mutual_tls_from_files_become_ready() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = ClusterCa::generate("herald-test").unwrap();
    ca.write_pem(&pki).unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} = \"127.0.0.1:{p}\"", i + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let common = common(dir.path(), &emulator);
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        ca.issue(NodeId(id)).unwrap().write_pem(&pki).unwrap();
        let config = format!(
            r#"
[node]
id = {id}
api_listen = "127.0.0.1:0"
cluster_listen = "127.0.0.1:{port}"
data_dir = "data-{id}"
api_key_secret_file = "api-key.secret"

[log]
filter = "warn"

[cluster]
peers = {{ {peers} }}

[cluster.tls]
ca = "pki/ca.pem"
cert = "pki/node-{id}.pem"
key = "pki/node-{id}.key.pem"
"#,
            port = ports[id as usize - 1]
        ) + &common;
        let path = dir.path().join(format!("node-{id}.toml"));
        std::fs::write(&path, config).unwrap();
        nodes.push(Node::start(&path, Overrides::default()).await.unwrap());
    }
    for node in &nodes {
        wait_status(node.api_addr(), "/readyz", 200).await;
    }

    // Wait until the planner spread the shards over the three nodes (same map everywhere).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let maps: Vec<_> = nodes
            .iter()
            .map(|n| {
                let maps = n.cluster().shard_maps().borrow().clone();
                maps.get(&n.config().node.region).cloned()
            })
            .collect();
        let spread = maps.iter().all(|m| {
            m.as_ref().is_some_and(|m| {
                m.owners
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    == 3
            })
        }) && maps.windows(2).all(|w| w[0] == w[1]);
        if spread {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shards never spread: {maps:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Pushes through node 1's HTTP API: the router sends each to its shard's owner.
    let keys = ApiKeys::hs256(&[b'k'; 48], Arc::new(SystemClock)).unwrap();
    let acme = keys
        .issue(
            &KeyRequest::tenant("acme", &[Scope::Push, Scope::Read]),
            "acme-1",
        )
        .unwrap()
        .key;
    let other = keys
        .issue(&KeyRequest::tenant("globex", &[Scope::Read]), "globex-1")
        .unwrap()
        .key;
    let api = nodes[0].api_addr();
    let pushes: Vec<serde_json::Value> = (0..24u8)
        .map(|i| {
            serde_json::json!({
                "device_token": hex::encode([i.wrapping_mul(37).wrapping_add(1); 32]),
                "topic": BUNDLE,
                "payload": {"aps": {"alert": format!("push {i}")}},
            })
        })
        .collect();
    // Right after start the shard map may still be on its way: retry the batch until taken.
    let ids = batch_until_accepted(api, &acme, &pushes).await;
    for id in &ids {
        let path = format!("/v1/pushes/{id}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (code, body) = call(api, "GET", &path, &acme, None).await;
            assert_eq!(code, 200, "{body}");
            if body["status"] == "delivered" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "push {id} never delivered: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Another tenant never reads it.
        let (code, _) = call(api, "GET", &path, &other, None).await;
        assert_eq!(code, 404);
    }
    assert_eq!(emulator.core().accepted_count(), 24);
    // Some were sent by the other nodes' engines (their shards' owners).
    let sent_elsewhere = ids
        .iter()
        .map(|id| herald_actors::PushId::from_u128(uuid::Uuid::parse_str(id).unwrap().as_u128()))
        .filter(|id| nodes[1..].iter().any(|n| n.engine().outcome(*id).is_some()))
        .count();
    let holders: Vec<Vec<bool>> = ids
        .iter()
        .map(|id| herald_actors::PushId::from_u128(uuid::Uuid::parse_str(id).unwrap().as_u128()))
        .map(|id| {
            nodes
                .iter()
                .map(|n| n.engine().outcome(id).is_some())
                .collect()
        })
        .collect();
    let shards: Vec<u32> = pushes
        .iter()
        .map(|p| {
            nodes[0]
                .engine()
                .shard_of(&p["device_token"].as_str().unwrap().parse().unwrap())
        })
        .collect();
    assert!(
        sent_elsewhere > 0,
        "every push was sent by node 1: {holders:?} {shards:?}"
    );

    // One provider token per signing key, cluster-wide: the leader signed it, every node's
    // tenant presents the same JWT.
    let kid = nodes[0]
        .reloader()
        .status("acme")
        .and_then(|s| s.key_id)
        .expect("acme signs with a key");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let jwts: Vec<Option<String>> = nodes
            .iter()
            .map(|n| {
                let minter = n.provider_tokens().minter(&kid)?;
                Some(minter.cached()?.jwt().to_owned())
            })
            .collect();
        if jwts[0].is_some() && jwts.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes present different provider tokens: {:?}",
            jwts.iter()
                .map(|j| j.as_ref().map(|j| j.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A key revoked on node 1 is refused by node 2 (the revocation is replicated).
    let doomed = keys
        .issue(&KeyRequest::tenant("acme", &[Scope::Read]), "acme-doomed")
        .unwrap()
        .key;
    let other_api = nodes[1].api_addr();
    let probe = format!("/v1/pushes/{}", ids[0]);
    let (code, _) = call(other_api, "GET", &probe, &doomed, None).await;
    assert_ne!(code, 401, "the key works before its revocation");
    let admin = keys.issue(&KeyRequest::admin(), "admin-1").unwrap().key;
    let (code, body) = call(api, "DELETE", "/v1/keys/acme-doomed", &admin, None).await;
    assert_eq!(code, 204, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = call(other_api, "GET", &probe, &doomed, None).await;
        if code == 401 {
            assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2 still takes the revoked key: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Devices and feedback are replicated: registered through node 1, listed by node 2,
    // broadcast to from node 3; an invalidation learned by any engine is in every node's
    // feedback, and the invalidated device leaves the registry.
    let device_tokens: Vec<String> = (0..4u8).map(|i| hex::encode([0xD0 + i; 32])).collect();
    for (i, token) in device_tokens.iter().enumerate() {
        let tags: Vec<&str> = if i % 2 == 0 { vec!["even"] } else { vec![] };
        let request = serde_json::json!({"token": token, "topic": BUNDLE, "tags": tags});
        let (code, body) = call(api, "POST", "/v1/devices", &acme, Some(request)).await;
        assert_eq!(code, 201, "{body}");
    }
    let listed = |body: &serde_json::Value| {
        body["devices"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|d| d["token"].as_str().unwrap_or_default().to_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = call(other_api, "GET", "/v1/devices", &acme, None).await;
        assert_eq!(code, 200, "{body}");
        if listed(&body) == device_tokens {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2 never listed the devices: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = call(other_api, "GET", "/v1/devices", &other, None).await;
    assert!(code != 200 || listed(&body).is_empty(), "{code} {body}");
    let third_api = nodes[2].api_addr();
    let broadcast = serde_json::json!({
        "topic": BUNDLE, "tags": ["even"], "payload": {"aps": {"alert": "to the even ones"}},
    });
    let (code, body) = call(third_api, "POST", "/v1/broadcast", &acme, Some(broadcast)).await;
    assert_eq!(
        (code, &body["accepted"]),
        (200, &serde_json::json!(2)),
        "{body}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while emulator.core().accepted_count() < 24 + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broadcast was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // APNs says device 1 is gone (after it registered): a push to it learns so.
    let later_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    emulator.core().set_device(
        &device_tokens[1],
        herald_sim::emulator::DeviceState::Unregistered { at_ms: later_ms },
    );
    let push = serde_json::json!({
        "device_token": device_tokens[1], "topic": BUNDLE, "payload": {"aps": {"alert": "hi"}},
    });
    let (code, body) = call(api, "POST", "/v1/push", &acme, Some(push)).await;
    assert_eq!(code, 202, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, feedback) = call(third_api, "GET", "/v1/feedback", &acme, None).await;
        assert_eq!(code, 200, "{feedback}");
        let (_, devices) = call(other_api, "GET", "/v1/devices", &acme, None).await;
        let fed_back = feedback["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["token"] == device_tokens[1]));
        if fed_back && !listed(&devices).contains(&device_tokens[1]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the invalidation never reached node 3's feedback and node 2's registry: \
             {feedback} {devices}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A webhook set through node 1 is known to node 2 (every node posts the outcomes it
    // finishes); removed through node 3, it is gone on node 1.
    let hook =
        serde_json::json!({"url": "http://127.0.0.1:9/herald", "secret": "s3cret-s3cret-s3cret"});
    let (code, body) = call(api, "PUT", "/v1/webhook", &acme, Some(hook)).await;
    assert_eq!(code, 200, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = call(other_api, "GET", "/v1/webhook", &acme, None).await;
        if code == 200 {
            assert_eq!(body["url"], "http://127.0.0.1:9/herald", "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2 never learned the webhook: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Node 3 follows the replicated webhooks too; once it has it, it can remove it.
        let (code, body) = call(third_api, "DELETE", "/v1/webhook", &acme, None).await;
        if code == 204 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 never removed the webhook: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while call(api, "GET", "/v1/webhook", &acme, None).await.0 != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 kept the removed webhook"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A tenant created through node 1's API is served by every node (its pushes go to
    // their shards' owners): pushes sent to node 2 are delivered, node 3 lists it. A key
    // that does not load is refused before anything is replicated.
    let beta_key = emulator
        .core()
        .generate_team_key("TEAMBBBBBB", &["com.example.beta"])
        .unwrap();
    let create = serde_json::json!({
        "id": "beta", "team_id": "TEAMBBBBBB", "key_id": beta_key.key_id, "p8_pem": beta_key.p8_pem,
    });
    let (code, body) = call(api, "POST", "/v1/tenants", &admin, Some(create.clone())).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = call(other_api, "POST", "/v1/tenants", &admin, Some(create)).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("tenant_exists")),
        "{body}"
    );
    let bad = serde_json::json!({
        "id": "gamma", "team_id": "TEAMBBBBBB", "key_id": beta_key.key_id, "p8_pem": "not a key",
    });
    let (code, body) = call(api, "POST", "/v1/tenants", &admin, Some(bad)).await;
    assert_eq!(code, 400, "{body}");
    let beta = keys
        .issue(
            &KeyRequest::tenant("beta", &[Scope::Push, Scope::Read]),
            "beta-1",
        )
        .unwrap()
        .key;
    let beta_pushes: Vec<serde_json::Value> = (0..24u8)
        .map(|i| {
            serde_json::json!({
                "device_token": hex::encode([i.wrapping_mul(53).wrapping_add(7); 32]),
                "topic": "com.example.beta",
                "payload": {"aps": {"alert": format!("beta {i}")}},
            })
        })
        .collect();
    let delivered_before = emulator.core().accepted_count();
    // Until every node runs beta, a push to one that does not yet is refused: retry.
    let beta_ids = batch_until_accepted(other_api, &beta, &beta_pushes).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while emulator.core().accepted_count() < delivered_before + 24 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "beta's pushes were not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = call(
        other_api,
        "GET",
        &format!("/v1/pushes/{}", beta_ids[0]),
        &beta,
        None,
    )
    .await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("delivered")),
        "{body}"
    );
    // Every node runs beta, so every node serves its signing key.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !nodes
        .iter()
        .all(|n| n.provider_tokens().minter(&beta_key.key_id).is_some())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a node never served beta's key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body) = call(third_api, "GET", "/v1/tenants/beta", &admin, None).await;
    assert_eq!(
        (code, body["key_id"].as_str()),
        (200, Some(beta_key.key_id.as_str())),
        "{body}"
    );

    // Membership through the API: a fourth node starts with `cluster.join` and is added
    // with `POST /v1/cluster/members`; it becomes an active voter owning shards; then it is
    // drained away with `POST /v1/cluster/members/4/drain`.
    let (code, body) = call(api, "GET", "/v1/cluster", &admin, None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["members"].as_array().unwrap().len(), 3, "{body}");
    let (code, _) = call(api, "GET", "/v1/cluster", &acme, None).await;
    assert_eq!(code, 403, "a tenant key is not an admin key");
    let port4 = free_port();
    ca.issue(NodeId(4)).unwrap().write_pem(&pki).unwrap();
    let config4 = format!(
        r#"
[node]
id = 4
api_listen = "127.0.0.1:0"
cluster_listen = "127.0.0.1:{port4}"
data_dir = "data-4"
api_key_secret_file = "api-key.secret"

[log]
filter = "warn"

[cluster]
join = true
peers = {{ {peers}, 4 = "127.0.0.1:{port4}" }}

[cluster.tls]
ca = "pki/ca.pem"
cert = "pki/node-4.pem"
key = "pki/node-4.key.pem"
"#
    ) + &common;
    let path4 = dir.path().join("node-4.toml");
    std::fs::write(&path4, config4).unwrap();
    let node4 = Node::start(&path4, Overrides::default()).await.unwrap();
    let region = nodes[0].config().node.region.clone();
    let join = serde_json::json!({"id": 4, "addr": format!("127.0.0.1:{port4}"), "region": region});
    let (code, body) = call(
        api,
        "POST",
        "/v1/cluster/members",
        &admin,
        Some(join.clone()),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = call(
        api,
        "POST",
        "/v1/cluster/members",
        &admin,
        Some(serde_json::json!({"id": 4, "addr": "127.0.0.1:1", "region": region})),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("membership_conflict"))
    );
    let member4 = |body: &serde_json::Value| {
        body["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == 4)
            .cloned()
            .unwrap_or_default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = call(api, "GET", "/v1/cluster", &admin, None).await;
        let m = member4(&body);
        let owns = body["regions"][0]["owned"]["4"].as_u64().unwrap_or(0);
        if m["state"] == "active" && m["voting"] == "voter" && owns > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 4 never joined: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Node 4 joined after beta was created: it serves beta too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while call(node4.api_addr(), "GET", "/v1/tenants/beta", &admin, None)
        .await
        .0
        != 200
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 4 never learned tenant beta"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body) = call(api, "POST", "/v1/cluster/members/4/drain", &admin, None).await;
    assert_eq!(code, 202, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = call(api, "GET", "/v1/cluster", &admin, None).await;
        if member4(&body)["state"] == "removed" {
            assert!(body["regions"][0]["owned"]["4"].is_null(), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 4 never left: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body) = call(api, "POST", "/v1/cluster/members/9/drain", &admin, None).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("member_not_found"))
    );
    node4.shutdown().await;

    // Removed through node 3, tenant beta is gone from node 1 too.
    let (code, body) = call(third_api, "DELETE", "/v1/tenants/beta", &admin, None).await;
    assert_eq!(code, 204, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while call(api, "GET", "/v1/tenants/beta", &admin, None).await.0 != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 kept the removed tenant"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body) = call(third_api, "DELETE", "/v1/tenants/beta", &admin, None).await;
    assert_eq!(code, 404, "{body}");
    // No node serves beta's signing key any more (the leader stops minting for it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while nodes
        .iter()
        .any(|n| n.provider_tokens().minter(&beta_key.key_id).is_some())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a node still serves the removed tenant's key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A certificate naming another node is refused at start.
    let wrong = dir.path().join("node-1.toml");
    let text = std::fs::read_to_string(&wrong)
        .unwrap()
        .replace("pki/node-1.pem", "pki/node-2.pem")
        .replace("pki/node-1.key.pem", "pki/node-2.key.pem")
        .replace("data-1", "data-x");
    std::fs::write(&wrong, text).unwrap();
    let err = Node::start(&wrong, Overrides::default()).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("names node 2"),
        "unexpected error: {err:#}"
    );

    for node in nodes {
        let summary = node.shutdown().await;
        assert!(
            summary.engine.drained && summary.wal_released,
            "{summary:?}"
        );
    }
    emulator.shutdown().await;
}
