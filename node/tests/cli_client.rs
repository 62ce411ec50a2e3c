//! The API's command-line clients, as a user runs them: the real `herald` binary against a
//! real node (`Node::start`, HTTP API over the cluster router) and the TLS emulator.
//! `herald admin keys issue` bootstraps keys offline from the node's secret; `herald push`
//! pushes and waits for the outcome; `herald admin status|members|shards|tenants` read the
//! cluster; wrong input and wrong scopes fail with the API's error and a non-zero status.

use std::path::Path;
use std::process::{Command, Output};

use herald_node::config::Overrides;
use herald_node::server::Node;
use herald_sim::emulator::{Emulator, EmulatorConfig};

const TEAM: &str = "TEAMCLI001";
const BUNDLE: &str = "com.example.cli";

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("HERALD_URL")
        .env_remove("HERALD_API_KEY")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_config(dir: &Path, emulator: &Emulator) -> std::path::PathBuf {
    let key = emulator.core().generate_team_key(TEAM, &[BUNDLE]).unwrap();
    std::fs::write(dir.join("acme.p8"), &key.p8_pem).unwrap();
    std::fs::write(dir.join("emulator-ca.pem"), emulator.ca_pem().unwrap()).unwrap();
    std::fs::write(dir.join("api-key.secret"), "s".repeat(48)).unwrap();
    let config = format!(
        r#"
[node]
id = 1
region = "eu"
api_listen = "127.0.0.1:0"
cluster_listen = "127.0.0.1:0"
data_dir = "data"
api_key_secret_file = "api-key.secret"

[log]
filter = "warn"

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
    );
    let path = dir.join("herald.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_admin_commands_against_a_node() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &emulator);
    let node = Node::start(&config, Overrides::default()).await.unwrap();
    let url = format!("http://{}", node.api_addr());
    let secret = dir.path().join("api-key.secret");
    let secret = secret.to_str().unwrap();

    // Keys, offline from the secret.
    let admin = herald(&["admin", "keys", "issue", "--secret-file", secret, "--admin"]);
    assert!(admin.status.success(), "{}", stderr(&admin));
    let admin = stdout(&admin).trim().to_owned();
    let acme = herald(&[
        "admin",
        "keys",
        "issue",
        "--secret-file",
        secret,
        "--tenant",
        "acme",
        "--scopes",
        "push,read",
    ]);
    assert!(acme.status.success(), "{}", stderr(&acme));
    let acme = stdout(&acme).trim().to_owned();
    let bad_scope = herald(&[
        "admin",
        "keys",
        "issue",
        "--secret-file",
        secret,
        "--tenant",
        "acme",
        "--scopes",
        "root",
    ]);
    assert!(!bad_scope.status.success());
    assert!(
        stderr(&bad_scope).contains("not push or read"),
        "{}",
        stderr(&bad_scope)
    );

    // Wait for the single node to lead and own its shards, then push and wait.
    let token = "7a".repeat(32);
    let mut pushed = None;
    for _ in 0..100 {
        let out = herald(&[
            "push", "--url", &url, "--key", &acme, "--token", &token, "--topic", BUNDLE, "--alert",
            "hello", "--wait",
        ]);
        if out.status.success() {
            pushed = Some(out);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let pushed = pushed.expect("the push never went through");
    let text = stdout(&pushed);
    assert!(
        text.starts_with("accepted ") && text.contains("delivered"),
        "{text}"
    );
    assert_eq!(emulator.core().accepted_count(), 1);

    // A bad token: the API's error, exit status 2, nothing sent.
    let bad = herald(&[
        "push", "--url", &url, "--key", &acme, "--token", "xyz", "--topic", BUNDLE, "--alert", "x",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("bad_device_token"),
        "{}",
        stderr(&bad)
    );
    assert_eq!(emulator.core().accepted_count(), 1);

    // Cluster status, members, shards, tenants with the admin key.
    let status = herald(&["admin", "status", "--url", &url, "--key", &admin]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(stdout(&status).contains("leader 1"), "{}", stdout(&status));
    let members = herald(&["admin", "members", "--url", &url, "--key", &admin]);
    assert!(stdout(&members).contains("active") && stdout(&members).contains("eu"));
    let shards = herald(&["admin", "shards", "--url", &url, "--key", &admin]);
    assert!(stdout(&shards).contains("1: 4"), "{}", stdout(&shards));
    let tenants = herald(&["admin", "tenants", "list", "--url", &url, "--key", &admin]);
    assert!(stdout(&tenants).contains("acme"), "{}", stdout(&tenants));

    // A tenant key is not an admin key; an unreachable node is named.
    let denied = herald(&["admin", "status", "--url", &url, "--key", &acme]);
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains("insufficient_scope"),
        "{}",
        stderr(&denied)
    );
    let down = herald(&[
        "admin",
        "status",
        "--url",
        "http://127.0.0.1:9",
        "--key",
        &admin,
    ]);
    assert!(!down.status.success());
    assert!(stderr(&down).contains("cannot reach"), "{}", stderr(&down));
    // The key never shows in an error.
    assert!(!stderr(&denied).contains(&acme));

    let summary = node.shutdown().await;
    assert!(summary.engine.drained, "{summary:?}");
    emulator.shutdown().await;
}
