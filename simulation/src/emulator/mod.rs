//! An APNs emulator: Apple's push server, faithful enough that APNs client libraries work
//! against it unchanged apart from host, port and CA.
//!
//! It speaks HTTP/2 over TLS (ALPN `h2`, a generated or given certificate, optional
//! client-certificate auth) or plaintext HTTP/2, validates every request from the APNs rules
//! (every 400/403/404/405/413 reason), verifies ES256 provider tokens by key id with the
//! per-connection rules, keeps a device registry (valid, unregistered at T, expired, bad,
//! bound to a topic, per-device rate limit), serves broadcast channels (iOS 18 Live
//! Activities: channel management and `/4/broadcasts`, on the same listener), injects
//! faults from a seeded RNG, and records every accepted notification. An admin HTTP endpoint exposes the record and the knobs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), herald_sim::emulator::EmulatorError> {
//! use herald_sim::emulator::{Emulator, EmulatorConfig, TeamConfig};
//!
//! let (team, key) = TeamConfig::generate("TEAM123456", "KEY1234567", &["com.example.app"])?;
//! let config = EmulatorConfig { teams: vec![team], ..EmulatorConfig::default() };
//! let emulator = Emulator::start(config).await?;
//! println!("APNs at {} (trust {:?}); sign with {}", emulator.addr(), emulator.ca_pem(), key.key_id);
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Determinism: every random choice draws from one [`DetRng`] seeded from
//! [`EmulatorConfig::seed`], in the order streams are accepted; wall-clock time comes only
//! from the [`SharedClock`] given to [`Emulator::start_with_clock`], and delays use
//! `tokio::time`. The same seed, clock and request sequence give the same answers and record.

mod admin;
mod broadcast;
mod config;
mod devices;
mod faults;
mod jwt;
mod record;
mod server;
mod tls;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use herald_actors::apns::{Reason, error_body};
use herald_actors::seams::{DetRng, SharedClock, SystemClock, Timestamp};
use jsonwebtoken::DecodingKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use broadcast::{
    BAD_CHANNEL_ID, BAD_MESSAGE_STORAGE_POLICY, CHANNEL_NOT_REGISTERED,
    CHANNELS_PER_APP_MAX_DEFAULT, Channel, MISSING_CHANNEL_ID, TOO_MANY_CHANNELS,
};
pub use config::{
    EmulatorConfig, Environment, GeneratedKey, KeyConfig, KeyEnvironment,
    MAX_CONCURRENT_STREAMS_DEFAULT, RECORD_CAPACITY_DEFAULT, SEED_DEFAULT, TeamConfig, TlsConfig,
    TlsMode,
};
pub use devices::{DeviceEntry, DeviceRateLimit, DeviceState, UnknownTokenPolicy};
pub use faults::{Burst, FaultProfile, Latency};
pub use record::{AcceptedNotification, ConnectionStats, Stats};
pub use tls::CertIdentity;

use devices::Registry;
use faults::{ActiveFaults, StreamPlan};
use jwt::{KeyStore, KnownKey, TokenState};
use record::Record;

/// Closed connections whose statistics are kept (older ones are forgotten).
pub const CLOSED_CONNECTIONS_KEPT_MAX: usize = 1000;

/// Why the emulator could not start or take a setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The configuration is invalid (message says where).
    #[error("emulator config: {0}")]
    Config(String),
    /// The TLS setup failed (certificate generation or parsing).
    #[error("emulator TLS: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("emulator could not bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The emulator's state and request handling, without a listener: serve connections over
/// any byte stream (the simulator's links) with [`EmulatorCore::serve_connection`].
/// Cloning gives another handle to the same emulator.
#[derive(Debug, Clone)]
pub struct EmulatorCore {
    shared: Arc<Shared>,
}

/// A running emulator: an APNs listener (TLS or plaintext) and an admin endpoint around an
/// [`EmulatorCore`] (which it dereferences to for settings and record queries).
///
/// Dropping it without [`Emulator::shutdown`] also stops the listener and sends GOAWAY on
/// every connection, without waiting for them.
#[derive(Debug)]
pub struct Emulator {
    core: EmulatorCore,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    ca_pem: Option<String>,
    shutdown_tx: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Start an emulator on the system clock.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Start an emulator whose wall-clock time comes from `clock` (token ages, 410
    /// timestamps, the record, burst windows).
    pub async fn start_with_clock(
        config: EmulatorConfig,
        clock: SharedClock,
    ) -> Result<Emulator, EmulatorError> {
        let tls = tls::build(&config.tls)?;
        let core = EmulatorCore::new(&config, clock)?;
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: config.bind,
                source,
            })?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (admin_addr, admin_task) = match config.admin_bind {
            None => (None, None),
            Some(bind) => {
                let (a, t) = admin::start(core.clone(), bind, shutdown_rx.clone()).await?;
                (Some(a), Some(t))
            }
        };
        let accept_task = tokio::spawn(server::accept_loop(
            core.shared.clone(),
            listener,
            tls.acceptor,
            shutdown_rx,
        ));
        tracing::info!(%addr, ?admin_addr, "APNs emulator listening");
        Ok(Emulator {
            core,
            addr,
            admin_addr,
            ca_pem: tls.ca_pem,
            shutdown_tx,
            accept_task,
            admin_task,
        })
    }

    /// The APNs listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin endpoint's address, if one was configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The PEM certificate clients must trust (`None` in plaintext mode).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The core: settings, devices, faults and the record.
    pub fn core(&self) -> &EmulatorCore {
        &self.core
    }

    /// Stop: GOAWAY on every connection, stop listening, stop the admin endpoint.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.accept_task.await;
        if let Some(task) = self.admin_task {
            let _ = task.await;
        }
    }
}

impl std::ops::Deref for Emulator {
    type Target = EmulatorCore;

    fn deref(&self) -> &EmulatorCore {
        &self.core
    }
}

impl EmulatorCore {
    /// Build the emulator state from `config` (listener settings are ignored).
    pub fn new(config: &EmulatorConfig, clock: SharedClock) -> Result<EmulatorCore, EmulatorError> {
        config.faults.validate()?;
        if config.max_concurrent_streams == 0 {
            return Err(EmulatorError::Config(
                "max_concurrent_streams must be at least 1".into(),
            ));
        }
        let mut keys = KeyStore::new();
        let mut bundles = BTreeMap::new();
        for team in &config.teams {
            if team.team_id.is_empty() {
                return Err(EmulatorError::Config("a team has an empty team_id".into()));
            }
            bundles.insert(team.team_id.clone(), team.bundle_ids.clone());
            for key in &team.keys {
                let pem = key.resolve_public_pem()?;
                let decoding = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| {
                    EmulatorError::Config(format!("key {}: bad public key: {e}", key.key_id))
                })?;
                let known = KnownKey {
                    team_id: team.team_id.clone(),
                    environment: key.environment,
                    decoding,
                };
                if keys.insert(key.key_id.clone(), known).is_some() {
                    return Err(EmulatorError::Config(format!(
                        "key id {} configured twice",
                        key.key_id
                    )));
                }
            }
        }
        let mut registry = Registry::default();
        registry.unknown = config.unknown_tokens;
        registry.rate_limit = config.device_rate_limit;
        for d in &config.devices {
            registry.set(&d.token, d.state.clone());
        }
        let now = clock.now();
        let (settings_tx, _) = watch::channel(config.max_concurrent_streams);
        let state = State {
            rng: DetRng::from_seed(config.seed),
            keys,
            bundles,
            registry,
            faults: ActiveFaults::new(config.faults.clone(), now),
            record: Record::new(config.record_capacity),
            connections: BTreeMap::new(),
            channels: broadcast::Channels::new(config.channels_per_app_max),
        };
        Ok(EmulatorCore {
            shared: Arc::new(Shared {
                clock,
                environment: config.environment,
                state: Mutex::new(state),
                settings_tx,
                next_connection_id: AtomicU64::new(1),
            }),
        })
    }

    /// Serve one HTTP/2 connection (plaintext, prior knowledge) over `stream` until it
    /// closes. `identity` is the client certificate's identity if the caller terminated TLS
    /// with client auth, else `None` (token auth).
    pub async fn serve_connection<S>(&self, stream: S, identity: Option<CertIdentity>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (_tx, rx) = watch::channel(false);
        server::serve_h2(self.shared.clone(), stream, identity, rx).await;
    }

    /// Register a public key for `team_id` (creating the team with `bundle_ids` if new,
    /// adding them otherwise).
    pub fn add_team_key(
        &self,
        team_id: &str,
        bundle_ids: &[&str],
        key: &KeyConfig,
    ) -> Result<(), EmulatorError> {
        let pem = key.resolve_public_pem()?;
        let decoding = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| {
            EmulatorError::Config(format!("key {}: bad public key: {e}", key.key_id))
        })?;
        let mut st = self.shared.lock();
        let team = st.bundles.entry(team_id.to_owned()).or_default();
        for b in bundle_ids {
            if !team.iter().any(|x| x == b) {
                team.push((*b).to_owned());
            }
        }
        st.keys.insert(
            key.key_id.clone(),
            KnownKey {
                team_id: team_id.to_owned(),
                environment: key.environment,
                decoding,
            },
        );
        Ok(())
    }

    /// Generate a signing key for `team_id`, register its public key (and `bundle_ids`), and
    /// return what a provider needs: key id, team id and the `.p8` PEM. The key id is drawn
    /// from the emulator's RNG (10 uppercase alphanumerics).
    pub fn generate_team_key(
        &self,
        team_id: &str,
        bundle_ids: &[&str],
    ) -> Result<GeneratedKey, EmulatorError> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let key_id: String = {
            let mut st = self.shared.lock();
            (0..10)
                .map(|_| {
                    let i = st.rng.below(ALPHABET.len() as u64) as usize;
                    char::from(ALPHABET[i])
                })
                .collect()
        };
        let (team, key) = TeamConfig::generate(team_id, &key_id, bundle_ids)?;
        for k in &team.keys {
            self.add_team_key(team_id, bundle_ids, k)?;
        }
        Ok(key)
    }

    /// Set the state of one device token.
    pub fn set_device(&self, token: &str, state: DeviceState) {
        self.shared.lock().registry.set(token, state);
    }

    /// Set the state of several device tokens.
    pub fn set_devices(&self, entries: &[DeviceEntry]) {
        let mut st = self.shared.lock();
        for e in entries {
            st.registry.set(&e.token, e.state.clone());
        }
    }

    /// The state of one device token, if registered.
    pub fn device(&self, token: &str) -> Option<DeviceState> {
        self.shared.lock().registry.state(token).cloned()
    }

    /// What to answer for unknown tokens.
    pub fn set_unknown_token_policy(&self, policy: UnknownTokenPolicy) {
        self.shared.lock().registry.unknown = policy;
    }

    /// The per-device rate limit (`None` turns it off).
    pub fn set_device_rate_limit(&self, limit: Option<DeviceRateLimit>) {
        self.shared.lock().registry.rate_limit = limit;
    }

    /// Replace the fault profile (bursts start now, by the emulator's clock). Fails, leaving
    /// the profile unchanged, if a rate is not a probability.
    pub fn set_faults(&self, profile: FaultProfile) -> Result<(), EmulatorError> {
        profile.validate()?;
        let now = self.shared.clock.now();
        self.shared.lock().faults = ActiveFaults::new(profile, now);
        Ok(())
    }

    /// The fault profile in force.
    pub fn faults(&self) -> FaultProfile {
        self.shared.lock().faults.profile.clone()
    }

    /// Change `SETTINGS_MAX_CONCURRENT_STREAMS`. New connections advertise the new value;
    /// live connections get a graceful GOAWAY (the h2 server cannot send a new SETTINGS
    /// value mid-connection), so clients reconnect and see it. Zero makes new connections
    /// refuse every stream.
    pub fn set_max_concurrent_streams(&self, max: u32) {
        self.shared.settings_tx.send_replace(max);
    }

    /// The `SETTINGS_MAX_CONCURRENT_STREAMS` new connections get.
    pub fn max_concurrent_streams(&self) -> u32 {
        *self.shared.settings_tx.borrow()
    }

    /// The accepted notifications still in the record, oldest first.
    pub fn accepted(&self) -> Vec<AcceptedNotification> {
        self.shared.lock().record.accepted()
    }

    /// Notifications accepted in total (including ones the bounded record dropped).
    pub fn accepted_count(&self) -> u64 {
        self.shared.lock().record.stats.accepted_total
    }

    /// Error answers by reason.
    pub fn answers_by_reason(&self) -> BTreeMap<String, u64> {
        self.shared.lock().record.stats.answers_by_reason.clone()
    }

    /// Every counter, with per-connection stream statistics.
    pub fn stats(&self) -> Stats {
        let st = self.shared.lock();
        let mut stats = st.record.stats.clone();
        stats.connections = st.connections.values().map(|c| c.snapshot()).collect();
        stats
    }

    /// The broadcast channels of one app (bundle id), by id.
    pub fn channels(&self, bundle_id: &str) -> Vec<Channel> {
        self.shared.lock().channels.list(bundle_id)
    }

    /// Forget the record and counters (statistics of open connections are kept).
    pub fn clear_record(&self) {
        let mut st = self.shared.lock();
        st.record.clear();
        st.connections.retain(|_, c| c.open.load(Ordering::Relaxed));
    }
}

/// State shared by the listener, every connection and the admin endpoint.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) clock: SharedClock,
    pub(crate) environment: Environment,
    state: Mutex<State>,
    pub(crate) settings_tx: watch::Sender<u32>,
    next_connection_id: AtomicU64,
}

#[derive(Debug)]
struct State {
    rng: DetRng,
    keys: KeyStore,
    bundles: BTreeMap<String, Vec<String>>,
    registry: Registry,
    faults: ActiveFaults,
    record: Record,
    connections: BTreeMap<u64, Arc<ConnCounters>>,
    channels: broadcast::Channels,
}

/// Wire-level stream counters of one connection (updated by the frame sniffer).
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    pub(crate) id: u64,
    pub(crate) max_concurrent_streams: u32,
    pub(crate) max_seen: AtomicU64,
    pub(crate) opened: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) violations: AtomicU64,
    /// Token auth (no client certificate): one stream at a time until a token is accepted.
    pub(crate) token_auth: bool,
    /// An answer to a request with a valid provider token has been written.
    pub(crate) token_accepted: AtomicBool,
    /// Streams whose answers will accept a token once written (until one is).
    pub(crate) accepting_streams: Mutex<Vec<u32>>,
    /// Streams opened while another was open, before a token was accepted.
    pub(crate) one_stream_violations: AtomicU64,
    pub(crate) open: AtomicBool,
    /// The reason to put in the debug data of this connection's GOAWAY frames.
    pub(crate) goaway_reason: Mutex<Option<Reason>>,
}

impl ConnCounters {
    fn snapshot(&self) -> ConnectionStats {
        ConnectionStats {
            id: self.id,
            max_concurrent_streams: self.max_concurrent_streams,
            max_concurrent_seen: self.max_seen.load(Ordering::Relaxed),
            streams_opened: self.opened.load(Ordering::Relaxed),
            streams_accepted: self.accepted.load(Ordering::Relaxed),
            stream_limit_violations: self.violations.load(Ordering::Relaxed),
            one_stream_violations: self.one_stream_violations.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
        }
    }
}

/// Per-connection context handed to every stream.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) id: u64,
    pub(crate) identity: Option<CertIdentity>,
    pub(crate) tokens: Mutex<TokenState>,
    pub(crate) counters: Arc<ConnCounters>,
}

/// The answer to one request.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) apns_id: String,
    pub(crate) unique_id: Option<String>,
    pub(crate) body: Bytes,
    /// The request carried a provider token the emulator accepted (whatever the answer).
    pub(crate) token_accepted: bool,
    /// More response headers (broadcast channel management).
    pub(crate) headers: Vec<(http::HeaderName, String)>,
}

/// A request as the answer logic sees it.
#[derive(Debug)]
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a http::Method,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a http::HeaderMap,
    pub(crate) body: &'a [u8],
    pub(crate) body_len: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn register_connection(
        &self,
        max_concurrent_streams: u32,
        token_auth: bool,
    ) -> Arc<ConnCounters> {
        let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::new(ConnCounters {
            id,
            max_concurrent_streams,
            token_auth,
            open: AtomicBool::new(true),
            ..ConnCounters::default()
        });
        let mut st = self.lock();
        st.record.stats.connections_total += 1;
        st.connections.insert(id, counters.clone());
        counters
    }

    pub(crate) fn close_connection(&self, counters: &ConnCounters) {
        counters.open.store(false, Ordering::Relaxed);
        let mut st = self.lock();
        let closed: Vec<u64> = st
            .connections
            .iter()
            .filter(|(_, c)| !c.open.load(Ordering::Relaxed))
            .map(|(id, _)| *id)
            .collect();
        let excess = closed.len().saturating_sub(CLOSED_CONNECTIONS_KEPT_MAX);
        for id in closed.into_iter().take(excess) {
            st.connections.remove(&id);
        }
    }

    pub(crate) fn plan_stream(&self) -> StreamPlan {
        let now = self.clock.now();
        let mut st = self.lock();
        let State { rng, faults, .. } = &mut *st;
        faults.plan(rng, now)
    }

    pub(crate) fn fault_profile(&self) -> FaultProfile {
        self.lock().faults.profile.clone()
    }

    pub(crate) fn count(&self, what: Counted) {
        let mut st = self.lock();
        let s = &mut st.record.stats;
        match what {
            Counted::Refused => s.refused_streams += 1,
            Counted::Dropped => s.dropped_connections += 1,
            Counted::GoAway => s.goaways += 1,
        }
    }

    /// An error answer (counted).
    pub(crate) fn reject(
        &self,
        reason: Reason,
        timestamp: Option<Timestamp>,
        apns_id: String,
    ) -> Answer {
        self.lock().record.answer(reason.status(), reason.as_str());
        Answer {
            status: reason.status(),
            apns_id,
            unique_id: None,
            body: error_body(reason, timestamp),
            token_accepted: false,
            headers: Vec::new(),
        }
    }

    /// Decide the answer to one request.
    pub(crate) fn answer(&self, ctx: &ConnCtx, req: &RequestView<'_>, plan: &StreamPlan) -> Answer {
        let apns_id = req
            .headers
            .get(validate::APNS_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|_| {
                req.headers
                    .get_all(validate::APNS_ID)
                    .iter()
                    .nth(1)
                    .is_none()
            })
            .filter(|id| id.len() == 36 && uuid::Uuid::try_parse(id).is_ok())
            .map(str::to_owned)
            .unwrap_or_else(|| upper_uuid(plan.generated_id));
        if let Some(route) = broadcast::route(req.path) {
            return self.broadcast_answer(ctx, req, plan, route, apns_id);
        }
        let mut token_accepted = false;
        match self.decide(ctx, req, plan, &apns_id, &mut token_accepted) {
            Ok(accepted) => {
                let unique_id = (self.environment == Environment::Sandbox)
                    .then(|| plan.unique_id.hyphenated().to_string());
                self.lock().record.accept(accepted);
                Answer {
                    status: 200,
                    apns_id,
                    unique_id,
                    body: Bytes::new(),
                    token_accepted,
                    headers: Vec::new(),
                }
            }
            Err((reason, ts)) => Answer {
                token_accepted,
                ..self.reject(reason, ts, apns_id)
            },
        }
    }

    /// Authenticate a request by the connection's client certificate or its provider
    /// token: the team id. Sets `token_accepted` when a provider token was accepted.
    fn authenticate(
        &self,
        ctx: &ConnCtx,
        req: &RequestView<'_>,
        token_accepted: &mut bool,
    ) -> Result<String, Reason> {
        match &ctx.identity {
            Some(id) => {
                let team = id.team_id.clone().ok_or(Reason::BadCertificate)?;
                if !id.environment.allows(self.environment) {
                    return Err(Reason::BadCertificateEnvironment);
                }
                Ok(team)
            }
            None => {
                let header = req.headers.get(validate::AUTHORIZATION).map(|v| v.to_str());
                let header = match header {
                    None => None,
                    Some(Ok(h)) => Some(h),
                    Some(Err(_)) => return Err(Reason::InvalidProviderToken),
                };
                let now = self.clock.now();
                let st = self.lock();
                let mut tokens = ctx.tokens.lock().unwrap_or_else(|e| e.into_inner());
                let team = tokens.authorize(header, &st.keys, self.environment, now)?;
                *token_accepted = true;
                Ok(team)
            }
        }
    }

    fn decide(
        &self,
        ctx: &ConnCtx,
        req: &RequestView<'_>,
        plan: &StreamPlan,
        apns_id: &str,
        token_accepted: &mut bool,
    ) -> Result<AcceptedNotification, (Reason, Option<Timestamp>)> {
        let plain = |r: Reason| (r, None);
        let token = validate::check_method_and_path(req.method, req.path).map_err(plain)?;
        let now = self.clock.now();
        let team = self.authenticate(ctx, req, token_accepted).map_err(plain)?;
        let headers =
            validate::check_headers(req.headers, ctx.identity.is_none()).map_err(plain)?;
        let topic = match (&headers.topic, &ctx.identity) {
            (Some(t), _) => t.clone(),
            (None, Some(id)) => id.topic.clone().ok_or(plain(Reason::MissingTopic))?,
            (None, None) => return Err(plain(Reason::MissingTopic)),
        };
        let bundle = validate::bundle_of(&topic).to_owned();
        let mut st = self.lock();
        if !bundle_allowed(&st, ctx, &team, &bundle) {
            return Err(plain(Reason::TopicDisallowed));
        }
        validate::check_payload(req.body_len, headers.push_type.as_deref()).map_err(plain)?;
        if let Some(reason) = plan.injected {
            return Err(plain(reason));
        }
        if let Some(rejection) = st.registry.check(&token, &bundle, now) {
            return Err(rejection);
        }
        drop(st);
        use sha2::Digest as _;
        Ok(AcceptedNotification {
            apns_id: apns_id.to_owned(),
            device_token: token,
            topic,
            push_type: headers.push_type,
            priority: headers.priority,
            collapse_id: headers.collapse_id,
            expiration: headers.expiration,
            payload_sha256: lower_hex(&sha2::Sha256::digest(req.body)),
            payload_bytes: req.body_len,
            time_ms: now.as_millis(),
            connection_id: ctx.id,
            channel_id: None,
        })
    }
}

/// The connection's certificate topic is `bundle`, or `team` may push to it.
fn bundle_allowed(st: &State, ctx: &ConnCtx, team: &str, bundle: &str) -> bool {
    let cert_topic = ctx.identity.as_ref().and_then(|i| i.topic.as_deref());
    cert_topic == Some(bundle)
        || st
            .bundles
            .get(team)
            .is_some_and(|b| b.iter().any(|x| x == bundle))
}

/// A UUID as APNs writes a generated `apns-id`: hyphenated, uppercase.
pub(crate) fn upper_uuid(id: uuid::Uuid) -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_upper(&mut buf).to_owned()
}

/// Bytes as lowercase hex (what `hex::encode` gives, without a `char` at a time).
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Events counted outside answers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counted {
    Refused,
    Dropped,
    GoAway,
}

#[cfg(test)]
mod tests {
    #[test]
    fn lower_hex_matches_hex_encode() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(super::lower_hex(&bytes), hex::encode(&bytes));
        assert_eq!(super::lower_hex(&[]), "");
    }

    #[test]
    fn upper_uuid_is_hyphenated_uppercase() {
        let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(
            super::upper_uuid(id),
            id.hyphenated().to_string().to_uppercase()
        );
    }
}
