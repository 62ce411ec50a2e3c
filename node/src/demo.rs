//! `herald demo`: the APNs emulator in process (TLS), two tenants (two teams with generated
//! keys and their own bundle ids), a device set with some dead tokens, and a push workload
//! through the actor engine ([`Herald`]) with an injected 503 burst that each tenant's
//! circuit breaker rides out; a progress bar driven by the engine's outcome stream, then a
//! summary.
//!
//! The demo fails if an accepted push has no final outcome, or if the emulator's record of
//! accepted notifications disagrees with the number reported delivered (a lost or
//! duplicated push).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use herald_actors::apns::{
    ApnsTlsConfig, DeviceToken, Notification, Payload, PushType, Reason, SigningKey, TokenMinter,
    Topic,
};
use herald_actors::backoff::Backoff;
use herald_actors::breaker::BreakerState;
use herald_actors::limits;
use herald_actors::seams::{Clock as _, DetRng, SharedClock, SystemClock};
use herald_actors::wal::{FileWal, GroupCommitWal, MemoryWal, SharedWal};
use herald_actors::{
    Credentials, Endpoint, Herald, Outcome, OutcomeRecord, PushError, PushId, TenantConfig, Tuning,
};
use herald_sim::emulator::{
    Burst, DeviceEntry, DeviceState, Emulator, EmulatorConfig, FaultProfile,
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::summary::Summary;

/// The demo's knobs (all have defaults: `herald demo` needs no flags).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Notifications to send.
    #[arg(long, default_value_t = 20_000)]
    pub pushes: usize,
    /// Distinct device tokens, split between the two tenants (3% of them unregistered, 2% bad).
    #[arg(long, default_value_t = 2_000)]
    pub devices: usize,
    /// HTTP/2 connections to the emulator per tenant, at most.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Pushes per `send_batch` call (at most 1,000).
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Seed for device tokens, push ids and the engine's jitter.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Device shards of the engine.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Keep the write-ahead log in memory instead of a file (a redb `FileWal` with group
    /// commit, in a temporary directory).
    #[arg(long)]
    pub memory_wal: bool,
}

/// What a demo run found.
#[derive(Debug)]
pub struct DemoReport {
    /// Outcomes, retries and latencies (accepted → outcome).
    pub summary: Summary,
    /// Times a tenant's breaker left the closed state, per tenant.
    pub breaker_opened: BTreeMap<String, u64>,
    /// Notifications the emulator accepted.
    pub emulator_accepted: u64,
    /// 503 answers the emulator gave.
    pub emulator_503: u64,
    /// `Overloaded` answers to `send_batch` (whole batches or single pushes), all resubmitted.
    pub overloaded: u64,
}

impl DemoReport {
    /// Breaker openings, all tenants.
    pub fn breaker_opened_total(&self) -> u64 {
        self.breaker_opened.values().sum()
    }
}

/// The demo's tenants: (tenant id, team id, bundle id).
const TENANTS: [(&str, &str, &str); 2] = [
    ("acme", "HERALDACME", "com.example.acme"),
    ("globex", "HERALDGLBX", "com.example.globex"),
];

/// How long the 503 burst lasts.
const BURST: Duration = Duration::from_millis(1_000);

/// Run the demo, print its summary and return it.
pub async fn run(args: DemoArgs) -> anyhow::Result<DemoReport> {
    let clock: SharedClock = Arc::new(SystemClock);
    let mut rng = DetRng::from_seed(args.seed);

    let emulator = Emulator::start(EmulatorConfig::default())
        .await
        .context("starting the APNs emulator")?;
    let core = emulator.core().clone();
    let ca_pem = emulator
        .ca_pem()
        .context("the emulator has no CA")?
        .to_owned();

    // The engine: one tenant per team, token credentials, trusting the emulator's CA.
    let (wal, wal_dir, wal_name) = open_wal(&args)?;
    let mut tuning = Tuning::default();
    tuning.retry_backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    tuning.reconnect_backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    tuning.breaker_open_for = Duration::from_millis(300);
    let mut tls = ApnsTlsConfig::new();
    tls.webpki_roots(false)
        .add_root_certificates_pem(ca_pem.as_bytes());
    let mut builder = Herald::builder();
    builder
        .endpoint(Endpoint::tls("127.0.0.1", emulator.addr().port(), tls))
        .clock(clock.clone())
        .rng_seed(args.seed)
        .shards(args.shards)
        .tuning(tuning)
        .wal(wal);
    let mut topics = Vec::new();
    for (tenant, team, bundle) in TENANTS {
        let key = core
            .generate_team_key(team, &[bundle])
            .context("generating a demo signing key")?;
        let signing = SigningKey::from_p8_pem(key.p8_pem.as_bytes(), &key.key_id, &key.team_id)?;
        let minter = TokenMinter::with_default_interval(signing, clock.clone());
        let mut config = TenantConfig::new(tenant, Credentials::Token(minter));
        config.connections(1, args.connections.max(1));
        builder.tenant(config);
        topics.push(bundle.parse::<Topic>()?);
    }
    let herald = builder.build().await.context("starting the engine")?;

    // The device set: mostly valid, 3% unregistered a day ago, 2% bad; device i belongs to
    // tenant i % 2.
    let now = clock.now();
    let mut devices = Vec::with_capacity(args.devices);
    let mut entries = Vec::new();
    for _ in 0..args.devices.max(TENANTS.len()) {
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

    // The workload, with explicit push ids (`apns-id`): resubmitting a push is idempotent.
    let mut per_tenant: Vec<Vec<Notification>> = vec![Vec::new(); TENANTS.len()];
    for i in 0..args.pushes {
        let device = i % devices.len();
        let tenant = device % TENANTS.len();
        let mut payload = Payload::new();
        payload.alert(format!("Hello from Herald #{i}")).badge(1);
        let id = PushId::from_u128((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()));
        let notification = Notification::builder(
            devices[device].clone(),
            topics[tenant].clone(),
            PushType::Alert,
        )
        .payload(&payload)
        .build()?
        .with_apns_id(id.apns_id());
        per_tenant[tenant].push(notification);
    }

    println!(
        "herald demo: {} pushes from {} tenants ({}) to {} devices ({} unregistered or bad) \
         through the actor engine ({} shards, ≤ {} connections per tenant, {wal_name}), \
         emulator at {} (TLS)",
        args.pushes,
        TENANTS.len(),
        TENANTS
            .iter()
            .map(|(t, team, bundle)| format!("{t}: team {team}, {bundle}"))
            .collect::<Vec<_>>()
            .join("; "),
        devices.len(),
        entries.len(),
        args.shards,
        args.connections.max(1),
        emulator.addr()
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.pushes as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} outcomes  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    // Outcomes, as the engine streams them. An APNs incident a third of the way in: 503s
    // for a second; the breakers open, probe, close, and retries ride it out.
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let collector = {
        let mut stream = herald.outcomes();
        let seen = seen.clone();
        let bar = bar.clone();
        let core = core.clone();
        let burst_at = (args.pushes / 3).max(1);
        tokio::spawn(async move {
            loop {
                let event = stream.recv().await;
                let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
                match event {
                    Ok(record) => {
                        bar.inc(1);
                        s.records.insert(record.push_id, (record, Instant::now()));
                    }
                    Err(RecvError::Lagged(n)) => {
                        bar.inc(n);
                        s.lagged += n;
                    }
                    Err(RecvError::Closed) => break,
                }
                if !s.burst_injected && s.records.len() as u64 + s.lagged >= burst_at as u64 {
                    s.burst_injected = true;
                    let incident = FaultProfile {
                        bursts: vec![Burst {
                            reason: Reason::ServiceUnavailable,
                            requests: None,
                            duration_ms: Some(BURST.as_millis() as u64),
                        }],
                        ..FaultProfile::default()
                    };
                    if let Err(e) = core.set_faults(incident) {
                        tracing::warn!(error = %e, "could not inject the 503 burst");
                    }
                }
            }
        })
    };
    // The breakers, polled: count each time one leaves the closed state.
    let breaker_opened: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let breakers = {
        let herald = herald.clone();
        let opened = breaker_opened.clone();
        tokio::spawn(async move {
            let mut last: BTreeMap<&str, BreakerState> = BTreeMap::new();
            loop {
                for (tenant, _, _) in TENANTS {
                    if let Ok(status) = herald.tenant_status(tenant).await {
                        let before = last.insert(tenant, status.breaker);
                        let mut opened = opened.lock().unwrap_or_else(PoisonError::into_inner);
                        let count = opened.entry(tenant.to_owned()).or_default();
                        if before == Some(BreakerState::Closed)
                            && status.breaker != BreakerState::Closed
                        {
                            *count += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Submit: one task per tenant, batches of `window`, resubmitting what was refused.
    let started = Instant::now();
    let batch = args.window.clamp(1, limits::SEND_BATCH_MAX);
    let mut submitters = Vec::new();
    for ((tenant, _, _), notifications) in TENANTS.iter().zip(per_tenant) {
        let herald = herald.clone();
        let tenant = (*tenant).to_owned();
        submitters.push(tokio::spawn(async move {
            submit(&herald, &tenant, notifications, batch).await
        }));
    }
    let mut accepted_at: HashMap<PushId, Instant> = HashMap::with_capacity(args.pushes);
    let mut overloaded = 0;
    for submitter in submitters {
        let (accepted, refusals) = submitter.await.context("a submitter panicked")??;
        accepted_at.extend(accepted);
        overloaded += refusals;
    }

    // Wait for every accepted push's outcome (bounded: a stuck push fails the demo).
    let total = accepted_at.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(total);
    loop {
        let done = {
            let s = seen.lock().unwrap_or_else(PoisonError::into_inner);
            s.records.len() as u64 + s.lagged
        };
        if done >= total || Instant::now() >= deadline {
            break;
        }
        if herald.pending() == 0 && done < total {
            // Every push finished: the stream may still be delivering the last records.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let s = seen.lock().unwrap_or_else(PoisonError::into_inner);
            if s.records.len() as u64 + s.lagged >= total {
                break;
            }
            if s.lagged > 0 {
                break; // reconciled from the outcome store below
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    collector.abort();
    breakers.abort();
    let breaker_opened = breaker_opened
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    bar.finish_and_clear();

    // Tally: every accepted push must have exactly one final outcome.
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner));
    let mut summary = Summary::new();
    let mut missing = Vec::new();
    for (id, accepted) in &accepted_at {
        let (outcome, attempts) = match seen.records.get(id) {
            Some((record, at)) => {
                summary.record_latency(at.saturating_duration_since(*accepted));
                (record.outcome.clone(), record.attempts)
            }
            None => match herald.outcome(*id) {
                // Missed on the stream (lagged): the engine's outcome store still has it.
                Some(outcome) => (outcome, 1),
                None => {
                    missing.push(*id);
                    continue;
                }
            },
        };
        summary.retried += u64::from(attempts.saturating_sub(1));
        tally(&mut summary, &outcome);
    }
    let report = herald.shutdown(Duration::from_secs(5)).await;
    let emulator_accepted = core.accepted_count();
    let emulator_503 = core
        .answers_by_reason()
        .get("ServiceUnavailable")
        .copied()
        .unwrap_or(0);
    emulator.shutdown().await;
    if let Some(dir) = wal_dir {
        let _ = std::fs::remove_dir_all(dir);
    }

    println!("{}", summary.table(elapsed));
    println!(
        "breaker: opened {} times ({}) during a {} ms burst of 503s ({emulator_503} answered)",
        breaker_opened.values().sum::<u64>(),
        breaker_opened
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        BURST.as_millis()
    );
    println!(
        "emulator: {emulator_accepted} notifications accepted; {} pushes accepted by the engine, \
         {} Overloaded answers resubmitted, shutdown drained: {}",
        accepted_at.len(),
        overloaded,
        report.drained
    );
    anyhow::ensure!(
        missing.is_empty(),
        "{} accepted pushes have no final outcome (first: {})",
        missing.len(),
        missing[0]
    );
    anyhow::ensure!(
        emulator_accepted == summary.delivered,
        "the emulator accepted {emulator_accepted} notifications but {} were reported delivered",
        summary.delivered
    );
    Ok(DemoReport {
        summary,
        breaker_opened,
        emulator_accepted,
        emulator_503,
        overloaded,
    })
}

/// What the outcome stream delivered.
#[derive(Debug, Default)]
struct Seen {
    records: HashMap<PushId, (OutcomeRecord, Instant)>,
    lagged: u64,
    burst_injected: bool,
}

fn tally(summary: &mut Summary, outcome: &Outcome) {
    match outcome {
        Outcome::Delivered { .. } => summary.delivered += 1,
        Outcome::Unregistered { .. } => summary.invalidated += 1,
        other => {
            let reason = other.reason_label();
            summary.record_failure(if reason.is_empty() {
                other.label().to_owned()
            } else {
                reason
            });
        }
    }
}

/// Submit `notifications` for `tenant` in batches; returns when each push was accepted and
/// how many `Overloaded` answers were received. `Overloaded` (and `Unavailable`, harmless
/// since each push carries its `apns-id`) pushes are resubmitted after the advised delay.
async fn submit(
    herald: &Herald,
    tenant: &str,
    notifications: Vec<Notification>,
    batch: usize,
) -> anyhow::Result<(Vec<(PushId, Instant)>, u64)> {
    let mut accepted = Vec::with_capacity(notifications.len());
    let mut overloaded = 0;
    let mut rest = notifications.into_iter().peekable();
    while rest.peek().is_some() {
        let mut pending: Vec<Notification> = rest.by_ref().take(batch).collect();
        loop {
            match herald.send_batch(tenant, pending.clone()).await {
                Err(PushError::Overloaded { retry_after }) => {
                    overloaded += 1;
                    tokio::time::sleep(retry_after).await;
                }
                Err(e) => return Err(e).context("send_batch"),
                Ok(results) => {
                    let now = Instant::now();
                    let mut again = Vec::new();
                    let mut wait = Duration::ZERO;
                    for (notification, result) in pending.into_iter().zip(results) {
                        match result {
                            Ok(id) => accepted.push((id, now)),
                            Err(PushError::Overloaded { retry_after }) => {
                                overloaded += 1;
                                wait = wait.max(retry_after);
                                again.push(notification);
                            }
                            Err(PushError::Unavailable(_)) => {
                                wait = wait.max(Duration::from_millis(50));
                                again.push(notification);
                            }
                            Err(e) => return Err(e).context("send_batch"),
                        }
                    }
                    if again.is_empty() {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    pending = again;
                }
            }
        }
    }
    Ok((accepted, overloaded))
}

/// The write-ahead log: a redb file in a fresh temporary directory, behind group commit
/// (or memory with `--memory-wal`).
fn open_wal(args: &DemoArgs) -> anyhow::Result<(SharedWal, Option<PathBuf>, String)> {
    if args.memory_wal {
        return Ok((Arc::new(MemoryWal::new()), None, "MemoryWal".into()));
    }
    let dir = std::env::temp_dir().join(format!(
        "herald-demo-{}-{}",
        std::process::id(),
        SystemClock.now().as_millis()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("wal.redb");
    let file = FileWal::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let name = format!("FileWal {} with group commit", path.display());
    Ok((
        Arc::new(GroupCommitWal::spawn(Arc::new(file))),
        Some(dir),
        name,
    ))
}
