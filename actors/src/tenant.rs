//! The tenant actor: one APNs team's credentials, connection pool, rate limit and breaker.
//!
//! Shards hand it pushes ([`TenantMsg::Dispatch`]). It asks the [`Breaker`] (open: the push
//! goes back to its shard `Deferred` until the cool-down ends: queued, neither sent nor
//! failed), then the [`TokenBucket`] (empty: the push waits here, in order, for its token;
//! at most `per_second ×` [`TENANT_RATE_WAIT_MAX`](limits::TENANT_RATE_WAIT_MAX) of pushes wait,
//! more go back `Deferred`), then gives the push to the least-loaded connection, opening another one (up to the pool's maximum)
//! when every connection carries [`POOL_GROW_AT_INFLIGHT`](limits::POOL_GROW_AT_INFLIGHT)
//! requests. An idle pool shrinks back to its minimum, one connection per
//! [`POOL_IDLE_TICKS_BEFORE_SHRINK`](limits::POOL_IDLE_TICKS_BEFORE_SHRINK) ticks.
//!
//! Credentials hot swap ([`TenantMsg::Update`]): new connections use the new credentials,
//! old ones drain (their in-flight requests finish), queued pushes stay at their shards.
//!
//! Restart policy: the tenant supervises its connections one-for-one (by connection number,
//! in a `BTreeMap`), restarting a failed one up to
//! [`RESTART_INTENSITY_MAX`](limits::RESTART_INTENSITY_MAX) times in
//! [`RESTART_WINDOW`](limits::RESTART_WINDOW); past that it fails itself, escalating to the
//! engine supervisor, which restarts the tenant with its latest configuration.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rustls::pki_types::ServerName;
use tracing::Instrument as _;

use crate::apns::http2::{ConnectionConfig, TlsSettings};
use crate::apns::{AuthError, ClientIdentity, ConnectionAuth, TokenConnectionAuth, TokenMinter};
use crate::breaker::{Admission, Breaker, BreakerState};
use crate::connection::{
    ConnectionActor, ConnectionArgs, ConnectionLink, ConnectionMsg, Job, JobResult,
};
use crate::engine::EngineShared;
use crate::limits;
use crate::rate_limit::{RateLimit, TokenBucket};
use crate::supervisor::RestartLog;

/// How a tenant authenticates to APNs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Credentials {
    /// Provider tokens (ES256 JWT) from this minter; each connection follows the switching rules.
    Token(TokenMinter),
    /// A client certificate presented in the TLS handshake.
    Certificate(ClientIdentity),
}

impl Credentials {
    /// Per-connection credentials for a new connection.
    pub(crate) fn connection_auth(&self) -> Result<Box<dyn ConnectionAuth>, AuthError> {
        match self {
            Credentials::Token(minter) => Ok(Box::new(TokenConnectionAuth::new(minter.clone()))),
            Credentials::Certificate(identity) => Ok(Box::new(identity.certificate_auth()?)),
        }
    }

    /// APNs said the provider token expired: mint a new one. (Counted in
    /// `herald_provider_token_rotations_total` by the tenant's tick, from the minter's count,
    /// like every other mint: counting here too would count a forced refresh twice.)
    pub(crate) fn refresh_token(&self) {
        if let Credentials::Token(minter) = self
            && let Err(e) = minter.force_refresh()
        {
            tracing::warn!(error = %e, "minting a new provider token failed");
        }
    }

    fn minted(&self) -> u64 {
        match self {
            Credentials::Token(minter) => minter.minted_count(),
            Credentials::Certificate(_) => 0,
        }
    }
}

/// One tenant: an APNs team with its credentials and limits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TenantConfig {
    /// The tenant's name (how `send` addresses it).
    pub id: String,
    /// How it authenticates.
    pub credentials: Credentials,
    /// Connections kept open at least. Default: [`POOL_CONNECTIONS_MIN_DEFAULT`](limits::POOL_CONNECTIONS_MIN_DEFAULT).
    pub connections_min: usize,
    /// Connections opened at most. Default: [`POOL_CONNECTIONS_MAX_DEFAULT`](limits::POOL_CONNECTIONS_MAX_DEFAULT).
    pub connections_max: usize,
    /// Sending rate limit. Default: none.
    pub rate_limit: Option<RateLimit>,
    /// Pushes accepted and not yet finished before `send` answers `Overloaded`.
    /// Default: [`TENANT_QUEUE_MAX`](limits::TENANT_QUEUE_MAX).
    pub queue_max: usize,
}

impl TenantConfig {
    /// A tenant named `id` authenticating with `credentials`, every other setting at its default.
    pub fn new(id: impl Into<String>, credentials: Credentials) -> Self {
        TenantConfig {
            id: id.into(),
            credentials,
            connections_min: limits::POOL_CONNECTIONS_MIN_DEFAULT,
            connections_max: limits::POOL_CONNECTIONS_MAX_DEFAULT,
            rate_limit: None,
            queue_max: limits::TENANT_QUEUE_MAX,
        }
    }

    /// Set the pool bounds.
    pub fn connections(&mut self, min: usize, max: usize) -> &mut Self {
        self.connections_min = min;
        self.connections_max = max;
        self
    }

    /// Set the rate limit.
    pub fn rate_limit(&mut self, limit: RateLimit) -> &mut Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Set the admission bound.
    pub fn queue_max(&mut self, max: usize) -> &mut Self {
        self.queue_max = max;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("tenant id is empty".into());
        }
        if self.connections_min == 0
            || self.connections_min > self.connections_max
            || self.connections_max > limits::POOL_CONNECTIONS_MAX
        {
            return Err(format!(
                "tenant {}: need 1 <= connections_min <= connections_max <= {}",
                self.id,
                limits::POOL_CONNECTIONS_MAX
            ));
        }
        if self.queue_max == 0 {
            return Err(format!("tenant {}: queue_max is zero", self.id));
        }
        if let Some(r) = self.rate_limit
            && (!(r.per_second.is_finite() && r.per_second > 0.0) || r.burst == 0)
        {
            return Err(format!("tenant {}: rate limit must be positive", self.id));
        }
        Ok(())
    }
}

/// A tenant's health, for tests and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantStatus {
    /// The breaker's state.
    pub breaker: BreakerState,
    /// Connections in the pool (draining ones included).
    pub connections: usize,
}

/// The tenant's circuit breaker, shared with its connections' request tasks: each reports
/// its answer here directly (a short critical section under a std mutex, never held across
/// an `.await`) instead of sending the tenant an actor message per push.
#[derive(Debug)]
pub(crate) struct SharedBreaker {
    breaker: Mutex<Breaker>,
    tenant: String,
}

impl SharedBreaker {
    fn new(breaker: Breaker, tenant: String) -> Self {
        SharedBreaker {
            breaker: Mutex::new(breaker),
            tenant,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Breaker> {
        // Every critical section is one call on `Breaker`, which cannot panic halfway.
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection's health signal about one request (`probe`: it was the half-open probe).
    pub(crate) fn observe(&self, probe: bool, signal: Signal) {
        let now = tokio::time::Instant::now();
        let (before, after) = {
            let mut breaker = self.lock();
            let before = breaker.state();
            match signal {
                Signal::Success => breaker.on_success(),
                Signal::ServerError => breaker.on_server_error(now),
                Signal::Credentials => breaker.on_credentials_error(now),
                Signal::Unsent if probe => breaker.on_probe_unanswered(),
                Signal::Unsent => {}
            }
            (before, breaker.state())
        };
        if before != after {
            self.publish(after);
        }
    }

    fn state(&self) -> BreakerState {
        self.lock().state()
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!("herald_breaker_state", "tenant" => self.tenant.clone()).set(state.gauge());
    }
}

/// A health signal from a connection about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// APNs answered, and not with a 5xx or a credentials error.
    Success,
    /// 500/503.
    ServerError,
    /// 403 credentials error (or unusable credentials).
    Credentials,
    /// Not answered (not sent, or the connection failed).
    Unsent,
}

/// The tenant actor (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct TenantActor;

/// What a tenant actor starts from.
#[derive(Debug)]
pub(crate) struct TenantArgs {
    pub(crate) config: TenantConfig,
    pub(crate) engine: Arc<EngineShared>,
}

/// The tenant actor's messages.
#[derive(Debug)]
pub(crate) enum TenantMsg {
    /// Send this push (or hand it back `Deferred`).
    Dispatch(Job),
    /// Housekeeping: shrink the pool, publish gauges.
    Tick,
    /// A rate-limit token is due for the first waiting job.
    RateWake,
    /// Install new credentials and limits.
    Update(Box<TenantConfig>, RpcReplyPort<Result<(), String>>),
    /// Report health.
    Status(RpcReplyPort<TenantStatus>),
    /// Test hook: crash one connection actor.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))] // sent by `Herald`'s test hooks
    CrashConnection(RpcReplyPort<bool>),
}

#[derive(Debug)]
struct PoolEntry {
    actor: ActorRef<ConnectionMsg>,
    link: Arc<ConnectionLink>,
    draining: bool,
}

/// The tenant actor's state.
#[derive(Debug)]
pub(crate) struct TenantState {
    config: TenantConfig,
    engine: Arc<EngineShared>,
    tls: Option<TlsSettings>,
    breaker: Arc<SharedBreaker>,
    bucket: Option<TokenBucket>,
    pool: BTreeMap<u64, PoolEntry>,
    next_number: u64,
    idle_ticks: u32,
    restarts: RestartLog,
    minted_seen: u64,
    /// Jobs waiting for a rate-limit token, oldest first.
    waiting: VecDeque<Job>,
    rate_wake_scheduled: bool,
    span: tracing::Span,
}

impl Actor for TenantActor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantState, ActorProcessingErr> {
        let tuning = &args.engine.tuning;
        let tls = tls_settings(&args.engine, &args.config.credentials)?;
        let now = tokio::time::Instant::now();
        let mut state = TenantState {
            bucket: args
                .config
                .rate_limit
                .map(|r| TokenBucket::from_limit(r, now)),
            breaker: Arc::new(SharedBreaker::new(
                Breaker::new(
                    tuning.breaker_server_errors_max,
                    tuning.breaker_open_for,
                    tuning.breaker_probe_timeout,
                ),
                args.config.id.clone(),
            )),
            minted_seen: args.config.credentials.minted(),
            waiting: VecDeque::new(),
            rate_wake_scheduled: false,
            span: tracing::debug_span!("tenant", tenant = %args.config.id),
            config: args.config,
            engine: args.engine,
            tls,
            pool: BTreeMap::new(),
            next_number: 1,
            idle_ticks: 0,
            restarts: RestartLog::default(),
        };
        for _ in 0..state.config.connections_min {
            state.open_connection(&myself).await?;
        }
        myself.send_interval(state.engine.tuning.pool_tick, || TenantMsg::Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        on_message(myself, msg, state).instrument(span).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<TenantMsg>,
        event: SupervisionEvent,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed) = match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::warn!(tenant = %state.config.id, %error, "connection actor failed");
                (cell, true)
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, false),
            _ => return Ok(()),
        };
        let Some(number) = state.number_of(&cell) else {
            return Ok(());
        };
        let Some(entry) = state.pool.remove(&number) else {
            return Ok(());
        };
        if entry.draining {
            return Ok(());
        }
        // An unexpected exit: restart one-for-one, within the intensity limit.
        let _ = failed;
        if !state
            .restarts
            .allow(tokio::time::Instant::now(), &state.engine.tuning)
        {
            return Err(format!(
                "tenant {}: connection restart intensity exceeded",
                state.config.id
            )
            .into());
        }
        state.open_connection(&myself).await?;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TenantMsg>,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        state.give_back_waiting(Duration::ZERO);
        // Stop connections in a fixed order (by number), not ractor's.
        for entry in state.pool.values() {
            entry.actor.stop(None);
        }
        Ok(())
    }
}

/// The body of `TenantActor::handle`, run inside the actor's span.
async fn on_message(
    myself: ActorRef<TenantMsg>,
    msg: TenantMsg,
    state: &mut TenantState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        TenantMsg::Dispatch(job) => state.dispatch(&myself, job).await?,
        TenantMsg::Tick => state.tick(&myself).await?,
        TenantMsg::RateWake => {
            state.rate_wake_scheduled = false;
            if state.breaker.state() == BreakerState::Open {
                let retry_in = state.engine.tuning.breaker_open_for;
                state.give_back_waiting(retry_in);
            } else {
                state.release_waiting(&myself).await?;
            }
        }
        TenantMsg::Update(config, reply) => {
            let result = state.update(&myself, *config).await;
            let _ = reply.send(result);
        }
        TenantMsg::Status(reply) => {
            let _ = reply.send(TenantStatus {
                breaker: state.breaker.state(),
                connections: state.pool.len(),
            });
        }
        TenantMsg::CrashConnection(reply) => {
            let victim = state.pool.values().find(|e| !e.draining);
            let crashed = victim
                .map(|e| e.actor.send_message(ConnectionMsg::Crash).is_ok())
                .unwrap_or(false);
            let _ = reply.send(crashed);
        }
    }
    Ok(())
}

impl TenantState {
    async fn dispatch(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        mut job: Job,
    ) -> Result<(), ActorProcessingErr> {
        let now = tokio::time::Instant::now();
        let admission = self.breaker.lock().admit(now);
        match admission {
            Admission::Denied { retry_in } => {
                job.reply(JobResult::Deferred { retry_in });
                return Ok(());
            }
            Admission::Probe => {
                job.probe = true;
                self.publish_breaker();
            }
            Admission::Allowed => {}
        }
        if let Some(limit) = self.config.rate_limit {
            // Rate-limited: jobs wait here, in order, for their token. At most
            // `per_second × TENANT_RATE_WAIT_MAX` wait (so none waits past the shard's answer
            // deadline); past that the job goes back to its shard.
            let waiting_max =
                ((limit.per_second * limits::TENANT_RATE_WAIT_MAX.as_secs_f64()) as usize).max(1);
            if self.waiting.len() >= waiting_max {
                if job.probe {
                    self.breaker.lock().on_probe_unanswered();
                }
                job.reply(JobResult::Deferred {
                    retry_in: limits::TENANT_RATE_WAIT_MAX,
                });
                return Ok(());
            }
            self.waiting.push_back(job);
            return self.release_waiting(myself).await;
        }
        self.send_to_connection(myself, job).await
    }

    /// Send the waiting jobs whose rate-limit tokens are due; wake up when the next one is.
    async fn release_waiting(
        &mut self,
        myself: &ActorRef<TenantMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let now = tokio::time::Instant::now();
        while !self.waiting.is_empty() {
            let taken = match self.bucket.as_mut() {
                Some(bucket) => bucket.try_take(now),
                None => Ok(()),
            };
            match taken {
                Ok(()) => {
                    if let Some(job) = self.waiting.pop_front() {
                        self.send_to_connection(myself, job).await?;
                    }
                }
                Err(wait) => {
                    if !self.rate_wake_scheduled {
                        self.rate_wake_scheduled = true;
                        myself.send_after(wait, || TenantMsg::RateWake);
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    /// Give every waiting job back to its shard (the breaker opened, or the actor stops).
    fn give_back_waiting(&mut self, retry_in: Duration) {
        while let Some(job) = self.waiting.pop_front() {
            if job.probe {
                self.breaker.lock().on_probe_unanswered();
            }
            job.reply(JobResult::Deferred { retry_in });
        }
    }

    async fn send_to_connection(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        job: Job,
    ) -> Result<(), ActorProcessingErr> {
        let mut chosen = self.least_loaded();
        let grow = match chosen {
            None => true,
            Some(number) => {
                self.pool[&number].link.load.load(Ordering::Acquire)
                    >= limits::POOL_GROW_AT_INFLIGHT
                    && self.live_connections() < self.config.connections_max
            }
        };
        if grow {
            chosen = Some(self.open_connection(myself).await?);
        }
        let Some(number) = chosen else {
            job.reply(JobResult::Deferred {
                retry_in: self.engine.tuning.retry_backoff.ceiling(1),
            });
            return Ok(());
        };
        self.idle_ticks = 0;
        let entry = &self.pool[&number];
        entry.link.load.fetch_add(1, Ordering::AcqRel);
        // On the open connection directly; through the actor while it (re)connects.
        let Err(job) = entry.link.try_send(&entry.actor, job) else {
            return Ok(());
        };
        if let Err(ractor::MessagingErr::SendErr(ConnectionMsg::Submit(job))) =
            entry.actor.send_message(ConnectionMsg::Submit(job))
        {
            entry.link.load.fetch_sub(1, Ordering::AcqRel);
            job.reply(JobResult::Deferred {
                retry_in: self.engine.tuning.retry_backoff.ceiling(1),
            });
        }
        Ok(())
    }

    fn least_loaded(&self) -> Option<u64> {
        self.pool
            .iter()
            .filter(|(_, e)| !e.draining)
            .min_by_key(|(number, e)| (e.link.load.load(Ordering::Acquire), **number))
            .map(|(number, _)| *number)
    }

    fn live_connections(&self) -> usize {
        self.pool.values().filter(|e| !e.draining).count()
    }

    async fn open_connection(
        &mut self,
        myself: &ActorRef<TenantMsg>,
    ) -> Result<u64, ActorProcessingErr> {
        let number = self.next_number;
        self.next_number += 1;
        let endpoint = &self.engine.endpoint;
        let mut config =
            ConnectionConfig::new(endpoint.host.clone(), endpoint.port, self.tls.clone());
        config.number = number;
        let link = Arc::new(ConnectionLink::new(self.breaker.clone()));
        let args = ConnectionArgs {
            config,
            connector: self.engine.connector.clone(),
            credentials: self.config.credentials.clone(),
            clock: self.engine.clock.clone(),
            rng: self.engine.fork_rng(),
            reconnect_backoff: self.engine.tuning.reconnect_backoff,
            link: link.clone(),
        };
        let (actor, _) =
            Actor::spawn_linked(None, ConnectionActor, args, myself.get_cell()).await?;
        self.pool.insert(
            number,
            PoolEntry {
                actor,
                link,
                draining: false,
            },
        );
        Ok(number)
    }

    fn number_of(&self, cell: &ActorCell) -> Option<u64> {
        self.pool
            .iter()
            .find(|(_, e)| e.actor.get_id() == cell.get_id())
            .map(|(number, _)| *number)
    }

    async fn tick(&mut self, myself: &ActorRef<TenantMsg>) -> Result<(), ActorProcessingErr> {
        let load: usize = self
            .pool
            .values()
            .map(|e| e.link.load.load(Ordering::Acquire))
            .sum();
        if load == 0 {
            self.idle_ticks += 1;
        } else {
            self.idle_ticks = 0;
        }
        if self.idle_ticks >= limits::POOL_IDLE_TICKS_BEFORE_SHRINK
            && self.live_connections() > self.config.connections_min
        {
            self.idle_ticks = 0;
            if let Some((_, entry)) = self.pool.iter_mut().rev().find(|(_, e)| !e.draining) {
                entry.draining = true;
                let _ = entry.actor.send_message(ConnectionMsg::Drain);
            }
        }
        while self.live_connections() < self.config.connections_min {
            self.open_connection(myself).await?;
        }
        let minted = self.config.credentials.minted();
        if minted > self.minted_seen {
            metrics::counter!("herald_provider_token_rotations_total")
                .increment(minted - self.minted_seen);
            self.minted_seen = minted;
        }
        self.publish_breaker();
        Ok(())
    }

    async fn update(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        config: TenantConfig,
    ) -> Result<(), String> {
        config.validate()?;
        let tls = tls_settings(&self.engine, &config.credentials).map_err(|e| e.to_string())?;
        let now = tokio::time::Instant::now();
        self.bucket = config.rate_limit.map(|r| TokenBucket::from_limit(r, now));
        self.tls = tls;
        self.minted_seen = config.credentials.minted();
        self.config = config;
        // Old connections finish what they carry; new ones use the new credentials.
        for entry in self.pool.values_mut() {
            if !entry.draining {
                entry.draining = true;
                let _ = entry.actor.send_message(ConnectionMsg::Drain);
            }
        }
        for _ in 0..self.config.connections_min {
            self.open_connection(myself)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.breaker.lock().reset();
        self.publish_breaker();
        self.release_waiting(myself)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn publish_breaker(&self) {
        self.breaker.publish(self.breaker.state());
    }
}

/// The TLS settings of a tenant's connections: the endpoint's trust, plus the client
/// certificate for certificate auth. `None` for a plaintext endpoint.
fn tls_settings(
    engine: &EngineShared,
    credentials: &Credentials,
) -> Result<Option<TlsSettings>, ActorProcessingErr> {
    let Some(tls) = &engine.endpoint.tls else {
        return Ok(None);
    };
    let mut tls = tls.clone();
    if let Credentials::Certificate(identity) = credentials {
        tls.client_identity(identity.clone());
    }
    let config = tls.build().map_err(|e| e.to_string())?;
    let name = ServerName::try_from(engine.endpoint.host.clone()).map_err(|e| e.to_string())?;
    Ok(Some((config, name)))
}
