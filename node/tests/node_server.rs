//! `herald node` in process: a temp config on 127.0.0.1 ports against the APNs emulator.
//! - `/healthz`, `/readyz`, `/metrics` answer; `/readyz` turns 503 while shutting down;
//! - a tenant's `.p8` (and key id) swapped while pushes flow: the reloader hot-swaps it,
//!   no push is lost, and the emulator sees the new key (the old one is revoked there and
//!   later pushes still succeed);
//! - a broken key file keeps the old credentials;
//! - shutdown (the SIGTERM path) drains and stops every part; the node restarts on the same
//!   data directory;
//! - a tenant created through the API restarts with the node and delivers its pushes pending
//!   in the write-ahead log;
//! - two `.p8` files claiming one key id stop the node at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_actors::apns::{DeviceToken, Notification, Payload, PushType, Topic};
use herald_actors::{Herald, Outcome, PushError, PushId};
use herald_node::config::Overrides;
use herald_node::server::Node;
use herald_sim::emulator::{Emulator, EmulatorConfig, EmulatorCore, FaultProfile, TeamConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Mutex;

const TEAM: &str = "TEAMAAAAAA";
const BUNDLE: &str = "com.example.acme";

struct Setup {
    dir: tempfile::TempDir,
    emulator: Emulator,
    config_path: PathBuf,
}

/// Write key version `version` of the tenant as `keys.v<version>/{acme.p8,acme.kid}`, and
/// point the `keys` symlink at it atomically (as a Kubernetes secret volume does).
fn install_key(dir: &Path, core: &EmulatorCore, version: u32) -> String {
    let key = core.generate_team_key(TEAM, &[BUNDLE]).unwrap();
    let versioned = dir.join(format!("keys.v{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("acme.p8"), &key.p8_pem).unwrap();
    std::fs::write(versioned.join("acme.kid"), format!("{}\n", key.key_id)).unwrap();
    let tmp = dir.join("keys.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("keys.v{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("keys")).unwrap();
    key.key_id
}

async fn setup(extra_tenant_toml: &str) -> (Setup, String) {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kid = install_key(dir.path(), emulator.core(), 1);
    std::fs::write(
        dir.path().join("emulator-ca.pem"),
        emulator.ca_pem().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("api-key.secret"), "k".repeat(48)).unwrap();
    let config = format!(
        r#"
[node]
id = 1
region = "test"
api_listen = "127.0.0.1:0"
cluster_listen = "127.0.0.1:0"
data_dir = "data"
api_key_secret_file = "api-key.secret"
shutdown_deadline_secs = 20
reload_poll_secs = 1

[log]
filter = "warn"

[limits]
shards = 4

[apns]
endpoint = "custom"
host = "127.0.0.1"
port = {port}
ca_file = "emulator-ca.pem"

[[tenants]]
id = "acme"
team_id = "{TEAM}"
key_id_file = "keys/acme.kid"
p8 = "keys/acme.p8"
topics = ["{BUNDLE}"]
connections_max = 2
{extra_tenant_toml}
"#,
        port = emulator.addr().port()
    );
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    (
        Setup {
            dir,
            emulator,
            config_path,
        },
        kid,
    )
}

/// A minimal HTTP/1.1 GET: (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// A minimal HTTP/1.1 POST with a bearer key and a JSON body: (status, body).
async fn post(addr: std::net::SocketAddr, path: &str, key: &str, body: &str) -> (u16, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, request).await
}

/// Send `request` on a new connection and read the answer to its end: (status, body).
async fn exchange(addr: std::net::SocketAddr, request: String) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn notification(i: u64) -> Notification {
    let token = DeviceToken::from_bytes(&[(i % 251) as u8; 32]).unwrap();
    let mut payload = Payload::new();
    payload.alert(format!("push {i}"));
    Notification::builder(token, BUNDLE.parse::<Topic>().unwrap(), PushType::Alert)
        .payload(&payload)
        .build()
        .unwrap()
}

/// Send `count` pushes starting at `from`, in batches, retrying `Overloaded`.
async fn send(engine: &Herald, from: u64, count: u64) -> Vec<PushId> {
    send_as(engine, "acme", from, count).await
}

/// [`send`] for `tenant`.
async fn send_as(engine: &Herald, tenant: &str, from: u64, count: u64) -> Vec<PushId> {
    let mut ids = Vec::new();
    let batch: Vec<Notification> = (from..from + count).map(notification).collect();
    for n in batch {
        loop {
            match engine.send(tenant, n.clone()).await {
                Ok(id) => {
                    ids.push(id);
                    break;
                }
                Err(PushError::Overloaded { retry_after }) => tokio::time::sleep(retry_after).await,
                Err(e) => panic!("send failed: {e}"),
            }
        }
    }
    ids
}

async fn all_delivered(engine: &Herald, ids: &[PushId]) {
    wait_until("every push's outcome", async || {
        let mut done = 0;
        for id in ids {
            match engine.outcome(*id) {
                Some(Outcome::Delivered { .. }) => done += 1,
                Some(other) => panic!("push {id:?} ended {other:?}"),
                None => {}
            }
        }
        done == ids.len()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_answer_and_shutdown_drains() {
    let (s, _) = setup("").await;
    let node = Node::start(&s.config_path, Overrides::default())
        .await
        .unwrap();
    let addr = node.api_addr();

    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    wait_until("/readyz 200 (leader elected, state applied)", async || {
        get(addr, "/readyz").await.0 == 200
    })
    .await;
    let (_, body) = get(addr, "/readyz").await;
    assert!(body.contains("\"cluster\":\"ready\""), "{body}");

    let ids = send(node.engine(), 0, 50).await;
    all_delivered(node.engine(), &ids).await;
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("herald_pushes_total{outcome=\"delivered\""),
        "metrics lack the delivered counter:\n{body}"
    );

    // The SIGTERM path: readiness turns off at once while the engine drains (slow APNs
    // answers keep the drain going for a while).
    let slow = FaultProfile {
        slow_response_rate: 1.0,
        slow_response_ms: 300,
        ..FaultProfile::default()
    };
    s.emulator.core().set_faults(slow).unwrap();
    let accepted_before = s.emulator.core().accepted_count();
    let more = send(node.engine(), 1_000, 50).await;
    let probe = tokio::spawn(async move {
        let mut seen_503 = false;
        for _ in 0..200 {
            let Ok(status) = tokio::spawn(get(addr, "/readyz")).await.map(|r| r.0) else {
                break;
            };
            if status == 503 {
                seen_503 = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen_503
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let summary = node.shutdown().await;
    assert!(summary.engine.drained, "{summary:?}");
    assert_eq!(summary.engine.remaining, 0);
    assert!(summary.http_clean && summary.wal_released, "{summary:?}");
    assert!(
        s.emulator.core().accepted_count() >= accepted_before + more.len() as u64,
        "the drain did not deliver every accepted push"
    );
    assert!(
        probe.await.unwrap(),
        "/readyz never answered 503 while draining"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "HTTP server still up"
    );
    s.emulator
        .core()
        .set_faults(FaultProfile::default())
        .unwrap();

    // The same data directory starts again (stores released).
    let node = Node::start(&s.config_path, Overrides::default())
        .await
        .unwrap();
    let ids = send(node.engine(), 2_000, 10).await;
    all_delivered(node.engine(), &ids).await;
    assert!(node.shutdown().await.engine.drained);
    s.emulator.shutdown().await;
    drop(s.dir);
}

/// A tenant created through the API is replicated with its key: after a restart the engine
/// starts with it, so its pushes still pending in the write-ahead log are delivered (not
/// failed as pushes of an unknown tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tenants_restart_with_the_node_and_deliver_their_pending_pushes() {
    let (s, _) = setup("").await;
    let overrides = Overrides {
        shutdown_deadline_secs: Some(1),
        ..Overrides::default()
    };
    let node = Node::start(&s.config_path, overrides.clone())
        .await
        .unwrap();
    let addr = node.api_addr();
    wait_until("/readyz 200", async || get(addr, "/readyz").await.0 == 200).await;
    let keys =
        herald_node::api::ApiKeys::hs256(&[b'k'; 48], Arc::new(herald_actors::seams::SystemClock))
            .unwrap();
    let admin = keys
        .issue(&herald_node::api::KeyRequest::admin(), "admin-1")
        .unwrap()
        .key;
    let beta_key = s
        .emulator
        .core()
        .generate_team_key(TEAM, &[BUNDLE])
        .unwrap();
    let create = serde_json::json!({
        "id": "beta", "team_id": TEAM, "key_id": beta_key.key_id, "p8_pem": beta_key.p8_pem,
    });
    let (status, body) = post(addr, "/v1/tenants", &admin, &create.to_string()).await;
    assert_eq!(status, 201, "{body}");

    // APNs answers slowly: the shutdown deadline passes with beta's pushes in flight.
    let slow = FaultProfile {
        slow_response_rate: 1.0,
        slow_response_ms: 30_000,
        ..FaultProfile::default()
    };
    s.emulator.core().set_faults(slow).unwrap();
    let ids = send_as(node.engine(), "beta", 0, 20).await;
    let summary = node.shutdown().await;
    assert!(
        !summary.engine.drained && summary.engine.remaining > 0,
        "{summary:?}"
    );
    s.emulator
        .core()
        .set_faults(FaultProfile::default())
        .unwrap();

    let node = Node::start(&s.config_path, overrides).await.unwrap();
    all_delivered(node.engine(), &ids).await;
    assert!(node.shutdown().await.engine.drained);
    s.emulator.shutdown().await;
    drop(s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p8_swap_while_pushes_flow_loses_nothing_and_uses_the_new_key() {
    let (s, kid1) = setup("").await;
    let node = Node::start(&s.config_path, Overrides::default())
        .await
        .unwrap();
    let engine = node.engine().clone();
    let reloader = node.reloader().clone();
    assert_eq!(
        reloader.status("acme").unwrap().key_id.as_deref(),
        Some(kid1.as_str())
    );

    // Pushes flow in the background during the swap.
    let sent = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let flow = {
        let (engine, sent, stop) = (engine.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 10_000;
            while !stop.load(Ordering::Acquire) {
                let ids = send(&engine, i, 10).await;
                sent.lock().await.extend(ids);
                i += 10;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_until("pushes flowing", async || sent.lock().await.len() >= 50).await;

    // A broken key file is refused; the old credentials stay.
    std::fs::create_dir_all(s.dir.path().join("keys.v2")).unwrap();
    std::fs::write(s.dir.path().join("keys.v2/acme.p8"), "not a key").unwrap();
    std::fs::write(s.dir.path().join("keys.v2/acme.kid"), "BROKENKEY1").unwrap();
    let tmp = s.dir.path().join("keys.tmp");
    std::os::unix::fs::symlink("keys.v2", &tmp).unwrap();
    std::fs::rename(&tmp, s.dir.path().join("keys")).unwrap();
    wait_until("the broken key reported", async || {
        reloader.status("acme").unwrap().last_error.is_some()
    })
    .await;
    let status = reloader.status("acme").unwrap();
    assert_eq!(
        status.key_id.as_deref(),
        Some(kid1.as_str()),
        "old key kept"
    );
    assert!(status.last_error.unwrap().contains("p8"));

    // The real new key.
    let kid2 = install_key(s.dir.path(), s.emulator.core(), 3);
    assert_ne!(kid1, kid2);
    wait_until("the new key applied", async || {
        reloader.status("acme").unwrap().key_id.as_deref() == Some(kid2.as_str())
    })
    .await;
    let before = sent.lock().await.len();
    wait_until("pushes flowing after the swap", async || {
        sent.lock().await.len() >= before + 50
    })
    .await;
    stop.store(true, Ordering::Release);
    flow.await.unwrap();
    let ids = sent.lock().await.clone();
    all_delivered(&engine, &ids).await;

    // Revoke the old key at the emulator (same key id, another public key): a push signed
    // with it would now be refused 403. Every later push is delivered: the pool uses kid2.
    let (other, _) = TeamConfig::generate(TEAM, &kid1, &[BUNDLE]).unwrap();
    s.emulator
        .core()
        .add_team_key(TEAM, &[BUNDLE], &other.keys[0])
        .unwrap();
    let later = send(&engine, 50_000, 100).await;
    all_delivered(&engine, &later).await;
    let reasons = s.emulator.core().answers_by_reason();
    assert!(
        !reasons.contains_key("InvalidProviderToken"),
        "a push reached the emulator signed with the revoked key: {reasons:?}"
    );
    assert!(s.emulator.core().accepted_count() >= (ids.len() + later.len()) as u64);

    assert!(node.shutdown().await.engine.drained);
    s.emulator.shutdown().await;
}

/// Two tenants whose `.p8` files claim one key id but hold different keys: the node refuses
/// to start (naming the tenant), rather than let one present the other's provider tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_under_one_key_id_are_refused_at_start() {
    let extra = r#"
[[tenants]]
id = "impostor"
team_id = "TEAMAAAAAA"
key_id_file = "keys/acme.kid"
p8 = "other.p8"
topics = ["com.example.acme"]
"#;
    let (s, _) = setup(extra).await;
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    std::fs::write(s.dir.path().join("other.p8"), other).unwrap();
    let error = Node::start(&s.config_path, Overrides::default())
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("impostor") && message.contains("registered with another key"),
        "{message}"
    );
    s.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_tenants_and_keeps_everything_on_a_bad_config() {
    let (s, kid1) = setup("").await;
    let node = Node::start(&s.config_path, Overrides::default())
        .await
        .unwrap();
    let reloader = node.reloader().clone();
    assert_eq!(reloader.poll().await, None, "nothing changed yet");

    let replace_config = |text: String| {
        let tmp = s.dir.path().join("herald.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &s.config_path).unwrap();
    };
    let original = std::fs::read_to_string(&s.config_path).unwrap();

    // An invalid configuration changes nothing and is reported once.
    replace_config(original.replace("[limits]", "[limits]\nshardz = 3"));
    let report = reloader.reload().await;
    assert!(report.updated.is_empty() && report.added.is_empty());
    assert!(report.errors[0].contains("shardz"), "{report:?}");
    assert_eq!(
        reloader.poll().await,
        None,
        "a bad file is reported once, not every poll"
    );
    assert_eq!(
        reloader.status("acme").unwrap().key_id.as_deref(),
        Some(kid1.as_str())
    );

    // A new tenant in the file is added to the running engine.
    let key = s
        .emulator
        .core()
        .generate_team_key("TEAMGLOBEX", &["com.example.globex"])
        .unwrap();
    std::fs::write(s.dir.path().join("globex.p8"), &key.p8_pem).unwrap();
    replace_config(format!(
        "{original}\n[[tenants]]\nid = \"globex\"\nteam_id = \"TEAMGLOBEX\"\nkey_id = \"{}\"\n\
         p8 = \"globex.p8\"\ntopics = [\"com.example.globex\"]\n",
        key.key_id
    ));
    let report = reloader.poll().await.expect("the config change is seen");
    assert_eq!(report.added, vec!["globex".to_owned()], "{report:?}");
    assert!(report.updated.is_empty(), "acme did not change: {report:?}");
    node.engine().tenant_status("globex").await.unwrap();
    assert_eq!(
        reloader
            .tenant_sections()
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        ["acme", "globex"]
    );

    assert!(node.shutdown().await.engine.drained);
    s.emulator.shutdown().await;
}
