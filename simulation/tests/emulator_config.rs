//! The config file format documented in docs/emulator.md parses, and defaults are sensible.

use herald_sim::emulator::{
    DeviceState, EmulatorConfig, Environment, FaultProfile, Latency, TlsMode, UnknownTokenPolicy,
};

fn documented_toml() -> String {
    let doc = include_str!("../../docs/emulator.md");
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + doc[start..].find("```").expect("end of the toml block");
    doc[start..end].to_owned()
}

#[test]
fn documented_example_parses() {
    let config = EmulatorConfig::from_toml(&documented_toml()).unwrap();
    assert_eq!(config.bind.port(), 2197);
    assert_eq!(config.environment, Environment::Sandbox);
    assert_eq!(config.tls.mode, TlsMode::SelfSigned);
    assert_eq!(config.teams[0].keys[0].key_id, "KEY1234567");
    assert_eq!(config.devices.len(), 2);
    assert_eq!(
        config.devices[0].state,
        DeviceState::Unregistered {
            at_ms: 1_700_000_000_000
        }
    );
    assert_eq!(config.unknown_tokens, UnknownTokenPolicy::Accept);
    assert_eq!(config.faults.bursts[0].requests, Some(500));
    assert!(matches!(
        config.faults.latency,
        Latency::Percentiles { p50_ms: 5, .. }
    ));
    // The [faults] table alone is a fault profile file.
    let faults = FaultProfile::from_toml(
        "service_unavailable_rate = 0.5\n[latency]\nkind = \"fixed\"\nms = 3\n",
    )
    .unwrap();
    assert_eq!(faults.latency, Latency::Fixed { ms: 3 });
}

#[test]
fn defaults_and_errors() {
    let config = EmulatorConfig::from_toml("").unwrap();
    assert_eq!(config.max_concurrent_streams, 1000);
    assert_eq!(config.tls.mode, TlsMode::SelfSigned);
    assert_eq!(config.bind.to_string(), "127.0.0.1:0");
    assert!(EmulatorConfig::from_toml("no_such_field = 1").is_err());
    assert!(FaultProfile::from_toml("[[bursts]]\nreason = \"NotAReason\"").is_err());
}

#[tokio::test]
async fn start_rejects_a_bad_key() {
    let toml = "[[teams]]\nteam_id = \"TEAM123456\"\n[[teams.keys]]\nkey_id = \"K\"\npublic_key_pem = \"nope\"\n";
    let config = EmulatorConfig::from_toml(toml).unwrap();
    assert!(herald_sim::emulator::Emulator::start(config).await.is_err());
}
