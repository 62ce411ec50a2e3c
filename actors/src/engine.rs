//! The public engine: [`Herald::builder`], the [`Herald`] handle, and what they share.
//!
//! `send` validates the tenant, gives the push an id (its `apns-id`: the one the caller set,
//! else a UUID from the engine's [`DetRng`]), picks the shard (`FNV-1a(token) % shards`),
//! reserves room at the tenant and the shard (full → [`PushError::Overloaded`]; mailboxes
//! are unbounded, so work is bounded here, at admission), and asks the shard to append it to the WAL and
//! queue it. It returns once the write-ahead log answered the append (see [`Herald::send`] for
//! the exact rule when the WAL is slow).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::{broadcast, oneshot};

use crate::apns::{ApnsTlsConfig, DeviceToken, Notification};
use crate::backoff::Backoff;
use crate::limits;
use crate::outcome::{Invalidation, Outcome, OutcomeRecord, OutcomeStore, PushId};
use crate::seams::{DetRng, SharedClock, SharedConnector, SystemClock, TcpConnector};
use crate::shard::{
    CLAIM_ABANDONED, CLAIM_OPEN, EnqueueRequest, Enqueued, Push, ShardMsg, shard_of,
};
use crate::supervisor::{EngineSupervisor, SupervisorArgs, SupervisorMsg};
use crate::tenant::{TenantConfig, TenantMsg, TenantStatus};
use crate::token_state::{MemoryTokenState, SharedTokenState};
use crate::wal::{JointAppend, JointPart, MemoryWal, SharedWal};

/// Where APNs is: host, port and TLS (`None` for plaintext HTTP/2, the emulator's h2c mode).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name (also the TLS server name).
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS trust settings, or `None` for plaintext.
    pub tls: Option<ApnsTlsConfig>,
}

impl Endpoint {
    /// `api.push.apple.com:443` over TLS with the Mozilla roots.
    pub fn production() -> Self {
        Endpoint::tls("api.push.apple.com", 443, ApnsTlsConfig::new())
    }

    /// `api.sandbox.push.apple.com:443` over TLS with the Mozilla roots.
    pub fn sandbox() -> Self {
        Endpoint::tls("api.sandbox.push.apple.com", 443, ApnsTlsConfig::new())
    }

    /// `host:port` over TLS with the trust in `tls`.
    pub fn tls(host: impl Into<String>, port: u16, tls: ApnsTlsConfig) -> Self {
        Endpoint {
            host: host.into(),
            port,
            tls: Some(tls),
        }
    }

    /// `host:port` in plaintext HTTP/2 (tests, simulation, the emulator's h2c mode).
    pub fn plaintext(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
            tls: None,
        }
    }
}

/// The engine's tunable bounds and timings. Every default comes from [`limits`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Tuning {
    /// Pushes one shard holds. Default: [`SHARD_QUEUE_MAX`](limits::SHARD_QUEUE_MAX).
    pub shard_queue_max: usize,
    /// Pushes one shard has in flight. Default: [`SHARD_INFLIGHT_MAX`](limits::SHARD_INFLIGHT_MAX).
    pub shard_inflight_max: usize,
    /// Sends of one push that reached APNs. Default: [`PUSH_ATTEMPTS_MAX`](limits::PUSH_ATTEMPTS_MAX).
    pub attempts_max: u32,
    /// Retry backoff. Default: [`RETRY_BACKOFF_BASE`](limits::RETRY_BACKOFF_BASE) ..
    /// [`RETRY_BACKOFF_MAX`](limits::RETRY_BACKOFF_MAX).
    pub retry_backoff: Backoff,
    /// Backoff after `TooManyRequests`. Default:
    /// [`DEVICE_THROTTLE_BACKOFF_BASE`](limits::DEVICE_THROTTLE_BACKOFF_BASE) .. `RETRY_BACKOFF_MAX`.
    pub throttle_backoff: Backoff,
    /// Reconnect backoff. Default: [`RECONNECT_BACKOFF_BASE`](limits::RECONNECT_BACKOFF_BASE) ..
    /// [`RECONNECT_BACKOFF_MAX`](limits::RECONNECT_BACKOFF_MAX).
    pub reconnect_backoff: Backoff,
    /// 5xx in a row that open a tenant's breaker. Default: [`BREAKER_SERVER_ERRORS_MAX`](limits::BREAKER_SERVER_ERRORS_MAX).
    pub breaker_server_errors_max: u32,
    /// How long a breaker stays open. Default: [`BREAKER_OPEN_FOR`](limits::BREAKER_OPEN_FOR).
    pub breaker_open_for: Duration,
    /// Unanswered probe timeout. Default: [`BREAKER_PROBE_TIMEOUT`](limits::BREAKER_PROBE_TIMEOUT).
    pub breaker_probe_timeout: Duration,
    /// When a dispatched push without an answer is presumed lost. Default:
    /// [`DISPATCH_ANSWER_MAX`](limits::DISPATCH_ANSWER_MAX).
    pub dispatch_answer_max: Duration,
    /// Tenant housekeeping period. Default: [`POOL_TICK`](limits::POOL_TICK).
    pub pool_tick: Duration,
    /// Restarts per child within `restart_window`. Default: [`RESTART_INTENSITY_MAX`](limits::RESTART_INTENSITY_MAX).
    pub restart_intensity_max: usize,
    /// Default: [`RESTART_WINDOW`](limits::RESTART_WINDOW).
    pub restart_window: Duration,
    /// Bound on a call from the handle into an actor, and on the wait of `send` for its shard
    /// to take a push. Default: [`ACTOR_CALL_TIMEOUT`](limits::ACTOR_CALL_TIMEOUT).
    pub call_timeout: Duration,
    /// Longest wait of `send` for the write-ahead log's answer once the shard took the push;
    /// past it `send` answers [`PushError::OutcomeUnknown`]. Default:
    /// [`SEND_APPEND_WAIT_MAX`](limits::SEND_APPEND_WAIT_MAX).
    pub append_wait_max: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            shard_queue_max: limits::SHARD_QUEUE_MAX,
            shard_inflight_max: limits::SHARD_INFLIGHT_MAX,
            attempts_max: limits::PUSH_ATTEMPTS_MAX,
            retry_backoff: Backoff::new(limits::RETRY_BACKOFF_BASE, limits::RETRY_BACKOFF_MAX),
            throttle_backoff: Backoff::new(
                limits::DEVICE_THROTTLE_BACKOFF_BASE,
                limits::RETRY_BACKOFF_MAX,
            ),
            reconnect_backoff: Backoff::new(
                limits::RECONNECT_BACKOFF_BASE,
                limits::RECONNECT_BACKOFF_MAX,
            ),
            breaker_server_errors_max: limits::BREAKER_SERVER_ERRORS_MAX,
            breaker_open_for: limits::BREAKER_OPEN_FOR,
            breaker_probe_timeout: limits::BREAKER_PROBE_TIMEOUT,
            dispatch_answer_max: limits::DISPATCH_ANSWER_MAX,
            pool_tick: limits::POOL_TICK,
            restart_intensity_max: limits::RESTART_INTENSITY_MAX,
            restart_window: limits::RESTART_WINDOW,
            call_timeout: limits::ACTOR_CALL_TIMEOUT,
            append_wait_max: limits::SEND_APPEND_WAIT_MAX,
        }
    }
}

/// Why a push was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// No tenant by that name.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    /// The tenant or shard is full: try again after `retry_after` (HTTP 429).
    #[error("overloaded; retry after {retry_after:?}")]
    Overloaded {
        /// When trying again may succeed.
        retry_after: Duration,
    },
    /// The engine is shutting down and takes no new pushes.
    #[error("shutting down")]
    ShuttingDown,
    /// The engine stopped (its supervisor gave up); the reason is given.
    #[error("engine stopped: {0}")]
    Stopped(String),
    /// The push could not be appended to the write-ahead log; it was not accepted.
    #[error("write-ahead log failed: {0}")]
    Wal(String),
    /// The shard is not running or did not take the push within `Tuning::call_timeout`. The
    /// push was **not** accepted (nothing of it is in the write-ahead log): sending it again
    /// is safe.
    #[error("shard unavailable: {0}")]
    Unavailable(String),
    /// The shard took the push, but the write-ahead log did not answer its append within
    /// `Tuning::append_wait_max`: the push may or may not be accepted. It will be, or not,
    /// when the append ends: query [`Herald::outcome`] with `id` — it ends with the push's
    /// outcome if the append succeeded, or with `Failed { reason: NotAccepted }` if it failed.
    /// Sending it again with the same `apns-id` is also safe (dedupe).
    #[error("outcome of push {id} unknown: its write-ahead log append did not answer in time")]
    OutcomeUnknown {
        /// The push's id.
        id: PushId,
    },
    /// The batch is larger than [`SEND_BATCH_MAX`](limits::SEND_BATCH_MAX).
    #[error("batch of {0} pushes exceeds the limit")]
    BatchTooLarge(usize),
    /// A push with the same id is being appended to the write-ahead log right now (an
    /// earlier send of it, still in progress). Its fate is that append's: send it again after
    /// `retry_after` — the dedupe then answers it (accepted if the append succeeded, appended
    /// afresh if it failed). Answering "accepted" now could lie: the append may still fail.
    #[error("push {id} is being accepted by an earlier send; retry after {retry_after:?}")]
    InProgress {
        /// The push's id.
        id: PushId,
        /// When sending it again will find the earlier append finished.
        retry_after: Duration,
    },
}

/// Why a tenant operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TenantError {
    /// No tenant by that name.
    #[error("unknown tenant {0:?}")]
    Unknown(String),
    /// A tenant by that name exists already.
    #[error("tenant {0:?} exists already")]
    Exists(String),
    /// The configuration is invalid.
    #[error("invalid tenant: {0}")]
    Invalid(String),
    /// The engine did not answer.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

/// Why the engine could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The shard count is outside `1..=SHARDS_MAX`.
    #[error("shard count {0} is outside 1..={max}", max = limits::SHARDS_MAX)]
    Shards(u32),
    /// A tenant's configuration is invalid (or its id repeats).
    #[error("invalid tenant: {0}")]
    Tenant(String),
    /// A tuning value is invalid.
    #[error("invalid tuning: {0}")]
    Tuning(String),
    /// The actor tree did not start.
    #[error("engine did not start: {0}")]
    Start(String),
}

/// What `shutdown` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every accepted push got its outcome before the deadline.
    pub drained: bool,
    /// Pushes still pending (they stay in the write-ahead log for the next start).
    pub remaining: usize,
}

/// Builds a [`Herald`]. See [`Herald::builder`].
#[derive(Debug)]
pub struct HeraldBuilder {
    tenants: Vec<TenantConfig>,
    shards: u32,
    tuning: Tuning,
    clock: Option<SharedClock>,
    seed: Option<u64>,
    connector: Option<SharedConnector>,
    wal: Option<SharedWal>,
    tokens: Option<SharedTokenState>,
    endpoint: Endpoint,
    outcome_tx: Option<broadcast::Sender<OutcomeRecord>>,
    invalidation_tx: Option<broadcast::Sender<Invalidation>>,
}

impl HeraldBuilder {
    /// A stream of every outcome from the engine's start, *including* those of pushes
    /// recovered from the write-ahead log that finish while [`build`](Self::build) runs (an
    /// expired push, a token known dead): [`Herald::outcomes`], called after `build`, misses
    /// those. Bounded like [`Herald::outcomes`]: read it soon after `build`, or get `Lagged`.
    pub fn subscribe_outcomes(&mut self) -> broadcast::Receiver<OutcomeRecord> {
        self.outcome_tx
            .get_or_insert_with(|| broadcast::channel(limits::OUTCOME_STREAM_CAPACITY).0)
            .subscribe()
    }

    /// As [`subscribe_outcomes`](Self::subscribe_outcomes), for token invalidations.
    pub fn subscribe_invalidations(&mut self) -> broadcast::Receiver<Invalidation> {
        self.invalidation_tx
            .get_or_insert_with(|| broadcast::channel(limits::INVALIDATION_STREAM_CAPACITY).0)
            .subscribe()
    }

    /// Add a tenant. Default: none (add them later with [`Herald::add_tenant`]).
    pub fn tenant(&mut self, config: TenantConfig) -> &mut Self {
        self.tenants.push(config);
        self
    }

    /// Number of device shards. Default: [`SHARDS_DEFAULT`](limits::SHARDS_DEFAULT).
    pub fn shards(&mut self, shards: u32) -> &mut Self {
        self.shards = shards;
        self
    }

    /// Bounds and timings. Default: [`Tuning::default`].
    pub fn tuning(&mut self, tuning: Tuning) -> &mut Self {
        self.tuning = tuning;
        self
    }

    /// Wall clock. Default: [`SystemClock`].
    pub fn clock(&mut self, clock: SharedClock) -> &mut Self {
        self.clock = Some(clock);
        self
    }

    /// Seed of every random choice (push ids, jitter). Default: seeded from the OS.
    pub fn rng_seed(&mut self, seed: u64) -> &mut Self {
        self.seed = Some(seed);
        self
    }

    /// How connections open byte streams. Default: [`TcpConnector`].
    pub fn connector(&mut self, connector: SharedConnector) -> &mut Self {
        self.connector = Some(connector);
        self
    }

    /// The write-ahead log accepted pushes are appended to before `send` returns, shared by
    /// every shard (records carry their shard). Default: a [`MemoryWal`] (survives shard
    /// restarts, not process exits); use a [`FileWal`](crate::wal::FileWal) for durability.
    pub fn wal(&mut self, wal: SharedWal) -> &mut Self {
        self.wal = Some(wal);
        self
    }

    /// The device-token state consulted before every send and told about every 410.
    /// Default: a [`MemoryTokenState`].
    pub fn token_state(&mut self, tokens: SharedTokenState) -> &mut Self {
        self.tokens = Some(tokens);
        self
    }

    /// Where APNs is. Default: [`Endpoint::production`].
    pub fn endpoint(&mut self, endpoint: Endpoint) -> &mut Self {
        self.endpoint = endpoint;
        self
    }

    /// Start the actor tree. Must run inside a tokio runtime.
    pub async fn build(&mut self) -> Result<Herald, BuildError> {
        if self.shards == 0 || self.shards > limits::SHARDS_MAX {
            return Err(BuildError::Shards(self.shards));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.tenants {
            t.validate().map_err(BuildError::Tenant)?;
            if !seen.insert(t.id.clone()) {
                return Err(BuildError::Tenant(format!("tenant {} given twice", t.id)));
            }
        }
        let tuning = self.tuning.clone();
        if tuning.shard_queue_max == 0 || tuning.shard_inflight_max == 0 || tuning.attempts_max == 0
        {
            return Err(BuildError::Tuning(
                "a queue bound or attempts_max is zero".into(),
            ));
        }
        if tuning.call_timeout.is_zero() || tuning.append_wait_max < tuning.call_timeout {
            return Err(BuildError::Tuning(
                "call_timeout is zero or append_wait_max is shorter than it".into(),
            ));
        }
        let rng = match self.seed {
            Some(seed) => DetRng::from_seed(seed),
            None => DetRng::from_os(),
        };
        let wal = self
            .wal
            .clone()
            .unwrap_or_else(|| Arc::new(MemoryWal::new()));
        // A builder is built once; a second build gets fresh streams.
        let outcome_tx = self
            .outcome_tx
            .take()
            .unwrap_or_else(|| broadcast::channel(limits::OUTCOME_STREAM_CAPACITY).0);
        let invalidation_tx = self
            .invalidation_tx
            .take()
            .unwrap_or_else(|| broadcast::channel(limits::INVALIDATION_STREAM_CAPACITY).0);
        let engine = Arc::new(EngineShared {
            clock: self.clock.clone().unwrap_or_else(|| Arc::new(SystemClock)),
            connector: self
                .connector
                .clone()
                .unwrap_or_else(|| Arc::new(TcpConnector)),
            endpoint: self.endpoint.clone(),
            wal,
            tokens: self
                .tokens
                .clone()
                .unwrap_or_else(|| Arc::new(MemoryTokenState::new())),
            outcomes: OutcomeStore::new(limits::OUTCOMES_KEPT_MAX),
            outcome_tx,
            invalidation_tx,
            shard_count: self.shards,
            rng: Mutex::new(rng),
            directory: RwLock::new(Directory::default()),
            failed: Mutex::new(None),
            tuning,
        });
        let args = SupervisorArgs {
            engine: engine.clone(),
            tenants: self.tenants.clone(),
        };
        let (supervisor, _) = Actor::spawn(None, EngineSupervisor, args)
            .await
            .map_err(|e| BuildError::Start(e.to_string()))?;
        Ok(Herald {
            inner: Arc::new(HeraldInner {
                engine,
                supervisor,
                accepting: AtomicBool::new(true),
            }),
        })
    }
}

/// The engine's handle: send pushes, read outcomes, manage tenants, shut down.
///
/// Cloning gives another handle to the same engine. Dropping every handle does not stop the
/// engine: call [`shutdown`](Self::shutdown).
#[derive(Clone)]
pub struct Herald {
    inner: Arc<HeraldInner>,
}

impl fmt::Debug for Herald {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Herald")
            .field("shards", &self.inner.engine.shard_count)
            .finish_non_exhaustive()
    }
}

struct HeraldInner {
    engine: Arc<EngineShared>,
    supervisor: ActorRef<SupervisorMsg>,
    accepting: AtomicBool,
}

impl Herald {
    /// A builder with every setting at its default.
    pub fn builder() -> HeraldBuilder {
        HeraldBuilder {
            tenants: Vec::new(),
            shards: limits::SHARDS_DEFAULT,
            tuning: Tuning::default(),
            clock: None,
            seed: None,
            connector: None,
            wal: None,
            tokens: None,
            endpoint: Endpoint::production(),
            outcome_tx: None,
            invalidation_tx: None,
        }
    }

    /// Accept one push for `tenant`: returns its id once it is appended to the write-ahead log.
    ///
    /// The id is the notification's `apns-id` when it has one, which makes it an idempotency
    /// key: sending a push again under an `apns-id` that the tenant used for a push its shard
    /// holds or finished recently ([`SHARD_DEDUPE_RETENTION`](limits::SHARD_DEDUPE_RETENTION),
    /// at most [`SHARD_DEDUPE_KEPT_MAX`](limits::SHARD_DEDUPE_KEPT_MAX) per shard) returns the
    /// same id and queues nothing — also after a shard crash or an engine restart on the same
    /// durable WAL (the WAL keeps done markers). Dedupe is per tenant: another tenant's push
    /// with the same `apns-id` is a different push. Without an `apns-id` the engine draws a
    /// fresh UUID. [`send_idempotent`](Self::send_idempotent) derives the id from an
    /// idempotency key instead.
    ///
    /// # The answer is exact
    ///
    /// - `Ok(id)`: the push is in the write-ahead log (or was a duplicate of one that is or was).
    /// - [`PushError::Unavailable`], [`PushError::Overloaded`], [`PushError::Wal`] and the
    ///   other errors: the push was **not** accepted.
    /// - [`PushError::OutcomeUnknown`]: the shard took the push but the WAL append did not
    ///   answer within `Tuning::append_wait_max`. Only this answer leaves the question open,
    ///   and [`outcome`](Self::outcome) settles it: the push's outcome if the append
    ///   succeeded, `Failed { reason: NotAccepted }` if it failed.
    ///
    /// `send` waits at most `Tuning::call_timeout` for the shard to take the push (a shard
    /// that has not taken it by then never will), then for the append's own answer, which is
    /// bounded by `append_wait_max`.
    pub async fn send(
        &self,
        tenant: &str,
        notification: Notification,
    ) -> Result<PushId, PushError> {
        let mut results = self.send_batch(tenant, vec![notification]).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(PushError::Unavailable("empty answer".into())))
    }

    /// [`send`](Self::send) with the push id derived from an idempotency key:
    /// [`PushId::from_idempotency_key`]`(tenant, key)` becomes the notification's `apns-id`
    /// (replacing one it had). Sending again with the same tenant and key — a retried HTTP
    /// request with the same `Idempotency-Key` — returns the same id and sends nothing while
    /// the first push is queued or finished recently (see [`send`](Self::send)).
    pub async fn send_idempotent(
        &self,
        tenant: &str,
        key: &str,
        notification: Notification,
    ) -> Result<PushId, PushError> {
        let id = PushId::from_idempotency_key(tenant, key);
        self.send(tenant, notification.with_apns_id(id.apns_id()))
            .await
    }

    /// Accept several pushes for `tenant` (at most [`SEND_BATCH_MAX`](limits::SEND_BATCH_MAX)):
    /// one result per push, in order. The whole batch is refused (outer `Err`) if the tenant
    /// is unknown or full, or the engine is not accepting.
    pub async fn send_batch(
        &self,
        tenant: &str,
        notifications: Vec<Notification>,
    ) -> Result<Vec<Result<PushId, PushError>>, PushError> {
        let engine = &self.inner.engine;
        if let Some(why) = engine.failure() {
            return Err(PushError::Stopped(why));
        }
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(PushError::ShuttingDown);
        }
        if notifications.len() > limits::SEND_BATCH_MAX {
            return Err(PushError::BatchTooLarge(notifications.len()));
        }
        let (tenant_load, queue_max) = engine
            .tenant_load(tenant)
            .ok_or_else(|| PushError::UnknownTenant(tenant.to_owned()))?;
        let n = notifications.len();
        if !reserve(&tenant_load, n, queue_max) {
            return Err(overloaded());
        }
        let now = engine.clock.now();
        let mut by_shard: BTreeMap<u32, Vec<(usize, Push)>> = BTreeMap::new();
        let mut ids = Vec::with_capacity(n);
        for (index, notification) in notifications.into_iter().enumerate() {
            let (id, notification) = match notification.apns_id() {
                Some(apns_id) => (PushId::from(apns_id), notification),
                None => {
                    let id = PushId::from_u128(engine.next_uuid());
                    (id, notification.with_apns_id(id.apns_id()))
                }
            };
            ids.push(id);
            let shard = shard_of(notification.device_token(), engine.shard_count);
            by_shard.entry(shard).or_default().push((
                index,
                Push {
                    push_id: id.as_u128(),
                    tenant: tenant.to_owned(),
                    notification,
                    accepted_at_ms: now.as_millis(),
                },
            ));
        }
        let mut results: Vec<Result<PushId, PushError>> = ids.iter().map(|id| Ok(*id)).collect();
        // Every shard takes its part at the same time (in shard order, for determinism), and
        // the parts are written as one WAL append (one commit for the batch).
        let joint = JointAppend::split(Arc::clone(&engine.wal), by_shard.len());
        let parts = by_shard
            .into_iter()
            .zip(joint)
            .map(|((shard, group), append)| async move {
                let (indexes, pushes): (Vec<usize>, Vec<Push>) = group.into_iter().unzip();
                (indexes, self.enqueue(shard, pushes, append).await)
            });
        for (indexes, answers) in futures_util::future::join_all(parts).await {
            for (index, answer) in indexes.into_iter().zip(answers) {
                if let Err(e) = answer {
                    results[index] = Err(e);
                }
            }
        }
        Ok(results)
    }

    /// Hand `pushes` to shard `shard`, whose WAL records join `append`; `Ok(())` per push that
    /// is now held by the shard (see [`send`](Self::send) for what each answer means).
    async fn enqueue(
        &self,
        shard: u32,
        pushes: Vec<Push>,
        append: JointPart,
    ) -> Vec<Result<(), PushError>> {
        let engine = &self.inner.engine;
        let n = pushes.len();
        let tenant = pushes.first().map(|p| p.tenant.clone()).unwrap_or_default();
        let release_tenant = |k: usize| {
            for _ in 0..k {
                engine.release_tenant(&tenant);
            }
        };
        let (shard_load, actor) = engine.shard_slot(shard);
        if !reserve(&shard_load, n, engine.tuning.shard_queue_max) {
            release_tenant(n);
            return vec![Err(overloaded()); n];
        }
        let Some(actor) = actor else {
            release(&shard_load, n);
            release_tenant(n);
            return vec![Err(PushError::Unavailable(format!("shard {shard} not running"))); n];
        };
        let ids: Vec<PushId> = pushes
            .iter()
            .map(|p| PushId::from_u128(p.push_id))
            .collect();
        let claim = Arc::new(AtomicU8::new(CLAIM_OPEN));
        let (reply, mut answer) = oneshot::channel();
        let part = append.handle();
        let request = EnqueueRequest {
            pushes,
            claim: claim.clone(),
            reply,
            append,
        };
        let not_taken = |why: String| {
            release(&shard_load, n);
            release_tenant(n);
            vec![Err(PushError::Unavailable(why)); n]
        };
        if actor
            .send_message(ShardMsg::Enqueue(Box::new(request)))
            .is_err()
        {
            return not_taken(format!("shard {shard} not running"));
        }
        // First wait for the shard to take the pushes (or die, dropping the reply)...
        let answer = match tokio::time::timeout(engine.tuning.call_timeout, &mut answer).await {
            Ok(answer) => answer,
            Err(_) => {
                let abandoned = claim
                    .compare_exchange(
                        CLAIM_OPEN,
                        CLAIM_ABANDONED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
                if abandoned {
                    // The shard will drop them untouched: exactly "not accepted". Let the
                    // batch's other parts be appended without waiting for this one.
                    part.skip();
                    return not_taken(format!("shard {shard} did not take the push in time"));
                }
                // ...then, once it took them, for the append's own answer, within its bound.
                let rest = engine
                    .tuning
                    .append_wait_max
                    .saturating_sub(engine.tuning.call_timeout);
                match tokio::time::timeout(rest, &mut answer).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        // An answer sent before the close is still read; after it, the
                        // shard's append task settles the reservations and the outcome lookup
                        // (`answer_enqueue`).
                        answer.close();
                        if let Ok(answers) = answer.try_recv() {
                            return self.settle(shard, &tenant, &ids, answers);
                        }
                        metrics::counter!("herald_send_outcome_unknown_total").increment(n as u64);
                        return ids
                            .into_iter()
                            .map(|id| Err(PushError::OutcomeUnknown { id }))
                            .collect();
                    }
                }
            }
        };
        match answer {
            Err(_) => {
                // The reply was dropped unanswered: the shard died before taking the pushes
                // (it answers every push it takes, from the append task).
                not_taken(format!("shard {shard} stopped"))
            }
            Ok(answers) => self.settle(shard, &tenant, &ids, answers),
        }
    }

    /// The results of a shard's answers to an `Enqueue`, releasing the admission places of
    /// the pushes it did not keep.
    fn settle(
        &self,
        shard: u32,
        tenant: &str,
        ids: &[PushId],
        answers: Vec<Enqueued>,
    ) -> Vec<Result<(), PushError>> {
        let engine = &self.inner.engine;
        answers
            .into_iter()
            .zip(ids)
            .map(|(a, id)| {
                if a != Enqueued::Accepted {
                    engine.release_reservation(tenant, shard);
                }
                match a {
                    Enqueued::Accepted | Enqueued::Duplicate => Ok(()),
                    Enqueued::InProgress => Err(PushError::InProgress {
                        id: *id,
                        retry_after: limits::IN_PROGRESS_RETRY_AFTER,
                    }),
                    Enqueued::Full => Err(overloaded()),
                    Enqueued::WalFailed(e) => Err(PushError::Wal(e)),
                }
            })
            .collect()
    }

    /// The outcome of push `id`, if it has one and it is still kept
    /// ([`OUTCOMES_KEPT_MAX`](limits::OUTCOMES_KEPT_MAX) most recent). If several tenants used
    /// the id, the one recorded last: a program serving several tenants asks
    /// [`outcome_for`](Self::outcome_for).
    pub fn outcome(&self, id: PushId) -> Option<Outcome> {
        self.inner.engine.outcomes.get(id)
    }

    /// The outcome of push `id` of `tenant`, if it has one and it is still kept. Another
    /// tenant's push with the same id is never answered.
    pub fn outcome_for(&self, tenant: &str, id: PushId) -> Option<Outcome> {
        self.inner.engine.outcomes.get_for(tenant, id)
    }

    /// A stream of every outcome from now on (bounded: a slow reader gets `Lagged`). To see
    /// the outcomes of pushes recovered and finished during start-up too, subscribe on the
    /// builder ([`HeraldBuilder::subscribe_outcomes`]).
    pub fn outcomes(&self) -> broadcast::Receiver<OutcomeRecord> {
        self.inner.engine.outcome_tx.subscribe()
    }

    /// A stream of every token invalidation (410) from now on (bounded).
    pub fn invalidations(&self) -> broadcast::Receiver<Invalidation> {
        self.inner.engine.invalidation_tx.subscribe()
    }

    /// Pushes accepted and not yet finished, all shards.
    pub fn pending(&self) -> usize {
        self.inner.engine.pending()
    }

    /// The shard a device token belongs to.
    pub fn shard_of(&self, token: &DeviceToken) -> u32 {
        shard_of(token, self.inner.engine.shard_count)
    }

    /// Add a tenant.
    pub async fn add_tenant(&self, config: TenantConfig) -> Result<(), TenantError> {
        let timeout = self.call_timeout_ms();
        ractor::call_t!(
            self.inner.supervisor,
            |reply| SupervisorMsg::AddTenant(Box::new(config), reply),
            timeout
        )
        .map_err(|e| TenantError::Unavailable(e.to_string()))?
    }

    /// Replace a tenant's credentials and limits without dropping queued or in-flight pushes:
    /// its connections drain and new ones open with the new credentials.
    pub async fn update_tenant(&self, config: TenantConfig) -> Result<(), TenantError> {
        let timeout = self.call_timeout_ms().saturating_mul(2);
        ractor::call_t!(
            self.inner.supervisor,
            |reply| SupervisorMsg::UpdateTenant(Box::new(config), reply),
            timeout
        )
        .map_err(|e| TenantError::Unavailable(e.to_string()))?
    }

    /// Remove a tenant. Its queued pushes end `Failed { TenantRemoved }`.
    pub async fn remove_tenant(&self, id: &str) -> Result<(), TenantError> {
        let timeout = self.call_timeout_ms();
        let id = id.to_owned();
        ractor::call_t!(
            self.inner.supervisor,
            |reply| SupervisorMsg::RemoveTenant(id, reply),
            timeout
        )
        .map_err(|e| TenantError::Unavailable(e.to_string()))?
    }

    /// A tenant's breaker state and pool size.
    pub async fn tenant_status(&self, id: &str) -> Result<TenantStatus, TenantError> {
        let actor = self
            .inner
            .engine
            .tenant_actor(id)
            .ok_or_else(|| TenantError::Unknown(id.to_owned()))?;
        ractor::call_t!(actor, TenantMsg::Status, self.call_timeout_ms())
            .map_err(|e| TenantError::Unavailable(e.to_string()))
    }

    /// Stop taking pushes, wait up to `deadline` for every accepted push to get its outcome,
    /// then stop the actor tree (shards first, then tenants and their connections). Pushes
    /// still pending stay in the write-ahead log.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.inner.accepting.store(false, Ordering::Release);
        let until = tokio::time::Instant::now() + deadline;
        while self.pending() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let remaining = self.pending();
        let timeout = self.call_timeout_ms().saturating_mul(2);
        let _ = ractor::call_t!(self.inner.supervisor, SupervisorMsg::Shutdown, timeout);
        ShutdownReport {
            drained: remaining == 0,
            remaining,
        }
    }

    /// True while the engine takes new pushes: [`shutdown`](Self::shutdown) has not been
    /// called and its supervisor has not given up (a readiness probe).
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire) && self.inner.engine.failure().is_none()
    }

    /// Fault injection for tests: crash one connection actor of `tenant`. Only with the
    /// `test-util` feature.
    #[cfg(feature = "test-util")]
    pub async fn crash_connection(&self, tenant: &str) -> bool {
        let Some(actor) = self.inner.engine.tenant_actor(tenant) else {
            return false;
        };
        ractor::call_t!(actor, TenantMsg::CrashConnection, self.call_timeout_ms()).unwrap_or(false)
    }

    /// Fault injection for tests: crash shard `shard` (it restarts and replays its WAL). Only
    /// with the `test-util` feature.
    #[cfg(feature = "test-util")]
    pub async fn crash_shard(&self, shard: u32) -> bool {
        let timeout = self.call_timeout_ms();
        ractor::call_t!(
            self.inner.supervisor,
            |reply| SupervisorMsg::CrashShard(shard, reply),
            timeout
        )
        .unwrap_or(false)
    }

    fn call_timeout_ms(&self) -> u64 {
        u64::try_from(self.inner.engine.tuning.call_timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

fn overloaded() -> PushError {
    PushError::Overloaded {
        retry_after: limits::OVERLOADED_RETRY_AFTER,
    }
}

/// Take `n` places of `load` if it stays within `max`.
fn reserve(load: &AtomicUsize, n: usize, max: usize) -> bool {
    load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
        let next = current.checked_add(n)?;
        (next <= max).then_some(next)
    })
    .is_ok()
}

fn release(load: &AtomicUsize, n: usize) {
    let _ = load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        Some(c.saturating_sub(n))
    });
}

/// What every actor of one engine shares.
#[derive(Debug)]
pub(crate) struct EngineShared {
    pub(crate) clock: SharedClock,
    pub(crate) connector: SharedConnector,
    pub(crate) endpoint: Endpoint,
    pub(crate) tuning: Tuning,
    pub(crate) wal: SharedWal,
    pub(crate) tokens: SharedTokenState,
    pub(crate) outcomes: OutcomeStore,
    pub(crate) outcome_tx: broadcast::Sender<OutcomeRecord>,
    pub(crate) invalidation_tx: broadcast::Sender<Invalidation>,
    pub(crate) shard_count: u32,
    rng: Mutex<DetRng>,
    directory: RwLock<Directory>,
    failed: Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct Directory {
    tenants: BTreeMap<String, TenantSlot>,
    shards: BTreeMap<u32, ShardSlot>,
}

#[derive(Debug)]
struct TenantSlot {
    actor: ActorRef<TenantMsg>,
    load: Arc<AtomicUsize>,
    queue_max: usize,
}

#[derive(Debug, Default)]
struct ShardSlot {
    actor: Option<ActorRef<ShardMsg>>,
    load: Arc<AtomicUsize>,
}

impl EngineShared {
    pub(crate) fn fork_rng(&self) -> DetRng {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fork()
    }

    fn next_uuid(&self) -> u128 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .uuid()
            .as_u128()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.directory
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Directory> {
        self.directory
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn tenant_actor(&self, id: &str) -> Option<ActorRef<TenantMsg>> {
        self.read().tenants.get(id).map(|t| t.actor.clone())
    }

    pub(crate) fn tenant_exists(&self, id: &str) -> bool {
        self.read().tenants.contains_key(id)
    }

    fn tenant_load(&self, id: &str) -> Option<(Arc<AtomicUsize>, usize)> {
        self.read()
            .tenants
            .get(id)
            .map(|t| (t.load.clone(), t.queue_max))
    }

    /// One push of tenant `id` finished (or was not taken).
    pub(crate) fn release_tenant(&self, id: &str) {
        if let Some(t) = self.read().tenants.get(id) {
            release(&t.load, 1);
        }
    }

    pub(crate) fn set_tenant_actor(&self, id: &str, actor: ActorRef<TenantMsg>, queue_max: usize) {
        let mut dir = self.write();
        match dir.tenants.get_mut(id) {
            Some(slot) => {
                slot.actor = actor;
                slot.queue_max = queue_max;
            }
            None => {
                dir.tenants.insert(
                    id.to_owned(),
                    TenantSlot {
                        actor,
                        load: Arc::new(AtomicUsize::new(0)),
                        queue_max,
                    },
                );
            }
        }
    }

    pub(crate) fn remove_tenant(&self, id: &str) {
        self.write().tenants.remove(id);
    }

    /// The admission counter of shard `shard` (created on first use, kept across restarts).
    pub(crate) fn shard_load(&self, shard: u32) -> Arc<AtomicUsize> {
        self.write().shards.entry(shard).or_default().load.clone()
    }

    fn shard_slot(&self, shard: u32) -> (Arc<AtomicUsize>, Option<ActorRef<ShardMsg>>) {
        let dir = self.read();
        match dir.shards.get(&shard) {
            Some(s) => (s.load.clone(), s.actor.clone()),
            None => (Arc::new(AtomicUsize::new(0)), None),
        }
    }

    /// The running actor of shard `shard`, if any.
    pub(crate) fn shard_actor(&self, shard: u32) -> Option<ActorRef<ShardMsg>> {
        self.read().shards.get(&shard).and_then(|s| s.actor.clone())
    }

    /// Give back the admission places of one push of `tenant` on shard `shard` that was not
    /// accepted.
    pub(crate) fn release_reservation(&self, tenant: &str, shard: u32) {
        if let Some(s) = self.read().shards.get(&shard) {
            release(&s.load, 1);
        }
        self.release_tenant(tenant);
    }

    pub(crate) fn set_shard_actor(&self, shard: u32, actor: ActorRef<ShardMsg>) {
        self.write().shards.entry(shard).or_default().actor = Some(actor);
    }

    fn pending(&self) -> usize {
        self.read()
            .shards
            .values()
            .map(|s| s.load.load(Ordering::Acquire))
            .sum()
    }

    /// Record and stream one outcome.
    pub(crate) fn publish(&self, record: OutcomeRecord) {
        self.outcomes
            .record_for(&record.tenant, record.push_id, record.outcome.clone());
        let _ = self.outcome_tx.send(record);
    }

    pub(crate) fn mark_failed(&self, why: &str) {
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_owned());
    }

    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
