//! `herald demo`: the APNs emulator in process, a device set with some dead tokens, a push
//! workload through the client core with an injected 503 burst, a progress bar and a summary.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use herald_actors::apns::{
    ApnsTlsConfig, DeviceToken, Notification, Payload, PushType, SigningKey, TokenMinter, Topic,
};
use herald_actors::seams::{DetRng, SharedClock, SystemClock, TcpConnector};
use herald_sim::emulator::{
    Burst, DeviceEntry, DeviceState, Emulator, EmulatorConfig, FaultProfile,
};
use indicatif::{ProgressBar, ProgressStyle};
use rustls::pki_types::ServerName;

use crate::pusher::{Pusher, PusherConfig, run_all};
use crate::summary::Summary;

/// The demo's knobs (all have defaults: `herald demo` needs no flags).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Notifications to send.
    #[arg(long, default_value_t = 20_000)]
    pub pushes: usize,
    /// Distinct device tokens (3% of them unregistered, 2% bad).
    #[arg(long, default_value_t = 2_000)]
    pub devices: usize,
    /// HTTP/2 connections to the emulator.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Seed for device tokens, the workload and retry jitter.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

const TEAM_ID: &str = "HERALDDEMO";
const BUNDLE_ID: &str = "com.example.herald";

/// Run the demo, print its summary and return it.
///
/// Fails if the emulator's record of accepted notifications disagrees with the number
/// reported delivered (a lost or duplicated push).
pub async fn run(args: DemoArgs) -> anyhow::Result<Summary> {
    let clock: SharedClock = Arc::new(SystemClock);
    let mut rng = DetRng::from_seed(args.seed);

    let emulator = Emulator::start(EmulatorConfig::default())
        .await
        .context("starting the APNs emulator")?;
    let core = emulator.core();
    let key = core
        .generate_team_key(TEAM_ID, &[BUNDLE_ID])
        .context("generating the demo signing key")?;

    // The device set: mostly valid, 3% unregistered a day ago, 2% bad.
    let now = clock.now();
    let mut devices = Vec::with_capacity(args.devices);
    let mut entries = Vec::new();
    for _ in 0..args.devices.max(1) {
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes);
        let token = DeviceToken::from_bytes(&bytes)?;
        let roll = rng.below(100);
        let state = if roll < 3 {
            Some(DeviceState::Unregistered {
                at_ms: now.saturating_sub(Duration::from_secs(86_400)).as_millis(),
            })
        } else if roll < 5 {
            Some(DeviceState::Bad)
        } else {
            None
        };
        if let Some(state) = state {
            entries.push(DeviceEntry {
                token: token.as_str().to_owned(),
                state,
            });
        }
        devices.push(token);
    }
    core.set_devices(&entries);

    let topic: Topic = BUNDLE_ID.parse()?;
    let notifications: Vec<Notification> = (0..args.pushes)
        .map(|i| {
            let mut payload = Payload::new();
            payload.alert(format!("Hello from Herald #{i}")).badge(1);
            Notification::builder(
                devices[i % devices.len()].clone(),
                topic.clone(),
                PushType::Alert,
            )
            .payload(&payload)
            .build()
        })
        .collect::<Result<_, _>>()?;

    let tls = ApnsTlsConfig::new()
        .webpki_roots(false)
        .add_root_certificates_pem(emulator.ca_pem().unwrap_or_default().as_bytes())
        .build()?;
    let signing_key = SigningKey::from_p8_pem(key.p8_pem.as_bytes(), &key.key_id, &key.team_id)?;
    let minter = TokenMinter::with_default_interval(signing_key, clock.clone());
    let addr = emulator.addr();
    let pusher = Pusher::new(
        PusherConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: Some((tls, ServerName::from(addr.ip()))),
            connections: args.connections,
            attempts_max: 8,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
        },
        minter,
        clock.clone(),
        Arc::new(TcpConnector),
    );
    pusher
        .warm_up()
        .await
        .context("connecting to the emulator")?;

    println!(
        "herald demo: {} pushes to {} devices ({} unregistered or bad) over {} connections, emulator at {}",
        args.pushes,
        devices.len(),
        entries.len(),
        args.connections,
        addr
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.pushes as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} pushes  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    // An APNs incident a third of the way in: 503s for a moment; retries ride it out.
    let burst_at = (args.pushes / 3) as u64;
    let burst_requests = (args.pushes / 50).max(1) as u64;
    let incident = FaultProfile {
        bursts: vec![Burst {
            reason: herald_actors::apns::Reason::ServiceUnavailable,
            requests: Some(burst_requests),
            duration_ms: None,
        }],
        ..FaultProfile::default()
    };
    let on_done: Arc<dyn Fn() + Send + Sync> = {
        let bar = bar.clone();
        let core = core.clone();
        Arc::new(move || {
            bar.inc(1);
            if bar.position() == burst_at
                && let Err(e) = core.set_faults(incident.clone())
            {
                tracing::warn!(error = %e, "could not inject the 503 burst");
            }
        })
    };

    let started = tokio::time::Instant::now();
    let summary = run_all(
        &pusher,
        Arc::new(notifications),
        args.window,
        &mut rng,
        on_done,
    )
    .await;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    pusher.close().await;

    println!("{}", summary.table(elapsed));
    let accepted = core.accepted_count();
    println!(
        "emulator: {accepted} notifications accepted, {} answered with 503 during the injected burst",
        core.answers_by_reason()
            .get("ServiceUnavailable")
            .copied()
            .unwrap_or(0)
    );
    emulator.shutdown().await;
    anyhow::ensure!(
        accepted == summary.delivered,
        "the emulator accepted {accepted} notifications but {} were reported delivered",
        summary.delivered
    );
    Ok(summary)
}
