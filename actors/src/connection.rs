//! The connection actor: owns one HTTP/2 connection to APNs.
//!
//! It opens the connection (in a task, so the mailbox keeps moving), runs its driver, and
//! sends each request in its own task; results come back to the actor as messages and go on
//! to the shard that asked (and, as a health signal, to the tenant's breaker). Requests that
//! arrive while (re)connecting wait in a bounded queue.
//!
//! Nothing is lost: a request the connection could not send goes back to its shard as
//! `Deferred`; one that failed in flight goes back as a `SendError` (the shard resends it).
//! If the actor itself dies, the request tasks report straight to their shards, and the
//! shard's answer deadline covers anything else.
//!
//! Reconnects use exponential backoff with full jitter from the actor's [`DetRng`]; the
//! attempt count resets only after APNs answered a request, so a server that accepts and
//! drops connections sees a slowing trickle, not a storm.
//!
//! Restart policy: the tenant restarts a failed connection actor (one-for-one, with the
//! restart-intensity limit); a connection that was draining is not restarted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr};
use tracing::Instrument as _;

use crate::apns::http2::{
    ApnsConnection, CloseReason, ConnectError, ConnectionConfig, ConnectionDriver, SendError,
    connect,
};
use crate::apns::{AuthError, Delivery, Disposition, PreparedRequest};
use crate::backoff::Backoff;
use crate::limits;
use crate::outcome::PushKey;
use crate::seams::{DetRng, SharedClock, SharedConnector};
use crate::shard::ShardMsg;
use crate::tenant::{Credentials, Signal, TenantMsg};

/// One push handed from a shard to a tenant and on to a connection.
#[derive(Debug)]
pub(crate) struct Job {
    /// The push's key at its shard (tenant-scoped; see `PushKey`).
    pub(crate) push_id: PushKey,
    /// The shard's number for this hand-off (answers to older hand-offs are ignored).
    pub(crate) dispatch: u64,
    pub(crate) request: Arc<PreparedRequest>,
    pub(crate) reply_to: ActorRef<ShardMsg>,
    /// The breaker's half-open probe.
    pub(crate) probe: bool,
    /// Set once the shard has been told what became of the job.
    pub(crate) answered: bool,
}

/// What became of a [`Job`].
#[derive(Debug)]
pub(crate) enum JobResult {
    /// Not sent (breaker open, rate limit, no connection): ask again after `retry_in`.
    Deferred { retry_in: Duration },
    /// APNs answered.
    Answered(Delivery),
    /// Sending failed; [`SendError::was_sent`] says whether APNs may have processed it.
    Failed(SendError),
    /// The job was dropped unanswered (an actor holding it died): it may have been sent.
    Lost,
}

impl Job {
    /// Report `result` to the shard that asked.
    pub(crate) fn reply(mut self, result: JobResult) {
        self.answered = true;
        let _ = self.reply_to.send_message(ShardMsg::Answer {
            push_id: self.push_id,
            dispatch: self.dispatch,
            result,
        });
    }
}

/// A job dropped unanswered (in the mailbox of an actor that died, or in a task that was
/// cancelled) tells its shard, so the push is resent now rather than after the shard's
/// answer deadline.
impl Drop for Job {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.reply_to.send_message(ShardMsg::Answer {
                push_id: self.push_id,
                dispatch: self.dispatch,
                result: JobResult::Lost,
            });
        }
    }
}

/// The connection actor (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct ConnectionActor;

/// What a connection actor starts from.
#[derive(Debug)]
pub(crate) struct ConnectionArgs {
    pub(crate) tenant: ActorRef<TenantMsg>,
    pub(crate) config: ConnectionConfig,
    pub(crate) connector: SharedConnector,
    pub(crate) credentials: Credentials,
    pub(crate) clock: SharedClock,
    pub(crate) rng: DetRng,
    pub(crate) reconnect_backoff: Backoff,
    /// Requests the tenant handed to this connection and not yet answered (shared with it).
    pub(crate) load: Arc<AtomicUsize>,
}

/// The connection actor's messages.
#[derive(Debug)]
pub(crate) enum ConnectionMsg {
    /// Send this push.
    Submit(Job),
    /// Open the connection (if not open or opening).
    Connect,
    /// The connect task finished.
    Connected(Result<(ApnsConnection, Box<ConnectionDriver>), ConnectError>),
    /// A request task finished.
    Done {
        job: Job,
        result: Result<Delivery, SendError>,
    },
    /// The connection of `generation` closed.
    Closed {
        generation: u64,
        reason: CloseReason,
    },
    /// Take no more requests, finish the ones in flight, then stop.
    Drain,
    /// Test hook: fail as a crash would.
    Crash,
}

/// The connection actor's state.
#[derive(Debug)]
pub(crate) struct ConnectionState {
    args: ConnectionArgs,
    connection: Option<ApnsConnection>,
    generation: u64,
    connecting: bool,
    reconnect_scheduled: bool,
    failures: u32,
    pending: VecDeque<Job>,
    in_flight: usize,
    draining: bool,
    span: tracing::Span,
}

impl Actor for ConnectionActor {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConnectionMsg>,
        args: ConnectionArgs,
    ) -> Result<ConnectionState, ActorProcessingErr> {
        myself.send_message(ConnectionMsg::Connect)?;
        let span = tracing::debug_span!("connection_actor", host = %args.config.host, number = args.config.number);
        Ok(ConnectionState {
            span,
            args,
            connection: None,
            generation: 0,
            connecting: false,
            reconnect_scheduled: false,
            failures: 0,
            pending: VecDeque::new(),
            in_flight: 0,
            draining: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConnectionMsg>,
        msg: ConnectionMsg,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        on_message(myself, msg, state).instrument(span).await
    }
}

/// However the actor ends (stopped, drained or crashed), nothing it holds is lost: queued
/// requests go back to their shards, and the connection closes gracefully, so requests in
/// flight finish and report to their shards directly.
impl Drop for ConnectionState {
    fn drop(&mut self) {
        while let Some(job) = self.pending.pop_front() {
            self.give_back(job, Duration::ZERO);
        }
        if let Some(c) = self.connection.take() {
            c.close();
            metrics::gauge!("herald_connections").decrement(1.0);
        }
    }
}

/// The body of `ConnectionActor::handle`, run inside the actor's span.
async fn on_message(
    myself: ActorRef<ConnectionMsg>,
    msg: ConnectionMsg,
    state: &mut ConnectionState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        ConnectionMsg::Submit(job) => state.submit(&myself, job),
        ConnectionMsg::Connect => {
            state.reconnect_scheduled = false;
            state.start_connect(&myself);
        }
        ConnectionMsg::Connected(Ok((connection, driver))) => {
            state.connected(&myself, connection, driver);
        }
        ConnectionMsg::Connected(Err(error)) => {
            state.connecting = false;
            state.failures += 1;
            tracing::debug!(%error, failures = state.failures, "connect failed");
            let delay = state.reconnect_delay();
            while let Some(job) = state.pending.pop_front() {
                state.give_back(job, delay);
            }
            if state.draining {
                state.stop_if_idle(&myself);
            } else {
                state.schedule_reconnect(&myself, delay);
            }
        }
        ConnectionMsg::Done { job, result } => state.done(&myself, job, result),
        ConnectionMsg::Closed { generation, reason } => {
            if generation == state.generation && state.connection.is_some() {
                tracing::debug!(%reason, "connection closed");
                state.connection = None;
                metrics::gauge!("herald_connections").decrement(1.0);
                if state.draining {
                    state.stop_if_idle(&myself);
                } else {
                    state.failures += 1;
                    let delay = state.reconnect_delay();
                    state.schedule_reconnect(&myself, delay);
                }
            }
        }
        ConnectionMsg::Drain => {
            state.draining = true;
            while let Some(job) = state.pending.pop_front() {
                state.give_back(job, Duration::ZERO);
            }
            if let Some(c) = &state.connection {
                c.close();
            }
            state.stop_if_idle(&myself);
        }
        ConnectionMsg::Crash => return Err("connection actor crash requested".into()),
    }
    Ok(())
}

impl ConnectionState {
    fn submit(&mut self, myself: &ActorRef<ConnectionMsg>, job: Job) {
        if self.draining {
            return self.give_back(job, Duration::ZERO);
        }
        match &self.connection {
            Some(c) if c.state().accepts_new_streams() => {
                let c = c.clone();
                self.start_send(myself, c, job);
            }
            _ => {
                if self.pending.len() >= limits::CONNECTION_PENDING_MAX {
                    let delay = self.reconnect_delay();
                    return self.give_back(job, delay);
                }
                self.pending.push_back(job);
                if !self.reconnect_scheduled {
                    self.start_connect(myself);
                }
            }
        }
    }

    fn start_connect(&mut self, myself: &ActorRef<ConnectionMsg>) {
        // A connection that stopped taking streams (GOAWAY, closing) finishes its in-flight
        // requests on its own; new requests get a new connection now, not when it closes.
        if self
            .connection
            .as_ref()
            .is_some_and(|c| !c.state().accepts_new_streams())
        {
            self.retire_current();
        }
        if self.draining || self.connecting || self.connection.is_some() {
            return;
        }
        let auth = match self.args.credentials.connection_auth() {
            Ok(auth) => auth,
            Err(error) => {
                // The credentials cannot authenticate anything: keep pushes queued at their
                // shards and try again later (an update may fix the credentials).
                tracing::warn!(%error, "credentials unusable");
                let _ = self.args.tenant.send_message(TenantMsg::Observed {
                    probe: false,
                    signal: Signal::Credentials,
                });
                self.failures += 1;
                let delay = self.reconnect_delay();
                while let Some(job) = self.pending.pop_front() {
                    self.give_back(job, delay);
                }
                return self.schedule_reconnect(myself, delay);
            }
        };
        self.connecting = true;
        let config = self.args.config.clone();
        let connector = self.args.connector.clone();
        let clock = self.args.clock.clone();
        let me = myself.clone();
        tokio::spawn(
            async move {
                let result = connect(config, &*connector, auth, clock)
                    .await
                    .map(|(connection, driver)| (connection, Box::new(driver)));
                let _ = me.send_message(ConnectionMsg::Connected(result));
            }
            .instrument(self.span.clone()),
        );
    }

    fn connected(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        connection: ApnsConnection,
        driver: Box<ConnectionDriver>,
    ) {
        self.connecting = false;
        self.generation += 1;
        metrics::gauge!("herald_connections").increment(1.0);
        tokio::spawn(driver.run());
        let generation = self.generation;
        let watcher = connection.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let reason = watcher.closed().await;
            drop(watcher);
            let _ = me.send_message(ConnectionMsg::Closed { generation, reason });
        });
        if self.draining {
            connection.close();
        }
        self.connection = Some(connection.clone());
        while let Some(job) = self.pending.pop_front() {
            self.start_send(myself, connection.clone(), job);
        }
    }

    fn start_send(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        connection: ApnsConnection,
        job: Job,
    ) {
        self.in_flight += 1;
        let me = myself.clone();
        tokio::spawn(async move {
            let result = connection.send(&job.request).await;
            drop(connection);
            if let Err(MessagingErr::SendErr(ConnectionMsg::Done { job, result })) =
                me.send_message(ConnectionMsg::Done { job, result })
            {
                // The actor is gone: report straight to the shard.
                job.reply(into_job_result(result));
            }
        });
    }

    fn done(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        job: Job,
        result: Result<Delivery, SendError>,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        release(&self.args.load);
        let signal = match &result {
            Ok(Delivery::Accepted { .. }) => {
                self.failures = 0;
                Signal::Success
            }
            Ok(Delivery::Rejected(rejection)) => {
                self.failures = 0;
                match rejection.reason.disposition() {
                    Disposition::Credentials => Signal::Credentials,
                    Disposition::RetryLater => Signal::ServerError,
                    Disposition::RefreshToken => {
                        self.args.credentials.refresh_token();
                        self.retire_current();
                        self.start_connect(myself);
                        Signal::Success
                    }
                    Disposition::Reconnect => {
                        self.retire_current();
                        self.start_connect(myself);
                        Signal::Success
                    }
                    _ => Signal::Success,
                }
            }
            // The connection's token may not be used any more: replace the connection.
            Err(SendError::Auth(AuthError::TokenExhausted)) => {
                self.retire_current();
                self.start_connect(myself);
                Signal::Unsent
            }
            // The credentials cannot sign: a credentials problem, like a 403.
            Err(SendError::Auth(_)) => Signal::Credentials,
            Err(_) => Signal::Unsent,
        };
        let _ = self.args.tenant.send_message(TenantMsg::Observed {
            probe: job.probe,
            signal,
        });
        job.reply(into_job_result(result));
        if self.draining {
            self.stop_if_idle(myself);
        }
    }

    /// Close the current connection gracefully and forget it: its in-flight requests finish
    /// (their tasks hold it), the next request opens a new one.
    fn retire_current(&mut self) {
        if let Some(c) = self.connection.take() {
            c.close();
            metrics::gauge!("herald_connections").decrement(1.0);
        }
    }

    /// Hand `job` back to its shard unsent.
    fn give_back(&mut self, job: Job, retry_in: Duration) {
        release(&self.args.load);
        if job.probe {
            let _ = self.args.tenant.send_message(TenantMsg::Observed {
                probe: true,
                signal: Signal::Unsent,
            });
        }
        job.reply(JobResult::Deferred { retry_in });
    }

    fn reconnect_delay(&mut self) -> Duration {
        let attempt = self.failures.max(1);
        self.args
            .reconnect_backoff
            .delay(attempt, &mut self.args.rng)
    }

    fn schedule_reconnect(&mut self, myself: &ActorRef<ConnectionMsg>, delay: Duration) {
        if self.reconnect_scheduled || self.draining {
            return;
        }
        self.reconnect_scheduled = true;
        myself.send_after(delay, || ConnectionMsg::Connect);
    }

    fn stop_if_idle(&self, myself: &ActorRef<ConnectionMsg>) {
        if self.in_flight == 0 && self.pending.is_empty() {
            myself.stop(Some("drained".into()));
        }
    }
}

fn release(load: &AtomicUsize) {
    let _ = load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

fn into_job_result(result: Result<Delivery, SendError>) -> JobResult {
    match result {
        Ok(delivery) => JobResult::Answered(delivery),
        Err(error) => JobResult::Failed(error),
    }
}
