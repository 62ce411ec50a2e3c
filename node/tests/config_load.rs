//! `herald node` configuration: layering (file < env < flags), validation messages that name
//! the file and the field, unknown keys refused, secrets never printed, `--check-config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use herald_node::config::{ApnsEnvironment, LogFormat, NodeConfig, Overrides};
use herald_sim::emulator::TeamConfig;

/// A directory with an API-key secret, a `.p8` and a config referencing them.
struct Fixture {
    dir: tempfile::TempDir,
}

const P8_MARKER: &str = "PRIVATE KEY";

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api-key.secret"), "s3cr3t-".repeat(8)).unwrap();
        let (_, key) =
            TeamConfig::generate("TEAMAAAAAA", "KEYAAAAAAA", &["com.example.a"]).unwrap();
        std::fs::write(dir.path().join("AuthKey_KEYAAAAAAA.p8"), &key.p8_pem).unwrap();
        Fixture { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, text: &str) -> PathBuf {
        let path = self.path().join("herald.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

const BASE: &str = r#"
[node]
id = 3
region = "eu-west"
api_listen = "127.0.0.1:18080"
data_dir = "data"
api_key_secret_file = "api-key.secret"

[log]
format = "json"
filter = "info"

[[tenants]]
id = "acme"
team_id = "TEAMAAAAAA"
key_id = "KEYAAAAAAA"
p8 = "AuthKey_KEYAAAAAAA.p8"
topics = ["com.example.a"]
"#;

#[test]
fn file_values_and_defaults() {
    let f = Fixture::new();
    let path = f.write(BASE);
    let config = NodeConfig::load(&path, &Overrides::default()).unwrap();
    assert_eq!(config.node.id, 3);
    assert_eq!(config.node.region, "eu-west");
    assert_eq!(config.node.data_dir, f.path().join("data"));
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.apns.endpoint, ApnsEnvironment::Production);
    assert_eq!(
        config.tenants[0].p8.as_deref(),
        Some(f.path().join("AuthKey_KEYAAAAAAA.p8").as_path())
    );
    assert_eq!(
        config.peer_addresses().len(),
        1,
        "no peers: a single-node cluster"
    );
}

#[test]
fn overrides_win_over_the_file() {
    let f = Fixture::new();
    let path = f.write(BASE);
    let overrides = Overrides {
        region: Some("us-east".into()),
        api_listen: Some("127.0.0.1:19090".parse().unwrap()),
        log_format: Some(LogFormat::Text),
        shards: Some(16),
        data_dir: Some(PathBuf::from("elsewhere")),
        ..Overrides::default()
    };
    let config = NodeConfig::load(&path, &overrides).unwrap();
    assert_eq!(config.node.region, "us-east");
    assert_eq!(config.node.api_listen.port(), 19090);
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.limits.shards, 16);
    assert_eq!(
        config.node.data_dir,
        PathBuf::from("elsewhere"),
        "flag paths: as given"
    );
    assert_eq!(
        config.api_key_secret().unwrap().expose().len(),
        "s3cr3t-".len() * 8
    );
    assert_eq!(config.node.id, 3, "not overridden: from the file");
}

#[test]
fn unknown_keys_are_refused_naming_file_and_key() {
    let f = Fixture::new();
    let path = f.write(&BASE.replace(
        "region = \"eu-west\"",
        "region = \"eu-west\"\nreigon = \"x\"",
    ));
    let err = NodeConfig::load(&path, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("herald.toml"), "{err}");
    assert!(err.contains("reigon"), "{err}");

    let path = f.write(&format!("{BASE}\n[apns]\nendpont = \"sandbox\"\n"));
    let err = NodeConfig::load(&path, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("endpont"), "{err}");
}

#[test]
fn invalid_values_name_every_bad_field() {
    let f = Fixture::new();
    let text = BASE
        .replace("id = 3", "id = 0")
        .replace("team_id = \"TEAMAAAAAA\"", "team_id = \"short\"")
        .replace("topics = [\"com.example.a\"]", "topics = []")
        + "\n[limits]\nshards = 0\n";
    let path = f.write(&text);
    let err = NodeConfig::load(&path, &Overrides::default()).unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    for field in [
        "node.id",
        "limits.shards",
        "tenants[0].team_id",
        "tenants[0].topics",
    ] {
        assert!(fields.contains(&field), "{field} missing from {fields:?}");
    }
    assert!(err.to_string().contains("herald.toml"), "{err}");
}

#[test]
fn missing_files_and_bad_combinations_are_reported() {
    let f = Fixture::new();
    let text = BASE.replace("AuthKey_KEYAAAAAAA.p8", "missing.p8")
        + "\n[cluster]\npeers = { 3 = \"127.0.0.1:7003\", 4 = \"127.0.0.1:7004\" }\n"
        + "\n[apns]\nendpoint = \"custom\"\n";
    let path = f.write(&text);
    let err = NodeConfig::load(&path, &Overrides::default()).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("tenants[0].p8") && shown.contains("missing.p8"),
        "{shown}"
    );
    assert!(shown.contains("cluster.tls: required"), "{shown}");
    assert!(shown.contains("apns.host: required"), "{shown}");
}

#[test]
fn weak_api_key_secret_is_refused() {
    let f = Fixture::new();
    std::fs::write(f.path().join("api-key.secret"), "short\n").unwrap();
    let path = f.write(BASE);
    let err = NodeConfig::load(&path, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("node.api_key_secret_file"), "{err}");
    assert!(
        !err.contains("short"),
        "the secret leaked into the message: {err}"
    );
}

#[test]
fn unauthenticated_raft_port_must_be_loopback() {
    let f = Fixture::new();
    let path = f.write(&BASE.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\ncluster_listen = \"0.0.0.0:7000\"",
    ));
    let err = NodeConfig::load(&path, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cluster.tls") && err.contains("loopback"),
        "{err}"
    );
}

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

#[test]
fn check_config_prints_effective_config_without_secrets() {
    let f = Fixture::new();
    let path = f.write(BASE);
    let out = herald()
        .args(["node", "--check-config", "--config"])
        .arg(&path)
        .env("HERALD_REGION", "from-env")
        .env("HERALD_SHARDS", "8")
        .args(["--shards", "12"])
        .env_remove("HERALD_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("region = \"from-env\""),
        "env beats the file:\n{stdout}"
    );
    assert!(
        stdout.contains("shards = 12"),
        "the flag beats env:\n{stdout}"
    );
    assert!(
        !stdout.contains(P8_MARKER) && !stdout.contains("s3cr3t"),
        "{stdout}"
    );
    assert!(
        !stderr.contains(P8_MARKER) && !stderr.contains("s3cr3t"),
        "{stderr}"
    );
}

#[test]
fn check_config_fails_on_an_unusable_key() {
    let f = Fixture::new();
    std::fs::write(
        f.path().join("AuthKey_KEYAAAAAAA.p8"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let path = f.write(BASE);
    let out = herald()
        .args(["node", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("tenant acme") && stderr.contains("p8"),
        "{stderr}"
    );
}

#[test]
fn the_example_config_parses() {
    // docs/deploy/herald.toml names files that exist only on a deployed host: only its
    // syntax and keys are checked here (unknown keys would fail the parse).
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/herald.toml"),
    )
    .unwrap();
    let err = NodeConfig::from_toml(
        &text,
        Path::new("/nonexistent/herald.toml"),
        &Overrides::default(),
    );
    if let Err(e) = err {
        assert!(
            e.problems()
                .iter()
                .all(|p| p.message.contains("cannot read")),
            "only missing files may be reported: {e}"
        );
    }
}
