//! Certificate-auth tenants: a `.p12` with its password from a file or an environment
//! variable, checked by `load_tenant` and `herald node --check-config`; passwords never
//! appear in messages.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use herald_actors::Credentials;
use herald_actors::seams::{SharedClock, SystemClock};
use herald_node::config::{NodeConfig, Overrides};
use herald_node::credentials::load_tenant;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};

const TEAM: &str = "TEAMP12P12";
const TOPIC: &str = "com.example.cert";
const PASSWORD: &str = "correct horse battery";

/// An Apple-style push certificate (self-signed) in a `.p12` protected by `password`.
fn p12(password: &str) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let dn = &mut params.distinguished_name;
    dn.push(DnType::CommonName, format!("Apple Push Services: {TOPIC}"));
    dn.push(
        DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 1]),
        TOPIC,
    );
    dn.push(DnType::OrganizationalUnitName, TEAM);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).unwrap();
    let chain = [p12_keystore::Certificate::from_der(cert.der()).unwrap()];
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        "apns",
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            key.serialize_der(),
            b"key-1",
            chain,
        )),
    );
    store.writer(password).write().unwrap()
}

fn write_config(dir: &Path, tenant: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("api-key.secret"), "k".repeat(40)).unwrap();
    std::fs::write(dir.join("apns.p12"), p12(PASSWORD)).unwrap();
    std::fs::write(dir.join("p12.password"), format!("{PASSWORD}\n")).unwrap();
    let path = dir.join("herald.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\nid = 1\ndata_dir = \"data\"\napi_key_secret_file = \"api-key.secret\"\n\n\
             [[tenants]]\nid = \"cert\"\np12 = \"apns.p12\"\ntopics = [\"{TOPIC}\"]\n{tenant}"
        ),
    )
    .unwrap();
    path
}

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

#[test]
fn p12_with_password_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "p12_password_file = \"p12.password\"\n");
    let config = NodeConfig::load(&path, &Overrides::default()).unwrap();
    let loaded = load_tenant(&config.tenants[0], &config.limits, clock()).unwrap();
    assert!(loaded.key_id.is_none());
    match &loaded.config.credentials {
        Credentials::Certificate(identity) => {
            assert_eq!(identity.team_id(), Some(TEAM));
            assert_eq!(identity.topic(), Some(TOPIC));
        }
        other => panic!("expected certificate credentials, got {other:?}"),
    }
    let shown = format!("{loaded:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

#[test]
fn wrong_password_and_team_mismatch_are_reported_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "p12_password_file = \"p12.password\"\n");
    std::fs::write(dir.path().join("p12.password"), "not the password").unwrap();
    let config = NodeConfig::load(&path, &Overrides::default()).unwrap();
    let err = load_tenant(&config.tenants[0], &config.limits, clock()).unwrap_err();
    assert_eq!(err.field, "p12");
    assert!(!err.to_string().contains("not the password"), "{err}");

    let path = write_config(
        dir.path(),
        "p12_password_file = \"p12.password\"\nteam_id = \"OTHERTEAM1\"\n",
    );
    let config = NodeConfig::load(&path, &Overrides::default()).unwrap();
    let err = load_tenant(&config.tenants[0], &config.limits, clock()).unwrap_err();
    assert_eq!(err.field, "team_id", "{err}");
}

#[test]
fn check_config_reads_the_password_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "p12_password_env = \"HERALD_TEST_P12_PASSWORD\"\n",
    );
    let run = |password: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args(["node", "--check-config", "--config"])
            .arg(&path);
        match password {
            Some(p) => command.env("HERALD_TEST_P12_PASSWORD", p),
            None => command.env_remove("HERALD_TEST_P12_PASSWORD"),
        };
        command.output().unwrap()
    };
    let ok = run(Some(PASSWORD));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("HERALD_TEST_P12_PASSWORD") && !stdout.contains(PASSWORD),
        "{stdout}"
    );

    let unset = run(None);
    let stderr = String::from_utf8_lossy(&unset.stderr);
    assert!(!unset.status.success());
    assert!(
        stderr.contains("tenants[0].p12_password_env") && stderr.contains("not set"),
        "{stderr}"
    );

    let wrong = run(Some("wrong-password-xyz"));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(stderr.contains("tenant cert: p12"), "{stderr}");
    assert!(!stderr.contains("wrong-password-xyz"), "{stderr}");
}
