//! Embedding the Herald engine in a plain tokio program.
//!
//! The engine talks to an in-process APNs emulator (TLS with a generated certificate, a team
//! with a generated signing key) so the example runs anywhere:
//!
//! ```text
//! cargo run -p herald-actors --example embed
//! ```
//!
//! Against Apple, replace the emulator with `Endpoint::production()` (or `sandbox()`) and
//! load your `.p8` key with `SigningKey::from_p8_pem`.

use std::sync::Arc;
use std::time::Duration;

use herald_actors::apns::{
    ApnsTlsConfig, DeviceToken, Notification, Payload, PushType, SigningKey, TokenMinter,
};
use herald_actors::seams::SystemClock;
use herald_actors::{Credentials, Endpoint, Herald, Outcome, TenantConfig};
use herald_sim::emulator::{Emulator, EmulatorConfig, TeamConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An APNs stand-in: TLS on 127.0.0.1, one team allowed to push to com.example.app.
    let (team, key) = TeamConfig::generate("TEAM123456", "KEY1234567", &["com.example.app"])?;
    let config = EmulatorConfig {
        teams: vec![team],
        admin_bind: None,
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(config).await?;
    let ca_pem = emulator.ca_pem().ok_or("emulator has no CA")?.to_owned();

    // The engine: one tenant authenticating with provider tokens, trusting the emulator's CA.
    let mut tls = ApnsTlsConfig::new();
    tls.webpki_roots(false)
        .add_root_certificates_pem(ca_pem.as_bytes());
    let signing = SigningKey::from_p8_pem(key.p8_pem.as_bytes(), &key.key_id, &key.team_id)?;
    let minter = TokenMinter::with_default_interval(signing, Arc::new(SystemClock));
    let herald = Herald::builder()
        .endpoint(Endpoint::tls("127.0.0.1", emulator.addr().port(), tls))
        .tenant(TenantConfig::new("acme", Credentials::Token(minter)))
        .shards(4)
        .build()
        .await?;

    // Follow outcomes as they happen.
    let mut outcomes = herald.outcomes();
    let mut payload = Payload::new();
    payload.alert("Hello from an embedded Herald");
    let pushes = 100;
    for n in 0..pushes {
        let token = DeviceToken::from_bytes(&[n as u8; 32])?;
        let notification =
            Notification::builder(token, "com.example.app".parse()?, PushType::Alert)
                .payload(&payload)
                .build()?;
        herald.send("acme", notification).await?;
    }
    let mut delivered = 0;
    for _ in 0..pushes {
        let record = outcomes.recv().await?;
        if matches!(record.outcome, Outcome::Delivered { .. }) {
            delivered += 1;
        }
    }
    println!(
        "{delivered}/{pushes} delivered; APNs emulator accepted {}",
        emulator.accepted_count()
    );

    let report = herald.shutdown(Duration::from_secs(5)).await;
    println!("shutdown drained: {}", report.drained);
    emulator.shutdown().await;
    Ok(())
}
