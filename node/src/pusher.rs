//! Drives pushes through the APNs client core: a fixed set of HTTP/2 connections, a window of
//! requests in flight, and retries with exponential backoff and full jitter.
//!
//! This is what `herald demo` and `herald bench client` run on top of the protocol core
//! (`herald_actors::apns`). The actor engine (supervised connection, tenant and shard
//! actors) replaces it as the path a push takes through a node; this driver stays as the
//! benchmark of the client core alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_actors::apns::http2::{
    ApnsConnection, ConnectError, ConnectionConfig, SendError, TlsSettings, connect,
};
use herald_actors::apns::{Delivery, Disposition, Notification, TokenConnectionAuth, TokenMinter};
use herald_actors::seams::{DetRng, SharedClock, SharedConnector};

/// Where to push and how hard.
#[derive(Debug, Clone)]
pub struct PusherConfig {
    /// APNs (or emulator) host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// TLS settings, or `None` for plaintext HTTP/2.
    pub tls: Option<TlsSettings>,
    /// How many HTTP/2 connections to spread requests over.
    pub connections: usize,
    /// Most attempts per push (first send included).
    pub attempts_max: u32,
    /// First retry delay ceiling; doubles per attempt up to `backoff_max` (full jitter).
    pub backoff_base: Duration,
    /// Largest retry delay ceiling.
    pub backoff_max: Duration,
}

/// How one push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// APNs accepted it.
    Delivered,
    /// APNs answered 410: the token is no longer valid.
    Invalidated,
    /// It failed for good, with a reason (an APNs reason or a transport error).
    Failed(String),
}

/// The result of pushing one notification: its outcome and how many resends it took.
#[derive(Debug, Clone)]
pub struct PushResult {
    /// How it ended.
    pub outcome: PushOutcome,
    /// Resends after the first attempt.
    pub retries: u32,
}

/// A pool of connections sharing one provider-token minter.
#[derive(Debug)]
pub struct Pusher {
    config: PusherConfig,
    minter: TokenMinter,
    clock: SharedClock,
    connector: SharedConnector,
    slots: Vec<Slot>,
    next_number: AtomicU64,
}

impl Pusher {
    /// A pusher with `config.connections` connection slots (opened lazily).
    pub fn new(
        config: PusherConfig,
        minter: TokenMinter,
        clock: SharedClock,
        connector: SharedConnector,
    ) -> Arc<Self> {
        let slots = (0..config.connections.max(1))
            .map(|_| Slot::default())
            .collect();
        Arc::new(Pusher {
            config,
            minter,
            clock,
            connector,
            slots,
            next_number: AtomicU64::new(1),
        })
    }

    /// Open every connection now (so a benchmark does not time handshakes).
    pub async fn warm_up(&self) -> Result<(), ConnectError> {
        for slot in 0..self.slots.len() {
            self.connection(slot).await?;
        }
        Ok(())
    }

    /// Close every connection gracefully.
    pub async fn close(&self) {
        for slot in &self.slots {
            if let Some(conn) = slot.take() {
                conn.close();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            }
        }
    }

    /// Push one notification on connection slot `slot`, retrying what may be retried.
    pub async fn push(
        &self,
        slot: usize,
        notification: &Notification,
        rng: &mut DetRng,
    ) -> PushResult {
        let request = notification.prepare();
        let mut retries = 0;
        let mut attempt = 1;
        loop {
            let last = attempt >= self.config.attempts_max;
            let failure = match self.connection(slot).await {
                Err(e) => format!("connect: {e}"),
                Ok(conn) => match conn.send(&request).await {
                    Ok(Delivery::Accepted { .. }) => {
                        return PushResult {
                            outcome: PushOutcome::Delivered,
                            retries,
                        };
                    }
                    Ok(Delivery::Rejected(rejection)) => {
                        let reason = rejection.reason;
                        match reason.disposition() {
                            Disposition::Unregistered => {
                                return PushResult {
                                    outcome: PushOutcome::Invalidated,
                                    retries,
                                };
                            }
                            Disposition::RefreshToken => {
                                let _ = self.minter.force_refresh();
                                self.discard(slot, &conn).await;
                            }
                            Disposition::Reconnect => self.discard(slot, &conn).await,
                            _ => {}
                        }
                        if !reason.is_retryable() {
                            return PushResult {
                                outcome: PushOutcome::Failed(reason.as_str().to_owned()),
                                retries,
                            };
                        }
                        reason.as_str().to_owned()
                    }
                    Err(e) => {
                        if connection_is_done(&e) {
                            self.discard(slot, &conn).await;
                        }
                        send_error_label(&e)
                    }
                },
            };
            if last {
                return PushResult {
                    outcome: PushOutcome::Failed(failure),
                    retries,
                };
            }
            let ceiling = self
                .config
                .backoff_base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(self.config.backoff_max);
            tokio::time::sleep(rng.jitter(ceiling)).await;
            attempt += 1;
            retries += 1;
        }
    }

    async fn connection(&self, slot: usize) -> Result<ApnsConnection, ConnectError> {
        let slot = &self.slots[slot % self.slots.len()];
        if let Some(conn) = slot.usable() {
            return Ok(conn);
        }
        // One task reconnects a slot; the others wait for it and then use its connection.
        let _opening = slot.opening.lock().await;
        if let Some(conn) = slot.usable() {
            return Ok(conn);
        }
        let mut config = ConnectionConfig::new(
            self.config.host.clone(),
            self.config.port,
            self.config.tls.clone(),
        );
        config.number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let auth = Box::new(TokenConnectionAuth::new(self.minter.clone()));
        let (conn, driver) = connect(config, &*self.connector, auth, self.clock.clone()).await?;
        tokio::spawn(driver.run());
        slot.set(conn.clone());
        Ok(conn)
    }

    async fn discard(&self, slot: usize, conn: &ApnsConnection) {
        let slot = &self.slots[slot % self.slots.len()];
        if let Some(old) = slot.take_if(conn.number()) {
            old.close();
        }
    }
}

/// One connection slot: the current connection (read on every push, so behind a short
/// std mutex) and a lock that lets one task at a time replace it.
#[derive(Debug, Default)]
struct Slot {
    current: std::sync::Mutex<Option<ApnsConnection>>,
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<ApnsConnection>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current connection if it still takes new streams.
    fn usable(&self) -> Option<ApnsConnection> {
        self.current()
            .as_ref()
            .filter(|c| c.state().accepts_new_streams())
            .cloned()
    }

    fn set(&self, conn: ApnsConnection) {
        *self.current() = Some(conn);
    }

    fn take(&self) -> Option<ApnsConnection> {
        self.current().take()
    }

    /// Take the current connection if it is connection `number`.
    fn take_if(&self, number: u64) -> Option<ApnsConnection> {
        let mut current = self.current();
        if current.as_ref().is_some_and(|c| c.number() == number) {
            current.take()
        } else {
            None
        }
    }
}

/// True when the connection that gave `e` can carry no more requests.
fn connection_is_done(e: &SendError) -> bool {
    matches!(
        e,
        SendError::GoAway(_)
            | SendError::Closed(_)
            | SendError::ConnectionLost(_)
            | SendError::Auth(_)
    )
}

fn send_error_label(e: &SendError) -> String {
    match e {
        SendError::StreamWaitTimeout { .. } => "stream wait timeout".into(),
        SendError::Refused { .. } => "refused stream".into(),
        SendError::GoAway(_) => "goaway".into(),
        SendError::Closed(_) => "connection closed".into(),
        SendError::Auth(e) => format!("auth: {e}"),
        SendError::Timeout { .. } => "request timeout".into(),
        SendError::ConnectionLost(_) => "connection lost".into(),
        SendError::MalformedResponse(_) => "malformed response".into(),
        other => other.to_string(),
    }
}

/// Push every notification through `pusher` with at most `window` in flight, spreading them
/// over the connections. `on_done` is called once per finished push (for progress bars).
/// Returns the tally.
pub async fn run_all(
    pusher: &Arc<Pusher>,
    notifications: Arc<Vec<Notification>>,
    window: usize,
    rng: &mut DetRng,
    on_done: Arc<dyn Fn() + Send + Sync>,
) -> crate::summary::Summary {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..window.max(1) {
        let pusher = pusher.clone();
        let notifications = notifications.clone();
        let next = next.clone();
        let on_done = on_done.clone();
        let mut rng = rng.fork();
        workers.spawn(async move {
            let mut summary = crate::summary::Summary::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(notification) = notifications.get(i) else {
                    break;
                };
                let started = tokio::time::Instant::now();
                let result = pusher.push(worker, notification, &mut rng).await;
                summary.record_latency(started.elapsed());
                summary.retried += u64::from(result.retries);
                match result.outcome {
                    PushOutcome::Delivered => summary.delivered += 1,
                    PushOutcome::Invalidated => summary.invalidated += 1,
                    PushOutcome::Failed(reason) => summary.record_failure(reason),
                }
                on_done();
            }
            summary
        });
    }
    let mut total = crate::summary::Summary::new();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(summary) => total.merge(&summary),
            // A worker panicked: a bug. Count what it was doing as lost, loudly.
            Err(e) => total.record_failure(format!("worker failed: {e}")),
        }
    }
    total
}
