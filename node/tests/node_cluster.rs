//! `herald node` beyond one in-process node:
//! - the `herald` binary: JSON logs, `SIGHUP` reloads, `SIGTERM` drains and exits 0;
//! - three nodes from config files with mutual TLS between them (certificates written as
//!   PEM files): every node becomes ready (leader known, state applied).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use herald_cluster::transport::NodeId;
use herald_cluster::transport::tls::ClusterCa;
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
